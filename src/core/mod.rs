//! The pure-Rust core: no Python here. Everything is testable with `cargo test`.

pub mod alloc;
pub mod arena;
pub mod arena_kind;
pub mod block_cache;
pub mod budget;
pub mod error;
pub mod foreign;
pub mod guard;
pub mod index;
pub mod layout;
pub mod observer;
pub mod owner;
pub mod record;
pub mod record_ref;
pub mod region;
pub mod reserve;
pub mod serial;
pub mod stats;
pub mod sys;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod track;
pub mod types;
pub mod view;
