//! The bounds and offset arithmetic of a typed view of memory (a Pointer):
//! which address element `i` is at, whether a byte range lies inside the
//! view, what `p + n` points at. Pure arithmetic on addresses; whether the
//! memory is alive is the owner's question (`owner.rs`), asked first by the
//! caller.
//!
//! A view is an address, an element size, and the bytes reachable from the
//! address: its `extent`, [`UNKNOWN`] for foreign memory of unknown length.
//! On a view of unknown extent every non-negative index is admitted (the
//! documented contract of `Pointer.from_address`) as long as the address
//! does not wrap; a negative one is refused, since it would read before the
//! pointer.

use super::error::Error;

/// The extent of a view of unknown length.
pub const UNKNOWN: usize = usize::MAX;

/// A view's arithmetic: copied out of a Pointer for each question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub addr: usize,
    /// The element size in bytes (0 for a sizeless type).
    pub size: usize,
    /// Whether elements can be counted (false for Void, whose size, if any,
    /// is a byte step and not an element).
    pub counted: bool,
    /// Bytes reachable from `addr`, or [`UNKNOWN`].
    pub extent: usize,
}

/// Why `p + n` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetError {
    /// `n` is negative or past the end: the view's count (or extent, for a
    /// sizeless type), None when unknown.
    Outside { limit: Option<usize> },
    /// The new address would wrap.
    Overflow,
}

impl Span {
    /// The extent, None when unknown.
    #[inline]
    pub fn extent(&self) -> Option<usize> {
        (self.extent != UNKNOWN).then_some(self.extent)
    }

    /// Elements in the view: None for unknown extent or sizeless types.
    #[inline]
    pub fn count(&self) -> Option<usize> {
        let size = self.size;
        if self.extent == UNKNOWN || !self.counted || size == 0 {
            return None;
        }
        // Element sizes are mostly powers of two: a shift, not a division.
        Some(if size.is_power_of_two() {
            self.extent >> size.trailing_zeros()
        } else {
            self.extent / size
        })
    }

    /// Bytes covered by the view's elements (all of the extent for Void).
    #[inline]
    pub fn nbytes(&self) -> Option<usize> {
        match self.count() {
            Some(n) => Some(n * self.size),
            None => self.extent(),
        }
    }

    /// The address of element `i` (negative counts from the end when the
    /// count is known). The binding takes the hot case on a Pointer's own
    /// fields (`elem_addr_within`); this is its reference.
    #[cfg(test)]
    #[inline(always)]
    pub fn elem_addr(&self, i: isize) -> Result<usize, Error> {
        match elem_addr_within(self.addr, self.size, self.extent, i) {
            Some(a) => Ok(a),
            None => self.elem_addr_slow(i),
        }
    }

    /// [`Span::elem_addr`] past its hot case ([`elem_addr_within`]).
    #[cold]
    pub fn elem_addr_slow(&self, i: isize) -> Result<usize, Error> {
        let size = self.size;
        match self.count() {
            Some(n) => {
                let j = if i < 0 { i + n as isize } else { i };
                if j < 0 || j as usize >= n {
                    return Err(Error::OutOfBounds {
                        index: i as i128,
                        len: n,
                    });
                }
                Ok(self.addr + j as usize * size)
            }
            None if i < 0 => Err(Error::OutOfBounds {
                index: i as i128,
                len: 0,
            }),
            None => (i as usize)
                .checked_mul(size)
                .and_then(|o| self.addr.checked_add(o))
                .ok_or(Error::OutOfBounds {
                    index: i as i128,
                    len: 0,
                }),
        }
    }

    /// The address of the byte range [offset, offset+len) inside the view;
    /// a view of unknown extent has no range inside it.
    pub fn byte_range(&self, offset: usize, len: usize) -> Result<usize, Error> {
        let extent = self.nbytes().ok_or(Error::RangeOutOfBounds {
            offset,
            len,
            extent: 0,
        })?;
        match offset.checked_add(len) {
            Some(end) if end <= extent => Ok(self.addr + offset),
            _ => Err(Error::RangeOutOfBounds {
                offset,
                len,
                extent,
            }),
        }
    }

    /// A byte range the caller states (`read_bytes(n)`, `to_str(length)`,
    /// the length of a copy's source): checked against the view where its
    /// extent is known; on a view of unknown extent taken as stated, as
    /// `ctypes.string_at(addr, n)` does, as long as it stays in the address
    /// space.
    pub fn stated_range(&self, offset: usize, len: usize) -> Result<usize, Error> {
        if self.extent != UNKNOWN {
            return self.byte_range(offset, len);
        }
        offset
            .checked_add(len)
            .filter(|&end| end <= isize::MAX as usize && self.addr.checked_add(end).is_some())
            .map(|_| self.addr + offset)
            .ok_or(Error::RangeOutOfBounds {
                offset,
                len,
                extent: 0,
            })
    }

    /// `p + n`: the address `n` elements on (bytes, for a sizeless type)
    /// and the extent left from there. `n` may reach one past the last
    /// element, as in C; a negative `n` is refused.
    pub fn offset_by(&self, n: isize) -> Result<(usize, Option<usize>), OffsetError> {
        let size = self.size.max(1);
        let limit = self.count().or(self.extent());
        if n < 0 || limit.is_some_and(|c| n as usize > c) {
            return Err(OffsetError::Outside { limit });
        }
        let bytes = (n as usize)
            .checked_mul(size)
            .ok_or(OffsetError::Overflow)?;
        let addr = self.addr.checked_add(bytes).ok_or(OffsetError::Overflow)?;
        Ok((addr, self.extent().map(|e| e - bytes)))
    }
}

/// The hot case of [`Span::elem_addr`], on the view's fields as they are
/// (the access routes call it without building a `Span`): element `i >= 0`
/// ends within `extent`. An unknown extent (usize::MAX) admits every index
/// as long as the address does not wrap; sizeless types (Void) pass here
/// and fail at the read. None for every other case, which
/// [`Span::elem_addr_slow`] decides.
#[inline(always)]
pub fn elem_addr_within(addr: usize, size: usize, extent: usize, i: isize) -> Option<usize> {
    if i < 0 {
        return None;
    }
    let end = (i as usize).checked_mul(size)?.checked_add(size)?;
    if end <= extent && (extent != UNKNOWN || addr.checked_add(end).is_some()) {
        return Some(addr + end - size);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(addr: usize, size: usize, extent: usize) -> Span {
        Span {
            addr,
            size,
            counted: true,
            extent,
        }
    }

    #[test]
    fn elements_inside_and_from_the_end() {
        let s = span(0x1000, 4, 40);
        assert_eq!(s.count(), Some(10));
        assert_eq!(s.elem_addr(0).ok(), Some(0x1000));
        assert_eq!(s.elem_addr(9).ok(), Some(0x1000 + 36));
        assert_eq!(s.elem_addr(-1).ok(), Some(0x1000 + 36));
        assert_eq!(s.elem_addr(-10).ok(), Some(0x1000));
        assert!(matches!(
            s.elem_addr(10),
            Err(Error::OutOfBounds { index: 10, len: 10 })
        ));
        assert!(matches!(
            s.elem_addr(-11),
            Err(Error::OutOfBounds {
                index: -11,
                len: 10
            })
        ));
        // A non-power-of-two size counts by division; a partial element is
        // no element.
        let odd = span(0x1000, 12, 40);
        assert_eq!(odd.count(), Some(3));
        assert_eq!(odd.nbytes(), Some(36));
        assert!(odd.elem_addr(3).is_err());
    }

    #[test]
    fn huge_indices_overflow_into_errors() {
        let s = span(0x1000, 8, 64);
        assert!(s.elem_addr(isize::MAX).is_err());
        assert!(s.elem_addr(isize::MIN).is_err());
        let far = span(usize::MAX - 15, 8, UNKNOWN);
        assert_eq!(far.elem_addr(0).ok(), Some(usize::MAX - 15));
        assert!(far.elem_addr(2).is_err(), "the address would wrap");
        assert!(span(0x1000, 8, UNKNOWN).elem_addr(isize::MAX).is_err());
    }

    #[test]
    fn unknown_count_admits_every_non_negative_index() {
        let s = span(0x1000, 4, UNKNOWN);
        assert_eq!(s.count(), None);
        assert_eq!(s.nbytes(), None);
        assert_eq!(s.elem_addr(1 << 20).ok(), Some(0x1000 + (4 << 20)));
        assert!(matches!(
            s.elem_addr(-1),
            Err(Error::OutOfBounds { index: -1, len: 0 })
        ));
    }

    #[test]
    fn zero_size_and_void_views_have_no_count() {
        let empty = span(0x1000, 4, 0);
        assert_eq!(empty.count(), Some(0));
        assert!(empty.elem_addr(0).is_err());
        assert!(empty.elem_addr(-1).is_err());
        let void = Span {
            counted: false,
            ..span(0x1000, 0, 16)
        };
        assert_eq!(void.count(), None);
        assert_eq!(void.nbytes(), Some(16), "a Void view covers its extent");
        assert_eq!(void.byte_range(0, 16).ok(), Some(0x1000));
    }

    #[test]
    fn byte_ranges() {
        let s = span(0x1000, 4, 40);
        assert_eq!(s.byte_range(0, 40).ok(), Some(0x1000));
        assert_eq!(s.byte_range(40, 0).ok(), Some(0x1000 + 40));
        let past = Error::RangeOutOfBounds {
            offset: 1,
            len: 40,
            extent: 40,
        };
        assert_eq!(
            format!("{:?}", s.byte_range(1, 40)),
            format!("{:?}", Err::<usize, _>(past))
        );
        assert!(
            s.byte_range(usize::MAX, 2).is_err(),
            "offset + len overflows"
        );
        // Unknown extent: no range is inside; a stated one is taken as given.
        let f = span(0x1000, 1, UNKNOWN);
        assert!(f.byte_range(0, 1).is_err());
        assert_eq!(f.stated_range(8, 100).ok(), Some(0x1008));
        assert!(f.stated_range(0, isize::MAX as usize + 1).is_err());
        assert!(span(usize::MAX - 4, 1, UNKNOWN).stated_range(0, 8).is_err());
        // Known extent: a stated range is checked as any other.
        assert!(s.stated_range(0, 41).is_err());
    }

    #[test]
    fn offsets() {
        let s = span(0x1000, 4, 40);
        assert_eq!(s.offset_by(0), Ok((0x1000, Some(40))));
        assert_eq!(s.offset_by(3), Ok((0x100c, Some(28))));
        assert_eq!(s.offset_by(10), Ok((0x1028, Some(0))), "one past the end");
        assert_eq!(
            s.offset_by(11),
            Err(OffsetError::Outside { limit: Some(10) })
        );
        assert_eq!(
            s.offset_by(-1),
            Err(OffsetError::Outside { limit: Some(10) })
        );
        // Unknown extent: any non-negative offset that does not wrap.
        let f = span(0x1000, 8, UNKNOWN);
        assert_eq!(f.offset_by(2), Ok((0x1010, None)));
        assert_eq!(f.offset_by(-1), Err(OffsetError::Outside { limit: None }));
        assert_eq!(f.offset_by(isize::MAX), Err(OffsetError::Overflow));
        assert_eq!(
            span(usize::MAX - 7, 8, UNKNOWN).offset_by(1),
            Err(OffsetError::Overflow)
        );
        // A sizeless view steps in bytes, up to its extent.
        let v = Span {
            counted: false,
            ..span(0x1000, 0, 16)
        };
        assert_eq!(v.offset_by(16), Ok((0x1010, Some(0))));
        assert!(v.offset_by(17).is_err());
    }
}
