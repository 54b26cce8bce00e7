//! The serialization proof: a token telling the core that every caller is
//! serialized by an outside lock (the GIL, on interpreters that have one).
//!
//! Several per-block costs exist only to make concurrent callers safe: a
//! counter update is a locked read-modify-write (~2.3 ns on the development
//! machine, eight per block), a reference count too, the address index
//! takes a mutex, and record memory is cached per thread, whose
//! thread-local lookup costs ~35 instructions per block (callgrind; ~3.5 ns).
//! A caller that holds the outside lock needs none of that: counters become
//! an atomic load and store, the index and a region take no lock
//! ([`SerialMutex`]), the record cache is one process-wide list, and libc's
//! small blocks and a region's first chunks are kept for reuse (the block
//! cache, the kept chunks).
//!
//! The proof is a type, [`Serialized`]: every such path takes an
//! `Option<Serialized<'_>>`, None being the synchronised path, which is
//! always sound. A `Drop` has no caller to hand it a token: it takes the
//! synchronised path, and the owners that hold the proof release
//! explicitly instead (`RecordRef::release`, `Owner::release`, a region's
//! release).
//!
//! Allocation *state* (export, detach, an arena's release) is decided by
//! compare-and-swap with or without the proof: it is what decides who
//! returns memory. The common free (`Record::free_plain`) and the index's
//! hand-out of a listed record (`RecordRef::upgrade`) are the exceptions:
//! with the proof, a load and a store, as the counts (the seed `char**`
//! took 35 locked instructions per build-and-free, callgrind; see
//! BENCHMARKS.md).
//!
//! Record memory may come from functions the binding gives
//! ([`use_record_memory`]): CPython's small-object allocator, which needs
//! the GIL and keeps no header per block, so a 48-byte record costs 48
//! bytes instead of glibc's 64-byte chunk (every live block has a record).

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
#[cfg(debug_assertions)]
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// The proof that the calling thread holds the one outside lock that every
/// thread holds while it runs the unsynchronised paths taking this token:
/// for `'a`, no other thread is in one of them, nor in the synchronised
/// path of the same data (a counter, a [`SerialMutex`]'s value, a reference
/// count), which mixes with them. Code that takes a `Serialized` needs no
/// lock of its own.
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
    /// lock as every other thread that holds a `Serialized`, and as every
    /// thread that meanwhile touches, without a token, what the token's
    /// paths touch (the binding: the GIL, which every call into it and
    /// every drop of its objects holds). The lock may be let go only inside
    /// callbacks the core makes to its caller's code (a Python-defined
    /// allocator's methods may release the GIL): no unsynchronised step (a
    /// counter update, a push or pop on a cache, a region's bump, a
    /// reference count, a [`SerialMutex`] held) spans such a callback.
    #[inline(always)]
    pub const unsafe fn new() -> Self {
        Serialized { _held: PhantomData }
    }
}

/// Where the memory of allocation records comes from, as C functions,
/// once given ([`use_record_memory`]): `alloc(size)` returns memory aligned
/// for any object of that size (at least 8) or null when there is none, and
/// `free(p)` takes back what `alloc` gave.
#[derive(Clone, Copy, Debug)]
pub struct RecordMemory {
    /// `alloc(size)`: at least 8-aligned memory for an object of `size` bytes, or null.
    pub alloc: unsafe extern "C" fn(usize) -> *mut c_void,
    /// `free(p)`: takes back what `alloc` gave.
    pub free: unsafe extern "C" fn(*mut c_void),
}

static RECORD_MEMORY: OnceLock<RecordMemory> = OnceLock::new();

/// From now on record memory comes from `records` instead of Rust's global
/// allocator.
///
/// # Safety
/// `records` may be called wherever a record is made or dropped, with or
/// without a [`Serialized`] token, by one thread at a time (the binding:
/// `PyObject_Malloc` and `PyObject_Free`, which need the GIL, which every
/// call into rsalloc and every drop of its objects holds). No record may
/// exist yet, nor any record memory kept for reuse: each slot goes back to
/// the functions that gave it, and the ones taken before would not
/// (checked in debug builds). The first call's functions stay; a later
/// call must pass the same ones.
pub unsafe fn use_record_memory(records: RecordMemory) {
    #[cfg(debug_assertions)]
    {
        let kept = SLOTS_FROM_THE_GLOBAL_ALLOCATOR.load(Relaxed);
        debug_assert_eq!(
            kept, 0,
            "record memory taken before the functions were given"
        );
    }
    let kept = RECORD_MEMORY.get_or_init(|| records);
    // Addresses, not fn pointers, compared: the comparison is what is meant.
    debug_assert!(
        kept.alloc as usize == records.alloc as usize
            && kept.free as usize == records.free as usize,
        "record memory functions replaced"
    );
}

/// Record slots taken from Rust's global allocator and not given back (in
/// use or kept for reuse), counted by `record_ref`'s slot cache: the switch
/// to other record memory ([`use_record_memory`]) needs none. Kept here,
/// below the records, so that this module depends on nothing above it.
#[cfg(debug_assertions)]
pub(crate) static SLOTS_FROM_THE_GLOBAL_ALLOCATOR: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The functions record memory comes from, once [`use_record_memory`]
/// gave them.
#[inline]
pub(crate) fn record_memory() -> Option<&'static RecordMemory> {
    RECORD_MEMORY.get()
}

/// A mutex that is not taken at all by a caller holding the serialization
/// proof: the outside lock already excludes everyone else. Its users never
/// lock it twice at once (that would deadlock a `Mutex` as well), and never
/// run a callback to their caller's code while holding it.
pub(crate) struct SerialMutex<T> {
    lock: Mutex<()>,
    value: UnsafeCell<T>,
}

// SAFETY: as Mutex<T>: one guard at a time reaches the value, either
// through the mutex or through the outside lock a `Serialized` proves held
// (whose contract covers the callers without a token too).
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

    /// The value, locked unless `s` proves the outside lock held.
    #[inline]
    pub(crate) fn lock(&self, s: Option<Serialized<'_>>) -> SerialGuard<'_, T> {
        let held = if s.is_some() {
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

impl<T> SerialMutex<T> {
    /// The value if it can be had at once: always with the proof, else when
    /// the mutex is free (for a garbage collector's traverse, which must
    /// never wait).
    #[inline]
    pub(crate) fn try_lock(&self, s: Option<Serialized<'_>>) -> Option<SerialGuard<'_, T>> {
        let held = if s.is_some() {
            None
        } else {
            match self.lock.try_lock() {
                Ok(g) => Some(g),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => return None,
            }
        };
        Some(SerialGuard {
            _held: held,
            value: &self.value,
        })
    }

    /// The value, with no lock: the `&mut` is the proof.
    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
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
        // No token: this is the Mutex.
        let m = SerialMutex::new((0u64, 0u64));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        let mut g = m.lock(None);
                        let a = g.0;
                        std::hint::black_box(&mut *g);
                        g.0 = a + 1;
                        g.1 += 1;
                        assert_eq!(g.0, g.1);
                    }
                });
            }
        });
        assert_eq!(*m.lock(None), (80_000, 80_000));
    }

    #[test]
    fn serial_mutex_try_lock_never_waits_and_get_mut_takes_no_lock() {
        let mut m = SerialMutex::new(1u32);
        {
            let g = m.lock(None);
            // Held by this guard: a traverse without the proof would wait,
            // so it gets nothing instead; the mutex is not taken twice.
            assert!(m.try_lock(None).is_none());
            assert_eq!(*g, 1);
        }
        *m.try_lock(None).expect("free") += 1;
        // SAFETY: no other thread exists in this test: the proof holds.
        let s = unsafe { Serialized::new() };
        *m.try_lock(Some(s)).expect("with the proof") += 1;
        *m.get_mut() += 1;
        assert_eq!(*m.lock(None), 4);
    }
}
