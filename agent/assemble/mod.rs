//! Stage 5: reassembles marker events into one [`Exchange`] per request/response.
//!
//! [`v2`] is exact: every line names its stream and sequence number. [`v1`] infers streams from the
//! order of events on each Envoy worker thread and says so in a record's warnings when concurrency
//! makes that inference uncertain. Both keep every pending exchange bounded ([`Limits`]) and emit
//! what is left at the end of input as incomplete, never dropping it silently.

pub mod v1;
pub mod v2;

use serde::{Deserialize, Serialize};

use crate::envoy::LuaMessage;
use crate::marker::{self, Marker};
use crate::record::{Exchange, K8sMeta, LogPosition, Source};

/// Caps on what the assemblers hold in memory.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Limits {
    /// Body bytes kept per direction; the rest is counted in `body_size` and flagged.
    pub max_body_bytes: usize,
    /// Exchanges awaiting their end, per file; past it the oldest is emitted incomplete.
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Far above the v2 filter's default 64 KiB log cap, so meshtap never cuts what Envoy logged.
            max_body_bytes: 4 << 20,
            // A busy sidecar has at most a few hundred streams in flight.
            max_pending: 10_000,
        }
    }
}

/// Identity of the file being read, stamped on the exchanges that start in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileContext {
    pub file: String,
    /// Checksum of the file's first line: stable across rename and gzip, unlike the path.
    pub fingerprint: u64,
    pub k8s: Option<K8sMeta>,
    /// The file's container log format, once detected.
    pub format: Option<crate::decode::Format>,
}

/// Counts of what the assemblers did, for the summary and metrics.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AssembleStats {
    pub exchanges: u64,
    pub incomplete: u64,
    pub with_warnings: u64,
    /// v2 lines that could not be parsed.
    pub malformed_v2: u64,
    /// v1 messages that belonged to no open direction (e.g. text before any `started`).
    pub unattributed_v1: u64,
    /// Lua script errors seen (the seed's getBytes bug among them).
    pub script_errors: u64,
    /// Exchanges emitted early because `max_pending` was reached.
    pub evicted: u64,
    /// Exchanges emitted early because they had not ended within the expiry time.
    pub expired: u64,
}

/// Deterministic exchange id: the file's fingerprint and the offset of the exchange's first event.
/// The same log read twice (after a restart, or rotated and gzipped) yields the same ids.
pub fn exchange_id(fingerprint: u64, offset: u64) -> String {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&fingerprint.to_le_bytes());
    key[8..].copy_from_slice(&offset.to_le_bytes());
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&key))
}

/// A new, empty exchange starting at `msg`.
pub(crate) fn new_exchange(ctx: &FileContext, source: Source, msg: &LuaMessage<'_>) -> Exchange {
    Exchange {
        id: exchange_id(ctx.fingerprint, msg.offset),
        source,
        time: rfc3339_from_log_time(msg.time),
        k8s: ctx.k8s.clone(),
        log: LogPosition {
            file: ctx.file.clone(),
            offset: msg.offset,
            thread: msg.thread,
            stream: None,
        },
        request: None,
        response: None,
        complete: false,
        warnings: Vec::new(),
        redacted: Vec::new(),
    }
}

/// Log times come as RFC 3339 (container runtimes, Istio) or as Envoy's `2020-04-12 01:07:41.292`,
/// which sidecars write in UTC.
pub fn rfc3339_from_log_time(time: &str) -> String {
    match time.as_bytes().get(10) {
        Some(b' ') => format!("{}T{}Z", &time[..10], &time[11..]),
        _ => time.to_string(),
    }
}

/// Milliseconds since the epoch (from Lua's `handle:timestamp()`) as RFC 3339.
pub fn rfc3339_from_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Both assemblers behind one entry point: a file may hold both formats during a migration.
#[derive(Serialize, Deserialize)]
pub struct Assembler {
    v1: v1::Assembler,
    v2: v2::Assembler,
    #[serde(skip)]
    stats: AssembleStats,
}

impl Assembler {
    pub fn new(limits: Limits) -> Self {
        Assembler {
            v1: v1::Assembler::new(limits),
            v2: v2::Assembler::new(limits),
            stats: AssembleStats::default(),
        }
    }

    pub fn stats(&self) -> &AssembleStats {
        &self.stats
    }

    pub fn push(&mut self, ctx: &FileContext, msg: &LuaMessage<'_>, out: &mut dyn FnMut(Exchange)) {
        let stats = &mut self.stats;
        let mut emit = |ex: Exchange| {
            count(stats, &ex);
            out(ex)
        };
        match marker::classify(msg) {
            Marker::V2(Ok(event)) => self.v2.push(ctx, msg, event, &mut emit),
            Marker::V2(Err(error)) => {
                self.stats.malformed_v2 += 1;
                tracing::warn!(file = %ctx.file, offset = msg.offset, %error, "Skipped a malformed v2 line.");
            }
            Marker::V1(event) => self.v1.push(ctx, msg, event, &mut emit),
        }
        self.stats.unattributed_v1 = self.v1.unattributed;
        self.stats.script_errors = self.v1.script_errors;
        self.stats.evicted = self.v1.evicted + self.v2.evicted;
    }

    /// Applies (possibly changed) limits to a restored assembler.
    pub fn set_limits(&mut self, limits: Limits) {
        self.v1.limits = limits;
        self.v2.limits = limits;
    }

    /// Sets the wall-clock time (ms) that stamps exchanges opened from now on.
    pub fn set_now(&mut self, now_ms: i64) {
        self.v1.now_ms = now_ms;
        self.v2.now_ms = now_ms;
    }

    /// Emits, incomplete and with a warning, exchanges open for longer than `max_age_ms`.
    pub fn expire(&mut self, max_age_ms: i64, out: &mut dyn FnMut(Exchange)) {
        let stats = &mut self.stats;
        let mut emit = |ex: Exchange| {
            count(stats, &ex);
            out(ex)
        };
        self.v1.expire(max_age_ms, &mut emit);
        self.v2.expire(max_age_ms, &mut emit);
        self.stats.expired = self.v1.expired + self.v2.expired;
    }

    /// Exchanges waiting for their end.
    pub fn pending_len(&self) -> usize {
        self.v1.pending_len() + self.v2.pending_len()
    }

    /// Emits one pending exchange early (from the format holding more), with `warning`: the
    /// agent's node-wide cap on pending exchanges.
    pub fn evict_oldest(&mut self, warning: String, out: &mut dyn FnMut(Exchange)) {
        let stats = &mut self.stats;
        let mut emit = |ex: Exchange| {
            count(stats, &ex);
            out(ex)
        };
        if self.v1.pending_len() >= self.v2.pending_len() {
            self.v1.evict_oldest_with(warning, &mut emit);
        } else {
            self.v2.evict_oldest_with(warning, &mut emit);
        }
        self.stats.evicted = self.v1.evicted + self.v2.evicted;
    }

    /// Log lines were lost before they were read. v2 exchanges need nothing: their events carry a
    /// stream id and a sequence number, so a missing event shows. v1 exchanges open now are
    /// flagged ([`v1::Assembler::lines_lost`]).
    pub fn lines_lost(&mut self) {
        self.v1.lines_lost();
    }

    /// End of input: every pending exchange is emitted, marked incomplete.
    pub fn finish(&mut self, out: &mut dyn FnMut(Exchange)) {
        let stats = &mut self.stats;
        let mut emit = |ex: Exchange| {
            count(stats, &ex);
            out(ex)
        };
        self.v1.finish(&mut emit);
        self.v2.finish(&mut emit);
    }
}

fn count(stats: &mut AssembleStats, ex: &Exchange) {
    stats.exchanges += 1;
    stats.incomplete += u64::from(!ex.complete);
    stats.with_warnings += u64::from(!ex.warnings.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_position_dependent() {
        assert_eq!(exchange_id(1, 2), exchange_id(1, 2));
        assert_ne!(exchange_id(1, 2), exchange_id(1, 3));
        assert_ne!(exchange_id(1, 2), exchange_id(2, 2));
        assert_eq!(exchange_id(1, 2).len(), 32);
    }

    #[test]
    fn times_normalise_to_rfc3339() {
        assert_eq!(
            rfc3339_from_log_time("2026-11-25 08:47:45.772"),
            "2026-11-25T08:47:45.772Z"
        );
        assert_eq!(
            rfc3339_from_log_time("2026-11-25T08:47:45.772123Z"),
            "2026-11-25T08:47:45.772123Z"
        );
        assert_eq!(rfc3339_from_ms(1795596685480), "2026-11-25T08:51:25.480Z");
    }
}
