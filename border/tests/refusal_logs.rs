//! Every refusal leaves a log line naming its reason and the address it came
//! from (its own test binary: it installs the process-wide log subscriber).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use common::*;
use presence_border::pki::{self, NetworkMaterial, Validity};
use presence_border::Refusal;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn refusals_are_logged_with_their_reason() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let a = material("a.example");
    let b = material("b.example");
    let stranger = material("c.example");
    let node_b = start(tls(1, &b, &[&a]), vec![], 1, settings());
    let _stranger = start(
        tls(1, &stranger, &[&b]),
        vec![(b.network.clone(), node_b.local_addr())],
        1,
        settings(),
    );
    let long_ago = Validity {
        not_before: time::OffsetDateTime::now_utc() - time::Duration::days(30),
        not_after: time::OffsetDateTime::now_utc() - time::Duration::days(1),
    };
    let expired = NetworkMaterial {
        bg: pki::issue_bg_certificate(&a.ca, &a.network, long_ago).unwrap(),
        ..a.clone()
    };
    let _expired = start(
        tls(1, &expired, &[&b]),
        vec![(b.network.clone(), node_b.local_addr())],
        1,
        settings(),
    );
    let mut clear = TcpStream::connect(node_b.local_addr()).unwrap();
    clear.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut noise = TcpStream::connect(node_b.local_addr()).unwrap();
    let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    bytes.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    noise.write_all(&bytes).unwrap();
    let log = || String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let refused_line = |log: &str, reason: &str| {
        log.lines().any(|l| {
            l.contains("border connection refused")
                && l.contains(&format!("reason=\"{reason}\""))
                && l.contains("127.0.0.1")
        })
    };
    // Counters move first, then the line is written: wait for the lines.
    assert!(
        wait_until(SECONDS_5, || {
            let log = log();
            refused_line(&log, "unknown_ca")
                && refused_line(&log, "not_tls")
                && refused_line(&log, "certificate_expired")
                && refused_line(&log, "protocol")
                && log
                    .lines()
                    .any(|l| l.contains("reason=\"peer_refused\"") && l.contains("b.example"))
        }),
        "refusal lines missing: {}",
        log()
    );
    assert!(node_b.counters().refused(Refusal::UnknownCa) >= 1);
    assert!(node_b.counters().refused(Refusal::NotTls) >= 1);

    // A connect-and-junk flood: every connection refused and counted, but
    // at most one line per reason per second, the next one saying how many
    // were left out.
    let lines_before = log()
        .lines()
        .filter(|l| l.contains("reason=\"not_tls\""))
        .count();
    // Refused as not TLS, or dropped first (past its source's handshake
    // budget, or for want of a slot): either way counted.
    let counted = || {
        let c = node_b.counters();
        c.refused(Refusal::NotTls)
            + c.refused(Refusal::EvictedIdle)
            + presence_border::BgCounters::get(&c.accept_full)
            + presence_border::BgCounters::get(&c.accept_source_full)
            + presence_border::BgCounters::get(&c.handshake_rate_limited)
    };
    let counted_before = counted();
    let flood_started = std::time::Instant::now();
    for _ in 0..300 {
        if let Ok(mut junk) = TcpStream::connect(node_b.local_addr()) {
            let _ = junk.write_all(b"GET / HTTP/1.1\r\n\r\n");
        }
    }
    assert!(
        wait_until(SECONDS_5 * 2, || counted() >= counted_before + 300),
        "every junk connection refused and counted: {} of 300",
        counted() - counted_before
    );
    // A last one after a second: its line carries the count left out.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let mut last = TcpStream::connect(node_b.local_addr()).unwrap();
    last.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(
        wait_until(SECONDS_5, || log().lines().any(|l| l
            .contains("reason=\"not_tls\"")
            && !l.contains("suppressed=0"))),
        "a line says how many were left out: {}",
        log()
    );
    let seconds = flood_started.elapsed().as_secs() + 1;
    let lines = log()
        .lines()
        .filter(|l| l.contains("reason=\"not_tls\""))
        .count()
        - lines_before;
    assert!(
        lines as u64 <= seconds + 1,
        "{lines} lines for 301 refusals in {seconds} s"
    );
    let dropped_lines = log()
        .lines()
        .filter(|l| l.contains("border connection dropped"))
        .count();
    assert!(
        dropped_lines as u64 <= 3 * (seconds + 1),
        "{dropped_lines} lines for connections dropped in {seconds} s"
    );
}
