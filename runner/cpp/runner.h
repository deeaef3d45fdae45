// C++ half of the MobileMoE runner: load a .pte with ExecuTorch's Module, set inputs, execute,
// read outputs (runner.cpp), bridged to Rust by src/bridge.rs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "rust/cxx.h"  // the generated bridge header does not include it itself

namespace mobilemoe_runner {

struct MethodMetaInfo;
struct OutputValue;

// Pimpl: the bridge needs a complete type; executorch's Module stays in runner.cpp.
class Runner {
 public:
  struct Impl;
  explicit Runner(std::unique_ptr<Impl> impl);
  ~Runner();
  std::unique_ptr<Impl> impl;
};
std::unique_ptr<Runner> runner_open(rust::Str path);
rust::Vec<rust::String> runner_method_names(const Runner& r);
MethodMetaInfo runner_method_meta(const Runner& r, rust::Str method);
void runner_load_method(Runner& r, rust::Str method);
void runner_set_input_f32(Runner& r, rust::Str method, size_t idx, rust::Slice<const float> data,
                          rust::Slice<const int64_t> dims);
void runner_set_input_i64(Runner& r, rust::Str method, size_t idx, rust::Slice<const int64_t> data,
                          rust::Slice<const int64_t> dims);
size_t runner_execute(Runner& r, rust::Str method);
OutputValue runner_output(const Runner& r, size_t idx);
uint32_t runner_take_error();

}  // namespace mobilemoe_runner
