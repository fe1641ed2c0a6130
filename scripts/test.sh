#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: sets up libtorch (scripts/env.sh), builds once
# in release mode and runs every test, including the full-size seeded parity case.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release --locked --all-targets
command -v tmux >/dev/null || { apt-get update -qq && apt-get install -y -qq tmux; }  # the dashboard's end-to-end test
cargo test --release --locked -- "$@"
