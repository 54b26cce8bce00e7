//! Reports rsalloc blocks to `tracemalloc` (DESIGN §7) in the domain
//! `rsalloc.TRACEMALLOC_DOMAIN`, through `core::observer`.
//!
//! Whether tracemalloc traces is a flag the Python side keeps current
//! (`rsalloc._tracemalloc` wraps `tracemalloc.start`/`stop`): asking
//! `tracemalloc.is_tracing()` per block would cost a Python call each, and
//! CPython's own flag is internal. `PyTraceMalloc_Track` takes the GIL itself
//! and does nothing (returns -2) when tracemalloc is not tracing, so a stale
//! flag costs time, never correctness.

use crate::core::observer::{self, Observer};
use crate::py::checked::Int;
use pyo3::prelude::*;
use std::ffi::{c_int, c_uint};

/// Must equal `TRACEMALLOC_DOMAIN` in python/rsalloc/_constants.py.
pub const DOMAIN: c_uint = 7725;

extern "C" {
    // CPython's public C API (Include/cpython/tracemalloc.h), exported by
    // every interpreter rsalloc supports.
    fn PyTraceMalloc_Track(domain: c_uint, ptr: usize, size: usize) -> c_int;
    fn PyTraceMalloc_Untrack(domain: c_uint, ptr: usize) -> c_int;
}

fn made(addr: usize, size: usize) {
    // SAFETY: a public CPython function that takes the GIL itself; the
    // block is an address and a size, never dereferenced.
    unsafe { PyTraceMalloc_Track(DOMAIN, addr, size) };
}

fn gone(addr: usize) {
    // SAFETY: as above; untracking an untracked address does nothing.
    unsafe { PyTraceMalloc_Untrack(DOMAIN, addr) };
}

/// Installs the observer (at module init; reports stay off).
pub fn install() {
    observer::install(Observer { made, gone });
}

/// Reports blocks to tracemalloc from now on (`on`), or stops: private, for
/// `rsalloc._tracemalloc`.
#[pyfunction]
pub fn _set_tracemalloc(on: bool) {
    observer::set_on(on);
}

/// Whether blocks are being reported to tracemalloc: private, for tests.
#[pyfunction]
pub fn _tracemalloc_on() -> bool {
    observer::is_on()
}

/// The domain blocks are reported in: private, checked against the Python
/// constant at import.
#[pyfunction]
pub fn _tracemalloc_domain() -> Int {
    Int(DOMAIN.into())
}
