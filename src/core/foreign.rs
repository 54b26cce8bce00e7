//! Backends over memory functions that are not libc's: a pair of C functions
//! (`sqlite3_malloc64`/`sqlite3_free`, `g_malloc`/`g_free`, ...) called
//! natively, and the checks every foreign backend applies to what its
//! allocation function returns, so that a bad address is an error and never
//! a crash.

use super::alloc::Backend;
use super::error::{BadBlock, Error, Result};
use super::serial::Serialized;
use std::ffi::c_void;
use std::ptr::NonNull;

/// Validates a raw result of an allocation function asked for `size` bytes
/// at `align`. 0 means out of memory. A misaligned block is handed to
/// `give_back` before the error is returned, so nothing leaks.
pub fn check_block(
    value: i128,
    size: usize,
    align: usize,
    give_back: impl FnOnce(NonNull<u8>),
) -> Result<NonNull<u8>> {
    if value == 0 {
        return Err(Error::OutOfMemory(size));
    }
    let addr = usize::try_from(value)
        .ok()
        .filter(|a| {
            a.checked_add(size)
                .is_some_and(|end| end <= isize::MAX as usize)
        })
        .ok_or_else(|| {
            Error::BadBlock(BadBlock::NotAnAddress {
                value: value.to_string(),
                size,
            })
        })?;
    let p =
        NonNull::new(std::ptr::with_exposed_provenance_mut::<u8>(addr)).expect("checked non-zero");
    if addr % align != 0 {
        give_back(p);
        return Err(Error::BadBlock(BadBlock::Misaligned { addr, align }));
    }
    Ok(p)
}

pub type AllocFn = unsafe extern "C" fn(usize) -> *mut c_void;
pub type FreeFn = unsafe extern "C" fn(*mut c_void);
/// A sized free, `void free(void *, size_t)` (GMP's, C++'s sized delete).
pub type SizedFreeFn = unsafe extern "C" fn(*mut c_void, usize);

/// What a free-only allocator says when asked to allocate.
pub const FREE_ONLY: &str =
    "this allocator only frees (ForeignAllocator(None, free)): it can adopt memory, not allocate it";

/// How a backend's free function is called.
#[derive(Clone, Copy)]
pub enum Free {
    Plain(FreeFn),
    /// Given the size the block was allocated or adopted with.
    Sized(SizedFreeFn),
}

impl Free {
    /// # Safety
    /// `p` is a block the function frees, of `size` bytes.
    pub unsafe fn call(self, p: *mut c_void, size: usize) {
        // SAFETY: the caller's contract; the signature is the constructor's.
        unsafe {
            match self {
                Free::Plain(f) => f(p),
                Free::Sized(f) => f(p, size),
            }
        }
    }

    fn address(self) -> usize {
        match self {
            Free::Plain(f) => (f as *const ()).expose_provenance(),
            Free::Sized(f) => (f as *const ()).expose_provenance(),
        }
    }
}

/// Two C functions, `void *alloc(size_t)` and `void free(void *)` (or
/// `free(void *, size_t)`), called directly (no trip through Python); no
/// alloc function for a free-only allocator.
pub struct CFunctions {
    alloc: Option<AllocFn>,
    free: Free,
    /// The largest request the alloc function's parameter type can carry
    /// (a 32-bit `int` parameter would silently truncate a bigger size).
    max_size: usize,
    /// Whatever keeps the functions valid (the binding layer's function
    /// objects: a ctypes callback's thunk dies with its object).
    _keep: Box<dyn KeepAlive>,
}

/// What a [`CFunctions`] holds only to keep its functions valid: anything
/// the binding hands over; the core never looks at it, only drops it.
pub trait KeepAlive: Send + Sync {}

impl<T: Send + Sync> KeepAlive for T {}

impl CFunctions {
    /// # Safety
    /// `alloc` (0: none, a free-only allocator) and `free` are the addresses
    /// of C functions with the signatures of [`AllocFn`] and [`FreeFn`] (or
    /// [`SizedFreeFn`] when `sized`; for `alloc`, a parameter narrower than
    /// `size_t` is fine when `max_size` fits it), that stay valid while
    /// `keep` lives, and `free` frees what `alloc` returns.
    pub unsafe fn new(
        alloc: usize,
        free: usize,
        sized: bool,
        max_size: usize,
        keep: Box<dyn KeepAlive>,
    ) -> Option<Self> {
        if free == 0 {
            return None;
        }
        // SAFETY: non-null function addresses with these signatures (caller's contract).
        let (alloc, free) = unsafe {
            (
                (alloc != 0).then(|| std::mem::transmute::<usize, AllocFn>(alloc)),
                if sized {
                    Free::Sized(std::mem::transmute::<usize, SizedFreeFn>(free))
                } else {
                    Free::Plain(std::mem::transmute::<usize, FreeFn>(free))
                },
            )
        };
        Some(CFunctions {
            alloc,
            free,
            max_size,
            _keep: keep,
        })
    }
}

impl Backend for CFunctions {
    fn alloc(
        &self,
        size: usize,
        align: usize,
        zeroed: bool,
        _s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        // A zero-byte request asks for one: C allocators may return NULL for 0.
        let n = size.max(1);
        let alloc = self.alloc.ok_or(Error::Unsupported(FREE_ONLY))?;
        if n > self.max_size {
            return Err(Error::OutOfMemory(size));
        }
        // SAFETY: the function has this signature (constructor's contract).
        let raw = unsafe { alloc(n) }.expose_provenance();
        let p = check_block(raw as i128, n, align, |p| unsafe {
            // SAFETY: `p` came from `alloc` (n bytes) and is not used again.
            self.free.call(p.as_ptr() as *mut c_void, n)
        })?;
        if zeroed {
            // SAFETY: the block holds n bytes.
            unsafe { std::ptr::write_bytes(p.as_ptr(), 0, n) };
        }
        Ok(p)
    }

    unsafe fn free(
        &self,
        ptr: NonNull<u8>,
        size: usize,
        _align: usize,
        _s: Option<Serialized<'_>>,
    ) -> Result<()> {
        // SAFETY: `ptr` came from `alloc` (or was adopted from the same C
        // allocator); a block of no bytes was allocated as one.
        unsafe { self.free.call(ptr.as_ptr() as *mut c_void, size.max(1)) };
        Ok(())
    }

    fn native_free(&self) -> Option<usize> {
        Some(self.free.address())
    }

    fn free_only(&self) -> bool {
        self.alloc.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alloc::{new_id, AllocCore};
    use crate::core::error::{Error, Ownership};
    use crate::core::layout::array;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;

    static LIVE: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn counting_alloc(n: usize) -> *mut c_void {
        LIVE.fetch_add(1, Relaxed);
        // SAFETY: forwards to malloc, the contract of an allocation function.
        unsafe { libc::malloc(n) }
    }
    unsafe extern "C" fn counting_free(p: *mut c_void) {
        LIVE.fetch_sub(1, Relaxed);
        // SAFETY: `p` came from `counting_alloc` (malloc), as the free contract says.
        unsafe { libc::free(p) }
    }
    // Returns blocks one byte past malloc's, so never aligned to 2 or more.
    unsafe extern "C" fn odd_alloc(n: usize) -> *mut c_void {
        // SAFETY: malloc's block is n + 1 bytes, so one past its start is in bounds (or null + 1,
        // which the caller never dereferences: the test fails before).
        unsafe { (libc::malloc(n + 1) as *mut u8).add(1) as *mut c_void }
    }
    unsafe extern "C" fn odd_free(p: *mut c_void) {
        // SAFETY: `p` came from `odd_alloc`: one byte past the start of a malloc block.
        unsafe { libc::free((p as *mut u8).sub(1) as *mut c_void) }
    }
    unsafe extern "C" fn null_alloc(_n: usize) -> *mut c_void {
        std::ptr::null_mut()
    }

    fn core(alloc: AllocFn, free: FreeFn, max: usize, zeroed: bool) -> Arc<AllocCore> {
        // SAFETY: the two addresses are C functions of the signatures `CFunctions::new` expects,
        // valid for the process.
        let b = unsafe {
            CFunctions::new(
                (alloc as *const ()).expose_provenance(),
                (free as *const ()).expose_provenance(),
                false,
                max,
                Box::new(()),
            )
        };
        AllocCore::new("c", new_id(), zeroed, Box::new(b.unwrap()))
    }

    #[test]
    fn c_functions_get_every_check() {
        let a = core(counting_alloc, counting_free, usize::MAX, true);
        let r = a
            .allocate(array(16, 4, 4, None).unwrap(), None, None)
            .unwrap();
        // SAFETY: `r` is a live 64-byte block (16 Int32s).
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(r.addr()), 64)
        };
        assert!(bytes.iter().all(|b| *b == 0));
        assert_eq!(LIVE.load(Relaxed), 1);
        assert_eq!(
            a.backend.native_free(),
            Some((counting_free as *const ()).expose_provenance())
        );
        let libc_heap = AllocCore::new(
            "malloc",
            crate::core::alloc::LIBC_GROUP,
            false,
            Box::new(crate::core::alloc::Libc),
        );
        assert!(matches!(
            libc_heap.free(&r, r.addr(), None),
            Err(Error::Ownership(Ownership::OtherOwner))
        ));
        // realloc moves through alloc + copy + free of the same functions.
        // SAFETY: `r` is live and 64 bytes long.
        unsafe {
            std::ptr::write_bytes(std::ptr::with_exposed_provenance_mut::<u8>(r.addr()), 5, 64)
        };
        let n = a.realloc(&r, r.addr(), 128, None).unwrap();
        // SAFETY: `n` is the live 128-byte block realloc returned.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(n.addr()), 128)
        };
        assert!(bytes[..64].iter().all(|b| *b == 5) && bytes[64..].iter().all(|b| *b == 0));
        assert_eq!(LIVE.load(Relaxed), 1);
        a.free(&n, n.addr(), None).unwrap();
        assert!(matches!(
            a.free(&n, n.addr(), None),
            Err(Error::DoubleFree(_))
        ));
        assert_eq!(LIVE.load(Relaxed), 0);
        assert_eq!(a.counters.snapshot().live_count, 0);
        // Zero bytes still gets a block of its own.
        let z = a
            .allocate(array(0, 1, 1, None).unwrap(), None, None)
            .unwrap();
        a.free(&z, z.addr(), None).unwrap();
    }

    static SIZES: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

    unsafe extern "C" fn sized_free(p: *mut c_void, n: usize) {
        SIZES.lock().unwrap().push(n);
        // SAFETY: `p` came from `libc::malloc` (the paired allocation function).
        unsafe { libc::free(p) }
    }

    #[test]
    fn a_sized_free_gets_the_size_allocated_or_adopted_with() {
        // SAFETY: `libc::malloc` and `sized_free` have the signatures declared (a sized free),
        // valid for the process.
        let b = unsafe {
            CFunctions::new(
                (libc::malloc as *const ()).expose_provenance(),
                (sized_free as *const ()).expose_provenance(),
                true,
                usize::MAX,
                Box::new(()),
            )
        };
        let a = AllocCore::new("sized", new_id(), false, Box::new(b.unwrap()));
        let r = a
            .allocate(array(5, 8, 8, None).unwrap(), None, None)
            .unwrap();
        a.free(&r, r.addr(), None).unwrap();
        // SAFETY: a plain libc call; the block is adopted below.
        let raw = unsafe { libc::malloc(7) }.expose_provenance();
        let q = a.adopt(raw, array(7, 1, 1, None).unwrap(), None).unwrap();
        a.free(&q, raw, None).unwrap();
        let z = a
            .allocate(array(0, 1, 1, None).unwrap(), None, None)
            .unwrap();
        a.free(&z, z.addr(), None).unwrap();
        assert_eq!(
            *SIZES.lock().unwrap(),
            [40, 7, 1],
            "a block of no bytes was allocated as one"
        );
    }

    #[test]
    fn a_free_only_backend_adopts_but_never_allocates() {
        // SAFETY: no allocation function (0), and `counting_free` has the free signature.
        let b = unsafe {
            CFunctions::new(
                0,
                (counting_free as *const ()).expose_provenance(),
                false,
                0,
                Box::new(()),
            )
        };
        let a = AllocCore::new("free-only", new_id(), false, Box::new(b.unwrap()));
        assert!(matches!(
            a.allocate(array(8, 1, 1, None).unwrap(), None, None),
            Err(Error::Unsupported(FREE_ONLY))
        ));
        assert_eq!(a.counters.snapshot().total_allocs, 0);
        // SAFETY: calls the malloc wrapper; the block is adopted below.
        let raw = unsafe { counting_alloc(16) }.expose_provenance();
        let r = a.adopt(raw, array(16, 1, 1, None).unwrap(), None).unwrap();
        assert!(matches!(
            a.realloc(&r, raw, 32, None),
            Err(Error::Unsupported(_))
        ));
        assert_eq!(
            r.state(),
            crate::core::record::State::Live,
            "a refused realloc changes nothing"
        );
        let before = LIVE.load(Relaxed);
        a.free(&r, raw, None).unwrap();
        assert_eq!(LIVE.load(Relaxed), before - 1);
    }

    #[test]
    fn bad_results_are_errors() {
        let a = core(odd_alloc, odd_free, usize::MAX, false);
        let e = a
            .allocate(array(8, 8, 8, None).unwrap(), None, None)
            .unwrap_err();
        assert!(matches!(
            &e,
            Error::BadBlock(BadBlock::Misaligned { align: 8, .. })
        ));
        assert_eq!(a.counters.snapshot().total_allocs, 0);
        // Byte alignment is satisfied by any address.
        let r = a
            .allocate(array(8, 1, 1, None).unwrap(), None, None)
            .unwrap();
        a.free(&r, r.addr(), None).unwrap();

        let a = core(null_alloc, libc::free as FreeFn, usize::MAX, false);
        assert!(matches!(
            a.allocate(array(8, 1, 1, None).unwrap(), None, None),
            Err(Error::OutOfMemory(8))
        ));
        let a = core(counting_alloc, counting_free, i32::MAX as usize, false);
        assert!(matches!(
            a.allocate(array(1 << 31, 1, 1, None).unwrap(), None, None),
            Err(Error::OutOfMemory(_))
        ));
        assert!(matches!(
            check_block(-8, 8, 8, |_| unreachable!()),
            Err(Error::BadBlock(_))
        ));
        assert!(matches!(
            check_block(isize::MAX as i128 - 4, 8, 1, |_| unreachable!()),
            Err(Error::BadBlock(_))
        ));
        // SAFETY: address 1 is refused before it is ever called (the test checks `None`).
        assert!(unsafe { CFunctions::new(1, 0, false, 1, Box::new(())) }.is_none());
    }
}
