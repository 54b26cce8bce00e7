//! `rsalloc.Allocator`, the module-level `malloc` and `calloc`, and the
//! top-level `free` (DESIGN §4). The rules live in `core::alloc` and
//! `core::record`; this file parses arguments and builds Pointers.

use super::args::{
    adopt_request, bytes_request, call_request, limit_arg, realloc_request, Asked, SizeArg,
};
use super::errors::{to_py, IntoPy};
use super::handles::{self, raising_free_errors, Key};
use super::pointer::{Owned, Owner, Pointer};
use super::python_allocator::{self, PyCallbacks};
use super::stats::Stats;
use super::types::TypeInfo;
use crate::core::alloc::{AllocCore, Libc, LIBC_GROUP};
use crate::core::layout::Request;
use crate::core::record_ref::RecordRef;
use crate::py::checked;
use crate::py::checked::{Int, Text};
use crate::py::serialized::token;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::Arc;

/// An owner of native memory (DESIGN §4): `malloc`, `calloc`, the
/// adaptive and diagnostic allocators, `ForeignAllocator`s and Python
/// subclasses are Allocators; an `Arena` takes the same calls.
///
/// `a(T=Uint8, count=1, *, alignment=None)` gives a `Pointer[T]` of `count`
/// elements, `a.allocate(nbytes)` a `Pointer[Uint8]`; `a.free(p)`,
/// `a.realloc(p, count)`, `a.adopt(address, T, count)` and `a.clone(p)`
/// complete the set. A free that would be undefined behaviour in C (double
/// free, wrong owner, interior pointer) raises instead.
///
/// Subclass it to define an allocator in Python: implement
/// `_raw_alloc(nbytes, alignment) -> int` (0: out of memory) and
/// `_raw_free(address)`; set `zeroed = True` in the class body for calloc
/// semantics; an `__init__` of your own must call `super().__init__()`.
#[pyclass(frozen, subclass, weakref, module = "rsalloc", name = "Allocator")]
pub struct Allocator {
    pub core: Arc<AllocCore>,
    /// The Python functions of a Python-defined backend (also held by the
    /// backend): bound to this object by `__init__`, visited by the
    /// garbage collector.
    pub(crate) callbacks: Option<Arc<PyCallbacks>>,
    /// The object's vectorcall entry (`allocator(T, n)` without an
    /// argument tuple), read by CPython only once the fence turned the
    /// type's vectorcall on (`cpython::fast_structs`); None without it.
    /// Without the fence's bypass cfgs nothing reads it (the entry is off).
    #[cfg_attr(
        not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
        allow(dead_code)
    )]
    vectorcall: Option<pyo3::ffi::vectorcallfunc>,
}

impl Drop for Allocator {
    fn drop(&mut self) {
        handles::forget(Key::from(&*self.core), std::ptr::from_ref(self).addr());
    }
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
        .ok_or_else(|| checked::error::<PyTypeError>(format!("clone() of {p}: unknown length")))?;
    p.check(token(py)).py(py, p)?;
    let align = p
        .record()
        .map_or(p.ty.align, |r| r.align())
        .max(p.ty.align)
        .max(1);
    let fresh = make(p.ty, Request { size: n, align })?;
    // Re-checked: `make` may have run Python code (a custom allocator)
    // that freed p; then the new block goes back, not to waste.
    if let Err(e) = p.check(token(py)) {
        discard(py, &fresh);
        return Err(to_py(py, e, p));
    }
    // SAFETY: p is live with n bytes; fresh holds n bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            std::ptr::with_exposed_provenance::<u8>(p.addr),
            std::ptr::with_exposed_provenance_mut::<u8>(fresh.addr),
            n,
        )
    };
    Ok(fresh)
}

/// Frees a block rsalloc just made for a call that then failed: nothing
/// else refers to it yet. An arena over an allocator frees it as its
/// release would (the arena's list forgets the dead record then); a bump
/// region's block stays counted until its arena's release, which is the
/// only way region memory goes back. A failing free is unraisable.
pub(crate) fn discard(py: Python<'_>, fresh: &Pointer) {
    if let Owned::Block(rec) = fresh.owner.get() {
        let arena = rec.arena().unwrap_or(0);
        let r = raising_free_errors(py, rec.allocator(), || {
            rec.free(rec.allocator().group, arena, fresh.addr, token(py))
                .py(py, fresh)
        });
        if let Err(e) = r {
            e.write_unraisable(py, None);
        }
    }
}

/// The Python object of a Pointer to a block made just now for the caller
/// alone: when CPython cannot make the object, the block is freed first
/// ([`discard`]), so the MemoryError leaves nothing counted or live.
#[inline(always)]
pub(crate) fn block_object(py: Python<'_>, fresh: Pointer) -> PyResult<Bound<'_, Pointer>> {
    super::cpython::freelist::new_object_or(py, fresh, discard)
}

/// The Python object of a Pointer to a block just adopted: when it cannot
/// be made, ownership goes back to the caller (the block is detached, as
/// if adopt had never run), who may then free the address as before.
pub(crate) fn adopted_object(py: Python<'_>, fresh: Pointer) -> PyResult<Bound<'_, Pointer>> {
    super::cpython::freelist::new_object_or(py, fresh, |py, p| {
        if let Owned::Block(rec) = p.owner.get() {
            if let Err(e) = rec.detach(p.addr, token(py)).py(py, p) {
                e.write_unraisable(py, None);
            }
        }
    })
}

impl Allocator {
    /// The object's value for `core`, with the callbacks of its
    /// Python-defined backend.
    pub(crate) fn of(core: Arc<AllocCore>, callbacks: Option<Arc<PyCallbacks>>) -> Self {
        Allocator {
            core,
            callbacks,
            vectorcall: super::cpython::allocator_vectorcall(),
        }
    }

    /// Where the object keeps its vectorcall entry, from the object's start.
    #[cfg(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))]
    pub(crate) fn vectorcall_offset(obj: &Bound<'_, Allocator>) -> Option<usize> {
        let field = std::ptr::from_ref(&obj.get().vectorcall);
        obj.get().vectorcall?;
        Some(field.addr() - obj.as_ptr().addr())
    }

    pub fn wrap(py: Python<'_>, core: Arc<AllocCore>) -> PyResult<Bound<'_, Allocator>> {
        Self::made(Bound::new(py, Allocator::of(core, None))?)
    }

    /// `obj`, now remembered as its core's object (`Pointer.allocator`).
    fn made(obj: Bound<'_, Allocator>) -> PyResult<Bound<'_, Allocator>> {
        let a = obj.get();
        handles::remember(
            Key::from(&*a.core),
            obj.as_any(),
            std::ptr::from_ref(a).addr(),
        )?;
        Ok(obj)
    }

    /// Inlined, so that the Pointer's words reach the object from registers
    /// (see `ToNativeUtf8::route`).
    #[inline(always)]
    pub fn new_pointer(
        &self,
        py: Python<'_>,
        ty: &'static TypeInfo,
        req: Request,
    ) -> PyResult<Pointer> {
        let rec = self
            .core
            .allocate_typed(req, None, &ty.name, token(py))
            .py(py, &Asked(&self.core.name, ty, &req.size))?;
        Ok(Pointer::new(
            rec.addr(),
            ty,
            Some(req.size),
            Owner::block(rec),
        ))
    }

    /// The callbacks of this allocator's own Python-defined backend (a
    /// limited allocator shares those of the one it allocates through,
    /// whose object owns them).
    fn own_callbacks(&self) -> Option<&Arc<PyCallbacks>> {
        self.callbacks
            .as_ref()
            .filter(|_| self.core.over().is_none())
    }

    /// Nothing holds the core but this object and arenas over it (and the
    /// records in their lists): no block outside an arena can free through
    /// the backend.
    fn held_by_arenas_alone(&self) -> bool {
        Arc::strong_count(&self.core) == 1 + self.core.held_by_arenas()
    }

    /// The record behind `p`, for an operation that needs an owned block.
    fn owned<'a>(&self, py: Python<'_>, p: &'a Pointer) -> PyResult<&'a RecordRef> {
        p.owner.record_for_allocator().py(py, p)
    }
}

#[pymethods]
impl Allocator {
    /// For Python subclasses that implement `_raw_alloc` / `_raw_free`.
    #[new]
    #[classmethod]
    #[pyo3(text_signature = "()")]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(
        cls: &Bound<'_, PyType>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        if cls.is(cls.py().get_type::<Allocator>()) {
            return Err(checked::error::<PyTypeError>(
                "Allocator cannot be instantiated: subclass it and implement _raw_alloc(nbytes, alignment) \
                 and _raw_free(address), or use ForeignAllocator(alloc, free)",
            ));
        }
        let (core, callbacks) = python_allocator::subclass_core(cls)?;
        Ok(Allocator::of(core, Some(callbacks)))
    }

    /// Binds the Python object to its core (a subclass's `__init__` must
    /// call `super().__init__()`).
    #[pyo3(signature = (*_args, **_kwargs))]
    fn __init__(
        slf: &Bound<'_, Self>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let this = slf.get();
        handles::remember(
            Key::from(&*this.core),
            slf.as_any(),
            std::ptr::from_ref(this).addr(),
        )?;
        if let Some(cb) = &this.callbacks {
            cb.bind_methods(slf.as_any())?;
        }
        Ok(())
    }

    // The backend of a Python-defined allocator refers back to the object;
    // that edge counts only while nothing but arenas holds the core (see
    // py::python_allocator): an arena is an object the collector sees, which
    // frees its blocks (finalizer) before anything is cleared.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(cb) = self.own_callbacks() {
            if self.held_by_arenas_alone() {
                cb.traverse(&visit)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Some(cb) = self.own_callbacks() {
            if self.held_by_arenas_alone() {
                cb.clear();
            }
        }
    }

    /// `a(T=Uint8, count=1, *, alignment=None)`: a Pointer[T] of count elements.
    #[pyo3(signature = (r#type=None, count=SizeArg::of(1), *, alignment=None))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        r#type: Option<&Bound<'_, PyAny>>,
        count: SizeArg,
        alignment: Option<SizeArg>,
    ) -> PyResult<Bound<'py, Pointer>> {
        let (ty, req) = call_request(
            py,
            &self.core.name,
            r#type,
            count.get()?,
            alignment.map(SizeArg::get).transpose()?,
        )?;
        block_object(py, self.new_pointer(py, ty, req)?)
    }

    /// `allocate(nbytes, *, alignment=None)`: a Pointer[Uint8] of nbytes.
    #[pyo3(signature = (nbytes, *, alignment=None))]
    fn allocate<'py>(
        &self,
        py: Python<'py>,
        nbytes: SizeArg,
        alignment: Option<SizeArg>,
    ) -> PyResult<Bound<'py, Pointer>> {
        let (ty, req) = bytes_request(
            py,
            &self.core.name,
            nbytes.get()?,
            alignment.map(SizeArg::get).transpose()?,
        )?;
        block_object(py, self.new_pointer(py, ty, req)?)
    }

    /// Returns a block to this allocator. `free(nullptr)` does nothing.
    fn free(&self, py: Python<'_>, p: &Bound<'_, PyAny>) -> PyResult<()> {
        let p = checked::cast::<Pointer>(p, "p")?;
        let p = p.get();
        if p.addr == 0 {
            return Ok(());
        }
        let rec = self.owned(py, p)?;
        raising_free_errors(py, rec.allocator(), || {
            self.core.free(rec, p.addr, token(py)).py(py, p)
        })
    }

    /// Grows or shrinks to `count` elements of p's type. Returns the new
    /// Pointer; p and all its views are dead. calloc zeroes the new tail.
    fn realloc<'py>(
        &self,
        py: Python<'py>,
        p: &Bound<'_, PyAny>,
        count: SizeArg,
    ) -> PyResult<Bound<'py, Pointer>> {
        let p = checked::cast::<Pointer>(p, "p")?;
        let p = p.get();
        let (ty, req) = realloc_request(py, &self.core.name, p.ty, count.get()?)?;
        if p.addr == 0 {
            // C: realloc(NULL, n) is malloc(n)
            return block_object(py, self.new_pointer(py, ty, req)?);
        }
        let rec = self.owned(py, p)?;
        let fresh = self
            .core
            .realloc(rec, p.addr, req.size, token(py))
            .py(py, p)?;
        block_object(
            py,
            Pointer::new(fresh.addr(), p.ty, Some(req.size), Owner::block(fresh)),
        )
    }

    /// Takes ownership of `count` T at `address`, which this allocator's C
    /// counterpart allocated (e.g. a `strdup` result for malloc). Without a
    /// count, an Int8/Uint8 block is a C string (strlen + 1 bytes). An
    /// address inside a live rsalloc block -> OwnershipError.
    #[pyo3(signature = (address, r#type=None, count=None))]
    fn adopt<'py>(
        &self,
        py: Python<'py>,
        address: &Bound<'_, PyAny>,
        r#type: Option<&Bound<'_, PyAny>>,
        count: Option<SizeArg>,
    ) -> PyResult<Bound<'py, Pointer>> {
        let (addr, ty, req) = adopt_request(py, &self.core.name, address, r#type, count)?;
        let rec = self
            .core
            .adopt_typed(addr, req, &ty.name, token(py))
            .py(py, &Asked(&"adopt", ty, &format_args!("{addr:#x}")))?;
        adopted_object(
            py,
            Pointer::new(addr, ty, Some(req.size), Owner::block(rec)),
        )
    }

    /// A new block from this allocator holding a copy of p's bytes.
    fn clone<'py>(&self, py: Python<'py>, p: &Bound<'_, PyAny>) -> PyResult<Bound<'py, Pointer>> {
        let p = checked::cast::<Pointer>(p, "p")?;
        block_object(
            py,
            clone_with(py, p.get(), |ty, req| self.new_pointer(py, ty, req))?,
        )
    }

    /// Address of the C function that frees this allocator's memory, or None.
    #[getter]
    fn native_free(&self) -> Option<Int> {
        self.core.backend.native_free().map(Int::from)
    }

    /// New memory is zero-filled (calloc semantics).
    #[getter]
    fn zeroed(&self) -> bool {
        self.core.zeroed
    }

    /// The allocator's name.
    #[getter]
    fn name(&self) -> Text<&str> {
        Text(&self.core.name)
    }

    /// This allocator's counters, with its limit.
    fn stats(&self) -> Stats {
        Stats::from(self.core.counters.snapshot()).with_limit(self.core.limit())
    }

    /// `a.limited(max_bytes)`: a new allocator (an owner of its own) that
    /// allocates through this one and whose live bytes never pass
    /// `max_bytes`; a request that would pass it raises MemoryError.
    fn limited<'py>(
        slf: &Bound<'py, Self>,
        max_bytes: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, Allocator>> {
        let py = slf.py();
        let max = limit_arg(max_bytes, "max_bytes")?;
        let inner = &slf.get().core;
        let core = inner.limited(max);
        // The callbacks stay those of the allocator it allocates through
        // (`own_callbacks` leaves them to that one's object).
        let callbacks = slf.get().callbacks.clone();
        Allocator::made(Bound::new(py, Allocator::of(core, callbacks))?)
    }

    fn __repr__(&self) -> Text<String> {
        Text(format!("<rsalloc.Allocator {}>", self.core.name))
    }

    /// Refuses: an allocator owns memory of this process only (TypeError).
    fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(checked::error::<PyTypeError>(
            "allocators cannot be pickled",
        ))
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
    // The module's named allocators live as long as the process.
    let make = || AllocCore::into_lifelong(make());
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
pub fn free(py: Python<'_>, p: &Bound<'_, PyAny>) -> PyResult<()> {
    let p = checked::cast::<Pointer>(p, "p")?;
    let p = p.get();
    if p.addr == 0 {
        return Ok(());
    }
    let free = || p.owner.free(p.addr, token(py));
    match p.owner.get() {
        Owned::Block(rec) => raising_free_errors(py, rec.allocator(), || free().py(py, p)),
        _ => free().py(py, p),
    }
}
