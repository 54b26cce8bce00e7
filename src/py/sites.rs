//! Where a block was allocated and freed: the Python frames captured for the
//! leak registry (the core calls `capture` through `track::set_capture`),
//! and how they print in reports and error messages. Depends on the core
//! only, so that `Pointer`'s messages and the allocators can use it.
//!
//! A capture keeps (code object, instruction offset) pairs only; file, line
//! and function are worked out when a report or an error message needs them.

use crate::core::record::Record;
use crate::core::record::Trace;
use crate::core::track::{self, Capture, Site};
use crate::py::checked;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::cell::RefCell;
use std::ffi::c_int;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

/// A captured stack, innermost frame first.
pub(crate) struct Frames(Box<[(Py<PyAny>, c_int)]>);

impl Drop for Frames {
    fn drop(&mut self) {
        // The core drops a record's frames wherever its last reference goes.
        crate::py::cpython::attach::drop_registered(std::mem::take(&mut self.0));
    }
}

thread_local! {
    /// `threading.current_thread().name`, looked up once per thread.
    static THREAD_NAME: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

pub(crate) fn thread_name(py: Python<'_>) -> Option<Arc<str>> {
    THREAD_NAME.with(|cell| {
        if let Some(n) = &*cell.borrow() {
            return Some(n.clone());
        }
        let name: Arc<str> = py
            .import(checked::name!("threading"))
            .and_then(|m| m.call_method0(checked::name!("current_thread")))
            .and_then(|t| t.getattr(checked::name!("name")))
            .and_then(|n| n.extract::<String>())
            .ok()?
            .into();
        *cell.borrow_mut() = Some(name.clone());
        Some(name)
    })
}

/// The running Python frame's code object and instruction offset: the
/// cheapest record of where the caller is. Read from the interpreter's
/// frame record where the fence can (`cpython::frames`: no frame object
/// made); else asked of the frame object, which CPython makes on demand.
pub fn caller_frame(py: Python<'_>) -> Option<(Py<PyAny>, c_int)> {
    if let Some((code, lasti)) = super::cpython::frames::caller(py) {
        // SAFETY: `caller` returns a new reference to a code object.
        return Some((unsafe { Bound::from_owned_ptr(py, code) }.unbind(), lasti));
    }
    // SAFETY: attached; PyEval_GetFrame lends its frame, PyFrame_GetCode
    // returns a new reference, which we keep.
    unsafe {
        let before = ffi::PyErr_Occurred();
        let frame = ffi::PyEval_GetFrame();
        if frame.is_null() {
            forget_frame_error(before);
            return None;
        }
        let code = ffi::PyFrame_GetCode(frame);
        let lasti = ffi::PyFrame_GetLasti(frame);
        // Never NULL (CPython asserts it), but no panic either way: an
        // arena's renewal runs this where a panic could not be caught.
        Some((
            Bound::from_owned_ptr_or_opt(py, code.cast())?.unbind(),
            lasti,
        ))
    }
}

/// The file and line of a [`caller_frame`].
pub fn frame_location(py: Python<'_>, (code, lasti): &(Py<PyAny>, c_int)) -> (String, i64) {
    with_frame(py, code, *lasti, |file, line, _| (file.to_owned(), line))
}

/// Clears what a NULL frame left raised, when `before` (PyErr_Occurred()
/// before reading frames) was NULL: PyEval_GetFrame and PyFrame_GetBack
/// make the frame object on demand, and out of memory give NULL with
/// MemoryError set. A site is best effort (fewer frames, or none); the
/// operation it describes must not fail for it, nor return with an
/// exception set. An exception that was already set (a free in a dealloc
/// while one propagates) is left alone.
///
/// # Safety
/// Attached to the interpreter.
unsafe fn forget_frame_error(before: *mut ffi::PyObject) {
    // SAFETY: per the function's contract.
    unsafe {
        if before.is_null() && !ffi::PyErr_Occurred().is_null() {
            ffi::PyErr_Clear();
        }
    }
}

/// The core's capture hook: up to `n` frames of the running Python stack.
pub(crate) fn capture(n: usize) -> Capture {
    Python::attach(|py| {
        let mut frames = Vec::with_capacity(n.min(track::MAX_FRAMES));
        // SAFETY: attached to the interpreter. PyEval_GetFrame lends its
        // frame; PyFrame_GetBack and PyFrame_GetCode return new references,
        // which we release (frames) or keep (code objects).
        unsafe {
            let before = ffi::PyErr_Occurred();
            let mut frame = ffi::PyEval_GetFrame();
            let mut owned: *mut ffi::PyFrameObject = std::ptr::null_mut();
            while !frame.is_null() && frames.len() < n {
                let code = ffi::PyFrame_GetCode(frame);
                let lasti = ffi::PyFrame_GetLasti(frame);
                frames.push((Bound::from_owned_ptr(py, code.cast()).unbind(), lasti));
                let back = ffi::PyFrame_GetBack(frame);
                if !owned.is_null() {
                    ffi::Py_DECREF(owned.cast());
                }
                owned = back;
                frame = back;
            }
            if !owned.is_null() {
                ffi::Py_DECREF(owned.cast());
            }
            forget_frame_error(before);
        }
        Capture {
            site: (!frames.is_empty()).then(|| Arc::new(Frames(frames.into_boxed_slice())) as Site),
            thread_name: thread_name(py),
        }
    })
}

/// One resolved frame: (file, line, function).
pub(crate) type Line = (String, i64, String);

impl Trace for Frames {
    fn each_frame(&self, each: &mut dyn FnMut(&str, i64, &str) -> ControlFlow<()>) {
        Python::attach(|py| {
            for (code, lasti) in &self.0 {
                if with_frame(py, code, *lasti, &mut *each).is_break() {
                    return;
                }
            }
        });
    }
}

/// Calls `f` with a frame's file, line and function: the code object's
/// own strings, borrowed, so nothing is made on the Rust heap (the leak
/// list is built from them under memory pressure too).
fn with_frame<R>(
    py: Python<'_>,
    code: &Py<PyAny>,
    lasti: c_int,
    f: impl FnOnce(&str, i64, &str) -> R,
) -> R {
    fn text<'a>(v: &'a PyResult<Bound<'_, PyAny>>) -> &'a str {
        v.as_ref()
            .ok()
            .and_then(|v| v.cast::<PyString>().ok())
            .and_then(|s| s.to_str().ok())
            .unwrap_or("?")
    }
    let code = code.bind(py);
    // SAFETY: `code` is a code object (PyFrame_GetCode's result).
    let line = unsafe { ffi::PyCode_Addr2Line(code.as_ptr().cast(), lasti) };
    let file = code.getattr(checked::name!("co_filename"));
    let func = code.getattr(checked::name!("co_qualname"));
    f(text(&file), i64::from(line), text(&func))
}

/// A site's innermost frame.
fn innermost(site: &Site) -> Option<Line> {
    let mut first = None;
    site.each_frame(&mut |file, line, func| {
        first = Some((file.to_owned(), line, func.to_owned()));
        ControlFlow::Break(())
    });
    first
}

/// The file and line of a site's innermost frame.
pub fn site_location(_py: Python<'_>, site: &Site) -> Option<(String, i64)> {
    let (file, line, _) = innermost(site)?;
    Some((file, line))
}

pub(crate) fn first_line(_py: Python<'_>, site: &Site) -> Option<String> {
    let (file, line, func) = innermost(site)?;
    Some(format!("{file}:{line} in {func}"))
}

/// Appends where the block was allocated and freed, when tracking saw it
/// (error messages: `Pointer`'s Display).
pub fn write_sites(f: &mut fmt::Formatter<'_>, rec: &Record) -> fmt::Result {
    let Some(t) = rec.tracked() else {
        return Ok(());
    };
    Python::attach(|py| {
        if let Some(at) = t.site.as_ref().and_then(|s| first_line(py, s)) {
            write!(f, "; allocated at {at}")?;
        }
        if let Some(at) = t.freed.get().and_then(|s| first_line(py, s)) {
            write!(f, "; freed at {at}")?;
        }
        Ok(())
    })
}

/// Installs the capture hook (module import).
pub fn install() {
    track::set_capture(capture);
    // The cache's destructor is registered on its first use: here, for the
    // main thread, while memory is there (glibc aborts the process when it
    // cannot register one: "failed to register TLS destructor").
    THREAD_NAME.with(|_| ());
}
