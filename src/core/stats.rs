//! Atomic allocation counters, one set per allocator and one for the process.
//!
//! `live_count` is derived (`allocs - frees`) so an allocation costs two
//! updates per set instead of three; `peak_bytes` is only touched when a new
//! peak is reached.
//!
//! Updates are locked read-modify-writes, or plain atomic loads and stores
//! for a caller that holds the serialization proof ([`Serialized`]): every
//! update takes the caller's `Option<Serialized<'_>>`, None being the
//! synchronised path.

use super::serial::Serialized;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[inline]
fn add(cell: &AtomicU64, n: u64, serialized: bool) -> u64 {
    if serialized {
        let now = cell.load(Relaxed).wrapping_add(n);
        cell.store(now, Relaxed);
        now
    } else {
        cell.fetch_add(n, Relaxed).wrapping_add(n)
    }
}

#[inline]
fn sub(cell: &AtomicU64, n: u64, serialized: bool) {
    if serialized {
        cell.store(cell.load(Relaxed).wrapping_sub(n), Relaxed);
    } else {
        cell.fetch_sub(n, Relaxed);
    }
}

#[derive(Debug, Default)]
/// Live and total blocks and bytes, and the peak, counted atomically (or, with the
/// serialization proof, without read-modify-writes).
pub struct Counters {
    allocs: AtomicU64,
    frees: AtomicU64,
    live_bytes: AtomicU64,
    peak_bytes: AtomicU64,
}

/// A consistent-enough copy of a [`Counters`]: exact whenever no other thread
/// is allocating at the moment it is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Blocks allocated and not yet freed.
    pub live_count: u64,
    /// Their bytes.
    pub live_bytes: u64,
    /// The most bytes live at once so far.
    pub peak_bytes: u64,
    /// Blocks ever allocated.
    pub total_allocs: u64,
    /// Blocks ever freed.
    pub total_frees: u64,
}

/// The process-wide counters: every allocation of every allocator.
pub static GLOBAL: Counters = Counters::new();

impl Counters {
    /// All zero.
    pub const fn new() -> Self {
        Counters {
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
        }
    }

    #[inline]
    /// Counts one block of `bytes` allocated.
    pub fn on_alloc(&self, bytes: usize, s: Option<Serialized<'_>>) {
        let serialized = s.is_some();
        add(&self.allocs, 1, serialized);
        let now = add(&self.live_bytes, bytes as u64, serialized);
        if now > self.peak_bytes.load(Relaxed) {
            if serialized {
                self.peak_bytes.store(now, Relaxed);
            } else {
                self.peak_bytes.fetch_max(now, Relaxed);
            }
        }
    }

    #[inline]
    /// Counts one block of `bytes` freed.
    pub fn on_free(&self, bytes: usize, s: Option<Serialized<'_>>) {
        self.on_free_many(1, bytes, s);
    }

    /// `count` allocations of `bytes` in total end at once (an arena release).
    #[inline]
    pub fn on_free_many(&self, count: u64, bytes: usize, s: Option<Serialized<'_>>) {
        let serialized = s.is_some();
        add(&self.frees, count, serialized);
        sub(&self.live_bytes, bytes as u64, serialized);
    }

    /// Charges `n` live bytes ahead of an allocation that replaces `credit`
    /// bytes counted here (a realloc's old block, freed once the new one
    /// exists), unless the live bytes less `credit` would then pass `max`:
    /// `Err(live bytes)`, and nothing changed. One compare-and-swap decides,
    /// so racing threads never pass `max` together. The peak is left to
    /// [`Counters::raise_peak`], once the allocation exists.
    #[inline]
    pub fn reserve(
        &self,
        n: u64,
        credit: u64,
        max: u64,
        s: Option<Serialized<'_>>,
    ) -> Result<(), u64> {
        let fits = |cur: u64| {
            let after = (cur as u128 + n as u128).saturating_sub(credit as u128);
            after <= max as u128
        };
        if s.is_some() {
            let cur = self.live_bytes.load(Relaxed);
            if !fits(cur) {
                return Err(cur);
            }
            self.live_bytes.store(cur.wrapping_add(n), Relaxed);
            return Ok(());
        }
        let mut cur = self.live_bytes.load(Relaxed);
        loop {
            if !fits(cur) {
                return Err(cur);
            }
            match self
                .live_bytes
                .compare_exchange_weak(cur, cur.wrapping_add(n), Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Raises the peak to the live bytes less `credit` (the replaced block
    /// about to be counted free), never above `max`: a racing realloc's
    /// charge may briefly count its old block and its new one at once.
    #[inline]
    pub fn raise_peak(&self, credit: u64, max: u64) {
        let settled = self
            .live_bytes
            .load(Relaxed)
            .saturating_sub(credit)
            .min(max);
        if settled > self.peak_bytes.load(Relaxed) {
            self.peak_bytes.fetch_max(settled, Relaxed);
        }
    }

    /// Gives back what [`Counters::reserve`] charged for an allocation that
    /// then failed.
    #[inline]
    pub fn unreserve(&self, n: u64, s: Option<Serialized<'_>>) {
        sub(&self.live_bytes, n, s.is_some());
    }

    /// The allocation whose bytes [`Counters::reserve`] charged exists.
    #[inline]
    pub fn on_alloc_reserved(&self, s: Option<Serialized<'_>>) {
        add(&self.allocs, 1, s.is_some());
    }

    /// A copy of the counts now (see [`Snapshot`]).
    pub fn snapshot(&self) -> Snapshot {
        // frees before allocs: a racing allocation can only make live_count
        // momentarily high, never negative.
        let frees = self.frees.load(Relaxed);
        let allocs = self.allocs.load(Relaxed);
        Snapshot {
            live_count: allocs.saturating_sub(frees),
            live_bytes: self.live_bytes.load(Relaxed),
            peak_bytes: self.peak_bytes.load(Relaxed),
            total_allocs: allocs,
            total_frees: frees,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_peak() {
        let c = Counters::new();
        c.on_alloc(10, None);
        c.on_alloc(20, None);
        c.on_free(10, None);
        c.on_alloc(5, None);
        let s = c.snapshot();
        assert_eq!(
            s,
            Snapshot {
                live_count: 2,
                live_bytes: 25,
                peak_bytes: 30,
                total_allocs: 3,
                total_frees: 1
            }
        );
        c.on_free_many(2, 25, None);
        assert_eq!(c.snapshot().live_count, 0);
        assert_eq!(c.snapshot().live_bytes, 0);
    }

    #[test]
    fn serialized_updates_count_the_same() {
        // SAFETY: the counters are this test's own; no other thread sees them.
        let token = unsafe { Serialized::new() };
        for s in [None, Some(token)] {
            let c = Counters::new();
            c.on_alloc(10, s);
            c.on_alloc(20, s);
            c.on_free_many(1, 10, s);
            c.on_alloc(5, s);
            c.on_free_many(2, 25, s);
            let n = c.snapshot();
            assert_eq!(
                (
                    n.live_count,
                    n.live_bytes,
                    n.peak_bytes,
                    n.total_allocs,
                    n.total_frees
                ),
                (0, 0, 30, 3, 3),
                "serialized: {}",
                s.is_some()
            );
        }
    }

    #[test]
    fn serialized_updates_are_exact_under_a_lock() {
        // What the GIL provides: writers on many threads, one at a time.
        let c = Counters::new();
        let lock = std::sync::Mutex::new(());
        std::thread::scope(|s| {
            for t in 0..4 {
                let (c, lock) = (&c, &lock);
                s.spawn(move || {
                    for i in 0..10_000 {
                        let _g = lock.lock().unwrap();
                        // SAFETY: every thread touching `c` holds `lock` meanwhile.
                        let s = Some(unsafe { Serialized::new() });
                        c.on_alloc(t + i % 7, s);
                        c.on_free_many(1, t + i % 7, s);
                    }
                });
            }
        });
        let s = c.snapshot();
        assert_eq!(
            (s.live_count, s.live_bytes, s.total_allocs, s.total_frees),
            (0, 0, 40_000, 40_000)
        );
    }

    #[test]
    fn exact_under_threads() {
        let c = Counters::new();
        std::thread::scope(|s| {
            for t in 0..8 {
                let c = &c;
                s.spawn(move || {
                    for i in 0..10_000 {
                        c.on_alloc(t + i % 7, None);
                        c.on_free(t + i % 7, None);
                    }
                });
            }
        });
        let s = c.snapshot();
        assert_eq!(
            (s.live_count, s.live_bytes, s.total_allocs, s.total_frees),
            (0, 0, 80_000, 80_000)
        );
        assert!(s.peak_bytes >= 13 && s.peak_bytes <= 8 * 13);
    }
}
