import os
import subprocess
import sys
from pathlib import Path

import torch

import mobilemoe_export as mm
from conftest import needs_lib

ROOT = Path(__file__).resolve().parents[1]


def test_missing_library_error_mentions_make_build():
    code = (
        "import mobilemoe_export as mm\n"
        "try:\n    mm.load_runtime()\nexcept RuntimeError as e:\n    print('ERR', e)\n"
    )
    env = dict(os.environ, MOBILEMOE_LIB="/nonexistent/libmobilemoe_executorch.so", PYTHONPATH=str(ROOT))
    env.pop("MOBILEMOE_REFERENCE_FALLBACK", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "ERR" in out and "make build" in out and "MOBILEMOE_LIB" in out


def test_out_variant_eager():
    m = mm.MobileMoELinear(torch.randn(40, 64), None, 32, 4)
    x = torch.randn(3, 64)
    out = torch.empty(0)
    r = torch.ops.mobilemoe.int4_linear.out(x, m.weight, m.scales, None, 40, 32, 4, False, out=out)
    assert r is out and torch.equal(out, m(x))


@needs_lib
def test_load_runtime_registers_backend_and_kernels():
    from executorch.runtime import Runtime

    path = mm.load_runtime()
    assert path == mm.load_runtime()  # idempotent
    names = Runtime.get().operator_registry.operator_names
    assert "mobilemoe::moe_ffn.out" in names and "mobilemoe::int4_linear.out" in names
    assert "MobileMoEBackend" in Runtime.get().backend_registry.registered_backend_names
