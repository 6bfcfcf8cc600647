use super::*;
use crate::record::{Headers, Source};

const KEY: &str = "0123456789abcdef-test-key";

fn headers(pairs: &[(&str, &str)]) -> Headers {
    let mut h = Headers::new();
    for (n, v) in pairs {
        h.entry(n.to_string()).or_default().push(v.to_string());
    }
    h
}

pub(super) fn exchange(request: Direction, response: Direction) -> Exchange {
    Exchange {
        id: "x".into(),
        source: Source::LuaV2,
        time: "t".into(),
        k8s: None,
        log: Default::default(),
        request: Some(request),
        response: Some(response),
        complete: true,
        warnings: vec![],
        redacted: vec![],
    }
}

fn body_direction(content_type: &str, body: &[u8]) -> Direction {
    Direction {
        headers: Some(headers(&[("content-type", content_type)])),
        body: body.to_vec(),
        body_size: body.len() as u64,
        ..Default::default()
    }
}

fn stage(config: RedactionConfig) -> Redaction {
    config.compile().unwrap()
}

fn hash_config() -> RedactionConfig {
    let path = std::env::temp_dir().join(format!("meshtap-redact-key-{}", std::process::id()));
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    RedactionConfig {
        mode: RedactionMode::Hash,
        hash_key_file: Some(path),
        ..Default::default()
    }
}

fn run(config: RedactionConfig, ex: Exchange) -> Exchange {
    let mut ex = ex;
    stage(config).process(&mut ex);
    ex
}

fn body_text(d: &Option<Direction>) -> String {
    String::from_utf8_lossy(&d.as_ref().unwrap().body).into_owned()
}

#[test]
fn authorization_keeps_its_scheme() {
    let r = Replacer::Mask;
    let v = |name, value| headers::redact_value(name, value, &r);
    assert_eq!(
        v("authorization", "Bearer eyJhbGciOi.abc.def").as_deref(),
        Some("Bearer [REDACTED]")
    );
    assert_eq!(
        v("proxy-authorization", "Basic dXNlcjpwYXNz").as_deref(),
        Some("Basic [REDACTED]")
    );
    assert_eq!(
        v("authorization", "  Digest  username=\"a\", response=\"b\"").as_deref(),
        Some("Digest [REDACTED]")
    );
    assert_eq!(
        v("authorization", "rawtokenwithoutscheme").as_deref(),
        Some("[REDACTED]")
    );
    assert_eq!(v("authorization", ""), None);
    assert_eq!(v("authorization", "Bearer [REDACTED]"), None, "idempotent");
    assert_eq!(v("x-api-key", "k-123").as_deref(), Some("[REDACTED]"));
}

#[test]
fn cookies_keep_their_names_and_attributes() {
    let r = Replacer::Mask;
    assert_eq!(
        headers::redact_value("cookie", "session=abc; theme=dark;flag", &r).as_deref(),
        Some("session=[REDACTED]; theme=[REDACTED]; [REDACTED]")
    );
    assert_eq!(
        headers::redact_value(
            "set-cookie",
            "session=abc123; Path=/; Secure; HttpOnly; Max-Age=3600",
            &r
        )
        .as_deref(),
        Some("session=[REDACTED]; Path=/; Secure; HttpOnly; Max-Age=3600")
    );
    assert_eq!(
        headers::redact_value("set-cookie", "gone=; Path=/", &r),
        None
    );
}

#[test]
fn listed_headers_and_trailers_are_redacted_and_named() {
    let request = Direction {
        headers: Some(headers(&[
            ("authorization", "Bearer s3cr3t-value"),
            ("cookie", "sid=s3cr3t-cookie"),
            ("x-api-key", "s3cr3t-key"),
            ("accept", "application/json"),
        ])),
        trailers: Some(headers(&[("x-api-key", "s3cr3t-trailer")])),
        ..Default::default()
    };
    let response = Direction {
        headers: Some(headers(&[
            ("set-cookie", "a=s3cr3t-1; Path=/"),
            ("set-cookie", "b=s3cr3t-2; HttpOnly"),
        ])),
        ..Default::default()
    };
    let ex = run(RedactionConfig::default(), exchange(request, response));
    let text = serde_json::to_string(&ex).unwrap();
    assert!(!text.contains("s3cr3t"), "{text}");
    assert_eq!(
        ex.redacted,
        [
            "request.headers.authorization",
            "request.headers.cookie",
            "request.headers.x-api-key",
            "request.trailers.x-api-key",
            "response.headers.set-cookie",
        ]
    );
    let rq = ex.request.as_ref().unwrap().headers.as_ref().unwrap();
    assert_eq!(rq["accept"], ["application/json"]);
    assert_eq!(rq["authorization"], ["Bearer [REDACTED]"]);
    let rs = ex.response.as_ref().unwrap().headers.as_ref().unwrap();
    assert_eq!(
        rs["set-cookie"],
        ["a=[REDACTED]; Path=/", "b=[REDACTED]; HttpOnly"]
    );
    assert!(ex.warnings.is_empty());

    // The list is configurable and case-insensitive.
    let config = RedactionConfig {
        headers: vec!["X-Internal-Token".into()],
        ..Default::default()
    };
    let request = Direction {
        headers: Some(headers(&[
            ("x-internal-token", "t0p"),
            ("authorization", "Basic kept"),
        ])),
        ..Default::default()
    };
    let ex = run(config, exchange(request, Direction::default()));
    let rq = ex.request.unwrap().headers.unwrap();
    assert_eq!(rq["x-internal-token"], ["[REDACTED]"]);
    assert_eq!(rq["authorization"], ["Basic kept"]);
}

#[test]
fn hash_mode_is_deterministic_and_depends_on_the_key() {
    let a = Replacer::Hash(KEY.as_bytes().to_vec());
    let b = Replacer::Hash(b"another-key-of-16-bytes".to_vec());
    let h = a.replace(b"secret");
    assert_eq!(h, a.replace(b"secret"));
    assert_ne!(h, a.replace(b"secret2"));
    assert_ne!(h, b.replace(b"secret"));
    assert!(h.starts_with("hmac:") && h.len() == 21, "{h}");
    assert!(a.is_replacement(h.as_bytes()));

    let config = hash_config();
    let request = Direction {
        headers: Some(headers(&[
            ("authorization", "Bearer tok-1"),
            (":path", "/a?token=tok-1"),
        ])),
        path: Some("/a?token=tok-1".into()),
        ..Default::default()
    };
    let ex = run(config.clone(), exchange(request, Direction::default()));
    let rq = ex.request.as_ref().unwrap();
    let h = a.replace(b"tok-1");
    assert_eq!(
        rq.headers.as_ref().unwrap()["authorization"],
        [format!("Bearer {h}")]
    );
    assert_eq!(rq.path.as_deref(), Some(format!("/a?token={h}").as_str()));
    // Running twice changes nothing.
    let again = run(config.clone(), ex.clone());
    assert_eq!(again, ex);
    std::fs::remove_file(config.hash_key_file.unwrap()).unwrap();
}

#[test]
fn hash_mode_needs_a_usable_key() {
    let e = RedactionConfig {
        mode: RedactionMode::Hash,
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(e.contains("needs a key"), "{e}");
    let e = RedactionConfig {
        mode: RedactionMode::Hash,
        hash_key_env: Some(format!("MESHTAP_TEST_UNSET_{}", std::process::id())),
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(e.contains("is not set"), "{e}");
    let e = RedactionConfig {
        mode: RedactionMode::Hash,
        hash_key_file: Some("/nonexistent/key".into()),
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(e.contains("/nonexistent/key"), "{e}");
    let path = std::env::temp_dir().join(format!("meshtap-short-key-{}", std::process::id()));
    std::fs::write(&path, "short\n").unwrap();
    let e = RedactionConfig {
        mode: RedactionMode::Hash,
        hash_key_file: Some(path.clone()),
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(e.contains("at least 16"), "{e}");
    std::fs::remove_file(path).unwrap();
    assert!(format!("{:?}", Replacer::Hash(KEY.into())).contains("<key>"));
}

#[test]
fn bad_patterns_and_paths_are_config_errors() {
    let bad = |c: RedactionConfig| c.validate().unwrap_err();
    let e = bad(RedactionConfig {
        body_patterns: vec!["iban".into()],
        ..Default::default()
    });
    assert!(e.contains("unknown pattern \"iban\""), "{e}");
    let pattern = |name: &str, regex: &str| NamedPattern {
        name: name.into(),
        regex: regex.into(),
    };
    for (p, want) in [
        (pattern("key", "("), "not a valid regex"),
        (pattern("jwt", "x"), "taken"),
        (pattern("Bad Name", "x"), "lower-case"),
        (pattern("empty", "a*"), "empty string"),
    ] {
        let e = bad(RedactionConfig {
            custom_patterns: vec![p],
            ..Default::default()
        });
        assert!(e.contains(want), "{e}");
    }
    let e = bad(RedactionConfig {
        json_paths: vec!["password".into()],
        ..Default::default()
    });
    assert!(e.contains("redaction.json_paths: \"password\""), "{e}");
    let e = bad(RedactionConfig {
        headers: vec!["bad header".into()],
        ..Default::default()
    });
    assert!(e.contains("redaction.headers"), "{e}");
}

#[test]
fn luhn_accepts_valid_numbers_only() {
    for valid in [
        "4111111111111111",
        "5500005555555559",
        "378282246310005",
        "79927398713",
    ] {
        assert!(body::luhn(valid.bytes()), "{valid}");
    }
    for invalid in ["4111111111111112", "1234567812345678", "79927398710"] {
        assert!(!body::luhn(invalid.bytes()), "{invalid}");
    }
}

#[test]
fn card_numbers_are_found_with_separators_and_checked() {
    let body = b"pay 4111 1111 1111 1111 or 5500-0055-5555-5559, not 4111111111111112, \
                 not order 1234567812345678; id 2024 4111111111111111 7";
    let ex = run(
        RedactionConfig::default(),
        exchange(body_direction("text/plain", body), Direction::default()),
    );
    assert_eq!(
        body_text(&ex.request),
        "pay [REDACTED] or [REDACTED], not 4111111111111112, \
         not order 1234567812345678; id 2024 [REDACTED] 7"
    );
    assert_eq!(ex.redacted, ["request.body.card_number"]);
}

/// The runs `card::runs` finds in `body`, as (start, end), after checking that they are the
/// matches of the regex it replaces.
fn card_runs(body: &[u8]) -> Vec<(usize, usize)> {
    let runs: Vec<_> = card::runs(body).collect();
    let regex = regex::bytes::Regex::new(card::REGEX).unwrap();
    let expected: Vec<_> = regex.find_iter(body).map(|m| m.range()).collect();
    assert_eq!(runs, expected, "{:?}", String::from_utf8_lossy(body));
    runs.into_iter().map(|r| (r.start, r.end)).collect()
}

#[test]
fn card_runs_are_the_regex_matches_at_the_edges() {
    let none: [(usize, usize); 0] = [];
    // The whole body, at the start, at the end.
    assert_eq!(card_runs(b"4111111111111111"), [(0, 16)]);
    assert_eq!(card_runs(b"4111111111111111 paid"), [(0, 16)]);
    assert_eq!(card_runs(b"paid 4111111111111111"), [(5, 21)]);
    assert_eq!(card_runs(b"-4111-1111-1111-1111"), [(1, 20)]);
    // 12 digits are too few, 13 are enough, with or without separators.
    assert_eq!(card_runs(b"123456789012"), none);
    assert_eq!(card_runs(b"1234567890123"), [(0, 13)]);
    assert_eq!(card_runs(b"1234 5678-9012"), none);
    assert_eq!(card_runs(b"1234 5678-9012 3"), [(0, 16)]);
    assert_eq!(card_runs(b"x1-2-3-4-5-6-7-8-9-0-1-2-3x"), [(1, 26)]);
    // A trailing separator is not part of the run.
    assert_eq!(card_runs(b"4111 1111 1111 1111 "), [(0, 19)]);
    assert_eq!(card_runs(b"4111-1111-1111-1111-x"), [(0, 19)]);
    // Two separators in a row end a run: `1 -2` is two runs.
    assert_eq!(card_runs(b"1 -234567890123"), none);
    assert_eq!(card_runs(b"1 -2345678901234"), [(3, 16)]);
    assert_eq!(card_runs(b"4111  1111 1111 1111"), none);
    assert_eq!(card_runs(b"4111--1111-1111-1111-1"), [(6, 22)]);
    assert_eq!(
        card_runs(b"1234567890123 -1234567890123"),
        [(0, 13), (15, 28)]
    );
    // Runs longer than a card are one run; other bytes, UTF-8 or not, end runs.
    assert_eq!(card_runs(&[b'7'; 40]), [(0, 40)]);
    assert_eq!(
        card_runs(b"\xff1234567890123\xfe12345678901234\xc3"),
        [(1, 14), (15, 29)]
    );
    assert_eq!(card_runs("١٢٣4111111111111111".as_bytes()), [(6, 22)]);
    assert_eq!(card_runs(b""), none);
    assert_eq!(card_runs(b"1"), none);
    assert_eq!(card_runs(b"            -"), none);
}

#[test]
fn jwts_and_optional_emails_are_found() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let body = format!("token={jwt} mail bob.smith+x@example.co.uk end");
    let ex = run(
        RedactionConfig::default(),
        exchange(
            body_direction("text/plain", body.as_bytes()),
            Direction::default(),
        ),
    );
    assert_eq!(
        body_text(&ex.request),
        "token=[REDACTED] mail bob.smith+x@example.co.uk end",
        "email is off by default"
    );
    let config = RedactionConfig {
        body_patterns: vec!["jwt".into(), "email".into()],
        ..Default::default()
    };
    let ex = run(
        config,
        exchange(
            body_direction("text/plain", body.as_bytes()),
            Direction::default(),
        ),
    );
    assert_eq!(
        body_text(&ex.request),
        "token=[REDACTED] mail [REDACTED] end"
    );
    assert_eq!(ex.redacted, ["request.body.jwt", "request.body.email"]);
}

#[test]
fn custom_patterns_are_named() {
    let config = RedactionConfig {
        custom_patterns: vec![NamedPattern {
            name: "internal_key".into(),
            regex: "ik_[A-Za-z0-9]{8}".into(),
        }],
        ..Default::default()
    };
    let ex = run(
        config,
        exchange(
            Direction::default(),
            body_direction("text/plain", b"key ik_AbCd1234 and ik_short"),
        ),
    );
    assert_eq!(body_text(&ex.response), "key [REDACTED] and ik_short");
    assert_eq!(ex.redacted, ["response.body.internal_key"]);
}

#[test]
fn json_paths_redact_fields_recursively_and_in_arrays() {
    let config = RedactionConfig {
        json_paths: vec![
            "$.password".into(),
            "$.user.ssn".into(),
            "$..token".into(),
            "$.items[*].card".into(),
        ],
        body_patterns: vec![],
        ..Default::default()
    };
    let body = br#"{"user":{"name":"ann","ssn":"123-45-6789","session":{"token":"t-1"}},
        "password":"hunter2","items":[{"card":"c-1","n":1},{"card":{"last4":"1111"}}],
        "token":"t-2","empty":null}"#;
    let ex = run(
        config,
        exchange(
            body_direction("application/json", body),
            Direction::default(),
        ),
    );
    let v: Value = serde_json::from_slice(&ex.request.as_ref().unwrap().body).unwrap();
    assert_eq!(v["password"], "[REDACTED]");
    assert_eq!(v["user"]["ssn"], "[REDACTED]");
    assert_eq!(v["user"]["name"], "ann");
    assert_eq!(v["user"]["session"]["token"], "[REDACTED]");
    assert_eq!(v["token"], "[REDACTED]");
    assert_eq!(v["items"][0]["card"], "[REDACTED]");
    assert_eq!(v["items"][0]["n"], 1);
    assert_eq!(
        v["items"][1]["card"], "[REDACTED]",
        "objects are replaced whole"
    );
    assert_eq!(
        ex.redacted,
        [
            "request.body.$.password",
            "request.body.$.user.ssn",
            "request.body.$..token",
            "request.body.$.items[*].card",
        ]
    );
}

use serde_json::Value;

#[test]
fn json_bodies_without_matches_are_kept_byte_for_byte() {
    let body = b"{ \"b\": 1,\n  \"a\": \"x\" }";
    let ex = run(
        RedactionConfig::default(),
        exchange(
            body_direction("application/json", body),
            Direction::default(),
        ),
    );
    assert_eq!(ex.request.unwrap().body, body);
    assert!(ex.redacted.is_empty());
}

#[test]
fn unparseable_json_falls_back_to_field_names_and_patterns_still_apply() {
    // Cut mid-document (the filter's cap), with a card number in free text.
    let body = br#"{"user":"ann","password":"hunter2","note":"card 4111 1111 1111 1111","nested":{"access_token":"abc\"def","next":"#;
    let mut d = body_direction("application/json", body);
    d.truncate("cap");
    let ex = run(
        RedactionConfig::default(),
        exchange(d, Direction::default()),
    );
    let text = body_text(&ex.request);
    assert!(
        !text.contains("hunter2") && !text.contains("abc") && !text.contains("4111"),
        "{text}"
    );
    assert!(text.contains(r#""password":"[REDACTED]""#), "{text}");
    assert!(text.contains(r#""user":"ann""#), "{text}");
    assert_eq!(
        ex.redacted,
        [
            "request.body.$..password",
            "request.body.$..access_token",
            "request.body.card_number"
        ]
    );
}

#[test]
fn non_utf8_bodies_are_searched_as_bytes() {
    let mut body = vec![0xff, 0x00, 0xfe];
    body.extend_from_slice(b"4111111111111111");
    body.extend_from_slice(&[0x80, 0x81]);
    let ex = run(
        RedactionConfig::default(),
        exchange(
            body_direction("application/octet-stream", &body),
            Direction::default(),
        ),
    );
    let mut want = vec![0xff, 0x00, 0xfe];
    want.extend_from_slice(b"[REDACTED]");
    want.extend_from_slice(&[0x80, 0x81]);
    assert_eq!(ex.request.unwrap().body, want);
}

#[test]
fn a_truncated_body_ending_inside_a_secret_has_its_tail_redacted() {
    for (body, want) in [
        ("pay with 4111 1111 11", "pay with [REDACTED]"),
        ("auth eyJhbGciOiJIUzI1NiJ9.eyJzdW", "auth [REDACTED]"),
        ("count 1234567", "count 1234567"),
    ] {
        let mut d = body_direction("text/plain", body.as_bytes());
        d.truncate("cap");
        let ex = run(
            RedactionConfig::default(),
            exchange(d, Direction::default()),
        );
        assert_eq!(body_text(&ex.request), want);
        // Not truncated: a partial number is not a card.
        let d = body_direction("text/plain", body.as_bytes());
        let ex = run(
            RedactionConfig::default(),
            exchange(d, Direction::default()),
        );
        assert_eq!(body_text(&ex.request), body);
    }
}

#[test]
fn query_parameters_are_redacted_in_paths_and_url_headers() {
    let target = "/api/v1/items?id=7&access_token=abc123&Token=xyz&sig=&a%5Fb=1&API%5FKEY=k9#frag";
    let request = Direction {
        headers: Some(headers(&[
            (":path", target),
            ("referer", "https://app.example/x?password=pw1"),
            ("x-envoy-original-path", "/orig?apikey=k8"),
        ])),
        path: Some(target.into()),
        ..Default::default()
    };
    let response = Direction {
        headers: Some(headers(&[("location", "/next?code=1&refresh_token=r1")])),
        ..Default::default()
    };
    let ex = run(RedactionConfig::default(), exchange(request, response));
    let want = "/api/v1/items?id=7&access_token=[REDACTED]&Token=[REDACTED]&sig=&a%5Fb=1&API%5FKEY=[REDACTED]#frag";
    let rq = ex.request.as_ref().unwrap();
    assert_eq!(rq.path.as_deref(), Some(want));
    let h = rq.headers.as_ref().unwrap();
    assert_eq!(h[":path"], [want]);
    assert_eq!(h["referer"], ["https://app.example/x?password=[REDACTED]"]);
    assert_eq!(h["x-envoy-original-path"], ["/orig?apikey=[REDACTED]"]);
    let rs = ex.response.as_ref().unwrap().headers.as_ref().unwrap();
    assert_eq!(rs["location"], ["/next?code=1&refresh_token=[REDACTED]"]);
    assert_eq!(
        ex.redacted,
        [
            "request.query.access_token",
            "request.query.token",
            "request.query.api_key",
            "request.query.apikey",
            "request.query.password",
            "response.query.refresh_token",
        ]
    );
}

#[test]
fn a_body_still_encoded_is_flagged_not_skipped_silently() {
    let mut d = body_direction("application/json", &[0x1f, 0x8b, 0x08, 0x00]);
    d.headers
        .as_mut()
        .unwrap()
        .insert("content-encoding".into(), vec!["gzip".into()]);
    let ex = run(
        RedactionConfig::default(),
        exchange(Direction::default(), d),
    );
    assert_eq!(
        ex.warnings,
        ["response body is still content-encoded (gzip): redaction could not look inside it"]
    );
}

#[test]
fn disabled_redaction_changes_nothing() {
    let request = Direction {
        headers: Some(headers(&[("authorization", "Bearer s")])),
        ..Default::default()
    };
    let before = exchange(request, Direction::default());
    let config = RedactionConfig {
        enabled: false,
        ..Default::default()
    };
    assert_eq!(run(config, before.clone()), before);
}

#[test]
fn the_default_stages_decode_then_redact() {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(br#"{"access_token":"live-secret","expires_in":3600}"#)
        .unwrap();
    let gz = e.finish().unwrap();
    let mut response = body_direction("application/json", &gz);
    response
        .headers
        .as_mut()
        .unwrap()
        .insert("content-encoding".into(), vec!["gzip".into()]);
    let mut stages = crate::stage::Stages::from_config(&crate::config::Config::default()).unwrap();
    let ex = stages
        .run(exchange(Direction::default(), response))
        .unwrap();
    let r = ex.response.as_ref().unwrap();
    assert_eq!(r.body_decoded_from.as_deref(), Some("gzip"));
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        r#"{"access_token":"[REDACTED]","expires_in":3600}"#
    );
    assert_eq!(ex.redacted, ["response.body.$..access_token"]);
    assert!(ex.warnings.is_empty(), "{:?}", ex.warnings);
}

#[test]
fn the_realistic_policy_in_the_docs_loads_and_redacts() {
    let doc = include_str!("../../docs/redaction.md");
    let start = doc
        .find("## A realistic policy")
        .expect("docs/redaction.md has a realistic policy");
    let start = start + doc[start..].find("```yaml\n").unwrap() + 8;
    let end = start + doc[start..].find("```").unwrap();
    let key = std::env::temp_dir().join(format!("meshtap-doc-key-{}", std::process::id()));
    std::fs::write(&key, "doc-test-key-0123456789abcdef\n").unwrap();
    let yaml = doc[start..end].replace("/etc/meshtap/redaction/key", key.to_str().unwrap());
    let config = crate::config::Config::from_yaml(&yaml).unwrap();
    assert_eq!(config.redaction.mode, RedactionMode::Hash);
    assert_eq!(config.decoding.max_decoded_bytes, 1 << 20);

    let request = body_direction(
        "application/json",
        br#"{"customer":{"ssn":"078-05-1120","email":"ann@example.com"},"payment":{"card":{"cvc":"737"}},"key":"ak_live_0123456789abcdef0123456789abcdef","iban":"DE89 3704 0044 0532 0130 00"}"#,
    );
    let mut stages = crate::stage::Stages::from_config(&config).unwrap();
    let ex = stages.run(exchange(request, Direction::default())).unwrap();
    let text = body_text(&ex.request);
    for secret in ["078-05-1120", "ann@example.com", "737", "ak_live_", "DE89"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert_eq!(
        ex.redacted,
        [
            "request.body.$.customer.ssn",
            "request.body.$.payment.card.cvc",
            "request.body.email",
            "request.body.acme_api_key",
            "request.body.iban",
        ]
    );
    std::fs::remove_file(key).unwrap();
}

#[test]
fn json_names_spelled_with_escapes_are_still_found() {
    // The fast path skips bodies without `"password"`; `\u` escapes must not slip past it.
    let body = br#"{"pass\u0077ord":"hunter2","n":1}"#;
    let ex = run(
        RedactionConfig::default(),
        exchange(
            body_direction("application/json", body),
            Direction::default(),
        ),
    );
    assert_eq!(body_text(&ex.request), r#"{"n":1,"password":"[REDACTED]"}"#);
    assert_eq!(ex.redacted, ["request.body.$..password"]);
    // A path that does not end in a name is always evaluated.
    let config = RedactionConfig {
        json_paths: vec!["$.pins[1]".into()],
        ..Default::default()
    };
    let ex = run(
        config,
        exchange(
            body_direction("application/json", br#"{"pins":["1111","2222"]}"#),
            Direction::default(),
        ),
    );
    assert_eq!(body_text(&ex.request), r#"{"pins":["1111","[REDACTED]"]}"#);
}
