//! Records of the seed article's filters ("lua-v1"). They log raw chunks with no stream id and no
//! sizes, and truncate multi-chunk bodies (the getBytes bug), so meshtap cannot always be exact;
//! what it must never do is be silently wrong:
//! - a record without warnings and without `body_truncated` is exact (bodies byte for byte, and for
//!   the headers variant method, path, status and headers);
//! - a direction flagged `body_truncated` (on a record without warnings) has a `truncated_reason`
//!   and its body is a prefix of the true body (the chunks that were seen);
//! - a record with warnings (attribution uncertain, e.g. under concurrency) claims nothing;
//! - every exchange the filter logs is found in some record (by its test id in a body, or in the
//!   `x-test-id` header for the headers variant), and no record names an exchange it doesn't log;
//! - exchanges sent alone with small bodies come out as exactly one exact, unflagged record;
//! - the requests that reach Envoy in several pieces (the chunked upload, the 200 KiB body) come
//!   out flagged.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{check_request_headers, check_response_headers, clip, header_test_id};
use crate::support::manifests::Filter;
use crate::support::meshtap;
use crate::support::scenario::{find_tokens, BIG_ID, PIECES_ID, SEQUENTIAL_SMALL};
use crate::support::{Failures, Run};

/// The binary exchange: its CR LF cannot survive containerd, its 0xff cannot survive docker, so
/// it is held to "exact or flagged" only, like every other exchange.
const BINARY_ID: u32 = 5;

/// Every test id a record refers to: tokens in either body, `x-test-id` in the request headers.
fn ids_of(record: &Value) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for direction in [&record["request"], &record["response"]] {
        if let Ok(body) = meshtap::body(direction) {
            ids.extend(find_tokens(&body));
        }
    }
    ids.extend(header_test_id(record));
    ids
}

fn warned(record: &Value) -> bool {
    record["warnings"].as_array().is_some_and(|w| !w.is_empty())
}

/// The body-only filter names neither stream nor direction, so meshtap flags every body-only
/// record's pairing as inferred. Such a record may pair directions of different exchanges (it says
/// so), but each direction it holds must still be a real, exactly reassembled body.
const PAIRING_WARNING: &str = "lua-v1 body-only: request and response were paired by the order";

fn only_pairing_warning(record: &Value) -> bool {
    record["warnings"].as_array().is_some_and(|w| {
        !w.is_empty()
            && w.iter()
                .all(|w| w.as_str().is_some_and(|w| w.starts_with(PAIRING_WARNING)))
    })
}

pub fn check(ctx: &str, run: &Run, records: &[Value], failures: &mut Failures) {
    let headers_variant = run.filter == Filter::V1Headers;
    let logs =
        |id: u32| !headers_variant || run.exchange(id).is_some_and(|t| t.spec.has_productpage());
    let mut refs: BTreeMap<u32, Vec<&Value>> = BTreeMap::new();

    for record in records {
        let rid = record["id"].as_str().unwrap_or("?");
        let rctx = format!("{ctx} record {rid}");
        let ids = ids_of(record);
        for id in &ids {
            refs.entry(*id).or_default().push(record);
        }
        for id in &ids {
            failures.check(run.exchange(*id).is_some(), || {
                format!("{rctx}: names exchange {id}, which was never sent")
            });
            failures.check(logs(*id), || {
                format!(
                    "{rctx}: names exchange {id}, which the filter does not log: {}",
                    clip(record)
                )
            });
        }
        if ids.is_empty() {
            failures.check(warned(record), || {
                format!(
                    "{rctx}: no exchange can be identified, yet no warning: {}",
                    clip(record)
                )
            });
            continue;
        }
        if !headers_variant {
            // Every body-only record says its pairing is inferred, and nothing else when the
            // reassembly of each body was clean; each body must then be some exchange's exact body.
            failures.check(only_pairing_warning(record) || warned(record), || {
                format!(
                    "{rctx}: body-only record without the pairing warning: {}",
                    clip(record)
                )
            });
            if only_pairing_warning(record) {
                check_body_only_directions(&rctx, run, record, failures);
            }
            continue;
        }
        if warned(record) {
            continue;
        }
        if ids.len() > 1 {
            failures.fail(format!(
                "{rctx}: mixes exchanges {ids:?} without a warning: {}",
                clip(record)
            ));
            continue;
        }
        let id = *ids.first().unwrap();
        let Some(truth) = run.exchange(id) else {
            continue;
        };
        let ectx = format!(
            "{rctx} (exchange {id}, {} {})",
            truth.spec.method, truth.spec.path
        );
        for (name, direction, true_body) in [
            ("request", &record["request"], &truth.seen.body),
            ("response", &record["response"], &truth.received.body),
        ] {
            if direction.is_null() {
                continue;
            }
            check_body(&format!("{ectx} {name}"), direction, true_body, failures);
            if !headers_variant {
                failures.check(direction["headers"].is_null(), || {
                    format!(
                        "{ectx} {name}: the body-only filter logs no headers, yet headers {}",
                        direction["headers"]
                    )
                });
            }
        }
        if headers_variant {
            if !record["request"].is_null() {
                check_request_headers(
                    &format!("{ectx} request"),
                    &record["request"],
                    truth,
                    failures,
                );
            }
            if !record["response"].is_null() {
                check_response_headers(
                    &format!("{ectx} response"),
                    &record["response"],
                    truth,
                    failures,
                );
            }
        }
    }

    for truth in &run.exchanges {
        let id = truth.id();
        let found = refs.get(&id).map(Vec::as_slice).unwrap_or_default();
        let ectx = format!(
            "{ctx} exchange {id} ({} {})",
            truth.spec.method, truth.spec.path
        );
        if !logs(id) {
            failures.check(found.is_empty(), || {
                format!(
                    "{ectx}: the filter does not log this path, yet {} record(s) name it",
                    found.len()
                )
            });
            continue;
        }
        if found.is_empty() {
            failures.fail(format!("{ectx}: no record names this exchange"));
            continue;
        }
        if SEQUENTIAL_SMALL.contains(&id) && id != BINARY_ID {
            // Sent alone, one chunk per body: exactly one exact, unflagged record.
            if found.len() != 1 {
                failures.fail(format!(
                    "{ectx}: {} records name this exchange (expected one)",
                    found.len()
                ));
                continue;
            }
            let record = found[0];
            let acceptable = if headers_variant {
                !warned(record)
            } else {
                only_pairing_warning(record)
            };
            failures.check(acceptable, || {
                format!(
                    "{ectx}: sequential single-chunk exchange has warnings {}",
                    record["warnings"]
                )
            });
            if !headers_variant {
                // Sent alone: the inferred pairing must be the right one, bodies exact.
                for (name, true_body) in [
                    ("request", &truth.seen.body),
                    ("response", &truth.received.body),
                ] {
                    check_body(
                        &format!("{ectx} {name}"),
                        &record[name],
                        true_body,
                        failures,
                    );
                }
            }
            for name in ["request", "response"] {
                let direction = &record[name];
                failures.check(!direction.is_null(), || {
                    format!("{ectx}: {name} missing: {}", clip(record))
                });
                failures.check(
                    direction.is_null() || direction["body_truncated"] == false,
                    || {
                        format!(
                            "{ectx}: {name} flagged body_truncated ({}) for a single-chunk body",
                            direction["truncated_reason"]
                        )
                    },
                );
            }
        }
        if id == PIECES_ID || id == BIG_ID {
            // Both requests reach the filter in several chunks and the seed's getBytes bug fails
            // on the second: the request must come out flagged.
            let flagged = found
                .iter()
                .any(|r| r["request"]["body_truncated"] == true || warned(r));
            failures.check(flagged, || {
                format!(
                    "{ectx}: the request came in several chunks, yet is not flagged: {}",
                    found
                        .iter()
                        .map(|r| clip(r))
                        .collect::<Vec<_>>()
                        .join(" | ")
                )
            });
        }
    }
}

/// A body-only record whose only warning is the inferred pairing: each direction it holds must be
/// exactly the request or the response body of the exchange its test id names (or a flagged prefix
/// of it, for the getBytes bug), whichever position it was put in.
fn check_body_only_directions(rctx: &str, run: &Run, record: &Value, failures: &mut Failures) {
    for name in ["request", "response"] {
        let direction = &record[name];
        if direction.is_null() {
            continue;
        }
        let Ok(body) = meshtap::body(direction) else {
            failures.fail(format!("{rctx} {name}: unreadable body"));
            continue;
        };
        let ids = find_tokens(&body);
        let Some(id) = ids.first().copied() else {
            continue;
        };
        failures.check(ids.len() == 1, || {
            format!("{rctx} {name}: one body mixes exchanges {ids:?}")
        });
        let Some(truth) = run.exchange(id) else {
            continue;
        };
        let truncated = direction["body_truncated"] == true;
        let matches = |true_body: &[u8]| {
            body == true_body || (truncated && !body.is_empty() && true_body.starts_with(&body))
        };
        failures.check(
            matches(&truth.seen.body) || matches(&truth.received.body),
            || {
                format!(
                    "{rctx} {name}: body of exchange {id} is neither its request nor its response: {}",
                    clip(record)
                )
            },
        );
    }
}

/// A v1 body is exact, or flagged truncated with a reason and a prefix of the true body.
fn check_body(ctx: &str, direction: &Value, truth: &[u8], failures: &mut Failures) {
    let body = match meshtap::body(direction) {
        Ok(body) => body,
        Err(e) => return failures.fail(format!("{ctx}: {e}")),
    };
    if direction["body_truncated"] == true {
        failures.check(
            direction["truncated_reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            || format!("{ctx}: body_truncated without truncated_reason"),
        );
        failures.check(truth.starts_with(&body), || {
            format!("{ctx}: truncated body is not a prefix of the true body:\n      logged {}\n      true   {}", meshtap::show(&body), meshtap::show(truth))
        });
    } else {
        failures.check(body == truth, || {
            format!(
                "{ctx}: unflagged body is not exact:\n      logged {}\n      true   {}",
                meshtap::show(&body),
                meshtap::show(truth)
            )
        });
    }
}
