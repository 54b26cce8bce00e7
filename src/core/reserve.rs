//! Running out of memory on Rust's side (DESIGN §6): Rust aborts the
//! process when an infallible allocation fails (a `format!`, a `Box`, a
//! `Vec` push, PyO3 boxing an exception's arguments). Every allocation
//! rsalloc makes for a block is fallible already; what is left is the
//! bookkeeping around an error: its message, the exception, a traceback,
//! a report. So the extension's global allocator holds an emergency
//! reserve: when an allocation fails, the reserve goes back to the system
//! and the allocation is tried again, so the error path that follows can
//! build its `MemoryError`. While the reserve is out, rsalloc hands out
//! no new block ([`ready`], asked by `sys::alloc`) until it can take the
//! reserve back (with as much again to spare): the memory it gave back
//! stays for error paths, not for the loop that exhausted memory.
//!
//! The reserve is 512 KiB of heap, touched only in the first word of each
//! piece: almost no resident pages, its share of an `RLIMIT_AS`.

use super::stats::GLOBAL;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::OnceLock;
use std::time::Instant;

/// Enough for the messages, exceptions and report lines of an error path,
/// taken in pieces below glibc's mmap threshold: they come from (and go
/// back to) the heap Rust's allocations use, and can be taken back from
/// memory freed into that heap.
pub const PIECE: usize = 32 << 10;
pub const PIECES: usize = 16;

/// The pieces held, as a list threaded through their first word.
static HELD: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// Set by the first [`arm`] (the extension's import): a core without the
/// reserve (cargo test, fuzzing) never asks for it.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// How many times the reserve was given back (for tests and reports).
static RELEASES: AtomicUsize = AtomicUsize::new(0);

fn piece_layout() -> Layout {
    Layout::from_size_align(PIECE, 16).expect("a valid layout")
}

/// Frees a list of pieces.
fn free_list(mut p: *mut u8) {
    while !p.is_null() {
        // SAFETY: every piece came from System.alloc(piece_layout()) and
        // holds the next piece's address in its first word.
        unsafe {
            let next = p.cast::<*mut u8>().read();
            System.dealloc(p, piece_layout());
            p = next;
        }
    }
}

/// A list of `PIECES` pieces, or null when the system refuses one.
fn take_list() -> *mut u8 {
    let mut head: *mut u8 = std::ptr::null_mut();
    for _ in 0..PIECES {
        // SAFETY: a non-zero-sized layout.
        let p = unsafe { System.alloc(piece_layout()) };
        if p.is_null() {
            free_list(head);
            return std::ptr::null_mut();
        }
        // SAFETY: p holds PIECE bytes, aligned for a pointer.
        unsafe { p.cast::<*mut u8>().write(head) };
        head = p;
    }
    head
}

/// Takes the reserve if it is not held; false when the system refuses.
/// It is taken only with as much again to spare (taken and given back at
/// once): right after a release, the memory it just gave back must stay
/// for the error path, not come straight back into the reserve.
pub fn arm() -> bool {
    ACTIVE.store(true, Relaxed);
    if !HELD.load(Acquire).is_null() {
        return true;
    }
    let head = take_list();
    if head.is_null() {
        return false;
    }
    let spare = take_list();
    if spare.is_null() {
        free_list(head);
        return false;
    }
    free_list(spare);
    if HELD
        .compare_exchange(std::ptr::null_mut(), head, AcqRel, Acquire)
        .is_err()
    {
        free_list(head); // another thread armed it first
    }
    true
}

/// Gives the reserve back to the system; true when it was held.
fn release() -> bool {
    let p = HELD.swap(std::ptr::null_mut(), AcqRel);
    if p.is_null() {
        return false;
    }
    free_list(p);
    RELEASES.fetch_add(1, Relaxed);
    note_refusal();
    true
}

/// A new block may be handed out: the reserve is held (or not in use), or
/// could be taken back just now. Two relaxed loads on the allocation path.
#[inline]
pub fn ready() -> bool {
    !ACTIVE.load(Relaxed) || !HELD.load(Relaxed).is_null() || rearm()
}

/// rsalloc's live bytes when taking the reserve back last failed (or when
/// it was given back), and when that was: taking it back is tried again
/// once the program freed some of its blocks, or at most once a
/// millisecond otherwise (memory freed outside rsalloc's sight: C freeing
/// detached blocks, the interpreter freeing its own objects). Not on every
/// refusal: right after the reserve went to an error path, an allocation
/// loop would take it back and spend it again on every block, and never
/// see its MemoryError.
static LIVE_AT_REFUSAL: AtomicU64 = AtomicU64::new(0);
static TRIED_AT: AtomicU64 = AtomicU64::new(0);
const RETRY_AFTER_NANOS: u64 = 1_000_000;

/// Nanoseconds since the first call (a monotonic clock; no allocation).
fn now_nanos() -> u64 {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    ANCHOR.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Remembers a failed (or spent) reserve: what a later retry waits for.
fn note_refusal() {
    LIVE_AT_REFUSAL.store(GLOBAL.snapshot().live_bytes, Relaxed);
    TRIED_AT.store(now_nanos(), Relaxed);
}

#[cold]
fn rearm() -> bool {
    let freed_since = GLOBAL.snapshot().live_bytes < LIVE_AT_REFUSAL.load(Relaxed);
    if !freed_since && now_nanos().saturating_sub(TRIED_AT.load(Relaxed)) < RETRY_AFTER_NANOS {
        return false;
    }
    if arm() {
        return true;
    }
    note_refusal();
    false
}

/// Whether the reserve is held now, and how many times it was given back.
pub fn state() -> (bool, usize) {
    (!HELD.load(Acquire).is_null(), RELEASES.load(Relaxed))
}

/// The system allocator with the emergency reserve behind it.
pub struct WithReserve;

impl WithReserve {
    #[cold]
    fn retry(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        if !release() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe {
            if zeroed {
                System.alloc_zeroed(layout)
            } else {
                System.alloc(layout)
            }
        }
    }
}

// SAFETY: every call forwards to System with the caller's layout; the
// reserve is a separate System block only this module touches.
unsafe impl GlobalAlloc for WithReserve {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            return self.retry(layout, false);
        }
        p
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            return self.retry(layout, true);
        }
        p
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() && release() {
            // SAFETY: as above; the old block is untouched after a failed realloc.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        p
    }
}
