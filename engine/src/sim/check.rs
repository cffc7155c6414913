//! The simulation's checkers (see the module docs of [`crate::sim`]).

use std::collections::BTreeMap;

use presence_codec::{ErrorReason, Outcome};

use super::world::{World, DEADLINE_MS};
use crate::roles::DecisionRecord;
use crate::table::NetworkId;

/// Runs every checker over a finished run; failures go to the report.
pub(super) fn check(world: &mut World) {
    let seed = world.config.seed;
    let mut violations = Vec::new();
    // Durable charge records, not voided, by (origin network, transaction).
    let mut charges: BTreeMap<(NetworkId, u64), Vec<DecisionRecord>> = BTreeMap::new();
    for net in &world.nets {
        for journal in &net.journals {
            for stored in journal.written.iter().filter(|s| s.seq <= journal.durable) {
                if !stored.record.chargeable() {
                    continue;
                }
                if journal.is_voided(stored.seq) {
                    world.report.voided += 1;
                    continue;
                }
                world.report.charges += 1;
                charges
                    .entry((stored.record.origin, stored.record.txid))
                    .or_default()
                    .push(stored.record);
            }
        }
    }
    // Per subscriber, queries not refunded in its current life.
    let mut spent: BTreeMap<usize, u64> = BTreeMap::new();
    let deadline_us = u64::from(DEADLINE_MS) * 1000;
    for (i, q) in world.queries.iter().enumerate() {
        let watcher = &world.subscribers[q.watcher];
        let name = format!(
            "seed {seed}: request {i} ({} asks about {})",
            watcher.msisdn, q.target
        );
        if q.outcomes.len() != 1 {
            violations.push(format!(
                "{name}: {} final answers, not 1: {:?} (attempts {:?})",
                q.outcomes.len(),
                q.outcomes,
                q.attempts
            ));
            continue;
        }
        let (at, outcome) = q.outcomes[0];
        *world.report.outcomes.entry(outcome.name()).or_default() += 1;
        let Some(last) = q.attempts.last() else {
            violations.push(format!("{name}: answered, never asked"));
            continue;
        };
        if at > last.at_us + deadline_us {
            violations.push(format!(
                "{name}: answered at {at} µs, after its last attempt's deadline {}",
                last.at_us + deadline_us
            ));
        }
        for (n, attempt) in q.attempts.iter().enumerate() {
            let Some(txid) = attempt.txid else { continue };
            let attempt_origin = world.nets[attempt.net].id;
            let records = charges
                .get(&(attempt_origin, txid))
                .map_or(&[][..], |v| v.as_slice());
            if records
                .iter()
                .any(|r| r.watcher != watcher.msisdn || r.target != q.target)
            {
                violations.push(format!("{name}: a charge record names another request"));
            }
            let final_attempt = n + 1 == q.attempts.len();
            let decided_elsewhere = world
                .decided_by
                .get(&(attempt_origin, txid))
                .is_some_and(|by| by.iter().any(|&d| d != attempt_origin));
            let expected: &[usize] = match (final_attempt, outcome.shows_status()) {
                // Answered with B's status: charged once if another network
                // decided, never if B is of A's own network.
                (true, true) if decided_elsewhere => &[1],
                (true, _) if outcome == Outcome::Error(ErrorReason::Timeout) => &[0, 1],
                (true, _) => &[0],
                // An attempt its gateway lost: its answer never came.
                (false, _) => &[0, 1],
            };
            if !expected.contains(&records.len()) {
                violations.push(format!(
                    "{name}: attempt {n} ended {outcome:?}, {} charge records (expected {expected:?})",
                    records.len()
                ));
            }
        }
        let (net, life, since) = world.credit_life[q.watcher];
        let in_life =
            (last.net, last.life) == (net, life) && last.at_us >= since && last.txid.is_some();
        if in_life
            && !q.bad_credential
            && matches!(
                outcome,
                Outcome::Attached { .. } | Outcome::Detached { .. } | Outcome::NotAvailable
            )
        {
            *spent.entry(q.watcher).or_default() += 1;
        }
    }
    // Every charge record belongs to a request of the network it charges.
    for ((origin, txid), records) in &charges {
        if !world.by_txid.contains_key(&(*origin, *txid)) {
            violations.push(format!(
                "seed {seed}: charge records {records:?} match no request of the network they charge"
            ));
        }
        if records.len() > 1 {
            violations.push(format!(
                "seed {seed}: transaction {txid} of {origin:?} charged {} times",
                records.len()
            ));
        }
    }
    // Liveness: with retransmissions, loss must rarely reach A.
    let timeouts = world.report.outcomes.get("timeout").copied().unwrap_or(0);
    if timeouts * 100 > world.queries.len() as u64 {
        violations.push(format!(
            "seed {seed}: {timeouts} of {} requests timed out (more than 1%)",
            world.queries.len()
        ));
    }
    // Credit: its start in the current life less one per request of that
    // life not refunded; never negative.
    for (i, s) in world.subscribers.iter().enumerate() {
        let (net, _, _) = world.credit_life[i];
        let owner = presence_codec::shard::owner(s.msisdn, world.config.workers.max(1));
        let credit = world.nets[net]
            .nodes
            .get(usize::from(owner))
            .and_then(Option::as_ref)
            .and_then(|n| n.credit(s.msisdn));
        let used = spent.get(&i).copied().unwrap_or(0);
        let Some(credit) = credit else {
            continue;
        };
        if s.credit.checked_sub(used) != Some(credit) {
            violations.push(format!(
                "seed {seed}: {} has credit {credit}, expected {} less {used}",
                s.msisdn, s.credit
            ));
        }
    }
    world.report.violations.extend(violations);
}
