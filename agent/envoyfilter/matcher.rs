//! The Envoy matcher that limits the Lua filter to the selected requests.
//!
//! Lua has no regex, and a Lua check would still run the filter for every request. So the Lua
//! filter is wrapped in Envoy's `ExtensionWithMatcher`
//! (`envoy.extensions.common.matching.v3.ExtensionWithMatcher`), whose matcher runs on the request
//! headers: when the request is NOT selected, the action is `SkipFilter`, and Envoy skips the Lua
//! filter for the whole stream, request and response. Paths and methods are read with
//! `HttpRequestHeaderMatchInput` from the `:path` and `:method` pseudo-headers; regexes run in
//! RE2 (`google_re2`), Envoy's only regex engine.

use serde_json::{json, Value};

use super::options::{PathMatch, Selection};

pub const WRAPPER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher";
const SKIP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter";
const HEADER_INPUT_TYPE: &str =
    "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput";

/// The `xds_matcher` of the wrapper: one matcher, "not selected" -> skip the filter; a selected
/// request matches nothing and the filter runs. `None` when every request is selected (no
/// wrapper needed).
pub fn xds_matcher(selection: &Selection) -> Option<Value> {
    let selected = selected(selection)?;
    Some(json!({
        "matcher_list": {
            "matchers": [{
                "predicate": {"not_matcher": selected},
                "on_match": {
                    "action": {
                        "name": "meshtap-skip-unselected",
                        "typed_config": {"@type": SKIP_TYPE}
                    }
                }
            }]
        }
    }))
}

/// The predicate true for a selected request: any path selector, and any method.
fn selected(selection: &Selection) -> Option<Value> {
    let paths: Vec<Value> = selection.paths.iter().flat_map(path_predicates).collect();
    let methods: Vec<Value> = selection
        .methods
        .iter()
        .map(|m| header_predicate(":method", json!({"exact": m})))
        .collect();
    match (any(paths), any(methods)) {
        (Some(paths), Some(methods)) => {
            Some(json!({"and_matcher": {"predicate": [paths, methods]}}))
        }
        (one, None) | (None, one) => one,
    }
}

/// One predicate, or an `or_matcher` of several (Envoy wants at least two in a list).
fn any(mut predicates: Vec<Value>) -> Option<Value> {
    match predicates.len() {
        0 => None,
        1 => predicates.pop(),
        _ => Some(json!({"or_matcher": {"predicate": predicates}})),
    }
}

/// `:path` holds the query string: an exact path also matches when a query follows it, a regex
/// is given an optional query suffix (see [`Selection::envoy_regex`]).
fn path_predicates(path: &PathMatch) -> Vec<Value> {
    match path {
        PathMatch::Exact(p) => vec![
            header_predicate(":path", json!({"exact": p})),
            header_predicate(":path", json!({"prefix": format!("{p}?")})),
        ],
        PathMatch::Prefix(p) => vec![header_predicate(":path", json!({"prefix": p}))],
        PathMatch::Regex(r) => vec![header_predicate(
            ":path",
            json!({"safe_regex": {"google_re2": {}, "regex": Selection::envoy_regex(r)}}),
        )],
    }
}

fn header_predicate(header: &str, value_match: Value) -> Value {
    let input_name = match header {
        ":path" => "request-path",
        _ => "request-method",
    };
    json!({
        "single_predicate": {
            "input": {
                "name": input_name,
                "typed_config": {"@type": HEADER_INPUT_TYPE, "header_name": header}
            },
            "value_match": value_match
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(paths: Vec<PathMatch>, methods: &[&str]) -> Selection {
        Selection {
            paths,
            methods: methods.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn one_prefix_is_a_single_predicate() {
        let m = xds_matcher(&sel(vec![PathMatch::Prefix("/api/".into())], &[])).unwrap();
        let matcher = &m["matcher_list"]["matchers"][0];
        let single = &matcher["predicate"]["not_matcher"]["single_predicate"];
        assert_eq!(single["input"]["typed_config"]["header_name"], ":path");
        assert_eq!(single["value_match"]["prefix"], "/api/");
        assert_eq!(
            matcher["on_match"]["action"]["typed_config"]["@type"],
            SKIP_TYPE
        );
    }

    #[test]
    fn paths_and_methods_combine() {
        let m = xds_matcher(&sel(
            vec![
                PathMatch::Exact("/a".into()),
                PathMatch::Regex("/o/[0-9]+".into()),
            ],
            &["GET", "POST"],
        ))
        .unwrap();
        let and = &m["matcher_list"]["matchers"][0]["predicate"]["not_matcher"]["and_matcher"];
        let paths = and["predicate"][0]["or_matcher"]["predicate"]
            .as_array()
            .unwrap();
        assert_eq!(paths.len(), 3, "exact gives two predicates, regex one");
        assert_eq!(paths[0]["single_predicate"]["value_match"]["exact"], "/a");
        assert_eq!(paths[1]["single_predicate"]["value_match"]["prefix"], "/a?");
        let re = &paths[2]["single_predicate"]["value_match"]["safe_regex"];
        assert_eq!(re["regex"], "(?:/o/[0-9]+)(?:\\?.*)?");
        assert!(re["google_re2"].is_object());
        let methods = and["predicate"][1]["or_matcher"]["predicate"]
            .as_array()
            .unwrap();
        assert_eq!(
            methods[1]["single_predicate"]["value_match"]["exact"],
            "POST"
        );
    }

    #[test]
    fn everything_needs_no_matcher() {
        assert!(xds_matcher(&Selection::default()).is_none());
    }

    #[test]
    fn one_method_alone() {
        let m = xds_matcher(&sel(vec![], &["PUT"])).unwrap();
        let single =
            &m["matcher_list"]["matchers"][0]["predicate"]["not_matcher"]["single_predicate"];
        assert_eq!(single["input"]["typed_config"]["header_name"], ":method");
        assert_eq!(single["value_match"]["exact"], "PUT");
    }
}
