//! What the harness sends: a deterministic mix of requests, one per sequence
//! number, and what each kind of request should be answered.
//!
//! A request's transaction id carries its class in the top byte and its
//! sequence number below, so an answer says by itself which request it
//! closes, when that request was meant to be sent (sequence ÷ rate) and what
//! it should have been answered: the harness keeps no per-request table.

use std::num::NonZeroU32;

use presence_codec::{
    AckStatus, ClientOperation, ClientRequest, DeviceAuth, ErrorReason, Message, Outcome,
    PresenceState, Publish, Reachability,
};

use super::population::Population;

/// Bits of a transaction id holding the sequence number.
pub const SEQ_BITS: u32 = 56;
/// Mask of the sequence number.
pub const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// Kinds of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Class {
    /// A asks about B in the other network, and is on B's buddy list.
    ExternalPermitted = 0,
    /// A asks about B in the other network, and is not on B's list.
    ExternalNotPermitted = 1,
    /// A asks about a subscriber of A's own network who lists A.
    InternalPermitted = 2,
    /// A asks about a subscriber of A's own network who does not list A.
    InternalNotPermitted = 3,
    /// B's device publishes B's status to B's network.
    Publish = 4,
    /// A subscribes to B's status changes.
    Subscribe = 5,
}

/// Every class, in order.
pub const CLASSES: [Class; 6] = [
    Class::ExternalPermitted,
    Class::ExternalNotPermitted,
    Class::InternalPermitted,
    Class::InternalNotPermitted,
    Class::Publish,
    Class::Subscribe,
];

impl Class {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Class::ExternalPermitted => "external permitted",
            Class::ExternalNotPermitted => "external not permitted",
            Class::InternalPermitted => "internal permitted",
            Class::InternalNotPermitted => "internal not permitted",
            Class::Publish => "publish",
            Class::Subscribe => "subscribe",
        }
    }

    /// The class a transaction id's top byte names.
    pub fn of_txid(txid: u64) -> Option<Class> {
        CLASSES
            .get(usize::try_from(txid >> SEQ_BITS).ok()?)
            .copied()
    }

    /// Whether `outcome` is what this class of request should get from an
    /// appliance with every check on. A subscription's watcher is on its
    /// target's list, so it is answered with the target's status, as a
    /// permitted query is.
    pub fn expects(self, outcome: OutcomeKind) -> bool {
        use OutcomeKind as O;
        match self {
            Class::ExternalPermitted | Class::InternalPermitted | Class::Subscribe => {
                matches!(outcome, O::Attached | O::Detached)
            }
            Class::ExternalNotPermitted | Class::InternalNotPermitted => outcome == O::NotAvailable,
            Class::Publish => outcome == O::AckOk,
        }
    }
}

/// What an answer said, in a few kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum OutcomeKind {
    /// B is attached.
    Attached = 0,
    /// B is detached.
    Detached,
    /// Not available (unknown, or not permitted: the two look the same).
    NotAvailable,
    /// Shed for load (an `Overloaded` answer or ack).
    Overloaded,
    /// The WA gave up waiting for B's network.
    Timeout,
    /// A's credential or credit was refused.
    Unauthorised,
    /// The WA refused the operation.
    Refused,
    /// Any other error answer.
    OtherError,
    /// A publication was accepted.
    AckOk,
    /// A publication was refused.
    AckRefused,
    /// The ceiling's echo returned the request itself.
    Echo,
}

/// Number of [`OutcomeKind`]s.
pub const OUTCOME_KINDS: usize = 11;

/// Every outcome kind, in order.
pub const OUTCOMES: [OutcomeKind; OUTCOME_KINDS] = [
    OutcomeKind::Attached,
    OutcomeKind::Detached,
    OutcomeKind::NotAvailable,
    OutcomeKind::Overloaded,
    OutcomeKind::Timeout,
    OutcomeKind::Unauthorised,
    OutcomeKind::Refused,
    OutcomeKind::OtherError,
    OutcomeKind::AckOk,
    OutcomeKind::AckRefused,
    OutcomeKind::Echo,
];

impl OutcomeKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            OutcomeKind::Attached => "attached",
            OutcomeKind::Detached => "detached",
            OutcomeKind::NotAvailable => "not_available",
            OutcomeKind::Overloaded => "overloaded",
            OutcomeKind::Timeout => "wa_timeout",
            OutcomeKind::Unauthorised => "unauthorised",
            OutcomeKind::Refused => "refused",
            OutcomeKind::OtherError => "other_error",
            OutcomeKind::AckOk => "publish_ok",
            OutcomeKind::AckRefused => "publish_refused",
            OutcomeKind::Echo => "echo",
        }
    }

    /// The kind of a query's answer.
    pub fn of_outcome(outcome: &Outcome) -> OutcomeKind {
        match outcome {
            Outcome::Attached { .. } => OutcomeKind::Attached,
            Outcome::Detached { .. } => OutcomeKind::Detached,
            Outcome::NotAvailable => OutcomeKind::NotAvailable,
            Outcome::Overloaded { .. } => OutcomeKind::Overloaded,
            Outcome::Error(ErrorReason::Timeout) => OutcomeKind::Timeout,
            Outcome::Error(ErrorReason::Unauthenticated | ErrorReason::CreditExhausted) => {
                OutcomeKind::Unauthorised
            }
            Outcome::Error(ErrorReason::Refused) => OutcomeKind::Refused,
            Outcome::Error(_) => OutcomeKind::OtherError,
        }
    }

    /// The kind of a publication's ack.
    pub fn of_ack(status: AckStatus) -> OutcomeKind {
        match status {
            AckStatus::Ok => OutcomeKind::AckOk,
            AckStatus::Overloaded => OutcomeKind::Overloaded,
            _ => OutcomeKind::AckRefused,
        }
    }
}

/// Shares of the request mix, in percent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    /// Of the queries, the share about A's own network.
    pub internal_pct: f64,
    /// Of the queries, the share whose watcher is not on the target's list.
    pub not_permitted_pct: f64,
    /// Of all requests, the share that are B's status publications.
    pub publish_pct: f64,
    /// Of all requests, the share that are subscriptions.
    pub subscribe_pct: f64,
}

impl Default for Mix {
    /// Every request an external, permitted query: the figure the targets
    /// are stated in.
    fn default() -> Mix {
        Mix {
            internal_pct: 0.0,
            not_permitted_pct: 0.0,
            publish_pct: 0.0,
            subscribe_pct: 0.0,
        }
    }
}

impl Mix {
    /// Checks every share is 0–100 and the non-query shares leave room.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("internal", self.internal_pct),
            ("not-permitted", self.not_permitted_pct),
            ("publish", self.publish_pct),
            ("subscribe", self.subscribe_pct),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("--{name} must be 0 to 100, not {v}"));
            }
        }
        if self.publish_pct + self.subscribe_pct > 100.0 {
            return Err("--publish and --subscribe add up to more than 100".into());
        }
        Ok(())
    }

    /// One line describing the mix.
    pub fn describe(&self) -> String {
        let queries = 100.0 - self.publish_pct - self.subscribe_pct;
        format!(
            "queries {queries:.1}% ({:.1}% internal, {:.1}% not permitted), publications {:.1}%, subscriptions {:.1}%",
            self.internal_pct, self.not_permitted_pct, self.publish_pct, self.subscribe_pct
        )
    }
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A's appliance (A's devices).
    A,
    /// B's appliance (B's devices).
    B,
}

/// What the harness sends in one step.
#[derive(Clone, Copy, Debug)]
pub enum Workload {
    /// Requests drawn from the mix.
    Mix(Mix, u64),
    /// Every `every`-th target publishes "attached", in order: sets up
    /// statuses before a measurement.
    AttachEvery(usize),
}

fn split_mix(x: u64) -> u64 {
    // splitmix64's finaliser: a well-spread hash of the sequence number.
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn below(r: u64, n: usize) -> usize {
    // Lemire's multiply-shift: r spread over 0..n.
    ((u128::from(r) * n as u128) >> 64) as usize
}

fn chance(r: u64, pct: f64) -> bool {
    (r % 1_000_000) as f64 / 10_000.0 < pct
}

/// How far ahead, in requests, each stage of [`Workload::prefetch`] runs:
/// the target's entry first, its buddy run next, the watcher's entry last,
/// each a miss on a million subscribers that depends on the one before.
pub const PREFETCH_DISTANCE: u64 = 8;

impl Workload {
    /// Starts loading, into the cache, what drawing request `seq` will
    /// read at `stage` (1: the target's entry; 2: its buddy run; 3: the
    /// watcher's entry), so that a burst's misses overlap. The driver runs
    /// stage `k` for the request `(4 - k) × PREFETCH_DISTANCE` ahead of the
    /// one it draws. The requests drawn are the same with or without it.
    pub fn prefetch(&self, population: &Population, seq: u64, stage: u8) {
        let Workload::Mix(mix, seed) = *self else {
            return;
        };
        let (a, b) = (&population.a, &population.b);
        let r = [0u64, 1, 2, 3].map(|k| split_mix(seed ^ seq.wrapping_mul(4).wrapping_add(k)));
        let roll = (r[0] % 1_000_000) as f64 / 10_000.0;
        if roll < mix.publish_pct + mix.subscribe_pct {
            // Publications and subscriptions touch one entry of B's.
            if stage == 1 {
                b.prefetch_entry(below(r[1], b.len()));
            }
            return;
        }
        let targets = if chance(r[1], mix.internal_pct) { a } else { b };
        let j = below(r[2], targets.len());
        match stage {
            1 => targets.prefetch_entry(j),
            2 => targets.prefetch_buddies(j),
            _ => {
                let buddies = targets.buddies(j);
                let w = if !chance(r[3], mix.not_permitted_pct) && !buddies.is_empty() {
                    buddies
                        .get(below(r[3].rotate_left(32), buddies.len()))
                        .map_or(0, |w| *w as usize)
                } else {
                    below(r[3].rotate_left(17), a.len())
                };
                a.prefetch_entry(w);
            }
        }
    }

    /// Requests this workload has in all, if it is finite.
    pub fn finite_len(&self, population: &Population) -> Option<u64> {
        match self {
            Workload::Mix(..) => None,
            Workload::AttachEvery(every) => {
                Some(population.b.len().div_ceil((*every).max(1)) as u64)
            }
        }
    }

    /// Request `seq` (the `index`-th of its step): where it goes and the
    /// message, its transaction id carrying class and sequence number,
    /// signed by its device with a counter at `now_unix_ms` (§5.11).
    pub fn request<'p>(
        &self,
        population: &'p Population,
        seq: u64,
        index: u64,
        now_unix_ms: u64,
    ) -> (Destination, Message<'p>) {
        let (a, b) = (&population.a, &population.b);
        let txid = |class: Class| (class as u64) << SEQ_BITS | (seq & SEQ_MASK);
        let publish = |i: usize, state| {
            (
                Destination::B,
                Message::Publish(b.sign_publish(
                    i,
                    Publish {
                        txid: txid(Class::Publish),
                        subscriber: b.msisdn(i),
                        state,
                        auth: DeviceAuth::UNSIGNED,
                    },
                    now_unix_ms,
                )),
            )
        };
        let (mix, seed) = match *self {
            Workload::AttachEvery(every) => {
                let i = usize::try_from(index)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(every.max(1));
                return publish(
                    i.min(b.len().saturating_sub(1)),
                    PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS),
                );
            }
            Workload::Mix(mix, seed) => (mix, seed),
        };
        let r = [0u64, 1, 2, 3].map(|k| split_mix(seed ^ seq.wrapping_mul(4).wrapping_add(k)));
        let roll = (r[0] % 1_000_000) as f64 / 10_000.0;
        if roll < mix.publish_pct {
            let i = below(r[1], b.len());
            let state = if r[2] & 1 == 0 {
                PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS)
            } else {
                PresenceState::Detached
            };
            return publish(i, state);
        }
        let (class, watcher, target) = if roll < mix.publish_pct + mix.subscribe_pct {
            let j = below(r[1], b.len());
            let w = b.buddies(j).first().map_or(0, |w| *w as usize);
            (Class::Subscribe, w, b.msisdn(j))
        } else {
            let internal = chance(r[1], mix.internal_pct);
            let targets = if internal { a } else { b };
            let j = below(r[2], targets.len());
            let buddies = targets.buddies(j);
            let mut permitted = !chance(r[3], mix.not_permitted_pct) && !buddies.is_empty();
            let watcher = if permitted {
                buddies
                    .get(below(r[3].rotate_left(32), buddies.len()))
                    .map_or(0, |w| *w as usize)
            } else {
                // A watcher not on the list (and not the target itself).
                let mut w = below(r[3].rotate_left(17), a.len());
                for step in 1..=16u64 {
                    let listed = buddies.iter().any(|b| *b as usize == w);
                    let itself = internal && w == j;
                    if !listed && !itself {
                        break;
                    }
                    w = below(split_mix(r[3] ^ step), a.len());
                }
                // In a population so small that every watcher is listed,
                // the last draw may still be: then it is what it is.
                if buddies.iter().any(|b| *b as usize == w) && !(internal && w == j) {
                    permitted = true;
                }
                w
            };
            let class = match (internal, permitted) {
                (false, true) => Class::ExternalPermitted,
                (false, false) => Class::ExternalNotPermitted,
                (true, true) => Class::InternalPermitted,
                (true, false) => Class::InternalNotPermitted,
            };
            (class, watcher, targets.msisdn(j))
        };
        let operation = if class == Class::Subscribe {
            ClientOperation::Subscribe {
                expiry_s: NonZeroU32::MIN.saturating_add(599),
            }
        } else {
            ClientOperation::Query
        };
        (
            Destination::A,
            Message::ClientRequest(a.sign_request(
                watcher,
                ClientRequest {
                    txid: txid(class),
                    watcher: a.msisdn(watcher),
                    target,
                    operation,
                    auth: DeviceAuth::UNSIGNED,
                },
                now_unix_ms,
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_id_carries_its_class_and_sequence() {
        for class in CLASSES {
            let txid = (class as u64) << SEQ_BITS | 12345;
            assert_eq!(Class::of_txid(txid), Some(class));
            assert_eq!(txid & SEQ_MASK, 12345);
        }
        assert_eq!(Class::of_txid(0xff << SEQ_BITS), None);
    }

    #[test]
    fn each_class_expects_only_its_own_outcomes() {
        use OutcomeKind as O;
        assert!(Class::ExternalPermitted.expects(O::Attached));
        assert!(Class::ExternalPermitted.expects(O::Detached));
        assert!(!Class::ExternalPermitted.expects(O::NotAvailable));
        assert!(Class::ExternalNotPermitted.expects(O::NotAvailable));
        assert!(!Class::ExternalNotPermitted.expects(O::Attached));
        assert!(Class::Publish.expects(O::AckOk));
        assert!(!Class::Publish.expects(O::AckRefused));
        assert!(!Class::InternalPermitted.expects(O::Timeout));
    }

    #[test]
    fn shares_outside_0_to_100_are_refused() {
        let bad = Mix {
            internal_pct: 101.0,
            ..Mix::default()
        };
        assert!(bad.validate().is_err());
        let over = Mix {
            publish_pct: 60.0,
            subscribe_pct: 50.0,
            ..Mix::default()
        };
        assert!(over.validate().is_err());
        assert!(Mix::default().validate().is_ok());
    }

    #[test]
    fn the_draw_is_spread_and_reproducible() {
        let n = 1000;
        let mut hits = vec![0u32; 10];
        for seq in 0..100_000u64 {
            let r = split_mix(7 ^ seq);
            hits[below(r, 10)] += 1;
            assert!(below(r, n) < n);
            assert_eq!(split_mix(7 ^ seq), r);
        }
        assert!(hits.iter().all(|h| (9_000..11_000).contains(h)), "{hits:?}");
    }
}
