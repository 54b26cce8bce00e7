//! The pure-Rust core: no Python here. Everything is testable with `cargo test`.

pub mod alloc;
pub(crate) mod arena;
pub(crate) mod arena_kind;
pub mod block_cache;
pub(crate) mod budget;
pub mod error;
pub(crate) mod foreign;
pub(crate) mod guard;
pub mod index;
pub mod layout;
pub(crate) mod observer;
pub(crate) mod owner;
pub mod record;
pub mod record_ref;
pub mod region;
pub(crate) mod reserve;
pub mod serial;
pub mod stats;
pub mod sys;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub(crate) mod track;
pub(crate) mod types;
pub(crate) mod view;
