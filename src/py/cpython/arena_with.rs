//! `with arena:` without two bound methods per `with`.
//!
//! A `with` looks `__enter__` and `__exit__` up on the object's type and
//! binds each (`_PyObject_LookupSpecial`): for PyO3's method descriptors
//! that is a new bound method object per name, made and destroyed per
//! `with`, then called through PyO3's argument parsing. In a per-call
//! arena (`with Arena() as a:` around a few allocations) those two objects
//! and their calls were about a seventh of the whole (callgrind,
//! BENCHMARKS.md). Here the two names of the Arena type hold a descriptor
//! of our own whose `__get__` on an arena makes one small object, a
//! *scope*, that the `with` calls directly (vectorcall): no argument
//! parsing, and one object instead of two, the `__exit__` one.
//!
//! What stays PyO3's: on the class (`Arena.__enter__`, what
//! `contextlib.ExitStack` looks up) the descriptor gives PyO3's own method
//! descriptor back, so signatures, docstrings and `Arena.__exit__(a, ...)`
//! are unchanged; the descriptor in the class's dict forwards its calls,
//! attributes and repr to PyO3's; a scope called with any other shape of arguments
//! (keywords, too many) calls PyO3's method with them, so the errors are
//! PyO3's. `async with` is untouched. A scope is a garbage-collected object
//! that holds its arena, as a bound method does.
//!
//! Two refinements for `with` statements (each a trick of its own in
//! `_fast_paths()`): the two lookups of one statement give one scope
//! (`arena_with_shared`), and a context entry reused by its statements
//! keeps a builtin function that serves them instead of a scope
//! (`arena_with_kept_call`); their sections below say how.

use crate::py::arena::Arena;
use crate::py::checked;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicUsize, Ordering::Relaxed};

/// Which of the two methods a descriptor or scope stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Which {
    Enter,
    Exit,
    /// Both, by the call's arguments: the one scope a `with` statement
    /// looked both names up as (`share_with_statement`).
    With,
}

/// `arena.__enter__` / `arena.__exit__`: the arena, bound.
#[repr(C)]
struct Scope {
    ob_base: ffi::PyObject,
    vectorcall: Option<ffi::vectorcallfunc>,
    /// The arena (a strong reference; NULL once cleared by the collector).
    arena: *mut ffi::PyObject,
    which: Which,
}

/// What `Arena.__dict__["__enter__"]` holds once the trick is on.
#[repr(C)]
struct Method {
    ob_base: ffi::PyObject,
    /// PyO3's method descriptor (a strong reference).
    old: *mut ffi::PyObject,
    which: Which,
}

/// Neither type is made from Python code (no `tp_new`) nor changed by it.
const SEALED: std::ffi::c_ulong =
    ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION | ffi::Py_TPFLAGS_IMMUTABLETYPE;

static SCOPE_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
/// PyO3's method descriptors of `__enter__` and `__exit__`, for every call
/// shape a scope does not serve itself (borrowed: the Method objects in
/// the type's dict keep them for the process).
static OLD: [AtomicPtr<ffi::PyObject>; 2] = [
    AtomicPtr::new(std::ptr::null_mut()),
    AtomicPtr::new(std::ptr::null_mut()),
];
static ARENA_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());

/// The scope's call: `__enter__()` enters and returns the arena,
/// `__exit__(t, v, tb)` leaves and releases it and returns False; any
/// other shape goes to PyO3's method.
unsafe extern "C" fn scope_call(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a vectorcall entry attached, with `callable` a
    // live Scope (this function is only ever a Scope's entry).
    unsafe {
        let s = &*callable.cast::<Scope>();
        let nargs = ffi::PyVectorcall_NARGS(nargsf);
        let arena = s.arena;
        if arena.is_null() {
            ffi::PyErr_SetString(
                ffi::PyExc_RuntimeError,
                c"rsalloc: this arena method was cleared by the garbage collector".as_ptr(),
            );
            return std::ptr::null_mut();
        }
        // A `with` statement's one scope is `__enter__` called without
        // arguments, as the statement calls it first, and `__exit__` else.
        let which = match s.which {
            Which::With if nargs == 0 && kwnames.is_null() => Which::Enter,
            Which::With => Which::Exit,
            w => w,
        };
        let plain = kwnames.is_null()
            && match which {
                Which::Enter => nargs == 0,
                _ => nargs <= 3,
            };
        if !plain {
            let old = OLD[usize::from(which == Which::Exit)].load(Relaxed);
            return super::call_prepended(old, Some(arena), args, nargs, kwnames);
        }
        // The arena is held by the scope, which the caller holds, for the
        // whole call. A `with` after a `with` takes the ended entry over,
        // and a plain exit leaves, unregistered (their comments say why
        // they may); otherwise entering and leaving may drop `Py` values
        // (the entries, callbacks at release), so the thread is registered.
        let a = pyo3::Borrowed::from_ptr(Python::assume_attached(), arena);
        let a = a.cast_unchecked::<Arena>();
        match which {
            Which::Enter => {
                if let Some(entry) = crate::py::arena::reopen_ended_entry(&a) {
                    #[cfg(not(Py_GIL_DISABLED))]
                    keep_call_on(&entry);
                    drop(entry);
                    return ffi::Py_NewRef(arena);
                }
            }
            Which::Exit if Arena::exit_plainly(&a) => return ffi::Py_NewRef(ffi::Py_False()),
            _ => {}
        }
        registered(arena, which)
    }
}

/// Enters or leaves `arena` the full way, registered with PyO3. Out of
/// line: the plain cases above are a `with`'s, and this one's frame costs
/// them more than their work.
///
/// # Safety
/// Attached; `arena` a live Arena the caller holds for the call.
#[inline(never)]
unsafe fn registered(arena: *mut ffi::PyObject, which: Which) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    let out = unsafe {
        super::attach::registered(|py| {
            let a = pyo3::Borrowed::from_ptr(py, arena).cast_unchecked::<Arena>();
            let done = match which {
                Which::Enter => Arena::enter(&a, false).map(|()| ffi::Py_NewRef(arena)),
                _ => Arena::exit(&a).map(|()| ffi::Py_NewRef(ffi::Py_False())),
            };
            done.unwrap_or_else(|e| {
                e.restore(py);
                std::ptr::null_mut()
            })
        })
    };
    // None: a panic, raised as PanicException.
    out.unwrap_or(std::ptr::null_mut())
}

unsafe extern "C" fn scope_traverse(
    obj: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: CPython traverses a live Scope.
    unsafe {
        let a = (*obj.cast::<Scope>()).arena;
        if a.is_null() {
            0
        } else {
            visit(a, arg)
        }
    }
}

unsafe extern "C" fn scope_clear(obj: *mut ffi::PyObject) -> c_int {
    // SAFETY: a live Scope; the reference is taken out before it is dropped.
    unsafe {
        let s = &mut *obj.cast::<Scope>();
        let a = std::mem::replace(&mut s.arena, std::ptr::null_mut());
        if !a.is_null() {
            ffi::Py_DECREF(a);
        }
    }
    0
}

unsafe extern "C" fn scope_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython deallocates a dead Scope, attached; a heap type's
    // instance holds a reference to its type, dropped last.
    unsafe {
        ffi::PyObject_GC_UnTrack(obj.cast());
        #[cfg(not(Py_GIL_DISABLED))]
        if LOOKED_UP.load(Relaxed) == obj {
            LOOKED_UP.store(std::ptr::null_mut(), Relaxed);
        }
        scope_clear(obj);
        let tp = ffi::Py_TYPE(obj);
        #[cfg(not(Py_GIL_DISABLED))]
        let kept = KEPT.keep(obj);
        #[cfg(Py_GIL_DISABLED)]
        let kept = false;
        if !kept {
            ffi::PyObject_GC_Del(obj.cast());
        }
        ffi::Py_DECREF(tp.cast());
    }
}

unsafe extern "C" fn scope_repr(obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: a live Scope.
    unsafe {
        let s = &*obj.cast::<Scope>();
        let name = match s.which {
            Which::Enter => c"__enter__",
            Which::Exit => c"__exit__",
            Which::With => c"__enter__/__exit__",
        };
        if s.arena.is_null() {
            return ffi::PyUnicode_FromFormat(
                c"<method Arena.%s, cleared>".as_ptr(),
                name.as_ptr(),
            );
        }
        ffi::PyUnicode_FromFormat(
            c"<bound method Arena.%s of %R>".as_ptr(),
            name.as_ptr(),
            s.arena,
        )
    }
}

/// The descriptor's `__get__`: on an arena, a new scope (or the one its
/// `with` statement looked `__enter__` up as); on the class (or anything
/// else), PyO3's descriptor's own answer. The shared `__exit__` returns
/// before `new_scope_for`'s frame is set up (a `with`'s second lookup).
unsafe extern "C" fn method_get(
    descr: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    ty: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_descr_get attached, with a live Method and
    // `obj` NULL or live.
    unsafe {
        let m = &*descr.cast::<Method>();
        let arena_tp = ARENA_TYPE.load(Relaxed);
        if obj.is_null() || ffi::Py_TYPE(obj) != arena_tp {
            // The class itself, or the error PyO3's descriptor gives.
            return match (*ffi::Py_TYPE(m.old)).tp_descr_get {
                Some(get) => get(m.old, obj, ty),
                None => ffi::Py_NewRef(m.old),
            };
        }
        #[cfg(not(Py_GIL_DISABLED))]
        let statement = match m.which {
            Which::Exit => {
                if let Some(s) = share_with_statement(obj) {
                    return s;
                }
                false
            }
            _ => {
                let statement = in_with_statement();
                if statement {
                    if let Some(c) = bind_kept_call(obj) {
                        return c;
                    }
                }
                statement
            }
        };
        #[cfg(Py_GIL_DISABLED)]
        let statement = false;
        new_scope_for(obj, m.which, statement)
    }
}

/// A new scope for `which` of arena `obj`, remembered for the `__exit__`
/// lookup when `statement` (a `with` statement's `__enter__`); NULL with
/// MemoryError.
///
/// # Safety
/// Attached; `obj` a live Arena.
#[inline(never)]
unsafe fn new_scope_for(
    obj: *mut ffi::PyObject,
    which: Which,
    statement: bool,
) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        let s = new_scope();
        if s.is_null() {
            return s;
        }
        let scope = &mut *s.cast::<Scope>();
        scope.vectorcall = Some(scope_call);
        scope.arena = ffi::Py_NewRef(obj);
        scope.which = which;
        // Tracked once its fields are set (the collector may run at any allocation).
        ffi::PyObject_GC_Track(s.cast());
        #[cfg(not(Py_GIL_DISABLED))]
        if statement {
            // Last, after the allocation (which may run Python code, whose
            // own `with` statements come and go before it ends).
            LOOKED_UP.store(s, Relaxed);
        }
        s
    }
}

// One scope for a `with` statement, with a GIL.
//
// A `with` statement (`BEFORE_WITH`, CPython 3.11 to 3.13) looks
// `__enter__` up, then `__exit__`, both on the same object and with
// nothing run between them, then calls the first without arguments and
// drops it, and holds the second until the block ends. So when the
// running frame is at that instruction, the `__enter__` scope is
// remembered (`LOOKED_UP`), and the `__exit__` lookup that follows gives
// the same object back, turned into a `With` scope, if nothing else holds
// it: one object instead of two. Off unless checked at install
// (`install_shared_scope`): the opcode from CPython's `opcode` module, and
// a probe `with` that must go this way. Outside a `with` statement (an
// attribute lookup, a call of `__enter__` by hand) each name gives a scope
// of its own, as before.

/// The `__enter__` scope a `with` statement looked up, until its
/// `__exit__` lookup (borrowed: a scope's dealloc clears it).
#[cfg(not(Py_GIL_DISABLED))]
static LOOKED_UP: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());
/// `BEFORE_WITH`'s opcode, once checked; above 255: off.
static WITH_OPCODE: AtomicU16 = AtomicU16::new(OFF);
const OFF: u16 = 0x100;
/// How many `__exit__` lookups were shared (the install probe's check).
#[cfg(not(Py_GIL_DISABLED))]
static SHARED: AtomicUsize = AtomicUsize::new(0);

/// How many `__exit__` lookups were shared so far.
pub(crate) fn shared_scopes() -> usize {
    #[cfg(not(Py_GIL_DISABLED))]
    return SHARED.load(Relaxed);
    #[cfg(Py_GIL_DISABLED)]
    0
}

/// Whether the running frame is at a `with` statement's first instruction.
#[cfg(not(Py_GIL_DISABLED))]
fn in_with_statement() -> bool {
    let op = WITH_OPCODE.load(Relaxed);
    // SAFETY: called from `__get__`, attached.
    op != OFF
        && super::frames::running_opcode(unsafe { Python::assume_attached() })
            .is_some_and(|b| u16::from(b) == op)
}

/// The `__exit__` of arena `obj`: the scope its `with` statement just
/// looked `__enter__` up as, when there is one that nothing else holds (a
/// new reference); None otherwise.
///
/// # Safety
/// Attached, with a GIL; `obj` a live Arena.
#[cfg(not(Py_GIL_DISABLED))]
unsafe fn share_with_statement(obj: *mut ffi::PyObject) -> Option<*mut ffi::PyObject> {
    // A load and a store, not a swap: with a GIL nothing runs between
    // them, and a swap is a locked instruction (about 20 cycles).
    if KEPT_FOR.load(Relaxed) == obj {
        KEPT_FOR.store(std::ptr::null_mut(), Relaxed);
        // SAFETY: per the function's contract; the arena's kept call, if
        // bound, is held by it.
        let c = unsafe {
            pyo3::Borrowed::from_ptr(Python::assume_attached(), obj).cast_unchecked::<Arena>()
        }
        .get()
        .bound_call
        .get();
        if !c.is_null() {
            // SAFETY: per the function's contract: the statement's own
            // lookups, with nothing run since the first.
            unsafe { enter_bound(obj, c) };
            SHARED.store(SHARED.load(Relaxed).wrapping_add(1), Relaxed);
            // SAFETY: a live object the arena holds.
            return Some(unsafe { ffi::Py_NewRef(c) });
        }
    }
    let s = LOOKED_UP.load(Relaxed);
    if s.is_null() {
        return None;
    }
    LOOKED_UP.store(std::ptr::null_mut(), Relaxed);
    // SAFETY: per the function's contract; a remembered scope is alive (its
    // dealloc forgets it). Its only holder is the statement, whose
    // `__enter__` call comes next and then drops it.
    unsafe {
        let scope = &mut *s.cast::<Scope>();
        if scope.arena != obj || scope.which != Which::Enter || ffi::Py_REFCNT(s) != 1 {
            return None;
        }
        scope.which = Which::With;
        SHARED.store(SHARED.load(Relaxed).wrapping_add(1), Relaxed);
        Some(ffi::Py_NewRef(s))
    }
}

// A kept call per context entry, with a GIL.
//
// In a loop of `with Arena() as a:` the context's entry is reused (the
// ended entry the last `with` left: arena::reopen_ended_entry), and so can
// the one object the statement calls as `__enter__` and `__exit__`: a
// builtin function (`METH_FASTCALL`, `self` the arena), made at the
// entry's first reuse and kept on it, bound to the arena at the
// statement's `__enter__` lookup and unbound by its exit. No scope is made
// and collected, and CPython calls a builtin function directly at the end
// of the block (its specialised call of a builtin function:
// `PRECALL_NO_KW_BUILTIN_FAST` on 3.11), not through `PyObject_Vectorcall`.
//
// The `__enter__` lookup reads the context variable and binds the call
// (its `self` the arena, its `__module__` slot the entry, held); the
// `__exit__` lookup, on the same arena, which in a `with` statement comes
// next with nothing run between, enters the arena there (the entry takes
// it over), so the call without arguments only returns it. A lookup of
// `__enter__` alone (by C code while a frame is at `BEFORE_WITH`) binds it
// and enters nothing: calling it then is an `__enter__` by hand, the full
// enter, and unbinds it.

/// The arena whose `__enter__` lookup bound a kept call, until its
/// `__exit__` lookup (an address, compared, never read through).
#[cfg(not(Py_GIL_DISABLED))]
static KEPT_FOR: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());
/// Whether kept calls are made and used (checked at install).
#[cfg(not(Py_GIL_DISABLED))]
static KEPT_ON: AtomicBool = AtomicBool::new(false);
/// How many `with` statements were served by a kept call (the install
/// probe's check, and the tests').
#[cfg(not(Py_GIL_DISABLED))]
static KEPT_USED: AtomicUsize = AtomicUsize::new(0);

/// How many `with` statements a kept call served so far.
pub(crate) fn kept_calls() -> usize {
    #[cfg(not(Py_GIL_DISABLED))]
    return KEPT_USED.load(Relaxed);
    #[cfg(Py_GIL_DISABLED)]
    0
}

/// The kept calls' definition: CPython reads it, never writes it.
struct KeptDef(ffi::PyMethodDef);
// SAFETY: immutable, and only ever read.
unsafe impl Sync for KeptDef {}

static KEPT_DEF: KeptDef = KeptDef(ffi::PyMethodDef {
    ml_name: c"__exit__".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: kept_call,
    },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: c"An arena's __enter__ (without arguments) and __exit__, bound for one with statement."
        .as_ptr(),
});

/// A kept call: `()` returns the arena its statement's lookups entered
/// (or enters it, when only `__enter__` was looked up, and unbinds the
/// call); `(t, v, tb)` leaves and releases the arena, returns False, and
/// unbinds the call; any other count is PyO3's `__exit__` (its error,
/// or its exit, which unbinds it too).
/// Unbound, `(t, v, tb)` returns False (the statement's arena left by a
/// call of it by hand) and anything else raises RuntimeError.
unsafe extern "C" fn kept_call(
    slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a builtin function attached; `slf` is its
    // `self`, which only `bind_kept_call` sets: a live Arena or NULL.
    unsafe {
        if slf.is_null() {
            if nargs == 3 {
                return ffi::Py_NewRef(ffi::Py_False());
            }
            ffi::PyErr_SetString(
                ffi::PyExc_RuntimeError,
                c"rsalloc: this arena method is not bound (its with statement ended)".as_ptr(),
            );
            return std::ptr::null_mut();
        }
        match nargs {
            0 => {
                let a = pyo3::Borrowed::from_ptr(Python::assume_attached(), slf)
                    .cast_unchecked::<Arena>();
                let c = a.get().bound_call.get();
                if c.is_null() || (*c.cast::<ffi::PyCFunctionObject>()).m_module.is_null() {
                    // Entered at the `__exit__` lookup.
                    return ffi::Py_NewRef(slf);
                }
                // No `__exit__` lookup came: an `__enter__` by hand.
                #[cfg(not(Py_GIL_DISABLED))]
                if KEPT_FOR.load(Relaxed) == slf {
                    KEPT_FOR.store(std::ptr::null_mut(), Relaxed);
                }
                let out = registered(slf, Which::Enter);
                unbind(slf);
                out
            }
            3 => {
                let a = pyo3::Borrowed::from_ptr(Python::assume_attached(), slf)
                    .cast_unchecked::<Arena>();
                let out = if Arena::exit_plainly(&a) {
                    ffi::Py_NewRef(ffi::Py_False())
                } else {
                    registered(slf, Which::Exit)
                };
                unbind(slf);
                out
            }
            _ => {
                // PyO3's `__exit__`: it leaves with one or two arguments
                // too, and then the call is unbound as at a plain exit.
                let out = super::call_prepended(
                    OLD[1].load(Relaxed),
                    Some(slf),
                    args,
                    nargs,
                    std::ptr::null_mut(),
                );
                if !out.is_null() {
                    unbind(slf);
                }
                out
            }
        }
    }
}

/// Unbinds the kept call bound to `arena`, if one is, dropping its
/// reference to the arena last (possibly the arena's last).
///
/// # Safety
/// Attached, with a GIL; `arena` a live Arena the caller may no longer use.
unsafe fn unbind(arena: *mut ffi::PyObject) {
    // SAFETY: per the function's contract; a bound call is a builtin
    // function `bind_kept_call` made, whose `self` is the arena.
    unsafe {
        let a =
            pyo3::Borrowed::from_ptr(Python::assume_attached(), arena).cast_unchecked::<Arena>();
        let c = a.get().bound_call.replace(std::ptr::null_mut());
        if c.is_null() {
            return;
        }
        let f = &mut *c.cast::<ffi::PyCFunctionObject>();
        let entry = std::mem::replace(&mut f.m_module, std::ptr::null_mut());
        let s = std::mem::replace(&mut f.m_self, std::ptr::null_mut());
        ffi::Py_DECREF(c);
        ffi::Py_XDECREF(entry);
        ffi::Py_XDECREF(s);
    }
}

/// The `__exit__` lookup of a `with` statement whose `__enter__` lookup
/// bound `c` to `arena`: the entry the call holds takes the arena over.
///
/// # Safety
/// Attached, with a GIL, nothing run since that lookup; `c` the arena's
/// bound call.
#[cfg(not(Py_GIL_DISABLED))]
unsafe fn enter_bound(arena: *mut ffi::PyObject, c: *mut ffi::PyObject) {
    // SAFETY: per the function's contract; the entry is the one
    // `reusable_entry` gave at that lookup, held by the call since.
    unsafe {
        let f = &mut *c.cast::<ffi::PyCFunctionObject>();
        let entry = std::mem::replace(&mut f.m_module, std::ptr::null_mut());
        if entry.is_null() {
            return;
        }
        let py = Python::assume_attached();
        let a = pyo3::Borrowed::from_ptr(py, arena).cast_unchecked::<Arena>();
        let e = Bound::from_owned_ptr(py, entry).cast_into_unchecked::<crate::py::arena::Entered>();
        crate::py::arena::take_over(&a, &e);
    }
}

/// The kept call of the context's reusable entry, bound to arena `obj`
/// (a new reference) and holding the entry; None, and nothing changed,
/// when there is none free.
///
/// # Safety
/// Attached, with a GIL, at a `with` statement's `__enter__` lookup; `obj`
/// a live Arena.
#[cfg(not(Py_GIL_DISABLED))]
unsafe fn bind_kept_call(obj: *mut ffi::PyObject) -> Option<*mut ffi::PyObject> {
    KEPT_FOR.store(std::ptr::null_mut(), Relaxed);
    if !KEPT_ON.load(Relaxed) {
        return None;
    }
    // SAFETY: per the function's contract.
    unsafe {
        let a = pyo3::Borrowed::from_ptr(Python::assume_attached(), obj).cast_unchecked::<Arena>();
        if !a.get().bound_call.get().is_null() {
            return None;
        }
        let entry = crate::py::arena::reusable_entry(&a)?;
        let c = entry.get().kept_call.get();
        // Free: held by the entry alone, and unbound.
        if c.is_null() || ffi::Py_REFCNT(c) != 1 {
            return None;
        }
        let f = &mut *c.cast::<ffi::PyCFunctionObject>();
        if !f.m_self.is_null() || !f.m_module.is_null() {
            return None;
        }
        // The entry, for the `__exit__` lookup to enter the arena with.
        f.m_module = entry.into_ptr();
        f.m_self = ffi::Py_NewRef(obj);
        a.get().bound_call.replace(ffi::Py_NewRef(c));
        KEPT_FOR.store(obj, Relaxed);
        KEPT_USED.store(KEPT_USED.load(Relaxed).wrapping_add(1), Relaxed);
        Some(ffi::Py_NewRef(c))
    }
}

/// Gives a reopened entry its kept call if it has none (at the `with`'s
/// enter, a call: the allocation may run code). A failure to make one
/// changes nothing.
///
/// # Safety
/// Attached, with a GIL.
#[cfg(not(Py_GIL_DISABLED))]
unsafe fn keep_call_on(entry: &Bound<'_, crate::py::arena::Entered>) {
    if !KEPT_ON.load(Relaxed) || !entry.get().kept_call.get().is_null() {
        return;
    }
    // SAFETY: per the function's contract; the definition is static.
    unsafe {
        let c = ffi::PyCFunction_NewEx(
            std::ptr::from_ref(&KEPT_DEF.0).cast_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        if c.is_null() {
            ffi::PyErr_Clear();
            return;
        }
        // Code the allocation ran may have given it one meanwhile.
        ffi::Py_XDECREF(entry.get().kept_call.replace(c));
    }
}

/// Dead scopes kept for the next `with` (a `with` makes two and drops them
/// within the statement): their memory, untracked, the type's reference
/// dropped. With a GIL only.
#[cfg(not(Py_GIL_DISABLED))]
static KEPT: super::gil_list::GilList<8> = super::gil_list::GilList::new();

/// A scope object, untracked, its fields to be set; NULL with MemoryError.
///
/// # Safety
/// Attached.
unsafe fn new_scope() -> *mut ffi::PyObject {
    let tp = SCOPE_TYPE.load(Relaxed);
    // SAFETY: attached (the GIL, where the list is used); a kept object is
    // a dead scope's memory, from the type's allocator.
    unsafe {
        #[cfg(not(Py_GIL_DISABLED))]
        if let Some(obj) = KEPT.take() {
            // The header as PyType_GenericAlloc sets it (a reference to the type).
            return super::gil_list::init(obj, tp);
        }
        // An object from PyObject_GC_New is not tracked yet.
        ffi::PyObject_GC_New::<ffi::PyObject>(tp)
    }
}

/// `Arena.__dict__["__enter__"](a)` and every attribute (`__doc__`,
/// `__name__`, `__text_signature__`, ...) are PyO3's descriptor's.
unsafe extern "C" fn method_call(
    descr: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: a live Method; CPython passes a tuple and NULL or a dict.
    unsafe { ffi::PyObject_Call((*descr.cast::<Method>()).old, args, kwargs) }
}

unsafe extern "C" fn method_getattro(
    descr: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: a live Method and a str name.
    unsafe { ffi::PyObject_GetAttr((*descr.cast::<Method>()).old, name) }
}

unsafe extern "C" fn method_repr(descr: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: a live Method.
    unsafe { ffi::PyObject_Repr((*descr.cast::<Method>()).old) }
}

unsafe extern "C" fn method_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: a dead Method (only at interpreter exit: the type's dict holds it).
    unsafe {
        ffi::Py_DECREF((*obj.cast::<Method>()).old);
        let tp = ffi::Py_TYPE(obj);
        ffi::PyObject_Free(obj.cast());
        ffi::Py_DECREF(tp.cast());
    }
}

/// A type from a spec: `name`, `size` bytes an object, `slots`.
fn make_type(
    name: &'static std::ffi::CStr,
    size: usize,
    flags: std::ffi::c_ulong,
    slots: &mut [ffi::PyType_Slot],
) -> Result<*mut ffi::PyTypeObject, String> {
    let mut spec = ffi::PyType_Spec {
        name: name.as_ptr(),
        basicsize: size as c_int,
        itemsize: 0,
        flags: flags as _,
        slots: slots.as_mut_ptr(),
    };
    // SAFETY: a complete spec whose slots end with a zero entry (the
    // callers'); CPython copies what it needs, the strings are static.
    let tp = unsafe { ffi::PyType_FromSpec(&mut spec) };
    if tp.is_null() {
        // SAFETY: attached (module init), with the exception set.
        unsafe { ffi::PyErr_Clear() };
        return Err(format!("PyType_FromSpec({name:?}) failed"));
    }
    Ok(tp.cast())
}

/// Puts the descriptors in Arena's dict in place of PyO3's `__enter__` and
/// `__exit__` (module init, before any arena is entered).
pub(crate) fn install(py: Python<'_>) -> Result<(), String> {
    let arena = Arena::type_object(py);
    // PyType_FromSpec copies the members into the type it makes.
    let mut members = [
        ffi::PyMemberDef {
            name: c"__vectorcalloffset__".as_ptr(),
            type_code: ffi::Py_T_PYSSIZET,
            offset: std::mem::offset_of!(Scope, vectorcall) as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: std::ptr::null(),
        },
        ffi::PyMemberDef {
            name: c"__self__".as_ptr(),
            type_code: ffi::Py_T_OBJECT_EX,
            offset: std::mem::offset_of!(Scope, arena) as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: std::ptr::null(),
        },
        // SAFETY: the all-zero member ends the list.
        unsafe { std::mem::zeroed() },
    ];
    let slot = |slot: c_int, pfunc: *mut c_void| ffi::PyType_Slot { slot, pfunc };
    let mut scope_slots = [
        slot(ffi::Py_tp_dealloc, scope_dealloc as *mut c_void),
        slot(ffi::Py_tp_traverse, scope_traverse as *mut c_void),
        slot(ffi::Py_tp_clear, scope_clear as *mut c_void),
        slot(ffi::Py_tp_repr, scope_repr as *mut c_void),
        slot(ffi::Py_tp_call, ffi::PyVectorcall_Call as *mut c_void),
        slot(ffi::Py_tp_members, members.as_mut_ptr().cast()),
        slot(0, std::ptr::null_mut()),
    ];
    let scope_tp = make_type(
        c"rsalloc._ArenaMethod",
        std::mem::size_of::<Scope>(),
        ffi::Py_TPFLAGS_DEFAULT
            | ffi::Py_TPFLAGS_HAVE_GC
            | ffi::Py_TPFLAGS_HAVE_VECTORCALL
            | SEALED,
        &mut scope_slots,
    )?;
    let mut method_slots = [
        slot(ffi::Py_tp_dealloc, method_dealloc as *mut c_void),
        slot(ffi::Py_tp_descr_get, method_get as *mut c_void),
        slot(ffi::Py_tp_call, method_call as *mut c_void),
        slot(ffi::Py_tp_getattro, method_getattro as *mut c_void),
        slot(ffi::Py_tp_repr, method_repr as *mut c_void),
        slot(0, std::ptr::null_mut()),
    ];
    let method_tp = make_type(
        c"rsalloc._ArenaMethodDescriptor",
        std::mem::size_of::<Method>(),
        ffi::Py_TPFLAGS_DEFAULT | SEALED,
        &mut method_slots,
    )?;
    // A scope is never made from Python (no tp_new): only by `method_get`.
    SCOPE_TYPE.store(scope_tp, Relaxed);
    ARENA_TYPE.store(arena.as_type_ptr(), Relaxed);
    for (name, which) in [("__enter__", Which::Enter), ("__exit__", Which::Exit)] {
        let old = super::own_descriptor(
            &arena,
            name,
            std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type),
        )
        .map_err(|e| e.to_string())?;
        // SAFETY: a ready type of ours, no tp_new, so allocated by hand:
        // PyType_GenericAlloc sets the header (and a reference to the type).
        let m = unsafe {
            let m = ffi::PyType_GenericAlloc(method_tp, 0);
            if m.is_null() {
                ffi::PyErr_Clear();
                return Err(checked::no_memory().to_string());
            }
            let mm = &mut *m.cast::<Method>();
            mm.old = old.into_ptr();
            mm.which = which;
            OLD[usize::from(which == Which::Exit)].store(mm.old, Relaxed);
            m
        };
        super::set_descriptor(&arena, name, m).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Turns the shared scope on: `BEFORE_WITH`'s opcode from CPython's
/// `opcode` module, then a probe: a `with` on a new arena must look its
/// two names up as one scope, and `__enter__` and `__exit__` looked up
/// outside a `with` must stay two (module init, after `install` and the
/// frames trick).
pub(crate) fn install_shared_scope(py: Python<'_>) -> Result<(), String> {
    #[cfg(Py_GIL_DISABLED)]
    return Err("free-threaded build: the looked-up scope is guarded by the GIL".into());
    #[cfg(not(Py_GIL_DISABLED))]
    {
        if SCOPE_TYPE.load(Relaxed).is_null() {
            return Err("arena_with is off".into());
        }
        if super::frames::running_opcode(py).is_none() {
            return Err("caller_frames is off: the running instruction is unknown".into());
        }
        let err = |e: PyErr| e.to_string();
        let op: u8 = py
            .import(checked::name!("opcode"))
            .and_then(|m| m.getattr(checked::name!("opmap")))
            .and_then(|m| m.get_item(checked::name!("BEFORE_WITH")))
            .and_then(|o| o.extract())
            .map_err(err)?;
        let globals = checked::dict(py).map_err(err)?;
        globals
            .set_item(checked::name!("A"), Arena::type_object(py))
            .map_err(err)?;
        let before = SHARED.load(Relaxed);
        WITH_OPCODE.store(u16::from(op), Relaxed);
        let probe = c"with A() as a:\n    pass\nb = A()\nm = b.__enter__\nx = b.__exit__\nsame = m is x\nb.release_all()\n";
        let ran = py.run(probe, Some(&globals), None);
        let same = globals
            .get_item(checked::name!("same"))
            .ok()
            .flatten()
            .map(|s| s.is_truthy().unwrap_or(true));
        let shared = SHARED.load(Relaxed).wrapping_sub(before);
        if ran.is_err() || shared != 1 || same != Some(false) || !LOOKED_UP.load(Relaxed).is_null()
        {
            WITH_OPCODE.store(OFF, Relaxed);
            let why = ran.err().map_or_else(String::new, err);
            return Err(format!(
                "the probe `with` shared {shared} scope(s), not one, or lookups outside it did {why}"
            ));
        }
        Ok(())
    }
}

/// Turns kept calls on, then a probe: `with` statements in a row on new
/// arenas must be served by one from the third on, each arena closed after
/// its statement and no call left bound (module init, after
/// `install_shared_scope`).
pub(crate) fn install_kept_call(py: Python<'_>) -> Result<(), String> {
    #[cfg(Py_GIL_DISABLED)]
    return Err("free-threaded build: kept calls are guarded by the GIL".into());
    #[cfg(not(Py_GIL_DISABLED))]
    {
        if WITH_OPCODE.load(Relaxed) == OFF {
            return Err("arena_with_shared is off".into());
        }
        let err = |e: PyErr| e.to_string();
        let globals = checked::dict(py).map_err(err)?;
        globals
            .set_item(checked::name!("A"), Arena::type_object(py))
            .map_err(err)?;
        let before = KEPT_USED.load(Relaxed);
        KEPT_ON.store(true, Relaxed);
        let probe = c"ok = True\nfor _ in range(4):\n    with A() as a:\n        ok = ok and not a.closed\n    ok = ok and a.closed\n";
        let ran = py.run(probe, Some(&globals), None);
        let ok = globals
            .get_item(checked::name!("ok"))
            .ok()
            .flatten()
            .is_some_and(|o| o.is_truthy().unwrap_or(false));
        let bound = globals
            .get_item(checked::name!("a"))
            .ok()
            .flatten()
            .and_then(|a| a.cast_into::<Arena>().ok())
            .is_none_or(|a| !a.get().bound_call.get().is_null());
        let used = KEPT_USED.load(Relaxed).wrapping_sub(before);
        if ran.is_err() || !ok || bound || used < 2 || !KEPT_FOR.load(Relaxed).is_null() {
            KEPT_ON.store(false, Relaxed);
            let why = ran.err().map_or_else(String::new, err);
            return Err(format!(
                "the probe's four `with` statements used {used} kept call(s), not at least two, \
                 or left one bound or an arena open {why}"
            ));
        }
        Ok(())
    }
}
