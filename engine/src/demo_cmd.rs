//! `presence-gw demo`: the embedded default, two networks in one process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_border::BgCounters;
use presence_engine::config::ApplianceConfig;
use presence_engine::demo::{self, DeviceClient};
use presence_engine::runtime::{Appliance, StartOptions, TraceSink};

const A: &str = "o2.gb";
const B: &str = "t-mobile.de";

pub(crate) fn run(
    table: &Path,
    seconds: u64,
    subscribers: usize,
    workers: usize,
    dir: Option<PathBuf>,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    if !table.exists() {
        return Err(format!(
            "{} not found: run from the repository root, or pass --table",
            table.display()
        )
        .into());
    }
    let root = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("presence-gw-demo-{}", std::process::id()))
    });
    writeln!(
        out,
        "presence-gw demo: networks {A} (A) and {B} (B) on loopback, {subscribers} subscribers each, {workers} worker(s) each"
    )?;
    writeln!(
        out,
        "generated certificates, configuration and provisioning in {}",
        root.display()
    )?;
    out.flush()?;
    let (a, b) = demo::write_two_networks(&root, table, A, B, subscribers, subscribers)?;
    let (watcher, watcher_secret) = a.subscribers[0].clone();
    let (target, _) = b.subscribers[0].clone();

    // Workers hand trace lines to this thread, which prints them as they
    // come (a worker never blocks on the terminal).
    let tracing_on = Arc::new(AtomicBool::new(true));
    let (trace_tx, trace_rx) = crossbeam::channel::bounded::<(u8, String)>(256);
    let sink: TraceSink = {
        let on = tracing_on.clone();
        Arc::new(move |step, text| {
            if on.load(Ordering::Relaxed) {
                let _ = trace_tx.try_send((step, text));
            }
        })
    };
    let options = StartOptions {
        trace: Some(watcher),
        trace_sink: Some(sink),
    };
    let b_config = demo::write_config(&b, &a, table, workers, None, true)?;
    let mut b_app = Appliance::start(ApplianceConfig::load(&b_config)?, options.clone())?;
    let a_config = demo::write_config(&a, &b, table, workers, Some(b_app.border_addr()), true)?;
    let a_app = Appliance::start(ApplianceConfig::load(&a_config)?, options)?;
    // Now B knows where A listens: both sides dial (one link per worker each way).
    demo::write_config(&b, &a, table, workers, Some(a_app.border_addr()), true)?;
    b_app.reload()?;
    let up = |app: &Appliance| app.border_counters().links_up.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (up(&a_app) < 1 || up(&b_app) < 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    writeln!(
        out,
        "border gateways: mutual TLS 1.3 up ({} links at A, {} at B); A's metrics at http://{}/metrics",
        up(&a_app),
        up(&b_app),
        a_app.metrics_addr().map_or_else(|| "-".into(), |m| m.to_string())
    )?;

    // B's devices publish: every other subscriber is attached.
    let mut b_devices = DeviceClient::new(b_app.client_addr())?;
    let attached: Vec<_> = b.subscribers.iter().step_by(2).cloned().collect();
    b_devices.publish_attached(&attached)?;
    std::thread::sleep(Duration::from_millis(200));

    writeln!(out)?;
    writeln!(out, "One query through the thirteen steps: A = {watcher} ({A}) asks whether B = {target} ({B}) is attached")?;
    out.flush()?;
    let mut a_device = DeviceClient::new(a_app.client_addr())?;
    let started = Instant::now();
    a_device.query(&[(watcher, watcher_secret.as_str(), target)])?;
    let mut answers = Vec::new();
    while answers.is_empty() && started.elapsed() < Duration::from_secs(3) {
        answers = a_device.answers(1, Duration::from_millis(5));
        while let Ok((step, text)) = trace_rx.try_recv() {
            writeln!(out, "  step {step:>2}: {text}")?;
            out.flush()?;
        }
    }
    tracing_on.store(false, Ordering::Relaxed);
    match answers.first() {
        Some(answer) => writeln!(
            out,
            "  A's device got: {:?} after {} µs (steps 2-3 at A's WA, 5 at A's OGPS, 8 at B's HSS, 10 at B's presence server happen inside the steps shown)",
            answer.outcome,
            started.elapsed().as_micros()
        )?,
        None => writeln!(out, "  no answer within 3 s")?,
    }

    writeln!(out)?;
    writeln!(
        out,
        "Load: {seconds} s of queries from A's subscribers about B's (each asked by a buddy)"
    )?;
    out.flush()?;
    let summary = demo::run_load(
        a_app.client_addr(),
        &a.subscribers,
        &b.subscribers,
        Duration::from_secs(seconds),
        8192,
    )?;
    let secs = summary.elapsed.as_secs_f64().max(1e-9);
    writeln!(
        out,
        "  sent {}  answered {}  ({:.0} answers/s)",
        summary.sent,
        summary.answered,
        summary.answered as f64 / secs
    )?;
    let mut outcomes: Vec<_> = summary.outcomes.iter().collect();
    outcomes.sort();
    for (name, n) in outcomes {
        writeln!(out, "  {name:<14} {n}")?;
    }
    let q = |p: f64| summary.latency.value_at_quantile(p);
    writeln!(
        out,
        "  latency at the device (µs): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        summary.latency.max()
    )?;
    std::thread::sleep(Duration::from_millis(250));
    let b_report = b_app.report();
    writeln!(
        out,
        "  B raised {} charge records against {A} (in {}); A's border sent {} frames, B's received {}",
        b_report.charged,
        b.dir.join("cdr").display(),
        BgCounters::get(&a_app.border_counters().frames_out),
        BgCounters::get(&b_app.border_counters().frames_in),
    )?;
    out.flush()?;
    a_app.stop();
    b_app.stop();
    writeln!(out, "stopped cleanly")?;
    Ok(())
}
