//! A record's state changes that have follow-ups elsewhere in the core: the
//! address index forgets (or keeps) the block, the leak registry ends its
//! entry, the memory goes back. The state machine itself (the word, its
//! transitions and checks) is the parent module and calls none of these;
//! this is the one place that joins a transition to its follow-up.

use super::*;
use crate::core::index;
use crate::core::track;

impl Record {
    /// Frees the block on behalf of an allocator of `owner_group` (arena 0) or
    /// of the arena `arena`, as asked through a view at `addr`. The counters
    /// stop counting it at once; the memory goes back when no export pins it.
    /// `s`: the caller's serialization proof (None: the synchronised path),
    /// as every state change here takes it.
    pub fn free(
        &self,
        owner_group: u64,
        arena: u64,
        addr: usize,
        s: Option<Serialized<'_>>,
    ) -> Result<()> {
        let death = if arena != 0 { RELEASED } else { FREED };
        let prev = self.update(|w| {
            self.check_free(w, owner_group, arena, addr)?;
            Ok((w & !STATE_MASK) | death)
        })?;
        index::remove_dead(self, s);
        self.count_free(prev, s);
        track::on_end(self, arena == 0);
        if pins_of(prev) == 0 {
            self.return_memory(s)
        } else {
            // Exported: the memory goes back later; check its guard bytes now.
            self.backend().verify(self.addr, self.size, self.align())
        }
    }

    /// [`Record::free`] by the block's own allocator group, for a block that
    /// [`frees_plainly`](Record::frees_plainly): the common word (live, no
    /// flags, no exports) viewed at its start takes one compare-and-swap
    /// (with the serialization proof, a store: no other thread can change
    /// the word meanwhile) and nothing else; any other case is `free` itself.
    #[inline]
    pub fn free_plain(&self, addr: usize, s: Option<Serialized<'_>>) -> Result<()> {
        let w = self.word.load(Relaxed);
        if addr == self.addr()
            && w & !(ALIGN_MASK | REF_MASK) == LIVE
            && self.replace_word(w, w | FREED, s.is_some())
        {
            index::remove_dead(self, s);
            let alloc = self.allocator();
            alloc.count_free(self.size, s);
            return self.return_memory_of(alloc, s);
        }
        self.free(self.allocator().group, 0, addr, s)
    }

    /// Ownership leaves rsalloc, whoever owned the block (allocator or
    /// arena): it stays usable through its views but is no longer counted or
    /// freeable here. `addr` is the view asking; it must be the block's start.
    /// Refused while exported: the new owner may free the memory at once,
    /// under a memoryview or array that still looks into it.
    pub fn detach(&self, addr: usize, s: Option<Serialized<'_>>) -> Result<usize> {
        let prev = self.update(|w| match decode(w) {
            State::Dead(d) => Err(Error::UseAfterFree(d)),
            State::Detached => Err(Error::Ownership(Ownership::Detached)),
            State::Live if addr != self.addr() => Err(Error::Ownership(Ownership::Interior)),
            // Guard bytes surround it: C's free() of this address would
            // corrupt the heap, and C is who gets a detached block.
            State::Live if !self.c_can_free() => Err(Error::Ownership(Ownership::Guarded)),
            State::Live if pins_of(w) != 0 => Err(Error::Exported),
            State::Live => Ok((w & !(STATE_MASK | IN_ARENA)) | DETACHED),
        })?;
        // C may free it from now on, and libc hand the address out again.
        index::remove(self, s);
        self.count_free(prev, s);
        track::on_end(self, false);
        crate::core::observer::gone(self.addr());
        Ok(self.addr())
    }

    /// Marks the block to be freed when the record's last reference goes.
    /// The garbage collector owns the block from now on, so it cannot leak:
    /// it leaves the leak registry.
    pub fn set_autofree(&self, s: Option<Serialized<'_>>) -> Result<()> {
        self.update(|w| match decode(w) {
            State::Dead(d) => Err(Error::UseAfterFree(d)),
            _ => Ok(w | AUTOFREE),
        })?;
        // The garbage collector frees it: the index holds no count on it.
        index::uncount(self, s);
        track::on_end(self, false);
        Ok(())
    }

    /// Begins a realloc: the block must be live, owned by `owner_group`, at
    /// `addr`, and not exported. On success it is marked reallocated; the
    /// caller then either [`Record::finish_realloc`]s or [`Record::undo_realloc`]s.
    pub(crate) fn begin_realloc(
        &self,
        owner_group: u64,
        arena: u64,
        addr: usize,
        s: Option<Serialized<'_>>,
    ) -> Result<()> {
        self.update(|w| {
            self.check_free(w, owner_group, arena, addr)?;
            if pins_of(w) != 0 {
                return Err(Error::Exported);
            }
            Ok((w & !STATE_MASK) | REALLOCATED)
        })?;
        // The memory may move: out of the index before the backend runs.
        index::remove(self, s);
        Ok(())
    }

    pub(crate) fn undo_realloc(&self, s: Option<Serialized<'_>>) {
        self.word.fetch_and(!STATE_MASK, AcqRel);
        // Back where it was: its slot or span is still there (the index
        // never gives room back), so this needs no memory.
        // SAFETY: records live in their shared memory; the caller holds one.
        let _ = unsafe { index::insert(self, false, s) };
    }

    /// The end of [`Record::lose`]: its tracking entry goes.
    pub(crate) fn after_lost(&self) {
        track::on_end(self, false);
    }

    /// The old block's memory now belongs to the new record: count it freed
    /// (in its arena too when an arena owned it).
    pub(crate) fn finish_realloc(&self, s: Option<Serialized<'_>>) {
        // SAFETY: as in `undo_realloc`.
        unsafe { index::keep_dead(self, s) };
        self.count_free(self.word.load(Acquire), s);
        track::on_end(self, true);
    }
}

// A drop has no caller to hand it the serialization proof: the autofree
// block's ending takes the synchronised path (the index locks, the counters
// count with read-modify-writes, libc's block goes to `free`, not the cache).
impl Drop for Record {
    fn drop(&mut self) {
        let w = *self.word.get_mut();
        if decode(w) == State::Live {
            // The last reference to a live block: an autofree one (the
            // index holds a count on every other live block). It leaves
            // the index before the record's memory goes.
            index::remove(self, None);
        }
        if w & AUTOFREE != 0 && decode(w) == State::Live && w & IN_ARENA == 0 {
            self.allocator().count_free(self.size, None);
            if let Err(e) = self.return_memory(None) {
                // No caller to raise to: the garbage collector freed it.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "rsalloc: {e}: autofree block at {:#x} from {}",
                    self.addr(),
                    self.allocator().name
                );
            }
        }
    }
}
