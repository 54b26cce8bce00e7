//! The PyO3 layer: thin wrappers over `core`, one file per exposed concept.

pub mod allocator;
pub mod arena;
pub mod custom;
pub mod errors;
pub mod fast;
pub mod fast_structs;
pub mod freelist;
pub mod owner;
pub mod params;
pub mod pointer;
pub mod source;
pub mod stats;
pub mod strings;
pub mod structs;
pub mod tracemalloc;
pub mod tracking;
pub mod types;
pub mod values;
