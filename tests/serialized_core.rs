//! The core in serialized mode (`core::serial::assume_serialized`), as the
//! Python binding runs it under the GIL. A test binary of its own: the switch
//! is process-wide and can never be turned off, so the unit tests (which run
//! threads without an outside lock) must not see it.

use rsalloc::core::alloc::{AllocCore, Libc, LIBC_GROUP};
use rsalloc::core::layout::{array, Request};
use rsalloc::core::region::{Anchor, RegionCore};
use rsalloc::core::stats::GLOBAL;
use std::sync::{Arc, Mutex};

/// Every use of the core in this binary holds it (the GIL's role).
static LOCK: Mutex<()> = Mutex::new(());

/// Held by each test for its whole run: they compare process-wide counters.
static ONE_TEST: Mutex<()> = Mutex::new(());

fn serialize() {
    // SAFETY: every use of the core below holds LOCK, including the drops
    // of what it hands out.
    unsafe { rsalloc::core::serial::assume_serialized() };
}

#[test]
fn threads_behind_one_lock_keep_exact_counts_and_sound_records() {
    let _one = ONE_TEST.lock().unwrap_or_else(|e| e.into_inner());
    serialize();
    let a = AllocCore::into_lifelong(AllocCore::new("malloc", LIBC_GROUP, true, Box::new(Libc)));
    let global_before = GLOBAL.snapshot();
    std::thread::scope(|s| {
        for t in 0..4usize {
            let a = &a;
            s.spawn(move || {
                let mut held = Vec::new();
                for i in 0..5_000usize {
                    let _g = LOCK.lock().unwrap();
                    let n = (i % 13 + t) as i128 + 1;
                    let r = a.allocate(array(n, 8, 8, None).unwrap(), None).unwrap();
                    // Zeroed, though its record may be one just given back.
                    let bytes = unsafe { std::slice::from_raw_parts(r.addr() as *const u8, 8) };
                    assert!(bytes.iter().all(|b| *b == 0));
                    unsafe { std::ptr::write_bytes(r.addr() as *mut u8, 0xAB, 8) };
                    if i % 3 == 0 {
                        r.free_plain(r.addr()).unwrap();
                        drop(r);
                    } else {
                        held.push(r);
                    }
                    if held.len() > 100 {
                        for r in held.drain(..) {
                            a.free(&r, r.addr()).unwrap();
                        }
                    }
                }
                let _g = LOCK.lock().unwrap();
                for r in held.drain(..) {
                    a.free(&r, r.addr()).unwrap();
                }
            });
        }
    });
    let s = a.counters.snapshot();
    assert_eq!(
        (s.live_count, s.live_bytes, s.total_allocs, s.total_frees),
        (0, 0, 20_000, 20_000)
    );
    let g = GLOBAL.snapshot();
    assert_eq!(g.total_allocs - global_before.total_allocs, 20_000);
    assert_eq!(g.live_bytes, global_before.live_bytes);
}

#[test]
fn a_region_shared_by_threads_behind_one_lock_hands_out_disjoint_blocks() {
    let _one = ONE_TEST.lock().unwrap_or_else(|e| e.into_inner());
    serialize();
    let anchor = {
        let _g = LOCK.lock().unwrap();
        Anchor::new(RegionCore::new()).unwrap()
    };
    let region = anchor.region().clone();
    let weak = Arc::downgrade(&region);
    let blocks = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (anchor, blocks) = (&anchor, &blocks);
            s.spawn(move || {
                let mut mine = Vec::new();
                for i in 0..2_000usize {
                    let _g = LOCK.lock().unwrap();
                    let req = Request {
                        size: 8 + i % 24,
                        align: 8,
                    };
                    let (at, r) = anchor.allocate(req).unwrap();
                    r.check_access(at).unwrap();
                    if i % 2 == 0 {
                        mine.push((at, req.size, r));
                    }
                }
                let _g = LOCK.lock().unwrap();
                blocks.lock().unwrap().extend(mine);
            });
        }
    });
    let _g = LOCK.lock().unwrap();
    let mut blocks = blocks.into_inner().unwrap();
    blocks.sort_by_key(|b| b.0);
    for w in blocks.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlap at {:#x}", w[1].0);
    }
    assert_eq!(region.snapshot().live_count, 8_000);
    assert_eq!(
        Arc::strong_count(&region),
        3,
        "the anchor, the generation (for all references) and this test"
    );
    drop(region);
    drop(anchor);
    assert!(weak.upgrade().is_some(), "4 000 references still hold it");
    drop(blocks);
    assert!(weak.upgrade().is_none());
}
