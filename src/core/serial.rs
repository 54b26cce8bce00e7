//! The one switch that tells the core every caller is serialized by an
//! outside lock: the GIL, on interpreters that have one.
//!
//! Several per-block costs exist only to make concurrent callers safe: a
//! counter update is a locked read-modify-write (~2.3 ns on the development
//! machine, eight per block), and record memory is cached per thread, whose
//! thread-local lookup costs ~35 instructions per block (callgrind; ~3.5 ns).
//! When no two threads can be inside the core at once, neither is needed:
//! counters become an atomic load and store, and the record cache one
//! process-wide list.
//!
//! Allocation *state* (free, export, detach) is decided by compare-and-swap
//! whatever this switch says: it is what decides who returns memory.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static SERIALIZED: AtomicBool = AtomicBool::new(false);

/// Declares that from now on every caller holds one and the same outside
/// lock whenever it runs core code.
///
/// # Safety
/// Every later call into the core, and every drop of a value it handed out
/// (records, regions, allocators), must run while holding that lock (the
/// binding: the GIL; PyO3 refuses sub-interpreters). The lock may be let go
/// only inside callbacks the core makes to its caller's code (a
/// Python-defined allocator's `_raw_alloc` may release the GIL): the
/// unsynchronised steps this switch allows (a counter update, a push or a
/// pop on the record cache) never span such a callback. Two threads in the
/// record cache at once would corrupt it.
pub unsafe fn assume_serialized() {
    SERIALIZED.store(true, Relaxed);
}

#[inline]
pub(crate) fn serialized() -> bool {
    SERIALIZED.load(Relaxed)
}
