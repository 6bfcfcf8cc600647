//! The `redaction:` section of the configuration.

use std::path::PathBuf;

use serde::Deserialize;

/// What a redacted value becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactionMode {
    /// `[REDACTED]`, keeping the structure around the secret (`Bearer [REDACTED]`,
    /// `session=[REDACTED]; Path=/`).
    #[default]
    Mask,
    /// `hmac:<16 hex digits>`: HMAC-SHA256 of the secret under a key of yours, truncated, so equal
    /// secrets correlate across records without being readable. Needs `hash_key_env` or
    /// `hash_key_file`.
    Hash,
}

/// A user pattern for bodies: every match of `regex` is redacted and listed as `<side>.body.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPattern {
    /// Lower-case letters, digits and `_`; not a built-in name.
    pub name: String,
    /// A regular expression (Rust `regex` syntax), matched against the raw body bytes.
    pub regex: String,
}

/// Redaction: secrets are replaced before any sink sees a record.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Redact at all. Off, records carry every secret the filter logged.
    pub enabled: bool,
    /// `mask` or `hash`.
    pub mode: RedactionMode,
    /// `hash` mode: the environment variable holding the key (at least 16 bytes).
    pub hash_key_env: Option<String>,
    /// `hash` mode: a file holding the key (a mounted Secret; one trailing newline is ignored).
    pub hash_key_file: Option<PathBuf>,
    /// Header (and trailer) names whose values are redacted, case-insensitive.
    pub headers: Vec<String>,
    /// Query parameter names whose values are redacted in `:path`, `path` and URL-carrying headers
    /// (`referer`, `location`, ...), case-insensitive.
    pub query_params: Vec<String>,
    /// Built-in body patterns to apply: `card_number` (Luhn-checked), `jwt`, `email`.
    pub body_patterns: Vec<String>,
    /// Your own body patterns, each with a name.
    pub custom_patterns: Vec<NamedPattern>,
    /// JSONPath expressions (RFC 9535) whose values are redacted in JSON bodies.
    pub json_paths: Vec<String>,
}

/// The credentials HTTP carries in headers by convention.
fn default_headers() -> Vec<String> {
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
    ]
    .map(String::from)
    .to_vec()
}

/// Names that carry credentials in URLs: OAuth 2.0 (RFC 6750 `access_token`), API keys, AWS and
/// Azure pre-signed URLs (`X-Amz-Signature`, `X-Amz-Security-Token`, `sig`).
fn default_query_params() -> Vec<String> {
    [
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "api_key",
        "apikey",
        "key",
        "password",
        "client_secret",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-security-token",
    ]
    .map(String::from)
    .to_vec()
}

/// Card numbers and bearer tokens are never wanted in a capture; e-mail addresses often are (and
/// matching them costs more), so `email` is opt-in.
fn default_body_patterns() -> Vec<String> {
    ["card_number", "jwt"].map(String::from).to_vec()
}

/// The JSON fields that hold credentials in common APIs (login forms, OAuth token responses).
/// A bare `token` is left out: APIs use it for non-secrets too (pagination, correlation ids);
/// add `$..token` where it is a credential.
fn default_json_paths() -> Vec<String> {
    [
        "$..password",
        "$..client_secret",
        "$..access_token",
        "$..refresh_token",
        "$..id_token",
        "$..api_key",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for RedactionConfig {
    fn default() -> Self {
        RedactionConfig {
            enabled: true,
            mode: RedactionMode::Mask,
            hash_key_env: None,
            hash_key_file: None,
            headers: default_headers(),
            query_params: default_query_params(),
            body_patterns: default_body_patterns(),
            custom_patterns: Vec::new(),
            json_paths: default_json_paths(),
        }
    }
}
