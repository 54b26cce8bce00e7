//! Element types: each Python class that can be an element type (rsalloc's
//! own, `Pointer[T]`, ctypes scalars, structures, unions and arrays) maps to
//! one leaked, immutable [`TypeInfo`]. rsalloc's scalars are found by pointer
//! identity in a small table; everything else through a cache filled once
//! per class.

use crate::core::serial::SerialMutex;
use crate::core::types::Kind;
use crate::py::checked;
use crate::py::checked::Int;
use crate::py::serialized::token;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{
    AtomicPtr,
    Ordering::{Acquire, Release},
};
use std::sync::Mutex;

/// How type lookup asks about Struct, Union and Array classes. `structs`
/// builds those TypeInfos on top of this module, so it plugs in here at
/// module init (`install_composites`) instead of this module calling up.
pub(crate) struct CompositeClasses {
    /// The TypeInfo of a Struct/Union (fields installed) or `Array[T, n]`
    /// class; None for any other class.
    pub classify: fn(&Bound<'_, PyType>) -> PyResult<Option<&'static TypeInfo>>,
    /// Whether `t` is a Struct or Union class.
    pub is_struct_class: fn(&Bound<'_, PyAny>) -> PyResult<bool>,
}

static COMPOSITES: std::sync::OnceLock<CompositeClasses> = std::sync::OnceLock::new();

/// Before `install_composites` no class is a composite (none can exist yet:
/// the Struct base class is made by the same module init).
const NO_COMPOSITES: CompositeClasses = CompositeClasses {
    classify: |_| Ok(None),
    is_struct_class: |_| Ok(false),
};

fn composites() -> &'static CompositeClasses {
    COMPOSITES.get().unwrap_or(&NO_COMPOSITES)
}

/// Called once by `structs::install`.
pub(crate) fn install_composites(c: CompositeClasses) {
    let _ = COMPOSITES.set(c);
}

pub struct TypeInfo {
    pub kind: Kind,
    pub size: usize,
    pub align: usize,
    pub format: &'static CStr,
    /// The class itself, as `p.type` returns it.
    pub class: Py<PyAny>,
    /// The pointee of a `Pointer[T]` slot (`Void` for `c_void_p`).
    pub target: Option<&'static TypeInfo>,
    pub name: String,
    /// A ctypes class: `p.ref` and aggregate elements build instances of it.
    pub ctypes: bool,
    /// An rsalloc `Struct`/`Union` or `Array[T, n]`: elements are views.
    pub composite: Composite,
    /// The ctypes class a Pointer to this type passes to foreign functions
    /// as (`_as_parameter_`), found on first use.
    pub param: PyOnceLock<Py<PyAny>>,
}

/// What an element of an rsalloc composite type reads as.
#[derive(Clone, Copy)]
pub enum Composite {
    /// Not a composite: a scalar, a slot, or a ctypes type.
    No,
    /// `rsalloc.Struct` or `rsalloc.Union`: a view of class `TypeInfo::class`.
    Struct,
    /// `rsalloc.Array[T, n]`: a counted `Pointer[T]` view.
    Array { elem: &'static TypeInfo, len: usize },
}

impl TypeInfo {
    /// Elements can be read and written one by one (not Void).
    pub fn has_size(&self) -> bool {
        self.kind != Kind::Void
    }
}

struct Registry {
    /// rsalloc's own scalar classes, matched by identity on the hot path.
    scalars: Vec<(usize, &'static TypeInfo)>,
    /// Not locked by a caller holding the GIL (`SerialMutex`): two locked
    /// instructions on every `calloc(S)` otherwise. Its values are
    /// `'static`: nothing drops (no Python code runs) while it is held.
    cache: SerialMutex<HashMap<usize, &'static TypeInfo, BuildHasherDefault<AddressHasher>>>,
    /// Types whose layout a class (the second part) may still change by
    /// getting `_fields_` of its own; looked up after the cache.
    provisional: Mutex<HashMap<usize, (&'static TypeInfo, Py<PyAny>)>>,
    uint8: &'static TypeInfo,
    uint16: &'static TypeInfo,
    void: &'static TypeInfo,
}

/// Hashes a class's address: keys are distinct live objects, so no
/// flooding to resist, and SipHash was half the cost of `calloc(S)`
/// (BENCHMARKS.md, seed_struct).
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        // Objects are 16-byte aligned: the low bits carry nothing.
        self.0 = ((n as u64) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

static REGISTRY: PyOnceLock<Registry> = PyOnceLock::new();

pub(crate) fn leak(info: TypeInfo) -> &'static TypeInfo {
    Box::leak(Box::new(info))
}

fn kind_named(name: &str) -> Option<Kind> {
    use Kind::*;
    Some(match name {
        "I8" => I8,
        "I16" => I16,
        "I32" => I32,
        "I64" => I64,
        "U8" => U8,
        "U16" => U16,
        "U32" => U32,
        "U64" => U64,
        "F32" => F32,
        "F64" => F64,
        "Bool" => Bool,
        "IntPtr" => IntPtr,
        "Size" => Size,
        "Ptr" => Ptr,
        "Void" => Void,
        _ => return None,
    })
}

fn scalar(class: &Bound<'_, PyAny>, kind: Kind, ctypes: bool) -> PyResult<&'static TypeInfo> {
    let size = kind.size();
    Ok(leak(TypeInfo {
        kind,
        size,
        align: size.max(1),
        format: kind.format(),
        class: class.clone().unbind(),
        target: None,
        name: class.getattr(checked::name!("__name__"))?.extract()?,
        ctypes,
        composite: Composite::No,
        param: PyOnceLock::new(),
    }))
}

fn registry(py: Python<'_>) -> PyResult<&Registry> {
    REGISTRY.get_or_try_init(py, || {
        let module = py.import(checked::name!("rsalloc._types"))?;
        let mut scalars = Vec::new();
        for class in module.getattr(checked::name!("SCALARS"))?.try_iter()? {
            let class = class?;
            let kind: String = class.getattr(checked::name!("_kind_"))?.extract()?;
            let kind = kind_named(&kind).expect("_types.py names known kinds");
            scalars.push((class.as_ptr().addr(), scalar(&class, kind, false)?));
        }
        let find = |k: Kind| scalars.iter().find(|(_, t)| t.kind == k).unwrap().1;
        let (uint8, uint16, void) = (find(Kind::U8), find(Kind::U16), find(Kind::Void));
        Ok(Registry {
            scalars,
            cache: SerialMutex::new(HashMap::default()),
            provisional: Mutex::new(HashMap::new()),
            uint8,
            uint16,
            void,
        })
    })
}

pub fn uint8(py: Python<'_>) -> PyResult<&'static TypeInfo> {
    Ok(registry(py)?.uint8)
}
pub fn uint16(py: Python<'_>) -> PyResult<&'static TypeInfo> {
    Ok(registry(py)?.uint16)
}
pub fn void(py: Python<'_>) -> PyResult<&'static TypeInfo> {
    Ok(registry(py)?.void)
}

/// TypeInfos looked up lately, each in the entry its class's address names
/// (direct-mapped): one load and a compare instead of the scan of the
/// scalars and the cache's hash lookup (~40 instructions of every
/// `calloc(S)`, callgrind). Only final entries (a scalar's, the cache's)
/// come here, and they live for the process, as their classes do (a
/// TypeInfo holds its class): an entry is right exactly when its class is
/// the one asked about.
static RECENT: [AtomicPtr<TypeInfo>; RECENT_TYPES] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; RECENT_TYPES];
const RECENT_TYPES: usize = 64;

#[inline]
fn recent_slot(key: usize) -> &'static AtomicPtr<TypeInfo> {
    // Objects are 16-byte aligned: the low bits carry nothing.
    &RECENT[(key >> 4) & (RECENT_TYPES - 1)]
}

/// The final TypeInfo of class address `key`, if looked up lately.
#[inline]
fn recent(key: usize) -> Option<&'static TypeInfo> {
    let p = recent_slot(key).load(Acquire);
    // SAFETY: entries are leaked TypeInfos (`leak`) or null.
    let info = unsafe { p.as_ref() }?;
    (info.class.as_ptr().addr() == key).then_some(info)
}

/// Notes a final TypeInfo looked up (see [`RECENT`]).
#[inline]
fn note_recent(info: &'static TypeInfo) -> &'static TypeInfo {
    recent_slot(info.class.as_ptr().addr()).store(std::ptr::from_ref(info).cast_mut(), Release);
    info
}

/// The TypeInfo of a class already classified (no Python code runs), or None.
#[inline]
#[cfg_attr(
    not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
    allow(dead_code)
)]
pub(crate) fn lookup_cached(t: &Bound<'_, PyAny>) -> Option<&'static TypeInfo> {
    let key = t.as_ptr().addr();
    recent(key).or_else(|| final_info(REGISTRY.get(t.py())?, t))
}

/// The final TypeInfo of class `t` from the registry (a scalar's, the
/// cache's), noted as recent; None when `t` is not classified for good.
#[inline]
fn final_info(reg: &Registry, t: &Bound<'_, PyAny>) -> Option<&'static TypeInfo> {
    let key = t.as_ptr().addr();
    let found = match reg.scalars.iter().find(|(k, _)| *k == key) {
        Some((_, info)) => Some(*info),
        None => reg.cache.lock(token(t.py())).get(&key).copied(),
    };
    found.map(note_recent)
}

/// The TypeInfo of an element type, or TypeError.
#[inline]
pub fn lookup(t: &Bound<'_, PyAny>) -> PyResult<&'static TypeInfo> {
    if let Some(info) = recent(t.as_ptr().addr()) {
        return Ok(info);
    }
    let reg = registry(t.py())?;
    match final_info(reg, t) {
        Some(info) => Ok(info),
        None => resolve(reg, t),
    }
}

/// Pointer chains longer than this are refused (a legal C declaration
/// never nests pointers this deep; the walk is iterative, so the limit is
/// about bookkeeping, not the stack).
const MAX_CHAIN: usize = 100_000;

/// One pointer type of a chain being resolved, outermost first.
struct Link<'py> {
    class: Bound<'py, PyType>,
    ctypes: bool,
    /// Its pointee, when it is a type still to resolve.
    target: Option<Bound<'py, PyAny>>,
}

/// What one type is, without resolving its pointee.
enum Step<'py> {
    /// A type that points at nothing: scalar, aggregate, or a pointer with a fixed pointee.
    Leaf(&'static TypeInfo),
    Pointer(Link<'py>),
    /// A ctypes Structure or Union whose `_fields_` are not set yet.
    Incomplete,
    /// A Structure or Union whose layout may still change: it inherits its
    /// fields and may yet get `_fields_` of its own.
    Provisional(&'static TypeInfo),
}

/// Classifies `t` and every pointee of a pointer chain starting at it,
/// innermost first, by walking the chain in a loop: a chain thousands of
/// pointers deep (legal) and a cycle (`P._type_ = P`) must not recurse
/// into a stack overflow. A cycle is a TypeError.
///
/// A type whose layout is not final (an incomplete Structure, or a
/// pointer to one) is kept apart from the cache until it is: caching it
/// would keep the size 0 it has before its `_fields_` are set.
#[cold]
fn resolve(reg: &Registry, t: &Bound<'_, PyAny>) -> PyResult<&'static TypeInfo> {
    let py = t.py();
    let mut chain: Vec<Link<'_>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut cur = t.clone();
    // (innermost info, the class whose completion would change it)
    let (mut info, pending) = loop {
        let key = cur.as_ptr().addr();
        if let Some(found) = known(reg, &cur)? {
            break found;
        }
        // The pointee of a ctypes pointer rsalloc cannot describe
        // (py_object, ...) is seen as Void; a Pointer[T]'s must be a type.
        let lenient = chain.last().is_some_and(|l| l.ctypes);
        if !seen.insert(key) {
            return Err(checked::error::<PyTypeError>(format!(
                "{} is a cyclic pointer type: following its pointees ({} pointer types) leads back to one of them",
                type_name(t),
                chain.len()
            )));
        }
        if chain.len() >= MAX_CHAIN {
            return Err(checked::error::<PyTypeError>(format!(
                "{} nests more than {MAX_CHAIN} pointer types",
                type_name(t)
            )));
        }
        match step(&cur) {
            Ok(Step::Leaf(i)) => break (i, None),
            Ok(Step::Provisional(i)) => break (i, Some(cur.clone().unbind())),
            Ok(Step::Incomplete) if !chain.is_empty() => {
                break (void(py)?, Some(cur.clone().unbind()))
            }
            Ok(Step::Incomplete) => return Err(incomplete(&cur)),
            Ok(Step::Pointer(link)) => {
                let next = link.target.clone();
                chain.push(link);
                match next {
                    Some(n) => cur = n,
                    None => break (chain_end(py, chain.last())?, None),
                }
            }
            Err(_) if lenient => break (void(py)?, None),
            Err(e) => return Err(e),
        }
    };
    if chain.is_empty() {
        return Ok(remember_in(reg, &cur, info, pending.as_ref()));
    }
    for link in chain.into_iter().rev() {
        let declared = link.target.as_ref().filter(|_| pending.is_some());
        info = pointer_info(&link.class, info, link.ctypes, declared)?;
        info = remember_in(reg, link.class.as_any(), info, pending.as_ref());
    }
    Ok(info)
}

/// The pointee of a pointer type with no `_type_` to follow.
fn chain_end(py: Python<'_>, link: Option<&Link<'_>>) -> PyResult<&'static TypeInfo> {
    let code: Option<String> = link
        .and_then(|l| l.class.getattr(checked::name!("_type_")).ok())
        .and_then(|c| c.extract().ok());
    match code.as_deref() {
        Some("z") => Ok(registry(py)?.scalars[0].1), // char* -> Int8
        _ => void(py),
    }
}

fn type_name(t: &Bound<'_, PyAny>) -> String {
    t.getattr(checked::name!("__name__"))
        .and_then(|n| n.extract::<String>())
        .or_else(|_| t.repr().map(|r| r.to_string()))
        .unwrap_or_default()
}

fn incomplete(t: &Bound<'_, PyAny>) -> PyErr {
    checked::error::<PyTypeError>(format!(
        "{} is an incomplete ctypes type: its _fields_ are not set yet (set them before \
         allocating it; `_fields_ = []` declares an empty struct); a pointer to it is fine",
        type_name(t)
    ))
}

/// A type classified before: from the cache, or a provisional entry that
/// is still right (its pending class has no `_fields_` of its own yet).
/// A classified type, and the class its provisional entry waits on.
type Known = Option<(&'static TypeInfo, Option<Py<PyAny>>)>;

fn known(reg: &Registry, t: &Bound<'_, PyAny>) -> PyResult<Known> {
    let key = t.as_ptr().addr();
    if let Some((_, info)) = reg.scalars.iter().find(|(k, _)| *k == key) {
        return Ok(Some((info, None)));
    }
    if let Some(info) = reg.cache.lock(token(t.py())).get(&key) {
        return Ok(Some((info, None)));
    }
    let entry = reg
        .provisional
        .lock()
        .unwrap()
        .get(&key)
        .map(|(info, dep)| (*info, dep.clone_ref(t.py())));
    let Some((info, dep)) = entry else {
        return Ok(None);
    };
    if has_own_fields(dep.bind(t.py()))? {
        // Completed since: classified again, for good this time.
        reg.provisional.lock().unwrap().remove(&key);
        return Ok(None);
    }
    Ok(Some((info, Some(dep))))
}

fn has_own_fields(class: &Bound<'_, PyAny>) -> PyResult<bool> {
    class
        .getattr(checked::name!("__dict__"))?
        .contains("_fields_")
}

/// Caches `info` for `t`, or keeps it apart while `pending` may still
/// change it. Two threads may classify the same class; the first entry
/// wins, and is returned.
fn remember_in(
    reg: &Registry,
    t: &Bound<'_, PyAny>,
    info: &'static TypeInfo,
    pending: Option<&Py<PyAny>>,
) -> &'static TypeInfo {
    let key = t.as_ptr().addr();
    match pending {
        None => reg.cache.lock(token(t.py())).entry(key).or_insert(info),
        Some(dep) => {
            let mut map = reg.provisional.lock().unwrap();
            map.entry(key).or_insert((info, dep.clone_ref(t.py()))).0
        }
    }
}

/// Enters the TypeInfo of class `t` in the cache for good (a struct does so
/// before looking up its pointer fields, which may name it). Two threads
/// may classify the same class; the first entry wins, and is returned.
pub(crate) fn remember(
    t: &Bound<'_, PyAny>,
    info: &'static TypeInfo,
) -> PyResult<&'static TypeInfo> {
    Ok(remember_in(registry(t.py())?, t, info, None))
}

static CTYPES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub fn ctypes(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    checked::imported(
        &CTYPES,
        py,
        checked::name!("rsalloc._ctypes_support"),
        checked::name!("ctypes"),
    )
}

fn not_a_type(t: &Bound<'_, PyAny>) -> PyErr {
    checked::error::<PyTypeError>(format!(
        "{} is not an element type: use an rsalloc type (Int32, Pointer[T], ...) or a ctypes type",
        t.repr().map(|r| r.to_string()).unwrap_or_default()
    ))
}

/// ctypes `_type_` codes of simple types.
fn ctypes_code(code: &str) -> Option<Kind> {
    use Kind::*;
    let long = if std::mem::size_of::<libc::c_long>() == 8 {
        (I64, U64)
    } else {
        (I32, U32)
    };
    Some(match code {
        "b" | "c" => I8,
        "B" => U8,
        "h" => I16,
        "H" => U16,
        "i" => I32,
        "I" => U32,
        "l" => long.0,
        "L" => long.1,
        "q" => I64,
        "Q" => U64,
        "f" => F32,
        "d" => F64,
        "?" => Bool,
        "P" | "z" | "Z" => Ptr,
        "u" => {
            if std::mem::size_of::<libc::wchar_t>() == 4 {
                U32
            } else {
                U16
            }
        }
        _ => return None,
    })
}

/// What `t` is, its pointee (if any) left unresolved.
fn step<'py>(t: &Bound<'py, PyAny>) -> PyResult<Step<'py>> {
    let py = t.py();
    let Ok(class) = t.cast::<PyType>() else {
        return Err(not_a_type(t));
    };
    let support = py.import(checked::name!("rsalloc._ctypes_support"))?;
    let types = py.import(checked::name!("rsalloc._types"))?;
    if class.is_subclass(&types.getattr(checked::name!("PointerSlot"))?)? {
        return Ok(Step::Pointer(Link {
            class: class.clone(),
            ctypes: false,
            target: Some(class.getattr(checked::name!("_target_"))?),
        }));
    }
    if let Some(info) = (composites().classify)(class)? {
        return Ok(Step::Leaf(info));
    }
    // A ctypes type: describe() returns (kind, size, align, format, target, final).
    let desc = support.call_method1(checked::name!("describe"), (class,))?;
    if desc.is_none() {
        return Err(not_a_type(t));
    }
    let (code, size, align, format, target, complete): (
        String,
        usize,
        usize,
        String,
        Option<Bound<'_, PyAny>>,
        bool,
    ) = desc.extract()?;
    let name: String = class.getattr(checked::name!("__name__"))?.extract()?;
    if code == "incomplete" {
        return Ok(Step::Incomplete);
    }
    if code == "aggregate" {
        let info = leak(TypeInfo {
            kind: Kind::Opaque,
            size,
            align: align.max(1),
            format: Box::leak(CString::new(format).unwrap_or_default().into_boxed_c_str()),
            class: class.clone().into_any().unbind(),
            target: None,
            name,
            ctypes: true,
            composite: Composite::No,
            param: PyOnceLock::new(),
        });
        return Ok(if complete {
            Step::Leaf(info)
        } else {
            Step::Provisional(info)
        });
    }
    let kind = ctypes_code(&code).ok_or_else(|| not_a_type(t))?;
    if kind == Kind::Ptr {
        return Ok(Step::Pointer(Link {
            class: class.clone(),
            ctypes: true,
            target,
        }));
    }
    Ok(Step::Leaf(scalar(class.as_any(), kind, true)?))
}

fn pointer_info(
    class: &Bound<'_, PyType>,
    target: &'static TypeInfo,
    ctypes: bool,
    declared: Option<&Bound<'_, PyAny>>,
) -> PyResult<&'static TypeInfo> {
    let size = Kind::Ptr.size();
    // Named after the declared pointee, also while it is seen as Void
    // (an incomplete struct).
    let pointee = match declared {
        Some(d) if std::ptr::eq(target, void(class.py())?) => type_name(d),
        _ => target.name.clone(),
    };
    Ok(leak(TypeInfo {
        kind: Kind::Ptr,
        size,
        align: size,
        format: Kind::Ptr.format(),
        class: class.clone().into_any().unbind(),
        target: Some(target),
        name: format!("Pointer[{pointee}]"),
        ctypes,
        composite: Composite::No,
        param: PyOnceLock::new(),
    }))
}

/// `Pointer[T]`: the slot class for T (validated as an element type).
pub fn pointer_class<'py>(target: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    // A struct's layout is not needed to point at it, and may be what is
    // being worked out (`next: Pointer[Node]` inside Node).
    if !(composites().is_struct_class)(target)? {
        if let Err(e) = lookup(target) {
            // A pointer to an incomplete ctypes struct is how it names itself.
            if !matches!(step(target), Ok(Step::Incomplete)) {
                return Err(e);
            }
        }
    }
    target
        .py()
        .import(checked::name!("rsalloc._types"))?
        .call_method1(checked::name!("pointer_type"), (target,))
}

fn sized(t: &Bound<'_, PyAny>) -> PyResult<&'static TypeInfo> {
    let info = lookup(t)?;
    if !info.has_size() {
        return Err(checked::error::<PyTypeError>(format!(
            "{} has no size",
            info.name
        )));
    }
    Ok(info)
}

/// `sizeof(T)`: the C size of an element type.
#[pyfunction]
pub fn sizeof(t: &Bound<'_, PyAny>) -> PyResult<Int> {
    Ok(Int::from(sized(t)?.size))
}

/// `alignof(T)`: the C alignment of an element type.
#[pyfunction]
pub fn alignof(t: &Bound<'_, PyAny>) -> PyResult<Int> {
    Ok(Int::from(sized(t)?.align))
}
