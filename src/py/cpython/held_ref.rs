//! A reference the fence keeps inside a PyO3 object and changes outside
//! PyO3's registration: an owned, optional object pointer, read and
//! replaced with the GIL and let go by plain decrefs, never by a `Py`
//! drop (which PyO3 0.30 cannot do on a thread it does not know:
//! attach.rs). `arena_with`'s kept call lives in two of them, on a
//! context's entry and on the arena it is bound to (py/arena.rs holds
//! them; this file imports neither, so the two do not import each other).

use pyo3::ffi;
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

/// An owned reference, or none.
#[derive(Default)]
pub(crate) struct HeldRef(AtomicPtr<ffi::PyObject>);

impl HeldRef {
    /// The object held (borrowed), or NULL.
    pub(crate) fn get(&self) -> *mut ffi::PyObject {
        self.0.load(Relaxed)
    }

    /// Holds `obj` (the caller's reference, given) and gives back the
    /// reference held before, or NULL (now the caller's).
    ///
    /// # Safety
    /// With a GIL; `obj` NULL or an owned reference.
    pub(crate) unsafe fn replace(&self, obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
        // A load and a store: with a GIL nothing runs between them, and a
        // swap is a locked instruction.
        let old = self.0.load(Relaxed);
        self.0.store(obj, Relaxed);
        old
    }

    /// Visits the object held, for a garbage collector's traverse.
    pub(crate) fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let p = self.get();
        if p.is_null() {
            return Ok(());
        }
        // SAFETY: a traverse runs attached; `p` is a live object this holds,
        // borrowed here as a `Py` that is never dropped.
        let obj = std::mem::ManuallyDrop::new(unsafe {
            pyo3::Bound::from_owned_ptr(pyo3::Python::assume_attached(), p).unbind()
        });
        visit.call(&*obj)
    }
}

/// Dropped with its PyO3 object, in that object's dealloc (attached).
impl Drop for HeldRef {
    fn drop(&mut self) {
        let p = *self.0.get_mut();
        if !p.is_null() {
            // SAFETY: the reference is this one's own; PyO3 drops an
            // object's value attached.
            unsafe { ffi::Py_DECREF(p) };
        }
    }
}
