//! Backends that call Python (DESIGN §4): `Allocator` subclasses that
//! implement `_raw_alloc(nbytes, alignment)` / `_raw_free(address)`, and
//! `ForeignAllocator(alloc, free)` over two Python callables (the class
//! itself is `foreign_allocator.rs`). Each is a core backend of an owner
//! group of its own, so every check of `core::alloc` applies.
//!
//! The allocator object, its core and the backend form a cycle (object ->
//! core -> backend -> bound methods -> object): the backend must outlive the
//! object while blocks are live, so that a late free (autofree, an export
//! released after `free`) still reaches `_raw_free`. The object's
//! `__traverse__` reports that edge only when nothing but arenas holds the
//! core (arenas are objects the collector sees, and release their blocks in
//! their finalizer before anything is cleared), so the cycle is collected
//! exactly when nothing else can free through it any more.

use super::errors::raised;
use crate::core::alloc::{new_id, AllocCore, Backend};
use crate::core::error::{BadBlock, Error, Result};
use crate::core::foreign::{check_block, FREE_ONLY};
use crate::core::serial::Serialized;
use crate::py::checked;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyType};
use pyo3::{PyTraverseError, PyVisit};
use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// The two Python functions behind a backend (no alloc: free-only).
struct Fns {
    alloc: Option<Py<PyAny>>,
    free: Py<PyAny>,
}

pub struct PyCallbacks {
    name: String,
    /// None until an Allocator subclass's `__init__` binds its methods, and
    /// again after the garbage collector broke the cycle.
    fns: Mutex<Option<Fns>>,
    /// `_raw_alloc(nbytes, alignment)` (a subclass) or `alloc(nbytes)` (a callable).
    with_alignment: bool,
    /// `free(address, nbytes)`: the size the block was allocated or adopted with.
    sized: bool,
}

impl Drop for PyCallbacks {
    fn drop(&mut self) {
        // Held by a core backend, dropped wherever its allocator goes.
        let fns = self.fns.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        crate::py::cpython::attach::drop_registered(fns);
    }
}

impl PyCallbacks {
    fn get(&self, py: Python<'_>) -> PyResult<(Option<Py<PyAny>>, Py<PyAny>)> {
        // Clone under the lock, call outside it: the callee may allocate.
        let fns = self.fns.lock().unwrap_or_else(|e| e.into_inner());
        match &*fns {
            Some(f) => Ok((
                f.alloc.as_ref().map(|a| a.clone_ref(py)),
                f.free.clone_ref(py),
            )),
            None => Err(checked::error::<PyTypeError>(format!(
                "{}: the allocator is not initialised (an __init__ that does not call super().__init__()?)",
                self.name
            ))),
        }
    }

    /// Binds an Allocator subclass instance's `_raw_alloc`/`_raw_free` (once).
    pub fn bind_methods(&self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        if !self.with_alignment {
            return Ok(());
        }
        let mut fns = self.fns.lock().unwrap_or_else(|e| e.into_inner());
        if fns.is_none() {
            *fns = Some(Fns {
                alloc: Some(obj.getattr(checked::name!("_raw_alloc"))?.unbind()),
                free: obj.getattr(checked::name!("_raw_free"))?.unbind(),
            });
        }
        Ok(())
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> std::result::Result<(), PyTraverseError> {
        // try_lock: a collection must never wait; an unvisited edge only
        // postpones the collection.
        if let Ok(fns) = self.fns.try_lock() {
            if let Some(f) = &*fns {
                if let Some(a) = &f.alloc {
                    visit.call(a)?;
                }
                visit.call(&f.free)?;
            }
        }
        Ok(())
    }

    pub fn clear(&self) {
        let taken = self.fns.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(taken); // outside the lock: dropping may run arbitrary code
    }
}

/// A backend that calls Python for every block.
struct PyBackend(Arc<PyCallbacks>);

impl PyBackend {
    fn give_back(&self, py: Python<'_>, free: &Py<PyAny>, p: NonNull<u8>, size: usize) {
        let addr = p.as_ptr().expose_provenance();
        // The ints are made checked: this runs when memory may be short.
        let r = checked::uint(py, addr as u64).and_then(|a| {
            if self.0.sized {
                free.call1(py, (a, checked::uint(py, size as u64)?))
            } else {
                free.call1(py, (a,))
            }
        });
        if let Err(e) = r {
            report_free_error(py, e);
        }
    }
}

/// The int an allocation function returned (one beyond i128 is no address either).
fn address_value(name: &str, v: &Bound<'_, PyAny>, size: usize) -> Result<i128> {
    // None is ctypes' NULL (a `c_void_p` result): out of memory, as 0 is.
    if v.is_none() {
        return Ok(0);
    }
    if !v.is_instance_of::<PyInt>() || v.is_instance_of::<PyBool>() {
        return Err(raised(checked::error::<PyTypeError>(format!(
            "{name}: the allocation function must return an int address (0 or None for out of memory), not {}",
            v.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))));
    }
    v.extract::<i128>().map_err(|_| {
        Error::BadBlock(BadBlock::NotAnAddress {
            value: v.to_string(),
            size,
        })
    })
}

impl Backend for PyBackend {
    fn alloc(
        &self,
        size: usize,
        align: usize,
        zeroed: bool,
        _s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        Python::attach(|py| {
            // Never ask for 0 bytes: every block needs an address of its own.
            let n = size.max(1);
            let (alloc, free) = self.0.get(py).map_err(raised)?;
            let alloc = alloc.ok_or(Error::Unsupported(FREE_ONLY))?;
            let ret = checked::uint(py, n as u64)
                .and_then(|n| {
                    if self.0.with_alignment {
                        alloc.call1(py, (n, checked::uint(py, align as u64)?))
                    } else {
                        alloc.call1(py, (n,))
                    }
                })
                .map_err(raised)?;
            let value = address_value(&self.0.name, ret.bind(py), n)?;
            let p = check_block(value, n, align, |p| self.give_back(py, &free, p, n))?;
            if zeroed {
                // SAFETY: the function promised n bytes at p.
                unsafe { std::ptr::write_bytes(p.as_ptr(), 0, n) };
            }
            Ok(p)
        })
    }

    // A failing `_raw_free` is raised by the `free()` call that caused it
    // (see CAUGHT), not returned: the same path serves frees that have no
    // caller to raise into.
    unsafe fn free(
        &self,
        ptr: NonNull<u8>,
        size: usize,
        _align: usize,
        _s: Option<Serialized<'_>>,
    ) -> crate::core::error::Result<()> {
        // A block of no bytes was allocated as one (see `alloc`).
        Python::attach(|py| match self.0.get(py) {
            Ok((_, free)) => self.give_back(py, &free, ptr, size.max(1)),
            Err(e) => report_free_error(py, e),
        });
        Ok(())
    }

    fn free_only(&self) -> bool {
        let fns = self.0.fns.lock().unwrap_or_else(|e| e.into_inner());
        fns.as_ref().is_some_and(|f| f.alloc.is_none())
    }

    fn calls_out(&self) -> bool {
        true
    }
}

thread_local! {
    /// Armed (Some) while a `free()` call runs: a failing `_raw_free` is
    /// stored here and raised by that call. Frees with no caller to raise
    /// into (autofree, the last export of a freed block) report it as
    /// unraisable, as `__del__` does.
    ///
    /// `ManuallyDrop`: no destructor to register on a thread's first free,
    /// which glibc aborts the process for when memory has run out ("failed
    /// to register TLS destructor"; CI, test_oom's Python allocator on
    /// 3.13). Nothing is lost: the value is None again when each free ends.
    static CAUGHT: std::mem::ManuallyDrop<RefCell<Option<Option<PyErr>>>> =
        const { std::mem::ManuallyDrop::new(RefCell::new(None)) };
}

fn report_free_error(py: Python<'_>, e: PyErr) {
    let unclaimed = CAUGHT.with(|c| match &mut *c.borrow_mut() {
        Some(slot @ None) => {
            *slot = Some(e);
            None
        }
        _ => Some(e),
    });
    if let Some(e) = unclaimed {
        e.write_unraisable(py, None);
    }
}

/// Runs `f`, a free through an allocator with Python callbacks: an
/// exception raised by its Python free function during it becomes the
/// result (`handles::raising_free_errors` asks the backend whether there are any).
pub(crate) fn catching_free_errors(
    py: Python<'_>,
    f: impl FnOnce() -> PyResult<()>,
) -> PyResult<()> {
    let outer = CAUGHT.with(|c| c.replace(Some(None)));
    let r = f();
    let caught = CAUGHT.with(|c| c.replace(outer)).flatten();
    match (r, caught) {
        (Ok(()), Some(e)) => Err(e),
        (r, Some(e)) => {
            e.write_unraisable(py, None);
            r
        }
        (r, None) => r,
    }
}

/// The core of a new instance of `cls`, a Python subclass of Allocator
/// (not Allocator itself: the caller refuses that), and the callbacks its
/// object keeps (for the garbage collector and `__init__`).
pub fn subclass_core(cls: &Bound<'_, PyType>) -> PyResult<(Arc<AllocCore>, Arc<PyCallbacks>)> {
    let name = cls.name()?.to_string();
    for method in ["_raw_alloc", "_raw_free"] {
        if !cls.hasattr(method)? {
            return Err(checked::error::<PyTypeError>(format!(
                "{name} must implement {method} to be an Allocator"
            )));
        }
    }
    // `zeroed = True` in the class body gives calloc semantics.
    let zeroed = cls
        .getattr(checked::name!("zeroed"))
        .ok()
        .and_then(|v| v.cast::<PyBool>().ok().map(|b| b.is_true()))
        .unwrap_or(false);
    let cb = Arc::new(PyCallbacks {
        name: name.clone(),
        fns: Mutex::new(None),
        with_alignment: true,
        sized: raw_free_is_sized(cls)?,
    });
    let core = AllocCore::new(name, new_id(), zeroed, Box::new(PyBackend(cb.clone())));
    Ok((core, cb))
}

/// The backend of `ForeignAllocator(alloc, free)` over two Python callables
/// (`alloc` None: free-only), and its callbacks.
pub(crate) fn callables_backend(
    name: &str,
    alloc: Option<Py<PyAny>>,
    free: Py<PyAny>,
    sized: bool,
) -> (Box<dyn Backend>, Arc<PyCallbacks>) {
    let cb = Arc::new(PyCallbacks {
        name: name.to_owned(),
        fns: Mutex::new(Some(Fns { alloc, free })),
        with_alignment: false,
        sized,
    });
    (Box::new(PyBackend(cb.clone())), cb)
}

/// Whether `cls._raw_free` takes the block's size too (`_raw_free(self,
/// address, nbytes)`), asked once, when an instance is made.
fn raw_free_is_sized(cls: &Bound<'_, PyType>) -> PyResult<bool> {
    let f = cls.getattr(checked::name!("_raw_free"))?;
    let sig = cls
        .py()
        .import(checked::name!("inspect"))?
        .getattr(checked::name!("signature"))?
        .call1((f,));
    let Ok(sig) = sig else {
        return Ok(false); // no signature to read (a builtin): the documented one
    };
    let n = sig.getattr(checked::name!("parameters"))?.len()?;
    // self, address[, nbytes]
    Ok(n >= 3)
}
