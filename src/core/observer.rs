//! Reports of blocks to an outside observer: the binding hands in functions
//! that tell `tracemalloc` about each block (DESIGN §7), and switches them on
//! while it traces.
//!
//! Every block is reported when it is handed out (or adopted) and again when
//! its memory goes back or leaves rsalloc (free, release, detach, a
//! realloc's old block); a bump region reports its chunks. While the switch
//! is off, which is the common case, each report is one relaxed load and a
//! branch. A block handed out while off and freed while on is reported freed
//! without having been reported made: observers ignore such reports.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::OnceLock;

/// What the observer is told.
#[derive(Clone, Copy, Debug)]
pub struct Observer {
    /// A block of `size` bytes at `addr` now exists.
    pub made: fn(addr: usize, size: usize),
    /// The block at `addr` is gone (or no longer rsalloc's).
    pub gone: fn(addr: usize),
}

static OBSERVER: OnceLock<Observer> = OnceLock::new();
static ON: AtomicBool = AtomicBool::new(false);

/// Sets the observer (the first call's stays).
pub fn install(observer: Observer) {
    let _ = OBSERVER.set(observer);
}

/// Turns the reports on or off.
pub fn set_on(on: bool) {
    ON.store(on && OBSERVER.get().is_some(), Relaxed);
}

/// Whether blocks are being reported.
pub fn is_on() -> bool {
    ON.load(Relaxed)
}

#[inline(always)]
pub fn made(addr: usize, size: usize) {
    if ON.load(Relaxed) {
        made_slow(addr, size);
    }
}

#[inline(always)]
pub fn gone(addr: usize) {
    if ON.load(Relaxed) {
        gone_slow(addr);
    }
}

#[cold]
#[inline(never)]
fn made_slow(addr: usize, size: usize) {
    if let Some(o) = OBSERVER.get() {
        (o.made)(addr, size);
    }
}

#[cold]
#[inline(never)]
fn gone_slow(addr: usize) {
    if let Some(o) = OBSERVER.get() {
        (o.gone)(addr);
    }
}
