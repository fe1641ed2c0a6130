#!/usr/bin/env bash
# The GPU check of BENCHMARKS.md, in two halves:
#
#   scripts/gpu-check.sh prepare   # here (Rust toolchain, libtorch from PyPI's torch 2.11.0):
#                                  # builds the release `dsocr`, the engine test binary and the
#                                  # tiny test model (random weights, real tokenizer) into .gpu/
#                                  # (git-ignored via .git/info/exclude); about 40 MB
#   scripts/gpu-check.sh run       # on the GPU machine, from the repo root, .gpu/ carried along
#
# `run` never stops at a failing step: each step's status goes into $OUT/summary.json (OUT, or
# ./gpu-out) and the script goes on. The steps: the card; CUDA parity on the tiny cases (f32
# stage by stage, bf16 teacher-forced) and the full-size seeded case in bf16 teacher-forced
# along the reference's greedy ids, logit by logit against its f32 step logits (the same check
# tests/engine.rs runs on the CPU through libtorch: parity_seeded_bf16_libtorch); a warm-up, then
# `dsocr bench` in base and gundam (GPU memory from libtorch's caching allocator, not from
# nvidia-smi, whose process list is empty in containers); `dsocr ocr` on a generated page in
# gundam mode with the tiny model, checking every output file. Under 8 minutes on an H100/H200.
#
# The GPU machine has torch 2.11.0+cu130 in its Python but no Rust: the binaries find libtorch
# through LD_LIBRARY_PATH set below. Seeded full-size weights (no real weights needed).
set -uo pipefail
cd "$(dirname "$0")/.."
SEED=20261126

prepare() {
    set -e
    . scripts/env.sh
    cargo build --release --locked --bin dsocr --example test_model
    local test_bin
    test_bin=$(cargo test --release --locked --test engine --no-run --message-format=json \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="engine":
        print(m["executable"])' | tail -1)
    rm -rf .gpu
    mkdir -p .gpu
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> "$(git rev-parse --git-path info/exclude)"
    cp target/release/dsocr .gpu/dsocr
    cp "$test_bin" .gpu/engine-tests
    strip .gpu/dsocr .gpu/engine-tests
    target/release/examples/test_model .gpu/tiny-model >/dev/null
    du -sh .gpu/*
}

run() {
    local out="${OUT:-$PWD/gpu-out}"
    mkdir -p "$out"
    LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
    export LD_LIBRARY_PATH
    export DSOCR_FIXTURES="$PWD/tests/fixtures"
    local summary="$out/summary.tsv"
    : > "$summary"
    # step NAME COMMAND...: run it, log to $out/NAME.txt, record status and seconds.
    step() {
        local name=$1 start=$SECONDS
        shift
        echo "== $name"
        "$@" > "$out/$name.txt" 2>&1
        local rc=$?
        tail -n 15 "$out/$name.txt"
        printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$summary"
    }
    step card nvidia-smi -L
    step parity-tiny-f32 env DSOCR_KERNELS=libtorch .gpu/engine-tests --ignored --nocapture \
        cuda_f32_tiny_cases
    step parity-bf16 .gpu/engine-tests --ignored --nocapture cuda_bf16_tracks_the_f32_reference
    step warm-up .gpu/dsocr bench --seeded "$SEED" --device cuda --dtype bf16 --mode base \
        --new-tokens 8 --repeat 1 --json
    step bench-base .gpu/dsocr bench --seeded "$SEED" --device cuda --dtype bf16 --mode base \
        --new-tokens 256 --repeat 3 --json
    step bench-gundam .gpu/dsocr bench --seeded "$SEED" --device cuda --dtype bf16 \
        --mode gundam --new-tokens 1000 --repeat 2 --json
    step ocr-gundam ocr_gundam "$out/ocr"
    python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
steps = {}
for line in (out / "summary.tsv").read_text().splitlines():
    name, rc, secs = line.split("\t")
    steps[name] = {"status": "ok" if rc == "0" else f"failed ({rc})", "seconds": int(secs)}
benches = {}
for name in ["bench-base", "bench-gundam"]:
    try:
        r = json.loads((out / f"{name}.txt").read_text().strip().splitlines()[-1])
    except Exception:
        continue
    med = lambda k: r[k]["median"]
    benches[name] = {
        "card": r["machine"]["gpu"], "load_s": r["load_s"], "vision_s": med("vision_s"),
        "prefill_s": med("prefill_s"), "decode_tokens_per_s": med("decode_tokens_per_s"),
        "end_to_end_s": med("prefill_incl_vision_s") + (r["new_tokens"] - 1) / med("decode_tokens_per_s"),
        "gpu_memory_gb": r["gpu_memory_gb"], "kernels": r["kernels"],
    }
summary = {"steps": steps, "bench": benches}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
}

# `dsocr ocr` in gundam mode on a generated page with the tiny model: every output file there.
ocr_gundam() {
    local dir=$1
    rm -rf "$dir"
    mkdir -p "$dir"
    python3 - "$dir/page.png" <<'PY'
import sys, zlib, struct
w, h = 1275, 1650
rows = []
for y in range(h):
    line = (y // 30) % 2 == 1 and 100 <= y < 1550
    rows.append(b"\0" + bytes(20 if line and 100 <= x < 1175 and (x // 9 + y // 30) % 7 else 255 for x in range(w)))
raw = zlib.compress(b"".join(rows))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
    .gpu/dsocr ocr "$dir/page.png" --model .gpu/tiny-model --mode gundam --device cuda \
        --max-new-tokens 64 --out "$dir/out" || return 1
    local f
    for f in result_raw.txt result.mmd boxes.json result_with_boxes.jpg; do
        [ -s "$dir/out/page/$f" ] || { echo "missing or empty: $f"; return 1; }
    done
    echo "every output file written"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: scripts/gpu-check.sh prepare|run" >&2; exit 2 ;;
esac
