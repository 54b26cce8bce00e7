//! Guard bytes for the diagnostic allocators (DESIGN §7): each block is
//! over-allocated from libc with a canary region before and after it, and
//! the canaries are checked when the block is freed or moved.
//!
//! ```text
//! base                     ptr (aligned as asked)
//! | canary: max(16, align) | user bytes (size)    | canary: 16 |
//! ```
//! The prefix is a multiple of the alignment and the base is allocated at
//! that alignment, so the user pointer keeps it. Nothing needs a header:
//! `free` gets the size and alignment from the record.

use super::error::{Corruption, Error, Result};
use super::serial::Serialized;
use super::sys;
use std::ptr::NonNull;

/// Bytes of canary after each block, and the least before it.
pub const GUARD: usize = 16;
/// Fill for fresh, non-zeroed diagnostic memory: reads of uninitialised
/// bytes show up as 0xCD… in C and Python alike.
pub const CLEAN: u8 = 0xCD;
/// Fill for freed memory, so a C reader of a dangling pointer sees 0xDD….
pub const DEAD: u8 = 0xDD;

/// The canary byte at `i` bytes into a guard region: position-dependent, so
/// a run of one value (a `memset`) never matches it.
#[inline]
fn canary(i: usize) -> u8 {
    0xA5 ^ (i as u8).wrapping_mul(0x3B)
}

fn prefix(align: usize) -> usize {
    align.max(GUARD)
}

/// Returns the guarded backend's block and the total bytes under it.
fn span(size: usize, align: usize) -> Option<usize> {
    prefix(align).checked_add(size)?.checked_add(GUARD)
}

fn fill_canary(p: *mut u8, n: usize) {
    for i in 0..n {
        // SAFETY: the caller owns n writable bytes at p.
        unsafe { p.add(i).write(canary(i)) };
    }
}

/// Bytes in a guard region that no longer hold their canary.
fn damaged(p: *const u8, n: usize) -> usize {
    // SAFETY: the caller owns n readable bytes at p.
    (0..n)
        .filter(|&i| unsafe { p.add(i).read() } != canary(i))
        .count()
}

/// libc memory with canaries around each block.
pub struct Guarded;

impl Guarded {
    /// Checks both canaries of a block from [`Guarded`].
    ///
    /// # Safety
    /// `ptr` came from this backend with `size` and `align` and was not freed.
    pub unsafe fn verify(ptr: NonNull<u8>, size: usize, align: usize) -> Result<()> {
        let pre = prefix(align);
        // SAFETY: the block has pre canary bytes before ptr and GUARD after size.
        let (before, after) = unsafe {
            (
                damaged(ptr.as_ptr().sub(pre), pre),
                damaged(ptr.as_ptr().add(size), GUARD),
            )
        };
        if before == 0 && after == 0 {
            Ok(())
        } else {
            Err(Error::HeapCorruption(Corruption {
                before,
                after,
                size,
            }))
        }
    }
}

impl super::alloc::Backend for Guarded {
    fn alloc(
        &self,
        size: usize,
        align: usize,
        zeroed: bool,
        _s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        let total = span(size, align).ok_or(Error::OutOfMemory(size))?;
        if total > isize::MAX as usize {
            return Err(Error::OutOfMemory(size));
        }
        let pre = prefix(align);
        let base = sys::alloc(total, align, false)?;
        // SAFETY: base holds `total` bytes = pre + size + GUARD.
        unsafe {
            let p = base.as_ptr();
            fill_canary(p, pre);
            std::ptr::write_bytes(p.add(pre), if zeroed { 0 } else { CLEAN }, size);
            fill_canary(p.add(pre + size), GUARD);
            Ok(NonNull::new_unchecked(p.add(pre)))
        }
    }

    /// Checks the canaries, then returns the memory whatever they say: a
    /// corrupted block is reported, never leaked.
    unsafe fn free(
        &self,
        ptr: NonNull<u8>,
        size: usize,
        align: usize,
        _s: Option<Serialized<'_>>,
    ) -> Result<()> {
        // SAFETY: forwarded contract.
        let verdict = unsafe { Self::verify(ptr, size, align) };
        let pre = prefix(align);
        // SAFETY: ptr - pre is the base sys::alloc returned; span bytes are ours.
        unsafe {
            let base = ptr.as_ptr().sub(pre);
            std::ptr::write_bytes(base, DEAD, pre + size + GUARD);
            sys::free(NonNull::new_unchecked(base));
        }
        verdict
    }

    fn verify(&self, ptr: NonNull<u8>, size: usize, align: usize) -> Result<()> {
        // SAFETY: the trait's caller passes a live block of this backend.
        unsafe { Self::verify(ptr, size, align) }
    }

    /// A diagnostic allocator adopts what C's malloc made: no guard bytes.
    fn adopts_plain(&self) -> bool {
        true
    }
    // realloc: the default (verify, move, free) is what a guarded block needs.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::Backend;

    #[test]
    fn alignment_and_fill() {
        for align in [1, 8, 16, 64, 4096] {
            for zeroed in [false, true] {
                let p = Guarded.alloc(40, align, zeroed, None).unwrap();
                assert_eq!(p.as_ptr().addr() % align, 0);
                // SAFETY: `p` is a live 40-byte guarded block.
                let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), 40) };
                assert!(s.iter().all(|b| *b == if zeroed { 0 } else { CLEAN }));
                // SAFETY: `p` came from `Guarded.alloc` with this size and alignment and is not
                // used again.
                unsafe { Guarded.free(p, 40, align, None) }.unwrap();
            }
        }
    }

    #[test]
    fn overrun_and_underrun_are_reported_and_memory_returned() {
        let p = Guarded.alloc(10, 8, false, None).unwrap();
        // SAFETY: the guard bytes after the 10-byte block belong to the same allocation: writing 3
        // of them is the overrun under test, inside it.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 0, 13) }; // 3 bytes past the end
                                                             // SAFETY: `p` came from `Guarded.alloc(10, 8)` and is not used again.
        match unsafe { Guarded.free(p, 10, 8, None) } {
            Err(Error::HeapCorruption(c)) => assert_eq!((c.before, c.after, c.size), (0, 3, 10)),
            other => panic!("{other:?}"),
        }
        let p = Guarded.alloc(10, 32, false, None).unwrap();
        // SAFETY: the byte before the block is the last guard byte, inside the same allocation.
        unsafe { p.as_ptr().sub(1).write(0) };
        // SAFETY: `p` came from `Guarded.alloc(10, 32)` and is not used again.
        match unsafe { Guarded.free(p, 10, 32, None) } {
            Err(Error::HeapCorruption(c)) => assert_eq!((c.before, c.after), (1, 0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn memset_of_any_value_is_caught() {
        for v in 0..=255u8 {
            let p = Guarded.alloc(4, 8, false, None).unwrap();
            // SAFETY: the 4-byte block is followed by GUARD guard bytes of the same allocation.
            unsafe { std::ptr::write_bytes(p.as_ptr(), v, 4 + GUARD) };
            // SAFETY: `p` came from `Guarded.alloc(4, 8)` and is not used again.
            assert!(unsafe { Guarded.free(p, 4, 8, None) }.is_err(), "value {v}");
        }
    }

    #[test]
    fn realloc_checks_first_and_keeps_bytes() {
        let p = Guarded.alloc(8, 16, false, None).unwrap();
        // SAFETY: `p` is a live 8-byte guarded block.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 7, 8) };
        // SAFETY: `p` came from `Guarded.alloc(8, 16)`; on success it is not used again.
        let q = unsafe { Guarded.realloc(p, 8, 32, 16, true, None) }.unwrap();
        // SAFETY: `q` is the live 32-byte block realloc returned.
        let s = unsafe { std::slice::from_raw_parts(q.as_ptr(), 32) };
        assert!(s[..8].iter().all(|b| *b == 7) && s[8..].iter().all(|b| *b == 0));
        // SAFETY: the byte after the 32-byte block is its first guard byte, inside the allocation.
        unsafe { q.as_ptr().add(32).write(1) };
        assert!(matches!(
            // SAFETY: `q` came from `Guarded.realloc(.., 32, 16, ..)`; the refused move leaves it
            // ours.
            unsafe { Guarded.realloc(q, 32, 64, 16, false, None) },
            Err(Error::HeapCorruption(_))
        ));
        // still ours after the refused move
        // SAFETY: `q` is still the live 32-byte block (the realloc was refused) and is not used
        // again.
        assert!(unsafe { Guarded.free(q, 32, 16, None) }.is_err());
    }

    #[test]
    fn zero_bytes_and_huge_requests() {
        let p = Guarded.alloc(0, 8, false, None).unwrap();
        // SAFETY: `p` came from `Guarded.alloc(0, 8)` and is not used again.
        unsafe { Guarded.free(p, 0, 8, None) }.unwrap();
        assert!(matches!(
            Guarded.alloc(usize::MAX - 8, 8, false, None),
            Err(Error::OutOfMemory(_))
        ));
        assert!(matches!(
            Guarded.alloc(1 << 62, 8, false, None),
            Err(Error::OutOfMemory(_))
        ));
    }
}
