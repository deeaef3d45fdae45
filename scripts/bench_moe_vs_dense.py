#!/usr/bin/env python3
"""The paper's headline on the paper's models: MobileMoE-S against the dense **MobileLLM-Pro**
(1.08B: 30 layers, D 1280, FFN 6144, 20/4 heads, vocabulary 202,048, local/global attention 3:1
with a 512-token window), both INT4 group 32 with fp16 scales and random weights, through the real
ExecuTorch runtime (``target/release/mobilemoe bench``), in alternating rounds of one run.

    .venv/bin/python scripts/bench_moe_vs_dense.py                        # S vs MobileLLM-Pro
    .venv/bin/python scripts/bench_moe_vs_dense.py --baseline dense-total # S vs a dense S of equal bytes
    .venv/bin/python scripts/bench_moe_vs_dense.py --layers 2 --quick     # smoke run (truncated models)

Per round, thread count (``--threads``, default 1 and 2) and model (the order alternates):
prefill of a P-token prompt from position 0 for each P of ``--prompts`` (one forward call; median
of ``--prefill-iters`` calls, one for prompts above 512), and real greedy decode of
``--decode-steps`` tokens after the context was prefilled to each depth of ``--depths``.
Bytes read per decode token come from the configs (T16K4 layout: INT4 nibbles + per-group scales,
rows padded to 16; the KV cache read at each depth, a local layer's bounded by its window) and are
checked against the exporter's count; each side's decode is reported as a fraction of the
streaming-read bandwidth measured (``moe_bench``'s probe) with the same thread count in the same run.
Results go to ``docs/results/moe-vs-dense-<date>.json`` (every sample, the machine, the load); the
README's table is rendered from it (``scripts/render_readme.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "python_export"))

import bench_common as bc  # noqa: E402
from mobilemoe_export import models  # noqa: E402

PAPER = {"prefill": (1.8, 3.8), "decode": (2.2, 3.4)}  # MobileMoE paper: S vs MobileLLM-Pro on phones
SCALE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
PY = REPO / ".venv" / "bin" / "python"


# --------------------------------------------------------------------------------------------
# Bytes
# --------------------------------------------------------------------------------------------
def _mat_bytes(n: int, k: int, group: int, bits: int, scale_bytes: int = 4) -> int:
    """T16K4 bytes of W[n, k]: data + per-group scales, rows padded to 16 (DESIGN.md section 2)."""
    np_ = -(-n // 16) * 16
    return np_ * k * bits // 8 + np_ * (k // group) * scale_bytes


def layer_windows(cfg: models.ModelConfig) -> list:
    """The attention window of each layer (0 = global), as the model computes them."""
    fn = getattr(models, "layer_windows", None)
    if fn is not None:
        return list(fn(cfg))
    return [0] * cfg.n_layers


def weight_bytes(cfg: models.ModelConfig, group: int, bits: int, scales: str = "fp16") -> dict:
    """Weight bytes of the exported model: stored in total, and read per decode token."""
    D, L, hd = cfg.dim, cfg.n_layers, cfg.head_dim
    sb = SCALE_BYTES[scales]
    m = lambda n, k: _mat_bytes(n, k, group, bits, sb)  # noqa: E731
    attn = m(cfg.n_heads * hd, D) + 2 * m(cfg.n_kv_heads * hd, D) + m(D, cfg.n_heads * hd)
    norms = 2 * D * 4
    if cfg.ffn == "moe":
        F = cfg.expert_hidden_dim
        expert = m(2 * F, D) + m(D, F)
        shared = (m(2 * cfg.shared_hidden_dim, D) + m(D, cfg.shared_hidden_dim)) if cfg.shared_hidden_dim else 0
        router = cfg.num_experts * D * 4 + (cfg.num_experts * 4 if cfg.use_expert_bias else 0)  # fp32
        ffn_q_total = cfg.num_experts * expert + shared
        ffn_q_active = cfg.top_k * expert + shared
        ffn_fp32 = router + (D * 4 if cfg.shared_gate and cfg.shared_hidden_dim else 0)
    else:
        Fd = cfg.dense_hidden_dim
        ffn_q_total = ffn_q_active = m(2 * Fd, D) + m(D, Fd)
        ffn_fp32 = 0
    head = m(cfg.vocab_size, D)  # the tied LM head is an INT4 linear; the embedding reads one row of it
    emb_row = D * bits // 8 + (D // group) * sb
    int4_total = L * (attn + ffn_q_total) + head
    active = L * (attn + ffn_q_active + ffn_fp32 + norms) + head + emb_row + D * 4
    return {"int4_total": int4_total, "int4_ffn_total": L * ffn_q_total, "active_per_token": active,
            "kv_row_bytes": 2 * cfg.n_kv_heads * hd * 2, "windows": layer_windows(cfg)}


def kv_bytes_at(nb: dict, depth: int) -> int:
    """fp16 K+V bytes read by one decode step at context ``depth`` (a local layer reads its window)."""
    return sum(nb["kv_row_bytes"] * (min(depth, w) if w else depth) for w in nb["windows"])


# --------------------------------------------------------------------------------------------
# Export (cached)
# --------------------------------------------------------------------------------------------
def ensure_export(args, preset: str, extra: list) -> Path:
    tag = "_".join([preset] + [e.strip("-") for e in extra] + [f"L{args.layers or 'all'}", f"seq{args.max_seq_len}",
                                                             args.scales])
    return bc.export_preset(args.cache_dir / f"{tag}.pte", preset, extra=extra, max_seq_len=args.max_seq_len,
                            scales=args.scales, n_layers=args.layers, force=args.force_export)


# --------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="S", help="the MoE preset (default S)")
    ap.add_argument("--baseline", default="mobilellm-pro", choices=["mobilellm-pro", "dense-total"],
                    help="the dense model: MobileLLM-Pro (the paper's), or `dense-total` (the preset's D, layers and "
                         "vocabulary with one dense FFN as wide as all experts together)")
    ap.add_argument("--prompts", default="128,512,2048", help="prefill prompt lengths (default 128,512,2048)")
    ap.add_argument("--depths", default="128,512,2048", help="decode context depths (default 128,512,2048)")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--prefill-iters", type=int, default=3, help="timed prefill calls per prompt <= 512 (default 3)")
    ap.add_argument("--max-seq-len", type=int, default=4096, help="both models (default 4096: depth 2048 + decode)")
    ap.add_argument("--scales", default="fp16", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--layers", type=int, default=None, help="truncate both models to this many layers (smoke runs)")
    ap.add_argument("--quick", action="store_true", help="1 round, 2 threads, prompt 128, depth 128, 8 decode steps")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "artifacts" / "bench")
    ap.add_argument("--force-export", action="store_true")
    ap.add_argument("--json-out", type=Path, help="also write the results here")
    ap.add_argument("--no-save", action="store_true", help="do not write docs/results")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.threads, args.prompts, args.depths, args.decode_steps = 1, "2", "128", "128", 8
    args.prompts = [int(x) for x in str(args.prompts).split(",") if x]
    args.depths = [int(x) for x in str(args.depths).split(",") if x]
    args.threads = [int(x) for x in str(args.threads).split(",") if x]
    if max(args.prompts + [d + args.decode_steps for d in args.depths]) > args.max_seq_len:
        raise SystemExit("error: prompts and depths + decode steps must fit in --max-seq-len")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    return args


def run_bench(pte: Path, threads: int, prompt: int, depths: list, args) -> dict:
    big = prompt > 512
    cmd = [bc.RUNNER, "bench", pte, "--threads", str(threads), "--prefill", str(prompt),
           "--iters", "1" if big else str(args.prefill_iters), "--warmup", "1",
           "--depths", ",".join(map(str, depths)) if depths else "0", "--decode-tokens", str(args.decode_steps)]
    r = bc.run_measured(cmd, env=dict(os.environ, MOBILEMOE_THREADS=str(threads)))
    return bc.parse_llm_bench(r["stdout"])


def main(argv=None) -> int:
    args = parse_args(argv)
    moe_cfg = models.get_config(args.preset).replace(max_seq_len=args.max_seq_len)
    if args.baseline == "mobilellm-pro":
        base_name, base_cfg = "mobilellm-pro", models.get_config("mobilellm-pro").replace(max_seq_len=args.max_seq_len)
        base_pte = ensure_export(args, "mobilellm-pro", [])
    else:
        base_name, base_cfg = f"{args.preset}-dense-total", models.dense_baseline(moe_cfg, match="total")
        base_pte = ensure_export(args, args.preset, ["--dense-baseline", "total"])
    if args.layers:
        moe_cfg, base_cfg = moe_cfg.replace(n_layers=args.layers), base_cfg.replace(n_layers=args.layers)
    ptes = {args.preset: ensure_export(args, args.preset, []), base_name: base_pte}
    cfgs = {args.preset: moe_cfg, base_name: base_cfg}
    nbytes = {k: weight_bytes(c, 32, 4, args.scales) for k, c in cfgs.items()}
    side = {k: json.loads(Path(str(p) + ".json").read_text()) for k, p in ptes.items()}
    for k in ptes:
        if nbytes[k]["int4_total"] != side[k].get("quantized_weight_bytes"):
            print(f"warning: {k}: computed INT4 bytes {nbytes[k]['int4_total']} != the exporter's "
                  f"{side[k].get('quantized_weight_bytes')}", file=sys.stderr)
    load0 = bc.loadavg()
    bw0 = {t: bc.bandwidth_probe(t) for t in args.threads}
    samples = {k: {str(t): {"prefill": {str(p): [] for p in args.prompts}, "decode": {str(d): [] for d in args.depths},
                            "rss": []} for t in args.threads} for k in ptes}
    for r in range(args.rounds):
        for t in args.threads:
            order = list(ptes) if r % 2 == 0 else list(ptes)[::-1]
            for k in order:
                for i, p in enumerate(args.prompts):
                    b = run_bench(ptes[k], t, p, args.depths if i == 0 else [], args)
                    s = samples[k][str(t)]
                    s["prefill"][str(p)].append(b["prefill"])
                    s["rss"].append(b["peak_rss_mib"])
                    for d in (args.depths if i == 0 else []):
                        s["decode"][str(d)].append(b.get(f"decode@{d}"))
                print(f"[round {r + 1}/{args.rounds}] {t} thread(s) {k}: "
                      + ", ".join(f"pp{p} {v[-1]:.1f}" for p, v in samples[k][str(t)]["prefill"].items())
                      + "; " + ", ".join(f"tg@{d} {v[-1]:.1f}" for d, v in samples[k][str(t)]["decode"].items()),
                      file=sys.stderr, flush=True)
    bw1 = {t: bc.bandwidth_probe(t) for t in args.threads}
    doc = {
        "renderer": "bench_moe_vs_dense", "moe": args.preset, "baseline": base_name,
        "prompts": args.prompts, "depths": args.depths, "threads": args.threads, "rounds": args.rounds,
        "decode_steps": args.decode_steps, "max_seq_len": args.max_seq_len, "scales": args.scales,
        "layers": args.layers, "paper": PAPER,
        "configs": {k: c.to_dict() for k, c in cfgs.items()},
        "bytes": {k: {kk: v for kk, v in nb.items() if kk != "windows"} for k, nb in nbytes.items()},
        "kv_bytes": {k: {str(d): kv_bytes_at(nb, d) for d in args.depths} for k, nb in nbytes.items()},
        "exporter": {k: {kk: side[k].get(kk) for kk in ("quantized_weight_bytes", "pte_bytes", "export_wall_s",
                                                           "export_peak_rss_mib")} for k in ptes},
        "bandwidth_gbps": {"before": {str(t): v for t, v in bw0.items()}, "after": {str(t): v for t, v in bw1.items()}},
        "samples": samples, "loadavg_before": load0, "loadavg_after": bc.loadavg(), "machine": bc.machine(),
    }
    print(render_markdown(doc))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=1))
    if not args.no_save and not args.layers:
        print(f"wrote {bc.write_results('moe-vs-dense', doc)}")
    return 0


# --------------------------------------------------------------------------------------------
# The table (also what scripts/render_readme.py calls)
# --------------------------------------------------------------------------------------------
def _fmt_rng(xs, f="{:.1f}"):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "-"
    return f.format(xs[0]) if f.format(xs[0]) == f.format(xs[-1]) else f"{f.format(xs[0])}-{f.format(xs[-1])}"


def render_markdown(doc) -> str:
    moe, base = doc["moe"], doc["baseline"]
    S, B = doc["samples"][moe], doc["samples"][base]
    mib = 1 << 20
    out = [f"| {moe} vs {base} | threads | {moe} | {base} (dense) | {moe} / {base} |", "|---|---|---|---|---|"]
    nb = doc["bytes"]
    out.append(f"| weight bytes read per decode token | | {nb[moe]['active_per_token'] / mib:.1f} MiB | "
               f"{nb[base]['active_per_token'] / mib:.1f} MiB | {nb[moe]['active_per_token'] / nb[base]['active_per_token']:.3f} |")
    out.append(f"| all INT4 weight bytes | | {nb[moe]['int4_total'] / mib:.0f} MiB | {nb[base]['int4_total'] / mib:.0f} MiB | "
               f"{nb[moe]['int4_total'] / nb[base]['int4_total']:.3f} |")
    ratios = {"prefill": [], "decode": []}
    for t in map(str, doc["threads"]):
        for p in map(str, doc["prompts"]):
            a, b = bc.median(S[t]["prefill"][p]), bc.median(B[t]["prefill"][p])
            ratios["prefill"].append(a / b)
            out.append(f"| prefill tok/s, {p}-token prompt | {t} | {_fmt_rng(S[t]['prefill'][p])} | "
                       f"{_fmt_rng(B[t]['prefill'][p])} | **{a / b:.2f}x** |")
        bw = doc["bandwidth_gbps"]["before"].get(t)
        for d in map(str, doc["depths"]):
            a, b = bc.median(S[t]["decode"][d]), bc.median(B[t]["decode"][d])
            ratios["decode"].append(a / b)
            frac = ""
            if bw:
                fr = [(nb[k]["active_per_token"] + doc["kv_bytes"][k][d]) * v / (bw * 1e9) for k, v in ((moe, a), (base, b))]
                frac = f" ({fr[0] * 100:.0f}% / {fr[1] * 100:.0f}% of {bw:.0f} GB/s)"
            out.append(f"| decode tok/s at depth {d}{frac} | {t} | {_fmt_rng(S[t]['decode'][d])} | "
                       f"{_fmt_rng(B[t]['decode'][d])} | **{a / b:.2f}x** |")
    rss = [max(max(x["rss"]) for x in doc["samples"][k].values()) for k in (moe, base)]
    out.append(f"| peak RSS (max) | | {rss[0]:.0f} MiB | {rss[1]:.0f} MiB | |")
    pp, dd = doc["paper"]["prefill"], doc["paper"]["decode"]
    out.append("")
    out.append(f"Ranges over {doc['rounds']} alternating rounds; ratios of the medians. Measured here: prefill "
               f"{min(ratios['prefill']):.2f}-{max(ratios['prefill']):.2f}x, decode {min(ratios['decode']):.2f}-"
               f"{max(ratios['decode']):.2f}x; the paper (phones, S vs MobileLLM-Pro at INT4): prefill {pp[0]}-{pp[1]}x, "
               f"decode {dd[0]}-{dd[1]}x. Decode in parentheses: (weights + KV cache read per token) x tok/s as a "
               f"fraction of the streaming-read bandwidth probed with the same threads. Both models: random weights, "
               f"INT4 group 32 with {doc['scales']} scales, fp16 KV cache, max_seq_len {doc['max_seq_len']}"
               + (f", TRUNCATED to {doc['layers']} layers" if doc.get("layers") else "") + ".")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
