//! Bodies: JSONPath expressions on JSON bodies, then regex patterns on the raw bytes of every
//! body (so non-UTF-8 and non-JSON bodies are covered too).
//!
//! - JSON: a body is tried as JSON when its `content-type` says `json` or it starts with `{` or
//!   `[`. Each path's matches (RFC 9535, with `serde_json_path`) become `"[REDACTED]"` (or the
//!   hash) and the body is re-serialized compactly; a body where nothing matched is kept byte for
//!   byte. A body that looks like JSON but does not parse (most often: truncated) gets a fallback:
//!   every `"<name>": <value>` whose name is the last name of a path is redacted, at any depth.
//! - Patterns: `card_number` (13 to 19 digits, single spaces or dashes between them, Luhn-valid;
//!   a longer run is searched for a valid card aligned on its groups), `jwt` (`eyJ…` with three
//!   base64url segments), `email`, and user patterns.
//! - A truncated body may end inside a secret: its tail is also redacted when it ends in 8 or more
//!   digits (`card_number`, without the Luhn check the missing digits make impossible) or in the
//!   start of a JWT (`eyJ` and 4 or more base64url characters).

use std::ops::Range;
use std::sync::LazyLock;

use regex::bytes::Regex;
use serde_json::Value;
use serde_json_path::JsonPath;

use super::{card, Found, NamedPattern, Replacer};
use crate::content::content_codings;
use crate::record::Direction;

/// The built-in patterns: name, regex, and the regex of a partial match at the end of a truncated
/// body (anchored at the end). `card_number` is searched for with [`card::runs`], which finds the
/// matches of its regex faster.
const BUILTINS: [(&str, &str, Option<&str>); 3] = [
    (
        "card_number",
        card::REGEX,
        Some(r"[0-9](?:[ -]?[0-9]){7,}[ -]?\z"),
    ),
    (
        "jwt",
        r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
        Some(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,2}\z"),
    ),
    (
        "email",
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        None,
    ),
];

/// A card number has 13 to 19 digits (ISO/IEC 7812).
const CARD_DIGITS: Range<usize> = 13..20;

#[derive(Debug, Clone)]
struct Pattern {
    name: String,
    search: Search,
}

#[derive(Debug, Clone)]
enum Search {
    /// `card_number`: [`card::runs`], then the Luhn check ([`card_spans`]).
    Card,
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct JsonRule {
    /// The expression as configured: the name listed in `redacted`.
    expr: String,
    path: JsonPath,
    /// For bodies that do not parse: `"<last name>": <value>` anywhere.
    fallback: Option<Regex>,
    /// `"<last name>"`: a body without it (and without `\u` escapes) cannot match the path, so
    /// it is neither parsed nor queried for it. `None` when the path does not end in a name.
    /// Built once: a body is searched for every rule's name on the hot path.
    needle: Option<memchr::memmem::Finder<'static>>,
}

#[derive(Debug, Clone)]
pub(super) struct BodyRules {
    patterns: Vec<Pattern>,
    json: Vec<JsonRule>,
    /// Tail patterns for truncated bodies: (pattern name, regex anchored at the end).
    tails: Vec<(&'static str, Regex)>,
}

impl BodyRules {
    pub fn new(
        builtins: &[String],
        custom: &[NamedPattern],
        json_paths: &[String],
    ) -> Result<BodyRules, String> {
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut tails = Vec::new();
        for name in builtins {
            let Some((name, regex, tail)) = BUILTINS.iter().find(|(n, _, _)| n == name) else {
                return Err(format!(
                    "redaction.body_patterns: unknown pattern {name:?} (built-ins: card_number, jwt, email; your own go in custom_patterns)"
                ));
            };
            if patterns.iter().any(|p| p.name == *name) {
                continue;
            }
            let search = if *name == "card_number" {
                Search::Card
            } else {
                Search::Regex(Regex::new(regex).expect("built-in patterns compile"))
            };
            patterns.push(Pattern {
                name: name.to_string(),
                search,
            });
            if let Some(tail) = tail {
                tails.push((*name, Regex::new(tail).expect("built-in patterns compile")));
            }
        }
        for p in custom {
            let valid = !p.name.is_empty()
                && p.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(format!(
                    "redaction.custom_patterns: name {:?} must be lower-case letters, digits and _",
                    p.name
                ));
            }
            if BUILTINS.iter().any(|(n, _, _)| *n == p.name)
                || patterns.iter().any(|q| q.name == p.name)
            {
                return Err(format!(
                    "redaction.custom_patterns: the name {:?} is taken",
                    p.name
                ));
            }
            let regex = Regex::new(&p.regex).map_err(|e| {
                format!(
                    "redaction.custom_patterns: {:?} is not a valid regex: {e}",
                    p.name
                )
            })?;
            if regex.is_match(b"") {
                return Err(format!(
                    "redaction.custom_patterns: {:?} matches the empty string",
                    p.name
                ));
            }
            patterns.push(Pattern {
                name: p.name.clone(),
                search: Search::Regex(regex),
            });
        }
        let mut json = Vec::new();
        for expr in json_paths {
            let path = JsonPath::parse(expr).map_err(|e| {
                format!("redaction.json_paths: {expr:?} is not a valid JSONPath: {e}")
            })?;
            let name = last_name(expr);
            // A name JSON may escape other than with `\u` (`"`, `\`, `/`, controls) is never
            // searched for literally.
            let needle = name
                .as_ref()
                .filter(|n| {
                    n.bytes()
                        .all(|b| b.is_ascii_graphic() && !b"\"\\/".contains(&b))
                })
                .map(|n| format!("\"{n}\"").into_bytes());
            let fallback = name.map(|name| {
                Regex::new(&format!(
                    r#""{}"\s*:\s*("(?:[^"\\]|\\.)*"?|[^\s,\]}}]+)"#,
                    regex::escape(&name)
                ))
                .expect("escaped name compiles")
            });
            json.push(JsonRule {
                expr: expr.clone(),
                path,
                fallback,
                needle: needle.map(|n| memchr::memmem::Finder::new(&n).into_owned()),
            });
        }
        Ok(BodyRules {
            patterns,
            json,
            tails,
        })
    }

    /// Redacts `d.body` in place.
    pub fn apply(&self, side: &str, d: &mut Direction, r: &Replacer, found: &mut Found) {
        if d.body.is_empty() {
            return;
        }
        if d.body_decoded_from.is_none() {
            if let Some(codings) = content_codings(d) {
                found.warnings.push(format!(
                    "{side} body is still content-encoded ({}): redaction could not look inside it",
                    codings.join(", ")
                ));
            }
        }
        if !self.json.is_empty() && looks_like_json(d) {
            self.json(side, d, r, found);
        }
        for p in &self.patterns {
            if let Some(body) = p.apply(&d.body, r) {
                d.body = body;
                found.name(format!("{side}.body.{}", p.name));
            }
        }
        if d.body_truncated {
            for (name, regex) in &self.tails {
                if let Some(m) = regex.find(&d.body) {
                    if !r.is_replacement(m.as_bytes()) {
                        let mut body = d.body[..m.start()].to_vec();
                        body.extend_from_slice(r.replace(m.as_bytes()).as_bytes());
                        d.body = body;
                        found.name(format!("{side}.body.{name}"));
                    }
                }
            }
        }
    }

    fn json(&self, side: &str, d: &mut Direction, r: &Replacer, found: &mut Found) {
        // Most bodies hold none of the names: skip the parse and the queries (the expensive part
        // of redaction, see docs/benchmarks.md). A member name can only be spelled otherwise
        // with `\u` escapes, so a body with any is always queried.
        static ESCAPE: LazyLock<memchr::memmem::Finder<'static>> =
            LazyLock::new(|| memchr::memmem::Finder::new(b"\\u"));
        let escaped = ESCAPE.find(&d.body).is_some();
        let rules: Vec<&JsonRule> = self
            .json
            .iter()
            .filter(|rule| match &rule.needle {
                Some(needle) => escaped || needle.find(&d.body).is_some(),
                None => true,
            })
            .collect();
        if rules.is_empty() {
            return;
        }
        let mut value: Value = match serde_json::from_slice(&d.body) {
            Ok(value) => value,
            Err(_) => return Self::json_fallback(&rules, side, d, r, found),
        };
        let mut hit = false;
        for rule in rules {
            let pointers: Vec<String> = rule
                .path
                .query_located(&value)
                .locations()
                .map(|l| l.to_json_pointer())
                .collect();
            for pointer in pointers {
                let Some(node) = value.pointer_mut(&pointer) else {
                    continue;
                };
                let secret = match &mut *node {
                    Value::Null => continue,
                    Value::String(s) if r.is_replacement(s.as_bytes()) => continue,
                    Value::String(s) => std::mem::take(s).into_bytes(),
                    other => other.to_string().into_bytes(),
                };
                *node = Value::String(r.replace(&secret));
                found.name(format!("{side}.body.{}", rule.expr));
                hit = true;
            }
        }
        if hit {
            d.body = serde_json::to_vec(&value).expect("a JSON value serializes");
        }
    }

    fn json_fallback(
        rules: &[&JsonRule],
        side: &str,
        d: &mut Direction,
        r: &Replacer,
        found: &mut Found,
    ) {
        for rule in rules {
            let Some(regex) = &rule.fallback else {
                continue;
            };
            let body = &d.body;
            let mut out = Vec::new();
            let mut last = 0;
            for caps in regex.captures_iter(body) {
                let value = caps.get(1).expect("group 1 always takes part");
                let inner = value.as_bytes();
                let inner = inner.strip_prefix(b"\"").unwrap_or(inner);
                let inner = inner.strip_suffix(b"\"").unwrap_or(inner);
                if inner.is_empty() || inner == b"null" || r.is_replacement(inner) {
                    continue;
                }
                out.extend_from_slice(&body[last..value.start()]);
                out.push(b'"');
                out.extend_from_slice(r.replace(inner).as_bytes());
                out.push(b'"');
                last = value.end();
            }
            if last > 0 {
                out.extend_from_slice(&body[last..]);
                d.body = out;
                found.name(format!("{side}.body.{}", rule.expr));
            }
        }
    }
}

impl Pattern {
    /// The body with every match replaced, or `None` when nothing matched.
    fn apply(&self, body: &[u8], r: &Replacer) -> Option<Vec<u8>> {
        let spans: Vec<Range<usize>> = match &self.search {
            Search::Card => card::runs(body)
                .flat_map(|run| card_spans(body, run))
                .collect(),
            Search::Regex(regex) => regex
                .find_iter(body)
                .filter(|m| !m.is_empty() && !r.is_replacement(m.as_bytes()))
                .map(|m| m.range())
                .collect(),
        };
        if spans.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        let mut last = 0;
        for span in spans {
            out.extend_from_slice(&body[last..span.start]);
            out.extend_from_slice(r.replace(&body[span.clone()]).as_bytes());
            last = span.end;
        }
        out.extend_from_slice(&body[last..]);
        Some(out)
    }
}

/// The card numbers in a run of digits (`range` of `body`, groups separated by one space or
/// dash): the whole run when it is one, else the longest Luhn-valid spans of whole groups.
fn card_spans(body: &[u8], range: Range<usize>) -> Vec<Range<usize>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut start = range.start;
    for i in range.clone() {
        if !body[i].is_ascii_digit() {
            groups.push(start..i);
            start = i + 1;
        }
    }
    groups.push(start..range.end);
    let digits = |a: usize, b: usize| {
        groups[a..=b]
            .iter()
            .flat_map(|g| body[g.clone()].iter().copied())
    };
    let count = |a: usize, b: usize| groups[a..=b].iter().map(|g| g.len()).sum::<usize>();
    let mut spans = Vec::new();
    let mut a = 0;
    while a < groups.len() {
        // A span has at most 19 digits, so at most 19 groups: bounded work on huge runs.
        let top = (a + CARD_DIGITS.end - 2).min(groups.len() - 1);
        let valid = (a..=top)
            .rev()
            .find(|&b| CARD_DIGITS.contains(&count(a, b)) && luhn(digits(a, b)));
        match valid {
            Some(b) => {
                spans.push(groups[a].start..groups[b].end);
                a = b + 1;
            }
            None => a += 1,
        }
    }
    spans
}

/// The Luhn checksum (ISO/IEC 7812-1) of ASCII digits.
pub(super) fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Whether a body is worth parsing as JSON.
fn looks_like_json(d: &Direction) -> bool {
    let typed = d
        .headers
        .as_ref()
        .and_then(|h| h.get("content-type"))
        .is_some_and(|v| v.iter().any(|t| t.to_ascii_lowercase().contains("json")));
    typed
        || d.body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{' || *b == b'[')
}

/// The last member name of a JSONPath (`$.user.ssn` -> `ssn`, `$..['api-key']` -> `api-key`),
/// when it ends in one.
fn last_name(expr: &str) -> Option<String> {
    let expr = expr.trim();
    if let Some(rest) = expr.strip_suffix("']") {
        let start = rest.rfind("['")?;
        let name = &rest[start + 2..];
        return (!name.is_empty() && !name.contains('\'')).then(|| name.to_string());
    }
    let start = expr.rfind('.')?;
    let name = &expr[start + 1..];
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain.then(|| name.to_string())
}
