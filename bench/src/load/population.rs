//! Who the harness speaks for: network A's subscribers (the watchers) and
//! network B's (the targets), read from the provisioning files the
//! appliances load, so every request the harness makes is one an operator's
//! devices could make.

use std::collections::HashMap;
use std::path::Path;

use presence_codec::Msisdn;
use presence_engine::config::{load_subscribers, ConfigError};

/// One network's subscribers, in MSISDN order, with their buddy lists as
/// positions in the watching network's list (buddies the watching network
/// does not provision are left out: the harness cannot speak for them).
#[derive(Debug)]
pub struct NetworkPopulation {
    /// The network's name.
    pub name: String,
    msisdns: Vec<Msisdn>,
    credentials: Vec<Box<str>>,
    buddy_starts: Vec<u32>,
    buddies: Vec<u32>,
}

impl NetworkPopulation {
    /// Subscribers.
    pub fn len(&self) -> usize {
        self.msisdns.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.msisdns.is_empty()
    }

    /// Subscriber `i`'s number.
    pub fn msisdn(&self, i: usize) -> Msisdn {
        self.msisdns.get(i).copied().unwrap_or(Msisdn::MAX)
    }

    /// Subscriber `i`'s credential.
    pub fn credential(&self, i: usize) -> &str {
        self.credentials.get(i).map_or("", |c| c)
    }

    /// Subscriber `i`'s buddies, as positions among the watchers.
    pub fn buddies(&self, i: usize) -> &[u32] {
        let (Some(&from), Some(&to)) = (self.buddy_starts.get(i), self.buddy_starts.get(i + 1))
        else {
            return &[];
        };
        self.buddies.get(from as usize..to as usize).unwrap_or(&[])
    }
}

/// Why a population could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PopulationError {
    /// The provisioning file.
    #[error("{0}")]
    File(#[from] ConfigError),
    /// Nothing to send.
    #[error("{network}: {reason}")]
    Unusable {
        /// Which network.
        network: String,
        /// What is missing.
        reason: String,
    },
    /// More than the harness indexes (positions are 32-bit).
    #[error("{network}: more than 2^32 subscribers or buddy entries")]
    TooLarge {
        /// Which network.
        network: String,
    },
}

/// Both networks, as the harness sees them.
#[derive(Debug)]
pub struct Population {
    /// Network A: watchers (their devices send the queries).
    pub a: NetworkPopulation,
    /// Network B: targets (their devices publish).
    pub b: NetworkPopulation,
}

impl Population {
    /// Reads A's and B's subscriber files (`msisdn,credential,credit,consent,buddies`).
    pub fn load(
        a_name: &str,
        a_subscribers: &Path,
        b_name: &str,
        b_subscribers: &Path,
    ) -> Result<Population, PopulationError> {
        let a_rows = sorted(load_subscribers(a_subscribers)?);
        let b_rows = sorted(load_subscribers(b_subscribers)?);
        let a_index: HashMap<Msisdn, u32> = a_rows
            .iter()
            .enumerate()
            .filter_map(|(i, (m, _))| Some((*m, u32::try_from(i).ok()?)))
            .collect();
        let a = build(a_name, &a_rows, &a_index)?;
        let b = build(b_name, &b_rows, &a_index)?;
        for network in [&a, &b] {
            if network.is_empty() {
                return Err(PopulationError::Unusable {
                    network: network.name.clone(),
                    reason: "no subscribers provisioned".into(),
                });
            }
        }
        Ok(Population { a, b })
    }
}

type Rows = Vec<(Msisdn, presence_engine::config::Provisioned)>;

fn sorted(map: presence_engine::config::Subscribers) -> Rows {
    let mut rows: Rows = map.into_iter().collect();
    rows.sort_unstable_by_key(|(m, _)| *m);
    rows
}

fn build(
    name: &str,
    rows: &Rows,
    watchers: &HashMap<Msisdn, u32>,
) -> Result<NetworkPopulation, PopulationError> {
    let too_large = || PopulationError::TooLarge {
        network: name.to_string(),
    };
    let mut population = NetworkPopulation {
        name: name.to_string(),
        msisdns: Vec::with_capacity(rows.len()),
        credentials: Vec::with_capacity(rows.len()),
        buddy_starts: Vec::with_capacity(rows.len() + 1),
        buddies: Vec::new(),
    };
    population.buddy_starts.push(0);
    for (msisdn, row) in rows {
        population.msisdns.push(*msisdn);
        population
            .credentials
            .push(String::from_utf8_lossy(&row.credential).into());
        population
            .buddies
            .extend(row.buddies.iter().filter_map(|b| watchers.get(b)));
        population
            .buddy_starts
            .push(u32::try_from(population.buddies.len()).map_err(|_| too_large())?);
    }
    Ok(population)
}
