//! Who answers for the memory behind a Pointer, in one word.
//!
//! Every live Pointer carries its owner, so its size is paid a million times
//! over when a program holds a million blocks (issue 6 bounds the bytes per
//! live block). An enum of a record reference and a region reference took 32
//! bytes; one word takes 8: 0 for foreign memory, a [`RecordRef`] (aligned,
//! low bits clear) or a [`RegionRef`] (tagged with [`REGION_TAG`]).
//! [`Owner::get`] turns the word back into an enum of borrowed references
//! for matching.

use crate::core::error::{Error, Ownership};
use crate::core::record::State;
use crate::core::record_ref::RecordRef;
use crate::core::region::{RegionRef, REGION_TAG};

/// The owner word of a Pointer.
pub struct Owner(usize);

/// An owner, borrowed for matching.
pub enum Owned<'a> {
    /// Foreign memory: `from_address`, a slot's pointee, `nullptr`.
    Unowned,
    /// A block rsalloc allocated (or adopted); its record is shared by all its views.
    Block(&'a RecordRef),
    /// A block of a bump-region arena: alive while its generation is.
    Region(&'a RegionRef),
}

// SAFETY: the word is a RecordRef or a RegionRef, both Send + Sync.
unsafe impl Send for Owner {}
unsafe impl Sync for Owner {}

impl Owner {
    pub const UNOWNED: Owner = Owner(0);

    pub fn block(r: RecordRef) -> Self {
        Owner(r.into_word())
    }

    pub fn region(r: RegionRef) -> Self {
        Owner(r.into_word())
    }

    #[inline(always)]
    pub fn get(&self) -> Owned<'_> {
        let p: *const usize = &self.0;
        if self.0 == 0 {
            Owned::Unowned
        } else if self.0 & REGION_TAG == 0 {
            // SAFETY: a non-zero untagged word is a RecordRef's (block), and
            // RecordRef is a transparent non-null pointer: same layout.
            Owned::Block(unsafe { &*p.cast::<RecordRef>() })
        } else {
            // SAFETY: a tagged word is a RegionRef's (region), a transparent
            // non-null pointer.
            Owned::Region(unsafe { &*p.cast::<RegionRef>() })
        }
    }

    /// The owner of another view of the same block; `same_start`: the view
    /// begins where this one does (only a view at a region block's start
    /// may free it).
    #[inline]
    pub fn view(&self, same_start: bool) -> Owner {
        match self.get() {
            Owned::Unowned => Owner::UNOWNED,
            Owned::Block(r) => Owner::block(r.clone()),
            Owned::Region(r) => Owner::region(r.view(same_start)),
        }
    }

    /// Ok when the memory a view at `addr` looks into may be accessed.
    #[inline]
    pub fn check_access(&self, addr: usize) -> Result<(), Error> {
        match self.get() {
            Owned::Block(r) => r.check_access(),
            Owned::Region(r) => r.check_access(addr),
            Owned::Unowned => Ok(()),
        }
    }

    /// A buffer export of the view at `addr` begins: the memory stays until `unpin`.
    pub fn pin(&self, addr: usize) -> Result<(), Error> {
        match self.get() {
            Owned::Block(r) => r.pin(),
            Owned::Region(r) => r.pin(addr),
            Owned::Unowned => Ok(()),
        }
    }

    pub fn unpin(&self) {
        match self.get() {
            Owned::Block(r) => r.unpin(),
            Owned::Region(r) => r.unpin(),
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
            Owned::Region(r) => r.drops_to_a_count(),
        }
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
            Owned::Region(r) => format!("arena #{}", r.region().id),
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
            Owned::Region(r) => match r.check_access(addr) {
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
            Owned::Unowned => Err(Error::Ownership(Ownership::Foreign)),
        }
    }
}

impl Clone for Owner {
    fn clone(&self) -> Self {
        self.view(true)
    }
}

impl Drop for Owner {
    #[inline]
    fn drop(&mut self) {
        let w = self.0;
        if w == 0 {
            return;
        }
        // SAFETY: the word came from into_word of the reference its tag
        // names, and this owner gives it back once.
        unsafe {
            if w & REGION_TAG == 0 {
                drop(RecordRef::from_word(w))
            } else {
                drop(RegionRef::from_word(w))
            }
        }
    }
}
