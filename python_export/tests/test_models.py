"""mobilemoe_export.models: presets / parameter counts, KV cache, export with mutable buffers.

S/M/L are never instantiated for real here (meta device / counting only)."""

from __future__ import annotations

import json

import pytest
import torch

from mobilemoe_export import models
from mobilemoe_export.models import build_model, count_params, dense_baseline, get_config, int4_weight_bytes

PAPER = {"S": (0.3e9, 1.3e9), "M": (0.5e9, 2.8e9), "L": (0.9e9, 5.3e9)}


@pytest.mark.parametrize("name", ["S", "M", "L"])
def test_preset_param_counts_match_paper(name):
    cfg = get_config(name)
    c = count_params(cfg)
    active, total = PAPER[name]
    assert abs(c["active"] / active - 1) < 0.10, (name, c["active"])
    assert abs(c["total"] / total - 1) < 0.10, (name, c["total"])
    assert c["active"] < c["total"]
    # fine-grained experts + shared expert, group-size friendly shapes
    assert cfg.ffn == "moe" and cfg.shared_hidden_dim > 0 and cfg.num_experts >= 32
    for g in (32, 64, 128):
        assert cfg.dim % g == 0 and cfg.expert_hidden_dim % g == 0


@pytest.mark.parametrize("name", ["tiny", "S", "M", "L"])
def test_count_params_equals_module_on_meta(name):
    cfg = get_config(name)
    m = build_model(cfg, device="meta")
    assert models.count_module_params(m) == count_params(cfg)["total"]
    assert all(p.device.type == "meta" for p in m.parameters())


def test_dense_baseline_same_int4_bytes_and_attention():
    for name in ("S", "M", "L"):
        cfg = get_config(name)
        d = dense_baseline(cfg)
        assert d.ffn == "dense" and d.dim == cfg.dim and d.n_layers == cfg.n_layers
        assert (d.n_heads, d.n_kv_heads, d.vocab_size) == (cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size)
        moe_b, dense_b = int4_weight_bytes(cfg), int4_weight_bytes(d)
        assert abs(dense_b / moe_b - 1) < 0.02, (name, moe_b, dense_b)
        assert count_params(d)["attention"] == count_params(cfg)["attention"]
        da = dense_baseline(cfg, match="active")
        assert abs(int4_weight_bytes(da) / (moe_b * (cfg.top_k * cfg.expert_hidden_dim + cfg.shared_hidden_dim)
                                            / (cfg.num_experts * cfg.expert_hidden_dim + cfg.shared_hidden_dim)) - 1) < 0.05
        # dense total = dense active; MoE active is much smaller than its total
        cd = count_params(d)
        assert cd["total"] == cd["active"]


def test_tiny_vocab_matches_shipped_tokenizer():
    tok = json.loads(models.DEFAULT_TOKENIZER.read_text())
    vocab = len(tok["model"]["vocab"])
    assert get_config("tiny").vocab_size == vocab == 1024


def test_tiny_forward_shapes_and_seed():
    m = build_model(get_config("tiny", max_seq_len=32), seed=3)
    toks, pos = m.example_inputs(5)
    out = m(toks, pos)
    assert out.shape == (1, 1024)
    m2 = build_model(get_config("tiny", max_seq_len=32), seed=3)
    m2.reset_cache()
    assert torch.equal(m2(toks, pos), out)
    m3 = build_model(get_config("tiny", max_seq_len=32), seed=4)
    assert not torch.equal(m3(toks, pos), out)
    mall = build_model(get_config("tiny", max_seq_len=32), seed=3, all_logits=True)
    full = mall(toks, pos)
    assert full.shape == (1, 5, 1024)
    torch.testing.assert_close(full[:, -1], out)


def _incremental_vs_full(forward, reset, toks, prefill):
    """Logits of prefill + one-token decode steps vs a full recompute of every prefix."""
    n = toks.shape[1]
    reset()
    inc = [forward(toks[:, :prefill], torch.arange(prefill))]
    for i in range(prefill, n):
        inc.append(forward(toks[:, i:i + 1], torch.tensor([i])))
    full = []
    for j in range(prefill, n + 1):
        reset()
        full.append(forward(toks[:, :j], torch.arange(j)))
    return inc, full


def test_kv_cache_eager_equals_full_recompute():
    m = build_model(get_config("tiny", max_seq_len=32), seed=1)
    toks = torch.randint(0, 1024, (1, 14), generator=torch.Generator().manual_seed(0))
    inc, full = _incremental_vs_full(m, m.reset_cache, toks, prefill=5)
    for a, b in zip(inc, full):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    # no reset needed between generations: stale cache slots are masked / overwritten
    m.reset_cache()
    m(torch.randint(0, 1024, (1, 20)), torch.arange(20))
    torch.testing.assert_close(m(toks[:, :5], torch.arange(5)), full[0], atol=2e-5, rtol=1e-5)


def test_moe_ffn_is_mobilemoe_block():
    from mobilemoe_export.moe_block import MoEFeedForward

    m = build_model(get_config("tiny", max_seq_len=16))
    ffs = [l.feed_forward for l in m.layers]
    assert all(isinstance(f, MoEFeedForward) for f in ffs)
    assert ffs[0].shared_expert is not None and ffs[0].top_k == 2 and ffs[0].experts_w1.shape == (8, 64, 128)


def test_export_kv_cache_is_mutable_buffer_and_matches_eager(tmp_path):
    """fp32 tiny model (no custom ops): torch.export -> to_edge -> to_executorch keeps the KV caches
    as mutable buffers; prefill + decode on the .pte equals eager full recompute; dynamic tokens."""
    from executorch.exir import to_edge
    from executorch.runtime import Runtime

    m = build_model(get_config("tiny", n_layers=1, max_seq_len=24), seed=2)
    ep = torch.export.export(m, m.example_inputs(4), dynamic_shapes=m.dynamic_shapes(), strict=False)
    edge = to_edge(ep)  # functionalized: the in-place cache updates become buffer mutations
    mutated = set(edge.exported_program().graph_signature.buffers_to_mutate.values())
    assert {"layers.0.attention.k_cache", "layers.0.attention.v_cache"} <= mutated
    et = edge.to_executorch()
    path = tmp_path / "tiny_fp32.pte"
    path.write_bytes(et.buffer)

    method = Runtime.get().load_program(str(path)).load_method("forward")
    fwd = lambda t, p: method.execute([t, p])[0]  # noqa: E731
    toks = torch.randint(0, 1024, (1, 12), generator=torch.Generator().manual_seed(5))
    inc_pte, full_pte = _incremental_vs_full(fwd, lambda: None, toks, prefill=4)
    m.reset_cache()
    _, full_eager = _incremental_vs_full(m, m.reset_cache, toks, prefill=4)
    for a, b, c in zip(inc_pte, full_pte, full_eager):
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b, c, atol=1e-4, rtol=1e-4)


def test_checkpoint_roundtrip(tmp_path):
    m = build_model(get_config("tiny", max_seq_len=16, tie_embeddings=True), seed=7)
    p = tmp_path / "m.ckpt"
    models.save_checkpoint(m, p)
    m2 = models.load_checkpoint(p, max_seq_len=16)
    assert m2.output.weight is m2.tok_embeddings.weight
    t, pos = m.example_inputs(3)
    m.reset_cache()
    torch.testing.assert_close(m2(t, pos), m(t, pos))


def test_config_validation():
    with pytest.raises(ValueError):
        get_config("tiny", n_kv_heads=3)
    with pytest.raises(KeyError):
        get_config("XL")
    with pytest.raises(ValueError):
        dense_baseline(dense_baseline(get_config("S")))
