//! Fuzz target: see `presence_engine::journal::fuzz_scan` for the property checked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_engine::journal::fuzz_scan(data));
