//! The admin stream against a real Envoy: exact records for the whole e2e plan (JSON, HTML,
//! UTF-8, binary, 200 KiB, chunked, 20 concurrent), truncation at a low buffer limit, the clear
//! error for a second client, and reconnecting after Envoy restarts.

use super::envoy::{admin_filter, TapCli, TapEnvoy};
use super::{compare_all, drive_plan, runtime};
use crate::support::envoy::free_port;
use crate::support::meshtap::body;
use crate::support::upstream::Upstream;

#[test]
fn admin_stream_records_equal_what_was_sent_and_received() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let app = rt.block_on(Upstream::start());
    let envoy = TapEnvoy::start(dir.path(), &admin_filter("meshtap"), Some(app.addr));
    let plan_len = crate::support::scenario::plan(true).len();
    let admin = envoy.admin.to_string();
    let count = plan_len.to_string();
    let mut tap = TapCli::spawn(&["--admin", &admin, "--count", &count]);
    tap.wait_attached(1);
    let truths = drive_plan(&rt, envoy.listener, &app);
    let (ok, stderr) = tap.wait_exit();
    assert!(ok, "meshtap tap failed:\n{stderr}");
    assert!(
        stderr.contains(&format!("{plan_len} records")),
        "summary: {stderr}"
    );
    let failures = compare_all(&tap.records, &truths);
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Envoy's own clock (record_headers_received_time) dates each record.
    for r in &tap.records {
        assert!(r["request"]["start_time"].is_string(), "{}", r["request"]);
        assert_eq!(r["time"], r["request"]["start_time"]);
        assert!(r["log"]["file"]
            .as_str()
            .unwrap()
            .starts_with("envoy-admin://127.0.0.1:"));
    }
}

#[test]
fn a_low_buffer_limit_flags_truncated_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let app = rt.block_on(Upstream::start());
    let envoy = TapEnvoy::start(dir.path(), &admin_filter("meshtap"), Some(app.addr));
    let admin = envoy.admin.to_string();
    let mut tap = TapCli::spawn(&[
        "--admin",
        &admin,
        "--count",
        "1",
        "--max-buffered-bytes",
        "100",
        "--path-prefix",
        "/productpage/big/",
    ]);
    tap.wait_attached(1);
    // Exchange 2 (a small JSON POST) does not match the path prefix; 6 (200 KiB each way) does.
    let truths = drive_plan(&rt, envoy.listener, &app);
    let (ok, stderr) = tap.wait_exit();
    assert!(ok, "{stderr}");
    assert_eq!(tap.records.len(), 1, "{stderr}");
    let record = &tap.records[0];
    let big = truths
        .iter()
        .find(|t| t.id() == crate::support::scenario::BIG_ID)
        .unwrap();
    assert_eq!(record["request"]["path"], big.spec.path.as_str());
    for (what, want) in [
        ("request", big.spec.sent_body()),
        ("response", big.received.body.clone()),
    ] {
        let d = &record[what];
        assert_eq!(d["body_truncated"], true, "{what}: {d}");
        assert_eq!(d["body_size"], 100, "{what}");
        assert_eq!(body(d).unwrap(), want[..100], "{what}: the first 100 bytes");
        assert!(
            d["truncated_reason"]
                .as_str()
                .unwrap()
                .contains("max_buffered"),
            "{d}"
        );
    }
}

#[test]
fn a_second_client_gets_a_clear_error_and_the_first_reconnects_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let filter = admin_filter("meshtap");
    let (listener_port, admin_port) = (free_port(), free_port());
    let envoy = TapEnvoy::start_on(dir.path(), &filter, None, listener_port, admin_port, None)
        .expect("envoy starts");
    let admin = envoy.admin.to_string();
    // Envoy checks for an attached stream before the config id: ask while nobody is attached.
    let mut wrong_id = TapCli::spawn(&["--admin", &admin, "--config-id", "nope"]);
    let (ok, stderr) = wrong_id.wait_exit();
    assert!(
        !ok && stderr.contains("no tap filter with config_id \"nope\""),
        "{stderr}"
    );

    let mut first = TapCli::spawn(&["--admin", &admin, "--count", "1"]);
    first.wait_attached(1);

    let mut second = TapCli::spawn(&["--admin", &admin]);
    let (ok, stderr) = second.wait_exit();
    assert!(!ok, "the second client must fail");
    assert!(
        stderr.contains("An attached /tap admin stream already exists")
            && stderr.contains("another client holds Envoy's admin tap stream")
            && stderr.contains(&admin),
        "{stderr}"
    );

    // Envoy goes away and comes back on the same ports: the first client attaches again.
    envoy.kill();
    let envoy = TapEnvoy::start_on(dir.path(), &filter, None, listener_port, admin_port, None)
        .expect("envoy restarts");
    first.wait_attached(2);
    let response = super::envoy::http_exchange(envoy.listener, "POST", "/after/restart", b"x");
    assert!(super::envoy_ok(&response));
    let (ok, stderr) = first.wait_exit();
    assert!(ok, "{stderr}");
    assert_eq!(first.records.len(), 1);
    assert_eq!(first.records[0]["request"]["path"], "/after/restart");
    assert_eq!(first.records[0]["response"]["status"], 200);
    assert!(stderr.contains("2 attach(es)"), "{stderr}");
}

#[test]
fn sigterm_detaches_so_another_client_can_attach() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = TapEnvoy::start(dir.path(), &admin_filter("meshtap"), None);
    let admin = envoy.admin.to_string();
    let mut first = TapCli::spawn(&["--admin", &admin]);
    first.wait_attached(1);
    first.terminate();
    let (ok, stderr) = first.wait_exit();
    assert!(ok, "SIGTERM is a clean stop: {stderr}");
    // Envoy notices the closed connection asynchronously; the next client attaches (the CLI
    // retries "already exists" for its first 2 s, so a just-closed stream does not fail it).
    let mut next = TapCli::spawn(&["--admin", &admin, "--count", "1"]);
    next.wait_attached(1);
    super::envoy::http_exchange(envoy.listener, "GET", "/next", b"");
    let (ok, stderr) = next.wait_exit();
    assert!(ok, "{stderr}");
    assert_eq!(next.records[0]["request"]["method"], "GET");
}
