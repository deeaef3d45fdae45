"""The project's own MoE feed-forward block (fp32 eager), recognised by `quantize_moe`.

Structure (the contract with `mobilemoe_export.models` and `transforms.py`):

- ``router``: ``nn.Linear(D, E, bias=False)``
- ``experts_w1``, ``experts_w3``: ``nn.Parameter [E, F, D]`` (gate and up projections)
- ``experts_w2``: ``nn.Parameter [E, D, F]`` (down projection)
- ``expert_bias``: buffer ``[E]`` (selection-only bias, sigmoid routing) or ``None``
- ``shared_expert``: :class:`SharedExpert` (``w1``, ``w3``: ``Linear(D, Fs)``, ``w2``: ``Linear(Fs, D)``) or ``None``
- ``shared_gate``: ``nn.Linear(D, 1, bias=False)`` or ``None`` (``sigmoid(x . g)`` scales the shared expert)
- ``top_k``, ``score_func`` (``'softmax'`` | ``'softmax_all'`` | ``'sigmoid'``), ``renormalize``, ``route_scale``

Routing follows docs/DESIGN.md section 4:

- ``softmax``: top-k over the logits, softmax over the k selected.
- ``softmax_all``: softmax over all E, top-k, divided by the sum of the k if ``renormalize``.
- ``sigmoid``: ``s = sigmoid(logits)``; selection on ``s + expert_bias``; weights are the unbiased ``s``
  of the selected, divided by their sum if ``renormalize``.
- ``topk_sigmoid`` (Llama 4): top-k over the logits, weights the sigmoid of the selected logits.
- ``sparsemixer`` (PhiMoE, top-2): the best logit, then the best of the rest; each weighted by a
  softmax over the logits within the relative threshold ``2 * jitter_eps`` of it.
- group-limited selection (DeepSeek): the experts form ``num_groups`` contiguous groups, scored by
  their best selection key (``max``) or the sum of their two best (``top2_sum``); only the experts of
  the ``top_groups`` best groups compete in the top-k.
- every score function: weights ``* route_scale``.
- ``weight_input`` (a ``MoESpec``/op attribute, Llama 4): the weight scales the expert's input,
  ``expert(w * x)``, instead of its output.

``y = sum_k w_k * W2_e (silu(W1_e x) * W3_e x) + [sigmoid(x . g)] * Shared(x)``; input ``[..., D]``,
output the same shape. The forward is export friendly (no data-dependent control flow): it
evaluates every expert densely and weights the results with a ``[T, E]`` combine matrix, which is
exact and fine for fp32 reference use; the quantized path (``quantize_moe``) replaces it with the
fused ``mobilemoe::moe_ffn`` op.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

SCORE_FUNCS = ("softmax", "softmax_all", "sigmoid", "topk_sigmoid", "sparsemixer")
GROUP_SCORES = ("max", "top2_sum")
FLT_MIN = float(torch.finfo(torch.float32).tiny)  # the default floor of a renormalisation divisor


class SharedExpert(nn.Module):
    """Dense SwiGLU FFN: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def _nan_to_neg_inf(s: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(s), torch.full_like(s, -math.inf), s)


def _eligible(keys: torch.Tensor, num_groups: int, top_groups: int, group_score: str) -> torch.Tensor:
    """``[T, E]`` mask of the experts in the ``top_groups`` best of ``num_groups`` contiguous groups
    (group score: the best key, or the sum of the two best; DeepSeek-V2 / V3)."""
    t, e = keys.shape
    g = keys.reshape(t, num_groups, e // num_groups)
    if group_score == "max":
        gs = g.max(dim=-1).values
    elif group_score == "top2_sum":
        gs = g.topk(2, dim=-1).values.sum(dim=-1)
    else:
        raise ValueError(f"unknown group_score {group_score!r}; expected one of {GROUP_SCORES}")
    _, gidx = torch.topk(gs, top_groups, dim=-1)
    chosen = torch.zeros_like(gs, dtype=torch.bool).scatter(1, gidx, True)
    return chosen.unsqueeze(-1).expand(t, num_groups, e // num_groups).reshape(t, e)


def _select(keys: torch.Tensor, top_k: int, num_groups: int, top_groups: int, group_score: str) -> torch.Tensor:
    k = _nan_to_neg_inf(keys)
    if num_groups > 1 and top_groups < num_groups:
        k = k.masked_fill(~_eligible(k, num_groups, top_groups, group_score), -math.inf)
    return torch.topk(k, top_k, dim=-1)[1]


def _sparsemixer(logits: torch.Tensor, jitter_eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's ``sparsemixer`` at inference (top-2): each pick weighted by a softmax over the logits
    within the relative threshold ``2 * jitter_eps`` of it; the second pick excludes the first."""
    def weight(scores: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        m = logits.gather(-1, pick)
        masked = ((m - logits) / logits.abs().clamp(min=m)) > 2 * jitter_eps
        return torch.softmax(scores.masked_fill(masked, -math.inf), dim=-1).gather(-1, pick)

    i1 = logits.max(dim=-1, keepdim=True).indices
    rest = logits.scatter(-1, i1, -math.inf)
    i2 = rest.max(dim=-1, keepdim=True).indices
    return torch.cat([weight(logits, i1), weight(rest, i2)], -1), torch.cat([i1, i2], -1)


def route(
    logits: torch.Tensor,
    top_k: int,
    score_func: str,
    renormalize: bool,
    route_scale: float,
    expert_bias: Optional[torch.Tensor] = None,
    *,
    num_groups: int = 1,
    top_groups: int = 1,
    group_score: str = "max",
    jitter_eps: float = 0.0,
    renorm_eps: float = 0.0,
    renorm_min: float = FLT_MIN,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Routing of docs/DESIGN.md section 4: ``logits [T, E]`` -> ``(weights [T, k], ids [T, k])``.
    ``expert_bias`` is added to the selection keys only (every score function but sparsemixer);
    ``num_groups``/``top_groups``/``group_score`` limit the selection to the best groups of experts;
    renormalisation divides by ``max(sum + renorm_eps, renorm_min)`` (by default the sum clamped at
    the smallest normal float32: an all-zero selection gives weights 0, not 0/0, as ExecuTorch's
    MOEFeedForward)."""
    groups = (num_groups, top_groups, group_score)

    def keys(k: torch.Tensor) -> torch.Tensor:
        return k + expert_bias if expert_bias is not None else k

    def renorm(w: torch.Tensor) -> torch.Tensor:
        if not renormalize:
            return w
        return w / (w.sum(dim=-1, keepdim=True) + renorm_eps).clamp_min(renorm_min)

    if score_func == "softmax":
        ids = _select(keys(logits), top_k, *groups)
        weights = torch.softmax(logits.gather(-1, ids), dim=-1)
    elif score_func == "softmax_all":
        probs = torch.softmax(logits, dim=-1)
        ids = _select(keys(probs), top_k, *groups)
        weights = renorm(probs.gather(-1, ids))
    elif score_func in ("sigmoid", "topk_sigmoid"):
        s = torch.sigmoid(logits)
        # topk_sigmoid selects on the logits: sigmoid saturates to equal values
        ids = _select(keys(logits if score_func == "topk_sigmoid" else s), top_k, *groups)
        weights = renorm(s.gather(-1, ids))
    elif score_func == "sparsemixer":
        if top_k != 2 or expert_bias is not None:
            raise ValueError(f"sparsemixer routing selects 2 experts without a bias, got top_k={top_k}, "
                             f"expert_bias={'set' if expert_bias is not None else None}")
        weights, ids = _sparsemixer(logits, jitter_eps)
    else:
        raise ValueError(f"unknown score_func {score_func!r}; expected one of {SCORE_FUNCS}")
    if route_scale != 1.0:
        weights = weights * route_scale
    return weights, ids


class MoEFeedForward(nn.Module):
    """Routed SwiGLU experts + optional (gated) shared expert. See the module docstring."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        top_k: int,
        score_func: str = "softmax",
        renormalize: bool = True,
        route_scale: float = 1.0,
        use_expert_bias: bool = False,
        shared_hidden_dim: Optional[int] = None,
        shared_gate: bool = False,
    ) -> None:
        super().__init__()
        if score_func not in SCORE_FUNCS:
            raise ValueError(f"unknown score_func {score_func!r}; expected one of {SCORE_FUNCS}")
        if not 0 < top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in 1..num_experts={num_experts}")
        if shared_gate and not shared_hidden_dim:
            raise ValueError("shared_gate=True needs a shared expert (shared_hidden_dim)")
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.num_experts = num_experts
        self.top_k = top_k
        self.score_func = score_func
        self.renormalize = bool(renormalize)
        self.route_scale = float(route_scale)
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts_w1 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.experts_w3 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.experts_w2 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.expert_bias: Optional[torch.Tensor]
        self.register_buffer("expert_bias", torch.zeros(num_experts) if use_expert_bias else None)
        self.shared_expert = SharedExpert(dim, shared_hidden_dim) if shared_hidden_dim else None
        self.shared_gate = nn.Linear(dim, 1, bias=False) if shared_gate else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same scale as nn.Linear's default init (uniform +-1/sqrt(fan_in)).
        with torch.no_grad():
            b1 = 1.0 / math.sqrt(self.dim)
            b2 = 1.0 / math.sqrt(self.hidden_dim)
            self.experts_w1.uniform_(-b1, b1)
            self.experts_w3.uniform_(-b1, b1)
            self.experts_w2.uniform_(-b2, b2)

    def route(self, x2d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.router(x2d)
        return route(logits, self.top_k, self.score_func, self.renormalize, self.route_scale, self.expert_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2d = x.reshape(-1, self.dim)
        weights, ids = self.route(x2d)
        # [T, E] combine weights (zero for unselected experts).
        combine = torch.zeros(x2d.shape[0], self.num_experts, dtype=x2d.dtype, device=x2d.device)
        combine = combine.scatter_add(1, ids, weights.to(x2d.dtype))
        h1 = torch.einsum("td,efd->tef", x2d, self.experts_w1)
        h3 = torch.einsum("td,efd->tef", x2d, self.experts_w3)
        act = F.silu(h1) * h3
        y_e = torch.einsum("tef,edf->ted", act, self.experts_w2)
        out = torch.einsum("ted,te->td", y_e, combine)
        if self.shared_expert is not None:
            sh = self.shared_expert(x2d)
            if self.shared_gate is not None:
                sh = torch.sigmoid(self.shared_gate(x2d)) * sh
            out = out + sh
        return out.reshape(shape)
