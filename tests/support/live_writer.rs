//! A real Envoy whose stderr is written into a pod log AS IT COMES, the way containerd and kubelet
//! do on a node: every physical line framed as a CRI line (`P` pieces past 16 KiB) with one write,
//! `0.log` rotated by rename every `rotate_every` lines and the runtime reopening a new `0.log`,
//! rotated files but the newest compressed (`<f>.gz.tmp`, renamed `<f>.gz`, `<f>` deleted).
//!
//! [`super::envoy::Envoy`] collects stderr until Envoy exits; this one hands it to the log while
//! Envoy runs, so an agent tailing the log sees it grow, rotate and compress under its feet.

use super::envoy::wait_listener;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;

use super::envoy::{bootstrap, envoy_binary, free_port, Layout};
use super::runtime::{rfc3339_nano, CONTAINERD_MAX_LINE};

/// What the writer did.
#[derive(Debug, Default, Clone)]
pub struct WriterStats {
    /// Envoy stderr lines written.
    pub lines: usize,
    /// Of them, lines with `[logPayload]`.
    pub payload_lines: usize,
    pub rotations: usize,
    pub gzipped: usize,
    /// The last few KiB of Envoy's stderr, for failure messages.
    pub tail: Vec<u8>,
    /// An I/O error that stopped the writer.
    pub error: Option<String>,
    /// How Envoy exited ([`LiveEnvoy::stop`]).
    pub exit: Option<std::process::ExitStatus>,
}

/// A running Envoy whose stderr goes live into `<log_dir>/0.log`.
pub struct LiveEnvoy {
    child: Option<Child>,
    writer: Option<JoinHandle<WriterStats>>,
    /// The listener, through which the client sends its traffic.
    pub listener: SocketAddr,
    pub startup: Duration,
    /// While someone holds it, compression waits for a later rotation.
    pub gzip_hold: Arc<Mutex<()>>,
}

impl LiveEnvoy {
    /// Starts Envoy (default log layout) with `lua` in front of `upstream` and its writer; returns
    /// once the listener accepts connections. Retries with other ports if one was taken.
    pub fn start(
        work: &Path,
        lua: &str,
        upstream: SocketAddr,
        log_dir: &Path,
        rotate_every: usize,
    ) -> LiveEnvoy {
        let began = Instant::now();
        let mut failures = Vec::new();
        fs::create_dir_all(log_dir).unwrap();
        for attempt in 0..3u32 {
            let listener_port = free_port();
            let admin_port = free_port();
            let config = bootstrap(lua, listener_port, admin_port, upstream);
            let config_path = work.join(format!("live-envoy-{attempt}.yaml"));
            fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
            // The other harness counts base ids up from 0 in the same range; this one counts
            // down from its top.
            let base_id = 1000 + (std::process::id() % 60_000) * 64 + 63 - attempt;
            let mut child = Command::new(envoy_binary())
                .arg("-c")
                .arg(&config_path)
                .args([
                    "--disable-hot-restart",
                    "--concurrency",
                    "2",
                    "-l",
                    "warning",
                ])
                .args(["--base-id", &base_id.to_string()])
                .args(["--log-format", Layout::Envoy.format()])
                .env("TZ", "UTC")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", envoy_binary().display()));
            let pipe = child.stderr.take().unwrap();
            let dir = log_dir.to_path_buf();
            let gzip_hold = Arc::new(Mutex::new(()));
            let hold = gzip_hold.clone();
            let writer = std::thread::spawn(move || write_live(pipe, dir, rotate_every, hold));
            let listener = SocketAddr::from(([127, 0, 0, 1], listener_port));
            let mut envoy = LiveEnvoy {
                child: Some(child),
                writer: Some(writer),
                listener,
                startup: Duration::ZERO,
                gzip_hold,
            };
            match envoy.wait_ready(Duration::from_secs(30)) {
                Ok(()) => {
                    envoy.startup = began.elapsed();
                    return envoy;
                }
                Err(why) => {
                    let stats = envoy.kill();
                    let stderr = String::from_utf8_lossy(&stats.tail).into_owned();
                    let retry =
                        stderr.contains("ddress already in use") || stderr.contains("cannot bind");
                    failures.push(format!(
                        "attempt {attempt}: {why}\n--- envoy stderr (tail) ---\n{stderr}"
                    ));
                    // What the failed Envoy logged is no part of the test's log.
                    for entry in fs::read_dir(log_dir).unwrap().flatten() {
                        let _ = fs::remove_file(entry.path());
                    }
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("Envoy did not start:\n{}", failures.join("\n"));
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        wait_listener(self.child.as_mut().unwrap(), self.listener, timeout)
    }

    /// SIGTERM, waits for Envoy to exit and for the writer to write its last line (EOF on the
    /// pipe), and returns what the writer did.
    pub fn stop(mut self) -> WriterStats {
        let mut child = self.child.take().unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: plain kill(2) on the pid of a child this process owns and has not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let exit = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stats = self.writer.take().unwrap().join().unwrap();
        stats.exit = exit;
        stats
    }

    fn kill(&mut self) -> WriterStats {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.writer
            .take()
            .map(|w| w.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for LiveEnvoy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The runtime's and kubelet's side: see the module docs.
struct Writer {
    dir: PathBuf,
    file: File,
    rotate_every: usize,
    in_file: usize,
    /// Rotated files not compressed yet, oldest first.
    plain: Vec<PathBuf>,
    gzip_hold: Arc<Mutex<()>>,
    last: DateTime<Utc>,
    stats: WriterStats,
}

fn open_live(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("0.log"))
}

fn write_live(
    pipe: ChildStderr,
    dir: PathBuf,
    rotate_every: usize,
    gzip_hold: Arc<Mutex<()>>,
) -> WriterStats {
    let mut reader = BufReader::new(pipe);
    let file = match open_live(&dir) {
        Ok(file) => file,
        Err(e) => {
            return WriterStats {
                error: Some(format!("cannot open {}/0.log: {e}", dir.display())),
                ..WriterStats::default()
            }
        }
    };
    let mut w = Writer {
        dir,
        file,
        rotate_every,
        in_file: 0,
        plain: Vec::new(),
        gzip_hold,
        last: Utc.timestamp_opt(0, 0).unwrap(),
        stats: WriterStats::default(),
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                w.stats.error = Some(format!("reading Envoy's stderr: {e}"));
                break;
            }
        }
        w.keep_tail(&line);
        if let Err(e) = w.line(&line) {
            w.stats.error = Some(format!("writing the log: {e}"));
            // Keep draining the pipe so that Envoy never blocks on a full one.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            break;
        }
    }
    w.stats
}

impl Writer {
    fn keep_tail(&mut self, line: &[u8]) {
        const KEEP: usize = 8192;
        let tail = &mut self.stats.tail;
        tail.extend_from_slice(line);
        if tail.len() > 2 * KEEP {
            tail.drain(..tail.len() - KEEP);
        }
    }

    /// A strictly increasing runtime timestamp (unique first lines name files).
    fn now(&mut self) -> String {
        let mut now = Utc::now();
        if now <= self.last {
            now = self.last + chrono::Duration::nanoseconds(1);
        }
        self.last = now;
        rfc3339_nano(now)
    }

    fn line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let pieces: Vec<&[u8]> = if content.is_empty() {
            vec![&[][..]]
        } else {
            content.chunks(CONTAINERD_MAX_LINE).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let tag = if i + 1 == pieces.len() { "F" } else { "P" };
            let mut framed = format!("{} stderr {tag} ", self.now()).into_bytes();
            framed.extend_from_slice(piece);
            framed.push(b'\n');
            // One write per CRI line, as containerd does.
            self.file.write_all(&framed)?;
        }
        self.stats.lines += 1;
        if content.windows(12).any(|w| w == b"[logPayload]") {
            self.stats.payload_lines += 1;
        }
        self.in_file += 1;
        if self.in_file >= self.rotate_every {
            self.rotate()?;
        }
        Ok(())
    }

    /// kubelet renames `0.log`, the runtime reopens it, kubelet compresses the older files.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.stats.rotations += 1;
        let at = Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap()
            + chrono::Duration::seconds(self.stats.rotations as i64);
        let rotated = self
            .dir
            .join(format!("0.log.{}", at.format("%Y%m%d-%H%M%S")));
        fs::rename(self.dir.join("0.log"), &rotated)?;
        self.file = open_live(&self.dir)?;
        self.in_file = 0;
        self.plain.push(rotated);
        let hold = self.gzip_hold.clone();
        let Ok(_free) = hold.try_lock() else {
            return Ok(());
        };
        while self.plain.len() > 1 {
            let plain = self.plain.remove(0);
            let bytes = fs::read(&plain)?;
            let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
            encoder.write_all(&bytes)?;
            let tmp = PathBuf::from(format!("{}.gz.tmp", plain.display()));
            let gz = PathBuf::from(format!("{}.gz", plain.display()));
            fs::write(&tmp, encoder.finish()?)?;
            fs::rename(&tmp, &gz)?;
            fs::remove_file(&plain)?;
            self.stats.gzipped += 1;
        }
        Ok(())
    }
}
