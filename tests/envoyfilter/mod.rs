//! `meshtap envoyfilter` end to end: the built binary generates an EnvoyFilter, the YAML is
//! parsed, and the HTTP filter of its config patch (`patch.value`, exactly what Istio inserts
//! before `envoy.filters.http.router` of the sidecar's connection manager) goes into a real Envoy
//! 1.40's static listener in the same place. Traffic flows through it to the upstream app; the
//! test then checks Envoy's stderr line by line (only selected requests produced `[logPayload]`
//! lines, skipped headers never appear) and the records `meshtap parse` makes of it (one complete
//! record per selected request, headers as forwarded, bodies exact up to the cap, `body_size`
//! true).
//!
//! The expected captures are written out per request; they are also compared with
//! `Selection::captures`, the library's model of the matcher, so the docs' description of the
//! matching and Envoy's behaviour cannot drift apart.

mod cli;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::real_envoy::{
    check_capped_body, regular, CLIENT_ONLY_RESPONSE_HEADERS, UPSTREAM_ONLY_REQUEST_HEADERS,
};
use crate::support::client::{self, Received};
use crate::support::envoy::{Envoy, Layout};
use crate::support::meshtap::{self as runner, group, redacted};
use crate::support::scenario::{Mode, Spec, AUTHORITY};
use crate::support::upstream::{Seen, Upstream};
use crate::support::Failures;

/// Runs `meshtap envoyfilter ARGS`; returns (exit success, stdout, stderr).
pub fn generate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshtap"))
        .arg("envoyfilter")
        .args(args)
        .output()
        .expect("run meshtap envoyfilter");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The generated manifest, parsed, with the shape Istio expects checked.
fn manifest(args: &[&str]) -> Value {
    let (ok, yaml, stderr) = generate(args);
    assert!(ok, "meshtap envoyfilter {args:?} failed: {stderr}");
    let doc: Value = serde_saphyr::from_str(&yaml)
        .unwrap_or_else(|e| panic!("the generated YAML does not parse: {e}\n{yaml}"));
    assert_eq!(doc["apiVersion"], "networking.istio.io/v1alpha3");
    assert_eq!(doc["kind"], "EnvoyFilter");
    assert!(doc["metadata"]["name"].is_string());
    for patch in doc["spec"]["configPatches"]
        .as_array()
        .expect("configPatches")
    {
        assert_eq!(patch["applyTo"], "HTTP_FILTER");
        let filter = &patch["match"]["listener"]["filterChain"]["filter"];
        assert_eq!(
            filter["name"],
            "envoy.filters.network.http_connection_manager"
        );
        assert_eq!(filter["subFilter"]["name"], "envoy.filters.http.router");
        assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
    }
    doc
}

/// One request of a case, and whether the generated filter must capture it.
struct Req {
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    captured: bool,
}

fn req(method: &'static str, path: &'static str, captured: bool) -> Req {
    Req {
        method,
        path,
        headers: Vec::new(),
        body: Vec::new(),
        captured,
    }
}

/// What a case checks besides the selection.
struct Expect {
    /// The body cap given with `--max-body-bytes` (the default otherwise).
    max_body: usize,
    /// Lower-case names given with `--skip-header`.
    skipped: &'static [&'static str],
}

const DEFAULTS: Expect = Expect {
    max_body: 65536,
    skipped: &[],
};

/// Generates the filter with `args`, runs the HTTP filter of config patch `patch` in a real
/// Envoy, sends `requests` and checks everything.
fn case(name: &str, args: &[&str], patch: usize, requests: Vec<Req>, expect: Expect) {
    let doc = manifest(args);
    let http_filter = doc["spec"]["configPatches"][patch]["patch"]["value"].clone();
    assert!(
        http_filter.is_object(),
        "{name}: no configPatches[{patch}].patch.value"
    );

    // The library's model of the matcher agrees with the expectations written here.
    let model = library_filter(args);
    for r in &requests {
        assert_eq!(
            model.selection().captures(r.method, r.path),
            r.captured,
            "{name}: Selection::captures disagrees with the test about {} {}",
            r.method,
            r.path
        );
    }

    let dir = tempfile::Builder::new()
        .prefix("meshtap-envoyfilter-")
        .tempdir()
        .unwrap();
    let plan: Vec<Spec> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let id = u32::try_from(i).unwrap() + 1;
            let mut headers = vec![("x-test-id".to_string(), id.to_string())];
            headers.extend(r.headers.iter().map(|(n, v)| (n.to_string(), v.clone())));
            Spec {
                id,
                method: r.method,
                path: r.path.to_string(),
                headers,
                body: r.body.clone(),
                mode: Mode::Sequential,
            }
        })
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(Upstream::start());
    let envoy = Envoy::start_with_filter(dir.path(), &http_filter, app.addr, Layout::Envoy);
    let received = rt.block_on(client::drive(envoy.listener, &plan));
    let stderr = envoy.stop();
    let seen = app.seen();
    rt.shutdown_timeout(Duration::from_secs(1));

    let log = dir.path().join("envoy.log");
    std::fs::write(&log, &stderr).unwrap();
    let mut failures = Failures::default();
    let text = String::from_utf8_lossy(&stderr);
    let ctx = format!("[{name}]");
    failures.check(
        !text.contains("[error][lua]") && !text.contains("[critical]"),
        || format!("{ctx} Envoy logged errors:\n{}", clip(&text)),
    );

    let selected: BTreeSet<u32> = plan
        .iter()
        .zip(&requests)
        .filter(|(_, r)| r.captured)
        .map(|(s, _)| s.id)
        .collect();
    check_lines(&ctx, &text, &selected, &expect, &mut failures);

    let parsed = runner::parse(&log);
    failures.check(parsed.success, || {
        format!("{ctx} meshtap parse failed: {}", parsed.stderr)
    });
    failures.check(parsed.records.len() == selected.len(), || {
        format!(
            "{ctx} {} records for {} selected requests",
            parsed.records.len(),
            selected.len()
        )
    });
    for spec in &plan {
        let ctx = format!("{ctx} request {} ({} {})", spec.id, spec.method, spec.path);
        let at_app = seen.iter().find(|s| s.test_id == Some(spec.id));
        let got = received.iter().find(|r| r.test_id == spec.id);
        let (Some(at_app), Some(got)) = (at_app, got) else {
            failures.fail(format!("{ctx}: did not reach the upstream and back"));
            continue;
        };
        failures.check(
            at_app.body == spec.body && got.body == at_app.response.body,
            || format!("{ctx}: Envoy changed a body on the way"),
        );
        let records: Vec<&Value> = parsed
            .records
            .iter()
            .filter(|r| test_id(r) == Some(spec.id))
            .collect();
        if !selected.contains(&spec.id) {
            failures.check(records.is_empty(), || {
                format!("{ctx}: not selected, yet {} record(s)", records.len())
            });
            continue;
        }
        if records.len() != 1 {
            failures.fail(format!("{ctx}: {} records, expected one", records.len()));
            continue;
        }
        check_record(&ctx, records[0], spec, at_app, got, &expect, &mut failures);
    }

    if !failures.is_empty() {
        let kept = dir.keep();
        failures.finish_named(&format!("{name} (files kept in {})", kept.display()));
    }
}

/// The library's [`meshtap::envoyfilter::EnvoyFilter`] for the same flags, through clap as the
/// binary parses them.
fn library_filter(args: &[&str]) -> ::meshtap::envoyfilter::EnvoyFilter {
    use clap::Parser as _;
    let cli =
        ::meshtap::cli::Cli::try_parse_from(["meshtap", "envoyfilter"].iter().chain(args.iter()))
            .expect("the flags parse");
    let ::meshtap::cli::Command::Envoyfilter(flags) = cli.command else {
        panic!("not the envoyfilter command");
    };
    ::meshtap::envoyfilter::EnvoyFilter::new(flags.options()).expect("valid flags")
}

/// Every `[logPayload]` line belongs to a selected request, each selected request has its
/// request and response start lines, and no header block holds a skipped header.
fn check_lines(
    ctx: &str,
    text: &str,
    selected: &BTreeSet<u32>,
    expect: &Expect,
    failures: &mut Failures,
) {
    // sid -> test id, from the request start lines' headers.
    let mut owner: BTreeMap<String, u32> = BTreeMap::new();
    let mut events: Vec<(String, String)> = Vec::new();
    let mut marker_lines = 0;
    for line in text.lines() {
        if !line.contains("[logPayload]") {
            continue;
        }
        marker_lines += 1;
        let Some((_, rest)) = line.split_once("script log: [logPayload] v2 ") else {
            failures.fail(format!("{ctx} not a v2 line: {}", clip(line)));
            continue;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        let (event, sid) = (
            fields[0].to_string(),
            fields.get(1).unwrap_or(&"").to_string(),
        );
        let block = match event.as_str() {
            "rq" | "rs" => fields.get(4),
            "rqt" | "rst" => fields.get(3),
            _ => None,
        };
        if let Some(block) = block.filter(|b| **b != "-") {
            let pairs = decode_block(block);
            for (name, _) in &pairs {
                failures.check(!expect.skipped.contains(&name.as_str()), || {
                    format!("{ctx} skipped header {name:?} logged in a {event} line")
                });
            }
            if event == "rq" {
                match pairs
                    .iter()
                    .find(|(n, _)| n == "x-test-id")
                    .and_then(|(_, v)| v.parse().ok())
                {
                    Some(id) => {
                        owner.insert(sid.clone(), id);
                    }
                    None => {
                        failures.fail(format!("{ctx} rq line without x-test-id: {}", clip(line)))
                    }
                }
            }
        }
        events.push((event, sid));
    }
    failures.check(marker_lines > 0 || selected.is_empty(), || {
        format!("{ctx} no [logPayload] line at all")
    });
    let mut starts: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for (event, sid) in &events {
        match owner.get(sid) {
            Some(id) if selected.contains(id) => {
                let entry = starts.entry(*id).or_default();
                match event.as_str() {
                    "rq" => entry.0 += 1,
                    "rs" => entry.1 += 1,
                    _ => {}
                }
            }
            Some(id) => failures.fail(format!(
                "{ctx} a `{event}` line for request {id}, which is not selected"
            )),
            None => failures.fail(format!(
                "{ctx} a `{event}` line of stream {sid}, whose request was not logged"
            )),
        }
    }
    for id in selected {
        let got = starts.get(id).copied().unwrap_or_default();
        failures.check(got == (1, 1), || {
            format!(
                "{ctx} request {id}: {} rq and {} rs lines, expected one each",
                got.0, got.1
            )
        });
    }
}

/// A `name\nvalue\n...` header block, base64-decoded.
fn decode_block(block: &str) -> Vec<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(block)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.split('\n').collect();
    lines
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| (pair[0].to_string(), pair[1].to_string()))
        .collect()
}

fn check_record(
    ctx: &str,
    record: &Value,
    spec: &Spec,
    at_app: &Seen,
    got: &Received,
    expect: &Expect,
    failures: &mut Failures,
) {
    failures.check(record["complete"] == true, || {
        format!("{ctx}: complete is {}", record["complete"])
    });
    failures.check(
        record["warnings"].as_array().is_some_and(Vec::is_empty),
        || format!("{ctx}: warnings {}", record["warnings"]),
    );
    let (request, response) = (&record["request"], &record["response"]);
    failures.check(
        request["method"] == spec.method && request["path"] == spec.path.as_str(),
        || format!("{ctx}: logged {} {}", request["method"], request["path"]),
    );
    failures.check(request["authority"] == AUTHORITY, || {
        format!("{ctx}: authority {}", request["authority"])
    });
    failures.check(response["status"] == got.status, || {
        format!(
            "{ctx}: status {} (client got {})",
            response["status"], got.status
        )
    });

    // Headers: what the upstream received (request) and the client received (response), less
    // what the filter cannot see and what it was told to skip.
    let without = |mut map: BTreeMap<String, Vec<String>>, extra: &[&str]| {
        for name in expect.skipped.iter().chain(extra) {
            map.remove(*name);
        }
        map
    };
    let mut upstream = group(&at_app.headers);
    upstream.remove("host");
    let want_request = redacted("request", without(upstream, UPSTREAM_ONLY_REQUEST_HEADERS));
    let want_response = redacted(
        "response",
        without(group(&got.headers), CLIENT_ONLY_RESPONSE_HEADERS),
    );
    for (what, direction, want) in [
        ("request", request, want_request),
        ("response", response, want_response),
    ] {
        let logged = runner::headers(direction).map(|h| regular(&h));
        failures.check(logged.as_ref() == Some(&want), || {
            format!("{ctx}: {what} headers {logged:?}, expected {want:?}")
        });
    }
    // The skipped headers were really sent, so their absence means something.
    for name in expect.skipped {
        failures.check(group(&spec.headers).contains_key(*name), || {
            format!("{ctx}: the test did not send {name}")
        });
    }

    check_capped_body(
        &format!("{ctx} request"),
        request,
        &at_app.body,
        expect.max_body,
        failures,
    );
    check_capped_body(
        &format!("{ctx} response"),
        response,
        &got.body,
        expect.max_body,
        failures,
    );
}

fn test_id(record: &Value) -> Option<u32> {
    runner::headers(&record["request"])?
        .get("x-test-id")?
        .first()?
        .parse()
        .ok()
}

fn clip(text: &str) -> String {
    text.chars().take(3000).collect()
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i as u8).wrapping_mul(7) ^ seed) % 26)
        .collect()
}

#[test]
fn exact_path() {
    case(
        "exact",
        &["--path-exact", "/api/json/1"],
        0,
        vec![
            req("GET", "/api/json/1", true),
            req("GET", "/api/json/1?verbose=true", true),
            req("GET", "/api/json/12", false),
            req("GET", "/api/json/1/", false),
            req("GET", "/API/json/1", false),
            Req {
                body: body(40, 1),
                ..req("POST", "/api/echo/6", false)
            },
        ],
        DEFAULTS,
    );
}

/// Prefix and methods, from the outbound patch of `--direction both` (the same filter as the
/// inbound one, which the manifest test checks).
#[test]
fn prefix_and_methods() {
    let args = [
        "--direction",
        "both",
        "--path-prefix",
        "/api/",
        "--method",
        "POST",
        "--method",
        "put",
    ];
    let doc = manifest(&args);
    let patches = doc["spec"]["configPatches"].as_array().unwrap();
    assert_eq!(patches.len(), 2);
    assert_eq!(patches[0]["match"]["context"], "SIDECAR_INBOUND");
    assert_eq!(patches[1]["match"]["context"], "SIDECAR_OUTBOUND");
    assert_eq!(patches[0]["patch"]["value"], patches[1]["patch"]["value"]);
    case(
        "prefix+methods",
        &args,
        1,
        vec![
            Req {
                body: body(300, 2),
                ..req("POST", "/api/echo/1", true)
            },
            Req {
                body: body(20, 3),
                ..req("PUT", "/api/echo/2", true)
            },
            req("GET", "/api/json/3", false),
            Req {
                body: body(20, 4),
                ..req("POST", "/apix/echo/4", false)
            },
            Req {
                body: body(20, 5),
                ..req("POST", "/other/api/echo/5", false)
            },
            req("DELETE", "/api/json/6", false),
        ],
        DEFAULTS,
    );
}

#[test]
fn regex_path() {
    case(
        "regex",
        &["--path-regex", "/orders/[0-9]{1,6}/(json|utf8)/[0-9]+"],
        0,
        vec![
            req("GET", "/orders/123/json/1", true),
            req("GET", "/orders/7/utf8/2?page=2", true),
            req("GET", "/orders/abc/json/3", false),
            req("GET", "/v1/orders/1/json/4", false),
            req("GET", "/orders/1234567/json/5", false),
            Req {
                body: body(10, 6),
                ..req("POST", "/orders/9/echo/6", false)
            },
        ],
        DEFAULTS,
    );
}

/// Several selectors at once (any of them selects), a small body cap and skipped headers.
#[test]
fn mixed_selectors_cap_and_skipped_headers() {
    let secrets = |r: Req| Req {
        headers: vec![
            ("authorization", "Bearer secret-token".to_string()),
            ("x-api-key", "k-123".to_string()),
            ("x-kept", "visible".to_string()),
        ],
        ..r
    };
    case(
        "mixed",
        &[
            "--path-exact",
            "/health/json/1",
            "--path-prefix",
            "/api/",
            "--path-regex",
            "/orders/[0-9]+/echo/[0-9]+",
            "--max-body-bytes",
            "100",
            "--skip-header",
            "Authorization",
            "--skip-header",
            "X-API-KEY",
        ],
        0,
        vec![
            secrets(req("GET", "/health/json/1", true)),
            secrets(Req {
                body: body(300, 7),
                ..req("POST", "/api/echo/2", true)
            }),
            secrets(Req {
                body: body(50, 8),
                ..req("POST", "/orders/5/echo/3", true)
            }),
            secrets(req("GET", "/healthz/json/4", false)),
            secrets(req("GET", "/metrics/json/5", false)),
        ],
        Expect {
            max_body: 100,
            skipped: &["authorization", "x-api-key"],
        },
    );
}

/// The shipped manifest is what the generator prints with default flags, byte for byte, so it
/// cannot drift from the Lua in `agent/envoyfilter/meshtap-v2.lua`.
#[test]
fn shipped_manifest_is_the_default_output() {
    let (ok, yaml, stderr) = generate(&[]);
    assert!(ok, "{stderr}");
    let path = crate::support::manifests::repo_root().join("deploy/envoyfilter-lua-v2.yaml");
    let shipped = std::fs::read_to_string(&path).unwrap();
    assert!(
        shipped == yaml,
        "{} differs from `meshtap envoyfilter`; regenerate it with\n  \
         cargo run -- envoyfilter > deploy/envoyfilter-lua-v2.yaml",
        path.display()
    );
}
