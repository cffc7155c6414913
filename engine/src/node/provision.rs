//! A node's subscribers: provisioning (at start and on every reload),
//! moves between presence servers, buddy-list and consent changes, and the
//! duplicate windows rebuilt from the journal after a restart.

use std::collections::HashMap;

use ahash::AHashMap;
use presence_codec::{AckStatus, Message, Msisdn};

use super::{DropReason, Node};
use crate::journal::JournalEntry;
use crate::roles::{Addr, DecisionRecord, Hss, PsId, Subscriber};

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

impl Node {
    /// Applies provisioning: this node's subscribers (those it owns) as
    /// watchers at its WA and as records of the presence servers `hss` (the
    /// new HSS, not yet published) places them on. Existing subscribers
    /// keep their credit and status; a subscriber `hss` places on another
    /// presence server — one moved alone, or its whole range reassigned —
    /// is exported from the old slice (which keeps a forwarding pointer for
    /// one window, so a query still routed there by the old HSS follows it)
    /// and imported with its state and its recent decisions; subscribers no
    /// longer listed are removed.
    pub fn provision(&mut self, now_us: u64, subscribers: &Subscribers, hss: &Hss) {
        self.begin(now_us);
        let now = self.now_ms;
        let gone: Vec<Msisdn> = self
            .owned
            .iter()
            .copied()
            .filter(|m| !subscribers.contains_key(m))
            .collect();
        self.forget_departed();
        let keep_until = now + u64::from(self.config.deadline_ms);
        for m in gone {
            for slice in self.ps.iter_mut().flatten() {
                slice.deprovision(m);
            }
            self.wa.deprovision(m);
            self.owned.remove(&m);
            // Its device's address is kept for a deadline, so the answers
            // to its requests still pending find it.
            self.departed.push_back((m, keep_until));
        }
        // Every owned subscriber may have a device address: sized now, the
        // map never rehashes (a stall of tens of milliseconds at a million
        // entries) while it fills under load.
        let mine: Vec<(&Msisdn, &Provisioned)> =
            subscribers.iter().filter(|(m, _)| self.owns(**m)).collect();
        let have = self.device_addrs.len();
        self.device_addrs.reserve(mine.len().saturating_sub(have));
        let hss = hss.snapshot();
        let charging = self.held.charging();
        for (m, p) in mine {
            self.owned.insert(*m);
            self.wa.provision(
                *m,
                &Subscriber {
                    credential: p.credential.clone(),
                    credit: p.credit,
                },
            );
            let Some(home) = hss.lookup(*m) else {
                continue;
            };
            let elsewhere = self
                .ps
                .iter()
                .flatten()
                .find(|slice| slice.id() != home && slice.subscriber(*m).is_some())
                .map(|slice| slice.id());
            let moved = elsewhere.and_then(|from| {
                self.ps
                    .get_mut(usize::from(from.0))?
                    .as_mut()?
                    .export(now, *m, home)
            });
            let Some(slice) = Node::slice(&mut self.ps, &self.config, charging, home) else {
                continue;
            };
            if let Some((record, entries)) = moved {
                slice.import(now, *m, record, &entries);
            }
            slice.reprovision(*m, p.credential.clone(), p.buddies.clone(), p.consent);
        }
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
    /// (it may have moved them since).
    pub fn rebuild_windows(&mut self, now_us: u64, entries: &[JournalEntry]) {
        self.begin(now_us);
        let names = self.table.snapshot();
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
        self.out.transmits.clear();
        status
    }
}
