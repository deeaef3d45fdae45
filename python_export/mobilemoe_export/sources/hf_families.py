"""Hugging Face ``transformers`` MoE blocks, recognised by family (class), not by structure.

Each family's routing was read from ``transformers/models/<family>/modeling_<family>.py`` of the
pinned transformers (5.24) and mapped onto the routing of ``mobilemoe::moe_ffn``
(:func:`mobilemoe_export.moe_block.route`); every transformers 5.24 block with routed experts has an
entry in :data:`VERIFIED_BLOCKS`, which returns its MoESpec or raises the reason it cannot be exact:

======================================  ============================================================
family (block class)                    routing in transformers -> MoESpec
======================================  ============================================================
Mixtral, MiniMax, HunYuan-V1-MoE        softmax over all E, top-k, divided by their sum ==
                                        ``softmax`` over the k selected logits; HunYuan's
                                        ``shared_mlp`` ungated
GraniteMoe(+Shared, Hybrid, SWA), Aria  top-k over the logits, softmax over the k (``softmax``);
                                        GraniteMoeShared's ``shared_mlp`` sits on the decoder layer
                                        (a dense MLP, ``dense_linears``); Aria's experts are stored
                                        for ``x @ W``, its shared experts ungated
Cohere2-MoE                             ``softmax`` (or ``"sigmoid"``: top-k logits, sigmoid of the
                                        k, ``/sum`` if ``norm_topk_prob``: ``topk_sigmoid``); shared
                                        experts "sum" ungated, "average" = route scale 0.5 and the
                                        shared down projection halved
Qwen2-MoE, Qwen3-Next, Qwen3-Omni       softmax over all E, top-k, ``/sum`` if ``norm_topk_prob``
(talker), Qwen4-Exp                     (``softmax_all``); shared expert scaled by
                                        ``sigmoid(shared_expert_gate)``
Qwen3-MoE, Qwen3-Omni (thinker), OLMoE, as Qwen2-MoE without shared expert (LaraMini: an ungated
FlexOlmo, Mellum, LaraMini              one)
Qwen3-VL-MoE (text), Qwen3.5-MoE        as Qwen3-MoE / Qwen2-MoE, always divided by the sum
Jamba; DBRX                             softmax over all E, top-k, never renormalised; DBRX divides
                                        by the L1 norm (the sum) if ``moe_normalize_expert_weights``
                                        is 1 (other norms refused)
DeepSeek-V2, DeepSeek-OCR-2,            softmax over all E, top-k (``greedy``), never renormalised,
Unlimited-OCR                           ``* routed_scaling_factor``; shared experts ungated;
                                        ``group_limited_greedy``: groups scored by their best
                                        probability (``group_score="max"``)
Mistral4, Mistral-Large-4               ``softmax_all``, ``/sum`` if ``norm_topk_prob`` (Large 4:
                                        always), ``* routed_scaling_factor``; groups scored by the
                                        sum of their two best probabilities (``"top2_sum"``)
DeepSeek-V3, V3.2, GLM-4-MoE(-Lite,     sigmoid, selection on ``sigmoid + e_score_correction_bias``,
-4V text), GLM-MoE-DSA, dots1,          weights the unbiased sigmoid, ``/sum`` if
Dots3Note (text), EXAONE-MoE,           ``norm_topk_prob``, ``* routed_scaling_factor``; shared
Solar-Open, Kimi-Linear, Bailing-       experts ungated; groups scored by the sum of their two best
Hybrid, MiMo-V2-Flash, A.X-K2, Beam     biased scores (``"top2_sum"``). A.X-K2 scores masked
                                        experts 0.0 (refused with an active limit); Beam scales
                                        the routed sum
MiniMax-M2, Dots3Note (vision), HY-V3,  as DeepSeek-V3 without groups, the bias on the block
AFMoE, Laguna, Step-3.7                 (MiniMax-M2, Dots3Note, HY-V3, AFMoE) or router, always
                                        ``/sum``, scaled by the router or the block; Laguna refuses a
                                        router logit softcap, Step-3.7 a finite ``swiglu_limits``
Flint, LFM2-MoE                         sigmoid top-k (LFM2: optional ``expert_bias``), ``/sum`` if
                                        ``norm_topk_prob``; LFM2 divides by ``sum + 1e-6``
                                        (``renorm_eps``), ``* routed_scaling_factor``
ERNIE 4.5 MoE                           softmax over all, selection on probabilities +
                                        ``e_score_correction_bias``, ``/max(sum, moe_norm_min)``
                                        (``renorm_min``); shared experts ungated
Kolibri                                 top-k over logits + ``e_score_correction_bias``, sigmoid of
                                        the selected logits (``topk_sigmoid``), ``/sum`` if
                                        ``norm_topk_prob``; shared experts ungated
PhiMoE                                  ``sparsemixer`` at inference (``score_func="sparsemixer"``,
                                        ``jitter_eps=router_jitter_noise``), top-2, each pick
                                        weighted by a softmax over the logits within a relative
                                        threshold of it
Llama 4 (text)                          top-k over the logits, sigmoid of the selected
                                        (``"topk_sigmoid"``), the weight scaling the expert's
                                        *input* (``weight_input``), an ungated shared expert
======================================  ============================================================

Refused with an error naming the module and the feature (no silent approximation):

- clamped SwiGLU experts: gpt-oss and OpenAI-Privacy-Filter (also ``(up + 1)``, alpha, expert and
  router biases), MiniMax-M3-VL, GLM-5-Next, HY-V4(-VL), DeepSeek-V4 (also hash routing);
- other expert functions: Inkling 2 (softcapped SwiGLU), Nemotron-H (non-gated relu2 experts,
  latent projections), MuseSpark (projections and norms around the experts), Switch Transformers
  and NLLB-MoE (capacity-limited routing, non-gated experts), JetMoE (an output bias; attention
  experts), Doge (product-key single-neuron experts), LongCat-Flash (identity experts);
- other routing: ERNIE 4.5 VL MoE (a 1-D flattened output, modality-isolated experts), Inkling
  (weights normalised with the shared experts' scores), ZAYA (MLP router with cross-layer state,
  skip expert), A.X-K1 (an RMSNorm on the block output), Gemma 4 and DiffusionGemma (the MoE is
  part of the decoder layer), ViTPose (experts chosen by dataset index);
- in any family: a non-SiLU expert activation, expert or router biases; a transformers block with
  experts that has no entry in :data:`VERIFIED_BLOCKS` (a newer family).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

NOT_HF = object()  # "not a transformers block": the caller falls back to structural recognition


def _family_of(m: nn.Module) -> Optional[str]:
    mod = type(m).__module__ or ""
    if not mod.startswith("transformers.models."):
        return None
    return mod.split(".")[2]


def _check_silu(act: Any, where: str) -> None:
    # transformers' ACT2FN["silu"] is SiLUActivation; torch's nn.SiLU and F.silu (LFM2-MoE's experts)
    # are the same function.
    if act is F.silu:
        return
    if act is None or not (isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")):
        raise ValueError(f"{where}: activation {type(act).__name__} is not SiLU; mobilemoe::moe_ffn computes "
                         f"SwiGLU experts (silu(gate) * up)")


def _router_weight(router: nn.Module, name: str, live: bool) -> torch.Tensor:
    from ..quantization.transforms import _f32

    if getattr(router, "bias", None) is not None:
        raise ValueError(f"{name}: router bias is not supported by mobilemoe::moe_ffn")
    w = _f32(router.weight, live)
    if w.dim() != 2:
        raise ValueError(f"{name}.weight must be 2-D [E, D], got {tuple(w.shape)}")
    return w


def _experts(m: nn.Module, e: int, d: int, name: str, live: bool):
    from ..quantization.transforms import _experts_fused

    experts = m.experts
    _check_silu(getattr(experts, "act_fn", None), f"{name}.experts")
    return _experts_fused(experts, e, d, name, live)


def _shared_mlp(mlp: Optional[nn.Module], name: str, live: bool):
    from ..quantization.transforms import _shared_from

    if mlp is None:
        return None
    # the activation is `act_fn` in most families, `activation_fn` in Llama 4's MLP
    _check_silu(getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None), name)
    return _shared_from(mlp, name, live)


def _group_limit(name: str, num_group: Optional[int], topk_group: Optional[int], score: str) -> Dict[str, Any]:
    """A DeepSeek router's group-limited selection as MoESpec fields (``n_group`` 1 or
    ``topk_group == n_group``: no limit)."""
    n = int(num_group or 1)
    k = int(topk_group if topk_group is not None else n)
    if n < 1 or not 0 < k <= n:
        raise ValueError(f"{name}: n_group={n}, topk_group={k} is not a valid group limit")
    return dict(num_groups=n, top_groups=k, group_score=score) if 1 < n and k < n else {}


def _spec(m, name, live, rw, experts=None, **routing):
    """``experts``: (w1, w3, w2) for a layout other than transformers' fused ``gate_up_proj``/``down_proj``."""
    from ..quantization.transforms import MoESpec, _check3

    e, d = rw.shape
    w1, w3, w2 = experts if experts is not None else _experts(m, e, d, name, live)
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


def _qwen_like(m, name, live, renormalize=None):
    # renormalize: None reads the router's norm_topk_prob
    from ..quantization.transforms import _linear_w

    gate = m.gate
    rw = _router_weight(gate, f"{name}.gate", live)
    shared = _shared_mlp(getattr(m, "shared_expert", None), f"{name}.shared_expert", live)
    sg = getattr(m, "shared_expert_gate", None)
    if sg is not None and getattr(sg, "bias", None) is not None:
        raise ValueError(f"{name}.shared_expert_gate: a bias is not supported")
    spec = _spec(m, name, live, rw, top_k=int(gate.top_k), score_func="softmax_all",
                 renormalize=bool(gate.norm_topk_prob) if renormalize is None else renormalize,
                 route_scale=1.0, shared=shared,
                 shared_gate=_linear_w(sg, f"{name}.shared_expert_gate", live).reshape(-1) if sg is not None else None)
    return spec


def _deepseek_v2(m, name, live):
    gate = m.gate
    rw = _router_weight(gate, f"{name}.gate", live)
    method = getattr(gate, "topk_method", "greedy")
    if method == "group_limited_greedy":
        # groups scored by their best softmax probability; transformers zeroes the other groups'
        # scores (masked_fill 0.0), which any positive probability beats: the same as excluding them
        groups = _group_limit(f"{name}.gate", gate.num_group, gate.topk_group, "max")
    elif method == "greedy":
        groups = {}
    else:
        raise ValueError(f"{name}.gate: topk_method={method!r} is not supported (known: 'greedy', 'group_limited_greedy')")
    # softmax over all experts, top-k, no renormalisation, times routed_scaling_factor
    return _spec(m, name, live, rw, top_k=int(gate.top_k), score_func="softmax_all", renormalize=False,
                 route_scale=float(gate.routed_scaling_factor),
                 shared=_shared_mlp(getattr(m, "shared_experts", None), f"{name}.shared_experts", live), **groups)


def _deepseek_v3(m, name, live):
    from ..quantization.transforms import _f32

    gate = m.gate
    rw = _router_weight(gate, f"{name}.gate", live)
    # groups ranked by the sum of their two best biased sigmoid scores ("noaux_tc"); the experts of
    # the other groups are masked with -inf
    groups = _group_limit(f"{name}.gate", gate.num_group, gate.topk_group, "top2_sum")
    # transformers divides by (sum + 1e-20): renorm_eps
    return _spec(m, name, live, rw, top_k=int(gate.top_k), score_func="sigmoid", renorm_eps=1e-20,
                 renormalize=bool(gate.norm_topk_prob), route_scale=float(gate.routed_scaling_factor),
                 expert_bias=_f32(gate.e_score_correction_bias),
                 shared=_shared_mlp(getattr(m, "shared_experts", None), f"{name}.shared_experts", live), **groups)


def _phimoe(m, name, live):
    # sparsemixer at inference: the best logit, then the best of the rest, each weighted by a
    # softmax over the logits within 2 * router_jitter_noise (relative) of it. Training adds
    # Gumbel sampling and input jitter; eval (what is exported) does neither.
    router = m.router
    rw = _router_weight(router, f"{name}.router", live)
    if int(router.top_k) != 2:
        raise ValueError(f"{name}.router: sparsemixer selects exactly 2 experts, config has top_k={router.top_k}")
    return _spec(m, name, live, rw, top_k=2, score_func="sparsemixer", renormalize=False, route_scale=1.0,
                 jitter_eps=float(router.router_jitter_noise))


def _llama4(m, name, live):
    # top-k over the logits, sigmoid of the selected; the weight scales the expert's input
    # (routed_in = x * score; unselected experts see 0 and, SwiGLU without biases, give 0); the
    # shared expert is ungated; the block returns (out [T, D], router_logits [T, E]). The experts
    # are stored for x @ W.
    router = m.router
    rw = _router_weight(router, f"{name}.router", live)
    spec = _spec(m, name, live, rw, experts=_experts_transposed(m, *rw.shape, name, live), top_k=int(router.top_k),
                 score_func="topk_sigmoid", renormalize=False, route_scale=1.0, weight_input=True,
                 shared=_shared_mlp(getattr(m, "shared_expert", None), f"{name}.shared_expert", live))
    spec.output = "flat_tuple"
    return spec


def _qwen_renormalized(m, name, live):
    # Qwen3-VL-MoE (text), Qwen3.5-MoE: the router always divides by the sum (it has no norm_topk_prob)
    return _qwen_like(m, name, live, renormalize=True)


def _jamba(m, name, live):
    # softmax over all E, top-k, never renormalised
    router = m.router
    rw = _router_weight(router, f"{name}.router", live)
    return _spec(m, name, live, rw, top_k=int(router.top_k), score_func="softmax_all", renormalize=False,
                 route_scale=1.0)


def _hunyuan_v1(m, name, live):
    # softmax over all E, top-k, /sum == softmax over the k selected logits; shared_mlp added ungated
    gate = m.gate
    rw = _router_weight(gate.wg, f"{name}.gate.wg", live)
    return _spec(m, name, live, rw, top_k=int(gate.top_k), score_func="softmax", renormalize=True, route_scale=1.0,
                 shared=_shared_mlp(m.shared_mlp, f"{name}.shared_mlp", live))


def _experts_transposed(m: nn.Module, e: int, d: int, name: str, live: bool):
    """(w1, w3, w2) of experts stored for ``x @ W`` (Aria, Llama 4): gate_up_proj [E, D, 2F], down_proj
    [E, F, D]. The shapes alone cannot tell this layout from [E, 2F, D] when D == 2F."""
    from ..quantization.transforms import _check3, _f32

    ex = m.experts
    _check_silu(getattr(ex, "act_fn", None), f"{name}.experts")
    gu, dn = _f32(ex.gate_up_proj, live), _f32(ex.down_proj, live)
    f = gu.shape[-1] // 2
    _check3(f"{name}.experts.gate_up_proj", gu, (e, d, 2 * f))
    _check3(f"{name}.experts.down_proj", dn, (e, f, d))
    return (gu[:, :, :f].transpose(1, 2).contiguous(), gu[:, :, f:].transpose(1, 2).contiguous(),
            dn.transpose(1, 2).contiguous())


def _aria(m, name, live):
    # top-k over the logits, softmax over the k (as GraniteMoe); shared experts ungated; the experts
    # are stored for x @ W
    router = m.router
    rw = _router_weight(router, f"{name}.router", live)
    return _spec(m, name, live, rw, experts=_experts_transposed(m, *rw.shape, name, live), top_k=int(router.top_k),
                 score_func="softmax", renormalize=True, route_scale=1.0,
                 shared=_shared_mlp(m.shared_experts, f"{name}.shared_experts", live))


def _dbrx(m, name, live):
    # softmax over all E, top-k, divided by their L_p norm: p=1 is their sum (probabilities are positive),
    # None no division. Experts: w1 (gate), v1 (up) [E*F, D]; w2 [E*F, D] applied as h @ w2[e].
    from ..quantization.transforms import _f32

    p = m.moe_normalize_expert_weights
    if p is not None and float(p) != 1.0:
        raise ValueError(f"{name}: moe_normalize_expert_weights={p} divides the routing weights by their L{p} norm; "
                         f"mobilemoe::moe_ffn divides by their sum (L1) or not at all")
    rw = _router_weight(m.router.layer, f"{name}.router.layer", live)
    e, d = rw.shape
    glu = m.experts.mlp
    _check_silu(glu.activation_fn, f"{name}.experts.mlp")
    f = glu.w1.shape[0] // e
    split = lambda w: _f32(w, live).reshape(e, f, d)  # noqa: E731
    experts = (split(glu.w1).contiguous(), split(glu.v1).contiguous(), split(glu.w2).transpose(1, 2).contiguous())
    return _spec(m, name, live, rw, experts=experts, top_k=int(m.top_k), score_func="softmax_all",
                 renormalize=p is not None, route_scale=1.0)


def _mistral4(m, name, live, renormalize=None):
    # softmax over all E, top-k, /sum if norm_topk_prob, * routed_scaling_factor; shared experts ungated.
    # Groups ranked by the sum of their two best probabilities (no bias); transformers zeroes the other
    # groups' probabilities (masked_fill 0.0), which any positive probability beats: excluded.
    gate = m.gate
    rw = _router_weight(gate, f"{name}.gate", live)
    groups = _group_limit(f"{name}.gate", gate.num_group, gate.topk_group, "top2_sum")
    return _spec(m, name, live, rw, top_k=int(gate.top_k), score_func="softmax_all", renorm_eps=1e-20,
                 renormalize=bool(gate.norm_topk_prob) if renormalize is None else renormalize,
                 route_scale=float(gate.routed_scaling_factor),
                 shared=_shared_mlp(getattr(m, "shared_experts", None), f"{name}.shared_experts", live), **groups)


def _mistral_large4(m, name, live):
    # Mistral4's routing with renormalisation always on (its router has no norm_topk_prob)
    return _mistral4(m, name, live, renormalize=True)


def _axk2(m, name, live):
    # DeepSeek-V3 routing, except that its group limit fills the masked experts' biased scores with 0.0
    # instead of -inf (a masked expert can outrank an eligible one whose biased score is negative): refused
    # whenever the limit is active, whatever moe_ffn's group routing does.
    gate = m.gate
    limit = _group_limit(f"{name}.gate", gate.num_group, gate.topk_group, "top2_sum")
    if limit:
        raise ValueError(
            f"{name}.gate: group-limited routing (n_group={limit['num_groups']}, topk_group={limit['top_groups']}) "
            f"with the masked experts scored 0.0 rather than excluded cannot be represented by mobilemoe::moe_ffn")
    return _deepseek_v3(m, name, live)


def _sigmoid(m, name, live, rw, top_k, renormalize, scale, bias=None, shared=None, renorm_eps=0.0, **groups):
    # sigmoid, selection on sigmoid + bias, weights the unbiased sigmoids of the k, divided by
    # (sum + renorm_eps) if renormalize (transformers: "+ 1e-20" in most families, none in some), * scale
    from ..quantization.transforms import _f32

    return _spec(m, name, live, rw, top_k=int(top_k), score_func="sigmoid", renormalize=bool(renormalize),
                 route_scale=float(scale), expert_bias=_f32(bias) if bias is not None else None, shared=shared,
                 renorm_eps=float(renorm_eps), **groups)


def _minimax_m2_like(m, name, live):
    # MiniMax-M2, Dots3Note (vision), HY-V3: the bias is the block's e_score_correction_bias, the k weights are
    # always renormalised, then times the router's router_scaling_factor (MiniMax-M2 has none); HY-V3's
    # shared experts are ungated (its fp32 combine is the identity on an fp32 model).
    # MiniMax-M2 divides by the sum, the others by sum + 1e-20
    gate = m.gate
    return _sigmoid(m, name, live, _router_weight(gate, f"{name}.gate", live), gate.top_k, True,
                    getattr(gate, "router_scaling_factor", 1.0), bias=m.e_score_correction_bias,
                    shared=_shared_mlp(getattr(m, "shared_experts", None), f"{name}.shared_experts", live),
                    renorm_eps=0.0 if type(m).__name__ == "MiniMaxM2SparseMoeBlock" else 1e-20)


def _afmoe(m, name, live):
    # the block's expert_bias for selection, always renormalised, * route_scale; shared experts ungated
    router = m.router
    return _sigmoid(m, name, live, _router_weight(router.gate, f"{name}.router.gate", live), router.top_k, True,
                    router.route_scale, bias=m.expert_bias,
                    shared=_shared_mlp(m.shared_experts, f"{name}.shared_experts", live), renorm_eps=1e-20)


def _laguna(m, name, live):
    # always renormalised; the block scales the routed sum by routed_scaling_factor (linear: a route
    # scale); shared experts ungated. A tanh softcap on the router logits changes the scores.
    gate = m.gate
    if float(gate.router_logit_softcapping) > 0.0:
        raise ValueError(f"{name}.gate: moe_router_logit_softcapping={gate.router_logit_softcapping} (tanh on the "
                         f"router logits) is not supported by mobilemoe::moe_ffn")
    return _sigmoid(m, name, live, _router_weight(gate, f"{name}.gate", live), gate.top_k, True,
                    m.routed_scaling_factor, bias=gate.e_score_correction_bias,
                    shared=_shared_mlp(m.shared_experts, f"{name}.shared_experts", live))


def _step3p7(m, name, live):
    # always renormalised, the routed sum times moe_router_scaling_factor, shared experts ungated; the
    # per-layer swiglu_limits clamp is the identity only where the limit is infinite (no clamp)
    for part, mod in (("experts", m.experts), ("shared_experts", m.shared_experts)):
        if mod.limit != float("inf"):
            raise ValueError(f"{name}.{part}: clamped SwiGLU (limit {mod.limit}) is not supported by "
                             f"mobilemoe::moe_ffn (silu(gate) * up unclamped)")
    gate = m.gate
    return _sigmoid(m, name, live, _router_weight(gate, f"{name}.gate", live), gate.top_k, True,
                    m.routed_scaling_factor, bias=gate.e_score_correction_bias,
                    shared=_shared_mlp(m.shared_experts, f"{name}.shared_experts", live))


def _beam(m, name, live):
    # DeepSeek-V3 routing (its -inf masked group limit included) without shared experts;
    # routed_scaling_factor scales the routed sum (the block)
    gate = m.gate
    return _sigmoid(m, name, live, _router_weight(gate, f"{name}.gate", live), gate.top_k, gate.norm_topk_prob,
                    m.routed_scaling_factor, bias=gate.e_score_correction_bias, renorm_eps=1e-20,
                    **_group_limit(f"{name}.gate", gate.num_group, gate.topk_group, "top2_sum"))


def _flint(m, name, live):
    # sigmoid top-k without bias, /sum if norm_topk_prob; shared expert ungated
    gate = m.gate
    return _sigmoid(m, name, live, _router_weight(gate, f"{name}.gate", live), gate.top_k, gate.norm_topk_prob, 1.0,
                    shared=_shared_mlp(m.shared_expert, f"{name}.shared_expert", live))


def _lfm2_moe(m, name, live):
    # the block's optional expert_bias for selection, /(sum + 1e-6) if norm_topk_prob,
    # * routed_scaling_factor
    gate = m.gate
    return _sigmoid(m, name, live, _router_weight(gate, f"{name}.gate", live), gate.top_k, gate.norm_topk_prob,
                    gate.routed_scaling_factor, bias=m.expert_bias if m.use_expert_bias else None, renorm_eps=1e-6)


def _ernie4_5_moe(m, name, live):
    # softmax over all E, selection on softmax + e_score_correction_bias, the unbiased probabilities of
    # the k divided by max(sum, moe_norm_min); shared experts ungated
    from ..quantization.transforms import _f32

    gate = m.gate
    return _spec(m, name, live, _router_weight(gate, f"{name}.gate", live), top_k=int(gate.top_k),
                 score_func="softmax_all", renormalize=True, route_scale=1.0, renorm_min=float(gate.norm_min),
                 expert_bias=_f32(gate.moe_statics.e_score_correction_bias).reshape(-1),
                 shared=_shared_mlp(m.shared_experts, f"{name}.shared_experts", live))


def _kolibri(m, name, live):
    # top-k over the logits + e_score_correction_bias, the sigmoids of the selected logits, /sum if
    # norm_topk_prob; shared experts ungated
    from ..quantization.transforms import _f32

    gate = m.gate
    return _spec(m, name, live, _router_weight(gate, f"{name}.gate", live), top_k=int(gate.top_k),
                 score_func="topk_sigmoid", renormalize=bool(gate.norm_topk_prob), route_scale=1.0,
                 expert_bias=_f32(gate.e_score_correction_bias),
                 shared=_shared_mlp(m.shared_experts, f"{name}.shared_experts", live))


def _cohere2_moe(m, name, live):
    # top-k over the logits, then softmax over the k ("softmax") or their sigmoids, /sum if
    # norm_topk_prob ("sigmoid": "topk_sigmoid", selecting on the logits as transformers does). Shared
    # experts "sum": ungated; "average": (routed + shared) / 2, i.e. route scale 0.5 and the shared
    # down projection halved (a power of two: exact in fp32 and in the INT4 group scales).
    gate = m.gate
    fn = gate.expert_selection_fn
    if fn not in ("softmax", "sigmoid"):
        raise ValueError(f"{name}.gate: expert_selection_fn={fn!r} is not supported (known: 'softmax', 'sigmoid')")
    routing = (dict(score_func="softmax", renormalize=True) if fn == "softmax" else
               dict(score_func="topk_sigmoid", renormalize=bool(gate.norm_topk_prob)))
    shared, scale = None, 1.0
    if m.num_shared_experts > 0:
        shared = _shared_mlp(m.shared_experts, f"{name}.shared_experts", live)
        strategy = m.shared_expert_combination_strategy
        if strategy == "average":
            shared, scale = (shared[0], shared[1], shared[2] * 0.5), 0.5
        elif strategy != "sum":
            raise ValueError(f"{name}: shared_expert_combination_strategy={strategy!r} is not supported")
    return _spec(m, name, live, _router_weight(gate, f"{name}.gate", live), top_k=int(gate.top_k),
                 route_scale=scale, shared=shared, **routing)


def _refused(why: str) -> Callable:
    """A handler refusing a family whose block ``moe_ffn`` cannot compute, for the reason ``why``."""

    def refuse(m, name, live):
        raise ValueError(f"{name}: {why}; mobilemoe::moe_ffn cannot compute it exactly")

    return refuse


_CLAMPED_SWIGLU = "clamped SwiGLU experts (swiglu_limit: gate clamped above, up clamped to +-limit)"
_GPT_OSS_GLU = ("gpt-oss experts: clamped (up + 1) * gate * sigmoid(alpha * gate) with expert biases, and a router "
                "bias")
_CAPACITY = "capacity-limited routing (tokens beyond an expert's capacity are dropped) with non-gated experts"
_LAYER_MOE = ("the MoE is part of the decoder layer: the router has its own norm and scale and sees another input "
              "than the experts, per_expert_scale, GELU experts")

# transformers class name -> handler, for every block of the pinned transformers (5.24) with routed
# experts; the families of the module docstring. A handler returns the MoESpec or raises the reason.
VERIFIED_BLOCKS: Dict[str, Callable] = {
    # softmax over the k selected logits
    "MixtralSparseMoeBlock": _mixtral_like,
    "MiniMaxSparseMoeBlock": _mixtral_like,
    "GraniteMoeMoE": _mixtral_like,
    "GraniteMoeSharedMoE": _mixtral_like,
    "GraniteMoeHybridMoE": _mixtral_like,
    "GraniteMoeSWAMoE": _mixtral_like,
    "HunYuanMoEV1Moe": _hunyuan_v1,
    "AriaTextMoELayer": _aria,
    "Cohere2MoeSparseMoeBlock": _cohere2_moe,
    # softmax over all experts
    "Qwen2MoeSparseMoeBlock": _qwen_like,
    "Qwen3MoeSparseMoeBlock": _qwen_like,
    "Qwen3NextSparseMoeBlock": _qwen_like,
    "Qwen3OmniMoeThinkerTextSparseMoeBlock": _qwen_like,
    "Qwen3OmniMoeTalkerTextSparseMoeBlock": _qwen_like,
    "Qwen4ExpTextSparseMoeBlock": _qwen_like,
    "OlmoeSparseMoeBlock": _qwen_like,
    "FlexOlmoSparseMoeBlock": _qwen_like,
    "MellumSparseMoeBlock": _qwen_like,
    "LaraMiniSparseMoeBlock": _qwen_like,
    "Qwen3VLMoeTextSparseMoeBlock": _qwen_renormalized,
    "Qwen3_5MoeSparseMoeBlock": _qwen_renormalized,
    "JambaSparseMoeBlock": _jamba,
    "DbrxFFN": _dbrx,
    "DeepseekV2Moe": _deepseek_v2,
    "DeepseekOcr2TextMoe": _deepseek_v2,
    "UnlimitedOcrTextMoe": _deepseek_v2,
    "Mistral4MoE": _mistral4,
    "MistralLarge4TextMoE": _mistral_large4,
    # sigmoid
    "DeepseekV3MoE": _deepseek_v3,
    "DeepseekV32MoE": _deepseek_v3,
    "Glm4MoeMoE": _deepseek_v3,
    "Glm4MoeLiteMoE": _deepseek_v3,
    "Glm4vMoeTextMoE": _deepseek_v3,
    "GlmMoeDsaMoE": _deepseek_v3,
    "Dots1MoE": _deepseek_v3,
    "Dots3NoteTextMoE": _deepseek_v3,
    "ExaoneMoeSparseMoEBlock": _deepseek_v3,
    "SolarOpenMoE": _deepseek_v3,
    "KimiLinearMoE": _deepseek_v3,
    "BailingHybridMoE": _deepseek_v3,
    "MiMoV2FlashMoE": _deepseek_v3,
    "AXK2MoE": _axk2,
    "BeamMoE": _beam,
    "MiniMaxM2SparseMoeBlock": _minimax_m2_like,
    "Dots3NoteVisionMoE": _minimax_m2_like,
    "HYV3MoE": _minimax_m2_like,
    "AfmoeSparseMoeBlock": _afmoe,
    "LagunaSparseMoeBlock": _laguna,
    "Step3p7SparseMoeBlock": _step3p7,
    "FlintSparseMoeBlock": _flint,
    "Lfm2MoeSparseMoeBlock": _lfm2_moe,
    "Ernie4_5_MoeSparseMoeBlock": _ernie4_5_moe,
    "Kolibri1SparseMoeBlock": _kolibri,
    # sparsemixer; top-k logits -> sigmoid, the weight scaling the expert input
    "PhimoeSparseMoeBlock": _phimoe,
    "Llama4TextMoe": _llama4,
    # refused: what moe_ffn cannot compute
    "GptOssMLP": _refused(_GPT_OSS_GLU),
    "OpenAIPrivacyFilterMLP": _refused(_GPT_OSS_GLU),
    "MiniMaxM3VLSparseMoeBlock": _refused("gpt-oss-style clamped experts ((up + 1) * gate * sigmoid(alpha * gate), "
                                          "swiglu_limit), also in the shared experts"),
    "Glm5NextTextMoE": _refused(_CLAMPED_SWIGLU),
    "HYV4MoE": _refused(_CLAMPED_SWIGLU),
    "HYV4VLMoE": _refused(_CLAMPED_SWIGLU),
    "DeepseekV4SparseMoeBlock": _refused(_CLAMPED_SWIGLU + " and hash routing (experts looked up by token id, "
                                                           "tid2eid) on the first layers"),
    "Inkling2SparseMoeBlock": _refused("softcapped SwiGLU experts (tanh softcaps on the gate factor and up)"),
    "Inkling2LoopSparseMoeBlock": _refused("softcapped SwiGLU experts (tanh softcaps on the gate factor and up)"),
    "InklingMoE": _refused("routing weights normalised jointly with the shared experts' scores (a softmax of "
                           "logsigmoids) that also scale each shared expert (shared gammas)"),
    "AXK1MoE": _refused("an RMSNorm (post_mlp_layernorm) on the block output"),
    "Ernie4_5_VLMoeSparseMoeBlock": _refused("an output flattened to 1-D with the router logits (modality "
                                             "isolated text/vision experts)"),
    "LongcatFlashMoE": _refused("zero-compute (identity) experts, and selection on softmax + "
                                "e_score_correction_bias"),
    "ZayaSparseMoeBlock": _refused("an MLP router carrying state across layers (router_states) and a skip "
                                   "expert"),
    "MuseSparkMoE": _refused("experts between a down/up projection (pre_expert_proj/post_expert_proj) with "
                             "norms, and an RMSNorm on each expert's output"),
    "NemotronHMoE": _refused("non-gated experts (down_proj(act(up_proj x)), relu2) and latent projections"),
    "JetMoeMoE": _refused("a bias added to the block output (and experts in JetMoE's ParallelExperts layout)"),
    "JetMoeAttention": _refused("mixture-of-attention-heads (routed query/output projections)"),
    "DogeCDMoE": _refused("product-key routing to single-neuron experts (embeddings) mixed into a dense MLP"),
    "Gemma4TextDecoderLayer": _refused(_LAYER_MOE),
    "DiffusionGemmaEncoderTextLayer": _refused(_LAYER_MOE),
    "DiffusionGemmaDecoderTextLayer": _refused(_LAYER_MOE),
    "SwitchTransformersSparseMLP": _refused(_CAPACITY),
    "NllbMoeSparseMLP": _refused(_CAPACITY),
    "VitPoseBackboneMoeMLP": _refused("experts chosen by the dataset index, not routed"),
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
        f"transformers family '{family}' ({type(m).__name__}) is not among the MoE blocks whose routing was read "
        f"against mobilemoe::moe_ffn (hf_families.VERIFIED_BLOCKS, transformers 5.24); refusing rather than "
        f"guessing its routing")
