//! Hand-written entry points for the hottest calls: the ones made once per
//! block (`allocator.allocate(n)`, `arena.allocate(n)`, `rsalloc.free(p)`)
//! and element access (`p[i]`, `p[i] = v`).
//!
//! PyO3's generated wrapper costs about as much as the allocation itself
//! for these calls (BENCHMARKS.md): its generic argument parsing, and a
//! trampoline that registers the thread with PyO3 in a thread-local. Each
//! entry point here serves one common case directly, the *plain* one: one
//! positional argument of the exact expected type, no keywords, an
//! allocator whose blocks come from libc with tracking off (or a bump
//! region). Every other call goes, unchanged, to the PyO3 method it
//! replaced, so keyword arguments, Python-defined allocators, tracking,
//! messages, signatures and docstrings stay PyO3's.
//!
//! Why the plain case needs no PyO3 trampoline: it creates Python objects
//! but drops none that PyO3 would defer (a `Py<T>` dropped while PyO3
//! believes the thread detached is leaked), and runs no user code. An error
//! or a panic is rare, so raising it pays for `Python::attach`, which makes
//! PyO3 aware of the thread before the error's objects are released.

use super::allocator::{plain_bytes_request, Allocator};
use super::arena::Arena;
use super::errors::IntoPy;
use super::freelist::{as_pointer, new_object};
use super::pointer::{Owned, Pointer};
use super::values::exact_small_int;
use crate::core::types::Kind;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::type_object::PyTypeInfo;
use pyo3::types::{PyCFunction, PyType};
use std::ffi::{c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

pub(crate) type Args = *const *mut ffi::PyObject;

/// The PyO3 methods the fast ones replace, for every other call.
static ALLOCATOR_ALLOCATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ARENA_ALLOCATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FREE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// What a fast route did with a call.
pub(crate) enum Outcome<R> {
    /// The call's result (a new reference, or a slot's status).
    Done(R),
    /// The call failed with this error.
    Raise(PyErr),
    /// Not the plain case, and nothing was done: the PyO3 code takes it.
    Delegate,
}

impl<T> From<PyResult<T>> for Outcome<T> {
    fn from(r: PyResult<T>) -> Self {
        match r {
            Ok(v) => Outcome::Done(v),
            Err(e) => Outcome::Raise(e),
        }
    }
}

/// A C return type and its error value.
pub(crate) trait Ret {
    const ERR: Self;
}
impl Ret for *mut ffi::PyObject {
    const ERR: Self = std::ptr::null_mut();
}
impl Ret for c_int {
    const ERR: Self = -1;
}

/// Runs a fast route and turns its outcome into what CPython expects;
/// `slow` runs the replaced PyO3 code with the call as received.
///
/// # Safety
/// Called by CPython with the GIL (or an attached thread state).
#[inline]
pub(crate) unsafe fn enter<R: Ret>(
    route: impl FnOnce(Python<'_>) -> Outcome<R>,
    slow: impl FnOnce() -> R,
) -> R {
    // SAFETY: per the function's contract.
    let py = unsafe { Python::assume_attached() };
    let raise = |e: PyErr| {
        Python::attach(|py| e.restore(py));
        R::ERR
    };
    match catch_unwind(AssertUnwindSafe(|| route(py))) {
        Ok(Outcome::Done(r)) => r,
        Ok(Outcome::Raise(e)) => raise(e),
        Ok(Outcome::Delegate) => slow(),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic in rsalloc".into());
            raise(pyo3::panic::PanicException::new_err(msg))
        }
    }
}

/// The one positional argument of a keyword-free call, if that is the shape.
///
/// # Safety
/// `args` holds `nargs` borrowed objects.
#[inline]
pub(crate) unsafe fn single<'a, 'py>(
    py: Python<'py>,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> Option<pyo3::Borrowed<'a, 'py, PyAny>> {
    // SAFETY: per the function's contract.
    (nargs == 1 && kwnames.is_null()).then(|| unsafe { pyo3::Borrowed::from_ptr(py, *args) })
}

/// Calls the replaced PyO3 method (or function, when `slf` is None) with
/// the arguments exactly as received; its error, if any, is left raised.
///
/// # Safety
/// As for `enter`.
pub(crate) unsafe fn delegate(
    slow: &PyOnceLock<Py<PyAny>>,
    slf: Option<*mut ffi::PyObject>,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract; kwnames is a tuple when set; the
    // slow callable is set at install, before any call can arrive.
    unsafe {
        let py = Python::assume_attached();
        let Some(slow) = slow.get(py) else {
            ffi::PyErr_SetString(
                ffi::PyExc_RuntimeError,
                c"rsalloc: fast path not installed".as_ptr(),
            );
            return std::ptr::null_mut();
        };
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames)
        };
        let total = (nargs + nkw) as usize;
        let mut all: Vec<*mut ffi::PyObject> = Vec::new();
        if all.try_reserve_exact(total + 1).is_err() {
            return ffi::PyErr_NoMemory();
        }
        all.extend(slf);
        all.extend_from_slice(std::slice::from_raw_parts(args, total));
        let npos = nargs as usize + usize::from(slf.is_some());
        ffi::PyObject_Vectorcall(slow.as_ptr(), all.as_ptr(), npos, kwnames)
    }
}

/// `x.allocate(nbytes)` called with one exact int: `make(py, n)` builds the
/// Pointer, or returns None when `x` is not a plain case.
///
/// # Safety
/// As for `enter`; `slf` is the object the method descriptor checked.
#[inline]
unsafe fn allocate_entry(
    slow: &PyOnceLock<Py<PyAny>>,
    slf: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    make: impl FnOnce(Python<'_>, i64) -> Option<PyResult<Pointer>>,
) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        enter(
            |py| {
                let made = single(py, args, nargs, kwnames)
                    .and_then(|a| exact_small_int(&a))
                    .and_then(|n| make(py, n));
                match made {
                    Some(p) => p.and_then(|p| Ok(new_object(py, p)?.into_ptr())).into(),
                    None => Outcome::Delegate,
                }
            },
            || delegate(slow, Some(slf), args, nargs, kwnames),
        )
    }
}

/// `allocator.allocate(nbytes)` of a plain allocator.
unsafe extern "C" fn allocator_allocate(
    slf: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython's method descriptor checked that slf is an Allocator.
    unsafe {
        allocate_entry(&ALLOCATOR_ALLOCATE, slf, args, nargs, kwnames, |py, n| {
            let this = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<Allocator>();
            let this = this.get();
            this.core.plain().then(|| {
                let (ty, req) = plain_bytes_request(py, &this.core.name, n)?;
                this.new_pointer(py, ty, req)
            })
        })
    }
}

/// `arena.allocate(nbytes)` of a bump-region arena.
unsafe extern "C" fn arena_allocate(
    slf: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython's method descriptor checked that slf is an Arena.
    unsafe {
        allocate_entry(&ARENA_ALLOCATE, slf, args, nargs, kwnames, |py, n| {
            let this = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<Arena>();
            let this = this.get();
            this.ready_region(slf).map(|r| {
                let (ty, req) = plain_bytes_request(py, &this.name, n)?;
                this.region_pointer(py, r, ty, req)
            })
        })
    }
}

/// `rsalloc.free(p)` of a block from a plain allocator.
unsafe extern "C" fn free(
    _module: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: per `enter`.
    unsafe {
        enter(
            |py| {
                let Some(p) = single(py, args, nargs, kwnames) else {
                    return Outcome::Delegate;
                };
                let Some(p) = as_pointer(&p) else {
                    return Outcome::Delegate;
                };
                let p = p.get();
                match p.owner.get() {
                    Owned::Block(rec) if p.addr != 0 && rec.frees_plainly() => {
                        match rec.free_plain(p.addr).py(py, p) {
                            Ok(()) => Outcome::Done(ffi::Py_NewRef(ffi::Py_None())),
                            Err(e) => Outcome::Raise(e),
                        }
                    }
                    _ => Outcome::Delegate,
                }
            },
            || delegate(&FREE, None, args, nargs, kwnames),
        )
    }
}

/// The PyO3 slots `p[i]` and `p[i] = v` replace.
static OLD_SUBSCRIPT: OnceLock<ffi::binaryfunc> = OnceLock::new();
static OLD_ASS_SUBSCRIPT: OnceLock<ffi::objobjargproc> = OnceLock::new();

/// An exact int key that fits an index.
#[inline]
fn int_index(key: &Bound<'_, PyAny>) -> Option<isize> {
    exact_small_int(key).and_then(|i| isize::try_from(i).ok())
}

/// `p[i]` with an int index into numeric elements.
unsafe extern "C" fn subscript(
    slf: *mut ffi::PyObject,
    key: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the slot of Pointer, which has no subclasses: slf is a Pointer.
    unsafe {
        enter(
            |py| {
                let p = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<Pointer>();
                let p = p.get();
                let key = pyo3::Borrowed::from_ptr(py, key);
                match int_index(&key) {
                    Some(i) if p.ty.kind.is_number() => match p.plain_item(i) {
                        Some(r) => Outcome::Done(r),
                        None => p.item(py, i).map(Py::into_ptr).into(),
                    },
                    // A pointer slot: the address read back resolves to its
                    // block (`from_stored_address`), which runs no Python code.
                    Some(i) if p.ty.kind == Kind::Ptr => p.item(py, i).map(Py::into_ptr).into(),
                    _ => Outcome::Delegate,
                }
            },
            || OLD_SUBSCRIPT.get().expect("installed")(slf, key),
        )
    }
}

/// `p[i] = v` with an int index into numeric elements and an exact int or
/// float value (whose conversion runs no Python code).
unsafe extern "C" fn ass_subscript(
    slf: *mut ffi::PyObject,
    key: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
) -> c_int {
    // SAFETY: as for subscript; value is NULL for `del p[i]`.
    unsafe {
        enter(
            |py| {
                if value.is_null() {
                    return Outcome::Delegate;
                }
                let p = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<Pointer>();
                let p = p.get();
                let key = pyo3::Borrowed::from_ptr(py, key);
                let value = pyo3::Borrowed::from_ptr(py, value);
                let plain = value.is_exact_instance_of::<pyo3::types::PyInt>()
                    || value.is_exact_instance_of::<pyo3::types::PyFloat>();
                // A Pointer or None into a pointer slot: converting either
                // runs no Python code.
                let address = value.is_none() || as_pointer(&value).is_some();
                match int_index(&key) {
                    Some(i) if address && p.ty.kind == Kind::Ptr => {
                        p.write_address(py, i, &value).map(|()| 0).into()
                    }
                    Some(i) if plain && p.ty.kind.is_number() => {
                        if p.plain_write(i, &value) {
                            Outcome::Done(0)
                        } else {
                            p.write(py, i, &value).map(|()| 0).into()
                        }
                    }
                    _ => Outcome::Delegate,
                }
            },
            || OLD_ASS_SUBSCRIPT.get().expect("installed")(slf, key, value),
        )
    }
}

/// Points Pointer's mapping slots at `subscript` and `ass_subscript`.
fn replace_item_slots(py: Python<'_>) -> PyResult<()> {
    let tp = Pointer::type_object(py).as_type_ptr();
    // SAFETY: a heap type's mapping methods are its own (PyHeapTypeObject's
    // as_mapping), set by PyO3 for __getitem__/__setitem__; replaced once,
    // at module init, before any Pointer is indexed.
    unsafe {
        let m = (*tp).tp_as_mapping;
        let (Some(get), Some(set)) = (
            m.as_ref().and_then(|m| m.mp_subscript),
            m.as_ref().and_then(|m| m.mp_ass_subscript),
        ) else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "Pointer has no item slots",
            ));
        };
        let _ = OLD_SUBSCRIPT.set(get);
        let _ = OLD_ASS_SUBSCRIPT.set(set);
        (*m).mp_subscript = Some(subscript);
        (*m).mp_ass_subscript = Some(ass_subscript);
    }
    Ok(())
}

/// A `PyMethodDef` kept for the life of the process: in static storage
/// rather than leaked, so that a leak checker does not count it lost once
/// CPython drops, at exit, the objects that point at it.
struct Def(ffi::PyMethodDef);

// SAFETY: written once at module init (under the GIL), then only read, by
// CPython, through the objects made from it.
unsafe impl Send for Def {}
unsafe impl Sync for Def {}

/// One per replaced entry point: allocator.allocate, arena.allocate, free,
/// to_native_utf8 (fast_structs.rs).
static DEFS: [OnceLock<Def>; 4] = [
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
];

/// A `PyMethodDef` like `old`'s (name, docstring and text signature) that
/// calls `entry`, in slot `slot` of `DEFS`.
fn method_def(
    slot: usize,
    old: ffi::PyMethodDef,
    entry: ffi::PyCFunctionFastWithKeywords,
) -> *mut ffi::PyMethodDef {
    let def = DEFS[slot].get_or_init(|| {
        let mut def = old;
        def.ml_meth = ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: entry,
        };
        def.ml_flags = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;
        Def(def)
    });
    // CPython takes a mutable pointer but never writes through it.
    std::ptr::from_ref(&def.0).cast_mut()
}

/// Replaces method `name` of `ty` by one that calls `entry` (its definition
/// in `DEFS[slot]`, copied from the old one's), keeping the old one in `slow`.
fn replace_method(
    ty: &Bound<'_, PyType>,
    name: &CStr,
    slow: &PyOnceLock<Py<PyAny>>,
    slot: usize,
    entry: ffi::PyCFunctionFastWithKeywords,
) -> PyResult<()> {
    let py = ty.py();
    let dict = ty.getattr("__dict__")?;
    let old = dict.get_item(name.to_str().expect("ascii"))?;
    // SAFETY: the entry of a PyO3 method is a method descriptor whose
    // PyMethodDef PyO3 keeps for the life of the process; the new
    // descriptor is stored in the type's dict, as PyType_Ready would.
    unsafe {
        if ffi::Py_IS_TYPE(
            old.as_ptr(),
            std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type),
        ) == 0
        {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "not a method descriptor",
            ));
        }
        let def = method_def(
            slot,
            *(*old.as_ptr().cast::<ffi::PyMethodDescrObject>()).d_method,
            entry,
        );
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
    replace_method(
        &Allocator::type_object(py),
        c"allocate",
        &ALLOCATOR_ALLOCATE,
        0,
        allocator_allocate,
    )?;
    replace_method(
        &Arena::type_object(py),
        c"allocate",
        &ARENA_ALLOCATE,
        1,
        arena_allocate,
    )?;

    replace_function(m, "free", &FREE, 2, free)?;
    replace_item_slots(py)
}

/// Replaces module function `name` of `m` by one that calls `entry` (its
/// definition in `DEFS[slot]`, copied from the old one's), keeping the old
/// one in `slow`.
pub(crate) fn replace_function(
    m: &Bound<'_, PyModule>,
    name: &str,
    slow: &PyOnceLock<Py<PyAny>>,
    slot: usize,
    entry: ffi::PyCFunctionFastWithKeywords,
) -> PyResult<()> {
    let py = m.py();
    let old = m.getattr(name)?.cast_into::<PyCFunction>()?;
    // SAFETY: a PyO3 function's PyMethodDef lives for the process; the new
    // function object takes the module as self, as PyO3's does.
    unsafe {
        let def = method_def(
            slot,
            *(*old.as_ptr().cast::<ffi::PyCFunctionObject>()).m_ml,
            entry,
        );
        let new = Bound::from_owned_ptr_or_err(
            py,
            ffi::PyCMethod_New(
                def,
                m.as_ptr(),
                m.getattr("__name__")?.as_ptr(),
                std::ptr::null_mut(),
            ),
        )?;
        m.setattr(name, new)?;
    }
    let _ = slow.set(py, old.into_any().unbind());
    Ok(())
}
