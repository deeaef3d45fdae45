#!/usr/bin/env bash
# Creates/updates the project virtualenv at .venv/ (idempotent): pinned torch + executorch,
# pytest (+ xdist: two workers in make test), transformers (the --hf export and its tests), safetensors (MobileMoE checkpoints), and
# python_export in editable mode.
# A stamp file records what was installed, so a second run costs a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
PINS="torch==2.14.0 executorch==1.5.1 torchao==0.18.0 pytest==8.4.2 pytest-xdist==3.8.0 matplotlib perfetto ruff==0.8.4 transformers==5.24.0 safetensors==0.8.0"
STAMP=.venv/.mobilemoe-stamp
WANT="$PINS|$(sha1sum python_export/pyproject.toml 2>/dev/null | cut -c1-12)"
if [[ -f $STAMP && "$(cat $STAMP)" == "$WANT" && -x .venv/bin/python ]]; then
  exit 0
fi
echo "[bootstrap] setting up .venv (torch 2.14.0 + executorch 1.5.1; ~6 GB, a few minutes the first time)"
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
# executorch 1.5.1 declares no torch dependency: install torch explicitly, same resolver run.
.venv/bin/python -m pip install --quiet $PINS
if [[ -f python_export/pyproject.toml ]]; then
  .venv/bin/python -m pip install --quiet --no-deps -e python_export
fi
echo "$WANT" > $STAMP
echo "[bootstrap] .venv ready"
