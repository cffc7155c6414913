//! `presence-gw pki` as an operator runs it: two networks set up from the
//! command line, material a border gateway loads, and the refusals.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use presence_border::tls::TrustFile;
use presence_border::{BgTls, NetworkName};

fn pki(args: &[&str]) -> (String, String, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_presence-gw"))
        .arg("pki")
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code(),
    )
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pki-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn two_networks_made_with_pki_load_as_each_others_peers() {
    let dir = scratch("two");
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert_eq!(
        pki(&["ca", "--network", "alpha.example", "--out", s(&a)]).2,
        Some(0)
    );
    assert_eq!(
        pki(&[
            "bg",
            "--network",
            "alpha.example",
            "--ca-dir",
            s(&a),
            "--out",
            s(&a)
        ])
        .2,
        Some(0)
    );
    let (out, _, code) = pki(&["init", "--network", "beta.example", "--out", s(&b)]);
    assert_eq!(code, Some(0), "{out}");
    for key in [a.join("ca.key"), a.join("bg.key"), b.join("bg.key")] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} is owner-only", key.display());
    }
    let alpha: NetworkName = "alpha.example".parse().unwrap();
    let beta: NetworkName = "beta.example".parse().unwrap();
    let a_tls = BgTls::load(
        1,
        alpha.clone(),
        &a.join("bg.pem"),
        &a.join("bg.key"),
        &[(beta.clone(), TrustFile::Ca(b.join("ca.pem")))],
    )
    .unwrap();
    assert_eq!(a_tls.peers().index_of(&beta).map(|p| p.0), Some(0));
    // Pinning B's BG certificate works from the same files.
    BgTls::load(
        1,
        alpha,
        &a.join("bg.pem"),
        &a.join("bg.key"),
        &[(beta, TrustFile::Pinned(b.join("bg.pem")))],
    )
    .unwrap();

    let (shown, _, code) = pki(&["show", s(&b.join("bg.pem"))]);
    assert_eq!(code, Some(0));
    assert!(shown.contains("DNSName(beta.example)"), "{shown}");
    assert!(shown.contains("is CA:      false"), "{shown}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pki_refuses_to_overwrite_keys_or_sign_for_another_network() {
    let dir = scratch("refuse");
    assert_eq!(
        pki(&["init", "--network", "alpha.example", "--out", s(&dir)]).2,
        Some(0)
    );
    let before = std::fs::read(dir.join("bg.key")).unwrap();

    let (_, err, code) = pki(&["init", "--network", "alpha.example", "--out", s(&dir)]);
    assert_eq!(code, Some(2));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(dir.join("bg.key")).unwrap(), before);

    let (_, err, code) = pki(&[
        "bg",
        "--network",
        "beta.example",
        "--ca-dir",
        s(&dir),
        "--out",
        s(&dir.join("x")),
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("may only sign for [\"alpha.example\"]"),
        "{err}"
    );

    let (_, err, code) = pki(&["ca", "--network", "Alpha", "--out", s(&dir.join("y"))]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not allowed"), "{err}");

    // Rotation: --force writes a new key in place.
    let (_, _, code) = pki(&[
        "bg",
        "--network",
        "alpha.example",
        "--ca-dir",
        s(&dir),
        "--out",
        s(&dir),
        "--force",
    ]);
    assert_eq!(code, Some(0));
    assert_ne!(std::fs::read(dir.join("bg.key")).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pki_writes_no_key_through_a_planted_file_and_keeps_its_folder_private() {
    // A planted temporary file, a symlink to a file the attacker wants
    // overwritten: refused, the target untouched.
    let dir = scratch("planted");
    std::fs::create_dir_all(&dir).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("bg.key.tmp")).unwrap();
    let (_, err, code) = pki(&["init", "--network", "alpha.example", "--out", s(&dir)]);
    assert_ne!(code, Some(0), "refused");
    assert!(err.contains("bg.key.tmp"), "names the planted file: {err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(!dir.join("bg.key").exists());

    // Under umask 000, the folder pki creates is 0700, keys 0600,
    // certificates 0644.
    let fresh = scratch("umask").join("deep").join("pki");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {} pki init --network beta.example --out {}",
            env!("CARGO_BIN_EXE_presence-gw"),
            s(&fresh)
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fresh), 0o700, "the folder");
    assert_eq!(mode(fresh.parent().unwrap()), 0o700, "and its new parents");
    assert_eq!(mode(&fresh.join("bg.key")), 0o600);
    assert_eq!(mode(&fresh.join("bg.pem")), 0o644);
}
