//! libc's heap: the system allocator. rsalloc never uses Rust's global
//! allocator for user memory, so a block can cross into C and back (C may
//! `free()` what `malloc` gave; `malloc.adopt` takes what C's `malloc` gave).

use super::error::{Error, Result};
use super::layout::MALLOC_ALIGN;
use std::ptr::NonNull;

/// Zeroed blocks up to this size are `malloc` + `memset`: glibc's `calloc`
/// bypasses its per-thread cache, which costs more than clearing a small
/// block (+164 instructions for 64 bytes, callgrind). Larger ones keep
/// `calloc`, which skips the clearing for fresh pages from the kernel.
const SMALL_CALLOC: usize = 64 * 1024;

/// `size` bytes aligned to `align` from libc. A zero-byte request still gets
/// a unique, freeable address, as `malloc(0)` is allowed to return NULL.
pub fn alloc(size: usize, align: usize, zeroed: bool) -> Result<NonNull<u8>> {
    if !super::reserve::ready() {
        // Memory ran out and the emergency reserve is spent: no new block
        // until it can be taken back (core::reserve).
        return Err(Error::OutOfMemory(size));
    }
    let n = size.max(1);
    let p = if align <= MALLOC_ALIGN {
        // SAFETY: plain libc calls; a null result is handled below.
        unsafe {
            if zeroed && n > SMALL_CALLOC {
                libc::calloc(1, n)
            } else {
                // black_box: LLVM would fuse malloc + memset back into calloc.
                let p = std::hint::black_box(libc::malloc(n));
                if zeroed && !p.is_null() {
                    std::ptr::write_bytes(p as *mut u8, 0, n);
                }
                p
            }
        }
    } else {
        let mut out: *mut libc::c_void = std::ptr::null_mut();
        // SAFETY: align is a power of two and a multiple of sizeof(void*).
        let rc =
            unsafe { libc::posix_memalign(&mut out, align.max(std::mem::size_of::<usize>()), n) };
        if rc != 0 {
            out = std::ptr::null_mut();
        } else if zeroed {
            // SAFETY: `out` holds n writable bytes.
            unsafe { std::ptr::write_bytes(out as *mut u8, 0, n) };
        }
        out
    };
    NonNull::new(p as *mut u8).ok_or(Error::OutOfMemory(size))
}

/// Resizes a block from [`alloc`]. On failure the old block is untouched.
///
/// # Safety
/// `ptr` came from [`alloc`] with `old` bytes and `align`, and is not used
/// again after a successful call.
pub unsafe fn realloc(
    ptr: NonNull<u8>,
    old: usize,
    new: usize,
    align: usize,
    zeroed: bool,
) -> Result<NonNull<u8>> {
    let fresh = if align <= MALLOC_ALIGN {
        // SAFETY: ptr is a live libc block (caller's contract).
        let p = unsafe { libc::realloc(ptr.as_ptr() as *mut libc::c_void, new.max(1)) } as *mut u8;
        NonNull::new(p).ok_or(Error::OutOfMemory(new))?
    } else {
        // realloc does not keep an alignment above malloc's.
        let p = alloc(new, align, false)?;
        // SAFETY: both blocks hold at least min(old, new) bytes and are distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr.as_ptr(), p.as_ptr(), old.min(new));
            libc::free(ptr.as_ptr() as *mut libc::c_void);
        }
        p
    };
    if zeroed && new > old {
        // SAFETY: the new block holds `new` bytes.
        unsafe { std::ptr::write_bytes(fresh.as_ptr().add(old), 0, new - old) };
    }
    Ok(fresh)
}

/// Returns a block to libc.
///
/// # Safety
/// `ptr` came from [`alloc`] or C's malloc family and is not used again.
pub unsafe fn free(ptr: NonNull<u8>) {
    // SAFETY: caller's contract.
    unsafe { libc::free(ptr.as_ptr() as *mut libc::c_void) }
}

/// The address of libc's `free`, for C APIs that take a destructor.
pub fn free_fn_address() -> usize {
    (libc::free as *const ()).expose_provenance()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_honoured() {
        for align in [1, 8, 16, 32, 64, 4096, 1 << 16] {
            for zeroed in [false, true] {
                let p = alloc(100, align, zeroed).unwrap();
                assert_eq!(p.as_ptr().addr() % align, 0);
                if zeroed {
                    // SAFETY: `p` is a live 100-byte block.
                    let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), 100) };
                    assert!(s.iter().all(|b| *b == 0));
                }
                // SAFETY: `p` came from `alloc` and is not used again.
                unsafe { free(p) };
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_on_reused_memory() {
        // A dirty block freed just before is what malloc hands out next.
        for n in [
            1,
            24,
            64,
            1000,
            4096,
            SMALL_CALLOC,
            SMALL_CALLOC + 1,
            1 << 20,
        ] {
            for _ in 0..3 {
                let dirty = alloc(n, 8, false).unwrap();
                // SAFETY: `dirty` is a live `n`-byte block, freed once after the write.
                unsafe {
                    std::ptr::write_bytes(dirty.as_ptr(), 0xAA, n);
                    free(dirty);
                }
                let p = alloc(n, 8, true).unwrap();
                // SAFETY: `p` is a live `n`-byte block.
                let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), n) };
                assert!(bytes.iter().all(|b| *b == 0), "{n} bytes");
                // SAFETY: `p` came from `alloc` and is not used again.
                unsafe { free(p) };
            }
        }
    }

    #[test]
    fn zero_bytes_gives_a_unique_address() {
        let a = alloc(0, 8, false).unwrap();
        let b = alloc(0, 8, false).unwrap();
        assert_ne!(a, b);
        // SAFETY: `a` and `b` came from `alloc`, each freed once.
        unsafe {
            free(a);
            free(b);
        }
    }

    #[test]
    fn unsatisfiable_requests_are_errors() {
        for zeroed in [false, true] {
            for align in [8, 64] {
                assert!(matches!(
                    alloc(1 << 62, align, zeroed),
                    Err(Error::OutOfMemory(_))
                ));
            }
        }
        let p = alloc(16, 8, false).unwrap();
        // SAFETY: `p` came from `alloc(16, 8)`; a failed realloc leaves it as it was.
        let e = unsafe { realloc(p, 16, 1 << 62, 8, false) };
        assert!(matches!(e, Err(Error::OutOfMemory(_))));
        // SAFETY: the failed realloc left `p` ours; it is not used again.
        unsafe { free(p) }; // still ours after the failed realloc
    }

    #[test]
    fn realloc_keeps_bytes_and_zeroes_tail() {
        for align in [8, 256] {
            let p = alloc(8, align, true).unwrap();
            // SAFETY: `p` is a live 8-byte block.
            unsafe { std::ptr::write_bytes(p.as_ptr(), 7, 8) };
            // SAFETY: `p` came from `alloc(8, align)`; on success it is not used again.
            let q = unsafe { realloc(p, 8, 64, align, true) }.unwrap();
            assert_eq!(q.as_ptr().addr() % align, 0);
            // SAFETY: `q` is the live 64-byte block realloc returned.
            let s = unsafe { std::slice::from_raw_parts(q.as_ptr(), 64) };
            assert!(s[..8].iter().all(|b| *b == 7) && s[8..].iter().all(|b| *b == 0));
            // SAFETY: `q` came from `realloc` and is not used again.
            unsafe { free(q) };
        }
    }
}
