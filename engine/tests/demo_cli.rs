//! The README's main command, `presence-gw demo`, runs from the repository
//! root and tells its whole story: the thirteen steps, watching across the
//! networks, the load, a clean stop.

use std::path::Path;
use std::process::Command;

#[test]
fn the_demo_traces_thirteen_steps_runs_a_load_and_stops_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("demo-cli-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_presence-gw"))
        .current_dir(&root)
        .args(["demo", "--seconds", "1", "--subscribers", "200", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in 1..=13 {
        assert!(
            text.contains(&format!("step {step:>2}: ")),
            "step {step} missing:\n{text}"
        );
    }
    assert!(text.contains("A's device got: Attached"), "{text}");
    // Watching: one subscription granted with B's status, two
    // notifications (B detached, then attached again), an unsubscription.
    assert!(
        text.contains("A's device got the subscription's answer (request"),
        "{text}"
    );
    assert!(text.contains("got notification 1 of request"), "{text}");
    assert!(text.contains("Detached"), "{text}");
    assert!(text.contains("got notification 2 of request"), "{text}");
    assert!(text.contains("A unsubscribed\n"), "{text}");
    let answered = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("sent "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(answered > 0, "the load was answered:\n{text}");
    assert!(text.contains("stopped cleanly"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
