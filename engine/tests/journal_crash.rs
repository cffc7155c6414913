//! Charge records survive `kill -9` (issue 8, promise 1; docs/reliability.md).
//!
//! Two `presence-gw run` processes, A (o2.gb) and B (t-mobile.de). A's
//! watchers ask about B's subscribers without pause while B's appliance is
//! killed with SIGKILL at seeded random moments and started again on the
//! same configuration and CDR directory. At the end, what A's watchers
//! received is compared with B's journal:
//!
//! - **lost**: answers showing B's status with no charge record behind
//!   them (per watcher and target pair) — must be 0;
//! - **duplicates**: a transaction journaled twice — must be 0.
//!
//! Records for queries whose answer died with B (A timed out) are allowed:
//! at most one per query, and they are counted.
//!
//! `PRESENCE_CRASH_RUNS` (default 3) kills per test and
//! `PRESENCE_CRASH_SEED` (default 8) choose the run; the long campaign is
//! `PRESENCE_CRASH_RUNS=40 cargo test --release -p presence-engine --test
//! journal_crash -- --nocapture`.

mod common;
use common::{env_u64, start_logged as start, table};

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use presence_codec::{Msisdn, Outcome};
use presence_engine::journal;
use presence_engine::lab::{self, DeviceClient, SpawnedAppliance, DEMO_BUDDIES};
use presence_engine::rng::SplitMix64;

#[test]
fn kill_9_of_b_under_load_loses_no_charge_record_and_duplicates_none() {
    kill_9_of_b_under_load("journal-crash", None);
}

/// The same with segments of 64 KiB (the smallest allowed): B rotates
/// every few hundred records, the worker opening each new segment and the
/// syncer syncing the old one, the new header and the directory behind it,
/// and is killed in whatever state that leaves.
#[test]
fn kill_9_while_rotating_segments_loses_and_duplicates_nothing() {
    kill_9_of_b_under_load("journal-crash-rotating", Some(64 << 10));
}

fn kill_9_of_b_under_load(tag: &str, segment_max_bytes: Option<u64>) {
    let runs = env_u64("PRESENCE_CRASH_RUNS", 3);
    // Queries sent between looks for answers: more where segments are to
    // rotate many times.
    let per_turn = if segment_max_bytes.is_some() { 40 } else { 10 };
    let mut rng = SplitMix64::new(env_u64("PRESENCE_CRASH_SEED", 8));
    let root = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let n = 200;
    let (a, b) = lab::write_two_networks(&root, &table(), "o2.gb", "t-mobile.de", n, n).unwrap();
    let b_segments = |config: &Path| {
        if let Some(bytes) = segment_max_bytes {
            let text = std::fs::read_to_string(config).unwrap();
            let cdr = "[cdr]\n";
            assert!(text.contains(cdr));
            let text = text.replace(cdr, &format!("{cdr}segment_max_bytes = {bytes}\n"));
            std::fs::write(config, text).unwrap();
        }
    };
    let b_config = lab::write_config(&b, &a, &table(), 1, None, false).unwrap();
    b_segments(&b_config);
    let mut node_b = start(&b_config, &root.join("b-0.log"));
    let a_config = lab::write_config(&a, &b, &table(), 1, Some(node_b.border), false).unwrap();
    let node_a = start(&a_config, &root.join("a.log"));
    // B knows A's address from now on, so a restarted B dials A itself.
    lab::write_config(&b, &a, &table(), 1, Some(node_a.border), false).unwrap();
    b_segments(&b_config);
    node_b.signal(libc::SIGHUP).unwrap();

    // Every permitted (watcher, target) pair: B's subscriber j is watched
    // by A's subscribers (j*7+k) % n, k < 20.
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|j| (0..DEMO_BUDDIES).map(move |k| ((j * 7 + k) % n, j)))
        .collect();
    let mut client = DeviceClient::new(node_a.client).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (w, t) = pairs[0];
        let (m, c) = &a.subscribers[w];
        client
            .query(&[(*m, c.as_str(), b.subscribers[t].0)])
            .unwrap();
        let got = client.answers(1, Duration::from_millis(300));
        if got
            .iter()
            .any(|x| matches!(x.outcome, Outcome::Detached { .. }))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the border link never came up");
    }

    // Device request id → (watcher, target); what A's devices were told.
    let mut asked: HashMap<u64, (Msisdn, Msisdn)> = HashMap::new();
    let mut told: HashMap<u64, Outcome> = HashMap::new();
    let mut next_pair = 1usize;
    let mut extra_answers = 0u64;
    let mut receive = |client: &mut DeviceClient, told: &mut HashMap<u64, Outcome>, wait| {
        for answer in client.answers(usize::MAX, wait) {
            if told.insert(answer.txid, answer.outcome).is_some() {
                extra_answers += 1;
            }
        }
    };
    for run in 0..runs {
        let kill_at = Instant::now() + Duration::from_millis(200 + rng.below(800));
        let run_until = kill_at + Duration::from_millis(2_500);
        let mut killed = false;
        while Instant::now() < run_until {
            let batch: Vec<(Msisdn, &str, Msisdn)> = (0..per_turn)
                .map(|_| {
                    let (w, t) = pairs[next_pair % pairs.len()];
                    next_pair += 1;
                    let (m, c) = &a.subscribers[w];
                    (*m, c.as_str(), b.subscribers[t].0)
                })
                .collect();
            let ids = client.query(&batch).unwrap();
            for (id, (w, _, t)) in ids.into_iter().zip(&batch) {
                asked.insert(id, (*w, *t));
            }
            receive(&mut client, &mut told, Duration::from_millis(5));
            if !killed && Instant::now() >= kill_at {
                node_b.child.kill().unwrap();
                node_b.child.wait().unwrap();
                node_b = start(&b_config, &root.join(format!("b-{}.log", run + 1)));
                killed = true;
            }
        }
    }
    // Everything in flight ends by A's deadline (1.5 s).
    receive(&mut client, &mut told, Duration::from_secs(3));
    if segment_max_bytes.is_some() {
        // The journal's settings apply at start: a reload that changes
        // them is refused and says so (B runs on as it was).
        let text = std::fs::read_to_string(&b_config).unwrap();
        std::fs::write(
            &b_config,
            text.replace("segment_max_bytes = ", "segment_max_bytes = 1"),
        )
        .unwrap();
        node_b.signal(libc::SIGHUP).unwrap();
        let log = root.join(format!("b-{runs}.log"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("cdr.group_commit_*: cannot change while running")
        {
            assert!(
                Instant::now() < deadline,
                "the refused reload was not logged"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(node_b.terminate(Duration::from_secs(10)), Some(0));
    let mut node_a = node_a;
    assert_eq!(node_a.terminate(Duration::from_secs(10)), Some(0));

    // B's journal, every decision.
    let mut csv = Vec::new();
    let summary = journal::dump(&b.dir.join("cdr"), true, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let mut transactions = HashSet::new();
    let mut duplicates = 0u64;
    let mut records = PairCounts::new();
    let mut charge_records = 0u64;
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        // worker,seq,at,origin,txid,watcher,target,reply_node,ps,outcome,charged
        if !transactions.insert((f[3].to_string(), f[4].to_string())) {
            duplicates += 1;
        }
        if f[10] == "true" {
            charge_records += 1;
            *records
                .entry((f[5].to_string(), f[6].to_string()))
                .or_default() += 1;
        }
    }
    // (Answers to the warm-up queries are not counted.)
    told.retain(|id, _| asked.contains_key(id));
    let answers: Vec<lab::DeviceAnswer> = told
        .iter()
        .map(|(&txid, &outcome)| lab::DeviceAnswer {
            txid,
            target: asked[&txid].1,
            outcome,
        })
        .collect();
    let (shown, outcomes) = status_by_pair(&asked, &answers);
    let lost: u64 = shown
        .iter()
        .map(|(pair, n)| n.saturating_sub(records.get(pair).copied().unwrap_or(0)))
        .sum();
    let answered_status: u64 = shown.values().sum();
    let torn: usize = (0..=runs)
        .map(|i| {
            std::fs::read_to_string(root.join(format!("b-{i}.log")))
                .unwrap_or_default()
                .matches("torn tail")
                .count()
        })
        .sum();
    println!(
        "{tag}: kill -9 runs {runs}: queries {}, answered {}, shown status {answered_status}, \
         charge records {charge_records}, lost {lost}, duplicates {duplicates}, \
         records without a status answer {}, torn tails cut {torn}, outcomes {outcomes:?}, \
         answers beyond one {extra_answers}, segments {}",
        asked.len(),
        told.len(),
        charge_records.saturating_sub(answered_status),
        summary.segments,
    );
    if segment_max_bytes.is_some() {
        assert!(
            summary.segments >= 3 * (runs as usize + 1),
            "B rotated within its runs: {} segments",
            summary.segments
        );
    }
    assert!(
        summary.damage.is_empty(),
        "after recovery: {:?}",
        summary.damage
    );
    assert_eq!(lost, 0, "status shown without a charge record");
    assert_eq!(duplicates, 0, "a transaction journaled twice");
    assert_eq!(extra_answers, 0, "a query answered twice");
    assert_eq!(told.len(), asked.len(), "every query ends with one outcome");
    assert!(answered_status > 0);
    let _ = std::fs::remove_dir_all(&root);
}

/// Counts per (watcher, target), as the journal dump prints the numbers.
type PairCounts = HashMap<(String, String), u64>;

/// Status answers A's devices got, per (watcher, target), and the outcomes.
fn status_by_pair(
    asked: &HashMap<u64, (Msisdn, Msisdn)>,
    told: &[lab::DeviceAnswer],
) -> (PairCounts, HashMap<&'static str, u64>) {
    let mut shown = HashMap::new();
    let mut outcomes = HashMap::new();
    for answer in told {
        let Some((w, t)) = asked.get(&answer.txid) else {
            continue;
        };
        let name = match answer.outcome {
            Outcome::Error(presence_codec::ErrorReason::ChargingUnavailable) => {
                "charging_unavailable"
            }
            ref o => o.class().name(),
        };
        *outcomes.entry(name).or_default() += 1;
        if matches!(
            answer.outcome,
            Outcome::Attached { .. } | Outcome::Detached { .. }
        ) {
            *shown.entry((w.to_string(), t.to_string())).or_default() += 1;
        }
    }
    (shown, outcomes)
}

#[test]
fn a_full_disk_refuses_chargeable_queries_and_never_answers_without_a_record() {
    use std::os::unix::process::CommandExt;
    let root = std::env::temp_dir().join(format!("journal-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let n = 100;
    let (a, b) = lab::write_two_networks(&root, &table(), "o2.gb", "t-mobile.de", n, n).unwrap();
    let b_config = lab::write_config(&b, &a, &table(), 1, None, false).unwrap();
    // B's files may not grow past 4 KiB: its journal segments fill after
    // about fifty records, as on a full disk (EFBIG instead of ENOSPC).
    let limited = |command: &mut std::process::Command| {
        // SAFETY: setrlimit and signal are async-signal-safe and touch only
        // the child's own limits and dispositions, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 4096,
                    rlim_max: 4096,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    };
    let binary = Path::new(env!("CARGO_BIN_EXE_presence-gw"));
    let mut node_b = SpawnedAppliance::start(binary, &b_config, None, limited).unwrap();
    let a_config = lab::write_config(&a, &b, &table(), 1, Some(node_b.border), false).unwrap();
    let mut node_a = start(&a_config, &root.join("a.log"));

    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|j| (0..DEMO_BUDDIES).map(move |k| ((j * 7 + k) % n, j)))
        .collect();
    let mut client = DeviceClient::new(node_a.client).unwrap();
    let mut asked = HashMap::new();
    let mut told = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    let mut next = 0usize;
    while Instant::now() < until {
        let batch: Vec<(Msisdn, &str, Msisdn)> = (0..10)
            .map(|_| {
                let (w, t) = pairs[next % pairs.len()];
                next += 1;
                let (m, c) = &a.subscribers[w];
                (*m, c.as_str(), b.subscribers[t].0)
            })
            .collect();
        for (id, (w, _, t)) in client.query(&batch).unwrap().into_iter().zip(&batch) {
            asked.insert(id, (*w, *t));
        }
        told.extend(client.answers(usize::MAX, Duration::from_millis(10)));
    }
    told.extend(client.answers(usize::MAX, Duration::from_secs(2)));
    assert_eq!(node_b.terminate(Duration::from_secs(10)), Some(0));
    assert_eq!(node_a.terminate(Duration::from_secs(10)), Some(0));

    let mut csv = Vec::new();
    let summary = journal::dump(&b.dir.join("cdr"), false, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let mut records = PairCounts::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        *records
            .entry((f[5].to_string(), f[6].to_string()))
            .or_default() += 1;
    }
    let (shown, outcomes) = status_by_pair(&asked, &told);
    let lost: u64 = shown
        .iter()
        .map(|(pair, n)| n.saturating_sub(records.get(pair).copied().unwrap_or(0)))
        .sum();
    let refused = outcomes.get("charging_unavailable").copied().unwrap_or(0);
    println!(
        "full disk: queries {}, outcomes {outcomes:?}, charge records {}, segments {}, \
         damage {:?}, lost {lost}",
        asked.len(),
        summary.records,
        summary.segments,
        summary.damage
    );
    assert_eq!(lost, 0, "status shown without a durable charge record");
    let shown_total: u64 = shown.values().sum();
    assert_eq!(
        summary.records, shown_total,
        "no record charges an answer that was refused (the new segments void them)"
    );
    assert!(refused > 0, "the full disk refused nothing: {outcomes:?}");
    assert!(
        summary.records > 0,
        "nothing was charged before the disk filled"
    );
    assert!(
        summary.segments > 1,
        "charging came back on a new segment once one could be opened"
    );
    // The operator's view: `presence-gw cdr dump` prints the same records,
    // names the torn tails on stderr and exits 1 for the damage.
    let dumped = std::process::Command::new(binary)
        .args(["cdr", "dump"])
        .arg(b.dir.join("cdr"))
        .output()
        .unwrap();
    assert_eq!(dumped.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&dumped.stdout), csv);
    let stderr = String::from_utf8_lossy(&dumped.stderr);
    assert!(stderr.contains("torn tail"), "{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}
