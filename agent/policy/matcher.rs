//! A rule's `match`, compiled: only the conditions the rule gives, cheapest first, with patterns
//! prepared (regexes built, case folded) so that matching an exchange allocates nothing.

use crate::record::{Direction, Exchange, Headers, Source};

use super::config::{HeaderMatch, MatchConfig, StatusMatch, StringMatch};

/// A compiled text condition.
#[derive(Debug)]
pub enum Text {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Regex(regex::Regex),
}

impl Text {
    /// `field` names the condition in the error (e.g. `match.path.regex`).
    fn compile(m: &StringMatch, field: &str, lower: bool) -> Result<Text, String> {
        let fold = |s: &str| -> Box<str> {
            if lower {
                s.to_ascii_lowercase().into()
            } else {
                s.into()
            }
        };
        Ok(match m {
            StringMatch::Exact(s) => Text::Exact(fold(s)),
            StringMatch::Prefix(s) => Text::Prefix(fold(s)),
            StringMatch::Suffix(s) => Text::Suffix(fold(s)),
            StringMatch::Regex(r) => Text::Regex(compile_regex(r, &format!("{field}.regex"))?),
        })
    }

    pub fn is_match(&self, text: &str) -> bool {
        match self {
            Text::Exact(s) => text == &**s,
            Text::Prefix(s) => text.starts_with(&**s),
            Text::Suffix(s) => text.ends_with(&**s),
            Text::Regex(r) => r.is_match(text),
        }
    }

    /// As [`Text::is_match`], ASCII case-insensitive for exact/prefix/suffix (the pattern was
    /// lower-cased at compile time); a regex decides for itself (`(?i)`).
    fn is_match_ignore_case(&self, text: &str) -> bool {
        let t = text.as_bytes();
        match self {
            Text::Exact(s) => t.eq_ignore_ascii_case(s.as_bytes()),
            Text::Prefix(s) => {
                t.len() >= s.len() && t[..s.len()].eq_ignore_ascii_case(s.as_bytes())
            }
            Text::Suffix(s) => {
                t.len() >= s.len() && t[t.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            Text::Regex(r) => r.is_match(text),
        }
    }
}

fn compile_regex(pattern: &str, field: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(pattern).map_err(|e| format!("{field}: invalid regex {pattern:?}: {e}"))
}

#[derive(Debug)]
enum HeaderCond {
    Present(bool),
    Value(Text),
}

#[derive(Debug)]
enum Cond {
    /// Bit `1 << source as u8` set for each allowed source.
    Source(u8),
    Namespace(Box<[Box<str>]>),
    Method(Box<[Box<str>]>),
    /// Inclusive ranges.
    Status(Box<[(u16, u16)]>),
    Path(Text),
    Host(Text),
    WorkloadKind(Box<str>),
    WorkloadName(Box<str>),
    Labels(Box<[(Box<str>, Box<str>)]>),
    RequestHeader(Box<str>, HeaderCond),
    ResponseHeader(Box<str>, HeaderCond),
}

fn source_bit(s: Source) -> u8 {
    1 << match s {
        Source::LuaV1 => 0,
        Source::LuaV2 => 1,
        Source::Tap => 2,
        Source::Capture => 3,
    }
}

/// A rule's conditions; all must hold.
#[derive(Debug, Default)]
pub struct Matcher {
    conds: Vec<Cond>,
}

impl Matcher {
    /// Validates and compiles `m`. Errors name the field (`match.status[1]: ...`).
    pub fn compile(m: &MatchConfig) -> Result<Matcher, String> {
        let mut conds = Vec::new();
        if !m.source.is_empty() {
            conds.push(Cond::Source(
                m.source
                    .iter()
                    .map(|s| source_bit(*s))
                    .fold(0, |a, b| a | b),
            ));
        }
        if !m.namespace.is_empty() {
            for (i, ns) in m.namespace.iter().enumerate() {
                if ns.is_empty() {
                    return Err(format!("match.namespace[{i}]: empty namespace"));
                }
            }
            conds.push(Cond::Namespace(
                m.namespace.iter().map(|s| s.as_str().into()).collect(),
            ));
        }
        if !m.method.is_empty() {
            for (i, method) in m.method.iter().enumerate() {
                // An HTTP token (RFC 9110 tchar): `GET`, `M-SEARCH`, ...
                let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if method.is_empty() || !method.bytes().all(tchar) {
                    return Err(format!(
                        "match.method[{i}]: {method:?} is not an HTTP method"
                    ));
                }
            }
            conds.push(Cond::Method(
                m.method
                    .iter()
                    .map(|s| s.to_ascii_uppercase().into())
                    .collect(),
            ));
        }
        if !m.status.is_empty() {
            let ranges = m
                .status
                .iter()
                .enumerate()
                .map(|(i, s)| status_range(s).map_err(|e| format!("match.status[{i}]: {e}")))
                .collect::<Result<_, _>>()?;
            conds.push(Cond::Status(ranges));
        }
        if let Some(path) = &m.path {
            conds.push(Cond::Path(Text::compile(path, "match.path", false)?));
        }
        if let Some(host) = &m.host {
            conds.push(Cond::Host(Text::compile(host, "match.host", true)?));
        }
        if let Some(w) = &m.workload {
            if w.kind.is_none() && w.name.is_none() {
                return Err("match.workload: give kind, name or both".to_string());
            }
            if let Some(kind) = &w.kind {
                conds.push(Cond::WorkloadKind(kind.as_str().into()));
            }
            if let Some(name) = &w.name {
                conds.push(Cond::WorkloadName(name.as_str().into()));
            }
        }
        if !m.labels.is_empty() {
            conds.push(Cond::Labels(
                m.labels
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                    .collect(),
            ));
        }
        for (field, headers, response) in [
            ("match.request_headers", &m.request_headers, false),
            ("match.response_headers", &m.response_headers, true),
        ] {
            for (name, hm) in headers {
                let at = format!("{field}.{name}");
                if name.is_empty() {
                    return Err(format!("{field}: empty header name"));
                }
                // Records keep header names lower-case: an upper-case name could never match.
                let lower: Box<str> = name.to_ascii_lowercase().into();
                let cond = match hm {
                    HeaderMatch::Present(p) => HeaderCond::Present(*p),
                    HeaderMatch::Exact(s) => HeaderCond::Value(Text::Exact(s.as_str().into())),
                    HeaderMatch::Prefix(s) => HeaderCond::Value(Text::Prefix(s.as_str().into())),
                    HeaderMatch::Suffix(s) => HeaderCond::Value(Text::Suffix(s.as_str().into())),
                    HeaderMatch::Regex(r) => {
                        HeaderCond::Value(Text::Regex(compile_regex(r, &format!("{at}.regex"))?))
                    }
                };
                conds.push(if response {
                    Cond::ResponseHeader(lower, cond)
                } else {
                    Cond::RequestHeader(lower, cond)
                });
            }
        }
        Ok(Matcher { conds })
    }

    /// Whether every condition holds for `ex`.
    #[inline]
    pub fn matches(&self, ex: &Exchange) -> bool {
        self.conds.iter().all(|c| c.holds(ex))
    }

    /// Whether the rule has no conditions (it matches every exchange).
    pub fn is_empty(&self) -> bool {
        self.conds.is_empty()
    }
}

/// `404` or `"404"` -> (404, 404); `"500-599"` -> (500, 599); within 100..=599, low <= high.
fn status_range(s: &StatusMatch) -> Result<(u16, u16), String> {
    let check = |code: u64| -> Result<u16, String> {
        if (100..=599).contains(&code) {
            Ok(code as u16)
        } else {
            Err(format!("status {code} is outside 100-599"))
        }
    };
    match s {
        StatusMatch::Code(code) => check(*code).map(|c| (c, c)),
        StatusMatch::Text(text) => {
            let parse = |part: &str| {
                part.trim().parse::<u64>().map_err(|_| {
                    format!("{text:?} is not a status code or a range like \"500-599\"")
                })
            };
            let (lo, hi) = match text.split_once('-') {
                Some((lo, hi)) => (check(parse(lo)?)?, check(parse(hi)?)?),
                None => {
                    let c = check(parse(text)?)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(format!(
                    "range {text:?} is empty (its start is above its end)"
                ));
            }
            Ok((lo, hi))
        }
    }
}

/// The request path without its query string.
fn path_only(path: &str) -> &str {
    match memchr::memchr(b'?', path.as_bytes()) {
        Some(i) => &path[..i],
        None => path,
    }
}

/// `reviews:9080` -> `reviews`; `[::1]:80` -> `[::1]`; no port: unchanged.
pub(crate) fn without_port(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i)
            if !authority[i + 1..].is_empty()
                && authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            let host = &authority[..i];
            // A bare IPv6 address (no brackets) has colons but no port.
            if host.contains(':') && !host.starts_with('[') {
                authority
            } else {
                host
            }
        }
        _ => authority,
    }
}

fn first_header<'a>(d: &'a Direction, name: &str) -> Option<&'a str> {
    d.headers.as_ref()?.get(name)?.first().map(String::as_str)
}

fn header_holds(headers: Option<&Headers>, name: &str, cond: &HeaderCond) -> bool {
    let Some(headers) = headers else {
        // The filter variant logged no headers: presence is unknown either way.
        return false;
    };
    match cond {
        HeaderCond::Present(want) => headers.contains_key(name) == *want,
        HeaderCond::Value(text) => headers
            .get(name)
            .is_some_and(|values| values.iter().any(|v| text.is_match(v))),
    }
}

impl Cond {
    #[inline]
    fn holds(&self, ex: &Exchange) -> bool {
        let request = ex.request.as_ref();
        match self {
            Cond::Source(bits) => bits & source_bit(ex.source) != 0,
            Cond::Namespace(list) => ex
                .k8s
                .as_ref()
                .is_some_and(|k| list.iter().any(|n| **n == k.namespace)),
            Cond::Method(list) => request
                .and_then(|r| r.method.as_deref().or_else(|| first_header(r, ":method")))
                .is_some_and(|m| list.iter().any(|l| l.eq_ignore_ascii_case(m))),
            Cond::Status(ranges) => ex
                .response
                .as_ref()
                .and_then(|r| {
                    r.status
                        .or_else(|| first_header(r, ":status")?.trim().parse().ok())
                })
                .is_some_and(|s| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s))),
            Cond::Path(text) => request
                .and_then(|r| r.path.as_deref().or_else(|| first_header(r, ":path")))
                .is_some_and(|p| text.is_match(path_only(p))),
            Cond::Host(text) => request
                .and_then(|r| {
                    r.authority
                        .as_deref()
                        .or_else(|| first_header(r, ":authority"))
                        .or_else(|| first_header(r, "host"))
                })
                .is_some_and(|h| text.is_match_ignore_case(without_port(h))),
            Cond::WorkloadKind(kind) => ex
                .k8s
                .as_ref()
                .and_then(|k| k.workload.as_ref())
                .is_some_and(|w| w.kind.eq_ignore_ascii_case(kind)),
            Cond::WorkloadName(name) => ex
                .k8s
                .as_ref()
                .and_then(|k| k.workload.as_ref())
                .is_some_and(|w| w.name == **name),
            Cond::Labels(labels) => ex.k8s.as_ref().is_some_and(|k| {
                labels
                    .iter()
                    .all(|(key, value)| k.labels.get(&**key).is_some_and(|v| **v == **value))
            }),
            Cond::RequestHeader(name, cond) => {
                request.is_some_and(|r| header_holds(r.headers.as_ref(), name, cond))
            }
            Cond::ResponseHeader(name, cond) => ex
                .response
                .as_ref()
                .is_some_and(|r| header_holds(r.headers.as_ref(), name, cond)),
        }
    }
}
