#!/usr/bin/env python3
"""Renders an instruction-count results file of ``scripts/insn_count_aarch64.sh``
(``docs/results/insn-aarch64*-<date>.json``) as a markdown table: executed aarch64 instructions per
call of each ``insn_bench`` region, per kernel set, and each set's ratio against the scalar one.
Instruction counts under qemu are a proxy for work, not time; they do not depend on machine load.

    .venv/bin/python scripts/insn_tables.py docs/results/insn-aarch64-2026-12-07.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def render_markdown(doc) -> str:
    counts = doc["counts"]
    kernels = list(counts)
    regions = list(next(iter(counts.values())))
    base = "scalar" if "scalar" in counts else None
    head = "| region | " + " | ".join(kernels) + " |"
    lines = [f"{doc.get('what', '')} ({doc.get('emulator', 'qemu')}, -cpu {doc.get('cpu_model', '?')})", "",
             head, "|---" * (len(kernels) + 1) + "|"]
    for r in regions:
        cells = []
        for k in kernels:
            n = counts[k].get(r)
            if n is None:
                cells.append("-")
            elif base and k != base and counts[base].get(r):
                cells.append(f"{n:,} ({counts[base][r] / n:.1f}x fewer)")
            else:
                cells.append(f"{n:,}")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    print(render_markdown(json.loads(Path(sys.argv[1]).read_text())))
