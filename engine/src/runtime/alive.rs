//! The appliance's "alive until" stamp: how the device-request replay floor
//! survives a restart (docs/reliability.md §4b, docs/wire-format.md
//! §5.11).
//!
//! The WA's replay windows live in memory. A device request captured
//! before a restart must not be taken after it, so after a restart every
//! counter below a floor is refused: the last moment the previous life
//! could have taken a request, plus the most a device's clock may run
//! ahead. That moment is kept in `.alive` in the charge-record folder: the
//! Unix time in milliseconds, eight bytes little-endian (then, eight more,
//! the second the WA's transaction counter has reached: see
//! [`wa_boot_time_s`]), rewritten every
//! [`STAMP_EVERY`] while the appliance runs (a process killed with -9
//! leaves a stamp at most that old; the page cache keeps it across a
//! process's death, and a machine's reboot takes longer than the floor
//! lasts). With no stamp (a first start) there is nothing to replay and
//! no floor; after a restart that took longer than the floor, none is
//! felt either. Only a restart faster than that holds new requests back,
//! answered `Overloaded` with the time to retry.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the stamp is rewritten.
pub(crate) const STAMP_EVERY: Duration = Duration::from_millis(500);

/// How often housekeeping (the charge records' retention) runs.
pub(crate) const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// The stamp's file name in the charge-record folder.
const STAMP_FILE: &str = ".alive";

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The latest moment the previous life could have taken a request (Unix
/// ms): its last stamp plus one stamp interval; 0 with no readable stamp
/// (a first start).
pub(crate) fn last_alive(dir: &Path) -> u64 {
    let mut bytes = [0u8; 8];
    let read = File::open(dir.join(STAMP_FILE)).and_then(|f| f.read_exact_at(&mut bytes, 0));
    match read {
        Ok(()) => u64::from_le_bytes(bytes).saturating_add(STAMP_EVERY.as_millis() as u64),
        Err(_) => 0,
    }
}

/// The second the previous life's WA counter had reached (its start
/// second plus its running time), from the stamp; 0 if none was kept.
pub(crate) fn last_wa_second(dir: &Path) -> u64 {
    let mut bytes = [0u8; 8];
    let read = File::open(dir.join(STAMP_FILE)).and_then(|f| f.read_exact_at(&mut bytes, 8));
    read.map_or(0, |()| u64::from_le_bytes(bytes))
}

/// The second the WA's transaction counter starts from (its ids are
/// `start second × 2^22 + n`): now, but never at or before the second the
/// previous life's counter had reached (`last_wa_second`, its own start
/// second plus its running time: so even a life that itself started from
/// a raised second is passed) nor its last wall-clock second. So ids never
/// step back across a restart, even when the clock did (stepped-back ids
/// would fall behind the presence servers' marks for their stream, and
/// the queries be taken for stale duplicates).
pub(crate) fn wa_boot_time_s(now_unix_ms: u64, last_alive: u64, last_wa_second: u64) -> u64 {
    let mut start = now_unix_ms / 1000;
    if last_alive != 0 {
        start = start.max(last_alive / 1000 + 1);
    }
    if last_wa_second != 0 {
        start = start.max(last_wa_second.saturating_add(1));
    }
    start
}

/// The replay floor for this start: [`last_alive`] plus `clock_ahead_ms`;
/// 0 on a first start.
pub(crate) fn replay_floor(last_alive: u64, clock_ahead_ms: u64) -> u64 {
    if last_alive == 0 {
        return 0;
    }
    last_alive.saturating_add(clock_ahead_ms)
}

/// Rewrites the stamp until stopped.
#[derive(Debug)]
pub(crate) struct AliveStamp {
    ticker: Periodic,
}

impl AliveStamp {
    /// Writes the stamp now, then every [`STAMP_EVERY`] on its own thread,
    /// and once more when stopped; `wa_boot_s` is the second this life's
    /// WA counter started from.
    pub(crate) fn start(dir: &Path, wa_boot_s: u64) -> std::io::Result<AliveStamp> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o640)
            .open(dir.join(STAMP_FILE))?;
        let started = std::time::Instant::now();
        let stamp = move || {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&unix_ms_now().to_le_bytes());
            // Rounded up: the counter may be anywhere in its current second.
            let reached = wa_boot_s.saturating_add(started.elapsed().as_secs() + 1);
            bytes[8..].copy_from_slice(&reached.to_le_bytes());
            bytes
        };
        file.write_all_at(&stamp(), 0)?;
        let ticker = Periodic::spawn("alive-stamp", STAMP_EVERY, Tick::AfterEach, move || {
            if let Err(e) = file.write_all_at(&stamp(), 0) {
                tracing::warn!(error = %e, "cannot write the alive stamp");
            }
        })?;
        Ok(AliveStamp { ticker })
    }

    /// Writes a last stamp and stops.
    pub(crate) fn stop(&mut self) {
        self.ticker.stop();
    }
}

/// Runs `work` at once and then every [`HOUSEKEEPING_EVERY`] on its own
/// thread, until stopped: kept off the stamp's thread, so a slow sweep
/// never delays a stamp.
#[derive(Debug)]
pub(crate) struct Housekeeping {
    ticker: Periodic,
}

impl Housekeeping {
    pub(crate) fn start(work: Box<dyn FnMut() + Send>) -> std::io::Result<Housekeeping> {
        let ticker = Periodic::spawn("housekeeping", HOUSEKEEPING_EVERY, Tick::BeforeEach, work)?;
        Ok(Housekeeping { ticker })
    }

    pub(crate) fn stop(&mut self) {
        self.ticker.stop();
    }
}

/// When a [`Periodic`] thread runs its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tick {
    /// At once, then after each period; not when stopped.
    BeforeEach,
    /// After each period, and once more when stopped.
    AfterEach,
}

/// A thread running some work every period until stopped (stopping wakes
/// it at once); stopped when dropped.
#[derive(Debug)]
struct Periodic {
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Periodic {
    fn spawn(
        name: &str,
        every: Duration,
        tick: Tick,
        mut work: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Periodic> {
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if tick == Tick::BeforeEach {
                    work();
                }
                while !stop.load(Ordering::Acquire) {
                    let until = std::time::Instant::now() + every;
                    while !stop.load(Ordering::Acquire) {
                        let now = std::time::Instant::now();
                        if now >= until {
                            break;
                        }
                        std::thread::park_timeout(until - now);
                    }
                    if tick == Tick::AfterEach || !stop.load(Ordering::Acquire) {
                        work();
                    }
                }
            })?;
        Ok(Periodic {
            stopping,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wa_counter_never_starts_at_or_before_the_last_lifes_last_second() {
        assert_eq!(wa_boot_time_s(1_700_000_123_456, 0, 0), 1_700_000_123);
        assert_eq!(
            wa_boot_time_s(1_700_000_123_456, 1_700_000_100_000, 1_700_000_101),
            1_700_000_123
        );
        // The clock stepped back a minute across the restart.
        assert_eq!(
            wa_boot_time_s(1_700_000_063_000, 1_700_000_123_999, 1_700_000_124),
            1_700_000_125
        );
        // The previous life itself started from a raised second (the clock
        // had stepped back before it) and ran 10 s: its counter reached a
        // second well past its wall clock.
        assert_eq!(
            wa_boot_time_s(1_700_000_075_000, 1_700_000_070_000, 1_700_000_135),
            1_700_000_136
        );
        // And the stamp keeps what this life reached.
        let dir = std::env::temp_dir().join(format!("alive-wa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut stamp = AliveStamp::start(&dir, 1_900_000_000).unwrap();
        stamp.stop();
        assert_eq!(last_wa_second(&dir), 1_900_000_001);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_stamp_no_floor_and_a_stamp_gives_its_time_plus_margins() {
        let dir = std::env::temp_dir().join(format!("alive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join(STAMP_FILE));
        assert_eq!(replay_floor(last_alive(&dir), 2_000), 0, "a first start");
        let before = unix_ms_now();
        let mut stamp = AliveStamp::start(&dir, 0).unwrap();
        stamp.stop();
        let floor = replay_floor(last_alive(&dir), 2_000);
        assert!(
            floor >= before + 2_500 && floor <= unix_ms_now() + 2_500,
            "{floor}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
