//! Reassembly of the seed article's Lua filter output ("lua-v1"), end to end through
//! `meshtap::pipeline::parse_files`, from log files written the way Envoy 1.40 writes them.
//!
//! Covers the body-only variant (`started` / `showing bodyChunks` / chunk / `finished`), the headers
//! variant (`[logPayload:headers] --> ...`, no `finished`), the seed's getBytes bug, and the
//! concurrency the v1 format cannot disambiguate (several streams on one Envoy worker thread).

use std::path::PathBuf;

use meshtap::pipeline::{parse_files, Settings, Summary};
use meshtap::record::{Direction, Exchange, Headers, Source};

const STARTED: &str = "[logPayload] started";
const SHOWING: &str = "[logPayload] showing bodyChunks";
const FINISHED: &str = "[logPayload] finished";
const META_FOUND: &str = "[envoy_on_request] meta logPayload found";
/// What Envoy logs when the seed's `chunk:getBytes(index, len)` runs past the second chunk.
const GETBYTES_ERROR: &str = "[string \"function logPayload(handle)...\"]:12: index/length must be >= 0 and (index + length) must be <= buffer size";

/// Milliseconds of the day of the first message: 08:47:45.772.
const START_MS: u64 = (8 * 3600 + 47 * 60 + 45) * 1000 + 772;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Warning,
    Error,
}

/// One Lua message: its level and text (which may span lines).
type Event = (Level, String);

fn warn(text: &str) -> Event {
    (Level::Warning, text.to_string())
}

/// A log being written: Lua messages in Envoy's default layout, one millisecond apart.
struct Log {
    /// (Envoy time, CRI time, thread, level, message text)
    messages: Vec<(String, String, u64, Level, String)>,
    ms: u64,
}

impl Log {
    fn new() -> Self {
        Log {
            messages: Vec::new(),
            ms: START_MS,
        }
    }

    /// Times of the next message: Envoy's `2026-11-25 08:47:45.772` and the runtime's RFC 3339.
    fn times(&self) -> (String, String) {
        let ms = self.ms;
        let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        (
            format!("2026-11-25 {h:02}:{m:02}:{s:02}.{frac:03}"),
            format!("2026-11-25T{h:02}:{m:02}:{s:02}.{frac:03}123456Z"),
        )
    }

    fn push(&mut self, thread: u64, (level, text): Event) {
        let (envoy, cri) = self.times();
        self.ms += 1;
        self.messages.push((envoy, cri, thread, level, text));
    }

    fn push_all(&mut self, thread: u64, events: Vec<Event>) {
        for e in events {
            self.push(thread, e);
        }
    }

    /// Lets time pass (beyond the assembler's contention window).
    fn pause(&mut self, ms: u64) {
        self.ms += ms;
    }

    /// The log as Envoy writes it outside a container: a message's continuation lines unprefixed.
    fn raw(&self) -> String {
        let mut out = String::new();
        for (time, _, thread, level, text) in &self.messages {
            let (level, line) = match level {
                Level::Warning => ("warning", 31),
                Level::Error => ("error", 34),
            };
            out.push_str(&format!(
                "[{time}][{thread}][{level}][lua] [source/extensions/filters/common/lua/lua.cc:{line}] script log: {text}\n"
            ));
        }
        out
    }

    /// The log as containerd writes it: every physical line framed on its own.
    fn cri(&self) -> String {
        let raw = self.raw();
        let mut out = String::new();
        let mut physical = raw.lines();
        for (_, cri, _, _, text) in &self.messages {
            for _ in 0..text.split('\n').count() {
                let line = physical.next().expect("one physical line per message line");
                out.push_str(&format!("{cri} stderr F {line}\n"));
            }
        }
        out
    }

    /// Envoy's time of message `i` in RFC 3339, as records carry it.
    fn time_of(&self, i: usize) -> String {
        let (time, ..) = &self.messages[i];
        format!("{}T{}Z", &time[..10], &time[11..])
    }
}

/// A direction of the body-only variant: `started`, each chunk after its `showing bodyChunks`, the
/// empty end chunk's `showing bodyChunks` (no text follows it), `finished`. Without chunks (a GET
/// request) just `started` and `finished`.
fn body_only(chunks: &[&str]) -> Vec<Event> {
    let mut events = vec![warn(STARTED)];
    for chunk in chunks {
        events.push(warn(SHOWING));
        events.push(warn(chunk));
    }
    if !chunks.is_empty() {
        events.push(warn(SHOWING));
    }
    events.push(warn(FINISHED));
    events
}

/// A direction of the headers variant: `started`, the header block (one message over several
/// lines), then the chunks and the empty end chunk's `showing bodyChunks`; no `finished`. A
/// response is announced by `meta logPayload found`.
fn with_headers(response: bool, headers: &[(&str, &str)], chunks: &[&str]) -> Vec<Event> {
    let mut events = Vec::new();
    if response {
        events.push(warn(META_FOUND));
    }
    events.push(warn(STARTED));
    let block: String = headers
        .iter()
        .map(|(name, value)| format!("\n{name}:{value},"))
        .collect();
    events.push(warn(&format!("[logPayload:headers] --> {block}")));
    for chunk in chunks {
        events.push(warn(SHOWING));
        events.push(warn(chunk));
    }
    if !chunks.is_empty() {
        events.push(warn(SHOWING));
    }
    events
}

fn parse(content: &str) -> (Vec<Exchange>, Summary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("envoy.log");
    std::fs::write(&path, content).expect("write log");
    let mut got = Vec::new();
    let summary = parse_files(&[path], &Settings::default(), &mut |e| got.push(e));
    (got, summary)
}

fn dir(d: &Option<Direction>) -> &Direction {
    d.as_ref().expect("direction present")
}

fn body(d: &Option<Direction>) -> String {
    String::from_utf8(dir(d).body.clone()).expect("utf8 body")
}

/// A direction read whole: exact body, nothing flagged.
fn assert_exact(d: &Option<Direction>, expected: &str) {
    let d = dir(d);
    assert_eq!(String::from_utf8_lossy(&d.body), expected);
    assert_eq!(d.body_size, expected.len() as u64);
    assert!(!d.body_truncated, "{d:?}");
    assert_eq!(d.truncated_reason, None);
    assert!(d.ended, "{d:?}");
}

/// A whole, unflagged record of `thread` with these bodies.
fn assert_clean(ex: &Exchange, thread: u64, request: &str, response: &str) {
    assert_eq!(ex.source, Source::LuaV1);
    assert_eq!(ex.log.thread, Some(thread));
    assert_exact(&ex.request, request);
    assert_exact(&ex.response, response);
    assert!(ex.complete, "{ex:?}");
    assert_pairing_only(ex);
}

/// Body-only records always say their pairing is inferred (the format names no stream or
/// direction); headers-variant records of clean reassembly carry no warning at all.
fn assert_pairing_only(ex: &Exchange) {
    let body_only = [&ex.request, &ex.response]
        .iter()
        .all(|d| d.as_ref().is_none_or(|d| d.headers.is_none()));
    if body_only {
        assert_eq!(ex.warnings.len(), 1, "{:?}", ex.warnings);
        assert!(
            ex.warnings[0].starts_with("lua-v1 body-only: request and response were paired"),
            "{:?}",
            ex.warnings
        );
    } else {
        assert_eq!(ex.warnings, Vec::<String>::new());
    }
}

fn headers(pairs: &[(&str, &str)]) -> Headers {
    let mut h = Headers::new();
    for (name, value) in pairs {
        h.entry(name.to_string())
            .or_default()
            .push(value.to_string());
    }
    h
}

/// Three sequential exchanges on one thread: a JSON POST, a GET, and a POST whose body spans
/// lines and ends in "\n" (Envoy writes such a message and then an empty line).
fn sequential_body_only() -> (Log, [(&'static str, &'static str); 3]) {
    let bodies = [
        ("{\"user\":\"jason\",\"stars\":5}", "{\"id\":1,\"ok\":true}"),
        ("", "<html><body>product</body></html>"),
        ("line one\nline two\n", "first\n\nthird\n"),
    ];
    let mut log = Log::new();
    for (request, response) in bodies {
        let chunks = |b: &'static str| if b.is_empty() { vec![] } else { vec![b] };
        log.push_all(1832, body_only(&chunks(request)));
        log.push_all(1832, body_only(&chunks(response)));
    }
    (log, bodies)
}

fn check_sequential(log: &Log, got: &[Exchange], summary: &Summary, bodies: &[(&str, &str); 3]) {
    assert_eq!(got.len(), 3, "{got:#?}");
    for (ex, (request, response)) in got.iter().zip(bodies) {
        assert_clean(ex, 1832, request, response);
        assert_eq!(dir(&ex.request).headers, None);
        assert_eq!(dir(&ex.response).headers, None);
    }
    // The first exchange starts at the first message; ids are distinct.
    assert_eq!(got[0].log.offset, 0);
    assert_eq!(got[0].time, log.time_of(0));
    assert_eq!(dir(&got[0].request).start_time, Some(log.time_of(0)));
    assert_ne!(got[0].id, got[1].id);
    assert_ne!(got[1].id, got[2].id);
    let a = &summary.assemble;
    assert_eq!(
        (
            a.exchanges,
            a.incomplete,
            a.with_warnings,
            a.unattributed_v1
        ),
        // Every body-only record carries the inferred-pairing warning.
        (3, 0, 3, 0)
    );
    assert_eq!((a.script_errors, a.malformed_v2, a.evicted), (0, 0, 0));
    assert_eq!(summary.skipped(), 0);
}

#[test]
fn sequential_body_only_exchanges_raw() {
    let (log, bodies) = sequential_body_only();
    let (got, summary) = parse(&log.raw());
    check_sequential(&log, &got, &summary, &bodies);
    // A message ending in "\n" is followed by an empty physical line, read as its continuation.
    assert_eq!(summary.envoy.stray_lines, 0);
}

#[test]
fn sequential_body_only_exchanges_cri() {
    let (log, bodies) = sequential_body_only();
    let (got, summary) = parse(&log.cri());
    // With CRI framing the record's time is the runtime's (nanosecond) time.
    assert_eq!(got[0].time, "2026-11-25T08:47:45.772123456Z");
    assert_eq!(got.len(), 3);
    for (ex, (request, response)) in got.iter().zip(&bodies) {
        assert_clean(ex, 1832, request, response);
    }
    assert_eq!(summary.decode.malformed, 0);
    assert_eq!(summary.assemble.with_warnings, 3);
}

#[test]
fn body_chunks_are_concatenated() {
    let mut log = Log::new();
    log.push_all(7, body_only(&["part one, ", "part two, ", "part three"]));
    log.push_all(7, body_only(&["a", "b"]));
    let (got, _) = parse(&log.raw());
    assert_eq!(got.len(), 1);
    assert_clean(&got[0], 7, "part one, part two, part three", "ab");
}

#[test]
fn headers_variant_get_then_post() {
    let mut log = Log::new();
    // GET: no body, so no chunk messages at all; the response has a body.
    let get_request = [
        (":authority", "productpage:9080"),
        (":path", "/productpage?u=normal"),
        (":method", "GET"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
    ];
    let get_response = [
        (":status", "200"),
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", "16"),
        ("date", "Wed, 25 Nov 2026 08:47:45 GMT"),
    ];
    log.push_all(1832, with_headers(false, &get_request, &[]));
    log.push_all(
        1832,
        with_headers(true, &get_response, &["<html>hi</html>\n"]),
    );
    // POST with a body, answered with a body.
    let post_request = [
        (":authority", "productpage:9080"),
        (":path", "/productpage"),
        (":method", "POST"),
        ("content-length", "5"),
        ("content-type", "text/plain"),
    ];
    let post_response = [
        (":status", "201"),
        ("content-type", "application/json"),
        ("content-length", "11"),
    ];
    log.push_all(1832, with_headers(false, &post_request, &["hello"]));
    log.push_all(1832, with_headers(true, &post_response, &["{\"ok\":true}"]));
    let (got, summary) = parse(&log.cri());
    assert_eq!(got.len(), 2, "{got:#?}");

    let get = &got[0];
    assert_clean(get, 1832, "", "<html>hi</html>\n");
    let rq = dir(&get.request);
    assert_eq!(rq.method.as_deref(), Some("GET"));
    assert_eq!(rq.path.as_deref(), Some("/productpage?u=normal"));
    assert_eq!(rq.authority.as_deref(), Some("productpage:9080"));
    assert_eq!(rq.status, None);
    assert_eq!(rq.headers, Some(headers(&get_request)));
    let rs = dir(&get.response);
    assert_eq!(rs.status, Some(200));
    assert_eq!(rs.method, None);
    assert_eq!(rs.headers, Some(headers(&get_response)));

    let post = &got[1];
    assert_clean(post, 1832, "hello", "{\"ok\":true}");
    assert_eq!(dir(&post.request).method.as_deref(), Some("POST"));
    assert_eq!(dir(&post.request).path.as_deref(), Some("/productpage"));
    assert_eq!(dir(&post.request).headers, Some(headers(&post_request)));
    assert_eq!(dir(&post.response).status, Some(201));
    assert_eq!(dir(&post.response).headers, Some(headers(&post_response)));

    let a = &summary.assemble;
    assert_eq!((a.exchanges, a.incomplete, a.with_warnings), (2, 0, 0));
    assert_eq!(summary.skipped(), 0);
}

#[test]
fn headers_variant_response_without_body() {
    let mut log = Log::new();
    let request = [(":path", "/productpage"), (":method", "DELETE")];
    log.push_all(3, with_headers(false, &request, &[]));
    log.push_all(3, with_headers(true, &[(":status", "204")], &[]));
    log.push_all(3, with_headers(false, &request, &[]));
    log.push_all(
        3,
        with_headers(
            true,
            &[(":status", "404"), ("content-length", "9")],
            &["not found"],
        ),
    );
    let (got, _) = parse(&log.raw());
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_clean(&got[0], 3, "", "");
    assert_eq!(dir(&got[0].response).status, Some(204));
    assert_clean(&got[1], 3, "", "not found");
    assert_eq!(dir(&got[1].response).status, Some(404));
}

/// The last direction of the headers variant ends at the end of the log (no marker follows its
/// empty end chunk), so its end time is not known; it must not be recorded as an empty string.
#[test]
fn end_time_of_a_direction_ended_by_end_of_input_is_not_empty() {
    let mut log = Log::new();
    log.push_all(
        3,
        with_headers(false, &[(":path", "/p"), (":method", "GET")], &[]),
    );
    log.push_all(
        3,
        with_headers(
            true,
            &[(":status", "200"), ("content-length", "2")],
            &["ok"],
        ),
    );
    let (got, _) = parse(&log.raw());
    assert_eq!(got.len(), 1);
    assert_clean(&got[0], 3, "", "ok");
    let end = dir(&got[0].response).end_time.clone();
    assert!(
        end.as_deref().is_none_or(|t| !t.is_empty()),
        "end_time = {end:?}"
    );
}

#[test]
fn getbytes_bug_truncates_the_request_and_keeps_the_response() {
    let mut log = Log::new();
    // Request: chunk 1 is logged, chunk 2's getBytes(index, len) fails.
    log.push(1832, warn(STARTED));
    log.push(1832, warn(SHOWING));
    log.push(1832, warn("first chunk of the request body;"));
    log.push(1832, warn(SHOWING));
    log.push(1832, (Level::Error, GETBYTES_ERROR.to_string()));
    // The response direction still runs (a one-chunk body does not hit the bug).
    log.push_all(1832, body_only(&["{\"status\":\"ok\"}"]));
    // A later, unaffected exchange on the same thread.
    log.pause(5000);
    log.push_all(1832, body_only(&["next"]));
    log.push_all(1832, body_only(&["fine"]));
    let (got, summary) = parse(&log.cri());
    assert_eq!(got.len(), 2, "{got:#?}");

    let ex = &got[0];
    let rq = dir(&ex.request);
    assert_eq!(body(&ex.request), "first chunk of the request body;");
    assert!(rq.body_truncated);
    let reason = rq.truncated_reason.as_deref().expect("a reason");
    assert!(reason.contains("Lua script failed"), "{reason}");
    assert!(reason.contains("index/length must be >= 0"), "{reason}");
    assert_exact(&ex.response, "{\"status\":\"ok\"}");
    assert!(!ex.complete);

    assert_clean(&got[1], 1832, "next", "fine");
    assert_eq!(summary.assemble.script_errors, 1);
    assert_eq!(summary.assemble.incomplete, 1);
    assert_eq!(summary.assemble.unattributed_v1, 0);
}

#[test]
fn concurrent_streams_on_one_thread_are_flagged() {
    let mut log = Log::new();
    // Streams A and B on thread 1832, their events interleaved as the worker switched between them.
    log.push(1832, warn(STARTED)); // A request
    log.push(1832, warn(STARTED)); // B request
    log.push(1832, warn(SHOWING));
    log.push(1832, warn("request A"));
    log.push(1832, warn(SHOWING));
    log.push(1832, warn("request B"));
    log.push(1832, warn(SHOWING));
    log.push(1832, warn(FINISHED));
    log.push(1832, warn(SHOWING));
    log.push(1832, warn(FINISHED));
    log.push_all(1832, body_only(&["response A"]));
    log.push_all(1832, body_only(&["response B"]));
    // Later, a sequential exchange on another thread.
    log.pause(100);
    log.push_all(1833, body_only(&["request C"]));
    log.push_all(1833, body_only(&["response C"]));
    let (got, summary) = parse(&log.raw());

    let (busy, other): (Vec<&Exchange>, Vec<&Exchange>) =
        got.iter().partition(|ex| ex.log.thread == Some(1832));
    assert_eq!(busy.len(), 2, "{got:#?}");
    for ex in &busy {
        assert!(!ex.warnings.is_empty(), "{ex:#?}");
        assert!(
            ex.warnings.iter().any(|w| w.contains("thread 1832")),
            "{:?}",
            ex.warnings
        );
    }
    // Every body byte logged on the busy thread is in some record.
    let mut bodies: Vec<String> = busy
        .iter()
        .flat_map(|ex| [&ex.request, &ex.response])
        .filter_map(|d| d.as_ref())
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies.concat(),
        ["request A", "request B", "response A", "response B"].concat()
    );

    assert_eq!(other.len(), 1);
    assert_clean(other[0], 1833, "request C", "response C");
    assert_eq!(summary.assemble.with_warnings, 3);
}

#[test]
fn interleaving_across_threads_is_exact() {
    let exchange = |name: &str| {
        let mut events = body_only(&[&format!("{name} request, "), "second chunk"]);
        events.extend(body_only(&[&format!("{name} response\n")]));
        events
    };
    let (one, two) = (exchange("one"), exchange("two"));
    assert_eq!(one.len(), two.len());
    let mut log = Log::new();
    for (a, b) in one.into_iter().zip(two) {
        log.push(1, a);
        log.push(2, b);
    }
    let (got, summary) = parse(&log.raw());
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_clean(&got[0], 1, "one request, second chunk", "one response\n");
    assert_clean(&got[1], 2, "two request, second chunk", "two response\n");
    assert_eq!(summary.assemble.with_warnings, 2);
}

#[test]
fn log_ending_mid_request_emits_an_incomplete_record() {
    let mut log = Log::new();
    log.push_all(9, body_only(&["done"]));
    log.push_all(9, body_only(&["also done"]));
    log.pause(5000);
    log.push(9, warn(STARTED));
    log.push(9, warn(SHOWING));
    log.push(9, warn("cut off"));
    let (got, summary) = parse(&log.raw());
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_clean(&got[0], 9, "done", "also done");
    let ex = &got[1];
    assert!(!ex.complete);
    assert_eq!(body(&ex.request), "cut off");
    assert!(!dir(&ex.request).ended);
    assert_eq!(ex.response, None);
    assert!(
        ex.warnings.iter().any(|w| w.contains("log ended")),
        "{:?}",
        ex.warnings
    );
    assert_eq!(summary.assemble.incomplete, 1);
}

#[test]
fn log_ending_mid_response_emits_an_incomplete_record() {
    let mut log = Log::new();
    log.push_all(9, body_only(&["request"]));
    log.push(9, warn(STARTED));
    log.push(9, warn(SHOWING));
    log.push(9, warn("half a resp"));
    let (got, _) = parse(&log.cri());
    assert_eq!(got.len(), 1, "{got:#?}");
    let ex = &got[0];
    assert!(!ex.complete);
    assert_exact(&ex.request, "request");
    assert_eq!(body(&ex.response), "half a resp");
    assert!(!dir(&ex.response).ended);
    assert!(
        ex.warnings.iter().any(|w| w.contains("log ended")),
        "{:?}",
        ex.warnings
    );
}

#[test]
fn getbytes_bug_in_the_response_then_a_clean_exchange() {
    let mut log = Log::new();
    log.push_all(4, body_only(&["ping"]));
    log.push(4, warn(STARTED));
    log.push(4, warn(SHOWING));
    log.push(4, warn("<html>first 16 KiB"));
    log.push(4, warn(SHOWING));
    log.push(4, (Level::Error, GETBYTES_ERROR.to_string()));
    log.pause(5000);
    log.push_all(4, body_only(&[]));
    log.push_all(4, body_only(&["pong"]));
    let (got, summary) = parse(&log.raw());
    assert_eq!(got.len(), 2, "{got:#?}");
    let ex = &got[0];
    assert!(!ex.complete);
    assert_exact(&ex.request, "ping");
    assert_eq!(body(&ex.response), "<html>first 16 KiB");
    assert!(dir(&ex.response).body_truncated);
    assert_clean(&got[1], 4, "", "pong");
    assert_eq!(summary.assemble.script_errors, 1);
}

#[test]
fn log_starting_inside_a_direction_skips_its_tail() {
    let mut log = Log::new();
    // The file begins after a response's `started`: its tail belongs to no direction.
    log.push(6, warn(SHOWING));
    log.push(6, warn("tail of an earlier body"));
    log.push(6, warn(SHOWING));
    log.push(6, warn(FINISHED));
    log.pause(3000);
    log.push_all(6, body_only(&["request"]));
    log.push_all(6, body_only(&["response"]));
    let (got, summary) = parse(&log.cri());
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_clean(&got[0], 6, "request", "response");
    assert_eq!(summary.assemble.unattributed_v1, 4);
    assert_eq!(summary.skipped(), 4);
}

#[test]
fn headers_variant_log_starting_with_a_response() {
    let mut log = Log::new();
    log.push_all(
        8,
        with_headers(
            true,
            &[(":status", "200"), ("content-length", "4")],
            &["late"],
        ),
    );
    log.pause(3000);
    let request = [(":path", "/productpage"), (":method", "GET")];
    log.push_all(8, with_headers(false, &request, &[]));
    log.push_all(
        8,
        with_headers(
            true,
            &[(":status", "200"), ("content-length", "2")],
            &["ok"],
        ),
    );
    let (got, _) = parse(&log.raw());
    assert_eq!(got.len(), 2, "{got:#?}");
    let orphan = &got[0];
    assert_eq!(orphan.request, None);
    assert_eq!(body(&orphan.response), "late");
    assert!(!orphan.complete);
    assert_eq!(
        orphan.warnings,
        vec!["the request was not logged".to_string()]
    );
    assert_clean(&got[1], 8, "", "ok");
}

/// The body-only variant tells a request from a response by alternation on the thread. A log
/// whose first event is a response's `started` (the older file was deleted by rotation, or one
/// `started` line was lost) pairs every later exchange on that thread with the wrong halves,
/// yet the records claim to be exact (`complete`, no warning).
#[test]
fn log_starting_with_a_response_does_not_mispair_silently() {
    let mut log = Log::new();
    log.push_all(5, body_only(&["tail of a response"]));
    log.pause(3000);
    log.push_all(5, body_only(&["request 2"]));
    log.push_all(5, body_only(&["response 2"]));
    log.pause(3000);
    log.push_all(5, body_only(&["request 3"]));
    log.push_all(5, body_only(&["response 3"]));
    let (got, _) = parse(&log.raw());
    for ex in &got {
        if ex.complete && ex.warnings.is_empty() {
            let pair = (body(&ex.request), body(&ex.response));
            assert!(
                pair == ("request 2".into(), "response 2".into())
                    || pair == ("request 3".into(), "response 3".into()),
                "record claims to be exact but pairs {pair:?}"
            );
        }
    }
}
