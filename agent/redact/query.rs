//! Query parameters: listed names have their values redacted wherever a request target or URL is
//! recorded: `path` and `:path`, and the headers that carry URLs ([`URL_HEADERS`]).
//!
//! A parameter is `name=value` between `?`/`&` and `&`/`#`/end; its name matches case-insensitively,
//! after percent-decoding (`access%5Ftoken` is `access_token`). The rest of the target is kept byte
//! for byte.

use std::collections::BTreeSet;

use super::{Found, Replacer};
use crate::record::Headers;

/// Headers whose values are URLs or request targets: Envoy's `x-envoy-original-path` (the path
/// before a rewrite), `referer`, and the response's `location` / `content-location`.
pub const URL_HEADERS: [&str; 5] = [
    ":path",
    "x-envoy-original-path",
    "referer",
    "location",
    "content-location",
];

#[derive(Debug, Clone)]
pub(super) struct QueryRules {
    names: BTreeSet<String>,
}

impl QueryRules {
    pub fn new(names: &[String]) -> Result<QueryRules, String> {
        let mut set = BTreeSet::new();
        for name in names {
            let lower = name.trim().to_ascii_lowercase();
            if lower.is_empty() || lower.contains(['&', '=', '#', '?']) {
                return Err(format!(
                    "redaction.query_params: {name:?} is not a query parameter name"
                ));
            }
            set.insert(lower);
        }
        Ok(QueryRules { names: set })
    }

    /// Redacts the listed parameters in the URL-carrying headers.
    pub fn apply_headers(
        &self,
        headers: &mut Headers,
        r: &Replacer,
        side: &str,
        found: &mut Found,
    ) {
        for name in URL_HEADERS {
            if let Some(values) = headers.get_mut(name) {
                for value in values.iter_mut() {
                    self.apply_target(value, r, side, found);
                }
            }
        }
    }

    /// Redacts the listed parameters of one request target or URL in place.
    pub fn apply_target(&self, target: &mut String, r: &Replacer, side: &str, found: &mut Found) {
        if self.names.is_empty() {
            return;
        }
        let Some(q) = target.find('?') else { return };
        let end = target[q..].find('#').map_or(target.len(), |f| q + f);
        let query = &target[q + 1..end];
        let mut out = String::with_capacity(target.len());
        out.push_str(&target[..=q]);
        let mut hit = false;
        for (i, param) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let redacted = param.split_once('=').and_then(|(name, value)| {
                let key = percent_decode_lower(name);
                let listed = self.names.contains(&key);
                (listed && !value.is_empty() && !r.is_replacement(value.as_bytes()))
                    .then(|| (key, format!("{name}={}", r.replace(value.as_bytes()))))
            });
            match redacted {
                Some((key, text)) => {
                    out.push_str(&text);
                    found.name(format!("{side}.query.{key}"));
                    hit = true;
                }
                None => out.push_str(param),
            }
        }
        if hit {
            out.push_str(&target[end..]);
            *target = out;
        }
    }
}

/// `name` percent-decoded (and `+` as a space, as forms encode it), lower-cased; invalid escapes
/// are kept as they are.
fn percent_decode_lower(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}
