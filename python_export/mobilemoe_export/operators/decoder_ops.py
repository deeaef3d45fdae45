"""``torch.library`` ops of the whole-decoder delegate: embedding, rms_norm, attention (RoPE + KV
cache + causal GQA), swiglu_ffn and lm_head, with fake kernels for torch.export and CPU kernels
that call the Rust library (``mobilemoe_decoder_op``, docs/DESIGN.md section 9), so eager PyTorch
and the delegate compute the same numbers.

These ops exist to be claimed by ``MobileMoEPartitioner`` into one ``MobileMoEBackend`` delegate;
they have no portable ExecuTorch kernels (``export_pte(..., delegate=False)`` keeps the model's
own attention instead, see :mod:`mobilemoe_export.lowering.decoder`).

The attention op's KV cache is state: in eager mode it lives in :data:`KV_CACHES` under the op's
``cache_id`` (allocated by :class:`mobilemoe_export.lowering.decoder.DecoderAttention`); inside the delegate
each Attention node owns a cache allocated at init. ``cache_id`` is not serialised.
"""

from __future__ import annotations

import ctypes
from typing import Dict, Tuple

import torch

from . import _lib
from .ops import _scales32

NAMESPACE = "mobilemoe"

SCHEMAS = {
    "embedding": "embedding(Tensor tokens, Tensor weight, Tensor scales, int vocab_size, int dim, int group_size, "
                 "int weight_bits) -> Tensor",
    "rms_norm": "rms_norm(Tensor x, Tensor weight, float eps) -> Tensor",
    "attention": "attention(Tensor x, Tensor input_pos, Tensor wqkv, Tensor wqkv_scales, Tensor wo, "
                 "Tensor wo_scales, Tensor rope_cos, Tensor rope_sin, int cache_id, int n_heads, int n_kv_heads, "
                 "int head_dim, int max_seq_len, bool rope_interleaved, bool kv_fp16, int group_size, "
                 "int weight_bits, bool exact, bool qk_norm=False, float qk_norm_eps=1e-05, int window=0) -> Tensor",
    "swiglu_ffn": "swiglu_ffn(Tensor x, Tensor w13, Tensor w13_scales, Tensor w2, Tensor w2_scales, int hidden_dim, "
                  "int group_size, int weight_bits, bool exact) -> Tensor",
    "lm_head": "lm_head(Tensor x, Tensor norm_weight, float eps, Tensor weight, Tensor scales, int vocab_size, "
               "int group_size, int weight_bits, bool exact) -> Tensor",
}


def arg_names(name: str):
    args = SCHEMAS[name].split("(", 1)[1].rsplit(")", 1)[0]
    return [a.strip().split(" ")[-1].split("=")[0] for a in args.split(",")]


_library = torch.library.Library(NAMESPACE, "FRAGMENT")
for _schema in SCHEMAS.values():
    _library.define(_schema)

OP_RMS_NORM, OP_EMBEDDING, OP_ATTENTION, OP_SWIGLU_FFN, OP_LM_HEAD = 1, 2, 3, 4, 5

# cache_id -> (k_cache, v_cache), each [n_kv_heads, max_seq_len, head_dim] float16 / float32
KV_CACHES: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
_next_cache_id = [0]


WINDOW_BLOCK = 32  # ops/src/decoder.rs WINDOW_BLOCK


def cache_rows(max_seq_len: int, window: int = 0) -> int:
    """Slots per KV head of an attention layer's cache: ``max_seq_len``, or for a sliding-window
    layer a ring of ``window + 32`` (``AttentionSpec::cache_rows``)."""
    return min(window + WINDOW_BLOCK, max_seq_len) if 0 < window < max_seq_len else max_seq_len


def new_kv_cache(n_kv_heads: int, max_seq_len: int, head_dim: int, fp16: bool, window: int = 0) -> int:
    dt = torch.float16 if fp16 else torch.float32
    max_seq_len = cache_rows(max_seq_len, window)
    cid = _next_cache_id[0]
    _next_cache_id[0] += 1
    KV_CACHES[cid] = (torch.zeros(n_kv_heads, max_seq_len, head_dim, dtype=dt),
                      torch.zeros(n_kv_heads, max_seq_len, head_dim, dtype=dt))
    return cid


class _Buf(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("len", ctypes.c_uint64)]


def _run(op: int, bufs, ints, floats, out: torch.Tensor, what: str) -> torch.Tensor:
    lib = _lib.get_lib()
    if not getattr(lib, "_decoder_declared", False):
        lib.mobilemoe_decoder_op.restype = ctypes.c_int32
        lib.mobilemoe_decoder_op.argtypes = [
            ctypes.c_int32, ctypes.POINTER(_Buf), ctypes.c_uint64, ctypes.POINTER(ctypes.c_int64), ctypes.c_uint64,
            ctypes.POINTER(ctypes.c_double), ctypes.c_uint64, ctypes.POINTER(ctypes.c_float), ctypes.c_uint64,
        ]
        lib._decoder_declared = True
    keep = [t.detach().contiguous() for t in bufs]
    arr = (_Buf * max(1, len(keep)))(*[_Buf(t.data_ptr() if t.numel() else None, t.numel()) for t in keep])
    ia = (ctypes.c_int64 * max(1, len(ints)))(*[int(v) for v in ints])
    fa = (ctypes.c_double * max(1, len(floats)))(*[float(v) for v in floats])
    rc = lib.mobilemoe_decoder_op(op, arr, len(keep), ia, len(ints), fa, len(floats),
                                  ctypes.cast(out.data_ptr(), ctypes.POINTER(ctypes.c_float)), out.numel())
    _lib.check(rc, f"mobilemoe::{what}")
    return out


def _f32(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dtype != torch.float32:
        raise TypeError(f"mobilemoe::{what}: expected float32, got {x.dtype}")
    return x


def embedding_impl(tokens, weight, scales, vocab_size, dim, group_size, weight_bits):
    out = torch.empty(list(tokens.shape) + [dim], dtype=torch.float32)
    return _run(OP_EMBEDDING, [tokens.to(torch.int64), weight, _scales32(scales)], [vocab_size, dim, group_size, weight_bits], [],
                out, "embedding")


def rms_norm_impl(x, weight, eps):
    out = torch.empty(x.shape, dtype=torch.float32)
    return _run(OP_RMS_NORM, [_f32(x, "rms_norm"), _f32(weight, "rms_norm")], [], [eps], out, "rms_norm")


def attention_impl(x, input_pos, wqkv, wqkv_scales, wo, wo_scales, rope_cos, rope_sin, cache_id, n_heads, n_kv_heads,
                   head_dim, max_seq_len, rope_interleaved, kv_fp16, group_size, weight_bits, exact, qk_norm=False,
                   qk_norm_eps=1e-5, window=0):
    if cache_id not in KV_CACHES:
        raise RuntimeError(f"mobilemoe::attention: no KV cache {cache_id} in this process")
    k, v = KV_CACHES[cache_id]
    want = torch.float16 if kv_fp16 else torch.float32
    if k.dtype != want or tuple(k.shape) != (n_kv_heads, cache_rows(max_seq_len, window), head_dim):
        raise RuntimeError(f"mobilemoe::attention: KV cache {cache_id} is {tuple(k.shape)} {k.dtype}")
    out = torch.empty(x.shape, dtype=torch.float32)
    d = x.shape[-1]
    # the caches are written in place: pass them as they are (contiguous by construction)
    return _run(OP_ATTENTION,
                [_f32(x, "attention"), input_pos.to(torch.int64), wqkv, _scales32(wqkv_scales), wo, _scales32(wo_scales), rope_cos, rope_sin,
                 k, v],
                [d, n_heads, n_kv_heads, head_dim, max_seq_len, int(rope_interleaved), int(kv_fp16), group_size,
                 weight_bits, int(exact), int(bool(qk_norm)), int(window)], [float(qk_norm_eps)], out, "attention")


def swiglu_ffn_impl(x, w13, w13_scales, w2, w2_scales, hidden_dim, group_size, weight_bits, exact):
    out = torch.empty(x.shape, dtype=torch.float32)
    return _run(OP_SWIGLU_FFN, [_f32(x, "swiglu_ffn"), w13, _scales32(w13_scales), w2, _scales32(w2_scales)],
                [x.shape[-1], hidden_dim, group_size, weight_bits, int(exact)], [], out, "swiglu_ffn")


def _lm_head_shape(x, vocab_size):
    return list(x.shape[:-2]) + [vocab_size]


def lm_head_impl(x, norm_weight, eps, weight, scales, vocab_size, group_size, weight_bits, exact):
    out = torch.empty(_lm_head_shape(x, vocab_size), dtype=torch.float32)
    return _run(OP_LM_HEAD, [_f32(x, "lm_head"), norm_weight, weight, _scales32(scales)],
                [vocab_size, x.shape[-1], group_size, weight_bits, int(exact)], [eps], out, "lm_head")


_library.impl("embedding", embedding_impl, "CPU")
_library.impl("rms_norm", rms_norm_impl, "CPU")
_library.impl("attention", attention_impl, "CPU")
_library.impl("swiglu_ffn", swiglu_ffn_impl, "CPU")
_library.impl("lm_head", lm_head_impl, "CPU")


@torch.library.register_fake(f"{NAMESPACE}::embedding")
def _embedding_fake(tokens, weight, scales, vocab_size, dim, group_size, weight_bits):
    return torch.empty(list(tokens.shape) + [dim], dtype=torch.float32, device=tokens.device)


@torch.library.register_fake(f"{NAMESPACE}::rms_norm")
def _rms_norm_fake(x, weight, eps):
    return torch.empty_like(x)


@torch.library.register_fake(f"{NAMESPACE}::attention")
def _attention_fake(x, input_pos, *rest):
    return torch.empty_like(x)


@torch.library.register_fake(f"{NAMESPACE}::swiglu_ffn")
def _swiglu_fake(x, *rest):
    return torch.empty_like(x)


@torch.library.register_fake(f"{NAMESPACE}::lm_head")
def _lm_head_fake(x, norm_weight, eps, weight, scales, vocab_size, group_size, weight_bits, exact):
    return x.new_empty(_lm_head_shape(x, vocab_size))


KINDS = tuple(SCHEMAS)
