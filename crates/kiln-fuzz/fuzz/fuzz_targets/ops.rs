//! libFuzzer entry point of kiln-fuzz's `ops` target.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::ops::run(data));
