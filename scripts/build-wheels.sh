#!/usr/bin/env bash
# Builds the Linux x86_64 wheels (manylinux2014, i.e. manylinux_2_17: glibc
# 2.17 or newer) for every CPython >= 3.11 it finds, and the sdist, into
# dist/. Each wheel is checked with auditwheel: its platform tag must be
# manylinux_2_17_x86_64 and the extension must carry no RPATH/RUNPATH and
# need no libpython.
#
#   scripts/build-wheels.sh                        # every interpreter found + sdist
#   scripts/build-wheels.sh ~/.pyenv/versions/3.13.0/bin/python3   # just these
#   NO_SDIST=1 scripts/build-wheels.sh ...         # wheels only
#
# Interpreters are looked for as ~/.pyenv/versions/*/bin/python3.X and as
# python3.1X (and python3.1Xt) on PATH; one wheel per CPython tag. The build
# tools are pinned and installed into a throwaway virtual environment. The
# build runs on a clean copy of the working tree (tracked and untracked files,
# nothing .gitignore'd: no stale extension from `maturin develop`, no target/),
# with its cargo target directory cached in target/wheels so a second run is
# incremental (the build logs are kept there too). Needs git, a Rust
# toolchain and the package index (or a pip cache holding the pinned tools).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

MATURIN_VERSION=1.16.0
ZIGLANG_VERSION=0.15.2
AUDITWHEEL_VERSION=6.8.2
PLATFORM=manylinux_2_17_x86_64
OUT=${OUT:-$REPO/dist}
TOOLS_PYTHON=${TOOLS_PYTHON:-python3}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
START=$(now)

# --- interpreters -----------------------------------------------------------
candidates=()
if [ $# -gt 0 ]; then
    candidates=("$@")
else
    for p in "$HOME"/.pyenv/versions/*/bin/python3.[0-9] "$HOME"/.pyenv/versions/*/bin/python3.[0-9][0-9]{,t}; do
        [ -x "$p" ] && candidates+=("$p")
    done
    IFS=: read -r -a path_dirs <<<"$PATH"
    for d in "${path_dirs[@]}"; do
        for p in "$d"/python3.1[0-9] "$d"/python3.1[0-9]t; do
            [ -x "$p" ] && candidates+=("$p")
        done
    done
fi
# Prints "<tag> <executable>" for a CPython >= 3.11, nothing otherwise (a
# pyenv shim for a version that is not installed fails, and is skipped).
probe='import sys, sysconfig
if sys.implementation.name == "cpython" and sys.version_info >= (3, 11):
    t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
    print(f"cp{sys.version_info[0]}{sys.version_info[1]}{t}", sys.executable)'
declare -A by_tag=()
for c in "${candidates[@]}"; do
    line=$("$c" -c "$probe" 2>/dev/null) || line=
    if [ -z "$line" ]; then
        if [ $# -gt 0 ]; then
            echo "build-wheels: $c is not a CPython >= 3.11" >&2
            exit 1
        fi
        continue
    fi
    tag=${line%% *}
    [ -n "${by_tag[$tag]:-}" ] || by_tag[$tag]=${line#* }
done
if [ ${#by_tag[@]} -eq 0 ]; then
    echo "build-wheels: no CPython >= 3.11 found" >&2
    exit 1
fi
mapfile -t tags < <(printf '%s\n' "${!by_tag[@]}" | sort -V)
echo "== interpreters:"
for t in "${tags[@]}"; do echo "   $t ${by_tag[$t]}"; done

# --- pinned tools in a throwaway venv ---------------------------------------
T0=$(now)
"$TOOLS_PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q --disable-pip-version-check \
    "maturin==$MATURIN_VERSION" "ziglang==$ZIGLANG_VERSION" "auditwheel==$AUDITWHEEL_VERSION"
export PATH="$WORK/tools/bin:$PATH"
echo "== tools: $(maturin --version), ziglang $ZIGLANG_VERSION, auditwheel $AUDITWHEEL_VERSION ($(since "$T0"))"

# --- a clean copy of the working tree ---------------------------------------
SRC=$WORK/src
mkdir -p "$SRC"
git -C "$REPO" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar -C "$REPO" --null -T - -cf - | tar -C "$SRC" -xf -
export CARGO_TARGET_DIR=$REPO/target/wheels
mkdir -p "$OUT"

# --- wheels -----------------------------------------------------------------
# .cargo/config.toml's [build] rustflags hold rsalloc's PyO3 cfgs; they apply
# only while RUSTFLAGS is unset. Checked below in cargo's verbose log.
if [ -n "${RUSTFLAGS:-}" ]; then
    echo "build-wheels: RUSTFLAGS is set ($RUSTFLAGS); it replaces .cargo/config.toml's rustflags" >&2
fi
built=()
for t in "${tags[@]}"; do
    py=${by_tag[$t]}
    T0=$(now)
    log=$CARGO_TARGET_DIR/build-$t.log
    if ! (cd "$SRC" && maturin build --release --zig --compatibility manylinux2014 \
        -i "$py" --out "$WORK/wheels-$t" -v) >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "build-wheels: the $t build failed" >&2
        exit 1
    fi
    # The cdylib's rustc line must carry the config's cfgs (RUSTFLAGS unset).
    if [ -z "${RUSTFLAGS:-}" ] && ! grep -q -- "--crate-name rsalloc .*--crate-type cdylib.*--cfg pyo3_disable_reference_pool" "$log"; then
        echo "build-wheels: .cargo/config.toml's rustflags did not reach the $t build" >&2
        exit 1
    fi
    whl=$(ls "$WORK/wheels-$t"/*.whl)
    echo "== $t: $(basename "$whl") ($(since "$T0"))"
    built+=("$whl")
done

# --- checks -----------------------------------------------------------------
for whl in "${built[@]}"; do
    name=$(basename "$whl")
    case $name in
        *"$PLATFORM"*) ;;
        *) echo "build-wheels: $name is not tagged $PLATFORM" >&2; exit 1 ;;
    esac
    show=$(auditwheel show "$whl")
    if ! grep -q "\"$PLATFORM\"" <<<"$show"; then
        echo "$show" >&2
        echo "build-wheels: auditwheel does not accept $name as $PLATFORM" >&2
        exit 1
    fi
    mkdir -p "$WORK/x" && rm -rf "$WORK/x"/* && (cd "$WORK/x" && python3 -m zipfile -e "$whl" .)
    for so in "$WORK"/x/rsalloc/*.so; do
        dyn=$(readelf -d "$so")
        if grep -qE "RPATH|RUNPATH|libpython" <<<"$dyn"; then
            echo "$dyn" >&2
            echo "build-wheels: $name's $(basename "$so") has an rpath or links libpython" >&2
            exit 1
        fi
    done
    cp "$whl" "$OUT/"
    echo "== auditwheel: $name is $PLATFORM, no rpath, no libpython"
done

# --- sdist ------------------------------------------------------------------
if [ -z "${NO_SDIST:-}" ]; then
    T0=$(now)
    (cd "$SRC" && maturin sdist --out "$WORK/sdist") >"$CARGO_TARGET_DIR/sdist.log" 2>&1 ||
        { cat "$CARGO_TARGET_DIR/sdist.log" >&2; exit 1; }
    sdist=$(ls "$WORK/sdist"/*.tar.gz)
    # pip builds the sdist with .cargo/config.toml's PyO3 cfgs only if it ships.
    tar -tzf "$sdist" >"$WORK/sdist.list"
    for f in .cargo/config.toml LICENSE Cargo.lock; do
        grep -qx "[^/]*/$f" "$WORK/sdist.list" ||
            { echo "build-wheels: the sdist lacks $f" >&2; exit 1; }
    done
    cp "$sdist" "$OUT/"
    echo "== sdist: $(basename "$sdist") ($(since "$T0"))"
fi
echo "== build-wheels: done in $(since "$START"); in $OUT:"
ls -1 "$OUT"
