//! The ceiling: an echo server with the appliance's sockets and batching
//! (one `SO_REUSEPORT` socket per worker thread, `recvmmsg`/`sendmmsg` in
//! batches of 64, GSO where the kernel has it, workers waiting in epoll) and
//! no presence work. What the harness measures against it, in the same run,
//! is what this machine's loopback and the harness itself can carry at that
//! moment; the appliance's figures are stated as a fraction of it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use presence_engine::config::IoBackend;
use presence_engine::runtime::metrics::XdpCounts;
use presence_engine::runtime::udp::{RecvBatch, SendBatch};
use presence_engine::runtime::uring::UringUdp;
use presence_engine::runtime::xdp::{XdpPath, XdpPort, XdpSettings};

/// A running echo server.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    /// With the `xdp` backend: the program, attached while the echo runs.
    xdp: Option<Arc<XdpPath>>,
    threads: Vec<JoinHandle<XdpCounts>>,
}

fn reuse_port_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl EchoServer {
    /// Starts `threads` echo threads sharing one loopback port, moving
    /// datagrams as the appliance's `[io] backend` does (UDP GRO on
    /// receive, or io_uring).
    pub fn start(threads: usize, backend: IoBackend) -> std::io::Result<EchoServer> {
        EchoServer::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), threads, backend)
    }

    /// Starts `threads` echo threads sharing `addr` (port 0: one the
    /// kernel picks). With the `xdp` backend the appliance's XDP program
    /// goes on the interface holding `addr`, and thread `i` reads receive
    /// queue `i` through AF_XDP beside its socket; where that cannot be set
    /// up, the error says why.
    pub fn start_at(
        addr: SocketAddr,
        threads: usize,
        backend: IoBackend,
    ) -> std::io::Result<EchoServer> {
        let settings = XdpSettings {
            interface: None,
            mode: None,
        };
        EchoServer::start_with(addr, threads, backend, &settings, true)
    }

    /// [`start_at`](Self::start_at), with the XDP program placed as
    /// `xdp` says (`[io] xdp_interface`, `[io] xdp_mode`), and answers sent
    /// in GSO runs (`gso`) or each as a message of its own, as to distinct
    /// devices.
    pub fn start_with(
        addr: SocketAddr,
        threads: usize,
        backend: IoBackend,
        xdp: &XdpSettings,
        gso: bool,
    ) -> std::io::Result<EchoServer> {
        let first = reuse_port_socket(addr)?;
        let addr = first.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let mut sockets = vec![first];
        for _ in 1..threads.max(1) {
            sockets.push(reuse_port_socket(addr)?);
        }
        let xdp = if backend.wants_xdp() {
            Some(XdpPath::attach(addr, xdp).map_err(std::io::Error::other)?)
        } else {
            None
        };
        let mut handles = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let stop = stop.clone();
            let echoed = echoed.clone();
            let port = match (&xdp, u32::try_from(i)) {
                (Some(path), Ok(queue)) if queue < path.queues() => {
                    Some(XdpPort::open(path, queue).map_err(std::io::Error::other)?)
                }
                _ => None,
            };
            handles.push(
                std::thread::Builder::new()
                    .name(format!("echo-{i}"))
                    .spawn(move || {
                        echo(
                            UdpSocket::from_std(socket),
                            backend,
                            port,
                            gso,
                            &stop,
                            &echoed,
                        )
                    })?,
            );
        }
        Ok(EchoServer {
            addr,
            stop,
            echoed,
            xdp,
            threads: handles,
        })
    }

    /// Stops the threads; returns what their AF_XDP ports counted (all
    /// zero without).
    pub fn stop_counting(&mut self) -> XdpCounts {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = XdpCounts::default();
        for handle in self.threads.drain(..) {
            if let Ok(counts) = handle.join() {
                total.received += counts.received;
                total.sent += counts.sent;
                total.dropped += counts.dropped;
                total.malformed += counts.malformed;
            }
        }
        total
    }

    /// Datagrams echoed so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// With the `xdp` backend: the interface and mode the program took.
    pub fn xdp(&self) -> Option<(String, &'static str)> {
        self.xdp
            .as_ref()
            .map(|p| (p.interface().to_string(), p.mode().name()))
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop_counting();
    }
}

fn echo(
    mut socket: UdpSocket,
    backend: IoBackend,
    mut port: Option<XdpPort>,
    gso: bool,
    stop: &AtomicBool,
    echoed: &AtomicU64,
) -> XdpCounts {
    let Ok(mut poll) = Poll::new() else {
        return XdpCounts::default();
    };
    // With io_uring the ring says when datagrams wait, not the socket.
    let mut ring = if backend.wants_uring() {
        UringUdp::new(&socket).ok()
    } else {
        None
    };
    // With AF_XDP the port and the socket both say so.
    let registered = match (&ring, &port) {
        (Some(ring), _) => poll.registry().register(
            &mut mio::unix::SourceFd(&ring.fd()),
            Token(0),
            Interest::READABLE,
        ),
        (None, Some(port)) => poll
            .registry()
            .register(
                &mut mio::unix::SourceFd(&port.fd()),
                Token(0),
                Interest::READABLE,
            )
            .and_then(|()| {
                poll.registry()
                    .register(&mut socket, Token(1), Interest::READABLE)
            }),
        (None, None) => poll
            .registry()
            .register(&mut socket, Token(0), Interest::READABLE),
    };
    if registered.is_err() {
        return XdpCounts::default();
    }
    let mut events = Events::with_capacity(16);
    let mut recv = RecvBatch::new();
    if backend.wants_gro() {
        recv.enable_gro(&socket);
    }
    let mut send = SendBatch::new();
    if gso {
        send.enable_gso(&socket);
    }
    let flush =
        |send: &mut SendBatch, ring: &mut Option<UringUdp>, port: &mut Option<XdpPort>| match (
            ring, port,
        ) {
            (Some(ring), _) => ring.flush(send),
            (None, Some(port)) => port.flush(send, &socket),
            (None, None) => send.flush(&socket),
        };
    let mut more = true;
    // With AF_XDP: the socket said it has datagrams, and no read since
    // found it dry (read only then: a dry read is a wasted call).
    let mut socket_ready = true;
    while !stop.load(Ordering::Relaxed) {
        if !more {
            let _ = poll.poll(&mut events, Some(Duration::from_millis(10)));
            socket_ready |= events.iter().any(|e| e.token() == Token(1));
        }
        let capacity = recv.capacity();
        let n = match (ring.as_mut(), port.as_mut()) {
            (Some(ring), _) => ring.recv_into(&mut recv),
            // The port first, the socket when the port is dry.
            (None, Some(port)) => match port.recv_into(&mut recv) {
                0 if socket_ready => {
                    let read = recv.recv(&socket);
                    socket_ready = matches!(read, Ok(n) if n == capacity);
                    read
                }
                n => Ok(n),
            },
            (None, None) => recv.recv(&socket),
        }
        .unwrap_or(0);
        let mut count = 0u64;
        for i in 0..n {
            if let Some((datagrams, from)) = recv.datagrams(i) {
                for bytes in datagrams {
                    if send.is_full() {
                        let _ = flush(&mut send, &mut ring, &mut port);
                    }
                    let _ = send.push(from, bytes);
                    count += 1;
                }
            }
        }
        echoed.fetch_add(count, Ordering::Relaxed);
        while !send.is_empty() {
            match flush(&mut send, &mut ring, &mut port) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Some(port) = port.as_mut() {
            let _ = port.poll_tx();
        }
        more = n == recv.capacity()
            || ring.as_mut().is_some_and(UringUdp::has_more)
            || port.as_ref().is_some_and(XdpPort::has_more)
            || (port.is_some() && socket_ready);
    }
    port.as_ref().map(XdpPort::counts).unwrap_or_default()
}
