//! `presence-gw`: the presence gateway appliance's one binary.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use presence_engine::table::NumberingTable;
use presence_engine::{route, wire};

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
    };
    out.flush()?;
    Ok(code)
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
