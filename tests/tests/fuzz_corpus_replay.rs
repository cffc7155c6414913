//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same harness functions the fuzz targets call, so every input the fuzzer
//! ever kept (and every crash it found, once fixed and added) is a regression
//! test on stable Rust, in CI, without cargo-fuzz.

use std::path::{Path, PathBuf};

use presence_codec::fuzzing;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

fn replay(target: &str, harness: fn(&[u8])) -> usize {
    let files = corpus(target);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", file.display());
    }
    files.len()
}

#[test]
fn frame_decode_corpus_holds() {
    let n = replay("frame_decode", fuzzing::frame_decode);
    eprintln!("frame_decode: {n} inputs replayed");
}

#[test]
fn structured_round_trip_corpus_holds() {
    let n = replay("structured_round_trip", fuzzing::structured_round_trip);
    eprintln!("structured_round_trip: {n} inputs replayed");
}

#[test]
fn stream_reassembly_corpus_holds() {
    let n = replay("stream_reassembly", fuzzing::stream_reassembly);
    eprintln!("stream_reassembly: {n} inputs replayed");
}

#[test]
fn bg_inbound_corpus_holds() {
    let n = replay("bg_inbound", presence_border::fuzzing::bg_inbound);
    eprintln!("bg_inbound: {n} inputs replayed");
}

#[test]
fn journal_scan_corpus_holds() {
    let n = replay("journal_scan", presence_engine::journal::fuzz_scan);
    eprintln!("journal_scan: {n} inputs replayed");
}

/// Whether a corpus file is a named seed rather than an input the fuzzer kept
/// (libFuzzer names those by the SHA-1 of their content: 40 hex digits).
fn is_named_seed(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    !(name.len() == 40 && name.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn journal_scan_seeds_are_segments_with_records() {
    // Whole, torn, damaged in the middle, and voiding: the fuzzer starts
    // from every path of the reader.
    let seeds: Vec<PathBuf> = corpus("journal_scan")
        .into_iter()
        .filter(|p| is_named_seed(p))
        .collect();
    assert!(seeds.len() >= 4);
    for file in seeds {
        let data = std::fs::read(&file).unwrap();
        let scan = presence_engine::journal::scan_segment(&file, &data).unwrap();
        assert!(!scan.entries.is_empty(), "{}", file.display());
    }
}

#[test]
fn frame_decode_seeds_are_accepted_frames() {
    // The named seeds are valid frames, so the fuzzer starts deep in the decoder.
    let seeds: Vec<PathBuf> = corpus("frame_decode")
        .into_iter()
        .filter(|p| is_named_seed(p))
        .collect();
    assert!(seeds.len() >= 14, "one seed per message type at least");
    for file in seeds {
        let data = std::fs::read(&file).unwrap();
        let accepted = presence_codec::FrameReader::for_each_accepted(
            &data,
            presence_codec::FRAME_LEN_ABSOLUTE_MAX,
            |_| {},
        );
        assert!(accepted.is_ok(), "{}: {accepted:?}", file.display());
    }
}

#[test]
fn xdp_frame_corpus_holds() {
    let n = replay(
        "xdp_frame",
        presence_engine::runtime::xdp::frame::fuzz_parse,
    );
    eprintln!("xdp_frame: {n} inputs replayed");
}
