//! Struct view objects made and dropped without PyO3's generic paths.
//!
//! A struct view (`p.ref`, `p[i]` of a struct type) is an object of a
//! Python subclass of `StructView`; PyO3 makes only base-class objects, so
//! rsalloc builds them itself: `probe` measures where PyO3 keeps the value
//! in a `StructView` object, and `make_view` writes one at that offset in
//! memory from the class's own `tp_alloc`, or, for a plain view class
//! (`plain_view_objects`), from a free list.

use crate::py::checked;
use crate::py::pointer::{Owner, Pointer};
use crate::py::struct_view::StructView;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Offset of the StructView value in a view object, measured at install
/// (0 until then).
pub(crate) static VIEW_OFFSET: AtomicUsize = AtomicUsize::new(0);

/// Measures where PyO3 keeps a StructView in its objects, so that views of
/// Python subclasses can be made directly (PyO3 makes only base objects),
/// and points StructView's dealloc at `view_dealloc`. Called once at
/// module init, before any view exists; why not, when the layout is not
/// exactly a header followed by the value (`make_view` then refuses to
/// make views through PyO3's constructor instead).
pub fn install(py: Python<'_>) -> Result<(), String> {
    let void = crate::py::types::void(py).map_err(|e| e.to_string())?;
    let probe = Bound::new(
        py,
        StructView {
            ptr: Pointer::new(0, void, None, Owner::UNOWNED),
        },
    )
    .map_err(|e| e.to_string())?;
    let off = (probe.get() as *const StructView).addr() - probe.as_ptr().addr();
    let tp = StructView::type_object(py).as_type_ptr();
    // SAFETY: reading the size of a ready type.
    let basicsize = unsafe { (*tp).tp_basicsize } as usize;
    super::freelist::exact_layout(
        "StructView",
        off,
        basicsize,
        std::mem::size_of::<StructView>(),
    )?;
    VIEW_OFFSET.store(off, Ordering::Relaxed);
    VIEW_SIZE.store(basicsize, Ordering::Relaxed);
    #[cfg(all(
        not(Py_GIL_DISABLED),
        pyo3_disable_reference_pool,
        pyo3_leak_on_drop_without_reference_pool
    ))]
    // SAFETY: a heap type rsalloc owns, ready and not yet used; the slot is
    // the plain field PyO3 filled with its dealloc.
    unsafe {
        if let Some(dealloc) = (*tp).tp_dealloc {
            let _ = OLD_VIEW_DEALLOC.set(dealloc);
            (*tp).tp_dealloc = Some(view_dealloc);
        }
    }
    Ok(())
}

/// Whether views are plain objects with a dealloc of rsalloc's own (see
/// `plain_view_objects`); why not.
pub fn plain_views() -> Result<(), String> {
    if VIEW_OFFSET.load(Ordering::Relaxed) == 0 {
        return Err("struct view objects are unavailable".into());
    }
    #[cfg(Py_GIL_DISABLED)]
    return Err("free-threaded build: no GIL guards a free list".into());
    #[cfg(not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)))]
    return Err(super::BYPASS_OFF.into());
    #[cfg(all(
        not(Py_GIL_DISABLED),
        pyo3_disable_reference_pool,
        pyo3_leak_on_drop_without_reference_pool
    ))]
    match OLD_VIEW_DEALLOC.get() {
        Some(_) => Ok(()),
        None => Err("StructView has no tp_dealloc".into()),
    }
}

/// Whether views are made at the measured offset (`install` succeeded).
#[cfg_attr(
    not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
    allow(dead_code)
)]
pub(crate) fn available() -> bool {
    VIEW_OFFSET.load(Ordering::Relaxed) != 0
}

/// A view of class `class` (a StructView subclass) over `ptr`.
pub(crate) fn make_view(py: Python<'_>, class: &Py<PyAny>, ptr: Pointer) -> PyResult<Py<PyAny>> {
    let off = VIEW_OFFSET.load(Ordering::Relaxed);
    if off == 0 {
        // The trick is off (`_fast_paths()` says why): PyO3 makes the view.
        if super::freelist::injected_failure() {
            return Err(checked::no_memory());
        }
        return crate::py::struct_view::new_view(py, class, ptr);
    }
    let tp = class.as_ptr().cast::<ffi::PyTypeObject>();
    // SAFETY: `class` is a StructView subclass (classify_composite checked),
    // whose objects start with StructView's layout: a header, then the
    // value at `off` (install measured it), then only what the subclass
    // adds, which its allocation zeroes. Writing the value is all PyO3 does
    // to initialise a frozen class's object.
    unsafe {
        if super::freelist::injected_failure() {
            return Err(checked::no_memory());
        }
        let obj = alloc_view(tp);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        obj.cast::<u8>()
            .add(off)
            .cast::<StructView>()
            .write(StructView { ptr });
        Ok(Bound::from_owned_ptr(py, obj).unbind())
    }
}

#[cfg(all(
    not(Py_GIL_DISABLED),
    pyo3_disable_reference_pool,
    pyo3_leak_on_drop_without_reference_pool
))]
static OLD_VIEW_DEALLOC: std::sync::OnceLock<ffi::destructor> = std::sync::OnceLock::new();

/// StructView's object size, set by install.
static VIEW_SIZE: AtomicUsize = AtomicUsize::new(0);

/// A free list of view objects, like freelist.rs's for Pointers: views
/// are made and dropped once per `p.ref`, and PyObject_Malloc/Free were a
/// third of that (BENCHMARKS.md, struct_field). It holds only objects of
/// plain view classes (see `plain_view_objects`), which all have
/// StructView's size; only where a GIL guards it.
#[cfg(not(Py_GIL_DISABLED))]
mod list {
    use pyo3::ffi;

    static LIST: crate::py::cpython::gil_list::GilList<64> =
        crate::py::cpython::gil_list::GilList::new();

    /// Memory for one view object, not initialised.
    ///
    /// # Safety
    /// The GIL is held.
    #[inline]
    pub(super) unsafe fn take(size: usize) -> *mut ffi::PyObject {
        // SAFETY: per the function's contract; every item has `size` bytes.
        unsafe {
            match LIST.take() {
                Some(obj) => obj,
                None => ffi::PyObject_Malloc(size).cast(),
            }
        }
    }

    /// Keeps a dead view object's memory (or frees it when the list is full).
    ///
    /// # Safety
    /// The GIL is held; `obj` came from PyObject_Malloc with the plain size.
    #[inline]
    #[cfg_attr(
        not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
        allow(dead_code)
    )]
    pub(super) unsafe fn keep(obj: *mut ffi::PyObject) {
        // SAFETY: per the function's contract.
        unsafe {
            if !LIST.keep(obj) {
                ffi::PyObject_Free(obj.cast());
            }
        }
    }
}

/// Objects of `tp` are plain views: the list's size, not GC-tracked.
///
/// # Safety
/// `tp` is a ready type object.
#[cfg(not(Py_GIL_DISABLED))]
#[inline]
unsafe fn is_plain(tp: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: per the function's contract.
    unsafe {
        (*tp).tp_flags & ffi::Py_TPFLAGS_HAVE_GC == 0
            && (*tp).tp_basicsize as usize == VIEW_SIZE.load(Ordering::Relaxed)
    }
}

/// A new object of view class `tp` with its header set and the rest
/// zeroed up to the value (which the caller writes), or null with an
/// exception set.
///
/// # Safety
/// The GIL is held; `tp` is a StructView subclass.
#[inline]
pub(crate) unsafe fn alloc_view(tp: *mut ffi::PyTypeObject) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract. A plain view's object is the
    // header (PyObject_Init sets it, and takes a reference to the heap
    // type) followed by the value the caller writes: nothing to zero.
    unsafe {
        #[cfg(not(Py_GIL_DISABLED))]
        if is_plain(tp) {
            let obj = list::take((*tp).tp_basicsize as usize);
            if obj.is_null() {
                return ffi::PyErr_NoMemory();
            }
            return super::gil_list::init(obj, tp);
        }
        (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc)(tp, 0)
    }
}

/// A view's last reference is gone (called by the subclass's dealloc, or
/// as the dealloc of a plain view class). For a value that drops plainly
/// it skips PyO3's trampoline, which only matters where PyO3 keeps a
/// reference pool: compiled only where it has none.
#[cfg(all(
    not(Py_GIL_DISABLED),
    pyo3_disable_reference_pool,
    pyo3_leak_on_drop_without_reference_pool
))]
unsafe extern "C" fn view_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc with the GIL held, once, on a dead
    // view, whose value sits at VIEW_OFFSET (install measured it). As
    // PyO3's own: the value is dropped once, the memory goes to the
    // object's type's tp_free, and the instance's reference to its heap
    // type is released.
    unsafe {
        let off = VIEW_OFFSET.load(Ordering::Relaxed);
        let value = obj.cast::<u8>().add(off).cast::<StructView>();
        let tp = ffi::Py_TYPE(obj);
        let drops_plainly = off != 0 && (*value).ptr.owner.drops_plainly();
        // PyO3's dealloc untracks the object (PyO3 0.30 makes StructView a
        // GC type): right for a GC view, wrong for a plain view, which has
        // no GC header and whose value this function drops itself.
        if off == 0 || (!drops_plainly && ffi::PyType_IS_GC(tp) != 0) {
            return OLD_VIEW_DEALLOC.get().expect("installed")(obj);
        }
        if (*tp).tp_finalize.is_some() {
            // A class given a __del__ after it became plain: run it, as
            // subtype_dealloc would (it may resurrect the view).
            if ffi::PyObject_CallFinalizerFromDealloc(obj) < 0 {
                return;
            }
        }
        // PyO3 0.30 makes StructView a GC type, so a view of a class that
        // is not plain is tracked (subtype_dealloc tracks it again before
        // calling its base's dealloc, this one): untracked before its memory
        // goes, as PyO3's dealloc does. A plain view has no GC header.
        if ffi::PyType_IS_GC(tp) != 0 {
            ffi::PyObject_GC_UnTrack(obj.cast());
        }
        // Unwinding out of a C callback would abort: leak instead.
        let drop_value = || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // The owner first, with the proof the GIL gives (see
                // `freelist::dealloc`).
                let owner = std::mem::replace(&mut (*value).ptr.owner, Owner::UNOWNED);
                owner.release(crate::py::serialized::token(Python::assume_attached()));
                std::ptr::drop_in_place(value)
            }));
        };
        if drops_plainly {
            // No Python object is dropped: PyO3 need not know the thread.
            drop_value();
        } else {
            // The owner may drop `Py` values: registered with PyO3, as its
            // own dealloc is (attach.rs).
            super::attach::registered(|_| drop_value());
        }
        #[cfg(not(Py_GIL_DISABLED))]
        if is_plain(tp) {
            list::keep(obj);
            ffi::Py_DECREF(tp.cast());
            return;
        }
        (*tp).tp_free.unwrap_or(ffi::PyObject_Free)(obj.cast());
        ffi::Py_DECREF(tp.cast());
    }
}

/// Makes the objects of struct class `class` plain objects instead of
/// GC-tracked ones. CPython makes every instance of a Python class
/// GC-tracked, in case it takes part in a reference cycle; a view refers to
/// no Python object but its class (which rsalloc keeps alive for the
/// process anyway, in its TypeInfo), so tracking buys nothing and costs a
/// pre-header and a link and unlink per view (BENCHMARKS.md,
/// struct_field). Done before the class's first object exists, and only for
/// a class that adds nothing to StructView's layout (no `__dict__`, weak
/// references or slots). On a free-threaded build, or one
/// with PyO3's reference pool (`plain_views` says why), left alone.
pub(crate) fn plain_view_objects(class: &Bound<'_, pyo3::types::PyType>) {
    let _ = class;
    #[cfg(all(
        not(Py_GIL_DISABLED),
        pyo3_disable_reference_pool,
        pyo3_leak_on_drop_without_reference_pool
    ))]
    if plain_views().is_ok() {
        use super::untracked::MANAGED;
        let base = StructView::type_object(class.py()).as_type_ptr();
        let tp = class.as_type_ptr();
        // SAFETY: a ready heap type deriving from StructView, whose first
        // object has not been made yet (this runs when the class is first
        // classified, before any view of it); the fields read and written
        // are plain type slots.
        unsafe {
            let plain = (*tp).tp_basicsize == (*base).tp_basicsize
                && (*tp).tp_itemsize == 0
                && (*tp).tp_dictoffset == 0
                && (*tp).tp_weaklistoffset == 0
                && (*tp).tp_flags & MANAGED == 0
                && (*tp).tp_flags & ffi::Py_TPFLAGS_HAVE_GC != 0;
            if plain {
                (*tp).tp_flags &= !ffi::Py_TPFLAGS_HAVE_GC;
                (*tp).tp_free = Some(ffi::PyObject_Free);
                (*tp).tp_traverse = None;
                (*tp).tp_clear = None;
                // subtype_dealloc's work for a class without slots, dict,
                // weak references or GC is the base's dealloc, which
                // view_dealloc is (with the finalizer check it keeps).
                (*tp).tp_dealloc = Some(view_dealloc);
                ffi::PyType_Modified(tp);
            }
        }
    }
}

/// The view `p.ref` made last, kept with one reference of its own, so that
/// the next `p.ref` of the same block, once nobody else holds that view,
/// returns it instead of making an equal one. Programs read and write a
/// struct's fields one statement at a time (`p.ref.x = 1; p.ref.y = 2`):
/// each made a view and dropped it, which was half of what a field access
/// cost (BENCHMARKS.md, struct_field). A view nobody else holds cannot be
/// told from a new one: only views of plain classes (no `__dict__`, no weak
/// references) of an rsalloc block are kept, their value is immutable, and
/// `p.ref is p.ref` stays False (the first is still held). The kept view
/// keeps its block's record (not the block) until another view replaces it.
#[cfg(all(
    not(Py_GIL_DISABLED),
    pyo3_disable_reference_pool,
    pyo3_leak_on_drop_without_reference_pool
))]
pub(crate) mod last_ref {
    use super::{is_plain, StructView, VIEW_OFFSET};
    use crate::py::pointer::{Owned, Pointer};
    use pyo3::ffi;
    use std::cell::UnsafeCell;
    use std::sync::atomic::Ordering;

    struct Kept(UnsafeCell<*mut ffi::PyObject>);
    // SAFETY: only accessed with the GIL held (every function's contract).
    unsafe impl Sync for Kept {}
    static KEPT: Kept = Kept(UnsafeCell::new(std::ptr::null_mut()));

    /// The kept view, when it is `p.ref` (class, block, address and type of
    /// `p`'s element 0 at `addr`) and nobody else holds it: borrowed.
    ///
    /// # Safety
    /// The GIL is held; `p` is a live struct Pointer whose element 0 is at `addr`.
    #[inline]
    pub(crate) unsafe fn reuse(p: &Pointer, addr: usize) -> Option<*mut ffi::PyObject> {
        // SAFETY: per the function's contract; a kept view is a live plain
        // view object (it holds a reference), its value at VIEW_OFFSET.
        unsafe {
            let obj = *KEPT.0.get();
            if obj.is_null()
                || ffi::Py_REFCNT(obj) != 1
                || ffi::Py_TYPE(obj).cast::<ffi::PyObject>() != p.ty.class.as_ptr()
            {
                return None;
            }
            let off = VIEW_OFFSET.load(Ordering::Relaxed);
            let v = &*obj.cast::<u8>().add(off).cast::<StructView>();
            let same = v.ptr.addr == addr
                && std::ptr::eq(v.ptr.ty, p.ty)
                && v.ptr.extent() == Some(p.ty.size)
                && v.ptr.owner.same_block(&p.owner);
            same.then_some(obj)
        }
    }

    /// Keeps `obj`, a view `p.ref` just made (a reference the caller
    /// keeps too), when it may be reused; releases the view kept before.
    ///
    /// # Safety
    /// The GIL is held; `obj` is a live view object.
    #[inline]
    pub(crate) unsafe fn keep(obj: *mut ffi::PyObject) {
        // SAFETY: per the function's contract; the old view's last
        // reference may go here, through its type's dealloc, which handles
        // its owner (view_dealloc).
        unsafe {
            let tp = ffi::Py_TYPE(obj);
            let off = VIEW_OFFSET.load(Ordering::Relaxed);
            let v = &*obj.cast::<u8>().add(off).cast::<StructView>();
            if off == 0 || !is_plain(tp) || !matches!(v.ptr.owner.get(), Owned::Block(_)) {
                return;
            }
            ffi::Py_INCREF(obj);
            let old = std::mem::replace(&mut *KEPT.0.get(), obj);
            if !old.is_null() {
                ffi::Py_DECREF(old);
            }
        }
    }
}
