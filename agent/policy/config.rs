//! The `policy:` section of the configuration, as users write it. These are plain serde types;
//! [`super::Policy::compile`] validates them and turns them into what the stage runs.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::record::Source;

/// The capture policy: which exchanges are delivered, how much of their bodies, and how many.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Rules, evaluated in order: the first rule whose `match` holds decides. An exchange no rule
    /// matches is kept, so the default (no rules) keeps everything.
    pub rules: Vec<RuleConfig>,
    /// Volume limits applied to what the rules keep.
    pub rate_limits: RateLimitsConfig,
}

impl PolicyConfig {
    /// Whether the policy can change anything (no rules and no limits: the stage is left out).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && self.rate_limits.global.is_none()
            && self.rate_limits.per_pod.is_none()
    }
}

/// One rule: a condition and what to do with the exchanges it matches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule in errors, in `truncated_reason` and in the docs of a team's policy.
    pub name: String,
    /// Every condition given must hold; an empty (or absent) `match` matches every exchange.
    #[serde(default, rename = "match")]
    pub when: MatchConfig,
    /// `keep` (the default), `drop`, or `{sample: RATE}` (keep that fraction, 0 to 1).
    #[serde(default)]
    pub action: Action,
    /// Body bytes kept per direction for the exchanges this rule keeps; the rest is cut and
    /// flagged (`body_truncated`, `truncated_reason` naming the rule). 0 keeps headers only.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
}

/// What a rule does with the exchanges it matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Deliver it.
    #[default]
    Keep,
    /// Deliver nothing (counted as `reason="policy"`).
    Drop,
    /// Deliver this fraction (0 to 1), chosen by a hash of the exchange id: the same exchange is
    /// kept or dropped the same way on every replay and restart (dropped ones count as
    /// `reason="sampled"`).
    Sample(f64),
}

/// The conditions of a rule; each one given must hold. A condition on something the record does
/// not carry (no Kubernetes labels, no response, a filter variant that logs no headers) does not
/// hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatchConfig {
    /// The pod's namespace is one of these.
    pub namespace: Vec<String>,
    /// The pod has every one of these labels with exactly this value (filled by the Kubernetes
    /// enrichment; without API access there are no labels and this never holds).
    pub labels: BTreeMap<String, String>,
    /// The workload owning the pod (from the Kubernetes API).
    pub workload: Option<WorkloadMatch>,
    /// The request method is one of these (case-insensitive).
    pub method: Vec<String>,
    /// The request path, without its query string.
    pub path: Option<StringMatch>,
    /// The request's `:authority` (or `host`), without its port, case-insensitive.
    pub host: Option<StringMatch>,
    /// Request headers (lower-case names): each named header is present/absent or has a value
    /// that matches (any of its values, when repeated).
    pub request_headers: BTreeMap<String, HeaderMatch>,
    /// Response headers, as `request_headers`.
    pub response_headers: BTreeMap<String, HeaderMatch>,
    /// The response status is one of these codes (`404`) or ranges (`"500-599"`).
    pub status: Vec<StatusMatch>,
    /// What produced the record: `lua-v1`, `lua-v2`, `tap`, `capture`.
    pub source: Vec<Source>,
}

/// The owning workload: each field given must equal the workload's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadMatch {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, ... (case-insensitive).
    pub kind: Option<String>,
    /// The workload's name.
    pub name: Option<String>,
}

/// How a text is matched: `{exact: ...}`, `{prefix: ...}`, `{suffix: ...}` or `{regex: ...}`
/// (a `regex` crate expression, unanchored: use `^` and `$` to anchor it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(String),
}

/// How a header is matched: `{present: true}` / `{present: false}`, or a value match as
/// [`StringMatch`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderMatch {
    Present(bool),
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(String),
}

/// A status code (`404`) or an inclusive range (`"500-599"`), checked by the matcher.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusMatch {
    Code(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for StatusMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // By hand rather than `untagged`, whose error ("did not match any variant") says nothing.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StatusMatch;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a status code (404) or a range (\"500-599\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusMatch, E> {
                Ok(StatusMatch::Code(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusMatch, E> {
                u64::try_from(v)
                    .map(StatusMatch::Code)
                    .map_err(|_| E::custom(format!("status {v} is outside 100-599")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusMatch, E> {
                Ok(StatusMatch::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Volume limits. Each is a token bucket: the `*_per_second` rate is sustained, the `*_burst`
/// (default: one second's worth) may pass at once. Absent means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// For all exchanges this agent delivers.
    pub global: Option<LimitConfig>,
    /// For each pod (namespace/pod; the log file when the record has no pod identity).
    pub per_pod: Option<PerPodLimitConfig>,
}

/// One limit: exchanges per second, bytes per second, or both (an exchange passes when both allow
/// it).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitConfig {
    /// Exchanges per second, sustained.
    pub exchanges_per_second: Option<f64>,
    /// Exchanges that may pass at once after a quiet period (default: `exchanges_per_second`).
    pub exchanges_burst: Option<f64>,
    /// Body bytes per second (request plus response body, as delivered), sustained.
    pub bytes_per_second: Option<f64>,
    /// Body bytes that may pass at once (default: `bytes_per_second`).
    pub bytes_burst: Option<f64>,
}

/// The per-pod limit: a [`LimitConfig`] per pod, for at most `max_pods` pods at a time.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerPodLimitConfig {
    pub exchanges_per_second: Option<f64>,
    pub exchanges_burst: Option<f64>,
    pub bytes_per_second: Option<f64>,
    pub bytes_burst: Option<f64>,
    /// Pods tracked at once. Idle pods (whose buckets are full again) are forgotten first; past
    /// this, the least recently seen pod is.
    pub max_pods: usize,
}

/// More pods than a node runs (the kubelet's default max is 110), so eviction is the exception.
const fn default_max_pods() -> usize {
    4096
}

impl Default for PerPodLimitConfig {
    fn default() -> Self {
        PerPodLimitConfig {
            exchanges_per_second: None,
            exchanges_burst: None,
            bytes_per_second: None,
            bytes_burst: None,
            max_pods: default_max_pods(),
        }
    }
}

impl PerPodLimitConfig {
    /// The limit each pod gets.
    pub fn limit(&self) -> LimitConfig {
        LimitConfig {
            exchanges_per_second: self.exchanges_per_second,
            exchanges_burst: self.exchanges_burst,
            bytes_per_second: self.bytes_per_second,
            bytes_burst: self.bytes_burst,
        }
    }
}
