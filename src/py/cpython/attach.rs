//! Running Rust code from a C callback CPython makes outside PyO3's own
//! wrappers (a replaced slot, a dealloc, a finalizer) with the thread
//! registered with PyO3, as PyO3's wrappers register it.
//!
//! PyO3 0.30 decrefs a `Py<T>` (a `PyErr` holds some) on drop only when
//! its per-thread attach count says the thread is attached; otherwise it
//! hands the reference to its reference pool, which this build compiles
//! out (`pyo3_disable_reference_pool`), and there the hand-off drops the
//! reference again, unregistered, forever: a busy hang in
//! `drop_in_place::<PyErr>`, seen when a fast route dropped an error it
//! had made (a value conversion tried and abandoned). So such callbacks
//! run whatever may drop a `Py` through `registered`; the entry points'
//! plain case, which drops none, stays unregistered (entry.rs), and the
//! Python values the core keeps drop through `drop_registered`.
//!
//! `Python::attach` is the public way to register, but on a thread PyO3
//! has not registered (any call from Python code) it goes through
//! `PyGILState_Ensure` and `PyGILState_Release`: about 140 instructions a
//! call (callgrind). PyO3's trampoline, which its generated wrappers use,
//! only increments and decrements the count (a thread-local), about 40:
//! `registered` runs the code inside that trampoline
//! (`pyo3::impl_::trampoline`, public but outside PyO3's documented API:
//! a PyO3 release that changes it fails this file's compilation, not a
//! run).

use pyo3::ffi;
use pyo3::impl_::trampoline::{binaryfunc, MethodDef};
use pyo3::prelude::*;
use std::marker::PhantomData;

/// The closure and its result, passed through the trampoline's pointers.
struct Job<F, R> {
    f: Option<F>,
    out: Option<R>,
}

struct Def<F, R>(PhantomData<(F, R)>);

impl<F, R> MethodDef<binaryfunc::Func> for Def<F, R>
where
    F: FnOnce(Python<'_>) -> R,
{
    const METH: binaryfunc::Func = run::<F, R>;
}

/// The trampoline's body: runs the job `job` points to.
///
/// # Safety
/// `job` is the `Job<F, R>` of the `registered` call on this stack.
unsafe fn run<F, R>(
    py: Python<'_>,
    job: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject>
where
    F: FnOnce(Python<'_>) -> R,
{
    // SAFETY: per the function's contract; nothing else touches the job
    // while the trampoline runs.
    let job = unsafe { &mut *job.cast::<Job<F, R>>() };
    if let Some(f) = job.f.take() {
        job.out = Some(f(py));
    }
    // Any non-null pointer: the trampoline hands it back untouched.
    Ok(std::ptr::NonNull::<ffi::PyObject>::dangling().as_ptr())
}

/// Runs `f` with the thread registered with PyO3 (see the file comment);
/// None when `f` panicked, the panic then raised as PyO3 raises one
/// (`PanicException`).
///
/// # Safety
/// The thread holds the GIL (or an attached thread state), as CPython's
/// callbacks do.
#[inline(always)]
pub(crate) unsafe fn registered<R>(f: impl FnOnce(Python<'_>) -> R) -> Option<R> {
    #[inline(always)]
    unsafe fn go<F: FnOnce(Python<'_>) -> R, R>(f: F) -> Option<R> {
        let mut job = Job::<F, R> {
            f: Some(f),
            out: None,
        };
        // SAFETY: the trampoline requires an attached thread (the caller's
        // contract) and passes its two pointers to `run` without reading
        // them; `job` outlives the call.
        unsafe {
            binaryfunc::<Def<F, R>>(std::ptr::addr_of_mut!(job).cast(), std::ptr::null_mut());
        }
        job.out
    }
    // SAFETY: per the function's contract.
    unsafe { go(f) }
}

/// Drops `v`, which holds Python references, registered with PyO3. For the
/// Python values the core keeps (a record's captured frames, an allocator's
/// or arena's handle and callbacks): the core drops them wherever a record
/// or allocator loses its last reference, which can be inside a fast
/// route's plain case (the index letting a lately freed record go), where
/// the thread is not registered. The GIL is held there, as everywhere
/// rsalloc's code runs; a drop without it (never seen) leaks, as PyO3 0.29
/// leaked an unregistered drop.
pub(crate) fn drop_registered<T>(v: T) {
    if !std::mem::needs_drop::<T>() {
        return;
    }
    // SAFETY: PyGILState_Check may be called at any time; with the GIL
    // held, the trampoline's requirement holds.
    unsafe {
        if ffi::PyGILState_Check() == 0 {
            std::mem::forget(v);
            return;
        }
        let _ = registered(move |_| drop(v));
    }
}
