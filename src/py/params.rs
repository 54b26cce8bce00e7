//! Pointers as ctypes arguments (DESIGN §3b): `p._as_parameter_`, and the
//! `from_param` of the `Pointer[T]` classes, so that `argtypes =
//! [Pointer[Uint8], Size]` checks what it is given.
//!
//! ctypes accepts an object with `_as_parameter_` where the declared type's
//! `from_param` accepts that attribute's value, and a declared `POINTER(T)`
//! accepts only a `POINTER(T)` instance, `c_char_p` only a `c_char_p` or a
//! `POINTER(c_char)` instance, `c_void_p` any ctypes pointer. So a Pointer's
//! `_as_parameter_` is a `POINTER(ctypes type of its element type)`:
//! `POINTER(c_char)` for Int8 and Uint8 (so `c_char_p` declarations take C
//! strings), `c_void_p` for Void. `rsalloc._struct.param_type` names the
//! class, once per element type.

use super::errors::IntoPy;
use super::pointer::Pointer;
use super::types::{self, TypeInfo};
use crate::core::types::Kind;
use crate::py::checked;
use crate::py::serialized::token;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;

/// The ctypes class a Pointer to `ty` passes as.
fn param_class<'py>(py: Python<'py>, ty: &'static TypeInfo) -> PyResult<&'py Bound<'py, PyAny>> {
    ty.param
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import(checked::name!("rsalloc._struct"))?
                    .call_method1(checked::name!("param_type"), (ty.class.bind(py),))?
                    .unbind(),
            )
        })
        .map(|c| c.bind(py))
}

/// `p._as_parameter_` of a Pointer the caller checked alive.
pub(crate) fn as_parameter<'py>(py: Python<'py>, p: &Pointer) -> PyResult<Bound<'py, PyAny>> {
    let cls = param_class(py, p.ty)?;
    if p.ty.kind == Kind::Void {
        let addr = match p.addr {
            0 => py.None().into_bound(py),
            a => checked::uint(py, a as u64)?,
        };
        return cls.call1((addr,));
    }
    let obj = cls.call0()?; // a NULL ctypes pointer
    if p.addr != 0 {
        store_address(&obj, p.addr)?;
    }
    Ok(obj)
}

/// Writes `addr` into a ctypes pointer instance's own buffer (public API:
/// the buffer protocol, not ctypes' object layout).
fn store_address(obj: &Bound<'_, PyAny>, addr: usize) -> PyResult<()> {
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: a simple writable buffer request into storage we own; released below.
    unsafe {
        if ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_WRITABLE) != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        let view = view.assume_init_mut();
        let fits = view.len as usize == std::mem::size_of::<usize>();
        if fits {
            view.buf.cast::<usize>().write_unaligned(addr);
        }
        ffi::PyBuffer_Release(view);
        if !fits {
            return Err(checked::error::<PyBufferError>(
                "a ctypes pointer of unexpected size",
            ));
        }
    }
    Ok(())
}

/// `Pointer[T].from_param(obj)`: what ctypes passes for an argument
/// declared `Pointer[T]`. A live Pointer whose element type is T (any
/// Pointer when T is Void, and a `Pointer[Void]` for any T, as C converts
/// `void *`), None as NULL; anything else TypeError, a dead Pointer
/// UseAfterFreeError (which ctypes reports as ArgumentError).
#[pyfunction]
pub fn _pointer_from_param<'py>(
    cls: &Bound<'py, PyAny>,
    obj: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    if obj.is_none() {
        return Ok(obj.clone());
    }
    let slot = types::lookup(cls)?;
    let target = slot.target.expect("Pointer[T] classes have a target");
    let Ok(p) = obj.cast::<Pointer>() else {
        return Err(checked::error::<PyTypeError>(format!(
            "{} takes a Pointer or None, not {}",
            slot.name,
            obj.get_type().name()?
        )));
    };
    let p = p.get();
    let same = std::ptr::eq(p.ty, target) || p.ty.class.is(&target.class);
    if !(same || target.kind == Kind::Void || p.ty.kind == Kind::Void) {
        return Err(checked::error::<PyTypeError>(format!(
            "{} takes a Pointer[{}], not a Pointer[{}]: cast it (p.cast({})) or declare Pointer[Void]",
            slot.name, target.name, p.ty.name, target.name
        )));
    }
    p.check_alive(token(py)).py(py, p)?;
    as_parameter(py, p)
}
