//! Model-based test of `meshtap run` against synthetic but realistic istio-proxy logs.
//!
//! A deterministic PRNG drives random sequences of what happens on a node: Envoy logging lua-v2
//! exchanges (base64 headers and bodies, interleaved streams on two worker threads, lines over
//! containerd's 16 KiB split into `P`/`F` pieces) and seed-format lua-v1 exchanges (headers
//! variant, multi-line header blocks and bodies) on a third thread, pilot-agent stdout lines and
//! other Envoy lines in between; a line written in two writes; kubelet rotating `0.log` by rename
//! and compressing older rotated files; copy-truncate; pods added and deleted (after the agent
//! surely delivered them, or at once); the agent stopped with SIGTERM or killed with SIGKILL
//! and started again, with log activity while it is down.
//!
//! Every exchange's path ends with `/t/<token>` and its bodies carry the token, so the test knows
//! which exchanges were written. At the end every started exchange of a live pod is finished, the
//! agent catches up and is stopped, and the file sink's files must hold every exchange written
//! exactly once (no id twice, not even raw: the file sink rolls back to its checkpoint), each
//! record exact, and no record of an exchange never written. Exchanges of a pod deleted at once
//! may be lost (the agent cannot read what was removed), but what is delivered for them must be
//! right for that pod (exact when complete, a prefix and flagged when not). kubelet also deletes
//! the oldest rotated file, read or not: exchanges with lines in it (and, since the seed format
//! names no stream, the pod's v1 exchanges) must then be honest rather than complete: a record
//! without a warning must be exact. Ids must be those `meshtap parse` gives for the files as they
//! are at the end.
//!
//! Files are compressed and SIGTERMs sent at any moment, including while a freshly started
//! agent is still looking for its streams (two bugs lived there; see `regressions`).
//! `MESHTAP_AGENT_SETTLE=1` waits for a new agent's first checkpoint instead, to isolate them.
//!
//! Environment: `MESHTAP_MODEL_SEED` replays a run's choices (the seed is printed; the agent's
//! timing is real, so a replay is close, not identical), `MESHTAP_MODEL_SEQUENCES` (default 6) and
//! `MESHTAP_MODEL_OPS` (operations per sequence, default 120) size it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::Value;

use super::{seed_from_env, usize_from_env, wait_for, Agent, Failures, Rng, Setup};
use crate::support::meshtap::body as record_body;
use crate::support::runtime::rfc3339_nano;
use crate::support::scenario::token;

const V2_THREADS: [u32; 2] = [23, 24];
const V1_THREAD: u32 = 31;
const NAMESPACE: &str = "bookinfo";
/// containerd's line limit: longer lines become `P` pieces and a final `F` piece.
const CRI_MAX_LINE: usize = 16384;
/// The v2 filter's largest body piece per line (12 KiB raw, 16 KiB of base64).
const V2_PIECE: usize = 12 * 1024;

#[test]
fn agent_model_sequences() {
    let seed = seed_from_env("MESHTAP_MODEL_SEED");
    let sequences = usize_from_env("MESHTAP_MODEL_SEQUENCES", 6);
    let ops = usize_from_env("MESHTAP_MODEL_OPS", 120);
    eprintln!(
        "agent model: seed {seed:#x} (MESHTAP_MODEL_SEED), {sequences} sequences of {ops} operations"
    );
    let began = Instant::now();
    let mut rng = Rng::new(seed);
    for n in 0..sequences {
        let sequence_seed = rng.next();
        let t = Instant::now();
        let summary = run_sequence(seed, n, sequence_seed, ops);
        eprintln!(
            "agent model: sequence {n} (seed {sequence_seed:#x}): {summary} in {:.2}s",
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "agent model: {sequences} sequences in {:.2}s",
        began.elapsed().as_secs_f64()
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    V1,
    V2,
}

/// What was logged for one exchange, and how much of it was written.
struct Truth {
    token: u32,
    pod: usize,
    source: Source,
    method: &'static str,
    path: String,
    status: u16,
    request: Vec<u8>,
    response: Vec<u8>,
    sid: Option<String>,
    messages: usize,
    /// Messages written whole.
    written: usize,
    /// At least the start of one line was written.
    started: bool,
    /// A file holding some of it was deleted (maybe unread), or it is a v1 exchange of a pod
    /// that lost a file: what is delivered must be honest, not complete.
    lossy: bool,
}

/// One Envoy log message: its thread and the text after `script log: ` (or a whole other line).
struct Msg {
    /// The exchange it belongs to (`None`: noise).
    exchange: Option<usize>,
    thread: u32,
    text: Vec<u8>,
    /// Not a Lua message: `text` is the whole line after CRI framing, on `stream`.
    raw_stream: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodState {
    Live,
    /// Deleted after every exchange was delivered and checkpointed: all must be there.
    DeletedRead,
    /// Deleted at once: its exchanges may be lost.
    DeletedNow,
}

struct Pod {
    name: String,
    /// `<root>/<ns>_<pod>_<uid>`
    pod_dir: PathBuf,
    /// `<pod_dir>/istio-proxy`
    dir: PathBuf,
    state: PodState,
    live_exists: bool,
    live_len: u64,
    /// Rotated files, oldest first, by current path (plain or `.gz`), with the exchanges that
    /// have messages in each.
    rotated: Vec<PathBuf>,
    rotated_exchanges: Vec<BTreeSet<usize>>,
    /// Exchanges with messages in the live file.
    live_exchanges: BTreeSet<usize>,
    /// A rotated file was deleted.
    lossy: bool,
    /// The rest of a line written in two writes, and the exchange whose message it ends.
    split: Option<(Vec<u8>, Option<usize>)>,
    /// v2 exchanges being logged, with their messages not written yet.
    inflight: Vec<(usize, VecDeque<Msg>)>,
    /// The v1 exchange being logged (one at a time on its thread).
    v1: Option<(usize, VecDeque<Msg>)>,
    /// The last v1 exchange ended with a body's `showing bodyChunks`: the seed format ends it
    /// only with the thread's next event.
    v1_open_end: bool,
    sid_prefix: String,
    next_sid: u64,
}

impl Pod {
    fn live(&self) -> PathBuf {
        self.dir.join("0.log")
    }
}

struct World {
    rng: Rng,
    setup: Setup,
    pods: Vec<Pod>,
    /// Index `token - 1`.
    truths: Vec<Truth>,
    /// Nanoseconds after the start of the fake clock.
    clock_ns: i64,
    rotations: i64,
    ops: Vec<String>,
    agent: Option<Agent>,
    /// The running agent has not written a checkpoint yet (it may still be resuming).
    agent_fresh: bool,
    failures: Failures,
    started: Instant,
    /// Agent starts, graceful stops, crashes.
    counts: [usize; 3],
    /// Rotated files deleted by "kubelet".
    deleted_files: usize,
}

fn clock_base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 8, 47, 45).unwrap() + chrono::Duration::milliseconds(772)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `name\nvalue\n` for every header, base64: the v2 header block.
fn v2_headers(headers: &[(String, String)]) -> String {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.extend_from_slice(name.as_bytes());
        block.push(b'\n');
        block.extend_from_slice(value.as_bytes());
        block.push(b'\n');
    }
    b64(&block)
}

fn run_sequence(seed: u64, n: usize, sequence_seed: u64, ops: usize) -> String {
    let dir = tempfile::Builder::new()
        .prefix("meshtap-agent-model-")
        .tempdir()
        .unwrap();
    let mut rng = Rng::new(sequence_seed);
    let mut setup = Setup::new(dir.path());
    // A small output file makes the sink rotate, and roll back across rotations after a crash.
    if rng.chance(1, 2) {
        setup.max_bytes = 64 * 1024;
    }
    let mut world = World {
        rng,
        setup,
        pods: Vec::new(),
        truths: Vec::new(),
        clock_ns: 0,
        rotations: 0,
        ops: Vec::new(),
        agent: None,
        agent_fresh: false,
        failures: Failures::default(),
        started: Instant::now(),
        counts: [0; 3],
        deleted_files: 0,
    };
    world.add_pod();
    world.start_agent();
    for _ in 0..ops {
        world.step();
        world.check_alive();
        // Pacing: lets the agent get anywhere in its work before the next operation.
        let pause = world.rng.below(25);
        std::thread::sleep(Duration::from_millis(pause));
    }
    world.finish_and_check();
    let mut summary = format!(
        "{} exchanges in {} pods, {} agent starts, {} SIGTERM, {} SIGKILL, sink max_bytes {}",
        world.truths.len(),
        world.pods.len(),
        world.counts[0],
        world.counts[1],
        world.counts[2],
        world.setup.max_bytes
    );
    if world.deleted_files > 0 {
        let lossy = world.truths.iter().filter(|t| t.lossy).count();
        let lost = fs::read_to_string(&world.setup.stderr)
            .unwrap_or_default()
            .matches("Log data was lost")
            .count();
        summary.push_str(&format!(
            ", {} rotated files deleted ({lossy} exchanges checked for honesty only, {lost} losses reported by the agent)",
            world.deleted_files
        ));
    }
    if !world.failures.is_empty() {
        let kept = dir.keep();
        let ops_log = world.ops.join("\n    ");
        panic!(
            "agent model: seed {seed:#x} (MESHTAP_MODEL_SEED={seed:#x}), sequence {n} (seed {sequence_seed:#x}): \
             {} failure(s); files kept in {}\n{}\n  operations:\n    {ops_log}\n--- agent stderr (tail) ---\n{}",
            world.failures.0.len(),
            kept.display(),
            world.failures.report(40),
            world.setup.stderr_tail(3000)
        );
    }
    summary
}

impl World {
    fn log(&mut self, what: String) {
        let at = self.started.elapsed().as_millis();
        self.ops.push(format!("{at:>6}ms {what}"));
    }

    fn live_pods(&self) -> Vec<usize> {
        (0..self.pods.len())
            .filter(|&i| self.pods[i].state == PodState::Live)
            .collect()
    }

    fn step(&mut self) {
        let running = self.agent.is_some();
        let live = self.live_pods();
        let mut choices: Vec<(u64, u8)> = vec![
            (40, b'a'), // append
            (8, b's'),  // append ending in half a line
            (6, b'r'),  // rotate by rename
            (4, b'z'),  // gzip an older rotated file
            (3, b'c'),  // copy-truncate
            (2, b'o'),  // kubelet deletes the oldest rotated file
        ];
        if live.len() < 3 {
            choices.push((3, b'p'));
        }
        if live.len() > 1 || self.pods.len() < 6 {
            choices.push((1, b'D')); // delete after delivery
            choices.push((1, b'd')); // delete at once
        }
        if running {
            choices.push((3, b'T'));
            choices.push((5, b'K'));
        } else {
            choices.push((14, b'S'));
            // While the agent is down, files pile up and kubelet deletes unread ones.
            choices.push((6, b'r'));
            choices.push((4, b'o'));
        }
        let total: u64 = choices.iter().map(|c| c.0).sum();
        let mut x = self.rng.below(total);
        let op = choices
            .iter()
            .find(|c| {
                if x < c.0 {
                    true
                } else {
                    x -= c.0;
                    false
                }
            })
            .unwrap()
            .1;
        let pod = *self.rng.pick(&live);
        match op {
            b'a' => {
                let k = self.rng.range(1, 12) as usize;
                self.append(pod, k, false);
            }
            b's' => {
                let k = self.rng.range(1, 6) as usize;
                self.append(pod, k, true);
            }
            b'r' => self.rotate(pod),
            b'z' => self.gzip(pod),
            b'c' => self.copy_truncate(pod),
            b'o' => self.delete_oldest_rotated(pod),
            b'p' => self.add_pod(),
            b'D' => self.delete_pod_after_delivery(pod),
            b'd' => self.delete_pod_now(pod),
            b'T' => self.stop_agent(),
            b'K' => self.crash_agent(),
            b'S' => self.start_agent(),
            _ => unreachable!(),
        }
        if self.live_pods().is_empty() {
            self.add_pod();
        }
    }

    // ---- the agent ----

    fn start_agent(&mut self) {
        match Agent::try_start(&mut self.setup) {
            Ok(agent) => {
                self.log(format!("agent started (pid {})", agent.pid()));
                self.agent = Some(agent);
                self.agent_fresh = true;
                self.counts[0] += 1;
            }
            Err(why) => {
                self.failures
                    .fail(format!("the agent did not start: {why}"));
                self.log("agent did not start".into());
            }
        }
    }

    /// With `MESHTAP_AGENT_SETTLE=1`, a freshly started agent is left alone until its first
    /// checkpoint (how the two fixed start-up bugs in `regressions` were kept apart).
    fn settle_fresh_agent(&mut self) {
        if !self.agent_fresh || std::env::var_os("MESHTAP_AGENT_SETTLE").is_none() {
            return;
        }
        self.agent_fresh = false;
        let Some(agent) = &self.agent else { return };
        let settled = wait_for(Duration::from_secs(30), || {
            let text = agent.metrics()?;
            (super::metric(&text, "meshtap_checkpoint_writes_total")? > 0.0).then_some(())
        });
        if settled.is_none() {
            self.failures
                .fail("no checkpoint within 30 s of the agent's start");
        }
    }

    fn stop_agent(&mut self) {
        self.settle_fresh_agent();
        let Some(agent) = self.agent.take() else {
            return;
        };
        self.counts[1] += 1;
        match agent.terminate() {
            Ok(status) if status.success() => self.log("agent stopped (SIGTERM, exit 0)".into()),
            Ok(status) => {
                self.failures
                    .fail(format!("SIGTERM: the agent exited with {status}, not 0"));
                self.log(format!("agent stopped (SIGTERM): {status}"));
            }
            Err(why) => {
                self.failures.fail(format!("SIGTERM: {why}"));
                self.log(format!("agent stop failed: {why}"));
            }
        }
        if self.rng.chance(1, 2) {
            self.start_agent();
        }
    }

    fn crash_agent(&mut self) {
        let Some(agent) = self.agent.take() else {
            return;
        };
        self.counts[2] += 1;
        agent.crash();
        self.log("agent killed (SIGKILL)".into());
        if self.rng.chance(1, 2) {
            self.start_agent();
        }
    }

    fn check_alive(&mut self) {
        if let Some(agent) = &mut self.agent {
            if let Some(status) = agent.exited() {
                self.failures
                    .fail(format!("the agent exited on its own: {status}"));
                self.log(format!("agent exited on its own: {status}"));
                self.agent = None;
                self.start_agent();
            }
        }
    }

    // ---- the fake clock and the runtime's framing ----

    fn tick(&mut self) -> i64 {
        self.clock_ns += 1_000 + self.rng.below(300_000) as i64;
        self.clock_ns
    }

    fn now(&self) -> DateTime<Utc> {
        clock_base() + chrono::Duration::nanoseconds(self.clock_ns)
    }

    /// One physical line as containerd frames it (split into `P` pieces past 16 KiB).
    fn cri_line(&mut self, out: &mut Vec<u8>, stream: &str, content: &[u8]) {
        let pieces: Vec<&[u8]> = if content.is_empty() {
            vec![&[][..]]
        } else {
            content.chunks(CRI_MAX_LINE).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            self.tick();
            let tag = if i + 1 == pieces.len() { "F" } else { "P" };
            out.extend_from_slice(
                format!("{} {stream} {tag} ", rfc3339_nano(self.now())).as_bytes(),
            );
            out.extend_from_slice(piece);
            out.push(b'\n');
        }
    }

    /// A message as it lands in the container log: Envoy's default layout, each physical line
    /// framed, a pilot-agent stdout line now and then between the lines of a multi-line message.
    /// Returns the bytes and where its first physical line ends.
    fn render(&mut self, msg: &Msg) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        if let Some(stream) = msg.raw_stream {
            self.cri_line(&mut out, stream, &msg.text);
            let first = out.len();
            return (out, first);
        }
        self.tick();
        let time = self.now().format("%Y-%m-%d %H:%M:%S%.3f");
        let mut text = format!(
            "[{time}][{}][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: ",
            msg.thread
        )
        .into_bytes();
        text.extend_from_slice(&msg.text);
        let mut first = 0;
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            if i > 0 && self.rng.chance(1, 6) {
                let stdout = self.pilot_agent_line();
                self.cri_line(&mut out, "stdout", stdout.as_bytes());
            }
            self.cri_line(&mut out, "stderr", line);
            if i == 0 {
                first = out.len();
            }
        }
        (out, first)
    }

    fn pilot_agent_line(&mut self) -> String {
        let lines = [
            "info\tads\tADS: \"\" Push debounce stable",
            "info\txdsproxy\tconnected to upstream XDS server: istiod.istio-system.svc:15012",
            "warn\tsds\tsecret fetch took longer than expected [logPayload] started",
        ];
        let line = *self.rng.pick(&lines);
        format!("{}\t{line}", self.now().format("%Y-%m-%dT%H:%M:%S%.6fZ"))
    }

    fn noise(&mut self) -> Msg {
        let time = self.now().format("%Y-%m-%d %H:%M:%S%.3f").to_string();
        let (stream, text) = match self.rng.below(3) {
            0 => ("stdout", self.pilot_agent_line()),
            1 => (
                "stderr",
                format!("[{time}][1][warning][config] [source/extensions/config_subscription/grpc/grpc_stream.h:155] StreamAggregatedResources gRPC config stream to xds-grpc closed: 13,"),
            ),
            _ => (
                "stderr",
                format!("[{time}][24][error][lua] [source/extensions/filters/common/lua/lua.cc:34] script log: [logPayload] v2 rqx not.a.stream 0 garbage"),
            ),
        };
        Msg {
            exchange: None,
            thread: 0,
            text: text.into_bytes(),
            raw_stream: Some(stream),
        }
    }

    // ---- exchanges ----

    fn body(&mut self, token_id: u32, what: &str) -> Vec<u8> {
        let t = token(token_id);
        match self.rng.below(10) {
            0 => {
                // Binary: every byte value, CR LF, NUL, invalid UTF-8.
                let salt = self.rng.below(256) as u8;
                let mut b = format!("{t} {what} bin ").into_bytes();
                b.extend((0..=255u8).map(|x| x ^ salt));
                b.extend_from_slice(b"\r\n\x00\xff\xfe end");
                b
            }
            1 => {
                // Large: several 12 KiB pieces, log lines over containerd's 16 KiB.
                let size = self.rng.range(13_000, 40_000) as usize;
                let mut b = format!("{{\"token\":\"{t}\",\"what\":\"{what}\",\"rows\":[").into_bytes();
                let mut i = 0;
                while b.len() < size {
                    b.extend_from_slice(
                        format!("{{\"row\":{i},\"name\":\"item-{i}\",\"ok\":true}},").as_bytes(),
                    );
                    i += 1;
                }
                b.extend_from_slice(b"{}]}");
                b
            }
            2..=4 => format!(
                "<!DOCTYPE html>\n<!-- {t} {what} -->\n<html>\n  <body>\n    <p>Héllo &amp; wörld, 漢字 😀, tab\there</p>\n\n  </body>\n</html>\n"
            )
            .into_bytes(),
            _ => {
                let pad = self.rng.below(600) as usize;
                format!(
                    "{{\"token\":\"{t}\",\"what\":\"{what}\",\"user\":\"jason\",\"quote\":\"say \\\"hi\\\"\",\"pad\":\"{}\"}}",
                    "x".repeat(pad)
                )
                .into_bytes()
            }
        }
    }

    /// A body cut into the pieces the filter logs: 12 KiB at most, 1 to 3 for small bodies.
    fn pieces(&mut self, body: &[u8]) -> Vec<Vec<u8>> {
        if body.is_empty() {
            return Vec::new();
        }
        if body.len() > V2_PIECE {
            return body.chunks(V2_PIECE).map(<[u8]>::to_vec).collect();
        }
        let n = self.rng.range(1, 3.min(body.len() as u64)) as usize;
        let mut cuts: Vec<usize> = (1..n)
            .map(|_| self.rng.range(1, body.len() as u64 - 1) as usize)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::new();
        let mut from = 0;
        for cut in cuts {
            out.push(body[from..cut].to_vec());
            from = cut;
        }
        out.push(body[from..].to_vec());
        out
    }

    fn new_token(&mut self) -> u32 {
        let id = self.truths.len() as u32 + 1;
        assert!(id < 100_000, "tokens have five digits");
        id
    }

    fn epoch_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }

    fn new_v2(&mut self, pod: usize) -> (usize, VecDeque<Msg>) {
        let id = self.new_token();
        let thread = *self.rng.pick(&V2_THREADS);
        let p = &mut self.pods[pod];
        p.next_sid += 1;
        let sid = format!("{}.{}", p.sid_prefix, p.next_sid);
        let method = *self.rng.pick(&["GET", "POST", "POST", "PUT"]);
        let mut path = format!("/productpage/api/v2/t/{id}");
        if self.rng.chance(1, 4) {
            path.push_str("?page=2&q=a%20b");
        }
        let request = if method == "GET" {
            Vec::new()
        } else {
            self.body(id, "request")
        };
        let (status, response) = match self.rng.below(10) {
            0 => (204, Vec::new()),
            1 => (404, format!("not found {}\n", token(id)).into_bytes()),
            2 => (500, self.body(id, "error")),
            _ => (200, self.body(id, "response")),
        };
        let mut rq_headers = vec![
            (":authority".to_string(), "productpage:9080".to_string()),
            (":path".to_string(), path.clone()),
            (":method".to_string(), method.to_string()),
            (":scheme".to_string(), "http".to_string()),
            ("user-agent".to_string(), "curl/8.5.0".to_string()),
            ("x-request-id".to_string(), format!("bf066b87-{id:08}")),
            ("x-test-id".to_string(), id.to_string()),
        ];
        if !request.is_empty() {
            rq_headers.push(("content-type".into(), "application/json".into()));
            rq_headers.push(("content-length".into(), request.len().to_string()));
        }
        let rs_headers = vec![
            (":status".to_string(), status.to_string()),
            ("content-type".to_string(), "application/json".to_string()),
            ("content-length".to_string(), response.len().to_string()),
            ("x-envoy-upstream-service-time".to_string(), "3".to_string()),
        ];
        let mut texts = Vec::new();
        for (dir, headers, body) in [
            ("rq", &rq_headers, &request),
            ("rs", &rs_headers, &response),
        ] {
            let ms = self.epoch_ms();
            texts.push(format!(
                "[logPayload] v2 {dir} {sid} 0 {ms} {}",
                v2_headers(headers)
            ));
            let mut seq = 1;
            for piece in self.pieces(body) {
                texts.push(format!(
                    "[logPayload] v2 {dir}b {sid} {seq} {}",
                    b64(&piece)
                ));
                seq += 1;
            }
            texts.push(format!(
                "[logPayload] v2 {dir}e {sid} {seq} {} {} 0",
                ms + 1,
                body.len()
            ));
        }
        let ex = self.truths.len();
        let messages: VecDeque<Msg> = texts
            .into_iter()
            .map(|t| Msg {
                exchange: Some(ex),
                thread,
                text: t.into_bytes(),
                raw_stream: None,
            })
            .collect();
        self.truths.push(Truth {
            token: id,
            pod,
            source: Source::V2,
            method,
            path,
            status,
            request,
            response,
            sid: Some(sid),
            messages: messages.len(),
            written: 0,
            started: false,
            lossy: false,
        });
        (ex, messages)
    }

    /// A v1 exchange of the seed's headers variant: with multi-line bodies, or (`bodiless`) a GET
    /// answered 204, whose directions end without a later event.
    fn new_v1(&mut self, pod: usize, bodiless: bool) -> (usize, VecDeque<Msg>) {
        let id = self.new_token();
        let t = token(id);
        let (method, path, status, request, response) = if bodiless {
            (
                "GET",
                format!("/productpage/health/t/{id}"),
                204,
                Vec::new(),
                Vec::new(),
            )
        } else {
            let request = format!(
                "{t} v1 request\nline two: \"quoted\", tab\there\n  indented ünïcödé line\n\nlast line {}",
                "y".repeat(self.rng.below(300) as usize)
            )
            .into_bytes();
            let mut response = format!(
                "<html>\n<!-- {t} v1 response -->\n  <p>Simple Bookstore App</p>\n{}",
                "<li>row</li>\n".repeat(self.rng.range(1, 20) as usize)
            )
            .into_bytes();
            if self.rng.chance(1, 2) {
                response.extend_from_slice(b"</html>\n");
            }
            (
                "POST",
                format!("/productpage/api/v1/t/{id}"),
                200,
                request,
                response,
            )
        };
        let header_block = |pairs: &[(&str, String)]| {
            let mut block = String::from("[logPayload:headers] --> ");
            for (name, value) in pairs {
                block.push_str(&format!("\n{name}:{value},"));
            }
            block
        };
        let mut rq = vec![
            (":authority", "productpage:9080".to_string()),
            (":path", path.clone()),
            (":method", method.to_string()),
            (":scheme", "http".to_string()),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)".to_string()),
            ("x-test-id", id.to_string()),
        ];
        if !request.is_empty() {
            rq.push(("content-type", "text/plain; charset=utf-8".to_string()));
            rq.push(("content-length", request.len().to_string()));
        }
        let mut rs = vec![
            (":status", status.to_string()),
            ("date", "Wed, 25 Nov 2026 08:47:59 GMT".to_string()),
            ("x-envoy-upstream-service-time", "4".to_string()),
        ];
        if !response.is_empty() {
            rs.push(("content-type", "text/html; charset=utf-8".to_string()));
            rs.push(("content-length", response.len().to_string()));
        }
        let mut texts: Vec<Vec<u8>> = vec![
            b"[logPayload] started".to_vec(),
            header_block(&rq).into_bytes(),
        ];
        if !request.is_empty() {
            texts.push(b"[logPayload] showing bodyChunks".to_vec());
            texts.push(request.clone());
            texts.push(b"[logPayload] showing bodyChunks".to_vec());
        }
        texts.push(b"[envoy_on_response] find productpage".to_vec());
        texts.push(b"[envoy_on_request] meta logPayload found".to_vec());
        texts.push(b"[logPayload] started".to_vec());
        texts.push(header_block(&rs).into_bytes());
        if !response.is_empty() {
            texts.push(b"[logPayload] showing bodyChunks".to_vec());
            texts.push(response.clone());
            texts.push(b"[logPayload] showing bodyChunks".to_vec());
        }
        let ex = self.truths.len();
        let messages: VecDeque<Msg> = texts
            .into_iter()
            .map(|text| Msg {
                exchange: Some(ex),
                thread: V1_THREAD,
                text,
                raw_stream: None,
            })
            .collect();
        self.truths.push(Truth {
            token: id,
            pod,
            source: Source::V1,
            method,
            path,
            status,
            request,
            response: response.clone(),
            sid: None,
            messages: messages.len(),
            written: 0,
            started: false,
            lossy: false,
        });
        self.pods[pod].v1_open_end = !response.is_empty();
        // The seed format names no stream: after lost lines, the thread's pairing may be off.
        self.truths[ex].lossy = self.pods[pod].lossy;
        (ex, messages)
    }

    /// The next message Envoy logs in `pod`: of an exchange in flight, or a new one, or noise.
    fn next_message(&mut self, pod: usize) -> Msg {
        if self.rng.chance(1, 15) {
            return self.noise();
        }
        let p = &self.pods[pod];
        let inflight = p.inflight.len() as u64;
        let v1_busy = p.v1.is_some();
        // Weights: each v2 exchange in flight 2, a new v2 exchange 2 (while fewer than 5), the v1
        // exchange 2, a new v1 exchange 1.
        let new_v2 = if inflight < 5 { 2 } else { 0 };
        let v1 = if v1_busy { 2 } else { 1 };
        let mut x = self.rng.below(inflight * 2 + new_v2 + v1);
        if x < inflight * 2 {
            let i = (x / 2) as usize;
            return self.pop(pod, Some(i));
        }
        x -= inflight * 2;
        if x < new_v2 {
            let started = self.new_v2(pod);
            self.pods[pod].inflight.push(started);
            return self.pop(pod, Some(self.pods[pod].inflight.len() - 1));
        }
        if !v1_busy {
            let bodiless = self.rng.chance(1, 4);
            let started = self.new_v1(pod, bodiless);
            self.pods[pod].v1 = Some(started);
        }
        self.pop(pod, None)
    }

    /// Takes the next message of v2 exchange `i` in flight (or of the v1 one).
    fn pop(&mut self, pod: usize, i: Option<usize>) -> Msg {
        let p = &mut self.pods[pod];
        match i {
            Some(i) => {
                let msg = p.inflight[i].1.pop_front().expect("in flight");
                if p.inflight[i].1.is_empty() {
                    p.inflight.remove(i);
                }
                msg
            }
            None => {
                let (_, messages) = p.v1.as_mut().expect("v1 in flight");
                let msg = messages.pop_front().expect("v1 messages");
                if messages.is_empty() {
                    p.v1 = None;
                }
                msg
            }
        }
    }

    // ---- the files ----

    fn write_live(&mut self, pod: usize, bytes: &[u8]) {
        let p = &mut self.pods[pod];
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.live())
            .unwrap();
        file.write_all(bytes).unwrap();
        p.live_exists = true;
        p.live_len += bytes.len() as u64;
    }

    /// A message of `exchange` (or noise) was written whole to `pod`'s live file.
    fn mark_written(&mut self, pod: usize, exchange: Option<usize>) {
        if let Some(ex) = exchange {
            self.truths[ex].written += 1;
            self.truths[ex].started = true;
            self.pods[pod].live_exchanges.insert(ex);
        }
    }

    /// Writes the rest of a line written in two writes.
    fn complete_split(&mut self, pod: usize) {
        if let Some((rest, exchange)) = self.pods[pod].split.take() {
            self.write_live(pod, &rest);
            self.mark_written(pod, exchange);
        }
    }

    /// Envoy logs `k` messages; with `split`, the first line of the last one is written in two
    /// writes, the second of which comes with the pod's next write.
    fn append(&mut self, pod: usize, k: usize, split: bool) {
        self.complete_split(pod);
        let at_once = self.rng.chance(1, 2);
        let mut buf = Vec::new();
        let mut exchanges = Vec::new();
        for i in 0..k {
            let msg = self.next_message(pod);
            let (bytes, first_line) = self.render(&msg);
            if split && i + 1 == k {
                let cut = self.rng.range(1, first_line as u64 - 1) as usize;
                buf.extend_from_slice(&bytes[..cut]);
                if let Some(ex) = msg.exchange {
                    self.truths[ex].started = true;
                    self.pods[pod].live_exchanges.insert(ex);
                }
                self.pods[pod].split = Some((bytes[cut..].to_vec(), msg.exchange));
            } else if at_once {
                buf.extend_from_slice(&bytes);
                exchanges.push(msg.exchange);
            } else {
                self.write_live(pod, &bytes);
                self.mark_written(pod, msg.exchange);
            }
        }
        self.write_live(pod, &buf);
        for ex in exchanges {
            self.mark_written(pod, ex);
        }
        let name = self.pods[pod].name.clone();
        self.log(format!(
            "append {k} messages to {name}{}",
            if split {
                ", the last line half written"
            } else {
                ""
            }
        ));
    }

    fn next_rotation_name(&mut self) -> String {
        self.rotations += 1;
        let at = Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap()
            + chrono::Duration::seconds(self.rotations);
        format!("0.log.{}", at.format("%Y%m%d-%H%M%S"))
    }

    /// kubelet's rotation: `0.log` renamed to `0.log.<time>`; the runtime reopens `0.log` at
    /// once or with its next write.
    fn rotate(&mut self, pod: usize) {
        self.complete_split(pod);
        let p = &self.pods[pod];
        if !p.live_exists || p.live_len == 0 {
            return;
        }
        let name = self.next_rotation_name();
        let p = &mut self.pods[pod];
        let to = p.dir.join(&name);
        fs::rename(p.live(), &to).unwrap();
        p.rotated.push(to);
        let exchanges = std::mem::take(&mut p.live_exchanges);
        p.rotated_exchanges.push(exchanges);
        p.live_exists = false;
        p.live_len = 0;
        let reopen = self.rng.chance(1, 2);
        if reopen {
            fs::File::create(self.pods[pod].live()).unwrap();
            self.pods[pod].live_exists = true;
        }
        let pod_name = self.pods[pod].name.clone();
        self.log(format!(
            "rotate {pod_name}: 0.log -> {name}{}",
            if reopen { ", reopened" } else { "" }
        ));
    }

    /// kubelet compresses rotated files but the newest: `<f>.gz.tmp`, renamed `<f>.gz`, `<f>`
    /// deleted.
    fn gzip(&mut self, pod: usize) {
        let p = &self.pods[pod];
        let candidates: Vec<usize> = (0..p.rotated.len().saturating_sub(1))
            .filter(|&i| p.rotated[i].extension().is_none_or(|e| e != "gz"))
            .collect();
        if candidates.is_empty() {
            return;
        }
        self.settle_fresh_agent();
        let i = *self.rng.pick(&candidates);
        let plain = self.pods[pod].rotated[i].clone();
        let bytes = fs::read(&plain).unwrap();
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(&bytes).unwrap();
        let gz = PathBuf::from(format!("{}.gz", plain.display()));
        let tmp = PathBuf::from(format!("{}.gz.tmp", plain.display()));
        fs::write(&tmp, encoder.finish().unwrap()).unwrap();
        fs::rename(&tmp, &gz).unwrap();
        fs::remove_file(&plain).unwrap();
        self.pods[pod].rotated[i] = gz;
        let name = self.pods[pod].name.clone();
        self.log(format!(
            "gzip {name}: {}",
            plain.file_name().unwrap().to_string_lossy()
        ));
    }

    /// copy-truncate: `0.log` copied to `0.log.<time>`, then truncated in place.
    fn copy_truncate(&mut self, pod: usize) {
        self.complete_split(pod);
        let p = &self.pods[pod];
        if !p.live_exists || p.live_len == 0 {
            return;
        }
        let name = self.next_rotation_name();
        let p = &mut self.pods[pod];
        let copy = p.dir.join(&name);
        fs::copy(p.live(), &copy).unwrap();
        OpenOptions::new()
            .write(true)
            .open(p.live())
            .unwrap()
            .set_len(0)
            .unwrap();
        p.live_len = 0;
        p.rotated.push(copy);
        let exchanges = std::mem::take(&mut p.live_exchanges);
        p.rotated_exchanges.push(exchanges);
        let pod_name = p.name.clone();
        self.log(format!("copy-truncate {pod_name}: 0.log -> {name}"));
    }

    fn add_pod(&mut self) {
        let n = self.pods.len();
        let name = format!("reviews-v{}-7d{:03x}c9f{n}", n + 1, self.rng.below(4096));
        let uid = format!("0c1a2b3c-{n:04}-2222-3333-{:012x}", self.rng.below(1 << 40));
        let pod_dir = self.setup.root.join(format!("{NAMESPACE}_{name}_{uid}"));
        let dir = pod_dir.join("istio-proxy");
        fs::create_dir_all(&dir).unwrap();
        let sid_prefix = format!("6b06a{:03x}.7f2ddc27{:04x}", self.rng.below(4096), n);
        self.pods.push(Pod {
            name: name.clone(),
            pod_dir,
            dir,
            state: PodState::Live,
            live_exists: false,
            live_len: 0,
            rotated: Vec::new(),
            rotated_exchanges: Vec::new(),
            live_exchanges: BTreeSet::new(),
            lossy: false,
            split: None,
            inflight: Vec::new(),
            v1: None,
            v1_open_end: false,
            sid_prefix,
            next_sid: 0,
        });
        self.log(format!("add pod {name}"));
    }

    /// Envoy finishes logging every exchange in flight in `pod` (and a bodiless v1 exchange if
    /// the last v1 one awaits its thread's next event).
    fn finish_pod(&mut self, pod: usize) {
        self.complete_split(pod);
        loop {
            let p = &self.pods[pod];
            let n = p.inflight.len();
            if n == 0 && p.v1.is_none() {
                break;
            }
            let pick = self.rng.below(n as u64 + u64::from(p.v1.is_some())) as usize;
            let msg = self.pop(pod, (pick < n).then_some(pick));
            let (bytes, _) = self.render(&msg);
            self.write_live(pod, &bytes);
            self.mark_written(pod, msg.exchange);
        }
        if self.pods[pod].v1_open_end {
            let (ex, messages) = self.new_v1(pod, true);
            let mut buf = Vec::new();
            for msg in &messages {
                buf.extend_from_slice(&self.render(msg).0);
            }
            self.write_live(pod, &buf);
            for _ in 0..messages.len() {
                self.mark_written(pod, Some(ex));
            }
        }
    }

    /// kubelet keeps a few files per container (`containerLogMaxFiles`, 5 by default): past
    /// that it deletes the oldest, read or not.
    fn delete_oldest_rotated(&mut self, pod: usize) {
        if self.pods[pod].rotated.len() < 4 {
            return;
        }
        let p = &mut self.pods[pod];
        let path = p.rotated.remove(0);
        let exchanges = p.rotated_exchanges.remove(0);
        fs::remove_file(&path).unwrap();
        p.lossy = true;
        self.deleted_files += 1;
        for ex in exchanges {
            self.truths[ex].lossy = true;
        }
        for t in self.truths.iter_mut() {
            if t.pod == pod && t.source == Source::V1 {
                t.lossy = true;
            }
        }
        let name = self.pods[pod].name.clone();
        self.log(format!(
            "kubelet deletes {name}'s oldest rotated file {}",
            path.file_name().unwrap().to_string_lossy()
        ));
    }

    fn delete_pod_now(&mut self, pod: usize) {
        fs::remove_dir_all(&self.pods[pod].pod_dir).unwrap();
        self.pods[pod].state = PodState::DeletedNow;
        let name = self.pods[pod].name.clone();
        self.log(format!("delete pod {name} at once"));
    }

    /// Deletes `pod` once every one of its exchanges was delivered and a checkpoint covers
    /// them, so that nothing of it can be lost.
    fn delete_pod_after_delivery(&mut self, pod: usize) {
        if self.agent.is_none() {
            self.start_agent();
        }
        self.finish_pod(pod);
        // Exchanges whose lines were in a rotated file kubelet deleted may be gone for good (the
        // agent may not have read them first): those are checked for honesty at the end, not
        // waited for here.
        let tokens: BTreeSet<u32> = self
            .truths
            .iter()
            .filter(|t| t.pod == pod && !t.lossy)
            .map(|t| t.token)
            .collect();
        let name = self.pods[pod].name.clone();
        if self.wait_delivered_and_checkpointed(&tokens) {
            fs::remove_dir_all(&self.pods[pod].pod_dir).unwrap();
            self.pods[pod].state = PodState::DeletedRead;
            self.log(format!(
                "delete pod {name} after its {} exchanges were delivered",
                tokens.len()
            ));
        } else {
            let delivered = delivered_tokens(&self.setup.sink().records);
            let missing: Vec<u32> = tokens.difference(&delivered).copied().collect();
            self.failures.fail(format!(
                "pod {name}: exchanges {missing:?} not delivered (and checkpointed) within 30 s"
            ));
            self.delete_pod_now(pod);
        }
    }

    /// Waits until every token is in the sink and the checkpoint's sink position is past them.
    fn wait_delivered_and_checkpointed(&mut self, tokens: &BTreeSet<u32>) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        if tokens.is_empty() {
            return true;
        }
        let out = self.setup.out.clone();
        let seen = wait_for(Duration::from_secs(30), || {
            let sink = self.setup.sink();
            if !tokens.is_subset(&delivered_tokens(&sink.records)) {
                return None;
            }
            let meta = fs::metadata(&out).ok()?;
            Some((meta.ino(), meta.len()))
        });
        let Some((inode, len)) = seen else {
            return false;
        };
        wait_for(Duration::from_secs(30), || {
            let cp = self.setup.checkpoint()?;
            let pos = &cp["sink_position"];
            let cp_inode = pos["inode"].as_u64()?;
            let cp_size = pos["size"].as_u64()?;
            let current = fs::metadata(&out).ok()?.ino();
            let covered =
                (cp_inode == inode && cp_size >= len) || (cp_inode == current && current != inode);
            covered.then_some(())
        })
        .is_some()
    }

    // ---- the end ----

    fn finish_and_check(&mut self) {
        for pod in self.live_pods() {
            self.finish_pod(pod);
        }
        self.log("every live pod's exchanges finished".into());
        if self.agent.is_none() {
            self.start_agent();
        }
        let expected: BTreeSet<u32> = self
            .truths
            .iter()
            .filter(|t| self.pods[t.pod].state != PodState::DeletedNow && !t.lossy)
            .map(|t| t.token)
            .collect();
        let caught_up = wait_for(Duration::from_secs(60), || {
            let sink = self.setup.sink();
            expected
                .is_subset(&delivered_tokens(&sink.records))
                .then_some(())
        });
        self.log(format!(
            "catch-up {}",
            if caught_up.is_some() {
                "done"
            } else {
                "timed out after 60 s"
            }
        ));
        if let Some(agent) = self.agent.take() {
            match agent.terminate() {
                Ok(status) if status.success() => {}
                Ok(status) => self.failures.fail(format!(
                    "final SIGTERM: the agent exited with {status}, not 0"
                )),
                Err(why) => self.failures.fail(format!("final SIGTERM: {why}")),
            }
        }
        self.check_output(&expected);
    }

    fn check_output(&mut self, expected: &BTreeSet<u32>) {
        let sink = self.setup.sink();
        let f = &mut self.failures;
        f.check(sink.bad.is_empty(), || {
            format!(
                "{} sink lines are not JSON objects: {:?}",
                sink.bad.len(),
                &sink.bad[..sink.bad.len().min(3)]
            )
        });
        f.check(sink.torn == 0, || {
            format!(
                "the sink's files end with {} bytes of a torn line",
                sink.torn
            )
        });
        let truths = &self.truths;
        // Exchanges that may have lost lines: `meshtap parse` of what is left cannot match.
        let lossy = |token: Option<u32>| {
            token.is_none_or(|t| t == 0 || truths.get(t as usize - 1).is_none_or(|x| x.lossy))
        };

        // Lines by id: identical copies are raw duplicates; different records under one id are
        // two exchanges sharing an id, or one delivered twice with something changed.
        let mut by_id: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for r in &sink.records {
            by_id
                .entry(r["id"].as_str().unwrap_or("<no id>"))
                .or_default()
                .push(r);
        }
        let mut raw = 0;
        // Distinct records, each once: (id, record).
        let mut unique: Vec<(String, &Value)> = Vec::new();
        for (id, copies) in &by_id {
            let mut distinct: Vec<&Value> = Vec::new();
            for r in copies {
                if !distinct.contains(r) {
                    distinct.push(r);
                }
            }
            raw += copies.len() - distinct.len();
            if distinct.len() > 1 {
                f.fail(format!(
                    "{} different records with the same id {id}: {}",
                    distinct.len(),
                    distinct
                        .iter()
                        .map(|r| clip(r))
                        .collect::<Vec<_>>()
                        .join(" | ")
                ));
            }
            unique.extend(distinct.into_iter().map(|r| (id.to_string(), r)));
        }
        f.check(raw == 0, || {
            format!(
                "{raw} raw duplicate line(s) in the file sink ({} lines, {} distinct ids): it must roll back to its checkpoint",
                sink.records.len(),
                by_id.len()
            )
        });

        // Ids are deterministic: `meshtap parse` over a live pod's files as they are now gives
        // the ids the agent gave while they were written, rotated, compressed, copied and
        // truncated under it, across its restarts.
        for pod in self.pods.iter().filter(|p| p.state == PodState::Live) {
            let delivered: BTreeMap<&str, &Value> = unique
                .iter()
                .filter(|(_, r)| r["k8s"]["pod"] == pod.name.as_str())
                .map(|(id, r)| (id.as_str(), *r))
                .collect();
            let parsed = match super::parse_dir(&pod.dir) {
                Ok(parsed) => parsed,
                Err(e) => {
                    f.fail(e);
                    continue;
                }
            };
            let mut differ = Vec::new();
            for (id, r) in &delivered {
                let t = record_token(r);
                let excused = pod.lossy && lossy(t);
                if !parsed.contains_key(*id) && !excused {
                    differ.push(format!(
                        "{id} (exchange {:?}) only delivered",
                        record_token(r)
                    ));
                }
            }
            for (id, r) in &parsed {
                let t = record_token(r);
                let excused = pod.lossy && lossy(t);
                if !delivered.contains_key(id.as_str()) && !excused {
                    differ.push(format!("{id} (exchange {:?}) only parsed", record_token(r)));
                }
            }
            f.check(differ.is_empty(), || {
                format!(
                    "pod {}: ids differ from `meshtap parse` of its files: {}",
                    pod.name,
                    differ.join(", ")
                )
            });
        }

        let mut by_token: BTreeMap<u32, Vec<(String, &Value)>> = BTreeMap::new();
        for (id, record) in unique {
            match record_token(record) {
                // A pod deleted at once may end mid-exchange, before anything naming it was
                // logged (a v1 `started` without its headers): flagged, it is right.
                None if self.pods.iter().any(|p| {
                    (p.state == PodState::DeletedNow || p.lossy)
                        && record["k8s"]["pod"] == p.name.as_str()
                }) && record["complete"] == false
                    && record["warnings"].as_array().is_some_and(|w| !w.is_empty()) => {}
                None => f.fail(format!(
                    "record {id} names no exchange of the test: {}",
                    clip(record)
                )),
                Some(t) if t == 0 || t as usize > self.truths.len() => {
                    f.fail(format!("record {id} is for exchange {t}, never generated"))
                }
                Some(t) if !self.truths[t as usize - 1].started => {
                    f.fail(format!("record {id} is for exchange {t}, never written"))
                }
                Some(t) => by_token.entry(t).or_default().push((id, record)),
            }
        }
        for truth in &self.truths {
            let pod = &self.pods[truth.pod];
            let records = by_token
                .get(&truth.token)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let what = format!(
                "exchange {} ({:?} {} {} in pod {}, {}/{} messages written)",
                truth.token,
                truth.source,
                truth.method,
                truth.path,
                pod.name,
                truth.written,
                truth.messages
            );
            // After lost lines a v1 exchange's parts may land in several (flagged) records.
            if records.len() > 1 && !truth.lossy {
                let ids: Vec<&str> = records.iter().map(|(id, _)| id.as_str()).collect();
                f.fail(format!(
                    "{what}: delivered {} times, ids {ids:?}",
                    records.len()
                ));
            }
            let strict = expected.contains(&truth.token);
            match records.first() {
                None if strict => f.fail(format!("{what}: not delivered")),
                None => {}
                Some((id, record)) => {
                    check_record(f, &what, id, record, truth, &pod.name, strict);
                    for (id, record) in &records[1..] {
                        check_record(f, &what, id, record, truth, &pod.name, strict);
                    }
                }
            }
        }
    }
}

/// The test token of a record: from its request path `.../t/<token>[?query]`, else the first
/// token in a body.
fn record_token(record: &Value) -> Option<u32> {
    if let Some(path) = record["request"]["path"].as_str() {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(t) = path.rsplit_once("/t/").and_then(|(_, t)| t.parse().ok()) {
            return Some(t);
        }
    }
    for dir in ["request", "response"] {
        if !record[dir].is_object() {
            continue;
        }
        if let Ok(body) = record_body(&record[dir]) {
            if let Some(t) = crate::support::scenario::find_tokens(&body).first() {
                return Some(*t);
            }
        }
    }
    None
}

fn delivered_tokens(records: &[Value]) -> BTreeSet<u32> {
    records.iter().filter_map(record_token).collect()
}

fn clip(record: &Value) -> String {
    let text = record.to_string();
    text.chars().take(400).collect()
}

/// A record against the exchange logged: exact when `strict` or when it says it is complete and
/// has no warning; otherwise flagged, and when only the log's end was lost (a pod deleted at once)
/// with bodies that are a prefix of what was logged.
fn check_record(
    f: &mut Failures,
    what: &str,
    id: &str,
    record: &Value,
    truth: &Truth,
    pod: &str,
    strict: bool,
) {
    let ctx = format!("{what}, record {id}");
    f.check(record["k8s"]["pod"] == pod, || {
        format!("{ctx}: k8s.pod {} (expected {pod})", record["k8s"]["pod"])
    });
    f.check(record["k8s"]["namespace"] == NAMESPACE, || {
        format!("{ctx}: k8s.namespace {}", record["k8s"]["namespace"])
    });
    let source = match truth.source {
        Source::V1 => "lua-v1",
        Source::V2 => "lua-v2",
    };
    f.check(record["source"] == source, || {
        format!("{ctx}: source {} (expected {source})", record["source"])
    });
    let complete = record["complete"] == true;
    let flagged = record["warnings"].as_array().is_some_and(|w| !w.is_empty());
    if truth.lossy && !strict && flagged {
        // Lines may be missing anywhere: flagged is all that can be asked.
        return;
    }
    if strict || complete {
        f.check(complete, || {
            format!("{ctx}: complete is {}", record["complete"])
        });
        f.check(
            record["warnings"].as_array().is_some_and(Vec::is_empty),
            || format!("{ctx}: warnings {}", record["warnings"]),
        );
        let request = &record["request"];
        let response = &record["response"];
        f.check(request["method"] == truth.method, || {
            format!(
                "{ctx}: request.method {} (expected {})",
                request["method"], truth.method
            )
        });
        f.check(request["path"] == truth.path.as_str(), || {
            format!(
                "{ctx}: request.path {} (expected {})",
                request["path"], truth.path
            )
        });
        f.check(response["status"] == truth.status, || {
            format!(
                "{ctx}: response.status {} (expected {})",
                response["status"], truth.status
            )
        });
        if let Some(sid) = &truth.sid {
            f.check(record["log"]["stream"] == sid.as_str(), || {
                format!(
                    "{ctx}: log.stream {} (expected {sid})",
                    record["log"]["stream"]
                )
            });
        }
        for (name, dir, expected) in [
            ("request", request, &truth.request),
            ("response", response, &truth.response),
        ] {
            match record_body(dir) {
                Ok(body) => f.check(body == *expected, || {
                    format!(
                        "{ctx}: {name} body differs: got {}, expected {}",
                        crate::support::meshtap::show(&body),
                        crate::support::meshtap::show(expected)
                    )
                }),
                Err(e) => f.fail(format!("{ctx}: {name} body: {e}")),
            }
            f.check(dir["body_truncated"] == false, || {
                format!("{ctx}: {name} body_truncated {}", dir["body_truncated"])
            });
        }
    } else {
        f.check(
            record["warnings"].as_array().is_some_and(|w| !w.is_empty()),
            || format!("{ctx}: incomplete but without a warning"),
        );
        for (name, expected) in [("request", &truth.request), ("response", &truth.response)] {
            let dir = &record[name];
            if !dir.is_object() {
                continue;
            }
            match record_body(dir) {
                Ok(body) => f.check(expected.starts_with(&body), || {
                    format!(
                        "{ctx}: incomplete {name} body is not a prefix of what was logged: got {}",
                        crate::support::meshtap::show(&body)
                    )
                }),
                Err(e) => f.fail(format!("{ctx}: {name} body: {e}")),
            }
        }
    }
}
