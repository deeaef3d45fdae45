"""The routing beyond one top-k over all experts (group-limited DeepSeek selection, Llama 4's
top-k-then-sigmoid with the weight on the expert input, PhiMoE's sparsemixer, a selection bias on
any score function, shifted/floored renormalisation) through every layer:
the Rust kernel (eager op) against the Python reference (``moe_block.route`` + dequantized experts),
and the .pte on the ExecuTorch runtime against the eager op, delegated (blob format v4) and as the
``mobilemoe::moe_ffn.out`` custom-op kernel (the op schema's new arguments)."""

import pytest
import torch

import mobilemoe_export as mm
from conftest import needs_lib
from mobilemoe_export.operators import reference
from mobilemoe_export.quantization.transforms import MoESpec

D, F, E = 64, 32, 8

CASES = {
    # DeepSeek-V2 group_limited_greedy: 4 groups of 2, the best 2 groups by max probability
    "v2_grouped": dict(top_k=3, score_func="softmax_all", renormalize=False, route_scale=1.5, num_groups=4,
                       top_groups=2, group_score="max", shared=True),
    # DeepSeek-V3 noaux_tc: groups by the sum of their two best biased sigmoid scores
    "v3_grouped": dict(top_k=2, score_func="sigmoid", renormalize=True, route_scale=2.5, num_groups=4, top_groups=1,
                       group_score="top2_sum", bias=True, shared=True),
    # Llama 4: top-1 over the logits, sigmoid weight scaling the expert input, ungated shared expert
    "llama4": dict(top_k=1, score_func="topk_sigmoid", renormalize=False, route_scale=1.0, weight_input=True,
                   shared=True),
    "topk_sigmoid_k3_input": dict(top_k=3, score_func="topk_sigmoid", renormalize=True, route_scale=1.0,
                                  weight_input=True),
    # PhiMoE sparsemixer: a wide threshold so that the softmaxes see several experts
    "sparsemixer": dict(top_k=2, score_func="sparsemixer", renormalize=False, route_scale=1.0, jitter_eps=0.3),
    # ERNIE 4.5: selection on probabilities + bias, / max(sum, 1e-12)
    "ernie": dict(top_k=2, score_func="softmax_all", renormalize=True, route_scale=1.0, bias=True, renorm_min=1e-12,
                  shared=True),
    # LFM2-MoE: sigmoid + bias, / (sum + 1e-6), * routed_scaling_factor
    "lfm2": dict(top_k=2, score_func="sigmoid", renormalize=True, route_scale=1.5, bias=True, renorm_eps=1e-6),
    # Kolibri: top-k over logits + bias, sigmoid weights, / sum
    "kolibri": dict(top_k=2, score_func="topk_sigmoid", renormalize=True, route_scale=1.0, bias=True, shared=True),
}


def make_spec(case: str, seed: int = 0) -> MoESpec:
    c = dict(CASES[case])
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    bias, shared = c.pop("bias", False), c.pop("shared", False)
    return MoESpec(router_weight=r(E, D), w1=r(E, F, D) / 8, w3=r(E, F, D) / 8, w2=r(E, D, F) / 6, hidden_dim=F,
                   expert_bias=0.1 * r(E) if bias else None,
                   shared=(r(F, D) / 8, r(F, D) / 8, r(D, F) / 6) if shared else None, **c)


def reference_of(m: mm.MobileMoEFFN, x: torch.Tensor) -> torch.Tensor:
    return reference.moe_ffn(
        x, m.router_weight, m.expert_bias, m.w13, m.w13_scales, m.w2, m.w2_scales, m.shared_w13, m.shared_w13_scales,
        m.shared_w2, m.shared_w2_scales, m.shared_gate, m.num_experts, m.top_k, m.hidden_dim, m.shared_hidden_dim,
        m.group_size, m.weight_bits, m.score_func, m.renormalize, m.route_scale, m.exact, num_groups=m.num_groups,
        top_groups=m.top_groups, group_score=m.group_score, weight_input=m.weight_input, jitter_eps=m.jitter_eps,
        renorm_eps=m.renorm_eps, renorm_min=m.renorm_min)


@needs_lib
@pytest.mark.parametrize("exact", [True, False], ids=["fp32_acts", "q8_acts"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_equals_python_reference(case, exact):
    m = mm.MobileMoEFFN(make_spec(case), exact=exact)
    x = torch.randn(24, D)
    with torch.no_grad():
        got, want = m(x), reference_of(m, x)
    # the same routing; fp32 summation order differs (the Q8 path: integer sums, then one scaling)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_python_route_matches_transformers_formulas():
    """moe_block.route against the formulas transcribed from transformers 5.24 (DeepSeek-V2/V3 routers,
    PhiMoE sparsemixer in eval, Llama4Router)."""
    from mobilemoe_export.moe_block import route

    torch.manual_seed(0)
    logits = torch.randn(32, E)
    # DeepSeek-V2 group_limited_greedy
    scores = logits.softmax(-1)
    gs = scores.view(-1, 4, 2).max(-1).values
    gi = torch.topk(gs, 2, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(gs).scatter_(1, gi, 1).unsqueeze(-1).expand(-1, 4, 2).reshape(-1, E)
    tw, ti = torch.topk(scores.masked_fill(~mask.bool(), 0.0), 3, dim=-1)
    w, ids = route(logits, 3, "softmax_all", False, 1.5, num_groups=4, top_groups=2, group_score="max")
    assert torch.equal(ids, ti) and torch.allclose(w, tw * 1.5)
    # DeepSeek-V3 noaux_tc
    bias = 0.1 * torch.randn(E)
    s = logits.sigmoid()
    sc = s + bias
    gs = sc.view(-1, 4, 2).topk(2, dim=-1)[0].sum(-1)
    gi = torch.topk(gs, 1, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(gs).scatter_(1, gi, 1).unsqueeze(-1).expand(-1, 4, 2).reshape(-1, E)
    ti = torch.topk(sc.masked_fill(~mask.bool(), float("-inf")), 2, dim=-1)[1]
    tw = s.gather(1, ti)
    tw = tw / (tw.sum(-1, keepdim=True) + 1e-20) * 2.5
    w, ids = route(logits, 2, "sigmoid", True, 2.5, bias, num_groups=4, top_groups=1, group_score="top2_sum")
    assert torch.equal(ids, ti) and torch.allclose(w, tw)
    # Llama 4
    tv, ti = torch.topk(logits, 1, dim=1)
    w, ids = route(logits, 1, "topk_sigmoid", False, 1.0)
    assert torch.equal(ids, ti) and torch.allclose(w, tv.sigmoid())
    # PhiMoE sparsemixer (transformers' function itself, eval mode)
    transformers = pytest.importorskip("transformers")
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    tw, ti = sparsemixer(logits, jitter_eps=0.3, training=False)
    w, ids = route(logits, 2, "sparsemixer", False, 1.0, jitter_eps=0.3)
    assert transformers and torch.equal(ids, ti) and torch.allclose(w, tw)


def test_python_route_refuses_sparsemixer_misuse():
    from mobilemoe_export.moe_block import route

    logits = torch.randn(3, E)
    with pytest.raises(ValueError, match="sparsemixer routing selects 2 experts without a bias"):
        route(logits, 3, "sparsemixer", False, 1.0, jitter_eps=0.1)
    with pytest.raises(ValueError, match="sparsemixer routing selects 2 experts without a bias"):
        route(logits, 2, "sparsemixer", False, 1.0, torch.zeros(E), jitter_eps=0.1)
    with pytest.raises(ValueError, match="unknown group_score 'min'"):
        route(logits, 2, "softmax_all", False, 1.0, num_groups=4, top_groups=2, group_score="min")


@needs_lib
@pytest.mark.parametrize("delegate", [True, False], ids=["delegate", "custom_op"])
@pytest.mark.parametrize("case", list(CASES))
def test_pte_equals_eager(case, delegate, tmp_path):
    from executorch.runtime import Runtime

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.moe = mm.MobileMoEFFN(make_spec(case, seed=1))

        def forward(self, x):
            return self.moe(x)

    model = Block().eval()
    x = torch.randn(1, 5, D)
    path = mm.export_pte(model, (x,), tmp_path / f"{case}.pte", delegate=delegate, max_tokens=16)
    mm.load_runtime()
    meth = Runtime.get().load_program(path).load_method("forward")
    for t in (5, 1, 13):
        xt = torch.randn(1, t, D)
        with torch.no_grad():
            want = model(xt)
        torch.testing.assert_close(meth.execute([xt])[0], want, atol=1e-6, rtol=1e-6)


@needs_lib
def test_delegate_fills_arguments_left_at_their_defaults(tmp_path):
    """A graph whose ``moe_ffn`` call stops after ``exact`` (as one written before the routing
    arguments existed) is delegated with the op schema's defaults for the rest."""
    from executorch.runtime import Runtime

    m = mm.MobileMoEFFN(make_spec("ernie", seed=2))

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.moe = m

        def forward(self, x):
            return torch.ops.mobilemoe.moe_ffn(
                x, m.router_weight, m.expert_bias, m.w13, m.w13_scales, m.w2, m.w2_scales, m.shared_w13,
                m.shared_w13_scales, m.shared_w2, m.shared_w2_scales, m.shared_gate, m.num_experts, m.top_k,
                m.hidden_dim, m.shared_hidden_dim, m.group_size, m.weight_bits, m.score_func, m.renormalize,
                m.route_scale, m.exact)

    model = Block().eval()
    x = torch.randn(1, 5, D)
    path = mm.export_pte(model, (x,), tmp_path / "defaults.pte", delegate=True, max_tokens=16)
    mm.load_runtime()
    got = Runtime.get().load_program(path).load_method("forward").execute([x])[0]
    with torch.no_grad():
        want = model(x)  # the eager op, with the same defaults
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
