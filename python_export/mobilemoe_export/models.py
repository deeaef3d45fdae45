"""Decoder-only MoE language models (MobileMoE-like) built for ExecuTorch export.

Architecture (Llama-style, pre-norm):

    h = embed(tokens)
    for each layer:  h = h + Attn(RMSNorm(h));  h = h + FFN(RMSNorm(h))
    logits = head(RMSNorm(h))

- Attention: grouped-query attention (``n_heads`` query heads sharing ``n_kv_heads`` key/value
  heads), rotary position embedding (``rope_style``: half-split "rotate_half" by default, or
  ``"interleaved"`` adjacent pairs 2i/2i+1 as Meta's Llama / MobileMoE; ``rope_theta``, optional
  Llama 3 frequency scaling ``rope_scaling``), an optional weightless RMS norm of every query and
  key head after RoPE (``qk_norm_eps``, MobileMoE's QK-norm), and a
  **static KV cache**: per layer two buffers ``k_cache``/``v_cache`` of shape
  ``[1, n_kv_heads, max_seq_len, head_dim]``, updated in-graph with ``index_copy_`` at ``input_pos``.
  Attention always runs over the whole cache with a mask ``key_pos <= query_pos`` built from
  ``input_pos`` (no data-dependent shapes, nothing like ``.item()``), so it exports with a dynamic
  token dimension and the caches become mutable buffers of the ``.pte`` (memory-planned, kept
  between ``forward`` calls of one loaded method). ExecuTorch does not serialize the initial
  value of a mutated buffer; masked scores are replaced (``torch.where``), so stale key slots
  never matter, and the runtimes used here (``extension::Module``, the Python pybindings) hand out
  zeroed planned memory, so unwritten value slots are 0 (times a zero attention weight).
- FFN: :class:`mobilemoe_export.moe_block.MoEFeedForward` (fine-grained routed SwiGLU experts +
  one shared expert), or a dense SwiGLU :class:`FeedForward` for the dense baseline.

Forward contract (the same for the eager model and the exported ``.pte``)::

    forward(tokens: int64 [1, S], input_pos: int64 [S]) -> logits: float32 [1, V]

``input_pos`` holds the absolute positions of the ``S`` tokens (``start .. start+S``), each in
``0 .. max_seq_len``. Only the **last token's** logits are returned (``[1, V]``): prefill does not
pay for ``S x V`` LM-head work. Build with ``all_logits=True`` to get ``[1, S, V]`` instead (for
evaluation). A runner should take the last ``V`` floats of the output, which is right for both.
The caller (``generate.py``, the Rust generator) checks ``start + S <= max_seq_len``: the graph
cannot raise, an out-of-range position fails inside ``index_copy`` with a less helpful message.

Presets (:data:`PRESETS`): ``tiny`` (tests and demo: 2 layers, D=128, vocab = the shipped
tokenizer's 1024); ``S`` / ``M`` / ``L``, Meta's MobileMoE as published (1.263B total / 272.5M
active, 2.818B / 528M, 5.326B / 922M; docs/mobilemoe_format.md): S's shape as read from its
config.json, L's from its model card, **M's inferred** (the only shape giving 2.8B / 0.5B with the
same pattern; not published); and ``mobilellm-pro``, the dense baseline of the paper's speed table
(MobileLLM-Pro, 1.08B: dense SwiGLU FFN, 3:1 local / global attention with a 512-token window).
:func:`count_params` computes the counts from the config alone; never instantiate S/M/L or
mobilellm-pro in tests (use ``device="meta"``). :func:`dense_baseline` gives the dense model
with the same dimensions and attention whose FFN holds the same number of weights (so the same
INT4 weight bytes) as the MoE FFN — by default matching the *total* expert weights; pass
``match="active"`` to match the weights read per token instead.

Sliding-window (local) attention: with ``sliding_window = W > 0`` every layer not listed in
``global_layers`` lets the query at position ``p`` see only keys ``p - W < key <= p`` (W keys,
itself included); :meth:`ModelConfig.layer_window` gives each layer's window (0 = global). The
eager model masks its full-size static cache; the whole-decoder delegate keeps a ring of ``W + 32``
slots for such a layer (``decoder_ops.cache_rows``).

Parameter counting convention: embeddings and the LM head count in both totals (the tied matrix
once); the router, norms, shared expert and attention count as active; of the routed experts, only
``top_k`` of ``num_experts`` count as active. The ``expert_bias`` buffer is not a parameter.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._paths import ASSETS_DIR
from .moe_block import MoEFeedForward, route

ASSETS = ASSETS_DIR
DEFAULT_TOKENIZER = ASSETS / "tokenizer.json"
ROPE_STYLES = ("half_split", "interleaved")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: Dict) -> torch.Tensor:
    """Llama 3 frequency scaling (transformers' ``_compute_llama3_parameters``, Meta's
    ``apply_scaling``): wavelengths shorter than ``original / high_freq_factor`` are kept, longer
    than ``original / low_freq_factor`` divided by ``factor``, and those between interpolated
    smoothly. ``scaling`` with ``rope_type`` (or ``type``) ``"default"`` returns ``inv_freq``."""
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict, got {type(scaling).__name__}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return inv_freq
    if kind != "llama3":
        raise ValueError(f"rope_scaling: rope_type {kind!r} is not supported (only 'llama3' and 'default')")
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in scaling]
    if missing:
        raise ValueError(f"rope_scaling (llama3) lacks {', '.join(missing)}")
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    if not (factor > 0 and low > 0 and high > 0 and old > 0):
        raise ValueError(f"rope_scaling (llama3): factor, low/high_freq_factor and original_max_position_embeddings "
                         f"must be positive, got {factor}, {low}, {high}, {old}")
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    if high != low:
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        out = torch.where(medium, smoothed, out)
    return out


@dataclass
class ModelConfig:
    """Everything the forward depends on. Presets (:data:`PRESETS`, :func:`get_config`): ``tiny``;
    MobileMoE ``S`` (as published), ``M`` (dimensions INFERRED, not published), ``L`` (its model
    card); ``mobilellm-pro`` (the dense baseline, with local / global attention)."""

    name: str = "custom"
    vocab_size: int = 1024
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: Optional[int] = None  # default dim // n_heads
    max_seq_len: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    # FFN: "moe" (routed experts + shared expert) or "dense" (SwiGLU with dense_hidden_dim)
    ffn: str = "moe"
    num_experts: int = 8
    top_k: int = 2
    expert_hidden_dim: int = 64
    shared_hidden_dim: int = 128  # 0 = no shared expert
    shared_gate: bool = False
    score_func: str = "softmax"
    renormalize: bool = True
    route_scale: float = 1.0
    use_expert_bias: bool = False
    dense_hidden_dim: int = 0
    # MobileMoE checkpoints (mobilemoe_export.sources.mobilemoe); the defaults keep the original
    # forward bit for bit. rope_style: "half_split" (rotate_half) | "interleaved" (pairs 2i, 2i+1);
    # rope_scaling: None | {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; qk_norm_eps: weightless RMS norm of each q / k head after
    # RoPE; renorm_eps: routing renormalisation w / (sum(w) + renorm_eps) (moe_block.route)
    rope_style: str = "half_split"
    rope_scaling: Optional[Dict] = None
    qk_norm_eps: Optional[float] = None
    renorm_eps: float = 0.0
    # sliding-window (local) attention: sliding_window W > 0 makes every layer not in global_layers
    # (None: none) attend to its last W positions only (key_pos > query_pos - W); 0 = all global.
    # Layer indices >= n_layers are ignored (so --n-layers can shorten a preset).
    sliding_window: int = 0
    global_layers: Optional[List[int]] = None
    extra: Dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim={self.dim} not divisible by n_heads={self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} not divisible by n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even (RoPE)")
        if self.ffn not in ("moe", "dense"):
            raise ValueError(f"ffn must be 'moe' or 'dense', got {self.ffn!r}")
        if self.ffn == "dense" and self.dense_hidden_dim <= 0:
            raise ValueError("ffn='dense' needs dense_hidden_dim > 0")
        if self.max_seq_len <= 0:
            raise ValueError("max_seq_len must be positive")
        if self.rope_style not in ROPE_STYLES:
            raise ValueError(f"rope_style must be one of {ROPE_STYLES}, got {self.rope_style!r}")
        if self.rope_scaling is not None:
            llama3_inv_freq(torch.ones(1, dtype=torch.float64), self.rope_scaling)  # validates the dict
        if self.qk_norm_eps is not None and not self.qk_norm_eps >= 0:
            raise ValueError(f"qk_norm_eps must be None or >= 0, got {self.qk_norm_eps}")
        if not self.renorm_eps >= 0:
            raise ValueError(f"renorm_eps must be >= 0, got {self.renorm_eps}")
        if isinstance(self.sliding_window, bool) or not isinstance(self.sliding_window, int) or self.sliding_window < 0:
            raise ValueError(f"sliding_window must be an integer >= 0, got {self.sliding_window!r}")
        if self.global_layers is not None:
            gl = list(self.global_layers)
            if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in gl):
                raise ValueError(f"global_layers must list layer indices >= 0, got {self.global_layers!r}")
            self.global_layers = sorted(set(gl))

    def layer_window(self, layer: int) -> int:
        """The attention window of layer ``layer``: ``sliding_window`` for a local layer, 0 (the whole
        causal context) for a global one."""
        if self.sliding_window <= 0 or (self.global_layers is not None and layer in self.global_layers):
            return 0
        return self.sliding_window

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
# MobileMoE (Meta, facebook/MobileMoE-{S,M,L}; docs/mobilemoe_format.md): GQA with 4 KV heads
# of 64, QK-norm (a weightless RMS norm of every q / k head after RoPE), RoPE on adjacent pairs with
# Llama 3 frequency scaling, 60 routed SwiGLU experts, top-4 by sigmoid score + a selection-only expert
# bias, weights renormalised w * 2.5 / (sum(w) + 1e-20), one ungated shared expert, vocab 128,256 tied.
# THE definition of these shapes: sources/mobilemoe_format.py writes the config.json of each size from
# these presets, and the checkpoint loader (sources/mobilemoe.py) maps a config.json back onto a
# ModelConfig (tests check the round trip).
MOBILEMOE_CONTEXT = 8192  # max_position_embeddings of the published configs
MOBILEMOE_ROPE_SCALING = {"rope_type": "llama3", "factor": 16, "original_max_position_embeddings": MOBILEMOE_CONTEXT,
                          "low_freq_factor": 1.0, "high_freq_factor": 1.0}  # as read
MOBILEMOE_RENORM_EPS = 1e-20
DEFAULT_MAX_SEQ_LEN = 2048  # of the full-size presets (any length up to MOBILEMOE_CONTEXT works)


def _mobilemoe(name: str, dim: int, n_layers: int, n_heads: int, expert_hidden_dim: int) -> ModelConfig:
    """A MobileMoE size: S's pattern (config.json of MobileMoE-S-QAT as read) with its dimensions; the
    shared expert is 4 routed experts wide (2 D)."""
    return ModelConfig(
        name=name, vocab_size=128256, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=4, head_dim=64,
        max_seq_len=DEFAULT_MAX_SEQ_LEN, norm_eps=1e-5, rope_theta=500000.0, tie_embeddings=True,
        ffn="moe", num_experts=60, top_k=4, expert_hidden_dim=expert_hidden_dim, shared_hidden_dim=2 * dim,
        shared_gate=False, score_func="sigmoid", renormalize=True, route_scale=2.5, use_expert_bias=True,
        rope_style="interleaved", rope_scaling=dict(MOBILEMOE_ROPE_SCALING), qk_norm_eps=1e-5,
        renorm_eps=MOBILEMOE_RENORM_EPS,
    )


# What each preset is (preset_summary adds its shape): M's dimensions are INFERRED, not published.
PRESET_LABELS = {
    "tiny": "tests / demo",
    "S": "MobileMoE-S as published",
    "M": "MobileMoE-M, dimensions INFERRED (not published)",
    "L": "MobileMoE-L from its model card",
    "mobilellm-pro": "MobileLLM-Pro, the dense baseline of the paper's speed table",
}


PRESETS: Dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny", vocab_size=1024, dim=128, n_layers=2, n_heads=4, n_kv_heads=2,
        max_seq_len=256, num_experts=8, top_k=2, expert_hidden_dim=64, shared_hidden_dim=128,
        tie_embeddings=False,
    ),
    "S": _mobilemoe("S", dim=768, n_layers=20, n_heads=12, expert_hidden_dim=384),  # as read (config.json)
    "M": _mobilemoe("M", dim=1024, n_layers=26, n_heads=16, expert_hidden_dim=512),  # INFERRED, not published
    "L": _mobilemoe("L", dim=1280, n_layers=32, n_heads=20, expert_hidden_dim=640),  # the L model card
    # MobileLLM-Pro (MobileLLMP1ForCausalLM): 30 layers, D 1280, dense SwiGLU 6144, 20 / 4 heads x 64,
    # vocab 202,048 tied; layer_types full_attention at 0, 4, ..., 28 and 29, sliding_attention (512)
    # elsewhere (its published config.json). Its rope_theta / rope_scaling were not found: theta
    # 500,000 (Llama 3 / 4's, MobileMoE's) without scaling is assumed. RoPE on adjacent pairs
    # ("interleaved"): the model is Llama 4 style (Meta's complex-rotation RoPE, as MobileMoE), and it
    # keeps the two sides of the speed comparison on the same attention kernel; the style changes no
    # cost. Its QK-norm and attn_scale (Llama 4's NoPE-layer temperature) are left out: not confirmed
    # for this model, and they do not change the cost.
    "mobilellm-pro": ModelConfig(
        name="mobilellm-pro", vocab_size=202048, dim=1280, n_layers=30, n_heads=20, n_kv_heads=4, head_dim=64,
        max_seq_len=DEFAULT_MAX_SEQ_LEN, norm_eps=1e-5, rope_theta=500000.0, tie_embeddings=True,
        ffn="dense", dense_hidden_dim=6144, rope_style="interleaved",
        sliding_window=512, global_layers=list(range(0, 30, 4)) + [29],
    ),
}


def layer_windows(cfg: ModelConfig) -> List[int]:
    """The attention window of every layer of ``cfg`` (0 = global; :meth:`ModelConfig.layer_window`)."""
    return [cfg.layer_window(i) for i in range(cfg.n_layers)]


def get_config(preset: str, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[preset])  # (rope_scaling / global_layers: not shared with the preset)
    return cfg.replace(**overrides) if overrides else cfg


def preset_summary(preset: str) -> str:
    """One line on ``preset``: what it is (:data:`PRESET_LABELS`) and its shape, from the config."""
    c = PRESETS[preset]
    parts = [f"{c.n_layers} layers", f"D={c.dim}", f"{c.n_heads}/{c.n_kv_heads} heads"]
    if c.ffn == "moe":
        parts.append(f"{c.num_experts} experts x {c.expert_hidden_dim} top-{c.top_k}"
                     + (f" + shared {c.shared_hidden_dim}" if c.shared_hidden_dim else ""))
    else:
        parts.append(f"dense SwiGLU {c.dense_hidden_dim}")
    if c.sliding_window:
        n_global = layer_windows(c).count(0)
        parts.append(f"{c.n_layers - n_global} local (window {c.sliding_window}) / {n_global} global layers")
    parts.append(f"vocab {c.vocab_size}")
    n = count_params(c)
    parts.append(f"{n['total'] / 1e9:.3f}B" + (f" / {n['active'] / 1e6:.1f}M active" if n["active"] != n["total"] else ""))
    return f"{PRESET_LABELS.get(preset, preset)}: " + ", ".join(parts)


def _round_up(x: float, m: int) -> int:
    return int(math.ceil(x / m) * m)


def dense_baseline(cfg: ModelConfig, match: str = "total", multiple: int = 256) -> ModelConfig:
    """Dense counterpart of an MoE config: same D, layers, attention, vocab; dense SwiGLU FFN whose
    weight count (hence INT4 weight bytes, scales included, at any group size) equals the MoE FFN's
    routed experts + shared expert: all of them (``match="total"``) or those read per token
    (``match="active"``). The hidden size is rounded to a multiple of ``multiple``."""
    if cfg.ffn != "moe":
        raise ValueError("dense_baseline needs an MoE config")
    n_exp = cfg.num_experts if match == "total" else cfg.top_k if match == "active" else None
    if n_exp is None:
        raise ValueError("match must be 'total' or 'active'")
    hidden = n_exp * cfg.expert_hidden_dim + cfg.shared_hidden_dim
    return cfg.replace(name=f"{cfg.name}-dense-{match}", ffn="dense", dense_hidden_dim=_round_up(hidden, multiple))


# --------------------------------------------------------------------------------------------
# Parameter counting (from the config alone)
# --------------------------------------------------------------------------------------------
def count_params(cfg: ModelConfig) -> Dict[str, int]:
    """Parameter counts computed from the config: ``total``, ``active`` (per token), and parts.

    ``quantizable_total``/``quantizable_active``: weights of the FFN matrices (routed experts,
    shared expert, dense FFN) that ``quantize_moe`` stores as INT4/INT8."""
    D, V, L = cfg.dim, cfg.vocab_size, cfg.n_layers
    hd = cfg.head_dim
    attn = D * cfg.n_heads * hd * 2 + D * cfg.n_kv_heads * hd * 2
    norms = 2 * D
    if cfg.ffn == "moe":
        router = D * cfg.num_experts
        per_expert = 3 * D * cfg.expert_hidden_dim
        shared = 3 * D * cfg.shared_hidden_dim if cfg.shared_hidden_dim else 0
        gate = D if (cfg.shared_gate and cfg.shared_hidden_dim) else 0
        ffn_total = router + cfg.num_experts * per_expert + shared + gate
        ffn_active = router + cfg.top_k * per_expert + shared + gate
        q_total = cfg.num_experts * per_expert + shared
        q_active = cfg.top_k * per_expert + shared
    else:
        ffn_total = ffn_active = q_total = q_active = 3 * D * cfg.dense_hidden_dim
    embed = V * D
    head = 0 if cfg.tie_embeddings else V * D
    layer_total = attn + norms + ffn_total
    layer_active = attn + norms + ffn_active
    total = embed + head + L * layer_total + D
    active = embed + head + L * layer_active + D
    return {
        "total": total,
        "active": active,
        "embedding": embed + head,
        "attention": L * attn,
        "ffn_total": L * ffn_total,
        "ffn_active": L * ffn_active,
        "quantizable_total": L * q_total,
        "quantizable_active": L * q_active,
    }


def int4_weight_bytes(cfg: ModelConfig, group_size: int = 32, weight_bits: int = 4) -> int:
    """Bytes of the quantized FFN weights in the T16K4 layout (data + fp32 scales, rows padded to
    16), per docs/DESIGN.md section 2."""

    def mat(n: int, k: int) -> int:
        np_ = _round_up(n, 16)
        return np_ * k * weight_bits // 8 + np_ * (k // group_size) * 4

    D = cfg.dim
    if cfg.ffn == "moe":
        F_ = cfg.expert_hidden_dim
        per_layer = cfg.num_experts * (mat(2 * F_, D) + mat(D, F_))
        if cfg.shared_hidden_dim:
            per_layer += mat(2 * cfg.shared_hidden_dim, D) + mat(D, cfg.shared_hidden_dim)
    else:
        Fd = cfg.dense_hidden_dim
        per_layer = mat(2 * Fd, D) + mat(D, Fd)
    return cfg.n_layers * per_layer


def count_module_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim: int, max_seq_len: int, theta: float, scaling: Optional[Dict] = None):
    """cos / sin tables ``[max_seq_len, head_dim / 2]`` (float64 angles, float32 tables), with the
    Llama 3 frequency scaling ``scaling`` if given (:func:`llama3_inv_freq`)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is not None:
        inv = llama3_inv_freq(inv, scaling)
    ang = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv)
    return ang.cos().to(torch.float32), ang.sin().to(torch.float32)


def rope_tables_of(cfg: "ModelConfig"):
    return rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "half_split") -> torch.Tensor:
    """x: [1, S, H, hd]; cos/sin: [S, hd/2]. ``style`` "half_split" rotates (x[i], x[i + hd/2])
    (rotate_half), "interleaved" the adjacent pairs (x[2i], x[2i+1]) (Meta's complex form)."""
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    if style == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def head_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMS norm over the last (head) dimension: ``x * rsqrt(mean(x^2) + eps)``."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class Attention(nn.Module):
    """GQA with RoPE, optional QK-norm and a static KV cache. ``window`` > 0: sliding-window (local)
    attention, applied through the mask the caller passes (:meth:`Transformer.forward` builds it from
    this attribute); the cache stays ``max_seq_len`` long."""

    def __init__(self, cfg: ModelConfig, window: int = 0) -> None:
        super().__init__()
        self.window = int(window)
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.n_rep = cfg.n_heads // cfg.n_kv_heads
        self.max_seq_len = cfg.max_seq_len
        self.rope_style = cfg.rope_style
        self.qk_norm_eps = cfg.qk_norm_eps
        D = cfg.dim
        self.wq = nn.Linear(D, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(D, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(D, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, D, bias=False)
        shape = (1, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.register_buffer("neg_inf", torch.tensor(float("-inf")), persistent=False)

    def forward(self, x, input_pos, cos, sin, mask):
        _, S, _ = x.shape
        q = self.wq(x).view(1, S, self.n_heads, self.head_dim)
        k = self.wk(x).view(1, S, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(1, S, self.n_kv_heads, self.head_dim)
        q = apply_rope(q, cos, sin, self.rope_style)
        k = apply_rope(k, cos, sin, self.rope_style)
        if self.qk_norm_eps is not None:
            q = head_rms_norm(q, self.qk_norm_eps)
            k = head_rms_norm(k, self.qk_norm_eps)
        # static KV cache update at input_pos (a mutable buffer after export)
        self.k_cache.index_copy_(2, input_pos, k.transpose(1, 2))
        self.v_cache.index_copy_(2, input_pos, v.transpose(1, 2))
        # GQA without repeating K/V: q [1, Hkv, rep*S, hd] against the cache [1, Hkv, T, hd]
        q = q.view(1, S, self.n_kv_heads, self.n_rep, self.head_dim).permute(0, 2, 3, 1, 4)
        q = q.reshape(1, self.n_kv_heads, self.n_rep * S, self.head_dim)
        scores = torch.matmul(q, self.k_cache.transpose(2, 3)) * self.scale  # [1, Hkv, rep*S, T]
        # where (not + -inf): robust to whatever sits in not-yet-written cache slots
        scores = torch.where(mask, scores.view(1, self.n_kv_heads, self.n_rep, S, self.max_seq_len), self.neg_inf)
        p = torch.softmax(scores, dim=-1).view(1, self.n_kv_heads, self.n_rep * S, self.max_seq_len)
        o = torch.matmul(p, self.v_cache)  # [1, Hkv, rep*S, hd]
        o = o.view(1, self.n_kv_heads, self.n_rep, S, self.head_dim).permute(0, 3, 1, 2, 4)
        return self.wo(o.reshape(1, S, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """Dense SwiGLU FFN (the dense baseline): ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _RenormEpsMoE(MoEFeedForward):
    """:class:`MoEFeedForward` whose routing renormalises with ``w / (sum(w) + renorm_eps)``
    (MobileMoE: 1e-20). A ``renorm_eps`` attribute that :func:`mobilemoe_export.lowering.decoder.lower_decoder`
    carries over to the quantized block."""

    def __init__(self, *args, renorm_eps: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.renorm_eps = float(renorm_eps)

    def route(self, x2d: torch.Tensor):
        logits = self.router(x2d)
        return route(logits, self.top_k, self.score_func, self.renormalize, self.route_scale, self.expert_bias,
                     renorm_eps=self.renorm_eps)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, window=cfg.layer_window(layer))
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        if cfg.ffn == "moe":
            moe_cls, kw = MoEFeedForward, {}
            if cfg.renorm_eps:
                moe_cls, kw = _RenormEpsMoE, {"renorm_eps": cfg.renorm_eps}
            self.feed_forward = moe_cls(
                dim=cfg.dim,
                hidden_dim=cfg.expert_hidden_dim,
                num_experts=cfg.num_experts,
                top_k=cfg.top_k,
                score_func=cfg.score_func,
                renormalize=cfg.renormalize,
                route_scale=cfg.route_scale,
                use_expert_bias=cfg.use_expert_bias,
                shared_hidden_dim=cfg.shared_hidden_dim or None,
                shared_gate=cfg.shared_gate,
                **kw,
            )
        else:
            self.feed_forward = FeedForward(cfg.dim, cfg.dense_hidden_dim)

    def forward(self, x, input_pos, cos, sin, mask):
        h = x + self.attention(self.attention_norm(x), input_pos, cos, sin, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Decoder LM; see the module docstring for the forward contract."""

    def __init__(self, cfg: ModelConfig, all_logits: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.all_logits = all_logits
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables_of(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("cache_positions", torch.arange(cfg.max_seq_len), persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.cfg.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def reset_cache(self) -> None:
        """Zero every layer's KV cache (eager use; a loaded .pte is reset by reloading it)."""
        with torch.no_grad():
            for layer in self.layers:
                layer.attention.k_cache.zero_()
                layer.attention.v_cache.zero_()

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)  # [1, S, D]
        cos = self.rope_cos[input_pos]  # [S, hd/2]
        sin = self.rope_sin[input_pos]
        # [S, T] bool: query s sees cache slot t iff t <= input_pos[s]
        keys, queries = self.cache_positions.unsqueeze(0), input_pos.unsqueeze(1)
        mask = keys <= queries
        masks = {0: mask}
        for layer in self.layers:
            w = layer.attention.window
            if w not in masks:
                # sliding window w: and t > input_pos[s] - w (the last w positions, s's own included)
                masks[w] = mask & (keys > queries - w)
            h = layer(h, input_pos, cos, sin, masks[w])
        if not self.all_logits:
            h = h[:, -1, :]  # [1, D]
        return self.output(self.norm(h))

    def example_inputs(self, seq_len: int = 4):
        seq_len = min(seq_len, self.cfg.max_seq_len)
        return (torch.zeros(1, seq_len, dtype=torch.long), torch.arange(seq_len, dtype=torch.long))

    def dynamic_shapes(self):
        """dynamic_shapes for torch.export: token dimension in 1..max_seq_len."""
        seq = torch.export.Dim("seq_len", min=1, max=self.cfg.max_seq_len)
        return ({1: seq}, {0: seq})


def init_weights(model: Transformer, seed: int = 0) -> Transformer:
    """Seeded random weights, scaled so that a random model produces well separated logits (greedy
    decoding is then stable across numerically slightly different backends): embeddings N(0, 1),
    untied LM head N(0, 2/sqrt(D)) (logits std ~2; a tied head gives std ~sqrt(D)), norms 1,
    every other matrix U(+-1/sqrt(fan_in))."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.device.type == "meta":
                continue
            if name.endswith("norm.weight") or ".attention_norm." in name or ".ffn_norm." in name:
                p.fill_(1.0)
            elif name == "tok_embeddings.weight":
                p.normal_(0.0, 1.0, generator=g)
            elif name == "output.weight":
                p.normal_(0.0, 2.0 / math.sqrt(cfg.dim), generator=g)
            else:
                fan_in = p.shape[-1]
                bound = 1.0 / math.sqrt(fan_in)
                p.uniform_(-bound, bound, generator=g)
        # a small selection-only expert bias (sigmoid routing), drawn after the parameters so that
        # their values do not depend on it: small against the spread of the sigmoid scores (~0.13
        # with these weights), it changes some choices near the top-k boundary, no expert dominates
        for name, b in model.named_buffers():
            if name.endswith("expert_bias") and b.device.type != "meta":
                b.copy_(0.02 * torch.randn(b.shape, generator=g))
    return model


def build_model(cfg: ModelConfig, seed: int = 0, device: str = "cpu", all_logits: bool = False) -> Transformer:
    """Build the model. ``device="meta"`` allocates nothing (parameter counting, structure only)."""
    if device == "meta":
        with torch.device("meta"):
            return Transformer(cfg, all_logits=all_logits)
    torch.manual_seed(seed)
    model = Transformer(cfg, all_logits=all_logits)
    init_weights(model, seed)
    # inference only; also torch.export of the in-place cache update needs params without grad
    return model.eval().requires_grad_(False)


def save_checkpoint(model: Transformer, path) -> None:
    """Save ``{"config": dict, "state_dict": ...}`` (loadable with ``--checkpoint``)."""
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict()}, path)


def load_checkpoint(path, max_seq_len: Optional[int] = None) -> Transformer:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ModelConfig.from_dict(ck["config"])
    if max_seq_len is not None:
        cfg = cfg.replace(max_seq_len=max_seq_len)
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device="cpu")
    # buffers that are not in the state dict (caches, RoPE tables) are rebuilt
    cos, sin = rope_tables_of(cfg)
    model.rope_cos.copy_(cos)
    model.rope_sin.copy_(sin)
    model.cache_positions.copy_(torch.arange(cfg.max_seq_len))
    for layer in model.layers:
        layer.attention.neg_inf.fill_(float("-inf"))
    model.reset_cache()
    missing, unexpected = model.load_state_dict(ck["state_dict"], strict=False)
    missing = [m for m in missing if not m.endswith(("k_cache", "v_cache"))]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path}: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model.eval().requires_grad_(False)
