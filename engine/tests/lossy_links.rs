//! Loss and duplication on every hop (issue 8, promise 2;
//! docs/reliability.md). `tc netem` is not available, so the faults come
//! from seeded proxies of our own:
//!
//! - **devices ↔ A**: a UDP proxy that drops 10% of datagrams and
//!   duplicates 5%, each way;
//! - **A ↔ B**: a border gateway in the middle, holding both networks'
//!   certificates (a test can; an attacker cannot), that drops 10% of the
//!   frames and duplicates 5%, each way. Loss inside a TLS stream cannot be
//!   made by a byte proxy without breaking the link, so frames are dropped
//!   where a border gateway would drop them.
//!
//! A's devices retransmit a request (same id) until they get an outcome.
//! Shown: every query ends with exactly one outcome to A within the
//! device's deadline; B's charge records cover every status answer and
//! exceed them only by queries A saw time out; messages sent per query
//! stay at or below 1.3 on both hops (device requests per query, and
//! queries A's OGPS sent per external query).
//!
//! `PRESENCE_LOSSY_QUERIES` (default 1500) and `PRESENCE_LOSSY_SEED`
//! (default 5) choose the run.

mod common;
use common::{bg_node, env_u64, table};

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_border::node::BgNode;
use presence_codec::{encode_frame, FrameReader, Message, Outcome};
use presence_engine::journal;
use presence_engine::lab::{self, SpawnedAppliance, DEMO_BUDDIES};
use presence_engine::rng::SplitMix64;

const LOSS: f64 = 0.10;
const DUPLICATION: f64 = 0.05;

/// What a fault draw decides for one datagram or frame: how many copies go.
fn copies(rng: &mut SplitMix64) -> usize {
    let draw = |rng: &mut SplitMix64| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    if draw(rng) < LOSS {
        0
    } else if draw(rng) < DUPLICATION {
        2
    } else {
        1
    }
}

/// Counts of what a proxy did.
#[derive(Default)]
struct Faults {
    passed: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
}

impl Faults {
    fn note(&self, n: usize) {
        let counter = match n {
            0 => &self.dropped,
            1 => &self.passed,
            _ => &self.duplicated,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    fn line(&self) -> String {
        format!(
            "{} passed, {} dropped, {} duplicated",
            self.passed.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.duplicated.load(Ordering::Relaxed)
        )
    }
}

/// A UDP proxy in front of `upstream` for one device socket: one thread
/// each way, each with its own seeded faults.
fn udp_proxy(
    upstream: SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    faults: Arc<Faults>,
) -> SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    front
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    back.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let addr = front.local_addr().unwrap();
    let device = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let (front2, back2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
    let (stop2, faults2, device2) = (stop.clone(), faults.clone(), device.clone());
    std::thread::spawn(move || {
        let mut rng = SplitMix64::new(seed);
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let Ok((len, from)) = front.recv_from(&mut buf) else {
                continue;
            };
            *device.lock().unwrap() = Some(from);
            let n = copies(&mut rng);
            faults.note(n);
            for _ in 0..n {
                let _ = back.send_to(&buf[..len], upstream);
            }
        }
    });
    std::thread::spawn(move || {
        let mut rng = SplitMix64::new(seed ^ 0x5eed);
        let mut buf = vec![0u8; 65_536];
        while !stop2.load(Ordering::Relaxed) {
            let Ok(len) = back2.recv(&mut buf) else {
                continue;
            };
            let n = copies(&mut rng);
            faults2.note(n);
            if let Some(device) = *device2.lock().unwrap() {
                for _ in 0..n {
                    let _ = front2.send_to(&buf[..len], device);
                }
            }
        }
    });
    addr
}

/// Frames from `from`'s inbound to `to`, toward `peer`, with faults.
fn pump(
    from: Arc<BgNode>,
    to: Arc<BgNode>,
    peer: presence_border::NetworkName,
    seed: u64,
    stop: Arc<AtomicBool>,
    faults: Arc<Faults>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = SplitMix64::new(seed);
        while !stop.load(Ordering::Relaxed) {
            let Ok(inbound) = from.inbound().recv_timeout(Duration::from_millis(5)) else {
                continue;
            };
            let n = copies(&mut rng);
            faults.note(n);
            for _ in 0..n {
                let _ = to.send(0, &peer, inbound.frame.clone());
            }
        }
    })
}

#[test]
fn ten_percent_loss_and_five_percent_duplication_on_every_hop_lose_and_double_nothing() {
    let queries = env_u64("PRESENCE_LOSSY_QUERIES", 1500);
    let seed = env_u64("PRESENCE_LOSSY_SEED", 5);
    let root = std::env::temp_dir().join(format!("lossy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let n = 200;
    let (a, b) = lab::write_two_networks(&root, &table(), "o2.gb", "t-mobile.de", n, n).unwrap();
    let (a_material, b_material) = (a.material().unwrap(), b.material().unwrap());
    let binary = Path::new(env!("CARGO_BIN_EXE_presence-gw"));
    // B only accepts; A dials the border gateway in the middle.
    let b_config = lab::write_config(&b, &a, &table(), 1, None, false).unwrap();
    let mut node_b =
        SpawnedAppliance::start(binary, &b_config, Some(&root.join("b.log")), |_| {}).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let bg_faults = Arc::new(Faults::default());
    let toward_b = Arc::new(bg_node(&a_material, &b_material, Some(node_b.border)));
    let toward_a = Arc::new(bg_node(&b_material, &a_material, None));
    let pumps = [
        pump(
            toward_a.clone(),
            toward_b.clone(),
            b_material.network.clone(),
            seed,
            stop.clone(),
            bg_faults.clone(),
        ),
        pump(
            toward_b.clone(),
            toward_a.clone(),
            a_material.network.clone(),
            seed + 1,
            stop.clone(),
            bg_faults.clone(),
        ),
    ];
    let a_config =
        lab::write_config(&a, &b, &table(), 1, Some(toward_a.local_addr()), true).unwrap();
    let mut node_a =
        SpawnedAppliance::start(binary, &a_config, Some(&root.join("a.log")), |_| {}).unwrap();
    assert!(toward_b.wait_for_links(&b_material.network, 1, Duration::from_secs(10)));
    assert!(toward_a.wait_for_links(&a_material.network, 1, Duration::from_secs(10)));
    let udp_faults = Arc::new(Faults::default());
    let front = udp_proxy(node_a.client, seed + 2, stop.clone(), udp_faults.clone());

    // Devices of A: one socket, each request retransmitted (same id) every
    // 800 ms until an outcome arrives, for at most 6 s (the WA remembers a
    // request id for four deadlines, 6 s: retrying it is never a new query).
    let device = UdpSocket::bind("127.0.0.1:0").unwrap();
    device
        .set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|j| (0..DEMO_BUDDIES).map(move |k| ((j * 7 + k) % n, j)))
        .collect();
    struct Asked {
        first: Instant,
        last: Instant,
        sent: u32,
        outcome: Option<(Outcome, Duration)>,
        conflicting: bool,
    }
    let mut asked: HashMap<u64, Asked> = HashMap::new();
    let devices = std::cell::RefCell::new(lab::Devices::default());
    let request = |id: u64| {
        let (w, t) = pairs[id as usize % pairs.len()];
        let (watcher, credential) = &a.subscribers[w];
        let mut frame = Vec::new();
        let signed =
            devices
                .borrow_mut()
                .query(*watcher, credential.as_bytes(), id, b.subscribers[t].0);
        encode_frame(&[Message::ClientRequest(signed)], 1472, &mut frame).unwrap();
        frame
    };
    let (rto, device_deadline) = (Duration::from_millis(800), Duration::from_secs(6));
    let start = Instant::now();
    let mut next_id = 1u64;
    let mut waiting: std::collections::VecDeque<(Instant, u64)> = Default::default();
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        // 300 new queries a second.
        while next_id <= queries && start + Duration::from_micros(3_333 * next_id) <= now {
            device.send_to(&request(next_id), front).unwrap();
            waiting.push_back((now, next_id));
            asked.insert(
                next_id,
                Asked {
                    first: now,
                    last: now,
                    sent: 1,
                    outcome: None,
                    conflicting: false,
                },
            );
            next_id += 1;
        }
        // Unanswered requests, oldest retransmission first.
        while let Some(&(at, id)) = waiting.front() {
            if now - at < rto {
                break;
            }
            waiting.pop_front();
            let Some(q) = asked.get_mut(&id) else {
                continue;
            };
            if q.outcome.is_some() || now - q.first >= device_deadline {
                continue;
            }
            device.send_to(&request(id), front).unwrap();
            q.last = now;
            q.sent += 1;
            waiting.push_back((now, id));
        }
        while let Ok(len) = device.recv(&mut buf) {
            let Ok(reader) = FrameReader::new(&buf[..len], 2048) else {
                continue;
            };
            for message in reader.flatten() {
                let Message::Answer(answer) = message else {
                    continue;
                };
                let Some(q) = asked.get_mut(&answer.txid) else {
                    continue;
                };
                match q.outcome {
                    None => q.outcome = Some((answer.outcome, q.first.elapsed())),
                    Some((o, _)) if o != answer.outcome => q.conflicting = true,
                    Some(_) => {}
                }
            }
        }
        let done = next_id > queries && waiting.is_empty();
        if done {
            break;
        }
    }
    // Let late duplicates arrive, then stop everything.
    std::thread::sleep(Duration::from_millis(300));
    let metrics = node_a.metrics.unwrap();
    let forwarded = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.lines()
            .find_map(|l| {
                l.strip_prefix("presence_role_events_total{role=\"ogps\",event=\"forwarded\"} ")?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap()
    };
    assert_eq!(node_a.terminate(Duration::from_secs(10)), Some(0));
    assert_eq!(node_b.terminate(Duration::from_secs(10)), Some(0));
    stop.store(true, Ordering::Relaxed);
    for p in pumps {
        p.join().unwrap();
    }

    let mut csv = Vec::new();
    let summary = journal::dump(&b.dir.join("cdr"), false, &mut csv).unwrap();
    let answered: Vec<&Asked> = asked.values().filter(|q| q.outcome.is_some()).collect();
    let status = answered
        .iter()
        .filter(|q| {
            matches!(
                q.outcome,
                Some((Outcome::Attached { .. } | Outcome::Detached { .. }, _))
            )
        })
        .count() as u64;
    let timeouts = answered
        .iter()
        .filter(|q| {
            matches!(
                q.outcome,
                Some((Outcome::Error(presence_codec::ErrorReason::Timeout), _))
            )
        })
        .count() as u64;
    let conflicting = asked.values().filter(|q| q.conflicting).count();
    let slowest = answered
        .iter()
        .filter_map(|q| q.outcome.map(|(_, t)| t))
        .max()
        .unwrap_or_default();
    let device_sent: u64 = asked.values().map(|q| u64::from(q.sent)).sum();
    let device_ratio = device_sent as f64 / queries as f64;
    let border_ratio = forwarded as f64 / queries as f64;
    println!(
        "lossy links (seed {seed}): {queries} queries, {} with one outcome, {conflicting} \
         conflicting, {status} status answers, {timeouts} timeouts, slowest outcome {slowest:?}; \
         charge records {}; device requests per query {device_ratio:.3}, A→B queries per query \
         {border_ratio:.3}; UDP proxy: {}; BG in the middle: {}",
        answered.len(),
        summary.records,
        udp_faults.line(),
        bg_faults.line(),
    );
    assert_eq!(
        answered.len() as u64,
        queries,
        "every query ends with an outcome"
    );
    assert_eq!(conflicting, 0, "exactly one outcome per query");
    assert!(slowest < device_deadline);
    assert!(
        summary.records >= status,
        "a status answer without a charge record"
    );
    assert!(
        summary.records - status <= timeouts,
        "records beyond status answers only for queries A saw time out"
    );
    assert!(
        device_ratio <= 1.3,
        "device requests per query {device_ratio}"
    );
    assert!(
        border_ratio <= 1.3,
        "queries A sent to B per query {border_ratio}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
