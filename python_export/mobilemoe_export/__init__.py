"""MobileMoE for ExecuTorch: PyTorch-side tooling.

Public API: :func:`quantize_moe`, :func:`prepare_qat`, :func:`export_pte`, :func:`load_runtime`.
"""

from ._lib import load_runtime
from . import ops  # noqa: F401  (defines torch.ops.mobilemoe.*)
from .moe_block import MoEFeedForward, SharedExpert
from .transforms import MobileMoEFFN, MobileMoELinear, UnsupportedModuleError, quantize_moe
from .qat import fake_quantize_activations, fake_quantize_weight, prepare_qat, remove_qat


def __getattr__(name):
    # export.py pulls in executorch.exir: import it lazily.
    if name == "export_pte":
        from .export import export_pte

        return export_pte
    if name in ("MobileMoEBackend", "MobileMoEPartitioner"):
        from . import backend

        return getattr(backend, name)
    raise AttributeError(name)


__all__ = [
    "quantize_moe",
    "prepare_qat",
    "remove_qat",
    "fake_quantize_weight",
    "fake_quantize_activations",
    "export_pte",
    "load_runtime",
    "MoEFeedForward",
    "SharedExpert",
    "MobileMoEFFN",
    "MobileMoELinear",
    "UnsupportedModuleError",
    "MobileMoEBackend",
    "MobileMoEPartitioner",
]
