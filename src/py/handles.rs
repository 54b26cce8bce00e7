//! The Python side of a core allocator or arena, kept here, not in the
//! core: the Python object of each (a weak reference, for
//! `Pointer.allocator`), found from the core object by its address. Who
//! owns a record, as a Python object, is answered here.
//!
//! An entry lives exactly as long as the Python object that made it: that
//! object holds its core object (so no other takes the address meanwhile)
//! and removes the entry when it is dropped ([`forget`]).

use super::python_allocator::catching_free_errors;
use crate::core::alloc::AllocCore;
use crate::core::record::{ArenaTag, Record};
use crate::core::region::RegionCore;
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;
use std::collections::hash_map::Entry::{Occupied, Vacant};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

/// A core object that has a Python object: an allocator core, an arena's
/// tag, a region, by address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key(usize);

impl From<&AllocCore> for Key {
    fn from(core: &AllocCore) -> Self {
        Key(std::ptr::from_ref(core).addr())
    }
}

impl From<&ArenaTag> for Key {
    fn from(tag: &ArenaTag) -> Self {
        Key(std::ptr::from_ref(tag).addr())
    }
}

impl From<&RegionCore> for Key {
    fn from(region: &RegionCore) -> Self {
        Key(std::ptr::from_ref(region).addr())
    }
}

/// Who made an entry: the address of the Rust value inside its Python
/// object, so that only that object's drop removes it.
pub(crate) type Maker = usize;

struct Entry {
    weak: Py<PyWeakrefReference>,
    maker: Maker,
}

/// Hashes a key, an address of a live core object: distinct by
/// construction and not chosen by anyone, so a multiplication spreads them
/// well enough (SipHash, the default, was most of an `Arena(allocator)`'s
/// extra cost).
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

type Table = HashMap<Key, Entry, BuildHasherDefault<AddrHasher>>;

/// A weak reference (records must not keep their owner's object alive).
static OBJECTS: Mutex<Option<Table>> = Mutex::new(None);

fn objects() -> std::sync::MutexGuard<'static, Option<Table>> {
    OBJECTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remembers `obj` as the Python object of `key`, unless a live one is
/// remembered already. `maker` is the Rust value inside `obj`.
pub(crate) fn remember(key: Key, obj: &Bound<'_, PyAny>, maker: Maker) -> PyResult<()> {
    let weak = PyWeakrefReference::new(obj)?.unbind();
    let mut live = None;
    let old = {
        let mut objects = objects();
        let table = objects.get_or_insert_with(Table::default);
        match table.entry(key) {
            Occupied(mut e) => {
                // Upgrading runs no Python code (a new reference or nothing).
                live = e.get().weak.bind(obj.py()).upgrade();
                match live {
                    Some(_) => Some(weak),
                    None => Some(std::mem::replace(e.get_mut(), Entry { weak, maker }).weak),
                }
            }
            Vacant(e) => {
                e.insert(Entry { weak, maker });
                None
            }
        }
    };
    // Outside the lock: a weak reference's last count, and the reference
    // the upgrade made.
    if old.is_some() || live.is_some() {
        crate::py::cpython::attach::drop_registered((old, live.map(Bound::unbind)));
    }
    Ok(())
}

/// Forgets `key`'s object if `maker` remembered it (its drop).
pub(crate) fn forget(key: Key, maker: Maker) {
    let gone = {
        let mut objects = objects();
        let map = objects.as_mut();
        match map {
            Some(m) if m.get(&key).is_some_and(|e| e.maker == maker) => m.remove(&key),
            _ => None,
        }
    };
    // Outside the lock: a weak reference's last count.
    crate::py::cpython::attach::drop_registered(gone);
}

/// The Python object remembered for `key`, None when there is none or it
/// is gone.
pub(crate) fn object(py: Python<'_>, key: Key) -> Py<PyAny> {
    let weak = objects()
        .as_ref()
        .and_then(|m| m.get(&key))
        .map(|e| e.weak.clone_ref(py));
    weak.and_then(|w| w.bind(py).upgrade())
        .map(Bound::unbind)
        .unwrap_or_else(|| py.None())
}

/// The owner of a record: its arena while one owns it, else its allocator.
pub fn owner_object(py: Python<'_>, rec: &Record) -> Py<PyAny> {
    match rec.arena_tag() {
        Some(tag) => object(py, Key::from(tag)),
        None => object(py, Key::from(rec.allocator())),
    }
}

/// Runs `f`, a free through `core`; an exception raised by a Python free
/// function during it becomes the result.
#[inline]
pub fn raising_free_errors(
    py: Python<'_>,
    core: &AllocCore,
    f: impl FnOnce() -> PyResult<()>,
) -> PyResult<()> {
    if core.plain_backend() || !core.backend.calls_out() {
        return f();
    }
    catching_free_errors(py, f)
}
