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
use std::any::Any;
use std::sync::{Arc, OnceLock};

#[pyclass(frozen, subclass, weakref, module = "rsalloc", name = "Allocator")]
pub struct Allocator {
    pub core: Arc<AllocCore>,
}

/// The Python object of each allocator core or arena, for
/// `Pointer.allocator` (a weak reference: records must not keep their
/// owner's wrapper alive).
pub(crate) struct Handle(Py<PyWeakrefReference>);

type HandleCell = OnceLock<Box<dyn Any + Send + Sync>>;

/// Remembers `obj` as the Python object of the core owning `cell`.
pub(crate) fn set_handle(cell: &HandleCell, obj: &Bound<'_, PyAny>) -> PyResult<()> {
    let weak = PyWeakrefReference::new(obj)?.unbind();
    let _ = cell.set(Box::new(Handle(weak)));
    Ok(())
}

/// The Python object remembered in `cell`, None when gone.
pub(crate) fn handle_object(py: Python<'_>, cell: &HandleCell) -> Py<PyAny> {
    cell.get()
        .and_then(|h| h.downcast_ref::<Handle>())
        .and_then(|h| h.0.bind(py).upgrade())
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

/// Describes a request in error messages.
pub(crate) struct Asked<'a>(pub &'a str, pub &'a TypeInfo, pub &'a dyn std::fmt::Display);
impl std::fmt::Display for Asked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({}, {})", self.0, self.1.name, self.2)
    }
}

/// A count argument as i128 (any Python int; overflow past i128 is OverflowError).
fn count_arg(v: &Bound<'_, PyAny>) -> PyResult<i128> {
    // Hot path: a small int converts without the 128-bit byte-array route.
    if v.is_exact_instance_of::<pyo3::types::PyInt>() {
        if let Ok(i) = v.extract::<i64>() {
            return Ok(i as i128);
        }
    }
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

/// A validated request for `count` elements of `ty` from the allocator `who`.
pub(crate) fn request(
    py: Python<'_>,
    who: &str,
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
    layout::array(n, ty.size, ty.align, align).py(py, &Asked(who, ty, count))
}

/// The arguments of `a(T=Uint8, count=1, *, alignment=None)`.
pub(crate) fn call_request(
    py: Python<'_>,
    who: &str,
    r#type: Option<&Bound<'_, PyAny>>,
    count: Option<&Bound<'_, PyAny>>,
    alignment: Option<&Bound<'_, PyAny>>,
) -> PyResult<(&'static TypeInfo, Request)> {
    let ty = match r#type {
        Some(t) => types::lookup(t)?,
        None => types::uint8(py)?,
    };
    let req = match count {
        Some(c) => request(py, who, ty, c, alignment)?,
        None => request(py, who, ty, &1i32.into_pyobject(py)?.into_any(), alignment)?,
    };
    Ok((ty, req))
}

/// The arguments of `a.allocate(nbytes, *, alignment=None)`.
pub(crate) fn bytes_request(
    py: Python<'_>,
    who: &str,
    nbytes: &Bound<'_, PyAny>,
    alignment: Option<&Bound<'_, PyAny>>,
) -> PyResult<(&'static TypeInfo, Request)> {
    let ty = types::uint8(py)?;
    Ok((ty, request(py, who, ty, nbytes, alignment)?))
}

/// The element type and request of `a.realloc(p, count)`: p's type (bytes
/// for a Void pointer) at p's block alignment.
pub(crate) fn realloc_request(
    py: Python<'_>,
    who: &str,
    p: &Pointer,
    count: &Bound<'_, PyAny>,
) -> PyResult<(&'static TypeInfo, Request)> {
    let ty = if p.ty.has_size() {
        p.ty
    } else {
        types::uint8(py)?
    };
    Ok((ty, request(py, who, ty, count, None)?))
}

/// The address, element type and request of `a.adopt(address, T, count=1)`.
pub(crate) fn adopt_request(
    py: Python<'_>,
    who: &str,
    address: &Bound<'_, PyAny>,
    r#type: &Bound<'_, PyAny>,
    count: Option<&Bound<'_, PyAny>>,
) -> PyResult<(usize, &'static TypeInfo, Request)> {
    let addr = usize_arg(address, "address")?;
    let ty = types::lookup(r#type)?;
    let count = match count {
        Some(c) => c.clone(),
        None => 1i32.into_pyobject(py)?.into_any(),
    };
    let sized = if ty.has_size() { ty } else { types::uint8(py)? };
    let req = request(py, who, sized, &count, None)?;
    Ok((
        addr,
        ty,
        Request {
            align: ty.align.max(1),
            ..req
        },
    ))
}

/// `a.clone(p)`: `make` allocates a block of p's size and alignment, which
/// then receives a copy of p's bytes.
pub(crate) fn clone_with(
    py: Python<'_>,
    p: &Pointer,
    make: impl FnOnce(&'static TypeInfo, Request) -> PyResult<Pointer>,
) -> PyResult<Pointer> {
    let n = p
        .nbytes_usize()
        .ok_or_else(|| PyTypeError::new_err(format!("clone() of {p}: unknown length")))?;
    p.check().py(py, p)?;
    let align = p
        .record()
        .map_or(p.ty.align, |r| r.align())
        .max(p.ty.align)
        .max(1);
    let fresh = make(p.ty, Request { size: n, align })?;
    // Re-checked: `make` may have run Python code (a custom allocator).
    p.check().py(py, p)?;
    // SAFETY: p is live with n bytes; fresh holds n bytes.
    unsafe { std::ptr::copy_nonoverlapping(p.addr as *const u8, fresh.addr as *mut u8, n) };
    Ok(fresh)
}

impl Allocator {
    pub fn wrap(py: Python<'_>, core: Arc<AllocCore>) -> PyResult<Bound<'_, Allocator>> {
        let obj = Bound::new(py, Allocator { core })?;
        set_handle(&obj.get().core.handle, obj.as_any())?;
        Ok(obj)
    }

    pub fn new_pointer(
        &self,
        py: Python<'_>,
        ty: &'static TypeInfo,
        req: Request,
    ) -> PyResult<Pointer> {
        let rec = self
            .core
            .allocate(req, None)
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
        p.owner.record_for_allocator().py(py, p)
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
        let (ty, req) = call_request(py, &self.core.name, r#type, count, alignment)?;
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
        let (ty, req) = bytes_request(py, &self.core.name, nbytes, alignment)?;
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
        let (ty, req) = realloc_request(py, &self.core.name, p, count)?;
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
        let (addr, ty, req) = adopt_request(py, &self.core.name, address, r#type, count)?;
        let rec = self
            .core
            .adopt(addr, req)
            .py(py, &Asked("adopt", ty, &format_args!("{addr:#x}")))?;
        Ok(Pointer::new(addr, ty, Some(req.size), Owner::Block(rec)))
    }

    /// A new block from this allocator holding a copy of p's bytes.
    fn clone(&self, py: Python<'_>, p: &Bound<'_, Pointer>) -> PyResult<Pointer> {
        clone_with(py, p.get(), |ty, req| self.new_pointer(py, ty, req))
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

fn libc_allocator<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<Allocator>>,
    name: &str,
    zeroed: bool,
) -> PyResult<Bound<'py, Allocator>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            Allocator::wrap(py, AllocCore::new(name, LIBC_GROUP, zeroed, Box::new(Libc)))?.unbind(),
        )
    })
    .map(|a| a.bind(py).clone())
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
    match &p.owner {
        Owner::Block(rec) => match rec.arena() {
            // Arena memory is released with its arena: free is a no-op for a live block.
            Some(id) => rec.check_freeable(rec.allocator().group, id, p.addr),
            None => rec.free(rec.allocator().group, 0, p.addr),
        },
        Owner::Region(r) => super::arena::region_free(r, p.addr),
        Owner::Unowned => Err(Error::Ownership(Ownership::Foreign)),
    }
    .py(py, p)
}
