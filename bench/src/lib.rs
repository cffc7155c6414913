//! presence-bench: the `presence-load` harness ([`load`]) and shared inputs
//! for the criterion benchmarks in `benches/`.
//!
//! Inputs are deterministic (a fixed xorshift seed) so runs compare.

pub mod bg_pair;
pub mod load;

use presence_codec::{Answer, Message, Msisdn, Outcome, Query, Reachability, MSISDN_MAX};

/// A deterministic xorshift64 stream; good enough to spread benchmark inputs.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A stream from a non-zero seed.
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A random valid MSISDN of 8 to 15 digits.
    pub fn msisdn(&mut self) -> Msisdn {
        let value = 10_000_000 + self.next_u64() % (MSISDN_MAX - 10_000_000);
        Msisdn::from_u64(value).unwrap_or(Msisdn::MAX)
    }
}

/// `n` queries with random MSISDNs and ids.
pub fn sample_queries(n: usize) -> Vec<Message<'static>> {
    let mut rng = XorShift::new(0x5eed);
    (0..n)
        .map(|i| {
            Message::Query(Query {
                txid: rng.next_u64(),
                watcher: rng.msisdn(),
                target: rng.msisdn(),
                hop_limit: 8,
                budget_ms: 1500,
                reply_node: (i % 4) as u16,
                route_version: 1,
            })
        })
        .collect()
}

/// `n` answers with random MSISDNs and ids, most attached.
pub fn sample_answers(n: usize) -> Vec<Message<'static>> {
    let mut rng = XorShift::new(0xa115);
    (0..n)
        .map(|i| {
            let outcome = match i % 4 {
                0 => Outcome::NotAvailable,
                1 => Outcome::Detached {
                    confirmed_age_s: 30,
                },
                _ => Outcome::Attached {
                    reach: Reachability::PACKET_DATA_AND_SMS,
                    confirmed_age_s: 5,
                },
            };
            Message::Answer(Answer {
                txid: rng.next_u64(),
                reply_node: (i % 4) as u16,
                target: rng.msisdn(),
                outcome,
            })
        })
        .collect()
}

/// One row of the shared numbering table.
#[derive(Debug, Clone)]
pub struct TableRow {
    /// Prefix digits.
    pub prefix: String,
    /// Network name.
    pub network: String,
    /// Country calling code.
    pub country_code: String,
}

/// The shared numbering table shipped in `data/`.
pub fn shared_table_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv")
}

/// Rows of the shared numbering table.
pub fn shared_rows() -> Vec<TableRow> {
    let text = std::fs::read_to_string(shared_table_path()).expect("data/msisdn-prefixes.csv");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split(',');
            Some(TableRow {
                prefix: f.next()?.to_owned(),
                network: f.next()?.to_owned(),
                country_code: f.next()?.to_owned(),
            })
        })
        .collect()
}

/// `n` MSISDNs spread uniformly over the table's countries: a random country,
/// then a random prefix of that country, extended with random digits to 11
/// to 13 digits in all.
pub fn random_msisdns(rows: &[TableRow], n: usize, seed: u64) -> Vec<Msisdn> {
    let mut by_country: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for row in rows {
        by_country
            .entry(row.country_code.as_str())
            .or_default()
            .push(row.prefix.as_str());
    }
    let countries: Vec<&Vec<&str>> = by_country.values().collect();
    let mut rng = XorShift::new(seed);
    (0..n)
        .map(|_| {
            let prefixes = countries[(rng.next_u64() % countries.len() as u64) as usize];
            let prefix = prefixes[(rng.next_u64() % prefixes.len() as u64) as usize];
            let len = (11 + (rng.next_u64() % 3) as usize)
                .max(prefix.len() + 1)
                .min(15);
            let mut digits = prefix.to_owned();
            while digits.len() < len {
                digits.push(char::from(b'0' + (rng.next_u64() % 10) as u8));
            }
            digits.parse().expect("valid digits")
        })
        .collect()
}
