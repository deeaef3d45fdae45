#!/usr/bin/env bash
# Python suites (python_export + cross-language tests). Exit code 5 (no tests collected) is an
# error here: a suite that runs nothing must not look green.
# Two pytest-xdist workers, whole files per worker (--dist loadfile: a module's fixtures are built
# once); PYTEST_WORKERS=0 runs in this process. --durations lists the slowest tests (CI budget).
set -euo pipefail
cd "$(dirname "$0")/.."
dirs=()
for d in python_export/tests tests; do
  [[ -d $d ]] && dirs+=("$d")
done
workers=${PYTEST_WORKERS:-2}
par=()
if [[ $workers != 0 ]]; then
  par=(-n "$workers" --dist loadfile)
fi
exec .venv/bin/python -m pytest -q -p mobilemoe_export._pytest_no_skip "${par[@]}" --durations=12 "${dirs[@]}" "$@"
