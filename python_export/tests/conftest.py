import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobilemoe_export.operators import _lib  # noqa: E402

LIB = _lib.lib_available()
# Under `make test` (MOBILEMOE_NO_SKIP=1) nothing may be skipped and the Rust library must exist:
# the ops must not silently run the pure-PyTorch reference and be compared with itself.
NO_SKIP = os.environ.get("MOBILEMOE_NO_SKIP", "") not in ("", "0")
if not LIB and NO_SKIP:
    pytest.exit(f"MOBILEMOE_NO_SKIP is set but the Rust library is missing ({_lib.lib_path()}): run `make build`",
                returncode=1)

torch.set_num_threads(2)

needs_lib = pytest.mark.skipif(not LIB, reason="libmobilemoe_executorch.so not built (run `make build`)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

