//! What every hand-written entry point shares (`fast.rs` for element
//! access, allocation and `free`; `fast_structs.rs` for struct fields and
//! the rest): running a fast route with a fallback to the PyO3 code it
//! replaced, and installing an entry point in place of a PyO3 method or
//! module function, keeping the old one for every other call.
//!
//! A fast route skips PyO3's trampoline (which registers the thread with
//! PyO3 and updates its reference pool). That is sound only when PyO3 has
//! no reference pool to update, so this module, and the entry points
//! built on it, are compiled only with `--cfg pyo3_disable_reference_pool
//! --cfg pyo3_leak_on_drop_without_reference_pool` (.cargo/config.toml;
//! `cpython/mod.rs` reports them off otherwise).

use crate::py::checked;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyType};
use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

pub(crate) type Args = *const *mut ffi::PyObject;

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
/// The route runs without registering the thread with PyO3: that is the
/// trampoline cost the entry points exist to save, and the plain case
/// drops no `Py` (see fast.rs). PyO3 0.30 must know the thread for a `Py`
/// to be dropped (attach.rs: unregistered, the drop loops forever), so
/// whatever may drop one runs registered: raising an error or a panic
/// here, and any general code a route calls (`general`).
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
        // SAFETY: attached, per the function's contract.
        let _ = unsafe { super::attach::registered(|py| e.restore(py)) };
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
            raise(checked::error::<pyo3::panic::PanicException>(msg))
        }
    }
}

/// Runs general glue from inside a route, registered with PyO3: code
/// beyond the plain case may make and drop errors (a conversion tried and
/// abandoned) and other `Py` values. An error is left raised, with `R::ERR`.
///
/// # Safety
/// As for `enter`, from inside its route.
#[inline]
pub(crate) unsafe fn general<R: Ret>(f: impl FnOnce(Python<'_>) -> PyResult<R>) -> Outcome<R> {
    // SAFETY: per the function's contract.
    let out = unsafe {
        super::attach::registered(|py| match f(py) {
            Ok(r) => r,
            Err(e) => {
                e.restore(py);
                R::ERR
            }
        })
    };
    // None: a panic, raised as PanicException.
    Outcome::Done(out.unwrap_or(R::ERR))
}

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
/// the arguments exactly as received; its error, if any, is left raised.
///
/// # Safety
/// As for `enter`.
unsafe fn delegate(
    slow: &PyOnceLock<Py<PyAny>>,
    slf: Option<*mut ffi::PyObject>,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract; the slow callable is set at
    // install, before any call can arrive.
    unsafe {
        let py = Python::assume_attached();
        let Some(slow) = slow.get(py) else {
            ffi::PyErr_SetString(
                ffi::PyExc_RuntimeError,
                c"rsalloc: fast path not installed".as_ptr(),
            );
            return std::ptr::null_mut();
        };
        super::call_prepended(slow.as_ptr(), slf, args, nargs, kwnames)
    }
}

/// A definition CPython reads (a `PyMethodDef`, a `PyGetSetDef`) kept for
/// the life of the process: in static storage rather than leaked, so that a
/// leak checker does not count it lost once CPython drops, at exit, the
/// objects that point at it.
pub(crate) struct Def<T>(pub(crate) T);

// SAFETY: written once at module init (under the GIL), then only read, by
// CPython, through the objects made from it.
unsafe impl<T> Send for Def<T> {}

// SAFETY: as for `Send`: CPython only reads the definition after init.
unsafe impl<T> Sync for Def<T> {}

impl<T> Def<T> {
    /// The definition in `cell`, made by `make` the first time, as the
    /// mutable pointer CPython takes (and never writes through).
    pub(crate) fn kept(cell: &'static OnceLock<Def<T>>, make: impl FnOnce() -> T) -> *mut T {
        std::ptr::from_ref(&cell.get_or_init(|| Def(make())).0).cast_mut()
    }
}

/// One per replaced entry point: allocator.allocate, arena.allocate, free,
/// to_native_utf8 (fast_structs.rs).
static DEFS: [OnceLock<Def<ffi::PyMethodDef>>; 4] = [
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
    Def::kept(&DEFS[slot], || {
        let mut def = old;
        def.ml_meth = ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: entry,
        };
        def.ml_flags = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;
        def
    })
}

/// The calling convention every replaced definition must have, because it
/// is the one of the entry points that replace them: fast call with
/// keywords, `self` the object (a method) or the module (a function).
/// PyO3 0.28 and 0.29 registered `#[pyfunction]`s `METH_STATIC` (no
/// module as `self`); 0.30 does not. A definition of any other kind is
/// left alone, and the trick reports it.
fn check_convention(name: &str, old: &ffi::PyMethodDef) -> PyResult<()> {
    let expected = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;
    if old.ml_flags != expected {
        return Err(checked::error::<pyo3::exceptions::PyRuntimeError>(format!(
            "{name} has method flags {:#x}, not METH_FASTCALL | METH_KEYWORDS ({expected:#x})",
            old.ml_flags
        )));
    }
    Ok(())
}

/// A method or module function replaced by an entry point whose plain case
/// is a call with one positional argument and no keywords.
pub(crate) trait Unary {
    /// The replaced PyO3 method or function, for every other call, and
    /// the slot of the new definition in `DEFS`.
    const SLOW: (&'static PyOnceLock<Py<PyAny>>, usize);
    /// The plain case of a call with `arg` on `slf` (the object, or the
    /// module); `Outcome::Delegate` when it is not one.
    ///
    /// # Safety
    /// As for `enter`; `slf` is what CPython passed (for a method, an
    /// object the method descriptor checked to be of the type).
    unsafe fn route(py: Python<'_>, slf: Obj, arg: Arg<'_, '_>) -> Outcome<Obj>;
}

/// What CPython passes and takes: an object (borrowed or new, or NULL).
pub(crate) type Obj = *mut ffi::PyObject;
/// One argument, borrowed from CPython's argument array.
pub(crate) type Arg<'a, 'py> = pyo3::Borrowed<'a, 'py, PyAny>;

/// The entry point of `U`: a call with one positional argument and no
/// keywords goes to `U::route`; any other, and any call it delegates, to
/// `U::SLOW` with the arguments as received (with `slf` first for a
/// `METHOD`; a module function's `self` is the module).
///
/// # Safety
/// Called by CPython as a `METH_FASTCALL | METH_KEYWORDS` function: the
/// GIL held, `args` holding `nargs` borrowed objects and `kwnames` null or
/// a tuple.
unsafe extern "C" fn unary_entry<U: Unary, const METHOD: bool>(
    slf: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        enter(
            |py| match single(py, args, nargs, kwnames) {
                Some(arg) => U::route(py, slf, arg),
                None => Outcome::Delegate,
            },
            || delegate(U::SLOW.0, METHOD.then_some(slf), args, nargs, kwnames),
        )
    }
}

/// Replaces method `name` of `ty` by `U`'s entry point (its definition in
/// `DEFS`, copied from the old one's), keeping the old one in
/// `U::SLOW`.
pub(crate) fn replace_method<U: Unary>(ty: &Bound<'_, PyType>, name: &str) -> PyResult<()> {
    let py = ty.py();
    let old = super::own_descriptor(ty, name, std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type))?;
    // SAFETY: the entry of a PyO3 method is a method descriptor (checked)
    // whose PyMethodDef PyO3 keeps for the life of the process.
    unsafe {
        let old_def = *(*old.as_ptr().cast::<ffi::PyMethodDescrObject>()).d_method;
        check_convention(name, &old_def)?;
        let def = method_def(U::SLOW.1, old_def, unary_entry::<U, true>);
        super::set_descriptor(ty, name, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))?;
    }
    let _ = U::SLOW.0.set(py, old.unbind());
    Ok(())
}

/// Replaces module function `name` of `m` by `U`'s entry point (its
/// definition in `DEFS`, copied from the old one's), keeping the
/// old one in `U::SLOW`.
pub(crate) fn replace_function<U: Unary>(m: &Bound<'_, PyModule>, name: &str) -> PyResult<()> {
    let py = m.py();
    let old = m.getattr(name)?.cast_into::<PyCFunction>()?;
    // SAFETY: a PyO3 function's PyMethodDef lives for the process; the new
    // function object takes the module as self, as PyO3's does.
    unsafe {
        let old_def = *(*old.as_ptr().cast::<ffi::PyCFunctionObject>()).m_ml;
        check_convention(name, &old_def)?;
        let def = method_def(U::SLOW.1, old_def, unary_entry::<U, false>);
        let new = Bound::from_owned_ptr_or_err(
            py,
            ffi::PyCMethod_New(
                def,
                m.as_ptr(),
                m.getattr(checked::name!("__name__"))?.as_ptr(),
                std::ptr::null_mut(),
            ),
        )?;
        m.setattr(name, new)?;
    }
    let _ = U::SLOW.0.set(py, old.into_any().unbind());
    Ok(())
}
