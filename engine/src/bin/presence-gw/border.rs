//! `presence-gw border`: check a border configuration, and prove that two
//! networks' gateways authenticate each other before any traffic is pointed at
//! them (`docs/operations.md`, "Connecting two networks").

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_border::node::{BgNode, NodeConfig};
use presence_border::pki::describe_certificate;
use presence_border::tls::TrustFile;
use presence_border::{BgCounters, BorderConfig, CloseReason, Refusal};

/// Loads the configuration and its files; prints what this gateway is and
/// whom it trusts.
pub(crate) fn check(file: &Path, out: &mut impl Write) -> Result<bool, Box<dyn std::error::Error>> {
    let config = BorderConfig::load(file)?;
    let tls = config.tls(1)?;
    writeln!(out, "network:     {}", tls.own_network())?;
    writeln!(out, "listen:      {}", config.listen)?;
    writeln!(out, "certificate: {}", config.certificate.display())?;
    for line in describe_certificate(&config.certificate)?.lines() {
        writeln!(out, "  {line}")?;
    }
    for peer in &config.peers {
        let (kind, path) = match &peer.trust {
            TrustFile::Ca(p) => ("ca", p),
            TrustFile::Pinned(p) => ("pinned", p),
        };
        let dial = peer
            .address
            .map_or_else(|| "accept only".to_string(), |a| format!("dial {a}"));
        writeln!(
            out,
            "peer:        {} ({dial}; trusted by {kind} {})",
            peer.network,
            path.display()
        )?;
    }
    writeln!(out, "ok")?;
    Ok(true)
}

/// Dials every peer that has an address and reports, per peer, whether a
/// mutually authenticated link came up within `timeout`.
pub(crate) fn probe(
    file: &Path,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<bool, Box<dyn std::error::Error>> {
    let config = BorderConfig::load(file)?;
    let tls = Arc::new(config.tls(1)?);
    let dial = config.dial_list();
    if dial.is_empty() {
        writeln!(out, "no peer has an address to dial")?;
        return Ok(false);
    }
    let node = BgNode::start(NodeConfig {
        tls,
        // Probing only dials; the listener is a private loopback one.
        listen: "127.0.0.1:0".parse()?,
        peers: dial.clone(),
        workers: 1,
        settings: config.settings,
        inbound_capacity: 16,
    })?;
    let deadline = Instant::now() + timeout;
    let mut up = vec![false; dial.len()];
    while Instant::now() < deadline && !up.iter().all(|u| *u) {
        for (i, (network, _)) in dial.iter().enumerate() {
            if node.links_to(network).1 > 0 {
                up[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for ((network, addr), up) in dial.iter().zip(&up) {
        let state = if *up { "up" } else { "DOWN" };
        writeln!(out, "{network} at {addr}: {state}")?;
    }
    write_refusals(node.counters(), out)?;
    Ok(up.iter().all(|u| *u))
}

/// Accepts peers on the configured address for `seconds`, logging each link
/// and refusal, then prints the counters.
pub(crate) fn listen(
    file: &Path,
    seconds: u64,
    workers: usize,
    out: &mut impl Write,
) -> Result<bool, Box<dyn std::error::Error>> {
    let config = BorderConfig::load(file)?;
    let tls = Arc::new(config.tls(1)?);
    let node = BgNode::start(NodeConfig {
        tls,
        listen: config.listen,
        peers: Vec::new(),
        workers,
        settings: config.settings,
        inbound_capacity: 1024,
    })?;
    writeln!(out, "listening on {}", node.local_addr())?;
    out.flush()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut frames = 0u64;
    while Instant::now() < deadline {
        if node
            .inbound()
            .recv_timeout(Duration::from_millis(100))
            .is_ok()
        {
            frames += 1;
        }
    }
    writeln!(out, "frames received: {frames}")?;
    writeln!(
        out,
        "links established: {}",
        BgCounters::get(&node.counters().links_established)
    )?;
    write_refusals(node.counters(), out)?;
    Ok(true)
}

fn write_refusals(counters: &BgCounters, out: &mut impl Write) -> std::io::Result<()> {
    for refusal in Refusal::ALL {
        let n = counters.refused(refusal);
        if n > 0 {
            writeln!(out, "refused {}: {n}", refusal.name())?;
        }
    }
    for reason in CloseReason::ALL {
        let n = counters.closed(reason);
        if n > 0 {
            writeln!(out, "closed {}: {n}", reason.name())?;
        }
    }
    Ok(())
}
