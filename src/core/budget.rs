//! Byte budgets (DESIGN §4): a cap on the live bytes of one allocator
//! (`a.limited(n)`), of one arena (`Arena(limit=n)`) or of the whole process
//! (`rsalloc.set_limit(n)`).
//!
//! A budget is the live-bytes counter it caps: an allocation under a limit
//! charges its bytes with one compare-and-swap before the memory is asked
//! for ([`super::stats::Counters::reserve`]), and gives them back if the
//! memory then cannot be had. Racing threads therefore never pass a limit
//! together, and a refused request changes no counter. Charges take the
//! synchronised path (a compare-and-swap), serialized caller or not: only
//! limited allocations come here.
//!
//! Without any limit the allocation path is the unlimited one; the only
//! cost is [`process_limited`], one relaxed load and a branch.

pub use super::error::{OverLimit, Scope};
use super::stats::Counters;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The limit of a counter that has none.
pub const UNLIMITED: u64 = u64::MAX;

/// `rsalloc.set_limit`: the cap on the process's live bytes, or UNLIMITED.
static PROCESS_LIMIT: AtomicU64 = AtomicU64::new(UNLIMITED);

/// Caps the live bytes of every allocation in the process (None lifts the
/// cap). Requests that start afterwards are checked; nothing live is freed.
pub fn set_process_limit(limit: Option<u64>) {
    PROCESS_LIMIT.store(limit.unwrap_or(UNLIMITED), Relaxed);
}

/// The process-wide limit, if one is set.
pub fn process_limit() -> Option<u64> {
    as_option(PROCESS_LIMIT.load(Relaxed))
}

/// Whether a process-wide limit is set: the one check every allocation makes.
#[inline(always)]
pub fn process_limited() -> bool {
    PROCESS_LIMIT.load(Relaxed) != UNLIMITED
}

/// The process-wide limit as a counter's limit (UNLIMITED when none).
#[inline]
pub fn process_max() -> u64 {
    PROCESS_LIMIT.load(Relaxed)
}

/// A counter's limit as the Python API shows it.
pub fn as_option(limit: u64) -> Option<u64> {
    (limit != UNLIMITED).then_some(limit)
}

/// One counter an allocation is charged to, with its limit and whether it
/// counted the block the allocation replaces (a realloc's old block).
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub counters: &'a Counters,
    pub limit: u64,
    pub scope: Scope,
    pub replaces: bool,
}

/// Charges `n` bytes to every target, in order, replacing `credit` bytes on
/// the targets that counted them; on a refusal gives back what was charged
/// and names the limit. `targets` yields the same targets each time.
pub fn reserve_all<'a, I: Iterator<Item = Target<'a>>>(
    targets: impl Fn() -> I,
    n: u64,
    credit: u64,
) -> Result<(), OverLimit> {
    for (done, t) in targets().enumerate() {
        let credit = if t.replaces { credit } else { 0 };
        if let Err(live) = t.counters.reserve(n, credit, t.limit, None) {
            for t in targets().take(done) {
                t.counters.unreserve(n, None);
            }
            return Err(OverLimit {
                scope: t.scope,
                limit: t.limit,
                live,
                request: n,
            });
        }
    }
    Ok(())
}

/// Gives back what [`reserve_all`] charged, for an allocation that failed.
pub fn unreserve_all<'a>(targets: impl Iterator<Item = Target<'a>>, n: u64) {
    for t in targets {
        t.counters.unreserve(n, None);
    }
}

/// The charged allocation exists: each target counts one more, and its
/// peak rises, less `credit` bytes of a replaced block still counted.
pub fn commit_all<'a>(targets: impl Iterator<Item = Target<'a>>, credit: u64) {
    for t in targets {
        t.counters.on_alloc_reserved(None);
        t.counters
            .raise_peak(if t.replaces { credit } else { 0 }, t.limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::{AllocCore, Libc, LIBC_GROUP};
    use crate::core::arena::WrapArena;
    use crate::core::error::Error;
    use crate::core::layout::Request;
    use crate::core::region::{Anchor, RegionCore};
    use std::sync::Arc;

    fn malloc() -> Arc<AllocCore> {
        AllocCore::new("malloc", LIBC_GROUP, false, Box::new(Libc))
    }

    fn req(size: usize) -> Request {
        Request { size, align: 8 }
    }

    fn over(e: Error) -> OverLimit {
        match e {
            Error::OverLimit(o) => o,
            e => panic!("not a limit: {e}"),
        }
    }

    #[test]
    fn a_limited_allocator_refuses_and_counts_nothing() {
        let m = malloc();
        let l = m.limited(100);
        let a = l.allocate(req(60), None, None).unwrap();
        let before = (l.counters.snapshot(), m.counters.snapshot());
        let e = over(l.allocate(req(41), None, None).unwrap_err());
        assert_eq!(
            (e.scope, e.limit, e.live, e.request),
            (Scope::Allocator, 100, 60, 41)
        );
        assert_eq!((l.counters.snapshot(), m.counters.snapshot()), before);
        // Counted in the allocator it goes through, too.
        assert_eq!(m.counters.snapshot().live_bytes, 60);
        // A realloc counts the difference: 60 -> 100 fits.
        let b = l.realloc(&a, a.addr(), 100, None).unwrap();
        assert!(l.realloc(&b, b.addr(), 101, None).is_err());
        let s = l.counters.snapshot();
        assert_eq!(
            (s.live_bytes, s.peak_bytes, s.total_allocs, s.total_frees),
            (100, 100, 2, 1)
        );
        l.free(&b, b.addr(), None).unwrap();
        assert_eq!(m.counters.snapshot().live_bytes, 0);
        assert_eq!(l.counters.snapshot().live_bytes, 0);
    }

    #[test]
    fn nested_limits_all_apply() {
        let outer = malloc().limited(50);
        let inner = outer.limited(1000);
        let a = inner.allocate(req(50), None, None).unwrap();
        let e = over(inner.allocate(req(1), None, None).unwrap_err());
        assert_eq!((e.limit, e.live), (50, 50));
        // The inner allocator's charge was given back, its peak untouched.
        let s = inner.counters.snapshot();
        assert_eq!((s.total_allocs, s.live_bytes, s.peak_bytes), (1, 50, 50));
        inner.free(&a, a.addr(), None).unwrap();
    }

    #[test]
    fn arenas_count_against_their_limit() {
        let a = WrapArena::with_limit(malloc(), 64);
        let r = a.allocate(req(40), None).unwrap();
        assert_eq!(
            over(a.allocate(req(25), None).unwrap_err()).scope,
            Scope::Arena
        );
        let r = a.realloc(&r, r.addr(), 64, None).unwrap();
        assert_eq!(a.tag.counters.snapshot().live_bytes, 64);
        assert!(a.realloc(&r, r.addr(), 65, None).is_err());
        a.release(false, None, |_, _| {});
        assert_eq!(a.backing.counters.snapshot().live_bytes, 0);

        let region = Anchor::new(RegionCore::with_limit(64)).unwrap();
        let (at, r) = region.allocate(req(40), None).unwrap();
        assert_eq!(over(region.allocate(req(25), None).unwrap_err()).live, 40);
        let (_, _r) = region.realloc(&r, at, 40, req(64), None).unwrap();
        let s = region.region().snapshot();
        assert_eq!((s.live_bytes, s.peak_bytes), (64, 64));
        assert_eq!(region.region().limit(), Some(64));
        region.region().release(false, None);
    }

    #[test]
    fn eight_threads_at_an_allocator_limit() {
        let l = malloc().limited(4096);
        let refused = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..8usize {
                let (l, refused) = (&l, &refused);
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..4000usize {
                        match l.allocate(req(1 + (t * 31 + i) % 300), None, None) {
                            Ok(r) => held.push(r),
                            Err(_) => {
                                refused.fetch_add(1, Relaxed);
                                if let Some(r) = held.pop() {
                                    l.free(&r, r.addr(), None).unwrap();
                                }
                            }
                        }
                    }
                    for r in held {
                        l.free(&r, r.addr(), None).unwrap();
                    }
                });
            }
        });
        let s = l.counters.snapshot();
        assert!(refused.load(Relaxed) > 0);
        assert!(s.peak_bytes <= 4096, "peak {}", s.peak_bytes);
        assert_eq!((s.live_count, s.live_bytes), (0, 0));
        assert_eq!(s.total_allocs + refused.load(Relaxed), 8 * 4000);
    }

    fn target(c: &Counters, limit: u64, scope: Scope) -> Target<'_> {
        Target {
            counters: c,
            limit,
            scope,
            replaces: true,
        }
    }

    #[test]
    fn a_refusal_gives_back_what_earlier_targets_took() {
        let (a, b) = (Counters::new(), Counters::new());
        let both = || {
            [
                target(&a, 100, Scope::Allocator),
                target(&b, 50, Scope::Process),
            ]
            .into_iter()
        };
        reserve_all(both, 40, 0).unwrap();
        commit_all(both(), 0);
        let e = reserve_all(both, 20, 0).unwrap_err();
        assert_eq!(
            e,
            OverLimit {
                scope: Scope::Process,
                limit: 50,
                live: 40,
                request: 20
            }
        );
        for c in [&a, &b] {
            let s = c.snapshot();
            assert_eq!((s.live_bytes, s.total_allocs, s.peak_bytes), (40, 1, 40));
        }
        // A replacement is checked net of the bytes it replaces, and its
        // peak raised net of them while they are still counted.
        reserve_all(both, 45, 40).unwrap();
        assert_eq!(b.snapshot().peak_bytes, 40);
        commit_all(both(), 40);
        assert_eq!(b.snapshot().peak_bytes, 45);
    }

    #[test]
    fn racing_threads_never_pass_the_limit() {
        let c = Counters::new();
        let ok = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (c, ok) = (&c, &ok);
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        let n = 1 + (t + i) % 97;
                        if c.reserve(n, 0, 1000, None).is_ok() {
                            c.on_alloc_reserved(None);
                            ok.fetch_add(1, Relaxed);
                            c.on_free(n as usize, None);
                        }
                    }
                });
            }
        });
        let s = c.snapshot();
        assert!(s.peak_bytes <= 1000, "peak {}", s.peak_bytes);
        assert_eq!(s.live_bytes, 0);
        assert_eq!(s.total_allocs, ok.load(Relaxed));
        assert_eq!(s.total_frees, s.total_allocs);
    }
}
