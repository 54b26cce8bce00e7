//! Classes whose objects the cyclic garbage collector does not track.
//!
//! PyO3 0.30 makes every `#[pyclass]` a GC type (`Py_TPFLAGS_HAVE_GC`,
//! its own `tp_traverse`, and a `tp_dealloc` that calls
//! `PyObject_GC_UnTrack`), in case an object holds Python references that
//! could form a cycle. A GC object carries a 16-byte header before it and
//! is linked into, and unlinked from, the collector's list on every
//! allocation and free, and its allocations count towards the next
//! collection. A `Pointer` refers to no Python object that the collector
//! would need to see (its type information and owner are Rust values; an
//! owner that keeps an arena's object alive is released by the dealloc,
//! and no Python object holds what a Pointer holds), and neither does a
//! `Stats`; both were plain objects before PyO3 0.30. `install` makes them
//! plain again, at module init, before their first object exists: the flag
//! cleared, `tp_free` the plain `PyObject_Free`, no traverse or clear, and
//! `dealloc` below, which is PyO3's dealloc minus the untracking. When an
//! assumption does not hold, the type stays as PyO3 made it and the trick
//! reports why.

use super::freelist::exact_layout;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use pyo3::PyClass;

/// `Py_TPFLAGS_MANAGED_DICT` (3.11+) and `Py_TPFLAGS_MANAGED_WEAKREF` (3.12+):
/// memory before the object that a plain allocation would not make.
pub(crate) const MANAGED: std::ffi::c_ulong = (1 << 4) | (1 << 3);

/// Makes `T`'s objects plain (not GC-tracked) objects. `probe` is a value
/// to build one object with, to measure the layout; it is dropped before
/// the type changes. Called once per class at module init, before any
/// object of `T` exists.
pub fn install<T>(py: Python<'_>, probe: T) -> Result<(), String>
where
    T: PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + PyTypeInfo + Sync,
    PyClassInitializer<T>: From<T>,
{
    #[cfg(Py_GIL_DISABLED)]
    {
        let _ = (py, probe);
        return Err("free-threaded build: objects stay as PyO3 made them".into());
    }
    #[cfg(not(Py_GIL_DISABLED))]
    {
        let name = T::NAME;
        let tp = T::type_object(py).as_type_ptr();
        // SAFETY: reading the slots of a ready type.
        let (flags, basicsize) = unsafe { ((*tp).tp_flags, (*tp).tp_basicsize as usize) };
        if flags & ffi::Py_TPFLAGS_HAVE_GC == 0 {
            // Already plain (PyO3 before 0.30): its own dealloc is right.
            return Ok(());
        }
        {
            let obj = Bound::new(py, probe).map_err(|e| e.to_string())?;
            let off = obj.as_ptr().addr();
            let value = std::ptr::from_ref(obj.get()).addr();
            exact_layout(name, value - off, basicsize, std::mem::size_of::<T>())?;
            // The probe, a GC object, goes now, by PyO3's own dealloc.
        }
        // SAFETY: reading the slots of a ready type.
        let refused = unsafe { refusal(tp) };
        if let Some(why) = refused {
            return Err(format!("{name}: {why}"));
        }
        // SAFETY: a ready heap type of rsalloc's, of which no object
        // exists (module init, the probe gone) and which nothing can
        // subclass (checked): its objects are all made from now on, by
        // PyType_GenericAlloc, without the GC header (it reads the flag).
        // The slots are plain fields; PyType_Modified drops CPython's
        // caches of them.
        unsafe {
            (*tp).tp_flags &= !ffi::Py_TPFLAGS_HAVE_GC;
            (*tp).tp_free = Some(ffi::PyObject_Free);
            (*tp).tp_traverse = None;
            (*tp).tp_clear = None;
            (*tp).tp_dealloc = Some(dealloc::<T>);
            ffi::PyType_Modified(tp);
        }
        Ok(())
    }
}

/// Why objects of `tp` cannot simply lose the GC flag, if they cannot.
///
/// # Safety
/// `tp` is a ready type object.
#[cfg(not(Py_GIL_DISABLED))]
unsafe fn refusal(tp: *mut ffi::PyTypeObject) -> Option<&'static str> {
    // SAFETY: per the function's contract.
    unsafe {
        let t = &*tp;
        if t.tp_flags & ffi::Py_TPFLAGS_HEAPTYPE == 0 {
            Some("not a heap type")
        } else if t.tp_flags & ffi::Py_TPFLAGS_BASETYPE != 0 {
            // A subclass's objects would be GC objects of their own.
            Some("can be subclassed")
        } else if t.tp_itemsize != 0
            || t.tp_dictoffset != 0
            || t.tp_weaklistoffset != 0
            || t.tp_flags & MANAGED != 0
        {
            Some("objects have variable size, a __dict__ or weak references")
        } else if t.tp_finalize.is_some() || t.tp_del.is_some() {
            Some("has a finalizer")
        } else if t.tp_free.map(|f| (f as *const ()).addr())
            != Some((ffi::PyObject_GC_Del as *const ()).addr())
        {
            Some("tp_free is not PyObject_GC_Del (objects not made by PyType_GenericAlloc)")
        } else if t.tp_dealloc.is_none() {
            Some("has no tp_dealloc")
        } else {
            None
        }
    }
}

/// A plain `T` object's last reference is gone: what PyO3's dealloc does
/// for a frozen class without `__dict__` or weak references (drop the
/// value, free the memory through the type's `tp_free`, release the
/// instance's reference to its heap type), minus `PyObject_GC_UnTrack`,
/// which reads a GC header these objects do not have.
#[cfg(not(Py_GIL_DISABLED))]
unsafe extern "C" fn dealloc<T: PyClass>(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc with the GIL held, once, on a dead
    // object of this type (no subclass exists), whose value sits right
    // after the header (install checked the layout).
    unsafe {
        let value = obj
            .cast::<u8>()
            .add(std::mem::size_of::<ffi::PyObject>())
            .cast::<T>();
        if std::mem::needs_drop::<T>() {
            // Registered with PyO3, as its own dealloc runs: the value may
            // drop `Py` values (attach.rs). A panic cannot unwind
            // out of a C callback: the value is leaked instead.
            super::attach::registered(|_| {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    std::ptr::drop_in_place(value)
                }));
            });
        }
        let tp = ffi::Py_TYPE(obj);
        (*tp).tp_free.unwrap_or(ffi::PyObject_Free)(obj.cast());
        ffi::Py_DECREF(tp.cast());
    }
}
