//! Live blocks by address (DESIGN §3a): every address rsalloc hands out, at
//! a block's start or inside it, resolves to the block, so that a Pointer
//! made from an address read back from memory (a `Pointer[T]` slot, a
//! struct field, `Pointer.from_address`) is a view of that block: bounded
//! by it, dead with it, freeable at its start. It is also what keeps an
//! address from being live twice (`adopt` of a live block's address, a block
//! that C freed behind rsalloc's back and libc handed out again).
//!
//! Two structures under one lock ([`SerialMutex`]: no lock at all for a
//! caller with the serialization proof, the GIL):
//! - a radix map of 32-byte granules for small blocks (up to [`SMALL_MAX`]
//!   bytes): the granule of a block's start holds its record. glibc's
//!   chunks are at least 32 bytes apart, so no two of its blocks share a
//!   granule; a block whose granule is taken (a Python-defined allocator's
//!   closely packed blocks) goes to the list below. Three levels: a static
//!   table of 1 GiB spans (in `.bss`: untouched pages cost nothing), then
//!   tables of 16 KiB leaves, each leaf one 4 KiB page of 512 slots. A leaf
//!   page costs RSS only once touched: 8 bytes per 16-byte block on a dense
//!   heap (glibc gives a 16-byte block a 32-byte chunk). A leaf whose
//!   blocks are all gone is unmapped, [`EMPTY_KEPT`] at a time.
//! - a sorted list of spans for everything else: larger blocks, the chunks
//!   of bump-region arenas (whose blocks the region finds itself), and the
//!   small blocks whose granule was taken.
//!
//! An interior address finds its small block by scanning back at most
//! `SMALL_MAX / 32` granules to the nearest start (live blocks never
//! overlap, so only the nearest start can hold it), and its large block or
//! chunk by binary search.
//!
//! The index holds a count on each record it lists (so `free(arr[i])`
//! works after the Pointer that made the block is gone), except for
//! autofree blocks, whose last Python reference must free them: their entry
//! is tagged [`UNCOUNTED`], and the record unlists itself when it drops. A
//! record is listed exactly while its block is live (or in an arena), and
//! leaves, under the lock, before its memory can go back to libc. A reader
//! takes a count under the lock, only if the record still has one (see
//! [`RecordRef::upgrade`]), so what it returns is a reference the record's
//! state then checks on every access.
//!
//! Lately freed blocks: up to [`FREED_KEPT`] records that died by a free or
//! a realloc keep the index's count in a table (four-way set-associative by
//! address: a later free whose address maps to a full set takes its oldest
//! entry; a block freed again replaces its own and becomes the newest), so that
//! the start address of such a block, read back from memory before rsalloc
//! hands that address out again, gives a dead Pointer (`UseAfterFreeError`)
//! and not a foreign view of whatever the memory holds now, as long as the
//! memory is still rsalloc's (see [`lately_freed`]). A live block at the
//! address always wins; older frees are forgotten (their addresses read
//! back as foreign memory).

use super::block_cache;
use super::error::{Error, Ownership, Result};
use super::record::Record;
use super::record_ref::RecordRef;
use super::serial::{SerialGuard, SerialMutex, Serialized};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicU16, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};

/// Blocks up to this many bytes go in the radix map.
pub const SMALL_MAX: usize = 4096;
/// Lately freed records kept for read-back (see the module comment).
pub const FREED_KEPT: usize = FREED_SETS * FREED_WAYS;
const FREED_SETS: usize = 256;
/// One set is one 64-byte cache line.
const FREED_WAYS: usize = 4;
/// Tag of an entry that holds no count (an autofree block's).
const UNCOUNTED: usize = 1;
const GRANULE_SHIFT: u32 = 5;
const LEAF_BITS: u32 = 9;
const MID_BITS: u32 = 16;
/// Addresses the radix map covers (x86-64 and AArch64 user space with
/// 4-level page tables); others go to the list.
const ADDR_BITS: u32 = 47;
const TOP_BITS: u32 = ADDR_BITS - GRANULE_SHIFT - LEAF_BITS - MID_BITS;
const LEAF_SHIFT: u32 = GRANULE_SHIFT + LEAF_BITS;
const MID_SHIFT: u32 = LEAF_SHIFT + MID_BITS;

type Leaf = [AtomicUsize; 1 << LEAF_BITS];

/// The leaves of 1 GiB of address space, and how many entries each holds,
/// so that a leaf whose blocks are all gone can go back (see
/// [`State::give_back_empty_leaves`]).
struct Mid {
    leaves: [AtomicPtr<Leaf>; 1 << MID_BITS],
    /// Entries in each leaf, with [`QUEUED`] set while the leaf waits in
    /// [`State::empty`].
    live: [AtomicU16; 1 << MID_BITS],
}

/// Set in a leaf's count while it is listed as empty.
const QUEUED: u16 = 1 << 15;
/// Set in a leaf's count when the leaf is heap memory (see [`new_leaf`]).
const HEAP: u16 = 1 << 14;
/// Empty leaves kept before they are given back: an allocate/free loop
/// empties and refills one leaf again and again, and must not map and
/// unmap a page each time.
const EMPTY_KEPT: usize = 64;

/// A granule's entry, with its leaf's count.
#[derive(Clone, Copy)]
struct Slot {
    word: &'static AtomicUsize,
    live: &'static AtomicU16,
    /// The leaf's key (`addr >> LEAF_SHIFT`).
    key: usize,
}

impl Slot {
    #[inline]
    fn load(&self) -> usize {
        self.word.load(Relaxed)
    }
}

/// The top level: one pointer per 1 GiB span of address space. Written and
/// read only under [`STATE`]'s lock (atomics only to be a `static`).
static TOP: [AtomicPtr<Mid>; 1 << TOP_BITS] = [const { AtomicPtr::new(null_mut()) }; 1 << TOP_BITS];

/// What a span of the list stands for.
enum Target {
    /// A record's block: its entry word (see [`State::record`]).
    Record(usize),
    /// A chunk of a bump region: the region finds the block.
    Chunk(Weak<dyn ChunkOwner>),
}

struct Span {
    start: usize,
    /// Exclusive; a block of no bytes covers its start.
    end: usize,
    target: Target,
}

/// Entries of [`State::recent`] (a power of two).
const RECENT_LEAVES: usize = 16;

/// A leaf found before, with its count (see [`State::cached`]).
#[derive(Clone, Copy)]
struct CachedLeaf {
    key: usize,
    leaf: *const Leaf,
    live: *const AtomicU16,
}

impl CachedLeaf {
    /// No leaf: no address has this key.
    const NONE: CachedLeaf = CachedLeaf {
        key: usize::MAX,
        leaf: std::ptr::null(),
        live: std::ptr::null(),
    };
}

struct State {
    /// The last leaf found, by its key (`addr >> LEAF_SHIFT`): alloc/free
    /// loops touch one leaf again and again; checked inline.
    cached: CachedLeaf,
    /// Leaves found before, each in the entry its key's low bits name,
    /// asked out of line when `cached` is another: blocks the block cache
    /// hands out again lie where they were first freed, scattered over the
    /// heap (the seed `char**`'s 17 blocks over 7 leaves: `cached` alone
    /// missed 20 of its 50 lookups, the seed struct's 2 of 8; callgrind).
    /// Not instead of `cached`: indexing the table inline cost 5
    /// instructions more per lookup than the misses it saved.
    recent: [CachedLeaf; RECENT_LEAVES],
    /// Keys of leaves that became empty, given back [`EMPTY_KEPT`] at a time.
    empty: [usize; EMPTY_KEPT],
    empty_len: usize,
    /// Sorted by start; spans never overlap.
    spans: Vec<Span>,
    /// Lately freed blocks: (start, counted record word), 0 when empty,
    /// in the set [`freed_set`] of the start, newest first.
    freed: [[(usize, usize); FREED_WAYS]; FREED_SETS],
}

// SAFETY: the raw pointers are records and leaves only ever used under the
// lock; records are Sync, leaves are atomics that live for the process.
unsafe impl Send for State {}

impl State {
    /// Nothing listed.
    const fn new() -> Self {
        State {
            cached: CachedLeaf::NONE,
            recent: [CachedLeaf::NONE; RECENT_LEAVES],
            empty: [0; EMPTY_KEPT],
            empty_len: 0,
            spans: Vec::new(),
            freed: [[(0, 0); FREED_WAYS]; FREED_SETS],
        }
    }
}

static STATE: SerialMutex<State> = SerialMutex::new(State::new());

/// The record an entry word names.
///
/// # Safety
/// `w` is a listed entry word, read under the lock (the record stays valid
/// while it is listed).
unsafe fn record<'a>(w: usize) -> &'a Record {
    // SAFETY: the caller's contract.
    unsafe { &*RecordRef::record_of_word(w & !UNCOUNTED) }
}

/// The index's reference of a counted entry word, given back; None for an
/// uncounted one.
#[inline]
fn take_count(w: usize) -> Option<RecordRef> {
    // SAFETY: a counted word came from `RecordRef::into_word` when listed,
    // and is unlisted (given back) once, here.
    (w & UNCOUNTED == 0).then(|| unsafe { RecordRef::from_word(w) })
}

#[inline]
fn lock(s: Option<Serialized<'_>>) -> SerialGuard<'static, State> {
    STATE.lock(s)
}

/// Zeroed memory for a radix table: pages of its own, not heap memory
/// (Mid tables live as long as the process; empty leaves go back). A leaf taken from the heap would sit between
/// the blocks it indexes, and once they are freed split the free memory into
/// runs too short for what comes next: under an address-space limit a
/// program that freed everything could then not allocate again
/// (tests/test_oom.py).
fn table<T>() -> Option<*mut T> {
    // SAFETY: an anonymous private mapping of a non-zero size: fresh zeroed
    // pages, and all-zero bytes are valid atomics holding null / 0.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<T>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast::<T>())
}

/// A zeroed leaf, and whether it is heap memory: pages of its own, or,
/// when no mapping can be made (an address-space limit reached while the
/// heap holds memory freed by the program, which only `malloc` can use
/// again), a page-aligned heap block.
fn new_leaf() -> Option<(*mut Leaf, bool)> {
    if let Some(p) = table::<Leaf>() {
        return Some((p, false));
    }
    let size = std::mem::size_of::<Leaf>();
    let mut p: *mut libc::c_void = null_mut();
    // SAFETY: a power-of-two alignment, a multiple of the pointer size; on
    // success `p` holds `size` writable bytes, zeroed here (all-zero bytes
    // are valid atomics holding 0).
    unsafe {
        if libc::posix_memalign(&mut p, size, size) != 0 {
            return None;
        }
        std::ptr::write_bytes(p.cast::<u8>(), 0, size);
    }
    Some((p.cast(), true))
}

#[inline]
fn end_of(start: usize, size: usize) -> usize {
    start.saturating_add(size.max(1))
}

#[inline]
fn in_radix(start: usize, size: usize) -> bool {
    size <= SMALL_MAX && start >> ADDR_BITS == 0
}

impl State {
    /// The leaf holding the granule of `addr` and its count, made when
    /// `create`; None when absent (or out of memory).
    #[inline]
    fn leaf(&mut self, addr: usize, create: bool) -> Option<(&'static Leaf, &'static AtomicU16)> {
        if addr >> LEAF_SHIFT == self.cached.key {
            // SAFETY: a leaf lives until it is given back under the lock,
            // which resets the cache; its Mid lives for the process.
            return Some(unsafe { (&*self.cached.leaf, &*self.cached.live) });
        }
        self.leaf_recent(addr, create)
    }

    /// [`State::leaf`] past `cached`: the table of recent leaves, then the
    /// radix walk. Small, so that a hit in the table costs few saved registers.
    #[inline(never)]
    fn leaf_recent(
        &mut self,
        addr: usize,
        create: bool,
    ) -> Option<(&'static Leaf, &'static AtomicU16)> {
        let key = addr >> LEAF_SHIFT;
        let c = self.recent[key & (RECENT_LEAVES - 1)];
        if c.key == key {
            self.cached = c;
            // SAFETY: as for `cached`.
            return Some(unsafe { (&*c.leaf, &*c.live) });
        }
        self.leaf_slow(addr, create)
    }

    #[inline(never)]
    fn leaf_slow(
        &mut self,
        addr: usize,
        create: bool,
    ) -> Option<(&'static Leaf, &'static AtomicU16)> {
        let key = addr >> LEAF_SHIFT;
        let top = &TOP[addr >> MID_SHIFT];
        let mut mid = top.load(Relaxed);
        if mid.is_null() {
            if !create {
                return None;
            }
            mid = table::<Mid>()?;
            top.store(mid, Relaxed);
        }
        let i = key & ((1 << MID_BITS) - 1);
        // SAFETY: made above or earlier; Mid tables live for the process.
        let (slot, live) = unsafe { (&(*mid).leaves[i], &(*mid).live[i]) };
        let mut leaf = slot.load(Relaxed);
        if leaf.is_null() {
            if !create {
                return None;
            }
            let heap;
            (leaf, heap) = new_leaf()?;
            slot.store(leaf, Relaxed);
            live.store(if heap { HEAP } else { 0 }, Relaxed);
        }
        // Both from the words at hand: copied from `cached`, just stored by
        // words, the entry was read back by pairs, a stalled store forward
        // (perf, BENCHMARKS.md "The thirteenth session").
        let found = CachedLeaf { key, leaf, live };
        self.recent[key & (RECENT_LEAVES - 1)] = found;
        self.cached = found;
        // SAFETY: as above; the leaf is mapped until given back under the lock.
        Some(unsafe { (&*leaf, live) })
    }

    #[inline]
    fn slot(&mut self, addr: usize, create: bool) -> Option<Slot> {
        let (leaf, live) = self.leaf(addr, create)?;
        Some(Slot {
            word: &leaf[(addr >> GRANULE_SHIFT) & ((1 << LEAF_BITS) - 1)],
            live,
            key: addr >> LEAF_SHIFT,
        })
    }

    /// Sets an empty entry.
    #[inline]
    fn fill(&mut self, s: Slot, w: usize) {
        s.word.store(w, Relaxed);
        s.live.store(s.live.load(Relaxed) + 1, Relaxed);
    }

    /// Empties a set entry; its leaf is listed as empty when it was the last.
    #[inline]
    fn clear(&mut self, s: Slot) {
        s.word.store(0, Relaxed);
        let n = s.live.load(Relaxed) - 1;
        s.live.store(n, Relaxed);
        if n & !HEAP == 0 {
            self.list_empty(s);
        }
    }

    #[cold]
    fn list_empty(&mut self, s: Slot) {
        s.live.store(s.live.load(Relaxed) | QUEUED, Relaxed);
        if self.empty_len == EMPTY_KEPT {
            self.give_back_empty_leaves();
        }
        self.empty[self.empty_len] = s.key;
        self.empty_len += 1;
    }

    /// Unmaps the listed leaves that are still empty. A program that held
    /// many small blocks and freed them gets the leaves' pages back: under
    /// an address-space limit they are what it needs to allocate again
    /// (tests/test_oom.py). Only under the lock, and no leaf reference
    /// outlives the lock.
    fn give_back_empty_leaves(&mut self) {
        for &key in &self.empty[..self.empty_len] {
            let mid = TOP[key >> MID_BITS].load(Relaxed);
            let i = key & ((1 << MID_BITS) - 1);
            // SAFETY: a listed key's Mid exists and lives for the process.
            let (slot, live) = unsafe { (&(*mid).leaves[i], &(*mid).live[i]) };
            let n = live.load(Relaxed);
            if n & !(HEAP | QUEUED) != 0 {
                // Filled again meanwhile: kept, and listed again when it empties.
                live.store(n & !QUEUED, Relaxed);
                continue;
            }
            live.store(0, Relaxed);
            let leaf = slot.swap(null_mut(), Relaxed);
            if self.cached.key == key {
                self.cached = CachedLeaf::NONE;
            }
            let c = &mut self.recent[key & (RECENT_LEAVES - 1)];
            if c.key == key {
                *c = CachedLeaf::NONE;
            }
            // SAFETY: the leaf came from `new_leaf` (heap memory when its
            // count says so, else a mapping of its size), holds no entry,
            // and nothing refers to it any more.
            unsafe {
                if n & HEAP != 0 {
                    libc::free(leaf.cast());
                } else {
                    libc::munmap(leaf.cast(), std::mem::size_of::<Leaf>());
                }
            }
        }
        self.empty_len = 0;
    }

    /// The index of the last span starting at or below `addr`.
    fn span_at_or_below(&self, addr: usize) -> Option<usize> {
        self.spans
            .partition_point(|s| s.start <= addr)
            .checked_sub(1)
    }

    /// The entry word of the small block containing `addr`, scanning back
    /// to the nearest start.
    fn small_containing(&mut self, addr: usize) -> Option<usize> {
        if addr >> ADDR_BITS != 0 {
            return None;
        }
        let lowest = addr.saturating_sub(SMALL_MAX - 1) >> GRANULE_SHIFT;
        let mut g = addr >> GRANULE_SHIFT;
        loop {
            let at = g << GRANULE_SHIFT;
            if let Some(slot) = self.slot(at, false) {
                let w = slot.load();
                if w != 0 {
                    // SAFETY: listed, read under the lock.
                    let rec = unsafe { record(w) };
                    if rec.addr() <= addr {
                        return (addr < end_of(rec.addr(), rec.size())).then_some(w);
                    }
                    // A start past `addr` in its own granule: look further back.
                }
            } else {
                // No leaf: no block starts in its 16 KiB; skip to the one below.
                let leaf_first = (at >> LEAF_SHIFT) << LEAF_BITS;
                if leaf_first <= lowest {
                    return None;
                }
                g = leaf_first;
            }
            if g <= lowest {
                return None;
            }
            g -= 1;
        }
    }

    fn find(&mut self, addr: usize, s: Option<Serialized<'_>>) -> Option<Found> {
        if let Some(w) = self.small_containing(addr) {
            // SAFETY: listed, so valid; upgrade refuses a record whose
            // last reference is being dropped (an uncounted entry).
            return unsafe { RecordRef::upgrade(record(w), s) }.map(Found::Block);
        }
        let span = &self.spans[self.span_at_or_below(addr)?];
        if addr >= span.end {
            return None;
        }
        match &span.target {
            // SAFETY: as above.
            Target::Record(w) => unsafe { RecordRef::upgrade(record(*w), s) }.map(Found::Block),
            Target::Chunk(w) => w.upgrade().map(Found::Chunk),
        }
    }

    /// Whether a live block (or chunk) contains `addr`.
    fn occupied(&mut self, addr: usize) -> bool {
        if self.small_containing(addr).is_some() {
            return true;
        }
        self.span_at_or_below(addr)
            .is_some_and(|i| addr < self.spans[i].end)
    }

    fn insert_span(&mut self, span: Span) -> Result<()> {
        let i = self.spans.partition_point(|s| s.start < span.start);
        let overlaps = (i > 0 && self.spans[i - 1].end > span.start)
            || self.spans.get(i).is_some_and(|s| s.start < span.end);
        if overlaps {
            return Err(Error::Ownership(Ownership::AlreadyOwned));
        }
        self.spans
            .try_reserve(1)
            .map_err(|_| Error::OutOfMemory(std::mem::size_of::<Span>()))?;
        self.spans.insert(i, span);
        Ok(())
    }

    /// Unlists `rec`; the index's reference to it, if its entry held one.
    #[inline]
    fn remove_record(&mut self, rec: &Record) -> Option<RecordRef> {
        let me = RecordRef::word_of(rec);
        let (start, size) = (rec.addr(), rec.size());
        if in_radix(start, size) {
            if let Some(slot) = self.slot(start, false) {
                let w = slot.load();
                if w & !UNCOUNTED == me {
                    self.clear(slot);
                    return take_count(w);
                }
            }
        }
        self.remove_span(me, start)
    }

    #[cold]
    fn remove_span(&mut self, me: usize, start: usize) -> Option<RecordRef> {
        let i = self.span_at_or_below(start)?;
        match self.spans[i].target {
            Target::Record(w) if w & !UNCOUNTED == me => {
                // Keeps its capacity: a later insert (an undone realloc) needs no memory.
                self.spans.remove(i);
                take_count(w)
            }
            _ => None,
        }
    }

    /// Turns `rec`'s entry into an uncounted one; the count it held.
    fn uncount(&mut self, rec: &Record) -> Option<RecordRef> {
        let me = RecordRef::word_of(rec);
        let (start, size) = (rec.addr(), rec.size());
        if in_radix(start, size) {
            if let Some(slot) = self.slot(start, false) {
                let w = slot.load();
                if w == me {
                    slot.word.store(me | UNCOUNTED, Relaxed);
                    return take_count(w);
                }
            }
        }
        let i = self.span_at_or_below(start)?;
        match &mut self.spans[i].target {
            Target::Record(w) if *w == me => {
                *w = me | UNCOUNTED;
                take_count(me)
            }
            _ => None,
        }
    }

    /// Keeps a dead record's count for read-back; the one it displaces, to
    /// drop outside the lock: the previous life of the same block, or the
    /// set's oldest entry. Set-associative by address, a set to a cache
    /// line: in an allocate-free loop the record displaced is the previous
    /// life of the same block, in the set's first entry (a global ring's
    /// oldest entry was a cold line, measurable on every free), and a
    /// program that frees many blocks at once keeps them all while no more
    /// than four share a set (direct-mapped, two in 32 freed strings did).
    #[inline]
    fn keep_freed(&mut self, start: usize, r: RecordRef) -> Option<RecordRef> {
        let set = &mut self.freed[freed_set(start)];
        let word = r.into_word();
        // The entry that goes: the block's previous life, else the set's
        // oldest. Either way the new one moves to the front, the newest
        // (left in place, a previous life's slot could be the next to go,
        // pushing out a block freed just before). A loop, not `copy_within`:
        // that is a `memmove` call on every free, and in an allocate-free
        // loop the previous life is first already and nothing moves.
        let i = set
            .iter()
            .position(|e| e.0 == start && e.1 != 0)
            .unwrap_or(FREED_WAYS - 1);
        let (_, old) = set[i];
        for j in (1..=i).rev() {
            set[j] = set[j - 1];
        }
        set[0] = (start, word);
        (old != 0).then(|| take_count(old)).flatten()
    }

    /// The kept word of the block that started at `addr`, if any.
    fn freed_word(&self, addr: usize) -> Option<usize> {
        let set = &self.freed[freed_set(addr)];
        set.iter().find(|e| e.0 == addr && e.1 != 0).map(|e| e.1)
    }
}

/// The set of a freed block's start: a multiplicative hash of the address,
/// so that blocks laid out at a fixed stride (a program's array of strings,
/// freed one by one) spread over the sets instead of piling into a few of
/// them, where each fifth one pushed out a block freed moments before.
#[inline]
fn freed_set(start: usize) -> usize {
    const _: () = assert!(FREED_SETS.is_power_of_two());
    let h = ((start as u64) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> (u64::BITS - FREED_SETS.trailing_zeros())) as usize
}

/// What an address resolved to.
pub enum Found {
    /// A live block with a record (any allocator, wrapping arenas too).
    Block(RecordRef),
    /// A chunk of a bump region: [`ChunkOwner::block_at`] finds the block.
    Chunk(Arc<dyn ChunkOwner>),
}

/// What lists chunks of address space here besides records: a bump region
/// (`region::RegionCore`, the one implementation). The index sits below the
/// regions and knows them only through this.
pub trait ChunkOwner: Send + Sync {
    /// The live block holding `addr` (in one of the owner's chunks): its
    /// start, end, and the token of the generation it belongs to (`s`:
    /// the caller's serialization proof).
    fn block_at(&self, addr: usize, s: Option<Serialized<'_>>) -> Option<(usize, usize, u64)>;
    /// The owner as its own type (`region::RegionCore::of_chunk_owner`).
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// The live block (or bump-region chunk) that contains `addr`, if any.
/// `s`: the caller's serialization proof (None: the index locks), as every
/// function here takes it.
pub fn resolve(addr: usize, s: Option<Serialized<'_>>) -> Option<Found> {
    if addr == 0 {
        return None;
    }
    lock(s).find(addr, s)
}

/// Lists the block of `rec`, just made, with a count on it.
/// `exclusive` (adopt): an address inside a live block is refused
/// (`OwnershipError`). Otherwise a live record starting at the same address
/// is displaced: libc handed its memory out again, so C freed it behind
/// rsalloc's back; it dies (freed) without returning memory that is no
/// longer its own.
///
/// # Safety
/// `rec` lives in a record's shared memory (`RecordSlot::fill`), and the
/// caller holds a reference to it.
#[inline(always)]
pub(crate) unsafe fn insert(
    rec: &Record,
    exclusive: bool,
    s: Option<Serialized<'_>>,
) -> Result<()> {
    let start = rec.addr();
    // The common case, inlined: a small counted block into a free granule.
    if !exclusive && in_radix(start, rec.size()) && !rec.is_autofree() {
        let mut g = lock(s);
        if let Some(slot) = g.slot(start, true) {
            if slot.load() == 0 {
                // SAFETY: the caller's contract.
                g.fill(slot, unsafe { RecordRef::new_ref(rec, s) }.into_word());
                return Ok(());
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { insert_slow(rec, exclusive, s) }
}

/// Everything [`insert`]'s inlined case does not serve.
///
/// # Safety
/// As for [`insert`].
#[cold]
unsafe fn insert_slow(rec: &Record, exclusive: bool, s: Option<Serialized<'_>>) -> Result<()> {
    let mut lost = None;
    // SAFETY: the caller's contract.
    let r = insert_locked(
        &mut lock(s),
        unsafe { RecordRef::new_ref(rec, s) },
        exclusive,
        &mut lost,
        s,
    );
    // Outside the lock: ending its tracking entry may run Python code, and
    // so may dropping its record.
    if let Some((old, true)) = &lost {
        old.after_lost();
    }
    release(lost.map(|(old, _)| old), s);
    r
}

/// Lists `rec` (the index's own reference, given back on failure; the
/// caller holds another, so that drop only counts down).
fn insert_locked(
    g: &mut State,
    rec: RecordRef,
    exclusive: bool,
    lost: &mut Option<(RecordRef, bool)>,
    s: Option<Serialized<'_>>,
) -> Result<()> {
    let (start, size) = (rec.addr(), rec.size());
    if exclusive && (g.occupied(start) || g.occupied(end_of(start, size) - 1)) {
        return Err(Error::Ownership(Ownership::AlreadyOwned));
    }
    // An autofree block's entry holds no count (an undone realloc lists
    // one again); the caller's reference stays, so this only counts down.
    let w = if rec.is_autofree() {
        RecordRef::word_of(&rec) | UNCOUNTED
    } else {
        rec.into_word()
    };
    let small = in_radix(start, size);
    if start >> ADDR_BITS == 0 {
        if let Some(slot) = g.slot(start, small) {
            let cur = slot.load();
            // SAFETY: listed, read under the lock.
            if cur != 0 && unsafe { record(cur) }.addr() == start {
                g.clear(slot);
                *lost = lose(cur, s);
            }
            if small && slot.load() == 0 {
                g.fill(slot, w);
                return Ok(());
            }
        } else if small {
            drop(take_count(w));
            return Err(Error::OutOfMemory(std::mem::size_of::<Leaf>()));
        }
    }
    if let Some(i) = g.span_at_or_below(start) {
        if g.spans[i].start == start {
            if let Target::Record(w) = g.spans[i].target {
                g.spans.remove(i);
                *lost = lose(w, s);
            }
        }
    }
    // Large, or another block starts in this granule (closely packed blocks).
    g.insert_span(Span {
        start,
        end: end_of(start, size),
        target: Target::Record(w),
    })
    .inspect_err(|_| drop(take_count(w)))
}

/// Kills the record of entry `w`, displaced by a new block at its address,
/// under the lock (a racing free must not return memory that is the new
/// block's now); a reference to it for the rest of its ending.
/// The flag says whether it was killed here (not found dead already).
fn lose(w: usize, s: Option<Serialized<'_>>) -> Option<(RecordRef, bool)> {
    // SAFETY: listed until now, so valid under the lock.
    let old = unsafe { record(w) };
    let lost = old.lose(s);
    // SAFETY: as above.
    let r = take_count(w).or_else(|| unsafe { RecordRef::upgrade(old, s) });
    r.map(|r| (r, lost))
}

/// Drops the index's reference `r`, given back (outside the lock).
#[inline(always)]
fn release(r: Option<RecordRef>, s: Option<Serialized<'_>>) {
    if let Some(r) = r {
        r.release(s);
    }
}

/// Whether a dead record is kept for read-back: only those of the lifelong
/// allocators (malloc, calloc, the adaptive and diagnostic ones), in an
/// arena over one of them too. A record holds its allocator alive, and a
/// Python-defined allocator must be collectable once its blocks are gone;
/// an arena's tag holds only counters and a weak reference to the arena.
#[inline]
fn keeps(rec: &Record) -> bool {
    rec.allocator().is_lifelong()
}

/// Unlists the block of `rec`, which died (freed, reallocated, released):
/// its start is remembered as lately freed (see the module comment).
#[inline(always)]
pub(crate) fn remove_dead(rec: &Record, s: Option<Serialized<'_>>) {
    let evicted = {
        let mut g = lock(s);
        match g.remove_record(rec) {
            Some(r) if keeps(rec) => g.keep_freed(rec.addr(), r),
            r => r,
        }
    };
    // Outside the lock: dropping a record may run Python code.
    release(evicted, s);
}

/// Remembers `rec`, which died without being listed at the time (its
/// block was unlisted when its realloc began), as lately freed.
///
/// # Safety
/// As for [`insert`].
pub(crate) unsafe fn keep_dead(rec: &Record, s: Option<Serialized<'_>>) {
    if !keeps(rec) {
        return;
    }
    // SAFETY: the caller's contract.
    let r = unsafe { RecordRef::new_ref(rec, s) };
    let evicted = lock(s).keep_freed(rec.addr(), r);
    release(evicted, s);
}

/// Unlists the block of `rec`, which is still live but leaves rsalloc's
/// hands (detached: C may free it), or is about to move (realloc).
pub(crate) fn remove(rec: &Record, s: Option<Serialized<'_>>) {
    let r = lock(s).remove_record(rec);
    release(r, s);
}

/// The index stops counting `rec` (it became autofree: its last Python
/// reference frees it), and unlists it when it drops.
pub(crate) fn uncount(rec: &Record, s: Option<Serialized<'_>>) {
    let r = lock(s).uncount(rec);
    release(r, s);
}

/// The record of a block rsalloc freed lately whose start is `addr`, while
/// its memory is still rsalloc's: kept in the block cache, or pinned by a
/// buffer export. Memory given back to libc may be C's by now (an address
/// C stores is then its own live block), and memory the cache hands out
/// again is a live block the index finds first. Without the proof the
/// cache is not asked (the synchronised path keeps no block in it).
pub fn lately_freed(addr: usize, s: Option<Serialized<'_>>) -> Option<RecordRef> {
    let g = lock(s);
    let w = g.freed_word(addr)?;
    // SAFETY: a kept word is counted: the record is valid.
    let rec = unsafe { record(w) };
    let kept = || s.is_some_and(|s| block_cache::holds(s, addr, rec.size()));
    if rec.pins() == 0 && !kept() {
        return None;
    }
    // SAFETY: as above.
    unsafe { RecordRef::upgrade(rec, s) }
}

/// Lists a chunk of a bump region.
pub(crate) fn insert_chunk(
    region: Weak<dyn ChunkOwner>,
    start: usize,
    end: usize,
    s: Option<Serialized<'_>>,
) -> Result<()> {
    lock(s).insert_span(Span {
        start,
        end,
        target: Target::Chunk(region),
    })
}

/// Unlists the chunk starting at `start`.
pub(crate) fn remove_chunk(start: usize, s: Option<Serialized<'_>>) {
    let mut g = lock(s);
    if let Some(i) = g.span_at_or_below(start) {
        if g.spans[i].start == start && matches!(g.spans[i].target, Target::Chunk(_)) {
            let span = g.spans.remove(i);
            drop(g);
            drop(span);
        }
    }
}

/// Forgets every lately freed block (their records are dropped): their
/// starts read back as foreign memory from now on. Returns how many.
pub fn forget_lately_freed(s: Option<Serialized<'_>>) -> usize {
    let kept: Vec<RecordRef> = {
        let mut g = lock(s);
        let mut kept = Vec::new();
        if kept.try_reserve(FREED_KEPT).is_err() {
            return 0;
        }
        for e in g.freed.iter_mut().flatten() {
            let (_, w) = std::mem::take(e);
            if w != 0 {
                kept.extend(take_count(w));
            }
        }
        kept
    };
    // Outside the lock: dropping a record may run Python code.
    kept.len()
}

/// Whether a live block contains `addr` (tests).
pub fn is_indexed(addr: usize) -> bool {
    lock(None).occupied(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::{new_id, AllocCore, Libc, LIBC_GROUP};
    use crate::core::layout::array;

    fn malloc() -> Arc<AllocCore> {
        AllocCore::new("malloc", LIBC_GROUP, false, Box::new(Libc))
    }

    fn block(found: Option<Found>) -> Option<RecordRef> {
        match found {
            Some(Found::Block(r)) => Some(r),
            _ => None,
        }
    }

    /// Whether the leaf of key `key` is mapped.
    fn mapped(key: usize) -> bool {
        let mid = TOP[key >> MID_BITS].load(Relaxed);
        !mid.is_null()
            // SAFETY: a non-null Mid table lives for the process, and its
            // leaves are atomics.
            && !unsafe { &(*mid).leaves[key & ((1 << MID_BITS) - 1)] }
                .load(Relaxed)
                .is_null()
    }

    #[test]
    fn empty_leaves_are_given_back_a_batch_at_a_time() {
        // A State of its own over addresses no allocation uses (the radix
        // top is shared, its 1 GiB span here is not), with fake entry
        // words: fill and clear never read the record behind one.
        let mut g = State::new();
        let base = 0x2a5a_4000_0000usize;
        let leaf_bytes = 1usize << LEAF_SHIFT;
        let n = EMPTY_KEPT + 10;
        let key = |i: usize| (base + i * leaf_bytes) >> LEAF_SHIFT;
        for i in 0..n {
            for j in 0..3 {
                let s = g.slot(base + i * leaf_bytes + j * 32, true).unwrap();
                g.fill(s, 8);
            }
        }
        assert!((0..n).all(|i| mapped(key(i))));
        // Two of three entries gone: no leaf is empty.
        for i in 0..n {
            for j in 0..2 {
                let s = g.slot(base + i * leaf_bytes + j * 32, false).unwrap();
                g.clear(s);
            }
        }
        assert_eq!(g.empty_len, 0);
        // Leaf 0 empties and is filled again before the batch runs: kept.
        for i in 0..n {
            let s = g.slot(base + i * leaf_bytes + 64, false).unwrap();
            g.clear(s);
            if i == 0 {
                let s = g.slot(base + 64, false).unwrap();
                g.fill(s, 8);
            }
        }
        // The first batch (leaves 0..EMPTY_KEPT) ran when the next one
        // emptied: all of it unmapped but the refilled leaf 0; the rest wait.
        assert!(mapped(key(0)));
        assert!((1..EMPTY_KEPT).all(|i| !mapped(key(i))));
        assert!((EMPTY_KEPT..n).all(|i| mapped(key(i))));
        assert_eq!(g.empty_len, n - EMPTY_KEPT);
        // No cached leaf outlives its mapping: the given-back ones (in the
        // recent table before) are found absent, the waiting ones still there.
        assert!((1..EMPTY_KEPT).all(|i| g.slot(base + i * leaf_bytes, false).is_none()));
        assert!((EMPTY_KEPT..n).all(|i| g.slot(base + i * leaf_bytes, false).is_some()));
        // A given-back leaf is made again on the next insert, and reads empty.
        let s = g.slot(base + leaf_bytes, true).unwrap();
        assert_eq!(s.load(), 0);
        g.fill(s, 8);
        assert!(mapped(key(1)));
        // Leaf 0 empties again: listed again (its flag was cleared).
        let s = g.slot(base + 64, false).unwrap();
        g.clear(s);
        assert_eq!(g.empty_len, n - EMPTY_KEPT + 1);
        g.give_back_empty_leaves();
        assert!(!mapped(key(0)) && mapped(key(1)));
        assert!((EMPTY_KEPT..n).all(|i| !mapped(key(i))));
        let s = g.slot(base + leaf_bytes, false).unwrap();
        g.clear(s);
        g.give_back_empty_leaves();
        assert!(!mapped(key(1)));
    }

    #[test]
    fn every_byte_of_a_live_block_resolves_to_it_and_none_after_its_free() {
        let m = malloc();
        for size in [0usize, 1, 16, 31, 64, 4096, 4097, 100_000] {
            let r = m
                .allocate(array(size as i128, 1, 1, None).unwrap(), None, None)
                .unwrap();
            let last = r.addr() + size.max(1) - 1;
            for addr in [r.addr(), r.addr() + size / 2, last] {
                let found = block(resolve(addr, None)).expect("resolves");
                assert!(RecordRef::ptr_eq(&found, &r), "size {size}");
            }
            m.free(&r, r.addr(), None).unwrap();
            assert!(block(resolve(r.addr(), None)).is_none());
            assert!(!is_indexed(last));
        }
    }

    /// The table of lately freed blocks keeps four starts per set, newest
    /// first; a fifth takes the oldest, and a block freed again replaces its
    /// own entry (its record of the previous life).
    #[test]
    fn lately_freed_sets_keep_four_and_drop_the_oldest() {
        let m = malloc();
        let mut st = State::new();
        let recs: Vec<_> = (0..9)
            .map(|_| {
                m.allocate(array(16, 1, 1, None).unwrap(), None, None)
                    .unwrap()
            })
            .collect();
        // Six starts that share a set (found by trying, as the hash spreads
        // neighbours apart).
        let base = 0x7000_0000_0000usize;
        let starts: Vec<usize> = (0..)
            .map(|k: usize| base + k * 16)
            .filter(|&a| freed_set(a) == freed_set(base))
            .take(6)
            .collect();
        let other = (1..)
            .map(|k: usize| base + k * 16)
            .find(|&a| freed_set(a) != freed_set(base))
            .unwrap();
        for (i, &a) in starts[..4].iter().enumerate() {
            assert!(st.keep_freed(a, recs[i].clone()).is_none());
        }
        assert!(starts[..4].iter().all(|&a| st.freed_word(a).is_some()));
        // The same start again: its own entry, the set keeps the other three.
        let old = st
            .keep_freed(starts[2], recs[4].clone())
            .expect("its previous life");
        assert!(RecordRef::ptr_eq(&old, &recs[2]));
        assert!(starts[..4].iter().all(|&a| st.freed_word(a).is_some()));
        // A fifth start: the oldest (the first) goes.
        let old = st
            .keep_freed(starts[4], recs[5].clone())
            .expect("the oldest");
        assert!(RecordRef::ptr_eq(&old, &recs[0]));
        assert!(st.freed_word(starts[0]).is_none());
        assert!(starts[1..5].iter().all(|&a| st.freed_word(a).is_some()));
        assert!(st.freed_word(starts[5]).is_none());
        // The oldest start freed again (its block was handed out and freed
        // anew) is the newest now: the next start takes the one after it.
        let old = st
            .keep_freed(starts[1], recs[7].clone())
            .expect("its previous life");
        assert!(RecordRef::ptr_eq(&old, &recs[1]));
        let old = st
            .keep_freed(starts[5], recs[8].clone())
            .expect("the oldest");
        assert!(
            RecordRef::ptr_eq(&old, &recs[3]),
            "not the start freed just before"
        );
        assert!([1, 2, 4, 5]
            .iter()
            .all(|&i| st.freed_word(starts[i]).is_some()));
        // Another set is untouched.
        assert!(st.keep_freed(other, recs[6].clone()).is_none());
        for e in st.freed.iter_mut().flatten() {
            let (_, w) = std::mem::take(e);
            if w != 0 {
                drop(take_count(w));
            }
        }
        for r in &recs {
            m.free(r, r.addr(), None).unwrap();
        }
    }

    #[test]
    fn strided_starts_spread_over_the_sets() {
        // A program's array of blocks of one size, freed one by one: glibc
        // lays them out at a fixed stride. No set may take more than its
        // ways of 64 such starts, or a block freed moments before is pushed
        // out while the cache still holds it.
        for stride in [32usize, 48, 208, 4112, 1 << 12, 1 << 20] {
            for base in [0x5555_5555_0000usize, 0x7f12_3456_7000, 0x5600_0000_0010] {
                let mut per_set = [0usize; FREED_SETS];
                for k in 0..64 {
                    per_set[freed_set(base + k * stride)] += 1;
                }
                let most = per_set.iter().max().copied().unwrap_or(0);
                assert!(
                    most <= FREED_WAYS,
                    "stride {stride} base {base:#x}: {most} in one set"
                );
            }
        }
    }

    #[test]
    fn adopting_an_address_inside_a_live_block_is_refused() {
        let m = malloc();
        let r = m
            .allocate(array(64, 1, 1, None).unwrap(), None, None)
            .unwrap();
        for addr in [r.addr(), r.addr() + 8] {
            let e = m
                .adopt(addr, array(8, 1, 1, None).unwrap(), None)
                .unwrap_err();
            assert!(matches!(e, Error::Ownership(Ownership::AlreadyOwned)));
        }
        // Ending inside it counts too.
        let before = r.addr() - 8;
        assert!(m
            .adopt(before, array(16, 1, 1, None).unwrap(), None)
            .is_err());
        assert_eq!(m.counters.snapshot().live_count, 1);
        m.free(&r, r.addr(), None).unwrap();
    }

    #[test]
    fn closely_packed_blocks_of_one_granule_resolve_apart() {
        // A Python-style allocator carving 4-byte blocks out of one buffer.
        let buf = [0u8; 64];
        let base = (buf.as_ptr().expose_provenance() + 31) & !31;
        let other = AllocCore::new("packed", new_id(), false, Box::new(Libc));
        let recs: Vec<_> = (0..4)
            .map(|i| {
                other
                    .adopt(base + 4 * i, array(4, 1, 1, None).unwrap(), None)
                    .unwrap()
            })
            .collect();
        for (i, r) in recs.iter().enumerate() {
            for off in 0..4 {
                let f = block(resolve(base + 4 * i + off, None)).unwrap();
                assert!(RecordRef::ptr_eq(&f, r));
            }
        }
        for r in &recs {
            r.detach(r.addr(), None).unwrap();
        }
        assert!(resolve(base, None).is_none() && resolve(base + 12, None).is_none());
    }

    #[test]
    fn a_libc_block_handed_out_again_displaces_the_record_that_lost_it() {
        let m = malloc();
        let r = m
            .allocate(array(24, 1, 1, None).unwrap(), None, None)
            .unwrap();
        let addr = r.addr();
        // C frees the block behind rsalloc's back; libc hands it out again.
        // SAFETY: the test plays C freeing a live libc block behind rsalloc's
        // back, once; what is checked is that rsalloc never frees it again.
        unsafe { libc::free(std::ptr::with_exposed_provenance_mut::<libc::c_void>(addr)) };
        let mut again = Vec::new();
        let hit = loop {
            let n = m
                .allocate(array(24, 1, 1, None).unwrap(), None, None)
                .unwrap();
            if n.addr() == addr {
                break n;
            }
            again.push(n);
            assert!(again.len() < 64, "libc did not reuse the block");
        };
        assert!(matches!(
            r.state(),
            crate::core::record::State::Dead(crate::core::error::Death::Freed)
        ));
        // The old owner's free frees nothing: the memory is the new block's.
        assert!(matches!(m.free(&r, addr, None), Err(Error::DoubleFree(_))));
        let f = block(resolve(addr, None)).unwrap();
        assert!(RecordRef::ptr_eq(&f, &hit));
        for n in again.iter().chain([&hit]) {
            m.free(n, n.addr(), None).unwrap();
        }
        assert_eq!(m.counters.snapshot().live_count, 0);
    }

    #[test]
    fn resolutions_racing_frees_see_live_records_or_nothing() {
        let m = malloc();
        std::thread::scope(|s| {
            for t in 0..4 {
                let m = m.clone();
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..4000usize {
                        let r = m
                            .allocate(
                                array(((i * 7 + t) % 200) as i128, 1, 1, None).unwrap(),
                                None,
                                None,
                            )
                            .unwrap();
                        held.push(r);
                        if i % 2 == 1 {
                            let victim = held.swap_remove((i * 31) % held.len());
                            m.free(&victim, victim.addr(), None).unwrap();
                        }
                        let probe = held[(i * 13) % held.len()].addr() + 1;
                        if let Some(f) = block(resolve(probe, None)) {
                            // Either a block of ours or another thread's: it
                            // holds the address and its record is intact.
                            assert!(f.addr() <= probe && probe <= f.addr() + f.size().max(1));
                        }
                    }
                    for r in held {
                        m.free(&r, r.addr(), None).unwrap();
                    }
                });
            }
        });
        assert_eq!(m.counters.snapshot().live_count, 0);
    }
}
