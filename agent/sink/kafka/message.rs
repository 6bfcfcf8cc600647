//! One exchange as one Kafka message: the record's JSON as the value, the exchange id as the key,
//! routing fields as headers, the topic from the template. A record larger than
//! `max_message_bytes` has its bodies cut to fit, or is rejected (see [`Oversize`]).

use std::borrow::Cow;

use rdkafka::message::{Header, OwnedHeaders};

use super::config::{KafkaKey, KafkaSinkConfig, Oversize};
use crate::record::{Direction, Exchange};

/// librdkafka's largest per-message framing in a v2 record batch
/// (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`: length, attributes, timestamp and offset deltas, key and
/// value lengths, header count). librdkafka refuses a message when this plus key, value and
/// headers exceeds `message.max.bytes`.
const RECORD_OVERHEAD: usize = 36;

/// Largest varint of a header's key or value length.
const VARINT_MAX: usize = 5;

/// A message ready to be produced. It borrows the key from the exchange.
#[derive(Debug)]
pub(super) struct Message<'a> {
    pub topic: String,
    pub key: Option<&'a str>,
    pub value: Vec<u8>,
    /// Taken when the message is handed to librdkafka.
    pub headers: Option<OwnedHeaders>,
}

/// What became of one exchange.
#[derive(Debug)]
pub(super) enum Encoded<'a> {
    /// The whole record.
    Whole(Message<'a>),
    /// The record with bodies cut to fit `max_message_bytes`; `size` is what it had been.
    Truncated { message: Message<'a>, size: usize },
    /// Not sent: too large (`size` bytes) under `oversize: reject`, or even without bodies.
    Rejected { size: usize, why: &'static str },
}

/// Builds the message for `record`, serializing it once (again only if it must be cut).
pub(super) fn encode<'a>(
    record: &'a Exchange,
    config: &KafkaSinkConfig,
) -> Result<Encoded<'a>, serde_json::Error> {
    let mut topic = String::new();
    config.topic.render(record, &mut topic);
    let key = match config.key {
        KafkaKey::Id => Some(record.id.as_str()),
        KafkaKey::None => None,
    };
    let headers = routing_headers(record);
    let framing = RECORD_OVERHEAD
        + key.map_or(0, str::len)
        + headers
            .iter()
            .map(|(name, value)| 2 * VARINT_MAX + name.len() + value.len())
            .sum::<usize>();
    let budget = usize::try_from(config.max_message_bytes)
        .unwrap_or(usize::MAX)
        .saturating_sub(framing);

    let mut value = Vec::with_capacity(json_capacity(record));
    serde_json::to_writer(&mut value, record)?;
    let message = |value| Message {
        topic,
        key,
        value,
        headers: Some(owned(&headers)),
    };
    if value.len() <= budget {
        return Ok(Encoded::Whole(message(value)));
    }
    let size = value.len() + framing;
    if config.oversize == Oversize::Reject {
        let why = "larger than max_message_bytes (oversize: reject)";
        return Ok(Encoded::Rejected { size, why });
    }
    Ok(match fit(record, budget, config.max_message_bytes)? {
        Some(value) => Encoded::Truncated {
            message: message(value),
            size,
        },
        None => Encoded::Rejected {
            size,
            why: "larger than max_message_bytes even with empty bodies",
        },
    })
}

/// Room for the record's JSON, so that the buffer is allocated once instead of growing (and
/// being copied) from a few hundred bytes: its bodies and headers, an eighth more for escapes,
/// and room for the other fields.
fn json_capacity(record: &Exchange) -> usize {
    let direction = |d: Option<&Direction>| {
        d.map_or(0, |d| {
            let headers: usize = d
                .headers
                .iter()
                .flatten()
                .map(|(name, values)| {
                    values
                        .iter()
                        .map(|v| name.len() + v.len() + 6)
                        .sum::<usize>()
                })
                .sum();
            headers + d.body.len()
        })
    };
    let payload = direction(record.request.as_ref()) + direction(record.response.as_ref());
    payload + payload / 8 + 1024
}

/// The headers a consumer can route or filter on without parsing the value.
fn routing_headers(record: &Exchange) -> Vec<(&'static str, Cow<'_, str>)> {
    let mut headers = vec![("meshtap.id", Cow::from(&record.id))];
    if let Some(k8s) = &record.k8s {
        headers.push(("k8s.namespace", Cow::from(&k8s.namespace)));
        headers.push(("k8s.pod", Cow::from(&k8s.pod)));
    }
    headers.push(("meshtap.source", Cow::from(record.source.as_str())));
    if let Some(method) = record.request.as_ref().and_then(|r| r.method.as_ref()) {
        headers.push(("http.method", Cow::from(method)));
    }
    if let Some(status) = record.response.as_ref().and_then(|r| r.status) {
        headers.push(("http.status", Cow::from(status.to_string())));
    }
    headers
}

fn owned(headers: &[(&'static str, Cow<'_, str>)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_ref()),
            })
        },
    )
}

/// The JSON of a copy of `record` whose bodies were cut, largest first, until it takes at most
/// `budget` bytes; `None` when it does not fit even with both bodies empty.
fn fit(
    record: &Exchange,
    budget: usize,
    max_message_bytes: u64,
) -> Result<Option<Vec<u8>>, serde_json::Error> {
    let mut record = record.clone();
    let reason = format!("record exceeded Kafka max_message_bytes ({max_message_bytes})");
    // A body already cut by the filter keeps its first reason; the warning tells of this cut too.
    record.warn(format!(
        "bodies cut to fit the Kafka sink's max_message_bytes ({max_message_bytes})"
    ));
    loop {
        let value = serde_json::to_vec(&record)?;
        if value.len() <= budget {
            return Ok(Some(value));
        }
        let excess = value.len() - budget;
        let largest = [record.request.as_mut(), record.response.as_mut()]
            .into_iter()
            .flatten()
            .map(|d| (encoded_len(&d.body), d))
            .filter(|(len, _)| *len > 0)
            .max_by_key(|(len, _)| *len);
        let Some((encoded, direction)) = largest else {
            return Ok(None);
        };
        cut(direction, excess, encoded);
        direction.truncate(reason.as_str());
    }
}

/// Drops about `excess` serialized bytes from the end of `direction`'s body (whose serialized
/// length is `encoded`), at least one byte, on a character boundary for a text body. Estimated in
/// proportion: a body's bytes can take one (text) to six (escaped control characters) bytes of
/// JSON, so the caller serializes again and repeats while the record is still too large.
fn cut(direction: &mut Direction, excess: usize, encoded: usize) {
    let len = direction.body.len();
    let drop = (excess as u128 * len as u128).div_ceil(encoded as u128);
    let mut keep = len.saturating_sub(usize::try_from(drop).unwrap_or(len).max(1));
    if let Ok(text) = std::str::from_utf8(&direction.body) {
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
    }
    direction.body.truncate(keep);
}

/// Bytes `body` takes inside its JSON string: escaped text when it is UTF-8, else base64 (as
/// [`crate::record`] serializes it).
fn encoded_len(body: &[u8]) -> usize {
    match std::str::from_utf8(body) {
        Ok(text) => text
            .chars()
            .map(|c| match c {
                '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
                c if (c as u32) < 0x20 => 6,
                c => c.len_utf8(),
            })
            .sum(),
        Err(_) => body.len().div_ceil(3) * 4,
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;
    use crate::record::{K8sMeta, LogPosition, Source};

    fn exchange(request_body: &[u8], response_body: &[u8]) -> Exchange {
        let direction = |body: &[u8]| Direction {
            body: body.to_vec(),
            body_size: body.len() as u64,
            ended: true,
            ..Direction::default()
        };
        Exchange {
            id: "0123456789abcdef0123456789abcdef".into(),
            source: Source::LuaV2,
            time: "2026-11-25T08:58:36.571Z".into(),
            k8s: Some(K8sMeta {
                namespace: "shop".into(),
                pod: "cart-1".into(),
                pod_uid: "u".into(),
                container: "istio-proxy".into(),
                ..K8sMeta::default()
            }),
            log: LogPosition::default(),
            request: Some(Direction {
                method: Some("POST".into()),
                ..direction(request_body)
            }),
            response: Some(Direction {
                status: Some(201),
                ..direction(response_body)
            }),
            complete: true,
            warnings: vec![],
            redacted: Vec::new(),
        }
    }

    fn config(max_message_bytes: u64, oversize: Oversize) -> KafkaSinkConfig {
        KafkaSinkConfig {
            max_message_bytes,
            oversize,
            ..KafkaSinkConfig::new("k:1")
        }
    }

    #[test]
    fn a_record_becomes_value_key_headers_and_topic() {
        let record = exchange(b"{\"a\":1}", &[0xff, 0]);
        let mut config = config(1_000_000, Oversize::Truncate);
        config.topic = "m.{namespace}".parse().unwrap();
        let Encoded::Whole(m) = encode(&record, &config).unwrap() else {
            panic!("fits")
        };
        assert_eq!(m.value, serde_json::to_vec(&record).unwrap());
        assert_eq!(m.key, Some(record.id.as_str()));
        assert_eq!(m.topic, "m.shop");
        let headers: Vec<_> = m
            .headers
            .as_ref()
            .expect("not yet taken")
            .iter()
            .map(|h| (h.key, std::str::from_utf8(h.value.unwrap()).unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("meshtap.id", record.id.as_str()),
                ("k8s.namespace", "shop"),
                ("k8s.pod", "cart-1"),
                ("meshtap.source", "lua-v2"),
                ("http.method", "POST"),
                ("http.status", "201"),
            ]
        );
        config.key = KafkaKey::None;
        let Encoded::Whole(m) = encode(&record, &config).unwrap() else {
            panic!("fits")
        };
        assert_eq!(m.key, None);
    }

    /// The serialized record (value) as it was sent.
    fn sent(encoded: Encoded<'_>) -> (Exchange, usize) {
        let Encoded::Truncated { message, .. } = encoded else {
            panic!("truncated: {encoded:?}")
        };
        let back = serde_json::from_slice(&message.value).unwrap();
        (back, message.value.len())
    }

    #[test]
    fn truncation_cuts_the_largest_body_first_and_flags_it() {
        let record = exchange(&b"q".repeat(3000), &b"r".repeat(20_000));
        let config = config(10_000, Oversize::Truncate);
        let (back, len) = sent(encode(&record, &config).unwrap());
        let framing = RECORD_OVERHEAD
            + 32
            + routing_headers(&record)
                .iter()
                .map(|(k, v)| 10 + k.len() + v.len())
                .sum::<usize>();
        assert!(len + framing <= 10_000, "{len} + {framing}");
        assert!(len + framing > 9_000, "cut no more than needed: {len}");
        let (request, response) = (back.request.unwrap(), back.response.unwrap());
        assert_eq!(request.body, b"q".repeat(3000), "the smaller body is kept");
        assert!(!request.body_truncated);
        assert!(response.body_truncated);
        assert_eq!(response.body_size, 20_000);
        assert_eq!(
            response.truncated_reason.as_deref(),
            Some("record exceeded Kafka max_message_bytes (10000)")
        );
        assert!(response.body.len() < 20_000 && response.body.iter().all(|b| *b == b'r'));
        assert_eq!(
            back.warnings,
            ["bodies cut to fit the Kafka sink's max_message_bytes (10000)"]
        );
    }

    #[test]
    fn truncation_keeps_text_text_and_cuts_binary_and_escaped_bodies() {
        let text = "zoë😀\n".repeat(2000);
        let binary: Vec<u8> = (0..=255u8).cycle().take(9000).collect();
        let record = exchange(text.as_bytes(), &binary);
        let (back, _) = sent(encode(&record, &config(4000, Oversize::Truncate)).unwrap());
        let request = back.request.unwrap();
        assert!(request.body_truncated);
        assert!(text.as_bytes().starts_with(&request.body));
        assert!(
            std::str::from_utf8(&request.body).is_ok(),
            "cut on a char boundary"
        );
        assert!(binary.starts_with(&back.response.unwrap().body));

        let controls = "\u{1}".repeat(5000);
        let record = exchange(controls.as_bytes(), b"");
        let (back, len) = sent(encode(&record, &config(2000, Oversize::Truncate)).unwrap());
        assert!(len < 2000);
        assert!(controls.as_bytes().starts_with(&back.request.unwrap().body));
    }

    #[test]
    fn a_record_too_large_even_without_bodies_is_rejected() {
        let mut record = exchange(b"body", b"");
        record.warnings = vec!["w".repeat(3000)];
        let Encoded::Rejected { size, why } =
            encode(&record, &config(2000, Oversize::Truncate)).unwrap()
        else {
            panic!("rejected")
        };
        assert!(size > 3000);
        assert!(why.contains("even with empty bodies"), "{why}");
    }

    #[test]
    fn reject_policy_sends_nothing_oversized() {
        let record = exchange(&b"x".repeat(5000), b"");
        let Encoded::Rejected { why, .. } =
            encode(&record, &config(2000, Oversize::Reject)).unwrap()
        else {
            panic!("rejected")
        };
        assert!(why.contains("oversize: reject"));
        let small = exchange(b"x", b"");
        assert!(matches!(
            encode(&small, &config(2000, Oversize::Reject)).unwrap(),
            Encoded::Whole(_)
        ));
    }

    #[test]
    fn encoded_len_matches_serde_json() {
        for body in [
            "plain".as_bytes(),
            "\"quoted\\\" \n\t\r\u{8}\u{c}\u{1}\u{1f}\u{7f} zoë 😀".as_bytes(),
            &[0xff, 0, 1, 2],
            &[0xc3],
            b"",
        ] {
            let d = Direction {
                body: body.to_vec(),
                ..Direction::default()
            };
            let v = serde_json::to_value(&d).unwrap();
            let json = serde_json::to_string(&v["body"]).unwrap();
            assert_eq!(encoded_len(body), json.len() - 2, "{body:?}");
        }
    }
}
