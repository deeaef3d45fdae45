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
STAGE_ROWS = ("pre", "mid", "sft", "qat", "ctl")  # ctl: QAT's steps in fp32 (a control; if trained)
CHAT_PROMPT = "Write a speech by HAMLET about death."


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


def instruction_sets(tok, works, n_train=300):
    """Instructions (ids, answer start, heading length) of the held-out plays, split into speakers
    who also speak in a training play ("held-out play") and speakers who never do ("held-out
    speaker"); and ``n_train`` training instructions."""
    train, held = D.split_works(works)
    nl = D.newline_ids(tok)
    known = D.speakers(train)

    def enc(ws, tag):
        exs = D.encode_instructions(tok, D.instruction_examples(ws), 256, tag)
        return [(ids, st, D.heading_len(ids, st, nl)) for ids, st in exs]

    held_ex = enc(held, "heldout")
    who = lambda e: tok.decode([int(i) for i in e[0][e[1]:e[1] + e[2]]]).strip().rstrip(":")  # noqa: E731
    return {"held_play": [e for e in held_ex if who(e) in known],
            "held_speaker": [e for e in held_ex if who(e) not in known],
            "train": enc(train, "full")[:n_train]}


def answer_loss(m, exs, qat=False) -> float:
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for ids, start, _ in exs:
            t = torch.from_numpy(ids.astype(np.int64))[None]
            lg = T.lm_forward(m, t[:, :-1], qat=qat)[0]
            tot += F.cross_entropy(lg[start - 1:], t[0, start:], reduction="sum").item()
            cnt += t.shape[1] - start
    return tot / cnt


def heading_token_accuracy(m, exs, qat=False, n_pos=4):
    """Teacher-forced argmax accuracy of each of the heading's first ``n_pos`` tokens, given the
    correct ones before it: where the heading goes wrong (issue 29: the first two tokens)."""
    ok, n = np.zeros(n_pos), np.zeros(n_pos)
    with torch.no_grad():
        for ids, st, nh in exs:
            t = torch.from_numpy(ids[:st + nh].astype(np.int64))[None]
            pred = T.lm_forward(m, t, qat=qat).argmax(-1)[0]
            for j in range(min(nh, n_pos)):
                n[j] += 1
                ok[j] += bool(pred[st - 1 + j] == t[0, st + j])
    return (ok / np.maximum(n, 1)).round(4).tolist()


def heading_copy_in_context(m, tok, held, max_windows=40):
    """Can the model copy a name it has just seen? On the held-out plays (modern edition), for
    every ``SPEAKER:`` heading after a blank line inside a 256-token window: teacher-forced
    argmax accuracy of its letters after the first, for a heading's first occurrence in the window
    and for a repeat of a heading seen earlier in the same window (issue 29: the instruction stage
    needs this copying; a model that copies does better on repeats)."""
    nl = tok.token_to_id("Ċ")
    acc = {"first": [0, 0], "repeat": [0, 0]}
    for w in held:
        if w.edition != "modern":
            continue
        ids = np.asarray(tok.encode(w.text).ids)
        for s0 in range(0, min(len(ids) - CTX - 1, CTX * max_windows), CTX):
            win = ids[s0:s0 + CTX + 1]
            with torch.no_grad():
                pred = T.lm_forward(m, torch.from_numpy(win[None, :-1].astype(np.int64))).argmax(-1)[0].numpy()
            seen, i = set(), 2
            while i < CTX:
                if not (win[i - 1] == nl and win[i - 2] == nl):
                    i += 1
                    continue
                j = i
                while j < CTX and win[j] != nl:
                    j += 1
                head = tok.decode(win[i:j + 1].tolist())
                if j < CTX and j - i > 2 and head.endswith(":\n") and head[:-2].isupper():
                    key = tuple(win[i:j].tolist())
                    kind = "repeat" if key in seen else "first"
                    seen.add(key)
                    for p in range(i + 1, j - 1):  # the letters after the first (not ":" and newline)
                        acc[kind][0] += int(pred[p - 1] == win[p])
                        acc[kind][1] += 1
                i = j + 1
    return {k: {"letters": n, "accuracy": ok / max(n, 1)} for k, (ok, n) in acc.items()}


def instruction_eval(paths, sets, wins):
    """Per checkpoint: held-out plain-text loss (the same windows as the main table), answer loss on
    the held-out instructions, and the share of each instruction set whose greedy answer opens with
    the requested ``SPEAKER:`` heading (``train.speaker_accuracy``: teacher-forced argmax over the
    heading = exactly what greedy generation produces). The QAT checkpoint is scored with its
    fake-quantized (INT4) weights."""
    out = {}
    for name, path in paths.items():
        if not Path(path).exists():
            continue
        m = models.load_checkpoint(path)
        q = name == "qat"
        r = {"text_loss": batched_loss(m, wins, qat=q),
             "answer_loss": answer_loss(m, sets["held_play"] + sets["held_speaker"], qat=q)}
        for k, exs in sets.items():
            r[k] = T.speaker_accuracy(m, [(ids[:st + nh], st, nh) for ids, st, nh in exs], qat=q)
            r[f"n_{k}"] = len(exs)
        r["heading_token_acc_held_speaker"] = heading_token_accuracy(m, sets["held_speaker"], qat=q)
        out[name] = r
        print(f"instructions {name}: {r}", file=sys.stderr)
    return out


def pte_instruction_eval(pte, tok, sets):
    """The .pte, greedy through the ExecuTorch runtime (prefill + KV-cache decode), on the
    held-out sets: does the generated text open with ``SPEAKER:\\n``?"""
    eos = tok.token_to_id(EOS_TOKEN)
    res = {}
    for k in ("held_play", "held_speaker"):
        ok = 0
        for ids, st, nh in sets[k]:
            want = tok.decode([int(i) for i in ids[st:st + nh]])
            got = generate_tokens(pte, [int(i) for i in ids[:st]], nh, pte.max_seq_len, eos_id=eos).tokens
            ok += tok.decode(got).startswith(want)
        res[k] = ok / len(sets[k])
    return res


def runner_chat(pte_path: Path, prompt: str, max_new: int = 64) -> dict:
    """The README's chat example: the Rust runner's real output (greedy, --chat)."""
    import subprocess

    exe = REPO / "target" / "release" / "mobilemoe"
    cmd = [str(exe), "generate", str(pte_path.relative_to(REPO)), "--chat", "--prompt", prompt,
           "--max-new-tokens", str(max_new)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return {"command": "target/release/mobilemoe generate artifacts/default.pte --chat --prompt " + json.dumps(prompt)
                       + f" --max-new-tokens {max_new}", "stdout": r.stdout}


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
        wins = windows(D.encode_works(tok, held, "heldout"), args.windows)
        R["instructions"] = instruction_eval({s: args.run / f"{s}_model.pt" for s in STAGE_ROWS}, instruction_sets(tok, D.load_works()), wins)
        (args.out / "quality.json").write_text(json.dumps(R, indent=1))
        (args.out / "quality.md").write_text(render(R))
        print(render(R))
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(REPO / "scripts"))
    import bench_common

    load0 = bench_common.loadavg()
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
    ctl = args.run / "ctl_model.pt"
    if ctl.exists():  # QAT's extra steps without fake quantization: the like-for-like PTQ baseline
        m = models.load_checkpoint(ctl)
        m.all_logits = True
        R["fp32_ctl"] = eval_forward(eager(m), wins)
        R["ptq_ctl_int4_eager"] = eval_forward(eager(quantized(ctl)[0]), wins)
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
    pte_path = REPO / "artifacts" / "default.pte"  # what make demo exports (same CLI defaults)
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
    if "fp32_ctl" in R:
        g = R["ptq_ctl_int4_eager"] - R["fp32_ctl"]
        R["qat_recovers_vs_ctl"] = (R["ptq_ctl_int4_eager"] - R["qat_int4_eager"]) / g if g > 0 else float("nan")
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
    t = time.time()
    sets = instruction_sets(tok, works)
    R["instructions"] = instruction_eval({s: args.run / f"{s}_model.pt" for s in STAGE_ROWS}, sets, wins)
    R["instructions_pte"] = pte_instruction_eval(pte, tok, sets)
    R["heading_copy"] = {s: heading_copy_in_context(models.load_checkpoint(args.run / f"{s}_model.pt"), tok, held)
                         for s in ("mid", "qat") if (args.run / f"{s}_model.pt").exists()}
    R["chat_example"] = runner_chat(pte_path, CHAT_PROMPT)
    print(f"instruction rows: {time.time() - t:.0f}s", file=sys.stderr)

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
    # the README's instruction table and chat example (scripts/render_readme.py renders it from here)
    keep = ("instructions", "instructions_pte", "chat_example", "qat_int4_pte", "heading_copy")
    bench_common.write_results("default-model", {
        "renderer": "quality_report", "machine": bench_common.machine(), "loadavg_before": load0,
        "loadavg_after": bench_common.loadavg(), "quality": {k: R[k] for k in keep if k in R}})
    md = render(R)
    (args.out / "quality.md").write_text(md)
    print(md)
    return 0


STAGE_LABELS = {"pre": "after stage 1 (pre-training)", "mid": "after stage 2 (mid-training)",
                "sft": "after stage 3 (SFT), fp32", "qat": "after stage 4 (QAT), fake-quant INT4",
                "ctl": "(control: stage 4's steps in fp32)"}


def instruction_table(R) -> str:
    I = R["instructions"]
    n = I["sft"]
    L = [f"Instruction following: the share of instructions whose greedy answer opens with the requested "
         f"`SPEAKER:` heading — held-out plays (Macbeth, The Tempest; never trained on): {n['n_held_play']} "
         f"instructions whose speaker also speaks in a training play, {n['n_held_speaker']} whose speaker never does; "
         f"and {n['n_train']} training instructions. Next to it, the held-out plain-text loss (the windows above) "
         "and the held-out answer loss:\n",
         "| model | held-out plays | held-out speakers | training instructions | held-out text loss (ppl) | held-out answer loss "
         "| held-out speakers: heading tokens 1 / 2 / 3 / 4 right (teacher-forced) |",
         "|---|---|---|---|---|---|---|"]
    for k, lab in STAGE_LABELS.items():
        if k in I:
            r = I[k]
            L.append(f"| {lab} | {r['held_play'] * 100:.1f}% | {r['held_speaker'] * 100:.1f}% | {r['train'] * 100:.1f}% | "
                     f"{r['text_loss']:.4f} ({math.exp(r['text_loss']):.2f}) | {r['answer_loss']:.4f} | "
                     + " / ".join(f"{a * 100:.0f}%" for a in r["heading_token_acc_held_speaker"]) + " |")
    if "instructions_pte" in R:
        P = R["instructions_pte"]
        L.append(f"| QAT INT4 `.pte` as shipped, greedy on the ExecuTorch runtime | {P['held_play'] * 100:.1f}% | "
                 f"{P['held_speaker'] * 100:.1f}% | | {R['qat_int4_pte']:.4f} ({math.exp(R['qat_int4_pte']):.2f}) | | |")
    L.append("")
    for k, v in R.get("heading_copy", {}).items():
        L.append(f"In-context copying ({STAGE_LABELS[k]}): letters after the first of a held-out play's `SPEAKER:` "
                 f"heading predicted right (teacher-forced) {v['first']['accuracy'] * 100:.0f}% at its first occurrence "
                 f"in a 256-token window, {v['repeat']['accuracy'] * 100:.0f}% when the same heading appeared earlier in "
                 "the window.\n")
    if "chat_example" in R:
        c = R["chat_example"]
        L.append(f"`{c['command']}` (the Rust runner; the prompt is wrapped in the chat template of "
                 "`assets/tokenizer_config.json`):\n")
        L.append(f"```\n{c['stdout'].rstrip()}\n```\n")
    return "\n".join(L)


def render_markdown(doc) -> str:
    """The README block (scripts/render_readme.py): instruction table and chat example."""
    return instruction_table(doc["quality"])


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
            ("(QAT latent fp32 weights, unquantized)", "fp32_qat_latent"),
            ("control: stage 4's steps and batches in fp32 (no fake quantization)", "fp32_ctl"),
            ("PTQ of that control, eager", "ptq_ctl_int4_eager")]
    for name, k in rows:
        if k not in R:
            continue
        x = R[k]
        L.append(f"| {name} | {x:.4f} | {ppl(x):.2f} | {x / math.log(2) / R['chars_per_token']:.3f} |")
    L.append("")
    L.append(f"INT4 cost without QAT: +{(R['ptq_int4_eager'] - R['fp32_sft']):.4f} nats/token; with QAT: "
             f"{(R['qat_int4_eager'] - R['fp32_sft']):+.4f}. **QAT recovers {R['qat_recovers'] * 100:.0f}% of the PTQ loss** "
             f"(eager `quantize_moe` numerics; {R['qat_recovers_shipped'] * 100:.0f}% in the shipped `.pte` numerics). "
             f"Per-op `.pte` vs eager QAT perplexity: {R['pte_per_op_vs_eager_rel'] * 100:.4f}% apart; shipped `.pte` vs its "
             f"eager twin (`lower_like_export`, 32 tokens): max |logit difference| {R['pte_vs_lowered_eager_max_abs_diff_32_tokens']:.2g}.\n")
    if "fp32_ctl" in R:
        L.append(f"Like for like (issue 26): against the fp32 control that ran QAT's extra steps without fake quantization, "
                 f"PTQ costs +{R['ptq_ctl_int4_eager'] - R['fp32_ctl']:.4f} nats/token and QAT "
                 f"{R['qat_int4_eager'] - R['fp32_ctl']:+.4f}: **QAT recovers {R['qat_recovers_vs_ctl'] * 100:.0f}% of the "
                 f"PTQ loss of an equally trained fp32 model**. QAT's INT4 weights against its own latent fp32 weights: "
                 f"{R['qat_int4_eager'] - R['fp32_qat_latent']:+.4f} nats/token.\n")
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
        L.append(instruction_table(R))
    L.append("Recipe time (CPU time of the 1-thread training process, sum of stages): " + ", ".join(
        f"{s} {v / 60:.1f} min" for s, v in R["stage_seconds"].items()) + f"; total {R['recipe_minutes']} min.\n")
    L.append("Samples (the shipped model's `.pte`, ExecuTorch runtime):\n")
    for k, v in R["samples"].items():
        L.append(f"*{k}*\n\n```\n{v.strip()}\n```\n")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
