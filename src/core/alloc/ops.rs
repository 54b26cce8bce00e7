//! The operations that make and end a block's record: allocate, adopt,
//! realloc and free through an allocator, with the limits charged first and
//! the new record entered in the address index and the leak registry. The
//! allocator itself (identity, backend, counters) is the parent module.

use super::{AllocCore, CoreRef};
use crate::core::budget::{self, Scope, Target, UNLIMITED};
use crate::core::error::{Error, Ownership, Result};
use crate::core::index;
use crate::core::layout::Request;
use crate::core::observer;
use crate::core::record::{ArenaTag, Record};
use crate::core::record_ref::{RecordRef, RecordSlot};
use crate::core::serial::Serialized;
use crate::core::stats::GLOBAL;
use crate::core::track;
use std::ptr::NonNull;
use std::sync::Arc;

impl AllocCore {
    /// The counters a new block is charged to under a limit: its arena's,
    /// this allocator's and those it allocates through, the process's.
    /// `same`: this allocator counted the block being replaced.
    fn targets<'a>(
        &'a self,
        arena: Option<&'a ArenaTag>,
        same: bool,
    ) -> impl Iterator<Item = Target<'a>> + 'a {
        let tag = arena.map(|t| Target {
            counters: &t.counters,
            limit: t.limit,
            scope: Scope::Arena,
            replaces: true,
        });
        let cores = std::iter::successors(Some(self), |c| c.over.as_deref()).map(move |c| Target {
            counters: &c.counters,
            limit: c.limit,
            scope: Scope::Allocator,
            replaces: same,
        });
        let process = Target {
            counters: &GLOBAL,
            limit: budget::process_max(),
            scope: Scope::Process,
            replaces: true,
        };
        tag.into_iter().chain(cores).chain(std::iter::once(process))
    }

    /// Charges `n` bytes (replacing `replaces` bytes of a realloc) before
    /// the memory is asked for, when any limit applies; true when charged.
    /// Without one: the process's limit (one relaxed load and a branch) and
    /// this allocator's limit field are checked, nothing is charged.
    #[inline(always)]
    fn charge(
        &self,
        n: usize,
        replaces: usize,
        arena: Option<&ArenaTag>,
        same: bool,
    ) -> Result<bool> {
        if budget::process_limited()
            || self.limit != UNLIMITED
            || arena.is_some_and(|t| t.limit != UNLIMITED)
        {
            self.charge_limited(n, replaces, arena, same)?;
            return Ok(true);
        }
        Ok(false)
    }

    #[inline(never)]
    fn charge_limited(
        &self,
        n: usize,
        replaces: usize,
        arena: Option<&ArenaTag>,
        same: bool,
    ) -> Result<()> {
        budget::reserve_all(|| self.targets(arena, same), n as u64, replaces as u64)
            .map_err(Error::OverLimit)
    }

    /// Gives back a charge whose allocation failed.
    #[cold]
    fn uncharge(&self, charged: bool, n: usize, arena: Option<&ArenaTag>) {
        if charged {
            budget::unreserve_all(self.targets(arena, true), n as u64);
        }
    }

    /// Whether a new block of this allocator is recorded now.
    #[inline]
    fn tracks(&self) -> bool {
        self.always_track || track::enabled()
    }

    /// An allocation here runs only libc and records nothing (see
    /// [`Backend::plain`]).
    #[inline]
    pub fn plain(&self) -> bool {
        !self.tracks() && self.plain_backend
    }

    /// Records `rec`, which just became this allocator's to free (it left an
    /// arena), as a new block would be.
    pub fn track_adopted(&self, rec: &Record, ty: &'static str) {
        if self.tracks() && rec.tracked().is_none() {
            track::register(rec, ty);
        }
    }

    /// A new block, owned by this allocator or, with `arena`, by that arena.
    /// `s`: the caller's serialization proof (None: the synchronised path),
    /// as every operation here takes it.
    pub fn allocate(
        self: &Arc<Self>,
        req: Request,
        arena: Option<&Arc<ArenaTag>>,
        s: Option<Serialized<'_>>,
    ) -> Result<RecordRef> {
        self.allocate_typed(req, arena, "", s)
    }

    /// [`AllocCore::allocate`], naming the element type for leak records.
    #[inline]
    pub fn allocate_typed(
        self: &Arc<Self>,
        req: Request,
        arena: Option<&Arc<ArenaTag>>,
        ty: &'static str,
        s: Option<Serialized<'_>>,
    ) -> Result<RecordRef> {
        self.allocate_replacing(req, arena, ty, 0, s)
    }

    /// [`AllocCore::allocate_typed`] of a block that replaces a block of
    /// `replaces` bytes counted in the same places (an arena's realloc):
    /// limits count the difference.
    #[inline]
    pub fn allocate_replacing(
        self: &Arc<Self>,
        req: Request,
        arena: Option<&Arc<ArenaTag>>,
        ty: &'static str,
        replaces: usize,
        s: Option<Serialized<'_>>,
    ) -> Result<RecordRef> {
        // Every backend, also those that never reach sys::alloc (Python
        // code, C functions), waits for the emergency reserve (core::reserve).
        if !crate::core::reserve::ready() {
            return Err(Error::OutOfMemory(req.size));
        }
        self.check_tag(arena)?;
        // The record's memory first: once the block exists, nothing can fail.
        let slot = RecordSlot::new(s)?;
        let tag = arena.map(|t| &**t);
        let charged = self.charge(req.size, replaces, tag, true)?;
        let p = match self.backend_alloc(req.size, req.align, s) {
            Ok(p) => p,
            Err(e) => {
                self.uncharge(charged, req.size, tag);
                return Err(e);
            }
        };
        self.record(
            slot,
            p,
            req,
            arena,
            ty,
            charged.then_some(replaces),
            false,
            false,
            s,
        )
        .inspect_err(|_| {
            self.uncharge(charged, req.size, tag);
            // SAFETY: the block just came from this backend; no record holds it.
            let _ = unsafe { self.backend_free(p, req.size, req.align, s) };
        })
    }

    /// An arena's blocks all come from the allocator its tag names (a
    /// record finds its allocator through the tag).
    #[inline]
    fn check_tag(&self, arena: Option<&Arc<ArenaTag>>) -> Result<()> {
        match arena {
            Some(t) if !t.belongs_to(self) => Err(Error::Ownership(Ownership::OtherOwner)),
            _ => Ok(()),
        }
    }

    /// The record of a new block; `plain`: the memory is libc's, not the backend's.
    #[inline(always)]
    #[allow(
        clippy::too_many_arguments,
        reason = "each is one fact of the new block; a struct would only be unpacked again"
    )]
    fn record(
        self: &Arc<Self>,
        slot: RecordSlot,
        p: NonNull<u8>,
        req: Request,
        arena: Option<&Arc<ArenaTag>>,
        ty: &'static str,
        // Some when the bytes were charged ahead: the bytes of a replaced
        // block still counted.
        charged: Option<usize>,
        adopted: bool,
        plain: bool,
        s: Option<Serialized<'_>>,
    ) -> Result<RecordRef> {
        let rec = slot.fill(Record::new(
            p,
            req.size,
            req.align,
            CoreRef::new(self),
            arena.cloned(),
        ));
        if plain {
            rec.mark_plain_memory();
        }
        // Indexed before anyone can see it; an adopted address must be in
        // no live block (it would be freed twice). Nothing is counted yet:
        // on failure the caller gives back the charge and the block.
        // SAFETY: `rec` was just filled in its shared memory, and is held.
        if let Err(e) = unsafe { index::insert(&rec, adopted, s) } {
            rec.abandon();
            return Err(e);
        }
        if let Some(replaced) = charged {
            budget::commit_all(self.targets(arena.map(|t| &**t), true), replaced as u64);
        } else {
            // A limited allocator (the only kind with `over`) always charges.
            debug_assert!(self.over.is_none());
            self.count_alloc(req.size, s);
            if let Some(tag) = arena {
                tag.counters.on_alloc(req.size, s);
            }
        }
        observer::made(p.as_ptr().expose_provenance(), req.size);
        // Arena memory is freed by its scope: never recorded.
        if arena.is_none() && self.tracks() {
            track::register(&rec, ty);
        }
        Ok(rec)
    }

    /// Takes ownership of a block this allocator's C counterpart allocated.
    pub fn adopt(
        self: &Arc<Self>,
        addr: usize,
        req: Request,
        s: Option<Serialized<'_>>,
    ) -> Result<RecordRef> {
        self.adopt_in(addr, req, None, "", s)
    }

    /// [`AllocCore::adopt`], naming the element type for leak records.
    pub fn adopt_typed(
        self: &Arc<Self>,
        addr: usize,
        req: Request,
        ty: &'static str,
        s: Option<Serialized<'_>>,
    ) -> Result<RecordRef> {
        self.adopt_in(addr, req, None, ty, s)
    }

    /// As [`AllocCore::adopt`], owned by `arena` when given.
    pub fn adopt_in(
        self: &Arc<Self>,
        addr: usize,
        req: Request,
        arena: Option<&Arc<ArenaTag>>,
        ty: &'static str,
        s: Option<Serialized<'_>>,
    ) -> Result<RecordRef> {
        let p = NonNull::new(std::ptr::with_exposed_provenance_mut::<u8>(addr))
            .ok_or(Error::NullPointer)?;
        self.check_tag(arena)?;
        let slot = RecordSlot::new(s)?;
        let tag = arena.map(|t| &**t);
        let charged = self.charge(req.size, 0, tag, true)?;
        let plain = self.backend.adopts_plain();
        self.record(
            slot,
            p,
            req,
            arena,
            ty,
            charged.then_some(0),
            true,
            plain,
            s,
        )
        .inspect_err(|_| self.uncharge(charged, req.size, tag))
    }

    /// Frees a block through this allocator (its owner group must own it).
    pub fn free(&self, rec: &Record, addr: usize, s: Option<Serialized<'_>>) -> Result<()> {
        rec.free(self.group, 0, addr, s)
    }

    /// Resizes `rec` (viewed at `addr`) to `new` bytes. The old record dies
    /// (`Reallocated`) and a new one is returned; on failure nothing changes.
    pub fn realloc(
        self: &Arc<Self>,
        rec: &Record,
        addr: usize,
        new: usize,
        s: Option<Serialized<'_>>,
    ) -> Result<RecordRef> {
        let slot = RecordSlot::new(s)?;
        rec.begin_realloc(self.group, 0, addr, s)?;
        let old = rec.size();
        let align = rec.align();
        let same = std::ptr::eq(&**self, rec.allocator());
        // Limits count the difference: the old block is counted free below.
        let charged = self
            .charge(new, old, None, same)
            .inspect_err(|_| rec.undo_realloc(s))?;
        // SAFETY: begin_realloc made us the only user of the old block.
        let moved = unsafe {
            if same && !rec.is_plain_memory() {
                self.backend
                    .realloc(rec_ptr(rec), old, new, align, self.zeroed, s)
            } else {
                // Same owner group, another backend: move the bytes across
                // (after the old block's guard bytes, if any, check out).
                let from = rec.backend();
                from.verify(rec_ptr(rec), old, align).and_then(|()| {
                    self.backend
                        .alloc(new, align, self.zeroed, s)
                        .inspect(|fresh| {
                            std::ptr::copy_nonoverlapping(
                                rec_ptr(rec).as_ptr(),
                                fresh.as_ptr(),
                                old.min(new),
                            );
                            let _ = from.free(rec_ptr(rec), old, align, s);
                        })
                })
            }
        };
        match moved {
            Ok(p) => {
                observer::gone(rec.addr());
                rec.finish_realloc(s);
                let ty = track::type_of(rec);
                // The old block is counted free already: nothing to credit.
                let req = Request { size: new, align };
                let fresh = self
                    .record(
                        slot,
                        p,
                        req,
                        None,
                        ty,
                        charged.then_some(0),
                        false,
                        false,
                        s,
                    )
                    .inspect_err(|_| {
                        self.uncharge(charged, new, None);
                        // SAFETY: the moved block has no record: give it back.
                        let _ = unsafe { self.backend.free(p, new, align, s) };
                    })?;
                if rec.is_autofree() {
                    fresh.set_autofree(s)?;
                }
                Ok(fresh)
            }
            Err(e) => {
                self.uncharge(charged, new, None);
                rec.undo_realloc(s);
                Err(e)
            }
        }
    }
}

pub(crate) fn rec_ptr(rec: &Record) -> NonNull<u8> {
    NonNull::new(std::ptr::with_exposed_provenance_mut::<u8>(rec.addr()))
        .expect("records never hold null")
}
