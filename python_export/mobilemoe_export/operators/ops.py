"""``torch.library`` definitions of the MobileMoE custom ops, from ``schema/ops.txt``.

Defines ``mobilemoe::moe_ffn`` and ``mobilemoe::int4_linear`` plus their ``.out`` variants,
fake (meta) kernels for torch.export (dynamic token dims: output shape is ``x.shape[:-1] + (D,)``
resp. ``+ (out_features,)``), and CPU kernels that call the Rust library through its C ABI
(docs/DESIGN.md section 8), so eager PyTorch, the ExecuTorch runtime and Android compute the same
numbers. If the library is missing the CPU kernels raise a clear error, unless
``MOBILEMOE_REFERENCE_FALLBACK=1`` selects the (slow) pure-PyTorch reference instead.

The schema file is shipped inside the package (``mobilemoe_export/schema/ops.txt``, a copy of the
repository's ``schema/ops.txt``; a test checks they are equal).
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .._paths import SCHEMA_DIR
from . import _lib
from . import reference

NAMESPACE = "mobilemoe"
FALLBACK_ENV = "MOBILEMOE_REFERENCE_FALLBACK"


def schema_path() -> Path:
    p = SCHEMA_DIR / "ops.txt"
    if p.is_file():
        return p
    return _lib.repo_root() / "schema" / "ops.txt"


def read_schemas(path: Optional[Path] = None) -> Dict[str, str]:
    """``{op name: schema string}`` of the functional ops in ops.txt."""
    text = (path or schema_path()).read_text()
    out: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\((.*)\)\s*->\s*Tensor$", line)
        if not m:
            raise ValueError(f"unparsable op schema line in {path or schema_path()}: {line!r}")
        out[m.group(1)] = line
    return out


def out_schema(schema: str) -> str:
    """The ``.out`` variant: same args + ``, *, Tensor(a!) out) -> Tensor(a!)``."""
    name, rest = schema.split("(", 1)
    args = rest.rsplit(")", 1)[0]
    return f"{name}.out({args}, *, Tensor(a!) out) -> Tensor(a!)"


def arg_names(schema: str) -> List[str]:
    args = schema.split("(", 1)[1].rsplit(")", 1)[0]
    return [a.strip().split(" ")[-1].split("=")[0] for a in args.split(",") if a.strip() != "*"]


SCHEMAS = read_schemas()
MOE_FFN_ARGS = arg_names(SCHEMAS["moe_ffn"])
INT4_LINEAR_ARGS = arg_names(SCHEMAS["int4_linear"])

_library = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in SCHEMAS.items():
    _library.define(_schema)
    _library.define(out_schema(_schema))


# --------------------------------------------------------------------------------------------
# Fake kernels


def _moe_out_shape(x: torch.Tensor) -> List[int]:
    return list(x.shape)


@torch.library.register_fake(f"{NAMESPACE}::moe_ffn")
def _moe_ffn_fake(x, router_weight, expert_bias, w13, w13_scales, w2, w2_scales, shared_w13,
                  shared_w13_scales, shared_w2, shared_w2_scales, shared_gate, num_experts, top_k,
                  hidden_dim, shared_hidden_dim, group_size, weight_bits, score_func, renormalize,
                  route_scale, exact, num_groups=1, top_groups=1, group_score="max", weight_input=False,
                  jitter_eps=0.0, renorm_eps=0.0, renorm_min=1.1754943508222875e-38, expert_scales_out=False):
    return x.new_empty(_moe_out_shape(x), dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::int4_linear")
def _int4_linear_fake(x, weight, scales, bias, out_features, group_size, weight_bits, exact):
    return x.new_empty(list(x.shape[:-1]) + [out_features], dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Argument checks shared by the CPU kernels


def _check_moe_args(x, router_weight, num_experts, top_k, hidden_dim, group_size, weight_bits, score_func):
    if score_func not in _lib.SCORE_FUNC_IDS:
        raise ValueError(f"mobilemoe::moe_ffn: unknown score_func {score_func!r}; expected one of "
                         f"{sorted(_lib.SCORE_FUNC_IDS)}")
    if not 0 < top_k <= num_experts:
        raise ValueError(f"mobilemoe::moe_ffn: top_k={top_k} must be in 1..num_experts={num_experts}")
    if x.dtype != torch.float32:
        raise TypeError(f"mobilemoe::moe_ffn: x must be float32, got {x.dtype}")
    d = x.shape[-1]
    if router_weight.numel() != num_experts * d:
        raise ValueError(f"mobilemoe::moe_ffn: router_weight has {router_weight.numel()} elements, "
                         f"expected num_experts*D = {num_experts}*{d}")
    if d % group_size or hidden_dim % group_size:
        raise ValueError(f"mobilemoe::moe_ffn: D={d} and hidden_dim={hidden_dim} must be divisible by "
                         f"group_size={group_size}")


def _use_reference() -> bool:
    if _lib.lib_available():
        return False
    if os.environ.get(FALLBACK_ENV, "") not in ("", "0"):
        return True
    _lib.get_lib()  # raises the "run make build" error
    return False


def _ptr(t: Optional[torch.Tensor], ctype):
    if t is None:
        return ctypes.cast(None, ctypes.POINTER(ctype)), 0
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctype)), t.numel()


def _scales32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Per-group scales as fp32 for the C ABI (fp16/bf16 widen exactly: the kernels reading them in
    the delegate compute the same values)."""
    if t is not None and t.dtype in (torch.float16, torch.bfloat16):
        return t.to(torch.float32)
    return t


def _c(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.dtype != dtype:
        if dtype == torch.uint8 and t.dtype == torch.int8:
            t = t.view(torch.uint8)
        else:
            raise TypeError(f"expected a {dtype} tensor, got {t.dtype}")
    return t.detach().contiguous().cpu()


def moe_ffn_impl(x, router_weight, expert_bias, w13, w13_scales, w2, w2_scales, shared_w13,
                 shared_w13_scales, shared_w2, shared_w2_scales, shared_gate, num_experts, top_k,
                 hidden_dim, shared_hidden_dim, group_size, weight_bits, score_func, renormalize,
                 route_scale, exact, num_groups=1, top_groups=1, group_score="max", weight_input=False,
                 jitter_eps=0.0, renorm_eps=0.0, renorm_min=1.1754943508222875e-38, expert_scales_out=False):
    _check_moe_args(x, router_weight, num_experts, top_k, hidden_dim, group_size, weight_bits, score_func)
    if group_score not in _lib.GROUP_SCORE_IDS:
        raise ValueError(f"mobilemoe::moe_ffn: unknown group_score {group_score!r}; expected one of "
                         f"{sorted(_lib.GROUP_SCORE_IDS)}")
    routing = dict(num_groups=num_groups, top_groups=top_groups, group_score=group_score, weight_input=weight_input,
                   jitter_eps=jitter_eps, renorm_eps=renorm_eps, renorm_min=renorm_min)
    if expert_bias is not None and expert_bias.numel() == 0:
        expert_bias = None
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=torch.float32)
    if _use_reference():
        if expert_scales_out:
            raise RuntimeError("mobilemoe::moe_ffn: output-grouped expert scales need the Rust library (run make build)")
        return reference.moe_ffn(x, router_weight, expert_bias, w13, w13_scales, w2, w2_scales,
                                 shared_w13, shared_w13_scales, shared_w2, shared_w2_scales,
                                 shared_gate, num_experts, top_k, hidden_dim, shared_hidden_dim,
                                 group_size, weight_bits, score_func, renormalize, route_scale, exact, **routing)
    lib = _lib.get_lib()
    d = x.shape[-1]
    xs = _c(x, torch.float32)
    keep = [
        xs, _c(router_weight, torch.float32), _c(expert_bias, torch.float32),
        _c(w13, torch.uint8), _c(_scales32(w13_scales), torch.float32), _c(w2, torch.uint8), _c(_scales32(w2_scales), torch.float32),
        _c(shared_w13, torch.uint8), _c(_scales32(shared_w13_scales), torch.float32),
        _c(shared_w2, torch.uint8), _c(_scales32(shared_w2_scales), torch.float32), _c(shared_gate, torch.float32),
    ]
    out = torch.empty(x.shape, dtype=torch.float32)
    a = _lib.MobileMoeFfnArgs()
    names = ["x", "router_weight", "expert_bias", "w13", "w13_scales", "w2", "w2_scales", "shared_w13",
             "shared_w13_scales", "shared_w2", "shared_w2_scales", "shared_gate"]
    for name, t in zip(names, keep):
        ctype = ctypes.c_uint8 if name in ("w13", "w2", "shared_w13", "shared_w2") else ctypes.c_float
        p, n = _ptr(t, ctype)
        setattr(a, name, p)
        setattr(a, name + "_len", n)
    a.tokens = xs.numel() // d if d else 0
    a.num_experts, a.top_k, a.dim, a.hidden_dim = num_experts, top_k, d, hidden_dim
    a.shared_hidden_dim = shared_hidden_dim if shared_w13 is not None else 0
    a.group_size, a.weight_bits = group_size, weight_bits
    a.score_func = _lib.SCORE_FUNC_IDS[score_func]
    a.renormalize = int(bool(renormalize))
    a.route_scale = float(route_scale)
    a.exact = int(bool(exact))
    a.num_groups, a.top_groups = int(num_groups), int(top_groups)
    a.group_score = _lib.GROUP_SCORE_IDS[group_score]
    a.weight_input = int(bool(weight_input))
    a.jitter_eps = float(jitter_eps)
    a.renorm_eps = float(renorm_eps)
    a.renorm_min = float(renorm_min)
    a.scales_out = int(bool(expert_scales_out))
    a.out, a.out_len = _ptr(out, ctypes.c_float)
    _lib.check(lib.mobilemoe_moe_ffn(ctypes.byref(a)), "mobilemoe::moe_ffn")
    return out


def int4_linear_impl(x, weight, scales, bias, out_features, group_size, weight_bits, exact):
    if x.dtype != torch.float32:
        raise TypeError(f"mobilemoe::int4_linear: x must be float32, got {x.dtype}")
    k = x.shape[-1]
    if k % group_size:
        raise ValueError(f"mobilemoe::int4_linear: in_features K={k} is not divisible by group_size={group_size}")
    if x.numel() == 0:
        return torch.empty(list(x.shape[:-1]) + [out_features], dtype=torch.float32)
    if _use_reference():
        return reference.int4_linear(x, weight, scales, bias, out_features, group_size, weight_bits, exact)
    lib = _lib.get_lib()
    xs, ws, ss, bs = _c(x, torch.float32), _c(weight, torch.uint8), _c(_scales32(scales), torch.float32), _c(bias, torch.float32)
    out = torch.empty(list(x.shape[:-1]) + [out_features], dtype=torch.float32)
    a = _lib.MobileMoeLinearArgs()
    a.x, a.x_len = _ptr(xs, ctypes.c_float)
    a.rows = xs.numel() // k if k else 0
    a.weight, a.weight_len = _ptr(ws, ctypes.c_uint8)
    a.scales, a.scales_len = _ptr(ss, ctypes.c_float)
    a.bias, a.bias_len = _ptr(bs, ctypes.c_float)
    a.in_features, a.out_features, a.group_size, a.weight_bits = k, out_features, group_size, weight_bits
    a.exact = int(bool(exact))
    a.out, a.out_len = _ptr(out, ctypes.c_float)
    _lib.check(lib.mobilemoe_int4_linear(ctypes.byref(a)), "mobilemoe::int4_linear")
    return out


def pack_weights_rust(q: torch.Tensor, scales: torch.Tensor, group_size: int, bits: int):
    """T16K4 packing by the Rust library (``mobilemoe_pack_weights``): -> (uint8 data, fp32 scales)."""
    import numpy as np

    from ..quantization import quant

    lib = _lib.get_lib()
    q = q.to(torch.int8).contiguous()
    scales = scales.to(torch.float32).contiguous()
    n, k = q.shape
    nbytes, nscales = quant.packed_sizes(n, k, group_size, bits)
    data = np.zeros(nbytes, dtype=np.uint8)
    sc = np.zeros(nscales, dtype=np.float32)
    rc = lib.mobilemoe_pack_weights(
        ctypes.cast(q.data_ptr(), _lib.c_i8_p), q.numel(),
        ctypes.cast(scales.data_ptr(), _lib.c_f32_p), scales.numel(),
        n, k, group_size, bits,
        data.ctypes.data_as(_lib.c_u8_p), data.size,
        sc.ctypes.data_as(_lib.c_f32_p), sc.size,
    )
    _lib.check(rc, "mobilemoe_pack_weights")
    return data, sc


# --------------------------------------------------------------------------------------------
# CPU kernels (functional + out variants)

_library.impl("moe_ffn", moe_ffn_impl, "CPU")
_library.impl("int4_linear", int4_linear_impl, "CPU")


def _moe_ffn_out(*args, out):
    r = moe_ffn_impl(*args)
    out.resize_(r.shape)
    out.copy_(r)
    return out


def _int4_linear_out(*args, out):
    r = int4_linear_impl(*args)
    out.resize_(r.shape)
    out.copy_(r)
    return out


_library.impl("moe_ffn.out", _moe_ffn_out, "CPU")
_library.impl("int4_linear.out", _int4_linear_out, "CPU")


@torch.library.register_fake(f"{NAMESPACE}::moe_ffn.out")
def _moe_ffn_out_fake(*args, out):
    return out


@torch.library.register_fake(f"{NAMESPACE}::int4_linear.out")
def _int4_linear_out_fake(*args, out):
    return out


moe_ffn = torch.ops.mobilemoe.moe_ffn
int4_linear = torch.ops.mobilemoe.int4_linear
