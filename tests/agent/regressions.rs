//! Focused, deterministic tests for the agent bugs the randomized tests ([`super::model`],
//! [`super::crash`]) found. Each states the behaviour the docs promise and guards its fix (each
//! failed before the fix).

use std::fs;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use super::ops::{pod_log, v2_log};
use super::{metric, wait_for, Agent, Setup};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One CRI line of a Lua message in Envoy's default layout, `ms` milliseconds after 08:47:45
/// (less than 15 s).
fn lua_line(ms: u32, thread: u32, text: &str) -> String {
    let (s, ms) = (45 + ms / 1000, ms % 1000);
    format!(
        "2026-11-25T08:47:{s:02}.{ms:03}000001Z stderr F [2026-11-25 08:47:{s:02}.{ms:03}][{thread}][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: {text}\n"
    )
}

/// The five lines of a v2 exchange with stream id `sid` and path `/t/<n>`: request start and end,
/// response start, body and end.
fn v2_lines(sid: &str, n: u32) -> [String; 5] {
    let rq = b64(format!(":method\nGET\n:path\n/t/{n}\n:authority\nreviews:9080\n").as_bytes());
    let rs = b64(b":status\n200\n");
    let body = format!("reply {n}");
    [
        format!("[logPayload] v2 rq {sid} 0 1795596685632 {rq}"),
        format!("[logPayload] v2 rqe {sid} 1 1795596685633 0 0"),
        format!("[logPayload] v2 rs {sid} 0 1795596685634 {rs}"),
        format!("[logPayload] v2 rsb {sid} 1 {}", b64(body.as_bytes())),
        format!("[logPayload] v2 rse {sid} 2 1795596685635 {} 0", body.len()),
    ]
}

fn wait_records(setup: &Setup, n: usize) -> Vec<Value> {
    wait_for(Duration::from_secs(30), || {
        let sink = setup.sink();
        (sink.records.len() >= n).then_some(sink.records)
    })
    .unwrap_or_else(|| {
        panic!(
            "the sink did not get {n} records within 30 s (has {}); agent stderr:\n{}",
            setup.sink().records.len(),
            setup.stderr_tail(2000)
        )
    })
}

/// Stops `agent` with SIGTERM, which must end it cleanly.
fn stop(agent: Agent) {
    let status = agent.terminate().unwrap();
    assert!(status.success(), "SIGTERM: {status}");
}

/// Starts the agent, waits until the sink holds `n` records, stops it: the sink's records.
fn run_until_records(setup: &mut Setup, n: usize) -> Vec<Value> {
    let agent = Agent::start(setup);
    let records = wait_records(setup, n);
    stop(agent);
    records
}

/// Waits until `agent` has read `bytes` bytes of log.
fn wait_read(agent: &Agent, bytes: usize) {
    let read = wait_for(Duration::from_secs(30), || {
        let text = agent.metrics()?;
        (metric(&text, "meshtap_log_bytes_read_total")? >= bytes as f64).then_some(())
    });
    assert!(read.is_some(), "the agent did not read the log");
}

/// An exchange whose first event is the last line of a rotated file keeps the identity of that
/// file: `log.file` names it and the id hashes its fingerprint. Here the rotated file holds only
/// exchange 1's `rq` line, and the live file starts with exchange 2's `rq` (offset 0 too).
#[test]
fn exchange_starting_at_the_end_of_a_rotated_file_keeps_its_file_identity() {
    let dir = tempfile::Builder::new()
        .prefix("meshtap-agent-rotation-id-")
        .tempdir()
        .unwrap();
    let mut setup = Setup::new(dir.path());
    let live = pod_log(&setup.root, "reviews-v1-6b746f74dc-9stvs");
    let rotated = live.with_file_name("0.log.20261125-080000");
    let [a_rq, a_rqe, a_rs, a_rsb, a_rse] = v2_lines("6b06a18c.7f2ddc2776b0.1", 1);
    let [b_rq, b_rqe, b_rs, b_rsb, b_rse] = v2_lines("6b06a18c.7f2ddc2776b0.2", 2);
    // kubelet rotated 0.log right after Envoy logged exchange 1's request headers.
    fs::write(&rotated, lua_line(100, 23, &a_rq)).unwrap();
    let mut rest = String::new();
    for (i, text) in [b_rq, a_rqe, a_rs, a_rsb, a_rse, b_rqe, b_rs, b_rsb, b_rse]
        .iter()
        .enumerate()
    {
        rest.push_str(&lua_line(101 + i as u32, 23 + i as u32 % 2, text));
    }
    fs::write(&live, rest).unwrap();

    let records = run_until_records(&mut setup, 2);
    let by_path = |p: &str| {
        records
            .iter()
            .find(|r| r["request"]["path"] == p)
            .unwrap_or_else(|| panic!("no record for {p}: {records:?}"))
    };
    let (a, b) = (by_path("/t/1"), by_path("/t/2"));
    assert_ne!(
        a["id"], b["id"],
        "two different exchanges share an id (a consumer deduplicating by id drops one)"
    );
    let file = a["log"]["file"].as_str().unwrap_or_default();
    assert!(
        Path::new(file).ends_with("0.log.20261125-080000")
            || file.ends_with("0.log.20261125-080000"),
        "exchange 1 started in the rotated file, its log.file is {file}"
    );
}

/// The file sink is exactly once across a crash even when the agent is killed before a
/// checkpoint recorded the sink's position: here before it ever wrote one (first start on a node
/// with a backlog of logs, e.g. OOM-killed while catching up, within the default 1 s).
#[test]
fn agent_crash_before_its_first_checkpoint_leaves_no_duplicates() {
    crash_before_a_positioned_checkpoint(|_| {});
}

/// The same when a checkpoint exists but was written before the sink acknowledged anything (the
/// agent started and stopped once while the node had no istio-proxy logs yet): it used to record
/// no sink position, so there was nothing to roll back to either.
#[test]
fn agent_crash_after_a_checkpoint_of_nothing_leaves_no_duplicates() {
    crash_before_a_positioned_checkpoint(|setup| {
        let agent = Agent::start(setup);
        stop(agent);
        assert!(setup.checkpoint().is_some(), "checkpoint after SIGTERM");
    });
}

fn crash_before_a_positioned_checkpoint(prepare: impl FnOnce(&mut Setup)) {
    const N: u32 = 10;
    let dir = tempfile::Builder::new()
        .prefix("meshtap-agent-first-crash-")
        .tempdir()
        .unwrap();
    let mut setup = Setup::new(dir.path());
    // The next regular checkpoint is due after 10 minutes: none covers the records delivered
    // before the crash (the default interval is 1 s, during which a crash is the same case).
    setup.checkpoint_interval_ms = 600_000;
    prepare(&mut setup);
    let (log, _) = v2_log(N);
    fs::write(pod_log(&setup.root, "reviews-v1-6b746f74dc-9stvs"), &log).unwrap();

    let agent = Agent::start(&mut setup);
    wait_records(&setup, N as usize);
    let covered = setup.checkpoint().is_some_and(|c| {
        c["streams"]
            .as_object()
            .is_some_and(|s| s.values().any(|s| !s["position"].is_null()))
    });
    assert!(!covered, "precondition: no checkpoint covers what was read");
    agent.crash();

    let agent = Agent::start(&mut setup);
    // The restarted agent has read the log again once it counted its exchanges; a graceful stop
    // then delivers whatever that produced.
    let series = r#"meshtap_exchanges_total{source="lua-v2",complete="true"}"#;
    let reread = wait_for(Duration::from_secs(30), || {
        let text = agent.metrics()?;
        (metric(&text, series)? >= f64::from(N)).then_some(())
    });
    stop(agent);
    let sink = setup.sink();
    assert_eq!(
        sink.raw_duplicates(),
        0,
        "raw duplicate lines in the file sink after a SIGKILL before a checkpoint with a sink \
         position ({} lines for {N} exchanges; the restarted agent {} the log again)",
        sink.records.len(),
        if reread.is_some() {
            "read"
        } else {
            "did not read"
        }
    );
    assert_eq!(sink.records.len(), N as usize, "records in the sink");
}

/// A v1 (seed headers variant) exchange whose log ends right after the response's `showing
/// bodyChunks` line, before the chunk (the pod was deleted, or the container restarted, at that
/// moment): the response body was not logged, and its `content-length` says there was one. The
/// record must not claim to be complete and exact.
#[test]
fn v1_response_cut_before_its_body_is_not_complete() {
    let dir = tempfile::Builder::new()
        .prefix("meshtap-agent-v1-cut-")
        .tempdir()
        .unwrap();
    let mut setup = Setup::new(dir.path());
    let live = pod_log(&setup.root, "productpage-v1-6b746f74dc-9stvs");
    let pod_dir = live.parent().unwrap().parent().unwrap().to_path_buf();
    let messages = [
        "[logPayload] started",
        "[logPayload:headers] --> \n:authority:productpage:9080,\n:path:/productpage/t/1,\n:method:POST,\ncontent-length:11,",
        "[logPayload] showing bodyChunks",
        "hello\nworld",
        "[logPayload] showing bodyChunks",
        "[envoy_on_response] find productpage",
        "[envoy_on_request] meta logPayload found",
        "[logPayload] started",
        "[logPayload:headers] --> \n:status:200,\ncontent-type:text/html,\ncontent-length:116,",
        // Here Envoy would log the 116-byte chunk: the log ends first.
        "[logPayload] showing bodyChunks",
    ];
    let mut log = String::new();
    for (i, message) in messages.iter().enumerate() {
        let text = format!(
            "[2026-11-25 08:47:45.{:03}][31][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: {message}",
            100 + i
        );
        for (j, line) in text.split('\n').enumerate() {
            log.push_str(&format!(
                "2026-11-25T08:47:45.{:03}{j:03}001Z stderr F {line}\n",
                100 + i
            ));
        }
    }
    fs::write(&live, &log).unwrap();

    let agent = Agent::start(&mut setup);
    wait_read(&agent, log.len());
    // The pod goes away: the stream ends, what is pending is emitted.
    fs::remove_dir_all(&pod_dir).unwrap();
    let records = wait_records(&setup, 1);
    stop(agent);
    assert_eq!(records.len(), 1, "records: {records:?}");
    let record = &records[0];
    let response = &record["response"];
    let honest = record["complete"] == false
        || response["body_truncated"] == true
        || record["warnings"].as_array().is_some_and(|w| !w.is_empty());
    assert!(
        honest,
        "the response's 116-byte body was never logged, yet the record says complete {}, \
         body_truncated {}, warnings {}; response: {response}",
        record["complete"], response["body_truncated"], record["warnings"]
    );
}

/// A v1 request's `started` is read and checkpointed; its header block goes with a file that is
/// deleted while the agent is down; the response follows in a new file. The agent reports the
/// lost data (`lost_log_data`), and the exchange open across the gap must say so: it was emitted
/// complete, with no warning and no path (agent model, seed 0x18eedd91ac8463d9).
#[test]
fn v1_exchange_open_across_a_file_deleted_unread_is_flagged() {
    let dir = tempfile::Builder::new()
        .prefix("meshtap-agent-v1-gap-")
        .tempdir()
        .unwrap();
    let mut setup = Setup::new(dir.path());
    let live = pod_log(&setup.root, "productpage-v1-6b746f74dc-9stvs");
    let before = lua_line(100, 31, "[logPayload] started");
    fs::write(&live, &before).unwrap();
    let agent = Agent::start(&mut setup);
    wait_read(&agent, before.len());
    stop(agent);

    // While the agent is down, the file (and the request's headers written to it) goes away.
    fs::remove_file(&live).unwrap();
    let mut after = String::new();
    for (i, text) in [
        "[envoy_on_response] find productpage",
        "[envoy_on_request] meta logPayload found",
        "[logPayload] started",
        "[logPayload:headers] --> ",
    ]
    .into_iter()
    .enumerate()
    {
        after.push_str(&lua_line(200 + i as u32, 31, text));
    }
    after.push_str("2026-11-25T08:47:45.203000002Z stderr F :status:204,\n");
    fs::write(&live, &after).unwrap();

    let records = run_until_records(&mut setup, 1);
    assert_eq!(records.len(), 1, "records: {records:?}");
    let record = &records[0];
    assert_eq!(record["complete"], false, "{record}");
    assert!(
        record["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w
                .as_str()
                .is_some_and(|w| w.contains("log lines were lost")))),
        "{record}"
    );
}

/// Exchanges `range` as CRI lines (five per exchange), Envoy milliseconds counted from `*ms`.
fn exchanges(range: std::ops::RangeInclusive<u32>, ms: &mut u32) -> String {
    let mut out = String::new();
    for n in range {
        for text in v2_lines(&format!("6b06a18c.7f2ddc2776b0.{n}"), n) {
            *ms += 1;
            out.push_str(&lua_line(*ms, 23, &text));
        }
    }
    out
}

/// kubelet compresses the checkpointed rotated file while the agent restarts (found by
/// `crash`: 255 exchanges delivered twice). Resuming, the follower lists the stream's files,
/// then opens them oldest first looking for the checkpoint's fingerprint; a file compressed in
/// between (`.gz.tmp` renamed `.gz`, the plain file deleted) is in the listing under its old name
/// only, so the checkpoint is declared lost and every file is read again from the oldest.
///
/// To hit that moment, the stream has 300 older rotated files, which the agent opens one by one
/// after its listing: as soon as it has one open (seen in `/proc/<pid>/fd`), the test compresses
/// the checkpointed file, which comes after them.
#[test]
fn checkpointed_file_compressed_during_the_restart_is_resumed_not_lost() {
    use std::io::Write as _;
    const OLDER: u32 = 300;

    let dir = tempfile::Builder::new()
        .prefix("meshtap-agent-gz-race-")
        .tempdir()
        .unwrap();
    let mut setup = Setup::new(dir.path());
    let live = pod_log(&setup.root, "reviews-v1-6b746f74dc-9stvs");
    let logs = live.parent().unwrap().to_path_buf();
    let gzip = |text: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(text).unwrap();
        encoder.finish().unwrap()
    };
    let mut ms = 0;
    let older_name = |k: u32| format!("0.log.20261125-07{:02}{:02}.gz", k / 60, k % 60);
    for k in 0..OLDER {
        fs::write(
            logs.join(older_name(k)),
            gzip(exchanges(k + 1..=k + 1, &mut ms).as_bytes()),
        )
        .unwrap();
    }
    fs::write(&live, exchanges(OLDER + 1..=OLDER + 5, &mut ms)).unwrap();

    // The agent reads all of it and stops: its checkpoint is in `0.log`.
    run_until_records(&mut setup, OLDER as usize + 5);

    // While it is down, kubelet rotates `0.log`, and the runtime writes on.
    let checkpointed = logs.join("0.log.20261125-080000");
    fs::rename(&live, &checkpointed).unwrap();
    fs::write(&live, exchanges(OLDER + 6..=OLDER + 10, &mut ms)).unwrap();

    let mut agent = Agent::spawn_unready(&mut setup);
    let fds = format!("/proc/{}/fd", agent.pid());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // A tight loop: the agent goes through the older files in milliseconds.
    let listed = loop {
        let open_older = fs::read_dir(&fds).into_iter().flatten().flatten().any(|e| {
            fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("0.log.20261125-07"))
        });
        if open_older || std::time::Instant::now() > deadline {
            break open_older;
        }
    };
    // kubelet compresses the checkpointed file now: `.gz.tmp`, renamed `.gz`, original deleted.
    let tmp = logs.join("0.log.20261125-080000.gz.tmp");
    fs::write(&tmp, gzip(&fs::read(&checkpointed).unwrap())).unwrap();
    fs::rename(&tmp, logs.join("0.log.20261125-080000.gz")).unwrap();
    fs::remove_file(&checkpointed).unwrap();
    assert!(listed, "never saw the agent open an older rotated file");
    agent.wait_ready(Duration::from_secs(30)).unwrap();

    let last = format!("/t/{}", OLDER + 10);
    let done = wait_for(Duration::from_secs(30), || {
        let sink = setup.sink();
        sink.records
            .iter()
            .any(|r| r["request"]["path"] == last.as_str())
            .then_some(())
    });
    stop(agent);
    assert!(
        done.is_some(),
        "exchange {last} not delivered within 30 s; agent stderr:\n{}",
        setup.stderr_tail(3000)
    );
    let sink = setup.sink();
    let lost = setup
        .stderr_tail(1 << 20)
        .contains("checkpointed file no longer exists");
    assert_eq!(
        (sink.raw_duplicates(), lost),
        (0, false),
        "raw duplicates in the file sink, and whether the agent said the checkpointed file was \
         gone ({} lines for {} exchanges)",
        sink.records.len(),
        OLDER + 10
    );
}

/// The streams of the loaded checkpoint stay in every checkpoint the agent writes until it has
/// found them again (found by `model`: a SIGTERM 27 ms after a start, before the reader's first
/// scan, wrote a checkpoint without any stream, and the next start read every pod from its
/// oldest file again). Deterministic here: the log root is away while the agent runs once, so
/// its scans find nothing.
#[test]
fn checkpoint_keeps_the_streams_it_has_not_found_again() {
    const N: u32 = 5;
    let dir = tempfile::Builder::new()
        .prefix("meshtap-agent-saved-streams-")
        .tempdir()
        .unwrap();
    let mut setup = Setup::new(dir.path());
    let mut ms = 0;
    fs::write(
        pod_log(&setup.root, "reviews-v1-6b746f74dc-9stvs"),
        exchanges(1..=N, &mut ms),
    )
    .unwrap();
    run_until_records(&mut setup, N as usize);

    // One run during which the log root cannot be listed.
    let away = dir.path().join("pods.away");
    fs::rename(&setup.root, &away).unwrap();
    let agent = Agent::start(&mut setup);
    let checkpointed = wait_for(Duration::from_secs(30), || {
        let text = agent.metrics()?;
        (metric(&text, "meshtap_checkpoint_writes_total")? > 0.0).then_some(())
    });
    assert!(checkpointed.is_some(), "no checkpoint written");
    stop(agent);
    let streams = setup
        .checkpoint()
        .map(|c| c["streams"].as_object().map_or(0, |s| s.len()));
    fs::rename(&away, &setup.root).unwrap();

    // Back: a new pod logs one exchange; once it is delivered, the first pod was read too.
    fs::write(
        pod_log(&setup.root, "ratings-v1-5d6c8d9f7b-x2x4q"),
        exchanges(100..=100, &mut ms),
    )
    .unwrap();
    let agent = Agent::start(&mut setup);
    let done = wait_for(Duration::from_secs(30), || {
        let sink = setup.sink();
        sink.records
            .iter()
            .any(|r| r["request"]["path"] == "/t/100")
            .then_some(())
    });
    stop(agent);
    assert!(done.is_some(), "the new pod's exchange was not delivered");
    let sink = setup.sink();
    assert_eq!(
        (sink.raw_duplicates(), sink.records.len()),
        (0, N as usize + 1),
        "raw duplicates and records in the file sink (the checkpoint written while the log root \
         was away held {streams:?} streams)"
    );
}
