"""The old flat module paths of the modules that moved into the package's rooms.

``mobilemoe_export.quant``, ``from mobilemoe_export import backend``, ``mobilemoe_export.train`` ...
stay importable and are the SAME module objects as ``mobilemoe_export.quantization.quant``,
``mobilemoe_export.lowering.backend``, ``mobilemoe_export.training.train`` (so monkeypatching and
isinstance keep working), and lazily: a moved module is imported when its old name is, not when
``mobilemoe_export`` is. ``python -m mobilemoe_export.backend --regen`` and the other ``-m`` runs of
old names work too: runpy finds the spec through :class:`MovedModuleFinder`, and runs the moved
file with its own package (so its relative imports resolve).

The package's own code imports the new paths; these names are for tests, scripts and users.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Optional

PACKAGE = __name__.rpartition(".")[0]  # "mobilemoe_export"

# old name (a module directly in the package) -> the room it moved into
MOVED = {
    # the ctypes binding of the Rust library, the torch.library ops and their reference numerics
    "_lib": "operators",
    "ops": "operators",
    "decoder_ops": "operators",
    "reference": "operators",
    # INT4 format, QAT, torchao's packed layout, quantize_moe and the quantized modules
    "quant": "quantization",
    "qat": "quantization",
    "torchao_layout": "quantization",
    "transforms": "quantization",
    # lower_decoder, the partitioner / backend / blob writer, export_pte, flatc output
    "decoder": "lowering",
    "backend": "lowering",
    "export": "lowering",
    "_fbs": "lowering",
    # the training recipe
    "train": "training",
    "train_data": "training",
    # transformers families
    "hf_families": "sources",
    "hf_export": "sources",
}


def new_name(old: str) -> Optional[str]:
    """``mobilemoe_export.quant`` -> ``mobilemoe_export.quantization.quant`` (modules inside a moved
    package too: ``mobilemoe_export._fbs.mobilemoe`` -> ``mobilemoe_export.lowering._fbs.mobilemoe``);
    None for a name that did not move."""
    if not old.startswith(PACKAGE + "."):
        return None
    head, sep, tail = old[len(PACKAGE) + 1:].partition(".")
    room = MOVED.get(head)
    return None if room is None else f"{PACKAGE}.{room}.{head}{sep}{tail}"


class _MovedLoader(importlib.abc.Loader):
    """Hands out the moved module itself (imported under its new name) for the old name."""

    def __init__(self, new: str):
        self.new = new
        self._spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # importlib's module_from_spec() pointed the module's __spec__ at the old name: give it its
        # own back (reload, pickling and the __package__ / __spec__.parent check rely on it)
        module.__spec__ = self._spec

    # runpy (``python -m <old name>``) reads the code through the spec's loader
    def _real_loader(self):
        return importlib.util.find_spec(self.new).loader

    def get_code(self, fullname):
        return self._real_loader().get_code(self.new)

    def get_source(self, fullname):
        return self._real_loader().get_source(self.new)

    def is_package(self, fullname) -> bool:
        return self._real_loader().is_package(self.new)


class _MovedSpec(importlib.machinery.ModuleSpec):
    """The spec of an old name. Its ``parent`` is the moved module's package: runpy sets a ``-m``
    module's ``__package__`` from it, and the moved module's relative imports are relative to that."""

    def __init__(self, old: str, new: str, real: importlib.machinery.ModuleSpec):
        super().__init__(old, _MovedLoader(new), origin=real.origin,
                         is_package=real.submodule_search_locations is not None)
        self.new = new

    @property
    def parent(self) -> str:
        return self.new if self.submodule_search_locations is not None else self.new.rpartition(".")[0]


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of moved modules (and nothing else)."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        real = importlib.util.find_spec(new)
        return None if real is None else _MovedSpec(fullname, new, real)


def install() -> None:
    if not any(type(f).__name__ == MovedModuleFinder.__name__ for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
