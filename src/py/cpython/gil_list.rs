//! The scaffolding of an object free list, like CPython's own for floats
//! and tuples: a fixed number of dead objects' memory kept for reuse,
//! guarded by the GIL. `freelist.rs` keeps Pointer objects in one and
//! `view_objects.rs` struct views in another; only where a GIL guards them
//! (a free-threaded build leaves both tricks off).

use pyo3::ffi;
use std::cell::UnsafeCell;

/// Up to `CAP` objects' memory, all of one size (the owner's to ensure).
pub(crate) struct GilList<const CAP: usize>(UnsafeCell<Items<CAP>>);

struct Items<const CAP: usize> {
    items: [*mut ffi::PyObject; CAP],
    len: usize,
}

// SAFETY: only accessed with the GIL held (every method's contract).
unsafe impl<const CAP: usize> Sync for GilList<CAP> {}

impl<const CAP: usize> GilList<CAP> {
    pub(crate) const fn new() -> Self {
        GilList(UnsafeCell::new(Items {
            items: [std::ptr::null_mut(); CAP],
            len: 0,
        }))
    }

    /// A kept object's memory, if there is one (its contents as they were
    /// left when it was kept).
    ///
    /// # Safety
    /// The GIL is held.
    #[inline]
    pub(crate) unsafe fn take(&self) -> Option<*mut ffi::PyObject> {
        // SAFETY: per the function's contract: no other access meanwhile.
        let list = unsafe { &mut *self.0.get() };
        list.len.checked_sub(1).map(|i| {
            list.len = i;
            list.items[i]
        })
    }

    /// Keeps a dead object's memory; false when the list is full (the caller
    /// frees it).
    ///
    /// # Safety
    /// The GIL is held; `obj` has the list's size and is no longer used.
    #[inline]
    pub(crate) unsafe fn keep(&self, obj: *mut ffi::PyObject) -> bool {
        // SAFETY: per the function's contract.
        let list = unsafe { &mut *self.0.get() };
        if list.len == CAP {
            return false;
        }
        list.items[list.len] = obj;
        list.len += 1;
        true
    }
}
