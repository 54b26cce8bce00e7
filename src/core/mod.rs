//! The pure-Rust core: no Python here. Everything is testable with `cargo test`.

pub mod alloc;
pub mod error;
pub mod layout;
pub mod record;
pub mod stats;
pub mod sys;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod types;
