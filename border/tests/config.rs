//! The `[border]` configuration: refused with file, field and reason when
//! wrong; reloaded from files to rotate certificates without losing a frame.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use presence_border::pki::{self, NetworkMaterial, Validity};
use presence_border::{BgCounters, BorderConfig, CloseReason, ConfigError};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("border-config-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn parse(text: &str) -> Result<BorderConfig, ConfigError> {
    BorderConfig::parse(text, Path::new("/etc/presence-gw/alpha.toml"))
}

const GOOD: &str = r#"
[border]
network = "alpha.example"
listen = "127.0.0.1:0"
certificate = "pki/bg.pem"
private_key = "pki/bg.key"
keepalive_ms = 100
dead_after_ms = 500

[[border.peers]]
network = "beta.example"
address = "127.0.0.1:7443"
ca = "peers/beta-ca.pem"

[[border.peers]]
network = "gamma.example"
pinned_certificate = "/srv/gamma-bg.pem"

[elsewhere]
ignored = true
"#;

#[test]
fn a_good_section_resolves_paths_from_the_config_folder() {
    let config = parse(GOOD).unwrap();
    assert_eq!(config.network.as_str(), "alpha.example");
    assert_eq!(config.certificate, Path::new("/etc/presence-gw/pki/bg.pem"));
    assert_eq!(config.peers.len(), 2);
    assert_eq!(
        config.peers[0].trust.path(),
        Path::new("/etc/presence-gw/peers/beta-ca.pem")
    );
    assert_eq!(config.peers[1].trust.path(), Path::new("/srv/gamma-bg.pem"));
    assert_eq!(
        config.dial_list().len(),
        1,
        "gamma is accepted from, not dialed"
    );
    assert_eq!(config.settings.link.keepalive_ms, 100);
}

#[test]
fn every_error_names_the_file_the_field_and_the_reason() {
    let cases = [
        (
            GOOD.replace("alpha.example", "Alpha"),
            "border.network",
            "'A'",
        ),
        (
            GOOD.replace("127.0.0.1:7443", "beta:7443"),
            "border.peers[0].address",
            "beta:7443",
        ),
        (
            GOOD.replace("pinned_certificate = \"/srv/gamma-bg.pem\"", ""),
            "border.peers[1].ca",
            "exactly one",
        ),
        (
            GOOD.replace("keepalive_ms = 100", "keepalive_ms = 900"),
            "border.dead_after_ms",
            "exceed",
        ),
        (GOOD.replace("listen =", "listne ="), "border", "listne"),
        (
            GOOD.replace("gamma.example", "beta.example"),
            "border.peers[1].network",
            "twice",
        ),
        ("[border".to_string(), "-", ""),
    ];
    for (text, field, reason) in cases {
        let error = parse(&text).unwrap_err();
        assert_eq!(error.file, Path::new("/etc/presence-gw/alpha.toml"));
        assert_eq!(error.field, field, "{error}");
        assert!(error.reason.contains(reason), "{error}");
        assert!(error
            .to_string()
            .starts_with("/etc/presence-gw/alpha.toml: "));
    }
    // Files are read when TLS is built: a missing CA names its peer.
    let error = parse(GOOD).unwrap().tls(1).unwrap_err();
    assert_eq!(error.field, "border.certificate", "{error}");
}

fn write_config(
    dir: &Path,
    me: &NetworkMaterial,
    peer: &NetworkMaterial,
    peer_addr: Option<std::net::SocketAddr>,
) -> PathBuf {
    me.write_to(&dir.join("pki"), true).unwrap();
    std::fs::create_dir_all(dir.join("peers")).unwrap();
    std::fs::write(
        dir.join("peers").join(format!("{}-ca.pem", peer.network)),
        &peer.ca.cert_pem,
    )
    .unwrap();
    let address = peer_addr
        .map(|a| format!("address = \"{a}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[border]\nnetwork = \"{}\"\nlisten = \"127.0.0.1:0\"\ncertificate = \"pki/bg.pem\"\nprivate_key = \"pki/bg.key\"\nkeepalive_ms = 100\ndead_after_ms = 1500\nbackoff_min_ms = 20\nbackoff_max_ms = 200\n\n[[border.peers]]\nnetwork = \"{}\"\n{address}ca = \"peers/{}-ca.pem\"\n",
        me.network, peer.network, peer.network
    );
    let file = dir.join("gw.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn rotating_the_certificate_files_and_reloading_drops_nothing() {
    let (a, b) = (material("a.example"), material("b.example"));
    let (dir_a, dir_b) = (scratch("a"), scratch("b"));
    let b_file = write_config(&dir_b, &b, &a, None);
    let b_config = BorderConfig::load(&b_file).unwrap();
    let node_b = start(
        Arc::new(b_config.tls(1).unwrap()),
        vec![],
        1,
        b_config.settings,
    );
    let a_file = write_config(&dir_a, &a, &b, Some(node_b.local_addr()));
    let a_config = BorderConfig::load(&a_file).unwrap();
    let node_a = start(
        Arc::new(a_config.tls(1).unwrap()),
        a_config.dial_list(),
        2,
        a_config.settings,
    );
    assert!(node_a.wait_for_links(&b.network, 2, SECONDS_5));

    // The operator rotates A's BG key: `presence-gw pki bg --force`.
    let rotated =
        pki::issue_bg_certificate(&a.ca, &a.network, Validity::days_from_now(30)).unwrap();
    let mut seq = 0u32;
    let mut send_some = |node: &presence_border::node::BgNode, n: u32| {
        for _ in 0..n {
            while !node.send((seq % 2) as usize, &b.network, frame(seq)) {
                std::thread::sleep(Duration::from_micros(200));
            }
            seq += 1;
        }
    };
    send_some(&node_a, 3000);
    pki::write_pair(
        &rotated,
        &dir_a.join("pki/bg.pem"),
        &dir_a.join("pki/bg.key"),
        true,
    )
    .unwrap();
    let reloaded = BorderConfig::load(&a_file).unwrap();
    let tls2 = Arc::new(reloaded.tls(2).unwrap());
    node_a.reload(tls2, reloaded.dial_list());
    send_some(&node_a, 3000);
    assert!(wait_until(SECONDS_5, || node_a
        .counters()
        .closed(CloseReason::Rotated)
        >= 2));
    send_some(&node_a, 3000);

    let got = recv(&node_b, 9000, Duration::from_secs(10));
    let mut seqs: Vec<u32> = got.iter().map(|f| seq_of(&f.frame)).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        9000,
        "no frame lost or doubled across the rotation"
    );
    let counters = node_a.counters();
    assert_eq!(BgCounters::get(&counters.send_no_link), 0);
    assert_eq!(BgCounters::get(&counters.send_overloaded), 0);
    assert_eq!(
        BgCounters::get(&counters.links_established),
        4,
        "2 links, then 2 with the new key"
    );
    let _ = (
        std::fs::remove_dir_all(dir_a),
        std::fs::remove_dir_all(dir_b),
    );
}
