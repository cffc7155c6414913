//! The ceiling: an echo server with the appliance's sockets and batching
//! (one `SO_REUSEPORT` socket per worker thread, `recvmmsg`/`sendmmsg` in
//! batches of 64, GSO where the kernel has it, workers waiting in epoll) and
//! no presence work. What the harness measures against it, in the same run,
//! is what this machine's loopback and the harness itself can carry at that
//! moment; the appliance's figures are stated as a fraction of it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use presence_engine::config::IoBackend;
use presence_engine::runtime::udp::{RecvBatch, SendBatch};
use presence_engine::runtime::uring::UringUdp;

/// A running echo server.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
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
        let first = reuse_port_socket(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = first.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut sockets = vec![first];
        for _ in 1..threads.max(1) {
            sockets.push(reuse_port_socket(addr)?);
        }
        let mut handles = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let stop = stop.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("echo-{i}"))
                    .spawn(move || echo(UdpSocket::from_std(socket), backend, &stop))?,
            );
        }
        Ok(EchoServer {
            addr,
            stop,
            threads: handles,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

fn echo(mut socket: UdpSocket, backend: IoBackend, stop: &AtomicBool) {
    let Ok(mut poll) = Poll::new() else { return };
    // With io_uring the ring says when datagrams wait, not the socket.
    let mut ring = if backend.wants_uring() {
        UringUdp::new(&socket).ok()
    } else {
        None
    };
    let registered = match &ring {
        Some(ring) => poll.registry().register(
            &mut mio::unix::SourceFd(&ring.fd()),
            Token(0),
            Interest::READABLE,
        ),
        None => poll
            .registry()
            .register(&mut socket, Token(0), Interest::READABLE),
    };
    if registered.is_err() {
        return;
    }
    let mut events = Events::with_capacity(16);
    let mut recv = RecvBatch::new();
    if backend.wants_gro() {
        recv.enable_gro(&socket);
    }
    let mut send = SendBatch::new();
    send.enable_gso(&socket);
    let flush = |send: &mut SendBatch, ring: &mut Option<UringUdp>| match ring {
        Some(ring) => ring.flush(send),
        None => send.flush(&socket),
    };
    let mut more = true;
    while !stop.load(Ordering::Relaxed) {
        if !more {
            let _ = poll.poll(&mut events, Some(Duration::from_millis(10)));
        }
        let n = match ring.as_mut() {
            Some(ring) => ring.recv_into(&mut recv),
            None => recv.recv(&socket),
        }
        .unwrap_or(0);
        for i in 0..n {
            if let Some((datagrams, from)) = recv.datagrams(i) {
                for bytes in datagrams {
                    if send.is_full() {
                        let _ = flush(&mut send, &mut ring);
                    }
                    let _ = send.push(from, bytes);
                }
            }
        }
        while !send.is_empty() {
            match flush(&mut send, &mut ring) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        more = n == recv.capacity() || ring.as_mut().is_some_and(UringUdp::has_more);
    }
}
