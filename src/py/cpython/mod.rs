//! The fence: everything that reads or writes CPython's or PyO3's internals
//! (object layouts, type slots, int digits) to go faster than the plain
//! PyO3 route, and nothing else. Glue files use the primitives here
//! (`freelist`, `view_objects`); the entry points (`fast`, `fast_structs`)
//! replace PyO3's generated slots and call the glue.

pub mod fast;
pub mod fast_structs;
pub mod freelist;
pub mod view_objects;
