//! `presence-load` as an operator runs it: the embedded two networks, a mix
//! of every request class, the ceiling, the JSON line and the percentile
//! file.

use std::path::Path;
use std::process::Command;

fn table() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/msisdn-prefixes.csv")
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("load-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `presence-load ARGS --table … --networks DIR/networks`, run to its end.
fn load_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_presence-load"))
        .args(args)
        .arg("--table")
        .arg(table())
        .arg("--networks")
        .arg(dir.join("networks"))
        .output()
        .unwrap()
}

/// A --max search of two rates, from 1,000/s, half a second each.
const SEARCH_TWO_RATES: [&str; 7] = [
    "--max",
    "--rate",
    "1000",
    "--duration",
    "0.5",
    "--steps",
    "2",
];

fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line {line:?}: {e}"))
}

#[test]
fn embedded_mix_is_answered_as_each_class_should_be() {
    let dir = scratch("mix");
    let percentiles = dir.join("latency.hgrm");
    let out = Command::new(env!("CARGO_BIN_EXE_presence-load"))
        .args(["--embedded", "--watchers", "300", "--targets", "300"])
        .args(["--rate", "1500", "--duration", "2", "--json"])
        .args(["--internal", "20", "--not-permitted", "20"])
        .args(["--publish", "10", "--subscribe", "5"])
        .args([
            "--ceiling",
            "--ceiling-start",
            "20000",
            "--ceiling-seconds",
            "0.3",
            "--steps",
            "2",
        ])
        .arg("--table")
        .arg(table())
        .arg("--networks")
        .arg(dir.join("networks"))
        .arg("--percentiles")
        .arg(&percentiles)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = last_json(&stdout);
    assert_eq!(json["sent"], 3000, "{json}");
    assert_eq!(json["answered"], 3000, "{json}");
    for zero in ["timeouts", "lost", "wrong", "duplicates", "shed"] {
        assert_eq!(json[zero], 0, "{zero} in {json}");
    }
    // Every request answered, right, none lost. "No loss" also asks that
    // at most 50 ms of requests be unanswered when the 2 s window closes;
    // on a shared 2-vCPU CI machine running other tests, a stall of the
    // whole VM (100–300 ms, seen on 2026-12-08) at that moment leaves more,
    // and the exit status says so. That alone is not what this test is
    // about (the classes' answers are): it is accepted, and named.
    let late_only = json["no_loss"] == false
        && json["backlog_at_end"].as_u64().unwrap() > 0
        && json["max_gap_ms"].as_f64().unwrap() >= 50.0;
    assert!(
        out.status.success() || late_only,
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(json["no_loss"] == true || late_only, "{json}");
    for key in ["p50_us", "p99_us", "p999_us", "max_us", "throughput_qps"] {
        assert!(json[key].as_f64().unwrap() > 0.0, "{key} in {json}");
    }
    assert!(json["ceiling_qps"].as_f64().unwrap() >= 20_000.0, "{json}");
    // No interval without an answer while requests were out is longer than
    // the slowest answer: those out at its start waited through it.
    let gap_ms = json["max_gap_ms"].as_f64().unwrap();
    let max_ms = json["max_us"].as_f64().unwrap() / 1e3;
    assert!(gap_ms > 0.0 && gap_ms <= max_ms + 0.001, "{json}");
    // Embedded, the harness's process holds both appliances: its CPU time
    // per query is reported.
    assert!(
        json["cpu_us_per_query"]["harness with A and B"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{json}"
    );
    // Each appliance's hand-offs and wake-ups per query are reported; with
    // one worker nothing is handed over.
    for side in ["A", "B"] {
        assert_eq!(json["cross_worker_per_query"][side], 0.0, "{json}");
        assert!(
            json["turns_per_query"][side].as_f64().unwrap() > 0.0,
            "{json}"
        );
    }
    // Every class was sent and answered as it should be.
    for row in [
        "external permitted       attached",
        "external not permitted   not_available",
        "internal permitted",
        "internal not permitted   not_available",
        "publish                  publish_ok",
        "subscribe                ",
    ] {
        assert!(stdout.contains(row), "no {row:?} in\n{stdout}");
    }
    // Subscriptions are granted (answered with the target's status, which
    // `wrong` 0 above checks), and the publications among the targets
    // reach their watchers as notifications.
    assert!(
        !stdout.contains("subscribe                refused"),
        "{stdout}"
    );
    assert!(json["notifications"].as_u64().unwrap() > 0, "{json}");
    // Progress lines go to stderr, once a second.
    assert!(stderr.contains("offered 1,500/s"), "{stderr}");
    let hgrm = std::fs::read_to_string(&percentiles).unwrap();
    assert!(
        hgrm.starts_with("       Value     Percentile TotalCount"),
        "{hgrm}"
    );
    assert!(hgrm.contains("#[Max     ="), "{hgrm}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_run_reuses_the_generated_networks_and_max_finds_a_clean_rate() {
    let dir = scratch("max");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--watchers",
            "200",
            "--targets",
            "200",
            "--json",
            "--no-warm-up",
        ];
        args.extend_from_slice(extra);
        let out = load_in(&dir, &args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, stderr) = run(&["--rate", "500", "--duration", "0.5"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("generated"), "{stderr}");
    let (code, stdout, stderr) = run(&SEARCH_TWO_RATES);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("reused"), "{stderr}");
    let json = last_json(&stdout);
    assert_eq!(json["search"], true);
    // Two doublings from 1,000/s: the best clean one is reported (2,000/s
    // unless the machine, busy with other tests, lost a request there).
    assert!(
        json["offered_qps"] == 2000.0 || json["offered_qps"] == 1000.0,
        "{json}\n{stdout}\n{stderr}"
    );
    assert_eq!(json["no_loss"], true, "{json}\n{stdout}\n{stderr}");
    assert!(stdout.contains("result: the highest rate carried with no loss"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_folder_the_harness_did_not_generate_is_never_cleared() {
    let dir = scratch("keep");
    std::fs::write(dir.join("precious.txt"), "operator data").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_presence-load"))
        .args(["--watchers", "100", "--targets", "100", "--duration", "0.2"])
        .arg("--table")
        .arg(table())
        .arg("--networks")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not generated by presence-load"),
        "{stderr}"
    );
    assert!(
        dir.join("precious.txt").exists(),
        "the folder was left alone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_presence-load"))
        .args(["--publish", "80", "--subscribe", "30"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("more than 100"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_presence-load"))
        .args(["--target", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--networks"));
}

#[test]
fn overload_offers_a_multiple_of_the_highest_clean_rate_and_reports_how_it_was_met() {
    let dir = scratch("overload");
    let out = load_in(
        &dir,
        &[
            "--embedded",
            "--watchers",
            "200",
            "--targets",
            "200",
            "--overload",
            "2",
            "--json",
            "--no-warm-up",
        ]
        .into_iter()
        .chain(SEARCH_TWO_RATES)
        .collect::<Vec<_>>(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("overload result"), "{stdout}");
    let json = last_json(&stdout);
    let best = json["offered_qps"].as_f64().unwrap();
    assert_eq!(
        json["overload_offered_qps"].as_f64().unwrap(),
        2.0 * best,
        "{json}"
    );
    let sent = json["overload_sent"].as_u64().unwrap();
    assert!(sent as f64 >= 0.99 * 2.0 * best * 0.5, "{json}");
    let goodput = json["overload_goodput_qps"].as_f64().unwrap();
    let shed = json["overload_shed"].as_u64().unwrap();
    let timeouts = json["overload_timeouts"].as_u64().unwrap();
    // What was offered is answered well in the window, shed, or counted as
    // timed out (a few answered well just after the window are none).
    let good = (goodput * 0.5).round() as u64;
    assert!(good > 0, "{json}");
    let accounted = good + shed + timeouts;
    assert!(
        accounted <= sent && accounted * 100 >= sent * 95,
        "requests accounted for: {json}"
    );
    // When anything was shed, how soon its answer came is reported.
    if shed > 0 {
        let p50 = json["overload_shed_p50_us"].as_u64().unwrap();
        let p99 = json["overload_shed_p99_us"].as_u64().unwrap();
        assert!(p50 >= 1 && p50 <= p99, "{json}");
    }
    // Where the appliances' admission shed is reported; B sends A only
    // answers, so A's border has no query to shed.
    let shed_where = &json["overload_shed_where"];
    for key in ["a_device", "b_border", "b_device"] {
        assert!(shed_where[key].is_u64(), "{key}: {json}");
    }
    assert_eq!(shed_where["a_border"].as_u64(), Some(0), "{json}");
    // --overload needs --max, and a factor from 1 to 100.
    for bad in [
        &["--overload", "2"][..],
        &["--max", "--overload", "0.5"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_presence-load"))
            .args(["--embedded"])
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_request_per_datagram_is_answered_whole_by_each_io_backend() {
    // Every request its own datagram, so a burst goes as GSO runs: with
    // GRO they arrive coalesced at the appliance and the answers at the
    // harness; with mmsg one by one. Either way every request is answered
    // once and rightly, and the echo gets every datagram back.
    for backend in ["gro", "mmsg", "uring"] {
        let dir = scratch(&format!("per-datagram-{backend}"));
        let out = load_in(
            &dir,
            &[
                "--embedded",
                "--watchers",
                "300",
                "--targets",
                "300",
                "--per-datagram",
                "1",
                "--io-backend",
                backend,
                "--rate",
                "3000",
                "--duration",
                "1",
                "--ceiling",
                "--ceiling-start",
                "20000",
                "--ceiling-seconds",
                "0.3",
                "--steps",
                "2",
                "--json",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
        let json = last_json(&stdout);
        assert_eq!(json["answered"], json["sent"], "{backend}: {json}");
        assert_eq!(json["wrong"], 0, "{backend}: {json}");
        assert_eq!(json["duplicates"], 0, "{backend}: {json}");
        assert!(json["ceiling_qps"].as_f64().unwrap() > 0.0, "{json}");
    }
}

/// A `presence-echo` process, killed if a test ends without stopping it.
struct Echo(Option<std::process::Child>);

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `presence-echo` on loopback: the line it prints once it listens, and
/// its address.
fn start_echo(args: &[&str]) -> (Echo, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut echo = Command::new(env!("CARGO_BIN_EXE_presence-echo"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(echo.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening addr=")
        .unwrap_or_else(|| panic!("{line:?}"))
        .parse()
        .unwrap();
    (Echo(Some(echo)), addr)
}

/// SIGINT, then the echo's closing JSON line.
fn stop_echo(mut echo: Echo) -> serde_json::Value {
    use std::io::Read;
    let mut echo = echo.0.take().unwrap();
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe { libc::kill(echo.id() as i32, libc::SIGINT) };
    let status = echo.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    echo.stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    last_json(&rest)
}

#[test]
fn presence_echo_echoes_until_stopped_and_reports_what_it_did() {
    let (echo, addr) = start_echo(&["--io-backend", "mmsg", "--no-gso"]);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    for i in 0..3u8 {
        client.send_to(&[i; 64], addr).unwrap();
        let mut buf = [0u8; 128];
        let (len, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..len], from), (&[i; 64][..], addr), "echoed whole");
    }
    let json = stop_echo(echo);
    assert_eq!(json["backend"], "mmsg");
    assert_eq!(json["echoed"], 3, "{json}");
    assert!(
        json["cpu_us_per_datagram"].as_f64().unwrap() > 0.0,
        "{json}"
    );
}

#[test]
fn ceiling_at_measures_an_echo_already_running_and_stops() {
    let dir = scratch("ceiling-at");
    let (echo, addr) = start_echo(&["--io-backend", "mmsg"]);
    let addr = addr.to_string();
    let out = load_in(
        &dir,
        &[
            "--watchers",
            "200",
            "--targets",
            "200",
            "--ceiling-at",
            &addr,
            "--ceiling-start",
            "1000",
            "--ceiling-seconds",
            "0.5",
            "--steps",
            "2",
            "--per-datagram",
            "1",
            "--no-gso",
            "--json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let json = last_json(&stdout);
    assert_eq!(json["ceiling_at"], addr.as_str());
    assert!(json["ceiling_qps"].as_f64().unwrap() >= 900.0, "{json}");
    assert_eq!(json["send_errors"], 0, "{json}");
    assert!(json.get("answered").is_none(), "no appliances: {json}");
    assert!(stdout.contains("presence-load: ceiling only"), "{stdout}");
    let echoed = stop_echo(echo)["echoed"].as_u64().unwrap();
    assert!(echoed >= 1000, "the echo carried the search: {echoed}");
    let _ = std::fs::remove_dir_all(&dir);
}
