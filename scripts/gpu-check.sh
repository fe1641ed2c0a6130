#!/usr/bin/env bash
# The GPU check of BENCHMARKS.md, in two halves:
#
#   scripts/gpu-check.sh prepare   # here (Rust toolchain, libtorch from PyPI's torch 2.11.0):
#                                  # builds the release `dsocr` and the engine test binary and
#                                  # copies them into .gpu/ (git-ignored via .git/info/exclude)
#   scripts/gpu-check.sh run       # on the GPU machine, from the repo root, .gpu/ carried along:
#                                  # card, CUDA bf16 parity vs the f32 reference, then
#                                  # `dsocr bench` on CUDA (base and gundam) and a short table;
#                                  # JSON reports go to $OUT (or ./gpu-out)
#
# The GPU machine has torch 2.11.0+cu130 in its Python but no Rust: the binaries find libtorch
# through LD_LIBRARY_PATH set below. Seeded full-size weights (no real weights needed).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=20261126

prepare() {
    . scripts/env.sh
    cargo build --release --locked --bin dsocr
    local test_bin
    test_bin=$(cargo test --release --locked --test engine --no-run --message-format=json \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="engine":
        print(m["executable"])' | tail -1)
    mkdir -p .gpu
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> "$(git rev-parse --git-path info/exclude)"
    cp target/release/dsocr .gpu/dsocr
    cp "$test_bin" .gpu/engine-tests
    strip .gpu/dsocr .gpu/engine-tests
    du -sh .gpu/*
}

run() {
    local out="${OUT:-$PWD/gpu-out}"
    mkdir -p "$out"
    LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
    export LD_LIBRARY_PATH
    nvidia-smi -L | tee "$out/card.txt"
    echo "== parity: CUDA bf16 vs the f32 reference (tiny cases + full-size seeded)"
    DSOCR_FIXTURES="$PWD/tests/fixtures" .gpu/engine-tests --ignored --nocapture \
        cuda_bf16_tracks_the_f32_reference 2>&1 | tee "$out/parity.txt"
    echo "== bench"
    .gpu/dsocr bench --seeded "$SEED" --device cuda --dtype bf16 --mode base \
        --new-tokens 256 --repeat 3 --json | tee "$out/bench-cuda-base.json"
    .gpu/dsocr bench --seeded "$SEED" --device cuda --dtype bf16 --mode gundam \
        --new-tokens 1000 --repeat 2 --json | tee "$out/bench-cuda-gundam.json"
    python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print(f"{'report':<24}{'load s':>8}{'vision s':>10}{'prefill s':>11}{'tok/s':>9}{'e2e s':>8}{'GPU GB':>8}")
for name in ["bench-cuda-base", "bench-cuda-gundam"]:
    r = json.loads((out / f"{name}.json").read_text())
    med = lambda k: r[k]["median"]
    e2e = med("prefill_incl_vision_s") + (r["new_tokens"] - 1) / med("decode_tokens_per_s")
    print(f"{name:<24}{r['load_s']:>8.2f}{med('vision_s'):>10.3f}{med('prefill_s'):>11.3f}"
          f"{med('decode_tokens_per_s'):>9.1f}{e2e:>8.2f}{(r['gpu_memory_gb'] or 0):>8.2f}")
print("card:", r["machine"]["gpu"])
PY
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: scripts/gpu-check.sh prepare|run" >&2; exit 2 ;;
esac
