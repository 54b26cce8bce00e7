//! The Python side of a core allocator or arena, kept in its `handle` cell:
//! the Python object (a weak reference, for `Pointer.allocator`) and the
//! callbacks of a Python-defined backend. Who owns a record, as a Python
//! object, is answered here.

use super::python_allocator::{catching_free_errors, PyCallbacks};
use crate::core::alloc::AllocCore;
use crate::core::record::Record;
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;
use std::any::Any;
use std::sync::{Arc, OnceLock};

/// The Python object of each allocator core or arena, for
/// `Pointer.allocator` (a weak reference: records must not keep their
/// owner's wrapper alive), and the Python functions of a Python-defined
/// backend.
pub(crate) struct Handle {
    pub(crate) weak: OnceLock<Py<PyWeakrefReference>>,
    pub(crate) callbacks: Option<Arc<PyCallbacks>>,
}

pub(crate) type HandleCell = OnceLock<Box<dyn Any + Send + Sync>>;

pub(crate) fn handle(cell: &HandleCell) -> Option<&Handle> {
    cell.get().and_then(|h| h.downcast_ref::<Handle>())
}

/// Sets the handle of a new core or arena (once): its Python object, when
/// known yet, and the callbacks of a Python-defined backend.
pub(crate) fn set_handle(
    cell: &HandleCell,
    obj: Option<&Bound<'_, PyAny>>,
    callbacks: Option<Arc<PyCallbacks>>,
) -> PyResult<()> {
    let weak = OnceLock::new();
    if let Some(obj) = obj {
        let _ = weak.set(PyWeakrefReference::new(obj)?.unbind());
    }
    let _ = cell.set(Box::new(Handle { weak, callbacks }));
    Ok(())
}

pub fn handle_callbacks(core: &AllocCore) -> Option<&Arc<PyCallbacks>> {
    handle(&core.handle)?.callbacks.as_ref()
}

/// The Python object remembered in `cell`, None when gone.
pub(crate) fn handle_object(py: Python<'_>, cell: &HandleCell) -> Py<PyAny> {
    handle(cell)
        .and_then(|h| h.weak.get())
        .and_then(|w| w.bind(py).upgrade())
        .map(Bound::unbind)
        .unwrap_or_else(|| py.None())
}

/// The owner of a record: its arena while one owns it, else its allocator.
pub fn owner_object(py: Python<'_>, rec: &Record) -> Py<PyAny> {
    match rec.arena_tag() {
        Some(tag) => handle_object(py, &tag.handle),
        None => handle_object(py, &rec.allocator().handle),
    }
}

/// Runs `f`, a free through `core`; an exception raised by a Python free
/// function during it becomes the result.
pub fn raising_free_errors(
    py: Python<'_>,
    core: &AllocCore,
    f: impl FnOnce() -> PyResult<()>,
) -> PyResult<()> {
    if handle_callbacks(core).is_none() {
        return f();
    }
    catching_free_errors(py, f)
}
