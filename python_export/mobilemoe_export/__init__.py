"""MobileMoE for ExecuTorch: PyTorch-side tooling.

Public API: :func:`quantize_moe`, :func:`prepare_qat`, :func:`export_pte`, :func:`load_runtime`.

The package's rooms follow the data flow (a model comes from a source, is quantized, and lowered
onto the operators into a ``.pte``):

- :mod:`.sources`: checkpoint formats -> :class:`.models.Transformer` (MobileMoE releases, transformers
  families and their MoE blocks);
- :mod:`.quantization`: the INT4 format (``quant``), ``quantize_moe`` and the quantized modules
  (``transforms``), QAT (``qat``), torchao's packed layout (``torchao_layout``);
- :mod:`.operators`: the ``mobilemoe::*`` torch.library ops (``ops``, ``decoder_ops``), their
  pure-PyTorch reference (``reference``) and the ctypes binding of the Rust library (``_lib``);
- :mod:`.lowering`: ``lower_decoder`` (``decoder``), the partitioner / backend / blob writer
  (``backend``, flatc output in ``_fbs/``) and ``export_pte`` (``export``);
- :mod:`.training`: the training recipe (``train``, ``train_data``);
- here: the models (``models``, ``moe_block``: what every room computes on), the CLIs (``cli``,
  ``generate``, ``parity``), ``assets/`` and ``schema/`` (copies of the repository's schema/).

The modules' old flat names (``mobilemoe_export.quant``, ``mobilemoe_export.backend``, ...) still
import, as the same module objects (see :mod:`._moved`).
"""

import importlib as _importlib
import logging as _logging
import warnings as _warnings

from . import _moved

_moved.install()  # before anything below could import an old name

# Known-harmless noise of the pinned dependencies, silenced at its source: torchao 0.18 registers an
# Enum with torch's pytree (a deprecation notice logged once per process), and ExecuTorch's emitter
# warns about mutated buffers, which is how the KV cache of the per-op export path works.
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)
_warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")

from .operators._lib import load_runtime  # noqa: E402
from .operators import ops  # noqa: F401, E402  (defines torch.ops.mobilemoe.*)
from .moe_block import MoEFeedForward, SharedExpert  # noqa: E402
from .quantization.transforms import (  # noqa: E402
    MobileMoEFFN,
    MobileMoELinear,
    UnsupportedModuleError,
    quantize_moe,
)
from .quantization.qat import fake_quantize_activations, fake_quantize_weight, prepare_qat, remove_qat  # noqa: E402
from .sources.mobilemoe import load_mobilemoe  # noqa: F401, E402


def __getattr__(name):
    # lowering/export.py and lowering/backend.py pull in executorch.exir: import them lazily.
    if name == "export_pte":
        from .lowering.export import export_pte

        return export_pte
    if name in ("MobileMoEBackend", "MobileMoEPartitioner"):
        from .lowering import backend

        return getattr(backend, name)
    # an old flat module name (``mm.quant``, ``from mobilemoe_export import backend``): the moved
    # module, imported on first use
    if name in _moved.MOVED:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
