//! The one error type of the core. The Python layer maps each variant to an
//! exception in one place (`py::errors`), adding the pointer's description.

use std::fmt;

/// Why a block is dead: the three ways an allocation stops being usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Freed by `free` (or through its owner).
    Freed,
    /// Released with its arena.
    Released,
    /// Moved by a realloc: the new block lives on.
    Reallocated,
}

impl Death {
    /// How a message says it ("freed", "released with its arena", "reallocated").
    pub fn as_str(self) -> &'static str {
        match self {
            Death::Freed => "freed",
            Death::Released => "released with its arena",
            Death::Reallocated => "reallocated",
        }
    }
}

/// Why a free was refused as an ownership mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The pointer belongs to another allocator (or arena).
    OtherOwner,
    /// Unowned view: `from_address`, a slot read, foreign memory.
    Foreign,
    /// Memory that hangs off a block a library frees (read from it, in no
    /// rsalloc block): the library's free of that block releases it.
    Dependent,
    /// Ownership was handed away with `detach()`.
    Detached,
    /// The pointer points inside a block, not at its start.
    Interior,
    /// A bump-region arena cannot give memory to another owner.
    RegionCannotDetach,
    /// A bump-region arena cannot take memory it did not carve out.
    RegionCannotAdopt,
    /// The address lies in a block rsalloc owns already (adopting it would free it twice).
    AlreadyOwned,
    /// A diagnostic block has guard bytes around it: C's `free` cannot take it.
    Guarded,
}

/// What the guard bytes of a diagnostic block showed at its free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corruption {
    /// Canary bytes overwritten before the block's start.
    pub before: usize,
    /// Canary bytes overwritten after the block's end.
    pub after: usize,
    /// The block's size.
    pub size: usize,
}

#[derive(Debug)]
/// Why the core refused an operation; the operation changed nothing.
pub enum Error {
    /// A size or count below zero (ValueError).
    NegativeSize,
    /// Alignment not a power of two (ValueError).
    BadAlignment(u128),
    /// count × size, or the size rounded to the alignment, exceeds isize::MAX (OverflowError).
    SizeOverflow,
    /// The system could not supply this many bytes (MemoryError).
    OutOfMemory(usize),
    /// A byte budget refused the request (MemoryError).
    OverLimit(OverLimit),
    /// Access through a dead pointer (UseAfterFreeError).
    UseAfterFree(Death),
    /// Free of a dead pointer (DoubleFreeError).
    DoubleFree(Death),
    /// Free by a non-owner, of a foreign, detached or interior pointer (OwnershipError).
    Ownership(Ownership),
    /// Access through address 0 (NullPointerError).
    NullPointer,
    /// Index outside the view (IndexError).
    OutOfBounds {
        /// The index asked for.
        index: i128,
        /// Elements in the view.
        len: usize,
    },
    /// Byte range outside the view (IndexError).
    RangeOutOfBounds {
        /// Where the range starts, in bytes from the view's start.
        offset: usize,
        /// Its length in bytes.
        len: usize,
        /// The view's length in bytes.
        extent: usize,
    },
    /// Allocation or registration on a released arena (ArenaClosedError).
    ArenaClosed,
    /// The block is exported through the buffer protocol and cannot move or
    /// change owner (BufferError).
    Exported,
    /// A block already pinned by as many buffer exports as its record
    /// counts (2^18 - 1, at the same time): one more is refused (BufferError).
    TooManyExports,
    /// Guard bytes around a diagnostic block were overwritten (HeapCorruptionError).
    HeapCorruption(Corruption),
    /// What an allocation function returned is no block (ValueError).
    BadBlock(BadBlock),
    /// A failure raised by the caller's own code (a Python-defined
    /// allocator's function), kept as the caller made it.
    Raised(Box<dyn Raised>),
    /// The allocator cannot do this at all: a free-only allocator asked to
    /// allocate (TypeError).
    Unsupported(&'static str),
}

/// The core's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// A failure of the caller's code that the core carries back to it
/// unchanged ([`Error::Raised`]): the core shows its message and asks
/// nothing else of it; the binding implements it for its exceptions.
pub trait Raised: fmt::Display + fmt::Debug + Send + Sync {
    /// Hands the failure back to the code that raised it: the binding makes
    /// it its pending exception again, to be taken at once.
    fn reraise(self: Box<Self>);
}

/// What an allocation function returned that rsalloc cannot use (the
/// Python layer raises `ValueError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadBlock {
    /// Not an address: negative, or the block would wrap past `isize::MAX`.
    NotAnAddress {
        /// What it returned, as Python shows it.
        value: String,
        /// The bytes asked for.
        size: usize,
    },
    /// Not aligned as requested; the block was handed back to its free function.
    Misaligned {
        /// The address it returned.
        addr: usize,
        /// The alignment asked for.
        align: usize,
    },
}

impl fmt::Display for BadBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadBlock::NotAnAddress { value, size } => write!(
                f,
                "the allocation function returned {value}, which is not the address of {size} bytes"
            ),
            BadBlock::Misaligned { addr, align } => write!(
                f,
                "the allocation function returned {addr:#x}, which is not aligned to {align} bytes \
                 (this allocator cannot honour that alignment; the block was freed again)"
            ),
        }
    }
}

impl std::error::Error for BadBlock {}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NegativeSize => write!(f, "size must not be negative"),
            Error::BadAlignment(a) => write!(f, "alignment {a} is not a power of two"),
            Error::SizeOverflow => write!(f, "size does not fit in isize"),
            Error::OutOfMemory(n) => write!(f, "out of memory allocating {n} bytes"),
            Error::OverLimit(o) => write!(f, "out of budget: {o}"),
            Error::UseAfterFree(d) => write!(f, "use after free: the block was {}", d.as_str()),
            Error::DoubleFree(d) => write!(f, "double free: the block was already {}", d.as_str()),
            Error::Ownership(o) => f.write_str(match o {
                Ownership::OtherOwner => "this allocator does not own the pointer",
                Ownership::Foreign => "the pointer is an unowned view (foreign memory)",
                Ownership::Dependent => {
                    "the pointer views memory that hangs off a block a library frees: freeing that block frees it"
                }
                Ownership::Detached => {
                    "the pointer was detached: its memory belongs to someone else"
                }
                Ownership::Interior => "the pointer points inside a block, not at its start",
                Ownership::RegionCannotDetach => {
                    "a bump-region arena cannot give its memory away; copy it out with clone()"
                }
                Ownership::AlreadyOwned => {
                    "the address lies in a live block rsalloc owns already (it would be freed twice)"
                }
                Ownership::Guarded => {
                    "a diagnostic block has guard bytes around it, which C's free() cannot take: \
                     detach a copy instead (malloc.clone(p).detach()), or allocate memory for C with malloc"
                }
                Ownership::RegionCannotAdopt => {
                    "a bump-region arena cannot adopt memory; adopt it with the allocator that made it"
                }
            }),
            Error::NullPointer => write!(f, "access through a null pointer"),
            Error::OutOfBounds { index, len } => {
                write!(f, "index {index} out of range for {len} elements")
            }
            Error::RangeOutOfBounds {
                offset,
                len,
                extent,
            } => write!(
                f,
                "byte range {offset}..{} out of bounds for {extent} bytes",
                (*offset as u128) + (*len as u128)
            ),
            Error::ArenaClosed => write!(f, "the arena was released"),
            Error::Exported => write!(
                f,
                "the block is exported through the buffer protocol and cannot move or change owner"
            ),
            Error::TooManyExports => write!(
                f,
                "the block is exported through the buffer protocol {} times at once, the most a block can be",
                (1usize << 18) - 1
            ),
            Error::HeapCorruption(c) => {
                write!(f, "heap corruption: guard bytes were overwritten (")?;
                match (c.before, c.after) {
                    (0, a) => write!(f, "{a} after the end of the {}-byte block", c.size)?,
                    (b, 0) => write!(f, "{b} before the start of the block")?,
                    (b, a) => write!(
                        f,
                        "{b} before the start and {a} after the end of the {}-byte block",
                        c.size
                    )?,
                }
                write!(f, "); the memory was returned")
            }
            Error::BadBlock(b) => write!(f, "{b}"),
            Error::Raised(e) => write!(f, "{e}"),
            Error::Unsupported(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {}
/// Whose limit refused a request (the budgets are in `budget.rs`; the
/// refusal is here so that the error type depends on nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The process-wide limit (`set_limit`).
    Process,
    /// An allocator's limit (`a.limited(n)`).
    Allocator,
    /// An arena's limit (`Arena(limit=n)`).
    Arena,
}

/// A request refused by a limit: what the message names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    /// Whose limit it was.
    pub scope: Scope,
    /// The limit, in bytes.
    pub limit: u64,
    /// The live bytes when the request was refused.
    pub live: u64,
    /// The bytes asked for.
    pub request: u64,
}

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match self.scope {
            Scope::Process => "the process limit (rsalloc.set_limit)",
            Scope::Allocator => "the allocator's limit",
            Scope::Arena => "the arena's limit",
        };
        write!(
            f,
            "a request of {} bytes would pass {whose} of {} bytes ({} bytes live)",
            self.request, self.limit, self.live
        )
    }
}
