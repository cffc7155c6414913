//! One valid example of every message type (and outcome), for tools, seed
//! corpora and documentation. The values match the fixtures of
//! `docs/wire-format.md` §11 where those exist.

use core::num::NonZeroU32;

use crate::message::{
    Ack, AckStatus, Answer, BuddyAction, BuddyList, BuddyUpdate, ClientOperation, ClientRequest,
    Consent, ConsentScope, ConsentUpdate, Credential, DeviceAuth, ErrorReason, Message, Notify,
    Outcome, PresenceState, Publish, Query, Reachability, Subscribe,
};
use crate::msisdn::Msisdn;
use crate::DeviceKey;

/// The secret the samples' devices are provisioned with.
pub const SECRET: &[u8] = b"k3y!";
/// The samples' device counter: 2026-12-07 00:00:00 UTC in milliseconds.
pub const COUNTER: u64 = 1_796_601_600_000;

/// `447700900123`
pub const WATCHER: Msisdn = match Msisdn::from_u64(447_700_900_123) {
    Ok(m) => m,
    Err(_) => Msisdn::MIN,
};
/// `12025550143`
pub const TARGET: Msisdn = match Msisdn::from_u64(12_025_550_143) {
    Ok(m) => m,
    Err(_) => Msisdn::MIN,
};

/// The query of §11.
pub const QUERY: Query = Query {
    txid: 0x0102_0304_0506_0708,
    watcher: WATCHER,
    target: TARGET,
    hop_limit: 8,
    budget_ms: 1500,
    reply_node: 3,
    route_version: 7,
};

/// Three buddies in wire form: 1, 447700900123 and 999999999999999.
const BUDDIES_WIRE: [u8; 21] = [
    0, 0, 0, 0, 0, 0, 1, //
    0x00, 0x00, 0x68, 0x3d, 0x0d, 0x99, 0x1b, //
    0x03, 0x8d, 0x7e, 0xa4, 0xc6, 0x7f, 0xff,
];

const HOUR: NonZeroU32 = match NonZeroU32::new(3600) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

fn answer(outcome: Outcome) -> Message<'static> {
    Message::Answer(Answer {
        txid: QUERY.txid,
        reply_node: QUERY.reply_node,
        target: TARGET,
        outcome,
    })
}

/// Every message type at least once, every outcome once, with a name each.
pub fn one_of_each() -> [(&'static str, Message<'static>); 16] {
    [
        ("query", Message::Query(QUERY)),
        ("unsubscribe", Message::Unsubscribe(QUERY)),
        (
            "subscribe",
            Message::Subscribe(Subscribe {
                query: QUERY,
                expiry_s: HOUR,
            }),
        ),
        (
            "answer_attached",
            answer(Outcome::Attached {
                reach: Reachability::PACKET_DATA_AND_SMS,
                confirmed_age_s: 42,
            }),
        ),
        (
            "answer_detached",
            answer(Outcome::Detached {
                confirmed_age_s: 600,
            }),
        ),
        ("answer_not_available", answer(Outcome::NotAvailable)),
        (
            "answer_overloaded",
            answer(Outcome::Overloaded {
                retry_after_ms: 250,
            }),
        ),
        (
            "answer_error",
            answer(Outcome::Error(ErrorReason::UnknownNetwork)),
        ),
        (
            "client_request",
            Message::ClientRequest(DeviceKey::derive(WATCHER, SECRET).sign_request(
                ClientRequest {
                    txid: 77,
                    watcher: WATCHER,
                    target: TARGET,
                    operation: ClientOperation::Subscribe { expiry_s: HOUR },
                    auth: DeviceAuth::UNSIGNED,
                },
                COUNTER,
            )),
        ),
        (
            "client_request_v1",
            Message::ClientRequest(ClientRequest {
                txid: 78,
                watcher: WATCHER,
                target: TARGET,
                operation: ClientOperation::Query,
                auth: DeviceAuth::Credential(match Credential::new(SECRET) {
                    Some(c) => c,
                    None => Credential::EMPTY,
                }),
            }),
        ),
        (
            "notify",
            Message::Notify(Notify {
                txid: QUERY.txid,
                reply_node: QUERY.reply_node,
                watcher: WATCHER,
                target: TARGET,
                seq: 2,
                remaining_s: 120,
                outcome: Outcome::Attached {
                    reach: Reachability::PACKET_DATA,
                    confirmed_age_s: 5,
                },
            }),
        ),
        (
            "publish",
            Message::Publish(DeviceKey::derive(TARGET, SECRET).sign_publish(
                Publish {
                    txid: 11,
                    subscriber: TARGET,
                    state: PresenceState::Attached(Reachability::SMS),
                    auth: DeviceAuth::UNSIGNED,
                },
                COUNTER + 1,
            )),
        ),
        (
            "publish_v1",
            Message::Publish(Publish {
                txid: 13,
                subscriber: TARGET,
                state: PresenceState::Detached,
                auth: DeviceAuth::Credential(Credential::EMPTY),
            }),
        ),
        (
            "buddy_update",
            Message::BuddyUpdate(BuddyUpdate {
                txid: 12,
                owner: TARGET,
                action: BuddyAction::Replace,
                buddies: BuddyList::from_wire(&BUDDIES_WIRE).unwrap_or_default(),
            }),
        ),
        (
            "consent_update",
            Message::ConsentUpdate(ConsentUpdate {
                txid: 13,
                owner: TARGET,
                scope: ConsentScope::Watcher(WATCHER),
                consent: Consent::Withdraw,
            }),
        ),
        (
            "ack",
            Message::Ack(Ack {
                txid: 13,
                status: AckStatus::Ok,
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_valid_and_cover_every_type() {
        let samples = one_of_each();
        let mut types: Vec<u8> = samples
            .iter()
            .map(|(_, m)| m.message_type() as u8)
            .collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types, (1..=10).collect::<Vec<u8>>());
        let Some(Message::BuddyUpdate(b)) = samples
            .iter()
            .map(|(_, m)| *m)
            .find(|m| matches!(m, Message::BuddyUpdate(_)))
        else {
            panic!("buddy update expected")
        };
        assert_eq!(b.buddies.len(), 3, "static buddy bytes are valid");
        // The MAC-form samples verify under the samples' keys.
        for (name, message) in &samples {
            let subject = match message {
                Message::ClientRequest(c) => c.watcher,
                Message::Publish(p) => p.subscriber,
                _ => continue,
            };
            let key = DeviceKey::derive(subject, SECRET);
            assert_eq!(
                message.version() == Some(2),
                key.verifies(message),
                "{name}"
            );
        }
    }
}
