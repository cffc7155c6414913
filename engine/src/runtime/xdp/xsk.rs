//! One AF_XDP socket bound to one receive queue: its UMEM (the frames the
//! kernel and this process share) and its four rings, mapped from the
//! kernel (linux/if_xdp.h; `Documentation/networking/af_xdp.rst`).
//!
//! Frames: [`FRAMES`] of [`FRAME_SIZE`] bytes. The first [`RING`] receive:
//! each is in the fill ring, in the kernel, or in the receive ring, and a
//! received frame goes straight back to the fill ring once its payload is
//! copied out. The other [`RING`] send: each is free, in the transmit
//! ring, or in the completion ring until reaped. Each ring has [`RING`]
//! entries, so neither producer can ever find its ring full.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use super::program::XdpError;

/// Entries per ring, and frames per direction.
pub const RING: u32 = 1024;
/// Bytes per frame (the kernel's smallest aligned chunk is 2 KiB).
pub const FRAME_SIZE: u32 = 2048;
/// Frames in the UMEM: [`RING`] to receive into, [`RING`] to send from
/// (4 MiB per socket, locked in memory).
pub const FRAMES: u32 = 2 * RING;

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: Option<(RawFd, libc::off_t)>) -> io::Result<Mapping> {
        let (flags, fd, offset) = match fd {
            Some((fd, offset)) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd, offset),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            ),
        };
        // SAFETY: a fresh mapping at an address the kernel picks; nothing
        // else refers to that memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is a mapping this struct made and owns;
        // nothing refers into it once its owner is dropped.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// One of the four rings: a producer and a consumer index, flags, and
/// [`RING`] entries of `T`, in memory the kernel shares.
struct Ring<T> {
    map: Mapping,
    producer: usize,
    consumer: usize,
    flags: usize,
    descs: usize,
    _entries: std::marker::PhantomData<T>,
}

impl<T: Copy> Ring<T> {
    fn map(fd: RawFd, offsets: &libc::xdp_ring_offset, page: libc::off_t) -> io::Result<Ring<T>> {
        let at = |o: u64| usize::try_from(o).map_err(|_| io::Error::other("ring offset"));
        let descs = at(offsets.desc)?;
        let len = descs + RING as usize * std::mem::size_of::<T>();
        Ok(Ring {
            map: Mapping::new(len, Some((fd, page)))?,
            producer: at(offsets.producer)?,
            consumer: at(offsets.consumer)?,
            flags: at(offsets.flags)?,
            descs,
            _entries: std::marker::PhantomData,
        })
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: the kernel's offsets point at aligned u32 indices inside
        // the mapping, which lives as long as `self`; the kernel updates
        // them concurrently, hence atomics.
        unsafe { &*self.map.ptr.add(offset).cast::<AtomicU32>() }
    }

    fn producer(&self) -> &AtomicU32 {
        self.index(self.producer)
    }

    fn consumer(&self) -> &AtomicU32 {
        self.index(self.consumer)
    }

    fn needs_wakeup(&self) -> bool {
        self.index(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Entry `at` (modulo the ring's size).
    fn slot(&self, at: u32) -> *mut T {
        let slot = (at & (RING - 1)) as usize;
        // SAFETY: `slot < RING`, and the mapping holds RING entries of `T`
        // from `descs`, so the pointer stays inside it.
        unsafe { self.map.ptr.add(self.descs).cast::<T>().add(slot) }
    }

    fn read(&self, at: u32) -> T {
        // SAFETY: an entry inside the mapping (`slot`); the kernel
        // published it before the producer index this side read with
        // Acquire.
        unsafe { self.slot(at).read_volatile() }
    }

    fn write(&self, at: u32, value: T) {
        // SAFETY: an entry inside the mapping (`slot`); it is this side's
        // until the producer index is published with Release.
        unsafe { self.slot(at).write_volatile(value) }
    }
}

/// An AF_XDP socket with its UMEM and rings.
pub struct Xsk {
    // Dropped first: the socket releases the UMEM and the rings' pages.
    fd: OwnedFd,
    fill: Ring<u64>,
    completion: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    umem: Mapping,
    /// Send frames neither in the transmit nor the completion ring.
    tx_free: Vec<u64>,
    /// Transmit descriptors written, not yet published.
    tx_staged: u32,
    queue: u32,
    zero_copy: bool,
}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk")
            .field("fd", &self.fd)
            .field("queue", &self.queue)
            .field("zero_copy", &self.zero_copy)
            .finish()
    }
}

// SAFETY: the raw pointers point into mappings this struct owns; one
// thread at a time uses it (it moves into its worker).
unsafe impl Send for Xsk {}

fn sockopt<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<T>()` bytes from `value`.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Xsk {
    /// A socket for `queue` of interface `ifindex`, in zero-copy mode where
    /// the driver has it and copy mode where not.
    pub fn open(ifindex: u32, queue: u32) -> Result<Xsk, XdpError> {
        let zero_copy = libc::XDP_USE_NEED_WAKEUP | libc::XDP_ZEROCOPY;
        Xsk::open_with(ifindex, queue, zero_copy)
            .or_else(|_| Xsk::open_with(ifindex, queue, libc::XDP_USE_NEED_WAKEUP | libc::XDP_COPY))
    }

    fn open_with(ifindex: u32, queue: u32, bind_flags: u16) -> Result<Xsk, XdpError> {
        let fail = |step| {
            move |source| XdpError::Socket {
                queue,
                step,
                source,
            }
        };
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(fail("socket")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a new descriptor this process owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mapping::new((FRAMES * FRAME_SIZE) as usize, None).map_err(fail("UMEM"))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr as u64,
            len: umem.len as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        sockopt(raw, libc::XDP_UMEM_REG, &reg).map_err(fail(
            "registering the UMEM (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK ≥ 4 MiB)",
        ))?;
        for ring in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            sockopt(raw, ring, &RING).map_err(fail("sizing the rings"))?;
        }
        // SAFETY: all-zero is a valid `xdp_mmap_offsets` (integers only).
        let mut offsets: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `offsets`.
        let rc = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut offsets as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(fail("ring offsets")(io::Error::last_os_error()));
        }
        let page = |p: u64| libc::off_t::try_from(p).unwrap_or(0);
        let fill = Ring::map(raw, &offsets.fr, page(libc::XDP_UMEM_PGOFF_FILL_RING))
            .map_err(fail("mapping the fill ring"))?;
        let completion = Ring::map(raw, &offsets.cr, page(libc::XDP_UMEM_PGOFF_COMPLETION_RING))
            .map_err(fail("mapping the completion ring"))?;
        let rx = Ring::map(raw, &offsets.rx, libc::XDP_PGOFF_RX_RING)
            .map_err(fail("mapping the receive ring"))?;
        let tx = Ring::map(raw, &offsets.tx, libc::XDP_PGOFF_TX_RING)
            .map_err(fail("mapping the transmit ring"))?;
        // Every receive frame into the fill ring, before the kernel can
        // receive.
        for i in 0..RING {
            fill.write(i, u64::from(i * FRAME_SIZE));
        }
        fill.producer().store(RING, Ordering::Release);
        let address = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: bind_flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: bind reads a `sockaddr_xdp` of the given length.
        let rc = unsafe {
            libc::bind(
                raw,
                (&address as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(fail("bind")(io::Error::last_os_error()));
        }
        Ok(Xsk {
            fd,
            fill,
            completion,
            rx,
            tx,
            umem,
            tx_free: (RING..FRAMES).map(|i| u64::from(i * FRAME_SIZE)).collect(),
            tx_staged: 0,
            queue,
            zero_copy: bind_flags & libc::XDP_ZEROCOPY != 0,
        })
    }

    /// The socket, to poll for received frames and to put in the map.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether the driver shares the UMEM with the NIC (no copies).
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The receive queue it is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    fn frame(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        if end > self.umem.len {
            return None;
        }
        // SAFETY: `start..end` is inside the UMEM mapping; the kernel wrote
        // this frame before publishing its descriptor, and does not touch
        // it until the frame is back in the fill ring.
        Some(unsafe { std::slice::from_raw_parts(self.umem.ptr.add(start), len) })
    }

    /// Reads up to `max` received frames, oldest first, handing each to
    /// `each` and its memory back to the kernel; returns how many.
    pub fn receive(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        let consumer = self.rx.consumer().load(Ordering::Relaxed);
        let available = self
            .rx
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(consumer);
        let n = available.min(u32::try_from(max).unwrap_or(u32::MAX));
        if n == 0 {
            return 0;
        }
        let fill_at = self.fill.producer().load(Ordering::Relaxed);
        for k in 0..n {
            let desc = self.rx.read(consumer.wrapping_add(k));
            if let Some(frame) = self.frame(desc.addr, desc.len as usize) {
                each(frame);
            }
            // The frame's chunk back to the kernel (aligned mode: the chunk
            // start, whatever headroom the kernel put in front of the data).
            self.fill.write(
                fill_at.wrapping_add(k),
                desc.addr & !u64::from(FRAME_SIZE - 1),
            );
        }
        self.rx
            .consumer()
            .store(consumer.wrapping_add(n), Ordering::Release);
        self.fill
            .producer()
            .store(fill_at.wrapping_add(n), Ordering::Release);
        if self.fill.needs_wakeup() {
            // SAFETY: a zero-length receive only wakes the driver.
            unsafe {
                libc::recvfrom(
                    self.fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
            }
        }
        n as usize
    }

    /// Whether received frames wait in the receive ring.
    pub fn has_received(&self) -> bool {
        self.rx.producer().load(Ordering::Acquire) != self.rx.consumer().load(Ordering::Relaxed)
    }

    /// Takes sent frames back from the completion ring.
    pub fn reap(&mut self) {
        let consumer = self.completion.consumer().load(Ordering::Relaxed);
        let n = self
            .completion
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(consumer);
        for k in 0..n {
            let addr = self.completion.read(consumer.wrapping_add(k));
            if self.tx_free.len() < RING as usize {
                self.tx_free.push(addr & !u64::from(FRAME_SIZE - 1));
            }
        }
        self.completion
            .consumer()
            .store(consumer.wrapping_add(n), Ordering::Release);
    }

    /// Writes one frame to send with `write` (given a [`FRAME_SIZE`]
    /// buffer, returning the frame's length or `None` to give up): `false`
    /// if no send frame is free or `write` gave up. Staged frames go at
    /// the next [`kick`](Self::kick).
    pub fn stage(&mut self, write: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        let Some(&addr) = self.tx_free.last() else {
            return false;
        };
        let Ok(start) = usize::try_from(addr) else {
            return false;
        };
        if start + FRAME_SIZE as usize > self.umem.len {
            return false;
        }
        // SAFETY: the frame `start..start+FRAME_SIZE` is inside the UMEM
        // and free: the kernel gave it back through the completion ring
        // (or never had it), so only this side refers to it.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(self.umem.ptr.add(start), FRAME_SIZE as usize)
        };
        let Some(len) = write(buf) else {
            return false;
        };
        self.tx_free.pop();
        let at = self
            .tx
            .producer()
            .load(Ordering::Relaxed)
            .wrapping_add(self.tx_staged);
        self.tx.write(
            at,
            libc::xdp_desc {
                addr,
                len: len as u32,
                options: 0,
            },
        );
        self.tx_staged += 1;
        true
    }

    /// Publishes the staged frames and asks the kernel to send them: in
    /// copy mode each `sendto` sends at most 32, so this asks again while
    /// the kernel says more wait, a bounded number of times.
    pub fn kick(&mut self) -> io::Result<()> {
        if self.tx_staged > 0 {
            let producer = self.tx.producer().load(Ordering::Relaxed);
            self.tx
                .producer()
                .store(producer.wrapping_add(self.tx_staged), Ordering::Release);
            self.tx_staged = 0;
        }
        for _ in 0..KICKS_PER_FLUSH {
            if !self.tx_waiting() {
                return Ok(());
            }
            if !self.tx.needs_wakeup() && self.zero_copy {
                return Ok(());
            }
            // SAFETY: a zero-length send only starts transmission.
            let rc = unsafe {
                libc::sendto(
                    self.fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc < 0 {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    // More than one call's batch waits: ask again.
                    Some(libc::EAGAIN) => continue,
                    // The device's queue is full: frames stay in the ring
                    // for the next flush.
                    Some(libc::EBUSY | libc::ENOBUFS) => return Ok(()),
                    _ => return Err(error),
                }
            }
        }
        self.reap();
        Ok(())
    }

    /// Whether frames wait in the transmit ring for the kernel.
    pub fn tx_waiting(&self) -> bool {
        self.tx.producer().load(Ordering::Relaxed) != self.tx.consumer().load(Ordering::Acquire)
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(&self) -> Option<libc::xdp_statistics> {
        // SAFETY: all-zero is a valid `xdp_statistics` (integers only).
        let mut stats: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `stats`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut stats as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(stats)
    }
}

/// `sendto` calls one flush may make (32 frames each in copy mode).
const KICKS_PER_FLUSH: usize = 4;
