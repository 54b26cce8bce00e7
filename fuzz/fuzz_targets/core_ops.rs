//! Random programs over the core, driven by the fuzzer's bytes: layouts, the
//! allocation record's state machine through an allocator with a counting
//! backend, and the bump region. After every step the counters equal a
//! model; no block is returned twice or lost; live blocks never overlap
//! (each keeps the byte pattern it was filled with).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rsalloc::core::alloc::{AllocCore, Backend};
use rsalloc::core::error::{Error, Result};
use rsalloc::core::layout::{self, Request};
use rsalloc::core::record::State;
use rsalloc::core::record_ref::RecordRef;
use rsalloc::core::region::RegionCore;
use rsalloc::core::serial::Serialized;
use rsalloc::core::sys;
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// libc memory, remembering which blocks are out: a double return panics.
#[derive(Default)]
struct Counting(Mutex<HashSet<usize>>);

impl Backend for Counting {
    fn alloc(
        &self,
        size: usize,
        align: usize,
        zeroed: bool,
        _s: Option<Serialized<'_>>,
    ) -> Result<NonNull<u8>> {
        let p = sys::alloc(size, align, zeroed)?;
        assert!(
            self.0.lock().unwrap().insert(p.as_ptr() as usize),
            "handed out twice"
        );
        Ok(p)
    }
    unsafe fn free(
        &self,
        ptr: NonNull<u8>,
        _size: usize,
        _align: usize,
        _s: Option<Serialized<'_>>,
    ) -> Result<()> {
        assert!(
            self.0.lock().unwrap().remove(&(ptr.as_ptr() as usize)),
            "returned twice or unknown"
        );
        unsafe { sys::free(ptr) };
        Ok(())
    }
}

struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
}

struct Held {
    rec: RecordRef,
    fill: u8,
    pinned: u32,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let backend = Arc::new(Counting::default());
    struct Shared(Arc<Counting>);
    impl Backend for Shared {
        fn alloc(
            &self,
            s: usize,
            a: usize,
            z: bool,
            t: Option<Serialized<'_>>,
        ) -> Result<NonNull<u8>> {
            self.0.alloc(s, a, z, t)
        }
        unsafe fn free(
            &self,
            p: NonNull<u8>,
            s: usize,
            a: usize,
            t: Option<Serialized<'_>>,
        ) -> Result<()> {
            unsafe { self.0.free(p, s, a, t) }
        }
    }
    let a = AllocCore::new(
        "fuzz",
        rsalloc::core::alloc::new_id(),
        false,
        Box::new(Shared(backend.clone())),
    );
    let region = RegionCore::new();
    let mut held: Vec<Held> = Vec::new();
    let mut region_blocks: Vec<(usize, u64, usize, u8)> = Vec::new();
    let (mut live, mut bytes) = (0u64, 0u64);

    while let Some(op) = input.next() {
        let arg = input.next().unwrap_or(0);
        match op % 9 {
            0 => {
                // Layout of arbitrary requests never panics and agrees with checked math.
                let count = (arg as i128 - 8) * (1i128 << (arg % 70));
                let r = layout::array(count, (arg as usize % 17) + 1, 1, Some(1u128 << (arg % 20)));
                if let Ok(req) = r {
                    assert!(req.size as u128 <= isize::MAX as u128);
                }
            }
            1 => {
                let size = arg as usize * 3;
                let align = 1usize << (arg % 8);
                let rec = a.allocate(Request { size, align }, None, None).unwrap();
                assert_eq!(rec.addr() % align, 0);
                let fill = arg | 1;
                unsafe { std::ptr::write_bytes(rec.addr() as *mut u8, fill, size) };
                held.push(Held {
                    rec,
                    fill,
                    pinned: 0,
                });
                live += 1;
                bytes += size as u64;
            }
            2 if !held.is_empty() => {
                let h = held.swap_remove(arg as usize % held.len());
                let alive = h.rec.check_access().is_ok();
                let r = a.free(&h.rec, h.rec.addr(), None);
                match r {
                    Ok(()) => {
                        assert!(alive);
                        live -= 1;
                        bytes -= h.rec.size() as u64;
                    }
                    Err(Error::DoubleFree(_)) => assert!(!alive),
                    Err(Error::Ownership(_)) => assert_eq!(h.rec.state(), State::Detached),
                    Err(e) => panic!("unexpected {e}"),
                }
                // Unpinning a freed block returns its memory exactly once.
                for _ in 0..h.pinned {
                    h.rec.unpin(None);
                }
            }
            3 if !held.is_empty() => {
                let i = arg as usize % held.len();
                if held[i].rec.pin().is_ok() {
                    held[i].pinned += 1;
                }
            }
            4 if !held.is_empty() => {
                let i = arg as usize % held.len();
                if held[i].pinned > 0 {
                    held[i].rec.unpin(None);
                    held[i].pinned -= 1;
                }
            }
            5 if !held.is_empty() => {
                let i = arg as usize % held.len();
                let h = &held[i];
                let old = h.rec.size();
                let new = (arg as usize) * 5;
                match a.realloc(&h.rec, h.rec.addr(), new, None) {
                    Ok(fresh) => {
                        let keep = old.min(new);
                        let s =
                            unsafe { std::slice::from_raw_parts(fresh.addr() as *const u8, keep) };
                        assert!(s.iter().all(|b| *b == h.fill));
                        unsafe { std::ptr::write_bytes(fresh.addr() as *mut u8, h.fill, new) };
                        bytes = bytes - old as u64 + new as u64;
                        let fill = h.fill;
                        held[i] = Held {
                            rec: fresh,
                            fill,
                            pinned: 0,
                        };
                    }
                    Err(Error::Exported) => assert!(h.pinned > 0),
                    Err(Error::DoubleFree(_)) | Err(Error::Ownership(_)) => {}
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            6 => {
                let size = arg as usize;
                let align = 1usize << (arg % 13);
                if let Ok((at, token)) = region.allocate(Request { size, align }, None) {
                    assert_eq!(at % align, 0);
                    let s = unsafe { std::slice::from_raw_parts(at as *const u8, size) };
                    assert!(s.iter().all(|b| *b == 0), "region memory is zeroed");
                    unsafe { std::ptr::write_bytes(at as *mut u8, arg | 1, size) };
                    region_blocks.push((at, token, size, arg | 1));
                }
            }
            7 => {
                region.release(arg % 2 == 0, None);
                for (at, token, _, _) in region_blocks.drain(..) {
                    assert!(region.check(token, at, None).is_err());
                }
            }
            8 if !held.is_empty() => {
                let i = arg as usize % held.len();
                if held[i].rec.detach(held[i].rec.addr()).is_ok() {
                    live -= 1;
                    bytes -= held[i].rec.size() as u64;
                    // C takes it: return it to the backend as C would.
                    let addr = held[i].rec.addr();
                    unsafe {
                        backend
                            .free(NonNull::new(addr as *mut u8).unwrap(), 0, 1, None)
                            .unwrap()
                    };
                    for _ in 0..held[i].pinned {
                        held[i].rec.unpin(None);
                    }
                    held.swap_remove(i);
                }
            }
            _ => {}
        }
        // Invariants after every step.
        let s = a.counters.snapshot();
        assert_eq!((s.live_count, s.live_bytes), (live, bytes));
        for h in &held {
            if h.rec.check_access().is_ok() {
                let s =
                    unsafe { std::slice::from_raw_parts(h.rec.addr() as *const u8, h.rec.size()) };
                assert!(
                    s.iter().all(|b| *b == h.fill),
                    "a live block was overwritten"
                );
            }
        }
        for (at, token, size, fill) in &region_blocks {
            if region.check(*token, *at, None).is_ok() {
                let s = unsafe { std::slice::from_raw_parts(*at as *const u8, *size) };
                assert!(s.iter().all(|b| b == fill), "region blocks overlap");
            }
        }
    }
    // Teardown: free what is left; every block goes back exactly once.
    for h in held.drain(..) {
        let _ = a.free(&h.rec, h.rec.addr(), None);
        for _ in 0..h.pinned {
            h.rec.unpin(None);
        }
    }
    region.release(false, None);
    assert_eq!(a.counters.snapshot().live_count, 0);
    assert!(backend.0.lock().unwrap().is_empty(), "leaked blocks");
});
