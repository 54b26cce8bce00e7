#!/usr/bin/env bash
# CI steps beside .ci/run (which runs everything on the default Python, 3.11):
#
# 1. the README's test command (pip install ".[test]" && cargo test &&
#    python -m pytest) on CPython 3.13, in a fresh virtual environment;
# 2. a manylinux wheel built by scripts/build-wheels.sh for one interpreter
#    (3.12 when present, so the three CPythons here are each tested once
#    more; else python3), installed and tested by scripts/test-wheel.sh with
#    no Rust toolchain on PATH.
#
# Interpreters: PY313 (default ~/.pyenv/versions/3.13.0/bin/python3) and
# WHEEL_PYTHON. When 3.13 is absent, step 1 is skipped with a message and the
# rest still runs; any failure fails the script. The 3.13 build uses its own
# cargo target directory (target/ci-py313) so .ci/run's stays warm.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
START=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f s", b - a }'; }

PY313=${PY313:-$HOME/.pyenv/versions/3.13.0/bin/python3}
if [ -z "${WHEEL_PYTHON:-}" ]; then
    WHEEL_PYTHON=python3
    for p in "$HOME"/.pyenv/versions/3.12.*/bin/python3; do
        [ -x "$p" ] && WHEEL_PYTHON=$p
    done
fi

# --- 1. the README's test command on 3.13 -----------------------------------
T0=$(date +%s.%N)
if [ -x "$PY313" ] && "$PY313" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
    echo "== 3.13: README test command with $PY313"
    WORK=$(mktemp -d)
    (
        trap 'rm -rf "$WORK"' EXIT
        "$PY313" -m venv "$WORK/venv"
        # shellcheck disable=SC1091
        . "$WORK/venv/bin/activate"
        python -m pip install -q --disable-pip-version-check --upgrade pip
        export CARGO_TARGET_DIR=$REPO/target/ci-py313
        pip install -q ".[test]"
        cargo test --quiet
        python -m pytest -q -p no:cacheprovider
    )
    echo "== 3.13: passed ($(since "$T0"))"
else
    echo "== 3.13: SKIPPED: no CPython 3.13 at $PY313 (set PY313 to one)"
fi

# --- 2. a wheel, tested without Rust ----------------------------------------
T0=$(date +%s.%N)
echo "== wheel: build for $WHEEL_PYTHON"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
OUT=$OUT NO_SDIST=1 scripts/build-wheels.sh "$WHEEL_PYTHON"
echo "== wheel: built ($(since "$T0"))"
T0=$(date +%s.%N)
scripts/test-wheel.sh "$WHEEL_PYTHON" "$(ls "$OUT"/*.whl)"
echo "== wheel: tested ($(since "$T0"))"

echo "== ci-extra: passed in $(since "$START")"
