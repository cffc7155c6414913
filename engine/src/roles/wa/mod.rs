//! Watcher Application (steps 1–4 and 13): the edge A's devices talk to.
//!
//! - Step 1: A asks "is B attached?" with a `ClientRequest` naming B's MSISDN.
//! - Step 2: the WA authenticates A (the credential provisioned for A's
//!   number, compared in constant time) and checks and debits A's prepay
//!   credit. Credit is an unsigned balance debited only when it covers the
//!   cost: it can never go negative. A failed query (timeout, error,
//!   overload) is refunded; an answer, including NotAvailable, is not.
//! - Step 3: internal or external: the numbering table (own ranges, other
//!   networks' longer prefixes carved out of them, ported numbers both
//!   ways) places B in this network or not. The node looks the targets of a
//!   whole frame up in one batch ([`crate::table::lookup_batch`]) and hands
//!   each request its answer, so the WA keeps no table of its own.
//! - Step 4: the query goes to the OGPS, or for an internal B straight to
//!   this node's IGPS.
//! - Step 13: the WA answers A exactly once: the first final answer from the
//!   network, or an explicit `Error(Timeout)` at the deadline.
//!
//! The WA holds the only per-query state of the flow: a bounded table of
//! pending transactions with their deadlines. Until a deadline it
//! retransmits with exponential backoff (the same transaction id, so the
//! presence server answers and charges once), and honours an `Overloaded`
//! answer's retry-after. Timers: [`WatcherApp::poll_timeout`] says when to
//! call [`WatcherApp::handle_timeout`]; an early call is harmless.
//!
//! Watching (issue 17): a device's Subscribe and Unsubscribe are
//! transactions as a query is (a Subscribe debited as a query is, an
//! Unsubscribe free), sent along the query's path as §5.4 and §5.5
//! messages. A Subscribe answered with B's status leaves a subscription
//! here, one per watcher and target, bounded by `pending_max`: the
//! device's latest request id and the last notification number passed
//! on. Each Notify from B's presence server goes to A's device under
//! that request id, once, in order (a number not above the last one is
//! dropped); the last one (`remaining_s` 0), an Unsubscribe answered, or
//! an expiry passed ends it. A refresh is the device subscribing again.

mod device;
mod pending;

use std::collections::HashMap;

use ahash::AHashMap;

use std::net::SocketAddr;

use presence_codec::{
    Answer, ClientOperation, ClientRequest, DeviceAuth, DeviceKey, ErrorReason, Message, Msisdn,
    Notify, Outcome, Query, CREDENTIAL_LEN_MAX,
};

use self::device::{DeviceRequest, DeviceRequests};
use self::pending::{Pending, PendingTable};
use super::auth::{
    AuthGuard, AuthPolicy, DeviceAuthPolicy, Failure, ReplayWindow, Seen, Timeliness,
};
use super::limit::{Bucket, Rate};
use super::timer::{Timer, TimerWheel};
use super::{Addr, Ask, DropCounters, Millis, Outbox};
use crate::table::NetworkId;

/// What the WA knows of one of its subscribers (from provisioning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscriber {
    /// The secret A's devices are provisioned with (at most 32 bytes; the
    /// device key is derived from it and A's number, §5.11). Empty: A's
    /// devices cannot authenticate.
    pub credential: Vec<u8>,
    /// Prepay credit, in query units of [`WaConfig::query_cost`].
    pub credit: u64,
}

/// A subscriber as the WA keeps it: the device key inline, so checking a
/// request costs no extra memory access.
#[derive(Clone, Debug)]
struct Account {
    /// `None`: no usable secret was provisioned; nothing authenticates.
    key: Option<DeviceKey>,
    /// Counters of A's requests seen ([`ReplayWindow`]).
    replay: ReplayWindow,
    credit: u64,
    /// The watcher's rate limit ([`WaConfig::watcher_rate`]).
    bucket: Bucket,
    /// Failed checks of the credential ([`WaConfig::auth`]).
    guard: AuthGuard,
}

impl Account {
    /// A secret longer than 32 bytes, or empty, gives no key: such a
    /// subscriber's requests are all refused.
    fn of(msisdn: Msisdn, s: &Subscriber, floor_unix_ms: u64) -> Account {
        let usable = !s.credential.is_empty() && s.credential.len() <= CREDENTIAL_LEN_MAX;
        Account {
            key: usable.then(|| DeviceKey::derive(msisdn, &s.credential)),
            replay: ReplayWindow::starting_at(floor_unix_ms),
            credit: s.credit,
            bucket: Bucket::default(),
            guard: AuthGuard::default(),
        }
    }
}

/// Configuration of one WA instance.
#[derive(Clone, Debug)]
pub struct WaConfig {
    /// This network.
    pub network: NetworkId,
    /// This WA instance: the `reply_node` answers come back to (the node's
    /// worker index).
    pub instance: u16,
    /// Time A waits for an answer, in milliseconds.
    pub deadline_ms: u16,
    /// First retransmission after this many milliseconds; doubled each time.
    pub retransmit_initial_ms: u64,
    /// Hop limit of new queries.
    pub hop_limit: u8,
    /// Transactions pending at once (rounded up to a power of two): a new
    /// query whose slot is still held by one issued that many ids earlier is
    /// refused with `Overloaded`.
    pub pending_max: usize,
    /// Credit units one query costs.
    pub query_cost: u64,
    /// How failed credential checks of one watcher are limited.
    pub auth: AuthPolicy,
    /// How devices authenticate: MACs, their clock skew, the replay floor;
    /// the insecure credential form.
    pub device_auth: DeviceAuthPolicy,
    /// Queries one watcher may ask per second, and in a burst (`None`:
    /// unlimited). Beyond it A is answered `Overloaded` with the time its
    /// next query would be taken; nothing is debited or sent.
    pub watcher_rate: Option<Rate>,
    /// When this WA instance started, in seconds on a wall clock (the runtime
    /// passes its start time). Transaction counters start at
    /// `boot_time_s << 22`, so a restarted WA continues ahead of every id it
    /// used before (at up to four million queries per second) and presence
    /// servers do not take its new queries for stale ones.
    pub boot_time_s: u64,
}

impl WaConfig {
    /// Defaults for a network: 1.5 s deadline, retransmit after 200 ms, hop
    /// limit 8, 65,536 pending transactions, one unit per query.
    pub fn new(network: NetworkId) -> WaConfig {
        WaConfig {
            network,
            instance: 0,
            deadline_ms: 1500,
            retransmit_initial_ms: 200,
            hop_limit: 8,
            pending_max: 65_536,
            query_cost: 1,
            auth: AuthPolicy::default(),
            device_auth: DeviceAuthPolicy::default(),
            watcher_rate: None,
            boot_time_s: 0,
        }
    }
}

/// Low bits of a transaction id: this instance's counter. It wraps (about
/// every two years at the start-time rate); presence servers compare
/// counters in serial-number arithmetic, so the wrap is seamless.
const COUNTER_MASK: u64 = (1 << 48) - 1;
/// A restarted WA's counter starts this many bits of ids per second ahead.
const TXIDS_PER_SECOND_BITS: u32 = 22;
/// A device request is remembered this many deadlines: a device sending
/// the same request again within them gets its one answer, never a second
/// query (docs/reliability.md).
pub const DEVICE_REPEAT_DEADLINES: u64 = 4;
/// Retry-after told to A when the pending table is full.
const PENDING_FULL_RETRY_MS: u32 = 100;

/// Counters of what the WA decided, for metrics and the simulation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaCounters {
    /// Queries accepted and sent into the network.
    pub accepted: u64,
    /// Of those, internal.
    pub internal: u64,
    /// Refused: bad or missing credential, unknown watcher, or a check
    /// not made (the two below).
    pub unauthenticated: u64,
    /// Credential checks that failed (`presence_auth_failures_total`).
    pub auth_failures: u64,
    /// Refused without a check: the watcher locked out by its failures.
    pub auth_locked: u64,
    /// Refused without a check: the source network's failure budget spent.
    pub auth_source_limited: u64,
    /// Refused: a MAC that verified on a counter outside the clock skew, or
    /// older than the replay window (a replay, or a device's clock astray).
    pub auth_stale: u64,
    /// A counter already taken, from another source than the request that
    /// carried it first, or no longer remembered: a replay, not answered.
    pub replays: u64,
    /// Refused: the version 1 credential form, not enabled
    /// (`insecure_credentials`).
    pub insecure_refused: u64,
    /// Watchers locked out (the first lock-out of a run of failures): the
    /// `credential_guessing` alarm.
    pub lockouts: u64,
    /// Refused: credit does not cover the query.
    pub credit_exhausted: u64,
    /// Answered `Overloaded`: the watcher passed its rate limit.
    pub throttled: u64,
    /// A device sent a request again: ignored while pending, answered again
    /// with the same outcome once answered. Never a second query.
    pub device_repeats: u64,
    /// Retransmissions sent.
    pub retransmissions: u64,
    /// Final answers given to A (answers and timeouts).
    pub final_answers: u64,
    /// Of those, timeouts.
    pub timeouts: u64,
    /// Subscriptions held (granted or refreshed by B's presence server).
    pub watches_granted: u64,
    /// Notifications passed on to devices.
    pub notifications: u64,
    /// Notifications dropped: a number already passed on (a duplicate or
    /// old news), or no subscription here to take it.
    pub notifications_dropped: u64,
    /// Refused or dropped for other reasons.
    pub drops: DropCounters,
}

impl WaCounters {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &WaCounters) {
        self.accepted += other.accepted;
        self.internal += other.internal;
        self.unauthenticated += other.unauthenticated;
        self.auth_failures += other.auth_failures;
        self.auth_locked += other.auth_locked;
        self.auth_source_limited += other.auth_source_limited;
        self.auth_stale += other.auth_stale;
        self.replays += other.replays;
        self.insecure_refused += other.insecure_refused;
        self.lockouts += other.lockouts;
        self.credit_exhausted += other.credit_exhausted;
        self.throttled += other.throttled;
        self.device_repeats += other.device_repeats;
        self.retransmissions += other.retransmissions;
        self.final_answers += other.final_answers;
        self.timeouts += other.timeouts;
        self.watches_granted += other.watches_granted;
        self.notifications += other.notifications;
        self.notifications_dropped += other.notifications_dropped;
        self.drops.add(&other.drops);
    }
}

/// What became of a device request at the WA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFate {
    /// Accepted: debited, and its query sent.
    Accepted,
    /// A repeat of a request already taken: ignored, or answered again.
    Repeat,
    /// Refused after its credential was checked and matched (rate limit,
    /// credit, a full table), or refused unchecked (a locked-out watcher).
    Refused,
    /// Refused because its credential was checked and did not match, or
    /// its watcher is unknown: a failure the source network is charged for.
    AuthFailed,
}

/// The Watcher Application of one network (one instance).
#[derive(Debug)]
pub struct WatcherApp {
    config: WaConfig,
    subscribers: AHashMap<Msisdn, Account>,
    pending: PendingTable,
    device_requests: DeviceRequests,
    timers: TimerWheel,
    /// Scratch for due timers (capacity kept).
    due: Vec<Timer>,
    next_txid: u64,
    /// Live subscriptions, by watcher and target.
    watches: AHashMap<(Msisdn, Msisdn), WaWatch>,
    counters: WaCounters,
}

/// A subscription of one of this WA's watchers, as the WA keeps it to pass
/// its notifications on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WaWatch {
    /// The device's request id of its latest Subscribe: notifications go
    /// to the device under it.
    client_txid: u64,
    /// The last notification number passed on (0: none yet).
    last_seq: u32,
    /// When it ends unless refreshed.
    expires_at: Millis,
}

impl WatcherApp {
    /// A WA with these subscribers (a credential longer than 32 bytes is cut
    /// to 32, which no device can then match). Tables are sized for
    /// `pending_max` now, so steady-state traffic allocates nothing.
    pub fn new(config: WaConfig, subscribers: HashMap<Msisdn, Subscriber>) -> WatcherApp {
        let floor = config.device_auth.floor_unix_ms;
        let subscribers: AHashMap<Msisdn, Account> = subscribers
            .into_iter()
            .map(|(m, s)| (m, Account::of(m, &s, floor)))
            .collect();
        let pending = PendingTable::new(config.pending_max);
        let slots = pending.slots.len();
        WatcherApp {
            subscribers,
            pending,
            device_requests: DeviceRequests::new(slots),
            // Entries of finished transactions stay until compacted away
            // (see `push_timer`): twice the live maximum leaves room.
            timers: TimerWheel::new(slots.saturating_mul(2).max(16)),
            due: Vec::with_capacity(1024),
            next_txid: u64::from(config.instance) << 48
                | (config.boot_time_s << TXIDS_PER_SECOND_BITS) & COUNTER_MASK,
            watches: AHashMap::new(),
            config,
            counters: WaCounters::default(),
        }
    }

    /// Adds a subscriber, or updates one: the credential is replaced; an
    /// existing subscriber keeps the credit it has left (a reprovisioning is
    /// not a top-up).
    pub fn provision(&mut self, msisdn: Msisdn, subscriber: &Subscriber) {
        let account = Account::of(msisdn, subscriber, self.config.device_auth.floor_unix_ms);
        match self.subscribers.get_mut(&msisdn) {
            Some(existing) => {
                // The window stays: counters seen under the old key are
                // not taken again under the new.
                existing.key = account.key;
            }
            None => {
                self.subscribers.insert(msisdn, account);
            }
        }
    }

    /// Removes a subscriber: its requests are refused from now on.
    pub fn deprovision(&mut self, msisdn: Msisdn) {
        self.subscribers.remove(&msisdn);
    }

    /// Whether `msisdn` is a subscriber of this WA.
    pub fn has_subscriber(&self, msisdn: Msisdn) -> bool {
        self.subscribers.contains_key(&msisdn)
    }

    /// What the WA has decided so far.
    pub fn counters(&self) -> WaCounters {
        self.counters
    }

    /// Stage one of a batch of device requests: starts loading, for every
    /// request, the memory its handling will miss on (its slot in the
    /// device-request index, and the index slots the ring's evictions will
    /// clear), so the misses overlap instead of following one another.
    /// Reads nothing the caller could observe.
    pub fn prefetch_requests(&self, requests: &[ClientRequest<'_>]) {
        for request in requests {
            self.device_requests
                .prefetch((request.watcher, request.txid));
        }
        self.device_requests.prefetch_evictions(requests.len());
    }

    /// Stage one of a batch of answers: starts loading each one's pending
    /// slot.
    pub fn prefetch_answers(&self, answers: &[Answer]) {
        for answer in answers {
            self.pending.prefetch(answer.txid);
        }
    }

    /// Whether `msisdn` is a subscriber here. Read ahead of a batch (see
    /// the runtime's warm-up pass), it brings the subscriber's entry into
    /// the cache while other lookups are in flight.
    pub fn knows(&self, msisdn: Msisdn) -> bool {
        self.subscribers.contains_key(&msisdn)
    }

    /// The device waiting for transaction `txid`, if one is.
    pub fn pending_device(&self, txid: u64) -> Option<Msisdn> {
        self.pending.get(txid).map(|p| p.device)
    }

    /// Pins transaction `txid` to `network`, where the OGPS sent it: its
    /// retransmissions are routed there (see [`WatcherApp::pinned_route`]).
    pub fn pin_route(&mut self, txid: u64, network: NetworkId) {
        if let Some(pending) = self.pending.get_mut(txid) {
            pending.route = Some(network);
        }
    }

    /// The network transaction `txid` was first sent to, if pinned.
    pub fn pinned_route(&self, txid: u64) -> Option<NetworkId> {
        self.pending.get(txid).and_then(|p| p.route)
    }

    /// A's remaining credit.
    pub fn credit(&self, msisdn: Msisdn) -> Option<u64> {
        self.subscribers.get(&msisdn).map(|s| s.credit)
    }

    /// Transactions waiting for an answer.
    pub fn pending_len(&self) -> usize {
        self.pending.len
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.timers.next_at()
    }

    fn reply_to_device(
        &mut self,
        device: Msisdn,
        txid: u64,
        target: Msisdn,
        outcome: Outcome,
        out: &mut Outbox,
    ) {
        out.send(
            Addr::Device(device),
            self.config.network,
            Message::Answer(Answer {
                txid,
                reply_node: self.config.instance,
                target,
                outcome,
            }),
        );
    }

    /// Refuses a request without checking its credential, exactly as a
    /// wrong one is refused: its source network's failure budget is spent
    /// (the node's [`SourceGuard`](crate::roles::SourceGuard)).
    pub fn refuse_unchecked(
        &mut self,
        device: Msisdn,
        request: &ClientRequest<'_>,
        out: &mut Outbox,
    ) {
        self.counters.auth_source_limited += 1;
        self.counters.unauthenticated += 1;
        let outcome = Outcome::Error(ErrorReason::Unauthenticated);
        self.reply_to_device(device, request.txid, request.target, outcome, out);
    }

    /// Step 2's check of a request from `device`, before anything else is
    /// looked at: `Ok(fresh)` if it authenticates (`fresh`: its counter is
    /// new, or it has none, in the insecure form), else the fate of the
    /// refusal (already answered, or not, for a replay).
    fn authenticate(
        &mut self,
        now: Millis,
        device: Msisdn,
        request: &ClientRequest<'_>,
        out: &mut Outbox,
    ) -> Result<bool, RequestFate> {
        let policy = self.config.device_auth;
        let unauthenticated = Outcome::Error(ErrorReason::Unauthenticated);
        // A device speaks for its own number only; a watcher locked out by
        // failed checks is not checked at all, and answered as a wrong
        // credential is (docs/reliability.md, §4a).
        let Some(account) = self
            .subscribers
            .get_mut(&request.watcher)
            .filter(|_| request.watcher == device)
        else {
            self.counters.auth_failures += 1;
            self.counters.unauthenticated += 1;
            self.reply_to_device(device, request.txid, request.target, unauthenticated, out);
            return Err(RequestFate::AuthFailed);
        };
        if let DeviceAuth::Credential(_) = request.auth {
            if !policy.insecure_credentials {
                // Not a guess at anything: the form is switched off.
                self.counters.insecure_refused += 1;
                self.counters.unauthenticated += 1;
                self.reply_to_device(device, request.txid, request.target, unauthenticated, out);
                return Err(RequestFate::Refused);
            }
        }
        if !account.guard.admits(now) {
            self.counters.auth_locked += 1;
            self.counters.unauthenticated += 1;
            self.reply_to_device(device, request.txid, request.target, unauthenticated, out);
            return Err(RequestFate::Refused);
        }
        let authentic = account.key.as_ref().is_some_and(|key| match request.auth {
            DeviceAuth::Mac { .. } => key.verifies(&Message::ClientRequest(*request)),
            DeviceAuth::Credential(c) => key.matches_secret(request.watcher, c.as_bytes()),
        });
        if !authentic {
            if let Failure::LockedOut { first: true } = account.guard.failed(now, &self.config.auth)
            {
                self.counters.lockouts += 1;
            }
            self.counters.auth_failures += 1;
            self.counters.unauthenticated += 1;
            self.reply_to_device(device, request.txid, request.target, unauthenticated, out);
            return Err(RequestFate::AuthFailed);
        }
        account.guard.succeeded();
        let DeviceAuth::Mac { counter, .. } = request.auth else {
            return Ok(true);
        };
        // The key made this request; when is the question: its counter must
        // be near our clock, not from before our start, and unseen (a
        // replay window per watcher).
        let seen = match policy.timeliness(now, counter) {
            Timeliness::Timely => account.replay.classify(counter),
            Timeliness::BeforeFloor { retry_after_ms } => {
                // Maybe a device right after our start, maybe a capture
                // from before it: not taken; a new request soon is.
                self.counters.auth_stale += 1;
                let retry_after_ms = u32::try_from(retry_after_ms).unwrap_or(u32::MAX);
                let outcome = Outcome::Overloaded { retry_after_ms };
                self.reply_to_device(device, request.txid, request.target, outcome, out);
                return Err(RequestFate::Refused);
            }
            Timeliness::OutOfTime => Seen::Old,
        };
        match seen {
            Seen::New => {
                account.replay.mark(counter);
                Ok(true)
            }
            Seen::Repeat => Ok(false),
            Seen::Old => {
                self.counters.auth_stale += 1;
                self.counters.unauthenticated += 1;
                self.reply_to_device(device, request.txid, request.target, unauthenticated, out);
                Err(RequestFate::Refused)
            }
        }
    }

    /// Steps 1–4 for a request from `device`, sent from `from`.
    /// `target_network` is the numbering table's network for B (step 3:
    /// internal when it is this network).
    ///
    /// A request whose counter was seen already is a retransmission, or a
    /// replay: it is answered from the memory of device requests, and only
    /// to the address the request first came from; never debited or sent
    /// again.
    pub fn handle_request(
        &mut self,
        now: Millis,
        device: Msisdn,
        from: SocketAddr,
        request: &ClientRequest<'_>,
        target_network: Option<NetworkId>,
        out: &mut Outbox,
    ) -> RequestFate {
        let refuse = |wa: &mut WatcherApp, outcome, out: &mut Outbox| {
            wa.reply_to_device(device, request.txid, request.target, outcome, out);
        };
        let fresh = match self.authenticate(now, device, request, out) {
            Ok(fresh) => fresh,
            Err(fate) => return fate,
        };
        let key = (request.watcher, request.txid);
        if !fresh {
            // A counter taken before: the same request again, from where
            // it first came, gets what the first got; anything else is a
            // replay and gets nothing.
            return match self.device_requests.get(now, key, request.target) {
                Some((_, source)) if source != from => {
                    self.counters.replays += 1;
                    RequestFate::Repeat
                }
                Some((DeviceRequest::Pending, _)) => {
                    self.counters.device_repeats += 1;
                    RequestFate::Repeat
                }
                Some((DeviceRequest::Answered(outcome), _)) => {
                    self.counters.device_repeats += 1;
                    refuse(self, outcome, out);
                    RequestFate::Repeat
                }
                None => {
                    self.counters.replays += 1;
                    RequestFate::Repeat
                }
            };
        }
        // A new counter on a request id already taken: the device asking
        // again under a fresh counter; never a second query either.
        match self.device_requests.get(now, key, request.target) {
            Some((DeviceRequest::Pending, _)) => {
                self.counters.device_repeats += 1;
                return RequestFate::Repeat;
            }
            Some((DeviceRequest::Answered(outcome), _)) => {
                self.counters.device_repeats += 1;
                refuse(self, outcome, out);
                return RequestFate::Repeat;
            }
            None => {}
        }
        if let Some(rate) = self.config.watcher_rate {
            let limited = self
                .subscribers
                .get_mut(&request.watcher)
                .map(|s| s.bucket.take(now, rate));
            if let Some(Err(retry_after_ms)) = limited {
                self.counters.throttled += 1;
                refuse(self, Outcome::Overloaded { retry_after_ms }, out);
                return RequestFate::Refused;
            }
        }
        // A full pending table, or a new subscription with no room to
        // keep it.
        let no_watch_room = matches!(request.operation, ClientOperation::Subscribe { .. })
            && !self.watch_room(now, request.watcher, request.target);
        if !self.pending.is_free(self.next_txid) || no_watch_room {
            self.counters.drops.overloaded += 1;
            refuse(
                self,
                Outcome::Overloaded {
                    retry_after_ms: PENDING_FULL_RETRY_MS,
                },
                out,
            );
            return RequestFate::Refused;
        }
        // Stopping a watch costs nothing.
        let cost = match request.operation {
            ClientOperation::Unsubscribe => 0,
            _ => self.config.query_cost,
        };
        if !self.subscribers.contains_key(&request.watcher) {
            return RequestFate::Refused;
        }
        // Remembered for four deadlines: a device retrying the same id
        // until well after the deadline (its own answer may be lost more
        // than once) finds it, and is not charged twice.
        let keep_ms = u64::from(self.config.deadline_ms) * DEVICE_REPEAT_DEADLINES;
        let device_slot = self
            .device_requests
            .insert(now, key, request.target, from, keep_ms);
        let Some(subscriber) = self.subscribers.get_mut(&request.watcher) else {
            return RequestFate::Refused;
        };
        // Step 2: debit only what the balance covers; it never goes negative.
        match subscriber.credit.checked_sub(cost) {
            Some(left) => subscriber.credit = left,
            None => {
                self.counters.credit_exhausted += 1;
                let outcome = Outcome::Error(ErrorReason::CreditExhausted);
                self.device_requests
                    .answered(device_slot, key, request.target, outcome);
                refuse(self, outcome, out);
                return RequestFate::Refused;
            }
        }
        // Step 3.
        let internal = target_network == Some(self.config.network);
        let txid = self.next_txid;
        // The counter wraps within this instance's 48 bits.
        self.next_txid = (txid & !COUNTER_MASK) | (txid.wrapping_add(1) & COUNTER_MASK);
        let deadline = now + u64::from(self.config.deadline_ms);
        let pending = Pending {
            device,
            client_txid: request.txid,
            target: request.target,
            watcher: request.watcher,
            deadline,
            retransmit_ms: self.config.retransmit_initial_ms.max(1),
            next_send: now + self.config.retransmit_initial_ms.max(1),
            timer_generation: 0,
            internal,
            route: None,
            cost,
            device_slot,
            operation: request.operation,
        };
        self.counters.accepted += 1;
        self.counters.internal += u64::from(internal);
        self.pending.insert(txid, pending);
        self.push_timer(pending.next_send.min(deadline), txid, 0);
        // Step 4.
        self.send_query(now, txid, &pending, out);
        RequestFate::Accepted
    }

    fn send_query(&self, now: Millis, txid: u64, pending: &Pending, out: &mut Outbox) {
        let budget_ms = pending
            .deadline
            .saturating_sub(now)
            .min(u64::from(u16::MAX)) as u16;
        let to = if pending.internal {
            Addr::Igps
        } else {
            Addr::Ogps
        };
        let query = Query {
            txid,
            watcher: pending.watcher,
            target: pending.target,
            hop_limit: self.config.hop_limit,
            budget_ms,
            reply_node: self.config.instance,
            route_version: 0,
        };
        let ask = match pending.operation {
            ClientOperation::Query => Ask::Query,
            ClientOperation::Subscribe { expiry_s } => Ask::Subscribe(expiry_s),
            ClientOperation::Unsubscribe => Ask::Unsubscribe,
        };
        out.send(to, self.config.network, ask.message(query));
    }

    /// Whether a Subscribe of `watcher` to `target` has room: it refreshes
    /// one held, or the table (bounded by `pending_max`) has room once the
    /// expired are cleared out.
    fn watch_room(&mut self, now: Millis, watcher: Msisdn, target: Msisdn) -> bool {
        let cap = self.pending.slots.len();
        if self.watches.len() < cap || self.watches.contains_key(&(watcher, target)) {
            return true;
        }
        self.watches.retain(|_, w| w.expires_at > now);
        self.watches.len() < cap
    }

    /// Subscriptions held.
    pub fn watches_len(&self) -> usize {
        self.watches.len()
    }

    /// A notification from B's presence server for one of this WA's
    /// subscriptions: passed on to A's device under the device's request
    /// id, unless it is not newer than the last one passed on, or there is
    /// no such subscription (ended, expired, never granted here).
    pub fn handle_notify(&mut self, now: Millis, notify: &Notify, out: &mut Outbox) {
        let key = (notify.watcher, notify.target);
        let Some(watch) = self.watches.get_mut(&key) else {
            self.counters.notifications_dropped += 1;
            return;
        };
        if watch.expires_at <= now && notify.remaining_s > 0 {
            // Expired here without its last notification: ended all the
            // same (a late notification is no news of a live watch).
            self.watches.remove(&key);
            self.counters.notifications_dropped += 1;
            return;
        }
        if notify.seq <= watch.last_seq {
            self.counters.notifications_dropped += 1;
            return;
        }
        watch.last_seq = notify.seq;
        watch.expires_at = now.saturating_add(u64::from(notify.remaining_s) * 1000);
        let client_txid = watch.client_txid;
        if notify.remaining_s == 0 {
            self.watches.remove(&key);
        }
        self.counters.notifications += 1;
        out.send(
            Addr::Device(notify.watcher),
            self.config.network,
            Message::Notify(Notify {
                txid: client_txid,
                reply_node: self.config.instance,
                ..*notify
            }),
        );
    }

    /// What a final answer to a Subscribe or Unsubscribe does to the
    /// subscriptions held.
    fn settle_watch(&mut self, now: Millis, pending: &Pending, outcome: Outcome) {
        let key = (pending.watcher, pending.target);
        match pending.operation {
            ClientOperation::Subscribe { expiry_s } if outcome.shows_status() => {
                let expires_at = now.saturating_add(u64::from(expiry_s.get()) * 1000);
                self.counters.watches_granted += 1;
                let watch = self.watches.entry(key).or_insert(WaWatch {
                    client_txid: pending.client_txid,
                    last_seq: 0,
                    expires_at,
                });
                watch.client_txid = pending.client_txid;
                watch.expires_at = expires_at;
            }
            // Refused, not permitted (any more), or stopped: no watch.
            ClientOperation::Subscribe { .. } if !outcome_retryable(outcome) => {
                self.watches.remove(&key);
            }
            ClientOperation::Unsubscribe if !outcome_retryable(outcome) => {
                self.watches.remove(&key);
            }
            _ => {}
        }
    }

    /// Step 12 arriving: an answer from the network, for a pending
    /// transaction of this WA — the final answer to A, or a retry-after to
    /// honour.
    pub fn handle_answer(&mut self, now: Millis, answer: &Answer, out: &mut Outbox) {
        let Some(pending) = self.pending.get_mut(answer.txid) else {
            self.counters.drops.unmatched += 1;
            return;
        };
        if pending.target != answer.target {
            // Not the answer to this question: a forged or broken answer.
            self.counters.drops.unmatched += 1;
            return;
        }
        if let Outcome::Overloaded { retry_after_ms } = answer.outcome {
            if pending.deadline <= now {
                // No time is left to ask again: A gets the timeout now, not
                // a millisecond late from a timer armed in the past.
                self.finish(now, answer.txid, Outcome::Error(ErrorReason::Timeout), out);
                return;
            }
            // Honour the retry-after: ask again then, not before; if that is
            // past the deadline, A gets the timeout at the deadline.
            let retry_at = now + u64::from(retry_after_ms);
            pending.next_send = retry_at;
            pending.timer_generation = pending.timer_generation.wrapping_add(1);
            let generation = pending.timer_generation;
            let at = retry_at.min(pending.deadline);
            self.push_timer(at, answer.txid, generation);
            return;
        }
        self.finish(now, answer.txid, answer.outcome, out);
    }

    /// Step 13: the one final answer to A.
    fn finish(&mut self, now: Millis, txid: u64, outcome: Outcome, out: &mut Outbox) {
        let Some(pending) = self.pending.remove(txid) else {
            return;
        };
        if pending.operation != ClientOperation::Query {
            self.settle_watch(now, &pending, outcome);
        }
        if matches!(outcome, Outcome::Error(_) | Outcome::Overloaded { .. }) {
            if let Some(subscriber) = self.subscribers.get_mut(&pending.watcher) {
                subscriber.credit = subscriber.credit.saturating_add(pending.cost);
            }
        }
        self.counters.final_answers += 1;
        self.counters.timeouts += u64::from(outcome == Outcome::Error(ErrorReason::Timeout));
        self.device_requests.answered(
            pending.device_slot,
            (pending.watcher, pending.client_txid),
            pending.target,
            outcome,
        );
        self.reply_to_device(
            pending.device,
            pending.client_txid,
            pending.target,
            outcome,
            out,
        );
    }

    /// Arms a timer. The heap never grows past its start-up capacity: when
    /// it is full, the entries of finished or re-armed transactions are
    /// dropped first (at most one live entry per pending transaction, so at
    /// least half of it frees up). No allocation, amortised O(log n).
    fn push_timer(&mut self, at: Millis, txid: u64, generation: u32) {
        if self.timers.is_full() {
            let pending = &self.pending;
            self.timers.retain(|timer| {
                pending
                    .get(timer.txid)
                    .is_some_and(|p| p.timer_generation == timer.generation)
            });
        }
        self.timers.insert(Timer {
            at,
            txid,
            generation,
        });
    }

    /// Retransmits and times out what is due at `now`.
    pub fn handle_timeout(&mut self, now: Millis, out: &mut Outbox) {
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        self.timers.pop_due(now, &mut due);
        for &Timer {
            txid, generation, ..
        } in &due
        {
            let Some(pending) = self.pending.get_mut(txid) else {
                continue;
            };
            if pending.timer_generation != generation {
                continue;
            }
            if now >= pending.deadline {
                self.finish(now, txid, Outcome::Error(ErrorReason::Timeout), out);
                continue;
            }
            if now >= pending.next_send {
                pending.retransmit_ms = pending.retransmit_ms.saturating_mul(2);
                pending.next_send = now + pending.retransmit_ms;
                pending.timer_generation = pending.timer_generation.wrapping_add(1);
                let next = pending.next_send.min(pending.deadline);
                let generation = pending.timer_generation;
                let snapshot = *pending;
                self.counters.retransmissions += 1;
                self.push_timer(next, txid, generation);
                self.send_query(now, txid, &snapshot, out);
            } else {
                let next = pending.next_send.min(pending.deadline);
                self.push_timer(next, txid, generation);
            }
        }
        self.due = due;
    }
}

/// Whether an outcome leaves the question open (a timeout, an overload, an
/// error on the way): a watch held stays as it was.
fn outcome_retryable(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Overloaded { .. } | Outcome::Error(_))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use presence_codec::Credential;

    use super::*;

    /// Where the tests' device sends from.
    const DEVICE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(10, 0, 0, 1),
        4000,
    ));

    thread_local! {
        /// The last counter this test's device signed with.
        static LAST_COUNTER: Cell<u64> = const { Cell::new(0) };
    }

    /// A request of A's device with id `id`, signed at `now` (the WA's
    /// clock is Unix time 0 at 0) under the key of `secret`.
    fn signed(now: Millis, id: u64, secret: &[u8]) -> ClientRequest<'static> {
        let counter = LAST_COUNTER.with(|last| {
            last.set(now.max(last.get() + 1));
            last.get()
        });
        DeviceKey::derive(m(A), secret).sign_request(
            ClientRequest {
                txid: id,
                watcher: m(A),
                target: m(B),
                operation: ClientOperation::Query,
                auth: DeviceAuth::UNSIGNED,
            },
            counter,
        )
    }

    fn m(t: &str) -> Msisdn {
        t.parse().unwrap()
    }

    const A: &str = "447700900123";
    const B: &str = "4915112345678";

    fn wa(credit: u64) -> WatcherApp {
        WatcherApp::new(
            WaConfig::new(NetworkId(1)),
            HashMap::from([(
                m(A),
                Subscriber {
                    credential: b"pw".to_vec(),
                    credit,
                },
            )]),
        )
    }

    /// A new request (a fresh device request id each call).
    fn ask(wa: &mut WatcherApp, now: Millis, credential: &[u8], out: &mut Outbox) {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ask_as(wa, now, id, credential, out);
    }

    /// A request with device request id `id`, signed under `secret`'s key.
    fn ask_as(wa: &mut WatcherApp, now: Millis, id: u64, secret: &[u8], out: &mut Outbox) {
        let request = signed(now, id, secret);
        // B is of another network (7).
        wa.handle_request(now, m(A), DEVICE, &request, Some(NetworkId(7)), out);
    }

    #[test]
    fn a_replayed_request_is_answered_only_where_it_came_from_and_never_debited_again() {
        let mut wa = wa(100);
        let mut out = Outbox::default();
        let captured = signed(1_000, 77, b"pw");
        wa.handle_request(1_000, m(A), DEVICE, &captured, Some(NetworkId(7)), &mut out);
        let query = out.transmits.iter().find_map(|t| match t.message {
            Message::Query(q) => Some(q),
            _ => None,
        });
        let query = query.expect("the first is taken");
        assert_eq!(wa.credit(m(A)), Some(99));
        // Replayed while pending, from the attacker's address: nothing.
        let attacker: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        out.clear();
        wa.handle_request(
            1_001,
            m(A),
            attacker,
            &captured,
            Some(NetworkId(7)),
            &mut out,
        );
        assert!(out.transmits.is_empty(), "no answer, no query");
        // The answer comes; the device asks again (its answer was lost):
        // the same answer, to it only.
        out.clear();
        let answer = Answer {
            txid: query.txid,
            reply_node: 0,
            target: m(B),
            outcome: Outcome::Detached { confirmed_age_s: 3 },
        };
        wa.handle_answer(1_050, &answer, &mut out);
        out.clear();
        wa.handle_request(1_100, m(A), DEVICE, &captured, Some(NetworkId(7)), &mut out);
        assert_eq!(outcome_to_device(&out), Some(answer.outcome));
        assert!(out.transmits.iter().all(|t| t.to != Addr::Ogps));
        out.clear();
        wa.handle_request(
            1_100,
            m(A),
            attacker,
            &captured,
            Some(NetworkId(7)),
            &mut out,
        );
        assert!(out.transmits.is_empty(), "the attacker still gets nothing");
        // Long after the memory forgot it: still nothing, still one debit.
        out.clear();
        wa.handle_request(
            50_000,
            m(A),
            DEVICE,
            &captured,
            Some(NetworkId(7)),
            &mut out,
        );
        assert!(out.transmits.is_empty());
        assert_eq!(wa.credit(m(A)), Some(99), "debited once");
        assert_eq!(wa.counters().replays, 3);
        assert_eq!(wa.counters().accepted, 1);
        // Once 64 newer requests passed it, it is too old to tell: refused.
        for i in 0..64 {
            ask(&mut wa, 50_001 + i, b"pw", &mut out);
        }
        out.clear();
        wa.handle_request(
            50_100,
            m(A),
            DEVICE,
            &captured,
            Some(NetworkId(7)),
            &mut out,
        );
        assert_eq!(
            outcome_to_device(&out),
            Some(Outcome::Error(ErrorReason::Unauthenticated))
        );
        assert_eq!(wa.counters().auth_stale, 1);
        assert_eq!(wa.counters().auth_failures, 0, "not a guess");
    }

    #[test]
    fn a_counter_out_of_time_or_from_before_a_restart_is_refused() {
        let mut config = WaConfig::new(NetworkId(1));
        config.device_auth.unix_ms_at_zero = 1_000_000;
        // Started at 1_000_000 + 500; device clocks at most 2 s ahead.
        config.device_auth.floor_unix_ms = 1_000_500 + 2_000;
        config.device_auth.clock_skew_ms = 60_000;
        let subscribers = HashMap::from([(
            m(A),
            Subscriber {
                credential: b"pw".to_vec(),
                credit: 10,
            },
        )]);
        let mut wa = WatcherApp::new(config, subscribers);
        let key = DeviceKey::derive(m(A), b"pw");
        let request = |txid, counter| {
            key.sign_request(
                ClientRequest {
                    txid,
                    watcher: m(A),
                    target: m(B),
                    operation: ClientOperation::Query,
                    auth: DeviceAuth::UNSIGNED,
                },
                counter,
            )
        };
        let mut out = Outbox::default();
        let unauthenticated = Some(Outcome::Error(ErrorReason::Unauthenticated));
        // Signed before this WA started (a capture from its last life).
        wa.handle_request(3_000, m(A), DEVICE, &request(1, 1_000_400), None, &mut out);
        assert_eq!(outcome_to_device(&out), unauthenticated);
        // A device clock two minutes slow, or three seconds fast.
        for counter in [1_003_000 - 120_000, 1_003_000 + 3_000] {
            out.clear();
            wa.handle_request(3_000, m(A), DEVICE, &request(2, counter), None, &mut out);
            assert_eq!(outcome_to_device(&out), unauthenticated);
        }
        // Signed just after the start, or by a clock up to 2 s fast just
        // before it: not taken, and told when a new request will be.
        out.clear();
        wa.handle_request(600, m(A), DEVICE, &request(3, 1_000_600), None, &mut out);
        assert_eq!(
            outcome_to_device(&out),
            Some(Outcome::Overloaded {
                retry_after_ms: 1_900
            })
        );
        assert_eq!(wa.counters().auth_stale, 4);
        assert_eq!(wa.counters().auth_failures, 0);
        // In time and after the floor: taken.
        out.clear();
        wa.handle_request(3_000, m(A), DEVICE, &request(4, 1_002_501), None, &mut out);
        assert_eq!(wa.counters().accepted, 1);
    }

    #[test]
    fn the_credential_in_clear_is_refused_unless_switched_on() {
        let clear = ClientRequest {
            txid: 9,
            watcher: m(A),
            target: m(B),
            operation: ClientOperation::Query,
            auth: DeviceAuth::Credential(Credential::new(b"pw").unwrap()),
        };
        let mut out = Outbox::default();
        let mut off = wa(10);
        off.handle_request(5, m(A), DEVICE, &clear, Some(NetworkId(7)), &mut out);
        assert_eq!(
            outcome_to_device(&out),
            Some(Outcome::Error(ErrorReason::Unauthenticated))
        );
        assert_eq!(off.counters().insecure_refused, 1);
        let mut config = WaConfig::new(NetworkId(1));
        config.device_auth.insecure_credentials = true;
        let mut on = WatcherApp::new(
            config,
            HashMap::from([(
                m(A),
                Subscriber {
                    credential: b"pw".to_vec(),
                    credit: 10,
                },
            )]),
        );
        out.clear();
        on.handle_request(5, m(A), DEVICE, &clear, Some(NetworkId(7)), &mut out);
        assert!(out.transmits.iter().any(|t| t.to == Addr::Ogps));
        let wrong = ClientRequest {
            auth: DeviceAuth::Credential(Credential::new(b"pW").unwrap()),
            txid: 10,
            ..clear
        };
        out.clear();
        on.handle_request(6, m(A), DEVICE, &wrong, Some(NetworkId(7)), &mut out);
        assert_eq!(on.counters().auth_failures, 1);
    }

    fn outcome_to_device(out: &Outbox) -> Option<Outcome> {
        out.transmits.iter().find_map(|t| match (t.to, t.message) {
            (Addr::Device(_), Message::Answer(a)) => Some(a.outcome),
            _ => None,
        })
    }

    #[test]
    fn a_guesser_is_locked_out_before_the_check_and_cannot_tell_it() {
        let mut wa = wa(100);
        let mut out = Outbox::default();
        let unauthenticated = Some(Outcome::Error(ErrorReason::Unauthenticated));
        // Guessing as fast as it can for a minute, one guess a millisecond.
        for now in 0..60_000 {
            out.clear();
            ask_as(&mut wa, now, now, b"guess", &mut out);
            assert_eq!(outcome_to_device(&out), unauthenticated);
        }
        let counters = wa.counters();
        // Five in the first 5 ms, then after 6, 12 and 24 s of lock-out.
        assert_eq!(counters.auth_failures, 8, "checks made in the minute");
        assert_eq!(counters.auth_locked, 60_000 - 8, "refused unchecked");
        assert_eq!(counters.lockouts, 1, "one alarm for the run");
        // The right credential while locked out: refused the same way, and
        // not checked, so a guesser learns nothing from it either.
        out.clear();
        ask_as(&mut wa, 60_000, 1 << 40, b"pw", &mut out);
        assert_eq!(outcome_to_device(&out), unauthenticated);
        assert_eq!(wa.credit(m(A)), Some(100), "nothing debited");
        // Once the lock-out ends, the owner gets in and the run is over.
        out.clear();
        ask_as(&mut wa, 90_010, 1 << 41, b"pw", &mut out);
        assert!(out.transmits.iter().any(|t| t.to == Addr::Ogps));
        out.clear();
        ask_as(&mut wa, 90_011, 1 << 42, b"bad", &mut out);
        assert_eq!(outcome_to_device(&out), unauthenticated);
        out.clear();
        ask_as(&mut wa, 90_012, 1 << 43, b"pw", &mut out);
        assert!(
            out.transmits.iter().any(|t| t.to == Addr::Ogps),
            "one mistake after a success is not locked out"
        );
    }

    #[test]
    fn a_watcher_over_its_rate_is_told_when_to_retry_and_not_debited() {
        let mut config = WaConfig::new(NetworkId(1));
        config.watcher_rate = Some(Rate {
            per_second: 10,
            burst: 2,
        });
        let mut wa = WatcherApp::new(
            config,
            HashMap::from([(
                m(A),
                Subscriber {
                    credential: b"pw".to_vec(),
                    credit: 100,
                },
            )]),
        );
        let mut out = Outbox::default();
        ask(&mut wa, 1_000, b"pw", &mut out);
        ask(&mut wa, 1_000, b"pw", &mut out);
        assert_eq!(wa.pending_len(), 2, "the burst is taken");
        out.clear();
        ask(&mut wa, 1_000, b"pw", &mut out);
        assert_eq!(
            outcome_to_device(&out),
            Some(Outcome::Overloaded {
                retry_after_ms: 100
            })
        );
        assert!(
            out.transmits.iter().all(|t| t.to != Addr::Ogps),
            "nothing sent"
        );
        assert_eq!((wa.credit(m(A)), wa.counters().throttled), (Some(98), 1));
        out.clear();
        ask(&mut wa, 1_100, b"pw", &mut out);
        assert_eq!(wa.pending_len(), 3, "taken again at the retry-after");
    }

    #[test]
    fn a_request_the_device_sends_again_is_not_a_second_query() {
        let mut wa = wa(10);
        let mut out = Outbox::default();
        ask_as(&mut wa, 0, 7, b"pw", &mut out);
        let txid = out
            .transmits
            .iter()
            .find_map(|t| match t.message {
                Message::Query(q) => Some(q.txid),
                _ => None,
            })
            .unwrap();
        out.clear();
        // Again while pending: ignored, nothing sent, nothing debited.
        ask_as(&mut wa, 50, 7, b"pw", &mut out);
        assert!(out.transmits.is_empty());
        assert_eq!((wa.credit(m(A)), wa.pending_len()), (Some(9), 1));
        let answer = Answer {
            txid,
            reply_node: 0,
            target: m(B),
            outcome: Outcome::Detached { confirmed_age_s: 3 },
        };
        wa.handle_answer(100, &answer, &mut out);
        assert_eq!(outcome_to_device(&out), Some(answer.outcome));
        out.clear();
        // Again once answered: the same answer, still one query.
        ask_as(&mut wa, 200, 7, b"pw", &mut out);
        assert_eq!(outcome_to_device(&out), Some(answer.outcome));
        assert!(out.transmits.iter().all(|t| t.to != Addr::Ogps));
        assert_eq!(wa.credit(m(A)), Some(9));
        assert_eq!(wa.counters().device_repeats, 2);
        // Four deadlines later the id is forgotten: a new query.
        out.clear();
        ask_as(&mut wa, 6_001, 7, b"pw", &mut out);
        assert!(out.transmits.iter().any(|t| t.to == Addr::Ogps));
    }

    #[test]
    fn wa_refuses_a_bad_credential_without_debiting() {
        let mut wa = wa(5);
        let mut out = Outbox::default();
        ask(&mut wa, 0, b"wrong", &mut out);
        assert_eq!(
            outcome_to_device(&out),
            Some(Outcome::Error(ErrorReason::Unauthenticated))
        );
        assert_eq!(wa.credit(m(A)), Some(5));
        assert_eq!(wa.pending_len(), 0);
    }

    #[test]
    fn wa_refuses_when_credit_is_exhausted_and_never_goes_negative() {
        let mut wa = wa(1);
        let mut out = Outbox::default();
        ask(&mut wa, 0, b"pw", &mut out);
        assert_eq!(wa.credit(m(A)), Some(0));
        out.clear();
        ask(&mut wa, 1, b"pw", &mut out);
        assert_eq!(
            outcome_to_device(&out),
            Some(Outcome::Error(ErrorReason::CreditExhausted))
        );
        assert_eq!(wa.credit(m(A)), Some(0));
    }

    #[test]
    fn wa_retransmits_with_backoff_then_times_out_once_and_refunds() {
        let mut wa = wa(5);
        let mut out = Outbox::default();
        ask(&mut wa, 0, b"pw", &mut out);
        assert_eq!(out.transmits[0].to, Addr::Ogps, "external: to the OGPS");
        let mut sent_at = vec![0];
        let mut now = 0;
        while let Some(at) = wa.poll_timeout() {
            now = at;
            out.clear();
            wa.handle_timeout(now, &mut out);
            for t in &out.transmits {
                if let Message::Query(q) = t.message {
                    assert_eq!(u64::from(q.budget_ms), 1500 - now, "budget shrinks");
                    sent_at.push(now);
                }
            }
            if outcome_to_device(&out).is_some() {
                break;
            }
        }
        assert_eq!(sent_at, vec![0, 200, 600, 1400], "200 ms, doubling");
        assert_eq!(now, 1500);
        assert_eq!(
            outcome_to_device(&out),
            Some(Outcome::Error(ErrorReason::Timeout))
        );
        assert_eq!(wa.credit(m(A)), Some(5), "a timed-out query is refunded");
        assert_eq!(wa.counters().timeouts, 1);
        out.clear();
        wa.handle_timeout(10_000, &mut out);
        assert!(out.transmits.is_empty(), "answered exactly once");
    }

    #[test]
    fn wa_honours_retry_after_of_an_overloaded_answer() {
        let mut wa = wa(5);
        let mut out = Outbox::default();
        ask(&mut wa, 0, b"pw", &mut out);
        let Message::Query(q) = out.transmits[0].message else {
            panic!("a query")
        };
        out.clear();
        let overloaded = Answer {
            txid: q.txid,
            reply_node: 0,
            target: m(B),
            outcome: Outcome::Overloaded {
                retry_after_ms: 700,
            },
        };
        wa.handle_answer(50, &overloaded, &mut out);
        assert!(out.transmits.is_empty(), "not final: retried later");
        wa.handle_timeout(200, &mut out);
        assert!(
            out.transmits.is_empty(),
            "no retransmission before the retry-after"
        );
        wa.handle_timeout(750, &mut out);
        assert!(matches!(out.transmits[0].message, Message::Query(_)));
    }

    #[test]
    fn wa_numbers_transactions_ahead_of_its_previous_life() {
        let mut config = WaConfig::new(NetworkId(1));
        config.instance = 3;
        config.boot_time_s = 1_000;
        let before = WatcherApp::new(config.clone(), HashMap::new()).next_txid;
        config.boot_time_s = 1_060;
        let after = WatcherApp::new(config, HashMap::new()).next_txid;
        assert_eq!(before >> 48, 3, "the instance is in the top bits");
        assert_eq!(
            after - before,
            60 << 22,
            "a minute later: 60 × 4 Mi ids ahead"
        );
    }

    #[test]
    fn wa_sends_home_numbers_to_its_own_igps() {
        let mut wa = wa(5);
        let mut out = Outbox::default();
        let request = ClientRequest {
            target: m("447712345678"),
            ..signed(0, 1, b"pw")
        };
        let request = DeviceKey::derive(m(A), b"pw").sign_request(request, 1);
        // The numbering table placed B in this network (1).
        wa.handle_request(0, m(A), DEVICE, &request, Some(NetworkId(1)), &mut out);
        assert_eq!(out.transmits[0].to, Addr::Igps);
    }

    #[test]
    fn a_granted_subscription_passes_each_notify_on_once_in_order_until_the_last() {
        let mut wa = wa(10);
        let mut out = Outbox::default();
        let counter = LAST_COUNTER.with(|last| {
            last.set(1_000.max(last.get() + 1));
            last.get()
        });
        let request = DeviceKey::derive(m(A), b"pw").sign_request(
            ClientRequest {
                txid: 55,
                watcher: m(A),
                target: m(B),
                operation: ClientOperation::Subscribe {
                    expiry_s: std::num::NonZeroU32::new(60).unwrap(),
                },
                auth: DeviceAuth::UNSIGNED,
            },
            counter,
        );
        wa.handle_request(1_000, m(A), DEVICE, &request, Some(NetworkId(7)), &mut out);
        let Some(Message::Subscribe(sub)) = out.transmits.first().map(|t| t.message) else {
            panic!("a subscription goes out as one: {:?}", out.transmits)
        };
        assert_eq!(sub.expiry_s.get(), 60);
        assert_eq!(wa.credit(m(A)), Some(9), "debited as a query is");
        let answer = Answer {
            txid: sub.query.txid,
            reply_node: sub.query.reply_node,
            target: m(B),
            outcome: Outcome::Detached { confirmed_age_s: 0 },
        };
        out.clear();
        wa.handle_answer(1_100, &answer, &mut out);
        assert_eq!(wa.watches_len(), 1);
        let notify = |seq, remaining_s| Notify {
            txid: sub.query.txid,
            reply_node: sub.query.reply_node,
            watcher: m(A),
            target: m(B),
            seq,
            remaining_s,
            outcome: Outcome::NotAvailable,
        };
        let passed = |wa: &mut WatcherApp, n: Notify| {
            let mut out = Outbox::default();
            wa.handle_notify(2_000, &n, &mut out);
            out.transmits
                .iter()
                .filter_map(|t| match t.message {
                    Message::Notify(n) if t.to == Addr::Device(m(A)) => Some(n),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let first = passed(&mut wa, notify(1, 50));
        assert_eq!(
            (first[0].txid, first[0].seq),
            (55, 1),
            "the device's own id"
        );
        assert!(passed(&mut wa, notify(1, 50)).is_empty(), "a duplicate");
        assert_eq!(passed(&mut wa, notify(3, 48)).len(), 1);
        assert!(passed(&mut wa, notify(2, 49)).is_empty(), "old news");
        assert_eq!(passed(&mut wa, notify(4, 0)).len(), 1, "the last one");
        assert_eq!(wa.watches_len(), 0);
        assert!(
            passed(&mut wa, notify(5, 40)).is_empty(),
            "nothing after it"
        );
        assert_eq!(wa.counters().notifications_dropped, 3);
    }
}
