//! `RecordRef`: the shared reference to an allocation record, like
//! `Arc<Record>` but allocated fallibly. `Arc::new` aborts the process when
//! the heap is exhausted; a record is bookkeeping for every single block, so
//! its memory is reserved first (`RecordSlot::new`, an error on failure) and
//! only then is the block itself allocated, so no failure leaves a block
//! without a record.

use super::error::{Error, Result};
use super::record::Record;
use std::alloc::{alloc, dealloc, Layout};
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicUsize, Ordering::*};

struct Inner {
    strong: AtomicUsize,
    rec: Record,
}

/// Memory for one record, not yet filled.
pub struct RecordSlot(NonNull<MaybeUninit<Inner>>);

impl RecordSlot {
    /// Reserves a record's memory; OutOfMemory instead of an abort.
    pub fn new() -> Result<Self> {
        #[cfg(any(test, feature = "testkit"))]
        if fault::should_fail() {
            return Err(Error::OutOfMemory(Layout::new::<Inner>().size()));
        }
        // SAFETY: Inner has a non-zero size.
        let p = unsafe { alloc(Layout::new::<Inner>()) } as *mut MaybeUninit<Inner>;
        NonNull::new(p)
            .map(RecordSlot)
            .ok_or(Error::OutOfMemory(Layout::new::<Inner>().size()))
    }

    /// Moves `rec` into the slot: the first reference to it.
    pub fn fill(self, rec: Record) -> RecordRef {
        let p = self.0.cast::<Inner>();
        std::mem::forget(self);
        // SAFETY: the slot is ours, uninitialised, and sized for Inner.
        unsafe {
            p.as_ptr().write(Inner {
                strong: AtomicUsize::new(1),
                rec,
            })
        };
        RecordRef(p)
    }
}

impl Drop for RecordSlot {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout and never filled.
        unsafe { dealloc(self.0.as_ptr().cast(), Layout::new::<Inner>()) }
    }
}

/// A counted reference to a record, shared by every view of its block.
pub struct RecordRef(NonNull<Inner>);

// SAFETY: as Arc<Record>: Record is Send + Sync, and the count is atomic.
unsafe impl Send for RecordRef {}
unsafe impl Sync for RecordRef {}

impl RecordRef {
    pub fn ptr_eq(a: &RecordRef, b: &RecordRef) -> bool {
        a.0 == b.0
    }

    fn inner(&self) -> &Inner {
        // SAFETY: the pointee lives while any reference exists.
        unsafe { self.0.as_ref() }
    }
}

impl Deref for RecordRef {
    type Target = Record;
    #[inline]
    fn deref(&self) -> &Record {
        &self.inner().rec
    }
}

impl Clone for RecordRef {
    #[inline]
    fn clone(&self) -> Self {
        // Relaxed, as Arc: a new reference is made from an existing one.
        self.inner().strong.fetch_add(1, Relaxed);
        RecordRef(self.0)
    }
}

impl Drop for RecordRef {
    fn drop(&mut self) {
        if self.inner().strong.fetch_sub(1, Release) != 1 {
            return;
        }
        // As Arc: every use through other references happens before the drop.
        fence(Acquire);
        // SAFETY: the last reference; the memory came from RecordSlot::new.
        unsafe {
            std::ptr::drop_in_place(self.0.as_ptr());
            dealloc(self.0.as_ptr().cast(), Layout::new::<Inner>());
        }
    }
}

impl std::fmt::Debug for RecordRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Failure injection for the record allocation (tests and fuzzing): the
/// k-th `RecordSlot::new` on this thread fails.
#[cfg(any(test, feature = "testkit"))]
pub mod fault {
    use std::cell::Cell;

    thread_local! {
        static COUNTDOWN: Cell<usize> = const { Cell::new(0) };
    }

    /// Fails the `k`-th record allocation from now on this thread (0: never).
    pub fn fail_record_at(k: usize) {
        COUNTDOWN.with(|c| c.set(k));
    }

    pub(super) fn should_fail() -> bool {
        COUNTDOWN.with(|c| match c.get() {
            0 => false,
            1 => {
                c.set(0);
                true
            }
            n => {
                c.set(n - 1);
                false
            }
        })
    }
}
