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

use super::entry::{
    enter, own_descriptor, replace_function, set_descriptor, Arg, Def, Obj, Outcome, Unary,
};
use super::freelist::as_pointer;
use super::view_objects::make_view;
use crate::core::layout::Request;
use crate::py::allocator::{self, block_object, Allocator};
use crate::py::args::request;
use crate::py::struct_view::StructView;
use crate::py::structs::Field;
use crate::py::types;
use crate::py::types::Composite;
use crate::py::values::exact_small_int;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::type_object::PyTypeInfo;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

static OLD_FIELD_GET: OnceLock<ffi::descrgetfunc> = OnceLock::new();
static OLD_FIELD_SET: OnceLock<ffi::descrsetfunc> = OnceLock::new();
static OLD_REF_GET: OnceLock<ffi::getter> = OnceLock::new();
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
        if tp.addr() == field.owner_type {
            return true;
        }
        let Some(&base) = VIEW_TYPE.get() else {
            return false;
        };
        ffi::PyType_IsSubtype(
            tp,
            std::ptr::with_exposed_provenance_mut::<ffi::PyTypeObject>(base),
        ) != 0
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
struct ToNativeUtf8;

impl Unary for ToNativeUtf8 {
    const SLOW: (&'static PyOnceLock<Py<PyAny>>, usize) = (&TO_NATIVE_UTF8, 3);
    unsafe fn route(py: Python<'_>, _module: Obj, s: Arg<'_, '_>) -> Outcome<Obj> {
        // SAFETY: per `enter`; the UTF-8 bytes CPython caches in the str stay
        // valid while the str (borrowed from the arguments) lives.
        unsafe {
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
            let malloc = match allocator::malloc(py) {
                Ok(m) => m,
                Err(e) => return Outcome::Raise(e), // dropping it here would need PyO3 to know the thread
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
                        std::ptr::with_exposed_provenance_mut::<u8>(p.addr),
                        bytes.len(),
                    );
                    *std::ptr::with_exposed_provenance_mut::<u8>(p.addr + bytes.len()) = 0;
                });
            made.and_then(|p| Ok(block_object(py, p)?.into_ptr()))
                .into()
        }
    }
}

/// The definition of the replaced `ref` getter.
static REF_DEF: OnceLock<Def<ffi::PyGetSetDef>> = OnceLock::new();

/// Points the Field type's descriptor slots and
/// Pointer's `ref` getter at the entry points above. Called once at module
/// init, before any of them is used.
pub fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    if !super::view_objects::available() {
        // `p.ref` would make views through PyO3's constructor, general
        // code that the plain case must not run unregistered.
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "struct views are off",
        ));
    }
    replace_function::<ToNativeUtf8>(m, "to_native_utf8")?;
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
    let _ = VIEW_TYPE.set(view.expose_provenance());
    // SAFETY: heap types rsalloc owns, ready and not yet used; the slots
    // are plain fields PyO3 filled for __get__/__set__/__delete__ and the
    // dealloc. The new `ref` descriptor is stored in the type's dict, as
    // PyType_Ready would, from a definition kept for the process.
    unsafe {
        let (Some(get), Some(set)) = ((*field).tp_descr_get, (*field).tp_descr_set) else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "Field lacks its descriptor slots",
            ));
        };
        let _ = OLD_FIELD_GET.set(get);
        let _ = OLD_FIELD_SET.set(set);
        (*field).tp_descr_get = Some(field_get);
        (*field).tp_descr_set = Some(field_set);

        let pointer = crate::py::pointer::Pointer::type_object(py);
        let old = own_descriptor(
            &pointer,
            "ref",
            std::ptr::addr_of_mut!(ffi::PyGetSetDescr_Type),
        )?;
        let old_def = *(*old.as_ptr().cast::<ffi::PyGetSetDescrObject>()).d_getset;
        let Some(old_get) = old_def.get else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "Pointer.ref has no getter",
            ));
        };
        let _ = OLD_REF_GET.set(old_get);
        let def = Def::kept(&REF_DEF, || {
            let mut def = old_def;
            def.get = Some(ref_get);
            def
        });
        set_descriptor(
            &pointer,
            "ref",
            ffi::PyDescr_NewGetSet(pointer.as_type_ptr(), def),
        )?;
    }
    Ok(())
}
