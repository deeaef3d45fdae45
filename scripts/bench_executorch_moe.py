#!/usr/bin/env python3
"""ExecuTorch's own MoE op, ``llama::quantized_moe_ffn`` (the kernel in the pinned executorch wheel),
vs this project's ``moe_ffn`` on the same MobileMoE-S-like layer with the same INT4 weights, in one
run on this CPU.

    .venv/bin/python scripts/bench_executorch_moe.py                   # tokens 1, 8, 128; 2 threads
    .venv/bin/python scripts/bench_executorch_moe.py --tokens 1,128 --threads 1 --iters 20

The layer: D=1024, 32 routed experts x F=512, top-4, sigmoid scores with a selection bias, INT4
symmetric group-32 weights (the routed part only: ExecuTorch's op leaves the shared expert to a
dense module). Its weights are ExecuTorch's ``MOEFeedForward`` quantized the way ExecuTorch's
``replace_moe_with_quantized_op`` does (``_symmetric_quantize_per_group``, torchao's universal
packing, here by ``mobilemoe_export.torchao_layout`` since the x86 torchao wheel has no packer),
giving a ``QuantizedMoEFFN``; ``quantize_moe`` converts that module into ours without quantizing
again, so both read the same integers and scales.

Measured, each the median of --iters calls after warm-up, the same layer every call (warm caches;
the full model's cold-weight numbers are in the README's end-to-end tables):

* ``.pte`` on the ExecuTorch runtime (Python pybindings, the real C++ runtime): the peer op as the
  wheel's portable kernel ``llama::quantized_moe_ffn.out``; ours as one ``MobileMoEBackend``
  delegate (plugin loaded with ``mobilemoe_export.load_runtime``). Both exported with a dynamic
  token dimension.
* eager PyTorch: ``torch.ops.llama.quantized_moe_ffn`` vs ``torch.ops.mobilemoe.moe_ffn``; and, as
  an anchor, the fp32 PyTorch formula over the active experts only (dequantized weights), vectorised:
  the (token, expert) pairs sorted by expert and run as two grouped GEMMs
  (``torch.nn.functional.grouped_mm``), no Python loop over tokens or experts
  (:func:`fp32_active_experts`).

Also printed: each output's relative L2 distance to that fp32 formula (the peer computes with fp32
activations; ours by default with per-token int8 activations, DESIGN section 3, and as the exact
path with fp32 activations, ``quantize_moe(..., exact=True)``, also timed). ``MOBILEMOE_THREADS`` is set to
--threads for our kernels and ``torch.set_num_threads`` for PyTorch; ExecuTorch's kernel runs on
the calling thread (its x86 path).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python_export"))

from bench_common import cpu_model  # noqa: E402  (this folder is on sys.path when run as a script)

D, F, E, K, GROUP = 1024, 512, 32, 4, 32


def build_layers(seed: int):
    """(ExecuTorch QuantizedMoEFFN, our converted block: int8 activations and exact fp32-activation
    path, fp32 reference function)."""
    import torch
    from executorch.examples.models.llama.llama_transformer import MOEFeedForward
    from executorch.examples.models.llama.model_args import ModelArgs
    from executorch.examples.models.llama.source_transformation.moe import QuantizedMoEFFN, _symmetric_quantize_per_group

    import mobilemoe_export as mm
    from mobilemoe_export import torchao_layout as tl

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


def median_ms(fn, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rel_l2(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1,8,128", help="comma-separated token counts per call (default 1,8,128)")
    ap.add_argument("--threads", type=int, default=2, help="threads for our kernels and for PyTorch (default 2)")
    ap.add_argument("--iters", type=int, default=15, help="timed calls per measurement (median; default 15)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-eager", action="store_true", help="skip the eager PyTorch rows")
    a = ap.parse_args()
    tokens = [int(t) for t in a.tokens.split(",")]
    if min(tokens) < 1 or max(tokens) > 256:
        ap.error("--tokens must be within 1..256 (the exported dynamic range)")
    os.environ["MOBILEMOE_THREADS"] = str(a.threads)
    # PyTorch's OpenMP workers otherwise spin for a while after each eager op (the fp32 anchor)
    # and steal the cores from whatever is timed next.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers llama::*)
    from executorch.runtime import Runtime
    from torch.export import Dim, export

    import mobilemoe_export as mm
    from executorch.exir import to_edge

    torch.set_num_threads(a.threads)
    mm.load_runtime()
    print(f"# ExecuTorch llama::quantized_moe_ffn vs mobilemoe moe_ffn, S-like layer (D={D}, {E} x F={F}, "
          f"top-{K}, sigmoid + bias, INT4 g{GROUP}), {a.threads} thread(s)")
    print(f"# {cpu_model()}, {platform.platform()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    peer, ours, ours_exact, reference = build_layers(a.seed)
    rt = Runtime.get()
    with tempfile.TemporaryDirectory() as tmp:
        x2 = torch.randn(2, D)
        t = Dim("tokens", min=1, max=256)
        ep = export(peer, (x2,), dynamic_shapes=({0: t},), strict=False)
        peer_pte = Path(tmp) / "peer.pte"
        peer_pte.write_bytes(to_edge(ep).to_executorch().buffer)
        ours_pte = mm.export_pte(ours, (x2,), Path(tmp) / "ours.pte", max_tokens=256)
        exact_pte = mm.export_pte(ours_exact, (x2,), Path(tmp) / "ours_exact.pte", max_tokens=256)
        progs = (("peer", peer_pte), ("ours", ours_pte), ("exact", exact_pte))
        methods = {name: rt.load_program(str(p)).load_method("forward") for name, p in progs}
        rows = []
        for n in tokens:
            x = torch.randn(n, D, generator=torch.Generator().manual_seed(a.seed + n))
            with torch.no_grad():
                ref = reference(x)
                outs = {name: m.execute([x])[0] for name, m in methods.items()}
                r = {
                    "tokens": n,
                    "pte_peer": median_ms(lambda: methods["peer"].execute([x]), a.iters),
                    "pte_ours": median_ms(lambda: methods["ours"].execute([x]), a.iters),
                    "pte_exact": median_ms(lambda: methods["exact"].execute([x]), a.iters),
                    "err_peer": rel_l2(outs["peer"], ref),
                    "err_ours": rel_l2(outs["ours"], ref),
                    "err_exact": rel_l2(outs["exact"], ref),
                }
                if not a.no_eager:
                    r["eager_peer"] = median_ms(lambda: peer(x), a.iters)
                    r["eager_ours"] = median_ms(lambda: ours(x), a.iters)
                    r["eager_fp32"] = median_ms(lambda: reference(x), a.iters)
            rows.append(r)
            print(f"  measured {n} token(s)", file=sys.stderr)
    print()
    print("| tokens | ExecuTorch op, .pte (ms) | ours, .pte (ms) | **ExecuTorch / ours** | ours exact (fp32 activations), .pte (ms) | ExecuTorch / ours exact |"
          + ("" if a.no_eager else " ExecuTorch op, eager (ms) | ours, eager (ms) | fp32 PyTorch over active experts, grouped_mm (ms) | fp32 / ours (eager) |")
          + " rel. L2 vs fp32: ExecuTorch / ours / ours exact |")
    print("|---" * (7 if a.no_eager else 11) + "|")
    for r in rows:
        line = (f"| {r['tokens']} | {r['pte_peer']:.3f} | {r['pte_ours']:.3f} | **{r['pte_peer'] / r['pte_ours']:.1f}x** |"
                f" {r['pte_exact']:.3f} | {r['pte_peer'] / r['pte_exact']:.1f}x |")
        if not a.no_eager:
            line += (f" {r['eager_peer']:.3f} | {r['eager_ours']:.3f} | {r['eager_fp32']:.3f} |"
                     f" {r['eager_fp32'] / r['eager_ours']:.1f}x |")
        line += f" {r['err_peer']:.1e} / {r['err_ours']:.1e} / {r['err_exact']:.1e} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
