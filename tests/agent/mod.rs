//! `meshtap run`, the node agent, as a process: started from the built binary with a file sink
//! and an ops endpoint, stopped gracefully (SIGTERM) or crashed (SIGKILL), its output read back
//! from the file sink's files.
//!
//! - [`model`]: random sequences of log writes, rotations, compressions, copy-truncates, pod
//!   additions and deletions, agent restarts and crashes against synthetic logs whose truth is
//!   known: nothing lost, nothing doubled, every record exact.
//! - [`crash`]: a real Envoy whose stderr is written live into a rotating pod log while the agent
//!   is killed and restarted: every exchange the upstream saw is delivered exactly once.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`, a bad config, the checkpoint file.
//! - [`regressions`]: deterministic tests for the bugs the randomized ones found.
//!
//! Readiness is waited for, never guessed: an agent is "started" once `/readyz` answers 200 and
//! its SIGTERM handler is installed (`SigCgt` in `/proc/<pid>/status`), so a SIGTERM sent after
//! that is a graceful stop.

mod crash;
mod model;
mod ops;
mod regressions;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::envoy::free_port;

pub const BIN: &str = env!("CARGO_BIN_EXE_meshtap");

/// How often conditions are polled while waiting for them.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `f` every [`POLL`] until it returns `Some`, or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Polling interval, not a readiness guess: the loop ends as soon as `f` says so.
        std::thread::sleep(POLL);
    }
}

/// xorshift64*: deterministic, so a seed replays the same choices.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never 0 (xorshift's fixed point); mixed so nearby seeds diverge at once.
        let mut rng = Rng((seed ^ 0x9E37_79B9_7F4A_7C15).max(1));
        for _ in 0..4 {
            rng.next();
        }
        rng
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A seed from the environment variable `var` (decimal or `0x` hex), else a fresh one.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{var}={text:?} is not a number"))
        }
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
        }
    }
}

/// A number from the environment variable `var`, else `default`.
pub fn usize_from_env(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={text:?} is not a number")),
        Err(_) => default,
    }
}

/// The places one agent works with, in a temp dir: log root, state dir, file sink, its own
/// stderr (appended across starts) and its config file.
pub struct Setup {
    pub root: PathBuf,
    pub state: PathBuf,
    pub out: PathBuf,
    pub max_bytes: u64,
    pub max_files: u32,
    pub stderr: PathBuf,
    pub config: PathBuf,
    pub checkpoint_interval_ms: u64,
    starts: usize,
}

impl Setup {
    /// `<dir>/pods` (created), `<dir>/state`, `<dir>/out/exchanges.ndjson`.
    pub fn new(dir: &Path) -> Setup {
        let root = dir.join("pods");
        fs::create_dir_all(&root).unwrap();
        Setup {
            root,
            state: dir.join("state"),
            out: dir.join("out/exchanges.ndjson"),
            max_bytes: 1_048_576,
            max_files: 50,
            stderr: dir.join("agent.stderr"),
            config: dir.join("meshtap.yaml"),
            checkpoint_interval_ms: 100,
            starts: 0,
        }
    }

    /// The test configuration, with the ops endpoint on `ops_port`.
    pub fn yaml(&self, ops_port: u16) -> String {
        let q = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap();
        format!(
            "agent:\n  log_root: {}\n  state_dir: {}\n  checkpoint_interval_ms: {}\n  poll_interval_ms: 100\n  idle_flush_ms: 50\n\
             sink:\n  type: file\n  path: {}\n  max_bytes: {}\n  max_files: {}\n\
             ops:\n  listen: 127.0.0.1:{ops_port}\n",
            q(&self.root),
            q(&self.state),
            self.checkpoint_interval_ms,
            q(&self.out),
            self.max_bytes,
            self.max_files
        )
    }

    /// The last `n` bytes of the agent's stderr, for failure messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let bytes = fs::read(&self.stderr).unwrap_or_default();
        let from = bytes.len().saturating_sub(n);
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    /// Every output line of the file sink, oldest file first.
    pub fn sink(&self) -> SinkOutput {
        read_sink(&self.out, self.max_files)
    }

    /// `<state>/checkpoints.json`, parsed (`None` when absent or unreadable).
    pub fn checkpoint(&self) -> Option<Value> {
        let bytes = fs::read(self.state.join("checkpoints.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// A running `meshtap run`. Dropping it kills the process.
pub struct Agent {
    child: Option<Child>,
    pub ops: SocketAddr,
}

impl Agent {
    /// Starts the agent and waits until it is ready (see the module docs). Panics, with its
    /// stderr, if it does not get there.
    pub fn start(setup: &mut Setup) -> Agent {
        match Agent::try_start(setup) {
            Ok(agent) => agent,
            Err(why) => panic!(
                "meshtap run did not start: {why}\n--- agent stderr (tail) ---\n{}",
                setup.stderr_tail(4000)
            ),
        }
    }

    pub fn try_start(setup: &mut Setup) -> Result<Agent, String> {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let mut agent = Agent::spawn_unready(setup);
            match agent.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return Ok(agent),
                Err(why) => {
                    let status = agent.kill();
                    let tail = setup.stderr_tail(600);
                    let retry = tail.contains("cannot listen");
                    failures.push(format!("{why} ({status:?})"));
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(failures.join("; "))
    }

    /// Starts the agent without waiting for anything (see [`Agent::wait_ready`]).
    pub fn spawn_unready(setup: &mut Setup) -> Agent {
        let port = free_port();
        fs::write(&setup.config, setup.yaml(port)).unwrap();
        let child = spawn(setup);
        Agent {
            child: Some(child),
            ops: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until `/readyz` answers 200 and the SIGTERM handler is installed.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        wait_agent_ready(self.child.as_mut().unwrap(), self.ops, timeout)
    }

    /// The process exited on its own (it should not): its status.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits for the exit (up to 40 s: the grace period is 20 s).
    pub fn terminate(mut self) -> Result<ExitStatus, String> {
        terminate_child(self.child.take().expect("running"), Duration::from_secs(40))
    }

    /// SIGKILL: a crash at whatever point the agent is.
    pub fn crash(mut self) {
        self.kill();
    }

    fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// `/metrics`, if it answers.
    pub fn metrics(&self) -> Option<String> {
        match http_get(self.ops, "/metrics") {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(setup: &mut Setup) -> Child {
    setup.starts += 1;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&setup.stderr)
        .unwrap();
    writeln!(log, "=== test harness: start #{} ===", setup.starts).unwrap();
    Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&setup.config)
        .env_remove("MESHTAP_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn meshtap run")
}

/// Waits until the agent `child` answers 200 on `ops`'s `/readyz` and its SIGTERM handler is
/// installed (or it exits, or `timeout` passes).
pub fn wait_agent_ready(
    child: &mut Child,
    ops: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let pid = child.id();
    let mut exited = None;
    let ready = wait_for(timeout, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return Some(false);
        }
        let ready = matches!(http_get(ops, "/readyz"), Ok((200, _)));
        (ready && sigterm_handled(pid)).then_some(true)
    });
    match (ready, exited) {
        (Some(true), _) => Ok(()),
        (_, Some(status)) => Err(format!("exited during startup: {status}")),
        _ => Err(format!("not ready after {timeout:?}")),
    }
}

/// SIGTERM, then waits up to `timeout` for the exit; SIGKILL (and an error) after that.
pub fn terminate_child(mut child: Child, timeout: Duration) -> Result<ExitStatus, String> {
    signal(&child, libc::SIGTERM);
    match wait_for(timeout, || child.try_wait().ok().flatten()) {
        Some(status) => Ok(status),
        None => {
            let _ = child.kill();
            let status = child.wait();
            Err(format!(
                "did not exit within {timeout:?} of SIGTERM; killed ({status:?})"
            ))
        }
    }
}

pub fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: plain kill(2) on the pid of a child this process owns and has not yet reaped.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Whether process `pid` catches SIGTERM (its handler is installed): bit 14 of `SigCgt`.
fn sigterm_handled(pid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// `GET path` over HTTP/1.1 (one connection, closed after the response): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no response head in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of one series (`name{labels}` exactly as exposed) in a Prometheus text page.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `meshtap parse` over every file of a container log directory (rotated, gzipped and live files
/// given together are read as one stream): its records by id.
pub fn parse_dir(dir: &Path) -> Result<BTreeMap<String, Value>, String> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    if files.is_empty() {
        return Ok(BTreeMap::new());
    }
    let out = Command::new(BIN)
        .arg("parse")
        .args(&files)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "meshtap parse {files:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut records = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let record: Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        let id = record["id"].as_str().unwrap_or_default().to_string();
        records.insert(id, record);
    }
    Ok(records)
}

/// What the file sink's files hold.
#[derive(Default)]
pub struct SinkOutput {
    /// Every complete line, oldest first.
    pub lines: Vec<String>,
    /// The lines that are JSON objects, in the same order.
    pub records: Vec<Value>,
    /// Lines that are not JSON objects.
    pub bad: Vec<String>,
    /// Bytes after the last newline of the current file (a write in progress, or a torn line).
    pub torn: usize,
}

impl SinkOutput {
    /// Lines minus distinct ids: how many records were written more than once.
    pub fn raw_duplicates(&self) -> usize {
        self.records.len() - self.by_id().len()
    }

    /// One record per id (the first), with how many times each id was written.
    pub fn by_id(&self) -> BTreeMap<String, (usize, &Value)> {
        let mut map: BTreeMap<String, (usize, &Value)> = BTreeMap::new();
        for r in &self.records {
            let id = r["id"].as_str().unwrap_or("<no id>").to_string();
            map.entry(id).or_insert((0, r)).0 += 1;
        }
        map
    }
}

/// Reads `out.<max_files>` .. `out.1` (oldest first), then `out`.
pub fn read_sink(out: &Path, max_files: u32) -> SinkOutput {
    let mut result = SinkOutput::default();
    let mut paths: Vec<PathBuf> = (1..=max_files)
        .rev()
        .map(|k| PathBuf::from(format!("{}.{k}", out.display())))
        .collect();
    paths.push(out.to_path_buf());
    for path in paths {
        let Ok(bytes) = fs::read(&path) else { continue };
        let complete = match memchr_last_newline(&bytes) {
            Some(i) => i + 1,
            None => 0,
        };
        result.torn += bytes.len() - complete;
        for line in bytes[..complete].split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(line).into_owned();
            match serde_json::from_str::<Value>(&text) {
                Ok(v) if v.is_object() => result.records.push(v),
                _ => result.bad.push(text.chars().take(200).collect()),
            }
            result.lines.push(text);
        }
    }
    result
}

fn memchr_last_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().rposition(|b| *b == b'\n')
}

/// Collects failures so that one run reports all of them.
#[derive(Default)]
pub struct Failures(pub Vec<String>);

impl Failures {
    pub fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    pub fn fail(&mut self, message: impl Into<String>) {
        self.0.push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The failures, the first `n` in full.
    pub fn report(&self, n: usize) -> String {
        let mut text = self
            .0
            .iter()
            .take(n)
            .map(|m| format!("  - {m}"))
            .collect::<Vec<_>>()
            .join("\n");
        if self.0.len() > n {
            text.push_str(&format!("\n  … and {} more", self.0.len() - n));
        }
        text
    }
}
