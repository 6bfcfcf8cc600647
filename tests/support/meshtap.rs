//! Runs the built `meshtap parse` and reads its NDJSON output, plus helpers to read records.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

/// The outcome of `meshtap parse FILE`.
#[derive(Debug)]
pub struct Parsed {
    pub records: Vec<Value>,
    pub stderr: String,
    pub success: bool,
    pub status: String,
    /// Stdout lines that are not JSON objects.
    pub bad_lines: Vec<String>,
}

pub fn parse(file: &Path) -> Parsed {
    let out = Command::new(env!("CARGO_BIN_EXE_meshtap"))
        .arg("parse")
        .arg(file)
        .output()
        .expect("run meshtap");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut records = Vec::new();
    let mut bad_lines = Vec::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => records.push(v),
            _ => bad_lines.push(line.chars().take(200).collect()),
        }
    }
    Parsed {
        records,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
        status: out.status.to_string(),
        bad_lines,
    }
}

/// The body bytes of a record direction (`body` decoded per `body_encoding`).
pub fn body(direction: &Value) -> Result<Vec<u8>, String> {
    let text = direction["body"].as_str().ok_or("no string `body`")?;
    match direction["body_encoding"].as_str() {
        Some("utf8") => Ok(text.as_bytes().to_vec()),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("bad base64 body: {e}")),
        other => Err(format!("bad body_encoding {other:?}")),
    }
}

/// A record direction's `headers` (or `None` when null/absent).
pub fn headers(direction: &Value) -> Option<BTreeMap<String, Vec<String>>> {
    let object = direction["headers"].as_object()?;
    Some(
        object
            .iter()
            .map(|(name, values)| {
                let values = match values {
                    Value::Array(items) => items
                        .iter()
                        .map(|v| v.as_str().unwrap_or("<non-string>").to_string())
                        .collect(),
                    Value::String(s) => vec![s.clone()],
                    other => vec![format!("<{other}>")],
                };
                (name.clone(), values)
            })
            .collect(),
    )
}

/// Groups a header list (name, value) by lower-case name, values in order.
/// `headers` as meshtap's default redaction writes them (`set-cookie: session=[REDACTED]; Path=/`):
/// records never hold the secrets the client and upstream saw, so the truth is compared in that
/// form. `side` is `request` or `response`.
pub fn redacted(
    side: &str,
    mut headers: BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<String>> {
    let redaction = ::meshtap::redact::RedactionConfig::default()
        .compile()
        .expect("the default redaction compiles");
    redaction.redact_headers(side, &mut headers);
    headers
}

pub fn group(list: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in list {
        map.entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.clone());
    }
    map
}

/// A record without the fields that depend on which file it was read from (`id`, `log.file`),
/// for comparing the records of two files with the same content.
pub fn without_file_identity(record: &Value) -> Value {
    let mut r = record.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("id");
    }
    if let Some(log) = r.get_mut("log").and_then(Value::as_object_mut) {
        log.remove("file");
    }
    r
}

/// A short, printable rendering of body bytes for failure messages.
pub fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
    format!(
        "{} bytes {:?}{}",
        bytes.len(),
        text,
        if bytes.len() > 120 { "…" } else { "" }
    )
}
