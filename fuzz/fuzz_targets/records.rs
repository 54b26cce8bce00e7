#![no_main]
// The record's state machine driven by a byte string (checks in the driver).
libfuzzer_sys::fuzz_target!(|data: &[u8]| rsalloc::core::testkit::drive::records(data));
