//! Allocators: a [`Backend`] that gets and returns raw memory, wrapped in an
//! [`AllocCore`] that validates requests, counts, and creates records (`record::Record`).
//! Every rule of ownership lives here and in `record`, so an allocator of any
//! kind (libc, guarded, Python-defined, foreign C functions, arenas) gets all
//! the checks by construction.
//!
//! This file is what an allocator is (its identity, owner group, limit,
//! counters and backend) and depends on nothing that holds records;
//! `alloc/ops.rs` makes and ends the records.

mod ops;
pub(crate) use ops::rec_ptr;

use super::block_cache;
use super::budget::{self, UNLIMITED};
use super::error::{Error, Result};
use super::layout::MALLOC_ALIGN;
use super::serial::Serialized;
use super::stats::{Counters, GLOBAL};
use super::sys;
use std::ptr::NonNull;
use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed},
};
use std::sync::Arc;

/// Where an allocator's memory comes from and goes back to.
///
/// `alloc`, `free` and `realloc` take the caller's serialization proof, None
/// on the synchronised path: a backend may use it for what only serialized
/// callers may touch (libc's block cache).
pub trait Backend: Send + Sync {
    /// `size` bytes (possibly 0) at `align`; zero-filled when `zeroed`.
    fn alloc(
        &self,
        size: usize,
        align: usize,
        zeroed: bool,
        s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>>;

    /// # Safety
    /// `ptr` came from this backend's `alloc`/`realloc` with `size` and
    /// `align`, and is not used again. The memory is returned even when the
    /// result is an error (a guarded block whose canaries were overwritten).
    unsafe fn free(
        &self,
        ptr: NonNull<u8>,
        size: usize,
        align: usize,
        s: Option<Serialized<'_>>,
    ) -> Result<()>;

    /// Checks a live block without freeing it (guard bytes); Ok by default.
    fn verify(&self, _ptr: NonNull<u8>, _size: usize, _align: usize) -> Result<()> {
        Ok(())
    }

    /// Resizes; on failure the old block is untouched. The default moves the
    /// bytes to a new block.
    ///
    /// # Safety
    /// As for `free`; on success `ptr` is not used again.
    unsafe fn realloc(
        &self,
        ptr: NonNull<u8>,
        old: usize,
        new: usize,
        align: usize,
        zeroed: bool,
        s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        self.verify(ptr, old, align)?;
        let fresh = self.alloc(new, align, zeroed, s)?;
        // SAFETY: distinct blocks, each at least min(old, new) bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), old.min(new));
            // The old block was verified; the move has happened either way.
            let _ = self.free(ptr, old, align, s);
        }
        Ok(fresh)
    }

    /// A free-only owner: a library's own free (`freeaddrinfo`), which
    /// releases what hangs off its blocks with them (core::owner). False by
    /// default.
    fn free_only(&self) -> bool {
        false
    }
    /// Address of the C function that frees this backend's blocks, if C may call it.
    fn native_free(&self) -> Option<usize> {
        None
    }

    /// True for a backend whose blocks carry bookkeeping C's `free` cannot
    /// take (guard bytes) while the memory it adopts is plain libc memory:
    /// adopted blocks go back through libc, and its own blocks cannot be
    /// handed to C (`detach`).
    fn adopts_plain(&self) -> bool {
        false
    }

    /// True when `alloc` and `free` run nothing but the system allocator: no
    /// user code, no other effect, and `free` cannot fail. The binding's
    /// fast paths serve only such backends.
    fn plain(&self) -> bool {
        false
    }

    /// True for [`Libc`] itself (not a backend over it): its allocator
    /// calls it directly instead of through the `dyn` table, which cannot
    /// be inlined (`AllocCore::backend_alloc`).
    fn is_libc(&self) -> bool {
        false
    }

    /// True when `alloc` or `free` run the binding's own code (a Python
    /// function), whose failures during a free the binding collects around
    /// it. False by default.
    fn calls_out(&self) -> bool {
        false
    }
}

/// libc's malloc family.
pub struct Libc;

impl Backend for Libc {
    // Always inlined where called directly (`AllocCore::backend_alloc`).
    #[inline(always)]
    fn alloc(
        &self,
        size: usize,
        align: usize,
        zeroed: bool,
        s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        if align <= MALLOC_ALIGN {
            if let Some(p) = s.and_then(|s| block_cache::take(s, size)) {
                if zeroed {
                    // SAFETY: the kept block has at least `size` usable bytes.
                    unsafe { std::ptr::write_bytes(p.as_ptr(), 0, size) };
                }
                return Ok(p);
            }
        }
        let p = sys::alloc(size, align, zeroed)
            .or_else(|e| retry_after_trim(e, s, || sys::alloc(size, align, zeroed)))?;
        if !zeroed {
            // SAFETY: a fresh libc block, ours alone.
            unsafe { block_cache::scrub(p) };
        }
        Ok(p)
    }
    #[inline(always)]
    unsafe fn free(
        &self,
        ptr: NonNull<u8>,
        size: usize,
        _align: usize,
        s: Option<Serialized<'_>>,
    ) -> Result<()> {
        // The cache looks for C's frees itself; without it the look is its
        // own step. Either way a block C freed already is neither kept nor
        // freed again.
        let kept_or_c_freed = match s {
            // SAFETY: forwarded contract: a libc block rsalloc was given,
            // unused from now on.
            Some(s) if block_cache::enabled() => unsafe { block_cache::give(s, ptr) },
            // SAFETY: as above.
            _ => unsafe { block_cache::freed_by_c(ptr, size) },
        };
        if !kept_or_c_freed {
            // SAFETY: as above; neither the cache nor C has it.
            unsafe { sys::free(ptr) };
        }
        Ok(())
    }
    fn plain(&self) -> bool {
        true
    }
    fn is_libc(&self) -> bool {
        true
    }
    unsafe fn realloc(
        &self,
        ptr: NonNull<u8>,
        old: usize,
        new: usize,
        align: usize,
        zeroed: bool,
        s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        // SAFETY: forwarded contract (a failed realloc leaves the block as it was).
        let p = unsafe { sys::realloc(ptr, old, new, align, zeroed) }.or_else(|e| {
            // SAFETY: as above: the block is untouched after the failure.
            retry_after_trim(e, s, || unsafe {
                sys::realloc(ptr, old, new, align, zeroed)
            })
        })?;
        if !zeroed && old <= std::mem::size_of::<usize>() {
            // The second word is past the bytes kept: as unspecified as a
            // fresh block's (`block_cache::scrub`).
            // SAFETY: the new block is ours alone.
            unsafe { block_cache::scrub(p) };
        }
        Ok(p)
    }
    fn native_free(&self) -> Option<usize> {
        Some(sys::free_fn_address())
    }
}

/// Out of memory: gives back what the block cache keeps or holds back, and
/// tries once more if that was anything (memory rsalloc merely keeps must
/// never be the cause of a `MemoryError`). Without the proof the cache is
/// not touched (nor filled: the synchronised path never keeps a block).
#[cold]
fn retry_after_trim(
    e: Error,
    s: Option<Serialized<'_>>,
    again: impl FnOnce() -> Result<NonNull<u8>>,
) -> Result<NonNull<u8>> {
    if matches!(e, Error::OutOfMemory(_)) && s.map_or(0, block_cache::trim) > 0 {
        again()
    } else {
        Err(e)
    }
}

/// Allocators sharing one owner group accept each other's pointers (as
/// malloc and calloc do in C). Group 1 is libc's heap.
pub const LIBC_GROUP: u64 = 1;
static NEXT_ID: AtomicU64 = AtomicU64::new(LIBC_GROUP + 1);

/// A fresh identity for an owner group or an arena.
pub fn new_id() -> u64 {
    NEXT_ID.fetch_add(1, Relaxed)
}

/// [`new_id`] with the proof: a load and a store, no locked
/// read-modify-write (a kept arena's reopening takes one per call).
pub fn new_id_serialized(_s: Serialized<'_>) -> u64 {
    let id = NEXT_ID.load(Relaxed);
    NEXT_ID.store(id + 1, Relaxed);
    id
}

/// An allocator: its name, owner group, counters and [`Backend`], and the rules every allocation
/// through it follows (`alloc/ops.rs`).
pub struct AllocCore {
    /// Shown in reprs, reports and error messages (`"malloc"`, `"calloc"`, a subclass's name).
    pub name: String,
    /// Owner group: who may free this allocator's blocks.
    pub group: u64,
    /// calloc semantics: new memory (and a realloc's new tail) is zeroed.
    pub zeroed: bool,
    /// This allocator's live and total blocks and bytes (the process's are [`GLOBAL`]).
    pub counters: Counters,
    /// Where the memory comes from and goes back to.
    pub backend: Box<dyn Backend>,
    /// Records every allocation, tracking switch or not (diagnostic allocators).
    pub always_track: bool,
    /// Never dropped (see [`AllocCore::into_lifelong`]): records skip the count.
    lifelong: bool,
    /// `backend.plain()`, asked once: the fast paths ask for every block.
    plain_backend: bool,
    /// `backend.is_libc()`, asked once (`backend_alloc`, `backend_free`).
    libc_backend: bool,
    /// The cap on this allocator's live bytes (`a.limited(n)`), or UNLIMITED.
    limit: u64,
    /// The allocator a limited one allocates through: its blocks count
    /// there too, and its limit applies.
    over: Option<Arc<AllocCore>>,
    /// References to this core held by arenas over it: one per arena, one
    /// per record in an arena's list (see [`AllocCore::held_by_arenas`]).
    arena_refs: AtomicUsize,
}

/// The backend of `a.limited(n)`: `a`'s own.
struct Over(Arc<AllocCore>);

impl Backend for Over {
    #[inline]
    fn alloc(
        &self,
        size: usize,
        align: usize,
        zeroed: bool,
        s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        self.0.backend.alloc(size, align, zeroed, s)
    }
    #[inline]
    unsafe fn free(
        &self,
        ptr: NonNull<u8>,
        size: usize,
        align: usize,
        s: Option<Serialized<'_>>,
    ) -> Result<()> {
        // SAFETY: forwarded contract: the block came from this same backend.
        unsafe { self.0.backend.free(ptr, size, align, s) }
    }
    fn verify(&self, ptr: NonNull<u8>, size: usize, align: usize) -> Result<()> {
        self.0.backend.verify(ptr, size, align)
    }
    unsafe fn realloc(
        &self,
        ptr: NonNull<u8>,
        old: usize,
        new: usize,
        align: usize,
        zeroed: bool,
        s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        // SAFETY: forwarded contract.
        unsafe { self.0.backend.realloc(ptr, old, new, align, zeroed, s) }
    }
    fn native_free(&self) -> Option<usize> {
        self.0.backend.native_free()
    }
    fn free_only(&self) -> bool {
        self.0.backend.free_only()
    }
    fn plain(&self) -> bool {
        self.0.plain_backend
    }
    fn calls_out(&self) -> bool {
        self.0.backend.calls_out()
    }
}

/// A record's reference to its allocator: an `Arc<AllocCore>` that skips the
/// reference count for a lifelong allocator. Counting is an atomic
/// read-modify-write when the record is made and another when it dies: a
/// measurable part of a small allocation, spent on allocators that never die.
pub struct CoreRef(NonNull<AllocCore>);

// SAFETY: as Arc<AllocCore>: AllocCore is Send + Sync.
unsafe impl Send for CoreRef {}
// SAFETY: as for `Send`: shared access only reads the AllocCore, which is Sync.
unsafe impl Sync for CoreRef {}

impl CoreRef {
    /// A reference to `core`, counted unless `core` is lifelong.
    pub fn new(core: &Arc<AllocCore>) -> Self {
        if !core.lifelong {
            std::mem::forget(core.clone());
        }
        CoreRef(NonNull::from(&**core))
    }

    /// A counted reference to `core`, for those who keep the allocator on
    /// their own.
    ///
    /// # Safety
    /// `core` is held by a `CoreRef` (or one kept raw, see
    /// [`CoreRef::into_raw`]) that lives meanwhile.
    pub unsafe fn arc_of(core: &AllocCore) -> Arc<AllocCore> {
        let p = std::ptr::from_ref(core);
        // SAFETY: the pointer came from an Arc that is alive: the count of
        // the caller's reference, or the count a lifelong allocator leaked.
        unsafe {
            Arc::increment_strong_count(p);
            Arc::from_raw(p)
        }
    }

    /// The pointer, its count (if any) kept: a record keeps it in a word
    /// that may hold something else instead. Undone by [`CoreRef::from_raw`].
    pub fn into_raw(self) -> NonNull<AllocCore> {
        let p = self.0;
        std::mem::forget(self);
        p
    }

    /// # Safety
    /// `p` came from [`CoreRef::into_raw`] and is given back once.
    pub unsafe fn from_raw(p: NonNull<AllocCore>) -> Self {
        CoreRef(p)
    }
}

impl std::ops::Deref for CoreRef {
    type Target = AllocCore;
    #[inline]
    fn deref(&self) -> &AllocCore {
        // SAFETY: alive while this reference is (see `arc`).
        unsafe { self.0.as_ref() }
    }
}

impl Drop for CoreRef {
    fn drop(&mut self) {
        if !self.lifelong {
            // SAFETY: gives back the count `new` took.
            unsafe { Arc::decrement_strong_count(self.0.as_ptr()) }
        }
    }
}

impl AllocCore {
    /// An allocator of owner group `group` over `backend`; `zeroed`: calloc semantics.
    pub fn new(
        name: impl Into<String>,
        group: u64,
        zeroed: bool,
        backend: Box<dyn Backend>,
    ) -> Arc<Self> {
        Self::new_tracked(name, group, zeroed, backend, false)
    }

    /// An allocator that records when tracking is on, or always with `always_track`.
    pub fn new_tracked(
        name: impl Into<String>,
        group: u64,
        zeroed: bool,
        backend: Box<dyn Backend>,
        always_track: bool,
    ) -> Arc<Self> {
        Arc::new(AllocCore {
            plain_backend: backend.plain(),
            libc_backend: backend.is_libc(),
            name: name.into(),
            group,
            zeroed,
            counters: Counters::new(),
            backend,
            always_track,
            lifelong: false,
            limit: UNLIMITED,
            over: None,
            arena_refs: AtomicUsize::new(0),
        })
    }

    /// `a.limited(max_bytes)`: a new owner (an owner group of its own) whose
    /// blocks come from this allocator's backend and count here too, and
    /// whose live bytes never pass `max_bytes`.
    pub fn limited(self: &Arc<Self>, max_bytes: u64) -> Arc<Self> {
        Arc::new(AllocCore {
            plain_backend: self.plain_backend,
            libc_backend: false, // its backend is `Over`
            name: format!("{}.limited({max_bytes})", self.name),
            group: new_id(),
            zeroed: self.zeroed,
            counters: Counters::new(),
            backend: Box::new(Over(self.clone())),
            always_track: self.always_track,
            lifelong: false,
            limit: max_bytes,
            over: Some(self.clone()),
            arena_refs: AtomicUsize::new(0),
        })
    }

    /// How many of the references to this core arenas hold (the arena
    /// itself, and each record in its list): the binding layer tells from
    /// it whether every other holder is reachable by the garbage collector
    /// (an arena object), so that a Python-defined allocator in a cycle with
    /// its own arena can be collected.
    pub fn held_by_arenas(&self) -> usize {
        self.arena_refs.load(Acquire)
    }

    pub(crate) fn arena_refs_add(&self, n: usize) {
        self.arena_refs.fetch_add(n, AcqRel);
    }

    pub(crate) fn arena_refs_sub(&self, n: usize) {
        self.arena_refs.fetch_sub(n, AcqRel);
    }

    /// The cap on this allocator's live bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        budget::as_option(self.limit)
    }

    /// The allocator a limited one allocates through.
    pub fn over(&self) -> Option<&Arc<AllocCore>> {
        self.over.as_ref()
    }

    /// Makes a new allocator live as long as the process (the module's
    /// `malloc`, `calloc` and the other built-ins): its records then skip the
    /// reference count. Must be called before it makes any record; a core
    /// that is already shared is returned unchanged.
    pub fn into_lifelong(mut core: Arc<Self>) -> Arc<Self> {
        if let Some(c) = Arc::get_mut(&mut core) {
            c.lifelong = true;
            std::mem::forget(core.clone());
        }
        core
    }

    /// Whether this allocator lives as long as the process.
    #[inline]
    pub fn is_lifelong(&self) -> bool {
        self.lifelong
    }

    /// [`Backend::plain`] of this allocator's backend.
    #[inline]
    pub fn plain_backend(&self) -> bool {
        self.plain_backend
    }

    /// `backend.alloc`, with this allocator's zeroing: Libc's called
    /// directly, inlined (the `dyn` call's entry and exit cost ~19
    /// instructions per block, callgrind).
    #[inline(always)]
    pub(crate) fn backend_alloc(
        &self,
        size: usize,
        align: usize,
        s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        if self.libc_backend {
            Libc.alloc(size, align, self.zeroed, s)
        } else {
            self.backend.alloc(size, align, self.zeroed, s)
        }
    }

    /// `backend.free`, Libc's called directly (as `backend_alloc`).
    ///
    /// # Safety
    /// As [`Backend::free`].
    #[inline(always)]
    pub(crate) unsafe fn backend_free(
        &self,
        ptr: NonNull<u8>,
        size: usize,
        align: usize,
        s: Option<Serialized<'_>>,
    ) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe {
            if self.libc_backend {
                Libc.free(ptr, size, align, s)
            } else {
                self.backend.free(ptr, size, align, s)
            }
        }
    }

    pub(crate) fn count_alloc(&self, size: usize, s: Option<Serialized<'_>>) {
        self.counters.on_alloc(size, s);
        GLOBAL.on_alloc(size, s);
    }

    pub(crate) fn count_free(&self, size: usize, s: Option<Serialized<'_>>) {
        self.counters.on_free(size, s);
        let mut over = &self.over;
        while let Some(a) = over {
            a.counters.on_free(size, s);
            over = &a.over;
        }
        GLOBAL.on_free(size, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::{Death, Ownership};
    use crate::core::layout::array;
    use crate::core::layout::Request;
    use crate::core::record::State;
    use crate::core::record_ref::RecordRef;

    fn libc(zeroed: bool) -> Arc<AllocCore> {
        AllocCore::new("malloc", LIBC_GROUP, zeroed, Box::new(Libc))
    }

    #[test]
    fn alloc_free_counts() {
        let a = libc(false);
        let r = a
            .allocate(array(10, 4, 4, None).unwrap(), None, None)
            .unwrap();
        assert_eq!(a.counters.snapshot().live_bytes, 40);
        a.free(&r, r.addr(), None).unwrap();
        let s = a.counters.snapshot();
        assert_eq!(
            (s.live_count, s.live_bytes, s.total_allocs, s.total_frees),
            (0, 0, 1, 1)
        );
        assert!(matches!(
            a.free(&r, r.addr(), None),
            Err(Error::DoubleFree(Death::Freed))
        ));
        assert!(matches!(
            r.check_access(),
            Err(Error::UseAfterFree(Death::Freed))
        ));
        assert_eq!(a.counters.snapshot().total_frees, 1);
    }

    #[test]
    fn ownership_rules() {
        let m = libc(false);
        let c = libc(true);
        let other = AllocCore::new("other", new_id(), false, Box::new(Libc));
        let r = m
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        assert!(matches!(
            other.free(&r, r.addr(), None),
            Err(Error::Ownership(Ownership::OtherOwner))
        ));
        assert!(matches!(
            m.free(&r, r.addr() + 1, None),
            Err(Error::Ownership(Ownership::Interior))
        ));
        assert_eq!(r.state(), State::Live);
        c.free(&r, r.addr(), None).unwrap(); // same group: calloc frees malloc's block
        assert_eq!(m.counters.snapshot().live_count, 0);
    }

    #[test]
    fn pins_defer_the_return_of_memory() {
        let a = libc(false);
        let r = a
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        r.pin().unwrap();
        a.free(&r, r.addr(), None).unwrap();
        assert_eq!(a.counters.snapshot().live_count, 0);
        assert_eq!(r.pins(), 1);
        assert!(r.pin().is_err());
        r.unpin(None); // returns the memory now (checked by valgrind/ASan runs)
        assert_eq!(r.pins(), 0);
    }

    #[test]
    fn detach_is_refused_while_exported_and_changes_nothing() {
        let a = libc(false);
        let r = a
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        r.pin().unwrap();
        assert!(matches!(r.detach(r.addr(), None), Err(Error::Exported)));
        assert_eq!(r.state(), State::Live);
        assert_eq!(a.counters.snapshot().live_count, 1);
        r.unpin(None);
        assert_eq!(r.detach(r.addr(), None).unwrap(), r.addr());
        assert_eq!(r.state(), State::Detached);
        // SAFETY: detached from libc's malloc: C's free is its owner now.
        unsafe {
            libc::free(std::ptr::with_exposed_provenance_mut::<libc::c_void>(
                r.addr(),
            ))
        };
    }

    #[test]
    fn realloc_moves_and_kills_the_old_record() {
        let c = libc(true);
        let r = c
            .allocate(array(4, 1, 1, None).unwrap(), None, None)
            .unwrap();
        // SAFETY: `r` is a live 4-byte block of this allocator, unpinned but not freed.
        unsafe {
            std::ptr::write_bytes(std::ptr::with_exposed_provenance_mut::<u8>(r.addr()), 9, 4)
        };
        r.pin().unwrap();
        assert!(matches!(
            c.realloc(&r, r.addr(), 64, None),
            Err(Error::Exported)
        ));
        r.unpin(None);
        let n = c.realloc(&r, r.addr(), 64, None).unwrap();
        assert_eq!(r.state(), State::Dead(Death::Reallocated));
        // SAFETY: `n` is the live 64-byte block realloc returned.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(n.addr()), 64)
        };
        assert_eq!(&bytes[..4], &[9; 4]);
        assert!(bytes[4..].iter().all(|b| *b == 0));
        let s = c.counters.snapshot();
        assert_eq!((s.live_count, s.live_bytes), (1, 64));
        assert!(matches!(
            c.realloc(&n, n.addr(), 1 << 62, None),
            Err(Error::OutOfMemory(_))
        ));
        assert_eq!(n.state(), State::Live);
        c.free(&n, n.addr(), None).unwrap();
    }

    #[test]
    fn detach_and_autofree() {
        let a = libc(false);
        let r = a
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        let addr = r.detach(r.addr(), None).unwrap();
        assert_eq!(a.counters.snapshot().live_count, 0);
        assert!(r.check_access().is_ok());
        assert!(matches!(
            a.free(&r, addr, None),
            Err(Error::Ownership(Ownership::Detached))
        ));
        // SAFETY: detached: the block is C's now, a live libc block nobody else frees.
        unsafe { libc::free(std::ptr::with_exposed_provenance_mut::<libc::c_void>(addr)) }; // C frees it

        let r = a
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        r.set_autofree(None).unwrap();
        assert_eq!(a.counters.snapshot().live_count, 1);
        drop(r);
        assert_eq!(a.counters.snapshot().live_count, 0);
    }

    #[test]
    fn threads_hammering_alloc_free_keep_exact_counts() {
        let a = libc(false);
        std::thread::scope(|s| {
            for t in 0..4 {
                let a = a.clone();
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..5_000usize {
                        let r = a
                            .allocate(array((i % 13 + t) as i128, 8, 8, None).unwrap(), None, None)
                            .unwrap();
                        if i % 3 == 0 {
                            a.free(&r, r.addr(), None).unwrap();
                        } else {
                            held.push(r);
                        }
                    }
                    for r in held {
                        a.free(&r, r.addr(), None).unwrap();
                    }
                });
            }
        });
        let s = a.counters.snapshot();
        assert_eq!(
            (s.live_count, s.live_bytes, s.total_allocs, s.total_frees),
            (0, 0, 20_000, 20_000)
        );
    }

    #[test]
    fn free_plain_decides_as_free_does() {
        // Each scenario prepares a block, then frees it once through `free`
        // and once (on a twin) through `free_plain`: same outcome, same counts.
        type Prep = fn(&RecordRef) -> usize;
        let scenarios: [(&str, Prep); 6] = [
            ("live, at its start", |r| r.addr()),
            ("interior view", |r| r.addr() + 1),
            ("freed already", |r| {
                r.free(r.allocator().group, 0, r.addr(), None).unwrap();
                r.addr()
            }),
            ("exported", |r| {
                r.pin().unwrap();
                r.addr()
            }),
            ("autofree", |r| {
                r.set_autofree(None).unwrap();
                r.addr()
            }),
            ("detached", |r| r.detach(r.addr(), None).unwrap()),
        ];
        for (name, prep) in scenarios {
            let outcome = |plain: bool| {
                let a = libc(false);
                let r = a
                    .allocate(array(8, 1, 1, None).unwrap(), None, None)
                    .unwrap();
                let addr = prep(&r);
                let res = if plain {
                    r.free_plain(addr, None)
                } else {
                    r.free(a.group, 0, addr, None)
                };
                let out = (format!("{res:?}"), r.state(), a.counters.snapshot());
                if r.pins() > 0 {
                    r.unpin(None);
                }
                if r.state() == State::Detached {
                    // SAFETY: a detached record's block belongs to this test, as C's would, and is
                    // freed once.
                    unsafe {
                        libc::free(std::ptr::with_exposed_provenance_mut::<libc::c_void>(
                            r.addr(),
                        ))
                    };
                } else if r.state() == State::Live && !r.is_autofree() {
                    a.free(&r, r.addr(), None).unwrap();
                }
                out
            };
            assert_eq!(outcome(true), outcome(false), "{name}");
        }
    }

    #[test]
    fn a_shared_record_frees_exactly_once_under_races() {
        for _ in 0..200 {
            let a = libc(false);
            let r = a
                .allocate(array(16, 1, 1, None).unwrap(), None, None)
                .unwrap();
            let oks = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        if r.pin().is_ok() {
                            r.unpin(None);
                        }
                        if a.free(&r, r.addr(), None).is_ok() {
                            oks.fetch_add(1, Relaxed);
                        }
                    });
                }
            });
            assert_eq!(oks.load(Relaxed), 1);
            assert_eq!(a.counters.snapshot().live_count, 0);
        }
    }

    #[test]
    fn records_count_their_allocator_unless_it_is_lifelong() {
        let a = libc(false);
        let r = a
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        assert_eq!(Arc::strong_count(&a), 2);
        let kept = r.allocator_arc();
        assert_eq!(Arc::strong_count(&a), 3);
        // A live block is indexed (its record kept, so its allocator too)
        // until it ends.
        a.free(&r, r.addr(), None).unwrap();
        drop((r, kept));
        assert_eq!(Arc::strong_count(&a), 1);

        let l = AllocCore::into_lifelong(libc(false));
        let before = Arc::strong_count(&l);
        assert_eq!(before, 2, "one count leaked for the process");
        let r = l
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        assert_eq!(Arc::strong_count(&l), before);
        assert!(std::ptr::eq(r.allocator(), &*l));
        assert_eq!(Arc::strong_count(&r.allocator_arc()), before + 1);
        l.free(&r, r.addr(), None).unwrap();
        drop(r);
        assert_eq!(Arc::strong_count(&l), before);

        // Already shared: left as it is (its records keep counting).
        let shared = libc(false);
        let other = shared.clone();
        let same = AllocCore::into_lifelong(shared);
        assert_eq!(Arc::strong_count(&other), 2);
        drop(same);
        assert_eq!(Arc::strong_count(&other), 1);
    }

    #[test]
    fn unsatisfiable_requests_change_nothing() {
        let a = libc(false);
        let req = Request {
            size: 1 << 62,
            align: 8,
        };
        assert!(matches!(
            a.allocate(req, None, None),
            Err(Error::OutOfMemory(_))
        ));
        assert_eq!(a.counters.snapshot(), Default::default());
    }
}
