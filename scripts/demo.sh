#!/usr/bin/env bash
# The main job on the embedded default. Until the end-to-end generation lands this is the most
# end-to-end real thing: the fused MoE layer on a MobileMoE-S-shaped layer, parity + speed.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ./target/release/moe_demo
