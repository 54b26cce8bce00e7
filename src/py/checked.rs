//! Python objects made with CPython's checked constructors: out of memory
//! is a MemoryError, never a panic. PyO3's own conversions of ints, floats
//! and strs panic when CPython returns NULL, and a panic when memory is
//! exhausted may not even get the memory for its message (an abort). So
//! every object the bindings hand Python is made here:
//!
//! - exceptions, made at once by [`error`] / [`error_of`] (PyO3's
//!   `new_err` makes its message only when the error is raised, where a
//!   failure is that abort; clippy.toml refuses `new_err`);
//! - returned values, as [`Int`] and [`Text`] (scripts/check_conversions.py
//!   refuses a binding that returns a Rust number, str or tuple for PyO3
//!   to convert);
//! - attribute and module names, as [`name!`] (interned once, checked);
//! - the leak list (`leak_check`, the exit report) and element reads
//!   (`pointer/items.rs`, struct fields).
//!
//! The fault-injection suite (tests/test_fault_injection.py) fails each
//! of CPython's allocations in turn under every binding and checks the
//! result is a MemoryError.

use crate::core::types::Value;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyTuple, PyType};
use pyo3::PyTypeInfo;

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

/// An exception of class `ty` with message `msg`, made now; when making it
/// fails, the error of that failure (a MemoryError).
pub(crate) fn error_of(py: Python<'_>, ty: &Bound<'_, PyType>, msg: &str) -> PyErr {
    match str(py, msg) {
        Ok(m) => error_with(py, ty, &m),
        Err(e) => e,
    }
}

/// `ty(arg)`, made now; when making it fails, the error of that failure.
pub(crate) fn error_with(py: Python<'_>, ty: &Bound<'_, PyType>, arg: &Bound<'_, PyAny>) -> PyErr {
    // SAFETY: a call with one argument, both live; a new reference or NULL
    // with the exception set.
    match own(py, unsafe {
        ffi::PyObject_CallOneArg(ty.as_ptr(), arg.as_ptr())
    }) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// A MemoryError with no message: CPython's own, which needs no memory.
pub(crate) fn no_memory() -> PyErr {
    Python::attach(|py| {
        // SAFETY: sets the MemoryError (CPython keeps instances for this).
        unsafe { ffi::PyErr_NoMemory() };
        PyErr::fetch(py)
    })
}

/// An exception of the built-in class `T` with message `msg`, made now
/// ([`error_of`]): what `T::new_err(msg)` would raise, never a panic.
pub(crate) fn error<T: PyTypeInfo>(msg: impl AsRef<str>) -> PyErr {
    // Every binding runs attached: attach only reads the thread's state.
    Python::attach(|py| error_of(py, &T::type_object(py), msg.as_ref()))
}

/// A literal attribute, module or key name as an interned str, made once
/// and checked: what `name!("x")` gives `getattr`, `call_method1`,
/// `import` and `set_item` in place of a `&str`, which PyO3 would turn into
/// a str with its panicking constructor on every call.
#[derive(Clone, Copy)]
pub struct Name {
    cell: &'static PyOnceLock<Py<PyString>>,
    text: &'static str,
}

impl Name {
    pub const fn new(cell: &'static PyOnceLock<Py<PyString>>, text: &'static str) -> Self {
        Name { cell, text }
    }

    /// The interned str, made on first use.
    pub fn get<'py>(self, py: Python<'py>) -> PyResult<&'static Py<PyString>> {
        self.cell.get_or_try_init(py, || {
            let mut p = str(py, self.text)?.into_ptr();
            // SAFETY: `p` is a new reference to an exact str, which
            // interning may replace by another reference (it cannot fail).
            unsafe {
                ffi::PyUnicode_InternInPlace(&mut p);
                Ok(Bound::from_owned_ptr(py, p)
                    .cast_into_unchecked::<PyString>()
                    .unbind())
            }
        })
    }
}

impl<'py> IntoPyObject<'py> for Name {
    type Target = PyString;
    type Output = Bound<'py, PyString>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        self.get(py).map(|n| n.bind(py).clone())
    }
}

/// `name!("literal")`: the literal as a checked, interned [`Name`].
macro_rules! name {
    ($s:literal) => {{
        static NAME: pyo3::sync::PyOnceLock<pyo3::Py<pyo3::types::PyString>> =
            pyo3::sync::PyOnceLock::new();
        $crate::py::checked::Name::new(&NAME, $s)
    }};
}
pub(crate) use name;

/// A returned int, made with CPython's checked constructor.
pub struct Int(pub u64);

impl From<usize> for Int {
    fn from(v: usize) -> Self {
        Int(v as u64)
    }
}

impl<'py> IntoPyObject<'py> for Int {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        uint(py, self.0)
    }
}

/// A returned str, made with CPython's checked constructor.
pub struct Text<S: AsRef<str>>(pub S);

impl<'py, S: AsRef<str>> IntoPyObject<'py> for Text<S> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        str(py, self.0.as_ref())
    }
}

/// A new empty dict.
pub(crate) fn dict(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // SAFETY: PyDict_New returns a new dict or NULL with the exception set;
    // a dict it made is a dict.
    own(py, unsafe { ffi::PyDict_New() }).map(|d| unsafe { d.cast_into_unchecked() })
}

/// A new bytes object of `b`'s bytes.
pub(crate) fn bytes<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `b` is `b.len()` readable bytes (a slice's length fits isize).
    own(py, unsafe {
        ffi::PyBytes_FromStringAndSize(b.as_ptr().cast(), b.len() as ffi::Py_ssize_t)
    })
}

/// True or False (immortal-ish singletons: nothing is allocated).
pub(crate) fn bool(py: Python<'_>, b: bool) -> Bound<'_, PyAny> {
    pyo3::types::PyBool::new(py, b).to_owned().into_any()
}

/// `module.attr`, imported once into `cell` (PyOnceLock::import, with
/// checked names).
pub(crate) fn imported<'a, 'py, T: pyo3::type_object::PyTypeCheck>(
    cell: &'a PyOnceLock<Py<T>>,
    py: Python<'py>,
    module: Name,
    attr: Name,
) -> PyResult<&'a Bound<'py, T>> {
    cell.get_or_try_init(py, || {
        let v = py.import(module)?.getattr(attr)?;
        Ok::<_, PyErr>(v.cast_into::<T>()?.unbind())
    })
    .map(|v| v.bind(py))
}

/// Argument `what` as a `T`: a TypeError made here, checked, when it is not
/// one. (A `&Bound<T>` parameter has PyO3 cast it, and PyO3's argument
/// error makes its message only when raised: out of memory, an abort.)
pub(crate) fn cast<'a, 'py, T: PyTypeInfo>(
    v: &'a Bound<'py, PyAny>,
    what: &str,
) -> PyResult<&'a Bound<'py, T>> {
    v.cast::<T>().map_err(|_| {
        let name = |t: Bound<'_, PyType>| t.name().map(|n| n.to_string()).unwrap_or_default();
        let (got, want) = (name(v.get_type()), name(T::type_object(v.py())));
        error::<pyo3::exceptions::PyTypeError>(format!(
            "argument '{what}': '{got}' object is not a {want}"
        ))
    })
}
