#!/usr/bin/env bash
# The core's cargo tests (thread tests included) under AddressSanitizer and
# ThreadSanitizer, with the installed nightly toolchain, and (`pytest`) the
# pytest suite against an ASan build of the extension. ThreadSanitizer
# builds the standard library instrumented too (-Zbuild-std) when rust-src
# is installed (`rustup component add rust-src --toolchain nightly`).
# Usage: scripts/sanitizers.sh [asan|tsan|pytest|all]
# Huge requests (the tests ask for 2**62 bytes) must fail as in libc, not
# abort: allocator_may_return_null=1.
# Results and timings: docs/safety.md, "Sanitizers".
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
target=x86_64-unknown-linux-gnu
common=(--target "$target" --no-default-features --lib --target-dir target/sanitizers)

run() {
    local name=$1 flags=$2
    shift 2
    echo "== $name"
    local start=$SECONDS
    # The block cache reads glibc's chunk headers, which the sanitizers'
    # own allocators do not have: that test is skipped under them.
    RUSTFLAGS="$flags" RUSTDOCFLAGS="$flags" cargo +nightly test "${common[@]}" "$@" -- --test-threads 2 \
        --skip a_glibc_block_files_where_its_own_size_looks \
        --skip a_glibc_block_c_freed_is_seen_freed_without_the_cache ${skip_also:-}
    echo "== $name: $((SECONDS - start)) s"
}

if [[ $which == asan || $which == all ]]; then
    # ASan's quarantine keeps a freed address from being handed out again
    # at once, which that index test needs glibc to do.
    skip_also="--skip a_libc_block_handed_out_again_displaces_the_record_that_lost_it" \
        LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp" \
        ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:allocator_may_return_null=1" run asan "-Zsanitizer=address"
fi
if [[ $which == tsan || $which == all ]]; then
    # ThreadSanitizer must see the standard library's synchronisation (a
    # contended Mutex waits inside std, Arc's drop fences): with rust-src
    # installed std is built instrumented (-Zbuild-std), else only rsalloc
    # is, and reports inside std's locks are not to be trusted.
    # scripts/tsan.supp: what remains that is not rsalloc's (docs/safety.md).
    opts="halt_on_error=0:report_signal_unsafe=0:allocator_may_return_null=1:suppressions=$PWD/scripts/tsan.supp"
    if [[ -d "$(rustc +nightly --print sysroot)/lib/rustlib/src/rust/library" ]]; then
        TSAN_OPTIONS="$opts" run tsan "-Zsanitizer=thread" -Zbuild-std
    else
        TSAN_OPTIONS="$opts" run tsan "-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer"
    fi
fi

if [[ $which == pytest || $which == all ]]; then
    # The extension built with ASan into a venv of its own; the runtime,
    # which rustc only ships as a static archive, made a shared object to
    # preload (gcc's libasan is another ASan version). CPython's own leaks
    # are not ours: detect_leaks=0.
    echo "== pytest under asan"
    start=$SECONDS
    work=target/sanitizers/pytest
    mkdir -p "$work/rt"
    rt=$(ls "$(rustc +nightly --print sysroot)"/lib/rustlib/$target/lib/librustc-nightly_rt.asan.a)
    (cd "$work/rt" && ar x "$rt" && rm -f asan_preinit.cpp.o && gcc -shared -o ../libasan_rt.so ./*.o -lpthread -ldl -lm -lstdc++)
    RUSTUP_TOOLCHAIN=nightly \
        RUSTFLAGS="-Zsanitizer=address --cfg pyo3_disable_reference_pool --cfg pyo3_leak_on_drop_without_reference_pool" \
        CARGO_TARGET_DIR=target/sanitizers/ext maturin build --release --target $target --out "$work/wheel"
    [[ -x $work/venv/bin/python ]] || { python -m venv "$work/venv" && "$work/venv/bin/pip" install -q pytest numpy cffi hypothesis typing_extensions; }
    "$work/venv/bin/pip" install -q --force-reinstall --no-deps "$work"/wheel/rsalloc-*.whl
    rm -f "$work"/asan.*
    # From a copy of the tests, so that the repository's python/ is not imported.
    rm -rf "$work/run" && mkdir -p "$work/run" && cp -r tests examples "$work/run/"
    (cd "$work/run" && LD_PRELOAD="$PWD/../libasan_rt.so" \
        ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=0:log_path=$PWD/../asan" \
        "$PWD/../venv/bin/python" -m pytest -q -p no:cacheprovider --ignore=tests/test_oom.py tests)
    reports=$(cat "$work"/asan.* 2>/dev/null | grep -c "ERROR: AddressSanitizer" || true)
    echo "== pytest under asan: $reports reports, $((SECONDS - start)) s"
    [[ $reports == 0 ]]
fi
