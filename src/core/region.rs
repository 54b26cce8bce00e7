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
//!
//! Released blocks stay known while rsalloc holds their memory: a chunk
//! keeps the blocks of the generations released since its memory last came
//! from libc ([`Released`]), wherever it goes (the region's next
//! generation, the parked chunks, the first chunk a closed region holds for
//! its reopening, the kept first chunks, another region that takes a kept
//! chunk), so that an address read back from memory in one of
//! them gives a dead view ([`view_at`], [`released_view_at`]) and not a
//! foreign view of memory that now holds zeros or someone else's bytes. A
//! live block at the address always wins; a chunk given back to libc is
//! forgotten (its addresses read back as foreign memory).

use super::alloc::new_id;
use super::budget::{self, OverLimit, Scope, UNLIMITED};
use super::error::{Death, Error, Ownership, Result};
use super::index::{self, ChunkOwner};
use super::layout::{round_up, Request, MALLOC_ALIGN};
use super::serial::{SerialGuard, SerialMutex, Serialized};
use super::stats::{Snapshot, GLOBAL};
use super::sys;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Weak};

/// Size of the first chunk; each new chunk doubles it up to [`MAX_CHUNK`].
pub const FIRST_CHUNK: usize = 4096;
/// The largest shared chunk; a request above it gets a chunk of its own.
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
    /// The blocks carved out of a shared chunk, as (start, end) offsets in
    /// bump order (so sorted): how an address read back from memory finds
    /// its block (`RegionCore::block_at`). Empty for a chunk of its own,
    /// which is one block.
    blocks: Vec<(u32, u32)>,
    own: bool,
    /// The blocks of released generations, while the memory is rsalloc's.
    released: Option<Released>,
}

/// The blocks a chunk held in the generations released since its memory
/// came from libc: those of the last generation, then those of earlier ones
/// that no later block reached (an address handed out again, inside a later
/// block, is that block's). All are named by the last region that released
/// the chunk.
struct Released {
    /// The region that released them, for the dead views' owner while it
    /// lives; a region of the same `id`, closed, stands in for it after.
    region: Weak<RegionCore>,
    id: u64,
    /// The generation released: the region's state never has it again.
    token: u64,
    /// As [`Chunk::blocks`], sorted; empty for a chunk of its own.
    blocks: Vec<(u32, u32)>,
    /// How far the released generation's own blocks reached: past it the
    /// chunk is zeros already (earlier generations zeroed what they used).
    reached: u32,
}

/// A block read back in a released chunk: (start, end, what released it).
type Ghost = (usize, usize, Weak<RegionCore>, u64, u64);

// SAFETY: a chunk is plain memory owned by exactly one region.
unsafe impl Send for Chunk {}

impl Chunk {
    /// A chunk, listed in the index for `region`; a kept one with the proof.
    fn new(
        size: usize,
        align: usize,
        own: bool,
        region: &Weak<RegionCore>,
        s: Option<Serialized<'_>>,
    ) -> Result<Chunk> {
        let kept = s.and_then(|s| kept::take(s, size, align, own));
        let c = match kept {
            Some(c) => c,
            None => sys::alloc(size, align, true).map(|ptr| Chunk {
                ptr,
                size,
                blocks: Vec::new(),
                own,
                released: None,
            })?,
        };
        index::insert_chunk(
            region.clone() as Weak<dyn ChunkOwner>,
            c.start(),
            c.end(),
            s,
        )?;
        super::observer::made(c.start(), size);
        Ok(c)
    }

    /// The (start, end) of the block holding `addr`, which is in the chunk.
    fn block_at(&self, addr: usize) -> Option<(usize, usize)> {
        if self.own {
            return Some((self.start(), self.end()));
        }
        let off = (addr - self.start()) as u32;
        let i = self.blocks.partition_point(|b| b.0 <= off).checked_sub(1)?;
        let (s, e) = self.blocks[i];
        (off < e).then(|| (self.start() + s as usize, self.start() + e as usize))
    }
    /// The released block holding `addr` (in the chunk), if any.
    fn released_at(&self, addr: usize) -> Option<Ghost> {
        let r = self.released.as_ref()?;
        let (start, end) = if self.own {
            (self.start(), self.end())
        } else {
            let off = (addr - self.start()) as u32;
            let i = r.blocks.partition_point(|b| b.0 <= off).checked_sub(1)?;
            let (s, e) = r.blocks[i];
            if off >= e {
                return None;
            }
            (self.start() + s as usize, self.start() + e as usize)
        };
        Some((start, end, r.region.clone(), r.id, r.token))
    }

    fn contains(&self, addr: usize) -> bool {
        self.start() <= addr && addr < self.end()
    }

    /// The generation `token` of `region` ends: its blocks become the
    /// chunk's released blocks, with those of earlier generations past
    /// their end, and the chunk has no live block. No allocation in the
    /// steady state: the two lists trade their room.
    fn retire(&mut self, region: &Weak<RegionCore>, id: u64, token: u64) {
        let reached = self.blocks.last().map_or(0, |b| b.1);
        // A per-call arena's case first, in place: the same region releasing
        // again, its earlier blocks all within this generation's reach (the
        // last one ends there at most; blocks are sorted and disjoint). The
        // general code below then trades the lists' room, keeping nothing
        // of the earlier ones, as this does. The lists are swapped where
        // they lie: moved through a local, the list was stored by words and
        // read back by pairs, a stalled store forward at every release
        // (perf, BENCHMARKS.md "The thirteenth session").
        if let Some(old) = &mut self.released {
            let within = old
                .blocks
                .last()
                .is_none_or(|b| b.0 < reached && b.1 <= reached);
            if within && old.region.ptr_eq(region) {
                std::mem::swap(&mut old.blocks, &mut self.blocks);
                self.blocks.clear();
                old.id = id;
                old.token = token;
                old.reached = reached;
                return;
            }
        }
        let mut blocks = std::mem::take(&mut self.blocks);
        let (spare, released, region) = match self.released.take() {
            Some(mut old) => {
                // The generation's blocks take the place of the earlier
                // ones they cover; those past its reach stay. In place: a
                // per-call arena's chunk, once a big arena's first one,
                // keeps a long tail, which must not be copied per release.
                // Most often every earlier block starts below the reach
                // (the same calls again): no search then.
                let cut = match old.blocks.last() {
                    Some(b) if b.0 >= reached => old.blocks.partition_point(|b| b.0 < reached),
                    _ => old.blocks.len(),
                };
                // An earlier block this generation's reach ends inside: its
                // part past the reach stays, so that the starts of blocks
                // before it in there still read back dead.
                let remnant = cut
                    .checked_sub(1)
                    .map(|i| old.blocks[i])
                    .filter(|b| b.1 > reached)
                    .map(|b| (reached, b.1));
                let k = blocks.len() + usize::from(remnant.is_some());
                let same = old.region.ptr_eq(region);
                // The same region releasing again (a per-call arena's
                // chunk): its reference is kept, not counted up and down.
                let region = if same { old.region } else { region.clone() };
                let (mut spare, released) = if cut == old.blocks.len() && remnant.is_none() {
                    // No tail: the lists trade their room.
                    (old.blocks, blocks)
                } else if cut == k {
                    // As many as they cover (the same calls again).
                    old.blocks[..blocks.len()].copy_from_slice(&blocks);
                    if let Some(r) = remnant {
                        old.blocks[blocks.len()] = r;
                    }
                    (blocks, old.blocks)
                } else if k < cut || old.blocks.try_reserve(k - cut).is_ok() {
                    old.blocks.splice(..cut, blocks.drain(..).chain(remnant));
                    (blocks, old.blocks)
                } else {
                    // Without room for them, the earlier ones are forgotten.
                    (old.blocks, blocks)
                };
                spare.clear();
                (spare, released, region)
            }
            None => (Vec::new(), blocks, region.clone()),
        };
        self.blocks = spare;
        self.released = Some(Released {
            region,
            id,
            token,
            blocks: released,
            reached,
        });
    }

    /// Zeroes the chunk as far as its blocks reached, so that it comes out
    /// as `calloc` would give it. Only for a chunk no live block or export
    /// refers to (ending, or held by a closed region).
    fn zero_used(&mut self) {
        // Blocks are carved in address order: the last one's end is as far
        // as anything was written (a reallocated block's copy included).
        // A released chunk's are its last generation's (past them, zeros
        // already: `Released::reached`; zeroing an earlier, bigger
        // generation's reach again was 2000 instructions a per-call arena).
        let used = match &self.released {
            Some(r) => r.reached as usize,
            None => self.blocks.last().map_or(self.size, |b| b.1 as usize),
        }
        .min(self.size);
        // SAFETY: the chunk's first `used` bytes are its own, and nothing
        // refers to them any more (per the function's contract).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), 0, used) };
    }

    fn start(&self) -> usize {
        self.ptr.as_ptr().expose_provenance()
    }
    fn end(&self) -> usize {
        self.start() + self.size
    }
}

impl Chunk {
    /// The chunk goes: kept for the next region when `s` proves the
    /// outside lock held (and there is room), freed otherwise.
    fn dispose(mut self, s: Option<Serialized<'_>>) {
        self.give_back(s);
        let blocks = std::mem::take(&mut self.blocks);
        let released = self.released.take();
        std::mem::forget(self);
        drop((blocks, released));
    }

    fn give_back(&mut self, s: Option<Serialized<'_>>) {
        // Unlisted before the memory goes (parked chunks were at release).
        index::remove_chunk(self.start(), s);
        super::observer::gone(self.start());
        if s.is_some_and(|s| kept::give(s, self)) {
            return;
        }
        // SAFETY: the chunk came from sys::alloc and nothing refers to it any
        // more: its generation is dead and no export pins it.
        unsafe { sys::free(self.ptr) }
    }
}

/// Chunks given up without the proof (a region's last reference went):
/// freed, never kept. A region's release hands its chunks to
/// [`Chunk::dispose`] with the caller's proof instead.
impl Drop for Chunk {
    fn drop(&mut self) {
        self.give_back(None);
    }
}

/// Ends every chunk of `chunks` (see [`Chunk::dispose`]).
fn end_all(chunks: &mut Vec<Chunk>, s: Option<Serialized<'_>>) {
    for c in chunks.drain(..) {
        c.dispose(s);
    }
}

/// First chunks kept for the next region: an arena opened per call
/// (`with Arena() as a:` around a few allocations) otherwise pays a zeroed
/// 4 KiB `calloc` and its `free` every time, the larger part of its first
/// allocation (BENCHMARKS.md, job h). A kept chunk is zeroed as far as its
/// blocks reached when it goes back, so it comes out as `calloc` would give
/// it. On only where the block cache is ([`block_cache::enabled`]: not under
/// `PYTHONMALLOC=malloc`, whose tools must see every `free`) and with a
/// [`Serialized`](crate::core::serial::Serialized) token; at most [`KEPT`] chunks.
mod kept {
    use super::{Chunk, FIRST_CHUNK, MALLOC_ALIGN};
    use crate::core::block_cache;
    use crate::core::serial::Serialized;
    use std::cell::UnsafeCell;

    pub const KEPT: usize = 4;

    struct Kept(UnsafeCell<Vec<Chunk>>);
    // SAFETY: touched only through `kept`, which takes a `Serialized` token:
    // one outside lock covers every use.
    unsafe impl Sync for Kept {}
    static KEPT_CHUNKS: Kept = Kept(UnsafeCell::new(Vec::new()));

    fn kept(_serialized: Serialized<'_>) -> Option<&mut Vec<Chunk>> {
        // SAFETY: see `Kept`; no caller holds the reference across a call
        // back into this module (a Chunk's disposal, which calls `give`, runs
        // only outside it; a chunk dropped here is freed, not given).
        block_cache::enabled().then(|| unsafe { &mut *KEPT_CHUNKS.0.get() })
    }

    /// A kept, zeroed first chunk for a shared chunk of `size` at `align`.
    #[inline]
    pub fn take(s: Serialized<'_>, size: usize, align: usize, own: bool) -> Option<Chunk> {
        if own || size != FIRST_CHUNK || align > MALLOC_ALIGN {
            return None;
        }
        kept(s)?.pop()
    }

    /// Keeps `c` (ending) if it is a shared first chunk and there is
    /// room: true when kept, and the caller must not free it.
    pub fn give(s: Serialized<'_>, c: &mut Chunk) -> bool {
        if c.own || c.size != FIRST_CHUNK {
            return false;
        }
        let Some(list) = kept(s) else {
            return false;
        };
        if list.len() >= KEPT || (list.capacity() == 0 && list.try_reserve_exact(KEPT).is_err()) {
            return false;
        }
        c.zero_used();
        let mut blocks = std::mem::take(&mut c.blocks);
        blocks.clear();
        list.push(Chunk {
            ptr: c.ptr,
            size: c.size,
            blocks,
            own: false,
            released: c.released.take(),
        });
        true
    }

    /// The released block holding `addr` in a kept chunk, if any.
    pub fn released_at(s: Serialized<'_>, addr: usize) -> Option<super::Ghost> {
        let list = kept(s)?;
        list.iter()
            .find(|c| c.contains(addr))
            .and_then(|c| c.released_at(addr))
    }

    /// Frees every kept chunk (for tests and `_block_cache(trim=True)`).
    pub fn trim(s: Serialized<'_>) -> usize {
        kept(s).map_or(0, |list| {
            let n = list.len();
            // Not listed in the index (a drop would unlist them): free each directly.
            for mut c in list.drain(..) {
                let ptr = c.ptr;
                drop(std::mem::take(&mut c.blocks));
                drop(c.released.take());
                std::mem::forget(c);
                // SAFETY: a kept chunk came from sys::alloc; nothing refers to it.
                unsafe { crate::core::sys::free(ptr) };
            }
            n
        })
    }
}

pub use kept::trim as trim_kept_chunks;

/// A closed region's first chunk, held for the region's reopening
/// ([`Anchor::reopen`]) instead of going to the kept list: it stays in the
/// region's list and in the index, so a per-call arena's release and its
/// next first allocation skip the unlisting, the kept list, the relisting
/// and the chunk's making (BENCHMARKS.md, job h). Zeroed as a kept chunk
/// is, and its released blocks read back dead as a kept chunk's do. Only a
/// region's one and only chunk, a shared first chunk; at most [`MAX_HELD`]
/// process-wide, so that the closed arenas a program keeps hold no more
/// than that between them (a release frees everything else); on only where
/// kept chunks are, and with the proof.
mod held {
    use super::{Chunk, FIRST_CHUNK};
    use crate::core::block_cache;
    use crate::core::serial::Serialized;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    pub const MAX_HELD: usize = 4;
    /// Chunks held now. Taken only with the proof; given back also without
    /// it (a region dropped on any thread), hence an atomic, updated by a
    /// load and a store where the proof is (a locked read-modify-write is
    /// some 20 cycles, two per per-call arena).
    static HELD: AtomicUsize = AtomicUsize::new(0);

    /// Whether a closed region's chunk list is one held chunk; counted in
    /// [`HELD`] while set, however the region ends.
    #[derive(Default)]
    pub struct Mark(bool);

    impl Drop for Mark {
        fn drop(&mut self) {
            self.clear(None);
        }
    }

    impl Mark {
        /// Holds the closing region's `chunks` (none alive or exported),
        /// if they are one first chunk and there is room: true when held.
        pub fn hold(&mut self, _proof: Serialized<'_>, chunks: &mut [Chunk]) -> bool {
            let [c] = chunks else { return false };
            let room = HELD.load(Relaxed) < MAX_HELD && block_cache::enabled();
            if c.own || c.size != FIRST_CHUNK || !room {
                return false;
            }
            HELD.store(HELD.load(Relaxed) + 1, Relaxed);
            self.0 = true;
            c.zero_used();
            // As if it went back: tracemalloc sees it again at its first
            // block after a reopening (`Inner::bump_held`).
            super::super::observer::gone(c.start());
            true
        }

        pub fn is_set(&self) -> bool {
            self.0
        }

        /// Ends the hold: true when there was one.
        pub fn clear(&mut self, s: Option<Serialized<'_>>) -> bool {
            let was = std::mem::take(&mut self.0);
            if was {
                if s.is_some() {
                    HELD.store(HELD.load(Relaxed) - 1, Relaxed);
                } else {
                    HELD.fetch_sub(1, Relaxed);
                }
            }
            was
        }
    }

    /// Chunks held now (for tests).
    pub fn count() -> usize {
        HELD.load(Relaxed)
    }
}

pub use held::count as held_chunks;

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
    /// The cap on `bytes` (`Arena(limit=N)`), or UNLIMITED.
    limit: u64,
    /// Buffer exports of any generation still open.
    pins: usize,
    /// Chunks of released generations that exports still look into.
    parked: Vec<Chunk>,
    /// Set while the region is closed and `chunks` is a first chunk kept
    /// for its reopening ([`held`]).
    held: held::Mark,
    /// Set from a reopening with a held chunk until the first shared block:
    /// `chunks[0]` is that chunk, not yet in use (`grow` starts bumping it).
    first_unused: bool,
    /// The blocks reallocated in this generation (dead early), as (start,
    /// end), sorted. A view carries its address, not its block's start, so
    /// an access looks up the block whose range holds the address; every
    /// access to the region's blocks looks here once any exist. A vector,
    /// not a BTreeMap: its room is reserved fallibly.
    dead: Vec<(usize, usize)>,
}

/// What `repr(arena)` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Live blocks.
    pub count: u64,
    /// Their bytes (asked for).
    pub bytes: usize,
    /// Chunks in use.
    pub chunks: usize,
    /// Bytes of those chunks.
    pub reserved: usize,
    /// Chunks kept mapped for pinned exports of released blocks.
    pub parked: usize,
    /// Whether the arena was released for good.
    pub closed: bool,
}

/// The bump region behind `Arena()`: chunks carved by a bump pointer, released all at once; each
/// release starts a new generation.
pub struct RegionCore {
    /// The region's identity (`new_id`), as its blocks' owner; a new one
    /// when it is reopened for a new owner ([`Anchor::reopen`]).
    id: AtomicU64,
    /// Itself, for the index's entries of its chunks.
    me: Weak<RegionCore>,
    /// generation × 2 | CLOSED.
    state: AtomicU64,
    /// `inner.dead.len()`, readable without the lock on the access path.
    dead_count: AtomicUsize,
    inner: SerialMutex<Inner>,
    /// The address of the binding layer's object for this region while
    /// that object lives, else 0: set and cleared by the binding layer,
    /// which says when it may be read.
    pub object: AtomicUsize,
}

impl Inner {
    /// Inlined into the arena's entry point, as before blocks were listed:
    /// out of line it cost ~60 instructions a block (callgrind).
    #[inline(always)]
    fn bump(
        &mut self,
        size: usize,
        align: usize,
        me: &Weak<RegionCore>,
        s: Option<Serialized<'_>>,
    ) -> Result<usize> {
        // Every block advances by at least a byte, so addresses are unique.
        let size = size.max(1);
        if let (Some(at), Some(i)) = (round_up(self.cur, align), self.bump) {
            if at.checked_add(size).is_some_and(|e| e <= self.end) {
                let c = &mut self.chunks[i];
                if c.blocks.len() == c.blocks.capacity() {
                    Self::room_for_one(&mut c.blocks, size)?;
                }
                let off = at - c.start();
                // Shared chunks are at most MAX_CHUNK bytes: offsets fit.
                c.blocks.push((off as u32, (off + size) as u32));
                self.cur = at + size;
                return Ok(at);
            }
        }
        if self.first_unused {
            return self.first_in_held(size, align, me, s);
        }
        self.grow(size, align, me, s)
    }

    /// The first block since a reopening: a shared one starts bumping the
    /// held chunk, a big one gets a chunk of its own (`grow`, which
    /// leaves the held one unused). Apart from `grow`, whose frame costs
    /// more than this (a per-call arena's first block, callgrind).
    #[inline(never)]
    fn first_in_held(
        &mut self,
        size: usize,
        align: usize,
        me: &Weak<RegionCore>,
        s: Option<Serialized<'_>>,
    ) -> Result<usize> {
        if self.owns_a_chunk(size, align) {
            return self.grow(size, align, me, s);
        }
        self.bump_held(true);
        self.bump(size, align, me, s)
    }

    /// Whether a block of `size` at `align` gets a chunk of its own.
    fn owns_a_chunk(&self, size: usize, align: usize) -> bool {
        align > CHUNK_ALIGN_LIMIT || size > self.next_size / 2
    }

    /// Starts bumping the chunk a closed region held ([`held`]), zeroed
    /// and listed, as the generation's first chunk (what `grow` would have
    /// made); it is in use from here, for tracemalloc too.
    fn bump_held(&mut self, report: bool) {
        self.first_unused = false;
        let c = &self.chunks[0];
        if report {
            super::observer::made(c.start(), c.size);
        }
        self.cur = c.start();
        self.end = c.end();
        self.bump = Some(0);
        self.next_size = (FIRST_CHUNK * 2).min(MAX_CHUNK);
    }

    #[cold]
    fn room_for_one(blocks: &mut Vec<(u32, u32)>, size: usize) -> Result<()> {
        blocks.try_reserve(1).map_err(|_| Error::OutOfMemory(size))
    }

    #[cold]
    fn grow(
        &mut self,
        size: usize,
        align: usize,
        me: &Weak<RegionCore>,
        s: Option<Serialized<'_>>,
    ) -> Result<usize> {
        // The held chunk of a reopening is started by `first_in_held`.
        let own = self.owns_a_chunk(size, align);
        self.chunks
            .try_reserve(1)
            .map_err(|_| Error::OutOfMemory(size))?;
        if own {
            // A big block gets a chunk of its own: the bump chunk stays for
            // the small ones, and no chunk is mostly wasted padding.
            let c = Chunk::new(size, align, true, me, s)?;
            let at = c.start();
            self.chunks.push(c);
            return Ok(at);
        }
        let mut c = Chunk::new(self.next_size, align.max(MALLOC_ALIGN), false, me, s)?;
        c.blocks
            .try_reserve(16)
            .map_err(|_| Error::OutOfMemory(size))?;
        c.blocks.push((0, size as u32));
        let at = c.start();
        self.cur = at + size;
        self.end = c.end();
        self.bump = Some(self.chunks.len());
        self.chunks.push(c);
        self.next_size = (self.next_size * 2).min(MAX_CHUNK);
        Ok(at)
    }

    /// Checks `n` bytes (replacing `replaces` bytes of a realloc) against
    /// the region's limit and charges them to the process's limit when one
    /// is set: true when charged there (see [`super::budget`]).
    #[inline(always)]
    fn charge(&self, n: usize, replaces: usize) -> Result<bool> {
        if self.limit != UNLIMITED {
            let after = (self.bytes as u128 + n as u128).saturating_sub(replaces as u128);
            if after > self.limit as u128 {
                return Err(Error::OverLimit(OverLimit {
                    scope: Scope::Arena,
                    limit: self.limit,
                    live: self.bytes as u64,
                    request: n as u64,
                }));
            }
        }
        if budget::process_limited() {
            let limit = budget::process_max();
            GLOBAL
                .reserve(n as u64, replaces as u64, limit, None)
                .map_err(|live| {
                    Error::OverLimit(OverLimit {
                        scope: Scope::Process,
                        limit,
                        live,
                        request: n as u64,
                    })
                })?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Gives back a charge whose allocation failed.
    #[cold]
    fn uncharge(&self, charged: bool, n: usize) {
        if charged {
            GLOBAL.unreserve(n as u64, None);
        }
    }

    /// Bumps a block of `size` at `align` that replaces `replaces` bytes,
    /// within the limits.
    #[inline(always)]
    fn bump_charged(
        &mut self,
        size: usize,
        align: usize,
        replaces: usize,
        me: &Weak<RegionCore>,
        s: Option<Serialized<'_>>,
    ) -> Result<(usize, bool)> {
        let charged = self.charge(size, replaces)?;
        match self.bump(size, align, me, s) {
            Ok(at) => Ok((at, charged)),
            Err(e) => {
                self.uncharge(charged, size);
                Err(e)
            }
        }
    }

    fn count_alloc(&mut self, size: usize, charged: bool, s: Option<Serialized<'_>>) {
        self.count += 1;
        self.total_allocs += 1;
        self.bytes += size;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        if charged {
            // A realloc counts its old block free first: nothing to credit.
            GLOBAL.on_alloc_reserved(None);
            GLOBAL.raise_peak(0, budget::process_max());
        } else {
            GLOBAL.on_alloc(size, s);
        }
    }

    fn count_free(&mut self, count: u64, bytes: usize, s: Option<Serialized<'_>>) {
        self.count -= count;
        self.total_frees += count;
        self.bytes -= bytes;
        GLOBAL.on_free_many(count, bytes, s);
    }

    /// Parks chunks that exports still look into; they go back at the last unpin.
    fn park(&mut self, chunks: Vec<Chunk>, s: Option<Serialized<'_>>) {
        if self.parked.try_reserve(chunks.len()).is_ok() {
            self.parked.extend(chunks);
        } else {
            // No room to remember them: leaking is the only safe choice
            // while a view still points into them.
            for c in &chunks {
                index::remove_chunk(c.start(), s);
            }
            std::mem::forget(chunks);
        }
    }
}

impl RegionCore {
    /// A region without a limit.
    pub fn new() -> Arc<Self> {
        Self::with_limit(UNLIMITED)
    }

    /// A region whose live bytes (bytes asked for) never pass `limit`.
    pub fn with_limit(limit: u64) -> Arc<Self> {
        Self::make(new_id(), limit, 0)
    }

    fn make(id: u64, limit: u64, state: u64) -> Arc<Self> {
        Arc::new_cyclic(|me| RegionCore {
            me: me.clone(),
            id: AtomicU64::new(id),
            state: AtomicU64::new(state),
            dead_count: AtomicUsize::new(0),
            inner: SerialMutex::new(Inner {
                next_size: FIRST_CHUNK,
                limit,
                ..Inner::default()
            }),
            object: AtomicUsize::new(0),
        })
    }

    /// The region's state, locked unless `s` proves the outside lock held;
    /// every operation here takes the caller's proof (None: it locks).
    fn lock(&self, s: Option<Serialized<'_>>) -> SerialGuard<'_, Inner> {
        self.inner.lock(s)
    }

    /// The region's identity, as its blocks' owner.
    pub fn id(&self) -> u64 {
        self.id.load(Relaxed)
    }

    /// Whether the region was released for good (closed).
    pub fn is_closed(&self) -> bool {
        self.state.load(Acquire) & CLOSED != 0
    }

    /// A zeroed block of `req.size` bytes at `req.align`: (address, token).
    /// Inlined into the arena's entry point (through [`Anchor::allocate`]):
    /// its stack frame and calls cost more than its work.
    #[inline(always)]
    pub fn allocate(&self, req: Request, s: Option<Serialized<'_>>) -> Result<(usize, u64)> {
        let mut g = self.lock(s);
        let state = self.state.load(Relaxed);
        if state & CLOSED != 0 {
            return Err(Error::ArenaClosed);
        }
        let (at, charged) = g.bump_charged(req.size, req.align, 0, &self.me, s)?;
        // Counted under the lock so that a racing release never sees (and
        // un-counts) an allocation before it was counted.
        g.count_alloc(req.size, charged, s);
        Ok((at, state))
    }

    /// Ok when a view at `addr` of a block handed out with `token` may be
    /// accessed.
    #[inline]
    pub fn check(&self, token: u64, addr: usize, s: Option<Serialized<'_>>) -> Result<()> {
        if self.state.load(Acquire) != token {
            return Err(Error::UseAfterFree(Death::Released));
        }
        if self.dead_count.load(Acquire) != 0 {
            return self.check_locked(&self.lock(s), token, addr);
        }
        Ok(())
    }

    fn check_locked(&self, g: &Inner, token: u64, addr: usize) -> Result<()> {
        if self.state.load(Relaxed) != token {
            return Err(Error::UseAfterFree(Death::Released));
        }
        // Blocks never overlap, so the last dead block starting at or below
        // `addr` is the only one that can hold it. A view of no bytes just
        // past a dead block's end is not found: it reaches nothing.
        let i = g.dead.partition_point(|&(start, _)| start <= addr);
        if i > 0 && addr < g.dead[i - 1].1 {
            return Err(Error::UseAfterFree(Death::Reallocated));
        }
        Ok(())
    }

    /// A buffer export of a live block begins: the region's chunks stay
    /// until [`RegionCore::unpin`].
    pub fn pin(&self, token: u64, addr: usize, s: Option<Serialized<'_>>) -> Result<()> {
        let mut g = self.lock(s);
        self.check_locked(&g, token, addr)?;
        g.pins += 1;
        Ok(())
    }

    /// A buffer export ends; the last one returns the parked chunks.
    pub fn unpin(&self, s: Option<Serialized<'_>>) {
        let mut parked = {
            let mut g = self.lock(s);
            debug_assert!(g.pins > 0, "unpin without pin");
            g.pins = g.pins.saturating_sub(1);
            if g.pins == 0 {
                std::mem::take(&mut g.parked)
            } else {
                Vec::new()
            }
        };
        end_all(&mut parked, s);
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
        s: Option<Serialized<'_>>,
    ) -> Result<(usize, u64)> {
        let mut g = self.lock(s);
        self.check_locked(&g, token, base)?;
        g.dead
            .try_reserve(1)
            .map_err(|_| Error::OutOfMemory(req.size))?;
        let (at, charged) = g.bump_charged(req.size, req.align, old, &self.me, s)?;
        // SAFETY: both blocks are live in this region and distinct (bump
        // memory is never handed out twice); each holds min(old, new) bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                std::ptr::with_exposed_provenance::<u8>(base),
                std::ptr::with_exposed_provenance_mut::<u8>(at),
                old.min(req.size),
            )
        };
        // Bump blocks take at least a byte (see `bump`).
        let i = g.dead.partition_point(|&(start, _)| start < base);
        g.dead.insert(i, (base, base + old.max(1)));
        self.dead_count.store(g.dead.len(), Release);
        // The old block first: the live bytes never count both.
        g.count_free(1, old, s);
        g.count_alloc(req.size, charged, s);
        Ok((at, token))
    }

    /// Kills every block of the current generation and returns the chunks
    /// (those pinned by exports when the last export ends). With `reuse`,
    /// the bump chunk is kept, re-zeroed, for the next generation, and the
    /// region stays open; otherwise it is closed for good. Returns false when
    /// the region was already closed (nothing to do).
    pub fn release(&self, reuse: bool, s: Option<Serialized<'_>>) -> bool {
        self.end_generation(reuse, false, s)
    }

    /// [`RegionCore::release`] for good, holding the first chunk for a
    /// reopening ([`held`]): only for an owner that calls
    /// [`RegionCore::let_go`] with the proof when it goes unreopened, so
    /// that the chunk is then kept for the next region, not freed.
    pub fn close_holding(&self, s: Serialized<'_>) -> bool {
        self.end_generation(false, true, Some(s))
    }

    /// The region's owner goes (its object dealloc'd), with the proof: its
    /// chunks go now, the first one to the kept list for the next region,
    /// not held for a reopening that will not come ([`held`]).
    pub fn let_go(&self, s: Serialized<'_>) {
        if self.end_generation(false, false, Some(s)) {
            return;
        }
        let mut g = self.lock(Some(s));
        if g.held.clear(Some(s)) {
            let mut chunks = std::mem::take(&mut g.chunks);
            drop(g);
            end_all(&mut chunks, Some(s));
        }
    }

    /// [`RegionCore::release`]; a closing one holds its first chunk if
    /// `may_hold` (and there is room).
    fn end_generation(&self, reuse: bool, may_hold: bool, s: Option<Serialized<'_>>) -> bool {
        // Closed is for good: seen closed, there is nothing to lock for (an
        // arena's drop, after its owner released it with the proof).
        if self.is_closed() {
            return false;
        }
        let mut g = self.lock(s);
        let state = self.state.load(Relaxed);
        if state & CLOSED != 0 {
            return false;
        }
        if g.first_unused {
            // Released before its first allocation: bumped as from the
            // start (a release reusing it keeps it), never reported made.
            g.bump_held(false);
        }
        let next = (state & !CLOSED).wrapping_add(GENERATION) | if reuse { 0 } else { CLOSED };
        self.state.store(next, Release);
        let (count, bytes) = (g.count, g.bytes);
        g.count_free(count, bytes, s);
        g.dead.clear();
        self.dead_count.store(0, Release);
        let id = self.id();
        for c in &mut g.chunks {
            c.retire(&self.me, id, state);
        }
        let bump = g.bump.take();
        let used_to = std::mem::take(&mut g.cur);
        g.end = 0;
        if g.pins > 0 {
            // Exports look into these chunks: none can be reused or freed
            // yet, and none holds a live block. They stay listed: their
            // released blocks read back dead.
            let chunks = std::mem::take(&mut g.chunks);
            g.park(chunks, s);
            return true;
        }
        let inner = &mut *g;
        if s.is_some_and(|s| !reuse && may_hold && inner.held.hold(s, &mut inner.chunks)) {
            // Listed as it was, and kept in place.
            return true;
        }
        let mut chunks = std::mem::take(&mut g.chunks);
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
        end_all(&mut chunks, s);
        // The emptied list's room goes back for the next generation (or the
        // next owner, `Anchor::reopen`): its first chunk then reserves
        // nothing (a per-call arena's first allocation, BENCHMARKS.md).
        let mut g = self.lock(s);
        if g.chunks.capacity() == 0 {
            g.chunks = chunks;
        }
        true
    }

    /// The cap on the region's live bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        budget::as_option(self.lock(None).limit)
    }

    /// The live block of this region holding `addr` (an address read back
    /// from memory, found in one of its chunks by the index): its start,
    /// end, and the token of the generation it belongs to.
    pub fn block_at(&self, addr: usize, s: Option<Serialized<'_>>) -> Option<(usize, usize, u64)> {
        match self.find(addr, s)? {
            Found::Live(start, end, token) => Some((start, end, token)),
            Found::Released(_) => None,
        }
    }

    /// The live block, else the released one, holding `addr` in one of the
    /// region's chunks (current or parked).
    fn find(&self, addr: usize, s: Option<Serialized<'_>>) -> Option<Found> {
        let g = self.lock(s);
        let state = self.state.load(Relaxed);
        if let Some(c) = g.chunks.iter().find(|c| c.contains(addr)) {
            if state & CLOSED == 0 {
                if let Some((start, end)) = c.block_at(addr) {
                    return Some(Found::Live(start, end, state));
                }
            }
            return c.released_at(addr).map(Found::Released);
        }
        let c = g.parked.iter().find(|c| c.contains(addr))?;
        c.released_at(addr).map(Found::Released)
    }

    /// A closed region standing in for the released region `id`, gone
    /// since: what a dead view of one of its blocks refers to.
    fn gone(id: u64) -> Arc<Self> {
        Self::make(id, UNLIMITED, CLOSED)
    }

    /// The region's counters (exact: taken under the lock).
    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock(None);
        Snapshot {
            live_count: g.count,
            live_bytes: g.bytes as u64,
            peak_bytes: g.peak_bytes as u64,
            total_allocs: g.total_allocs,
            total_frees: g.total_frees,
        }
    }

    /// The counts `repr(arena)` shows.
    pub fn usage(&self) -> Usage {
        let g = self.lock(None);
        // A held chunk is not in use (it stands for a kept one), nor is it
        // after a reopening until the first shared block: it is the first.
        let unused = usize::from(g.held.is_set() || g.first_unused);
        Usage {
            count: g.count,
            bytes: g.bytes,
            chunks: g.chunks.len() - unused,
            reserved: g.chunks.iter().skip(unused).map(|c| c.size).sum(),
            parked: g.parked.len(),
            closed: self.is_closed(),
        }
    }
}

impl std::fmt::Debug for RegionCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionCore")
            .field("id", &self.id())
            .field("usage", &self.usage())
            .finish()
    }
}

/// One generation of a region as its blocks' Pointers see it: the region
/// and the token its blocks were handed out with. Every Pointer into a
/// region holds a [`RegionRef`] to one; a release starts a new generation,
/// so an arena makes a few of these in its life, not one per block.
struct Generation {
    /// References to this generation; by a caller with the serialization
    /// proof ([`Serialized`]) counted with a plain load and store.
    refs: AtomicUsize,
    token: u64,
    region: Arc<RegionCore>,
}

/// Set in every [`RegionRef`] word, so that a Pointer's owner (one word)
/// tells a region reference from a record reference (aligned, bit clear).
pub const REGION_TAG: usize = 0b01;
/// The view starts its block: only such a view may free or realloc it.
const START: usize = 0b10;
const TAGS: usize = REGION_TAG | START;

/// A Pointer's reference to its block in a region: one word, the address
/// of the block's [`Generation`] with [`REGION_TAG`] and, for a view at the
/// block's start, [`START`].
///
/// One word rather than (region, token, start address): every live Pointer
/// carries its owner, and the word is what lets a Pointer object fit in 48
/// bytes. The block's start is not needed for access: a block that dies
/// before its generation (realloc) is found by address range
/// ([`RegionCore::check`]).
#[repr(transparent)]
pub struct RegionRef(NonNull<u8>);

// SAFETY: as Arc<Generation>: the generation is immutable but for its count,
// which is atomic but for callers with the serialization proof.
unsafe impl Send for RegionRef {}
// SAFETY: as for `Send`: shared access reads the immutable generation or counts atomically
// (with the serialization proof: under the outside lock).
unsafe impl Sync for RegionRef {}

impl RegionRef {
    /// The generation's address: the word without its tag bits.
    fn generation_ptr(&self) -> *mut Generation {
        self.0.as_ptr().map_addr(|a| a & !TAGS).cast()
    }

    fn generation(&self) -> &Generation {
        // SAFETY: the generation lives while any reference to it does.
        unsafe { &*self.generation_ptr() }
    }

    /// A reference to a new generation object (count 1); fails instead of aborting.
    fn new_generation(region: &Arc<RegionCore>, token: u64) -> Result<Self> {
        let layout = std::alloc::Layout::new::<Generation>();
        // SAFETY: Generation has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) } as *mut Generation;
        if p.is_null() {
            return Err(Error::OutOfMemory(layout.size()));
        }
        // SAFETY: p is fresh memory for a Generation.
        unsafe {
            p.write(Generation {
                refs: AtomicUsize::new(1),
                token,
                region: region.clone(),
            })
        };
        // SAFETY: p is non-null; a Generation is aligned to 8, so the tag bits are free.
        Ok(RegionRef(unsafe {
            NonNull::new_unchecked(p.cast::<u8>().map_addr(|a| a | REGION_TAG))
        }))
    }

    /// A reference for a view at `addr` of a block of `region` handed out
    /// with `token`, found by address ([`RegionCore::block_at`]); `start`:
    /// the view is at the block's start.
    pub fn resolved(region: &Arc<RegionCore>, token: u64, start: bool) -> Result<Self> {
        let r = Self::new_generation(region, token)?;
        Ok(if start { r.starting() } else { r })
    }

    /// The tagged pointer, for a Pointer's owner; undone by
    /// [`RegionRef::from_raw`].
    pub fn into_raw(self) -> NonNull<u8> {
        let p = self.0;
        std::mem::forget(self);
        p
    }

    /// # Safety
    /// `p` came from [`RegionRef::into_raw`] and is given back once.
    pub unsafe fn from_raw(p: NonNull<u8>) -> Self {
        debug_assert!(p.as_ptr().addr() & REGION_TAG != 0);
        RegionRef(p)
    }

    #[inline]
    /// The region the referenced generation belongs to.
    pub fn region(&self) -> &RegionCore {
        &self.generation().region
    }

    /// The generation's token: the state the region had when its blocks were handed out.
    pub fn token(&self) -> u64 {
        self.generation().token
    }

    /// Whether the view this reference belongs to starts its block.
    pub fn is_start(&self) -> bool {
        self.0.as_ptr().addr() & START != 0
    }

    /// Another reference, for a view at `same_start` (false: inside the
    /// block); `s`: the caller's serialization proof.
    #[inline]
    pub fn view(&self, same_start: bool, s: Option<Serialized<'_>>) -> Self {
        let p = self.0.as_ptr();
        let p = if same_start {
            p
        } else {
            p.map_addr(|a| a & !START)
        };
        self.add_ref(s);
        // SAFETY: this reference's pointer, perhaps without START: non-null
        // (the generation's address has no tag bits).
        RegionRef(unsafe { NonNull::new_unchecked(p) })
    }

    /// This reference, for a view at its block's start.
    fn starting(self) -> Self {
        let p = self.into_raw().as_ptr().map_addr(|a| a | START);
        // SAFETY: the pointer of a reference just given up, with a free tag
        // bit set: non-null.
        unsafe { RegionRef::from_raw(NonNull::new_unchecked(p)) }
    }

    /// Whether this is a reference to `r`.
    pub fn is_in(&self, r: &Arc<RegionCore>) -> bool {
        std::ptr::eq(self.region(), Arc::as_ptr(r))
    }

    /// Dropping this reference only counts down: other references to its
    /// generation remain (the arena holds the current one), or someone else
    /// holds the region, so nothing else is dropped. Exact when no other
    /// thread drops references meanwhile (under the GIL).
    pub fn drops_to_a_count(&self) -> bool {
        let g = self.generation();
        g.refs.load(Acquire) > 1 || Arc::strong_count(&g.region) > 1
    }

    #[inline]
    fn add_ref(&self, s: Option<Serialized<'_>>) {
        let refs = &self.generation().refs;
        if s.is_some() {
            refs.store(refs.load(Relaxed) + 1, Relaxed);
        } else {
            // Relaxed, as Arc: a new reference is made from an existing one.
            refs.fetch_add(1, Relaxed);
        }
    }

    #[inline]
    /// Ok when the block at `addr` of this generation is live.
    pub fn check_access(&self, addr: usize, s: Option<Serialized<'_>>) -> Result<()> {
        let g = self.generation();
        g.region.check(g.token, addr, s)
    }
    /// Pins the block at `addr` (a buffer export): its chunk stays mapped until
    /// [`RegionRef::unpin`].
    pub fn pin(&self, addr: usize, s: Option<Serialized<'_>>) -> Result<()> {
        let g = self.generation();
        g.region.pin(g.token, addr, s)
    }
    /// Ends a pin of [`RegionRef::pin`].
    pub fn unpin(&self, s: Option<Serialized<'_>>) {
        self.region().unpin(s)
    }

    /// `free(p)` of a region block, viewed at `addr`: a no-op for a live
    /// block viewed at its start (its memory goes with its generation); a
    /// dead one is a double free, an interior view an ownership error.
    pub fn free(&self, addr: usize, s: Option<Serialized<'_>>) -> Result<()> {
        self.check_access(addr, s).map_err(|e| match e {
            Error::UseAfterFree(d) => Error::DoubleFree(d),
            e => e,
        })?;
        if !self.is_start() {
            return Err(Error::Ownership(Ownership::Interior));
        }
        Ok(())
    }
}

impl Clone for RegionRef {
    fn clone(&self) -> Self {
        self.view(true, None)
    }
}

impl RegionRef {
    /// Drops this reference, as `drop` does; with the serialization proof
    /// `s`, counting down is a load and a store.
    #[inline]
    pub fn release(self, s: Option<Serialized<'_>>) {
        let mut this = std::mem::ManuallyDrop::new(self);
        this.count_down(s);
    }

    #[inline]
    fn count_down(&mut self, s: Option<Serialized<'_>>) {
        let g = self.generation();
        let last = if s.is_some() {
            // The proof's contract covers the callers without one too: no
            // other thread counts meanwhile.
            let n = g.refs.load(Relaxed) - 1;
            g.refs.store(n, Relaxed);
            n == 0
        } else if g.refs.fetch_sub(1, Release) == 1 {
            // As Arc: every use through the other references happens before.
            fence(Acquire);
            true
        } else {
            false
        };
        if last {
            let p = self.generation_ptr();
            // SAFETY: the last reference: the generation came from
            // new_generation with this layout, and nothing refers to it.
            unsafe {
                std::ptr::drop_in_place(p);
                std::alloc::dealloc(p.cast(), std::alloc::Layout::new::<Generation>());
            }
        }
    }
}

/// Without the proof: the synchronised path ([`RegionRef::release`] is the
/// other one).
impl Drop for RegionRef {
    #[inline]
    fn drop(&mut self) {
        self.count_down(None);
    }
}

impl std::fmt::Debug for RegionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionRef")
            .field("region", &self.region().id)
            .field("token", &self.token())
            .field("start", &self.is_start())
            .finish()
    }
}

/// What an owner of a region (the arena) allocates through: the region and
/// a reference to its current generation, handed (counted) to each new
/// block. A block handed out after a release names a newer token; the
/// reference is then replaced, so a generation object is made once per
/// release, and the counts of a generation's references never cross zero
/// while the arena lives.
pub struct Anchor {
    region: Arc<RegionCore>,
    current: SerialMutex<RegionRef>,
}

impl Drop for Anchor {
    /// The arena is gone: its blocks die and stop being counted (memory
    /// pinned by exports goes back at the last unpin, as at any release).
    /// Without the proof: the owner that has it releases first
    /// (`RegionCore::release`), and this one finds nothing left to do.
    fn drop(&mut self) {
        self.region.release(false, None);
    }
}

impl Anchor {
    /// The anchor of `region`: a reference to its current generation.
    pub fn new(region: Arc<RegionCore>) -> Result<Self> {
        let token = region.state.load(Acquire);
        let current = RegionRef::new_generation(&region, token)?;
        Ok(Anchor {
            region,
            current: SerialMutex::new(current),
        })
    }

    /// The region anchored.
    pub fn region(&self) -> &Arc<RegionCore> {
        &self.region
    }

    /// Reopens the closed region as a new one, with id `id` and no limit,
    /// for a new owner: a per-call arena then costs no region, generation
    /// or chunk list of its own (BENCHMARKS.md, job h). Only when nothing
    /// can tell: no reference to the region but this anchor's (no Pointer,
    /// no view, no generation but the anchor's current one), no export, no
    /// parked chunk, no chunk in use (a release disposed of them). A first
    /// chunk the release held ([`held`]) becomes the new owner's bump chunk,
    /// still listed in the index. Blocks of the old owner read back from
    /// memory stay dead and are named by their old id (`dead_ref`). True
    /// when reopened; false changes nothing.
    pub fn reopen(&self, id: u64, s: Serialized<'_>) -> bool {
        let r = &self.region;
        if !r.is_closed() || Arc::strong_count(r) != 2 {
            return false;
        }
        let cur = self.current.lock(Some(s));
        let g = cur.generation();
        if g.refs.load(Relaxed) != 1 || !Arc::ptr_eq(&g.region, r) {
            return false;
        }
        let mut inner = r.lock(Some(s));
        let in_use = !inner.chunks.is_empty() && !inner.held.is_set();
        if inner.pins != 0 || !inner.parked.is_empty() || in_use {
            return false;
        }
        // Reset in place (a rebuilt `Inner` and the old one's drop cost ~120
        // instructions), every field named so that a new one is decided on
        // here: `chunks` is empty or the held chunk, `pins` and `parked`
        // were checked, the rest starts over.
        let Inner {
            chunks: _,
            bump,
            cur: bump_at,
            end,
            next_size,
            count,
            bytes,
            total_allocs,
            total_frees,
            peak_bytes,
            limit,
            pins: _,
            parked: _,
            held,
            first_unused,
            dead,
        } = &mut *inner;
        *first_unused = held.clear(Some(s));
        (*bump, *bump_at, *end, *next_size) = (None, 0, 0, FIRST_CHUNK);
        (*count, *bytes, *peak_bytes, *limit) = (0, 0, 0, UNLIMITED);
        (*total_allocs, *total_frees) = (0, 0);
        dead.clear();
        // A release moved the state to a generation no block has: the
        // new owner's first.
        let token = r.state.load(Relaxed) & !CLOSED;
        r.id.store(id, Relaxed);
        r.dead_count.store(0, Relaxed);
        r.object.store(0, Relaxed);
        // SAFETY: the generation's only reference is `cur`, held under its
        // lock (and the proof): nothing else reads the token meanwhile.
        unsafe { (*cur.generation_ptr()).token = token };
        r.state.store(token, Release);
        true
    }

    /// A reference for a block handed out with `token`, starting the block.
    #[inline(always)]
    fn reference(&self, token: u64, s: Option<Serialized<'_>>) -> Result<RegionRef> {
        let mut cur = self.current.lock(s);
        let r = if cur.token() == token {
            cur.view(true, s)
        } else {
            let fresh = RegionRef::new_generation(&self.region, token)?;
            // Tokens only grow: a block handed out before a racing release
            // keeps a generation object of its own.
            if token > cur.token() {
                *cur = fresh.clone();
            }
            fresh
        };
        Ok(r.starting())
    }

    /// A zeroed block of `req`: its address and the reference of a view at
    /// its start. Inlined into the arena's entry point, as the region's
    /// allocation was before the anchor existed (callgrind, with
    /// `RegionCore::allocate` inlined too: 441 -> 388 instructions per block).
    #[inline(always)]
    pub fn allocate(&self, req: Request, s: Option<Serialized<'_>>) -> Result<(usize, RegionRef)> {
        let (at, token) = self.region.allocate(req, s)?;
        Ok((at, self.reference(token, s)?))
    }

    /// [`RegionCore::realloc`] of the block that `r` (a view at its start,
    /// `old` bytes long) refers to.
    pub fn realloc(
        &self,
        r: &RegionRef,
        base: usize,
        old: usize,
        req: Request,
        s: Option<Serialized<'_>>,
    ) -> Result<(usize, RegionRef)> {
        debug_assert!(r.is_start() && r.is_in(&self.region));
        let (at, token) = self.region.realloc(r.token(), base, old, req, s)?;
        Ok((at, self.reference(token, s)?))
    }
}

/// What an address in a region's chunk is.
enum Found {
    /// A live block: start, end, token.
    Live(usize, usize, u64),
    /// A released block.
    Released(Ghost),
}

/// A dead view's reference for a released block: to the region that
/// released it (never again at that generation), or to a closed stand-in.
fn dead_ref((start, _, region, id, token): Ghost, addr: usize) -> Result<RegionRef> {
    // A region reopened since for a new owner (`Anchor::reopen`) has a new
    // id: the block was the old owner's, which a stand-in names.
    let region = region
        .upgrade()
        .filter(|r| r.id() == id)
        .unwrap_or_else(|| RegionCore::gone(id));
    RegionRef::resolved(&region, token, addr == start)
}

/// The view an address read back from memory gives in a chunk of `region`
/// (the index found the chunk): a reference and the end of its block, for
/// a live block or a released one (dead, `UseAfterFreeError`); None for
/// bytes no block reached.
pub fn view_at(
    region: &Arc<RegionCore>,
    addr: usize,
    s: Option<Serialized<'_>>,
) -> Result<Option<(RegionRef, usize)>> {
    Ok(match region.find(addr, s) {
        Some(Found::Live(start, end, token)) => {
            Some((RegionRef::resolved(region, token, addr == start)?, end))
        }
        Some(Found::Released(ghost)) => {
            let end = ghost.1;
            Some((dead_ref(ghost, addr)?, end))
        }
        None => None,
    })
}

/// The dead view of a released block whose chunk no region holds now but
/// rsalloc keeps (the first chunks kept for the next region), if `addr` is
/// in one: a reference and the end of its block. Only with the proof: the
/// kept chunks are kept only with it.
pub fn released_view_at(
    addr: usize,
    s: Option<Serialized<'_>>,
) -> Result<Option<(RegionRef, usize)>> {
    let Some(ghost) = s.and_then(|s| kept::released_at(s, addr)) else {
        return Ok(None);
    };
    let end = ghost.1;
    Ok(Some((dead_ref(ghost, addr)?, end)))
}

impl ChunkOwner for RegionCore {
    fn block_at(&self, addr: usize, s: Option<Serialized<'_>>) -> Option<(usize, usize, u64)> {
        RegionCore::block_at(self, addr, s)
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl RegionCore {
    /// The region behind a chunk the index found (regions are the only
    /// chunk owners).
    pub fn of_chunk_owner(owner: Arc<dyn ChunkOwner>) -> Arc<RegionCore> {
        owner
            .into_any()
            .downcast()
            .unwrap_or_else(|_| unreachable!("a chunk owner that is not a region"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::layout::array;

    #[test]
    fn references_share_a_generation_and_keep_the_region_alive() {
        let arc = RegionCore::new();
        let weak = Arc::downgrade(&arc);
        let anchor = Anchor::new(arc.clone()).unwrap();
        drop(arc);
        let (at, a) = anchor.allocate(req(8, 8), None).unwrap();
        let (_, b) = anchor.allocate(req(8, 8), None).unwrap();
        let region = anchor.region().clone();
        assert_eq!(
            Arc::strong_count(&region),
            3,
            "the arena, one generation, this test"
        );
        assert!(
            std::ptr::eq(a.generation(), b.generation()),
            "one generation object"
        );
        assert!(a.is_start() && a.is_in(&region) && a.drops_to_a_count());
        let inner = a.view(false, None);
        assert!(!inner.is_start() && a.view(true, None).is_start());
        drop(region);
        drop(anchor);
        assert!(a.drops_to_a_count(), "other references remain");
        drop((b, inner));
        assert!(!a.drops_to_a_count(), "the last reference frees the region");
        assert!(
            matches!(
                a.check_access(at, None),
                Err(Error::UseAfterFree(Death::Released))
            ),
            "dropping the arena released its blocks"
        );
        assert!(weak.upgrade().is_some());
        drop(a);
        assert!(weak.upgrade().is_none(), "freed with the last reference");
    }

    #[test]
    fn a_release_starts_a_new_generation_object() {
        let anchor = Anchor::new(RegionCore::new()).unwrap();
        let (at, old) = anchor.allocate(req(8, 8), None).unwrap();
        assert!(anchor.region().release(true, None));
        assert!(matches!(
            old.check_access(at, None),
            Err(Error::UseAfterFree(Death::Released))
        ));
        let (at2, new) = anchor.allocate(req(8, 8), None).unwrap();
        assert!(!std::ptr::eq(old.generation(), new.generation()));
        assert_ne!(old.token(), new.token());
        assert!(new.check_access(at2, None).is_ok());
        let (_, newer) = anchor.allocate(req(8, 8), None).unwrap();
        assert!(std::ptr::eq(new.generation(), newer.generation()));
        // The old generation lives on in its last reference only.
        assert!(!std::ptr::eq(
            anchor.current.lock(None).generation(),
            old.generation()
        ));
        assert_eq!(old.generation().refs.load(Relaxed), 1);
    }

    #[test]
    fn references_counted_from_many_threads_balance() {
        let anchor = Anchor::new(RegionCore::new()).unwrap();
        let weak = Arc::downgrade(anchor.region());
        let (at, first) = anchor.allocate(req(8, 8), None).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (anchor, first) = (&anchor, &first);
                s.spawn(move || {
                    for i in 0..10_000 {
                        let (a, r) = if i % 2 == 0 {
                            (at, first.view(i % 4 == 0, None))
                        } else {
                            anchor.allocate(req(8, 8), None).unwrap()
                        };
                        assert!(r.check_access(a, None).is_ok());
                    }
                });
            }
        });
        assert_eq!(
            first.generation().refs.load(Relaxed),
            2,
            "the anchor's and this one"
        );
        drop(anchor);
        drop(first);
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn a_reallocated_block_is_dead_across_its_range_only() {
        let r = RegionCore::new();
        let (a, t) = r.allocate(req(16, 8), None).unwrap();
        let (after, _) = r.allocate(req(8, 8), None).unwrap();
        let (zero, _) = r.allocate(req(0, 1), None).unwrap();
        let (b, t2) = r.realloc(t, a, 16, req(32, 8), None).unwrap();
        for addr in [a, a + 1, a + 15] {
            assert!(matches!(
                r.check(t, addr, None),
                Err(Error::UseAfterFree(Death::Reallocated))
            ));
            assert!(r.pin(t, addr, None).is_err());
        }
        assert!(r.check(t, after, None).is_ok() && r.check(t2, b, None).is_ok());
        // A block of no bytes takes one: its start is dead after a realloc.
        r.realloc(t, zero, 0, req(4, 1), None).unwrap();
        assert!(r.check(t, zero, None).is_err());
        assert!(r.check(t, after, None).is_ok());
        r.release(false, None);
    }

    fn req(size: usize, align: usize) -> Request {
        Request { size, align }
    }

    #[test]
    fn a_closed_region_reopens_as_a_new_one_only_when_nothing_refers_to_it() {
        // SAFETY: the region is this test's own: no other thread touches it.
        let s = unsafe { Serialized::new() };
        let anchor = Anchor::new(RegionCore::with_limit(64)).unwrap();
        let old_id = anchor.region().id();
        assert!(!anchor.reopen(new_id(), s), "an open region stays as it is");
        let (at, r) = anchor.allocate(req(16, 8), None).unwrap();
        let old_token = r.token();
        anchor.region().release(false, None);
        assert!(!anchor.reopen(new_id(), s), "a block's reference is left");
        assert_eq!(
            anchor.region().id(),
            old_id,
            "a refused reopen changes nothing"
        );
        assert!(anchor.region().is_closed());
        drop(r);
        let id = new_id();
        assert!(anchor.reopen(id, s));
        let region = anchor.region().clone();
        assert_eq!(region.id(), id);
        assert!(!region.is_closed());
        assert_eq!(region.limit(), None, "the old owner's limit is gone");
        let snap = region.snapshot();
        assert_eq!(
            (
                snap.live_count,
                snap.total_allocs,
                snap.total_frees,
                snap.peak_bytes
            ),
            (0, 0, 0, 0)
        );
        let (at2, r2) = anchor.allocate(req(100, 8), None).unwrap();
        assert!(r2.check_access(at2, None).is_ok());
        assert!(r2.token() > old_token);
        assert!(
            region.check(old_token, at, None).is_err(),
            "the old owner's blocks stay dead"
        );
        assert_eq!(region.snapshot().total_allocs, 1);
        drop(r2);
        drop(region);
        anchor.region().release(false, None);
    }

    fn zeroed(at: usize, n: usize) -> bool {
        // SAFETY: callers pass a block the region just allocated, `n` bytes long and live.
        unsafe { std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(at), n) }
            .iter()
            .all(|b| *b == 0)
    }

    #[test]
    fn addresses_find_their_block_through_the_index() {
        use crate::core::index::{resolve, Found};
        let r = RegionCore::new();
        let (a, t) = r.allocate(req(10, 1), None).unwrap();
        let (b, _) = r.allocate(req(3, 8), None).unwrap();
        let (big, _) = r.allocate(req(3 * MAX_CHUNK, 8), None).unwrap();
        let (zero, _) = r.allocate(req(0, 1), None).unwrap();
        for (addr, want) in [
            (a, (a, a + 10)),
            (a + 9, (a, a + 10)),
            (b + 2, (b, b + 3)),
            (big + MAX_CHUNK, (big, big + 3 * MAX_CHUNK)),
            (zero, (zero, zero + 1)),
        ] {
            let Some(Found::Chunk(owner)) = resolve(addr, None) else {
                panic!("{addr:#x} not found");
            };
            assert!(Arc::ptr_eq(&RegionCore::of_chunk_owner(owner), &r));
            assert_eq!(r.block_at(addr, None), Some((want.0, want.1, t)));
        }
        // Padding between blocks belongs to no block.
        if b > a + 10 {
            assert_eq!(r.block_at(a + 10, None), None);
        }
        r.release(true, None);
        assert!(
            resolve(big, None).is_none(),
            "released chunks leave the index"
        );
        assert!(
            r.block_at(a, None).is_none(),
            "the kept chunk holds no block"
        );
        r.release(false, None);
        assert!(resolve(a, None).is_none());
    }

    /// A dead view's reference: dead, and whether it starts its block.
    fn dead_at(r: &Arc<RegionCore>, addr: usize) -> (bool, usize) {
        let (rf, end) = view_at(r, addr, None).unwrap().expect("a dead view");
        assert!(matches!(
            rf.check_access(addr, None),
            Err(Error::UseAfterFree(Death::Released))
        ));
        (rf.is_start(), end)
    }

    #[test]
    fn released_blocks_read_back_dead_until_their_address_is_handed_out_again() {
        use crate::core::index::resolve;
        let r = RegionCore::new();
        let (a, _) = r.allocate(req(16, 8), None).unwrap();
        let (b, _) = r.allocate(req(16, 8), None).unwrap();
        let (c, _) = r.allocate(req(16, 8), None).unwrap();
        assert_eq!((b, c), (a + 16, a + 32));
        r.release(true, None);
        assert_eq!(dead_at(&r, a), (true, a + 16));
        assert_eq!(dead_at(&r, b + 3), (false, b + 16), "inside: dead too");
        assert!(
            view_at(&r, c + 16, None).unwrap().is_none(),
            "never handed out"
        );
        // The next generation bumps the same chunk from its start.
        let (a2, t1) = r.allocate(req(20, 8), None).unwrap();
        assert_eq!(a2, a);
        for (addr, start) in [(a, true), (b, false)] {
            let (rf, end) = view_at(&r, addr, None).unwrap().unwrap();
            assert!(rf.check_access(addr, None).is_ok(), "the new block wins");
            assert_eq!((rf.token(), rf.is_start(), end), (t1, start, a + 20));
        }
        assert_eq!(dead_at(&r, c), (true, c + 16), "not handed out again yet");
        r.release(true, None);
        // The second release keeps the first one's blocks past its own.
        assert_eq!(dead_at(&r, a), (true, a + 20));
        assert_eq!(dead_at(&r, b), (false, a + 20));
        assert_eq!(dead_at(&r, c), (true, c + 16));
        r.release(false, None);
        // Closed, without a kept-chunk cache (not serialized): the memory
        // went back to libc, and its addresses are forgotten.
        assert!(resolve(a, None).is_none() && view_at(&r, c, None).unwrap().is_none());
    }

    #[test]
    fn parked_chunks_stay_listed_and_their_blocks_read_back_dead() {
        use crate::core::index::{resolve, Found};
        let r = RegionCore::new();
        let (a, t) = r.allocate(req(64, 8), None).unwrap();
        let (big, _) = r.allocate(req(2 * MAX_CHUNK, 8), None).unwrap();
        r.pin(t, a, None).unwrap();
        r.release(false, None);
        assert_eq!(r.usage().parked, 2);
        for (addr, want) in [(a, (true, a + 64)), (big + 5, (false, big + 2 * MAX_CHUNK))] {
            let Some(Found::Chunk(owner)) = resolve(addr, None) else {
                panic!("{addr:#x} not listed");
            };
            let found = RegionCore::of_chunk_owner(owner);
            assert!(Arc::ptr_eq(&found, &r));
            assert_eq!(dead_at(&found, addr), want);
        }
        r.unpin(None);
        assert!(
            resolve(a, None).is_none() && resolve(big, None).is_none(),
            "back to libc"
        );
    }

    #[test]
    fn a_released_block_of_a_region_gone_names_a_closed_stand_in() {
        let gone = Arc::downgrade(&RegionCore::new());
        let rf = dead_ref((0x1000, 0x1010, gone, 42, 0), 0x1008).unwrap();
        assert_eq!(rf.region().id(), 42);
        assert!(rf.region().is_closed() && !rf.is_start());
        assert!(matches!(
            rf.check_access(0x1008, None),
            Err(Error::UseAfterFree(Death::Released))
        ));
        assert!(matches!(rf.free(0x1008, None), Err(Error::DoubleFree(_))));
    }

    #[test]
    fn resolutions_racing_releases_see_live_blocks_or_dead_ones() {
        use crate::core::index::{resolve, Found};
        let r = RegionCore::new();
        let (first, _) = r.allocate(req(16, 8), None).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    let mut k = 0usize;
                    while !stop.load(Relaxed) {
                        k += 1;
                        let addr = first + (k * 8) % 2048;
                        let Some(Found::Chunk(o)) = resolve(addr, None) else {
                            continue;
                        };
                        let found = RegionCore::of_chunk_owner(o);
                        if let Some((rf, end)) = view_at(&found, addr, None).unwrap() {
                            assert!(addr < end && end <= first + FIRST_CHUNK);
                            // Live or dead, a pin agrees with the check made
                            // under the same lock, and holds the chunks.
                            if rf.pin(addr, None).is_ok() {
                                // One reading (the lock held once): a release
                                // between two readings moves the chunk from
                                // `chunks` to `parked`.
                                let u = found.usage();
                                assert!(u.parked + u.chunks > 0);
                                rf.unpin(None);
                            }
                        }
                    }
                });
            }
            for round in 0..300 {
                for _ in 0..(round % 50 + 1) {
                    r.allocate(req(8 * (round % 3 + 1), 8), None).unwrap();
                }
                r.release(true, None);
            }
            stop.store(true, Relaxed);
        });
        r.release(false, None);
    }

    #[test]
    fn alignment_is_honoured_and_memory_zeroed() {
        let r = RegionCore::new();
        for align in [1, 2, 8, 16, 64, 256, 4096, 8192, 1 << 16] {
            for size in [0, 1, 3, 100, 5000] {
                let (at, _) = r.allocate(req(size, align), None).unwrap();
                assert_eq!(at % align, 0, "align {align} size {size}");
                assert!(zeroed(at, size));
                // SAFETY: `at` is the live `size`-byte block just allocated.
                unsafe {
                    std::ptr::write_bytes(
                        std::ptr::with_exposed_provenance_mut::<u8>(at),
                        0xAB,
                        size,
                    )
                };
            }
        }
        r.release(false, None);
    }

    #[test]
    fn chunks_grow_geometrically_and_big_requests_get_their_own() {
        let r = RegionCore::new();
        r.allocate(req(16, 8), None).unwrap();
        assert_eq!((r.usage().chunks, r.usage().reserved), (1, FIRST_CHUNK));
        // Fill the first chunk: the next one is twice as big.
        for _ in 0..FIRST_CHUNK / 16 {
            r.allocate(req(16, 8), None).unwrap();
        }
        assert_eq!(r.usage().chunks, 2);
        assert_eq!(r.usage().reserved, FIRST_CHUNK * 3);
        let big = 10 * MAX_CHUNK;
        let (at, _) = r.allocate(req(big, 8), None).unwrap();
        assert!(zeroed(at, big));
        assert_eq!(r.usage().reserved, FIRST_CHUNK * 3 + big);
        // The bump chunk is still the second one.
        let (a, _) = r.allocate(req(16, 8), None).unwrap();
        let (b, _) = r.allocate(req(16, 8), None).unwrap();
        assert_eq!(b, a + 16);
        assert_eq!(r.usage().count, FIRST_CHUNK as u64 / 16 + 4);
        r.release(false, None);
    }

    #[test]
    fn blocks_never_overlap() {
        let r = RegionCore::new();
        let mut blocks = Vec::new();
        for i in 0..3000usize {
            let size = (i * 7919) % 700;
            let align = 1 << (i % 8);
            let (at, _) = r.allocate(req(size, align), None).unwrap();
            blocks.push((at, at + size.max(1)));
        }
        blocks.sort();
        assert!(blocks.windows(2).all(|w| w[0].1 <= w[1].0));
        r.release(false, None);
    }

    #[test]
    fn release_kills_every_block_and_closes() {
        let r = RegionCore::new();
        let (a, t) = r.allocate(req(40, 8), None).unwrap();
        r.allocate(req(2, 1), None).unwrap();
        assert!(r.check(t, a, None).is_ok());
        assert_eq!(r.snapshot().live_bytes, 42);
        assert!(r.release(false, None));
        assert!(matches!(
            r.check(t, a, None),
            Err(Error::UseAfterFree(Death::Released))
        ));
        let s = r.snapshot();
        assert_eq!((s.live_count, s.live_bytes, s.total_frees), (0, 0, 2));
        assert!(matches!(
            r.allocate(req(1, 1), None),
            Err(Error::ArenaClosed)
        ));
        assert!(!r.release(false, None));
        assert!(r.pin(t, a, None).is_err());
        let u = r.usage();
        assert_eq!((u.chunks, u.reserved, u.closed), (0, 0, true));
    }

    #[test]
    fn reuse_keeps_one_zeroed_chunk() {
        let r = RegionCore::new();
        for _ in 0..1000 {
            let (at, _) = r.allocate(req(24, 8), None).unwrap();
            // SAFETY: `at` is the live 24-byte block just allocated.
            unsafe {
                std::ptr::write_bytes(std::ptr::with_exposed_provenance_mut::<u8>(at), 0xFF, 24)
            };
        }
        r.allocate(req(3 * MAX_CHUNK, 8), None).unwrap();
        let before = r.usage();
        assert!(before.chunks >= 4);
        let (a, t) = r.allocate(req(8, 8), None).unwrap();
        assert!(r.release(true, None));
        assert!(r.check(t, a, None).is_err());
        let u = r.usage();
        assert_eq!((u.chunks, u.count, u.closed), (1, 0, false));
        assert!(u.reserved >= FIRST_CHUNK && u.reserved <= MAX_CHUNK);
        let (b, t2) = r.allocate(req(u.reserved / 2, 8), None).unwrap();
        assert!(zeroed(b, u.reserved / 2));
        assert_eq!(r.usage().chunks, 1, "served from the kept chunk");
        assert_ne!(t, t2);
        assert!(r.check(t2, b, None).is_ok());
        r.release(false, None);
    }

    #[test]
    fn pins_defer_the_return_of_chunks() {
        let r = RegionCore::new();
        let (a, t) = r.allocate(req(64, 8), None).unwrap();
        r.pin(t, a, None).unwrap();
        r.pin(t, a, None).unwrap();
        r.release(true, None);
        // The kept chunk may not be reused while an export looks into it.
        assert_eq!(r.usage().parked, 1);
        assert_eq!(r.usage().chunks, 0);
        // SAFETY: the pinned export keeps its chunk parked, still mapped and 64 bytes long at `a`.
        unsafe { std::ptr::write_bytes(std::ptr::with_exposed_provenance_mut::<u8>(a), 1, 64) }; // still mapped
        let (b, t2) = r.allocate(req(64, 8), None).unwrap();
        assert_ne!(a, b);
        r.unpin(None);
        assert_eq!(r.usage().parked, 1);
        r.unpin(None);
        assert_eq!(r.usage().parked, 0);
        assert!(r.check(t2, b, None).is_ok());
        r.release(false, None);
    }

    #[test]
    fn realloc_copies_and_kills_the_old_block() {
        let r = RegionCore::new();
        let (a, t) = r.allocate(req(4, 4), None).unwrap();
        // SAFETY: `a` is the live 4-byte block just allocated.
        unsafe { std::ptr::write_bytes(std::ptr::with_exposed_provenance_mut::<u8>(a), 9, 4) };
        let (b, t2) = r.realloc(t, a, 4, req(64, 4), None).unwrap();
        assert!(matches!(
            r.check(t, a, None),
            Err(Error::UseAfterFree(Death::Reallocated))
        ));
        assert!(r.check(t2, b, None).is_ok());
        // SAFETY: `b` is the live 64-byte block realloc returned.
        let bytes =
            unsafe { std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(b), 64) };
        assert_eq!(&bytes[..4], &[9; 4]);
        assert!(bytes[4..].iter().all(|x| *x == 0));
        let s = r.snapshot();
        assert_eq!((s.live_count, s.live_bytes), (1, 64));
        assert!(r.realloc(t, a, 4, req(8, 4), None).is_err());
        assert!(matches!(
            r.realloc(t2, b, 64, req(1 << 62, 4), None),
            Err(Error::OutOfMemory(_))
        ));
        assert_eq!(r.snapshot().live_bytes, 64);
        r.release(false, None);
        assert_eq!(r.snapshot().live_count, 0);
    }

    #[test]
    fn unsatisfiable_requests_are_errors_that_change_nothing() {
        let r = RegionCore::new();
        r.allocate(req(8, 8), None).unwrap();
        let before = (r.usage(), r.snapshot());
        assert!(matches!(
            r.allocate(req(1 << 62, 8), None),
            Err(Error::OutOfMemory(_))
        ));
        assert!(matches!(
            r.allocate(req(1 << 62, 1 << 20), None),
            Err(Error::OutOfMemory(_))
        ));
        assert!(matches!(
            array(i64::MAX as i128, 1, 4096, None),
            Err(Error::SizeOverflow)
        ));
        assert_eq!((r.usage(), r.snapshot()), before);
        r.release(false, None);
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
                            let (at, _) = r.allocate(req(size, 8), None).unwrap();
                            // SAFETY: `at` is the live `size`-byte block this thread just
                            // allocated.
                            unsafe {
                                std::ptr::write_bytes(
                                    std::ptr::with_exposed_provenance_mut::<u8>(at),
                                    t as u8 + 1,
                                    size,
                                )
                            };
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
            // SAFETY: every block is still live (nothing was released) and `size` bytes long.
            let s = unsafe {
                std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(*at), *size)
            };
            assert!(s.iter().all(|b| b == tag));
        }
        let expected: usize = (0..4)
            .map(|t| (0..5000).map(|i| (i + t) % 100).sum::<usize>())
            .sum();
        let s = r.snapshot();
        assert_eq!((s.live_count, s.live_bytes), (20_000, expected as u64));
        r.release(false, None);
        assert_eq!(r.snapshot().live_count, 0);
    }
}
