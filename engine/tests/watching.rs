//! Watching across networks with two appliance processes (issue 17;
//! docs/architecture.md, "Watching"): A's device subscribes to B through
//! A's appliance, B's border and B's presence server; B's device
//! publishes; A's device is notified, under its own request id, within
//! 2 s. An unsubscription ends the news; a short subscription expires with
//! a last notification. B's journal holds one charge record per
//! subscription granted, none for the unsubscription.

mod common;
use common::{start_logged, table};

use std::num::NonZeroU32;
use std::time::Duration;

use presence_codec::{ClientOperation, Notify, Outcome, PresenceState, Reachability};
use presence_engine::journal;
use presence_engine::lab::{self, DeviceClient, DeviceMessage, DEMO_BUDDIES};

fn subscribe(expiry_s: u32) -> ClientOperation {
    ClientOperation::Subscribe {
        expiry_s: NonZeroU32::new(expiry_s).unwrap(),
    }
}

fn answer(got: &[DeviceMessage], txid: u64) -> Option<Outcome> {
    got.iter().find_map(|m| match m {
        DeviceMessage::Answer(a) if a.txid == txid => Some(a.outcome),
        _ => None,
    })
}

fn notifies(got: &[DeviceMessage]) -> Vec<Notify> {
    got.iter()
        .filter_map(|m| match m {
            DeviceMessage::Notify(n) => Some(*n),
            _ => None,
        })
        .collect()
}

#[test]
fn a_device_watches_a_subscriber_of_another_network_through_two_appliances() {
    let root = std::env::temp_dir().join(format!("watching-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    // More subscribers than a buddy list holds, so some watcher is on none.
    let n = 2 * DEMO_BUDDIES;
    let (a, b) = lab::write_two_networks(&root, &table(), "o2.gb", "t-mobile.de", n, n).unwrap();
    let b_config = lab::write_config(&b, &a, &table(), 2, None, false).unwrap();
    let mut node_b = start_logged(&b_config, &root.join("b.log"));
    let a_config = lab::write_config(&a, &b, &table(), 2, Some(node_b.border), false).unwrap();
    let mut node_a = start_logged(&a_config, &root.join("a.log"));

    // Target 3 of B lists watcher (3 × 7) mod n of A (the lab's buddies).
    let (target, target_secret) = b.subscribers[3].clone();
    let (watcher, watcher_secret) = a.subscribers[(3 * 7) % n].clone();
    let mut a_device = DeviceClient::new(node_a.client).unwrap();
    let mut b_device = DeviceClient::new(node_b.client).unwrap();

    // The border link may still be coming up: a watcher B does not list
    // asks (NotAvailable, charged to no one) until B answers.
    let (stranger, stranger_secret) = a.subscribers[(3 * 7 + DEMO_BUDDIES) % n].clone();
    let ready = (0..50).any(|_| {
        let probe = a_device
            .ask(stranger, &stranger_secret, target, ClientOperation::Query)
            .unwrap();
        let got = a_device.receive(1, Duration::from_millis(500));
        let up = answer(&got, probe) == Some(Outcome::NotAvailable);
        if !up {
            std::thread::sleep(Duration::from_millis(100));
        }
        up
    });
    assert!(ready, "B answers through the border");

    // Granted: answered with B's status (B's devices have not published:
    // detached).
    let id = a_device
        .ask(watcher, &watcher_secret, target, subscribe(60))
        .unwrap();
    let got = a_device.receive(1, Duration::from_secs(2));
    assert!(
        matches!(answer(&got, id), Some(Outcome::Detached { .. })),
        "{got:?}"
    );

    // B attaches: A's device hears it, under its request id, within 2 s.
    let attached = PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS);
    b_device.publish(target, &target_secret, attached).unwrap();
    let got = notifies(&a_device.receive(1, Duration::from_secs(2)));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].txid, got[0].watcher, got[0].target, got[0].seq),
        (id, watcher, target, 1)
    );
    assert!(matches!(got[0].outcome, Outcome::Attached { .. }));
    assert!((55..=60).contains(&got[0].remaining_s), "{:?}", got[0]);

    // Unsubscribed: NotAvailable, and no news after.
    let stop = a_device
        .ask(
            watcher,
            &watcher_secret,
            target,
            ClientOperation::Unsubscribe,
        )
        .unwrap();
    let got = a_device.receive(1, Duration::from_secs(2));
    assert_eq!(answer(&got, stop), Some(Outcome::NotAvailable), "{got:?}");
    std::thread::sleep(Duration::from_millis(1_100));
    b_device
        .publish(target, &target_secret, PresenceState::Detached)
        .unwrap();
    let late = a_device.receive(1, Duration::from_millis(1_500));
    assert!(notifies(&late).is_empty(), "{late:?}");

    // A two-second subscription ends with a last notification.
    let short = a_device
        .ask(watcher, &watcher_secret, target, subscribe(2))
        .unwrap();
    let got = a_device.receive(1, Duration::from_secs(2));
    assert!(
        matches!(answer(&got, short), Some(Outcome::Detached { .. })),
        "{got:?}"
    );
    let got = notifies(&a_device.receive(1, Duration::from_secs(4)));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].txid, got[0].remaining_s, got[0].outcome),
        (short, 0, Outcome::NotAvailable)
    );

    assert_eq!(node_a.terminate(Duration::from_secs(10)), Some(0));
    assert_eq!(node_b.terminate(Duration::from_secs(10)), Some(0));
    // One charge record per subscription granted (the first, and the
    // short one), none for the unsubscription.
    let mut csv = Vec::new();
    let summary = journal::dump(&b.dir.join("cdr"), false, &mut csv).unwrap();
    assert_eq!(summary.records, 2, "{}", String::from_utf8_lossy(&csv));
    let _ = std::fs::remove_dir_all(&root);
}
