//! The capture policy: one stage between assembly and the sinks that decides which exchanges are
//! delivered, how much of their bodies, and how many per second. See `docs/policy.md`.
//!
//! - [`config`]: the `policy:` section as users write it ([`PolicyConfig`]);
//! - [`matcher`]: a rule's `match`, compiled (regexes built, only the given conditions, cheapest
//!   first) so that matching allocates nothing;
//! - [`sample`]: deterministic sampling by exchange id;
//! - [`ratelimit`]: token buckets, global and per pod, in exchanges and bytes per second.
//!
//! [`Policy::compile`] validates everything at startup (bad regex, impossible range, rate out of
//! range: an error naming the rule and the field); [`PolicyStage`] runs it on every exchange.
//! Rules are tried in order and the first whose `match` holds decides: `keep` (optionally cutting
//! bodies to the rule's `max_body_bytes`), `drop`, or `sample`. No rule matching means keep. What
//! is kept then passes the rate limits.

pub mod config;
pub mod matcher;
pub mod ratelimit;
pub mod sample;

pub use config::{
    Action, HeaderMatch, LimitConfig, MatchConfig, PerPodLimitConfig, PolicyConfig,
    RateLimitsConfig, RuleConfig, StatusMatch, StringMatch, WorkloadMatch,
};
pub use ratelimit::{Clock, MonotonicClock, RateLimiter};

use crate::record::{Direction, Exchange};
use crate::stage::{Stage, Verdict};
use matcher::Matcher;
use sample::Sampler;

/// A drop rule matched.
pub const DROP_POLICY: &str = "policy";
/// A sample rule left the exchange out.
pub const DROP_SAMPLED: &str = "sampled";
/// A global or per-pod rate limit was reached.
pub const DROP_RATE_LIMITED: &str = "rate_limited";

/// The policy is invalid; the message names the rule (index and name) and the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

#[derive(Debug)]
enum Decision {
    Keep,
    Drop,
    Sample(Sampler),
}

#[derive(Debug)]
struct Rule {
    matcher: Matcher,
    decision: Decision,
    max_body_bytes: Option<usize>,
    /// `truncated_reason` for the bodies this rule cuts, made once.
    truncated_reason: String,
}

/// A validated, compiled policy.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    limiter: Option<RateLimiter>,
}

impl Policy {
    /// Validates `c` and compiles it.
    pub fn compile(c: &PolicyConfig) -> Result<Policy, PolicyError> {
        let mut rules = Vec::with_capacity(c.rules.len());
        for (i, r) in c.rules.iter().enumerate() {
            let at = |message: String| {
                PolicyError(format!("policy.rules[{i}] ({:?}): {message}", r.name))
            };
            if r.name.trim().is_empty() {
                return Err(PolicyError(format!(
                    "policy.rules[{i}]: name must not be empty"
                )));
            }
            if let Some(j) = c.rules[..i].iter().position(|o| o.name == r.name) {
                return Err(at(format!(
                    "the name is also used by policy.rules[{j}]; names must be unique"
                )));
            }
            let matcher = Matcher::compile(&r.when).map_err(at)?;
            let decision = match r.action {
                Action::Keep => Decision::Keep,
                Action::Drop => Decision::Drop,
                Action::Sample(rate) => {
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(at(format!(
                            "action.sample must be between 0 and 1, got {rate}"
                        )));
                    }
                    Decision::Sample(Sampler::new(rate))
                }
            };
            if matches!(decision, Decision::Drop) && r.max_body_bytes.is_some() {
                return Err(at(
                    "max_body_bytes has no effect on a rule whose action is drop".to_string(),
                ));
            }
            rules.push(Rule {
                matcher,
                decision,
                max_body_bytes: r.max_body_bytes,
                truncated_reason: format!(
                    "policy rule {:?} max_body_bytes ({})",
                    r.name,
                    r.max_body_bytes.unwrap_or(0)
                ),
            });
        }
        let limiter = RateLimiter::compile(&c.rate_limits).map_err(PolicyError)?;
        Ok(Policy { rules, limiter })
    }
}

/// The policy as a [`Stage`].
pub struct PolicyStage {
    policy: Policy,
    clock: Box<dyn Clock>,
    /// Rate-limited drops since the last warning, and when that was: the agent's log says that
    /// limits are shedding traffic at most once a minute (the metric counts every drop).
    limited: u64,
    last_warning: Option<u64>,
}

/// Nanoseconds between two warnings about rate-limited drops.
const WARN_EVERY: u64 = 60_000_000_000;

impl PolicyStage {
    /// The stage for `c`, on the real clock.
    pub fn new(c: &PolicyConfig) -> Result<PolicyStage, PolicyError> {
        Self::with_clock(c, Box::new(MonotonicClock::default()))
    }

    /// The stage for `c`, with rate limits on `clock` (tests drive time by hand).
    pub fn with_clock(c: &PolicyConfig, clock: Box<dyn Clock>) -> Result<PolicyStage, PolicyError> {
        Ok(PolicyStage {
            policy: Policy::compile(c)?,
            clock,
            limited: 0,
            last_warning: None,
        })
    }
}

impl Stage for PolicyStage {
    fn process(&mut self, ex: &mut Exchange) -> Verdict {
        if let Some(rule) = self.policy.rules.iter().find(|r| r.matcher.matches(ex)) {
            match &rule.decision {
                Decision::Drop => return Verdict::Drop(DROP_POLICY),
                Decision::Sample(s) if !s.keeps(&ex.id) => return Verdict::Drop(DROP_SAMPLED),
                Decision::Sample(_) | Decision::Keep => {}
            }
            if let Some(max) = rule.max_body_bytes {
                for d in [&mut ex.request, &mut ex.response].into_iter().flatten() {
                    cut_body(d, max, &rule.truncated_reason);
                }
            }
        }
        if let Some(limiter) = &mut self.policy.limiter {
            let now = self.clock.now_nanos();
            if !limiter.admit(ratelimit::pod_key(ex), ratelimit::body_bytes(ex), now) {
                self.limited += 1;
                if self
                    .last_warning
                    .is_none_or(|last| now.saturating_sub(last) >= WARN_EVERY)
                {
                    tracing::warn!(
                        dropped = self.limited,
                        "Capture rate limit reached: exchanges over policy.rate_limits are \
                         dropped (meshtap_exchanges_dropped_total{{reason=\"rate_limited\"}})."
                    );
                    self.last_warning = Some(now);
                    self.limited = 0;
                }
                return Verdict::Drop(DROP_RATE_LIMITED);
            }
        }
        Verdict::Keep
    }
}

/// Cuts `d`'s body to `max` bytes (up to 3 fewer when that keeps a UTF-8 text from ending inside
/// a character, so it stays text in the record), flagging it; `body_size` stays the true size.
fn cut_body(d: &mut Direction, max: usize, reason: &str) {
    if d.body.len() <= max {
        return;
    }
    let mut end = max;
    if let Err(e) = std::str::from_utf8(&d.body[..max]) {
        // Valid up to a character cut short at the end: drop the partial character.
        if e.error_len().is_none() && max - e.valid_up_to() < 4 {
            end = e.valid_up_to();
        }
    }
    d.body.truncate(end);
    d.body_truncated = true;
    // This cut is tighter than any made at assembly: it is the reason to report.
    d.truncated_reason = Some(reason.to_string());
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::record::{Headers, K8sMeta, LogPosition, Source, Workload};

    fn headers(list: &[(&str, &str)]) -> Option<Headers> {
        let mut h = Headers::new();
        for (k, v) in list {
            h.entry(k.to_string()).or_default().push(v.to_string());
        }
        Some(h)
    }

    /// A POST to the payments service of the shop namespace, answered 503.
    fn exchange() -> Exchange {
        Exchange {
            id: "9f2c41d07a3e55b1-1234".into(),
            source: Source::LuaV2,
            time: "2026-11-25T08:47:45.772Z".into(),
            k8s: Some(K8sMeta {
                namespace: "shop".into(),
                pod: "payments-7d9f8-abcde".into(),
                pod_uid: "uid".into(),
                container: "istio-proxy".into(),
                labels: BTreeMap::from([
                    ("app".to_string(), "payments".to_string()),
                    ("version".to_string(), "v2".to_string()),
                ]),
                workload: Some(Workload {
                    kind: "Deployment".into(),
                    name: "payments".into(),
                }),
                ..K8sMeta::default()
            }),
            log: LogPosition {
                file: "/var/log/pods/shop_payments/istio-proxy/0.log".into(),
                ..LogPosition::default()
            },
            request: Some(Direction {
                method: Some("POST".into()),
                path: Some("/api/v2/charge?debug=1".into()),
                authority: Some("Payments.shop.svc.cluster.local:8080".into()),
                headers: headers(&[
                    (":method", "POST"),
                    ("content-type", "application/json; charset=utf-8"),
                    ("x-multi", "one"),
                    ("x-multi", "two"),
                ]),
                body: b"{\"card\":\"4111\"}".to_vec(),
                body_size: 15,
                ..Direction::default()
            }),
            response: Some(Direction {
                status: Some(503),
                headers: headers(&[(":status", "503"), ("retry-after", "5")]),
                body: "réponse refusée".as_bytes().to_vec(),
                body_size: 17,
                ..Direction::default()
            }),
            complete: true,
            warnings: vec![],
            redacted: vec![],
        }
    }

    fn matcher(yaml: &str) -> Matcher {
        let m: MatchConfig = serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        Matcher::compile(&m).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn every_match_field() {
        let ex = exchange();
        let table: &[(&str, bool)] = &[
            ("{}", true),
            ("namespace: [shop]", true),
            ("namespace: [dev, shop]", true),
            ("namespace: [dev]", false),
            ("labels: {app: payments}", true),
            ("labels: {app: payments, version: v2}", true),
            ("labels: {app: payments, version: v1}", false),
            ("labels: {team: x}", false),
            ("workload: {kind: Deployment}", true),
            ("workload: {kind: deployment, name: payments}", true),
            ("workload: {kind: StatefulSet}", false),
            ("workload: {name: reviews}", false),
            ("method: [POST]", true),
            ("method: [get, post]", true),
            ("method: [GET]", false),
            ("method: [M-SEARCH, POST]", true),
            ("path: {exact: /api/v2/charge}", true),
            ("path: {exact: \"/api/v2/charge?debug=1\"}", false),
            ("path: {prefix: /api/}", true),
            ("path: {prefix: /healthz}", false),
            ("path: {suffix: /charge}", true),
            ("path: {regex: \"^/api/v[0-9]+/charge$\"}", true),
            ("path: {regex: \"^/api/v1/\"}", false),
            ("host: {exact: payments.shop.svc.cluster.local}", true),
            ("host: {exact: payments}", false),
            ("host: {suffix: .svc.cluster.local}", true),
            ("host: {prefix: PAYMENTS.}", true),
            ("host: {regex: \"^payments\\\\.\"}", false),
            ("host: {regex: \"(?i)^payments\\\\.\"}", true),
            (
                "request_headers: {content-type: {prefix: application/json}}",
                true,
            ),
            ("request_headers: {Content-Type: {present: true}}", true),
            ("request_headers: {authorization: {present: false}}", true),
            ("request_headers: {authorization: {present: true}}", false),
            ("request_headers: {x-multi: {exact: two}}", true),
            ("request_headers: {x-multi: {exact: three}}", false),
            (
                "request_headers: {content-type: {regex: \"charset=utf-8$\"}}",
                true,
            ),
            ("request_headers: {content-type: {suffix: xml}}", false),
            ("response_headers: {retry-after: {exact: \"5\"}}", true),
            ("response_headers: {content-type: {present: true}}", false),
            ("status: [503]", true),
            ("status: [\"503\"]", true),
            ("status: [\"500-599\"]", true),
            ("status: [200, \"400-499\"]", false),
            ("source: [lua-v2]", true),
            ("source: [lua-v1, tap, capture]", false),
            // All conditions must hold.
            (
                "{namespace: [shop], method: [POST], status: [\"500-599\"]}",
                true,
            ),
            (
                "{namespace: [shop], method: [GET], status: [\"500-599\"]}",
                false,
            ),
        ];
        for (yaml, want) in table {
            assert_eq!(matcher(yaml).matches(&ex), *want, "match {yaml}");
        }
    }

    #[test]
    fn conditions_on_what_the_record_lacks_do_not_hold() {
        // A v1 body-only record: no pod metadata from the API, no headers, no response.
        let mut ex = exchange();
        ex.k8s.as_mut().unwrap().labels.clear();
        ex.k8s.as_mut().unwrap().workload = None;
        let req = ex.request.as_mut().unwrap();
        (req.method, req.path, req.authority, req.headers) = (None, None, None, None);
        ex.response = None;
        for yaml in [
            "labels: {app: payments}",
            "workload: {kind: Deployment}",
            "method: [POST]",
            "path: {prefix: /}",
            "host: {regex: \"\"}",
            "request_headers: {authorization: {present: false}}",
            "response_headers: {x: {present: false}}",
            "status: [\"100-599\"]",
        ] {
            assert!(!matcher(yaml).matches(&ex), "match {yaml}");
        }
        ex.k8s = None;
        assert!(!matcher("namespace: [shop]").matches(&ex));
        assert!(matcher("{}").matches(&ex));
        assert!(matcher("source: [lua-v2]").matches(&ex));
    }

    #[test]
    fn pseudo_headers_stand_in_for_unlifted_fields() {
        let mut ex = exchange();
        let req = ex.request.as_mut().unwrap();
        (req.method, req.path, req.authority) = (None, None, None);
        req.headers = headers(&[
            (":method", "GET"),
            (":path", "/x?q"),
            ("host", "a.example:80"),
        ]);
        assert!(matcher("method: [GET]").matches(&ex));
        assert!(matcher("path: {exact: /x}").matches(&ex));
        assert!(matcher("host: {exact: a.example}").matches(&ex));
        ex.response.as_mut().unwrap().status = None;
        assert!(matcher("status: [503]").matches(&ex), "from :status");
        ex.response.as_mut().unwrap().headers = None;
        assert!(!matcher("status: [503]").matches(&ex));
    }

    #[test]
    fn host_port_is_stripped_but_not_from_ipv6() {
        for (authority, want) in [
            ("reviews:9080", "reviews"),
            ("reviews", "reviews"),
            ("[::1]:80", "[::1]"),
            ("::1", "::1"),
            ("host:", "host:"),
        ] {
            assert_eq!(matcher::without_port(authority), want);
        }
    }

    fn policy(yaml: &str) -> PolicyStage {
        let c: PolicyConfig =
            serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        PolicyStage::with_clock(&c, Box::new(ManualClock::default()))
            .unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn verdict(stage: &mut PolicyStage, ex: &Exchange) -> Verdict {
        stage.process(&mut ex.clone())
    }

    #[test]
    fn actions_and_first_match_wins() {
        let ex = exchange();
        let table: &[(&str, Verdict)] = &[
            ("rules: []", Verdict::Keep),
            (
                "rules: [{name: a, match: {namespace: [dev]}, action: drop}]",
                Verdict::Keep,
            ),
            ("rules: [{name: a, action: drop}]", Verdict::Drop("policy")),
            (
                "rules: [{name: a, match: {method: [POST]}, action: drop}]",
                Verdict::Drop("policy"),
            ),
            (
                "rules: [{name: a, action: keep}, {name: b, action: drop}]",
                Verdict::Keep,
            ),
            ("rules: [{name: a}, {name: b, action: drop}]", Verdict::Keep),
            (
                "rules: [{name: a, match: {method: [GET]}}, {name: b, action: drop}]",
                Verdict::Drop("policy"),
            ),
            (
                "rules: [{name: a, action: {sample: 0}}]",
                Verdict::Drop("sampled"),
            ),
            ("rules: [{name: a, action: {sample: 1}}]", Verdict::Keep),
            (
                "rules: [{name: a, action: {sample: 0}}, {name: b, action: keep}]",
                Verdict::Drop("sampled"),
            ),
        ];
        for (yaml, want) in table {
            assert_eq!(verdict(&mut policy(yaml), &ex), *want, "{yaml}");
        }
    }

    #[test]
    fn sampling_follows_the_id() {
        let mut stage = policy("rules: [{name: s, action: {sample: 0.5}}]");
        let mut kept = 0;
        for i in 0..10_000 {
            let mut ex = exchange();
            ex.id = format!("9f2c41d07a3e55b1-{i}");
            let v = verdict(&mut stage, &ex);
            assert_eq!(v, verdict(&mut stage, &ex), "same id, same decision");
            assert_eq!(v == Verdict::Keep, sample::position(&ex.id) < 0.5);
            kept += usize::from(v == Verdict::Keep);
        }
        assert!((4800..=5200).contains(&kept), "{kept}");
    }

    #[test]
    fn body_limits_cut_and_flag_what_the_rule_keeps() {
        let mut stage = policy(
            "rules:\n- {name: tiny, match: {status: [503]}, max_body_bytes: 4}\n- {name: none, max_body_bytes: 0}\n",
        );
        let mut ex = exchange();
        ex.request
            .as_mut()
            .unwrap()
            .truncate("body exceeded meshtap's max_body_bytes (15)");
        assert_eq!(stage.process(&mut ex), Verdict::Keep);
        let (rq, rs) = (ex.request.as_ref().unwrap(), ex.response.as_ref().unwrap());
        assert_eq!(rq.body, b"{\"ca");
        assert_eq!(rq.body_size, 15, "body_size stays the true size");
        assert!(rq.body_truncated);
        assert_eq!(
            rq.truncated_reason.as_deref(),
            Some("policy rule \"tiny\" max_body_bytes (4)")
        );
        // "réponse": 'é' is two bytes (1..3); 4 bytes end after it, 2 would cut it: cut before.
        assert_eq!(rs.body, "rép".as_bytes());
        assert_eq!(rs.body_size, 17);

        let mut ex = exchange();
        ex.response.as_mut().unwrap().status = Some(200);
        stage.process(&mut ex);
        assert!(ex.request.as_ref().unwrap().body.is_empty());
        assert!(ex.response.as_ref().unwrap().body_truncated);

        // Bodies within the limit are untouched.
        let mut stage = policy("rules: [{name: big, max_body_bytes: 100}]");
        let mut ex = exchange();
        stage.process(&mut ex);
        assert_eq!(ex, exchange());

        // A partial character at the cut is dropped, a text body stays text.
        let mut d = Direction {
            body: "aé".as_bytes().to_vec(),
            ..Direction::default()
        };
        cut_body(&mut d, 2, "r");
        assert_eq!(d.body, b"a");
        // Binary bodies are cut exactly.
        let mut d = Direction {
            body: vec![0xff, 0xfe, 0xc3, 0xa9],
            ..Direction::default()
        };
        cut_body(&mut d, 3, "r");
        assert_eq!(d.body, [0xff, 0xfe, 0xc3]);
    }

    /// A clock the test moves by hand.
    #[derive(Default, Clone)]
    struct ManualClock(Arc<AtomicU64>);
    impl Clock for ManualClock {
        fn now_nanos(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn rate_limits_apply_to_what_the_rules_keep() {
        let c: PolicyConfig = serde_saphyr::from_str(
            "rules: [{name: health, match: {path: {prefix: /healthz}}, action: drop}]\n\
             rate_limits:\n  global: {exchanges_per_second: 4}\n  per_pod: {exchanges_per_second: 1, exchanges_burst: 2}\n",
        )
        .unwrap();
        let clock = ManualClock::default();
        let mut stage = PolicyStage::with_clock(&c, Box::new(clock.clone())).unwrap();
        let mut health = exchange();
        health.request.as_mut().unwrap().path = Some("/healthz".into());
        let pod = |name: &str| {
            let mut ex = exchange();
            ex.k8s.as_mut().unwrap().pod = name.into();
            ex
        };
        let run = |stage: &mut PolicyStage, ex: &Exchange, n: usize| {
            (0..n).map(|_| verdict(stage, ex)).collect::<Vec<_>>()
        };
        let (keep, limited) = (Verdict::Keep, Verdict::Drop("rate_limited"));
        assert_eq!(run(&mut stage, &pod("a"), 3), [keep, keep, limited]);
        assert_eq!(
            run(&mut stage, &health, 5),
            [Verdict::Drop("policy"); 5],
            "dropped first, not counted"
        );
        assert_eq!(
            run(&mut stage, &pod("b"), 3),
            [keep, keep, limited],
            "global: 4 of 4 used"
        );
        assert_eq!(
            run(&mut stage, &pod("c"), 1),
            [limited],
            "global burst spent"
        );
        clock.0.store(1_000_000_000, Ordering::Relaxed);
        assert_eq!(run(&mut stage, &pod("c"), 3), [keep, keep, limited]);
        assert_eq!(run(&mut stage, &pod("a"), 2), [keep, limited]);
    }

    #[test]
    fn shipped_example_policy_loads_and_decides_as_its_comments_say() {
        let c = crate::config::Config::from_yaml(include_str!("../../config/meshtap-policy.yaml"))
            .unwrap();
        assert_eq!(c.sink.name(), "file");
        assert_eq!(c.policy.rules.len(), 10);
        let mut stage =
            PolicyStage::with_clock(&c.policy, Box::new(ManualClock::default())).unwrap();
        let with = |f: &dyn Fn(&mut Exchange)| {
            let mut ex = exchange();
            f(&mut ex);
            ex
        };
        // The base exchange: payments, 503 -> payments-errors keeps it whole (bodies < 64 KiB).
        let mut ex = exchange();
        assert_eq!(stage.process(&mut ex), Verdict::Keep);
        assert_eq!(ex, exchange());
        let probe = with(&|ex| ex.request.as_mut().unwrap().path = Some("/healthz".into()));
        assert_eq!(verdict(&mut stage, &probe), Verdict::Drop("policy"));
        let system = with(&|ex| ex.k8s.as_mut().unwrap().namespace = "kube-system".into());
        assert_eq!(verdict(&mut stage, &system), Verdict::Drop("policy"));
        // payments-json: 200 with a big JSON body -> cut at 4096.
        let mut ok = with(&|ex| {
            ex.response.as_mut().unwrap().status = Some(200);
            ex.request.as_mut().unwrap().body = vec![b'{'; 10_000];
        });
        assert_eq!(stage.process(&mut ok), Verdict::Keep);
        assert_eq!(ok.request.as_ref().unwrap().body.len(), 4096);
        assert_eq!(
            ok.request.as_ref().unwrap().truncated_reason.as_deref(),
            Some("policy rule \"payments-json\" max_body_bytes (4096)")
        );
        // Catalog reads: about one in ten.
        let mut kept = 0;
        for i in 0..2000 {
            let mut ex = with(&|ex| {
                ex.k8s.as_mut().unwrap().labels.clear();
                let rq = ex.request.as_mut().unwrap();
                rq.method = Some("GET".into());
                rq.path = Some("/api/v1/catalog/items".into());
                ex.response.as_mut().unwrap().status = Some(200);
            });
            ex.id = format!("x-{i}");
            kept += usize::from(stage.process(&mut ex) == Verdict::Keep);
        }
        assert!((150..=250).contains(&kept), "{kept}");
    }

    fn invalid(yaml: &str) -> String {
        match crate::config::Config::from_yaml(yaml) {
            Ok(_) => panic!("{yaml}: accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn invalid_policies_are_clear_errors() {
        let table: &[(&str, &[&str])] = &[
            (
                "policy:\n  rules:\n  - name: ok\n  - name: bad\n    match: {path: {regex: \"^/api/(v1\"}}\n",
                &["policy.rules[1] (\"bad\")", "match.path.regex", "invalid regex \"^/api/(v1\""],
            ),
            (
                "policy:\n  rules:\n  - name: r\n    match: {request_headers: {x: {regex: \"[\"}}}\n",
                &["policy.rules[0] (\"r\")", "match.request_headers.x.regex", "invalid regex"],
            ),
            ("policy:\n  rules:\n  - name: r\n    match: {pathh: {exact: /}}\n", &["pathh"]),
            ("policy:\n  rules:\n  - name: r\n    match: {path: {contains: /}}\n", &["contains"]),
            ("policy:\n  rules:\n  - name: r\n    action: delete\n", &["delete"]),
            ("policy:\n  rules:\n  - match: {}\n", &["name"]),
            ("policy:\n  rule: []\n", &["rule"]),
            (
                "policy:\n  rules:\n  - name: r\n    match: {status: [\"599-500\"]}\n",
                &["policy.rules[0] (\"r\")", "match.status[0]", "\"599-500\" is empty"],
            ),
            (
                "policy:\n  rules:\n  - name: r\n    match: {status: [200, 700]}\n",
                &["match.status[1]", "700 is outside 100-599"],
            ),
            ("policy:\n  rules:\n  - name: r\n    match: {status: [\"5xx\"]}\n", &["\"5xx\" is not a status code"]),
            (
                "policy:\n  rules:\n  - name: r\n    action: {sample: 1.5}\n",
                &["policy.rules[0] (\"r\")", "action.sample must be between 0 and 1, got 1.5"],
            ),
            ("policy:\n  rules:\n  - name: r\n    action: {sample: -0.1}\n", &["action.sample"]),
            ("policy:\n  rules:\n  - name: r\n    action: drop\n    max_body_bytes: 10\n", &["max_body_bytes has no effect"]),
            ("policy:\n  rules:\n  - name: a\n  - name: a\n", &["policy.rules[1] (\"a\")", "also used by policy.rules[0]"]),
            ("policy:\n  rules:\n  - name: \"\"\n", &["policy.rules[0]: name must not be empty"]),
            ("policy:\n  rules:\n  - name: r\n    match: {method: [\"GET /\"]}\n", &["match.method[0]", "is not an HTTP method"]),
            ("policy:\n  rules:\n  - name: r\n    match: {source: [envoy]}\n", &["envoy"]),
            ("policy:\n  rules:\n  - name: r\n    match: {workload: {}}\n", &["match.workload: give kind, name or both"]),
            (
                "policy:\n  rate_limits:\n    global: {exchanges_per_second: 0}\n",
                &["policy.rate_limits.global.exchanges_per_second must be a number greater than 0"],
            ),
            (
                "policy:\n  rate_limits:\n    per_pod: {bytes_per_second: 100, bytes_burst: 0}\n",
                &["policy.rate_limits.per_pod.bytes_burst must be at least 1"],
            ),
            ("policy:\n  rate_limits:\n    per_pod: {exchanges_per_secnd: 1}\n", &["exchanges_per_secnd"]),
        ];
        for (yaml, wants) in table {
            let e = invalid(yaml);
            for want in *wants {
                assert!(e.contains(want), "{yaml}\n-> {e}\nshould contain {want:?}");
            }
        }
    }
}
