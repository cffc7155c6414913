//! Fuzz target: see `presence_codec::fuzzing::stream_reassembly` for the property checked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_codec::fuzzing::stream_reassembly(data));
