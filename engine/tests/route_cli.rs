//! `presence-gw route` as an operator runs it: the shipped numbering table,
//! MSISDNs on stdin, answers on stdout in order, invalid lines on stderr with
//! their line numbers, and the exit status.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(file)
}

fn run_route(args: &[&str], stdin: &str) -> (String, String, Option<i32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_presence-gw"))
        .arg("route")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A run that refuses its table exits without reading: a broken pipe here
    // is expected then, and the exit status tells the rest.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code(),
    )
}

#[test]
fn routes_numbers_in_order_with_the_shipped_table() {
    let table = data("msisdn-prefixes.csv");
    // 1242357… is batelco.bs in the shared table; 1 matches no prefix.
    let (out, err, code) = run_route(
        &["--table", table.to_str().unwrap()],
        "12423571234\n1\n12423571235\n",
    );
    assert_eq!(out, "12423571234,batelco.bs\n1,\n12423571235,batelco.bs\n");
    assert_eq!(err, "");
    assert_eq!(code, Some(0));
}

#[test]
fn invalid_lines_are_answered_reported_and_fail_the_run() {
    let table = data("msisdn-prefixes.csv");
    let (out, err, code) = run_route(
        &["--table", table.to_str().unwrap()],
        "12423571234\nabc\n01242\n12423571235\n",
    );
    assert_eq!(
        out,
        "12423571234,batelco.bs\nabc,!invalid\n01242,!invalid\n12423571235,batelco.bs\n"
    );
    assert_eq!(
        err,
        "line 2: invalid MSISDN: not a digit at position 0\nline 3: invalid MSISDN: leading zero\n"
    );
    assert_eq!(code, Some(1));
}

#[test]
fn ported_file_overrides_the_table() {
    let table = data("msisdn-prefixes.csv");
    let ported = std::env::temp_dir().join(format!("route-cli-ported-{}.csv", std::process::id()));
    std::fs::write(&ported, "msisdn,network\n12423571234,ported.bs\n").unwrap();
    let (out, _, code) = run_route(
        &[
            "--table",
            table.to_str().unwrap(),
            "--ported",
            ported.to_str().unwrap(),
        ],
        "12423571234\n12423571235\n",
    );
    std::fs::remove_file(&ported).unwrap();
    assert_eq!(out, "12423571234,ported.bs\n12423571235,batelco.bs\n");
    assert_eq!(code, Some(0));
}

#[test]
fn a_bad_table_file_is_refused_with_line_and_reason() {
    let bad = std::env::temp_dir().join(format!("route-cli-bad-{}.csv", std::process::id()));
    std::fs::write(&bad, "prefix,network\n44,a.gb\n44x,b.gb\n").unwrap();
    let (out, err, code) = run_route(&["--table", bad.to_str().unwrap()], "441\n");
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(out, "");
    assert!(err.contains(":3: bad prefix \"44x\""), "{err}");
    assert_eq!(code, Some(2));
}
