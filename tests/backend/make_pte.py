#!/usr/bin/env python3
"""Build small MobileMoE .pte programs for the backend's end-to-end tests, and check them in Python.

Usage: make_pte.py OUT_DIR [--lib path/to/libmobilemoe_executorch.so]

Writes to OUT_DIR:
  delegate.pte   MoE FFN (sigmoid routing, expert bias, gated shared expert) + a dense INT4 linear,
                 both lowered to MobileMoEBackend, token dimension dynamic (x: float32 [1, T, 64])
  kernels.pte    the same model with the ops left as mobilemoe::*.out kernels
  input_T.npy, expected_T.npy for T in 1, 5: input and the eager output (torch.ops.mobilemoe.*,
                 i.e. the ops crate through the library's C ABI)
Then runs both programs through executorch.runtime (plugin loaded with ctypes.CDLL) and checks
they reproduce expected_T.npy. Prints "OK" at the end.
"""

import argparse
import ctypes
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--lib", type=Path, default=None, help="plugin library (default: MOBILEMOE_LIB or target/release)")
    a = ap.parse_args()
    if a.lib is not None:
        os.environ["MOBILEMOE_LIB"] = str(a.lib.resolve())
    lib_path = os.environ.get("MOBILEMOE_LIB", str(REPO / "target/release/libmobilemoe_executorch.so"))
    # Load the plugin first (registers MobileMoEBackend and the mobilemoe::*.out kernels).
    ctypes.CDLL(lib_path)

    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "python_export"))
    try:
        import mobilemoe_export as mm
    except ImportError as e:  # the python_export package is the one source of the AOT side
        print(f"mobilemoe_export is not importable ({e}); cannot build test programs", file=sys.stderr)
        return 3

    D, F, E, K, N = 64, 32, 4, 2, 48
    torch.manual_seed(0)
    moe = mm.MoEFeedForward(D, F, E, K, score_func="sigmoid", renormalize=True, route_scale=1.5,
                            use_expert_bias=True, shared_hidden_dim=F, shared_gate=True)
    with torch.no_grad():
        moe.expert_bias.normal_(0, 0.1)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.moe = moe
            self.proj = torch.nn.Linear(D, N)

        def forward(self, x):
            return self.proj(self.moe(x))

    model = Model().eval()
    mm.quantize_moe(model, dense_linears=True)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    x0 = torch.randn(1, 5, D)
    paths = {
        "delegate": mm.export_pte(model, (x0,), a.out_dir / "delegate.pte", delegate=True, max_tokens=64),
        "kernels": mm.export_pte(model, (x0,), a.out_dir / "kernels.pte", delegate=False, max_tokens=64),
    }
    from executorch.runtime import Runtime

    rt = Runtime.get()
    for t in (1, 5):
        x = torch.randn(1, t, D, generator=torch.Generator().manual_seed(100 + t))
        with torch.no_grad():
            ref = model(x)
        np.save(a.out_dir / f"input_{t}.npy", x.numpy().astype(np.float32))
        np.save(a.out_dir / f"expected_{t}.npy", ref.numpy().astype(np.float32))
        for name, p in paths.items():
            meth = rt.load_program(p).load_method("forward")
            y = meth.execute([x])[0]
            err = (y - ref).abs().max().item()
            print(f"python executorch.runtime {name}.pte T={t}: shape {tuple(y.shape)} max|diff| = {err:.3g}")
            if y.shape != ref.shape or err > 1e-5 * (1 + ref.abs().max().item()):
                print("MISMATCH", file=sys.stderr)
                return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
