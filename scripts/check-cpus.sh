#!/usr/bin/env bash
# The engine's tiny parity and CPU kernel tests on CPUs this machine is not: run under Debian's
# qemu-user, which emulates the instruction set (not the speed) of another CPU.
#
#   scripts/check-cpus.sh            # every emulated CPU below
#   scripts/check-cpus.sh haswell    # one of them
#
# - haswell: x86-64 with AVX2 and FMA but no AVX-512 (`qemu-x86_64 -cpu Haswell`). `auto` must
#   pick the avx2 tier there; the avx512 trials must report themselves ignored.
#
# scripts/test.sh runs this after the native suite (so CI does); it needs a release build of the
# test binaries (scripts/test.sh makes one) and installs qemu-user if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

command -v qemu-x86_64 >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-user >/dev/null; }

# The engine test binary of the release build (built by scripts/test.sh, or here).
engine_binary() {
    cargo test --release --locked --test engine --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "engine" and m.get("executable"):
        print(m["executable"])'
}

run_haswell() {
    local bin
    bin="$(engine_binary)"
    [ -x "$bin" ] || { echo "check-cpus: no engine test binary" >&2; exit 1; }
    echo "== haswell (qemu-x86_64 -cpu Haswell): AVX2 + FMA, no AVX-512"
    local start=$SECONDS
    # Two filters, two runs (the harness takes one): the kernels one by one, then the tiny
    # parity set on every path (libtorch, and each tier the emulated CPU has).
    for filter in 'kernels::' 'parity_tiny::'; do
        DSOCR_EXPECT_AUTO=avx2 qemu-x86_64 -cpu Haswell "$bin" "$filter" --test-threads 2
    done
    echo "haswell: $((SECONDS - start)) s"
}

targets=("${@:-haswell}")
for t in "${targets[@]}"; do
    case "$t" in
        haswell) run_haswell ;;
        *) echo "check-cpus: unknown CPU $t (haswell)" >&2; exit 2 ;;
    esac
done
