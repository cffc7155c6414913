//! Batched UDP: up to [`BATCH`] datagrams per `recvmmsg`/`sendmmsg` system
//! call, into and out of buffers allocated once per worker.
//!
//! This is the one module with `unsafe`: the two libc calls, over arrays of
//! headers that point into buffers this struct owns and does not move or
//! resize between building the headers and the call returning.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::SockAddr;

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Largest datagram received whole (larger ones are truncated and refused).
pub const DATAGRAM_MAX: usize = 2048;

/// Plain C structs the kernel interface uses, all-zero.
trait ZeroedPlain {}
impl ZeroedPlain for libc::sockaddr_storage {}
impl ZeroedPlain for libc::iovec {}
impl ZeroedPlain for libc::mmsghdr {}

fn zeroed_plain<T: ZeroedPlain>() -> T {
    // SAFETY: `ZeroedPlain` is implemented only for C structs of integers
    // and raw pointers, for which all-zero is a valid value (null pointers,
    // zero lengths, AF_UNSPEC).
    unsafe { zeroed() }
}

/// Receive side: [`BATCH`] buffers with their source addresses.
pub struct RecvBatch {
    bufs: Box<[[u8; DATAGRAM_MAX]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    count: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.count)
            .finish()
    }
}

// SAFETY: the raw pointers inside `iovecs`/`hdrs` point only into this
// struct's own heap buffers; they are rebuilt before every use.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> RecvBatch {
        RecvBatch::new()
    }
}

impl RecvBatch {
    /// Allocates the buffers (about 140 KB).
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![[0u8; DATAGRAM_MAX]; BATCH].into_boxed_slice(),
            addrs: (0..BATCH).map(|_| zeroed_plain()).collect(),
            iovecs: (0..BATCH).map(|_| zeroed_plain()).collect(),
            hdrs: (0..BATCH).map(|_| zeroed_plain()).collect(),
            count: 0,
        }
    }

    /// Receives what the socket has, up to [`BATCH`] datagrams; `Ok(0)` when
    /// nothing is waiting.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        self.count = 0;
        for i in 0..BATCH {
            let (Some(buf), Some(iov), Some(addr), Some(hdr)) = (
                self.bufs.get_mut(i),
                self.iovecs.get_mut(i),
                self.addrs.get_mut(i),
                self.hdrs.get_mut(i),
            ) else {
                break;
            };
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = DATAGRAM_MAX;
            hdr.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = std::ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        // SAFETY: `hdrs` holds BATCH initialised headers whose name and iov
        // pointers point into `addrs`, `iovecs` and `bufs`, which live as long
        // as `self` and are not touched until the call returns.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(error),
            };
        }
        self.count = usize::try_from(n).unwrap_or(0).min(BATCH);
        Ok(self.count)
    }

    /// Datagram `i` of the last [`recv`](Self::recv): its bytes and source,
    /// or `None` if it was truncated (longer than [`DATAGRAM_MAX`]) or its
    /// source is not an IP address.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let hdr = self.hdrs.get(i)?;
        if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = usize::try_from(hdr.msg_len).ok()?.min(DATAGRAM_MAX);
        let addr = socket_addr(self.addrs.get(i)?, hdr.msg_hdr.msg_namelen)?;
        Some((self.bufs.get(i)?.get(..len)?, addr))
    }
}

/// The IP socket address the kernel wrote into `storage` (`len` bytes).
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = usize::try_from(len).ok()?;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a `sockaddr_in`;
            // `sockaddr_storage` is large and aligned enough for any address.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Send side: up to [`BATCH`] datagrams queued, written by one `sendmmsg`.
pub struct SendBatch {
    bufs: Box<[[u8; DATAGRAM_MAX]]>,
    lens: [usize; BATCH],
    addrs: Vec<SockAddr>,
    iovecs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    count: usize,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("count", &self.count)
            .finish()
    }
}

// SAFETY: as for `RecvBatch`.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> SendBatch {
        SendBatch::new()
    }
}

impl SendBatch {
    /// Allocates the buffers.
    pub fn new() -> SendBatch {
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        SendBatch {
            bufs: vec![[0u8; DATAGRAM_MAX]; BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: vec![unspecified; BATCH],
            iovecs: (0..BATCH).map(|_| zeroed_plain()).collect(),
            hdrs: (0..BATCH).map(|_| zeroed_plain()).collect(),
            count: 0,
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether another datagram fits.
    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// Queues `datagram` for `to`; `false` if the batch is full or the
    /// datagram too long (flush first).
    pub fn push(&mut self, to: SocketAddr, datagram: &[u8]) -> bool {
        let i = self.count;
        let (Some(buf), Some(addr)) = (self.bufs.get_mut(i), self.addrs.get_mut(i)) else {
            return false;
        };
        let Some(dst) = buf.get_mut(..datagram.len()) else {
            return false;
        };
        dst.copy_from_slice(datagram);
        *addr = SockAddr::from(to);
        if let Some(len) = self.lens.get_mut(i) {
            *len = datagram.len();
        }
        self.count += 1;
        true
    }

    /// Sends what is queued. Returns how many datagrams went; what the socket
    /// would not take stays queued (in order) for the next call.
    pub fn flush(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        if self.count == 0 {
            return Ok(0);
        }
        for i in 0..self.count {
            let (Some(buf), Some(iov), Some(addr), Some(hdr), Some(len)) = (
                self.bufs.get_mut(i),
                self.iovecs.get_mut(i),
                self.addrs.get(i),
                self.hdrs.get_mut(i),
                self.lens.get(i),
            ) else {
                break;
            };
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = *len;
            hdr.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            hdr.msg_hdr.msg_namelen = addr.len();
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = std::ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        // SAFETY: the first `count` headers are initialised and point into
        // `bufs`, `iovecs` and `addrs`, owned by `self` and untouched until
        // the call returns.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => {
                    // A datagram the kernel refuses outright (an unreachable
                    // destination): drop it, keep the rest.
                    self.drop_front(1);
                    Err(error)
                }
            };
        }
        let sent = usize::try_from(n).unwrap_or(0).min(self.count);
        self.drop_front(sent);
        Ok(sent)
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.count);
        if n == 0 {
            return;
        }
        for i in n..self.count {
            let j = i - n;
            let len = self.lens.get(i).copied().unwrap_or(0);
            if let (Some(src), Some(addr)) = (self.bufs.get(i).copied(), self.addrs.get(i).cloned())
            {
                if let Some(dst) = self.bufs.get_mut(j) {
                    if let (Some(d), Some(s)) = (dst.get_mut(..len), src.get(..len)) {
                        d.copy_from_slice(s);
                    }
                }
                if let Some(a) = self.addrs.get_mut(j) {
                    *a = addr;
                }
                if let Some(l) = self.lens.get_mut(j) {
                    *l = len;
                }
            }
        }
        self.count -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_out_in_one_call_and_comes_back_in_one_call() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let to = b.local_addr().unwrap();
        let mut send = SendBatch::new();
        for i in 0..10u8 {
            assert!(send.push(to, &[i; 100]));
        }
        assert_eq!(send.flush(&a).unwrap(), 10);
        assert!(send.is_empty());
        let mut recv = RecvBatch::new();
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = recv.recv(&b).unwrap();
            for i in 0..n {
                let (bytes, from) = recv.get(i).unwrap();
                assert_eq!(from, a.local_addr().unwrap());
                got.push(bytes[0]);
            }
            if got.len() == 10 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
        assert_eq!(recv.recv(&b).unwrap(), 0, "nothing more: would block");
    }

    #[test]
    fn an_oversized_datagram_is_refused_not_truncated_silently() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(&[7u8; DATAGRAM_MAX + 100], b.local_addr().unwrap())
            .unwrap();
        b.set_nonblocking(true).unwrap();
        let mut recv = RecvBatch::new();
        let mut n = 0;
        for _ in 0..100 {
            n = recv.recv(&b).unwrap();
            if n > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(n, 1);
        assert!(recv.get(0).is_none(), "truncated datagrams are refused");
    }
}
