//! Metrics: each worker's node keeps its counters and latency histogram
//! locally (no shared write per message); the worker publishes them every
//! 100 ms under its own mutex; `/metrics` sums the workers' reports into
//! Prometheus text. Every labelled family iterates an enum's `ALL`.
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
    /// Subscribers held.
    pub subscribers: usize,
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
        self.subscribers += other.subscribers;
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
        report.roles = roles;
        report.cdr_written = runtime.cdr_written;
        report.udp_send_errors = runtime.udp_send_errors;
        report.turns = runtime.turns;
        report.pending = node.pending();
        report.inbox = runtime.inbox;
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
