//! Connecting two networks the way `docs/operations.md` tells an operator:
//! `pki init` on each side, exchange CA certificates, write the `[border]`
//! sections, `border check`, then `border listen` on one side and
//! `border probe` on the other — two processes on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn gw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_presence-gw"))
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("border-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn init(dir: &Path, network: &str) {
    let status = gw()
        .args(["pki", "init", "--network", network, "--out"])
        .arg(dir.join("pki"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn config(dir: &Path, me: &str, peer: &str, peer_ca: &Path, peer_addr: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dir.join("peers")).unwrap();
    std::fs::copy(peer_ca, dir.join("peers").join(format!("{peer}-ca.pem"))).unwrap();
    let address = peer_addr
        .map(|a| format!("address = \"{a}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[border]\nnetwork = \"{me}\"\nlisten = \"127.0.0.1:0\"\ncertificate = \"pki/bg.pem\"\nprivate_key = \"pki/bg.key\"\n\n[[border.peers]]\nnetwork = \"{peer}\"\n{address}ca = \"peers/{peer}-ca.pem\"\n"
    );
    let file = dir.join("gw.toml");
    std::fs::write(&file, text).unwrap();
    file
}

struct Listening {
    child: Child,
    addr: String,
}

fn listen(config: &Path) -> Listening {
    let mut child = gw()
        .args(["border", "listen", "--seconds", "20", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    Listening { child, addr }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_networks_connect_with_the_documented_steps() {
    let (a, b) = (scratch("a"), scratch("b"));
    init(&a, "alpha.example");
    init(&b, "beta.example");
    let b_config = config(
        &b,
        "beta.example",
        "alpha.example",
        &a.join("pki/ca.pem"),
        None,
    );
    let check = gw()
        .args(["border", "check", "--config"])
        .arg(&b_config)
        .output()
        .unwrap();
    let text = String::from_utf8(check.stdout).unwrap();
    assert!(check.status.success(), "{text}");
    assert!(
        text.contains("peer:        alpha.example (accept only; trusted by ca"),
        "{text}"
    );

    let beta = listen(&b_config);
    let a_config = config(
        &a,
        "alpha.example",
        "beta.example",
        &b.join("pki/ca.pem"),
        Some(&beta.addr),
    );
    let probe = gw()
        .args(["border", "probe", "--config"])
        .arg(&a_config)
        .output()
        .unwrap();
    let text = String::from_utf8(probe.stdout).unwrap();
    assert!(probe.status.success(), "{text}");
    assert!(
        text.contains(&format!("beta.example at {}: up", beta.addr)),
        "{text}"
    );

    // A network that trusts the wrong CA for its peer is told so.
    let c = scratch("c");
    init(&c, "gamma.example");
    let wrong = config(
        &a,
        "alpha.example",
        "beta.example",
        &c.join("pki/ca.pem"),
        Some(&beta.addr),
    );
    let probe = gw()
        .args(["border", "probe", "--timeout-ms", "1500", "--config"])
        .arg(&wrong)
        .output()
        .unwrap();
    let text = String::from_utf8(probe.stdout).unwrap();
    assert_eq!(probe.status.code(), Some(1), "{text}");
    assert!(text.contains("DOWN"), "{text}");
    assert!(text.contains("refused unknown_ca"), "{text}");
    for dir in [a, b, c] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_broken_config_is_refused_with_file_field_and_reason() {
    let dir = scratch("broken");
    let file = dir.join("gw.toml");
    std::fs::write(&file, "[border]\nnetwork = \"alpha.example\"\nlisten = \"nowhere\"\ncertificate = \"x\"\nprivate_key = \"y\"\n").unwrap();
    let out = gw()
        .args(["border", "check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("{}: border.listen: ", file.display())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
