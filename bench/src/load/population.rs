//! Who the harness speaks for: network A's subscribers (the watchers) and
//! network B's (the targets), read from the provisioning files the
//! appliances load, so every request the harness makes is one an operator's
//! devices could make.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use presence_codec::{ClientRequest, DeviceKey, Msisdn, Publish, DEVICE_KEY_LEN};
use presence_engine::config::{load_subscribers, ConfigError};

/// One subscriber as the harness keeps it: number, device key (derived
/// from the provisioned secret, §5.11) and where its buddy run starts, in
/// one 48-byte entry, so drawing a request touches one entry per party
/// (plus the buddy run) instead of a cache line per field.
#[derive(Clone, Copy, Debug)]
struct Entry {
    msisdn: Msisdn,
    buddies_at: u32,
    buddies_len: u16,
    key: [u8; DEVICE_KEY_LEN],
}

/// One network's subscribers, in MSISDN order, with their buddy lists as
/// positions in the watching network's list (buddies the watching network
/// does not provision are left out: the harness cannot speak for them).
#[derive(Debug)]
pub struct NetworkPopulation {
    /// The network's name.
    pub name: String,
    entries: Vec<Entry>,
    buddies: Vec<u32>,
    /// Each subscriber's device's last counter: every request the harness
    /// sends for it carries a new one, as a device's does.
    counters: Vec<AtomicU64>,
}

impl NetworkPopulation {
    /// Subscribers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Subscriber `i`'s number.
    pub fn msisdn(&self, i: usize) -> Msisdn {
        self.entries.get(i).map_or(Msisdn::MAX, |e| e.msisdn)
    }

    /// The next counter of subscriber `i`'s device at `now_unix_ms`: the
    /// clock, or one past the last if the clock has not moved past it.
    fn next_counter(&self, i: usize, now_unix_ms: u64) -> u64 {
        let Some(last) = self.counters.get(i) else {
            return now_unix_ms;
        };
        let previous = last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(now_unix_ms.max(c + 1))
            })
            .unwrap_or(0);
        now_unix_ms.max(previous + 1)
    }

    /// `request`, signed as subscriber `i`'s device signs it at
    /// `now_unix_ms`.
    pub fn sign_request<'a>(
        &self,
        i: usize,
        request: ClientRequest<'a>,
        now_unix_ms: u64,
    ) -> ClientRequest<'a> {
        let key = DeviceKey::from_bytes(self.entries.get(i).map_or([0; 32], |e| e.key));
        key.sign_request(request, self.next_counter(i, now_unix_ms))
    }

    /// `publish`, signed as subscriber `i`'s device signs it at
    /// `now_unix_ms`.
    pub fn sign_publish<'a>(
        &self,
        i: usize,
        publish: Publish<'a>,
        now_unix_ms: u64,
    ) -> Publish<'a> {
        let key = DeviceKey::from_bytes(self.entries.get(i).map_or([0; 32], |e| e.key));
        key.sign_publish(publish, self.next_counter(i, now_unix_ms))
    }

    /// Starts loading subscriber `i`'s entry and counter into the cache
    /// (the first stage of drawing a request ahead: [`super::plan::Workload::prefetch`]).
    pub fn prefetch_entry(&self, i: usize) {
        if let (Some(entry), Some(counter)) = (self.entries.get(i), self.counters.get(i)) {
            presence_engine::table::prefetch(entry);
            presence_engine::table::prefetch(counter);
        }
    }

    /// Starts loading subscriber `i`'s buddy run (reads its entry, which
    /// an earlier [`prefetch_entry`](Self::prefetch_entry) brought in).
    pub fn prefetch_buddies(&self, i: usize) {
        if let Some(first) = self.buddies(i).first() {
            presence_engine::table::prefetch(first);
        }
    }

    /// Subscriber `i`'s buddies, as positions among the watchers.
    pub fn buddies(&self, i: usize) -> &[u32] {
        let Some(e) = self.entries.get(i) else {
            return &[];
        };
        let at = e.buddies_at as usize;
        self.buddies
            .get(at..at + usize::from(e.buddies_len))
            .unwrap_or(&[])
    }
}

/// Asks the kernel to back `v`'s buffer with huge pages: a million
/// subscribers drawn at random miss the TLB on nearly every access with
/// 4 KiB pages. Advice only; nothing changes if the kernel declines.
fn advise_huge_pages<T>(v: &[T]) {
    const HUGE: usize = 2 << 20;
    let start = v.as_ptr() as usize;
    let end = start + std::mem::size_of_val(v);
    let aligned = start.next_multiple_of(HUGE);
    if end <= aligned + HUGE {
        return;
    }
    // SAFETY: madvise only gives advice about pages of our own live
    // allocation (the range lies inside `v`); MADV_HUGEPAGE changes no
    // contents.
    unsafe {
        libc::madvise(
            aligned as *mut libc::c_void,
            (end - aligned) / HUGE * HUGE,
            libc::MADV_HUGEPAGE,
        );
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

    /// Reads `root/<a_name>/subscribers.csv` and `root/<b_name>/subscribers.csv`
    /// (the layout the demo and the harness generate).
    pub fn load_folders(
        root: &Path,
        a_name: &str,
        b_name: &str,
    ) -> Result<Population, PopulationError> {
        let file = |name: &str| root.join(name).join("subscribers.csv");
        Population::load(a_name, &file(a_name), b_name, &file(b_name))
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
    let mut entries: Vec<Entry> = Vec::with_capacity(rows.len());
    let mut buddies: Vec<u32> = Vec::with_capacity(rows.iter().map(|(_, r)| r.buddies.len()).sum());
    // Advised before the first write, so the pages are huge from the start.
    advise_huge_pages(entries.spare_capacity_mut());
    advise_huge_pages(buddies.spare_capacity_mut());
    for (msisdn, row) in rows {
        let at = u32::try_from(buddies.len()).map_err(|_| too_large())?;
        buddies.extend(row.buddies.iter().filter_map(|b| watchers.get(b)));
        entries.push(Entry {
            msisdn: *msisdn,
            buddies_at: at,
            buddies_len: u16::try_from(buddies.len() - at as usize).map_err(|_| too_large())?,
            key: *DeviceKey::derive(*msisdn, &row.credential).as_bytes(),
        });
    }
    let counters = (0..entries.len()).map(|_| AtomicU64::new(0)).collect();
    Ok(NetworkPopulation {
        name: name.to_string(),
        entries,
        buddies,
        counters,
    })
}
