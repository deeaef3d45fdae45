"""Hugging Face ``transformers`` MoE blocks, recognised by family (class), not by structure.

Each family's routing was read from ``transformers/models/<family>/modeling_<family>.py`` of the
pinned transformers (5.24) and mapped onto the routing of ``mobilemoe::moe_ffn``
(:func:`mobilemoe_export.moe_block.route`):

=====================  =====================================================================
family (block class)   routing in transformers -> MoESpec
=====================  =====================================================================
Mixtral                softmax over all E, top-k, divided by their sum == ``softmax`` over
(MixtralSparseMoeBlock) the k selected logits
Qwen2-MoE              softmax over all E, top-k, ``/sum`` if ``norm_topk_prob``
                       (``softmax_all``); shared expert scaled by ``sigmoid(shared_expert_gate)``
Qwen3-MoE, OLMoE       as Qwen2-MoE, no shared expert
DeepSeek-V2            softmax over all E, top-k (``topk_method="greedy"``), never renormalised,
                       ``* routed_scaling_factor``; shared experts ungated
DeepSeek-V3            sigmoid, selection on ``sigmoid + e_score_correction_bias``, weights the
                       unbiased sigmoid, ``/sum`` if ``norm_topk_prob``, ``* routed_scaling_factor``;
                       shared experts ungated
GraniteMoe(+Shared)    top-k over the logits, softmax over the k (``softmax``); GraniteMoeShared's
                       ``shared_mlp`` sits on the decoder layer (a dense MLP, ``dense_linears``)
=====================  =====================================================================

Refused with an error naming the module and the feature (no silent approximation):

- group-limited routing (DeepSeek-V2 ``topk_method="group_limited_greedy"``, DeepSeek-V3
  ``n_group > 1`` with ``topk_group < n_group``): the set of eligible experts depends on per-token
  group scores, which ``moe_ffn`` (one top-k over all experts) cannot express;
- PhiMoE's ``sparsemixer``: each of its two picks is weighted by a softmax over the experts whose
  logit lies within a relative threshold of that pick, not by a softmax/sigmoid of the selected;
- Llama 4: the sigmoid routing weight scales the expert's *input* (``expert(w * x)``), and SwiGLU is
  not linear in it, while ``moe_ffn`` scales the expert's output;
- a non-SiLU expert activation, expert biases, and every other transformers MoE family (its routing
  has not been checked against ``moe_ffn``; see :data:`VERIFIED_BLOCKS`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

NOT_HF = object()  # "not a transformers block": the caller falls back to structural recognition


def _family_of(m: nn.Module) -> Optional[str]:
    mod = type(m).__module__ or ""
    if not mod.startswith("transformers.models."):
        return None
    return mod.split(".")[2]


def _check_silu(act: Any, where: str) -> None:
    # transformers' ACT2FN["silu"] is SiLUActivation; torch's nn.SiLU is the same function.
    if act is None or not (isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")):
        raise ValueError(f"{where}: activation {type(act).__name__} is not SiLU; mobilemoe::moe_ffn computes "
                         f"SwiGLU experts (silu(gate) * up)")


def _router_weight(router: nn.Module, name: str, live: bool) -> torch.Tensor:
    from .transforms import _f32

    if getattr(router, "bias", None) is not None:
        raise ValueError(f"{name}: router bias is not supported by mobilemoe::moe_ffn")
    w = _f32(router.weight, live)
    if w.dim() != 2:
        raise ValueError(f"{name}.weight must be 2-D [E, D], got {tuple(w.shape)}")
    return w


def _experts(m: nn.Module, e: int, d: int, name: str, live: bool):
    from .transforms import _experts_fused

    experts = m.experts
    _check_silu(getattr(experts, "act_fn", None), f"{name}.experts")
    return _experts_fused(experts, e, d, name, live)


def _shared_mlp(mlp: Optional[nn.Module], name: str, live: bool):
    from .transforms import _shared_from

    if mlp is None:
        return None
    _check_silu(getattr(mlp, "act_fn", None), name)
    return _shared_from(mlp, name, live)


def _refuse_group_limit(name: str, num_group: Optional[int], topk_group: Optional[int], what: str) -> None:
    n = int(num_group or 1)
    k = int(topk_group if topk_group is not None else n)
    if n > 1 and k < n:
        raise ValueError(
            f"{name}: group-limited routing ({what}, n_group={n}, topk_group={k}) cannot be represented by "
            f"mobilemoe::moe_ffn (one top-k over all experts); a model trained with it needs topk_group = n_group")


def _spec(m, name, live, rw, **routing):
    from .transforms import MoESpec, _check3

    e, d = rw.shape
    w1, w3, w2 = _experts(m, e, d, name, live)
    f = w1.shape[1]
    _check3(f"{name}.experts down_proj", w2, (e, d, f))
    if int(routing["top_k"]) > e:
        raise ValueError(f"{name}: top_k={routing['top_k']} exceeds num_experts={e}")
    return MoESpec(router_weight=rw, w1=w1, w3=w3, w2=w2, hidden_dim=f, **routing)


def _mixtral_like(m, name, live):
    # Mixtral: softmax(all) -> top-k -> /sum == softmax over the k selected logits.
    # GraniteMoe: top-k over the logits -> softmax over the k. Same function.
    router = m.gate if hasattr(m, "gate") else m.router
    rw = _router_weight(router, f"{name}.{'gate' if hasattr(m, 'gate') else 'router'}", live)
    return _spec(m, name, live, rw, top_k=int(router.top_k), score_func="softmax", renormalize=True, route_scale=1.0)


def _qwen_like(m, name, live):
    from .transforms import _linear_w

    gate = m.gate
    rw = _router_weight(gate, f"{name}.gate", live)
    shared = _shared_mlp(getattr(m, "shared_expert", None), f"{name}.shared_expert", live)
    sg = getattr(m, "shared_expert_gate", None)
    if sg is not None and getattr(sg, "bias", None) is not None:
        raise ValueError(f"{name}.shared_expert_gate: a bias is not supported")
    spec = _spec(m, name, live, rw, top_k=int(gate.top_k), score_func="softmax_all",
                 renormalize=bool(gate.norm_topk_prob), route_scale=1.0, shared=shared,
                 shared_gate=_linear_w(sg, f"{name}.shared_expert_gate", live).reshape(-1) if sg is not None else None)
    return spec


def _deepseek_v2(m, name, live):
    gate = m.gate
    rw = _router_weight(gate, f"{name}.gate", live)
    method = getattr(gate, "topk_method", "greedy")
    if method == "group_limited_greedy":
        _refuse_group_limit(f"{name}.gate", gate.num_group, gate.topk_group, "topk_method='group_limited_greedy'")
    elif method != "greedy":
        raise ValueError(f"{name}.gate: topk_method={method!r} is not supported (known: 'greedy')")
    # softmax over all experts, top-k, no renormalisation, times routed_scaling_factor
    return _spec(m, name, live, rw, top_k=int(gate.top_k), score_func="softmax_all", renormalize=False,
                 route_scale=float(gate.routed_scaling_factor),
                 shared=_shared_mlp(getattr(m, "shared_experts", None), f"{name}.shared_experts", live))


def _deepseek_v3(m, name, live):
    from .transforms import _f32

    gate = m.gate
    rw = _router_weight(gate, f"{name}.gate", live)
    _refuse_group_limit(f"{name}.gate", gate.num_group, gate.topk_group, "num_group/topk_group")
    # transformers divides by (sum + 1e-20), moe_ffn by max(sum, FLT_MIN): equal for any sum of
    # sigmoids of finite logits (> 0).
    return _spec(m, name, live, rw, top_k=int(gate.top_k), score_func="sigmoid",
                 renormalize=bool(gate.norm_topk_prob), route_scale=float(gate.routed_scaling_factor),
                 expert_bias=_f32(gate.e_score_correction_bias),
                 shared=_shared_mlp(getattr(m, "shared_experts", None), f"{name}.shared_experts", live))


def _phimoe(m, name, live):
    raise ValueError(
        f"{name}: PhiMoE's sparsemixer routing cannot be represented exactly by mobilemoe::moe_ffn (each pick "
        f"is weighted by a softmax over the experts within a relative threshold of it, not over the selected)")


def _llama4(m, name, live):
    raise ValueError(
        f"{name}: Llama 4 routing scales each expert's input by its sigmoid weight (expert(w * x)); "
        f"mobilemoe::moe_ffn scales the expert output, and SwiGLU is not linear in w")


# transformers class name -> handler; the families of the module docstring.
VERIFIED_BLOCKS: Dict[str, Callable] = {
    "MixtralSparseMoeBlock": _mixtral_like,
    "GraniteMoeMoE": _mixtral_like,
    "GraniteMoeSharedMoE": _mixtral_like,
    "Qwen2MoeSparseMoeBlock": _qwen_like,
    "Qwen3MoeSparseMoeBlock": _qwen_like,
    "OlmoeSparseMoeBlock": _qwen_like,
    "DeepseekV2Moe": _deepseek_v2,
    "DeepseekV3MoE": _deepseek_v3,
    "PhimoeSparseMoeBlock": _phimoe,
    "Llama4TextMoe": _llama4,
}


def extract_hf_moe(m: nn.Module, name: str, live: bool = False):
    """A transformers MoE block -> MoESpec; ``None`` for a transformers module that is no MoE block;
    :data:`NOT_HF` for anything else. Raises ``ValueError`` for a block that cannot be exact."""
    family = _family_of(m)
    if family is None:
        return NOT_HF
    handler = VERIFIED_BLOCKS.get(type(m).__name__)
    if handler is not None:
        return handler(m, name, live)
    experts = getattr(m, "experts", None)
    if experts is None or not isinstance(experts, nn.Module):
        return None
    raise ValueError(
        f"transformers family '{family}' ({type(m).__name__}) is not among the MoE families whose routing "
        f"quantize_moe reproduces exactly ({', '.join(sorted(VERIFIED_BLOCKS))}); refusing rather than "
        f"guessing its routing")
