//! The network sinks end to end: a REAL Envoy with meshtap's v2 Lua filter logs live traffic into a
//! kubelet-style pod log ([`crate::support::live_writer`]), `meshtap run` (the built binary) tails
//! it and delivers to a real backend, and the test reads back what arrived and compares every
//! exchange with what the client sent and the upstream received.
//!
//! - [`kafka`]: a tansu broker started by the test, read back with an rdkafka consumer
//!   (`assign()`ed to every partition); the broker is frozen (SIGSTOP) for [`OUTAGE`] mid-stream,
//!   or for 14 s under a long `message_timeout_ms` (the agent's "unacknowledged for 10 s" rule),
//!   or across a SIGTERM of the agent.
//! - [`otlp`]: an in-test OTLP/gRPC receiver (stopped for [`OUTAGE`] mid-stream, then restarted
//!   on the same port) and, through a second agent, rotel; and a SIGTERM while the receiver is down.
//! - [`bad_config`]: configs the agent must refuse, and backends unreachable at startup.
//!
//! While the backend is away, `/readyz` must turn 503 naming the sink and `meshtap_sink_up` 0,
//! and both must recover once it is back.
//!
//! Duplicates by id are allowed for both sinks (at least once) and reported; a missing exchange,
//! a wrong body, or two different ids for one exchange are failures. `MESHTAP_E2E_SINKS_SEED`
//! replays the traffic's shape.

mod bad_config;
mod kafka;
mod otlp;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::agent::{
    http_get, metric, signal, terminate_child, wait_agent_ready, wait_for, Rng, BIN,
};
use crate::support::client::{self, Received};
use crate::support::envoy::free_port;
use crate::support::live_writer::{LiveEnvoy, WriterStats};
use crate::support::manifests::{Filter, V2_MAX_BODY};
use crate::support::meshtap::show;
use crate::support::scenario::{request_body, Kind, Mode, Spec};
use crate::support::upstream::{Seen, Upstream};

/// The pod whose istio-proxy log Envoy's stderr is written to.
pub const NAMESPACE: &str = "shop";
pub const POD: &str = "checkout-7d9f8b6c5d-x2k4p";
const POD_DIR: &str =
    "shop_checkout-7d9f8b6c5d-x2k4p_5e6f7a8b-1111-2222-3333-444455556666/istio-proxy";
/// Envoy stderr lines per log file before kubelet rotates it (older files are gzipped).
const ROTATE_EVERY: usize = 400;
/// How long the backend stays away mid-stream.
pub const OUTAGE: Duration = Duration::from_secs(22);

// -------------------------------------------------------------------------------------------------
// Test components from the venv

/// `.cache/venv/lib/python3.*/site-packages/<rel>`, installed by `scripts/install-test-deps.sh`
/// when missing.
pub fn venv_binary(rel: &str) -> PathBuf {
    static INSTALL: OnceLock<()> = OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let find = || {
        fs::read_dir(root.join(".cache/venv/lib"))
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3."))
            .map(|e| e.path().join("site-packages").join(rel))
            .find(|p| p.is_file())
    };
    if let Some(path) = find() {
        return path;
    }
    INSTALL.get_or_init(|| {
        let status = Command::new(root.join("scripts/install-test-deps.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/install-test-deps.sh");
        assert!(status.success(), "scripts/install-test-deps.sh failed");
    });
    find().unwrap_or_else(|| panic!("{rel} not installed by scripts/install-test-deps.sh"))
}

/// Calls `f` every `every` until it returns `Some`, or `timeout` passes: for conditions that cost
/// something to check (a scrape, a big file).
pub fn poll_every<T>(
    every: Duration,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Polling interval, not a readiness guess: the loop ends as soon as `f` says so.
        std::thread::sleep(every);
    }
}

/// Waits until something accepts connections on `addr`.
pub fn wait_port(addr: SocketAddr, timeout: Duration) -> bool {
    wait_for(timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    })
    .is_some()
}

// -------------------------------------------------------------------------------------------------
// The agent

/// `agent.shutdown_grace_seconds` unless a test says otherwise.
pub const GRACE_SECONDS: u64 = 10;

/// The agent section shared by every test: quick polling, small batches (several in flight
/// during an outage, and the queue to the sink fills), frequent checkpoints.
pub fn agent_yaml(root: &Path, state: &Path, ops_port: u16, grace: u64, sink: &str) -> String {
    let q = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap();
    format!(
        "agent:\n  log_root: {}\n  state_dir: {}\n  checkpoint_interval_ms: 200\n  poll_interval_ms: 100\n  \
         idle_flush_ms: 50\n  batch_max_records: 16\n  queue_batches: 4\n  shutdown_grace_seconds: {grace}\n\
         {sink}\
         ops:\n  listen: 127.0.0.1:{ops_port}\n\
         log:\n  level: info\n",
        q(root),
        q(state),
    )
}

/// A running `meshtap run` with a config of the test's choosing. Dropping it kills the process.
pub struct SinkAgent {
    child: Option<Child>,
    pub ops: SocketAddr,
    pub stderr: PathBuf,
}

impl SinkAgent {
    /// Writes `<dir>/<name>.yaml` (the [`agent_yaml`] with `sink`, state in `<dir>/<name>-state`),
    /// starts the agent and waits until `/readyz` answers 200 and its SIGTERM handler is in.
    pub fn start(dir: &Path, name: &str, root: &Path, sink: &str) -> SinkAgent {
        SinkAgent::start_with_grace(dir, name, root, GRACE_SECONDS, sink)
    }

    /// [`SinkAgent::start`] with `agent.shutdown_grace_seconds: grace`.
    pub fn start_with_grace(
        dir: &Path,
        name: &str,
        root: &Path,
        grace: u64,
        sink: &str,
    ) -> SinkAgent {
        let stderr = dir.join(format!("{name}.stderr"));
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let config = dir.join(format!("{name}.yaml"));
            let yaml = agent_yaml(root, &dir.join(format!("{name}-state")), port, grace, sink);
            fs::write(&config, yaml).unwrap();
            let mut agent = SinkAgent {
                child: Some(spawn_agent(&config, &stderr)),
                ops: SocketAddr::from(([127, 0, 0, 1], port)),
                stderr: stderr.clone(),
            };
            match agent.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return agent,
                Err(why) => {
                    agent.kill();
                    failures.push(why);
                    // Another process took the ops port between free_port() and the bind.
                    if !agent.stderr_tail(600).contains("cannot listen") {
                        break;
                    }
                }
            }
        }
        panic!(
            "meshtap run ({name}) did not start: {}\n--- agent stderr (tail) ---\n{}",
            failures.join("; "),
            tail(&stderr, 4000)
        );
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        wait_agent_ready(self.child.as_mut().unwrap(), self.ops, timeout)
    }

    /// `/readyz`: status and body.
    pub fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.ops, "/readyz").ok()
    }

    /// One series of `/metrics`, e.g. `meshtap_sink_up{sink="kafka"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        match http_get(self.ops, "/metrics") {
            Ok((200, text)) => metric(&text, series),
            _ => None,
        }
    }

    /// The process exited on its own (it should not).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        signal(self.child.as_ref().expect("running"), libc::SIGTERM);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        wait_for(timeout, || child.try_wait().ok().flatten())
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> Result<ExitStatus, String> {
        terminate_child(self.child.take().expect("running"), Duration::from_secs(30))
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        tail(&self.stderr, n)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SinkAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `meshtap run --config <config>`, stderr appended to `stderr`. `MESHTAP_E2E_BIN` runs another
/// build of the agent (an older one, to see a test fail on a bug it guards against).
pub fn spawn_agent(config: &Path, stderr: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr)
        .unwrap();
    let bin = std::env::var_os("MESHTAP_E2E_BIN").unwrap_or_else(|| BIN.into());
    Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env_remove("MESHTAP_LOG")
        .env_remove("NODE_NAME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn meshtap run")
}

/// The last `n` bytes of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let from = bytes.len().saturating_sub(n);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// What `/readyz` and `meshtap_sink_up` said while the backend was away, and after.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Since the outage began: first `/readyz` other than 200, with its body.
    pub not_ready: Option<(Duration, u16, String)>,
    /// Since the outage began: first `meshtap_sink_up{sink=...}` of 0.
    pub sink_down: Option<Duration>,
    /// Since the backend came back: `/readyz` 200 and `meshtap_sink_up` 1 again.
    pub ready_again: Option<Duration>,
}

impl Readiness {
    /// Polls the agent until `until`, noting the first not-ready answer and sink_up 0.
    pub fn watch_outage(&mut self, agent: &SinkAgent, sink: &str, since: Instant, until: Instant) {
        let series = format!("meshtap_sink_up{{sink=\"{sink}\"}}");
        while Instant::now() < until {
            if self.not_ready.is_none() {
                if let Some((status, body)) = agent.readyz().filter(|(s, _)| *s != 200) {
                    self.not_ready = Some((since.elapsed(), status, body.trim().to_string()));
                }
            }
            if self.sink_down.is_none() && agent.metric(&series) == Some(0.0) {
                self.sink_down = Some(since.elapsed());
            }
            // Holding the outage; the polling interval of the two probes above.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to `timeout`) for `/readyz` 200 and `meshtap_sink_up` 1.
    pub fn wait_ready_again(
        &mut self,
        agent: &SinkAgent,
        sink: &str,
        since: Instant,
        timeout: Duration,
    ) {
        let series = format!("meshtap_sink_up{{sink=\"{sink}\"}}");
        self.ready_again = poll_every(Duration::from_millis(50), timeout, || {
            let ready = matches!(agent.readyz(), Some((200, _)));
            (ready && agent.metric(&series) == Some(1.0)).then(|| since.elapsed())
        });
    }

    pub fn report(&self) -> String {
        format!(
            "not ready after {}, sink_up 0 after {}, ready again {} after the backend came back",
            self.not_ready
                .as_ref()
                .map_or("never".to_string(), |(t, s, body)| format!(
                    "{:.1}s ({s} {body:?})",
                    t.as_secs_f64()
                )),
            self.sink_down
                .map_or("never".to_string(), |t| format!("{:.1}s", t.as_secs_f64())),
            self.ready_again
                .map_or("never".to_string(), |t| format!("{:.1}s", t.as_secs_f64())),
        )
    }
}

// -------------------------------------------------------------------------------------------------
// Traffic

fn spec(id: u32, rng: &mut Rng) -> Spec {
    let (method, kind) = match rng.below(8) {
        0 => ("GET", Kind::Json),
        1 => ("GET", Kind::Missing),
        2 | 3 => ("POST", Kind::Echo),
        4 => ("POST", Kind::Bin),
        5 => ("POST", Kind::Utf8),
        6 => ("POST", Kind::Html),
        _ => ("POST", Kind::Json),
    };
    let body = if method == "GET" {
        Vec::new()
    } else {
        request_body(kind, id, rng.chance(1, 2))
    };
    let mut headers = vec![
        ("x-test-id".to_string(), id.to_string()),
        (
            "user-agent".to_string(),
            "meshtap-e2e-sinks/1.0".to_string(),
        ),
    ];
    if !body.is_empty() {
        let content_type = match kind {
            Kind::Bin => "application/octet-stream",
            Kind::Json => "application/json",
            _ => "text/plain; charset=utf-8",
        };
        headers.push(("content-type".to_string(), content_type.to_string()));
    }
    Spec {
        id,
        method,
        path: format!("/api/{}/{id}", kind.as_str()),
        headers,
        body,
        mode: Mode::Sequential,
    }
}

/// One exchange alone, or a burst of 3 to 6 at once.
fn group(next_id: &mut u32, rng: &mut Rng) -> Vec<Spec> {
    let burst = if rng.chance(1, 3) {
        rng.range(3, 6) as u32
    } else {
        1
    };
    (0..burst)
        .map(|_| {
            let mut s = spec(*next_id, rng);
            *next_id += 1;
            if burst > 1 {
                s.mode = Mode::Concurrent;
            }
            s
        })
        .collect()
}

/// Waits until the agent stops reading although the traffic (and so the pod log) goes on: its
/// reader is blocked handing a batch to the full queue of a sink that does not acknowledge
/// (backpressure). `meshtap_log_bytes_read_total` is reported while the reader runs, every
/// `checkpoint_interval_ms` (200 ms here); blocked, it stays put.
pub fn wait_reading_paused(agent: &SinkAgent, traffic: &Traffic, timeout: Duration) -> bool {
    let mut last: Option<(f64, usize, Instant)> = None;
    poll_every(Duration::from_millis(100), timeout, || {
        let read = agent.metric("meshtap_log_bytes_read_total")?;
        let sent = traffic.sent();
        match last {
            Some((r, s, since)) if r == read => {
                (since.elapsed() >= Duration::from_millis(1500) && sent >= s + 5).then_some(())
            }
            _ => {
                last = Some((read, sent, Instant::now()));
                None
            }
        }
    })
    .is_some()
}

/// The truth about what went through Envoy, once the traffic is over.
pub struct Truth {
    /// By x-test-id: what the upstream received and answered.
    pub seen: BTreeMap<u32, Seen>,
    pub writer: WriterStats,
    pub log_dir: PathBuf,
}

/// Envoy with meshtap's v2 filter in front of the upstream app, its stderr going live into the
/// pod log under `<root>/`[`POD_DIR`], and a client thread sending paced traffic through it until
/// [`Traffic::finish`].
pub struct Traffic {
    app: Upstream,
    envoy: Option<LiveEnvoy>,
    log_dir: PathBuf,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Received>>>,
    pub startup: Duration,
}

impl Traffic {
    pub fn start(rt: &tokio::runtime::Runtime, dir: &Path, root: &Path, seed: u64) -> Traffic {
        let app = rt.block_on(Upstream::start());
        let log_dir = root.join(POD_DIR);
        let lua = Filter::V2 {
            max_body: V2_MAX_BODY,
        }
        .lua();
        let envoy = LiveEnvoy::start(dir, &lua, app.addr, &log_dir, ROTATE_EVERY);
        let startup = envoy.startup;
        let listener = envoy.listener;
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = rt.handle().clone();
        let thread = {
            let (sent, stop) = (sent.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let mut next_id = 1;
                let mut received = Vec::new();
                // A cap, so that a stuck test cannot send forever.
                while !stop.load(Ordering::SeqCst) && next_id < 20_000 {
                    let group = group(&mut next_id, &mut rng);
                    received.extend(handle.block_on(client::drive(listener, &group)));
                    sent.fetch_add(group.len(), Ordering::SeqCst);
                    // Pacing the traffic, not waiting for anything.
                    std::thread::sleep(Duration::from_millis(120));
                }
                received
            })
        };
        Traffic {
            app,
            envoy: Some(envoy),
            log_dir,
            sent,
            stop,
            thread: Some(thread),
            startup,
        }
    }

    /// Exchanges that completed so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Waits until `n` exchanges completed.
    pub fn wait_sent(&self, n: usize, timeout: Duration) -> bool {
        wait_for(timeout, || (self.sent() >= n).then_some(())).is_some()
    }

    /// Stops the client, then Envoy (its last lines written), and checks that everything before
    /// meshtap's part went right: the upstream saw each exchange once, the client got what the
    /// upstream answered, Envoy logged them.
    pub fn finish(mut self) -> Truth {
        self.stop.store(true, Ordering::SeqCst);
        let received = self.thread.take().unwrap().join().expect("traffic thread");
        let writer = self.envoy.take().unwrap().stop();
        assert!(writer.error.is_none(), "log writer: {:?}", writer.error);
        assert!(
            writer.exit.is_some_and(|s| s.success()),
            "Envoy did not exit cleanly on SIGTERM: {:?}",
            writer.exit
        );
        let mut seen = BTreeMap::new();
        for s in self.app.seen() {
            let id = s.test_id.expect("x-test-id at the upstream");
            assert!(seen.insert(id, s).is_none(), "upstream saw {id} twice");
        }
        assert_eq!(seen.len(), received.len(), "exchanges seen by the upstream");
        for r in &received {
            let s = &seen[&r.test_id];
            assert_eq!(r.status, s.response.status, "exchange {}", r.test_id);
            assert!(
                r.body == s.response.body,
                "exchange {}: the client got {}, the upstream sent {}",
                r.test_id,
                show(&r.body),
                show(&s.response.body)
            );
        }
        assert!(
            writer.payload_lines >= 4 * seen.len(),
            "Envoy logged {} [logPayload] lines for {} exchanges",
            writer.payload_lines,
            seen.len()
        );
        Truth {
            seen,
            writer,
            log_dir: self.log_dir.clone(),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// -------------------------------------------------------------------------------------------------
// Checking what arrived

/// One exchange as a backend received it, whatever the sink's encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// The record's deterministic `id`.
    pub id: String,
    /// From the request's `x-test-id` header.
    pub test_id: Option<u32>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub status: Option<i64>,
    pub request_body: Result<Vec<u8>, String>,
    pub response_body: Result<Vec<u8>, String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// `complete` and no `warnings`.
    pub exact: bool,
    /// Sink-specific problems found while decoding (wrong key, header, attribute type...).
    pub problems: Vec<String>,
}

/// How many copies arrived.
#[derive(Debug, Default)]
pub struct Tally {
    pub copies: usize,
    pub distinct: usize,
}

impl Tally {
    pub fn duplicates(&self) -> usize {
        self.copies - self.distinct
    }
}

/// Checks everything that arrived against the truth and against the ids `meshtap parse` gives the
/// log files: every exchange once or more, all its copies under one id and each exact.
pub fn check_delivered(
    what: &str,
    truth: &Truth,
    delivered: &[Delivered],
    parsed_ids: &BTreeSet<String>,
    failures: &mut Vec<String>,
) -> Tally {
    let mut by_test_id: BTreeMap<u32, Vec<&Delivered>> = BTreeMap::new();
    for d in delivered {
        for p in &d.problems {
            failures.push(format!("{what}: record {}: {p}", d.id));
        }
        match d.test_id {
            Some(t) if truth.seen.contains_key(&t) => by_test_id.entry(t).or_default().push(d),
            Some(t) => failures.push(format!("{what}: record {}: exchange {t} never sent", d.id)),
            None => failures.push(format!("{what}: record {}: no x-test-id", d.id)),
        }
    }
    let ids: BTreeSet<&str> = delivered.iter().map(|d| d.id.as_str()).collect();
    for (test_id, seen) in &truth.seen {
        let ctx = format!("{what}: exchange {test_id} ({} {})", seen.method, seen.path);
        let Some(copies) = by_test_id.get(test_id) else {
            failures.push(format!("{ctx}: never arrived"));
            continue;
        };
        let distinct: BTreeSet<&str> = copies.iter().map(|d| d.id.as_str()).collect();
        if distinct.len() != 1 {
            failures.push(format!(
                "{ctx}: {} copies under {} different ids {distinct:?}",
                copies.len(),
                distinct.len()
            ));
        }
        for d in copies {
            let mut check = |ok: bool, message: String| {
                if !ok {
                    failures.push(format!("{ctx}: {message}"));
                }
            };
            check(
                d.method.as_deref() == Some(seen.method.as_str()),
                format!("method {:?}", d.method),
            );
            check(
                d.path.as_deref() == Some(seen.path.as_str()),
                format!("path {:?}", d.path),
            );
            check(
                d.status == Some(i64::from(seen.response.status)),
                format!(
                    "status {:?}, upstream sent {}",
                    d.status, seen.response.status
                ),
            );
            check(
                d.namespace.as_deref() == Some(NAMESPACE),
                format!("namespace {:?}", d.namespace),
            );
            check(d.pod.as_deref() == Some(POD), format!("pod {:?}", d.pod));
            check(d.exact, "not complete, or with warnings".to_string());
            for (name, got, want) in [
                ("request", &d.request_body, &seen.body),
                ("response", &d.response_body, &seen.response.body),
            ] {
                match got {
                    Ok(body) => check(
                        body == want,
                        format!(
                            "{name} body differs from byte {}: {} (expected {})",
                            body.iter()
                                .zip(want.iter())
                                .take_while(|(a, b)| a == b)
                                .count(),
                            show(body),
                            show(want)
                        ),
                    ),
                    Err(e) => check(false, format!("{name} body: {e}")),
                }
            }
        }
    }
    let only_delivered: Vec<&&str> = ids.iter().filter(|id| !parsed_ids.contains(**id)).collect();
    let only_parsed: Vec<&String> = parsed_ids
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    if !only_delivered.is_empty() || !only_parsed.is_empty() {
        failures.push(format!(
            "{what}: ids differ from `meshtap parse` of the log files: only delivered {only_delivered:?}, only parsed {only_parsed:?}"
        ));
    }
    Tally {
        copies: delivered.len(),
        distinct: ids.len(),
    }
}

/// The ids `meshtap parse` gives the pod's log files as they are now (rotated, gzipped, live).
pub fn parsed_ids(truth: &Truth) -> BTreeSet<String> {
    crate::agent::parse_dir(&truth.log_dir)
        .expect("meshtap parse of the log files")
        .into_keys()
        .collect()
}

/// A multi-threaded runtime for the upstream, the client and in-test receivers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Panics with every failure (the first 40 in full), keeping the test's files.
/// `MESHTAP_KEEP_TEST_FILES=1` keeps them after a success too.
pub fn finish(what: &str, failures: Vec<String>, dir: tempfile::TempDir, context: &str) {
    if failures.is_empty() {
        if std::env::var_os("MESHTAP_KEEP_TEST_FILES").is_some() {
            eprintln!("{what}: files in {}", dir.keep().display());
        }
        return;
    }
    let kept = dir.keep();
    let total = failures.len();
    let shown: Vec<String> = failures.into_iter().take(40).collect();
    panic!(
        "{what}: {total} failure(s); files kept in {}\n  - {}{}\n{context}",
        kept.display(),
        shown.join("\n  - "),
        if total > 40 {
            format!("\n  … and {} more", total - 40)
        } else {
            String::new()
        }
    );
}

/// Creates an empty file (for a process's stdout/stderr).
pub fn create(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}
