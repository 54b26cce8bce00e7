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
use std::collections::HashMap;
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

/// A weak reference (records must not keep their owner's object alive).
static OBJECTS: Mutex<Option<HashMap<Key, Entry>>> = Mutex::new(None);

fn objects() -> std::sync::MutexGuard<'static, Option<HashMap<Key, Entry>>> {
    OBJECTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remembers `obj` as the Python object of `key`, unless a live one is
/// remembered already. `maker` is the Rust value inside `obj`.
pub(crate) fn remember(key: Key, obj: &Bound<'_, PyAny>, maker: Maker) -> PyResult<()> {
    let py = obj.py();
    if !object(py, key).is_none(py) {
        return Ok(());
    }
    let weak = PyWeakrefReference::new(obj)?.unbind();
    let old = objects()
        .get_or_insert_with(HashMap::new)
        .insert(key, Entry { weak, maker });
    drop(old); // outside the lock
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
