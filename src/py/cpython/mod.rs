//! The fence: everything that reads or writes CPython's or PyO3's internals
//! (object layouts, type slots, int digits, the interpreter's allocator) to
//! go faster than the plain PyO3 route, and nothing else.
//!
//! Each trick is switched on here, at module init, only when its
//! assumption holds: a layout measured exactly, a build flag present at
//! compile time. When it does not, the trick stays off, the plain PyO3 (or
//! C API) route serves instead, and `import rsalloc` still succeeds;
//! `rsalloc._rsalloc._fast_paths()` tells which tricks are on and why the
//! others are not. Glue files use the primitives here (`freelist`,
//! `view_objects`, `int_digits`); the entry points (`fast`,
//! `fast_structs`, on `entry`) replace PyO3's generated slots and call the
//! glue. docs/architecture.md has the map; docs/decisions.md what each
//! trick buys.

pub mod arena_finalizer;
pub(crate) mod arena_pool;
pub(crate) mod arena_with;
pub(crate) mod attach;
pub(crate) mod context;
#[cfg(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))]
pub mod entry;
#[cfg(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))]
pub mod fast;
#[cfg(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))]
pub mod fast_structs;
pub(crate) mod frames;
pub mod freelist;
pub mod gil_list;
pub(crate) mod held_ref;
#[cfg(not(any(Py_3_12, PyPy, GraalPy, Py_LIMITED_API)))]
pub mod int_digits;
pub mod untracked;
pub mod view_objects;

use crate::py::checked;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};
use std::sync::Mutex;

/// Why the tricks that skip PyO3's trampoline are off in this build.
#[cfg_attr(
    all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool),
    allow(dead_code)
)]
pub(crate) const BYPASS_OFF: &str = "built without --cfg pyo3_disable_reference_pool \
     --cfg pyo3_leak_on_drop_without_reference_pool (.cargo/config.toml): PyO3's reference \
     pool needs its trampoline";

/// Each trick's name and, when it is off, why; in the order they were tried.
static REPORT: Mutex<Vec<(&'static str, Option<String>)>> = Mutex::new(Vec::new());

fn note(name: &'static str, outcome: Result<(), String>) {
    REPORT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((name, outcome.err()));
}

/// The environment variable that turns every trick off when it is `0` at
/// import: the whole package then runs on PyO3's and the C API's routes
/// (`.ci/run` runs the suite so, to prove those routes complete).
pub const SWITCH: &str = "RSALLOC_FAST_PATHS";

/// Whether `RSALLOC_FAST_PATHS=0` was set at import (read once).
pub(crate) fn switched_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os(SWITCH).is_some_and(|v| v == "0"))
}

/// Tries trick `name` unless the switch turned every trick off.
fn attempt(name: &'static str, install: impl FnOnce() -> Result<(), String>) {
    if switched_off() {
        note(name, Err(format!("{SWITCH}=0 at import")));
    } else {
        note(name, install());
    }
}

/// The tricks that must come before any record or Pointer object exists:
/// record memory from CPython's allocator, plain (untracked) Pointer and
/// Stats objects, the Pointer free list and its dealloc, int digit reads;
/// and the Arena type's finalizer.
///
/// `stats` is a `Stats` value for the layout probe of that class (given by
/// the module: the glue's `stats` sits above the fence).
pub fn install_early<S>(py: Python<'_>, stats: S)
where
    S: pyo3::PyClass<Frozen = pyo3::pyclass::boolean_struct::True>
        + pyo3::type_object::PyTypeInfo
        + Sync,
    PyClassInitializer<S>: From<S>,
{
    attempt("pymalloc_records", pymalloc_records);
    attempt("untracked_pointers", || {
        let probe = crate::py::pointer::Pointer::new(
            0,
            crate::py::types::void(py).map_err(|e| e.to_string())?,
            None,
            crate::py::pointer::Owner::UNOWNED,
        );
        untracked::install::<crate::py::pointer::Pointer>(py, probe)
    });
    attempt("untracked_stats", || untracked::install(py, stats));
    attempt("kept_object_init", gil_list::install_init);
    attempt("pointer_free_list", || freelist::install(py));
    attempt("pointer_dealloc", || freelist::install_dealloc(py));
    #[cfg(not(any(Py_3_12, PyPy, GraalPy, Py_LIMITED_API)))]
    attempt("int_digits", || int_digits::check(py));
    #[cfg(any(Py_3_12, PyPy, GraalPy, Py_LIMITED_API))]
    attempt("int_digits", || {
        Err("read through the C API: the digit layout is CPython 3.11's and older".into())
    });
    attempt("arena_finalizer", || arena_finalizer::install(py));
    attempt("context_vars_in_place", || context::install(py));
    attempt("caller_frames", || frames::install(py));
    attempt("arena_with", || arena_with::install(py));
    attempt("arena_pool", || arena_pool::install(py));
    attempt("arena_with_shared", || arena_with::install_shared_scope(py));
    attempt("arena_with_kept_call", || arena_with::install_kept_call(py));
}

/// The tricks installed once the module has its functions and classes:
/// struct view objects, then the hand-written entry points.
pub fn install_late(m: &Bound<'_, PyModule>) {
    let py = m.py();
    attempt("struct_views", || view_objects::install(py));
    attempt("plain_struct_views", view_objects::plain_views);
    #[cfg(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))]
    {
        attempt("entry_points", || {
            fast::install(m).map_err(|e| e.to_string())
        });
        attempt("struct_entry_points", || {
            fast_structs::install(m).map_err(|e| e.to_string())
        });
        attempt("struct_attribute_routes", || {
            fast_structs::install_attribute_routes(m)
        });
    }
    #[cfg(not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)))]
    {
        let _ = m;
        attempt("entry_points", || Err(BYPASS_OFF.into()));
        attempt("struct_entry_points", || Err(BYPASS_OFF.into()));
        attempt("struct_attribute_routes", || Err(BYPASS_OFF.into()));
    }
}

/// Record memory from CPython's small-object allocator, under the GIL.
fn pymalloc_records() -> Result<(), String> {
    #[cfg(Py_GIL_DISABLED)]
    return Err("free-threaded build: records come from Rust's allocator".into());
    // SAFETY: with a GIL, every call into rsalloc and every drop of its
    // objects holds it, so records are made and dropped under it (one
    // thread at a time); PyO3 refuses sub-interpreters. So record memory
    // may come from CPython's small-object allocator, which needs the GIL
    // and has no header per block (48 bytes a record, not glibc's 64); no
    // record exists before this line (module init calls this first).
    #[cfg(not(Py_GIL_DISABLED))]
    unsafe {
        crate::core::serial::use_record_memory(crate::core::serial::RecordMemory {
            alloc: pyo3::ffi::PyObject_Malloc,
            free: pyo3::ffi::PyObject_Free,
        });
        Ok(())
    }
}

/// `rsalloc._rsalloc._fast_paths()`: every speed trick of the fence, as
/// `{name: {"active": bool, "reason": str}}` (the reason is empty for an
/// active one).
#[pyfunction]
pub fn _fast_paths(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = checked::dict(py)?;
    let report = REPORT.lock().unwrap_or_else(|e| e.into_inner());
    for (name, why) in report.iter() {
        let entry = checked::dict(py)?;
        entry.set_item(checked::name!("active"), checked::bool(py, why.is_none()))?;
        let reason = checked::str(py, why.as_deref().unwrap_or(""))?;
        entry.set_item(checked::name!("reason"), &reason)?;
        out.set_item(checked::str(py, name)?, entry)?;
    }
    Ok(out)
}

/// `rsalloc._rsalloc._shared_scopes()`: how many `with` statements looked
/// an arena's `__enter__` and `__exit__` up as one scope (`arena_with`):
/// private, for tests.
#[pyfunction]
pub fn _shared_scopes(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    checked::uint(py, arena_with::shared_scopes() as u64)
}

/// `rsalloc._rsalloc._kept_calls()`: how many `with` statements were
/// served by their context entry's kept call (`arena_with`): private, for
/// tests.
#[pyfunction]
pub fn _kept_calls(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    checked::uint(py, arena_with::kept_calls() as u64)
}

/// Gives a struct view class the attribute routes of `fast_structs`, when
/// they are on (a no-op otherwise). Called as the class is classified.
pub(crate) fn attribute_routes(class: &Bound<'_, pyo3::types::PyType>) {
    #[cfg(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))]
    fast_structs::attribute_routes(class);
    #[cfg(not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)))]
    let _ = class;
}

/// The vectorcall entry every Allocator object carries (CPython reads it
/// only once `struct_entry_points` turned the type's vectorcall on).
pub(crate) fn allocator_vectorcall() -> Option<pyo3::ffi::vectorcallfunc> {
    #[cfg(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool))]
    return Some(fast_structs::allocator_vectorcall);
    #[cfg(not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)))]
    None
}

/// The descriptor `name` in `ty`'s own dict, checked to be an object of
/// `kind` (`PyMethodDescr_Type`, `PyGetSetDescr_Type`).
pub(crate) fn own_descriptor<'py>(
    ty: &Bound<'py, PyType>,
    name: &str,
    kind: *mut ffi::PyTypeObject,
) -> PyResult<Bound<'py, PyAny>> {
    let old = ty.getattr(checked::name!("__dict__"))?.get_item(name)?;
    // SAFETY: a type check of a live object.
    if unsafe { ffi::Py_IS_TYPE(old.as_ptr(), kind) } == 0 {
        return Err(checked::error::<pyo3::exceptions::PyRuntimeError>(format!(
            "{}.{name} is not the descriptor it was",
            ty.name()?
        )));
    }
    Ok(old)
}

/// Stores the descriptor `new` (made with `PyDescr_New*` for `ty`) as
/// `ty.name`, as PyType_Ready would.
pub(crate) fn set_descriptor(
    ty: &Bound<'_, PyType>,
    name: &str,
    new: *mut ffi::PyObject,
) -> PyResult<()> {
    let py = ty.py();
    // SAFETY: `new` is a new reference or NULL with the exception set; a
    // ready heap type's tp_dict is its dict, which may hold descriptors.
    unsafe {
        let new = Bound::from_owned_ptr_or_err(py, new)?;
        let tp_dict = Bound::from_borrowed_ptr(py, (*ty.as_type_ptr()).tp_dict);
        tp_dict.set_item(name, new)?;
        ffi::PyType_Modified(ty.as_type_ptr());
    }
    Ok(())
}

/// Calls `callable(first, *args)` (or `callable(*args)` without `first`)
/// with a call's arguments exactly as received; its error, if any, is
/// left raised. How a replaced entry point hands a call it does not serve
/// to the PyO3 code it replaced.
///
/// # Safety
/// Attached; `args` holds `nargs` positional then `len(kwnames)` keyword
/// values, borrowed; `kwnames` is null or a tuple.
pub(crate) unsafe fn call_prepended(
    callable: *mut ffi::PyObject,
    first: Option<*mut ffi::PyObject>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames)
        };
        let total = (nargs + nkw) as usize;
        let mut all: Vec<*mut ffi::PyObject> = Vec::new();
        if all.try_reserve_exact(total + 1).is_err() {
            return ffi::PyErr_NoMemory();
        }
        all.extend(first);
        if total > 0 {
            all.extend_from_slice(std::slice::from_raw_parts(args, total));
        }
        let npos = nargs as usize + usize::from(first.is_some());
        ffi::PyObject_Vectorcall(callable, all.as_ptr(), npos, kwnames)
    }
}

/// What CPython does for a callable without vectorcall: the positional
/// arguments as a tuple, the keyword ones as a dict, then `tp_call`.
///
/// # Safety
/// Attached; the arguments as CPython passes them to a vectorcall entry
/// (`args` holding `nargs` positional then `len(kwnames)` keyword values).
pub(crate) unsafe fn call_through_tp_call(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract; every reference made here is
    // released on every path.
    unsafe {
        let Some(call) = (*ffi::Py_TYPE(callable)).tp_call else {
            return ffi::PyErr_Format(ffi::PyExc_TypeError, c"object is not callable".as_ptr());
        };
        let tuple = ffi::PyTuple_New(nargs);
        if tuple.is_null() {
            return std::ptr::null_mut();
        }
        for i in 0..nargs {
            let a = *args.offset(i);
            ffi::Py_INCREF(a);
            ffi::PyTuple_SET_ITEM(tuple, i, a);
        }
        let mut kwargs = std::ptr::null_mut();
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames)
        };
        if nkw > 0 {
            kwargs = ffi::PyDict_New();
            if kwargs.is_null() {
                ffi::Py_DECREF(tuple);
                return std::ptr::null_mut();
            }
            for i in 0..nkw {
                let set = ffi::PyDict_SetItem(
                    kwargs,
                    ffi::PyTuple_GET_ITEM(kwnames, i),
                    *args.offset(nargs + i),
                );
                if set < 0 {
                    ffi::Py_DECREF(kwargs);
                    ffi::Py_DECREF(tuple);
                    return std::ptr::null_mut();
                }
            }
        }
        let r = call(callable, tuple, kwargs);
        ffi::Py_DECREF(tuple);
        if !kwargs.is_null() {
            ffi::Py_DECREF(kwargs);
        }
        r
    }
}
