//! Argument parsing for every binding: sizes, counts, alignments, addresses
//! and limits as Python passes them, and the validated `Request` they make.
//! Depends on the core and on `types` only, so that any binding file can
//! use it.

use super::errors::{to_py, IntoPy};
use super::types::{self, TypeInfo};
use crate::core::budget;
use crate::core::error::Error;
use crate::core::layout::{self, Request};
use crate::core::types::Kind;
use crate::py::checked;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

/// Describes a request in error messages.
pub(crate) struct Asked<'a>(
    pub &'a dyn std::fmt::Display,
    pub &'a TypeInfo,
    pub &'a dyn std::fmt::Display,
);

impl std::fmt::Display for Asked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({}, {})", self.0, self.1.name, self.2)
    }
}

/// A size, count or alignment argument: any Python int, classified exactly
/// (negative, too big for isize, fine) up to 128 bits; anything else is
/// TypeError. Small ints take a fast path that skips the 128-bit conversion.
///
/// PyO3 always gets Ok: the conversion's error waits in the value for
/// [`SizeArg::get`] in the method's body. An argument error PyO3 sees is
/// rewritten by it ("argument 'count': ...") into an error whose message it
/// makes only when raised, and out of memory that is an abort
/// (src/py/checked.rs).
pub struct SizeArg(pub Result<i128, PyErr>);

impl SizeArg {
    pub const fn of(v: i128) -> Self {
        SizeArg(Ok(v))
    }

    /// The int, or its conversion's error (a normalized TypeError, or the
    /// MemoryError of making it).
    #[inline]
    pub fn get(self) -> PyResult<i128> {
        self.0
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for SizeArg {
    type Error = std::convert::Infallible;

    #[inline]
    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> Result<Self, Self::Error> {
        Ok(SizeArg(int128(&obj)))
    }
}

/// Any int (or `__index__`) as i128 (beyond 128 bits, OverflowError).
/// Errors are CPython's own, fetched (normalized), or made checked.
#[inline]
pub fn int128(obj: &Bound<'_, PyAny>) -> PyResult<i128> {
    if obj.is_exact_instance_of::<pyo3::types::PyInt>() {
        let mut overflow = 0;
        // SAFETY: obj is an exact int; this call cannot fail otherwise.
        let v = unsafe { pyo3::ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
        if overflow == 0 {
            return Ok(v as i128);
        }
    }
    // SAFETY: a new reference or NULL with the exception set.
    let index =
        unsafe { Bound::from_owned_ptr_or_err(obj.py(), pyo3::ffi::PyNumber_Index(obj.as_ptr()))? };
    let mut overflow = 0;
    // SAFETY: `index` is an int; this call cannot fail otherwise.
    let v = unsafe { pyo3::ffi::PyLong_AsLongLongAndOverflow(index.as_ptr(), &mut overflow) };
    Ok(match overflow {
        0 => v as i128,
        // The only error of an int's i128 conversion (more than 128 bits)
        // is one PyO3 makes lazily: made here instead.
        _ => index
            .extract::<i128>()
            .map_err(|_| checked::error::<PyOverflowError>("Python int larger than 128 bits"))?,
    })
}

fn align_arg(v: Option<i128>) -> PyResult<Option<u128>> {
    match v {
        None => Ok(None),
        Some(a) if a <= 0 => Err(checked::error::<PyValueError>(format!(
            "alignment {a} is not a power of two"
        ))),
        Some(a) => Ok(Some(a as u128)),
    }
}

/// A validated request for `count` elements of `ty` from the allocator `who`.
pub(crate) fn request(
    py: Python<'_>,
    who: &dyn std::fmt::Display,
    ty: &'static TypeInfo,
    count: i128,
    alignment: Option<i128>,
) -> PyResult<Request> {
    if !ty.has_size() {
        return Err(checked::error::<PyTypeError>(format!(
            "{} has no size: allocate bytes or a sized type",
            ty.name
        )));
    }
    let align = align_arg(alignment)?;
    layout::array(count, ty.size, ty.align, align).py(py, &Asked(who, ty, &count))
}

/// The arguments of `a(T=Uint8, count=1, *, alignment=None)`.
pub(crate) fn call_request(
    py: Python<'_>,
    who: &dyn std::fmt::Display,
    r#type: Option<&Bound<'_, PyAny>>,
    count: i128,
    alignment: Option<i128>,
) -> PyResult<(&'static TypeInfo, Request)> {
    let ty = match r#type {
        Some(t) => types::lookup(t)?,
        None => types::uint8(py)?,
    };
    Ok((ty, request(py, who, ty, count, alignment)?))
}

/// The arguments of `a.allocate(nbytes, *, alignment=None)`.
pub(crate) fn bytes_request(
    py: Python<'_>,
    who: &dyn std::fmt::Display,
    nbytes: i128,
    alignment: Option<i128>,
) -> PyResult<(&'static TypeInfo, Request)> {
    if let (None, Ok(n)) = (alignment, i64::try_from(nbytes)) {
        return plain_bytes_request(py, who, n);
    }
    let ty = types::uint8(py)?;
    Ok((ty, request(py, who, ty, nbytes, alignment)?))
}

/// [`bytes_request`] of `nbytes` that fit an i64, without an alignment: the
/// fast entry points' case, inlined into them.
#[inline]
pub(crate) fn plain_bytes_request(
    py: Python<'_>,
    who: &dyn std::fmt::Display,
    nbytes: i64,
) -> PyResult<(&'static TypeInfo, Request)> {
    let ty = types::uint8(py)?;
    Ok((ty, layout::bytes(nbytes).py(py, &Asked(who, ty, &nbytes))?))
}

/// The element type and request of `a.realloc(p, count)`: p's type (bytes
/// for a Void pointer) at p's block alignment.
pub(crate) fn realloc_request(
    py: Python<'_>,
    who: &dyn std::fmt::Display,
    pointee: &'static TypeInfo,
    count: i128,
) -> PyResult<(&'static TypeInfo, Request)> {
    let ty = if pointee.has_size() {
        pointee
    } else {
        types::uint8(py)?
    };
    Ok((ty, request(py, who, ty, count, None)?))
}

/// The address, element type and request of `a.adopt(address, T=Uint8,
/// count=None)`. Without a count, an Int8/Uint8 block is a C string: its
/// length with the NUL (strlen + 1); any other type needs one (TypeError).
/// `address` None is NULL (refused by the core: NullPointerError).
pub(crate) fn adopt_request(
    py: Python<'_>,
    who: &dyn std::fmt::Display,
    address: &Bound<'_, PyAny>,
    r#type: Option<&Bound<'_, PyAny>>,
    count: Option<SizeArg>,
) -> PyResult<(usize, &'static TypeInfo, Request)> {
    let addr = address_arg(address)?;
    let ty = match r#type {
        Some(t) if !t.is_none() => types::lookup(t)?,
        _ => types::uint8(py)?,
    };
    let count = match count {
        Some(c) => c.get()?,
        None if matches!(ty.kind, Kind::U8 | Kind::I8) => {
            if addr == 0 {
                return Err(to_py(py, Error::NullPointer, &Asked(&"adopt", ty, &"NULL")));
            }
            // SAFETY: the caller vouches that `address` is a C string of
            // this allocator's (the documented contract of a count-less adopt).
            (unsafe { libc::strlen(std::ptr::with_exposed_provenance::<libc::c_char>(addr)) } + 1)
                as i128
        }
        None => {
            return Err(checked::error::<PyTypeError>(format!(
                "adopt() of {} needs a count (only an Int8/Uint8 C string has a length of its own)",
                ty.name
            )))
        }
    };
    let sized = if ty.has_size() { ty } else { types::uint8(py)? };
    let req = request(py, who, sized, count, None)?;
    Ok((
        addr,
        ty,
        Request {
            align: ty.align.max(1),
            ..req
        },
    ))
}

/// A non-negative int argument as usize (negative: ValueError; too big: OverflowError).
pub fn usize_arg(v: &Bound<'_, PyAny>, what: &str) -> PyResult<usize> {
    let i = int128(v)?;
    if i < 0 {
        return Err(checked::error::<PyValueError>(format!(
            "{what} must not be negative, got {i}"
        )));
    }
    usize::try_from(i)
        .map_err(|_| checked::error::<PyOverflowError>(format!("{what} {i} is too large")))
}

/// An address argument: a non-negative int, or None for NULL (as ctypes
/// gives a `c_void_p` result of NULL).
pub fn address_arg(v: &Bound<'_, PyAny>) -> PyResult<usize> {
    if v.is_none() {
        return Ok(0);
    }
    usize_arg(v, "address")
}

/// A byte limit argument: an int (or an object with `__index__`, not a
/// bool) from 0 to 2**64 - 2; `what` names it in errors.
pub fn limit_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    let n: i128 = match value.extract() {
        Ok(n) if !value.is_instance_of::<PyBool>() => n,
        Err(_) if value.is_instance_of::<PyInt>() => {
            return Err(checked::error::<PyOverflowError>(format!(
                "{what} is too large"
            )))
        }
        _ => {
            return Err(checked::error::<PyTypeError>(format!(
                "{what} must be an int number of bytes or None, not {}",
                value
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            )))
        }
    };
    if n < 0 {
        return Err(checked::error::<PyValueError>(format!(
            "{what} must not be negative, got {n}"
        )));
    }
    match u64::try_from(n) {
        Ok(n) if n != budget::UNLIMITED => Ok(n),
        _ => Err(checked::error::<PyOverflowError>(format!(
            "{what} {n} does not fit in 64 bits (use None for no limit)"
        ))),
    }
}

/// A str argument (`errors=`), as given or left out: like [`SizeArg`], PyO3
/// always gets Ok and a TypeError waits, made checked, for [`StrArg::get`].
pub enum StrArg {
    Default,
    Given(PyResult<String>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for StrArg {
    type Error = std::convert::Infallible;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> Result<Self, Self::Error> {
        let given = checked::cast::<pyo3::types::PyString>(&obj, "errors")
            .and_then(|s| s.to_str().map(str::to_owned));
        Ok(StrArg::Given(given))
    }
}

impl StrArg {
    /// The str, `default` when left out.
    pub fn get(self, default: &'static str) -> PyResult<std::borrow::Cow<'static, str>> {
        match self {
            StrArg::Default => Ok(default.into()),
            StrArg::Given(s) => s.map(Into::into),
        }
    }
}

/// A bool argument: like [`SizeArg`], PyO3 always gets Ok and the TypeError
/// for a non-bool waits, made checked, for [`BoolArg::get`].
pub struct BoolArg(pub Result<bool, PyErr>);

impl BoolArg {
    pub const fn of(v: bool) -> Self {
        BoolArg(Ok(v))
    }

    #[inline]
    pub fn get(self) -> PyResult<bool> {
        self.0
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for BoolArg {
    type Error = std::convert::Infallible;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> Result<Self, Self::Error> {
        // What PyO3's bool accepts: True, False, and numpy's bool scalar
        // (not a bool subclass: known by its type's name, as PyO3 does).
        let numpy_bool = || {
            let ty = obj.get_type();
            let module = ty.module().is_ok_and(|m| m == "numpy");
            module && ty.name().is_ok_and(|n| n == "bool" || n == "bool_")
        };
        let v = match obj.cast::<PyBool>() {
            Ok(b) => Ok(b.is_true()),
            Err(_) if numpy_bool() => obj.is_truthy(),
            Err(_) => {
                let got = obj
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                Err(checked::error::<PyTypeError>(format!(
                    "'{got}' object is not a bool"
                )))
            }
        };
        Ok(BoolArg(v))
    }
}
