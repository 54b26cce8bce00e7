//! Hand-written entry points for struct field access (`p.ref.x`,
//! `p.ref.x = v`) and the rest of the seed struct (`calloc(S)`,
//! `to_native_utf8(s)`), as fast.rs has for element access, for the same
//! reason: PyO3's generated slot wrappers (a trampoline registering the
//! thread, generic argument handling) cost more than the access itself
//! (BENCHMARKS.md, struct_field). Each serves the plain case — a number
//! field read or written with an exact int or float, a pointer field
//! written with a live Pointer or None, `p.ref` of a live struct pointer,
//! a view dropped whose owner drops plainly, `allocator(T[, n])` of a plain
//! allocator and a classified T, `to_native_utf8(s)` of an exact str from a
//! plain malloc — and hands every other call,
//! unchanged, to the PyO3 slot it replaced, which raises the errors.

use super::entry::{enter, replace_function, Arg, Args, Def, Obj, Outcome, Unary};
use super::freelist::{as_pointer, injected_failure};
#[cfg(not(Py_GIL_DISABLED))]
use super::view_objects::last_ref;
use super::view_objects::make_view;
use crate::core::layout::{self, Request};
use crate::py::allocator::{self, block_object, Allocator};
use crate::py::args::{request, Asked};
use crate::py::checked;
use crate::py::errors::IntoPy;
use crate::py::serialized::token;
use crate::py::struct_view::StructView;
use crate::py::structs::Field;
use crate::py::types;
use crate::py::types::{Composite, TypeInfo};
use crate::py::values::exact_small_int;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::type_object::PyTypeInfo;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

static OLD_FIELD_GET: OnceLock<ffi::descrgetfunc> = OnceLock::new();
static OLD_FIELD_SET: OnceLock<ffi::descrsetfunc> = OnceLock::new();
static OLD_REF_GET: OnceLock<ffi::getter> = OnceLock::new();
static VIEW_TYPE: OnceLock<usize> = OnceLock::new();

/// `obj` is a struct view (an object of a StructView subclass): of the
/// class declaring `field`, usually.
///
/// # Safety
/// `obj` is a live object; the GIL is held.
#[inline]
unsafe fn is_view(obj: *mut ffi::PyObject, field: &Field) -> bool {
    // SAFETY: per the function's contract.
    unsafe {
        let tp = ffi::Py_TYPE(obj);
        if tp.addr() == field.owner_type {
            return true;
        }
        let Some(&base) = VIEW_TYPE.get() else {
            return false;
        };
        ffi::PyType_IsSubtype(
            tp,
            std::ptr::with_exposed_provenance_mut::<ffi::PyTypeObject>(base),
        ) != 0
    }
}

/// `Field.__get__`: `view.x`.
unsafe extern "C" fn field_get(
    desc: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    owner: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_descr_get with the GIL and a Field as `desc`
    // (the type is final); `obj` is checked to be a view before the cast.
    unsafe {
        enter(
            |py| {
                let field = pyo3::Borrowed::from_ptr(py, desc).cast_unchecked::<Field>();
                if obj.is_null() || !is_view(obj, field.get()) {
                    return Outcome::Delegate;
                }
                let view = pyo3::Borrowed::from_ptr(py, obj).cast_unchecked::<StructView>();
                match field.get().plain_read(view.get()) {
                    Some(r) if !r.is_null() => Outcome::Done(r),
                    Some(_) => Outcome::Raise(PyErr::fetch(py)),
                    None => Outcome::Delegate,
                }
            },
            || OLD_FIELD_GET.get().expect("installed")(desc, obj, owner),
        )
    }
}

/// `Field.__set__`: `view.x = v` (value null: `del view.x`).
unsafe extern "C" fn field_set(
    desc: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
) -> c_int {
    // SAFETY: as for field_get; `value` is a live object when not null.
    unsafe {
        enter(
            |py| {
                let field = pyo3::Borrowed::from_ptr(py, desc).cast_unchecked::<Field>();
                if value.is_null() || obj.is_null() || !is_view(obj, field.get()) {
                    return Outcome::Delegate;
                }
                let view = pyo3::Borrowed::from_ptr(py, obj).cast_unchecked::<StructView>();
                let value = pyo3::Borrowed::from_ptr(py, value);
                if field.get().plain_write(view.get(), &value) {
                    Outcome::Done(0)
                } else {
                    Outcome::Delegate
                }
            },
            || OLD_FIELD_SET.get().expect("installed")(desc, obj, value),
        )
    }
}

/// `Pointer.ref` of a live pointer to an rsalloc struct.
unsafe extern "C" fn ref_get(slf: *mut ffi::PyObject, closure: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a getter with the GIL and an object of the
    // descriptor's type (Pointer).
    unsafe {
        enter(
            |py| {
                let obj = pyo3::Borrowed::from_ptr(py, slf);
                let Some(p) = as_pointer(&obj) else {
                    return Outcome::Delegate;
                };
                let p = p.get();
                if !matches!(p.ty.composite, Composite::Struct) {
                    return Outcome::Delegate;
                }
                let Ok(_held) = p.access(token(py)) else {
                    return Outcome::Delegate;
                };
                let Ok(addr) = p.elem_addr(0) else {
                    return Outcome::Delegate;
                };
                #[cfg(not(Py_GIL_DISABLED))]
                if let Some(kept) = last_ref::reuse(p, addr) {
                    if injected_failure() {
                        return Outcome::Raise(checked::no_memory());
                    }
                    ffi::Py_INCREF(kept);
                    return Outcome::Done(kept);
                }
                make_view(
                    py,
                    &p.ty.class,
                    p.view(addr, p.ty, Some(p.ty.size), token(py)),
                )
                .map(|v| {
                    let v = v.into_ptr();
                    #[cfg(not(Py_GIL_DISABLED))]
                    last_ref::keep(v);
                    v
                })
                .into()
            },
            || OLD_REF_GET.get().expect("installed")(slf, closure),
        )
    }
}

/// `_PyType_Lookup`, found at install (a private but exported CPython
/// function: looked up by name, so that a Python without it turns the
/// attribute routes off instead of failing the import).
type TypeLookup =
    unsafe extern "C" fn(*mut ffi::PyTypeObject, *mut ffi::PyObject) -> *mut ffi::PyObject;
static TYPE_LOOKUP: OnceLock<TypeLookup> = OnceLock::new();
static FIELD_TYPE: OnceLock<usize> = OnceLock::new();
/// The interned `"ref"` (kept for the process) and the `closure` of
/// Pointer's `ref` getter, which PyO3's getter reads.
static REF_NAME: OnceLock<usize> = OnceLock::new();
static REF_CLOSURE: OnceLock<usize> = OnceLock::new();

/// `Pointer.__getattribute__`: `p.ref` goes straight to its getter; every
/// other name takes the generic lookup. The generic one would find the
/// same getter (Pointer is final and its type immutable), after a type
/// lookup, a descriptor check and an instance-dict probe: as much as the
/// view it returns costs (BENCHMARKS.md, struct_field).
unsafe extern "C" fn pointer_getattro(
    obj: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_getattro with the GIL, a Pointer and a str;
    // the name is compared by identity only (the interned "ref", which code
    // objects' attribute names are; any other str takes the generic route).
    unsafe {
        if Some(&name.addr()) == REF_NAME.get() {
            let closure = REF_CLOSURE.get().copied().unwrap_or(0);
            return ref_get(obj, std::ptr::with_exposed_provenance_mut(closure));
        }
        ffi::PyObject_GenericGetAttr(obj, name)
    }
}

/// The Field that attribute `name` of view `obj` resolves to, if it
/// resolves to a Field: what the generic lookup would find first (a Field
/// is a data descriptor, so it wins over an instance dict), without the
/// rest of the generic lookup.
///
/// # Safety
/// The GIL is held; `obj` is a live object and `name` a str.
#[inline(always)]
unsafe fn field_of(
    obj: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
) -> Option<*mut ffi::PyObject> {
    // SAFETY: per the function's contract; a cached answer is used only for
    // the same live type (the object's) in the same version, in which its
    // dict still holds the Field.
    unsafe {
        let tp = ffi::Py_TYPE(obj);
        let tag = (*tp).tp_version_tag;
        let set = field_set_of(tp.addr(), name.addr());
        let ways = &(*FIELD_CACHE.0.get())[set];
        for e in ways {
            if e.tp == tp.addr() && e.name == name.addr() && e.tag == tag && tag != 0 {
                return Some(std::ptr::with_exposed_provenance_mut(e.field));
            }
        }
        field_of_slow(tp, name, set)
    }
}

/// [`field_of`] on a miss: the type lookup, then the answer kept. Out of
/// line, so that the hit stays inlined in the attribute routes: with the
/// miss inside it, LLVM called `field_of`, whose call and register saves
/// (objdump) cost about as much as the hit's compares.
///
/// # Safety
/// As for [`field_of`]; `set` is `field_set_of(tp, name)`.
#[cold]
#[inline(never)]
unsafe fn field_of_slow(
    tp: *mut ffi::PyTypeObject,
    name: *mut ffi::PyObject,
    set: usize,
) -> Option<*mut ffi::PyObject> {
    // SAFETY: per the function's contract; the lookup returns a borrowed
    // reference (or null, setting no error) from the type's MRO. It may run
    // Python code (a key's __eq__ in a type's dict) that reaches field_of
    // again: no reference into the cache is held across it.
    unsafe {
        let lookup = TYPE_LOOKUP.get()?;
        let found = lookup(tp, name);
        if found.is_null() || Some(&ffi::Py_TYPE(found).addr()) != FIELD_TYPE.get() {
            return None;
        }
        // The lookup gave the type a version tag if it had none. The entry
        // holds a reference to the name, so that no other str can appear at
        // its address while the entry stands (a name built at run time
        // dies and its memory is reused); the Field lives as long as the
        // type version does (the dict that holds it changes the version).
        // Only exact str names: releasing one runs no Python code.
        let tag = (*tp).tp_version_tag;
        if tag != 0 && ffi::PyUnicode_CheckExact(name) != 0 {
            ffi::Py_INCREF(name);
            // The newest entry goes first and the oldest of the set drops out.
            let ways = &mut (*FIELD_CACHE.0.get())[set];
            let old = ways[FIELD_WAYS - 1];
            ways.copy_within(0..FIELD_WAYS - 1, 1);
            ways[0] = FieldEntry {
                tp: tp.addr(),
                tag,
                name: name.expose_provenance(),
                field: found.expose_provenance(),
            };
            if old.name != 0 {
                ffi::Py_DECREF(std::ptr::with_exposed_provenance_mut(old.name));
            }
        }
        Some(found)
    }
}

/// The set of the field cache that (view class, name) addresses map to.
/// Mixed by a multiplication, not taken from a few low bits: names that
/// pymalloc places a multiple of 256 bytes apart (often those of one class
/// body) shared a set in a direct-mapped cache keyed by bits 4-7, and two
/// fields of the seed struct evicted each other at every access in every
/// process of one script tried (docs/decisions.md, "The field cache").
#[inline(always)]
fn field_set_of(tp: usize, name: usize) -> usize {
    let h = (name ^ tp.rotate_left(32)) as u64;
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FIELD_SET_BITS)) as usize
}

/// Which Field a (view class, attribute name) pair resolved to, in which
/// version of the class (the name held by the entry): CPython gives a
/// type a new version tag, never seen before, whenever it or a base changes, so an entry whose tag is
/// the class's current one still holds. The type's own method cache is
/// the same idea (keyed by the version tag and the name's address); this
/// one also skips the call into it and the check that the answer is a
/// Field, for the few names a program's struct accesses use.
#[derive(Clone, Copy)]
struct FieldEntry {
    tp: usize,
    tag: std::ffi::c_uint,
    name: usize,
    field: usize,
}

const FIELD_SET_BITS: u32 = 4;
/// Entries per set: up to this many pairs that map to one set all stay
/// (the seed struct's three fields, whatever their addresses).
const FIELD_WAYS: usize = 4;
const _: () = assert!(FIELD_WAYS >= 3);
const EMPTY_FIELD: FieldEntry = FieldEntry {
    tp: 0,
    tag: 0,
    name: 0,
    field: 0,
};

struct FieldCache(std::cell::UnsafeCell<[[FieldEntry; FIELD_WAYS]; 1 << FIELD_SET_BITS]>);
// SAFETY: only accessed with the GIL held (the attribute routes are
// compiled for GIL builds only, like every entry point of this module).
unsafe impl Sync for FieldCache {}
static FIELD_CACHE: FieldCache = FieldCache(std::cell::UnsafeCell::new(
    [[EMPTY_FIELD; FIELD_WAYS]; 1 << FIELD_SET_BITS],
));

/// A struct view class's `__getattribute__`: a field goes straight to its
/// descriptor's entry point, anything else to the generic lookup.
unsafe extern "C" fn view_getattro(
    obj: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_getattro with the GIL, an object of the
    // class and a str (tp_getattro is reached through PyObject_GetAttr,
    // which checked the name's type).
    unsafe {
        match field_of(obj, name) {
            // The descriptor is borrowed from the type's dict, which the
            // read cannot change (no Python code runs on the plain route;
            // the fallback is the descriptor's own __get__, as generic).
            Some(field) => {
                ffi::Py_INCREF(field);
                let r = field_get(field, obj, ffi::Py_TYPE(obj).cast());
                ffi::Py_DECREF(field);
                r
            }
            None => ffi::PyObject_GenericGetAttr(obj, name),
        }
    }
}

/// A struct view class's `__setattr__`/`__delattr__`, as `view_getattro`.
unsafe extern "C" fn view_setattro(
    obj: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
) -> c_int {
    // SAFETY: as for view_getattro; `value` is null (delete) or live.
    unsafe {
        match field_of(obj, name) {
            Some(field) => {
                ffi::Py_INCREF(field);
                let r = field_set(field, obj, value);
                ffi::Py_DECREF(field);
                r
            }
            None => ffi::PyObject_GenericSetAttr(obj, name, value),
        }
    }
}

/// `f` is CPython's generic attribute lookup (a function of libpython's,
/// whose address is the one its types' slots hold).
fn is_generic_getattr(f: ffi::getattrofunc) -> bool {
    std::ptr::fn_addr_eq(f, ffi::PyObject_GenericGetAttr as ffi::getattrofunc)
}

/// Gives struct view class `class` the attribute routes, if they are on
/// and the class keeps the generic ones (no `__getattr__`,
/// `__getattribute__`, `__setattr__` or `__delattr__` of its own). Called
/// when the class is first classified, before any view of it exists; a
/// later change to the class that sets one of those slots replaces ours,
/// as CPython's slot updates do.
pub(crate) fn attribute_routes(class: &Bound<'_, pyo3::types::PyType>) {
    if TYPE_LOOKUP.get().is_none() {
        return;
    }
    let tp = class.as_type_ptr();
    // SAFETY: a ready heap type deriving from StructView; the slots are
    // plain fields, compared and replaced under the GIL.
    unsafe {
        let generic_get = (*tp).tp_getattro.is_some_and(is_generic_getattr);
        let generic_set = (*tp).tp_setattro.is_some_and(|f| {
            std::ptr::fn_addr_eq(f, ffi::PyObject_GenericSetAttr as ffi::setattrofunc)
        });
        if generic_get && generic_set {
            (*tp).tp_getattro = Some(view_getattro);
            (*tp).tp_setattro = Some(view_setattro);
        }
    }
}

/// Turns the attribute routes on: `p.ref` through `pointer_getattro` and
/// the fields of struct views through `view_getattro`/`view_setattro`
/// (each class as it is classified). After `install`, whose entry points
/// they call.
pub fn install_attribute_routes(m: &Bound<'_, PyModule>) -> Result<(), String> {
    let py = m.py();
    if cfg!(Py_GIL_DISABLED) {
        return Err("free-threaded build: no GIL guards the field cache".into());
    }
    if OLD_FIELD_GET.get().is_none() || OLD_REF_GET.get().is_none() {
        return Err("the struct entry points are off".into());
    }
    // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT searches the
    // process, where libpython's symbols are (the extension links them).
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_PyType_Lookup".as_ptr()) };
    if sym.is_null() {
        return Err("this Python exports no _PyType_Lookup".into());
    }
    let pointer = crate::py::pointer::Pointer::type_object(py).as_type_ptr();
    // SAFETY: `sym` is CPython's `PyObject *_PyType_Lookup(PyTypeObject *,
    // PyObject *)` (3.11 to 3.14 keep that signature); the name is interned
    // and kept for the process (never released); Pointer's slot is a plain
    // field of a ready heap type rsalloc owns, replaced before any `p.ref`
    // of the module's users runs.
    unsafe {
        let lookup = std::mem::transmute::<*mut c_void, TypeLookup>(sym);
        let name = ffi::PyUnicode_InternFromString(c"ref".as_ptr());
        if name.is_null() {
            return Err(PyErr::fetch(py).to_string());
        }
        if !(*pointer).tp_getattro.is_some_and(is_generic_getattr) {
            ffi::Py_DECREF(name);
            return Err("Pointer has an attribute lookup of its own".into());
        }
        let _ = REF_NAME.set(name.expose_provenance());
        let closure = REF_DEF.get().map_or(0, |d| d.0.closure.expose_provenance());
        let _ = REF_CLOSURE.set(closure);
        let _ = FIELD_TYPE.set(Field::type_object(py).as_type_ptr().expose_provenance());
        let _ = TYPE_LOOKUP.set(lookup);
        (*pointer).tp_getattro = Some(pointer_getattro);
        ffi::PyType_Modified(pointer);
    }
    Ok(())
}

static OLD_ALLOCATOR_CALL: OnceLock<ffi::ternaryfunc> = OnceLock::new();
static TO_NATIVE_UTF8: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `allocator(T)` and `allocator(T, n)` of a plain allocator, T a type
/// already classified and n an exact int (the seed struct's `calloc(S)`);
/// None for any other call, which the replaced slot serves.
///
/// # Safety
/// The GIL is held; `slf` is an Allocator (or a subclass's object).
#[inline]
unsafe fn plain_allocator_call(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    t: *mut ffi::PyObject,
    n: Option<*mut ffi::PyObject>,
) -> Outcome<*mut ffi::PyObject> {
    // SAFETY: per the function's contract; the arguments are borrowed
    // from the caller's tuple or array for the call.
    unsafe {
        let this = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<Allocator>();
        let this = this.get();
        if !this.core.plain() {
            return Outcome::Delegate;
        }
        let count = match n {
            Some(n) => match exact_small_int(&pyo3::Borrowed::from_ptr(py, n)) {
                Some(c) => c,
                None => return Outcome::Delegate,
            },
            None => 1,
        };
        let Some(ty) = types::lookup_cached(&pyo3::Borrowed::from_ptr(py, t)) else {
            return Outcome::Delegate; // first use: classifying runs Python code
        };
        plain_request(py, &this.core.name, ty, count)
            .and_then(|req| this.new_pointer(py, ty, req))
            .and_then(|p| Ok(block_object(py, p)?.into_ptr()))
            .into()
    }
}

/// [`request`] without an alignment, for a count that fits in i64 (the
/// plain `allocator(T)` / `allocator(T, n)`): the same answers and errors,
/// in 64-bit arithmetic (`layout::elements`).
fn plain_request(
    py: Python<'_>,
    who: &dyn std::fmt::Display,
    ty: &'static TypeInfo,
    count: i64,
) -> PyResult<Request> {
    if !ty.has_size() {
        return request(py, who, ty, count.into(), None); // raises
    }
    layout::elements(count, ty.size, ty.align).py(py, &Asked(who, ty, &count))
}

/// Allocator's `tp_call`.
unsafe extern "C" fn allocator_call(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_call with the GIL, an Allocator (or a
    // subclass's object) as `slf`, a tuple of arguments and a dict or null.
    unsafe {
        enter(
            |py| {
                let n = ffi::PyTuple_GET_SIZE(args);
                if !(kwargs.is_null() || ffi::PyDict_Size(kwargs) == 0) || !(1..=2).contains(&n) {
                    return Outcome::Delegate;
                }
                let count = (n == 2).then(|| ffi::PyTuple_GET_ITEM(args, 1));
                plain_allocator_call(py, slf, ffi::PyTuple_GET_ITEM(args, 0), count)
            },
            || OLD_ALLOCATOR_CALL.get().expect("installed")(slf, args, kwargs),
        )
    }
}

/// An Allocator object's vectorcall entry: the plain call as
/// `allocator_call` serves it, without the argument tuple CPython makes for
/// `tp_call`; any other call goes to the object's type's `tp_call` with
/// the tuple and dict it would have had.
pub(crate) unsafe extern "C" fn allocator_vectorcall(
    callable: *mut ffi::PyObject,
    args: Args,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a vectorcall entry with the GIL, the callable
    // (an Allocator, or a subclass's object that inherited the entry),
    // `nargs` positional arguments then one per name in `kwnames`.
    unsafe {
        let nargs = ffi::PyVectorcall_NARGS(nargsf);
        enter(
            |py| {
                if !(kwnames.is_null() || ffi::PyTuple_GET_SIZE(kwnames) == 0)
                    || !(1..=2).contains(&nargs)
                {
                    return Outcome::Delegate;
                }
                let count = (nargs == 2).then(|| *args.add(1));
                plain_allocator_call(py, callable, *args, count)
            },
            || super::call_through_tp_call(callable, args, nargs, kwnames),
        )
    }
}

/// `to_native_utf8(s)` of an exact str, from a plain malloc.
struct ToNativeUtf8;

impl Unary for ToNativeUtf8 {
    const SLOW: (&'static PyOnceLock<Py<PyAny>>, usize) = (&TO_NATIVE_UTF8, 3);
    unsafe fn route(py: Python<'_>, _module: Obj, s: Arg<'_, '_>) -> Outcome<Obj> {
        // SAFETY: per `enter`; the UTF-8 bytes CPython caches in the str stay
        // valid while the str (borrowed from the arguments) lives.
        unsafe {
            if ffi::PyUnicode_CheckExact(s.as_ptr()) == 0 {
                return Outcome::Delegate;
            }
            let mut len: ffi::Py_ssize_t = 0;
            let data = ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut len);
            if data.is_null() {
                ffi::PyErr_Clear(); // not encodable: the PyO3 function says why
                return Outcome::Delegate;
            }
            // CPython ends the UTF-8 it caches with a NUL (documented for
            // PyUnicode_AsUTF8AndSize), so the text holds none exactly when
            // strlen stops at its end: glibc's strlen costs a third of
            // `contains(&0)` on a short string (callgrind).
            if libc::strlen(data) != len as usize {
                return Outcome::Delegate;
            }
            let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
            let malloc = match allocator::malloc(py) {
                Ok(m) => m,
                Err(e) => return Outcome::Raise(e), // dropping it here would need PyO3 to know the thread
            };
            let malloc = malloc.get();
            if !malloc.core.plain() {
                return Outcome::Delegate;
            }
            let req = Request {
                size: bytes.len() + 1,
                align: 1,
            };
            // No combinators and no closure: the Pointer's words go from the
            // registers they were made in to the object (Pointer::write_to).
            // Moved as a Result between closures, they were read back by
            // 16-byte pairs just after being stored by words, a stalled
            // store forward on a third of this entry's samples (perf).
            let ty = match types::uint8(py) {
                Ok(ty) => ty,
                Err(e) => return Outcome::Raise(e),
            };
            let p = match malloc.new_pointer(py, ty, req) {
                Ok(p) => p,
                Err(e) => return Outcome::Raise(e),
            };
            // A fresh, live block of len + 1 bytes.
            let dst = std::ptr::with_exposed_provenance_mut::<u8>(p.addr);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
            *dst.add(bytes.len()) = 0;
            block_object(py, p).map(Bound::into_ptr).into()
        }
    }
}

/// The definition of the replaced `ref` getter.
static REF_DEF: OnceLock<Def<ffi::PyGetSetDef>> = OnceLock::new();

/// Points the Field type's descriptor slots and
/// Pointer's `ref` getter at the entry points above. Called once at module
/// init, before any of them is used.
pub fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    if !super::view_objects::available() {
        // `p.ref` would make views through PyO3's constructor, general
        // code that the plain case must not run unregistered.
        return Err(checked::error::<pyo3::exceptions::PyRuntimeError>(
            "struct views are off",
        ));
    }
    replace_function::<ToNativeUtf8>(m, "to_native_utf8")?;
    let alloc_tp = Allocator::type_object(py).as_type_ptr();
    // SAFETY: a heap type rsalloc owns, ready, before any subclass exists
    // (a Python allocator class made later inherits this slot).
    unsafe {
        let Some(call) = (*alloc_tp).tp_call else {
            return Err(checked::error::<pyo3::exceptions::PyRuntimeError>(
                "Allocator has no tp_call",
            ));
        };
        let _ = OLD_ALLOCATOR_CALL.set(call);
        (*alloc_tp).tp_call = Some(allocator_call);
    }
    // Every Allocator object carries the vectorcall entry (Allocator::of);
    // CPython reads it once the type says where. Checked on malloc's
    // object: the entry at the measured offset is this module's.
    let malloc = allocator::malloc(py)?;
    if let Some(off) = Allocator::vectorcall_offset(&malloc) {
        // SAFETY: the offset lies inside every Allocator object (a field of
        // the value, which sits at one offset in all of them); the type's
        // slots are plain fields of a ready heap type rsalloc owns.
        unsafe {
            let at = malloc
                .as_ptr()
                .cast::<u8>()
                .add(off)
                .cast::<Option<ffi::vectorcallfunc>>();
            if (*at).is_some_and(|f| {
                std::ptr::fn_addr_eq(f, allocator_vectorcall as ffi::vectorcallfunc)
            }) {
                (*alloc_tp).tp_vectorcall_offset = off as ffi::Py_ssize_t;
                (*alloc_tp).tp_flags |= ffi::Py_TPFLAGS_HAVE_VECTORCALL;
            }
        }
    }
    let field = Field::type_object(py).as_type_ptr();
    let view = StructView::type_object(py).as_type_ptr();
    let _ = VIEW_TYPE.set(view.expose_provenance());
    // SAFETY: heap types rsalloc owns, ready and not yet used; the slots
    // are plain fields PyO3 filled for __get__/__set__/__delete__ and the
    // dealloc. The new `ref` descriptor is stored in the type's dict, as
    // PyType_Ready would, from a definition kept for the process.
    unsafe {
        let (Some(get), Some(set)) = ((*field).tp_descr_get, (*field).tp_descr_set) else {
            return Err(checked::error::<pyo3::exceptions::PyRuntimeError>(
                "Field lacks its descriptor slots",
            ));
        };
        let _ = OLD_FIELD_GET.set(get);
        let _ = OLD_FIELD_SET.set(set);
        (*field).tp_descr_get = Some(field_get);
        (*field).tp_descr_set = Some(field_set);

        let pointer = crate::py::pointer::Pointer::type_object(py);
        let old = super::own_descriptor(
            &pointer,
            "ref",
            std::ptr::addr_of_mut!(ffi::PyGetSetDescr_Type),
        )?;
        let old_def = *(*old.as_ptr().cast::<ffi::PyGetSetDescrObject>()).d_getset;
        let Some(old_get) = old_def.get else {
            return Err(checked::error::<pyo3::exceptions::PyRuntimeError>(
                "Pointer.ref has no getter",
            ));
        };
        let _ = OLD_REF_GET.set(old_get);
        let def = Def::kept(&REF_DEF, || {
            let mut def = old_def;
            def.get = Some(ref_get);
            def
        });
        super::set_descriptor(
            &pointer,
            "ref",
            ffi::PyDescr_NewGetSet(pointer.as_type_ptr(), def),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{field_set_of, FIELD_SET_BITS, FIELD_WAYS};

    #[test]
    fn names_a_multiple_of_256_bytes_apart_spread_over_the_sets() {
        // Names placed 256 bytes apart (one pymalloc pool's blocks of one
        // size, as a class body's names often are) shared one set when the
        // index was bits 4-7 of the address.
        let tp = 0x7f12_3456_7800_usize;
        for base in [0x7f00_0000_1000_usize, 0x5555_5555_a010, 0x7fff_f7a3_c0b0] {
            for step in [256_usize, 512, 4096] {
                let mut per_set = [0_usize; 1 << FIELD_SET_BITS];
                for k in 0..16 {
                    per_set[field_set_of(tp, base + k * step)] += 1;
                }
                let worst = per_set.iter().max().copied().unwrap_or(0);
                assert!(worst <= FIELD_WAYS, "{per_set:?} for step {step}");
            }
        }
    }
}
