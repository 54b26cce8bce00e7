//! Reading a CPython int of one or two digits straight from the object:
//! `PyLong_AsLongLongAndOverflow` costs a fifth of an element read
//! (BENCHMARKS.md). Up to 3.11 an int is a variable-size object whose
//! `ob_size` is its signed digit count, followed by its digits, least
//! significant first. The digit width is a build option of CPython (15 or
//! 30 bits), checked once at import by the fence's probe (`check`); until
//! then, or when it is not 30 bits in 4 bytes, every int takes the C API.
//! Compiled only for CPython up to 3.11 (3.12 changed the layout).

use crate::py::checked;
use pyo3::ffi;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static READY: AtomicBool = AtomicBool::new(false);

/// Enables `value` if this interpreter's ints have 30-bit digits in u32s;
/// why not otherwise.
pub fn check(py: Python<'_>) -> Result<(), String> {
    let info = py
        .import(checked::name!("sys"))
        .and_then(|s| s.getattr(checked::name!("int_info")))
        .map_err(|e| e.to_string())?;
    let field = |name: &str| -> Result<usize, String> {
        info.getattr(name)
            .and_then(|v| v.extract())
            .map_err(|e| e.to_string())
    };
    let (bits, size) = (field("bits_per_digit")?, field("sizeof_digit")?);
    if bits != 30 || size != 4 {
        return Err(format!(
            "ints have {bits}-bit digits in {size} bytes, not 30 in 4"
        ));
    }
    READY.store(true, Relaxed);
    Ok(())
}

/// The value of an exact int of at most two digits (|v| < 2**60).
#[inline]
pub fn value(v: &Bound<'_, PyAny>) -> Option<i64> {
    if !READY.load(Relaxed) {
        return None;
    }
    // SAFETY: v is an exact int (the caller checked), laid out as a
    // PyVarObject followed by `|ob_size|` u32 digits (checked at import).
    unsafe {
        let o = v.as_ptr();
        let size = (*o.cast::<ffi::PyVarObject>()).ob_size;
        let d = o
            .cast::<u8>()
            .add(std::mem::size_of::<ffi::PyVarObject>())
            .cast::<u32>();
        let magnitude = match size.unsigned_abs() {
            0 => return Some(0),
            1 => i64::from(*d),
            2 => i64::from(*d) | i64::from(*d.add(1)) << 30,
            _ => return None,
        };
        Some(if size < 0 { -magnitude } else { magnitude })
    }
}
