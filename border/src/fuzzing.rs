//! Fuzz entry point for the border gateway's inbound path after the
//! handshake (`fuzz/fuzz_targets/bg_inbound.rs`; the corpus replays in the
//! test suite).
//!
//! Each input gets a fresh, real TLS 1.3 session between an authenticated
//! peer (network A, a raw rustls client, so it can send what a real BG never
//! would) and our accepting [`Link`] (network B), in memory. The input is
//! then a script of operations: plaintext bytes through the session (any
//! stream, well framed or not), raw bytes spliced into the ciphertext, a
//! close_notify, clock advances. Properties:
//! - the link never panics and never reads past an error: once it returns
//!   one, the session is over;
//! - its first record is its hello (§6.1);
//! - every frame it hands on is exactly what the §6 reference parser finds
//!   in the plaintext sent so far, in order, attributed to peer A, never
//!   empty and never over the maximum, less the peer's first hello (kept as
//!   [`Link::peer_shard`], never handed on);
//! - it fails with a stream error exactly when the reference parser does,
//!   and with a bad hello exactly at a second or malformed hello.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

use presence_codec::{encode_stream_frame, split_stream_frame, LinkHello};
use rustls::ClientConnection;

use crate::counters::BgCounters;
use crate::identity::PeerIndex;
use crate::link::{CloseReason, Link, LinkError, LinkSettings};
use crate::pki::NetworkMaterial;
use crate::tls::BgTls;

/// A byte pipe that says `WouldBlock` when empty, like a non-blocking socket.
#[derive(Default)]
struct Pipe(VecDeque<u8>);

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.0.read(buf)?;
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Setup {
    a: Arc<BgTls>,
    b: Arc<BgTls>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let a = NetworkMaterial::generate(&"a.example".parse().expect("name")).expect("pki");
        let b = NetworkMaterial::generate(&"b.example".parse().expect("name")).expect("pki");
        Setup {
            a: Arc::new(a.tls(1, &[&b]).expect("tls")),
            b: Arc::new(b.tls(1, &[&a]).expect("tls")),
        }
    })
}

/// Moves ciphertext between the two sides until neither has more to say.
fn pump(client: &mut ClientConnection, to_server: &mut Pipe, to_client: &mut Pipe) {
    while client.wants_write() {
        if client.write_tls(to_server).is_err() {
            break;
        }
    }
    while !to_client.0.is_empty() {
        if client.read_tls(to_client).is_err() || client.process_new_packets().is_err() {
            to_client.0.clear();
            break;
        }
    }
}

/// The accepting link's end: worker 1 of 2.
const SERVER_SHARD: LinkHello = LinkHello {
    worker: 1,
    workers: 2,
};

/// The property described in the module documentation.
pub fn bg_inbound(data: &[u8]) {
    let setup = setup();
    let Some((&max_selector, mut script)) = data.split_first() else {
        return;
    };
    let settings = LinkSettings {
        max_frame_len: 4 + usize::from(max_selector) * 8,
        ..LinkSettings::default()
    };
    let counters = BgCounters::default();
    let mut now = 0u64;
    let Ok(mut server) = Link::accept(
        setup.b.server_config().clone(),
        1,
        SERVER_SHARD,
        &settings,
        now,
    ) else {
        return;
    };
    let Some(config) = setup.a.client_config(PeerIndex(0)) else {
        return;
    };
    let Ok(mut client) =
        ClientConnection::new(config.clone(), "b.example".try_into().expect("name"))
    else {
        return;
    };
    let (mut to_server, mut to_client) = (Pipe::default(), Pipe::default());
    let mut delivered: Vec<Vec<u8>> = Vec::new();
    let mut deliver = |peer: PeerIndex, frame: &[u8]| {
        assert_eq!(
            peer,
            PeerIndex(0),
            "frames are attributed to the authenticated peer"
        );
        delivered.push(frame.to_vec());
        true
    };
    // Handshake.
    for _ in 0..8 {
        pump(&mut client, &mut to_server, &mut to_client);
        if server
            .receive(
                &mut to_server,
                now,
                setup.b.peers(),
                &counters,
                &mut deliver,
            )
            .is_err()
        {
            panic!("the handshake between two valid peers fails");
        }
        let _ = server.transmit(&mut to_client, now);
        if server.is_established() && !client.is_handshaking() {
            break;
        }
    }
    assert!(server.is_established(), "handshake completes");
    pump(&mut client, &mut to_server, &mut to_client);
    let mut hello = Vec::new();
    let _ = encode_stream_frame(&SERVER_SHARD.encode(), &mut hello);
    let mut first = [0u8; 8];
    assert!(
        client.reader().read_exact(&mut first).is_ok() && first[..] == hello[..],
        "the acceptor's first record is its hello"
    );

    let mut plaintext: Vec<u8> = Vec::new();
    let mut tampered = false;
    let mut client_closed = false;
    let mut outcome: Option<LinkError> = None;
    while let Some((&op, rest)) = script.split_first() {
        let Some((&len, rest)) = rest.split_first() else {
            break;
        };
        let take = usize::from(len).min(rest.len());
        let (chunk, rest) = rest.split_at(take);
        script = rest;
        match op % 4 {
            0 if !client_closed => {
                let _ = client.writer().write_all(chunk);
                plaintext.extend_from_slice(chunk);
            }
            0 => {}
            1 => {
                // Splice raw bytes into the ciphertext stream.
                pump(&mut client, &mut to_server, &mut to_client);
                to_server.0.extend(chunk);
                tampered = true;
            }
            2 => {
                client.send_close_notify();
                client_closed = true;
            }
            _ => now = now.saturating_add(u64::from(len) * 10),
        }
        pump(&mut client, &mut to_server, &mut to_client);
        let result = server
            .receive(
                &mut to_server,
                now,
                setup.b.peers(),
                &counters,
                &mut deliver,
            )
            .and_then(|_| server.on_tick(now, &settings, &counters))
            .and_then(|()| server.transmit(&mut to_client, now).map(|_| ()));
        if let Err(e) = result {
            outcome = Some(e);
            break;
        }
    }

    if client_closed && outcome.is_none() {
        // A clean close_notify is answered with ours once nothing is queued.
        assert!(server.peer_closed() || tampered);
        if !tampered {
            assert!(server.is_finished(), "close_notify answered");
        }
    }

    // Reference: the §6 parser over everything sent in plaintext; the first
    // good hello is kept, any other hello ends the link (§6.1).
    let mut expected: Vec<&[u8]> = Vec::new();
    let mut rest = &plaintext[..];
    let mut reference_end: Option<CloseReason> = None;
    let mut peer_hello: Option<LinkHello> = None;
    loop {
        match split_stream_frame(rest, settings.max_frame_len) {
            Ok(Some((frame, consumed))) => {
                match LinkHello::decode(frame) {
                    _ if frame.is_empty() => {}
                    None => expected.push(frame),
                    Some(Ok(hello)) if peer_hello.is_none() => peer_hello = Some(hello),
                    Some(_) => {
                        reference_end = Some(CloseReason::BadHello);
                        break;
                    }
                }
                rest = &rest[consumed..];
            }
            Ok(None) => break,
            Err(_) => {
                reference_end = Some(CloseReason::StreamError);
                break;
            }
        }
    }
    assert!(delivered
        .iter()
        .all(|f| !f.is_empty() && f.len() <= settings.max_frame_len));
    if tampered {
        // After spliced ciphertext the session may end early: what was
        // handed on is still a prefix of the reference, in order.
        assert!(delivered.len() <= expected.len());
        assert!(delivered.iter().zip(&expected).all(|(d, e)| d == e));
        return;
    }
    let fatal = match outcome {
        Some(LinkError::Closed {
            reason: reason @ (CloseReason::StreamError | CloseReason::BadHello),
            ..
        }) => Some(reason),
        _ => None,
    };
    match outcome {
        // The session ended (close_notify, dead-peer timer, stream error,
        // bad hello): everything before the end was handed on.
        Some(_) => {
            assert!(delivered.len() <= expected.len());
            assert!(delivered.iter().zip(&expected).all(|(d, e)| d == e));
            if let Some(reason) = fatal {
                assert_eq!(
                    Some(reason),
                    reference_end,
                    "a stream error or bad hello only where §6 says so"
                );
                assert_eq!(delivered.len(), expected.len());
                if reason == CloseReason::BadHello {
                    assert_eq!(server.peer_shard(), peer_hello);
                }
            }
        }
        None => {
            assert!(reference_end.is_none(), "a §6 error closes the link");
            assert_eq!(delivered, expected, "every whole frame, in order");
            assert_eq!(server.peer_shard(), peer_hello, "the peer's hello kept");
        }
    }
}
