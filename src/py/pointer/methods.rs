//! The Python methods of `Pointer` (one `#[pymethods]` block, as PyO3
//! requires): properties, indexing, offsets and casts, bytes and C strings,
//! the buffer protocol and ctypes interop, and the ownership operations
//! (`detach`, `autofree`). Each parses its arguments and calls the parent
//! module (checks and bounds) or `items` (element conversion).

use super::items::*;
use super::{from_stored_address, Pointer};
use crate::core::error::{Error, Ownership};
use crate::core::owner::{Owned, Owner};
use crate::core::record::State;
use crate::core::types::Kind;
use crate::core::view::OffsetError;
use crate::py::args::{address_arg, int128, usize_arg, BoolArg, StrArg};
use crate::py::checked;
use crate::py::checked::{Int, Text};
use crate::py::errors::IntoPy;
use crate::py::serialized::token;
use crate::py::source::Source;
use crate::py::types::{self};
use crate::py::values::{exact_small_int, to_value};
use pyo3::exceptions::{PyBufferError, PyIndexError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PySlice, PyTuple};
use std::ffi::{c_int, CStr};

#[pymethods]
impl Pointer {
    /// The address as an int.
    #[getter]
    fn address(&self) -> Int {
        Int::from(self.addr)
    }

    fn __int__(&self) -> Int {
        Int::from(self.addr)
    }

    /// The element type.
    #[getter]
    fn r#type(&self, py: Python<'_>) -> Py<PyAny> {
        self.ty.class.clone_ref(py)
    }

    /// Elements in the view, None when unknown (foreign memory).
    #[getter(count)]
    fn get_count(&self) -> Option<Int> {
        self.count().map(Int::from)
    }

    /// Bytes covered by the view, None when unknown.
    #[getter]
    fn nbytes(&self) -> Option<Int> {
        self.nbytes_usize().map(Int::from)
    }

    fn __len__(&self) -> PyResult<usize> {
        self.count().ok_or_else(|| {
            checked::error::<PyTypeError>(format!("len() of {}: its count is unknown", self))
        })
    }

    fn __getitem__(&self, py: Python<'_>, idx: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if let Ok(s) = idx.cast::<PySlice>() {
            // The bounds ran the slice's __index__ methods; building the
            // elements may run more Python code (from_buffer of an aggregate,
            // a collection): pinned, and re-checked before every element.
            let (start, step, len) = self.slice_bounds(py, s)?;
            if self.ty.kind.is_number() {
                return self.number_slice(py, start, step, len);
            }
            let _held = self.pinned(token(py)).py(py, self)?;
            let items = checked::empty_list(py, 0)?;
            for k in 0..len as isize {
                self.check(token(py)).py(py, self)?;
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
            if let Some(done) = self.write_number_slice(py, start, step, len, v) {
                return done;
            }
            let values: Vec<Bound<'_, PyAny>> = v.try_iter()?.collect::<PyResult<_>>()?;
            if values.len() != len {
                return Err(slice_length_error(values.len(), len));
            }
            // Convert everything first, so a bad value changes nothing.
            if self.ty.kind == Kind::Opaque || self.ty.kind == Kind::Void {
                return Err(checked::error::<PyTypeError>(format!(
                    "slice assignment to {}",
                    self.ty.name
                )));
            }
            let converted = values
                .iter()
                .map(|x| to_value(self.ty.kind, self.ty, x))
                .collect::<PyResult<Vec<_>>>()?;
            // The conversions ran Python code: the block may be dead now.
            let _held = self.access(token(py)).py(py, self)?;
            self.check(token(py)).py(py, self)?;
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
        let _held = self.access(token(py)).py(py, self)?;
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
        if !self.ty.ctypes && matches!(self.ty.composite, types::Composite::No) {
            return Err(checked::error::<PyTypeError>(format!(
                ".ref needs a Struct, Union, Array or ctypes element type (Structure, Union, array, scalar), not {}",
                self.ty.name
            )));
        }
        let addr = self.elem_addr(0).py(py, self)?;
        self.instance_at(py, addr)
    }

    fn __add__(&self, py: Python<'_>, n: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match offset_operand(n)? {
            Some(n) => Ok(Py::new(py, self.offset_by(py, n)?)?.into_any()),
            None => Ok(py.NotImplemented()),
        }
    }

    /// `n + p`, as C allows.
    fn __radd__(&self, py: Python<'_>, n: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.__add__(py, n)
    }

    /// numpy defers its operators to Pointer's (`np.int64(2) + p` is
    /// `p.__radd__`, a Pointer), rather than making an array of `p`.
    #[classattr]
    fn __array_ufunc__(py: Python<'_>) -> Py<PyAny> {
        py.None()
    }

    /// For `numpy.asarray(p)` of a pointer whose buffer fails: numpy
    /// swallows the buffer protocol's error and would make an object array,
    /// but lets this one's through (UseAfterFreeError, NullPointerError,
    /// BufferError for an unknown length). For a live pointer, the array
    /// is a zero-copy, writable view whose memoryview pins the block. Asked
    /// for objects (`numpy.array([p, q], dtype=object)`), it holds the
    /// Pointer itself, whatever its memory.
    #[pyo3(signature = (dtype=None, copy=None))]
    fn __array__<'py>(
        slf: &Bound<'py, Self>,
        dtype: Option<&Bound<'py, PyAny>>,
        copy: Option<BoolArg>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if let Some(d) = dtype {
            let np = py.import(checked::name!("numpy"))?;
            let kind = np
                .call_method1(checked::name!("dtype"), (d,))?
                .getattr(checked::name!("kind"))?;
            let object = checked::name!("O");
            if kind.eq(object)? {
                let empty = PyTuple::empty(py);
                let one = np.call_method1(checked::name!("empty"), (&empty, object))?;
                one.set_item(empty, slf)?;
                return Ok(one);
            }
        }
        let mv = pyo3::types::PyMemoryView::from(slf.as_any())?;
        let kwargs = checked::dict(py)?;
        if let Some(d) = dtype {
            kwargs.set_item(checked::name!("dtype"), d)?;
        }
        if let Some(c) = copy.map(BoolArg::get).transpose()? {
            kwargs.set_item(checked::name!("copy"), checked::bool(py, c))?;
        }
        py.import(checked::name!("numpy"))?
            .getattr(checked::name!("asarray"))?
            .call((mv,), Some(&kwargs))
    }

    /// A view of `count` elements from element `start` of the same memory
    /// (count None: to the end). Bounds-checked where the count is known;
    /// on a view of unknown count, it states the length.
    #[pyo3(name = "view", signature = (start=None, count=None))]
    fn view_of(
        &self,
        py: Python<'_>,
        start: Option<&Bound<'_, PyAny>>,
        count: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Pointer> {
        let start = start.map_or(Ok(0), |s| usize_arg(s, "start"))?;
        let count = count.map(|c| usize_arg(c, "count")).transpose()?;
        let size = self.ty.size.max(1);
        let at = self.offset_by(py, isize::try_from(start).unwrap_or(isize::MAX))?;
        let Some(count) = count else {
            return Ok(at);
        };
        let bytes = count
            .checked_mul(size)
            .filter(|&n| n <= isize::MAX as usize && at.addr.checked_add(n).is_some());
        match (bytes, at.extent()) {
            (Some(n), None) => Ok(self.view(at.addr, self.ty, Some(n), token(py))),
            (Some(n), Some(e)) if n <= e => Ok(self.view(at.addr, self.ty, Some(n), token(py))),
            (_, Some(_)) => Err(checked::error::<PyIndexError>(format!(
                "view of {count} elements from {start} outside {self}"
            ))),
            (None, None) => Err(checked::error::<PyOverflowError>(
                "count × size overflows the address space",
            )),
        }
    }

    /// A view n elements further in the same allocation (0 <= n <= count).
    fn offset(&self, py: Python<'_>, n: &Bound<'_, PyAny>) -> PyResult<Pointer> {
        let n = isize::try_from(int128(n)?).map_err(|_| {
            checked::error::<pyo3::exceptions::PyOverflowError>("offset out of range")
        })?;
        self.offset_by(py, n)
    }

    /// The same bytes seen as elements of T (count = nbytes // sizeof(T)).
    fn cast(&self, py: Python<'_>, t: &Bound<'_, PyAny>) -> PyResult<Pointer> {
        let ty = types::lookup(t)?;
        self.check_alive(token(py)).py(py, self)?;
        Ok(self.view(self.addr, ty, self.extent(), token(py)))
    }

    /// Decodes a C string: UTF-8 for Uint8/Int8, UTF-16 for Uint16, up to the
    /// first NUL or the end of the view, or exactly `length` elements.
    #[pyo3(signature = (length=None, errors=StrArg::Default), text_signature = "($self, length=None, errors='strict')")]
    fn to_str(
        &self,
        py: Python<'_>,
        length: Option<&Bound<'_, PyAny>>,
        errors: StrArg,
    ) -> PyResult<Py<PyAny>> {
        let errors = errors.get("strict")?;
        let errors = errors.as_ref();
        let unit = match self.ty.kind {
            Kind::U8 | Kind::I8 => 1,
            Kind::U16 => 2,
            _ => {
                return Err(checked::error::<PyTypeError>(format!(
                    "to_str() needs a Uint8, Int8 or Uint16 pointer, not {}",
                    self.ty.name
                )))
            }
        };
        // Arguments first: `length.__index__` may free the block.
        let length = length.map(|l| usize_arg(l, "length")).transpose()?;
        // NULL means "strict" to CPython's decoders: no C string to build.
        let errors = match errors {
            "strict" => None,
            e => Some(
                std::ffi::CString::new(e)
                    .map_err(|_| checked::error::<PyValueError>("bad errors value"))?,
            ),
        };
        // Any other handler may be a Python function, run by the decoder
        // while it reads: the memory is pinned for it.
        let _pinned = match errors {
            Some(_) => Some(self.pinned(token(py)).py(py, self)?),
            None => None,
        };
        self.check(token(py)).py(py, self)?;
        let _held = self.access(token(py)).py(py, self)?;
        let units = match length {
            Some(l) => {
                self.stated_range(
                    0,
                    l.checked_mul(unit)
                        .ok_or_else(|| checked::error::<PyOverflowError>("length too large"))?,
                )
                .py(py, self)?;
                l
            }
            // SAFETY: the scan stays inside the view when its count is known;
            // a foreign view of unknown length is scanned like C's strlen.
            None => unsafe { nul_position(self.addr, unit, self.count()) },
        };
        let errors = errors.as_ref().map_or(std::ptr::null(), |e| e.as_ptr());
        // SAFETY: [addr, addr + units*unit) was checked above.
        let s = unsafe {
            if unit == 1 {
                ffi::PyUnicode_DecodeUTF8(
                    std::ptr::with_exposed_provenance(self.addr),
                    units as isize,
                    errors,
                )
            } else {
                let mut order: c_int = if cfg!(target_endian = "little") {
                    -1
                } else {
                    1
                };
                ffi::PyUnicode_DecodeUTF16(
                    std::ptr::with_exposed_provenance(self.addr),
                    (units * 2) as isize,
                    errors,
                    &mut order,
                )
            }
        };
        // SAFETY: a new reference or NULL with an exception set.
        let s = unsafe { Bound::from_owned_ptr_or_err(py, s) }?;
        // A handler that freed the block made the rest of the text stale.
        self.check(token(py)).py(py, self)?;
        Ok(s.unbind())
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
            None => self.nbytes_usize().ok_or_else(|| {
                checked::error::<PyTypeError>(format!("read_bytes() of {}: pass n", self))
            })?,
        };
        let _held = self.access(token(py)).py(py, self)?;
        let addr = self.stated_range(0, n).py(py, self)?;
        // SAFETY: checked range (or stated on a view of unknown length).
        checked::bytes(py, unsafe {
            std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(addr), n)
        })
    }

    /// Copies a bytes-like object into the view at a byte offset.
    #[pyo3(signature = (data, offset=None))]
    fn write_bytes(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        offset: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        // Arguments first (`__index__`, `__buffer__` may free the block).
        let offset = offset.map_or(Ok(0), |o| usize_arg(o, "offset"))?;
        let src = Source::get(data, "write_bytes() takes a bytes-like object")?;
        let _held = self.access(token(py)).py(py, self)?;
        let dst = self.stated_range(offset, src.len()).py(py, self)?;
        // SAFETY: checked destination (or stated by the source's length on a
        // view of unknown length); the source is held for the copy.
        unsafe { src.copy_to(py, std::ptr::with_exposed_provenance_mut::<u8>(dst)) }
    }

    /// Sets every byte of the view to `byte`.
    fn fill(&self, py: Python<'_>, byte: &Bound<'_, PyAny>) -> PyResult<()> {
        // Any int outside range(0, 256) is the same mistake (as bytearray says), however large.
        let byte = match byte.extract::<i64>() {
            Err(e) if e.is_instance_of::<PyOverflowError>(py) => -1,
            other => other?,
        };
        if !(0..=255).contains(&byte) {
            return Err(checked::error::<PyValueError>(
                "byte must be in range(0, 256)",
            ));
        }
        let n = self
            .nbytes_usize()
            .ok_or_else(|| checked::error::<PyTypeError>(format!("fill() of {}", self)))?;
        let _held = self.access(token(py)).py(py, self)?;
        let addr = self.byte_range(0, n).py(py, self)?;
        // SAFETY: checked range.
        unsafe {
            std::ptr::write_bytes(
                std::ptr::with_exposed_provenance_mut::<u8>(addr),
                byte as u8,
                n,
            )
        };
        Ok(())
    }

    /// Copies all of `src` (a Pointer or bytes-like object) to the start of the view.
    fn copy_from(&self, py: Python<'_>, src: &Bound<'_, PyAny>) -> PyResult<()> {
        let (from, len, _src_held) = if let Ok(p) = src.cast::<Pointer>() {
            let p = p.get();
            let n = p.nbytes_usize().ok_or_else(|| {
                checked::error::<PyTypeError>(format!("copy_from() of {}: unknown length", p))
            })?;
            let held = p.access(token(py)).py(py, p)?;
            (p.byte_range(0, n).py(py, p)?, n, held)
        } else {
            let buf = Source::get(src, "copy_from() takes a Pointer or a bytes-like object")?;
            let _held = self.access(token(py)).py(py, self)?;
            let dst = self.stated_range(0, buf.len()).py(py, self)?;
            // SAFETY: checked destination (as in write_bytes); buffer held for the copy.
            return unsafe { buf.copy_to(py, std::ptr::with_exposed_provenance_mut::<u8>(dst)) };
        };
        let _held = self.access(token(py)).py(py, self)?;
        let dst = self.stated_range(0, len).py(py, self)?;
        // SAFETY: both ranges checked; `copy` allows overlap.
        unsafe {
            std::ptr::copy(
                std::ptr::with_exposed_provenance::<u8>(from),
                std::ptr::with_exposed_provenance_mut::<u8>(dst),
                len,
            )
        };
        Ok(())
    }

    /// So that a ctypes foreign function accepts a Pointer: a ctypes pointer
    /// to its element type's ctypes type (`c_void_p` for Void).
    #[getter]
    fn _as_parameter_<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_alive(token(py)).py(py, self)?;
        crate::py::params::as_parameter(py, self)
    }

    /// The owning allocator (None for foreign or detached memory).
    #[getter]
    fn allocator(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self.owner.get() {
            Owned::Block(r) if r.state() != State::Detached => {
                crate::py::handles::owner_object(py, r)
            }
            Owned::Region(r) => crate::py::arena::region_object(py, r.region()),
            _ => py.None(),
        })
    }

    /// Not freed, released or reallocated.
    #[getter]
    fn alive(&self, py: Python<'_>) -> bool {
        self.check_alive(token(py)).is_ok()
    }

    /// True when the address is 0 (`nullptr`, a NULL read back from memory).
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
        let addr = address_arg(address)?;
        let ty = types::lookup(r#type)?;
        let p = from_stored_address(py, addr, ty, &Owner::UNOWNED)?;
        let Some(c) = count else {
            return Ok(p);
        };
        let c = usize_arg(c, "count")?;
        let n = c
            .checked_mul(ty.size.max(1))
            .filter(|n| addr.checked_add(*n).is_some() && *n <= isize::MAX as usize)
            .ok_or_else(|| {
                checked::error::<PyOverflowError>("count × size overflows the address space")
            })?;
        if let (Some(room), false) = (p.extent(), matches!(p.owner.get(), Owned::Unowned)) {
            if n > room {
                return Err(checked::error::<PyIndexError>(format!(
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
    fn detach(&self, py: Python<'_>) -> PyResult<Int> {
        match self.owner.get() {
            Owned::Block(r) => r.detach(self.addr, token(py)).py(py, self).map(Int::from),
            Owned::Region(_) => Err(self.err(py, Error::Ownership(Ownership::RegionCannotDetach))),
            Owned::Dependent(_) => Err(self.err(py, Error::Ownership(Ownership::Dependent))),
            Owned::Unowned => Err(self.err(py, Error::Ownership(Ownership::Foreign))),
        }
    }

    /// Frees the block when its last Python reference (pointer, view,
    /// export) is gone. Returns the pointer.
    fn autofree(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let this = slf.get();
        match this.owner.get() {
            Owned::Block(r) => r.set_autofree(token(slf.py())).py(slf.py(), this)?,
            // Region memory goes with its arena, never earlier: nothing to arm.
            Owned::Region(r) => r
                .check_access(this.addr, token(slf.py()))
                .py(slf.py(), this)?,
            Owned::Dependent(_) => {
                return Err(this.err(slf.py(), Error::Ownership(Ownership::Dependent)))
            }
            Owned::Unowned => return Err(this.err(slf.py(), Error::Ownership(Ownership::Foreign))),
        }
        Ok(slf)
    }

    fn __repr__(&self) -> Text<String> {
        let count = match self.count() {
            Some(n) => n.to_string(),
            None => "?".into(),
        };
        Text(format!(
            "<Pointer[{}] {:#x} count={} {} {}>",
            self.ty.name,
            self.addr,
            count,
            self.owner.name(),
            self.owner.state_name(self.addr)
        ))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Pointer>()
            .is_ok_and(|o| o.get().addr == self.addr)
    }

    fn __hash__(&self) -> u64 {
        self.addr as u64
    }

    /// Refuses: an address means nothing in another process (TypeError).
    fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(checked::error::<PyTypeError>(
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
            return Err(checked::error::<PyTypeError>(format!(
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
            return Err(checked::error::<PyBufferError>(
                "NULL view in __getbuffer__",
            ));
        }
        let Some(nbytes) = this.nbytes_usize() else {
            return Err(checked::error::<PyBufferError>(format!(
                "{}: unknown length, no buffer",
                this
            )));
        };
        this.check(token(py)).py(py, this)?;
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
                return Err(checked::error::<pyo3::exceptions::PyMemoryError>(
                    "no memory for a buffer shape",
                ));
            }
            // SAFETY: fresh memory for one isize.
            unsafe { p.write(len as isize) };
            p
        } else {
            std::ptr::null_mut()
        };
        if let Err(e) = this.owner.pin(this.addr, token(py)) {
            free_shape(shape);
            return Err(this.err(py, e));
        }
        // SAFETY: `view` is a valid Py_buffer to fill; the strides and
        // format pointers live in `this.ty` (static) or are static, the shape
        // is the export's own, and all stay valid while the export holds `obj`.
        unsafe {
            (*view).buf = std::ptr::with_exposed_provenance_mut(this.addr);
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
        // SAFETY: CPython releases a buffer with the GIL held (PyO3's
        // trampoline is attached around this call).
        let py = unsafe { Python::assume_attached() };
        self.owner.unpin(token(py));
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
        // Arithmetic on NULL is refused (DESIGN §3): `(q + 1)[0]` of a NULL
        // `q` would otherwise read address 4.
        self.check(token(py)).py(py, self)?;
        match self.span().offset_by(n) {
            Ok((addr, extent)) => Ok(self.view(addr, self.ty, extent, token(py))),
            Err(OffsetError::Outside { limit }) => Err(checked::error::<PyIndexError>(format!(
                "offset {n} outside 0..={} for {}",
                limit.map(|c| c.to_string()).unwrap_or_else(|| "∞".into()),
                self
            ))),
            Err(OffsetError::Overflow) => {
                Err(checked::error::<PyOverflowError>("address overflow"))
            }
        }
    }
}

/// The element offset `n` of `p + n` / `n + p`: an int, or an integer from
/// elsewhere (a numpy integer, anything with `__index__` but a float); None
/// for anything else, which is NotImplemented.
fn offset_operand(n: &Bound<'_, PyAny>) -> PyResult<Option<isize>> {
    if let Some(i) = exact_small_int(n) {
        return Ok(Some(isize::try_from(i).map_err(|_| {
            checked::error::<PyOverflowError>("offset out of range")
        })?));
    }
    // SAFETY: a plain object pointer; PyIndex_Check reads its type's slot.
    if n.is_instance_of::<PyInt>() || unsafe { ffi::PyIndex_Check(n.as_ptr()) } != 0 {
        return n.extract().map(Some);
    }
    Ok(None)
}

/// The index of the first NUL unit, scanning at most `limit` units.
///
/// # Safety
/// `addr` is readable for `limit` units, or up to a NUL when `limit` is None.
unsafe fn nul_position(addr: usize, unit: usize, limit: Option<usize>) -> usize {
    match (unit, limit) {
        (1, Some(n)) => unsafe {
            // SAFETY: the caller's contract: readable for `n` bytes.
            let hit = libc::memchr(
                std::ptr::with_exposed_provenance::<libc::c_void>(addr),
                0,
                n,
            );
            if hit.is_null() {
                n
            } else {
                hit.addr() - addr
            }
        },
        // SAFETY: the caller's contract: readable up to a NUL.
        (1, None) => unsafe {
            libc::strlen(std::ptr::with_exposed_provenance::<libc::c_char>(addr))
        },
        _ => {
            let mut i = 0;
            while limit.is_none_or(|l| i < l)
                // SAFETY: the caller's contract: unit `i` is readable (before the limit or the
                // NUL).
                && unsafe { std::ptr::with_exposed_provenance::<u16>(addr + 2 * i).read_unaligned() } != 0
            {
                i += 1;
            }
            i
        }
    }
}
