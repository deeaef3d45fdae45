import numpy as np
import pytest
import torch

import mobilemoe_export as mm
from mobilemoe_export.quantization import quant, torchao_layout as tl
from test_transforms import D, E, F, K, et_block


def test_universal_roundtrip_and_size():
    for bits, (n, k, g) in [(4, (20, 64, 32)), (8, (8, 128, 64)), (4, (3, 256, 256))]:
        q, s = quant.quantize_per_group(torch.randn(n, k), g, bits)
        blob = tl.pack_universal(q, s, g, bits)
        assert blob.size == tl.packed_size(n, k, g, bits)
        q2, s2 = tl.unpack_universal(blob, n, k, g, bits)
        assert np.array_equal(q2, q.numpy()) and np.array_equal(s2, s.numpy())
    with pytest.raises(ValueError, match="not a torchao universal"):
        tl.unpack_universal(np.zeros(tl.packed_size(8, 32, 32, 4), np.uint8), 8, 32, 32, 4)


def _et_quantized(score_func, bias, route_scale, shared, bits=4):
    """An ExecuTorch QuantizedMoEFFN built the way replace_moe_with_quantized_op does, with the
    torchao universal packing done by our re-implementation (the x86 wheel has no packer)."""
    from executorch.examples.models.llama.source_transformation.moe import (
        QuantizedMoEFFN,
        _symmetric_quantize_per_group,
    )

    moe = et_block(score_func, shared=shared, bias=bias, route_scale=route_scale).eval()
    c = moe.cond_ffn
    p13, p2 = [], []
    for i in range(E):
        q, s = _symmetric_quantize_per_group(torch.cat([c.w1[i], c.w3[i]], 0).detach(), 32, bits)
        p13.append(torch.from_numpy(tl.pack_universal(q, s, 32, bits)))
        q, s = _symmetric_quantize_per_group(c.w2[i].t().contiguous().detach(), 32, bits)
        p2.append(torch.from_numpy(tl.pack_universal(q, s, 32, bits)))
    qm = QuantizedMoEFFN(moe.gate.weight.detach(), moe.expert_bias, torch.stack(p13), torch.stack(p2),
                         num_experts=E, num_activated_experts=K, hidden_dim=F, dim=D, group_size=32,
                         weight_nbit=bits, score_func=score_func, route_scale=route_scale)
    if shared:
        qm.shared_expert = moe.shared_expert
    return moe, qm


def _qdq_reference(moe, x, bits=4):
    """The q-dq formula of ExecuTorch's test_quantized_moe.py (fp32 activations, q-dq weights)."""
    from executorch.examples.models.llama.source_transformation.moe import _symmetric_quantize_per_group

    def qdq(w):
        q, s = _symmetric_quantize_per_group(w, 32, bits)
        n, k = w.shape
        return (q.float().reshape(n, k // 32, 32) * s.reshape(n, k // 32, 1)).reshape(n, k)

    c = moe.cond_ffn
    logits = moe.gate(x)
    if moe.score_func == "sigmoid":
        s = torch.sigmoid(logits)
        sel = s + moe.expert_bias if moe.expert_bias is not None else s
        idx = torch.topk(sel, K, dim=-1).indices
        w = torch.gather(s, -1, idx)
        w = w * moe.route_scale / (w.sum(-1, keepdim=True) + 1e-20)
    else:
        idx = torch.topk(logits, K, dim=-1).indices
        w = torch.gather(logits, -1, idx).softmax(-1)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(K):
            e = int(idx[t, j])
            h1 = qdq(c.w1[e]) @ x[t]
            h3 = qdq(c.w3[e]) @ x[t]
            out[t] += w[t, j] * (qdq(c.w2[e].t().contiguous()) @ (torch.nn.functional.silu(h1) * h3))
    return out


@pytest.mark.parametrize("score_func,bias,route_scale,shared", [
    ("sigmoid", True, 2.5, False), ("softmax", False, 1.0, False), ("sigmoid", False, 1.0, True)])
def test_quantized_moe_ffn_conversion(score_func, bias, route_scale, shared):
    moe, qm = _et_quantized(score_func, bias, route_scale, shared)
    x = torch.randn(6, D)
    with torch.no_grad():
        ref = _qdq_reference(moe, x)
        if shared:
            ref_shared = moe.shared_expert(x)
        exact = torch.nn.Sequential(qm)
        import copy

        fast = copy.deepcopy(exact)
        mm.quantize_moe(exact, exact=True)
        mm.quantize_moe(fast)
        y_exact, y_fast = exact(x), fast(x)
    assert isinstance(exact[0], mm.MobileMoEFFN)
    # identical integer weights and scales as the torchao q-dq formula
    from executorch.examples.models.llama.source_transformation.moe import _symmetric_quantize_per_group

    q, s = _symmetric_quantize_per_group(torch.cat([moe.cond_ffn.w1[1], moe.cond_ffn.w3[1]], 0).detach(), 32, 4)
    q2, s2 = quant.unpack(exact[0].w13[1], exact[0].w13_scales[1], 2 * F, D, 32, 4)
    assert np.array_equal(q2, q.numpy()) and np.array_equal(s2, s.reshape(2 * F, -1).numpy())
    if shared:
        # the shared expert was dense fp32 in QuantizedMoEFFN; we quantize it to INT4 too
        ref_sh = ref + ref_shared
        assert (y_exact - ref_sh).abs().max() < 0.1 * ref_sh.abs().max()
    else:
        torch.testing.assert_close(y_exact, ref, atol=1e-5, rtol=1e-4)
        assert (y_fast - ref).abs().max() < 0.05 * ref.abs().max()


def test_et_op_reads_our_universal_packing():
    """If the wheel's llama::quantized_moe_ffn kernel runs here, it must read our packing."""
    try:
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
        moe, qm = _et_quantized("sigmoid", True, 2.5, False)
        x = torch.randn(4, D)
        with torch.no_grad():
            y = qm(x)
    except Exception as e:  # pragma: no cover - depends on the wheel's AOT library
        pytest.skip(f"llama::quantized_moe_ffn not runnable here: {e}")
    with torch.no_grad():
        ref = _qdq_reference(moe, x)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
