#!/usr/bin/env bash
# Runs tests/test_hostile_pointer.py (or the tests named as arguments) under
# Python 3.12 or later, where a class can define `__buffer__`: the hostile
# source buffers of write_bytes/copy_from that free their destination are
# skipped under the default 3.11. Builds the extension for that interpreter
# in a fresh virtual environment (a few minutes).
#
#   scripts/hostile-py312.sh
#   PYTHON312=~/.pyenv/versions/3.13.0/bin/python scripts/hostile-py312.sh
#
# Exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON312:-$HOME/.pyenv/versions/3.12.1/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m venv "$WORK/venv"
# shellcheck disable=SC1091
. "$WORK/venv/bin/activate"
python -m pip install -q maturin pytest numpy
CARGO_TARGET_DIR="$WORK/target" maturin develop --release -q
python -m pytest -q -p no:cacheprovider "${@:-tests/test_hostile_pointer.py}"
