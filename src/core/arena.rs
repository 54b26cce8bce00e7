//! The wrapping arena behind `Arena(allocator)`: every block comes from the
//! backing allocator as a record owned by the arena (`IN_ARENA`), and the
//! arena frees the ones it still owns at release.
//!
//! The backing allocator is never called with the arena's lock held: a
//! Python-defined backend may run Python code, and a thread holding the lock
//! while waiting for the interpreter would deadlock with one waiting for it.

use super::alloc::{new_id, rec_ptr, AllocCore};
use super::error::{Error, Result};
use super::layout::Request;
use super::record::{ArenaTag, Record};
use crate::core::record_ref::RecordRef;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[derive(Default)]
struct Inner {
    /// The records handed out since the last release (some may have died
    /// or left since: release skips those).
    records: Vec<RecordRef>,
    closed: bool,
    /// Releases so far: an operation that ran user code can tell whether
    /// one happened meanwhile.
    releases: u64,
}

pub struct WrapArena {
    pub tag: Arc<ArenaTag>,
    pub backing: Arc<AllocCore>,
    inner: Mutex<Inner>,
}

impl WrapArena {
    /// An arena without a limit (the binding always passes one).
    #[cfg(test)]
    pub fn new(backing: Arc<AllocCore>) -> Self {
        Self::with_limit(backing, super::budget::UNLIMITED)
    }

    /// An arena whose live bytes never pass `limit` (bytes asked for).
    pub fn with_limit(backing: Arc<AllocCore>, limit: u64) -> Self {
        backing.arena_refs_add(1);
        WrapArena {
            tag: Arc::new(ArenaTag::with_limit(new_id(), limit, &backing)),
            backing,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn id(&self) -> u64 {
        self.tag.id
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Records a block the backing allocator just made for the arena; if the
    /// arena closed meanwhile or cannot remember it, the block is freed again.
    fn keep(&self, rec: RecordRef) -> Result<RecordRef> {
        let mut g = self.lock();
        let refused = if g.closed {
            Some(Error::ArenaClosed)
        } else if g.records.try_reserve(1).is_err() {
            Some(Error::OutOfMemory(rec.size()))
        } else {
            None
        };
        match refused {
            None => {
                self.backing.arena_refs_add(1);
                g.records.push(rec.clone());
                Ok(rec)
            }
            Some(e) => {
                drop(g);
                let _ = rec.free(self.backing.group, self.tag.id, rec.addr());
                Err(e)
            }
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::ArenaClosed);
        }
        Ok(())
    }

    pub fn allocate(&self, req: Request) -> Result<RecordRef> {
        self.check_open()?;
        let rec = self.backing.allocate(req, Some(&self.tag))?;
        self.keep(rec)
    }

    /// Takes ownership of a block the backing allocator's C counterpart made.
    pub fn adopt(&self, addr: usize, req: Request) -> Result<RecordRef> {
        self.check_open()?;
        let rec = self.backing.adopt_in(addr, req, Some(&self.tag), "")?;
        self.keep(rec)
    }

    /// `arena.free(p)`: a no-op for a live block of this arena (viewed at
    /// its start); every mistake a real free would report is reported.
    pub fn free(&self, rec: &Record, addr: usize) -> Result<()> {
        rec.check_freeable(self.backing.group, self.tag.id, addr)
    }

    /// A new block of `new` bytes holding the old bytes; the old block dies
    /// (`Reallocated`) and returns to the backing allocator. On failure
    /// nothing changes.
    pub fn realloc(&self, rec: &Record, addr: usize, new: usize) -> Result<RecordRef> {
        rec.begin_realloc(self.backing.group, self.tag.id, addr)?;
        // Damaged guard bytes are reported before anything moves.
        if let Err(e) = rec.backend().verify(rec_ptr(rec), rec.size(), rec.align()) {
            rec.undo_realloc();
            return Err(e);
        }
        let releases = self.lock().releases;
        let req = Request {
            size: new,
            align: rec.align(),
        };
        // Limits count the difference: the old block is counted free below.
        let made = self.check_open().and_then(|()| {
            let fresh = self
                .backing
                .allocate_replacing(req, Some(&self.tag), "", rec.size())?;
            self.keep(fresh)
        });
        let fresh = match made {
            Ok(f) => f,
            Err(e) => {
                rec.undo_realloc();
                if self.lock().releases != releases {
                    // The backing allocator (user code) released the arena
                    // meanwhile, which skipped the block while it was being
                    // moved: it goes now, as the release would have done.
                    let _ = rec.free(self.backing.group, self.tag.id, rec.addr());
                }
                return Err(e);
            }
        };
        let old = rec_ptr(rec);
        // SAFETY: begin_realloc made us the only user of the old block (live,
        // not exported); the new one is distinct; each holds min(old, new).
        unsafe {
            std::ptr::copy_nonoverlapping(
                old.as_ptr(),
                std::ptr::with_exposed_provenance_mut::<u8>(fresh.addr()),
                rec.size().min(new),
            );
        }
        rec.finish_realloc();
        rec.return_memory()?;
        Ok(fresh)
    }

    /// The block leaves the arena and belongs to the backing allocator
    /// (still counted there, and recorded as one of its blocks while
    /// tracking is on: it must now be freed), surviving the release.
    pub fn detach(&self, rec: &RecordRef, addr: usize, ty: &'static str) -> Result<()> {
        self.free(rec, addr)?;
        rec.leave_arena(self.tag.id)?;
        rec.allocator().track_adopted(rec, ty);
        let mut g = self.lock();
        if let Some(i) = g.records.iter().rposition(|r| RecordRef::ptr_eq(r, rec)) {
            drop(g.records.swap_remove(i));
            self.backing.arena_refs_sub(1);
        }
        Ok(())
    }

    /// Frees every block the arena still owns. Without `reuse` the arena is
    /// closed for good. Returns false when it was already closed. A block
    /// whose free reports an error (a diagnostic block's guard bytes were
    /// overwritten) is still freed, and the error goes to `on_error` once
    /// every block is released.
    pub fn release(&self, reuse: bool, mut on_error: impl FnMut(&RecordRef, Error)) -> bool {
        let records = {
            let mut g = self.lock();
            if g.closed {
                return false;
            }
            g.closed = !reuse;
            g.releases += 1;
            std::mem::take(&mut g.records)
        };
        let mut failed = Vec::new();
        for rec in &records {
            if rec.arena() == Some(self.tag.id) {
                // Dead blocks (reallocated) refuse with DoubleFree: nothing left to free.
                if let Err(e @ Error::HeapCorruption(_)) =
                    rec.free(self.backing.group, self.tag.id, rec.addr())
                {
                    // Reported after the loop; with no room to remember
                    // it, the first error is reported at once.
                    if failed.try_reserve(1).is_ok() {
                        failed.push((rec, e));
                    } else {
                        on_error(rec, e);
                    }
                }
            }
        }
        for (rec, e) in failed {
            on_error(rec, e);
        }
        let n = records.len();
        drop(records);
        self.backing.arena_refs_sub(n);
        true
    }
}

impl Drop for WrapArena {
    /// An arena dropped unreleased frees its blocks (its binding layer
    /// releases it first, with its callbacks, and reports what it finds).
    fn drop(&mut self) {
        self.release(false, |_, _| {});
        // The release dropped the records (a closed arena keeps none): the
        // arena's own reference is what is left.
        self.backing.arena_refs_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::{Libc, LIBC_GROUP};
    use crate::core::error::{Death, Ownership};
    use crate::core::record::State;

    fn malloc() -> Arc<AllocCore> {
        AllocCore::new("malloc", LIBC_GROUP, false, Box::new(Libc))
    }

    fn req(size: usize) -> Request {
        Request { size, align: 8 }
    }

    #[test]
    fn blocks_are_counted_in_backing_and_arena_until_release() {
        let m = malloc();
        let a = WrapArena::new(m.clone());
        let r1 = a.allocate(req(10)).unwrap();
        let r2 = a.allocate(req(20)).unwrap();
        assert_eq!(m.counters.snapshot().live_bytes, 30);
        assert_eq!(a.tag.counters.snapshot().live_count, 2);
        // The backing allocator may not free an arena block.
        assert!(matches!(
            m.free(&r1, r1.addr()),
            Err(Error::Ownership(Ownership::OtherOwner))
        ));
        a.free(&r1, r1.addr()).unwrap(); // no-op
        assert!(matches!(
            a.free(&r1, r1.addr() + 1),
            Err(Error::Ownership(Ownership::Interior))
        ));
        assert!(a.release(false, |_, _| {}));
        for r in [&r1, &r2] {
            assert_eq!(r.state(), State::Dead(Death::Released));
        }
        assert!(matches!(
            a.free(&r1, r1.addr()),
            Err(Error::DoubleFree(Death::Released))
        ));
        let s = m.counters.snapshot();
        assert_eq!((s.live_count, s.live_bytes, s.total_frees), (0, 0, 2));
        assert_eq!(a.tag.counters.snapshot().live_count, 0);
        assert!(matches!(a.allocate(req(1)), Err(Error::ArenaClosed)));
        assert!(!a.release(false, |_, _| {}));
    }

    #[test]
    fn arena_refs_count_what_arenas_hold_of_the_core() {
        let m = malloc();
        let strong = || Arc::strong_count(&m) - 1; // less the test's own
        let a = WrapArena::new(m.clone());
        let r = a.allocate(req(16)).unwrap();
        let s = a.allocate(req(16)).unwrap();
        drop(s);
        assert_eq!(m.held_by_arenas(), 3);
        assert_eq!(strong(), 3);
        a.detach(&r, r.addr(), "").unwrap(); // the allocator's block now
        assert_eq!(m.held_by_arenas(), 2);
        assert_eq!(strong(), 3); // r's record holds the core outside the arena
        a.release(true, |_, _| {});
        assert_eq!(m.held_by_arenas(), 1);
        m.free(&r, r.addr()).unwrap();
        drop(r);
        assert_eq!(strong(), 1);
        drop(a);
        assert_eq!((m.held_by_arenas(), strong()), (0, 0));
    }

    #[test]
    fn detach_hands_the_block_to_the_backing_allocator() {
        let m = malloc();
        let a = WrapArena::new(m.clone());
        let r = a.allocate(req(16)).unwrap();
        a.detach(&r, r.addr(), "").unwrap();
        assert_eq!(r.arena(), None);
        assert_eq!(a.tag.counters.snapshot().live_count, 0);
        a.release(true, |_, _| {});
        assert_eq!(r.state(), State::Live);
        assert_eq!(m.counters.snapshot().live_count, 1);
        m.free(&r, r.addr()).unwrap();
        assert_eq!(m.counters.snapshot().live_count, 0);
    }

    #[test]
    fn realloc_moves_within_the_arena() {
        let m = malloc();
        let a = WrapArena::new(m.clone());
        let r = a.allocate(req(4)).unwrap();
        // SAFETY: `r` is a live 4-byte block of the arena.
        unsafe {
            std::ptr::write_bytes(std::ptr::with_exposed_provenance_mut::<u8>(r.addr()), 5, 4)
        };
        let n = a.realloc(&r, r.addr(), 32).unwrap();
        assert_eq!(r.state(), State::Dead(Death::Reallocated));
        assert_eq!(n.arena(), Some(a.id()));
        // SAFETY: `n` is the live 32-byte block realloc returned, its first 4 bytes copied.
        let head = unsafe { *std::ptr::with_exposed_provenance::<[u8; 4]>(n.addr()) };
        assert_eq!(head, [5; 4]);
        let s = m.counters.snapshot();
        assert_eq!((s.live_count, s.live_bytes), (1, 32));
        assert_eq!(a.tag.counters.snapshot().live_bytes, 32);
        assert!(matches!(
            a.realloc(&n, n.addr(), 1 << 62),
            Err(Error::OutOfMemory(_))
        ));
        assert_eq!(n.state(), State::Live);
        a.release(false, |_, _| {});
        assert_eq!(m.counters.snapshot().live_count, 0);
        assert_eq!(n.state(), State::Dead(Death::Released));
    }

    #[test]
    fn threads_share_an_arena_with_exact_counts() {
        let m = malloc();
        let a = WrapArena::new(m.clone());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..2000 {
                        a.allocate(req(i % 50)).unwrap();
                    }
                });
            }
        });
        let expected: usize = 4 * (0..2000).map(|i| i % 50).sum::<usize>();
        let s = m.counters.snapshot();
        assert_eq!((s.live_count, s.live_bytes), (8000, expected as u64));
        a.release(false, |_, _| {});
        assert_eq!(m.counters.snapshot().live_count, 0);
    }

    #[test]
    fn a_dropped_arena_frees_its_blocks() {
        let m = malloc();
        let a = WrapArena::new(m.clone());
        let r = a.allocate(req(10)).unwrap();
        drop(a);
        assert_eq!(r.state(), State::Dead(Death::Released));
        assert_eq!(m.counters.snapshot().live_count, 0);
    }

    #[test]
    fn release_reports_damaged_guard_bytes_after_freeing_everything() {
        use crate::core::guard::Guarded;
        let d = AllocCore::new("diag", LIBC_GROUP, false, Box::new(Guarded));
        let a = WrapArena::new(d.clone());
        let bad = a.allocate(req(8)).unwrap();
        let good = a.allocate(req(8)).unwrap();
        // SAFETY: the diagnostic backend places guard bytes right after the 8-byte block:
        // overwriting one is the corruption under test, inside the guarded allocation.
        unsafe {
            std::ptr::with_exposed_provenance_mut::<u8>(bad.addr())
                .add(8)
                .write(0)
        };
        let mut seen = Vec::new();
        assert!(a.release(false, |rec, e| {
            // Everything is released by the time errors are reported.
            assert_eq!(d.counters.snapshot().live_count, 0);
            seen.push((
                rec.addr(),
                matches!(e, Error::HeapCorruption(c) if c.after == 1),
            ));
        }));
        assert_eq!(seen, [(bad.addr(), true)]);
        assert_eq!(good.state(), State::Dead(Death::Released));
    }
}
