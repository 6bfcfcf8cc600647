//! What a container runtime does with the istio-proxy container's stderr: the same Envoy stderr
//! stream, written the way containerd (CRI), CRI-O (CRI), docker (json-file) and nothing at all
//! (raw) would, into a temp dir laid out like a node's `/var/log/pods`.
//!
//! A real istio-proxy container mixes pilot-agent's stdout with Envoy's stderr, so the CRI and
//! docker writers interleave pilot-agent style stdout lines, including between the partial pieces
//! of one long stderr line (the runtime copies each stream on its own).

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, TimeZone, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;

/// Kubernetes identity of a log file, as its path encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8s {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
}

/// One written log file.
#[derive(Debug, Clone)]
pub struct LogFile {
    /// e.g. `containerd`, `crio`, `docker`, `raw`, `containerd-gz`, `containerd-epoch`,
    /// `containerd+garbage`.
    pub label: String,
    pub path: PathBuf,
    pub k8s: K8s,
    /// For a `+garbage` file: the label of the clean file it extends.
    pub garbage_of: Option<String>,
    /// For a rotated `.gz` file: the label of the plain file with the same content.
    pub same_as: Option<String>,
}

/// containerd's and docker's line limit; CRI-O's is [`CRIO_MAX_LINE`].
pub const CONTAINERD_MAX_LINE: usize = 16384;
pub const CRIO_MAX_LINE: usize = 8192;
pub const DOCKER_MAX_LINE: usize = 16384;
/// A pilot-agent stdout line is written after this many runtime lines.
const STDOUT_EVERY: usize = 13;
/// Istio 1.5's prefix on every Envoy log entry. Istio 1.5 put it in Envoy's `--log-format`
/// (`[Envoy (Epoch N)] [%Y-%m-%d %T.%e][%t][%l][%n] %v`), so it starts each log entry, not each
/// physical line: the continuation lines of a multi-line message have none.
pub const EPOCH_PREFIX: &str = "[Envoy (Epoch 0)] ";

/// Whether a physical line starts an entry of Envoy's default layout: `[YYYY-MM-DD HH:MM:SS.mmm]`.
fn starts_envoy_entry(line: &[u8]) -> bool {
    let digits = |range: std::ops::Range<usize>| line[range].iter().all(u8::is_ascii_digit);
    line.len() >= 25
        && line[0] == b'['
        && digits(1..5)
        && line[5] == b'-'
        && line[8] == b'-'
        && line[11] == b' '
        && line[20] == b'.'
        && digits(21..24)
        && line[24] == b']'
}

const PILOT_AGENT_LINES: [&str; 4] = [
    "info\tads\tADS: \"\" Push debounce stable",
    "info\txdsproxy\tconnected to upstream XDS server: istiod.istio-system.svc:15012",
    "warn\tsds\tsecret fetch took longer than expected [logPayload] started",
    "info\tcache\tgenerated new workload certificate\tlatency=87.1ms ttl=23h59m59s",
];

fn pilot_agent_line(n: usize, at: DateTime<Utc>) -> String {
    format!(
        "{}\t{}",
        at.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
        PILOT_AGENT_LINES[n % PILOT_AGENT_LINES.len()]
    )
}

/// Synthetic runtime timestamps, strictly increasing.
struct Clock {
    next: DateTime<Utc>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            next: Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap()
                + Duration::nanoseconds(123_456_789),
        }
    }

    fn tick(&mut self) -> DateTime<Utc> {
        let now = self.next;
        self.next += Duration::nanoseconds(1_300);
        now
    }
}

/// Go's `time.RFC3339Nano` in UTC (trailing zeros of the fraction trimmed), as containerd and
/// docker write it.
pub fn rfc3339_nano(t: DateTime<Utc>) -> String {
    let nanos = format!("{:09}", t.timestamp_subsec_nanos());
    let trimmed = nanos.trim_end_matches('0');
    if trimmed.is_empty() {
        format!("{}Z", t.format("%Y-%m-%dT%H:%M:%S"))
    } else {
        format!("{}.{trimmed}Z", t.format("%Y-%m-%dT%H:%M:%S"))
    }
}

/// CRI-O's timestamp: nanoseconds always, numeric UTC offset.
fn crio_time(t: DateTime<Utc>) -> String {
    format!("{}+00:00", t.format("%Y-%m-%dT%H:%M:%S%.9f"))
}

/// Envoy's stderr as physical lines: `(content without "\n", ended by "\n")`.
fn physical_lines(stderr: &[u8]) -> Vec<(&[u8], bool)> {
    stderr
        .split_inclusive(|b| *b == b'\n')
        .map(|line| match line.strip_suffix(b"\n") {
            Some(content) => (content, true),
            None => (line, false),
        })
        .collect()
}

/// CRI format: `<time> <stream> <P|F> <content>`. Lines longer than `max` bytes become `P` pieces
/// of `max` bytes and a final `F` piece. containerd (`strip_cr`) reads lines with Go's
/// `bufio.Reader.ReadLine`, which drops a `"\r"` before the `"\n"`; CRI-O's conmon keeps it.
/// `prefix` goes before every line that starts an Envoy log entry ([`EPOCH_PREFIX`]).
fn cri(
    stderr: &[u8],
    max: usize,
    strip_cr: bool,
    time: fn(DateTime<Utc>) -> String,
    prefix: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(stderr.len() * 2);
    let mut clock = Clock::new();
    let mut written = 0usize;
    let mut stdout_lines = 0usize;
    for (content, _) in physical_lines(stderr) {
        let mut line = if starts_envoy_entry(content) {
            prefix.to_vec()
        } else {
            Vec::new()
        };
        line.extend_from_slice(content);
        if strip_cr && line.last() == Some(&b'\r') {
            line.pop();
        }
        let pieces: Vec<&[u8]> = if line.is_empty() {
            vec![&[][..]]
        } else {
            line.chunks(max).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            if written > 0 && written.is_multiple_of(STDOUT_EVERY) {
                let now = clock.tick();
                out.extend_from_slice(
                    format!(
                        "{} stdout F {}\n",
                        time(now),
                        pilot_agent_line(stdout_lines, now)
                    )
                    .as_bytes(),
                );
                stdout_lines += 1;
            }
            let tag = if i + 1 == pieces.len() { "F" } else { "P" };
            out.extend_from_slice(format!("{} stderr {tag} ", time(clock.tick())).as_bytes());
            out.extend_from_slice(piece);
            out.push(b'\n');
            written += 1;
        }
    }
    out
}

/// One docker json-file entry. Go's encoder escapes `<`, `>` and `&` (HTML-safe JSON), so docker's
/// files have `\u003c` etc.; serde_json doesn't, hence the replacement (those characters only
/// occur inside JSON strings here).
fn docker_entry(log: &str, stream: &str, time: &str) -> String {
    let log = serde_json::to_string(log)
        .unwrap()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    format!("{{\"log\":{log},\"stream\":\"{stream}\",\"time\":\"{time}\"}}\n")
}

/// docker json-file: one JSON object per line; lines over 16 KiB become several entries whose
/// `log` lacks the `"\n"` except the last; invalid UTF-8 is replaced with U+FFFD.
fn docker(stderr: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(stderr.len() * 2);
    let mut clock = Clock::new();
    let mut written = 0usize;
    let mut stdout_lines = 0usize;
    for (content, newline) in physical_lines(stderr) {
        let pieces: Vec<&[u8]> = if content.is_empty() {
            vec![&[][..]]
        } else {
            content.chunks(DOCKER_MAX_LINE).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            if written > 0 && written.is_multiple_of(STDOUT_EVERY) {
                let now = clock.tick();
                out.push_str(&docker_entry(
                    &format!("{}\n", pilot_agent_line(stdout_lines, now)),
                    "stdout",
                    &rfc3339_nano(now),
                ));
                stdout_lines += 1;
            }
            let mut log = String::from_utf8_lossy(piece).into_owned();
            if i + 1 == pieces.len() && newline {
                log.push('\n');
            }
            out.push_str(&docker_entry(&log, "stderr", &rfc3339_nano(clock.tick())));
            written += 1;
        }
    }
    out.into_bytes()
}

/// Junk a log file can end with: lines no runtime wrote, invalid UTF-8, and a last line cut short.
pub fn garbage() -> Vec<u8> {
    let mut junk = Vec::new();
    junk.extend_from_slice(b"this line is not from any container runtime\n");
    junk.extend_from_slice(b"2026-11-25T08:00:09.5Z stderr X [logPayload] started\n");
    junk.extend_from_slice(b"{\"log\":\"unterminated json\n");
    junk.extend_from_slice(b"\n");
    junk.extend_from_slice(b"\xff\xfe\x80\xc3\x28 invalid utf-8 \xf0\x28\x8c\x28\n");
    junk.extend_from_slice(b"2026-11-25T08:00:09.6Z stderr F [2026-11-25 08:00:09.600][77][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: [logPay");
    junk
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Writes every runtime's file for one Envoy stderr stream under `root`:
/// `<root>/var/log/pods/default_productpage-v1-<runtime>_<uid>/istio-proxy/0.log`, plus a rotated
/// gzip of the containerd file beside it, an Istio 1.5 `[Envoy (Epoch 0)]` variant when `epoch`,
/// and copies of the containerd and docker files with [`garbage`] appended, at the same paths
/// under `<root>/garbage/`.
pub fn write_all(root: &Path, stderr: &[u8], epoch: bool) -> Vec<LogFile> {
    let mut files = Vec::new();
    let mut add = |label: &str,
                   pod_suffix: &str,
                   uid: &str,
                   name: &str,
                   bytes: &[u8],
                   garbage_of: Option<&str>,
                   same_as: Option<&str>| {
        let k8s = K8s {
            namespace: "default".into(),
            pod: format!("productpage-v1-{pod_suffix}"),
            pod_uid: uid.into(),
            container: "istio-proxy".into(),
        };
        let base = if garbage_of.is_some() {
            root.join("garbage")
        } else {
            root.to_path_buf()
        };
        let path = base
            .join("var/log/pods")
            .join(format!("{}_{}_{}", k8s.namespace, k8s.pod, k8s.pod_uid))
            .join(&k8s.container)
            .join(name);
        write_file(&path, bytes);
        files.push(LogFile {
            label: label.into(),
            path,
            k8s,
            garbage_of: garbage_of.map(String::from),
            same_as: same_as.map(String::from),
        });
    };

    let containerd = cri(stderr, CONTAINERD_MAX_LINE, true, rfc3339_nano, b"");
    let crio = cri(stderr, CRIO_MAX_LINE, false, crio_time, b"");
    let docker = docker(stderr);
    const UID_CONTAINERD: &str = "0b4e2a57-6a5c-4a4e-9d0e-3f1c2b7a9e01";
    const UID_DOCKER: &str = "5d1f3c2e-8b7a-4c6d-9e0f-1a2b3c4d5e03";
    add(
        "containerd",
        "containerd",
        UID_CONTAINERD,
        "0.log",
        &containerd,
        None,
        None,
    );
    add(
        "containerd-gz",
        "containerd",
        UID_CONTAINERD,
        "0.log.20261125-080000.gz",
        &gzip(&containerd),
        None,
        Some("containerd"),
    );
    add(
        "crio",
        "crio",
        "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c02",
        "0.log",
        &crio,
        None,
        None,
    );
    add("docker", "docker", UID_DOCKER, "0.log", &docker, None, None);
    add(
        "raw",
        "raw",
        "1f2e3d4c-5b6a-4798-8695-a4b3c2d1e004",
        "0.log",
        stderr,
        None,
        None,
    );
    if epoch {
        let epoch_file = cri(
            stderr,
            CONTAINERD_MAX_LINE,
            true,
            rfc3339_nano,
            EPOCH_PREFIX.as_bytes(),
        );
        add(
            "containerd-epoch",
            "epoch",
            "7c6b5a49-3827-4615-a4b3-c2d1e0f9a805",
            "0.log",
            &epoch_file,
            None,
            None,
        );
    }
    let mut dirty = containerd.clone();
    dirty.extend_from_slice(&garbage());
    add(
        "containerd+garbage",
        "containerd",
        UID_CONTAINERD,
        "0.log",
        &dirty,
        Some("containerd"),
        None,
    );
    let mut dirty = docker.clone();
    dirty.extend_from_slice(&garbage());
    add(
        "docker+garbage",
        "docker",
        UID_DOCKER,
        "0.log",
        &dirty,
        Some("docker"),
        None,
    );
    files
}

#[test]
fn cri_splits_long_lines_and_interleaves_stdout() {
    let mut stderr = b"short\r\n".to_vec();
    stderr.extend(std::iter::repeat_n(b'x', CONTAINERD_MAX_LINE * 2 + 5));
    stderr.extend_from_slice(b"\nlast");
    let out =
        String::from_utf8(cri(&stderr, CONTAINERD_MAX_LINE, true, rfc3339_nano, b"")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with(" stderr F short"), "{}", lines[0]);
    assert!(
        lines[1].contains(" stderr P ")
            && lines[2].contains(" stderr P ")
            && lines[3].contains(" stderr F ")
    );
    assert_eq!(lines[3].rsplit(' ').next().unwrap().len(), 5);
    assert!(lines[4].ends_with(" stderr F last"));
    let crio = String::from_utf8(cri(b"a\r\n", CRIO_MAX_LINE, false, crio_time, b"")).unwrap();
    assert!(
        crio.starts_with("2026-11-25T08:00:00.123456789+00:00 stderr F a\r\n"),
        "{crio:?}"
    );
    let docker = String::from_utf8(docker(b"<a>\xff\n")).unwrap();
    assert_eq!(docker, "{\"log\":\"\\u003ca\\u003e\u{fffd}\\n\",\"stream\":\"stderr\",\"time\":\"2026-11-25T08:00:00.123456789Z\"}\n");
    assert_eq!(
        rfc3339_nano(
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + Duration::milliseconds(120)
        ),
        "2026-01-02T03:04:05.12Z"
    );
}
