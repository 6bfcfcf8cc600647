//! What a user asks for ([`Options`], plain values as the flags give them) and what the generator
//! accepts ([`Selection`] and the checked fields of [`super::EnvoyFilter`]). Every check happens
//! here, before anything is rendered, so a bad flag gives one clear message and nothing on stdout.

use regex_syntax::ast::{self, Ast, Visitor};

/// The name the shipped manifest has (`deploy/envoyfilter-lua-v2.yaml`).
pub const DEFAULT_NAME: &str = "meshtap-logpayload-v2";
/// The Lua filter's default per-body cap (64 KiB), as in `docs/lua-v2-format.md`.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 65536;
/// The largest cap accepted: 1 GiB. A Lua number holds it exactly; anything near it already means
/// logging whole uploads, which the streaming filter does, one 12 KiB line at a time.
pub const MAX_MAX_BODY_BYTES: u64 = 1 << 30;

/// Which of the sidecar's traffic the filter sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// Requests the workload receives (Istio context `SIDECAR_INBOUND`).
    Inbound,
    /// Requests the workload sends (Istio context `SIDECAR_OUTBOUND`).
    Outbound,
    /// Both: two config patches with the same filter.
    Both,
}

impl Direction {
    /// Istio's `match.context` values, one config patch each.
    pub fn contexts(self) -> &'static [&'static str] {
        match self {
            Direction::Inbound => &["SIDECAR_INBOUND"],
            Direction::Outbound => &["SIDECAR_OUTBOUND"],
            Direction::Both => &["SIDECAR_INBOUND", "SIDECAR_OUTBOUND"],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Both => "both",
        }
    }
}

/// One path selector. All of them look at the request path without its query string, except
/// where a regex itself reaches into the query (see [`PathMatch::Regex`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path is exactly this (a query string after it is allowed).
    Exact(String),
    /// The path starts with this.
    Prefix(String),
    /// The path matches this RE2 regex in its entirety (a query string after it is allowed).
    Regex(String),
}

impl PathMatch {
    /// The flag that gives this selector.
    pub fn flag(&self) -> &'static str {
        match self {
            PathMatch::Exact(_) => "--path-exact",
            PathMatch::Prefix(_) => "--path-prefix",
            PathMatch::Regex(_) => "--path-regex",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            PathMatch::Exact(v) | PathMatch::Prefix(v) | PathMatch::Regex(v) => v,
        }
    }
}

/// The generator's input, as the flags give it (nothing checked yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; `None` leaves it out (kubectl's `-n` or context decides).
    pub namespace: Option<String>,
    /// `spec.workloadSelector.labels` as `key=value` strings, in the order given.
    pub selector: Vec<String>,
    pub direction: Direction,
    /// Selected paths; a request matching any of them is captured (if its method is selected).
    pub paths: Vec<PathMatch>,
    /// Selected methods; empty means every method.
    pub methods: Vec<String>,
    /// Bytes logged per body (the Lua `MAX_BODY`).
    pub max_body_bytes: u64,
    /// Headers (and trailers) never logged.
    pub skip_headers: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: DEFAULT_NAME.to_string(),
            namespace: None,
            selector: Vec::new(),
            direction: Direction::Inbound,
            paths: Vec::new(),
            methods: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            skip_headers: Vec::new(),
        }
    }
}

/// A flag value the generator refuses, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOption {
    #[error("--name {0:?}: {1}")]
    Name(String, String),
    #[error("--namespace {0:?}: {1}")]
    Namespace(String, String),
    #[error("--selector {0:?}: {1}")]
    Selector(String, String),
    #[error("{flag} {value:?}: {reason}")]
    Path {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--method {0:?}: {1}")]
    Method(String, String),
    #[error("--max-body-bytes {0}: must be between 1 and {MAX_MAX_BODY_BYTES}")]
    MaxBodyBytes(u64),
    #[error("--skip-header {0:?}: {1}")]
    SkipHeader(String, String),
}

/// The requests the filter captures: a request is captured when its path matches one of `paths`
/// (or `paths` is empty) and its method is one of `methods` (or `methods` is empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub paths: Vec<PathMatch>,
    /// Upper case, without duplicates.
    pub methods: Vec<String>,
}

impl Selection {
    /// Whether every request is captured (no matcher needed around the Lua filter).
    pub fn is_everything(&self) -> bool {
        self.paths.is_empty() && self.methods.is_empty()
    }

    /// The regex Envoy is given for a `--path-regex`: the user's regex, then an optional query
    /// string (Envoy's `safe_regex` must match the whole `:path`, query included).
    pub fn envoy_regex(regex: &str) -> String {
        format!("(?:{regex})(?:\\?.*)?")
    }

    /// Whether a request with this `:method` and `:path` (query included, as Envoy sees it) is
    /// captured: the same decision as the matcher the generator gives Envoy, for tests and docs.
    pub fn captures(&self, method: &str, path: &str) -> bool {
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m == method);
        let path_ok = self.paths.is_empty()
            || self.paths.iter().any(|p| match p {
                PathMatch::Exact(v) => {
                    path == v
                        || path
                            .strip_prefix(v.as_str())
                            .is_some_and(|r| r.starts_with('?'))
                }
                PathMatch::Prefix(v) => path.starts_with(v.as_str()),
                PathMatch::Regex(v) => {
                    regex::Regex::new(&format!("^(?:{})$", Self::envoy_regex(v)))
                        .is_ok_and(|re| re.is_match(path))
                }
            });
        method_ok && path_ok
    }
}

/// A DNS-1123 subdomain (`metadata.name` of most Kubernetes objects).
pub(super) fn check_name(name: &str) -> Result<(), InvalidOption> {
    let bad = |why: &str| Err(InvalidOption::Name(name.to_string(), why.to_string()));
    if name.is_empty() || name.len() > 253 {
        return bad("must be 1 to 253 characters");
    }
    for part in name.split('.') {
        if !is_dns_label(part) {
            return bad("must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit (a DNS-1123 subdomain)");
        }
    }
    Ok(())
}

/// A DNS-1123 label (a namespace name).
pub(super) fn check_namespace(namespace: &str) -> Result<(), InvalidOption> {
    if namespace.len() > 63 || !is_dns_label(namespace) {
        return Err(InvalidOption::Namespace(
            namespace.to_string(),
            "must be 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit (a DNS-1123 label)".into(),
        ));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A label name's or value's name part: up to 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn is_label_word(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && alnum(s.chars().next())
        && alnum(s.chars().last())
}

/// `key=value` as a Kubernetes label: key `[prefix/]name`, value empty or a label word.
pub(super) fn parse_selector(pair: &str) -> Result<(String, String), InvalidOption> {
    let bad = |why: &str| Err(InvalidOption::Selector(pair.to_string(), why.to_string()));
    let Some((key, value)) = pair.split_once('=') else {
        return bad("expected KEY=VALUE");
    };
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.len() > 253 || !prefix.split('.').all(is_dns_label) {
                return bad(
                    "the key's prefix must be a DNS-1123 subdomain (e.g. app.kubernetes.io)",
                );
            }
            name
        }
        None => key,
    };
    if !is_label_word(name) {
        return bad("the key's name must be 1 to 63 of [A-Za-z0-9_.-], starting and ending with a letter or digit");
    }
    if !value.is_empty() && !is_label_word(value) {
        return bad("the value must be empty or up to 63 of [A-Za-z0-9_.-], starting and ending with a letter or digit");
    }
    Ok((key.to_string(), value.to_string()))
}

/// An exact or prefix path: starts with `/`, printable ASCII without space, `?` or `#` (the query
/// string is never part of what these match).
pub(super) fn check_path(path: &PathMatch) -> Result<(), InvalidOption> {
    let bad = |why: String| {
        Err(InvalidOption::Path {
            flag: path.flag(),
            value: path.value().to_string(),
            reason: why,
        })
    };
    match path {
        PathMatch::Exact(v) | PathMatch::Prefix(v) => {
            if !v.starts_with('/') {
                return bad("must start with '/'".into());
            }
            if let Some(c) = v.chars().find(|c| !c.is_ascii_graphic()) {
                return bad(format!(
                    "{c:?} cannot be in a request path (percent-encode it as it is sent, e.g. %20)"
                ));
            }
            if v.contains(['?', '#']) {
                return bad(
                    "the query string and fragment are not matched: give the path only".into(),
                );
            }
            Ok(())
        }
        PathMatch::Regex(v) => check_regex(v).or_else(bad),
    }
}

/// A regex that both the `regex` crate and Envoy's RE2 accept with the same meaning: parsed with
/// `regex-syntax`, then refused where RE2 differs (flags `x`, `R`, `u`; class set operations and
/// nested classes; `\<`, `\>` and `\b{...}` word boundaries), then compiled.
fn check_regex(regex: &str) -> Result<(), String> {
    if regex.is_empty() {
        return Err("empty regex (leave the flag out to capture every path)".into());
    }
    if let Some(c) = regex.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{c:?}: a control character never occurs in a request path"
        ));
    }
    let parsed = ast::parse::Parser::new()
        .parse(regex)
        .map_err(|e| format!("not a valid regex:\n{e}"))?;
    ast::visit(&parsed, Re2Only).map_err(|e| format!("{e}; Envoy's RE2 does not support it"))?;
    if let Err(e) = regex::Regex::new(&Selection::envoy_regex(regex)) {
        return Err(format!("not a valid regex: {e}"));
    }
    Ok(())
}

/// Walks a regex's syntax tree, refusing what RE2 lacks.
struct Re2Only;

impl Visitor for Re2Only {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, node: &Ast) -> Result<(), String> {
        let flags = match node {
            Ast::Flags(set) => Some(&set.flags),
            Ast::Group(group) => match &group.kind {
                ast::GroupKind::NonCapturing(flags) => Some(flags),
                _ => None,
            },
            Ast::Assertion(assertion) => {
                return match assertion.kind {
                    ast::AssertionKind::StartLine
                    | ast::AssertionKind::EndLine
                    | ast::AssertionKind::StartText
                    | ast::AssertionKind::EndText
                    | ast::AssertionKind::WordBoundary
                    | ast::AssertionKind::NotWordBoundary => Ok(()),
                    _ => Err(format!(
                        "the assertion at {} is a `regex` crate extension",
                        span_text(&assertion.span)
                    )),
                };
            }
            _ => None,
        };
        if let Some(flags) = flags {
            for item in &flags.items {
                if let ast::FlagsItemKind::Flag(flag) = &item.kind {
                    let letter = match flag {
                        ast::Flag::IgnoreWhitespace => "x",
                        ast::Flag::CRLF => "R",
                        ast::Flag::Unicode => "u",
                        _ => continue,
                    };
                    return Err(format!("the flag `{letter}` at {}", span_text(&item.span)));
                }
            }
        }
        Ok(())
    }

    fn visit_class_set_item_pre(&mut self, item: &ast::ClassSetItem) -> Result<(), String> {
        if let ast::ClassSetItem::Bracketed(inner) = item {
            return Err(format!("the nested class at {}", span_text(&inner.span)));
        }
        Ok(())
    }

    fn visit_class_set_binary_op_pre(&mut self, op: &ast::ClassSetBinaryOp) -> Result<(), String> {
        Err(format!(
            "the class set operation ({:?}) at {}",
            op.kind,
            span_text(&op.span)
        ))
    }
}

fn span_text(span: &ast::Span) -> String {
    format!("offset {}", span.start.offset)
}

/// An HTTP method token (RFC 9110 `token`), upper-cased: `get` means `GET`.
pub(super) fn normalize_method(method: &str) -> Result<String, InvalidOption> {
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(InvalidOption::Method(
            method.to_string(),
            "an HTTP method is a token such as GET or POST".into(),
        ));
    }
    Ok(method.to_ascii_uppercase())
}

/// A header name (RFC 9110 `token`), lower-cased as Envoy presents it to the filter.
/// Pseudo-headers (`:path`, ...) are refused: meshtap builds a record's method, path, authority
/// and status from them.
pub(super) fn normalize_header(name: &str) -> Result<String, InvalidOption> {
    let bad = |why: &str| Err(InvalidOption::SkipHeader(name.to_string(), why.to_string()));
    if name.starts_with(':') {
        return bad("pseudo-headers carry the method, path, authority and status of a record and cannot be skipped");
    }
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return bad("a header name is a token such as authorization or x-api-key");
    }
    Ok(name.to_ascii_lowercase())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(super) fn check_max_body(bytes: u64) -> Result<(), InvalidOption> {
    if bytes == 0 || bytes > MAX_MAX_BODY_BYTES {
        return Err(InvalidOption::MaxBodyBytes(bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_namespaces() {
        assert!(check_name("meshtap-logpayload-v2").is_ok());
        assert!(check_name("a.b-c").is_ok());
        for bad in ["", "Upper", "-a", "a-", "a..b", "a_b", &"x".repeat(254)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_namespace("bookinfo").is_ok());
        for bad in ["", "a.b", "Bookinfo", &"x".repeat(64)] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn selectors() {
        assert_eq!(
            parse_selector("app=productpage").unwrap(),
            ("app".into(), "productpage".into())
        );
        assert_eq!(
            parse_selector("app.kubernetes.io/name=reviews").unwrap(),
            ("app.kubernetes.io/name".into(), "reviews".into())
        );
        assert_eq!(parse_selector("tier=").unwrap(), ("tier".into(), "".into()));
        for bad in [
            "app", "=x", "app=a b", "Bad_/x=y", "a/b/c=d", "app=-x", "k=v=w",
        ] {
            let e = parse_selector(bad).unwrap_err();
            assert!(e.to_string().starts_with("--selector"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn paths() {
        assert!(check_path(&PathMatch::Exact("/api/v1".into())).is_ok());
        assert!(check_path(&PathMatch::Prefix("/".into())).is_ok());
        for bad in ["api", "/a b", "/a?b=1", "/a#x", "", "/tab\there", "/é"] {
            assert!(
                check_path(&PathMatch::Exact(bad.into())).is_err(),
                "{bad:?}"
            );
            assert!(
                check_path(&PathMatch::Prefix(bad.into())).is_err(),
                "{bad:?}"
            );
        }
        let ok = [
            r"/orders/[0-9]+",
            r"/a/(b|c)/\d{1,3}",
            r"(?i)/API/.*",
            r"/x/[^/]+",
        ];
        for regex in ok {
            assert!(
                check_path(&PathMatch::Regex(regex.into())).is_ok(),
                "{regex}"
            );
        }
        let bad = [
            ("", "empty"),
            ("/a/(b", "not a valid regex"),
            (r"/a/\1", "not a valid regex"),
            ("(?x)/a b", "RE2"),
            ("(?R)/a", "RE2"),
            ("(?-u)/a", "RE2"),
            ("/[a-z&&[^x]]", "RE2"),
            ("/[a[bc]]", "RE2"),
            (r"/\<a", "RE2"),
            (r"/a\b{end}", "RE2"),
            ("/a(?=b)", "not a valid regex"),
        ];
        for (regex, why) in bad {
            let e = check_path(&PathMatch::Regex(regex.into())).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("--path-regex"), "{regex}: {text}");
            assert!(text.contains(why), "{regex}: {text}");
        }
    }

    #[test]
    fn methods_and_headers_are_normalised() {
        assert_eq!(normalize_method("get").unwrap(), "GET");
        assert_eq!(normalize_method("PURGE").unwrap(), "PURGE");
        assert!(normalize_method("GE T").is_err());
        assert!(normalize_method("").is_err());
        assert_eq!(normalize_header("Authorization").unwrap(), "authorization");
        assert_eq!(normalize_header("X-Api-Key").unwrap(), "x-api-key");
        for bad in [":path", "", "a b", "x\"y", "x\\y", "é"] {
            assert!(normalize_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn body_cap_bounds() {
        assert!(check_max_body(1).is_ok());
        assert!(check_max_body(MAX_MAX_BODY_BYTES).is_ok());
        assert!(check_max_body(0).is_err());
        assert!(check_max_body(MAX_MAX_BODY_BYTES + 1).is_err());
    }

    #[test]
    fn selection_semantics() {
        let s = Selection {
            paths: vec![
                PathMatch::Exact("/health".into()),
                PathMatch::Prefix("/api/".into()),
                PathMatch::Regex("/orders/[0-9]+".into()),
            ],
            methods: vec!["GET".into(), "POST".into()],
        };
        for (method, path) in [
            ("GET", "/health"),
            ("GET", "/health?verbose=1"),
            ("POST", "/api/"),
            ("POST", "/api/x?y"),
            ("GET", "/orders/12"),
            ("GET", "/orders/12?page=2"),
        ] {
            assert!(s.captures(method, path), "{method} {path}");
        }
        for (method, path) in [
            ("GET", "/healthz"),
            ("GET", "/health/"),
            ("PUT", "/api/x"),
            ("GET", "/api"),
            ("GET", "/orders/x"),
            ("GET", "/v1/orders/12"),
            ("GET", "/orders/12/items"),
        ] {
            assert!(!s.captures(method, path), "{method} {path}");
        }
        assert!(Selection::default().captures("DELETE", "/anything"));
        assert!(Selection::default().is_everything());
    }
}
