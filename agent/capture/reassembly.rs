//! TCP reassembly for one connection: each direction's bytes in order, exactly once.
//!
//! Sequence numbers are mapped to 64-bit stream offsets (the signed 32-bit distance from the next
//! expected byte), so wraparound past 2^32 is invisible above this module. Per direction:
//!
//! - a segment wholly before the next expected byte is a retransmission (counted, dropped); one
//!   that overlaps it is trimmed;
//! - a segment after it waits in an out-of-order buffer capped in bytes;
//! - a hole that stays open (the capture missed a packet: the kernel dropped it, or it was sent
//!   before the capture started) is skipped when the buffer is full, after `gap_timeout`, or when
//!   the connection ends: the consumer gets a [`Event::Gap`] with the number of missing bytes and
//!   carries on after it;
//! - FIN ends a direction once every byte before it arrived; RST ends both at once.
//!
//! Across directions, causality is kept with acknowledgment numbers: bytes that acknowledge
//! bytes of the other direction not yet handed on (a response whose request frames the capture
//! received later, as happens when the two directions are captured on different CPUs) wait until
//! those bytes are handed on, the other direction ends, or the gap timeout passes.
//!
//! Nothing here allocates without bound: the caller owns the cap on connections and total bytes
//! (see `super::flows`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::packet::Segment;

/// A direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// From the client (the side that sent the SYN, or sends requests) to the server.
    Request,
    /// From the server to the client.
    Response,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::Request => 0,
            Dir::Response => 1,
        }
    }
}

/// Why a direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// FIN, with every byte before it seen.
    Fin,
    /// RST from either side.
    Reset,
    /// No packet for the idle timeout.
    Expired,
    /// Evicted to stay under the memory cap.
    Evicted,
    /// The capture stopped.
    Shutdown,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::Reset => "reset",
            EndReason::Expired => "expired",
            EndReason::Evicted => "evicted",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// What reassembly hands to the HTTP parser, in stream order per direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Data {
        dir: Dir,
        ts_ns: i64,
        bytes: Vec<u8>,
    },
    /// Bytes the capture did not see: `Some(n)` inside the stream, `None` before the first byte
    /// seen (the connection started before the capture did).
    Gap {
        dir: Dir,
        ts_ns: i64,
        len: Option<u64>,
    },
    End {
        dir: Dir,
        ts_ns: i64,
        reason: EndReason,
    },
}

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Out-of-order bytes held per direction before the hole in front of them is skipped.
    pub max_ooo_bytes: usize,
    /// How long a hole may stay open (in packet time) before it is skipped as lost.
    pub gap_timeout_ns: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Several receive windows' worth: real reordering on one host is far below this.
            max_ooo_bytes: 4 << 20,
            // Retransmission timeouts start at 200 ms on Linux; a hole older than this was lost
            // by the capture, not by the network.
            gap_timeout_ns: 1_000_000_000,
        }
    }
}

/// Counters a connection adds to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub retransmitted_bytes: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
}

/// An event waiting for the other direction to catch up.
#[derive(Debug)]
struct Held {
    event: Event,
    /// Stream offset of the other direction that must be handed on first.
    need: Option<u64>,
    /// This direction's stream offset once the event is handed on (data events).
    end: Option<u64>,
}

#[derive(Debug, Default)]
struct Half {
    /// Sequence number of stream offset 0, once known.
    base: Option<u32>,
    /// Stream offset of the next byte to deliver.
    delivered: u64,
    /// Out-of-order segments by stream offset, with the other direction's offset they need.
    ooo: BTreeMap<u64, (Vec<u8>, Option<u64>)>,
    ooo_bytes: usize,
    /// Packet time the oldest out-of-order segment has waited since.
    hole_since: Option<i64>,
    /// Stream offset of the FIN, once seen.
    fin_at: Option<u64>,
    ended: bool,
    /// Stream offset up to which data was handed on.
    emitted: u64,
    /// Events waiting for the other direction, in order.
    held: std::collections::VecDeque<Held>,
    held_bytes: usize,
    /// Packet time the oldest held event has waited since.
    held_since: Option<i64>,
}

impl Half {
    /// The stream offset of `seq`, relative to the next expected byte.
    fn offset(&self, base: u32, seq: u32) -> i128 {
        let next = base.wrapping_add(self.delivered as u32);
        self.delivered as i128 + seq.wrapping_sub(next) as i32 as i128
    }
}

/// One TCP connection's reassembly state.
#[derive(Debug)]
pub struct Connection {
    pub client: SocketAddr,
    pub server: SocketAddr,
    halves: [Half; 2],
    limits: Limits,
    pub stats: Stats,
    /// Packet time of the last segment.
    pub last_ts_ns: i64,
    /// The client's initial sequence number when the SYN was seen (part of record ids).
    pub client_isn: Option<u32>,
}

impl Connection {
    pub fn new(client: SocketAddr, server: SocketAddr, limits: Limits) -> Connection {
        Connection {
            client,
            server,
            halves: Default::default(),
            limits,
            stats: Stats::default(),
            last_ts_ns: 0,
            client_isn: None,
        }
    }

    /// The direction `seg` travels in, if it belongs to this connection.
    pub fn dir_of(&self, seg: &Segment) -> Option<Dir> {
        if seg.src == self.client && seg.dst == self.server {
            Some(Dir::Request)
        } else if seg.src == self.server && seg.dst == self.client {
            Some(Dir::Response)
        } else {
            None
        }
    }

    /// A sequence number that identifies this connection instance (for record ids): the client's
    /// ISN when the SYN was seen, else the first sequence number seen from the client (or server).
    pub fn anchor(&self) -> u32 {
        self.client_isn
            .or(self.halves[0].base)
            .or(self.halves[1].base)
            .unwrap_or(0)
    }

    /// True once both directions ended.
    pub fn finished(&self) -> bool {
        self.halves.iter().all(|h| h.ended)
    }

    /// Bytes held in out-of-order buffers and waiting for the other direction.
    pub fn buffered_bytes(&self) -> usize {
        self.halves.iter().map(|h| h.ooo_bytes + h.held_bytes).sum()
    }

    /// The other direction's stream offset that `ack` acknowledges (only past bytes: the FIN's
    /// sequence number is not data), if it says anything.
    fn needed(&self, dir: Dir, ack: Option<u32>) -> Option<u64> {
        let other = &self.halves[1 - dir.index()];
        let off = other.offset(other.base?, ack?);
        if off <= 0 {
            return None;
        }
        let mut need = off as u64;
        if let Some(fin) = other.fin_at {
            need = need.min(fin);
        }
        Some(need)
    }

    fn satisfied(&self, dir: Dir, need: Option<u64>) -> bool {
        let other = &self.halves[1 - dir.index()];
        need.is_none_or(|n| other.ended || other.emitted >= n)
    }

    /// Hands `event` on, or holds it (behind earlier held events) until the other direction has
    /// handed on `need`.
    fn emit(
        &mut self,
        dir: Dir,
        event: Event,
        need: Option<u64>,
        end: Option<u64>,
        out: &mut Vec<Event>,
    ) {
        let ready = self.halves[dir.index()].held.is_empty() && self.satisfied(dir, need);
        let half = &mut self.halves[dir.index()];
        if ready {
            out.push(event);
            if let Some(e) = end {
                half.emitted = e;
            }
            self.release(out, false);
            return;
        }
        let ts = match &event {
            Event::Data { ts_ns, .. } | Event::Gap { ts_ns, .. } | Event::End { ts_ns, .. } => {
                *ts_ns
            }
        };
        if let Event::Data { bytes, .. } = &event {
            half.held_bytes += bytes.len();
        }
        half.held_since.get_or_insert(ts);
        half.held.push_back(Held { event, need, end });
        if half.held_bytes > self.limits.max_ooo_bytes {
            self.release(out, true);
        }
    }

    /// Hands on held events whose condition is met (all of them when `force`).
    fn release(&mut self, out: &mut Vec<Event>, force: bool) {
        loop {
            let mut progressed = false;
            for dir in [Dir::Request, Dir::Response] {
                while let Some(front) = self.halves[dir.index()].held.front() {
                    if !force && !self.satisfied(dir, front.need) {
                        break;
                    }
                    let half = &mut self.halves[dir.index()];
                    let held = half.held.pop_front().expect("front exists");
                    if let Event::Data { bytes, .. } = &held.event {
                        half.held_bytes -= bytes.len();
                    }
                    if let Some(e) = held.end {
                        half.emitted = e;
                    }
                    if half.held.is_empty() {
                        half.held_since = None;
                    }
                    out.push(held.event);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Adds one segment; events come out in order.
    pub fn push(&mut self, seg: Segment, out: &mut Vec<Event>) {
        let Some(dir) = self.dir_of(&seg) else { return };
        self.last_ts_ns = self.last_ts_ns.max(seg.ts_ns);
        let ts = seg.ts_ns;
        if seg.rst {
            // Whatever arrived before the reset still counts; the rest never will.
            for d in [Dir::Request, Dir::Response] {
                self.end(d, ts, EndReason::Reset, out);
            }
            return;
        }
        let limits = self.limits;
        let half = &mut self.halves[dir.index()];
        if half.ended {
            if !seg.payload.is_empty() {
                self.stats.retransmitted_bytes += seg.payload.len() as u64;
            }
            return;
        }
        let mut seq = seg.seq;
        if seg.syn {
            if half.base.is_none() {
                half.base = Some(seg.seq.wrapping_add(1));
                if dir == Dir::Request {
                    self.client_isn = Some(seg.seq);
                }
            }
            seq = seq.wrapping_add(1);
        }
        let base = match half.base {
            Some(base) => base,
            None => {
                if seg.payload.is_empty() && !seg.fin {
                    return; // a bare ACK says nothing about where this direction's data starts
                }
                // The connection started before the capture: begin at this segment.
                half.base = Some(seq);
                self.emit(
                    dir,
                    Event::Gap {
                        dir,
                        ts_ns: ts,
                        len: None,
                    },
                    None,
                    None,
                    out,
                );
                seq
            }
        };
        let need = self.needed(dir, seg.ack);
        let half = &mut self.halves[dir.index()];
        let start = half.offset(base, seq);
        let end = start + seg.payload.len() as i128;
        if seg.fin && half.fin_at.is_none() && end >= 0 {
            half.fin_at = Some(end as u64);
        }
        if !seg.payload.is_empty() {
            let delivered = half.delivered as i128;
            if end <= delivered {
                self.stats.retransmitted_bytes += seg.payload.len() as u64;
            } else if start <= delivered {
                let skip = (delivered - start) as usize;
                self.stats.retransmitted_bytes += skip as u64;
                half.delivered = end as u64;
                let event = Event::Data {
                    dir,
                    ts_ns: ts,
                    bytes: seg.payload[skip..].to_vec(),
                };
                self.emit(dir, event, need, Some(end as u64), out);
            } else {
                let start = start as u64;
                let len = seg.payload.len();
                match half.ooo.get(&start) {
                    Some((held, _)) if held.len() >= len => {
                        self.stats.retransmitted_bytes += len as u64;
                    }
                    _ => {
                        if let Some((old, _)) = half.ooo.insert(start, (seg.payload, need)) {
                            half.ooo_bytes -= old.len();
                            self.stats.retransmitted_bytes += old.len() as u64;
                        }
                        half.ooo_bytes += len;
                        half.hole_since.get_or_insert(ts);
                    }
                }
            }
        }
        self.drain(dir, ts, out);
        while self.halves[dir.index()].ooo_bytes > limits.max_ooo_bytes {
            self.skip_hole(dir, ts, out);
        }
        self.check_fin(dir, ts, out);
    }

    /// Skips holes that waited longer than the gap timeout (packet time `now_ns`), and hands on
    /// events that waited that long for the other direction.
    pub fn tick(&mut self, now_ns: i64, out: &mut Vec<Event>) {
        if self.halves.iter().any(|h| {
            h.held_since
                .is_some_and(|t| now_ns - t >= self.limits.gap_timeout_ns)
        }) {
            self.release(out, true);
        }
        for dir in [Dir::Request, Dir::Response] {
            while let Some(since) = self.halves[dir.index()].hole_since {
                if now_ns - since < self.limits.gap_timeout_ns {
                    break;
                }
                self.skip_hole(dir, now_ns, out);
                self.check_fin(dir, now_ns, out);
            }
        }
    }

    /// Ends `dir` now: what is buffered is delivered (with gaps for its holes), then the end.
    pub fn end(&mut self, dir: Dir, ts: i64, reason: EndReason, out: &mut Vec<Event>) {
        if self.halves[dir.index()].ended {
            return;
        }
        while !self.halves[dir.index()].ooo.is_empty() {
            self.skip_hole(dir, ts, out);
        }
        let half = &mut self.halves[dir.index()];
        half.ended = true;
        // A FIN seen and every byte before it delivered is a clean end whatever stopped us.
        let reason = if half.fin_at == Some(half.delivered) {
            EndReason::Fin
        } else {
            reason
        };
        self.emit(
            dir,
            Event::End {
                dir,
                ts_ns: ts,
                reason,
            },
            None,
            None,
            out,
        );
        // Nothing more comes from this direction: what the other one held for it can go.
        self.release(out, false);
    }

    /// Jumps over the hole in front of the first out-of-order segment.
    fn skip_hole(&mut self, dir: Dir, ts: i64, out: &mut Vec<Event>) {
        let half = &mut self.halves[dir.index()];
        let Some((&start, _)) = half.ooo.iter().next() else {
            half.hole_since = None;
            return;
        };
        let missing = start - half.delivered;
        half.delivered = start;
        self.stats.gaps += 1;
        self.stats.gap_bytes += missing;
        self.emit(
            dir,
            Event::Gap {
                dir,
                ts_ns: ts,
                len: Some(missing),
            },
            None,
            Some(start),
            out,
        );
        // Later holes restart their clock: they may still be filled by retransmission.
        self.halves[dir.index()].hole_since = Some(ts);
        self.drain(dir, ts, out);
    }

    /// Delivers out-of-order segments that became contiguous.
    fn drain(&mut self, dir: Dir, ts: i64, out: &mut Vec<Event>) {
        loop {
            let half = &mut self.halves[dir.index()];
            let Some(entry) = half.ooo.first_entry() else {
                break;
            };
            let start = *entry.key();
            if start > half.delivered {
                break;
            }
            let (bytes, need) = entry.remove();
            half.ooo_bytes -= bytes.len();
            let end = start + bytes.len() as u64;
            if end <= half.delivered {
                self.stats.retransmitted_bytes += bytes.len() as u64;
                continue;
            }
            let skip = (half.delivered - start) as usize;
            self.stats.retransmitted_bytes += skip as u64;
            half.delivered = end;
            let event = Event::Data {
                dir,
                ts_ns: ts,
                bytes: bytes[skip..].to_vec(),
            };
            self.emit(dir, event, need, Some(end), out);
        }
        let half = &mut self.halves[dir.index()];
        if half.ooo.is_empty() {
            half.hole_since = None;
        }
    }

    fn check_fin(&mut self, dir: Dir, ts: i64, out: &mut Vec<Event>) {
        let half = &self.halves[dir.index()];
        if !half.ended && half.fin_at.is_some_and(|f| f <= half.delivered) {
            self.end(dir, ts, EndReason::Fin, out);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const C: &str = "10.1.0.2:40000";
    pub const S: &str = "10.1.0.1:8080";

    /// A segment from the client (`req`) or server, as the unit tests write them.
    pub fn seg(req: bool, seq: u32, flags: &str, payload: &[u8], ts: i64) -> Segment {
        let (src, dst) = if req { (C, S) } else { (S, C) };
        Segment {
            ts_ns: ts,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            seq,
            // A client's SYN is the only segment without ACK.
            ack: (!(req && flags.contains('S'))).then_some(0),
            syn: flags.contains('S'),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
            payload: payload.to_vec(),
        }
    }

    fn conn(limits: Limits) -> Connection {
        Connection::new(C.parse().unwrap(), S.parse().unwrap(), limits)
    }

    /// The request direction's bytes, gaps as `[gap N]`, and the end.
    fn stream(events: &[Event]) -> String {
        let mut s = String::new();
        for e in events {
            match e {
                Event::Data {
                    dir: Dir::Request,
                    bytes,
                    ..
                } => s.push_str(std::str::from_utf8(bytes).unwrap()),
                Event::Gap {
                    dir: Dir::Request,
                    len,
                    ..
                } => s.push_str(&format!("[gap {len:?}]")),
                Event::End {
                    dir: Dir::Request,
                    reason,
                    ..
                } => s.push_str(&format!("[{}]", reason.as_str())),
                _ => {}
            }
        }
        s
    }

    /// Cuts `text` into segments of `size` bytes after a SYN with `isn`, plus a FIN.
    fn segments(isn: u32, text: &[u8], size: usize) -> Vec<Segment> {
        let mut v = vec![seg(true, isn, "S", b"", 0)];
        let mut seq = isn.wrapping_add(1);
        for chunk in text.chunks(size) {
            v.push(seg(true, seq, "", chunk, 1));
            seq = seq.wrapping_add(chunk.len() as u32);
        }
        v.push(seg(true, seq, "F", b"", 2));
        v
    }

    fn run(c: &mut Connection, segs: impl IntoIterator<Item = Segment>) -> Vec<Event> {
        let mut out = Vec::new();
        for s in segs {
            c.push(s, &mut out);
        }
        out
    }

    const TEXT: &[u8] = b"POST /a HTTP/1.1\r\ncontent-length: 10\r\n\r\n0123456789";

    #[test]
    fn in_order_segments_come_out_whole() {
        let mut c = conn(Limits::default());
        let out = run(&mut c, segments(1000, TEXT, 7));
        assert_eq!(
            stream(&out),
            format!("{}[fin]", std::str::from_utf8(TEXT).unwrap())
        );
        assert_eq!(c.client_isn, Some(1000));
    }

    #[test]
    fn any_order_with_duplicates_and_overlaps_gives_the_same_bytes() {
        let want = format!("{}[fin]", std::str::from_utf8(TEXT).unwrap());
        let base = segments(u32::MAX - 20, TEXT, 5); // wraps around 2^32 mid-stream
        let n = base.len();
        // Reversed data, rotated, interleaved with duplicates, and overlapping re-segmentation.
        let mut orders: Vec<Vec<Segment>> = vec![
            {
                let mut v = vec![base[0].clone()];
                v.extend(base[1..n].iter().rev().cloned());
                v
            },
            {
                let mut v = vec![base[0].clone()];
                v.extend(base[3..n].iter().cloned());
                v.extend(base[1..3].iter().cloned());
                v
            },
            base.iter().flat_map(|s| [s.clone(), s.clone()]).collect(),
        ];
        let mut overlapping = vec![base[0].clone()];
        let isn1 = (u32::MAX - 20).wrapping_add(1);
        for start in (0..TEXT.len()).step_by(4).rev() {
            let end = (start + 9).min(TEXT.len());
            overlapping.push(seg(
                true,
                isn1.wrapping_add(start as u32),
                "",
                &TEXT[start..end],
                1,
            ));
        }
        overlapping.push(base[n - 1].clone());
        orders.push(overlapping);
        for (i, order) in orders.into_iter().enumerate() {
            let mut c = conn(Limits::default());
            let out = run(&mut c, order);
            assert_eq!(stream(&out), want, "order {i}");
            assert_eq!(c.stats.gaps, 0, "order {i}");
            assert_eq!(c.buffered_bytes(), 0);
        }
        let mut c = conn(Limits::default());
        run(&mut c, base.iter().flat_map(|s| [s.clone(), s.clone()]));
        assert_eq!(c.stats.retransmitted_bytes, TEXT.len() as u64);
    }

    #[test]
    fn a_lost_segment_becomes_a_gap_after_the_timeout_and_the_stream_resumes() {
        let base = segments(5, TEXT, 10);
        let mut c = conn(Limits::default());
        let mut segs = base.clone();
        segs.remove(2); // bytes 10..20 never captured
        segs.pop(); // no FIN yet
        let mut out = run(&mut c, segs);
        assert_eq!(stream(&out), std::str::from_utf8(&TEXT[..10]).unwrap());
        c.tick(1 + Limits::default().gap_timeout_ns - 1, &mut out);
        assert_eq!(c.stats.gaps, 0, "not yet");
        c.tick(1 + Limits::default().gap_timeout_ns, &mut out);
        c.push(base.last().unwrap().clone(), &mut out);
        let t = std::str::from_utf8(TEXT).unwrap();
        assert_eq!(
            stream(&out),
            format!("{}[gap Some(10)]{}[fin]", &t[..10], &t[20..])
        );
        assert_eq!((c.stats.gaps, c.stats.gap_bytes), (1, 10));
    }

    #[test]
    fn the_out_of_order_cap_forces_the_gap_early() {
        let base = segments(5, TEXT, 10);
        let mut c = conn(Limits {
            max_ooo_bytes: 15,
            gap_timeout_ns: i64::MAX,
        });
        let mut segs = base.clone();
        segs.remove(1);
        let out = run(&mut c, segs);
        let t = std::str::from_utf8(TEXT).unwrap();
        assert_eq!(stream(&out), format!("[gap Some(10)]{}[fin]", &t[10..]));
    }

    #[test]
    fn reset_mid_body_ends_both_directions_with_what_arrived() {
        let base = segments(5, TEXT, 10);
        let mut c = conn(Limits::default());
        let mut segs: Vec<Segment> = base[..3].to_vec();
        segs.push(base[4].clone()); // a hole at 20..30, then data at 30..40
        segs.push(seg(false, 77, "R", b"", 3));
        let out = run(&mut c, segs);
        let t = std::str::from_utf8(TEXT).unwrap();
        assert_eq!(
            stream(&out),
            format!("{}[gap Some(10)]{}[reset]", &t[..20], &t[30..40])
        );
        assert!(out.iter().any(|e| matches!(
            e,
            Event::End {
                dir: Dir::Response,
                reason: EndReason::Reset,
                ..
            }
        )));
        assert!(c.finished());
    }

    #[test]
    fn a_connection_seen_mid_stream_starts_with_an_unknown_gap() {
        let mut c = conn(Limits::default());
        let out = run(
            &mut c,
            [
                seg(true, 500, "", b"", 0), // bare ACK: nothing to anchor on
                seg(true, 500, "", b"abc", 0),
                seg(true, 503, "", b"def", 0),
            ],
        );
        assert_eq!(stream(&out), "[gap None]abcdef");
        assert_eq!(c.client_isn, None);
    }

    #[test]
    fn fin_waits_for_the_bytes_before_it() {
        let base = segments(9, TEXT, 20);
        let mut c = conn(Limits::default());
        let fin = base.last().unwrap().clone();
        let mut segs = vec![base[0].clone(), fin];
        segs.extend(base[1..base.len() - 1].iter().rev().cloned());
        let out = run(&mut c, segs);
        assert_eq!(
            stream(&out),
            format!("{}[fin]", std::str::from_utf8(TEXT).unwrap())
        );
        // Data after the FIN (a confused retransmission) is not delivered twice.
        let mut more = Vec::new();
        c.push(base[1].clone(), &mut more);
        assert!(more.is_empty());
    }

    #[test]
    fn a_response_captured_before_its_request_waits_for_it() {
        let req = b"GET / HTTP/1.1\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\n\r\n";
        let mut c = conn(Limits::default());
        let mut out = Vec::new();
        c.push(seg(true, 100, "S", b"", 0), &mut out);
        let mut synack = seg(false, 500, "S", b"", 0);
        synack.ack = Some(101);
        c.push(synack, &mut out);
        // The response acknowledges the request's bytes, but its frame is read first.
        let mut r = seg(false, 501, "", resp, 2);
        r.ack = Some(101 + req.len() as u32);
        c.push(r, &mut out);
        assert!(out.is_empty(), "held: {out:?}");
        assert_eq!(c.buffered_bytes(), resp.len());
        let mut q = seg(true, 101, "", req, 1);
        q.ack = Some(501);
        c.push(q, &mut out);
        let dirs: Vec<Dir> = out
            .iter()
            .map(|e| match e {
                Event::Data { dir, .. } => *dir,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(dirs, [Dir::Request, Dir::Response]);
        assert_eq!(c.buffered_bytes(), 0);

        // If the request never comes (lost by the capture), the response goes on after the
        // gap timeout rather than waiting for ever.
        let mut c = conn(Limits::default());
        let mut out = Vec::new();
        c.push(seg(true, 100, "S", b"", 0), &mut out);
        let mut r = seg(false, 501, "", resp, 2);
        r.syn = false;
        let mut synack = seg(false, 500, "S", b"", 0);
        synack.ack = Some(101);
        c.push(synack, &mut out);
        r.ack = Some(101 + req.len() as u32);
        c.push(r, &mut out);
        assert!(out.is_empty());
        c.tick(2 + Limits::default().gap_timeout_ns, &mut out);
        assert!(
            matches!(
                out[..],
                [Event::Data {
                    dir: Dir::Response,
                    ..
                }]
            ),
            "{out:?}"
        );
    }
}
