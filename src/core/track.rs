//! Leak tracking (DESIGN §7): a process-wide switch and a registry of the
//! live tracked allocations.
//!
//! The switch is one `AtomicBool` read with a single relaxed load on the
//! allocation path; while it is off (and the allocator is not a diagnostic
//! one) nothing else happens. A tracked block gets an [`Entry`] in the
//! registry, keyed by a sequence number, and a [`Tracked`] in its record
//! (for error messages). The entry outlives the block's Pointer on purpose:
//! a block whose last view is gone without a free is exactly a leak. It
//! leaves the registry when the block is freed, released, reallocated,
//! detached or handed to the garbage collector (`autofree`).
//!
//! The Python traceback is opaque here ([`Site`]): the binding layer installs
//! a [`CaptureFn`] that fills it, and resolves it when a report is made.

use super::alloc::AllocCore;
use super::error::{Error, Result};
use super::record::Record;
pub use super::record::{Site, Tracked};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Frames captured per allocation unless `enable` says otherwise.
pub const DEFAULT_FRAMES: usize = 8;
/// Frames are capped so a capture stays bounded on deep stacks.
pub const MAX_FRAMES: usize = 128;

static ENABLED: AtomicBool = AtomicBool::new(false);
static FRAMES: AtomicUsize = AtomicUsize::new(DEFAULT_FRAMES);
static SEQ: AtomicU64 = AtomicU64::new(1);
/// Tracked allocations that could not be registered (bookkeeping memory ran out).
static LOST: AtomicU64 = AtomicU64::new(0);

/// What the binding layer captures at an allocation or a free.
#[derive(Default)]
pub struct Capture {
    pub site: Option<Site>,
    pub thread_name: Option<Arc<str>>,
}

/// Captures up to `frames` frames of the caller's stack.
pub type CaptureFn = fn(frames: usize) -> Capture;
static CAPTURE: OnceLock<CaptureFn> = OnceLock::new();

/// Installs the site capture (once; the binding layer does it at import).
pub fn set_capture(f: CaptureFn) {
    let _ = CAPTURE.set(f);
}

fn capture(frames: usize) -> Capture {
    match CAPTURE.get() {
        Some(f) if frames > 0 => f(frames),
        _ => Capture::default(),
    }
}

#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Turns tracking on, capturing `frames` frames per allocation (capped at
/// [`MAX_FRAMES`]; 0 records everything but the traceback).
pub fn enable(frames: usize) {
    FRAMES.store(frames.min(MAX_FRAMES), Relaxed);
    anchor();
    ENABLED.store(true, Relaxed);
}

/// Turns tracking off. Entries already recorded stay until their blocks go.
pub fn disable() {
    ENABLED.store(false, Relaxed);
}

pub fn frames() -> usize {
    FRAMES.load(Relaxed)
}

/// The next sequence number: entries made from now on have one at least this big.
pub fn next_seq() -> u64 {
    SEQ.load(Relaxed)
}

pub fn lost() -> u64 {
    LOST.load(Relaxed)
}

/// One clock read per allocation (monotonic); wall time is derived from an
/// anchor taken once, so reports can still show a date.
fn anchor() -> &'static (Instant, SystemTime) {
    static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        // Wall clock first: the monotonic anchor is then the later of the
        // two, so a derived wall time lags the true one by the gap between
        // the reads and is never in the future (read the other way round,
        // it led by that gap, and a test comparing with now() was flaky).
        let wall = SystemTime::now();
        (Instant::now(), wall)
    })
}

/// The calling thread's identity: `pthread_self`, which is what Python's
/// `threading.get_ident()` returns.
fn thread_id() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

/// A live tracked allocation.
#[derive(Clone)]
pub struct Entry {
    pub seq: u64,
    pub addr: usize,
    pub size: usize,
    pub ty: &'static str,
    pub allocator: Arc<AllocCore>,
    /// Nanoseconds after the process's tracking anchor (see [`Entry::wall_time`]).
    pub nanos: u64,
    pub thread_id: u64,
    pub thread_name: Option<Arc<str>>,
    pub site: Option<Site>,
}

impl Entry {
    /// When the allocation was made, as wall-clock time.
    pub fn wall_time(&self) -> SystemTime {
        wall_time(self.nanos)
    }
}

fn wall_time(nanos: u64) -> SystemTime {
    anchor().1 + Duration::from_nanos(nanos)
}

/// The values whose sequence number is at least `seq`, oldest first; a
/// list that cannot get its memory is an error, not an abort (the exit
/// report lists every leak when memory may be short).
fn oldest_first<'a, E: Clone + 'a>(
    values: impl ExactSizeIterator<Item = &'a E>,
    seq: u64,
    key: impl Fn(&E) -> u64,
) -> Result<Vec<E>> {
    let mut v = Vec::new();
    v.try_reserve_exact(values.len())
        .map_err(|_| Error::OutOfMemory(values.len() * std::mem::size_of::<E>()))?;
    v.extend(values.filter(|e| key(e) >= seq).cloned());
    v.sort_unstable_by_key(key);
    Ok(v)
}

/// Sequence numbers are unique and dense: a multiplicative hash is enough,
/// and much cheaper than SipHash on the allocation path.
#[derive(Default)]
pub struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Registry = HashMap<u64, Entry, BuildHasherDefault<SeqHasher>>;

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        // An entry is inserted or removed in one call: a panic elsewhere
        // cannot leave the map half-updated.
        .unwrap_or_else(|e| e.into_inner())
}

/// Records a block `alloc` just handed out. Called by the allocator when it
/// tracks (switch on, or a diagnostic allocator); never for arena memory.
pub(crate) fn register(rec: &Record, ty: &'static str) {
    let cap = capture(frames());
    let seq = SEQ.fetch_add(1, Relaxed);
    let nanos = anchor().0.elapsed().as_nanos() as u64;
    let entry = Entry {
        seq,
        addr: rec.addr(),
        size: rec.size(),
        ty,
        allocator: rec.allocator_arc(),
        nanos,
        thread_id: thread_id(),
        thread_name: cap.thread_name,
        site: cap.site.clone(),
    };
    let registered = {
        let mut map = registry();
        if map.try_reserve(1).is_ok() {
            map.insert(seq, entry);
            true
        } else {
            false
        }
    };
    if !registered {
        LOST.fetch_add(1, Relaxed);
    }
    rec.set_tracked(Tracked {
        seq: if registered { seq } else { 0 },
        ty,
        site: cap.site,
        freed: OnceLock::new(),
    });
}

/// The block left its owner's hands (freed, reallocated, detached,
/// autofree): its entry goes. With `free_site`, and tracking on or the
/// block tracked, the place of the free is kept for later error messages.
#[inline]
pub(crate) fn on_end(rec: &Record, free_site: bool) {
    let t = rec.tracked();
    if t.is_none() && !(free_site && enabled()) {
        return;
    }
    end_slow(rec, t, free_site);
}

#[cold]
fn end_slow(rec: &Record, t: Option<&Tracked>, free_site: bool) {
    if let Some(t) = t {
        if t.seq != 0 {
            // Dropped after the lock is released: the site's last reference
            // may run code (a weakref callback on a code object) that allocates.
            let (entry, room) = {
                let mut map = registry();
                let entry = map.remove(&t.seq);
                (entry, give_back_room(&mut map))
            };
            drop((entry, room));
        }
    }
    if !free_site {
        return;
    }
    // One frame: error messages name the line that freed the block.
    let Some(site) = capture(1).site else {
        return;
    };
    match t {
        Some(t) => {
            let _ = t.freed.set(site);
        }
        None => {
            let freed = OnceLock::new();
            let _ = freed.set(site);
            rec.set_tracked(Tracked {
                seq: 0,
                ty: "",
                site: None,
                freed,
            });
        }
    }
}

/// The registry's table when it has become mostly empty, replaced by a
/// smaller one (or none), for the caller to drop after the lock. A hash
/// map never shrinks by itself: after a program held many tracked blocks
/// and freed them, the table it grew to would stay, and under an
/// address-space limit that memory is what the program needs to allocate
/// again (tests/test_oom.py). Shrinking waits until the table is 8 times
/// too large, so its cost stays amortized over the frees; the smaller
/// table is reserved fallibly (no room: the old one stays).
fn give_back_room(map: &mut Registry) -> Option<Registry> {
    const MIN_CAPACITY: usize = 1024;
    if map.capacity() < MIN_CAPACITY {
        return None;
    }
    if map.is_empty() {
        return Some(std::mem::take(map));
    }
    if map.len() > map.capacity() / 8 {
        return None;
    }
    let mut smaller = Registry::default();
    smaller.try_reserve(map.len() * 2).ok()?;
    smaller.extend(map.drain());
    Some(std::mem::replace(map, smaller))
}

/// The element type name a tracked record was allocated as ("" when unknown).
pub(crate) fn type_of(rec: &Record) -> &'static str {
    rec.tracked().map_or("", |t| t.ty)
}

/// Every live tracked allocation, oldest first.
#[cfg(test)]
pub fn live() -> Result<Vec<Entry>> {
    live_since(0)
}

/// The live tracked allocations whose sequence number is at least `seq`, oldest first.
pub fn live_since(seq: u64) -> Result<Vec<Entry>> {
    oldest_first(registry().values(), seq, |e| e.seq)
}

/// An arena made while tracking was on and not released yet: `leak_check`
/// and the exit report show it as one leak naming where it was made.
#[derive(Clone)]
pub struct ArenaEntry {
    pub seq: u64,
    pub name: Arc<str>,
    /// The bytes its blocks hold now.
    pub live_bytes: Arc<dyn Fn() -> u64 + Send + Sync>,
    pub nanos: u64,
    pub thread_id: u64,
    pub thread_name: Option<Arc<str>>,
    pub site: Option<Site>,
}

impl ArenaEntry {
    pub fn wall_time(&self) -> SystemTime {
        wall_time(self.nanos)
    }
}

fn arenas() -> MutexGuard<'static, HashMap<u64, ArenaEntry, BuildHasherDefault<SeqHasher>>> {
    static ARENAS: OnceLock<Mutex<HashMap<u64, ArenaEntry, BuildHasherDefault<SeqHasher>>>> =
        OnceLock::new();
    ARENAS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Registers a new arena (tracking is on) with its creation site; returns
/// its key for [`end_arena`], or 0 when bookkeeping memory ran out.
pub fn register_arena(
    name: Arc<str>,
    live_bytes: Arc<dyn Fn() -> u64 + Send + Sync>,
) -> (u64, Option<Site>) {
    let cap = capture(frames());
    let seq = SEQ.fetch_add(1, Relaxed);
    let entry = ArenaEntry {
        seq,
        name,
        live_bytes,
        nanos: anchor().0.elapsed().as_nanos() as u64,
        thread_id: thread_id(),
        thread_name: cap.thread_name,
        site: cap.site.clone(),
    };
    let mut map = arenas();
    if map.try_reserve(1).is_err() {
        LOST.fetch_add(1, Relaxed);
        return (0, cap.site);
    }
    map.insert(seq, entry);
    (seq, cap.site)
}

/// The arena registered as `seq` was released.
pub fn end_arena(seq: u64) {
    if seq != 0 {
        let entry = arenas().remove(&seq);
        drop(entry); // outside the lock: the site may run code as it goes
    }
}

/// The unreleased registered arenas with a sequence number >= `seq`, oldest first.
pub fn live_arenas_since(seq: u64) -> Result<Vec<ArenaEntry>> {
    oldest_first(arenas().values(), seq, |e| e.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::{AllocCore, Libc, LIBC_GROUP};
    use crate::core::layout::array;

    /// An always-tracking allocator, so these tests do not depend on the
    /// process-wide switch that other tests may run beside.
    fn tracked() -> Arc<AllocCore> {
        AllocCore::new_tracked("diag-test", LIBC_GROUP, false, Box::new(Libc), true)
    }

    fn mine(a: &Arc<AllocCore>) -> Vec<Entry> {
        live()
            .unwrap()
            .into_iter()
            .filter(|e| Arc::ptr_eq(&e.allocator, a))
            .collect()
    }

    #[test]
    fn a_mostly_empty_registry_gives_its_table_back() {
        let a = tracked();
        let entry = |seq| Entry {
            seq,
            addr: 0,
            size: 0,
            ty: "",
            allocator: a.clone(),
            nanos: 0,
            thread_id: 0,
            thread_name: None,
            site: None,
        };
        let mut map = Registry::default();
        map.extend((0..10_000).map(|s| (s, entry(s))));
        let grown = map.capacity();
        assert!(give_back_room(&mut map).is_none()); // full: nothing to give
        for s in 0..9_000 {
            map.remove(&s);
        }
        let old = give_back_room(&mut map).expect("8 times too large");
        assert_eq!(old.capacity(), grown);
        assert_eq!(map.len(), 1_000);
        assert!(map.capacity() <= grown / 4);
        assert!((9_000..10_000).all(|s| map[&s].seq == s)); // every entry kept
        map.clear();
        assert!(give_back_room(&mut map).is_some());
        assert_eq!(map.capacity(), 0);
    }

    #[test]
    fn entries_follow_the_block_lifetime() {
        let a = tracked();
        let r = a
            .allocate_typed(array(4, 4, 4, None).unwrap(), None, "Int32", None)
            .unwrap();
        let e = mine(&a);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].addr, e[0].size, e[0].ty), (r.addr(), 16, "Int32"));
        assert_eq!(e[0].thread_id, thread_id());
        assert!(e[0].wall_time() <= SystemTime::now());
        a.free(&r, r.addr(), None).unwrap();
        assert!(mine(&a).is_empty());
        // a refused free changes nothing
        assert!(a.free(&r, r.addr(), None).is_err());
        assert!(mine(&a).is_empty());
    }

    #[test]
    fn a_dropped_record_without_free_is_a_leak() {
        let a = tracked();
        let r = a
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        let addr = r.addr();
        drop(r);
        let e = mine(&a);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].addr, addr);
        // clean up the real leak
        // SAFETY: the leak under test: a live libc block nothing else frees.
        unsafe { libc::free(std::ptr::with_exposed_provenance_mut::<libc::c_void>(addr)) };
        let seq = e[0].seq;
        registry().remove(&seq);
    }

    #[test]
    fn realloc_detach_and_autofree_leave_the_registry() {
        let a = tracked();
        let r = a
            .allocate_typed(array(4, 1, 1, None).unwrap(), None, "Uint8", None)
            .unwrap();
        let n = a.realloc(&r, r.addr(), 64, None).unwrap();
        let e = mine(&a);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].addr, e[0].size, e[0].ty), (n.addr(), 64, "Uint8"));
        assert!(e[0].seq > r.tracked().unwrap().seq);

        let addr = n.detach(n.addr(), None).unwrap();
        assert!(mine(&a).is_empty());
        // SAFETY: detached: the block is the test's, a live libc block freed once.
        unsafe { libc::free(std::ptr::with_exposed_provenance_mut::<libc::c_void>(addr)) };

        let r = a
            .allocate(array(4, 1, 1, None).unwrap(), None, None)
            .unwrap();
        assert_eq!(mine(&a).len(), 1);
        r.set_autofree(None).unwrap();
        assert!(mine(&a).is_empty());
        drop(r);
        assert_eq!(a.counters.snapshot().live_count, 0);
    }

    #[test]
    fn untracked_allocators_record_only_when_switched_on() {
        // No global switch here (other tests run beside): the plain libc
        // allocator stays out of the registry while it is off.
        let a = AllocCore::new("plain", LIBC_GROUP, false, Box::new(Libc));
        if !enabled() {
            let r = a
                .allocate(array(4, 1, 1, None).unwrap(), None, None)
                .unwrap();
            assert!(r.tracked().is_none());
            a.free(&r, r.addr(), None).unwrap();
        }
    }

    #[test]
    fn sequence_numbers_order_and_filter() {
        let a = tracked();
        let r1 = a
            .allocate(array(1, 1, 1, None).unwrap(), None, None)
            .unwrap();
        let mark = next_seq();
        let r2 = a
            .allocate(array(2, 1, 1, None).unwrap(), None, None)
            .unwrap();
        let since: Vec<_> = live_since(mark)
            .unwrap()
            .into_iter()
            .filter(|e| Arc::ptr_eq(&e.allocator, &a))
            .collect();
        assert_eq!(since.len(), 1);
        assert_eq!(since[0].addr, r2.addr());
        a.free(&r1, r1.addr(), None).unwrap();
        a.free(&r2, r2.addr(), None).unwrap();
    }

    #[test]
    fn registry_stays_exact_under_threads() {
        let a = tracked();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let a = a.clone();
                s.spawn(move || {
                    for i in 0..2_000usize {
                        let r = a
                            .allocate(array((i % 7) as i128, 1, 1, None).unwrap(), None, None)
                            .unwrap();
                        a.free(&r, r.addr(), None).unwrap();
                    }
                });
            }
        });
        assert!(mine(&a).is_empty());
    }

    #[test]
    fn a_corrupted_guarded_block_is_reported_returned_and_forgotten() {
        use crate::core::error::{Death, Error};
        use crate::core::guard::Guarded;
        use crate::core::record::State;
        let a = AllocCore::new_tracked("diag-guard", LIBC_GROUP, true, Box::new(Guarded), true);
        let r = a
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        assert_eq!(mine(&a).len(), 1);
        // SAFETY: the byte after the 8-byte block is a guard byte of the same guarded allocation:
        // the corruption under test.
        unsafe {
            std::ptr::with_exposed_provenance_mut::<u8>(r.addr())
                .add(8)
                .write(0x41)
        };
        assert!(matches!(
            a.free(&r, r.addr(), None),
            Err(Error::HeapCorruption(c)) if c.after == 1
        ));
        assert_eq!(r.state(), State::Dead(Death::Freed));
        assert_eq!(a.counters.snapshot().live_count, 0);
        assert!(mine(&a).is_empty());
        assert!(matches!(
            a.free(&r, r.addr(), None),
            Err(Error::DoubleFree(Death::Freed))
        ));
        // an intact block frees cleanly, also when it was exported at the time
        let r = a
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        r.pin().unwrap();
        a.free(&r, r.addr(), None).unwrap();
        r.unpin(None);
    }

    #[test]
    fn seq_hasher_spreads_keys() {
        let mut h = SeqHasher::default();
        h.write_u64(1);
        let a = h.finish();
        h.write_u64(2);
        assert_ne!(a, h.finish());
    }
}
