//! The PyO3 layer: thin wrappers over `core`, one file per exposed concept.

pub mod allocator;
pub mod arena;
pub mod args;
pub mod checked;
pub mod cpython;
pub mod errors;
pub mod foreign_allocator;
pub mod handles;
pub mod params;
pub mod pointer;
pub mod python_allocator;
pub mod serialized;
pub mod sites;
pub mod source;
pub mod stats;
pub mod strings;
pub mod struct_view;
pub mod structs;
pub mod tracemalloc;
pub mod tracking;
pub mod types;
pub mod values;
