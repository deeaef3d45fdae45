#!/usr/bin/env bash
# Runs a command and records its wall time, so `make test` can say where CI time goes:
#   scripts/timed.sh NAME cmd args...   appends "NAME SECONDS" to target/suite-times.txt
# (`make test` empties the file first and prints it at the end.) The command's exit code is kept.
set -uo pipefail
name=$1; shift
t0=$(date +%s)
"$@"
rc=$?
t1=$(date +%s)
mkdir -p "$(dirname "$0")/../target"
echo "$name $((t1 - t0)) $([ $rc = 0 ] && echo ok || echo FAILED)" >> "$(dirname "$0")/../target/suite-times.txt"
echo "[time] $name: $((t1 - t0)) s"
exit $rc
