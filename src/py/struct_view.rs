//! `_StructView`, the base class of every `Struct` and `Union` class: a
//! view of one struct in native memory, holding a Pointer to its bytes.
//! The view objects themselves are made by `cpython::view_objects` (or,
//! with that trick off, by PyO3's constructor: `new_view`); the fields and
//! classes by `structs`.

use super::pointer::Pointer;
use crate::py::checked;
use crate::py::checked::Text;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use std::cell::RefCell;

/// The base of every `Struct` and `Union` class: a view of one struct in
/// native memory.
#[pyclass(subclass, frozen, module = "rsalloc", name = "_StructView")]
pub struct StructView {
    /// The struct's bytes: `extent` is its size, `ty` its TypeInfo.
    pub(crate) ptr: Pointer,
}

thread_local! {
    /// The Pointer the view `new_view` is making will hold.
    /// `ManuallyDrop`: no destructor to register on first use (see
    /// `python_allocator::CAUGHT`); None again once each view is made.
    static PENDING: std::mem::ManuallyDrop<RefCell<Option<Pointer>>> =
        const { std::mem::ManuallyDrop::new(RefCell::new(None)) };
}

/// A view of class `class` (a StructView subclass) over `ptr`, made by
/// PyO3's constructor (`_StructView.__new__(class)`), which allocates and
/// initialises an object of any subclass: the route when the fence's
/// `struct_views` trick is off.
pub(crate) fn new_view(py: Python<'_>, class: &Py<PyAny>, ptr: Pointer) -> PyResult<Py<PyAny>> {
    let base = StructView::type_object(py).as_type_ptr();
    // SAFETY: reading a slot of a ready type.
    let Some(tp_new) = (unsafe { (*base).tp_new }) else {
        return Err(checked::error::<PyTypeError>(
            "_StructView has no constructor",
        ));
    };
    PENDING.with(|p| *p.borrow_mut() = Some(ptr));
    // The base's tp_new with the subclass, as `_StructView.__new__(class)`
    // calls it, through the C API: PyO3's attribute lookup by a &str name
    // and its argument tuples panic when CPython cannot make the object,
    // and this runs when memory may be gone (a panic there aborts).
    // SAFETY: `class` is a StructView subclass (classify_composite checked
    // it), a ready type; the empty tuple is CPython's shared one.
    let made = unsafe {
        let args = pyo3::ffi::PyTuple_New(0);
        if args.is_null() {
            Err(PyErr::fetch(py))
        } else {
            let obj = tp_new(class.as_ptr().cast(), args, std::ptr::null_mut());
            pyo3::ffi::Py_DECREF(args);
            Bound::from_owned_ptr_or_err(py, obj)
        }
    };
    // Taken by `__new__` when it ran; dropped here when it did not.
    PENDING.with(|p| p.borrow_mut().take());
    Ok(made?.unbind())
}

#[pymethods]
impl StructView {
    /// Only `new_view` makes views this way: called from Python, nothing
    /// is pending and it raises.
    #[new]
    fn __new__() -> PyResult<Self> {
        match PENDING.with(|p| p.borrow_mut().take()) {
            Some(ptr) => Ok(StructView { ptr }),
            None => Err(checked::error::<PyTypeError>(
                "struct views are made by p.ref and p[i] of a struct Pointer, not constructed",
            )),
        }
    }

    fn __repr__(&self) -> Text<String> {
        Text(format!(
            "<{} view at {:#x} {} {}>",
            self.ptr.ty.name,
            self.ptr.addr,
            self.ptr.owner.name(),
            self.ptr.owner.state_name(self.ptr.addr)
        ))
    }

    fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(checked::error::<PyTypeError>(
            "struct views cannot be pickled: they are views of native memory",
        ))
    }
}
