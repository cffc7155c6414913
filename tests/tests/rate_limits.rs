//! Rate limits and retry-after between networks (issue 8, promise 3): B's
//! IGPS holds each peer network to its configured rate with a token bucket
//! and tells it when to retry; A's OGPS honours that retry-after for all of
//! A's queries to B. Roles only, on the shared numbering table.

use std::path::Path;
use std::sync::Arc;

use presence_codec::{Message, Msisdn, Outcome, Query};
use presence_engine::roles::{Addr, Hss, Igps, Ogps, Outbox, PsId, Rate};
use presence_engine::table::{NetworkId, NumberingTable, Prefix};

fn world() -> Arc<NumberingTable> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv");
    Arc::new(NumberingTable::load(&path, None).unwrap())
}

fn m(text: &str) -> Msisdn {
    text.parse().unwrap()
}

fn query(txid: u64, watcher: Msisdn, target: Msisdn) -> Message<'static> {
    Message::Query(Query {
        txid,
        watcher,
        target,
        hop_limit: 7,
        budget_ms: 1500,
        reply_node: 0,
        route_version: 1,
    })
}

fn outcomes(out: &mut Outbox) -> Vec<(Addr, Option<Outcome>)> {
    out.transmits
        .drain(..)
        .map(|t| match t.message {
            Message::Answer(a) => (t.to, Some(a.outcome)),
            _ => (t.to, None),
        })
        .collect()
}

#[test]
fn a_flooding_peer_is_held_to_its_rate_and_another_peer_is_untouched() {
    let world = world();
    let names = world.snapshot().names().clone();
    let id = |n: &str| -> NetworkId { names.id(n).unwrap() };
    let (b, flooder, innocent) = (id("t-mobile.de"), id("o2.gb"), id("vodafone.de"));
    let hss = Arc::new(Hss::new(&[(Prefix::parse("49151").unwrap(), PsId(1))]));
    let mut igps = Igps::new(b, &hss, &world);
    let rate = Rate {
        per_second: 1000,
        burst: 10,
    };
    igps.set_peer_limits(None, &[(flooder, rate), (innocent, rate)]);
    let target = m("4915112345678");
    let (o2_watcher, vodafone_watcher) = (m("447700900123"), m("4917212345678"));
    assert_eq!(world.snapshot().lookup(vodafone_watcher), Some(innocent));
    let mut out = Outbox::default();
    let (mut flood_forwarded, mut innocent_forwarded) = (0, 0);
    // One second: the flooder offers 10,000, the innocent peer 500.
    for i in 0..10_000u64 {
        let now = 1_000 + i / 10;
        let from = |network| Addr::Border { network };
        igps.handle(
            now,
            from(flooder),
            flooder,
            &query(i, o2_watcher, target),
            &mut out,
        );
        for (to, outcome) in outcomes(&mut out) {
            match outcome {
                None => flood_forwarded += 1,
                Some(Outcome::Overloaded { retry_after_ms }) => {
                    assert_eq!(
                        to,
                        Addr::BorderReply {
                            network: flooder,
                            reply_node: 0
                        }
                    );
                    assert!((1..=2).contains(&retry_after_ms), "{retry_after_ms}");
                }
                other => panic!("{other:?}"),
            }
        }
        if i % 20 == 0 {
            igps.handle(
                now,
                from(innocent),
                innocent,
                &query(i, vodafone_watcher, target),
                &mut out,
            );
            innocent_forwarded += outcomes(&mut out)
                .iter()
                .filter(|(_, o)| o.is_none())
                .count();
        }
    }
    assert!(
        (1000..=1010).contains(&flood_forwarded),
        "{flood_forwarded}"
    );
    assert_eq!(innocent_forwarded, 500, "the innocent peer loses nothing");
    assert_eq!(igps.counters().throttled, 10_000 - flood_forwarded as u64);
}

#[test]
fn the_ogps_honours_a_peers_retry_after_for_every_query_to_it() {
    let world = world();
    let names = world.snapshot().names().clone();
    let (a, b) = (names.id("o2.gb").unwrap(), names.id("t-mobile.de").unwrap());
    let mut ogps = Ogps::new(a, &world, [b]);
    let (watcher, target) = (m("447700900123"), m("4915112345678"));
    let mut out = Outbox::default();
    ogps.handle(1_000, Addr::Wa(0), &query(1, watcher, target), &mut out);
    assert!(matches!(
        outcomes(&mut out)[..],
        [(Addr::Border { .. }, None)]
    ));
    // B answered some query Overloaded, retry after 250 ms.
    ogps.hold_off(1_000, b, 250);
    ogps.handle(1_100, Addr::Wa(0), &query(2, watcher, target), &mut out);
    assert_eq!(
        outcomes(&mut out),
        vec![(
            Addr::Wa(0),
            Some(Outcome::Overloaded {
                retry_after_ms: 150
            })
        )],
        "answered here with what is left of the wait, nothing sent to B"
    );
    ogps.handle(1_250, Addr::Wa(0), &query(3, watcher, target), &mut out);
    assert!(matches!(
        outcomes(&mut out)[..],
        [(Addr::Border { .. }, None)]
    ));
    assert_eq!(ogps.counters().held_off, 1);
}
