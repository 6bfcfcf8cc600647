//! The exchange record: one JSON object per HTTP request/response exchange.
//!
//! This is meshtap's output schema, documented field by field in `docs/record.md`. Assemblers build
//! [`Exchange`] values; sinks serialize them once with `serde_json`.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a record came from: which reader produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// The seed article's Lua filter (`[logPayload] started` / chunks / `finished`).
    #[serde(rename = "lua-v1")]
    LuaV1,
    /// meshtap's own Lua filter (`[logPayload] v2 ...`, one line per event).
    #[serde(rename = "lua-v2")]
    LuaV2,
    /// Envoy's tap filter (admin `/tap` stream or `file_per_tap` output).
    #[serde(rename = "tap")]
    Tap,
    /// Packets captured in the pod's network namespace, reassembled and parsed as HTTP/1.x.
    #[serde(rename = "capture")]
    Capture,
}

impl Source {
    /// The name used in records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::LuaV1 => "lua-v1",
            Source::LuaV2 => "lua-v2",
            Source::Tap => "tap",
            Source::Capture => "capture",
        }
    }
}

/// Kubernetes identity of the container whose log held the exchange.
///
/// `namespace`, `pod`, `pod_uid` and `container` come from the kubelet log path and are always
/// set; the rest comes from the Kubernetes API when the agent can reach it, and is omitted otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8sMeta {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    /// Pod labels kept by the configured allow-list.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The workload that owns the pod (a Deployment through its ReplicaSet, a StatefulSet, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
}

/// The controller at the top of a pod's owner chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`, `ReplicaSet`, ... as the API names it.
    pub kind: String,
    pub name: String,
}

/// Where in the log the exchange was read: enough to find it again with `less +<offset>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    /// The file the exchange's first event was read from.
    pub file: String,
    /// Byte offset (in the decompressed file) of the first event's line.
    pub offset: u64,
    /// Envoy worker thread id, when the log layout carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
    /// The v2 filter's stream id, correlating the request and response lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// Header name (lower-case) to every value seen, in order: lossless for repeated headers.
pub type Headers = BTreeMap<String, Vec<String>>;

/// One direction (request or response) of an exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Direction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Headers as the filter logged them; `None` when the filter variant logs no headers.
    pub headers: Option<Headers>,
    /// Trailers, when the filter logged any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trailers: Option<Headers>,
    /// The body bytes that were logged; serialized as `body` + `body_encoding`.
    #[serde(
        flatten,
        serialize_with = "serialize_body",
        deserialize_with = "deserialize_body"
    )]
    pub body: Vec<u8>,
    /// Bytes of body seen by the filter (can exceed `body.len()` when truncated).
    pub body_size: u64,
    /// True when `body` holds fewer bytes than the direction carried, or may do so.
    pub body_truncated: bool,
    /// The `content-encoding` (e.g. `gzip`) the body was decoded from, when meshtap decoded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_decoded_from: Option<String>,
    /// Why the body is truncated, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_reason: Option<String>,
    /// When this direction started (RFC 3339), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When this direction's end was logged (RFC 3339), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Whether the end of this direction was logged.
    pub ended: bool,
}

impl Direction {
    /// Mark the body as truncated, keeping the first reason given.
    pub fn truncate(&mut self, reason: impl Into<String>) {
        self.body_truncated = true;
        if self.truncated_reason.is_none() {
            self.truncated_reason = Some(reason.into());
        }
    }

    /// Append body bytes, honouring `cap` (bytes kept per direction); bytes beyond it are counted
    /// in `body_size` and flagged, never kept.
    pub fn push_body(&mut self, bytes: &[u8], cap: usize) {
        self.body_size += bytes.len() as u64;
        let room = cap.saturating_sub(self.body.len());
        if bytes.len() > room {
            self.body.extend_from_slice(&bytes[..room]);
            self.truncate(format!("body exceeded meshtap's max_body_bytes ({cap})"));
        } else {
            self.body.extend_from_slice(bytes);
        }
    }

    /// Record the pseudo-headers that name the request or response in their own fields.
    pub fn lift_pseudo_headers(&mut self) {
        let Some(headers) = &self.headers else { return };
        let first = |name: &str| headers.get(name).and_then(|v| v.first()).cloned();
        self.method = first(":method");
        self.path = first(":path");
        self.authority = first(":authority");
        self.status = first(":status").and_then(|s| s.trim().parse().ok());
    }
}

/// One HTTP exchange: a request and its response, as complete as the log allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// Deterministic id derived from the log position (file fingerprint + offset of first event).
    pub id: String,
    pub source: Source,
    /// When the exchange started (RFC 3339).
    pub time: String,
    pub k8s: Option<K8sMeta>,
    pub log: LogPosition,
    pub request: Option<Direction>,
    pub response: Option<Direction>,
    /// True when both directions were logged to their end.
    pub complete: bool,
    pub warnings: Vec<String>,
    /// What the policy stage redacted (header names, JSON paths, pattern names), never the values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
}

impl Exchange {
    /// Add a warning once (assemblers may hit the same condition repeatedly).
    pub fn warn(&mut self, warning: impl Into<String>) {
        let warning = warning.into();
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }
}

/// Serializes a body as `"body": <utf8 or base64 text>, "body_encoding": "utf8" | "base64"`.
fn serialize_body<S: Serializer>(body: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(2))?;
    match std::str::from_utf8(body) {
        Ok(text) => {
            map.serialize_entry("body", text)?;
            map.serialize_entry("body_encoding", "utf8")?;
        }
        Err(_) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(body);
            map.serialize_entry("body", &encoded)?;
            map.serialize_entry("body_encoding", "base64")?;
        }
    }
    map.end()
}

/// Reads back what [`serialize_body`] wrote (the agent's checkpoints hold pending exchanges).
fn deserialize_body<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    #[derive(Deserialize)]
    struct Body {
        body: String,
        body_encoding: String,
    }
    let b = Body::deserialize(deserializer)?;
    match b.body_encoding.as_str() {
        "utf8" => Ok(b.body.into_bytes()),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(b.body)
            .map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!(
            "unknown body_encoding {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_bodies_serialize_as_base64_and_text_as_utf8() {
        let mut d = Direction {
            body: vec![0xff, 0x00, b'a'],
            ..Default::default()
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["body"], "/wBh");
        assert_eq!(v["body_encoding"], "base64");
        d.body = "héllo\n".as_bytes().to_vec();
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["body"], "héllo\n");
        assert_eq!(v["body_encoding"], "utf8");
    }

    /// The keys of a JSON value, recursively; header maps are leaves (their keys are data).
    fn shape(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, child) in map {
                let p = format!("{path}.{k}");
                out.push(p.clone());
                if !["headers", "trailers", "labels"].contains(&k.as_str()) {
                    shape(child, &p, out);
                }
            }
        }
    }

    #[test]
    fn docs_sample_matches_the_schema() {
        let doc = include_str!("../docs/record.md");
        let start = doc
            .find("```json\n")
            .expect("docs/record.md has a json sample")
            + 8;
        let end = start + doc[start..].find("```").expect("closed");
        let sample: serde_json::Value = serde_json::from_str(&doc[start..end]).unwrap();

        let full = Direction {
            method: Some("POST".into()),
            path: Some("/".into()),
            authority: Some("a".into()),
            status: None,
            headers: Some(Headers::new()),
            trailers: Some(Headers::new()),
            body: b"x".to_vec(),
            body_size: 1,
            body_truncated: false,
            truncated_reason: None,
            body_decoded_from: None,
            start_time: Some("t".into()),
            end_time: Some("t".into()),
            ended: true,
        };
        let exchange = Exchange {
            id: "0".into(),
            source: Source::LuaV2,
            time: "t".into(),
            k8s: Some(K8sMeta {
                labels: BTreeMap::from([("app".into(), "a".into())]),
                workload: Some(Workload::default()),
                service_account: Some("sa".into()),
                node: Some("n".into()),
                pod_ip: Some("ip".into()),
                ..K8sMeta::default()
            }),
            log: LogPosition {
                file: "f".into(),
                offset: 0,
                thread: Some(1),
                stream: Some("s".into()),
            },
            request: Some(full.clone()),
            response: Some(Direction {
                method: None,
                path: None,
                authority: None,
                trailers: None,
                status: Some(200),
                truncated_reason: Some("r".into()),
                body_decoded_from: Some("gzip".into()),
                ..full
            }),
            complete: true,
            warnings: vec![],
            redacted: vec!["h".into()],
        };
        let (mut want, mut got) = (Vec::new(), Vec::new());
        shape(&sample, "", &mut want);
        shape(&serde_json::to_value(&exchange).unwrap(), "", &mut got);
        want.sort();
        got.sort();
        assert_eq!(
            want, got,
            "docs/record.md sample and the emitted record differ"
        );
        assert_eq!(sample["source"], "lua-v2");
    }

    #[test]
    fn records_read_back_identically() {
        let ex = Exchange {
            id: "i".into(),
            source: Source::LuaV1,
            time: "t".into(),
            k8s: None,
            log: LogPosition::default(),
            request: Some(Direction {
                body: vec![0, 0xff, b'x'],
                headers: Some(Headers::from([("a".to_string(), vec!["1".to_string()])])),
                ended: true,
                ..Default::default()
            }),
            response: Some(Direction {
                body: "héllo".as_bytes().to_vec(),
                status: Some(200),
                ..Default::default()
            }),
            complete: false,
            warnings: vec!["w".into()],
            redacted: Vec::new(),
        };
        let text = serde_json::to_string(&ex).unwrap();
        let back: Exchange = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ex);
    }

    #[test]
    fn push_body_caps_and_flags() {
        let mut d = Direction::default();
        d.push_body(b"abcdef", 4);
        d.push_body(b"gh", 4);
        assert_eq!(d.body, b"abcd");
        assert_eq!(d.body_size, 8);
        assert!(d.body_truncated);
    }
}
