//! Sink configs the agent must refuse before reading anything (exit 64, the field named), and
//! backends unreachable at startup (exit 1, the brokers or endpoint named, never ready).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::{agent_yaml, spawn_agent, tail, GRACE_SECONDS};
use crate::agent::{http_get, wait_for};
use crate::support::envoy::free_port;

/// What a run that should not get going did.
struct Outcome {
    status: Option<ExitStatus>,
    stderr: String,
    took: Duration,
    /// `/readyz` answered 200 at some point.
    was_ready: bool,
}

impl Outcome {
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs `meshtap run` with the agent config around `sink` until it exits (at most 30 s), polling
/// `/readyz` meanwhile.
fn run(dir: &Path, sink: &str) -> Outcome {
    let root = dir.join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let port = free_port();
    let config = dir.join("meshtap.yaml");
    std::fs::write(
        &config,
        agent_yaml(&root, &dir.join("state"), port, GRACE_SECONDS, sink),
    )
    .unwrap();
    let stderr = dir.join("agent.stderr");
    let started = Instant::now();
    let mut child = spawn_agent(&config, &stderr);
    let ops = SocketAddr::from(([127, 0, 0, 1], port));
    let mut was_ready = false;
    let status = wait_for(Duration::from_secs(30), || {
        was_ready |= matches!(http_get(ops, "/readyz"), Ok((200, _)));
        child.try_wait().ok().flatten()
    });
    let took = started.elapsed();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Outcome {
        status,
        stderr: tail(&stderr, 4000),
        took,
        was_ready,
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("meshtap-e2e-badcfg-{name}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn an_unknown_kafka_sink_option_is_a_config_error() {
    let dir = dir("unknown");
    let out = run(
        dir.path(),
        "sink:\n  type: kafka\n  brokers: 127.0.0.1:9092\n  ack_timeout_ms: 5000\n",
    );
    eprintln!(
        "unknown option: {:?} in {:?}: {}",
        out.status,
        out.took,
        out.stderr.trim()
    );
    assert_eq!(out.code(), Some(64), "exit code\n{}", out.stderr);
    assert!(out.stderr.contains("ack_timeout_ms"), "{}", out.stderr);
    assert!(
        out.stderr.contains("meshtap.yaml"),
        "names the file: {}",
        out.stderr
    );
    assert!(!out.was_ready);
    assert!(
        !dir.path().join("state").exists(),
        "a refused config must not touch the state dir"
    );
}

#[test]
fn a_librdkafka_option_that_a_field_sets_is_a_config_error() {
    let dir = dir("conflict");
    let out = run(
        dir.path(),
        "sink:\n  type: kafka\n  brokers: 127.0.0.1:9092\n  acks: all\n  librdkafka_options:\n    acks: \"1\"\n",
    );
    eprintln!(
        "conflicting option: {:?} in {:?}: {}",
        out.status,
        out.took,
        out.stderr.trim()
    );
    assert_eq!(out.code(), Some(64), "exit code\n{}", out.stderr);
    assert!(
        out.stderr
            .contains("sink.librdkafka_options.acks is set by meshtap; use sink.acks instead"),
        "{}",
        out.stderr
    );
    assert!(!out.was_ready);
}

#[test]
fn an_unreachable_kafka_broker_at_startup_exits_1_naming_it() {
    let dir = dir("kafka-down");
    let brokers = format!("127.0.0.1:{}", closed_port());
    let out = run(
        dir.path(),
        &format!("sink:\n  type: kafka\n  brokers: {brokers}\n  connect_timeout_ms: 1500\n"),
    );
    eprintln!(
        "unreachable broker: {:?} in {:?}: {}",
        out.status,
        out.took,
        out.stderr.trim()
    );
    assert_eq!(out.code(), Some(1), "exit code\n{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "cannot reach the Kafka brokers {brokers} within 1500 ms (sink.connect_timeout_ms)"
        )),
        "{}",
        out.stderr
    );
    assert!(!out.was_ready, "/readyz said ready with no broker");
    assert!(
        out.took < Duration::from_secs(10),
        "gave up after {:?}",
        out.took
    );
}

#[test]
fn an_unreachable_otlp_endpoint_at_startup_exits_1_naming_it() {
    let dir = dir("otlp-down");
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let out = run(
        dir.path(),
        &format!("sink:\n  type: otlp\n  endpoint: {endpoint}\n  timeout_ms: 1000\n"),
    );
    eprintln!(
        "unreachable endpoint: {:?} in {:?}: {}",
        out.status,
        out.took,
        out.stderr.trim()
    );
    assert_eq!(out.code(), Some(1), "exit code\n{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "startup check of the OTLP collector at {endpoint} (grpc) failed"
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Connection refused"), "{}", out.stderr);
    assert!(!out.was_ready, "/readyz said ready with no collector");
    assert!(
        out.took < Duration::from_secs(10),
        "gave up after {:?}",
        out.took
    );
}
