"""End to end on the tiny preset: CLI export (delegated and custom-op), greedy parity eager
(quantized) vs .pte, KV cache vs full recompute on the .pte, generate CLI, prompt-too-long errors,
sampling / RNG (shared with the Rust generator)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilemoe_export import cli
from mobilemoe_export.operators import _lib
from mobilemoe_export import generate as gen
from mobilemoe_export.models import build_model, get_config

LIB = _lib.lib_available()
needs_lib = pytest.mark.skipif(not LIB, reason="libmobilemoe_executorch.so not built (run `make build`)")

MAXLEN = 64
N_NEW = 32
PROMPT = "Once upon a time there was a small lighthouse"


@pytest.fixture(scope="module")
def tok():
    return gen.load_tokenizer()


@pytest.fixture(scope="module")
def qmodel():
    """What the CLI builds for --preset tiny --seed 0, quantized, in eager mode."""
    m = build_model(get_config("tiny", max_seq_len=MAXLEN), seed=0)
    args = cli.build_parser().parse_args(["--preset", "tiny"])
    return cli.quantize(m, m.cfg, args)


def _export(tmp_path_factory, *extra):
    d = tmp_path_factory.mktemp("pte")
    out = d / "tiny.pte"
    rc = cli.main(["--preset", "tiny", "--seed", "0", "--max-seq-len", str(MAXLEN), "--out", str(out),
                   "--no-progress", *extra])
    assert rc == 0 and out.exists()
    return out


@pytest.fixture(scope="module")
def pte_delegated(tmp_path_factory):
    if not LIB:
        pytest.skip("needs the runtime library")
    return _export(tmp_path_factory)


@pytest.fixture(scope="module")
def qdecoder(qmodel):
    """What the CLI exports by default: the quantized model lowered to the whole-decoder ops."""
    import copy

    args = cli.build_parser().parse_args(["--preset", "tiny"])
    return cli.lower_like_export(copy.deepcopy(qmodel), args)


@pytest.fixture(scope="module")
def pte_per_op(tmp_path_factory):
    if not LIB:
        pytest.skip("needs the runtime library")
    return _export(tmp_path_factory, "--per-op")


@pytest.fixture(scope="module")
def pte_custom_op(tmp_path_factory):
    if not LIB:
        pytest.skip("needs the runtime library")
    return _export(tmp_path_factory, "--no-delegate")


def _greedy(forward, ids, n=N_NEW):
    return gen.generate_tokens(forward, ids, n, MAXLEN, keep_logits=True)


def _check_parity(qmodel, pte_path, tok):
    ids = tok.encode(PROMPT).ids
    qmodel.reset_cache()
    with torch.no_grad():
        eager = _greedy(qmodel, ids)
    pte = gen.PteModel(pte_path)
    assert (pte.max_seq_len, pte.vocab_size) == (MAXLEN, 1024)
    got = _greedy(pte, ids)
    assert got.tokens == eager.tokens
    assert len(got.tokens) == N_NEW
    for a, b in zip(got.logits, eager.logits):
        np.testing.assert_allclose(a, b, atol=2e-3, rtol=1e-3)
    return pte


@needs_lib
def test_cli_summary_delegated(pte_delegated):
    s = json.loads((pte_delegated.parent / "tiny.pte.json").read_text())
    # the whole forward in one delegate call, nothing on portable kernels
    assert s["delegated"] and s["delegate_calls"] == 1 and s["kernel_calls"] == 0
    assert "MobileMoEBackend" in s["backends"]
    assert s["quantized_linears"]
    assert s["params_total"] > s["params_active_per_token"] > 0
    assert s["quantized_weight_bytes"] > 0 and s["pte_bytes"] > s["quantized_weight_bytes"]
    assert (s["max_seq_len"], s["vocab_size"]) == (MAXLEN, 1024)


@needs_lib
def test_greedy_parity_eager_vs_pte_delegated(qdecoder, pte_delegated, tok):
    _check_parity(qdecoder, pte_delegated, tok)


@needs_lib
def test_greedy_parity_eager_vs_pte_per_op_delegates(qmodel, pte_per_op, tok):
    s = json.loads((pte_per_op.parent / "tiny.pte.json").read_text())
    assert s["delegated"] and s["delegate_calls"] == 2 + 2 * 4 + 1 and s["kernel_calls"] > 0
    _check_parity(qmodel, pte_per_op, tok)


@needs_lib
def test_greedy_parity_eager_vs_pte_custom_op(pte_custom_op, tok):
    s = json.loads((pte_custom_op.parent / "tiny.pte.json").read_text())
    # 2 moe_ffn + per layer 4 attention projections + the LM head
    assert not s["delegated"] and s["delegate_calls"] == 0 and s["custom_op_calls"] == 2 + 2 * 4 + 1
    # --no-delegate quantizes with fp32 scales (the portable kernels' type): its own eager twin
    m = build_model(get_config("tiny", max_seq_len=MAXLEN), seed=0)
    args = cli.build_parser().parse_args(["--preset", "tiny", "--no-delegate"])
    _check_parity(cli.quantize(m, m.cfg, args), pte_custom_op, tok)


def _incremental_vs_full(forward, reset, toks, prefill):
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


def test_kv_cache_eager_quantized_equals_full_recompute(qmodel):
    toks = torch.randint(0, 1024, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        inc, full = _incremental_vs_full(qmodel, qmodel.reset_cache, toks, prefill=6)
    for a, b in zip(inc, full):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


@needs_lib
def test_kv_cache_pte_equals_full_recompute(pte_delegated):
    pte = gen.PteModel(pte_delegated)
    toks = torch.randint(0, 1024, (1, 16), generator=torch.Generator().manual_seed(2))
    inc, full = _incremental_vs_full(pte, lambda: None, toks, prefill=6)
    for a, b in zip(inc, full):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
        assert int(a.argmax()) == int(b.argmax())


@needs_lib
def test_generate_cli_streams_and_reports(pte_delegated, capsys):
    rc = gen.main([str(pte_delegated), "--prompt", PROMPT, "--max-new-tokens", "8", "--no-eos"])
    assert rc == 0
    cap = capsys.readouterr()
    assert cap.out.startswith(PROMPT)
    for key in ("TTFT:", "prefill:", "decode:", "tok/s", "peak RSS:", "generated tokens: 8"):
        assert key in cap.err
    # sampling is seeded: same seed, same text
    outs = []
    for _ in range(2):
        assert gen.main([str(pte_delegated), "--prompt", "Hello", "--max-new-tokens", "6", "--temperature", "0.9",
                         "--top-p", "0.9", "--seed", "5"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


@needs_lib
def test_generate_cli_prompt_too_long(pte_delegated, capsys):
    rc = gen.main([str(pte_delegated), "--prompt", "word " * 200, "--max-new-tokens", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "max_seq_len is 64" in err and "prompt is" in err


def test_prompt_too_long_error_without_running_the_model():
    calls = []
    with pytest.raises(gen.PromptTooLongError, match="max_seq_len is 8"):
        gen.generate_tokens(lambda t, p: calls.append(1), list(range(9)), 4, 8)
    assert not calls
    with pytest.raises(ValueError, match="empty prompt"):
        gen.generate_tokens(lambda t, p: None, [], 4, 8)


def test_generation_stops_at_max_seq_len(qmodel):
    qmodel.reset_cache()
    with torch.no_grad():
        res = gen.generate_tokens(qmodel, list(range(1, 61)), 10, MAXLEN)
    assert res.stats.stopped == "max_seq_len" and len(res.tokens) == 5  # 1 from prefill + 4 decoded


def test_rng_and_sampling_match_rust_reference():
    # the same constants are asserted in runner/src/generate.rs
    r = gen.Rng(0)
    assert [r.next_u64() for _ in range(3)] == [8916199331640804048, 16032783972208265725, 12954103179475586193]
    assert gen.Rng(42).next_f64() == 0.1941059175341826
    logits = (np.sin(np.arange(50) * 1.3) * 3).astype(np.float32)
    r = gen.Rng(7)
    assert [gen.sample(logits, 0.8, 0.9, r) for _ in range(12)] == [35, 11, 40, 1, 45, 16, 30, 16, 45, 40, 11, 6]
    r = gen.Rng(7)
    assert [gen.sample(logits, 1.5, 1.0, r) for _ in range(12)] == [6, 30, 1, 21, 20, 49, 16, 20, 44, 16, 30, 40]
    assert gen.sample(np.array([1.0, 3.0, 3.0]), 0.0) == 1  # greedy: first maximum
    assert gen.sample(np.array([1.0, 3.0, 3.0]), 1.0, 1e-9, gen.Rng(0)) == 1


def test_stream_printer_equals_full_decode(tok):
    import io

    text = "naïve café 🚀 lighthouse"
    ids = tok.encode(text).ids
    buf = io.StringIO()
    p = gen.StreamPrinter(tok, out=buf)
    for i in ids:
        p(i)
        assert "\ufffd" not in buf.getvalue()
    p.finish()
    assert buf.getvalue() == text + "\n"


def test_cli_help_and_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    assert "--preset" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exactly one"):
        cli.main(["--out", "x.pte"])
    with pytest.raises(SystemExit, match="needs --preset"):
        cli.main(["--checkpoint", "c.pt", "--dense-baseline", "total"])


def test_cli_dense_baseline_quantizes_only_ffn():
    from mobilemoe_export.quantization.transforms import MobileMoELinear

    args = cli.build_parser().parse_args(["--preset", "tiny", "--dense-baseline", "total", "--max-seq-len", "16",
                                          "--fp32-linears"])
    model, cfg, ex, ds = cli.build_from_args(args)
    assert cfg.ffn == "dense" and cfg.dense_hidden_dim == 640
    cli.quantize(model, cfg, args)
    assert isinstance(model.layers[0].feed_forward.w1, MobileMoELinear)
    assert isinstance(model.layers[0].attention.wq, torch.nn.Linear)
    with torch.no_grad():
        assert model(*ex).shape == (1, 1024)
    # default: every linear (attention, LM head) quantized too
    args = cli.build_parser().parse_args(["--preset", "tiny", "--dense-baseline", "total", "--max-seq-len", "16"])
    model, cfg, ex, ds = cli.build_from_args(args)
    cli.quantize(model, cfg, args)
    assert isinstance(model.layers[0].attention.wq, MobileMoELinear) and isinstance(model.output, MobileMoELinear)
    with torch.no_grad():
        assert model(*ex).shape == (1, 1024)


def test_cli_module_file_and_checkpoint(tmp_path):
    from mobilemoe_export import models

    f = tmp_path / "my_model.py"
    f.write_text(
        "from mobilemoe_export.models import build_model as _b, get_config\n"
        "def build_model(max_seq_len=32):\n"
        "    return _b(get_config('tiny', n_layers=1, max_seq_len=max_seq_len), seed=9)\n"
    )
    args = cli.build_parser().parse_args(["--module-file", str(f), "--max-seq-len", "24"])
    model, cfg, ex, ds = cli.build_from_args(args)
    assert cfg.max_seq_len == 24 and cfg.n_layers == 1 and ex[0].shape[0] == 1 and ds is not None
    # a state dict for the module file's model
    ref = models.build_model(get_config("tiny", n_layers=1, max_seq_len=24), seed=11)
    torch.save(ref.state_dict(), tmp_path / "sd.pt")
    args = cli.build_parser().parse_args(["--module-file", str(f), "--max-seq-len", "24", "--checkpoint",
                                          str(tmp_path / "sd.pt")])
    model, *_ = cli.build_from_args(args)
    assert torch.equal(model.tok_embeddings.weight, ref.tok_embeddings.weight)
    # models.save_checkpoint format alone
    models.save_checkpoint(ref, tmp_path / "m.ckpt")
    args = cli.build_parser().parse_args(["--checkpoint", str(tmp_path / "m.ckpt")])
    model, cfg, *_ = cli.build_from_args(args)
    assert cfg.n_layers == 1 and torch.equal(model.output.weight, ref.output.weight)
    counts = cli.module_param_counts(ref)
    assert counts == {k: models.count_params(ref.cfg)[k] for k in ("total", "active")}
