//! Header and trailer values: listed names are redacted, keeping what is not secret.
//!
//! - `authorization`, `proxy-authorization`: the scheme stays (`Bearer [REDACTED]`,
//!   `Basic [REDACTED]`); a value without a scheme is replaced whole.
//! - `cookie`: every cookie keeps its name (`a=[REDACTED]; b=[REDACTED]`).
//! - `set-cookie`: the cookie keeps its name and its attributes stay (`session=[REDACTED]; Path=/;
//!   HttpOnly`): attributes say how a cookie is scoped, not what it holds.
//! - any other listed name: the value is replaced whole.

use std::collections::BTreeSet;

use super::{Found, Replacer};
use crate::record::Headers;

#[derive(Debug, Clone)]
pub(super) struct HeaderRules {
    names: BTreeSet<String>,
}

impl HeaderRules {
    pub fn new(names: &[String]) -> Result<HeaderRules, String> {
        let mut set = BTreeSet::new();
        for name in names {
            let lower = name.trim().to_ascii_lowercase();
            if lower.is_empty() || !lower.bytes().all(is_header_name_byte) {
                return Err(format!("redaction.headers: {name:?} is not a header name"));
            }
            set.insert(lower);
        }
        Ok(HeaderRules { names: set })
    }

    /// Redacts the listed headers of `headers`, naming each `<prefix>.<name>` in `found`.
    pub fn apply(&self, headers: &mut Headers, r: &Replacer, prefix: &str, found: &mut Found) {
        for name in &self.names {
            let Some(values) = headers.get_mut(name) else {
                continue;
            };
            let mut hit = false;
            for value in values.iter_mut() {
                if let Some(new) = redact_value(name, value, r) {
                    *value = new;
                    hit = true;
                }
            }
            if hit {
                found.name(format!("{prefix}.{name}"));
            }
        }
    }
}

/// Header names are tokens (RFC 9110); pseudo-headers start with `:`.
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:".contains(&b)
}

/// The redacted form of `value` for header `name`, or `None` when nothing in it is secret
/// (empty, or already redacted).
pub(super) fn redact_value(name: &str, value: &str, r: &Replacer) -> Option<String> {
    let secret = |s: &str| !s.is_empty() && !r.is_replacement(s.as_bytes());
    let out = match name {
        "authorization" | "proxy-authorization" => {
            let trimmed = value.trim();
            match trimmed.split_once([' ', '\t']) {
                Some((scheme, credentials))
                    if !scheme.is_empty() && scheme.bytes().all(is_header_name_byte) =>
                {
                    let credentials = credentials.trim();
                    if !secret(credentials) {
                        return None;
                    }
                    format!("{scheme} {}", r.replace(credentials.as_bytes()))
                }
                _ if secret(trimmed) => r.replace(trimmed.as_bytes()),
                _ => return None,
            }
        }
        "cookie" => {
            let mut hit = false;
            let parts: Vec<String> = value
                .split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((n, v)) if secret(v) => {
                        hit = true;
                        format!("{n}={}", r.replace(v.as_bytes()))
                    }
                    Some(_) => pair.to_string(),
                    None if secret(pair) => {
                        hit = true;
                        r.replace(pair.as_bytes())
                    }
                    None => pair.to_string(),
                })
                .collect();
            if !hit {
                return None;
            }
            parts.join("; ")
        }
        "set-cookie" => {
            let (pair, attributes) = match value.split_once(';') {
                Some((pair, attributes)) => (pair.trim(), Some(attributes)),
                None => (value.trim(), None),
            };
            let pair = match pair.split_once('=') {
                Some((n, v)) if secret(v.trim()) => {
                    format!("{n}={}", r.replace(v.trim().as_bytes()))
                }
                Some(_) => return None,
                None if secret(pair) => r.replace(pair.as_bytes()),
                None => return None,
            };
            match attributes {
                Some(a) => format!("{pair};{a}"),
                None => pair,
            }
        }
        _ if secret(value) => r.replace(value.as_bytes()),
        _ => return None,
    };
    Some(out)
}
