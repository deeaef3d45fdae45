"""Greedy-token parity of a preset: eager PyTorch (quantized, calling the Rust kernels) vs the
``.pte`` on the ExecuTorch runtime. ``python -m mobilemoe_export.parity --help``."""

from __future__ import annotations

import argparse
import sys

import torch

from .cli import build_parser as export_parser, build_from_args, lower_like_export, quantize
from .generate import PteModel, generate_tokens, load_tokenizer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mobilemoe_export.parity",
        description="Export-free parity check: rebuild the preset exactly as `python -m mobilemoe_export` "
        "did (same --preset/--seed/--group-size/...), run greedy generation eagerly and on the .pte, "
        "and compare the first N tokens.")
    ap.add_argument("pte", help=".pte written by `python -m mobilemoe_export` with the same options")
    ap.add_argument("--prompt", default="Mixture-of-experts models on phones")
    ap.add_argument("--tokens", type=int, default=32, help="greedy tokens to compare (default 32)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the shipped one)")
    args, rest = ap.parse_known_args(argv)
    exp_args = export_parser().parse_args(rest + ["--out", args.pte])
    model, cfg, _, _ = build_from_args(exp_args)
    model = lower_like_export(quantize(model, cfg, exp_args), exp_args).eval()
    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.prompt)
    ids = ids.ids if hasattr(ids, "ids") else list(ids)
    max_seq = cfg.max_seq_len if cfg is not None else 256

    with torch.no_grad():
        eager = generate_tokens(lambda t, p: model(t, p), ids, args.tokens, max_seq)
    pte = PteModel(args.pte)
    ran = generate_tokens(pte, ids, args.tokens, pte.max_seq_len)
    same = sum(a == b for a, b in zip(eager.tokens, ran.tokens))
    first_diff = next((i for i, (a, b) in enumerate(zip(eager.tokens, ran.tokens)) if a != b), None)
    print("parity: greedy tokens, eager PyTorch (quantized, Rust kernels) vs .pte on the ExecuTorch runtime:")
    print(f"  eager: {eager.tokens}")
    print(f"  .pte : {ran.tokens}")
    ok = same == args.tokens == len(eager.tokens) == len(ran.tokens)
    print(f"  {same}/{args.tokens} identical -> {'PASS' if ok else f'FAIL (first difference at {first_diff})'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
