"""Hugging Face transformers MoE families: checkpoint directory -> ``python -m mobilemoe_export --hf``
-> .pte on the ExecuTorch runtime, against transformers itself.

Every checkpoint is a tiny random model written by transformers inside the test (``save_pretrained``
into tmp_path; no hub access). Per exact family:

- the .pte's logits against transformers fp32 within the INT4 bound;
- against transformers with the same fake-quantized weights (the INT4 g32 values ``quantize_moe``
  packs, dequantized) within 1e-4 (``--exact``: fp32 activations, so only summation order differs);
- 32 greedy tokens identical between the .pte (KV cache, one token per call) and that
  fake-quantized model (full recompute per step);
- the bare MoE block: ``quantize_moe(block)`` returns a replacement equal to the fake-quantized block.

Refused families (PhiMoE's sparsemixer, Llama 4's input-scaled routing, group-limited DeepSeek
routing, unverified families) raise an error naming the module and the feature.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")  # installed by scripts/bootstrap_venv.sh

import mobilemoe_export as mm  # noqa: E402
from mobilemoe_export import cli, generate, quant  # noqa: E402
from mobilemoe_export.hf_families import VERIFIED_BLOCKS  # noqa: E402

from conftest import needs_lib  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

GROUP = 32
MAX_SEQ_LEN = 64
PROMPT = [5, 17, 42, 9, 100, 63]
NEW_TOKENS = 32
COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, tie_word_embeddings=False, pad_token_id=0)
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


def _deepseek_common(**kw):
    return dict(COMMON, intermediate_size=64, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
                n_shared_experts=1, kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16,
                v_head_dim=16, num_key_value_heads=4, **kw)


# family -> (config class, model class, config kwargs)
EXACT = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(COMMON, intermediate_size=64, num_local_experts=4,
                                                              num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(COMMON, intermediate_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                       num_experts=4, num_experts_per_tok=2, norm_topk_prob=False)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(COMMON, intermediate_size=64, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                       norm_topk_prob=True, head_dim=16)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              dict(COMMON, intermediate_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False)),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                    _deepseek_common(routed_scaling_factor=1.5, topk_method="greedy", first_k_dense_replace=0)),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    _deepseek_common(routed_scaling_factor=2.5, n_group=1, topk_group=1, norm_topk_prob=True,
                                     first_k_dense_replace=1)),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                   dict(COMMON, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
                        embedding_multiplier=2.0, logits_scaling=2.0, residual_multiplier=0.5,
                        attention_multiplier=0.25)),
    "granitemoeshared": ("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM",
                         dict(COMMON, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
                              shared_intermediate_size=64, embedding_multiplier=2.0, logits_scaling=2.0,
                              residual_multiplier=0.5)),
}


def build(config_cls: str, model_cls: str, kwargs, seed: int = 0) -> nn.Module:
    """A tiny random transformers model with weights large enough for distinct logits and routes
    (transformers' init, std 0.02, gives near-ties everywhere)."""
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    return model


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in "hello world the a of to and is in it you that he was for on are with as I his they be at one " \
             "have this from or had by word but what some we can out other were all there when up use".split():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", chat_template=CHAT_TEMPLATE)


def fake_quantize(w: torch.Tensor) -> torch.Tensor:
    """The INT4 g32 weights quantize_moe packs, dequantized (rows of [..., N, K] independently)."""
    flat = w.detach().reshape(-1, w.shape[-1])
    q, s = quant.quantize_per_group(flat, GROUP, 4)
    return quant.dequantize(q, s, GROUP).reshape(w.shape)


def fake_quantized_like_quantize_moe(model: nn.Module) -> nn.Module:
    """``model`` with exactly the weights ``quantize_moe(dense_linears=True)`` quantizes replaced by
    their INT4 values: expert and shared-expert matrices, every nn.Linear outside the routers; routers
    and the shared-expert gate stay fp32 (they are fp32 inside mobilemoe::moe_ffn)."""
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ in VERIFIED_BLOCKS:
                m.experts.gate_up_proj.copy_(fake_quantize(m.experts.gate_up_proj))
                m.experts.down_proj.copy_(fake_quantize(m.experts.down_proj))
        for name, lin in model.named_modules():
            if isinstance(lin, nn.Linear) and not name.endswith("shared_expert_gate") and lin.in_features % GROUP == 0:
                lin.weight = nn.Parameter(fake_quantize(lin.weight.clone()))  # also unties a tied LM head
    return model


def greedy(next_logits, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(next_logits(ids))))  # first maximum, as generate.sample
    return ids[len(prompt):]


_EXPORTS = {}


def export_family(family, tmp_path_factory):
    """(checkpoint dir, .pte path) of ``family``, exported once per session by the CLI."""
    if family not in _EXPORTS:
        cfg_cls, model_cls, kwargs = EXACT[family]
        root = tmp_path_factory.mktemp(family)
        ckpt, out = root / "ckpt", root / "pte" / f"{family}.pte"
        build(cfg_cls, model_cls, kwargs).save_pretrained(ckpt)
        tiny_tokenizer().save_pretrained(ckpt)
        assert cli.main(["--hf", str(ckpt), "--out", str(out), "--max-seq-len", str(MAX_SEQ_LEN), "--exact",
                         "--no-progress"]) == 0
        _EXPORTS[family] = (ckpt, out)
    return _EXPORTS[family]


@needs_lib
@pytest.mark.parametrize("family", list(EXACT))
def test_family_pte_matches_transformers(family, tmp_path_factory):
    ckpt, out = export_family(family, tmp_path_factory)
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()  # noqa: E731
    fp32, fq = load(), fake_quantized_like_quantize_moe(load())
    assert any(type(m).__name__ in VERIFIED_BLOCKS for m in fq.modules())
    pte = generate.PteModel(out)
    assert pte.max_seq_len == MAX_SEQ_LEN and pte.vocab_size == 128
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        ref = fp32(input_ids=ids, use_cache=False).logits
        ref_fq = fq(input_ids=ids, use_cache=False).logits
    got = pte(ids, torch.arange(len(PROMPT)))
    assert got.shape == ref.shape
    # INT4 g32 weights (activations fp32: --exact) in every matrix: ~9% relative error per Gaussian
    # matrix, compounded over the 2-layer stack; the .pte's error is that quantization error itself.
    rel = ((got - ref).norm() / ref.norm()).item()
    rel_fq = ((ref_fq - ref).norm() / ref.norm()).item()
    assert rel < 0.4 and abs(rel - rel_fq) < 1e-3, (family, rel, rel_fq)
    # the same fake-quantized weights in transformers: equal up to fp32 summation order
    err = (got - ref_fq).abs().max().item()
    assert err < 1e-4, (family, err)

    # 32 greedy tokens: the .pte with its KV cache (prefill, then one token per call) against the
    # fake-quantized transformers model recomputing the whole sequence each step.
    def fq_next(seq):
        with torch.no_grad():
            return fq(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].numpy()

    res = generate.generate_tokens(pte, PROMPT, NEW_TOKENS, pte.max_seq_len)
    assert res.tokens == greedy(fq_next, PROMPT, NEW_TOKENS), family

    # the bare MoE block: quantize_moe returns its replacement, equal to the fake-quantized block
    fp_block = next(m for m in load().modules() if type(m).__name__ in VERIFIED_BLOCKS)
    fq_block = next(m for m in fq.modules() if type(m).__name__ in VERIFIED_BLOCKS)
    x = torch.randn(1, 16, 64)
    q_block = mm.quantize_moe(fp_block, exact=True)
    assert isinstance(q_block, mm.MobileMoEFFN)
    with torch.no_grad():
        torch.testing.assert_close(q_block(x), fq_block(x), atol=1e-5, rtol=1e-4)

    # the tokenizer sits beside the .pte, with the chat template
    tok_cfg = json.loads((out.parent / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHAT_TEMPLATE and tok_cfg["eos_token"] == "</s>"
    assert (out.parent / "tokenizer.json").is_file()
    sidecar = json.loads((out.parent / f"{family}.pte.json").read_text())
    assert sidecar["tokenizer"] == ["tokenizer.json", "tokenizer_config.json"] and sidecar["max_seq_len"] == MAX_SEQ_LEN


@needs_lib
def test_generate_uses_the_tokenizer_beside_the_pte(tmp_path_factory, capsys):
    _, out = export_family("mixtral", tmp_path_factory)
    capsys.readouterr()  # the export's own report, when this test exports first
    assert generate.tokenizer_beside(out) == out.parent / "tokenizer.json"
    tok = generate.load_tokenizer(generate.tokenizer_beside(out))
    assert tok.encode("hello world").ids == [3, 4]
    assert generate.main([str(out), "--prompt", "hello world", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("hello world") and len(printed.split()) >= 2
    # the chat template renders the prompt as the instruct model was trained to see it
    chat = generate.chat_prompt(out.parent / "tokenizer_config.json", "hello")
    assert chat == "<user>hello<assistant>"
    assert generate.main([str(out), "--prompt", "hello", "--chat", "--max-new-tokens", "3"]) == 0

    # the Rust runner finds the same tokenizer, config and chat template beside the .pte and
    # generates the same greedy ids as the Python runner
    import subprocess
    from pathlib import Path

    exe = Path(__file__).resolve().parents[2] / "target/release/mobilemoe"
    ids_file = out.parent / "rust_ids.txt"
    r = subprocess.run([str(exe), "generate", str(out), "--prompt", "hello", "--chat", "--max-new-tokens", "6",
                        "--no-eos", "--ids-out", str(ids_file)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("<user>hello<assistant>"), r.stdout
    ids = tok.encode(chat, add_special_tokens=False).ids
    want = generate.generate_tokens(generate.PteModel(out), ids, 6, MAX_SEQ_LEN).tokens
    assert [int(v) for v in ids_file.read_text().split()] == want


# ------------------------------------------------------------------------------------------------
# refused: an error naming the module and the feature


REFUSED = {
    "phimoe": ("PhimoeConfig", "PhimoeForCausalLM",
               dict(COMMON, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2),
               r"model\.layers\.0\.mlp.*sparsemixer"),
    "llama4": ("Llama4TextConfig", "Llama4ForCausalLM",
               dict(COMMON, intermediate_size=32, intermediate_size_mlp=64, num_local_experts=4,
                    num_experts_per_tok=1, head_dim=16),
               r"model\.layers\.0\.feed_forward.*scales each expert's input"),
    "deepseek_v3_grouped": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                            _deepseek_common(n_group=2, topk_group=1, first_k_dense_replace=0),
                            r"model\.layers\.0\.mlp\.gate.*group-limited routing.*n_group=2, topk_group=1"),
    "deepseek_v2_grouped": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                            _deepseek_common(topk_method="group_limited_greedy", n_group=2, topk_group=1,
                                             first_k_dense_replace=0),
                            r"model\.layers\.0\.mlp\.gate.*group-limited routing.*group_limited_greedy"),
    "flex_olmo_unverified": ("FlexOlmoConfig", "FlexOlmoForCausalLM",
                             dict(COMMON, intermediate_size=32, num_experts=4, num_experts_per_tok=2),
                             r"model\.layers\.0\.mlp.*family 'flex_olmo'.*not among"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_family_names_module_and_feature(case):
    cfg_cls, model_cls, kwargs, pattern = REFUSED[case]
    model = build(cfg_cls, model_cls, kwargs)
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(mm.UnsupportedModuleError, match=pattern):
        mm.quantize_moe(model, dense_linears=True)
    assert {n: type(m) for n, m in model.named_modules()} == before  # left unchanged


def test_cli_refuses_loudly(tmp_path):
    cfg_cls, model_cls, kwargs, _ = REFUSED["phimoe"]
    build(cfg_cls, model_cls, kwargs).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(SystemExit, match="sparsemixer"):
        cli.main(["--hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "p.pte"), "--no-progress"])
    assert not (tmp_path / "p.pte").exists()


@needs_lib
def test_static_token_dim_is_an_error(tmp_path_factory, tmp_path):
    """A program whose token input came out static is rejected (here: exported without dynamic shapes)."""
    from mobilemoe_export import hf_export

    _, out = export_family("olmoe", tmp_path_factory)
    hf_export.check_pte_dynamic_tokens(out)  # the CLI's program passes
    model = build(*EXACT["olmoe"][:3])
    model.generation_config.cache_implementation = "static"
    program = mm.quantize_moe(hf_export.HFCausalLMProgram(model, 16), dense_linears=True, exact=True)
    static = mm.export_pte(program, program.example_inputs(), tmp_path / "static.pte", dynamic_tokens=False,
                           strict=True)
    with pytest.raises(RuntimeError, match="static token dimension"):
        hf_export.check_pte_dynamic_tokens(static)


@needs_lib
def test_deepseek_v3_groups_without_a_limit_are_exact():
    """n_group > 1 with topk_group == n_group selects from every group: plain top-k, accepted and exact."""
    model = build(*EXACT["deepseek_v3"][:2], _deepseek_common(n_group=2, topk_group=2, norm_topk_prob=False,
                                                              routed_scaling_factor=1.7, first_k_dense_replace=0))
    block = model.model.layers[0].mlp
    fq_block = fake_quantized_like_quantize_moe(
        build(*EXACT["deepseek_v3"][:2], _deepseek_common(n_group=2, topk_group=2, norm_topk_prob=False,
                                                          routed_scaling_factor=1.7, first_k_dense_replace=0))
    ).model.layers[0].mlp
    x = torch.randn(1, 32, 64)
    q_block = mm.quantize_moe(block, exact=True)
    assert (q_block.score_func, q_block.renormalize, q_block.route_scale) == ("sigmoid", False, pytest.approx(1.7))
    with torch.no_grad():
        torch.testing.assert_close(q_block(x), fq_block(x), atol=1e-5, rtol=1e-4)
