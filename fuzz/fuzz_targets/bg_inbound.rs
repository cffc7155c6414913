//! Fuzz target: see `presence_border::fuzzing::bg_inbound` for the property checked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_border::fuzzing::bg_inbound(data));
