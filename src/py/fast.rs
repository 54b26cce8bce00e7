//! Hand-written vectorcall entry points for the calls made once per block:
//! `allocator.allocate(n)`, `arena.allocate(n)` and `rsalloc.free(p)`.
//!
//! PyO3's generated wrapper parses every call through its generic argument
//! machinery; for a call whose whole job is a `malloc`, that parsing cost
//! about as much as the allocation (BENCHMARKS.md). Each function here
//! handles the common shape of its call (one positional argument of the
//! exact expected type, no keywords) directly and hands every other shape,
//! unchanged, to the PyO3 method it replaces, so keyword arguments, error
//! messages, signatures and docstrings stay PyO3's. The functions run inside
//! PyO3's own trampoline, so panics and errors are handled as everywhere
//! else.

use super::allocator::{bytes_request, Allocator};
use super::arena::Arena;
use super::freelist::new_object;
use super::pointer::Pointer;
use super::values::exact_small_int;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyType};
use pyo3::type_object::PyTypeInfo;
use std::ffi::CStr;

type Args = *const *mut ffi::PyObject;

/// The PyO3 methods the fast ones replace, for every other call shape.
static ALLOCATOR_ALLOCATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ARENA_ALLOCATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FREE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The one positional argument of a keyword-free call, if that is the shape.
///
/// # Safety
/// `args` holds `nargs` borrowed objects.
#[inline]
unsafe fn single<'a, 'py>(
    py: Python<'py>,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> Option<pyo3::Borrowed<'a, 'py, PyAny>> {
    // SAFETY: per the function's contract.
    (nargs == 1 && kwnames.is_null()).then(|| unsafe { pyo3::Borrowed::from_ptr(py, *args) })
}

/// Calls the replaced PyO3 method (or function, when `slf` is None) with
/// the arguments exactly as received.
///
/// # Safety
/// `args` holds `nargs` positional objects followed by one per name in
/// `kwnames` (vectorcall convention).
unsafe fn delegate(
    py: Python<'_>,
    slow: &PyOnceLock<Py<PyAny>>,
    slf: Option<*mut ffi::PyObject>,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    let slow = slow.get(py).expect("installed with the module");
    // SAFETY: per the function's contract; kwnames is a tuple when set.
    unsafe {
        let nkw = if kwnames.is_null() { 0 } else { ffi::PyTuple_GET_SIZE(kwnames) };
        let total = (nargs + nkw) as usize;
        let mut all: Vec<*mut ffi::PyObject> = Vec::new();
        all.try_reserve_exact(total + 1)
            .map_err(|_| pyo3::exceptions::PyMemoryError::new_err("argument list"))?;
        all.extend(slf);
        all.extend_from_slice(std::slice::from_raw_parts(args, total));
        let npos = nargs as usize + usize::from(slf.is_some());
        let out = ffi::PyObject_Vectorcall(slow.as_ptr(), all.as_ptr(), npos, kwnames);
        if out.is_null() {
            Err(PyErr::fetch(py))
        } else {
            Ok(out)
        }
    }
}

/// `allocator.allocate(nbytes)`.
unsafe fn allocator_allocate(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: CPython's method descriptor checked that slf is an Allocator;
    // args as received.
    unsafe {
        if let Some(n) = single(py, args, nargs, kwnames).and_then(|a| exact_small_int(&a)) {
            let this = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<Allocator>();
            let this = this.get();
            let (ty, req) = bytes_request(py, &this.core.name, n.into(), None)?;
            return Ok(new_object(py, this.new_pointer(py, ty, req)?)?.into_ptr());
        }
        delegate(py, &ALLOCATOR_ALLOCATE, Some(slf), args, nargs, kwnames)
    }
}

/// `arena.allocate(nbytes)`.
unsafe fn arena_allocate(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: as for allocator_allocate, with Arena.
    unsafe {
        if let Some(n) = single(py, args, nargs, kwnames).and_then(|a| exact_small_int(&a)) {
            let slf = pyo3::Borrowed::from_ptr(py, slf);
            let this = slf.cast_unchecked::<Arena>().get();
            let (ty, req) = bytes_request(py, &this.name, n.into(), None)?;
            return Ok(new_object(py, this.new_pointer(&slf, ty, req)?)?.into_ptr());
        }
        delegate(py, &ARENA_ALLOCATE, Some(slf), args, nargs, kwnames)
    }
}

/// `rsalloc.free(p)`.
unsafe fn free(
    py: Python<'_>,
    _module: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: args as received.
    unsafe {
        if let Some(p) = single(py, args, nargs, kwnames) {
            if let Ok(p) = p.cast::<Pointer>() {
                super::allocator::free(py, &p)?;
                return Ok(ffi::Py_NewRef(ffi::Py_None()));
            }
        }
        delegate(py, &FREE, None, args, nargs, kwnames)
    }
}

/// A `PyMethodDef` like `old`'s (name, docstring and text signature) that
/// calls `body` through PyO3's trampoline. Leaked: CPython keeps pointers to
/// it for the life of the process.
macro_rules! method_def {
    ($old:expr, $body:path) => {{
        let mut def = $old;
        def.ml_meth = ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: pyo3::get_trampoline_function!(
                fastcall_cfunction_with_keywords,
                $body
            ),
        };
        def.ml_flags = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;
        Box::into_raw(Box::new(def))
    }};
}

/// Replaces method `name` of `ty` by a fast one whose body is `def`'s,
/// keeping the old one in `slow`.
fn replace_method(
    ty: &Bound<'_, PyType>,
    name: &CStr,
    slow: &PyOnceLock<Py<PyAny>>,
    make: impl FnOnce(ffi::PyMethodDef) -> *mut ffi::PyMethodDef,
) -> PyResult<()> {
    let py = ty.py();
    let dict = ty.getattr("__dict__")?;
    let old = dict.get_item(name.to_str().expect("ascii"))?;
    // SAFETY: the entry of a PyO3 method is a method descriptor whose
    // PyMethodDef PyO3 keeps for the life of the process; the new
    // descriptor is stored in the type's dict, as PyType_Ready would.
    unsafe {
        if ffi::Py_IS_TYPE(old.as_ptr(), std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type)) == 0 {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("not a method descriptor"));
        }
        let def = make(*(*old.as_ptr().cast::<ffi::PyMethodDescrObject>()).d_method);
        let new = Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))?;
        let tp_dict = Bound::from_borrowed_ptr(py, (*ty.as_type_ptr()).tp_dict);
        tp_dict.set_item(name.to_str().expect("ascii"), new)?;
        ffi::PyType_Modified(ty.as_type_ptr());
    }
    let _ = slow.set(py, old.unbind());
    Ok(())
}

/// Installs the fast entry points; `m` is the module, after PyO3 has added
/// its functions and classes.
pub fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    replace_method(&Allocator::type_object(py), c"allocate", &ALLOCATOR_ALLOCATE, |old| {
        method_def!(old, allocator_allocate)
    })?;
    replace_method(&Arena::type_object(py), c"allocate", &ARENA_ALLOCATE, |old| {
        method_def!(old, arena_allocate)
    })?;

    let old = m.getattr("free")?.cast_into::<PyCFunction>()?;
    // SAFETY: a PyO3 function's PyMethodDef lives for the process; the new
    // function object takes the module as self, as PyO3's does.
    unsafe {
        let def = method_def!(*(*old.as_ptr().cast::<ffi::PyCFunctionObject>()).m_ml, free);
        let new = Bound::from_owned_ptr_or_err(
            py,
            ffi::PyCMethod_New(def, m.as_ptr(), m.getattr("__name__")?.as_ptr(), std::ptr::null_mut()),
        )?;
        m.setattr("free", new)?;
    }
    let _ = FREE.set(py, old.into_any().unbind());
    Ok(())
}
