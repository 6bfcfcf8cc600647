//! Fallback raw capture: HTTP/1.x exchanges read from packets in a pod's network namespace, for
//! pods whose sidecar logs nothing useful. Inside a pod, the hop between the application and its
//! sidecar crosses the loopback interface in plaintext even when the mesh uses mTLS.
//!
//! The path of a frame, one file per step:
//!
//! 1. [`socket`]: an `AF_PACKET` socket opened on a thread that entered the namespace
//!    ([`crate::netns::spawn_in`]), filtered in the kernel by [`bpf`] to TCP on the chosen ports.
//!    Frames go through a bounded queue; what does not fit is counted, as are the kernel's drops.
//! 2. [`pcap`] (optional): every frame written to rotating pcap files.
//! 3. [`packet`]: the frame's TCP segment (etherparse).
//! 4. [`flows`] and [`reassembly`]: per connection and direction, bytes in order exactly once.
//! 5. [`http`]: requests and responses parsed (httparse) and paired.
//! 6. [`exchange`]: one [`crate::record::Exchange`] per exchange, `source: "capture"`; the caller
//!    runs them through [`crate::stage::Stages`] and a sink like every other source.

pub mod bpf;
pub mod exchange;
pub mod flows;
pub mod http;
pub mod packet;
pub mod pcap;
pub mod reassembly;
pub mod socket;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::netns::{Netns, NetnsError};
use crate::record::Exchange;

pub use exchange::Origin;

/// The capabilities capture needs, and why (for the message when one is missing).
pub const CAPABILITIES: [(caps::Capability, &str); 3] = [
    (caps::Capability::CAP_NET_RAW, "to open a packet socket"),
    (
        caps::Capability::CAP_SYS_ADMIN,
        "to enter the pod's network namespace (setns)",
    ),
    (
        caps::Capability::CAP_SYS_PTRACE,
        "to open another process's /proc/PID/ns/net",
    ),
];

/// The message for missing capabilities, or `None` when all are there. `other_process`: the
/// namespace is found through another process's `/proc/PID/ns/net` (CAP_SYS_PTRACE).
pub fn missing_capabilities_message(other_process: bool) -> Option<String> {
    let needed: Vec<(caps::Capability, &str)> = CAPABILITIES
        .iter()
        .filter(|(c, _)| other_process || *c != caps::Capability::CAP_SYS_PTRACE)
        .copied()
        .collect();
    crate::netns::missing_capabilities_message("capture", &needed)
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    #[error(transparent)]
    Pcap(#[from] pcap::PcapError),
    #[error("the capture thread stopped unexpectedly")]
    ThreadDied,
    #[error("reading packets failed: {0}")]
    Recv(std::io::Error),
}

/// What to capture and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Interface names in the namespace; empty: `lo` and `eth0`.
    pub interfaces: Vec<String>,
    /// TCP ports (either end); empty: all TCP.
    pub ports: Vec<u16>,
    /// Only exchanges whose request path starts with this.
    pub path_prefix: Option<String>,
    pub limits: flows::Limits,
    pub pcap: Option<pcap::Options>,
    /// Frames queued between the capture thread and the parser; more are dropped and counted.
    pub queue_frames: usize,
    /// Socket receive buffer (the kernel's queue; its overflows are the kernel drops).
    pub socket_buffer_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            interfaces: Vec::new(),
            ports: Vec::new(),
            path_prefix: None,
            limits: flows::Limits::default(),
            pcap: None,
            queue_frames: 4096,
            socket_buffer_bytes: 32 << 20,
        }
    }
}

/// When to stop.
#[derive(Debug, Clone, Default)]
pub struct Until {
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many exchanges were delivered.
    pub count: Option<u64>,
    /// Stop when this is set (SIGINT/SIGTERM).
    pub stop: Arc<AtomicBool>,
}

/// What a capture saw, for the summary line.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub interfaces: Vec<String>,
    pub frames: u64,
    pub frame_bytes: u64,
    /// Frames the kernel dropped (the socket queue was full): exchanges may have gaps.
    pub kernel_drops: u64,
    /// Frames dropped because the parser fell behind (the bounded queue was full).
    pub queue_drops: u64,
    /// Frames not used, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    pub flows: flows::Stats,
    /// Exchanges found.
    pub exchanges: u64,
    /// Exchanges left out by `--path`.
    pub filtered_out: u64,
    /// Exchanges the caller delivered.
    pub delivered: u64,
    /// Connections still open when the count was reached (not flushed).
    pub open_at_stop: u64,
}

struct Shared {
    stop: AtomicBool,
    queue_drops: AtomicU64,
    skipped: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    kernel: std::sync::Mutex<socket::KernelStats>,
}

/// A running capture: the socket thread is listening.
pub struct Capture {
    frames: mpsc::Receiver<socket::Frame>,
    shared: Arc<Shared>,
    thread: std::thread::JoinHandle<Result<Result<(), CaptureError>, NetnsError>>,
    /// The interfaces listened on, by name.
    pub interfaces: Vec<String>,
    options: Options,
    pcap: Option<pcap::Rotating>,
}

/// Enters `netns` on a dedicated thread, opens the packet socket there and returns once it is
/// listening.
pub fn start(netns: Netns, options: Options) -> Result<Capture, CaptureError> {
    // Bad pcap options fail before anything is captured.
    let pcap = options
        .pcap
        .clone()
        .map(pcap::Rotating::create)
        .transpose()?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        queue_drops: AtomicU64::new(0),
        skipped: Default::default(),
        kernel: Default::default(),
    });
    let (frames_tx, frames) = mpsc::sync_channel(options.queue_frames.max(1));
    let (ready_tx, ready) = mpsc::channel::<Result<Vec<String>, CaptureError>>();
    let thread_shared = Arc::clone(&shared);
    let thread_options = options.clone();
    let thread = crate::netns::spawn_in(netns, "meshtap-capture", move || {
        let opened = socket::select_interfaces(&thread_options.interfaces).and_then(|chosen| {
            let names = chosen.values().cloned().collect();
            socket::PacketSocket::open(
                chosen,
                &thread_options.ports,
                thread_options.socket_buffer_bytes,
            )
            .map(|s| (s, names))
        });
        let mut sock = match opened {
            Ok((sock, names)) => {
                let _ = ready_tx.send(Ok(names));
                sock
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return Ok(());
            }
        };
        let mut skipped: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut last_stats = Instant::now();
        let result = loop {
            if thread_shared.stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            match sock.recv() {
                Ok(socket::Received::Frame(frame)) => {
                    if let Err(mpsc::TrySendError::Full(_)) = frames_tx.try_send(frame) {
                        thread_shared.queue_drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(socket::Received::Skipped(reason)) => *skipped.entry(reason).or_default() += 1,
                Ok(socket::Received::Timeout) => {}
                Err(e) => break Err(CaptureError::Recv(e)),
            }
            if last_stats.elapsed() >= Duration::from_millis(500) {
                last_stats = Instant::now();
                *thread_shared.kernel.lock().expect("not poisoned") = sock.kernel_stats();
                thread_shared
                    .skipped
                    .lock()
                    .expect("not poisoned")
                    .clone_from(&skipped);
            }
        };
        *thread_shared.kernel.lock().expect("not poisoned") = sock.kernel_stats();
        thread_shared
            .skipped
            .lock()
            .expect("not poisoned")
            .clone_from(&skipped);
        result
    })?;
    match ready.recv() {
        Ok(Ok(interfaces)) => Ok(Capture {
            frames,
            shared,
            thread,
            interfaces,
            options,
            pcap,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(match thread.join() {
            Ok(Err(e)) => CaptureError::Netns(e),
            _ => CaptureError::ThreadDied,
        }),
    }
}

/// Frames to exchanges: the part of a capture after the socket, shared by the live capture and
/// [`replay`].
struct Decoder<'a> {
    flows: flows::Flows,
    finished: Vec<flows::Finished>,
    detected: Vec<flows::Detected>,
    options: &'a Options,
    origin: &'a Origin,
}

impl<'a> Decoder<'a> {
    fn new(options: &'a Options, origin: &'a Origin) -> Decoder<'a> {
        Decoder {
            flows: flows::Flows::new(options.limits, options.ports.clone()),
            finished: Vec::new(),
            detected: Vec::new(),
            options,
            origin,
        }
    }

    fn frame(&mut self, ts_ns: i64, data: &[u8], orig_len: usize, summary: &mut Summary) {
        summary.frames += 1;
        summary.frame_bytes += orig_len as u64;
        if orig_len > data.len() {
            *summary
                .skipped
                .entry("frame_larger_than_snaplen")
                .or_default() += 1;
            return;
        }
        match packet::parse(data, ts_ns) {
            Ok(seg) => self.flows.push(seg, &mut self.finished, &mut self.detected),
            Err(skip) => *summary.skipped.entry(skip.as_str()).or_default() += 1,
        }
    }

    fn tick(&mut self, now_ns: i64) {
        self.flows
            .tick(now_ns, &mut self.finished, &mut self.detected);
    }

    fn shutdown(&mut self, now_ns: i64) {
        self.flows
            .shutdown(now_ns, &mut self.finished, &mut self.detected);
    }

    /// Hands finished exchanges that pass the path filter to `deliver`; true once `count`
    /// exchanges were delivered.
    fn emit(
        &mut self,
        summary: &mut Summary,
        count: Option<u64>,
        deliver: &mut dyn FnMut(Exchange) -> bool,
    ) -> bool {
        for d in self.detected.drain(..) {
            tracing::warn!(
                client = %d.client,
                server = %d.server,
                protocol = d.protocol.as_str(),
                "Connection is not HTTP/1.x; it is reported, not parsed."
            );
        }
        for f in self.finished.drain(..) {
            summary.exchanges += 1;
            if let Some(prefix) = &self.options.path_prefix {
                let path = f.done.request.as_ref().and_then(|r| r.path.as_deref());
                if !path.is_some_and(|p| p.starts_with(prefix.as_str())) {
                    summary.filtered_out += 1;
                    continue;
                }
            }
            if count.is_some_and(|c| summary.delivered >= c) {
                continue;
            }
            if deliver(exchange::build(f.done, &f.conn, self.origin)) {
                summary.delivered += 1;
            }
        }
        count.is_some_and(|c| summary.delivered >= c)
    }
}

/// Decodes frames captured earlier (a pcap file, a test's altered packet order) exactly as a live
/// capture would, ending every connection after the last frame.
pub fn replay(
    frames: impl IntoIterator<Item = (i64, Vec<u8>)>,
    options: &Options,
    origin: &Origin,
) -> (Vec<Exchange>, Summary) {
    let mut decoder = Decoder::new(options, origin);
    let mut summary = Summary::default();
    let mut out = Vec::new();
    let mut last = 0;
    for (ts, data) in frames {
        last = last.max(ts);
        decoder.frame(ts, &data, data.len(), &mut summary);
        decoder.emit(&mut summary, None, &mut |e| {
            out.push(e);
            true
        });
    }
    // Holes that were never filled are skipped as gaps, as the live capture does after a while.
    decoder.tick(last + options.limits.tcp.gap_timeout_ns);
    decoder.shutdown(last + options.limits.tcp.gap_timeout_ns);
    decoder.emit(&mut summary, None, &mut |e| {
        out.push(e);
        true
    });
    summary.flows = decoder.flows.stats().clone();
    (out, summary)
}

impl Capture {
    /// Captures until `until` says stop; each exchange that passes the path filter goes to
    /// `deliver`, which says whether it was delivered (counted against `until.count`).
    pub fn run(
        self,
        origin: &Origin,
        until: &Until,
        deliver: &mut dyn FnMut(Exchange) -> bool,
    ) -> Result<Summary, CaptureError> {
        let Capture {
            frames,
            shared,
            thread,
            interfaces,
            options,
            mut pcap,
        } = self;
        let mut summary = Summary {
            interfaces,
            ..Summary::default()
        };
        let mut decoder = Decoder::new(&options, origin);
        let deadline = until.duration.map(|d| Instant::now() + d);
        let mut last_tick = Instant::now();
        let mut count_reached = false;
        let mut error = None;

        loop {
            if until.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            match frames.recv_timeout(Duration::from_millis(100)) {
                Ok(frame) => {
                    if let Some(p) = pcap.as_mut() {
                        if let Err(e) = p.write(frame.ts_ns, &frame.data, frame.orig_len) {
                            tracing::error!(error = %e, "Stopping the pcap output.");
                            pcap = None;
                        }
                    }
                    decoder.frame(frame.ts_ns, &frame.data, frame.orig_len, &mut summary);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    error = Some(CaptureError::ThreadDied);
                    break;
                }
            }
            if last_tick.elapsed() >= Duration::from_millis(100) {
                last_tick = Instant::now();
                decoder.tick(socket::now_ns());
            }
            if decoder.emit(&mut summary, until.count, deliver) {
                count_reached = true;
                break;
            }
        }
        shared.stop.store(true, Ordering::Relaxed);
        drop(frames);
        let thread_result = thread.join();
        if count_reached {
            summary.open_at_stop = decoder.flows.len() as u64;
        } else {
            decoder.shutdown(socket::now_ns());
            decoder.emit(&mut summary, until.count, deliver);
        }
        if let Some(p) = pcap {
            p.finish()?;
        }
        summary.flows = decoder.flows.stats().clone();
        summary.queue_drops = shared.queue_drops.load(Ordering::Relaxed);
        summary.kernel_drops = shared.kernel.lock().expect("not poisoned").drops;
        for (reason, n) in shared.skipped.lock().expect("not poisoned").iter() {
            *summary.skipped.entry(reason).or_default() += n;
        }
        match thread_result {
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(CaptureError::ThreadDied),
            Ok(Ok(Ok(()))) => {}
        }
        match error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}
