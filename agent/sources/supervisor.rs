//! The node agent's pod sources: a supervisor, driven by the reader thread, that keeps one capture
//! ([`crate::capture`], `capture:`) or one admin tap stream ([`crate::tap::admin`], `tap:`) running
//! per pod that needs it.
//!
//! A pod needs one when it is listed in the section's `pods`, or when its sidecar log stream has
//! been tailed for the idle time without producing a single Lua exchange (no filter installed, or
//! a filter that logs nothing). It stops when the pod's log streams end (the pod was deleted) or
//! once Lua exchanges appear for it (the filter got installed: the log path has it from then on).
//!
//! Each pod's source runs on its own threads (for capture, the packet socket's thread inside the
//! pod's network namespace, and the decoder); its records go to the reader through one bounded
//! channel. When the channel is full, records are dropped and counted (`meshtap_skipped_total{reason=
//! "capture_queue_full"|"tap_queue_full"}`): live traffic cannot wait. Live traffic has no position
//! in any file, so across an agent crash it is delivered at most once, like tcpdump's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::capture::{self, Origin, Until};
use crate::netns::{self, Netns, Roots, Target};
use crate::ops::Metrics;
use crate::record::{Exchange, K8sMeta};

use super::capture::{parse_pods, CaptureConfig};
use super::tap::TapConfig;

/// What a supervisor runs per pod.
enum Kind {
    /// Raw capture in the pod's network namespace.
    Capture(CaptureConfig),
    /// The sidecar's admin /tap stream.
    Tap(TapConfig),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Capture(_) => "capture",
            Kind::Tap(_) => "tap",
        }
    }

    fn set_enabled(&self, metrics: &Metrics, on: bool) {
        match self {
            Kind::Capture(_) => metrics.capture_enabled(on),
            Kind::Tap(_) => metrics.tap_enabled(on),
        }
    }

    fn set_active(&self, metrics: &Metrics, n: usize) {
        match self {
            Kind::Capture(_) => metrics.capture_active(n),
            Kind::Tap(_) => metrics.tap_active(n),
        }
    }

    fn failure(&self, metrics: &Metrics) {
        match self {
            Kind::Capture(_) => metrics.capture_failure(),
            Kind::Tap(_) => metrics.tap_failure(),
        }
    }

    /// The message for missing capabilities, if any.
    fn missing_capabilities(&self) -> Option<String> {
        match self {
            Kind::Capture(_) => capture::missing_capabilities_message(true),
            Kind::Tap(_) => {
                let needed: Vec<(caps::Capability, &str)> = capture::CAPABILITIES
                    .iter()
                    .filter(|(c, _)| *c != caps::Capability::CAP_NET_RAW)
                    .copied()
                    .collect();
                netns::missing_capabilities_message("tap", &needed)
            }
        }
    }
}

/// A pod as the supervisor sees it, for [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub uid: String,
    /// Listed in `capture.pods`.
    pub explicit: bool,
    /// Its sidecar log produced a Lua exchange.
    pub lua: bool,
    /// How long its log stream has been tailed.
    pub tailed_for: Duration,
}

/// What to start and stop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub start: Vec<String>,
    pub stop: Vec<String>,
}

/// Which captures to start and stop, given the pods present now (`pods`), the captures running
/// (`running`) and pods not to try now (`blocked`: failed recently, or host network).
/// Explicit pods come first, then the longest tailed; at most `max_pods` run.
pub fn plan(
    pods: &[PodView],
    running: &BTreeSet<String>,
    blocked: &BTreeSet<String>,
    idle: Duration,
    max_pods: usize,
) -> Plan {
    let wanted = |p: &PodView| p.explicit || (!p.lua && p.tailed_for >= idle);
    let by_uid: BTreeMap<&str, &PodView> = pods.iter().map(|p| (p.uid.as_str(), p)).collect();
    let stop: Vec<String> = running
        .iter()
        .filter(|uid| !by_uid.get(uid.as_str()).is_some_and(|p| wanted(p)))
        .cloned()
        .collect();
    let mut candidates: Vec<&PodView> = pods
        .iter()
        .filter(|p| wanted(p) && !running.contains(&p.uid) && !blocked.contains(&p.uid))
        .collect();
    candidates.sort_by(|a, b| {
        b.explicit
            .cmp(&a.explicit)
            .then(b.tailed_for.cmp(&a.tailed_for))
            .then(a.uid.cmp(&b.uid))
    });
    let room = max_pods.saturating_sub(running.len() - stop.len());
    Plan {
        start: candidates
            .into_iter()
            .take(room)
            .map(|p| p.uid.clone())
            .collect(),
        stop,
    }
}

/// Why a capture ended on its own.
#[derive(Debug)]
enum Ended {
    /// The pod shares the host's (the agent's) network namespace: capturing it would capture the
    /// node. Not retried.
    HostNetwork,
    Failed(String),
}

struct Worker {
    namespace: String,
    pod: String,
    stop: Arc<AtomicBool>,
    listening: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), Ended>>,
}

struct Pod {
    namespace: String,
    name: String,
    first_seen: Instant,
    lua: bool,
    explicit: bool,
}

/// Retry a failed capture after this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// How often the supervisor looks at the pods.
const TICK: Duration = Duration::from_millis(250);

/// Starts and stops captures; owned by the reader thread.
pub struct Supervisor {
    kind: Kind,
    idle: Duration,
    max_pods: usize,
    roots: Roots,
    container: String,
    explicit: Vec<(String, String)>,
    metrics: Arc<Metrics>,
    /// False when disabled or when capabilities are missing.
    active: bool,
    tx: SyncSender<Exchange>,
    rx: Receiver<Exchange>,
    pods: BTreeMap<String, Pod>,
    workers: BTreeMap<String, Worker>,
    /// Pod UID -> when it may be tried again (`None`: not while it lives).
    blocked: BTreeMap<String, Option<Instant>>,
    /// Namespaces no pod capture may enter: the agent's own, and the host's (that of PID 1 in
    /// the host's /proc). A pod in one of them uses hostNetwork.
    not_pods: Vec<u64>,
    /// Pods whose log produced an exchange, not yet looked at.
    lua_pending: BTreeSet<String>,
    last_tick: Option<Instant>,
}

impl Supervisor {
    /// A supervisor for `config`; with `enabled: true` it checks the capabilities capture needs
    /// and, when one is missing, logs one error naming it and stays idle (the log path runs on).
    pub fn new(
        config: &CaptureConfig,
        log_root: &Path,
        container: &str,
        metrics: Arc<Metrics>,
    ) -> Supervisor {
        let common = Common {
            enabled: config.enabled,
            idle: Duration::from_secs(config.idle_before_capture_seconds),
            max_pods: config.max_pods,
            explicit: config.explicit_pods().unwrap_or_default(),
            queue_records: config.queue_records,
            proc_root: config.proc_root.clone(),
        };
        Supervisor::build(
            Kind::Capture(config.clone()),
            common,
            log_root,
            container,
            metrics,
        )
    }

    /// The same for the tap source (`tap:`): pods' admin /tap streams instead of packets.
    pub fn tap(
        config: &TapConfig,
        log_root: &Path,
        container: &str,
        metrics: Arc<Metrics>,
    ) -> Supervisor {
        let common = Common {
            enabled: config.enabled,
            idle: Duration::from_secs(config.idle_before_tap_seconds),
            max_pods: config.max_pods,
            explicit: parse_pods("tap.pods", &config.pods).unwrap_or_default(),
            queue_records: config.queue_records,
            proc_root: config.proc_root.clone(),
        };
        Supervisor::build(
            Kind::Tap(config.clone()),
            common,
            log_root,
            container,
            metrics,
        )
    }

    fn build(
        kind: Kind,
        common: Common,
        log_root: &Path,
        container: &str,
        metrics: Arc<Metrics>,
    ) -> Supervisor {
        let mut active = common.enabled;
        if active {
            if let Some(message) = kind.missing_capabilities() {
                let what = if matches!(kind, Kind::Capture(_)) {
                    "Capture"
                } else {
                    "Tap"
                };
                tracing::error!(
                    "{what} is disabled: {message}. The log path keeps running without it."
                );
                active = false;
            }
        }
        kind.set_enabled(&metrics, active);
        kind.set_active(&metrics, 0);
        let (tx, rx) = mpsc::sync_channel(common.queue_records.max(1));
        let proc_root = common.proc_root;
        Supervisor {
            kind,
            idle: common.idle,
            max_pods: common.max_pods,
            explicit: common.explicit,
            roots: Roots {
                proc_root: proc_root.clone(),
                log_root: log_root.to_path_buf(),
            },
            container: container.to_string(),
            metrics,
            active,
            tx,
            rx,
            pods: BTreeMap::new(),
            workers: BTreeMap::new(),
            blocked: BTreeMap::new(),
            not_pods: [
                netns::current_thread_netns_inode().ok(),
                netns_inode(&proc_root.join("1/ns/net")),
            ]
            .into_iter()
            .flatten()
            .collect(),
            lua_pending: BTreeSet::new(),
            last_tick: None,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Captures running (or starting) now.
    pub fn running(&self) -> usize {
        self.workers.len()
    }

    /// Looks at the pods (at most every 250 ms): `streams` are the container log directories
    /// being tailed and whether each ended; `lua_pods` the pod UIDs whose log produced an
    /// exchange since the last call (kept until the next look).
    pub fn tick<'a>(
        &mut self,
        streams: impl Iterator<Item = (&'a Path, bool)>,
        lua_pods: &BTreeSet<String>,
    ) {
        if !self.active {
            return;
        }
        self.lua_pending.extend(lua_pods.iter().cloned());
        if self.last_tick.is_some_and(|t| t.elapsed() < TICK) {
            return;
        }
        self.last_tick = Some(Instant::now());
        self.reap();

        let mut live: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (dir, finished) in streams {
            let Some(meta) = crate::k8s::meta_from_log_path(&dir.join("0.log")) else {
                continue;
            };
            if finished || meta.container != self.container {
                continue;
            }
            live.insert(meta.pod_uid, (meta.namespace, meta.pod));
        }
        // Pods named in the config are found by their log directory, sidecar or not.
        for (namespace, name) in &self.explicit {
            if let Ok(uid) = netns::pod_uid_from_log_root(&self.roots.log_root, namespace, name) {
                live.insert(uid, (namespace.clone(), name.clone()));
            }
        }
        self.pods.retain(|uid, _| live.contains_key(uid));
        self.blocked.retain(|uid, _| live.contains_key(uid));
        let now = Instant::now();
        for (uid, (namespace, name)) in live {
            let explicit = self
                .explicit
                .iter()
                .any(|(n, p)| *n == namespace && *p == name);
            self.pods.entry(uid).or_insert(Pod {
                namespace,
                name,
                first_seen: now,
                lua: false,
                explicit,
            });
        }
        for uid in std::mem::take(&mut self.lua_pending) {
            if let Some(pod) = self.pods.get_mut(&uid) {
                pod.lua = true;
            }
        }

        let views: Vec<PodView> = self
            .pods
            .iter()
            .map(|(uid, p)| PodView {
                uid: uid.clone(),
                explicit: p.explicit,
                lua: p.lua,
                tailed_for: now - p.first_seen,
            })
            .collect();
        let running: BTreeSet<String> = self.workers.keys().cloned().collect();
        let blocked: BTreeSet<String> = self
            .blocked
            .iter()
            .filter(|(_, until)| until.is_none_or(|t| now < t))
            .map(|(uid, _)| uid.clone())
            .collect();
        let plan = plan(&views, &running, &blocked, self.idle, self.max_pods);
        for uid in plan.stop {
            if let Some(w) = self.workers.get(&uid) {
                let why = if self.pods.contains_key(&uid) {
                    "its sidecar now logs exchanges"
                } else {
                    "the pod is gone"
                };
                tracing::info!(pod = %format!("{}/{}", w.namespace, w.pod), "Stopping the {}: {why}.", self.kind.name());
                w.stop.store(true, Ordering::SeqCst);
            }
        }
        for uid in plan.start {
            let pod = &self.pods[&uid];
            let worker = self.spawn(uid.clone(), pod.namespace.clone(), pod.name.clone());
            self.workers.insert(uid, worker);
        }
        self.report_active();
    }

    /// Captured records waiting for the reader.
    pub fn drain(&self) -> impl Iterator<Item = Exchange> + '_ {
        self.rx.try_iter()
    }

    /// Stops every capture and waits (until `deadline`) for each to hand over what it decoded;
    /// the caller drains the records after this.
    pub fn stop_all(&mut self, deadline: Instant) {
        for w in self.workers.values() {
            w.stop.store(true, Ordering::SeqCst);
        }
        while self.workers.values().any(|w| !w.thread.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.reap();
        if !self.workers.is_empty() {
            tracing::warn!(
                captures = self.workers.len(),
                "Pod sources did not stop within the grace period; what they still hold is lost."
            );
        }
    }

    /// Joins captures that ended; a failure blocks the pod for a while, host network for good.
    fn reap(&mut self) {
        let ended: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.thread.is_finished())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in ended {
            let w = self.workers.remove(&uid).expect("present");
            let pod = format!("{}/{}", w.namespace, w.pod);
            let stopped = w.stop.load(Ordering::SeqCst);
            let result = w
                .thread
                .join()
                .unwrap_or_else(|_| Err(Ended::Failed("the capture thread panicked".into())));
            match result {
                Ok(()) if stopped => {}
                Ok(()) => {
                    tracing::warn!(%pod, "The {} ended by itself; retrying later.", self.kind.name());
                    self.kind.failure(&self.metrics);
                    self.blocked.insert(uid, Some(Instant::now() + RETRY_AFTER));
                }
                Err(Ended::HostNetwork) => {
                    tracing::warn!(%pod, "Skipping this pod: it uses the host's network namespace (hostNetwork), so its capture would be the node's traffic.");
                    self.kind.failure(&self.metrics);
                    self.blocked.insert(uid, None);
                }
                Err(Ended::Failed(error)) => {
                    tracing::warn!(%pod, %error, "Could not {} this pod; retrying in {} s.", self.kind.name(), RETRY_AFTER.as_secs());
                    self.kind.failure(&self.metrics);
                    self.blocked.insert(uid, Some(Instant::now() + RETRY_AFTER));
                }
            }
        }
        self.report_active();
    }

    fn report_active(&self) {
        let listening = self
            .workers
            .values()
            .filter(|w| w.listening.load(Ordering::SeqCst) && !w.stop.load(Ordering::SeqCst))
            .count();
        self.kind.set_active(&self.metrics, listening);
    }

    /// Refreshes `meshtap_capture_active` (a capture that started listening since the last tick).
    pub fn report(&self) {
        if self.active {
            self.report_active();
        }
    }

    fn spawn(&self, uid: String, namespace: String, pod: String) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let listening = Arc::new(AtomicBool::new(false));
        let what = match &self.kind {
            Kind::Capture(config) => {
                let mut limits = capture::flows::Limits::default();
                limits.http.max_body_bytes = config.max_body_bytes;
                What::Capture(capture::Options {
                    interfaces: config.interfaces.clone(),
                    ports: config.ports.clone(),
                    limits,
                    ..capture::Options::default()
                })
            }
            Kind::Tap(config) => What::Tap {
                request: config.request(),
                admin_port: config.admin_port,
            },
        };
        let origin = Origin {
            file: format!("capture:{namespace}/{pod}"),
            k8s: Some(K8sMeta {
                namespace: namespace.clone(),
                pod: pod.clone(),
                pod_uid: uid.clone(),
                // Packets carry no container: the pod's containers share the namespace.
                container: String::new(),
                ..K8sMeta::default()
            }),
        };
        let job = Job {
            uid,
            label: format!("{namespace}/{pod}"),
            roots: self.roots.clone(),
            not_pods: self.not_pods.clone(),
            what,
            origin,
            until: Until {
                stop: Arc::clone(&stop),
                ..Until::default()
            },
            listening: Arc::clone(&listening),
            tx: self.tx.clone(),
            metrics: Arc::clone(&self.metrics),
        };
        let thread = std::thread::Builder::new()
            .name("meshtap-capture-pod".into())
            .spawn(move || job.run());
        let thread = match thread {
            Ok(t) => t,
            // A thread that runs only to report the failure through the usual path.
            Err(e) => std::thread::spawn(move || {
                Err(Ended::Failed(format!("cannot start a thread: {e}")))
            }),
        };
        Worker {
            namespace,
            pod,
            stop,
            listening,
            thread,
        }
    }
}

/// The supervisor's settings that do not depend on the kind.
struct Common {
    enabled: bool,
    idle: Duration,
    max_pods: usize,
    explicit: Vec<(String, String)>,
    queue_records: usize,
    proc_root: PathBuf,
}

/// What one pod's job does.
enum What {
    Capture(capture::Options),
    Tap {
        request: crate::tap::config::TapRequest,
        admin_port: u16,
    },
}

/// One pod's capture or tap, run on its own thread.
struct Job {
    uid: String,
    label: String,
    roots: Roots,
    not_pods: Vec<u64>,
    what: What,
    origin: Origin,
    until: Until,
    listening: Arc<AtomicBool>,
    tx: SyncSender<Exchange>,
    metrics: Arc<Metrics>,
}

impl Job {
    fn run(self) -> Result<(), Ended> {
        let failed = |e: &dyn std::fmt::Display| Ended::Failed(e.to_string());
        let path = netns::resolve(&Target::PodUid(self.uid.clone()), &self.roots)
            .map_err(|e| failed(&e))?;
        if netns_inode(&path).is_some_and(|inode| self.not_pods.contains(&inode)) {
            return Err(Ended::HostNetwork);
        }
        let options = match &self.what {
            What::Capture(options) => options.clone(),
            What::Tap {
                request,
                admin_port,
            } => {
                return super::tap::run(
                    path,
                    *admin_port,
                    request,
                    &self.label,
                    self.origin.k8s.clone(),
                    &self.until.stop,
                    &self.listening,
                    &self.tx,
                    &self.metrics,
                )
                .map_err(Ended::Failed);
            }
        };
        let ns = Netns::open(&path).map_err(|e| failed(&e))?;
        let running = capture::start(ns, options.clone()).map_err(|e| failed(&e))?;
        self.listening.store(true, Ordering::SeqCst);
        tracing::info!(
            pod = %self.label,
            netns = %path.display(),
            interfaces = %running.interfaces.join(","),
            ports = ?options.ports,
            "Capturing the pod's traffic: its sidecar logs no exchanges."
        );
        let (tx, metrics) = (&self.tx, &self.metrics);
        let summary = running
            .run(&self.origin, &self.until, &mut |ex| match tx.try_send(ex) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    metrics.skipped(crate::ops::metrics::skip::CAPTURE_QUEUE_FULL, 1);
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            })
            .map_err(|e| failed(&e))?;
        metrics.capture_frames_dropped(summary.kernel_drops, summary.queue_drops);
        tracing::info!(
            pod = %self.label,
            frames = summary.frames,
            exchanges = summary.exchanges,
            delivered = summary.delivered,
            kernel_drops = summary.kernel_drops,
            queue_drops = summary.queue_drops,
            "Capture stopped."
        );
        Ok(())
    }
}

/// The inode of a namespace file (`/proc/PID/ns/net` followed to the namespace).
fn netns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, explicit: bool, lua: bool, secs: u64) -> PodView {
        PodView {
            uid: uid.into(),
            explicit,
            lua,
            tailed_for: Duration::from_secs(secs),
        }
    }

    fn set(uids: &[&str]) -> BTreeSet<String> {
        uids.iter().map(|s| s.to_string()).collect()
    }

    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn quiet_pods_become_candidates_after_the_idle_time() {
        let pods = [
            pod("young", false, false, 59),
            pod("quiet", false, false, 60),
            pod("logging", false, true, 600),
        ];
        let p = plan(&pods, &set(&[]), &set(&[]), IDLE, 10);
        assert_eq!(p.start, vec!["quiet".to_string()]);
        assert!(p.stop.is_empty());
    }

    #[test]
    fn captures_stop_when_the_pod_goes_or_its_filter_logs() {
        let pods = [
            pod("now-logs", false, true, 600),
            pod("still", false, false, 600),
        ];
        let p = plan(
            &pods,
            &set(&["now-logs", "gone", "still"]),
            &set(&[]),
            IDLE,
            10,
        );
        assert_eq!(p.stop, vec!["gone".to_string(), "now-logs".to_string()]);
        assert!(p.start.is_empty());
    }

    #[test]
    fn explicit_pods_are_captured_at_once_and_first_even_with_lua_logs() {
        let pods = [
            pod("old-quiet", false, false, 900),
            pod("listed", true, true, 0),
        ];
        let p = plan(&pods, &set(&[]), &set(&[]), IDLE, 1);
        assert_eq!(p.start, vec!["listed".to_string()]);
        // A listed pod keeps its capture when its filter logs.
        let p = plan(&pods, &set(&["listed"]), &set(&[]), IDLE, 1);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn max_pods_caps_running_captures_counting_those_being_stopped_out() {
        let pods = [
            pod("a", false, false, 100),
            pod("b", false, false, 300),
            pod("c", false, false, 200),
            pod("d", false, true, 400),
        ];
        // d is stopped (its filter logs), so one slot frees up for the longest-tailed of b, c.
        let p = plan(&pods, &set(&["a", "d"]), &set(&[]), IDLE, 2);
        assert_eq!(p.stop, vec!["d".to_string()]);
        assert_eq!(p.start, vec!["b".to_string()]);
    }

    #[test]
    fn blocked_pods_are_not_tried() {
        let pods = [
            pod("failed", false, false, 100),
            pod("ok", false, false, 100),
        ];
        let p = plan(&pods, &set(&[]), &set(&["failed"]), IDLE, 10);
        assert_eq!(p.start, vec!["ok".to_string()]);
    }
}
