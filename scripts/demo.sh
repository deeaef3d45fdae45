#!/usr/bin/env bash
# The main job on the embedded default: export the shipped trained MobileMoE
# (python_export/mobilemoe_export/assets/default_model.pt: 3.6 M parameters, 16 routed experts + a
# shared expert, trained on Shakespeare with QAT by `python -m mobilemoe_export.train`, see
# docs/training.md) to a delegated INT4 .pte, generate from "ROMEO:" with the Rust runner through
# the real ExecuTorch runtime, then check greedy-token parity eager PyTorch vs .pte for 32 tokens.
# Without the checkpoint (it is a repository asset) it falls back to the `tiny` preset with seeded
# random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TOK=python_export/mobilemoe_export/assets/tokenizer.json
CKPT=python_export/mobilemoe_export/assets/default_model.pt
mkdir -p artifacts
if [[ -f $CKPT ]]; then
  OUT=artifacts/default.pte
  SRC=(--checkpoint "$CKPT")
  PROMPT="ROMEO:"
  GEN=(--temperature 0.8 --top-p 0.95 --seed 0 --max-new-tokens 96)
  WHAT="the trained default model ($CKPT)"
else
  OUT=artifacts/tiny.pte
  SRC=(--preset tiny --seed 0)
  PROMPT="Mixture-of-experts models on phones"
  GEN=(--max-new-tokens 32)
  WHAT="the tiny preset with seeded random weights (gibberish by construction)"
fi
echo "== 1/3 export $WHAT: python -m mobilemoe_export ${SRC[*]} --out $OUT"
$PY -m mobilemoe_export "${SRC[@]}" --out "$OUT" --no-progress
echo
echo "== 2/3 generate (Rust runner, ExecuTorch runtime + MobileMoEBackend): ${GEN[*]}"
./target/release/mobilemoe generate "$OUT" --tokenizer "$TOK" --prompt "$PROMPT" "${GEN[@]}"
echo
echo "== 3/3 parity (greedy)"
$PY -m mobilemoe_export.parity "$OUT" --prompt "$PROMPT" --tokens 32 "${SRC[@]}"
