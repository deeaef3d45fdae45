"""A Hugging Face ``save_pretrained`` directory -> a MobileMoE ``.pte`` (``python -m mobilemoe_export --hf``).

The program has the interface of every MobileMoE ``.pte`` (``forward(tokens int64 [1, S],
input_pos int64 [S]) -> logits [1, S, V]``, the KV cache inside as mutable buffers), so the Python
and Rust generators run it unchanged. The KV cache is transformers' own ``StaticCache`` through
``transformers.integrations.executorch.TorchExportableModuleWithStaticCache``; it is traced with
``torch.export(strict=True)``, because the non-strict trace of transformers 5.24's cache breaks
ExecuTorch's ``run_decompositions`` ("expected compiled_fn to be GraphModule").

The tokenizer (``tokenizer.json``, ``tokenizer_config.json`` with the chat template inlined when the
checkpoint has one) is written beside the ``.pte``: ``mobilemoe_export.generate`` (and the Rust
``mobilemoe generate``) pick it up from there.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
from torch import nn

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# ExecuTorch Tensor.shape_dynamism of a static input (schema/program.fbs: TensorShapeDynamism)
_STATIC = 0


def _require_transformers():
    try:
        import transformers
    except ImportError as e:  # an optional extra of the package
        raise SystemExit("error: --hf needs Hugging Face transformers: pip install 'mobilemoe-export[hf]'") from e
    return transformers


def load_hf_model(path) -> nn.Module:
    """The causal LM of a ``save_pretrained`` directory, fp32, eval mode, with a static KV cache."""
    transformers = _require_transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise SystemExit(f"error: {path} is not a save_pretrained directory (no config.json)")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval().requires_grad_(False)
    text_cfg = model.config.get_text_config()
    text_cfg.use_cache = True
    model.generation_config.use_cache = True
    model.generation_config.cache_implementation = "static"
    return model


class HFCausalLMProgram(nn.Module):
    """``forward(tokens [1, S], input_pos [S]) -> logits [1, S, V]`` over a transformers causal LM
    with a ``StaticCache`` of ``max_seq_len`` positions (written at ``input_pos``)."""

    def __init__(self, model: nn.Module, max_seq_len: int) -> None:
        super().__init__()
        from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

        self.max_seq_len = int(max_seq_len)
        self.hf_config = model.config
        with _short_conv_state_layers(model):
            self.inner = TorchExportableModuleWithStaticCache(model, batch_size=1, max_cache_len=self.max_seq_len)
        for i, layer in enumerate(self.inner.static_cache.layers):
            if isinstance(layer, _short_conv_state_class()):
                self.inner.register_buffer(f"conv_state_{i}", layer.conv_state, persistent=False)
        self._fit_cache_to_the_model(model)

    def _fit_cache_to_the_model(self, model: nn.Module) -> None:
        """The wrapper sizes every cache layer from config (num_key_value_heads, head_dim), which is
        wrong for attention that caches something else (DeepSeek's MLA: one latent "head" of
        kv_lora_rank + rope dims). Size each layer from what one eager step actually caches."""
        with torch.no_grad():
            seen = model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True).past_key_values
        for i, (layer, got) in enumerate(zip(self.inner.static_cache.layers, getattr(seen, "layers", []))):
            k, v = getattr(got, "keys", None), getattr(got, "values", None)
            if not isinstance(k, torch.Tensor) or not isinstance(v, torch.Tensor) or not layer.supports_early_init:
                continue
            if (layer.keys.shape[1], layer.keys.shape[-1], layer.values.shape[-1]) == (k.shape[1], k.shape[-1], v.shape[-1]):
                continue
            layer.lazy_initialization(k[:, :, :0], v[:, :, :0])
            self.inner.register_buffer(f"key_cache_{i}", layer.keys, persistent=False)
            self.inner.register_buffer(f"value_cache_{i}", layer.values, persistent=False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=tokens, cache_position=input_pos)

    def example_inputs(self):
        n = min(4, self.max_seq_len)
        return torch.arange(1, n + 1, dtype=torch.long).reshape(1, n), torch.arange(n, dtype=torch.long)

    def dynamic_shapes(self):
        tokens = torch.export.Dim("tokens", min=1, max=self.max_seq_len)
        return ({1: tokens}, {0: tokens})


def _real_rotary(module: str, rotary_class: str, broadcast: Callable[[torch.Tensor], torch.Tensor]):
    """A rotary embedding that transformers computes with complex tensors (torch.polar,
    view_as_complex: ExecuTorch has no kernels for them, "kernel 'aten::polar.out' not found"), in
    real arithmetic: the same products on (cos, sin) pairs are the same numbers. ``broadcast`` puts
    the ``[B, S, dim/2]`` angles against the family's query layout."""
    import importlib

    from transformers.modeling_rope_utils import dynamic_rope_update

    mod = importlib.import_module(f"transformers.models.{module}.modeling_{module}")

    @dynamic_rope_update
    def rotary_forward(self, x, position_ids):
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        return torch.stack((freqs.cos(), freqs.sin()), dim=-1) * self.attention_scaling  # [B, S, dim/2, 2]

    def apply_rotary_emb(xq, xk, cos_sin):
        cos_sin = broadcast(cos_sin).to(xq.device)
        cos, sin = cos_sin[..., 0], cos_sin[..., 1]

        def rotate(x):
            pairs = x.float().reshape(*x.shape[:-1], -1, 2)
            re, im = pairs[..., 0], pairs[..., 1]
            return torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1).flatten(3).type_as(x)

        return rotate(xq), rotate(xk)

    return [(getattr(mod, rotary_class), "forward", rotary_forward), (mod, "apply_rotary_emb", apply_rotary_emb)]


@functools.lru_cache(maxsize=None)
def _short_conv_state_class():
    from transformers.cache_utils import StaticLayer

    class ShortConvState(StaticLayer):
        """The cache layer of a short-convolution layer (LFM2's ``conv`` layers) in the exported program:
        ``conv_state`` [1, hidden, kernel - 1], the last conv inputs of the sequence so far (a mutable
        buffer like the KV cache). transformers' ``LinearAttentionLayer`` cannot be exported (its
        prefill/decode switch is a Python flag, its states are allocated lazily), and the executorch
        wrapper needs keys and values on every layer: this one has none (a 0-length ``StaticLayer``, as
        the wrapper backs KV-sharing layers). Nothing updates its ``cumulative_length``, so it stays at
        the call's first position (the wrapper sets it): 0 starts a new sequence. The attention mask,
        built for the first layer that is not ``LinearAttention``, may be built for this one: it
        reports the attention layers' sizes (``max_cache_len`` keys from position 0)."""

        def __init__(self, hidden: int, kernel: int, max_cache_len: int) -> None:
            super().__init__(0)
            self.conv_state = torch.zeros(1, hidden, kernel - 1)
            self.mask_length = max_cache_len

        def get_mask_sizes(self, query_length: int) -> tuple:
            return self.mask_length, 0

    return ShortConvState


# model_type -> the config attribute of its conv kernel size: families whose "conv" layers get a ShortConvState
_SHORT_CONV_FAMILIES = {"lfm2_moe": "conv_L_cache"}


@contextlib.contextmanager
def _short_conv_state_layers(model: nn.Module):
    """While the executorch wrapper builds its ``StaticCache``, the short-conv layers of
    :data:`_SHORT_CONV_FAMILIES` get a ``ShortConvState`` instead of a ``LinearAttentionLayer``."""
    cfg = model.config.get_text_config()
    if cfg.model_type not in _SHORT_CONV_FAMILIES:
        yield
        return
    import transformers.integrations.executorch as te
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    kernel = int(getattr(cfg, _SHORT_CONV_FAMILIES[cfg.model_type]))
    original = te.StaticCache

    class StaticCacheWithConvState(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for i, layer in enumerate(self.layers):
                if isinstance(layer, LinearAttentionCacheLayerMixin):
                    self.layers[i] = _short_conv_state_class()(cfg.hidden_size, kernel, kwargs["max_cache_len"])

    te.StaticCache = StaticCacheWithConvState
    try:
        yield
    finally:
        te.StaticCache = original


def _short_conv_with_state(module: str, conv_class: str):
    """The short convolution of ``conv_class`` (``in_proj`` -> B, C, x; ``C * conv(B * x)`` ->
    ``out_proj``) with its left context from a ``ShortConvState``: the previous call's last
    kernel - 1 inputs, zeros at position 0. transformers zero-pads a whole sequence on the left
    (``padding=kernel - 1``) and decodes from its cached inputs: the same products and sums."""
    import importlib

    import torch.nn.functional as F

    cls = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), conv_class)
    original, state_class = cls.forward, _short_conv_state_class()

    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        layer = cache.layers[self.layer_idx] if cache is not None else None
        if not isinstance(layer, state_class):
            return original(self, hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
        b, c, x = self.in_proj(hidden_states).transpose(-1, -2).chunk(3, dim=-2)
        bx = b * x  # [1, hidden, S]
        # left context: the previous call's last kernel - 1 inputs; a call at position 0 starts a new
        # sequence (zeros, as transformers' padding), whatever an earlier sequence left in the state
        context = layer.conv_state * (layer.cumulative_length != 0).to(bx.dtype)
        full = torch.cat([context, bx], dim=-1)
        layer.conv_state.copy_(full[:, :, -layer.conv_state.shape[-1]:])
        conv = F.conv1d(full, self.conv.weight, self.conv.bias, groups=full.shape[1])  # no padding: S outputs
        return self.out_proj((c * conv).transpose(-1, -2).contiguous())

    return [(cls, "forward", forward)]


# model_type -> its complex-valued RoPE in real arithmetic (the families whose code calls torch.polar /
# view_as_complex)
REAL_ROTARY_PATCHES = {
    # queries [B, H, S, d]
    "deepseek_v2": lambda: _real_rotary("deepseek_v2", "DeepseekV2RotaryEmbedding", lambda cs: cs.unsqueeze(1)),
    # queries [B, S, H, d]
    "llama4_text": lambda: _real_rotary("llama4", "Llama4TextRotaryEmbedding", lambda cs: cs[:, :, None]),
}
# model_type -> the patches that make its forward exportable to ExecuTorch (same numbers)
_EXPORT_PATCHES = {
    # LFM2's short-convolution layers, their state in the KV cache's place
    "lfm2_moe": lambda: _short_conv_with_state("lfm2_moe", "Lfm2MoeShortConv"),
    **REAL_ROTARY_PATCHES,
}


@contextlib.contextmanager
def exportable(model_type: str):
    """Within the block, the transformers code of ``model_type`` traces to ops ExecuTorch runs."""
    patches = _EXPORT_PATCHES[model_type]() if model_type in _EXPORT_PATCHES else []
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    try:
        for owner, attr, new in patches:
            setattr(owner, attr, new)
        yield
    finally:
        for owner, attr, old in saved:
            setattr(owner, attr, old)


def transformers_model_types(model: nn.Module) -> List[str]:
    """``model_type`` of every transformers config held by ``model`` or its submodules (each config and
    its text config: ``Llama4ForConditionalGeneration`` holds "llama4" and "llama4_text"). Empty when
    transformers was never imported (then no module can be a transformers one)."""
    if "transformers" not in sys.modules:
        return []
    from transformers import PretrainedConfig

    found: List[str] = []
    for m in model.modules():
        for cfg in (getattr(m, "config", None), getattr(m, "hf_config", None)):
            if not isinstance(cfg, PretrainedConfig):
                continue
            try:
                text = cfg.get_text_config()
            except ValueError:  # a config with several text configs names none: the outer one only
                text = cfg
            for c in (cfg, text):
                if c.model_type not in found:
                    found.append(c.model_type)
    return found


@contextlib.contextmanager
def exportable_model(model: nn.Module):
    """:func:`exportable` for every transformers family inside ``model`` (``export_pte`` traces within
    it, so the Python API exports what ``--hf`` exports)."""
    with contextlib.ExitStack() as stack:
        for model_type in transformers_model_types(model):
            stack.enter_context(exportable(model_type))
        yield


def default_max_seq_len(model: nn.Module, cap: int = 2048) -> int:
    n = getattr(model.config.get_text_config(), "max_position_embeddings", None) or cap
    return int(min(n, cap))


def param_counts(model: nn.Module) -> Dict[str, int]:
    """Total / active-per-token parameters (the unselected routed experts are inactive)."""
    from .hf_families import VERIFIED_BLOCKS

    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for m in model.modules():
        ex = getattr(m, "experts", None)
        if type(m).__name__ not in VERIFIED_BLOCKS or ex is None or not hasattr(ex, "gate_up_proj"):
            continue
        top_k = getattr(getattr(m, "gate", None) or getattr(m, "router", None), "top_k", None)
        if not isinstance(top_k, int):  # a refused block (quantize_moe says why): no count
            continue
        e = ex.gate_up_proj.shape[0]
        per_expert = (ex.gate_up_proj.numel() + ex.down_proj.numel()) // e
        inactive += (e - top_k) * per_expert
    return {"total": total, "active": total - inactive}


def check_pte_dynamic_tokens(path) -> None:
    """Fail loudly if the written program's token input came out static: such a ``.pte`` rejects
    every other prompt length at run time ("Attempted to resize a static tensor")."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(Path(path).read_bytes())
    plan = getattr(pte, "program", pte).execution_plan[0]
    for name, idx in zip(("tokens", "input_pos"), plan.inputs):
        val = plan.values[idx].val
        dyn = getattr(val, "shape_dynamism", None)
        if dyn is None or int(dyn) == _STATIC:
            raise RuntimeError(f"{path}: input {name} {list(val.sizes)} came out with a static token dimension; "
                               f"the program would accept only that length")


def write_tokenizer(hf_dir, out_dir) -> List[str]:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (chat template inlined) of ``hf_dir``
    into ``out_dir``; returns the written paths ([] if the checkpoint has no tokenizer)."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = hf_dir
    if not (hf_dir / "tokenizer.json").is_file():
        # a slow (e.g. SentencePiece) tokenizer only: let transformers convert it to tokenizer.json
        transformers = _require_transformers()
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
        except Exception:
            return []
        src = out_dir / ".hf_tokenizer"
        tok.save_pretrained(str(src))
        if not (src / "tokenizer.json").is_file():
            shutil.rmtree(src, ignore_errors=True)
            return []
    written = [str(shutil.copyfile(src / "tokenizer.json", out_dir / "tokenizer.json"))]
    cfg: Dict[str, Any] = {}
    if (src / "tokenizer_config.json").is_file():
        cfg = json.loads((src / "tokenizer_config.json").read_text())
    # transformers 5 saves the chat template as chat_template.jinja (or .json) beside the config
    if not cfg.get("chat_template"):
        if (src / "chat_template.jinja").is_file():
            cfg["chat_template"] = (src / "chat_template.jinja").read_text()
        elif (src / "chat_template.json").is_file():
            cfg["chat_template"] = json.loads((src / "chat_template.json").read_text()).get("chat_template")
    # special-token strings the generators need, from special_tokens_map.json if the config lacks them
    stm = src / "special_tokens_map.json"
    if stm.is_file():
        for k, v in json.loads(stm.read_text()).items():
            cfg.setdefault(k, v)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1, ensure_ascii=False))
    written.append(str(out_dir / "tokenizer_config.json"))
    if src != hf_dir:
        shutil.rmtree(src, ignore_errors=True)
    return written


def eos_token_ids(model: nn.Module) -> List[int]:
    """End-of-sequence ids of the checkpoint (generation config first, then the model config)."""
    for holder in (getattr(model, "generation_config", None), model.config.get_text_config()):
        v = getattr(holder, "eos_token_id", None) if holder is not None else None
        if v is not None:
            return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return []
