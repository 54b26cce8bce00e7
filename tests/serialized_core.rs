//! The core in serialized mode (`core::serial::assume_serialized`), as the
//! Python binding runs it under the GIL. A test binary of its own: the switch
//! is process-wide and can never be turned off, so the unit tests (which run
//! threads without an outside lock) must not see it.

use rsalloc::core::alloc::{AllocCore, Libc, LIBC_GROUP};
use rsalloc::core::layout::array;
use rsalloc::core::stats::GLOBAL;
use std::sync::Mutex;

#[test]
fn threads_behind_one_lock_keep_exact_counts_and_sound_records() {
    // SAFETY: every use of the core below holds LOCK (the GIL's role),
    // including the drops of the records it hands out.
    unsafe { rsalloc::core::serial::assume_serialized() };
    static LOCK: Mutex<()> = Mutex::new(());
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
