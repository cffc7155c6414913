//! A node's subscribers: provisioning (at start and on every reload),
//! moves between presence servers, buddy-list and consent changes, and the
//! duplicate windows rebuilt from the journal after a restart.

use std::collections::HashMap;

use ahash::AHashMap;
use presence_codec::{AckStatus, Message, Msisdn};

use super::{DropReason, Node};
use crate::journal::{JournalEntry, StreamMark};
use crate::roles::{Addr, DecisionRecord, Hss, HssVersion, PsId, Subscriber};

/// One subscriber as provisioned (`subscribers.csv`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioned {
    /// The secret the subscriber's devices present.
    pub credential: Vec<u8>,
    /// Prepaid credit for queries (new subscribers start with it; a reload
    /// keeps the balance of existing ones).
    pub credit: u64,
    /// Whether the subscriber lets buddies watch at all.
    pub consent: bool,
    /// Who may watch the subscriber.
    pub buddies: Vec<Msisdn>,
}

/// Provisioned subscribers by MSISDN.
pub type Subscribers = HashMap<Msisdn, Provisioned>;

/// One subscriber's change, as a reload applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriberChange {
    /// Added, changed, or placed on another presence server by the new HSS
    /// table: provision it as given.
    Provision(Msisdn, Provisioned),
    /// No longer provisioned.
    Remove(Msisdn),
}

impl SubscriberChange {
    /// Whose change this is.
    pub fn msisdn(&self) -> Msisdn {
        match self {
            SubscriberChange::Provision(m, _) | SubscriberChange::Remove(m) => *m,
        }
    }
}

/// What a reload changes, in MSISDN order: every subscriber added, changed
/// or removed between `old` and `new`, and every unchanged one `new_hss`
/// places on another presence server than `old_hss` (a range reassigned, a
/// subscriber moved). Computed once by the caller, off the workers, so a
/// reload costs each worker its share of the changes, not a pass over every
/// subscriber (a million took each worker 0.8 s of its loop).
pub fn provisioning_changes(
    old: &Subscribers,
    new: &Subscribers,
    old_hss: &Hss,
    new_hss: &Hss,
) -> Vec<SubscriberChange> {
    let (old_hss, new_hss) = (old_hss.snapshot(), new_hss.snapshot());
    let mut changes: Vec<SubscriberChange> = new
        .iter()
        .filter(|(m, p)| old.get(*m) != Some(*p) || old_hss.lookup(**m) != new_hss.lookup(**m))
        .map(|(m, p)| SubscriberChange::Provision(*m, p.clone()))
        .chain(
            old.keys()
                .filter(|m| !new.contains_key(*m))
                .map(|m| SubscriberChange::Remove(*m)),
        )
        .collect();
    changes.sort_unstable_by_key(SubscriberChange::msisdn);
    changes
}

impl Node {
    /// Applies provisioning in full (at start): this node's subscribers
    /// (those it owns) as watchers at its WA and as records of the presence
    /// servers `hss` places them on; owned subscribers not listed are
    /// removed. See [`Node::apply_provisioning`] for what each change does.
    pub fn provision(&mut self, now_us: u64, subscribers: &Subscribers, hss: &Hss) {
        self.begin(now_us);
        self.forget_departed();
        let gone: Vec<Msisdn> = self
            .owned
            .iter()
            .copied()
            .filter(|m| !subscribers.contains_key(m))
            .collect();
        for m in gone {
            self.remove_subscriber(m);
        }
        // Every owned subscriber may have a device address: sized now, the
        // map never rehashes (a stall of tens of milliseconds at a million
        // entries) while it fills under load.
        let mine: Vec<(&Msisdn, &Provisioned)> =
            subscribers.iter().filter(|(m, _)| self.owns(**m)).collect();
        let have = self.device_addrs.len();
        self.device_addrs.reserve(mine.len().saturating_sub(have));
        let hss = hss.snapshot();
        for (m, p) in mine {
            self.provision_subscriber(*m, p, &hss);
        }
    }

    /// Applies a reload's changes ([`provisioning_changes`]) for the
    /// subscribers this node owns, against `hss` (the new HSS, not yet
    /// published). Existing subscribers keep their credit and status; a
    /// subscriber `hss` places on another presence server is exported from
    /// the old slice (which keeps a forwarding pointer for one window, so a
    /// query still routed there by the old HSS follows it) and imported
    /// with its state and its recent decisions; a removed subscriber's
    /// device address is kept for a deadline, for the answers still
    /// pending.
    pub fn apply_provisioning(&mut self, now_us: u64, changes: &[SubscriberChange], hss: &Hss) {
        self.begin(now_us);
        self.forget_departed();
        let added = changes
            .iter()
            .filter(|c| matches!(c, SubscriberChange::Provision(m, _) if !self.owned.contains(m)))
            .count();
        self.device_addrs.reserve(added);
        let hss = hss.snapshot();
        for change in changes {
            if !self.owns(change.msisdn()) {
                continue;
            }
            match change {
                SubscriberChange::Provision(m, p) => self.provision_subscriber(*m, p, &hss),
                SubscriberChange::Remove(m) => self.remove_subscriber(*m),
            }
        }
    }

    fn remove_subscriber(&mut self, m: Msisdn) {
        if !self.owned.remove(&m) {
            return;
        }
        for slice in self.ps.iter_mut().flatten() {
            slice.deprovision(m);
        }
        self.wa.deprovision(m);
        // Its device's address is kept for a deadline, so the answers to
        // its requests still pending find it.
        let keep_until = self.now_ms + u64::from(self.config.deadline_ms);
        self.departed.push_back((m, keep_until));
    }

    fn provision_subscriber(&mut self, m: Msisdn, p: &Provisioned, hss: &HssVersion) {
        let now = self.now_ms;
        let charging = self.held.charging();
        self.owned.insert(m);
        self.wa.provision(
            m,
            &Subscriber {
                credential: p.credential.clone(),
                credit: p.credit,
            },
        );
        let Some(home) = hss.lookup(m) else {
            return;
        };
        let elsewhere = self
            .ps
            .iter()
            .flatten()
            .find(|slice| slice.id() != home && slice.subscriber(m).is_some())
            .map(|slice| slice.id());
        let moved = elsewhere.and_then(|from| {
            self.ps
                .get_mut(usize::from(from.0))?
                .as_mut()?
                .export(now, m, home)
        });
        let Some(slice) = Node::slice(&mut self.ps, &self.config, charging, home) else {
            return;
        };
        if let Some((record, entries)) = moved {
            slice.import(now, m, record, &entries);
        }
        slice.reprovision(m, p.credential.clone(), p.buddies.clone(), p.consent);
    }

    /// Forgets the device addresses of subscribers removed a deadline ago
    /// (unless provisioned again since).
    pub(super) fn forget_departed(&mut self) {
        while let Some(&(m, until)) = self.departed.front() {
            if until > self.now_ms {
                break;
            }
            self.departed.pop_front();
            if !self.owned.contains(&m) {
                self.device_addrs.remove(&m);
            }
        }
    }

    /// Rebuilds the presence servers' duplicate windows from journaled
    /// decisions (the appliance's recovery on start), keeping those about
    /// subscribers this node owns, on the server the HSS places them on now
    /// (it may have moved them since); and hands them the stream marks of
    /// the last window (every worker's: a stream's queries may land on any
    /// worker once the worker count changed), which hold off what may have
    /// been decided without a charge before the restart
    /// ([`RestartMarks`](crate::roles::RestartMarks)).
    pub fn rebuild_windows(&mut self, now_us: u64, entries: &[JournalEntry], marks: &[StreamMark]) {
        self.begin(now_us);
        let names = self.table.snapshot();
        let window_ms = self.config.window_ms();
        let at_zero = self.config.unix_ms_at_zero;
        let restart_marks = crate::roles::RestartMarks::new(marks.iter().filter_map(|m| {
            let origin = names.names().id(&m.origin)?;
            let lapses = m
                .at_unix_ms
                .saturating_add(window_ms)
                .saturating_sub(at_zero);
            Some((origin, m.reply_node, m.high_water, lapses))
        }));
        if !restart_marks.is_empty() {
            let shared = std::sync::Arc::new(restart_marks);
            for slice in self.ps.iter_mut().flatten() {
                slice.set_restart_marks(shared.clone());
            }
            self.config.restart_marks = Some(shared);
        }
        let mut by_server: AHashMap<PsId, Vec<DecisionRecord>> = AHashMap::new();
        let (workers, worker) = (self.config.workers, self.config.worker);
        let owned = entries
            .iter()
            .filter(|e| presence_codec::shard::owner(e.target, workers) == worker);
        for e in owned {
            let Some(origin) = names.names().id(&e.origin) else {
                continue;
            };
            let ps = self.hss.lookup(e.target).unwrap_or(e.ps);
            by_server.entry(ps).or_default().push(DecisionRecord {
                origin,
                txid: e.txid,
                watcher: e.watcher,
                target: e.target,
                reply_node: e.reply_node,
                at: e.at_unix_ms.saturating_sub(self.config.unix_ms_at_zero),
                ps,
                outcome: e.outcome,
            });
        }
        let now = self.now_ms;
        let charging = self.held.charging();
        for (id, records) in by_server {
            if let Some(slice) = Node::slice(&mut self.ps, &self.config, charging, id) {
                slice.restart(now, &records);
            }
        }
    }

    /// A buddy-list or consent change (wire §5.8–§5.9) for a subscriber
    /// this node owns; returns the ack's status, `None` for a message that
    /// is neither, or a subscriber of another node.
    pub fn handle_provisioning(&mut self, now_us: u64, message: &Message<'_>) -> Option<AckStatus> {
        let owner = match message {
            Message::BuddyUpdate(u) => u.owner,
            Message::ConsentUpdate(u) => u.owner,
            _ => return None,
        };
        if !self.owns(owner) {
            return None;
        }
        self.begin(now_us);
        let Some(id) = self.hss.lookup(owner) else {
            return Some(AckStatus::UnknownSubscriber);
        };
        let charging = self.held.charging();
        let Some(slice) = Node::slice(&mut self.ps, &self.config, charging, id) else {
            self.counters.drop(DropReason::BadMessage);
            return None;
        };
        slice.handle(
            self.now_ms,
            Addr::Provisioning,
            self.config.network,
            message,
            &mut self.out,
        );
        let status = self.out.transmits.iter().find_map(|t| match t.message {
            Message::Ack(ack) if t.to == Addr::Provisioning => Some(ack.status),
            _ => None,
        });
        // The ack is returned; what else the change caused (the last
        // notification of a subscription it ended) goes on its way.
        self.out.transmits.retain(|t| t.to != Addr::Provisioning);
        self.drain_out(Addr::Ps(id), None);
        self.run();
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Prefix;

    fn m(text: &str) -> Msisdn {
        text.parse().unwrap()
    }

    fn account(credential: &[u8], buddies: &[&str]) -> Provisioned {
        Provisioned {
            credential: credential.to_vec(),
            credit: 10,
            consent: true,
            buddies: buddies.iter().map(|b| m(b)).collect(),
        }
    }

    #[test]
    fn a_reload_changes_only_what_the_files_or_the_hss_changed() {
        let old_hss = Hss::new(&[(Prefix::parse("4915").unwrap(), PsId(0))]);
        let new_hss = old_hss.fork();
        // One subscriber moved to presence server 1 by the new HSS table.
        new_hss.move_subscriber(m("491500000004"), PsId(1)).unwrap();
        let old: Subscribers = [
            (m("491500000001"), account(b"same", &[])),
            (m("491500000002"), account(b"old", &[])),
            (m("491500000003"), account(b"leaving", &[])),
            (m("491500000004"), account(b"moved", &[])),
        ]
        .into_iter()
        .collect();
        let mut new = old.clone();
        new.remove(&m("491500000003"));
        new.insert(m("491500000002"), account(b"old", &["447700900123"]));
        new.insert(m("491500000005"), account(b"new", &[]));
        let changes = provisioning_changes(&old, &new, &old_hss, &new_hss);
        assert_eq!(
            changes,
            [
                SubscriberChange::Provision(m("491500000002"), new[&m("491500000002")].clone()),
                SubscriberChange::Remove(m("491500000003")),
                SubscriberChange::Provision(m("491500000004"), old[&m("491500000004")].clone()),
                SubscriberChange::Provision(m("491500000005"), new[&m("491500000005")].clone()),
            ],
            "in MSISDN order; the unchanged subscriber is not sent"
        );
        assert!(provisioning_changes(&new, &new, &new_hss, &new_hss).is_empty());
    }
}
