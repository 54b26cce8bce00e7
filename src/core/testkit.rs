//! Backends for tests and fuzzing (compiled for `cargo test` and with the
//! `testkit` feature, never into the extension): [`Counting`] keeps a ledger
//! of every block it handed out, so a test can prove that each block comes
//! back exactly once, and it can fail the k-th allocation on demand, so a test
//! can walk every out-of-memory path.

use super::alloc::Backend;
use super::error::{Error, Result};
use super::serial::Serialized;
use super::sys;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Ledger {
    /// address -> (size, align) of every block handed out and not returned.
    outstanding: HashMap<usize, (usize, usize)>,
    /// Returns of a block that was not outstanding, or with the wrong layout.
    bad_returns: Vec<String>,
}

#[derive(Default)]
struct Inner {
    ledger: Mutex<Ledger>,
    /// Allocation attempts so far (failed ones included).
    attempts: AtomicUsize,
    /// The 1-based attempt that fails; 0: none.
    fail_at: AtomicUsize,
    returns: AtomicUsize,
}

/// A libc-backed [`Backend`] with a ledger and failure injection. Clones
/// share the ledger, so a test keeps one while the allocator owns another.
#[derive(Clone, Default)]
pub struct Counting(Arc<Inner>);

impl Counting {
    /// A fresh ledger; nothing fails until told to.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `k`-th allocation attempt from now on fail (0: none fails).
    pub fn fail_at(&self, k: usize) {
        self.0.attempts.store(0, SeqCst);
        self.0.fail_at.store(k, SeqCst);
    }

    /// Allocation attempts since the last [`Counting::fail_at`].
    pub fn attempts(&self) -> usize {
        self.0.attempts.load(SeqCst)
    }

    /// Blocks handed out and not yet returned.
    pub fn live(&self) -> usize {
        self.0.ledger.lock().unwrap().outstanding.len()
    }

    /// Blocks returned through [`Backend::free`] so far.
    pub fn returns(&self) -> usize {
        self.0.returns.load(SeqCst)
    }

    /// Descriptions of returns of blocks that were not outstanding (double
    /// returns, wrong sizes): empty when the allocator is correct.
    pub fn bad_returns(&self) -> Vec<String> {
        self.0.ledger.lock().unwrap().bad_returns.clone()
    }

    /// Plays the C code that frees a detached block.
    pub fn free_detached(&self, addr: usize) {
        let known = self.0.ledger.lock().unwrap().outstanding.remove(&addr);
        assert!(known.is_some(), "{addr:#x} was never handed out");
        // SAFETY: a block of ours that rsalloc no longer owns.
        unsafe {
            sys::free(NonNull::new(std::ptr::with_exposed_provenance_mut::<u8>(addr)).unwrap())
        };
    }
}

impl Backend for Counting {
    fn alloc(
        &self,
        size: usize,
        align: usize,
        zeroed: bool,
        _s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        let n = self.0.attempts.fetch_add(1, SeqCst) + 1;
        if n == self.0.fail_at.load(SeqCst) {
            return Err(Error::OutOfMemory(size));
        }
        let p = sys::alloc(size, align, zeroed)?;
        let mut ledger = self.0.ledger.lock().unwrap();
        let clash = ledger
            .outstanding
            .insert(p.as_ptr().expose_provenance(), (size, align));
        assert!(clash.is_none(), "libc handed out a live address twice");
        Ok(p)
    }

    unsafe fn free(
        &self,
        ptr: NonNull<u8>,
        size: usize,
        align: usize,
        _s: Option<Serialized<'_>>,
    ) -> Result<()> {
        let addr = ptr.as_ptr().expose_provenance();
        self.0.returns.fetch_add(1, SeqCst);
        let mut ledger = self.0.ledger.lock().unwrap();
        match ledger.outstanding.remove(&addr) {
            Some(layout) if layout == (size, align) => {
                drop(ledger);
                // SAFETY: the ledger proves it is ours and outstanding.
                unsafe { sys::free(ptr) }
            }
            // Never pass a bad return on to libc: record it for the test.
            Some(layout) => ledger.bad_returns.push(format!(
                "{addr:#x} returned as {:?}, allocated as {layout:?}",
                (size, align)
            )),
            None => ledger
                .bad_returns
                .push(format!("{addr:#x} returned but not outstanding")),
        }
        Ok(())
    }
}

pub mod drive;

#[cfg(test)]
mod tests;
