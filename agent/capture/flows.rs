//! The connection table: segments to connections (created on first sight, oriented client to
//! server), reassembly events to the HTTP parser, finished exchanges out. Bounded by a number of
//! connections and a total of buffered bytes; past either, the least recently active connection
//! is ended early (its exchanges emitted, marked incomplete) and counted.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::exchange::Conn;
use super::http::{self, Done, Protocol};
use super::packet::Segment;
use super::reassembly::{self, Dir, EndReason, Event};

/// Limits of the table.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub tcp: reassembly::Limits,
    pub http: http::Limits,
    /// Connections tracked at once.
    pub max_connections: usize,
    /// Bytes buffered across all connections (out-of-order segments, heads, pending bodies).
    pub max_buffered_bytes: usize,
    /// A connection without packets for this long (packet time) is ended.
    pub idle_timeout_ns: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tcp: reassembly::Limits::default(),
            http: http::Limits::default(),
            max_connections: 10_000,
            max_buffered_bytes: 256 << 20,
            // Keep-alive pools idle for minutes; Envoy's default idle timeout is one hour.
            idle_timeout_ns: 300_000_000_000,
        }
    }
}

/// Counters of the table.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub connections: u64,
    pub evicted_connections: u64,
    pub expired_connections: u64,
    pub retransmitted_bytes: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    pub resync_skipped_bytes: u64,
    pub bad_heads: u64,
    pub interim_responses: u64,
    pub http2_connections: u64,
    pub tls_connections: u64,
    pub upgraded_connections: u64,
    /// Segments of connections that had already closed (late retransmissions, reordering).
    pub after_close_segments: u64,
}

/// A finished exchange and its connection.
#[derive(Debug)]
pub struct Finished {
    pub done: Done,
    pub conn: Conn,
}

/// A connection found to carry something meshtap does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub protocol: Protocol,
}

struct Flow {
    tcp: reassembly::Connection,
    http: http::Connection,
    ordinal: u64,
    buffered: usize,
}

type Key = (SocketAddr, SocketAddr);

fn key(a: SocketAddr, b: SocketAddr) -> Key {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Which side of a new connection is the client: the SYN tells; else the first payload (a
/// response line or a request line); else the configured server ports; else the lower port is
/// taken for the server (clients use ephemeral ports).
fn orient(seg: &Segment, server_ports: &[u16]) -> (SocketAddr, SocketAddr) {
    let forward = (seg.src, seg.dst);
    let backward = (seg.dst, seg.src);
    if seg.syn {
        return if seg.ack.is_none() { forward } else { backward };
    }
    if seg.payload.starts_with(b"HTTP/1.") {
        return backward;
    }
    if seg.payload.first().is_some_and(u8::is_ascii_uppercase)
        && seg.payload.iter().take(10).any(|&b| b == b' ')
    {
        return forward;
    }
    if server_ports.contains(&seg.dst.port()) {
        forward
    } else if server_ports.contains(&seg.src.port()) || seg.src.port() < seg.dst.port() {
        backward
    } else {
        forward
    }
}

pub struct Flows {
    limits: Limits,
    server_ports: Vec<u16>,
    flows: HashMap<Key, Flow>,
    buffered: usize,
    next_ordinal: u64,
    stats: Stats,
    events: Vec<Event>,
    dones: Vec<Done>,
    /// Connections that closed (FIN both ways or RST), oldest first, with when: their late
    /// segments are not mistaken for a new connection seen mid-stream.
    closed: HashMap<Key, i64>,
    closed_order: std::collections::VecDeque<(Key, i64)>,
}

/// Closed connections remembered (TIME_WAIT lasts 60 s on Linux).
const CLOSED_REMEMBERED: usize = 16_384;
const CLOSED_FOR_NS: i64 = 60_000_000_000;

impl Flows {
    pub fn new(limits: Limits, server_ports: Vec<u16>) -> Flows {
        Flows {
            limits,
            server_ports,
            flows: HashMap::new(),
            buffered: 0,
            next_ordinal: 0,
            stats: Stats::default(),
            events: Vec::new(),
            dones: Vec::new(),
            closed: HashMap::new(),
            closed_order: Default::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Adds a segment; finished exchanges and protocol detections are appended to the outputs.
    pub fn push(&mut self, seg: Segment, out: &mut Vec<Finished>, detected: &mut Vec<Detected>) {
        let k = key(seg.src, seg.dst);
        let ts = seg.ts_ns;
        if let Some(flow) = self.flows.get(&k) {
            // A new SYN on a known address pair after the old connection ended (or with another
            // ISN) is a new connection reusing the ports.
            let reused = seg.syn
                && seg.ack.is_none()
                && (flow.tcp.finished() || flow.tcp.client_isn.is_some_and(|isn| isn != seg.seq));
            if reused {
                self.close(k, ts, EndReason::Fin, out, detected);
            }
        }
        if !self.flows.contains_key(&k) {
            if self.closed.contains_key(&k) {
                if seg.syn {
                    self.closed.remove(&k);
                } else {
                    self.stats.after_close_segments += 1;
                    return;
                }
            }
            if seg.rst || (seg.payload.is_empty() && !seg.syn && !seg.fin) {
                return; // stray resets and bare ACKs of connections we do not track
            }
            while self.flows.len() >= self.limits.max_connections {
                if !self.evict_oldest(None, ts, out, detected) {
                    break;
                }
            }
            let (client, server) = orient(&seg, &self.server_ports);
            self.stats.connections += 1;
            let ordinal = self.next_ordinal;
            self.next_ordinal += 1;
            self.flows.insert(
                k,
                Flow {
                    tcp: reassembly::Connection::new(client, server, self.limits.tcp),
                    http: http::Connection::new(self.limits.http),
                    ordinal,
                    buffered: 0,
                },
            );
        }
        let mut events = std::mem::take(&mut self.events);
        let flow = self.flows.get_mut(&k).expect("inserted above");
        flow.tcp.push(seg, &mut events);
        self.deliver(k, &mut events, out, detected);
        self.events = events;
        if self.flows.get(&k).is_some_and(|f| f.tcp.finished()) {
            self.remove(k);
            self.remember_closed(k, ts);
        }
        while self.buffered > self.limits.max_buffered_bytes {
            if !self.evict_oldest(Some(k), ts, out, detected) {
                break;
            }
        }
    }

    /// Skips holes older than the gap timeout and ends idle connections (`now_ns`: packet time).
    pub fn tick(&mut self, now_ns: i64, out: &mut Vec<Finished>, detected: &mut Vec<Detected>) {
        let keys: Vec<Key> = self.flows.keys().copied().collect();
        for k in keys {
            let mut events = std::mem::take(&mut self.events);
            let idle = {
                let flow = self.flows.get_mut(&k).expect("listed");
                flow.tcp.tick(now_ns, &mut events);
                now_ns - flow.tcp.last_ts_ns > self.limits.idle_timeout_ns
            };
            self.deliver(k, &mut events, out, detected);
            self.events = events;
            if idle {
                self.stats.expired_connections += 1;
                self.close(k, now_ns, EndReason::Expired, out, detected);
            }
        }
    }

    /// Ends every connection (the capture stops).
    pub fn shutdown(&mut self, now_ns: i64, out: &mut Vec<Finished>, detected: &mut Vec<Detected>) {
        let mut keys: Vec<(u64, Key)> = self.flows.iter().map(|(k, f)| (f.ordinal, *k)).collect();
        keys.sort();
        for (_, k) in keys {
            self.close(k, now_ns, EndReason::Shutdown, out, detected);
        }
    }

    fn close(
        &mut self,
        k: Key,
        ts: i64,
        reason: EndReason,
        out: &mut Vec<Finished>,
        detected: &mut Vec<Detected>,
    ) {
        let mut events = std::mem::take(&mut self.events);
        if let Some(flow) = self.flows.get_mut(&k) {
            for dir in [Dir::Request, Dir::Response] {
                flow.tcp.end(dir, ts, reason, &mut events);
            }
        }
        self.deliver(k, &mut events, out, detected);
        self.events = events;
        self.remove(k);
    }

    /// Ends the least recently active connection other than `keep`; false when there is none.
    fn evict_oldest(
        &mut self,
        keep: Option<Key>,
        ts: i64,
        out: &mut Vec<Finished>,
        detected: &mut Vec<Detected>,
    ) -> bool {
        let oldest = self
            .flows
            .iter()
            .filter(|(k, _)| Some(**k) != keep)
            .min_by_key(|(_, f)| (f.tcp.last_ts_ns, f.ordinal))
            .map(|(k, _)| *k);
        let Some(k) = oldest else { return false };
        self.stats.evicted_connections += 1;
        tracing::warn!(
            connections = self.flows.len(),
            buffered_bytes = self.buffered,
            "Capture limits reached; ending the least recently active connection early."
        );
        self.close(k, ts, EndReason::Evicted, out, detected);
        true
    }

    fn remember_closed(&mut self, k: Key, ts: i64) {
        while let Some(&(old, at)) = self.closed_order.front() {
            if self.closed_order.len() < CLOSED_REMEMBERED && ts - at < CLOSED_FOR_NS {
                break;
            }
            self.closed_order.pop_front();
            if self.closed.get(&old) == Some(&at) {
                self.closed.remove(&old);
            }
        }
        self.closed.insert(k, ts);
        self.closed_order.push_back((k, ts));
    }

    fn remove(&mut self, k: Key) {
        if let Some(flow) = self.flows.remove(&k) {
            self.buffered -= flow.buffered;
            let tcp = flow.tcp.stats;
            self.stats.retransmitted_bytes += tcp.retransmitted_bytes;
            self.stats.gaps += tcp.gaps;
            self.stats.gap_bytes += tcp.gap_bytes;
            let h = flow.http.stats;
            self.stats.resync_skipped_bytes += h.resync_skipped_bytes;
            self.stats.bad_heads += h.bad_heads;
            self.stats.interim_responses += h.interim_responses;
            match flow.http.protocol() {
                Protocol::Http2 => self.stats.http2_connections += 1,
                Protocol::Tls => self.stats.tls_connections += 1,
                Protocol::Upgraded => self.stats.upgraded_connections += 1,
                Protocol::Http1 => {}
            }
        }
    }

    /// Runs reassembly events through the connection's HTTP parser.
    fn deliver(
        &mut self,
        k: Key,
        events: &mut Vec<Event>,
        out: &mut Vec<Finished>,
        detected: &mut Vec<Detected>,
    ) {
        let Some(flow) = self.flows.get_mut(&k) else {
            events.clear();
            return;
        };
        let mut dones = std::mem::take(&mut self.dones);
        for event in events.drain(..) {
            flow.http.handle(event, &mut dones);
        }
        if let Some(protocol) = flow.http.take_detected() {
            detected.push(Detected {
                client: flow.tcp.client,
                server: flow.tcp.server,
                protocol,
            });
        }
        let conn = Conn {
            client: flow.tcp.client,
            server: flow.tcp.server,
            anchor: flow.tcp.anchor(),
            ordinal: flow.ordinal,
        };
        out.extend(dones.drain(..).map(|done| Finished { done, conn }));
        self.dones = dones;
        let now = flow.tcp.buffered_bytes() + flow.http.buffered_bytes();
        self.buffered = self.buffered - flow.buffered + now;
        flow.buffered = now;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capture::reassembly::tests::seg;

    fn run(flows: &mut Flows, segs: Vec<Segment>) -> Vec<Finished> {
        let mut out = Vec::new();
        let mut detected = Vec::new();
        for s in segs {
            flows.push(s, &mut out, &mut detected);
        }
        out
    }

    #[test]
    fn a_whole_connection_yields_its_exchanges_and_is_forgotten() {
        let mut flows = Flows::new(Limits::default(), vec![]);
        let req = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let out = run(
            &mut flows,
            vec![
                seg(true, 100, "S", b"", 1),
                seg(false, 900, "S", b"", 2),
                seg(true, 101, "", req, 3),
                seg(false, 901, "", resp, 4),
                seg(true, 101 + req.len() as u32, "F", b"", 5),
                seg(false, 901 + resp.len() as u32, "F", b"", 6),
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].conn.anchor, 100);
        assert_eq!(
            out[0].conn.client.to_string(),
            crate::capture::reassembly::tests::C
        );
        assert!(flows.is_empty());
        assert_eq!(flows.buffered_bytes(), 0);
        assert_eq!(flows.stats().connections, 1);
        // A late retransmission of the response is not a new connection seen mid-stream.
        let late = run(&mut flows, vec![seg(false, 901, "", resp, 7)]);
        assert!(late.is_empty() && flows.is_empty());
        assert_eq!(flows.stats().after_close_segments, 1);
        // A new SYN on the same ports is a new connection.
        run(&mut flows, vec![seg(true, 5000, "S", b"", 8)]);
        assert_eq!(flows.stats().connections, 2);
    }

    #[test]
    fn a_connection_seen_mid_stream_is_oriented_by_its_payload() {
        let mut flows = Flows::new(Limits::default(), vec![]);
        // The first packet seen is a response: its sender is the server.
        let out = run(
            &mut flows,
            vec![
                seg(
                    false,
                    5,
                    "",
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                    1,
                ),
                seg(true, 7, "", b"GET /y HTTP/1.1\r\n\r\n", 2),
                seg(
                    false,
                    43,
                    "",
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                    3,
                ),
            ],
        );
        assert_eq!(out.len(), 2);
        assert!(out[0].done.request.is_none());
        assert_eq!(
            out[1].done.request.as_ref().unwrap().path.as_deref(),
            Some("/y")
        );
        assert_eq!(
            out[1].conn.server.to_string(),
            crate::capture::reassembly::tests::S
        );
    }

    #[test]
    fn the_memory_cap_evicts_the_least_recent_connection_and_counts_it() {
        let mut flows = Flows::new(
            Limits {
                max_buffered_bytes: 1000,
                ..Limits::default()
            },
            vec![],
        );
        let mut out = Vec::new();
        let mut detected = Vec::new();
        // Connection 1: a request whose body is still arriving (held in the record, 600 bytes).
        flows.push(seg(true, 1, "S", b"", 1), &mut out, &mut detected);
        let head = b"POST /big HTTP/1.1\r\ncontent-length: 5000\r\n\r\n";
        flows.push(seg(true, 2, "", head, 2), &mut out, &mut detected);
        flows.push(
            seg(true, 2 + head.len() as u32, "", &[b'a'; 600], 3),
            &mut out,
            &mut detected,
        );
        assert!(out.is_empty());
        // Connection 2 (other ports) pushes the total over the cap.
        let mut other = seg(true, 1, "S", b"", 4);
        other.src = "10.1.0.3:40001".parse().unwrap();
        flows.push(other.clone(), &mut out, &mut detected);
        let mut data = seg(true, 2, "", head, 5);
        data.src = other.src;
        flows.push(data.clone(), &mut out, &mut detected);
        data.seq = 2 + head.len() as u32;
        data.payload = vec![b'b'; 600];
        data.ts_ns = 6;
        flows.push(data, &mut out, &mut detected);
        assert_eq!(flows.stats().evicted_connections, 1);
        assert_eq!(out.len(), 1);
        let r = out[0].done.request.as_ref().unwrap();
        assert_eq!(r.body.len(), 600);
        assert!(r.body_truncated && !r.ended);
        assert!(
            out[0].done.warnings.iter().any(|w| w.contains("evicted")),
            "{:?}",
            out[0].done.warnings
        );
        assert_eq!(flows.len(), 1);
        assert!(flows.buffered_bytes() <= 1000);
    }

    #[test]
    fn idle_connections_expire_and_tls_is_reported() {
        let mut flows = Flows::new(Limits::default(), vec![8080]);
        let mut out = Vec::new();
        let mut detected = Vec::new();
        flows.push(
            seg(true, 1, "", b"\x16\x03\x01\x00\x10", 1),
            &mut out,
            &mut detected,
        );
        assert_eq!(detected.len(), 1);
        assert_eq!(detected[0].protocol, Protocol::Tls);
        flows.push(
            seg(true, 1, "", b"GET / HTTP/1.1\r\n\r\n", 2),
            &mut out,
            &mut detected,
        );
        // Different addresses: a second connection that will idle.
        let mut s = seg(true, 9, "", b"GET /idle HTTP/1.1\r\n\r\n", 3);
        s.src = "10.1.0.9:1234".parse().unwrap();
        flows.push(s, &mut out, &mut detected);
        flows.tick(
            3 + Limits::default().idle_timeout_ns + 1,
            &mut out,
            &mut detected,
        );
        assert!(flows.is_empty());
        assert_eq!(flows.stats().expired_connections, 2);
        assert_eq!(flows.stats().tls_connections, 1);
        assert_eq!(out.len(), 1, "the TLS connection yields nothing");
        assert!(out[0].done.warnings.iter().any(|w| w.contains("expired")));
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Segments of a whole connection carrying `req` and `resp`, cut at random, with true ACKs.
    fn connection(rng: &mut Rng, req: &[u8], resp: &[u8]) -> Vec<Segment> {
        let (cisn, sisn) = (u32::MAX - 7, 4_000_000_000u32); // the client's numbers wrap
        let mut v = vec![seg(true, cisn, "S", b"", 0)];
        let mut synack = seg(false, sisn, "S", b"", 0);
        synack.ack = Some(cisn.wrapping_add(1));
        v.push(synack);
        let mut cut = |bytes: &[u8], req: bool, isn: u32, ack: u32| {
            let mut out = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let n = 1 + rng.below(40);
                let end = (at + n).min(bytes.len());
                let mut s = seg(req, isn.wrapping_add(1 + at as u32), "", &bytes[at..end], 1);
                s.ack = Some(ack);
                out.push(s);
                at = end;
            }
            let mut fin = seg(req, isn.wrapping_add(1 + bytes.len() as u32), "F", b"", 2);
            fin.ack = Some(ack);
            out.push(fin);
            out
        };
        let req_end = cisn.wrapping_add(1 + req.len() as u32);
        v.extend(cut(req, true, cisn, sisn.wrapping_add(1)));
        v.extend(cut(resp, false, sisn, req_end));
        v
    }

    fn exchanges(segs: Vec<Segment>) -> Vec<String> {
        let mut flows = Flows::new(Limits::default(), vec![]);
        let mut out = Vec::new();
        let mut detected = Vec::new();
        for s in segs {
            flows.push(s, &mut out, &mut detected);
        }
        flows.tick(i64::MAX / 2, &mut out, &mut detected);
        flows.shutdown(i64::MAX / 2, &mut out, &mut detected);
        out.iter()
            .map(|f| {
                let d = &f.done;
                format!(
                    "{:?} {:?} {:?} {:?}",
                    d.request
                        .as_ref()
                        .map(|r| (&r.method, &r.path, &r.headers, &r.body, r.ended)),
                    d.response.as_ref().map(|r| (
                        r.status,
                        &r.headers,
                        &r.body,
                        &r.trailers,
                        r.ended
                    )),
                    d.index,
                    d.warnings
                )
            })
            .collect()
    }

    #[test]
    fn any_segmentation_order_and_duplication_gives_the_same_exchanges() {
        let req = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\nPUT /c HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc";
        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\nHTTP/1.1 200 OK\r\n\r\nuntil close";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let want = exchanges(connection(&mut rng, req, resp));
        assert_eq!(want.len(), 3);
        assert!(
            want.iter().all(|w| w.ends_with("[]")),
            "exact in order: {want:#?}"
        );
        for round in 0..300 {
            let mut segs = connection(&mut rng, req, resp);
            // The handshake stays first (a segment before its SYN looks mid-stream); the rest is
            // shuffled and some segments are captured twice.
            let mut rest = segs.split_off(2);
            for i in (1..rest.len()).rev() {
                let j = rng.below(i + 1);
                rest.swap(i, j);
            }
            for _ in 0..rng.below(5) {
                let k = rng.below(rest.len());
                let dup = rest[k].clone();
                rest.insert(rng.below(rest.len()), dup);
            }
            segs.extend(rest);
            assert_eq!(exchanges(segs), want, "round {round}");
        }
    }
}
