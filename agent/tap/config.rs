//! The tap configuration meshtap posts to Envoy's admin `/tap` endpoint: which streams to tap
//! (a `match` built from command-line rules) and how (buffer limits, `JSON_BODY_AS_BYTES` to a
//! streaming admin sink).

use serde_json::{json, Value};

/// Envoy's own default for `max_buffered_rx_bytes` / `max_buffered_tx_bytes` is 1 KiB, which cuts
/// most API bodies; meshtap asks for 1 MiB per direction unless told otherwise.
pub const DEFAULT_MAX_BUFFERED_BYTES: u32 = 1024 * 1024;

/// The tap filter's `config_id` in meshtap's EnvoyFilter (`deploy/envoyfilter-tap.yaml`).
pub const DEFAULT_CONFIG_ID: &str = "meshtap";

/// Which streams to tap. Empty rules tap everything; several rules must all hold (AND), and
/// several `methods` are alternatives (OR).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchRules {
    /// `:path` equal to this (Envoy's `:path` includes the query string).
    pub path_exact: Option<String>,
    /// `:path` starting with this.
    pub path_prefix: Option<String>,
    /// `:method` is one of these.
    pub methods: Vec<String>,
    /// Request headers that must be present (`None`) or equal a value (`Some`).
    pub headers: Vec<(String, Option<String>)>,
}

impl MatchRules {
    /// Parses a `--header NAME[=VALUE]` rule.
    pub fn parse_header(rule: &str) -> Result<(String, Option<String>), String> {
        let (name, value) = match rule.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (rule, None),
        };
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(format!("expected NAME or NAME=VALUE, got {rule:?}"));
        }
        Ok((name, value))
    }

    /// The `match` field of a `config.tap.v3.TapConfig` (a `config.common.matcher.v3.MatchPredicate`).
    pub fn to_predicate(&self) -> Value {
        let header = |name: &str, string_match: Value| {
            json!({"http_request_headers_match": {"headers": [
                {"name": name, "string_match": string_match}
            ]}})
        };
        let mut rules = Vec::new();
        if let Some(path) = &self.path_exact {
            rules.push(header(":path", json!({"exact": path})));
        }
        if let Some(prefix) = &self.path_prefix {
            rules.push(header(":path", json!({"prefix": prefix})));
        }
        match self.methods.as_slice() {
            [] => {}
            [one] => rules.push(header(":method", json!({"exact": one}))),
            many => rules.push(json!({"or_match": {"rules": many
                .iter()
                .map(|m| header(":method", json!({"exact": m})))
                .collect::<Vec<_>>()}})),
        }
        for (name, value) in &self.headers {
            rules.push(match value {
                Some(value) => header(name, json!({"exact": value})),
                None => json!({"http_request_headers_match": {"headers": [
                    {"name": name, "present_match": true}
                ]}}),
            });
        }
        match rules.len() {
            0 => json!({"any_match": true}),
            1 => rules.pop().expect("one rule"),
            _ => json!({"and_match": {"rules": rules}}),
        }
    }
}

/// Everything that goes into one admin `/tap` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapRequest {
    /// The tap filter's `admin_config.config_id` in the Envoy being tapped.
    pub config_id: String,
    pub rules: MatchRules,
    /// Request body bytes Envoy buffers per stream before it cuts and sets `truncated`.
    pub max_buffered_rx_bytes: u32,
    /// Response body bytes Envoy buffers per stream.
    pub max_buffered_tx_bytes: u32,
}

impl Default for TapRequest {
    fn default() -> Self {
        TapRequest {
            config_id: DEFAULT_CONFIG_ID.to_string(),
            rules: MatchRules::default(),
            max_buffered_rx_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            max_buffered_tx_bytes: DEFAULT_MAX_BUFFERED_BYTES,
        }
    }
}

impl TapRequest {
    /// The `admin.v3.TapRequest` body, as JSON (Envoy's admin takes JSON or YAML).
    pub fn to_json(&self) -> Value {
        json!({
            "config_id": self.config_id,
            "tap_config": {
                "match": self.rules.to_predicate(),
                "output_config": {
                    "sinks": [{"format": "JSON_BODY_AS_BYTES", "streaming_admin": {}}],
                    "max_buffered_rx_bytes": self.max_buffered_rx_bytes,
                    "max_buffered_tx_bytes": self.max_buffered_tx_bytes,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rules_tap_everything() {
        let body = TapRequest::default().to_json();
        assert_eq!(body["config_id"], "meshtap");
        assert_eq!(body["tap_config"]["match"], json!({"any_match": true}));
        let output = &body["tap_config"]["output_config"];
        assert_eq!(output["sinks"][0]["format"], "JSON_BODY_AS_BYTES");
        assert_eq!(output["sinks"][0]["streaming_admin"], json!({}));
        assert_eq!(output["max_buffered_rx_bytes"], 1048576);
    }

    #[test]
    fn rules_are_anded_and_methods_ored() {
        let rules = MatchRules {
            path_prefix: Some("/api/".into()),
            methods: vec!["GET".into(), "POST".into()],
            headers: vec![
                MatchRules::parse_header("X-Tenant=blue").unwrap(),
                MatchRules::parse_header("x-debug").unwrap(),
            ],
            ..Default::default()
        };
        let p = rules.to_predicate();
        let and = p["and_match"]["rules"].as_array().unwrap();
        assert_eq!(and.len(), 4);
        assert_eq!(
            and[0]["http_request_headers_match"]["headers"][0],
            json!({"name": ":path", "string_match": {"prefix": "/api/"}})
        );
        assert_eq!(and[1]["or_match"]["rules"].as_array().unwrap().len(), 2);
        assert_eq!(
            and[2]["http_request_headers_match"]["headers"][0],
            json!({"name": "x-tenant", "string_match": {"exact": "blue"}})
        );
        assert_eq!(
            and[3]["http_request_headers_match"]["headers"][0]["present_match"],
            true
        );
        let one = MatchRules {
            path_exact: Some("/x".into()),
            ..Default::default()
        };
        assert_eq!(
            one.to_predicate()["http_request_headers_match"]["headers"][0]["string_match"],
            json!({"exact": "/x"})
        );
    }

    #[test]
    fn bad_header_rules_are_refused() {
        for bad in ["", "=x", "a b=c"] {
            assert!(MatchRules::parse_header(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            MatchRules::parse_header("a=b=c").unwrap(),
            ("a".into(), Some("b=c".into()))
        );
    }
}
