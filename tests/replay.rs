//! `meshtap parse --config FILE --sink`: a saved log replayed into the configured sink delivers
//! exactly what `meshtap parse` prints.

use std::process::Command;

use base64::Engine as _;

/// A small v2 log: `n` POST exchanges, as Envoy's default layout writes them (raw stderr).
fn v2_log(n: usize) -> String {
    let b64 = |b: &str| base64::engine::general_purpose::STANDARD.encode(b);
    let mut out = String::new();
    for i in 0..n {
        let line = |msg: String| {
            format!("[2026-11-25 08:47:45.772][7][warning][lua] [lua.cc:31] script log: [logPayload] v2 {msg}\n")
        };
        let sid = format!("s.{i}");
        out += &line(format!(
            "rq {sid} 0 1795596685480 {}",
            b64(&format!(":method\nPOST\n:path\n/replay/{i}\n"))
        ));
        out += &line(format!("rqb {sid} 1 {}", b64(&format!("request {i}"))));
        out += &line(format!("rqe {sid} 2 1795596685481 9 0"));
        out += &line(format!(
            "rs {sid} 0 1795596685482 {}",
            b64(":status\n200\n")
        ));
        out += &line(format!("rsb {sid} 1 {}", b64(&format!("response {i}"))));
        out += &line(format!("rse {sid} 2 1795596685483 10 0"));
    }
    out
}

#[test]
fn replay_into_the_file_sink_delivers_what_parse_prints() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("envoy.log");
    std::fs::write(&log, v2_log(1200)).unwrap();
    let out = dir.path().join("out/exchanges.ndjson");
    let config = dir.path().join("meshtap.yaml");
    std::fs::write(
        &config,
        format!("sink:\n  type: file\n  path: {}\n", out.display()),
    )
    .unwrap();

    let printed = Command::new(env!("CARGO_BIN_EXE_meshtap"))
        .arg("parse")
        .arg(&log)
        .output()
        .unwrap();
    assert!(printed.status.success());
    let replay = Command::new(env!("CARGO_BIN_EXE_meshtap"))
        .args(["parse", "--sink", "--config"])
        .arg(&config)
        .arg(&log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(replay.status.success(), "{stderr}");
    assert!(
        replay.stdout.is_empty(),
        "records go to the sink, not stdout"
    );
    assert!(
        stderr.contains("delivered 1200 exchanges to the file sink"),
        "{stderr}"
    );
    // More than one batch (512) was delivered, in order.
    assert_eq!(std::fs::read(&out).unwrap(), printed.stdout);
}

#[test]
fn replay_needs_a_config_naming_the_sink() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshtap"))
        .args(["parse", "--sink", "x.log"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}
