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
//! - every frame it hands on is exactly what the §6 reference parser finds
//!   in the plaintext sent so far, in order, attributed to peer A, never
//!   empty and never over the maximum;
//! - it fails with a stream error exactly when the reference parser does.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

use presence_codec::split_stream_frame;
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
    let Ok(mut server) = Link::accept(setup.b.server_config().clone(), 1, &settings, now) else {
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

    // Reference: the §6 parser over everything sent in plaintext.
    let mut expected: Vec<&[u8]> = Vec::new();
    let mut rest = &plaintext[..];
    let mut reference_error = false;
    loop {
        match split_stream_frame(rest, settings.max_frame_len) {
            Ok(Some((frame, consumed))) => {
                if !frame.is_empty() {
                    expected.push(frame);
                }
                rest = &rest[consumed..];
            }
            Ok(None) => break,
            Err(_) => {
                reference_error = true;
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
    let stream_error = matches!(
        outcome,
        Some(LinkError::Closed {
            reason: CloseReason::StreamError,
            ..
        })
    );
    match outcome {
        // The session ended (close_notify, dead-peer timer, stream error):
        // everything before the end was handed on.
        Some(_) => {
            assert!(delivered.len() <= expected.len());
            assert!(delivered.iter().zip(&expected).all(|(d, e)| d == e));
            if stream_error {
                assert!(reference_error, "a stream error only where §6 says so");
                assert_eq!(delivered.len(), expected.len());
            }
        }
        None => {
            assert!(!reference_error, "a §6 error closes the link");
            assert_eq!(delivered, expected, "every whole frame, in order");
        }
    }
}
