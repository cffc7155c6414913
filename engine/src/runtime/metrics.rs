//! Metrics: each worker keeps its counters and latency histogram locally
//! (no shared write per message) and publishes them every 100 ms under its
//! own mutex; `/metrics` sums the workers' reports into Prometheus text.
//!
//! Latency is an HDR histogram (`hdrhistogram`), recorded per answered
//! device request from its arrival to its answer leaving the appliance,
//! exported as a Prometheus histogram with fixed bucket bounds. HTTP is
//! served by `tiny_http` on its own thread.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use presence_border::BgCounters;

use super::WorkerStats;
use crate::table::NumberingTable;

/// Latency bucket bounds, in microseconds.
const LATENCY_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_500_000,
];

/// Spoofing alarms: a peer's query for a watcher not its own (refused by
/// the IGPS), a query or answer sent to the device port (skipping the WA),
/// a peer's answer about another network's number (dropped).
pub const ALARMS: [&str; 3] = [
    "watcher_not_of_origin",
    "query_skipped_wa",
    "answer_from_wrong_network",
];

/// The role events counted per worker, as `(role, event)` labels; a
/// report's `roles` array follows this order.
pub const ROLE_EVENTS: [(&str, &str); 26] = [
    ("wa", "accepted"),
    ("wa", "internal"),
    ("wa", "unauthenticated"),
    ("wa", "credit_exhausted"),
    ("wa", "retransmissions"),
    ("wa", "final_answers"),
    ("wa", "timeouts"),
    ("ogps", "forwarded"),
    ("ogps", "looped_home"),
    ("ogps", "unknown_network"),
    ("ogps", "hop_limit_exceeded"),
    ("ogps", "all_ingress_down"),
    ("igps", "forwarded"),
    ("igps", "unknown_subscriber"),
    ("igps", "hop_limit_exceeded"),
    ("ps", "answered_status"),
    ("ps", "not_available"),
    ("ps", "charged"),
    ("ps", "duplicates"),
    ("ps", "publications"),
    ("ps", "refused"),
    ("ps", "window_full"),
    ("wa", "throttled"),
    ("ogps", "held_off"),
    ("igps", "throttled"),
    ("ps", "charging_refused"),
];

/// Per peer network: queries in, answers in, frames out, frames refused.
pub const PEER_EVENTS: [&str; 4] = ["queries_in", "answers_in", "frames_out", "frames_refused"];

/// What one worker last published (or all workers, summed).
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    /// Requests from devices.
    pub requests: u64,
    /// Status publications from devices.
    pub publications: u64,
    /// Final answers to devices: attached, detached, not available,
    /// overloaded, error.
    pub outcomes: [u64; 5],
    /// Queries from peer networks.
    pub border_queries_in: u64,
    /// Answers from peer networks.
    pub border_answers_in: u64,
    /// Frames sent to peer networks.
    pub border_frames_out: u64,
    /// Queries answered overloaded because the border refused their frame.
    pub border_shed_queries: u64,
    /// Charge records raised.
    pub charged: u64,
    /// Charge records written to the CDR file.
    pub cdr_written: u64,
    /// Charge records lost to failed CDR writes.
    pub cdr_lost: u64,
    /// Answers bound for another network dropped with a refused border frame.
    pub border_shed_other: u64,
    /// Drops, by reason.
    pub bad_datagrams: u64,
    /// Messages that did not decode or had no business here.
    pub bad_messages: u64,
    /// Bad frames from peer networks.
    pub bad_border_frames: u64,
    /// Requests shed because a worker's inbox was full.
    pub shed: u64,
    /// Answers for a device whose address was unknown.
    pub no_device_addr: u64,
    /// Messages handed between workers.
    pub cross: u64,
    /// Pending WA transactions now.
    pub pending: usize,
    /// Inbox depth now.
    pub inbox: usize,
    /// Subscribers held.
    pub subscribers: usize,
    /// Request-to-answer latency, µs.
    pub latency: Option<hdrhistogram::Histogram<u64>>,
    /// Role events, in [`ROLE_EVENTS`] order.
    pub roles: [u64; ROLE_EVENTS.len()],
    /// Spoofing alarms, in [`ALARMS`] order.
    pub alarms: [u64; ALARMS.len()],
    /// Per peer network, [`PEER_EVENTS`].
    pub peers: Vec<(crate::table::NetworkId, [u64; PEER_EVENTS.len()])>,
}

impl WorkerReport {
    fn add(&mut self, other: &WorkerReport) {
        self.requests += other.requests;
        self.publications += other.publications;
        for (a, b) in self.alarms.iter_mut().zip(other.alarms) {
            *a += b;
        }
        for (a, b) in self.outcomes.iter_mut().zip(other.outcomes) {
            *a += b;
        }
        self.border_queries_in += other.border_queries_in;
        self.border_answers_in += other.border_answers_in;
        self.border_frames_out += other.border_frames_out;
        self.border_shed_queries += other.border_shed_queries;
        self.charged += other.charged;
        self.cdr_written += other.cdr_written;
        self.cdr_lost += other.cdr_lost;
        self.border_shed_other += other.border_shed_other;
        self.bad_datagrams += other.bad_datagrams;
        self.bad_messages += other.bad_messages;
        self.bad_border_frames += other.bad_border_frames;
        self.shed += other.shed;
        self.no_device_addr += other.no_device_addr;
        self.cross += other.cross;
        self.pending += other.pending;
        self.inbox += other.inbox;
        self.subscribers += other.subscribers;
        for (a, b) in self.roles.iter_mut().zip(other.roles) {
            *a += b;
        }
        for (network, events) in &other.peers {
            match self.peers.iter_mut().find(|(n, _)| n == network) {
                Some((_, mine)) => {
                    for (a, b) in mine.iter_mut().zip(events) {
                        *a += b;
                    }
                }
                None => self.peers.push((*network, *events)),
            }
        }
        match (&mut self.latency, &other.latency) {
            (Some(mine), Some(theirs)) => {
                let _ = mine.add(theirs);
            }
            (None, Some(theirs)) => self.latency = Some(theirs.clone()),
            _ => {}
        }
    }

    /// Final answers in all.
    pub fn answered(&self) -> u64 {
        self.outcomes.iter().sum()
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

    /// Replaces worker `index`'s report; its local latency samples move in.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn publish(
        &self,
        index: usize,
        stats: &mut WorkerStats,
        pending: usize,
        inbox: usize,
        subscribers: usize,
        cdr: (u64, u64),
        roles: [u64; ROLE_EVENTS.len()],
    ) {
        let Some(slot) = self.workers.get(index) else {
            return;
        };
        let Ok(mut report) = slot.lock() else {
            return;
        };
        report.requests = stats.requests;
        report.publications = stats.publications;
        report.alarms = stats.alarms;
        report.outcomes = stats.outcomes;
        report.border_queries_in = stats.border_queries_in;
        report.border_answers_in = stats.border_answers_in;
        report.border_frames_out = stats.border_frames_out;
        report.border_shed_queries = stats.border_shed_queries;
        report.charged = stats.charged;
        (report.cdr_written, report.cdr_lost) = cdr;
        report.border_shed_other = stats.border_shed_other;
        report.bad_datagrams = stats.bad_datagrams;
        report.bad_messages = stats.bad_messages;
        report.bad_border_frames = stats.bad_border_frames;
        report.shed = stats.shed;
        report.no_device_addr = stats.no_device_addr;
        report.cross = stats.cross;
        report.pending = pending;
        report.inbox = inbox;
        report.subscribers = subscribers;
        report.roles = roles;
        report.peers.clear();
        report.peers.extend(
            stats
                .peers
                .iter()
                .map(|(network, events)| (*network, *events)),
        );
        if let Some(local) = stats.latency.as_mut() {
            match report.latency.as_mut() {
                Some(total) => {
                    let _ = total.add(&*local);
                }
                None => report.latency = Some(local.clone()),
            }
            local.reset();
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
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP presence_{name} {help}");
            let _ = writeln!(out, "# TYPE presence_{name} counter");
            let _ = writeln!(out, "presence_{name} {value}");
        };
        counter(
            &mut out,
            "wa_requests_total",
            "Requests from devices to the WA.",
            total.requests,
        );
        counter(
            &mut out,
            "ps_publications_total",
            "Status publications from devices.",
            total.publications,
        );
        let _ = writeln!(
            out,
            "# HELP presence_wa_answers_total Final answers to devices, by outcome."
        );
        let _ = writeln!(out, "# TYPE presence_wa_answers_total counter");
        for (outcome, n) in [
            "attached",
            "detached",
            "not_available",
            "overloaded",
            "error",
        ]
        .iter()
        .zip(total.outcomes)
        {
            let _ = writeln!(
                out,
                "presence_wa_answers_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "igps_queries_total",
            "Queries from peer networks at the IGPS.",
            total.border_queries_in,
        );
        counter(
            &mut out,
            "wa_border_answers_total",
            "Answers from peer networks.",
            total.border_answers_in,
        );
        counter(
            &mut out,
            "ogps_border_frames_total",
            "Frames sent to peer networks.",
            total.border_frames_out,
        );
        counter(
            &mut out,
            "ps_charge_records_total",
            "Charge records raised.",
            total.charged,
        );
        counter(
            &mut out,
            "cdr_written_total",
            "Charge records written to the CDR files.",
            total.cdr_written,
        );
        counter(
            &mut out,
            "worker_handoffs_total",
            "Messages handed between workers.",
            total.cross,
        );
        let _ = writeln!(
            out,
            "# HELP presence_drops_total Messages dropped or shed, by reason."
        );
        let _ = writeln!(out, "# TYPE presence_drops_total counter");
        for (reason, n) in [
            ("bad_datagram", total.bad_datagrams),
            ("bad_message", total.bad_messages),
            ("bad_border_frame", total.bad_border_frames),
            ("inbox_full", total.shed),
            ("border_refused", total.border_shed_queries),
            ("no_device_address", total.no_device_addr),
            ("border_refused_answer", total.border_shed_other),
            ("cdr_write_failed", total.cdr_lost),
        ] {
            let _ = writeln!(out, "presence_drops_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP presence_alarms_total Spoofing refused, by kind (docs/reliability.md)."
        );
        let _ = writeln!(out, "# TYPE presence_alarms_total counter");
        for (kind, n) in ALARMS.iter().zip(total.alarms) {
            let _ = writeln!(out, "presence_alarms_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP presence_role_events_total What each role decided, by role and event."
        );
        let _ = writeln!(out, "# TYPE presence_role_events_total counter");
        for ((role, event), n) in ROLE_EVENTS.iter().zip(total.roles) {
            let _ = writeln!(
                out,
                "presence_role_events_total{{role=\"{role}\",event=\"{event}\"}} {n}"
            );
        }
        let names = self.table.snapshot();
        let _ = writeln!(
            out,
            "# HELP presence_peer_events_total Traffic with each peer network."
        );
        let _ = writeln!(out, "# TYPE presence_peer_events_total counter");
        for (network, events) in &total.peers {
            for (event, n) in PEER_EVENTS.iter().zip(events) {
                let _ = writeln!(
                    out,
                    "presence_peer_events_total{{peer=\"{}\",event=\"{event}\"}} {n}",
                    names.names().name(*network)
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, values: &[(usize, usize)]| {
            let _ = writeln!(out, "# HELP presence_{name} {help}");
            let _ = writeln!(out, "# TYPE presence_{name} gauge");
            for (worker, v) in values {
                let _ = writeln!(out, "presence_{name}{{worker=\"{worker}\"}} {v}");
            }
        };
        let per = |f: fn(&WorkerReport) -> usize| -> Vec<(usize, usize)> {
            reports.iter().enumerate().map(|(i, r)| (i, f(r))).collect()
        };
        gauge(
            &mut out,
            "inbox_depth",
            "Messages waiting in a worker's inbox.",
            &per(|r| r.inbox),
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
        let _ = writeln!(
            out,
            "# HELP presence_table_version Numbering table version in use."
        );
        let _ = writeln!(out, "# TYPE presence_table_version gauge");
        let _ = writeln!(
            out,
            "presence_table_version {}",
            self.table.snapshot().version()
        );
        if let Some(h) = &total.latency {
            let _ = writeln!(out, "# HELP presence_answer_latency_seconds Device request to answer, inside the appliance (1 request in 16, by request id).");
            let _ = writeln!(out, "# TYPE presence_answer_latency_seconds histogram");
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

/// `GET /metrics` over HTTP.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
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
        let server = Arc::new(
            tiny_http::Server::http(addr).map_err(|e| std::io::Error::other(e.to_string()))?,
        );
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("metrics listener has no IP address"))?;
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let response = if request.url() == "/metrics" {
                        let body = metrics.render(&border);
                        let header = tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"text/plain; version=0.0.4"[..],
                        );
                        let mut response = tiny_http::Response::from_string(body);
                        if let Ok(header) = header {
                            response.add_header(header);
                        }
                        response
                    } else {
                        tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                    };
                    let _ = request.respond(response);
                }
            })?;
        Ok(MetricsServer {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn stop(mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
