//! A free list for `Pointer` objects, like CPython's own for floats and
//! tuples.
//!
//! Every allocation returns a new Pointer and every free or arena release
//! drops one, so the Python object's own heap round trip (`object_new` ->
//! `PyType_GenericAlloc` -> `PyObject_Malloc`, then `PyObject_Free`) is a
//! large share of a small allocation's cost (BENCHMARKS.md). The type's
//! `tp_alloc` and `tp_free` slots are pointed here: `tp_free` keeps up to
//! `CAP` dead objects, `tp_alloc` hands one back zeroed and initialised
//! exactly as `PyType_GenericAlloc` would.
//!
//! `new_object` builds the object itself: what PyO3 would do (allocate
//! through `object.__new__`, then move the value in) minus the generic
//! `object.__new__` call, which costs as much as the rest together.
//!
//! `dealloc` replaces PyO3's `tp_dealloc` when dropping the value touches
//! no Python object (`Owner::drops_plainly`: the common case of a block
//! from malloc/calloc, or of a live arena's region). PyO3's version runs in
//! a trampoline that registers the thread with PyO3 (a thread-local round
//! trip), which only matters when a `Py<T>` is dropped; every other case
//! still goes to the dealloc it replaced (`untracked`'s).
//!
//! The list is only touched from `tp_alloc` and `tp_free`, which CPython
//! calls with the GIL held. A free-threaded build has no GIL to guard it, so
//! there the slots are left alone (`install` does nothing).

use crate::py::checked;
use crate::py::pointer::Pointer;
use crate::py::serialized::token;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Pointer's type object and the offset of the Rust value in its objects,
/// set by `install` once it has checked the layout (0: not checked, use
/// PyO3's own path).
static TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
static OFFSET: AtomicUsize = AtomicUsize::new(0);

/// `obj` as a Pointer, when it is one (the type is final: an exact check).
#[inline]
pub fn as_pointer<'a, 'py>(
    obj: &pyo3::Borrowed<'a, 'py, PyAny>,
) -> Option<pyo3::Borrowed<'a, 'py, Pointer>> {
    let tp = TYPE.load(Ordering::Relaxed);
    if tp.is_null() {
        return obj.cast::<Pointer>().ok();
    }
    // SAFETY: an object's type pointer is always readable; equal to
    // Pointer's type means the object is a Pointer.
    (unsafe { ffi::Py_TYPE(obj.as_ptr()) } == tp).then(|| unsafe { obj.cast_unchecked() })
}

/// Object creations to go before the one that fails (0: none fails): the
/// test hook `_fail_object_creation`, so that what every caller does when
/// CPython cannot make the object can be tested without exhausting memory.
static FAIL_IN: AtomicUsize = AtomicUsize::new(0);

/// Makes the `n`-th next Pointer or view object creation raise MemoryError
/// (0: none).
pub fn fail_object_creation(n: usize) {
    FAIL_IN.store(n, Ordering::Relaxed);
}

/// Whether this object creation is the one `fail_object_creation` chose.
#[inline(always)]
pub fn injected_failure() -> bool {
    #[cold]
    fn count_down() -> bool {
        FAIL_IN.fetch_sub(1, Ordering::Relaxed) == 1
    }
    FAIL_IN.load(Ordering::Relaxed) != 0 && count_down()
}

/// A new Python object holding `value`, a view of memory someone else
/// answers for: when the object cannot be made, the view is just dropped.
#[inline(always)]
pub fn new_object(py: Python<'_>, value: Pointer) -> PyResult<Bound<'_, Pointer>> {
    new_object_or(py, value, |_, _| {})
}

/// A new Python object holding `value`; when it cannot be made, `undo`
/// sees the value first (with no exception pending), so that a block made
/// for this object alone can be given back before the error propagates.
#[inline(always)]
pub fn new_object_or<'py>(
    py: Python<'py>,
    value: Pointer,
    undo: impl FnOnce(Python<'py>, &Pointer),
) -> PyResult<Bound<'py, Pointer>> {
    if injected_failure() {
        undo(py, &value);
        return Err(checked::no_memory());
    }
    let off = OFFSET.load(Ordering::Relaxed);
    if off == 0 {
        // PyO3 drops the value when it fails: a second view of the same
        // block is what is left for `undo`.
        let back = value.view(value.addr, value.ty, value.extent(), token(py));
        return Bound::new(py, value).inspect_err(|_| undo(py, &back));
    }
    let tp = TYPE.load(Ordering::Relaxed);
    // SAFETY: install checked that a Pointer object is a PyObject header
    // followed at `off` by the Pointer value and nothing else, so an object
    // from the type's tp_alloc (header set) with the value written at `off`
    // is exactly what PyO3 builds. tp_alloc is always set on a ready type.
    unsafe {
        // The list's own tp_alloc, called directly (inlined) where install
        // set it; the type's slot elsewhere.
        #[cfg(not(Py_GIL_DISABLED))]
        let obj = list::alloc(tp, 0);
        #[cfg(Py_GIL_DISABLED)]
        let obj = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc)(tp, 0);
        if obj.is_null() {
            let e = PyErr::fetch(py);
            undo(py, &value);
            return Err(e);
        }
        value.write_to(obj.cast::<u8>().add(off).cast::<Pointer>());
        Ok(Bound::from_owned_ptr(py, obj).cast_into_unchecked())
    }
}

/// The list itself: only where a GIL guards it.
#[cfg(not(Py_GIL_DISABLED))]
mod list {
    use pyo3::ffi;

    /// Enough to absorb a burst of temporaries, small enough not to matter
    /// (CAP * 48 B). Guarded by the GIL: see the file comment.
    static LIST: crate::py::cpython::gil_list::GilList<256> =
        crate::py::cpython::gil_list::GilList::new();

    #[inline]
    pub(super) unsafe extern "C" fn alloc(
        tp: *mut ffi::PyTypeObject,
        nitems: ffi::Py_ssize_t,
    ) -> *mut ffi::PyObject {
        // SAFETY: the GIL is held (module comment); every item came from
        // PyType_GenericAlloc for this same type, so it has tp_basicsize bytes.
        unsafe {
            if nitems != 0 {
                return ffi::PyType_GenericAlloc(tp, nitems);
            }
            match LIST.take() {
                // Not zeroed, unlike PyType_GenericAlloc's memory: both creators of
                // Pointer objects (PyO3 and new_object) write the whole value, which
                // install checked is all there is after the header.
                // Sets the type (a new reference for a heap type) and the refcount.
                Some(obj) => super::super::gil_list::init(obj, tp),
                None => ffi::PyType_GenericAlloc(tp, 0),
            }
        }
    }

    /// The type's `tp_dealloc` before this one (`untracked`'s, PyO3's work
    /// for a plain object), for the objects `dealloc` does not take.
    #[cfg(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))]
    static OLD_DEALLOC: std::sync::OnceLock<ffi::destructor> = std::sync::OnceLock::new();

    #[cfg(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))]
    pub(super) fn set_old_dealloc(d: ffi::destructor) {
        let _ = OLD_DEALLOC.set(d);
    }

    /// A Pointer object's last reference is gone. It skips PyO3's
    /// trampoline, which only matters where PyO3 keeps a reference pool:
    /// compiled only where it has none.
    #[cfg(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))]
    pub(super) unsafe extern "C" fn dealloc(obj: *mut ffi::PyObject) {
        // SAFETY: CPython calls tp_dealloc with the GIL held, once, on a dead
        // Pointer (the type is final), whose value sits at OFFSET (install
        // checked). The value is dropped once, then the memory goes to
        // tp_free and the instance's reference to its heap type is released,
        // as PyO3's tp_dealloc does.
        unsafe {
            let off = super::OFFSET.load(std::sync::atomic::Ordering::Relaxed);
            let value = obj.cast::<u8>().add(off).cast::<super::Pointer>();
            let tp = ffi::Py_TYPE(obj);
            // The owner goes first, with the proof the GIL gives (a drop
            // has none: it would count down with a read-modify-write), if
            // that drops no Python object (else PyO3's dealloc, registered).
            // Nothing in it panics, but unwinding out of a C callback would
            // abort: leak instead.
            let s = crate::py::serialized::token(pyo3::Python::assume_attached());
            // Released, the owner is unowned: the value has nothing else
            // to drop (checked where Pointer is declared).
            let released = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (*value).owner.release_plainly(s)
            }));
            if let Ok(false) = released {
                return OLD_DEALLOC.get().expect("set at install")(obj);
            }
            free(obj.cast());
            ffi::Py_DECREF(tp.cast());
        }
    }

    pub(super) unsafe extern "C" fn free(obj: *mut std::ffi::c_void) {
        // SAFETY: the GIL is held; obj is a dead Pointer whose contents PyO3 has
        // already dropped and whose type reference it releases itself.
        unsafe {
            if !LIST.keep(obj.cast()) {
                ffi::PyObject_Free(obj);
            }
        }
    }
}

/// Points `Pointer`'s allocation slots at the list and enables
/// `new_object`, after checking that Pointer objects are plain (not
/// GC-tracked: `untracked` ran) and that a Pointer object is exactly a header
/// followed by the value (anything PyO3 placed between or after them, a
/// borrow flag, a dict or weakref slot, would be left unwritten). Called
/// once at module init; why not, when the layout differs (PyO3's own path
/// then makes every object). Subclasses cannot exist (Pointer is final), so
/// every object the list sees has the same size.
pub fn install(py: Python<'_>) -> Result<(), String> {
    let tp = Pointer::type_object(py).as_type_ptr();
    // SAFETY: reading the flags of a ready type.
    if unsafe { (*tp).tp_flags } & ffi::Py_TPFLAGS_HAVE_GC != 0 {
        // A GC object has a header before it and is tracked; the list's
        // objects would have neither (`untracked` makes Pointers plain).
        return Err("Pointer objects are GC-tracked (untracked_pointers is off)".into());
    }
    let probe = crate::py::pointer::nullptr_object(py).map_err(|e| e.to_string())?;
    let off = (probe.get() as *const Pointer).addr() - probe.as_ptr().addr();
    // SAFETY: reading the size of a ready type.
    let basicsize = unsafe { (*tp).tp_basicsize } as usize;
    exact_layout("Pointer", off, basicsize, std::mem::size_of::<Pointer>())?;
    TYPE.store(tp, Ordering::Relaxed);
    OFFSET.store(off, Ordering::Relaxed);
    #[cfg(Py_GIL_DISABLED)]
    return Err(
        "free-threaded build: no GIL guards a free list (objects are still built at the \
         measured offset)"
            .into(),
    );
    #[cfg(not(Py_GIL_DISABLED))]
    {
        // SAFETY: a heap type we own, not yet used; the slots are plain fields.
        unsafe {
            (*tp).tp_alloc = Some(list::alloc);
            (*tp).tp_free = Some(list::free);
        }
        Ok(())
    }
}

/// Points `Pointer`'s `tp_dealloc` at the list's, which skips PyO3's
/// trampoline for a value that drops plainly. After `install`.
pub fn install_dealloc(py: Python<'_>) -> Result<(), String> {
    if OFFSET.load(Ordering::Relaxed) == 0 {
        return Err("the free list is off".into());
    }
    #[cfg(any(
        Py_GIL_DISABLED,
        not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))
    ))]
    {
        let _ = py;
        return Err(super::BYPASS_OFF.into());
    }
    #[cfg(all(
        not(Py_GIL_DISABLED),
        pyo3_disable_reference_pool,
        pyo3_leak_on_drop_without_reference_pool
    ))]
    {
        let tp = Pointer::type_object(py).as_type_ptr();
        // SAFETY: as in `install`.
        unsafe {
            let Some(d) = (*tp).tp_dealloc else {
                return Err("Pointer has no tp_dealloc".into());
            };
            list::set_old_dealloc(d);
            (*tp).tp_dealloc = Some(list::dealloc);
        }
        Ok(())
    }
}

/// Ok when an object of `basicsize` bytes holds a `size`-byte value at
/// `off` right after the object header and nothing else.
pub(crate) fn exact_layout(
    what: &str,
    off: usize,
    basicsize: usize,
    size: usize,
) -> Result<(), String> {
    let header = std::mem::size_of::<ffi::PyObject>();
    if off != header || basicsize != header + size {
        return Err(format!(
            "a {what} object is not a header of {header} bytes followed by its {size}-byte value \
             (value at {off}, object of {basicsize} bytes)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::exact_layout;

    #[test]
    fn the_layout_probe_takes_only_a_header_then_the_value() {
        let header = std::mem::size_of::<pyo3::ffi::PyObject>();
        assert!(exact_layout("T", header, header + 40, 40).is_ok());
        // A PyO3 field (a borrow flag, say) between the header and the value.
        assert!(exact_layout("T", header + 8, header + 48, 40).is_err());
        // One after the value (a dict or weakref slot).
        assert!(exact_layout("T", header, header + 48, 40).is_err());
        // A value inside the header cannot be.
        assert!(exact_layout("T", header - 8, header + 32, 40).is_err());
    }
}
