#!/usr/bin/env bash
# Make PNG screenshots of the real dashboard from real runs: the built `dsocr` in a tmux window,
# against the mock hub (examples/mock_hub.rs) with a temporary HF_HOME; each screen is captured
# with its colours (`tmux capture-pane -e`) and drawn by scripts/ansi2png.py.
#
#   scripts/screenshots.sh            # writes screenshots/*.png
#
# Needs tmux, python3-pil and fonts-dejavu-core (Debian packages; installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
for pkg in tmux python3-pil fonts-dejavu-core; do
    dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$pkg"; }
done
[ -n "${DSOCR_NO_BUILD:-}" ] || cargo build --release --locked --features mock --bin dsocr --example mock_hub --example test_model  # DSOCR_NO_BUILD=1: use what is built

COLS=140 ROWS=40
work="$(mktemp -d)"
sock="dsocr-shots-$$"
hub_pid=""
cleanup() {
    tmux -L "$sock" kill-server 2>/dev/null || true
    [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# start_hub SCENARIO: run the mock hub, set ENDPOINT and the tokens it accepts.
start_hub() {
    [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null && wait "$hub_pid" 2>/dev/null || true
    target/release/examples/mock_hub --scenario "$1" >"$work/hub.out" 2>&1 &
    hub_pid=$!
    for _ in $(seq 100); do grep -q "rejected token" "$work/hub.out" 2>/dev/null && break; sleep 0.1; done
    ENDPOINT="$(sed -n 's/^HF_ENDPOINT=//p' "$work/hub.out")"
    GRANTED="$(sed -n 's/^granted token: *//p' "$work/hub.out")"
    REJECTED="$(sed -n 's/^rejected token: *//p' "$work/hub.out")"
}

# run_dashboard NAME [VAR=VALUE...]: start dsocr in a fresh HF_HOME under tmux.
run_dashboard() {
    local name="$1"; shift
    tmux -L "$sock" kill-server 2>/dev/null || true
    # A server still shutting down makes new-session fail ("server exited unexpectedly").
    for _ in $(seq 50); do tmux -L "$sock" list-sessions >/dev/null 2>&1 || break; sleep 0.1; done
    sleep 0.3
    mkdir -p "$work/$name/hf" "$work/$name/config/dsocr"
    [ -n "${CONFIG:-}" ] && printf '%s' "$CONFIG" >"$work/$name/config/dsocr/config.toml"
    [ -n "${TOKEN_FILE:-}" ] && printf '%s' "$TOKEN_FILE" >"$work/$name/hf/token"
    local envs=(-e "HOME=$work/$name" -e "HF_HOME=$work/$name/hf" -e "HF_ENDPOINT=$ENDPOINT"
        -e "XDG_STATE_HOME=$work/$name/state" -e "XDG_CONFIG_HOME=$work/$name/config"
        -e "TERM=xterm-256color" -e "COLORTERM=truecolor")
    for kv in "$@"; do envs+=(-e "$kv"); done
    tmux -L "$sock" -f /dev/null new-session -d -x "$COLS" -y "$ROWS" "${envs[@]}" target/release/dsocr
}

# wait_for TEXT: until the screen shows TEXT (30 s at most).
wait_for() {
    for _ in $(seq 300); do
        tmux -L "$sock" capture-pane -p -t 0 | grep -qF "$1" && return 0
        sleep 0.1
    done
    echo "screenshots: timed out waiting for '$1'; screen:" >&2
    tmux -L "$sock" capture-pane -p -t 0 >&2
    return 1
}

keys() { for k in "$@"; do tmux -L "$sock" send-keys -t 0 "$k"; sleep 0.2; done; }

shoot() {
    tmux -L "$sock" capture-pane -e -p -t 0 >"$work/$1.ans"
    /usr/bin/python3 scripts/ansi2png.py "$work/$1.ans" "screenshots/$1.png" "$COLS" "$ROWS"
    echo "screenshots/$1.png"
}

mkdir -p screenshots

# 1. A saved login shadowed by an invalid HF_TOKEN: the Login pane names the cause and the fix.
start_hub ok
TOKEN_FILE="$GRANTED" run_dashboard shadowed "HF_TOKEN=$REJECTED"
wait_for "Fix"
shoot login-shadowed-token

# 2. Logged in, downloading (the mock CDN is throttled to 1 MB/s).
start_hub slow
TOKEN_FILE="$GRANTED" run_dashboard downloading
wait_for "alice"
keys Tab d
wait_for "Speed"
sleep 3
shoot downloading

# 3. OCR streaming: the real engine on the seeded tiny test model (random weights, so the text
# is nonsense and has no grounding boxes), chosen as a local folder, on a 1275x1650 page.
target/release/examples/test_model "$work/model" >/dev/null
TOKEN_FILE="$GRANTED" CONFIG=$'[ocr]\ndevice = "cpu"\nmax_new_tokens = 100000\n' run_dashboard ocr
wait_for "alice"
keys Tab f
tmux -L "$sock" send-keys -t 0 -l "$work/model"
keys Enter Tab i
tmux -L "$sock" send-keys -t 0 -l "$PWD/tests/fixtures/preprocess/sources/letter-1275x1650.png"
keys Enter r
wait_for " decode "
sleep 2
shoot ocr-streaming

# 4. A PDF in the OCR pane: page 2 of a 3-page document chosen with ], its preview, and that
# page running on the same model.
TOKEN_FILE="$GRANTED" CONFIG=$'[ocr]\ndevice = "cpu"\nmax_new_tokens = 100000\n' run_dashboard pdf
wait_for "alice"
keys Tab f
tmux -L "$sock" send-keys -t 0 -l "$work/model"
keys Enter Tab i
tmux -L "$sock" send-keys -t 0 -l "$PWD/tests/fixtures/pdf/three-pages.pdf"
keys Enter
wait_for "page 1 of 3"
keys "]"
wait_for "page 2 of 3"
sleep 1
keys r
wait_for " decode "
sleep 2
shoot ocr-pdf-page
