
import pytest
import torch

import blocks
import mobilemoe_export as mm
from mobilemoe_export.operators import reference
from mobilemoe_export.quantization.transforms import MobileMoEFFN, MobileMoELinear, UnsupportedModuleError

D, F, E, K = 64, 32, 4, 2


def own_block(score_func, shared=True, gate=True, bias=True, route_scale=1.0, renormalize=True):
    m = mm.MoEFeedForward(D, F, E, K, score_func=score_func, renormalize=renormalize, route_scale=route_scale,
                          use_expert_bias=bias and score_func == "sigmoid",
                          shared_hidden_dim=F if shared else None, shared_gate=gate and shared)
    if m.expert_bias is not None:
        m.expert_bias.normal_(0, 0.1)
    return m


def et_block(score_func, shared=False, bias=False, route_scale=1.0):
    from executorch.examples.models.llama.llama_transformer import MOEFeedForward
    from executorch.examples.models.llama.model_args import ModelArgs

    args = ModelArgs(dim=D, n_layers=1, n_heads=1, vocab_size=8, hidden_dim=F, moe=True, num_experts=E,
                     num_activated_experts=K, moe_score_func=score_func, moe_route_scale=route_scale,
                     moe_use_expert_bias=bias, moe_shared_expert_hidden_dim=F if shared else None)
    m = MOEFeedForward(args)
    with torch.no_grad():
        for p in m.cond_ffn.parameters():
            p.mul_(0.1)
        if m.expert_bias is not None:
            m.expert_bias.normal_(0, 0.1)
    return m


CASES = {
    "own_softmax": lambda: own_block("softmax"),
    "own_softmax_all": lambda: own_block("softmax_all", gate=False),
    "own_softmax_all_norenorm": lambda: own_block("softmax_all", shared=False, renormalize=False),
    "own_sigmoid": lambda: own_block("sigmoid", route_scale=2.5),
    "own_sigmoid_nobias": lambda: own_block("sigmoid", bias=False, shared=False),
    "et_softmax": lambda: et_block("softmax"),
    "et_softmax_all_shared": lambda: et_block("softmax_all", shared=True),
    "et_sigmoid_bias": lambda: et_block("sigmoid", bias=True, route_scale=2.5, shared=True),
    "hf_mixtral": lambda: blocks.MixtralSparseMoeBlock(D, F, E, K),
    "hf_qwen2moe": lambda: blocks.QwenMoeBlock(D, F, E, K, norm_topk_prob=False),
    "hf_olmoe": lambda: blocks.QwenMoeBlock(D, F, E, K, norm_topk_prob=True, shared=False),
    "hf_deepseek": lambda: blocks.DeepseekMoE(D, F, E, K),
    "hf_fused": lambda: blocks.FusedMixtralBlock(D, F, E, K),
}


def _out(y):
    return y[0] if isinstance(y, tuple) else y


def reference_of(mod: MobileMoEFFN, x, exact=False):
    return reference.moe_ffn(
        x, mod.router_weight, mod.expert_bias, mod.w13, mod.w13_scales, mod.w2, mod.w2_scales, mod.shared_w13,
        mod.shared_w13_scales, mod.shared_w2, mod.shared_w2_scales, mod.shared_gate, mod.num_experts, mod.top_k,
        mod.hidden_dim, mod.shared_hidden_dim, mod.group_size, mod.weight_bits, mod.score_func, mod.renormalize,
        mod.route_scale, exact)


@pytest.mark.parametrize("case", list(CASES))
def test_block_quantized_vs_fp32_and_reference(case):
    block = CASES[case]().eval()
    model = blocks.Wrapper(block, D)
    x = torch.randn(2, 3, D)
    with torch.no_grad():
        ref_fp32 = _out(block(x))
        ref_model = model(x)
        mm.quantize_moe(model)
        assert isinstance(model.block, MobileMoEFFN), type(model.block)
        q = _out(model.block(x))
        assert q.shape == ref_fp32.shape
        # INT4 error bound relative to the output scale
        scale = ref_fp32.abs().max().item()
        assert (q - ref_fp32).abs().max().item() < 0.25 * scale + 1e-3, case
        assert (model(x) - ref_model).abs().max().item() < 0.25 * ref_model.abs().max().item() + 1e-2
        # q-dq reference (same integer weights, per-token int8 activations)
        r = reference_of(model.block, x.reshape(-1, D)).reshape(q.shape)
        torch.testing.assert_close(q, r, atol=2e-5, rtol=1e-4)
        # exact path approximates dequantized-weight fp32 math even closer
        ex = reference_of(model.block, x.reshape(-1, D), exact=True).reshape(q.shape)
        assert (ex - ref_fp32).abs().max().item() < 0.25 * scale + 1e-3


@pytest.mark.parametrize("bits,group", [(8, 32), (4, 64)])
def test_bits_and_group(bits, group):
    block = mm.MoEFeedForward(D, 64, E, K, shared_hidden_dim=64).eval()
    x = torch.randn(5, D)
    with torch.no_grad():
        ref = block(x)
        model = torch.nn.Sequential(block)
        mm.quantize_moe(model, group_size=group, weight_bits=bits)
        q = model(x)
    tol = 0.03 if bits == 8 else 0.25
    assert (q - ref).abs().max() < tol * ref.abs().max()
    torch.testing.assert_close(q, reference_of(model[0], x), atol=2e-5, rtol=1e-4)


def test_outputs_keep_conventions():
    et = blocks.Wrapper(et_block("softmax"), D)
    mm.quantize_moe(et)
    assert et.block.output == "flat"
    assert et.block(torch.randn(1, 3, D)).shape == (3, D)
    mix = blocks.Wrapper(blocks.MixtralSparseMoeBlock(D, F, E, K), D)
    mm.quantize_moe(mix)
    y, logits = mix.block(torch.randn(1, 3, D))
    assert y.shape == (1, 3, D) and logits.shape == (3, E)


def test_dense_linears():
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32, bias=False))
    x = torch.randn(3, 64)
    ref = model(x)
    with pytest.warns(UserWarning, match="in_features not divisible"):
        mm.quantize_moe(model, dense_linears=True)
    assert isinstance(model[0], MobileMoELinear) and isinstance(model[2], torch.nn.Linear)
    y = model(x)
    assert (y - ref).abs().max() < 0.1 * ref.abs().max()
    model2 = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 32))
    with pytest.raises(UnsupportedModuleError, match=r"1 \(in_features=48"):
        mm.quantize_moe(model2, dense_linears=True, strict_linears=True)


def test_int4_linear_matches_reference():
    lin = torch.nn.Linear(128, 40)
    m = MobileMoELinear(lin.weight, lin.bias, 32, 4)
    x = torch.randn(2, 3, 128)
    y = m(x)
    r = reference.int4_linear(x, m.weight, m.scales, m.bias, 40, 32, 4, False)
    torch.testing.assert_close(y, r, atol=2e-5, rtol=1e-4)
    assert (y - lin(x)).abs().max() < 0.15 * lin(x).abs().max()


def test_errors():
    # K not divisible by the group size
    bad = torch.nn.Sequential(mm.MoEFeedForward(48, 32, 4, 2))
    with pytest.raises(UnsupportedModuleError, match="not divisible by group_size"):
        mm.quantize_moe(bad)
    assert isinstance(bad[0], mm.MoEFeedForward)  # unchanged
    # unknown score function
    m = own_block("softmax")
    m.score_func = "relu"
    with pytest.raises(UnsupportedModuleError, match="unknown score_func"):
        mm.quantize_moe(torch.nn.Sequential(m))
    with pytest.raises(ValueError, match="unknown score_func"):
        mm.MoEFeedForward(D, F, E, K, score_func="relu")
    # top-k > experts
    m = own_block("softmax")
    m.top_k = E + 1
    with pytest.raises(UnsupportedModuleError, match="top_k"):
        mm.quantize_moe(torch.nn.Sequential(m))
    # non-2D expert weights
    m = blocks.MixtralSparseMoeBlock(D, F, E, K)
    m.experts[1].w1.weight = torch.nn.Parameter(torch.randn(F, D, 1))
    with pytest.raises(UnsupportedModuleError, match="2-D"):
        mm.quantize_moe(torch.nn.Sequential(m))
    # group-limited routing (DeepSeek-V3 n_group/topk_group)
    with pytest.raises(UnsupportedModuleError, match="group-limited"):
        mm.quantize_moe(torch.nn.Sequential(blocks.DeepseekMoE(D, F, 8, 2, n_group=4, topk_group=2)))
    # nothing recognised; unrecognised module with experts
    with pytest.raises(UnsupportedModuleError, match="no recognised MoE block"):
        mm.quantize_moe(torch.nn.Sequential(torch.nn.ReLU()))
    odd = torch.nn.Module()
    odd.experts = torch.nn.ModuleList([torch.nn.ReLU()])
    with pytest.raises(UnsupportedModuleError, match="not recognised"):
        mm.quantize_moe(torch.nn.Sequential(odd))
    # op-level checks
    q = torch.nn.Sequential(own_block("softmax"))
    mm.quantize_moe(q)
    with pytest.raises((ValueError, RuntimeError), match="score_func"):
        torch.ops.mobilemoe.moe_ffn(torch.randn(2, D), q[0].router_weight, None, q[0].w13, q[0].w13_scales,
                                    q[0].w2, q[0].w2_scales, None, None, None, None, None, E, K, F, 0, 32, 4,
                                    "bogus", True, 1.0, False)


def test_dtype_roundtrip_keeps_buffers():
    model = torch.nn.Sequential(own_block("sigmoid"))
    mm.quantize_moe(model)
    model.to(torch.bfloat16)
    assert model[0].router_weight.dtype == torch.float32 and model[0].w13.dtype == torch.uint8
    y = model(torch.randn(2, D, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_bare_block_returns_its_replacement():
    """quantize_moe on a bare MoE block (not inside a model) returns the replacement block."""
    import mobilemoe_export as mm
    from mobilemoe_export.moe_block import MoEFeedForward

    torch.manual_seed(0)
    b = MoEFeedForward(dim=64, hidden_dim=32, num_experts=4, top_k=2, shared_hidden_dim=32)
    q = mm.quantize_moe(b)
    assert isinstance(q, mm.MobileMoEFFN)
    x = torch.randn(1, 3, 64)
    rel = ((q(x) - b(x)).norm() / b(x).norm()).item()
    assert rel < 0.3, rel  # INT4 g32 of random weights
