import numpy as np
import pytest
import torch

from conftest import needs_lib
from mobilemoe_export.quantization import quant


def _weights(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[0, :32] = 0.0  # an all-zero group (scale clamps at eps)
    w[1, :32] = 1e-9  # tiny group
    w[2, 5] = -w[2, :32].abs().max() * 1.5  # negative max (q = -8 at the max)
    return w


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64])
def test_matches_torchao_group_qparams(bits, group):
    from torchao.quantization.quant_primitives import quantize_affine
    from torchao.quantization.utils import get_group_qparams_symmetric

    w = _weights(48, 128)
    q, s = quant.quantize_per_group(w, group, bits)
    s_ref, zp = get_group_qparams_symmetric(w, n_bit=bits, groupsize=group, precision=torch.float32)
    assert torch.equal(s, s_ref)
    qmin, qmax = quant.qrange(bits)
    q_ref = quantize_affine(w, (1, group), s_ref, zp, torch.int8, qmin, qmax)
    assert torch.equal(q, q_ref)


def test_matches_torchao_qat_fake_quant_bit_for_bit():
    from torchao.quantization.qat import Int8DynActInt4WeightQATQuantizer

    model = torch.nn.Sequential(torch.nn.Linear(128, 48, bias=False), torch.nn.Linear(48, 40, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(_weights(48, 128))
    Int8DynActInt4WeightQATQuantizer(groupsize=32).prepare(model)
    lin = model[0]
    assert hasattr(lin, "weight_fake_quantizer")
    fq = lin.weight_fake_quantizer(lin.weight).detach()
    q, s = quant.quantize_per_group(lin.weight, 32, 4)
    assert torch.equal(quant.dequantize(q, s, 32), fq)  # bit for bit
    # ... and the fake-quantized values alone map back to the same integers and scales
    q2, s2 = quant.from_fake_quantized(fq, 32, 4)
    assert torch.equal(quant.dequantize(q2, s2, 32), fq)
    assert torch.equal(q2, q)


def test_matches_intx_fake_quantize_config():
    from torchao.quantization.qat import IntxFakeQuantizeConfig
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    w = _weights(32, 64)
    cfg = IntxFakeQuantizeConfig(torch.int4, group_size=32, is_symmetric=True, scale_precision=torch.float32)
    fq = IntxFakeQuantizer(cfg)(w)
    q, s = quant.quantize_per_group(w, 32, 4)
    assert torch.equal(quant.dequantize(q, s, 32), fq)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n,k,g", [(16, 32, 32), (40, 128, 64), (5, 256, 256)])
def test_pack_roundtrip(bits, n, k, g):
    w = torch.randn(n, k)
    q, s = quant.quantize_per_group(w, g, bits)
    d, sc = quant.pack(q, s, g, bits)
    nb, ns = quant.packed_sizes(n, k, g, bits)
    assert d.dtype == np.uint8 and d.size == nb and sc.size == ns
    q2, s2 = quant.unpack(d, sc, n, k, g, bits)
    assert np.array_equal(q2, q.numpy()) and np.array_equal(s2, s.numpy())


def test_pack_layout_by_hand():
    # DESIGN.md section 2, INT4: byte j of chunk (t,g,c): low nibble q[t*16 + j/4][g*G + c*4 + j%4] + 8
    n, k, g = 20, 64, 32
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    s = torch.rand(n, k // g)
    d, sc = quant.pack(q, s, g, 4)
    ng, c = k // g, g // 4
    for t in range(2):
        for gg in range(ng):
            for cc in range(c):
                for j in range(32):
                    b = d[((t * ng + gg) * c + cc) * 32 + j]
                    r, kk = j // 4, gg * g + cc * 4 + j % 4
                    lo = int(q[t * 16 + r, kk]) + 8 if t * 16 + r < n else 8
                    hi = int(q[t * 16 + 8 + r, kk]) + 8 if t * 16 + 8 + r < n else 8
                    assert b == lo | (hi << 4)
    for t in range(2):
        for gg in range(ng):
            for r in range(16):
                row = t * 16 + r
                assert sc[(t * ng + gg) * 16 + r] == (s[row, gg] if row < n else 0.0)


@needs_lib
@pytest.mark.parametrize("bits", [4, 8])
def test_pack_equals_rust(bits):
    from mobilemoe_export.operators.ops import pack_weights_rust

    for n, k, g in [(16, 32, 32), (40, 128, 64), (3, 256, 128)]:
        q, s = quant.quantize_per_group(torch.randn(n, k), g, bits)
        d, sc = quant.pack(q, s, g, bits)
        d2, sc2 = pack_weights_rust(q, s, g, bits)
        assert np.array_equal(d, d2) and np.array_equal(sc, sc2)


def test_quant_errors():
    with pytest.raises(ValueError, match="not divisible by group_size"):
        quant.quantize_per_group(torch.randn(4, 48), 32)
    with pytest.raises(ValueError, match="2-D"):
        quant.quantize_per_group(torch.randn(2, 4, 32), 32)
    with pytest.raises(ValueError, match="weight_bits"):
        quant.quantize_per_group(torch.randn(4, 32), 32, 3)
    with pytest.raises(ValueError, match="group_size"):
        quant.quantize_per_group(torch.randn(4, 48), 48)


def test_qat_converted_linears_map_bit_for_bit():
    """QAT prepare -> (train) -> convert -> quantize_moe(dense_linears=True): same integers and scales
    as the fake quantizer used during training."""
    import copy

    import mobilemoe_export as mm
    from mobilemoe_export.quantization.transforms import MobileMoELinear
    from torchao.quantization.qat import Int8DynActInt4WeightQATQuantizer

    model = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False), torch.nn.Linear(64, 32, bias=False))
    qat = Int8DynActInt4WeightQATQuantizer(groupsize=32)
    qat.prepare(model)
    fq = [m.weight_fake_quantizer(m.weight).detach() for m in model]
    prepared = copy.deepcopy(model)
    qat.convert(model)
    mm.quantize_moe(model, dense_linears=True)
    mm.quantize_moe(prepared, dense_linears=True)  # from the QAT (fake-quantized) linears directly
    for mod in (model, prepared):
        for lin, w_hat in zip(mod, fq):
            assert isinstance(lin, MobileMoELinear)
            q, s = quant.unpack(lin.weight, lin.scales, lin.out_features, lin.in_features, 32, 4)
            assert torch.equal(quant.dequantize(torch.from_numpy(q), torch.from_numpy(s), 32), w_hat)
