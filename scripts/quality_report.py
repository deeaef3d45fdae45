#!/usr/bin/env python3
"""Measured quality of the trained default model (issue 14): the README table, plots, samples.

    .venv/bin/python scripts/quality_report.py [--run runs/default] [--dense-run runs/dense] [--windows 256]

Needs the recipe's outputs (``python -m mobilemoe_export.train --out-dir runs/default`` and
``python -m mobilemoe_export.train --arch dense --stages pre --out-dir runs/dense``) and the
runtime library (``make build``). Writes docs/quality.json, docs/quality.md (the tables pasted in
the README), docs/train_loss.png, docs/train_moe_vs_dense.png, docs/expert_load.png.

Held-out text: Macbeth and The Tempest, both editions (never trained on). Every number is a mean
next-token cross-entropy over the same ``--windows`` non-overlapping 256-token windows spread
evenly over the held-out stream (nats/token; perplexity = exp). Rows:

- fp32 after stage 3 (SFT), eager ``Transformer.forward``;
- PTQ: ``quantize_moe`` (INT4 g32, every linear as the export CLI does, Q8 activations) of that
  model, eager (the Rust kernels);
- QAT: the stage-4 checkpoint, quantized the same way, eager;
- QAT .pte: the same checkpoint exported by the export CLI with its defaults (as ``make demo``
  does), run on the ExecuTorch runtime one token at a time through its KV cache;
- recovered = (PTQ - QAT) / (PTQ - fp32).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python_export"))

from mobilemoe_export import cli, models  # noqa: E402
from mobilemoe_export import train as T  # noqa: E402
from mobilemoe_export import train_data as D  # noqa: E402
from mobilemoe_export.generate import EOS_TOKEN, PteModel, generate_tokens, load_tokenizer  # noqa: E402

DOCS = REPO / "docs"
CTX = 256


def windows(stream: np.ndarray, n: int) -> np.ndarray:
    total = (len(stream) - 1) // CTX
    idx = np.linspace(0, total - 1, min(n, total)).astype(int)
    return np.stack([stream[j * CTX: j * CTX + CTX + 1] for j in idx]).astype(np.int64)


def ce_sum(logits: torch.Tensor, tgt: torch.Tensor) -> float:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), tgt.reshape(-1), reduction="sum").item()


def eval_forward(fwd, wins: np.ndarray) -> float:
    """fwd(tokens [1, S], pos [S]) -> logits [1, S, V] (or [S, V])."""
    tot = 0.0
    pos = torch.arange(CTX)
    for w in wins:
        t = torch.from_numpy(w)
        lg = fwd(t[None, :-1], pos)
        tot += ce_sum(lg.reshape(CTX, -1), t[1:])
    return tot / (len(wins) * CTX)


def eval_decode(pte, wins: np.ndarray) -> float:
    """Feed each window one token at a time (positions 0..255) and score every next token."""
    tot = 0.0
    for w in wins:
        t = torch.from_numpy(w)
        rows = [pte(t[None, s:s + 1], torch.tensor([s])).reshape(-1) for s in range(CTX)]
        tot += ce_sum(torch.stack(rows), t[1:])
    return tot / (len(wins) * CTX)


def quantized(path: Path, all_logits=True):
    args = cli.build_parser().parse_args(["--checkpoint", str(path)])
    m, cfg, ex, ds = cli.build_from_args(args)
    m.all_logits = all_logits
    m = cli.quantize(m, cfg, args).eval()
    return m, ex, ds


def eager(m):
    def f(t, p):
        m.reset_cache()
        with torch.no_grad():
            return m(t, p)
    return f


def batched_loss(model, wins: np.ndarray, qat=False) -> float:
    tot = 0.0
    with torch.no_grad():
        for i in range(0, len(wins), 8):
            w = torch.from_numpy(wins[i:i + 8])
            tot += ce_sum(T.lm_forward(model, w[:, :-1], qat=qat), w[:, 1:])
    return tot / (len(wins) * CTX)


def read_log(path: Path):
    steps, evals = {}, {}
    for line in open(path):
        r = json.loads(line)
        if "step" in r:
            steps[(r["stage"], r["step"])] = r
        elif r.get("eval"):
            evals[r["stage"]] = r
    return steps, evals


def ema(xs, a=0.98):
    out, m = [], None
    for x in xs:
        m = x if m is None else a * m + (1 - a) * x
        out.append(m)
    return out


def specialisation(model, tok, held_works):
    """Route held-out speeches and compare the expert distribution of token classes."""
    eos = tok.token_to_id(EOS_TOKEN)
    ids, cls = [], []
    n_verse = 0
    for w in held_works:
        if w.edition == "poem":
            continue
        for who, speech in D.split_speeches(w.text):
            kind = D.speech_kind(speech)
            if kind is None:
                continue
            if kind == "verse":
                kind = "verse_a" if n_verse % 2 == 0 else "verse_b"
                n_verse += 1
            head = tok.encode(f"{who}:\n").ids
            body = tok.encode(speech + "\n\n").ids
            ids += head + body
            cls += ["name"] * len(head) + [kind] * len(body)
    ids.append(eos)
    cls.append("other")  # not counted
    L, E = model.cfg.n_layers, model.cfg.num_experts
    counts = {c: np.zeros((L, E)) for c in set(cls) - {"other"}}
    n = (len(ids) - 1) // CTX
    arr = np.asarray(ids[: n * CTX], dtype=np.int64).reshape(n, CTX)
    carr = np.asarray(cls[: n * CTX]).reshape(n, CTX)
    with torch.no_grad():
        for i in range(0, n, 8):
            trace = []
            T.lm_forward(model, torch.from_numpy(arr[i:i + 8]), qat=True, trace=trace)
            c = carr[i:i + 8].reshape(-1)
            for li, sel in enumerate(trace):
                sel = sel.numpy()
                for k in range(sel.shape[1]):
                    for name in counts:
                        m = c == name
                        counts[name][li] += np.bincount(sel[m, k], minlength=E)
    dist = {c: v / v.sum(-1, keepdims=True) for c, v in counts.items()}
    tv = lambda a, b: 0.5 * np.abs(a - b).sum(-1)  # noqa: E731
    verse = (counts["verse_a"] + counts["verse_b"])
    verse_d = verse / verse.sum(-1, keepdims=True)
    speech = verse + counts["prose"]
    speech_d = speech / speech.sum(-1, keepdims=True)
    res = {
        "tokens": {c: int(v[0].sum() // model.cfg.top_k) for c, v in counts.items()},
        "tv_verse_vs_prose": tv(verse_d, dist["prose"]).round(4).tolist(),
        "tv_verse_half_vs_half": tv(dist["verse_a"], dist["verse_b"]).round(4).tolist(),
        "tv_names_vs_speech": tv(dist["name"], speech_d).round(4).tolist(),
    }
    # per layer: the expert whose share grows most (percentage points) on speaker names vs speech,
    # and on prose vs verse
    res["name_expert"] = []
    res["prose_expert"] = []
    for li in range(L):
        e = int(np.argmax(dist["name"][li] - speech_d[li]))
        res["name_expert"].append({"layer": li, "expert": e, "share_of_name_tokens": round(float(dist["name"][li, e]), 4),
                                   "share_of_speech_tokens": round(float(speech_d[li, e]), 4)})
        e = int(np.argmax(dist["prose"][li] - verse_d[li]))
        res["prose_expert"].append({"layer": li, "expert": e, "share_of_prose": round(float(dist["prose"][li, e]), 4),
                                    "share_of_verse": round(float(verse_d[li, e]), 4)})
    res["dist"] = {"name": dist["name"].round(4).tolist(), "prose": dist["prose"].round(4).tolist(),
                   "verse": verse_d.round(4).tolist(), "speech": speech_d.round(4).tolist()}
    return res


def instruction_eval(paths, tok, held, n=300, tag="heldout"):
    """On held-out instructions (Macbeth/Tempest speakers, never trained on): answer loss and the
    share whose greedy answer starts with the requested ``SPEAKER:`` heading (teacher-forced greedy
    = what greedy generation would produce for those tokens)."""
    exs = D.encode_instructions(tok, D.instruction_examples(held), 256, tag)[:n]
    out = {}
    for name, path in paths.items():
        m = models.load_checkpoint(path)
        tot, cnt, ok = 0.0, 0, 0
        with torch.no_grad():
            for ids, start in exs:
                t = torch.from_numpy(ids.astype(np.int64))[None]
                lg = T.lm_forward(m, t[:, :-1], qat=(name == "qat"))[0]
                tgt = t[0, 1:]
                tot += F.cross_entropy(lg[start - 1:], tgt[start - 1:], reduction="sum").item()
                cnt += len(tgt) - (start - 1)
                head = tok.decode(ids[start:].tolist()).split("\n")[0]
                nh = len(tok.encode(head + "\n").ids)
                ok += bool((lg[start - 1:start - 1 + nh].argmax(-1) == tgt[start - 1:start - 1 + nh]).all())
        out[name] = {"answer_loss": tot / cnt, "speaker_correct": ok / len(exs), "n": len(exs)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "default")
    ap.add_argument("--dense-run", type=Path, default=REPO / "runs" / "dense")
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DOCS)
    ap.add_argument("--rerender", action="store_true",
                    help="recompute only the specialisation analysis and re-render docs/quality.md from quality.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rerender:
        R = json.loads((args.out / "quality.json").read_text())
        tok = load_tokenizer()
        _, held = D.split_works(D.load_works())
        R["specialisation"] = specialisation(models.load_checkpoint(args.run / "qat_model.pt"), tok, held)
        R["instructions"] = instruction_eval({s: args.run / f"{s}_model.pt" for s in ("mid", "sft", "qat")}, tok, held)
        R["instructions_train"] = instruction_eval({s: args.run / f"{s}_model.pt" for s in ("mid", "sft", "qat")}, tok,
                                                  [w for w in D.load_works() if w.key not in D.HELD_OUT], tag="full")
        (args.out / "quality.json").write_text(json.dumps(R, indent=1))
        (args.out / "quality.md").write_text(render(R))
        print(render(R))
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tok = load_tokenizer()
    works = D.load_works()
    _, held = D.split_works(works)
    stream = D.encode_works(tok, held, "heldout")
    wins = windows(stream, args.windows)
    n_tok = wins.shape[0] * CTX
    chars_per_tok = sum(len(w.text) for w in held) / len(stream)
    print(f"held-out: {len(stream):,} tokens; evaluating {wins.shape[0]} windows = {n_tok:,} tokens", file=sys.stderr)
    R = {"heldout_tokens": int(len(stream)), "eval_tokens": int(n_tok), "chars_per_token": round(chars_per_tok, 4)}
    sft, qat = args.run / "sft_model.pt", args.run / "qat_model.pt"

    t = time.time()
    m = models.load_checkpoint(sft)
    m.all_logits = True
    R["fp32_sft"] = eval_forward(eager(m), wins)
    m = models.load_checkpoint(qat)
    m.all_logits = True
    R["fp32_qat_latent"] = eval_forward(eager(m), wins)
    R["qat_fake_quant"] = batched_loss(models.load_checkpoint(qat), wins, qat=True)
    qm, _, _ = quantized(sft)
    R["ptq_int4_eager"] = eval_forward(eager(qm), wins)
    qm, ex, ds = quantized(qat)
    R["qat_int4_eager"] = eval_forward(eager(qm), wins)
    print(f"eager rows: {time.time() - t:.0f}s", file=sys.stderr)

    # .pte rows, run token by token through the runtime's KV cache:
    #  - per-op delegates (quantize_moe ops in MobileMoEBackend, attention/embedding portable fp32):
    #    the same numerics as the eager quantize_moe row;
    #  - the default export (what `make demo` ships): the whole decoder in one delegate, which also
    #    stores the embedding table INT4 and keeps an fp16 KV cache. Its eager twin
    #    (cli.lower_like_export, what parity.py checks) is compared bit for bit on a prefix.
    t = time.time()
    per_op = REPO / "artifacts" / "default_per_op.pte"
    if cli.main(["--checkpoint", str(qat), "--out", str(per_op), "--no-progress", "--per-op"]) != 0:
        raise SystemExit("export failed")
    R["qat_int4_pte_per_op"] = eval_decode(PteModel(per_op), wins)
    pte_path = REPO / "artifacts" / "default_quality.pte"
    if cli.main(["--checkpoint", str(qat), "--out", str(pte_path), "--no-progress"]) != 0:
        raise SystemExit("export failed")
    pte = PteModel(pte_path)
    R["qat_int4_pte"] = eval_decode(pte, wins)
    ptq_pte = REPO / "artifacts" / "sft_ptq.pte"
    if cli.main(["--checkpoint", str(sft), "--out", str(ptq_pte), "--no-progress"]) != 0:
        raise SystemExit("export failed")
    R["ptq_int4_pte"] = eval_decode(PteModel(ptq_pte), wins)
    args_e = cli.build_parser().parse_args(["--checkpoint", str(qat)])
    m_e, cfg_e, _, _ = cli.build_from_args(args_e)
    low = cli.lower_like_export(cli.quantize(m_e, cfg_e, args_e), args_e).eval()
    w0 = torch.from_numpy(wins[0])
    with torch.no_grad():
        diffs = [float((low(w0[None, s:s + 1], torch.tensor([s])).reshape(-1)
                        - pte(w0[None, s:s + 1], torch.tensor([s])).reshape(-1)).abs().max()) for s in range(32)]
    R["pte_vs_lowered_eager_max_abs_diff_32_tokens"] = max(diffs)
    print(f".pte rows: {time.time() - t:.0f}s", file=sys.stderr)
    R["pte_per_op_vs_eager_rel"] = abs(math.exp(R["qat_int4_pte_per_op"]) - math.exp(R["qat_int4_eager"])) / math.exp(R["qat_int4_eager"])
    R["pte_vs_eager_rel"] = abs(math.exp(R["qat_int4_pte"]) - math.exp(R["qat_int4_eager"])) / math.exp(R["qat_int4_eager"])
    gap_ptq = R["ptq_int4_eager"] - R["fp32_sft"]
    gap_qat = R["qat_int4_eager"] - R["fp32_sft"]
    R["qat_recovers"] = (gap_ptq - gap_qat) / gap_ptq if gap_ptq > 0 else float("nan")
    gp, gq = R["ptq_int4_pte"] - R["fp32_sft"], R["qat_int4_pte"] - R["fp32_sft"]
    R["qat_recovers_shipped"] = (gp - gq) / gp if gp > 0 else float("nan")

    # MoE vs dense (pre-training stage, same data, steps, seed)
    steps, evals = read_log(args.run / "train_log.jsonl")
    R["stage_seconds"] = {s: evals[s].get("cpu_seconds", evals[s]["seconds"]) for s in T.STAGES if s in evals}
    R["stage_wall_seconds"] = {s: evals[s]["seconds"] for s in T.STAGES if s in evals}
    R["stage_heldout_loss"] = {s: evals[s]["loss"] for s in T.STAGES if s in evals}
    R["recipe_minutes"] = round(sum(R["stage_seconds"].values()) / 60, 1)
    if (args.dense_run / "pre_model.pt").exists():
        dsteps, devals = read_log(args.dense_run / "train_log.jsonl")
        n = max(k[1] for k in dsteps if k[0] == "pre")
        moe_ck = args.run / f"pre_step{n}_model.pt"
        if not moe_ck.exists():
            moe_ck = args.run / "pre_model.pt"
        moe_pre = models.load_checkpoint(moe_ck)
        dense_pre = models.load_checkpoint(args.dense_run / "pre_model.pt")
        R["compare_steps"] = n
        R["moe_pre_heldout"] = batched_loss(moe_pre, wins)
        R["dense_pre_heldout"] = batched_loss(dense_pre, wins)
        R["moe_params"] = models.count_params(moe_pre.cfg)
        R["dense_params"] = models.count_params(dense_pre.cfg)
        R["dense_hidden"] = dense_pre.cfg.dense_hidden_dim
        R["moe_cfg"] = moe_pre.cfg.to_dict()

        def cpu_per_step(st, lo, hi):  # CPU seconds per step over a stretch without restarts
            a_, b_ = st.get(("pre", lo)), st.get(("pre", hi))
            return (b_["cpu"] - a_["cpu"]) / (hi - lo) if a_ and b_ and "cpu" in a_ and "cpu" in b_ else float("nan")

        moe_last = max(k[1] for k in steps if k[0] == "pre")
        R["moe_cpu_s_per_step"] = cpu_per_step(steps, moe_last - 700, moe_last)
        R["dense_cpu_s_per_step"] = cpu_per_step(dsteps, n - 700, n)
        ms = [steps[("pre", i)]["loss"] for i in range(1, n + 1)]
        ds_ = [dsteps[("pre", i)]["loss"] for i in range(1, n + 1)]
        R["moe_pre_final_train_ema"] = ema(ms)[-1]
        R["dense_pre_final_train_ema"] = ema(ds_)[-1]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(range(1, len(ms) + 1), ema(ms), label=f"MoE ({R['moe_params']['active'] / 1e6:.2f} M active / "
                f"{R['moe_params']['total'] / 1e6:.2f} M total)")
        ax.plot(range(1, len(ds_) + 1), ema(ds_), label=f"dense, equal active ({R['dense_params']['total'] / 1e6:.2f} M)")
        ax.set_xlabel("step (2048 tokens each)")
        ax.set_ylabel("training loss (EMA 0.98), nats/token")
        ax.set_ylim(top=min(6, max(ema(ms)[50], ema(ds_)[50])))
        ax.set_title("Pre-training on Shakespeare: MoE vs dense at equal active parameters")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / "train_moe_vs_dense.png", dpi=110)
        plt.close(fig)

    # all four stages
    fig, ax = plt.subplots(figsize=(8, 4))
    x0 = 0
    for s in T.STAGES:
        ys = [steps[k]["loss"] for k in sorted(k for k in steps if k[0] == s)]
        if not ys:
            continue
        ax.plot(range(x0 + 1, x0 + len(ys) + 1), ema(ys, 0.95), label=f"{s} (held-out {evals[s]['loss']:.3f})")
        x0 += len(ys)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (EMA), nats/token")
    ax.set_title("Four-stage recipe (sft/qat: loss on answers + 1/4 plain-text replay)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "train_loss.png", dpi=110)
    plt.close(fig)

    # expert load on held-out text (the shipped QAT model, fake-quantized weights = the INT4 weights)
    qmodel = models.load_checkpoint(qat)
    cfg = qmodel.cfg
    load = torch.zeros(cfg.n_layers, cfg.num_experts)
    with torch.no_grad():
        for i in range(0, len(wins), 8):
            T.lm_forward(qmodel, torch.from_numpy(wins[i:i + 8, :-1]), qat=True, load=load)
    frac = (load / load.sum(-1, keepdim=True)).numpy()
    R["expert_load"] = frac.round(4).tolist()
    R["expert_load_max_over_mean"] = (frac.max(-1) * cfg.num_experts).round(3).tolist()
    R["expert_load_min_over_mean"] = (frac.min(-1) * cfg.num_experts).round(3).tolist()
    fig, axes = plt.subplots(1, cfg.n_layers, figsize=(3.2 * cfg.n_layers, 3), sharey=True)
    for li, ax in enumerate(np.atleast_1d(axes)):
        ax.bar(range(cfg.num_experts), frac[li] * 100)
        ax.axhline(100 / cfg.num_experts, color="k", lw=0.8, ls="--")
        ax.set_title(f"layer {li}")
        ax.set_xlabel("expert")
    np.atleast_1d(axes)[0].set_ylabel("% of routed slots (top-2)")
    fig.suptitle("Expert load on held-out text (Macbeth, The Tempest); dashed = uniform")
    fig.tight_layout()
    fig.savefig(args.out / "expert_load.png", dpi=110)
    plt.close(fig)

    R["specialisation"] = specialisation(qmodel, tok, held)
    R["instructions"] = instruction_eval({s: args.run / f"{s}_model.pt" for s in ("mid", "sft", "qat")}, tok, held)
    R["instructions_train"] = instruction_eval({s: args.run / f"{s}_model.pt" for s in ("mid", "sft", "qat")}, tok,
                                              [w for w in D.load_works() if w.key not in D.HELD_OUT], tag="full")

    # samples from the shipped .pte path (the export CLI, as make demo does)
    samples = {}
    p = pte
    eos = tok.token_to_id(EOS_TOKEN)
    for name, prompt, temp in [
        ("greedy ROMEO:", "ROMEO:\n", 0.0),
        ("sampled ROMEO: (T=0.8, top-p 0.95, seed 0)", "ROMEO:\n", 0.8),
        ("instruction", D.format_prompt("Give a speech by HAMLET about death."), 0.0),
        ("instruction, sampled", D.format_prompt("Give a speech by JULIET about night."), 0.8),
    ]:
        ids = tok.encode(prompt).ids
        r = generate_tokens(p, ids, 96, p.max_seq_len, temperature=temp, top_p=0.95, seed=0, eos_id=eos)
        samples[name] = prompt + tok.decode(r.tokens, skip_special_tokens=True)
    R["samples"] = samples
    (args.out / "quality.json").write_text(json.dumps(R, indent=1))
    md = render(R)
    (args.out / "quality.md").write_text(md)
    print(md)
    return 0


def render(R) -> str:
    ppl = lambda x: math.exp(x)  # noqa: E731
    L = []
    L.append(f"Held-out: Macbeth + The Tempest, both editions ({R['heldout_tokens']:,} tokens; "
             f"{R['eval_tokens']:,} evaluated in 256-token windows; {R['chars_per_token']:.2f} characters/token).\n")
    L.append("| model (held-out) | loss (nats/token) | perplexity | bits/char |")
    L.append("|---|---|---|---|")
    rows = [("fp32, after stage 3 (SFT)", "fp32_sft"),
            ("PTQ: `quantize_moe` INT4 g32 of that model, no QAT (eager)", "ptq_int4_eager"),
            ("QAT INT4 (stage 4), eager PyTorch (Rust kernels)", "qat_int4_eager"),
            ("PTQ `.pte` as shipped (whole-decoder delegate, see below), no QAT", "ptq_int4_pte"),
            ("QAT INT4 `.pte`, per-op delegates (same numerics as eager), ExecuTorch runtime", "qat_int4_pte_per_op"),
            ("QAT INT4 `.pte` as shipped (whole-decoder delegate: + INT4 embedding, fp16 KV cache)", "qat_int4_pte"),
            ("(QAT latent fp32 weights, unquantized)", "fp32_qat_latent")]
    for name, k in rows:
        x = R[k]
        L.append(f"| {name} | {x:.4f} | {ppl(x):.2f} | {x / math.log(2) / R['chars_per_token']:.3f} |")
    L.append("")
    L.append(f"INT4 cost without QAT: +{(R['ptq_int4_eager'] - R['fp32_sft']):.4f} nats/token; with QAT: "
             f"{(R['qat_int4_eager'] - R['fp32_sft']):+.4f}. **QAT recovers {R['qat_recovers'] * 100:.0f}% of the PTQ loss** "
             f"(eager `quantize_moe` numerics; {R['qat_recovers_shipped'] * 100:.0f}% in the shipped `.pte` numerics). "
             f"Per-op `.pte` vs eager QAT perplexity: {R['pte_per_op_vs_eager_rel'] * 100:.4f}% apart; shipped `.pte` vs its "
             f"eager twin (`lower_like_export`, 32 tokens): max |logit difference| {R['pte_vs_lowered_eager_max_abs_diff_32_tokens']:.2g}.\n")
    if "dense_pre_heldout" in R:
        mp, dp = R["moe_params"], R["dense_params"]
        L.append(f"Pre-training, first {R['compare_steps']} steps (identical batches, seed, LR schedule; 2048 tokens/step):\n")
        L.append("| model | active params | total params | held-out loss | perplexity | train loss (EMA, last) | CPU s/step (1 thread) |")
        L.append("|---|---|---|---|---|---|---|")
        mc = R["moe_cfg"]
        L.append(f"| MoE ({mc['num_experts']} x F={mc['expert_hidden_dim']}, top-{mc['top_k']}, + shared F={mc['shared_hidden_dim']}) | {mp['active'] / 1e6:.2f} M | {mp['total'] / 1e6:.2f} M | "
                 f"{R['moe_pre_heldout']:.4f} | {ppl(R['moe_pre_heldout']):.2f} | {R['moe_pre_final_train_ema']:.4f} | {R['moe_cpu_s_per_step']:.2f} |")
        L.append(f"| dense, `dense_baseline(cfg, match=\"active\")` (F={R['dense_hidden']}) | {dp['active'] / 1e6:.2f} M | "
                 f"{dp['total'] / 1e6:.2f} M | {R['dense_pre_heldout']:.4f} | {ppl(R['dense_pre_heldout']):.2f} | "
                 f"{R['dense_pre_final_train_ema']:.4f} | {R['dense_cpu_s_per_step']:.2f} |")
        L.append("")
    sp = R["specialisation"]
    L.append("Expert load on held-out text (max / min expert share relative to uniform, per layer): "
             + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(R["expert_load_max_over_mean"], R["expert_load_min_over_mean"])) + ".\n")
    tk = sp["tokens"]
    L.append(f"Specialisation: routing of the held-out speeches ({tk['verse_a'] + tk['verse_b']:,} verse tokens, "
             f"{tk['prose']:,} prose tokens, {tk['name']:,} speaker-heading tokens); total-variation distance between "
             "expert distributions per layer (0 = same routing, 1 = disjoint experts):\n")
    L.append("| layer | verse vs prose | verse half A vs half B (control) | speaker-name tokens vs speech | expert gaining most on names: its share of name-token slots / of speech slots | expert gaining most on prose: share of prose slots / of verse slots |")
    L.append("|---|---|---|---|---|---|")
    for li in range(len(sp["tv_verse_vs_prose"])):
        ne, pe = sp["name_expert"][li], sp["prose_expert"][li]
        L.append(f"| {li} | {sp['tv_verse_vs_prose'][li]:.3f} | {sp['tv_verse_half_vs_half'][li]:.3f} | "
                 f"{sp['tv_names_vs_speech'][li]:.3f} | e{ne['expert']}: {ne['share_of_name_tokens'] * 100:.1f}% / "
                 f"{ne['share_of_speech_tokens'] * 100:.1f}% | e{pe['expert']}: {pe['share_of_prose'] * 100:.1f}% / "
                 f"{pe['share_of_verse'] * 100:.1f}% |")
    L.append("")
    if "instructions" in R:
        I = R["instructions"]
        L.append(f"Instruction following on {I['sft']['n']} held-out instructions (Macbeth/Tempest speakers, never seen in "
                 "training): answer loss, and the share whose greedy answer starts with the requested `SPEAKER:`:\n")
        J = R.get("instructions_train")
        L.append("| model | held-out: answer loss | held-out: speaker heading correct |"
                 + (" training-set instructions: answer loss | speaker correct |" if J else ""))
        L.append("|---|---|---|" + ("---|---|" if J else ""))
        for k, lab in (("mid", "after stage 2 (no instruction tuning)"), ("sft", "after stage 3 (SFT), fp32"),
                       ("qat", "after stage 4 (QAT), fake-quant INT4")):
            L.append(f"| {lab} | {I[k]['answer_loss']:.4f} | {I[k]['speaker_correct'] * 100:.1f}% |"
                     + (f" {J[k]['answer_loss']:.4f} | {J[k]['speaker_correct'] * 100:.1f}% |" if J else ""))
        L.append("")
    L.append("Recipe time (CPU time of the 1-thread training process, sum of stages): " + ", ".join(
        f"{s} {v / 60:.1f} min" for s, v in R["stage_seconds"].items()) + f"; total {R['recipe_minutes']} min.\n")
    L.append("Samples (the shipped model's `.pte`, ExecuTorch runtime):\n")
    for k, v in R["samples"].items():
        L.append(f"*{k}*\n\n```\n{v.strip()}\n```\n")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
