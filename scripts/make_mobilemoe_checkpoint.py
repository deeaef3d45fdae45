#!/usr/bin/env python3
"""Write a random checkpoint in the format of Meta's published MobileMoE releases
(facebook/MobileMoE-{S,M,L}-{QAT,Base,SFT}; docs/mobilemoe_format.md): config.json, the
weights as safetensors (one file, or shards + model.safetensors.index.json above --max-shard-gb),
and a Llama-3-style byte-level BPE tokenizer.json + tokenizer_config.json (chat template).

  --format qat   packed INT4 (two per byte, even column in the low nibble, two's complement) with
                 fp16 scales per group of 32 (along `in` for the linears, along `out` for the
                 [E, in, out] experts), fp32 router, bf16 norms and expert bias; config.json has the
                 `quantization` block.
  --format bf16  the Base/SFT release: bf16 weights, tensor names inferred Llama 4 style
                 (experts.gate_up_proj / experts.down_proj, *.weight); no `quantization` block.

Sizes: S (as read from MobileMoE-S-QAT's config), M (INFERRED: the only shape giving 2.8B total /
0.5B active with S's pattern; M's and L's routed_scaling_factor and rope_scaling were not published,
S's are assumed), L (from its model card), tiny (tests: hidden 64, 2 layers, 8 experts x 64, top-2,
vocab 320). JSON has no comments: these notes are printed, not written into config.json.

The tokenizer is NOT Llama 3's: a byte-level BPE with Llama 3's split regex and special-token ids
(<|begin_of_text|> = vocab - 256, <|eot_id|> = vocab - 247 for S/M/L: 128000 / 128009), merges
learned on the project's small corpus, unreachable fillers in between. Use the real tokenizer.json
from Meta's checkpoint directory for real text.

The weights are random: the checkpoint is for testing the loader and the export path, not a model.
Writing S takes ~0.7 GB (qat) / 2.5 GB (bf16) of disk and about as much memory per shard.

Usage: scripts/make_mobilemoe_checkpoint.py --size tiny --format qat --out /tmp/mm-tiny [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_export"))


def main(argv=None) -> int:
    from mobilemoe_export.sources import mobilemoe_format as mf

    head, rest = __doc__.split("\n\n", 1)
    ap = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", required=True, choices=["S", "M", "L", "tiny"],
                    help="S / L as published, M inferred, tiny for tests")
    ap.add_argument("--format", default="qat", choices=list(mf.FORMATS),
                    help="qat (INT4 + fp16 scales, default) or bf16")
    ap.add_argument("--out", required=True, type=Path, help="output directory (created)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shard-gb", type=float, default=2.0,
                    help="shard the weights above this many GB (default 2; the index names every tensor's shard)")
    ap.add_argument("--no-tokenizer", action="store_true", help="do not write tokenizer.json / tokenizer_config.json")
    args = ap.parse_args(argv)
    if args.size in mf.INFERRED_NOTES:
        print(f"note: {mf.INFERRED_NOTES[args.size]}", file=sys.stderr)
    if args.size != "tiny" and not args.no_tokenizer:
        print("note: the tokenizer written is a small stand-in with Llama 3's special-token ids; the real "
              "Llama 3 tokenizer.json must come from Meta's checkpoint directory", file=sys.stderr)
    cfg = mf.size_config(args.size, args.format)
    out = mf.write_mobilemoe_checkpoint(args.out, cfg, args.format, seed=args.seed,
                                        max_shard_bytes=int(args.max_shard_gb * 1e9), tokenizer=not args.no_tokenizer)
    files = sorted(p.name for p in out.iterdir())
    total = sum(p.stat().st_size for p in out.iterdir() if p.suffix == ".safetensors")
    print(f"wrote {out}: MobileMoE-{args.size} {args.format}, {total / 1e6:.1f} MB of safetensors; {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
