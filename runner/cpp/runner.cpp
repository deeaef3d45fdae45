// Runner over executorch::extension::Module (mmap data loader): load a method, set inputs,
// execute, read outputs. Errors are thrown as std::runtime_error; cxx turns them into a Rust Err.

#include <algorithm>
#include <climits>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/executor/method_meta.h>
#include <executorch/runtime/platform/runtime.h>

#include "runner.h"
#include "mobilemoe-runner/src/bridge.rs.h"

namespace mobilemoe_runner {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::extension::TensorPtr;
using executorch::extension::module::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::Tag;

namespace {
std::string err_text(Error e) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%x", (unsigned)e);
  std::string s = std::string("error ") + buf;
  switch (e) {
    case Error::NotFound: s += " (NotFound: a backend or an operator is not registered?)"; break;
    case Error::InvalidArgument: s += " (InvalidArgument)"; break;
    case Error::InvalidProgram: s += " (InvalidProgram)"; break;
    case Error::OperatorMissing: s += " (OperatorMissing: a kernel is not registered)"; break;
    case Error::NotSupported: s += " (NotSupported)"; break;
    case Error::MemoryAllocationFailed: s += " (MemoryAllocationFailed)"; break;
    case Error::AccessFailed: s += " (AccessFailed: cannot read the file)"; break;
    case Error::Internal: s += " (Internal)"; break;
    case Error::InvalidState: s += " (InvalidState)"; break;
    case Error::NotImplemented: s += " (NotImplemented)"; break;
    default: break;
  }
  return s;
}

// The ExecuTorch error behind the exception being thrown on this thread, for the Rust side's
// typed error (runner_take_error); other exceptions leave it 0.
thread_local uint32_t t_last_error = 0;

[[noreturn]] void fail(const std::string& what, Error e) {
  t_last_error = (uint32_t)e;
  throw std::runtime_error(what + ": " + err_text(e));
}

std::vector<SizesType> to_sizes(rust::Slice<const int64_t> dims) {
  std::vector<SizesType> s;
  for (int64_t d : dims) {
    if (d < 0 || d > INT32_MAX) throw std::runtime_error("invalid dimension " + std::to_string(d));
    s.push_back((SizesType)d);
  }
  return s;
}

size_t numel(const std::vector<SizesType>& s) {
  size_t n = 1;
  for (auto d : s) n *= (size_t)d;
  return n;
}

TensorMetaInfo meta_of(Tag tag, executorch::runtime::Result<executorch::runtime::TensorInfo> ti) {
  TensorMetaInfo m;
  m.tag = (int32_t)tag;
  m.is_tensor = tag == Tag::Tensor && ti.ok();
  m.dtype = -1;
  if (m.is_tensor) {
    m.dtype = (int32_t)ti->scalar_type();
    for (auto d : ti->sizes()) m.dims.push_back(d);
  }
  return m;
}
}  // namespace

struct Runner::Impl {
  explicit Impl(const std::string& path) : module_(path, Module::LoadMode::Mmap) {}
  Module module_;
  // Input tensors stay alive while the method may still point at them.
  std::map<std::pair<std::string, size_t>, TensorPtr> inputs_;
  std::vector<EValue> outputs_;
};

Runner::Runner(std::unique_ptr<Impl> i) : impl(std::move(i)) {}
Runner::~Runner() = default;

std::unique_ptr<Runner> runner_open(rust::Str path) {
  executorch::runtime::runtime_init();
  auto r = std::make_unique<Runner::Impl>(std::string(path));
  Error e = r->module_.load(executorch::runtime::Program::Verification::InternalConsistency);
  if (e != Error::Ok) fail("loading program " + std::string(path), e);
  return std::make_unique<Runner>(std::move(r));
}

rust::Vec<rust::String> runner_method_names(const Runner& r) {
  auto names = r.impl->module_.method_names();
  if (!names.ok()) fail("method_names", names.error());
  std::vector<std::string> v(names->begin(), names->end());
  std::sort(v.begin(), v.end());
  rust::Vec<rust::String> out;
  for (auto& n : v) out.push_back(rust::String(n));
  return out;
}

MethodMetaInfo runner_method_meta(const Runner& r, rust::Str method) {
  std::string m(method);
  auto meta = r.impl->module_.method_meta(m);
  if (!meta.ok()) fail("method_meta(" + m + ")", meta.error());
  MethodMetaInfo info;
  info.name = rust::String(m);
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto tag = meta->input_tag(i);
    info.inputs.push_back(meta_of(tag.ok() ? *tag : Tag::None, meta->input_tensor_meta(i)));
  }
  for (size_t i = 0; i < meta->num_outputs(); ++i) {
    auto tag = meta->output_tag(i);
    info.outputs.push_back(meta_of(tag.ok() ? *tag : Tag::None, meta->output_tensor_meta(i)));
  }
  return info;
}

void runner_load_method(Runner& r, rust::Str method) {
  std::string m(method);
  Error e = r.impl->module_.load_method(m);
  if (e != Error::Ok) fail("load_method(" + m + ")", e);
}

void runner_set_input_f32(Runner& r, rust::Str method, size_t idx, rust::Slice<const float> data,
                          rust::Slice<const int64_t> dims) {
  std::string m(method);
  auto sizes = to_sizes(dims);
  if (numel(sizes) != data.size()) throw std::runtime_error("input " + std::to_string(idx) + ": data length does not match the shape");
  auto t = executorch::extension::make_tensor_ptr(sizes, std::vector<float>(data.begin(), data.end()));
  Error e = r.impl->module_.set_input(m, t, idx);
  if (e != Error::Ok) fail("set_input(" + m + ", " + std::to_string(idx) + ")", e);
  r.impl->inputs_[{m, idx}] = std::move(t);
}

void runner_set_input_i64(Runner& r, rust::Str method, size_t idx, rust::Slice<const int64_t> data,
                          rust::Slice<const int64_t> dims) {
  std::string m(method);
  auto sizes = to_sizes(dims);
  if (numel(sizes) != data.size()) throw std::runtime_error("input " + std::to_string(idx) + ": data length does not match the shape");
  auto t = executorch::extension::make_tensor_ptr(sizes, std::vector<int64_t>(data.begin(), data.end()));
  Error e = r.impl->module_.set_input(m, t, idx);
  if (e != Error::Ok) fail("set_input(" + m + ", " + std::to_string(idx) + ")", e);
  r.impl->inputs_[{m, idx}] = std::move(t);
}

size_t runner_execute(Runner& r, rust::Str method) {
  std::string m(method);
  auto res = r.impl->module_.execute(m);
  if (!res.ok()) fail("execute(" + m + ")", res.error());
  r.impl->outputs_ = std::move(*res);
  return r.impl->outputs_.size();
}

OutputValue runner_output(const Runner& r, size_t idx) {
  if (idx >= r.impl->outputs_.size()) throw std::runtime_error("output index " + std::to_string(idx) + " out of range");
  const EValue& v = r.impl->outputs_[idx];
  OutputValue o;
  o.tag = (int32_t)v.tag;
  o.dtype = -1;
  o.scalar_f64 = 0;
  o.scalar_i64 = 0;
  if (v.isTensor()) {
    const auto& t = v.toTensor();
    o.dtype = (int32_t)t.scalar_type();
    for (auto d : t.sizes()) o.dims.push_back(d);
    const size_t n = (size_t)t.numel();
    switch (t.scalar_type()) {
      case ScalarType::Float: {
        const float* p = t.const_data_ptr<float>();
        o.f32_data.reserve(n);
        for (size_t i = 0; i < n; ++i) o.f32_data.push_back(p[i]);
        break;
      }
      case ScalarType::Long: {
        const int64_t* p = t.const_data_ptr<int64_t>();
        o.i64_data.reserve(n);
        for (size_t i = 0; i < n; ++i) o.i64_data.push_back(p[i]);
        break;
      }
      case ScalarType::Int: {
        const int32_t* p = t.const_data_ptr<int32_t>();
        for (size_t i = 0; i < n; ++i) o.i64_data.push_back(p[i]);
        break;
      }
      default:
        throw std::runtime_error("output " + std::to_string(idx) + ": dtype " + std::to_string((int)t.scalar_type()) +
                                 " not supported by the runner (float32, int32, int64)");
    }
  } else if (v.isInt()) {
    o.scalar_i64 = v.toInt();
  } else if (v.isDouble()) {
    o.scalar_f64 = v.toDouble();
  } else if (v.isBool()) {
    o.scalar_i64 = v.toBool() ? 1 : 0;
  }
  return o;
}

uint32_t runner_take_error() {
  const uint32_t e = t_last_error;
  t_last_error = 0;
  return e;
}

}  // namespace mobilemoe_runner
