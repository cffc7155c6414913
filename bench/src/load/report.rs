//! What the harness prints: a progress line a second (stderr), the steps
//! of a search, the final table, one JSON object as the last line of stdout,
//! and optionally the latency percentile distribution as a file.

use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;

use super::driver::{Progress, StepResult};
use super::plan::{CLASSES, OUTCOMES};

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The once-a-second line.
pub fn progress_line(p: &Progress) -> String {
    format!(
        "  {:>5.1} s  offered {}/s  sent {}  answered {} ({}/s)  in flight {}  late {}  shed {}  p99 {} µs  max in the last second {} µs",
        p.elapsed_s,
        thousands(p.rate as u64),
        thousands(p.sent),
        thousands(p.answered),
        thousands(p.answered_last_second),
        thousands(p.sent.saturating_sub(p.answered)),
        thousands(p.late),
        thousands(p.overloaded),
        thousands(p.p99_us),
        thousands(p.max_last_second_us),
    )
}

/// The header of the steps table.
pub fn step_header() -> String {
    format!(
        "{:>12} {:>12} {:>12} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}  {}",
        "offered/s",
        "answered/s",
        "sent",
        "timeouts",
        "shed",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "lag µs",
        "no loss"
    )
}

/// One step as a row of the steps table.
pub fn step_row(r: &StepResult) -> String {
    let q = |p: f64| r.latency.value_at_quantile(p);
    format!(
        "{:>12} {:>12} {:>12} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}  {}",
        thousands(r.rate as u64),
        thousands(r.throughput_qps() as u64),
        thousands(r.sent),
        thousands(r.timeouts()),
        thousands(r.overloaded()),
        q(0.5),
        q(0.99),
        q(0.999),
        r.latency.max(),
        thousands(r.send_lag_max_us),
        if r.clean() { "yes" } else { "no" }
    )
}

/// The final table of one result.
pub fn final_table(
    out: &mut impl Write,
    title: &str,
    r: &StepResult,
    ceiling_qps: Option<f64>,
) -> std::io::Result<()> {
    let q = |p: f64| thousands(r.latency.value_at_quantile(p));
    writeln!(out, "{title}")?;
    writeln!(
        out,
        "  offered      {}/s for {:.1} s",
        thousands(r.rate as u64),
        r.seconds
    )?;
    writeln!(
        out,
        "  throughput   {} answers/s (right answers within the send window)",
        thousands(r.throughput_qps() as u64)
    )?;
    writeln!(
        out,
        "  requests     sent {}  answered {}  timeouts {} (late {}, lost {})  shed {}  wrong {}  duplicates {}  stray {}  send errors {}  not sent {}  stuck datagrams {}",
        thousands(r.sent),
        thousands(r.answered),
        thousands(r.timeouts()),
        thousands(r.late),
        thousands(r.lost),
        thousands(r.overloaded()),
        thousands(r.wrong),
        thousands(r.duplicates),
        thousands(r.stray),
        thousands(r.send_errors),
        thousands(r.not_sent),
        thousands(r.stuck_datagrams),
    )?;
    if r.notifications > 0 {
        writeln!(
            out,
            "  watching     notifications received {}",
            thousands(r.notifications)
        )?;
    }
    writeln!(
        out,
        "  pace         {} unanswered when the send window closed (at most {} to be carried); sender at worst {} µs behind; longest gap with no answer while requests were out {:.1} ms",
        thousands(r.backlog_at_end),
        thousands((r.rate * super::driver::BACKLOG_MAX_S) as u64),
        thousands(r.send_lag_max_us),
        r.max_gap_us as f64 / 1e3
    )?;
    writeln!(
        out,
        "  latency µs   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}   (from each request's intended send time)",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        thousands(r.latency.max())
    )?;
    writeln!(out, "  outcomes")?;
    for class in CLASSES {
        let row = r.outcomes.get(class as usize);
        let cells: Vec<String> = OUTCOMES
            .iter()
            .filter_map(|o| {
                let n = *row?.get(*o as usize)?;
                (n > 0).then(|| format!("{} {}", o.name(), thousands(n)))
            })
            .collect();
        if !cells.is_empty() {
            writeln!(out, "    {:<24} {}", class.name(), cells.join("  "))?;
        }
    }
    if let Some(ceiling) = ceiling_qps {
        writeln!(
            out,
            "  ceiling      {}/s (echo, same sockets and batching, this run): throughput is {:.1}% of it",
            thousands(ceiling as u64),
            100.0 * r.throughput_qps() / ceiling.max(1.0)
        )?;
    }
    Ok(())
}

/// The JSON object summarising `r`.
pub fn json(
    r: &StepResult,
    ceiling_qps: Option<f64>,
    extra: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let q = |p: f64| r.latency.value_at_quantile(p);
    let mut object = serde_json::json!({
        "throughput_qps": r.throughput_qps().round(),
        "offered_qps": r.rate.round(),
        "seconds": r.seconds,
        "sent": r.sent,
        "answered": r.answered,
        "timeouts": r.timeouts(),
        "late": r.late,
        "lost": r.lost,
        "shed": r.overloaded(),
        "wrong": r.wrong,
        "duplicates": r.duplicates,
        "notifications": r.notifications,
        "no_loss": r.clean(),
        "p50_us": q(0.5),
        "p90_us": q(0.9),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": r.latency.max(),
    });
    if let Some(map) = object.as_object_mut() {
        if let Some(ceiling) = ceiling_qps {
            map.insert("ceiling_qps".into(), serde_json::json!(ceiling.round()));
            map.insert(
                "ratio_to_ceiling".into(),
                serde_json::json!((r.throughput_qps() / ceiling.max(1.0) * 1e4).round() / 1e4),
            );
        }
        map.extend(extra);
    }
    object
}

/// Writes the latency distribution in HdrHistogram's percentile format
/// (values in milliseconds), which its plotter reads as is
/// (<https://hdrhistogram.github.io/HdrHistogram/plotFiles.html>).
pub fn write_percentiles(path: &Path, latency: &Histogram<u64>) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in latency.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let quantile = v.quantile_iterated_to();
        let inverse = if quantile < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - quantile))
        } else {
            String::new()
        };
        writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {}",
            v.value_iterated_to() as f64 / 1000.0,
            quantile,
            total,
            inverse
        )?;
    }
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        latency.mean() / 1000.0,
        latency.stdev() / 1000.0
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        latency.max() as f64 / 1000.0,
        latency.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        latency.buckets(),
        latency.distinct_values()
    )?;
    out.flush()
}
