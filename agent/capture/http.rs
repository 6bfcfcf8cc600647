//! HTTP/1.x over one reassembled TCP connection: requests and responses parsed with `httparse`,
//! bodies framed by `content-length`, chunked encoding (decoded; extensions dropped, trailers
//! kept) or the end of the connection, and paired in order (pipelining and keep-alive).
//!
//! `100 Continue` and other interim responses do not end an exchange. `101 Switching Protocols`
//! and a successful `CONNECT` end HTTP parsing on that connection. HTTP/2 (its client preface)
//! and TLS (a handshake record) are recognised and reported, not parsed.
//!
//! A gap in the capture inside a body of known length only loses those bytes (the body is flagged
//! truncated, the framing stays in sync); anywhere else the parser searches for the next line that
//! starts a request (`METHOD target HTTP/1.x`) or a response (`HTTP/1.x NNN`) and says so in the
//! record's warnings. Incomplete input is never an error: the parser waits for more bytes; every
//! buffer is capped.

use std::collections::VecDeque;

use crate::record::{Direction, Headers};

use super::reassembly::{Dir, EndReason, Event};

/// Limits of the parser.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Body bytes kept per direction (more is counted in `body_size` and flagged).
    pub max_body_bytes: usize,
    /// Longest request/response head, chunk-size line or trailer section.
    pub max_head_bytes: usize,
    /// Requests awaiting their response on one connection (pipelining depth).
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            // The largest default header limit of common servers (Envoy: 60 KiB).
            max_head_bytes: 64 << 10,
            max_pending: 128,
        }
    }
}

/// What the connection turned out to carry, when it is not (or no longer) HTTP/1.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// The HTTP/2 client preface (`PRI * HTTP/2.0`): prior-knowledge h2c, not parsed.
    Http2,
    /// A TLS record: encrypted, not parsed (capture the plaintext hop instead).
    Tls,
    /// Switched protocols (`101`, e.g. WebSocket) or a `CONNECT` tunnel: later bytes not parsed.
    Upgraded,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::Upgraded => "upgraded",
        }
    }
}

/// One finished exchange of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// Position of the exchange on its connection (0, 1, ...).
    pub index: u64,
    pub request: Option<Direction>,
    pub response: Option<Direction>,
    /// Packet time of the first byte of the exchange.
    pub start_ns: i64,
    pub warnings: Vec<String>,
}

/// Counters a connection adds to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Bytes skipped while searching for a message start after a gap.
    pub resync_skipped_bytes: u64,
    /// Interim (1xx) responses seen.
    pub interim_responses: u64,
    /// Heads that could not be parsed (the parser resynchronised after them).
    pub bad_heads: u64,
    /// Exchanges emitted early because too many were pending on one connection.
    pub overflowed: u64,
}

#[derive(Debug)]
struct Pending {
    index: u64,
    request: Option<Direction>,
    response: Option<Direction>,
    req_done: bool,
    resp_done: bool,
    start_ns: i64,
    warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing parsed yet on this direction (protocol detection happens here).
    Start,
    Head,
    Length(u64),
    Chunked(Chunk),
    /// Body until the connection ends (responses only).
    Close,
    /// Searching for a message start after a gap.
    Resync,
    /// Not HTTP/1.x any more.
    Dead,
}

#[derive(Debug)]
struct Side {
    state: State,
    buf: Vec<u8>,
    /// Index (in `Pending::index`) of the message being parsed.
    current: Option<u64>,
    /// Body bytes are no longer appended (a gap made them non-contiguous), only counted.
    frozen: bool,
    /// The next message was found by searching after a gap.
    resynced: bool,
    /// Packet time of the data being parsed.
    ts_ns: i64,
}

impl Side {
    fn new() -> Side {
        Side {
            state: State::Start,
            buf: Vec::new(),
            current: None,
            frozen: false,
            resynced: false,
            ts_ns: 0,
        }
    }
}

/// The HTTP/1.x state of one connection.
#[derive(Debug)]
pub struct Connection {
    limits: Limits,
    sides: [Side; 2],
    pending: VecDeque<Pending>,
    next_index: u64,
    protocol: Protocol,
    /// Set once when a non-HTTP/1 protocol is detected, taken by [`Connection::take_detected`].
    detected: Option<Protocol>,
    pub stats: Stats,
}

fn side_index(dir: Dir) -> usize {
    match dir {
        Dir::Request => 0,
        Dir::Response => 1,
    }
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"PATCH ",
    b"HEAD ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];

/// Whether `bytes` can be the start of a message of `dir`: `Some(true)` yes, `Some(false)` no,
/// `None` too short to tell.
fn message_start(dir: Dir, bytes: &[u8]) -> Option<bool> {
    let prefix_of = |want: &[u8]| {
        let n = want.len().min(bytes.len());
        bytes[..n] == want[..n]
    };
    let candidates: &[&[u8]] = match dir {
        Dir::Request => &METHODS,
        Dir::Response => &[b"HTTP/1."],
    };
    if candidates
        .iter()
        .any(|c| bytes.len() >= c.len() && bytes.starts_with(c))
    {
        Some(true)
    } else if candidates.iter().any(|c| prefix_of(c)) {
        None
    } else {
        Some(false)
    }
}

/// Converts parsed headers: lower-case names, every value in order.
fn headers_of(parsed: &[httparse::Header<'_>], lossy: &mut bool) -> Headers {
    let mut headers = Headers::new();
    for h in parsed {
        let value = match std::str::from_utf8(h.value) {
            Ok(v) => v.to_string(),
            Err(_) => {
                *lossy = true;
                String::from_utf8_lossy(h.value).into_owned()
            }
        };
        headers
            .entry(h.name.to_ascii_lowercase())
            .or_default()
            .push(value);
    }
    headers
}

fn has_token(headers: &Headers, name: &str, token: &str) -> bool {
    headers.get(name).is_some_and(|values| {
        values
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// The framing a head announces: chunked wins over `content-length` (RFC 9112 6.3).
enum Framing {
    Chunked,
    Length(u64),
    Invalid,
    None,
}

fn framing(headers: &Headers) -> Framing {
    if has_token(headers, "transfer-encoding", "chunked") {
        return Framing::Chunked;
    }
    match headers.get("content-length") {
        None => Framing::None,
        Some(values) => {
            let mut lengths = values
                .iter()
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().parse::<u64>());
            match lengths.next() {
                Some(Ok(first)) if lengths.all(|l| l == Ok(first)) => Framing::Length(first),
                _ => Framing::Invalid,
            }
        }
    }
}

pub fn format_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The result of trying to parse a head at the start of a buffer.
enum HeadParse {
    Partial,
    Bad(String),
    Request {
        len: usize,
        direction: Direction,
        lossy: bool,
    },
    Response {
        len: usize,
        direction: Direction,
        lossy: bool,
    },
}

fn parse_head(dir: Dir, buf: &[u8]) -> HeadParse {
    for max in [64, 1024] {
        let mut storage = vec![httparse::EMPTY_HEADER; max];
        let mut lossy = false;
        let result = match dir {
            Dir::Request => {
                let mut req = httparse::Request::new(&mut storage);
                match req.parse(buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let headers = headers_of(req.headers, &mut lossy);
                        let direction = Direction {
                            method: req.method.map(str::to_string),
                            path: req.path.map(str::to_string),
                            authority: headers.get("host").and_then(|h| h.first()).cloned(),
                            headers: Some(headers),
                            ..Default::default()
                        };
                        Ok(HeadParse::Request {
                            len,
                            direction,
                            lossy,
                        })
                    }
                    Ok(httparse::Status::Partial) => Ok(HeadParse::Partial),
                    Err(e) => Err(e),
                }
            }
            Dir::Response => {
                let mut resp = httparse::Response::new(&mut storage);
                match resp.parse(buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let headers = headers_of(resp.headers, &mut lossy);
                        let direction = Direction {
                            status: resp.code,
                            headers: Some(headers),
                            ..Default::default()
                        };
                        Ok(HeadParse::Response {
                            len,
                            direction,
                            lossy,
                        })
                    }
                    Ok(httparse::Status::Partial) => Ok(HeadParse::Partial),
                    Err(e) => Err(e),
                }
            }
        };
        return match result {
            Ok(parsed) => parsed,
            Err(httparse::Error::TooManyHeaders) if max == 64 => continue,
            Err(e) => HeadParse::Bad(e.to_string()),
        };
    }
    HeadParse::Bad("too many headers".into())
}

impl Connection {
    pub fn new(limits: Limits) -> Connection {
        Connection {
            limits,
            sides: [Side::new(), Side::new()],
            pending: VecDeque::new(),
            next_index: 0,
            protocol: Protocol::Http1,
            detected: None,
            stats: Stats::default(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The protocol detected on this connection, once (for a report line per connection).
    pub fn take_detected(&mut self) -> Option<Protocol> {
        self.detected.take()
    }

    /// Bytes held in parser buffers.
    pub fn buffered_bytes(&self) -> usize {
        self.sides.iter().map(|s| s.buf.len()).sum::<usize>()
            + self
                .pending
                .iter()
                .map(|p| {
                    p.request.as_ref().map_or(0, |d| d.body.len())
                        + p.response.as_ref().map_or(0, |d| d.body.len())
                })
                .sum::<usize>()
    }

    /// Feeds one reassembly event; finished exchanges are appended to `out`.
    pub fn handle(&mut self, event: Event, out: &mut Vec<Done>) {
        match event {
            Event::Data { dir, ts_ns, bytes } => {
                let side = &mut self.sides[side_index(dir)];
                side.ts_ns = ts_ns;
                if side.state == State::Dead {
                    return;
                }
                side.buf.extend_from_slice(&bytes);
                self.parse(dir, out);
            }
            Event::Gap { dir, ts_ns, len } => {
                self.sides[side_index(dir)].ts_ns = ts_ns;
                self.gap(dir, len, out);
            }
            Event::End { dir, ts_ns, reason } => {
                self.sides[side_index(dir)].ts_ns = ts_ns;
                self.end(dir, reason, out);
            }
        }
    }

    fn pending_mut(&mut self, index: u64) -> Option<&mut Pending> {
        self.pending.iter_mut().find(|p| p.index == index)
    }

    /// The direction of the message `dir` is parsing.
    fn current_mut(&mut self, dir: Dir) -> Option<&mut Direction> {
        let index = self.sides[side_index(dir)].current?;
        let p = self.pending_mut(index)?;
        match dir {
            Dir::Request => p.request.as_mut(),
            Dir::Response => p.response.as_mut(),
        }
    }

    fn warn_current(&mut self, dir: Dir, warning: String) {
        if let Some(index) = self.sides[side_index(dir)].current {
            if let Some(p) = self.pending_mut(index) {
                if !p.warnings.contains(&warning) {
                    p.warnings.push(warning);
                }
            }
        }
    }

    fn parse(&mut self, dir: Dir, out: &mut Vec<Done>) {
        let si = side_index(dir);
        let mut pos = 0;
        loop {
            let state = self.sides[si].state;
            let avail = self.sides[si].buf.len() - pos;
            if avail == 0 && !matches!(state, State::Length(0)) {
                break;
            }
            let progressed = match state {
                State::Dead => {
                    pos = self.sides[si].buf.len();
                    false
                }
                State::Start => self.detect(dir, pos),
                State::Resync => self.resync(dir, &mut pos),
                State::Head => self.head(dir, &mut pos, out),
                State::Length(0) => {
                    self.finish_message(dir, true, out);
                    true
                }
                State::Length(remaining) => {
                    let n = (avail as u64).min(remaining) as usize;
                    self.body(dir, pos, n);
                    pos += n;
                    self.sides[si].state = State::Length(remaining - n as u64);
                    true
                }
                State::Close => {
                    self.body(dir, pos, avail);
                    pos += avail;
                    true
                }
                State::Chunked(chunk) => self.chunked(dir, chunk, &mut pos, out),
            };
            if !progressed {
                break;
            }
        }
        let side = &mut self.sides[si];
        side.buf.drain(..pos.min(side.buf.len()));
        if side.buf.len() > self.limits.max_head_bytes
            && matches!(side.state, State::Head | State::Chunked(_))
        {
            let what = if side.state == State::Head {
                "head"
            } else {
                "chunk framing"
            };
            let len = side.buf.len();
            self.stats.bad_heads += 1;
            self.warn_current(
                dir,
                format!(
                    "a {what} longer than {} bytes was skipped",
                    self.limits.max_head_bytes
                ),
            );
            self.finish_message(dir, false, out);
            self.sides[si].buf.clear();
            self.lose_sync(dir, format!("{len} bytes of an oversized {what}"));
        }
    }

    /// Start of a direction: HTTP/2 preface or TLS record, else HTTP/1.x.
    fn detect(&mut self, dir: Dir, pos: usize) -> bool {
        let buf = &self.sides[side_index(dir)].buf[pos..];
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
        let n = buf.len().min(PREFACE.len());
        let protocol = if dir == Dir::Request && buf[..n] == PREFACE[..n] {
            if n < PREFACE.len() {
                return false; // wait for the whole preface line
            }
            Some(Protocol::Http2)
        } else if buf[0] == 0x16 {
            if buf.len() < 2 {
                return false;
            }
            (buf[1] == 0x03).then_some(Protocol::Tls)
        } else {
            None
        };
        match protocol {
            Some(p) => self.switch(p),
            None => self.sides[side_index(dir)].state = State::Head,
        }
        true
    }

    /// Stops parsing the connection: it carries something else.
    fn switch(&mut self, protocol: Protocol) {
        self.protocol = protocol;
        if protocol != Protocol::Upgraded {
            self.detected = Some(protocol);
        }
        for side in &mut self.sides {
            side.state = State::Dead;
            side.buf.clear();
        }
    }

    fn resync(&mut self, dir: Dir, pos: &mut usize) -> bool {
        let si = side_index(dir);
        let buf = &self.sides[si].buf;
        // TLS application data or a handshake on a connection first seen mid-stream.
        if *pos == 0 && buf.len() >= 2 && (0x14..=0x17).contains(&buf[0]) && buf[1] == 0x03 {
            self.switch(Protocol::Tls);
            return false;
        }
        let mut candidate = *pos;
        loop {
            match message_start(dir, &buf[candidate..]) {
                Some(true) => {
                    self.stats.resync_skipped_bytes += (candidate - *pos) as u64;
                    *pos = candidate;
                    let side = &mut self.sides[si];
                    side.state = State::Head;
                    side.resynced = true;
                    return true;
                }
                None => {
                    // Maybe a start, cut short: keep it for the next bytes.
                    self.stats.resync_skipped_bytes += (candidate - *pos) as u64;
                    *pos = candidate;
                    return false;
                }
                Some(false) => match memchr::memchr(b'\n', &buf[candidate..]) {
                    Some(nl) => candidate += nl + 1,
                    None => {
                        self.stats.resync_skipped_bytes += (buf.len() - *pos) as u64;
                        *pos = buf.len();
                        return false;
                    }
                },
            }
        }
    }

    fn head(&mut self, dir: Dir, pos: &mut usize, out: &mut Vec<Done>) -> bool {
        let si = side_index(dir);
        let parsed = parse_head(dir, &self.sides[si].buf[*pos..]);
        let ts = self.sides[si].ts_ns;
        let (len, mut direction, lossy) = match parsed {
            HeadParse::Partial => return false,
            HeadParse::Bad(error) => {
                self.stats.bad_heads += 1;
                self.lose_sync(
                    dir,
                    format!("an unparsable {} head ({error})", dir_name(dir)),
                );
                // Skip past the current line so the search does not find the same start again.
                let buf = &self.sides[si].buf[*pos..];
                *pos += memchr::memchr(b'\n', buf).map_or(buf.len(), |nl| nl + 1);
                return true;
            }
            HeadParse::Request {
                len,
                direction,
                lossy,
            }
            | HeadParse::Response {
                len,
                direction,
                lossy,
            } => (len, direction, lossy),
        };
        *pos += len;
        direction.start_time = Some(format_ns(ts));
        let mut warnings = Vec::new();
        if lossy {
            warnings.push(format!(
                "{} header values that are not UTF-8 were converted lossily",
                dir_name(dir)
            ));
        }
        if std::mem::take(&mut self.sides[si].resynced) {
            warnings.push(format!(
                "this {} was found by searching for a message start after bytes missing from the capture",
                dir_name(dir)
            ));
        }
        self.sides[si].frozen = false;
        let headers = direction.headers.clone().unwrap_or_default();
        match dir {
            Dir::Request => {
                if self.pending.len() >= self.limits.max_pending {
                    // A client pipelining without end, or responses we never see: emit the oldest.
                    self.stats.overflowed += 1;
                    if let Some(mut p) = self.pending.pop_front() {
                        p.warnings.push(format!(
                            "emitted before its response: more than {} requests were pending on the connection",
                            self.limits.max_pending
                        ));
                        out.push(done(p));
                    }
                }
                let index = self.next_index;
                self.next_index += 1;
                self.pending.push_back(Pending {
                    index,
                    request: Some(direction),
                    response: None,
                    req_done: false,
                    resp_done: false,
                    start_ns: ts,
                    warnings,
                });
                self.sides[si].current = Some(index);
                self.sides[si].state = match framing(&headers) {
                    Framing::Chunked => State::Chunked(Chunk::Size),
                    Framing::Length(n) => State::Length(n),
                    Framing::None => State::Length(0),
                    Framing::Invalid => {
                        self.warn_current(dir, "invalid content-length".into());
                        self.finish_message(dir, false, out);
                        self.lose_sync(dir, "a request with an invalid content-length".into());
                        return true;
                    }
                };
            }
            Dir::Response => {
                let status = direction.status.unwrap_or(0);
                if (100..200).contains(&status) && status != 101 {
                    // 100 Continue, 103 Early Hints: the final response follows.
                    self.stats.interim_responses += 1;
                    self.sides[si].state = State::Head;
                    return true;
                }
                // Pair with the oldest request that has no response yet.
                let index = match self.pending.iter().find(|p| p.response.is_none()) {
                    Some(p) => p.index,
                    None => {
                        let index = self.next_index;
                        self.next_index += 1;
                        self.pending.push_back(Pending {
                            index,
                            request: None,
                            response: None,
                            req_done: true,
                            resp_done: false,
                            start_ns: ts,
                            warnings: vec!["no request was captured for this response".into()],
                        });
                        index
                    }
                };
                let p = self.pending_mut(index).expect("just found");
                let method = p
                    .request
                    .as_ref()
                    .and_then(|r| r.method.clone())
                    .unwrap_or_default();
                p.warnings.extend(warnings);
                p.response = Some(direction);
                self.sides[si].current = Some(index);
                let upgrade =
                    status == 101 || (method == "CONNECT" && (200..300).contains(&status));
                self.sides[si].state =
                    if upgrade || method == "HEAD" || status == 204 || status == 304 {
                        State::Length(0)
                    } else {
                        match framing(&headers) {
                            Framing::Chunked => State::Chunked(Chunk::Size),
                            Framing::Length(n) => State::Length(n),
                            Framing::None => State::Close,
                            Framing::Invalid => {
                                self.warn_current(dir, "invalid content-length".into());
                                State::Close
                            }
                        }
                    };
                if upgrade {
                    let to = headers
                        .get("upgrade")
                        .and_then(|v| v.first())
                        .cloned()
                        .unwrap_or_else(|| "a tunnel".into());
                    // The request side's bytes after this are the other protocol too.
                    if let Some(p) = self.pending_mut(index) {
                        p.req_done = true;
                        p.warnings.push(format!(
                            "the connection switched to {to}; later bytes were not parsed"
                        ));
                    }
                    self.finish_message(dir, true, out);
                    self.switch(Protocol::Upgraded);
                    self.emit_ready(out);
                    return false;
                }
            }
        }
        true
    }

    fn body(&mut self, dir: Dir, pos: usize, n: usize) {
        let si = side_index(dir);
        let frozen = self.sides[si].frozen;
        let cap = self.limits.max_body_bytes;
        let ts = self.sides[si].ts_ns;
        let bytes = self.sides[si].buf[pos..pos + n].to_vec();
        if let Some(d) = self.current_mut(dir) {
            if frozen {
                d.body_size += n as u64;
            } else {
                d.push_body(&bytes, cap);
            }
            d.end_time = Some(format_ns(ts));
        }
    }

    fn chunked(&mut self, dir: Dir, chunk: Chunk, pos: &mut usize, out: &mut Vec<Done>) -> bool {
        let si = side_index(dir);
        let avail = self.sides[si].buf.len() - *pos;
        match chunk {
            Chunk::Size => match httparse::parse_chunk_size(&self.sides[si].buf[*pos..]) {
                Ok(httparse::Status::Complete((len, size))) => {
                    *pos += len;
                    self.sides[si].state = State::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                    true
                }
                Ok(httparse::Status::Partial) => false,
                Err(_) => {
                    self.warn_current(dir, "invalid chunk size line".into());
                    self.finish_message(dir, false, out);
                    self.lose_sync(dir, "an invalid chunk size line".into());
                    true
                }
            },
            Chunk::Data(remaining) => {
                let n = (avail as u64).min(remaining) as usize;
                self.body(dir, *pos, n);
                *pos += n;
                self.sides[si].state = State::Chunked(if n as u64 == remaining {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(remaining - n as u64)
                });
                true
            }
            Chunk::DataEnd => {
                let buf = &self.sides[si].buf[*pos..];
                let crlf = if buf.starts_with(b"\r\n") {
                    2
                } else if buf.starts_with(b"\n") {
                    1
                } else if buf == b"\r" {
                    return false;
                } else {
                    self.warn_current(dir, "chunk data not followed by CRLF".into());
                    self.finish_message(dir, false, out);
                    self.lose_sync(dir, "chunk data not followed by CRLF".into());
                    return true;
                };
                *pos += crlf;
                self.sides[si].state = State::Chunked(Chunk::Size);
                true
            }
            Chunk::Trailers => {
                let mut storage = [httparse::EMPTY_HEADER; 64];
                match httparse::parse_headers(&self.sides[si].buf[*pos..], &mut storage) {
                    Ok(httparse::Status::Complete((len, parsed))) => {
                        let mut lossy = false;
                        let trailers = headers_of(parsed, &mut lossy);
                        *pos += len;
                        if let Some(d) = self.current_mut(dir) {
                            if !trailers.is_empty() {
                                d.trailers = Some(trailers);
                            }
                        }
                        self.finish_message(dir, true, out);
                        true
                    }
                    Ok(httparse::Status::Partial) => false,
                    Err(e) => {
                        self.warn_current(dir, format!("invalid trailers ({e})"));
                        self.finish_message(dir, false, out);
                        self.lose_sync(dir, "invalid trailers".into());
                        true
                    }
                }
            }
        }
    }

    /// The message `dir` was parsing is over (`ended`: by its own framing).
    fn finish_message(&mut self, dir: Dir, ended: bool, out: &mut Vec<Done>) {
        let si = side_index(dir);
        let ts = self.sides[si].ts_ns;
        if let Some(index) = self.sides[si].current.take() {
            if let Some(p) = self.pending_mut(index) {
                let d = match dir {
                    Dir::Request => {
                        p.req_done = true;
                        p.request.as_mut()
                    }
                    Dir::Response => {
                        p.resp_done = true;
                        p.response.as_mut()
                    }
                };
                if let Some(d) = d {
                    d.ended = ended;
                    if d.end_time.is_none() {
                        d.end_time = Some(format_ns(ts));
                    }
                }
            }
        }
        self.sides[si].frozen = false;
        self.sides[si].state = State::Head;
        self.emit_ready(out);
    }

    /// Emits finished exchanges from the front, in order.
    fn emit_ready(&mut self, out: &mut Vec<Done>) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.req_done && p.resp_done)
        {
            out.push(done(self.pending.pop_front().expect("front exists")));
        }
    }

    /// The framing is lost: search for the next message start.
    fn lose_sync(&mut self, dir: Dir, what: String) {
        let si = side_index(dir);
        if self.sides[si].state == State::Dead {
            return;
        }
        tracing::debug!(direction = dir_name(dir), %what, "Lost HTTP framing; searching for the next message.");
        self.sides[si].state = State::Resync;
    }

    fn gap(&mut self, dir: Dir, len: Option<u64>, out: &mut Vec<Done>) {
        let si = side_index(dir);
        let state = self.sides[si].state;
        let missing = |n: u64| {
            format!(
                "{n} {} body bytes are missing from the capture",
                dir_name(dir)
            )
        };
        match (state, len) {
            (State::Dead, _) => {}
            (State::Start, None) => self.sides[si].state = State::Resync,
            (State::Length(rem), Some(n)) if n < rem => {
                self.sides[si].state = State::Length(rem - n);
                self.lose_body_bytes(dir, n, missing(n));
            }
            (State::Chunked(Chunk::Data(rem)), Some(n)) if n < rem => {
                self.sides[si].state = State::Chunked(Chunk::Data(rem - n));
                self.lose_body_bytes(dir, n, missing(n));
            }
            (State::Close, Some(n)) => self.lose_body_bytes(dir, n, missing(n)),
            (_, len) => {
                let what = match len {
                    Some(n) => format!("{n} bytes are missing from the capture here"),
                    None => "the capture started after this connection".into(),
                };
                if self.sides[si].current.is_some() {
                    if let Some(d) = self.current_mut(dir) {
                        d.truncate(what.clone());
                    }
                    self.warn_current(dir, what.clone());
                    self.finish_message(dir, false, out);
                }
                self.sides[si].buf.clear();
                self.lose_sync(dir, what);
            }
        }
    }

    fn lose_body_bytes(&mut self, dir: Dir, n: u64, warning: String) {
        self.sides[side_index(dir)].frozen = true;
        if let Some(d) = self.current_mut(dir) {
            d.body_size += n;
            d.truncate(warning.clone());
        }
        self.warn_current(dir, warning);
    }

    fn end(&mut self, dir: Dir, reason: EndReason, out: &mut Vec<Done>) {
        let si = side_index(dir);
        let state = self.sides[si].state;
        match state {
            State::Close if reason == EndReason::Fin => self.finish_message(dir, true, out),
            State::Start | State::Resync | State::Dead => {}
            State::Head if self.sides[si].buf.is_empty() => {}
            State::Head => {
                let n = self.sides[si].buf.len();
                self.stats.bad_heads += 1;
                tracing::debug!(
                    direction = dir_name(dir),
                    bytes = n,
                    "Connection ended inside a message head."
                );
            }
            State::Length(0) => self.finish_message(dir, true, out),
            _ => {
                let why = match reason {
                    EndReason::Fin => "the connection closed before the message ended".to_string(),
                    other => format!("the message was cut off (connection {})", other.as_str()),
                };
                if let Some(d) = self.current_mut(dir) {
                    d.truncate(why.clone());
                }
                self.warn_current(dir, why);
                self.finish_message(dir, false, out);
            }
        }
        self.sides[si].state = State::Dead;
        self.sides[si].buf.clear();
        // Whatever still waits for this direction will never get it.
        for p in &mut self.pending {
            match dir {
                Dir::Request => p.req_done = true,
                Dir::Response => {
                    p.resp_done = true;
                    if p.response.is_none() {
                        let w = format!(
                            "no response was captured before the connection ended ({})",
                            reason.as_str()
                        );
                        if !p.warnings.contains(&w) {
                            p.warnings.push(w);
                        }
                    }
                }
            }
        }
        self.emit_ready(out);
    }
}

fn dir_name(dir: Dir) -> &'static str {
    match dir {
        Dir::Request => "request",
        Dir::Response => "response",
    }
}

fn done(p: Pending) -> Done {
    Done {
        index: p.index,
        request: p.request,
        response: p.response,
        start_ns: p.start_ns,
        warnings: p.warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(dir: Dir, bytes: &[u8]) -> Event {
        Event::Data {
            dir,
            ts_ns: 1_700_000_000_000_000_000,
            bytes: bytes.to_vec(),
        }
    }

    fn end(dir: Dir) -> Event {
        Event::End {
            dir,
            ts_ns: 1_700_000_000_000_000_001,
            reason: EndReason::Fin,
        }
    }

    /// Feeds the request stream in pieces cut at `cuts`, then the response stream likewise, then
    /// both ends (the order of a simple client: all requests, then all responses).
    fn feed(req: &[u8], resp: &[u8], cuts: &[usize]) -> (Vec<Done>, Connection) {
        let mut c = Connection::new(Limits::default());
        let mut out = Vec::new();
        for (dir, bytes) in [(Dir::Request, req), (Dir::Response, resp)] {
            let mut last = 0;
            for &cut in cuts.iter().filter(|&&c| c > 0 && c < bytes.len()) {
                c.handle(data(dir, &bytes[last..cut]), &mut out);
                last = cut;
            }
            c.handle(data(dir, &bytes[last..]), &mut out);
        }
        c.handle(end(Dir::Request), &mut out);
        c.handle(end(Dir::Response), &mut out);
        (out, c)
    }

    fn summary(done: &[Done]) -> Vec<String> {
        done.iter()
            .map(|d| {
                let r = d.request.as_ref();
                let s = d.response.as_ref();
                format!(
                    "{} {} {:?} {} | {:?} {:?} {} | {:?}",
                    r.and_then(|r| r.method.clone()).unwrap_or_default(),
                    r.and_then(|r| r.path.clone()).unwrap_or_default(),
                    r.map(|r| String::from_utf8_lossy(&r.body).into_owned()),
                    r.is_some_and(|r| r.ended),
                    s.and_then(|s| s.status),
                    s.map(|s| String::from_utf8_lossy(&s.body).into_owned()),
                    s.is_some_and(|s| s.ended),
                    d.warnings,
                )
            })
            .collect()
    }

    const KEEPALIVE_REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: svc:8080\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\n\
POST /b?q=1 HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n\
HEAD /d HTTP/1.1\r\nHost: svc\r\n\r\n";
    const KEEPALIVE_RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nA1\
HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nB2B2\r\n0\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";

    fn keepalive_want() -> Vec<String> {
        vec![
            r#"GET /a Some("") true | Some(200) Some("A1") true | []"#.to_string(),
            r#"POST /b?q=1 Some("hello") true | Some(201) Some("B2B2") true | []"#.to_string(),
            r#"POST /c Some("abcde") true | Some(204) Some("") true | []"#.to_string(),
            r#"HEAD /d Some("") true | Some(200) Some("") true | []"#.to_string(),
        ]
    }

    #[test]
    fn keep_alive_stream_split_at_every_byte_boundary() {
        let want = keepalive_want();
        for cut in 0..KEEPALIVE_REQ.len().max(KEEPALIVE_RESP.len()) {
            let (done, c) = feed(KEEPALIVE_REQ, KEEPALIVE_RESP, &[cut]);
            assert_eq!(summary(&done), want, "cut at {cut}");
            assert_eq!(c.buffered_bytes(), 0);
        }
        // And one byte at a time.
        let every: Vec<usize> = (1..KEEPALIVE_REQ.len().max(KEEPALIVE_RESP.len())).collect();
        let (done, _) = feed(KEEPALIVE_REQ, KEEPALIVE_RESP, &every);
        assert_eq!(summary(&done), want);
        let first = done[0].request.as_ref().unwrap();
        assert_eq!(first.authority.as_deref(), Some("svc:8080"));
        assert_eq!(
            first.headers.as_ref().unwrap()["x-multi"],
            vec!["1".to_string(), "2".to_string()]
        );
        assert_eq!(
            done[2].request.as_ref().unwrap().trailers,
            Some(Headers::from([("x-trailer".into(), vec!["t".into()])]))
        );
        assert_eq!(
            done.iter().map(|d| d.index).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn responses_interleaved_with_requests_pair_in_order() {
        // Pipelined: all requests written at once, responses after; here interleaved per message.
        let mut c = Connection::new(Limits::default());
        let mut out = Vec::new();
        c.handle(
            data(
                Dir::Request,
                b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
            ),
            &mut out,
        );
        c.handle(
            data(
                Dir::Response,
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1",
            ),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        c.handle(data(Dir::Request, b"GET /3 HTTP/1.1\r\n\r\n"), &mut out);
        c.handle(
            data(Dir::Response, b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2HTTP/1.1 404 Not Found\r\ncontent-length: 1\r\n\r\n3"),
            &mut out,
        );
        let s = summary(&out);
        assert_eq!(s.len(), 3);
        assert!(
            s[1].starts_with("GET /2") && s[1].contains(r#"Some("2")"#),
            "{s:?}"
        );
        assert!(
            s[2].starts_with("GET /3") && s[2].contains("Some(404)"),
            "{s:?}"
        );
    }

    #[test]
    fn close_delimited_response_ends_with_the_connection() {
        let (done, _) = feed(
            b"GET /old HTTP/1.0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil\r\nthe end",
            &[30],
        );
        assert_eq!(
            summary(&done),
            [r#"GET /old Some("") true | Some(200) Some("until\r\nthe end") true | []"#]
        );
        // Reset instead of FIN: the body may be cut.
        let mut c = Connection::new(Limits::default());
        let mut out = Vec::new();
        c.handle(data(Dir::Request, b"GET / HTTP/1.0\r\n\r\n"), &mut out);
        c.handle(
            data(Dir::Response, b"HTTP/1.0 200 OK\r\n\r\npart"),
            &mut out,
        );
        c.handle(
            Event::End {
                dir: Dir::Response,
                ts_ns: 0,
                reason: EndReason::Reset,
            },
            &mut out,
        );
        let r = out[0].response.as_ref().unwrap();
        assert!(!r.ended && r.body_truncated, "{r:?}");
        assert_eq!(r.body, b"part");
    }

    #[test]
    fn expect_100_continue_pairs_the_final_response() {
        let req =
            b"PUT /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        let mut c = Connection::new(Limits::default());
        let mut out = Vec::new();
        c.handle(data(Dir::Request, req), &mut out);
        c.handle(
            data(Dir::Response, b"HTTP/1.1 100 Continue\r\n\r\n"),
            &mut out,
        );
        c.handle(data(Dir::Request, b"data"), &mut out);
        c.handle(
            data(
                Dir::Response,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ),
            &mut out,
        );
        assert_eq!(
            summary(&out),
            [r#"PUT /up Some("data") true | Some(200) Some("ok") true | []"#]
        );
        assert_eq!(c.stats.interim_responses, 1);
    }

    #[test]
    fn early_response_waits_for_the_request_body() {
        let mut c = Connection::new(Limits::default());
        let mut out = Vec::new();
        c.handle(
            data(
                Dir::Request,
                b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc",
            ),
            &mut out,
        );
        c.handle(
            data(
                Dir::Response,
                b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n",
            ),
            &mut out,
        );
        assert!(out.is_empty());
        c.handle(data(Dir::Request, b"def"), &mut out);
        assert_eq!(
            summary(&out),
            [r#"POST / Some("abcdef") true | Some(413) Some("") true | []"#]
        );
    }

    #[test]
    fn http2_and_tls_are_detected_not_parsed() {
        let (done, mut c) = feed(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
            b"\x00\x00\x12\x04",
            &[3, 10],
        );
        assert!(done.is_empty());
        assert_eq!(c.protocol(), Protocol::Http2);
        assert_eq!(c.take_detected(), Some(Protocol::Http2));
        assert_eq!(c.take_detected(), None, "reported once");

        let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        let (done, c) = feed(hello, b"\x16\x03\x03\x00\x7a", &[1]);
        assert!(done.is_empty());
        assert_eq!(c.protocol(), Protocol::Tls);
    }

    #[test]
    fn upgrade_stops_parsing_after_101() {
        let (done, c) = feed(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
            &[],
        );
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].response.as_ref().unwrap().status, Some(101));
        assert!(
            done[0].warnings[0].contains("switched to websocket"),
            "{:?}",
            done[0].warnings
        );
        assert_eq!(c.protocol(), Protocol::Upgraded);
    }

    #[test]
    fn gap_inside_a_sized_body_keeps_framing() {
        let mut c = Connection::new(Limits::default());
        let mut out = Vec::new();
        c.handle(
            data(
                Dir::Request,
                b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n012",
            ),
            &mut out,
        );
        c.handle(
            Event::Gap {
                dir: Dir::Request,
                ts_ns: 0,
                len: Some(4),
            },
            &mut out,
        );
        c.handle(
            data(Dir::Request, b"789GET /next HTTP/1.1\r\n\r\n"),
            &mut out,
        );
        c.handle(data(Dir::Response, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), &mut out);
        assert_eq!(out.len(), 2);
        let r = out[0].request.as_ref().unwrap();
        assert_eq!(
            (r.body.as_slice(), r.body_size, r.body_truncated),
            (&b"012"[..], 10, true)
        );
        assert!(
            out[0].warnings[0].contains("4 request body bytes are missing"),
            "{:?}",
            out[0].warnings
        );
        assert_eq!(
            out[1].request.as_ref().unwrap().path.as_deref(),
            Some("/next")
        );
        assert!(out[1].warnings.is_empty());
    }

    #[test]
    fn gap_across_a_boundary_resyncs_on_the_next_message() {
        let mut c = Connection::new(Limits::default());
        let mut out = Vec::new();
        c.handle(
            data(
                Dir::Request,
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            ),
            &mut out,
        );
        c.handle(
            data(
                Dir::Response,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ),
            &mut out,
        );
        c.handle(
            Event::Gap {
                dir: Dir::Request,
                ts_ns: 0,
                len: Some(40),
            },
            &mut out,
        );
        c.handle(
            data(
                Dir::Request,
                b"junk line\r\nmore junk POST\r\nGET /after HTTP/1.1\r\n\r\n",
            ),
            &mut out,
        );
        c.handle(
            data(
                Dir::Response,
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz",
            ),
            &mut out,
        );
        let s = summary(&out);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[0].contains("40 bytes are missing"), "{s:?}");
        assert!(!out[0].request.as_ref().unwrap().ended);
        assert!(s[1].starts_with("GET /after"), "{s:?}");
        assert!(
            out[1].warnings[0].contains("found by searching"),
            "{:?}",
            out[1].warnings
        );
        assert!(c.stats.resync_skipped_bytes > 0);
    }

    #[test]
    fn mid_stream_start_finds_the_next_message() {
        let mut c = Connection::new(Limits::default());
        let mut out = Vec::new();
        for dir in [Dir::Request, Dir::Response] {
            c.handle(
                Event::Gap {
                    dir,
                    ts_ns: 0,
                    len: None,
                },
                &mut out,
            );
        }
        c.handle(
            data(
                Dir::Response,
                b"tail of an old body\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
            ),
            &mut out,
        );
        c.handle(
            data(Dir::Request, b"ody}GET /new HTTP/1.1\r\n\r\n"),
            &mut out,
        );
        // "ody}GET" is not a line start: the request is found only on a line boundary.
        assert_eq!(out.len(), 1);
        assert!(out[0].request.is_none());
        assert!(out[0]
            .warnings
            .iter()
            .any(|w| w.contains("no request was captured")));
        c.handle(
            data(Dir::Request, b"\r\nGET /next HTTP/1.1\r\n\r\n"),
            &mut out,
        );
        c.handle(
            data(
                Dir::Response,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1].request.as_ref().unwrap().path.as_deref(),
            Some("/next")
        );
    }

    #[test]
    fn bodies_are_capped_and_flagged() {
        let mut c = Connection::new(Limits {
            max_body_bytes: 4,
            ..Limits::default()
        });
        let mut out = Vec::new();
        c.handle(
            data(
                Dir::Request,
                b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\n0123456789",
            ),
            &mut out,
        );
        c.handle(
            data(
                Dir::Response,
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            ),
            &mut out,
        );
        let r = out[0].request.as_ref().unwrap();
        assert_eq!(
            (r.body.as_slice(), r.body_size, r.body_truncated, r.ended),
            (&b"0123"[..], 10, true, true)
        );
    }

    #[test]
    fn garbage_and_oversized_heads_never_panic_and_are_counted() {
        let mut c = Connection::new(Limits {
            max_head_bytes: 100,
            ..Limits::default()
        });
        let mut out = Vec::new();
        c.handle(
            data(Dir::Request, b"GET /\x01bad HTTP/1.1\r\n\r\n"),
            &mut out,
        );
        c.handle(data(Dir::Request, &[b'x'; 500]), &mut out);
        let mut big = b"GET /big HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b"a: b\r\n".as_slice(), 50).flatten());
        c.handle(data(Dir::Request, &big), &mut out);
        c.handle(
            data(Dir::Request, b"\r\nGET /ok HTTP/1.1\r\n\r\n"),
            &mut out,
        );
        c.handle(
            data(
                Dir::Response,
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            ),
            &mut out,
        );
        assert!(c.stats.bad_heads >= 2, "{:?}", c.stats);
        assert_eq!(
            out.last()
                .unwrap()
                .request
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/ok")
        );
        assert!(c.buffered_bytes() <= 200);
    }

    #[test]
    fn requests_without_responses_are_emitted_at_the_end_with_a_warning() {
        let (done, _) = feed(b"GET /lost HTTP/1.1\r\n\r\n", b"", &[]);
        assert_eq!(done.len(), 1);
        assert!(done[0].response.is_none());
        assert!(done[0].warnings[0].contains("no response was captured"));
    }

    #[test]
    fn random_bytes_and_splits_never_panic_and_stay_bounded() {
        let mut rng = crate::capture::flows::tests::Rng(42);
        let pieces: [&[u8]; 8] = [
            b"GET / HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"content-length: 3\r\n",
            b"transfer-encoding: chunked\r\n",
            b"\r\n",
            b"5;x\r\nab",
            b"\x16\x03\x01",
            b"\x00\xff garbage \n",
        ];
        for _ in 0..2000 {
            let mut c = Connection::new(Limits {
                max_head_bytes: 256,
                max_body_bytes: 64,
                max_pending: 4,
            });
            let mut out = Vec::new();
            for _ in 0..rng.below(40) {
                let dir = if rng.below(2) == 0 {
                    Dir::Request
                } else {
                    Dir::Response
                };
                let event = match rng.below(10) {
                    0 => Event::Gap {
                        dir,
                        ts_ns: 0,
                        len: if rng.below(2) == 0 {
                            None
                        } else {
                            Some(rng.below(100) as u64)
                        },
                    },
                    1 => Event::Data {
                        dir,
                        ts_ns: 0,
                        bytes: (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
                    },
                    _ => Event::Data {
                        dir,
                        ts_ns: 0,
                        bytes: pieces[rng.below(pieces.len())].to_vec(),
                    },
                };
                c.handle(event, &mut out);
                assert!(
                    c.buffered_bytes() <= 2 * 256 + 4 * 2 * 64,
                    "{}",
                    c.buffered_bytes()
                );
            }
            for dir in [Dir::Request, Dir::Response] {
                c.handle(
                    Event::End {
                        dir,
                        ts_ns: 0,
                        reason: EndReason::Reset,
                    },
                    &mut out,
                );
            }
            assert_eq!(c.buffered_bytes(), 0);
            assert!(c.pending.is_empty(), "everything is emitted at the end");
        }
    }
}
