//! `ps-memory`: provisions one presence server with N subscribers of B
//! buddies each (numbers drawn from the shipped numbering table's ranges)
//! and reports the resident memory it takes, from `/proc/self/status`.
//!
//! With `--watches N`, it then keeps N subscriptions (watching) in one
//! server's table and reports the memory each takes.
//!
//! `cargo run --release -p presence-bench --bin ps-memory -- --subscribers 10000000 --buddies 20`

use std::time::Instant;

use clap::Parser;
use presence_bench::{random_msisdns, shared_rows, XorShift};
use presence_codec::Msisdn;
use presence_engine::roles::{
    PresenceServer, PsId, SubscriberRecord, WatchKey, WatchLimits, Watches,
};
use presence_engine::table::NetworkId;

#[derive(Parser, Debug)]
#[command(
    name = "ps-memory",
    about = "Resident memory of one presence server holding N subscribers"
)]
struct Cli {
    /// Subscribers provisioned.
    #[arg(long, default_value_t = 10_000_000)]
    subscribers: usize,
    /// Buddies on each subscriber's list.
    #[arg(long, default_value_t = 20)]
    buddies: usize,
    /// Then also keep this many subscriptions (watching, issue 17) in one
    /// server's table, spread over its subscribers, and report the memory
    /// each takes.
    #[arg(long, default_value_t = 0)]
    watches: usize,
}

/// (VmRSS, VmHWM) in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let cli = Cli::parse();
    let rows = shared_rows();
    // A pool of watcher numbers the buddy lists draw from (a million, like
    // a large peer network), then the subscribers themselves.
    let pool = random_msisdns(&rows, 1_000_000, 0xb0dd);
    let (before, _) = rss_kib();
    let started = Instant::now();
    let mut ps = PresenceServer::new(PsId(0), NetworkId(1), 1700, 1 << 10);
    let mut rng = XorShift::new(0x5eed);
    // Subscribers drawn in slices so the generator's own memory stays
    // small, until exactly N distinct numbers are held.
    let slice = 1_000_000usize;
    let mut round = 0u64;
    while ps.subscriber_count() < cli.subscribers && ps.counters().refused == 0 {
        round += 1;
        let n = slice.min(cli.subscribers - ps.subscriber_count());
        for m in random_msisdns(&rows, n, 0x1000 + round) {
            if ps.subscriber(m).is_some() {
                continue;
            }
            let buddies = (0..cli.buddies)
                .map(|_| pool[(rng.next_u64() % pool.len() as u64) as usize])
                .collect();
            let credential = format!("s{:08x}", rng.next_u64() as u32).into_bytes();
            ps.provision(m, SubscriberRecord::new(m, &credential, buddies));
        }
    }
    let took = started.elapsed();
    if ps.counters().refused > 0 {
        eprintln!(
            "ps-memory: the store refused a subscriber (more buddy entries than it indexes) after {}",
            ps.subscriber_count()
        );
    }
    let (after, peak) = rss_kib();
    let held = ps.subscriber_count();
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "ps-memory: {} subscribers × {} buddies in one presence server, provisioned in {:.1} s",
        held,
        cli.buddies,
        took.as_secs_f64()
    );
    println!(
        "  resident: {:.0} MiB for the server ({:.0} bytes per subscriber); process {:.0} MiB, peak {:.0} MiB",
        mib(after.saturating_sub(before)),
        (after.saturating_sub(before) * 1024) as f64 / held.max(1) as f64,
        mib(after),
        mib(peak)
    );
    println!(
        "{{\"subscribers\":{held},\"buddies\":{},\"server_rss_mib\":{:.0},\"process_rss_mib\":{:.0},\"peak_rss_mib\":{:.0}}}",
        cli.buddies,
        mib(after.saturating_sub(before)),
        mib(after),
        mib(peak)
    );
    if cli.watches > 0 {
        watches_memory(&cli, &ps, &pool, &mut rng);
    }
}

/// Keeps `cli.watches` subscriptions (watchers from `pool`, targets among
/// `ps`'s subscribers) in one table, and reports what they take.
fn watches_memory(cli: &Cli, ps: &PresenceServer, pool: &[Msisdn], rng: &mut XorShift) {
    let targets: Vec<Msisdn> = ps.subscriber_numbers().collect();
    let all = u32::try_from(cli.watches).unwrap_or(u32::MAX);
    let mut watches = Watches::new(WatchLimits {
        per_target: all,
        per_watcher: all,
        per_origin: all,
        total: all,
        ..WatchLimits::default()
    });
    let (before, _) = rss_kib();
    let mut txid = 0u64;
    while watches.len() < cli.watches && !targets.is_empty() {
        txid += 1;
        let key = WatchKey {
            origin: NetworkId(2),
            reply_node: (rng.next_u64() % 8) as u16,
            watcher: pool[(rng.next_u64() % pool.len() as u64) as usize],
            target: targets[(rng.next_u64() % targets.len() as u64) as usize],
        };
        if watches.grant(0, key, txid, 3_600).is_err() {
            break;
        }
    }
    let (after, _) = rss_kib();
    let held = watches.len();
    println!(
        "  watching: {held} subscriptions in one server's table: {:.0} MiB ({:.0} bytes per subscription)",
        (after.saturating_sub(before)) as f64 / 1024.0,
        (after.saturating_sub(before) * 1024) as f64 / held.max(1) as f64
    );
}
