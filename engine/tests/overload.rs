//! Overload (issue 8, promise 3; docs/reliability.md): one peer network
//! floods network B at ten times its configured rate while another sends
//! half of its own. B's appliance runs as a process with `[limits]`; two
//! test border gateways, holding o2.gb's and vodafone.de's certificates,
//! are the peers.
//!
//! Shown, over the measured seconds:
//! - the flooding peer's goodput (answers that are not `Overloaded`) is
//!   within 5% of its limit;
//! - the innocent peer keeps at least 99% of what it offered;
//! - total goodput is at least 90% of capacity (what the limits admit of
//!   the offer: the flooder's limit plus the innocent peer's offer);
//! - B's resident memory stays flat: from the fourth second on (once the
//!   duplicate window's rings have gone round) it grows by under 1 MiB;
//! - throttled queries raise no charge: B's charge records equal the status
//!   answers the peers received.
//!
//! `PRESENCE_OVERLOAD_SECONDS` (default 6) sets the measured time (at
//! least 4).

mod common;
use common::{bg_node, peer_query, table};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use presence_border::node::BgNode;
use presence_border::pki::NetworkMaterial;
use presence_codec::{encode_frame, FrameReader, Message, Msisdn, Outcome};
use presence_engine::journal;
use presence_engine::lab::{self, SpawnedAppliance, DEMO_BUDDIES};
use presence_engine::table::NumberingTable;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// What one peer got back, counted from `measure_from` on.
#[derive(Debug, Default, Clone)]
struct Tally {
    status: u64,
    not_available: u64,
    overloaded: u64,
    other: u64,
    status_total: u64,
}

/// What one peer offers: `(watcher, target)` queries, at `per_second`,
/// numbered in steps of `txid_step`.
struct Offer<'a> {
    pairs: &'a [(Msisdn, Msisdn)],
    txid_step: u64,
    per_second: u64,
}

/// Sends `offer` until `measure.1` after `start`, and counts the answers.
fn drive(
    node: &BgNode,
    b: &presence_border::NetworkName,
    offer: Offer<'_>,
    start: Instant,
    measure: (Duration, Duration),
    stop: &AtomicBool,
) -> Tally {
    let Offer {
        pairs,
        txid_step,
        per_second,
    } = offer;
    let tick = Duration::from_millis(5);
    let per_tick = per_second * 5 / 1000;
    let mut tally = Tally::default();
    let mut txid = 0u64;
    let mut next = start;
    let end = start + measure.1;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let messages: Vec<Message<'_>> = (0..per_tick)
                .map(|_| {
                    txid += txid_step;
                    let (watcher, target) = pairs[(txid / txid_step) as usize % pairs.len()];
                    peer_query(txid, watcher, target)
                })
                .collect();
            for chunk in messages.chunks(400) {
                let mut frame = Vec::new();
                encode_frame(chunk, 65_535, &mut frame).unwrap();
                let _ = node.send(0, b, frame);
            }
            next += tick;
        }
        while let Ok(inbound) = node.inbound().recv_timeout(Duration::from_micros(500)) {
            let measuring = Instant::now() >= start + measure.0;
            for message in FrameReader::new(&inbound.frame, 65_535).unwrap().flatten() {
                let Message::Answer(a) = message else {
                    continue;
                };
                let status = matches!(
                    a.outcome,
                    Outcome::Attached { .. } | Outcome::Detached { .. }
                );
                tally.status_total += u64::from(status);
                if !measuring {
                    continue;
                }
                match a.outcome {
                    _ if status => tally.status += 1,
                    Outcome::NotAvailable => tally.not_available += 1,
                    Outcome::Overloaded { .. } => tally.overloaded += 1,
                    _ => tally.other += 1,
                }
            }
        }
    }
    // Late answers still count toward the charge comparison.
    while let Ok(inbound) = node.inbound().recv_timeout(Duration::from_millis(500)) {
        for message in FrameReader::new(&inbound.frame, 65_535).unwrap().flatten() {
            if let Message::Answer(a) = message {
                tally.status_total += u64::from(matches!(
                    a.outcome,
                    Outcome::Attached { .. } | Outcome::Detached { .. }
                ));
            }
        }
    }
    tally
}

#[test]
fn a_flooding_peer_is_held_to_its_limit_and_the_innocent_peer_keeps_its_goodput() {
    let seconds: u64 = std::env::var("PRESENCE_OVERLOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let (flood_limit, innocent_limit) = (2_000u64, 2_000u64);
    let (flood_offer, innocent_offer) = (10 * flood_limit, innocent_limit / 2);
    let root = std::env::temp_dir().join(format!("overload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let n = 200;
    let (a, b) = lab::write_two_networks(&root, &table(), "o2.gb", "t-mobile.de", n, n).unwrap();
    // The innocent peer: vodafone.de, trusted by B too.
    let vodafone = NetworkMaterial::generate(&"vodafone.de".parse().unwrap()).unwrap();
    std::fs::write(
        b.dir.join("peers/vodafone.de-ca.pem"),
        &vodafone.ca.cert_pem,
    )
    .unwrap();
    let b_config = lab::write_config(&b, &a, &table(), 1, None, true).unwrap();
    let mut text = std::fs::read_to_string(&b_config).unwrap();
    text = text.replace(
        "[border]",
        &format!(
            "[limits]\npeers = {{ \"o2.gb\" = {flood_limit}, \"vodafone.de\" = {innocent_limit} }}\n\n[border]"
        ),
    );
    text.push_str(
        "\n[[border.peers]]\nnetwork = \"vodafone.de\"\nca = \"peers/vodafone.de-ca.pem\"\n",
    );
    std::fs::write(&b_config, text).unwrap();
    let mut node_b = SpawnedAppliance::start(
        Path::new(env!("CARGO_BIN_EXE_presence-gw")),
        &b_config,
        Some(&root.join("b.log")),
        |_| {},
    )
    .unwrap();
    let b_material = b.material().unwrap();
    let flooder = bg_node(&a.material().unwrap(), &b_material, Some(node_b.border));
    let innocent = bg_node(&vodafone, &b_material, Some(node_b.border));
    for node in [&flooder, &innocent] {
        assert!(node.wait_for_links(&b_material.network, 1, Duration::from_secs(10)));
    }

    // The flooder asks as A's watchers about B's subscribers that list
    // them (status answers, charged); the innocent peer as its own
    // subscribers (not buddies: NotAvailable, decided and not charged).
    let flood_pairs: Vec<(Msisdn, Msisdn)> = (0..n)
        .flat_map(|j| (0..DEMO_BUDDIES).map(move |k| ((j * 7 + k) % n, j)))
        .map(|(w, t)| (a.subscribers[w].0, b.subscribers[t].0))
        .collect();
    let world = NumberingTable::load(&table(), None).unwrap();
    let vodafone_numbers = lab::draw_numbers(&world, "vodafone.de", 50, 0xC).unwrap();
    let innocent_pairs: Vec<(Msisdn, Msisdn)> = (0..n)
        .map(|j| (vodafone_numbers[j % 50], b.subscribers[j].0))
        .collect();

    let start = Instant::now() + Duration::from_millis(100);
    // Goodput is measured after 1 s, memory after 4 s: by then B's
    // duplicate-window rings (65,536 slots per peer, allocated a chunk at a
    // time as transaction ids first reach it) have gone round once. The
    // innocent peer numbers its transactions in steps of 32, as a peer may,
    // so its ring goes round in two seconds, not sixty-five.
    let measure = (Duration::from_secs(1), Duration::from_secs(1 + seconds));
    let memory_from = Duration::from_secs(4);
    let stop = AtomicBool::new(false);
    let pid = node_b.child.id();
    let (flood, innocent_tally, rss) = std::thread::scope(|s| {
        let rss = s.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= start + memory_from {
                    samples.push(rss_kib(pid));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        });
        let f = s.spawn(|| {
            drive(
                &flooder,
                &b_material.network,
                Offer {
                    pairs: &flood_pairs,
                    txid_step: 1,
                    per_second: flood_offer,
                },
                start,
                measure,
                &stop,
            )
        });
        let i = drive(
            &innocent,
            &b_material.network,
            Offer {
                pairs: &innocent_pairs,
                txid_step: 32,
                per_second: innocent_offer,
            },
            start,
            measure,
            &stop,
        );
        let f = f.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        (f, i, rss.join().unwrap())
    });
    let secs = seconds as f64;
    let flood_goodput = (flood.status + flood.not_available) as f64 / secs;
    let innocent_goodput = (innocent_tally.status + innocent_tally.not_available) as f64 / secs;
    let capacity = (flood_limit + innocent_offer) as f64;
    let total = flood_goodput + innocent_goodput;
    let (rss_first, rss_max) = (
        rss.first().copied().unwrap_or(0),
        rss.iter().copied().max().unwrap_or(0),
    );
    let growth = rss_max - rss_first;
    assert_eq!(node_b.terminate(Duration::from_secs(10)), Some(0));
    let mut csv = Vec::new();
    let summary = journal::dump(&b.dir.join("cdr"), false, &mut csv).unwrap();
    let status_received = flood.status_total + innocent_tally.status_total;
    println!(
        "overload: {seconds} s measured; flooder offered {flood_offer}/s against {flood_limit}/s, \
         goodput {flood_goodput:.0}/s ({:.1}% of its limit), throttled {:.0}/s; innocent offered \
         {innocent_offer}/s, goodput {innocent_goodput:.0}/s ({:.2}%); total {total:.0}/s = \
         {:.1}% of capacity {capacity:.0}/s; B's RSS from the 4th second {rss_first}→{rss_max} KiB; charge records \
         {} for {status_received} status answers",
        100.0 * flood_goodput / flood_limit as f64,
        flood.overloaded as f64 / secs,
        100.0 * innocent_goodput / innocent_offer as f64,
        100.0 * total / capacity,
        summary.records,
    );
    let by_outcome: HashMap<&str, u64> = HashMap::from([
        ("flood_other", flood.other),
        ("innocent_other", innocent_tally.other),
        ("innocent_overloaded", innocent_tally.overloaded),
    ]);
    assert!(
        (flood_goodput - flood_limit as f64).abs() <= 0.05 * flood_limit as f64,
        "flooder held within 5% of its limit: {flood_goodput}"
    );
    assert!(
        innocent_goodput >= 0.99 * innocent_offer as f64,
        "innocent goodput {innocent_goodput}: {by_outcome:?}"
    );
    assert!(total >= 0.9 * capacity, "total goodput {total}");
    assert!(growth <= 1024, "memory flat: {rss:?}");
    assert_eq!(
        summary.records, status_received,
        "throttled queries raise no charge"
    );
    let _ = std::fs::remove_dir_all(&root);
}
