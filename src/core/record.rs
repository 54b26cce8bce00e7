//! The allocation record: one per block, shared (through `RecordRef`) by
//! every view of the block. It holds the owner, the size, and one atomic word
//! with the block's state and its count of buffer exports ("pins"), so that
//! liveness checks and the free/export race are decided by a single
//! compare-and-swap.
//!
//! Every live block carries one, so its size is the memory rsalloc costs per
//! block (issue 6): 40 bytes, 48 with its reference count. What only some
//! blocks have (an owning arena, tracking data) shares one word, `Extra`,
//! which is null for the common block.

use super::alloc::{AllocCore, Backend, CoreRef, Libc};
use super::error::{Death, Error, Ownership, Result};
use super::stats::Counters;
use std::ops::ControlFlow;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Arc, OnceLock};

mod lifecycle;

// Every live block has a record: keep it at 40 bytes (48 with its count,
// exactly a 16-byte size class of CPython's small-object allocator).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Record>() == 40);

/// The state bits of [`Record::word`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Owned and usable.
    Live,
    /// Usable, but ownership was handed to someone else (C): not freeable here.
    Detached,
    /// Freed, released or reallocated: no access, no second free.
    Dead(Death),
}

const STATE_MASK: usize = 0b111;
const LIVE: usize = 0;
const DETACHED: usize = 1;
const FREED: usize = 2;
const RELEASED: usize = 3;
const REALLOCATED: usize = 4;
/// Owned by an arena (which frees it at release), not by its allocator.
const IN_ARENA: usize = 1 << 3;
/// Freed when the last reference to the record goes (`Pointer.autofree()`).
const AUTOFREE: usize = 1 << 4;
/// C freed the memory behind rsalloc's back and libc handed it out again
/// (see [`Record::lose`]): dead, and its memory is not returned.
const LOST: usize = 1 << 5;
/// The memory is plain libc memory although the allocator's backend is not
/// (a block a diagnostic allocator adopted: it has no guard bytes), so it
/// goes back through libc. It never changes.
const PLAIN_MEMORY: usize = 1 << 6;
/// log2 of the block's alignment lives in the word too: a field of its own
/// would take the record with its count from 56 to 64 bytes, and its glibc
/// chunk from 64 to 80 (every live block has one). It never changes.
const ALIGN_SHIFT: u32 = 8;
const ALIGN_MASK: usize = 0xFF << ALIGN_SHIFT;
const PIN_SHIFT: u32 = 16;
const PIN: usize = 1 << PIN_SHIFT;

fn decode(word: usize) -> State {
    match word & STATE_MASK {
        LIVE => State::Live,
        DETACHED => State::Detached,
        FREED => State::Dead(Death::Freed),
        RELEASED => State::Dead(Death::Released),
        _ => State::Dead(Death::Reallocated),
    }
}

fn is_dead(word: usize) -> bool {
    word & STATE_MASK >= FREED
}

/// One allocated block's bookkeeping: address, size, alignment, allocator, and its state in one
/// atomic word.
pub struct Record {
    addr: NonNull<u8>,
    size: usize,
    word: AtomicUsize,
    alloc: CoreRef,
    /// The arena the block was made in (it owns the block while IN_ARENA is
    /// set) and tracking data, both rare.
    extra: Extra,
}

// SAFETY: the raw address is only an address here; all shared state is atomic.
unsafe impl Send for Record {}
// SAFETY: as for `Send`: shared access goes through atomics only.
unsafe impl Sync for Record {}

impl Record {
    /// A record for a block `alloc` just handed out (and has counted).
    pub(crate) fn new(
        addr: NonNull<u8>,
        size: usize,
        align: usize,
        alloc: CoreRef,
        arena: Option<Arc<ArenaTag>>,
    ) -> Self {
        debug_assert!(align.is_power_of_two());
        let state = if arena.is_some() { IN_ARENA } else { LIVE };
        let word = state | (align.trailing_zeros() as usize) << ALIGN_SHIFT;
        Record {
            addr,
            size,
            word: AtomicUsize::new(word),
            alloc,
            extra: Extra::new(arena),
        }
    }

    /// The block's address.
    pub fn addr(&self) -> usize {
        self.addr.as_ptr().expose_provenance()
    }
    /// The bytes asked for.
    pub fn size(&self) -> usize {
        self.size
    }
    /// The block's alignment.
    pub fn align(&self) -> usize {
        1 << ((self.word.load(Relaxed) & ALIGN_MASK) >> ALIGN_SHIFT)
    }
    /// The allocator that made the block.
    pub fn allocator(&self) -> &AllocCore {
        &self.alloc
    }
    /// The allocator, counted, for those who keep it beyond the record.
    pub fn allocator_arc(&self) -> Arc<AllocCore> {
        self.alloc.arc()
    }
    /// The block's state now (live, detached or dead).
    pub fn state(&self) -> State {
        decode(self.word.load(Acquire))
    }
    /// How many buffer exports pin the block now.
    pub fn pins(&self) -> usize {
        self.word.load(Acquire) >> PIN_SHIFT
    }

    /// Tracking data (allocation and free sites) for error messages, once
    /// `track` has set it.
    #[inline]
    pub fn tracked(&self) -> Option<&Tracked> {
        self.extra.tracked()
    }

    /// Sets the tracking data unless some is there already (the first
    /// stays); false when it was not set, also when its memory ran out
    /// (tracking data is for messages: losing it fails nothing).
    pub fn set_tracked(&self, tracked: Tracked) -> bool {
        self.extra.set_tracked(tracked)
    }

    /// A free of this block runs only libc and records nothing: it is no
    /// arena's, not tracked, and its allocator is plain.
    #[inline]
    pub fn frees_plainly(&self) -> bool {
        self.extra.is_empty() && self.alloc.plain()
    }

    /// Dropping the record runs only Rust and libc: its allocator is
    /// lifelong with a plain backend (so an autofree block goes back to
    /// libc), and it holds no arena or tracking data, the only parts that
    /// can hold Python objects.
    #[inline]
    pub fn drops_plainly(&self) -> bool {
        self.extra.is_empty() && self.alloc.is_lifelong() && self.alloc.plain_backend()
    }

    /// The id of the arena that owns the block now, if any.
    pub fn arena(&self) -> Option<u64> {
        self.arena_tag().map(|t| t.id)
    }
    /// The arena that owns the block now, if any.
    pub fn arena_tag(&self) -> Option<&ArenaTag> {
        let tag = self.extra.arena()?;
        (self.word.load(Acquire) & IN_ARENA != 0).then_some(tag)
    }
    /// Whether the block is freed when its last reference goes (`autofree=True`).
    pub fn is_autofree(&self) -> bool {
        self.word.load(Relaxed) & AUTOFREE != 0
    }

    /// Ok when the bytes may be accessed (live or detached).
    #[inline]
    pub fn check_access(&self) -> Result<()> {
        match decode(self.word.load(Acquire)) {
            State::Dead(d) => Err(Error::UseAfterFree(d)),
            _ => Ok(()),
        }
    }

    /// Applies `f` to the word until the CAS succeeds or `f` refuses.
    fn update(&self, mut f: impl FnMut(usize) -> Result<usize>) -> Result<usize> {
        let mut cur = self.word.load(Acquire);
        loop {
            let new = f(cur)?;
            match self.word.compare_exchange_weak(cur, new, AcqRel, Acquire) {
                Ok(_) => return Ok(cur),
                Err(now) => cur = now,
            }
        }
    }

    /// A buffer export begins: the memory stays until [`Record::unpin`].
    pub fn pin(&self) -> Result<()> {
        self.update(|w| match decode(w) {
            State::Dead(d) => Err(Error::UseAfterFree(d)),
            _ => Ok(w + PIN),
        })
        .map(drop)
    }

    /// A buffer export ends; the last one out of a dead block returns its memory.
    pub fn unpin(&self) {
        let prev = self.word.fetch_sub(PIN, AcqRel);
        debug_assert!(prev >= PIN, "unpin without pin");
        if prev >> PIN_SHIFT == 1 && is_dead(prev) {
            // Guard bytes were checked at the free, when an error could be raised.
            let _ = self.return_memory();
        }
    }

    pub(crate) fn return_memory(&self) -> Result<()> {
        if self.word.load(Acquire) & LOST != 0 {
            return Ok(()); // libc gave it to another block: not ours to return
        }
        super::observer::gone(self.addr());
        // SAFETY: called exactly once, by whoever saw the block dead with no pins.
        unsafe { self.backend().free(self.addr, self.size, self.align()) }
    }

    /// The backend that made the block's memory: its allocator's, or libc's
    /// for a block adopted as plain memory (see [`Backend::adopts_plain`]).
    #[inline]
    pub fn backend(&self) -> &dyn Backend {
        if self.is_plain_memory() {
            &Libc
        } else {
            &*self.alloc.backend
        }
    }

    /// The memory is libc's although the allocator's backend is another.
    #[inline]
    pub fn is_plain_memory(&self) -> bool {
        self.word.load(Relaxed) & PLAIN_MEMORY != 0
    }

    /// Marks a new record's memory as plain libc memory (before it is shared).
    pub(crate) fn mark_plain_memory(&self) {
        self.word.fetch_or(PLAIN_MEMORY, Relaxed);
    }

    /// The block's memory is what its allocator's C counterpart frees: not
    /// a guarded block (guard bytes around it, which C's `free` cannot take).
    fn c_can_free(&self) -> bool {
        !self.alloc.backend.adopts_plain() || self.is_plain_memory()
    }

    /// Checks that `owner_group` may free the block at `addr` (no state change).
    fn check_free(&self, word: usize, owner_group: u64, arena: u64, addr: usize) -> Result<()> {
        let owned_here = if word & IN_ARENA != 0 {
            self.extra.arena().is_some_and(|t| t.id == arena)
        } else {
            arena == 0 && owner_group == self.alloc.group
        };
        if !owned_here {
            return Err(Error::Ownership(Ownership::OtherOwner));
        }
        match decode(word) {
            State::Dead(d) => Err(Error::DoubleFree(d)),
            State::Detached => Err(Error::Ownership(Ownership::Detached)),
            State::Live if addr != self.addr() => Err(Error::Ownership(Ownership::Interior)),
            State::Live => Ok(()),
        }
    }

    /// Checks, without changing anything, that a free would be accepted.
    pub fn check_freeable(&self, owner_group: u64, arena: u64, addr: usize) -> Result<()> {
        self.check_free(self.word.load(Acquire), owner_group, arena, addr)
    }

    /// An arena hands the block to its backing allocator (it stays live and counted there).
    pub fn leave_arena(&self, arena: u64) -> Result<()> {
        self.update(|w| {
            self.check_free(w, self.alloc.group, arena, self.addr())?;
            if w & IN_ARENA == 0 {
                return Err(Error::Ownership(Ownership::OtherOwner));
            }
            Ok(w & !IN_ARENA)
        })?;
        if let Some(tag) = self.extra.arena() {
            tag.counters.on_free(self.size);
        }
        Ok(())
    }

    /// Stops counting the block: in its allocator, the process, and the arena
    /// that owned it when `word` was read.
    fn count_free(&self, word: usize) {
        self.alloc.count_free(self.size);
        if word & IN_ARENA != 0 {
            if let Some(tag) = self.extra.arena() {
                tag.counters.on_free(self.size);
            }
        }
    }

    /// C freed the block behind rsalloc's back and libc handed its memory
    /// out again (the index found a new block at its address): it dies as
    /// freed, and no later free returns memory that is no longer its own.
    /// Only the state changes here (under the index's lock, racing a free);
    /// [`Record::after_lost`] does the rest. False when it was not live.
    pub(crate) fn lose(&self) -> bool {
        let mut cur = self.word.load(Acquire);
        while decode(cur) == State::Live {
            let lost = (cur & !STATE_MASK) | FREED | LOST;
            match self.word.compare_exchange_weak(cur, lost, AcqRel, Acquire) {
                Ok(_) => {
                    self.count_free(cur);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
        false
    }

    /// A record that never made it into the index (its block is given back
    /// by the caller, or was never rsalloc's): dropping it does nothing.
    pub(crate) fn abandon(&self) {
        self.word.fetch_or(FREED | LOST, AcqRel);
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("size", &self.size)
            .field("state", &self.state())
            .field("pins", &self.pins())
            .field("allocator", &self.alloc.name)
            .finish()
    }
}

/// A call stack the binding layer captured (where a block was allocated or
/// freed): the core keeps it, drops it, and reads it only through this.
pub trait Trace: Send + Sync {
    /// Calls `each` with every frame's file, line and function, innermost
    /// first, until `each` breaks.
    fn each_frame(&self, each: &mut dyn FnMut(&str, i64, &str) -> ControlFlow<()>);
}

/// An allocation or free site, as the binding layer captured it
/// (docs/architecture.md, "What the core keeps of the binding").
pub type Site = Arc<dyn Trace>;

/// What a record carries about its tracking, for error messages.
pub struct Tracked {
    /// Registry key; 0 when the block was never registered (only a free site is known).
    pub seq: u64,
    /// The element type name the block was allocated for, for reports.
    pub ty: &'static str,
    /// Where the block was allocated, when tracking captured it.
    pub site: Option<Site>,
    /// Where the block was freed (or reallocated), when tracking saw it.
    pub freed: OnceLock<Site>,
}

/// The identity and counters of an arena that owns records.
#[derive(Debug)]
pub struct ArenaTag {
    /// The arena's identity (`new_id`), the owner word of its records.
    pub id: u64,
    /// The arena's live and total blocks and bytes.
    pub counters: Counters,
    /// The cap on the arena's live bytes (`Arena(allocator, limit=N)`),
    /// or `budget::UNLIMITED`.
    pub limit: u64,
}

impl ArenaTag {
    /// The tag of arena `id`, without a limit.
    pub fn new(id: u64) -> Self {
        Self::with_limit(id, super::budget::UNLIMITED)
    }

    /// An arena whose live bytes never pass `limit`.
    pub fn with_limit(id: u64, limit: u64) -> Self {
        ArenaTag {
            id,
            counters: Counters::new(),
            limit,
        }
    }
}

/// What only some blocks carry, in one word. A field each (the arena's
/// `Option<Arc>`, a boxed `Tracked`) made the record 48 bytes, 56 with its
/// count; one word makes them 40 and 48, exactly a size class of CPython's
/// small-object allocator (issue 6: the memory per live block).
///
/// The word is
/// - null for the common block: no arena, not tracked (one load tells the
///   plain paths so);
/// - an arena's tag (`Arc::into_raw`, holding one count) for a block made
///   in an arena: the `Option<Arc>` itself, so making such a record costs
///   nothing more than before and allocates nothing;
/// - a `Box<ExtraData>` with both parts and bit 0 set, once tracking data
///   is set: at most once, by compare-and-swap, so the word changes at most
///   once in the record's life and what a reader found stays valid until
///   the record drops (an arena's tag moves into the box with its count).
struct Extra(AtomicPtr<()>);

struct ExtraData {
    arena: Option<Arc<ArenaTag>>,
    tracked: Tracked,
}

/// Bit 0 of [`Extra`]'s word: the rest is a `Box<ExtraData>` (aligned to 8).
const DATA: usize = 1;

/// The word, decoded; raw pointers, so that the counts and the box can be
/// given back through them.
enum Word {
    Empty,
    Arena(*const ArenaTag),
    Data(*mut ExtraData),
}

impl Word {
    #[inline]
    fn of(p: *mut ()) -> Word {
        if p.is_null() {
            Word::Empty
        } else if p.addr() & DATA == 0 {
            Word::Arena(p.cast_const().cast())
        } else {
            Word::Data(p.map_addr(|a| a & !DATA).cast())
        }
    }
}

impl Extra {
    #[inline]
    fn new(arena: Option<Arc<ArenaTag>>) -> Self {
        let p = arena.map_or(std::ptr::null(), Arc::into_raw);
        Extra(AtomicPtr::new(p.cast_mut().cast()))
    }

    /// Only compared with null: nothing is read through it.
    #[inline]
    fn is_empty(&self) -> bool {
        self.0.load(Relaxed).is_null()
    }

    #[inline]
    fn word(&self) -> Word {
        Word::of(self.0.load(Acquire))
    }

    // The references below live no longer than `self`: an arena's tag lives
    // on a count the word holds (or the box that replaced it), and the box
    // is freed only by `Drop`, which has `&mut self`.

    fn arena(&self) -> Option<&ArenaTag> {
        match self.word() {
            Word::Empty => None,
            // SAFETY: see above.
            Word::Arena(tag) => Some(unsafe { &*tag }),
            // SAFETY: see above.
            Word::Data(d) => unsafe { (*d).arena.as_deref() },
        }
    }

    #[inline]
    fn tracked(&self) -> Option<&Tracked> {
        match self.word() {
            // SAFETY: see above.
            Word::Data(d) => Some(unsafe { &(*d).tracked }),
            _ => None,
        }
    }

    fn set_tracked(&self, tracked: Tracked) -> bool {
        let cur = self.0.load(Acquire);
        let arena = match Word::of(cur) {
            Word::Data(_) => return false,
            Word::Empty => None,
            // SAFETY: the word holds a count of this Arc; the box takes it
            // over if the swap below succeeds (and forgets it otherwise).
            Word::Arena(tag) => Some(unsafe { Arc::from_raw(tag) }),
        };
        let data = ExtraData { arena, tracked };
        // Not Box::new: running out of memory here must not abort.
        let layout = std::alloc::Layout::new::<ExtraData>();
        // SAFETY: ExtraData has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) }.cast::<ExtraData>();
        if p.is_null() {
            std::mem::forget(data.arena);
            return false;
        }
        // SAFETY: fresh memory with ExtraData's layout.
        unsafe { p.write(data) };
        let word = p.map_addr(|a| a | DATA).cast::<()>();
        match self.0.compare_exchange(cur, word, AcqRel, Acquire) {
            Ok(_) => true,
            Err(_) => {
                // Someone else's tracking data won; the arena's count stays theirs.
                // SAFETY: p was never published, and was allocated as a Box is.
                let mut lost = unsafe { Box::from_raw(p) };
                std::mem::forget(lost.arena.take());
                false
            }
        }
    }

    #[cold]
    fn drop_slow(p: *mut ()) {
        match Word::of(p) {
            Word::Empty => {}
            // SAFETY: gives back the count the word holds.
            Word::Arena(tag) => drop(unsafe { Arc::from_raw(tag) }),
            // SAFETY: installed once by `set_tracked`, dropped once, here.
            Word::Data(d) => drop(unsafe { Box::from_raw(d) }),
        }
    }
}

impl Drop for Extra {
    #[inline]
    fn drop(&mut self) {
        let p = *self.0.get_mut();
        if !p.is_null() {
            Self::drop_slow(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::{AllocCore, Libc, LIBC_GROUP};
    use crate::core::arena::WrapArena;
    use crate::core::layout::Request;

    fn req() -> Request {
        Request { size: 16, align: 8 }
    }

    fn tracked(seq: u64) -> Tracked {
        Tracked {
            seq,
            ty: "",
            site: None,
            freed: OnceLock::new(),
        }
    }

    #[test]
    fn a_plain_block_has_an_empty_extra_word() {
        let m = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let r = m.allocate(req(), None).unwrap();
        assert!(r.extra.is_empty());
        assert!(r.tracked().is_none() && r.arena_tag().is_none());
        m.free(&r, r.addr()).unwrap();
    }

    #[test]
    fn an_arena_block_keeps_its_arena_when_tracking_data_arrives() {
        let m = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let a = WrapArena::new(m.clone());
        let r = a.allocate(req()).unwrap();
        assert_eq!(Arc::strong_count(&a.tag), 2, "the record holds one count");
        assert!(!r.extra.is_empty() && r.tracked().is_none());
        assert_eq!(r.arena(), Some(a.id()));
        assert!(r.set_tracked(tracked(7)));
        assert!(!r.set_tracked(tracked(8)), "the first stays");
        assert_eq!(r.tracked().map(|t| t.seq), Some(7));
        assert_eq!(r.arena(), Some(a.id()));
        assert_eq!(Arc::strong_count(&a.tag), 2, "the count moved, not copied");
        // The arena still frees it; its counters still see it.
        assert!(a.release(false, |_, _| {}));
        assert_eq!(a.tag.counters.snapshot().live_count, 0);
        drop(r);
        assert_eq!(Arc::strong_count(&a.tag), 1);
    }

    #[test]
    fn racing_setters_install_tracking_data_once() {
        let m = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let a = WrapArena::new(m.clone());
        for round in 0..200 {
            let plain = m.allocate(req(), None).unwrap();
            let in_arena = a.allocate(req()).unwrap();
            for r in [&plain, &in_arena] {
                let won: usize = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..4)
                        .map(|t| s.spawn(move || r.set_tracked(tracked(t)) as usize))
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).sum()
                });
                assert_eq!(won, 1, "round {round}");
                assert!(r.tracked().is_some());
            }
            assert_eq!(in_arena.arena(), Some(a.id()));
            assert_eq!(plain.arena(), None);
            m.free(&plain, plain.addr()).unwrap();
        }
        a.release(false, |_, _| {});
        assert_eq!(
            Arc::strong_count(&a.tag),
            1,
            "every record gave its count back"
        );
    }
}
