//! The allocation record: one per block, shared (through `RecordRef`) by
//! every view of the block. It holds the owner, the size, and one atomic word
//! with the block's state and its count of buffer exports ("pins"), so that
//! liveness checks and the free/export race are decided by a single
//! compare-and-swap.
//!
//! Every live block carries one, so its size is the memory rsalloc costs per
//! block: 32 bytes, its reference count included (a 32-byte size class of
//! CPython's small-object allocator). Four words: the address, the size, the
//! state word (which also holds the alignment, the exports and the
//! reference count), and `Extra`, the allocator or, for the few blocks that
//! have more (an owning arena, tracking data), what holds it too.

use super::alloc::{AllocCore, Backend, CoreRef, Libc};
use super::error::{Death, Error, Ownership, Result};
use super::serial::Serialized;
use super::stats::Counters;
use std::ops::ControlFlow;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Arc, OnceLock};

mod lifecycle;

// Every live block has a record: keep it at 32 bytes, count included, a
// size class of CPython's small-object allocator (at 40 it would take 48).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Record>() == 32);

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
/// log2 of the block's alignment lives in the word too (a field of its own
/// would cost a word per live block). It never changes.
const ALIGN_SHIFT: u32 = 8;
const ALIGN_MASK: usize = 0x3F << ALIGN_SHIFT;
/// Buffer exports (and, on free-threaded builds, accesses under way) pinning
/// the block: 18 bits; one more is refused ([`Error::TooManyExports`]).
const PIN_SHIFT: u32 = 14;
const PIN: usize = 1 << PIN_SHIFT;
const PIN_MASK: usize = ((1 << 18) - 1) << PIN_SHIFT;
/// The reference count (what `RecordRef` counts) is the word's top 32 bits:
/// a word of its own would take the record from 32 to 40 bytes, a 48-byte
/// slot. A state change's compare-and-swap keeps the bits it finds there.
const REF_SHIFT: u32 = 32;
const REF: usize = 1 << REF_SHIFT;
const REF_MASK: usize = usize::MAX << REF_SHIFT;
/// A count that reaches 2^31 saturates: from then on it neither rises nor
/// falls, and the record is never freed (a leak, never a use after free).
/// Reaching it takes 2^31 live references, tens of GiB of Pointer objects.
const REF_SATURATED: usize = 1 << 63;

#[inline]
fn pins_of(word: usize) -> usize {
    (word & PIN_MASK) >> PIN_SHIFT
}

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
    /// The allocator; for a block made in an arena (which owns it while
    /// IN_ARENA is set) or tracked, what holds the allocator too.
    extra: Extra,
}

// SAFETY: the raw address is only an address here; all shared state is atomic.
unsafe impl Send for Record {}
// SAFETY: as for `Send`: shared access goes through atomics only.
unsafe impl Sync for Record {}

impl Record {
    /// A record for a block `alloc` just handed out (and has counted),
    /// with one reference (the one `RecordSlot::fill` returns). An arena's
    /// tag must be one of `alloc`'s arenas ([`ArenaTag::belongs_to`]).
    pub(crate) fn new(
        addr: NonNull<u8>,
        size: usize,
        align: usize,
        alloc: CoreRef,
        arena: Option<Arc<ArenaTag>>,
    ) -> Self {
        debug_assert!(align.is_power_of_two());
        debug_assert!(arena.as_ref().is_none_or(|t| t.belongs_to(&alloc)));
        let state = if arena.is_some() { IN_ARENA } else { LIVE };
        let word = REF | state | (align.trailing_zeros() as usize) << ALIGN_SHIFT;
        Record {
            addr,
            size,
            word: AtomicUsize::new(word),
            extra: Extra::new(alloc, arena),
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
    #[inline]
    pub fn allocator(&self) -> &AllocCore {
        self.extra.alloc()
    }
    /// The allocator, counted, for those who keep it beyond the record.
    pub fn allocator_arc(&self) -> Arc<AllocCore> {
        // SAFETY: the allocator came from an Arc that lives at least as
        // long as the record (see `Extra`).
        unsafe { CoreRef::arc_of(self.allocator()) }
    }
    /// The block's state now (live, detached or dead).
    pub fn state(&self) -> State {
        decode(self.word.load(Acquire))
    }
    /// How many buffer exports pin the block now.
    pub fn pins(&self) -> usize {
        pins_of(self.word.load(Acquire))
    }

    // The reference count in the word, for `RecordRef` (record_ref.rs),
    // which decides when each runs.

    /// References counted now (public for the serialized paths' tests).
    pub fn refs(&self) -> usize {
        self.word.load(Acquire) >> REF_SHIFT
    }

    /// One more reference, from a thread that holds one. `serialized`: no
    /// other thread touches the word meanwhile (a load and a store).
    #[inline]
    pub(crate) fn ref_add(&self, serialized: bool) {
        let prev = if serialized {
            let w = self.word.load(Relaxed);
            self.word.store(w.wrapping_add(REF), Relaxed);
            w
        } else {
            // Relaxed, as Arc: a new reference is made from an existing one.
            self.word.fetch_add(REF, Relaxed)
        };
        if prev & REF_SATURATED != 0 {
            self.ref_saturated_add();
        }
    }

    #[cold]
    fn ref_saturated_add(&self) {
        // Saturated: the count stays where it is (far from the carry out).
        self.word.fetch_sub(REF, Relaxed);
    }

    /// One more reference unless the count is 0 (the last reference is
    /// being dropped): how the index hands out the records it lists.
    /// `serialized` as for [`Record::ref_add`]: a load and a store.
    #[inline]
    pub(crate) fn ref_add_unless_zero(&self, serialized: bool) -> bool {
        if serialized {
            let w = self.word.load(Relaxed);
            if w >> REF_SHIFT == 0 {
                return false;
            }
            if w & REF_SATURATED == 0 {
                self.word.store(w + REF, Relaxed);
            }
            return true;
        }
        self.word
            .fetch_update(Acquire, Relaxed, |w| match w >> REF_SHIFT {
                0 => None,
                _ if w & REF_SATURATED != 0 => Some(w),
                _ => Some(w + REF),
            })
            .is_ok()
    }

    /// One reference fewer; true when it was the last (the record drops
    /// now). Acquire when it is, as Arc: every use through other references
    /// happened before. `serialized` as for [`Record::ref_add`].
    #[inline]
    pub(crate) fn ref_sub(&self, serialized: bool) -> bool {
        if serialized {
            let w = self.word.load(Acquire);
            if w >> REF_SHIFT == 1 {
                return true;
            }
            if w & REF_SATURATED == 0 {
                self.word.store(w - REF, Relaxed);
            }
            return false;
        }
        let prev = self.word.fetch_sub(REF, Release);
        if prev >> REF_SHIFT == 1 {
            std::sync::atomic::fence(Acquire);
            return true;
        }
        if prev & REF_SATURATED != 0 {
            self.ref_saturated_sub();
        }
        false
    }

    #[cold]
    fn ref_saturated_sub(&self) {
        self.word.fetch_add(REF, Relaxed);
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
        self.extra.plain_alloc().is_some_and(AllocCore::plain)
    }

    /// Dropping the record runs only Rust and libc: its allocator is
    /// lifelong with a plain backend (so an autofree block goes back to
    /// libc), and it holds no arena or tracking data, the only parts that
    /// can hold Python objects.
    #[inline]
    pub fn drops_plainly(&self) -> bool {
        self.extra
            .plain_alloc()
            .is_some_and(|a| a.is_lifelong() && a.plain_backend())
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
    /// Sets the word to `new` if it still is `cur`: a compare-and-swap, or
    /// with the serialization proof (`serialized`) a store, as the counts
    /// are (no other thread can change the word meanwhile).
    #[inline]
    fn replace_word(&self, cur: usize, new: usize, serialized: bool) -> bool {
        if serialized {
            self.word.store(new, Relaxed);
            return true;
        }
        self.word
            .compare_exchange(cur, new, AcqRel, Acquire)
            .is_ok()
    }

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
            _ if w & PIN_MASK == PIN_MASK => Err(Error::TooManyExports),
            _ => Ok(w + PIN),
        })
        .map(drop)
    }

    /// A buffer export ends; the last one out of a dead block returns its memory.
    pub fn unpin(&self, s: Option<Serialized<'_>>) {
        let prev = self.word.fetch_sub(PIN, AcqRel);
        debug_assert!(pins_of(prev) >= 1, "unpin without pin");
        if pins_of(prev) == 1 && is_dead(prev) {
            // Guard bytes were checked at the free, when an error could be raised.
            let _ = self.return_memory(s);
        }
    }

    pub(crate) fn return_memory(&self, s: Option<Serialized<'_>>) -> Result<()> {
        self.return_memory_of(self.allocator(), s)
    }

    /// [`Record::return_memory`], the allocator at hand.
    #[inline]
    pub(crate) fn return_memory_of(
        &self,
        alloc: &AllocCore,
        s: Option<Serialized<'_>>,
    ) -> Result<()> {
        let w = self.word.load(Acquire);
        if w & LOST != 0 {
            return Ok(()); // libc gave it to another block: not ours to return
        }
        super::observer::gone(self.addr());
        // SAFETY: called exactly once, by whoever saw the block dead with no pins.
        unsafe {
            if w & PLAIN_MEMORY != 0 {
                Libc.free(self.addr, self.size, self.align(), s)
            } else {
                alloc.backend_free(self.addr, self.size, self.align(), s)
            }
        }
    }

    /// The backend that made the block's memory: its allocator's, or libc's
    /// for a block adopted as plain memory (see [`Backend::adopts_plain`]).
    #[inline]
    pub fn backend(&self) -> &dyn Backend {
        if self.is_plain_memory() {
            &Libc
        } else {
            &*self.allocator().backend
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
        !self.allocator().backend.adopts_plain() || self.is_plain_memory()
    }

    /// Checks that `owner_group` may free the block at `addr` (no state change).
    fn check_free(&self, word: usize, owner_group: u64, arena: u64, addr: usize) -> Result<()> {
        let owned_here = if word & IN_ARENA != 0 {
            self.extra.arena().is_some_and(|t| t.id == arena)
        } else {
            arena == 0 && owner_group == self.allocator().group
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
    pub fn leave_arena(&self, arena: u64, s: Option<Serialized<'_>>) -> Result<()> {
        self.update(|w| {
            self.check_free(w, self.allocator().group, arena, self.addr())?;
            if w & IN_ARENA == 0 {
                return Err(Error::Ownership(Ownership::OtherOwner));
            }
            Ok(w & !IN_ARENA)
        })?;
        if let Some(tag) = self.extra.arena() {
            tag.counters.on_free(self.size, s);
        }
        Ok(())
    }

    /// Stops counting the block: in its allocator, the process, and the arena
    /// that owned it when `word` was read.
    fn count_free(&self, word: usize, s: Option<Serialized<'_>>) {
        self.allocator().count_free(self.size, s);
        if word & IN_ARENA != 0 {
            if let Some(tag) = self.extra.arena() {
                tag.counters.on_free(self.size, s);
            }
        }
    }

    /// C freed the block behind rsalloc's back and libc handed its memory
    /// out again (the index found a new block at its address): it dies as
    /// freed, and no later free returns memory that is no longer its own.
    /// Only the state changes here (under the index's lock, racing a free);
    /// [`Record::after_lost`] does the rest. False when it was not live.
    pub(crate) fn lose(&self, s: Option<Serialized<'_>>) -> bool {
        let mut cur = self.word.load(Acquire);
        while decode(cur) == State::Live {
            let lost = (cur & !STATE_MASK) | FREED | LOST;
            match self.word.compare_exchange_weak(cur, lost, AcqRel, Acquire) {
                Ok(_) => {
                    self.count_free(cur, s);
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
            .field("allocator", &self.allocator().name)
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
    /// The allocator every block of the arena comes from, uncounted: a
    /// record reaches its allocator through its arena's tag (see [`Extra`])
    /// and holds its own count of it, which keeps this valid wherever it is
    /// read. Otherwise only compared.
    alloc: NonNull<AllocCore>,
}

// SAFETY: `alloc` is only read as a shared reference to an `AllocCore`
// (Send + Sync) while a record holds a count of it; everything else is Sync.
unsafe impl Send for ArenaTag {}
// SAFETY: as for `Send`.
unsafe impl Sync for ArenaTag {}

impl ArenaTag {
    /// The tag of arena `id` over `alloc`, without a limit.
    pub fn new(id: u64, alloc: &AllocCore) -> Self {
        Self::with_limit(id, super::budget::UNLIMITED, alloc)
    }

    /// An arena over `alloc` whose live bytes never pass `limit`.
    pub fn with_limit(id: u64, limit: u64, alloc: &AllocCore) -> Self {
        ArenaTag {
            id,
            counters: Counters::new(),
            limit,
            alloc: NonNull::from(alloc),
        }
    }

    /// Whether the arena's blocks come from `alloc`: a record made with a
    /// tag finds its allocator through it.
    pub fn belongs_to(&self, alloc: &AllocCore) -> bool {
        std::ptr::eq(self.alloc.as_ptr(), alloc)
    }
}

/// The allocator, and what only some blocks carry, in one word: one word
/// each (the allocator, then the arena's `Option<Arc>` or a boxed `Tracked`)
/// made the record 40 bytes, 48 with its count, where 32 is a size class of
/// CPython's small-object allocator.
///
/// The word is
/// - the allocator (a `CoreRef`'s pointer) for the common block: no arena,
///   not tracked (one load and a test of its tag bits tell the plain paths
///   so);
/// - an arena's tag (`Arc::into_raw`, holding one count) with [`ARENA`] set
///   for a block made in an arena, whose tag names its allocator: making
///   such a record costs nothing more than before and allocates nothing;
/// - a `Box<ExtraData>` with [`DATA`] set, once tracking data is set: at
///   most once, by compare-and-swap, so the word changes at most once in the
///   record's life and what a reader found stays valid until the record
///   drops (an arena's tag moves into the box with its count).
///
/// Whichever it is, the record holds a count of its allocator unless the
/// allocator is lifelong (as `CoreRef`, given back when the record drops).
struct Extra(AtomicPtr<()>);

struct ExtraData {
    alloc: NonNull<AllocCore>,
    arena: Option<Arc<ArenaTag>>,
    tracked: Tracked,
}

/// Tag bit of [`Extra`]'s word: the rest is a `Box<ExtraData>`.
const DATA: usize = 1;
/// Tag bit of [`Extra`]'s word: the rest is an `Arc<ArenaTag>`'s pointer.
/// (Both are aligned to 8, and so is an `AllocCore`.)
const ARENA: usize = 2;
const TAGS: usize = DATA | ARENA;

/// The word, decoded; raw pointers, so that the counts and the box can be
/// given back through them.
enum Word {
    Alloc(*const AllocCore),
    Arena(*const ArenaTag),
    Data(*mut ExtraData),
}

impl Word {
    #[inline]
    fn of(p: *mut ()) -> Word {
        match p.addr() & TAGS {
            0 => Word::Alloc(p.cast_const().cast()),
            ARENA => Word::Arena(p.map_addr(|a| a & !ARENA).cast_const().cast()),
            _ => Word::Data(p.map_addr(|a| a & !DATA).cast()),
        }
    }
}

impl Extra {
    #[inline]
    fn new(alloc: CoreRef, arena: Option<Arc<ArenaTag>>) -> Self {
        let alloc = alloc.into_raw();
        let p: *mut () = match arena {
            None => alloc.as_ptr().cast(),
            Some(tag) => Arc::into_raw(tag)
                .cast_mut()
                .cast::<()>()
                .map_addr(|a| a | ARENA),
        };
        Extra(AtomicPtr::new(p))
    }

    #[inline]
    fn word(&self) -> Word {
        Word::of(self.0.load(Acquire))
    }

    // The references below live no longer than `self`: the allocator on the
    // count the record holds (or forever, a lifelong one), an arena's tag on
    // a count the word holds (or the box that replaced it), and the box is
    // freed only by `Drop`, which has `&mut self`.

    /// The allocator, when the word is nothing else (no arena, not tracked).
    #[inline]
    fn plain_alloc(&self) -> Option<&AllocCore> {
        let p = self.0.load(Acquire);
        // SAFETY: see above.
        (p.addr() & TAGS == 0).then(|| unsafe { &*p.cast_const().cast::<AllocCore>() })
    }

    #[inline]
    fn alloc(&self) -> &AllocCore {
        match self.word() {
            // SAFETY: see above.
            Word::Alloc(a) => unsafe { &*a },
            // SAFETY: see above; the tag names its records' allocator.
            Word::Arena(tag) => unsafe { (*tag).alloc.as_ref() },
            // SAFETY: see above.
            Word::Data(d) => unsafe { (*d).alloc.as_ref() },
        }
    }

    fn arena(&self) -> Option<&ArenaTag> {
        match self.word() {
            Word::Alloc(_) => None,
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
        let (alloc, arena) = match Word::of(cur) {
            Word::Data(_) => return false,
            // SAFETY: a valid allocator (see above); non-null.
            Word::Alloc(a) => (unsafe { NonNull::new_unchecked(a.cast_mut()) }, None),
            // SAFETY: the word holds a count of this Arc; the box takes it
            // over if the swap below succeeds (and forgets it otherwise).
            Word::Arena(tag) => unsafe { ((*tag).alloc, Some(Arc::from_raw(tag))) },
        };
        let data = ExtraData {
            alloc,
            arena,
            tracked,
        };
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
    fn drop_slow(&self, p: *mut ()) {
        // SAFETY: as in `drop`.
        drop(unsafe { CoreRef::from_raw(NonNull::from(self.alloc())) });
        match Word::of(p) {
            Word::Alloc(_) => {}
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
        if p.addr() & TAGS != 0 {
            return self.drop_slow(p);
        }
        // The record's count of its allocator (see `Extra`).
        // SAFETY: the pointer `CoreRef::into_raw` gave in `Extra::new`
        // (read back through the arena's tag or the box in `drop_slow`),
        // given back once; non-null.
        drop(unsafe { CoreRef::from_raw(NonNull::new_unchecked(p.cast())) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::{AllocCore, Libc, LIBC_GROUP};
    use crate::core::arena::WrapArena;
    use crate::core::error::Ownership;
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
    fn a_plain_block_s_extra_word_is_its_allocator() {
        let m = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let r = m.allocate(req(), None, None).unwrap();
        assert!(r.extra.plain_alloc().is_some());
        assert!(r.tracked().is_none() && r.arena_tag().is_none());
        m.free(&r, r.addr(), None).unwrap();
    }

    #[test]
    fn an_arena_block_keeps_its_arena_when_tracking_data_arrives() {
        let m = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let a = WrapArena::new(m.clone());
        let r = a.allocate(req(), None).unwrap();
        assert_eq!(Arc::strong_count(&a.tag), 2, "the record holds one count");
        assert!(r.extra.plain_alloc().is_none() && r.tracked().is_none());
        assert!(std::ptr::eq(r.allocator(), &*m));
        assert_eq!(r.arena(), Some(a.id()));
        assert!(r.set_tracked(tracked(7)));
        assert!(!r.set_tracked(tracked(8)), "the first stays");
        assert_eq!(r.tracked().map(|t| t.seq), Some(7));
        assert_eq!(r.arena(), Some(a.id()));
        assert_eq!(Arc::strong_count(&a.tag), 2, "the count moved, not copied");
        // The arena still frees it; its counters still see it.
        assert!(a.release(false, None, |_, _| {}));
        assert_eq!(a.tag.counters.snapshot().live_count, 0);
        drop(r);
        assert_eq!(Arc::strong_count(&a.tag), 1);
    }

    #[test]
    fn exports_past_the_pin_bits_are_refused_and_change_nothing() {
        let m = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let r = m.allocate(req(), None, None).unwrap();
        let most = PIN_MASK >> PIN_SHIFT;
        // As if `most - 1` exports were under way (the word is the record's own).
        r.word.fetch_add((most - 1) * PIN, AcqRel);
        r.pin().unwrap();
        let before = r.word.load(Acquire);
        assert!(matches!(r.pin(), Err(Error::TooManyExports)));
        assert_eq!(r.word.load(Acquire), before, "nothing changed");
        assert_eq!((r.pins(), r.refs(), r.state()), (most, 2, State::Live));
        m.free(&r, r.addr(), None).unwrap();
        assert_eq!(r.pins(), most, "freed, the memory stays while exported");
        r.word.fetch_sub((most - 1) * PIN, AcqRel);
        r.unpin(None); // the last export out returns the memory
        assert_eq!(r.pins(), 0);
    }

    #[test]
    fn a_saturated_reference_count_neither_rises_nor_falls() {
        let m = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let r = m.allocate(req(), None, None).unwrap();
        // As if 2^31 references were held besides the test's and the index's.
        r.word.fetch_add(REF_SATURATED, AcqRel);
        let before = r.refs();
        let clones: Vec<_> = (0..100).map(|_| r.clone()).collect();
        assert_eq!(r.refs(), before, "clones do not count on");
        drop(clones);
        assert_eq!(r.refs(), before, "drops do not count down");
        for serialized in [false, true] {
            r.ref_add(serialized);
            assert!(!r.ref_sub(serialized));
            assert_eq!(r.refs(), before);
        }
        for serialized in [false, true] {
            assert!(r.ref_add_unless_zero(serialized));
            assert_eq!(r.refs(), before);
        }
        // The fields below the count are untouched; the block still frees.
        assert_eq!((r.state(), r.pins(), r.align()), (State::Live, 0, 8));
        r.word.fetch_sub(REF_SATURATED, AcqRel); // the test gives them back
        assert_eq!(r.refs(), 2, "the test's and the index's");
        m.free(&r, r.addr(), None).unwrap();
    }

    #[test]
    fn references_count_in_the_top_of_the_word_and_keep_the_state_bits() {
        let m = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let r = m.allocate(req(), None, None).unwrap();
        assert_eq!(r.refs(), 2, "the test's and the index's");
        let more: Vec<_> = (0..1000).map(|_| r.clone()).collect();
        assert_eq!(r.refs(), 1002);
        r.pin().unwrap();
        assert_eq!((r.pins(), r.state(), r.align()), (1, State::Live, 8));
        drop(more);
        assert_eq!((r.refs(), r.pins()), (2, 1));
        r.unpin(None);
        r.set_autofree(None).unwrap();
        assert_eq!(r.refs(), 1, "the index holds no count on an autofree block");
        assert!(r.is_autofree());
        let live = m.counters.snapshot().live_count;
        drop(r); // the last reference frees it
        assert_eq!(m.counters.snapshot().live_count, live - 1);
    }

    #[test]
    fn an_arena_tag_of_another_allocator_is_refused() {
        let m = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let other = AllocCore::new("other", LIBC_GROUP, false, Box::new(Libc));
        let a = WrapArena::new(m.clone());
        let e = other.allocate(req(), Some(&a.tag), None).unwrap_err();
        assert!(matches!(e, Error::Ownership(Ownership::OtherOwner)));
        let buf = [0u64; 4];
        let addr = buf.as_ptr().expose_provenance();
        let e = other
            .adopt_in(addr, req(), Some(&a.tag), "", None)
            .unwrap_err();
        assert!(matches!(e, Error::Ownership(Ownership::OtherOwner)));
        assert_eq!(other.counters.snapshot().live_count, 0);
        assert_eq!(a.tag.counters.snapshot().live_count, 0);
        // Its own allocator's block finds the allocator through the tag.
        let r = a.allocate(req(), None).unwrap();
        assert!(std::ptr::eq(r.allocator(), &*m));
        assert!(std::ptr::eq(&*r.allocator_arc(), &*m));
        a.release(false, None, |_, _| {});
    }

    #[test]
    fn racing_setters_install_tracking_data_once() {
        let m = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let a = WrapArena::new(m.clone());
        for round in 0..200 {
            let plain = m.allocate(req(), None, None).unwrap();
            let in_arena = a.allocate(req(), None).unwrap();
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
            m.free(&plain, plain.addr(), None).unwrap();
        }
        a.release(false, None, |_, _| {});
        assert_eq!(
            Arc::strong_count(&a.tag),
            1,
            "every record gave its count back"
        );
    }
}
