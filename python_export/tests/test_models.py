"""mobilemoe_export.models: presets (as published) / parameter counts, KV cache, sliding-window
attention, export with mutable buffers.

S/M/L and mobilellm-pro are never instantiated for real here (meta device / counting only)."""

from __future__ import annotations

import json

import pytest
import torch

from mobilemoe_export import models
from mobilemoe_export.models import build_model, count_params, dense_baseline, get_config, int4_weight_bytes

# docs/mobilemoe_format.md: (total, active per token) parameters of the published models
# (M's dimensions are inferred there: the only shape that gives its published counts)
SPEC = {"S": (1.263e9, 272.5e6), "M": (2.818e9, 528e6), "L": (5.326e9, 922e6)}
MOBILELLM_PRO_PARAMS = 1_084_453_120  # (spec: checks against a published count)


@pytest.mark.parametrize("name", ["S", "M", "L"])
def test_preset_param_counts_match_the_spec(name):
    cfg = get_config(name)
    c = count_params(cfg)
    total, active = SPEC[name]
    assert abs(c["total"] / total - 1) < 0.01, (name, c["total"])
    assert abs(c["active"] / active - 1) < 0.01, (name, c["active"])
    # the MobileMoE pattern: 60 routed experts, top-4, ungated shared expert of 2 D, GQA 4 x 64,
    # Llama 3's vocabulary tied, sigmoid routing with a selection bias, route scale 2.5
    assert (cfg.ffn, cfg.num_experts, cfg.top_k, cfg.n_kv_heads, cfg.head_dim) == ("moe", 60, 4, 4, 64)
    assert (cfg.vocab_size, cfg.tie_embeddings, cfg.shared_hidden_dim, cfg.shared_gate) == (128256, True, 2 * cfg.dim,
                                                                                             False)
    assert (cfg.score_func, cfg.use_expert_bias, cfg.renormalize, cfg.route_scale) == ("sigmoid", True, True, 2.5)
    assert cfg.max_seq_len == 2048 and cfg.sliding_window == 0
    for g in (32, 64, 128):
        assert cfg.dim % g == 0 and cfg.expert_hidden_dim % g == 0


def test_presets_are_the_published_shapes():
    """S exactly as its config.json reads; L from its model card; M inferred (spec table)."""
    s = get_config("S")
    want = dict(vocab_size=128256, dim=768, n_layers=20, n_heads=12, n_kv_heads=4, head_dim=64, norm_eps=1e-5,
                rope_theta=500000.0, tie_embeddings=True, ffn="moe", num_experts=60, top_k=4, expert_hidden_dim=384,
                shared_hidden_dim=1536, shared_gate=False, score_func="sigmoid", renormalize=True, route_scale=2.5,
                use_expert_bias=True, rope_style="interleaved", qk_norm_eps=1e-5, renorm_eps=1e-20,
                rope_scaling={"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                              "original_max_position_embeddings": 8192})
    assert {k: getattr(s, k) for k in want} == want
    shapes = {n: (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.num_experts, c.expert_hidden_dim, c.shared_hidden_dim)
              for n, c in ((n, get_config(n)) for n in ("S", "M", "L"))}
    assert shapes == {"S": (20, 768, 12, 4, 60, 384, 1536), "M": (26, 1024, 16, 4, 60, 512, 2048),
                      "L": (32, 1280, 20, 4, 60, 640, 2560)}
    # the other forward fields of M and L are S's (not published for them: assumed)
    for n in ("M", "L"):
        c = get_config(n)
        assert {k: getattr(c, k) for k in want if k not in ("dim", "n_layers", "n_heads", "expert_hidden_dim",
                                                              "shared_hidden_dim")} == \
               {k: v for k, v in want.items() if k not in ("dim", "n_layers", "n_heads", "expert_hidden_dim",
                                                           "shared_hidden_dim")}
    # listings say that M is inferred
    assert "INFERRED" in models.preset_summary("M") and "inferred" in models.ModelConfig.__doc__.lower()


def test_mobilellm_pro_preset():
    cfg = get_config("mobilellm-pro")
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (30, 1280, 20, 4, 64)
    assert (cfg.ffn, cfg.dense_hidden_dim, cfg.vocab_size, cfg.tie_embeddings) == ("dense", 6144, 202048, True)
    c = count_params(cfg)
    assert c["total"] == c["active"] == MOBILELLM_PRO_PARAMS
    # local / global 3:1 with a 512-token window: global at 0, 4, ..., 28 and 29
    windows = models.layer_windows(cfg)
    assert [i for i, w in enumerate(windows) if w == 0] == [0, 4, 8, 12, 16, 20, 24, 28, 29]
    assert set(windows) == {0, 512}
    m = build_model(cfg, device="meta")
    assert [layer.attention.window for layer in m.layers] == windows
    assert models.count_module_params(m) == MOBILELLM_PRO_PARAMS
    # INT4 g32 FFN weights in the T16K4 layout (rows are multiples of 16: no padding): 4 bits + an
    # fp32 scale per 32 weights
    assert int4_weight_bytes(cfg) == 30 * 3 * 1280 * 6144 * (4 + 32 / 32) // 8
    with pytest.raises(ValueError, match="MoE"):
        dense_baseline(cfg)


def test_bytes_read_per_decode_token_match_the_spec():
    """Spec: at INT4 g32 with fp16 scales (4.5 bits per weight) a decode token reads about 153 MB of
    MobileMoE-S (its tied 128,256 x 768 LM head 55 MB of it) and 610 MB of MobileLLM-Pro."""
    per_weight = (4 + 16 / 32) / 8
    s, pro = count_params(get_config("S")), count_params(get_config("mobilellm-pro"))
    assert abs(s["active"] * per_weight / 153e6 - 1) < 0.01
    assert abs(s["embedding"] * per_weight / 55e6 - 1) < 0.01
    assert abs(pro["active"] * per_weight / 610e6 - 1) < 0.01


def test_llama3_rope_tables_up_to_8192_positions():
    """MobileMoE's RoPE (theta 500,000, llama3 scaling: factor 16, low = high = 1, original 8192) for
    any max_seq_len up to the 8192-token context: frequencies whose wavelength exceeds 8192 positions
    divided by 16, the others kept; a shorter cache holds a prefix of the same table."""
    cfg = get_config("S", max_seq_len=8192)
    cos, sin = models.rope_tables_of(cfg)
    assert cos.shape == sin.shape == (8192, 32)
    inv = 1.0 / 500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    long = 2 * torch.pi / inv > 8192
    assert 0 < int(long.sum()) < 32  # both kinds present
    inv = torch.where(long, inv / 16, inv)
    ang = torch.arange(8192, dtype=torch.float64)[:, None] * inv[None]
    torch.testing.assert_close(cos, ang.cos().float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, ang.sin().float(), atol=1e-6, rtol=0)
    c2, s2 = models.rope_tables_of(get_config("S"))
    assert torch.equal(c2, cos[:2048]) and torch.equal(s2, sin[:2048])
    assert build_model(cfg, device="meta").rope_cos.shape == (8192, 32)


@pytest.mark.parametrize("name", ["tiny", "S", "M", "L", "mobilellm-pro"])
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


def _windowed(**over):
    cfg = get_config("tiny", **{"max_seq_len": 32, "sliding_window": 4, **over})
    return build_model(cfg, seed=1)


def test_sliding_window_eager_equals_full_recompute():
    m = _windowed(global_layers=[1])
    assert [layer.attention.window for layer in m.layers] == [4, 0]
    toks = torch.randint(0, 1024, (1, 14), generator=torch.Generator().manual_seed(0))
    inc, full = _incremental_vs_full(m, m.reset_cache, toks, prefill=5)
    for a, b in zip(inc, full):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_sliding_window_sees_the_last_w_positions():
    """One local layer (window W): the last token's logits depend only on the last W tokens (its own
    included), at their positions; the window changes the result once the context exceeds it."""
    W, n = 4, 11
    m = _windowed(n_layers=1, sliding_window=W)
    toks = torch.randint(0, 1024, (1, n), generator=torch.Generator().manual_seed(1))
    m.reset_cache()
    full = m(toks, torch.arange(n))
    m.reset_cache()
    tail = m(toks[:, n - W:], torch.arange(n - W, n))
    torch.testing.assert_close(full, tail, atol=1e-5, rtol=1e-5)
    m.reset_cache()
    torch.testing.assert_close(m(toks[:, 2:], torch.arange(2, n)), full, atol=1e-5, rtol=1e-5)
    # the same weights, global attention: another result; a window covering the cache: the same bits
    g = build_model(get_config("tiny", max_seq_len=32, n_layers=1), seed=1)
    want = g(toks, torch.arange(n))
    assert (want - full).abs().max() > 1e-2
    wide = _windowed(n_layers=1, sliding_window=32)
    assert torch.equal(wide(toks, torch.arange(n)), want)


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
    with pytest.raises(ValueError, match="sliding_window"):
        get_config("tiny", sliding_window=-1)
    with pytest.raises(ValueError, match="global_layers"):
        get_config("tiny", sliding_window=8, global_layers=[-1])
    # a preset shortened with n_layers keeps its pattern for the layers it has
    assert [get_config("mobilellm-pro", n_layers=6).layer_window(i) for i in range(6)] == [0, 512, 512, 512, 0, 512]
    # get_config hands out copies
    get_config("S").rope_scaling["factor"] = 1
    assert get_config("S").rope_scaling["factor"] == 16
