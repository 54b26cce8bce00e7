//! The one switch that tells the core every caller is serialized by an
//! outside lock: the GIL, on interpreters that have one.
//!
//! Several per-block costs exist only to make concurrent callers safe: a
//! counter update is a locked read-modify-write (~2.3 ns on the development
//! machine, eight per block), and record memory is cached per thread, whose
//! thread-local lookup costs ~35 instructions per block (callgrind; ~3.5 ns).
//! When no two threads can be inside the core at once, neither is needed:
//! counters become an atomic load and store, and the record cache one
//! process-wide list.
//!
//! The switch can also hand the core the functions that give record memory
//! ([`assume_serialized_with`]): the binding passes CPython's small-object
//! allocator, which needs the GIL (this very contract) and keeps no header
//! per block, so a 48-byte record costs 48 bytes instead of glibc's 64-byte
//! chunk (every live block has a record).
//!
//! Allocation *state* (free, export, detach) is decided by compare-and-swap
//! whatever this switch says: it is what decides who returns memory.
//!
//! The proof itself is a type, [`Serialized`]: the paths that take it (the
//! block cache, the kept arena chunks) are safe to call only with it. The
//! core's calls that get no token from their caller yet turn the switch
//! into one ([`with_switch`]); docs/architecture.md ("The serialization
//! proof") lists them and what replacing the switch by the token takes.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

static SERIALIZED: AtomicBool = AtomicBool::new(false);

/// The proof that the calling thread holds the one outside lock that every
/// thread holds while it runs the unsynchronised paths taking this token
/// (the block cache, the kept arena chunks): for `'a`, no other thread is
/// in one of them. Code that takes a `Serialized` needs no lock of its own.
///
/// The binding makes it from PyO3's `Python<'py>` (`py::serialized`), on
/// interpreters with a GIL only: a free-threaded build has no token, and
/// the paths that need one stay off. Anything else makes it with
/// [`Serialized::new`], whose caller states the proof.
#[derive(Clone, Copy)]
pub struct Serialized<'a> {
    /// Borrowed for as long as the lock is held; not `Send`: the proof is
    /// the holding thread's.
    _held: PhantomData<(&'a (), *const ())>,
}

impl Serialized<'_> {
    /// A token for as long as the caller's lock is held.
    ///
    /// # Safety
    /// For the token's lifetime the calling thread holds one and the same
    /// lock as every other thread that holds a `Serialized` (the binding:
    /// the GIL), and does not let it go inside the paths that take it (they
    /// call no code of their caller's).
    #[inline(always)]
    pub const unsafe fn new() -> Self {
        Serialized { _held: PhantomData }
    }
}

/// Runs `f` with a token when serialized mode is on ([`assume_serialized`]),
/// for the core's paths that the binding enters without handing one down
/// (a backend's `alloc` and `free`, a record's last drop, a region's chunk):
/// the one place where the process-wide switch still stands for the proof.
/// docs/architecture.md ("The serialization proof") lists its callers and
/// what threading a token to them would take.
#[inline(always)]
pub(crate) fn with_switch<R>(f: impl FnOnce(Option<Serialized<'_>>) -> R) -> R {
    // SAFETY: `assume_serialized`'s contract: every caller into the core
    // holds the outside lock while it runs here, and the token does not
    // outlive this call.
    f(serialized().then(|| unsafe { Serialized::new() }))
}

/// Where the memory of allocation records comes from in serialized mode, as
/// C functions: `alloc(size)` returns memory aligned for any object of that
/// size (at least 8) or null when there is none, and `free(p)` takes back
/// what `alloc` gave. Both are called only under the outside lock.
#[derive(Clone, Copy, Debug)]
pub struct RecordMemory {
    /// `alloc(size)`: at least 8-aligned memory for an object of `size` bytes, or null.
    pub alloc: unsafe extern "C" fn(usize) -> *mut c_void,
    /// `free(p)`: takes back what `alloc` gave.
    pub free: unsafe extern "C" fn(*mut c_void),
}

static RECORD_MEMORY: OnceLock<RecordMemory> = OnceLock::new();

/// Declares that from now on every caller holds one and the same outside
/// lock whenever it runs core code.
///
/// # Safety
/// Every later call into the core, and every drop of a value it handed out
/// (records, regions, allocators), must run while holding that lock (the
/// binding: the GIL; PyO3 refuses sub-interpreters). The lock may be let go
/// only inside callbacks the core makes to its caller's code (a
/// Python-defined allocator's `_raw_alloc` may release the GIL): the
/// unsynchronised steps this switch allows (a counter update, a push or a
/// pop on the record cache, a call to the record memory functions of
/// [`assume_serialized_with`], a region's bump, a region reference's count)
/// never span such a callback. Two threads in one of them at once would
/// corrupt it.
pub unsafe fn assume_serialized() {
    SERIALIZED.store(true, Relaxed);
}

/// [`assume_serialized`], and from now on record memory comes from
/// `records` instead of Rust's global allocator.
///
/// # Safety
/// As [`assume_serialized`]; moreover `records` must be usable under the
/// outside lock (the binding: `PyObject_Malloc` and `PyObject_Free`, which
/// need the GIL), and no record may exist yet, nor any record memory kept
/// for reuse: each slot goes back to the functions that gave it, and the
/// ones taken before would not (checked in debug builds). The first call's
/// functions stay; a later call must pass the same ones.
pub unsafe fn assume_serialized_with(records: RecordMemory) {
    #[cfg(debug_assertions)]
    {
        let kept = SLOTS_FROM_THE_GLOBAL_ALLOCATOR.load(Relaxed);
        debug_assert_eq!(kept, 0, "record memory taken before the switch");
    }
    let kept = RECORD_MEMORY.get_or_init(|| records);
    // Addresses, not fn pointers, compared: the comparison is what is meant.
    debug_assert!(
        kept.alloc as usize == records.alloc as usize
            && kept.free as usize == records.free as usize,
        "record memory functions replaced"
    );
    SERIALIZED.store(true, Relaxed);
}

/// Record slots taken from Rust's global allocator and not given back (in
/// use or kept for reuse), counted by `record_ref`'s slot cache: the switch
/// to other record memory ([`assume_serialized_with`]) needs none. Kept here,
/// below the records, so that this module depends on nothing above it.
#[cfg(debug_assertions)]
pub(crate) static SLOTS_FROM_THE_GLOBAL_ALLOCATOR: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The functions record memory comes from, once [`assume_serialized_with`]
/// gave them.
#[inline]
pub(crate) fn record_memory() -> Option<&'static RecordMemory> {
    RECORD_MEMORY.get()
}

#[inline]
pub(crate) fn serialized() -> bool {
    SERIALIZED.load(Relaxed)
}

/// A mutex that is not taken at all once every caller is serialized: the
/// outside lock already excludes everyone else. Its users never lock it
/// twice at once (that would deadlock a `Mutex` as well), and never run a
/// callback to their caller's code while holding it.
pub(crate) struct SerialMutex<T> {
    lock: Mutex<()>,
    value: UnsafeCell<T>,
}

// SAFETY: as Mutex<T>: one guard at a time reaches the value, either
// through the mutex or through the outside lock `assume_serialized` promises.
unsafe impl<T: Send> Send for SerialMutex<T> {}
// SAFETY: as for `Send`: one guard at a time reaches the value (the mutex, or the outside lock).
unsafe impl<T: Send> Sync for SerialMutex<T> {}

pub(crate) struct SerialGuard<'a, T> {
    _held: Option<MutexGuard<'a, ()>>,
    value: &'a UnsafeCell<T>,
}

impl<T> SerialMutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        SerialMutex {
            lock: Mutex::new(()),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> SerialGuard<'_, T> {
        let held = if serialized() {
            None
        } else {
            // Nothing panics while holding the lock; a poisoned lock still
            // guards consistent data.
            Some(self.lock.lock().unwrap_or_else(PoisonError::into_inner))
        };
        SerialGuard {
            _held: held,
            value: &self.value,
        }
    }
}

impl<T> Deref for SerialGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (see SerialMutex's Sync).
        unsafe { &*self.value.get() }
    }
}

impl<T> DerefMut for SerialGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and the guard is borrowed mutably.
        unsafe { &mut *self.value.get() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_mutex_excludes_threads_when_not_serialized() {
        // The unit tests never switch to serialized mode: this is the Mutex.
        let m = SerialMutex::new((0u64, 0u64));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        let mut g = m.lock();
                        let a = g.0;
                        std::hint::black_box(&mut *g);
                        g.0 = a + 1;
                        g.1 += 1;
                        assert_eq!(g.0, g.1);
                    }
                });
            }
        });
        assert_eq!(*m.lock(), (80_000, 80_000));
    }
}
