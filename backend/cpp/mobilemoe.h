// C++ half of the MobileMoE ExecuTorch plugin: declarations shared by the cxx bridge
// (src/bridge.rs) and the backend/kernels (backend.cpp).
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
  // Routing of format version 4 (appended: the fields above keep their offsets).
  int64_t num_groups, top_groups;
  int32_t group_score;   // 0 max, 1 top2_sum
  int32_t weight_input;
  float jitter_eps;
  float renorm_eps;
  float renorm_min;
  // Format version 5: routed experts' scales grouped along the output dimension.
  int32_t scales_out;
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

// The layout the Rust side declares (backend/src/capi.rs asserts the same numbers at compile time;
// Python's ctypes copies are checked by python_export/tests/test_abi_layout.py).
#if UINTPTR_MAX == UINT64_MAX
static_assert(sizeof(MobileMoeFfnArgs) == 328, "MobileMoeFfnArgs size differs from capi.rs");
static_assert(offsetof(MobileMoeFfnArgs, tokens) == 16 && offsetof(MobileMoeFfnArgs, shared_gate_len) == 192 &&
                  offsetof(MobileMoeFfnArgs, num_experts) == 200 && offsetof(MobileMoeFfnArgs, weight_bits) == 248 &&
                  offsetof(MobileMoeFfnArgs, score_func) == 256 && offsetof(MobileMoeFfnArgs, renormalize) == 260 &&
                  offsetof(MobileMoeFfnArgs, route_scale) == 264 && offsetof(MobileMoeFfnArgs, exact) == 268 &&
                  offsetof(MobileMoeFfnArgs, out) == 272 && offsetof(MobileMoeFfnArgs, out_len) == 280 &&
                  offsetof(MobileMoeFfnArgs, num_groups) == 288 && offsetof(MobileMoeFfnArgs, top_groups) == 296 &&
                  offsetof(MobileMoeFfnArgs, group_score) == 304 && offsetof(MobileMoeFfnArgs, weight_input) == 308 &&
                  offsetof(MobileMoeFfnArgs, jitter_eps) == 312 && offsetof(MobileMoeFfnArgs, renorm_eps) == 316 &&
                  offsetof(MobileMoeFfnArgs, renorm_min) == 320 && offsetof(MobileMoeFfnArgs, scales_out) == 324,
              "MobileMoeFfnArgs field offsets differ from capi.rs");
static_assert(sizeof(MobileMoeLinearArgs) == 128, "MobileMoeLinearArgs size differs from capi.rs");
static_assert(offsetof(MobileMoeLinearArgs, in_features) == 72 && offsetof(MobileMoeLinearArgs, weight_bits) == 96 &&
                  offsetof(MobileMoeLinearArgs, exact) == 104 && offsetof(MobileMoeLinearArgs, out) == 112 &&
                  offsetof(MobileMoeLinearArgs, out_len) == 120,
              "MobileMoeLinearArgs field offsets differ from capi.rs");
#endif

// Return codes of every C ABI function and `Status::code` of the bridge (backend/src/error.rs,
// `ErrorCode`; error.rs's tests read these lines): 0 = ok.
enum MobileMoeErrorCode {
  MOBILEMOE_OK = 0,
  MOBILEMOE_INVALID_ARGUMENT = 1,
  MOBILEMOE_INTERNAL = 2,
  MOBILEMOE_INVALID_PROGRAM = 3,
  MOBILEMOE_NOT_SUPPORTED = 4,
  MOBILEMOE_OUT_OF_MEMORY = 5,
};

int32_t mobilemoe_moe_ffn(const MobileMoeFfnArgs* args);
int32_t mobilemoe_int4_linear(const MobileMoeLinearArgs* args);
const char* mobilemoe_last_error(void);
}

namespace mobilemoe {

struct Shapes;
struct Status;

// Registration (backend.cpp). Idempotent; returns 0 on success.
int32_t register_all();
void install_runtime_log_hook();
bool is_backend_registered(rust::Str name);
rust::Vec<rust::String> registered_backends();
bool is_operator_registered(rust::Str name);
// The executorch::runtime::Error number for a MobileMoeErrorCode (the one mapping; for tests).
uint32_t executorch_error_of(int32_t code);

}  // namespace mobilemoe
