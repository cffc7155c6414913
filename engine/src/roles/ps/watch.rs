//! Subscriptions a presence server keeps (watching, §5.4–§5.6 of
//! docs/wire-format.md; issue 17): who watches which of its subscribers,
//! until when, and which notification each is owed.
//!
//! A subscription is one WA instance's watch of one target for one
//! watcher: it is named by the origin network (the border's authenticated
//! peer, or this network), the WA instance (`reply_node`), the watcher and
//! the target. Each Subscribe is a transaction of its own (its own `txid`,
//! decided once and charged once, as a query is); one for a name that
//! lives refreshes it (a new expiry; its notification numbers go on), and
//! its notifications carry the `txid` of the latest Subscribe.
//!
//! What this table decides, and nothing else (the presence server checks
//! permission, builds the messages and charges):
//! - **Notices.** When a target's status changes, each of its
//!   subscriptions is owed a notification. At most one leaves per
//!   `min_interval_ms` per subscription: a change inside the interval marks
//!   the subscription *due*, and when the interval opens one notification
//!   goes out, which the caller fills with the target's status *then*, so
//!   changes in between are coalesced into the latest (as SIP event rate
//!   control does, RFC 6446).
//! - **Ends.** Expiry, the watcher losing permission, the target leaving
//!   this server: the subscription is removed and owed one last
//!   notification (`remaining_s` 0). An unsubscription removes it and is
//!   owed nothing more (its answer says it is gone).
//!
//! Invariants:
//! - a subscription is in `by_key`, in its target's list and in `expiries`
//!   exactly while it lives; in `due` at most once, exactly while it owes a
//!   coalesced notification;
//! - `seq` counts the notifications handed out, from 1, never reused
//!   within a subscription (a refresh keeps it);
//! - every count (per target, per watcher, per origin, in all) is at most
//!   its limit, checked before a new subscription is taken; a refresh is
//!   never refused for a limit.

use std::collections::BTreeSet;

use ahash::AHashMap as HashMap;
use presence_codec::Msisdn;
use smallvec::SmallVec;

use crate::roles::Millis;
use crate::table::NetworkId;

/// A subscription's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchKey {
    /// A's network: the origin the query path carried.
    pub origin: NetworkId,
    /// The WA instance the notifications go to.
    pub reply_node: u16,
    /// A.
    pub watcher: Msisdn,
    /// B.
    pub target: Msisdn,
}

/// How many subscriptions a presence server keeps, and how often each may
/// be notified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// Most subscriptions to one target.
    pub per_target: u32,
    /// Most subscriptions of one watcher (at this server).
    pub per_watcher: u32,
    /// Most subscriptions from one origin network.
    pub per_origin: u32,
    /// Most subscriptions in all.
    pub total: u32,
    /// At most one notification per subscription per this many ms.
    pub min_interval_ms: u64,
    /// Longest expiry granted, s: a longer one is granted this long (the
    /// WA refreshes before it ends).
    pub expiry_max_s: u32,
}

impl Default for WatchLimits {
    fn default() -> WatchLimits {
        WatchLimits {
            per_target: 256,
            per_watcher: 1_024,
            per_origin: 1 << 20,
            total: 1 << 20,
            min_interval_ms: 1_000,
            expiry_max_s: 3_600,
        }
    }
}

/// Why a new subscription was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchRefused {
    /// The target has [`WatchLimits::per_target`] subscriptions.
    TargetFull,
    /// The watcher has [`WatchLimits::per_watcher`] subscriptions here.
    WatcherFull,
    /// The origin network has [`WatchLimits::per_origin`].
    OriginFull,
    /// The table holds [`WatchLimits::total`].
    TableFull,
}

/// A subscription taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granted {
    /// A new subscription.
    New {
        /// Seconds it runs (the expiry asked, at most the limit's).
        expiry_s: u32,
    },
    /// An existing one under the same name, refreshed.
    Refreshed {
        /// Seconds it runs from now.
        expiry_s: u32,
    },
}

/// What a notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// The target's status (as it is when the notification is built).
    Status,
    /// The subscription ended: the last notification (`remaining_s` 0).
    Ended(EndReason),
}

/// Why a subscription ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Its expiry passed without a refresh.
    Expired,
    /// The watcher may no longer see the target (removed from its buddies,
    /// or consent withdrawn).
    NotPermitted,
    /// The target left this server (removed, or moved without its
    /// subscriptions).
    TargetGone,
}

/// A notification owed: the caller builds the Notify (§5.6) from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The subscription.
    pub key: WatchKey,
    /// The transaction id of its latest Subscribe.
    pub txid: u64,
    /// The notification's number within the subscription, from 1.
    pub seq: u32,
    /// Seconds the subscription still runs; 0 on the last.
    pub remaining_s: u16,
    /// What it says.
    pub kind: NoticeKind,
}

#[derive(Clone, Copy, Debug)]
struct Watch {
    key: WatchKey,
    /// The latest Subscribe's transaction id.
    txid: u64,
    expires_at: Millis,
    /// When the last notification was handed out (0: none yet).
    last_sent: Millis,
    /// Notifications handed out.
    seq: u32,
    /// Owes a coalesced notification when the interval opens.
    due: bool,
}

/// The subscriptions of one presence server.
#[derive(Debug, Default)]
pub struct Watches {
    limits: WatchLimits,
    slots: Vec<Option<Watch>>,
    free: Vec<u32>,
    by_key: HashMap<WatchKey, u32>,
    by_target: HashMap<Msisdn, SmallVec<[u32; 2]>>,
    per_watcher: HashMap<Msisdn, u32>,
    per_origin: HashMap<NetworkId, u32>,
    /// `(expires_at, slot)` of every live subscription.
    expiries: BTreeSet<(Millis, u32)>,
    /// `(when the interval opens, slot)` of every subscription owing a
    /// coalesced notification.
    due: BTreeSet<(Millis, u32)>,
}

impl Watches {
    /// An empty table with `limits`.
    pub fn new(limits: WatchLimits) -> Watches {
        Watches {
            limits,
            ..Watches::default()
        }
    }

    /// This table under new limits: what it keeps stays, even past them;
    /// new subscriptions are held to them.
    pub fn with_limits(mut self, limits: WatchLimits) -> Watches {
        // The due entries' keys derive from the interval: recompute them.
        let due: Vec<u32> = self.due.iter().map(|&(_, slot)| slot).collect();
        self.due.clear();
        self.limits = limits;
        for slot in due {
            if let Some(watch) = self.slot(slot) {
                let opens = watch.last_sent.saturating_add(limits.min_interval_ms);
                self.due.insert((opens, slot));
            }
        }
        self
    }

    /// Subscriptions kept.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Subscriptions to `target`.
    pub fn watching(&self, target: Msisdn) -> usize {
        self.by_target.get(&target).map_or(0, SmallVec::len)
    }

    /// Whether the subscription named `key` lives.
    pub fn contains(&self, key: &WatchKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Takes (or refreshes) the subscription `key` for `expiry_s` seconds
    /// (at most the limit's), by the Subscribe `txid`. The caller has
    /// checked that the watcher may see the target.
    pub fn grant(
        &mut self,
        now: Millis,
        key: WatchKey,
        txid: u64,
        expiry_s: u32,
    ) -> Result<Granted, WatchRefused> {
        let (watcher, target) = (key.watcher, key.target);
        let expiry_s = expiry_s.clamp(1, self.limits.expiry_max_s.max(1));
        let expires_at = now.saturating_add(u64::from(expiry_s) * 1000);
        if let Some(&slot) = self.by_key.get(&key) {
            let Some(watch) = self.slot_mut(slot) else {
                return Err(WatchRefused::TableFull);
            };
            watch.txid = txid;
            let was = watch.expires_at;
            watch.expires_at = expires_at;
            self.expiries.remove(&(was, slot));
            self.expiries.insert((expires_at, slot));
            return Ok(Granted::Refreshed { expiry_s });
        }
        if self.by_key.len() >= self.limits.total as usize {
            return Err(WatchRefused::TableFull);
        }
        if self.watching(target) >= self.limits.per_target as usize {
            return Err(WatchRefused::TargetFull);
        }
        if count(&self.per_watcher, &watcher) >= self.limits.per_watcher {
            return Err(WatchRefused::WatcherFull);
        }
        if count(&self.per_origin, &key.origin) >= self.limits.per_origin {
            return Err(WatchRefused::OriginFull);
        }
        let watch = Watch {
            key,
            txid,
            expires_at,
            last_sent: 0,
            seq: 0,
            due: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(free) = self.slots.get_mut(slot as usize) {
                    *free = Some(watch);
                }
                slot
            }
            None => {
                let Ok(slot) = u32::try_from(self.slots.len()) else {
                    return Err(WatchRefused::TableFull);
                };
                self.slots.push(Some(watch));
                slot
            }
        };
        self.by_key.insert(key, slot);
        self.by_target.entry(target).or_default().push(slot);
        *self.per_watcher.entry(watcher).or_insert(0) += 1;
        *self.per_origin.entry(key.origin).or_insert(0) += 1;
        self.expiries.insert((expires_at, slot));
        Ok(Granted::New { expiry_s })
    }

    /// Ends the subscription `key` (an unsubscription): nothing more is
    /// owed. Whether it lived.
    pub fn cancel(&mut self, key: &WatchKey) -> bool {
        match self.by_key.get(key).copied() {
            Some(slot) => self.remove(slot).is_some(),
            None => false,
        }
    }

    /// `target`'s status changed at `now`: each of its subscriptions is
    /// owed a notification, handed to `notify` at once where its interval
    /// is open, else when it opens ([`poll`](Self::poll)).
    pub fn changed(&mut self, now: Millis, target: Msisdn, notify: &mut impl FnMut(Notice)) {
        // The list is lent out while its subscriptions are visited (nothing
        // here adds or removes one) and put back: no copy, no allocation.
        let Some(slots) = self.by_target.get_mut(&target).map(std::mem::take) else {
            return;
        };
        let interval = self.limits.min_interval_ms;
        for &slot in &slots {
            let Some(watch) = self.slot_mut(slot) else {
                continue;
            };
            if watch.due {
                continue;
            }
            let opens = if watch.seq == 0 {
                now
            } else {
                watch.last_sent.saturating_add(interval)
            };
            if opens <= now {
                if let Some(notice) = self.status_notice(now, slot) {
                    notify(notice);
                }
            } else {
                watch.due = true;
                self.due.insert((opens, slot));
            }
        }
        if let Some(list) = self.by_target.get_mut(&target) {
            *list = slots;
        }
    }

    /// Ends each subscription to `target` whose watcher `permits` no longer
    /// allows, handing each its last notification.
    pub fn revoke(
        &mut self,
        target: Msisdn,
        permits: impl Fn(Msisdn) -> bool,
        notify: &mut impl FnMut(Notice),
    ) {
        let Some(slots) = self.by_target.get(&target).cloned() else {
            return;
        };
        for slot in slots {
            let revoked = self.slot(slot).is_some_and(|w| !permits(w.key.watcher));
            if revoked {
                self.end(slot, EndReason::NotPermitted, notify);
            }
        }
    }

    /// `target` left this server: every subscription to it ends, each
    /// handed its last notification.
    pub fn target_gone(&mut self, target: Msisdn, notify: &mut impl FnMut(Notice)) {
        let Some(slots) = self.by_target.get(&target).cloned() else {
            return;
        };
        for slot in slots {
            self.end(slot, EndReason::TargetGone, notify);
        }
    }

    /// Runs what is due by `now`: coalesced notifications whose interval
    /// opened, and expiries (each ended with its last notification).
    pub fn poll(&mut self, now: Millis, notify: &mut impl FnMut(Notice)) {
        while let Some(&(at, slot)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.remove(&(at, slot));
            let live = match self.slot_mut(slot) {
                Some(watch) => {
                    watch.due = false;
                    true
                }
                None => false,
            };
            if live {
                if let Some(notice) = self.status_notice(now, slot) {
                    notify(notice);
                }
            }
        }
        while let Some(&(at, slot)) = self.expiries.first() {
            if at > now {
                break;
            }
            // Taken out first: the loop ends even if the entry were ever
            // left without its subscription.
            self.expiries.remove(&(at, slot));
            self.end(slot, EndReason::Expired, notify);
        }
    }

    /// When [`poll`](Self::poll) next has something to do.
    pub fn next_timeout(&self) -> Option<Millis> {
        let due = self.due.first().map(|&(at, _)| at);
        let expiry = self.expiries.first().map(|&(at, _)| at);
        match (due, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn slot(&self, slot: u32) -> Option<&Watch> {
        self.slots.get(slot as usize)?.as_ref()
    }

    fn slot_mut(&mut self, slot: u32) -> Option<&mut Watch> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Hands out the next status notification of `slot`.
    fn status_notice(&mut self, now: Millis, slot: u32) -> Option<Notice> {
        let watch = self.slot_mut(slot)?;
        watch.seq = watch.seq.saturating_add(1);
        watch.last_sent = now;
        let remaining_ms = watch.expires_at.saturating_sub(now);
        let remaining_s = u16::try_from(remaining_ms.div_ceil(1000))
            .unwrap_or(u16::MAX)
            .max(1);
        Some(Notice {
            key: watch.key,
            txid: watch.txid,
            seq: watch.seq,
            remaining_s,
            kind: NoticeKind::Status,
        })
    }

    /// Ends `slot` for `reason`, handing out its last notification.
    fn end(&mut self, slot: u32, reason: EndReason, notify: &mut impl FnMut(Notice)) {
        if let Some(watch) = self.remove(slot) {
            notify(Notice {
                key: watch.key,
                txid: watch.txid,
                seq: watch.seq.saturating_add(1),
                remaining_s: 0,
                kind: NoticeKind::Ended(reason),
            });
        }
    }

    /// Takes `slot` out of every index.
    fn remove(&mut self, slot: u32) -> Option<Watch> {
        let watch = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        self.by_key.remove(&watch.key);
        if let Some(list) = self.by_target.get_mut(&watch.key.target) {
            list.retain(|s| *s != slot);
            if list.is_empty() {
                self.by_target.remove(&watch.key.target);
            }
        }
        decrement(&mut self.per_watcher, watch.key.watcher);
        decrement(&mut self.per_origin, watch.key.origin);
        self.expiries.remove(&(watch.expires_at, slot));
        if watch.due {
            let opens = watch.last_sent.saturating_add(self.limits.min_interval_ms);
            self.due.remove(&(opens, slot));
        }
        Some(watch)
    }
}

/// How many under `key`.
fn count<K: std::hash::Hash + Eq>(map: &HashMap<K, u32>, key: &K) -> u32 {
    map.get(key).copied().unwrap_or(0)
}

/// One fewer under `key`; the entry goes at zero (the maps stay bounded
/// by what lives).
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Millis = 1_000;

    fn m(s: &str) -> Msisdn {
        s.parse().unwrap()
    }

    /// Watcher `w`'s watch of target `t` (A and B are 1).
    fn key(w: u64, t: u64) -> WatchKey {
        WatchKey {
            origin: NetworkId(3),
            reply_node: 1,
            watcher: m(&format!("44770090{w:04}")),
            target: target(t),
        }
    }

    fn target(t: u64) -> Msisdn {
        m(&format!("49151123456{t:02}"))
    }

    fn collect(f: impl FnOnce(&mut dyn FnMut(Notice))) -> Vec<Notice> {
        let mut out = Vec::new();
        f(&mut |n| out.push(n));
        out
    }

    fn changed(w: &mut Watches, now: Millis, t: u64) -> Vec<Notice> {
        collect(|notify| w.changed(now, target(t), &mut |n| notify(n)))
    }

    fn poll(w: &mut Watches, now: Millis) -> Vec<Notice> {
        collect(|notify| w.poll(now, &mut |n| notify(n)))
    }

    #[test]
    fn a_granted_subscription_is_notified_of_each_change_numbered_from_one() {
        let mut w = Watches::new(WatchLimits::default());
        assert_eq!(
            w.grant(0, key(1, 1), 77, 60),
            Ok(Granted::New { expiry_s: 60 })
        );
        assert_eq!(w.watching(target(1)), 1);
        let first = changed(&mut w, 10 * S, 1);
        assert_eq!(
            first,
            vec![Notice {
                key: key(1, 1),
                txid: 77,
                seq: 1,
                remaining_s: 50,
                kind: NoticeKind::Status,
            }]
        );
        let second = changed(&mut w, 20 * S, 1);
        assert_eq!((second[0].seq, second[0].remaining_s), (2, 40));
        assert!(changed(&mut w, 21 * S, 2).is_empty(), "nobody watches 2");
    }

    #[test]
    fn changes_inside_the_interval_are_coalesced_into_one_notice_when_it_opens() {
        let mut w = Watches::new(WatchLimits::default());
        w.grant(0, key(1, 1), 77, 60).unwrap();
        assert_eq!(changed(&mut w, 10 * S, 1).len(), 1);
        // Three changes in the next second: none leaves now.
        for at in [10 * S + 100, 10 * S + 400, 10 * S + 900] {
            assert!(changed(&mut w, at, 1).is_empty());
        }
        assert_eq!(w.next_timeout(), Some(11 * S));
        assert!(poll(&mut w, 11 * S - 1).is_empty());
        let coalesced = poll(&mut w, 11 * S);
        assert_eq!(coalesced.len(), 1, "one notice for the three changes");
        assert_eq!(
            (coalesced[0].seq, coalesced[0].kind),
            (2, NoticeKind::Status)
        );
        assert!(poll(&mut w, 12 * S).is_empty(), "owed once");
        assert_eq!(w.next_timeout(), Some(60 * S), "only the expiry is left");
    }

    #[test]
    fn a_refresh_extends_the_expiry_keeps_the_numbering_and_takes_the_new_txid() {
        let mut w = Watches::new(WatchLimits::default());
        w.grant(0, key(1, 1), 77, 60).unwrap();
        changed(&mut w, 5 * S, 1);
        assert_eq!(
            w.grant(50 * S, key(1, 1), 78, 60),
            Ok(Granted::Refreshed { expiry_s: 60 })
        );
        assert_eq!(w.len(), 1);
        assert!(poll(&mut w, 60 * S).is_empty(), "the old expiry is gone");
        let next = changed(&mut w, 70 * S, 1);
        assert_eq!(
            (next[0].txid, next[0].seq, next[0].remaining_s),
            (78, 2, 40)
        );
    }

    #[test]
    fn expiry_ends_the_subscription_with_a_last_notice_and_nothing_after() {
        let mut w = Watches::new(WatchLimits::default());
        w.grant(0, key(1, 1), 77, 30).unwrap();
        w.grant(0, key(2, 1), 88, 40).unwrap();
        assert_eq!(changed(&mut w, S, 1).len(), 2);
        let ended = poll(&mut w, 30 * S);
        assert_eq!(
            ended,
            vec![Notice {
                key: key(1, 1),
                txid: 77,
                seq: 2,
                remaining_s: 0,
                kind: NoticeKind::Ended(EndReason::Expired),
            }]
        );
        assert!(!w.contains(&key(1, 1)));
        let later = changed(&mut w, 31 * S, 1);
        assert_eq!(later.len(), 1, "only the live one");
        assert_eq!(later[0].key, key(2, 1));
        assert_eq!(poll(&mut w, 40 * S)[0].remaining_s, 0);
        assert!(w.is_empty());
        assert_eq!(w.next_timeout(), None);
    }

    #[test]
    fn an_unsubscription_ends_it_silently() {
        let mut w = Watches::new(WatchLimits::default());
        w.grant(0, key(1, 1), 77, 60).unwrap();
        changed(&mut w, S, 1);
        changed(&mut w, S + 10, 1);
        assert!(w.cancel(&key(1, 1)));
        assert!(!w.cancel(&key(1, 1)));
        assert!(
            poll(&mut w, 100 * S).is_empty(),
            "neither the due notice nor the expiry"
        );
        assert_eq!(w.next_timeout(), None);
    }

    #[test]
    fn losing_permission_ends_only_that_watchers_subscriptions() {
        let mut w = Watches::new(WatchLimits::default());
        w.grant(0, key(1, 1), 77, 60).unwrap();
        w.grant(0, key(2, 1), 88, 60).unwrap();
        let refused = key(1, 1).watcher;
        let ended =
            collect(|notify| w.revoke(target(1), |watcher| watcher != refused, &mut |n| notify(n)));
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].key, ended[0].remaining_s, ended[0].kind),
            (key(1, 1), 0, NoticeKind::Ended(EndReason::NotPermitted))
        );
        let later = changed(&mut w, 2 * S, 1);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].key, key(2, 1), "no news to the one refused");
        let gone = collect(|notify| w.target_gone(target(1), &mut |n| notify(n)));
        assert_eq!(gone[0].kind, NoticeKind::Ended(EndReason::TargetGone));
        assert!(w.is_empty());
    }

    #[test]
    fn the_limits_refuse_new_subscriptions_but_never_a_refresh() {
        let limits = WatchLimits {
            per_target: 2,
            per_watcher: 3,
            per_origin: 4,
            total: 5,
            ..WatchLimits::default()
        };
        let mut w = Watches::new(limits);
        w.grant(0, key(1, 1), 1, 60).unwrap();
        w.grant(0, key(2, 1), 2, 60).unwrap();
        assert_eq!(w.grant(0, key(3, 1), 3, 60), Err(WatchRefused::TargetFull));
        w.grant(0, key(1, 2), 3, 60).unwrap();
        w.grant(0, key(1, 3), 4, 60).unwrap();
        assert_eq!(w.grant(0, key(1, 4), 5, 60), Err(WatchRefused::WatcherFull));
        assert_eq!(w.grant(0, key(5, 5), 5, 60), Err(WatchRefused::OriginFull));
        let elsewhere = |w: u64, t: u64| WatchKey {
            origin: NetworkId(4),
            ..key(w, t)
        };
        w.grant(0, elsewhere(6, 6), 6, 60).unwrap();
        assert_eq!(
            w.grant(0, elsewhere(7, 7), 7, 60),
            Err(WatchRefused::TableFull)
        );
        assert!(matches!(
            w.grant(S, key(1, 3), 8, 60),
            Ok(Granted::Refreshed { .. })
        ));
        // Room comes back as subscriptions end.
        assert!(w.cancel(&key(1, 1)));
        w.grant(S, key(8, 1), 9, 60).unwrap();
    }

    #[test]
    fn an_expiry_past_the_limit_is_granted_the_limit() {
        let mut w = Watches::new(WatchLimits {
            expiry_max_s: 600,
            ..WatchLimits::default()
        });
        assert_eq!(
            w.grant(0, key(1, 1), 1, 86_400),
            Ok(Granted::New { expiry_s: 600 })
        );
        assert_eq!(w.next_timeout(), Some(600 * S));
    }
}
