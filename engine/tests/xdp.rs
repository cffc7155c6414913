//! Network A's appliance with `[io] backend = "xdp"`: both appliances run
//! in a network namespace of the test's own, A's client address on one
//! end of a veth pair, and A's devices send from the other end, so their
//! datagrams cross a real link into the XDP program and the AF_XDP port.
//! Needs root, as CI runs.

mod common;
use common::{metric, table};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use presence_codec::{Msisdn, Outcome};
use presence_engine::lab::netns::VethLab;
use presence_engine::lab::{self, DeviceClient, SpawnedAppliance};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xdp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `presence-gw run` of this build inside the lab's namespace.
fn start_inside(lab: &VethLab, config: &Path, log: &Path) -> SpawnedAppliance {
    SpawnedAppliance::start(
        Path::new(env!("CARGO_BIN_EXE_presence-gw")),
        config,
        Some(log),
        |command| lab.command_inside(command).unwrap(),
    )
    .unwrap()
}

#[test]
fn devices_across_a_veth_pair_are_served_through_the_af_xdp_port() {
    let lab = VethLab::new().unwrap();
    let root = scratch("appliance");
    let (a, b) =
        lab::write_two_networks(&root, &table(), "o2.gb", "t-mobile.de", 100, 100).unwrap();
    let b_config = lab::write_config(&b, &a, &table(), 1, None, true).unwrap();
    let mut node_b = start_inside(&lab, &b_config, &root.join("b.log"));
    let a_config = lab::write_config(&a, &b, &table(), 2, Some(node_b.border), true).unwrap();
    let a_text = std::fs::read_to_string(&a_config)
        .unwrap()
        .replace(
            "client = \"127.0.0.1:0\"",
            &format!("client = \"{}:0\"", lab.inner_ip),
        )
        .replace("backend = \"auto\"", "backend = \"xdp\"");
    assert!(a_text.contains("backend = \"xdp\""), "{a_text}");
    std::fs::write(&a_config, &a_text).unwrap();
    let a_log = root.join("a.log");
    let mut node_a = start_inside(&lab, &a_config, &a_log);
    assert_eq!(node_a.client.ip(), std::net::IpAddr::V4(lab.inner_ip));
    assert!(
        lab.xdp_attached(),
        "A attached its program to the pair's inner end"
    );
    lab::write_config(&b, &a, &table(), 1, Some(node_a.border), true).unwrap();
    node_b.signal(libc::SIGHUP).unwrap();

    // B's devices, inside the namespace: even subscribers are attached.
    let b_client = node_b.client;
    let attached: Vec<_> = b.subscribers.iter().step_by(2).cloned().collect();
    lab.inside(move || {
        DeviceClient::new(b_client)
            .unwrap()
            .publish_attached(&attached)
            .unwrap()
    })
    .unwrap()
    .join()
    .unwrap();

    // A's devices, from this namespace, across the pair.
    let mut client = DeviceClient::new(node_a.client).unwrap();
    let n = a.subscribers.len();
    let ask = |client: &mut DeviceClient, j: usize| {
        let (watcher, credential) = &a.subscribers[(j * 7) % n];
        let target: Msisdn = b.subscribers[j].0;
        client
            .query(&[(*watcher, credential.as_str(), target)])
            .unwrap();
        client.answers(1, Duration::from_millis(500))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answers = ask(&mut client, 0);
        if answers
            .iter()
            .any(|x| matches!(x.outcome, Outcome::Attached { .. }))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no attached answer: {answers:?}\n{}",
            std::fs::read_to_string(&a_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for j in 0..40 {
        let answers = ask(&mut client, j);
        assert_eq!(answers.len(), 1, "query {j} answered once");
        let attached = matches!(answers[0].outcome, Outcome::Attached { .. });
        assert_eq!(attached, j % 2 == 0, "{:?}", answers[0]);
    }

    // The port carried them, and said so. The interface has one receive
    // queue, so only worker 0 has a port: it hands worker 1's watchers'
    // queries over, as for any datagram that reached the wrong worker.
    // (Workers publish their counters every second: wait for them.)
    let metrics = node_a.metrics.unwrap();
    let (backend0, backend1, received, sent) = lab
        .inside(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let read = (
                    metric(metrics, "presence_io_backend{worker=\"0\",backend=\"xdp\"}"),
                    metric(
                        metrics,
                        "presence_io_backend{worker=\"1\",backend=\"mmsg\"}",
                    ),
                    metric(
                        metrics,
                        "presence_xdp_frames_total{worker=\"0\",direction=\"received\"}",
                    ),
                    metric(
                        metrics,
                        "presence_xdp_frames_total{worker=\"0\",direction=\"sent\"}",
                    ),
                );
                if read.2 >= 41 || Instant::now() > deadline {
                    return read;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        (backend0, backend1),
        (1, 1),
        "worker 0 on xdp, worker 1 on mmsg"
    );
    assert!(received >= 41, "{received} device datagrams through AF_XDP");
    // Worker 0 answers its own watchers' queries as frames; worker 1
    // (no port) answers the others' through the client socket.
    assert!(sent > 0 && sent <= received, "{sent} answers as frames");

    // A clean stop takes the program off the interface.
    assert_eq!(node_a.terminate(Duration::from_secs(10)), Some(0));
    assert!(!lab.xdp_attached(), "the program left with the appliance");
    node_b.terminate(Duration::from_secs(10));
}
