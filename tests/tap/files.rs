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
