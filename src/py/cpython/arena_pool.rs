//! `Arena()` from a kept arena: a free list of arena objects, region and all.
//!
//! A per-call arena (`with Arena() as a:` around a few allocations) made and
//! destroyed a garbage-collected object, a region, its generation object and
//! a chunk list each time, and went through `type.__call__` and PyO3's
//! argument parsing to do it: about a third of the whole (callgrind,
//! BENCHMARKS.md, job h). Here an arena whose object dies released, and
//! that nothing else can tell from a new one, is kept with its region
//! reopened as a new region (`core::region::Anchor::reopen`: a new id, no
//! block, no limit, nothing referring to it); `Arena()` with no arguments
//! takes one back through the type's vectorcall entry, names it by its new
//! id and records where it was made, as `Arena.__new__` would.
//!
//! Kept only with a GIL (which guards the list), and only an arena that
//! leak tracking does not know (made with tracking off), with no callback,
//! no backing allocator, no weak reference, not finalized by the collector,
//! and no handle for `Pointer.allocator`. Everything else, and every call
//! with arguments, is `type.__call__` as before.

use crate::py::arena::Arena;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::Relaxed};

/// The Arena type, once the pool is on (null: off).
static TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
/// Where an Arena object holds its Rust value, from the object's start.
static OFFSET: AtomicUsize = AtomicUsize::new(0);

#[cfg(not(Py_GIL_DISABLED))]
static KEPT: super::gil_list::GilList<4> = super::gil_list::GilList::new();

/// The Rust value of the Arena object `obj`.
///
/// # Safety
/// `obj` is an Arena object (alive, or kept here) and the pool is on.
unsafe fn value(obj: *mut ffi::PyObject) -> *mut Arena {
    // SAFETY: per the function's contract: install measured the offset.
    unsafe { obj.cast::<u8>().add(OFFSET.load(Relaxed)).cast() }
}

/// Keeps the dead arena `obj` (its finalizer done, its region's address
/// forgotten) instead of deallocating it: true when kept, and the dealloc
/// stops there.
///
/// # Safety
/// Called from the Arena type's dealloc, attached, with `obj` dead and
/// no reference to its value held across the call.
pub(crate) unsafe fn keep(obj: *mut ffi::PyObject) -> bool {
    let tp = TYPE.load(Relaxed);
    if tp.is_null() {
        return false;
    }
    #[cfg(Py_GIL_DISABLED)]
    return false;
    // SAFETY: per the function's contract: obj is an Arena, its weak
    // reference list at the type's offset; nothing refers to it any more,
    // so its value may be changed (`recycle`) and its memory kept.
    #[cfg(not(Py_GIL_DISABLED))]
    unsafe {
        let weaklist = obj
            .cast::<u8>()
            .offset((*tp).tp_weaklistoffset)
            .cast::<*mut ffi::PyObject>();
        if !(*weaklist).is_null() || ffi::PyObject_GC_IsFinalized(obj) != 0 {
            return false;
        }
        let py = Python::assume_attached();
        if !(&mut *value(obj)).recycle(py) {
            return false;
        }
        if !KEPT.keep(obj) {
            // Full: dealloc'd as usual, a reopened region being as good as
            // a released one to drop.
            return false;
        }
        ffi::PyObject_GC_UnTrack(obj.cast());
        // The instance's reference to its type, taken again when it is reused.
        ffi::Py_DECREF(tp.cast());
        true
    }
}

/// The Arena type's vectorcall: `Arena()` from the pool when it can be,
/// anything else through `type.__call__`.
unsafe extern "C" fn new_arena(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a vectorcall entry attached, `callable` being
    // the Arena type (whose entry this is).
    unsafe {
        let nargs = ffi::PyVectorcall_NARGS(nargsf);
        #[cfg(not(Py_GIL_DISABLED))]
        if nargs == 0 && kwnames.is_null() && !crate::core::track::enabled() {
            if let Some(obj) = KEPT.take() {
                let tp = callable.cast::<ffi::PyTypeObject>();
                // The header as tp_alloc sets it: one reference, and one to the type.
                let obj = super::gil_list::init(obj, tp);
                // Unregistered: renewing drops nothing through PyO3 (its comment).
                Arena::renew(value(obj), Python::assume_attached());
                ffi::PyObject_GC_Track(obj.cast());
                return obj;
            }
        }
        // `type.__call__(Arena, *args, **kwargs)`, as without this entry.
        super::call_through_tp_call(callable, args, nargs, kwnames)
    }
}

/// Measures where an Arena object holds its value and points the type's
/// vectorcall entry at `new_arena` (module init, before any arena exists
/// but the probe).
pub(crate) fn install(py: Python<'_>) -> Result<(), String> {
    if cfg!(Py_GIL_DISABLED) {
        return Err("free-threaded build: the pool is guarded by the GIL".into());
    }
    let ty = Arena::type_object(py);
    let tp = ty.as_type_ptr();
    let probe = ty
        .call0()
        .and_then(|a| Ok(a.cast_into::<Arena>()?))
        .map_err(|e| e.to_string())?;
    let off = std::ptr::from_ref(probe.get()).addr() - probe.as_ptr().addr();
    // Released, so that its end is not a garbage-collected arena's warning.
    probe
        .call_method0(crate::py::checked::name!("release_all"))
        .map_err(|e| e.to_string())?;
    drop(probe);
    // SAFETY: a ready heap type rsalloc owns, with no subclasses (Arena is
    // final); its slots are plain fields.
    unsafe {
        if (*tp).tp_vectorcall.is_some() {
            return Err("the Arena type has a vectorcall entry already".into());
        }
        if (*tp).tp_weaklistoffset <= 0 {
            return Err("Arena objects have no weak reference list where expected".into());
        }
        OFFSET.store(off, Relaxed);
        TYPE.store(tp, Relaxed);
        (*tp).tp_vectorcall = Some(new_arena);
    }
    Ok(())
}
