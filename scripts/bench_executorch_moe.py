#!/usr/bin/env python3
"""ExecuTorch's own MoE op, ``llama::quantized_moe_ffn`` (the kernel in the pinned executorch wheel),
vs this project's ``moe_ffn`` on MobileMoE-S's published layer with the same INT4 weights, in one
run on this CPU, each side through the real ExecuTorch runtime (a ``.pte`` per side).

    .venv/bin/python scripts/bench_executorch_moe.py                   # tokens 1, 8, 128; threads 1, 2
    .venv/bin/python scripts/bench_executorch_moe.py --tokens 1,128 --threads 1 --iters 20

The layer: D=768, 60 routed experts x F=384, top-4, sigmoid scores with a selection bias, INT4
symmetric group-32 weights (the routed part only: ExecuTorch's op leaves the shared expert to a
dense module). Its weights are ExecuTorch's ``MOEFeedForward`` quantized the way ExecuTorch's
``replace_moe_with_quantized_op`` does (``_symmetric_quantize_per_group``, torchao's universal
packing, here by ``mobilemoe_export.quantization.torchao_layout`` since the x86 torchao wheel has
no packer), giving a ``QuantizedMoEFFN``; ``quantize_moe`` converts that module into ours without
quantizing again, so both read the same integers and scales.

What is compared, said plainly: on x86 the wheel's ``llama::quantized_moe_ffn`` is its portable
fallback (it dequantizes the selected experts to fp32 on every call and runs on the calling
thread); on phones the same op runs torchao's int8 x int4 aarch64 kernels, which this x86 run does
not measure. So the fair rows are **1 thread against 1 thread**; the 2-thread rows give ours a
second core the peer cannot use and say so.

* *warm*: the same layer and input every call (weights in the caches: ~26 MB of expert weights,
  not all of them touched per call);
* *cold*: before every timed call, a buffer of 2x the last-level cache is written, so the weights
  come from DRAM on both sides.

Every timed sample is kept. Each thread count runs in its own process (``MOBILEMOE_THREADS`` is read
when our runtime starts). Accuracy: each output's relative L2 distance to the fp32 formula on the
dequantized weights (untimed; vectorised, :func:`fp32_active_experts`). Results: ``docs/results/executorch-moe-op-<date>.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python_export"))

import bench_common as bc  # noqa: E402  (this folder is on sys.path when run as a script)

D, F, E, K, GROUP = 768, 384, 60, 4, 32  # MobileMoE-S (../shared/MOBILEMOE_MODEL.md)


def build_layers(seed: int):
    """(ExecuTorch QuantizedMoEFFN, our converted block: int8 activations and exact fp32-activation
    path, the fp32 formula for accuracy; untimed, so a plain loop)."""
    import torch
    from executorch.examples.models.llama.llama_transformer import MOEFeedForward
    from executorch.examples.models.llama.model_args import ModelArgs
    from executorch.examples.models.llama.source_transformation.moe import QuantizedMoEFFN, _symmetric_quantize_per_group

    import mobilemoe_export as mm
    from mobilemoe_export.quantization import torchao_layout as tl

    torch.manual_seed(seed)
    args = ModelArgs(dim=D, n_layers=1, n_heads=16, vocab_size=8, hidden_dim=F, moe=True, num_experts=E,
                     num_activated_experts=K, moe_score_func="sigmoid", moe_route_scale=1.0, moe_use_expert_bias=True)
    moe = MOEFeedForward(args).eval()
    with torch.no_grad():
        for p in moe.cond_ffn.parameters():
            p.mul_(0.1)
        moe.expert_bias.normal_(0, 0.1)
    c = moe.cond_ffn
    p13, p2, deq13, deq2 = [], [], [], []
    for i in range(E):
        q, s = _symmetric_quantize_per_group(torch.cat([c.w1[i], c.w3[i]], 0).detach(), GROUP, 4)
        p13.append(torch.from_numpy(tl.pack_universal(q, s, GROUP, 4)))
        deq13.append((q.float().view(2 * F, -1, GROUP) * s.float().view(2 * F, -1, 1)).view(2 * F, D))
        q, s = _symmetric_quantize_per_group(c.w2[i].t().contiguous().detach(), GROUP, 4)
        p2.append(torch.from_numpy(tl.pack_universal(q, s, GROUP, 4)))
        deq2.append((q.float().view(D, -1, GROUP) * s.float().view(D, -1, 1)).view(D, F))
    peer = QuantizedMoEFFN(moe.gate.weight.detach(), moe.expert_bias.detach(), torch.stack(p13), torch.stack(p2),
                           num_experts=E, num_activated_experts=K, hidden_dim=F, dim=D, group_size=GROUP,
                           weight_nbit=4, score_func="sigmoid", route_scale=1.0).eval()
    ours = mm.quantize_moe(copy.deepcopy(peer)).eval()
    ours_exact = mm.quantize_moe(copy.deepcopy(peer), exact=True).eval()
    gate_w, bias = moe.gate.weight.detach(), moe.expert_bias.detach()
    # grouped_mm's right operands: [E, D, 2F] and [E, F, D], contiguous once here, not per call
    w13_t = torch.stack(deq13).transpose(1, 2).contiguous()
    w2_t = torch.stack(deq2).transpose(1, 2).contiguous()
    return peer, ours, ours_exact, lambda x: fp32_active_experts(x, gate_w, bias, w13_t, w2_t, K)


def fp32_active_experts(x, gate_w, bias, w13_t, w2_t, k: int):
    """The fp32 formula over the active experts only (sigmoid scores, top-k by score + bias,
    renormalised; SwiGLU experts), vectorised: the T*k (token, expert) pairs sorted by expert run as
    two grouped GEMMs, each expert's rows one group (empty groups allowed), then a weighted
    ``index_add_`` back to the tokens. ``x`` [T, D]; ``w13_t`` [E, D, 2F] (gate rows, then up rows,
    transposed); ``w2_t`` [E, F, D]. A Python loop over tokens or experts would time the interpreter,
    not the arithmetic."""
    import torch
    import torch.nn.functional as fn

    scores = torch.sigmoid(x @ gate_w.t())
    idx = torch.topk(scores + bias, k, dim=-1).indices  # [T, k]
    w = scores.gather(-1, idx)
    w = w / w.sum(-1, keepdim=True)
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)  # pairs grouped by expert
    offs = torch.cumsum(torch.bincount(flat, minlength=w13_t.shape[0]), 0).to(torch.int32)
    tok = order // k
    h = fn.grouped_mm(x[tok], w13_t, offs=offs)  # [T*k, 2F]
    f = w2_t.shape[1]
    y = fn.grouped_mm(fn.silu(h[:, :f]) * h[:, f:], w2_t, offs=offs)  # [T*k, D]
    return torch.zeros_like(x).index_add_(0, tok, y * w.reshape(-1)[order, None])


def samples_ms(fn, iters: int, flush=None, warmup: int = 3) -> list:
    """``iters`` timed calls of ``fn`` after ``warmup`` untimed ones; ``flush`` (untimed) before each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if flush is not None:
            flush()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def rel_l2(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def llc_bytes() -> int:
    sizes = bc.cache_sizes()
    txt = sizes.get("L3") or sizes.get("L2") or "32M"
    num = float("".join(c for c in txt if c.isdigit() or c == ".") or 32)
    unit = 1 << 20 if "M" in txt.upper() else (1 << 10 if "K" in txt.upper() else 1)
    return int(num * unit)


def measure(a) -> dict:
    """One process, one thread count: every (tokens, side, warm/cold) sample."""
    os.environ["MOBILEMOE_THREADS"] = str(a.threads)
    import numpy as np
    import torch
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers llama::*)
    from executorch.runtime import Runtime
    from torch.export import Dim, export

    import mobilemoe_export as mm
    from executorch.exir import to_edge

    torch.set_num_threads(a.threads)
    mm.load_runtime()
    peer, ours, ours_exact, reference = build_layers(a.seed)
    flush_buf = np.zeros(2 * llc_bytes() // 8, dtype=np.float64)

    def flush():
        np.add(flush_buf, 1.0, out=flush_buf)  # writes every line: the weights leave the caches

    rt = Runtime.get()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        x2 = torch.randn(2, D)
        t = Dim("tokens", min=1, max=256)
        ep = export(peer, (x2,), dynamic_shapes=({0: t},), strict=False)
        peer_pte = Path(tmp) / "peer.pte"
        peer_pte.write_bytes(to_edge(ep).to_executorch().buffer)
        ours_pte = mm.export_pte(ours, (x2,), Path(tmp) / "ours.pte", max_tokens=256)
        exact_pte = mm.export_pte(ours_exact, (x2,), Path(tmp) / "ours_exact.pte", max_tokens=256)
        progs = (("peer", peer_pte), ("ours", ours_pte), ("ours_exact", exact_pte))
        methods = {name: rt.load_program(str(p)).load_method("forward") for name, p in progs}
        for n in a.tokens:
            x = torch.randn(n, D, generator=torch.Generator().manual_seed(a.seed + n))
            with torch.no_grad():
                ref = reference(x)
                r = {"tokens": n, "threads": a.threads}
                for name, m in methods.items():
                    r[f"err_{name}"] = rel_l2(m.execute([x])[0], ref)
                # Alternate the sides per state so that drift in the machine hits both.
                for state, fl in (("warm", None), ("cold", flush)):
                    for name, m in methods.items():
                        r[f"{state}_{name}_ms"] = samples_ms(lambda m=m: m.execute([x]), a.iters, flush=fl)
            rows.append(r)
            print(f"  measured {n} token(s), {a.threads} thread(s)", file=sys.stderr)
    return {"rows": rows}


def main(argv=None) -> int:
    import json
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1,8,128", help="comma-separated token counts per call (default 1,8,128)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts for our kernels (default 1,2); "
                    "the peer's x86 kernel always runs on the calling thread")
    ap.add_argument("--iters", type=int, default=15, help="timed calls per measurement (default 15)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true", help="print only; no results file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.tokens = [int(t) for t in str(a.tokens).split(",")]
    if min(a.tokens) < 1 or max(a.tokens) > 256:
        ap.error("--tokens must be within 1..256 (the exported dynamic range)")
    if a.child:
        a.threads = int(a.threads)
        print(json.dumps(measure(a)))
        return 0
    threads = [int(t) for t in a.threads.split(",")]
    load0, runs = bc.loadavg(), []
    for th in threads:
        cmd = [sys.executable, __file__, "--child", "--threads", str(th), "--iters", str(a.iters), "--seed", str(a.seed),
               "--tokens", ",".join(map(str, a.tokens))]
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"error: {' '.join(cmd)} failed:\n{p.stderr[-4000:]}")
        runs.extend(json.loads(p.stdout.strip().splitlines()[-1])["rows"])
    doc = {"renderer": "bench_executorch_moe", "layer": {"dim": D, "experts": E, "expert_hidden": F, "top_k": K,
                                                         "group": GROUP, "score": "sigmoid+bias"},
           "peer": "llama::quantized_moe_ffn.out of executorch 1.5.1, x86 portable fallback (fp32 dequantize per call, "
                   "calling thread only)",
           "rows": runs, "loadavg_before": load0, "loadavg_after": bc.loadavg(), "machine": bc.machine()}
    print(render_markdown(doc))
    if not a.no_save:
        print(f"wrote {bc.write_results('executorch-moe-op', doc)}")
    return 0


def render_markdown(doc) -> str:
    """Medians per (tokens, threads, warm/cold); the ratio is the peer's time over ours."""
    import statistics as st

    lines = [f"ExecuTorch `llama::quantized_moe_ffn` ({doc['peer']}) vs ours, MobileMoE-S layer "
             f"(D={doc['layer']['dim']}, {doc['layer']['experts']} x F={doc['layer']['expert_hidden']}, top-"
             f"{doc['layer']['top_k']}, INT4 g{doc['layer']['group']}); {bc.machine_line(doc)}", "",
             "| tokens | our threads | caches | ExecuTorch op (ms) | ours (ms) | **ExecuTorch / ours** | ours exact, fp32 activations (ms) | ExecuTorch / ours exact | rel. L2 vs fp32: ExecuTorch / ours / exact |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        for state in ("warm", "cold"):
            pe, ou, ex = (st.median(r[f"{state}_{k}_ms"]) for k in ("peer", "ours", "ours_exact"))
            th = f"{r['threads']}" + ("" if r["threads"] == 1 else " (peer: 1)")
            lines.append(f"| {r['tokens']} | {th} | {state} | {pe:.3f} | {ou:.3f} | **{pe / ou:.1f}x** | {ex:.3f} | "
                         f"{pe / ex:.1f}x | {r['err_peer']:.1e} / {r['err_ours']:.1e} / {r['err_ours_exact']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
