//! Hand-written entry points for struct field access (`p.ref.x`,
//! `p.ref.x = v`) and the rest of the seed struct (`calloc(S)`,
//! `to_native_utf8(s)`), as fast.rs has for element access, for the same
//! reason: PyO3's generated slot wrappers (a trampoline registering the
//! thread, generic argument handling) cost more than the access itself
//! (BENCHMARKS.md, struct_field). Each serves the plain case — a number
//! field read or written with an exact int or float, a pointer field
//! written with a live Pointer or None, `p.ref` of a live struct pointer,
//! a view dropped whose owner drops plainly, `allocator(T[, n])` of a plain
//! allocator and a classified T, `to_native_utf8(s)` of an exact str from a
//! plain malloc — and hands every other call,
//! unchanged, to the PyO3 slot it replaced, which raises the errors.

use super::allocator::{self, block_object, request, Allocator};
use super::fast::{delegate, enter, replace_function, single, Args, Outcome};
use super::freelist::as_pointer;
use super::structs::{make_view, Field, StructView, VIEW_OFFSET};
use super::types;
use super::types::Composite;
use super::values::exact_small_int;
use crate::core::layout::Request;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::type_object::PyTypeInfo;
use std::ffi::{c_int, c_void};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

static OLD_FIELD_GET: OnceLock<ffi::descrgetfunc> = OnceLock::new();
static OLD_FIELD_SET: OnceLock<ffi::descrsetfunc> = OnceLock::new();
static OLD_REF_GET: OnceLock<ffi::getter> = OnceLock::new();
static OLD_VIEW_DEALLOC: OnceLock<ffi::destructor> = OnceLock::new();
static VIEW_TYPE: OnceLock<usize> = OnceLock::new();

/// `obj` is a struct view (an object of a StructView subclass): of the
/// class declaring `field`, usually.
///
/// # Safety
/// `obj` is a live object; the GIL is held.
#[inline]
unsafe fn is_view(obj: *mut ffi::PyObject, field: &Field) -> bool {
    // SAFETY: per the function's contract.
    unsafe {
        let tp = ffi::Py_TYPE(obj);
        if tp as usize == field.owner_type {
            return true;
        }
        let Some(&base) = VIEW_TYPE.get() else {
            return false;
        };
        ffi::PyType_IsSubtype(tp, base as *mut ffi::PyTypeObject) != 0
    }
}

/// `Field.__get__`: `view.x`.
unsafe extern "C" fn field_get(
    desc: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    owner: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_descr_get with the GIL and a Field as `desc`
    // (the type is final); `obj` is checked to be a view before the cast.
    unsafe {
        enter(
            |py| {
                let field = pyo3::Borrowed::from_ptr(py, desc).cast_unchecked::<Field>();
                if obj.is_null() || !is_view(obj, field.get()) {
                    return Outcome::Delegate;
                }
                let view = pyo3::Borrowed::from_ptr(py, obj).cast_unchecked::<StructView>();
                match field.get().plain_read(view.get()) {
                    Some(r) if !r.is_null() => Outcome::Done(r),
                    Some(_) => Outcome::Raise(PyErr::fetch(py)),
                    None => Outcome::Delegate,
                }
            },
            || OLD_FIELD_GET.get().expect("installed")(desc, obj, owner),
        )
    }
}

/// `Field.__set__`: `view.x = v` (value null: `del view.x`).
unsafe extern "C" fn field_set(
    desc: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
) -> c_int {
    // SAFETY: as for field_get; `value` is a live object when not null.
    unsafe {
        enter(
            |py| {
                let field = pyo3::Borrowed::from_ptr(py, desc).cast_unchecked::<Field>();
                if value.is_null() || obj.is_null() || !is_view(obj, field.get()) {
                    return Outcome::Delegate;
                }
                let view = pyo3::Borrowed::from_ptr(py, obj).cast_unchecked::<StructView>();
                let value = pyo3::Borrowed::from_ptr(py, value);
                if field.get().plain_write(view.get(), &value) {
                    Outcome::Done(0)
                } else {
                    Outcome::Delegate
                }
            },
            || OLD_FIELD_SET.get().expect("installed")(desc, obj, value),
        )
    }
}

/// `Pointer.ref` of a live pointer to an rsalloc struct.
unsafe extern "C" fn ref_get(slf: *mut ffi::PyObject, closure: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a getter with the GIL and an object of the
    // descriptor's type (Pointer).
    unsafe {
        enter(
            |py| {
                let obj = pyo3::Borrowed::from_ptr(py, slf);
                let Some(p) = as_pointer(&obj) else {
                    return Outcome::Delegate;
                };
                let p = p.get();
                if !matches!(p.ty.composite, Composite::Struct) {
                    return Outcome::Delegate;
                }
                let Ok(_held) = p.access() else {
                    return Outcome::Delegate;
                };
                let Ok(addr) = p.elem_addr(0) else {
                    return Outcome::Delegate;
                };
                make_view(py, &p.ty.class, p.view(addr, p.ty, Some(p.ty.size)))
                    .map(Py::into_ptr)
                    .into()
            },
            || OLD_REF_GET.get().expect("installed")(slf, closure),
        )
    }
}

/// A free list of view objects, like freelist.rs's for Pointers: views
/// are made and dropped once per `p.ref`, and PyObject_Malloc/Free were a
/// third of that (BENCHMARKS.md, struct_field). It holds only objects of
/// plain view classes (see `plain_view_objects`), which all have
/// StructView's size; only where a GIL guards it.
#[cfg(not(Py_GIL_DISABLED))]
mod list {
    use pyo3::ffi;

    const CAP: usize = 64;

    struct List {
        items: [*mut ffi::PyObject; CAP],
        len: usize,
    }

    /// Guarded by the GIL: only touched from make_view and tp_dealloc.
    struct GilCell(std::cell::UnsafeCell<List>);

    // SAFETY: only accessed with the GIL held (see above).
    unsafe impl Sync for GilCell {}

    static LIST: GilCell = GilCell(std::cell::UnsafeCell::new(List {
        items: [std::ptr::null_mut(); CAP],
        len: 0,
    }));

    /// Memory for one view object, not initialised.
    ///
    /// # Safety
    /// The GIL is held.
    #[inline]
    pub(super) unsafe fn take(size: usize) -> *mut ffi::PyObject {
        // SAFETY: per the function's contract; every item has `size` bytes.
        unsafe {
            let list = &mut *LIST.0.get();
            if list.len == 0 {
                return ffi::PyObject_Malloc(size).cast();
            }
            list.len -= 1;
            list.items[list.len]
        }
    }

    /// Keeps a dead view object's memory (or frees it when the list is full).
    ///
    /// # Safety
    /// The GIL is held; `obj` came from PyObject_Malloc with the plain size.
    #[inline]
    pub(super) unsafe fn keep(obj: *mut ffi::PyObject) {
        // SAFETY: per the function's contract.
        unsafe {
            let list = &mut *LIST.0.get();
            if list.len < CAP {
                list.items[list.len] = obj;
                list.len += 1;
            } else {
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

/// StructView's object size, set by install.
static VIEW_SIZE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

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
            return ffi::PyObject_Init(obj, tp);
        }
        (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc)(tp, 0)
    }
}

/// A view's last reference is gone (called by the subclass's dealloc, or
/// as the dealloc of a plain view class).
#[cfg_attr(Py_GIL_DISABLED, allow(dead_code))]
unsafe extern "C" fn view_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc with the GIL held, once, on a dead
    // view, whose value sits at VIEW_OFFSET (install measured it). As
    // PyO3's own: the value is dropped once, the memory goes to the
    // object's type's tp_free, and the instance's reference to its heap
    // type is released.
    unsafe {
        let off = VIEW_OFFSET.load(Ordering::Relaxed);
        let value = obj.cast::<u8>().add(off).cast::<StructView>();
        if off == 0 || !(*value).ptr.owner.drops_plainly() {
            return OLD_VIEW_DEALLOC.get().expect("installed")(obj);
        }
        let tp = ffi::Py_TYPE(obj);
        if (*tp).tp_finalize.is_some() {
            // A class given a __del__ after it became plain: run it, as
            // subtype_dealloc would (it may resurrect the view).
            if ffi::PyObject_CallFinalizerFromDealloc(obj) < 0 {
                return;
            }
        }
        // No Python object is dropped here; unwinding out of a C callback
        // would abort: leak instead.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::ptr::drop_in_place(value)
        }));
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
/// references or slots). On a free-threaded build, left alone.
pub(crate) fn plain_view_objects(class: &Bound<'_, pyo3::types::PyType>) {
    #[cfg(not(Py_GIL_DISABLED))]
    {
        // Py_TPFLAGS_MANAGED_DICT (3.11+) and Py_TPFLAGS_MANAGED_WEAKREF (3.12+).
        const MANAGED: std::ffi::c_ulong = (1 << 4) | (1 << 3);
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

static OLD_ALLOCATOR_CALL: OnceLock<ffi::ternaryfunc> = OnceLock::new();
static TO_NATIVE_UTF8: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `allocator(T)` and `allocator(T, n)` of a plain allocator, T a type
/// already classified and n an exact int: the seed struct's `calloc(S)`.
unsafe extern "C" fn allocator_call(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_call with the GIL, an Allocator (or a
    // subclass's object) as `slf`, a tuple of arguments and a dict or null.
    unsafe {
        enter(
            |py| {
                let n = ffi::PyTuple_GET_SIZE(args);
                if !(kwargs.is_null() || ffi::PyDict_Size(kwargs) == 0) || !(1..=2).contains(&n) {
                    return Outcome::Delegate;
                }
                let this = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<Allocator>();
                let this = this.get();
                if !this.core.plain() {
                    return Outcome::Delegate;
                }
                let t = pyo3::Borrowed::from_ptr(py, ffi::PyTuple_GET_ITEM(args, 0));
                let count = if n == 2 {
                    match exact_small_int(&pyo3::Borrowed::from_ptr(
                        py,
                        ffi::PyTuple_GET_ITEM(args, 1),
                    )) {
                        Some(c) => c,
                        None => return Outcome::Delegate,
                    }
                } else {
                    1
                };
                let Some(ty) = types::lookup_cached(&t) else {
                    return Outcome::Delegate; // first use: classifying runs Python code
                };
                request(py, &this.core.name, ty, count.into(), None)
                    .and_then(|req| this.new_pointer(py, ty, req))
                    .and_then(|p| Ok(block_object(py, p)?.into_ptr()))
                    .into()
            },
            || OLD_ALLOCATOR_CALL.get().expect("installed")(slf, args, kwargs),
        )
    }
}

/// `to_native_utf8(s)` of an exact str, from a plain malloc.
unsafe extern "C" fn to_native_utf8(
    _module: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: per `enter`; the UTF-8 bytes CPython caches in the str stay
    // valid while the str (borrowed from the arguments) lives.
    unsafe {
        enter(
            |py| {
                let Some(s) = single(py, args, nargs, kwnames) else {
                    return Outcome::Delegate;
                };
                if ffi::PyUnicode_CheckExact(s.as_ptr()) == 0 {
                    return Outcome::Delegate;
                }
                let mut len: ffi::Py_ssize_t = 0;
                let data = ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut len);
                if data.is_null() {
                    ffi::PyErr_Clear(); // not encodable: the PyO3 function says why
                    return Outcome::Delegate;
                }
                let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
                if bytes.contains(&0) {
                    return Outcome::Delegate;
                }
                let Ok(malloc) = allocator::malloc(py) else {
                    return Outcome::Delegate;
                };
                let malloc = malloc.get();
                if !malloc.core.plain() {
                    return Outcome::Delegate;
                }
                let req = Request {
                    size: bytes.len() + 1,
                    align: 1,
                };
                let made = types::uint8(py)
                    .and_then(|ty| malloc.new_pointer(py, ty, req))
                    .inspect(|p| {
                        // A fresh, live block of len + 1 bytes.
                        std::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            p.addr as *mut u8,
                            bytes.len(),
                        );
                        *((p.addr + bytes.len()) as *mut u8) = 0;
                    });
                made.and_then(|p| Ok(block_object(py, p)?.into_ptr()))
                    .into()
            },
            || delegate(&TO_NATIVE_UTF8, None, args, nargs, kwnames),
        )
    }
}

/// A `PyGetSetDef` for the replaced `ref` getter, kept for the process.
struct Def(ffi::PyGetSetDef);

// SAFETY: written once at module init (under the GIL), then only read by CPython.
unsafe impl Send for Def {}
unsafe impl Sync for Def {}

static REF_DEF: OnceLock<Def> = OnceLock::new();

/// Points the Field type's descriptor slots, StructView's dealloc and
/// Pointer's `ref` getter at the entry points above. Called once at module
/// init, before any of them is used.
pub fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    replace_function(m, "to_native_utf8", &TO_NATIVE_UTF8, 3, to_native_utf8)?;
    let alloc_tp = Allocator::type_object(py).as_type_ptr();
    // SAFETY: a heap type rsalloc owns, ready, before any subclass exists
    // (a Python allocator class made later inherits this slot).
    unsafe {
        let Some(call) = (*alloc_tp).tp_call else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "Allocator has no tp_call",
            ));
        };
        let _ = OLD_ALLOCATOR_CALL.set(call);
        (*alloc_tp).tp_call = Some(allocator_call);
    }
    let field = Field::type_object(py).as_type_ptr();
    let view = StructView::type_object(py).as_type_ptr();
    let _ = VIEW_TYPE.set(view as usize);
    // SAFETY: reading the size of a ready type.
    VIEW_SIZE.store(unsafe { (*view).tp_basicsize } as usize, Ordering::Relaxed);
    // SAFETY: heap types rsalloc owns, ready and not yet used; the slots
    // are plain fields PyO3 filled for __get__/__set__/__delete__ and the
    // dealloc. The new `ref` descriptor is stored in the type's dict, as
    // PyType_Ready would, from a definition kept for the process.
    unsafe {
        let (Some(get), Some(set), Some(dealloc)) = (
            (*field).tp_descr_get,
            (*field).tp_descr_set,
            (*view).tp_dealloc,
        ) else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "Field/StructView lack their slots",
            ));
        };
        let _ = OLD_FIELD_GET.set(get);
        let _ = OLD_FIELD_SET.set(set);
        let _ = OLD_VIEW_DEALLOC.set(dealloc);
        (*field).tp_descr_get = Some(field_get);
        (*field).tp_descr_set = Some(field_set);
        #[cfg(not(Py_GIL_DISABLED))]
        {
            (*view).tp_dealloc = Some(view_dealloc);
        }

        let pointer = super::pointer::Pointer::type_object(py);
        let old = pointer.getattr("__dict__")?.get_item("ref")?;
        if ffi::Py_IS_TYPE(
            old.as_ptr(),
            std::ptr::addr_of_mut!(ffi::PyGetSetDescr_Type),
        ) == 0
        {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "Pointer.ref is not a getset descriptor",
            ));
        }
        let old_def = *(*old.as_ptr().cast::<ffi::PyGetSetDescrObject>()).d_getset;
        let Some(old_get) = old_def.get else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "Pointer.ref has no getter",
            ));
        };
        let _ = OLD_REF_GET.set(old_get);
        let def = REF_DEF.get_or_init(|| {
            let mut def = old_def;
            def.get = Some(ref_get);
            Def(def)
        });
        let new = Bound::from_owned_ptr_or_err(
            py,
            ffi::PyDescr_NewGetSet(pointer.as_type_ptr(), std::ptr::from_ref(&def.0).cast_mut()),
        )?;
        let tp_dict = Bound::from_borrowed_ptr(py, (*pointer.as_type_ptr()).tp_dict);
        tp_dict.set_item("ref", new)?;
        ffi::PyType_Modified(pointer.as_type_ptr());
    }
    Ok(())
}
