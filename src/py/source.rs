//! Bytes-like sources of bulk copies (`write_bytes`, `copy_from`), taken as
//! they are (DESIGN §6): a non-contiguous or negative-stride buffer
//! (`memoryview(b)[::2]`, a numpy column, a reversed array) is gathered
//! element by element in C order, as `bytes(src)` would be, never read as if
//! its bytes were contiguous.

use crate::py::checked;
use pyo3::exceptions::{PyMemoryError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use std::mem::MaybeUninit;

/// A buffer export of a source object, released on drop.
pub struct Source {
    /// Boxed: an exporter may point `shape` into the `Py_buffer` itself
    /// (`PyBuffer_FillInfo` does), so it must not move while exported.
    view: Box<ffi::Py_buffer>,
}

impl Source {
    /// The buffer of `obj`. Getting it may run Python code (a `__buffer__`
    /// method): call it before checking the destination. `what` names the
    /// what it takes, for the error of an object that is no buffer at all.
    pub fn get(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Source> {
        // SAFETY: a plain object pointer; CheckBuffer runs no code.
        if unsafe { ffi::PyObject_CheckBuffer(obj.as_ptr()) } == 0 {
            return Err(checked::error::<PyTypeError>(format!(
                "{what}, not {}",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            )));
        }
        let mut view: Box<MaybeUninit<ffi::Py_buffer>> = Box::new(MaybeUninit::zeroed());
        // SAFETY: `view` is writable storage for one Py_buffer; FULL_RO
        // accepts every layout (strides, suboffsets), which `copy_to` handles.
        let rc =
            unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_FULL_RO) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: filled by a successful PyObject_GetBuffer; MaybeUninit<T>
        // has T's layout.
        let view = unsafe { Box::from_raw(Box::into_raw(view).cast::<ffi::Py_buffer>()) };
        Ok(Source { view })
    }

    /// The source's length in bytes.
    pub fn len(&self) -> usize {
        self.view.len as usize
    }

    /// Whether the source has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the source's bytes, in C order, to `dst`. No Python code runs.
    ///
    /// # Safety
    /// `dst` is writable for `self.len()` bytes; it may overlap the source.
    pub unsafe fn copy_to(&self, py: Python<'_>, dst: *mut u8) -> PyResult<()> {
        let len = self.len();
        if len == 0 {
            // An empty export may have no address at all.
            return Ok(());
        }
        let view: *const ffi::Py_buffer = &*self.view;
        // SAFETY: a buffer this Source holds exported.
        if unsafe { ffi::PyBuffer_IsContiguous(view, b'C' as _) } != 0 {
            // SAFETY: a C-contiguous export spans `len` bytes from `buf`;
            // `copy` allows overlap.
            unsafe { std::ptr::copy(self.view.buf as *const u8, dst, len) };
            return Ok(());
        }
        // Gathered into a scratch block first: the destination may be the
        // memory the source's elements are scattered over.
        let mut tmp: Vec<u8> = Vec::new();
        tmp.try_reserve_exact(len).map_err(|_| {
            checked::error::<PyMemoryError>("no memory to gather a non-contiguous buffer")
        })?;
        // SAFETY: tmp has room for len bytes; PyBuffer_ToContiguous follows
        // the export's shape, strides and suboffsets (negative strides
        // included) and writes exactly len bytes.
        unsafe {
            if ffi::PyBuffer_ToContiguous(tmp.as_mut_ptr().cast(), view, len as isize, b'C' as _)
                != 0
            {
                return Err(PyErr::fetch(py));
            }
            tmp.set_len(len);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, len);
        }
        Ok(())
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: exported by `get`, released once; a Source lives within
        // one call made with the GIL (or an attached thread state).
        unsafe { ffi::PyBuffer_Release(&mut *self.view) }
    }
}
