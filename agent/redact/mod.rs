//! Redaction: the last stage before the sinks replaces secrets in headers, trailers, query strings
//! and bodies, and lists in `exchange.redacted` what it replaced (names, never values).
//!
//! [`RedactionConfig`] is the `redaction:` section; [`RedactionConfig::compile`] checks it and
//! builds the [`Redaction`] stage. The pieces:
//!
//! - [`headers`]: listed header and trailer names; `authorization` keeps its scheme, cookies keep
//!   their names and attributes.
//! - [`query`]: listed query parameters in `:path`, `path` and headers that carry URLs.
//! - [`body`]: JSONPath expressions on JSON bodies, then regex patterns (built-in `card_number`
//!   with a Luhn check, `jwt`, `email`, and your own) on the raw bytes of every body.
//! - [`Replacer`]: `[REDACTED]`, or a keyed hash (`hmac:…`) for correlation.
//!
//! The names listed in `redacted` are `<side>.headers.<name>`, `<side>.trailers.<name>`,
//! `<side>.query.<param>`, `<side>.body.<pattern>` and `<side>.body.<json path>`, with `<side>`
//! `request` or `response`; each name once per record, in the order found. `docs/redaction.md` is
//! the user reference.

mod body;
mod card;
mod config;
mod headers;
mod query;

pub use config::{NamedPattern, RedactionConfig, RedactionMode};

use hmac::{KeyInit, Mac};

use crate::record::{Direction, Exchange, Headers};
use crate::stage::{Stage, Verdict};

/// What a mask puts in place of a secret.
pub const MASK: &str = "[REDACTED]";

/// Shortest hash key accepted: shorter keys make the hashes of short secrets guessable.
const MIN_KEY_BYTES: usize = 16;

/// Hex digits of the HMAC kept: 64 bits tell secrets apart without being a reversible digest.
const HASH_HEX_DIGITS: usize = 16;

/// Turns a secret into what the record shows instead.
#[derive(Clone)]
pub enum Replacer {
    Mask,
    /// HMAC-SHA256 under this key.
    Hash(Vec<u8>),
}

impl std::fmt::Debug for Replacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replacer::Mask => f.write_str("Mask"),
            // The key is a secret too.
            Replacer::Hash(_) => f.write_str("Hash(<key>)"),
        }
    }
}

impl Replacer {
    /// `[REDACTED]`, or `hmac:` and the first hex digits of the secret's HMAC.
    pub fn replace(&self, secret: &[u8]) -> String {
        match self {
            Replacer::Mask => MASK.to_string(),
            Replacer::Hash(key) => {
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
                    .expect("HMAC takes keys of any length");
                mac.update(secret);
                let digest = mac.finalize().into_bytes();
                let mut out = String::with_capacity(5 + HASH_HEX_DIGITS);
                out.push_str("hmac:");
                for b in &digest[..HASH_HEX_DIGITS / 2] {
                    out.push_str(&format!("{b:02x}"));
                }
                out
            }
        }
    }

    /// Whether `text` is already a replacement (so running the stage twice changes nothing).
    fn is_replacement(&self, text: &[u8]) -> bool {
        match self {
            Replacer::Mask => text == MASK.as_bytes(),
            Replacer::Hash(_) => {
                text.len() == 5 + HASH_HEX_DIGITS
                    && text.starts_with(b"hmac:")
                    && text[5..].iter().all(u8::is_ascii_hexdigit)
            }
        }
    }
}

impl RedactionConfig {
    /// Checks the section and builds the stage: bad regexes, bad JSON paths, unknown pattern
    /// names and a hash mode without a usable key are errors naming the field.
    pub fn compile(&self) -> Result<Redaction, String> {
        let replacer = match self.mode {
            RedactionMode::Mask => Replacer::Mask,
            RedactionMode::Hash => Replacer::Hash(self.hash_key()?),
        };
        let headers = headers::HeaderRules::new(&self.headers)?;
        let query = query::QueryRules::new(&self.query_params)?;
        let body =
            body::BodyRules::new(&self.body_patterns, &self.custom_patterns, &self.json_paths)?;
        Ok(Redaction {
            enabled: self.enabled,
            replacer,
            headers,
            query,
            body,
        })
    }

    /// Checks the section without keeping the result (config load).
    pub fn validate(&self) -> Result<(), String> {
        self.compile().map(|_| ())
    }

    fn hash_key(&self) -> Result<Vec<u8>, String> {
        let key = match (&self.hash_key_env, &self.hash_key_file) {
            (Some(var), None) => std::env::var_os(var)
                .ok_or_else(|| {
                    format!("redaction.hash_key_env: the environment variable {var} is not set")
                })?
                .into_encoded_bytes(),
            (None, Some(path)) => {
                let mut key = std::fs::read(path).map_err(|e| {
                    format!(
                        "redaction.hash_key_file: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                if key.ends_with(b"\n") {
                    key.pop();
                    if key.ends_with(b"\r") {
                        key.pop();
                    }
                }
                key
            }
            (None, None) => {
                return Err(
                    "redaction.mode hash needs a key: set redaction.hash_key_env or redaction.hash_key_file"
                        .to_string(),
                )
            }
            (Some(_), Some(_)) => {
                return Err(
                    "redaction: set only one of hash_key_env and hash_key_file".to_string()
                )
            }
        };
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "redaction: the hash key has {} bytes, at least {MIN_KEY_BYTES} are needed",
                key.len()
            ));
        }
        Ok(key)
    }
}

/// The redaction stage; see the module doc.
#[derive(Debug, Clone)]
pub struct Redaction {
    enabled: bool,
    replacer: Replacer,
    headers: headers::HeaderRules,
    query: query::QueryRules,
    body: body::BodyRules,
}

/// What a direction's redaction found: names for `redacted`, and warnings.
#[derive(Debug, Default)]
struct Found {
    names: Vec<String>,
    warnings: Vec<String>,
}

impl Found {
    fn name(&mut self, name: String) {
        if !self.names.contains(&name) {
            self.names.push(name);
        }
    }
}

impl Redaction {
    /// Redacts one header map as this stage does a direction's headers (listed names, and the
    /// query parameters of URL-carrying headers); returns the names for `redacted`. `side` is
    /// `request` or `response`.
    pub fn redact_headers(&self, side: &str, headers: &mut Headers) -> Vec<String> {
        let mut found = Found::default();
        self.direction_headers(side, headers, &mut found);
        found.names
    }

    fn direction_headers(&self, side: &str, headers: &mut Headers, found: &mut Found) {
        let r = &self.replacer;
        self.headers
            .apply(headers, r, &format!("{side}.headers"), found);
        self.query.apply_headers(headers, r, side, found);
    }

    fn direction(&self, side: &str, d: &mut Direction, found: &mut Found) {
        let r = &self.replacer;
        if let Some(headers) = d.headers.as_mut() {
            self.direction_headers(side, headers, found);
        }
        if let Some(trailers) = d.trailers.as_mut() {
            self.headers
                .apply(trailers, r, &format!("{side}.trailers"), found);
        }
        if let Some(path) = d.path.as_mut() {
            self.query.apply_target(path, r, side, found);
        }
        self.body.apply(side, d, r, found);
    }
}

impl Stage for Redaction {
    fn process(&mut self, exchange: &mut Exchange) -> Verdict {
        if !self.enabled {
            return Verdict::Keep;
        }
        let mut found = Found::default();
        if let Some(d) = exchange.request.as_mut() {
            self.direction("request", d, &mut found);
        }
        if let Some(d) = exchange.response.as_mut() {
            self.direction("response", d, &mut found);
        }
        for name in found.names {
            if !exchange.redacted.contains(&name) {
                exchange.redacted.push(name);
            }
        }
        for w in found.warnings {
            exchange.warn(w);
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod property_tests;
