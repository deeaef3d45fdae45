"""The whole decoder as MobileMoE ops: :func:`lower_decoder` turns a decoder LM into a
:class:`MobileMoEDecoder` whose forward is made only of ``mobilemoe::*`` ops and residual adds, so
``MobileMoEPartitioner`` claims the whole forward — embedding, every layer (RMSNorm, attention
with RoPE and a KV cache, MoE or dense SwiGLU FFN), the final norm and the LM head — into one
``MobileMoEBackend`` delegate.

- Weights: INT4 (or INT8), symmetric, per group (docs/DESIGN.md section 1). q/k/v are fused into
  one ``wqkv`` matrix and w1/w3 into ``w13`` (quantizing rows is per row, so fusing changes no
  value). The embedding table is the packed LM-head matrix when the model ties them (no fp32
  table in the .pte); an untied table is quantized the same way.
- KV cache: fp16 by default (``kv_cache="fp32"`` keeps fp32), owned by the delegate at run time;
  a decode step costs in proportion to its position, not to ``max_seq_len``.
- Forward contract: ``forward(tokens int64 [1, S], input_pos int64 [S]) -> logits [1, V]`` of the
  last token, like :class:`mobilemoe_export.models.Transformer`.

Supported inputs: this project's :class:`~mobilemoe_export.models.Transformer` (fp32, or after
``quantize_moe(..., dense_linears=True)``). Anything else raises ``UnsupportedModuleError``.
"""

from __future__ import annotations

import copy
import weakref
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from .. import models as _models
from ..operators import decoder_ops  # noqa: F401  (defines the ops)
from ..quantization import quant
from ..quantization.transforms import MobileMoEFFN, MobileMoELinear, UnsupportedModuleError, quantize_moe


def _qs(mod: nn.Module, name: str, group_size: int, bits: int,
        scales_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """(q int8 [N, K], scales fp32 [N, K/G], scale dtype) of an ``nn.Linear`` / :class:`MobileMoELinear`
    (which keeps the scale dtype it was quantized with; others are quantized with ``scales_dtype``)."""
    if isinstance(mod, MobileMoELinear):
        if mod.group_size != group_size or mod.weight_bits != bits:
            raise UnsupportedModuleError(f"{name}: quantized with G={mod.group_size}/{mod.weight_bits} bits, "
                                         f"the decoder uses G={group_size}/{bits} bits")
        if mod.bias is not None:
            raise UnsupportedModuleError(f"{name}: linear biases are not supported by the decoder delegate")
        q, s = quant.unpack(mod.weight, mod.scales, mod.out_features, mod.in_features, group_size, bits)
        return torch.from_numpy(q), torch.from_numpy(s), mod.scales.dtype
    if isinstance(mod, nn.Linear):
        if mod.bias is not None:
            raise UnsupportedModuleError(f"{name}: linear biases are not supported by the decoder delegate")
        return (*quant.quantize_per_group(mod.weight.detach().float(), group_size, bits, scales_dtype), scales_dtype)
    if isinstance(mod, torch.Tensor):
        return (*quant.quantize_per_group(mod.detach().float(), group_size, bits, scales_dtype), scales_dtype)
    raise UnsupportedModuleError(f"{name}: expected nn.Linear or MobileMoELinear, got {type(mod).__name__}")


def _pack(parts, group_size: int, bits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fused packing of row blocks (q/k/v, w1/w3) that share one scale dtype."""
    dtypes = {p[2] for p in parts}
    if len(dtypes) != 1:
        raise UnsupportedModuleError(f"fused matrices quantized with different scale dtypes: {sorted(map(str, dtypes))}")
    q = torch.cat([p[0] for p in parts], 0)
    s = torch.cat([p[1] for p in parts], 0)
    d, sc = quant.pack(q, s, group_size, bits)
    return torch.from_numpy(np.ascontiguousarray(d)), torch.from_numpy(np.ascontiguousarray(sc)).to(dtypes.pop())


class DecoderAttention(nn.Module):
    def __init__(self, attn: nn.Module, cfg, name: str, group_size: int, bits: int, kv_fp16: bool,
                 rope_interleaved: bool, exact: bool, scales_dtype: torch.dtype = torch.float32,
                 qk_norm_eps: Optional[float] = None, window: int = 0) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.max_seq_len = cfg.max_seq_len
        # sliding-window (local) attention over the last `window` positions (0: global); such a
        # layer's KV cache is a ring of decoder_ops.cache_rows(max_seq_len, window) slots
        if isinstance(window, bool) or int(window) != window or window < 0:
            raise ValueError(f"{name}: window must be an integer >= 0, got {window!r}")
        self.window = int(window)
        self.group_size, self.weight_bits, self.exact = group_size, bits, exact
        self.kv_fp16, self.rope_interleaved = kv_fp16, rope_interleaved
        # MobileMoE's QK-norm: a weightless RMS norm of every q and k head after RoPE (None: off)
        self.qk_norm_eps = None if qk_norm_eps is None else float(qk_norm_eps)
        sd = scales_dtype
        w, s = _pack([_qs(attn.wq, f"{name}.wq", group_size, bits, sd), _qs(attn.wk, f"{name}.wk", group_size, bits, sd),
                      _qs(attn.wv, f"{name}.wv", group_size, bits, sd)], group_size, bits)
        self.register_buffer("wqkv", w)
        self.register_buffer("wqkv_scales", s)
        w, s = _pack([_qs(attn.wo, f"{name}.wo", group_size, bits, sd)], group_size, bits)
        self.register_buffer("wo", w)
        self.register_buffer("wo_scales", s)
        # eager-mode cache (the delegate allocates its own); a plain attribute, not a buffer, so
        # that it is not serialised into the .pte
        self.cache_id = decoder_ops.new_kv_cache(self.n_kv_heads, self.max_seq_len, self.head_dim, kv_fp16,
                                                 window=self.window)
        # the eager cache lives as long as this module
        weakref.finalize(self, decoder_ops.KV_CACHES.pop, self.cache_id, None)

    def __deepcopy__(self, memo):
        # a copy gets its own eager KV cache (sharing one would interleave two sequences)
        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            setattr(new, k, copy.deepcopy(v, memo))
        k, v = decoder_ops.KV_CACHES[self.cache_id]
        new.cache_id = decoder_ops.new_kv_cache(self.n_kv_heads, self.max_seq_len, self.head_dim, self.kv_fp16,
                                                window=self.window)
        decoder_ops.KV_CACHES[new.cache_id][0].copy_(k)
        decoder_ops.KV_CACHES[new.cache_id][1].copy_(v)
        weakref.finalize(new, decoder_ops.KV_CACHES.pop, new.cache_id, None)
        return new

    def reset_cache(self) -> None:
        for t in decoder_ops.KV_CACHES[self.cache_id]:
            t.zero_()

    def forward(self, x, input_pos, rope_cos, rope_sin):
        return torch.ops.mobilemoe.attention(
            x, input_pos, self.wqkv, self.wqkv_scales, self.wo, self.wo_scales, rope_cos, rope_sin, self.cache_id,
            self.n_heads, self.n_kv_heads, self.head_dim, self.max_seq_len, self.rope_interleaved, self.kv_fp16,
            self.group_size, self.weight_bits, self.exact, self.qk_norm_eps is not None,
            1e-5 if self.qk_norm_eps is None else self.qk_norm_eps, self.window)


class DecoderSwiGLU(nn.Module):
    """Dense SwiGLU FFN on fused ``w13`` (the dense baseline)."""

    def __init__(self, ffn: nn.Module, name: str, group_size: int, bits: int, exact: bool,
                 scales_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.hidden_dim = ffn.w1.out_features if hasattr(ffn.w1, "out_features") else ffn.w1.weight.shape[0]
        self.group_size, self.weight_bits, self.exact = group_size, bits, exact
        sd = scales_dtype
        w, s = _pack([_qs(ffn.w1, f"{name}.w1", group_size, bits, sd), _qs(ffn.w3, f"{name}.w3", group_size, bits, sd)],
                     group_size, bits)
        self.register_buffer("w13", w)
        self.register_buffer("w13_scales", s)
        w, s = _pack([_qs(ffn.w2, f"{name}.w2", group_size, bits, sd)], group_size, bits)
        self.register_buffer("w2", w)
        self.register_buffer("w2_scales", s)

    def forward(self, x):
        return torch.ops.mobilemoe.swiglu_ffn(x, self.w13, self.w13_scales, self.w2, self.w2_scales, self.hidden_dim,
                                              self.group_size, self.weight_bits, self.exact)


class DecoderLayer(nn.Module):
    def __init__(self, attn_norm, attention, ffn_norm, ffn, eps: float) -> None:
        super().__init__()
        self.register_buffer("attention_norm", attn_norm.detach().float().clone())
        self.register_buffer("ffn_norm", ffn_norm.detach().float().clone())
        self.attention = attention
        self.feed_forward = ffn
        self.eps = eps

    def forward(self, h, input_pos, rope_cos, rope_sin):
        a = torch.ops.mobilemoe.rms_norm(h, self.attention_norm, self.eps)
        h = h + self.attention(a, input_pos, rope_cos, rope_sin)
        f = torch.ops.mobilemoe.rms_norm(h, self.ffn_norm, self.eps)
        return h + self.feed_forward(f)


class MobileMoEDecoder(nn.Module):
    """The whole forward in MobileMoE ops; same contract as ``models.Transformer``."""

    def __init__(self, cfg, emb: Tuple[torch.Tensor, torch.Tensor], head: Tuple[torch.Tensor, torch.Tensor],
                 layers, norm: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor, group_size: int,
                 bits: int, exact: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab, self.dim, self.eps = cfg.vocab_size, cfg.dim, cfg.norm_eps
        self.group_size, self.weight_bits, self.exact = group_size, bits, exact
        self.register_buffer("emb_weight", emb[0])
        self.register_buffer("emb_scales", emb[1])
        self.tied = head is emb
        if self.tied:
            # the same tensors: one placeholder, one segment in the blob
            self.head_weight, self.head_scales = self.emb_weight, self.emb_scales
        else:
            self.register_buffer("head_weight", head[0])
            self.register_buffer("head_scales", head[1])
        self.layers = nn.ModuleList(layers)
        self.register_buffer("norm", norm.detach().float().clone())
        self.register_buffer("rope_cos", rope_cos.detach().float().contiguous().clone())
        self.register_buffer("rope_sin", rope_sin.detach().float().contiguous().clone())

    @property
    def max_seq_len(self) -> int:
        return self.cfg.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def reset_cache(self) -> None:
        for layer in self.layers:
            layer.attention.reset_cache()

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        h = torch.ops.mobilemoe.embedding(tokens, self.emb_weight, self.emb_scales, self.vocab, self.dim,
                                          self.group_size, self.weight_bits)
        for layer in self.layers:
            h = layer(h, input_pos, self.rope_cos, self.rope_sin)
        return torch.ops.mobilemoe.lm_head(h, self.norm, self.eps, self.head_weight, self.head_scales, self.vocab,
                                           self.group_size, self.weight_bits, self.exact)

    # the same example inputs and dynamic token dimension as models.Transformer (both read only cfg)
    example_inputs = _models.Transformer.example_inputs
    dynamic_shapes = _models.Transformer.dynamic_shapes


def _is_et_llama(model: nn.Module) -> bool:
    t = type(model)
    return t.__name__ == "Transformer" and "executorch.examples.models.llama" in t.__module__


def is_lowerable(model: nn.Module) -> bool:
    from ..models import Transformer

    return isinstance(model, (Transformer, MobileMoEDecoder)) or _is_et_llama(model)


def _lower_ffn(blk: nn.Module, attr: str, name: str, G: int, B: int, exact: bool, sd: torch.dtype) -> nn.Module:
    """The FFN of a block as a decoder module: a dense SwiGLU (w1/w3/w2 linears) or a MoE block
    (quantized in place by ``quantize_moe`` if not yet)."""
    ff = getattr(blk, attr)
    if (hasattr(ff, "w1") and hasattr(ff, "w3") and hasattr(ff, "w2") and not isinstance(ff, MobileMoEFFN)
            and isinstance(ff.w1, (nn.Linear, MobileMoELinear))):
        return DecoderSwiGLU(ff, f"{name}.{attr}", G, B, exact, sd)
    if not isinstance(ff, MobileMoEFFN):
        quantize_moe(blk, G, B, dense_linears=False, exact=exact, scales_dtype=sd)
        ff = getattr(blk, attr)
    if not isinstance(ff, MobileMoEFFN):
        raise UnsupportedModuleError(f"{name}.{attr}: {type(ff).__name__} is not a recognised FFN")
    if ff.output not in ("same", "flat"):
        raise UnsupportedModuleError(f"{name}.{attr}: output layout {ff.output!r} is not supported")
    ff.output = "same"  # the decoder feeds [1, S, D] and adds the result to [1, S, D]
    return ff


def _default_scales_dtype(model: nn.Module) -> torch.dtype:
    """The scale dtype of the model's quantized modules (one), else fp32."""
    dts = set()
    for m in model.modules():
        if isinstance(m, MobileMoELinear):
            dts.add(m.scales.dtype)
        elif isinstance(m, MobileMoEFFN):
            dts.add(m.w13_scales.dtype)
    if len(dts) > 1:
        raise UnsupportedModuleError(f"the model's quantized modules use different scale dtypes: {sorted(map(str, dts))}; "
                                     f"pass scales_dtype= to choose the one for the matrices the lowering quantizes")
    return dts.pop() if dts else torch.float32


def lower_decoder(model: nn.Module, group_size: int = 32, weight_bits: int = 4, *, kv_cache: str = "fp16",
                  rope_style: Optional[str] = None, exact: bool = False,
                  scales_dtype=None) -> MobileMoEDecoder:
    """A :class:`MobileMoEDecoder` computing ``model`` with INT4/INT8 weights: this project's
    ``models.Transformer`` (fp32, or after ``quantize_moe``) or ExecuTorch's llama ``Transformer``
    (``executorch.examples.models.llama``, dense or ``MOEFeedForward`` layers). ``model`` is not
    modified, except that MoE blocks not yet quantized are quantized in place (as ``quantize_moe``
    would). ``kv_cache``: ``"fp16"`` or ``"fp32"``. ``rope_style``: ``"half_split"``
    (``rotate_half``: this project's and Hugging Face's) or ``"interleaved"`` (Meta's); by default
    the model's own (``cfg.rope_style`` of a ``models.Transformer``, whose RoPE tables — Llama
    3-scaled if ``cfg.rope_scaling`` — and QK-norm ``cfg.qk_norm_eps`` are carried over).
    ``scales_dtype`` ("fp32" | "fp16" | "bf16" or a torch dtype): the per-group scale type of the
    matrices this lowering quantizes; by default that of the model's already quantized modules
    (``quantize_moe(..., scales_dtype=...)``), else fp32. Features the decoder cannot compute
    exactly raise ``UnsupportedModuleError`` naming them."""
    from ..models import ModelConfig, Transformer

    if isinstance(model, MobileMoEDecoder):
        return model
    if kv_cache not in ("fp16", "fp32"):
        raise ValueError(f"kv_cache must be 'fp16' or 'fp32', got {kv_cache!r}")
    if rope_style not in (None, "half_split", "interleaved"):
        raise ValueError(f"rope_style must be 'half_split' or 'interleaved', got {rope_style!r}")
    G, B = group_size, weight_bits
    sd = _default_scales_dtype(model) if scales_dtype is None else quant.scale_dtype(scales_dtype)
    exact = exact or any(getattr(m, "exact", False) for m in model.modules() if isinstance(m, (MobileMoEFFN, MobileMoELinear)))
    if isinstance(model, Transformer):
        cfg = model.cfg
        style = rope_style or getattr(cfg, "rope_style", "half_split")
        qk_norm_eps = getattr(cfg, "qk_norm_eps", None)
        blocks = [(blk, blk.attention, blk.attention_norm.weight, blk.ffn_norm.weight, "feed_forward") for blk in model.layers]
        rope_cos, rope_sin = model.rope_cos, model.rope_sin
        tied = cfg.tie_embeddings
        norm_w = model.norm.weight
    elif _is_et_llama(model):
        cfg, style, blocks, rope_cos, rope_sin, tied, norm_w = _et_llama_parts(model, ModelConfig)
        style = rope_style or style
        qk_norm_eps = None  # ExecuTorch's use_qk_norm (weighted, before RoPE) is refused by _et_llama_parts
    else:
        raise UnsupportedModuleError(f"lower_decoder: {type(model).__name__} is neither a mobilemoe_export.models."
                                     f"Transformer nor ExecuTorch's llama Transformer")
    quant.check_matrix(cfg.vocab_size, cfg.dim, G, B, "embedding / LM head")
    head = _pack([_qs(model.output, "output", G, B, sd)], G, B)
    emb = head if tied else _pack([_qs(model.tok_embeddings.weight, "tok_embeddings", G, B, sd)], G, B)
    layers = []
    for i, (blk, attn_mod, an, fn, ffn_attr) in enumerate(blocks):
        name = f"layers.{i}"
        # a models.Attention's sliding window (cfg.layer_window(i)); ExecuTorch's llama has none
        attn = DecoderAttention(attn_mod, cfg, f"{name}.attention", G, B, kv_cache == "fp16",
                                style == "interleaved", exact, sd, qk_norm_eps=qk_norm_eps,
                                window=getattr(attn_mod, "window", 0) if isinstance(model, Transformer) else 0)
        renorm_eps = getattr(getattr(blk, ffn_attr), "renorm_eps", None)
        ffn = _lower_ffn(blk, ffn_attr, name, G, B, exact, sd)
        # a routing renormalisation epsilon (MobileMoE: w / (sum + 1e-20)) of the fp32 block, or of
        # the config, that quantize_moe's extraction does not carry over
        renorm_eps = renorm_eps if renorm_eps is not None else getattr(cfg, "renorm_eps", 0.0)
        if isinstance(ffn, MobileMoEFFN) and renorm_eps and not ffn.renorm_eps:
            ffn.renorm_eps = float(renorm_eps)
        layers.append(DecoderLayer(an, attn, fn, ffn, cfg.norm_eps))
    return MobileMoEDecoder(cfg, emb, head, layers, norm_w, rope_cos, rope_sin, G, B, exact)


def _et_llama_parts(model: nn.Module, ModelConfig):
    """Config, RoPE tables and per-layer modules of ExecuTorch's llama ``Transformer``, after
    checking that every feature it uses is one the decoder computes exactly."""
    p = model.params
    bad = []
    checks = {
        "apply_embedding=False": not p.apply_embedding, "apply_output=False": not p.apply_output,
        "generate_full_logits": p.generate_full_logits, "output_prune_map": p.output_prune_map is not None,
        "input_prune_map": p.input_prune_map is not None, "use_qk_norm": p.use_qk_norm,
        "attention_qkv_bias": p.attention_qkv_bias, "use_residual_gate": getattr(p, "use_residual_gate", False),
        "use_ffn_learnable_scales": getattr(p, "use_ffn_learnable_scales", False),
        "use_q_gate": getattr(p, "use_q_gate", False), "use_attn_o_gate": getattr(p, "use_attn_o_gate", False),
        "use_attn_o_norm": getattr(p, "use_attn_o_norm", False),
        "num_kv_shared_layers": bool(getattr(p, "num_kv_shared_layers", 0)),
        "partial_rotary_factor != 1": getattr(p, "partial_rotary_factor", 1.0) != 1.0,
        "scale_query_by != 1": getattr(p, "scale_query_by", 1.0) not in (None, 1.0),
        "attention_type other than mha": getattr(p, "attention_type", "mha") != "mha",
        "mlp_type skip": any(str(t).lower() == "skip" for t in (p.mlp_type or [])),
        "rms_norm_add_unit_offset": getattr(p, "rms_norm_add_unit_offset", False),
        # (this project's models.Transformer carries its windows to the delegate; ExecuTorch's are not mapped)
        "sliding_window": getattr(p, "sliding_window", None) is not None,
        "local_rope_theta": getattr(p, "local_rope_theta", None) is not None,
    }
    bad = [k for k, v in checks.items() if v]
    if bad:
        raise UnsupportedModuleError("lower_decoder: ExecuTorch llama Transformer uses features the MobileMoE decoder "
                                     "does not compute: " + ", ".join(bad))
    max_len = int(p.max_context_len)
    hd = int(p.head_dim)
    cos, sin = model.rope.freqs_cos[:max_len], model.rope.freqs_sin[:max_len]
    if p.use_hf_rope:
        style = "half_split"
        cos, sin = cos[:, : hd // 2], sin[:, : hd // 2]  # HF tables repeat the half
    else:
        style = "interleaved"
    if tuple(cos.shape) != (max_len, hd // 2):
        raise UnsupportedModuleError(f"lower_decoder: RoPE table shape {tuple(cos.shape)} is not [max_context_len, "
                                     f"head_dim/2] = [{max_len}, {hd // 2}]")
    cfg = ModelConfig(name="executorch-llama", vocab_size=int(p.vocab_size), dim=int(p.dim), n_layers=int(p.n_layers),
                      n_heads=int(p.n_heads), n_kv_heads=int(p.n_kv_heads or p.n_heads), head_dim=hd,
                      max_seq_len=max_len, norm_eps=float(p.norm_eps), rope_theta=float(p.rope_freq_base))
    blocks = []
    for i, blk in enumerate(model.layers):
        attr = "block_sparse_moe" if hasattr(blk, "block_sparse_moe") else "feed_forward"
        blocks.append((blk, blk.attention, blk.attention_norm.weight, blk.ffn_norm.weight, attr))
    tied = model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()
    return cfg, style, blocks, cos.contiguous(), sin.contiguous(), tied, model.norm.weight
