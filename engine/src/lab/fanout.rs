//! The watching fan-out set-up (issue 17): B's node (t-mobile.de, one
//! worker, no IO) holding targets each watched by the same watchers of
//! o2.gb, their subscriptions granted; what the fan-out benchmark and the
//! no-allocation test run.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use presence_codec::{
    DeviceAuth, DeviceKey, FrameWriter, Message, Msisdn, PresenceState, Publish, Query, Subscribe,
    FRAME_LEN_DEFAULT_MAX,
};

use super::DemoError;
use crate::journal::{Durability, JournalSink, MarkRef};
use crate::node::{Destination, Node, NodeConfig, Provisioned};
use crate::roles::{DecisionRecord, Hss, PsId};
use crate::table::{NumberingTable, Prefix};

/// A journal durable at once: it remembers what to report, and allocates
/// nothing.
#[derive(Debug, Default)]
pub struct DurableAtOnce {
    seq: u64,
    ticket: u64,
}

impl JournalSink for DurableAtOnce {
    fn append(&mut self, seq: u64, _at: u64, _origin: &str, _record: &DecisionRecord) {
        self.seq = seq;
    }
    fn mark(&mut self, _mark: MarkRef<'_>) {}
    fn sync(&mut self, ticket: u64) {
        self.ticket = ticket;
    }
}

/// B's node with its targets watched.
#[derive(Debug)]
pub struct FanOut {
    /// B's node.
    pub node: Node,
    /// Each target's number and its devices' key.
    pub targets: Vec<(Msisdn, DeviceKey)>,
    journal: DurableAtOnce,
}

/// Target `i`'s number (t-mobile.de's 49151 block).
fn target(i: u64) -> Result<Msisdn, DemoError> {
    Msisdn::from_u64(4_915_100_000_000 + i).map_err(|e| DemoError::Other(e.to_string()))
}

/// Watcher `k`'s number (o2.gb's 447700 block).
fn watcher(k: u64) -> Result<Msisdn, DemoError> {
    Msisdn::from_u64(447_700_900_000 + k).map_err(|e| DemoError::Other(e.to_string()))
}

impl FanOut {
    /// `targets` subscribers of B, each watched for `expiry_s` (granted up
    /// to that) by the same `watchers` of o2.gb, at node time 1 s.
    pub fn new(
        world: &Arc<NumberingTable>,
        targets: u64,
        watchers: u64,
        expiry_s: u32,
    ) -> Result<FanOut, DemoError> {
        let names = world.snapshot().names().clone();
        let network = |name: &str| {
            names
                .id(name)
                .ok_or_else(|| DemoError::Other(format!("{name} is not in the table")))
        };
        let (net_a, net_b) = (network("o2.gb")?, network("t-mobile.de")?);
        let block = Prefix::parse("49151").ok_or_else(|| DemoError::Other("prefix".into()))?;
        let hss = Arc::new(Hss::new(&[(block, PsId(1))]));
        let mut config = NodeConfig::new(net_b, 0, 1);
        config.peers = vec![net_a];
        config.watching.expiry_max_s = config.watching.expiry_max_s.max(expiry_s);
        let mut node = Node::new(config, world, &hss);
        node.set_peer_workers(net_a, 1);
        let buddies = (0..watchers).map(watcher).collect::<Result<Vec<_>, _>>()?;
        let mut subscribers = HashMap::new();
        let mut keys = Vec::new();
        for i in 0..targets {
            let secret = format!("secret-{i}").into_bytes();
            keys.push((target(i)?, DeviceKey::derive(target(i)?, &secret)));
            let provisioned = Provisioned {
                credential: secret,
                credit: 0,
                consent: true,
                buddies: buddies.clone(),
            };
            subscribers.insert(target(i)?, provisioned);
        }
        node.provision(0, &subscribers, &hss);
        let mut fan_out = FanOut {
            node,
            targets: keys,
            journal: DurableAtOnce::default(),
        };
        let expiry_s = NonZeroU32::new(expiry_s).unwrap_or(NonZeroU32::MIN);
        let mut txid = 1u64;
        let now_us = 1_000_000;
        for i in 0..targets {
            let mut frame = Vec::new();
            let mut writer = FrameWriter::new(&mut frame, FRAME_LEN_DEFAULT_MAX)
                .map_err(|e| DemoError::Other(e.to_string()))?;
            for watcher in &buddies {
                let query = Query {
                    txid,
                    watcher: *watcher,
                    target: target(i)?,
                    hop_limit: 5,
                    budget_ms: 1_500,
                    reply_node: 0,
                    route_version: 1,
                };
                txid += 1;
                writer
                    .push(&Message::Subscribe(Subscribe { query, expiry_s }))
                    .map_err(|e| DemoError::Other(e.to_string()))?;
            }
            fan_out.node.handle_border_frame(now_us, net_a, &frame);
            fan_out.settle(now_us);
        }
        Ok(fan_out)
    }

    /// Target `i`'s device's publication of `state` at node time `now_ms`
    /// (its clock as the counter), as a frame.
    pub fn publication(&self, i: usize, state: PresenceState, now_ms: u64) -> Vec<u8> {
        let mut frame = Vec::with_capacity(64);
        if let (Some((target, key)), Ok(mut writer)) = (
            self.targets.get(i),
            FrameWriter::with_version(&mut frame, FRAME_LEN_DEFAULT_MAX, 2),
        ) {
            let publish = Publish {
                txid: now_ms,
                subscriber: *target,
                state,
                auth: DeviceAuth::UNSIGNED,
            };
            let _ = writer.push(&Message::Publish(key.sign_publish(publish, now_ms)));
        }
        frame
    }

    /// The journal reports everything durable at `now_us`, and the node
    /// sends what it has, each frame's buffer handed back as the runtime
    /// does; returns the bytes of border frames sent.
    pub fn settle(&mut self, now_us: u64) -> usize {
        self.node.poll_journal(&mut self.journal);
        self.node.handle_durable(
            now_us,
            Durability {
                durable_seq: self.journal.seq,
                synced_ticket: self.journal.ticket,
                healthy: true,
            },
        );
        let mut border_bytes = 0;
        while let Some(out) = self.node.poll_transmit() {
            if let Destination::Border(_) = out.to {
                border_bytes += out.frame.len();
            }
            self.node.recycle(out.frame);
        }
        border_bytes
    }
}
