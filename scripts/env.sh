# Source this file: it makes sure libtorch is available and exports what the build needs.
#
#   . scripts/env.sh
#
# libtorch comes from, in order:
#   1. $LIBTORCH, if you set it (a libtorch 2.11.0 folder with lib/ and include/);
#   2. the project venv ($DSOCR_VENV, default .venv in the repo), created on first use with
#      `pip install -r scripts/requirements.txt` (PyPI's torch==2.11.0; it runs on CPU and CUDA).
# The build embeds an rpath to that libtorch, so the built binary runs without LD_LIBRARY_PATH.

_dsocr_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${LIBTORCH:-}" ]; then
    DSOCR_VENV="${DSOCR_VENV:-$_dsocr_root/.venv}"
    _dsocr_stamp="$DSOCR_VENV/.dsocr-requirements"
    if ! cmp -s "$_dsocr_root/scripts/requirements.txt" "$_dsocr_stamp" 2>/dev/null; then
        echo "dsocr: setting up the Python venv with libtorch in $DSOCR_VENV (first run: a few GB, some minutes)" >&2
        # An existing venv (or a link to one) is only topped up with the new requirements.
        if [ ! -x "$DSOCR_VENV/bin/python" ]; then
            python3 -m venv "$DSOCR_VENV" || return 1 2>/dev/null || exit 1
        fi
        "$DSOCR_VENV/bin/pip" install --quiet --disable-pip-version-check \
            -r "$_dsocr_root/scripts/requirements.txt" || return 1 2>/dev/null || exit 1
        cp "$_dsocr_root/scripts/requirements.txt" "$_dsocr_stamp"
    fi
    export PATH="$DSOCR_VENV/bin:$PATH"
    export LIBTORCH_USE_PYTORCH=1
    export DSOCR_PYTHON="$DSOCR_VENV/bin/python"
fi
unset _dsocr_root _dsocr_stamp
