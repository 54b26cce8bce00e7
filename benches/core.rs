//! Benches of the pure-Rust core (`cargo bench --bench core`): a block's whole
//! life through the core beside bare libc, and the counters under threads.

use rsalloc::core::alloc::{AllocCore, Libc, LIBC_GROUP};
use rsalloc::core::layout;
use rsalloc::core::stats::Counters;
use std::hint::black_box;

fn main() {
    // Fixed sample sizes: divan's calibration sometimes settles on 100
    // iterations per sample after a slow first one (page faults), and then
    // reports a timer-quantised 49.7 ns for a 29 ns operation.
    divan::Divan::from_args()
        .sample_size(5000)
        .sample_count(200)
        .main();
}

/// malloc + free of 64 bytes straight from libc: the floor.
#[divan::bench]
fn libc_malloc_free_64() {
    // SAFETY: plain libc calls; the block is freed once.
    unsafe {
        let p = libc::malloc(black_box(64));
        libc::free(black_box(p));
    }
}

/// The same block through the core: request check, record, counters, state change.
#[divan::bench]
fn core_allocate_free_64(bencher: divan::Bencher) {
    let a = AllocCore::new("malloc", LIBC_GROUP, false, Box::new(Libc));
    bencher.bench_local(|| {
        let req = layout::array(black_box(64), 1, 1, None).unwrap();
        let rec = a.allocate(req, None, None).unwrap();
        a.free(&rec, rec.addr(), None).unwrap();
    });
}

/// calloc semantics through the core.
#[divan::bench]
fn core_allocate_free_64_zeroed(bencher: divan::Bencher) {
    let a = AllocCore::new("calloc", LIBC_GROUP, true, Box::new(Libc));
    bencher.bench_local(|| {
        let req = layout::array(black_box(64), 1, 1, None).unwrap();
        let rec = a.allocate(req, None, None).unwrap();
        a.free(&rec, rec.addr(), None).unwrap();
    });
}

/// One allocation and one free counted, with 1, 2 and 4 threads on one set of counters.
#[divan::bench(threads = [1, 2, 4])]
fn counters_alloc_free(bencher: divan::Bencher) {
    static C: Counters = Counters::new();
    bencher.bench(|| {
        C.on_alloc(black_box(64), None);
        C.on_free(black_box(64), None);
    });
}

/// The liveness check every element access makes.
#[divan::bench]
fn record_check_access(bencher: divan::Bencher) {
    let a = AllocCore::new("malloc", LIBC_GROUP, false, Box::new(Libc));
    let rec = a
        .allocate(layout::array(8, 1, 1, None).unwrap(), None, None)
        .unwrap();
    bencher.bench_local(|| black_box(&rec).check_access().is_ok());
    a.free(&rec, rec.addr(), None).unwrap();
}
