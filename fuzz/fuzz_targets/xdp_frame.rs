//! Fuzz target: see `presence_engine::runtime::xdp::frame::fuzz_parse` for the property checked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| presence_engine::runtime::xdp::frame::fuzz_parse(data));
