#!/usr/bin/env python3
"""A full-size MobileMoE checkpoint in Meta's published format, end to end, measured: write a random
checkpoint (``scripts/make_mobilemoe_checkpoint.py``), export it with ``python -m mobilemoe_export
--hf DIR`` (wall time and peak RSS of the export process), then the Rust runner on the ``.pte``:
program load time, ``mobilemoe bench`` (prefill of a prompt from position 0, real greedy decode at
context depths) and ``mobilemoe generate`` (TTFT, tok/s, peak RSS), in ``--rounds`` rounds.

    .venv/bin/python scripts/bench_mobilemoe_checkpoint.py --size S --format qat

Results (every round's numbers, the machine, the commit, the load) go to
``docs/results/mobilemoe-checkpoint-<size>-<format>-<date>.json``; the README's table is rendered
from it by ``scripts/render_readme.py``. The weights are random: speed does not depend on them
(routing does a little; real weights route differently), quality is not measured here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_common as bc  # noqa: E402

PY = bc.REPO / ".venv" / "bin" / "python"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="S", choices=["S", "M", "L"], help="published size (M is inferred; default S)")
    ap.add_argument("--format", default="qat", choices=["qat", "bf16"], help="release format (default qat)")
    ap.add_argument("--max-seq-len", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=128, help="prompt tokens of the prefill measurement")
    ap.add_argument("--depths", default="128,1024", help="decode depths (comma-separated)")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--cache-dir", type=Path, default=bc.REPO / "artifacts" / "mobilemoe")
    ap.add_argument("--force", action="store_true", help="rewrite the checkpoint and re-export")
    ap.add_argument("--no-save", action="store_true", help="print only; do not write docs/results")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    env = dict(os.environ, MOBILEMOE_THREADS=str(args.threads))
    ck = args.cache_dir / f"{args.size}-{args.format}"
    pte = args.cache_dir / f"{args.size}-{args.format}-{args.max_seq_len}" / "model.pte"
    res = {"size": args.size, "format": args.format, "max_seq_len": args.max_seq_len, "threads": args.threads,
           "prefill": args.prefill}
    if args.force or not (ck / "config.json").is_file():
        print(f"writing the checkpoint to {ck} ...", flush=True)
        w = bc.run_measured([PY, HERE / "make_mobilemoe_checkpoint.py", "--size", args.size, "--format", args.format,
                             "--out", ck])
        res["write_s"] = round(w["wall_s"], 1)
    res["checkpoint_bytes"] = sum(p.stat().st_size for p in ck.glob("*.safetensors"))
    if args.force or not pte.is_file():
        print(f"exporting {pte} ...", flush=True)
        pte.parent.mkdir(parents=True, exist_ok=True)
        e = bc.run_measured([PY, "-m", "mobilemoe_export", "--hf", ck, "--max-seq-len", str(args.max_seq_len),
                             "--out", pte], env=env)
        res["export"] = {"wall_s": round(e["wall_s"], 1), "peak_rss_mib": round(e["peak_rss_mib"], 1)}
    res["pte_bytes"] = pte.stat().st_size
    load0, rounds = bc.loadavg(), []
    facts = bc.machine(threads_probed=(args.threads,))
    for r in range(args.rounds):
        b = bc.run_measured([bc.RUNNER, "bench", pte, "--threads", str(args.threads), "--prefill", str(args.prefill),
                             "--depths", args.depths, "--decode-tokens", str(args.decode_tokens)], env=env)
        g = bc.run_measured([bc.RUNNER, "generate", pte, "--prompt", "Once upon a time", "--max-new-tokens", "64",
                             "--temperature", "0"], env=env)
        one = {"bench": bc.parse_llm_bench(b["stdout"]), "generate": bc.parse_generate(g["stdout"], g["stderr"])}
        rounds.append(one)
        print(f"round {r + 1}: {one}", flush=True)
    res.update(loadavg_before=load0, loadavg_after=bc.loadavg(), rounds=rounds, machine=facts)
    res["renderer"] = "bench_mobilemoe_checkpoint"
    print(render_markdown(res))
    if not args.no_save:
        path = bc.write_results(f"mobilemoe-checkpoint-{args.size}-{args.format}", res)
        print(f"wrote {path}")
    return 0


def _rng(xs, fmt="{:.0f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    lo, hi = min(xs), max(xs)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def render_markdown(doc) -> str:
    rounds = doc["rounds"]
    b = [r["bench"] for r in rounds]
    g = [r["generate"] for r in rounds]
    depths = sorted({int(k.split("@")[1]) for r in b for k in r if k.startswith("decode@") and "_ms" not in k})
    mib = 1 << 20
    ex = doc.get("export") or {}
    rows = [
        ("checkpoint (safetensors)", f"{doc['checkpoint_bytes'] / mib:.0f} MiB"),
        ("export `--hf` wall time / peak RSS",
         f"{ex['wall_s']:.0f} s / {ex['peak_rss_mib'] / 1024:.1f} GiB" if ex else "(cached .pte)"),
        (".pte size", f"{doc['pte_bytes'] / mib:.0f} MiB"),
        ("program load (`mobilemoe generate`)", _rng([x.get("load_ms") for x in g], "{:.0f}") + " ms"),
        (f"prefill tok/s ({doc['prefill']}-token prompt from position 0)", _rng([x["prefill"] for x in b])),
    ]
    rows += [(f"decode tok/s at depth {d}", _rng([x.get(f"decode@{d}") for x in b])) for d in depths]
    rows += [
        ("`generate`: TTFT / decode tok/s", f"{_rng([x.get('ttft_ms') for x in g])} ms / {_rng([x.get('decode_tok_s') for x in g])}"),
        ("peak RSS (`bench` / `generate`)", f"{_rng([x['peak_rss_mib'] for x in b])} / {_rng([x.get('peak_rss_mib') for x in g])} MiB"),
    ]
    head = (f"| MobileMoE-{doc['size']} ({doc['format'].upper()} release format, random weights), "
            f"max_seq_len {doc['max_seq_len']}, {doc['threads']} threads, {len(rounds)} rounds | |\n|---|---|\n")
    return head + "\n".join(f"| {a} | {v} |" for a, v in rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
