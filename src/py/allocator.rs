//! `rsalloc.Allocator`, the module-level `malloc` and `calloc`, and the
//! top-level `free` (DESIGN §4). The rules live in `core::alloc` and
//! `core::record`; this file parses arguments and builds Pointers.

use super::errors::IntoPy;
use super::pointer::{usize_arg, Owner, Pointer};
use super::stats::Stats;
use super::types::{self, TypeInfo};
use crate::core::alloc::{AllocCore, Libc, LIBC_GROUP};
use crate::core::error::{Error, Ownership};
use crate::core::layout::{self, Request};
use crate::core::record::Record;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyWeakrefReference;
use std::sync::Arc;

#[pyclass(frozen, subclass, weakref, module = "rsalloc", name = "Allocator")]
pub struct Allocator {
    pub core: Arc<AllocCore>,
}

/// The Python object of each allocator core, for `Pointer.allocator`
/// (a weak reference: records must not keep their allocator's wrapper alive).
struct Handle(Py<PyWeakrefReference>);

pub fn owner_object(py: Python<'_>, rec: &Record) -> Py<PyAny> {
    rec.allocator()
        .handle
        .get()
        .and_then(|h| h.downcast_ref::<Handle>())
        .and_then(|h| h.0.bind(py).upgrade())
        .map(Bound::unbind)
        .unwrap_or_else(|| py.None())
}

/// Describes a request in error messages.
struct Asked<'a>(&'a str, &'a TypeInfo, &'a dyn std::fmt::Display);
impl std::fmt::Display for Asked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({}, {})", self.0, self.1.name, self.2)
    }
}

/// A count argument as i128 (any Python int; overflow past i128 is OverflowError).
fn count_arg(v: &Bound<'_, PyAny>) -> PyResult<i128> {
    if v.is_instance_of::<pyo3::types::PyFloat>() {
        return Err(PyTypeError::new_err(
            "a count or size must be an int, not float",
        ));
    }
    v.extract()
}

fn align_arg(v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u128>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let a = count_arg(v)?;
    if a <= 0 {
        return Err(PyValueError::new_err(format!(
            "alignment {a} is not a power of two"
        )));
    }
    Ok(Some(a as u128))
}

impl Allocator {
    pub fn wrap(py: Python<'_>, core: Arc<AllocCore>) -> PyResult<Bound<'_, Allocator>> {
        let obj = Bound::new(py, Allocator { core })?;
        let weak = PyWeakrefReference::new(&obj)?.unbind();
        let _ = obj.get().core.handle.set(Box::new(Handle(weak)));
        Ok(obj)
    }

    fn request(
        &self,
        py: Python<'_>,
        ty: &'static TypeInfo,
        count: &Bound<'_, PyAny>,
        alignment: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Request> {
        if !ty.has_size() {
            return Err(PyTypeError::new_err(format!(
                "{} has no size: allocate bytes or a sized type",
                ty.name
            )));
        }
        let n = count_arg(count)?;
        let align = align_arg(alignment)?;
        layout::array(n, ty.size, ty.align, align).py(py, &Asked(&self.core.name, ty, count))
    }

    pub fn new_pointer(
        &self,
        py: Python<'_>,
        ty: &'static TypeInfo,
        req: Request,
    ) -> PyResult<Pointer> {
        let rec = self
            .core
            .allocate_typed(req, None, &ty.name)
            .py(py, &Asked(&self.core.name, ty, &req.size))?;
        Ok(Pointer::new(
            rec.addr(),
            ty,
            Some(req.size),
            Owner::Block(rec),
        ))
    }

    /// The record behind `p`, for an operation that needs an owned block.
    fn owned<'a>(&self, py: Python<'_>, p: &'a Pointer) -> PyResult<&'a Arc<Record>> {
        p.record()
            .ok_or_else(|| p.err(py, Error::Ownership(Ownership::Foreign)))
    }
}

#[pymethods]
impl Allocator {
    /// `a(T=Uint8, count=1, *, alignment=None)`: a Pointer[T] of count elements.
    #[pyo3(signature = (r#type=None, count=None, *, alignment=None))]
    fn __call__(
        &self,
        py: Python<'_>,
        r#type: Option<&Bound<'_, PyAny>>,
        count: Option<&Bound<'_, PyAny>>,
        alignment: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Pointer> {
        let ty = match r#type {
            Some(t) => types::lookup(t)?,
            None => types::uint8(py)?,
        };
        let one;
        let count = match count {
            Some(c) => c,
            None => {
                one = 1i32.into_pyobject(py)?.into_any();
                &one
            }
        };
        let req = self.request(py, ty, count, alignment)?;
        self.new_pointer(py, ty, req)
    }

    /// `allocate(nbytes, *, alignment=None)`: a Pointer[Uint8] of nbytes.
    #[pyo3(signature = (nbytes, *, alignment=None))]
    fn allocate(
        &self,
        py: Python<'_>,
        nbytes: &Bound<'_, PyAny>,
        alignment: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Pointer> {
        let ty = types::uint8(py)?;
        let req = self.request(py, ty, nbytes, alignment)?;
        self.new_pointer(py, ty, req)
    }

    /// Returns a block to this allocator. `free(nullptr)` does nothing.
    fn free(&self, py: Python<'_>, p: &Bound<'_, Pointer>) -> PyResult<()> {
        let p = p.get();
        if p.addr == 0 {
            return Ok(());
        }
        let rec = self.owned(py, p)?;
        self.core.free(rec, p.addr).py(py, p)
    }

    /// Grows or shrinks to `count` elements of p's type. Returns the new
    /// Pointer; p and all its views are dead. calloc zeroes the new tail.
    fn realloc(
        &self,
        py: Python<'_>,
        p: &Bound<'_, Pointer>,
        count: &Bound<'_, PyAny>,
    ) -> PyResult<Pointer> {
        let p = p.get();
        let ty = if p.ty.has_size() {
            p.ty
        } else {
            types::uint8(py)?
        };
        let req = self.request(py, ty, count, None)?;
        if p.addr == 0 {
            return self.new_pointer(py, ty, req); // C: realloc(NULL, n) is malloc(n)
        }
        let rec = self.owned(py, p)?;
        let fresh = self.core.realloc(rec, p.addr, req.size).py(py, p)?;
        Ok(Pointer::new(
            fresh.addr(),
            p.ty,
            Some(req.size),
            Owner::Block(fresh),
        ))
    }

    /// Takes ownership of `count` T at `address`, which this allocator's C
    /// counterpart allocated (e.g. a `strdup` result for malloc).
    #[pyo3(signature = (address, r#type, count=None))]
    fn adopt(
        &self,
        py: Python<'_>,
        address: &Bound<'_, PyAny>,
        r#type: &Bound<'_, PyAny>,
        count: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Pointer> {
        let addr = usize_arg(address, "address")?;
        let ty = types::lookup(r#type)?;
        let count = match count {
            Some(c) => c.clone(),
            None => 1i32.into_pyobject(py)?.into_any(),
        };
        let req = self.request(
            py,
            if ty.has_size() { ty } else { types::uint8(py)? },
            &count,
            None,
        )?;
        let req = Request {
            align: ty.align.max(1),
            ..req
        };
        let rec = self
            .core
            .adopt_typed(addr, req, &ty.name)
            .py(py, &Asked("adopt", ty, &format_args!("{addr:#x}")))?;
        Ok(Pointer::new(addr, ty, Some(req.size), Owner::Block(rec)))
    }

    /// A new block from this allocator holding a copy of p's bytes.
    fn clone(&self, py: Python<'_>, p: &Bound<'_, Pointer>) -> PyResult<Pointer> {
        let p = p.get();
        let n = p
            .nbytes_usize()
            .ok_or_else(|| PyTypeError::new_err(format!("clone() of {p}: unknown length")))?;
        p.check().py(py, p)?;
        let align = p
            .record()
            .map_or(p.ty.align, |r| r.align())
            .max(p.ty.align)
            .max(1);
        let fresh = self.new_pointer(py, p.ty, Request { size: n, align })?;
        // SAFETY: p was checked live with n bytes; fresh holds n bytes.
        unsafe { std::ptr::copy_nonoverlapping(p.addr as *const u8, fresh.addr as *mut u8, n) };
        Ok(fresh)
    }

    /// Address of the C function that frees this allocator's memory, or None.
    #[getter]
    fn native_free(&self) -> Option<usize> {
        self.core.backend.native_free()
    }

    /// The allocator's name.
    #[getter]
    fn name(&self) -> &str {
        &self.core.name
    }

    /// This allocator's counters.
    fn stats(&self) -> Stats {
        Stats::from(self.core.counters.snapshot())
    }

    fn __repr__(&self) -> String {
        format!("<rsalloc.Allocator {}>", self.core.name)
    }

    fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyTypeError::new_err("allocators cannot be pickled"))
    }
}

static MALLOC: PyOnceLock<Py<Allocator>> = PyOnceLock::new();
static CALLOC: PyOnceLock<Py<Allocator>> = PyOnceLock::new();

/// A module-level allocator, made once.
pub fn named_allocator<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<Allocator>>,
    make: impl FnOnce() -> Arc<AllocCore>,
) -> PyResult<Bound<'py, Allocator>> {
    cell.get_or_try_init(py, || Ok::<_, PyErr>(Allocator::wrap(py, make())?.unbind()))
        .map(|a| a.bind(py).clone())
}

fn libc_allocator<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<Allocator>>,
    name: &str,
    zeroed: bool,
) -> PyResult<Bound<'py, Allocator>> {
    named_allocator(py, cell, || {
        AllocCore::new(name, LIBC_GROUP, zeroed, Box::new(Libc))
    })
}

/// The module-level `malloc`.
pub fn malloc(py: Python<'_>) -> PyResult<Bound<'_, Allocator>> {
    libc_allocator(py, &MALLOC, "malloc", false)
}

/// The module-level `calloc`.
pub fn calloc(py: Python<'_>) -> PyResult<Bound<'_, Allocator>> {
    libc_allocator(py, &CALLOC, "calloc", true)
}

/// `rsalloc.free(p)`: frees p through its own owner. `free(nullptr)` does nothing.
#[pyfunction]
pub fn free(py: Python<'_>, p: &Bound<'_, Pointer>) -> PyResult<()> {
    let p = p.get();
    if p.addr == 0 {
        return Ok(());
    }
    let rec = p
        .record()
        .ok_or_else(|| p.err(py, Error::Ownership(Ownership::Foreign)))?;
    let group = rec.allocator().group;
    match rec.arena() {
        // Arena memory is released with its arena: free is a no-op for a live block.
        Some(_) => rec.check_access().map_err(|e| match e {
            Error::UseAfterFree(d) => Error::DoubleFree(d),
            e => e,
        }),
        None => rec.free(group, 0, p.addr),
    }
    .py(py, p)
}
