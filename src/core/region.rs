//! The bump region behind `Arena()`: zeroed memory carved out of large
//! chunks taken from libc, all returned together at release.
//!
//! Liveness is per generation, not per allocation: a block handed out is
//! named by the region's state word at that moment (its *token*), and it is
//! alive while the word is unchanged. A release bumps the generation (and a
//! final one also sets the closed bit), which kills every block of the
//! region with one store, and no allocation needs a record of its own.
//!
//! Buffer exports pin the whole region: a release while pins are out moves
//! the chunks aside, and the last unpin returns them to libc.

use super::alloc::new_id;
use super::error::{Death, Error, Result};
use super::layout::{round_up, Request, MALLOC_ALIGN};
use super::serial::{serialized, SerialGuard, SerialMutex};
use super::stats::{Snapshot, GLOBAL};
use super::sys;
use std::any::Any;
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, OnceLock};

/// Size of the first chunk; each new chunk doubles it up to [`MAX_CHUNK`].
pub const FIRST_CHUNK: usize = 4096;
pub const MAX_CHUNK: usize = 1 << 20;
/// Alignments up to this are carved out of the shared chunks; a larger one
/// gets a chunk of its own (aligned by `posix_memalign`).
pub const CHUNK_ALIGN_LIMIT: usize = 4096;

/// The closed bit of the state word; the generation is the rest.
const CLOSED: u64 = 1;
const GENERATION: u64 = 2;

/// A block of libc memory owned by the region; freed when dropped.
struct Chunk {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: a chunk is plain memory owned by exactly one region.
unsafe impl Send for Chunk {}

impl Chunk {
    fn new(size: usize, align: usize) -> Result<Chunk> {
        sys::alloc(size, align, true).map(|ptr| Chunk { ptr, size })
    }
    fn start(&self) -> usize {
        self.ptr.as_ptr() as usize
    }
    fn end(&self) -> usize {
        self.start() + self.size
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: the chunk came from sys::alloc and nothing refers to it any
        // more: its generation is dead and no export pins it.
        unsafe { sys::free(self.ptr) }
    }
}

#[derive(Default)]
struct Inner {
    /// Every chunk of the current generation.
    chunks: Vec<Chunk>,
    /// The chunk being bumped: its index, next free address and end.
    bump: Option<usize>,
    cur: usize,
    end: usize,
    next_size: usize,
    /// Allocations (and their bytes) live in this generation.
    count: u64,
    bytes: usize,
    /// The region's own counters: plain fields under the lock, which the
    /// allocation path holds anyway (atomics would cost twice).
    total_allocs: u64,
    total_frees: u64,
    peak_bytes: usize,
    /// Buffer exports of any generation still open.
    pins: usize,
    /// Chunks of released generations that exports still look into.
    parked: Vec<Chunk>,
    /// Starts of the blocks reallocated in this generation (dead early): a
    /// set, as every access to the region's blocks looks here once any exist.
    dead: HashSet<usize>,
}

/// What `repr(arena)` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub count: u64,
    pub bytes: usize,
    pub chunks: usize,
    pub reserved: usize,
    pub parked: usize,
    pub closed: bool,
}

pub struct RegionCore {
    pub id: u64,
    /// generation × 2 | CLOSED.
    state: AtomicU64,
    /// `inner.dead.len()`, readable without the lock on the access path.
    dead_count: AtomicUsize,
    inner: SerialMutex<Inner>,
    /// Live [`RegionRef`]s; together they hold one count of the `Arc`.
    views: AtomicUsize,
    /// The binding layer's object for this region (set once).
    pub handle: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Inner {
    #[inline]
    fn bump(&mut self, size: usize, align: usize) -> Result<usize> {
        // Every block advances by at least a byte, so addresses are unique.
        let size = size.max(1);
        if let Some(at) = round_up(self.cur, align) {
            if at.checked_add(size).is_some_and(|e| e <= self.end) {
                self.cur = at + size;
                return Ok(at);
            }
        }
        self.grow(size, align)
    }

    #[cold]
    fn grow(&mut self, size: usize, align: usize) -> Result<usize> {
        self.chunks
            .try_reserve(1)
            .map_err(|_| Error::OutOfMemory(size))?;
        if align > CHUNK_ALIGN_LIMIT || size > self.next_size / 2 {
            // A big block gets a chunk of its own: the bump chunk stays for
            // the small ones, and no chunk is mostly wasted padding.
            let c = Chunk::new(size, align)?;
            let at = c.start();
            self.chunks.push(c);
            return Ok(at);
        }
        let c = Chunk::new(self.next_size, align.max(MALLOC_ALIGN))?;
        let at = c.start();
        self.cur = at + size;
        self.end = c.end();
        self.bump = Some(self.chunks.len());
        self.chunks.push(c);
        self.next_size = (self.next_size * 2).min(MAX_CHUNK);
        Ok(at)
    }

    fn count_alloc(&mut self, size: usize) {
        self.count += 1;
        self.total_allocs += 1;
        self.bytes += size;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        GLOBAL.on_alloc(size);
    }

    fn count_free(&mut self, count: u64, bytes: usize) {
        self.count -= count;
        self.total_frees += count;
        self.bytes -= bytes;
        GLOBAL.on_free_many(count, bytes);
    }

    /// Parks chunks that exports still look into; they go back at the last unpin.
    fn park(&mut self, chunks: Vec<Chunk>) {
        if self.parked.try_reserve(chunks.len()).is_ok() {
            self.parked.extend(chunks);
        } else {
            // No room to remember them: leaking is the only safe choice
            // while a view still points into them.
            std::mem::forget(chunks);
        }
    }
}

impl RegionCore {
    pub fn new() -> Arc<Self> {
        Arc::new(RegionCore {
            id: new_id(),
            state: AtomicU64::new(0),
            dead_count: AtomicUsize::new(0),
            inner: SerialMutex::new(Inner {
                next_size: FIRST_CHUNK,
                ..Inner::default()
            }),
            views: AtomicUsize::new(0),
            handle: OnceLock::new(),
        })
    }

    fn lock(&self) -> SerialGuard<'_, Inner> {
        self.inner.lock()
    }

    pub fn is_closed(&self) -> bool {
        self.state.load(Acquire) & CLOSED != 0
    }

    /// A zeroed block of `req.size` bytes at `req.align`: (address, token).
    pub fn allocate(&self, req: Request) -> Result<(usize, u64)> {
        let mut g = self.lock();
        let state = self.state.load(Relaxed);
        if state & CLOSED != 0 {
            return Err(Error::ArenaClosed);
        }
        let at = g.bump(req.size, req.align)?;
        // Counted under the lock so that a racing release never sees (and
        // un-counts) an allocation before it was counted.
        g.count_alloc(req.size);
        Ok((at, state))
    }

    /// Ok when the block at `base` handed out with `token` may be accessed.
    #[inline]
    pub fn check(&self, token: u64, base: usize) -> Result<()> {
        if self.state.load(Acquire) != token {
            return Err(Error::UseAfterFree(Death::Released));
        }
        if self.dead_count.load(Acquire) != 0 && self.lock().dead.contains(&base) {
            return Err(Error::UseAfterFree(Death::Reallocated));
        }
        Ok(())
    }

    fn check_locked(&self, g: &Inner, token: u64, base: usize) -> Result<()> {
        if self.state.load(Relaxed) != token {
            return Err(Error::UseAfterFree(Death::Released));
        }
        if g.dead.contains(&base) {
            return Err(Error::UseAfterFree(Death::Reallocated));
        }
        Ok(())
    }

    /// A buffer export of a live block begins: the region's chunks stay
    /// until [`RegionCore::unpin`].
    pub fn pin(&self, token: u64, base: usize) -> Result<()> {
        let mut g = self.lock();
        self.check_locked(&g, token, base)?;
        g.pins += 1;
        Ok(())
    }

    /// A buffer export ends; the last one returns the parked chunks.
    pub fn unpin(&self) {
        let parked = {
            let mut g = self.lock();
            debug_assert!(g.pins > 0, "unpin without pin");
            g.pins = g.pins.saturating_sub(1);
            if g.pins == 0 {
                std::mem::take(&mut g.parked)
            } else {
                Vec::new()
            }
        };
        drop(parked);
    }

    /// A copy of the block at `base` (`old` bytes, token `token`) in a new
    /// block of `req`; the old block dies (`Reallocated`), its bytes stay in
    /// the region until release. On failure nothing changes.
    pub fn realloc(
        &self,
        token: u64,
        base: usize,
        old: usize,
        req: Request,
    ) -> Result<(usize, u64)> {
        let mut g = self.lock();
        self.check_locked(&g, token, base)?;
        g.dead
            .try_reserve(1)
            .map_err(|_| Error::OutOfMemory(req.size))?;
        let at = g.bump(req.size, req.align)?;
        // SAFETY: both blocks are live in this region and distinct (bump
        // memory is never handed out twice); each holds min(old, new) bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(base as *const u8, at as *mut u8, old.min(req.size))
        };
        g.dead.insert(base);
        self.dead_count.store(g.dead.len(), Release);
        g.count_alloc(req.size);
        g.count_free(1, old);
        Ok((at, token))
    }

    /// Kills every block of the current generation and returns the chunks
    /// (those pinned by exports when the last export ends). With `reuse`,
    /// the bump chunk is kept, re-zeroed, for the next generation, and the
    /// region stays open; otherwise it is closed for good. Returns false when
    /// the region was already closed (nothing to do).
    pub fn release(&self, reuse: bool) -> bool {
        let mut g = self.lock();
        let state = self.state.load(Relaxed);
        if state & CLOSED != 0 {
            return false;
        }
        let next = (state & !CLOSED).wrapping_add(GENERATION) | if reuse { 0 } else { CLOSED };
        self.state.store(next, Release);
        let (count, bytes) = (g.count, g.bytes);
        g.count_free(count, bytes);
        g.dead.clear();
        self.dead_count.store(0, Release);
        let mut chunks = std::mem::take(&mut g.chunks);
        let bump = g.bump.take();
        let used_to = std::mem::take(&mut g.cur);
        g.end = 0;
        if g.pins > 0 {
            // Exports look into these chunks: none can be reused or freed yet.
            g.park(chunks);
            return true;
        }
        if let Some(i) = bump.filter(|_| reuse) {
            let keep = chunks.swap_remove(i);
            if g.chunks.try_reserve(1).is_ok() {
                // SAFETY: [start, used_to) lies in the kept chunk, which no
                // live block or export refers to any more.
                unsafe {
                    std::ptr::write_bytes(keep.ptr.as_ptr(), 0, used_to - keep.start());
                }
                g.cur = keep.start();
                g.end = keep.end();
                g.bump = Some(0);
                g.chunks.push(keep);
            }
        }
        drop(g);
        drop(chunks);
        true
    }

    /// The region's counters (exact: taken under the lock).
    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        Snapshot {
            live_count: g.count,
            live_bytes: g.bytes as u64,
            peak_bytes: g.peak_bytes as u64,
            total_allocs: g.total_allocs,
            total_frees: g.total_frees,
        }
    }

    pub fn usage(&self) -> Usage {
        let g = self.lock();
        Usage {
            count: g.count,
            bytes: g.bytes,
            chunks: g.chunks.len(),
            reserved: g.chunks.iter().map(|c| c.size).sum(),
            parked: g.parked.len(),
            closed: self.is_closed(),
        }
    }
}

impl std::fmt::Debug for RegionCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionCore")
            .field("id", &self.id)
            .field("usage", &self.usage())
            .finish()
    }
}

/// A block of a region as a Pointer's owner: the region, the token the
/// block was handed out with, and where the block starts (views share it).
///
/// Every Pointer into a region holds one, so their references to the region
/// are counted apart from its `Arc`: all of them together hold a single
/// `Arc` count, taken when the first appears and given back when the last
/// goes, and the arena holds one ([`RegionRef::anchor`]) while it lives. In
/// serialized mode ([`crate::core::serial`]) a reference is then counted
/// with a plain load and store. Measured from Python, the locked
/// instructions of an `Arc` clone and drop, with the region's lock, cost
/// ~5–7 ns of an arena allocation's ~47 (removing the lock alone gained
/// nothing: the first locked instruction in a stretch of code is the
/// expensive one).
pub struct RegionRef {
    region: NonNull<RegionCore>,
    pub token: u64,
    pub base: usize,
}

// SAFETY: as Arc<RegionCore>: RegionCore is Send + Sync and the count of
// references is atomic unless every caller is serialized.
unsafe impl Send for RegionRef {}
unsafe impl Sync for RegionRef {}

impl RegionRef {
    pub fn new(region: &Arc<RegionCore>, token: u64, base: usize) -> Self {
        let r = RegionRef {
            region: NonNull::from(&**region),
            token,
            base,
        };
        r.add_view();
        r
    }

    /// The reference a region's owner (the arena) holds for as long as it
    /// lives, so that Pointers coming and going never take the count across
    /// zero (each crossing moves the `Arc` count). Never used for access.
    pub fn anchor(region: &Arc<RegionCore>) -> Self {
        Self::new(region, u64::MAX, 0)
    }

    #[inline]
    pub fn region(&self) -> &RegionCore {
        // SAFETY: the references together hold an Arc count (add_view).
        unsafe { self.region.as_ref() }
    }

    /// Whether this is a reference to `r`.
    pub fn is_in(&self, r: &Arc<RegionCore>) -> bool {
        std::ptr::eq(self.region.as_ptr(), Arc::as_ptr(r))
    }

    /// Dropping this reference only counts down: other references remain,
    /// or someone else (the arena) still holds the region. Exact when no
    /// other thread drops references meanwhile (serialized mode).
    pub fn drops_to_a_count(&self) -> bool {
        if self.region().views.load(Acquire) > 1 {
            return true;
        }
        // SAFETY: a borrowed view of the Arc the references hold, not dropped.
        let arc = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(self.region.as_ptr()) });
        Arc::strong_count(&arc) > 1
    }

    #[inline]
    fn add_view(&self) {
        let views = &self.region().views;
        let first = if serialized() {
            let n = views.load(Relaxed);
            views.store(n + 1, Relaxed);
            n == 0
        } else {
            views.fetch_add(1, Relaxed) == 0
        };
        if first {
            // SAFETY: the caller holds an Arc (new) or a reference (clone)
            // to this region, so it is alive; the new count is the group's.
            unsafe { Arc::increment_strong_count(self.region.as_ptr()) }
        }
    }

    #[inline]
    pub fn check_access(&self) -> Result<()> {
        self.region().check(self.token, self.base)
    }
    pub fn pin(&self) -> Result<()> {
        self.region().pin(self.token, self.base)
    }
    pub fn unpin(&self) {
        self.region().unpin()
    }
}

impl Clone for RegionRef {
    fn clone(&self) -> Self {
        let r = RegionRef {
            region: self.region,
            token: self.token,
            base: self.base,
        };
        r.add_view();
        r
    }
}

impl Drop for RegionRef {
    #[inline]
    fn drop(&mut self) {
        let views = &self.region().views;
        let last = if serialized() {
            let n = views.load(Relaxed) - 1;
            views.store(n, Relaxed);
            n == 0
        } else if views.fetch_sub(1, Release) == 1 {
            // As Arc: every use through the other references happens before.
            fence(Acquire);
            true
        } else {
            false
        };
        if last {
            // SAFETY: gives back the group's count, taken in add_view.
            unsafe { Arc::decrement_strong_count(self.region.as_ptr()) }
        }
    }
}

impl std::fmt::Debug for RegionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionRef")
            .field("region", &self.region().id)
            .field("token", &self.token)
            .field("base", &format_args!("{:#x}", self.base))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::layout::array;

    #[test]
    fn references_share_one_arc_count_and_keep_the_region_alive() {
        let arc = RegionCore::new();
        let weak = Arc::downgrade(&arc);
        let (at, token) = arc.allocate(req(8, 8)).unwrap();
        let a = RegionRef::new(&arc, token, at);
        assert_eq!(Arc::strong_count(&arc), 2);
        let b = a.clone();
        let c = RegionRef::new(&arc, token, at);
        assert_eq!(Arc::strong_count(&arc), 2, "one count for all references");
        assert!(a.is_in(&arc) && a.drops_to_a_count());
        drop((b, c));
        assert!(a.drops_to_a_count(), "the arena still holds the region");
        drop(arc);
        assert!(!a.drops_to_a_count(), "the last reference frees the region");
        assert!(a.check_access().is_ok());
        assert!(weak.upgrade().is_some());
        drop(a);
        assert!(weak.upgrade().is_none(), "freed with the last reference");
    }

    #[test]
    fn references_counted_from_many_threads_balance() {
        let arc = RegionCore::new();
        let weak = Arc::downgrade(&arc);
        let (at, token) = arc.allocate(req(8, 8)).unwrap();
        let first = RegionRef::new(&arc, token, at);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (arc, first) = (&arc, &first);
                s.spawn(move || {
                    for i in 0..10_000 {
                        let r = if i % 2 == 0 {
                            first.clone()
                        } else {
                            RegionRef::new(arc, token, at)
                        };
                        assert!(r.check_access().is_ok());
                    }
                });
            }
        });
        assert_eq!(Arc::strong_count(&arc), 2);
        drop(arc);
        drop(first);
        assert!(weak.upgrade().is_none());
    }

    fn req(size: usize, align: usize) -> Request {
        Request { size, align }
    }

    fn zeroed(at: usize, n: usize) -> bool {
        unsafe { std::slice::from_raw_parts(at as *const u8, n) }
            .iter()
            .all(|b| *b == 0)
    }

    #[test]
    fn alignment_is_honoured_and_memory_zeroed() {
        let r = RegionCore::new();
        for align in [1, 2, 8, 16, 64, 256, 4096, 8192, 1 << 16] {
            for size in [0, 1, 3, 100, 5000] {
                let (at, _) = r.allocate(req(size, align)).unwrap();
                assert_eq!(at % align, 0, "align {align} size {size}");
                assert!(zeroed(at, size));
                unsafe { std::ptr::write_bytes(at as *mut u8, 0xAB, size) };
            }
        }
        r.release(false);
    }

    #[test]
    fn chunks_grow_geometrically_and_big_requests_get_their_own() {
        let r = RegionCore::new();
        r.allocate(req(16, 8)).unwrap();
        assert_eq!((r.usage().chunks, r.usage().reserved), (1, FIRST_CHUNK));
        // Fill the first chunk: the next one is twice as big.
        for _ in 0..FIRST_CHUNK / 16 {
            r.allocate(req(16, 8)).unwrap();
        }
        assert_eq!(r.usage().chunks, 2);
        assert_eq!(r.usage().reserved, FIRST_CHUNK * 3);
        let big = 10 * MAX_CHUNK;
        let (at, _) = r.allocate(req(big, 8)).unwrap();
        assert!(zeroed(at, big));
        assert_eq!(r.usage().reserved, FIRST_CHUNK * 3 + big);
        // The bump chunk is still the second one.
        let (a, _) = r.allocate(req(16, 8)).unwrap();
        let (b, _) = r.allocate(req(16, 8)).unwrap();
        assert_eq!(b, a + 16);
        assert_eq!(r.usage().count, FIRST_CHUNK as u64 / 16 + 4);
        r.release(false);
    }

    #[test]
    fn blocks_never_overlap() {
        let r = RegionCore::new();
        let mut blocks = Vec::new();
        for i in 0..3000usize {
            let size = (i * 7919) % 700;
            let align = 1 << (i % 8);
            let (at, _) = r.allocate(req(size, align)).unwrap();
            blocks.push((at, at + size.max(1)));
        }
        blocks.sort();
        assert!(blocks.windows(2).all(|w| w[0].1 <= w[1].0));
        r.release(false);
    }

    #[test]
    fn release_kills_every_block_and_closes() {
        let r = RegionCore::new();
        let (a, t) = r.allocate(req(40, 8)).unwrap();
        r.allocate(req(2, 1)).unwrap();
        assert!(r.check(t, a).is_ok());
        assert_eq!(r.snapshot().live_bytes, 42);
        assert!(r.release(false));
        assert!(matches!(
            r.check(t, a),
            Err(Error::UseAfterFree(Death::Released))
        ));
        let s = r.snapshot();
        assert_eq!((s.live_count, s.live_bytes, s.total_frees), (0, 0, 2));
        assert!(matches!(r.allocate(req(1, 1)), Err(Error::ArenaClosed)));
        assert!(!r.release(false));
        assert!(r.pin(t, a).is_err());
        let u = r.usage();
        assert_eq!((u.chunks, u.reserved, u.closed), (0, 0, true));
    }

    #[test]
    fn reuse_keeps_one_zeroed_chunk() {
        let r = RegionCore::new();
        for _ in 0..1000 {
            let (at, _) = r.allocate(req(24, 8)).unwrap();
            unsafe { std::ptr::write_bytes(at as *mut u8, 0xFF, 24) };
        }
        r.allocate(req(3 * MAX_CHUNK, 8)).unwrap();
        let before = r.usage();
        assert!(before.chunks >= 4);
        let (a, t) = r.allocate(req(8, 8)).unwrap();
        assert!(r.release(true));
        assert!(r.check(t, a).is_err());
        let u = r.usage();
        assert_eq!((u.chunks, u.count, u.closed), (1, 0, false));
        assert!(u.reserved >= FIRST_CHUNK && u.reserved <= MAX_CHUNK);
        let (b, t2) = r.allocate(req(u.reserved / 2, 8)).unwrap();
        assert!(zeroed(b, u.reserved / 2));
        assert_eq!(r.usage().chunks, 1, "served from the kept chunk");
        assert_ne!(t, t2);
        assert!(r.check(t2, b).is_ok());
        r.release(false);
    }

    #[test]
    fn pins_defer_the_return_of_chunks() {
        let r = RegionCore::new();
        let (a, t) = r.allocate(req(64, 8)).unwrap();
        r.pin(t, a).unwrap();
        r.pin(t, a).unwrap();
        r.release(true);
        // The kept chunk may not be reused while an export looks into it.
        assert_eq!(r.usage().parked, 1);
        assert_eq!(r.usage().chunks, 0);
        unsafe { std::ptr::write_bytes(a as *mut u8, 1, 64) }; // still mapped
        let (b, t2) = r.allocate(req(64, 8)).unwrap();
        assert_ne!(a, b);
        r.unpin();
        assert_eq!(r.usage().parked, 1);
        r.unpin();
        assert_eq!(r.usage().parked, 0);
        assert!(r.check(t2, b).is_ok());
        r.release(false);
    }

    #[test]
    fn realloc_copies_and_kills_the_old_block() {
        let r = RegionCore::new();
        let (a, t) = r.allocate(req(4, 4)).unwrap();
        unsafe { std::ptr::write_bytes(a as *mut u8, 9, 4) };
        let (b, t2) = r.realloc(t, a, 4, req(64, 4)).unwrap();
        assert!(matches!(
            r.check(t, a),
            Err(Error::UseAfterFree(Death::Reallocated))
        ));
        assert!(r.check(t2, b).is_ok());
        let bytes = unsafe { std::slice::from_raw_parts(b as *const u8, 64) };
        assert_eq!(&bytes[..4], &[9; 4]);
        assert!(bytes[4..].iter().all(|x| *x == 0));
        let s = r.snapshot();
        assert_eq!((s.live_count, s.live_bytes), (1, 64));
        assert!(r.realloc(t, a, 4, req(8, 4)).is_err());
        assert!(matches!(
            r.realloc(t2, b, 64, req(1 << 62, 4)),
            Err(Error::OutOfMemory(_))
        ));
        assert_eq!(r.snapshot().live_bytes, 64);
        r.release(false);
        assert_eq!(r.snapshot().live_count, 0);
    }

    #[test]
    fn unsatisfiable_requests_are_errors_that_change_nothing() {
        let r = RegionCore::new();
        r.allocate(req(8, 8)).unwrap();
        let before = (r.usage(), r.snapshot());
        assert!(matches!(
            r.allocate(req(1 << 62, 8)),
            Err(Error::OutOfMemory(_))
        ));
        assert!(matches!(
            r.allocate(req(1 << 62, 1 << 20)),
            Err(Error::OutOfMemory(_))
        ));
        assert!(matches!(
            array(i64::MAX as i128, 1, 4096, None),
            Err(Error::SizeOverflow)
        ));
        assert_eq!((r.usage(), r.snapshot()), before);
        r.release(false);
    }

    #[test]
    fn threads_get_disjoint_blocks_and_exact_counts() {
        let r = RegionCore::new();
        let all = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    let r = &r;
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..5000usize {
                            let size = (i + t) % 100;
                            let (at, _) = r.allocate(req(size, 8)).unwrap();
                            unsafe { std::ptr::write_bytes(at as *mut u8, t as u8 + 1, size) };
                            mine.push((at, at + size.max(1), t as u8 + 1, size));
                        }
                        mine
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        let mut spans: Vec<_> = all.iter().map(|b| (b.0, b.1)).collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
        for (at, _, tag, size) in &all {
            let s = unsafe { std::slice::from_raw_parts(*at as *const u8, *size) };
            assert!(s.iter().all(|b| b == tag));
        }
        let expected: usize = (0..4)
            .map(|t| (0..5000).map(|i| (i + t) % 100).sum::<usize>())
            .sum();
        let s = r.snapshot();
        assert_eq!((s.live_count, s.live_bytes), (20_000, expected as u64));
        r.release(false);
        assert_eq!(r.snapshot().live_count, 0);
    }
}
