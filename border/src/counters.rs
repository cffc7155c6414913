//! What a border gateway counts. Shared by its worker threads (relaxed atomic
//! adds, one cache line per hot group), read by metrics and tests.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::link::CloseReason;
use crate::tls::Refusal;

/// Counters of one border gateway (all its workers).
#[derive(Debug, Default)]
pub struct BgCounters {
    /// Hot path, updated per flush or read batch.
    pub frames_in: AtomicU64,
    /// Frames queued to peers.
    pub frames_out: AtomicU64,
    /// Plaintext bytes received (length prefixes included).
    pub bytes_in: AtomicU64,
    /// Plaintext bytes sent (length prefixes included).
    pub bytes_out: AtomicU64,
    /// Keepalives sent on idle links.
    pub keepalives_sent: AtomicU64,
    /// Keepalives received.
    pub keepalives_received: AtomicU64,
    /// Frames refused because the link's send queue was full (answered
    /// upstream with an overloaded outcome).
    pub send_overloaded: AtomicU64,
    /// Frames refused because no link to the peer was up.
    pub send_no_link: AtomicU64,
    /// Inbound frames the local consumer could not take (its queue full).
    pub deliver_dropped: AtomicU64,
    /// Handshakes completed.
    pub links_established: AtomicU64,
    /// Links up now.
    pub links_up: AtomicI64,
    /// Dial attempts (first tries and reconnects).
    pub dial_attempts: AtomicU64,
    /// Accepted connections dropped because every link slot was taken (and
    /// no unauthenticated connection was idle enough to evict).
    pub accept_full: AtomicU64,
    /// Accepted connections dropped because their source held every
    /// unauthenticated slot it may, none idle enough to evict.
    pub accept_source_full: AtomicU64,
    /// Accepted connections dropped because their source started too many
    /// handshakes.
    pub handshake_rate_limited: AtomicU64,
    /// Frames sent for one peer worker over a link that does not end at it
    /// (no usable link to that worker: the peer's worker hands them across).
    pub sends_off_worker: AtomicU64,
    /// Links dialed for one peer worker whose hello said another (a NAT
    /// rewrote the source port, or the peer steers without it).
    pub dials_off_worker: AtomicU64,
    /// Handshakes refused, by [`Refusal::index`].
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Established links closed, by [`CloseReason::index`].
    pub closed: [AtomicU64; CloseReason::ALL.len()],
}

impl BgCounters {
    /// Adds one refusal.
    pub fn refuse(&self, refusal: Refusal) {
        if let Some(counter) = self.refused.get(refusal.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many handshakes were refused for `refusal`.
    pub fn refused(&self, refusal: Refusal) -> u64 {
        self.refused
            .get(refusal.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Adds one closed link.
    pub fn close(&self, reason: CloseReason) {
        if let Some(counter) = self.closed.get(reason.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many links closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed
            .get(reason.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds to one counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The counters in Prometheus text format, names prefixed `presence_bg_`.
    pub fn render_prometheus(&self, out: &mut String) {
        let plain = [
            (
                "frames_in_total",
                &self.frames_in,
                "Frames received from peers.",
            ),
            (
                "frames_out_total",
                &self.frames_out,
                "Frames queued to peers.",
            ),
            (
                "bytes_in_total",
                &self.bytes_in,
                "Plaintext bytes received.",
            ),
            ("bytes_out_total", &self.bytes_out, "Plaintext bytes sent."),
            (
                "keepalives_sent_total",
                &self.keepalives_sent,
                "Keepalives sent.",
            ),
            (
                "keepalives_received_total",
                &self.keepalives_received,
                "Keepalives received.",
            ),
            (
                "send_overloaded_total",
                &self.send_overloaded,
                "Frames refused: send queue full.",
            ),
            (
                "send_no_link_total",
                &self.send_no_link,
                "Frames refused: no link to the peer.",
            ),
            (
                "deliver_dropped_total",
                &self.deliver_dropped,
                "Inbound frames dropped: consumer full.",
            ),
            (
                "links_established_total",
                &self.links_established,
                "Handshakes completed.",
            ),
            ("dial_attempts_total", &self.dial_attempts, "Dial attempts."),
            (
                "accept_full_total",
                &self.accept_full,
                "Connections dropped: no link slot.",
            ),
            (
                "accept_source_full_total",
                &self.accept_source_full,
                "Connections dropped: their source holds its share of unauthenticated slots.",
            ),
            (
                "handshake_rate_limited_total",
                &self.handshake_rate_limited,
                "Connections dropped: their source started too many handshakes.",
            ),
            (
                "sends_off_worker_total",
                &self.sends_off_worker,
                "Frames sent over a link that does not end at the worker they were for.",
            ),
            (
                "dials_off_worker_total",
                &self.dials_off_worker,
                "Links dialed for one peer worker that reached another.",
            ),
        ];
        for (name, counter, help) in plain {
            let _ = writeln!(out, "# HELP presence_bg_{name} {help}");
            let _ = writeln!(out, "# TYPE presence_bg_{name} counter");
            let _ = writeln!(out, "presence_bg_{name} {}", Self::get(counter));
        }
        let _ = writeln!(out, "# HELP presence_bg_links_up Links up now.");
        let _ = writeln!(out, "# TYPE presence_bg_links_up gauge");
        let _ = writeln!(
            out,
            "presence_bg_links_up {}",
            self.links_up.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP presence_bg_refused_total Handshakes refused, by reason."
        );
        let _ = writeln!(out, "# TYPE presence_bg_refused_total counter");
        for refusal in Refusal::ALL {
            let _ = writeln!(
                out,
                "presence_bg_refused_total{{reason=\"{}\"}} {}",
                refusal.name(),
                self.refused(refusal)
            );
        }
        let _ = writeln!(
            out,
            "# HELP presence_bg_closed_total Links closed, by reason."
        );
        let _ = writeln!(out, "# TYPE presence_bg_closed_total counter");
        for reason in CloseReason::ALL {
            let _ = writeln!(
                out,
                "presence_bg_closed_total{{reason=\"{}\"}} {}",
                reason.name(),
                self.closed(reason)
            );
        }
    }
}
