//! The bump region beside bumpalo, in the same run: `cargo bench --bench region`.
//!
//! Each sample fills a fresh arena with 1000 allocations of 32 bytes (8-byte
//! aligned) and drops/releases it, so chunk growth and release are included.
//! rsalloc's region also zeroes memory, counts every allocation (its own and
//! the process-wide counters) and is thread-safe; bumpalo does none of these,
//! so it is the floor, not a like-for-like peer.

use bumpalo::Bump;
use rsalloc::core::layout::Request;
use rsalloc::core::region::RegionCore;
use std::alloc::Layout;

const N: usize = 1000;

fn main() {
    // `RSALLOC_SERIALIZED=1`: the mode the Python binding runs the core in
    // under the GIL (src/core/serial.rs). Every bench here runs on one
    // thread, which is all that mode asks.
    if std::env::var_os("RSALLOC_SERIALIZED").is_some_and(|v| v == "1") {
        // SAFETY: divan runs these benches on a single thread.
        unsafe { rsalloc::core::serial::assume_serialized() };
    }
    divan::main();
}

#[divan::bench]
fn rsalloc_region_1000x32(b: divan::Bencher) {
    let req = Request { size: 32, align: 8 };
    b.bench(|| {
        let r = RegionCore::new();
        for _ in 0..N {
            divan::black_box(r.allocate(req).unwrap());
        }
        r.release(false);
    });
}

#[divan::bench]
fn rsalloc_region_reused_1000x32(b: divan::Bencher) {
    let req = Request { size: 32, align: 8 };
    let r = RegionCore::new();
    b.bench(|| {
        for _ in 0..N {
            divan::black_box(r.allocate(req).unwrap());
        }
        r.release(true);
    });
}

#[divan::bench]
fn bumpalo_1000x32(b: divan::Bencher) {
    let layout = Layout::from_size_align(32, 8).unwrap();
    b.bench(|| {
        let bump = Bump::new();
        for _ in 0..N {
            divan::black_box(bump.alloc_layout(layout));
        }
        drop(bump);
    });
}

#[divan::bench]
fn bumpalo_zeroed_reset_1000x32(b: divan::Bencher) {
    let layout = Layout::from_size_align(32, 8).unwrap();
    let mut bump = Bump::new();
    b.bench_local(|| {
        for _ in 0..N {
            let p = bump.alloc_layout(layout);
            // SAFETY: the block holds 32 writable bytes.
            unsafe { std::ptr::write_bytes(p.as_ptr(), 0, 32) };
            divan::black_box(p);
        }
        bump.reset();
    });
}
