//! Python objects made with CPython's checked constructors: out of memory
//! is a MemoryError, never a panic. PyO3's own conversions of ints, floats
//! and strs panic when CPython returns NULL, and a panic when memory is
//! exhausted may not even get the memory for its message (an abort). The
//! leak list (`leak_check`, the exit report) and element reads
//! (`pointer/items.rs`, struct fields) are made here.

use crate::core::types::Value;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

fn own(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: `p` is a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, p) }
}

/// A number element's object: a new reference, or NULL with the exception
/// set (for the entry points, which hand CPython the pointer itself); None
/// for an address.
#[inline(always)]
pub(crate) fn number_ptr(v: Value) -> Option<*mut ffi::PyObject> {
    // SAFETY: each call takes a plain number and returns a new reference or NULL.
    Some(unsafe {
        match v {
            Value::Int(v) => ffi::PyLong_FromLongLong(v),
            Value::UInt(v) => ffi::PyLong_FromUnsignedLongLong(v),
            Value::Float(v) => ffi::PyFloat_FromDouble(v),
            Value::Bool(b) => ffi::Py_NewRef(if b { ffi::Py_True() } else { ffi::Py_False() }),
            Value::Addr(_) => return None,
        }
    })
}

/// The object of an element's value (an address as an int).
#[inline(always)]
pub(crate) fn value(py: Python<'_>, v: Value) -> PyResult<Py<PyAny>> {
    let obj = match v {
        // SAFETY: a plain constructor; NULL is handled by `own`.
        Value::Addr(a) => unsafe { ffi::PyLong_FromSize_t(a) },
        v => number_ptr(v).expect("a number"),
    };
    own(py, obj).map(Bound::unbind)
}

pub(crate) fn uint(py: Python<'_>, v: u64) -> PyResult<Bound<'_, PyAny>> {
    own(py, number_ptr(Value::UInt(v)).expect("a number"))
}

pub(crate) fn int(py: Python<'_>, v: i64) -> PyResult<Bound<'_, PyAny>> {
    own(py, number_ptr(Value::Int(v)).expect("a number"))
}

pub(crate) fn float(py: Python<'_>, v: f64) -> PyResult<Bound<'_, PyAny>> {
    own(py, number_ptr(Value::Float(v)).expect("a number"))
}

pub(crate) fn str<'py>(py: Python<'py>, s: &str) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `s` is valid UTF-8 of `s.len()` bytes (a str's length fits isize).
    own(py, unsafe {
        ffi::PyUnicode_FromStringAndSize(s.as_ptr().cast(), s.len() as ffi::Py_ssize_t)
    })
}

pub(crate) fn opt_str<'py>(py: Python<'py>, s: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    match s {
        Some(s) => str(py, s),
        None => Ok(py.None().into_bound(py)),
    }
}

pub(crate) fn tuple<'py, const N: usize>(
    py: Python<'py>,
    items: [Bound<'py, PyAny>; N],
) -> PyResult<Bound<'py, PyTuple>> {
    // SAFETY: a new tuple of N slots, each set once; SetItem steals the
    // reference it is given.
    unsafe {
        let t = own(py, ffi::PyTuple_New(N as ffi::Py_ssize_t))?;
        for (i, item) in items.into_iter().enumerate() {
            ffi::PyTuple_SetItem(t.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr());
        }
        Ok(t.cast_into_unchecked())
    }
}

/// A new list of `len` empty (NULL) slots, for the caller to fill; a list
/// with NULL slots is valid to drop.
pub(crate) fn empty_list(py: Python<'_>, len: usize) -> PyResult<Bound<'_, PyList>> {
    // SAFETY: PyList_New returns a new list or NULL with the exception set.
    own(py, unsafe { ffi::PyList_New(len as ffi::Py_ssize_t) })
        // SAFETY: PyList_New made a list.
        .map(|l| unsafe { l.cast_into_unchecked() })
}

pub(crate) fn list<'py>(
    py: Python<'py>,
    items: impl ExactSizeIterator<Item = Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let l = empty_list(py, items.len())?;
    for (i, item) in items.enumerate() {
        // SAFETY: each slot of the new list set once (an iterator that
        // yields fewer leaves NULL slots, which lists allow until set);
        // SetItem steals the reference.
        unsafe { ffi::PyList_SetItem(l.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr()) };
    }
    Ok(l)
}
