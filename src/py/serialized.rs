//! The serialization proof of the core (`core::serial::Serialized`), made
//! from what proves it: PyO3's `Python<'py>`, which exists only while the
//! thread holds the GIL. Every thread that runs the core's unsynchronised
//! paths under the binding holds that one lock, so the token lives as long
//! as `'py`. A free-threaded interpreter has no GIL: there the token cannot
//! be made, and the paths that need it stay off.

use crate::core::serial::Serialized;
use pyo3::Python;

/// The token for as long as `py` proves the GIL held; None on a
/// free-threaded build.
#[inline(always)]
pub(crate) fn token(_py: Python<'_>) -> Option<Serialized<'_>> {
    #[cfg(not(Py_GIL_DISABLED))]
    // SAFETY: `Python<'py>` exists only while this thread holds the GIL,
    // the one lock every thread holds while it runs the core under the
    // binding, token or not (every call into it, every drop of its
    // objects). The GIL may be let go only inside the core's callbacks to
    // Python code (a Python-defined allocator's methods), which no
    // unsynchronised step spans (`Serialized::new`).
    return Some(unsafe { Serialized::new() });
    #[cfg(Py_GIL_DISABLED)]
    None
}
