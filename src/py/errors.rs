//! The one place core errors become Python exceptions.

use crate::core::error::{Error, Raised};
use crate::py::checked;
use pyo3::exceptions::{PyBufferError, PyIndexError, PyMemoryError, PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use std::fmt;

macro_rules! py_errors {
    ($($name:ident => $class:literal),* $(,)?) => {
        $(
            #[allow(non_upper_case_globals)]
            static $name: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        )*
        /// The rsalloc exception classes, imported once from `rsalloc._errors`.
        #[derive(Clone, Copy)]
        pub enum Exc { $($name),* }
        impl Exc {
            pub fn class(self, py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
                match self { $(Exc::$name => checked::imported(&$name, py, checked::name!("rsalloc._errors"), checked::name!($class))),* }
            }
            pub fn err(self, py: Python<'_>, msg: String) -> PyErr {
                match self.class(py) {
                    Ok(cls) => checked::error_of(py, cls, &msg),
                    Err(e) => e,
                }
            }
        }
    };
}

py_errors! {
    UseAfterFree => "UseAfterFreeError",
    DoubleFree => "DoubleFreeError",
    Ownership => "OwnershipError",
    NullPointer => "NullPointerError",
    ArenaClosed => "ArenaClosedError",
    Leak => "LeakError",
    HeapCorruption => "HeapCorruptionError",
}

/// Maps a core error to its exception; `subject` names the pointer or the
/// request ("Pointer[Int32] at 0x… from malloc"), appended to the message.
pub fn to_py(py: Python<'_>, e: Error, subject: &dyn std::fmt::Display) -> PyErr {
    if let Error::Raised(raised) = e {
        // Set again and taken at once: nothing runs in between.
        raised.reraise();
        return PyErr::fetch(py);
    }
    let msg = format!("{e}: {subject}");
    match e {
        Error::NegativeSize | Error::BadAlignment(_) => checked::error::<PyValueError>(msg),
        Error::SizeOverflow => checked::error::<PyOverflowError>(msg),
        Error::OutOfMemory(_) | Error::OverLimit(_) => checked::error::<PyMemoryError>(msg),
        Error::UseAfterFree(_) => Exc::UseAfterFree.err(py, msg),
        Error::DoubleFree(_) => Exc::DoubleFree.err(py, msg),
        Error::Ownership(_) => Exc::Ownership.err(py, msg),
        Error::NullPointer => Exc::NullPointer.err(py, msg),
        Error::OutOfBounds { .. } | Error::RangeOutOfBounds { .. } => {
            checked::error::<PyIndexError>(msg)
        }
        Error::ArenaClosed => Exc::ArenaClosed.err(py, msg),
        Error::HeapCorruption(_) => Exc::HeapCorruption.err(py, msg),
        Error::Exported | Error::TooManyExports => checked::error::<PyBufferError>(msg),
        Error::Unsupported(_) => checked::error::<pyo3::exceptions::PyTypeError>(msg),
        Error::BadBlock(_) => checked::error::<PyValueError>(msg),
        Error::Raised(_) => unreachable!("re-raised above"),
    }
}

/// A Python exception carried through the core ([`Error::Raised`]): raised
/// by a Python-defined allocator's function, re-raised as it was.
#[derive(Debug)]
struct PyRaised(PyErr);

impl fmt::Display for PyRaised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // str() of the exception is Python code, which may fail (out of
        // memory): a Display that failed would make `format!` panic.
        let text = Python::attach(|py| {
            let v = self.0.value(py).str().ok()?;
            v.to_str().ok().map(str::to_owned)
        });
        f.write_str(text.as_deref().unwrap_or("a Python exception"))
    }
}

impl Raised for PyRaised {
    fn reraise(self: Box<Self>) {
        Python::attach(|py| self.0.restore(py));
    }
}

/// `e`, raised by the caller's Python code, as a core error that gives it
/// back unchanged (`to_py`).
pub fn raised(e: PyErr) -> Error {
    Error::Raised(Box::new(PyRaised(e)))
}

/// Core results in a Python context: `.py(py, &subject)?`.
pub trait IntoPy<T> {
    fn py(self, py: Python<'_>, subject: &dyn std::fmt::Display) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    #[inline]
    fn py(self, py: Python<'_>, subject: &dyn std::fmt::Display) -> PyResult<T> {
        self.map_err(|e| to_py(py, e, subject))
    }
}
