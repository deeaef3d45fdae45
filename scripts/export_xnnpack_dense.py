#!/usr/bin/env python3
"""A dense decoder exported the usual way for ExecuTorch's standard CPU backend, XNNPACK: 8da4w
(torchao ``Int8DynamicActivationIntxWeightConfig``: int8 dynamic per-token activations, INT4
symmetric group-32 weights) on every linear, ``torch.export`` with the dynamic token dimension,
``to_edge_transform_and_lower(XnnpackPartitioner())``. The model is ``mobilemoe_export.models``'
Transformer (same forward contract as our exports: ``forward(tokens [1, S], input_pos [S])`` with a
static KV cache), so the ``mobilemoe`` runner runs it once XNNPACK is registered in its process:

    PYTHONPATH=python_export .venv/bin/python scripts/export_xnnpack_dense.py --out dense_xnnpack.pte
    LD_PRELOAD=.venv/lib/python3.11/site-packages/executorch/lib/libexecutorch_backend_xnnpack.so \\
        target/release/mobilemoe run dense_xnnpack.pte --tokens 8
    # aarch64, under qemu (docs/aarch64.md): the aarch64 wheel's library, preloaded with -E
    qemu-aarch64 -cpu cortex-a76 -E LD_PRELOAD=$HOME/.cache/mobilemoe/executorch-aarch64/1.5.1/executorch/lib/libexecutorch_backend_xnnpack.so \\
        target/aarch64/aarch64-unknown-linux-gnu/release/mobilemoe run dense_xnnpack.pte --tokens 8

The same shape through our delegate: ``python -m mobilemoe_export --preset P --dense-baseline M``.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", help="an MoE preset of mobilemoe_export.models (made dense)")
    ap.add_argument("--dense-baseline", choices=["total", "active"], default="active",
                    help="dense FFN width = the MoE's total or active FFN parameters (models.dense_baseline)")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--max-seq-len", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    # Heavy imports after argument parsing (a bad flag fails fast).
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    from mobilemoe_export import models

    cfg = models.get_config(args.preset)
    if cfg.ffn == "moe":
        cfg = models.dense_baseline(cfg, match=args.dense_baseline, multiple=max(64, args.group_size))
    if args.max_seq_len:
        cfg = cfg.replace(max_seq_len=args.max_seq_len)
    model = models.build_model(cfg, seed=args.seed).eval()
    t0 = time.time()
    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                          weight_granularity=PerGroup(args.group_size)))
    with torch.no_grad():
        ep = torch.export.export(model, model.example_inputs(), dynamic_shapes=model.dynamic_shapes())
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    calls = collections.Counter(getattr(n.target, "__name__", str(n.target))
                                for n in edge.exported_program().graph_module.graph.nodes
                                if n.op == "call_function" and "aten." in str(n.target))
    n_delegate = sum(1 for n in edge.exported_program().graph_module.graph.nodes
                     if n.op == "call_function" and "executorch_call_delegate" in str(n.target))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(edge.to_executorch().buffer)
    print(f"{args.out}: {cfg.name} (dim {cfg.dim}, {cfg.n_layers} layers, dense FFN {cfg.dense_hidden_dim}), "
          f"8da4w group {args.group_size}; {n_delegate} XNNPACK delegate calls, ExecuTorch kernels: "
          f"{dict(calls)}; {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
