"""MobileMoE for ExecuTorch: PyTorch-side tooling.

Public API: :func:`quantize_moe`, :func:`prepare_qat`, :func:`export_pte`, :func:`load_runtime`.
"""

import logging as _logging
import warnings as _warnings

# Known-harmless noise of the pinned dependencies, silenced at its source: torchao 0.18 registers an
# Enum with torch's pytree (a deprecation notice logged once per process), and ExecuTorch's emitter
# warns about mutated buffers, which is how the KV cache of the per-op export path works.
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)
_warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")

from ._lib import load_runtime  # noqa: E402
from . import ops  # noqa: F401, E402  (defines torch.ops.mobilemoe.*)
from .moe_block import MoEFeedForward, SharedExpert  # noqa: E402
from .transforms import MobileMoEFFN, MobileMoELinear, UnsupportedModuleError, quantize_moe  # noqa: E402
from .qat import fake_quantize_activations, fake_quantize_weight, prepare_qat, remove_qat  # noqa: E402
from .sources.mobilemoe import load_mobilemoe  # noqa: F401, E402


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
