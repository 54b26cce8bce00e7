#![no_main]
// layout::array on arbitrary counts, sizes and alignments (checks in the driver).
libfuzzer_sys::fuzz_target!(|data: &[u8]| rsalloc::core::testkit::drive::layout(data));
