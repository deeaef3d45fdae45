"""Load Meta's published MobileMoE checkpoints (``facebook/MobileMoE-{S,M,L}-{Base,SFT,QAT}``: a
config.json with ``"model_type": "mobilemoe"`` and safetensors shards) into this project's
:class:`mobilemoe_export.models.Transformer`, without transformers and without network, so that the
usual ``lower_decoder`` / ``export_pte`` path exports them (``python -m mobilemoe_export --hf DIR``).

The forward (docs/mobilemoe_format.md) maps onto ``models.Transformer`` as: RoPE on adjacent
pairs (``rope_style="interleaved"``) with Llama 3 frequency scaling (``rope_scaling``), a weightless
RMS norm of every q and k head after RoPE (``qk_norm_eps = rms_norm_eps``), sigmoid routing with a
selection-only expert bias, ``w * routed_scaling_factor / (sum(w) + 1e-20)`` (``renorm_eps``), an
ungated shared expert, tied embeddings.

- The QAT release keeps its integers and fp16 scales exactly: the linears (q/k/v/o, shared expert)
  become :class:`~mobilemoe_export.quantization.transforms.MobileMoELinear` (``qweight=``), the routed experts a
  :class:`~mobilemoe_export.quantization.transforms.MobileMoEFFN` with ``scales_axis="out"`` (the checkpoint groups
  the experts' scales along the output axis), the tied embedding the INT4 LM head (its dequantized
  values are the fp32 embedding table of the eager model).
- The bf16 release (Base / SFT) fills a plain fp32 ``models.Transformer``; the export path quantizes it
  afterwards (post-training quantization, ``quantize_moe``).

Everything the forward depends on is read from config.json and checked; what this project cannot
compute exactly is refused with :class:`MobileMoEFormatError` naming the field (or tensor, or file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import models
from ..quantization import quant
from . import mobilemoe_format as fmt_

log = logging.getLogger(__name__)

MODEL_TYPE = "mobilemoe"
DEFAULT_MAX_SEQ_LEN = models.DEFAULT_MAX_SEQ_LEN
RENORM_EPS = models.MOBILEMOE_RENORM_EPS


class MobileMoEFormatError(ValueError):
    """A MobileMoE checkpoint this project cannot load exactly; the message names the field, tensor or file."""


def is_mobilemoe_dir(path) -> bool:
    """True if ``path/config.json`` exists and says ``"model_type": "mobilemoe"``."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("model_type") == MODEL_TYPE
    except (ValueError, OSError, AttributeError):
        return False


@dataclass
class MobileMoECheckpoint:
    """What config.json says, checked: the release (``"qat"`` or ``"bf16"``), dimensions, group sizes,
    end-of-sequence ids, and the :class:`~mobilemoe_export.models.ModelConfig` computing its forward."""

    path: Path
    config: Dict[str, Any]
    format: str
    dims: fmt_.Dims
    model_config: models.ModelConfig
    size: str
    group_size: Optional[int] = None  # QAT: linears and experts
    embedding_group_size: Optional[int] = None  # QAT: the tied embedding / LM head
    eos_token_ids: List[int] = field(default_factory=list)
    tied: bool = True

    @property
    def quantization(self) -> str:
        if self.format == "qat":
            return (f"checkpoint INT4 (QAT): integers and fp16 scales kept exactly, group {self.group_size} "
                    f"(embedding {self.embedding_group_size})")
        return "PTQ: bf16 weights quantized by the export path (quantize_moe), not the QAT release"


# ---------------------------------------------------------------------------------------------
# config.json


def _err(msg: str) -> MobileMoEFormatError:
    return MobileMoEFormatError(msg)


def _get(cfg: Dict, key: str, kind, where: str = "config.json", default=KeyError):
    if key not in cfg or cfg[key] is None:
        if default is KeyError:
            raise _err(f"{where}: field {key!r} is missing (the MobileMoE forward depends on it)")
        return default
    v = cfg[key]
    if kind is int:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise _err(f"{where}: field {key!r} must be a positive integer, got {v!r}")
    elif kind is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _err(f"{where}: field {key!r} must be a number, got {v!r}")
        v = float(v)
    elif kind is bool:
        if not isinstance(v, bool):
            raise _err(f"{where}: field {key!r} must be true or false, got {v!r}")
    elif kind is not None and not isinstance(v, kind):
        raise _err(f"{where}: field {key!r} must be a {getattr(kind, '__name__', kind)}, got {v!r}")
    return v


def _eos_ids(path: Path, cfg: Dict) -> List[int]:
    """End-of-sequence ids: generation_config.json first (as transformers), then config.json; an int or a list."""
    holders = []
    gen = path / "generation_config.json"
    if gen.is_file():
        try:
            holders.append(("generation_config.json", json.loads(gen.read_text())))
        except ValueError as e:
            raise _err(f"{gen}: not JSON: {e}")
    holders.append(("config.json", cfg))
    for where, h in holders:
        v = h.get("eos_token_id")
        if v is None:
            continue
        vals = v if isinstance(v, list) else [v]
        if not vals or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in vals):
            raise _err(f"{where}: field 'eos_token_id' must be a token id or a list of them, got {v!r}")
        return [int(x) for x in vals]
    return []


def _rope(cfg: Dict) -> Tuple[float, Optional[Dict]]:
    """(rope_theta, rope_scaling or None) from ``rope_theta`` + ``rope_scaling`` (transformers 4) or
    ``rope_parameters`` (transformers 5)."""
    if cfg.get("rope_scaling") is None and isinstance(cfg.get("rope_parameters"), dict):
        rp = dict(cfg["rope_parameters"])
        theta = _get(rp, "rope_theta", float, "config.json rope_parameters")
        scaling = rp
        where = "rope_parameters"
    else:
        theta = _get(cfg, "rope_theta", float)
        scaling = cfg.get("rope_scaling")
        where = "rope_scaling"
    if theta <= 0:
        raise _err(f"config.json: field 'rope_theta' must be positive, got {theta}")
    if scaling is None:
        return theta, None
    if not isinstance(scaling, dict):
        raise _err(f"config.json: field {where!r} must be an object or null, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return theta, None
    if kind != "llama3":
        raise _err(f"config.json: {where}.rope_type {kind!r} is not supported (only 'llama3' and 'default')")
    out = {"rope_type": "llama3"}
    for k in models.LLAMA3_ROPE_KEYS:
        v = _get(scaling, k, float, f"config.json {where}")
        if v <= 0:
            raise _err(f"config.json: {where}.{k} must be positive, got {v}")
        out[k] = v
    if out["high_freq_factor"] < out["low_freq_factor"]:
        raise _err(f"config.json: {where}.high_freq_factor ({out['high_freq_factor']}) is below low_freq_factor "
                   f"({out['low_freq_factor']})")
    return theta, out


def _quantization(q: Any, d: fmt_.Dims) -> Tuple[int, int]:
    where = "config.json quantization"
    if not isinstance(q, dict):
        raise _err(f"config.json: field 'quantization' must be an object, got {q!r}")
    f = q.get("format")
    if f != fmt_.QUANT_FORMAT:
        raise _err(f"{where}: format {f!r} is not supported (only {fmt_.QUANT_FORMAT!r})")
    want = {"qmin": -8, "qmax": 7, "symmetric": True, "packed": True, "scale_dtype": "float16",
            "linear_group_axis": fmt_.LINEAR_GROUP_AXIS, "expert_group_axis": fmt_.EXPERT_GROUP_AXIS}
    for k, v in want.items():
        if k not in q:
            raise _err(f"{where}: field {k!r} is missing (expected {v!r})")
        if q[k] != v or type(q[k]) is not type(v):
            raise _err(f"{where}: field {k!r} is {json.dumps(q[k])}; only {json.dumps(v)} is supported")
    sizes = []
    for k in ("group_size", "embedding_group_size"):
        g = _get(q, k, int, where)
        if g not in quant.GROUP_SIZES:
            raise _err(f"{where}: {k} {g} is not supported (the kernels take {quant.GROUP_SIZES})")
        sizes.append(g)
    g, ge = sizes
    # the axes each group size divides: linears' in, experts' out (2I for gate_up, H for down)
    axes = {"hidden_size (linear in / expert down out)": d.hidden,
            "num_attention_heads * head_dim (o_proj in)": d.heads * d.head_dim,
            "intermediate_size_mlp (shared down_proj in)": d.shared,
            "2 * intermediate_size (expert gate_up out)": 2 * d.inter}
    for what, n in axes.items():
        if n % g:
            raise _err(f"{where}: group_size {g} does not divide {what} = {n}")
    if d.hidden % ge:
        raise _err(f"{where}: embedding_group_size {ge} does not divide hidden_size = {d.hidden}")
    return g, ge


def _size_name(d: fmt_.Dims) -> str:
    for name in ("S", "M", "L"):
        if fmt_.dims_of(fmt_.SIZES[name]) == d:
            return name
    return f"D{d.hidden}x{d.layers}"


def read_mobilemoe_config(path, max_seq_len: Optional[int] = None) -> MobileMoECheckpoint:
    """Read and check ``path/config.json``; raises :class:`MobileMoEFormatError` naming the field for
    anything the forward depends on that this project cannot compute exactly."""
    path = Path(path)
    p = path / "config.json"
    if not p.is_file():
        raise _err(f"{path}: no config.json")
    try:
        cfg = json.loads(p.read_text())
    except ValueError as e:
        raise _err(f"{p}: not JSON: {e}")
    if not isinstance(cfg, dict):
        raise _err(f"{p}: not a JSON object")
    if cfg.get("model_type") != MODEL_TYPE:
        raise _err(f"config.json: model_type is {cfg.get('model_type')!r}, not {MODEL_TYPE!r}")
    arch = cfg.get("architectures")
    if arch is not None and arch != ["MobileMoEForCausalLM"]:
        raise _err(f"config.json: field 'architectures' is {arch!r}; only ['MobileMoEForCausalLM'] is supported")
    ints = {k: _get(cfg, k, int) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "intermediate_size_mlp", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "num_local_experts", "num_experts_per_tok")}
    heads, layers = ints["num_attention_heads"], ints["num_hidden_layers"]
    head_dim = _get(cfg, "head_dim", int, default=0)
    if not head_dim:
        if ints["hidden_size"] % heads:
            raise _err("config.json: field 'head_dim' is missing and hidden_size is not divisible by "
                       "num_attention_heads")
        head_dim = ints["hidden_size"] // heads
    if head_dim % 2:
        raise _err(f"config.json: field 'head_dim' must be even (RoPE pairs), got {head_dim}")
    if heads % ints["num_key_value_heads"]:
        raise _err(f"config.json: num_attention_heads ({heads}) is not a multiple of num_key_value_heads "
                   f"({ints['num_key_value_heads']})")
    if ints["num_experts_per_tok"] > ints["num_local_experts"]:
        raise _err(f"config.json: num_experts_per_tok ({ints['num_experts_per_tok']}) exceeds num_local_experts "
                   f"({ints['num_local_experts']})")
    act = _get(cfg, "hidden_act", str)
    if act != "silu":
        raise _err(f"config.json: hidden_act {act!r} is not supported (only 'silu': SwiGLU experts)")
    eps = _get(cfg, "rms_norm_eps", float)
    if eps < 0:
        raise _err(f"config.json: field 'rms_norm_eps' must be >= 0, got {eps}")
    theta, scaling = _rope(cfg)
    rsf = _get(cfg, "routed_scaling_factor", float)
    if not _get(cfg, "norm_topk_prob", bool, default=True):
        raise _err("config.json: norm_topk_prob false is not supported (the MobileMoE routing renormalises the "
                   "top-k weights)")
    if "use_qk_norm" not in cfg:
        raise _err("config.json: field 'use_qk_norm' is missing: the MobileMoE forward depends on it (the published "
                   "configs say true: a weightless RMS norm of every q and k head after RoPE); add it explicitly")
    qk_norm = _get(cfg, "use_qk_norm", bool)
    tied = _get(cfg, "tie_word_embeddings", bool)
    for k in ("attention_bias", "mlp_bias"):
        if _get(cfg, k, bool, default=False):
            raise _err(f"config.json: {k} true is not supported (the decoder delegate has no biases)")
    if _get(cfg, "attn_temperature_tuning", bool, default=False):
        raise _err("config.json: attn_temperature_tuning true is not supported (Llama 4's NoPE-layer query "
                   "temperature)")
    nrl = _get(cfg, "no_rope_layers", list)
    if len(nrl) != layers or any(v not in (0, 1) or isinstance(v, bool) for v in nrl):
        raise _err(f"config.json: no_rope_layers must hold {layers} entries of 0 / 1, got {nrl!r}")
    nope = [i for i, v in enumerate(nrl) if v == 0]
    if nope:
        raise _err(f"config.json: no_rope_layers has 0 (a NoPE layer) at layers {nope}; only RoPE in every layer "
                   f"is supported")
    lt = cfg.get("layer_types")
    if lt is not None:
        if not isinstance(lt, list) or len(lt) != layers:
            raise _err(f"config.json: layer_types must list {layers} layer types, got {lt!r}")
        bad = sorted({t for t in lt if t != "full_attention"}, key=str)
        if bad:
            raise _err(f"config.json: layer_types {bad} are not supported (only 'full_attention')")
    for k in ("sliding_window", "attention_chunk_size"):
        if cfg.get(k) is not None:
            raise _err(f"config.json: {k} {cfg[k]!r} is not supported (full causal attention only)")
    step = _get(cfg, "interleave_moe_layer_step", int, default=1)
    if step != 1:
        raise _err(f"config.json: interleave_moe_layer_step {step} is not supported (an MoE block in every layer)")
    if cfg.get("moe_layers") is not None and cfg["moe_layers"] != list(range(layers)):
        raise _err(f"config.json: moe_layers {cfg['moe_layers']!r} is not supported (an MoE block in every layer)")
    if cfg.get("first_k_dense_replace"):
        raise _err(f"config.json: first_k_dense_replace {cfg['first_k_dense_replace']!r} is not supported")
    if cfg.get("quantization_config") is not None:
        raise _err("config.json: a transformers quantization_config is not the MobileMoE format (only the "
                   f"'quantization' block {fmt_.QUANT_FORMAT!r} is supported)")
    d = fmt_.Dims(vocab=ints["vocab_size"], hidden=ints["hidden_size"], inter=ints["intermediate_size"],
                  shared=ints["intermediate_size_mlp"], layers=layers, heads=heads,
                  kv_heads=ints["num_key_value_heads"], head_dim=head_dim, experts=ints["num_local_experts"],
                  top_k=ints["num_experts_per_tok"])
    g = ge = None
    if cfg.get("quantization") is not None:
        fmt = "qat"
        g, ge = _quantization(cfg["quantization"], d)
    else:
        fmt = "bf16"
    if max_seq_len is None:
        max_seq_len = min(_get(cfg, "max_position_embeddings", int, default=DEFAULT_MAX_SEQ_LEN), DEFAULT_MAX_SEQ_LEN)
    elif isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len <= 0:
        raise ValueError(f"max_seq_len must be a positive integer, got {max_seq_len!r}")
    size = _size_name(d)
    eos = _eos_ids(path, cfg)
    mc = models.ModelConfig(
        name=f"mobilemoe-{size}-{fmt}", vocab_size=d.vocab, dim=d.hidden, n_layers=layers, n_heads=heads,
        n_kv_heads=d.kv_heads, head_dim=head_dim, max_seq_len=int(max_seq_len), norm_eps=eps, rope_theta=theta,
        tie_embeddings=tied, ffn="moe", num_experts=d.experts, top_k=d.top_k, expert_hidden_dim=d.inter,
        shared_hidden_dim=d.shared, shared_gate=False, score_func="sigmoid", renormalize=True, route_scale=rsf,
        use_expert_bias=True, rope_style="interleaved", rope_scaling=scaling, qk_norm_eps=eps if qk_norm else None,
        renorm_eps=RENORM_EPS,
        extra={"source": MODEL_TYPE, "format": fmt, "checkpoint": str(path), "eos_token_ids": eos,
               "group_size": g, "embedding_group_size": ge},
    )
    return MobileMoECheckpoint(path=path, config=cfg, format=fmt, dims=d, model_config=mc, size=size, group_size=g,
                               embedding_group_size=ge, eos_token_ids=eos, tied=tied)


# ---------------------------------------------------------------------------------------------
# safetensors


class _Shards:
    """The checkpoint's tensors over ``model.safetensors`` or ``model.safetensors.index.json`` + shards."""

    def __init__(self, path: Path) -> None:
        try:
            from safetensors import safe_open
        except ImportError as e:  # a dependency of the package
            raise MobileMoEFormatError("reading MobileMoE checkpoints needs the safetensors package: "
                                       "pip install safetensors") from e
        index = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        if index.is_file():
            try:
                wm = json.loads(index.read_text())["weight_map"]
                if not isinstance(wm, dict):
                    raise TypeError("weight_map is not an object")
            except (ValueError, KeyError, TypeError) as e:
                raise _err(f"{index}: not a safetensors index ({e})")
            files = sorted(set(wm.values()))
        elif single.is_file():
            wm, files = None, ["model.safetensors"]
        else:
            raise _err(f"{path}: neither model.safetensors nor model.safetensors.index.json")
        self.files: Dict[str, Any] = {}
        self.where: Dict[str, str] = {}
        for f in files:
            fp = path / f
            if not fp.is_file():
                raise _err(f"{index}: shard {f} is missing")
            try:
                h = safe_open(str(fp), framework="pt")
                keys = list(h.keys())
            except Exception as e:  # SafetensorError: truncated or corrupt header / data
                raise _err(f"{fp}: cannot read it as safetensors ({type(e).__name__}: {e}); truncated or corrupt?")
            self.files[f] = h
            for k in keys:
                if wm is not None and wm.get(k) != f:
                    continue  # the index names the shard of each tensor
                self.where[k] = f
        if wm is not None:
            lost = sorted(k for k, f in wm.items() if k not in self.where)
            if lost:
                raise _err(f"{index}: tensors listed but not in their shard: {', '.join(lost[:10])}"
                           + (f" (+{len(lost) - 10} more)" if len(lost) > 10 else ""))

    def names(self):
        return set(self.where)

    def meta(self, name: str) -> Tuple[str, Tuple[int, ...]]:
        s = self.files[self.where[name]].get_slice(name)
        return s.get_dtype(), tuple(s.get_shape())

    def get(self, name: str) -> torch.Tensor:
        f = self.where[name]
        try:
            return self.files[f].get_tensor(name)
        except Exception as e:
            raise _err(f"{f}: cannot read tensor {name} ({type(e).__name__}: {e}); truncated or corrupt?")


def _list(names, n: int = 12) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" ... (+{len(names) - n} more)" if len(names) > n else "")


class _Reader:
    """Checked access to the tensors of one checkpoint (names, dtypes, shapes, finite values, scales)."""

    def __init__(self, ck: MobileMoECheckpoint) -> None:
        self.ck = ck
        self.shards = _Shards(ck.path)
        self.inv = fmt_.inventory(ck.config, ck.format, lm_head=not ck.tied)
        expected = {st.name: st for _, _, _, sts in self.inv for st in sts}
        found = self.shards.names()
        missing = sorted(set(expected) - found)
        unexpected = sorted(found - set(expected))
        if missing:
            other = "bf16" if ck.format == "qat" else "qat"
            other_names = {st.name for _, _, _, sts in fmt_.inventory(ck.config, other, not ck.tied) for st in sts}
            hint = ""
            if not ck.tied and any(n.startswith("lm_head") for n in missing):
                hint += (" (tie_word_embeddings is false: the untied LM head lm_head.* must be in the checkpoint)")
            if found and found <= other_names | {"lm_head.weight"}:
                hint += (f" (the files hold the {other} release's tensor names, but config.json "
                         f"{'has' if ck.format == 'qat' else 'has no'} a quantization block)")
            raise _err(f"{ck.path}: {len(missing)} of the {len(expected)} expected tensors are missing{hint}: "
                       f"expected {_list(missing)}; found {len(found)} tensors: "
                       f"{_list(unexpected) if unexpected else _list(found)}")
        if unexpected:
            raise _err(f"{ck.path}: tensors the MobileMoE forward does not use (refused rather than ignored): "
                       f"{_list(unexpected)}")
        for name, st in expected.items():
            dt, shape = self.shards.meta(name)
            if dt not in st.dtypes:
                raise _err(f"tensor {name}: dtype {dt}, expected {' or '.join(st.dtypes)}")
            if shape != st.shape:
                raise _err(f"tensor {name}: shape {list(shape)}, expected {list(st.shape)}")

    def get(self, st: fmt_.Stored) -> torch.Tensor:
        t = self.shards.get(st.name)
        if t.dtype != fmt_.ST_DTYPES[self.shards.meta(st.name)[0]] or tuple(t.shape) != st.shape:
            raise _err(f"tensor {st.name}: read {t.dtype} {list(t.shape)}, expected {list(st.shape)}")
        if t.is_floating_point():
            bad = ~torch.isfinite(t)
            if st.role == "scale":
                bad |= t <= 0
            if bool(bad.any()):
                idx = [int(i) for i in bad.nonzero()[0]]
                what = "zero, negative or non-finite scales" if st.role == "scale" else "non-finite values"
                raise _err(f"tensor {st.name}: {int(bad.sum())} {what} (first at index {idx}: {t[tuple(idx)].item()})")
        return t


# ---------------------------------------------------------------------------------------------
# The model


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=False)


def _dequant_linear(q: torch.Tensor, s: torch.Tensor, g: int) -> torch.Tensor:
    return quant.dequantize(q, s.to(torch.float32), g)


def load_mobilemoe(path, max_seq_len: Optional[int] = None, dtype: torch.dtype = torch.float32, *,
                   exact: bool = False) -> models.Transformer:
    """The MobileMoE checkpoint in ``path`` as a :class:`~mobilemoe_export.models.Transformer` (eval mode,
    no gradients) with ``max_seq_len`` positions (default: ``max_position_embeddings`` capped at 2048).

    ``model.cfg.name`` is ``"mobilemoe-{S|M|L}-{qat|bf16}"``; ``model.cfg.extra`` holds the release
    (``"format"``), ``"eos_token_ids"`` and the group sizes. QAT: INT4 modules with the checkpoint's
    integers and fp16 scales (``exact``: their fp32-activation kernels); bf16: fp32 weights (``dtype``
    float32, or float64 for reference use), quantized later by the export path (PTQ). Raises
    :class:`MobileMoEFormatError` for anything that cannot be computed exactly."""
    ck = read_mobilemoe_config(path, max_seq_len)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if dtype != torch.float32 and ck.format == "qat":
        raise ValueError("the QAT release runs on the INT4 kernels: dtype must be torch.float32")
    reader = _Reader(ck)
    cfg = ck.model_config
    with torch.device("meta"):
        model = models.Transformer(cfg)
    if ck.format == "qat":
        _fill_qat(model, reader, exact)
    else:
        _fill_bf16(model, reader)
    # what no tensor of the checkpoint holds
    cos, sin = models.rope_tables_of(cfg)
    model.register_buffer("rope_cos", cos, persistent=False)
    model.register_buffer("rope_sin", sin, persistent=False)
    model.register_buffer("cache_positions", torch.arange(cfg.max_seq_len), persistent=False)
    for layer in model.layers:
        a = layer.attention
        shape = (1, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)
        a.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        a.register_buffer("v_cache", torch.zeros(shape), persistent=False)
        a.register_buffer("neg_inf", torch.tensor(float("-inf")), persistent=False)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"load_mobilemoe: not loaded (internal error): {left[:8]}")
    if dtype != torch.float32:
        model = model.to(dtype)
    if ck.format == "bf16":
        log.info("%s: bf16 release; the export path quantizes it (PTQ), this is not the QAT release", ck.path)
    return model.eval().requires_grad_(False)


def _layer_stored(reader: _Reader):
    """{base name: (kind, logical shape, {role: Stored})}"""
    return {b: (k, s, {st.role: st for st in sts}) for b, k, s, sts in reader.inv}


def _fill_bf16(model: models.Transformer, reader: _Reader) -> None:
    inv = _layer_stored(reader)
    f32 = lambda base: reader.get(inv[base][2]["weight"]).to(torch.float32)  # noqa: E731
    d = reader.ck.dims
    model.tok_embeddings.weight = _param(f32("model.embed_tokens"))
    model.output.weight = model.tok_embeddings.weight if reader.ck.tied else _param(f32("lm_head"))
    model.norm.weight = _param(f32("model.norm"))
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        layer.attention_norm.weight = _param(f32(p + "input_layernorm"))
        layer.ffn_norm.weight = _param(f32(p + "post_attention_layernorm"))
        a = layer.attention
        for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
            getattr(a, ours).weight = _param(f32(p + "self_attn." + theirs))
        ff = layer.feed_forward
        ff.router.weight = _param(f32(p + "feed_forward.router"))
        ff.register_buffer("expert_bias", f32(p + "feed_forward.expert_bias"))
        gu = f32(p + "feed_forward.experts.gate_up")  # [E, H, 2I] = [E, in, out]
        dn = f32(p + "feed_forward.experts.down")  # [E, I, H]
        ff.experts_w1 = _param(gu[:, :, : d.inter].transpose(1, 2))  # [E, I, H] = [E, out, in]
        ff.experts_w3 = _param(gu[:, :, d.inter:].transpose(1, 2))
        ff.experts_w2 = _param(dn.transpose(1, 2))  # [E, H, I]
        se = ff.shared_expert
        se.w1.weight = _param(f32(p + "feed_forward.shared_expert.gate_proj"))
        se.w3.weight = _param(f32(p + "feed_forward.shared_expert.up_proj"))
        se.w2.weight = _param(f32(p + "feed_forward.shared_expert.down_proj"))


def _fill_qat(model: models.Transformer, reader: _Reader, exact: bool) -> None:
    from ..quantization.transforms import MobileMoEFFN, MobileMoELinear, MoESpec

    have = {f.name for f in dataclasses.fields(MoESpec)}
    if not {"scales_axis", "shared_q"} <= have:
        raise RuntimeError("the QAT release needs transforms.MoESpec(scales_axis='out', shared_q=...) (experts "
                           "whose scales are grouped along the output axis), which this build does not have")
    ck = reader.ck
    inv = _layer_stored(reader)
    G, GE = ck.group_size, ck.embedding_group_size

    def qs(base: str):
        """(q int8 [logical shape], stored scales) of a QAT weight."""
        roles = inv[base][2]
        return fmt_.unpack_int4(reader.get(roles["qweight"])), reader.get(roles["scale"])

    def linear(base: str, g: int, keep: Optional[list] = None) -> MobileMoELinear:
        q, s = qs(base)
        s32 = s.to(torch.float32)
        w = _dequant_linear(q, s32, g)  # exact: a 4-bit integer times an fp16 value
        if keep is not None:
            keep.append(w)
        return MobileMoELinear(w, None, group_size=g, weight_bits=4, exact=exact, name=base, qweight=(q, s32),
                               scales_dtype=torch.float16)

    f32 = lambda base: reader.get(inv[base][2]["weight"]).to(torch.float32)  # noqa: E731
    table: list = []
    emb = linear("model.embed_tokens", GE, table)
    model.tok_embeddings.weight = _param(table.pop())  # the eager model's table: the dequantized INT4 rows
    model.output = emb if ck.tied else linear("lm_head", G)
    model.norm.weight = _param(f32("model.norm"))
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        layer.attention_norm.weight = _param(f32(p + "input_layernorm"))
        layer.ffn_norm.weight = _param(f32(p + "post_attention_layernorm"))
        a = layer.attention
        for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
            setattr(a, ours, linear(p + "self_attn." + theirs, G))
        gu_q, gu_s = qs(p + "feed_forward.experts.gate_up")  # [E, H, 2I] (in, out), [E, H, 2I/G]
        dn_q, dn_s = qs(p + "feed_forward.experts.down")  # [E, I, H], [E, I, H/G]
        E = ck.dims.experts
        shared = tuple(qs(p + f"feed_forward.shared_expert.{n}") for n in ("gate_proj", "up_proj", "down_proj"))
        spec = MoESpec(
            router_weight=f32(p + "feed_forward.router"), top_k=ck.dims.top_k, score_func="sigmoid",
            renormalize=True, route_scale=float(model.cfg.route_scale),
            expert_bias=f32(p + "feed_forward.expert_bias"),
            q13=[(gu_q[e].t().contiguous(), gu_s[e]) for e in range(E)],
            q2=[(dn_q[e].t().contiguous(), dn_s[e]) for e in range(E)],
            hidden_dim=ck.dims.inter, group_size=G, weight_bits=4, scales_dtype=torch.float16, output="same",
            renorm_eps=RENORM_EPS, scales_axis="out", shared_q=shared,
        )
        layer.feed_forward = MobileMoEFFN(spec, group_size=G, weight_bits=4, exact=exact, name=p + "feed_forward",
                                          scales_dtype=torch.float16)
