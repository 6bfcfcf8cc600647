//! Recognises the first physical line of an Envoy log message in each layout found in istio-proxy
//! containers (see FIELD-NOTES.md), without allocating for the common case.
//!
//! - `envoy`: `[2020-04-12 01:07:41.292][29][warning][lua] [<caller>] <msg>`, optionally prefixed
//!   by `[Envoy (Epoch 0)] ` (Istio 1.5).
//! - `istio-text`: `<RFC3339>\t<level>\tenvoy <logger> <caller>\t<msg>\tthread=<tid>`; the thread
//!   suffix ends the message, so it sits on the LAST physical line of a multi-line message.
//! - `istio-json`: `{"level":..,"time":..,"scope":"envoy <logger>","msg":..,"caller":..,"thread":N}`,
//!   JSON-escaped, never multi-line.

use std::borrow::Cow;

use memchr::memchr;
use serde::Deserialize;

/// The Envoy log layout a line was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    Envoy,
    IstioText,
    IstioJson,
}

/// Log level of an Envoy message, as far as meshtap cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Level {
    Warning,
    Error,
    Other,
}

impl Level {
    fn parse(level: &[u8]) -> Self {
        match level {
            b"warning" | b"warn" => Level::Warning,
            b"error" | b"critical" => Level::Error,
            _ => Level::Other,
        }
    }
}

/// The parts of a message's first line that meshtap uses.
#[derive(Debug)]
pub struct Header<'a> {
    pub layout: Layout,
    pub time: &'a str,
    pub level: Level,
    /// True for Envoy's `lua` logger; every other logger is skipped.
    pub is_lua: bool,
    /// Thread id, when the first line carries it (Envoy layout, JSON, or single-line Istio text).
    pub thread: Option<u64>,
    /// The message text on this line (for JSON: the whole unescaped message).
    pub msg: Cow<'a, [u8]>,
    /// True for layouts whose message is complete on this line.
    pub complete: bool,
    /// The message's bytes were changed while reading it (invalid UTF-8 in a JSON line replaced).
    pub altered: bool,
}

/// Recognises a message's first line; `None` means the line continues the previous message (or is
/// not an Envoy line at all).
pub fn parse_header(line: &[u8]) -> Option<Header<'_>> {
    match line.first()? {
        b'[' => parse_envoy(line),
        b'{' => parse_json(line),
        b'0'..=b'9' => parse_istio_text(line),
        _ => None,
    }
}

const EPOCH_PREFIX: &[u8] = b"[Envoy (Epoch ";

/// Splits `[field]` off the front of `s`, returning the field and the rest.
fn bracketed(s: &[u8]) -> Option<(&[u8], &[u8])> {
    if s.first() != Some(&b'[') {
        return None;
    }
    let close = memchr(b']', s)?;
    Some((&s[1..close], &s[close + 1..]))
}

fn parse_envoy(mut line: &[u8]) -> Option<Header<'_>> {
    if line.starts_with(EPOCH_PREFIX) {
        let close = memchr(b']', line)?;
        line = line.get(close + 1..)?.strip_prefix(b" ")?;
    }
    let (time, rest) = bracketed(line)?;
    // `2020-04-12 01:07:41.292`: cheap shape check so bracketed body text is not taken for a header.
    if time.len() < 19 || time[4] != b'-' || time[10] != b' ' || !time[0].is_ascii_digit() {
        return None;
    }
    let (thread, rest) = bracketed(rest)?;
    let (level, rest) = bracketed(rest)?;
    let (logger, rest) = bracketed(rest)?;
    let is_lua = logger == b"lua";
    // ` [<caller>] <msg>`
    let rest = rest.strip_prefix(b" ")?;
    let msg = match bracketed(rest) {
        Some((_caller, msg)) => msg.strip_prefix(b" ").unwrap_or(msg),
        None => rest,
    };
    Some(Header {
        layout: Layout::Envoy,
        time: std::str::from_utf8(time).ok()?,
        level: Level::parse(level),
        is_lua,
        thread: parse_u64(thread),
        msg: Cow::Borrowed(msg),
        complete: false,
        altered: false,
    })
}

fn parse_istio_text(line: &[u8]) -> Option<Header<'_>> {
    let tab1 = memchr(b'\t', line)?;
    let time = &line[..tab1];
    if time.len() < 20 || time[4] != b'-' || time[10] != b'T' {
        return None;
    }
    let rest = &line[tab1 + 1..];
    let tab2 = memchr(b'\t', rest)?;
    let level = &rest[..tab2];
    let rest = &rest[tab2 + 1..];
    let tab3 = memchr(b'\t', rest)?;
    let scope = &rest[..tab3];
    let msg = &rest[tab3 + 1..];
    // Envoy's lines carry `envoy <logger> <caller>`; pilot-agent's carry only a scope.
    let is_lua = scope.starts_with(b"envoy lua ") || scope == b"envoy lua";
    let (msg, thread) = match split_thread_suffix(msg) {
        Some((msg, thread)) => (msg, Some(thread)),
        None => (msg, None),
    };
    Some(Header {
        layout: Layout::IstioText,
        time: std::str::from_utf8(time).ok()?,
        level: Level::parse(level),
        is_lua,
        thread,
        msg: Cow::Borrowed(msg),
        complete: thread.is_some(),
        altered: false,
    })
}

/// Splits Istio text's trailing `\tthread=<tid>` off a line, if the line ends with one.
pub fn split_thread_suffix(line: &[u8]) -> Option<(&[u8], u64)> {
    let tab = memchr::memrchr(b'\t', line)?;
    let digits = line[tab + 1..].strip_prefix(b"thread=")?;
    Some((&line[..tab], parse_u64(digits)?))
}

#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(borrow, default)]
    level: Cow<'a, str>,
    #[serde(borrow, default)]
    time: Cow<'a, str>,
    #[serde(borrow, default)]
    scope: Cow<'a, str>,
    #[serde(borrow, default)]
    msg: Cow<'a, str>,
    #[serde(default)]
    thread: Option<u64>,
}

/// JSON lines are parsed only when they mention the lua scope, so other JSON lines cost a memmem.
/// Only lines opening like Istio's encoder (`{"level":`) count: a JSON body line in a multi-line
/// message of another layout must stay a continuation line.
fn parse_json(line: &[u8]) -> Option<Header<'_>> {
    if !line.starts_with(b"{\"level\":") {
        return None;
    }
    if memchr::memmem::find(line, b"\"envoy lua\"").is_none() {
        // Still a header (it starts a new message) but not one we read further.
        return Some(Header {
            layout: Layout::IstioJson,
            time: "",
            level: Level::Other,
            is_lua: false,
            thread: None,
            msg: Cow::Borrowed(b""),
            complete: true,
            altered: false,
        });
    }
    let parsed: JsonLine<'_> = match serde_json::from_slice(line) {
        Ok(parsed) => parsed,
        // Envoy writes a Lua message's raw bytes; invalid UTF-8 inside a JSON string makes the line
        // invalid JSON. Read it with the bad bytes replaced rather than losing the message.
        Err(_) => {
            let lossy = String::from_utf8_lossy(line);
            let parsed: JsonLine<'_> = serde_json::from_str(&lossy).ok()?;
            return Some(Header {
                layout: Layout::IstioJson,
                time: "",
                level: Level::parse(parsed.level.as_bytes()),
                is_lua: parsed.scope == "envoy lua",
                thread: parsed.thread,
                msg: Cow::Owned(parsed.msg.into_owned().into_bytes()),
                complete: true,
                altered: true,
            });
        }
    };
    let time = match parsed.time {
        Cow::Borrowed(t) => t,
        Cow::Owned(_) => "",
    };
    Some(Header {
        layout: Layout::IstioJson,
        time,
        level: Level::parse(parsed.level.as_bytes()),
        is_lua: parsed.scope == "envoy lua",
        thread: parsed.thread,
        msg: match parsed.msg {
            Cow::Borrowed(m) => Cow::Borrowed(m.as_bytes()),
            Cow::Owned(m) => Cow::Owned(m.into_bytes()),
        },
        complete: true,
        altered: false,
    })
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_default_layout() {
        let line = b"[2026-11-25 08:47:45.772][1832][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: hello";
        let h = parse_header(line).unwrap();
        assert_eq!(h.layout, Layout::Envoy);
        assert_eq!(h.time, "2026-11-25 08:47:45.772");
        assert_eq!(h.thread, Some(1832));
        assert_eq!(h.level, Level::Warning);
        assert!(h.is_lua);
        assert_eq!(&*h.msg, b"script log: hello");
        assert!(!h.complete);
    }

    #[test]
    fn envoy_layout_with_epoch_prefix_and_old_caller() {
        let line = b"[Envoy (Epoch 0)] [2020-04-12 01:07:41.292][29][warning][lua] [external/envoy/source/extensions/filters/http/lua/lua_filter.cc:597] script log: [logPayload] started";
        let h = parse_header(line).unwrap();
        assert_eq!(h.thread, Some(29));
        assert_eq!(&*h.msg, b"script log: [logPayload] started");
    }

    #[test]
    fn non_lua_loggers_are_headers_but_not_lua() {
        let h = parse_header(b"[2026-11-25 08:47:44.795][1801][warning][main] [source/server/server.cc:1059] There is no").unwrap();
        assert!(!h.is_lua);
        let h = parse_header(b"2026-11-25T08:00:00.000000Z\tinfo\tads\tADS: push").unwrap();
        assert!(!h.is_lua);
    }

    #[test]
    fn istio_text_layout_with_and_without_thread_suffix() {
        let line = b"2026-11-25T08:47:45.772123Z\twarning\tenvoy lua source/extensions/filters/common/lua/lua.cc:31\tscript log: x\ty\tthread=17";
        let h = parse_header(line).unwrap();
        assert_eq!(h.layout, Layout::IstioText);
        assert_eq!(h.thread, Some(17));
        assert!(h.complete);
        assert_eq!(&*h.msg, b"script log: x\ty");
        let h = parse_header(
            b"2026-11-25T08:47:45.772123Z\twarning\tenvoy lua lua.cc:31\tscript log: first line",
        )
        .unwrap();
        assert!(!h.complete);
        assert_eq!(h.thread, None);
        assert_eq!(
            split_thread_suffix(b"last\tthread=9"),
            Some((&b"last"[..], 9))
        );
    }

    #[test]
    fn istio_json_layout_unescapes_and_survives_invalid_utf8() {
        let line = br#"{"level":"warning","time":"2026-11-25T08:47:45.772123Z","scope":"envoy lua","msg":"script log: a\nb\u0000","caller":"lua.cc:31","thread":21}"#;
        let h = parse_header(line).unwrap();
        assert_eq!(h.layout, Layout::IstioJson);
        assert_eq!(&*h.msg, b"script log: a\nb\0");
        assert_eq!(h.thread, Some(21));
        assert_eq!(h.time, "2026-11-25T08:47:45.772123Z");
        let mut bad =
            br#"{"level":"warning","time":"t","scope":"envoy lua","msg":"script log: "#.to_vec();
        bad.extend_from_slice(b"\xff\xfe");
        bad.extend_from_slice(br#"","thread":3}"#);
        let h = parse_header(&bad).unwrap();
        assert_eq!(&*h.msg, "script log: \u{fffd}\u{fffd}".as_bytes());
    }

    #[test]
    fn body_text_is_not_mistaken_for_a_header() {
        assert!(parse_header(b"[1,2,3]").is_none());
        assert!(parse_header(br#"{"a": 1}"#).is_none());
        assert!(parse_header(b"2024 was a year").is_none());
        assert!(parse_header(b"").is_none());
        assert!(parse_header(b"<html>").is_none());
    }
}
