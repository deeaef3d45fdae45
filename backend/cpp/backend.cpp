// MobileMoEBackend (executorch::runtime::BackendInterface) and the custom-op kernels
// mobilemoe::moe_ffn.out / mobilemoe::int4_linear.out. All work is done in Rust (cxx bridge and
// C ABI); this file only unpacks EValues. No exception leaves any function called by ExecuTorch.

#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/event_tracer_hooks_delegate.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_runtime_context.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/log.h>
#include <executorch/runtime/platform/platform.h>

#include "mobilemoe.h"
#include "mobilemoe_ops_gen.h"
#include "mobilemoe-backend/src/bridge.rs.h"

namespace mobilemoe {
namespace {

// The one mapping from the Rust side's error codes (MobileMoeErrorCode: C ABI return values and
// bridge `Status::code`) to ExecuTorch errors. An unknown code is a bug: Internal.
executorch::runtime::Error to_et_error(int32_t code) {
  using executorch::runtime::Error;
  switch (code) {
    case MOBILEMOE_OK: return Error::Ok;
    case MOBILEMOE_INVALID_ARGUMENT: return Error::InvalidArgument;
    case MOBILEMOE_INTERNAL: return Error::Internal;
    case MOBILEMOE_INVALID_PROGRAM: return Error::InvalidProgram;
    case MOBILEMOE_NOT_SUPPORTED: return Error::NotSupported;
    case MOBILEMOE_OUT_OF_MEMORY: return Error::MemoryAllocationFailed;
    default: return Error::Internal;
  }
}

// Logs a failed Rust call (`where: message`) and returns its ExecuTorch error.
executorch::runtime::Error report(const char* where, int32_t code, const char* msg, size_t len) {
  ET_LOG(Error, "%s: %.*s", where, (int)len, msg);
  return to_et_error(code);
}

executorch::runtime::Error report(const char* where, const Status& st) {
  return report(where, st.code, st.message.data(), st.message.size());
}

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::aten::Tensor;
using executorch::runtime::ArrayRef;
using executorch::runtime::Backend;
using executorch::runtime::BackendExecutionContext;
using executorch::runtime::BackendInitContext;
using executorch::runtime::BackendInterface;
using executorch::runtime::CompileSpec;
using executorch::runtime::DelegateHandle;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::FreeableBuffer;
using executorch::runtime::Kernel;
using executorch::runtime::KernelRuntimeContext;
using executorch::runtime::Result;
using executorch::runtime::Span;

constexpr const char* kBackendName = "MobileMoEBackend";

// Per-program state. `processed` is not freed by us: the runtime keeps the FreeableBuffer alive
// until after destroy(), and the Rust delegate borrows the weights from it (zero copy).
struct Handle {
  Delegate* state;  // owned: from delegate_init, freed by delegate_free
  explicit Handle(Delegate* s) : state(s) {}
  ~Handle() { delegate_free(state); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
};

class MobileMoEBackend final : public BackendInterface {
 public:
  bool is_available() const override { return true; }

  Result<DelegateHandle*> init(BackendInitContext& /*context*/, FreeableBuffer* processed,
                               ArrayRef<CompileSpec> /*compile_specs*/) const override {
    try {
      if (processed == nullptr || processed->data() == nullptr) {
        ET_LOG(Error, "MobileMoEBackend::init: no processed blob");
        return Error::InvalidArgument;
      }
      Status st;
      Delegate* state = delegate_init(static_cast<const uint8_t*>(processed->data()), processed->size(), st);
      if (state == nullptr) return report("MobileMoEBackend::init", st);
      Handle* h = new (std::nothrow) Handle(state);
      if (h == nullptr) {
        delegate_free(state);
        ET_LOG(Error, "MobileMoEBackend::init: out of memory");
        return Error::MemoryAllocationFailed;
      }
      return h;
    } catch (const std::bad_alloc&) {
      ET_LOG(Error, "MobileMoEBackend::init: out of memory");
      return Error::MemoryAllocationFailed;
    } catch (const std::exception& e) {
      ET_LOG(Error, "MobileMoEBackend::init: %s", e.what());
      return Error::Internal;
    } catch (...) {
      ET_LOG(Error, "MobileMoEBackend::init: unknown exception");
      return Error::Internal;
    }
  }

  Error execute(BackendExecutionContext& context, DelegateHandle* handle,
                Span<EValue*> args) const override {
    try {
      if (handle == nullptr) {
        ET_LOG(Error, "MobileMoEBackend::execute: null handle");
        return Error::InvalidArgument;
      }
      const Delegate& d = *static_cast<Handle*>(handle)->state;  // never null (init checked)
      const size_t nin = delegate_num_inputs(d);
      const size_t nout = delegate_num_outputs(d);
      if (args.size() != nin + nout) {
        ET_LOG(Error, "MobileMoEBackend::execute: got %zu arguments, the graph has %zu inputs + %zu outputs",
               (size_t)args.size(), nin, nout);
        return Error::InvalidArgument;
      }
      std::vector<size_t> in_ptrs(nin), out_ptrs(nout), out_numels(nout);
      std::vector<int32_t> in_dtypes(nin);
      std::vector<int64_t> in_dims;
      std::vector<uint32_t> in_ranks(nin);
      for (size_t i = 0; i < nin; ++i) {
        EValue* ev = args[i];
        if (ev == nullptr || !ev->isTensor()) {
          ET_LOG(Error, "MobileMoEBackend::execute: input %zu is not a tensor", i);
          return Error::InvalidArgument;
        }
        const Tensor& t = ev->toTensor();
        if (t.scalar_type() == ScalarType::Float) {
          in_ptrs[i] = reinterpret_cast<size_t>(t.const_data_ptr<float>());
        } else if (t.scalar_type() == ScalarType::Long) {
          in_ptrs[i] = reinterpret_cast<size_t>(t.const_data_ptr<int64_t>());
        } else {
          ET_LOG(Error, "MobileMoEBackend::execute: input %zu has dtype %d, expected float32 or int64", i,
                 (int)t.scalar_type());
          return Error::NotSupported;  // as the Rust side's answer to another dtype
        }
        in_dtypes[i] = (int32_t)t.scalar_type();
        in_ranks[i] = (uint32_t)t.dim();
        for (ssize_t k = 0; k < t.dim(); ++k) in_dims.push_back(t.size(k));
      }
      Shapes shapes;
      Status st = delegate_output_shapes(d, rust::Slice<const int64_t>(in_dims.data(), in_dims.size()),
                                         rust::Slice<const uint32_t>(in_ranks.data(), in_ranks.size()), shapes);
      if (st.code != MOBILEMOE_OK) return report("MobileMoEBackend::execute", st);
      size_t off = 0;
      for (size_t j = 0; j < nout; ++j) {
        EValue* ev = args[nin + j];
        if (ev == nullptr || !ev->isTensor()) {
          ET_LOG(Error, "MobileMoEBackend::execute: output %zu is not a tensor", j);
          return Error::InvalidArgument;
        }
        Tensor t = ev->toTensor();
        if (t.scalar_type() != ScalarType::Float) {
          ET_LOG(Error, "MobileMoEBackend::execute: output %zu has dtype %d, expected float32", j,
                 (int)t.scalar_type());
          return Error::InvalidArgument;
        }
        const uint32_t rank = shapes.ranks[j];
        std::vector<SizesType> sizes;
        for (uint32_t k = 0; k < rank; ++k) sizes.push_back((SizesType)shapes.dims[off + k]);
        off += rank;
        Error err = executorch::runtime::resize_tensor(t, ArrayRef<SizesType>(sizes.data(), sizes.size()));
        if (err != Error::Ok) {
          ET_LOG(Error, "MobileMoEBackend::execute: cannot resize output %zu to rank %u (error 0x%x); "
                 "export with a dynamic token dimension", j, rank, (unsigned)err);
          return err;
        }
        out_ptrs[j] = reinterpret_cast<size_t>(t.mutable_data_ptr<float>());
        out_numels[j] = (size_t)t.numel();
      }
      // Profiling (docs/profiling.md): with an EventTracer (ETDump), log every span of the Rust
      // side (layer, moe_ffn, route, ..., scatter) as a delegate profiling event.
      executorch::runtime::EventTracer* tracer = context.event_tracer();
      if (tracer != nullptr) {
        const et_timestamp_t t0 = et_pal_current_ticks();
        rust::Vec<PhaseRecord> ev;
        st = delegate_execute_profiled(d, rust::Slice<const size_t>(in_ptrs.data(), in_ptrs.size()),
                                       rust::Slice<const int32_t>(in_dtypes.data(), in_dtypes.size()),
                                       rust::Slice<const int64_t>(in_dims.data(), in_dims.size()),
                                       rust::Slice<const uint32_t>(in_ranks.data(), in_ranks.size()),
                                       rust::Slice<const size_t>(out_ptrs.data(), out_ptrs.size()),
                                       rust::Slice<const size_t>(out_numels.data(), out_numels.size()), ev);
        if (st.code != MOBILEMOE_OK) return report("MobileMoEBackend::execute", st);
        const et_tick_ratio_t r = et_pal_ticks_to_ns_multiplier();  // ns per tick = num / den
        const auto to_ticks = [&](uint64_t ns) -> et_timestamp_t {
          return t0 + (et_timestamp_t)(r.numerator == 0 ? ns : ns * r.denominator / r.numerator);
        };
        for (const PhaseRecord& e : ev) {
          const std::string name(e.name.data(), e.name.size());
          // A name and delegate_debug_id = -1 (ETDumpGen requires exactly one of the two).
          executorch::runtime::event_tracer_log_profiling_delegate(
              tracer, name.c_str(), /*delegate_debug_id=*/-1, to_ticks(e.start_ns), to_ticks(e.end_ns));
        }
        return Error::Ok;
      }
      st = delegate_execute(d, rust::Slice<const size_t>(in_ptrs.data(), in_ptrs.size()),
                            rust::Slice<const int32_t>(in_dtypes.data(), in_dtypes.size()),
                            rust::Slice<const int64_t>(in_dims.data(), in_dims.size()),
                            rust::Slice<const uint32_t>(in_ranks.data(), in_ranks.size()),
                            rust::Slice<const size_t>(out_ptrs.data(), out_ptrs.size()),
                            rust::Slice<const size_t>(out_numels.data(), out_numels.size()));
      if (st.code != MOBILEMOE_OK) return report("MobileMoEBackend::execute", st);
      return Error::Ok;
    } catch (const std::bad_alloc&) {
      ET_LOG(Error, "MobileMoEBackend::execute: out of memory");
      return Error::MemoryAllocationFailed;
    } catch (const std::exception& e) {
      // Rust errors come back as a Status, so an exception here is a C++-side bug.
      ET_LOG(Error, "MobileMoEBackend::execute: %s", e.what());
      return Error::Internal;
    } catch (...) {
      ET_LOG(Error, "MobileMoEBackend::execute: unknown exception");
      return Error::Internal;
    }
  }

  void destroy(DelegateHandle* handle) const override {
    try {
      delete static_cast<Handle*>(handle);
    } catch (...) {
      ET_LOG(Error, "MobileMoEBackend::destroy: exception while freeing the handle");
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Custom-op kernels. Argument indices and kinds come from schema/ops.txt (mobilemoe_ops_gen.h).

using mobilemoe_gen::ArgKind;

bool check_args(const char* op, const ArgKind* kinds, const char* const* names, size_t n,
                Span<EValue*> stack) {
  // The runtime passes the schema arguments, `out`, and the returned value (an alias of `out`).
  if (stack.size() != n && stack.size() != n + 1) {
    ET_LOG(Error, "%s: expected %zu arguments (schema/ops.txt + out [+ return]), got %zu", op, n, (size_t)stack.size());
    return false;
  }
  if (stack.size() == n + 1 && (stack[n] == nullptr || !stack[n]->isTensor())) {
    ET_LOG(Error, "%s: the returned value (argument %zu) is not a tensor", op, n);
    return false;
  }
  for (size_t i = 0; i < n; ++i) {
    const EValue* v = stack[i];
    bool ok = v != nullptr;
    if (ok) {
      switch (kinds[i]) {
        case ArgKind::Tensor: ok = v->isTensor(); break;
        case ArgKind::OptTensor: ok = v->isTensor() || v->isNone(); break;
        case ArgKind::Int: ok = v->isInt(); break;
        case ArgKind::Double: ok = v->isDouble(); break;
        case ArgKind::Bool: ok = v->isBool(); break;
        case ArgKind::String: ok = v->isString(); break;
      }
    }
    if (!ok) {
      ET_LOG(Error, "%s: argument %zu (%s) has the wrong type", op, i, names[i]);
      return false;
    }
  }
  return true;
}

template <typename T>
bool tensor_view(const char* op, const char* what, const EValue* v, ScalarType want, const T** ptr,
                 uint64_t* len) {
  if (v->isNone()) {
    *ptr = nullptr;
    *len = 0;
    return true;
  }
  const Tensor& t = v->toTensor();
  if (t.scalar_type() != want) {
    ET_LOG(Error, "%s: %s has dtype %d, expected %d", op, what, (int)t.scalar_type(), (int)want);
    return false;
  }
  *ptr = t.const_data_ptr<T>();
  *len = (uint64_t)t.numel();
  return true;
}

// Resize `out` to `x`'s shape with the last dimension replaced by `last`.
bool resize_like(const char* op, const Tensor& x, Tensor& out, int64_t last) {
  if (out.scalar_type() != ScalarType::Float) {
    ET_LOG(Error, "%s: out must be float32", op);
    return false;
  }
  std::vector<SizesType> sizes(x.sizes().begin(), x.sizes().end());
  if (sizes.empty()) {
    ET_LOG(Error, "%s: x must have rank >= 1", op);
    return false;
  }
  sizes.back() = (SizesType)last;
  if (executorch::runtime::resize_tensor(out, ArrayRef<SizesType>(sizes.data(), sizes.size())) != Error::Ok) {
    ET_LOG(Error, "%s: cannot resize out to the input's token shape", op);
    return false;
  }
  return true;
}

// The op-specific half of a kernel: `fill` unpacks the op's arguments (x included) into its C ABI
// struct and returns the last dimension of `out`, or -1 after logging a bad argument; `call` runs
// the C ABI function.
struct MoeFfnOp : mobilemoe_gen::moe_ffn::Info {
  using Args = MobileMoeFfnArgs;
  static int32_t call(const Args* a) { return mobilemoe_moe_ffn(a); }

  static int64_t fill(const char* op, Span<EValue*> stack, const Tensor& x, Args& a) {
    namespace A = mobilemoe_gen::moe_ffn;
    a.dim = x.size(x.dim() - 1);
    a.x = x.const_data_ptr<float>();
    a.x_len = (uint64_t)x.numel();
    a.tokens = a.dim > 0 ? a.x_len / (uint64_t)a.dim : 0;
    bool ok = tensor_view(op, "router_weight", stack[A::router_weight], ScalarType::Float, &a.router_weight, &a.router_weight_len) &&
              tensor_view(op, "expert_bias", stack[A::expert_bias], ScalarType::Float, &a.expert_bias, &a.expert_bias_len) &&
              tensor_view(op, "w13", stack[A::w13], ScalarType::Byte, &a.w13, &a.w13_len) &&
              tensor_view(op, "w13_scales", stack[A::w13_scales], ScalarType::Float, &a.w13_scales, &a.w13_scales_len) &&
              tensor_view(op, "w2", stack[A::w2], ScalarType::Byte, &a.w2, &a.w2_len) &&
              tensor_view(op, "w2_scales", stack[A::w2_scales], ScalarType::Float, &a.w2_scales, &a.w2_scales_len) &&
              tensor_view(op, "shared_w13", stack[A::shared_w13], ScalarType::Byte, &a.shared_w13, &a.shared_w13_len) &&
              tensor_view(op, "shared_w13_scales", stack[A::shared_w13_scales], ScalarType::Float, &a.shared_w13_scales, &a.shared_w13_scales_len) &&
              tensor_view(op, "shared_w2", stack[A::shared_w2], ScalarType::Byte, &a.shared_w2, &a.shared_w2_len) &&
              tensor_view(op, "shared_w2_scales", stack[A::shared_w2_scales], ScalarType::Float, &a.shared_w2_scales, &a.shared_w2_scales_len) &&
              tensor_view(op, "shared_gate", stack[A::shared_gate], ScalarType::Float, &a.shared_gate, &a.shared_gate_len);
    if (!ok) return -1;
    a.num_experts = stack[A::num_experts]->toInt();
    a.top_k = stack[A::top_k]->toInt();
    a.hidden_dim = stack[A::hidden_dim]->toInt();
    a.shared_hidden_dim = stack[A::shared_hidden_dim]->toInt();
    a.group_size = stack[A::group_size]->toInt();
    a.weight_bits = stack[A::weight_bits]->toInt();
    std::string_view sf = stack[A::score_func]->toString();
    if (sf == "softmax") a.score_func = 0;
    else if (sf == "softmax_all") a.score_func = 1;
    else if (sf == "sigmoid") a.score_func = 2;
    else if (sf == "topk_sigmoid") a.score_func = 3;
    else if (sf == "sparsemixer") a.score_func = 4;
    else {
      ET_LOG(Error, "%s: unknown score_func '%.*s' (softmax, softmax_all, sigmoid, topk_sigmoid, sparsemixer)", op, (int)sf.size(),
             sf.data());
      return -1;
    }
    std::string_view gs = stack[A::group_score]->toString();
    if (gs == "max") a.group_score = 0;
    else if (gs == "top2_sum") a.group_score = 1;
    else {
      ET_LOG(Error, "%s: unknown group_score '%.*s' (max, top2_sum)", op, (int)gs.size(), gs.data());
      return -1;
    }
    a.num_groups = stack[A::num_groups]->toInt();
    a.top_groups = stack[A::top_groups]->toInt();
    a.weight_input = stack[A::weight_input]->toBool() ? 1 : 0;
    a.jitter_eps = (float)stack[A::jitter_eps]->toDouble();
    a.renorm_eps = (float)stack[A::renorm_eps]->toDouble();
    a.renorm_min = (float)stack[A::renorm_min]->toDouble();
    a.scales_out = stack[A::expert_scales_out]->toBool() ? 1 : 0;
    a.renormalize = stack[A::renormalize]->toBool() ? 1 : 0;
    a.route_scale = (float)stack[A::route_scale]->toDouble();
    a.exact = stack[A::exact]->toBool() ? 1 : 0;
    return a.dim;
  }
};

struct Int4LinearOp : mobilemoe_gen::int4_linear::Info {
  using Args = MobileMoeLinearArgs;
  static int32_t call(const Args* a) { return mobilemoe_int4_linear(a); }

  static int64_t fill(const char* op, Span<EValue*> stack, const Tensor& x, Args& a) {
    namespace A = mobilemoe_gen::int4_linear;
    a.in_features = x.size(x.dim() - 1);
    a.x = x.const_data_ptr<float>();
    a.x_len = (uint64_t)x.numel();
    a.rows = a.in_features > 0 ? a.x_len / (uint64_t)a.in_features : 0;
    bool ok = tensor_view(op, "weight", stack[A::weight], ScalarType::Byte, &a.weight, &a.weight_len) &&
              tensor_view(op, "scales", stack[A::scales], ScalarType::Float, &a.scales, &a.scales_len) &&
              tensor_view(op, "bias", stack[A::bias], ScalarType::Float, &a.bias, &a.bias_len);
    if (!ok) return -1;
    a.out_features = stack[A::out_features]->toInt();
    a.group_size = stack[A::group_size]->toInt();
    a.weight_bits = stack[A::weight_bits]->toInt();
    a.exact = stack[A::exact]->toBool() ? 1 : 0;
    if (a.out_features <= 0) {
      ET_LOG(Error, "%s: out_features = %lld must be > 0", op, (long long)a.out_features);
      return -1;
    }
    return a.out_features;
  }
};

// Every custom-op kernel: check the arguments against schema/ops.txt, unpack them (Op::fill), size
// `out`, run the C ABI (Op::call) and turn its code into the context's error.
template <typename Op>
void kernel_out(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  const char* op = Op::kName;
  try {
    if (!check_args(op, Op::kKinds, Op::kNames, Op::kNumArgs, stack)) return ctx.fail(Error::InvalidArgument);
    const Tensor& x = stack[Op::kX]->toTensor();
    if (x.scalar_type() != ScalarType::Float || x.dim() < 1) {
      ET_LOG(Error, "%s: x must be a float32 tensor of rank >= 1", op);
      return ctx.fail(Error::InvalidArgument);
    }
    typename Op::Args a;
    std::memset(&a, 0, sizeof(a));
    const int64_t last = Op::fill(op, stack, x, a);
    if (last < 0) return ctx.fail(Error::InvalidArgument);
    Tensor out = stack[Op::kOut]->toTensor();
    if (!resize_like(op, x, out, last)) return ctx.fail(Error::InvalidArgument);
    a.out = out.mutable_data_ptr<float>();
    a.out_len = (uint64_t)out.numel();
    const int32_t rc = Op::call(&a);
    if (rc != MOBILEMOE_OK) {
      const char* msg = mobilemoe_last_error();
      return ctx.fail(report(op, rc, msg, std::strlen(msg)));
    }
  } catch (const std::bad_alloc&) {
    ET_LOG(Error, "%s: out of memory", op);
    ctx.fail(Error::MemoryAllocationFailed);
  } catch (const std::exception& e) {
    ET_LOG(Error, "%s: %s", op, e.what());
    ctx.fail(Error::Internal);
  } catch (...) {
    ET_LOG(Error, "%s: unknown exception", op);
    ctx.fail(Error::Internal);
  }
}

MobileMoEBackend& backend_instance() {
  static MobileMoEBackend instance;  // never destroyed before the registry stops using it
  return instance;
}

bool kernel_registered(const char* name) {
  auto ks = executorch::runtime::get_registered_kernels();
  for (size_t i = 0; i < ks.size(); ++i) {
    if (ks[i].name_ != nullptr && std::strcmp(ks[i].name_, name) == 0) return true;
  }
  return false;
}

// ExecuTorch's log lines go to Rust (backend/src/logging.rs): quiet by default, shown with
// `mobilemoe -v`, and emitted as `tracing` events; never printed in the middle of generated text.
void emit_log_to_rust(et_timestamp_t /*timestamp*/, et_pal_log_level_t level, const char* filename,
                      const char* /*function*/, size_t line, const char* message, size_t length) {
  try {
    runtime_log(static_cast<uint8_t>(level), rust::Str(filename ? filename : ""), line,
                rust::Slice<const uint8_t>(reinterpret_cast<const uint8_t*>(message), message ? length : 0));
  } catch (...) {
    // never unwind into ExecuTorch
  }
}

int32_t do_register() {
  int32_t rc = 0;
  if (executorch::runtime::get_backend_class(kBackendName) == nullptr) {
    Error e = executorch::runtime::register_backend(Backend{kBackendName, &backend_instance()});
    if (e != Error::Ok) {
      ET_LOG(Error, "mobilemoe: register_backend(%s) failed: 0x%x", kBackendName, (unsigned)e);
      rc = 1;
    }
  }
  static const Kernel kernels[] = {
      Kernel(MoeFfnOp::kName, kernel_out<MoeFfnOp>),
      Kernel(Int4LinearOp::kName, kernel_out<Int4LinearOp>),
  };
  for (const Kernel& k : kernels) {
    if (kernel_registered(k.name_)) continue;  // registering a name twice aborts the process
    Error e = executorch::runtime::register_kernels({&k, 1});
    if (e != Error::Ok) {
      ET_LOG(Error, "mobilemoe: register_kernels(%s) failed: 0x%x", k.name_, (unsigned)e);
      rc = 1;
    }
  }
  return rc;
}

}  // namespace

// Installed by the Rust runner (runner/src/runtime.rs) only: inside Python the pybindings own
// the log.
void install_runtime_log_hook() {
  static std::once_flag once;
  try {
    std::call_once(once, [] {
      executorch::runtime::register_pal(executorch::runtime::PalImpl::create(&emit_log_to_rust, __FILE__));
    });
  } catch (...) {
  }
}

int32_t register_all() {
  static std::once_flag once;
  static int32_t result = -1;
  try {
    std::call_once(once, [] { result = do_register(); });
  } catch (...) {
    return 2;
  }
  return result;
}

bool is_backend_registered(rust::Str name) {
  std::string n(name);
  return executorch::runtime::get_backend_class(n.c_str()) != nullptr;
}

rust::Vec<rust::String> registered_backends() {
  rust::Vec<rust::String> v;
  size_t n = executorch::runtime::get_num_registered_backends();
  for (size_t i = 0; i < n; ++i) {
    auto r = executorch::runtime::get_backend_name(i);
    if (r.ok()) v.push_back(rust::String(*r));
  }
  return v;
}

uint32_t executorch_error_of(int32_t code) { return (uint32_t)to_et_error(code); }

bool is_operator_registered(rust::Str name) {
  std::string n(name);
  return kernel_registered(n.c_str());
}

}  // namespace mobilemoe
