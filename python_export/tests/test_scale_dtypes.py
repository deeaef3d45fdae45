"""Per-group scales in fp16 / bf16 (torchao's ``scales_precision``; blob format version 3): the
quantizer equals torchao's, the .pte reading them equals eager PyTorch bit for bit, QAT with fp16
scales stays exact end to end, and the .pte is smaller than with fp32 scales."""

import os

import pytest
import torch

from conftest import needs_lib

pytestmark = needs_lib

DTYPES = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dt", [torch.float32, *DTYPES])
def test_quantizer_equals_torchao_fake_quantizer(dt):
    from torchao.quantization.qat.utils import _fake_quantize_per_channel_group
    from torchao.quantization.utils import get_group_qparams_symmetric

    from mobilemoe_export.quantization import quant
    from mobilemoe_export.quantization.qat import fake_quantize_weight

    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 256, generator=g) * 0.03
    w[5, :32] *= 1e-3  # small scales: the reciprocal in fp16 loses bits
    s, zp = get_group_qparams_symmetric(w, 4, 32, dt)
    want = _fake_quantize_per_channel_group(w, s, zp, -8, 7, 32)
    q, sc = quant.quantize_per_group(w, 32, 4, dt)
    assert torch.equal(sc, s.to(torch.float32))
    assert torch.equal(quant.dequantize(q, sc, 32), want)
    assert torch.equal(fake_quantize_weight(w, 32, 4, dt), want)


@pytest.mark.parametrize("dt", ["fp16", "bf16"])
def test_whole_model_pte_with_narrow_scales_equals_eager(tmp_path, dt):
    import mobilemoe_export as mm
    from mobilemoe_export import models
    from mobilemoe_export.lowering import decoder
    from test_decoder import _greedy_parity

    m = models.build_model(models.get_config("tiny"), seed=3)
    mm.quantize_moe(m, dense_linears=True, scales_dtype=dt)
    dec = decoder.lower_decoder(m)
    assert dec.emb_scales.dtype == mm.quantization.quant.scale_dtype(dt)
    assert all(b.dtype == mm.quantization.quant.scale_dtype(dt) for n, b in dec.named_buffers() if n.endswith("scales"))
    path = tmp_path / f"tiny_{dt}.pte"
    mm.export_pte(dec, dec.example_inputs(4), path)
    ids = _greedy_parity(dec, path, steps=32)
    assert len(set(ids)) > 1

    # the same model with fp32 scales: a larger .pte
    m32 = models.build_model(models.get_config("tiny"), seed=3)
    path32 = tmp_path / "tiny_fp32.pte"
    mm.export_pte(m32, m32.example_inputs(4), path32)
    assert os.path.getsize(path) < os.path.getsize(path32)


def test_per_op_pte_with_fp16_scales(tmp_path):
    """One delegate per MoE / linear op (blob v3 per op) equals eager; the portable kernels refuse."""
    import mobilemoe_export as mm
    from mobilemoe_export import models
    from executorch.runtime import Runtime

    m = models.build_model(models.get_config("tiny"), seed=5)
    mm.quantize_moe(m, dense_linears=True, scales_dtype="fp16")
    args = m.example_inputs(5)
    path = tmp_path / "per_op.pte"
    mm.export_pte(m, args, path, whole_model=False)
    mm.load_runtime()
    got = Runtime.get().load_program(str(path)).load_method("forward").execute(list(args))[0]
    m.reset_cache() if hasattr(m, "reset_cache") else None
    with torch.no_grad():
        want = m(*args)
    assert torch.allclose(got, want, rtol=0, atol=1e-5), (got - want).abs().max()
    with pytest.raises(ValueError, match="fp32 scales"):
        mm.export_pte(m, args, tmp_path / "portable.pte", delegate=False, whole_model=False)


def test_qat_with_fp16_scales_is_exact_end_to_end(tmp_path):
    """MoE experts by prepare_qat and the dense linears by torchao's 8da4w QAT, both with fp16
    scales, a few SGD steps, then quantize_moe + export: the .pte's prefill logits equal the
    fake-quantized eager model's within 1e-5 (test_qat.py says why that bound) and the scales
    stay fp16 (no second rounding)."""
    from executorch.runtime import Runtime
    from torchao.quantization.qat import Int8DynActInt4WeightQATQuantizer

    import mobilemoe_export as mm
    from test_qat import REL, _rel, _sgd_steps, _tiny_lm

    model = _tiny_lm()
    mm.prepare_qat(model, group_size=32, scales_dtype="fp16")
    Int8DynActInt4WeightQATQuantizer(groupsize=32, scales_precision=torch.float16).prepare(model)
    _sgd_steps(model)
    prompt = torch.tensor([[5, 17, 42, 8, 99, 3, 250, 61]])
    with torch.no_grad():
        want = model(prompt, torch.arange(8))
    mm.quantize_moe(model, group_size=32, dense_linears=True, strict_linears=True)
    scales = {n: b.dtype for n, b in model.named_buffers() if n.endswith("scales") and b is not None}
    assert scales and set(scales.values()) == {torch.float16}, scales
    path = mm.export_pte(model, model.example_inputs(8), tmp_path / "lm.pte", whole_model=False)
    mm.load_runtime()
    got = Runtime.get().load_program(str(path)).load_method("forward").execute([prompt, torch.arange(8)])[0]
    assert _rel(got, want) < REL
