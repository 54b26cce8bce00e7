//! Who answers for the memory behind a Pointer, in one word.
//!
//! Every live Pointer carries its owner, so its size is paid a million times
//! over when a program holds a million blocks (DESIGN bounds the bytes per
//! live block). An enum of a record reference and a region reference took 32
//! bytes; one word takes 8: null for foreign memory, a [`RecordRef`]'s
//! pointer (aligned, low bits clear) or a [`RegionRef`]'s (tagged with
//! [`REGION_TAG`]). The word is a pointer, never an integer, so the
//! references read back from it keep their provenance. [`Owner::get`]
//! turns it back into an enum of borrowed references for matching.
//!
//! A third kind, [`Owned::Dependent`], is a record the memory hangs off
//! without being its block: an address read from a block a library frees
//! with its own free (`ForeignAllocator(None, freeaddrinfo)`), in no block
//! rsalloc knows, is the library's too (`ai_next`, `ai_addr`, `ai_canonname`
//! of an addrinfo list, which `freeaddrinfo` frees with the head). Such a
//! view dies with that block and pins it, but no one can free it through
//! rsalloc. Its word is the record's pointer tagged with [`DEPENDENT_TAG`].
//!
//! Freeing through the owner, whichever kind it is, is [`Owner::free`].

use crate::core::error::{Error, Ownership};
use crate::core::record::State;
use crate::core::record_ref::RecordRef;
use crate::core::region::{RegionRef, REGION_TAG};
use crate::core::serial::Serialized;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;

/// The tag of a [`Owned::Dependent`] record pointer (region pointers carry
/// [`REGION_TAG`], so this bit is read only when that one is clear; records
/// are word-aligned).
pub const DEPENDENT_TAG: usize = 0b10;
const _: () = assert!(std::mem::align_of::<crate::core::record::Record>() > DEPENDENT_TAG);

/// The owner word of a Pointer.
pub struct Owner(Option<NonNull<u8>>);

// The word, a RecordRef and a RegionRef are one pointer each (both are
// `repr(transparent)` over a NonNull), which `Owner::get` relies on.
const _: () = assert!(std::mem::size_of::<Owner>() == std::mem::size_of::<usize>());
const _: () = assert!(std::mem::size_of::<RecordRef>() == std::mem::size_of::<usize>());
const _: () = assert!(std::mem::size_of::<RegionRef>() == std::mem::size_of::<usize>());

/// An owner, borrowed for matching.
pub enum Owned<'a> {
    /// Foreign memory: `from_address`, a slot's pointee, `nullptr`.
    Unowned,
    /// A block rsalloc allocated (or adopted); its record is shared by all its views.
    Block(&'a RecordRef),
    /// A block of a bump-region arena: alive while its generation is.
    Region(&'a RegionRef),
    /// Memory that hangs off this block (see the module comment): alive
    /// while it is, freed with it, never freed through rsalloc. A borrowed
    /// reference (the word keeps the count).
    Dependent(ManuallyDrop<RecordRef>),
}

// SAFETY: the word is a RecordRef or a RegionRef, both Send + Sync.
unsafe impl Send for Owner {}
// SAFETY: as for `Send`: shared access reads the word as a RecordRef or RegionRef, both Sync.
unsafe impl Sync for Owner {}

impl Owner {
    /// Nobody: a view of memory rsalloc does not own (an address from C).
    pub const UNOWNED: Owner = Owner(None);

    /// A block's record owns the memory.
    pub fn block(r: RecordRef) -> Self {
        Owner(Some(r.into_raw()))
    }

    /// A bump region's block (through its generation) owns the memory.
    pub fn region(r: RegionRef) -> Self {
        Owner(Some(r.into_raw()))
    }

    /// The owner of memory that hangs off `r`'s block (module comment).
    pub fn dependent(r: RecordRef) -> Self {
        let p = r.into_raw();
        // SAFETY: a tagged non-null pointer is non-null.
        Owner(Some(unsafe {
            NonNull::new_unchecked(p.as_ptr().map_addr(|a| a | DEPENDENT_TAG))
        }))
    }

    /// The record whose block the memory at addresses read from this view
    /// hangs off, when those addresses are no block of rsalloc's: a block a
    /// free-only owner (a library's free) frees, or the block a dependent
    /// view already hangs off.
    pub fn graph_owner(&self) -> Option<RecordRef> {
        match self.get() {
            Owned::Block(r) if r.allocator().backend.free_only() => Some(r.clone()),
            Owned::Dependent(r) => Some((*r).clone()),
            _ => None,
        }
    }

    #[inline(always)]
    /// The owner the word holds, read in place.
    pub fn get(&self) -> Owned<'_> {
        let p: *const Option<NonNull<u8>> = &self.0;
        match self.0 {
            None => Owned::Unowned,
            Some(w) if w.as_ptr().addr() & (REGION_TAG | DEPENDENT_TAG) == 0 => {
                // SAFETY: an untagged pointer is a RecordRef's (block), and
                // RecordRef is a transparent non-null pointer: the same layout
                // as the `Some` word, read in place (its provenance with it).
                Owned::Block(unsafe { &*p.cast::<RecordRef>() })
            }
            Some(w) if w.as_ptr().addr() & REGION_TAG == 0 => {
                // SAFETY: a pointer tagged DEPENDENT is a RecordRef's, whose
                // count the word holds; the borrowed copy is never dropped.
                Owned::Dependent(ManuallyDrop::new(unsafe { RecordRef::from_raw(untag(w)) }))
            }
            // SAFETY: a tagged pointer is a RegionRef's (region), a
            // transparent non-null pointer.
            Some(_) => Owned::Region(unsafe { &*p.cast::<RegionRef>() }),
        }
    }

    /// `free(p)` of the view at `addr`, through whoever owns it: the block's
    /// allocator group, a no-op check for a block an arena owns (its memory
    /// goes at the arena's release) or a region block, and an ownership
    /// error for foreign memory. `s`: the caller's serialization proof
    /// (None: the synchronised path), as the checks below take it.
    pub fn free(&self, addr: usize, s: Option<Serialized<'_>>) -> Result<(), Error> {
        match self.get() {
            Owned::Block(rec) => match rec.arena() {
                Some(id) => rec.check_freeable(rec.allocator().group, id, addr),
                None => rec.free(rec.allocator().group, 0, addr, s),
            },
            Owned::Region(r) => r.free(addr, s),
            Owned::Dependent(_) => Err(Error::Ownership(Ownership::Dependent)),
            Owned::Unowned => Err(Error::Ownership(Ownership::Foreign)),
        }
    }

    /// Both words hold the same block's record: two owners of views of one
    /// rsalloc block (never true of region blocks, foreign or dependent
    /// memory, whose words may differ for one block).
    #[inline]
    pub fn same_block(&self, other: &Owner) -> bool {
        self.0 == other.0 && matches!(self.get(), Owned::Block(_))
    }

    /// The owner of another view of the same block; `same_start`: the view
    /// begins where this one does (only a view at a region block's start
    /// may free it).
    /// `s`: the caller's serialization proof.
    #[inline]
    pub fn view(&self, same_start: bool, s: Option<Serialized<'_>>) -> Owner {
        match self.get() {
            Owned::Unowned => Owner::UNOWNED,
            Owned::Block(r) => Owner::block(r.share(s)),
            Owned::Region(r) => Owner::region(r.view(same_start, s)),
            Owned::Dependent(r) => Owner::dependent(r.share(s)),
        }
    }

    /// Ok when the memory a view at `addr` looks into may be accessed.
    #[inline]
    pub fn check_access(&self, addr: usize, s: Option<Serialized<'_>>) -> Result<(), Error> {
        match self.get() {
            Owned::Block(r) => r.check_access(),
            Owned::Dependent(r) => r.check_access(),
            Owned::Region(r) => r.check_access(addr, s),
            Owned::Unowned => Ok(()),
        }
    }

    /// A buffer export of the view at `addr` begins: the memory stays until `unpin`.
    pub fn pin(&self, addr: usize, s: Option<Serialized<'_>>) -> Result<(), Error> {
        match self.get() {
            Owned::Block(r) => r.pin(),
            Owned::Dependent(r) => r.pin(),
            Owned::Region(r) => r.pin(addr, s),
            Owned::Unowned => Ok(()),
        }
    }

    /// Ends a pin taken through this owner.
    pub fn unpin(&self, s: Option<Serialized<'_>>) {
        match self.get() {
            Owned::Block(r) => r.unpin(s),
            Owned::Dependent(r) => r.unpin(s),
            Owned::Region(r) => r.unpin(s),
            Owned::Unowned => {}
        }
    }

    /// Dropping this owner touches no Python object (none is freed, no
    /// Python allocator runs): true when it drops only a reference count,
    /// or a record that [`drops_plainly`](crate::core::record::Record::drops_plainly).
    /// Exact under the GIL, where no other thread drops references meanwhile.
    #[inline]
    pub fn drops_plainly(&self) -> bool {
        match self.get() {
            Owned::Unowned => true,
            Owned::Block(r) => r.is_shared() || r.drops_plainly(),
            Owned::Dependent(r) => r.is_shared() || r.drops_plainly(),
            Owned::Region(r) => r.drops_to_a_count(),
        }
    }

    /// Drops this owner, as [`release`](Owner::release) does, when that
    /// drops only a count ([`drops_plainly`](Owner::drops_plainly)): true,
    /// and the word is then unowned; false, changing nothing, otherwise.
    /// One reading of the word for both (a Pointer object's dealloc).
    #[inline(always)]
    pub fn release_plainly(&mut self, s: Option<Serialized<'_>>) -> bool {
        let plain = match self.get() {
            Owned::Unowned => return true,
            Owned::Block(r) => r.is_shared() || r.drops_plainly(),
            Owned::Dependent(r) => r.is_shared() || r.drops_plainly(),
            Owned::Region(r) => r.drops_to_a_count(),
        };
        if plain {
            self.give_back(s);
        }
        plain
    }

    /// Who owns the memory, for messages.
    pub fn name(&self) -> String {
        match self.get() {
            Owned::Block(r) => match r.state() {
                State::Detached => "detached".into(),
                _ => match r.arena() {
                    Some(id) => format!("arena #{id}"),
                    None => r.allocator().name.clone(),
                },
            },
            Owned::Region(r) => format!("arena #{}", r.region().id()),
            Owned::Dependent(r) => format!("part of a {} block", r.allocator().name),
            Owned::Unowned => "unowned".into(),
        }
    }

    /// The state of the view at `addr`, for repr.
    pub fn state_name(&self, addr: usize) -> &'static str {
        let dead = match self.get() {
            Owned::Block(r) => match r.state() {
                State::Live => return "live",
                State::Detached => return "detached",
                State::Dead(d) => d,
            },
            Owned::Dependent(r) => match r.state() {
                State::Live | State::Detached => return "live",
                State::Dead(d) => d,
            },
            Owned::Region(r) => match r.check_access(addr, None) {
                Ok(()) => return "live",
                Err(Error::UseAfterFree(d)) => d,
                Err(_) => return "dead",
            },
            Owned::Unowned => return "foreign",
        };
        dead.as_str()
    }

    /// The record of an allocator-owned block, for operations that need one
    /// (free, realloc through an allocator): region memory belongs to its
    /// arena, unowned memory to nobody.
    pub fn record_for_allocator(&self) -> Result<&RecordRef, Error> {
        match self.get() {
            Owned::Block(r) => Ok(r),
            Owned::Region(_) => Err(Error::Ownership(Ownership::OtherOwner)),
            Owned::Dependent(_) => Err(Error::Ownership(Ownership::Dependent)),
            Owned::Unowned => Err(Error::Ownership(Ownership::Foreign)),
        }
    }
}

impl Clone for Owner {
    fn clone(&self) -> Self {
        self.view(true, None)
    }
}

impl Owner {
    /// Drops this owner, as `drop` does; with the serialization proof `s`
    /// its reference counts down without a read-modify-write (what a
    /// Pointer's dealloc, which holds the GIL, does: `py::cpython`).
    #[inline(always)]
    pub fn release(mut self, s: Option<Serialized<'_>>) {
        self.give_back(s);
    }

    #[inline(always)]
    fn give_back(&mut self, s: Option<Serialized<'_>>) {
        let Some(w) = self.0.take() else {
            return;
        };
        // SAFETY: the pointer came from into_raw of the reference its tag
        // names, and this owner gives it back once (the word is cleared).
        unsafe {
            let a = w.as_ptr().addr();
            if a & REGION_TAG != 0 {
                RegionRef::from_raw(w).release(s)
            } else if a & DEPENDENT_TAG != 0 {
                RecordRef::from_raw(untag(w)).release(s)
            } else {
                RecordRef::from_raw(w).release(s)
            }
        }
    }
}

/// Without the proof: the synchronised path ([`Owner::release`] is the
/// other one).
impl Drop for Owner {
    #[inline]
    fn drop(&mut self) {
        self.give_back(None);
    }
}

/// A dependent word's record pointer, its tag cleared (provenance kept).
#[inline(always)]
fn untag(w: NonNull<u8>) -> NonNull<u8> {
    // SAFETY: a record pointer with its low tag bit cleared is non-null
    // (records are word-aligned, at a non-zero address).
    unsafe { NonNull::new_unchecked(w.as_ptr().map_addr(|a| a & !DEPENDENT_TAG)) }
}
