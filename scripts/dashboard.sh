#!/usr/bin/env bash
# Build (first run: sets up libtorch) and start the dsocr dashboard. Extra arguments go to dsocr.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release --locked --bin dsocr
exec target/release/dsocr "$@"
