//! `meshtap parse` on damaged and hostile input: garbage and binary lines, unknown and malformed
//! markers, cut lines, a 50 MB line, unreadable files, gzip (good and corrupt). None of it may crash
//! the run or lose the valid exchanges around it, and all of it is counted in the summary.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meshtap");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A container log being written by containerd: CRI framing around Envoy's default layout.
struct CriLog {
    out: Vec<u8>,
    /// Milliseconds into 08:47 of the runtime's and Envoy's clocks.
    ms: u64,
}

impl CriLog {
    fn new() -> Self {
        CriLog {
            out: Vec::new(),
            ms: 45_772,
        }
    }

    fn cri_time(&self) -> String {
        format!(
            "2026-11-25T08:47:{:02}.{:03}123456Z",
            self.ms / 1000 % 60,
            self.ms % 1000
        )
    }

    /// One physical line, framed as the runtime frames a line on `stream`.
    fn framed(&mut self, stream: &str, content: &[u8]) -> &mut Self {
        let time = self.cri_time();
        self.out
            .extend_from_slice(format!("{time} {stream} F ").as_bytes());
        self.out.extend_from_slice(content);
        self.out.push(b'\n');
        self
    }

    /// One physical line written as is, without framing.
    fn unframed(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self.out.push(b'\n');
        self
    }

    /// A Lua `script log:` message at warning level on Envoy thread `thread`.
    fn lua(&mut self, thread: u64, msg: &[u8]) -> &mut Self {
        let mut line = format!(
            "[2026-11-25 08:47:{:02}.{:03}][{thread}][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: ",
            self.ms / 1000 % 60,
            self.ms % 1000
        )
        .into_bytes();
        line.extend_from_slice(msg);
        self.ms += 1;
        self.framed("stderr", &line)
    }

    fn lines(&mut self, thread: u64, msgs: &[String]) -> &mut Self {
        for msg in msgs {
            self.lua(thread, msg.as_bytes());
        }
        self
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.out).expect("write log");
        path
    }
}

/// An exchange as meshtap's v2 filter logs it, and what its record must hold.
struct V2 {
    sid: String,
    method: &'static str,
    path: &'static str,
    request: Vec<u8>,
    status: u16,
    response: Vec<u8>,
}

impl V2 {
    fn new(sid: &str, method: &'static str, request: &[u8], response: &[u8]) -> Self {
        V2 {
            sid: sid.to_string(),
            method,
            path: "/api/v1/products?id=7",
            request: request.to_vec(),
            status: 200,
            response: response.to_vec(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> String {
        let block: String = pairs
            .iter()
            .map(|(name, value)| format!("{name}\n{value}\n"))
            .collect();
        b64(block.as_bytes())
    }

    /// `rq`, a `rqb` per 12 KiB piece, `rqe` (the request direction's lines).
    fn request_lines(&self) -> Vec<String> {
        let headers = Self::headers(&[
            (":authority", "productpage:9080"),
            (":path", self.path),
            (":method", self.method),
            ("x-request-id", "5f2b4c1e-0000-4000-8000-000000000001"),
        ]);
        Self::direction("rq", &self.sid, &headers, &self.request, 1_795_596_465_772)
    }

    fn response_lines(&self) -> Vec<String> {
        let headers = Self::headers(&[
            (":status", &self.status.to_string()),
            ("content-type", "application/octet-stream"),
        ]);
        Self::direction("rs", &self.sid, &headers, &self.response, 1_795_596_465_780)
    }

    fn direction(ev: &str, sid: &str, headers: &str, body: &[u8], ms: u64) -> Vec<String> {
        let mut lines = vec![format!("[logPayload] v2 {ev} {sid} 0 {ms} {headers}")];
        for piece in body.chunks(12 * 1024) {
            let seq = lines.len();
            lines.push(format!("[logPayload] v2 {ev}b {sid} {seq} {}", b64(piece)));
        }
        let seq = lines.len();
        lines.push(format!(
            "[logPayload] v2 {ev}e {sid} {seq} {} {} 0",
            ms + 3,
            body.len()
        ));
        lines
    }

    fn all_lines(&self) -> Vec<String> {
        let mut lines = self.request_lines();
        lines.extend(self.response_lines());
        lines
    }
}

/// What a `meshtap parse --summary-json` run printed.
struct Run {
    code: i32,
    records: Vec<Value>,
    summary: Value,
    stderr: String,
}

impl Run {
    fn record(&self, sid: &str) -> &Value {
        let found: Vec<&Value> = self
            .records
            .iter()
            .filter(|r| r["log"]["stream"] == sid)
            .collect();
        assert_eq!(found.len(), 1, "records of {sid}: {:#?}", self.records);
        found[0]
    }

    /// The record of `ex`, which must be exact: complete, unflagged, every field as logged.
    fn assert_exact(&self, ex: &V2) {
        let r = self.record(&ex.sid);
        assert_eq!(r["source"], "lua-v2");
        assert_eq!(r["complete"], true, "{r:#}");
        assert_eq!(r["warnings"], Value::Array(vec![]), "{r:#}");
        let rq = &r["request"];
        assert_eq!(rq["method"], ex.method);
        assert_eq!(rq["path"], ex.path);
        assert_eq!(rq["authority"], "productpage:9080");
        assert_eq!(rq["headers"][":method"][0], ex.method);
        assert_body(rq, &ex.request);
        let rs = &r["response"];
        assert_eq!(rs["status"], ex.status);
        assert_eq!(rs["headers"]["content-type"][0], "application/octet-stream");
        assert_body(rs, &ex.response);
    }
}

/// A direction holds exactly `body`, not truncated.
fn assert_body(dir: &Value, body: &[u8]) {
    assert_eq!(decoded_body(dir), body, "{dir:#}");
    assert_eq!(dir["body_size"], body.len());
    assert_eq!(dir["body_truncated"], false, "{dir:#}");
    assert!(dir.get("truncated_reason").is_none(), "{dir:#}");
}

fn decoded_body(dir: &Value) -> Vec<u8> {
    let body = dir["body"].as_str().expect("body string");
    match dir["body_encoding"].as_str() {
        Some("utf8") => body.as_bytes().to_vec(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64 body"),
        other => panic!("body_encoding {other:?}"),
    }
}

fn parse_output(code: i32, stdout: &[u8], stderr: &[u8]) -> Run {
    let stdout = std::str::from_utf8(stdout).expect("stdout is UTF-8");
    let records = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout is NDJSON"))
        .collect();
    let stderr = String::from_utf8_lossy(stderr).into_owned();
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("{\"files\""))
        .map(|l| serde_json::from_str(l).expect("summary JSON"))
        .unwrap_or(Value::Null);
    Run {
        code,
        records,
        summary,
        stderr,
    }
}

fn meshtap(files: &[&Path]) -> Run {
    let out = Command::new(BIN)
        .arg("parse")
        .arg("--summary-json")
        .args(files)
        .output()
        .expect("run meshtap");
    let code = out.status.code().expect("exited, not killed");
    parse_output(code, &out.stdout, &out.stderr)
}

/// Peak resident set size of meshtap allowed while it reads lines of 50 MB. A reader that kept a
/// whole line would need more than the line; meshtap keeps at most `max_line_bytes` (2 MiB) of it.
const MAX_RSS_KIB: u64 = 48 * 1024;

/// Runs meshtap under an address-space limit, and under `/usr/bin/time` (when installed) to learn its
/// peak resident set size in KiB. The parent's own peak cannot be told apart in `wait4`'s rusage:
/// Linux carries a process's high-water mark across exec, and this test process holds 100 MB.
fn meshtap_measured(files: &[&Path]) -> (Run, Option<u64>) {
    let time = Path::new("/usr/bin/time");
    let mut cmd = if time.exists() {
        let mut cmd = Command::new(time);
        cmd.args(["-f", "%M", BIN]);
        cmd
    } else {
        Command::new(BIN)
    };
    cmd.arg("parse").arg("--summary-json").args(files);
    // SAFETY: setrlimit is async-signal-safe and touches no state shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 4 * MAX_RSS_KIB * 1024,
                rlim_max: 4 * MAX_RSS_KIB * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run meshtap");
    let code = out.status.code().expect("exited, not killed");
    let run = parse_output(code, &out.stdout, &out.stderr);
    let rss = time.exists().then(|| {
        let last = run.stderr.lines().last().unwrap_or_default();
        last.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no peak RSS from /usr/bin/time: {}", run.stderr))
    });
    (run, rss)
}

fn count(run: &Run, stage: &str, counter: &str) -> u64 {
    run.summary[stage][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("summary {stage}.{counter}: {:#}", run.summary))
}

#[test]
fn garbage_binary_and_unknown_markers_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let first = V2::new(
        "6b06a18c.7f2ddc2776b0.1",
        "POST",
        b"{\"a\":1}",
        b"{\"ok\":true}",
    );
    let second = V2::new("6b06a18c.7f2ddc2776b0.2", "GET", b"", b"plain text");
    let binary = V2::new(
        "6b06a18c.7f2ddc2776b0.3",
        "PUT",
        b"\x00\x01\xff\xfe binary \x80",
        b"\xc3\x28 invalid utf-8",
    );
    let mut log = CriLog::new();
    log.lines(20, &first.all_lines());
    // Not CRI at all: malformed container lines.
    log.unframed(b"this is not a container log line")
        .unframed(b"\x00\x01\x02\xff\xfe\xfd binary junk \x80\x81")
        .unframed(b"")
        .unframed(b"{\"log\":\"docker?\\n\",\"stream\":\"stderr\"}");
    // Framed, but not Envoy: junk and binary on stdout (stray lines), then pilot-agent's output.
    log.framed("stdout", b"random output on stdout")
        .framed("stdout", b"\xff\xfe\x00 binary on stdout")
        .framed(
            "stdout",
            b"2026-11-25T08:47:45.800000Z\tinfo\tads\tADS: \"\" sidecar~10.0.0.1 push",
        );
    // Another Envoy logger with a continuation line of junk: skipped with its message.
    log.framed(
        "stderr",
        b"[2026-11-25 08:47:45.801][1][warning][main] [source/server/server.cc:1059] There is no",
    )
    .framed("stderr", b"\xff\xfe junk continuing a non-Lua message");
    // Markers meshtap does not know, and v2 lines that do not parse.
    log.lua(
        20,
        b"[logPayload] v2 zz 6b06a18c.7f2ddc2776b0.9 0 1795596465772 -",
    )
    .lua(20, b"[logPayload] v2 rqe 6b06a18c.7f2ddc2776b0.9")
    .lua(20, b"[logPayload] v2 rqb 6b06a18c.7f2ddc2776b0.9 x aGk=")
    .lua(20, b"[logPayload] v2 rq \xff\xfe 0 1795596465772 -")
    .lua(20, b"[logPayload] v2 ")
    .lua(20, b"[logPayload] something")
    .lua(20, b"\xff\xfe\x00 binary script log");
    // Two exchanges interleaved line by line (v2 needs no order), then one with binary bodies.
    let (a, b) = (second.all_lines(), binary.request_lines());
    for i in 0..a.len().max(b.len()) {
        if let Some(l) = a.get(i) {
            log.lua(20, l.as_bytes());
        }
        if let Some(l) = b.get(i) {
            log.lua(21, l.as_bytes());
        }
    }
    log.lines(21, &binary.response_lines());
    let path = log.write(dir.path(), "envoy.log");

    let run = meshtap(&[&path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.records.len(), 3, "{:#?}", run.records);
    run.assert_exact(&first);
    run.assert_exact(&second);
    run.assert_exact(&binary);
    let rec = run.record(&binary.sid);
    assert_eq!(rec["request"]["body_encoding"], "base64");
    assert_eq!(rec["response"]["body_encoding"], "base64");
    assert_eq!(run.records[0]["log"]["stream"], first.sid.as_str());

    assert_eq!(count(&run, "decode", "malformed"), 4);
    assert_eq!(count(&run, "envoy", "stray_lines"), 2);
    assert_eq!(count(&run, "assemble", "malformed_v2"), 5);
    assert_eq!(count(&run, "assemble", "unattributed_v1"), 2);
    assert_eq!(count(&run, "assemble", "exchanges"), 3);
    assert_eq!(count(&run, "assemble", "incomplete"), 0);
    assert_eq!(count(&run, "assemble", "with_warnings"), 0);
    assert!(
        run.stderr.contains("skipping container log line"),
        "{}",
        run.stderr
    );
}

#[test]
fn binary_v1_body_chunks_survive_as_base64() {
    let dir = tempfile::tempdir().unwrap();
    let binary: &[u8] = b"\xff\xfe\x80 bin\tary \x01\x7f\xc3";
    let mut log = CriLog::new();
    for (chunk, thread) in [
        (binary, 1832),
        ("h\u{e9}llo w\u{f6}rld \u{2713}".as_bytes(), 1833),
    ] {
        log.lua(thread, b"[logPayload] started")
            .lua(thread, b"[logPayload] showing bodyChunks")
            .lua(thread, chunk)
            .lua(thread, b"[logPayload] showing bodyChunks")
            .lua(thread, b"[logPayload] finished")
            .lua(thread, b"[logPayload] started")
            .lua(thread, b"[logPayload] showing bodyChunks")
            .lua(thread, b"ok")
            .lua(thread, b"[logPayload] showing bodyChunks")
            .lua(thread, b"[logPayload] finished");
    }
    let path = log.write(dir.path(), "envoy.log");
    let run = meshtap(&[&path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.records.len(), 2, "{:#?}", run.records);
    let (bin, text) = (&run.records[0], &run.records[1]);
    assert_eq!(bin["log"]["thread"], 1832);
    assert_eq!(bin["source"], "lua-v1");
    assert_eq!(bin["complete"], true);
    assert_eq!(bin["request"]["body_encoding"], "base64");
    assert_body(&bin["request"], binary);
    assert_body(&bin["response"], b"ok");
    assert_eq!(text["request"]["body_encoding"], "utf8");
    assert_eq!(text["request"]["body"], "h\u{e9}llo w\u{f6}rld \u{2713}");
    // Body-only records always carry the inferred-pairing warning. A binary v1 body read from a
    // CRI file also says it may have been altered (containerd drops \r before \n).
    let warnings = |r: &serde_json::Value| -> Vec<String> {
        r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .collect()
    };
    let (bin_w, text_w) = (warnings(bin), warnings(text));
    assert_eq!(bin_w.len(), 2, "{bin_w:?}");
    assert!(bin_w[0].starts_with("lua-v1 logs raw body bytes and this body looks binary"));
    assert!(bin_w[1].starts_with("lua-v1 body-only: request and response were paired"));
    assert_eq!(text_w.len(), 1, "{text_w:?}");
    assert!(text_w[0].starts_with("lua-v1 body-only: request and response were paired"));
}

#[test]
fn plain_summary_counts_what_was_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let ex = V2::new("s.1", "POST", b"x", b"y");
    let mut log = CriLog::new();
    log.lines(1, &ex.all_lines());
    log.unframed(b"garbage").lua(1, b"[logPayload] v2 zz s.2 0");
    let path = log.write(dir.path(), "envoy.log");
    let out = Command::new(BIN)
        .arg("parse")
        .arg(&path)
        .output()
        .expect("run meshtap");
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "1 files, 8 lines, 7 lua messages, 1 exchanges (0 incomplete, 0 with warnings), \
             2 skipped (1 malformed container lines, 0 stray lines, 0 unattributed v1 messages, \
             1 malformed v2 lines), 0 lua script errors"
        ),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn malformed_v2_lines_damage_only_their_own_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let before = V2::new("ok.1", "POST", b"before", b"before response");
    let after = V2::new("ok.2", "POST", b"after", b"after response");
    let mut log = CriLog::new();
    log.lines(1, &before.all_lines());
    // Headers that are not base64.
    log.lua(
        2,
        b"[logPayload] v2 rq bad.h 0 1795596465772 !!!not-base64!!!",
    );
    log.lua(2, b"[logPayload] v2 rqe bad.h 1 1795596465773 0 0");
    log.lua(2, b"[logPayload] v2 rs bad.h 0 1795596465774 -");
    log.lua(2, b"[logPayload] v2 rse bad.h 1 1795596465775 0 0");
    // A body piece that is not base64.
    log.lua(3, b"[logPayload] v2 rq bad.b 0 1795596465772 -");
    log.lua(3, b"[logPayload] v2 rqb bad.b 1 aGVsbG8=");
    log.lua(3, b"[logPayload] v2 rqb bad.b 2 #$%^&*");
    log.lua(3, b"[logPayload] v2 rqe bad.b 3 1795596465773 10 0");
    log.lua(3, b"[logPayload] v2 rs bad.b 0 1795596465774 -");
    log.lua(3, b"[logPayload] v2 rse bad.b 1 1795596465775 0 0");
    // A body line lacking its body field: skipped as malformed, then seen as a gap.
    log.lua(4, b"[logPayload] v2 rq bad.m 0 1795596465772 -");
    log.lua(4, b"[logPayload] v2 rqb bad.m 1");
    log.lua(4, b"[logPayload] v2 rqe bad.m 2 1795596465773 3 0");
    log.lua(4, b"[logPayload] v2 rs bad.m 0 1795596465774 -");
    log.lua(4, b"[logPayload] v2 rse bad.m 1 1795596465775 0 0");
    log.lines(1, &after.all_lines());
    let path = log.write(dir.path(), "envoy.log");

    let run = meshtap(&[&path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.records.len(), 5, "{:#?}", run.records);
    run.assert_exact(&before);
    run.assert_exact(&after);

    let h = run.record("bad.h");
    assert_eq!(h["complete"], false);
    assert!(
        h["warnings"][0]
            .as_str()
            .unwrap()
            .contains("request headers unreadable"),
        "{h:#}"
    );
    assert_eq!(h["request"]["headers"], serde_json::json!({}));

    let b = run.record("bad.b");
    assert_eq!(b["complete"], false);
    assert_eq!(b["request"]["body"], "hello");
    assert_eq!(b["request"]["body_size"], 10);
    assert_eq!(b["request"]["body_truncated"], true);
    let reason = b["request"]["truncated_reason"].as_str().unwrap();
    assert!(reason.contains("unreadable"), "{reason}");

    let m = run.record("bad.m");
    assert_eq!(m["complete"], false);
    assert_eq!(
        m["warnings"],
        serde_json::json!(["lost request events: expected line 1 of the stream, got line 2"])
    );
    assert_eq!(m["request"]["body_truncated"], true);

    assert_eq!(count(&run, "assemble", "malformed_v2"), 1);
    assert_eq!(count(&run, "assemble", "incomplete"), 3);
}

/// The v2 format documents that "a lost or unreadable line makes the record `complete: false`
/// with a warning"; an unreadable body piece only sets `body_truncated`.
#[test]
fn unreadable_v2_body_line_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = CriLog::new();
    log.lua(3, b"[logPayload] v2 rq bad.b 0 1795596465772 -");
    log.lua(3, b"[logPayload] v2 rqb bad.b 1 #$%^&*");
    log.lua(3, b"[logPayload] v2 rqe bad.b 2 1795596465773 6 0");
    log.lua(3, b"[logPayload] v2 rs bad.b 0 1795596465774 -");
    log.lua(3, b"[logPayload] v2 rse bad.b 1 1795596465775 0 0");
    let path = log.write(dir.path(), "envoy.log");
    let run = meshtap(&[&path]);
    let b = run.record("bad.b");
    assert_eq!(b["complete"], false);
    assert_ne!(b["warnings"], serde_json::json!([]), "{b:#}");
}

#[test]
fn v2_sequence_gap_marks_the_record_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let whole = V2::new("g.1", "POST", b"whole", b"fine");
    let mut log = CriLog::new();
    log.lua(5, b"[logPayload] v2 rq g.2 0 1795596465772 -");
    log.lua(
        5,
        format!("[logPayload] v2 rqb g.2 1 {}", b64(b"first ")).as_bytes(),
    );
    // Line 2 (the second body piece) is lost.
    log.lua(
        5,
        format!("[logPayload] v2 rqb g.2 3 {}", b64(b"third")).as_bytes(),
    );
    log.lua(5, b"[logPayload] v2 rqe g.2 4 1795596465773 17 0");
    log.lua(5, b"[logPayload] v2 rs g.2 0 1795596465774 -");
    log.lua(
        5,
        format!("[logPayload] v2 rsb g.2 1 {}", b64(b"ok")).as_bytes(),
    );
    log.lua(5, b"[logPayload] v2 rse g.2 2 1795596465775 2 0");
    log.lines(6, &whole.all_lines());
    let path = log.write(dir.path(), "envoy.log");

    let run = meshtap(&[&path]);
    assert_eq!(run.code, 0);
    assert_eq!(run.records.len(), 2);
    run.assert_exact(&whole);
    let g = run.record("g.2");
    assert_eq!(g["complete"], false);
    assert_eq!(
        g["warnings"],
        serde_json::json!(["lost request events: expected line 2 of the stream, got line 3"])
    );
    assert_eq!(g["request"]["body"], "first third");
    assert_eq!(g["request"]["body_size"], 17);
    assert_eq!(g["request"]["body_truncated"], true);
    assert_eq!(g["response"]["body"], "ok");
    assert_eq!(g["response"]["body_truncated"], false);
    assert_eq!(count(&run, "assemble", "incomplete"), 1);
    assert_eq!(count(&run, "assemble", "with_warnings"), 1);
}

#[test]
fn truncated_last_line_of_a_cri_file() {
    let dir = tempfile::tempdir().unwrap();
    let whole = V2::new("t.1", "POST", b"whole", b"fine");
    let mut log = CriLog::new();
    log.lines(1, &whole.all_lines());
    let cut = V2::new("t.2", "POST", b"request", b"hello world");
    log.lines(1, &cut.request_lines());
    log.lines(1, &cut.response_lines()[..1]);
    // The runtime was writing `rsb` ("hello world") when the file ended: no "\n", cut mid-base64.
    log.lua(1, b"[logPayload] v2 rsb t.2 1 aGVsbG8gd29y");
    assert_eq!(log.out.pop(), Some(b'\n'));
    let path = log.write(dir.path(), "envoy.log");

    let run = meshtap(&[&path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.records.len(), 2);
    run.assert_exact(&whole);
    let r = run.record("t.2");
    assert_eq!(r["complete"], false);
    assert_body(&r["request"], b"request");
    assert_eq!(r["response"]["body"], "hello wor");
    assert_eq!(r["response"]["body_truncated"], true);
    assert!(
        r["response"]["truncated_reason"]
            .as_str()
            .unwrap()
            .contains("cut"),
        "{r:#}"
    );
    assert!(
        r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("log ended")),
        "{r:#}"
    );
    assert_eq!(count(&run, "decode", "truncated"), 1);
}

#[test]
fn raw_file_without_final_newline_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let ex = V2::new("r.1", "POST", b"abc", b"def");
    let mut raw = Vec::new();
    for line in ex.all_lines() {
        raw.extend_from_slice(
            format!("[2026-11-25 08:47:45.772][3][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: {line}\n").as_bytes(),
        );
    }
    assert_eq!(raw.pop(), Some(b'\n'));
    let path = dir.path().join("envoy.txt");
    std::fs::write(&path, raw).unwrap();
    let run = meshtap(&[&path]);
    assert_eq!(run.code, 0);
    assert_eq!(run.records.len(), 1);
    run.assert_exact(&ex);
}

#[test]
fn fifty_megabyte_line_is_bounded_and_later_exchanges_parse() {
    const HUGE: usize = 50 << 20;
    let dir = tempfile::tempdir().unwrap();
    let before = V2::new("big.0", "POST", b"before", b"before response");
    let after = V2::new("big.2", "POST", b"after", b"after response");
    let big_body: Vec<u8> = (0..HUGE / 4 * 3).map(|i| b'a' + (i % 26) as u8).collect();
    let big = V2::new("big.1", "POST", b"small", &big_body);
    let mut log = CriLog::new();
    log.lines(1, &before.all_lines());
    log.lines(2, &big.request_lines());
    log.lines(2, &big.response_lines()[..1]);
    // The whole 37.5 MB body in one `rsb` line of 50 MB of base64.
    log.lua(
        2,
        format!("[logPayload] v2 rsb big.1 1 {}", b64(&big_body)).as_bytes(),
    );
    log.lua(
        2,
        format!(
            "[logPayload] v2 rse big.1 2 1795596465783 {} 0",
            big_body.len()
        )
        .as_bytes(),
    );
    // 50 MB of junk on stdout, without a newline for the reader to find early.
    log.framed("stdout", &vec![b'x'; HUGE]);
    log.lines(1, &after.all_lines());
    let path = log.write(dir.path(), "envoy.log");
    drop(log);
    assert!(std::fs::metadata(&path).unwrap().len() > 2 * HUGE as u64);

    let (run, max_rss_kib) = meshtap_measured(&[&path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.records.len(), 3, "{}", run.stderr);
    run.assert_exact(&before);
    run.assert_exact(&after);
    let r = run.record("big.1");
    assert_eq!(r["complete"], false);
    assert_body(&r["request"], b"small");
    let rs = &r["response"];
    assert_eq!(rs["body_truncated"], true);
    assert_eq!(rs["body_size"], big_body.len());
    let kept = decoded_body(rs);
    assert!(kept.len() < 2 << 20, "kept {} bytes", kept.len());
    assert_eq!(kept[..], big_body[..kept.len()]);
    assert!(
        rs["truncated_reason"].as_str().unwrap().contains("cut"),
        "{rs:#}"
    );
    assert_eq!(count(&run, "decode", "truncated"), 2);
    // Two 50 MB lines went through; the reader and joiner keep at most 2 MiB of a line.
    if let Some(kib) = max_rss_kib {
        assert!(kib < MAX_RSS_KIB, "peak RSS {kib} KiB for two 50 MB lines");
    }
}

#[test]
fn unreadable_files_are_reported_and_the_rest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let one = V2::new("f.1", "POST", b"one", b"1");
    let two = V2::new("f.2", "POST", b"two", b"2");
    let mut log = CriLog::new();
    log.lines(1, &one.all_lines());
    let good1 = log.write(dir.path(), "first.log");
    let mut log = CriLog::new();
    log.lines(1, &two.all_lines());
    let good2 = log.write(dir.path(), "second.log");
    let missing = dir.path().join("no-such-file.log");
    let subdir = dir.path().join("a-directory");
    std::fs::create_dir(&subdir).unwrap();

    let run = meshtap(&[&good1, &missing, &subdir, &good2]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.records.len(), 2);
    run.assert_exact(&one);
    run.assert_exact(&two);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("meshtap parse: error: "))
        .collect();
    assert_eq!(errors.len(), 2, "{}", run.stderr);
    assert!(
        errors[0].contains(&format!("cannot open {}", missing.display())),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("No such file"), "{}", errors[0]);
    assert!(
        errors[1].contains(&subdir.display().to_string()),
        "{}",
        errors[1]
    );
    assert!(errors[1].contains("directory"), "{}", errors[1]);
    assert_eq!(run.summary["files"], 4);
    assert_eq!(run.summary["errors"].as_array().unwrap().len(), 2);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Exchanges with incompressible bodies, so that a cut in the gzip stream lands among them.
fn many_exchanges(n: usize) -> (CriLog, Vec<V2>) {
    let mut log = CriLog::new();
    let mut exchanges = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..n {
        let mut body = vec![0u8; 3000];
        for b in &mut body {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let ex = V2::new(&format!("z.{i}"), "POST", &body, format!("{i}").as_bytes());
        log.lines(7, &ex.all_lines());
        exchanges.push(ex);
    }
    (log, exchanges)
}

#[test]
fn gzipped_file_reads_like_the_plain_one() {
    let dir = tempfile::tempdir().unwrap();
    let (log, exchanges) = many_exchanges(20);
    let plain = log.write(dir.path(), "envoy.log");
    let gz = dir.path().join("envoy.log.gz");
    std::fs::write(&gz, gzip(&log.out)).unwrap();

    let run = meshtap(&[&gz]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.records.len(), 20);
    for ex in &exchanges {
        run.assert_exact(ex);
    }
    // Same ids and offsets as the plain file: both are read from the decompressed bytes.
    let plain_run = meshtap(&[&plain]);
    let strip = |records: &[Value]| -> Vec<Value> {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["log"]["file"] = Value::Null;
                r
            })
            .collect()
    };
    assert_eq!(strip(&run.records), strip(&plain_run.records));
}

#[test]
fn corrupt_gzip_is_an_error_and_what_came_before_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (log, exchanges) = many_exchanges(40);
    let compressed = gzip(&log.out);
    let cut = dir.path().join("cut.log.gz");
    std::fs::write(&cut, &compressed[..compressed.len() / 2]).unwrap();
    let mut garbled = vec![0x1f, 0x8b];
    garbled.extend_from_slice(b"this is not deflate data at all, just text after the magic");
    let garbage = dir.path().join("garbage.log.gz");
    std::fs::write(&garbage, garbled).unwrap();
    let good = V2::new("after.1", "GET", b"", b"still read");
    let mut after = CriLog::new();
    after.lines(1, &good.all_lines());
    let good_path = after.write(dir.path(), "after.log");

    let run = meshtap(&[&cut, &garbage, &good_path]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    run.assert_exact(&good);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("meshtap parse: error: "))
        .collect();
    assert_eq!(errors.len(), 2, "{}", run.stderr);
    assert!(
        errors[0].contains(&cut.display().to_string()),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("gzip"), "{}", errors[0]);
    assert!(
        errors[1].contains(&garbage.display().to_string()),
        "{}",
        errors[1]
    );
    // The exchanges before the damage are exact; the one it cut is flagged; nothing after it.
    let from_cut: Vec<&Value> = run
        .records
        .iter()
        .filter(|r| r["log"]["file"] == cut.display().to_string())
        .collect();
    assert!(
        from_cut.len() >= 5 && from_cut.len() < 40,
        "{} records from the cut file",
        from_cut.len()
    );
    let (last, whole) = from_cut.split_last().unwrap();
    for (r, ex) in whole.iter().zip(&exchanges) {
        assert_eq!(r["log"]["stream"], ex.sid.as_str());
        run.assert_exact(ex);
    }
    assert_eq!(last["complete"], false, "{last:#}");
    assert_eq!(run.records.len(), from_cut.len() + 1);
}
