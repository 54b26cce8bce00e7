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
use rsalloc::core::serial::Serialized;
use std::alloc::Layout;

const N: usize = 1000;

fn main() {
    divan::main();
}

/// `RSALLOC_SERIALIZED=1`: the serialized paths, which the Python binding
/// takes under the GIL (src/core/serial.rs); otherwise the synchronised ones.
fn serialized() -> Option<Serialized<'static>> {
    std::env::var_os("RSALLOC_SERIALIZED")
        .is_some_and(|v| v == "1")
        // SAFETY: divan runs these benches on a single thread, and nothing
        // else uses the core meanwhile.
        .then(|| unsafe { Serialized::new() })
}

#[divan::bench]
fn rsalloc_region_1000x32(b: divan::Bencher) {
    let req = Request { size: 32, align: 8 };
    let s = serialized();
    b.bench_local(|| {
        let r = RegionCore::new();
        for _ in 0..N {
            divan::black_box(r.allocate(req, s).unwrap());
        }
        r.release(false, s);
    });
}

#[divan::bench]
fn rsalloc_region_reused_1000x32(b: divan::Bencher) {
    let req = Request { size: 32, align: 8 };
    let r = RegionCore::new();
    let s = serialized();
    b.bench_local(|| {
        for _ in 0..N {
            divan::black_box(r.allocate(req, s).unwrap());
        }
        r.release(true, s);
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
