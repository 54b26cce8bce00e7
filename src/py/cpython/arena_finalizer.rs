//! A `tp_finalize` for the Arena type (PEP 442, what `__del__` is in
//! Python; PyO3 has no slot for it): an arena the garbage collector takes
//! releases its blocks first (and warns, `Arena.collected`). Without it
//! (a type without a dealloc to chain to), an unreleased arena's memory
//! goes only with its blocks' owners.

use crate::py::arena::Arena;
use pyo3::ffi;
use pyo3::prelude::*;
use std::sync::OnceLock;

static DEALLOC: OnceLock<ffi::destructor> = OnceLock::new();

/// The arena type's `tp_finalize` (PEP 442, what `__del__` is in Python;
/// PyO3 has no slot for it): runs once, before the collector clears a
/// cycle, or from `dealloc` when the last reference goes.
unsafe extern "C" fn finalize(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_finalize attached, with obj alive. The body
    // runs registered with PyO3 (attach.rs): releasing the blocks drops
    // `Py` values (callbacks, errors).
    let done = unsafe {
        super::attach::registered(|py| {
            // A finalizer must leave the current exception as it found it.
            let saved = PyErr::take(py);
            // SAFETY: obj is a live object of the Arena type (this slot's type).
            let any = Bound::from_borrowed_ptr(py, obj);
            if let Ok(arena) = any.cast::<Arena>() {
                arena.get().collected(&any);
            }
            if let Some(e) = saved {
                e.restore(py);
            }
        })
    };
    if done.is_none() {
        // A panic, raised as PanicException: a finalizer cannot raise.
        // SAFETY: attached, with that exception set.
        unsafe { ffi::PyErr_WriteUnraisable(obj) };
    }
}

/// PyO3's dealloc, preceded by the finalizer (as CPython's own
/// `subtype_dealloc` does); a finalizer that resurrected the arena stops it.
unsafe extern "C" fn dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: obj is an Arena (this is its dealloc), alive until `inner`.
    let arena = unsafe { pyo3::Borrowed::from_ptr(Python::assume_attached(), obj) };
    // SAFETY: as above: obj is an Arena.
    let arena = unsafe { arena.cast_unchecked::<Arena>() }.get();
    // A released arena's finalizer has nothing to do (`collected` returns
    // at once): the call, which revives the object for it and takes the
    // thread's exception aside, was a tenth of a per-call `with Arena()`
    // (callgrind). An unreleased one is finalized as CPython would.
    // SAFETY: called with a dead object of the Arena type, attached; the
    // call revives it for the finalizer and reports a resurrection.
    if !arena.is_closed() && unsafe { ffi::PyObject_CallFinalizerFromDealloc(obj) } < 0 {
        return;
    }
    // No Python code runs between here and `inner`.
    crate::py::arena::forget_object(arena, obj);
    // SAFETY: obj is a dead Arena, its finalizer done; attached. `keep`
    // takes the value `&mut`: `arena` is not used after this.
    if unsafe { super::arena_pool::keep(obj) } {
        return;
    }
    // SAFETY: as above: obj is an Arena, alive until `inner`; attached.
    let arena = unsafe { pyo3::Borrowed::from_ptr(Python::assume_attached(), obj) };
    // SAFETY: as above.
    let arena = unsafe { arena.cast_unchecked::<Arena>() }.get();
    // SAFETY: CPython calls tp_dealloc attached.
    arena.let_go(unsafe { Python::assume_attached() });
    if let Some(inner) = DEALLOC.get() {
        // SAFETY: the slot PyO3 installed, called as it would have been.
        unsafe { inner(obj) }
    }
}

/// Installs `finalize` on the Arena type (module init, once); why not.
pub fn install(py: Python<'_>) -> Result<(), String> {
    let ty = py.get_type::<Arena>();
    let t = ty.as_ptr().cast::<ffi::PyTypeObject>();
    // SAFETY: the type is a heap type PyO3 made, not yet used, with no
    // subclasses (Arena is final); PyType_Modified publishes the change.
    unsafe {
        let Some(d) = (*t).tp_dealloc else {
            return Err("Arena has no tp_dealloc to run the finalizer from".into());
        };
        if DEALLOC.set(d).is_ok() {
            (*t).tp_finalize = Some(finalize);
            (*t).tp_dealloc = Some(dealloc);
            ffi::PyType_Modified(t);
            // Every arena's dealloc now clears its region's address of it.
            crate::py::arena::dealloc_forgets_objects();
        }
    }
    Ok(())
}
