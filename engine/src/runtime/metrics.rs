//! Metrics: each worker's node keeps its counters and latency histogram
//! locally (no shared write per message); the worker publishes them every
//! 100 ms under its own mutex; `/metrics` sums the workers' reports into
//! Prometheus text. Every labelled family iterates an enum's `ALL`.
//!
//! Latency is an HDR histogram (`hdrhistogram`), recorded per answered
//! device request from its arrival to its answer leaving the appliance,
//! exported as a Prometheus histogram with fixed bucket bounds. HTTP is
//! served by [`MetricsServer`]: a fixed pool of threads, a bounded queue,
//! request timeouts.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use presence_border::BgCounters;

use crate::node::{Alarm, CrossKind, DropReason, Node, NodeCounters, PeerEvent, RoleCounters};
use crate::table::NumberingTable;
use presence_codec::OutcomeClass;

/// Latency bucket bounds, in microseconds.
const LATENCY_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_500_000,
];

/// What a worker's runtime counts beside its node.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RuntimeCounts {
    /// Hand-offs waiting in the worker's inbox now.
    pub(crate) inbox: usize,
    /// Charge records written to the journal's files.
    pub(crate) cdr_written: u64,
    /// Datagrams the client socket would not take.
    pub(crate) udp_send_errors: u64,
    /// Event-loop turns.
    pub(crate) turns: u64,
    /// Device datagrams read and admitted, not yet served, now.
    pub(crate) staged: usize,
    /// The measured service time per device datagram, ns.
    pub(crate) service_ns: u64,
    /// The measured service time per border frame byte, ps.
    pub(crate) border_service_ps: u64,
    /// The deepest border socket backlog seen since the last report, bytes.
    pub(crate) border_backlog: usize,
    /// How the client socket moves datagrams now (`[io] backend`, or
    /// `mmsg` where the kernel refused the one configured).
    pub(crate) io_backend: &'static str,
    /// With AF_XDP: frames received, answers sent as frames, and frames the
    /// kernel dropped for want of room in the port's rings.
    pub(crate) xdp: XdpCounts,
}

/// A worker's AF_XDP port, counted (all zero without one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounts {
    /// Device datagrams read from the port.
    pub received: u64,
    /// Answers written to the port as frames.
    pub sent: u64,
    /// Frames the kernel dropped: the receive ring full or no fill frame.
    pub dropped: u64,
    /// Frames the program handed over that were no well-formed datagram
    /// (lengths that disagree), dropped as the kernel drops them.
    pub malformed: u64,
}

/// What one worker last published (or all workers, summed).
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    /// The node's counters.
    pub node: NodeCounters,
    /// What the node's roles decided.
    pub roles: RoleCounters,
    /// Charge records written to the journal's files.
    pub cdr_written: u64,
    /// Datagrams the client socket would not take.
    pub udp_send_errors: u64,
    /// Event-loop turns (wake-ups) of the worker.
    pub turns: u64,
    /// Pending WA transactions now.
    pub pending: usize,
    /// Inbox depth now.
    pub inbox: usize,
    /// Device datagrams staged now.
    pub staged: usize,
    /// Measured service time per device datagram, ns (in a sum, the
    /// highest of the workers').
    pub service_ns: u64,
    /// Measured service time per border frame byte, ps (in a sum, the
    /// highest of the workers').
    pub border_service_ps: u64,
    /// The deepest unread backlog of a border link's socket in the last
    /// report interval, bytes (in a sum, the highest).
    pub border_backlog: usize,
    /// Subscribers held.
    pub subscribers: usize,
    /// The IO backend the worker's client socket uses.
    pub io_backend: &'static str,
    /// Its AF_XDP port, with `io_backend` "xdp".
    pub xdp: XdpCounts,
    /// Request-to-answer latency, µs.
    pub latency: Option<hdrhistogram::Histogram<u64>>,
}

impl WorkerReport {
    fn add(&mut self, other: &WorkerReport) {
        self.node.add(&other.node);
        self.roles.add(&other.roles);
        self.cdr_written += other.cdr_written;
        self.udp_send_errors += other.udp_send_errors;
        self.turns += other.turns;
        self.pending += other.pending;
        self.inbox += other.inbox;
        self.staged += other.staged;
        self.service_ns = self.service_ns.max(other.service_ns);
        self.border_service_ps = self.border_service_ps.max(other.border_service_ps);
        self.border_backlog = self.border_backlog.max(other.border_backlog);
        self.subscribers += other.subscribers;
        self.xdp.received += other.xdp.received;
        self.xdp.sent += other.xdp.sent;
        self.xdp.dropped += other.xdp.dropped;
        self.xdp.malformed += other.xdp.malformed;
        match (&mut self.latency, &other.latency) {
            (Some(mine), Some(theirs)) => {
                let _ = mine.add(theirs);
            }
            (None, Some(theirs)) => self.latency = Some(theirs.clone()),
            _ => {}
        }
    }

    /// Final answers to devices in all.
    pub fn answered(&self) -> u64 {
        self.node.answers.total()
    }

    /// Hand-offs between workers in all.
    pub fn cross_worker(&self) -> u64 {
        self.node.cross_worker.total()
    }
}

/// The appliance's metrics.
#[derive(Debug)]
pub struct Metrics {
    workers: Vec<Mutex<WorkerReport>>,
    table: Arc<NumberingTable>,
}

impl Metrics {
    pub(crate) fn new(workers: usize, table: Arc<NumberingTable>) -> Metrics {
        Metrics {
            workers: (0..workers)
                .map(|_| Mutex::new(WorkerReport::default()))
                .collect(),
            table,
        }
    }

    /// Replaces worker `index`'s report with its node's counters; the
    /// node's latency samples move in.
    pub(crate) fn publish(&self, index: usize, node: &mut Node, runtime: RuntimeCounts) {
        let Some(slot) = self.workers.get(index) else {
            return;
        };
        let Ok(mut report) = slot.lock() else {
            return;
        };
        report.node.clone_from(node.counters());
        let mut roles = node.role_counters();
        // The IGPS's spoofing refusals are an alarm too.
        report.node.alarms.0[Alarm::WatcherNotOfOrigin as usize] += roles.igps.spoofed_watcher;
        roles.igps.spoofed_watcher = 0;
        // So are watchers locked out by failed credential checks.
        report.node.alarms.0[Alarm::CredentialGuessing as usize] +=
            roles.wa.lockouts + roles.ps.lockouts;
        // And transaction ids far from their stream (window poisoning).
        report.node.alarms.0[Alarm::TxidOutOfWindow as usize] += roles.ps.out_of_window;
        report.roles = roles;
        report.cdr_written = runtime.cdr_written;
        report.udp_send_errors = runtime.udp_send_errors;
        report.turns = runtime.turns;
        report.pending = node.pending();
        report.inbox = runtime.inbox;
        report.staged = runtime.staged;
        report.service_ns = runtime.service_ns;
        report.border_service_ps = runtime.border_service_ps;
        report.border_backlog = runtime.border_backlog;
        report.io_backend = runtime.io_backend;
        report.xdp = runtime.xdp;
        report.subscribers = node.subscriber_count();
        match report.latency.as_mut() {
            Some(total) => node.take_latency(total),
            None => {
                if let Ok(mut h) = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3) {
                    node.take_latency(&mut h);
                    report.latency = Some(h);
                }
            }
        }
    }

    /// All workers' reports summed.
    pub fn total(&self) -> WorkerReport {
        let mut total = WorkerReport::default();
        for slot in &self.workers {
            if let Ok(report) = slot.lock() {
                total.add(&report);
            }
        }
        total
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn render(&self, border: &BgCounters) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let reports: Vec<WorkerReport> = self
            .workers
            .iter()
            .filter_map(|slot| slot.lock().ok().map(|r| r.clone()))
            .collect();
        let mut total = WorkerReport::default();
        for report in &reports {
            total.add(report);
        }
        let node = &total.node;
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP presence_{name} {help}");
            let _ = writeln!(out, "# TYPE presence_{name} {kind}");
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            header(out, name, "counter", help);
            let _ = writeln!(out, "presence_{name} {value}");
        };
        counter(
            &mut out,
            "wa_requests_total",
            "Requests from devices to the WA.",
            node.requests,
        );
        counter(
            &mut out,
            "ps_publications_total",
            "Status publications from devices.",
            node.publications,
        );
        header(
            &mut out,
            "wa_answers_total",
            "counter",
            "Final answers to devices, by outcome.",
        );
        for class in OutcomeClass::ALL {
            let _ = writeln!(
                out,
                "presence_wa_answers_total{{outcome=\"{}\"}} {}",
                class.name(),
                node.answers_of(class)
            );
        }
        counter(
            &mut out,
            "igps_queries_total",
            "Queries from peer networks at the IGPS.",
            node.border_queries_in,
        );
        counter(
            &mut out,
            "wa_border_answers_total",
            "Answers from peer networks.",
            node.border_answers_in,
        );
        counter(
            &mut out,
            "ogps_border_frames_total",
            "Frames sent to peer networks.",
            node.border_frames_out,
        );
        counter(
            &mut out,
            "ps_charge_records_total",
            "Charge records raised.",
            node.charged,
        );
        counter(
            &mut out,
            "cdr_written_total",
            "Charge records written to the CDR files.",
            total.cdr_written,
        );
        counter(
            &mut out,
            "cdr_voided_total",
            "Answers refused because their charge record did not become durable.",
            node.voided,
        );
        counter(
            &mut out,
            "border_queue_shed_total",
            "Peers' queries answered Overloaded unchecked: the border link's socket held more than [limits] border_queue_ms of work when their frame was read.",
            node.border_queue_shed,
        );
        counter(
            &mut out,
            "device_queue_shed_total",
            "Device requests and publications answered Overloaded unchecked: their datagram's projected wait (time in the socket plus the staged work ahead of it) passed [limits] device_queue_ms.",
            node.queue_shed,
        );
        header(
            &mut out,
            "cross_worker_total",
            "counter",
            "Messages handed from the worker they reached to the worker that owns them, by kind (docs/architecture.md, ownership and steering).",
        );
        for kind in CrossKind::ALL {
            let _ = writeln!(
                out,
                "presence_cross_worker_total{{kind=\"{}\"}} {}",
                kind.name(),
                node.cross_worker.0[kind as usize]
            );
        }
        header(
            &mut out,
            "drops_total",
            "counter",
            "Messages dropped or shed, by reason.",
        );
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "presence_drops_total{{reason=\"{}\"}} {}",
                reason.name(),
                node.drops.0[reason as usize]
            );
        }
        let _ = writeln!(
            out,
            "presence_drops_total{{reason=\"udp_send_failed\"}} {}",
            total.udp_send_errors
        );
        header(
            &mut out,
            "alarms_total",
            "counter",
            "Spoofing refused and credential guessing, by kind (docs/reliability.md).",
        );
        for alarm in Alarm::ALL {
            let _ = writeln!(
                out,
                "presence_alarms_total{{kind=\"{}\"}} {}",
                alarm.name(),
                node.alarms.0[alarm as usize]
            );
        }
        header(
            &mut out,
            "auth_failures_total",
            "counter",
            "Device credential checks that failed (docs/reliability.md, \"Credential guessing\").",
        );
        let _ = writeln!(
            out,
            "presence_auth_failures_total {}",
            total.roles.wa.auth_failures + total.roles.ps.auth_failures
        );
        header(
            &mut out,
            "role_events_total",
            "counter",
            "What each role decided, by role and event.",
        );
        for (role, event, n) in total.roles.events() {
            let _ = writeln!(
                out,
                "presence_role_events_total{{role=\"{role}\",event=\"{event}\"}} {n}"
            );
        }
        let names = self.table.snapshot();
        header(
            &mut out,
            "peer_events_total",
            "counter",
            "Traffic with each peer network.",
        );
        for (network, counts) in &node.peers {
            for event in PeerEvent::ALL {
                let _ = writeln!(
                    out,
                    "presence_peer_events_total{{peer=\"{}\",event=\"{}\"}} {}",
                    names.names().name(*network),
                    event.name(),
                    counts.0[event as usize]
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, values: &[(usize, usize)]| {
            header(out, name, "gauge", help);
            for (worker, v) in values {
                let _ = writeln!(out, "presence_{name}{{worker=\"{worker}\"}} {v}");
            }
        };
        let per = |f: fn(&WorkerReport) -> usize| -> Vec<(usize, usize)> {
            reports.iter().enumerate().map(|(i, r)| (i, f(r))).collect()
        };
        header(
            &mut out,
            "io_backend",
            "gauge",
            "The IO backend each worker's client socket uses (1): [io] backend, or mmsg where the kernel refused the one configured.",
        );
        for (worker, r) in reports.iter().enumerate() {
            let _ = writeln!(
                out,
                "presence_io_backend{{worker=\"{worker}\",backend=\"{}\"}} 1",
                r.io_backend
            );
        }
        if reports.iter().any(|r| r.io_backend == "xdp") {
            header(
                &mut out,
                "xdp_frames_total",
                "counter",
                "Device datagrams each worker's AF_XDP port received, and answers it sent as frames.",
            );
            for (worker, r) in reports.iter().enumerate() {
                if r.io_backend == "xdp" {
                    let _ = writeln!(
                        out,
                        "presence_xdp_frames_total{{worker=\"{worker}\",direction=\"received\"}} {}",
                        r.xdp.received
                    );
                    let _ = writeln!(
                        out,
                        "presence_xdp_frames_total{{worker=\"{worker}\",direction=\"sent\"}} {}",
                        r.xdp.sent
                    );
                }
            }
            header(
                &mut out,
                "xdp_dropped_total",
                "counter",
                "Frames for the client port dropped at a worker's AF_XDP port: by the kernel, its receive ring full or no free frame to fill (reason ring: the worker fell behind); or by the worker, no well-formed datagram (reason malformed).",
            );
            for (worker, r) in reports.iter().enumerate() {
                if r.io_backend == "xdp" {
                    for (reason, count) in [("ring", r.xdp.dropped), ("malformed", r.xdp.malformed)]
                    {
                        let _ = writeln!(
                            out,
                            "presence_xdp_dropped_total{{worker=\"{worker}\",reason=\"{reason}\"}} {count}"
                        );
                    }
                }
            }
        }
        header(
            &mut out,
            "worker_turns_total",
            "counter",
            "Event-loop turns (wake-ups) of each worker: answers per turn show how well work is batched.",
        );
        for (worker, r) in reports.iter().enumerate() {
            let _ = writeln!(
                out,
                "presence_worker_turns_total{{worker=\"{worker}\"}} {}",
                r.turns
            );
        }
        gauge(
            &mut out,
            "inbox_depth",
            "Hand-offs waiting in a worker's inbox.",
            &per(|r| r.inbox),
        );
        gauge(
            &mut out,
            "device_staged",
            "Device datagrams a worker read and admitted but has not served yet.",
            &per(|r| r.staged),
        );
        gauge(
            &mut out,
            "device_service_ns",
            "A worker's measured service time per device datagram, ns: admission projects a datagram's wait with it.",
            &per(|r| usize::try_from(r.service_ns).unwrap_or(usize::MAX)),
        );
        gauge(
            &mut out,
            "border_backlog_bytes",
            "The deepest unread backlog a worker saw in a border link's socket in the last 100 ms, bytes.",
            &per(|r| r.border_backlog),
        );
        gauge(
            &mut out,
            "border_service_ps",
            "A worker's measured service time per border frame byte, ps: with the backlog it projects a peer's frames' wait.",
            &per(|r| usize::try_from(r.border_service_ps).unwrap_or(usize::MAX)),
        );
        gauge(
            &mut out,
            "wa_pending",
            "Pending WA transactions.",
            &per(|r| r.pending),
        );
        gauge(
            &mut out,
            "ps_subscribers",
            "Subscribers held by a worker's presence-server slices.",
            &per(|r| r.subscribers),
        );
        header(
            &mut out,
            "table_version",
            "gauge",
            "Numbering table version in use.",
        );
        let _ = writeln!(out, "presence_table_version {}", names.version());
        if let Some(h) = &total.latency {
            header(
                &mut out,
                "answer_latency_seconds",
                "histogram",
                "Device request to answer, inside the appliance (1 request in 16, by request id).",
            );
            for bound in LATENCY_BOUNDS_US {
                let n = h.count_between(0, bound);
                let _ = writeln!(
                    out,
                    "presence_answer_latency_seconds_bucket{{le=\"{}\"}} {n}",
                    bound as f64 / 1e6
                );
            }
            let _ = writeln!(
                out,
                "presence_answer_latency_seconds_bucket{{le=\"+Inf\"}} {}",
                h.len()
            );
            let sum_s = h.mean() * h.len() as f64 / 1e6;
            let _ = writeln!(out, "presence_answer_latency_seconds_sum {sum_s}");
            let _ = writeln!(out, "presence_answer_latency_seconds_count {}", h.len());
        }
        border.render_prometheus(&mut out);
        out
    }
}

/// Workers answering scrapes: a scraper or two, and room for a probe.
const HTTP_WORKERS: usize = 4;
/// Accepted connections waiting for a worker; past it, `503` at once.
const HTTP_QUEUE: usize = 16;
/// Longest request head read, in bytes; past it, `431`.
const HTTP_HEAD_MAX: usize = 8 * 1024;
/// Whole time a connection may take to send its request head, and each
/// write of the answer may block.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /metrics` over HTTP/1.x, bounded: a fixed pool of 4 threads, a
/// queue of 16 accepted connections (a connection past it is answered
/// `503` and closed), a request head of at most 8 KiB that must arrive
/// within 2 s of the connection's acceptance, one request per connection. A client that
/// opens connections and sends nothing holds a worker for 2 s at most,
/// and never more threads or memory than these bounds.
pub struct MetricsServer {
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    pub(crate) fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        border: Arc<BgCounters>,
    ) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (queue, waiting) = crossbeam::channel::bounded::<(TcpStream, Instant)>(HTTP_QUEUE);
        let mut workers = Vec::with_capacity(HTTP_WORKERS);
        for i in 0..HTTP_WORKERS {
            let waiting = waiting.clone();
            let metrics = metrics.clone();
            let border = border.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("metrics-{i}"))
                    .spawn(move || {
                        for (stream, accepted) in waiting.iter() {
                            serve_one(stream, accepted, &metrics, &border);
                        }
                    })?,
            );
        }
        let stop = stopping.clone();
        let acceptor = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(stream) = stream else {
                        // Out of descriptors and the like: do not spin.
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    if let Err(crossbeam::channel::TrySendError::Full((mut stream, _))) =
                        queue.try_send((stream, Instant::now()))
                    {
                        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                        let _ = stream.write_all(&http_head(503, "Service Unavailable", 0));
                    }
                }
                // Dropping the queue ends the workers once it is drained.
            })?;
        Ok(MetricsServer {
            stopping,
            acceptor: Some(acceptor),
            workers,
            addr,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn stop(mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wake the acceptor out of `accept`.
        let _ = TcpStream::connect_timeout(&wake_address(self.addr), Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Where to connect to wake a listener bound to `addr` (an unspecified
/// address is reached on loopback).
fn wake_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Status line and headers of an answer with `len` bytes of body.
fn http_head(status: u16, reason: &str, len: usize) -> Vec<u8> {
    let content_type = if status == 200 {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Read one request head within [`HTTP_TIMEOUT`] of its connection's
/// acceptance (time spent queued counts, so a queue of idle connections
/// clears within one timeout) and answer it.
fn serve_one(mut stream: TcpStream, accepted: Instant, metrics: &Metrics, border: &BgCounters) {
    let deadline = accepted + HTTP_TIMEOUT;
    let _ = stream.set_write_timeout(Some(HTTP_TIMEOUT));
    let mut head = [0u8; HTTP_HEAD_MAX];
    let mut len = 0;
    let complete = loop {
        if head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if len == head.len() {
            break false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut head[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
    };
    let (status, reason, body) = if !complete {
        (431, "Request Header Fields Too Large", String::new())
    } else {
        match request_target(&head[..len]) {
            Some(("GET", "/metrics")) => (200, "OK", metrics.render(border)),
            Some(("GET" | "HEAD", _)) => (404, "Not Found", "see /metrics\n".to_owned()),
            Some(_) => (405, "Method Not Allowed", String::new()),
            None => (400, "Bad Request", String::new()),
        }
    };
    let mut answer = http_head(status, reason, body.len());
    answer.extend_from_slice(body.as_bytes());
    let _ = stream.write_all(&answer);
    let _ = stream.flush();
}

/// The method and path of an HTTP/1.x request line, without its query.
fn request_target(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

#[cfg(test)]
mod http_tests {
    use super::*;
    use crate::table::{NetworkNames, PortedMap, PrefixIndex};

    fn server() -> MetricsServer {
        let table = NumberingTable::new(
            PrefixIndex::build(&[]),
            PortedMap::empty(9),
            NetworkNames::default(),
        );
        let metrics = Arc::new(Metrics::new(1, Arc::new(table)));
        MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            metrics,
            Arc::new(BgCounters::default()),
        )
        .unwrap()
    }

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn scrapes_are_answered_and_anything_else_gets_a_status() {
        let server = server();
        let ok = get(server.addr(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4\r\n"));
        assert!(ok.contains("presence_"), "{ok}");
        let other = get(server.addr(), b"GET / HTTP/1.0\r\n\r\n");
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
        let post = get(server.addr(), b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let junk = get(server.addr(), b"\x16\x03\x01junk\r\n\r\n");
        assert!(junk.starts_with("HTTP/1.1 400 "), "{junk}");
        let huge = get(server.addr(), &[b'a'; HTTP_HEAD_MAX + 10]);
        assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");
        server.stop();
    }

    #[test]
    fn idle_and_partial_connections_are_closed_and_do_not_starve_a_scrape() {
        let server = server();
        // Twice as many silent or half-sent connections as the workers and
        // the queue hold together.
        let mut idle: Vec<TcpStream> = (0..2 * (HTTP_WORKERS + HTTP_QUEUE))
            .map(|i| {
                let mut s = TcpStream::connect(server.addr()).unwrap();
                if i % 2 == 0 {
                    s.write_all(b"GET /metr").unwrap();
                }
                s
            })
            .collect();
        // Every one of them is closed by the server (503 at once, or after
        // the request timeout), not held open.
        for s in &mut idle {
            s.set_read_timeout(Some(HTTP_TIMEOUT * 3)).unwrap();
            let mut rest = Vec::new();
            // Closed with unread bytes, the kernel resets: closed too.
            let closed = s.read_to_end(&mut rest);
            assert!(
                !matches!(&closed, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
                "held open: {closed:?}"
            );
            assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 503 "));
        }
        // And a scrape is answered as soon as they are gone.
        let ok = get(server.addr(), b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        server.stop();
    }

    #[test]
    fn a_request_line_gives_method_and_path_without_query() {
        assert_eq!(
            request_target(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_target(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(request_target(b"GET /metrics SPDY/3\r\n\r\n"), None);
        assert_eq!(request_target(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), None);
    }
}
