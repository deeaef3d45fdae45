"""Quantization-aware training of MoE experts with exactly the kernels' quantization numerics.

:func:`prepare_qat` makes every recognised MoE block (the ones :func:`~mobilemoe_export.quantize_moe`
converts: this project's ``MoEFeedForward``, ExecuTorch's ``MOEFeedForward``, Mixtral-, Qwen-MoE/
OLMoE- and DeepSeek-like blocks, with ``nn.Linear`` experts or fused 3-D expert tensors) run a
fake-quantized forward:

- expert weights (routed and shared experts): symmetric per row and group of ``group_size`` input
  columns, INT4 (or INT8), the formulas of docs/DESIGN.md section 1 (= torchao's
  ``IntxFakeQuantizeConfig(torch.int4, group_size, is_symmetric=True)``), applied to the 3-D expert
  stacks directly;
- the experts' input activations (the block input, and the SwiGLU output before the down
  projection): per-token asymmetric int8, docs/DESIGN.md section 3 (= torchao's 8da4w activations,
  ``IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)``);
- the router (and a shared-expert gate) stay fp32, as in the kernels;
- gradients: straight-through estimator, as torchao (``round`` passes the gradient, values clamped
  at the int range do not, the quantization parameters are not differentiated).

The module keeps its parameters, their names and its ``state_dict``; only its ``forward`` changes.
It composes with torchao's QAT for the dense linears, in either order::

    mm.prepare_qat(model, group_size=32)                              # MoE experts
    Int8DynActInt4WeightQATQuantizer(groupsize=32).prepare(model)    # attention, LM head, ...
    ... train ...
    mm.quantize_moe(model, group_size=32, dense_linears=True)         # one rounding, the same values

(torchao wraps the ``nn.Linear`` inside prepared MoE blocks as well; that is harmless: the MoE forward
reads their latent weights and fake-quantizes them itself, and the router stays fp32.)
:func:`~mobilemoe_export.quantize_moe` converts a prepared block from its latent (trained) weights
with the same formulas, so the packed integers and scales are exactly the fake-quantized values
(no second rounding), and it takes the group size and width recorded by :func:`prepare_qat`.

Parity: the converted ``mobilemoe::moe_ffn`` computes the same sums of products of the same
quantized values, with exact integer group sums; it differs from this fp32 eager forward only by
fp32 rounding (``exp`` and matmul order), about 1e-7 relative. ``kernel_forward=True`` makes the
forward *values* those of the Rust kernels themselves (weights packed on every call; CPU only, for
evaluation), with the gradients of the fake-quantized path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import quant
from ..moe_block import route

__all__ = [
    "prepare_qat",
    "remove_qat",
    "is_qat_prepared",
    "fake_quantize_weight",
    "fake_quantize_activations",
    "MoEQATConfig",
]

F32_EPS = torch.finfo(torch.float32).eps
F32_MIN_NORMAL = torch.finfo(torch.float32).smallest_normal


class _RoundSTE(torch.autograd.Function):
    """``torch.round`` with an identity gradient (torchao's ``_Round``)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, gy):
        return gy


def fake_quantize_weight(w: torch.Tensor, group_size: int = 32, bits: int = 4,
                         scales_dtype=torch.float32) -> torch.Tensor:
    """Symmetric per-row, per-group fake quantization of ``w [..., N, K]`` (any number of leading
    dims: 3-D expert stacks included), with a straight-through gradient. Bit for bit the values of
    :func:`mobilemoe_export.quantization.quant.quantize_per_group` + ``dequantize`` and of torchao's
    ``IntxFakeQuantizer`` (``is_symmetric=True``, ``scale_precision=scales_dtype``: the scale cast
    to that type, the reciprocal computed in it)."""
    scales_dtype = quant.scale_dtype(scales_dtype)
    if w.dim() < 2:
        raise ValueError(f"expected a weight [..., N, K], got {tuple(w.shape)}")
    k = w.shape[-1]
    quant.check_matrix(max(1, w.shape[-2]), k, group_size, bits, "fake_quantize_weight")
    qmin, qmax = quant.qrange(bits)
    wf = w.to(torch.float32)
    wg = wf.reshape(-1, k // group_size, group_size)
    with torch.no_grad():
        min_neg = torch.clamp(wg.amin(dim=-1, keepdim=True), max=0.0)
        max_pos = torch.clamp(wg.amax(dim=-1, keepdim=True), min=0.0)
        scale = torch.clamp(torch.maximum(-min_neg, max_pos) / (float(qmax - qmin) / 2), min=F32_MIN_NORMAL)
        scale = scale.to(scales_dtype)
        zp = torch.zeros_like(scale)
        live = (scale != 0).to(torch.float32)  # a scale that rounds to 0 quantizes its group to 0
    q = torch.clamp(_RoundSTE.apply(wg * (1.0 / scale)) + zp, qmin, qmax)
    q = torch.nan_to_num(q * live, nan=0.0)
    return ((q - zp) * scale).to(torch.float32).reshape(w.shape).to(w.dtype)


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """Per-token (last dim) asymmetric int8 fake quantization, docs/DESIGN.md section 3, with a
    straight-through gradient. Bit for bit torchao's 8da4w activation fake quantizer (and what the
    kernels' Q8 path represents): ``(clamp(round(x / s) + zp, -128, 127) - zp) * s``. A row with a
    NaN or an infinity becomes all NaN (as in torchao and in the kernels)."""
    xf = x.to(torch.float32)
    with torch.no_grad():
        lo = torch.clamp(xf.amin(dim=-1, keepdim=True), max=0.0)
        hi = torch.clamp(xf.amax(dim=-1, keepdim=True), min=0.0)
        s = torch.clamp((hi - lo) / 255.0, min=F32_EPS)
        zp = torch.clamp(-128.0 - torch.round(lo / s), -128, 127)
    q = torch.clamp(_RoundSTE.apply(xf * (1.0 / s)) + zp, -128, 127)
    return ((q - zp) * s).to(x.dtype)


@dataclass
class MoEQATConfig:
    """What :func:`prepare_qat` recorded on a block (``module._mobilemoe_qat``)."""

    group_size: int = 32
    weight_bits: int = 4
    activations: bool = True
    kernel_forward: bool = False
    scales_dtype: str = "fp32"  # per-group scale precision: "fp32" | "fp16" | "bf16"
    output: str = "same"  # the block's output convention ("same" | "flat" | "tuple" | "flat_tuple")
    name: str = ""


class _QATForward:
    """The fake-quantized forward installed as ``module.forward`` (a plain object, so the module's
    parameters, submodules and state_dict are untouched; picklable and deep-copyable)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        return _qat_moe_forward(self.module, x)

    def __repr__(self) -> str:
        return f"<mobilemoe QAT forward of {type(self.module).__name__}>"


def _ffn(x_q: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, f: int, act_q: bool) -> torch.Tensor:
    h = x_q @ w13.t()
    a = F.silu(h[:, :f]) * h[:, f:]
    if act_q:
        a = fake_quantize_activations(a)
    return a @ w2.t()


def _qat_moe_forward(module: nn.Module, x: torch.Tensor):
    from .transforms import extract_moe

    cfg: MoEQATConfig = module._mobilemoe_qat
    spec = extract_moe(module, cfg.name, live=True)
    gs, bits, sd = cfg.group_size, cfg.weight_bits, cfg.scales_dtype
    rw = spec.router_weight
    e, d = rw.shape
    f = spec.hidden_dim
    in_dtype = x.dtype
    x2d = x.reshape(-1, d).to(torch.float32)
    # Router: fp32, not quantized (as the kernels).
    logits = x2d @ rw.t()
    bias = spec.expert_bias.to(torch.float32) if spec.expert_bias is not None else None
    weights, ids = route(logits, spec.top_k, spec.score_func, spec.renormalize, spec.route_scale, bias,
                         **spec.route_kwargs())
    xq = fake_quantize_activations(x2d) if cfg.activations else x2d
    w13 = fake_quantize_weight(torch.cat([spec.w1, spec.w3], dim=1), gs, bits, sd)  # [E, 2F, D]
    w2 = fake_quantize_weight(spec.w2, gs, bits, sd)  # [E, D, F]
    out = torch.zeros_like(x2d)
    for ex in range(e):
        sel = ids == ex
        rows = sel.any(dim=-1).nonzero().flatten()
        if rows.numel() == 0:
            continue
        wt = (weights * sel.to(weights.dtype)).sum(-1)[rows].unsqueeze(-1)
        if spec.weight_input:  # expert(w * x): the kernels quantize each scaled row on its own
            xin = x2d[rows] * wt
            y = _ffn(fake_quantize_activations(xin) if cfg.activations else xin, w13[ex], w2[ex], f, cfg.activations)
            out = out.index_add(0, rows, y)
        else:
            out = out.index_add(0, rows, _ffn(xq[rows], w13[ex], w2[ex], f, cfg.activations) * wt)
    if spec.shared is not None:
        sw1, sw3, sw2 = spec.shared
        fs = sw1.shape[0]
        y = _ffn(xq, fake_quantize_weight(torch.cat([sw1, sw3], 0), gs, bits, sd), fake_quantize_weight(sw2, gs, bits, sd),
                 fs, cfg.activations)
        if spec.shared_gate is not None:
            y = torch.sigmoid(x2d @ spec.shared_gate.reshape(d, 1)) * y
        out = out + y
    if cfg.kernel_forward:
        out = out + (_kernel_values(module, spec, x2d, gs, bits) - out).detach()
    out_shaped = out if cfg.output in ("flat", "flat_tuple") else out.reshape(x.shape[:-1] + (d,))
    out_shaped = out_shaped.to(in_dtype)
    if cfg.output in ("tuple", "flat_tuple"):
        return out_shaped, logits.to(in_dtype)
    return out_shaped


@torch.no_grad()
def _kernel_values(module: nn.Module, spec, x2d: torch.Tensor, gs: int, bits: int) -> torch.Tensor:
    """The Rust kernels' output for the current latent weights (packed now; Q8 path)."""
    from .transforms import MobileMoEFFN, extract_moe

    frozen = extract_moe(module, module._mobilemoe_qat.name)
    frozen.output = "flat"
    op = MobileMoEFFN(frozen, gs, bits, exact=False)  # frozen.scales_dtype comes from the QAT config
    return op(x2d.detach().cpu()).to(x2d.device)


def is_qat_prepared(module: nn.Module) -> bool:
    return isinstance(getattr(module, "_mobilemoe_qat", None), MoEQATConfig)


def _prepare_block(m: nn.Module, name: str, cfg_kw: dict) -> None:
    from .transforms import _is_et_quantized_moe, _probe_output, extract_moe

    if _is_et_quantized_moe(m):
        raise ValueError(f"{name}: {type(m).__name__} is already quantized; QAT needs the fp weights")
    if is_qat_prepared(m):
        m._mobilemoe_qat = MoEQATConfig(output=m._mobilemoe_qat.output, name=name, **cfg_kw)
        return
    spec = extract_moe(m, name)
    quant.check_matrix(2 * spec.hidden_dim, spec.router_weight.shape[1], cfg_kw["group_size"], cfg_kw["weight_bits"],
                       f"{name} experts gate/up")
    quant.check_matrix(spec.router_weight.shape[1], spec.hidden_dim, cfg_kw["group_size"], cfg_kw["weight_bits"],
                       f"{name} experts down")
    output = spec.output
    if output == "same":
        output = _probe_output(m, spec.router_weight.shape[1]) or "same"
    m._mobilemoe_qat = MoEQATConfig(output=output, name=name, **cfg_kw)
    m.forward = _QATForward(m)


def prepare_qat(
    model: nn.Module,
    group_size: int = 32,
    weight_bits: int = 4,
    *,
    activations: bool = True,
    kernel_forward: bool = False,
    scales_dtype="fp32",
) -> nn.Module:
    """Prepare every recognised MoE block of ``model`` (``model`` itself included) for QAT, in
    place: experts and their input activations fake-quantized with the kernels' numerics, router
    fp32, straight-through gradients (see the module docstring). Dense ``nn.Linear`` layers are left
    alone (use torchao's ``Int8DynActInt4WeightQATQuantizer(groupsize=group_size)`` for them; the
    two compose). ``activations=False`` fake-quantizes the weights only (for the exact fp32-activation
    path, ``quantize_moe(..., exact=True)``). ``kernel_forward=True``: forward values computed by the
    Rust kernels (CPU; for evaluation), gradients from the fake-quantized path. ``scales_dtype``
    ("fp32" | "fp16" | "bf16", or a torch dtype) is the per-group scale precision the experts train
    with and :func:`quantize_moe` then packs (pass the same ``scales_precision`` to torchao's
    quantizer for the dense linears).

    Calling it again updates the configuration. Raises
    :class:`~mobilemoe_export.UnsupportedModuleError` listing blocks it cannot handle, or if there
    is none. Returns ``model``.
    """
    from .transforms import MobileMoEFFN, MobileMoELinear, UnsupportedModuleError, extract_moe

    quant.check_matrix(1, group_size, group_size, weight_bits, "prepare_qat")
    sd = quant.scale_dtype(scales_dtype)
    sd_name = next(k for k, v in quant.SCALE_DTYPES.items() if v == sd)
    cfg_kw = dict(group_size=group_size, weight_bits=weight_bits, activations=bool(activations),
                  kernel_forward=bool(kernel_forward), scales_dtype=sd_name)
    found, errors = [], []

    def consider(m: nn.Module, name: str) -> bool:
        if isinstance(m, (MobileMoEFFN, MobileMoELinear)):
            return True
        try:
            spec = extract_moe(m, name)
        except Exception as e:
            errors.append(f"{name} ({type(m).__name__}): {e}")
            return True
        if spec is None:
            return False
        try:
            _prepare_block(m, name, cfg_kw)
            found.append(name)
        except Exception as e:
            errors.append(f"{name} ({type(m).__name__}): {e}")
        return True

    def visit(mod: nn.Module, prefix: str) -> None:
        for cname, child in mod.named_children():
            full = f"{prefix}.{cname}" if prefix else cname
            if not consider(child, full):
                visit(child, full)

    if not consider(model, type(model).__name__):
        visit(model, "")
    if errors:
        raise UnsupportedModuleError("prepare_qat could not handle these modules:\n  " + "\n  ".join(errors))
    if not found:
        raise UnsupportedModuleError(f"prepare_qat found no recognised MoE block in {type(model).__name__}")
    return model


def remove_qat(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_qat` (the blocks get their own forward back; weights are kept)."""
    for m in model.modules():
        if is_qat_prepared(m):
            m.__dict__.pop("forward", None)
            del m._mobilemoe_qat
    return model
