//! Envoy's tap filter as a source: a real Envoy 1.40 with the tap filter, tapped through its
//! admin stream (`meshtap tap --admin`, `--netns`, `--pid`, `--pod`) and through `file_per_tap`
//! files (`meshtap tap --dir`); every record is compared with what the client sent and received.

mod admin;
pub(crate) mod envoy;
mod files;
mod manifests;
mod netns;

use serde_json::Value;

use crate::support::meshtap::{body, headers, show};
use crate::support::Truth;

/// Every way `record` differs from the exchange `truth` (empty when it is exact): method, path,
/// the headers the client and the upstream set, and both bodies byte for byte.
pub fn differences(record: &Value, truth: &Truth) -> Vec<String> {
    let mut out = Vec::new();
    let id = truth.id();
    let mut check = |ok: bool, what: String| {
        if !ok {
            out.push(format!("exchange {id}: {what}"));
        }
    };
    check(
        record["source"] == "tap",
        format!("source {}", record["source"]),
    );
    check(record["complete"] == true, "not complete".into());
    let rq = &record["request"];
    let rs = &record["response"];
    check(
        rq["method"] == truth.spec.method,
        format!("method {} != {}", rq["method"], truth.spec.method),
    );
    check(
        rq["path"] == truth.spec.path.as_str(),
        format!("path {} != {}", rq["path"], truth.spec.path),
    );
    check(
        rq["authority"] == crate::support::scenario::AUTHORITY,
        format!("authority {}", rq["authority"]),
    );
    let rq_headers = headers(rq).unwrap_or_default();
    for (name, values) in crate::support::meshtap::redacted(
        "request",
        crate::support::meshtap::group(&truth.spec.headers),
    ) {
        check(
            rq_headers.get(&name) == Some(&values),
            format!(
                "request header {name}: {:?} != {values:?}",
                rq_headers.get(&name)
            ),
        );
    }
    let rs_headers = headers(rs).unwrap_or_default();
    for (name, values) in crate::support::meshtap::redacted(
        "response",
        crate::support::meshtap::group(&truth.seen.response.headers),
    ) {
        check(
            rs_headers.get(&name) == Some(&values),
            format!(
                "response header {name}: {:?} != {values:?}",
                rs_headers.get(&name)
            ),
        );
    }
    check(
        rs["status"] == truth.received.status,
        format!("status {} != {}", rs["status"], truth.received.status),
    );
    for (what, direction, want) in [
        ("request", rq, truth.spec.sent_body()),
        ("response", rs, truth.received.body.clone()),
    ] {
        match body(direction) {
            Ok(got) => check(
                got == want,
                format!("{what} body {} != {}", show(&got), show(&want)),
            ),
            Err(e) => check(false, format!("{what} body: {e}")),
        }
        check(
            direction["body_truncated"] == false,
            format!("{what} body_truncated"),
        );
        check(
            direction["body_size"] == want.len(),
            format!(
                "{what} body_size {} != {}",
                direction["body_size"],
                want.len()
            ),
        );
    }
    out
}

/// Matches each truth with its record (by the `x-test-id` request header) and returns every
/// difference, plus records that match no exchange.
pub fn compare_all(records: &[Value], truths: &[Truth]) -> Vec<String> {
    let mut failures = Vec::new();
    for truth in truths {
        let id = truth.id().to_string();
        let matching: Vec<&Value> = records
            .iter()
            .filter(|r| {
                headers(&r["request"])
                    .and_then(|h| h.get("x-test-id").cloned())
                    .is_some_and(|v| v == [id.clone()])
            })
            .collect();
        match matching.as_slice() {
            [one] => failures.extend(differences(one, truth)),
            other => failures.push(format!("exchange {id}: {} records", other.len())),
        }
    }
    if records.len() != truths.len() {
        failures.push(format!(
            "{} records for {} exchanges",
            records.len(),
            truths.len()
        ));
    }
    let mut ids: Vec<&str> = records.iter().filter_map(|r| r["id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != records.len() {
        failures.push("record ids are not unique".into());
    }
    failures
}

/// Runs the whole e2e plan through `envoy` (whose upstream is `app`) and returns the truths.
pub fn drive_plan(
    rt: &tokio::runtime::Runtime,
    envoy: std::net::SocketAddr,
    app: &crate::support::upstream::Upstream,
) -> Vec<Truth> {
    let plan = crate::support::scenario::plan(true);
    let received = rt.block_on(crate::support::client::drive(envoy, &plan));
    let seen = app.seen();
    plan.into_iter()
        .map(|spec| {
            let at_app = seen
                .iter()
                .find(|s| s.test_id == Some(spec.id))
                .unwrap_or_else(|| panic!("the upstream never saw exchange {}", spec.id))
                .clone();
            let got = received
                .iter()
                .find(|r| r.test_id == spec.id)
                .unwrap_or_else(|| panic!("no response for exchange {}", spec.id))
                .clone();
            Truth {
                spec,
                seen: at_app,
                received: got,
            }
        })
        .collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A raw HTTP/1.1 response with status 200.
pub fn envoy_ok(response: &[u8]) -> bool {
    response.starts_with(b"HTTP/1.1 200")
}
