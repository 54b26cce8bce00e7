//! Python values in and out of native slots: the kind and range checks of
//! DESIGN §2 (out of range → OverflowError, wrong kind → TypeError), and the
//! integer arguments of the Pointer API.

use super::errors::IntoPy;
use super::pointer::Pointer;
use super::types::TypeInfo;
use crate::core::types::{Kind, Value};
use crate::py::checked;
use crate::py::serialized::token;
use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyFloat, PyInt, PyType};
use std::fmt;

/// Converts a Python value for a slot of `kind`, checking kind and range.
pub(crate) fn to_value(kind: Kind, ty: &TypeInfo, v: &Bound<'_, PyAny>) -> PyResult<Value> {
    let out_of_range = |shown: &dyn fmt::Display| {
        checked::error::<PyOverflowError>(format!("{shown} is out of range for {}", ty.name))
    };
    match kind {
        Kind::F32 | Kind::F64 => {
            if !(v.is_instance_of::<PyFloat>() || v.is_instance_of::<PyInt>() || has_float(v)) {
                return Err(wrong_kind(ty, v, "a float or an int"));
            }
            let f: f64 = v.extract()?;
            if kind == Kind::F32 && f.is_finite() && (f as f32).is_infinite() {
                return Err(out_of_range(&f));
            }
            Ok(Value::Float(f))
        }
        Kind::Bool => {
            if let Ok(b) = v.cast::<PyBool>() {
                return Ok(Value::Bool(b.is_true()));
            }
            if let Some(b) = numpy_bool(v) {
                return Ok(Value::Bool(b));
            }
            if v.is_instance_of::<PyFloat>() {
                return Err(wrong_kind(ty, v, "a bool"));
            }
            match v.extract::<i64>() {
                Ok(0) => Ok(Value::Bool(false)),
                Ok(1) => Ok(Value::Bool(true)),
                Ok(i) => Err(out_of_range(&i)),
                Err(_) => Err(wrong_kind(ty, v, "a bool")),
            }
        }
        Kind::Ptr => {
            if v.is_none() {
                return Ok(Value::Addr(0));
            }
            if let Ok(p) = v.cast::<Pointer>() {
                let p = p.get();
                p.check_alive(token(v.py())).py(v.py(), p)?;
                return Ok(Value::Addr(p.addr));
            }
            if v.is_instance_of::<PyInt>() {
                return v
                    .extract::<usize>()
                    .map(Value::Addr)
                    .map_err(|_| out_of_range(v));
            }
            Err(wrong_kind(ty, v, "a Pointer, an int address or None"))
        }
        _ => {
            let (lo, hi) = kind.int_range().expect("integer kind");
            if let Some(i) = exact_small_int(v) {
                if (i as i128) < lo || (i as i128) > hi {
                    return Err(out_of_range(&i));
                }
                return Ok(if hi > i64::MAX as i128 {
                    Value::UInt(i as u64)
                } else {
                    Value::Int(i)
                });
            }
            if v.is_instance_of::<PyFloat>() {
                return Err(wrong_kind(ty, v, "an int"));
            }
            if let Some(b) = numpy_bool(v) {
                return Ok(Value::Int(i64::from(b)));
            }
            if hi > i64::MAX as i128 {
                let u = v
                    .extract::<u64>()
                    .map_err(|e| int_error(e, v, &out_of_range))?;
                return Ok(Value::UInt(u));
            }
            let i = v
                .extract::<i64>()
                .map_err(|e| int_error(e, v, &out_of_range))?;
            if (i as i128) < lo || (i as i128) > hi {
                return Err(out_of_range(&i));
            }
            Ok(Value::Int(i))
        }
    }
}

/// The value of an exact int in range of integer `kind`, or of an exact
/// float for a floating one, converted without running Python code; None
/// for anything else (which `to_value` then converts or refuses).
#[inline(always)]
pub(crate) fn plain_number(kind: Kind, v: &Bound<'_, PyAny>) -> Option<Value> {
    if let Some((lo, hi)) = kind.int_range() {
        // Unsigned slots take the same bits (Kind::write).
        return exact_small_int(v)
            .filter(|n| (lo..=hi).contains(&(*n as i128)))
            .map(Value::Int);
    }
    if matches!(kind, Kind::F32 | Kind::F64) && v.is_exact_instance_of::<PyFloat>() {
        // SAFETY: an exact float.
        let f = unsafe { ffi::PyFloat_AS_DOUBLE(v.as_ptr()) };
        if kind == Kind::F32 && f.is_finite() && (f as f32).is_infinite() {
            return None;
        }
        return Some(Value::Float(f));
    }
    None
}

/// The value of an exact `int` that fits in i64, without PyO3's generic path
/// (element access is the hottest path there is).
#[inline]
pub(crate) fn exact_small_int(v: &Bound<'_, PyAny>) -> Option<i64> {
    if !v.is_exact_instance_of::<PyInt>() {
        return None;
    }
    #[cfg(not(any(Py_3_12, PyPy, GraalPy, Py_LIMITED_API)))]
    if let Some(i) = crate::py::cpython::int_digits::value(v) {
        return Some(i);
    }
    let mut overflow = 0;
    // SAFETY: v is an exact int, for which this call cannot fail.
    let i = unsafe { ffi::PyLong_AsLongLongAndOverflow(v.as_ptr(), &mut overflow) };
    (overflow == 0).then_some(i)
}

/// The value of a numpy bool, which, unlike Python's, is no int (it has no
/// `__index__`) but is stored as Python's bool is. None for anything else,
/// and before numpy is imported (no numpy bool exists then).
fn numpy_bool(v: &Bound<'_, PyAny>) -> Option<bool> {
    static NP_BOOL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let py = v.py();
    let cls = match NP_BOOL.get(py) {
        Some(c) => c,
        None => {
            let modules = py
                .import(checked::name!("sys"))
                .ok()?
                .getattr(checked::name!("modules"))
                .ok()?;
            let np = modules.get_item(checked::name!("numpy")).ok()?;
            let cls = np
                .getattr(checked::name!("bool_"))
                .ok()?
                .cast_into::<PyType>()
                .ok()?;
            NP_BOOL.get_or_init(py, || cls.unbind())
        }
    };
    // Exact: a subclass could define its own conversions.
    v.is_exact_instance(cls.bind(py))
        .then(|| v.is_truthy().ok())
        .flatten()
}

fn has_float(v: &Bound<'_, PyAny>) -> bool {
    !v.is_instance_of::<pyo3::types::PyString>()
        && v.hasattr(checked::name!("__float__")).unwrap_or(false)
}

fn int_error(
    e: PyErr,
    v: &Bound<'_, PyAny>,
    out_of_range: &dyn Fn(&dyn fmt::Display) -> PyErr,
) -> PyErr {
    if e.is_instance_of::<PyOverflowError>(v.py()) {
        out_of_range(v)
    } else {
        e
    }
}

fn wrong_kind(ty: &TypeInfo, v: &Bound<'_, PyAny>, wanted: &str) -> PyErr {
    checked::error::<PyTypeError>(format!(
        "{} takes {wanted}, not {}",
        ty.name,
        v.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    ))
}
