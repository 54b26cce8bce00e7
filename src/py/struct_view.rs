//! `_StructView`, the base class of every `Struct` and `Union` class: a
//! view of one struct in native memory, holding a Pointer to its bytes.
//! The view objects themselves are made by `cpython::view_objects`; the
//! fields and classes by `structs`.

use super::pointer::Pointer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

/// The base of every `Struct` and `Union` class: a view of one struct in
/// native memory.
#[pyclass(subclass, frozen, module = "rsalloc", name = "_StructView")]
pub struct StructView {
    /// The struct's bytes: `extent` is its size, `ty` its TypeInfo.
    pub(crate) ptr: Pointer,
}

#[pymethods]
impl StructView {
    fn __repr__(&self) -> String {
        format!(
            "<{} view at {:#x} {} {}>",
            self.ptr.ty.name,
            self.ptr.addr,
            self.ptr.owner.name(),
            self.ptr.owner.state_name(self.ptr.addr)
        )
    }

    fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "struct views cannot be pickled: they are views of native memory",
        ))
    }
}
