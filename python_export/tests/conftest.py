import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobilemoe_export import _lib  # noqa: E402

LIB = _lib.lib_available()
if not LIB:
    # Without the Rust library the eager ops run on the pure-PyTorch reference.
    os.environ.setdefault("MOBILEMOE_REFERENCE_FALLBACK", "1")

torch.set_num_threads(2)

needs_lib = pytest.mark.skipif(not LIB, reason="libmobilemoe_executorch.so not built (run `make build`)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
