#!/usr/bin/env bash
# Python suites (python_export + cross-language tests). Exit code 5 (no tests collected) is an
# error here: a suite that runs nothing must not look green.
set -euo pipefail
cd "$(dirname "$0")/.."
dirs=()
for d in python_export/tests tests; do
  [[ -d $d ]] && dirs+=("$d")
done
exec .venv/bin/python -m pytest -q -p mobilemoe_export._pytest_no_skip "${dirs[@]}" "$@"
