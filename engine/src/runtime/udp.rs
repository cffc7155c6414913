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
/// With UDP GRO ([`RecvBatch::enable_gro`]): entries per batch, each room
/// for one coalesced run of datagrams (up to a UDP payload's 64 KiB).
pub const GRO_ENTRIES: usize = 16;
const GRO_ENTRY_BYTES: usize = 65_536;

/// Plain C structs the kernel interface uses, all-zero.
trait ZeroedPlain {}
impl ZeroedPlain for libc::sockaddr_storage {}
impl ZeroedPlain for libc::iovec {}
impl ZeroedPlain for libc::mmsghdr {}

/// What a control message may carry: plain C data for which every bit
/// pattern is a valid value, so it can be read from the kernel's bytes.
trait ControlData: Copy {}
impl ControlData for libc::c_int {}
impl ControlData for libc::timespec {}

fn zeroed_plain<T: ZeroedPlain>() -> T {
    // SAFETY: `ZeroedPlain` is implemented only for C structs of integers
    // and raw pointers, for which all-zero is a valid value (null pointers,
    // zero lengths, AF_UNSPEC).
    unsafe { zeroed() }
}

/// Receive side: [`BATCH`] buffers with their source addresses, or with
/// UDP GRO [`GRO_ENTRIES`] larger ones, each holding a run of datagrams
/// from one source that the kernel coalesced (see [`datagrams`](Self::datagrams)).
pub struct RecvBatch {
    /// `entries` buffers of `entry_bytes` each, back to back.
    bufs: Box<[u8]>,
    entry_bytes: usize,
    entries: usize,
    gro: bool,
    addrs: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// Per datagram, room for its control messages (the kernel's arrival
    /// timestamp, when the socket asks for it: [`enable_arrival_times`]);
    /// `u64`s, so the room is aligned as `cmsghdr` needs.
    controls: Box<[[u64; CONTROL_WORDS]]>,
    count: usize,
}

/// Control-message room per received entry, in `u64`s: the arrival stamp
/// (`SO_TIMESTAMPNS`: a `cmsghdr` and a `timespec`, 32 bytes) and with GRO
/// the segment size (`UDP_GRO`: a `cmsghdr` and an `int`, 24 bytes).
const CONTROL_WORDS: usize = 8;

/// Asks the kernel to stamp each datagram `socket` receives with its
/// arrival time (`SO_TIMESTAMPNS`), read by [`RecvBatch::arrival_unix_ns`].
pub fn enable_arrival_times(socket: &impl AsRawFd) -> io::Result<()> {
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// `setsockopt(level, name)` with an integer value.
fn set_int_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&value`,
    // which lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The datagrams of one received entry ([`RecvBatch::datagrams`]).
#[derive(Debug, Clone)]
pub struct Datagrams<'a> {
    rest: &'a [u8],
    segment: usize,
    /// An empty datagram is still one datagram.
    empty_left: bool,
}

impl<'a> Iterator for Datagrams<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return std::mem::take(&mut self.empty_left).then_some(self.rest);
        }
        let (datagram, rest) = self.rest.split_at(self.segment.min(self.rest.len()));
        self.rest = rest;
        Some(datagram)
    }
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
        RecvBatch::with_entries(BATCH, DATAGRAM_MAX, false)
    }

    fn with_entries(entries: usize, entry_bytes: usize, gro: bool) -> RecvBatch {
        RecvBatch {
            bufs: vec![0u8; entries * entry_bytes].into_boxed_slice(),
            entry_bytes,
            entries,
            gro,
            addrs: (0..entries).map(|_| zeroed_plain()).collect(),
            iovecs: (0..entries).map(|_| zeroed_plain()).collect(),
            hdrs: (0..entries).map(|_| zeroed_plain()).collect(),
            controls: vec![[0u64; CONTROL_WORDS]; entries].into_boxed_slice(),
            count: 0,
        }
    }

    /// Turns UDP GRO on for `socket` (the kernel then hands over a run of
    /// datagrams from one source, sent with GSO, as one entry) and makes
    /// this batch's buffers large enough for it: [`GRO_ENTRIES`] of 64 KiB
    /// (1 MiB). Returns whether GRO is on; if the kernel refuses, the
    /// batch stays as it was.
    /// One batch may serve several sockets: call this for each.
    pub fn enable_gro(&mut self, socket: &impl AsRawFd) -> bool {
        if set_int_option(socket, libc::SOL_UDP, libc::UDP_GRO, 1).is_err() {
            return false;
        }
        if !self.gro {
            *self = RecvBatch::with_entries(GRO_ENTRIES, GRO_ENTRY_BYTES, true);
        }
        true
    }

    /// Whether GRO is on.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// The most entries one [`recv`](Self::recv) takes: fewer means the
    /// socket was read dry.
    pub fn capacity(&self) -> usize {
        self.entries
    }

    /// Receives what the socket has, up to [`capacity`](Self::capacity)
    /// entries ([`BATCH`] datagrams, or with GRO [`GRO_ENTRIES`] runs);
    /// `Ok(0)` when nothing is waiting.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        self.count = 0;
        let entry_bytes = self.entry_bytes;
        for i in 0..self.entries {
            let (Some(buf), Some(iov), Some(addr), Some(hdr), Some(control)) = (
                self.bufs.get_mut(i * entry_bytes..(i + 1) * entry_bytes),
                self.iovecs.get_mut(i),
                self.addrs.get_mut(i),
                self.hdrs.get_mut(i),
                self.controls.get_mut(i),
            ) else {
                break;
            };
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = entry_bytes;
            hdr.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = control.as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        // SAFETY: `hdrs` holds `entries` initialised headers whose name and
        // iov pointers point into `addrs`, `iovecs` and `bufs`, which live as
        // long as `self` and are not touched until the call returns.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.entries as libc::c_uint,
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
        self.count = usize::try_from(n).unwrap_or(0).min(self.entries);
        Ok(self.count)
    }

    /// Starts filling the batch from elsewhere ([`fill`](Self::fill)):
    /// empties it.
    pub(crate) fn begin_fill(&mut self) {
        self.count = 0;
    }

    /// Appends a datagram from `from` received elsewhere (the AF_XDP
    /// port), without control messages. Returns `false` when the batch is
    /// full. Without GRO only.
    pub(crate) fn fill_from(&mut self, from: SocketAddr, payload: &[u8]) -> bool {
        let name = SockAddr::from(from);
        // SAFETY: `SockAddr` holds `len()` initialised bytes of a C socket
        // address at `as_ptr()`, alive while `name` is.
        let bytes =
            unsafe { std::slice::from_raw_parts(name.as_ptr().cast::<u8>(), name.len() as usize) };
        self.fill(bytes, &[], payload, false)
    }

    /// Appends a datagram received elsewhere (io_uring's multishot
    /// receive): its source as a C `sockaddr` in `name`, its control
    /// messages, its payload, and whether the kernel cut it (`truncated`:
    /// then [`get`](Self::get) refuses it, as after `recvmmsg`). Returns
    /// `false` when the batch is full. Without GRO only.
    pub(crate) fn fill(
        &mut self,
        name: &[u8],
        control: &[u8],
        payload: &[u8],
        truncated: bool,
    ) -> bool {
        let i = self.count;
        let entry_bytes = self.entry_bytes;
        let (Some(buf), Some(addr), Some(hdr), Some(room)) = (
            self.bufs.get_mut(i * entry_bytes..(i + 1) * entry_bytes),
            self.addrs.get_mut(i),
            self.hdrs.get_mut(i),
            self.controls.get_mut(i),
        ) else {
            return false;
        };
        let len = payload.len().min(entry_bytes);
        if let (Some(dst), Some(src)) = (buf.get_mut(..len), payload.get(..len)) {
            dst.copy_from_slice(src);
        }
        let name_len = name.len().min(size_of::<libc::sockaddr_storage>());
        *addr = zeroed_plain();
        // SAFETY: `addr` is a `sockaddr_storage` (128 bytes); at most that
        // many bytes are copied into it from `name`, which holds them.
        unsafe {
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                (addr as *mut libc::sockaddr_storage).cast::<u8>(),
                name_len,
            );
        }
        let room_bytes = size_of::<[u64; CONTROL_WORDS]>();
        let control_len = control.len().min(room_bytes);
        // SAFETY: `room` is `room_bytes` long; at most that many bytes are
        // copied into it from `control`, which holds them.
        unsafe {
            std::ptr::copy_nonoverlapping(
                control.as_ptr(),
                room.as_mut_ptr().cast::<u8>(),
                control_len,
            );
        }
        hdr.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        hdr.msg_hdr.msg_namelen = name_len as libc::socklen_t;
        hdr.msg_hdr.msg_control = room.as_mut_ptr().cast();
        hdr.msg_hdr.msg_controllen = control_len as _;
        hdr.msg_hdr.msg_flags = if truncated || payload.len() > entry_bytes {
            libc::MSG_TRUNC
        } else {
            0
        };
        hdr.msg_len = len as libc::c_uint;
        self.count += 1;
        true
    }

    /// Entries the last [`recv`](Self::recv) took: datagrams, or with GRO
    /// runs of datagrams ([`datagrams`](Self::datagrams)).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last [`recv`](Self::recv) took nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entry `i` of the last [`recv`](Self::recv): its bytes and source,
    /// or `None` if it was truncated (longer than its buffer) or its source
    /// is not an IP address. Without GRO an entry is one datagram; with it,
    /// use [`datagrams`](Self::datagrams).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let hdr = self.hdrs.get(i)?;
        if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = usize::try_from(hdr.msg_len).ok()?.min(self.entry_bytes);
        let addr = socket_addr(self.addrs.get(i)?, hdr.msg_hdr.msg_namelen)?;
        let start = i * self.entry_bytes;
        Some((self.bufs.get(start..start + len)?, addr))
    }

    /// The datagrams of entry `i` and their source: one, or with GRO the
    /// run the kernel coalesced, cut at the segment size it reports
    /// (`UDP_GRO`; every datagram of a run has that size but the last).
    pub fn datagrams(&self, i: usize) -> Option<(Datagrams<'_>, SocketAddr)> {
        let (bytes, from) = self.get(i)?;
        let segment = self
            .gro
            .then(|| self.control::<libc::c_int>(i, libc::SOL_UDP, libc::UDP_GRO))
            .flatten()
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&s| s > 0)
            .unwrap_or(bytes.len());
        Some((
            Datagrams {
                rest: bytes,
                segment,
                empty_left: bytes.is_empty(),
            },
            from,
        ))
    }

    /// The value carried by entry `i`'s control message `level`/`kind`,
    /// if the kernel attached one.
    fn control<T: ControlData>(
        &self,
        i: usize,
        level: libc::c_int,
        kind: libc::c_int,
    ) -> Option<T> {
        if i >= self.count {
            return None;
        }
        let hdr = self.hdrs.get(i)?;
        // SAFETY: the header's control pointer and length are those the
        // kernel filled for this entry (into `controls[i]`, which lives as
        // long as `self`); CMSG_FIRSTHDR/NXTHDR stay within that length, the
        // message is checked to hold a whole `T`, which is read unaligned,
        // and every bit pattern is a `T` (`ControlData`).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr.msg_hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == level
                    && (*cmsg).cmsg_type == kind
                    && (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(size_of::<T>() as u32) as usize
                {
                    return Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<T>()));
                }
                cmsg = libc::CMSG_NXTHDR(&hdr.msg_hdr, cmsg);
            }
        }
        None
    }

    /// When datagram `i` of the last [`recv`](Self::recv) reached the
    /// socket (Unix ns, the kernel's stamp), if the socket asks for stamps
    /// ([`enable_arrival_times`]).
    pub fn arrival_unix_ns(&self, i: usize) -> Option<u64> {
        let ts: libc::timespec = self.control(i, libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS)?;
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u64::try_from(ts.tv_nsec).ok()?;
        secs.checked_mul(1_000_000_000)?.checked_add(nanos)
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

/// Most bytes one GSO send may carry (a UDP payload's limit, less headers).
const GSO_MAX_BYTES: usize = 65_000;
/// Most segments one GSO send may carry (the kernel's UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// Control-message room for one `UDP_SEGMENT` (a `u16`), 8-byte aligned.
type Control = [u64; 4];

/// Send side: up to [`BATCH`] datagrams queued, written by one `sendmmsg`.
///
/// With UDP generic segmentation offload (where the kernel has it, probed by
/// [`SendBatch::enable_gso`]), a run of datagrams to one destination of
/// equal length (the last may be shorter) goes as one message with a
/// `UDP_SEGMENT` control message: the kernel cuts it into datagrams after the
/// system call. Frames to a load harness or a device gateway (one address,
/// uniform answers) form such runs.
pub struct SendBatch {
    bufs: Box<[[u8; DATAGRAM_MAX]]>,
    lens: [usize; BATCH],
    addrs: Vec<SockAddr>,
    iovecs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    controls: Box<[Control]>,
    /// Datagrams each header of the last flush carried.
    groups: [usize; BATCH],
    count: usize,
    gso: bool,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("count", &self.count)
            .field("gso", &self.gso)
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
    /// Allocates the buffers. GSO is off until [`enable_gso`](Self::enable_gso).
    pub fn new() -> SendBatch {
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        SendBatch {
            bufs: vec![[0u8; DATAGRAM_MAX]; BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: vec![unspecified; BATCH],
            iovecs: (0..BATCH).map(|_| zeroed_plain()).collect(),
            hdrs: (0..BATCH).map(|_| zeroed_plain()).collect(),
            controls: vec![[0u64; 4]; BATCH].into_boxed_slice(),
            groups: [0; BATCH],
            count: 0,
            gso: false,
        }
    }

    /// Turns GSO on if `socket`'s kernel supports it; returns whether it did.
    pub fn enable_gso(&mut self, socket: &impl AsRawFd) -> bool {
        // A segment size of 0 changes nothing; it only tells whether the
        // option exists.
        self.gso = set_int_option(socket, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        self.gso
    }

    /// Turns GSO off: every datagram goes as a message of its own, as
    /// from devices that each send their own.
    pub fn disable_gso(&mut self) {
        self.gso = false;
    }

    /// Whether GSO is in use.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.count = 0;
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

    /// How many datagrams from `i` on go as one GSO message.
    fn run_from(&self, i: usize) -> usize {
        let Some(&len) = self.lens.get(i) else {
            return 1;
        };
        if !self.gso || len == 0 {
            return 1;
        }
        let mut j = i + 1;
        while j < self.count
            && j - i < GSO_MAX_SEGMENTS
            && (j - i + 1) * len <= GSO_MAX_BYTES
            && self.addrs.get(j) == self.addrs.get(i)
            && self.lens.get(j - 1) == Some(&len)
            && self.lens.get(j).is_some_and(|l| *l <= len && *l > 0)
        {
            j += 1;
        }
        j - i
    }

    /// Sends what is queued. Returns how many datagrams went; what the socket
    /// would not take stays queued (in order) for the next call.
    pub fn flush(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let headers = self.prepare();
        if headers == 0 {
            return Ok(0);
        }
        // SAFETY: `prepare` initialised the first `headers` headers; their
        // name, iov and control pointers point into `addrs`, `iovecs`, `bufs`
        // and `controls`, owned by `self` and untouched until the call
        // returns; each header's iovecs are consecutive entries of `iovecs`.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                headers as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return self.refused(io::Error::last_os_error());
        }
        Ok(self.sent(usize::try_from(n).unwrap_or(0).min(headers)))
    }

    /// Builds the message headers for what is queued (a GSO run per
    /// header where it can) and returns how many there are: headers
    /// `0..n` are then ready for [`header`](Self::header), until the batch
    /// changes.
    pub(crate) fn prepare(&mut self) -> usize {
        if self.count == 0 {
            return 0;
        }
        for i in 0..self.count {
            let (Some(buf), Some(iov), Some(len)) = (
                self.bufs.get_mut(i),
                self.iovecs.get_mut(i),
                self.lens.get(i),
            ) else {
                break;
            };
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = *len;
        }
        let mut headers = 0usize;
        let mut i = 0usize;
        while i < self.count {
            let run = self.run_from(i);
            let segment = self.lens.get(i).copied().unwrap_or(0);
            let (Some(hdr), Some(addr), Some(control)) = (
                self.hdrs.get_mut(headers),
                self.addrs.get(i),
                self.controls.get_mut(headers),
            ) else {
                break;
            };
            hdr.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            hdr.msg_hdr.msg_namelen = addr.len();
            hdr.msg_hdr.msg_iov = self
                .iovecs
                .get_mut(i)
                .map_or(std::ptr::null_mut(), |v| v as *mut libc::iovec);
            hdr.msg_hdr.msg_iovlen = run;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
            if run > 1 {
                let space = cmsg_space_u16();
                // SAFETY: `control` is 32 bytes, 8-byte aligned, at least
                // CMSG_SPACE(2); the header and its data are written inside it.
                unsafe {
                    let cmsg = control.as_mut_ptr().cast::<libc::cmsghdr>();
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    libc::CMSG_DATA(cmsg)
                        .cast::<u16>()
                        .write_unaligned(u16::try_from(segment).unwrap_or(u16::MAX));
                }
                hdr.msg_hdr.msg_control = control.as_mut_ptr().cast();
                hdr.msg_hdr.msg_controllen = space as _;
            } else {
                hdr.msg_hdr.msg_control = std::ptr::null_mut();
                hdr.msg_hdr.msg_controllen = 0;
            }
            if let Some(g) = self.groups.get_mut(headers) {
                *g = run;
            }
            headers += 1;
            i += run;
        }
        headers
    }

    /// Message header `k` of the last [`prepare`](Self::prepare), for a
    /// system call made elsewhere (io_uring): valid while the batch is
    /// neither moved nor changed.
    pub(crate) fn header(&self, k: usize) -> Option<*const libc::msghdr> {
        self.hdrs.get(k).map(|h| &h.msg_hdr as *const libc::msghdr)
    }

    /// The first `headers` prepared headers went: their datagrams leave
    /// the queue. Returns how many datagrams that was.
    pub(crate) fn sent(&mut self, headers: usize) -> usize {
        let sent: usize = self.groups.iter().take(headers).sum();
        self.drop_front(sent);
        sent
    }

    /// Settles a prepared flush whose headers the kernel answered one by
    /// one (io_uring: `results[k]` is header `k`'s bytes sent or
    /// `-errno`). Sent datagrams leave the queue; those the socket would
    /// not take (`EAGAIN`), and a GSO run the device cannot segment (then
    /// GSO goes off), stay queued in order; a datagram refused outright is
    /// dropped. Returns the datagrams sent, or the first refusal's error
    /// once everything is settled.
    pub(crate) fn settle(&mut self, results: &[i32]) -> io::Result<usize> {
        let mut keep = [false; BATCH];
        let mut first_error = None;
        let mut sent = 0usize;
        let mut at = 0usize;
        for (k, &result) in results.iter().enumerate() {
            let group = self.groups.get(k).copied().unwrap_or(0);
            let errno = result.checked_neg().unwrap_or(libc::EIO);
            let retry = result < 0
                && (matches!(errno, libc::EAGAIN | libc::EINTR)
                    || (group > 1 && self.gso && matches!(errno, libc::EIO | libc::EINVAL)));
            if result >= 0 {
                sent += group;
            } else if retry {
                if matches!(errno, libc::EIO | libc::EINVAL) {
                    self.gso = false;
                }
                for flag in keep.iter_mut().skip(at).take(group) {
                    *flag = true;
                }
            } else if first_error.is_none() {
                first_error = Some(io::Error::from_raw_os_error(errno));
            }
            at += group;
        }
        // Datagrams past the headers answered (none when all were) stay.
        for flag in keep.iter_mut().skip(at).take(self.count.saturating_sub(at)) {
            *flag = true;
        }
        let mut kept = 0usize;
        for i in 0..self.count {
            if !keep.get(i).copied().unwrap_or(false) {
                continue;
            }
            if i != kept {
                let len = self.lens.get(i).copied().unwrap_or(0);
                self.bufs.copy_within(i..=i, kept);
                self.addrs.swap(i, kept);
                if let Some(l) = self.lens.get_mut(kept) {
                    *l = len;
                }
            }
            kept += 1;
        }
        self.count = kept;
        match first_error {
            Some(error) => Err(error),
            None => Ok(sent),
        }
    }

    /// The kernel refused the first prepared header with `error`: what
    /// it means for the queue (see [`flush`](Self::flush)).
    pub(crate) fn refused(&mut self, error: io::Error) -> io::Result<usize> {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ if self.gso && matches!(error.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                // The device cannot segment after all (EIO), or a segment
                // does not fit the path's MTU (EINVAL, IPv6): send plainly.
                self.gso = false;
                Ok(0)
            }
            _ => {
                // A datagram the kernel refuses outright (an unreachable
                // destination): drop its message, keep the rest.
                let first = self.groups.first().copied().unwrap_or(1).max(1);
                self.drop_front(first);
                Err(error)
            }
        }
    }

    /// Queued datagram `i` and where it goes.
    pub(crate) fn queued(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let len = *self.lens.get(i)?;
        let bytes = self.bufs.get(i)?.get(..len)?;
        Some((bytes, self.addrs.get(i)?.as_socket()?))
    }

    /// The first `n` queued datagrams leave the queue (sent elsewhere).
    pub(crate) fn drop_front(&mut self, n: usize) {
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

fn cmsg_space_u16() -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_asking_for_arrival_stamps_gets_the_time_each_datagram_arrived() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&b, &plain] {
            s.set_nonblocking(true).unwrap();
        }
        enable_arrival_times(&b).unwrap();
        // The kernel turns receive stamping on shortly after the first
        // socket asks (until then a datagram is stamped when it is read).
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now_ns = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        };
        let before = now_ns();
        a.send_to(b"first", b.local_addr().unwrap()).unwrap();
        a.send_to(b"plain", plain.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let after_sleep = now_ns();
        let mut recv = RecvBatch::new();
        assert_eq!(recv.recv(&b).unwrap(), 1);
        let at = recv.arrival_unix_ns(0).expect("stamped");
        assert!(
            at >= before && at <= after_sleep,
            "{before} <= {at} <= {after_sleep}"
        );
        assert!(now_ns() - at >= 30_000_000, "it waited 30 ms in the socket");
        assert_eq!(recv.arrival_unix_ns(1), None, "no second datagram");
        assert_eq!(recv.recv(&plain).unwrap(), 1);
        assert_eq!(recv.arrival_unix_ns(0), None, "not asked: not stamped");
    }

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
    fn runs_of_equal_datagrams_go_as_one_gso_message_and_arrive_separately() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&b, &c] {
            s.set_nonblocking(true).unwrap();
        }
        let mut send = SendBatch::new();
        if !send.enable_gso(&a) {
            eprintln!("kernel without UDP GSO: plain sendmmsg only");
        }
        let (to_b, to_c) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        // A run of 20 x 1000 bytes and a shorter tail to B, then two to C.
        for i in 0..20u8 {
            assert!(send.push(to_b, &[i; 1000]));
        }
        assert!(send.push(to_b, &[99; 300]));
        assert!(send.push(to_c, &[7; 500]));
        assert!(send.push(to_c, &[8; 400]));
        let mut sent = 0;
        for _ in 0..100 {
            sent += send.flush(&a).unwrap();
            if send.is_empty() {
                break;
            }
        }
        assert_eq!(sent, 23);
        let mut recv = RecvBatch::new();
        let mut got_b: Vec<(u8, usize)> = Vec::new();
        let mut got_c: Vec<(u8, usize)> = Vec::new();
        for _ in 0..200 {
            for (socket, got) in [(&b, &mut got_b), (&c, &mut got_c)] {
                let n = recv.recv(socket).unwrap();
                for i in 0..n {
                    let (bytes, _) = recv.get(i).unwrap();
                    got.push((bytes[0], bytes.len()));
                }
            }
            if got_b.len() == 21 && got_c.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut expected_b: Vec<(u8, usize)> = (0..20u8).map(|i| (i, 1000)).collect();
        expected_b.push((99, 300));
        assert_eq!(
            got_b, expected_b,
            "each segment arrives as its own datagram, in order"
        );
        assert_eq!(got_c, vec![(7, 500), (8, 400)]);
    }

    #[test]
    fn with_gro_a_gso_run_arrives_as_one_entry_and_is_cut_back_into_its_datagrams() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let mut send = SendBatch::new();
        let mut recv = RecvBatch::new();
        // CI and this project's machines run Linux ≥ 5.0: both must work.
        assert!(send.enable_gso(&a), "UDP GSO");
        assert!(recv.enable_gro(&b), "UDP GRO");
        assert!(recv.gro());
        let to_b = b.local_addr().unwrap();
        // A run of 30 x 64 bytes with a 20-byte tail, then one lone datagram.
        for i in 0..30u8 {
            assert!(send.push(to_b, &[i; 64]));
        }
        assert!(send.push(to_b, &[99; 20]));
        let mut sent = 0;
        for _ in 0..100 {
            sent += send.flush(&a).unwrap();
            if send.is_empty() {
                break;
            }
        }
        assert_eq!(sent, 31);
        a.send_to(&[200; 10], to_b).unwrap();
        let mut entries = 0;
        let mut got: Vec<(u8, usize)> = Vec::new();
        for _ in 0..200 {
            let n = recv.recv(&b).unwrap();
            entries += n;
            for i in 0..n {
                let (datagrams, from) = recv.datagrams(i).unwrap();
                assert_eq!(from, a.local_addr().unwrap());
                got.extend(datagrams.map(|d| (d[0], d.len())));
            }
            if got.len() == 32 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut expected: Vec<(u8, usize)> = (0..30u8).map(|i| (i, 64)).collect();
        expected.push((99, 20));
        expected.push((200, 10));
        assert_eq!(got, expected, "every datagram, whole and in order");
        assert!(
            entries < 32,
            "the GSO run arrived coalesced: {entries} entries for 32 datagrams"
        );
    }

    #[test]
    fn settling_headers_one_by_one_keeps_what_the_socket_would_not_take_in_order() {
        let (a, b, c) = (
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        c.set_nonblocking(true).unwrap();
        let mut send = SendBatch::new();
        // Alternate destinations: one header per datagram.
        for (i, to) in [&b, &c, &b, &c].iter().enumerate() {
            assert!(send.push(to.local_addr().unwrap(), &[i as u8; 8]));
        }
        assert_eq!(send.prepare(), 4);
        let refused = -libc::EPERM;
        let result = send.settle(&[8, -libc::EAGAIN, refused, -libc::EAGAIN]);
        assert_eq!(
            result.unwrap_err().raw_os_error(),
            Some(libc::EPERM),
            "the refusal is told"
        );
        assert_eq!(send.len(), 2, "sent and refused ones gone, the rest kept");
        assert_eq!(send.flush(&a).unwrap(), 2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut recv = RecvBatch::new();
        assert_eq!(recv.recv(&c).unwrap(), 2);
        assert_eq!(recv.get(0).unwrap().0, &[1u8; 8], "in their order");
        assert_eq!(recv.get(1).unwrap().0, &[3u8; 8]);
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
