#!/usr/bin/env bash
# The core's cargo tests (thread tests included) under AddressSanitizer and
# ThreadSanitizer, with the installed nightly toolchain (no -Zbuild-std: the
# standard library itself is not instrumented, which ThreadSanitizer needs
# the ABI-mismatch flag for). Usage: scripts/sanitizers.sh [asan|tsan|all]
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
    echo "== $name"
    local start=$SECONDS
    # The block cache reads glibc's chunk headers, which the sanitizers'
    # own allocators do not have: that test is skipped under them.
    RUSTFLAGS="$flags" RUSTDOCFLAGS="$flags" cargo +nightly test "${common[@]}" -- --test-threads 2 \
        --skip a_glibc_block_files_where_its_own_size_looks
    echo "== $name: $((SECONDS - start)) s"
}

if [[ $which == asan || $which == all ]]; then
    LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp" \
        ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:allocator_may_return_null=1" run asan "-Zsanitizer=address"
fi
if [[ $which == tsan || $which == all ]]; then
    TSAN_OPTIONS="halt_on_error=0:report_signal_unsafe=0:allocator_may_return_null=1" run tsan "-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer"
fi
