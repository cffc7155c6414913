//! What the harness drives: the embedded two-network topology (both
//! appliances in the harness's process), two `presence-gw run` processes it
//! spawns, or appliances already running somewhere (`--target`).
//!
//! The first two generate the networks' folders with
//! [`presence_engine::demo::write_two_networks`]: certificates, configuration,
//! HSS ranges and subscribers drawn from the shipped numbering table's
//! ranges. A folder made once is reused by later runs with the same
//! population (generating a million subscribers each takes a while).

use std::path::{Path, PathBuf};
use std::time::Duration;

use presence_engine::demo::{
    self, DemoError, DemoNetwork, SpawnedAppliance, TwoAppliances, TwoNetworkSettings,
};
use presence_engine::runtime::StartOptions;

use super::driver::Targets;

/// Network A's name (the watchers').
pub const A_NAME: &str = "o2.gb";
/// Network B's name (the targets').
pub const B_NAME: &str = "t-mobile.de";

/// The generated networks: both folders under one root.
#[derive(Debug)]
pub struct Networks {
    /// The root folder.
    pub root: PathBuf,
    /// Network A.
    pub a: DemoNetwork,
    /// Network B.
    pub b: DemoNetwork,
    /// The numbering table the configurations name.
    pub table: PathBuf,
}

const MARKER: &str = "population.txt";

impl Networks {
    /// The networks under `root` with `watchers` subscribers in A and
    /// `targets` in B: reused if a folder with that population is there,
    /// generated otherwise.
    pub fn prepare(
        root: &Path,
        table: &Path,
        watchers: usize,
        targets: usize,
    ) -> Result<(Networks, bool), DemoError> {
        let marker = format!("{A_NAME} {watchers}\n{B_NAME} {targets}\n");
        let reused = std::fs::read_to_string(root.join(MARKER)).is_ok_and(|m| m == marker);
        let (a, b) = if reused {
            (
                DemoNetwork::reopen(root, A_NAME)?,
                DemoNetwork::reopen(root, B_NAME)?,
            )
        } else {
            let _ = std::fs::remove_dir_all(root);
            std::fs::create_dir_all(root)?;
            let pair = demo::write_two_networks(root, table, A_NAME, B_NAME, watchers, targets)?;
            std::fs::write(root.join(MARKER), marker)?;
            pair
        };
        Ok((
            Networks {
                root: root.to_path_buf(),
                a,
                b,
                table: table.to_path_buf(),
            },
            reused,
        ))
    }
}

/// The appliances under load.
#[derive(Debug)]
pub enum Topology {
    /// Both in this process.
    Embedded(Box<TwoAppliances>),
    /// Two child processes.
    Processes {
        /// A's process.
        a: Box<SpawnedAppliance>,
        /// B's process.
        b: Box<SpawnedAppliance>,
    },
    /// Running elsewhere.
    External,
}

/// How the appliances the harness starts run.
#[derive(Debug, Clone)]
pub struct ApplianceSettings {
    /// Workers per appliance.
    pub workers: usize,
    /// Workers spin instead of sleeping in epoll.
    pub poll_mode: bool,
    /// Duplicate-window ring size.
    pub window_slots: usize,
    /// CPUs the appliances may run on (spawned processes only; empty: any).
    pub cpus: Vec<usize>,
}

impl Topology {
    /// Starts both appliances in this process.
    pub fn embedded(
        networks: &Networks,
        settings: &ApplianceSettings,
    ) -> Result<(Topology, Targets), DemoError> {
        let two = demo::start_two_appliances(
            &networks.a,
            &networks.b,
            &networks.table,
            TwoNetworkSettings {
                workers: settings.workers,
                poll_mode: settings.poll_mode,
                window_slots: settings.window_slots,
                metrics: false,
            },
            StartOptions::default(),
        )?;
        let targets = Targets {
            a: two.a.client_addr(),
            b: Some(two.b.client_addr()),
        };
        Ok((Topology::Embedded(Box::new(two)), targets))
    }

    /// Spawns `binary run` for B, then A (dialing B), then tells B where A
    /// listens with a SIGHUP. Logs go to `a.log` and `b.log` in the root.
    pub fn processes(
        binary: &Path,
        networks: &Networks,
        settings: &ApplianceSettings,
    ) -> Result<(Topology, Targets), DemoError> {
        let write = |me: &DemoNetwork, peer: &DemoNetwork, addr| {
            demo::write_config_with(
                me,
                peer,
                &networks.table,
                settings.workers,
                addr,
                true,
                settings.poll_mode,
                settings.window_slots,
            )
        };
        let cpus = settings.cpus.clone();
        let spawn = |config: &Path, log: &str| {
            let cpus = cpus.clone();
            SpawnedAppliance::start(binary, config, Some(&networks.root.join(log)), move |c| {
                pin_command(c, cpus)
            })
        };
        let b_config = write(&networks.b, &networks.a, None)?;
        let b = spawn(&b_config, "b.log")?;
        let a_config = write(&networks.a, &networks.b, Some(b.border))?;
        let a = spawn(&a_config, "a.log")?;
        write(&networks.b, &networks.a, Some(a.border))?;
        b.signal(libc::SIGHUP)?;
        // B re-reads its whole provisioning on a reload: measuring while it
        // does would measure the reload.
        let mut b = b;
        if !b.wait_for_log(
            &networks.root.join("b.log"),
            "reloaded on SIGHUP",
            Duration::from_secs(300),
        ) {
            return Err(DemoError::Other(
                "B did not finish its reload (see b.log)".into(),
            ));
        }
        let targets = Targets {
            a: a.client,
            b: Some(b.client),
        };
        Ok((
            Topology::Processes {
                a: Box::new(a),
                b: Box::new(b),
            },
            targets,
        ))
    }

    /// Stops what this harness started, cleanly; returns a line saying how
    /// it went.
    pub fn stop(self) -> String {
        match self {
            Topology::Embedded(two) => {
                let TwoAppliances { a, b } = *two;
                a.stop();
                b.stop();
                "appliances stopped cleanly".into()
            }
            Topology::Processes { mut a, mut b } => {
                let wait = Duration::from_secs(15);
                let (a, b) = (a.terminate(wait), b.terminate(wait));
                format!(
                    "appliance processes stopped: A exit {}, B exit {}",
                    a.map_or_else(|| "killed".into(), |c| c.to_string()),
                    b.map_or_else(|| "killed".into(), |c| c.to_string())
                )
            }
            Topology::External => String::new(),
        }
    }
}

/// Restricts a command (and every thread it starts) to `cpus`.
fn pin_command(command: &mut std::process::Command, cpus: Vec<usize>) {
    use std::os::unix::process::CommandExt;
    if cpus.is_empty() {
        return;
    }
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only sched_setaffinity on a cpu_set_t built on its own stack, which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            pin_current(&cpus);
            Ok(())
        });
    }
}

/// Restricts the calling thread (and threads it starts later) to `cpus`.
pub fn pin_current(cpus: &[usize]) -> bool {
    if cpus.is_empty() {
        return false;
    }
    // SAFETY: `set` is a plain bit set on the stack; CPU_SET writes within
    // it for any index below CPU_SETSIZE (larger ones are skipped), and
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            if cpu < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}
