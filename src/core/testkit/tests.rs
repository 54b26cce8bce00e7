//! Out-of-memory injection along every allocation path, and threads racing
//! the record's state machine, both checked against [`Counting`]'s ledger.

use super::Counting;
use crate::core::alloc::{new_id, AllocCore};
use crate::core::error::{Death, Error, Ownership};
use crate::core::layout::{array, Request};
use crate::core::record::{Record, State};
use crate::core::record_ref::RecordRef;
use crate::core::stats::Snapshot;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};

fn counting(group: u64, zeroed: bool) -> (Counting, Arc<AllocCore>) {
    let c = Counting::new();
    let a = AllocCore::new("counting", group, zeroed, Box::new(c.clone()));
    (c, a)
}

fn bytes(rec: &Record) -> &[u8] {
    // SAFETY: the test only looks at live blocks it owns.
    unsafe {
        std::slice::from_raw_parts(
            std::ptr::with_exposed_provenance::<u8>(rec.addr()),
            rec.size(),
        )
    }
}

fn stamp(rec: &Record, byte: u8) {
    // SAFETY: as above.
    unsafe {
        std::ptr::write_bytes(
            std::ptr::with_exposed_provenance_mut::<u8>(rec.addr()),
            byte,
            rec.size(),
        )
    }
}

fn settled(s: Snapshot) -> bool {
    s.live_count == 0 && s.live_bytes == 0 && s.total_allocs == s.total_frees
}

/// One step of the allocation path: which allocator, what it does.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// allocate `size` bytes at `align` into a new slot.
    Alloc(usize, usize, usize),
    /// allocator, slot, new size: realloc the slot's block in place of it.
    Realloc(usize, usize, usize),
}

/// Allocations, reallocs within a backend (libc-style and the moving
/// default), reallocs across two allocators of one owner group, zero sizes
/// and over-aligned blocks: each step asks its backend for memory once.
const PATH: &[Step] = &[
    Step::Alloc(0, 16, 8),
    Step::Alloc(1, 0, 1),
    Step::Alloc(0, 100, 4096),
    Step::Realloc(0, 0, 64),
    Step::Realloc(0, 0, 8),
    Step::Realloc(0, 2, 10_000),
    Step::Realloc(1, 0, 32), // slot 0 came from allocator 0: the bytes move across
    Step::Realloc(0, 1, 24), // and back
    Step::Alloc(1, 1 << 20, 64),
    Step::Realloc(1, 3, 0),
];

#[test]
fn every_out_of_memory_along_the_path_is_an_error_that_changes_and_leaks_nothing() {
    run_path_failing(|c, k| c.fail_at(k));
}

/// The bookkeeping too: the k-th record allocation fails (reserved before the
/// block, so the block is never allocated and nothing leaks).
#[test]
fn every_record_allocation_failure_along_the_path_is_an_error_that_changes_and_leaks_nothing() {
    run_path_failing(|_, k| crate::core::record_ref::fault::fail_record_at(k));
    crate::core::record_ref::fault::fail_record_at(0);
}

/// Walks PATH once per k, with `arm(ledger, k)` making the k-th allocation of
/// some kind fail; every failure must be OutOfMemory and change nothing.
fn run_path_failing(arm: impl Fn(&Counting, usize)) {
    let mut k = 0;
    loop {
        let group = new_id();
        // One ledger for both allocators, so "the k-th allocation" counts across them.
        let c = Counting::new();
        let allocs = [
            AllocCore::new("calloc-like", group, true, Box::new(c.clone())),
            AllocCore::new("malloc-like", group, false, Box::new(c.clone())),
        ];
        arm(&c, k);
        let mut slots: Vec<RecordRef> = Vec::new();
        let mut failed = None;
        for (i, step) in PATH.iter().enumerate() {
            let before = allocs.each_ref().map(|a| a.counters.snapshot());
            let live_before = c.live();
            let contents: Vec<Vec<u8>> = slots.iter().map(|r| bytes(r).to_vec()).collect();
            let result = match *step {
                Step::Alloc(a, size, align) => allocs[a]
                    .allocate(Request { size, align }, None, None)
                    .map(|r| slots.push(r)),
                Step::Realloc(a, slot, new) => {
                    let old = slots[slot].clone();
                    allocs[a].realloc(&old, old.addr(), new, None).map(|r| {
                        let kept = old.size().min(new);
                        assert!(bytes(&r)[..kept].iter().all(|b| *b == slot as u8 + 1));
                        if allocs[a].zeroed {
                            assert!(bytes(&r)[kept..].iter().all(|b| *b == 0), "{step:?}");
                        }
                        assert_eq!(old.state(), State::Dead(Death::Reallocated));
                        slots[slot] = r;
                    })
                }
            };
            match result {
                Ok(()) => {
                    for (j, r) in slots.iter().enumerate() {
                        stamp(r, j as u8 + 1);
                    }
                }
                Err(e) => {
                    assert!(matches!(e, Error::OutOfMemory(_)), "step {i}: {e}");
                    assert_eq!(allocs.each_ref().map(|a| a.counters.snapshot()), before);
                    assert_eq!(c.live(), live_before, "step {i} leaked");
                    assert!(slots.iter().all(|r| r.state() == State::Live));
                    let after: Vec<Vec<u8>> = slots.iter().map(|r| bytes(r).to_vec()).collect();
                    assert_eq!(after, contents, "step {i} changed the bytes");
                    failed = Some(i);
                    break;
                }
            }
        }
        for r in &slots {
            allocs[0].free(r, r.addr(), None).unwrap(); // one owner group: either may free
        }
        drop(slots);
        assert_eq!(c.live(), 0, "k={k}");
        assert_eq!(c.bad_returns(), Vec::<String>::new());
        assert!(allocs.iter().all(|a| settled(a.counters.snapshot())));
        if k == 0 {
            assert_eq!(failed, None);
            assert_eq!(c.attempts(), PATH.len(), "each step allocates once");
        } else {
            assert_eq!(failed, Some(k - 1), "the k-th allocation is the k-th step");
        }
        k += 1;
        if k > PATH.len() {
            break;
        }
    }
}

#[test]
fn adopt_and_refused_requests_never_reach_the_backend() {
    let (c, a) = counting(new_id(), false);
    assert!(matches!(
        a.adopt(0, Request { size: 8, align: 8 }, None),
        Err(Error::NullPointer)
    ));
    let oversized = array(1 << 62, 4, 4, None);
    assert!(matches!(oversized, Err(Error::SizeOverflow)));
    let r = a
        .allocate(Request { size: 8, align: 8 }, None, None)
        .unwrap();
    r.pin().unwrap();
    assert!(matches!(
        a.realloc(&r, r.addr(), 64, None),
        Err(Error::Exported)
    ));
    assert!(matches!(
        a.realloc(&r, r.addr() + 1, 64, None),
        Err(Error::Ownership(Ownership::Interior))
    ));
    r.unpin(None);
    let (_, other) = counting(new_id(), false);
    assert!(matches!(
        other.realloc(&r, r.addr(), 64, None),
        Err(Error::Ownership(Ownership::OtherOwner))
    ));
    assert_eq!((c.attempts(), c.live(), r.state()), (1, 1, State::Live));
    a.free(&r, r.addr(), None).unwrap();
    assert!(matches!(
        a.realloc(&r, r.addr(), 64, None),
        Err(Error::DoubleFree(Death::Freed))
    ));
    assert_eq!((c.attempts(), c.live(), c.returns()), (1, 0, 1));
    assert!(settled(a.counters.snapshot()));
}

/// A tiny deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[derive(Default)]
struct Wins {
    free: AtomicUsize,
    detach: AtomicUsize,
    realloc: AtomicUsize,
}

#[test]
fn threads_racing_one_record_end_it_exactly_once() {
    const THREADS: usize = 8;
    let mut endings = [0usize; 4]; // free, detach, realloc, autofree/explicit at the end
    for round in 0..300u64 {
        let (c, a) = counting(new_id(), round % 2 == 0);
        let r = a
            .allocate(array(32, 1, 1, None).unwrap(), None, None)
            .unwrap();
        stamp(&r, 0x5A);
        let wins = Wins::default();
        let barrier = Barrier::new(THREADS);
        let fresh: Vec<RecordRef> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS as u64)
                .map(|t| {
                    let (r, a, wins, barrier) = (&r, &a, &wins, &barrier);
                    s.spawn(move || {
                        let mut rng = Rng(round * 1000 + t + 1);
                        let mut mine = Vec::new();
                        barrier.wait();
                        for _ in 0..8 {
                            // Every fifth round nothing ends the block in the race,
                            // so the end-of-round path (autofree, free) runs too.
                            let op = match rng.next() % 7 {
                                2 | 3 | 5 if round % 5 == 0 => 4,
                                op => op,
                            };
                            match op {
                                0 | 1 => {
                                    if r.pin().is_ok() {
                                        // Pinned: the bytes must still be there.
                                        // SAFETY: pinned: the block stays live while the pin
                                        // holds, and it is at least a byte long.
                                        let b = unsafe {
                                            std::ptr::with_exposed_provenance::<u8>(r.addr())
                                                .read_volatile()
                                        };
                                        assert_eq!(b, 0x5A);
                                        std::thread::yield_now();
                                        r.unpin(None);
                                    }
                                }
                                2 => match a.free(r, r.addr(), None) {
                                    Ok(()) => drop(wins.free.fetch_add(1, SeqCst)),
                                    Err(Error::DoubleFree(_) | Error::Ownership(_)) => {}
                                    Err(e) => panic!("free: {e}"),
                                },
                                3 => match r.detach(r.addr(), None) {
                                    Ok(_) => drop(wins.detach.fetch_add(1, SeqCst)),
                                    Err(
                                        Error::UseAfterFree(_)
                                        | Error::Ownership(_)
                                        | Error::Exported,
                                    ) => {}
                                    Err(e) => panic!("detach: {e}"),
                                },
                                4 => match r.set_autofree(None) {
                                    Ok(()) | Err(Error::UseAfterFree(_)) => {}
                                    Err(e) => panic!("autofree: {e}"),
                                },
                                5 => match a.realloc(r, r.addr(), 64, None) {
                                    Ok(n) => {
                                        wins.realloc.fetch_add(1, SeqCst);
                                        mine.push(n);
                                    }
                                    Err(
                                        Error::DoubleFree(_)
                                        | Error::Ownership(_)
                                        | Error::Exported,
                                    ) => {}
                                    Err(e) => panic!("realloc: {e}"),
                                },
                                _ => assert!(a.free(r, r.addr() + 1, None).is_err()),
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let ended = wins.free.load(SeqCst) + wins.detach.load(SeqCst) + wins.realloc.load(SeqCst);
        assert!(ended <= 1, "round {round}: the block ended {ended} times");
        for (i, w) in [&wins.free, &wins.detach, &wins.realloc].iter().enumerate() {
            endings[i] += w.load(SeqCst);
        }
        endings[3] += 1 - ended;
        assert_eq!(r.pins(), 0);
        let detached = r.state() == State::Detached;
        match r.state() {
            State::Live if !r.is_autofree() => a.free(&r, r.addr(), None).unwrap(),
            State::Detached => c.free_detached(r.addr()),
            _ => {}
        }
        drop(r); // an autofree block goes back here
        for n in &fresh {
            a.free(n, n.addr(), None).unwrap();
        }
        assert_eq!(c.bad_returns(), Vec::<String>::new(), "round {round}");
        assert_eq!(c.live(), 0, "round {round}");
        let allocated = 1 + fresh.len();
        assert_eq!(c.returns(), allocated - detached as usize, "round {round}");
        assert!(settled(a.counters.snapshot()), "round {round}");
    }
    // Every way of ending the block won some rounds: the race was exercised.
    assert!(endings.iter().all(|n| *n > 0), "{endings:?}");
}

#[test]
fn exports_racing_a_free_return_the_memory_once_after_the_last_unpin() {
    for round in 0..200 {
        let (c, a) = counting(new_id(), false);
        let r = a
            .allocate(array(64, 1, 1, None).unwrap(), None, None)
            .unwrap();
        stamp(&r, 7);
        let barrier = Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (r, a, barrier) = (&r, &a, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    if t == 0 {
                        a.free(r, r.addr(), None).unwrap();
                        return;
                    }
                    for _ in 0..50 {
                        match r.pin() {
                            Ok(()) => {
                                // SAFETY: pinned: the 64-byte block stays live while the pin
                                // holds.
                                let b = unsafe {
                                    std::ptr::with_exposed_provenance::<u8>(r.addr())
                                        .add(63)
                                        .read_volatile()
                                };
                                assert_eq!(b, 7);
                                r.unpin(None);
                            }
                            Err(e) => {
                                assert!(matches!(e, Error::UseAfterFree(Death::Freed)));
                                break;
                            }
                        }
                    }
                });
            }
        });
        assert_eq!((c.live(), c.returns()), (0, 1), "round {round}");
        assert_eq!(c.bad_returns(), Vec::<String>::new());
        assert!(settled(a.counters.snapshot()));
    }
}

/// The fuzz targets' programs (fuzz/), run from a deterministic generator so
/// `cargo test` covers them without cargo-fuzz.
fn programs(seed: u64, count: usize, run: fn(&[u8])) {
    let mut rng = Rng(seed);
    for i in 0..count {
        let len = (rng.next() % 512) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "program {i} of seed {seed}: {data:?}");
    }
}

#[test]
fn layout_programs() {
    programs(0x1a7, 20_000, super::drive::layout);
}

#[test]
fn record_programs() {
    programs(0x5eed, 2_000, super::drive::records);
}
