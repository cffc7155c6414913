//! `presence-gw demo`: the embedded default, two networks in one process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_border::BgCounters;
use presence_codec::{ClientOperation, PresenceState, Reachability};
use presence_engine::lab::{self, DeviceClient, DeviceMessage};
use presence_engine::runtime::{Appliance, StartOptions, TraceSink};

const A: &str = "o2.gb";
const B: &str = "t-mobile.de";

pub(crate) fn run(
    table: &Path,
    seconds: u64,
    subscribers: usize,
    workers: usize,
    dir: Option<PathBuf>,
    poll_mode: bool,
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
    let (a, b) = lab::write_two_networks(&root, table, A, B, subscribers, subscribers)?;
    let (watcher, watcher_secret) = a.subscribers[0].clone();
    let (target, _) = b.subscribers[0].clone();
    // (A is on B's list: the lab lists A's first subscribers on B's first.)

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
    let lab::TwoAppliances { a: a_app, b: b_app } = lab::start_two_appliances(
        &a.folder(),
        &b.folder(),
        table,
        lab::TwoNetworkSettings {
            workers,
            poll_mode,
            window_slots: 1 << 20,
            metrics: true,
            steering: true,
            pin_workers: false,
            io_backend: presence_engine::config::IoBackend::Auto,
        },
        options,
    )?;
    let up = |app: &Appliance| app.border_counters().links_up.load(Ordering::Relaxed);
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
            "  A's device got: {:?} after {} µs",
            answer.outcome,
            started.elapsed().as_micros()
        )?,
        None => writeln!(out, "  no answer within 3 s")?,
    }

    watch(&mut a_device, &mut b_devices, &a, &b, out)?;

    // Unloaded round trips, one query at a time, and idle CPU.
    let mut single = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..500 {
        let j = i % b.subscribers.len();
        let (w, secret) = &a.subscribers[(j * 7) % a.subscribers.len()];
        let at = Instant::now();
        a_device.query(&[(*w, secret.as_str(), b.subscribers[j].0)])?;
        if !a_device.answers(1, Duration::from_secs(2)).is_empty() {
            single.record(
                u64::try_from(at.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )?;
        }
    }
    let cpu_before = process_cpu_us();
    let idle_from = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let idle_cpu =
        (process_cpu_us() - cpu_before) as f64 / idle_from.elapsed().as_micros().max(1) as f64;
    writeln!(out)?;
    writeln!(
        out,
        "Mode: {} — unloaded round trip through both appliances (500 queries one at a time): p50 {} µs, p99 {} µs; idle CPU {:.0}% of one core",
        if poll_mode { "poll (workers spin)" } else { "sleep (workers wait in epoll)" },
        single.value_at_quantile(0.5),
        single.value_at_quantile(0.99),
        idle_cpu * 100.0
    )?;

    writeln!(out)?;
    writeln!(
        out,
        "Load: {seconds} s of queries from A's subscribers about B's (each asked by a buddy)"
    )?;
    out.flush()?;
    let summary = lab::run_load(
        a_app.client_addr(),
        u16::try_from(workers).unwrap_or(1),
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
        "  B raised {} charge records against {A} (journal in {}; `presence-gw cdr dump` prints it); A's border sent {} frames, B's received {}",
        b_report.node.charged,
        b.dir.join("cdr").display(),
        BgCounters::get(&a_app.border_counters().frames_out),
        BgCounters::get(&b_app.border_counters().frames_in),
    )?;
    out.flush()?;
    let a_report = a_app.report();
    writeln!(
        out,
        "  hand-offs between workers: {} at A, {} at B (each subscriber's traffic is steered to the worker that owns it)",
        a_report.cross_worker(),
        b_report.cross_worker()
    )?;
    a_app.stop();
    b_app.stop();
    writeln!(out, "stopped cleanly")?;
    Ok(())
}

/// CPU time this process has used (user + system), µs.
fn process_cpu_us() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Watching across the networks: A subscribes to B's status, B's device
/// publishes two changes (more than the one-second interval apart, so
/// neither is coalesced), A's device gets a notification of each; then A
/// stops watching.
fn watch(
    a_device: &mut DeviceClient,
    b_devices: &mut DeviceClient,
    a: &lab::DemoNetwork,
    b: &lab::DemoNetwork,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let (watcher, watcher_secret) = a.subscribers[0].clone();
    let (target, target_secret) = b.subscribers[0].clone();
    writeln!(out)?;
    writeln!(
        out,
        "Watching: A subscribes to B's status for 60 s; B's device publishes two changes"
    )?;
    let expiry_s = std::num::NonZeroU32::new(60).ok_or("expiry")?;
    let id = a_device.ask(
        watcher,
        &watcher_secret,
        target,
        ClientOperation::Subscribe { expiry_s },
    )?;
    for received in a_device.receive(1, Duration::from_secs(3)) {
        if let DeviceMessage::Answer(answer) = received {
            writeln!(
                out,
                "  A's device got the subscription's answer (request {id}): {:?} (B charged it to {A})",
                answer.outcome
            )?;
        }
    }
    for state in [
        PresenceState::Detached,
        PresenceState::Attached(Reachability::PACKET_DATA_AND_SMS),
    ] {
        std::thread::sleep(Duration::from_millis(1_100));
        b_devices.publish(target, &target_secret, state)?;
        let got = a_device.receive(1, Duration::from_secs(3));
        match got.first() {
            Some(DeviceMessage::Notify(n)) => writeln!(
                out,
                "  A's device got notification {} of request {}: {:?} ({} s left)",
                n.seq, n.txid, n.outcome, n.remaining_s
            )?,
            _ => writeln!(out, "  no notification within 3 s")?,
        }
        out.flush()?;
    }
    let stop = a_device.ask(
        watcher,
        &watcher_secret,
        target,
        ClientOperation::Unsubscribe,
    )?;
    let stopped = a_device
        .receive(1, Duration::from_secs(3))
        .into_iter()
        .any(|m| matches!(m, DeviceMessage::Answer(a) if a.txid == stop));
    writeln!(
        out,
        "  A unsubscribed{}",
        if stopped {
            ""
        } else {
            " (no answer within 3 s)"
        }
    )?;
    Ok(())
}
