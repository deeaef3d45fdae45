#!/usr/bin/env python3
"""The fused MoE layer alone (ops crate), on MobileMoE-S's published layer shape, against the
machine's streaming-read roofline measured in the same run: ``target/release/moe_bench --json``
in ``--rounds`` rounds, every line kept.

    .venv/bin/python scripts/bench_moe_layer.py [--layers S] [--tokens 1,128] [--threads 1,2]

*warm* = the same layer every call; *cold* = calls cycle through enough layer copies that more than
2x the last-level cache (read from the machine) is touched between two uses of any byte. Results:
``docs/results/moe-layer-<date>.json``; the README table is rendered from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_common as bc  # noqa: E402

MOE_BENCH = bc.REPO / "target" / "release" / "moe_bench"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="S")
    ap.add_argument("--tokens", default="1,128")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--budget-ms", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    load0, lines = bc.loadavg(), []
    for _ in range(args.rounds):
        r = bc.run_measured([MOE_BENCH, "--json", "--no-scalar", "--layers", args.layers, "--tokens", args.tokens,
                             "--threads", args.threads, "--budget-ms", str(args.budget_ms)])
        lines.append([json.loads(x) for x in r["stdout"].splitlines() if x.startswith("{")])
    doc = {"renderer": "bench_moe_layer", "layers": args.layers, "rounds": lines, "loadavg_before": load0,
           "loadavg_after": bc.loadavg(), "machine": bc.machine()}
    print(render_markdown(doc))
    if not args.no_save:
        print(f"wrote {bc.write_results('moe-layer', doc)}")
    return 0


def render_markdown(doc) -> str:
    rows = {}
    roof = {}
    for rnd in doc["rounds"]:
        for d in rnd:
            if d["kind"] == "roofline":
                roof.setdefault(d["threads"], []).append(d["gbps"])
            elif d["kind"] == "moe":
                rows.setdefault((d["layer"], d["tokens"], d["threads"], d["variant"]), []).append(d)
    out = ["| layer | tokens | threads | variant | ms (median per round) | MB read | GB/s | GOP/s | % of the roofline |",
           "|---|---|---|---|---|---|---|---|---|"]
    for (layer, t, th, var), ds in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] != "warm")):
        ms = [d["ms_median"] for d in ds]
        lo, hi = min(ms), max(ms)
        best = min(ds, key=lambda d: d["ms_median"])
        pct = "(cache)" if var == "warm" else f"{best['pct_roofline']:.0f}%" if t == 1 else "compute-bound"
        out.append(f"| {layer} | {t} | {th} | {var}{' (x%d)' % best['copies'] if var == 'cold' else ''} | "
                   f"{lo:.3f}" + (f"-{hi:.3f}" if hi != lo else "") + f" | {best['bytes_read'] / 1e6:.2f} | {best['gbps']:.1f} | "
                   f"{best['gops']:.0f} | {pct} |")
    rf = ", ".join(f"{th} thread{'s' if th > 1 else ''}: {min(v):.1f}-{max(v):.1f} GB/s" for th, v in sorted(roof.items()))
    return "\n".join(out) + f"\n\nRoofline (streaming read, same run): {rf}.\n"


if __name__ == "__main__":
    sys.exit(main())
