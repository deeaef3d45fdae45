#!/usr/bin/env python3
"""Render the README's result tables from the committed results files.

Every block of README.md between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` is
replaced by the table of the newest ``docs/results/NAME-<date>.json``, rendered by the benchmark
script that wrote it (its ``render_markdown(doc)``; the file's ``renderer`` field names the script).
Tables in the README's Performance section must sit inside such a block: numbers are never typed
in by hand.

    .venv/bin/python scripts/render_readme.py           # rewrite README.md
    .venv/bin/python scripts/render_readme.py --check   # exit 1 if README.md is not what the files give
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_common  # noqa: E402

README = bench_common.REPO / "README.md"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def render_block(name: str, results_dir: Path = bench_common.RESULTS_DIR) -> str:
    path = bench_common.latest_results(name, results_dir)
    if path is None:
        raise SystemExit(f"error: README block {name!r} has no results file docs/results/{name}-<date>.json")
    doc = json.loads(path.read_text())
    module = importlib.import_module(doc["renderer"])
    body = module.render_markdown(doc).rstrip("\n")
    rel = path.relative_to(bench_common.REPO)
    return f"{body}\n\n<sub>From [{rel}]({rel}) ({bench_common.machine_line(doc)}).</sub>\n"


def render(text: str, results_dir: Path = bench_common.RESULTS_DIR) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name"), results_dir) + m.group(4), text)


def unrendered_tables(text: str) -> list:
    """Table lines of the Performance section that are outside every results block."""
    sec = re.search(r"^## Performance\n(.*?)(?=^## )", text, re.S | re.M)
    if not sec:
        return []
    outside = BLOCK.sub("", sec.group(1))
    return [line for line in outside.splitlines() if line.lstrip().startswith("|")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if README.md differs from the rendering")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    new = render(text)
    loose = unrendered_tables(new)
    if loose:
        print("error: tables in the Performance section outside a results block (numbers typed by hand):", file=sys.stderr)
        for line in loose[:10]:
            print("  " + line, file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(f"error: {args.readme} is stale: run scripts/render_readme.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f"rendered {len(BLOCK.findall(new))} result block(s) into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
