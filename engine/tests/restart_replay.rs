//! A query replayed across a restart of B (issue 15, items 4 and 6;
//! docs/reliability.md §1 and §4d).
//!
//! B's appliance runs as a process; a test border gateway holding o2.gb's
//! certificate stands in for A's network and numbers its own transactions,
//! so it can send the very same query again after B was killed with
//! SIGKILL and started on the same configuration and CDR folder. Shown:
//!
//! - a charged query replayed after the restart is answered from the
//!   rebuilt window with the same status, and B's journal holds one
//!   charge record for it, not two;
//! - a query decided without a charge before the restart (`NotAvailable`)
//!   is not decided again after it while its stream's mark holds: it is
//!   answered `Overloaded`, and no record appears for it;
//! - a new transaction of the same stream is decided at once;
//! - queries answered without a charge add no record each: ten thousand of
//!   them grow the journal by a few marks, not by a record a query.

mod common;
use common::{peer_query as query, start_logged as start, table};

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use presence_border::node::BgNode;
use presence_border::NetworkName;
use presence_codec::{encode_frame, FrameReader, Message, Outcome};
use presence_engine::journal;
use presence_engine::lab::{self, DEMO_BUDDIES};

fn send(node: &BgNode, to: &NetworkName, messages: &[Message<'_>]) {
    for chunk in messages.chunks(400) {
        let mut frame = Vec::new();
        encode_frame(chunk, 65_535, &mut frame).unwrap();
        assert!(node.send(0, to, frame));
    }
}

/// Answers received until `want` transactions are answered or `within`
/// passes, the last answer per transaction kept.
fn answers(node: &BgNode, want: usize, within: Duration) -> HashMap<u64, Outcome> {
    let mut got = HashMap::new();
    let until = Instant::now() + within;
    while got.len() < want && Instant::now() < until {
        let Ok(inbound) = node.inbound().recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        for message in FrameReader::new(&inbound.frame, 65_535).unwrap().flatten() {
            if let Message::Answer(a) = message {
                got.insert(a.txid, a.outcome);
            }
        }
    }
    got
}

fn segment_bytes(dir: &Path) -> u64 {
    journal::segment_paths(dir, None)
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn a_replay_across_a_restart_is_neither_charged_twice_nor_decided_again() {
    let root = std::env::temp_dir().join(format!("restart-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let n = 100;
    let (a, b) = lab::write_two_networks(&root, &table(), "o2.gb", "t-mobile.de", n, n).unwrap();
    let a_material = a.material().unwrap();
    let b_material = b.material().unwrap();
    // A's network is a test border gateway that B dials (B's border port
    // changes with each start; A's stays).
    let node_a = common::bg_node(&a_material, &b_material, None);
    let b_config = lab::write_config(&b, &a, &table(), 1, Some(node_a.local_addr()), true).unwrap();
    // A window of 20 s, so the replay below surely comes within it.
    let text = std::fs::read_to_string(&b_config).unwrap();
    std::fs::write(
        &b_config,
        text.replace("[presence]", "[wa]\ndeadline_ms = 19800\n\n[presence]"),
    )
    .unwrap();
    let mut node_b = start(&b_config, &root.join("b-0.log"));
    let to = &b_material.network;
    assert!(node_a.wait_for_links(to, 1, Duration::from_secs(10)));

    // B's subscriber j lists A's subscribers (j*7+k) % n, k < 20, as
    // buddies: (j*7) % n is one, (j*7 + 50) % n is not.
    let buddy = |j: usize| (a.subscribers[(j * 7) % n].0, b.subscribers[j].0);
    let stranger = |j: usize| (a.subscribers[(j * 7 + 50) % n].0, b.subscribers[j].0);
    const { assert!(DEMO_BUDDIES < 50) };
    let (charged_txid, uncharged_txid) = (1_000u64, 1_001u64);
    let (w, t) = buddy(3);
    let (sw, st) = stranger(4);
    send(
        &node_a,
        to,
        &[query(charged_txid, w, t), query(uncharged_txid, sw, st)],
    );
    let before = answers(&node_a, 2, Duration::from_secs(10));
    let status = before[&charged_txid];
    assert!(status.shows_status(), "a buddy's status: {status:?}");
    assert_eq!(before[&uncharged_txid], Outcome::NotAvailable);

    // Ten thousand more queries answered without a charge (not buddies),
    // in frames of 400: the journal grows by marks, not by records.
    let cdr = b.dir.join("cdr");
    let bytes_before = segment_bytes(&cdr);
    let flood: Vec<Message<'_>> = (0..10_000u64)
        .map(|i| {
            let (w, t) = stranger(i as usize % n);
            query(2_000 + i, w, t)
        })
        .collect();
    send(&node_a, to, &flood);
    let flooded = answers(&node_a, 10_000, Duration::from_secs(20));
    assert_eq!(flooded.len(), 10_000);
    assert!(flooded.values().all(|o| *o == Outcome::NotAvailable));
    let growth = segment_bytes(&cdr) - bytes_before;
    println!(
        "restart_replay: 10,000 queries answered without a charge grew the journal by {growth} bytes ({:.2} per query)",
        growth as f64 / 10_000.0
    );
    assert!(
        growth <= 10_000 * 4,
        "a mark per stream per turn, not a record per query: {growth} bytes"
    );

    // kill -9, and start again on the same configuration and folder.
    node_b.child.kill().unwrap();
    node_b.child.wait().unwrap();
    let node_b = start(&b_config, &root.join("b-1.log"));
    assert!(node_a.wait_for_links(to, 1, Duration::from_secs(10)));
    let fresh_txid = 20_000u64;
    let (fw, ft) = buddy(5);
    send(
        &node_a,
        to,
        &[
            query(charged_txid, w, t),
            query(uncharged_txid, sw, st),
            query(2_500, stranger(2_500 % n).0, stranger(2_500 % n).1),
            query(fresh_txid, fw, ft),
        ],
    );
    let after = answers(&node_a, 4, Duration::from_secs(10));
    assert_eq!(
        after.get(&charged_txid),
        Some(&status),
        "the charged query is answered from the rebuilt window"
    );
    for held in [uncharged_txid, 2_500] {
        assert!(
            matches!(after.get(&held), Some(Outcome::Overloaded { retry_after_ms }) if *retry_after_ms > 0),
            "decided without a charge before the restart, held after it: {:?}",
            after.get(&held)
        );
    }
    assert!(
        after.get(&fresh_txid).is_some_and(|o| o.shows_status()),
        "a new transaction above the mark is decided at once: {:?}",
        after.get(&fresh_txid)
    );
    // Held by the marks, not by anything else that answers `Overloaded`.
    let held = "presence_role_events_total{role=\"ps\",event=\"restart_held\"}";
    let metrics = node_b.metrics.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while common::metric(metrics, held) < 2 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(common::metric(metrics, held), 2);

    let mut node_b = node_b;
    assert_eq!(node_b.terminate(Duration::from_secs(10)), Some(0));
    let mut csv = Vec::new();
    journal::dump(&cdr, true, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let records_of = |txid: u64| {
        csv.lines()
            .skip(1)
            .filter(|l| l.split(',').any(|f| f == txid.to_string()))
            .count()
    };
    assert_eq!(records_of(charged_txid), 1, "charged once: {csv}");
    assert_eq!(records_of(fresh_txid), 1);
    assert_eq!(records_of(uncharged_txid), 0);
    assert_eq!(records_of(2_500), 0);
    let _ = std::fs::remove_dir_all(&root);
}
