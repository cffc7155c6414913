//! io_uring for a UDP socket (`[io] backend = "uring"`): one multishot
//! `recvmsg` keeps receiving into a ring of buffers the kernel picks from,
//! without a system call per batch; sends go as one `sendmsg` request per
//! GSO run, all in one submit per flush.
//!
//! Invariants:
//! - The ring is armed (its multishot receive submitted) by the thread that
//!   serves it, lazily on first use: the kernel runs a multishot receive's
//!   work in the submitting task, so a ring armed by another thread would
//!   only make progress when that thread enters the kernel.
//! - A received datagram holds its buffer only until
//!   [`recv_into`](UringUdp::recv_into) copies it into a [`RecvBatch`]; the
//!   buffer goes straight back to the kernel. Staging keeps batches for
//!   several serving slices, and holding kernel buffers that long would tie
//!   the buffer ring's size to the staging depth; copying a request costs a
//!   few ns against microseconds of serving it.
//! - At most [`BUFFERS`] datagrams wait in completions; past them the
//!   receive stops (`ENOBUFS`) and is re-armed once buffers come back, and
//!   meanwhile datagrams wait in the socket as with `recvmmsg`.
//! - Sends use `MSG_DONTWAIT`, so each completes within the submit (sent,
//!   or `EAGAIN`) and the batch's buffers are free when
//!   [`flush`](UringUdp::flush) returns. Sends are not linked: one the
//!   socket would not take stays queued (in order) while the others go,
//!   and a refused one is dropped (`SendBatch::settle`).
//! - The ring runs its receive work cooperatively (`COOP_TASKRUN`): a
//!   serving thread asleep in `epoll_wait` is woken for it (the wait
//!   returns `EINTR`, the work runs on the way out and posts completions,
//!   which make the ring's descriptor readable); a busy one is not
//!   interrupted, the work runs at its next system call, or at once when
//!   [`recv_into`](UringUdp::recv_into) sees the kernel's flag that work
//!   waits. A reader stops only when [`has_more`](UringUdp::has_more) is
//!   false. (Deferred task work, `DEFER_TASKRUN`, would save the wake-up
//!   but runs only inside `io_uring_enter`, and neither the ring's
//!   descriptor nor a registered eventfd reliably says when it waits:
//!   measured, answers waited for the 10 ms poll timeout.)
//! - Every wait on the ring retries `EINTR`: a flush returns only when each
//!   of its sends has completed, and completions are tagged with their
//!   flush, so none is taken for another's.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut};
use io_uring::{cqueue, opcode, IoUring};

use super::udp::{RecvBatch, SendBatch, BATCH, DATAGRAM_MAX};

/// Receive buffers in the kernel's ring (a power of two).
pub const BUFFERS: u16 = 1024;
/// The buffer group the receive picks from.
const GROUP: u16 = 0;
/// Submission-queue entries: a flush's sends and a re-arm.
const SQ_ENTRIES: u32 = 128;
/// Completion-queue entries: every buffer's datagram, a flush's sends and
/// a receive's last word fit, so the queue never overflows.
const CQ_ENTRIES: u32 = 2048;
/// Enters per [`UringUdp::recv_into`] at most, to run receive work waiting
/// for this thread.
const RUNS_PER_RECEIVE: usize = 4;
/// `user_data` of the multishot receive.
const RECV: u64 = u64::MAX;
/// A buffer: the kernel's `io_uring_recvmsg_out` header, the source
/// address, the control messages (the arrival stamp), the payload.
const HEADER_BYTES: usize = 16;
const NAME_BYTES: usize = size_of::<libc::sockaddr_in6>();
/// Room for `SO_TIMESTAMPNS` (a `cmsghdr` and a `timespec`).
const CONTROL_BYTES: usize = 32;
const BUFFER_BYTES: usize = HEADER_BYTES + NAME_BYTES + CONTROL_BYTES + DATAGRAM_MAX;

/// The ring of buffer descriptors shared with the kernel: page-aligned
/// memory of [`BUFFERS`] `io_uring_buf` entries, the tail in the first
/// entry's last field.
#[derive(Debug)]
struct BufferRing {
    entries: NonNull<BufRingEntry>,
    layout: Layout,
    /// The tail this side last published (advanced per returned buffer).
    tail: u16,
    /// Not freed on drop: the kernel may still hold it.
    leak: bool,
}

impl BufferRing {
    fn new() -> io::Result<BufferRing> {
        let layout =
            Layout::from_size_align(usize::from(BUFFERS) * size_of::<BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let entries = NonNull::new(raw.cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(BufferRing {
            entries,
            layout,
            tail: 0,
            leak: false,
        })
    }

    /// Hands buffer `bid` at `addr` back to the kernel (visible once
    /// [`publish`](Self::publish)ed).
    fn give(&mut self, bid: u16, addr: *const u8) {
        let slot = usize::from(self.tail & (BUFFERS - 1));
        // SAFETY: `slot` < BUFFERS, inside the allocation; the kernel reads
        // entries only between the published tail and its head, which does
        // not include this slot until `publish`.
        unsafe {
            let entry = &mut *self.entries.as_ptr().add(slot);
            entry.set_addr(addr as u64);
            entry.set_len(BUFFER_BYTES as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the buffers given so far (a release store of the tail).
    fn publish(&self) {
        // SAFETY: the tail is the first entry's last `u16` (as the kernel
        // defines the ring), 2-byte aligned inside the allocation; the
        // kernel reads it concurrently, hence the atomic store.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: allocated in `new` with this layout; the kernel's
        // registration was removed first (`UringUdp`'s drop).
        unsafe { dealloc(self.entries.as_ptr().cast(), self.layout) }
    }
}

/// A UDP socket served through io_uring.
pub struct UringUdp {
    ring: IoUring,
    socket: RawFd,
    buffers: BufferRing,
    /// [`BUFFERS`] × [`BUFFER_BYTES`], where the kernel writes datagrams.
    memory: Box<[u8]>,
    /// The template the multishot receive reads its name and control room
    /// from; boxed, as the kernel keeps its address while armed.
    template: Box<libc::msghdr>,
    armed: bool,
    /// Whether the serving thread enabled the ring.
    enabled: bool,
    /// Flushes so far: a send's completion carries its flush's number.
    flushes: u32,
    /// Received datagrams (buffer id, bytes used) not yet taken, oldest
    /// first: a ring of [`BUFFERS`].
    ready: Box<[(u16, u32)]>,
    ready_head: usize,
    ready_len: usize,
    /// Results of the sends of the current flush, by header.
    send_results: [i32; BATCH],
    sends_done: usize,
    /// Receive errors other than running out of buffers.
    pub recv_errors: u64,
    /// Times the multishot receive stopped (out of buffers, or an error)
    /// and was armed again.
    pub rearms: u64,
}

impl std::fmt::Debug for UringUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringUdp")
            .field("socket", &self.socket)
            .field("armed", &self.armed)
            .field("ready", &self.ready_len)
            .finish()
    }
}

// SAFETY: the raw pointers (`buffers`, `template`) point into memory this
// struct owns; the kernel's references to it end with the ring, which
// moves with it. A ring built on one thread is armed on the one that
// serves it (see the module's invariants).
unsafe impl Send for UringUdp {}

impl UringUdp {
    /// A ring for `socket` (which must outlive it), its buffers given to
    /// the kernel; it may be built on one thread and served on another
    /// (the first [`arm`](Self::arm) decides). Fails where io_uring,
    /// provided-buffer rings or multishot `recvmsg` are not available
    /// (Linux before 6.0, or io_uring disabled).
    pub fn new(socket: &impl AsRawFd) -> io::Result<UringUdp> {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_r_disabled()
            .build(SQ_ENTRIES)?;
        let mut buffers = BufferRing::new()?;
        let memory = vec![0u8; usize::from(BUFFERS) * BUFFER_BYTES].into_boxed_slice();
        for bid in 0..BUFFERS {
            let start = usize::from(bid) * BUFFER_BYTES;
            buffers.give(bid, memory[start..].as_ptr());
        }
        buffers.publish();
        // SAFETY: the ring memory is page-aligned, `BUFFERS` entries long,
        // and lives until after the registration is removed (drop order).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries.as_ptr() as u64,
                BUFFERS,
                GROUP,
                0,
            )?;
        }
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut template: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        template.msg_namelen = NAME_BYTES as libc::socklen_t;
        template.msg_controllen = CONTROL_BYTES as _;
        Ok(UringUdp {
            ring,
            socket: socket.as_raw_fd(),
            buffers,
            memory,
            template,
            armed: false,
            enabled: false,
            flushes: 0,
            ready: vec![(0, 0); usize::from(BUFFERS)].into_boxed_slice(),
            ready_head: 0,
            ready_len: 0,
            send_results: [0; BATCH],
            sends_done: 0,
            recv_errors: 0,
            rearms: 0,
        })
    }

    /// What the event loop polls instead of the socket: the ring's
    /// descriptor, readable when completions wait.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Enters the ring (submitting what is queued, running work waiting
    /// for this thread) until at least `want` completions wait; an
    /// interrupted wait is resumed.
    fn enter(&self, want: usize) -> io::Result<usize> {
        loop {
            match self.ring.submitter().submit_and_wait(want) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Submits the multishot receive if it is not running: call it on the
    /// thread that serves the ring before waiting for its readiness (the
    /// ring is not readable until it receives).
    pub fn arm(&mut self) -> io::Result<()> {
        if self.armed {
            return Ok(());
        }
        self.enable()?;
        let entry = opcode::RecvMsgMulti::new(Fd(self.socket), &*self.template, GROUP)
            .build()
            .user_data(RECV);
        // SAFETY: the template lives in a box owned by `self`, unmoved
        // while the receive runs (until the ring closes).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.enter(0)?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.enter(0)?;
        self.armed = true;
        Ok(())
    }

    /// Enables the ring on first use: the calling thread becomes its one
    /// issuer.
    fn enable(&mut self) -> io::Result<()> {
        if !self.enabled {
            self.ring.submitter().register_enable_rings()?;
            self.enabled = true;
        }
        Ok(())
    }

    /// Takes every completion waiting: datagrams into `ready`, sends'
    /// results into `send_results`.
    fn reap(&mut self) {
        let mut completion = self.ring.completion();
        completion.sync();
        for cqe in &mut completion {
            let result = cqe.result();
            let flags = cqe.flags();
            if cqe.user_data() == RECV {
                if !cqueue::more(flags) && self.armed {
                    self.armed = false;
                    self.rearms += 1;
                }
                match cqueue::buffer_select(flags) {
                    Some(bid) if result >= 0 && self.ready_len < self.ready.len() => {
                        let at = (self.ready_head + self.ready_len) % self.ready.len();
                        if let Some(slot) = self.ready.get_mut(at) {
                            *slot = (bid, result.unsigned_abs());
                        }
                        self.ready_len += 1;
                    }
                    Some(bid) => {
                        // Cannot happen (one entry per buffer); the buffer
                        // still goes back.
                        let start = usize::from(bid) * BUFFER_BYTES;
                        if let Some(buf) = self.memory.get(start..) {
                            self.buffers.give(bid, buf.as_ptr());
                        }
                    }
                    None if result == -libc::ENOBUFS => {}
                    None => self.recv_errors += 1,
                }
            } else if (cqe.user_data() >> 32) as u32 == self.flushes {
                // A send of the current flush (earlier flushes all
                // completed before they returned).
                if let Some(r) = usize::try_from(cqe.user_data() & u64::from(u32::MAX))
                    .ok()
                    .and_then(|k| self.send_results.get_mut(k))
                {
                    *r = result;
                    self.sends_done += 1;
                }
            }
        }
    }

    /// Moves waiting datagrams into `batch` (up to its capacity), gives
    /// their buffers back and re-arms the receive if it stopped. Returns
    /// how many; `Ok(0)` when none waits.
    pub fn recv_into(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        self.arm()?;
        // Receive work waiting for this thread (it was busy): run it now.
        // One enter runs a bounded amount of work, so enter again while
        // work is left and the batch has room.
        for _ in 0..RUNS_PER_RECEIVE {
            if self.ready_len >= batch.capacity() || !self.ring.submission().taskrun() {
                break;
            }
            self.enter(0)?;
            self.reap();
        }
        self.reap();
        batch.begin_fill();
        let mut taken = 0;
        while self.ready_len > 0 && taken < batch.capacity() {
            let (bid, _used) = self.ready.get(self.ready_head).copied().unwrap_or((0, 0));
            let start = usize::from(bid) * BUFFER_BYTES;
            if let Some(buf) = self.memory.get(start..start + BUFFER_BYTES) {
                if let Ok(out) = RecvMsgOut::parse(buf, &self.template) {
                    let truncated = out.is_payload_truncated() || out.is_name_data_truncated();
                    batch.fill(
                        out.name_data(),
                        out.control_data(),
                        out.payload_data(),
                        truncated,
                    );
                    taken += 1;
                }
                self.buffers.give(bid, buf.as_ptr());
            }
            self.ready_head = (self.ready_head + 1) % self.ready.len();
            self.ready_len -= 1;
        }
        if taken > 0 {
            self.buffers.publish();
        }
        if !self.armed {
            self.arm()?;
        }
        Ok(taken)
    }

    /// Whether [`recv_into`](Self::recv_into) has work: datagrams taken
    /// off the completion queue but not yet into a batch (a flush takes
    /// every completion waiting, receives included), receive work the
    /// kernel holds for this thread, or a receive that stopped and must be
    /// armed again. The ring's descriptor is readable only while
    /// completions wait in its queue, so a caller that sleeps while this
    /// holds may sleep on datagrams already received.
    pub fn has_more(&mut self) -> bool {
        self.ready_len > 0 || !self.armed || self.ring.submission().taskrun()
    }

    /// Sends what `batch` holds, as [`SendBatch::flush`] does, with one
    /// `sendmsg` request per GSO run in one submit; settled one by one
    /// (a datagram the socket would not take stays queued, in order).
    pub fn flush(&mut self, batch: &mut SendBatch) -> io::Result<usize> {
        let headers = batch.prepare();
        if headers == 0 {
            return Ok(0);
        }
        self.enable()?;
        // Room for every header (the queue is empty between calls, and a
        // flush has at most BATCH < SQ_ENTRIES headers).
        let queue = self.ring.submission();
        let full = queue.len() + headers > queue.capacity();
        drop(queue);
        if full {
            self.enter(0)?;
        }
        self.sends_done = 0;
        self.flushes = self.flushes.wrapping_add(1) & 0x7fff_ffff;
        let tag = u64::from(self.flushes) << 32;
        for k in 0..headers {
            let Some(header) = batch.header(k) else { break };
            let entry = opcode::SendMsg::new(Fd(self.socket), header)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
                .user_data(tag | k as u64);
            // SAFETY: the header and everything it points to belong to
            // `batch`, which is borrowed until the sends completed below.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                return Err(io::Error::other("io_uring submission queue full"));
            }
        }
        self.enter(headers)?;
        self.reap();
        // MSG_DONTWAIT completes each send within the submit; should one
        // not have, wait for it: the batch's memory is in use until then.
        while self.sends_done < headers {
            self.enter(1)?;
            self.reap();
        }
        batch.settle(
            self.send_results
                .get(..headers)
                .unwrap_or(&self.send_results),
        )
    }
}

impl Drop for UringUdp {
    fn drop(&mut self) {
        // Before the buffer ring's memory goes (its field drops after this).
        // Only the issuer may unregister: dropped elsewhere, the memory is
        // left to the process rather than freed under the kernel.
        if self.ring.submitter().unregister_buf_ring(GROUP).is_err() {
            std::mem::forget(std::mem::take(&mut self.memory));
            self.buffers.leak = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn socket() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    /// An event loop polling `ring`, as a worker's, and the ring armed.
    fn armed_poll(ring: &mut UringUdp) -> mio::Poll {
        let poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&ring.fd()),
                mio::Token(0),
                mio::Interest::READABLE,
            )
            .unwrap();
        ring.arm().unwrap();
        poll
    }

    /// Receives until `want` datagrams came, or panics.
    fn receive(ring: &mut UringUdp, want: usize) -> Vec<(Vec<u8>, std::net::SocketAddr)> {
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        for _ in 0..400 {
            let n = ring.recv_into(&mut batch).unwrap();
            for i in 0..n {
                let (bytes, from) = batch.get(i).expect("a whole datagram");
                got.push((bytes.to_vec(), from));
            }
            if got.len() >= want {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{} of {want} datagrams arrived", got.len());
    }

    #[test]
    fn datagrams_arrive_through_the_multishot_receive_in_order_with_their_source() {
        let (a, b) = (socket(), socket());
        let mut ring = UringUdp::new(&b).expect("io_uring with buffer rings (Linux ≥ 6.0)");
        for i in 0..200u8 {
            a.send_to(&[i; 64], b.local_addr().unwrap()).unwrap();
        }
        let got = receive(&mut ring, 200);
        assert_eq!(got.len(), 200);
        for (i, (bytes, from)) in got.iter().enumerate() {
            assert_eq!(bytes, &vec![i as u8; 64]);
            assert_eq!(*from, a.local_addr().unwrap());
        }
    }

    #[test]
    fn more_datagrams_than_buffers_all_arrive_as_buffers_come_back() {
        let (a, b) = (socket(), socket());
        b.set_nonblocking(true).unwrap();
        socket2::SockRef::from(&b)
            .set_recv_buffer_size(8 << 20)
            .unwrap();
        let mut ring = UringUdp::new(&b).unwrap();
        // More than the ring has buffers for, but what the socket buffer
        // holds besides.
        let total = usize::from(BUFFERS) + 100;
        let mut batch = RecvBatch::new();
        let mut got = 0usize;
        // Arm first, then send without taking anything: the receive runs
        // out of buffers (ENOBUFS), the rest waits in the socket, and the
        // receive is re-armed as buffers come back.
        assert_eq!(ring.recv_into(&mut batch).unwrap(), 0);
        for i in 0..total {
            a.send_to(&(i as u32).to_be_bytes(), b.local_addr().unwrap())
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        // Run the deferred receive until it has used every buffer and
        // stopped (its last completion carries no buffer).
        ring.ring
            .submitter()
            .submit_and_wait(usize::from(BUFFERS) + 1)
            .unwrap();
        let mut next = 0u32;
        for _ in 0..2000 {
            let n = ring.recv_into(&mut batch).unwrap();
            for i in 0..n {
                let (bytes, _) = batch.get(i).unwrap();
                assert_eq!(bytes, next.to_be_bytes(), "in order, none lost");
                next += 1;
            }
            got += n;
            if got == total {
                break;
            }
            if n == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert_eq!(got, total);
        assert!(
            ring.rearms >= 1,
            "the receive ran out of buffers and was re-armed"
        );
    }

    #[test]
    fn a_send_batch_goes_out_through_the_ring_gso_runs_and_all() {
        let (a, b, c) = (socket(), socket(), socket());
        let mut ring = UringUdp::new(&a).unwrap();
        let mut send = SendBatch::new();
        assert!(send.enable_gso(&a));
        for i in 0..20u8 {
            assert!(send.push(b.local_addr().unwrap(), &[i; 100]));
        }
        assert!(send.push(c.local_addr().unwrap(), &[7; 10]));
        let mut sent = 0;
        for _ in 0..100 {
            sent += ring.flush(&mut send).unwrap();
            if send.is_empty() {
                break;
            }
        }
        assert_eq!(sent, 21);
        let mut recv = RecvBatch::new();
        let mut got = Vec::new();
        for _ in 0..200 {
            let n = recv.recv(&b).unwrap();
            got.extend((0..n).map(|i| recv.get(i).unwrap().0.to_vec()));
            if got.len() == 20 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, (0..20u8).map(|i| vec![i; 100]).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(recv.recv(&c).unwrap(), 1);
        assert_eq!(recv.get(0).unwrap().0, &[7; 10]);
    }

    #[test]
    fn a_refused_destination_drops_its_datagram_and_the_rest_still_go() {
        let (a, b) = (socket(), socket());
        let mut ring = UringUdp::new(&a).unwrap();
        let mut send = SendBatch::new();
        // Port 0 cannot be sent to (EINVAL): refused outright.
        assert!(send.push("127.0.0.1:0".parse().unwrap(), &[1; 8]));
        assert!(send.push(b.local_addr().unwrap(), &[2; 8]));
        assert!(ring.flush(&mut send).is_err(), "the refusal is told");
        assert!(send.is_empty(), "the refused one dropped, the other sent");
        std::thread::sleep(Duration::from_millis(20));
        let mut recv = RecvBatch::new();
        assert_eq!(recv.recv(&b).unwrap(), 1);
        assert_eq!(recv.get(0).unwrap().0, &[2; 8]);
    }

    #[test]
    fn an_oversized_datagram_is_refused_not_truncated_silently() {
        let (a, b) = (socket(), socket());
        let mut ring = UringUdp::new(&b).unwrap();
        a.send_to(&[9u8; DATAGRAM_MAX + 100], b.local_addr().unwrap())
            .unwrap();
        a.send_to(&[3u8; 10], b.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new();
        let mut got: Vec<Option<Vec<u8>>> = Vec::new();
        for _ in 0..200 {
            let n = ring.recv_into(&mut batch).unwrap();
            got.extend((0..n).map(|i| batch.get(i).map(|(b, _)| b.to_vec())));
            if got.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            got,
            vec![None, Some(vec![3u8; 10])],
            "the truncated one refused"
        );
    }

    #[test]
    fn a_ring_built_on_one_thread_is_served_on_another_and_wakes_its_event_loop() {
        // As the appliance does: built at start, served by its worker,
        // which sleeps in epoll until the ring's descriptor says datagrams
        // wait (the sleep is interrupted to run the receive).
        let (a, b) = (socket(), socket());
        let to = b.local_addr().unwrap();
        let ring = UringUdp::new(&b).unwrap();
        let served = std::thread::spawn(move || {
            let mut ring = ring;
            let mut poll = armed_poll(&mut ring);
            let mut events = mio::Events::with_capacity(4);
            let mut batch = RecvBatch::new();
            let mut got = Vec::new();
            while got.len() < 3 {
                // Woken by readiness, or by the receive work interrupting
                // the wait (then its completions are posted).
                let woken = poll.poll(&mut events, Some(Duration::from_secs(5)));
                assert!(
                    woken.is_err() || !events.is_empty(),
                    "woken within 5 s: {woken:?}"
                );
                loop {
                    let n = ring.recv_into(&mut batch).unwrap();
                    got.extend((0..n).map(|i| batch.get(i).unwrap().0[0]));
                    if n < batch.capacity() && !ring.has_more() {
                        break;
                    }
                }
            }
            drop(b);
            got
        });
        for i in 0..3u8 {
            std::thread::sleep(Duration::from_millis(100));
            a.send_to(&[i], to).unwrap();
        }
        assert_eq!(served.join().unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn after_one_wake_up_reading_while_more_waits_gets_every_datagram() {
        // The reader's side of the contract: after one wake-up, read while
        // a batch comes back full or `has_more` holds, and nothing that
        // arrived before it is left behind (a run of the receive takes a
        // part of a backlog at a time).
        let (a, b) = (socket(), socket());
        socket2::SockRef::from(&b)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        let mut ring = UringUdp::new(&b).unwrap();
        let mut poll = armed_poll(&mut ring);
        let total = 900u32;
        for i in 0..total {
            a.send_to(&i.to_be_bytes(), b.local_addr().unwrap())
                .unwrap();
        }
        let mut events = mio::Events::with_capacity(4);
        let woken = poll.poll(&mut events, Some(Duration::from_secs(5)));
        assert!(woken.is_err() || !events.is_empty(), "woken: {woken:?}");
        let mut batch = RecvBatch::new();
        let mut next = 0u32;
        loop {
            let n = ring.recv_into(&mut batch).unwrap();
            for i in 0..n {
                assert_eq!(batch.get(i).unwrap().0, next.to_be_bytes());
                next += 1;
            }
            if n < batch.capacity() && !ring.has_more() {
                break;
            }
        }
        assert_eq!(next, total, "all of them after one wake-up");
    }

    #[test]
    fn datagrams_a_flush_took_off_the_queue_are_still_there_to_read() {
        // A flush reaps every completion, receives included, so the
        // ring's descriptor no longer says they wait: `has_more` must.
        let (a, b, c) = (socket(), socket(), socket());
        let mut ring = UringUdp::new(&b).unwrap();
        let mut batch = RecvBatch::new();
        assert_eq!(ring.recv_into(&mut batch).unwrap(), 0, "armed");
        assert!(!ring.has_more());
        for i in 0..5u8 {
            a.send_to(&[i], b.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut send = SendBatch::new();
        assert!(send.push(c.local_addr().unwrap(), b"answer"));
        assert_eq!(ring.flush(&mut send).unwrap(), 1);
        assert!(ring.has_more(), "the receives the flush reaped wait");
        assert_eq!(ring.recv_into(&mut batch).unwrap(), 5);
        assert!(!ring.has_more());
    }

    #[test]
    fn arrival_stamps_come_through_the_ring() {
        let (a, b) = (socket(), socket());
        super::super::udp::enable_arrival_times(&b).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut ring = UringUdp::new(&b).unwrap();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::new();
        for _ in 0..200 {
            if ring.recv_into(&mut batch).unwrap() == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let at = batch.arrival_unix_ns(0).expect("stamped");
        assert!(at >= before, "{at} >= {before}");
    }
}
