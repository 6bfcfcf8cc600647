//! The capture policy end to end, on logs written by a REAL Envoy (the shipped v2 Lua filter, the
//! traffic of [`crate::support::scenario::plan`]): `meshtap parse --config` keeps, drops, samples
//! and cuts exactly what the rules say and counts the drops in its summary; `meshtap run` delivers
//! what the policy keeps to the file sink and counts every drop reason in `/metrics`.
//!
//! Expectations are computed from the truth of the run (what the client sent and received) and
//! from the unfiltered records of the same file, never hard-coded: which exchanges a sample rule
//! keeps follows from their ids through `meshtap::policy::sample::position`, the documented hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::agent::{metric, read_sink, terminate_child, wait_agent_ready, wait_for, BIN};
use crate::support::envoy::{free_port, Layout};
use crate::support::manifests::{Filter, V2_MAX_BODY};
use crate::support::meshtap::body;
use crate::support::scenario::{parse_path, Kind};
use crate::support::{run, Run};

/// A real Envoy run with the v2 filter; its containerd-framed log file.
fn envoy_log() -> (Run, PathBuf) {
    let run = run(
        Filter::V2 {
            max_body: V2_MAX_BODY,
        },
        Layout::Envoy,
    );
    let file = run
        .files
        .iter()
        .find(|f| f.label == "containerd")
        .expect("a containerd file")
        .path
        .clone();
    (run, file)
}

/// `meshtap parse [--config CONFIG] --summary-json FILE`: records and the summary.
fn parse(file: &Path, config: Option<&Path>) -> (Vec<Value>, Value) {
    let mut cmd = Command::new(BIN);
    cmd.arg("parse").arg("--summary-json");
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd.arg(file).output().expect("run meshtap parse");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meshtap parse failed: {stderr}");
    let records = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    let summary = stderr
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary in {stderr}"));
    (records, summary)
}

/// The test id of a record (the client's `x-test-id` request header).
fn test_id(record: &Value) -> u32 {
    record["request"]["headers"]["x-test-id"][0]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("record without x-test-id: {record}"))
}

fn kind_of(record: &Value) -> Kind {
    parse_path(record["request"]["path"].as_str().unwrap())
        .unwrap()
        .0
}

fn id(record: &Value) -> &str {
    record["id"].as_str().unwrap()
}

const PARSE_POLICY: &str = r#"
policy:
  rules:
    - name: drop-missing
      match: {status: [404]}
      action: drop
    - name: drop-multi-header
      match:
        request_headers: {x-multi: {present: true}}
      action: drop
    - name: html-cut
      match:
        method: [POST]
        path: {regex: "^/productpage/html/[0-9]+$"}
        response_headers: {content-type: {prefix: text/html}}
      max_body_bytes: 16
    - name: half-of-the-rest
      match:
        namespace: [default]
        status: ["200-299"]
      action: {sample: 0.5}
"#;

#[test]
fn parse_applies_the_policy_to_a_real_envoy_log() {
    let (run, file) = envoy_log();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("policy.yaml");
    std::fs::write(&config, PARSE_POLICY).unwrap();

    let (all, summary_all) = parse(&file, None);
    assert_eq!(all.len(), run.exchanges.len(), "one record per exchange");
    assert_eq!(summary_all["dropped"]["policy"], 0);
    let (kept, summary) = parse(&file, Some(&config));

    // What the rules say, from the truth and the unfiltered records.
    let (mut want_policy, mut want_sampled) = (0, 0);
    let mut want: BTreeMap<u32, &Value> = BTreeMap::new();
    for record in &all {
        let t = run.exchange(test_id(record)).expect("a known exchange");
        let multi = t.spec.headers.iter().any(|(k, _)| k == "x-multi");
        if t.received.status == 404 || multi {
            want_policy += 1;
        } else if (t.spec.method == "POST" && kind_of(record) == Kind::Html)
            || meshtap::policy::sample::position(id(record)) < 0.5
        {
            // html-cut keeps (and cuts) every HTML POST; the sample rule keeps half the rest.
            want.insert(t.id(), record);
        } else {
            want_sampled += 1;
        }
    }
    assert_eq!(want_policy, 2, "exchanges 1 (x-multi) and 9 (404)");
    assert!(
        want_sampled > 0 && want.len() > 4,
        "the sample rule decides both ways"
    );

    let got: BTreeMap<u32, &Value> = kept.iter().map(|r| (test_id(r), r)).collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "kept exchanges"
    );
    for (tid, record) in &got {
        let original = want[tid];
        if kind_of(record) == Kind::Html {
            for side in ["request", "response"] {
                let (cut, whole) = (&record[side], &original[side]);
                let whole_body = body(whole).unwrap();
                assert_eq!(body(cut).unwrap(), whole_body[..16], "{tid} {side}");
                assert_eq!(cut["body_truncated"], true, "{tid} {side}");
                assert_eq!(
                    cut["truncated_reason"],
                    "policy rule \"html-cut\" max_body_bytes (16)"
                );
                assert_eq!(cut["body_size"], whole["body_size"], "the true size stays");
                assert_eq!(whole["body_truncated"], false);
            }
        } else {
            assert_eq!(*record, original, "kept whole: {tid}");
        }
    }

    let dropped = &summary["dropped"];
    assert_eq!(dropped["policy"], want_policy, "{summary}");
    assert_eq!(dropped["sampled"], want_sampled, "{summary}");
    assert_eq!(dropped["rate_limited"], 0, "{summary}");
    assert_eq!(
        summary["assemble"]["exchanges"], summary_all["assemble"]["exchanges"],
        "the summary counts exchanges before the policy"
    );

    // Deterministic: a second replay keeps exactly the same records.
    let (again, _) = parse(&file, Some(&config));
    assert_eq!(again, kept);
}

#[test]
fn parse_rejects_an_invalid_policy_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(
        &config,
        "policy:\n  rules:\n    - name: ok\n    - name: catalog\n      match: {path: {regex: \"^/api/(v1\"}}\n",
    )
    .unwrap();
    let log = dir.path().join("empty.log");
    std::fs::write(&log, "").unwrap();
    let out = Command::new(BIN)
        .args(["parse", "--config"])
        .arg(&config)
        .arg(&log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("policy.rules[1] (\"catalog\"): match.path.regex: invalid regex"),
        "{stderr}"
    );

    // `meshtap run` refuses it before doing anything, with the config exit code.
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policy.rules[1] (\"catalog\")"), "{stderr}");
}

#[test]
fn the_agent_delivers_what_the_policy_keeps_and_counts_every_drop() {
    let (run, file) = envoy_log();
    let (all, _) = parse(&file, None);
    let total = all.len();
    let missing = all
        .iter()
        .filter(|r| r["response"]["status"] == 404)
        .count();
    let html = all.iter().filter(|r| kind_of(r) == Kind::Html).count();
    assert!(missing == 1 && html > 1, "{missing} 404s, {html} html");
    const BURST: usize = 5;
    assert!(
        total > missing + html + BURST,
        "some left for the rate limit"
    );

    // The file as a pod's istio-proxy log on a node.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    let pod_dir = file.parent().unwrap().parent().unwrap();
    let container = root.join(pod_dir.file_name().unwrap()).join("istio-proxy");
    std::fs::create_dir_all(&container).unwrap();
    std::fs::copy(&file, container.join("0.log")).unwrap();
    drop(run);

    let out = dir.path().join("out/exchanges.ndjson");
    let q = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap();
    // A per-pod rate so low that only the burst passes, however slow the machine.
    let config = |port: u16| {
        format!(
        "agent:\n  log_root: {}\n  state_dir: {}\n  poll_interval_ms: 100\n  idle_flush_ms: 50\n\
         sink:\n  type: file\n  path: {}\n\
         ops:\n  listen: 127.0.0.1:{port}\n\
         policy:\n  rules:\n\
         \x20   - {{name: drop-missing, match: {{status: [404]}}, action: drop}}\n\
         \x20   - {{name: no-html, match: {{path: {{prefix: /productpage/html/}}}}, action: {{sample: 0}}}}\n\
         \x20 rate_limits:\n    per_pod: {{exchanges_per_second: 0.001, exchanges_burst: {BURST}}}\n",
        q(&root),
        q(&dir.path().join("state")),
        q(&out),
    )
    };
    let config_path = dir.path().join("meshtap.yaml");
    let stderr_path = dir.path().join("agent.stderr");
    let agent_stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // Another test may take the free port before the agent binds it: then try another one.
    let (child, ops) = (0..3)
        .find_map(|_| {
            let port = free_port();
            std::fs::write(&config_path, config(port)).unwrap();
            let mut child = Command::new(BIN)
                .arg("run")
                .arg("--config")
                .arg(&config_path)
                .env_remove("MESHTAP_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr_path).unwrap())
                .spawn()
                .unwrap();
            let ops = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            match wait_agent_ready(&mut child, ops, Duration::from_secs(30)) {
                Ok(()) => Some((child, ops)),
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = agent_stderr();
                    assert!(
                        stderr.contains("cannot listen"),
                        "agent not ready: {why}\n{stderr}"
                    );
                    None
                }
            }
        })
        .expect("the agent could not bind an ops port in 3 tries");

    let series = |reason: &str| format!("meshtap_exchanges_dropped_total{{reason=\"{reason}\"}}");
    let want = [
        ("policy", missing),
        ("sampled", html),
        ("rate_limited", total - missing - html - BURST),
    ];
    // Every exchange read and decided, the kept ones delivered.
    let page = wait_for(Duration::from_secs(30), || {
        let (200, page) = crate::agent::http_get(ops, "/metrics").ok()? else {
            return None;
        };
        let seen: f64 = want
            .iter()
            .map(|(reason, _)| metric(&page, &series(reason)).unwrap_or(0.0))
            .sum();
        let delivered = metric(&page, "meshtap_sink_records_total{sink=\"file\"}").unwrap_or(0.0);
        (seen as usize + delivered as usize == total).then_some(page)
    });
    let status = terminate_child(child, Duration::from_secs(40));
    let page =
        page.unwrap_or_else(|| panic!("not every exchange was accounted for\n{}", agent_stderr()));
    assert!(status.is_ok_and(|s| s.success()), "{}", agent_stderr());

    for (reason, n) in want {
        assert_eq!(
            metric(&page, &series(reason)),
            Some(n as f64),
            "{reason}\n{page}"
        );
    }
    assert_eq!(
        agent_stderr().matches("Capture rate limit reached").count(),
        1,
        "one warning for the whole burst of refusals (at most one a minute)\n{}",
        agent_stderr()
    );
    let sink = read_sink(&out, 5);
    assert_eq!(
        sink.records.len(),
        BURST,
        "only the burst passed the rate limit"
    );
    let by_id: BTreeMap<&str, &Value> = all.iter().map(|r| (id(r), r)).collect();
    for record in &sink.records {
        let original = by_id
            .get(id(record))
            .unwrap_or_else(|| panic!("the agent's id {} is the parser's", id(record)));
        assert_ne!(record["response"]["status"], 404);
        assert_ne!(kind_of(record), Kind::Html);
        assert_eq!(
            body(&record["response"]).unwrap(),
            body(&original["response"]).unwrap()
        );
    }
}
