//! `RecordRef`: the shared reference to an allocation record, like
//! `Arc<Record>` but allocated fallibly. `Arc::new` aborts the process when
//! the heap is exhausted; a record is bookkeeping for every single block, so
//! its memory is reserved first (`RecordSlot::new`, an error on failure) and
//! only then is the block itself allocated, so no failure leaves a block
//! without a record.
//!
//! A record is 32 bytes, its count included (the top half of its state
//! word), and every live block has one. Under the GIL the binding has that
//! memory come from CPython's small-object allocator
//! (`serial::use_record_memory`), which has a 32-byte size class and no
//! header: glibc's `malloc` would take a 48-byte chunk.
//! Elsewhere (free-threaded builds, the core alone) it is Rust's global
//! allocator. Either way recent slots are reused first (`mod cache`).
//!
//! A caller with the serialization proof ([`Serialized`]) counts references
//! with a plain load and store and reuses slots from one process-wide list;
//! without it (a `Drop`, which has no caller to hand one down) counting is a
//! read-modify-write. Who holds the proof drops a reference with
//! [`RecordRef::release`].

use super::error::{Error, Result};
use super::record::Record;
use super::serial::Serialized;
use std::alloc::Layout;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::ptr::NonNull;

/// A record's shared memory: the record itself, which holds its own count
/// (see `Record::ref_add`).
struct Inner {
    rec: Record,
}

// What every live block costs in bookkeeping: see `a_record_with_its_count_is_32_bytes`.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Inner>() == 32);

/// Memory for one record, not yet filled.
pub struct RecordSlot(NonNull<MaybeUninit<Inner>>);

impl RecordSlot {
    /// Reserves a record's memory; OutOfMemory instead of an abort. `s`:
    /// the caller's serialization proof (None: the synchronised path).
    pub fn new(s: Option<Serialized<'_>>) -> Result<Self> {
        #[cfg(any(test, feature = "testkit"))]
        if fault::should_fail() {
            return Err(Error::OutOfMemory(Layout::new::<Inner>().size()));
        }
        if let Some(p) = cache::take(s) {
            return Ok(RecordSlot(p));
        }
        cache::allocate()
            .map(RecordSlot)
            .ok_or(Error::OutOfMemory(Layout::new::<Inner>().size()))
    }

    /// Moves `rec` into the slot: the first reference to it.
    pub fn fill(self, rec: Record) -> RecordRef {
        let p = self.0.cast::<Inner>();
        std::mem::forget(self);
        // SAFETY: the slot is ours, uninitialised, and sized for Inner.
        unsafe { p.as_ptr().write(Inner { rec }) };
        RecordRef(p)
    }
}

impl Drop for RecordSlot {
    fn drop(&mut self) {
        // Never filled (a failed allocation): back to the heap, or to this
        // thread's cache.
        cache::give(self.0, None);
    }
}

/// A counted reference to a record, shared by every view of its block.
/// One aligned word (`repr(transparent)`), so that a Pointer's owner can
/// hold it untagged beside tagged region references.
#[repr(transparent)]
pub struct RecordRef(NonNull<Inner>);

// SAFETY: as Arc<Record>: Record is Send + Sync, and the count is atomic.
unsafe impl Send for RecordRef {}
// SAFETY: as for `Send`: a shared RecordRef reads the record (Sync) and counts atomically.
unsafe impl Sync for RecordRef {}

impl RecordRef {
    /// Whether `a` and `b` refer to the same record.
    pub fn ptr_eq(a: &RecordRef, b: &RecordRef) -> bool {
        a.0 == b.0
    }

    /// Whether other references exist, so that dropping this one only
    /// counts down. Exact when the caller's thread holds the only other
    /// means to clone or drop them (the GIL).
    pub fn is_shared(&self) -> bool {
        self.refs() > 1
    }

    /// The pointer, for a Pointer's owner: aligned to 8, so its low bits are
    /// clear for an owner's tags. Undone by [`RecordRef::from_raw`].
    pub fn into_raw(self) -> NonNull<u8> {
        let p = self.0.cast::<u8>();
        std::mem::forget(self);
        p
    }

    /// # Safety
    /// `p` came from [`RecordRef::into_raw`] and is given back once.
    pub unsafe fn from_raw(p: NonNull<u8>) -> Self {
        RecordRef(p.cast())
    }

    /// The word, for the index's tables (which keep flag bits beside it):
    /// the address, its provenance exposed so that [`RecordRef::from_word`]
    /// and [`RecordRef::record_of_word`] may take it back.
    pub(crate) fn into_word(self) -> usize {
        self.into_raw().as_ptr().expose_provenance()
    }

    /// # Safety
    /// `w` came from [`RecordRef::into_word`] and is given back once.
    pub(crate) unsafe fn from_word(w: usize) -> Self {
        // SAFETY: the caller's contract: a non-null address whose
        // provenance `into_word` exposed.
        unsafe {
            RecordRef::from_raw(NonNull::new_unchecked(
                std::ptr::with_exposed_provenance_mut(w),
            ))
        }
    }

    /// The shared memory holding `rec`.
    fn inner_of(rec: &Record) -> *mut Inner {
        std::ptr::from_ref(rec)
            .cast::<u8>()
            .wrapping_sub(std::mem::offset_of!(Inner, rec))
            .cast_mut()
            .cast()
    }

    /// The entry word of `rec` for the index: the address of its shared
    /// memory, as [`RecordRef::into_word`] gives (provenance exposed).
    pub(crate) fn word_of(rec: &Record) -> usize {
        Self::inner_of(rec).expose_provenance()
    }

    /// The record of a word from [`RecordRef::into_word`] or [`RecordRef::word_of`].
    pub(crate) fn record_of_word(w: usize) -> *const Record {
        std::ptr::with_exposed_provenance::<u8>(w)
            .wrapping_add(std::mem::offset_of!(Inner, rec))
            .cast()
    }

    /// Another reference to `rec`.
    ///
    /// # Safety
    /// `rec` lives in a record's shared memory (`RecordSlot::fill`), and
    /// the caller holds a reference to it.
    pub(crate) unsafe fn new_ref(rec: &Record, s: Option<Serialized<'_>>) -> Self {
        let inner = Self::inner_of(rec);
        // SAFETY: the caller's contract; non-null.
        let r = RecordRef(unsafe { NonNull::new_unchecked(inner) });
        // With the proof no other thread can count meanwhile (see `release`).
        r.ref_add(s.is_some());
        r
    }

    /// A new reference to the record at `rec`, unless its last reference
    /// is being dropped (count 0): how the index hands out the records it
    /// lists, which hold no count of their own. With the serialization
    /// proof `s`, counting is a load and a store (see `release`).
    ///
    /// # Safety
    /// `rec` is the record of a live `Inner` (the index's lock keeps it
    /// from being freed meanwhile: a record leaves the index before its
    /// memory goes).
    pub(crate) unsafe fn upgrade(rec: *const Record, s: Option<Serialized<'_>>) -> Option<Self> {
        // SAFETY: the caller's contract: `rec` is a live record.
        let rec = unsafe { &*rec };
        let inner = Self::inner_of(rec);
        if !rec.ref_add_unless_zero(s.is_some()) {
            return None;
        }
        // SAFETY: non-null (derived from a reference's pointee), now counted.
        Some(RecordRef(unsafe { NonNull::new_unchecked(inner) }))
    }

    fn inner(&self) -> &Inner {
        // SAFETY: the pointee lives while any reference exists.
        unsafe { self.0.as_ref() }
    }
}

impl Deref for RecordRef {
    type Target = Record;
    #[inline]
    fn deref(&self) -> &Record {
        &self.inner().rec
    }
}

impl Clone for RecordRef {
    #[inline]
    fn clone(&self) -> Self {
        self.ref_add(false);
        RecordRef(self.0)
    }
}

/// Without the proof: the synchronised path ([`RecordRef::release`] is the
/// other one).
impl Drop for RecordRef {
    #[inline]
    fn drop(&mut self) {
        if self.ref_sub(false) {
            self.last(None);
        }
    }
}

impl RecordRef {
    /// Another reference, as `clone` makes; with the serialization proof
    /// `s`, counting up is a load and a store (a view of a block, `p.ref`,
    /// takes one).
    #[inline]
    pub fn share(&self, s: Option<Serialized<'_>>) -> Self {
        self.ref_add(s.is_some());
        RecordRef(self.0)
    }

    /// Drops this reference, as `drop` does; with the serialization proof
    /// `s`, counting down is a load and a store, and the last reference's
    /// slot goes to the process-wide list.
    #[inline]
    pub fn release(self, s: Option<Serialized<'_>>) {
        if s.is_none() {
            return drop(self);
        }
        let mut this = std::mem::ManuallyDrop::new(self);
        // No other thread touches the word meanwhile, not even the index
        // (`upgrade`) or a state change: the proof's contract covers the
        // callers without one too.
        if this.ref_sub(true) {
            this.last(s);
        }
    }

    /// The last reference went: the record drops and its memory is reused.
    #[inline(never)]
    fn last(&mut self, s: Option<Serialized<'_>>) {
        // SAFETY: the last reference; the memory came from RecordSlot::new.
        unsafe { std::ptr::drop_in_place(self.0.as_ptr()) };
        cache::give(self.0.cast(), s);
    }
}

impl std::fmt::Debug for RecordRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Record memory given back lately, reused before the heap is asked again.
/// A record is allocated and freed with every block, and glibc's `malloc`
/// and `free` of it cost about 130 instructions (callgrind). Per thread, so
/// that no lock or atomic operation is needed, and emptied into the heap when
/// the thread ends; one process-wide list instead for a caller with the
/// serialization proof, which saves the thread-local lookup (~35
/// instructions). Bounded: at most `CAP` slots per list.
///
/// "The heap" is Rust's global allocator, or the functions the binding gave
/// (`serial::use_record_memory`: CPython's small-object allocator, where a
/// 48-byte record costs 48 bytes, not a 64-byte glibc chunk). A slot always
/// goes back where it came from: the functions are given before any slot
/// exists; their slots are kept only in the process-wide list, never in a
/// thread's (which a thread's end empties, perhaps where the functions may
/// not be called): without the proof they go straight back.
mod cache {
    use super::Inner;
    use crate::core::serial::{record_memory, Serialized};
    use std::alloc::{alloc, dealloc, Layout};
    use std::cell::UnsafeCell;
    use std::mem::MaybeUninit;
    use std::ptr::NonNull;
    #[cfg(debug_assertions)]
    use std::sync::atomic::Ordering::Relaxed;

    const CAP: usize = 64;

    type Slot = NonNull<MaybeUninit<Inner>>;

    struct Cache {
        len: usize,
        slots: [MaybeUninit<Slot>; CAP],
    }

    impl Cache {
        const fn new() -> Self {
            Cache {
                len: 0,
                slots: [MaybeUninit::uninit(); CAP],
            }
        }
    }

    impl Drop for Cache {
        fn drop(&mut self) {
            for s in &self.slots[..self.len] {
                // SAFETY: the first `len` entries are initialised.
                release(unsafe { s.assume_init() });
            }
        }
    }

    thread_local! {
        static LOCAL: UnsafeCell<Cache> = const { UnsafeCell::new(Cache::new()) };
        /// Whether this thread took a slot without the proof, so that its
        /// cache is in use: a thread whose every allocation brings the proof
        /// (the binding's, under the GIL) gives the slots its drops free
        /// straight back, and never touches `LOCAL`, whose first use
        /// registers its destructor, which glibc aborts the process for
        /// when memory has run out. No destructor of its own.
        static LOCAL_IN_USE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// The process-wide list, for callers with the proof.
    struct Shared(UnsafeCell<Cache>);

    // SAFETY: only touched with a `Serialized` token, whose contract is that
    // one outside lock covers every push and pop (neither calls out).
    unsafe impl Sync for Shared {}

    static SHARED: Shared = Shared(UnsafeCell::new(Cache::new()));

    /// Runs `f` on the cache in use; None when there is none: this thread's
    /// is gone (the thread is ending), or without `s` the slots come from
    /// the binding's functions (see the module comment).
    #[inline]
    fn with<R>(
        s: Option<Serialized<'_>>,
        taking: bool,
        f: impl FnOnce(&mut Cache) -> R,
    ) -> Option<R> {
        if s.is_some() {
            // SAFETY: see `Shared`; `f` does not re-enter the cache.
            return Some(f(unsafe { &mut *SHARED.0.get() }));
        }
        with_local(taking, f)
    }

    /// Kept out of line: the serialized path stays small enough to inline.
    /// `taking`: a slot is asked for (which puts this thread's cache in use).
    #[inline(never)]
    fn with_local<R>(taking: bool, f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
        if record_memory().is_some() {
            return None;
        }
        if taking {
            LOCAL_IN_USE.set(true);
        } else if !LOCAL_IN_USE.get() {
            return None;
        }
        // SAFETY: this thread's cache; no reference to it outlives `f`,
        // which does not re-enter it.
        LOCAL.try_with(|c| f(unsafe { &mut *c.get() })).ok()
    }

    /// Memory for a slot from the heap, None when there is none: the
    /// functions the binding gave, else Rust's global allocator.
    pub(super) fn allocate() -> Option<Slot> {
        let layout = Layout::new::<Inner>();
        let p: *mut MaybeUninit<Inner> = match record_memory() {
            Some(m) => {
                // SAFETY: `use_record_memory`'s contract: `m` may be called
                // wherever a record is made.
                let p = unsafe { (m.alloc)(layout.size()) }.cast::<MaybeUninit<Inner>>();
                debug_assert!(p.is_aligned(), "record memory misaligned");
                p
            }
            None => {
                // SAFETY: Inner has a non-zero size.
                let p = unsafe { alloc(layout) }.cast::<MaybeUninit<Inner>>();
                #[cfg(debug_assertions)]
                if !p.is_null() {
                    crate::core::serial::SLOTS_FROM_THE_GLOBAL_ALLOCATOR.fetch_add(1, Relaxed);
                }
                p
            }
        };
        NonNull::new(p)
    }

    /// Gives a slot back to the heap it came from: the functions are given
    /// before any slot exists and never change (`use_record_memory`).
    fn release(slot: Slot) {
        match record_memory() {
            // SAFETY: `m.alloc` gave it; `use_record_memory`'s contract: `m`
            // may be called wherever a record is dropped.
            Some(m) => unsafe { (m.free)(slot.as_ptr().cast()) },
            None => {
                #[cfg(debug_assertions)]
                crate::core::serial::SLOTS_FROM_THE_GLOBAL_ALLOCATOR.fetch_sub(1, Relaxed);
                // SAFETY: `allocate` took it from `alloc` with Inner's layout.
                unsafe { dealloc(slot.as_ptr().cast(), Layout::new::<Inner>()) }
            }
        }
    }

    /// A slot from the cache, if it has one.
    #[inline]
    pub(super) fn take(s: Option<Serialized<'_>>) -> Option<Slot> {
        with(s, true, |c| {
            c.len.checked_sub(1).map(|i| {
                c.len = i;
                // SAFETY: entries below the old `len` are initialised.
                unsafe { c.slots[i].assume_init() }
            })
        })
        .flatten()
    }

    /// Gives an unused slot back (to the heap when the cache is full or the
    /// thread is ending).
    #[inline]
    pub(super) fn give(slot: Slot, s: Option<Serialized<'_>>) {
        let kept = with(s, false, |c| {
            if c.len == CAP {
                return false;
            }
            c.slots[c.len] = MaybeUninit::new(slot);
            c.len += 1;
            true
        });
        if kept != Some(true) {
            release(slot);
        }
    }

    /// Slots in this thread's cache.
    #[cfg(test)]
    pub(super) fn len() -> usize {
        // SAFETY: the cell is this thread's; no reference to its contents is alive during the
        // read.
        LOCAL.with(|c| unsafe { (*c.get()).len })
    }
}

/// Failure injection for the record allocation (tests and fuzzing): the
/// k-th `RecordSlot::new` on this thread fails.
#[cfg(any(test, feature = "testkit"))]
pub mod fault {
    use std::cell::Cell;

    thread_local! {
        static COUNTDOWN: Cell<usize> = const { Cell::new(0) };
    }

    /// Fails the `k`-th record allocation from now on this thread (0: never).
    pub fn fail_record_at(k: usize) {
        COUNTDOWN.with(|c| c.set(k));
    }

    pub(super) fn should_fail() -> bool {
        COUNTDOWN.with(|c| match c.get() {
            0 => false,
            1 => {
                c.set(0);
                true
            }
            n => {
                c.set(n - 1);
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::{AllocCore, Libc, LIBC_GROUP};
    use crate::core::layout::array;

    #[test]
    fn a_record_with_its_count_is_32_bytes() {
        // Every live block carries one: 32 is a size class of CPython's
        // small-object allocator (no header), which serves records under
        // the GIL; through glibc it is a 48-byte chunk.
        assert_eq!(std::mem::size_of::<Inner>(), 32);
    }

    #[test]
    fn the_alignment_kept_in_the_state_word_survives_every_transition() {
        let a = AllocCore::new("malloc", LIBC_GROUP, false, Box::new(Libc));
        for shift in 0..=16 {
            let align = 1usize << shift;
            let r = a
                .allocate(array(3, 8, 8, Some(align as u128)).unwrap(), None, None)
                .unwrap();
            assert_eq!(r.align(), align);
            assert_eq!(r.addr() % align, 0);
            for _ in 0..300 {
                r.pin().unwrap(); // pins count above the alignment bits
            }
            assert_eq!((r.align(), r.pins()), (align, 300));
            for _ in 0..300 {
                r.unpin(None);
            }
            r.set_autofree(None).unwrap();
            assert_eq!(r.align(), align);
            a.free(&r, r.addr(), None).unwrap();
            assert_eq!(r.align(), align);
            assert_eq!(
                r.state(),
                crate::core::record::State::Dead(crate::core::error::Death::Freed)
            );
        }
    }

    #[test]
    fn record_memory_is_reused_from_the_thread_cache() {
        let a = AllocCore::new("malloc", LIBC_GROUP, false, Box::new(Libc));
        let req = array(8, 1, 1, None).unwrap();
        // Fill the cache past its capacity; the surplus goes to the heap.
        let many: Vec<_> = (0..200)
            .map(|_| a.allocate(req, None, None).unwrap())
            .collect();
        for r in &many {
            a.free(r, r.addr(), None).unwrap();
        }
        drop(many);
        assert_eq!(cache::len(), 64);
        let r = a.allocate(req, None, None).unwrap();
        assert_eq!(cache::len(), 63);
        let inner = r.0;
        a.free(&r, r.addr(), None).unwrap();
        drop(r);
        assert_eq!(cache::len(), 64);
        // The slot just given back is the next one taken.
        let r = a.allocate(req, None, None).unwrap();
        assert_eq!(r.0, inner);
        assert_eq!(r.state(), crate::core::record::State::Live);
        a.free(&r, r.addr(), None).unwrap();
    }

    #[test]
    fn a_thread_ending_returns_its_cache() {
        // Records made on one thread and dropped on another, which then ends
        // with a full cache: its destructor frees the slots (Miri/valgrind
        // would report a leak otherwise; here: no crash, no double free).
        let a = AllocCore::new("malloc", LIBC_GROUP, false, Box::new(Libc));
        let req = array(8, 1, 1, None).unwrap();
        let make = |n| -> Vec<_> {
            (0..n)
                .map(|_| a.allocate(req, None, None).unwrap())
                .collect()
        };
        let (recs, others) = (make(100), make(10));
        let b = a.clone();
        std::thread::spawn(move || {
            // A thread that never took a slot keeps none: its cache stays
            // unused (see `LOCAL_IN_USE`).
            for r in &others {
                b.free(r, r.addr(), None).unwrap();
            }
            drop(others);
            assert_eq!(cache::len(), 0);
            // Once it takes one, what it drops is kept, up to the bound.
            let own = b.allocate(req, None, None).unwrap();
            b.free(&own, own.addr(), None).unwrap();
            drop(own);
            for r in &recs {
                b.free(r, r.addr(), None).unwrap();
            }
            drop(recs);
            assert_eq!(cache::len(), 64);
        })
        .join()
        .unwrap();
    }
}
