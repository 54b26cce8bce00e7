//! `rsalloc.Arena` and `rsalloc.current_arena()` (DESIGN §5): scoped
//! release, either of a bump region (`core::region`) or of blocks from a
//! backing allocator (`core::arena`). Request parsing is `py::args`; cloning is
//! shared with `Allocator` (`py::allocator`).

use super::allocator::{adopted_object, block_object, clone_with, Allocator};
use super::args::{
    adopt_request, bytes_request, call_request, realloc_request, Asked, BoolArg, SizeArg,
};
use super::cpython::held_ref::HeldRef;
use super::errors::{to_py, IntoPy};
use super::handles::{self, raising_free_errors, Key};
use super::pointer::{Owned, Owner, Pointer};
use super::stats::Stats;
use super::types::TypeInfo;
use crate::core::arena::WrapArena;
use crate::core::arena_kind::ArenaKind;
use crate::core::error::{Error, Ownership};
use crate::core::layout::Request;
use crate::core::region::{Anchor, RegionCore};
use crate::core::serial::{SerialMutex, Serialized};
use crate::core::stats::Snapshot;
use crate::core::track::{self, Site};
use crate::py::checked;
use crate::py::checked::{Int, Text};
use crate::py::serialized::token;
use pyo3::exceptions::{PyResourceWarning, PyRuntimeError, PyStopIteration, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::{
    AtomicBool,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Where an arena was made.
enum Made {
    Unknown,
    /// The caller's code object and instruction offset: tracking off, one
    /// frame, no allocation (arenas are opened per call).
    Frame((Py<PyAny>, std::ffi::c_int)),
    /// The traceback tracking captured (it registered the arena too).
    Tracked(Site),
}

/// A function to run at release: `cb()`, or `release(resource)` from `using`.
enum Callback {
    Call(Py<PyAny>),
    Release(Py<PyAny>, Py<PyAny>),
}

/// `Arena(allocator=None)`: everything allocated from it is released
/// together (DESIGN §5).
///
/// `Arena()` is a bump region of zeroed memory, allocated in large chunks;
/// `Arena(allocator)` allocates through that allocator and frees through it
/// at release. It takes every call an Allocator takes (`arena(T, count)`,
/// `allocate`, `realloc`, `adopt`, `clone`; `free` is a no-op).
///
/// `with Arena() as arena:` (or `async with`) releases it when the block
/// ends, also when it raises; inside, `rsalloc.current_arena()` returns it.
/// `arena.using(resource, release)` and `arena.on_release_all(callback)` run
/// at release, last registered first. After `release_all()` every pointer
/// from the arena is dead and allocating raises `ArenaClosedError` (unless
/// `reuse=True`); `arena.detach(p)` lets a block outlive it.
#[pyclass(frozen, weakref, immutable_type, module = "rsalloc", name = "Arena")]
pub struct Arena {
    backing: ArenaKind,
    /// The backing allocator object (kept alive with the arena), None for
    /// a region (and once the garbage collector broke a cycle through it).
    allocator: Mutex<Option<Py<PyAny>>>,
    callbacks: Mutex<Vec<Callback>>,
    /// Whether `callbacks` may hold any: set with a push, cleared under
    /// the lock when a release empties it, so that a release without
    /// callbacks (a per-call arena's) takes no lock for them.
    has_callbacks: AtomicBool,
    /// The entry its latest `with` made or reopened, until that `with`
    /// exits: the exit ends it without reading the context variable.
    entry: SerialMutex<Option<Py<Entered>>>,
    pub(crate) name: ArenaName,
    /// Where the arena was made: named when it is garbage-collected unreleased.
    made: Made,
    /// Its key among the unreleased arenas `leak_check` reports (0: none).
    leak_seq: u64,
    /// Whether `handles` remembers this object for `Pointer.allocator`
    /// (made on the first allocation; forgotten when this is dropped).
    known: AtomicBool,
    /// The kept call of a context entry while it is bound to this arena
    /// (`cpython::arena_with`): from a `with`'s `__enter__` lookup to its
    /// exit, so that the exit finds it to unbind it.
    pub(crate) bound_call: HeldRef,
}

impl Arena {
    /// The core object `handles` keys this arena's object by.
    fn key(&self) -> Key {
        match &self.backing {
            ArenaKind::Region(a) => Key::from(&**a.region()),
            ArenaKind::Wrap(w) => Key::from(&*w.tag),
        }
    }

    /// Remembers `slf`, this arena's object, for `Pointer.allocator`.
    #[cold]
    fn remember_object(&self, slf: &Bound<'_, PyAny>) -> PyResult<()> {
        handles::remember(self.key(), slf, std::ptr::from_ref(self).addr())?;
        self.known.store(true, Relaxed);
        Ok(())
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if *self.known.get_mut() {
            handles::forget(self.key(), std::ptr::from_ref(self).addr());
        }
    }
}

/// "arena #N", formatted only when shown: an arena is made per call, and
/// its name is read only by errors, reprs and reports (formatting it per
/// `Arena()` was about 60 instructions of a per-call arena's 3800,
/// callgrind; a `String` through `format!` had been a fifth of `Arena()`).
#[derive(Clone, Copy)]
pub(crate) struct ArenaName(u64);

impl ArenaName {
    /// The name as text, formatted in place: no allocation to fail.
    fn text(self) -> NameText {
        const PREFIX: &[u8] = b"arena #";
        let digits = self.0.checked_ilog10().map_or(1, |d| d as usize + 1);
        let len = PREFIX.len() + digits;
        let mut buf = [0u8; 27];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        // Written from the last digit (a u64 has at most 20).
        let mut n = self.0;
        for b in buf[PREFIX.len()..len].iter_mut().rev() {
            *b = b'0' + (n % 10) as u8;
            n /= 10;
        }
        NameText {
            buf,
            len: len as u8,
        }
    }
}

impl std::fmt::Display for ArenaName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().as_ref())
    }
}

/// An [`ArenaName`] as text.
pub(crate) struct NameText {
    buf: [u8; 27],
    len: u8,
}

impl AsRef<str> for NameText {
    fn as_ref(&self) -> &str {
        // SAFETY: `ArenaName::text` wrote ASCII there.
        unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len as usize]) }
    }
}

/// Releases a region arena's blocks (true when this released it). The
/// first chunk is held for a reopening only where the arena's dealloc is
/// the fence's, which lets it go otherwise.
fn release_region(a: &Anchor, reuse: bool, s: Option<Serialized<'_>>) -> bool {
    match s {
        Some(s) if !reuse && DEALLOC_FORGETS.load(Relaxed) => a.region().close_holding(s),
        s => a.region().release(reuse, s),
    }
}

/// Remembers `slf` as the region's arena, without allocating: the
/// object's address, cleared by the arena's dealloc ([`forget_object`],
/// called from the dealloc that `cpython::arena_finalizer` installs).
/// With a GIL every read (`region_object`) and that dealloc hold it, so an
/// address read is a live object. Where there is none, a weak reference
/// serves instead ([`remember`]).
#[inline]
fn remember_quickly(arena: &Arena, region: &RegionCore, slf: *mut ffi::PyObject) -> bool {
    if cfg!(Py_GIL_DISABLED) || !DEALLOC_FORGETS.load(Relaxed) {
        return arena.known.load(Relaxed);
    }
    if region.object.load(Relaxed) == 0 {
        region.object.store(slf.expose_provenance(), Relaxed);
    }
    true
}

/// Remembers `slf` as the region's arena, for `Pointer.allocator`.
fn remember(arena: &Arena, region: &RegionCore, slf: &Bound<'_, PyAny>) -> PyResult<()> {
    if !remember_quickly(arena, region, slf.as_ptr()) {
        arena.remember_object(slf)?;
    }
    Ok(())
}

/// The arena object of a region, None once it is gone.
pub(crate) fn region_object(py: Python<'_>, region: &RegionCore) -> Py<PyAny> {
    let known = handles::object(py, Key::from(region));
    if !known.is_none(py) {
        return known;
    }
    match region.object.load(Relaxed) {
        0 => py.None(),
        a => {
            let obj = std::ptr::with_exposed_provenance_mut::<ffi::PyObject>(a);
            // SAFETY: see `remember_quickly`: a remembered address is a live
            // arena while the GIL is held.
            unsafe { Bound::from_borrowed_ptr(py, obj) }.unbind()
        }
    }
}

/// Set once the arena type's dealloc calls [`forget_object`] (by
/// `cpython::arena_finalizer`, at module init, before any arena exists),
/// and [`Arena::let_go`] for an arena not kept.
static DEALLOC_FORGETS: AtomicBool = AtomicBool::new(false);

pub(crate) fn dealloc_forgets_objects() {
    DEALLOC_FORGETS.store(true, Relaxed);
}

/// The arena object at `obj` is being deallocated (its finalizer has run
/// and not revived it): its region's `Pointer.allocator` is None from now on.
pub(crate) fn forget_object(arena: &Arena, obj: *mut ffi::PyObject) {
    if let ArenaKind::Region(a) = &arena.backing {
        let object = &a.region().object;
        // With the GIL (the only build whose dealloc remembers objects:
        // `remember_quickly`), every writer of `object` holds it: a load and
        // a store, not a locked compare-and-swap.
        #[cfg(not(Py_GIL_DISABLED))]
        if object.load(Relaxed) == obj.addr() {
            object.store(0, Relaxed);
        }
        #[cfg(Py_GIL_DISABLED)]
        let _ = object.compare_exchange(obj.addr(), 0, Relaxed, Relaxed);
    }
}

static CURRENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static EXCEPTION_GROUP: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The context variable holding the innermost [`Entered`] of this context.
fn current_var(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    CURRENT
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import(checked::name!("contextvars"))?
                    .getattr(checked::name!("ContextVar"))?
                    .call1((checked::str(py, "rsalloc.current_arena")?,))?
                    .unbind(),
            )
        })
        .map(|v| v.bind(py))
}

/// The context variable's value (None when unset). Through the C API:
/// `ContextVar.get` / `.set` as method calls cost an attribute lookup and an
/// argument tuple each, the larger part of an empty `with Arena()`
/// (docs/decisions.md, "Per-call arenas").
fn current_value<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
    read_var(current_var(py)?).ok_or_else(|| PyErr::fetch(py))
}

/// `var`'s value, None when unset; NULL (None here) with the exception
/// set when the read fails. Makes no `PyErr` and drops no `Py`.
fn read_var<'py>(var: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let mut value = std::ptr::null_mut();
    // SAFETY: `var` is a ContextVar (made in current_var); the default is a
    // borrowed None; on success `value` is a new reference.
    if unsafe { ffi::PyContextVar_Get(var.as_ptr(), ffi::Py_None(), &mut value) } < 0 {
        return None;
    }
    // SAFETY: a new reference (PyContextVar_Get returned 0 with a default).
    unsafe { Bound::from_owned_ptr_or_opt(var.py(), value) }
}

/// Sets the context variable; the reset token it returns is not needed.
fn set_current(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    let var = current_var(py)?;
    // CPython (3.11 to 3.13) crashes in PyContextVar_Set when both of its
    // allocations fail: it decrefs the token it could not make. A probe
    // of a token's size class first: when even that fails, MemoryError
    // here instead (tests/test_fault_injection.py, the arena cases).
    // SAFETY: a plain allocation, freed at once.
    unsafe {
        let probe = ffi::PyObject_Malloc(64);
        if probe.is_null() {
            return Err(checked::no_memory());
        }
        ffi::PyObject_Free(probe);
    }
    // SAFETY: `var` is a ContextVar, `value` a live object; the result is a
    // new reference to a token, or NULL with an exception set.
    let token = unsafe { ffi::PyContextVar_Set(var.as_ptr(), value.as_ptr()) };
    // SAFETY: as above.
    unsafe { Bound::from_owned_ptr_or_err(py, token) }.map(drop)
}

/// One `with` entry of an arena, the value of the context variable: the
/// arena until its `with` ends, and the entry that was innermost before.
///
/// Leaving the `with` clears the arena here instead of setting the context
/// variable back: one context-variable update per `with`, not two (each is
/// a HAMT copy and a token, about a third of an empty `with Arena()`). An
/// ended entry is skipped by `current_arena()` and dropped from the chain
/// by the next entry. A context copied inside the `with` (an asyncio task
/// made there) shares the entry, so once the `with` has ended it sees the
/// arena outside it, not the released one (docs/decisions.md).
#[pyclass(frozen, module = "rsalloc", name = "_Entered")]
pub struct Entered {
    arena: SerialMutex<Option<Py<Arena>>>,
    outer: Option<Py<Entered>>,
    /// The builtin function this context's `with` statements call as both
    /// `__enter__` and `__exit__` while they reuse this entry
    /// (`cpython::arena_with`), made at its first reuse.
    pub(crate) kept_call: HeldRef,
}

impl Entered {
    fn new(arena: &Bound<'_, Arena>, outer: Option<Py<Entered>>) -> Self {
        Entered {
            arena: SerialMutex::new(Some(arena.clone().unbind())),
            outer,
            kept_call: HeldRef::default(),
        }
    }

    fn arena(&self, py: Python<'_>) -> Option<Py<Arena>> {
        let a = self.arena.lock(token(py));
        a.as_ref().map(|a| a.clone_ref(py))
    }

    fn live(&self, py: Python<'_>) -> bool {
        self.arena.lock(token(py)).is_some()
    }

    /// Ends the entry if it is `arena`'s: true when it was.
    fn end(&self, arena: &Bound<'_, Arena>) -> bool {
        let taken = self.take_if(arena);
        let ended = taken.is_some();
        // Dropped outside the lock: it may be the arena's last reference
        // but for the caller's, so nothing runs here in practice.
        drop(taken);
        ended
    }

    /// The entry's arena if it is `arena`, taken out (the entry ended).
    fn take_if(&self, arena: &Bound<'_, Arena>) -> Option<Py<Arena>> {
        let mut a = self.arena.lock(token(arena.py()));
        match &*a {
            Some(x) if x.is(arena) => a.take(),
            _ => None,
        }
    }
}

/// The proof for a garbage collector's traverse or clear, which run
/// attached (with the GIL, where there is one) but are handed no `Python`.
fn gc_token<'a>() -> Option<Serialized<'a>> {
    // SAFETY: CPython's collector calls tp_traverse attached.
    token(unsafe { Python::assume_attached() })
}

#[pymethods]
impl Entered {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(a) = self.arena.try_lock(gc_token()) {
            if let Some(a) = &*a {
                visit.call(a)?;
            }
        }
        if let Some(o) = &self.outer {
            visit.call(o)?;
        }
        self.kept_call.visit(&visit)
    }

    fn __clear__(&self) {
        let a = self.arena.lock(gc_token()).take();
        drop(a);
        // SAFETY: attached (a collector's clear), with a GIL wherever the
        // kept call is made; the reference taken out is this entry's.
        unsafe { ffi::Py_XDECREF(self.kept_call.replace(std::ptr::null_mut())) };
    }
}

/// A `with` where the variable's value is an entry that ended and only
/// this context can reach: that entry takes the arena, and the variable
/// is not set (a mapping copy and a reset token, a fifth of a per-call
/// `with Arena()`: docs/decisions.md, "Per-call arenas"). The entry when
/// done (a reference the caller lets go), then in the arena's slot; None
/// when nothing changed.
///
/// "Only this context" is two reference counts: the running context's
/// mapping is its own (no copy of the context shares it, the fence's
/// `context` trick), and the entry is held by that mapping alone (no other
/// mapping, no later entry's `outer`, no Python reference). Then nothing
/// else can see the change; the entry's own `outer` is still the right
/// chain, since an ended entry's innermost live one is found through it.
/// A context copied later (an asyncio task made inside the `with`) shares
/// the entry as it does an entry made by setting the variable.
///
/// Runs outside PyO3's registration too (`cpython::arena_with`, the
/// `with`'s enter; its trampoline was about 50 instructions): it drops
/// no `Py` (it stops where it would: an arena whose slot holds an entry),
/// makes no `PyErr` (a failed read is cleared, for the full enter to
/// raise), and nothing in it panics.
pub(crate) fn reopen_ended_entry<'py>(slf: &Bound<'py, Arena>) -> Option<Bound<'py, Entered>> {
    let entry = reusable_entry(slf)?;
    take_over(slf, &entry);
    Some(entry)
}

/// The entry [`reopen_ended_entry`] would reopen for `slf` (an extra
/// reference), changing nothing; `cpython::arena_with` checks its kept
/// call before [`take_over`].
pub(crate) fn reusable_entry<'py>(slf: &Bound<'py, Arena>) -> Option<Bound<'py, Entered>> {
    let py = slf.py();
    // SAFETY: attached, and the trick is on only with a GIL.
    if !unsafe { super::cpython::context::vars_are_its_own() } {
        return None;
    }
    let var = CURRENT.get(py)?;
    // A Bound drops by a plain decref.
    let Some(value) = read_var(var.bind(py)) else {
        // SAFETY: attached, the failure's exception set.
        unsafe { ffi::PyErr_Clear() };
        return None;
    };
    let entry = value.cast_into::<Entered>().ok()?;
    // The mapping's reference and `entry`'s.
    // SAFETY: a live object's reference count, read under the GIL.
    if unsafe { pyo3::ffi::Py_REFCNT(entry.as_ptr()) } != 2 {
        return None;
    }
    let s = token(py);
    if slf.get().entry.lock(s).is_some() {
        return None; // entered twice: the full enter replaces (drops) it
    }
    if entry.get().arena.lock(s).is_some() {
        return None; // live: a nested `with`, which needs its own entry
    }
    Some(entry)
}

/// `entry`, from [`reusable_entry`] with nothing run since, takes `slf`
/// over: the arena is entered.
pub(crate) fn take_over(slf: &Bound<'_, Arena>, entry: &Bound<'_, Entered>) {
    let s = token(slf.py());
    // Both were None (checked by `reusable_entry`): what `replace` gives
    // back has nothing to drop, and forgetting it skips the out-of-line
    // drop of an `Option<Py<_>>` (twice a `with`).
    std::mem::forget(entry.get().arena.lock(s).replace(slf.clone().unbind()));
    std::mem::forget(slf.get().entry.lock(s).replace(entry.clone().unbind()));
}

/// The innermost entry of this context whose `with` has not ended.
fn innermost<'py>(py: Python<'py>) -> PyResult<Option<Bound<'py, Entered>>> {
    let mut cur = current_value(py)?.cast_into::<Entered>().ok();
    while let Some(e) = cur {
        if e.get().live(py) {
            return Ok(Some(e));
        }
        cur = e.get().outer.as_ref().map(|o| o.bind(py).clone());
    }
    Ok(None)
}

/// The innermost arena entered with `with` / `async with` in this context
/// (per thread and per asyncio task).
#[pyfunction]
pub fn current_arena(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let arena = innermost(py)?.and_then(|e| e.get().arena(py));
    match arena {
        Some(a) => Ok(a.into_bound(py).into_any()),
        None => Err(checked::error::<PyRuntimeError>(
            "no current arena: current_arena() is only valid inside `with Arena()`",
        )),
    }
}

/// Keeps a release failure to raise; with no room left for it, it is
/// reported as unraisable at once rather than lost.
fn push_error(errors: &mut Vec<PyErr>, e: PyErr) {
    if errors.try_reserve(1).is_ok() {
        errors.push(e);
    } else {
        Python::attach(|py| e.write_unraisable(py, None));
    }
}

/// Failures of release callbacks: one as itself, several as an ExceptionGroup.
fn raise_all(py: Python<'_>, mut errors: Vec<PyErr>) -> PyResult<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            let cls = checked::imported(
                &EXCEPTION_GROUP,
                py,
                checked::name!("builtins"),
                checked::name!("BaseExceptionGroup"),
            )?;
            let excs = checked::list(py, errors.iter().map(|e| e.value(py).clone().into_any()))?;
            let msg = checked::str(py, &format!("{n} arena release callbacks raised"))?;
            let group = cls.call1((msg, excs))?;
            Err(PyErr::from_value(group))
        }
    }
}

/// The awaitable `__aenter__` / `__aexit__` return: done at once, with `value`.
#[pyclass(frozen, module = "rsalloc", name = "_Ready")]
pub struct Ready(Py<PyAny>);

#[pymethods]
impl Ready {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }
    fn __next__(&self, py: Python<'_>) -> PyResult<()> {
        Err(checked::error_with(
            py,
            &py.get_type::<PyStopIteration>(),
            self.0.bind(py),
        ))
    }
}

impl Arena {
    fn lock(&self) -> MutexGuard<'_, Vec<Callback>> {
        self.callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn id(&self) -> u64 {
        self.backing.id()
    }

    /// Released for good: its finalizer has nothing left to do
    /// (`collected`), so the dealloc skips it.
    pub(crate) fn is_closed(&self) -> bool {
        self.backing.is_closed()
    }

    fn snapshot(&self) -> Snapshot {
        self.backing.snapshot()
    }

    fn check_open(&self, py: Python<'_>) -> PyResult<()> {
        if self.is_closed() {
            return Err(to_py(py, Error::ArenaClosed, &self.name));
        }
        Ok(())
    }

    /// The bump region, once `slf` (this arena's object) is remembered for
    /// `Pointer.allocator`: the case the fast path of `allocate` serves
    /// (fast.rs).
    #[inline]
    #[cfg_attr(
        not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
        allow(dead_code)
    )]
    pub(crate) fn ready_region(&self, slf: *mut ffi::PyObject) -> Option<&Anchor> {
        match &self.backing {
            ArenaKind::Region(a) => remember_quickly(self, a.region(), slf).then_some(a),
            _ => None,
        }
    }

    /// A Pointer to a new block of the region `r` (this arena's).
    #[inline(always)]
    pub(crate) fn region_pointer(
        &self,
        py: Python<'_>,
        a: &Anchor,
        ty: &'static TypeInfo,
        req: Request,
    ) -> PyResult<Pointer> {
        let (addr, r) = a
            .allocate(req, token(py))
            .py(py, &Asked(&self.name, ty, &req.size))?;
        Ok(Pointer::new(addr, ty, Some(req.size), Owner::region(r)))
    }

    /// A Pointer to a new block of this arena. `slf` is the arena's own
    /// object, remembered on first use for `Pointer.allocator`.
    pub fn new_pointer(
        &self,
        slf: &Bound<'_, PyAny>,
        ty: &'static TypeInfo,
        req: Request,
    ) -> PyResult<Pointer> {
        let py = slf.py();
        match &self.backing {
            ArenaKind::Region(a) => {
                remember(self, a.region(), slf)?;
                self.region_pointer(py, a, ty, req)
            }
            ArenaKind::Wrap(w) => {
                if !self.known.load(Relaxed) {
                    self.remember_object(slf)?;
                }
                let rec = w
                    .allocate(req, token(py))
                    .py(py, &Asked(&self.name, ty, &req.size))?;
                Ok(Pointer::new(
                    rec.addr(),
                    ty,
                    Some(req.size),
                    Owner::block(rec),
                ))
            }
        }
    }

    /// Checks that `p` is a block of this arena that a free would accept.
    fn check_free(&self, py: Python<'_>, p: &Pointer) -> Result<(), Error> {
        self.backing.check_free(&p.owner, p.addr, token(py))
    }

    /// Enters: an ended entry taken over where [`reopen_ended_entry`]
    /// can (when `reopen`: the caller has not tried it already), else a
    /// new entry set as the context variable's value.
    pub(crate) fn enter(slf: &Bound<'_, Self>, reopen: bool) -> PyResult<()> {
        let py = slf.py();
        if reopen && reopen_ended_entry(slf).is_some() {
            return Ok(());
        }
        let outer = innermost(py)?.map(Bound::unbind);
        let entry = Bound::new(py, Entered::new(slf, outer))?;
        set_current(py, entry.as_any()).inspect_err(|_| {
            // CPython may have set the variable and failed after (making
            // the reset token): an ended entry is one current_arena() skips.
            entry.get().end(slf);
        })?;
        let old = slf.get().entry.lock(token(py)).replace(entry.unbind());
        drop(old); // outside the lock (an arena entered twice: the outer entry)
        Ok(())
    }

    /// Ends this arena's entry and releases it. The entry is the one its
    /// latest `with` made; without one (a second exit of an arena entered
    /// twice) the innermost of this context, if it is this arena's: an exit
    /// out of order ends no other arena's entry.
    pub(crate) fn exit(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let own = slf.get().entry.lock(token(py)).take();
        match own {
            Some(e) => {
                e.get().end(slf);
                drop(e);
            }
            None => {
                if let Some(e) = innermost(py)? {
                    e.get().end(slf);
                }
            }
        }
        slf.get().release(py, false)
    }

    /// [`Arena::exit`] for the common case, outside PyO3's registration
    /// (`cpython::arena_with`; its trampoline was about 100 instructions of
    /// a per-call arena): a region arena with its entry in its slot, no
    /// callback and no leak-tracking registration. True when done; false when nothing changed. It makes no
    /// `PyErr`, nothing in it panics, and the two references it lets go
    /// (the entry's arena, the slot's entry) go by plain decrefs: neither
    /// is the last of its object but in a context already gone, and then
    /// the entry's own dealloc is PyO3's, which registers itself.
    pub(crate) fn exit_plainly(slf: &Bound<'_, Self>) -> bool {
        let this = slf.get();
        let ArenaKind::Region(anchor) = &this.backing else {
            return false;
        };
        let Some(s) = token(slf.py()) else {
            return false;
        };
        if this.has_callbacks.load(Acquire) || this.leak_seq != 0 {
            return false;
        }
        let Some(entry) = this.entry.lock(Some(s)).take() else {
            return false;
        };
        let arena = entry.get().take_if(slf);
        // SAFETY: attached; both references were the arena's and the
        // entry's own (see above for why a plain decref is right).
        unsafe {
            if let Some(a) = arena {
                ffi::Py_DECREF(a.into_ptr());
            }
            ffi::Py_DECREF(entry.into_ptr());
        }
        release_region(anchor, false, Some(s));
        true
    }

    fn release(&self, py: Python<'_>, reuse: bool) -> PyResult<()> {
        let mut errors = Vec::new();
        // Callbacks first, newest first: they may still need the memory
        // (e.g. a C handle whose struct lives in the arena). Registered ones
        // are popped one at a time, so a callback may register another.
        loop {
            if !self.has_callbacks.load(Acquire) {
                break;
            }
            let cb = {
                let mut g = self.lock();
                let cb = g.pop();
                if g.is_empty() {
                    self.has_callbacks.store(false, Release);
                }
                cb
            };
            let Some(cb) = cb else { break };
            let r = match &cb {
                Callback::Call(f) => f.call0(py),
                Callback::Release(res, f) => f.call1(py, (res,)),
            };
            if let Err(e) = r {
                push_error(&mut errors, e);
            }
        }
        let released = match &self.backing {
            ArenaKind::Region(a) => release_region(a, reuse, token(py)),
            ArenaKind::Wrap(w) => {
                // A Python-defined backing allocator's failing free is
                // raised with the rest, not lost.
                let freed = raising_free_errors(py, &w.backing, || {
                    w.release(reuse, token(py), |rec, e| {
                        let block = format_args!(
                            "block of {} bytes at {:#x} from {} in {}",
                            rec.size(),
                            rec.addr(),
                            w.backing.name,
                            self.name
                        );
                        push_error(&mut errors, to_py(py, e, &block));
                    });
                    Ok(())
                });
                if let Err(e) = freed {
                    push_error(&mut errors, e);
                }
                true
            }
        };
        if released && !reuse {
            track::end_arena(self.leak_seq);
        }
        raise_all(py, errors)
    }

    fn register(&self, py: Python<'_>, cb: Callback) -> PyResult<()> {
        self.check_open(py)?;
        let mut g = self.lock();
        g.try_reserve(1)
            .map_err(|_| checked::error::<pyo3::exceptions::PyMemoryError>("callback list"))?;
        g.push(cb);
        self.has_callbacks.store(true, Release);
        Ok(())
    }
}

impl Arena {
    /// Whether this arena, dead and released, may serve as the next
    /// `Arena()` (`cpython::arena_pool`): a region arena that nothing can
    /// tell from a new one once its region is reopened (no leak-tracking
    /// registration, callback, backing allocator or `Pointer.allocator`
    /// handle; the region's conditions are `Anchor::reopen`'s). True when
    /// the region was reopened.
    ///
    /// `&mut`: the object is dead and nothing else refers to it, so its
    /// fields are read without locking (three `try_lock`s were about 80
    /// instructions of a per-call arena, callgrind).
    pub(crate) fn recycle(&mut self, py: Python<'_>) -> bool {
        let ArenaKind::Region(anchor) = &self.backing else {
            return false;
        };
        if self.leak_seq != 0 || matches!(self.made, Made::Tracked(_)) || *self.known.get_mut() {
            return false;
        }
        let none_held = matches!(self.allocator.get_mut(), Ok(None))
            && matches!(self.callbacks.get_mut(), Ok(c) if c.is_empty())
            && self.entry.get_mut().is_none();
        let Some(s) = token(py) else {
            return false;
        };
        none_held && anchor.reopen(crate::core::alloc::new_id_serialized(s), s)
    }

    /// The arena's object goes (dealloc'd, not recycled): its region's
    /// chunks go now with the proof, the first one kept for the next
    /// region (`core::region`'s `let_go`), not freed by the drop.
    pub(crate) fn let_go(&self, py: Python<'_>) {
        if let (ArenaKind::Region(anchor), Some(s)) = (&self.backing, token(py)) {
            anchor.region().let_go(s);
        }
    }

    /// Makes a recycled arena the new `Arena()`: named by its region's new
    /// id, made where the caller is (as `Arena.__new__` records it with
    /// tracking off).
    ///
    /// Runs outside PyO3's registration (`cpython::attach`: its trampoline
    /// was about 60 instructions of a per-call arena): it drops no `Py`
    /// through PyO3 (the old site's code object goes by a plain decref, as
    /// CPython's own code would drop it) and nothing in it panics.
    ///
    /// # Safety
    /// `this` is the value of an arena object that `recycle` accepted and
    /// that nothing else refers to yet; attached.
    pub(crate) unsafe fn renew(this: *mut Arena, py: Python<'_>) {
        // SAFETY: per the function's contract: no other reference exists.
        let a = unsafe { &mut *this };
        a.name = ArenaName(a.id());
        let made = super::sites::caller_frame(py).map_or(Made::Unknown, Made::Frame);
        match std::mem::replace(&mut a.made, made) {
            // SAFETY: attached; the reference was the arena's own.
            Made::Frame((code, _)) => unsafe { ffi::Py_DECREF(code.into_ptr()) },
            Made::Unknown => {}
            // `recycle` refuses a tracked arena; dropped registered if ever.
            Made::Tracked(site) => super::cpython::attach::drop_registered(site),
        }
    }

    /// Called when the arena is garbage-collected: an unreleased one is
    /// released now, callbacks included, with a ResourceWarning located
    /// where it was made; failures are unraisable (no caller to raise to).
    pub(crate) fn collected(&self, slf: &Bound<'_, PyAny>) {
        let py = slf.py();
        if self.is_closed() {
            return;
        }
        let at = match &self.made {
            Made::Unknown => None,
            Made::Frame(f) => Some(super::sites::frame_location(py, f)),
            Made::Tracked(s) => super::sites::site_location(py, s),
        };
        let msg = match &at {
            Some((file, line)) => format!(
                "{} (made at {file}:{line}) was garbage-collected unreleased: released now; \
                 use `with Arena() as a:` or call release_all()",
                self.name
            ),
            None => format!(
                "{} was garbage-collected unreleased: released now; \
                 use `with Arena() as a:` or call release_all()",
                self.name
            ),
        };
        let category = py.get_type::<PyResourceWarning>();
        let warned = match &at {
            Some((file, line)) => {
                let file = std::ffi::CString::new(file.as_str()).unwrap_or_default();
                let msg = std::ffi::CString::new(msg).unwrap_or_default();
                PyErr::warn_explicit(py, &category, &msg, &file, *line as i32, None, None)
            }
            None => {
                let msg = std::ffi::CString::new(msg).unwrap_or_default();
                PyErr::warn(py, &category, &msg, 1)
            }
        };
        if let Err(e) = warned {
            e.write_unraisable(py, Some(slf));
        }
        if let Err(e) = self.release(py, false) {
            e.write_unraisable(py, Some(slf));
        }
    }
}

#[pymethods]
impl Arena {
    /// `Arena()`: a bump region; `Arena(allocator)`: blocks from that allocator.
    /// `limit=N`: the arena's live bytes (bytes asked for) never pass N.
    #[new]
    #[pyo3(signature = (allocator=None, limit=None))]
    fn new(
        py: Python<'_>,
        allocator: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let limit = match limit.filter(|l| !l.is_none()) {
            Some(l) => super::args::limit_arg(l, "limit")?,
            None => crate::core::budget::UNLIMITED,
        };
        let (backing, obj) = match allocator.filter(|a| !a.is_none()) {
            None => {
                let anchor = Anchor::new(RegionCore::with_limit(limit)).map_err(|e| {
                    checked::error::<pyo3::exceptions::PyMemoryError>(e.to_string())
                })?;
                (ArenaKind::Region(anchor), None)
            }
            Some(a) => {
                let alloc = a.cast::<Allocator>().map_err(|_| {
                    checked::error::<PyTypeError>(format!(
                        "Arena() wraps an rsalloc Allocator (malloc, calloc, ...), not {}",
                        a.get_type()
                            .name()
                            .map(|n| n.to_string())
                            .unwrap_or_default()
                    ))
                })?;
                (
                    ArenaKind::Wrap(WrapArena::with_limit(alloc.get().core.clone(), limit)),
                    Some(a.clone().unbind()),
                )
            }
        };
        let mut arena = Arena {
            backing,
            allocator: Mutex::new(obj),
            callbacks: Mutex::new(Vec::new()),
            has_callbacks: AtomicBool::new(false),
            entry: SerialMutex::new(None),
            name: ArenaName(0),
            made: Made::Unknown,
            leak_seq: 0,
            known: AtomicBool::new(false),
            bound_call: HeldRef::default(),
        };
        arena.name = ArenaName(arena.id());
        if track::enabled() {
            let live: Arc<dyn Fn() -> u64 + Send + Sync> = match &arena.backing {
                ArenaKind::Region(a) => {
                    let r = a.region().clone();
                    Arc::new(move || r.snapshot().live_bytes)
                }
                ArenaKind::Wrap(w) => {
                    let tag = w.tag.clone();
                    Arc::new(move || tag.counters.snapshot().live_bytes)
                }
            };
            let (seq, site) = track::register_arena(arena.name.text().as_ref().into(), live);
            arena.leak_seq = seq;
            arena.made = site.map_or(Made::Unknown, Made::Tracked);
        } else if let Some(f) = super::sites::caller_frame(py) {
            arena.made = Made::Frame(f);
        }
        Ok(arena)
    }

    /// `arena(T=Uint8, count=1, *, alignment=None)`: a Pointer[T] of count elements.
    #[pyo3(signature = (r#type=None, count=SizeArg::of(1), *, alignment=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        r#type: Option<&Bound<'_, PyAny>>,
        count: SizeArg,
        alignment: Option<SizeArg>,
    ) -> PyResult<Bound<'py, Pointer>> {
        let this = slf.get();
        let (ty, req) = call_request(
            slf.py(),
            &this.name,
            r#type,
            count.get()?,
            alignment.map(SizeArg::get).transpose()?,
        )?;
        block_object(slf.py(), this.new_pointer(slf.as_any(), ty, req)?)
    }

    /// `allocate(nbytes, *, alignment=None)`: a Pointer[Uint8] of nbytes.
    #[pyo3(signature = (nbytes, *, alignment=None))]
    fn allocate<'py>(
        slf: &Bound<'py, Self>,
        nbytes: SizeArg,
        alignment: Option<SizeArg>,
    ) -> PyResult<Bound<'py, Pointer>> {
        let this = slf.get();
        let (ty, req) = bytes_request(
            slf.py(),
            &this.name,
            nbytes.get()?,
            alignment.map(SizeArg::get).transpose()?,
        )?;
        block_object(slf.py(), this.new_pointer(slf.as_any(), ty, req)?)
    }

    /// A no-op for a live block of this arena (released with the arena);
    /// a dead one -> DoubleFreeError, anyone else's -> OwnershipError.
    fn free(&self, py: Python<'_>, p: &Bound<'_, PyAny>) -> PyResult<()> {
        let p = checked::cast::<Pointer>(p, "p")?;
        let p = p.get();
        if p.addr == 0 {
            return Ok(());
        }
        self.check_free(py, p).py(py, p)
    }

    /// A new block of `count` elements from this arena holding p's bytes;
    /// p and its views are dead.
    fn realloc<'py>(
        slf: &Bound<'py, Self>,
        p: &Bound<'_, PyAny>,
        count: SizeArg,
    ) -> PyResult<Bound<'py, Pointer>> {
        let p = checked::cast::<Pointer>(p, "p")?;
        let py = slf.py();
        let this = slf.get();
        let p = p.get();
        let (ty, req) = realloc_request(py, &this.name, p.ty, count.get()?)?;
        if p.addr == 0 {
            return block_object(py, this.new_pointer(slf.as_any(), ty, req)?);
        }
        this.check_open(py)?;
        match (&this.backing, p.owner.get()) {
            (ArenaKind::Region(mine), Owned::Region(r)) if r.is_in(mine.region()) => {
                r.free(p.addr, token(py)).py(py, p)?;
                let old = p.extent().unwrap_or(0);
                let (addr, fresh) = mine.realloc(r, p.addr, old, req, token(py)).py(py, p)?;
                block_object(
                    py,
                    Pointer::new(addr, p.ty, Some(req.size), Owner::region(fresh)),
                )
            }
            (ArenaKind::Wrap(w), Owned::Block(rec)) => {
                let fresh = w.realloc(rec, p.addr, req.size, token(py)).py(py, p)?;
                block_object(
                    py,
                    Pointer::new(fresh.addr(), p.ty, Some(req.size), Owner::block(fresh)),
                )
            }
            _ => {
                let e = this
                    .check_free(py, p)
                    .err()
                    .unwrap_or(Error::Ownership(Ownership::OtherOwner));
                Err(to_py(py, e, p))
            }
        }
    }

    /// Takes ownership of `count` T at `address`, which the backing
    /// allocator's C counterpart allocated; freed at release. A bump region
    /// cannot adopt (OwnershipError).
    #[pyo3(signature = (address, r#type=None, count=None))]
    fn adopt<'py>(
        slf: &Bound<'py, Self>,
        address: &Bound<'_, PyAny>,
        r#type: Option<&Bound<'_, PyAny>>,
        count: Option<SizeArg>,
    ) -> PyResult<Bound<'py, Pointer>> {
        let py = slf.py();
        let this = slf.get();
        let (addr, ty, req) = adopt_request(py, &this.name, address, r#type, count)?;
        let asked = Asked(&"adopt", ty, &format_args!("{addr:#x}"));
        match &this.backing {
            ArenaKind::Region(_) => {
                Err(Error::Ownership(Ownership::RegionCannotAdopt)).py(py, &asked)
            }
            ArenaKind::Wrap(w) => {
                if !this.known.load(Relaxed) {
                    this.remember_object(slf.as_any())?;
                }
                let rec = w.adopt(addr, req, token(py)).py(py, &asked)?;
                adopted_object(
                    py,
                    Pointer::new(addr, ty, Some(req.size), Owner::block(rec)),
                )
            }
        }
    }

    /// A new block of this arena holding a copy of p's bytes.
    fn clone<'py>(slf: &Bound<'py, Self>, p: &Bound<'_, PyAny>) -> PyResult<Bound<'py, Pointer>> {
        let p = checked::cast::<Pointer>(p, "p")?;
        let fresh = clone_with(slf.py(), p.get(), |ty, req| {
            slf.get().new_pointer(slf.as_any(), ty, req)
        })?;
        block_object(slf.py(), fresh)
    }

    /// `p` leaves the arena and survives its release: from an arena over an
    /// allocator, p then belongs to that allocator; a bump region cannot
    /// give memory away (OwnershipError: copy it out with `clone`).
    fn detach<'py>(&self, py: Python<'py>, p: Bound<'py, PyAny>) -> PyResult<Bound<'py, Pointer>> {
        let p = checked::cast::<Pointer>(&p, "p")?.clone();
        let ptr = p.get();
        self.check_free(py, ptr).py(py, ptr)?;
        match (&self.backing, ptr.owner.get()) {
            (ArenaKind::Wrap(w), Owned::Block(rec)) => w
                .detach(rec, ptr.addr, &ptr.ty.name, token(py))
                .py(py, ptr)?,
            _ => {
                return Err(Error::Ownership(Ownership::RegionCannotDetach)).py(py, ptr);
            }
        }
        Ok(p)
    }

    /// Registers `release(resource)` to run at release; returns `resource`.
    fn using<'py>(
        &self,
        resource: Bound<'py, PyAny>,
        release: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = resource.py();
        self.register(
            py,
            Callback::Release(resource.clone().unbind(), release.unbind()),
        )?;
        Ok(resource)
    }

    /// Registers `cb()` to run at release (last registered runs first).
    fn on_release_all(&self, py: Python<'_>, cb: Bound<'_, PyAny>) -> PyResult<()> {
        self.register(py, Callback::Call(cb.unbind()))
    }

    /// Runs the callbacks and releases every block: all pointers from the
    /// arena die. With `reuse=True` the arena stays open (keeping a chunk);
    /// otherwise it is closed. Releasing a closed arena does nothing.
    #[pyo3(signature = (reuse=BoolArg::of(false)), text_signature = "($self, reuse=False)")]
    fn release_all(&self, py: Python<'_>, reuse: BoolArg) -> PyResult<()> {
        let reuse = reuse.get()?;
        self.release(py, reuse)
    }

    /// Arena memory is freed by the arena, never by C: None.
    #[getter]
    fn native_free(&self) -> Option<Int> {
        None
    }

    /// The arena's name, as reprs and leak reports show it.
    #[getter]
    fn name(&self) -> Text<NameText> {
        Text(self.name.text())
    }

    /// The backing allocator, None for a bump region.
    #[getter]
    fn allocator(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let a = self
            .allocator
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        a.as_ref().map(|a| a.clone_ref(py))
    }

    /// True after a final release.
    #[getter]
    fn closed(&self) -> bool {
        self.is_closed()
    }

    /// The arena's own counters (its allocations live until release).
    fn stats(&self) -> Stats {
        let limit = match &self.backing {
            ArenaKind::Region(a) => a.region().limit(),
            ArenaKind::Wrap(w) => crate::core::budget::as_option(w.tag.limit),
        };
        Stats::from(self.snapshot()).with_limit(limit)
    }

    /// Refused: an arena is not an allocator to wrap; give the arena its
    /// own budget with `Arena(allocator, limit=N)`.
    fn limited(&self, _max_bytes: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(checked::error::<PyTypeError>(
            "an Arena cannot be limited after the fact: make it with Arena(allocator, limit=N)              or Arena(limit=N)",
        ))
    }

    /// Live allocations.
    fn __len__(&self) -> usize {
        self.snapshot().live_count as usize
    }

    fn __repr__(&self) -> Text<String> {
        let kind = match &self.backing {
            ArenaKind::Region(_) => "bump region".to_string(),
            ArenaKind::Wrap(w) => format!("over {}", w.backing.name),
        };
        if self.is_closed() {
            return Text(format!("<rsalloc.Arena #{} {kind} released>", self.id()));
        }
        let s = self.snapshot();
        let callbacks = self.lock().len();
        let chunks = match &self.backing {
            ArenaKind::Region(a) => {
                let u = a.region().usage();
                format!(", {} chunks of {} bytes", u.chunks, u.reserved)
            }
            ArenaKind::Wrap(_) => String::new(),
        };
        Text(format!(
            "<rsalloc.Arena #{} {kind} open: {} allocations, {} bytes{chunks}, {callbacks} callbacks>",
            self.id(),
            s.live_count,
            s.live_bytes
        ))
    }

    /// Makes this the current arena (`rsalloc.current_arena()`) and returns it.
    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        Arena::enter(&slf, true)?;
        Ok(slf)
    }

    /// `release_all()`, then restores the previous current arena; an
    /// exception from the block is not suppressed.
    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        slf: &Bound<'_, Self>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        Arena::exit(slf)?;
        Ok(false)
    }

    /// `async with` form of `__enter__`: an awaitable of the arena.
    fn __aenter__(slf: Bound<'_, Self>) -> PyResult<Ready> {
        Arena::enter(&slf, true)?;
        Ok(Ready(slf.into_any().unbind()))
    }

    /// `async with` form of `__exit__`: releases, then an awaitable of False.
    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __aexit__(
        slf: &Bound<'_, Self>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Ready> {
        Arena::exit(slf)?;
        Ok(Ready(
            pyo3::types::PyBool::new(slf.py(), false)
                .to_owned()
                .into_any()
                .unbind(),
        ))
    }

    /// Refuses: an arena owns memory of this process only (TypeError).
    fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(checked::error::<PyTypeError>("arenas cannot be pickled"))
    }

    // An arena takes part in cycle collection: its callbacks (and the
    // resources `using` keeps) and its backing allocator may refer back
    // to it. The collector finalizes it (releases it, callbacks included:
    // see `finalize`) before it clears anything.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // try_lock: a collection must never wait; an unvisited edge only
        // postpones the collection.
        if let Ok(cbs) = self.callbacks.try_lock() {
            for cb in cbs.iter() {
                match cb {
                    Callback::Call(f) => visit.call(f)?,
                    Callback::Release(res, f) => {
                        visit.call(res)?;
                        visit.call(f)?;
                    }
                }
            }
        }
        if let Ok(a) = self.allocator.try_lock() {
            if let Some(a) = &*a {
                visit.call(a)?;
            }
        }
        if let Some(e) = self.entry.try_lock(gc_token()) {
            if let Some(e) = &*e {
                visit.call(e)?;
            }
        }
        self.bound_call.visit(&visit)
    }

    fn __clear__(&self) {
        // Taken under the locks, dropped outside them: dropping may run code.
        let cbs = std::mem::take(&mut *self.lock());
        let alloc = self
            .allocator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let entry = self.entry.lock(gc_token()).take();
        drop((cbs, alloc, entry));
        // SAFETY: attached (a collector's clear); the reference taken out
        // is this arena's (the call stays bound: it holds the arena).
        unsafe { ffi::Py_XDECREF(self.bound_call.replace(std::ptr::null_mut())) };
    }
}
