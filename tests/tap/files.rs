//! `file_per_tap` output of a real Envoy, in JSON and in binary protobuf, read with
//! `meshtap tap --dir`: identical records, and every file moved to `done/` afterwards.

use std::path::Path;
use std::time::{Duration, Instant};

use super::envoy::{file_filter, TapCli, TapEnvoy};
use super::{compare_all, drive_plan, runtime};
use crate::support::upstream::Upstream;

/// Files with `ext` directly in `dir`.
fn files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// Waits until Envoy has written `n` files (it writes each when its stream ends).
fn wait_files(dir: &Path, ext: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while files(dir, ext).len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} .{ext} files in {}",
            files(dir, ext).len(),
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn file_sink_run(format: &str, ext: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("taps");
    std::fs::create_dir(&out).unwrap();
    let rt = runtime();
    let app = rt.block_on(Upstream::start());
    let envoy = TapEnvoy::start(
        tmp.path(),
        &file_filter(&out, format, 1 << 20),
        Some(app.addr),
    );
    let truths = drive_plan(&rt, envoy.listener, &app);
    wait_files(&out, ext, truths.len());
    let written = files(&out, ext);

    let dir = out.to_string_lossy().into_owned();
    let mut tap = TapCli::spawn(&["--dir", &dir, "--once"]);
    let (ok, stderr) = tap.wait_exit();
    assert!(ok, "{format}: {stderr}");
    let failures = compare_all(&tap.records, &truths);
    assert!(
        failures.is_empty(),
        "{format}: {} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(files(&out, ext).is_empty(), "{format}: files left behind");
    assert_eq!(
        files(&out.join("done"), ext).len(),
        written.len(),
        "{format}: every file in done/"
    );
    for record in &tap.records {
        let file = record["log"]["file"].as_str().unwrap();
        assert!(
            written.iter().any(|w| w.to_string_lossy() == file),
            "{file}"
        );
    }
    drop(envoy);
}

#[test]
fn json_tap_files_give_exact_records_and_are_moved_to_done() {
    file_sink_run("JSON_BODY_AS_BYTES", "json");
}

#[test]
fn binary_proto_tap_files_give_exact_records() {
    file_sink_run("PROTO_BINARY", "pb");
}

#[test]
fn records_of_a_tap_file_keep_their_ids_when_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("taps");
    std::fs::create_dir(&out).unwrap();
    let rt = runtime();
    let app = rt.block_on(Upstream::start());
    let envoy = TapEnvoy::start(
        tmp.path(),
        &file_filter(&out, "JSON_BODY_AS_BYTES", 16),
        Some(app.addr),
    );
    let response = super::envoy::http_exchange(envoy.listener, "POST", "/x/echo/1", &[b'z'; 40]);
    assert!(super::envoy_ok(&response));
    wait_files(&out, "json", 1);
    let dir = out.to_string_lossy().into_owned();
    // First read: delete nothing (a crash before delivery is simulated by copying the file back).
    let original = files(&out, "json").remove(0);
    let copy = tmp.path().join("copy.json");
    std::fs::copy(&original, &copy).unwrap();
    let mut first = TapCli::spawn(&["--dir", &dir, "--once", "--done", "delete"]);
    let (ok, stderr) = first.wait_exit();
    assert!(ok, "{stderr}");
    assert!(!original.exists(), "--done delete removes the file");
    std::fs::copy(&copy, &original).unwrap();
    let mut again = TapCli::spawn(&["--dir", &dir, "--once"]);
    let (ok, stderr) = again.wait_exit();
    assert!(ok, "{stderr}");
    assert_eq!(first.records.len(), 1);
    assert_eq!(first.records[0]["id"], again.records[0]["id"]);
    let rq = &first.records[0]["request"];
    assert_eq!(
        rq["body_truncated"], true,
        "a 16-byte limit cuts the 40-byte body"
    );
    assert_eq!(rq["body"], "z".repeat(16));
    assert_eq!(rq["body_size"], 16);
}

#[test]
fn tap_files_ship_to_the_configured_sink_before_they_are_marked_done() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("taps");
    std::fs::create_dir(&out).unwrap();
    let rt = runtime();
    let app = rt.block_on(Upstream::start());
    let envoy = TapEnvoy::start(
        tmp.path(),
        &file_filter(&out, "JSON_BODY_AS_BYTES", 1 << 20),
        Some(app.addr),
    );
    for i in 1..=3 {
        let response = super::envoy::http_exchange(
            envoy.listener,
            "POST",
            &format!("/x/echo/{i}"),
            format!("body {i}").as_bytes(),
        );
        assert!(super::envoy_ok(&response));
    }
    wait_files(&out, "json", 3);
    let shipped = tmp.path().join("shipped.ndjson");
    let config = tmp.path().join("meshtap.yaml");
    std::fs::write(
        &config,
        format!("sink:\n  type: file\n  path: {}\n", shipped.display()),
    )
    .unwrap();
    let dir = out.to_string_lossy().into_owned();
    let config = config.to_string_lossy().into_owned();
    let mut tap = TapCli::spawn(&["--dir", &dir, "--once", "--config", &config, "--sink"]);
    let (ok, stderr) = tap.wait_exit();
    assert!(ok, "{stderr}");
    assert!(tap.records.is_empty(), "nothing on stdout with --sink");
    let lines = std::fs::read_to_string(&shipped).unwrap();
    let mut bodies: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| r["request"]["body"].as_str().unwrap().to_string())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["body 1", "body 2", "body 3"]);
    assert!(files(&out, "json").is_empty());
    assert_eq!(files(&out.join("done"), "json").len(), 3);
}

#[test]
fn tap_files_stay_in_place_when_the_sink_never_acknowledges() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("taps");
    std::fs::create_dir(&out).unwrap();
    let envoy = TapEnvoy::start(
        tmp.path(),
        &file_filter(&out, "JSON_BODY_AS_BYTES", 1 << 20),
        None,
    );
    super::envoy::http_exchange(envoy.listener, "GET", "/unacked", b"");
    wait_files(&out, "json", 1);
    let before = files(&out, "json");
    // An OTLP/HTTP receiver that passes the sink's startup check (an empty export) and then
    // answers every export with 503.
    let receiver = failing_otlp_receiver();
    let config = tmp.path().join("meshtap.yaml");
    std::fs::write(
        &config,
        format!("sink:\n  type: otlp\n  protocol: http_protobuf\n  endpoint: http://{receiver}\n  timeout_ms: 500\n"),
    )
    .unwrap();
    let dir = out.to_string_lossy().into_owned();
    let config = config.to_string_lossy().into_owned();
    let mut tap = TapCli::spawn(&[
        "--dir",
        &dir,
        "--once",
        "--config",
        &config,
        "--sink",
        "--sink-timeout",
        "1",
    ]);
    let (ok, stderr) = tap.wait_exit();
    assert!(!ok, "a sink that never acknowledges is an error: {stderr}");
    assert!(stderr.contains("delivering to the otlp sink"), "{stderr}");
    assert_eq!(
        files(&out, "json"),
        before,
        "the file must stay for the next run"
    );
    assert!(!out.join("done").exists());
}

/// A plain HTTP/1.1 server: the first request gets 200 (an empty protobuf response), every later
/// one 503. It lives until the test process ends (a detached thread on an ephemeral port).
fn failing_otlp_receiver() -> std::net::SocketAddr {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut served = 0u32;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                // One request: headers, then content-length bytes of body.
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < end + 4 + length {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..end + 4 + length);
                let response: &[u8] = if served == 0 {
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                };
                served += 1;
                if stream.write_all(response).is_err() {
                    break;
                }
            }
        }
    });
    addr
}
