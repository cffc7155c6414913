//! Steering in the kernel: classic-BPF programs on `SO_REUSEPORT` groups
//! that deliver each datagram, and each border connection, to the socket of
//! the worker that owns it, so no message pays a hop between workers.
//!
//! # The kernel's contract (verified by the loopback tests below)
//!
//! Each of the appliance's `N` workers binds its own socket to the same
//! address with `SO_REUSEPORT`; the sockets form one *reuseport group*,
//! which the kernel keeps as an array:
//!
//! - UDP sockets in **bind** order, TCP listeners in **listen** order (a TCP
//!   socket joins the group when it starts listening, not when it binds);
//! - a classic-BPF program attached with `SO_ATTACH_REUSEPORT_CBPF`
//!   ([`attach_reuseport_cbpf`]) belongs to the *group*, whichever member it
//!   was attached through, and a second attach replaces it;
//! - for each datagram (UDP) or SYN (TCP) the program returns an index into
//!   the array, and the packet goes to that socket; an index at or above the
//!   group's size (we return `0xFFFF_FFFF`) makes the kernel fall back to its
//!   own hash of the 4-tuple;
//! - a load beyond the packet ends the program with the result 0 (socket 0,
//!   *not* the fallback): the device program therefore checks the length
//!   before its first load, and the source-port program reads only headers
//!   every packet has;
//! - when a socket leaves the group (it is closed), the kernel moves the
//!   group's **last** socket into its index; a socket bound afterwards is
//!   appended at the end. Indices are only stable while no member closes.
//!
//! # What a runtime using these programs must keep
//!
//! - Worker `i` binds (UDP) / starts listening (TCP) `i`-th, one after the
//!   other, before any traffic: then socket index = worker index.
//! - The group has exactly `workers` members, the count the program was
//!   built for. No worker closes or replaces its socket while the others
//!   stay (that would renumber the group, see above): a change of worker
//!   count rebuilds the whole group.
//! - Steering is an optimisation, never a correctness condition: a packet the
//!   kernel hashes (fallback), or a source port a NAT rewrote, lands on some
//!   worker, which hands the message to its owner as it would without
//!   steering (and a border link says which worker it reached in its
//!   `LinkHello`).
//!
//! # The programs
//!
//! - [`device_steering_program`], for the device UDP port: the worker that
//!   owns the subject of the datagram's first message
//!   ([`presence_codec::shard::owner`], computed in the kernel exactly as the
//!   codec computes it), when that message is one of
//!   [`SUBJECT_FIRST_TYPES`] and the datagram is long enough to hold its
//!   subject; otherwise the kernel's hash. The program does not validate the
//!   frame: a datagram that merely looks like one is steered by the bytes at
//!   the subject offset and refused by the worker that gets it.
//! - [`source_port_steering_program`], for the border gateway's TCP
//!   listeners: the peer's TCP source port modulo the worker count, so a peer
//!   that wants worker `k` dials from a port `p` with `p % workers == k`
//!   (candidates from [`source_port_for`]). The program depends on the
//!   source port alone, so any packet of a connection the kernel steers (the
//!   SYN, or the ACK that completes a SYN cookie) picks the same listener.

use std::io;
use std::os::fd::AsRawFd;

use presence_codec::shard::{
    FIRST_SUBJECT_OFFSET, FIRST_TYPE_OFFSET, SHARD_MUL_HI, SHARD_MUL_LO, SHARD_MUL_MIX,
    SUBJECT_FIRST_TYPES,
};
use presence_codec::MSISDN_WIRE_LEN;

/// What the programs return to let the kernel pick the socket by its own
/// hash: any index at or above the group's size does.
pub const KERNEL_HASH: u32 = 0xFFFF_FFFF;

/// The ephemeral port range a dialer picks its source port from (Linux's
/// default `net.ipv4.ip_local_port_range`).
pub const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

/// Attaches `program` to the reuseport group of `socket`
/// (`setsockopt(SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF)`).
///
/// The socket must have `SO_REUSEPORT` set; attach once every member is
/// bound (UDP) or listening (TCP): the program then serves the whole group,
/// whichever member it went through, replacing any earlier one. Fails with
/// `InvalidInput` for an empty program or one over `BPF_MAXINSNS`
/// instructions, and with the kernel's error otherwise (`EINVAL`: the
/// program does not pass the classic-BPF checks, or the socket is in no
/// group and has no `SO_REUSEPORT`; `ENOMEM`: over `optmem_max`).
pub fn attach_reuseport_cbpf(
    socket: &impl AsRawFd,
    program: &[libc::sock_filter],
) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .ok()
        .filter(|&len| len > 0 && i32::from(len) <= libc::BPF_MAXINSNS)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a classic-BPF program has 1 to {} instructions, not {}",
                    libc::BPF_MAXINSNS,
                    program.len()
                ),
            )
        })?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads the instructions (it copies them).
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` is a valid `sock_fprog` that lives across the call, the
    // option length is its exact size, and its `filter` points to `len`
    // initialised instructions borrowed from `program`, which the kernel
    // copies before returning and never writes. An invalid descriptor or
    // program makes the call fail with an errno, nothing worse.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast::<libc::c_void>(),
            SOCK_FPROG_LEN,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `size_of::<sock_fprog>()` as the option length (16 bytes on 64-bit).
const SOCK_FPROG_LEN: libc::socklen_t = {
    let len = std::mem::size_of::<libc::sock_fprog>();
    assert!(len <= u32::MAX as usize);
    len as libc::socklen_t
};

// Instruction codes (`linux/filter.h`), all below 0x100.
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
const LD_W_LEN: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16;
const LDX_B_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const MUL_K: u16 = (libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K) as u16;
const RSH_K: u16 = (libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K) as u16;
const MOD_K: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
const XOR_X: u16 = (libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X) as u16;
const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;

const fn op(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The distance of a jump from instruction `from` to the later instruction
/// `to` (jumps count from the next instruction). Used in `const` blocks, so
/// a wrong label fails the build.
const fn hop(from: usize, to: usize) -> u8 {
    assert!(to > from && to - from - 1 <= u8::MAX as usize);
    (to - from - 1) as u8
}

/// A packet offset relative to the network header (`SKF_NET_OFF + offset`),
/// as an instruction's `k`.
const fn net(offset: i32) -> u32 {
    libc::SKF_NET_OFF.wrapping_add(offset).cast_unsigned()
}

/// The subject's offset, its high 24 bits' word (one byte earlier), its low
/// word, and the shortest datagram that holds it.
const SUBJECT: u32 = FIRST_SUBJECT_OFFSET as u32;
const SUBJECT_HI_WORD: u32 = SUBJECT - 1;
const SUBJECT_LO_WORD: u32 = SUBJECT + 3;
const SUBJECT_END: u32 = SUBJECT + MSISDN_WIRE_LEN as u32;
const TYPE: u32 = FIRST_TYPE_OFFSET as u32;
const _: () = assert!(MSISDN_WIRE_LEN == 7 && SUBJECT >= 1 && SUBJECT_END < 256);
const _: () = assert!(SUBJECT_FIRST_TYPES.len() == 4);

/// The device port's program: the owner, of `workers` (0 counts as 1), of the
/// subject of the datagram's first message (see the module docs), or
/// [`KERNEL_HASH`].
///
/// The hash is [`presence_codec::shard::shard_hash`] step by step: the
/// subject's 7 big-endian bytes at `FIRST_SUBJECT_OFFSET` are `hi` (3 bytes)
/// then `lo` (4 bytes); `ld [k]` loads 4 bytes big-endian, so `lo` is the
/// word at the subject + 3 and `hi` the word one byte before the subject,
/// masked to its low 24 bits. Arithmetic is on 32-bit words, wrapping, as in
/// the codec.
pub fn device_steering_program(workers: u16) -> Vec<libc::sock_filter> {
    let workers = u32::from(workers.max(1));
    let [t0, t1, t2, t3] = SUBJECT_FIRST_TYPES.map(|t| t as u32);
    // Labels: the instruction indices jumps land on.
    const HASH: usize = 7;
    const FALLBACK: usize = 23;
    vec![
        // 0: A = the datagram's length (the UDP payload's).
        op(LD_W_LEN, 0),
        // 1: too short to hold a subject: no load may run (a load beyond the
        // end would return socket 0).
        jump(JGE_K, SUBJECT_END, 0, const { hop(1, FALLBACK) }),
        // 2: A = the first message's type.
        op(LD_B_ABS, TYPE),
        // 3: ClientRequest: hash its watcher.
        jump(JEQ_K, t0, const { hop(3, HASH) }, 0),
        // 4: Publish: hash its subscriber.
        jump(JEQ_K, t1, const { hop(4, HASH) }, 0),
        // 5: BuddyUpdate: hash its owner.
        jump(JEQ_K, t2, const { hop(5, HASH) }, 0),
        // 6: ConsentUpdate: hash its owner; any other type: kernel hash.
        jump(JEQ_K, t3, 0, const { hop(6, FALLBACK) }),
        // 7 (HASH): A = the byte before the subject, then its 3 high bytes.
        op(LD_W_ABS, SUBJECT_HI_WORD),
        // 8: A = hi (the MSISDN's bits 32-55).
        op(AND_K, 0x00FF_FFFF),
        // 9: A = hi * M_HI.
        op(MUL_K, SHARD_MUL_HI),
        // 10: X = hi * M_HI.
        op(TAX, 0),
        // 11: A = lo (the subject's last 4 bytes).
        op(LD_W_ABS, SUBJECT_LO_WORD),
        // 12: A = lo * M_LO.
        op(MUL_K, SHARD_MUL_LO),
        // 13: A = x = lo * M_LO ^ hi * M_HI.
        op(XOR_X, 0),
        // 14: X = x.
        op(TAX, 0),
        // 15: A = x >> 16.
        op(RSH_K, 16),
        // 16: A = x ^= x >> 16.
        op(XOR_X, 0),
        // 17: A = x *= M_MIX.
        op(MUL_K, SHARD_MUL_MIX),
        // 18: X = x.
        op(TAX, 0),
        // 19: A = x >> 15.
        op(RSH_K, 15),
        // 20: A = x ^= x >> 15: the ownership hash.
        op(XOR_X, 0),
        // 21: A = hash % workers: the owner.
        op(MOD_K, workers),
        // 22: deliver to the owner's socket.
        op(RET_A, 0),
        // 23 (FALLBACK): let the kernel hash.
        op(RET_K, KERNEL_HASH),
    ]
}

/// The border listeners' program: the connecting peer's TCP source port
/// modulo `workers` (0 counts as 1), or [`KERNEL_HASH`] for an IPv6 packet
/// whose TCP header does not follow the fixed header (extension headers) and
/// for any other IP version.
///
/// A TCP reuseport program sees the packet from past the TCP header, so it
/// reads the headers relative to the network header (`SKF_NET_OFF`): IPv4's
/// TCP header starts at 4·IHL, IPv6's at 40.
pub fn source_port_steering_program(workers: u16) -> Vec<libc::sock_filter> {
    let workers = u32::from(workers.max(1));
    const IPPROTO_TCP: u32 = 6;
    const IPV6_NEXT_HEADER: i32 = 6;
    const IPV6_HEADER_LEN: i32 = 40;
    // Labels.
    const IPV6: usize = 7;
    const FALLBACK: usize = 13;
    vec![
        // 0: A = the IP header's first byte.
        op(LD_B_ABS, net(0)),
        // 1: A = the IP version.
        op(RSH_K, 4),
        // 2: IPv4 on, anything else to IPV6.
        jump(JEQ_K, 4, 0, const { hop(2, IPV6) }),
        // 3: X = 4 * IHL: the IPv4 header's length, options included.
        op(LDX_B_MSH, net(0)),
        // 4: A = the TCP source port (the TCP header's first 2 bytes).
        op(LD_H_IND, net(0)),
        // 5: A = port % workers.
        op(MOD_K, workers),
        // 6: deliver to that worker's listener.
        op(RET_A, 0),
        // 7 (IPV6): A is still the version: not 6 either, kernel hash.
        jump(JEQ_K, 6, 0, const { hop(7, FALLBACK) }),
        // 8: A = the IPv6 next header.
        op(LD_B_ABS, net(IPV6_NEXT_HEADER)),
        // 9: an extension header first: kernel hash.
        jump(JEQ_K, IPPROTO_TCP, 0, const { hop(9, FALLBACK) }),
        // 10: A = the TCP source port, right after the fixed header.
        op(LD_H_ABS, net(IPV6_HEADER_LEN)),
        // 11: A = port % workers.
        op(MOD_K, workers),
        // 12: deliver to that worker's listener.
        op(RET_A, 0),
        // 13 (FALLBACK): let the kernel hash.
        op(RET_K, KERNEL_HASH),
    ]
}

/// Source ports a dialer can bind so that [`source_port_steering_program`]
/// hands its connection to `worker` of `workers` (0 counts as 1): every port
/// `p` of [`EPHEMERAL_PORTS`] with `p % workers == worker`, each exactly
/// once, in an order drawn from `seed` (a random start and a random stride
/// coprime to their count). Empty when `worker >= workers`.
///
/// A port may be in use (by another dialer, or as the kernel's own pick for
/// some connection): bind the next one on `EADDRINUSE`.
pub fn source_port_for(worker: u16, workers: u16, seed: u64) -> impl Iterator<Item = u16> {
    let workers = u64::from(workers.max(1));
    let worker = u64::from(worker);
    let low = u64::from(*EPHEMERAL_PORTS.start());
    let high = u64::from(*EPHEMERAL_PORTS.end());
    // The lowest port of the range that is `worker` modulo `workers`.
    let first = low + (worker + workers - low % workers) % workers;
    let count = if worker < workers && first <= high {
        (high - first) / workers + 1
    } else {
        0
    };
    let mut rng = crate::rng::SplitMix64::new(seed);
    let start = rng.below(count);
    let mut stride = rng.below(count);
    // A stride coprime to the count visits every index once (1 always is).
    while gcd(stride, count) != 1 && count > 1 {
        stride = (stride + 1) % count;
    }
    (0..count).filter_map(move |i| {
        // Below `count`, so the port is at most `high`.
        let index = (start + i * stride) % count;
        u16::try_from(first + index * workers).ok()
    })
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests;
