//! The caller's code object and instruction offset without a frame object.
//!
//! `Arena()` records where it was made (the ResourceWarning of an arena
//! collected unreleased names that line), and the public way to ask,
//! `PyEval_GetFrame`, makes the running function's frame object when it
//! has none: in a function that opens a per-call arena, once per call, and
//! the frame object then goes again at the function's return. That was a
//! sixth of a per-call arena inside a function (BENCHMARKS.md, the tenth
//! session). The interpreter's own frame record holds the code object and
//! the instruction pointer: read here, from the thread state, where
//! CPython 3.11 to 3.13 keep them (`cpython/pystate.h`,
//! `internal/pycore_frame.h` of each version; the offsets below are those
//! headers').
//!
//! Checked at install against the public answer on the frames running the
//! import (code object, instruction offset, and the code's first
//! instruction found the same for two frames); off on any other version,
//! on a free-threaded build, or when a check fails. A frame that is not a
//! plain thread- or generator-owned one (a C-stack shim, 3.12+) or no
//! frame at all gives None: the caller asks the public way then.
//! `RSALLOC_CALLER_FRAMES=0` at import turns this one trick off, so that
//! the tests compare both ways with every other trick on
//! (tests/test_caller_frames.py).

use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Where a version keeps the running frame and, in it, the code object,
/// the instruction pointer and the owner byte (byte offsets).
struct Layout {
    /// `tstate->cframe` (3.11, 3.12), through which the frame is reached;
    /// None: the frame pointer is in the thread state itself (3.13).
    cframe: Option<usize>,
    /// `current_frame`, in the cframe or the thread state.
    current: usize,
    code: usize,
    instr: usize,
    owner: usize,
}

#[cfg(all(not(Py_3_12), not(any(PyPy, GraalPy, Py_LIMITED_API, Py_GIL_DISABLED))))]
const LAYOUT: Option<Layout> = Some(Layout {
    cframe: Some(56),
    current: 8,
    code: 32,
    instr: 56,
    owner: 69,
});
#[cfg(all(
    Py_3_12,
    not(Py_3_13),
    not(any(PyPy, GraalPy, Py_LIMITED_API, Py_GIL_DISABLED))
))]
const LAYOUT: Option<Layout> = Some(Layout {
    cframe: Some(56),
    current: 0,
    code: 0,
    instr: 56,
    owner: 70,
});
#[cfg(all(
    Py_3_13,
    not(Py_3_14),
    not(any(PyPy, GraalPy, Py_LIMITED_API, Py_GIL_DISABLED))
))]
const LAYOUT: Option<Layout> = Some(Layout {
    cframe: None,
    current: 72,
    code: 0,
    instr: 56,
    owner: 70,
});
#[cfg(any(Py_3_14, PyPy, GraalPy, Py_LIMITED_API, Py_GIL_DISABLED))]
const LAYOUT: Option<Layout> = None;

/// `FRAME_OWNED_BY_THREAD` and `FRAME_OWNED_BY_GENERATOR` (all three versions).
const OWNED_BY_THREAD: u8 = 0;
const OWNED_BY_GENERATOR: u8 = 1;

/// Bytes from a code object to its first instruction, found at install;
/// 0: off.
static CODE_START: AtomicUsize = AtomicUsize::new(0);

/// The running interpreter frame (null when none).
///
/// # Safety
/// Attached; `l` is this version's layout.
unsafe fn current_frame(l: &Layout) -> *const u8 {
    // SAFETY: attached, so the thread state is live; the offsets are this
    // version's (its headers'), and a cframe pointer is live while set.
    unsafe {
        let ts = ffi::PyThreadState_Get().cast::<u8>();
        let base = match l.cframe {
            Some(at) => {
                let cf = *ts.add(at).cast::<*const u8>();
                if cf.is_null() {
                    return std::ptr::null();
                }
                cf
            }
            None => ts.cast_const(),
        };
        *base.add(l.current).cast::<*const u8>()
    }
}

/// The code object (borrowed) and instruction pointer of interpreter
/// frame `f`, when it is a plain one.
///
/// # Safety
/// `f` is a live interpreter frame of this version's layout `l`.
unsafe fn code_and_instr(l: &Layout, f: *const u8) -> Option<(*mut ffi::PyObject, *const u8)> {
    // SAFETY: per the function's contract.
    unsafe {
        let owner = *f.add(l.owner);
        if owner != OWNED_BY_THREAD && owner != OWNED_BY_GENERATOR {
            return None;
        }
        let code = *f.add(l.code).cast::<*mut ffi::PyObject>();
        let instr = *f.add(l.instr).cast::<*const u8>();
        (!code.is_null() && ffi::PyCode_Check(code) != 0).then_some((code, instr))
    }
}

/// The running frame's code object (borrowed) and instruction pointer,
/// and how far a code object's instructions start from it; None when the
/// trick is off or the running frame is not a plain one.
fn running() -> Option<(*mut ffi::PyObject, *const u8, usize)> {
    let l = LAYOUT.as_ref()?;
    let start = CODE_START.load(Relaxed);
    if start == 0 {
        return None;
    }
    // SAFETY: callers are attached (their token); on, so the layout was
    // checked at install.
    unsafe {
        let f = current_frame(l);
        if f.is_null() {
            return None;
        }
        let (code, instr) = code_and_instr(l, f)?;
        Some((code, instr, start))
    }
}

/// The caller's code object (a new reference) and instruction offset in
/// bytes, as `PyFrame_GetCode` and `PyFrame_GetLasti` give them, without
/// making a frame object; None when the trick is off or the running frame
/// is not a plain one (ask the public way then).
pub(crate) fn caller(_py: Python<'_>) -> Option<(*mut ffi::PyObject, c_int)> {
    let (code, instr, start) = running()?;
    let lasti = instr.addr().checked_sub(code.addr() + start)?;
    let lasti = c_int::try_from(lasti).ok()?;
    // SAFETY: attached (the token); a live code object.
    Some((unsafe { ffi::Py_NewRef(code) }, lasti))
}

/// The first byte of the instruction the running frame is executing: its
/// opcode as the code's adaptive bytes hold it (specialized or
/// instrumented forms included); None when the trick is off or no plain
/// frame runs.
pub(crate) fn running_opcode(_py: Python<'_>) -> Option<u8> {
    let (_, instr, _) = running()?;
    // SAFETY: attached (the token); the layout checked at install: a plain
    // frame's instruction pointer points into its code object (at the
    // instruction running, or in 3.11 and 3.12 at the unit before the
    // first one until it runs: still the code object's).
    Some(unsafe { *instr })
}

/// The public answer for frame object `frame` (borrowed): its code
/// (borrowed), instruction offset and interpreter frame.
///
/// # Safety
/// Attached; `frame` is a live frame object.
unsafe fn public(frame: *mut ffi::PyFrameObject) -> (*mut ffi::PyObject, c_int, *const u8) {
    // SAFETY: per the function's contract; `f_frame` is the word after
    // `f_back` in 3.11 to 3.13 (`internal/pycore_frame.h`), used only to be
    // compared with what the thread state gives.
    unsafe {
        let code = ffi::PyFrame_GetCode(frame).cast::<ffi::PyObject>();
        ffi::Py_DECREF(code); // the frame holds it
        let lasti = ffi::PyFrame_GetLasti(frame);
        let interp = *frame.cast::<*const u8>().add(3);
        (code, lasti, interp)
    }
}

/// Checks the layout on the frames running the import and finds where a
/// code object's instructions start.
pub(crate) fn install(_py: Python<'_>) -> Result<(), String> {
    if std::env::var_os("RSALLOC_CALLER_FRAMES").is_some_and(|v| v == "0") {
        return Err("RSALLOC_CALLER_FRAMES=0 at import".into());
    }
    let l = LAYOUT
        .as_ref()
        .ok_or("no frame layout known for this Python build")?;
    // SAFETY: attached (module init, inside the import's Python frames);
    // the frame objects asked for here are the running frames' own.
    unsafe {
        let frame = ffi::PyEval_GetFrame();
        if frame.is_null() {
            ffi::PyErr_Clear();
            return Err("no Python frame runs the import".into());
        }
        let running = public(frame).2;
        if running.is_null() || current_frame(l) != running {
            return Err("the thread state's running frame is not PyEval_GetFrame's".into());
        }
        let back = ffi::PyFrame_GetBack(frame);
        if back.is_null() {
            ffi::PyErr_Clear();
            return Err("the import's frame has no caller".into());
        }
        let found = code_start(l, frame).and_then(|at| match code_start(l, back)? {
            again if again == at => Ok(at),
            _ => Err("two frames' code starts at different offsets".to_string()),
        });
        ffi::Py_DECREF(back.cast());
        CODE_START.store(found?, Relaxed);
    }
    Ok(())
}

/// Where the code of frame object `frame` starts, as bytes from its code
/// object, checked against the public answer: the same code object, and
/// an offset in a code object's plausible range.
///
/// # Safety
/// Attached; `frame` is a live frame object.
unsafe fn code_start(l: &Layout, frame: *mut ffi::PyFrameObject) -> Result<usize, String> {
    // SAFETY: per the function's contract; `interp` is the frame's own
    // interpreter frame (the caller checked the layout finds the running one).
    unsafe {
        let (code, lasti, interp) = public(frame);
        let Some((c, instr)) = code_and_instr(l, interp) else {
            return Err("the running frame's owner or code is not where expected".into());
        };
        let at = instr
            .addr()
            .wrapping_sub(c.addr())
            .wrapping_sub(lasti as usize);
        if c != code || lasti < 0 || !(16..4096).contains(&at) {
            return Err(
                "the frame's code or instruction pointer disagrees with PyFrame_GetLasti".into(),
            );
        }
        Ok(at)
    }
}
