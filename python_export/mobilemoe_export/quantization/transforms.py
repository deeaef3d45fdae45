"""Source transforms: replace recognised MoE blocks (and optionally nn.Linear) by MobileMoE ops.

Recognised MoE blocks (see :func:`extract_moe`):

1. ``mobilemoe_export.moe_block.MoEFeedForward`` (this project's own block);
2. ExecuTorch's ``MOEFeedForward`` (``executorch.examples.models.llama.llama_transformer``);
3. ExecuTorch's ``QuantizedMoEFFN`` (``.../source_transformation/moe.py``; torchao-packed buffers);
4. ``transformers``' own MoE blocks, by family: every block with routed experts of the pinned
   transformers (5.24) is either mapped exactly or refused with the reason
   (:mod:`mobilemoe_export.sources.hf_families`);
5. other Hugging Face-style blocks, by structure: Mixtral-like (``gate`` + ``experts[i].w1/w2/w3``),
   Qwen-MoE / OLMoE-like (``gate`` + ``experts[i].gate_proj/up_proj/down_proj``, ``norm_topk_prob``,
   optional ``shared_expert`` + ``shared_expert_gate``), DeepSeek-like (``gate.weight`` +
   ``gate.e_score_correction_bias``, sigmoid, ``routed_scaling_factor``, ``shared_experts``), and
   fused-expert variants (``experts.gate_up_proj [E, 2F, D]`` + ``experts.down_proj [E, D, F]``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from ..operators import ops as _ops  # noqa: F401  (defines torch.ops.mobilemoe.*)
from . import quant
from ..moe_block import FLT_MIN, GROUP_SCORES, SCORE_FUNCS, MoEFeedForward


class UnsupportedModuleError(ValueError):
    """Raised by :func:`quantize_moe` with the list of modules it could not handle."""


# ---------------------------------------------------------------------------------------------
# Canonical description of a MoE block


@dataclass
class MoESpec:
    router_weight: torch.Tensor  # [E, D] fp32
    top_k: int
    score_func: str
    renormalize: bool
    route_scale: float
    expert_bias: Optional[torch.Tensor] = None  # [E]
    # fp experts: w1, w3 [E, F, D]; w2 [E, D, F]
    w1: Optional[torch.Tensor] = None
    w3: Optional[torch.Tensor] = None
    w2: Optional[torch.Tensor] = None
    # or already integer-quantized experts: lists of (q [N, K] int8, scales [N, K/G] fp32)
    q13: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
    q2: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
    hidden_dim: int = 0
    # shared expert: w1, w3 [Fs, D], w2 [D, Fs]
    shared: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
    shared_gate: Optional[torch.Tensor] = None  # [D]
    # quantization fixed by the source (QuantizedMoEFFN): overrides quantize_moe's arguments
    group_size: Optional[int] = None
    weight_bits: Optional[int] = None
    # per-group scale dtype fixed by the source (QAT with fp16/bf16 scales): overrides the argument
    scales_dtype: Optional[torch.dtype] = None
    # "same" | "flat" ([T, D]) | "tuple" ((out, router_logits [T, E])) | "flat_tuple" ((out [T, D], logits))
    output: str = "same"
    notes: List[str] = field(default_factory=list)
    # routing beyond one top-k over all experts (moe_block.route): group-limited selection,
    # sparsemixer's threshold, and the weight applied to the expert input (Llama 4)
    num_groups: int = 1
    top_groups: int = 1
    group_score: str = "max"
    jitter_eps: float = 0.0
    renorm_eps: float = 0.0
    renorm_min: float = FLT_MIN
    weight_input: bool = False
    # "in" (default): q13/q2 scales are [N, K/G] (groups along the reduction dimension, our
    # layout). "out": MobileMoE's QAT experts, groups along the output: q13 holds per expert
    # (q [2F, D], s [D, 2F/G]) and q2 (q [D, F], s [F, D/G]), s exactly as the checkpoint stores it
    # ([in, out/G]); the weight is q[n, k] * s[k, n // G] (docs/DESIGN.md section 2b).
    scales_axis: str = "in"
    # integer shared expert: ((q1 [Fs, D], s1 [Fs, D/G]), (q3, s3), (q2 [D, Fs], s2 [D, Fs/G]))
    shared_q: Optional[Tuple[Tuple[torch.Tensor, torch.Tensor], ...]] = None

    def route_kwargs(self) -> dict:
        """The keyword arguments of :func:`mobilemoe_export.moe_block.route` beyond the basic ones."""
        return dict(num_groups=int(self.num_groups), top_groups=int(self.top_groups), group_score=self.group_score,
                    jitter_eps=float(self.jitter_eps), renorm_eps=float(self.renorm_eps),
                    renorm_min=float(self.renorm_min))


def _f32(t: torch.Tensor, live: bool = False) -> torch.Tensor:
    """fp32 copy of ``t`` (detached, CPU, contiguous); with ``live`` the tensor itself as fp32,
    still attached to autograd (the QAT forward of :mod:`mobilemoe_export.quantization.qat`)."""
    if live:
        return t if t.dtype == torch.float32 else t.to(torch.float32)
    t = t.detach()
    if hasattr(t, "dequantize") and not t.is_floating_point():
        t = t.dequantize()
    return t.to(torch.float32).cpu().contiguous()


def _check3(name: str, t: torch.Tensor, shape: Tuple[int, int, int]) -> None:
    if t.dim() != 3 or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be a 3-D [E, N, K] tensor of shape {tuple(shape)}, got {tuple(t.shape)}")


def _linear_w(m: Any, name: str, live: bool = False) -> torch.Tensor:
    w = getattr(m, "weight", None)
    if w is None or not isinstance(w, torch.Tensor) or w.dim() != 2:
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else None
        raise ValueError(f"{name}: expected a linear layer with a 2-D weight, got {type(m).__name__} weight {shape}")
    if getattr(m, "bias", None) is not None:
        raise ValueError(f"{name}: linear layers with bias are not supported inside MoE experts")
    return _f32(w, live)


def _top_k_of(m: nn.Module, *holders: Any) -> int:
    for h in (m,) + holders:
        if h is None:
            continue
        for attr in ("top_k", "num_experts_per_tok", "num_activated_experts"):
            v = getattr(h, attr, None)
            if isinstance(v, int):
                return v
    raise ValueError(f"{type(m).__name__}: cannot find top_k / num_experts_per_tok")


def _is_et_moe(m: nn.Module) -> bool:
    cls = type(m)
    return cls.__name__ == "MOEFeedForward" and hasattr(m, "cond_ffn") and hasattr(m, "gate")


def _is_et_quantized_moe(m: nn.Module) -> bool:
    return type(m).__name__ == "QuantizedMoEFFN" and hasattr(m, "packed_w13") and hasattr(m, "gate_weight")


def _experts_from_list(experts: nn.ModuleList, name: str, live: bool = False):
    e0 = experts[0]
    if all(hasattr(e0, a) for a in ("w1", "w2", "w3")):
        names = ("w1", "w3", "w2")
    elif all(hasattr(e0, a) for a in ("gate_proj", "up_proj", "down_proj")):
        names = ("gate_proj", "up_proj", "down_proj")
    else:
        raise ValueError(f"{name}.experts[0] ({type(e0).__name__}) has neither w1/w2/w3 nor gate_proj/up_proj/down_proj")
    w1 = torch.stack([_linear_w(getattr(e, names[0]), f"{name}.experts[{i}].{names[0]}", live) for i, e in enumerate(experts)])
    w3 = torch.stack([_linear_w(getattr(e, names[1]), f"{name}.experts[{i}].{names[1]}", live) for i, e in enumerate(experts)])
    w2 = torch.stack([_linear_w(getattr(e, names[2]), f"{name}.experts[{i}].{names[2]}", live) for i, e in enumerate(experts)])
    return w1, w3, w2


def _experts_fused(experts: nn.Module, e: int, d: int, name: str, live: bool = False):
    gu = _f32(experts.gate_up_proj, live)
    dn = _f32(experts.down_proj, live)
    if gu.dim() != 3 or dn.dim() != 3:
        raise ValueError(f"{name}.experts: gate_up_proj/down_proj must be 3-D, got {tuple(gu.shape)} / {tuple(dn.shape)}")
    if gu.shape[0] != e or dn.shape[0] != e:
        raise ValueError(f"{name}.experts: expected {e} experts, got {gu.shape[0]} / {dn.shape[0]}")
    if gu.shape[2] == d and gu.shape[1] % 2 == 0:  # [E, 2F, D]
        f = gu.shape[1] // 2
        w1, w3 = gu[:, :f], gu[:, f:]
    elif gu.shape[1] == d and gu.shape[2] % 2 == 0:  # [E, D, 2F]
        f = gu.shape[2] // 2
        w1, w3 = gu[:, :, :f].transpose(1, 2), gu[:, :, f:].transpose(1, 2)
    else:
        raise ValueError(f"{name}.experts.gate_up_proj shape {tuple(gu.shape)} does not match D={d}")
    if tuple(dn.shape) == (e, d, f):
        w2 = dn
    elif tuple(dn.shape) == (e, f, d):
        w2 = dn.transpose(1, 2)
    else:
        raise ValueError(f"{name}.experts.down_proj shape {tuple(dn.shape)} does not match D={d}, F={f}")
    if getattr(experts, "gate_up_proj_bias", None) is not None or getattr(experts, "down_proj_bias", None) is not None:
        raise ValueError(f"{name}.experts: expert biases are not supported")
    return w1.contiguous(), w3.contiguous(), w2.contiguous()


def _shared_from(m: Optional[nn.Module], name: str, live: bool = False):
    if m is None:
        return None
    if all(hasattr(m, a) for a in ("w1", "w2", "w3")):
        a, b, c = "w1", "w3", "w2"
    elif all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj")):
        a, b, c = "gate_proj", "up_proj", "down_proj"
    else:
        raise ValueError(f"{name}: shared expert {type(m).__name__} has neither w1/w2/w3 nor gate_proj/up_proj/down_proj")
    return (_linear_w(getattr(m, a), f"{name}.{a}", live), _linear_w(getattr(m, b), f"{name}.{b}", live),
            _linear_w(getattr(m, c), f"{name}.{c}", live))


def extract_moe(m: nn.Module, name: str = "", live: bool = False) -> Optional[MoESpec]:
    """Describe ``m`` as a :class:`MoESpec` if it is a recognised MoE block, else ``None``.

    Raises ``ValueError`` if ``m`` is recognised but cannot be handled (the message says why).
    With ``live=True`` the weights are the module's own tensors (fp32, attached to autograd) instead
    of detached copies. A block prepared by :func:`mobilemoe_export.prepare_qat` carries its group
    size, weight width and output convention, which the spec takes over.
    """
    name = name or type(m).__name__
    spec = _extract_moe(m, name, live)
    if spec is None:
        return None
    qat = getattr(m, "_mobilemoe_qat", None)
    if qat is not None:
        spec.group_size, spec.weight_bits, spec.output = qat.group_size, qat.weight_bits, qat.output
        spec.scales_dtype = quant.scale_dtype(qat.scales_dtype)
    elif isinstance(getattr(m, "experts", None), nn.Module) and spec.group_size is None:
        # nn.Linear experts prepared by torchao's QAT: convert with the group size they trained with
        cfgs = {_qat_linear_config(lin) for lin in m.experts.modules() if isinstance(lin, nn.Linear)}
        cfgs.discard(None)
        if len(cfgs) > 1:
            raise ValueError(f"{name}: experts fake-quantized with different (group size, bits): {sorted(cfgs)}")
        if cfgs:
            gs, bits = cfgs.pop()
            spec.group_size, spec.weight_bits = gs or spec.group_size, bits or spec.weight_bits
        dts = {_qat_scale_dtype(lin) for lin in m.experts.modules() if isinstance(lin, nn.Linear)}
        dts.discard(None)
        if len(dts) > 1:
            raise ValueError(f"{name}: experts fake-quantized with different scale precisions: {sorted(map(str, dts))}")
        if dts:
            spec.scales_dtype = dts.pop()
    return spec


def _extract_moe(m: nn.Module, name: str, live: bool) -> Optional[MoESpec]:
    # (1) our own block
    if isinstance(m, MoEFeedForward) or (
        hasattr(m, "router") and hasattr(m, "experts_w1") and hasattr(m, "experts_w2") and hasattr(m, "experts_w3")
    ):
        rw = _linear_w(m.router, f"{name}.router", live)
        e, d = rw.shape
        w1, w3, w2 = _f32(m.experts_w1, live), _f32(m.experts_w3, live), _f32(m.experts_w2, live)
        f = w1.shape[1] if w1.dim() == 3 else -1
        _check3(f"{name}.experts_w1", w1, (e, f, d))
        _check3(f"{name}.experts_w3", w3, (e, f, d))
        _check3(f"{name}.experts_w2", w2, (e, d, f))
        sg = getattr(m, "shared_gate", None)
        return MoESpec(
            router_weight=rw, top_k=int(m.top_k), score_func=m.score_func, renormalize=bool(m.renormalize),
            route_scale=float(m.route_scale),
            expert_bias=_f32(m.expert_bias) if getattr(m, "expert_bias", None) is not None else None,
            w1=w1, w3=w3, w2=w2, hidden_dim=f,
            shared=_shared_from(getattr(m, "shared_expert", None), f"{name}.shared_expert", live),
            shared_gate=_linear_w(sg, f"{name}.shared_gate", live).reshape(-1) if sg is not None else None,
        )
    # (2) ExecuTorch MOEFeedForward
    if _is_et_moe(m):
        rw = _linear_w(m.gate, f"{name}.gate", live)
        e, d = rw.shape
        c = m.cond_ffn
        w1, w3, w2 = _f32(c.w1, live), _f32(c.w3, live), _f32(c.w2, live)
        f = w1.shape[1] if w1.dim() == 3 else -1
        _check3(f"{name}.cond_ffn.w1", w1, (e, f, d))
        _check3(f"{name}.cond_ffn.w3", w3, (e, f, d))
        _check3(f"{name}.cond_ffn.w2", w2, (e, f, d))  # ExecuTorch stores w2 as [E, F, D]
        sf = getattr(m, "score_func", "softmax")
        return MoESpec(
            router_weight=rw, top_k=int(m.num_activated_experts), score_func=sf,
            renormalize=(sf == "sigmoid"), route_scale=float(getattr(m, "route_scale", 1.0)),
            expert_bias=_f32(m.expert_bias) if getattr(m, "expert_bias", None) is not None else None,
            w1=w1, w3=w3, w2=w2.transpose(1, 2).contiguous(), hidden_dim=f,
            shared=_shared_from(getattr(m, "shared_expert", None), f"{name}.shared_expert", live),
            output="flat",
        )
    # (3) ExecuTorch QuantizedMoEFFN (torchao-packed)
    if _is_et_quantized_moe(m):
        from .torchao_layout import spec_from_quantized_moe_ffn

        return spec_from_quantized_moe_ffn(m, name)
    # (4) transformers' own MoE blocks: by family, with the routing read from its modeling file
    from ..sources.hf_families import NOT_HF, extract_hf_moe

    hf = extract_hf_moe(m, name, live)
    if hf is not NOT_HF:
        return hf
    # (5) Hugging Face-style blocks outside transformers, by structure
    gate = getattr(m, "gate", None)
    experts = getattr(m, "experts", None)
    if gate is None or experts is None:
        return None
    gw = getattr(gate, "weight", None)
    if not isinstance(gw, torch.Tensor):
        return None
    rw = _f32(gw, live)
    if rw.dim() != 2:
        raise ValueError(f"{name}.gate.weight must be 2-D [E, D], got {tuple(rw.shape)}")
    e, d = rw.shape
    if isinstance(gate, nn.Linear) and gate.bias is not None:
        raise ValueError(f"{name}.gate: router bias is not supported")
    if isinstance(experts, (nn.ModuleList, list, tuple)):
        if len(experts) != e:
            raise ValueError(f"{name}: gate has {e} outputs but there are {len(experts)} experts")
        w1, w3, w2 = _experts_from_list(experts, name, live)
    elif hasattr(experts, "gate_up_proj") and hasattr(experts, "down_proj"):
        w1, w3, w2 = _experts_fused(experts, e, d, name, live)
    else:
        raise ValueError(f"{name}.experts ({type(experts).__name__}) is neither a ModuleList nor fused gate_up_proj/down_proj")
    f = w1.shape[1]
    _check3(f"{name} expert gate/w1 weights", w1, (e, f, d))
    _check3(f"{name} expert up/w3 weights", w3, (e, f, d))
    _check3(f"{name} expert down/w2 weights", w2, (e, d, f))
    top_k = _top_k_of(m, gate, getattr(m, "config", None))
    bias = getattr(gate, "e_score_correction_bias", None)
    scoring = getattr(gate, "scoring_func", getattr(m, "scoring_func", None))
    shared_mod = getattr(m, "shared_experts", None) or getattr(m, "shared_expert", None)
    if bias is not None or scoring == "sigmoid":
        # DeepSeek-V3-like
        # transformers 5 stores the group count as `num_group` on the router (older: `n_group`);
        # read every spelling, on the block, the router and its config, so that group-limited
        # routing is refused instead of silently ignored.
        def _attr(names, default):
            for holder in (gate, m, getattr(gate, "config", None), getattr(m, "config", None)):
                for nm in names:
                    v = getattr(holder, nm, None) if holder is not None else None
                    if v is not None:
                        return v
            return default
        n_group = int(_attr(("n_group", "num_group", "num_groups", "n_groups"), 1) or 1)
        topk_group = int(_attr(("topk_group", "num_topk_group", "topk_groups"), n_group) or n_group)
        if n_group > 1 and topk_group < n_group:
            raise ValueError(
                f"{name}: group-limited routing (n_group={n_group}, topk_group={topk_group}) is not "
                f"supported by mobilemoe::moe_ffn; set topk_group = n_group or n_group = 1"
            )
        rsf = getattr(gate, "routed_scaling_factor", getattr(m, "routed_scaling_factor", 1.0))
        norm = getattr(gate, "norm_topk_prob", getattr(m, "norm_topk_prob", True))
        spec = MoESpec(router_weight=rw, top_k=top_k, score_func="sigmoid", renormalize=bool(norm),
                       route_scale=float(rsf), expert_bias=_f32(bias) if bias is not None else None,
                       w1=w1, w3=w3, w2=w2, hidden_dim=f,
                       shared=_shared_from(shared_mod, f"{name}.shared_experts", live))
    elif hasattr(m, "norm_topk_prob") or hasattr(gate, "norm_topk_prob"):
        # Qwen-MoE / OLMoE / Qwen3-MoE: softmax over all experts, top-k, optional renormalisation
        norm = getattr(m, "norm_topk_prob", getattr(gate, "norm_topk_prob", False))
        sg = getattr(m, "shared_expert_gate", None)
        spec = MoESpec(router_weight=rw, top_k=top_k, score_func="softmax_all", renormalize=bool(norm),
                       route_scale=1.0, w1=w1, w3=w3, w2=w2, hidden_dim=f,
                       shared=_shared_from(shared_mod, f"{name}.shared_expert", live),
                       shared_gate=_linear_w(sg, f"{name}.shared_expert_gate", live).reshape(-1) if sg is not None else None)
    else:
        # Mixtral: softmax over all, top-k, renormalised == softmax over the top-k logits
        if shared_mod is not None:
            raise ValueError(f"{name}: Mixtral-like block with a shared expert is not a known layout")
        spec = MoESpec(router_weight=rw, top_k=top_k, score_func="softmax", renormalize=True, route_scale=1.0,
                       w1=w1, w3=w3, w2=w2, hidden_dim=f)
    if getattr(m, "jitter_noise", 0) and m.training:
        spec.notes.append("jitter_noise ignored (eval semantics)")
    return spec


# ---------------------------------------------------------------------------------------------
# Replacement modules


def _pack_out_grouped(qs, n: int, k: int, group_size: int, bits: int, sd: torch.dtype, what: str):
    """Experts with output-grouped scales: per expert the integers ``q [n, k]`` packed with unit
    scales, and the scales ``s [k, n/G]`` kept as stored -> ``([E, bytes], [E, k * n/G])``."""
    if n % group_size:
        raise ValueError(f"{what}: output-grouped scales need group_size {group_size} to divide N={n}")
    ones = torch.ones(n, k // group_size)
    datas, scs = [], []
    for i, (q, s) in enumerate(qs):
        if tuple(q.shape) != (n, k) or tuple(s.shape) != (k, n // group_size):
            raise ValueError(f"{what}: expert {i} is q {tuple(q.shape)}, s {tuple(s.shape)}; expected "
                             f"q ({n}, {k}) and s ({k}, {n // group_size})")
        d, _ = quant.pack(q, ones, group_size, bits)
        datas.append(torch.from_numpy(d))
        scs.append(s.reshape(-1).to(torch.float32))
    return torch.stack(datas), quant._exact_cast(torch.stack(scs), sd)


class MobileMoEFFN(nn.Module):
    """A MoE FFN running ``torch.ops.mobilemoe.moe_ffn`` on T16K4-packed weights."""

    def __init__(self, spec: MoESpec, group_size: int = 32, weight_bits: int = 4, exact: bool = False,
                 name: str = "", scales_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        group_size = spec.group_size or group_size
        weight_bits = spec.weight_bits or weight_bits
        sd = quant.scale_dtype(spec.scales_dtype or scales_dtype)
        rw = spec.router_weight
        e, d = rw.shape
        f = spec.hidden_dim
        if spec.score_func not in SCORE_FUNCS:
            raise ValueError(f"{name}: unknown score_func {spec.score_func!r}; expected one of {SCORE_FUNCS}")
        if not 0 < spec.top_k <= e:
            raise ValueError(f"{name}: top_k={spec.top_k} must be in 1..num_experts={e}")
        quant.check_matrix(2 * f, d, group_size, weight_bits, f"{name} experts gate/up (N=2F={2 * f}, K=D={d})")
        quant.check_matrix(d, f, group_size, weight_bits, f"{name} experts down (N=D={d}, K=F={f})")
        self.dim, self.hidden_dim, self.num_experts, self.top_k = d, f, e, spec.top_k
        self.score_func, self.renormalize, self.route_scale = spec.score_func, bool(spec.renormalize), float(spec.route_scale)
        self.group_size, self.weight_bits, self.exact = group_size, weight_bits, bool(exact)
        self.output = spec.output
        self.num_groups, self.top_groups, self.group_score = int(spec.num_groups), int(spec.top_groups), spec.group_score
        self.weight_input, self.jitter_eps = bool(spec.weight_input), float(spec.jitter_eps)
        self.renorm_eps, self.renorm_min = float(spec.renorm_eps), float(spec.renorm_min)
        if e % self.num_groups or not 0 < self.top_groups <= self.num_groups or self.group_score not in GROUP_SCORES:
            raise ValueError(f"{name}: group limit num_groups={self.num_groups}, top_groups={self.top_groups}, "
                             f"group_score={self.group_score!r} does not fit {e} experts")
        self.register_buffer("router_weight", rw.clone())
        self.register_buffer("expert_bias", spec.expert_bias.reshape(e).clone() if spec.expert_bias is not None else None)
        if spec.scales_axis not in ("in", "out"):
            raise ValueError(f"{name}: scales_axis must be 'in' or 'out', got {spec.scales_axis!r}")
        self.scales_out = spec.scales_axis == "out"
        if self.scales_out:
            if spec.q13 is None or spec.q2 is None:
                raise ValueError(f"{name}: scales_axis='out' needs integer experts (q13, q2)")
            w13, s13 = _pack_out_grouped(spec.q13, 2 * f, d, group_size, weight_bits, sd, f"{name} experts gate/up")
            w2, s2 = _pack_out_grouped(spec.q2, d, f, group_size, weight_bits, sd, f"{name} experts down")
        elif spec.q13 is not None:
            w13, s13 = quant.pack_quantized_experts([q for q, _ in spec.q13], [s for _, s in spec.q13], group_size,
                                                    weight_bits, sd)
            w2, s2 = quant.pack_quantized_experts([q for q, _ in spec.q2], [s for _, s in spec.q2], group_size, weight_bits, sd)
        else:
            w13, s13 = quant.pack_experts(torch.cat([spec.w1, spec.w3], dim=1), group_size, weight_bits, sd)
            w2, s2 = quant.pack_experts(spec.w2, group_size, weight_bits, sd)
        self.register_buffer("w13", w13)
        self.register_buffer("w13_scales", s13)
        self.register_buffer("w2", w2)
        self.register_buffer("w2_scales", s2)
        self.shared_hidden_dim = 0
        for n in ("shared_w13", "shared_w13_scales", "shared_w2", "shared_w2_scales", "shared_gate"):
            self.register_buffer(n, None)
        if spec.shared_q is not None:
            (q1, s1), (q3, s3), (q2s, s2s) = spec.shared_q
            fs = q1.shape[0]
            if tuple(q1.shape) != (fs, d) or tuple(q3.shape) != (fs, d) or tuple(q2s.shape) != (d, fs):
                raise ValueError(f"{name}: shared expert shapes {tuple(q1.shape)}, {tuple(q3.shape)}, "
                                 f"{tuple(q2s.shape)} do not match D={d}")
            self.shared_hidden_dim = fs
            dd, ss = quant.pack(torch.cat([q1, q3], 0), torch.cat([s1.float(), s3.float()], 0), group_size, weight_bits)
            self.shared_w13, self.shared_w13_scales = torch.from_numpy(dd), quant._exact_cast(torch.from_numpy(ss), sd)
            dd, ss = quant.pack(q2s, s2s.float(), group_size, weight_bits)
            self.shared_w2, self.shared_w2_scales = torch.from_numpy(dd), quant._exact_cast(torch.from_numpy(ss), sd)
        elif spec.shared is not None:
            sw1, sw3, sw2 = spec.shared
            fs = sw1.shape[0]
            if tuple(sw1.shape) != (fs, d) or tuple(sw3.shape) != (fs, d) or tuple(sw2.shape) != (d, fs):
                raise ValueError(f"{name}: shared expert shapes {tuple(sw1.shape)}, {tuple(sw3.shape)}, "
                                 f"{tuple(sw2.shape)} do not match D={d}")
            quant.check_matrix(2 * fs, d, group_size, weight_bits, f"{name} shared expert gate/up (K=D={d})")
            quant.check_matrix(d, fs, group_size, weight_bits, f"{name} shared expert down (K=Fs={fs})")
            self.shared_hidden_dim = fs
            self.shared_w13, self.shared_w13_scales = quant.quantize_and_pack(torch.cat([sw1, sw3], 0), group_size,
                                                                              weight_bits, sd)
            self.shared_w2, self.shared_w2_scales = quant.quantize_and_pack(sw2, group_size, weight_bits, sd)
            if spec.shared_gate is not None:
                self.shared_gate = spec.shared_gate.reshape(d).clone()

    def _apply(self, fn, recurse=True):
        # Keep the fp32 buffers fp32 and the packed bytes uint8 under model.to(dtype).
        saved = {n: b for n, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for n, b in saved.items():
            cur = self._buffers[n]
            if cur is not None and cur.dtype != b.dtype:
                self._buffers[n] = cur.to(b.dtype)
        return self

    def forward(self, x: torch.Tensor):
        in_dtype = x.dtype
        xf = x.to(torch.float32)
        out = torch.ops.mobilemoe.moe_ffn(
            xf, self.router_weight, self.expert_bias, self.w13, self.w13_scales, self.w2, self.w2_scales,
            self.shared_w13, self.shared_w13_scales, self.shared_w2, self.shared_w2_scales, self.shared_gate,
            self.num_experts, self.top_k, self.hidden_dim, self.shared_hidden_dim, self.group_size,
            self.weight_bits, self.score_func, self.renormalize, self.route_scale, self.exact,
            self.num_groups, self.top_groups, self.group_score, self.weight_input, self.jitter_eps,
            self.renorm_eps, self.renorm_min, getattr(self, "scales_out", False),
        )
        if in_dtype != torch.float32:
            out = out.to(in_dtype)
        if self.output == "flat":
            return out.reshape(-1, self.dim)
        if self.output in ("tuple", "flat_tuple"):
            logits = xf.reshape(-1, self.dim) @ self.router_weight.t()
            return out.reshape(-1, self.dim) if self.output == "flat_tuple" else out, logits.to(in_dtype)
        return out

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden_dim={self.hidden_dim}, num_experts={self.num_experts}, top_k={self.top_k}, "
                f"score_func={self.score_func}, renormalize={self.renormalize}, route_scale={self.route_scale}, "
                f"shared_hidden_dim={self.shared_hidden_dim}, group_size={self.group_size}, "
                f"weight_bits={self.weight_bits}"
                + (f", num_groups={self.num_groups}, top_groups={self.top_groups}, group_score={self.group_score}"
                   if self.num_groups > 1 else "")
                + (", weight_input=True" if self.weight_input else "")
                + (f", jitter_eps={self.jitter_eps}" if self.score_func == "sparsemixer" else ""))


class MobileMoELinear(nn.Module):
    """``nn.Linear`` replacement running ``torch.ops.mobilemoe.int4_linear`` (INT4 or INT8 weights)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], group_size: int = 32,
                 weight_bits: int = 4, exact: bool = False, name: str = "",
                 qweight: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                 scales_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D weight, got {tuple(weight.shape)}")
        n, k = weight.shape
        quant.check_matrix(n, k, group_size, weight_bits, name or "linear")
        self.in_features, self.out_features = k, n
        self.group_size, self.weight_bits, self.exact = group_size, weight_bits, bool(exact)
        sd = quant.scale_dtype(scales_dtype)
        if qweight is not None:
            d, s = quant.pack(qweight[0], qweight[1], group_size, weight_bits)
            d, s = torch.from_numpy(d), quant._exact_cast(torch.from_numpy(s), sd)
        else:
            d, s = quant.quantize_and_pack(_f32(weight), group_size, weight_bits, sd)
        self.register_buffer("weight", d)
        self.register_buffer("scales", s)
        self.register_buffer("bias", _f32(bias) if bias is not None else None)

    _apply = MobileMoEFFN._apply

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        y = torch.ops.mobilemoe.int4_linear(x.to(torch.float32), self.weight, self.scales, self.bias,
                                            self.out_features, self.group_size, self.weight_bits, self.exact)
        return y if in_dtype == torch.float32 else y.to(in_dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"weight_bits={self.weight_bits}"
                + (f", num_groups={self.num_groups}, top_groups={self.top_groups}, group_score={self.group_score}"
                   if self.num_groups > 1 else "")
                + (", weight_input=True" if self.weight_input else "")
                + (f", jitter_eps={self.jitter_eps}" if self.score_func == "sparsemixer" else ""))


# ---------------------------------------------------------------------------------------------
# The transform


def _probe_output(m: nn.Module, d: int) -> Optional[str]:
    """Run the original block on a tiny input to learn its output convention."""
    try:
        p = next(iter(m.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        x = torch.randn(1, 2, d, dtype=dtype)
        with torch.no_grad():
            r = m(x)
    except Exception:
        return None
    if isinstance(r, (tuple, list)):
        return "flat_tuple" if isinstance(r[0], torch.Tensor) and tuple(r[0].shape) == (2, d) else "tuple"
    if isinstance(r, torch.Tensor) and tuple(r.shape) == (2, d):
        return "flat"
    return "same"


def _qat_linear_config(m: nn.Module):
    """(group_size, bits) of a torchao QAT fake-quantized linear's weight, or None."""
    fq = getattr(m, "weight_fake_quantizer", None)
    cfg = getattr(fq, "config", None)
    if cfg is None:
        return None
    gran = getattr(cfg, "granularity", None)
    gs = getattr(gran, "group_size", None) or getattr(cfg, "group_size", None)
    dt = getattr(cfg, "dtype", None)
    bits = {torch.int4: 4, torch.int8: 8}.get(dt) if dt is not None else None
    if bits is None and hasattr(torch, "int4") and dt == getattr(torch, "int4", None):
        bits = 4
    return gs, bits


def _qat_scale_dtype(m: nn.Module) -> Optional[torch.dtype]:
    """The scale precision a torchao QAT fake-quantized linear trained with, or None."""
    cfg = getattr(getattr(m, "weight_fake_quantizer", None), "config", None)
    dt = getattr(cfg, "scale_precision", None)
    return dt if dt in quant.SCALE_DTYPES.values() else None


def _is_torchao_8da4w_linear(m: nn.Module) -> bool:
    """torchao's converted 8da4w linear (``Int8DynActInt4WeightQATQuantizer.convert``): int8 q + fp32 scales."""
    return (type(m).__name__ == "Int8DynActInt4WeightLinear" and isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.dtype == torch.int8 and hasattr(m, "scales") and hasattr(m, "groupsize"))


def quantize_moe(
    model: nn.Module,
    group_size: int = 32,
    weight_bits: int = 4,
    dense_linears: bool = False,
    *,
    exact: bool = False,
    strict_linears: bool = False,
    probe: bool = True,
    scales_dtype=torch.float32,
) -> nn.Module:
    """Replace, in place, every recognised MoE block of ``model`` with a :class:`MobileMoEFFN`.
    **Use the return value**: for a model it is ``model`` itself; for a bare MoE block (not inside a
    model) it is the replacement block.

    With ``dense_linears=True`` every remaining ``nn.Linear`` (including torchao QAT
    fake-quantized linears) becomes a :class:`MobileMoELinear`; linears whose in_features is not
    divisible by ``group_size`` are skipped with a warning listing them (``strict_linears=True``
    raises instead). Raises :class:`UnsupportedModuleError` listing every MoE-like module that could
    not be handled (the model is left unchanged in that case), or if nothing was recognised.
    Returns ``model``.

    ``scales_dtype`` (torch.float32 / float16 / bfloat16, or "fp32" / "fp16" / "bf16"; torchao's
    ``scales_precision``) is the per-group scale type of the packed weights: fp16 and bf16 halve the
    scale bytes (about 10% of an INT4 g32 model's weight bytes) and the kernels read them as they
    are. Blocks and linears prepared for QAT keep the precision they trained with.
    """
    quant.check_matrix(1, group_size, group_size, weight_bits, "quantize_moe")
    scales_dtype = quant.scale_dtype(scales_dtype)
    # A bare MoE block (not inside a model): its replacement is returned (the caller must use the
    # return value; there is no parent to swap it into).
    if not isinstance(model, (MobileMoEFFN, MobileMoELinear)):
        try:
            root_spec = extract_moe(model, type(model).__name__)
        except Exception as e:
            raise UnsupportedModuleError(f"quantize_moe: {type(model).__name__}: {e}") from e
        if root_spec is not None:
            if probe and root_spec.output == "same" and not _is_et_quantized_moe(model):
                root_spec.output = _probe_output(model, root_spec.router_weight.shape[1]) or "same"
            return MobileMoEFFN(root_spec, group_size, weight_bits, exact=exact, name=type(model).__name__,
                                scales_dtype=scales_dtype)
    plan: List[Tuple[nn.Module, str, str, nn.Module]] = []
    errors: List[str] = []

    def visit(mod: nn.Module, prefix: str) -> None:
        for cname, child in mod.named_children():
            full = f"{prefix}.{cname}" if prefix else cname
            if isinstance(child, (MobileMoEFFN, MobileMoELinear)):
                continue
            try:
                spec = extract_moe(child, full)
            except Exception as e:  # recognised but unsupported
                errors.append(f"{full} ({type(child).__name__}): {e}")
                continue
            if spec is not None:
                if probe and spec.output == "same" and not _is_et_quantized_moe(child):
                    spec.output = _probe_output(child, spec.router_weight.shape[1]) or "same"
                try:
                    new = MobileMoEFFN(spec, group_size, weight_bits, exact=exact, name=full, scales_dtype=scales_dtype)
                except Exception as e:
                    errors.append(f"{full} ({type(child).__name__}): {e}")
                    continue
                plan.append((mod, cname, full, new))
                continue
            if hasattr(child, "experts") or hasattr(child, "experts_w1"):
                errors.append(f"{full} ({type(child).__name__}): looks like a MoE block but its structure is not recognised")
                continue
            visit(child, full)

    visit(model, "")
    if errors:
        raise UnsupportedModuleError("quantize_moe could not handle these modules:\n  " + "\n  ".join(errors))
    for parent, cname, _full, new in plan:
        setattr(parent, cname, new)

    n_lin = 0
    if dense_linears:
        skipped: List[str] = []
        lin_plan = []
        for full, child in list(model.named_modules()):
            for cname, lin in list(child.named_children()):
                lname = f"{full}.{cname}" if full else cname
                if _is_torchao_8da4w_linear(lin):
                    try:
                        lin_plan.append((child, cname, lname, lin, int(lin.groupsize), 4))
                    except Exception as e:  # pragma: no cover
                        skipped.append(f"{lname} ({e})")
                    continue
                if not isinstance(lin, nn.Linear):
                    continue
                gs, bits = group_size, weight_bits
                cfg = _qat_linear_config(lin)
                if cfg is not None:
                    gs = cfg[0] or gs
                    bits = cfg[1] or bits
                w = lin.weight
                if w.dim() != 2 or w.shape[1] % gs != 0:
                    skipped.append(f"{lname} (in_features={w.shape[-1]}, group_size={gs})")
                    continue
                lin_plan.append((child, cname, lname, lin, gs, bits))
        if skipped and strict_linears:
            raise UnsupportedModuleError("quantize_moe(dense_linears=True): in_features not divisible by the "
                                         "group size:\n  " + "\n  ".join(skipped))
        if skipped:
            warnings.warn("quantize_moe: left these nn.Linear in fp32 (in_features not divisible by the group "
                          "size): " + ", ".join(skipped))
        for parent, cname, lname, lin, gs, bits in lin_plan:
            if _is_torchao_8da4w_linear(lin):
                if lin.zeros is not None and bool((lin.zeros != 0).any()):
                    raise UnsupportedModuleError(f"{lname}: asymmetric (non-zero zero points) weights are not supported")
                sd = lin.scales.dtype if lin.scales.dtype in quant.SCALE_DTYPES.values() else torch.float32
                new = MobileMoELinear(lin.weight, lin.bias, gs, 4, exact=exact, name=lname,
                                      qweight=(lin.weight.detach().cpu(), _f32(lin.scales)), scales_dtype=sd)
            else:
                new = MobileMoELinear(lin.weight, lin.bias, gs, bits, exact=exact, name=lname,
                                      scales_dtype=_qat_scale_dtype(lin) or scales_dtype)
            setattr(parent, cname, new)
            n_lin += 1
    already = any(isinstance(m, (MobileMoEFFN, MobileMoELinear)) for m in model.modules())
    if not plan and n_lin == 0 and not already:
        raise UnsupportedModuleError(
            f"quantize_moe found no recognised MoE block in {type(model).__name__} (and dense_linears="
            f"{dense_linears}); supported: mobilemoe_export.MoEFeedForward, ExecuTorch MOEFeedForward / "
            f"QuantizedMoEFFN, Mixtral-, Qwen-MoE/OLMoE- and DeepSeek-like blocks"
        )
    return model
