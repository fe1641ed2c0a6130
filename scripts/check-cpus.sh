#!/usr/bin/env bash
# The engine's CPU kernel tests and tiny parity on CPUs this machine is not, under Debian's
# qemu-user (which emulates another CPU's instruction set, far more slowly).
#
#   scripts/check-cpus.sh                  # every emulated CPU below
#   scripts/check-cpus.sh haswell          # one of them
#
# - haswell: x86-64 with AVX2 and FMA, no AVX-512 (`qemu-x86_64 -cpu Haswell`), the release
#   build of this machine's engine test binary. `auto` must pick the avx2 tier; the avx512
#   trials report themselves ignored.
# - aarch64: a cross build (Debian's g++-aarch64-linux-gnu, PyPI's aarch64 torch==2.11.0 wheel as
#   LIBTORCH, cached in .cross/) run under `qemu-aarch64`. `auto` must pick libtorch there; the
#   portable (scalar) kernels run too.
#
# Emulation is slow, so the tiny parity runs on the cases in CASES (DSOCR_TINY_CASES), the
# cheapest ones; the kernels run in full. .ci/run calls this after scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
CASES=${DSOCR_CHECK_CASES:-text-only,tiny}

need_apt() {   # install Debian packages that are missing
    dpkg -s "$@" >/dev/null 2>&1 && return
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The test executable `name` from cargo's JSON messages for the build command "$@".
executable() {
    local name=$1
    shift
    "$@" --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$name" | tail -1
}

# Run the engine binary "$1" under the emulator command "${@:2}": the kernels (all tiers;
# absent ones ignored), then the tiny parity on the auto path and on every path.
run_engine() {
    local expect=$1 bin=$2
    shift 2
    local start=$SECONDS
    for filter in 'kernels::' 'parity_tiny'; do
        echo "-- $filter"
        DSOCR_EXPECT_AUTO=$expect DSOCR_TINY_CASES=$CASES "$@" "$bin" "$filter" \
            --test-threads 2 2>&1 | grep -v "TCG doesn't support requested feature"
        [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "check-cpus: $filter failed" >&2; return 1; }
    done
    echo "took $((SECONDS - start)) s"
}

haswell() {
    echo "== haswell (qemu-x86_64 -cpu Haswell): AVX2 + FMA, no AVX-512; cases $CASES"
    need_apt qemu-user
    . scripts/env.sh
    local bin
    bin=$(executable engine cargo test --release --locked --test engine --no-run)
    [ -x "$bin" ] || { echo "check-cpus: no engine test binary" >&2; return 1; }
    run_engine avx2 "$bin" qemu-x86_64 -cpu Haswell
}

aarch64() {
    echo "== aarch64 (qemu-aarch64, cross-built against PyPI's aarch64 libtorch); cases $CASES"
    local target=aarch64-unknown-linux-gnu cross=$ROOT/.cross
    # Cross toolchain, emulator and the arm64 runtime libraries (multiarch). The binaries run
    # with plain `qemu-aarch64`, without `-L /usr/aarch64-linux-gnu`: that prefix mixes the
    # cross toolchain's ld.so with the multiarch libc, and threads then never start.
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    need_apt g++-aarch64-linux-gnu qemu-user libc6:arm64 libstdc++6:arm64 libgomp1:arm64 unzip
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    # libtorch from the aarch64 wheel (not installed into any Python): torch/{lib,include}. The
    # wheel is built with CUDA: libtorch_cpu needs libcudart and libcupti (their own small
    # wheels, the versions torch 2.11.0 pins), and libtorch needs libtorch_cuda, replaced by an
    # empty stub (the real one would pull in cuBLAS, cuDNN, NCCL): CUDA is then unavailable.
    local torch=$cross/torch
    if [ ! -e "$torch/.complete" ]; then
        python3 -m pip --version >/dev/null 2>&1 || need_apt python3-pip
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
            --platform manylinux_2_28_aarch64 --platform manylinux_2_25_aarch64 \
            --platform manylinux2014_aarch64 -d "$cross/wheel" \
            torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
        rm -rf "$torch" "$cross/nv"
        unzip -q -o "$cross"/wheel/torch-2.11.0-*.whl 'torch/lib/*' 'torch/include/*' \
            -x torch/lib/libtorch_cuda.so torch/lib/libtorch_python.so -d "$cross"
        for w in "$cross"/wheel/nvidia_cuda_{runtime,cupti}-*.whl; do
            unzip -q -o "$w" -d "$cross/nv"
        done
        cp "$cross"/nv/nvidia/cu13/lib/{libcudart.so.13,libcupti.so.13} "$torch/lib/"
        echo 'void dsocr_torch_cuda_stub(void) {}' |
            aarch64-linux-gnu-gcc -shared -x c - -Wl,-soname,libtorch_cuda.so \
                -o "$torch/lib/libtorch_cuda.so"
        touch "$torch/.complete"
    fi
    (
        export LIBTORCH=$torch
        unset LIBTORCH_USE_PYTORCH LIBTORCH_LIB   # else torch-sys asks the host's Python
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
        export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
        export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
        export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
        local build=(cargo test --release --locked --target "$target" --test engine --no-run)
        local start=$SECONDS
        "${build[@]}"
        echo "aarch64 build: $((SECONDS - start)) s"
        local bin
        bin=$(executable engine "${build[@]}")
        [ -x "$bin" ] || { echo "check-cpus: no aarch64 engine test binary" >&2; exit 1; }
        run_engine libtorch "$bin" qemu-aarch64
    )
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(haswell aarch64)
for t in "${targets[@]}"; do
    case "$t" in
        haswell) haswell ;;
        aarch64) aarch64 ;;
        *) echo "check-cpus: unknown CPU $t (haswell, aarch64)" >&2; exit 2 ;;
    esac
done
