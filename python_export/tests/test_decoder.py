"""The whole decoder in one MobileMoEBackend delegate (mobilemoe_export.lowering.decoder): the .pte equals
eager PyTorch calling the same Rust ops bit for bit over prefill + 64 greedy decode steps, for MoE
and dense models, fp16 and fp32 KV caches, both RoPE conventions and sliding-window (local)
attention; and the lowered ops compute what the original PyTorch model computes with the same
(dequantized) weights."""

import copy

import pytest
import torch

from conftest import needs_lib

pytestmark = needs_lib


def _tiny(**over):
    from mobilemoe_export import models

    cfg = models.get_config("tiny", **over)
    return models.build_model(cfg, seed=3)


def _runtime(path):
    import mobilemoe_export as mm
    from executorch.runtime import Runtime

    mm.load_runtime()
    return Runtime.get().load_program(str(path)).load_method("forward")


def _greedy_parity(dec, path, steps=64, prompt_len=7):
    meth = _runtime(path)
    dec.reset_cache()
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, dec.vocab_size, (1, prompt_len), generator=g)
    pos = torch.arange(prompt_len)
    a = dec(toks, pos)
    b = meth.execute([toks, pos])[0]
    assert torch.equal(a, b), f"prefill logits differ by {(a - b).abs().max()}"
    ids_e, ids_p = [], []
    ne, np_ = int(a.argmax()), int(b.argmax())
    for i in range(steps):
        p = torch.tensor([prompt_len + i])
        a = dec(torch.tensor([[ne]]), p)
        b = meth.execute([torch.tensor([[np_]]), p])[0]
        ids_e.append(ne)
        ids_p.append(np_)
        assert torch.equal(a, b), f"step {i}: logits differ by {(a - b).abs().max()}"
        ne, np_ = int(a.argmax()), int(b.argmax())
    assert ids_e == ids_p
    return ids_e


@pytest.mark.parametrize("kv", ["fp16", "fp32"])
def test_moe_decoder_pte_equals_eager_over_64_steps(tmp_path, kv):
    import mobilemoe_export as mm
    from mobilemoe_export.lowering import decoder
    from mobilemoe_export.cli import pte_summary

    m = _tiny()
    mm.quantize_moe(m, dense_linears=True)
    dec = decoder.lower_decoder(m, kv_cache=kv)
    path = tmp_path / f"moe_{kv}.pte"
    mm.export_pte(dec, dec.example_inputs(4), path)
    s = pte_summary(path)
    assert s["delegate_calls"] == 1 and s["kernel_calls"] == 0, s  # the whole forward, one call
    ids = _greedy_parity(dec, path)
    assert len(set(ids)) > 1


def test_dense_decoder_and_interleaved_rope(tmp_path):
    import mobilemoe_export as mm
    from mobilemoe_export import models
    from mobilemoe_export.lowering import decoder

    cfg = models.dense_baseline(models.get_config("tiny"), match="active")
    m = models.build_model(cfg, seed=4)
    dec = decoder.lower_decoder(m, rope_style="interleaved", kv_cache="fp32")
    path = tmp_path / "dense.pte"
    mm.export_pte(dec, dec.example_inputs(3), path)
    _greedy_parity(dec, path, steps=16)


def test_export_pte_lowers_a_transformer_by_default(tmp_path):
    import mobilemoe_export as mm
    from mobilemoe_export.cli import pte_summary

    m = _tiny()
    path = tmp_path / "auto.pte"
    mm.export_pte(m, m.example_inputs(4), path)
    assert pte_summary(path)["delegate_calls"] == 1
    path2 = tmp_path / "per_op.pte"
    m2 = _tiny()
    mm.quantize_moe(m2, dense_linears=True)
    mm.export_pte(m2, m2.example_inputs(4), path2, whole_model=False)
    s = pte_summary(path2)
    assert s["delegate_calls"] > 2 and s["kernel_calls"] > 0  # one delegate per MoE/linear op + portable ops


def _fake_quantize_(lin, g=32):
    from mobilemoe_export.quantization import quant

    q, s = quant.quantize_per_group(lin.weight.detach(), g, 4)
    with torch.no_grad():
        lin.weight.copy_(quant.dequantize(q, s, g))


def test_lowered_ops_compute_the_pytorch_model():
    """exact=True (fp32 activations) and an fp32 cache: the lowered decoder equals the original
    PyTorch Transformer whose weights are replaced by their dequantized INT4 values, to fp32
    rounding — an independent check of attention, RoPE, the cache, norms, embedding and head."""
    from mobilemoe_export import models
    from mobilemoe_export.lowering import decoder

    cfg = models.dense_baseline(models.get_config("tiny", tie_embeddings=True), match="active")
    ref = models.build_model(cfg, seed=5)
    dec = decoder.lower_decoder(copy.deepcopy(ref), kv_cache="fp32", exact=True)
    for mod in ref.modules():
        if isinstance(mod, torch.nn.Linear):
            _fake_quantize_(mod)  # the tied embedding is the LM head's weight
    ref.reset_cache()
    dec.reset_cache()
    toks = torch.randint(0, cfg.vocab_size, (1, 9))
    chunks = [(0, 6), (6, 7), (7, 8), (8, 9)]
    for a, b in chunks:
        pos = torch.arange(a, b)
        want = ref(toks[:, a:b], pos)
        got = dec(toks[:, a:b], pos)
        err = ((got - want).norm() / want.norm()).item()
        assert err < 1e-5, f"positions {a}..{b}: relative error {err}"


def test_bad_positions_and_tokens_are_clear_errors():
    import mobilemoe_export as mm
    from mobilemoe_export.lowering import decoder

    m = _tiny(max_seq_len=16)
    mm.quantize_moe(m, dense_linears=True)
    dec = decoder.lower_decoder(m)
    with pytest.raises(RuntimeError, match="outside the KV cache"):
        dec(torch.tensor([[1]]), torch.tensor([16]))
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        dec(torch.tensor([[5000]]), torch.tensor([0]))


def _et_llama(**over):
    from executorch.examples.models.llama.llama_transformer import construct_transformer
    from executorch.examples.models.llama.model_args import ModelArgs

    kw = dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, hidden_dim=256, max_seq_len=96,
              max_context_len=96, use_kv_cache=True, moe=True, num_experts=8, num_activated_experts=2,
              moe_hidden_dim=64, moe_shared_expert_hidden_dim=64, moe_score_func="softmax", norm_eps=1e-5)
    kw.update(over)
    torch.manual_seed(7)
    m = construct_transformer(ModelArgs(**kw)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.dim() >= 2:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return m


@pytest.mark.parametrize("hf_rope", [False, True])
def test_executorch_llama_moe_transformer(tmp_path, hf_rope):
    """ExecuTorch's own llama Transformer with MOEFeedForward layers: lowered (exact path, fp32
    cache) it equals the ExecuTorch model on the same dequantized weights; its .pte equals the
    eager lowered decoder bit for bit over 64 greedy steps (Q8 path, fp16 cache)."""
    import mobilemoe_export as mm
    from mobilemoe_export.lowering import decoder
    from mobilemoe_export.quantization import quant

    ref = _et_llama(use_hf_rope=hf_rope)
    dec = decoder.lower_decoder(copy.deepcopy(ref), kv_cache="fp32", exact=True)
    # the reference on the decoder's (dequantized) weights
    with torch.no_grad():
        for mod in ref.modules():
            if (isinstance(mod, torch.nn.Linear) and mod.weight.shape[0] != 8) or isinstance(mod, torch.nn.Embedding):
                _fake_quantize_(mod)  # every linear but the router, and the (untied) embedding table
            if type(mod).__name__ == "ConditionalFeedForward":
                for w in (mod.w1, mod.w3):
                    for e in range(w.shape[0]):
                        q, s = quant.quantize_per_group(w[e], 32, 4)
                        w[e].copy_(quant.dequantize(q, s, 32))
                for e in range(mod.w2.shape[0]):  # w2 is stored [E, F, D]; the kernel's matrix is [D, F]
                    q, s = quant.quantize_per_group(mod.w2[e].t().contiguous(), 32, 4)
                    mod.w2[e].copy_(quant.dequantize(q, s, 32).t())
    toks = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(3))
    dec.reset_cache()
    for a, b in [(0, 7), (7, 8), (8, 9), (9, 10)]:
        with torch.no_grad():
            want = ref(toks[:, a:b], {"input_pos": torch.arange(a, b)})
        want = want[0] if isinstance(want, tuple) else want
        got = dec(toks[:, a:b], torch.arange(a, b))
        err = ((got - want.reshape(got.shape)).norm() / want.norm()).item()
        assert err < 1e-5, f"positions {a}..{b}: relative error {err}"

    fast = decoder.lower_decoder(_et_llama(use_hf_rope=hf_rope))
    path = tmp_path / "et_llama.pte"
    mm.export_pte(fast, fast.example_inputs(4), path)
    _greedy_parity(fast, path, steps=64)


def test_executorch_llama_unsupported_features_are_named():
    from mobilemoe_export.lowering import decoder
    from mobilemoe_export.quantization.transforms import UnsupportedModuleError

    with pytest.raises(UnsupportedModuleError, match="use_qk_norm"):
        decoder.lower_decoder(_et_llama(use_qk_norm=True))


@pytest.mark.parametrize("preset", ["S", "M", "L", "mobilellm-pro"])
def test_preset_geometries_pte_equals_eager(tmp_path, preset):
    """Every preset's attention/FFN geometry (S: 12 heads / 4 KV heads, M: 16 / 4, L: 20 / 4 — 5 query
    heads per KV head, the generic attention path —, all with QK-norm, interleaved llama3 RoPE and
    sigmoid routing with an expert bias; mobilellm-pro: 20 / 4 and a dense 6144 FFN, a global then a
    local layer), one or two layers, a small vocabulary, fewer experts for M/L and a 16-token window
    for mobilellm-pro to keep the test fast: .pte == eager bit for bit over 16 greedy steps."""
    import mobilemoe_export as mm
    from mobilemoe_export import models
    from mobilemoe_export.lowering import decoder

    over = dict(n_layers=1, vocab_size=1024, max_seq_len=128)
    if preset in ("M", "L"):
        over["num_experts"] = 8
    if preset == "mobilellm-pro":
        over.update(n_layers=2, sliding_window=16)  # layer 0 global, layer 1 local
    m = models.build_model(models.get_config(preset, **over), seed=1)
    dec = decoder.lower_decoder(m)
    if preset == "mobilellm-pro":
        assert [layer.attention.window for layer in dec.layers] == [0, 16]
    path = tmp_path / f"{preset}.pte"
    mm.export_pte(dec, dec.example_inputs(4), path)
    _greedy_parity(dec, path, steps=16)


def _local_global_cfg(**over):
    """A tiny dense model with sliding-window attention: 4 layers, window 8, global layers 0 and 3."""
    from mobilemoe_export import models

    kw = dict(n_layers=4, sliding_window=8, global_layers=[0, 3], max_seq_len=64, tie_embeddings=True,
              rope_style="interleaved")
    kw.update(over)
    return models.dense_baseline(models.get_config("tiny", **kw), match="active")


def test_sliding_window_lowered_ops_compute_the_pytorch_model():
    """exact=True and an fp32 cache: the lowered decoder with local layers (ring KV caches of window +
    32 = 40 slots) equals the PyTorch Transformer (which masks keys_pos <= query_pos - window in a
    full-size cache) on the same dequantized weights over a 40-token prefill, decode steps past the
    ring's length and a multi-token chunk; and the window changes the result."""
    from mobilemoe_export import models
    from mobilemoe_export.lowering import decoder
    from mobilemoe_export.operators import decoder_ops

    cfg = _local_global_cfg()
    ref = models.build_model(cfg, seed=5)
    dec = decoder.lower_decoder(copy.deepcopy(ref), kv_cache="fp32", exact=True)
    assert [layer.attention.window for layer in dec.layers] == [0, 8, 8, 0]
    rows = [decoder_ops.KV_CACHES[layer.attention.cache_id][0].shape[1] for layer in dec.layers]
    assert rows == [64, 40, 40, 64] == [decoder_ops.cache_rows(64, w) for w in (0, 8, 8, 0)]
    glob = models.build_model(cfg.replace(sliding_window=0), seed=5)  # the same weights, global attention
    for r in (ref, glob):
        for mod in r.modules():
            if isinstance(mod, torch.nn.Linear):
                _fake_quantize_(mod)
        r.reset_cache()
    dec.reset_cache()
    toks = torch.randint(0, cfg.vocab_size, (1, 60), generator=torch.Generator().manual_seed(2))
    chunks = [(0, 40)] + [(i, i + 1) for i in range(40, 52)] + [(52, 57), (57, 58)]
    for a, b in chunks:
        pos = torch.arange(a, b)
        want = ref(toks[:, a:b], pos)
        got = dec(toks[:, a:b], pos)
        err = ((got - want).norm() / want.norm()).item()
        assert err < 1e-5, f"positions {a}..{b}: relative error {err}"
        other = glob(toks[:, a:b], pos)
        assert ((other - want).norm() / want.norm()).item() > 1e-3, f"positions {a}..{b}: the window changed nothing"
    # a copy has its own ring caches of the same size
    dup = copy.deepcopy(dec)
    assert [decoder_ops.KV_CACHES[layer.attention.cache_id][0].shape[1] for layer in dup.layers] == rows
    assert dup.layers[1].attention.cache_id != dec.layers[1].attention.cache_id


def test_sliding_window_pte_equals_eager(tmp_path):
    """The exported .pte (Q8 path, fp16 ring caches) equals the eager lowered decoder bit for bit over
    a 48-token prefill (longer than window + 32 = 40: the ring wraps inside the prefill) and 15
    greedy decode steps (to position 63 of 64)."""
    import mobilemoe_export as mm
    from mobilemoe_export import models
    from mobilemoe_export.lowering import decoder

    m = models.build_model(_local_global_cfg(tie_embeddings=False), seed=6)  # (a tied head repeats its input)
    dec = decoder.lower_decoder(m)
    path = tmp_path / "local_global.pte"
    mm.export_pte(dec, dec.example_inputs(4), path)
    ids = _greedy_parity(dec, path, steps=15, prompt_len=48)
    assert len(set(ids)) > 1
