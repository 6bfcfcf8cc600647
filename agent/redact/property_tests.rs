//! The redaction promise, tested as a property: random secrets placed in listed headers and
//! trailers, query strings, JSON fields and free-text bodies (card numbers with a valid Luhn digit,
//! JWTs), in plain or gzip-encoded, UTF-8 or binary bodies, never appear in what any sink writes
//! after the default stages ran: not as text, not as base64 at any alignment.
//!
//! Also: the scan that finds card-number candidates yields the matches of the regex it replaces.
//!
//! "What any sink writes": the NDJSON line (`serde_json`, as `output`, and the stdout, file and
//! Kafka sinks (its value) write it), and the OTLP sink's `LogRecord`, protobuf-encoded as it is
//! exported and also in its `Debug` form.

use std::io::Write;

use base64::Engine as _;
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{json, Value};

use super::tests::exchange;
use super::*;
use crate::config::Config;
use crate::record::Headers;
use crate::sink::otlp::mapping::{log_record, AgentIdentity};
use crate::stage::Stages;

/// A secret: distinctive random text that no other part of a record contains by chance.
fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.~-]{16,28}"
}

/// A card number: 16 random digits whose last one makes the Luhn sum right, grouped by 4 with
/// spaces or dashes, or not at all.
fn card() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(0u8..10, 15),
        prop_oneof![Just(""), Just(" "), Just("-")],
    )
        .prop_map(|(digits, sep)| {
            let mut digits: Vec<u8> = digits.into_iter().map(|d| b'0' + d).collect();
            let check = (0..10u8)
                .map(|c| b'0' + c)
                .find(|c| {
                    let mut all = digits.clone();
                    all.push(*c);
                    body::luhn(all.into_iter())
                })
                .unwrap();
            digits.push(check);
            digits
                .chunks(4)
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
                .collect::<Vec<_>>()
                .join(sep)
        })
}

/// A JWT: `eyJ` and three base64url segments.
fn jwt() -> impl Strategy<Value = String> {
    (
        "[A-Za-z0-9_-]{10,30}",
        "[A-Za-z0-9_-]{10,60}",
        "[A-Za-z0-9_-]{0,43}",
    )
        .prop_map(|(h, p, s)| format!("eyJ{h}.eyJ{p}.{s}"))
}

/// Free text around a secret: no digits next to a card (a card glued to other digits is not
/// recognisable, see docs/redaction.md) and a non-word end before a JWT.
fn filler() -> impl Strategy<Value = String> {
    "[a-zA-Z ,:;=\n]{0,40}"
}

#[derive(Debug, Clone)]
struct Case {
    headers: Vec<(String, String, String)>,
    query: Vec<(String, String)>,
    json: Vec<(Vec<String>, String)>,
    cards: Vec<String>,
    jwts: Vec<String>,
    fillers: Vec<String>,
    binary: bool,
    gzip: bool,
    json_in_response: bool,
    hash: bool,
}

fn case() -> impl Strategy<Value = Case> {
    let header = (
        prop_oneof![
            Just("authorization"),
            Just("proxy-authorization"),
            Just("cookie"),
            Just("set-cookie"),
            Just("x-api-key")
        ],
        prop_oneof![Just("plain"), Just("scheme"), Just("cookie")],
        secret(),
    )
        .prop_map(|(n, shape, s)| (n.to_string(), shape.to_string(), s));
    let param = prop_oneof![
        Just("access_token"),
        Just("API_KEY"),
        Just("token"),
        Just("password"),
        Just("X-Amz-Signature"),
        Just("sig")
    ];
    let field = prop_oneof![
        Just("password"),
        Just("id_token"),
        Just("access_token"),
        Just("client_secret"),
        Just("refresh_token"),
        Just("api_key")
    ];
    let parents =
        proptest::collection::vec(prop_oneof![Just("data"), Just("user"), Just("[]")], 0..3);
    (
        proptest::collection::vec(header, 1..5),
        proptest::collection::vec((param.prop_map(String::from), secret()), 0..3),
        proptest::collection::vec(
            (
                parents.prop_map(|p| p.into_iter().map(String::from).collect::<Vec<String>>()),
                field,
            )
                .prop_flat_map(|(mut path, f)| {
                    path.push(f.to_string());
                    (Just(path), secret())
                }),
            0..3,
        ),
        proptest::collection::vec(card(), 0..3),
        proptest::collection::vec(jwt(), 0..3),
        proptest::collection::vec(filler(), 7),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(headers, query, json, cards, jwts, fillers, binary, gzip, json_in_response, hash)| {
                Case {
                    headers,
                    query,
                    json,
                    cards,
                    jwts,
                    fillers,
                    binary,
                    gzip,
                    json_in_response,
                    hash,
                }
            },
        )
}

fn header_value(name: &str, shape: &str, secret: &str) -> String {
    match (name, shape) {
        ("cookie", _) => format!("theme=dark; sid={secret}"),
        ("set-cookie", _) => format!("sid={secret}; Path=/; HttpOnly"),
        (_, "scheme") => format!("Bearer {secret}"),
        (_, "cookie") => format!("Basic {secret}"),
        _ => secret.to_string(),
    }
}

/// A JSON document with `secret` at `path` (`[]` is an array level).
fn nest(path: &[String], secret: &str) -> Value {
    match path.split_first() {
        None => Value::String(secret.to_string()),
        Some((first, rest)) if first == "[]" => json!([1, nest(rest, secret)]),
        Some((first, rest)) => {
            let mut map = serde_json::Map::new();
            map.insert("kept".into(), json!("visible"));
            map.insert(first.clone(), nest(rest, secret));
            Value::Object(map)
        }
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The record, and every secret placed in it.
fn build(case: &Case) -> (Exchange, Vec<String>) {
    let mut secrets = Vec::new();
    let mut request_headers = Headers::new();
    let mut response_headers = Headers::new();
    let mut trailers = Headers::new();
    for (i, (name, shape, secret)) in case.headers.iter().enumerate() {
        let value = header_value(name, shape, secret);
        let target = match (name.as_str(), i % 3) {
            ("set-cookie", _) | (_, 2) => &mut response_headers,
            (_, 1) => &mut trailers,
            _ => &mut request_headers,
        };
        target.entry(name.clone()).or_default().push(value);
        secrets.push(secret.clone());
    }
    let mut target = "/api/v1/orders?page=2".to_string();
    for (param, secret) in &case.query {
        target.push_str(&format!("&{param}={secret}"));
        secrets.push(secret.clone());
    }
    request_headers.insert(":path".into(), vec![target.clone()]);
    request_headers.insert(
        "referer".into(),
        vec![format!("https://shop.example{target}")],
    );

    // A JSON body holding every JSON secret, and a free-text body holding cards and JWTs.
    let mut document = json!({"order": 17, "note": "visible"});
    for (i, (path, secret)) in case.json.iter().enumerate() {
        document[format!("part{i}")] = nest(path, secret);
        secrets.push(secret.clone());
    }
    let json_body = serde_json::to_vec(&document).unwrap();
    let mut text = case.fillers[0].clone().into_bytes();
    for (f, secret) in (1..).zip(case.cards.iter().chain(&case.jwts)) {
        text.extend_from_slice(b" ");
        text.extend_from_slice(secret.as_bytes());
        text.extend_from_slice(b" ");
        text.extend_from_slice(case.fillers[f % case.fillers.len()].as_bytes());
        secrets.push(secret.clone());
    }
    if case.binary {
        text.extend_from_slice(&[0xff, 0x00, 0xfe]);
    }

    let (mut json_dir, mut text_dir) = (json_body, text);
    let mut request = Direction {
        method: Some("POST".into()),
        path: Some(target),
        authority: Some("shop.example".into()),
        headers: Some(request_headers),
        trailers: (!trailers.is_empty()).then_some(trailers),
        ended: true,
        ..Default::default()
    };
    let mut response = Direction {
        status: Some(200),
        headers: Some(response_headers),
        ended: true,
        ..Default::default()
    };
    if case.json_in_response {
        std::mem::swap(&mut json_dir, &mut text_dir);
    }
    request.body = json_dir;
    response.body = text_dir;
    if case.gzip {
        response.body = gzip(&response.body);
        response
            .headers
            .as_mut()
            .unwrap()
            .insert("content-encoding".into(), vec!["gzip".into()]);
    }
    request.body_size = request.body.len() as u64;
    response.body_size = response.body.len() as u64;
    (exchange(request, response), secrets)
}

/// `secret` as it would look inside base64 text at each of the three byte alignments (the chars
/// not touched by neighbouring bytes).
fn base64_forms(secret: &str) -> Vec<String> {
    let engine = base64::engine::general_purpose::STANDARD;
    (0..3)
        .map(|pad| {
            let mut bytes = vec![0u8; pad];
            bytes.extend_from_slice(secret.as_bytes());
            let encoded = engine.encode(&bytes);
            let full_blocks = bytes.len() / 3 * 4;
            encoded[4..full_blocks].to_string()
        })
        .collect()
}

fn stages(hash_key: Option<&std::path::Path>) -> Stages {
    let mut config = Config::default();
    if let Some(path) = hash_key {
        config.redaction.mode = RedactionMode::Hash;
        config.redaction.hash_key_file = Some(path.to_path_buf());
    }
    Stages::from_config(&config).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_secret_reaches_any_sink(case in case()) {
        let key = std::env::temp_dir().join(format!("meshtap-prop-key-{}", std::process::id()));
        std::fs::write(&key, "property-test-key-0123456789").unwrap();
        let (ex, secrets) = build(&case);
        let mut stages = stages(case.hash.then_some(key.as_path()));
        let ex = stages.run(ex).unwrap();

        let ndjson = serde_json::to_string(&ex).unwrap();
        let otlp = log_record(&ex, &AgentIdentity::default(), 0, None);
        let protobuf = otlp.encode_to_vec();
        let debug = format!("{otlp:?}");
        for secret in &secrets {
            for (sink, text) in [("ndjson", ndjson.as_bytes()), ("otlp protobuf", &protobuf[..]), ("otlp debug", debug.as_bytes())] {
                prop_assert!(
                    !text.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds secret {:?}: {}", sink, secret, String::from_utf8_lossy(text)
                );
            }
            for form in base64_forms(secret) {
                prop_assert!(!ndjson.contains(&form), "ndjson holds base64 of {:?}: {}", secret, ndjson);
                prop_assert!(!debug.contains(&form), "otlp holds base64 of {:?}", secret);
            }
        }
        // What was redacted is listed, and the exchange is otherwise intact.
        prop_assert!(!ex.redacted.is_empty());
        prop_assert!(ndjson.contains("visible"), "the rest of the body is kept");
        if case.gzip {
            prop_assert_eq!(ex.response.as_ref().unwrap().body_decoded_from.as_deref(), Some("gzip"));
        }
    }
}

/// Bytes where runs of digits and their near misses are common: single digits and long runs,
/// spaces and dashes (also doubled), and any other byte, most of them not valid UTF-8.
fn digit_heavy() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        8 => (b'0'..=b'9').prop_map(|d| vec![d]),
        3 => Just(vec![b' ']),
        3 => Just(vec![b'-']),
        2 => any::<u8>().prop_map(|b| vec![b]),
        1 => proptest::collection::vec(b'0'..=b'9', 12..40),
    ];
    proptest::collection::vec(piece, 0..80).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn card_runs_are_the_regex_matches(body in digit_heavy()) {
        let regex = regex::bytes::Regex::new(card::REGEX).unwrap();
        let expected: Vec<_> = regex.find_iter(&body).map(|m| m.range()).collect();
        let runs: Vec<_> = card::runs(&body).collect();
        prop_assert_eq!(runs, expected, "{:?}", String::from_utf8_lossy(&body));
    }
}
