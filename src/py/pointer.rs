//! `rsalloc.Pointer`: a typed, checked view of native memory (DESIGN §3).
//!
//! A Pointer is an address, an element type, the bytes reachable from it
//! (`extent`, None for foreign memory of unknown length) and an owner: the
//! shared allocation record when rsalloc allocated the block. Every access
//! checks the record's state first, so any view of a freed block raises.

use super::errors::{to_py, IntoPy};
use super::types::{self, TypeInfo};
use crate::core::error::Error;
use crate::core::index::{self, Found};
pub use crate::core::owner::{Owned, Owner};
use crate::core::record_ref::RecordRef;
use crate::core::region::{self, RegionCore, RegionRef};
use crate::core::serial::Serialized;
use crate::core::types::Kind;
use crate::py::serialized::token;
use pyo3::prelude::*;
use std::fmt;

mod items;
mod methods;

/// How element access reaches struct and array elements. `structs` sits
/// above this module (its fields read and write through Pointers), so it
/// plugs in here at module init (`install_composites`) instead of this
/// module calling up. Each returns None for a type that is not composite.
pub(crate) struct Composites {
    /// The element of composite type `ty` at `addr` inside `parent`'s block.
    pub at: CompositeAt,
    /// `dst[i] = v` for a composite element type.
    pub write: CompositeWrite,
}

/// `Composites::at`: (parent, addr, ty) to the element, None when `ty` is
/// not composite.
pub(crate) type CompositeAt =
    fn(Python<'_>, &Pointer, usize, &'static TypeInfo) -> Option<PyResult<Py<PyAny>>>;
/// `Composites::write`: (dst, i, v), None when dst's type is not composite.
pub(crate) type CompositeWrite =
    fn(Python<'_>, &Pointer, isize, &Bound<'_, PyAny>) -> Option<PyResult<()>>;

static COMPOSITES: std::sync::OnceLock<Composites> = std::sync::OnceLock::new();

/// Called once by `structs::install`.
pub(crate) fn install_composites(c: Composites) {
    let _ = COMPOSITES.set(c);
}

fn composites() -> Option<&'static Composites> {
    COMPOSITES.get()
}

/// Keeps a block's memory for the length of one access. With the GIL, a
/// Python-level free cannot run between the liveness check and the read or
/// write, and this is nothing. Without it (a free-threaded interpreter), it
/// pins the block like a buffer export: a racing free makes the block dead
/// at once but its memory stays until the access ends. `--cfg
/// rsalloc_pin_access` turns it on under the GIL too, to test it.
///
/// An access takes it after converting its arguments and runs no Python
/// code while holding it; an operation that must run Python code between
/// its check and its memory touch holds a [`Pinned`] instead.
pub struct Access<'a> {
    #[cfg(any(Py_GIL_DISABLED, rsalloc_pin_access))]
    owner: &'a Owner,
    #[cfg(any(Py_GIL_DISABLED, rsalloc_pin_access))]
    serialized: Option<Serialized<'a>>,
    _on: std::marker::PhantomData<&'a Owner>,
}

impl Drop for Access<'_> {
    fn drop(&mut self) {
        #[cfg(any(Py_GIL_DISABLED, rsalloc_pin_access))]
        self.owner.unpin(self.serialized);
    }
}

/// Holds a block's memory, in every build, through an operation that runs
/// Python code between its check and its last memory touch (building the
/// elements of a slice, a codec error handler): a pin like a buffer
/// export's. A free meanwhile makes the block dead at once, and its memory
/// stays until the operation ends; the operation re-checks liveness after
/// each piece of Python code.
pub struct Pinned<'a>(&'a Owner, Option<Serialized<'a>>);

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.0.unpin(self.1);
    }
}

/// A typed, checked view of native memory (DESIGN §3): an address, an
/// element type and, when known, a count of elements. `Pointer[T]` is also
/// the annotation for one.
///
/// Pointers come from an allocator (`calloc(Int32, 4)`, `arena(Uint8, 64)`),
/// from `to_native_utf8`, or from `Pointer.from_address(addr, T, count)`
/// (a view of foreign memory). `p[i]`, `p[i:j]`, `p.value`, `p + n`,
/// `p.cast(T)`, `p.read_bytes()` and `p.to_str()` are bounds-checked; after
/// its block is freed, reallocated or released, every access through p or a
/// view of it raises `UseAfterFreeError`.
/// `memoryview(p)` and `numpy.asarray(p)` share the memory (and pin it), and
/// a Pointer can be passed straight to a ctypes foreign function.
/// `p.detach()` hands the block to C; `p.autofree()` lets the garbage
/// collector free it.
#[pyclass(frozen, module = "rsalloc", name = "Pointer")]
pub struct Pointer {
    pub addr: usize,
    pub ty: &'static TypeInfo,
    /// Bytes reachable from `addr` within the block; UNKNOWN for foreign
    /// memory of unknown length (see `extent()`). A sentinel rather than an
    /// Option, and the element count computed rather than kept: with the
    /// one-word owner, a Pointer object is 48 bytes, and a program may hold
    /// a million of them (issue 6).
    extent: usize,
    pub owner: Owner,
}

use crate::core::view::{elem_addr_within, Span, UNKNOWN};

/// A Pointer whose owner is unowned has nothing to drop: its other fields
/// have no drop glue (`py::cpython::freelist`'s dealloc skips the drop on
/// this). The pattern names every field, so a new one stops the build here
/// until this check covers it.
const _: () = {
    #[allow(dead_code)]
    const fn others(p: &Pointer) -> (&usize, &&'static TypeInfo, &usize) {
        let Pointer {
            addr,
            ty,
            extent,
            owner: _,
        } = p;
        (addr, ty, extent)
    }
    assert!(!std::mem::needs_drop::<usize>() && !std::mem::needs_drop::<&'static TypeInfo>());
};

impl Pointer {
    #[inline]
    pub fn new(addr: usize, ty: &'static TypeInfo, extent: Option<usize>, owner: Owner) -> Self {
        Pointer {
            addr,
            ty,
            extent: extent.unwrap_or(UNKNOWN),
            owner,
        }
    }

    /// Moves the value into `dst`, one word at a time. A plain `write`
    /// copies it by pairs of words from where it waited out the object's
    /// allocation, just stored there by words: a load spanning two stores
    /// is not forwarded, and the copy waited for them to reach the cache,
    /// ~7% of a per-call arena's time (perf, BENCHMARKS.md "The thirteenth
    /// session"). The pattern names every field, as above.
    ///
    /// # Safety
    /// `dst` is valid for a write of a Pointer and holds no value to drop.
    #[inline(always)]
    pub(crate) unsafe fn write_to(self, dst: *mut Pointer) {
        let Pointer {
            addr,
            ty,
            extent,
            owner,
        } = self;
        // SAFETY: per the function's contract; each field is written once.
        // Volatile, so that the compiler cannot pair the stores again (and
        // with them the loads they take their words from).
        unsafe {
            std::ptr::addr_of_mut!((*dst).addr).write_volatile(addr);
            std::ptr::addr_of_mut!((*dst).ty).write_volatile(ty);
            std::ptr::addr_of_mut!((*dst).extent).write_volatile(extent);
            std::ptr::addr_of_mut!((*dst).owner).write_volatile(owner);
        }
    }

    /// Bytes reachable from the address within the block; None when unknown.
    #[inline]
    pub fn extent(&self) -> Option<usize> {
        (self.extent != UNKNOWN).then_some(self.extent)
    }

    /// Another view of the same owner (`s`: the caller's serialization
    /// proof, as every check here takes it).
    pub(crate) fn view(
        &self,
        addr: usize,
        ty: &'static TypeInfo,
        extent: Option<usize>,
        s: Option<Serialized<'_>>,
    ) -> Self {
        Pointer::new(addr, ty, extent, self.owner.view(addr == self.addr, s))
    }

    pub fn record(&self) -> Option<&RecordRef> {
        match self.owner.get() {
            Owned::Block(r) => Some(r),
            Owned::Region(_) | Owned::Dependent(_) | Owned::Unowned => None,
        }
    }

    /// The view's bounds arithmetic (`core::view`).
    #[inline(always)]
    pub(crate) fn span(&self) -> Span {
        Span {
            addr: self.addr,
            size: self.ty.size,
            counted: self.ty.kind != Kind::Void,
            extent: self.extent,
        }
    }

    /// Elements in the view: None for unknown extent or sizeless types.
    #[inline]
    pub fn count(&self) -> Option<usize> {
        self.span().count()
    }

    fn elem_size(&self) -> Option<usize> {
        (self.ty.kind != Kind::Void && self.ty.size > 0).then_some(self.ty.size)
    }

    /// Bytes covered by the view's elements (all of the extent for Void).
    pub fn nbytes_usize(&self) -> Option<usize> {
        self.span().nbytes()
    }

    /// Ok when the bytes behind the view may be touched.
    #[inline]
    pub fn check(&self, s: Option<Serialized<'_>>) -> Result<(), Error> {
        if self.addr == 0 {
            return Err(Error::NullPointer);
        }
        self.owner.check_access(self.addr, s)
    }

    /// Holds the memory for one access (see [`Access`]); fails when dead.
    #[inline]
    pub fn access<'a>(&'a self, s: Option<Serialized<'a>>) -> Result<Access<'a>, Error> {
        #[cfg(any(Py_GIL_DISABLED, rsalloc_pin_access))]
        {
            self.owner.pin(self.addr, s)?;
            Ok(Access {
                owner: &self.owner,
                serialized: s,
                _on: std::marker::PhantomData,
            })
        }
        #[cfg(not(any(Py_GIL_DISABLED, rsalloc_pin_access)))]
        {
            let _ = s;
            Ok(Access {
                _on: std::marker::PhantomData,
            })
        }
    }

    /// Checks the view and pins its memory until the guard drops (see [`Pinned`]).
    pub fn pinned<'a>(&'a self, s: Option<Serialized<'a>>) -> Result<Pinned<'a>, Error> {
        self.check(s)?;
        self.owner.pin(self.addr, s)?;
        Ok(Pinned(&self.owner, s))
    }

    /// Ok when the view is alive (null views count as alive: nothing was freed).
    pub(crate) fn check_alive(&self, s: Option<Serialized<'_>>) -> Result<(), Error> {
        self.owner.check_access(self.addr, s)
    }

    pub fn err(&self, py: Python<'_>, e: Error) -> PyErr {
        to_py(py, e, self)
    }

    /// The address of element `i` of a live view (negative counts from the
    /// end when the count is known). Inlined into every access route, as
    /// it was before the arithmetic moved to `core::view`.
    #[inline(always)]
    pub(crate) fn elem_addr(&self, i: isize) -> Result<usize, Error> {
        self.check(None)?;
        match elem_addr_within(self.addr, self.ty.size, self.extent, i) {
            Some(a) => Ok(a),
            None => self.elem_addr_slow(i),
        }
    }

    #[cold]
    #[inline(never)]
    fn elem_addr_slow(&self, i: isize) -> Result<usize, Error> {
        self.span().elem_addr_slow(i)
    }

    /// A checked byte range [offset, offset+len) inside a live view.
    pub(crate) fn byte_range(&self, offset: usize, len: usize) -> Result<usize, Error> {
        self.check(None)?;
        self.span().byte_range(offset, len)
    }

    /// A byte range the caller states, in a live view (see
    /// [`Span::stated_range`]).
    pub(crate) fn stated_range(&self, offset: usize, len: usize) -> Result<usize, Error> {
        if self.extent != UNKNOWN {
            return self.byte_range(offset, len);
        }
        self.check(None)?;
        self.span().stated_range(offset, len)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pointer[{}] at {:#x}", self.ty.name, self.addr)?;
        if let Some(n) = self.count() {
            write!(f, " (count {n}")?;
        } else if let Some(e) = self.extent() {
            write!(f, " ({e} bytes")?;
        } else {
            write!(f, " (unknown count")?;
        }
        write!(f, ", {})", self.owner.name())?;
        match self.owner.get() {
            Owned::Block(r) => super::sites::write_sites(f, r),
            _ => Ok(()),
        }
    }
}

/// The Pointer for an address read back from memory (a `Pointer[T]` slot,
/// a struct field, `Pointer.from_address`), of element type `ty`
/// (DESIGN §3a): inside a live rsalloc block, a view of that block to its
/// end, sharing its owner (so dead with it, and freeable when `addr` is its
/// start); the start of a block rsalloc freed lately and has not handed out
/// again, a dead view of that block (access raises UseAfterFreeError,
/// naming both sites with tracking on), and so is any address in a released
/// block of a bump arena whose memory rsalloc still holds (a region's next
/// generation, a parked or kept chunk); anything else an unowned view of
/// unknown count, and 0 the null pointer. `read_from` is the owner of the
/// memory the address was read from: what a library's block holds, in no
/// block of rsalloc's, hangs off that block (`Owner::graph_owner`) and dies
/// with it.
pub(crate) fn from_stored_address(
    py: Python<'_>,
    addr: usize,
    ty: &'static TypeInfo,
    read_from: &Owner,
) -> PyResult<Pointer> {
    let unowned = || {
        let owner = match read_from.graph_owner() {
            Some(rec) if addr != 0 => Owner::dependent(rec),
            _ => Owner::UNOWNED,
        };
        Pointer::new(addr, ty, None, owner)
    };
    let to_end = |end: usize| Some(end.saturating_sub(addr));
    let in_region = |found: Result<Option<(RegionRef, usize)>, Error>| {
        Ok(
            match found.py(py, &format_args!("Pointer[{}] at {addr:#x}", ty.name))? {
                Some((r, end)) => Pointer::new(addr, ty, to_end(end), Owner::region(r)),
                None => unowned(),
            },
        )
    };
    let s = token(py);
    match index::resolve(addr, s) {
        Some(Found::Block(rec)) => {
            let end = rec.addr() + rec.size();
            Ok(Pointer::new(addr, ty, to_end(end), Owner::block(rec)))
        }
        Some(Found::Chunk(owner)) => {
            in_region(region::view_at(&RegionCore::of_chunk_owner(owner), addr, s))
        }
        None => match index::lately_freed(addr, s) {
            Some(rec) => Ok(Pointer::new(addr, ty, Some(rec.size()), Owner::block(rec))),
            None => in_region(region::released_view_at(addr, s)),
        },
    }
}

/// The null `Pointer[Void]`.
pub fn nullptr_object(py: Python<'_>) -> PyResult<Bound<'_, Pointer>> {
    Bound::new(py, Pointer::new(0, types::void(py)?, None, Owner::UNOWNED))
}
