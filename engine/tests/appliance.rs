//! Two `presence-gw run` processes, networks A (o2.gb) and B (t-mobile.de),
//! on loopback with generated configurations and certificates: devices of A
//! ask about subscribers of B over UDP, through both appliances and their
//! mutually authenticated border gateways.

mod common;
use common::{start, table};

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use presence_codec::{Msisdn, Outcome};
use presence_engine::lab::{self, DemoNetwork, DeviceAnswer, DeviceClient, DEMO_BUDDIES};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("appliance-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asks each `(watcher, target)` once and returns the answers by target.
fn ask(client: &mut DeviceClient, a: &DemoNetwork, asks: &[(usize, Msisdn)]) -> Vec<DeviceAnswer> {
    let queries: Vec<(Msisdn, &str, Msisdn)> = asks
        .iter()
        .map(|(w, t)| (a.subscribers[*w].0, a.subscribers[*w].1.as_str(), *t))
        .collect();
    let mut answers = Vec::new();
    for chunk in queries.chunks(30) {
        client.query(chunk).unwrap();
        answers.extend(client.answers(chunk.len(), Duration::from_secs(5)));
    }
    answers
}

/// B's subscriber `j` is watched by A's subscribers `(j*7+k) % n`, k < 20.
fn buddy_of(j: usize, n: usize) -> usize {
    (j * 7) % n
}

fn not_buddy_of(j: usize, n: usize) -> usize {
    let buddies: HashSet<usize> = (0..DEMO_BUDDIES).map(|k| (j * 7 + k) % n).collect();
    (0..n).find(|w| !buddies.contains(w)).unwrap()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// B's charge records, as `presence-gw cdr dump` prints them (header cut).
fn cdr_lines(dir: &Path) -> Vec<String> {
    let mut csv = Vec::new();
    let summary = presence_engine::journal::dump(&dir.join("cdr"), false, &mut csv).unwrap();
    assert!(summary.damage.is_empty(), "{:?}", summary.damage);
    let csv = String::from_utf8(csv).unwrap();
    csv.lines().skip(1).map(str::to_string).collect()
}

#[test]
fn two_networks_answer_charge_reload_and_stop_cleanly() {
    let root = scratch("two");
    let (a, b) =
        lab::write_two_networks(&root, &table(), "o2.gb", "t-mobile.de", 100, 100).unwrap();
    let b_config = lab::write_config(&b, &a, &table(), 2, None, false).unwrap();
    let mut node_b = start(&b_config);
    let a_config = lab::write_config(&a, &b, &table(), 2, Some(node_b.border), true).unwrap();
    // A's devices are served through io_uring, B's with recvmmsg: both
    // backends carry the whole story below.
    let a_text = std::fs::read_to_string(&a_config)
        .unwrap()
        .replace("backend = \"auto\"", "backend = \"uring\"");
    assert!(a_text.contains("backend = \"uring\""), "{a_text}");
    std::fs::write(&a_config, &a_text).unwrap();
    let mut node_a = start(&a_config);
    // B learns A's address on a reload: both sides dial now.
    lab::write_config(&b, &a, &table(), 2, Some(node_a.border), false).unwrap();
    node_b.signal(libc::SIGHUP).unwrap();

    // B's devices: even subscribers are attached.
    let mut b_devices = DeviceClient::new(node_b.client).unwrap();
    let attached: Vec<_> = b.subscribers.iter().step_by(2).cloned().collect();
    b_devices.publish_attached(&attached).unwrap();

    let mut client = DeviceClient::new(node_a.client).unwrap();
    let n = a.subscribers.len();
    // The link may take a moment: retry the first question until answered.
    let first = (buddy_of(0, n), b.subscribers[0].0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answers = ask(&mut client, &a, &[first]);
        if answers
            .iter()
            .any(|x| matches!(x.outcome, Outcome::Attached { .. }))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no attached answer: {answers:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Permitted watchers see the status B's devices published.
    let permitted: Vec<(usize, Msisdn)> = (0..40)
        .map(|j| (buddy_of(j, n), b.subscribers[j].0))
        .collect();
    let answers = ask(&mut client, &a, &permitted);
    assert_eq!(answers.len(), 40, "every query answered once: {answers:?}");
    for answer in &answers {
        let j = b
            .subscribers
            .iter()
            .position(|(m, _)| *m == answer.target)
            .unwrap();
        if j % 2 == 0 {
            assert!(
                matches!(answer.outcome, Outcome::Attached { .. }),
                "{answer:?}"
            );
        } else {
            assert!(
                matches!(answer.outcome, Outcome::Detached { .. }),
                "{answer:?}"
            );
        }
    }
    let mut charged = 1 + answers.len();

    // A stranger claiming one of A's subscribers without the credential is
    // refused, and cannot redirect that subscriber's answers to itself.
    let (victim, _) = a.subscribers[buddy_of(2, n)].clone();
    let mut stranger = DeviceClient::new(node_a.client).unwrap();
    stranger
        .query(&[(victim, "not-the-secret", b.subscribers[2].0)])
        .unwrap();
    let refused = stranger.answers(1, Duration::from_secs(5));
    assert_eq!(refused.len(), 1);
    assert!(
        matches!(
            refused[0].outcome,
            Outcome::Error(presence_codec::ErrorReason::Unauthenticated)
        ),
        "{refused:?}"
    );
    let answers = ask(&mut client, &a, &[(buddy_of(2, n), b.subscribers[2].0)]);
    assert_eq!(
        answers.len(),
        1,
        "the subscriber's own device gets its answer"
    );
    assert!(stranger.answers(1, Duration::from_millis(300)).is_empty());
    charged += 1;

    // Watchers not on the list, and numbers B does not have, learn nothing.
    let refused: Vec<(usize, Msisdn)> = (0..10)
        .map(|j| (not_buddy_of(j, n), b.subscribers[j].0))
        .collect();
    let answers = ask(&mut client, &a, &refused);
    assert_eq!(answers.len(), 10);
    assert!(
        answers.iter().all(|x| x.outcome == Outcome::NotAvailable),
        "{answers:?}"
    );
    let stranger: Msisdn = format!("{}", b.subscribers[0].0.as_u64() + 1)
        .parse()
        .unwrap();
    if !b.subscribers.iter().any(|(m, _)| *m == stranger) {
        let answers = ask(&mut client, &a, &[(0, stranger)]);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].outcome, Outcome::NotAvailable);
    }

    // Move B's subscriber 0 to the other presence server (a more specific
    // HSS line) and reload B only: still answered, with its status.
    let moved = b.subscribers[0].0;
    let mut hss = std::fs::read_to_string(b.dir.join("hss.csv")).unwrap();
    let current = hss
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .filter(|(p, _)| moved.to_string().starts_with(p))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, ps)| ps.to_string())
        .unwrap();
    let other = if current == "0" { 1 } else { 0 };
    hss.push_str(&format!("{moved},{other}\n"));
    std::fs::write(b.dir.join("hss.csv"), hss).unwrap();
    node_b.signal(libc::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let answers = ask(&mut client, &a, &[(buddy_of(0, n), moved)]);
    assert_eq!(answers.len(), 1);
    assert!(
        matches!(answers[0].outcome, Outcome::Attached { .. }),
        "{answers:?}"
    );
    charged += 1;
    assert_eq!(
        std::fs::read_to_string(&a_config).unwrap(),
        a_text,
        "A untouched"
    );

    // SIGHUP during traffic drops nothing.
    let stream: Vec<(usize, Msisdn)> = (0..300)
        .map(|i| (buddy_of(i % 100, n), b.subscribers[i % 100].0))
        .collect();
    let mut answered = 0;
    for (round, chunk) in stream.chunks(60).enumerate() {
        if round % 2 == 1 {
            node_b.signal(libc::SIGHUP).unwrap();
            node_a.signal(libc::SIGHUP).unwrap();
        }
        let answers = ask(&mut client, &a, chunk);
        assert!(
            answers.iter().all(|x| matches!(
                x.outcome,
                Outcome::Attached { .. } | Outcome::Detached { .. }
            )),
            "{answers:?}"
        );
        answered += answers.len();
    }
    assert_eq!(answered, 300);
    charged += answered;

    // A's metrics tell the same story.
    std::thread::sleep(Duration::from_millis(300));
    let metrics = http_get(node_a.metrics.expect("A serves metrics"), "/metrics");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert!(value("presence_wa_answers_total{outcome=\"attached\"}") >= 20);
    assert!(value("presence_wa_answers_total{outcome=\"not_available\"}") >= 10);
    assert!(value("presence_role_events_total{role=\"ogps\",event=\"forwarded\"}") >= 300);
    assert!(value("presence_peer_events_total{peer=\"t-mobile.de\",event=\"frames_out\"}") >= 1);
    assert!(value("presence_peer_events_total{peer=\"t-mobile.de\",event=\"answers_in\"}") >= 300);
    // One request in 16 is timed (by device request id).
    assert!(value("presence_answer_latency_seconds_count") >= 300 / 16);
    assert!(value("presence_bg_links_up") >= 1);
    assert_eq!(value("presence_drops_total{reason=\"bad_datagram\"}"), 0);
    for worker in 0..2 {
        assert_eq!(
            value(&format!(
                "presence_io_backend{{worker=\"{worker}\",backend=\"uring\"}}"
            )),
            1,
            "CI and the project's machines run Linux ≥ 6.0 with io_uring on"
        );
    }

    // SIGTERM: both exit 0; B's charge records are on disk, all against A.
    assert_eq!(node_a.terminate(Duration::from_secs(10)), Some(0));
    assert_eq!(node_b.terminate(Duration::from_secs(10)), Some(0));
    let lines = cdr_lines(&b.dir);
    assert_eq!(lines.len(), charged, "one charge record per answered query");
    assert!(
        lines.iter().all(|l| l.split(',').nth(3) == Some("o2.gb")),
        "{lines:?}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_bad_configuration_is_refused_with_file_field_and_reason() {
    let root = scratch("bad");
    let (a, b) = lab::write_two_networks(&root, &table(), "o2.gb", "t-mobile.de", 40, 40).unwrap();
    let config = lab::write_config(&a, &b, &table(), 1, None, false).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("workers = 1", "workers = 0");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_presence-gw"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!(
            "{}: network.workers: must be 1 to",
            config.display()
        )),
        "{err}"
    );

    // A subscriber line that does not parse names its line.
    let config = lab::write_config(&a, &b, &table(), 1, None, false).unwrap();
    let mut subscribers = std::fs::read_to_string(a.dir.join("subscribers.csv")).unwrap();
    subscribers.push_str("12ab,x,1,1,\n");
    std::fs::write(a.dir.join("subscribers.csv"), subscribers).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_presence-gw"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("subscribers.csv: line 42: msisdn \"12ab\""),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(root);
}
