#!/usr/bin/env bash
# The main job on the embedded default: export the `tiny` preset (seeded RANDOM weights: the text
# is gibberish by construction) to a delegated .pte, generate with the Rust runner through the real
# ExecuTorch runtime, then check greedy-token parity eager PyTorch vs .pte for 32 tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=artifacts/tiny.pte
TOK=python_export/mobilemoe_export/assets/tokenizer.json
PROMPT="Mixture-of-experts models on phones"
mkdir -p artifacts
echo "== 1/3 export: python -m mobilemoe_export --preset tiny --out $OUT"
$PY -m mobilemoe_export --preset tiny --seed 0 --out "$OUT" --no-progress
echo
echo "== 2/3 generate (Rust runner, ExecuTorch runtime + MobileMoEBackend)"
./target/release/mobilemoe generate "$OUT" --tokenizer "$TOK" --prompt "$PROMPT" --max-new-tokens 32
echo
echo "== 3/3 parity"
$PY -m mobilemoe_export.parity "$OUT" --prompt "$PROMPT" --tokens 32 --preset tiny --seed 0
