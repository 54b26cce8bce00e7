//! Leak tracking in Python (DESIGN §7): the traceback capture the core calls
//! at each tracked allocation, the adaptive and diagnostic allocators, and
//! the raw functions `rsalloc.tracking` builds its API on.
//!
//! The frames themselves (capture and printing) are `py::sites`.

use super::allocator::{named_allocator, Allocator};
use super::errors::IntoPy;
use crate::core::alloc::{AllocCore, Libc, LIBC_GROUP};
use crate::core::guard::Guarded;
use crate::core::track::{self, Entry};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyTuple};
use std::time::UNIX_EPOCH;

static ADAPTIVE_MALLOC: PyOnceLock<Py<Allocator>> = PyOnceLock::new();
static ADAPTIVE_CALLOC: PyOnceLock<Py<Allocator>> = PyOnceLock::new();
static DIAGNOSTIC_MALLOC: PyOnceLock<Py<Allocator>> = PyOnceLock::new();
static DIAGNOSTIC_CALLOC: PyOnceLock<Py<Allocator>> = PyOnceLock::new();

/// `adaptive_malloc`/`adaptive_calloc` (package:win32's names): libc's heap,
/// recorded exactly when tracking is on — the same as `malloc`/`calloc`.
pub fn adaptive(py: Python<'_>, zeroed: bool) -> PyResult<Bound<'_, Allocator>> {
    let (cell, name) = if zeroed {
        (&ADAPTIVE_CALLOC, "adaptive_calloc")
    } else {
        (&ADAPTIVE_MALLOC, "adaptive_malloc")
    };
    named_allocator(py, cell, || {
        AllocCore::new(name, LIBC_GROUP, zeroed, Box::new(Libc))
    })
}

/// `diagnostic_malloc`/`diagnostic_calloc`: always recorded, guard bytes
/// around every block. In libc's owner group: the record's own backend
/// returns each block, whichever of the group frees it.
pub fn diagnostic(py: Python<'_>, zeroed: bool) -> PyResult<Bound<'_, Allocator>> {
    let (cell, name) = if zeroed {
        (&DIAGNOSTIC_CALLOC, "diagnostic_calloc")
    } else {
        (&DIAGNOSTIC_MALLOC, "diagnostic_malloc")
    };
    named_allocator(py, cell, || {
        AllocCore::new_tracked(name, LIBC_GROUP, zeroed, Box::new(Guarded), true)
    })
}

/// `_track_enable(frames)`: turns tracking on.
#[pyfunction]
pub fn _track_enable(frames: usize) {
    track::enable(frames);
}

/// `_track_disable()`: turns tracking off (records already made stay).
#[pyfunction]
pub fn _track_disable() {
    track::disable();
}

#[pyfunction]
pub fn _track_is_enabled() -> bool {
    track::enabled()
}

/// Frames captured per allocation.
#[pyfunction]
pub fn _track_frames() -> usize {
    track::frames()
}

/// The sequence number the next tracked allocation will get.
#[pyfunction]
pub fn _track_seq() -> u64 {
    track::next_seq()
}

/// Tracked allocations that could not be recorded (bookkeeping memory ran out).
#[pyfunction]
pub fn _track_lost() -> u64 {
    track::lost()
}

/// The Python objects of the leak list, each made fallibly: the list is
/// built when memory may be exhausted (`leak_check`, the exit report), and
/// PyO3's own conversions of ints, floats and strs panic when CPython
/// returns NULL, where the panic may then not even get the memory for its
/// message (an abort).
mod checked {
    use pyo3::ffi;
    use pyo3::prelude::*;
    use pyo3::types::{PyList, PyTuple};
    use std::ops::ControlFlow;

    fn own(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<Bound<'_, PyAny>> {
        // SAFETY: `p` is a new reference or NULL with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(py, p) }
    }

    pub fn uint(py: Python<'_>, v: u64) -> PyResult<Bound<'_, PyAny>> {
        // SAFETY: a plain conversion; NULL on failure.
        own(py, unsafe { ffi::PyLong_FromUnsignedLongLong(v) })
    }

    pub fn int(py: Python<'_>, v: i64) -> PyResult<Bound<'_, PyAny>> {
        // SAFETY: as above.
        own(py, unsafe { ffi::PyLong_FromLongLong(v) })
    }

    pub fn float(py: Python<'_>, v: f64) -> PyResult<Bound<'_, PyAny>> {
        // SAFETY: as above.
        own(py, unsafe { ffi::PyFloat_FromDouble(v) })
    }

    pub fn str<'py>(py: Python<'py>, s: &str) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: `s` is valid UTF-8 of `s.len()` bytes (a str's length fits isize).
        own(py, unsafe {
            ffi::PyUnicode_FromStringAndSize(s.as_ptr().cast(), s.len() as ffi::Py_ssize_t)
        })
    }

    pub fn opt_str<'py>(py: Python<'py>, s: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
        match s {
            Some(s) => str(py, s),
            None => Ok(py.None().into_bound(py)),
        }
    }

    pub fn tuple<'py, const N: usize>(
        py: Python<'py>,
        items: [Bound<'py, PyAny>; N],
    ) -> PyResult<Bound<'py, PyTuple>> {
        // SAFETY: a new tuple of N slots, each set once; SetItem steals the
        // reference it is given.
        unsafe {
            let t = own(py, ffi::PyTuple_New(N as ffi::Py_ssize_t))?;
            for (i, item) in items.into_iter().enumerate() {
                ffi::PyTuple_SetItem(t.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr());
            }
            Ok(t.cast_into_unchecked())
        }
    }

    pub fn list<'py>(
        py: Python<'py>,
        items: impl ExactSizeIterator<Item = Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        // SAFETY: a new list of len slots, each set once (an iterator that
        // yields fewer leaves NULL slots, which lists allow until set);
        // SetItem steals the reference.
        unsafe {
            let l = own(py, ffi::PyList_New(items.len() as ffi::Py_ssize_t))?;
            for (i, item) in items.enumerate() {
                ffi::PyList_SetItem(l.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr());
            }
            Ok(l.cast_into_unchecked())
        }
    }

    /// `[(file, line, function), ...]` of a site, from its code objects'
    /// own strings: nothing on the Rust heap but fallible reservations.
    pub fn frames<'py>(
        py: Python<'py>,
        site: Option<&crate::core::track::Site>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut made = Vec::new();
        let mut failed = None;
        if let Some(site) = site {
            site.each_frame(&mut |file, line, func| {
                let frame = made
                    .try_reserve(1)
                    .map_err(|_| pyo3::exceptions::PyMemoryError::new_err("the leak list"))
                    .and_then(|()| tuple(py, [str(py, file)?, int(py, line)?, str(py, func)?]));
                match frame {
                    Ok(t) => {
                        made.push(t.into_any());
                        ControlFlow::Continue(())
                    }
                    Err(e) => {
                        failed = Some(e);
                        ControlFlow::Break(())
                    }
                }
            });
        }
        if let Some(e) = failed {
            return Err(e);
        }
        list(py, made.into_iter())
    }
}

fn entry_tuple<'py>(py: Python<'py>, e: &Entry) -> PyResult<Bound<'py, PyTuple>> {
    let time = e
        .wall_time()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    checked::tuple(
        py,
        [
            checked::uint(py, e.seq)?,
            checked::uint(py, e.addr as u64)?,
            checked::uint(py, e.size as u64)?,
            checked::str(py, e.ty)?,
            checked::str(py, &e.allocator.name)?,
            checked::float(py, time)?,
            checked::uint(py, e.thread_id)?,
            checked::opt_str(py, e.thread_name.as_deref())?,
            checked::frames(py, e.site.as_ref())?.into_any(),
        ],
    )
}

/// `_track_live(since)`: the live records with a sequence number >= since,
/// oldest first, as tuples `(seq, address, size, type, allocator, time,
/// thread_id, thread_name, [(file, line, function), ...])`.
#[pyfunction]
pub fn _track_live(py: Python<'_>, since: u64) -> PyResult<Bound<'_, PyList>> {
    let entries = track::live_since(since).py(py, &"the leak list")?;
    let arenas = track::live_arenas_since(since).py(py, &"the leak list")?;
    let mut items = Vec::new();
    items
        .try_reserve_exact(entries.len() + arenas.len())
        .map_err(|_| pyo3::exceptions::PyMemoryError::new_err("the leak list"))?;
    for e in &entries {
        items.push((e.seq, entry_tuple(py, e)?));
    }
    // Unreleased arenas: one record each, of type "Arena", at address 0.
    for a in arenas {
        let time = a
            .wall_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let t = checked::tuple(
            py,
            [
                checked::uint(py, a.seq)?,
                checked::uint(py, 0)?,
                checked::uint(py, (a.live_bytes)())?,
                checked::str(py, "Arena")?,
                checked::str(py, &a.name)?,
                checked::float(py, time)?,
                checked::uint(py, a.thread_id)?,
                checked::opt_str(py, a.thread_name.as_deref())?,
                checked::frames(py, a.site.as_ref())?.into_any(),
            ],
        )?;
        items.push((a.seq, t));
    }
    items.sort_unstable_by_key(|(seq, _)| *seq);
    checked::list(py, items.into_iter().map(|(_, t)| t.into_any()))
}
