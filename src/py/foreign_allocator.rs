//! `ForeignAllocator(alloc, free, zeroed=False)` (DESIGN §4): an allocator
//! over two C functions (called natively, `core::foreign`) or two Python
//! callables (`python_allocator`).

use super::allocator::Allocator;
use super::python_allocator::callables_backend;
use crate::core::alloc::{new_id, AllocCore, Backend};
use crate::core::foreign::CFunctions;
use crate::py::args::BoolArg;
use crate::py::checked;
use crate::py::checked::Text;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static C_FUNCTION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `ForeignAllocator(alloc, free, zeroed=False, *, name=None)`.
///
/// An allocator over two C functions (`void *alloc(size_t)`,
/// `void free(void *)`: ctypes function objects or addresses, called
/// natively) or two Python callables (`alloc(nbytes) -> int`,
/// `free(address)`), for memory a C library frees with its own `free`
/// (sqlite3_malloc/sqlite3_free, g_malloc/g_free). `alloc=None` makes a
/// free-only owner: `adopt` works, allocating raises TypeError. Every
/// Allocator check applies.
#[pyclass(frozen, extends = Allocator, module = "rsalloc", name = "ForeignAllocator")]
pub struct ForeignAllocator;

#[pymethods]
impl ForeignAllocator {
    /// `alloc` None: a free-only owner (adopt works, allocating raises
    /// TypeError); `sized`: `free(address, nbytes)` gets the block's size.
    #[new]
    #[pyo3(
        signature = (alloc, free, zeroed=BoolArg::of(false), *, sized=BoolArg::of(false), name=None),
        text_signature = "(alloc, free, zeroed=False, *, sized=False, name=None)"
    )]
    fn new(
        alloc: &Bound<'_, PyAny>,
        free: &Bound<'_, PyAny>,
        zeroed: BoolArg,
        sized: BoolArg,
        name: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let py = alloc.py();
        let (zeroed, sized) = (zeroed.get()?, sized.get()?);
        let name = match name {
            Some(n) => Some(
                checked::cast::<pyo3::types::PyString>(n, "name")?
                    .to_str()?
                    .to_owned(),
            ),
            None => None,
        };
        let describe = checked::imported(
            &C_FUNCTION,
            py,
            checked::name!("rsalloc._ctypes_support"),
            checked::name!("c_function"),
        )?;
        let free_only = alloc.is_none();
        let c_alloc: Option<(usize, usize)> = if free_only {
            None
        } else {
            describe.call1((alloc,))?.extract()?
        };
        let c_free: Option<(usize, usize)> = describe.call1((free,))?.extract()?;
        let name = match name {
            Some(n) => n,
            None => (if free_only { free } else { alloc })
                .getattr(checked::name!("__name__"))
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "foreign".into()),
        };
        let (backend, cb): (Box<dyn Backend>, _) = match (c_alloc, c_free) {
            (Some((_, max_size)), Some((f, _))) | (None, Some((f, max_size)))
                if c_alloc.is_some() || free_only =>
            {
                let a = c_alloc.map_or(0, |(a, _)| a);
                let keep = Box::new(Kept(Some((alloc.clone().unbind(), free.clone().unbind()))));
                // SAFETY: the addresses are C functions (ctypes function
                // objects, kept alive by `keep`, or addresses the caller
                // vouches for); their signatures are the documented
                // contract (`sized`: a free that takes the size).
                let b =
                    unsafe { CFunctions::new(a, f, sized, max_size, keep) }.ok_or_else(|| {
                        checked::error::<PyTypeError>(
                            "ForeignAllocator: a function pointer is NULL",
                        )
                    })?;
                (Box::new(b), None)
            }
            (None, None) if (free_only || alloc.is_callable()) && free.is_callable() => {
                let (b, cb) = callables_backend(
                    &name,
                    (!free_only).then(|| alloc.clone().unbind()),
                    free.clone().unbind(),
                    sized,
                );
                (b, Some(cb))
            }
            _ => {
                return Err(checked::error::<PyTypeError>(
                    "ForeignAllocator(alloc, free): give two C functions (ctypes function objects \
                     or addresses) or two Python callables, not one of each",
                ))
            }
        };
        let core = AllocCore::new(name, new_id(), zeroed, backend);
        Ok(PyClassInitializer::from(Allocator::of(core, cb)).add_subclass(ForeignAllocator))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> Text<String> {
        let base = slf.as_super().get();
        let core = &base.core;
        let how = if base.callbacks.is_some() {
            "Python callables"
        } else {
            "C functions"
        };
        Text(format!("<rsalloc.ForeignAllocator {} ({how})>", core.name))
    }
}

/// The two function objects a C-function backend keeps alive, dropped
/// wherever the core drops its backend.
struct Kept(Option<(Py<PyAny>, Py<PyAny>)>);

impl Drop for Kept {
    fn drop(&mut self) {
        crate::py::cpython::attach::drop_registered(self.0.take());
    }
}
