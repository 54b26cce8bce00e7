//! rsalloc: explicit, checked native memory for Python.
//!
//! `core` is pure Rust (allocation records, allocators, counters); `py` is
//! the thin PyO3 layer, one file per exposed concept. This file only wires
//! the module together.

// Only the core's exported surface (what the crate's integration tests,
// fuzz targets and benches use) is `pub`; the rest is `pub(crate)`, for the
// binding (docs/architecture.md, "The public surface"). Everything exported
// is documented: it is the one part a reader meets without the source.
// Without the binding, the items only it uses are unused.
#[warn(missing_docs)]
#[cfg_attr(
    not(feature = "python"),
    allow(dead_code, reason = "the binding is what uses these items")
)]
pub mod core;
#[cfg(feature = "python")]
pub mod py;

#[cfg(feature = "python")]
use pyo3::prelude::*;

/// Rust's allocations (messages, exceptions, reports) fall back on an
/// emergency reserve rather than abort the process (core::reserve).
#[cfg(feature = "python")]
#[global_allocator]
static GLOBAL: crate::core::reserve::WithReserve = crate::core::reserve::WithReserve;

#[cfg(feature = "python")]
#[pymodule(gil_used = false)]
mod _rsalloc {
    #[pymodule_export]
    use crate::py::allocator::{free, Allocator};
    #[pymodule_export]
    use crate::py::arena::{current_arena, Arena};
    #[pymodule_export]
    use crate::py::cpython::{_fast_paths, _kept_calls, _shared_scopes};
    #[pymodule_export]
    use crate::py::foreign_allocator::ForeignAllocator;
    #[pymodule_export]
    use crate::py::params::_pointer_from_param;
    #[pymodule_export]
    use crate::py::pointer::Pointer;
    #[pymodule_export]
    use crate::py::stats::{
        _block_cache, _fail_object_creation, _held_chunks, _reserve_state, set_limit, stats, Stats,
    };
    #[pymodule_export]
    use crate::py::strings::{to_native_utf16, to_native_utf8};
    #[pymodule_export]
    use crate::py::struct_view::StructView;
    #[pymodule_export]
    use crate::py::structs::Field;
    #[pymodule_export]
    use crate::py::tracemalloc::{_set_tracemalloc, _tracemalloc_domain, _tracemalloc_on};
    #[pymodule_export]
    use crate::py::tracking::{
        _track_disable, _track_enable, _track_frames, _track_is_enabled, _track_live, _track_lost,
        _track_seq,
    };
    #[pymodule_export]
    use crate::py::types::{alignof, sizeof};

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        // Cargo.toml's version is the one version (pyproject.toml takes it
        // from there too); `rsalloc.__version__` is this.
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        // Record memory and the object tricks first: no record or Pointer
        // object exists yet.
        let stats_probe = crate::py::stats::Stats::from(crate::core::stats::Snapshot::default());
        crate::py::cpython::install_early(py, stats_probe);
        // Every call of the binding brings the token (`py::serialized`);
        // the cache serves the calls that bring one.
        match crate::py::serialized::token(py) {
            Some(s) if crate::py::stats::block_cache_wanted() => {
                crate::core::block_cache::enable(s)
            }
            // Without the cache, frees still look for blocks C freed behind
            // rsalloc's back, except under a memory checker's setting.
            _ if !crate::py::stats::memory_checker_setting() => {
                crate::core::block_cache::detect_c_frees()
            }
            _ => {}
        }
        crate::core::reserve::arm();
        m.add("malloc", crate::py::allocator::malloc(py)?)?;
        m.add("calloc", crate::py::allocator::calloc(py)?)?;
        m.add("nullptr", crate::py::pointer::nullptr_object(py)?)?;
        crate::py::sites::install();
        crate::py::tracemalloc::install();
        for zeroed in [false, true] {
            let a = crate::py::tracking::adaptive(py, zeroed)?;
            m.add(a.get().core.name.as_str(), &a)?;
            let d = crate::py::tracking::diagnostic(py, zeroed)?;
            m.add(d.get().core.name.as_str(), &d)?;
        }
        crate::py::structs::install();
        crate::py::cpython::install_late(m);
        // Keeps the tracemalloc flag current from now on, whichever way the
        // extension was first imported.
        py.import("rsalloc._tracemalloc")?
            .call_method1("install", (m,))?;
        Ok(())
    }
}
