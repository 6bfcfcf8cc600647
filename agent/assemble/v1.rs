//! Best-effort reassembly of the seed filter's format, which names neither the stream nor the
//! direction of an event.
//!
//! What makes it possible: all events of one stream run on one Envoy worker thread, and a Lua
//! coroutine only yields inside the `bodyChunks()` iterator. So `started` and the headers line are
//! consecutive on a thread, as are `showing bodyChunks` and the chunk text (or `finished`, or the
//! getBytes error). What cannot be known: which of several open streams on a thread a chunk belongs
//! to, and, in the body-only variant, whether a `started` is a response or another stream's request.
//! With headers (the path-filter variant) the direction of every `started` is known, so records are
//! exact unless several streams overlap on a thread, which is detected and flagged. Without headers
//! (the body-only variant) directions are paired by alternation, which no event in the log can
//! confirm: concurrent requests on one worker commonly log whole, back to back, before any response
//! (seen with a real Envoy), and a log may begin mid-exchange. Every body-only record therefore
//! says that its pairing is inferred.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{new_exchange, rfc3339_from_log_time, FileContext, Limits};
use crate::envoy::LuaMessage;
use crate::marker::v1::{parse_headers, Event};
use crate::record::{Direction, Exchange, Headers, Source};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct DirRef {
    key: u64,
    response: bool,
}

#[derive(Serialize, Deserialize)]
struct StartInfo {
    /// The exchange this `started` opens, if it turns out to be a request (or an orphan response).
    exchange: Exchange,
    offset: u64,
    time: String,
    end: u64,
    response_hint: bool,
    /// Log lines were lost after this `started` (see [`Assembler::lines_lost`]).
    #[serde(default)]
    gap: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct ThreadState {
    /// Directions started and not yet ended, oldest first.
    open: Vec<DirRef>,
    /// Exchanges whose request ended and whose response has not started.
    awaiting: VecDeque<u64>,
    /// After `showing bodyChunks`: the direction the next text is attributed to.
    showing: Option<DirRef>,
    /// A `started` whose direction is decided by the next event (headers, or not).
    start: Option<StartInfo>,
    /// `meta logPayload found` was seen: the next `started` is a response.
    meta_found: bool,
}

#[derive(Serialize, Deserialize)]
struct Pending {
    exchange: Exchange,
    /// Wall-clock time (ms) the exchange was opened, for expiry.
    opened_ms: i64,
    uncertain: bool,
    failed: bool,
    /// A body's raw bytes may have been changed by the runtime or the JSON layout.
    altered_body: bool,
    /// Log lines were lost while the exchange was open: it is never complete.
    #[serde(default)]
    gap: bool,
}

impl Pending {
    /// Log lines were lost while the exchange was open: warned once, never complete.
    fn flag_gap(&mut self) {
        if !self.gap {
            self.gap = true;
            self.exchange.warn(
                "lua-v1: log lines were lost while this exchange was open (a log file was \
                 deleted or truncated before meshtap read it): parts of it may be missing, \
                 and since the v1 format names no stream, others may belong to another exchange",
            );
        }
    }
}

/// The v1 assembler's whole state is serializable: the agent's checkpoint holds it, so an
/// exchange that spans a checkpoint is neither lost nor emitted twice after a restart.
#[derive(Serialize, Deserialize)]
pub struct Assembler {
    pub(super) limits: Limits,
    #[serde(with = "crate::checkpoint::encoding::map_as_pairs")]
    threads: HashMap<Option<u64>, ThreadState>,
    exchanges: BTreeMap<u64, Pending>,
    next_key: u64,
    /// Wall-clock now (ms), set by the caller; stamps new exchanges for expiry.
    #[serde(skip)]
    pub now_ms: i64,
    #[serde(skip)]
    pub unattributed: u64,
    #[serde(skip)]
    pub script_errors: u64,
    #[serde(skip)]
    pub evicted: u64,
    #[serde(skip)]
    pub expired: u64,
}

impl Assembler {
    pub fn new(limits: Limits) -> Self {
        Assembler {
            limits,
            threads: HashMap::new(),
            exchanges: BTreeMap::new(),
            next_key: 0,
            now_ms: 0,
            expired: 0,
            unattributed: 0,
            script_errors: 0,
            evicted: 0,
        }
    }

    pub fn push(
        &mut self,
        ctx: &FileContext,
        msg: &LuaMessage<'_>,
        event: Event<'_>,
        out: &mut dyn FnMut(Exchange),
    ) {
        let thread = msg.thread;
        let mut st = self.threads.remove(&thread).unwrap_or_default();
        // A `started` is resolved by the event right after it on the same thread.
        if let Some(start) = st.start.take() {
            match event {
                Event::Headers(block) => {
                    let mut headers = Headers::new();
                    parse_headers(block, &mut headers);
                    let response = if headers.contains_key(":status") {
                        true
                    } else if headers.contains_key(":method") {
                        false
                    } else {
                        start.response_hint
                    };
                    self.open(thread, &mut st, start, response, Some(headers), out);
                    self.threads.insert(thread, st);
                    return;
                }
                _ => {
                    let response = start.response_hint;
                    self.open(thread, &mut st, start, response, None, out);
                }
            }
        }
        // `showing bodyChunks` not followed by text: that chunk was the empty end-of-stream one.
        if !matches!(
            event,
            Event::Text(_) | Event::Finished | Event::ScriptError(_)
        ) {
            if let Some(target) = st.showing.take() {
                self.end(&mut st, target, msg, out);
            }
        }
        match event {
            Event::Started => {
                let awaiting = !st.awaiting.is_empty();
                let exchange = new_exchange(ctx, Source::LuaV1, msg);
                st.start = Some(StartInfo {
                    exchange,
                    offset: msg.offset,
                    time: msg.time.to_string(),
                    end: msg.end,
                    response_hint: st.meta_found || awaiting,
                    gap: false,
                });
                st.meta_found = false;
            }
            Event::Headers(block) => {
                // Headers always directly follow `started`; one arriving alone has no owner.
                let _ = block;
                self.unattributed += 1;
            }
            Event::ShowingChunk => match st.open.last() {
                Some(&target) => st.showing = Some(target),
                None => self.unattributed += 1,
            },
            Event::Text(text) => match st.showing.take() {
                Some(target) => {
                    let cap = self.limits.max_body_bytes;
                    if let Some(p) = self.exchanges.get_mut(&target.key) {
                        let dir = match target.response {
                            true => p.exchange.response.as_ref(),
                            false => p.exchange.request.as_ref(),
                        };
                        p.altered_body |= body_may_be_altered(ctx, msg, text, dir);
                    }
                    if let Some(dir) = self.direction(target) {
                        dir.push_body(text, cap);
                        if msg.truncated {
                            dir.truncate("a body chunk's log line was cut before meshtap read it");
                        }
                    }
                }
                None => self.unattributed += 1,
            },
            Event::Finished => match st.showing.take().or(st.open.last().copied()) {
                Some(target) => self.end(&mut st, target, msg, out),
                None => self.unattributed += 1,
            },
            Event::ScriptError(text) => {
                self.script_errors += 1;
                match st.showing.take().or(st.open.last().copied()) {
                    Some(target) => {
                        let reason = format!(
                            "the seed filter's Lua script failed and logged no more of this body: {}",
                            String::from_utf8_lossy(text)
                        );
                        if let Some(p) = self.exchanges.get_mut(&target.key) {
                            p.failed = true;
                        }
                        if let Some(dir) = self.direction(target) {
                            dir.truncate(reason);
                        }
                        self.end(&mut st, target, msg, out);
                    }
                    None => self.unattributed += 1,
                }
            }
            Event::MetaFound => st.meta_found = true,
            Event::FindPath => {}
        }
        self.threads.insert(thread, st);
    }

    fn direction(&mut self, target: DirRef) -> Option<&mut Direction> {
        let ex = &mut self.exchanges.get_mut(&target.key)?.exchange;
        match target.response {
            true => ex.response.as_mut(),
            false => ex.request.as_mut(),
        }
    }

    /// Opens a direction whose `started` was at `start`.
    fn open(
        &mut self,
        thread: Option<u64>,
        st: &mut ThreadState,
        start: StartInfo,
        response: bool,
        headers: Option<Headers>,
        out: &mut dyn FnMut(Exchange),
    ) {
        let mut contended = false;
        let gap = start.gap;
        let key = if response {
            contended |= st.awaiting.len() > 1;
            match st.awaiting.pop_front() {
                Some(key) => key,
                // The request is still open (its end was not logged) or was never logged.
                None => match st.open.iter().position(|d| !d.response) {
                    Some(i) => {
                        let req = st.open.remove(i);
                        if let Some(dir) = self.direction(req) {
                            dir.ended = true;
                        }
                        req.key
                    }
                    None => self.insert(start.exchange, out),
                },
            }
        } else {
            self.insert(start.exchange, out)
        };
        let no_body = headers
            .as_ref()
            .is_some_and(|h| headers_say_no_body(h, response));
        if gap {
            if let Some(p) = self.exchanges.get_mut(&key) {
                p.flag_gap();
            }
        }
        let mut dir = Direction {
            headers,
            start_time: Some(rfc3339_from_log_time(&start.time)),
            ..Default::default()
        };
        dir.lift_pseudo_headers();
        if let Some(p) = self.exchanges.get_mut(&key) {
            match response {
                true => p.exchange.response = Some(dir),
                false => p.exchange.request = Some(dir),
            }
        }
        let target = DirRef { key, response };
        st.open.push(target);
        contended |= st.open.len() > 1;
        if contended {
            let involved: Vec<u64> = st
                .open
                .iter()
                .map(|d| d.key)
                .chain(st.awaiting.iter().copied())
                .chain([key])
                .collect();
            for k in involved {
                self.mark_uncertain(k, thread);
            }
        }
        // The headers variant logs no end marker for a direction without a body.
        if no_body {
            let end_msg = LuaMessage {
                layout: crate::envoy::Layout::Envoy,
                level: crate::envoy::Level::Warning,
                thread,
                time: &start.time,
                text: b"",
                offset: start.offset,
                end: start.end,
                truncated: false,
                altered: false,
                file_seq: 0,
            };
            self.end(st, target, &end_msg, out);
        }
    }

    fn insert(&mut self, exchange: Exchange, out: &mut dyn FnMut(Exchange)) -> u64 {
        if self.exchanges.len() >= self.limits.max_pending {
            self.evict_oldest(out);
        }
        let key = self.next_key;
        self.next_key += 1;
        self.exchanges.insert(
            key,
            Pending {
                exchange,
                opened_ms: self.now_ms,
                uncertain: false,
                failed: false,
                altered_body: false,
                gap: false,
            },
        );
        key
    }

    /// Log lines were lost (a file deleted or truncated before meshtap read it): every exchange
    /// open now may miss events, and since the format names no stream, the events after the gap
    /// may be paired with the wrong one (a `started` whose headers were lost opens a direction
    /// without headers, which then ends as if it had none). Each open exchange, and each
    /// `started` not yet resolved, is flagged and will not be complete. The threads' states
    /// are kept: they are still the best guess for what follows.
    pub fn lines_lost(&mut self) {
        for p in self.exchanges.values_mut() {
            p.flag_gap();
        }
        for st in self.threads.values_mut() {
            if let Some(start) = &mut st.start {
                start.gap = true;
            }
        }
    }

    fn mark_uncertain(&mut self, key: u64, thread: Option<u64>) {
        if let Some(p) = self.exchanges.get_mut(&key) {
            if !p.uncertain {
                p.uncertain = true;
                let thread = thread.map_or_else(|| "?".to_string(), |t| t.to_string());
                p.exchange.warn(format!(
                    "lua-v1: several streams were in flight on Envoy thread {thread}; this record may \
                     mix body chunks or pair the wrong request and response (the v1 format carries no stream id)"
                ));
            }
        }
    }

    /// Ends a direction; an exchange whose response ended (and whose request is not open) is emitted.
    fn end(
        &mut self,
        st: &mut ThreadState,
        target: DirRef,
        msg: &LuaMessage<'_>,
        out: &mut dyn FnMut(Exchange),
    ) {
        st.open.retain(|d| *d != target);
        if st.showing == Some(target) {
            st.showing = None;
        }
        let Some(p) = self.exchanges.get_mut(&target.key) else {
            return;
        };
        let dir = match target.response {
            true => p.exchange.response.as_mut(),
            false => p.exchange.request.as_mut(),
        };
        if let Some(dir) = dir {
            dir.ended = true;
            if !msg.time.is_empty() {
                dir.end_time = Some(rfc3339_from_log_time(msg.time));
            }
        }
        if !target.response {
            if p.exchange.response.is_none() {
                st.awaiting.push_back(target.key);
            }
            return;
        }
        let request_open = st.open.iter().any(|d| d.key == target.key);
        if !request_open {
            let p = self.exchanges.remove(&target.key).expect("present");
            out(finish(p));
        }
    }

    fn evict_oldest(&mut self, out: &mut dyn FnMut(Exchange)) {
        let warning = format!(
            "emitted before its end: more than {} exchanges were pending",
            self.limits.max_pending
        );
        self.evict_oldest_with(warning, out);
    }

    /// Exchanges waiting for their end.
    pub fn pending_len(&self) -> usize {
        self.exchanges.len()
    }

    /// Emits the oldest pending exchange early, with `warning`.
    pub fn evict_oldest_with(&mut self, warning: String, out: &mut dyn FnMut(Exchange)) {
        if let Some(&key) = self.exchanges.keys().next() {
            self.emit_early(key, warning, out);
            self.evicted += 1;
        }
    }

    /// Emits, incomplete, every exchange opened more than `max_age_ms` before `now_ms`.
    pub fn expire(&mut self, max_age_ms: i64, out: &mut dyn FnMut(Exchange)) {
        let deadline = self.now_ms - max_age_ms;
        let old: Vec<u64> = self
            .exchanges
            .iter()
            .filter(|(_, p)| p.opened_ms < deadline)
            .map(|(k, _)| *k)
            .collect();
        for key in old {
            let warning = format!(
                "expired: the exchange had not ended {}s after it started",
                max_age_ms / 1000
            );
            self.emit_early(key, warning, out);
            self.expired += 1;
        }
    }

    /// Emits a pending exchange before its end, forgetting every reference to it.
    fn emit_early(&mut self, key: u64, warning: String, out: &mut dyn FnMut(Exchange)) {
        let Some(mut p) = self.exchanges.remove(&key) else {
            return;
        };
        for st in self.threads.values_mut() {
            st.open.retain(|d| d.key != key);
            st.awaiting.retain(|k| *k != key);
            if st.showing.is_some_and(|d| d.key == key) {
                st.showing = None;
            }
        }
        p.exchange.warn(warning);
        out(finish(p));
    }

    /// The log ended right after `showing bodyChunks`: the empty end-of-body chunk, or a chunk
    /// whose text was never logged. `content-length` tells which when present; the body-only
    /// variant ends a direction with `finished`, so there the direction did not end.
    fn end_at_eof(
        &mut self,
        st: &mut ThreadState,
        target: DirRef,
        thread: Option<u64>,
        out: &mut dyn FnMut(Exchange),
    ) {
        let Some(dir) = self.direction(target) else {
            return;
        };
        let Some(headers) = &dir.headers else {
            return;
        };
        let length = headers
            .get("content-length")
            .and_then(|v| v.first())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match length {
            Some(length) if dir.body_size < length => {
                dir.truncate(format!(
                    "the log ended after {} of {length} body bytes (content-length)",
                    dir.body_size
                ));
                return;
            }
            Some(_) => {}
            None => {
                if let Some(p) = self.exchanges.get_mut(&target.key) {
                    p.exchange.warn(
                        "the log ended right after `showing bodyChunks`: if a last body chunk followed, \
                         it was not logged",
                    );
                }
            }
        }
        let time = String::new();
        let msg = LuaMessage {
            layout: crate::envoy::Layout::Envoy,
            level: crate::envoy::Level::Warning,
            thread,
            time: &time,
            text: b"",
            offset: 0,
            end: 0,
            truncated: false,
            altered: false,
            file_seq: 0,
        };
        self.end(st, target, &msg, out);
    }

    /// End of input: resolve what is pending, then emit every exchange left, oldest first.
    pub fn finish(&mut self, out: &mut dyn FnMut(Exchange)) {
        let threads: Vec<_> = self.threads.keys().copied().collect();
        for thread in threads {
            let mut st = self.threads.remove(&thread).expect("present");
            if let Some(start) = st.start.take() {
                let response = start.response_hint;
                self.open(thread, &mut st, start, response, None, out);
            }
            if let Some(target) = st.showing.take() {
                self.end_at_eof(&mut st, target, thread, out);
            }
        }
        while let Some((_, mut p)) = self.exchanges.pop_first() {
            p.exchange.warn("the log ended before this exchange did");
            out(finish(p));
        }
    }
}

/// The headers variant has no end marker, so a direction without a body must be recognised from
/// its headers. Envoy's HTTP/1 codec removes `transfer-encoding` before filters run, so a missing
/// `content-length` does not mean "no body": only `content-length: 0`, a bodiless status, or a
/// method that carries no body does. Anything else waits for its end-of-body chunk (or, if it had
/// no body after all, is ended by its response or the end of the log).
fn headers_say_no_body(headers: &Headers, response: bool) -> bool {
    let first = |name: &str| headers.get(name).and_then(|v| v.first());
    if first("content-length").is_some_and(|len| len.trim() == "0") {
        return true;
    }
    if first("content-length").is_some() {
        return false;
    }
    if response {
        first(":status").is_some_and(|s| matches!(s.as_str(), "204" | "304") || s.starts_with('1'))
    } else {
        first(":method")
            .is_some_and(|m| matches!(m.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS" | "TRACE"))
    }
}

/// Whether a v1 chunk's bytes may differ from what Envoy saw. The seed logs bodies raw: a runtime
/// splits them into lines (containerd drops `\r` before `\n`), docker json-file and Istio's JSON
/// layout replace invalid UTF-8. Text without control bytes survives all of them; a raw Envoy
/// stderr file in a text layout keeps every byte.
fn body_may_be_altered(
    ctx: &FileContext,
    msg: &LuaMessage<'_>,
    text: &[u8],
    dir: Option<&Direction>,
) -> bool {
    if msg.altered {
        return true;
    }
    let lossless_file = ctx.format == Some(crate::decode::Format::Raw)
        && msg.layout != crate::envoy::Layout::IstioJson;
    if lossless_file {
        return false;
    }
    let multipart = dir
        .and_then(|d| d.headers.as_ref())
        .and_then(|h| h.get("content-type"))
        .and_then(|v| v.first())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/"));
    let binary = text
        .iter()
        .any(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7f)
        || std::str::from_utf8(text).map_or(true, |t| t.contains('\u{fffd}'));
    multipart || binary
}

fn finish(mut p: Pending) -> Exchange {
    let ex = &mut p.exchange;
    if p.altered_body {
        ex.warn(
            "lua-v1 logs raw body bytes and this body looks binary or uses CR LF: the container \
             runtime or Envoy's JSON log layout may have changed it (containerd drops \\r before \\n; \
             docker json-file and the JSON layout replace invalid UTF-8), so it may not be byte-exact \
             (meshtap's lua-v2 filter base64-encodes bodies)",
        );
    }
    let has_headers = |d: &Option<Direction>| d.as_ref().is_some_and(|d| d.headers.is_some());
    if !has_headers(&ex.request) && !has_headers(&ex.response) {
        let thread = ex
            .log
            .thread
            .map_or_else(|| "?".to_string(), |t| t.to_string());
        ex.warn(format!(
            "lua-v1 body-only: request and response were paired by the order of events on Envoy \
             thread {thread}; the format names neither stream nor direction, so under concurrent \
             traffic (or a log that begins mid-exchange) they may belong to different exchanges"
        ));
    }
    let ended = |d: &Option<Direction>| d.as_ref().is_some_and(|d| d.ended);
    ex.complete = ended(&ex.request) && ended(&ex.response) && !p.failed && !p.gap;
    if ex.request.is_none() {
        ex.warn("the request was not logged");
    }
    p.exchange
}
