//! The agent's ops endpoint (`/healthz`, `/readyz`, `/metrics`) against a log whose content is
//! known, its refusal of a bad config, and its checkpoint file across a graceful restart.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::{http_get, metric, wait_for, Agent, Setup, BIN};

/// `n` complete lua-v2 exchanges in CRI framing (Envoy's default layout), each with its token in
/// the path and in both bodies, with garbage lines between some of them. Returns the bytes and
/// how many garbage lines there are.
pub(super) fn v2_log(n: u32) -> (Vec<u8>, usize) {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut out = Vec::new();
    let mut garbage = 0;
    let mut ms = 0u64;
    let line = |out: &mut Vec<u8>, ms: &mut u64, text: &str| {
        *ms += 1;
        let (s, frac) = (45 + *ms / 1000, *ms % 1000);
        out.extend_from_slice(
            format!(
                "2026-11-25T08:47:{s:02}.{frac:03}123456Z stderr F [2026-11-25 08:47:{s:02}.{frac:03}][23][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: {text}\n"
            )
            .as_bytes(),
        );
    };
    for i in 1..=n {
        let token = crate::support::scenario::token(i);
        let sid = format!("6b06a18c.7f2ddc2776b0.{i}");
        let request = format!("{{\"token\":\"{token}\",\"n\":{i}}}");
        let response = format!("{{\"ok\":true,\"token\":\"{token}\"}}");
        let rq =
            b64(format!(":method\nPOST\n:path\n/api/t/{i}\n:authority\nreviews:9080\n").as_bytes());
        let rs = b64(b":status\n200\ncontent-type\napplication/json\n");
        line(
            &mut out,
            &mut ms,
            &format!("[logPayload] v2 rq {sid} 0 1795596685632 {rq}"),
        );
        line(
            &mut out,
            &mut ms,
            &format!("[logPayload] v2 rqb {sid} 1 {}", b64(request.as_bytes())),
        );
        line(
            &mut out,
            &mut ms,
            &format!(
                "[logPayload] v2 rqe {sid} 2 1795596685633 {} 0",
                request.len()
            ),
        );
        if i % 3 == 0 {
            out.extend_from_slice(b"this line is not from any container runtime\n");
            out.extend_from_slice(b"\xff\xfe\x80 binary junk \x00\n");
            garbage += 2;
        }
        line(
            &mut out,
            &mut ms,
            &format!("[logPayload] v2 rs {sid} 0 1795596685634 {rs}"),
        );
        line(
            &mut out,
            &mut ms,
            &format!("[logPayload] v2 rsb {sid} 1 {}", b64(response.as_bytes())),
        );
        line(
            &mut out,
            &mut ms,
            &format!(
                "[logPayload] v2 rse {sid} 2 1795596685635 {} 0",
                response.len()
            ),
        );
    }
    (out, garbage)
}

pub(super) fn pod_log(root: &Path, pod: &str) -> std::path::PathBuf {
    let dir = root.join(format!(
        "default_{pod}_5d1f3c2e-8b7a-4c6d-9e0f-1a2b3c4d5e03/istio-proxy"
    ));
    fs::create_dir_all(&dir).unwrap();
    dir.join("0.log")
}

/// Waits until `/metrics` satisfies `ok`; the last page seen either way.
fn wait_metrics(agent: &Agent, timeout: Duration, ok: impl Fn(&str) -> bool) -> (bool, String) {
    let mut last = String::new();
    let done = wait_for(timeout, || {
        last = agent.metrics()?;
        ok(&last).then_some(())
    });
    (done.is_some(), last)
}

fn series<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn agent_metrics_health_and_checkpoint() {
    let began = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("meshtap-agent-ops-")
        .tempdir()
        .unwrap();
    let mut setup = Setup::new(dir.path());
    let agent = Agent::start(&mut setup);
    assert_eq!(http_get(agent.ops, "/healthz").unwrap().0, 200, "/healthz");
    assert_eq!(http_get(agent.ops, "/readyz").unwrap().0, 200, "/readyz");
    assert_eq!(http_get(agent.ops, "/nope").unwrap().0, 404, "unknown path");

    const N: u32 = 25;
    let (log, garbage) = v2_log(N);
    let path = pod_log(&setup.root, "reviews-v1-6b746f74dc-9stvs");
    // Written whole under another name and renamed in, so the size read is the size written.
    let tmp = path.with_file_name("staging");
    fs::write(&tmp, &log).unwrap();
    fs::rename(&tmp, &path).unwrap();
    let size = log.len() as f64;

    let delivered = wait_for(Duration::from_secs(30), || {
        let n = setup.sink().records.len();
        (n >= N as usize).then_some(n)
    });
    assert!(
        delivered.is_some(),
        "the sink did not get {N} records within 30 s (has {}); agent stderr:\n{}",
        setup.sink().records.len(),
        setup.stderr_tail(3000)
    );

    let exchanges = r#"meshtap_exchanges_total{source="lua-v2",complete="true"}"#;
    let bytes = "meshtap_log_bytes_read_total";
    let malformed = r#"meshtap_skipped_total{reason="malformed_line"}"#;
    let checkpoints = "meshtap_checkpoint_writes_total";
    // Stats-derived counters (skipped lines) are reported once per checkpoint interval.
    let (ok, text) = wait_metrics(&agent, Duration::from_secs(30), |t| {
        metric(t, exchanges) == Some(f64::from(N))
            && metric(t, bytes) == Some(size)
            && metric(t, malformed).is_some_and(|v| v > 0.0)
            && metric(t, checkpoints).is_some_and(|v| v > 0.0)
    });
    assert!(
        ok,
        "metrics after {N} exchanges, {size} bytes and {garbage} garbage lines:\n  {exchanges} = {:?} (expected {N})\n  \
         {bytes} = {:?} (expected {size})\n  {malformed} = {:?} (expected > 0)\n  {checkpoints} = {:?} (expected > 0)\n{}",
        metric(&text, exchanges),
        metric(&text, bytes),
        metric(&text, malformed),
        metric(&text, checkpoints),
        series(&text, "meshtap_").join("\n")
    );
    // Nothing else was counted as an exchange.
    for other in [
        r#"meshtap_exchanges_total{source="lua-v2",complete="false"}"#,
        r#"meshtap_exchanges_total{source="lua-v1",complete="true"}"#,
        r#"meshtap_exchanges_total{source="lua-v1",complete="false"}"#,
    ] {
        assert_eq!(metric(&text, other).unwrap_or(0.0), 0.0, "{other}");
    }
    let sink = setup.sink();
    assert_eq!(sink.records.len(), N as usize, "records in the sink");
    assert_eq!(sink.raw_duplicates(), 0, "raw duplicates in the sink");

    // A graceful stop writes the checkpoint last.
    let status = agent.terminate().unwrap();
    assert!(status.success(), "SIGTERM: exit status {status}");
    let checkpoint = setup.state.join("checkpoints.json");
    let text = fs::read_to_string(&checkpoint)
        .unwrap_or_else(|e| panic!("{} after SIGTERM: {e}", checkpoint.display()));
    assert!(
        text.starts_with(r#"{"version":"1""#),
        "checkpoint starts with {:?}",
        &text[..text.len().min(80)]
    );

    // A restart without new log lines delivers nothing: once the restarted agent has written a
    // checkpoint, whatever its first reads produced was delivered (a checkpoint is written only
    // after the sink acknowledged what precedes it).
    let agent = Agent::start(&mut setup);
    let (ok, text) = wait_metrics(&agent, Duration::from_secs(30), |t| {
        metric(t, checkpoints).is_some_and(|v| v > 0.0)
    });
    assert!(ok, "the restarted agent wrote no checkpoint:\n{text}");
    let after = setup.sink();
    assert_eq!(
        after.records.len(),
        N as usize,
        "records in the sink after a restart with no new log lines"
    );
    assert_eq!(
        metric(&text, exchanges),
        Some(0.0),
        "exchanges after the restart"
    );
    assert_eq!(
        metric(&text, bytes),
        Some(0.0),
        "log bytes read after the restart"
    );
    let status = agent.terminate().unwrap();
    assert!(status.success(), "second SIGTERM: exit status {status}");
    assert_eq!(
        setup.sink().records.len(),
        N as usize,
        "records after the second stop"
    );
    eprintln!(
        "agent ops: metrics, health and checkpoint checked in {:.2}s",
        began.elapsed().as_secs_f64()
    );
}

#[test]
fn agent_rejects_a_config_with_an_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = dir.path().join("out/exchanges.ndjson");
    let config = dir.path().join("bad.yaml");
    fs::write(
        &config,
        format!(
            "agent:\n  log_root: {:?}\n  state_dir: {:?}\n  checkpoint_intervall_ms: 100\nsink:\n  type: file\n  path: {:?}\n",
            dir.path().join("pods").display().to_string(),
            state.display().to_string(),
            out.display().to_string()
        ),
    )
    .unwrap();
    let run = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        run.status.code(),
        Some(64),
        "exit status {} ({stderr})",
        run.status
    );
    assert!(
        stderr.contains("checkpoint_intervall_ms"),
        "the message does not name the unknown field: {stderr}"
    );
    assert!(
        !state.exists(),
        "the state dir was created for a bad config"
    );
    assert!(
        !out.parent().unwrap().exists(),
        "the sink dir was created for a bad config"
    );
}

/// `log.format: json` makes every line of the agent's own log on stderr a JSON object with a
/// level and a message (what a log collector on the node ingests).
#[test]
fn agent_logs_json_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::envoy::free_port();
    let config = dir.path().join("meshtap.yaml");
    fs::write(
        &config,
        format!(
            "agent:\n  log_root: {root}\n  state_dir: {state}\nops:\n  listen: 127.0.0.1:{port}\nlog:\n  format: json\n  level: info\n",
            root = dir.path().join("pods").display(),
            state = dir.path().join("state").display(),
        ),
    )
    .unwrap();
    let stderr = fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("MESHTAP_LOG")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let ops = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    super::wait_agent_ready(&mut child, ops, Duration::from_secs(30)).unwrap();
    let status = super::terminate_child(child, Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status}");
    let log = fs::read_to_string(dir.path().join("stderr")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "startup and shutdown are logged: {log}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
}
