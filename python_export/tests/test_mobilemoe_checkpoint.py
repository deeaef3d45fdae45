"""Meta's MobileMoE checkpoints (mobilemoe_export.sources.mobilemoe): tiny random checkpoints in the
published format (both releases) against an independent float64 reference forward
(tests/mobilemoe_reference.py, which reads the safetensors itself and imports nothing of
mobilemoe_export):

- pure PyTorch: every refused config field / tensor / file is named; the bf16 release loaded as an
  fp32 models.Transformer equals the reference over prefill + 4 decode steps; the QAT release's
  INT4 modules hold exactly the checkpoint's dequantized weights; nothing is written by the CLI for
  a refused checkpoint.
- END TO END (needs the Rust library with MobileMoE's QK-norm and output-grouped expert scales):
  the QAT release exported by ``python -m mobilemoe_export --hf DIR`` equals the reference on the
  exact path (1e-4 relative at every step), gives the same greedy tokens on the default path, and
  the Rust runner generates the same greedy ids.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import LIB, needs_lib
from mobilemoe_reference import MobileMoEReference, llama3_inv_freq as ref_inv_freq, nibbles, read_tensors

from mobilemoe_export import cli, models
from mobilemoe_export.quantization import quant
from mobilemoe_export.sources import mobilemoe_format as mf
from mobilemoe_export.sources.mobilemoe import MobileMoEFormatError, load_mobilemoe, read_mobilemoe_config

REPO = Path(__file__).resolve().parents[2]
PROMPT = [304, 39, 68, 283, 78, 262, 280]  # <|begin_of_text|>Hello world (the tiny tokenizer's ids)
DECODE_STEPS = 4


def _write(d: Path, fmt: str, seed: int = 1, cfg_edit=None, **kw) -> Path:
    cfg = mf.size_config("tiny", fmt)
    if cfg_edit:
        cfg_edit(cfg)
    return mf.write_mobilemoe_checkpoint(d, cfg, fmt, seed=seed, **kw)


@pytest.fixture(scope="module")
def qat_dir(tmp_path_factory):
    # seed 2: over PROMPT + 4 greedy steps the reference's top logit leads by >= 1.4 and no token has
    # two experts within 0.018 of the top-k boundary (the default-path parity test checks both)
    return _write(tmp_path_factory.mktemp("qat"), "qat", seed=2)


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("bf16"), "bf16")


@pytest.fixture(scope="module")
def qat_ref(qat_dir):
    return MobileMoEReference(qat_dir)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.reshape(-1).double(), want.reshape(-1).double()
    return float((got - want).norm() / want.norm())


def _steps(forward, ref: MobileMoEReference, prompt=PROMPT, steps=DECODE_STEPS):
    """Prefill ``prompt`` then ``steps`` one-token steps through ``forward(tokens, input_pos)``, fed the
    reference's greedy tokens: [(step, logits, reference logits)]."""
    out = []
    for i, (fed, want) in enumerate(ref.incremental(prompt, steps)):
        if i == 0:
            got = forward(torch.tensor([fed]), torch.arange(len(fed)))
        else:
            got = forward(torch.tensor([[fed[-1]]]), torch.tensor([len(fed) - 1]))
        out.append((i, got.reshape(-1), want))
    return out


# ------------------------------------------------------------------------------------------------
# the format itself


def test_s_inventory_is_the_published_file():
    """The tensor table for S adds up to the published MobileMoE-S-QAT file (713,916,240 bytes) less a
    safetensors header of plausible size; every config.json field of the spec is written."""
    cfg = mf.size_config("S", "qat")
    data = sum(math.prod(st.shape) * mf.ST_DTYPES[st.dtypes[0]].itemsize
               for _, _, _, sts in mf.inventory(cfg, "qat") for st in sts)
    header = 713_916_240 - data
    assert 8 < header < 100_000, header
    for k in ("vocab_size", "hidden_size", "intermediate_size", "intermediate_size_mlp", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "rope_scaling", "no_rope_layers", "layer_types",
              "use_qk_norm", "routed_scaling_factor", "norm_topk_prob", "eos_token_id", "attn_temperature_tuning",
              "quantization"):
        assert k in cfg
    assert "quantization" not in mf.size_config("S", "bf16")
    assert cfg["quantization"] == mf.QUANTIZATION


@pytest.mark.parametrize("size", ["S", "M", "L"])
def test_size_configs_and_presets_are_one_definition(tmp_path, size):
    """The config.json this format writes for a size, read back by the loader, is the preset
    ``models.get_config(size)`` (every forward field; the shapes are defined once, in models.PRESETS)."""
    (tmp_path / "config.json").write_text(json.dumps(mf.size_config(size, "qat")))
    ck = read_mobilemoe_config(tmp_path)
    got, want = ck.model_config.to_dict(), models.get_config(size).to_dict()
    for d in (got, want):
        d.pop("name")
        d.pop("extra")
    assert got == want
    assert ck.size == size and ck.model_config.max_seq_len == models.DEFAULT_MAX_SEQ_LEN
    assert read_mobilemoe_config(tmp_path, max_seq_len=8192).model_config.max_seq_len == 8192


def test_nibble_packing_is_the_spec():
    # byte 0x8F: even column = low nibble 0xF = -1, odd column = high nibble 0x8 = -8
    b = torch.tensor([[0x8F, 0x70, 0x01]], dtype=torch.uint8)
    want = [[-1, -8, 0, 7, 1, 0]]
    assert mf.unpack_int4(b).tolist() == want
    assert nibbles(b).tolist() == want  # the reference's own unpacking
    q = torch.randint(-8, 8, (3, 5, 64), dtype=torch.int8)
    assert torch.equal(mf.unpack_int4(mf.pack_int4(q)), q)


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "llama3", "factor": 16, "original_max_position_embeddings": 8192, "low_freq_factor": 1.0,
     "high_freq_factor": 1.0},
    {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0},
])
def test_llama3_rope_tables_equal_the_reference(scaling):
    cos, sin = models.rope_tables(32, 50, 500000.0, scaling)
    inv = ref_inv_freq(32, 500000.0, scaling)
    ang = torch.arange(50, dtype=torch.float64)[:, None] * inv[None]
    assert torch.equal(cos, ang.cos().float()) and torch.equal(sin, ang.sin().float())
    if scaling and scaling["high_freq_factor"] != scaling["low_freq_factor"]:
        plain = ref_inv_freq(32, 500000.0, None)
        ratio = plain / inv
        assert (ratio == 1).any() and (ratio == scaling["factor"]).any()
        assert ((ratio > 1) & (ratio < scaling["factor"])).any()  # the smooth band


def test_model_defaults_are_unchanged():
    cfg = models.get_config("tiny")
    assert (cfg.rope_style, cfg.rope_scaling, cfg.qk_norm_eps, cfg.renorm_eps) == ("half_split", None, None, 0.0)
    m = models.build_model(cfg, seed=0)
    assert type(m.layers[0].feed_forward) is models.MoEFeedForward


# ------------------------------------------------------------------------------------------------
# the bf16 release: the fp32 model equals the reference


def test_bf16_model_equals_reference(bf16_dir):
    m = load_mobilemoe(bf16_dir)
    c = m.cfg
    assert c.name == "mobilemoe-D64x2-bf16" and c.extra["format"] == "bf16"
    assert (c.rope_style, c.qk_norm_eps, c.renorm_eps, c.score_func, c.route_scale) == (
        "interleaved", 1e-5, 1e-20, "sigmoid", 2.5)
    assert c.extra["eos_token_ids"] == [305, 312, 313] and c.tie_embeddings
    assert m.output.weight is m.tok_embeddings.weight
    ref = MobileMoEReference(bf16_dir)
    m.reset_cache()
    for i, got, want in _steps(m, ref):
        assert _rel(got, want) < 1e-4, f"step {i}: relative error {_rel(got, want)}"
        assert int(got.argmax()) == int(want.argmax())


def test_bf16_model_in_float64(bf16_dir):
    m = load_mobilemoe(bf16_dir, max_seq_len=32, dtype=torch.float64)
    ref = MobileMoEReference(bf16_dir)
    m.reset_cache()
    for i, got, want in _steps(m, ref):
        assert got.dtype == torch.float64 and _rel(got, want) < 1e-6, f"step {i}: relative error {_rel(got, want)}"
    with pytest.raises(ValueError, match="float32"):
        load_mobilemoe(bf16_dir, dtype=torch.float16)


def test_make_checkpoint_script(tmp_path):
    script = REPO / "scripts/make_mobilemoe_checkpoint.py"
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--size" in r.stdout and "INFERRED" in r.stdout
    r = subprocess.run([sys.executable, str(script), "--size", "tiny", "--format", "qat", "--out", str(tmp_path / "t"),
                        "--seed", "5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    ck = read_mobilemoe_config(tmp_path / "t")
    assert ck.format == "qat" and ck.config == mf.size_config("tiny", "qat")


def test_bf16_sharded_checkpoint_loads_the_same(tmp_path, bf16_dir):
    d = _write(tmp_path / "sharded", "bf16", max_shard_bytes=100_000)
    assert (d / "model.safetensors.index.json").is_file() and len(list(d.glob("model-*.safetensors"))) > 2
    a, b = load_mobilemoe(d).state_dict(), load_mobilemoe(bf16_dir).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# the QAT release: the INT4 modules hold the checkpoint's weights bit for bit


def _deq_linear(mod):
    q, s = quant.unpack(mod.weight, mod.scales, mod.out_features, mod.in_features, mod.group_size, 4)
    return quant.dequantize(torch.from_numpy(q), torch.from_numpy(s), mod.group_size)


def _deq_packed(w, s, n, k, g):
    q, s = quant.unpack(w, s, n, k, g, 4)
    return quant.dequantize(torch.from_numpy(q), torch.from_numpy(s), g)


def _deq_out_grouped(w, s, n, k, g):
    """An expert matrix [n, k] packed with unit scales; its scales [k, n/G] as the checkpoint stores them."""
    q, _ = quant.unpack(w, np.ones(quant.packed_sizes(n, k, g, 4)[1], np.float32), n, k, g, 4)
    s = s.to(torch.float32).reshape(k, n // g)
    return torch.from_numpy(q).to(torch.float32) * s.t().repeat_interleave(g, dim=0)  # q[n, k] * s[k, n // G]


@pytest.mark.parametrize("group_size", [32, 64])
def test_qat_weights_are_the_checkpoints_bit_for_bit(tmp_path, group_size):
    from mobilemoe_export.quantization.transforms import MobileMoEFFN, MobileMoELinear

    def edit(c):
        c["quantization"]["group_size"] = c["quantization"]["embedding_group_size"] = group_size

    d = _write(tmp_path, "qat", cfg_edit=edit)
    m = load_mobilemoe(d)
    ref = MobileMoEReference(d)
    t = read_tensors(d)
    f32 = lambda x: x.to(torch.float32)  # noqa: E731  the reference's float64 values are exact products
    assert m.cfg.name == "mobilemoe-D64x2-qat" and m.cfg.extra["group_size"] == group_size
    assert isinstance(m.output, MobileMoELinear) and m.output.scales.dtype == torch.float16
    assert torch.equal(_deq_linear(m.output), f32(ref.emb)) and torch.equal(m.tok_embeddings.weight, f32(ref.emb))
    assert torch.equal(m.norm.weight, f32(ref.norm))
    F_, D = ref.I, ref.H
    for i, (layer, R) in enumerate(zip(m.layers, ref.layers)):
        assert torch.equal(layer.attention_norm.weight, f32(R["n1"]))
        assert torch.equal(layer.ffn_norm.weight, f32(R["n2"]))
        for ours, theirs in (("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o")):
            mod = getattr(layer.attention, ours)
            assert isinstance(mod, MobileMoELinear) and mod.scales.dtype == torch.float16
            assert torch.equal(_deq_linear(mod), f32(R[theirs])), f"layer {i} {ours}"
        ff = layer.feed_forward
        assert isinstance(ff, MobileMoEFFN) and ff.scales_out and ff.w13_scales.dtype == torch.float16
        routing = (ff.score_func, ff.renormalize, ff.route_scale, ff.renorm_eps, ff.top_k)
        assert routing == ("sigmoid", True, 2.5, 1e-20, 2)
        assert torch.equal(ff.router_weight, t[f"model.layers.{i}.feed_forward.router.weight"])
        assert torch.equal(ff.expert_bias, f32(R["bias"]))
        for e in range(ff.num_experts):
            got13 = _deq_out_grouped(ff.w13[e], ff.w13_scales[e], 2 * F_, D, group_size)
            assert torch.equal(got13, f32(R["gate_up"][e].t())), f"layer {i} expert {e} gate_up"
            got2 = _deq_out_grouped(ff.w2[e], ff.w2_scales[e], D, F_, group_size)
            assert torch.equal(got2, f32(R["down"][e].t())), f"layer {i} expert {e} down"
        fs = ff.shared_hidden_dim
        got = _deq_packed(ff.shared_w13, ff.shared_w13_scales, 2 * fs, D, group_size)
        assert torch.equal(got, f32(torch.cat([R["sg"], R["su"]])))
        assert torch.equal(_deq_packed(ff.shared_w2, ff.shared_w2_scales, D, fs, group_size), f32(R["sd"]))


# ------------------------------------------------------------------------------------------------
# refused checkpoints: the field / tensor / file is named, and the CLI writes nothing


def _set(path, value):
    def edit(c):
        *head, last = path
        for k in head:
            c = c[k]
        if value is _DEL:
            del c[last]
        else:
            c[last] = value
    return edit


_DEL = object()
CONFIG_ERRORS = {
    "rope_type": (_set(("rope_scaling", "rope_type"), "yarn"), "rope_type"),
    "rope_factor_missing": (_set(("rope_scaling", "factor"), _DEL), "factor"),
    "attn_temperature_tuning": (_set(("attn_temperature_tuning",), True), "attn_temperature_tuning"),
    "nope_layer": (_set(("no_rope_layers",), [1, 0]), "no_rope_layers"),
    "no_rope_layers_missing": (_set(("no_rope_layers",), _DEL), "no_rope_layers"),
    "layer_types": (_set(("layer_types",), ["full_attention", "sliding_attention"]), "layer_types"),
    "interleave_moe_layer_step": (_set(("interleave_moe_layer_step",), 2), "interleave_moe_layer_step"),
    "hidden_act": (_set(("hidden_act",), "gelu"), "hidden_act"),
    "attention_bias": (_set(("attention_bias",), True), "attention_bias"),
    "use_qk_norm_missing": (_set(("use_qk_norm",), _DEL), "use_qk_norm"),
    "norm_topk_prob": (_set(("norm_topk_prob",), False), "norm_topk_prob"),
    "num_local_experts_missing": (_set(("num_local_experts",), _DEL), "num_local_experts"),
    "untied_without_lm_head": (_set(("tie_word_embeddings",), False), "lm_head"),
    "quant_format": (_set(("quantization", "format"), "gptq-int4"), "format"),
    "odd_group_size": (_set(("quantization", "group_size"), 33), "group_size"),
    "group_size_48": (_set(("quantization", "embedding_group_size"), 48), "embedding_group_size"),
    "group_size_not_dividing": (_set(("quantization", "group_size"), 256), "does not divide"),
    "scale_dtype": (_set(("quantization", "scale_dtype"), "bfloat16"), "scale_dtype"),
    "qmin": (_set(("quantization", "qmin"), -7), "qmin"),
    "symmetric": (_set(("quantization", "symmetric"), False), "symmetric"),
    "packed": (_set(("quantization", "packed"), False), "packed"),
    "linear_group_axis": (_set(("quantization", "linear_group_axis"), "out"), "linear_group_axis"),
    "expert_group_axis": (_set(("quantization", "expert_group_axis"), "in (first dim)"), "expert_group_axis"),
}


def _rewrite(d: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    t = dict(load_file(str(d / "model.safetensors")))
    fn(t)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(d: Path, fn) -> None:
    c = json.loads((d / "config.json").read_text())
    fn(c)
    (d / "config.json").write_text(json.dumps(c))


def _truncate(d: Path) -> None:
    p = d / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 1000])


def _scale(value):
    def fn(t):
        s = t["model.layers.1.self_attn.k_proj.weight_scale"]
        s.view(-1)[5] = value
    return fn


def _change(name, fn):
    def edit(t):
        t[name] = fn(t[name])
    return edit


L1 = "model.layers.1."
FILE_ERRORS = {
    "missing_tensor": (lambda d: _rewrite(d, lambda t: t.pop(L1 + "feed_forward.experts.down_scale")),
                       [L1 + "feed_forward.experts.down_scale", "found"]),
    "unexpected_tensor": (lambda d: _rewrite(d, lambda t: t.update({L1 + "self_attn.q_norm.weight": torch.ones(32)})),
                          [L1 + "self_attn.q_norm.weight", "does not use"]),
    "wrong_dtype": (lambda d: _rewrite(d, _change(L1 + "feed_forward.router.weight", lambda x: x.bfloat16())),
                    [L1 + "feed_forward.router.weight", "dtype BF16", "F32"]),
    "wrong_shape": (lambda d: _rewrite(d, _change(L1 + "self_attn.o_proj.weight_scale", lambda x: x[:, :2].clone())),
                    [L1 + "self_attn.o_proj.weight_scale", "shape [64, 2]", "[64, 4]"]),
    "truncated_shard": (_truncate, ["model.safetensors", "truncated"]),
    "zero_scale": (lambda d: _rewrite(d, _scale(0.0)), [L1 + "self_attn.k_proj.weight_scale", "zero"]),
    "nan_scale": (lambda d: _rewrite(d, _scale(float("nan"))), [L1 + "self_attn.k_proj.weight_scale", "nan"]),
    "bf16_names_with_quantization_block": (
        lambda d: _edit_config(d, lambda c: c.update(quantization=dict(mf.QUANTIZATION))),
        ["model.embed_tokens.qweight", "bf16 release's tensor names"]),
}


def _broken(tmp_path: Path, case: str) -> Path:
    fmt = "bf16" if case.startswith("bf16") else "qat"
    d = _write(tmp_path / case, fmt, tokenizer=False)
    if case in CONFIG_ERRORS:  # config.json edited after writing a good checkpoint
        _edit_config(d, CONFIG_ERRORS[case][0])
    else:
        FILE_ERRORS[case][0](d)
    return d


def _want(case: str):
    w = CONFIG_ERRORS[case][1] if case in CONFIG_ERRORS else FILE_ERRORS[case][1]
    return [w] if isinstance(w, str) else w


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS) + sorted(FILE_ERRORS))
def test_refused_checkpoints_name_the_problem(tmp_path, case):
    d = _broken(tmp_path, case)
    with pytest.raises(MobileMoEFormatError) as ei:
        load_mobilemoe(d)
    msg = str(ei.value)
    for w in _want(case):
        assert w.lower() in msg.lower(), f"{case}: {w!r} not in {msg!r}"


@pytest.mark.parametrize("case", ["nope_layer", "odd_group_size", "quant_format", "missing_tensor", "truncated_shard",
                                  "zero_scale", "use_qk_norm_missing"])
def test_cli_refuses_and_writes_nothing(tmp_path, capsys, case):
    d = _broken(tmp_path, case)
    out = tmp_path / "out" / "m.pte"
    with pytest.raises(SystemExit) as ei:
        cli.main(["--hf", str(d), "--out", str(out), "--no-progress"])
    msg = str(ei.value.code)
    assert msg.startswith("error:") and all(w.lower() in msg.lower() for w in _want(case)), msg
    assert not out.exists() and not (out.parent / "tokenizer.json").exists()


def test_cli_subprocess_exit_code_and_no_transformers(tmp_path):
    """``python -m mobilemoe_export --hf DIR`` on a refused checkpoint: exit code 1, the message on
    stderr, no .pte; and the MobileMoE loader never imports transformers."""
    d = _broken(tmp_path, "nope_layer")
    out = tmp_path / "x.pte"
    r = subprocess.run([sys.executable, "-m", "mobilemoe_export", "--hf", str(d), "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 1 and "no_rope_layers" in r.stderr and not out.exists(), r.stderr
    good = _write(tmp_path / "good", "bf16", tokenizer=False)
    code = ("import sys; from mobilemoe_export.sources.mobilemoe import load_mobilemoe; "
            f"load_mobilemoe({str(good)!r}); print('transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_read_config_reports_release_and_eos(qat_dir, tmp_path):
    ck = read_mobilemoe_config(qat_dir, max_seq_len=64)
    assert (ck.format, ck.group_size, ck.embedding_group_size, ck.eos_token_ids) == ("qat", 32, 32, [305, 312, 313])
    assert ck.model_config.max_seq_len == 64 and "QAT" in ck.quantization
    # an int eos_token_id, and generation_config.json taking precedence (as transformers)
    d = _write(tmp_path / "eos", "bf16", cfg_edit=_set(("eos_token_id",), 305), tokenizer=False)
    assert read_mobilemoe_config(d).eos_token_ids == [305]
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [313, 305]}))
    assert read_mobilemoe_config(d).eos_token_ids == [313, 305]
    assert "PTQ" in read_mobilemoe_config(d).quantization


# ------------------------------------------------------------------------------------------------
# END TO END: needs the Rust library (MobileMoE QK-norm in mobilemoe::attention, output-grouped expert
# scales in mobilemoe::moe_ffn) and target/release/mobilemoe


def _export(d: Path, out: Path, *extra: str) -> dict:
    rc = cli.main(["--hf", str(d), "--out", str(out), "--no-progress", *extra])
    assert rc == 0 and out.is_file()
    return json.loads(Path(str(out) + ".json").read_text())


@pytest.fixture(scope="module")
def qat_exact_pte(qat_dir, tmp_path_factory):
    if not LIB:
        pytest.skip("needs the runtime library")
    out = tmp_path_factory.mktemp("pte_exact") / "qat_exact.pte"
    return out, _export(qat_dir, out, "--exact", "--kv-cache", "fp32", "--max-seq-len", "64")


@needs_lib
def test_e2e_qat_eager_equals_reference(qat_dir, qat_ref):
    m = load_mobilemoe(qat_dir, max_seq_len=64, exact=True)
    m.reset_cache()
    for i, got, want in _steps(m, qat_ref):
        assert _rel(got, want) < 1e-4, f"step {i}: relative error {_rel(got, want)}"


@needs_lib
def test_e2e_qat_pte_exact_equals_reference(qat_exact_pte, qat_ref):
    from mobilemoe_export import generate

    out, summary = qat_exact_pte
    assert summary["mobilemoe_format"] == "qat" and summary["eos_token_ids"] == [305, 312, 313]
    assert summary["tokenizer"] == ["tokenizer.json", "tokenizer_config.json"] and summary["delegate_calls"] == 1
    assert summary["model"] == "mobilemoe-D64x2-qat" and summary["max_seq_len"] == 64
    pte = generate.PteModel(out)
    for i, got, want in _steps(pte, qat_ref):
        assert _rel(got, want) < 1e-4, f"step {i}: relative error {_rel(got, want)}"


@needs_lib
def test_e2e_qat_group_size_64_exact(tmp_path, capsys):
    from mobilemoe_export import generate

    def edit(c):
        c["quantization"]["group_size"] = c["quantization"]["embedding_group_size"] = 64

    d = _write(tmp_path / "g64", "qat", seed=2, cfg_edit=edit)
    out = tmp_path / "g64.pte"
    summary = _export(d, out, "--exact", "--kv-cache", "fp32", "--max-seq-len", "64")  # --group-size 32 by default
    assert summary["group_size"] == 64 and "group size 64: using it" in capsys.readouterr().err
    pte, ref = generate.PteModel(out), MobileMoEReference(d)
    for i, got, want in _steps(pte, ref):
        assert _rel(got, want) < 1e-4, f"step {i}: relative error {_rel(got, want)}"


@needs_lib
def test_e2e_qat_pte_default_path_same_greedy_tokens(qat_dir, qat_ref, tmp_path):
    """The default export (INT8 activations, fp16 KV cache): within a few percent of the reference and
    the same greedy token at every step. Random weights have near-ties (a 2% perturbation flips a
    top-1 logit 0.007 ahead, or an expert choice 0.001 ahead): the checkpoint is one without."""
    from mobilemoe_export import generate

    out = tmp_path / "qat.pte"
    _export(qat_dir, out, "--max-seq-len", "64")
    pte = generate.PteModel(out)
    steps = _steps(pte, qat_ref)
    gaps = [float(torch.topk(want, 2).values.diff().abs()) for _, _, want in steps]
    assert min(gaps) > 0.5 and qat_ref.min_route_margin > 0.01, (gaps, qat_ref.min_route_margin)
    for i, got, want in steps:
        assert int(got.argmax()) == int(want.argmax()), f"step {i}"
        assert _rel(got, want) < 0.05, f"step {i}: relative error {_rel(got, want)}"


@needs_lib
def test_e2e_rust_runner_greedy_ids(qat_exact_pte, qat_ref):
    from mobilemoe_export import generate

    out, _ = qat_exact_pte
    exe = REPO / "target/release/mobilemoe"
    if not exe.is_file():
        pytest.skip("target/release/mobilemoe not built")
    tok = generate.load_tokenizer(out.parent / "tokenizer.json")
    prompt = "Hello world"
    ids = tok.encode(prompt).ids  # <|begin_of_text|> + the text, as both runners encode a plain prompt
    assert ids[0] == 304
    n = 6
    want = qat_ref.incremental(ids, n)[-1][0][len(ids):]
    ids_file = out.parent / "rust_ids.txt"
    r = subprocess.run([str(exe), "generate", str(out), "--prompt", prompt, "--max-new-tokens", str(n), "--no-eos",
                        "--ids-out", str(ids_file)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [int(v) for v in ids_file.read_text().split()] == want
    assert generate.generate_tokens(generate.PteModel(out), ids, n, 64).tokens == want


def _fake_quantize_(model: models.Transformer, g: int = 32) -> None:
    """Every weight the PTQ export quantizes (linears incl. the tied LM head / embedding, routed and
    shared experts; not the router) replaced by its INT4 value (fp32 scales), in place."""
    def fq(w):
        q, s = quant.quantize_per_group(w, g, 4)
        w.copy_(quant.dequantize(q, s, g))

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and mod.weight.shape[0] != model.cfg.num_experts:
                fq(mod.weight)
            if isinstance(mod, models.MoEFeedForward):
                for w in (mod.experts_w1, mod.experts_w3, mod.experts_w2):  # [E, N, K]
                    for e in range(w.shape[0]):
                        fq(w[e])


@needs_lib
def test_e2e_bf16_release_exports_with_ptq(bf16_dir, tmp_path):
    """The bf16 release through the normal path (post-training INT4 quantization, fp32 scales): the
    .pte (exact path, fp32 KV cache) equals the loaded fp32 model on the same quantized weights."""
    from mobilemoe_export import generate

    out = tmp_path / "bf16.pte"
    summary = _export(bf16_dir, out, "--max-seq-len", "64", "--exact", "--kv-cache", "fp32")
    assert summary["mobilemoe_format"] == "bf16" and "PTQ" in summary["quantization"]
    assert summary["eos_token_ids"] == [305, 312, 313] and summary["delegate_calls"] == 1
    m = load_mobilemoe(bf16_dir, max_seq_len=64)
    _fake_quantize_(m)
    ref = MobileMoEReference(bf16_dir)  # its greedy tokens drive both
    pte = generate.PteModel(out)
    m.reset_cache()
    for (i, got, _), (_, want, _) in zip(_steps(pte, ref), _steps(m, ref)):
        assert _rel(got, want) < 1e-4, f"step {i}: relative error {_rel(got, want)}"


@needs_lib
def test_e2e_pte_blob_weights_are_the_checkpoints_bit_for_bit(qat_exact_pte, qat_ref):
    """#23 item 2: the integers and scales that reach the kernels, read back from the .pte's delegate
    blob, dequantize to exactly the checkpoint's weights (linears grouped along `in`, the tied
    embedding / LM head, the [E, in, out] experts grouped along `out`, the shared expert)."""
    from mobilemoe_export.lowering import backend

    path, _ = qat_exact_pte
    (blob,) = backend.pte_blobs(path)
    v = backend.BlobView(blob)
    assert v.version == backend.FORMAT_VERSION == 5
    R, g = qat_ref, 32
    f32 = lambda x: x.to(torch.float32)  # noqa: E731
    kinds = [k for k, _, _ in v.nodes]
    att = [t for k, t, _ in v.nodes if k == "Attention"]
    moe = [t for k, t, _ in v.nodes if k == "MoeFfn"]
    assert len(att) == len(moe) == len(R.layers) and kinds[0] == "Embedding" and kinds[-1] == "LmHead"
    c = lambda tid: torch.from_numpy(np.array(v.constant(tid)))  # noqa: E731
    emb = next(t for k, t, _ in v.nodes if k == "Embedding")
    head = next(t for k, t, _ in v.nodes if k == "LmHead")
    seg = lambda tid: v.graph.Tensors(tid).Segment()  # noqa: E731
    assert seg(emb.Weight()) == seg(head.Weight()) and seg(emb.Scales()) == seg(head.Scales())  # tied: stored once
    assert c(emb.Scales()).dtype == torch.float16
    vocab, dim = emb.VocabSize(), emb.Dim()
    assert torch.equal(_deq_packed(c(emb.Weight()), c(emb.Scales()), vocab, dim, g), f32(R.emb))
    for i, (a, m, L) in enumerate(zip(att, moe, R.layers)):
        assert a.QkNorm() and a.RopeStyle() == 1 and a.Window() == 0
        qkv = torch.cat([L["q"], L["k"], L["v"]])
        assert torch.equal(_deq_packed(c(a.Wqkv()), c(a.WqkvScales()), qkv.shape[0], dim, g), f32(qkv)), f"layer {i} wqkv"
        assert torch.equal(_deq_packed(c(a.Wo()), c(a.WoScales()), dim, L["o"].shape[1], g), f32(L["o"])), f"layer {i} wo"
        assert m.ExpertScalesOut() and m.ScoreFunc() == 2 and m.RouteScale() == 2.5 and m.RenormEps() == np.float32(1e-20)
        E, F_ = m.NumExperts(), m.HiddenDim()
        w13, s13, w2, s2 = c(m.W13()), c(m.W13Scales()), c(m.W2()), c(m.W2Scales())
        assert s13.dtype == s2.dtype == torch.float16
        for e in range(E):
            assert torch.equal(_deq_out_grouped(w13[e], s13[e], 2 * F_, dim, g), f32(L["gate_up"][e].t())), f"{i}/{e}"
            assert torch.equal(_deq_out_grouped(w2[e], s2[e], dim, F_, g), f32(L["down"][e].t())), f"{i}/{e}"
        fs = m.SharedHiddenDim()
        sh13 = _deq_packed(c(m.SharedW13()), c(m.SharedW13Scales()), 2 * fs, dim, g)
        assert torch.equal(sh13, f32(torch.cat([L["sg"], L["su"]])))
        assert torch.equal(_deq_packed(c(m.SharedW2()), c(m.SharedW2Scales()), dim, fs, g), f32(L["sd"]))
        assert torch.equal(c(m.RouterWeight()), f32(L["router"])) and torch.equal(c(m.ExpertBias()), f32(L["bias"]))
