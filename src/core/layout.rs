//! Overflow-safe sizes and alignments. Every request is validated here before
//! any memory is touched, so a bad size becomes an error, never an abort.

use super::error::{Error, Result};

/// Alignment libc's `malloc` guarantees on this platform; above it the libc
/// family switches to `posix_memalign`.
pub const MALLOC_ALIGN: usize = 2 * std::mem::size_of::<usize>();

/// A validated request: `size` bytes at a power-of-two `align`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Bytes asked for (may be 0).
    pub size: usize,
    /// Alignment in bytes: a power of two.
    pub align: usize,
}

/// Checks that `align` is a power of two (0 is not).
pub fn check_align(align: u128) -> Result<usize> {
    if align == 0 || !align.is_power_of_two() {
        return Err(Error::BadAlignment(align));
    }
    usize::try_from(align)
        .ok()
        .filter(|a| *a <= isize::MAX as usize / 2 + 1)
        .ok_or(Error::SizeOverflow)
}

/// `count` elements of `elem_size` bytes aligned to `align` (None: the
/// element's natural alignment `elem_align`).
///
/// Sizes arrive as i128 so that every Python integer that fits in 128 bits is
/// classified exactly: negative, too big for isize, or fine.
pub fn array(
    count: i128,
    elem_size: usize,
    elem_align: usize,
    align: Option<u128>,
) -> Result<Request> {
    if count < 0 {
        return Err(Error::NegativeSize);
    }
    let align = match align {
        Some(a) => check_align(a)?,
        None => elem_align.max(1),
    };
    let size = (count as u128)
        .checked_mul(elem_size as u128)
        .filter(|n| *n <= isize::MAX as u128)
        .ok_or(Error::SizeOverflow)? as usize;
    // The size rounded up to the alignment must fit too (Rust's Layout rule),
    // so that no later arithmetic on the block can overflow.
    if size
        .checked_add(align - 1)
        .is_none_or(|n| n > isize::MAX as usize)
    {
        return Err(Error::SizeOverflow);
    }
    Ok(Request { size, align })
}

/// `n` bytes at alignment 1: the same as `array(n, 1, 1, None)` (tested),
/// without the 128-bit arithmetic, for the hottest request there is.
#[inline]
pub fn bytes(n: i64) -> Result<Request> {
    if n < 0 {
        return Err(Error::NegativeSize);
    }
    // i64 is no wider than isize on the targets rsalloc builds for.
    match usize::try_from(n) {
        Ok(size) if size <= isize::MAX as usize => Ok(Request { size, align: 1 }),
        _ => Err(Error::SizeOverflow),
    }
}

/// `count` elements of `elem_size` bytes at their natural alignment: the
/// same as `array(count, elem_size, elem_align, None)` (tested), in 64-bit
/// arithmetic, for `allocator(T)` and `allocator(T, n)` with an int n.
#[inline]
pub fn elements(count: i64, elem_size: usize, elem_align: usize) -> Result<Request> {
    if count < 0 {
        return Err(Error::NegativeSize);
    }
    let align = elem_align.max(1);
    // i64 is no wider than usize on the targets rsalloc builds for; the
    // rounded-up size must fit in isize, as in `array`.
    match (count as usize).checked_mul(elem_size) {
        Some(size)
            if size
                .checked_add(align - 1)
                .is_some_and(|n| n <= isize::MAX as usize) =>
        {
            Ok(Request { size, align })
        }
        _ => Err(Error::SizeOverflow),
    }
}

/// Rounds `n` up to a multiple of `align` (a power of two), None on overflow.
pub fn round_up(n: usize, align: usize) -> Option<usize> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_is_array_of_uint8() {
        for n in [0, 1, 7, 4096, i64::MAX, -1, i64::MIN] {
            assert_eq!(
                format!("{:?}", bytes(n)),
                format!("{:?}", array(n.into(), 1, 1, None))
            );
        }
    }

    #[test]
    fn elements_is_array_at_the_natural_alignment() {
        let counts = [
            0,
            1,
            2,
            3,
            7,
            4096,
            1 << 31,
            1 << 40,
            i64::MAX / 8,
            i64::MAX / 8 + 1,
            i64::MAX,
            -1,
            i64::MIN,
        ];
        let half = isize::MAX as usize / 2;
        for n in counts {
            for (size, align) in [
                (0, 1),
                (1, 1),
                (4, 4),
                (8, 8),
                (24, 8),
                (3, 1),
                (12, 4),
                (64, 64),
                (half, 8),
                (usize::MAX, 1),
            ] {
                assert_eq!(
                    format!("{:?}", elements(n, size, align)),
                    format!("{:?}", array(n.into(), size, align, None)),
                    "{n} x {size} at {align}"
                );
            }
        }
        // A zero alignment (a type without one) is taken as 1, as by `array`.
        assert_eq!(elements(3, 8, 0).unwrap(), Request { size: 24, align: 1 });
    }

    #[test]
    fn valid_requests() {
        assert_eq!(
            array(4, 4, 4, None).unwrap(),
            Request { size: 16, align: 4 }
        );
        assert_eq!(array(0, 8, 8, None).unwrap(), Request { size: 0, align: 8 });
        assert_eq!(
            array(3, 1, 1, Some(4096)).unwrap(),
            Request {
                size: 3,
                align: 4096
            }
        );
    }

    #[test]
    fn negative_and_overflowing_sizes() {
        assert!(matches!(array(-1, 4, 4, None), Err(Error::NegativeSize)));
        assert!(matches!(
            array(1 << 62, 4, 4, None),
            Err(Error::SizeOverflow)
        ));
        assert!(
            matches!(array(i64::MAX as i128, 1, 1, None).map(|r| r.size), Ok(n) if n == isize::MAX as usize)
        );
        assert!(matches!(
            array(i64::MAX as i128, 1, 16, None),
            Err(Error::SizeOverflow)
        ));
        assert!(matches!(
            array(i128::MAX, 8, 8, None),
            Err(Error::SizeOverflow)
        ));
    }

    #[test]
    fn alignments() {
        for bad in [0u128, 3, 6, 12, 1000] {
            assert!(
                matches!(check_align(bad), Err(Error::BadAlignment(_))),
                "{bad}"
            );
        }
        for good in [1u128, 2, 8, 4096, 1 << 20] {
            assert_eq!(check_align(good).unwrap() as u128, good);
        }
        assert!(matches!(check_align(1 << 100), Err(Error::SizeOverflow)));
        assert_eq!(round_up(13, 8), Some(16));
        assert_eq!(round_up(usize::MAX, 8), None);
    }
}
