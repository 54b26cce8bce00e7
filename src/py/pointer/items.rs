//! Element access of a Pointer: reading and writing one element or a
//! slice, converting between native values and Python objects (numbers,
//! pointers, struct views), and index parsing.

use super::{from_stored_address, Pointer};
use crate::core::types::{Kind, Value};
use crate::py::checked;
use crate::py::cpython::freelist::new_object;
use crate::py::errors::IntoPy;
use crate::py::serialized::token;
use crate::py::types::{self};
use crate::py::values::{exact_small_int, plain_number, to_value};
use pyo3::exceptions::{PyIndexError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PySlice, PyTuple};

impl Pointer {
    pub(super) fn element_type_error(&self) -> PyErr {
        checked::error::<PyTypeError>(format!("{} has no elements to index", self.ty.name))
    }

    /// `self[i]` of a live, in-range numeric element, as a new reference
    /// (null with the exception set if CPython is out of memory); None for
    /// anything else, which `item` then serves or raises. The fast entry
    /// point's case in one frame: `item` and `read` stay out of line, and
    /// their calls and `PyResult`s cost ~15 % of `p[i]` (callgrind).
    #[inline(always)]
    #[cfg_attr(
        not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
        allow(dead_code)
    )]
    pub(crate) fn plain_item(&self, i: isize) -> Option<*mut ffi::PyObject> {
        let _held = self.access(None).ok()?;
        let addr = self.elem_addr(i).ok()?;
        if self.ty.kind.is_number() {
            // SAFETY: elem_addr checked liveness and bounds (or the view is
            // foreign, whose reads are the caller's responsibility).
            return checked::number_ptr(unsafe { self.ty.kind.read(addr) });
        }
        None
    }

    /// `self[start::step]` of `len` numeric elements, as a list, in one
    /// pass. The list is made first: its allocation may start the cycle
    /// collector, and so Python code. Then the block is pinned and checked,
    /// and every element read: an int or a float is made without running
    /// Python code, so nothing can free the block in between, and nothing
    /// is appended one by one (the list has its length from the start).
    pub(super) fn number_slice(
        &self,
        py: Python<'_>,
        start: isize,
        step: isize,
        len: usize,
    ) -> PyResult<Py<PyAny>> {
        let list = checked::empty_list(py, len)?;
        let _held = self.pinned(token(py)).py(py, self)?;
        let first = self.addr + start as usize * self.ty.size;
        let stride = step * self.ty.size as isize;
        let out = list.as_ptr();
        use std::ffi::c_ulong;
        // One loop per element type, so the read and the conversion are not
        // chosen again for every element.
        // SAFETY: (every arm) slice_bounds checked that the `len` elements
        // from `first` by `stride` lie in the view, `pinned` that the block is
        // live, and no Python code has run since; the list has `len` slots.
        let filled = unsafe {
            match self.ty.kind {
                Kind::I8 => fill_list(out, first, stride, len, long::<i8>),
                Kind::I16 => fill_list(out, first, stride, len, long::<i16>),
                Kind::I32 => fill_list(out, first, stride, len, long::<i32>),
                Kind::U8 => fill_list(out, first, stride, len, long::<u8>),
                Kind::U16 => fill_list(out, first, stride, len, long::<u16>),
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
    pub(super) fn write_number_slice(
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
            return Some(Err(checked::error::<pyo3::exceptions::PyMemoryError>(
                "no memory to convert a slice assignment",
            )));
        }
        for &item in items {
            // SAFETY: a borrowed reference from the sequence, alive while it is.
            let item = unsafe { Bound::from_borrowed_ptr(py, item) };
            values.push(plain_number(kind, &item)?);
        }
        Some((|| {
            let _held = self.pinned(token(py)).py(py, self)?;
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
        let _held = self.access(token(py)).py(py, self)?;
        let addr = self.elem_addr(i).py(py, self)?;
        self.read(py, addr)
    }

    pub(super) fn read(&self, py: Python<'_>, addr: usize) -> PyResult<Py<PyAny>> {
        let kind = self.ty.kind;
        match kind {
            Kind::Void => Err(self.element_type_error()),
            Kind::Opaque => self.instance_at(py, addr),
            _ => {
                // SAFETY: elem_addr checked liveness and bounds (or the view is
                // foreign, whose reads are the caller's responsibility).
                match unsafe { kind.read(addr) } {
                    Value::Addr(a) => {
                        let target = self.ty.target.expect("pointer slots have a target");
                        let p = from_stored_address(py, a, target, &self.owner)?;
                        Ok(new_object(py, p)?.into_any().unbind())
                    }
                    v => checked::value(py, v),
                }
            }
        }
    }

    /// `self[i] = v` of an exact int into a live, in-range integer element
    /// whose range holds it, or of an exact float into a floating one; false
    /// for anything else, which `write` then serves or raises. As
    /// `plain_item`, for the fast entry point: no Python code runs here.
    #[inline(always)]
    #[cfg_attr(
        not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
        allow(dead_code)
    )]
    pub(crate) fn plain_write(&self, i: isize, v: &Bound<'_, PyAny>) -> bool {
        let kind = self.ty.kind;
        let Some(value) = plain_number(kind, v) else {
            return false;
        };
        let Some(_held) = self.access(None).ok() else {
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
        let _held = self.access(token(py)).py(py, self)?;
        let addr = self.elem_addr(i).py(py, self)?;
        // SAFETY: checked live and in bounds with no Python code run since.
        unsafe { kind.write(addr, value) };
        Ok(())
    }

    /// `self[i] = v` of a Pointer (`Some`) or None into a pointer slot:
    /// converting either runs no Python code, so one check of the slot
    /// serves (`write` checks before and after a conversion that might).
    /// The same errors, in the same order, as `write` (`to_value`'s).
    #[cfg_attr(
        not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
        allow(dead_code)
    )]
    #[inline(always)]
    pub(crate) fn write_address(
        &self,
        py: Python<'_>,
        i: isize,
        v: Option<&Pointer>,
    ) -> PyResult<()> {
        debug_assert!(self.ty.kind == Kind::Ptr);
        let _held = self.access(token(py)).py(py, self)?;
        let addr = self.elem_addr(i).py(py, self)?;
        let value = match v {
            None => 0,
            Some(q) => {
                q.check_alive(token(py)).py(py, q)?;
                q.addr
            }
        };
        // SAFETY: checked live and in bounds; nothing ran since.
        unsafe { Kind::Ptr.write(addr, Value::Addr(value)) };
        Ok(())
    }

    /// An instance of the ctypes aggregate type living at `addr` (it pins
    /// the block), or the view of an rsalloc Struct or Array there.
    pub(super) fn instance_at(&self, py: Python<'_>, addr: usize) -> PyResult<Py<PyAny>> {
        if let Some(view) = super::composites().and_then(|c| (c.at)(py, self, addr, self.ty)) {
            return view;
        }
        let one = Py::new(py, self.view(addr, self.ty, Some(self.ty.size), token(py)))?;
        Ok(self
            .ty
            .class
            .bind(py)
            .call_method1(checked::name!("from_buffer"), (one,))?
            .unbind())
    }

    pub(super) fn write_instance(
        &self,
        py: Python<'_>,
        i: isize,
        v: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if let Some(done) = super::composites().and_then(|c| (c.write)(py, self, i, v)) {
            return done;
        }
        if !v.is_instance(self.ty.class.bind(py))? {
            return Err(checked::error::<PyTypeError>(format!(
                "expected a {} instance, got {}",
                self.ty.name,
                v.get_type().name()?
            )));
        }
        let src = types::ctypes(py)?
            .call_method1(checked::name!("addressof"), (v,))?
            .extract::<usize>()?;
        let _held = self.access(token(py)).py(py, self)?;
        let addr = self.elem_addr(i).py(py, self)?;
        // SAFETY: both regions hold ty.size bytes (a ctypes instance of the
        // type, which `v` keeps alive; a slot checked just now).
        unsafe {
            std::ptr::copy(
                std::ptr::with_exposed_provenance::<u8>(src),
                std::ptr::with_exposed_provenance_mut::<u8>(addr),
                self.ty.size,
            )
        };
        Ok(())
    }

    #[inline]
    pub(crate) fn index(&self, idx: &Bound<'_, PyAny>) -> PyResult<isize> {
        if let Some(i) = exact_small_int(idx) {
            return Ok(i as isize);
        }
        idx.extract::<isize>().map_err(|e| {
            if e.is_instance_of::<PyOverflowError>(idx.py()) {
                checked::error::<PyIndexError>("index out of range")
            } else {
                checked::error::<PyTypeError>(format!(
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
    pub(super) fn slice_bounds(
        &self,
        py: Python<'_>,
        s: &Bound<'_, PySlice>,
    ) -> PyResult<(isize, isize, usize)> {
        let n = self.count().ok_or_else(|| {
            checked::error::<PyTypeError>(format!("cannot slice {}: its count is unknown", self))
        })?;
        self.check(token(py)).py(py, self)?;
        let ind = s.indices(n as isize)?;
        Ok((ind.start, ind.step, ind.slicelength))
    }
}

/// The object for a numeric element's value, as a new reference (NULL with
/// an exception set when CPython is out of memory); None for an address.
/// Makes an int, a float or a bool: no Python code runs.
/// An element that fits a C long, as an int: a new reference or NULL with
/// the exception set (`fill_list`'s `make`).
#[inline(always)]
fn long<T: Into<std::ffi::c_long>>(v: T) -> *mut ffi::PyObject {
    // SAFETY: a plain constructor.
    unsafe { ffi::PyLong_FromLong(v.into()) }
}

pub(super) fn slice_length_error(got: usize, len: usize) -> PyErr {
    checked::error::<PyValueError>(format!(
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
pub(super) unsafe fn fill_list<T: Copy>(
    list: *mut ffi::PyObject,
    first: usize,
    stride: isize,
    len: usize,
    make: impl Fn(T) -> *mut ffi::PyObject,
) -> bool {
    let mut at = first as isize;
    for k in 0..len {
        // SAFETY: the caller's contract.
        let o =
            make(unsafe { std::ptr::with_exposed_provenance::<T>(at as usize).read_unaligned() });
        if o.is_null() {
            return false;
        }
        // SAFETY: k < len, an empty slot taking the new reference.
        unsafe { ffi::PyList_SET_ITEM(list, k as isize, o) };
        at += stride;
    }
    true
}
