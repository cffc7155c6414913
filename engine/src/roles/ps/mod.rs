//! Presence Server (steps 10–12). In the appliance each node holds a slice
//! of every presence server: the subscribers it owns.
//!
//! Per subscriber B it holds B's status (attached with how B is reachable, or
//! detached, and when a device of B last confirmed it), B's buddy list (who
//! may watch) and B's consent (given to all, or withdrawn for all; withdrawn
//! for single watchers). Devices of B publish status; provisioning changes
//! buddies and consent.
//!
//! - Step 10: a query is answered with B's status only if the watcher is one
//!   of B's buddies and B still consents. Unknown subscriber and not permitted
//!   get the same `NotAvailable`.
//! - Step 11: every fresh decision is a [`DecisionRecord`]; those on queries
//!   from another network are journaled, and those that answered with B's
//!   status are the charge records, charging A's network, which is the
//!   origin carried beside the query (the border's authenticated peer),
//!   never a field of the message.
//! - Step 12: the answer goes back to the origin network's WA.
//!
//! Exactly once: the first decision for a transaction (origin network, txid)
//! is kept for a window longer than any deadline; a retransmitted or
//! duplicated query gets the same answer again and raises nothing. The
//! decision records are what the caller journals, so after a restart the
//! window is rebuilt from them ([`PresenceServer::restart`]). When the window
//! table is full the server sheds load with `Overloaded` rather than risk a
//! second charge. A subscriber moved to another server takes its window
//! entries along, and leaves a forwarding pointer for one window: a query
//! already on its way to the old server follows it instead of being decided
//! twice.

use ahash::AHashMap as HashMap;
use smallvec::SmallVec;

use presence_codec::{
    Ack, AckStatus, BuddyAction, BuddyUpdate, Consent, ConsentScope, ConsentUpdate, DeviceAuth,
    DeviceKey, ErrorReason, Message, Msisdn, Notify, Outcome, PresenceState, Publish, Query,
    CREDENTIAL_LEN_MAX, DEVICE_KEY_LEN,
};

mod watch;
mod window;

pub use self::watch::{
    EndReason, Granted, Notice, NoticeKind, WatchKey, WatchLimits, WatchRefused, Watches,
};
use self::window::{DecisionWindow, WindowLookup};
pub use self::window::{DecisionWindowEntry, WINDOW_STREAMS_MAX, WINDOW_STREAMS_PER_ORIGIN_MAX};
use super::auth::{AuthGuard, AuthPolicy, DeviceAuthPolicy, Failure, Timeliness};
use super::igps::reply_addr;
use super::store::{SubscriberStore, SubscriberView};
use super::{answer_to, one_hop_on, Addr, DropCounters, Millis, Outbox, PsId};
use crate::table::NetworkId;

/// Most watchers on one buddy list.
pub const BUDDIES_MAX: usize = 1024;
/// Retry-after given when the duplicate-suppression window is full.
const WINDOW_FULL_RETRY_MS: u32 = 100;
/// Retry-after given when a subscription limit of the origin or of the
/// whole table is reached.
const WATCHES_FULL_RETRY_MS: u32 = 10_000;

/// Everything a presence server holds about one subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberRecord {
    /// The key of B's devices (32 bytes, [`DeviceKey`]), or empty: no
    /// device can publish.
    pub device_key: Vec<u8>,
    /// The highest publication counter taken (§5.11); it moves with the
    /// record, so a move does not let an old publication in again.
    pub last_publish: u64,
    /// B's status.
    pub state: PresenceState,
    /// When a device of B last confirmed the status.
    pub confirmed_at: Millis,
    /// Who may watch B, ascending, no repeats; up to 24 are stored inline,
    /// so the step-10 check reads no second block of memory.
    pub buddies: SmallVec<[Msisdn; 24]>,
    /// Whether B consents to being watched at all.
    pub consent_all: bool,
    /// Buddies B has withdrawn consent from, ascending.
    pub withdrawn: Vec<Msisdn>,
}

impl SubscriberRecord {
    /// A detached subscriber with these buddies, consenting, whose devices
    /// hold the key derived from `secret` (none for an empty secret or one
    /// over 32 bytes).
    pub fn new(msisdn: Msisdn, secret: &[u8], mut buddies: Vec<Msisdn>) -> SubscriberRecord {
        buddies.sort_unstable();
        buddies.dedup();
        buddies.truncate(BUDDIES_MAX);
        let usable = !secret.is_empty() && secret.len() <= CREDENTIAL_LEN_MAX;
        SubscriberRecord {
            device_key: if usable {
                DeviceKey::derive(msisdn, secret).as_bytes().to_vec()
            } else {
                Vec::new()
            },
            last_publish: 0,
            state: PresenceState::Detached,
            confirmed_at: 0,
            buddies: SmallVec::from_vec(buddies),
            consent_all: true,
            withdrawn: Vec::new(),
        }
    }

    /// Step 10: whether `watcher` may see this subscriber's status.
    pub fn permits(&self, watcher: Msisdn) -> bool {
        self.consent_all
            && self.buddies.binary_search(&watcher).is_ok()
            && self.withdrawn.binary_search(&watcher).is_err()
    }
}

/// A fresh decision on a query (step 11). Those on queries from another
/// network that show B's status are the charge records, journaled one by
/// one; the others leave their stream's mark in the journal
/// ([`StreamMark`](crate::journal::StreamMark)), so that duplicate
/// suppression survives a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisionRecord {
    /// A's network: the authenticated origin of the query.
    pub origin: NetworkId,
    /// The transaction, as the origin numbered it.
    pub txid: u64,
    /// A.
    pub watcher: Msisdn,
    /// B.
    pub target: Msisdn,
    /// The WA instance the answer went to.
    pub reply_node: u16,
    /// When the presence server decided.
    pub at: Millis,
    /// Which presence server.
    pub ps: PsId,
    /// What A's network was told.
    pub outcome: Outcome,
}

impl DecisionRecord {
    /// Whether this decision is charged to A's network: it showed B's status.
    pub fn chargeable(&self) -> bool {
        self.outcome.shows_status()
    }
}

/// The charge records are the chargeable decisions.
pub type ChargeRecord = DecisionRecord;

/// Whether a presence server can make charge records durable, as its
/// caller's journal reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Charging {
    /// Records are being made durable: queries are decided normally.
    #[default]
    Available,
    /// The journal failed (a full or failing disk): a query that would
    /// show B's status to another network is refused with
    /// `Error(ChargingUnavailable)` (fail closed). The refusal is
    /// remembered like any decision: the WA takes it as final, so a
    /// retransmission or a duplicate arriving once charging is back gets
    /// the same refusal, never a second, charged answer.
    Unavailable,
    /// Answers waiting for their records to become durable are at their
    /// bound: new queries from other networks are answered `Overloaded`.
    Backlogged {
        /// The retry-after told.
        retry_after_ms: u32,
    },
}

/// What a publication's check made of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Publisher {
    /// Authentic and newer than any taken: its status is taken.
    Fresh,
    /// Authentic, not newer: acked, nothing changed.
    Repeat,
    /// Not authentic, not timely, or not checked.
    Refused,
    /// Authentic, signed just below the floor of a restart: to publish
    /// again (acked `Overloaded`).
    HeldOff,
}

/// Counters of the presence server's decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PsCounters {
    /// Queries answered with B's status.
    pub answered_status: u64,
    /// Queries answered `NotAvailable`.
    pub not_available: u64,
    /// Charge records raised.
    pub charged: u64,
    /// Duplicates answered again from the window, without a new decision.
    pub duplicates: u64,
    /// Publications accepted.
    pub publications: u64,
    /// Publications or provisioning refused.
    pub refused: u64,
    /// Publications whose credential was checked and did not match (or
    /// whose subscriber is unknown).
    pub auth_failures: u64,
    /// Publications refused without a check: the subscriber locked out by
    /// failed checks.
    pub auth_locked: u64,
    /// Subscribers locked out (the first lock-out of a run of failures).
    pub lockouts: u64,
    /// Publications refused: a MAC that verified on a counter outside the
    /// clock skew or at or below the floor (a replay across a restart, or
    /// a device's clock astray).
    pub auth_stale: u64,
    /// Publications whose counter was not above the last one taken: a
    /// retransmission, a replay or an older publication overtaken; acked,
    /// the status left as it is.
    pub publish_repeats: u64,
    /// Publications refused: the version 1 credential form, not enabled.
    pub insecure_refused: u64,
    /// Queries whose transaction id was a window or more from their live
    /// stream's mark (the `txid_out_of_window` alarm).
    pub out_of_window: u64,
    /// Queries refused because charging was unavailable (fail closed).
    pub charging_refused: u64,
    /// Queries from other networks answered `Overloaded` after a restart:
    /// at or below their stream's mark, not in the rebuilt window (see
    /// [`RestartMarks`]).
    pub restart_held: u64,
    /// Subscriptions taken.
    pub watches_granted: u64,
    /// Subscriptions refreshed.
    pub watches_refreshed: u64,
    /// Subscriptions refused for a limit.
    pub watches_refused: u64,
    /// Subscriptions ended by an unsubscription.
    pub unsubscribed: u64,
    /// Subscriptions ended otherwise (expiry, permission, the target
    /// gone), each with its last notification.
    pub watches_ended: u64,
    /// Notifications sent.
    pub notifications: u64,
    /// Dropped.
    pub drops: DropCounters,
}

impl PsCounters {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &PsCounters) {
        self.answered_status += other.answered_status;
        self.not_available += other.not_available;
        self.charged += other.charged;
        self.duplicates += other.duplicates;
        self.publications += other.publications;
        self.refused += other.refused;
        self.auth_failures += other.auth_failures;
        self.auth_locked += other.auth_locked;
        self.lockouts += other.lockouts;
        self.auth_stale += other.auth_stale;
        self.publish_repeats += other.publish_repeats;
        self.insecure_refused += other.insecure_refused;
        self.out_of_window += other.out_of_window;
        self.charging_refused += other.charging_refused;
        self.restart_held += other.restart_held;
        self.watches_granted += other.watches_granted;
        self.watches_refreshed += other.watches_refreshed;
        self.watches_refused += other.watches_refused;
        self.unsubscribed += other.unsubscribed;
        self.watches_ended += other.watches_ended;
        self.notifications += other.notifications;
        self.drops.add(&other.drops);
    }
}

/// What a restart knows of the decisions it did not journal one by one:
/// per transaction stream (origin network × A's WA instance), the highest
/// transaction decided without a charge in the last window, and when that
/// knowledge lapses (the mark's time plus the window: a retransmission
/// comes within a window of its original, so past it nothing decided
/// before the restart can come back).
///
/// A query from a marked stream, at or below its mark, that the rebuilt
/// window does not hold (so not a charged decision) may have been decided
/// before the restart; deciding it again could charge A for an answer its
/// WA no longer takes. It is answered `Overloaded` until the mark lapses.
/// Queries above the mark (a WA's new transactions) are decided at once.
#[derive(Debug, Default)]
pub struct RestartMarks {
    by_stream: HashMap<(NetworkId, u16), (u64, Millis)>,
    /// When the last mark lapses.
    until: Millis,
}

/// The key a publication is checked under when there is no subscriber's
/// key to check it with (an unknown number, a locked-out subscriber): any
/// fixed key does, since only the time the check takes matters, and its
/// result is never used.
const DECOY_DEVICE_KEY: [u8; DEVICE_KEY_LEN] = [0x5a; DEVICE_KEY_LEN];

/// What a stream's mark says of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MarkHold {
    /// Every mark has lapsed.
    Passed,
    /// At or below a live mark: answered `Overloaded`.
    Held { retry_after_ms: u32 },
    /// Not covered.
    Free,
}

impl RestartMarks {
    /// Marks from `(origin, instance, highest txid, lapses at)`, the
    /// highest and latest kept per stream.
    pub fn new(marks: impl IntoIterator<Item = (NetworkId, u16, u64, Millis)>) -> RestartMarks {
        let mut by_stream: HashMap<(NetworkId, u16), (u64, Millis)> = HashMap::default();
        let mut until = 0;
        for (origin, instance, high_water, lapses) in marks {
            let entry = by_stream.entry((origin, instance)).or_insert((0, 0));
            entry.0 = entry.0.max(high_water);
            entry.1 = entry.1.max(lapses);
            until = until.max(lapses);
        }
        RestartMarks { by_stream, until }
    }

    /// Whether no mark was kept.
    pub fn is_empty(&self) -> bool {
        self.by_stream.is_empty()
    }

    fn holds(&self, now: Millis, origin: NetworkId, instance: u16, txid: u64) -> MarkHold {
        if now >= self.until {
            return MarkHold::Passed;
        }
        match self.by_stream.get(&(origin, instance)) {
            Some(&(high_water, lapses)) if txid <= high_water && now < lapses => MarkHold::Held {
                retry_after_ms: u32::try_from(lapses - now).unwrap_or(u32::MAX),
            },
            _ => MarkHold::Free,
        }
    }
}

/// One presence server.
#[derive(Debug)]
pub struct PresenceServer {
    id: PsId,
    network: NetworkId,
    store: SubscriberStore,
    window: DecisionWindow,
    /// Subscribers moved away, with where to and until when queries still in
    /// flight are forwarded after them.
    moved: HashMap<Msisdn, (PsId, Millis)>,
    window_ms: u64,
    charging: Charging,
    /// How failed checks of a subscriber's credential are limited.
    auth: AuthPolicy,
    /// How devices authenticate publications.
    device_auth: DeviceAuthPolicy,
    /// After a restart: the streams' marks of the last window (see
    /// [`RestartMarks`]); `None` once they have all passed.
    restart_marks: Option<std::sync::Arc<RestartMarks>>,
    /// Who watches the subscribers held here (issue 17).
    watches: Watches,
    /// Notifications owed and not yet sent: ends decided where there was
    /// no outbox (provisioning), sent by the next
    /// [`poll_watches`](Self::poll_watches) or message handled.
    notices: Vec<Notice>,
    counters: PsCounters,
}

impl PresenceServer {
    /// A presence server (or a node's slice of one) of `network`,
    /// remembering decisions for `window_ms` (longer than any deadline) in
    /// rings of `window_slots` (rounded up to a power of two) per
    /// transaction stream: a WA may issue that many transactions per window
    /// before this server sheds its queries with `Overloaded`.
    pub fn new(
        id: PsId,
        network: NetworkId,
        window_ms: u64,
        window_slots: usize,
    ) -> PresenceServer {
        PresenceServer {
            id,
            network,
            store: SubscriberStore::default(),
            window: DecisionWindow::new(window_slots),
            moved: HashMap::default(),
            window_ms,
            charging: Charging::Available,
            auth: AuthPolicy::default(),
            device_auth: DeviceAuthPolicy::default(),
            restart_marks: None,
            watches: Watches::new(WatchLimits::default()),
            notices: Vec::new(),
            counters: PsCounters::default(),
        }
    }

    /// Sets the subscription limits (kept subscriptions stay).
    pub fn set_watch_limits(&mut self, limits: WatchLimits) {
        let kept = std::mem::take(&mut self.watches);
        self.watches = if kept.is_empty() {
            Watches::new(limits)
        } else {
            kept.with_limits(limits)
        };
    }

    /// Subscriptions kept here.
    pub fn watches(&self) -> &Watches {
        &self.watches
    }

    /// Sends the notifications owed: those decided where there was no
    /// outbox, coalesced ones whose interval opened, and expiries.
    pub fn poll_watches(&mut self, now: Millis, out: &mut Outbox) {
        let mut notices = std::mem::take(&mut self.notices);
        self.watches.poll(now, &mut |n| notices.push(n));
        self.send_notices(now, &mut notices, out);
        self.notices = notices;
    }

    /// When [`poll_watches`](Self::poll_watches) next has work, if ever.
    pub fn next_watch_timeout(&self) -> Option<Millis> {
        if self.notices.is_empty() {
            self.watches.next_timeout()
        } else {
            Some(0)
        }
    }

    /// Builds and sends each notice in `notices` (emptied): a status
    /// notice says the target's status now (the latest, when changes were
    /// coalesced); the last one says `NotAvailable`, whatever ended it, as
    /// an unsubscription's answer does.
    fn send_notices(&mut self, now: Millis, notices: &mut Vec<Notice>, out: &mut Outbox) {
        for notice in notices.drain(..) {
            let WatchKey {
                origin,
                reply_node,
                watcher,
                target,
            } = notice.key;
            let outcome = match notice.kind {
                NoticeKind::Status => self.status_for(now, target, watcher),
                NoticeKind::Ended(_) => Outcome::NotAvailable,
            };
            let notify = Notify {
                txid: notice.txid,
                reply_node,
                watcher,
                target,
                seq: notice.seq,
                remaining_s: notice.remaining_s,
                outcome,
            };
            self.counters.notifications += 1;
            self.counters.watches_ended += u64::from(notice.remaining_s == 0);
            out.send(
                reply_addr(self.network, origin, reply_node),
                origin,
                Message::Notify(notify),
            );
        }
    }

    /// What `watcher` may see of `target` now: its status, or
    /// `NotAvailable` (unknown, or not permitted).
    fn status_for(&self, now: Millis, target: Msisdn, watcher: Msisdn) -> Outcome {
        match self.subscriber(target) {
            Some(b) if b.permits(watcher) => {
                let confirmed_age_s =
                    (now.saturating_sub(b.confirmed_at()) / 1000).min(u64::from(u32::MAX)) as u32;
                match b.state() {
                    PresenceState::Attached(reach) => Outcome::Attached {
                        reach,
                        confirmed_age_s,
                    },
                    PresenceState::Detached => Outcome::Detached { confirmed_age_s },
                }
            }
            _ => Outcome::NotAvailable,
        }
    }

    /// Ends the subscriptions to `target` whose watcher it no longer
    /// permits (or all, if it is gone), owing each its last notification.
    fn recheck_watches(&mut self, target: Msisdn) {
        let notices = &mut self.notices;
        match self.store.get(target) {
            Some(b) => self
                .watches
                .revoke(target, |w| b.permits(w), &mut |n| notices.push(n)),
            None => self.watches.target_gone(target, &mut |n| notices.push(n)),
        }
    }

    /// After a restart: the stream marks of the last window (shared by
    /// every presence server of the node).
    pub fn set_restart_marks(&mut self, marks: std::sync::Arc<RestartMarks>) {
        self.restart_marks = Some(marks);
    }

    /// This server's id.
    pub fn id(&self) -> PsId {
        self.id
    }

    /// What the server has decided so far.
    pub fn counters(&self) -> PsCounters {
        self.counters
    }

    /// Provisions (or replaces) a subscriber. A record larger than the
    /// packed store indexes (more than 2^32 buddies in one shard) is
    /// refused and counted in `refused`.
    pub fn provision(&mut self, msisdn: Msisdn, mut record: SubscriberRecord) {
        // Nothing sent before this server started is taken after it.
        record.last_publish = record.last_publish.max(self.device_auth.floor_unix_ms);
        if self.store.insert(msisdn, &record).is_err() {
            self.counters.refused += 1;
        }
    }

    /// The subscriber, if held here.
    pub fn subscriber(&self, msisdn: Msisdn) -> Option<SubscriberView<'_>> {
        self.store.get(msisdn)
    }

    /// The first buddy of `msisdn`'s list, if held: read ahead of a batch,
    /// it brings the subscriber's entry and list into the cache.
    pub fn first_buddy(&self, msisdn: Msisdn) -> Option<Msisdn> {
        self.subscriber(msisdn)?.buddies().first().copied()
    }

    /// Number of subscribers held.
    pub fn subscriber_count(&self) -> usize {
        self.store.len()
    }

    /// Takes a subscriber out, with the decisions in the window about it, to
    /// move it to server `to` ([`import`](Self::import) there). For one
    /// window, queries about it that were already on their way here are
    /// forwarded to `to`, so a retransmission cannot get a different answer
    /// (or a second charge) there than the original got here.
    pub fn export(
        &mut self,
        now: Millis,
        msisdn: Msisdn,
        to: PsId,
    ) -> Option<(SubscriberRecord, Vec<DecisionWindowEntry>)> {
        let record = self.store.remove(msisdn)?;
        // Subscriptions do not move yet: they end, each with its last
        // notification, and their WAs subscribe again at the new server.
        self.recheck_watches(msisdn);
        self.moved.retain(|_, (_, until)| *until > now);
        self.moved.insert(msisdn, (to, now + self.window_ms));
        let entries = self.window.take_target(msisdn);
        Some((record, entries))
    }

    /// Provisions `msisdn` anew or updates it in place: credential, buddies
    /// and consent are replaced; the status and the withdrawn list are kept.
    pub fn reprovision(
        &mut self,
        msisdn: Msisdn,
        credential: Vec<u8>,
        buddies: Vec<Msisdn>,
        consent_all: bool,
    ) {
        let mut fresh = SubscriberRecord::new(msisdn, &credential, buddies);
        fresh.consent_all = consent_all;
        match self
            .store
            .update(msisdn, &fresh.device_key, &fresh.buddies, consent_all)
        {
            Ok(true) => self.recheck_watches(msisdn),
            Ok(false) => self.provision(msisdn, fresh),
            Err(_) => self.counters.refused += 1,
        }
    }

    /// Removes a subscriber; returns whether it was here.
    pub fn deprovision(&mut self, msisdn: Msisdn) -> bool {
        let held = self.store.remove(msisdn).is_some();
        self.recheck_watches(msisdn);
        held
    }

    /// The subscribers held here.
    pub fn subscriber_numbers(&self) -> impl Iterator<Item = Msisdn> + '_ {
        self.store.numbers()
    }

    /// Takes over a subscriber exported by another server.
    pub fn import(
        &mut self,
        now: Millis,
        msisdn: Msisdn,
        record: SubscriberRecord,
        entries: &[DecisionWindowEntry],
    ) {
        self.moved.remove(&msisdn);
        self.provision(msisdn, record);
        for e in entries {
            self.window.insert(now, *e);
        }
    }

    /// A restart: everything volatile is gone; the duplicate-suppression
    /// window is rebuilt from the journaled decisions about subscribers held
    /// here. Subscriber records are provisioned data and survive.
    pub fn restart<'r>(
        &mut self,
        now: Millis,
        journal: impl IntoIterator<Item = &'r DecisionRecord>,
    ) {
        self.window.clear();
        for record in journal {
            let expires = record.at + self.window_ms;
            if expires > now && self.subscriber(record.target).is_some() {
                self.window.insert(
                    now,
                    DecisionWindowEntry {
                        origin: record.origin,
                        txid: record.txid,
                        watcher: record.watcher,
                        target: record.target,
                        outcome: record.outcome,
                        expires,
                    },
                );
            }
        }
    }

    /// Sets whether charge records can be made durable (the caller's
    /// journal state).
    pub fn set_charging(&mut self, charging: Charging) {
        self.charging = charging;
    }

    /// The charge record of a decision could not be made durable: its
    /// answer is refused instead, and a retransmission gets the refusal
    /// too. A decision that charged nothing is left as it was. Returns
    /// whether a decision was changed.
    pub fn refuse_undurable(&mut self, origin: NetworkId, txid: u64, was: &Outcome) -> bool {
        if !was.shows_status() {
            return false;
        }
        self.window.revise(
            origin,
            txid,
            Outcome::Error(ErrorReason::ChargingUnavailable),
        )
    }

    /// Whether `query` of `origin` was decided here already (its decision,
    /// for the same watcher and target, is in the duplicate window).
    pub fn has_decided(&self, origin: NetworkId, query: &Query) -> bool {
        self.window
            .decided(origin, query.txid)
            .is_some_and(|e| e.watcher == query.watcher && e.target == query.target)
    }

    /// The outcome decided for transaction `txid` of `origin`, while it is
    /// in the duplicate window (after any revision).
    pub fn decided(&self, origin: NetworkId, txid: u64) -> Option<Outcome> {
        self.window.decided(origin, txid).map(|e| e.outcome)
    }

    /// Handles a query (from an IGPS, with its origin network), a status
    /// publication (from a device of the subscriber) or a provisioning change.
    pub fn handle(
        &mut self,
        now: Millis,
        from: Addr,
        origin: NetworkId,
        message: &Message<'_>,
        out: &mut Outbox,
    ) {
        match (from, message) {
            (Addr::Igps | Addr::Wa(_) | Addr::Ps(_), Message::Query(query)) => {
                self.handle_query(now, origin, query, None, out)
            }
            (Addr::Igps | Addr::Wa(_) | Addr::Ps(_), Message::Subscribe(subscribe)) => self
                .handle_query(
                    now,
                    origin,
                    &subscribe.query,
                    Some(subscribe.expiry_s.get()),
                    out,
                ),
            (Addr::Igps | Addr::Wa(_) | Addr::Ps(_), Message::Unsubscribe(query)) => {
                self.handle_unsubscribe(origin, query, out)
            }
            (Addr::Device(device), Message::Publish(publish)) => {
                self.handle_publish(now, device, publish, out)
            }
            (Addr::Provisioning, Message::BuddyUpdate(_) | Message::ConsentUpdate(_)) => {
                let (txid, owner, status) = match message {
                    Message::BuddyUpdate(update) => {
                        (update.txid, update.owner, self.apply_buddies(update))
                    }
                    Message::ConsentUpdate(update) => {
                        (update.txid, update.owner, self.apply_consent(update))
                    }
                    _ => return,
                };
                if status == AckStatus::Ok {
                    self.recheck_watches(owner);
                }
                out.send(from, self.network, Message::Ack(Ack { txid, status }));
            }
            _ => self.counters.drops.unexpected += 1,
        }
        if !self.notices.is_empty() {
            self.poll_watches(now, out);
        }
    }

    /// An unsubscription (§5.5): the subscription of this WA instance's
    /// watcher to the target ends, silently; the answer is `NotAvailable`
    /// whether there was one or not, so it tells nothing. Not a decision:
    /// nothing is recorded or charged, and a repeat does the same again.
    fn handle_unsubscribe(&mut self, origin: NetworkId, query: &Query, out: &mut Outbox) {
        if (query.txid >> 48) as u16 != query.reply_node {
            self.counters.drops.unexpected += 1;
            return;
        }
        let key = WatchKey {
            origin,
            reply_node: query.reply_node,
            watcher: query.watcher,
            target: query.target,
        };
        self.counters.unsubscribed += u64::from(self.watches.cancel(&key));
        out.send(
            reply_addr(self.network, origin, query.reply_node),
            origin,
            answer_to(query, Outcome::NotAvailable),
        );
    }

    /// A query (step 10), or with `subscribe` (its expiry, s) a
    /// subscription (§5.4): decided as a query is, once per transaction;
    /// one that shows the target's status also takes (or refreshes) the
    /// subscription, or, past a subscription limit, is answered
    /// `Error(Refused)` (the watcher's or the target's limit) or
    /// `Overloaded` (the origin's or the table's) instead.
    fn handle_query(
        &mut self,
        now: Millis,
        origin: NetworkId,
        query: &Query,
        subscribe: Option<u32>,
        out: &mut Outbox,
    ) {
        // A WA numbers its transactions under its own instance (wire §5):
        // anything else is not a WA's query, and would open streams at will.
        if (query.txid >> 48) as u16 != query.reply_node {
            self.counters.drops.unexpected += 1;
            return;
        }
        // Only while some subscriber has moved away does a query pay a second
        // subscriber lookup.
        if !self.moved.is_empty() && self.subscriber(query.target).is_none() {
            if let Some(&(to, until)) = self.moved.get(&query.target) {
                if until > now && query.hop_limit > 0 {
                    // Moved away while this query was on its way: follow it,
                    // to the server that holds its window entries now.
                    out.send(Addr::Ps(to), origin, Message::Query(one_hop_on(query)));
                    return;
                }
            }
        }
        let reply_to = reply_addr(self.network, origin, query.reply_node);
        let answer = |outcome| answer_to(query, outcome);
        match self.window.lookup(now, origin, query.txid) {
            WindowLookup::Decided(decided)
                if decided.target == query.target && decided.watcher == query.watcher =>
            {
                self.counters.duplicates += 1;
                out.send(reply_to, origin, answer(decided.outcome));
                return;
            }
            WindowLookup::Decided(_) => {
                // A second, different query under one transaction id.
                self.counters.drops.unexpected += 1;
                return;
            }
            WindowLookup::Stale => {
                // Older than the window: its WA has long given up on it.
                self.counters.drops.unmatched += 1;
                return;
            }
            WindowLookup::OutOfWindow { retry_after_ms } => {
                self.counters.out_of_window += 1;
                let retry_after_ms = u32::try_from(retry_after_ms).unwrap_or(u32::MAX);
                out.send(
                    reply_to,
                    origin,
                    answer(Outcome::Overloaded { retry_after_ms }),
                );
                return;
            }
            WindowLookup::Full => {
                self.counters.drops.overloaded += 1;
                out.send(
                    reply_to,
                    origin,
                    answer(Outcome::Overloaded {
                        retry_after_ms: WINDOW_FULL_RETRY_MS,
                    }),
                );
                return;
            }
            WindowLookup::New => {}
        }
        let foreign = origin != self.network;
        if let (true, Some(marks)) = (foreign, &self.restart_marks) {
            match marks.holds(now, origin, query.reply_node, query.txid) {
                MarkHold::Passed => self.restart_marks = None,
                MarkHold::Held { retry_after_ms } => {
                    self.counters.restart_held += 1;
                    out.send(
                        reply_to,
                        origin,
                        answer(Outcome::Overloaded { retry_after_ms }),
                    );
                    return;
                }
                MarkHold::Free => {}
            }
        }
        if let (true, Charging::Backlogged { retry_after_ms }) = (foreign, self.charging) {
            self.counters.drops.overloaded += 1;
            out.send(
                reply_to,
                origin,
                answer(Outcome::Overloaded { retry_after_ms }),
            );
            return;
        }
        // Step 10.
        let outcome = if self.subscriber(query.target).is_some() {
            self.status_for(now, query.target, query.watcher)
        } else {
            // Not held: as long as a refused check takes (no timing tells).
            self.store.permits_none(query.target, query.watcher);
            Outcome::NotAvailable
        };
        let outcome = if foreign
            && self.charging == Charging::Unavailable
            && outcome != Outcome::NotAvailable
        {
            // Fail closed: no status without a durable charge record.
            self.counters.charging_refused += 1;
            Outcome::Error(ErrorReason::ChargingUnavailable)
        } else {
            outcome
        };
        let outcome = match subscribe {
            Some(expiry_s) if outcome.shows_status() => {
                let key = WatchKey {
                    origin,
                    reply_node: query.reply_node,
                    watcher: query.watcher,
                    target: query.target,
                };
                match self.watches.grant(now, key, query.txid, expiry_s) {
                    Ok(Granted::New { .. }) => {
                        self.counters.watches_granted += 1;
                        outcome
                    }
                    Ok(Granted::Refreshed { .. }) => {
                        self.counters.watches_refreshed += 1;
                        outcome
                    }
                    Err(refused) => {
                        self.counters.watches_refused += 1;
                        match refused {
                            WatchRefused::TargetFull | WatchRefused::WatcherFull => {
                                Outcome::Error(ErrorReason::Refused)
                            }
                            WatchRefused::OriginFull | WatchRefused::TableFull => {
                                Outcome::Overloaded {
                                    retry_after_ms: WATCHES_FULL_RETRY_MS,
                                }
                            }
                        }
                    }
                }
            }
            _ => outcome,
        };
        self.window.insert(
            now,
            DecisionWindowEntry {
                origin,
                txid: query.txid,
                watcher: query.watcher,
                target: query.target,
                outcome,
                expires: now + self.window_ms,
            },
        );
        // Step 11: recorded before the answer is released (the node
        // journals those of other networks' queries).
        let record = DecisionRecord {
            origin,
            txid: query.txid,
            watcher: query.watcher,
            target: query.target,
            reply_node: query.reply_node,
            at: now,
            ps: self.id,
            outcome,
        };
        self.counters.charged += u64::from(foreign && record.chargeable());
        out.records.push(record);
        match outcome {
            Outcome::NotAvailable => self.counters.not_available += 1,
            o if o.shows_status() => self.counters.answered_status += 1,
            _ => {}
        }
        // Step 12.
        out.send(reply_to, origin, answer(outcome));
    }

    /// A device's status publication. Every refusal is the same ack,
    /// `Unauthenticated`, whether the subscriber is unknown, its MAC
    /// wrong, its counter out of time, or its checks locked out by failures
    /// (docs/reliability.md, §4a): acks tell a prober nothing about who is
    /// a subscriber. A publication whose counter is not above the last one
    /// taken changes nothing and is acked `Ok`: a retransmission, a replay
    /// or an older status overtaken by a newer one.
    fn handle_publish(
        &mut self,
        now: Millis,
        device: Msisdn,
        publish: &Publish<'_>,
        out: &mut Outbox,
    ) {
        let status = match self.check_publisher(now, device, publish) {
            Publisher::Fresh => {
                let was = self.store.get(publish.subscriber).map(|b| b.state());
                self.store.set_state(publish.subscriber, publish.state, now);
                self.counters.publications += 1;
                if was != Some(publish.state) {
                    let notices = &mut self.notices;
                    self.watches
                        .changed(now, publish.subscriber, &mut |n| notices.push(n));
                }
                AckStatus::Ok
            }
            Publisher::Repeat => {
                self.counters.publish_repeats += 1;
                AckStatus::Ok
            }
            Publisher::Refused => {
                self.counters.refused += 1;
                AckStatus::Unauthenticated
            }
            Publisher::HeldOff => AckStatus::Overloaded,
        };
        out.send(
            Addr::Device(device),
            self.network,
            Message::Ack(Ack {
                txid: publish.txid,
                status,
            }),
        );
    }

    /// Step 2 at B: the publishing device's MAC (or, where enabled, its
    /// credential), checked only while the subscriber's guard admits it;
    /// the guard learns the result; then its counter.
    fn check_publisher(&mut self, now: Millis, device: Msisdn, publish: &Publish<'_>) -> Publisher {
        let subscriber = publish.subscriber;
        if let DeviceAuth::Credential(_) = publish.auth {
            if !self.device_auth.insecure_credentials {
                self.counters.insecure_refused += 1;
                return Publisher::Refused;
            }
        }
        // The same work whoever the number is (docs/reliability.md §4h):
        // two lookups, one MAC (under a decoy key when there is no
        // subscriber's key to use, or it is locked out), one guard step and
        // one write of a guard in the store (an unknown number's on the
        // decoy entry, its value unchanged). Only then is the result used.
        let policy = self.auth;
        let mut scratch = AuthGuard::default();
        let (known, key, guard) = match self.store.device_auth_mut(subscriber) {
            Some((held, key, guard)) => (held && device == subscriber, key, guard),
            None => (false, None, &mut scratch),
        };
        let admitted = guard.admits(now);
        let checked_key = key.filter(|_| admitted);
        let key = DeviceKey::from_bytes(checked_key.unwrap_or(DECOY_DEVICE_KEY));
        let matches = match publish.auth {
            DeviceAuth::Mac { .. } => key.verifies(&Message::Publish(*publish)),
            DeviceAuth::Credential(c) => key.matches_secret(subscriber, c.as_bytes()),
        };
        let authentic = known && matches && checked_key.is_some();
        let mut next = *guard;
        let failure = next.failed(now, &policy);
        *guard = match (known && admitted, authentic) {
            (true, true) => AuthGuard::default(),
            (true, false) => next,
            (false, _) => std::hint::black_box(*guard),
        };
        if !authentic {
            match (known, admitted) {
                (true, false) => self.counters.auth_locked += 1,
                _ => {
                    self.counters.auth_failures += 1;
                    if let (true, Failure::LockedOut { first: true }) = (known, failure) {
                        self.counters.lockouts += 1;
                    }
                }
            }
            return Publisher::Refused;
        }
        let DeviceAuth::Mac { counter, .. } = publish.auth else {
            return Publisher::Fresh;
        };
        // Out of time: refused. Maybe signed before this server started
        // (just below the floor): not taken now; the authentic device is
        // told to publish again, as a request is.
        match self.device_auth.timeliness(now, counter) {
            Timeliness::Timely => {}
            Timeliness::BeforeFloor { .. } => {
                self.counters.auth_stale += 1;
                return Publisher::HeldOff;
            }
            Timeliness::OutOfTime => {
                self.counters.auth_stale += 1;
                return Publisher::Refused;
            }
        }
        match self.store.last_publish_mut(subscriber) {
            Some(last) if counter > *last => {
                *last = counter;
                Publisher::Fresh
            }
            Some(_) => Publisher::Repeat,
            None => Publisher::Refused,
        }
    }

    /// Sets how devices authenticate publications.
    pub fn set_device_auth(&mut self, device_auth: DeviceAuthPolicy) {
        self.device_auth = device_auth;
    }

    /// Sets how failed checks of a subscriber's credential are limited.
    pub fn set_auth_policy(&mut self, auth: AuthPolicy) {
        self.auth = auth;
    }

    fn apply_buddies(&mut self, update: &BuddyUpdate<'_>) -> AckStatus {
        let Some(b) = self.store.get(update.owner) else {
            return AckStatus::UnknownSubscriber;
        };
        let mut buddies: SmallVec<[Msisdn; 24]> = match update.action {
            BuddyAction::Replace => SmallVec::new(),
            BuddyAction::Add | BuddyAction::Remove => SmallVec::from_slice(b.buddies()),
        };
        match update.action {
            BuddyAction::Add | BuddyAction::Replace => buddies.extend(update.buddies.iter()),
            BuddyAction::Remove => buddies.retain(|w| !update.buddies.iter().any(|r| r == *w)),
        }
        buddies.sort_unstable();
        buddies.dedup();
        if buddies.len() > BUDDIES_MAX {
            return AckStatus::TooManyBuddies;
        }
        match self.store.set_buddies(update.owner, &buddies) {
            Ok(true) => AckStatus::Ok,
            Ok(false) => AckStatus::UnknownSubscriber,
            Err(_) => AckStatus::TooManyBuddies,
        }
    }

    fn apply_consent(&mut self, update: &ConsentUpdate) -> AckStatus {
        let owner = update.owner;
        let store = &mut self.store;
        let known = match (update.scope, update.consent) {
            (ConsentScope::All, consent) => store.set_consent_all(owner, consent == Consent::Grant),
            (ConsentScope::Watcher(w), Consent::Withdraw) => store.set_withdrawn(owner, w, true),
            (ConsentScope::Watcher(w), Consent::Grant) => store.set_withdrawn(owner, w, false),
        };
        if known {
            AckStatus::Ok
        } else {
            AckStatus::UnknownSubscriber
        }
    }
}

#[cfg(test)]
mod tests {
    use presence_codec::Reachability;

    use super::window::counter_behind;
    use super::*;

    const HOME: NetworkId = NetworkId(2);
    const PEER: NetworkId = NetworkId(7);

    fn m(t: &str) -> Msisdn {
        t.parse().unwrap()
    }

    fn server(slots: usize) -> PresenceServer {
        let mut ps = PresenceServer::new(PsId(0), HOME, 10_000, slots);
        ps.provision(
            m("4915100000001"),
            SubscriberRecord::new(m("4915100000001"), b"b", vec![m("447700900123")]),
        );
        ps
    }

    /// Publishes `state` as B's device at `now` with `counter`, under the
    /// key of `secret`; returns the ack's status.
    fn publish(
        ps: &mut PresenceServer,
        now: Millis,
        counter: u64,
        secret: &[u8],
        state: PresenceState,
    ) -> Option<AckStatus> {
        let b = m("4915100000001");
        let publish = DeviceKey::derive(b, secret).sign_publish(
            Publish {
                txid: counter,
                subscriber: b,
                state,
                auth: DeviceAuth::UNSIGNED,
            },
            counter,
        );
        let mut out = Outbox::default();
        ps.handle(
            now,
            Addr::Device(b),
            HOME,
            &Message::Publish(publish),
            &mut out,
        );
        out.transmits.iter().find_map(|t| match t.message {
            Message::Ack(a) => Some(a.status),
            _ => None,
        })
    }

    #[test]
    fn only_a_newer_authentic_publication_changes_the_status() {
        let mut ps = server(64);
        ps.set_device_auth(DeviceAuthPolicy {
            unix_ms_at_zero: 1_000_000,
            floor_unix_ms: 1_000_100,
            ..DeviceAuthPolicy::default()
        });
        // Provisioned after the floor was set: counters from before it
        // are not taken.
        ps.provision(
            m("4915100000001"),
            SubscriberRecord::new(m("4915100000001"), b"b", vec![m("447700900123")]),
        );
        let attached = PresenceState::Attached(Reachability::SMS);
        let state = |ps: &PresenceServer| ps.subscriber(m("4915100000001")).unwrap().state();
        assert_eq!(
            publish(&mut ps, 500, 1_000_050, b"b", attached),
            Some(AckStatus::Overloaded),
            "signed just below the floor: publish again"
        );
        assert_eq!(
            publish(&mut ps, 500, 1_000_050 - 2_001, b"b", attached),
            Some(AckStatus::Unauthenticated),
            "well below it: refused"
        );
        assert_eq!(
            publish(&mut ps, 500, 1_000_500, b"x", attached),
            Some(AckStatus::Unauthenticated)
        );
        assert_eq!(state(&ps), PresenceState::Detached);
        assert_eq!(
            publish(&mut ps, 500, 1_000_500, b"b", attached),
            Some(AckStatus::Ok)
        );
        assert_eq!(state(&ps), attached);
        // The same again (a replay), and an older one overtaken: acked,
        // nothing changed.
        assert_eq!(
            publish(&mut ps, 600, 1_000_500, b"b", PresenceState::Detached),
            Some(AckStatus::Ok)
        );
        assert_eq!(
            publish(&mut ps, 600, 1_000_400, b"b", PresenceState::Detached),
            Some(AckStatus::Ok)
        );
        assert_eq!(state(&ps), attached);
        assert_eq!(ps.counters().publish_repeats, 2);
        // A counter three seconds ahead of the server's clock: refused.
        assert_eq!(
            publish(
                &mut ps,
                600,
                1_000_600 + 3_000,
                b"b",
                PresenceState::Detached
            ),
            Some(AckStatus::Unauthenticated)
        );
        assert_eq!(
            publish(&mut ps, 700, 1_000_700, b"b", PresenceState::Detached),
            Some(AckStatus::Ok)
        );
        assert_eq!(state(&ps), PresenceState::Detached);
        assert_eq!(ps.counters().auth_stale, 3);
        assert_eq!(ps.counters().auth_failures, 1);
        // The counter moves with the record.
        let (record, _) = ps.export(800, m("4915100000001"), PsId(3)).unwrap();
        assert_eq!(record.last_publish, 1_000_700);
    }

    fn query(instance: u16, counter: u64, watcher: &str) -> Message<'static> {
        Message::Query(Query {
            txid: u64::from(instance) << 48 | counter,
            watcher: m(watcher),
            target: m("4915100000001"),
            hop_limit: 5,
            budget_ms: 1000,
            reply_node: instance,
            route_version: 1,
        })
    }

    fn ask(ps: &mut PresenceServer, now: Millis, q: Message<'static>) -> (Option<Outcome>, usize) {
        let mut out = Outbox::default();
        ps.handle(now, Addr::Igps, PEER, &q, &mut out);
        let outcome = out.transmits.iter().find_map(|t| match t.message {
            Message::Answer(a) => Some(a.outcome),
            _ => None,
        });
        (
            outcome,
            out.records.iter().filter(|r| r.chargeable()).count(),
        )
    }

    #[test]
    fn ps_answers_a_duplicate_again_without_a_second_charge() {
        let mut ps = server(64);
        let (first, charged) = ask(&mut ps, 10, query(0, 1, "447700900123"));
        assert!(matches!(first, Some(Outcome::Detached { .. })));
        assert_eq!(charged, 1);
        assert_eq!(ask(&mut ps, 20, query(0, 1, "447700900123")), (first, 0));
    }

    #[test]
    fn ps_gives_unknown_and_not_permitted_the_same_answer() {
        let mut ps = server(64);
        let not_buddy = ask(&mut ps, 10, query(0, 1, "447700900999"));
        let mut unknown = query(0, 2, "447700900123");
        if let Message::Query(q) = &mut unknown {
            q.target = m("4915100000002");
        }
        assert_eq!(not_buddy, (Some(Outcome::NotAvailable), 0));
        assert_eq!(ask(&mut ps, 11, unknown), (Some(Outcome::NotAvailable), 0));
    }

    #[test]
    fn ps_never_gives_one_watchers_answer_to_another_under_a_reused_id() {
        let mut ps = server(64);
        ask(&mut ps, 10, query(0, 1, "447700900123"));
        assert_eq!(ask(&mut ps, 20, query(0, 1, "447700900999")), (None, 0));
    }

    #[test]
    fn ps_drops_queries_older_than_the_window_instead_of_deciding_again() {
        let mut ps = server(4);
        for counter in 1..=4 {
            ask(&mut ps, 10, query(0, counter, "447700900123"));
        }
        // Counter 5 is full: counter 1 (same slot) is still live.
        assert_eq!(
            ask(&mut ps, 11, query(0, 5, "447700900123")).0,
            Some(Outcome::Overloaded {
                retry_after_ms: WINDOW_FULL_RETRY_MS
            })
        );
        // After the window, counter 5 takes the slot; counter 1, a ring
        // behind the live stream, is never decided again (refused, counted).
        assert_eq!(ask(&mut ps, 20_000, query(0, 5, "447700900123")).1, 1);
        let (late, charged) = ask(&mut ps, 20_001, query(0, 1, "447700900123"));
        assert!(matches!(late, Some(Outcome::Overloaded { .. })), "{late:?}");
        assert_eq!(charged, 0);
    }

    #[test]
    fn ps_refuses_ids_not_of_the_replying_wa_and_caps_streams_per_network() {
        let mut ps = server(4);
        let mut forged = query(3, 1, "447700900123");
        if let Message::Query(q) = &mut forged {
            q.reply_node = 4;
        }
        assert_eq!(ask(&mut ps, 10, forged), (None, 0));
        for instance in 0..WINDOW_STREAMS_PER_ORIGIN_MAX as u16 {
            assert_eq!(ask(&mut ps, 10, query(instance, 1, "447700900123")).1, 1);
        }
        assert!(matches!(
            ask(&mut ps, 10, query(99, 1, "447700900123")).0,
            Some(Outcome::Overloaded { .. })
        ));
    }

    #[test]
    fn ps_takes_a_restarted_was_new_ids_and_counters_that_wrap() {
        let mut ps = server(64);
        // Counters near the top of the 48-bit space, then past the wrap.
        let top = (1u64 << 48) - 2;
        for counter in [top, top + 1] {
            assert_eq!(ask(&mut ps, 10, query(0, counter, "447700900123")).1, 1);
        }
        for counter in [0, 1, 2] {
            assert_eq!(
                ask(&mut ps, 11, query(0, counter, "447700900123")).1,
                1,
                "wrapped, still new"
            );
        }
        assert_eq!(
            ask(&mut ps, 12, query(0, top, "447700900123")).1,
            0,
            "and the old ones are old"
        );
        assert_eq!(counter_behind(5, 3), 2);
        assert_eq!(counter_behind(3, 5), 0);
    }

    #[test]
    fn a_far_ahead_id_is_refused_and_cannot_poison_the_window() {
        let mut ps = server(64);
        let a = "447700900123";
        assert_eq!(ask(&mut ps, 10, query(0, 100, a)).1, 1);
        // One id far ahead on the live stream: refused until the stream
        // has been quiet for a window, counted, not charged, not recorded.
        assert_eq!(
            ask(&mut ps, 20, query(0, 100 + 1_000_000, a)),
            (
                Some(Outcome::Overloaded {
                    retry_after_ms: 10_000 - 10
                }),
                0
            )
        );
        assert_eq!(ps.counters().out_of_window, 1);
        // The genuine stream goes on: nothing of it is taken for stale.
        for counter in 101..110 {
            assert_eq!(ask(&mut ps, 30, query(0, counter, a)).1, 1, "{counter}");
        }
        // Far behind, while live: refused the same way.
        assert!(matches!(
            ask(&mut ps, 40, query(0, 2, a)).0,
            Some(Outcome::Overloaded { .. })
        ));
        assert_eq!(ps.counters().out_of_window, 2);
        // The stream's WA restarts and its counter jumps ahead (or its
        // clock stepped back): once the stream has been quiet for a
        // window, the new ids are taken, and old ones near them are not
        // decided twice.
        let restarted = 50_000_000;
        assert_eq!(ask(&mut ps, 10_031, query(0, restarted, a)).1, 1);
        assert_eq!(ask(&mut ps, 10_032, query(0, restarted + 1, a)).1, 1);
        assert_eq!(
            ask(&mut ps, 10_033, query(0, restarted, a)).1,
            0,
            "a duplicate"
        );
        assert!(matches!(
            ask(&mut ps, 10_034, query(0, 105, a)).0,
            Some(Outcome::Overloaded { .. })
        ));
        let stepped_back = 7;
        assert_eq!(ask(&mut ps, 30_000, query(0, stepped_back, a)).1, 1);
    }

    #[test]
    fn after_a_restart_a_marked_transaction_is_held_and_a_new_one_decided() {
        let mut ps = server(64);
        let (buddy, stranger) = ("447700900123", "447700900999");
        let mut out = Outbox::default();
        // Before the restart: 5 charged, 6 to 8 decided without a charge
        // (journaled as the stream's mark: 8).
        ps.handle(10, Addr::Igps, PEER, &query(0, 5, buddy), &mut out);
        let journal = out.records.clone();
        ps.restart(100, journal.iter());
        ps.set_restart_marks(std::sync::Arc::new(RestartMarks::new([(
            PEER, 0, 8, 10_010,
        )])));
        assert_eq!(
            ask(&mut ps, 200, query(0, 5, buddy)),
            (ask(&mut server(64), 10, query(0, 5, buddy)).0, 0),
            "charged before: answered from the window, not charged again"
        );
        assert_eq!(
            ask(&mut ps, 200, query(0, 7, buddy)),
            (
                Some(Outcome::Overloaded {
                    retry_after_ms: 9_810
                }),
                0
            ),
            "at or below the mark: perhaps decided before, held"
        );
        assert_eq!(ps.counters().restart_held, 1);
        assert_eq!(ask(&mut ps, 200, query(0, 9, buddy)).1, 1, "above: decided");
        assert_eq!(
            ask(&mut ps, 200, query(1, 3, buddy)).1,
            1,
            "another stream: decided"
        );
        assert_eq!(
            ask(&mut ps, 300, query(0, 6, stranger)).0,
            Some(Outcome::Overloaded {
                retry_after_ms: 9_710
            })
        );
        // Once the mark has lapsed, nothing decided before the restart can
        // come back: decided.
        assert_eq!(ask(&mut ps, 10_010, query(0, 7, buddy)).1, 1);
        assert_eq!(ps.counters().restart_held, 2);
    }

    #[test]
    fn ps_window_survives_a_restart_through_the_journal() {
        let mut ps = server(64);
        let mut out = Outbox::default();
        ps.handle(10, Addr::Igps, PEER, &query(0, 1, "447700900123"), &mut out);
        let journal = out.records.clone();
        ps.restart(100, journal.iter());
        assert_eq!(
            ask(&mut ps, 200, query(0, 1, "447700900123")).1,
            0,
            "no second charge"
        );
    }

    /// A's Subscribe to B as instance 0's transaction `counter`, for
    /// `expiry_s`.
    fn subscribe(counter: u64, watcher: &str, expiry_s: u32) -> Message<'static> {
        let Message::Query(query) = query(0, counter, watcher) else {
            unreachable!()
        };
        Message::Subscribe(presence_codec::Subscribe {
            query,
            expiry_s: std::num::NonZeroU32::new(expiry_s).unwrap(),
        })
    }

    /// Everything `ps` sends for `message` at `now`, from the peer.
    fn sends(ps: &mut PresenceServer, now: Millis, message: &Message<'_>) -> Outbox {
        let mut out = Outbox::default();
        ps.handle(now, Addr::Igps, PEER, message, &mut out);
        out
    }

    fn notifies(out: &Outbox) -> Vec<(Addr, Notify)> {
        out.transmits
            .iter()
            .filter_map(|t| match t.message {
                Message::Notify(n) => Some((t.to, n)),
                _ => None,
            })
            .collect()
    }

    /// B's device publishes `state` at `now`, its clock as the counter.
    fn publish_into(ps: &mut PresenceServer, now: Millis, state: PresenceState, out: &mut Outbox) {
        let b = m("4915100000001");
        let publish = DeviceKey::derive(b, b"b").sign_publish(
            Publish {
                txid: now,
                subscriber: b,
                state,
                auth: DeviceAuth::UNSIGNED,
            },
            now,
        );
        ps.handle(now, Addr::Device(b), HOME, &Message::Publish(publish), out);
        assert!(out.transmits.iter().any(|t| matches!(
            t.message,
            Message::Ack(a) if a.status == AckStatus::Ok
        )));
    }

    fn attached() -> PresenceState {
        PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS)
    }

    const A: &str = "447700900123";

    #[test]
    fn a_subscription_is_answered_with_the_status_charged_once_and_notified_of_changes() {
        let mut ps = server(64);
        let (answer, charged) = ask(&mut ps, 10, subscribe(1, A, 60));
        assert!(matches!(answer, Some(Outcome::Detached { .. })));
        assert_eq!(charged, 1, "a granted subscription is charged");
        assert_eq!(ps.counters().watches_granted, 1);
        // A retransmission is answered again: no second grant or charge.
        assert_eq!(ask(&mut ps, 20, subscribe(1, A, 60)), (answer, 0));
        assert_eq!(ps.watches().len(), 1);

        // B publishes: A's WA instance 0, in the peer network, is told.
        let mut out = Outbox::default();
        publish_into(&mut ps, 1_000, attached(), &mut out);
        let sent = notifies(&out);
        assert_eq!(sent.len(), 1);
        let (to, notify) = sent[0];
        assert_eq!(
            to,
            Addr::BorderReply {
                network: PEER,
                reply_node: 0
            }
        );
        assert_eq!(
            (notify.txid, notify.watcher, notify.seq, notify.remaining_s),
            (1, m(A), 1, 60)
        );
        assert!(matches!(notify.outcome, Outcome::Attached { .. }));
        // The same status again is no change: no notification.
        let mut out = Outbox::default();
        publish_into(&mut ps, 3_000, attached(), &mut out);
        assert!(notifies(&out).is_empty());
    }

    #[test]
    fn a_refresh_is_a_new_transaction_charged_again_and_an_unsubscription_ends_it() {
        let mut ps = server(64);
        ask(&mut ps, 10, subscribe(1, A, 60));
        let (answer, charged) = ask(&mut ps, 50_000, subscribe(2, A, 60));
        assert!(matches!(answer, Some(Outcome::Detached { .. })));
        assert_eq!(charged, 1);
        assert_eq!(
            (
                ps.counters().watches_granted,
                ps.counters().watches_refreshed
            ),
            (1, 1)
        );
        // Unsubscribed: NotAvailable, nothing charged, no news after.
        let Message::Query(q) = query(0, 3, A) else {
            unreachable!()
        };
        let out = sends(&mut ps, 60_000, &Message::Unsubscribe(q));
        assert_eq!(out.records.len(), 0);
        assert!(matches!(
            out.transmits[0].message,
            Message::Answer(a) if a.outcome == Outcome::NotAvailable
        ));
        assert!(ps.watches().is_empty());
        let mut out = Outbox::default();
        publish_into(&mut ps, 61_000, attached(), &mut out);
        assert!(notifies(&out).is_empty());
    }

    #[test]
    fn a_subscription_not_permitted_is_not_kept() {
        let mut ps = server(64);
        let (answer, charged) = ask(&mut ps, 10, subscribe(1, "447700900999", 60));
        assert_eq!((answer, charged), (Some(Outcome::NotAvailable), 0));
        assert!(ps.watches().is_empty());
    }

    #[test]
    fn consent_withdrawn_or_a_buddy_removed_ends_the_subscription_with_a_last_notice() {
        let mut ps = server(64);
        ask(&mut ps, 10, subscribe(1, A, 60));
        let b = m("4915100000001");
        let withdraw = Message::ConsentUpdate(ConsentUpdate {
            txid: 5,
            owner: b,
            scope: ConsentScope::Watcher(m(A)),
            consent: Consent::Withdraw,
        });
        let mut out = Outbox::default();
        ps.handle(2_000, Addr::Provisioning, HOME, &withdraw, &mut out);
        let last = notifies(&out);
        assert_eq!(last.len(), 1);
        assert_eq!(
            (last[0].1.remaining_s, last[0].1.outcome),
            (0, Outcome::NotAvailable)
        );
        assert!(ps.watches().is_empty());
        let mut out = Outbox::default();
        publish_into(&mut ps, 3_000, attached(), &mut out);
        assert!(notifies(&out).is_empty(), "no later news");

        // Removing B ends every subscription to B the same way, sent by
        // the next poll (provisioning has no outbox).
        ask(&mut ps, 4_000, subscribe(2, A, 60));
        assert_eq!(ps.watches().len(), 0, "consent is still withdrawn");
        let grant = Message::ConsentUpdate(ConsentUpdate {
            txid: 6,
            owner: b,
            scope: ConsentScope::Watcher(m(A)),
            consent: Consent::Grant,
        });
        ps.handle(
            4_500,
            Addr::Provisioning,
            HOME,
            &grant,
            &mut Outbox::default(),
        );
        ask(&mut ps, 5_000, subscribe(3, A, 60));
        assert_eq!(ps.watches().len(), 1);
        assert!(ps.deprovision(b));
        assert_eq!(ps.next_watch_timeout(), Some(0));
        let mut out = Outbox::default();
        ps.poll_watches(6_000, &mut out);
        assert_eq!(notifies(&out)[0].1.remaining_s, 0);
        assert_eq!(ps.next_watch_timeout(), None);
    }

    #[test]
    fn a_subscription_expires_with_a_last_notice_from_the_poll() {
        let mut ps = server(64);
        ask(&mut ps, 0, subscribe(1, A, 30));
        assert_eq!(ps.next_watch_timeout(), Some(30_000));
        let mut out = Outbox::default();
        ps.poll_watches(29_999, &mut out);
        assert!(out.transmits.is_empty());
        ps.poll_watches(30_000, &mut out);
        let last = notifies(&out);
        assert_eq!((last[0].1.seq, last[0].1.remaining_s), (1, 0));
        assert_eq!(ps.counters().watches_ended, 1);
    }
}
