//! Leak tracking in Python (DESIGN §7): the traceback capture the core calls
//! at each tracked allocation, the adaptive and diagnostic allocators, and
//! the raw functions `rsalloc.tracking` builds its API on.
//!
//! The frames themselves (capture and printing) are `py::sites`.

use super::allocator::{named_allocator, Allocator};
use super::checked;
use super::errors::IntoPy;
use crate::core::alloc::{AllocCore, Libc, LIBC_GROUP};
use crate::core::guard::Guarded;
use crate::core::track::{self, Entry};
use crate::py::checked::Int;
use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyTuple};
use std::ops::ControlFlow;
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
pub fn _track_frames() -> Int {
    Int::from(track::frames())
}

/// The sequence number the next tracked allocation will get.
#[pyfunction]
pub fn _track_seq() -> Int {
    Int(track::next_seq())
}

/// Tracked allocations that could not be recorded (bookkeeping memory ran out).
#[pyfunction]
pub fn _track_lost() -> Int {
    Int(track::lost())
}

/// `[(file, line, function), ...]` of a site, from its code objects'
/// own strings: nothing on the Rust heap but fallible reservations.
fn frames<'py>(
    py: Python<'py>,
    site: Option<&crate::core::track::Site>,
) -> PyResult<Bound<'py, PyList>> {
    let mut made = Vec::new();
    let mut failed = None;
    if let Some(site) = site {
        site.each_frame(&mut |file, line, func| {
            let frame = made
                .try_reserve(1)
                .map_err(|_| checked::error::<PyMemoryError>("the leak list"))
                .and_then(|()| {
                    checked::tuple(
                        py,
                        [
                            checked::str(py, file)?,
                            checked::int(py, line)?,
                            checked::str(py, func)?,
                        ],
                    )
                });
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
    checked::list(py, made.into_iter())
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
            frames(py, e.site.as_ref())?.into_any(),
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
        .map_err(|_| checked::error::<pyo3::exceptions::PyMemoryError>("the leak list"))?;
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
                frames(py, a.site.as_ref())?.into_any(),
            ],
        )?;
        items.push((a.seq, t));
    }
    items.sort_unstable_by_key(|(seq, _)| *seq);
    checked::list(py, items.into_iter().map(|(_, t)| t.into_any()))
}
