//! `presence-echo`: the load harness's ceiling (an echo with the
//! appliance's sockets, batching and `[io] backend`) as a process of its
//! own, listening where it is told: to measure a backend on a real
//! interface, such as AF_XDP on a veth pair into a network namespace, with
//! `presence-load --ceiling-at ADDR` on the other end.
//!
//! It prints `listening addr=ADDR` once ready, echoes until SIGINT or
//! SIGTERM, then prints one JSON line: datagrams echoed, its CPU time,
//! and the CPU per echoed datagram.
//!
//! `ip netns exec NS target/release/presence-echo --listen 10.1.1.2:7000 --io-backend xdp`

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use presence_bench::load::echo::EchoServer;
use presence_engine::config::IoBackend;
use presence_engine::runtime::xdp::program::AttachMode;
use presence_engine::runtime::xdp::XdpSettings;

#[derive(Parser, Debug)]
#[command(
    name = "presence-echo",
    about = "An echo with the appliance's sockets and IO backends, to measure a backend's ceiling"
)]
struct Cli {
    /// Where to listen (port 0: one the kernel picks).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Echo threads (each its own SO_REUSEPORT socket; with xdp, receive
    /// queue i for thread i).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// auto, mmsg, gro, uring or xdp (as `[io] backend`).
    #[arg(long, value_enum, default_value = "auto")]
    io_backend: IoBackend,
    /// With xdp: attach natively or generically (as `[io] xdp_mode`;
    /// default: native where the driver can).
    #[arg(long, value_parser = ["native", "generic"])]
    xdp_mode: Option<String>,
    /// Send every answer as a message of its own (no UDP GSO runs), as
    /// answers to distinct devices go.
    #[arg(long)]
    no_gso: bool,
}

/// This process's user + system CPU time, µs.
fn cpu_us() -> u64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let us = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    us(usage.ru_utime) + us(usage.ru_stime)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("presence-echo: {e}");
            return ExitCode::FAILURE;
        }
    }
    let settings = XdpSettings {
        interface: None,
        mode: match cli.xdp_mode.as_deref() {
            Some("native") => Some(AttachMode::Native),
            Some("generic") => Some(AttachMode::Generic),
            _ => None,
        },
    };
    let threads = usize::from(cli.threads);
    let mut echo =
        match EchoServer::start_with(cli.listen, threads, cli.io_backend, &settings, !cli.no_gso) {
            Ok(echo) => echo,
            Err(e) => {
                eprintln!("presence-echo: {}: {e}", cli.listen);
                return ExitCode::FAILURE;
            }
        };
    if let Some((interface, mode)) = echo.xdp() {
        eprintln!("presence-echo: XDP program on {interface} ({mode} mode)");
    }
    println!("listening addr={}", echo.addr());
    let cpu_at_start = cpu_us();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let echoed = echo.echoed();
    let xdp = echo.stop_counting();
    drop(echo);
    let cpu = cpu_us().saturating_sub(cpu_at_start);
    println!(
        "{}",
        serde_json::json!({
            "backend": cli.io_backend.name(),
            "echoed": echoed,
            "cpu_us": cpu,
            "xdp_received": xdp.received,
            "xdp_sent": xdp.sent,
            "xdp_dropped": xdp.dropped,
            "cpu_us_per_datagram": if echoed > 0 { (cpu as f64 / echoed as f64 * 1000.0).round() / 1000.0 } else { 0.0 },
        })
    );
    ExitCode::SUCCESS
}
