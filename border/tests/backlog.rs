//! Before an established link is read, the endpoint tells its consumer how
//! many bytes wait unread in the link's socket (`Deliver::backlog`): the
//! queue depth the appliance's border admission projects a wait from
//! (engine `runtime/admission.rs`).

mod common;

use std::time::Duration;

use common::*;
use presence_border::{Deliver, PeerIndex};

const P: PeerIndex = PeerIndex(0);
const FRAMES: usize = 20_000;
/// Bytes of one frame (`common::frame`).
const FRAME_BYTES: usize = 8;

/// Records what the endpoint reports and hands on.
#[derive(Default)]
struct Recorder {
    backlogs: Vec<(PeerIndex, usize)>,
    frames: usize,
}

impl Deliver for Recorder {
    fn deliver(&mut self, peer: PeerIndex, _frame: &[u8]) -> bool {
        assert_eq!(peer, P);
        self.frames += 1;
        true
    }

    fn backlog(&mut self, peer: PeerIndex, socket_bytes: usize) {
        self.backlogs.push((peer, socket_bytes));
    }
}

#[test]
fn a_link_read_after_frames_piled_up_reports_its_socket_backlog_first() {
    let (a, b) = (material("a.example"), material("b.example"));
    let mut mesh = Mesh::new();
    let listener = presence_border::bind_listener("127.0.0.1:0".parse().unwrap(), true).unwrap();
    let addr = listener.local_addr().unwrap();
    let y = mesh.add(tls(1, &b, &[&a]), Some(listener), vec![], shard(0, 1));
    let x = mesh.add(
        tls(1, &a, &[&b]),
        None,
        vec![(b.network.clone(), addr)],
        shard(0, 1),
    );
    assert!(mesh.run_until(SECONDS_5, |m| {
        !m.ep(x).dialed(P).is_empty() && m.ep(y).endpoint.peer_workers(P).is_some()
    }));

    // X sends while Y does not read: the frames pile up in Y's socket.
    let mut idle = Recorder::default();
    for seq in 0..FRAMES {
        mesh.send(x, P, None, &frame(u32::try_from(seq).unwrap()))
            .unwrap();
    }
    for _ in 0..50 {
        mesh.step_with(x, &mut idle);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(idle.frames, 0, "Y sent X nothing");

    // Y's next turn: the backlog is reported before any frame is handed on.
    let mut seen = Recorder::default();
    mesh.step_with(y, &mut seen);
    let Some(&(peer, first)) = seen.backlogs.first() else {
        panic!("no backlog reported before the read")
    };
    assert_eq!(peer, P);
    assert!(
        first >= FRAMES * FRAME_BYTES / 2,
        "most of {FRAMES} frames wait in the socket: {first}"
    );
    assert!(
        first <= FRAMES * FRAME_BYTES * 4,
        "no more than was sent, with its framing and TLS: {first}"
    );
    for _ in 0..200 {
        if seen.frames == FRAMES {
            break;
        }
        mesh.step_with(y, &mut seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(seen.frames, FRAMES);
    assert!(
        seen.backlogs.iter().all(|&(p, _)| p == P),
        "{:?}",
        seen.backlogs
    );
    let last = seen.backlogs.last().map_or(0, |&(_, bytes)| bytes);
    assert!(last < first, "the backlog drains: {:?}", seen.backlogs);
}
