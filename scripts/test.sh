#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: sets up libtorch (scripts/env.sh), builds once
# in release mode and runs every test, including the full-size seeded parity case.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release --locked --all-targets
cargo test --release --locked -- "$@"
