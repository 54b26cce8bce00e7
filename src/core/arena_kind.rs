//! The one place the two kinds of arena meet: `Arena()` is a bump region
//! (`region.rs`), `Arena(allocator)` a wrapping arena (`arena.rs`). What an
//! arena answers whichever kind it is (identity, state, counters, which
//! views it may free) is decided here; the binding holds one of these.

use super::arena::WrapArena;
use super::error::{Error, Ownership, Result};
use super::owner::{Owned, Owner};
use super::region::Anchor;
use super::serial::Serialized;
use super::stats::Snapshot;

/// What an arena allocates from.
pub enum ArenaKind {
    /// A bump region, allocated through its anchor (the arena's reference
    /// to the region's current generation).
    Region(Anchor),
    /// Blocks of a backing allocator, owned by the arena until released.
    Wrap(WrapArena),
}

impl ArenaKind {
    /// The arena's id (what its blocks' records and region references name).
    pub fn id(&self) -> u64 {
        match self {
            ArenaKind::Region(a) => a.region().id(),
            ArenaKind::Wrap(w) => w.id(),
        }
    }

    /// Released for good: nothing more can be allocated.
    pub fn is_closed(&self) -> bool {
        match self {
            ArenaKind::Region(a) => a.region().is_closed(),
            ArenaKind::Wrap(w) => w.is_closed(),
        }
    }

    /// The arena's counters.
    pub fn snapshot(&self) -> Snapshot {
        match self {
            ArenaKind::Region(a) => a.region().snapshot(),
            ArenaKind::Wrap(w) => w.tag.counters.snapshot(),
        }
    }

    /// Checks that the view at `addr` owned by `owner` is a block of this
    /// arena that a free would accept (a free through an arena changes
    /// nothing: its memory goes at release). `s`: the caller's proof.
    pub fn check_free(&self, owner: &Owner, addr: usize, s: Option<Serialized<'_>>) -> Result<()> {
        match (self, owner.get()) {
            (ArenaKind::Region(mine), Owned::Region(r)) if r.is_in(mine.region()) => {
                r.free(addr, s)
            }
            (ArenaKind::Wrap(w), Owned::Block(rec)) => w.free(rec, addr),
            (_, Owned::Unowned) => Err(Error::Ownership(Ownership::Foreign)),
            _ => Err(Error::Ownership(Ownership::OtherOwner)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::{AllocCore, Libc, LIBC_GROUP};
    use crate::core::layout::array;
    use crate::core::region::RegionCore;

    #[test]
    fn an_arena_frees_only_its_own_views_at_their_start() {
        let req = array(4, 4, 4, None).unwrap();
        let bump = ArenaKind::Region(Anchor::new(RegionCore::new()).unwrap());
        let other = ArenaKind::Region(Anchor::new(RegionCore::new()).unwrap());
        let ArenaKind::Region(a) = &bump else {
            unreachable!()
        };
        let (addr, r) = a.allocate(req, None).unwrap();
        let view = Owner::region(r);
        assert!(bump.check_free(&view, addr, None).is_ok());
        let inner = view.view(false, None);
        assert!(matches!(
            bump.check_free(&inner, addr + 4, None),
            Err(Error::Ownership(Ownership::Interior))
        ));
        assert!(matches!(
            other.check_free(&view, addr, None),
            Err(Error::Ownership(Ownership::OtherOwner))
        ));
        assert!(matches!(
            bump.check_free(&Owner::UNOWNED, addr, None),
            Err(Error::Ownership(Ownership::Foreign))
        ));

        let libc = AllocCore::new("m", LIBC_GROUP, false, Box::new(Libc));
        let wrap = ArenaKind::Wrap(WrapArena::new(libc.clone()));
        let ArenaKind::Wrap(w) = &wrap else {
            unreachable!()
        };
        let rec = w.allocate(req, None).unwrap();
        let at = rec.addr();
        let block = Owner::block(rec);
        assert!(wrap.check_free(&block, at, None).is_ok());
        assert!(matches!(
            bump.check_free(&block, at, None),
            Err(Error::Ownership(Ownership::OtherOwner))
        ));
        // A block of the allocator itself is not the arena's.
        let plain = Owner::block(libc.allocate(req, None, None).unwrap());
        assert!(wrap.check_free(&plain, 0, None).is_err());
        if let Owned::Block(r) = plain.get() {
            r.free(LIBC_GROUP, 0, r.addr(), None).unwrap();
        }
        assert!(!wrap.is_closed() && !bump.is_closed());
        assert_eq!(wrap.snapshot().live_count, 1);
        assert_eq!(bump.snapshot().live_count, 1);
        assert_ne!(wrap.id(), bump.id());
    }
}
