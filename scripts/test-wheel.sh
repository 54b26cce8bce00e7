#!/usr/bin/env bash
# Installs a built wheel into a fresh virtual environment with no Rust
# toolchain reachable, then runs `python -m rsalloc demo` and the test suite
# against the installed package (a copy of tests/, examples/ and the
# manifests in a temporary directory: no package source on sys.path).
#
#   scripts/test-wheel.sh [PYTHON [WHEEL]]
#
# PYTHON (default python3) is the interpreter; WHEEL defaults to the wheel in
# dist/ whose tag matches it (scripts/build-wheels.sh makes them). The test
# dependencies come from the package index as wheels only (--only-binary):
# nothing is compiled. Extra arguments for pytest: $PYTEST_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${1:-python3}
START=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

# Wheel tags: python cp3XY, abi cp3XY (cp3XYt for a free-threaded build).
read -r pytag abitag < <("$PY" -c 'import sys, sysconfig
t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
v = f"cp{sys.version_info[0]}{sys.version_info[1]}"
print(v, v + t)')
if [ $# -ge 2 ]; then
    WHEEL=$(realpath "$2")
else
    shopt -s nullglob
    found=("$REPO"/dist/rsalloc-*-"$pytag"-"$abitag"-*.whl)
    shopt -u nullglob
    if [ ${#found[@]} -ne 1 ]; then
        echo "test-wheel: want one $pytag-$abitag wheel in dist/, found ${#found[@]} (run scripts/build-wheels.sh $PY)" >&2
        exit 1
    fi
    WHEEL=${found[0]}
fi
echo "== test-wheel: $(basename "$WHEEL") on $("$PY" -c 'import sys; print(sys.version.split()[0])')"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# No Rust: drop cargo's and rustup's directories from PATH, point their homes
# at nothing, and check that neither tool can be found.
PATH=$(tr ':' '\n' <<<"$PATH" | grep -v -e '/\.cargo/' -e '/\.rustup/' -e '^$' | paste -sd: -)
export PATH CARGO_HOME=$WORK/no-cargo RUSTUP_HOME=$WORK/no-rustup
unset PYTHONPATH VIRTUAL_ENV RUSTFLAGS
for tool in cargo rustc; do
    if command -v "$tool" >/dev/null; then
        echo "test-wheel: $tool is still on PATH at $(command -v "$tool"): cannot prove the wheel needs no Rust" >&2
        exit 1
    fi
done

T0=$(date +%s.%N)
"$PY" -m venv "$WORK/venv"
VBIN=$WORK/venv/bin
[ -d "$VBIN" ] || VBIN=$WORK/venv/Scripts  # Windows
VPY=$VBIN/python
export PATH="$VBIN:$PATH"
"$VPY" -m pip install -q --disable-pip-version-check --only-binary :all: "$WHEEL[test]"
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
echo "== installed into $SITE ($(since "$T0"))"

mkdir -p "$WORK/src" "$WORK/run"
cp -r "$REPO/tests" "$WORK/src/tests"
[ -d "$REPO/examples" ] && cp -r "$REPO/examples" "$WORK/src/examples"
# The manifests too, so tests/test_version.py compares the installed version
# with Cargo.toml's; python/ stays behind (nothing to import from here).
cp "$REPO/Cargo.toml" "$REPO/pyproject.toml" "$REPO/LICENSE" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
cd "$WORK/run"

"$VPY" - "$SITE" <<'EOF'
import pathlib, sys
import rsalloc
site = pathlib.Path(sys.argv[1]).resolve()
here = pathlib.Path(rsalloc.__file__).resolve()
assert here.is_relative_to(site), f"rsalloc imported from {here}, not from {site}"
print(f"== rsalloc {rsalloc.__version__} from {here.parent}")
EOF

T0=$(date +%s.%N)
echo "== python -m rsalloc demo"
"$VPY" -m rsalloc demo >"$WORK/demo.out"
tail -3 "$WORK/demo.out"
echo "== demo: ok ($(since "$T0"))"

T0=$(date +%s.%N)
echo "== the suite against the installed package"
# shellcheck disable=SC2086
# The platform tag tests/test_installed_wheel.py expects in the wheel's
# WHEEL file: this script's builds are manylinux_2_17; "" skips that check.
: "${RSALLOC_WHEEL_PLATFORM=manylinux_2_17_$(uname -m)}"
RSALLOC_INSTALLED_IN=$SITE RSALLOC_SOURCE_TREE=$WORK/src RSALLOC_WHEEL_PLATFORM=$RSALLOC_WHEEL_PLATFORM \
    "$VPY" -m pytest -q -p no:cacheprovider --rootdir "$WORK/src/tests" "$WORK/src/tests" ${PYTEST_ARGS:-}
echo "== suite: ok ($(since "$T0"))"
echo "== test-wheel: $(basename "$WHEEL") passed in $(since "$START")"
