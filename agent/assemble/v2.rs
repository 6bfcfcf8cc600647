//! Exact reassembly of the v2 format: events are keyed by stream id, checked by sequence number.

use std::collections::HashMap;

use super::{new_exchange, rfc3339_from_ms, FileContext, Limits};
use crate::envoy::LuaMessage;
use crate::marker::v2::{decode_body, decode_headers, Dir, Event, Kind};
use crate::record::{Direction, Exchange, Headers, Source};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Pending {
    exchange: Exchange,
    /// Wall-clock time (ms) the exchange was opened, for expiry.
    opened_ms: i64,
    /// Next expected sequence number per direction (request, response).
    next_seq: [u64; 2],
    started: [bool; 2],
    /// Set when events were lost or unreadable: the exchange cannot be complete.
    damaged: bool,
}

/// Serializable, so the agent's checkpoint can hold exchanges that span it.
#[derive(Serialize, Deserialize)]
pub struct Assembler {
    pub(super) limits: Limits,
    pending: HashMap<String, Pending>,
    #[serde(skip)]
    scratch: Vec<u8>,
    /// Wall-clock now (ms), set by the caller; stamps new exchanges for expiry.
    #[serde(skip)]
    pub now_ms: i64,
    #[serde(skip)]
    pub evicted: u64,
    #[serde(skip)]
    pub expired: u64,
}

impl Assembler {
    pub fn new(limits: Limits) -> Self {
        Assembler {
            limits,
            pending: HashMap::new(),
            scratch: Vec::new(),
            now_ms: 0,
            evicted: 0,
            expired: 0,
        }
    }

    pub fn push(
        &mut self,
        ctx: &FileContext,
        msg: &LuaMessage<'_>,
        event: Event<'_>,
        out: &mut dyn FnMut(Exchange),
    ) {
        let d = match event.dir {
            Dir::Request => 0,
            Dir::Response => 1,
        };
        // A new request under an id still pending means its earlier exchange never finished.
        if matches!(event.kind, Kind::Start { .. }) {
            if let Some(old) = self.pending.get(event.sid) {
                if old.started[d] {
                    let mut old = self.pending.remove(event.sid).expect("present");
                    old.exchange
                        .warn("stream id reused before this exchange ended; it is incomplete");
                    out(finish(old));
                }
            }
        }
        if !self.pending.contains_key(event.sid) {
            self.evict_if_full(out);
            let mut exchange = new_exchange(ctx, Source::LuaV2, msg);
            exchange.log.stream = Some(event.sid.to_string());
            self.pending.insert(
                event.sid.to_string(),
                Pending {
                    exchange,
                    opened_ms: self.now_ms,
                    next_seq: [0, 0],
                    started: [false, false],
                    damaged: false,
                },
            );
        }
        let p = self.pending.get_mut(event.sid).expect("inserted above");
        let name = ["request", "response"][d];
        if event.seq != p.next_seq[d] {
            p.damaged = true;
            p.exchange.warn(format!(
                "lost {name} events: expected line {} of the stream, got line {}",
                p.next_seq[d], event.seq
            ));
        }
        p.next_seq[d] = event.seq + 1;
        let ex = &mut p.exchange;
        if msg.truncated {
            p.damaged = true;
            ex.warn(format!("a {name} log line was cut before meshtap read it"));
            direction(ex, d)
                .truncate("a log line of this direction was cut before meshtap read it");
        }
        match event.kind {
            Kind::Start { time_ms, headers } => {
                p.started[d] = true;
                let mut parsed = Headers::new();
                if let Err(e) = decode_headers(headers, &mut parsed) {
                    p.damaged = true;
                    ex.warn(format!("{name} headers unreadable: {e}"));
                }
                let time = rfc3339_from_ms(time_ms);
                let dir = direction(ex, d);
                dir.headers = Some(parsed);
                dir.lift_pseudo_headers();
                dir.start_time = Some(time.clone());
                if d == 0 || ex.request.is_none() {
                    ex.time = time;
                }
            }
            Kind::Body(b64) => {
                let limits = &self.limits;
                body_piece(p, d, b64, &mut self.scratch, limits.max_body_bytes);
            }
            Kind::Trailers(b64) => {
                let mut parsed = Headers::new();
                if let Err(e) = decode_headers(b64, &mut parsed) {
                    p.damaged = true;
                    ex.warn(format!("{name} trailers unreadable: {e}"));
                }
                direction(ex, d).trailers = Some(parsed);
            }
            Kind::End {
                time_ms,
                size,
                truncated,
            } => end(p, d, time_ms, size, truncated),
            Kind::BodyEnd {
                body,
                time_ms,
                size,
                truncated,
            } => {
                let limits = &self.limits;
                body_piece(p, d, body, &mut self.scratch, limits.max_body_bytes);
                end(p, d, time_ms, size, truncated);
            }
        }
        let done = |dir: &Option<Direction>| dir.as_ref().is_some_and(|d| d.ended);
        let ex = &p.exchange;
        // A response without a logged request (filter added mid-stream, or an earlier file) is
        // emitted when the response ends; otherwise both directions must end.
        if done(&ex.response) && (done(&ex.request) || !p.started[0]) {
            let p = self.pending.remove(event.sid).expect("present");
            out(finish(p));
        }
    }

    fn evict_if_full(&mut self, out: &mut dyn FnMut(Exchange)) {
        if self.pending.len() < self.limits.max_pending {
            return;
        }
        let warning = format!(
            "emitted before its end: more than {} exchanges were pending",
            self.limits.max_pending
        );
        self.evict_oldest_with(warning, out);
    }

    /// Exchanges waiting for their end.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Emits the oldest pending exchange (first opened) early, with `warning`.
    pub fn evict_oldest_with(&mut self, warning: String, out: &mut dyn FnMut(Exchange)) {
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(_, p)| (p.opened_ms, p.exchange.log.offset))
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            let mut p = self.pending.remove(&key).expect("present");
            p.exchange.warn(warning);
            self.evicted += 1;
            out(finish(p));
        }
    }

    /// Emits, incomplete, every exchange opened more than `max_age_ms` before `now_ms`.
    pub fn expire(&mut self, max_age_ms: i64, out: &mut dyn FnMut(Exchange)) {
        let deadline = self.now_ms - max_age_ms;
        let old: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.opened_ms < deadline)
            .map(|(k, _)| k.clone())
            .collect();
        for key in old {
            let mut p = self.pending.remove(&key).expect("present");
            p.exchange.warn(format!(
                "expired: the exchange had not ended {}s after it started",
                max_age_ms / 1000
            ));
            self.expired += 1;
            out(finish(p));
        }
    }

    pub fn finish(&mut self, out: &mut dyn FnMut(Exchange)) {
        let mut rest: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        rest.sort_by_key(|p| p.exchange.log.offset);
        for mut p in rest {
            p.exchange.warn("the log ended before this exchange did");
            out(finish(p));
        }
    }
}

fn direction(ex: &mut Exchange, d: usize) -> &mut Direction {
    match d {
        0 => ex.request.get_or_insert_with(Direction::default),
        _ => ex.response.get_or_insert_with(Direction::default),
    }
}

fn finish(mut p: Pending) -> Exchange {
    let ex = &mut p.exchange;
    for (d, name) in [(0, "request"), (1, "response")] {
        let ended = match d {
            0 => ex.request.as_ref().map(|dir| dir.ended),
            _ => ex.response.as_ref().map(|dir| dir.ended),
        };
        let Some(ended) = ended else { continue };
        if !p.started[d] {
            p.damaged = true;
            ex.warn(format!("the start of the {name} was not in the log"));
        }
        p.damaged |= !ended;
    }
    if ex.request.is_none() {
        ex.warn("the request was not logged");
    }
    let both = ex.request.as_ref().is_some_and(|d| d.ended)
        && ex.response.as_ref().is_some_and(|d| d.ended);
    ex.complete = both && !p.damaged;
    p.exchange
}
/// A body piece of direction `d`: decoded into the record, or flagged when unreadable.
fn body_piece(p: &mut Pending, d: usize, b64: &[u8], scratch: &mut Vec<u8>, max_body: usize) {
    let name = ["request", "response"][d];
    scratch.clear();
    match decode_body(b64, scratch) {
        Ok(()) => direction(&mut p.exchange, d).push_body(scratch, max_body),
        Err(e) => {
            p.damaged = true;
            let reason = format!("a {name} body line was unreadable: {e}");
            direction(&mut p.exchange, d).truncate(reason.clone());
            p.exchange.warn(reason);
        }
    }
}

/// The end of direction `d`: its time, and the filter's count of body bytes against what was
/// read.
fn end(p: &mut Pending, d: usize, time_ms: i64, size: u64, truncated: bool) {
    let dir = direction(&mut p.exchange, d);
    dir.ended = true;
    dir.end_time = Some(rfc3339_from_ms(time_ms));
    if truncated {
        dir.truncate(format!(
            "the filter logged the first {} of {size} body bytes (its MAX_BODY)",
            dir.body.len()
        ));
    } else if size > dir.body_size && !dir.body_truncated {
        p.damaged = true;
        dir.truncate(format!(
            "the filter saw {size} body bytes but only {} were read",
            dir.body_size
        ));
    }
    dir.body_size = dir.body_size.max(size);
}
