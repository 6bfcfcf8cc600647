//! The `decoding:` section of the configuration.

use serde::Deserialize;

/// A `content-encoding` meshtap can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `gzip` (and its old alias `x-gzip`); concatenated gzip members are decoded as one body.
    Gzip,
    /// `deflate`: the zlib format RFC 9110 names, and the raw deflate some servers send instead.
    Deflate,
    /// `br` (Brotli).
    Br,
}

impl Encoding {
    /// The encoding a `content-encoding` token names, if meshtap knows it.
    pub fn from_token(token: &str) -> Option<Encoding> {
        match token {
            "gzip" | "x-gzip" => Some(Encoding::Gzip),
            "deflate" => Some(Encoding::Deflate),
            "br" => Some(Encoding::Br),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
            Encoding::Br => "br",
        }
    }
}

/// Body decoding: `content-encoding` bodies are decoded before redaction and delivery.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodingConfig {
    /// Decode content-encoded bodies at all. Off, compressed bodies stay as logged (base64) and
    /// redaction cannot look inside them (each such record says so in its warnings).
    pub enabled: bool,
    /// The encodings decoded; a body with any other encoding stays as logged, with a warning.
    pub encodings: Vec<Encoding>,
    /// Largest decoded body kept, in bytes: decoding stops there and the body is flagged
    /// `body_truncated` (a decompression bomb costs at most this much memory).
    pub max_decoded_bytes: usize,
}

/// The assembly's default `max_body_bytes`: a decoded body may be as large as a logged one.
const fn default_max_decoded_bytes() -> usize {
    4 << 20
}

impl Default for DecodingConfig {
    fn default() -> Self {
        DecodingConfig {
            enabled: true,
            encodings: vec![Encoding::Gzip, Encoding::Deflate, Encoding::Br],
            max_decoded_bytes: default_max_decoded_bytes(),
        }
    }
}

impl DecodingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_decoded_bytes == 0 {
            return Err("decoding.max_decoded_bytes must be greater than 0".to_string());
        }
        Ok(())
    }
}
