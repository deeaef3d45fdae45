#!/usr/bin/env bash
# Exports the embedded default model (python_export/mobilemoe_export/assets/default_model.pt, the
# trained Shakespeare MobileMoE that `make demo` runs) to a delegated .pte exactly as demo.sh does,
# and prints its path. Cached: keyed on the exporter's and the schema's sources and the checkpoint,
# so the test scripts that need it (test_aarch64.sh, test_android.sh) export it once between
# changes. Needs .venv (make venv).
# Env: DEFAULT_PTE_DIR (default target/default-model).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
CKPT="$ROOT/python_export/mobilemoe_export/assets/default_model.pt"
DIR="${DEFAULT_PTE_DIR:-$ROOT/target/default-model}"
[[ -x $PY ]] || { echo "export_default_pte: $PY missing: run make venv" >&2; exit 1; }
[[ -f $CKPT ]] || { echo "export_default_pte: $CKPT missing" >&2; exit 1; }
key=$(cat $(find "$ROOT/python_export/mobilemoe_export" "$ROOT/schema" -type f \( -name '*.py' -o -name '*.fbs' -o -name '*.txt' \) | sort) "$CKPT" | sha1sum | cut -c1-12)
MODEL="$DIR/default-$key.pte"
mkdir -p "$DIR"
if [[ ! -s $MODEL ]]; then
  find "$DIR" -mindepth 1 -maxdepth 1 -name 'default-*.pte*' ! -name "default-$key.*" -delete  # stale exports
  (cd "$ROOT" && PYTHONPATH="$ROOT/python_export${PYTHONPATH:+:$PYTHONPATH}" \
     "$PY" -m mobilemoe_export --checkpoint "$CKPT" --out "$MODEL.tmp" --no-progress > "$DIR/export.log" 2>&1) || {
    cat "$DIR/export.log" >&2; echo "export_default_pte: export of the default model failed" >&2; exit 1; }
  [[ -f $MODEL.tmp.json ]] && mv "$MODEL.tmp.json" "$MODEL.json"  # the export summary
  mv "$MODEL.tmp" "$MODEL"
fi
echo "$MODEL"
