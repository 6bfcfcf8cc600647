//! End-to-end harness: a real Envoy with the shipped Lua, an upstream app and a client that record
//! the truth, container-runtime writers that turn Envoy's stderr into node log files, and a runner
//! for the built `meshtap` binary.
//!
//! [`run`] does one whole run and checks everything up to the point where meshtap takes over
//! (Envoy started, all traffic flowed, every file holds `[logPayload]` lines); the assertions on
//! meshtap's records are in `real_envoy`.

pub mod client;
pub mod envoy;
pub mod live_writer;
pub mod manifests;
pub mod meshtap;
pub mod runtime;
pub mod scenario;
pub mod upstream;

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use envoy::{Envoy, Layout};
use manifests::Filter;
use runtime::LogFile;
use scenario::Spec;

/// The truth about one exchange: what the client sent, what the upstream received and answered,
/// and what the client received.
#[derive(Debug, Clone)]
pub struct Truth {
    pub spec: Spec,
    pub seen: upstream::Seen,
    pub received: client::Received,
}

impl Truth {
    pub fn id(&self) -> u32 {
        self.spec.id
    }
}

/// One run: one Envoy with one filter and one log layout, the whole traffic, all runtime files.
pub struct Run {
    pub name: String,
    pub filter: Filter,
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub exchanges: Vec<Truth>,
    pub files: Vec<LogFile>,
    pub timings: Vec<(&'static str, Duration)>,
}

impl Run {
    pub fn exchange(&self, id: u32) -> Option<&Truth> {
        self.exchanges.iter().find(|t| t.id() == id)
    }

    /// Keeps the run's files on disk (for a failure report) and returns where they are.
    pub fn keep_files(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            return dir.keep();
        }
        self.root.clone()
    }

    pub fn timing_report(&self) -> String {
        self.timings
            .iter()
            .map(|(what, d)| format!("{what} {:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs Envoy with `filter` logging in `layout`, drives the traffic, stops Envoy and writes every
/// runtime's file. Panics when anything before meshtap's part goes wrong.
pub fn run(filter: Filter, layout: Layout) -> Run {
    let name = format!("{}/{}", filter.name(), layout.name());
    let mut timings = Vec::new();
    let dir = tempfile::Builder::new()
        .prefix("meshtap-e2e-")
        .tempdir()
        .unwrap();
    let root = dir.path().to_path_buf();
    // MESHTAP_KEEP_TEST_FILES=1 keeps every run's files (a failed run keeps its own anyway).
    let dir = if std::env::var_os("MESHTAP_KEEP_TEST_FILES").is_some() {
        eprintln!("{name}: files in {}", dir.keep().display());
        None
    } else {
        Some(dir)
    };

    let lua = filter.lua();
    let plan = scenario::plan(filter.is_v2());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(upstream::Upstream::start());
    let envoy = Envoy::start(&root, &lua, app.addr, layout);
    timings.push(("envoy startup", envoy.startup));

    let t = Instant::now();
    let received = rt.block_on(client::drive(envoy.listener, &plan));
    timings.push(("traffic", t.elapsed()));

    let t = Instant::now();
    let stderr = envoy.stop();
    timings.push(("envoy stop", t.elapsed()));
    let seen = app.seen();
    rt.shutdown_timeout(Duration::from_secs(1));

    // Kept beside the runtime files, for inspection when a run fails.
    std::fs::write(root.join("envoy.stderr"), &stderr).unwrap();
    let exchanges = truths(&name, plan, seen, received);
    check_markers(&name, filter, &stderr, &exchanges);

    let t = Instant::now();
    let files = runtime::write_all(&root.join("node"), &stderr, layout == Layout::Envoy);
    for file in &files {
        let bytes = read_maybe_gz(&file.path);
        assert!(
            contains(&bytes, b"[logPayload]"),
            "{name}: {} ({}) has no [logPayload] line",
            file.label,
            file.path.display()
        );
    }
    timings.push(("write files", t.elapsed()));

    Run {
        name,
        filter,
        dir,
        root,
        exchanges,
        files,
        timings,
    }
}

/// Joins the plan with what the upstream saw and the client received, checking they agree (Envoy
/// passed every byte through unchanged).
fn truths(
    name: &str,
    plan: Vec<Spec>,
    seen: Vec<upstream::Seen>,
    received: Vec<client::Received>,
) -> Vec<Truth> {
    assert_eq!(
        seen.len(),
        plan.len(),
        "{name}: the upstream saw {} requests, {} were sent",
        seen.len(),
        plan.len()
    );
    plan.into_iter()
        .map(|spec| {
            let at_app = seen
                .iter()
                .find(|s| s.test_id == Some(spec.id))
                .unwrap_or_else(|| panic!("{name}: the upstream never saw exchange {}", spec.id))
                .clone();
            let got = received
                .iter()
                .find(|r| r.test_id == spec.id)
                .unwrap_or_else(|| panic!("{name}: no response for exchange {}", spec.id))
                .clone();
            assert_eq!(
                at_app.method, spec.method,
                "{name}: exchange {} method at the upstream",
                spec.id
            );
            assert_eq!(
                at_app.path, spec.path,
                "{name}: exchange {} path at the upstream",
                spec.id
            );
            assert!(
                at_app.body == spec.sent_body(),
                "{name}: exchange {}: the upstream got another body",
                spec.id
            );
            assert_eq!(
                got.status, at_app.response.status,
                "{name}: exchange {} status at the client",
                spec.id
            );
            assert!(
                got.body == at_app.response.body,
                "{name}: exchange {}: the client got another body",
                spec.id
            );
            Truth {
                spec,
                seen: at_app,
                received: got,
            }
        })
        .collect()
}

/// Envoy's stderr holds the Lua filter's lines for every exchange it should log.
fn check_markers(name: &str, filter: Filter, stderr: &[u8], exchanges: &[Truth]) {
    let count = |needle: &[u8]| {
        stderr
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    };
    let logged = match filter {
        Filter::V1Headers => exchanges
            .iter()
            .filter(|t| t.spec.has_productpage())
            .count(),
        _ => exchanges.len(),
    };
    let (what, found, expected): (&str, usize, usize) = match filter {
        Filter::V2 { .. } => {
            assert_eq!(
                count(b"[logPayload] v2 rs "),
                logged,
                "{name}: v2 response header lines"
            );
            ("[logPayload] v2 rq ", count(b"[logPayload] v2 rq "), logged)
        }
        // One `started` per direction.
        Filter::V1Body | Filter::V1Headers => (
            "[logPayload] started",
            count(b"[logPayload] started"),
            2 * logged,
        ),
    };
    assert_eq!(
        found,
        expected,
        "{name}: Envoy's stderr has {found} `{what}` lines, expected {expected}\n{}",
        String::from_utf8_lossy(&stderr[..stderr.len().min(4000)])
    );
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn read_maybe_gz(path: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        bytes
    }
}

/// Collects assertion failures so one run reports all of them, per file.
#[derive(Default)]
pub struct Failures {
    messages: Vec<String>,
}

impl Failures {
    pub fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.messages.push(message());
        }
    }

    pub fn fail(&mut self, message: String) {
        self.messages.push(message);
    }

    /// Panics with every failure (the first 60 in full), naming `what`; for checks without a
    /// [`Run`].
    pub fn finish_named(self, what: &str) {
        if self.messages.is_empty() {
            return;
        }
        let total = self.messages.len();
        let shown: Vec<String> = self.messages.into_iter().take(60).collect();
        panic!(
            "{what}: {total} failed check(s)\n  - {}",
            shown.join("\n  - ")
        );
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Panics with every failure (the first 60 in full), keeping the run's files for inspection.
    pub fn finish(self, run: &mut Run) {
        if self.messages.is_empty() {
            return;
        }
        let kept = run.keep_files();
        let total = self.messages.len();
        let shown: Vec<String> = self.messages.into_iter().take(60).collect();
        panic!(
            "{}: {total} failed check(s); files kept in {}\n  - {}{}",
            run.name,
            kept.display(),
            shown.join("\n  - "),
            if total > 60 {
                format!("\n  … and {} more", total - 60)
            } else {
                String::new()
            }
        );
    }
}
