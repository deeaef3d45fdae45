#!/usr/bin/env bash
# Regenerates (or with --check, verifies) schema/src/generated/perfetto.protos.rs from
# schema/proto/perfetto_trace.proto with prost-build. Needs protoc (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null; then
  echo "[gen_perfetto_proto] installing protobuf-compiler (protoc)"
  apt-get install -y -qq protobuf-compiler >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null; }
fi
CHECK=()
[[ "${1:-}" == "--check" ]] && CHECK=(--check)
cargo run --quiet --release --manifest-path schema/tools/perfetto_gen/Cargo.toml \
  --target-dir "${CARGO_TARGET_DIR:-target}/perfetto_gen" -- \
  "${CHECK[@]}" schema/proto/perfetto_trace.proto schema/src/generated/perfetto.protos.rs
