//! Hand-written entry points for the hottest calls: the ones made once per
//! block (`allocator.allocate(n)`, `arena.allocate(n)`, `rsalloc.free(p)`)
//! and element access (`p[i]`, `p[i] = v`).
//!
//! PyO3's generated wrapper costs about as much as the allocation itself
//! for these calls (BENCHMARKS.md): its generic argument parsing, and a
//! trampoline that registers the thread with PyO3 in a thread-local. Each
//! entry point here serves one common case directly, the *plain* one: one
//! positional argument of the exact expected type, no keywords, an
//! allocator whose blocks come from libc with tracking off (or a bump
//! region). Every other call goes, unchanged, to the PyO3 method it
//! replaced, so keyword arguments, Python-defined allocators, tracking,
//! messages, signatures and docstrings stay PyO3's.
//!
//! Why the plain case needs no PyO3 trampoline: it creates Python objects
//! but drops no `Py<T>` (which PyO3 0.30 cannot drop on a thread it does
//! not know: attach.rs), and runs no user code. An error or a panic is
//! rare, so raising it pays for registering the thread with PyO3, and so
//! does any general code a route falls back to (`entry::general`: `p[i]`
//! of a value that needs converting, say).

use super::entry::{enter, general, replace_function, replace_method, Arg, Obj, Outcome, Unary};
use super::freelist::as_pointer;
use crate::core::types::Kind;
use crate::py::allocator::{block_object, Allocator};
use crate::py::arena::Arena;
use crate::py::args::plain_bytes_request;
use crate::py::checked;
use crate::py::errors::IntoPy;
use crate::py::pointer::{Owned, Pointer};
use crate::py::serialized::token;
use crate::py::values::exact_small_int;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::type_object::PyTypeInfo;
use std::ffi::c_int;
use std::sync::OnceLock;

/// The PyO3 methods the fast ones replace, for every other call.
static ALLOCATOR_ALLOCATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ARENA_ALLOCATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FREE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `slf.allocate(nbytes)` called with one exact int: `make(this, n)`
/// builds the Pointer, or returns None when `this` is not a plain case.
///
/// # Safety
/// As for `Unary::route`; `slf` is a `T`.
#[inline(always)]
unsafe fn allocate<T: pyo3::PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync>(
    py: Python<'_>,
    slf: Obj,
    nbytes: Arg<'_, '_>,
    make: impl FnOnce(&T, i64) -> Option<PyResult<Pointer>>,
) -> Outcome<Obj> {
    // SAFETY: per the function's contract.
    let this = unsafe { pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<T>() };
    match exact_small_int(&nbytes).and_then(|n| make(this.get(), n)) {
        Some(p) => p.and_then(|p| Ok(block_object(py, p)?.into_ptr())).into(),
        None => Outcome::Delegate,
    }
}

/// `allocator.allocate(nbytes)` of a plain allocator.
struct AllocatorAllocate;

impl Unary for AllocatorAllocate {
    const SLOW: (&'static PyOnceLock<Py<PyAny>>, usize) = (&ALLOCATOR_ALLOCATE, 0);
    #[inline(always)]
    unsafe fn route(py: Python<'_>, slf: Obj, nbytes: Arg<'_, '_>) -> Outcome<Obj> {
        // SAFETY: CPython's method descriptor checked that slf is an Allocator.
        unsafe {
            allocate(py, slf, nbytes, |this: &Allocator, n| {
                this.core.plain().then(|| {
                    let (ty, req) = plain_bytes_request(py, &this.core.name, n)?;
                    this.new_pointer(py, ty, req)
                })
            })
        }
    }
}

/// `arena.allocate(nbytes)` of a bump-region arena.
struct ArenaAllocate;

impl Unary for ArenaAllocate {
    const SLOW: (&'static PyOnceLock<Py<PyAny>>, usize) = (&ARENA_ALLOCATE, 1);
    #[inline(always)]
    unsafe fn route(py: Python<'_>, slf: Obj, nbytes: Arg<'_, '_>) -> Outcome<Obj> {
        // SAFETY: CPython's method descriptor checked that slf is an Arena.
        unsafe {
            allocate(py, slf, nbytes, |this: &Arena, n| {
                let r = this.ready_region(slf)?;
                Some(
                    plain_bytes_request(py, &this.name, n)
                        .and_then(|(ty, req)| this.region_pointer(py, r, ty, req)),
                )
            })
        }
    }
}

/// `rsalloc.free(p)` of a block from a plain allocator.
struct Free;

impl Unary for Free {
    const SLOW: (&'static PyOnceLock<Py<PyAny>>, usize) = (&FREE, 2);
    #[inline(always)]
    unsafe fn route(py: Python<'_>, _module: Obj, p: Arg<'_, '_>) -> Outcome<Obj> {
        let Some(p) = as_pointer(&p) else {
            return Outcome::Delegate;
        };
        let p = p.get();
        match p.owner.get() {
            Owned::Block(rec) if p.addr != 0 && rec.frees_plainly() => {
                match rec.free_plain(p.addr, token(py)).py(py, p) {
                    // SAFETY: attached (the route's contract); None is immortal.
                    Ok(()) => Outcome::Done(unsafe { ffi::Py_NewRef(ffi::Py_None()) }),
                    Err(e) => Outcome::Raise(e),
                }
            }
            _ => Outcome::Delegate,
        }
    }
}

/// The PyO3 slots `p[i]` and `p[i] = v` replace.
static OLD_SUBSCRIPT: OnceLock<ffi::binaryfunc> = OnceLock::new();
static OLD_ASS_SUBSCRIPT: OnceLock<ffi::objobjargproc> = OnceLock::new();

/// An exact int key that fits an index.
#[inline]
fn int_index(key: &Bound<'_, PyAny>) -> Option<isize> {
    exact_small_int(key).and_then(|i| isize::try_from(i).ok())
}

/// `p[i]` with an int index into numeric elements.
unsafe extern "C" fn subscript(
    slf: *mut ffi::PyObject,
    key: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the slot of Pointer, which has no subclasses: slf is a Pointer.
    unsafe {
        enter(
            |py| {
                let p = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<Pointer>();
                let p = p.get();
                let key = pyo3::Borrowed::from_ptr(py, key);
                match int_index(&key) {
                    Some(i) if p.ty.kind.is_number() => match p.plain_item(i) {
                        Some(r) => Outcome::Done(r),
                        None => general(|py| p.item(py, i).map(Py::into_ptr)),
                    },
                    // A pointer slot: the address read back resolves to its
                    // block (`from_stored_address`), which runs no Python
                    // code and drops no `Py` (an error is made and handed
                    // back, raised by `enter`, registered).
                    Some(i) if p.ty.kind == Kind::Ptr => p.item(py, i).map(Py::into_ptr).into(),
                    _ => Outcome::Delegate,
                }
            },
            || OLD_SUBSCRIPT.get().expect("installed")(slf, key),
        )
    }
}

/// `p[i] = v` with an int index into numeric elements and an exact int or
/// float value (whose conversion runs no Python code).
unsafe extern "C" fn ass_subscript(
    slf: *mut ffi::PyObject,
    key: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
) -> c_int {
    // SAFETY: as for subscript; value is NULL for `del p[i]`.
    unsafe {
        enter(
            |py| {
                if value.is_null() {
                    return Outcome::Delegate;
                }
                let p = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<Pointer>();
                let p = p.get();
                let key = pyo3::Borrowed::from_ptr(py, key);
                let value = pyo3::Borrowed::from_ptr(py, value);
                let plain = value.is_exact_instance_of::<pyo3::types::PyInt>()
                    || value.is_exact_instance_of::<pyo3::types::PyFloat>();
                // A Pointer or None into a pointer slot: converting either
                // runs no Python code.
                let target = as_pointer(&value);
                let address = value.is_none() || target.is_some();
                match int_index(&key) {
                    // As for the read: an error is made, not dropped.
                    Some(i) if address && p.ty.kind == Kind::Ptr => p
                        .write_address(py, i, target.as_ref().map(|q| q.get()))
                        .map(|()| 0)
                        .into(),
                    Some(i) if plain && p.ty.kind.is_number() => {
                        if p.plain_write(i, &value) {
                            Outcome::Done(0)
                        } else {
                            general(|py| p.write(py, i, &value).map(|()| 0))
                        }
                    }
                    _ => Outcome::Delegate,
                }
            },
            || OLD_ASS_SUBSCRIPT.get().expect("installed")(slf, key, value),
        )
    }
}

/// Points Pointer's mapping slots at `subscript` and `ass_subscript`.
fn replace_item_slots(py: Python<'_>) -> PyResult<()> {
    let tp = Pointer::type_object(py).as_type_ptr();
    // SAFETY: a heap type's mapping methods are its own (PyHeapTypeObject's
    // as_mapping), set by PyO3 for __getitem__/__setitem__; replaced once,
    // at module init, before any Pointer is indexed.
    unsafe {
        let m = (*tp).tp_as_mapping;
        let (Some(get), Some(set)) = (
            m.as_ref().and_then(|m| m.mp_subscript),
            m.as_ref().and_then(|m| m.mp_ass_subscript),
        ) else {
            return Err(checked::error::<pyo3::exceptions::PyRuntimeError>(
                "Pointer has no item slots",
            ));
        };
        let _ = OLD_SUBSCRIPT.set(get);
        let _ = OLD_ASS_SUBSCRIPT.set(set);
        (*m).mp_subscript = Some(subscript);
        (*m).mp_ass_subscript = Some(ass_subscript);
    }
    Ok(())
}

/// Installs the fast entry points; `m` is the module, after PyO3 has added
/// its functions and classes.
pub fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    replace_method::<AllocatorAllocate>(&Allocator::type_object(py), "allocate")?;
    replace_method::<ArenaAllocate>(&Arena::type_object(py), "allocate")?;
    replace_function::<Free>(m, "free")?;
    replace_item_slots(py)
}
