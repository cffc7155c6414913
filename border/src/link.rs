//! One TLS connection between two border gateways, as a state machine over
//! any `Read`/`Write` (a non-blocking socket in the endpoint, an in-memory
//! pipe in the fuzz target).
//!
//! Invariants:
//! - Nothing is read as presence data before the handshake has finished and
//!   the peer is authenticated; the peer of an established link never changes.
//! - The link reads only the stream framing (`docs/wire-format.md` §6): frames
//!   are handed on whole and unparsed, keepalives are swallowed.
//! - Each side's first record once the link is established is its hello
//!   ([`LinkHello`], §6.1: which worker of its gateway this end belongs to,
//!   of how many), queued before any frame. The acceptor's hello is what
//!   tells a dialer it has been accepted: a dialed link is established when
//!   the acceptor's first whole record arrives (a hello, or from an older
//!   peer a keepalive), never before. The peer's hello is kept
//!   ([`Link::peer_shard`]) and never handed on as a frame; a frame is a
//!   hello exactly when its first byte is `LINK_HELLO_MAGIC` (presence frames
//!   start with `0x50` and are handed on unchanged). A second hello, or a
//!   malformed one, closes the link ([`CloseReason::BadHello`]). A peer that
//!   sends no hello (an older one) is served as before, its end unknown.
//! - A stream error (a length out of bounds), a TLS error after the handshake,
//!   or an end of stream inside a frame closes this link and only this link.
//! - The send queue holds at most `send_queue_bytes` of framed plaintext; a
//!   frame that does not fit is refused, never queued partly.

use std::io::{self, Read, Write};
use std::sync::Arc;

use presence_codec::{
    encode_stream_frame, DecodeError, LinkHello, StreamReassembler, STREAM_KEEPALIVE,
};
use rustls::pki_types::UnixTime;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::counters::BgCounters;
use crate::identity::{NetworkName, PeerIndex};
use crate::tls::{PeerSet, Refusal, ALPN_BORDER_V1};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// Limits and timers of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkSettings {
    /// Largest frame accepted from the peer (§6; at most 65535).
    pub max_frame_len: usize,
    /// Bytes of framed plaintext a link queues before refusing frames.
    pub send_queue_bytes: usize,
    /// Send a keepalive after this long without sending anything.
    pub keepalive_ms: Millis,
    /// Declare the peer dead after this long without receiving anything.
    pub dead_after_ms: Millis,
    /// Refuse a connection whose handshake takes longer than this.
    pub handshake_timeout_ms: Millis,
}

impl Default for LinkSettings {
    fn default() -> LinkSettings {
        LinkSettings {
            max_frame_len: 65_535,
            send_queue_bytes: 1 << 20,
            keepalive_ms: 1_000,
            dead_after_ms: 3_500,
            handshake_timeout_ms: 5_000,
        }
    }
}

/// Why an established link closed: the counter and log label for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed it (TLS close_notify, or end of stream between frames).
    PeerClosed,
    /// Nothing received for `dead_after_ms`.
    DeadPeer,
    /// A length prefix out of bounds (§6): the stream cannot be resynchronised.
    StreamError,
    /// The stream ended inside a frame.
    Truncated,
    /// TLS failed after the handshake (bad record, decrypt error, alert).
    TlsError,
    /// The socket failed.
    Io,
    /// Replaced by a link made with newer TLS material, and drained.
    Rotated,
    /// The peer is no longer in the trust list.
    Untrusted,
    /// This gateway is stopping.
    Shutdown,
    /// The peer sent a second link hello, or a malformed one (§6.1): the
    /// link's ends can no longer be trusted to be what routing thinks.
    BadHello,
}

impl CloseReason {
    /// Every reason, in counter order.
    pub const ALL: [CloseReason; 10] = [
        CloseReason::PeerClosed,
        CloseReason::DeadPeer,
        CloseReason::StreamError,
        CloseReason::Truncated,
        CloseReason::TlsError,
        CloseReason::Io,
        CloseReason::Rotated,
        CloseReason::Untrusted,
        CloseReason::Shutdown,
        CloseReason::BadHello,
    ];

    /// Stable counter and log label.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::DeadPeer => "dead_peer",
            CloseReason::StreamError => "stream_error",
            CloseReason::Truncated => "truncated",
            CloseReason::TlsError => "tls_error",
            CloseReason::Io => "io",
            CloseReason::Rotated => "rotated",
            CloseReason::Untrusted => "untrusted",
            CloseReason::Shutdown => "shutdown",
            CloseReason::BadHello => "bad_hello",
        }
    }

    /// Position in [`CloseReason::ALL`].
    pub fn index(self) -> usize {
        CloseReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// How a link ended.
#[derive(Debug)]
pub enum LinkError {
    /// Refused during the handshake.
    Refused {
        /// The counter.
        refusal: Refusal,
        /// What rustls said, for the log line.
        detail: String,
    },
    /// Closed after the handshake.
    Closed {
        /// The counter.
        reason: CloseReason,
        /// The stream error, when that was the reason.
        stream: Option<DecodeError>,
    },
}

impl LinkError {
    pub(crate) fn closed(reason: CloseReason) -> LinkError {
        LinkError::Closed {
            reason,
            stream: None,
        }
    }

    pub(crate) fn refused(refusal: Refusal, detail: impl Into<String>) -> LinkError {
        LinkError::Refused {
            refusal,
            detail: detail.into(),
        }
    }
}

/// Who opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// We dialed this peer.
    Dialed(PeerIndex),
    /// The peer dialed us; who it is is known after the handshake.
    Accepted,
}

/// What one [`Link::receive`] call saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The handshake finished during this call.
    pub established: bool,
    /// Frames handed on.
    pub frames: u64,
    /// The read budget ran out before the socket was empty: call again.
    pub more: bool,
    /// The peer's hello arrived during this call ([`Link::peer_shard`]).
    pub hello: bool,
}

/// What one read of ciphertext gave.
enum Ciphertext {
    /// The peer closed its side of the stream.
    Eof,
    /// `n` bytes went to rustls; `drained`: the socket had nothing more.
    Bytes { n: usize, drained: bool },
}

/// Frame handed on from a link: the authenticated peer and the frame bytes.
/// The consumer returns `false` when it cannot take the frame (counted).
pub trait Deliver {
    /// Takes one inbound frame from `peer`.
    fn deliver(&mut self, peer: PeerIndex, frame: &[u8]) -> bool;

    /// Called before an established link from `peer` is read, with the
    /// bytes waiting unread in its socket's receive queue (TLS records not
    /// yet taken from the kernel): the queue the frames about to be
    /// delivered waited in, for a consumer that admits by queue depth and
    /// service time. Ignored unless implemented.
    fn backlog(&mut self, peer: PeerIndex, socket_bytes: usize) {
        let _ = (peer, socket_bytes);
    }
}

impl<F: FnMut(PeerIndex, &[u8]) -> bool> Deliver for F {
    fn deliver(&mut self, peer: PeerIndex, frame: &[u8]) -> bool {
        self(peer, frame)
    }
}

/// Most TLS bytes one [`Link::receive`] call reads before it returns, so that
/// a peer sending faster than we process cannot hold a worker: the endpoint
/// comes back to the link on its next loop turn.
pub const RECEIVE_BUDGET_BYTES: usize = 256 * 1024;

/// Bytes an established link reads from its socket in one call. rustls on
/// its own reads 4 KiB at a time; one larger read takes what the socket
/// holds with one system call, and a read that comes back short shows the
/// socket drained, so no second call is needed to see `WouldBlock`
/// (edge-triggered readiness fires again for data arriving later).
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One TLS connection to a peer network.
///
/// Life: handshaking → established → (draining →) closing → finished.
/// Closing is a graceful half-close in both directions: the side that ends a
/// link stops queueing, writes what it has, sends close_notify and keeps
/// reading until the peer's close_notify (or end of stream, or the linger
/// deadline); the side that receives close_notify stops taking frames,
/// writes what it has queued, then answers with its own close_notify. Frames
/// in flight either way are delivered, not lost.
#[derive(Debug)]
pub struct Link {
    tls: Connection,
    direction: Direction,
    /// Our end: sent as the first record once established.
    hello: LinkHello,
    /// The peer's end, once its hello has arrived.
    peer_hello: Option<LinkHello>,
    /// Set once the peer is authenticated *and* has accepted us: on accepted
    /// links when the handshake finishes, on dialed links when the first
    /// record arrives after it (see [`Link::receive`]).
    peer: Option<PeerIndex>,
    /// The TLS handshake has finished on our side (and, accepting, the peer
    /// is authenticated): buffers are allocated from here on.
    tls_done: bool,
    generation: u64,
    max_frame_len: usize,
    /// Allocated once authenticated: a peer that never authenticates costs
    /// only the TLS state.
    reassembler: Option<StreamReassembler>,
    /// Ciphertext read from the socket and not yet handed to rustls
    /// (`inbox[inbox_at..inbox_len]`); allocated with the reassembler.
    inbox: Box<[u8]>,
    inbox_at: usize,
    inbox_len: usize,
    /// Framed plaintext waiting for rustls; `queue[handed..]` not yet handed.
    /// Capacity reserved once established, never grown past `send_queue_bytes`.
    queue: Vec<u8>,
    handed: usize,
    send_queue_bytes: usize,
    created: Millis,
    established_at: Millis,
    last_rx: Millis,
    /// The peer has sent at least one byte.
    heard: bool,
    last_tx: Millis,
    /// When the socket last accepted bytes, or had nothing to take.
    last_write_progress: Millis,
    draining: bool,
    close_sent: bool,
    /// When we sent close_notify (the linger deadline runs from here).
    close_sent_at: Millis,
    /// Why we are closing, reported when the close completes.
    closing_reason: Option<CloseReason>,
    /// The peer sent close_notify.
    peer_closed: bool,
    /// The stream ended (TCP FIN).
    eof: bool,
}

impl Link {
    /// A link we dial to `peer`, named `name`, with generation `generation`'s
    /// client configuration; `hello` says which worker of ours it ends at.
    pub fn dial(
        config: Arc<ClientConfig>,
        peer: PeerIndex,
        name: &NetworkName,
        generation: u64,
        hello: LinkHello,
        settings: &LinkSettings,
        now: Millis,
    ) -> Result<Link, LinkError> {
        let tls = ClientConnection::new(config, name.server_name())
            .map_err(|e| LinkError::refused(Refusal::Protocol, e.to_string()))?;
        Ok(Link::new(
            tls.into(),
            Direction::Dialed(peer),
            generation,
            hello,
            settings,
            now,
        ))
    }

    /// A link a peer dialed to us; `hello` says which worker of ours it ends
    /// at.
    pub fn accept(
        config: Arc<ServerConfig>,
        generation: u64,
        hello: LinkHello,
        settings: &LinkSettings,
        now: Millis,
    ) -> Result<Link, LinkError> {
        let tls = ServerConnection::new(config)
            .map_err(|e| LinkError::refused(Refusal::Protocol, e.to_string()))?;
        Ok(Link::new(
            tls.into(),
            Direction::Accepted,
            generation,
            hello,
            settings,
            now,
        ))
    }

    fn new(
        mut tls: Connection,
        direction: Direction,
        generation: u64,
        hello: LinkHello,
        settings: &LinkSettings,
        now: Millis,
    ) -> Link {
        // rustls's own plaintext/ciphertext buffering; our queue bounds the rest.
        tls.set_buffer_limit(Some(256 * 1024));
        Link {
            tls,
            direction,
            hello,
            peer_hello: None,
            peer: None,
            tls_done: false,
            generation,
            max_frame_len: settings.max_frame_len,
            reassembler: None,
            inbox: Box::default(),
            inbox_at: 0,
            inbox_len: 0,
            queue: Vec::new(),
            handed: 0,
            send_queue_bytes: settings.send_queue_bytes,
            created: now,
            established_at: now,
            last_rx: now,
            heard: false,
            last_tx: now,
            last_write_progress: now,
            draining: false,
            close_sent: false,
            close_sent_at: now,
            closing_reason: None,
            peer_closed: false,
            eof: false,
        }
    }

    /// The authenticated peer, once the handshake has finished.
    pub fn peer(&self) -> Option<PeerIndex> {
        self.peer
    }

    /// Which side dialed.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Our end of the link: the hello we send.
    pub fn own_shard(&self) -> LinkHello {
        self.hello
    }

    /// The peer's end of the link: which worker of its gateway, of how
    /// many, from its hello. `None` until the hello arrives, and for ever
    /// from a peer that sends none (an older one).
    pub fn peer_shard(&self) -> Option<LinkHello> {
        self.peer_hello
    }

    /// The TLS generation this link was made with.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the peer last sent a byte, or when the link was made if it never
    /// did.
    pub fn last_rx(&self) -> Millis {
        self.last_rx
    }

    /// When the link was made.
    pub fn created_at(&self) -> Millis {
        self.created
    }

    /// Whether the peer has sent at least one byte.
    pub fn heard_from(&self) -> bool {
        self.heard
    }

    /// Whether the handshake has finished and the peer is known.
    pub fn is_established(&self) -> bool {
        self.peer.is_some()
    }

    /// When the link was established.
    pub fn established_at(&self) -> Millis {
        self.established_at
    }

    /// Whether the link takes no new frames (replaced, closing, or closed by
    /// the peer).
    pub fn is_draining(&self) -> bool {
        self.draining || self.close_sent || self.peer_closed
    }

    /// Whether the peer has sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The certificates the peer presented.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.tls.peer_certificates()
    }

    /// Renumbers the peer after a reload changed the trust list's order.
    pub fn renumber(&mut self, peer: PeerIndex) {
        if self.peer.is_some() {
            self.peer = Some(peer);
        }
        if let Direction::Dialed(_) = self.direction {
            self.direction = Direction::Dialed(peer);
        }
    }

    /// Reads what `io` has (at most [`RECEIVE_BUDGET_BYTES`]), runs the
    /// handshake, and hands each whole frame to `deliver`. An error means the
    /// link is finished: send what [`transmit`](Self::transmit) still has (an
    /// alert) and drop it. After `Ok`, [`Received::more`] says the budget ran
    /// out before the socket was empty.
    pub fn receive<R: Read, D: Deliver>(
        &mut self,
        io: &mut R,
        now: Millis,
        peers: &PeerSet,
        counters: &BgCounters,
        deliver: &mut D,
    ) -> Result<Received, LinkError> {
        let mut received = Received::default();
        let mut tally = Tally::default();
        let had_hello = self.peer_hello.is_some();
        let result = self.receive_inner(io, now, peers, deliver, &mut received, &mut tally);
        tally.flush(counters);
        received.hello = !had_hello && self.peer_hello.is_some();
        result.map(|()| received)
    }

    fn receive_inner<R: Read, D: Deliver>(
        &mut self,
        io: &mut R,
        now: Millis,
        peers: &PeerSet,
        deliver: &mut D,
        received: &mut Received,
        tally: &mut Tally,
    ) -> Result<(), LinkError> {
        let mut budget = RECEIVE_BUDGET_BYTES;
        loop {
            if self.eof || self.peer_closed {
                return Ok(());
            }
            let (eof, would_block) = match self.read_ciphertext(io) {
                Ok(Ciphertext::Eof) => (true, false),
                Ok(Ciphertext::Bytes { n, drained }) => {
                    self.last_rx = now;
                    self.heard = true;
                    budget = budget.saturating_sub(n);
                    (false, drained)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (false, true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.socket_error(&e)),
            };
            if let Err(error) = self.tls.process_new_packets() {
                return Err(if self.is_established() {
                    LinkError::closed(CloseReason::TlsError)
                } else {
                    LinkError::refused(Refusal::classify(&error), error.to_string())
                });
            }
            let was_established = self.is_established();
            if !self.tls_done && !self.tls.is_handshaking() {
                self.on_handshake_done(peers, now)?;
            }
            if self.tls_done {
                let closed = self.read_plaintext(now, deliver, tally)?;
                received.established |= !was_established && self.is_established();
                received.frames = tally.frames;
                if closed {
                    if !self.is_established() {
                        return Err(LinkError::refused(
                            Refusal::PeerRefused,
                            "closed before accepting us",
                        ));
                    }
                    if self
                        .reassembler
                        .as_ref()
                        .is_some_and(|r| r.pending_len() > 0)
                    {
                        return Err(LinkError::closed(CloseReason::Truncated));
                    }
                    // close_notify: stop taking frames, answer once drained.
                    self.peer_closed = true;
                    return Ok(());
                }
            }
            if eof {
                self.eof = true;
                if !self.is_established() {
                    return Err(LinkError::refused(
                        Refusal::ClosedDuringHandshake,
                        "end of stream",
                    ));
                }
                if self.close_sent {
                    // We were closing; the peer hung up instead of answering.
                    return Ok(());
                }
                return Err(self.end_of_stream());
            }
            if would_block {
                return Ok(());
            }
            if budget == 0 {
                received.more = true;
                return Ok(());
            }
        }
    }

    /// Hands rustls the next piece of ciphertext. Before the handshake
    /// ends rustls reads the socket itself (an unauthenticated peer gets no
    /// buffer of ours); after it, one read of up to [`READ_CHUNK_BYTES`]
    /// fills the link's inbox, which rustls then takes from without system
    /// calls. `drained` says the socket had no more when last read.
    fn read_ciphertext<R: Read>(&mut self, io: &mut R) -> io::Result<Ciphertext> {
        if self.inbox.is_empty() {
            return match self.tls.read_tls(io)? {
                0 => Ok(Ciphertext::Eof),
                n => Ok(Ciphertext::Bytes { n, drained: false }),
            };
        }
        if self.inbox_at == self.inbox_len {
            let n = io.read(&mut self.inbox)?;
            if n == 0 {
                return Ok(Ciphertext::Eof);
            }
            self.inbox_at = 0;
            self.inbox_len = n;
        }
        let pending = self
            .inbox
            .get(self.inbox_at..self.inbox_len)
            .unwrap_or_default();
        let mut cursor = pending;
        let n = self.tls.read_tls(&mut cursor)?;
        self.inbox_at += n;
        let drained = self.inbox_at == self.inbox_len && self.inbox_len < self.inbox.len();
        Ok(Ciphertext::Bytes { n, drained })
    }

    fn socket_error(&self, error: &io::Error) -> LinkError {
        if self.is_established() {
            LinkError::closed(CloseReason::Io)
        } else if let Direction::Dialed(_) = self.direction {
            LinkError::refused(Refusal::ConnectFailed, error.to_string())
        } else {
            LinkError::refused(Refusal::ClosedDuringHandshake, error.to_string())
        }
    }

    fn end_of_stream(&self) -> LinkError {
        if self
            .reassembler
            .as_ref()
            .is_some_and(|r| r.pending_len() > 0)
        {
            LinkError::closed(CloseReason::Truncated)
        } else {
            LinkError::closed(CloseReason::PeerClosed)
        }
    }

    /// In TLS 1.3 the client sends its certificate in its last flight and
    /// considers the handshake done before the server has checked it. So a
    /// dialed link is not established until the server has said something
    /// (the acceptor sends its hello first thing; an older acceptor a
    /// keepalive): frames are never sent into a connection the peer is about
    /// to refuse.
    fn on_handshake_done(&mut self, peers: &PeerSet, now: Millis) -> Result<(), LinkError> {
        if self.tls.alpn_protocol() != Some(ALPN_BORDER_V1) {
            return Err(LinkError::refused(
                Refusal::Protocol,
                "no presence-bg/1 ALPN",
            ));
        }
        let peer = match self.direction {
            // The verifier checked the certificate against this peer's entry;
            // wait for the peer's first record (`read_plaintext`).
            Direction::Dialed(_) => None,
            Direction::Accepted => {
                // The verifier accepted it for some entry; find which, the
                // same way (deterministic: first entry that accepts).
                let certs = self
                    .tls
                    .peer_certificates()
                    .ok_or_else(|| LinkError::refused(Refusal::NoCertificate, "none presented"))?;
                let (end_entity, intermediates) = certs
                    .split_first()
                    .ok_or_else(|| LinkError::refused(Refusal::NoCertificate, "empty chain"))?;
                Some(
                    peers
                        .authenticate_client(end_entity, intermediates, UnixTime::now())
                        .map_err(|e| LinkError::refused(Refusal::classify(&e), e.to_string()))?,
                )
            }
        };
        // Authenticated: now the link may hold buffers.
        self.tls_done = true;
        self.reassembler = Some(StreamReassembler::new(self.max_frame_len));
        self.inbox = vec![0u8; READ_CHUNK_BYTES].into_boxed_slice();
        self.queue.reserve_exact(self.send_queue_bytes);
        if let Some(peer) = peer {
            // Our hello tells the dialer it has been accepted.
            self.set_established(peer, now);
        }
        Ok(())
    }

    /// Established: the peer is known, and our hello goes first.
    fn set_established(&mut self, peer: PeerIndex, now: Millis) {
        self.peer = Some(peer);
        self.established_at = now;
        self.last_write_progress = now;
        queue_hello(&mut self.queue, self.hello);
    }

    /// Drains decrypted bytes into the reassembler and hands frames on.
    /// Returns whether the peer sent close_notify.
    fn read_plaintext<D: Deliver>(
        &mut self,
        now: Millis,
        deliver: &mut D,
        tally: &mut Tally,
    ) -> Result<bool, LinkError> {
        loop {
            let Some(reassembler) = self.reassembler.as_mut() else {
                return Ok(false);
            };
            let spare = reassembler.spare();
            if spare.is_empty() {
                // Cannot happen: the buffer holds a maximal frame and frames
                // are taken as soon as they are whole. Refuse to spin.
                return Err(LinkError::closed(CloseReason::StreamError));
            }
            let n = match self.tls.reader().read(spare) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                // End of stream without close_notify: the caller decides.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(_) => return Err(LinkError::closed(CloseReason::TlsError)),
            };
            let peer = match (self.peer, self.direction) {
                (Some(peer), _) => peer,
                // Established at the acceptor's first whole record, below.
                (None, Direction::Dialed(peer)) => peer,
                (None, Direction::Accepted) => {
                    return Err(LinkError::refused(Refusal::Protocol, "data before auth"))
                }
            };
            let Some(reassembler) = self.reassembler.as_mut() else {
                return Ok(false);
            };
            reassembler.commit(n);
            tally.bytes = tally.bytes.saturating_add(n as u64);
            loop {
                let record = match reassembler.next_frame() {
                    Ok(Some(record)) => record,
                    Ok(None) => break,
                    Err(error) => {
                        return Err(LinkError::Closed {
                            reason: CloseReason::StreamError,
                            stream: Some(error),
                        })
                    }
                };
                if self.peer.is_none() {
                    // The acceptor has spoken: it accepted us (the fields of
                    // `set_established`, with the reassembler borrowed).
                    self.peer = Some(peer);
                    self.established_at = now;
                    self.last_write_progress = now;
                    queue_hello(&mut self.queue, self.hello);
                }
                if record.is_empty() {
                    tally.keepalives = tally.keepalives.saturating_add(1);
                    continue;
                }
                match LinkHello::decode(record) {
                    None => {
                        tally.frames = tally.frames.saturating_add(1);
                        if !deliver.deliver(peer, record) {
                            tally.dropped = tally.dropped.saturating_add(1);
                        }
                    }
                    Some(Ok(hello)) if self.peer_hello.is_none() => {
                        self.peer_hello = Some(hello);
                    }
                    // A second hello, or a malformed one.
                    Some(_) => {
                        return Err(LinkError::Closed {
                            reason: CloseReason::BadHello,
                            stream: Some(DecodeError::BadLinkHello),
                        })
                    }
                }
            }
        }
    }

    /// Queues one frame for the peer. Refused (`false`) when the link is not
    /// established, is closing, or its queue has no room for the whole frame.
    /// (A draining link still takes frames while it is its peer's only link;
    /// the endpoint decides.)
    pub fn queue_frame(&mut self, frame: &[u8]) -> bool {
        if !self.is_established() || self.close_sent || self.peer_closed {
            return false;
        }
        let needed = frame
            .len()
            .saturating_add(presence_codec::STREAM_PREFIX_LEN);
        if self.queue.len().saturating_add(needed) > self.send_queue_bytes {
            self.compact_queue();
            if self.queue.len().saturating_add(needed) > self.send_queue_bytes {
                return false;
            }
        }
        encode_stream_frame(frame, &mut self.queue).is_ok()
    }

    fn compact_queue(&mut self) {
        if self.handed > 0 {
            self.queue.drain(..self.handed);
            self.handed = 0;
        }
    }

    /// Bytes queued and not yet handed to TLS.
    pub fn queued_len(&self) -> usize {
        self.queue.len().saturating_sub(self.handed)
    }

    /// Whether anything waits to be written to the socket.
    pub fn wants_transmit(&self) -> bool {
        self.queued_len() > 0 || self.tls.wants_write()
    }

    /// Encrypts queued frames and writes to `io` until it would block.
    /// Returns `true` when everything has been written. Once everything is
    /// written on a link whose peer sent close_notify, answers it.
    pub fn transmit<W: Write>(&mut self, io: &mut W, now: Millis) -> Result<bool, LinkError> {
        loop {
            if self.tls_done && self.handed < self.queue.len() {
                let pending = self.queue.get(self.handed..).unwrap_or_default();
                let n = self.tls.writer().write(pending).unwrap_or(0);
                if n > 0 {
                    self.last_tx = now;
                }
                self.handed = self.handed.saturating_add(n).min(self.queue.len());
                if self.handed == self.queue.len() {
                    self.queue.clear();
                    self.handed = 0;
                }
            }
            if self.peer_closed && !self.close_sent && self.queued_len() == 0 {
                self.send_close_notify(now, CloseReason::PeerClosed);
            }
            if !self.tls.wants_write() {
                self.last_write_progress = now;
                return Ok(self.queued_len() == 0);
            }
            match self.tls.write_tls(io) {
                Ok(n) => {
                    if n > 0 {
                        self.last_write_progress = now;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.socket_error(&e)),
            }
        }
    }

    fn send_close_notify(&mut self, now: Millis, reason: CloseReason) {
        self.tls.send_close_notify();
        self.close_sent = true;
        self.close_sent_at = now;
        self.closing_reason.get_or_insert(reason);
    }

    /// Whether the link has finished: our close_notify is written and the
    /// peer's has arrived (or the stream ended). Drop it, reporting
    /// [`closing_reason`](Self::closing_reason).
    pub fn is_finished(&self) -> bool {
        self.close_sent && (self.peer_closed || self.eof) && !self.tls.wants_write()
    }

    /// Why the link is closing (once it is).
    pub fn closing_reason(&self) -> Option<CloseReason> {
        self.closing_reason
    }

    /// Runs the link's timers: the handshake deadline, dead-peer detection
    /// (nothing received, or nothing the socket would take, for
    /// `dead_after_ms`), the close linger, and keepalives (queued; call
    /// [`transmit`](Self::transmit) after).
    pub fn on_tick(
        &mut self,
        now: Millis,
        settings: &LinkSettings,
        counters: &BgCounters,
    ) -> Result<(), LinkError> {
        if !self.is_established() {
            if now.saturating_sub(self.created) >= settings.handshake_timeout_ms {
                return Err(LinkError::refused(
                    Refusal::HandshakeTimeout,
                    "handshake too slow",
                ));
            }
            return Ok(());
        }
        if self.close_sent {
            if now.saturating_sub(self.close_sent_at) >= settings.dead_after_ms {
                // The peer never answered our close_notify.
                return Err(LinkError::closed(
                    self.closing_reason.unwrap_or(CloseReason::Shutdown),
                ));
            }
            return Ok(());
        }
        if now.saturating_sub(self.last_rx) >= settings.dead_after_ms {
            return Err(LinkError::closed(CloseReason::DeadPeer));
        }
        if self.wants_transmit()
            && now.saturating_sub(self.last_write_progress) >= settings.dead_after_ms
        {
            // It sends (keepalives) but does not read.
            return Err(LinkError::closed(CloseReason::DeadPeer));
        }
        if now.saturating_sub(self.last_tx) >= settings.keepalive_ms
            && self.queued_len() == 0
            && !self.peer_closed
            && self.queue.len().saturating_add(STREAM_KEEPALIVE.len()) <= self.send_queue_bytes
        {
            self.queue.extend_from_slice(&STREAM_KEEPALIVE);
            self.last_tx = now;
            BgCounters::add(&counters.keepalives_sent, 1);
        }
        Ok(())
    }

    /// Stops taking frames; what is queued is still sent.
    pub fn begin_drain(&mut self) {
        self.draining = true;
    }

    /// Whether a draining link has written everything it had.
    pub fn is_drained(&self) -> bool {
        self.is_draining() && !self.wants_transmit()
    }

    /// Starts the graceful close for `reason`: once what is queued has been
    /// handed to TLS, close_notify follows it; the link then lingers, still
    /// delivering, until [`is_finished`](Self::is_finished). Call
    /// [`transmit`](Self::transmit) after.
    pub fn close(&mut self, now: Millis, reason: CloseReason) {
        self.draining = true;
        self.closing_reason.get_or_insert(reason);
        if !self.close_sent && self.queued_len() == 0 {
            self.send_close_notify(now, reason);
        }
    }

    /// Sends close_notify now, whatever is queued (an abrupt but clean-TLS
    /// end: a peer cut off, or a link being dropped for an error).
    pub fn abort(&mut self, now: Millis, reason: CloseReason) {
        self.queue.clear();
        self.handed = 0;
        if !self.close_sent {
            self.send_close_notify(now, reason);
        }
    }
}

/// Queues our hello as one stream frame. Queued before anything else (and
/// outside the queue's bound, like the keepalive it replaces): the queue is
/// empty when a link becomes established.
fn queue_hello(queue: &mut Vec<u8>, hello: LinkHello) {
    // Six bytes always frame: at least the stream minimum, below its maximum.
    let _ = encode_stream_frame(&hello.encode(), queue);
}

/// Per-call tallies, added to the shared counters once per call.
#[derive(Default)]
struct Tally {
    frames: u64,
    bytes: u64,
    keepalives: u64,
    dropped: u64,
}

impl Tally {
    fn flush(&self, counters: &BgCounters) {
        BgCounters::add(&counters.frames_in, self.frames);
        BgCounters::add(&counters.bytes_in, self.bytes);
        BgCounters::add(&counters.keepalives_received, self.keepalives);
        BgCounters::add(&counters.deliver_dropped, self.dropped);
    }
}
