//! Records of meshtap's own filter ("lua-v2"): exactly one complete, warning-free record per
//! exchange, headers as forwarded, bodies byte-exact up to the filter's cap.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{check_capped_body, check_request_headers, check_response_headers, header_test_id};
use crate::support::{Failures, Run};

pub fn check(ctx: &str, run: &Run, records: &[Value], max_body: usize, failures: &mut Failures) {
    failures.check(records.len() == run.exchanges.len(), || {
        format!(
            "{ctx} {} records for {} exchanges",
            records.len(),
            run.exchanges.len()
        )
    });
    let mut by_id: BTreeMap<u32, Vec<&Value>> = BTreeMap::new();
    for record in records {
        let rid = record["id"].as_str().unwrap_or("?");
        match header_test_id(record) {
            Some(id) => by_id.entry(id).or_default().push(record),
            None => failures.fail(format!(
                "{ctx} record {rid}: no x-test-id in request headers: {}",
                super::clip(record)
            )),
        }
        failures.check(record["complete"] == true, || {
            format!("{ctx} record {rid}: complete is {}", record["complete"])
        });
        failures.check(
            record["warnings"].as_array().is_some_and(Vec::is_empty),
            || format!("{ctx} record {rid}: warnings {}", record["warnings"]),
        );
        failures.check(record["log"]["stream"].is_string(), || {
            format!("{ctx} record {rid}: log.stream {}", record["log"]["stream"])
        });
    }

    for truth in &run.exchanges {
        let id = truth.id();
        let ctx = format!(
            "{ctx} exchange {id} ({} {})",
            truth.spec.method, truth.spec.path
        );
        let found = by_id.get(&id).map(Vec::as_slice).unwrap_or_default();
        if found.len() != 1 {
            failures.fail(format!(
                "{ctx}: {} records (expected exactly one)",
                found.len()
            ));
            continue;
        }
        let record = found[0];
        let request = &record["request"];
        let response = &record["response"];
        if request.is_null() || response.is_null() {
            failures.fail(format!(
                "{ctx}: request or response missing: {}",
                super::clip(record)
            ));
            continue;
        }
        check_request_headers(&format!("{ctx} request"), request, truth, failures);
        check_capped_body(
            &format!("{ctx} request"),
            request,
            &truth.seen.body,
            max_body,
            failures,
        );
        check_response_headers(&format!("{ctx} response"), response, truth, failures);
        check_capped_body(
            &format!("{ctx} response"),
            response,
            &truth.received.body,
            max_body,
            failures,
        );
    }
}
