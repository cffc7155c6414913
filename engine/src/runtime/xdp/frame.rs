//! Ethernet II + IPv4 + UDP frames, read from and written into the AF_XDP
//! port's memory. Only what the XDP program redirects arrives here: IPv4
//! without options, unfragmented, UDP (`super::program`); anything else
//! stays with the kernel and reaches the client socket.
//!
//! The UDP checksum of a received frame is not verified: on a real NIC the
//! hardware has checked it, and on veth a sender with checksum offload
//! leaves it partial. Device requests carry their own MAC (wire format
//! §5.11), which a corrupted request fails. Frames written carry both
//! checksums, complete.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Ethernet, IPv4 (no options) and UDP headers: the bytes before a payload.
pub const HEADERS: usize = ETH + IP + UDP;
const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_UDP: u8 = 17;

/// A received frame's addresses and UDP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    /// The Ethernet source: the sender, or the router it came through.
    pub src_mac: [u8; 6],
    /// The Ethernet destination: this port's interface.
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(bytes))
}

fn mac_at(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

/// Reads an Ethernet II frame holding one unfragmented IPv4 UDP datagram
/// without IP options; `None` for anything else, or for lengths that
/// disagree (Ethernet padding after the datagram is allowed).
pub fn parse(frame: &[u8]) -> Option<Received<'_>> {
    if frame.len() < HEADERS || u16_at(frame, 12)? != ETHERTYPE_IPV4 {
        return None;
    }
    // Version 4, header length 5 words; protocol UDP; neither more
    // fragments nor a fragment offset.
    if *frame.get(ETH)? != 0x45
        || *frame.get(ETH + 9)? != PROTO_UDP
        || u16_at(frame, ETH + 6)? & 0x3fff != 0
    {
        return None;
    }
    let total = usize::from(u16_at(frame, ETH + 2)?);
    let udp_len = usize::from(u16_at(frame, ETH + IP + 4)?);
    if total < IP + UDP || ETH + total > frame.len() || udp_len != total - IP {
        return None;
    }
    Some(Received {
        dst_mac: mac_at(frame, 0)?,
        src_mac: mac_at(frame, 6)?,
        src: SocketAddrV4::new(ipv4_at(frame, ETH + 12)?, u16_at(frame, ETH + IP)?),
        dst: SocketAddrV4::new(ipv4_at(frame, ETH + 16)?, u16_at(frame, ETH + IP + 2)?),
        payload: frame.get(HEADERS..ETH + total)?,
    })
}

/// The ones'-complement sum of `bytes` as big-endian 16-bit words (an odd
/// last byte padded with zero), added to `sum`, not yet folded.
fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a sum into the 16-bit ones'-complement checksum.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 header checksum of `header` (its checksum field zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    fold(sum_words(0, header))
}

/// Where a frame goes and from where, at the Ethernet and UDP layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

/// Writes a frame carrying `payload` along `route` into `buf`, with IP
/// identification `ip_id`; returns its length, or `None` if it does not
/// fit `buf` or an IPv4 datagram.
pub fn write(buf: &mut [u8], route: &Route, ip_id: u16, payload: &[u8]) -> Option<usize> {
    let len = HEADERS + payload.len();
    let total = u16::try_from(IP + UDP + payload.len()).ok()?;
    let udp_len = total - IP as u16;
    let frame = buf.get_mut(..len)?;
    let (eth, rest) = frame.split_at_mut(ETH);
    let (ip, rest) = rest.split_at_mut(IP);
    let (udp, body) = rest.split_at_mut(UDP);
    eth[..6].copy_from_slice(&route.dst_mac);
    eth[6..12].copy_from_slice(&route.src_mac);
    eth[12..].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let src_ip = route.src.ip().octets();
    let dst_ip = route.dst.ip().octets();
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    // Don't fragment, as the kernel's UDP sends with path-MTU discovery.
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = PROTO_UDP;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src_ip);
    ip[16..20].copy_from_slice(&dst_ip);
    let ip_sum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    udp[0..2].copy_from_slice(&route.src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&route.dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].fill(0);
    body.copy_from_slice(payload);
    // The pseudo-header (addresses, protocol, length), header and payload.
    let mut sum = sum_words(0, &src_ip);
    sum = sum_words(sum, &dst_ip);
    sum += u32::from(PROTO_UDP) + u32::from(udp_len);
    sum = sum_words(sum, udp);
    sum = sum_words(sum, body);
    // A computed zero is sent as all ones: zero means "no checksum".
    let udp_sum = match fold(sum) {
        0 => 0xffff,
        s => s,
    };
    udp[6..8].copy_from_slice(&udp_sum.to_be_bytes());
    Some(len)
}

/// The `xdp_frame` fuzz target's property (also replayed over its corpus
/// by `cargo test`): reading any bytes as a frame never panics; a frame
/// read has its payload inside the input; the answer written back along
/// the reversed route reads back with the same payload and addresses
/// swapped, and its checksums verify.
pub fn fuzz_parse(data: &[u8]) {
    let Some(got) = parse(data) else {
        return;
    };
    assert!(got.payload.len() + HEADERS <= data.len());
    let back = Route {
        src_mac: got.dst_mac,
        dst_mac: got.src_mac,
        src: got.dst,
        dst: got.src,
    };
    let mut buf = vec![0u8; HEADERS + got.payload.len()];
    let len = write(&mut buf, &back, 7, got.payload).expect("a read payload fits again");
    let frame = buf.get(..len).unwrap_or_default();
    assert_eq!(
        ipv4_checksum(frame.get(ETH..ETH + IP).unwrap_or_default()),
        0
    );
    let again = parse(frame).expect("a written frame reads back");
    assert_eq!(again.payload, got.payload);
    assert_eq!((again.src, again.dst), (got.dst, got.src));
    assert_eq!((again.src_mac, again.dst_mac), (got.dst_mac, got.src_mac));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        Route {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7000),
            dst: SocketAddrV4::new(Ipv4Addr::new(192, 168, 200, 250), 40_001),
        }
    }

    /// The UDP checksum over the pseudo-header verifies to zero, as a
    /// receiving kernel checks it.
    fn udp_verifies(frame: &[u8]) -> bool {
        let ip = &frame[ETH..ETH + IP];
        let udp = &frame[ETH + IP..];
        let mut sum = sum_words(0, &ip[12..20]);
        sum += u32::from(PROTO_UDP) + udp.len() as u32;
        fold(sum_words(sum, udp)) == 0
    }

    #[test]
    fn the_ipv4_header_checksum_matches_a_known_header() {
        // A classic worked example: 192.168.0.1 → 192.168.0.199, TTL 64,
        // UDP, total length 0x73: checksum 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&header), 0xb861);
    }

    #[test]
    fn a_written_frame_reads_back_with_valid_checksums() {
        for payload_len in [0usize, 1, 35, 64, 1400] {
            let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7) as u8).collect();
            let mut buf = [0u8; 2048];
            let len = write(&mut buf, &route(), 0x1234, &payload).unwrap();
            let frame = &buf[..len];
            assert_eq!(ipv4_checksum(&frame[ETH..ETH + IP]), 0, "header verifies");
            assert!(udp_verifies(frame), "UDP verifies at {payload_len} bytes");
            let got = parse(frame).unwrap();
            assert_eq!(got.payload, &payload[..]);
            assert_eq!((got.src, got.dst), (route().src, route().dst));
            assert_eq!(
                (got.src_mac, got.dst_mac),
                (route().src_mac, route().dst_mac)
            );
        }
    }

    #[test]
    fn ethernet_padding_after_the_datagram_is_not_payload() {
        let mut buf = [0u8; 2048];
        let len = write(&mut buf, &route(), 1, b"hi").unwrap();
        assert!(len < 60);
        let padded = &buf[..60];
        assert_eq!(parse(padded).unwrap().payload, b"hi");
    }

    #[test]
    fn what_is_not_a_plain_ipv4_udp_frame_is_not_read() {
        let mut buf = [0u8; 2048];
        let len = write(&mut buf, &route(), 1, b"payload").unwrap();
        let good = buf[..len].to_vec();
        let changed = |at: usize, value: u8| {
            let mut f = good.clone();
            f[at] = value;
            f
        };
        assert!(parse(&good[..HEADERS - 1]).is_none(), "cut short");
        assert!(
            parse(&good[..len - 1]).is_none(),
            "IP length past the frame"
        );
        assert!(parse(&changed(12, 0x86)).is_none(), "not IPv4 (0x86dd)");
        assert!(parse(&changed(ETH, 0x46)).is_none(), "IP options");
        assert!(parse(&changed(ETH + 9, 6)).is_none(), "TCP");
        assert!(parse(&changed(ETH + 6, 0x20)).is_none(), "more fragments");
        assert!(
            parse(&changed(ETH + 7, 0x01)).is_none(),
            "a fragment offset"
        );
        assert!(
            parse(&changed(ETH + IP + 5, 3)).is_none(),
            "UDP length disagrees"
        );
        assert!(parse(&[0u8; 0]).is_none());
    }

    #[test]
    fn a_payload_too_large_for_the_buffer_is_not_written() {
        let mut buf = [0u8; 64];
        assert_eq!(write(&mut buf, &route(), 1, &[0u8; 22]), Some(64));
        assert_eq!(write(&mut buf, &route(), 1, &[0u8; 23]), None);
        let mut big = vec![0u8; 70_000];
        assert_eq!(write(&mut big, &route(), 1, &[0u8; 65_508]), None);
    }
}
