//! `rsalloc.Stats` and `rsalloc.stats()` (DESIGN §7).

use super::args::limit_arg;
use crate::core::budget;
use crate::core::stats::{Snapshot, GLOBAL};
use crate::py::checked::{self, Int, Text};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// A snapshot of allocation counters.
#[pyclass(frozen, module = "rsalloc", name = "Stats")]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Allocations handed out and not yet freed or released.
    pub live_count: u64,
    /// Bytes asked for by the live allocations.
    pub live_bytes: u64,
    /// The highest live_bytes seen.
    pub peak_bytes: u64,
    /// Allocations counted so far, freed or not.
    pub total_allocs: u64,
    /// Allocations freed or released so far.
    pub total_frees: u64,
    /// The cap on live_bytes (`a.limited(n)`, `Arena(limit=n)`,
    /// `rsalloc.set_limit(n)`), None when there is none.
    pub limit: Option<u64>,
}

impl Stats {
    /// These counters, showing `limit`.
    pub fn with_limit(self, limit: Option<u64>) -> Self {
        Stats { limit, ..self }
    }
}

impl From<Snapshot> for Stats {
    fn from(s: Snapshot) -> Self {
        Stats {
            live_count: s.live_count,
            live_bytes: s.live_bytes,
            peak_bytes: s.peak_bytes,
            total_allocs: s.total_allocs,
            total_frees: s.total_frees,
            limit: None,
        }
    }
}

#[pymethods]
impl Stats {
    // The fields' getters make their ints with the checked constructor
    // (`get_all` would have PyO3's, which panics out of memory).
    /// Allocations handed out and not yet freed or released.
    #[getter]
    fn live_count(&self) -> Int {
        Int(self.live_count)
    }
    /// Bytes asked for by the live allocations.
    #[getter]
    fn live_bytes(&self) -> Int {
        Int(self.live_bytes)
    }
    /// The highest live_bytes seen.
    #[getter]
    fn peak_bytes(&self) -> Int {
        Int(self.peak_bytes)
    }
    /// Allocations counted so far, freed or not.
    #[getter]
    fn total_allocs(&self) -> Int {
        Int(self.total_allocs)
    }
    /// Allocations freed or released so far.
    #[getter]
    fn total_frees(&self) -> Int {
        Int(self.total_frees)
    }
    /// The cap on live_bytes (`a.limited(n)`, `Arena(limit=n)`,
    /// `rsalloc.set_limit(n)`), None when there is none.
    #[getter]
    fn limit(&self) -> Option<Int> {
        self.limit.map(Int)
    }

    // By hand, not `eq`: PyO3's generated comparison raises its errors
    // with `new_err` (clippy.toml).
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<Stats>().is_ok_and(|o| o.get() == self)
    }

    fn __repr__(&self) -> Text<String> {
        let limit = match self.limit {
            Some(n) => format!(", limit={n}"),
            None => String::new(),
        };
        Text(format!(
            "Stats(live_count={}, live_bytes={}, peak_bytes={}, total_allocs={}, total_frees={}{limit})",
            self.live_count, self.live_bytes, self.peak_bytes, self.total_allocs, self.total_frees
        ))
    }

    /// The counters as a dict.
    fn _asdict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let d = checked::dict(py)?;
        let put = |key: checked::Name, v: u64| d.set_item(key, checked::uint(py, v)?);
        put(checked::name!("live_count"), self.live_count)?;
        put(checked::name!("live_bytes"), self.live_bytes)?;
        put(checked::name!("peak_bytes"), self.peak_bytes)?;
        put(checked::name!("total_allocs"), self.total_allocs)?;
        put(checked::name!("total_frees"), self.total_frees)?;
        Ok(d.into_any().unbind())
    }
}

/// The process-wide counters: every allocation of every allocator, with
/// the process-wide limit.
#[pyfunction]
pub fn stats() -> Stats {
    Stats::from(GLOBAL.snapshot()).with_limit(budget::process_limit())
}

/// `rsalloc.set_limit(max_bytes)`: caps the live bytes of every rsalloc
/// allocation in the process together; `set_limit(None)` lifts the cap.
/// A request that would pass it raises MemoryError; nothing live is freed.
#[pyfunction]
pub fn set_limit(max_bytes: &Bound<'_, PyAny>) -> PyResult<()> {
    let limit = if max_bytes.is_none() {
        None
    } else {
        Some(limit_arg(max_bytes, "max_bytes")?)
    };
    budget::set_process_limit(limit);
    Ok(())
}

/// Whether to turn on the cache of freed small blocks at import:
/// `RSALLOC_BLOCK_CACHE=0` or `1` decides; otherwise it is off where
/// Python's own cache is (`PYTHONMALLOC=malloc` or `malloc_debug`, the
/// settings for valgrind and sanitizers, which must see every free).
pub fn block_cache_wanted() -> bool {
    match std::env::var("RSALLOC_BLOCK_CACHE")
        .unwrap_or_default()
        .as_str()
    {
        "0" => false,
        "1" => true,
        _ => !memory_checker_setting(),
    }
}

/// `PYTHONMALLOC=malloc` or `malloc_debug`: valgrind's and the sanitizers'
/// setting, under which every free goes to libc as the program made it.
pub fn memory_checker_setting() -> bool {
    matches!(
        std::env::var("PYTHONMALLOC").unwrap_or_default().as_str(),
        "malloc" | "malloc_debug"
    )
}

/// `(on, blocks, bytes)` of the cache of freed small libc blocks
/// (`core::block_cache`), after freeing every kept block (and every kept
/// arena chunk) if `trim`: private, for tests and diagnostics.
#[pyfunction]
#[pyo3(signature = (trim=false))]
pub fn _block_cache(py: Python<'_>, trim: bool) -> PyResult<Bound<'_, PyTuple>> {
    use crate::core::block_cache;
    let (on, blocks, bytes) = match crate::py::serialized::token(py) {
        None => (false, 0, 0), // free-threaded: never on
        Some(s) => {
            if trim {
                block_cache::trim(s);
                crate::core::region::trim_kept_chunks(s);
            }
            let (blocks, bytes) = block_cache::held(s);
            (block_cache::enabled(), blocks, bytes)
        }
    };
    checked::tuple(
        py,
        [
            checked::bool(py, on),
            checked::uint(py, blocks as u64)?,
            checked::uint(py, bytes as u64)?,
        ],
    )
}

/// `_held_chunks()`: first chunks held by closed arenas for their
/// reopening (`core::region`, at most four): private, for tests.
#[pyfunction]
pub fn _held_chunks(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    checked::uint(py, crate::core::region::held_chunks() as u64)
}

/// `_reserve_state()`: (emergency reserve held, times it was given back).
#[pyfunction]
pub fn _reserve_state(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    let (held, given_back) = crate::core::reserve::state();
    checked::tuple(
        py,
        [
            checked::bool(py, held),
            checked::uint(py, given_back as u64)?,
        ],
    )
}

/// `_fail_object_creation(n)`: the `n`-th next Pointer or struct view
/// object that rsalloc makes raises MemoryError instead (0: none), as when
/// CPython is out of memory; for tests of what each caller then gives back.
#[pyfunction]
pub fn _fail_object_creation(n: usize) {
    super::cpython::freelist::fail_object_creation(n);
}
