//! Refusal log lines, rate-limited: a flood of junk connections (11,500 a
//! second were measured) must not turn into as many log lines. At most one
//! line per reason per second; the next line of a reason says how many of
//! its refusals were left out since the last (`suppressed`). The counters
//! (`presence_bg_refused_total{reason}`) still count every one.
//!
//! The table has one entry per reason name, a fixed set of static names,
//! so it stays bounded; it is touched only on refusals, never on a
//! link's traffic.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One line per reason per this long.
const EVERY: Duration = Duration::from_secs(1);

/// When each reason last got a line, and how many were left out since.
fn table() -> &'static Mutex<HashMap<&'static str, (Instant, u64)>> {
    static TABLE: OnceLock<Mutex<HashMap<&'static str, (Instant, u64)>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Whether a line for `reason` is written now: `Some(left out since the
/// last line)`, or `None` (this one is left out, and counted).
pub(super) fn admit(reason: &'static str) -> Option<u64> {
    admit_at(reason, Instant::now())
}

fn admit_at(reason: &'static str, now: Instant) -> Option<u64> {
    let Ok(mut table) = table().lock() else {
        // A panic while holding the lock: log rather than lose the line.
        return Some(0);
    };
    match table.get_mut(reason) {
        Some((last, suppressed)) if now.duration_since(*last) < EVERY => {
            *suppressed += 1;
            None
        }
        Some((last, suppressed)) => {
            let left_out = *suppressed;
            *last = now;
            *suppressed = 0;
            Some(left_out)
        }
        None => {
            table.insert(reason, (now, 0));
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_second_and_the_next_says_how_many_were_left_out() {
        let start = Instant::now();
        assert_eq!(admit_at("test_a", start), Some(0));
        for ms in 1..1000 {
            assert_eq!(admit_at("test_a", start + Duration::from_millis(ms)), None);
        }
        assert_eq!(admit_at("test_b", start), Some(0), "reasons apart");
        assert_eq!(admit_at("test_a", start + EVERY), Some(999));
        assert_eq!(admit_at("test_a", start + EVERY * 3), Some(0));
    }
}
