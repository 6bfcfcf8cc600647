//! The packet socket: `AF_PACKET`/`SOCK_RAW` in the network namespace of the thread that opens
//! it, with the classic BPF filter of [`super::bpf`] attached before it is bound (so no unfiltered
//! frame is ever queued), kernel timestamps (`SO_TIMESTAMPNS`) and a receive timeout so the
//! capture thread can notice that it should stop.
//!
//! Why not a crate: the `pcap` crate needs libpcap at build and run time; the `afpacket`-style
//! crates are unmaintained. `recvmsg` per frame (not a TPACKET mmap ring) is plenty for a
//! troubleshooting fallback; the kernel's queue is bounded by the socket receive buffer and what
//! it drops is reported through `PACKET_STATISTICS`.
//!
//! On loopback, the kernel hands packet sockets every frame twice, once outgoing and once
//! incoming: the outgoing copy is skipped (as libpcap does). On Ethernet-like interfaces (eth0,
//! veth) both directions appear once each.

use std::collections::BTreeMap;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::bpf;

const ETH_P_ALL: u16 = 0x0003;
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;
const PACKET_OUTGOING: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot open a packet socket: {source}{hint}")]
    Open {
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot set up the packet socket ({what}): {source}")]
    Setup {
        what: &'static str,
        source: io::Error,
    },
    #[error("no interface {name:?} in the network namespace (it has: {available})")]
    NoInterface { name: String, available: String },
    #[error("{0}")]
    Filter(String),
}

/// The interfaces of the calling thread's network namespace, by index.
pub fn interfaces() -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.insert((*p).if_index, name);
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

/// Which interfaces to listen on: `wanted` by name (each must exist), or by default `lo` and
/// `eth0` (whichever exist).
pub fn select_interfaces(wanted: &[String]) -> Result<BTreeMap<u32, String>, SocketError> {
    let all = interfaces();
    let available = || all.values().cloned().collect::<Vec<_>>().join(", ");
    if wanted.is_empty() {
        let chosen: BTreeMap<u32, String> = all
            .iter()
            .filter(|(_, n)| *n == "lo" || *n == "eth0")
            .map(|(i, n)| (*i, n.clone()))
            .collect();
        if chosen.is_empty() {
            return Err(SocketError::NoInterface {
                name: "lo".into(),
                available: available(),
            });
        }
        return Ok(chosen);
    }
    let mut chosen = BTreeMap::new();
    for name in wanted {
        match all.iter().find(|(_, n)| *n == name) {
            Some((i, n)) => {
                chosen.insert(*i, n.clone());
            }
            None => {
                return Err(SocketError::NoInterface {
                    name: name.clone(),
                    available: available(),
                })
            }
        }
    }
    Ok(chosen)
}

/// One frame as captured.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Kernel receive time, nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    pub ifindex: u32,
    pub data: Vec<u8>,
    /// Length on the wire (larger than `data` when the frame did not fit the buffer).
    pub orig_len: usize,
}

/// What one receive produced.
#[derive(Debug)]
pub enum Received {
    Frame(Frame),
    /// A frame not for us: another interface, the outgoing copy on loopback, a link type other
    /// than Ethernet (counted by reason).
    Skipped(&'static str),
    /// Nothing within the receive timeout.
    Timeout,
}

/// Kernel counters of the socket (`PACKET_STATISTICS`), cumulative.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelStats {
    /// Frames that passed the filter.
    pub packets: u64,
    /// Frames the kernel dropped because meshtap's receive queue was full.
    pub drops: u64,
}

pub struct PacketSocket {
    fd: OwnedFd,
    ifindexes: BTreeMap<u32, String>,
    buf: Vec<u8>,
    stats: KernelStats,
}

fn setsockopt<T>(
    fd: &OwnedFd,
    level: i32,
    name: i32,
    value: &T,
    what: &'static str,
) -> Result<(), SocketError> {
    // SAFETY: value points to a live T of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(SocketError::Setup {
            what,
            source: io::Error::last_os_error(),
        })
    }
}

impl PacketSocket {
    /// Opens a socket in the calling thread's network namespace for TCP frames to or from
    /// `ports` (all TCP when empty) on `ifindexes`.
    pub fn open(
        ifindexes: BTreeMap<u32, String>,
        ports: &[u16],
        rcvbuf: usize,
    ) -> Result<PacketSocket, SocketError> {
        let program = bpf::tcp_ports(ports).map_err(SocketError::Filter)?;
        // Protocol 0: nothing is queued until bind(), which happens after the filter is attached.
        // SAFETY: plain socket(2) call.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let source = io::Error::last_os_error();
            let hint = if source.raw_os_error() == Some(libc::EPERM) {
                " (packet sockets need CAP_NET_RAW: run as root or apply deploy/overlays/capture)"
            } else {
                ""
            };
            return Err(SocketError::Open { source, hint });
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut filter: Vec<libc::sock_filter> = program
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let fprog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        setsockopt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog,
            "attach BPF filter",
        )?;
        let size = rcvbuf as libc::c_int;
        // SO_RCVBUFFORCE passes net.core.rmem_max (needs CAP_NET_ADMIN); else what the sysctl allows.
        if setsockopt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size,
            "receive buffer",
        )
        .is_err()
        {
            setsockopt(
                &fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size,
                "receive buffer",
            )?;
        }
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        setsockopt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout,
            "receive timeout",
        )?;
        let one: libc::c_int = 1;
        setsockopt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &one,
            "timestamps",
        )?;

        // One interface: bind to it. Several: bind to all and keep the chosen ones.
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = if ifindexes.len() == 1 {
            *ifindexes.keys().next().expect("one") as i32
        } else {
            0
        };
        // SAFETY: addr is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(SocketError::Setup {
                what: "bind",
                source: io::Error::last_os_error(),
            });
        }
        Ok(PacketSocket {
            fd,
            ifindexes,
            buf: vec![0; bpf::SNAPLEN as usize],
            stats: KernelStats::default(),
        })
    }

    /// Receives one frame, waiting at most the receive timeout.
    pub fn recv(&mut self) -> io::Result<Received> {
        // SAFETY: all-zero is valid for these C structs.
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        let mut control = [0u64; 16]; // aligned room for a timespec control message
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: self.buf.len(),
        };
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = &mut addr as *mut libc::sockaddr_ll as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of::<[u64; 16]>() as _;
        // SAFETY: msg points at live buffers sized as declared; MSG_TRUNC makes the return value
        // the frame's real length.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(Received::Timeout),
                _ => Err(e),
            };
        }
        let orig_len = n as usize;
        let ifindex = addr.sll_ifindex as u32;
        if !self.ifindexes.contains_key(&ifindex) {
            return Ok(Received::Skipped("other_interface"));
        }
        match addr.sll_hatype {
            ARPHRD_LOOPBACK if addr.sll_pkttype == PACKET_OUTGOING => {
                return Ok(Received::Skipped("loopback_outgoing_copy"));
            }
            ARPHRD_LOOPBACK | ARPHRD_ETHER => {}
            _ => return Ok(Received::Skipped("not_ethernet")),
        }
        let mut ts_ns = None;
        // SAFETY: walking the control messages recvmsg filled in, with the libc macros.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let ts: libc::timespec =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::timespec);
                    ts_ns = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let ts_ns = ts_ns.unwrap_or_else(now_ns);
        let len = orig_len.min(self.buf.len());
        Ok(Received::Frame(Frame {
            ts_ns,
            ifindex,
            data: self.buf[..len].to_vec(),
            orig_len,
        }))
    }

    /// The kernel's counters so far (the kernel resets them on each read; they are summed here).
    pub fn kernel_stats(&mut self) -> KernelStats {
        // SAFETY: tpacket_stats is plain data; the kernel fills at most len bytes.
        let mut st: libc::tpacket_stats = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
                &mut len,
            )
        };
        if rc == 0 {
            self.stats.packets += st.tp_packets as u64;
            self.stats.drops += st.tp_drops as u64;
        }
        self.stats
    }
}

/// The wall clock in nanoseconds since the Unix epoch (the clock of kernel packet timestamps).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
