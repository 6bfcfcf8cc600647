//! The reader thread: discover -> tail -> pipeline -> batches, and checkpoints.
//!
//! File I/O is blocking and cheap when the page cache is warm, so one thread serves every stream
//! in turn (each gets `read_budget_bytes` per round), like Vector's file server. A checkpoint is a
//! snapshot of every stream's position and pipeline state taken right after a batch boundary; it
//! is written only once the sink acknowledged that batch, so it never covers an exchange that was
//! not delivered.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Ack, Batch};
use crate::checkpoint::{stream_key, Checkpoint, Store, StreamCheckpoint};
use crate::config::{Config, StartAt};
use crate::discover::{self, StreamKey, Watcher};
use crate::ops::Metrics;
use crate::pipeline::{LogStream, Settings};
use crate::record::Exchange;
use crate::stage::Stages;
use crate::tail::{Follower, Position, TailEvent};

/// Shortest time from the start of one round over the streams to the start of the next, when
/// every stream was caught up: at most 40 rounds a second while logs are being written. The
/// latency it adds (up to 25 ms) is small next to `idle_flush_ms`; a stream with a backlog is
/// read again at once. Measured with 200 logs at 10,000 exchanges/s (benches/agent.rs,
/// `agent_200_files`): 76% of a core without the pause, 46% with 10 ms, 38% with 25 ms.
const ROUND_PAUSE: Duration = Duration::from_millis(25);

/// Counters taken from a stream's stats and reported to metrics as deltas.
#[derive(Default, Clone, Copy)]
struct Totals {
    lines: u64,
    malformed_line: u64,
    stray_line: u64,
    unattributed_v1: u64,
    malformed_v2: u64,
    truncated_message: u64,
    evicted: u64,
    expired: u64,
    script_errors: u64,
}

/// Each stream's bytes read when a snapshot was taken.
type ReadAt = Vec<(StreamKey, u64)>;

struct Entry {
    key: StreamKey,
    follower: Follower,
    stream: LogStream,
    last_data: Instant,
    /// The Envoy message being joined was flushed after the stream went quiet.
    flushed: bool,
    finished: bool,
    reported: Totals,
    /// Bytes read so far, and at the snapshot the last written checkpoint holds (for lag).
    read_total: u64,
    read_checkpointed: u64,
}

pub struct Reader {
    settings: Settings,
    log_root: PathBuf,
    container: String,
    start_at: StartAt,
    poll_interval: Duration,
    idle_flush: Duration,
    checkpoint_interval: Duration,
    expire_after_ms: i64,
    max_pending_total: usize,
    read_budget: usize,
    batch_max: usize,
    batch_max_bytes: usize,
    grace: Duration,
    streams: BTreeMap<StreamKey, Entry>,
    /// Streams of the loaded checkpoint not yet matched to a discovered stream.
    saved: BTreeMap<String, StreamCheckpoint>,
    first_scan_done: bool,
    store: Store,
    watcher: Watcher,
    batches: mpsc::Sender<Batch>,
    acks: std::sync::mpsc::Receiver<Ack>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    /// What every exchange passes through before it is batched.
    stages: Stages,
    batch: Outbox,
    sent_seq: u64,
    acked_seq: u64,
    sink_position: Option<crate::sink::FilePosition>,
    /// A snapshot waiting for the acknowledgement of batch `.0`, with each stream's bytes read
    /// at the snapshot.
    waiting: Option<(u64, Checkpoint, ReadAt)>,
    /// The stream the next round starts with, when the last one stopped at a full batch.
    resume_at: Option<StreamKey>,
    /// When the shutdown's grace period ends (set when the stop is first seen).
    shutdown_deadline: Option<Instant>,
    /// Something changed since the last snapshot (data read, exchanges emitted, streams added or
    /// ended): the checkpoint is written only then.
    dirty: bool,
    /// Sources for pods whose sidecar logs no exchanges: raw capture (`capture:`) and the admin
    /// tap (`tap:`); their records are drained into `emit` every round.
    sources: Vec<crate::sources::supervisor::Supervisor>,
}

impl Reader {
    pub fn new(
        config: &Config,
        store: Store,
        checkpoint: Checkpoint,
        (batches, acks): (mpsc::Sender<Batch>, std::sync::mpsc::Receiver<Ack>),
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
        stages: Stages,
    ) -> Self {
        let a = &config.agent;
        let sources = vec![
            crate::sources::supervisor::Supervisor::new(
                &config.capture,
                &a.log_root,
                &a.container,
                metrics.clone(),
            ),
            crate::sources::supervisor::Supervisor::tap(
                &config.tap,
                &a.log_root,
                &a.container,
                metrics.clone(),
            ),
        ];
        Reader {
            settings: config.settings(),
            log_root: a.log_root.clone(),
            container: a.container.clone(),
            start_at: a.start_at,
            poll_interval: Duration::from_millis(a.poll_interval_ms),
            idle_flush: Duration::from_millis(a.idle_flush_ms),
            checkpoint_interval: Duration::from_millis(a.checkpoint_interval_ms),
            expire_after_ms: (config.assembly.expire_after_seconds * 1000) as i64,
            max_pending_total: config.assembly.max_pending_total,
            read_budget: a.read_budget_bytes,
            batch_max: a.batch_max_records,
            batch_max_bytes: a.batch_max_bytes,
            grace: Duration::from_secs(a.shutdown_grace_seconds),
            streams: BTreeMap::new(),
            saved: checkpoint.streams,
            first_scan_done: false,
            store,
            watcher: Watcher::new(&a.log_root),
            batches,
            acks,
            metrics,
            stop,
            stages,
            batch: Outbox::default(),
            sent_seq: 0,
            acked_seq: 0,
            sink_position: checkpoint.sink_position,
            waiting: None,
            resume_at: None,
            shutdown_deadline: None,
            dirty: true,
            sources,
        }
    }

    /// Runs until `stop` is set, then hands over what was read and writes the last checkpoint.
    pub fn run(mut self) -> Result<(), String> {
        // Before anything is delivered, the checkpoint must name the sink's position: a crash
        // before the first regular checkpoint then rolls the file sink back to it, and the
        // exchanges read again are not written twice.
        let initial = Checkpoint {
            streams: std::mem::take(&mut self.saved),
            sink_position: self.sink_position.clone(),
        };
        match self.store.save(initial) {
            Ok(saved) => self.saved = saved.streams,
            Err(error) => return Err(error.to_string()),
        }
        let mut last_scan: Option<Instant> = None;
        let mut last_checkpoint = Instant::now();
        let mut last_expire = Instant::now();
        let mut woke = false;
        while !self.stop.load(Ordering::SeqCst) {
            // Before reading: the exchanges acknowledged while this thread paused are freed
            // before the next ones are allocated, so that the two are not held at once.
            self.process_acks();
            if woke || last_scan.is_none_or(|t| t.elapsed() >= self.poll_interval) {
                self.scan();
                last_scan = Some(Instant::now());
            }
            let expire = last_expire.elapsed() >= Duration::from_secs(1);
            if expire {
                last_expire = Instant::now();
            }
            let round_started = Instant::now();
            let (read, backlogged) = self.read_round(expire);
            let progressed = read | self.capture_round();
            self.dirty |= progressed || !self.batch.exchanges.is_empty();
            let full = self.batch.exchanges.len() >= self.batch_max
                || self.batch.bytes >= self.batch_max_bytes;
            if !self.send_batch(full || !progressed) {
                break;
            }
            self.process_acks();
            if last_checkpoint.elapsed() >= self.checkpoint_interval {
                self.take_checkpoint();
                self.report_stats();
                last_checkpoint = Instant::now();
            }
            woke = false;
            if !progressed {
                woke = self.watcher.wait(self.wait_time());
            } else if !backlogged {
                // Every stream is caught up, but some were written to: let the writers go on
                // for a moment before the next round, so that it reads many writes at once.
                // Without this pause, on a node where logs are written all the time each round
                // found a few new lines and the next began at once, polling every file each
                // time: 200 logs at 10,000 exchanges/s took most of a core, mostly in stat(2)
                // and read(2) returning nothing.
                let pause = ROUND_PAUSE.saturating_sub(round_started.elapsed());
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
        }
        self.shutdown()
    }

    /// How long to sleep when nothing was read: until the next poll, or sooner if a quiet stream
    /// is due for its idle flush.
    fn wait_time(&self) -> Duration {
        let mut wait = self.poll_interval.min(self.checkpoint_interval);
        for e in self.streams.values() {
            if !e.flushed {
                wait = wait.min(self.idle_flush.saturating_sub(e.last_data.elapsed()));
            }
        }
        if self.sources.iter().any(|s| s.running() > 0) {
            // Captured exchanges arrive on a channel, not through inotify: look often.
            wait = wait.min(Duration::from_millis(100));
        }
        wait.max(Duration::from_millis(1))
    }

    fn scan(&mut self) {
        let keys = match discover::scan(&self.log_root, &self.container) {
            Ok(keys) => keys,
            Err(error) => {
                tracing::warn!(root = %self.log_root.display(), %error, "Could not scan the log directory.");
                return;
            }
        };
        for key in keys {
            if self.streams.contains_key(&key) {
                continue;
            }
            self.dirty = true;
            let entry = self.open_stream(key.clone());
            self.metrics.files_tailed(self.streams.len() as i64 + 1);
            self.streams.insert(key, entry);
        }
        if !self.first_scan_done {
            self.first_scan_done = true;
            self.finish_vanished_saved_streams();
        }
    }

    fn open_stream(&mut self, key: StreamKey) -> Entry {
        let k8s = crate::k8s::meta_from_log_path(&key.dir.join("0.log"));
        let saved = self.saved.remove(&stream_key(&key.dir, key.restart));
        let (stream, start) = match saved {
            Some(saved) => match LogStream::restore(&self.settings, saved.state) {
                Ok(stream) => (stream, saved.position),
                Err(error) => {
                    tracing::error!(dir = %key.dir.display(), %error,
                        "Checkpointed state of this stream is unreadable; continuing from its position without it.");
                    (LogStream::new(&self.settings, k8s), saved.position)
                }
            },
            None => {
                // `end` applies to what exists when the agent starts; a pod that appears later
                // is read from its first line, or its first exchanges would be missed.
                let start = match self.start_at {
                    StartAt::End if !self.first_scan_done => end_position(&key),
                    _ => None,
                };
                (LogStream::new(&self.settings, k8s), start)
            }
        };
        tracing::info!(dir = %key.dir.display(), restart = key.restart, resume = ?start, "Tailing container log stream.");
        Entry {
            follower: Follower::new(key.clone(), start, self.settings.max_line_bytes),
            key,
            stream,
            last_data: Instant::now(),
            flushed: true,
            finished: false,
            reported: Totals::default(),
            read_total: 0,
            read_checkpointed: 0,
        }
    }

    /// Streams in the checkpoint whose directory is gone (pod deleted while the agent was down):
    /// their pending exchanges are emitted, marked incomplete, rather than forgotten.
    fn finish_vanished_saved_streams(&mut self) {
        for (name, saved) in std::mem::take(&mut self.saved) {
            tracing::warn!(stream = %name, "A checkpointed log stream no longer exists; emitting its pending exchanges.");
            if let Ok(mut stream) = LogStream::restore(&self.settings, saved.state) {
                let (batch, metrics, stages) = (&mut self.batch, &self.metrics, &mut self.stages);
                stream.finish(&mut |ex| emit(metrics, stages, batch, ex));
            }
        }
    }

    /// Starts and stops pod captures, and hands what they captured to `emit`; true if any.
    fn capture_round(&mut self) -> bool {
        for source in self.sources.iter_mut().filter(|s| s.is_active()) {
            let streams = self
                .streams
                .values()
                .map(|e| (e.key.dir.as_path(), e.finished));
            source.tick(streams, &self.batch.lua_pods);
            source.report();
        }
        self.batch.lua_pods.clear();
        self.drain_capture()
    }

    fn drain_capture(&mut self) -> bool {
        let (batch, metrics, stages) = (&mut self.batch, &self.metrics, &mut self.stages);
        let mut any = false;
        for source in &self.sources {
            for ex in source.drain() {
                emit(metrics, stages, batch, ex);
                any = true;
            }
        }
        any
    }

    /// One turn over every stream: whether any data was read, and whether some stream stopped at
    /// its read budget (it has a backlog, so the next round should follow at once).
    fn read_round(&mut self, expire: bool) -> (bool, bool) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut progressed = false;
        let mut backlogged = false;
        let mut progressed_state = false;
        // Where the last round stopped, first: every stream gets its turn.
        let keys: Vec<StreamKey> = match self.resume_at.take() {
            Some(from) => self
                .streams
                .range(from.clone()..)
                .chain(self.streams.range(..from))
                .map(|(k, _)| k.clone())
                .collect(),
            None => self.streams.keys().cloned().collect(),
        };
        for key in keys {
            if self.batch.exchanges.len() >= self.batch_max
                || self.batch.bytes >= self.batch_max_bytes
            {
                // The batch is full: it goes to the sink before more is read, and the next
                // round starts here. Cutting batches only between rounds let one batch take up
                // to `read_budget_bytes` from every stream with a backlog (974 records instead
                // of 512 with 4 Kafka-bench pods), beyond the bound on the queue's memory.
                self.resume_at = Some(key);
                backlogged = true;
                break;
            }
            let Some(e) = self.streams.get_mut(&key) else {
                continue;
            };
            if e.finished {
                continue;
            }
            let batch = &mut self.batch;
            let metrics = &self.metrics;
            let stages = &mut self.stages;
            let mut out = |ex: Exchange| emit(metrics, stages, batch, ex);
            e.stream.set_now(now_ms);
            let stream = &mut e.stream;
            let result = e.follower.poll(self.read_budget, &mut |event| match event {
                TailEvent::File {
                    path, fingerprint, ..
                } => stream.start_file(path, Some(fingerprint), &mut out),
                TailEvent::Line(line) => stream.push_line(&line, &mut out),
                TailEvent::Lost {
                    path,
                    bytes,
                    reason,
                } => {
                    tracing::warn!(path = %path.display(), ?bytes, reason, "Log data was lost before meshtap could read it.");
                    metrics.skipped("lost_log_data", 1);
                    stream.lines_lost(&mut out);
                }
            });
            match result {
                Ok(0) => {
                    if !e.flushed && e.last_data.elapsed() >= self.idle_flush {
                        e.stream.flush_messages(&mut out);
                        e.flushed = true;
                        // The joiner's state changed even if no exchange came out.
                        progressed_state = true;
                    }
                }
                Ok(n) => {
                    progressed = true;
                    backlogged |= n >= self.read_budget;
                    e.last_data = Instant::now();
                    e.flushed = false;
                    e.read_total += n as u64;
                    metrics.log_bytes(n as u64);
                }
                Err(error) => {
                    tracing::warn!(dir = %e.key.dir.display(), %error, "Could not read a container log.");
                }
            }
            if expire {
                e.stream.expire(self.expire_after_ms, &mut out);
            }
            if e.follower.is_finished() {
                progressed_state = true;
                tracing::info!(dir = %e.key.dir.display(), restart = e.key.restart, "Container log stream ended.");
                e.stream.finish(&mut out);
                e.finished = true;
            }
        }
        self.dirty |= progressed_state;
        self.enforce_pending_total();
        (progressed, backlogged)
    }

    /// The node-wide cap on pending exchanges: the busiest stream gives up its oldest.
    fn enforce_pending_total(&mut self) {
        let mut total: usize = self.streams.values().map(|e| e.stream.pending_len()).sum();
        while total > self.max_pending_total {
            let Some(e) = self
                .streams
                .values_mut()
                .max_by_key(|e| e.stream.pending_len())
            else {
                break;
            };
            let warning = format!(
                "emitted before its end: more than {} exchanges were pending on this node",
                self.max_pending_total
            );
            let (batch, metrics, stages) = (&mut self.batch, &self.metrics, &mut self.stages);
            e.stream
                .evict_oldest(warning, &mut |ex| emit(metrics, stages, batch, ex));
            total -= 1;
            self.dirty = true;
        }
    }

    /// Hands the current batch to the sink (if `now` or full). Waits while the queue is full
    /// (backpressure); false if it had to give up (shutdown grace over, or the sink is gone).
    fn send_batch(&mut self, now: bool) -> bool {
        if self.batch.exchanges.is_empty() || !now {
            return true;
        }
        let mut batch = Batch {
            seq: self.sent_seq + 1,
            exchanges: self.batch.take(),
        };
        loop {
            match self.batches.try_send(batch) {
                Ok(()) => {
                    self.sent_seq += 1;
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(b)) => {
                    // Kept: no checkpoint may cover exchanges that were never handed over.
                    self.batch = Outbox::from(b.exchanges);
                    return false;
                }
                Err(mpsc::error::TrySendError::Full(b)) => {
                    batch = b;
                    self.process_acks();
                    if self.stop.load(Ordering::SeqCst) && Instant::now() >= self.grace_deadline() {
                        // Not delivered: the last written checkpoint precedes these exchanges,
                        // and keeping them in the batch keeps any later one from covering them.
                        self.batch = Outbox::from(batch.exchanges);
                        return false;
                    }
                    // The queue drains as the sink acknowledges; poll it at a short interval.
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    fn process_acks(&mut self) {
        while let Ok(ack) = self.acks.try_recv() {
            self.acked_seq = ack.seq;
            if ack.sink_position.is_some() {
                self.sink_position = ack.sink_position;
            }
            if self
                .waiting
                .as_ref()
                .is_some_and(|(seq, ..)| *seq == ack.seq)
            {
                let (_, checkpoint, read) = self.waiting.take().expect("present");
                self.save(checkpoint, read);
            }
            // The delivered exchanges are freed here, on the thread that allocated them.
            drop(ack.exchanges);
        }
    }

    /// Snapshots every stream right after the last batch handed over; saved once it is acknowledged.
    fn take_checkpoint(&mut self) {
        if self.waiting.is_some() || !self.dirty {
            return;
        }
        if !self.send_batch(true) {
            return;
        }
        // Streams of the loaded checkpoint not found again yet (a scan failed, or stop came
        // first) keep their saved position: writing without them would re-read those pods.
        let mut checkpoint = Checkpoint {
            streams: self.saved.clone(),
            sink_position: None,
        };
        for e in self.streams.values() {
            if e.finished {
                continue;
            }
            checkpoint.streams.insert(
                stream_key(&e.key.dir, e.key.restart),
                StreamCheckpoint {
                    dir: e.key.dir.clone(),
                    restart: e.key.restart,
                    position: e.follower.position(),
                    state: e.stream.snapshot(),
                },
            );
        }
        let read: ReadAt = self
            .streams
            .values()
            .map(|e| (e.key.clone(), e.read_total))
            .collect();
        // Finished streams leave the checkpoint once their last exchanges are covered by it.
        self.forget_finished();
        self.dirty = false;
        if self.acked_seq >= self.sent_seq {
            self.save(checkpoint, read);
        } else {
            self.waiting = Some((self.sent_seq, checkpoint, read));
        }
    }

    fn forget_finished(&mut self) {
        let finished: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(_, e)| e.finished)
            .map(|(k, _)| k.clone())
            .collect();
        for key in finished {
            if let Some(e) = self.streams.remove(&key) {
                self.report_entry(&e, e.reported);
                self.metrics.remove_file(&e.key.dir.display().to_string());
            }
        }
        self.metrics.files_tailed(self.streams.len() as i64);
    }

    fn save(&mut self, mut checkpoint: Checkpoint, read: ReadAt) {
        checkpoint.sink_position = self.sink_position.clone();
        match self.store.save(checkpoint) {
            Ok(_) => {
                self.metrics.checkpoint_written(true);
                for (key, bytes) in read {
                    if let Some(e) = self.streams.get_mut(&key) {
                        e.read_checkpointed = bytes;
                    }
                }
                self.report_lag();
            }
            Err(error) => {
                self.metrics.checkpoint_written(false);
                tracing::error!(%error, "Could not write the checkpoint; will retry.");
            }
        }
    }

    /// Per stream: bytes read but not yet covered by a written checkpoint.
    fn report_lag(&self) {
        for e in self.streams.values() {
            let lag = e.read_total - e.read_checkpointed;
            self.metrics
                .set_checkpoint_lag(&e.key.dir.display().to_string(), lag);
        }
    }

    fn report_stats(&mut self) {
        self.report_lag();
        let keys: Vec<StreamKey> = self.streams.keys().cloned().collect();
        for key in keys {
            let e = self.streams.get(&key).expect("present");
            let now = totals(&e.stream);
            self.report_entry(e, e.reported);
            if let Some(e) = self.streams.get_mut(&key) {
                e.reported = now;
            }
        }
    }

    /// Reports to metrics what `e` counted since `before`.
    fn report_entry(&self, e: &Entry, before: Totals) {
        let now = totals(&e.stream);
        let m = &self.metrics;
        m.log_lines(now.lines - before.lines);
        m.skipped("malformed_line", now.malformed_line - before.malformed_line);
        m.skipped("stray_line", now.stray_line - before.stray_line);
        m.skipped(
            "unattributed_v1",
            now.unattributed_v1 - before.unattributed_v1,
        );
        m.skipped("malformed_v2", now.malformed_v2 - before.malformed_v2);
        m.skipped(
            "truncated_message",
            now.truncated_message - before.truncated_message,
        );
        m.skipped("evicted", now.evicted - before.evicted);
        m.skipped("expired", now.expired - before.expired);
        m.script_errors(now.script_errors - before.script_errors);
    }

    /// One grace period from the moment the stop was first seen, shared by every wait of the
    /// shutdown so that together they fit in `shutdown_grace_seconds`.
    fn grace_deadline(&mut self) -> Instant {
        let grace = self.grace;
        *self
            .shutdown_deadline
            .get_or_insert_with(|| Instant::now() + grace)
    }

    fn shutdown(mut self) -> Result<(), String> {
        // Everything read so far goes to the sink; exchanges still pending stay in the state.
        for e in self.streams.values_mut() {
            if !e.flushed {
                // A message being joined is complete only if the log is quiet; keep it pending.
                e.flushed = true;
            }
        }
        let deadline = self.grace_deadline();
        // Captures stop first and hand over what they decoded: it goes out with the last batch.
        for source in &mut self.sources {
            if source.running() > 0 {
                source.stop_all(deadline);
                source.report();
            }
        }
        self.drain_capture();
        if !self.send_batch(true) {
            tracing::warn!(
                "Could not hand the last batch to the sink; it will be read again after a restart."
            );
            return Ok(());
        }
        // The final snapshot covers everything handed over, including any earlier one still
        // waiting for its acknowledgement.
        self.waiting = None;
        self.dirty = true;
        self.take_checkpoint();
        while self.waiting.is_some() && Instant::now() < deadline {
            self.process_acks();
            std::thread::sleep(Duration::from_millis(5));
        }
        self.report_stats();
        if self.waiting.is_some() {
            tracing::warn!("The sink did not acknowledge the last batch in time; it will be read again after a restart.");
        } else {
            tracing::info!("Checkpoint written; exiting.");
        }
        Ok(())
    }
}

/// Exchanges waiting to be handed to the sink, with their approximate size kept as they come.
#[derive(Default)]
struct Outbox {
    exchanges: Vec<Exchange>,
    /// Bodies plus a fixed overhead per record: what the batch costs in memory and on the wire.
    bytes: usize,
    /// UIDs of pods whose log produced an exchange since the capture supervisor last looked
    /// (their sidecar has a working filter: no capture needed).
    lua_pods: std::collections::BTreeSet<String>,
}

impl Outbox {
    fn push(&mut self, ex: Exchange) {
        self.bytes += approx_size(&ex);
        self.exchanges.push(ex);
    }

    fn take(&mut self) -> Vec<Exchange> {
        self.bytes = 0;
        std::mem::take(&mut self.exchanges)
    }
}

impl From<Vec<Exchange>> for Outbox {
    fn from(exchanges: Vec<Exchange>) -> Self {
        let bytes = exchanges.iter().map(approx_size).sum();
        Outbox {
            exchanges,
            bytes,
            lua_pods: Default::default(),
        }
    }
}

/// Roughly what a record costs in memory and on the wire: its bodies plus headers and fields.
fn approx_size(ex: &Exchange) -> usize {
    let body = |d: &Option<crate::record::Direction>| d.as_ref().map_or(0, |d| d.body.len());
    1024 + body(&ex.request) + body(&ex.response)
}

/// Every exchange leaves the pipeline here: counted, passed through the stages, then batched for
/// the sink.
fn emit(metrics: &Metrics, stages: &mut Stages, batch: &mut Outbox, ex: Exchange) {
    metrics.exchange(ex.source.as_str(), ex.complete);
    if matches!(
        ex.source,
        crate::record::Source::LuaV1 | crate::record::Source::LuaV2
    ) {
        if let Some(k8s) = &ex.k8s {
            if !batch.lua_pods.contains(&k8s.pod_uid) {
                batch.lua_pods.insert(k8s.pod_uid.clone());
            }
        }
    }
    if !ex.warnings.is_empty() {
        metrics.exchange_warnings(1);
    }
    match stages.run(ex) {
        Ok(ex) => batch.push(ex),
        Err(reason) => metrics.dropped(reason),
    }
}

fn totals(stream: &LogStream) -> Totals {
    let (decode, envoy, assemble) = stream.stats();
    Totals {
        lines: decode.physical,
        malformed_line: decode.malformed,
        stray_line: envoy.stray_lines,
        unattributed_v1: assemble.unattributed_v1,
        malformed_v2: assemble.malformed_v2,
        truncated_message: envoy.truncated_messages,
        evicted: assemble.evicted,
        expired: assemble.expired,
        script_errors: assemble.script_errors,
    }
}

/// `start_at: end`: the end of the live file's last complete line.
fn end_position(key: &StreamKey) -> Option<Position> {
    let live = discover::stream_files(key).ok()?.into_iter().last()?;
    if live.gz {
        return None;
    }
    let mut file = std::fs::File::open(&live.path).ok()?;
    let mut first = Vec::new();
    let mut reader = std::io::BufReader::new(&mut file);
    std::io::BufRead::read_until(&mut reader, b'\n', &mut first).ok()?;
    if !first.ends_with(b"\n") {
        return None;
    }
    first.pop();
    let fingerprint = crate::read::fingerprint(&first);
    let len = file.metadata().ok()?.len();
    let tail = len.min(1 << 16);
    file.seek(SeekFrom::Start(len - tail)).ok()?;
    let mut buf = Vec::new();
    file.take(tail).read_to_end(&mut buf).ok()?;
    let last_newline = memchr::memrchr(b'\n', &buf)?;
    Some(Position {
        fingerprint,
        offset: len - tail + last_newline as u64 + 1,
    })
}
