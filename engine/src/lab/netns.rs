//! A network namespace with a veth pair to this one, for tests of what
//! crosses a real (virtual) link: the AF_XDP port, which needs an
//! interface that is not loopback. Needs root (`CAP_NET_ADMIN`), as CI
//! runs; uses `ip` from iproute2. The namespace and both ends of the pair
//! are deleted on drop.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static LABS: AtomicU32 = AtomicU32::new(0);

/// A namespace holding `inner`, paired with `outer` in this namespace,
/// each end with an address in a /24 of their own.
#[derive(Debug)]
pub struct VethLab {
    /// The namespace's name (`ip netns`).
    pub ns: String,
    /// The end in this namespace.
    pub outer: String,
    /// The end in the lab's namespace.
    pub inner: String,
    pub outer_ip: Ipv4Addr,
    pub inner_ip: Ipv4Addr,
}

/// Runs `ip args…`, failing with what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {} (needs root)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl VethLab {
    /// Makes the namespace and the pair, both ends up.
    pub fn new() -> Result<VethLab, String> {
        let k = LABS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{:x}{k}", pid % 0xffff);
        let ns = format!("pgwx{tag}");
        let outer = format!("pgxo{tag}");
        let inner = format!("pgxi{tag}");
        // A /24 of its own, unlikely to meet another test process's.
        let net = u8::try_from((pid.wrapping_mul(7).wrapping_add(k * 13)) % 250).unwrap_or(0) + 1;
        let outer_ip = Ipv4Addr::new(10, 213, net, 1);
        let inner_ip = Ipv4Addr::new(10, 213, net, 2);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &outer]).output();
        ip(&["netns", "add", &ns])?;
        let lab = VethLab {
            ns,
            outer,
            inner,
            outer_ip,
            inner_ip,
        };
        let (ns, outer, inner) = (&lab.ns, &lab.outer, &lab.inner);
        ip(&["link", "add", outer, "type", "veth", "peer", "name", inner])?;
        ip(&["link", "set", inner, "netns", ns])?;
        ip(&["addr", "add", &format!("{outer_ip}/24"), "dev", outer])?;
        ip(&["link", "set", outer, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{inner_ip}/24"),
            "dev",
            inner,
        ])?;
        ip(&["-n", ns, "link", "set", inner, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(lab)
    }

    /// The namespace's file, for `setns`.
    pub fn ns_file(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::open(format!("/var/run/netns/{}", self.ns))
    }

    /// Runs `f` on a new thread inside the namespace (its sockets, and
    /// threads it starts, are the namespace's).
    pub fn inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<T>> {
        let file = self.ns_file()?;
        Ok(std::thread::spawn(move || {
            enter(&file).expect("setns into the lab's namespace");
            f()
        }))
    }

    /// Makes `command` run inside the namespace.
    pub fn command_inside(&self, command: &mut Command) -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        let file = self.ns_file()?;
        // SAFETY: the hook runs in the child between fork and exec and
        // only calls setns(2), which is async-signal-safe; `file` is moved
        // into the hook and open in the child until exec.
        unsafe {
            command.pre_exec(move || enter(&file));
        }
        Ok(())
    }

    /// Whether an XDP program is attached to the inner end.
    pub fn xdp_attached(&self) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns, "-d", "link", "show", "dev", &self.inner])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
    }
}

/// Moves the calling thread into the namespace of `file`.
fn enter(file: &std::fs::File) -> std::io::Result<()> {
    // SAFETY: setns on the calling thread with a namespace descriptor.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for VethLab {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so both.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}
