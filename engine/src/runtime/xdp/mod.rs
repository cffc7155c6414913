//! `[io] backend = "xdp"`: device datagrams through AF_XDP sockets, one per
//! worker and receive queue, beside the client socket.
//!
//! An XDP program on the client address's interface ([`program`]) hands
//! each IPv4 UDP datagram for the client port to the AF_XDP socket of the
//! queue it arrived on ([`xsk`]); the worker reads it from shared memory
//! with no system call and no socket buffer. Everything else (IPv6, IP
//! options, fragments, a queue without a socket) takes the kernel's path
//! to the client socket, which stays bound and served: nothing the port
//! used to receive is lost by turning XDP on.
//!
//! Answers go back the way their request came: a worker remembers, per
//! device address, the Ethernet addresses of the last frame from it (a
//! bounded table, [`NEIGHBOURS`] entries) and writes the answer's frame
//! itself, checksums and all ([`frame`]). An answer to an address it has
//! no entry for (IPv6, or one evicted) goes through the client socket.
//!
//! What this bypasses: the kernel's IP stack for these datagrams, so
//! nftables/iptables rules, conntrack and socket counters do not see them
//! (`docs/operations.md`). The interface's receive queues beyond the
//! workers' count have no socket: their traffic takes the kernel's path.

pub mod frame;
pub mod program;
pub mod xsk;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use self::frame::Route;
use self::program::{AttachMode, Attached, Filter, XdpError, XskMap};
use self::xsk::Xsk;
use super::udp::{RecvBatch, SendBatch};

/// The bytes of one frame.
const FRAME_BYTES: usize = xsk::FRAME_SIZE as usize;

/// Device addresses each worker remembers the Ethernet route of.
pub const NEIGHBOURS: usize = 4096;

/// Where the XDP path attaches, from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpSettings {
    /// The interface (`[io] xdp_interface`); `None`: the one holding the
    /// client address.
    pub interface: Option<String>,
    /// `[io] xdp_mode`; `None`: native. Generic only when asked for: on
    /// interfaces that carry software-segmented packets (veth, loopback:
    /// senders on the same host using UDP GSO) the generic hook sees a run
    /// of datagrams as one frame, which would be read as one datagram, so
    /// it is for interfaces without driver support that do not.
    pub mode: Option<AttachMode>,
}

/// The program attached for one appliance, shared by its workers (the
/// last to drop it detaches it).
#[derive(Debug)]
pub struct XdpPath {
    attached: Attached,
    queues: u32,
    interface: String,
}

impl XdpPath {
    /// Attaches the program for a client port listening on `listen`.
    pub fn attach(listen: SocketAddr, settings: &XdpSettings) -> Result<Arc<XdpPath>, XdpError> {
        let address = match listen {
            SocketAddr::V4(v4) if !v4.ip().is_unspecified() => Some(*v4.ip()),
            _ => None,
        };
        let interface = match (&settings.interface, address) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => interface_holding(ip)?,
            (None, None) => {
                return Err(XdpError::NoInterfaceFor(Ipv4Addr::UNSPECIFIED));
            }
        };
        let ifindex = interface_index(&interface)?;
        let queues = receive_queues(&interface);
        let map = XskMap::create(queues)?;
        let filter = Filter {
            port: listen.port(),
            address,
        };
        let mode = settings.mode.unwrap_or(AttachMode::Native);
        let attached = Attached::attach(ifindex, map, filter, mode)?;
        Ok(Arc::new(XdpPath {
            attached,
            queues,
            interface,
        }))
    }

    /// The interface's receive queues (each can have one worker's socket).
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The mode the kernel attached the program in.
    pub fn mode(&self) -> AttachMode {
        self.attached.mode()
    }
}

/// A worker's AF_XDP socket and the routes back to devices.
pub struct XdpPort {
    xsk: Xsk,
    /// Keeps the program attached while this worker runs.
    _path: Arc<XdpPath>,
    neighbours: Box<[Option<(Ipv4Addr, Route)>]>,
    next_ip_id: u16,
    /// Frames the program redirected that were not a datagram after all.
    pub malformed: u64,
    /// Datagrams read from the port.
    pub received_frames: u64,
    /// Answers written as frames.
    pub sent_frames: u64,
}

impl std::fmt::Debug for XdpPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpPort").field("xsk", &self.xsk).finish()
    }
}

impl XdpPort {
    /// Opens the socket for `queue` and puts it in the path's map.
    pub fn open(path: &Arc<XdpPath>, queue: u32) -> Result<XdpPort, XdpError> {
        let ifindex = path.attached.ifindex();
        let xsk = Xsk::open(ifindex, queue)?;
        path.attached
            .map()
            .insert(queue, xsk.fd())
            .map_err(|source| XdpError::Socket {
                queue,
                step: "adding it to the XSKMAP",
                source,
            })?;
        Ok(XdpPort {
            xsk,
            _path: path.clone(),
            neighbours: vec![None; NEIGHBOURS].into_boxed_slice(),
            next_ip_id: 0,
            malformed: 0,
            received_frames: 0,
            sent_frames: 0,
        })
    }

    /// The socket to poll for received frames.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.xsk.fd()
    }

    /// Whether received frames or unsent answers wait.
    pub fn has_more(&self) -> bool {
        self.xsk.has_received() || self.xsk.tx_waiting()
    }

    /// Whether the NIC shares this socket's memory (zero-copy).
    pub fn zero_copy(&self) -> bool {
        self.xsk.zero_copy()
    }

    /// The kernel's counters: frames dropped for want of room, and
    /// invalid descriptors.
    pub fn statistics(&self) -> Option<libc::xdp_statistics> {
        self.xsk.statistics()
    }

    fn slot(ip: Ipv4Addr) -> usize {
        // Fibonacci hashing of the address into the table.
        let h = u32::from(ip).wrapping_mul(0x9e37_79b9);
        (h >> 20) as usize % NEIGHBOURS
    }

    /// Reads received frames into `batch` (emptied first); returns how
    /// many datagrams it holds.
    pub fn recv_into(&mut self, batch: &mut RecvBatch) -> usize {
        batch.begin_fill();
        let room = batch.capacity();
        let neighbours = &mut self.neighbours;
        let mut malformed = 0u64;
        self.xsk.receive(room, |bytes| match frame::parse(bytes) {
            Some(got) => {
                let route = Route {
                    src_mac: got.dst_mac,
                    dst_mac: got.src_mac,
                    src: got.dst,
                    dst: got.src,
                };
                if let Some(entry) = neighbours.get_mut(XdpPort::slot(*got.src.ip())) {
                    *entry = Some((*got.src.ip(), route));
                }
                batch.fill_from(SocketAddr::V4(got.src), got.payload);
            }
            None => malformed += 1,
        });
        self.malformed += malformed;
        self.received_frames += batch.len() as u64;
        batch.len()
    }

    /// What the port counted, with the kernel's drops.
    pub fn counts(&self) -> crate::runtime::metrics::XdpCounts {
        let dropped = self
            .statistics()
            .map_or(0, |s| s.rx_dropped + s.rx_ring_full);
        crate::runtime::metrics::XdpCounts {
            received: self.received_frames,
            sent: self.sent_frames,
            dropped,
            malformed: self.malformed,
        }
    }

    /// The route back to `to`, if a frame from its address was seen.
    fn route_to(&self, to: SocketAddr) -> Option<Route> {
        let SocketAddr::V4(to) = to else {
            return None;
        };
        match self.neighbours.get(XdpPort::slot(*to.ip()))? {
            Some((ip, route)) if ip == to.ip() => Some(Route {
                dst: SocketAddrV4::new(*ip, to.port()),
                ..*route
            }),
            _ => None,
        }
    }

    /// Asks the kernel again to send frames still waiting in the transmit
    /// ring (a flush's `sendto`s stop after a bounded number): called each
    /// turn, so answers never wait for the next flush to leave.
    pub fn poll_tx(&mut self) -> io::Result<()> {
        self.xsk.reap();
        if self.xsk.tx_waiting() {
            self.xsk.kick()
        } else {
            Ok(())
        }
    }

    /// Sends what `batch` holds: as frames on the AF_XDP socket while the
    /// route is known and send frames are free, the rest through `socket`.
    /// Returns the datagrams sent; what neither would take stays queued.
    pub fn flush(
        &mut self,
        batch: &mut SendBatch,
        socket: &impl std::os::fd::AsRawFd,
    ) -> io::Result<usize> {
        self.xsk.reap();
        let mut staged = 0usize;
        let mut out_of_frames = false;
        while let Some((payload, to)) = batch.queued(staged) {
            // A datagram too long for a frame goes by the socket too.
            let route = self.route_to(to);
            let Some(route) = route.filter(|_| frame::HEADERS + payload.len() <= FRAME_BYTES)
            else {
                break;
            };
            let ip_id = self.next_ip_id;
            if !self
                .xsk
                .stage(|buf| frame::write(buf, &route, ip_id, payload))
            {
                out_of_frames = true;
                break;
            }
            self.next_ip_id = self.next_ip_id.wrapping_add(1);
            staged += 1;
        }
        batch.drop_front(staged);
        self.sent_frames += staged as u64;
        let kicked = self.xsk.kick();
        if out_of_frames || batch.is_empty() {
            return kicked.map(|()| staged);
        }
        // The next datagram has no known route: the socket sends the rest.
        let sent = batch.flush(socket)?;
        kicked.map(|()| staged + sent)
    }
}

/// The interface index of `name`.
fn interface_index(name: &str) -> Result<u32, XdpError> {
    let c = std::ffi::CString::new(name).map_err(|_| XdpError::Interface {
        name: name.to_string(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: `c` is a NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(XdpError::Interface {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(index)
}

/// How many receive queues `name` has (`/sys/class/net/NAME/queues`), at
/// least one.
fn receive_queues(name: &str) -> u32 {
    let dir = std::path::Path::new("/sys/class/net")
        .join(name)
        .join("queues");
    let count = std::fs::read_dir(dir).map_or(1, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
            .count()
    });
    u32::try_from(count.max(1)).unwrap_or(1)
}

/// The interface holding IPv4 address `ip`.
fn interface_holding(ip: Ipv4Addr) -> Result<String, XdpError> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list it writes to `list`.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(XdpError::Interface {
            name: ip.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    let mut found = None;
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is an entry of the list getifaddrs made, freed below.
        let entry = unsafe { &*at };
        let addr = entry.ifa_addr;
        // SAFETY: a non-null `ifa_addr` points at a sockaddr whose family
        // says its type; AF_INET is a `sockaddr_in`.
        let v4 = (!addr.is_null() && unsafe { (*addr).sa_family } == libc::AF_INET as u16)
            .then(|| unsafe { *(addr.cast::<libc::sockaddr_in>()) })
            .map(|sin| Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        if v4 == Some(ip) && !entry.ifa_name.is_null() {
            // SAFETY: `ifa_name` is a NUL-terminated name in the list.
            let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
            found = Some(name.to_string_lossy().into_owned());
            break;
        }
        at = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found.ok_or(XdpError::NoInterfaceFor(ip))
}

#[cfg(test)]
mod tests;
