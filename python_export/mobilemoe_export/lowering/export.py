"""``export_pte``: torch.export -> to_edge_transform_and_lower (MobileMoE partitioner) -> .pte."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from ..operators import ops as _ops  # noqa: F401


def infer_dynamic_shapes(example_args: Sequence[Any], max_tokens: int = 256, min_tokens: int = 1):
    """One shared ``tokens`` dimension for the token axis of every recognisable input.

    - integer ``[1, S]`` (token ids) and float ``[B, S, ...]`` (rank >= 3): dim 1;
    - float ``[T, D]``: dim 0;
    - 1-D integer tensors whose length equals the token count S (> 1), e.g. per-token positions: dim 0;
    - everything else (e.g. ``input_pos`` of shape [1], scalars, caches): static.
    """
    tokens = torch.export.Dim("tokens", min=min_tokens, max=max_tokens)
    s_count = None
    specs = []
    for a in example_args:
        spec = None
        if isinstance(a, torch.Tensor):
            if not a.is_floating_point() and a.dim() == 2 and a.shape[0] == 1:
                spec, s_count = {1: tokens}, a.shape[1]
            elif a.is_floating_point() and a.dim() >= 3:
                spec, s_count = {1: tokens}, a.shape[1]
            elif a.is_floating_point() and a.dim() == 2:
                spec, s_count = {0: tokens}, a.shape[0]
        specs.append(spec)
    for i, a in enumerate(example_args):
        if (specs[i] is None and isinstance(a, torch.Tensor) and not a.is_floating_point() and a.dim() == 1
                and s_count is not None and s_count > 1 and a.shape[0] == s_count):
            specs[i] = {0: tokens}
    return tuple(specs)


def _check_dynamic_dims(ep, dynamic_shapes) -> None:
    """Fail loudly if a dimension requested dynamic came out static (a .pte that only accepts the
    example length would fail at run time on any other one)."""
    if not isinstance(dynamic_shapes, (tuple, list)):
        return
    sig = ep.graph_signature
    user = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in set(sig.user_inputs)]
    for i, (spec, node) in enumerate(zip(dynamic_shapes, user)):
        if not isinstance(spec, dict):
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for dim in spec:
            # a SymInt whose expression is a number is static too (what a replacement leaves behind)
            if dim < val.dim() and is_concrete_int(val.shape[dim]):
                raise RuntimeError(
                    f"export_pte: dimension {dim} of input {i} ({node.name}) was requested dynamic but the lowered "
                    f"program specialised it to {int(val.shape[dim])}: the .pte would reject every other token "
                    f"count at run time ('Attempted to resize a static tensor'). Some op in the model forces a "
                    f"static size (e.g. a reshape to a constant, .item(), or an op whose schema takes int[] "
                    f"sizes); export with dynamic_tokens=False for a fixed-length program")


# ExecuTorch's dim-order pass (run by to_edge) rewrites aten.empty into dim_order_ops::_empty_dim_order,
# whose schema takes `int[] size`: a symbolic size becomes the example's number and the replacement
# spreads through the whole graph, inputs included, so every tensor of the .pte is static. The same
# allocation zero-filled (aten.full, `SymInt[] size`) stays dynamic; callers overwrite it anyway
# (transformers' MLA attention fills its `new_empty` keys by slices).
_EMPTY_TO_ZEROS = {
    torch.ops.aten.new_empty.default: torch.ops.aten.new_zeros.default,
    torch.ops.aten.empty.memory_format: torch.ops.aten.zeros.default,
    torch.ops.aten.empty_like.default: torch.ops.aten.zeros_like.default,
}


def _zero_fill_dynamic_empties(ep) -> int:
    """Rewrite, in place, every ``empty`` of a symbolic size in ``ep`` to its zero-filled twin; returns
    how many (see :data:`_EMPTY_TO_ZEROS`)."""
    n = 0
    for node in ep.graph.nodes:
        new = _EMPTY_TO_ZEROS.get(node.target) if node.op == "call_function" else None
        val = node.meta.get("val")
        if new is None or not isinstance(val, torch.Tensor) or all(is_concrete_int(d) for d in val.shape):
            continue
        kwargs = dict(node.kwargs)
        if new is torch.ops.aten.zeros.default:  # no memory_format argument: only a contiguous one maps
            if kwargs.pop("memory_format", None) not in (None, torch.contiguous_format):
                continue
        node.target, node.kwargs = new, kwargs
        n += 1
    if n:
        ep.graph_module.recompile()
    return n


def _check_transformers_cache(model: torch.nn.Module, example_kwargs: Optional[Dict[str, Any]]) -> None:
    """A transformers model with ``use_cache`` on returns its ``DynamicCache``, which torch.export cannot
    put in a program's outputs (an error deep in the trace): say so before tracing."""
    if "transformers" not in sys.modules:
        return
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel) or (example_kwargs or {}).get("use_cache", True) is False:
        return
    if getattr(model.config.get_text_config(), "use_cache", False):
        raise ValueError(
            f"export_pte: {type(model).__name__} has config.use_cache=True, so its forward returns a growing "
            f"DynamicCache, which a .pte cannot return. Set model.config.use_cache = False (or pass "
            f"example_kwargs={{'use_cache': False}}) for a program that recomputes the whole sequence per call, "
            f"or export the save_pretrained directory with `python -m mobilemoe_export --hf DIR` for a KV cache "
            f"inside the program")


def _refuse_complex(ep, model: torch.nn.Module) -> None:
    """Complex-valued tensors (a rotary embedding through torch.polar / view_as_complex) fail later inside
    ExecuTorch's lowering ("view_as_complex_copy does not support automatic differentiation") and have
    no ExecuTorch kernels: name the cause and the source line before lowering."""
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, torch.Tensor) or not val.is_complex():
            continue
        from ..sources.hf_export import REAL_ROTARY_PATCHES

        where = [ln.strip() for ln in (node.meta.get("stack_trace") or "").strip().splitlines()[-2:]]
        raise ValueError(
            f"export_pte: {type(model).__name__} computes with complex tensors ({node.target} at "
            f"{' '.join(where) or 'an unknown line'}), e.g. a rotary embedding through torch.polar / "
            f"view_as_complex; ExecuTorch cannot lower or run them. export_pte rewrites them in real arithmetic "
            f"for the transformers families {', '.join(sorted(REAL_ROTARY_PATCHES))}; for another model, "
            f"compute the rotation on (cos, sin) pairs (re*cos - im*sin, re*sin + im*cos), as "
            f"mobilemoe_export.sources.hf_export._real_rotary does")


def export_pte(
    model: torch.nn.Module,
    example_args: Union[Tuple[Any, ...], Any],
    path: Union[str, os.PathLike],
    dynamic_tokens: bool = True,
    delegate: bool = True,
    *,
    dynamic_shapes: Optional[Any] = None,
    max_tokens: Optional[int] = None,
    example_kwargs: Optional[Dict[str, Any]] = None,
    strict: bool = False,
    whole_model: Optional[bool] = None,
    kv_cache: str = "fp16",
    scales_dtype=None,
) -> str:
    """Export ``model`` to an ExecuTorch ``.pte`` at ``path`` and return the path.

    ``dynamic_tokens`` marks the token dimension dynamic (``1..max_tokens``, see
    :func:`infer_dynamic_shapes`; ``max_tokens`` defaults to ``model.max_seq_len`` if present, else 256);
    ``dynamic_shapes`` overrides it (torch.export format). Use an example with at least 2 tokens.
    ``delegate=True`` lowers ``mobilemoe.*`` ops to ``MobileMoEBackend``; ``delegate=False`` keeps
    them as ``mobilemoe::*.out`` kernels (registered by the plugin library at run time). All other
    ops run on ExecuTorch's portable/optimized kernels.

    ``whole_model`` (default: on when ``delegate`` and ``model`` is a ``models.Transformer``)
    first lowers the model with :func:`mobilemoe_export.lowering.decoder.lower_decoder` (INT4 g32 weights,
    ``kv_cache`` "fp16" or "fp32"), so the whole forward — embedding, attention with its KV
    cache, norms, FFNs, LM head — runs in one ``MobileMoEBackend`` delegate. ``scales_dtype``
    ("fp32" | "fp16" | "bf16") is the per-group scale type of the matrices that lowering quantizes
    (default: that of the model's ``quantize_moe``-d modules, else fp32).

    fp16/bf16 scales (blob format version 3) run in the delegate; ``delegate=False`` (the portable
    ``mobilemoe::*.out`` kernels) needs fp32 scales and says so.

    A transformers model (``config.use_cache = False``; with the cache on it is refused) is traced with
    the patches ``--hf`` uses for its family (DeepSeek-V2's and Llama 4's complex RoPE in real
    arithmetic); other complex-valued models are refused with the source line. ``empty`` allocations of
    a symbolic size are zero-filled so that ExecuTorch's lowering keeps them dynamic, and a dynamic
    dimension that still comes out static raises instead of writing a fixed-length ``.pte``.
    """
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    model = model.eval()
    from . import decoder as _decoder

    if whole_model is None:
        whole_model = delegate and _decoder.is_lowerable(model)
    if whole_model:
        if not delegate:
            raise ValueError("export_pte: whole_model=True needs delegate=True (the decoder ops have no portable kernels)")
        model = _decoder.lower_decoder(model, kv_cache=kv_cache, scales_dtype=scales_dtype).eval()
    if not delegate:
        narrow = sorted({n for n, b in model.named_buffers() if n.endswith("scales") and b is not None
                         and b.dtype in (torch.float16, torch.bfloat16)})
        if narrow:
            raise ValueError("export_pte(delegate=False): the portable mobilemoe::*.out kernels read fp32 scales; "
                             f"these are fp16/bf16: {', '.join(narrow[:4])}{' ...' if len(narrow) > 4 else ''} "
                             "(quantize with scales_dtype='fp32', or export with delegate=True)")
    if max_tokens is None:
        max_tokens = int(getattr(model, "max_seq_len", None) or getattr(getattr(model, "cfg", None), "max_seq_len", None) or 256)
    if dynamic_shapes is None and dynamic_tokens:
        dynamic_shapes = infer_dynamic_shapes(example_args, max_tokens=max_tokens)
        if all(s is None for s in dynamic_shapes):
            dynamic_shapes = None
    _check_transformers_cache(model, example_kwargs)
    from ..sources.hf_export import exportable_model

    # transformers families whose code does not trace to ExecuTorch ops (complex RoPE) are traced with
    # the same patches as `--hf` (sources/hf_export.py: the same numbers in real arithmetic)
    with torch.no_grad(), exportable_model(model):
        ep = torch.export.export(model, example_args, kwargs=example_kwargs, dynamic_shapes=dynamic_shapes,
                                 strict=strict)
    _refuse_complex(ep, model)
    if dynamic_shapes is not None:
        _zero_fill_dynamic_empties(ep)
    partitioners = []
    if delegate:
        from .backend import MobileMoEPartitioner

        partitioners = [MobileMoEPartitioner()]
    edge = to_edge_transform_and_lower(
        ep,
        partitioner=partitioners,
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
    )
    _check_dynamic_dims(edge.exported_program(), dynamic_shapes)
    et = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        et.write_to_file(f)
    return str(path)
