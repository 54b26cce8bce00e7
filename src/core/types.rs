//! Element kinds: how a slot of native memory is read and written.

use std::ffi::CStr;

/// The scalar kinds rsalloc reads and writes itself. `Opaque` covers
/// aggregates (ctypes structures, unions, arrays) that only have a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
    Bool,
    IntPtr,
    Size,
    /// A pointer-sized slot holding an address.
    Ptr,
    /// No size: `Pointer[Void]` is an address with no element access.
    Void,
    Opaque,
}

/// A value read from or written to a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Addr(usize),
}

impl Kind {
    /// Size in bytes (C `sizeof`); 0 for Void and Opaque (whose size is the type's).
    pub const fn size(self) -> usize {
        use Kind::*;
        match self {
            I8 | U8 | Bool => 1,
            I16 | U16 => 2,
            I32 | U32 | F32 => 4,
            I64 | U64 | F64 => 8,
            IntPtr | Size | Ptr => std::mem::size_of::<usize>(),
            Void | Opaque => 0,
        }
    }

    /// The PEP 3118 struct format of one element. Pointer slots are shown as
    /// `N` (size_t): numpy does not accept `P`.
    pub const fn format(self) -> &'static CStr {
        use Kind::*;
        match self {
            I8 => c"b",
            I16 => c"h",
            I32 => c"i",
            I64 => c"q",
            U8 | Void | Opaque => c"B",
            U16 => c"H",
            U32 => c"I",
            U64 => c"Q",
            F32 => c"f",
            F64 => c"d",
            Bool => c"?",
            IntPtr => c"n",
            Size | Ptr => c"N",
        }
    }

    /// Elements read and written as plain numbers (ints, floats, bools): no
    /// Python objects beyond the number, no user code.
    pub const fn is_number(self) -> bool {
        !matches!(self, Kind::Ptr | Kind::Void | Kind::Opaque)
    }

    /// The inclusive range of an integer kind, as i128.
    pub const fn int_range(self) -> Option<(i128, i128)> {
        use Kind::*;
        Some(match self {
            I8 => (i8::MIN as i128, i8::MAX as i128),
            I16 => (i16::MIN as i128, i16::MAX as i128),
            I32 => (i32::MIN as i128, i32::MAX as i128),
            I64 | IntPtr => (i64::MIN as i128, i64::MAX as i128),
            U8 => (0, u8::MAX as i128),
            U16 => (0, u16::MAX as i128),
            U32 => (0, u32::MAX as i128),
            U64 | Size => (0, u64::MAX as i128),
            _ => return None,
        })
    }

    /// Reads one element at `addr`.
    ///
    /// # Safety
    /// `addr` is readable for `self.size()` bytes. No alignment is required.
    #[inline]
    pub unsafe fn read(self, addr: usize) -> Value {
        use Kind::*;
        // SAFETY: caller's contract: `addr` is readable for the kind's size.
        unsafe {
            match self {
                I8 => Value::Int(read_at::<i8>(addr) as i64),
                I16 => Value::Int(read_at::<i16>(addr) as i64),
                I32 => Value::Int(read_at::<i32>(addr) as i64),
                I64 | IntPtr => Value::Int(read_at::<i64>(addr)),
                U8 => Value::UInt(read_at::<u8>(addr) as u64),
                U16 => Value::UInt(read_at::<u16>(addr) as u64),
                U32 => Value::UInt(read_at::<u32>(addr) as u64),
                U64 | Size => Value::UInt(read_at::<u64>(addr)),
                F32 => Value::Float(read_at::<f32>(addr) as f64),
                F64 => Value::Float(read_at::<f64>(addr)),
                Bool => Value::Bool(read_at::<u8>(addr) != 0),
                Ptr => Value::Addr(read_at::<usize>(addr)),
                Void | Opaque => unreachable!("no element access for {self:?}"),
            }
        }
    }

    /// Writes one element at `addr`. The value must already be in range
    /// (the Python layer checks); integers are truncated to the slot.
    ///
    /// # Safety
    /// `addr` is writable for `self.size()` bytes.
    #[inline]
    pub unsafe fn write(self, addr: usize, v: Value) {
        use Kind::*;
        let bits: u64 = match v {
            Value::Int(i) => i as u64,
            Value::UInt(u) => u,
            Value::Bool(b) => b as u64,
            Value::Addr(a) => a as u64,
            Value::Float(f) => {
                // SAFETY: caller's contract.
                unsafe {
                    match self {
                        F32 => write_at(addr, f as f32),
                        _ => write_at(addr, f),
                    }
                }
                return;
            }
        };
        // SAFETY: caller's contract.
        unsafe {
            match self.size() {
                1 => write_at(addr, bits as u8),
                2 => write_at(addr, bits as u16),
                4 => write_at(addr, bits as u32),
                _ => write_at(addr, bits),
            }
        }
    }
}

/// The `T` at `addr`: an address by contract, whose provenance was exposed
/// when it was handed out (docs/architecture.md, "Provenance").
///
/// # Safety
/// `addr` is readable for `size_of::<T>()` bytes; no alignment is required.
#[inline(always)]
unsafe fn read_at<T>(addr: usize) -> T {
    // SAFETY: the caller's contract; read_unaligned accepts any address.
    unsafe { std::ptr::with_exposed_provenance::<T>(addr).read_unaligned() }
}

/// Writes `v` at `addr` (see [`read_at`]).
///
/// # Safety
/// `addr` is writable for `size_of::<T>()` bytes; no alignment is required.
#[inline(always)]
unsafe fn write_at<T>(addr: usize, v: T) {
    // SAFETY: the caller's contract; write_unaligned accepts any address.
    unsafe { std::ptr::with_exposed_provenance_mut::<T>(addr).write_unaligned(v) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut buf = [0u8; 16];
        let a = buf.as_mut_ptr().expose_provenance() + 1; // unaligned on purpose
        let cases = [
            (Kind::I8, Value::Int(-5)),
            (Kind::I16, Value::Int(-30000)),
            (Kind::I32, Value::Int(i32::MIN as i64)),
            (Kind::I64, Value::Int(i64::MIN)),
            (Kind::U8, Value::UInt(255)),
            (Kind::U16, Value::UInt(65535)),
            (Kind::U32, Value::UInt(u32::MAX as u64)),
            (Kind::U64, Value::UInt(u64::MAX)),
            (Kind::F32, Value::Float(1.5)),
            (Kind::F64, Value::Float(-2.25)),
            (Kind::Bool, Value::Bool(true)),
            (Kind::Ptr, Value::Addr(0xdead_beef)),
        ];
        for (k, v) in cases {
            // SAFETY: `a` points at 8 writable bytes aligned for every kind (the buffer above).
            unsafe {
                k.write(a, v);
                assert_eq!(k.read(a), v, "{k:?}");
            }
        }
    }

    #[test]
    fn sizes_and_formats() {
        assert_eq!(Kind::Ptr.size(), 8);
        assert_eq!(Kind::F32.format(), c"f");
        assert_eq!(Kind::U16.int_range(), Some((0, 65535)));
        assert_eq!(Kind::F64.int_range(), None);
    }
}
