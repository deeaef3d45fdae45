#!/usr/bin/env python3
"""MobileMoE-S (random weights) vs a dense baseline of equal INT4 weight memory, through the real
ExecuTorch runtime (the Rust runner ``target/release/mobilemoe``), in one run on this CPU.

    .venv/bin/python scripts/bench_moe_vs_dense.py                 # full S (22 layers), ~15 min cold
    .venv/bin/python scripts/bench_moe_vs_dense.py --layers 2 --quick   # development smoke run

What it does:

1. Exports (``python -m mobilemoe_export``, cached in ``artifacts/bench/`` under a name keyed by the
   options; skipped when the ``.pte`` and its ``.json`` sidecar exist) the preset with random
   weights and its dense baseline ``--dense-baseline total``: same D, layers, attention, vocab and
   tied embeddings; a dense SwiGLU FFN whose hidden size equals num_experts x expert F + shared F,
   so that its INT4 weight bytes equal the MoE FFN's. All linears are INT4 (group 32, ``--scales``
   per-group scales: fp16 by default, the CLI's preset default), both with the same ``--max-seq-len`` (the static KV cache attention
   cost grows with it).
2. Measures the streaming-read DRAM bandwidth with the same thread count (``target/release/moe_bench``,
   a 1 GiB buffer, median of 5 passes), before and after the model runs.
3. For each model, in alternating rounds: ``mobilemoe bench`` in its language-model mode (prefill:
   one forward call over a P-token prompt, median of several calls; decode: real greedy generation
   — data-dependent routing, advancing positions — of --decode-steps tokens after the context was
   prefilled to each depth of --depths, like llama-bench's ``tg`` at a depth), plus a real
   ``mobilemoe generate`` (P-token prompt) as a cross-check. Both models are exported whole-model
   (one MobileMoEBackend delegate: attention with an fp16 KV cache, norms, the fused dense or MoE
   FFN, LM head). All with MOBILEMOE_THREADS=T and --threads T.
4. Computes the weight bytes read per decode token from the configs (T16K4 layout, DESIGN.md
   section 2: INT4 nibbles + per-group scales, rows padded to 16; attention, the top-k routed experts +
   the shared expert or the dense FFN, the fp32 router and norms, the INT4 LM head and one INT4
   embedding row), checks the total against the exporter's count, and the decode roofline fraction
   = (bytes per token / bandwidth) / measured per-token time.
5. Prints a markdown table (and writes it with --markdown-out, raw numbers with --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python_export"))

from mobilemoe_export import models  # noqa: E402

PAPER = {"prefill": (1.8, 3.8), "decode": (2.2, 3.4)}  # MobileMoE paper, MoE vs dense, phones


# --------------------------------------------------------------------------------------------
# Bytes
# --------------------------------------------------------------------------------------------
SCALE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def _mat_bytes(n: int, k: int, group: int, bits: int, scale_bytes: int = 4) -> int:
    """T16K4 bytes of W[n, k]: data + per-group scales, rows padded to 16 (DESIGN.md section 2)."""
    np_ = -(-n // 16) * 16
    return np_ * k * bits // 8 + np_ * (k // group) * scale_bytes


def weight_bytes(cfg: models.ModelConfig, group: int, bits: int, scales: str = "fp32") -> dict:
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
        router = cfg.num_experts * D * 4  # fp32 (DESIGN.md section 4)
        ffn_q_total = cfg.num_experts * expert + shared
        ffn_q_active = cfg.top_k * expert + shared
        ffn_fp32 = router + (D * 4 if cfg.shared_gate and cfg.shared_hidden_dim else 0)
    else:
        Fd = cfg.dense_hidden_dim
        ffn_q_total = ffn_q_active = m(2 * Fd, D) + m(D, Fd)
        ffn_fp32 = 0
    head = m(cfg.vocab_size, D)  # the LM head is an INT4 linear; a tied embedding reads its rows
    emb_row = D * bits // 8 + (D // group) * sb  # one INT4 row of the packed table (+ its scales)
    final_norm = D * 4
    int4_total = L * (attn + ffn_q_total) + head
    active = L * (attn + ffn_q_active + ffn_fp32 + norms) + head + emb_row + final_norm
    kv_per_pos = L * 2 * cfg.n_kv_heads * hd * 2  # fp16 K + V per cached position (read per token)
    return {
        "int4_total": int4_total,
        "int4_ffn_total": L * ffn_q_total,
        "active_per_token": active,
        "active_int4_per_token": L * (attn + ffn_q_active) + head,
        "kv_cache_bytes_per_position": kv_per_pos,
    }


# --------------------------------------------------------------------------------------------
# Export (cached)
# --------------------------------------------------------------------------------------------
def export_name(preset: str, layers: int, seq: int, group: int, bits: int, kind: str, seed: int, scales: str) -> str:
    # "_whole": whole-decoder delegate exports; older cached per-op exports are not reused
    return f"{preset}_L{layers}_seq{seq}_g{group}_int{bits}_{kind}_seed{seed}_{scales}_whole.pte"


def ensure_export(args, kind: str, layers: int) -> Path:
    out = args.cache_dir / export_name(args.preset, layers, args.max_seq_len, args.group_size, 4, kind, args.seed,
                                       args.scales)
    side = Path(str(out) + ".json")
    if out.exists() and side.exists() and not args.force_export:
        print(f"[export] cached: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}", file=sys.stderr)
        return out
    cmd = [sys.executable, "-m", "mobilemoe_export", "--preset", args.preset, "--n-layers", str(layers),
           "--max-seq-len", str(args.max_seq_len), "--group-size", str(args.group_size), "--weight-bits", "4",
           "--seed", str(args.seed), "--scales", args.scales, "--no-progress", "--out", str(out)]
    if kind == "dense-total":
        cmd[5:5] = ["--dense-baseline", "total"]
    print(f"[export] {' '.join(cmd[1:])}", file=sys.stderr)
    side.unlink(missing_ok=True)  # the sidecar is written last: it marks a complete export
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=str(REPO / "python_export") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=sys.stderr)
    print(f"[export] done in {time.time() - t0:.0f} s", file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------
def run(cmd, env) -> str:
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout + "\n" + p.stderr


def bandwidth_gbps(args, env) -> float:
    out = run([str(args.moe_bench), "--json", "--threads", str(args.threads), "--layers", "none"], env)
    for line in out.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if d.get("kind") == "roofline" and d.get("threads") == args.threads:
                return float(d["gbps"])
    raise SystemExit(f"error: no roofline line in moe_bench output:\n{out}")


_LLM_ROW = re.compile(r"^(prefill-\d+|decode @\d+)\s+\S+\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def bench_llm(args, env, pte: Path) -> dict:
    """`mobilemoe bench` (language-model mode): {"prefill": tok/s, "decode@D": tok/s, ...}."""
    out = run([str(args.runner), "bench", str(pte), "--threads", str(args.threads), "--prefill", str(args.prompt_tokens),
               "--iters", str(args.prefill_iters), "--depths", ",".join(map(str, args.depths)),
               "--decode-tokens", str(args.decode_steps)], env)
    res = {}
    for m in map(_LLM_ROW.match, out.splitlines()):
        if m:
            name = "prefill" if m.group(1).startswith("prefill") else "decode@" + m.group(1).split("@")[1]
            res[name] = float(m.group(5))
            res[name + "_ms_per_token"] = float(m.group(4))
    if "prefill" not in res or not any(k.startswith("decode@") for k in res):
        raise SystemExit(f"error: cannot parse `mobilemoe bench` output:\n{out}")
    rss = re.search(r"peak RSS: ([\d.]+) MiB", out)
    res["peak_rss_mib"] = float(rss.group(1)) if rss else float("nan")
    return res


def make_prompt(n_tokens: int) -> str:
    """A text that the shipped tokenizer encodes to exactly n_tokens (or as close as it gets)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(models.DEFAULT_TOKENIZER))
    words = ("Once upon a time there was a little robot who lived in a small town by the sea and every "
             "morning it walked to the harbour to count the boats that came back from fishing").split()
    text, i = "", 0
    while len(tok.encode(text).ids) < n_tokens:
        text += (" " if text else "") + words[i % len(words)]
        i += 1
    while len(tok.encode(text).ids) > n_tokens and text:
        text = text[:-1]
    return text


def generate_stats(args, env, pte: Path, prompt: str) -> dict:
    out = run([str(args.runner), "generate", str(pte), "--threads", str(args.threads), "--prompt", prompt,
               "--max-new-tokens", str(args.decode_steps + 1), "--no-eos"], env)
    m = re.search(r"prompt tokens: (\d+), generated tokens: (\d+).*?prefill: ([\d.]+) tok/s, decode: ([\d.]+) tok/s",
                  out, re.S)
    if not m:
        raise SystemExit(f"error: cannot parse `mobilemoe generate` output:\n{out}")
    return {"prompt_tokens": int(m.group(1)), "generated_tokens": int(m.group(2)),
            "prefill_tok_s": float(m.group(3)), "decode_tok_s": float(m.group(4))}


# --------------------------------------------------------------------------------------------
def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def fmt_count(n: float) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="S", choices=[p for p in models.PRESETS if p != "tiny"])
    ap.add_argument("--scales", default="fp16", choices=["fp32", "fp16", "bf16"],
                    help="per-group scale precision of both exports (the CLI's preset default: fp16)")
    ap.add_argument("--layers", type=int, default=None, help="layer count (default: the full preset, 22 for S)")
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="KV cache length of both exports (default: the preset's, 2048)")
    ap.add_argument("--depths", default="128,1024",
                    help="context depths at which decode is measured (default 128,1024)")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prefill prompt length (default 128)")
    ap.add_argument("--decode-steps", type=int, default=64, help="greedy decode steps timed per depth (default 64)")
    ap.add_argument("--prefill-iters", type=int, default=5, help="timed prefill calls per round (default 5)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating MoE/dense measurement rounds; the table reports the median over rounds (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="kernel threads (default 2)")
    ap.add_argument("--group-size", type=int, default=32, choices=[32, 64, 128, 256])
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--no-generate", action="store_true", help="skip the `mobilemoe generate` cross-check")
    ap.add_argument("--quick", action="store_true",
                    help="1 round, 3 prefill calls, 16 decode steps (smoke run; numbers are noisy)")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "artifacts" / "bench")
    ap.add_argument("--force-export", action="store_true", help="re-export even if cached")
    ap.add_argument("--runner", type=Path, default=REPO / "target" / "release" / "mobilemoe")
    ap.add_argument("--moe-bench", type=Path, default=REPO / "target" / "release" / "moe_bench")
    ap.add_argument("--json-out", type=Path, help="write the raw results here")
    ap.add_argument("--markdown-out", type=Path, help="write the markdown table here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.prefill_iters, args.decode_steps = 1, 3, 16
    args.depths = [int(d) for d in str(args.depths).split(",") if d]
    for exe in (args.runner, args.moe_bench):
        if not exe.exists():
            raise SystemExit(f"error: {exe} not found: run `cargo build --release` first")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    return args


def configs(args):
    """(preset config, layer count, MoE config, dense baseline config) for the run."""
    base = models.get_config(args.preset)
    if args.max_seq_len is None:
        args.max_seq_len = base.max_seq_len
    layers = args.layers or base.n_layers
    cfg_moe = base.replace(n_layers=layers, max_seq_len=args.max_seq_len)
    cfg_dense = models.dense_baseline(cfg_moe, match="total", multiple=max(64, args.group_size))
    if max([args.prompt_tokens] + args.depths) + args.decode_steps + 1 > args.max_seq_len:
        raise SystemExit("error: --prompt-tokens / --depths + --decode-steps + 1 must fit in --max-seq-len")
    return base, layers, cfg_moe, cfg_dense


def export_both(args, layers: int, cfgs: dict):
    """Exports (or reuses) both .pte files: paths, exporter side files, weight bytes, parameter counts."""
    ptes = {"moe": ensure_export(args, "moe", layers), "dense": ensure_export(args, "dense-total", layers)}
    side = {k: json.loads(Path(str(p) + ".json").read_text()) for k, p in ptes.items()}
    nbytes = {k: weight_bytes(c, args.group_size, 4, args.scales) for k, c in cfgs.items()}
    counts = {k: models.count_params(c) for k, c in cfgs.items()}
    for k in ptes:
        if nbytes[k]["int4_total"] != side[k]["quantized_weight_bytes"]:
            print(f"warning: {k}: computed INT4 bytes {nbytes[k]['int4_total']} != exporter's "
                  f"{side[k]['quantized_weight_bytes']}", file=sys.stderr)
    return ptes, side, nbytes, counts


def measure(args, ptes: dict):
    """Alternating MoE/dense rounds between two bandwidth measurements: (results, bandwidths, load before, after)."""
    env = dict(os.environ, MOBILEMOE_THREADS=str(args.threads))
    load0 = os.getloadavg()
    bw = [bandwidth_gbps(args, env)]
    print(f"[bw] streaming read, {args.threads} threads: {bw[-1]:.1f} GB/s", file=sys.stderr)
    prompt = make_prompt(args.prompt_tokens) if not args.no_generate else ""
    res = {k: {"prefill": [], "decode": {dd: [] for dd in args.depths}, "gen": [], "rss": []} for k in ptes}
    for r in range(args.rounds):
        order = ["moe", "dense"] if r % 2 == 0 else ["dense", "moe"]
        for k in order:
            b = bench_llm(args, env, ptes[k])
            res[k]["prefill"].append(b["prefill"])
            for dd in args.depths:
                res[k]["decode"][dd].append(b.get(f"decode@{dd}", float("nan")))
            res[k]["rss"].append(b["peak_rss_mib"])
            line = (f"[round {r + 1}/{args.rounds}] {k:5s} prefill-{args.prompt_tokens} {b['prefill']:.1f} tok/s, "
                    + ", ".join(f"decode @{dd} {b.get(f'decode@{dd}', float('nan')):.1f} tok/s" for dd in args.depths))
            if not args.no_generate:
                g = generate_stats(args, env, ptes[k], prompt)
                res[k]["gen"].append(g)
                line += f"; generate: prompt {g['prompt_tokens']} tok, decode {g['decode_tok_s']:.1f} tok/s"
            print(line, file=sys.stderr)
    bw.append(bandwidth_gbps(args, env))
    print(f"[bw] streaming read, {args.threads} threads: {bw[-1]:.1f} GB/s", file=sys.stderr)
    load1 = os.getloadavg()
    return res, bw, load0, load1


def summarize(args, ptes: dict, res: dict, side: dict, nbytes: dict, counts: dict, bw_gbps: float) -> dict:
    """Medians over rounds and the derived roofline numbers, per kind."""
    S = {}
    d0 = args.depths[0]
    for k in ptes:
        pre_tok_s = statistics.median(res[k]["prefill"])
        dec_tok_s = {dd: statistics.median(res[k]["decode"][dd]) for dd in args.depths}
        dec = 1e3 / dec_tok_s[d0]
        act = nbytes[k]["active_per_token"]
        roof_ms = act / (bw_gbps * 1e9) * 1e3
        S[k] = {
            "params_total": counts[k]["total"], "params_active": counts[k]["active"],
            "int4_total_bytes": side[k]["quantized_weight_bytes"], "int4_ffn_bytes": nbytes[k]["int4_ffn_total"],
            "active_bytes_per_token": act,
            "prefill_ms": args.prompt_tokens / pre_tok_s * 1e3, "prefill_tok_s": pre_tok_s,
            "decode_ms": dec, "decode_tok_s": dec_tok_s[d0],
            "decode_tok_s_by_depth": dec_tok_s,
            "roofline_fraction_by_depth": {dd: roof_ms / (1e3 / v) for dd, v in dec_tok_s.items()},
            "decode_gbps": act / (dec / 1e3) / 1e9,
            "roofline_ms": roof_ms, "roofline_tok_s": 1e3 / roof_ms, "roofline_fraction": roof_ms / dec,
            "gen_decode_tok_s": statistics.median([g["decode_tok_s"] for g in res[k]["gen"]]) if res[k]["gen"] else None,
            "gen_prefill_tok_s": statistics.median([g["prefill_tok_s"] for g in res[k]["gen"]]) if res[k]["gen"] else None,
            "gen_prompt_tokens": res[k]["gen"][0]["prompt_tokens"] if res[k]["gen"] else None,
            "peak_rss_mib": max(res[k]["rss"]),
            "pte_bytes": side[k]["pte_bytes"],
            "raw": res[k],
        }
    return S


def cpu_name() -> str:
    cpu = "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except Exception:
        pass
    return cpu


def table_rows(args, m: dict, d: dict, bw_gbps: float) -> list:
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    rows = [
        ("parameters, total / active per token",
         f"{fmt_count(m['params_total'])} / {fmt_count(m['params_active'])}",
         f"{fmt_count(d['params_total'])} / {fmt_count(d['params_active'])}", ""),
        ("FFN INT4 bytes (data + scales)", fmt_bytes(m["int4_ffn_bytes"]), fmt_bytes(d["int4_ffn_bytes"]),
         f"{ratio(m['int4_ffn_bytes'], d['int4_ffn_bytes']):.3f}"),
        ("all INT4 weight bytes (FFN + attention + LM head)", fmt_bytes(m["int4_total_bytes"]),
         fmt_bytes(d["int4_total_bytes"]), f"{ratio(m['int4_total_bytes'], d['int4_total_bytes']):.3f}"),
        ("weight bytes read per decode token", fmt_bytes(m["active_bytes_per_token"]),
         fmt_bytes(d["active_bytes_per_token"]), f"{ratio(m['active_bytes_per_token'], d['active_bytes_per_token']):.3f}"),
        (f"**prefill tok/s** ({args.prompt_tokens}-token prompt, median)", f"**{m['prefill_tok_s']:.1f}**",
         f"**{d['prefill_tok_s']:.1f}**", f"**{ratio(m['prefill_tok_s'], d['prefill_tok_s']):.2f}x**"),
    ]
    for dd in args.depths:
        mv, dv = m["decode_tok_s_by_depth"][dd], d["decode_tok_s_by_depth"][dd]
        rows.append((f"**decode tok/s at context {dd}** ({args.decode_steps} greedy steps)",
                     f"**{mv:.1f}** ({1e3 / mv:.1f} ms)", f"**{dv:.1f}** ({1e3 / dv:.1f} ms)", f"**{ratio(mv, dv):.2f}x**"))
    if m["gen_decode_tok_s"] is not None:
        rows.append((f"decode tok/s, `generate` ({args.decode_steps} greedy steps after a "
                     f"{m['gen_prompt_tokens']}-token prompt, mean)",
                     f"{m['gen_decode_tok_s']:.1f}", f"{d['gen_decode_tok_s']:.1f}",
                     f"{ratio(m['gen_decode_tok_s'], d['gen_decode_tok_s']):.2f}x"))
    rows += [
        (f"decode roofline tok/s (bytes per token / {bw_gbps:.1f} GB/s)", f"{m['roofline_tok_s']:.1f}",
         f"{d['roofline_tok_s']:.1f}", f"{ratio(m['roofline_tok_s'], d['roofline_tok_s']):.2f}x"),
        ("decode weight GB/s achieved", f"{m['decode_gbps']:.1f}", f"{d['decode_gbps']:.1f}", ""),
    ]
    for dd in args.depths:
        rows.append((f"**decode fraction of DRAM roofline at context {dd}**",
                     f"**{m['roofline_fraction_by_depth'][dd] * 100:.0f}%**",
                     f"**{d['roofline_fraction_by_depth'][dd] * 100:.0f}%**", ""))
    rows += [
        ("peak RSS", f"{m['peak_rss_mib']:,.0f} MiB", f"{d['peak_rss_mib']:,.0f} MiB", ""),
    ]
    return rows


def markdown(args, rows, layers, base, cfg_moe, cfg_dense, cpu, bw, bw_gbps, load0, load1) -> str:
    full = layers == base.n_layers
    caption = (f"{args.preset} preset{'' if full else f' **TRUNCATED TO {layers} OF {base.n_layers} LAYERS**'} "
               f"(D={cfg_moe.dim}, {layers} layers, {cfg_moe.num_experts} experts x F={cfg_moe.expert_hidden_dim} top-{cfg_moe.top_k} "
               f"+ shared F={cfg_moe.shared_hidden_dim}, vocab {cfg_moe.vocab_size}, random weights) vs dense baseline "
               f"(F={cfg_dense.dense_hidden_dim}, same attention/embeddings); INT4 group {args.group_size} everywhere, "
               f"max_seq_len {args.max_seq_len}; {args.threads} threads, ExecuTorch runtime via `mobilemoe bench`; "
               f"{cpu}; medians of {args.rounds} alternating round(s) ({args.prefill_iters} prefill calls, "
               f"{args.decode_steps} greedy decode steps per depth each); streaming-read bandwidth {bw_gbps:.1f} GB/s "
               f"(measured in the same run: {', '.join(f'{b:.1f}' for b in bw)}); load average "
               f"{load0[0]:.1f} before, {load1[0]:.1f} after.")
    md = [f"| {args.preset}: MoE vs dense (equal INT4 weight memory) | MoE | dense | MoE / dense |", "|---|---|---|---|"]
    md += [f"| {a} | {b} | {c} | {r} |" for a, b, c, r in rows]
    md.append("")
    md.append(caption)
    md.append(f"Paper (phones): prefill {PAPER['prefill'][0]}-{PAPER['prefill'][1]}x, decode "
              f"{PAPER['decode'][0]}-{PAPER['decode'][1]}x faster (MoE vs dense).")
    return "\n".join(md)


def main(argv=None) -> int:
    args = parse_args(argv)
    base, layers, cfg_moe, cfg_dense = configs(args)
    cfgs = {"moe": cfg_moe, "dense": cfg_dense}
    ptes, side, nbytes, counts = export_both(args, layers, cfgs)
    res, bw, load0, load1 = measure(args, ptes)
    bw_gbps = statistics.median(bw)
    S = summarize(args, ptes, res, side, nbytes, counts, bw_gbps)
    m, d = S["moe"], S["dense"]
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    full = layers == base.n_layers
    cpu = cpu_name()
    text = markdown(args, table_rows(args, m, d, bw_gbps), layers, base, cfg_moe, cfg_dense, cpu, bw, bw_gbps,
                    load0, load1)
    print(text)
    if args.markdown_out:
        args.markdown_out.write_text(text + "\n")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "layers": layers, "full_preset": full, "cpu": cpu, "platform": platform.platform(),
            "bandwidth_gbps": bw, "loadavg_before": load0, "loadavg_after": load1,
            "configs": {k: c.to_dict() for k, c in cfgs.items()}, "results": S,
            "ratios": {"prefill": ratio(m["prefill_tok_s"], d["prefill_tok_s"]),
                       "decode": ratio(m["decode_tok_s"], d["decode_tok_s"]),
                       "decode_by_depth": {dd: ratio(m["decode_tok_s_by_depth"][dd], d["decode_tok_s_by_depth"][dd])
                                           for dd in args.depths},
                       "decode_generate": ratio(m["gen_decode_tok_s"], d["gen_decode_tok_s"])
                       if m["gen_decode_tok_s"] else None},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
