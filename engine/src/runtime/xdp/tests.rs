//! The XDP path on a veth pair between this namespace and a network
//! namespace of the test's own: the program, the AF_XDP socket and the
//! client socket beside it, with a plain UDP client on the other end.
//! Needs root (CAP_NET_ADMIN, CAP_BPF), as CI runs.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::*;
use crate::lab::netns::VethLab;

fn lab() -> VethLab {
    VethLab::new().expect("a veth pair into a namespace of the test's own")
}

/// Waits for `socket` to become readable (poll), up to `within`.
fn readable(fd: std::os::fd::RawFd, within: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(within.as_millis()).unwrap_or(1000);
    // SAFETY: one pollfd, alive across the call.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// Serves `count` datagrams on the XDP side: each answered with its own
/// bytes reversed. Returns what came in through the port and through the
/// client socket.
fn serve(
    listen: SocketAddr,
    settings: XdpSettings,
    count: usize,
) -> impl FnOnce() -> (Vec<(Vec<u8>, SocketAddr)>, usize, AttachMode) {
    move || {
        let socket = UdpSocket::bind(listen).expect("client socket");
        socket.set_nonblocking(true).unwrap();
        let path = XdpPath::attach(listen, &settings).expect("attaches");
        let mut port = XdpPort::open(&path, 0).expect("AF_XDP socket");
        let mut batch = RecvBatch::new();
        let mut send = SendBatch::new();
        let mut seen = Vec::new();
        let mut by_socket = 0usize;
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.len() + by_socket < count && Instant::now() < deadline {
            readable(port.fd(), Duration::from_millis(20));
            let n = port.recv_into(&mut batch);
            for i in 0..n {
                let (bytes, from) = batch.get(i).unwrap();
                let answer: Vec<u8> = bytes.iter().rev().copied().collect();
                assert!(send.push(from, &answer));
                seen.push((bytes.to_vec(), from));
            }
            while !send.is_empty() {
                port.flush(&mut send, &socket).unwrap();
            }
            let mut buf = [0u8; 2048];
            while let Ok((len, from)) = socket.recv_from(&mut buf) {
                by_socket += 1;
                let _ = socket.send_to(&buf[..len], from);
            }
        }
        // Let the last answers leave before the socket closes.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            port.sent_frames,
            seen.len() as u64,
            "every answer to a port datagram left as a frame"
        );
        let mode = path.mode();
        (seen, by_socket, mode)
    }
}

#[test]
fn datagrams_for_the_port_arrive_on_the_af_xdp_socket_and_their_answers_go_back() {
    let lab = lab();
    let listen = SocketAddr::from((lab.inner_ip, 7100));
    let settings = XdpSettings {
        interface: None,
        mode: None,
    };
    let server = lab.inside(serve(listen, settings, 200)).unwrap();
    let client = UdpSocket::bind((lab.outer_ip, 0)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut answered = 0usize;
    let mut buf = [0u8; 2048];
    let started = Instant::now();
    // The program attaches on the server thread: resend until it answers.
    while answered == 0 && started.elapsed() < Duration::from_secs(5) {
        client.send_to(b"warm-up", listen).unwrap();
        if let Ok((len, _)) = client.recv_from(&mut buf) {
            assert_eq!(&buf[..len], b"pu-mraw", "reversed by the XDP side");
            answered += 1;
        }
    }
    assert_eq!(answered, 1, "the XDP side answers");
    while client.recv_from(&mut buf).is_ok() {}
    let mut expected = Vec::new();
    for i in 0..150u32 {
        let payload = format!("request {i:04} {}", "x".repeat((i % 40) as usize));
        client.send_to(payload.as_bytes(), listen).unwrap();
        expected.push(payload);
        if i % 10 == 9 {
            for _ in 0..10 {
                let (len, from) = client.recv_from(&mut buf).expect("an answer");
                assert_eq!(from, listen, "from the client address and port");
                let got: Vec<u8> = buf[..len].iter().rev().copied().collect();
                assert!(expected.iter().any(|e| e.as_bytes() == got.as_slice()));
                answered += 1;
            }
        }
    }
    // The server stops at 200 datagrams: pad with more.
    let mut pad = 0;
    while !server.is_finished() && pad < 200 {
        client.send_to(b"pad", listen).unwrap();
        pad += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let (seen, by_socket, mode) = server.join().unwrap();
    assert_eq!(answered, 151);
    assert!(
        seen.iter().all(|(_, from)| *from
            == SocketAddr::from((lab.outer_ip, client.local_addr().unwrap().port()))),
        "sources read from the frames"
    );
    let requests: Vec<&[u8]> = seen
        .iter()
        .map(|(b, _)| b.as_slice())
        .filter(|b| b.starts_with(b"request"))
        .collect();
    assert_eq!(requests.len(), 150, "every request came through AF_XDP");
    assert_eq!(by_socket, 0, "none took the kernel's path ({mode:?} mode)");
}

#[test]
fn other_ports_take_the_kernel_path_and_the_program_leaves_with_the_path() {
    let lab = lab();
    let listen = SocketAddr::from((lab.inner_ip, 7101));
    let other = SocketAddr::from((lab.inner_ip, 7102));
    let settings = XdpSettings {
        interface: Some(lab.inner.clone()),
        mode: Some(AttachMode::Generic),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let server = lab
        .inside(move || {
            let path = XdpPath::attach(listen, &settings).expect("attaches");
            let mut port = XdpPort::open(&path, 0).expect("AF_XDP socket");
            let echo = UdpSocket::bind(other).unwrap();
            echo.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            ready_tx.send(path.mode()).unwrap();
            let mut buf = [0u8; 64];
            let (len, from) = echo.recv_from(&mut buf).expect("the other port's datagram");
            echo.send_to(&buf[..len], from).unwrap();
            let mut batch = RecvBatch::new();
            let through_xdp = port.recv_into(&mut batch);
            done_rx.recv().unwrap();
            drop(port);
            drop(path);
            through_xdp
        })
        .unwrap();
    assert_eq!(ready_rx.recv().unwrap(), AttachMode::Generic);
    assert!(lab.xdp_attached(), "the program is on the interface");
    let client = UdpSocket::bind((lab.outer_ip, 0)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(b"kernel", other).unwrap();
    let mut buf = [0u8; 64];
    let (len, _) = client
        .recv_from(&mut buf)
        .expect("echoed by the kernel's socket");
    assert_eq!(&buf[..len], b"kernel");
    done_tx.send(()).unwrap();
    assert_eq!(
        server.join().unwrap(),
        0,
        "nothing for another port reached AF_XDP"
    );
    assert!(
        !lab.xdp_attached(),
        "dropping the path detached the program"
    );
}

#[test]
fn an_answer_to_an_address_never_seen_goes_through_the_client_socket() {
    let lab = lab();
    let listen = SocketAddr::from((lab.inner_ip, 7103));
    let client = UdpSocket::bind((lab.outer_ip, 0)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = client.local_addr().unwrap();
    let server = lab
        .inside(move || {
            let socket = UdpSocket::bind(listen).unwrap();
            let path = XdpPath::attach(
                listen,
                &XdpSettings {
                    interface: None,
                    mode: None,
                },
            )
            .expect("attaches");
            let mut port = XdpPort::open(&path, 0).expect("AF_XDP socket");
            let mut send = SendBatch::new();
            assert!(send.push(to, b"unprompted"));
            let sent = port.flush(&mut send, &socket).unwrap();
            (sent, port.sent_frames)
        })
        .unwrap();
    let (sent, frames) = server.join().unwrap();
    assert_eq!((sent, frames), (1, 0), "sent, not as a frame");
    let mut buf = [0u8; 64];
    let (len, from) = client.recv_from(&mut buf).expect("the answer");
    assert_eq!((&buf[..len], from), (&b"unprompted"[..], listen));
}

#[test]
fn a_missing_interface_or_address_is_a_typed_error() {
    let none = XdpPath::attach(
        SocketAddr::from(([10, 254, 254, 254], 7000)),
        &XdpSettings {
            interface: None,
            mode: None,
        },
    )
    .unwrap_err();
    assert!(matches!(none, XdpError::NoInterfaceFor(_)), "{none}");
    let named = XdpPath::attach(
        SocketAddr::from(([127, 0, 0, 1], 7000)),
        &XdpSettings {
            interface: Some("no-such-if0".into()),
            mode: None,
        },
    )
    .unwrap_err();
    assert!(named.to_string().contains("no-such-if0"), "{named}");
}

/// Sets IPv4 options on `socket`'s datagrams: four bytes, three no-ops and
/// the end of the list, so each header is 24 bytes long.
fn with_ip_options(socket: &UdpSocket) {
    let options = [1u8, 1, 1, 0];
    // SAFETY: setsockopt reads `options.len()` bytes from `options`.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            options.as_ptr().cast(),
            options.len() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
}

#[test]
fn what_the_program_leaves_to_the_kernel_still_reaches_the_client_port() {
    let lab = lab();
    let inner_v6: std::net::Ipv6Addr = format!("fd00:213::{:x}:2", lab.inner_ip.octets()[2])
        .parse()
        .unwrap();
    let outer_v6: std::net::Ipv6Addr = format!("fd00:213::{:x}:1", lab.inner_ip.octets()[2])
        .parse()
        .unwrap();
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "-n",
        &lab.ns,
        "addr",
        "add",
        &format!("{inner_v6}/64"),
        "dev",
        &lab.inner,
        "nodad",
    ]);
    ip(&[
        "addr",
        "add",
        &format!("{outer_v6}/64"),
        "dev",
        &lab.outer,
        "nodad",
    ]);
    // The client port on every address, IPv4 and IPv6 (one dual-stack
    // socket): the program then matches on the port alone.
    let listen = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 7104));
    let settings = XdpSettings {
        interface: Some(lab.inner.clone()),
        mode: None,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = lab
        .inside(move || {
            let socket = UdpSocket::bind(listen).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let path = XdpPath::attach(listen, &settings).expect("attaches");
            let mut port = XdpPort::open(&path, 0).expect("AF_XDP socket");
            ready_tx.send(()).unwrap();
            let mut batch = RecvBatch::new();
            let (mut by_port, mut by_socket) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(5);
            while by_port.len() + by_socket.len() < 3 && Instant::now() < deadline {
                for i in 0..port.recv_into(&mut batch) {
                    by_port.push(batch.get(i).unwrap().0.to_vec());
                }
                let mut buf = [0u8; 64];
                if let Ok((len, _)) = socket.recv_from(&mut buf) {
                    by_socket.push(buf[..len].to_vec());
                }
            }
            (by_port, by_socket)
        })
        .unwrap();
    ready_rx.recv().unwrap();
    let to_v4 = SocketAddr::from((lab.inner_ip, 7104));
    let to_v6 = SocketAddr::from((inner_v6, 7104));
    let plain = UdpSocket::bind((lab.outer_ip, 0)).unwrap();
    plain.send_to(b"plain", to_v4).unwrap();
    let optioned = UdpSocket::bind((lab.outer_ip, 0)).unwrap();
    with_ip_options(&optioned);
    optioned.send_to(b"options", to_v4).unwrap();
    let six = UdpSocket::bind((outer_v6, 0)).unwrap();
    six.send_to(b"ipv6", to_v6).unwrap();
    let (by_port, by_socket) = server.join().unwrap();
    assert_eq!(
        by_port,
        vec![b"plain".to_vec()],
        "plain IPv4 through AF_XDP"
    );
    let mut by_socket = by_socket;
    by_socket.sort();
    assert_eq!(
        by_socket,
        vec![b"ipv6".to_vec(), b"options".to_vec()],
        "IP options and IPv6 through the kernel to the client socket"
    );
}
