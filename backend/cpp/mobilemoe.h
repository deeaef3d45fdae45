// C++ half of the MobileMoE ExecuTorch plugin: declarations shared by the cxx bridge
// (src/bridge.rs), the backend/kernels (backend.cpp) and the runner (runner.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rust/cxx.h"  // the generated bridge header does not include it itself

// C ABI of the Rust side (docs/DESIGN.md section 8); the kernels call it directly.
extern "C" {
typedef struct {
  const float* x; uint64_t x_len; uint64_t tokens;
  const float* router_weight; uint64_t router_weight_len;
  const float* expert_bias; uint64_t expert_bias_len;
  const uint8_t* w13; uint64_t w13_len;
  const float* w13_scales; uint64_t w13_scales_len;
  const uint8_t* w2; uint64_t w2_len;
  const float* w2_scales; uint64_t w2_scales_len;
  const uint8_t* shared_w13; uint64_t shared_w13_len;
  const float* shared_w13_scales; uint64_t shared_w13_scales_len;
  const uint8_t* shared_w2; uint64_t shared_w2_len;
  const float* shared_w2_scales; uint64_t shared_w2_scales_len;
  const float* shared_gate; uint64_t shared_gate_len;
  int64_t num_experts, top_k, dim, hidden_dim, shared_hidden_dim, group_size, weight_bits;
  int32_t score_func;
  int32_t renormalize;
  float route_scale;
  int32_t exact;
  float* out; uint64_t out_len;
} MobileMoeFfnArgs;

typedef struct {
  const float* x; uint64_t x_len; uint64_t rows;
  const uint8_t* weight; uint64_t weight_len;
  const float* scales; uint64_t scales_len;
  const float* bias; uint64_t bias_len;
  int64_t in_features, out_features, group_size, weight_bits;
  int32_t exact;
  float* out; uint64_t out_len;
} MobileMoeLinearArgs;

int32_t mobilemoe_moe_ffn(const MobileMoeFfnArgs* args);
int32_t mobilemoe_int4_linear(const MobileMoeLinearArgs* args);
const char* mobilemoe_last_error(void);
}

namespace mobilemoe {

struct Shapes;
struct MethodMetaInfo;
struct OutputValue;

// Registration (backend.cpp). Idempotent; returns 0 on success.
int32_t register_all();
void install_runtime_log_hook();
bool is_backend_registered(rust::Str name);
rust::Vec<rust::String> registered_backends();
bool is_operator_registered(rust::Str name);

// Runner (runner.cpp): load a .pte, set inputs, execute, read outputs.
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

}  // namespace mobilemoe
