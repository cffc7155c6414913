//! Writes the seed corpus checked in under `fuzz/corpus/`:
//! `cargo run -p presence-codec --example write_seed_corpus -- fuzz/corpus`.
//!
//! `frame_decode` gets valid frames (every message type, a full default frame
//! of queries, a mixed batch) so the fuzzer starts deep inside the decoder; the
//! structured targets read their input through `arbitrary`, so they get
//! deterministic pseudo-random bytes of several lengths and valid streams.

use std::path::Path;

use presence_codec::samples::{one_of_each, QUERY};
use presence_codec::*;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn frame(messages: &[Message<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(messages, FRAME_LEN_ABSOLUTE_MAX, &mut out).unwrap();
    out
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let root = Path::new(&root);
    let singles = one_of_each();
    let frame_dir = root.join("frame_decode");
    for (name, message) in &singles {
        write(&frame_dir, name, &frame(&[*message]));
    }
    let all: Vec<Message<'_>> = singles.iter().map(|(_, m)| *m).collect();
    write(&frame_dir, "mixed_batch", &frame(&all));
    let queries: Vec<Message<'_>> = (0..44)
        .map(|i| Message::Query(Query { txid: i, ..QUERY }))
        .collect();
    write(&frame_dir, "full_frame_of_queries", &frame(&queries));

    let mut stream = Vec::new();
    for (_, message) in &singles {
        encode_stream_frame(&frame(&[*message]), &mut stream).unwrap();
    }
    // Deterministic pseudo-random inputs for the `arbitrary`-driven targets.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for target in ["structured_round_trip", "stream_reassembly"] {
        let dir = root.join(target);
        for (i, len) in [16usize, 64, 256, 1024, 4096].into_iter().enumerate() {
            let bytes: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            write(&dir, &format!("random_{i}_{len}"), &bytes);
        }
        write(&dir, "valid_stream", &stream);
        write(&dir, "valid_frame", &frame(&all));
    }
}
