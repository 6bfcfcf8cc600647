//! Crash recovery with a REAL Envoy: meshtap's v2 filter logs live traffic, a writer turns Envoy's
//! stderr into a pod log as it comes (rotated by rename every few hundred lines, older files
//! gzipped; see [`crate::support::live_writer`]), and a controller kills `meshtap run` with
//! SIGKILL at random moments and starts it again. When the traffic is over and the agent caught
//! up, the file sink must hold every exchange the upstream saw exactly once, with exact bodies,
//! and not one raw duplicate line (the file sink rolls back to its checkpoint on restart).
//!
//! `MESHTAP_CRASH_SEED` replays the random choices (kill moments, traffic shape); the timing of
//! Envoy and of the agent is real, so a replay is close, not identical.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{metric, seed_from_env, usize_from_env, wait_for, Agent, Failures, Rng, Setup};
use crate::support::client;
use crate::support::live_writer::LiveEnvoy;
use crate::support::manifests::{Filter, V2_MAX_BODY};
use crate::support::meshtap::{body as record_body, show};
use crate::support::scenario::{request_body, Kind, Mode, Spec, AUTHORITY};
use crate::support::upstream::Upstream;

/// The pod whose istio-proxy log the writer writes.
const POD_DIR: &str =
    "default_productpage-v1-6b746f74dc-9stvs_0c1a2b3c-1111-2222-3333-444455556666/istio-proxy";
/// Envoy stderr lines per log file before kubelet rotates it.
const ROTATE_EVERY: usize = 250;

fn spec(id: u32, rng: &mut Rng) -> Spec {
    let (method, kind) = match rng.below(6) {
        0 => ("GET", Kind::Json),
        1 | 2 => ("POST", Kind::Echo),
        _ => ("POST", Kind::Json),
    };
    let body = if method == "GET" {
        Vec::new()
    } else {
        request_body(Kind::Json, id, false)
    };
    let mut headers = vec![
        ("x-test-id".to_string(), id.to_string()),
        ("user-agent".to_string(), "meshtap-crash/1.0".to_string()),
    ];
    if !body.is_empty() {
        headers.push(("content-type".to_string(), "application/json".to_string()));
    }
    Spec {
        id,
        method,
        path: format!("/api/{}/{id}", kind.as_str()),
        headers,
        body,
        mode: Mode::Sequential,
    }
}

/// The traffic in groups: one exchange alone, or a burst of 4 to 10 at once.
fn plan(rng: &mut Rng, total: u32) -> Vec<Vec<Spec>> {
    let mut groups = Vec::new();
    let mut id = 1;
    while id <= total {
        let burst = if rng.chance(1, 3) {
            rng.range(4, 10) as u32
        } else {
            1
        };
        let mut group = Vec::new();
        for _ in 0..burst.min(total - id + 1) {
            let mut s = spec(id, rng);
            if burst > 1 {
                s.mode = Mode::Concurrent;
            }
            group.push(s);
            id += 1;
        }
        groups.push(group);
    }
    groups
}

fn header_test_id(record: &Value) -> Option<u32> {
    record["request"]["headers"]["x-test-id"][0]
        .as_str()?
        .parse()
        .ok()
}

#[test]
fn agent_delivers_exactly_once_across_crashes_with_a_live_envoy() {
    let seed = seed_from_env("MESHTAP_CRASH_SEED");
    let mut rng = Rng::new(seed);
    let total = usize_from_env("MESHTAP_CRASH_EXCHANGES", rng.range(300, 600) as usize) as u32;
    let kills = rng.range(3, 6) as usize;
    // (time to run before the kill, time down after it), in ms.
    let schedule: Vec<(u64, u64)> = (0..kills)
        .map(|_| {
            let down = if rng.chance(1, 2) {
                rng.range(0, 800)
            } else {
                0
            };
            (rng.range(300, 1500), down)
        })
        .collect();
    eprintln!(
        "agent crash: seed {seed:#x} (MESHTAP_CRASH_SEED), {total} exchanges, {kills} SIGKILLs {schedule:?}"
    );
    let began = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();

    let dir = tempfile::Builder::new()
        .prefix("meshtap-agent-crash-")
        .tempdir()
        .unwrap();
    let setup = Setup::new(dir.path());
    let log_dir = setup.root.join(POD_DIR);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(Upstream::start());
    let lua = Filter::V2 {
        max_body: V2_MAX_BODY,
    }
    .lua();
    let envoy = LiveEnvoy::start(dir.path(), &lua, app.addr, &log_dir, ROTATE_EVERY);
    timings.push(("envoy startup", envoy.startup));

    // The controller: the agent runs, is killed at a random moment, stays down a while, and is
    // started again, `kills` times; the traffic flows meanwhile.
    let traffic_done = Arc::new(AtomicBool::new(false));
    let controller = {
        let schedule = schedule.clone();
        let traffic_done = traffic_done.clone();
        let gzip_hold = envoy.gzip_hold.clone();
        let mut setup = setup;
        std::thread::spawn(move || {
            // With MESHTAP_AGENT_SETTLE=1 compression waits from each start to the agent's first
            // checkpoint (see `regressions::checkpointed_file_compressed_during_the_restart_is_resumed_not_lost`);
            // by default files are compressed whenever the writer rotates.
            let start = |setup: &mut Setup| {
                let _hold = (std::env::var_os("MESHTAP_AGENT_SETTLE").is_some())
                    .then(|| gzip_hold.lock().unwrap());
                let agent = Agent::start(setup);
                wait_for(Duration::from_secs(30), || {
                    let text = agent.metrics()?;
                    (metric(&text, "meshtap_checkpoint_writes_total")? > 0.0).then_some(())
                })
                .expect("no checkpoint within 30 s of a start");
                agent
            };
            let mut agent = start(&mut setup);
            let mut log = Vec::new();
            let t0 = Instant::now();
            for (run, down) in schedule {
                // A random kill moment, not a readiness wait.
                std::thread::sleep(Duration::from_millis(run));
                if let Some(status) = agent.exited() {
                    log.push(format!("agent exited on its own: {status}"));
                }
                let traffic = if traffic_done.load(Ordering::SeqCst) {
                    "after the traffic"
                } else {
                    "during the traffic"
                };
                agent.crash();
                log.push(format!(
                    "{:>6}ms SIGKILL {traffic}, down {down} ms",
                    t0.elapsed().as_millis()
                ));
                std::thread::sleep(Duration::from_millis(down));
                agent = start(&mut setup);
            }
            (setup, agent, log)
        })
    };

    // The traffic, paced to span the kill schedule.
    let groups = plan(&mut rng, total);
    let span: u64 = schedule.iter().map(|(run, down)| run + down + 150).sum();
    let pace = Duration::from_millis(span / groups.len() as u64);
    let t = Instant::now();
    let mut received = Vec::new();
    for group in &groups {
        received.extend(rt.block_on(client::drive(envoy.listener, group)));
        // Pacing the traffic, not waiting for anything.
        std::thread::sleep(pace);
    }
    traffic_done.store(true, Ordering::SeqCst);
    timings.push(("traffic", t.elapsed()));

    let (setup, agent, kill_log) = controller.join().expect("controller thread");
    let t = Instant::now();
    let stats = envoy.stop();
    timings.push(("envoy stop", t.elapsed()));
    let seen = app.seen();
    rt.shutdown_timeout(Duration::from_secs(1));
    assert!(stats.error.is_none(), "log writer: {:?}", stats.error);
    assert!(
        stats.exit.is_some_and(|s| s.success()),
        "Envoy did not exit cleanly on SIGTERM: {:?}",
        stats.exit
    );

    // The truth: the upstream saw every exchange once, with what was sent.
    let mut truth: BTreeMap<u32, _> = BTreeMap::new();
    for s in &seen {
        let id = s.test_id.expect("x-test-id at the upstream");
        assert!(
            truth.insert(id, s.clone()).is_none(),
            "upstream saw {id} twice"
        );
    }
    assert_eq!(
        truth.len(),
        total as usize,
        "exchanges seen by the upstream"
    );
    assert_eq!(received.len(), total as usize, "responses received");
    assert!(
        stats.payload_lines >= 4 * total as usize,
        "Envoy logged {} [logPayload] lines for {total} exchanges",
        stats.payload_lines
    );

    // Catch-up: every exchange delivered.
    let t = Instant::now();
    let caught_up = wait_for(Duration::from_secs(90), || {
        let sink = setup.sink();
        let ids: std::collections::BTreeSet<u32> =
            sink.records.iter().filter_map(header_test_id).collect();
        truth.keys().all(|id| ids.contains(id)).then_some(())
    });
    timings.push(("catch-up", t.elapsed()));
    let mut failures = Failures::default();
    if caught_up.is_none() {
        failures.fail("the agent did not deliver every exchange within 90 s of the traffic's end");
    }
    match agent.terminate() {
        Ok(status) if status.success() => {}
        Ok(status) => failures.fail(format!("final SIGTERM: exit status {status}, not 0")),
        Err(why) => failures.fail(format!("final SIGTERM: {why}")),
    }
    for line in &kill_log {
        if line.contains("on its own") {
            failures.fail(line.clone());
        }
    }

    let sink = setup.sink();
    // Lines by id: identical copies are raw duplicates, different records under one id collide.
    let mut by_id: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for r in &sink.records {
        by_id
            .entry(r["id"].as_str().unwrap_or("<no id>"))
            .or_default()
            .push(r);
    }
    let mut raw = 0;
    let mut unique: Vec<(&str, &Value)> = Vec::new();
    for (id, copies) in &by_id {
        let mut distinct: Vec<&Value> = Vec::new();
        for r in copies {
            if !distinct.contains(r) {
                distinct.push(r);
            }
        }
        raw += copies.len() - distinct.len();
        // The same exchange delivered again may differ in `log.file` (the file was renamed
        // since): that is a duplicate too, caught below by the x-test-id count.
        if distinct.len() > 1 {
            failures.fail(format!(
                "{} different records with the same id {id}: {}",
                distinct.len(),
                distinct
                    .iter()
                    .map(|r| clip(r))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        unique.extend(distinct.into_iter().map(|r| (*id, r)));
    }
    eprintln!(
        "agent crash: {} sink lines, {} distinct ids, raw duplicates: {raw}",
        sink.records.len(),
        by_id.len()
    );
    failures.check(raw == 0, || {
        format!(
            "{raw} raw duplicate line(s) in the file sink ({} lines): it must roll back to its checkpoint",
            sink.records.len()
        )
    });
    failures.check(sink.bad.is_empty(), || {
        format!(
            "sink lines that are not JSON objects: {:?}",
            &sink.bad[..sink.bad.len().min(3)]
        )
    });
    failures.check(sink.torn == 0, || {
        format!("{} bytes of a torn line", sink.torn)
    });

    // Ids are deterministic: `meshtap parse` over the log files as they are now (rotated,
    // gzipped, live) gives the ids the agent gave while they were written, rotated and
    // compressed under it.
    match super::parse_dir(&log_dir) {
        Ok(parsed) => {
            let delivered: BTreeMap<&str, &Value> = unique.iter().copied().collect();
            let mut differ = Vec::new();
            for (id, r) in &delivered {
                if !parsed.contains_key(*id) {
                    differ.push(format!(
                        "{id} (x-test-id {:?}) only delivered",
                        header_test_id(r)
                    ));
                }
            }
            for (id, r) in &parsed {
                if !delivered.contains_key(id.as_str()) {
                    differ.push(format!(
                        "{id} (x-test-id {:?}) only parsed",
                        header_test_id(r)
                    ));
                }
            }
            failures.check(differ.is_empty(), || {
                format!(
                    "ids differ from `meshtap parse` of the log files: {}",
                    differ.join(", ")
                )
            });
        }
        Err(e) => failures.fail(e),
    }

    let mut by_test_id: BTreeMap<u32, Vec<&Value>> = BTreeMap::new();
    for &(id, record) in &unique {
        match header_test_id(record) {
            Some(t) if truth.contains_key(&t) => by_test_id.entry(t).or_default().push(record),
            Some(t) => failures.fail(format!("record {id}: exchange {t} was never sent")),
            None => failures.fail(format!("record {id}: no x-test-id: {}", clip(record))),
        }
    }
    for (id, seen) in &truth {
        let records = by_test_id.get(id).map(Vec::as_slice).unwrap_or_default();
        let ctx = format!("exchange {id} ({} {})", seen.method, seen.path);
        if records.len() != 1 {
            failures.fail(format!(
                "{ctx}: {} records (distinct ids), expected 1",
                records.len()
            ));
            if records.is_empty() {
                continue;
            }
        }
        let record = records[0];
        failures.check(record["complete"] == true, || {
            format!("{ctx}: complete {}", record["complete"])
        });
        failures.check(
            record["warnings"].as_array().is_some_and(Vec::is_empty),
            || format!("{ctx}: warnings {}", record["warnings"]),
        );
        let request = &record["request"];
        let response = &record["response"];
        failures.check(request["method"] == seen.method.as_str(), || {
            format!("{ctx}: method {}", request["method"])
        });
        failures.check(request["path"] == seen.path.as_str(), || {
            format!("{ctx}: path {}", request["path"])
        });
        failures.check(request["authority"] == AUTHORITY, || {
            format!("{ctx}: authority {}", request["authority"])
        });
        failures.check(response["status"] == seen.response.status, || {
            format!("{ctx}: status {}", response["status"])
        });
        for (name, dir, expected) in [
            ("request", request, &seen.body),
            ("response", response, &seen.response.body),
        ] {
            match record_body(dir) {
                Ok(body) => failures.check(body == *expected, || {
                    format!(
                        "{ctx}: {name} body {} (expected {})",
                        show(&body),
                        show(expected)
                    )
                }),
                Err(e) => failures.fail(format!("{ctx}: {name} body: {e}")),
            }
        }
    }

    let timing = timings
        .iter()
        .map(|(what, d)| format!("{what} {:.2}s", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "agent crash: {} log lines, {} rotations, {} gzipped; {timing}; total {:.2}s\n  {}",
        stats.lines,
        stats.rotations,
        stats.gzipped,
        began.elapsed().as_secs_f64(),
        kill_log.join("\n  ")
    );
    if !failures.is_empty() {
        let kept = dir.keep();
        panic!(
            "agent crash: seed {seed:#x} (MESHTAP_CRASH_SEED={seed:#x}): {} failure(s); files kept in {}\n{}\n  kills:\n  {}\n--- agent stderr (tail) ---\n{}",
            failures.0.len(),
            kept.display(),
            failures.report(40),
            kill_log.join("\n  "),
            setup.stderr_tail(3000)
        );
    }
}

fn clip(record: &Value) -> String {
    record.to_string().chars().take(400).collect()
}
