#!/usr/bin/env python3
"""Executed aarch64 instructions per method call of two whole-decoder ``.pte`` programs of the same
shape under ``qemu-aarch64``: ours (one MobileMoEBackend delegate) and XNNPACK's (8da4w, ExecuTorch's
standard CPU backend; ``scripts/export_xnnpack_dense.py``), both run by the aarch64 ``mobilemoe``
runner on the wheel's aarch64 ExecuTorch runtime (``scripts/build_aarch64_runtime.sh``), XNNPACK's
library preloaded. Writes ``docs/results/insn-e2e-aarch64-<date>.json`` (rendered into the README by
``scripts/render_readme.py``) and prints the table. Instruction counts are a proxy, not time.

    .venv/bin/python scripts/insn_count_e2e_aarch64.py OURS.pte XNNPACK.pte [--cpus ...] [--tokens 1,8,32]

Method: the TCG plugin ``scripts/qemu_plugin/insn_marker.c`` prints the total at exit; a call's count
is (total of ``bench --raw --iters 6`` - total of ``--iters 2``) / 4, both after 2 warm-up calls, so
loading and first-call set-up cancel. One thread on both sides: ``--threads 1`` sizes our pool, and
ExecuTorch's threadpool (XNNPACK's) sizes itself from cpuinfo, which reads /sys/devices/system/cpu:
each run sees one CPU through a private mount namespace (``unshare -m``, root); otherwise a second
thread's polling is counted and repeated runs differ by ~2 %. With it they agree to ~0.01 %
(XNNPACK) and ~0.5 % (ours).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402

REPO = bench_common.REPO
ET_VERSION = "1.5.1"  # scripts/aarch64_toolchain.sh
ITERS = (2, 6)
# The namespace's sysfs files name one CPU; then exec the command (qemu) unchanged.
ONE_CPU = 'for f in possible present online; do mount --bind "$1" /sys/devices/system/cpu/$f; done; shift; exec "$@"'


def et_aarch64_dir() -> Path:
    cache = os.environ.get("MOBILEMOE_CACHE") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                                     / "mobilemoe")
    return Path(cache) / "executorch-aarch64" / ET_VERSION / "executorch"


def total(cpu: str, pte: Path, tokens: int, iters: int, runner: Path, plugin: Path, one: Path,
          preload: Path | None) -> int:
    cmd = ["unshare", "-m", "bash", "-c", ONE_CPU, "_", str(one), "qemu-aarch64", "-cpu", cpu, "-plugin", str(plugin)]
    if preload:
        cmd += ["-E", f"LD_PRELOAD={preload}"]
    cmd += [str(runner), "bench", str(pte), "--raw", "--tokens", str(tokens), "--iters", str(iters), "--warmup", "2",
            "--threads", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    counts = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("TOTAL ")]
    if p.returncode != 0 or not counts:
        raise SystemExit(f"error: {' '.join(cmd)} failed (rc {p.returncode}):\n{p.stdout}\n{p.stderr}")
    return counts[-1]


def per_call(cpu: str, pte: Path, tokens: int, **kw: Any) -> int:
    lo, hi = (total(cpu, pte, tokens, n, **kw) for n in ITERS)
    return (hi - lo) // (ITERS[1] - ITERS[0])


def fmt(n: float) -> str:
    return f"{n / 1e6:.3f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def render_markdown(doc: Dict[str, Any]) -> str:
    lines = [
        "Executed aarch64 instructions per `forward` call (`bench --raw`: T tokens from position 0), one thread, "
        f"counted by a QEMU TCG plugin ({doc['qemu']}; executorch {doc['executorch']} aarch64 wheel). "
        f"Same shape on both sides: {doc['shape']}. A proxy, not time: cycles cannot be measured here.",
        "",
        "| -cpu | tokens per call | ours (MobileMoEBackend) | XNNPACK 8da4w | XNNPACK / ours |",
        "|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        o, x, t = r["ours"], r["xnnpack"], r["tokens"]
        lines.append(f"| {r['cpu']} | {t} | {fmt(o)} ({fmt(o / t)}/token) | {fmt(x)} ({fmt(x / t)}/token) | "
                     f"{x / o:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ours", type=Path, help="our .pte (python -m mobilemoe_export --preset P --dense-baseline M)")
    ap.add_argument("xnnpack", type=Path, help="the XNNPACK .pte of the same shape (scripts/export_xnnpack_dense.py)")
    ap.add_argument("--cpus", default="cortex-a53,cortex-a76,max")
    ap.add_argument("--tokens", default="1,8,32")
    ap.add_argument("--shape", default="the `tiny` preset made dense (dim 128, 2 layers, 4/2 heads, FFN 256, "
                                       "vocabulary 1024, max_seq_len 256), INT4 group-32 weights",
                    help="how the two programs were made (for the table caption)")
    ap.add_argument("--plugin", type=Path, default=REPO / "target/aarch64/insn/insn_marker.so",
                    help="built by scripts/insn_count_aarch64.sh")
    ap.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = ap.parse_args(argv)
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target/aarch64")
    runner = target_dir / "aarch64-unknown-linux-gnu/release/mobilemoe"
    xnn_lib = et_aarch64_dir() / "lib/libexecutorch_backend_xnnpack.so"
    for path, hint in ((runner, "scripts/build_aarch64_runtime.sh"), (xnn_lib, "scripts/build_aarch64_runtime.sh"),
                       (args.plugin, "scripts/insn_count_aarch64.sh"), (args.ours, "the export"),
                       (args.xnnpack, "scripts/export_xnnpack_dense.py")):
        if not path.is_file():
            raise SystemExit(f"error: {path} missing ({hint})")
    qemu = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    load0 = bench_common.loadavg()
    rows = []
    with tempfile.NamedTemporaryFile("w", suffix=".cpus") as one:
        one.write("0\n")
        one.flush()
        kw = dict(runner=runner, plugin=args.plugin, one=Path(one.name))
        for cpu in args.cpus.split(","):
            for t in (int(x) for x in args.tokens.split(",")):
                o = per_call(cpu, args.ours.resolve(), t, preload=None, **kw)
                x = per_call(cpu, args.xnnpack.resolve(), t, preload=xnn_lib, **kw)
                rows.append({"cpu": cpu, "tokens": t, "ours": o, "xnnpack": x})
                print(f"{cpu} tokens {t}: ours {o}, xnnpack {x}", file=sys.stderr)
    doc = {"renderer": "insn_count_e2e_aarch64", "machine": bench_common.machine(), "loadavg_before": load0,
           "loadavg_after": bench_common.loadavg(), "qemu": qemu, "executorch": ET_VERSION, "shape": args.shape,
           "programs": {"ours": args.ours.name, "xnnpack": args.xnnpack.name}, "iters": list(ITERS), "rows": rows}
    print(render_markdown(doc))
    if not args.no_write:
        print(f"wrote {bench_common.write_results('insn-e2e-aarch64', doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
