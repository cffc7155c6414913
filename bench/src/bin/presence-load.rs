//! `presence-load`: drives presence appliances with an open-loop mix of
//! requests and reports throughput, outcomes and latency; `--ceiling`
//! measures the same sockets and batching against an echo, in the same run.
//! See `BENCHMARKS.md` and `presence-load --help`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use presence_bench::load::driver::{Driver, Responder, StepResult, StepSpec, Targets};
use presence_bench::load::echo::EchoServer;
use presence_bench::load::plan::{Mix, Workload};
use presence_bench::load::population::Population;
use presence_bench::load::report::{self, thousands};
use presence_bench::load::topology::{
    original_cpus, process_cpu_us, with_cpus, ApplianceSettings, Networks, Topology, A_NAME, B_NAME,
};
use presence_bench::load::{find_max, wait_until_answering, Search, SearchResult};
use presence_engine::config::IoBackend;
use presence_engine::lab::TwoNetworkSettings;

#[derive(Parser, Debug)]
#[command(
    name = "presence-load",
    about = "Load-test harness for presence-gw: open-loop presence queries at a rate, or the highest rate carried without loss",
    after_help = "Topologies: --embedded (the default) starts networks o2.gb (A) and t-mobile.de (B) in this process; \
--spawn PATH runs two `presence-gw run` processes of that binary; --target ADDR drives appliances already running \
(with --networks DIR holding both networks' subscribers.csv, and --target-b for publications).\n\
Latency is measured from each request's intended send time (no coordinated omission). \
The last line of stdout with --json is one JSON object."
)]
struct Cli {
    /// Start both networks' appliances in this process (the default).
    #[arg(long, conflicts_with_all = ["spawn", "target"])]
    embedded: bool,
    /// Spawn two `presence-gw run` processes of this binary.
    #[arg(long, value_name = "PRESENCE_GW", conflicts_with = "target")]
    spawn: Option<PathBuf>,
    /// Drive a running appliance: A's device (client) address.
    #[arg(long, value_name = "ADDR")]
    target: Option<std::net::SocketAddr>,
    /// With --target: B's device address, for publications.
    #[arg(long, value_name = "ADDR", requires = "target")]
    target_b: Option<std::net::SocketAddr>,
    /// Networks folder: generated here (and reused when the population
    /// matches) for --embedded and --spawn; read for --target.
    #[arg(long, value_name = "DIR")]
    networks: Option<PathBuf>,
    /// The numbering table subscribers are drawn from.
    #[arg(long, default_value = "data/msisdn-prefixes.csv")]
    table: PathBuf,
    /// Subscribers of A (the watchers).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(2..=50_000_000))]
    watchers: u64,
    /// Subscribers of B (the targets).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(2..=50_000_000))]
    targets: u64,
    /// Workers per appliance the harness starts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    workers: u64,
    /// Appliance workers spin instead of sleeping in epoll.
    #[arg(long)]
    poll_mode: bool,
    /// Start the appliances with `network.pin_workers = true`: worker `i`
    /// on the `i`-th CPU they may use.
    #[arg(long)]
    pin_workers: bool,
    /// Start the appliances with `network.steering = false`: the kernel
    /// hashes datagrams and connections over the workers, which hand
    /// messages to their owners (to measure what steering saves).
    #[arg(long)]
    no_steering: bool,
    /// Duplicate-window ring size of the appliances the harness starts
    /// (default 2^22 / workers, at least 2^19).
    #[arg(long)]
    window_slots: Option<usize>,
    /// CPUs the spawned appliance processes may use, e.g. `0` or `0,1`.
    #[arg(long, value_delimiter = ',')]
    appliance_cpus: Vec<usize>,
    /// CPUs the harness may use, e.g. `1`.
    #[arg(long, value_delimiter = ',')]
    harness_cpus: Vec<usize>,
    /// Offered rate, requests/s.
    #[arg(long, default_value_t = 200_000.0)]
    rate: f64,
    /// Seconds of load (each rate's, with --max).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Find the highest rate carried with no loss, no shedding and no
    /// wrong answer, starting at --rate.
    #[arg(long)]
    max: bool,
    /// Most rates --max tries.
    #[arg(long, default_value_t = 12)]
    steps: usize,
    /// After --max, offer FACTOR times the highest rate carried with no
    /// loss for --duration, and report how the overload was met: goodput,
    /// requests shed (`Overloaded`) and requests left to time out; and,
    /// with appliances the harness started, where their admission shed
    /// (A's device port, B's border: `overload_shed_where`).
    #[arg(long, value_name = "FACTOR", requires = "max", value_parser = parse_factor)]
    overload: Option<f64>,
    /// Also measure the ceiling: the same sockets and batching against an
    /// echo with as many threads as the appliance has workers.
    #[arg(long)]
    ceiling: bool,
    /// Send every datagram as a message of its own, without UDP GSO runs
    /// (as separate devices reach the appliance, each datagram its own
    /// packet all the way).
    #[arg(long)]
    no_gso: bool,
    /// Measure only the ceiling, against an echo already running at ADDR
    /// (`presence-echo`, say across a veth pair with `--io-backend xdp`),
    /// then stop: no appliances.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["spawn", "target"])]
    ceiling_at: Option<std::net::SocketAddr>,
    /// First rate the ceiling search tries.
    #[arg(long, default_value_t = 1_000_000.0)]
    ceiling_start: f64,
    /// Seconds each ceiling rate is held.
    #[arg(long, default_value_t = 2.0)]
    ceiling_seconds: f64,
    /// An answer later than this after its intended send time is a timeout.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Let a datagram that is not full wait up to this long (µs) for more
    /// requests of its owner, as a device gateway that batches does (0:
    /// each burst's datagrams go at once; the wait counts in the latency).
    #[arg(long, default_value_t = 0)]
    hold_us: u64,
    /// At most this many requests per datagram (0: as many as fit). With 1
    /// every request is a datagram of its own, as from devices that do not
    /// batch (the requests of one burst to one worker then go as one GSO
    /// send, and with `--io-backend gro` arrive as one entry).
    #[arg(long, default_value_t = 0)]
    per_datagram: usize,
    /// How the appliances' client sockets, the echo and the harness's own
    /// sockets receive (`[io] backend`): auto (mmsg today), mmsg (recvmmsg,
    /// one datagram per entry), gro (UDP GRO: a GSO run as one entry),
    /// uring (io_uring at the appliances and the echo; the harness's own
    /// sockets stay mmsg) or xdp (AF_XDP at the appliances and the echo;
    /// it needs an interface with native XDP, which loopback is not, so
    /// measure it with `presence-echo` and --ceiling-at across a veth pair:
    /// bench/scripts/veth-echo.sh).
    #[arg(long, value_enum, default_value_t = IoBackend::Auto)]
    io_backend: IoBackend,
    /// Source sockets (the kernel spreads them over the appliance's workers).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    sockets: u64,
    /// Percent of queries about A's own subscribers.
    #[arg(long, default_value_t = 0.0)]
    internal: f64,
    /// Percent of queries whose watcher is not on the target's buddy list.
    #[arg(long, default_value_t = 0.0)]
    not_permitted: f64,
    /// Percent of requests that are B's status publications.
    #[arg(long, default_value_t = 0.0)]
    publish: f64,
    /// Percent of requests that are subscriptions.
    #[arg(long, default_value_t = 0.0)]
    subscribe: f64,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip the warm-up: every other target publishing "attached", then
    /// --warm-up-seconds of queries at half the first rate.
    #[arg(long)]
    no_warm_up: bool,
    /// Seconds of queries before measuring (first-touch costs: tables
    /// filling, rings allocated, TCP windows opening).
    #[arg(long, default_value_t = 3.0)]
    warm_up_seconds: f64,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Write the latency percentile distribution (HdrHistogram format,
    /// milliseconds) to this file.
    #[arg(long, value_name = "FILE")]
    percentiles: Option<PathBuf>,
}

/// An overload factor: a number from 1 to 100.
fn parse_factor(text: &str) -> Result<f64, String> {
    let factor: f64 = text
        .parse()
        .map_err(|_| format!("{text} is not a number"))?;
    if (1.0..=100.0).contains(&factor) {
        Ok(factor)
    } else {
        Err(format!("{text} is not from 1 to 100"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("presence-load: {e}");
            ExitCode::from(2)
        }
    }
}

fn progress(p: &presence_bench::load::driver::Progress) {
    eprintln!("{}", report::progress_line(p));
}

fn run(cli: &Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mix = Mix {
        internal_pct: cli.internal,
        not_permitted_pct: cli.not_permitted,
        publish_pct: cli.publish,
        subscribe_pct: cli.subscribe,
    };
    mix.validate()?;
    if !(cli.rate.is_finite() && cli.rate >= 1.0) {
        return Err("--rate must be at least 1".into());
    }
    if !(cli.duration.is_finite() && cli.duration > 0.0) {
        return Err("--duration must be positive".into());
    }
    if !(cli.ceiling_seconds.is_finite() && cli.ceiling_seconds > 0.0) {
        return Err("--ceiling-seconds must be positive".into());
    }
    if !(cli.warm_up_seconds.is_finite() && cli.warm_up_seconds >= 0.0) {
        return Err("--warm-up-seconds must be 0 or more".into());
    }
    // The CPUs we may use, read before any pinning: the echo and the
    // appliances get --appliance-cpus (or these), the harness's driver
    // --harness-cpus (or these), whatever order they start in.
    let original = original_cpus();
    for (flag, cpus) in [
        ("--harness-cpus", &cli.harness_cpus),
        ("--appliance-cpus", &cli.appliance_cpus),
    ] {
        if let Some(bad) = cpus.iter().find(|c| !original.contains(c)) {
            return Err(format!(
                "{flag}: CPU {bad} is not one this process may use ({original:?})"
            )
            .into());
        }
    }
    let mut out = std::io::stdout().lock();
    let timeout = Duration::from_millis(cli.timeout_ms);
    let workers = cli.workers as usize;
    let sockets = cli.sockets as usize;

    let networks_dir = cli.networks.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("presence-load-{}x{}", cli.watchers, cli.targets))
    });
    let mode = if cli.ceiling_at.is_some() {
        "ceiling only"
    } else if cli.target.is_some() {
        "target"
    } else if cli.spawn.is_some() {
        "processes"
    } else {
        "embedded"
    };

    // The networks' files (generated for the topologies the harness starts).
    let networks = if cli.target.is_some() {
        None
    } else {
        if !cli.table.exists() {
            return Err(format!(
                "{} not found: run from the repository root, or pass --table",
                cli.table.display()
            )
            .into());
        }
        eprintln!(
            "presence-load: networks {A_NAME} ({} watchers) and {B_NAME} ({} targets) in {}",
            thousands(cli.watchers),
            thousands(cli.targets),
            networks_dir.display()
        );
        let (networks, reused) = Networks::prepare(
            &networks_dir,
            &cli.table,
            cli.watchers as usize,
            cli.targets as usize,
        )?;
        eprintln!(
            "presence-load: {}",
            if reused {
                "reused the generated networks"
            } else {
                "generated certificates, configuration and provisioning"
            }
        );
        Some(networks)
    };
    let population_dir = match (&cli.target, &cli.networks) {
        (Some(_), Some(dir)) => dir.clone(),
        (Some(_), None) => {
            return Err("--target needs --networks DIR with both networks' subscribers.csv".into())
        }
        (None, _) => networks_dir.clone(),
    };
    let population = Population::load_folders(&population_dir, A_NAME, B_NAME)?;

    writeln!(
        out,
        "presence-load: {mode}, {} worker(s) per appliance{}, {} watchers in {A_NAME}, {} targets in {B_NAME}",
        workers,
        if cli.poll_mode { " (poll mode)" } else { "" },
        thousands(population.a.len() as u64),
        thousands(population.b.len() as u64),
    )?;
    writeln!(out, "mix: {}", mix.describe())?;
    out.flush()?;

    // The ceiling first, before the appliances start competing for CPU.
    let mut ceiling_cpu_us_per_query = None;
    let mut ceiling_send_errors = 0u64;
    let ceiling = if cli.ceiling || cli.ceiling_at.is_some() {
        // The echo stands in for the appliances: it runs where they will
        // (or where --ceiling-at says one runs).
        let gro = cli.io_backend.wants_gro();
        let echo = match cli.ceiling_at {
            Some(_) => None,
            None => Some(with_cpus(&cli.appliance_cpus, || {
                EchoServer::start(workers, cli.io_backend)
            })?),
        };
        let echo_addr = match (&echo, cli.ceiling_at) {
            (Some(echo), _) => echo.addr(),
            (None, Some(addr)) => addr,
            (None, None) => return Err("no echo to measure".into()),
        };
        // The same grouping of requests by owner as the appliances get.
        let grouping = u16::try_from(workers).unwrap_or(1);
        let mut driver = Driver::new(
            &population,
            Targets {
                a: echo_addr,
                b: Some(echo_addr),
                a_workers: grouping,
                b_workers: grouping,
            },
            Responder::Echo,
            sockets,
        )?;
        driver.hold_frames(Duration::from_micros(cli.hold_us));
        driver.requests_per_datagram(cli.per_datagram);
        if cli.no_gso {
            driver.disable_gso();
        }
        if gro {
            driver.enable_gro();
        }
        match cli.ceiling_at {
            Some(addr) => writeln!(out, "\nceiling: the echo at {addr}")?,
            None => writeln!(
                out,
                "\nceiling: echo on {} thread(s), same sockets and batching",
                workers
            )?,
        }
        writeln!(out, "{}", report::step_header())?;
        out.flush()?;
        let search = Search {
            start_rate: cli.ceiling_start.max(1.0),
            step_seconds: cli.ceiling_seconds,
            max_steps: cli.steps,
            resolution: 1.1,
            pause: Duration::from_millis(300),
        };
        let me = std::process::id();
        let cpu_before = process_cpu_us(me);
        let result = with_cpus(&cli.harness_cpus, || {
            find_max(
                &mut driver,
                &search,
                timeout,
                Workload::Mix(mix, cli.seed),
                &mut |step| println!("{}", report::step_row(step)),
                &mut progress,
            )
        })?;
        let answered: u64 = result.steps.iter().map(|s| s.answered).sum();
        ceiling_send_errors = result.steps.iter().map(|s| s.send_errors).sum();
        if let (Some(before), Some(after)) = (cpu_before, process_cpu_us(me)) {
            if answered > 0 {
                ceiling_cpu_us_per_query =
                    Some(after.saturating_sub(before) as f64 / answered as f64);
            }
        }
        let best = result
            .best
            .and_then(|i| result.steps.get(i))
            .map(StepResult::throughput_qps);
        match best {
            Some(q) => writeln!(out, "ceiling: {}/s", thousands(q as u64))?,
            None => writeln!(out, "ceiling: no rate was carried without loss")?,
        }
        best
    } else {
        None
    };
    if let Some(addr) = cli.ceiling_at {
        let cpu = ceiling_cpu_us_per_query.map_or(0.0, |c| (c * 100.0).round() / 100.0);
        writeln!(
            out,
            "harness CPU per echoed request over the search: {cpu} µs"
        )?;
        if cli.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "ceiling_at": addr.to_string(),
                    "ceiling_qps": ceiling.map(f64::round),
                    "harness_cpu_us_per_query": cpu,
                    "send_errors": ceiling_send_errors,
                })
            )?;
        }
        return Ok(if ceiling.is_some() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    // The appliances.
    let settings = ApplianceSettings {
        appliance: TwoNetworkSettings {
            workers,
            poll_mode: cli.poll_mode,
            window_slots: cli
                .window_slots
                .unwrap_or(((1usize << 22) / workers).max(1 << 19)),
            metrics: false,
            steering: !cli.no_steering,
            pin_workers: cli.pin_workers,
            io_backend: cli.io_backend,
        },
        cpus: cli.appliance_cpus.clone(),
    };
    let (topology, targets) = match (&networks, &cli.spawn) {
        (None, _) => {
            // A running appliance's worker count, from its configuration
            // in --networks, groups the requests by owner.
            let workers_of = |name: &str| {
                presence_engine::config::ApplianceConfig::load(
                    &population_dir.join(name).join("gw.toml"),
                )
                .map_or(1, |c| u16::try_from(c.workers).unwrap_or(1))
            };
            (
                Topology::External,
                Targets {
                    a: cli.target.ok_or("no --target")?,
                    b: cli.target_b,
                    a_workers: workers_of(A_NAME),
                    b_workers: workers_of(B_NAME),
                },
            )
        }
        (Some(networks), Some(binary)) => Topology::processes(binary, networks, &settings)?,
        (Some(networks), None) => Topology::embedded(networks, &settings)?,
    };
    let watched = topology.processes_to_watch();
    let outcome = with_cpus(&cli.harness_cpus, || {
        measure(
            cli,
            &population,
            (targets, &watched, &topology),
            mix,
            timeout,
            ceiling,
            mode,
            &mut out,
        )
    });
    let stopped = topology.stop();
    if !stopped.is_empty() {
        eprintln!("presence-load: {stopped}");
    }
    outcome
}

/// Where the overload step's excess was refused: requests and queries
/// each appliance's admission answered `Overloaded`, over the step.
#[derive(Debug, Clone, Copy)]
struct ShedWhere {
    /// At A's device port (`presence_device_queue_shed_total`).
    a_device: u64,
    /// At B's border, A's queries (`presence_border_queue_shed_total`).
    b_border: u64,
    /// At B's device port (the harness sends B publications only in the
    /// warm-up: 0 unless something else talks to B).
    b_device: u64,
    /// At A's border (B's queries: 0, B asks A nothing).
    a_border: u64,
}

#[allow(clippy::too_many_arguments)]
fn measure(
    cli: &Cli,
    population: &Population,
    (targets, watched, topology): (Targets, &[(&str, u32)], &Topology),
    mix: Mix,
    timeout: Duration,
    ceiling: Option<f64>,
    mode: &str,
    out: &mut impl Write,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut driver = Driver::new(
        population,
        targets,
        Responder::Appliance,
        cli.sockets as usize,
    )?;
    driver.hold_frames(Duration::from_micros(cli.hold_us));
    driver.requests_per_datagram(cli.per_datagram);
    if cli.no_gso {
        driver.disable_gso();
    }
    if cli.io_backend.wants_gro() {
        driver.enable_gro();
    }
    if let Err(probe) = wait_until_answering(&mut driver, Duration::from_secs(60))? {
        report::final_table(out, "the last probe", &probe, None)?;
        return Err(format!("the appliance at {} does not answer queries", targets.a).into());
    }
    if !cli.no_warm_up && targets.b.is_some() {
        // Every other target attached, so answers are of both kinds.
        let workload = Workload::AttachEvery(2);
        let n = workload.finite_len(population).unwrap_or(0);
        let rate = 200_000.0;
        let warm = driver.run(
            &StepSpec {
                rate,
                seconds: n as f64 / rate,
                timeout,
                workload,
            },
            &mut |_| {},
        )?;
        eprintln!(
            "presence-load: warm-up: {} of {} targets published attached ({} acks)",
            thousands(warm.sent),
            thousands(population.b.len() as u64),
            thousands(warm.answered)
        );
    }
    if !cli.no_warm_up && cli.warm_up_seconds > 0.0 {
        let rate = (cli.rate / 2.0).max(1.0);
        let warm = driver.run(
            &StepSpec {
                rate,
                seconds: cli.warm_up_seconds,
                timeout,
                workload: Workload::Mix(mix, cli.seed ^ 0x5741_524d),
            },
            &mut |_| {},
        )?;
        eprintln!(
            "presence-load: warm-up: {} s of queries at {}/s ({} answered, p99 {} µs)",
            cli.warm_up_seconds,
            thousands(rate as u64),
            thousands(warm.answered),
            thousands(warm.latency.value_at_quantile(0.99))
        );
    }
    let workload = Workload::Mix(mix, cli.seed);
    let mut cpu_per_query: Vec<(String, f64)> = Vec::new();
    let mut cross_per_query: Option<(f64, f64)> = None;
    let mut turns_per_query: Option<(f64, f64)> = None;
    let result = if cli.max {
        writeln!(
            out,
            "\nsearching the highest rate with no loss ({} s per rate)",
            cli.duration
        )?;
        writeln!(out, "{}", report::step_header())?;
        out.flush()?;
        let search = Search {
            start_rate: cli.rate,
            step_seconds: cli.duration,
            max_steps: cli.steps,
            resolution: 1.05,
            pause: Duration::from_secs(1),
        };
        find_max(
            &mut driver,
            &search,
            timeout,
            workload,
            &mut |step| println!("{}", report::step_row(step)),
            &mut progress,
        )?
    } else {
        writeln!(
            out,
            "\nopen loop at {}/s for {} s",
            thousands(cli.rate as u64),
            cli.duration
        )?;
        out.flush()?;
        let cpu_before: Vec<Option<u64>> = watched
            .iter()
            .map(|(_, pid)| process_cpu_us(*pid))
            .collect();
        let counts_before = topology.appliance_counts();
        let step = driver.run(
            &StepSpec {
                rate: cli.rate,
                seconds: cli.duration,
                timeout,
                workload,
            },
            &mut progress,
        )?;
        // Hand-offs between workers per query, each appliance (their
        // counters are published every 100 ms: let the last publication in).
        std::thread::sleep(Duration::from_millis(250));
        if let (Some([a0, b0]), Some([a1, b1])) = (counts_before, topology.appliance_counts()) {
            let per = |before: u64, after: u64| {
                after.saturating_sub(before) as f64 / step.answered.max(1) as f64
            };
            cross_per_query = Some((
                per(a0.cross_worker, a1.cross_worker),
                per(b0.cross_worker, b1.cross_worker),
            ));
            turns_per_query = Some((per(a0.turns, a1.turns), per(b0.turns, b1.turns)));
        }
        // CPU per answered query, over the step (drain included).
        for ((name, pid), before) in watched.iter().zip(cpu_before) {
            if let (Some(before), Some(after)) = (before, process_cpu_us(*pid)) {
                let per_query = after.saturating_sub(before) as f64 / step.answered.max(1) as f64;
                cpu_per_query.push((name.to_string(), per_query));
            }
        }
        SearchResult {
            best: step.clean().then_some(0),
            steps: vec![step],
        }
    };
    let Some(headline) = result.headline() else {
        return Err("no step ran".into());
    };
    writeln!(out)?;
    let title = if cli.max {
        if result.best.is_some() {
            "result: the highest rate carried with no loss"
        } else {
            "result: no rate was carried without loss; the last one tried"
        }
    } else {
        "result"
    };
    report::final_table(out, title, headline, ceiling)?;
    if !cpu_per_query.is_empty() {
        let cells: Vec<String> = cpu_per_query
            .iter()
            .map(|(name, us)| format!("{name} {us:.2}"))
            .collect();
        writeln!(
            out,
            "  CPU µs/query {}   (user + system time over the step, /proc/PID/stat)",
            cells.join("  ")
        )?;
    }
    if let Some((a, b)) = cross_per_query {
        writeln!(
            out,
            "  hand-offs between workers per query: A {a:.4}  B {b:.4}   (presence_cross_worker_total over the step)"
        )?;
    }
    if let Some((a, b)) = turns_per_query {
        writeln!(
            out,
            "  worker wake-ups per query: A {a:.4}  B {b:.4}   (presence_worker_turns_total over the step)"
        )?;
    }
    if let Some(path) = &cli.percentiles {
        report::write_percentiles(path, &headline.latency)?;
        writeln!(out, "  percentiles  {}", path.display())?;
    }
    // Overload: FACTOR × the highest clean rate, and how it was met.
    let mut shed_where: Option<ShedWhere> = None;
    let overload = match (cli.overload, result.best.and_then(|i| result.steps.get(i))) {
        (Some(factor), Some(best)) => {
            std::thread::sleep(Duration::from_secs(1));
            let rate = best.rate * factor;
            writeln!(
                out,
                "\noverload: {factor} × {}/s = {}/s for {} s",
                thousands(best.rate as u64),
                thousands(rate as u64),
                cli.duration
            )?;
            out.flush()?;
            let counts_before = topology.appliance_counts();
            let step = driver.run(
                &StepSpec {
                    rate,
                    seconds: cli.duration,
                    timeout,
                    workload,
                },
                &mut progress,
            )?;
            // Where the excess was refused: each appliance's admission
            // (counters published every 100 ms: let the last one in).
            std::thread::sleep(Duration::from_millis(250));
            if let (Some([a0, b0]), Some([a1, b1])) = (counts_before, topology.appliance_counts()) {
                shed_where = Some(ShedWhere {
                    a_device: a1.device_shed.saturating_sub(a0.device_shed),
                    b_device: b1.device_shed.saturating_sub(b0.device_shed),
                    b_border: b1.border_shed.saturating_sub(b0.border_shed),
                    a_border: a1.border_shed.saturating_sub(a0.border_shed),
                });
            }
            report::final_table(out, "overload result", &step, None)?;
            let goodput = step.good_in_window as f64 / step.seconds.max(1e-9);
            writeln!(
                out,
                "  overload     goodput {}/s ({:.1}% of the highest no-loss rate)  shed {}  timeouts {} ({:.3}% of {} offered)",
                thousands(goodput as u64),
                100.0 * goodput / best.throughput_qps().max(1.0),
                thousands(step.overloaded()),
                thousands(step.timeouts()),
                100.0 * step.timeouts() as f64 / step.sent.max(1) as f64,
                thousands(step.sent)
            )?;
            if !step.shed_latency.is_empty() {
                writeln!(
                    out,
                    "  shed answers µs  p50 {}  p99 {}  max {}   (from each shed request's intended send time)",
                    thousands(step.shed_latency.value_at_quantile(0.5)),
                    thousands(step.shed_latency.value_at_quantile(0.99)),
                    thousands(step.shed_latency.max())
                )?;
            }
            if let Some(w) = &shed_where {
                writeln!(
                    out,
                    "  shed where   A's device port {}  B's border {}  (B's device port {}, A's border {})   (presence_*_queue_shed_total over the step)",
                    thousands(w.a_device),
                    thousands(w.b_border),
                    thousands(w.b_device),
                    thousands(w.a_border)
                )?;
            }
            Some((goodput, step))
        }
        (Some(_), None) => {
            writeln!(out, "\noverload: not run, no rate was carried without loss")?;
            None
        }
        (None, _) => None,
    };
    if cli.json {
        let mut extra = serde_json::Map::new();
        extra.insert("mode".into(), mode.into());
        extra.insert("workers".into(), cli.workers.into());
        extra.insert("poll_mode".into(), cli.poll_mode.into());
        extra.insert("search".into(), cli.max.into());
        extra.insert("watchers".into(), (population.a.len() as u64).into());
        extra.insert("targets".into(), (population.b.len() as u64).into());
        extra.insert(
            "answered_in_window".into(),
            headline.answered_in_window.into(),
        );
        extra.insert("backlog_at_end".into(), headline.backlog_at_end.into());
        extra.insert("send_lag_max_us".into(), headline.send_lag_max_us.into());
        extra.insert(
            "max_gap_ms".into(),
            serde_json::json!((headline.max_gap_us as f64 / 1e3 * 1e3).round() / 1e3),
        );
        extra.insert("stray".into(), headline.stray.into());
        if !cpu_per_query.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> = cpu_per_query
                .iter()
                .map(|(name, us)| (name.clone(), ((us * 100.0).round() / 100.0).into()))
                .collect();
            extra.insert("cpu_us_per_query".into(), map.into());
        }
        if let Some((a, b)) = cross_per_query {
            let round = |x: f64| (x * 1e4).round() / 1e4;
            extra.insert(
                "cross_worker_per_query".into(),
                serde_json::json!({ "A": round(a), "B": round(b) }),
            );
        }
        if let Some((a, b)) = turns_per_query {
            let round = |x: f64| (x * 1e4).round() / 1e4;
            extra.insert(
                "turns_per_query".into(),
                serde_json::json!({ "A": round(a), "B": round(b) }),
            );
        }
        extra.insert("send_errors".into(), headline.send_errors.into());
        extra.insert("not_sent".into(), headline.not_sent.into());
        extra.insert("stuck_datagrams".into(), headline.stuck_datagrams.into());
        if let Some((goodput, step)) = &overload {
            extra.insert("overload_offered_qps".into(), step.rate.round().into());
            extra.insert("overload_goodput_qps".into(), goodput.round().into());
            extra.insert("overload_shed".into(), step.overloaded().into());
            extra.insert("overload_timeouts".into(), step.timeouts().into());
            extra.insert("overload_sent".into(), step.sent.into());
            if !step.shed_latency.is_empty() {
                extra.insert(
                    "overload_shed_p50_us".into(),
                    step.shed_latency.value_at_quantile(0.5).into(),
                );
                extra.insert(
                    "overload_shed_p99_us".into(),
                    step.shed_latency.value_at_quantile(0.99).into(),
                );
            }
            if let Some(w) = &shed_where {
                extra.insert(
                    "overload_shed_where".into(),
                    serde_json::json!({
                        "a_device": w.a_device,
                        "b_border": w.b_border,
                        "b_device": w.b_device,
                        "a_border": w.a_border,
                    }),
                );
            }
        }
        writeln!(out, "{}", report::json(headline, ceiling, extra))?;
    }
    out.flush()?;
    Ok(if headline.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
