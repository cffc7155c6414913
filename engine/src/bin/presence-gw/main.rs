//! `presence-gw`: the presence gateway appliance's one binary. The
//! appliance itself (`run`) is the library's runtime; this folder holds the
//! commands around it: the demo, routing and wire-format tools, the border
//! gateway's checks, certificates and charge records.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use presence_engine::table::NumberingTable;

/// Large arenas on huge pages where `[network] huge_pages` asks for them
/// (`presence_engine::runtime::hugepages`).
#[global_allocator]
static ALLOCATOR: presence_engine::runtime::hugepages::HugePageAlloc =
    presence_engine::runtime::hugepages::HugePageAlloc;

mod border;
mod demo;
mod route;
mod wire;

/// Fewest subscribers per network the demo runs with (buddy lists need 20).
const DEMO_MIN: usize = 40;

#[derive(Debug, Parser)]
#[command(
    name = "presence-gw",
    version,
    about = "Presence gateway between mobile networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance: the roles the configuration enables, the border
    /// gateway, metrics. SIGHUP reloads tables, provisioning and peers;
    /// SIGTERM or SIGINT drains, flushes charge records and exits 0.
    Run {
        /// The configuration file (docs/operations.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// Two networks in one process on loopback, with generated certificates
    /// and the shared numbering table: one query traced through the thirteen
    /// steps, then a short load and its summary.
    Demo {
        /// The numbering table.
        #[arg(long, default_value = "data/msisdn-prefixes.csv")]
        table: PathBuf,
        /// Seconds of load after the traced query.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Subscribers in each network.
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Workers per network.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Folder for the generated files (default: a new temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Workers spin instead of sleeping (see docs/operations.md).
        #[arg(long)]
        poll_mode: bool,
    },
    /// Route MSISDNs (one per line on stdin) to their networks, as the OGPS
    /// does: `msisdn,network` per line on stdout, in order.
    Route {
        /// Prefix table CSV (`prefix,network[,...]`), e.g. data/msisdn-prefixes.csv.
        #[arg(long)]
        table: PathBuf,
        /// Ported numbers CSV (`msisdn,network`), overriding the prefixes.
        #[arg(long)]
        ported: Option<PathBuf>,
    },
    /// Wire-format tools (docs/wire-format.md).
    Wire {
        #[command(subcommand)]
        command: WireCommand,
    },
    /// Border gateway certificates: a network's CA and its BG certificate
    /// (docs/operations.md, "Connecting two networks").
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Border gateway tools: check a `[border]` configuration, probe the
    /// peers it names, or accept peers for a while (docs/operations.md).
    Border {
        #[command(subcommand)]
        command: BorderCommand,
    },
    /// Charge records (docs/reliability.md).
    Cdr {
        #[command(subcommand)]
        command: CdrCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CdrCommand {
    /// Print the charge records of a journal segment, or of every segment
    /// in a directory, as CSV on stdout. Reads only: damage (a torn tail,
    /// corrupt bytes) is reported on stderr and the exit status is 1.
    Dump {
        /// A segment file (`*.cdrj`) or the CDR directory.
        path: PathBuf,
        /// Every journaled decision, not only the charge records.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BorderCommand {
    /// Load the configuration and every certificate it names; print them.
    Check {
        /// The configuration file (its `[border]` section).
        #[arg(long)]
        config: PathBuf,
    },
    /// Dial every peer with an address; exit 0 only if all authenticate.
    Probe {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// How long to wait for the links, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Accept peers on the configured address for a while, logging each link
    /// and refusal (for a peer's `probe`).
    Listen {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// How long to listen.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Worker threads (each with its own SO_REUSEPORT listener).
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create a network's CA (`ca.pem`, `ca.key`) in DIR. The CA may only sign
    /// certificates for the network's own name.
    Ca {
        /// The network's name on the border (lowercase DNS name, e.g. `alpha.example`).
        #[arg(long)]
        network: String,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a BG certificate and a new key (`bg.pem`, `bg.key`) from the CA
    /// in --ca-dir. Run again with --force to rotate, then reload the gateway.
    Bg {
        /// The network's name; must be the CA's.
        #[arg(long)]
        network: String,
        /// Directory holding `ca.pem` and `ca.key`.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create both a CA and a BG certificate in DIR.
    Init {
        /// The network's name on the border.
        #[arg(long)]
        network: String,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print a certificate's names and dates.
    Show {
        /// A PEM certificate file.
        cert: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum WireCommand {
    /// Print one sample frame of every message type, as `name hex`.
    Sample {
        /// Also show each frame decoded (as `#` comment lines `decode` skips).
        #[arg(long)]
        decoded: bool,
    },
    /// Decode hex frames from stdin, one per line; exit 1 if any is rejected.
    Decode {
        /// Largest frame accepted, in bytes (default 1472: a 1500-byte MTU less IPv4 and UDP headers).
        #[arg(long, default_value_t = presence_engine::codec::FRAME_LEN_DEFAULT_MAX)]
        max_frame_len: usize,
    },
}

fn run(cli: Cli) -> io::Result<ExitCode> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let code = match cli.command {
        Command::Route { table, ported } => {
            let table = match NumberingTable::load(&table, ported.as_deref()) {
                Ok(table) => table,
                Err(e) => {
                    eprintln!("presence-gw route: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let stderr = io::stderr();
            let mut err = BufWriter::new(stderr.lock());
            let summary = route::route(&table.snapshot(), io::stdin().lock(), &mut out, &mut err)?;
            err.flush()?;
            if summary.invalid == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Wire {
            command: WireCommand::Sample { decoded },
        } => {
            wire::write_samples(&mut out, decoded)?;
            ExitCode::SUCCESS
        }
        Command::Wire {
            command: WireCommand::Decode { max_frame_len },
        } => {
            let bad = wire::decode_lines(io::stdin().lock(), &mut out, max_frame_len)?;
            if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Run { config } => {
            init_logs();
            out.flush()?;
            return run_appliance(&config);
        }
        Command::Demo {
            table,
            seconds,
            subscribers,
            workers,
            dir,
            poll_mode,
        } => {
            init_logs_quiet();
            match demo::run(
                &table,
                seconds,
                subscribers.max(DEMO_MIN),
                workers.max(1),
                dir,
                poll_mode,
                &mut out,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    out.flush()?;
                    eprintln!("presence-gw demo: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Border { command } => {
            init_logs();
            let result = match command {
                BorderCommand::Check { config } => border::check(&config, &mut out),
                BorderCommand::Probe { config, timeout_ms } => border::probe(
                    &config,
                    std::time::Duration::from_millis(timeout_ms),
                    &mut out,
                ),
                BorderCommand::Listen {
                    config,
                    seconds,
                    workers,
                } => border::listen(&config, seconds, workers.max(1), &mut out),
            };
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    out.flush()?;
                    eprintln!("presence-gw border: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Cdr {
            command: CdrCommand::Dump { path, all },
        } => match presence_engine::journal::dump(&path, all, &mut out) {
            Ok(summary) => {
                out.flush()?;
                for (segment, damage) in &summary.damage {
                    eprintln!("presence-gw cdr dump: {}: {damage}", segment.display());
                }
                eprintln!(
                    "{} records from {} segments",
                    summary.records, summary.segments
                );
                if summary.damage.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                out.flush()?;
                eprintln!("presence-gw cdr dump: {e}");
                ExitCode::from(2)
            }
        },
        Command::Pki { command } => match pki(command, &mut out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                out.flush()?;
                eprintln!("presence-gw pki: {e}");
                ExitCode::from(2)
            }
        },
    };
    out.flush()?;
    Ok(code)
}

fn pki(command: PkiCommand, out: &mut impl Write) -> Result<(), Box<dyn std::error::Error>> {
    use presence_border::pki::{
        self, Validity, BG_CERT_FILE, BG_KEY_FILE, CA_CERT_FILE, CA_KEY_FILE,
    };
    use presence_border::NetworkName;
    let network = |name: &str| -> Result<NetworkName, Box<dyn std::error::Error>> {
        name.parse::<NetworkName>()
            .map_err(|e| format!("--network {name:?}: {e}").into())
    };
    match command {
        PkiCommand::Ca {
            network: name,
            out: dir,
            days,
            force,
        } => {
            let ca = pki::generate_network_ca(&network(&name)?, Validity::days_from_now(days))?;
            pki::write_pair(&ca, &dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE), force)?;
            writeln!(
                out,
                "wrote {} and {}",
                dir.join(CA_CERT_FILE).display(),
                dir.join(CA_KEY_FILE).display()
            )?;
        }
        PkiCommand::Bg {
            network: name,
            ca_dir,
            out: dir,
            days,
            force,
        } => {
            let ca = pki::read_pair(&ca_dir.join(CA_CERT_FILE), &ca_dir.join(CA_KEY_FILE))?;
            let bg =
                pki::issue_bg_certificate(&ca, &network(&name)?, Validity::days_from_now(days))?;
            pki::write_pair(&bg, &dir.join(BG_CERT_FILE), &dir.join(BG_KEY_FILE), force)?;
            writeln!(
                out,
                "wrote {} and {}",
                dir.join(BG_CERT_FILE).display(),
                dir.join(BG_KEY_FILE).display()
            )?;
        }
        PkiCommand::Init {
            network: name,
            out: dir,
            force,
        } => {
            let material = pki::NetworkMaterial::generate(&network(&name)?)?;
            material.write_to(&dir, force)?;
            writeln!(
                out,
                "wrote {CA_CERT_FILE}, {CA_KEY_FILE}, {BG_CERT_FILE}, {BG_KEY_FILE} in {}",
                dir.display()
            )?;
        }
        PkiCommand::Show { cert } => {
            let text = pki::describe_certificate(&cert)?;
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

/// `presence-gw run`: start, then serve signals until told to stop.
fn run_appliance(file: &std::path::Path) -> io::Result<ExitCode> {
    use presence_engine::config::ApplianceConfig;
    use presence_engine::runtime::{Appliance, StartOptions};
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let config = match ApplianceConfig::load(file) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("presence-gw run: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // Signals are taken before the workers start, so none is missed.
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let mut appliance = match Appliance::start(config, StartOptions::default()) {
        Ok(appliance) => appliance,
        Err(e) => {
            eprintln!("presence-gw run: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    {
        let mut stdout = io::stdout().lock();
        writeln!(
            stdout,
            "presence-gw running: client={} border={} metrics={}",
            appliance.client_addr(),
            appliance.border_addr(),
            appliance
                .metrics_addr()
                .map_or_else(|| "-".to_string(), |a| a.to_string())
        )?;
        stdout.flush()?;
    }
    for signal in signals.forever() {
        match signal {
            SIGHUP => match appliance.reload() {
                Ok(()) => tracing::info!("reloaded on SIGHUP"),
                Err(e) => tracing::error!(error = %e, "reload refused; running on as before"),
            },
            _ => {
                tracing::info!(signal, "stopping");
                appliance.stop();
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Warnings only (the demo prints its own story).
fn init_logs_quiet() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}

/// Structured logs on stderr; `RUST_LOG` filters (default `info`).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("presence-gw: {e}");
            ExitCode::from(2)
        }
    }
}
