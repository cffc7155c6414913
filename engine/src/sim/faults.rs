//! The faults and changes the simulation injects while traffic flows.
//! Provisioning changes take the appliance's own path: a candidate HSS,
//! every node provisioned against it, then published.

use std::collections::BTreeSet;

use presence_codec::{
    BuddyAction, BuddyList, BuddyListStorage, BuddyUpdate, Consent, ConsentScope, ConsentUpdate,
    DeviceAuth, DeviceKey, Message, Msisdn, PresenceState, Publish, Reachability,
    BUDDIES_PER_UPDATE_MAX,
};

use super::world::{Event, World};
use crate::node::{provisioning_changes, Provisioned};
use crate::roles::{Hss, PsId};

impl World {
    fn count(&mut self, fault: &'static str) {
        *self.report.faults.entry(fault).or_default() += 1;
    }

    fn is_up(&self, net: usize) -> bool {
        self.nets[net].down_until <= self.now_us
    }

    /// Sends every live node of `net` the provisioning changes under
    /// `candidate`, then publishes it (the appliance's reload, in order).
    fn provision_with(&mut self, net: usize, candidate: &Hss) {
        let now = self.now_us;
        let state = &mut self.nets[net];
        let changes =
            provisioning_changes(&state.applied, &state.subscribers, &state.hss, candidate);
        for node in state.nodes.iter_mut().flatten() {
            node.apply_provisioning(now, &changes, candidate);
        }
        state.applied.clone_from(&state.subscribers);
        state.hss.publish(candidate);
    }

    /// The whole gateway of `net` stops; it comes back after
    /// `restart_down_ms` with what its journal holds. (Not while one of
    /// its journals is failed: a crash then would leave records no header
    /// voided, the one case `docs/reliability.md` names.)
    pub(super) fn restart(&mut self, net: usize) {
        if !self.is_up(net) {
            return;
        }
        if self.nets[net].journals.iter().any(|j| j.failed) {
            let later = self.now_us + 2_500_000;
            self.schedule(later, Event::Restart { net });
            return;
        }
        self.count("restart");
        let down = self.config.restart_down_ms * 1000;
        let state = &mut self.nets[net];
        state.down_until = self.now_us + down;
        state.life += 1;
        for node in &mut state.nodes {
            *node = None;
        }
        for journal in &mut state.journals {
            // Recovery reads and syncs what was written.
            journal.durable = journal.appended;
        }
        let at = state.down_until;
        self.schedule(at, Event::Recover { net });
    }

    pub(super) fn recover(&mut self, net: usize) {
        self.start_gateway(net);
        let life = self.nets[net].life;
        self.nets[net].life_started_us.push(self.now_us);
        for (i, s) in self.subscribers.iter().enumerate() {
            if s.net == net {
                self.credit_life[i] = (net, life, self.now_us);
            }
        }
        // The operator's provisioning system replays what the files do not
        // hold: single watchers' withdrawn consent.
        let withdrawn: Vec<(Msisdn, Msisdn)> = self
            .subscribers
            .iter()
            .filter(|s| s.net == net)
            .flat_map(|s| {
                self.permissions[&s.msisdn]
                    .withdrawn
                    .iter()
                    .map(move |w| (s.msisdn, *w))
            })
            .collect();
        for (owner, watcher) in withdrawn {
            self.consent_update(
                net,
                owner,
                ConsentScope::Watcher(watcher),
                Consent::Withdraw,
            );
        }
        for w in 0..self.nets[net].nodes.len() {
            self.pump(net, w);
        }
    }

    /// A worker's border links go down for a while: frames for it reach
    /// another worker of its gateway, which hands them over.
    pub(super) fn ingress_down(&mut self, net: usize, worker: usize) {
        self.count("ingress_down");
        let until = self.now_us + self.between(500_000, 2_000_000);
        if let Some(slot) = self.nets[net].ingress_down_until.get_mut(worker) {
            *slot = until;
        }
    }

    /// One subscriber moved to the next presence server.
    pub(super) fn move_subscriber(&mut self, subscriber: usize) {
        let s = self.subscribers[subscriber].clone();
        if !self.is_up(s.net) {
            return;
        }
        let hss = self.nets[s.net].hss.clone();
        let Some(from) = hss.lookup(s.msisdn) else {
            return;
        };
        let to = PsId((from.0 + 1) % self.config.ps_per_network);
        let candidate = hss.fork();
        if candidate.move_subscriber(s.msisdn, to).is_err() {
            return;
        }
        self.count("move");
        self.provision_with(s.net, &candidate);
    }

    /// A whole range reassigned to another presence server.
    pub(super) fn reassign(&mut self, net: usize) {
        if !self.is_up(net) || self.nets[net].ranges.is_empty() {
            return;
        }
        let i = self.rng.below(self.nets[net].ranges.len() as u64) as usize;
        let (prefix, ps) = self.nets[net].ranges[i];
        let to = PsId((ps.0 + 1) % self.config.ps_per_network);
        self.nets[net].ranges[i].1 = to;
        let candidate = self.nets[net].hss.fork();
        if candidate.assign_range(prefix, to).is_err() {
            return;
        }
        self.count("range_reassignment");
        self.provision_with(net, &candidate);
    }

    /// A number ported to another network while traffic flows: the
    /// numbering table changes, the old network deprovisions it, the new
    /// one provisions it (on a presence server of its choosing).
    pub(super) fn port(&mut self, subscriber: usize) {
        let s = self.subscribers[subscriber].clone();
        let nets = self.nets.len();
        if nets < 2 {
            return;
        }
        let to = (s.net + 1 + self.rng.below(nets as u64 - 1) as usize) % nets;
        if !self.is_up(s.net) || !self.is_up(to) {
            return;
        }
        if self
            .table
            .set_ported(s.msisdn, &self.nets[to].name)
            .is_err()
        {
            return;
        }
        self.count("port");
        let provisioned = self.nets[s.net].subscribers.remove(&s.msisdn);
        let old = self.nets[s.net].hss.fork();
        self.provision_with(s.net, &old);
        let permission = self.permissions[&s.msisdn].clone();
        self.nets[to].subscribers.insert(
            s.msisdn,
            provisioned.unwrap_or(Provisioned {
                credential: s.credential.to_vec(),
                credit: s.credit,
                consent: permission.consent_all,
                buddies: permission.buddies.iter().copied().collect(),
            }),
        );
        let candidate = self.nets[to].hss.fork();
        let ps = PsId((s.msisdn.as_u64() % u64::from(self.config.ps_per_network)) as u16);
        if candidate.move_subscriber(s.msisdn, ps).is_err() {
            return;
        }
        self.provision_with(to, &candidate);
        self.subscribers[subscriber].net = to;
        self.credit_life[subscriber] = (to, self.nets[to].life, self.now_us);
        for watcher in permission.withdrawn {
            self.consent_update(
                to,
                s.msisdn,
                ConsentScope::Watcher(watcher),
                Consent::Withdraw,
            );
        }
    }

    /// Consent withdrawn or given back, for all watchers or one.
    pub(super) fn change_consent(&mut self, subscriber: usize) {
        let owner = self.subscribers[subscriber].msisdn;
        let net = self.subscribers[subscriber].net;
        let model = self.permissions.entry(owner).or_default().clone();
        let (scope, consent) = match self.rng.below(3) {
            0 => (
                ConsentScope::All,
                if model.consent_all {
                    Consent::Withdraw
                } else {
                    Consent::Grant
                },
            ),
            _ => {
                let buddies: Vec<Msisdn> = model.buddies.iter().copied().collect();
                if buddies.is_empty() {
                    return;
                }
                let w = buddies[self.rng.below(buddies.len() as u64) as usize];
                let consent = if model.withdrawn.contains(&w) {
                    Consent::Grant
                } else {
                    Consent::Withdraw
                };
                (ConsentScope::Watcher(w), consent)
            }
        };
        self.count("consent");
        // Provisioning and the model change at the same virtual moment.
        let model = self.permissions.entry(owner).or_default();
        match (scope, consent) {
            (ConsentScope::All, c) => {
                model.consent_all = c == Consent::Grant;
                if let Some(p) = self.nets[net].subscribers.get_mut(&owner) {
                    p.consent = c == Consent::Grant;
                }
            }
            (ConsentScope::Watcher(w), Consent::Withdraw) => {
                model.withdrawn.insert(w);
            }
            (ConsentScope::Watcher(w), Consent::Grant) => {
                model.withdrawn.remove(&w);
            }
        }
        self.consent_update(net, owner, scope, consent);
    }

    fn consent_update(&mut self, net: usize, owner: Msisdn, scope: ConsentScope, consent: Consent) {
        let update = Message::ConsentUpdate(ConsentUpdate {
            txid: self.now_us,
            owner,
            scope,
            consent,
        });
        let now = self.now_us;
        if let Some((_, node)) = self.owner_node(net, owner) {
            let status = node.handle_provisioning(now, &update);
            if status != Some(presence_codec::AckStatus::Ok) {
                self.report.violations.push(format!(
                    "seed {}: consent change for {owner} answered {status:?}",
                    self.config.seed
                ));
            }
        }
    }

    /// A buddy list changed: some added, some removed, or replaced.
    pub(super) fn change_buddies(&mut self, subscriber: usize) {
        let owner = self.subscribers[subscriber].msisdn;
        let net = self.subscribers[subscriber].net;
        let current: Vec<Msisdn> = self.permissions[&owner].buddies.iter().copied().collect();
        let n = self.subscribers.len() as u64;
        let mut drawn = BTreeSet::new();
        for _ in 0..1 + self.rng.below(4) {
            drawn.insert(self.subscribers[self.rng.below(n) as usize].msisdn);
        }
        let (action, list): (BuddyAction, Vec<Msisdn>) = match self.rng.below(3) {
            0 => (BuddyAction::Add, drawn.iter().copied().collect()),
            1 if !current.is_empty() => {
                let gone = current[self.rng.below(current.len() as u64) as usize];
                (BuddyAction::Remove, vec![gone])
            }
            _ => {
                let mut all = drawn;
                for _ in 0..self.rng.below(6) {
                    all.insert(self.subscribers[self.rng.below(n) as usize].msisdn);
                }
                (BuddyAction::Replace, all.into_iter().collect())
            }
        };
        let list: Vec<Msisdn> = list.into_iter().take(BUDDIES_PER_UPDATE_MAX).collect();
        let mut storage: BuddyListStorage = [0; std::mem::size_of::<BuddyListStorage>()];
        let Ok(buddies) = BuddyList::encode(&list, &mut storage) else {
            return;
        };
        self.count("buddies");
        let model = self.permissions.entry(owner).or_default();
        match action {
            BuddyAction::Add => model.buddies.extend(list.iter().copied()),
            BuddyAction::Remove => {
                for b in &list {
                    model.buddies.remove(b);
                }
            }
            BuddyAction::Replace => model.buddies = list.iter().copied().collect(),
        }
        let buddies_now: Vec<Msisdn> = model.buddies.iter().copied().collect();
        if let Some(p) = self.nets[net].subscribers.get_mut(&owner) {
            p.buddies = buddies_now;
        }
        let update = Message::BuddyUpdate(BuddyUpdate {
            txid: self.now_us,
            owner,
            action,
            buddies,
        });
        let now = self.now_us;
        if let Some((_, node)) = self.owner_node(net, owner) {
            let status = node.handle_provisioning(now, &update);
            if status != Some(presence_codec::AckStatus::Ok) {
                self.report.violations.push(format!(
                    "seed {}: buddy change for {owner} answered {status:?}",
                    self.config.seed
                ));
            }
        }
    }

    /// A device of the subscriber publishes its status.
    pub(super) fn publish(&mut self, subscriber: usize) {
        let s = self.subscribers[subscriber].clone();
        if !self.is_up(s.net) {
            return;
        }
        let state = if self.rng.chance(0.6) {
            PresenceState::Attached(match self.rng.below(3) {
                0 => Reachability::PACKET_DATA,
                1 => Reachability::SMS,
                _ => Reachability::PACKET_DATA_AND_SMS,
            })
        } else {
            PresenceState::Detached
        };
        let counter = self.next_counter(subscriber);
        let publication =
            Message::Publish(DeviceKey::derive(s.msisdn, &s.credential).sign_publish(
                Publish {
                    txid: self.now_us,
                    subscriber: s.msisdn,
                    state,
                    auth: DeviceAuth::UNSIGNED,
                },
                counter,
            ));
        self.device_datagram(s.net, s.addr, s.msisdn, &publication);
    }

    /// A worker's disk fails; the journal tries a new segment every
    /// second until one opens (drawn: one to three seconds).
    pub(super) fn journal_fail(&mut self, net: usize, worker: usize) {
        if !self.is_up(net) || self.nets[net].journals[worker].failed {
            return;
        }
        self.count("journal_failure");
        self.nets[net].journals[worker].fail();
        self.tell_durability(net, worker);
        let retries = self.between(1, 3);
        let at = self.now_us + retries * World::journal_retry_ms() * 1000;
        self.schedule(at, Event::JournalRecover { net, worker });
    }

    pub(super) fn journal_recover(&mut self, net: usize, worker: usize) {
        self.nets[net].journals[worker].recover();
        self.tell_durability(net, worker);
    }

    fn tell_durability(&mut self, net: usize, worker: usize) {
        let durability = self.nets[net].journals[worker].durability();
        let now = self.now_us;
        if let Some(node) = self.nets[net]
            .nodes
            .get_mut(worker)
            .and_then(Option::as_mut)
        {
            node.handle_durable(now, durability);
            self.pump(net, worker);
        }
    }
}
