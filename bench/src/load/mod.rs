//! `presence-load`: the load-test harness (see `BENCHMARKS.md` for how it is
//! run and what it measured).
//!
//! - [`population`]: who the requests speak for, read from the networks'
//!   provisioning files;
//! - [`plan`]: the request mix, deterministic per sequence number;
//! - [`driver`]: the open-loop sender and answer collector;
//! - `frames`: the driver's open frames, one per destination and owner;
//! - [`echo`]: the ceiling, the same IO with no presence work;
//! - [`topology`]: the appliances under load (embedded, spawned, external);
//! - [`report`]: progress, tables, JSON and percentile files.

pub mod driver;
pub mod echo;
mod frames;
pub mod plan;
pub mod population;
pub mod report;
pub mod topology;

use std::time::{Duration, Instant};

use driver::{Driver, DriverError, Progress, StepResult, StepSpec};
use plan::{Mix, Workload};

/// How `--max` searches for the highest rate carried without loss.
#[derive(Debug, Clone, Copy)]
pub struct Search {
    /// First rate tried.
    pub start_rate: f64,
    /// Seconds each rate is held.
    pub step_seconds: f64,
    /// Most rates tried.
    pub max_steps: usize,
    /// The search ends when the lowest failing rate is within this factor
    /// of the highest clean one.
    pub resolution: f64,
    /// Pause between steps (answers to the last one drain).
    pub pause: Duration,
}

/// The steps a search ran and which was the best clean one.
#[derive(Debug)]
pub struct SearchResult {
    /// Every step, in order.
    pub steps: Vec<StepResult>,
    /// Index of the clean step with the highest throughput, if any.
    pub best: Option<usize>,
}

impl SearchResult {
    /// The best clean step, else the last step.
    pub fn headline(&self) -> Option<&StepResult> {
        self.best
            .and_then(|i| self.steps.get(i))
            .or(self.steps.last())
    }
}

/// Doubles the rate while steps are clean, then bisects between the highest
/// clean and the lowest failing rate.
pub fn find_max(
    driver: &mut Driver<'_>,
    search: &Search,
    timeout: Duration,
    workload: Workload,
    on_step: &mut dyn FnMut(&StepResult),
    progress: &mut dyn FnMut(&Progress),
) -> Result<SearchResult, DriverError> {
    let mut steps: Vec<StepResult> = Vec::new();
    let (mut good, mut bad): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = search.start_rate.max(1.0);
    for _ in 0..search.max_steps.max(1) {
        let result = match driver.run(
            &StepSpec {
                rate,
                seconds: search.step_seconds,
                timeout,
                workload,
            },
            progress,
        ) {
            Ok(result) => result,
            // A rate too high to track ends the search, keeping its steps.
            Err(DriverError::TooManyRequests(_)) if !steps.is_empty() => break,
            Err(e) => return Err(e),
        };
        if result.clean() {
            good = Some(good.map_or(rate, |g: f64| g.max(rate)));
        } else {
            bad = Some(bad.map_or(rate, |b: f64| b.min(rate)));
        }
        on_step(&result);
        steps.push(result);
        rate = match (good, bad) {
            (_, None) => rate * 2.0,
            (None, Some(b)) => b / 2.0,
            (Some(g), Some(b)) => {
                if b / g <= search.resolution {
                    break;
                }
                (g + b) / 2.0
            }
        };
        if rate < 1.0 {
            break;
        }
        std::thread::sleep(search.pause);
    }
    let best = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.clean())
        .max_by(|(_, x), (_, y)| x.throughput_qps().total_cmp(&y.throughput_qps()))
        .map(|(i, _)| i);
    Ok(SearchResult { steps, best })
}

/// Sends a few permitted queries until they are all answered in time (the
/// border links are up and the provisioning loaded), or `limit` passes;
/// then `Err` holds the last probe's result.
pub fn wait_until_answering(
    driver: &mut Driver<'_>,
    limit: Duration,
) -> Result<Result<(), StepResult>, DriverError> {
    let started = Instant::now();
    loop {
        let probe = driver.run(
            &StepSpec {
                rate: 200.0,
                seconds: 0.05,
                timeout: Duration::from_secs(1),
                workload: Workload::Mix(Mix::default(), 0x9e37),
            },
            &mut |_| {},
        )?;
        if probe.all_answered() {
            return Ok(Ok(()));
        }
        if started.elapsed() >= limit {
            return Ok(Err(probe));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
