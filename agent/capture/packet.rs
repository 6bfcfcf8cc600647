//! One captured frame to one TCP segment: Ethernet (loopback carries a zeroed Ethernet header on
//! Linux), IPv4 or IPv6, TCP. Checksums are not verified: on `lo` and veth the kernel leaves them
//! to offload, so captured checksums are routinely "wrong" on perfectly good packets.

use std::net::SocketAddr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// The parts of a TCP segment reassembly needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: Vec<u8>,
}

/// Why a frame carried no usable TCP segment (counted, never silent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not IPv4/IPv6 over Ethernet, or not TCP.
    NotTcp,
    /// A fragment of a fragmented IP packet (not reassembled; rare on pod interfaces).
    Fragment,
    /// Headers cut short or invalid.
    Malformed,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotTcp => "not_tcp",
            Skip::Fragment => "ip_fragment",
            Skip::Malformed => "malformed",
        }
    }
}

/// Parses an Ethernet frame.
pub fn parse(frame: &[u8], ts_ns: i64) -> Result<Segment, Skip> {
    let packet = SlicedPacket::from_ethernet(frame).map_err(|_| Skip::Malformed)?;
    let (src_ip, dst_ip, fragmented) = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().fragmented,
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().fragmented,
        ),
        _ => return Err(Skip::NotTcp),
    };
    if fragmented {
        return Err(Skip::Fragment);
    }
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return Err(Skip::NotTcp);
    };
    Ok(Segment {
        ts_ns,
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload().to_vec(),
    })
}

/// Builds an Ethernet/IPv4/TCP frame: for tests, here and in the reassembly and BPF tests.
#[cfg(test)]
pub(crate) mod build {
    use etherparse::PacketBuilder;

    pub struct Tcp<'a> {
        pub src: ([u8; 4], u16),
        pub dst: ([u8; 4], u16),
        pub seq: u32,
        pub ack: Option<u32>,
        pub flags: &'a str,
        pub payload: &'a [u8],
    }

    pub fn frame(t: Tcp<'_>) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4(t.src.0, t.dst.0, 64)
            .tcp(t.src.1, t.dst.1, t.seq, 65535);
        if let Some(ack) = t.ack {
            b = b.ack(ack);
        }
        for flag in t.flags.chars() {
            b = match flag {
                'S' => b.syn(),
                'F' => b.fin(),
                'R' => b.rst(),
                'P' => b.psh(),
                other => panic!("unknown flag {other}"),
            };
        }
        let mut out = Vec::with_capacity(b.size(t.payload.len()));
        b.write(&mut out, t.payload).unwrap();
        out
    }

    /// An Ethernet/IPv4/UDP frame carrying `x`: traffic every capture path must skip.
    pub fn udp_frame() -> Vec<u8> {
        let b = PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 1)
            .udp(1, 2);
        let mut out = Vec::with_capacity(b.size(1));
        b.write(&mut out, b"x").unwrap();
        out
    }

    pub fn frame_v6(
        src: ([u8; 16], u16),
        dst: ([u8; 16], u16),
        seq: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv6(src.0, dst.0, 64)
            .tcp(src.1, dst.1, seq, 65535);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).unwrap();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn ipv4_and_ipv6_tcp_segments_parse() {
        let f = frame(Tcp {
            src: ([10, 0, 0, 1], 40000),
            dst: ([10, 0, 0, 2], 80),
            seq: 7,
            ack: Some(9),
            flags: "SP",
            payload: b"GET / HTTP/1.1\r\n",
        });
        let s = parse(&f, 5).unwrap();
        assert_eq!(s.src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(s.dst, "10.0.0.2:80".parse().unwrap());
        assert_eq!(
            (s.seq, s.ack, s.syn, s.fin, s.rst),
            (7, Some(9), true, false, false)
        );
        assert_eq!(s.payload, b"GET / HTTP/1.1\r\n");
        assert_eq!(s.ts_ns, 5);

        let mut one = [0u8; 16];
        one[15] = 1;
        let s = parse(&frame_v6((one, 1), (one, 2), 3, b"x"), 0).unwrap();
        assert_eq!(s.dst, "[::1]:2".parse().unwrap());
        assert_eq!(s.payload, b"x");
    }

    #[test]
    fn trailing_ethernet_padding_is_not_payload() {
        let mut f = frame(Tcp {
            src: ([10, 0, 0, 1], 1),
            dst: ([10, 0, 0, 2], 2),
            seq: 0,
            ack: None,
            flags: "",
            payload: b"",
        });
        f.extend_from_slice(&[0; 6]); // minimum frame padding
        assert_eq!(parse(&f, 0).unwrap().payload, b"");
    }

    #[test]
    fn garbage_and_non_tcp_are_skipped_with_a_reason() {
        assert_eq!(parse(b"\x00\x01", 0), Err(Skip::Malformed));
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert!(parse(&arp, 0).is_err());
        let udp = udp_frame();
        assert_eq!(parse(&udp, 0), Err(Skip::NotTcp));
    }
}
