//! `rsalloc.Pointer`: a typed, checked view of native memory (DESIGN §3).
//!
//! A Pointer is an address, an element type, the bytes reachable from it
//! (`extent`, None for foreign memory of unknown length) and an owner: the
//! shared allocation record when rsalloc allocated the block. Every access
//! checks the record's state first, so any view of a freed block raises.

use super::errors::{to_py, IntoPy};
pub use super::owner::{Owned, Owner};
use super::types::{self, TypeInfo};
use super::values::{exact_small_int, to_value, usize_arg};
use crate::core::error::{Error, Ownership};
use crate::core::index::{self, Found};
use crate::core::record::State;
use crate::core::record_ref::RecordRef;
use crate::core::region::RegionRef;
use crate::core::types::{Kind, Value};
use pyo3::exceptions::{PyBufferError, PyIndexError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PySlice, PyTuple};
use std::ffi::{c_int, CStr};
use std::fmt;

/// Keeps a block's memory for the length of one access. With the GIL, a
/// Python-level free cannot run between the liveness check and the read or
/// write, and this is nothing. Without it (a free-threaded interpreter), it
/// pins the block like a buffer export: a racing free makes the block dead
/// at once but its memory stays until the access ends. `--cfg
/// rsalloc_pin_access` turns it on under the GIL too, to test it.
pub struct Access<'a> {
    #[cfg(any(Py_GIL_DISABLED, rsalloc_pin_access))]
    owner: &'a Owner,
    _on: std::marker::PhantomData<&'a Owner>,
}

impl Drop for Access<'_> {
    fn drop(&mut self) {
        #[cfg(any(Py_GIL_DISABLED, rsalloc_pin_access))]
        self.owner.unpin();
    }
}

#[pyclass(frozen, module = "rsalloc", name = "Pointer")]
pub struct Pointer {
    pub addr: usize,
    pub ty: &'static TypeInfo,
    /// Bytes reachable from `addr` within the block; UNKNOWN for foreign
    /// memory of unknown length (see `extent()`). A sentinel rather than an
    /// Option, and the element count computed rather than kept: with the
    /// one-word owner, a Pointer object is 48 bytes, and a program may hold
    /// a million of them (issue 6).
    extent: usize,
    pub owner: Owner,
}

const UNKNOWN: usize = usize::MAX;

impl Pointer {
    #[inline]
    pub fn new(addr: usize, ty: &'static TypeInfo, extent: Option<usize>, owner: Owner) -> Self {
        Pointer {
            addr,
            ty,
            extent: extent.unwrap_or(UNKNOWN),
            owner,
        }
    }

    /// Bytes reachable from the address within the block; None when unknown.
    #[inline]
    pub fn extent(&self) -> Option<usize> {
        (self.extent != UNKNOWN).then_some(self.extent)
    }

    /// Another view of the same owner.
    fn view(&self, addr: usize, ty: &'static TypeInfo, extent: Option<usize>) -> Self {
        Pointer::new(addr, ty, extent, self.owner.view(addr == self.addr))
    }

    pub fn record(&self) -> Option<&RecordRef> {
        match self.owner.get() {
            Owned::Block(r) => Some(r),
            Owned::Region(_) | Owned::Unowned => None,
        }
    }

    /// Elements in the view: None for unknown extent or sizeless types.
    #[inline]
    pub fn count(&self) -> Option<usize> {
        let size = self.ty.size;
        if self.extent == UNKNOWN || self.ty.kind == Kind::Void || size == 0 {
            return None;
        }
        // Element sizes are mostly powers of two: a shift, not a division.
        Some(if size.is_power_of_two() {
            self.extent >> size.trailing_zeros()
        } else {
            self.extent / size
        })
    }

    fn elem_size(&self) -> Option<usize> {
        (self.ty.kind != Kind::Void && self.ty.size > 0).then_some(self.ty.size)
    }

    /// Bytes covered by the view's elements (all of the extent for Void).
    pub fn nbytes_usize(&self) -> Option<usize> {
        match self.count() {
            Some(n) => Some(n * self.ty.size),
            None => self.extent(),
        }
    }

    /// Ok when the bytes behind the view may be touched.
    #[inline]
    pub fn check(&self) -> Result<(), Error> {
        if self.addr == 0 {
            return Err(Error::NullPointer);
        }
        self.owner.check_access(self.addr)
    }

    /// Holds the memory for one access (see [`Access`]); fails when dead.
    #[inline]
    pub fn access(&self) -> Result<Access<'_>, Error> {
        #[cfg(any(Py_GIL_DISABLED, rsalloc_pin_access))]
        {
            self.owner.pin(self.addr)?;
            Ok(Access {
                owner: &self.owner,
                _on: std::marker::PhantomData,
            })
        }
        #[cfg(not(any(Py_GIL_DISABLED, rsalloc_pin_access)))]
        Ok(Access {
            _on: std::marker::PhantomData,
        })
    }

    /// Ok when the view is alive (null views count as alive: nothing was freed).
    pub(crate) fn check_alive(&self) -> Result<(), Error> {
        self.owner.check_access(self.addr)
    }

    pub fn err(&self, py: Python<'_>, e: Error) -> PyErr {
        to_py(py, e, self)
    }

    /// The address of element `i` (negative counts from the end when the count is known).
    #[inline]
    fn elem_addr(&self, i: isize) -> Result<usize, Error> {
        self.check()?;
        let size = self.ty.size;
        // The hot case, without computing the count: element i ends within
        // the extent. An unknown extent (usize::MAX) admits every index
        // (documented), as long as the address does not wrap; sizeless
        // types (Void) pass here and fail at the read.
        if i >= 0 {
            let end = (i as usize)
                .checked_mul(size)
                .and_then(|o| o.checked_add(size));
            if let Some(end) = end.filter(|&e| e <= self.extent) {
                if self.extent != UNKNOWN || self.addr.checked_add(end).is_some() {
                    return Ok(self.addr + end - size);
                }
            }
        }
        self.elem_addr_slow(i)
    }

    #[cold]
    fn elem_addr_slow(&self, i: isize) -> Result<usize, Error> {
        let size = self.ty.size;
        match self.count() {
            Some(n) => {
                let j = if i < 0 { i + n as isize } else { i };
                if j < 0 || j as usize >= n {
                    return Err(Error::OutOfBounds {
                        index: i as i128,
                        len: n,
                    });
                }
                Ok(self.addr + j as usize * size)
            }
            // Unknown length: nothing to check against (documented), but a
            // negative index would read before the pointer.
            None if i < 0 => Err(Error::OutOfBounds {
                index: i as i128,
                len: 0,
            }),
            None => (i as usize)
                .checked_mul(size)
                .and_then(|o| self.addr.checked_add(o))
                .ok_or(Error::OutOfBounds {
                    index: i as i128,
                    len: 0,
                }),
        }
    }

    /// A checked byte range [offset, offset+len) inside the view.
    pub(crate) fn byte_range(&self, offset: usize, len: usize) -> Result<usize, Error> {
        self.check()?;
        let extent = self.nbytes_usize().ok_or(Error::RangeOutOfBounds {
            offset,
            len,
            extent: 0,
        })?;
        match offset.checked_add(len) {
            Some(end) if end <= extent => Ok(self.addr + offset),
            _ => Err(Error::RangeOutOfBounds {
                offset,
                len,
                extent,
            }),
        }
    }

    fn element_type_error(&self) -> PyErr {
        PyTypeError::new_err(format!("{} has no elements to index", self.ty.name))
    }

    /// `self[i]` of a live, in-range numeric element, as a new reference
    /// (null with the exception set if CPython is out of memory); None for
    /// anything else, which `item` then serves or raises. The fast entry
    /// point's case in one frame: `item` and `read` stay out of line, and
    /// their calls and `PyResult`s cost ~15 % of `p[i]` (callgrind).
    #[inline(always)]
    pub(crate) fn plain_item(&self, i: isize) -> Option<*mut ffi::PyObject> {
        let _held = self.access().ok()?;
        let addr = self.elem_addr(i).ok()?;
        if self.ty.kind.is_number() {
            // SAFETY: elem_addr checked liveness and bounds (or the view is
            // foreign, whose reads are the caller's responsibility); the
            // conversions take plain numbers.
            return Some(unsafe {
                match self.ty.kind.read(addr) {
                    Value::Int(v) => ffi::PyLong_FromLongLong(v),
                    Value::UInt(v) => ffi::PyLong_FromUnsignedLongLong(v),
                    Value::Float(v) => ffi::PyFloat_FromDouble(v),
                    Value::Bool(b) => {
                        ffi::Py_NewRef(if b { ffi::Py_True() } else { ffi::Py_False() })
                    }
                    Value::Addr(_) => return None,
                }
            });
        }
        None
    }

    /// `self[i]` for an index already in range of isize.
    pub(crate) fn item(&self, py: Python<'_>, i: isize) -> PyResult<Py<PyAny>> {
        let _held = self.access().py(py, self)?;
        let addr = self.elem_addr(i).py(py, self)?;
        self.read(py, addr)
    }

    fn read(&self, py: Python<'_>, addr: usize) -> PyResult<Py<PyAny>> {
        let kind = self.ty.kind;
        match kind {
            Kind::Void => Err(self.element_type_error()),
            Kind::Opaque => self.instance_at(py, addr),
            _ => {
                // SAFETY: elem_addr checked liveness and bounds (or the view is
                // foreign, whose reads are the caller's responsibility).
                let v = unsafe { kind.read(addr) };
                Ok(match v {
                    Value::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
                    Value::UInt(u) => u.into_pyobject(py)?.into_any().unbind(),
                    Value::Float(f) => f.into_pyobject(py)?.into_any().unbind(),
                    Value::Bool(b) => PyBool::new(py, b).to_owned().into_any().unbind(),
                    Value::Addr(a) => {
                        let target = self.ty.target.expect("pointer slots have a target");
                        Py::new(py, from_stored_address(py, a, target)?)?.into_any()
                    }
                })
            }
        }
    }

    /// `self[i] = v` of an exact int into a live, in-range integer element
    /// whose range holds it, or of an exact float into a floating one; false
    /// for anything else, which `write` then serves or raises. As
    /// `plain_item`, for the fast entry point: no Python code runs here.
    #[inline(always)]
    pub(crate) fn plain_write(&self, i: isize, v: &Bound<'_, PyAny>) -> bool {
        let kind = self.ty.kind;
        let value = if let Some((lo, hi)) = kind.int_range() {
            match exact_small_int(v) {
                // Unsigned slots take the same bits (Kind::write).
                Some(n) if (lo..=hi).contains(&(n as i128)) => Value::Int(n),
                _ => return false,
            }
        } else if matches!(kind, Kind::F32 | Kind::F64) && v.is_exact_instance_of::<PyFloat>() {
            // SAFETY: an exact float.
            let f = unsafe { ffi::PyFloat_AS_DOUBLE(v.as_ptr()) };
            if kind == Kind::F32 && f.is_finite() && (f as f32).is_infinite() {
                return false;
            }
            Value::Float(f)
        } else {
            return false;
        };
        let Some(_held) = self.access().ok() else {
            return false;
        };
        let Some(addr) = self.elem_addr(i).ok() else {
            return false;
        };
        // SAFETY: checked live and in bounds; nothing ran since.
        unsafe { kind.write(addr, value) };
        true
    }

    /// `self[i] = v`. The value is converted before the write, and the block
    /// checked again after: a conversion can run Python code (`__index__`,
    /// `__float__`, an `__instancecheck__`) that frees the block.
    pub(crate) fn write(&self, py: Python<'_>, i: isize, v: &Bound<'_, PyAny>) -> PyResult<()> {
        let kind = self.ty.kind;
        let _held = self.access().py(py, self)?;
        let addr = self.elem_addr(i).py(py, self)?; // bounds and liveness first: IndexError before TypeError
        let value = match kind {
            Kind::Void => return Err(self.element_type_error()),
            Kind::Opaque => return self.write_instance(py, i, v),
            _ => to_value(kind, self.ty, v)?,
        };
        // Exact ints, floats, bools and None convert without running Python
        // code (the hot path); anything else may have freed the block.
        let plain = v.is_exact_instance_of::<PyInt>()
            || v.is_exact_instance_of::<PyFloat>()
            || v.is_exact_instance_of::<PyBool>()
            || v.is_none();
        let addr = if plain {
            addr
        } else {
            self.elem_addr(i).py(py, self)?
        };
        // SAFETY: checked live and in bounds with no Python code run since.
        unsafe { kind.write(addr, value) };
        Ok(())
    }

    /// An instance of the ctypes aggregate type living at `addr` (it pins the block).
    fn instance_at(&self, py: Python<'_>, addr: usize) -> PyResult<Py<PyAny>> {
        let one = Py::new(py, self.view(addr, self.ty, Some(self.ty.size)))?;
        Ok(self
            .ty
            .class
            .bind(py)
            .call_method1("from_buffer", (one,))?
            .unbind())
    }

    fn write_instance(&self, py: Python<'_>, i: isize, v: &Bound<'_, PyAny>) -> PyResult<()> {
        if !v.is_instance(self.ty.class.bind(py))? {
            return Err(PyTypeError::new_err(format!(
                "expected a {} instance, got {}",
                self.ty.name,
                v.get_type().name()?
            )));
        }
        let src = types::ctypes(py)?
            .call_method1("addressof", (v,))?
            .extract::<usize>()?;
        let _held = self.access().py(py, self)?;
        let addr = self.elem_addr(i).py(py, self)?;
        // SAFETY: both regions hold ty.size bytes (a ctypes instance of the
        // type, which `v` keeps alive; a slot checked just now).
        unsafe { std::ptr::copy(src as *const u8, addr as *mut u8, self.ty.size) };
        Ok(())
    }

    #[inline]
    pub(crate) fn index(&self, idx: &Bound<'_, PyAny>) -> PyResult<isize> {
        if let Some(i) = exact_small_int(idx) {
            return Ok(i as isize);
        }
        idx.extract::<isize>().map_err(|e| {
            if e.is_instance_of::<PyOverflowError>(idx.py()) {
                PyIndexError::new_err("index out of range")
            } else {
                PyTypeError::new_err(format!(
                    "Pointer indices must be integers or slices, not {}",
                    idx.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            }
        })
    }

    /// (start, step, length) of a slice, which needs a known count.
    fn slice_bounds(
        &self,
        py: Python<'_>,
        s: &Bound<'_, PySlice>,
    ) -> PyResult<(isize, isize, usize)> {
        let n = self.count().ok_or_else(|| {
            PyTypeError::new_err(format!("cannot slice {}: its count is unknown", self))
        })?;
        self.check().py(py, self)?;
        let ind = s.indices(n as isize)?;
        Ok((ind.start, ind.step, ind.slicelength))
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pointer[{}] at {:#x}", self.ty.name, self.addr)?;
        if let Some(n) = self.count() {
            write!(f, " (count {n}")?;
        } else if let Some(e) = self.extent() {
            write!(f, " ({e} bytes")?;
        } else {
            write!(f, " (unknown count")?;
        }
        write!(f, ", {})", self.owner.name())?;
        match self.owner.get() {
            Owned::Block(r) => super::tracking::write_sites(f, r),
            _ => Ok(()),
        }
    }
}

static C_VOID_P: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

#[pymethods]
impl Pointer {
    /// The address as an int.
    #[getter]
    fn address(&self) -> usize {
        self.addr
    }

    fn __int__(&self) -> usize {
        self.addr
    }

    /// The element type.
    #[getter]
    fn r#type(&self, py: Python<'_>) -> Py<PyAny> {
        self.ty.class.clone_ref(py)
    }

    /// Elements in the view, None when unknown (foreign memory).
    #[getter(count)]
    fn get_count(&self) -> Option<usize> {
        self.count()
    }

    /// Bytes covered by the view, None when unknown.
    #[getter]
    fn nbytes(&self) -> Option<usize> {
        self.nbytes_usize()
    }

    fn __len__(&self) -> PyResult<usize> {
        self.count()
            .ok_or_else(|| PyTypeError::new_err(format!("len() of {}: its count is unknown", self)))
    }

    fn __getitem__(&self, py: Python<'_>, idx: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if let Ok(s) = idx.cast::<PySlice>() {
            let (start, step, len) = self.slice_bounds(py, s)?;
            let _held = self.access().py(py, self)?;
            let items = PyList::empty(py);
            for k in 0..len as isize {
                let i = start + k * step;
                items.append(self.read(py, self.addr + i as usize * self.ty.size)?)?;
            }
            return Ok(items.into_any().unbind());
        }
        self.item(py, self.index(idx)?)
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        idx: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if let Ok(s) = idx.cast::<PySlice>() {
            let (start, step, len) = self.slice_bounds(py, s)?;
            let values: Vec<Bound<'_, PyAny>> = v.try_iter()?.collect::<PyResult<_>>()?;
            if values.len() != len {
                return Err(PyValueError::new_err(format!(
                    "slice assignment of {} values to {len} elements",
                    values.len()
                )));
            }
            // Convert everything first, so a bad value changes nothing.
            if self.ty.kind == Kind::Opaque || self.ty.kind == Kind::Void {
                return Err(PyTypeError::new_err(format!(
                    "slice assignment to {}",
                    self.ty.name
                )));
            }
            let converted = values
                .iter()
                .map(|x| to_value(self.ty.kind, self.ty, x))
                .collect::<PyResult<Vec<_>>>()?;
            // The conversions ran Python code: the block may be dead now.
            let _held = self.access().py(py, self)?;
            self.check().py(py, self)?;
            for (k, value) in converted.into_iter().enumerate() {
                let addr = self.addr + (start + k as isize * step) as usize * self.ty.size;
                // SAFETY: slice_bounds checked the range; liveness checked just now.
                unsafe { self.ty.kind.write(addr, value) };
            }
            return Ok(());
        }
        let i = self.index(idx)?;
        self.write(py, i, v)
    }

    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let all = slf.as_any().get_item(PySlice::full(slf.py()))?;
        Ok(all.try_iter()?.into_any().unbind())
    }

    /// `p[0]`.
    #[getter]
    fn get_value(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let _held = self.access().py(py, self)?;
        let addr = self.elem_addr(0).py(py, self)?;
        self.read(py, addr)
    }

    #[setter]
    fn set_value(&self, py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<()> {
        self.write(py, 0, v)
    }

    /// For a ctypes element type: an instance living in this memory (it pins the block).
    #[getter(r#ref)]
    fn get_ref(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if !self.ty.ctypes {
            return Err(PyTypeError::new_err(format!(
                ".ref needs a ctypes element type (Structure, Union, array, scalar), not {}",
                self.ty.name
            )));
        }
        let addr = self.elem_addr(0).py(py, self)?;
        self.instance_at(py, addr)
    }

    fn __add__(&self, py: Python<'_>, n: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if !n.is_instance_of::<PyInt>() {
            return Ok(py.NotImplemented());
        }
        Ok(Py::new(py, self.offset_by(py, n.extract()?)?)?.into_any())
    }

    /// A view n elements further in the same allocation (0 <= n <= count).
    fn offset(&self, py: Python<'_>, n: isize) -> PyResult<Pointer> {
        self.offset_by(py, n)
    }

    /// The same bytes seen as elements of T (count = nbytes // sizeof(T)).
    fn cast(&self, py: Python<'_>, t: &Bound<'_, PyAny>) -> PyResult<Pointer> {
        let ty = types::lookup(t)?;
        self.check_alive().py(py, self)?;
        Ok(self.view(self.addr, ty, self.extent()))
    }

    /// Decodes a C string: UTF-8 for Uint8/Int8, UTF-16 for Uint16, up to the
    /// first NUL or the end of the view, or exactly `length` elements.
    #[pyo3(signature = (length=None, errors="strict"))]
    fn to_str(
        &self,
        py: Python<'_>,
        length: Option<&Bound<'_, PyAny>>,
        errors: &str,
    ) -> PyResult<Py<PyAny>> {
        let unit = match self.ty.kind {
            Kind::U8 | Kind::I8 => 1,
            Kind::U16 => 2,
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "to_str() needs a Uint8, Int8 or Uint16 pointer, not {}",
                    self.ty.name
                )))
            }
        };
        self.check().py(py, self)?;
        let _held = self.access().py(py, self)?;
        let units = match length {
            Some(l) => {
                let l = usize_arg(l, "length")?;
                self.byte_range(
                    0,
                    l.checked_mul(unit)
                        .ok_or_else(|| PyOverflowError::new_err("length too large"))?,
                )
                .py(py, self)?;
                l
            }
            // SAFETY: the scan stays inside the view when its count is known;
            // a foreign view of unknown length is scanned like C's strlen.
            None => unsafe { nul_position(self.addr, unit, self.count()) },
        };
        // NULL means "strict" to CPython's decoders: no C string to build.
        let errors = match errors {
            "strict" => None,
            e => Some(
                std::ffi::CString::new(e).map_err(|_| PyValueError::new_err("bad errors value"))?,
            ),
        };
        let errors = errors.as_ref().map_or(std::ptr::null(), |e| e.as_ptr());
        // SAFETY: [addr, addr + units*unit) was checked above.
        let s = unsafe {
            if unit == 1 {
                ffi::PyUnicode_DecodeUTF8(self.addr as *const _, units as isize, errors)
            } else {
                let mut order: c_int = if cfg!(target_endian = "little") {
                    -1
                } else {
                    1
                };
                ffi::PyUnicode_DecodeUTF16(
                    self.addr as *const _,
                    (units * 2) as isize,
                    errors,
                    &mut order,
                )
            }
        };
        // SAFETY: a new reference or NULL with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(py, s) }.map(Bound::unbind)
    }

    /// The view's bytes (or the first n) as bytes.
    #[pyo3(signature = (n=None))]
    fn read_bytes<'py>(
        &self,
        py: Python<'py>,
        n: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let n = match n {
            Some(n) => usize_arg(n, "n")?,
            None => self
                .nbytes_usize()
                .ok_or_else(|| PyTypeError::new_err(format!("read_bytes() of {}: pass n", self)))?,
        };
        let _held = self.access().py(py, self)?;
        let addr = self.byte_range(0, n).py(py, self)?;
        // SAFETY: checked range.
        Ok(pyo3::types::PyBytes::new(py, unsafe {
            std::slice::from_raw_parts(addr as *const u8, n)
        })
        .into_any())
    }

    /// Copies a bytes-like object into the view at a byte offset.
    #[pyo3(signature = (data, offset=None))]
    fn write_bytes(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        offset: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let offset = offset.map_or(Ok(0), |o| usize_arg(o, "offset"))?;
        let src = pyo3::buffer::PyBuffer::<u8>::get(data)
            .or_else(|_| bytes_buffer(data))
            .map_err(|_| PyTypeError::new_err("write_bytes() takes a bytes-like object"))?;
        let len = src.len_bytes();
        let _held = self.access().py(py, self)?;
        let dst = self.byte_range(offset, len).py(py, self)?;
        // SAFETY: checked destination; the source buffer is held for the copy.
        unsafe { std::ptr::copy(src.buf_ptr() as *const u8, dst as *mut u8, len) };
        Ok(())
    }

    /// Sets every byte of the view to `byte`.
    fn fill(&self, py: Python<'_>, byte: &Bound<'_, PyAny>) -> PyResult<()> {
        // Any int outside range(0, 256) is the same mistake (as bytearray says), however large.
        let byte = match byte.extract::<i64>() {
            Err(e) if e.is_instance_of::<PyOverflowError>(py) => -1,
            other => other?,
        };
        if !(0..=255).contains(&byte) {
            return Err(PyValueError::new_err("byte must be in range(0, 256)"));
        }
        let n = self
            .nbytes_usize()
            .ok_or_else(|| PyTypeError::new_err(format!("fill() of {}", self)))?;
        let _held = self.access().py(py, self)?;
        let addr = self.byte_range(0, n).py(py, self)?;
        // SAFETY: checked range.
        unsafe { std::ptr::write_bytes(addr as *mut u8, byte as u8, n) };
        Ok(())
    }

    /// Copies all of `src` (a Pointer or bytes-like object) to the start of the view.
    fn copy_from(&self, py: Python<'_>, src: &Bound<'_, PyAny>) -> PyResult<()> {
        let (from, len, _src_held) = if let Ok(p) = src.cast::<Pointer>() {
            let p = p.get();
            let n = p.nbytes_usize().ok_or_else(|| {
                PyTypeError::new_err(format!("copy_from() of {}: unknown length", p))
            })?;
            let held = p.access().py(py, p)?;
            (p.byte_range(0, n).py(py, p)?, n, held)
        } else {
            let buf = pyo3::buffer::PyBuffer::<u8>::get(src)
                .or_else(|_| bytes_buffer(src))
                .map_err(|_| {
                    PyTypeError::new_err("copy_from() takes a Pointer or a bytes-like object")
                })?;
            let _held = self.access().py(py, self)?;
            let dst = self.byte_range(0, buf.len_bytes()).py(py, self)?;
            // SAFETY: checked destination; buffer held for the copy; memmove semantics.
            unsafe { std::ptr::copy(buf.buf_ptr() as *const u8, dst as *mut u8, buf.len_bytes()) };
            return Ok(());
        };
        let _held = self.access().py(py, self)?;
        let dst = self.byte_range(0, len).py(py, self)?;
        // SAFETY: both ranges checked; `copy` allows overlap.
        unsafe { std::ptr::copy(from as *const u8, dst as *mut u8, len) };
        Ok(())
    }

    /// So that a ctypes foreign function accepts a Pointer (as a `c_void_p`).
    #[getter]
    fn _as_parameter_<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_alive().py(py, self)?;
        let cls = C_VOID_P.import(py, "ctypes", "c_void_p")?;
        cls.call1((if self.addr == 0 {
            None
        } else {
            Some(self.addr)
        },))
    }

    /// The owning allocator (None for foreign or detached memory).
    #[getter]
    fn allocator(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self.owner.get() {
            Owned::Block(r) if r.state() != State::Detached => {
                super::allocator::owner_object(py, r)
            }
            Owned::Region(r) => super::allocator::handle_object(py, &r.region().handle),
            _ => py.None(),
        })
    }

    /// Not freed, released or reallocated.
    #[getter]
    fn alive(&self) -> bool {
        self.check_alive().is_ok()
    }

    #[getter]
    fn is_null(&self) -> bool {
        self.addr == 0
    }

    fn __bool__(&self) -> bool {
        self.addr != 0
    }

    /// A view of the memory at `address` (None: NULL), resolved as an
    /// address read back from memory is (DESIGN §3a): inside a live rsalloc
    /// block, a view of that block to its end (with `count`, of count
    /// elements, which must fit: IndexError otherwise); elsewhere an
    /// unowned view (of `count` elements, or of unknown count).
    #[staticmethod]
    #[pyo3(signature = (address, r#type, count=None))]
    fn from_address(
        address: &Bound<'_, PyAny>,
        r#type: &Bound<'_, PyAny>,
        count: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Pointer> {
        let py = address.py();
        let addr = if address.is_none() {
            0
        } else {
            usize_arg(address, "address")?
        };
        let ty = types::lookup(r#type)?;
        let p = from_stored_address(py, addr, ty)?;
        let Some(c) = count else {
            return Ok(p);
        };
        let c = usize_arg(c, "count")?;
        let n = c
            .checked_mul(ty.size.max(1))
            .filter(|n| addr.checked_add(*n).is_some() && *n <= isize::MAX as usize)
            .ok_or_else(|| PyOverflowError::new_err("count × size overflows the address space"))?;
        if let (Some(room), false) = (p.extent(), matches!(p.owner.get(), Owned::Unowned)) {
            if n > room {
                return Err(PyIndexError::new_err(format!(
                    "count {c} of {} ({n} bytes) does not fit in the {room} bytes from {addr:#x} \
                     to the end of its block: {p}",
                    ty.name
                )));
            }
        }
        Ok(Pointer { extent: n, ..p })
    }

    /// Hands ownership away (to C code that will free the block): returns the
    /// address; the block is no longer counted, and the Pointer becomes an
    /// unowned view.
    fn detach(&self, py: Python<'_>) -> PyResult<usize> {
        match self.owner.get() {
            Owned::Block(r) => r.detach(self.addr).py(py, self),
            Owned::Region(_) => Err(self.err(py, Error::Ownership(Ownership::RegionCannotDetach))),
            Owned::Unowned => Err(self.err(py, Error::Ownership(Ownership::Foreign))),
        }
    }

    /// Frees the block when its last Python reference (pointer, view,
    /// export) is gone. Returns the pointer.
    fn autofree(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let this = slf.get();
        match this.owner.get() {
            Owned::Block(r) => r.set_autofree().py(slf.py(), this)?,
            // Region memory goes with its arena, never earlier: nothing to arm.
            Owned::Region(r) => r.check_access(this.addr).py(slf.py(), this)?,
            Owned::Unowned => return Err(this.err(slf.py(), Error::Ownership(Ownership::Foreign))),
        }
        Ok(slf)
    }

    fn __repr__(&self) -> String {
        let count = match self.count() {
            Some(n) => n.to_string(),
            None => "?".into(),
        };
        format!(
            "<Pointer[{}] {:#x} count={} {} {}>",
            self.ty.name,
            self.addr,
            count,
            self.owner.name(),
            self.owner.state_name(self.addr)
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Pointer>()
            .is_ok_and(|o| o.get().addr == self.addr)
    }

    fn __hash__(&self) -> u64 {
        self.addr as u64
    }

    fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "Pointer objects cannot be pickled: an address means nothing in another process",
        ))
    }

    /// `Pointer[T]`: the element type of a slot holding the address of a T.
    #[classmethod]
    fn __class_getitem__<'py>(
        _cls: &Bound<'py, pyo3::types::PyType>,
        t: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(tuple) = t.cast::<PyTuple>() {
            return Err(PyTypeError::new_err(format!(
                "Pointer[...] takes one type, got {}",
                tuple.len()
            )));
        }
        types::pointer_class(t)
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let py = slf.py();
        if view.is_null() {
            return Err(PyBufferError::new_err("NULL view in __getbuffer__"));
        }
        let Some(nbytes) = this.nbytes_usize() else {
            return Err(PyBufferError::new_err(format!(
                "{}: unknown length, no buffer",
                this
            )));
        };
        this.check().py(py, this)?;
        // Elements keep their format only when the consumer asks for formats
        // and shapes; otherwise the view is plain bytes.
        let typed = this.elem_size().is_some()
            && flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT
            && flags & ffi::PyBUF_ND == ffi::PyBUF_ND;
        // The stride of a contiguous view is the item size: the TypeInfo's
        // size (static, same layout as isize) or a static 1 for bytes.
        static ONE: isize = 1;
        let (len, strides, itemsize, format): (usize, *const isize, isize, &CStr) = if typed {
            let size: *const usize = &this.ty.size;
            (
                nbytes / this.ty.size,
                size.cast(),
                this.ty.size as isize,
                this.ty.format,
            )
        } else {
            (nbytes, &ONE, 1, c"B")
        };
        // The shape must stay put until release, and the Pointer keeps no
        // count of its own (see `extent`): it lives in the export's
        // `internal` slot, freed by __releasebuffer__.
        let shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
            let layout = std::alloc::Layout::new::<isize>();
            // SAFETY: a non-zero size.
            let p = unsafe { std::alloc::alloc(layout) }.cast::<isize>();
            if p.is_null() {
                return Err(pyo3::exceptions::PyMemoryError::new_err(
                    "no memory for a buffer shape",
                ));
            }
            // SAFETY: fresh memory for one isize.
            unsafe { p.write(len as isize) };
            p
        } else {
            std::ptr::null_mut()
        };
        if let Err(e) = this.owner.pin(this.addr) {
            free_shape(shape);
            return Err(this.err(py, e));
        }
        // SAFETY: `view` is a valid Py_buffer to fill; the strides and
        // format pointers live in `this.ty` (static) or are static, the shape
        // is the export's own, and all stay valid while the export holds `obj`.
        unsafe {
            (*view).buf = this.addr as *mut _;
            (*view).len = nbytes as isize;
            (*view).readonly = 0;
            (*view).itemsize = itemsize;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                format.as_ptr() as *mut _
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = shape;
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                strides as *mut isize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = shape.cast();
            (*view).obj = slf.into_any().into_ptr();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        // SAFETY: CPython passes the view this object filled.
        free_shape(unsafe { (*view).internal }.cast());
        self.owner.unpin();
    }
}

/// Frees the shape a buffer export kept in `internal` (null: none).
fn free_shape(shape: *mut isize) {
    if !shape.is_null() {
        // SAFETY: allocated in __getbuffer__ with this layout, freed once.
        unsafe { std::alloc::dealloc(shape.cast(), std::alloc::Layout::new::<isize>()) }
    }
}

impl Pointer {
    fn offset_by(&self, py: Python<'_>, n: isize) -> PyResult<Pointer> {
        self.check_alive().py(py, self)?;
        let size = self.ty.size.max(1);
        let limit = self.count().or(self.extent());
        let ok = n >= 0 && limit.is_none_or(|c| n as usize <= c);
        if !ok {
            return Err(PyIndexError::new_err(format!(
                "offset {n} outside 0..={} for {}",
                limit.map(|c| c.to_string()).unwrap_or_else(|| "∞".into()),
                self
            )));
        }
        let bytes = n as usize * size;
        let addr = self
            .addr
            .checked_add(bytes)
            .ok_or_else(|| PyOverflowError::new_err("address overflow"))?;
        Ok(self.view(addr, self.ty, self.extent().map(|e| e - bytes)))
    }
}

/// A byte buffer over any bytes-like object (e.g. a memoryview of another format).
fn bytes_buffer(data: &Bound<'_, PyAny>) -> PyResult<pyo3::buffer::PyBuffer<u8>> {
    let mv = pyo3::types::PyMemoryView::from(data)?;
    let cast = mv.call_method1("cast", ("B",))?;
    pyo3::buffer::PyBuffer::<u8>::get(&cast)
}

/// The index of the first NUL unit, scanning at most `limit` units.
///
/// # Safety
/// `addr` is readable for `limit` units, or up to a NUL when `limit` is None.
unsafe fn nul_position(addr: usize, unit: usize, limit: Option<usize>) -> usize {
    match (unit, limit) {
        // SAFETY (all arms): the caller's contract.
        (1, Some(n)) => unsafe {
            let hit = libc::memchr(addr as *const libc::c_void, 0, n);
            if hit.is_null() {
                n
            } else {
                hit as usize - addr
            }
        },
        (1, None) => unsafe { libc::strlen(addr as *const libc::c_char) },
        _ => {
            let mut i = 0;
            while limit.is_none_or(|l| i < l)
                && unsafe { ((addr + 2 * i) as *const u16).read_unaligned() } != 0
            {
                i += 1;
            }
            i
        }
    }
}

/// The Pointer for an address read back from memory (a `Pointer[T]` slot,
/// a struct field, `Pointer.from_address`), of element type `ty`
/// (DESIGN §3a): inside a live rsalloc block, a view of that block to its
/// end, sharing its owner (so dead with it, and freeable when `addr` is its
/// start); the start of a block rsalloc freed lately and has not handed out
/// again, a dead view of that block (access raises UseAfterFreeError,
/// naming both sites with tracking on); anything else an unowned view of
/// unknown count, and 0 the null pointer.
pub(crate) fn from_stored_address(
    py: Python<'_>,
    addr: usize,
    ty: &'static TypeInfo,
) -> PyResult<Pointer> {
    let unowned = || Pointer::new(addr, ty, None, Owner::UNOWNED);
    let to_end = |end: usize| Some(end.saturating_sub(addr));
    Ok(match index::resolve(addr) {
        Some(Found::Block(rec)) => {
            let end = rec.addr() + rec.size();
            Pointer::new(addr, ty, to_end(end), Owner::block(rec))
        }
        Some(Found::Chunk(region)) => match region.block_at(addr) {
            Some((start, end, token)) => {
                let r = RegionRef::resolved(&region, token, addr == start)
                    .py(py, &format_args!("Pointer[{}] at {addr:#x}", ty.name))?;
                Pointer::new(addr, ty, to_end(end), Owner::region(r))
            }
            None => unowned(),
        },
        None => match index::lately_freed(addr) {
            Some(rec) => Pointer::new(addr, ty, Some(rec.size()), Owner::block(rec)),
            None => unowned(),
        },
    })
}

/// The null `Pointer[Void]`.
pub fn nullptr_object(py: Python<'_>) -> PyResult<Bound<'_, Pointer>> {
    Bound::new(py, Pointer::new(0, types::void(py)?, None, Owner::UNOWNED))
}
