//! `rsalloc.Pointer`: a typed, checked view of native memory (DESIGN §3).
//!
//! A Pointer is an address, an element type, the bytes reachable from it
//! (`extent`, None for foreign memory of unknown length) and an owner: the
//! shared allocation record when rsalloc allocated the block. Every access
//! checks the record's state first, so any view of a freed block raises.

use super::errors::{to_py, IntoPy};
pub use super::owner::{Owned, Owner};
use super::source::Source;
use super::types::{self, TypeInfo};
use super::values::{address_arg, exact_small_int, plain_number, to_value, usize_arg};
use crate::core::error::{Error, Ownership};
use crate::core::index::{self, Found};
use crate::core::record::State;
use crate::core::record_ref::RecordRef;
use crate::core::region::RegionRef;
use crate::core::types::{Kind, Value};
use pyo3::exceptions::{PyBufferError, PyIndexError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyList, PySlice, PyTuple};
use std::ffi::{c_int, CStr};
use std::fmt;

/// Keeps a block's memory for the length of one access. With the GIL, a
/// Python-level free cannot run between the liveness check and the read or
/// write, and this is nothing. Without it (a free-threaded interpreter), it
/// pins the block like a buffer export: a racing free makes the block dead
/// at once but its memory stays until the access ends. `--cfg
/// rsalloc_pin_access` turns it on under the GIL too, to test it.
///
/// An access takes it after converting its arguments and runs no Python
/// code while holding it; an operation that must run Python code between
/// its check and its memory touch holds a [`Pinned`] instead.
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

/// Holds a block's memory, in every build, through an operation that runs
/// Python code between its check and its last memory touch (building the
/// elements of a slice, a codec error handler): a pin like a buffer
/// export's. A free meanwhile makes the block dead at once, and its memory
/// stays until the operation ends; the operation re-checks liveness after
/// each piece of Python code.
pub struct Pinned<'a>(&'a Owner);

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.0.unpin();
    }
}

/// A typed, checked view of native memory (DESIGN §3): an address, an
/// element type and, when known, a count of elements. `Pointer[T]` is also
/// the annotation for one.
///
/// Pointers come from an allocator (`calloc(Int32, 4)`, `arena(Uint8, 64)`),
/// from `to_native_utf8`, or from `Pointer.from_address(addr, T, count)`
/// (a view of foreign memory). `p[i]`, `p[i:j]`, `p.value`, `p + n`,
/// `p.cast(T)`, `p.read_bytes()` and `p.to_str()` are bounds-checked; after
/// its block is freed, reallocated or released, every access through p or a
/// view of it raises `UseAfterFreeError`.
/// `memoryview(p)` and `numpy.asarray(p)` share the memory (and pin it), and
/// a Pointer can be passed straight to a ctypes foreign function.
/// `p.detach()` hands the block to C; `p.autofree()` lets the garbage
/// collector free it.
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
    pub(crate) fn view(&self, addr: usize, ty: &'static TypeInfo, extent: Option<usize>) -> Self {
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

    /// Checks the view and pins its memory until the guard drops (see [`Pinned`]).
    pub fn pinned(&self) -> Result<Pinned<'_>, Error> {
        self.check()?;
        self.owner.pin(self.addr)?;
        Ok(Pinned(&self.owner))
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
    pub(crate) fn elem_addr(&self, i: isize) -> Result<usize, Error> {
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

    /// A byte range the caller states (`read_bytes(n)`, `to_str(length)`,
    /// the length of a copy's source): checked against the view where its
    /// extent is known; on a view of unknown extent taken as stated, as
    /// `ctypes.string_at(addr, n)` does, as long as it stays in the address space.
    pub(crate) fn stated_range(&self, offset: usize, len: usize) -> Result<usize, Error> {
        if self.extent != UNKNOWN {
            return self.byte_range(offset, len);
        }
        self.check()?;
        offset
            .checked_add(len)
            .filter(|&end| end <= isize::MAX as usize && self.addr.checked_add(end).is_some())
            .map(|_| self.addr + offset)
            .ok_or(Error::RangeOutOfBounds {
                offset,
                len,
                extent: 0,
            })
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
            // foreign, whose reads are the caller's responsibility).
            return number_object(unsafe { self.ty.kind.read(addr) });
        }
        None
    }

    /// `self[start::step]` of `len` numeric elements, as a list, in one
    /// pass. The list is made first: its allocation may start the cycle
    /// collector, and so Python code. Then the block is pinned and checked,
    /// and every element read: an int or a float is made without running
    /// Python code, so nothing can free the block in between, and nothing
    /// is appended one by one (the list has its length from the start).
    fn number_slice(
        &self,
        py: Python<'_>,
        start: isize,
        step: isize,
        len: usize,
    ) -> PyResult<Py<PyAny>> {
        // SAFETY: a new list of `len` empty (NULL) slots, or NULL with an
        // exception set; a list with NULL slots is valid to drop.
        let list = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyList_New(len as isize))? };
        let _held = self.pinned().py(py, self)?;
        let first = self.addr + start as usize * self.ty.size;
        let stride = step * self.ty.size as isize;
        let out = list.as_ptr();
        use std::ffi::{c_long, c_ulong};
        // One loop per element type, so the read and the conversion are not
        // chosen again for every element.
        // SAFETY (every arm): slice_bounds checked that the `len` elements
        // from `first` by `stride` lie in the view, `pinned` that the block is
        // live, and no Python code has run since; the list has `len` slots.
        let filled = unsafe {
            match self.ty.kind {
                Kind::I8 => fill_list(out, first, stride, len, |v: i8| {
                    ffi::PyLong_FromLong(v as c_long)
                }),
                Kind::I16 => fill_list(out, first, stride, len, |v: i16| {
                    ffi::PyLong_FromLong(v as c_long)
                }),
                Kind::I32 => fill_list(out, first, stride, len, |v: i32| {
                    ffi::PyLong_FromLong(v as c_long)
                }),
                Kind::U8 => fill_list(out, first, stride, len, |v: u8| {
                    ffi::PyLong_FromLong(v as c_long)
                }),
                Kind::U16 => fill_list(out, first, stride, len, |v: u16| {
                    ffi::PyLong_FromLong(v as c_long)
                }),
                Kind::U32 => fill_list(out, first, stride, len, |v: u32| {
                    ffi::PyLong_FromUnsignedLong(v as c_ulong)
                }),
                Kind::F32 => fill_list(out, first, stride, len, |v: f32| {
                    ffi::PyFloat_FromDouble(v as f64)
                }),
                Kind::F64 => {
                    fill_list(out, first, stride, len, |v: f64| ffi::PyFloat_FromDouble(v))
                }
                Kind::I64 | Kind::IntPtr => fill_list(out, first, stride, len, |v: i64| {
                    ffi::PyLong_FromLongLong(v)
                }),
                Kind::U64 | Kind::Size => fill_list(out, first, stride, len, |v: u64| {
                    ffi::PyLong_FromUnsignedLongLong(v)
                }),
                Kind::Bool => fill_list(out, first, stride, len, |v: u8| {
                    ffi::Py_NewRef(if v != 0 {
                        ffi::Py_True()
                    } else {
                        ffi::Py_False()
                    })
                }),
                Kind::Ptr | Kind::Void | Kind::Opaque => {
                    unreachable!("number_slice of {:?}", self.ty.kind)
                }
            }
        };
        if !filled {
            return Err(PyErr::fetch(py));
        }
        Ok(list.into_any().unbind())
    }

    /// `self[start::step] = values` from an exact list or tuple of plain
    /// numbers (`plain_number`): every value converted before anything is
    /// written, none of them running Python code, so a bad one changes
    /// nothing and no Python code runs between the check and the writes.
    /// None when the sequence is anything else, or holds anything else:
    /// the general path then converts (and may refuse) it.
    fn write_number_slice(
        &self,
        py: Python<'_>,
        start: isize,
        step: isize,
        len: usize,
        v: &Bound<'_, PyAny>,
    ) -> Option<PyResult<()>> {
        let kind = self.ty.kind;
        if !kind.is_number() {
            return None;
        }
        let items: &[*mut ffi::PyObject] = if let Ok(l) = v.cast_exact::<PyList>() {
            // SAFETY: an exact list; no Python code runs while the slice is
            // used, so the list cannot change under it.
            unsafe {
                let l = l.as_ptr().cast::<ffi::PyListObject>();
                std::slice::from_raw_parts((*l).ob_item, ffi::PyList_GET_SIZE(l.cast()) as usize)
            }
        } else if let Ok(t) = v.cast_exact::<PyTuple>() {
            // SAFETY: an exact tuple, immutable.
            unsafe {
                let t = t.as_ptr().cast::<ffi::PyTupleObject>();
                std::slice::from_raw_parts(
                    (*t).ob_item.as_ptr(),
                    ffi::PyTuple_GET_SIZE(t.cast()) as usize,
                )
            }
        } else {
            return None;
        };
        if items.len() != len {
            return Some(Err(slice_length_error(items.len(), len)));
        }
        let mut values = Vec::new();
        if values.try_reserve_exact(len).is_err() {
            return Some(Err(pyo3::exceptions::PyMemoryError::new_err(
                "no memory to convert a slice assignment",
            )));
        }
        for &item in items {
            // SAFETY: a borrowed reference from the sequence, alive while it is.
            let item = unsafe { Bound::from_borrowed_ptr(py, item) };
            values.push(plain_number(kind, &item)?);
        }
        Some((|| {
            let _held = self.pinned().py(py, self)?;
            for (k, value) in values.into_iter().enumerate() {
                let addr = self.addr + (start + k as isize * step) as usize * self.ty.size;
                // SAFETY: slice_bounds checked the range, `pinned` the block;
                // nothing ran since.
                unsafe { kind.write(addr, value) };
            }
            Ok(())
        })())
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
                        let p = from_stored_address(py, a, target)?;
                        super::freelist::new_object(py, p)?.into_any().unbind()
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
        let Some(value) = plain_number(kind, v) else {
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

    /// `self[i] = v`. The value is converted before the block is checked
    /// and held for the write: a conversion can run Python code
    /// (`__index__`, `__float__`, an `__instancecheck__`) that frees the block.
    pub(crate) fn write(&self, py: Python<'_>, i: isize, v: &Bound<'_, PyAny>) -> PyResult<()> {
        let kind = self.ty.kind;
        self.elem_addr(i).py(py, self)?; // bounds and liveness first: IndexError before TypeError
        let value = match kind {
            Kind::Void => return Err(self.element_type_error()),
            Kind::Opaque => return self.write_instance(py, i, v),
            _ => to_value(kind, self.ty, v)?,
        };
        let _held = self.access().py(py, self)?;
        let addr = self.elem_addr(i).py(py, self)?;
        // SAFETY: checked live and in bounds with no Python code run since.
        unsafe { kind.write(addr, value) };
        Ok(())
    }

    /// `self[i] = v` of a Pointer or None into a pointer slot: converting
    /// either runs no Python code, so one check of the slot serves (`write`
    /// checks before and after a conversion that might). The same errors,
    /// in the same order, as `write`.
    pub(crate) fn write_address(
        &self,
        py: Python<'_>,
        i: isize,
        v: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        debug_assert!(self.ty.kind == Kind::Ptr && (v.is_none() || v.cast::<Pointer>().is_ok()));
        let _held = self.access().py(py, self)?;
        let addr = self.elem_addr(i).py(py, self)?;
        let value = to_value(Kind::Ptr, self.ty, v)?;
        // SAFETY: checked live and in bounds; the conversion ran no Python code.
        unsafe { Kind::Ptr.write(addr, value) };
        Ok(())
    }

    /// An instance of the ctypes aggregate type living at `addr` (it pins
    /// the block), or the view of an rsalloc Struct or Array there.
    fn instance_at(&self, py: Python<'_>, addr: usize) -> PyResult<Py<PyAny>> {
        if let Some(view) = super::structs::composite_at(py, self, addr, self.ty) {
            return view;
        }
        let one = Py::new(py, self.view(addr, self.ty, Some(self.ty.size)))?;
        Ok(self
            .ty
            .class
            .bind(py)
            .call_method1("from_buffer", (one,))?
            .unbind())
    }

    fn write_instance(&self, py: Python<'_>, i: isize, v: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Some(done) = super::structs::write_composite(py, self, i, v) {
            return done;
        }
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
            // The bounds ran the slice's __index__ methods; building the
            // elements may run more Python code (from_buffer of an aggregate,
            // a collection): pinned, and re-checked before every element.
            let (start, step, len) = self.slice_bounds(py, s)?;
            if self.ty.kind.is_number() {
                return self.number_slice(py, start, step, len);
            }
            let _held = self.pinned().py(py, self)?;
            let items = PyList::empty(py);
            for k in 0..len as isize {
                self.check().py(py, self)?;
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
        if !self.ty.ctypes && matches!(self.ty.composite, types::Composite::No) {
            return Err(PyTypeError::new_err(format!(
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
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if let Some(d) = dtype {
            let np = py.import("numpy")?;
            let kind = np.call_method1("dtype", (d,))?.getattr("kind")?;
            if kind.eq("O")? {
                let empty = PyTuple::empty(py);
                let one = np.call_method1("empty", (&empty, "O"))?;
                one.set_item(empty, slf)?;
                return Ok(one);
            }
        }
        let mv = pyo3::types::PyMemoryView::from(slf.as_any())?;
        let kwargs = pyo3::types::PyDict::new(py);
        if let Some(d) = dtype {
            kwargs.set_item("dtype", d)?;
        }
        if let Some(c) = copy {
            kwargs.set_item("copy", c)?;
        }
        py.import("numpy")?
            .getattr("asarray")?
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
            (Some(n), None) => Ok(self.view(at.addr, self.ty, Some(n))),
            (Some(n), Some(e)) if n <= e => Ok(self.view(at.addr, self.ty, Some(n))),
            (_, Some(_)) => Err(PyIndexError::new_err(format!(
                "view of {count} elements from {start} outside {self}"
            ))),
            (None, None) => Err(PyOverflowError::new_err(
                "count × size overflows the address space",
            )),
        }
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
        // Arguments first: `length.__index__` may free the block.
        let length = length.map(|l| usize_arg(l, "length")).transpose()?;
        // NULL means "strict" to CPython's decoders: no C string to build.
        let errors = match errors {
            "strict" => None,
            e => Some(
                std::ffi::CString::new(e).map_err(|_| PyValueError::new_err("bad errors value"))?,
            ),
        };
        // Any other handler may be a Python function, run by the decoder
        // while it reads: the memory is pinned for it.
        let _pinned = match errors {
            Some(_) => Some(self.pinned().py(py, self)?),
            None => None,
        };
        self.check().py(py, self)?;
        let _held = self.access().py(py, self)?;
        let units = match length {
            Some(l) => {
                self.stated_range(
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
        let s = unsafe { Bound::from_owned_ptr_or_err(py, s) }?;
        // A handler that freed the block made the rest of the text stale.
        self.check().py(py, self)?;
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
            None => self
                .nbytes_usize()
                .ok_or_else(|| PyTypeError::new_err(format!("read_bytes() of {}: pass n", self)))?,
        };
        let _held = self.access().py(py, self)?;
        let addr = self.stated_range(0, n).py(py, self)?;
        // SAFETY: checked range (or stated on a view of unknown length).
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
        // Arguments first (`__index__`, `__buffer__` may free the block).
        let offset = offset.map_or(Ok(0), |o| usize_arg(o, "offset"))?;
        let src = Source::get(data, "write_bytes() takes a bytes-like object")?;
        let _held = self.access().py(py, self)?;
        let dst = self.stated_range(offset, src.len()).py(py, self)?;
        // SAFETY: checked destination (or stated by the source's length on a
        // view of unknown length); the source is held for the copy.
        unsafe { src.copy_to(py, dst as *mut u8) }
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
            let buf = Source::get(src, "copy_from() takes a Pointer or a bytes-like object")?;
            let _held = self.access().py(py, self)?;
            let dst = self.stated_range(0, buf.len()).py(py, self)?;
            // SAFETY: checked destination (as in write_bytes); buffer held for the copy.
            return unsafe { buf.copy_to(py, dst as *mut u8) };
        };
        let _held = self.access().py(py, self)?;
        let dst = self.stated_range(0, len).py(py, self)?;
        // SAFETY: both ranges checked; `copy` allows overlap.
        unsafe { std::ptr::copy(from as *const u8, dst as *mut u8, len) };
        Ok(())
    }

    /// So that a ctypes foreign function accepts a Pointer: a ctypes pointer
    /// to its element type's ctypes type (`c_void_p` for Void).
    #[getter]
    fn _as_parameter_<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_alive().py(py, self)?;
        super::params::as_parameter(py, self)
    }

    /// The owning allocator (None for foreign or detached memory).
    #[getter]
    fn allocator(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self.owner.get() {
            Owned::Block(r) if r.state() != State::Detached => {
                super::allocator::owner_object(py, r)
            }
            Owned::Region(r) => super::arena::region_object(py, r.region()),
            _ => py.None(),
        })
    }

    /// Not freed, released or reallocated.
    #[getter]
    fn alive(&self) -> bool {
        self.check_alive().is_ok()
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

    /// Refuses: an address means nothing in another process (TypeError).
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
        // Arithmetic on NULL is refused (DESIGN §3): `(q + 1)[0]` of a NULL
        // `q` would otherwise read address 4.
        self.check().py(py, self)?;
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

/// The element offset `n` of `p + n` / `n + p`: an int, or an integer from
/// elsewhere (a numpy integer, anything with `__index__` but a float); None
/// for anything else, which is NotImplemented.
fn offset_operand(n: &Bound<'_, PyAny>) -> PyResult<Option<isize>> {
    if let Some(i) = exact_small_int(n) {
        return Ok(Some(
            isize::try_from(i).map_err(|_| PyOverflowError::new_err("offset out of range"))?,
        ));
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

/// The object for a numeric element's value, as a new reference (NULL with
/// an exception set when CPython is out of memory); None for an address.
/// Makes an int, a float or a bool: no Python code runs.
#[inline(always)]
fn number_object(v: Value) -> Option<*mut ffi::PyObject> {
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

fn slice_length_error(got: usize, len: usize) -> PyErr {
    PyValueError::new_err(format!(
        "slice assignment of {got} values to {len} elements"
    ))
}

/// Fills the `len` empty slots of a new list with `make` of the elements at
/// `first`, `first + stride`, ...; false (with the exception set) when
/// `make` returns NULL.
///
/// # Safety
/// `list` is a new list of `len` empty slots; every element address is
/// readable as a `T`; `make` returns a new reference or NULL with an
/// exception set, and runs no Python code.
#[inline(always)]
unsafe fn fill_list<T: Copy>(
    list: *mut ffi::PyObject,
    first: usize,
    stride: isize,
    len: usize,
    make: impl Fn(T) -> *mut ffi::PyObject,
) -> bool {
    let mut at = first as isize;
    for k in 0..len {
        // SAFETY: the caller's contract.
        let o = make(unsafe { (at as *const T).read_unaligned() });
        if o.is_null() {
            return false;
        }
        // SAFETY: k < len, an empty slot taking the new reference.
        unsafe { ffi::PyList_SET_ITEM(list, k as isize, o) };
        at += stride;
    }
    true
}
