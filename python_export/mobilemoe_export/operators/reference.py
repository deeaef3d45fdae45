"""Pure-PyTorch reference of the MobileMoE ops (docs/DESIGN.md sections 3-5), for parity tests.

Activation quantization (per-token asymmetric int8, torchao's formulas) and weight quantization are
exact; integer sums are exact (computed in float64, which holds every int32 sum exactly); the float
accumulation order is not the kernels' fused-multiply-add order and ``exp`` is torch's, not the
kernels' ``exp_f32``, so compare with a float tolerance.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..moe_block import FLT_MIN, route
from ..quantization import quant

F32_MIN_POSITIVE = torch.finfo(torch.float32).smallest_normal
F32_EPS = torch.finfo(torch.float32).eps


def act_qparams(x: torch.Tensor):
    """Per-row asymmetric int8 qparams of ``x [T, K]`` (docs/DESIGN.md section 3): ``(s_a [T, 1],
    zp [T, 1])``, fp32, with torchao's ``choose_qparams_affine(ASYMMETRIC, eps=f32 eps)`` formulas
    and operation order. Rows with a NaN or an infinity get ``s_a = NaN``, ``zp = 0``."""
    x = x.to(torch.float32)
    lo = torch.clamp(x.amin(dim=-1, keepdim=True), max=0.0)
    hi = torch.clamp(x.amax(dim=-1, keepdim=True), min=0.0)
    s = torch.clamp((hi - lo) / 255.0, min=F32_EPS)
    zp = torch.clamp(-128.0 - torch.round(lo / s), -128, 127)
    bad = ~torch.isfinite(x).all(dim=-1, keepdim=True)
    s = torch.where(bad, torch.full_like(s, float("nan")), s)
    zp = torch.where(bad, torch.zeros_like(zp), zp)
    return s, zp


def quantize_activations(x: torch.Tensor):
    """Per-row asymmetric int8 (docs/DESIGN.md section 3): ``(qa - zp [T, K] float64 ints in
    [-255, 255], s_a [T, 1] fp32)``; ``x_hat = (qa - zp) * s_a``."""
    x = x.to(torch.float32)
    s, zp = act_qparams(x)
    inv = 1.0 / s
    qa = torch.clamp(torch.round(x * inv) + zp, -128, 127)
    bad = torch.isnan(s).expand_as(qa)
    qa = torch.where(bad, torch.zeros_like(qa), qa)
    return (qa - zp).to(torch.float64), s


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """``x_hat = (qa - zp) * s_a`` per row (what torchao's 8da4w activation fake quantizer gives)."""
    v, s = quantize_activations(x.reshape(-1, x.shape[-1]))
    return (v.to(torch.float32) * s).reshape(x.shape)


def linear_q(x2d: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, group_size: int, exact: bool) -> torch.Tensor:
    """``y = x @ (q * s)^T`` with the numerics of DESIGN.md section 3. ``q [N, K]``, ``scales [N, K/G]``."""
    t, k = x2d.shape
    n = q.shape[0]
    ng = k // group_size
    qg = q.to(torch.float64).reshape(n, ng, group_size)
    s = scales.to(torch.float32).reshape(n, ng)
    if exact:
        xg = x2d.to(torch.float64).reshape(t, ng, group_size)
        part = torch.einsum("tgk,ngk->tng", xg, qg).to(torch.float32)
        return (part * s).sum(-1)
    v, sa = quantize_activations(x2d)
    # Exact integer group sums (float64 holds them exactly), then the fp32 fold.
    isum = torch.einsum("tgk,ngk->tng", v.reshape(t, ng, group_size), qg).to(torch.float32)
    acc = (isum * s).sum(-1)
    return acc * sa


def unpack_t(data: torch.Tensor, scales: torch.Tensor, n: int, k: int, group_size: int, bits: int):
    q, s = quant.unpack(data.contiguous().cpu().numpy(), scales.contiguous().cpu().numpy(), n, k, group_size, bits)
    return torch.from_numpy(q), torch.from_numpy(s)


def int4_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scales: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    group_size: int,
    weight_bits: int,
    exact: bool,
) -> torch.Tensor:
    k = x.shape[-1]
    q, s = unpack_t(weight, scales, out_features, k, group_size, weight_bits)
    y = linear_q(x.reshape(-1, k).to(torch.float32), q, s, group_size, exact)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.reshape(tuple(x.shape[:-1]) + (out_features,))


def _ffn(x2d, q13, s13, q2, s2, f, group_size, exact):
    h = linear_q(x2d, q13, s13, group_size, exact)
    a = F.silu(h[:, :f]) * h[:, f:]
    return linear_q(a, q2, s2, group_size, exact)


def moe_ffn(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    expert_bias: Optional[torch.Tensor],
    w13: torch.Tensor,
    w13_scales: torch.Tensor,
    w2: torch.Tensor,
    w2_scales: torch.Tensor,
    shared_w13: Optional[torch.Tensor],
    shared_w13_scales: Optional[torch.Tensor],
    shared_w2: Optional[torch.Tensor],
    shared_w2_scales: Optional[torch.Tensor],
    shared_gate: Optional[torch.Tensor],
    num_experts: int,
    top_k: int,
    hidden_dim: int,
    shared_hidden_dim: int,
    group_size: int,
    weight_bits: int,
    score_func: str,
    renormalize: bool,
    route_scale: float,
    exact: bool,
    num_groups: int = 1,
    top_groups: int = 1,
    group_score: str = "max",
    weight_input: bool = False,
    jitter_eps: float = 0.0,
    renorm_eps: float = 0.0,
    renorm_min: float = FLT_MIN,
) -> torch.Tensor:
    d = x.shape[-1]
    f = hidden_dim
    x2d = x.reshape(-1, d).to(torch.float32)
    logits = x2d @ router_weight.to(torch.float32).reshape(num_experts, d).t()
    bias = expert_bias.to(torch.float32) if expert_bias is not None and expert_bias.numel() > 0 else None
    weights, ids = route(logits, top_k, score_func, renormalize, route_scale, bias, num_groups=num_groups,
                         top_groups=top_groups, group_score=group_score, jitter_eps=jitter_eps,
                         renorm_eps=renorm_eps, renorm_min=renorm_min)
    out = torch.zeros_like(x2d)
    for e in range(num_experts):
        sel = ids == e  # [T, k]
        rows = sel.any(dim=-1).nonzero().flatten()
        if rows.numel() == 0:
            continue
        q13, s13 = unpack_t(w13[e], w13_scales[e], 2 * f, d, group_size, weight_bits)
        q2, s2 = unpack_t(w2[e], w2_scales[e], d, f, group_size, weight_bits)
        w = (weights * sel.to(weights.dtype)).sum(-1)[rows]
        if weight_input:  # expert(w * x)
            out.index_add_(0, rows, _ffn(x2d[rows] * w.unsqueeze(-1), q13, s13, q2, s2, f, group_size, exact))
        else:
            out.index_add_(0, rows, _ffn(x2d[rows], q13, s13, q2, s2, f, group_size, exact) * w.unsqueeze(-1))
    if shared_w13 is not None and shared_hidden_dim > 0:
        fs = shared_hidden_dim
        q13, s13 = unpack_t(shared_w13, shared_w13_scales, 2 * fs, d, group_size, weight_bits)
        q2, s2 = unpack_t(shared_w2, shared_w2_scales, d, fs, group_size, weight_bits)
        y = _ffn(x2d, q13, s13, q2, s2, fs, group_size, exact)
        if shared_gate is not None:
            y = torch.sigmoid(x2d @ shared_gate.to(torch.float32).reshape(d, 1)) * y
        out = out + y
    return out.reshape(tuple(x.shape[:-1]) + (d,))
