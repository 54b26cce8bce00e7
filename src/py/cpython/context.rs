//! Whether the running context's variable mapping is its own: no copy of
//! the context (`contextvars.copy_context()`, an asyncio task made inside a
//! `with`) shares it. Then a value only this context can reach may be
//! changed in place instead of through `PyContextVar_Set` (a mapping copy
//! and a reset token: a fifth of a per-call `with Arena()`, callgrind); see
//! `arena.rs`, `Arena::enter`.
//!
//! CPython keeps the running context in its thread state (`tstate->context`)
//! and the mapping in the context (`ctx->ctx_vars`, after the object header
//! and `ctx_prev`, in 3.10 to 3.13): neither is public API. The thread
//! state's word is found at install by entering a context of our own and
//! looking for it, the mapping's word checked by its type's name; when
//! either is not where it should be, the trick is off and every `with`
//! sets the variable.

use pyo3::ffi;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The word of the thread state holding the running context; 0: off.
static CONTEXT_WORD: AtomicUsize = AtomicUsize::new(0);

/// The word of a context object holding its variable mapping.
const VARS_WORD: usize = 3;

/// How many words of the thread state the probe looks through.
const SEARCH: usize = 256;

/// The mapping's word of context `ctx`.
///
/// # Safety
/// `ctx` is a live context object.
unsafe fn vars(ctx: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract; VARS_WORD is inside the object
    // (checked at install).
    unsafe { *ctx.cast::<*mut ffi::PyObject>().add(VARS_WORD) }
}

/// The type name of `obj`.
///
/// # Safety
/// `obj` is a live object.
unsafe fn type_name(obj: *mut ffi::PyObject) -> &'static [u8] {
    // SAFETY: a live object's type is a live type with a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr((*ffi::Py_TYPE(obj)).tp_name).to_bytes() }
}

/// Finds the thread state's context word and checks the context layout.
pub(crate) fn install(_py: Python<'_>) -> Result<(), String> {
    if cfg!(Py_GIL_DISABLED) {
        return Err("free-threaded build: reference counts are not a proof there".into());
    }
    // SAFETY: attached (module init); the context made here is entered and
    // left on this thread before anything else runs, and released.
    unsafe {
        let ctx = ffi::PyContext_New();
        if ctx.is_null() {
            ffi::PyErr_Clear();
            return Err("PyContext_New failed".into());
        }
        let release = |why: &str| {
            ffi::Py_DECREF(ctx);
            Err(why.to_string())
        };
        if !type_name(ctx).ends_with(b"Context")
            || (*ffi::Py_TYPE(ctx)).tp_basicsize
                < ((VARS_WORD + 1) * std::mem::size_of::<usize>()) as ffi::Py_ssize_t
        {
            return release("a context object is not laid out as in CPython 3.10 to 3.13");
        }
        let m = vars(ctx);
        if m.is_null() || type_name(m) != b"hamt" {
            return release(
                "a context's variable mapping is not where CPython 3.10 to 3.13 keep it",
            );
        }
        let ts = ffi::PyThreadState_Get().cast::<*mut ffi::PyObject>();
        if ffi::PyContext_Enter(ctx) != 0 {
            ffi::PyErr_Clear();
            return release("PyContext_Enter failed");
        }
        let found: Vec<usize> = (0..SEARCH).filter(|&i| *ts.add(i) == ctx).collect();
        let left = ffi::PyContext_Exit(ctx) == 0;
        if !left {
            ffi::PyErr_Clear();
            return release("PyContext_Exit failed");
        }
        match found.as_slice() {
            [i] if *ts.add(*i) != ctx => {
                CONTEXT_WORD.store(*i, Relaxed);
                ffi::Py_DECREF(ctx);
                Ok(())
            }
            _ => release("the running context is not one word of the thread state"),
        }
    }
}

/// Whether the running context's variable mapping is its own (no copy of
/// the context shares it), and so whether a value only this context holds
/// may change in place. False when the trick is off, or there is no
/// context yet.
///
/// # Safety
/// Attached, with a GIL (install checked there is one).
#[inline]
pub(crate) unsafe fn vars_are_its_own() -> bool {
    let word = CONTEXT_WORD.load(Relaxed);
    if word == 0 {
        return false;
    }
    // SAFETY: per the function's contract: the thread state is this
    // thread's, its context word was found at install, and a context's
    // mapping is always set (a live object).
    unsafe {
        let ts = ffi::PyThreadState_Get().cast::<*mut ffi::PyObject>();
        let ctx = *ts.add(word);
        if ctx.is_null() {
            return false;
        }
        let m = vars(ctx);
        !m.is_null() && ffi::Py_REFCNT(m) == 1
    }
}
