//! The steering programs, run by a classic-BPF interpreter against the
//! codec's ownership hash, and on real sockets on loopback.

use super::*;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use presence_codec::shard::{owner, shard_hash};
use presence_codec::{
    samples, BuddyAction, BuddyList, BuddyUpdate, ClientOperation, ClientRequest, Consent,
    ConsentScope, ConsentUpdate, Credential, DeviceAuth, FrameWriter, Message, MessageType, Msisdn,
    PresenceState, Publish, FRAME_LEN_DEFAULT_MAX, MSISDN_MAX,
};
use socket2::{Domain, Protocol, Socket, Type};

// ---------------------------------------------------------------------
// A classic-BPF interpreter: the instructions the programs use, with the
// kernel's semantics for reuseport programs.
// ---------------------------------------------------------------------

/// A packet as a reuseport program sees it: offset 0 is `data` (past the
/// UDP header, or past the TCP header), offsets from `SKF_NET_OFF` are
/// relative to the network header at `network`.
struct Packet<'a> {
    bytes: &'a [u8],
    network: usize,
    data: usize,
}

impl Packet<'_> {
    /// A datagram's payload alone (what a UDP program reads from 0).
    fn payload(bytes: &[u8]) -> Packet<'_> {
        Packet {
            bytes,
            network: 0,
            data: 0,
        }
    }

    /// The `size` bytes at `k`, big-endian, or `None` where the kernel
    /// would end the program (with the result 0).
    fn load(&self, k: u32, size: usize) -> Option<u32> {
        let k = i64::from(k.cast_signed());
        let start = if k >= 0 {
            self.data.checked_add(usize::try_from(k).ok()?)?
        } else if k >= i64::from(libc::SKF_NET_OFF) {
            let into = usize::try_from(k - i64::from(libc::SKF_NET_OFF)).ok()?;
            self.network.checked_add(into)?
        } else {
            return None;
        };
        let bytes = self.bytes.get(start..start.checked_add(size)?)?;
        Some(bytes.iter().fold(0, |v, &b| (v << 8) | u32::from(b)))
    }
}

/// How a program ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Returned(u32),
    /// A load beyond the packet: the kernel's result is 0.
    Aborted,
}

fn run(program: &[libc::sock_filter], packet: &Packet<'_>) -> Ended {
    let (mut a, mut x) = (0u32, 0u32);
    let mut pc = 0usize;
    loop {
        let insn = program
            .get(pc)
            .unwrap_or_else(|| panic!("ran off the program at {pc}"));
        pc += 1;
        let code = u32::from(insn.code);
        let k = insn.k;
        match code & 0x07 {
            libc::BPF_LD | libc::BPF_LDX => {
                let value = match code & 0xe0 {
                    libc::BPF_LEN => u32::try_from(packet.bytes.len() - packet.data).unwrap(),
                    libc::BPF_ABS | libc::BPF_IND | libc::BPF_MSH => {
                        let size = match code & 0x18 {
                            libc::BPF_W => 4,
                            libc::BPF_H => 2,
                            libc::BPF_B => 1,
                            _ => panic!("bad size in {code:#x}"),
                        };
                        let at = if code & 0xe0 == libc::BPF_IND {
                            x.wrapping_add(k)
                        } else {
                            k
                        };
                        let Some(v) = packet.load(at, size) else {
                            return Ended::Aborted;
                        };
                        if code & 0xe0 == libc::BPF_MSH {
                            4 * (v & 0xf)
                        } else {
                            v
                        }
                    }
                    _ => panic!("unsupported load {code:#x}"),
                };
                if code & 0x07 == libc::BPF_LD {
                    a = value;
                } else {
                    x = value;
                }
            }
            libc::BPF_ALU => {
                let operand = if code & libc::BPF_X != 0 { x } else { k };
                a = match code & 0xf0 {
                    libc::BPF_ADD => a.wrapping_add(operand),
                    libc::BPF_MUL => a.wrapping_mul(operand),
                    libc::BPF_AND => a & operand,
                    libc::BPF_XOR => a ^ operand,
                    libc::BPF_RSH => a.checked_shr(operand).unwrap_or(0),
                    libc::BPF_MOD => match a.checked_rem(operand) {
                        Some(r) => r,
                        None => return Ended::Returned(0),
                    },
                    _ => panic!("unsupported ALU op {code:#x}"),
                };
            }
            libc::BPF_MISC => match code & 0xf8 {
                libc::BPF_TAX => x = a,
                _ => panic!("unsupported misc op {code:#x}"),
            },
            libc::BPF_JMP => {
                let taken = match code & 0xf0 {
                    libc::BPF_JEQ => a == k,
                    libc::BPF_JGE => a >= k,
                    libc::BPF_JGT => a > k,
                    _ => panic!("unsupported jump {code:#x}"),
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            libc::BPF_RET => {
                return Ended::Returned(if code & 0x18 == libc::BPF_A { a } else { k });
            }
            _ => panic!("unsupported instruction {code:#x}"),
        }
    }
}

fn msisdn(value: u64) -> Msisdn {
    Msisdn::from_u64(value).unwrap()
}

/// `count` MSISDNs: edge values, a block of consecutive numbers of one
/// range, short numbers, and values spread over the whole 50-bit range.
fn msisdns(count: usize) -> Vec<Msisdn> {
    let mut out: Vec<Msisdn> = [
        1,
        2,
        0xFFFF_FFFF,
        0x1_0000_0000,
        0x1_0000_0001,
        0xFF_FFFF_FFFF,
        MSISDN_MAX,
        MSISDN_MAX - 1,
    ]
    .into_iter()
    .map(msisdn)
    .collect();
    out.extend((0..20_000).map(|i| msisdn(447_700_000_000 + i)));
    out.extend((1..5_000).map(msisdn));
    let mut rng = crate::rng::SplitMix64::new(0x5EED);
    while out.len() < count {
        out.push(msisdn(rng.below(MSISDN_MAX) + 1));
    }
    out
}

fn frame(messages: &[Message<'_>]) -> Vec<u8> {
    let mut frame = Vec::new();
    let mut writer = FrameWriter::new(&mut frame, FRAME_LEN_DEFAULT_MAX).unwrap();
    for message in messages {
        writer.push(message).unwrap();
    }
    frame
}

/// A message of a subject-first type (`kind` picks which) about `subject`.
fn subject_message(kind: usize, subject: Msisdn) -> Message<'static> {
    let credential = DeviceAuth::Credential(Credential::new(b"pw").unwrap());
    match kind % 4 {
        0 => Message::ClientRequest(ClientRequest {
            txid: 1,
            watcher: subject,
            target: samples::TARGET,
            operation: ClientOperation::Query,
            auth: credential,
        }),
        1 => Message::Publish(Publish {
            txid: 2,
            subscriber: subject,
            state: PresenceState::Detached,
            auth: credential,
        }),
        2 => Message::BuddyUpdate(BuddyUpdate {
            txid: 3,
            owner: subject,
            action: BuddyAction::Add,
            buddies: BuddyList::default(),
        }),
        _ => Message::ConsentUpdate(ConsentUpdate {
            txid: 4,
            owner: subject,
            scope: ConsentScope::Watcher(samples::WATCHER),
            consent: Consent::Grant,
        }),
    }
}

fn not_subject_first(message_type: u8) -> bool {
    !SUBJECT_FIRST_TYPES.iter().any(|t| *t as u8 == message_type)
}

const WORKER_COUNTS: [u16; 7] = [1, 2, 3, 8, 16, 0, u16::MAX];

#[test]
fn the_device_program_computes_the_codecs_owner_of_the_first_subject() {
    let programs: Vec<(u16, Vec<libc::sock_filter>)> = WORKER_COUNTS
        .iter()
        .map(|&w| (w, device_steering_program(w)))
        .collect();
    for (i, subject) in msisdns(100_000).into_iter().enumerate() {
        let first = subject_message(i, subject);
        // Only the first message counts: a second one of another kind,
        // about someone else, changes nothing.
        let frame = if i % 5 == 0 {
            frame(&[first, Message::Query(samples::QUERY)])
        } else {
            frame(&[first])
        };
        for (workers, program) in &programs {
            let expected = u32::from(owner(subject, *workers));
            assert_eq!(
                run(program, &Packet::payload(&frame)),
                Ended::Returned(expected),
                "{subject} over {workers} workers (hash {:#x})",
                shard_hash(subject)
            );
        }
    }
}

#[test]
fn the_device_program_needs_only_the_bytes_up_to_the_subject() {
    let program = device_steering_program(8);
    let subject = msisdn(4_915_112_345_678);
    for kind in 0..4 {
        let whole = frame(&[subject_message(kind, subject)]);
        for len in 0..=whole.len() {
            let expected = if len >= FIRST_SUBJECT_OFFSET + MSISDN_WIRE_LEN {
                u32::from(owner(subject, 8))
            } else {
                KERNEL_HASH
            };
            // Never aborted: an abort would send the datagram to socket 0.
            assert_eq!(
                run(&program, &Packet::payload(&whole[..len])),
                Ended::Returned(expected),
                "kind {kind}, {len} bytes"
            );
        }
    }
}

#[test]
fn datagrams_without_a_subject_first_are_left_to_the_kernel_hash() {
    let program = device_steering_program(3);
    // Every message type whose body does not open with a subject.
    let mut datagrams: Vec<Vec<u8>> = samples::one_of_each()
        .iter()
        .filter(|(_, m)| not_subject_first(m.message_type() as u8))
        .map(|(_, m)| frame(&[*m]))
        .collect();
    assert!(datagrams.iter().any(|d| d[2] == MessageType::Query as u8));
    assert!(datagrams.iter().any(|d| d[2] == MessageType::Answer as u8));
    // A query first, a client request second: the first decides.
    datagrams.push(frame(&[
        Message::Query(samples::QUERY),
        subject_message(0, samples::WATCHER),
    ]));
    datagrams.push(vec![0x50, 0x01, 0x03, 0x20, 0]);
    datagrams.push(Vec::new());
    let mut rng = crate::rng::SplitMix64::new(7);
    for len in 0..200 {
        let mut garbage: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if let Some(t) = garbage.get_mut(FIRST_TYPE_OFFSET) {
            if !not_subject_first(*t) {
                *t = 0xEE;
            }
        }
        datagrams.push(garbage);
    }
    for datagram in &datagrams {
        assert_eq!(
            run(&program, &Packet::payload(datagram)),
            Ended::Returned(KERNEL_HASH),
            "{datagram:02x?}"
        );
    }
}

/// An IPv4 SYN from `port` with `option_words` words of IP options, its
/// TCP header `tcp_len` bytes long; with the offset of the data.
fn ipv4_syn(port: u16, option_words: u8, tcp_len: usize) -> (Vec<u8>, usize) {
    let ihl = 5 + option_words;
    let mut packet = vec![0x40 | ihl, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    packet.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 2]);
    // Options that are not the port: a wrong offset would show.
    for _ in 0..option_words {
        packet.extend_from_slice(&[0x94, 0x04, 0xA5, 0x5A]);
    }
    let len = packet.len() + tcp_len;
    packet[2..4].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    packet.extend_from_slice(&tcp_header(port, tcp_len));
    (packet, len)
}

/// An IPv6 SYN from `port` whose fixed header names `next_header`.
fn ipv6_syn(port: u16, next_header: u8) -> (Vec<u8>, usize) {
    let mut packet = vec![0x60, 0, 0, 0, 0, 20, next_header, 64];
    packet.extend_from_slice(&[0xfe; 32]);
    packet.extend_from_slice(&tcp_header(port, 20));
    let len = packet.len();
    (packet, len)
}

fn tcp_header(port: u16, len: usize) -> Vec<u8> {
    let mut tcp = vec![0x77; len];
    tcp[..2].copy_from_slice(&port.to_be_bytes());
    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
    tcp[12] = u8::try_from(len / 4).unwrap() << 4;
    tcp[13] = 0x02;
    tcp
}

#[test]
fn the_source_port_program_returns_the_peers_port_modulo_the_workers() {
    for workers in WORKER_COUNTS {
        let program = source_port_steering_program(workers);
        for port in (0..=u16::MAX).step_by(7).chain([0, 1, u16::MAX]) {
            let expected = Ended::Returned(u32::from(port) % u32::from(workers.max(1)));
            let packets = [
                ipv4_syn(port, 0, 20),
                ipv4_syn(port, 1, 20),
                ipv4_syn(port, 10, 40),
                ipv6_syn(port, 6),
            ];
            for (bytes, data) in &packets {
                let packet = Packet {
                    bytes,
                    network: 0,
                    data: *data,
                };
                assert_eq!(run(&program, &packet), expected, "{port} {bytes:02x?}");
            }
        }
    }
}

#[test]
fn the_source_port_program_leaves_extension_headers_and_other_versions_to_the_kernel() {
    let program = source_port_steering_program(3);
    let hop_by_hop = ipv6_syn(40_000, 0);
    let mut version5 = ipv4_syn(40_000, 0, 20);
    version5.0[0] = 0x55;
    let mut version0 = ipv6_syn(40_000, 6);
    version0.0[0] = 0x00;
    for (bytes, data) in [&hop_by_hop, &version5, &version0] {
        let packet = Packet {
            bytes,
            network: 0,
            data: *data,
        };
        assert_eq!(run(&program, &packet), Ended::Returned(KERNEL_HASH));
    }
}

#[test]
fn source_ports_for_a_worker_are_each_ephemeral_port_it_owns_once() {
    for workers in [1u16, 2, 3, 7, 8, 16] {
        let mut all = Vec::new();
        for worker in 0..workers {
            let ports: Vec<u16> = source_port_for(worker, workers, u64::from(worker)).collect();
            assert!(ports
                .iter()
                .all(|p| EPHEMERAL_PORTS.contains(p) && p % workers == worker));
            all.extend(ports);
        }
        all.sort_unstable();
        assert_eq!(all, EPHEMERAL_PORTS.collect::<Vec<u16>>(), "{workers}");
    }
    assert_eq!(source_port_for(3, 3, 1).count(), 0);
    assert_eq!(source_port_for(0, 0, 1).count(), 28232);
    // The seed changes the order.
    let a: Vec<u16> = source_port_for(1, 3, 1).take(8).collect();
    let b: Vec<u16> = source_port_for(1, 3, 2).take(8).collect();
    assert_ne!(a, b);
}

#[test]
fn an_empty_or_oversized_program_is_refused_before_the_kernel() {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    for len in [0, 4097] {
        let program = vec![op(RET_K, 0); len];
        let error = attach_reuseport_cbpf(&socket, &program).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}

// ---------------------------------------------------------------------
// Loopback: real reuseport groups.
// ---------------------------------------------------------------------

const WAIT: Duration = Duration::from_secs(2);

fn loopback_v4() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn loopback_v6() -> SocketAddr {
    (std::net::Ipv6Addr::LOCALHOST, 0).into()
}

fn reuseport_socket(addr: SocketAddr, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// Binds `n` UDP sockets with `SO_REUSEPORT` to one port of `addr`'s
/// loopback, in order: socket `i` is the `i`-th bound.
fn udp_group(addr: SocketAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::new();
    let mut bind_to = addr;
    for _ in 0..n {
        let socket = reuseport_socket(addr, Type::DGRAM, Protocol::UDP)?;
        socket.bind(&bind_to.into())?;
        bind_to = socket.local_addr()?.as_socket().unwrap();
        socket.set_nonblocking(true)?;
        sockets.push(socket.into());
    }
    Ok(sockets)
}

/// Sends `datagram` to the group from `client` and returns the index of
/// the socket that received it (and checks no other one did).
fn delivered_to(client: &UdpSocket, group: &[UdpSocket], datagram: &[u8]) -> usize {
    let to = group[0].local_addr().unwrap();
    client.send_to(datagram, to).unwrap();
    let mut buf = [0u8; 2048];
    let started = Instant::now();
    loop {
        for (i, socket) in group.iter().enumerate() {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    assert_eq!(&buf[..n], datagram);
                    return i;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("recv on socket {i}: {e}"),
            }
        }
        assert!(started.elapsed() < WAIT, "datagram not delivered");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn udp_client(addr: SocketAddr) -> UdpSocket {
    UdpSocket::bind(addr).unwrap()
}

fn constant(index: u32) -> Vec<libc::sock_filter> {
    vec![op(RET_K, index)]
}

#[test]
fn a_udp_group_indexes_its_sockets_in_bind_order_through_any_member() {
    let group = udp_group(loopback_v4(), 3).unwrap();
    let client = udp_client(loopback_v4());
    for index in 0..3 {
        // The program is the group's: attached through another member
        // each time, and each attach replaces the previous one.
        attach_reuseport_cbpf(&group[(index + 1) % 3], &constant(index as u32)).unwrap();
        for _ in 0..5 {
            assert_eq!(delivered_to(&client, &group, b"steer"), index);
        }
    }
}

#[test]
fn the_kernel_refuses_a_socket_in_no_group_and_a_program_without_a_return() {
    // Bound without SO_REUSEPORT: no group to attach to.
    let lone = UdpSocket::bind(loopback_v4()).unwrap();
    let error = attach_reuseport_cbpf(&lone, &constant(0)).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");
    // The classic-BPF checks: the last instruction must return.
    let group = udp_group(loopback_v4(), 2).unwrap();
    let error = attach_reuseport_cbpf(&group[0], &[op(LD_W_LEN, 0)]).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");
}

#[test]
fn a_load_beyond_the_datagram_sends_it_to_socket_0_not_to_the_fallback() {
    let group = udp_group(loopback_v4(), 3).unwrap();
    // `ld [1000]; ret #2`: aborted by the load on a short datagram.
    attach_reuseport_cbpf(&group[0], &[op(LD_W_ABS, 1000), op(RET_K, 2)]).unwrap();
    for _ in 0..16 {
        let client = udp_client(loopback_v4());
        assert_eq!(delivered_to(&client, &group, b"short"), 0);
    }
    assert_eq!(
        delivered_to(&udp_client(loopback_v4()), &group, &[7; 1100]),
        2
    );
}

#[test]
fn an_index_beyond_the_group_falls_back_to_the_kernel_hash() {
    let group = udp_group(loopback_v4(), 3).unwrap();
    for index in [3, 4, KERNEL_HASH] {
        attach_reuseport_cbpf(&group[0], &constant(index)).unwrap();
        // Still delivered, to a socket the 4-tuple hash picks: from many
        // source ports, more than one socket gets some.
        let mut reached = [false; 3];
        for _ in 0..32 {
            let client = udp_client(loopback_v4());
            reached[delivered_to(&client, &group, b"fallback")] = true;
        }
        assert!(reached.iter().filter(|r| **r).count() > 1, "{reached:?}");
    }
}

#[test]
fn closing_a_socket_moves_the_groups_last_socket_into_its_index() {
    let mut group = udp_group(loopback_v4(), 3).unwrap();
    let addr = group[0].local_addr().unwrap();
    let client = udp_client(loopback_v4());
    // Close the first-bound socket: the group is now [third, second].
    drop(group.remove(0));
    // `group` is [second, third] in our order.
    attach_reuseport_cbpf(&group[0], &constant(0)).unwrap();
    assert_eq!(
        delivered_to(&client, &group, b"0"),
        1,
        "the last moved to 0"
    );
    attach_reuseport_cbpf(&group[0], &constant(1)).unwrap();
    assert_eq!(delivered_to(&client, &group, b"1"), 0, "the second stays");
    // A socket bound now joins at the end, under the same program.
    let late = reuseport_socket(addr, Type::DGRAM, Protocol::UDP).unwrap();
    late.bind(&addr.into()).unwrap();
    late.set_nonblocking(true).unwrap();
    group.push(late.into());
    attach_reuseport_cbpf(&group[0], &constant(2)).unwrap();
    assert_eq!(delivered_to(&client, &group, b"2"), 2, "appended");
}

/// Whether `[::1]` can be bound (IPv6 may be off in a sandbox).
fn ipv6_loopback() -> bool {
    match UdpSocket::bind(loopback_v6()) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("note: cannot bind [::1] ({e}): IPv6 part skipped");
            false
        }
    }
}

fn steer_udp_by_subject(addr: SocketAddr) {
    const WORKERS: u16 = 3;
    let group = udp_group(addr, usize::from(WORKERS)).unwrap();
    attach_reuseport_cbpf(&group[1], &device_steering_program(WORKERS)).unwrap();
    let client = udp_client(addr);
    let mut per_worker = [0usize; WORKERS as usize];
    for (i, subject) in msisdns(8 + 300).into_iter().enumerate() {
        let datagram = frame(&[subject_message(i, subject)]);
        let worker = delivered_to(&client, &group, &datagram);
        assert_eq!(worker, usize::from(owner(subject, WORKERS)), "{subject}");
        per_worker[worker] += 1;
    }
    assert!(per_worker.iter().all(|&n| n > 0), "{per_worker:?}");
    // Without a subject first: still delivered, by the kernel's hash.
    for (_, message) in samples::one_of_each() {
        if not_subject_first(message.message_type() as u8) {
            delivered_to(&client, &group, &frame(&[message]));
        }
    }
    delivered_to(&client, &group, &[0x50, 0x01, 0x03, 0x20, 0]);
}

#[test]
fn a_datagram_reaches_the_socket_of_the_worker_owning_its_first_subject() {
    steer_udp_by_subject(loopback_v4());
    if ipv6_loopback() {
        steer_udp_by_subject(loopback_v6());
    }
}

/// Binds `n` TCP sockets with `SO_REUSEPORT` to one port, in index
/// order, then listens in `listen_order`.
fn tcp_group(addr: SocketAddr, n: usize, listen_order: &[usize]) -> io::Result<Vec<TcpListener>> {
    let mut sockets = Vec::new();
    let mut bind_to = addr;
    for _ in 0..n {
        let socket = reuseport_socket(addr, Type::STREAM, Protocol::TCP)?;
        socket.bind(&bind_to.into())?;
        bind_to = socket.local_addr()?.as_socket().unwrap();
        socket.set_nonblocking(true)?;
        sockets.push(socket);
    }
    for &i in listen_order {
        sockets[i].listen(64)?;
    }
    Ok(sockets.into_iter().map(TcpListener::from).collect())
}

/// Connects to the group from `source` (port 0: the kernel's pick) and
/// returns the listener that accepted, and the source port used.
fn accepted_by(group: &[TcpListener], source: SocketAddr) -> io::Result<(usize, u16)> {
    let to = group[0].local_addr()?;
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&source.into())?;
    socket.connect_timeout(&to.into(), WAIT)?;
    let client: TcpStream = socket.into();
    let from = client.local_addr()?;
    let started = Instant::now();
    loop {
        for (i, listener) in group.iter().enumerate() {
            match listener.accept() {
                Ok((_, peer)) => {
                    assert_eq!(peer, from);
                    return Ok((i, from.port()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        assert!(started.elapsed() < WAIT, "connection not accepted");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn with_port(addr: SocketAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr.ip(), port)
}

#[test]
fn a_tcp_group_indexes_its_listeners_in_listen_order_not_bind_order() {
    let group = tcp_group(loopback_v4(), 3, &[2, 0, 1]).unwrap();
    for (index, listener) in [(0, 2), (1, 0), (2, 1)] {
        attach_reuseport_cbpf(&group[0], &constant(index)).unwrap();
        for _ in 0..3 {
            let (accepted, _) = accepted_by(&group, loopback_v4()).unwrap();
            assert_eq!(accepted, listener, "index {index}");
        }
    }
    attach_reuseport_cbpf(&group[0], &constant(KERNEL_HASH)).unwrap();
    accepted_by(&group, loopback_v4()).unwrap();
}

fn steer_tcp_by_source_port(addr: SocketAddr) {
    const WORKERS: u16 = 3;
    let group = tcp_group(addr, usize::from(WORKERS), &[0, 1, 2]).unwrap();
    attach_reuseport_cbpf(&group[2], &source_port_steering_program(WORKERS)).unwrap();
    // A seed that differs from run to run (the group's port).
    let seed = u64::from(group[0].local_addr().unwrap().port());
    for worker in 0..WORKERS {
        let mut connected = 0;
        for port in source_port_for(worker, WORKERS, seed) {
            match accepted_by(&group, with_port(addr, port)) {
                Ok((accepted, from)) => {
                    assert_eq!(from, port);
                    assert_eq!(accepted, usize::from(port % WORKERS), "port {port}");
                    connected += 1;
                }
                // Someone else's port: take the next candidate.
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        || e.kind() == io::ErrorKind::AddrNotAvailable => {}
                Err(e) => panic!("from port {port}: {e}"),
            }
            if connected == 4 {
                break;
            }
        }
        assert_eq!(connected, 4, "worker {worker}");
    }
}

#[test]
fn a_connection_is_accepted_by_the_listener_of_the_worker_its_source_port_names() {
    steer_tcp_by_source_port(loopback_v4());
    if ipv6_loopback() {
        steer_tcp_by_source_port(loopback_v6());
    }
}
