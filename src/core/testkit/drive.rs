//! Byte-string drivers shared by the fuzz targets (fuzz/) and by their
//! deterministic `cargo test` counterparts: each input is a program, checked
//! step by step against a shadow model. Any panic is a finding.

use super::Counting;
use crate::core::alloc::{new_id, AllocCore};
use crate::core::error::{Death, Error, Ownership};
use crate::core::layout::{self, Request};
use crate::core::record::State;
use crate::core::record_ref::RecordRef;
use std::sync::Arc;

/// Reads the program's bytes; past the end every read is 0.
struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | self.u8() as u64)
    }
    fn i128(&mut self) -> i128 {
        ((self.u64() as u128) << 64 | self.u64() as u128) as i128
    }
}

/// `layout::array` on arbitrary numbers: never a panic, and every answer
/// is the exact one (the request's arithmetic, or the right error).
pub fn layout(data: &[u8]) {
    let mut b = Bytes(data);
    let count = match b.u8() % 4 {
        0 => b.i128(),
        1 => b.u64() as i128,
        2 => (b.u8() as i128) - 128,
        _ => b.u64() as i64 as i128,
    };
    let elem_size = match b.u8() % 3 {
        0 => b.u64() as usize,
        _ => b.u8() as usize,
    };
    let elem_align = 1usize << (b.u8() % 16);
    let align = match b.u8() % 4 {
        0 => None,
        1 => Some(1u128 << (b.u8() % 128)),
        2 => Some(b.u64() as u128),
        _ => Some(b.i128() as u128),
    };
    let got = layout::array(count, elem_size, elem_align, align);
    let size = (count >= 0).then(|| (count as u128).checked_mul(elem_size as u128));
    let effective = align.unwrap_or(elem_align as u128);
    match got {
        Ok(Request { size: s, align: a }) => {
            assert_eq!(Some(Some(s as u128)), size);
            assert_eq!(a as u128, effective);
            assert!(a.is_power_of_two());
            assert!(s as u128 + a as u128 - 1 <= isize::MAX as u128);
            assert_eq!(layout::round_up(s, a).map(|r| r % a), Some(0));
        }
        Err(Error::NegativeSize) => assert!(count < 0),
        Err(Error::BadAlignment(x)) => {
            assert!(count >= 0 && !x.is_power_of_two() && align == Some(x))
        }
        Err(Error::SizeOverflow) => {
            assert!(count >= 0 && effective.is_power_of_two());
            // The alignment itself must fit in isize, and the rounded size too.
            let fits = size
                .flatten()
                .filter(|_| effective <= isize::MAX as u128)
                .and_then(|s| s.checked_add(effective - 1))
                .is_some_and(|end| end <= isize::MAX as u128);
            assert!(!fits, "{count} x {elem_size} at {effective} fits");
        }
        Err(e) => panic!("unexpected {e}"),
    }
}

/// What the shadow model expects of one record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shadow {
    Live,
    Detached,
    Dead,
}

struct Slot {
    rec: RecordRef,
    shadow: Shadow,
    pins: usize,
    autofree: bool,
}

/// The record's state machine driven by a byte string: up to four blocks,
/// two allocators of one owner group and one of another, allocation
/// failures injected on demand. After every step the backend's ledger and the
/// counters must agree with the shadow model: no block returned twice or
/// lost, and live counts exact.
pub fn records(data: &[u8]) {
    let mut b = Bytes(data);
    let group = new_id();
    let c = Counting::new();
    let allocs = [
        AllocCore::new("zeroed", group, true, Box::new(c.clone())),
        AllocCore::new("plain", group, false, Box::new(c.clone())),
    ];
    let stranger = AllocCore::new("stranger", new_id(), false, Box::new(c.clone()));
    let mut slots: Vec<Option<Slot>> = (0..4).map(|_| None).collect();
    // Records whose memory C now owns and must free at the end.
    let mut c_owned: Vec<usize> = Vec::new();
    let mut armed = false;
    let steps = data.len().min(256);
    for _ in 0..steps {
        let op = b.u8();
        let k = (b.u8() % 4) as usize;
        let a = &allocs[(op >> 7) as usize];
        let interior = b.u8() % 8 == 0;
        match op % 10 {
            0 => {
                if slots[k].is_none() {
                    let req = Request {
                        size: b.u8() as usize * (1 + (op as usize >> 5 & 3)),
                        align: 1 << (b.u8() % 13),
                    };
                    match a.allocate(req, None, None) {
                        Ok(rec) => {
                            slots[k] = Some(Slot {
                                rec,
                                shadow: Shadow::Live,
                                pins: 0,
                                autofree: false,
                            })
                        }
                        Err(Error::OutOfMemory(_)) => assert!(armed),
                        Err(e) => panic!("allocate: {e}"),
                    }
                }
            }
            1 | 2 => {
                if let Some(s) = &mut slots[k] {
                    let by = if op % 10 == 2 { &stranger } else { a };
                    let addr = s.rec.addr() + interior as usize;
                    let want = if by.group != group {
                        Err(Ownership::OtherOwner)
                    } else {
                        match s.shadow {
                            Shadow::Dead => Ok(false),
                            Shadow::Detached => Err(Ownership::Detached),
                            Shadow::Live if interior => Err(Ownership::Interior),
                            Shadow::Live => Ok(true),
                        }
                    };
                    match (by.free(&s.rec, addr, None), want) {
                        (Ok(()), Ok(true)) => s.shadow = Shadow::Dead,
                        (Err(Error::DoubleFree(Death::Freed | Death::Reallocated)), Ok(false)) => {}
                        (Err(Error::Ownership(o)), Err(w)) => assert_eq!(o, w),
                        (got, want) => panic!("free: {got:?}, expected {want:?}"),
                    }
                }
            }
            3 => {
                if let Some(s) = &mut slots[k] {
                    match (s.rec.pin(), s.shadow) {
                        (Ok(()), Shadow::Live | Shadow::Detached) => s.pins += 1,
                        (Err(Error::UseAfterFree(_)), Shadow::Dead) => {}
                        (got, shadow) => panic!("pin: {got:?} in {shadow:?}"),
                    }
                }
            }
            4 => {
                if let Some(s) = &mut slots[k] {
                    if s.pins > 0 {
                        s.rec.unpin(None);
                        s.pins -= 1;
                    }
                }
            }
            5 => {
                if let Some(s) = &mut slots[k] {
                    let addr = s.rec.addr() + interior as usize;
                    match (s.rec.detach(addr, None), s.shadow) {
                        (Ok(x), Shadow::Live) if !interior && s.pins == 0 => {
                            assert_eq!(x, s.rec.addr());
                            s.shadow = Shadow::Detached;
                        }
                        // An export would outlive the new owner's free.
                        (Err(Error::Exported), Shadow::Live) if !interior && s.pins > 0 => {}
                        (Err(Error::UseAfterFree(_)), Shadow::Dead) => {}
                        (Err(Error::Ownership(Ownership::Detached)), Shadow::Detached) => {}
                        (Err(Error::Ownership(Ownership::Interior)), Shadow::Live) if interior => {}
                        (got, shadow) => panic!("detach: {got:?} in {shadow:?}"),
                    }
                }
            }
            6 => {
                if let Some(s) = &mut slots[k] {
                    match (s.rec.set_autofree(None), s.shadow) {
                        (Ok(()), Shadow::Live | Shadow::Detached) => s.autofree = true,
                        (Err(Error::UseAfterFree(_)), Shadow::Dead) => {}
                        (got, shadow) => panic!("autofree: {got:?} in {shadow:?}"),
                    }
                }
            }
            7 => {
                if let Some(s) = &mut slots[k] {
                    let addr = s.rec.addr() + interior as usize;
                    let new = b.u8() as usize * 3;
                    match a.realloc(&s.rec, addr, new, None) {
                        Ok(fresh) => {
                            assert!(s.shadow == Shadow::Live && !interior && s.pins == 0);
                            assert_eq!(s.rec.state(), State::Dead(Death::Reallocated));
                            assert_eq!(fresh.is_autofree(), s.autofree);
                            s.rec = fresh;
                        }
                        Err(Error::OutOfMemory(_)) => assert!(armed && s.shadow == Shadow::Live),
                        Err(Error::DoubleFree(_)) => assert_eq!(s.shadow, Shadow::Dead),
                        Err(Error::Ownership(Ownership::Detached)) => {
                            assert_eq!(s.shadow, Shadow::Detached)
                        }
                        Err(Error::Ownership(Ownership::Interior)) => assert!(interior),
                        Err(Error::Exported) => assert!(s.pins > 0),
                        Err(e) => panic!("realloc: {e}"),
                    }
                }
            }
            8 => {
                // Drop our hold on a record: pins first, then the reference.
                // A live block that is not autofree would leak: keep those.
                let keep = slots[k]
                    .as_ref()
                    .is_some_and(|s| s.shadow == Shadow::Live && !s.autofree);
                if !keep {
                    if let Some(s) = slots[k].take() {
                        for _ in 0..s.pins {
                            s.rec.unpin(None);
                        }
                        if s.shadow == Shadow::Detached {
                            c_owned.push(s.rec.addr());
                        }
                    }
                }
            }
            _ => {
                let n = b.u8() % 4;
                c.fail_at(n as usize);
                armed = n > 0;
            }
        }
        check(&c, &allocs, &slots, &c_owned);
    }
    // The end of the program: every hold released, every block ends.
    c.fail_at(0);
    for s in slots.iter_mut().flatten() {
        for _ in 0..s.pins {
            s.rec.unpin(None);
        }
        s.pins = 0;
        match s.shadow {
            Shadow::Live if !s.autofree => allocs[0].free(&s.rec, s.rec.addr(), None).unwrap(),
            Shadow::Detached => c_owned.push(s.rec.addr()),
            _ => {}
        }
    }
    drop(slots);
    for addr in c_owned {
        c.free_detached(addr);
    }
    assert_eq!(c.bad_returns(), Vec::<String>::new());
    assert_eq!(c.live(), 0);
    for a in &allocs {
        let s = a.counters.snapshot();
        assert_eq!((s.live_count, s.live_bytes), (0, 0));
        assert_eq!(s.total_allocs, s.total_frees);
    }
}

fn check(c: &Counting, allocs: &[Arc<AllocCore>; 2], slots: &[Option<Slot>], c_owned: &[usize]) {
    assert_eq!(c.bad_returns(), Vec::<String>::new());
    let mut holding = c_owned.len();
    let (mut live, mut bytes) = (0, 0);
    for s in slots.iter().flatten() {
        let state = s.rec.state();
        match s.shadow {
            Shadow::Live => {
                assert_eq!(state, State::Live);
                live += 1;
                bytes += s.rec.size() as u64;
                holding += 1;
            }
            Shadow::Detached => {
                assert_eq!(state, State::Detached);
                holding += 1;
            }
            Shadow::Dead => {
                assert!(matches!(state, State::Dead(_)));
                holding += (s.pins > 0) as usize;
            }
        }
        assert_eq!(s.rec.pins(), s.pins);
        assert_eq!(s.rec.is_autofree(), s.autofree);
    }
    assert_eq!(c.live(), holding, "blocks the backend still has out");
    let (n, b) = allocs.iter().fold((0, 0), |(n, b), a| {
        let s = a.counters.snapshot();
        (n + s.live_count, b + s.live_bytes)
    });
    assert_eq!((n, b), (live, bytes));
}
