//! `to_native_utf8` / `to_native_utf16`: Python strings as NUL-terminated C strings.

use super::allocator::{block_object, discard, malloc, Allocator};
use super::arena::Arena;
use super::errors::IntoPy;
use super::pointer::Pointer;
use super::types::{self, TypeInfo};
use crate::core::layout::Request;
use crate::py::args::StrArg;
use crate::py::checked;
use crate::py::serialized::token;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// Allocates `nbytes` for a `ty` string from any allocator object: an
/// rsalloc Allocator or Arena directly, anything else through its `allocate`
/// method. True with a block rsalloc made just now (nobody else's yet).
fn allocate_from<'py>(
    py: Python<'py>,
    allocator: Option<&Bound<'py, PyAny>>,
    ty: &'static TypeInfo,
    nbytes: usize,
) -> PyResult<(Bound<'py, Pointer>, bool)> {
    let default;
    let allocator = match allocator {
        Some(a) => a,
        None => {
            default = malloc(py)?.into_any();
            &default
        }
    };
    let req = Request {
        size: nbytes,
        align: ty.align,
    };
    if let Ok(a) = allocator.cast::<Allocator>() {
        return Ok((block_object(py, a.get().new_pointer(py, ty, req)?)?, true));
    }
    if let Ok(a) = allocator.cast::<Arena>() {
        return Ok((
            block_object(py, a.get().new_pointer(a.as_any(), ty, req)?)?,
            true,
        ));
    }
    let allocate = allocator.getattr(checked::name!("allocate")).map_err(|_| {
        checked::error::<PyTypeError>(format!(
            "allocator must be an rsalloc allocator, not {}",
            allocator
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let raw = allocate.call1((checked::uint(py, nbytes as u64)?,))?;
    let raw = raw
        .cast_into::<Pointer>()
        .map_err(|_| checked::error::<PyTypeError>("allocate() did not return a Pointer"))?;
    let cls = ty.class.bind(py);
    let p = raw
        .call_method1(checked::name!("cast"), (cls,))?
        .cast_into::<Pointer>()?;
    Ok((p, false))
}

/// Copies the string and its NUL into `p`, checked: an allocator written in
/// Python may have handed back a smaller, foreign or dead Pointer.
fn write_with_nul(py: Python<'_>, p: &Pointer, bytes: &[u8], nul: usize) -> PyResult<()> {
    let _held = p.access(token(py)).py(py, p)?;
    let at = p.byte_range(0, bytes.len() + nul).py(py, p)?;
    // SAFETY: [at, at + len + nul) was checked just now.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            std::ptr::with_exposed_provenance_mut::<u8>(at),
            bytes.len(),
        );
        std::ptr::write_bytes(
            std::ptr::with_exposed_provenance_mut::<u8>(at + bytes.len()),
            0,
            nul,
        );
    }
    Ok(())
}

/// `str.encode(s, encoding, errors)`: the codec itself, never a str
/// subclass's `encode` (which could return anything).
fn encode<'py>(
    s: &Bound<'py, PyString>,
    encoding: &str,
    errors: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let py = s.py();
    Ok(py
        .get_type::<PyString>()
        .call_method1(
            checked::name!("encode"),
            (s, checked::str(py, encoding)?, checked::str(py, errors)?),
        )?
        .cast_into::<PyBytes>()?)
}

/// Copies the string into `p`; on failure a block rsalloc made for it
/// (`fresh`: nobody else's yet) goes back, and the error is raised. What a
/// duck-typed allocator handed back is left to it.
fn fill<'py>(
    py: Python<'py>,
    (p, fresh): (Bound<'py, Pointer>, bool),
    bytes: &[u8],
    nul: usize,
) -> PyResult<Bound<'py, Pointer>> {
    if let Err(e) = write_with_nul(py, p.get(), bytes, nul) {
        if fresh {
            discard(py, p.get());
        }
        return Err(e);
    }
    Ok(p)
}

fn no_nul(has_nul: bool) -> PyResult<()> {
    if has_nul {
        return Err(checked::error::<PyValueError>(
            "embedded NUL character: C would cut the string there",
        ));
    }
    Ok(())
}

/// A NUL-terminated UTF-8 copy of `s` (count = encoded length + 1).
#[pyfunction]
#[pyo3(signature = (s, allocator=None, *, errors=StrArg::Default), text_signature = "(s, allocator=None, *, errors='strict')")]
pub fn to_native_utf8<'py>(
    py: Python<'py>,
    s: &Bound<'py, PyAny>,
    allocator: Option<&Bound<'py, PyAny>>,
    errors: StrArg,
) -> PyResult<Bound<'py, Pointer>> {
    let s = checked::cast::<PyString>(s, "s")?;
    let errors = errors.get("strict")?;
    let errors = errors.as_ref();
    let encoded;
    let bytes: &[u8] = if errors == "strict" {
        s.to_str()?.as_bytes()
    } else {
        encoded = encode(s, "utf-8", errors)?;
        encoded.as_bytes()
    };
    no_nul(bytes.contains(&0))?; // memchr: runs at memory speed
    let p = allocate_from(py, allocator, types::uint8(py)?, bytes.len() + 1)?;
    fill(py, p, bytes, 1)
}

/// A NUL-terminated UTF-16 copy of `s` in native byte order (count = code units + 1).
#[pyfunction]
#[pyo3(signature = (s, allocator=None, *, errors=StrArg::Default), text_signature = "(s, allocator=None, *, errors='strict')")]
pub fn to_native_utf16<'py>(
    py: Python<'py>,
    s: &Bound<'py, PyAny>,
    allocator: Option<&Bound<'py, PyAny>>,
    errors: StrArg,
) -> PyResult<Bound<'py, Pointer>> {
    let s = checked::cast::<PyString>(s, "s")?;
    let errors = errors.get("strict")?;
    let errors = errors.as_ref();
    let encoding = if cfg!(target_endian = "little") {
        "utf-16-le"
    } else {
        "utf-16-be"
    };
    let encoded = encode(s, encoding, errors)?;
    let bytes = encoded.as_bytes();
    if bytes.len() % 2 != 0 {
        return Err(checked::error::<PyValueError>(format!(
            "the {encoding} codec returned {} bytes: not whole UTF-16 code units",
            bytes.len()
        )));
    }
    no_nul(bytes.chunks(2).any(|u| u == [0, 0]))?;
    let p = allocate_from(py, allocator, types::uint16(py)?, bytes.len() + 2)?;
    fill(py, p, bytes, 2)
}
