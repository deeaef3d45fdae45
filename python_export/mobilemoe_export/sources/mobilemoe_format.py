"""The published MobileMoE checkpoint format (``facebook/MobileMoE-{S,M,L}-{Base,SFT,QAT}``,
docs/mobilemoe_format.md): the tensor inventory of both releases in ONE table, the configs
of the three sizes (and a ``tiny`` one for tests), and a writer of random checkpoints in that format
(config.json, safetensors shards, a Llama-3-style byte-level BPE ``tokenizer.json`` with a chat
template) that the tests and ``scripts/make_mobilemoe_checkpoint.py`` share.

Two releases:

- ``"qat"``: INT4 weights, two per byte along the last dimension (even column in the low nibble, two's
  complement), fp16 scales per group of ``group_size`` along ``in`` for ``[out, in]`` linears and
  along ``out`` for the ``[E, in, out]`` experts; the router fp32, norms and the expert bias bf16.
  Its config.json has a ``quantization`` block.
- ``"bf16"`` (Base / SFT): every weight bf16; tensor names **[inferred]** Llama 4 style (the spec
  found none): ``*.weight`` for the linears, ``experts.gate_up_proj`` / ``experts.down_proj``.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .. import models
from .._paths import ASSETS_DIR

FORMATS = ("qat", "bf16")
QUANT_FORMAT = "mobilemoe-int4-g32"
LINEAR_GROUP_AXIS = "in (last dim of [out, in])"
EXPERT_GROUP_AXIS = "out (last dim of [E, in, out])"
QUANTIZATION = {
    "format": QUANT_FORMAT, "group_size": 32, "embedding_group_size": 32, "qmin": -8, "qmax": 7,
    "symmetric": True, "packed": True, "scale_dtype": "float16",
    "linear_group_axis": LINEAR_GROUP_AXIS, "expert_group_axis": EXPERT_GROUP_AXIS,
}
# safetensors dtype names -> torch
ST_DTYPES = {"U8": torch.uint8, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
LLAMA3_EOS = [128001, 128008, 128009]


def _size_config(preset) -> Dict:
    """config.json of MobileMoE-S-QAT (as read) with the dimensions of ``preset``, a MobileMoE
    :class:`~mobilemoe_export.models.ModelConfig` (``models.PRESETS``: the one definition of the S / M /
    L shapes)."""
    layers = preset.n_layers
    return {
        "model_type": "mobilemoe", "architectures": ["MobileMoEForCausalLM"], "vocab_size": preset.vocab_size,
        "hidden_size": preset.dim, "intermediate_size": preset.expert_hidden_dim,
        "intermediate_size_mlp": preset.shared_hidden_dim, "num_hidden_layers": layers,
        "num_attention_heads": preset.n_heads, "num_key_value_heads": preset.n_kv_heads, "head_dim": preset.head_dim,
        "hidden_act": "silu", "max_position_embeddings": models.MOBILEMOE_CONTEXT, "rms_norm_eps": preset.norm_eps,
        "rope_theta": preset.rope_theta, "rope_scaling": copy.deepcopy(preset.rope_scaling),
        "num_local_experts": preset.num_experts, "num_experts_per_tok": preset.top_k, "interleave_moe_layer_step": 1,
        "no_rope_layers": [1] * layers, "layer_types": ["full_attention"] * layers,
        "use_qk_norm": preset.qk_norm_eps is not None, "tie_word_embeddings": preset.tie_embeddings,
        "attention_bias": False, "routed_scaling_factor": preset.route_scale, "norm_topk_prob": preset.renormalize,
        "eos_token_id": list(LLAMA3_EOS), "attn_temperature_tuning": False, "torch_dtype": "bfloat16",
        "attention_dropout": 0.0, "quantization": dict(QUANTIZATION),
    }


def _tiny_config() -> Dict:
    c = _size_config(models.PRESETS["S"])
    # vocab: 304 byte-level BPE tokens + 16 Llama-3-style special tokens (see build_tokenizer)
    c.update(vocab_size=320, hidden_size=64, intermediate_size=64, intermediate_size_mlp=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_local_experts=8, num_experts_per_tok=2,
             max_position_embeddings=256, eos_token_id=[305, 312, 313], no_rope_layers=[1, 1],
             layer_types=["full_attention"] * 2)
    # a short original context so that the tiny head_dim has kept, interpolated and divided frequencies
    c["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    return c


# S as read; L from its model card; M [inferred] (the only shape giving 2.8B / 0.5B); the
# routed_scaling_factor and rope_scaling of M and L were not found: S's are assumed. The shapes are
# models.PRESETS' (defined once there).
SIZES: Dict[str, Dict] = {
    **{size: _size_config(models.PRESETS[size]) for size in ("S", "M", "L")},
    "tiny": _tiny_config(),
}
INFERRED_NOTES = {
    "M": "M's dimensions are inferred (the only shape giving 2.8B total / 0.5B active with S's pattern); "
         "its routed_scaling_factor and rope_scaling were not published: S's are assumed",
    "L": "L's routed_scaling_factor and rope_scaling were not published: S's are assumed",
}


def size_config(size: str, fmt: str = "qat") -> Dict:
    """A fresh config.json dict of ``size`` (S / M / L / tiny) for the release ``fmt``."""
    if size not in SIZES:
        raise KeyError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    c = copy.deepcopy(SIZES[size])
    if fmt != "qat":
        c.pop("quantization")
    return c


# ---------------------------------------------------------------------------------------------
# The tensor inventory: one table for both releases


@dataclass(frozen=True)
class Dims:
    vocab: int
    hidden: int
    inter: int  # routed expert hidden size I
    shared: int  # shared expert hidden size (intermediate_size_mlp)
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    top_k: int


def dims_of(cfg: Dict) -> Dims:
    """The dimensions in a config.json dict (no validation: the loader validates)."""
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    return Dims(vocab=int(cfg["vocab_size"]), hidden=hidden, inter=int(cfg["intermediate_size"]),
                shared=int(cfg["intermediate_size_mlp"]), layers=int(cfg["num_hidden_layers"]), heads=heads,
                kv_heads=int(cfg["num_key_value_heads"]), head_dim=int(cfg.get("head_dim") or hidden // heads),
                experts=int(cfg["num_local_experts"]), top_k=int(cfg["num_experts_per_tok"]))


# Kinds: "embedding" / "linear" [out, in] (groups along in: embedding_group_size / group_size);
# "norm" [H]; "router" [E, H]; "expert_bias" [E]; "experts" [E, in, out] (groups along out).
# (name, kind, shape); "L." = "model.layers.{i}."
MODEL_TENSORS = (
    ("model.embed_tokens", "embedding", lambda d: (d.vocab, d.hidden)),
    ("model.norm", "norm", lambda d: (d.hidden,)),
)
LM_HEAD = ("lm_head", "linear", lambda d: (d.vocab, d.hidden))  # untied checkpoints only
LAYER_TENSORS = (
    ("L.input_layernorm", "norm", lambda d: (d.hidden,)),
    ("L.post_attention_layernorm", "norm", lambda d: (d.hidden,)),
    ("L.self_attn.q_proj", "linear", lambda d: (d.heads * d.head_dim, d.hidden)),
    ("L.self_attn.k_proj", "linear", lambda d: (d.kv_heads * d.head_dim, d.hidden)),
    ("L.self_attn.v_proj", "linear", lambda d: (d.kv_heads * d.head_dim, d.hidden)),
    ("L.self_attn.o_proj", "linear", lambda d: (d.hidden, d.heads * d.head_dim)),
    ("L.feed_forward.router", "router", lambda d: (d.experts, d.hidden)),
    ("L.feed_forward.expert_bias", "expert_bias", lambda d: (d.experts,)),
    ("L.feed_forward.experts.gate_up", "experts", lambda d: (d.experts, d.hidden, 2 * d.inter)),
    ("L.feed_forward.experts.down", "experts", lambda d: (d.experts, d.inter, d.hidden)),
    ("L.feed_forward.shared_expert.gate_proj", "linear", lambda d: (d.shared, d.hidden)),
    ("L.feed_forward.shared_expert.up_proj", "linear", lambda d: (d.shared, d.hidden)),
    ("L.feed_forward.shared_expert.down_proj", "linear", lambda d: (d.hidden, d.shared)),
)


@dataclass(frozen=True)
class Stored:
    """One tensor of the file: its name, accepted dtypes (the first is the one written) and shape."""
    name: str
    dtypes: Tuple[str, ...]
    shape: Tuple[int, ...]
    role: str  # "weight" | "qweight" | "scale"


def stored_tensors(base: str, kind: str, shape: Tuple[int, ...], fmt: str, group_size: int = 32,
                   embedding_group_size: int = 32) -> List[Stored]:
    """The tensors a logical weight ``base`` of ``kind`` and logical ``shape`` is stored as in ``fmt``."""
    if fmt == "qat":
        if kind in ("linear", "embedding"):
            g = embedding_group_size if kind == "embedding" else group_size
            out, inn = shape
            return [Stored(f"{base}.qweight", ("U8",), (out, inn // 2), "qweight"),
                    Stored(f"{base}.weight_scale", ("F16",), (out, inn // g), "scale")]
        if kind == "experts":
            e, inn, out = shape
            return [Stored(f"{base}_qweight", ("U8",), (e, inn, out // 2), "qweight"),
                    Stored(f"{base}_scale", ("F16",), (e, inn, out // group_size), "scale")]
        if kind == "norm":
            return [Stored(f"{base}.weight", ("BF16",), shape, "weight")]
        if kind == "router":
            return [Stored(f"{base}.weight", ("F32",), shape, "weight")]
        if kind == "expert_bias":
            return [Stored(base, ("BF16",), shape, "weight")]
    elif fmt == "bf16":
        if kind in ("linear", "embedding", "norm"):
            return [Stored(f"{base}.weight", ("BF16",), shape, "weight")]
        if kind == "experts":
            return [Stored(f"{base}_proj", ("BF16",), shape, "weight")]
        # [inferred]: the router may be kept in fp32 as in the QAT release
        if kind == "router":
            return [Stored(f"{base}.weight", ("BF16", "F32"), shape, "weight")]
        if kind == "expert_bias":
            return [Stored(base, ("BF16", "F32"), shape, "weight")]
    raise ValueError(f"no storage of kind {kind!r} in format {fmt!r}")


def logical_tensors(d: Dims, lm_head: bool = False) -> Iterator[Tuple[str, str, Tuple[int, ...]]]:
    """(base name, kind, logical shape) of every weight of the model, in file order."""
    for name, kind, shape in MODEL_TENSORS:
        yield name, kind, shape(d)
    if lm_head:
        yield LM_HEAD[0], LM_HEAD[1], LM_HEAD[2](d)
    for i in range(d.layers):
        for name, kind, shape in LAYER_TENSORS:
            yield name.replace("L.", f"model.layers.{i}.", 1), kind, shape(d)


def inventory(cfg: Dict, fmt: str, lm_head: bool = False) -> List[Tuple[str, str, Tuple[int, ...], List[Stored]]]:
    """Every (base, kind, logical shape, stored tensors) of a checkpoint with config ``cfg``."""
    q = cfg.get("quantization") or {}
    g, ge = int(q.get("group_size", 32)), int(q.get("embedding_group_size", 32))
    return [(b, k, s, stored_tensors(b, k, s, fmt, g, ge)) for b, k, s in logical_tensors(dims_of(cfg), lm_head)]


# ---------------------------------------------------------------------------------------------
# Nibble packing (the QAT release)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int values in [-8, 7] ``[..., n]`` (n even) -> uint8 ``[..., n/2]``: column 2j in the low nibble,
    2j+1 in the high one, two's complement."""
    if q.shape[-1] % 2:
        raise ValueError(f"the packed dimension must be even, got {q.shape[-1]}")
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 ``[..., n/2]`` -> int8 ``[..., n]`` (the bytes read as int8:
    an arithmetic right shift by 4 sign-extends the high nibble, shifting left by 4 first the low one)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed int4 data must be uint8, got {packed.dtype}")
    p = packed.contiguous().view(torch.int8)
    out = torch.empty(*p.shape[:-1], p.shape[-1] * 2, dtype=torch.int8)
    out[..., 0::2] = (p << 4) >> 4
    out[..., 1::2] = p >> 4
    return out


# ---------------------------------------------------------------------------------------------
# Random checkpoints


def _random(st: Stored, kind: str, logical: Tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    dt = ST_DTYPES[st.dtypes[0]]
    if st.role == "qweight":
        return torch.randint(0, 256, st.shape, dtype=torch.uint8, generator=g)  # uniform int4 pairs
    if st.role == "scale":
        # the embedding (the tied LM head) larger: well separated logits, stable greedy tokens in tests
        lo, hi = (0.05, 0.15) if kind == "embedding" else (0.01, 0.05)
        return (lo + (hi - lo) * torch.rand(st.shape, generator=g)).to(dt)
    if kind == "norm":
        return (1.0 + 0.1 * torch.randn(st.shape, generator=g)).to(dt)
    if kind == "expert_bias":
        return (0.1 * torch.randn(st.shape, generator=g)).to(dt)
    if kind == "router":
        return (torch.randn(st.shape, generator=g) / math.sqrt(logical[-1])).to(dt)
    if kind == "embedding":
        return (0.5 * torch.randn(st.shape, generator=g)).to(dt)
    fan_in = logical[-2] if kind == "experts" else logical[-1]  # experts are [E, in, out]
    return (torch.randn(st.shape, generator=g) / math.sqrt(fan_in)).to(dt)


def write_mobilemoe_checkpoint(out_dir, cfg: Dict, fmt: str = "qat", seed: int = 0,
                               max_shard_bytes: Optional[int] = None, tokenizer: bool = True) -> Path:
    """Write a random checkpoint in the published format into ``out_dir``: config.json (``cfg``; its
    ``quantization`` block is added for ``"qat"`` if missing and dropped for ``"bf16"``), the weights
    as ``model.safetensors`` or, above ``max_shard_bytes``, ``model-0000i-of-0000n.safetensors`` +
    ``model.safetensors.index.json``, and (``tokenizer``) a Llama-3-style byte-level BPE
    ``tokenizer.json`` + ``tokenizer_config.json`` (:func:`build_tokenizer`). Values: uniform int4 and
    fp16 scales in [0.01, 0.05] ([0.05, 0.15] for the embedding) (qat), N(0, 1/fan_in) weights (N(0, 0.25) for the
    embedding) (bf16), norms ~1, a small expert bias.
    Returns ``out_dir``."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(cfg)
    if fmt == "qat":
        cfg.setdefault("quantization", dict(QUANTIZATION))
    else:
        cfg.pop("quantization", None)
    lm_head = not cfg.get("tie_word_embeddings", True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    items = [(kind, logical, st) for _, kind, logical, sts in inventory(cfg, fmt, lm_head) for st in sts]
    sizes = [math.prod(st.shape) * ST_DTYPES[st.dtypes[0]].itemsize for _, _, st in items]
    shards: List[List[int]] = [[]]
    acc = 0
    for i, n in enumerate(sizes):
        if max_shard_bytes and shards[-1] and acc + n > max_shard_bytes:
            shards.append([])
            acc = 0
        shards[-1].append(i)
        acc += n
    g = torch.Generator().manual_seed(seed)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    for fname, idx in zip(names, shards):
        tensors = {}
        for i in idx:
            kind, logical, st = items[i]
            tensors[st.name] = _random(st, kind, logical, g)
            weight_map[st.name] = fname
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
    if len(names) > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if tokenizer:
        write_tokenizer_files(out, int(cfg["vocab_size"]))
    return out


# ---------------------------------------------------------------------------------------------
# A Llama-3-style tokenizer (byte-level BPE, Llama 3's split regex and special tokens)

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3's first special tokens, at 128000 + i in the real vocabulary
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)


def _special_tokens(n: int) -> List[str]:
    return (LLAMA3_SPECIAL + [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + n)])[:n]


def build_tokenizer(vocab_size: int, max_merges: int = 2000):
    """A ``tokenizers.Tokenizer`` of exactly ``vocab_size`` ids laid out like Llama 3's: byte-level BPE
    (Llama 3's split regex, 256 byte tokens, merges learned on the project's small corpus, at most
    ``max_merges``; unreachable filler tokens up to the special range), then the special tokens
    (``<|begin_of_text|>`` first, ``<|eot_id|>`` tenth) in the last 256 ids (16 below 2,048 ids).
    Only the ids of the special tokens agree with the real Llama 3 tokenizer (for 128,256 ids)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    n_special = 256 if vocab_size >= 2048 else 16
    base = vocab_size - n_special
    if base < 256:
        raise ValueError(f"vocab_size {vocab_size} leaves fewer than 256 byte tokens")
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    corpus = (ASSETS_DIR / "corpus.txt").read_text()
    trainer = trainers.BpeTrainer(vocab_size=min(base, 256 + max_merges), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre
    t.train_from_iterator(corpus.splitlines(keepends=True), trainer)
    model = json.loads(t.to_str())["model"]
    vocab: Dict[str, int] = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    for i in range(len(vocab), base):
        vocab[f"<|filler_{i}|>"] = i
    bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    specials = _special_tokens(n_special)
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", base)])
    if tok.get_vocab_size() != vocab_size or tok.token_to_id("<|begin_of_text|>") != base:
        bos = tok.token_to_id("<|begin_of_text|>")
        raise AssertionError(f"tokenizer layout: {tok.get_vocab_size()} ids, <|begin_of_text|> = {bos}")
    return tok


def llama3_special_ids(vocab_size: int) -> Dict[str, int]:
    """Ids of the special tokens :func:`build_tokenizer` gives a ``vocab_size`` vocabulary."""
    n_special = 256 if vocab_size >= 2048 else 16
    return {t: vocab_size - n_special + i for i, t in enumerate(_special_tokens(n_special))}


def write_tokenizer_files(out_dir, vocab_size: int) -> List[Path]:
    """``tokenizer.json`` (:func:`build_tokenizer`) and ``tokenizer_config.json`` (bos / eos, a Llama 3
    chat template) into ``out_dir``."""
    out = Path(out_dir)
    tok = build_tokenizer(vocab_size)
    tok.save(str(out / "tokenizer.json"))
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_CHAT_TEMPLATE,
           "clean_up_tokenization_spaces": True, "model_input_names": ["input_ids", "attention_mask"],
           "model_max_length": 131072, "tokenizer_class": "PreTrainedTokenizerFast"}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return [out / "tokenizer.json", out / "tokenizer_config.json"]
