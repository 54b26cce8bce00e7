//! The scaffolding of an object free list, like CPython's own for floats
//! and tuples: a fixed number of dead objects' memory kept for reuse,
//! guarded by the GIL. `freelist.rs` keeps Pointer objects in one and
//! `view_objects.rs` struct views in another; only where a GIL guards them
//! (a free-threaded build leaves both tricks off).

use pyo3::ffi;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

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

/// CPython's `_Py_NewReference` (what `PyObject_Init` ends with: the count
/// set to one, and whatever the interpreter follows of new objects:
/// tracemalloc's traceback, a reference tracer), once found; null: off.
static NEW_REFERENCE: AtomicPtr<std::ffi::c_void> = AtomicPtr::new(std::ptr::null_mut());

/// `PyObject_Init(obj, tp)` for a kept object's memory, without the call
/// around the part that matters: the type (and the reference a heap type's
/// instance holds to it), then `_Py_NewReference`; `PyObject_Init` itself
/// when that was not found. About ten instructions an object, five
/// objects a per-call arena (docs/decisions.md).
///
/// # Safety
/// Attached; `obj` is dead memory of `tp`'s size, not null.
#[inline]
pub(crate) unsafe fn init(
    obj: *mut ffi::PyObject,
    tp: *mut ffi::PyTypeObject,
) -> *mut ffi::PyObject {
    let f = NEW_REFERENCE.load(Relaxed);
    // SAFETY: per the function's contract; a found `f` is CPython's
    // `void _Py_NewReference(PyObject *)` (`install_init`).
    unsafe {
        if f.is_null() {
            return ffi::PyObject_Init(obj, tp);
        }
        (*obj).ob_type = tp;
        if ffi::PyType_HasFeature(tp, ffi::Py_TPFLAGS_HEAPTYPE) != 0 {
            ffi::Py_INCREF(tp.cast());
        }
        std::mem::transmute::<*mut std::ffi::c_void, unsafe extern "C" fn(*mut ffi::PyObject)>(f)(
            obj,
        );
        obj
    }
}

/// Finds `_Py_NewReference` for [`init`]: CPython 3.11 to 3.13 export it
/// with that signature and make `PyObject_Init` of the type, its reference
/// and this call (`Objects/object.c`, `_PyObject_Init`); checked on a
/// probe object against `PyObject_Init`'s count (module init).
pub(crate) fn install_init() -> Result<(), String> {
    #[cfg(any(Py_3_14, PyPy, GraalPy, Py_LIMITED_API))]
    return Err("PyObject_Init as is: its parts are known for CPython 3.11 to 3.13".into());
    #[cfg(not(any(Py_3_14, PyPy, GraalPy, Py_LIMITED_API)))]
    {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT searches
        // the process, where libpython's symbols are.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_Py_NewReference".as_ptr()) };
        if sym.is_null() {
            return Err("this Python exports no _Py_NewReference".into());
        }
        NEW_REFERENCE.store(sym, Relaxed);
        // A probe: a plain object's memory, its count set to seven, made
        // again by `init`, must be an object of its type with one reference.
        // SAFETY: attached (module init); the probe is a new object, dead
        // once its count is set to zero by hand, its memory reinitialised
        // as PyObject_Init would, then released.
        unsafe {
            let tp = std::ptr::addr_of_mut!(ffi::PyBaseObject_Type);
            let obj = ffi::PyType_GenericAlloc(tp, 0);
            if obj.is_null() {
                ffi::PyErr_Clear();
                NEW_REFERENCE.store(std::ptr::null_mut(), Relaxed);
                return Err("no memory for the probe".into());
            }
            for _ in 0..6 {
                ffi::Py_INCREF(obj);
            }
            let again = init(obj, tp);
            let ok = again == obj && ffi::Py_REFCNT(obj) == 1 && ffi::Py_TYPE(obj) == tp;
            ffi::Py_DECREF(obj);
            if !ok {
                NEW_REFERENCE.store(std::ptr::null_mut(), Relaxed);
                return Err("the probe is not an object of its type with one reference".into());
            }
        }
        Ok(())
    }
}
