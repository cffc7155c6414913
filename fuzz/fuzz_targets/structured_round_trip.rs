//! Fuzz target: see `presence_codec::fuzzing::structured_round_trip` for the property checked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_codec::fuzzing::structured_round_trip(data));
