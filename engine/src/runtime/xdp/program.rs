//! The XDP program that hands device datagrams to the workers' AF_XDP
//! sockets, and the kernel objects around it: the `XSKMAP` from receive
//! queue to socket, the program itself, and the link that attaches it to
//! the interface (detached when the link's descriptor closes, so a stopped
//! or killed appliance leaves nothing on the interface).
//!
//! The program is 24 eBPF instructions (26 with the address check),
//! written out here as the steering module writes its classic-BPF
//! programs: it redirects a frame to the
//! socket of the queue it arrived on if it is an unfragmented IPv4 UDP
//! datagram without IP options to the client port (and address, when the
//! port listens on one), and passes everything else to the kernel: ARP,
//! IPv6, ICMP, other ports, and any queue without a socket
//! (`bpf_redirect_map`'s fallback action). A library such as libxdp would
//! load a generic dispatcher and need C; this program is small enough to
//! read in full.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How the program is attached (`[io] xdp_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`): before the kernel builds a
    /// socket buffer. Needs driver support (most 10G+ NICs, veth).
    Native,
    /// In the kernel's generic receive path (`XDP_FLAGS_SKB_MODE`): every
    /// interface, after a socket buffer was built.
    Generic,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Native => 1 << 2,
            AttachMode::Generic => 1 << 1,
        }
    }

    /// Its name in the configuration and the logs.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

/// Why the XDP path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("interface {name:?}: {source}")]
    Interface { name: String, source: io::Error },
    #[error("no interface holds {0} (name one with [io] xdp_interface)")]
    NoInterfaceFor(Ipv4Addr),
    #[error("creating the XSKMAP: {0}")]
    MapCreate(io::Error),
    #[error("the kernel refused the XDP program: {source}{}", log_tail(.log))]
    ProgramLoad { source: io::Error, log: String },
    #[error("attaching the XDP program in {} mode: {source}{}", .mode.name(), attach_hint(*.mode, .source))]
    Attach { mode: AttachMode, source: io::Error },
    #[error("AF_XDP socket for queue {queue}: {step}: {source}")]
    Socket {
        queue: u32,
        step: &'static str,
        source: io::Error,
    },
}

/// What to do about a refused attach.
fn attach_hint(mode: AttachMode, source: &io::Error) -> &'static str {
    match (mode, source.raw_os_error()) {
        (_, Some(libc::EBUSY)) => {
            " (the interface already has an XDP program: another appliance or tool owns it)"
        }
        (AttachMode::Native, Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
            " (the driver has no native XDP, as on loopback; [io] xdp_mode = \"generic\" forces the generic hook where no local sender uses UDP GSO: docs/operations.md)"
        }
        (_, Some(libc::EPERM)) => " (needs CAP_NET_ADMIN and CAP_BPF)",
        _ => "",
    }
}

fn log_tail(log: &str) -> String {
    let log = log.trim_end_matches('\0').trim();
    if log.is_empty() {
        String::new()
    } else {
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        format!(
            " (verifier: {})",
            tail.into_iter().rev().collect::<Vec<_>>().join("; ")
        )
    }
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes (class | size/op | source), linux/bpf_common.h and linux/bpf.h.
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const AND64_K: u8 = 0x57;
const JGT_X: u8 = 0x2d;
/// 32-bit compare with an immediate (`BPF_JMP32 | BPF_JNE | BPF_K`): the
/// immediate is not sign-extended against a 64-bit register.
const JNE32_K: u8 = 0x56;
const LD_IMM64: u8 = 0x18;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const PSEUDO_MAP_FD: u8 = 1;
const HELPER_REDIRECT_MAP: i32 = 51;
/// `XDP_PASS`: the kernel's own path.
pub const XDP_PASS: i32 = 2;

/// What the program lets through to the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// The client port.
    pub port: u16,
    /// The client address, unless the port listens on every address.
    pub address: Option<Ipv4Addr>,
}

/// The program for `filter`, redirecting through the map `map_fd`.
pub fn instructions(map_fd: RawFd, filter: Filter) -> Vec<Insn> {
    // Loads of network-order fields read little-endian: compare with the
    // bytes swapped.
    let port = i32::from(filter.port.swap_bytes());
    let mut body = vec![
        insn(LDX_W, 2, 1, 0, 0),           // r2 = ctx->data
        insn(LDX_W, 3, 1, 4, 0),           // r3 = ctx->data_end
        insn(MOV64_X, 4, 2, 0, 0),         // r4 = r2
        insn(ADD64_K, 4, 0, 0, 42),        // r4 += eth + ip + udp
        insn(JGT_X, 4, 3, PASS, 0),        // too short: pass
        insn(LDX_H, 5, 2, 12, 0),          // ethertype
        insn(JNE32_K, 5, 0, PASS, 0x0008), // not IPv4 (0x0800)
        insn(LDX_B, 5, 2, 14, 0),          // version, header length
        insn(JNE32_K, 5, 0, PASS, 0x45),   // options: pass
        insn(LDX_B, 5, 2, 23, 0),          // protocol
        insn(JNE32_K, 5, 0, PASS, 17),     // not UDP
        insn(LDX_H, 5, 2, 20, 0),          // flags, fragment offset
        insn(AND64_K, 5, 0, 0, 0xff3f),    // MF and offset (swapped)
        insn(JNE32_K, 5, 0, PASS, 0),      // a fragment
        insn(LDX_H, 5, 2, 36, 0),          // UDP destination port
        insn(JNE32_K, 5, 0, PASS, port),   // not the client port
    ];
    if let Some(address) = filter.address {
        // The address's octets as a little-endian load sees them.
        let address = i32::from_le_bytes(address.octets());
        body.push(insn(LDX_W, 5, 2, 30, 0)); // IPv4 destination
        body.push(insn(JNE32_K, 5, 0, PASS, address));
    }
    body.extend([
        insn(LDX_W, 2, 1, 16, 0), // r2 = ctx->rx_queue_index
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_K, 3, 0, 0, XDP_PASS), // no socket on this queue: pass
        insn(CALL, 0, 0, 0, HELPER_REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
        // pass:
        insn(MOV64_K, 0, 0, 0, XDP_PASS),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    // Every jump marked PASS goes to the last two instructions.
    let pass_at = body.len() - 2;
    for (i, ins) in body.iter_mut().enumerate() {
        if ins.off == PASS && matches!(ins.code, JGT_X | JNE32_K) {
            ins.off = i16::try_from(pass_at - i - 1).unwrap_or(i16::MAX);
        }
    }
    body
}

/// A placeholder jump offset, resolved to the pass label.
const PASS: i16 = -1;

// bpf(2) commands, map and program types, attach type (linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// `bpf(cmd, attr, size)`, returning the descriptor or value it gives.
///
/// # Safety
/// `attr` must be the `bpf_attr` layout `cmd` expects, and any pointers in
/// it valid for the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: the caller's; the kernel reads `size_of::<T>()` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *const T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned `fd`, a new descriptor this process
    // owns and nothing else holds.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The map from receive queue to AF_XDP socket.
#[derive(Debug)]
pub struct XskMap {
    fd: OwnedFd,
    entries: u32,
}

impl XskMap {
    /// A map for queues `0..entries`.
    pub fn create(entries: u32) -> Result<XskMap, XdpError> {
        #[repr(C)]
        struct MapCreate {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
            inner_map_fd: u32,
            numa_node: u32,
            map_name: [u8; 16],
        }
        let mut map_name = [0u8; 16];
        map_name[..8].copy_from_slice(b"presence");
        let attr = MapCreate {
            map_type: BPF_MAP_TYPE_XSKMAP,
            key_size: 4,
            value_size: 4,
            max_entries: entries.max(1),
            map_flags: 0,
            inner_map_fd: 0,
            numa_node: 0,
            map_name,
        };
        // SAFETY: `MapCreate` is the head of `bpf_attr` for BPF_MAP_CREATE.
        let fd = unsafe { bpf(BPF_MAP_CREATE, &attr) }
            .and_then(owned)
            .map_err(XdpError::MapCreate)?;
        Ok(XskMap {
            fd,
            entries: entries.max(1),
        })
    }

    /// Queues it has room for.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Frames received on `queue` go to `socket` from now on.
    pub fn insert(&self, queue: u32, socket: RawFd) -> io::Result<()> {
        #[repr(C)]
        struct Update {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let key = queue;
        let value = u32::try_from(socket).map_err(|_| io::Error::other("bad descriptor"))?;
        let attr = Update {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        // SAFETY: `Update` is `bpf_attr` for BPF_MAP_UPDATE_ELEM; `key` and
        // `value` live across the call.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &attr) }.map(drop)
    }
}

/// The program attached to an interface; detached when dropped.
#[derive(Debug)]
pub struct Attached {
    map: XskMap,
    _program: OwnedFd,
    _link: OwnedFd,
    mode: AttachMode,
    ifindex: u32,
}

impl Attached {
    /// Loads the program for `filter` and attaches it to `ifindex` in
    /// `mode`. Another program already on the interface is left alone: the
    /// kernel then refuses (`EBUSY`).
    pub fn attach(
        ifindex: u32,
        map: XskMap,
        filter: Filter,
        mode: AttachMode,
    ) -> Result<Attached, XdpError> {
        let program = load(&instructions(map.fd.as_raw_fd(), filter))?;
        let link =
            link(&program, ifindex, mode).map_err(|source| XdpError::Attach { mode, source })?;
        Ok(Attached {
            map,
            _program: program,
            _link: link,
            mode,
            ifindex,
        })
    }

    /// The map the workers' sockets go into.
    pub fn map(&self) -> &XskMap {
        &self.map
    }

    /// The mode the kernel took.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The interface it is attached to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

fn load(program: &[Insn]) -> Result<OwnedFd, XdpError> {
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    let license = b"Dual MIT/GPL\0";
    let mut prog_name = [0u8; 16];
    prog_name[..12].copy_from_slice(b"presence_xsk");
    let attempt = |log: Option<&mut Vec<u8>>| {
        let (log_level, log_size, log_buf) = match log {
            Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
            None => (0, 0, 0),
        };
        let attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: program.len() as u32,
            insns: program.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size,
            log_buf,
            kern_version: 0,
            prog_flags: 0,
            prog_name,
            prog_ifindex: 0,
            expected_attach_type: BPF_XDP,
        };
        // SAFETY: `ProgLoad` is the head of `bpf_attr` for BPF_PROG_LOAD;
        // the instructions, license and log buffer live across the call.
        unsafe { bpf(BPF_PROG_LOAD, &attr) }.and_then(owned)
    };
    attempt(None).or_else(|source| {
        // Load again with the verifier's log, to say why.
        let mut log = vec![0u8; 64 * 1024];
        match attempt(Some(&mut log)) {
            Ok(fd) => Ok(fd),
            Err(_) => Err(XdpError::ProgramLoad {
                source,
                log: String::from_utf8_lossy(&log).into_owned(),
            }),
        }
    })
}

fn link(program: &OwnedFd, ifindex: u32, mode: AttachMode) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
    }
    let attr = LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: mode.flags(),
    };
    // SAFETY: `LinkCreate` is the head of `bpf_attr` for BPF_LINK_CREATE.
    unsafe { bpf(BPF_LINK_CREATE, &attr) }.and_then(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_on_the_pass_label_inside_the_program() {
        for address in [None, Some(Ipv4Addr::new(192, 168, 1, 200))] {
            let program = instructions(
                3,
                Filter {
                    port: 7000,
                    address,
                },
            );
            // As long as the docs say.
            assert_eq!(program.len(), if address.is_some() { 26 } else { 24 });
            let pass_at = program.len() - 2;
            assert_eq!(program[pass_at], insn(MOV64_K, 0, 0, 0, XDP_PASS));
            assert_eq!(program.last(), Some(&insn(EXIT, 0, 0, 0, 0)));
            let jumps: Vec<usize> = (0..program.len())
                .filter(|&i| matches!(program[i].code, JGT_X | JNE32_K))
                .collect();
            assert_eq!(jumps.len(), if address.is_some() { 7 } else { 6 });
            for i in jumps {
                let target = i as i64 + 1 + i64::from(program[i].off);
                assert_eq!(target, pass_at as i64, "jump at {i}");
            }
        }
    }

    #[test]
    fn the_port_and_address_are_compared_as_the_frame_holds_them() {
        let program = instructions(
            3,
            Filter {
                port: 0x1b58, // 7000
                address: Some(Ipv4Addr::new(10, 1, 2, 200)),
            },
        );
        // A little-endian load of the port's bytes [0x1b, 0x58].
        assert!(program.iter().any(|i| i.code == JNE32_K && i.imm == 0x581b));
        let address = program.iter().rfind(|i| i.code == JNE32_K).unwrap().imm;
        assert_eq!(address.to_le_bytes(), [10, 1, 2, 200]);
    }
}
