//! Which pods are captured: namespace include/exclude lists (known from the log path alone), a
//! Kubernetes label selector and an opt-out annotation (both need the pod from the API).
//!
//! The label selector is parsed from the syntax `kubectl -l` takes (the grammar of
//! `k8s.io/apimachinery/pkg/labels`): comma-separated requirements `key`, `!key`, `key=value`,
//! `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`. It is parsed into kube's own
//! [`Selector`], whose matching follows Kubernetes (`!=` and `notin` also match a pod without the
//! label). The numeric `>`/`<` requirements are rejected: pod selection never needs them.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Expression, Selector, SelectorExt};

use super::config::UnknownPods;

/// Why a selector or label key is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{0}")]
    Syntax(String),
    #[error("bad label key {key:?}: {why}")]
    Key { key: String, why: String },
    #[error("bad label value {value:?}: {why}")]
    Value { value: String, why: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Ident(&'a str),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
}

fn lex(text: &str) -> Vec<Token<'_>> {
    let b = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let two = b.get(i + 1).copied();
        let (token, len) = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'!' if two == Some(b'=') => (Token::NotEq, 2),
            b'!' => (Token::Not, 1),
            b'=' if two == Some(b'=') => (Token::DoubleEq, 2),
            b'=' => (Token::Eq, 1),
            b'(' => (Token::Open, 1),
            b')' => (Token::Close, 1),
            b',' => (Token::Comma, 1),
            b'>' => (Token::Gt, 1),
            b'<' => (Token::Lt, 1),
            _ => {
                let end = b[i..]
                    .iter()
                    .position(|c| b" \t\n\r!=(),<>".contains(c))
                    .map_or(b.len(), |p| i + p);
                (Token::Ident(&text[i..end]), end - i)
            }
        };
        tokens.push(token);
        i += len;
    }
    tokens
}

/// Parses a label selector; empty (or blank) selects everything.
pub fn parse_selector(text: &str) -> Result<Selector, SelectorError> {
    let tokens = lex(text);
    let mut selector = Selector::default();
    if tokens.is_empty() {
        return Ok(selector);
    }
    let mut p = Parser { tokens, at: 0 };
    loop {
        selector.extend(p.requirement()?);
        match p.next() {
            None => return Ok(selector),
            Some(Token::Comma) => {}
            Some(t) => return Err(p.unexpected(Some(t), "',' between requirements")),
        }
    }
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn next(&mut self) -> Option<Token<'a>> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.at)
    }

    fn unexpected(&self, token: Option<Token<'_>>, wanted: &str) -> SelectorError {
        let found = match token {
            None => "the end".to_string(),
            Some(Token::Ident(s)) => format!("{s:?}"),
            Some(Token::Gt | Token::Lt) => {
                return SelectorError::Syntax(
                    "'>' and '<' are not supported in pod selection".to_string(),
                )
            }
            Some(t) => format!("{t:?}"),
        };
        SelectorError::Syntax(format!("expected {wanted}, found {found}"))
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.next() {
            Some(Token::Ident(key)) => {
                check_key(key).map_err(|why| SelectorError::Key {
                    key: key.to_string(),
                    why,
                })?;
                Ok(key.to_string())
            }
            t => Err(self.unexpected(t, "a label key")),
        }
    }

    /// A value after `=`, `==` or `!=`: empty when the requirement ends right there.
    fn value(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            None | Some(Token::Comma) => Ok(String::new()),
            Some(Token::Ident(_)) => {
                let Some(Token::Ident(v)) = self.next() else {
                    unreachable!("peeked")
                };
                check_value(v)?;
                Ok(v.to_string())
            }
            Some(_) => {
                let t = self.next();
                Err(self.unexpected(t, "a label value"))
            }
        }
    }

    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        match self.next() {
            Some(Token::Open) => {}
            t => return Err(self.unexpected(t, "'(' after in/notin")),
        }
        let mut values = BTreeSet::new();
        loop {
            match self.next() {
                Some(Token::Ident(v)) => {
                    check_value(v)?;
                    values.insert(v.to_string());
                }
                t => return Err(self.unexpected(t, "a value in the set")),
            }
            match self.next() {
                Some(Token::Comma) => {}
                Some(Token::Close) => return Ok(values),
                t => return Err(self.unexpected(t, "',' or ')' in the set")),
            }
        }
    }

    fn requirement(&mut self) -> Result<Expression, SelectorError> {
        if self.peek() == Some(&Token::Not) {
            self.at += 1;
            return Ok(Expression::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        match self.peek() {
            None | Some(Token::Comma) => Ok(Expression::Exists(key)),
            Some(Token::Eq | Token::DoubleEq) => {
                self.at += 1;
                Ok(Expression::Equal(key, self.value()?))
            }
            Some(Token::NotEq) => {
                self.at += 1;
                Ok(Expression::NotEqual(key, self.value()?))
            }
            Some(Token::Ident("in")) => {
                self.at += 1;
                Ok(Expression::In(key, self.set()?))
            }
            Some(Token::Ident("notin")) => {
                self.at += 1;
                Ok(Expression::NotIn(key, self.set()?))
            }
            Some(_) => {
                let t = self.next();
                Err(self.unexpected(t, "an operator (=, ==, !=, in, notin), ',' or the end"))
            }
        }
    }
}

/// A label name part: at most 63 characters, alphanumerics at both ends, `-_.` allowed between.
fn check_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Err("the name part is empty".into());
    }
    if b.len() > 63 {
        return Err("the name part is longer than 63 characters".into());
    }
    let ok_inner = |c: &u8| c.is_ascii_alphanumeric() || b"-_.".contains(c);
    if !b[0].is_ascii_alphanumeric()
        || !b[b.len() - 1].is_ascii_alphanumeric()
        || !b.iter().all(ok_inner)
    {
        return Err(
            "must be alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
                .into(),
        );
    }
    Ok(())
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain of at most 253 characters.
pub fn check_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            let ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|label| {
                    let b = label.as_bytes();
                    !b.is_empty()
                        && b.len() <= 63
                        && b.iter()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                        && b[0] != b'-'
                        && b[b.len() - 1] != b'-'
                });
            if !ok {
                return Err(format!("the prefix {prefix:?} is not a DNS subdomain"));
            }
            name
        }
        None => key,
    };
    check_name(name)
}

fn check_value(value: &str) -> Result<(), SelectorError> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|why| SelectorError::Value {
        value: value.to_string(),
        why,
    })
}

/// The compiled `kubernetes.select` rules.
#[derive(Debug, Clone)]
pub struct Selection {
    pub include: BTreeSet<String>,
    pub exclude: BTreeSet<String>,
    pub labels: Selector,
    pub opt_out_annotation: Option<String>,
    pub unknown_pods: UnknownPods,
}

impl Default for Selection {
    /// Everything is selected.
    fn default() -> Self {
        Selection {
            include: BTreeSet::new(),
            exclude: BTreeSet::new(),
            labels: Selector::default(),
            opt_out_annotation: None,
            unknown_pods: UnknownPods::Keep,
        }
    }
}

/// Annotation values that opt a pod out.
fn opts_out(value: &str) -> bool {
    let v = value.trim();
    v.eq_ignore_ascii_case("false") || v.eq_ignore_ascii_case("disabled")
}

impl Selection {
    /// Whether pods of `namespace` are captured (decided from the log path alone).
    pub fn namespace_selected(&self, namespace: &str) -> bool {
        (self.include.is_empty() || self.include.contains(namespace))
            && !self.exclude.contains(namespace)
    }

    /// Whether a pod with these (complete, not allow-listed) labels and annotations is captured,
    /// namespace aside.
    pub fn pod_selected(
        &self,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> bool {
        let opted_out = self
            .opt_out_annotation
            .as_ref()
            .and_then(|a| annotations.get(a))
            .is_some_and(|v| opts_out(v));
        !opted_out && self.labels.matches(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn parses_every_requirement_kind() {
        let s = parse_selector(
            " app in (a, b),tier!=db , !canary,env==prod,example.com/team=x,track, mode notin (debug),empty= ",
        )
        .unwrap();
        let want: Selector = [
            Expression::In("app".into(), set(&["a", "b"])),
            Expression::NotEqual("tier".into(), "db".into()),
            Expression::DoesNotExist("canary".into()),
            Expression::Equal("env".into(), "prod".into()),
            Expression::Equal("example.com/team".into(), "x".into()),
            Expression::Exists("track".into()),
            Expression::NotIn("mode".into(), set(&["debug"])),
            Expression::Equal("empty".into(), String::new()),
        ]
        .into_iter()
        .collect();
        assert_eq!(s, want);
        assert_eq!(parse_selector("").unwrap(), Selector::default());
        assert_eq!(parse_selector("  ").unwrap(), Selector::default());
        // Values may be the words `in` and `notin`.
        assert_eq!(
            parse_selector("x=in").unwrap(),
            Selector::from(Expression::Equal("x".into(), "in".into()))
        );
    }

    #[test]
    fn rejects_bad_selectors_with_the_reason() {
        for (text, says) in [
            ("app in (a,b", "expected ',' or ')'"),
            ("app in ()", "a value in the set"),
            ("app in a", "'(' after in/notin"),
            ("app=a b", "',' between requirements"),
            ("app,,x", "a label key"),
            ("app,", "a label key"),
            ("=a", "a label key"),
            ("!", "a label key"),
            ("app>1", "not supported"),
            ("app=(a)", "a label value"),
            ("-app=a", "bad label key"),
            ("Example.com/app=a", "not a DNS subdomain"),
            ("app=-a", "bad label value"),
            ("app=é", "bad label value"),
            ("app foo", "an operator"),
        ] {
            let e = parse_selector(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let long = "a".repeat(64);
        assert!(parse_selector(&format!("{long}=x")).is_err());
        assert!(parse_selector(&format!("x={long}")).is_err());
    }

    #[test]
    fn matches_like_kubernetes() {
        let s = parse_selector("app in (a,b),tier!=db,!canary").unwrap();
        assert!(s.matches(&labels(&[("app", "a")])));
        assert!(s.matches(&labels(&[("app", "b"), ("tier", "web")])));
        assert!(!s.matches(&labels(&[("app", "c")])));
        assert!(!s.matches(&labels(&[("app", "a"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("app", "a"), ("canary", "")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn selection_by_namespace_labels_and_annotation() {
        let mut s = Selection {
            include: set(&["shop", "pay"]),
            exclude: set(&["pay"]),
            labels: parse_selector("app").unwrap(),
            opt_out_annotation: Some("meshtap.io/capture".into()),
            unknown_pods: UnknownPods::Keep,
        };
        assert!(s.namespace_selected("shop"));
        assert!(!s.namespace_selected("pay"), "exclude wins");
        assert!(!s.namespace_selected("default"), "not included");
        s.include.clear();
        assert!(s.namespace_selected("default"));

        let app = labels(&[("app", "x")]);
        assert!(s.pod_selected(&app, &labels(&[])));
        assert!(!s.pod_selected(&labels(&[]), &labels(&[])));
        for value in ["false", "Disabled", " FALSE "] {
            let a = labels(&[("meshtap.io/capture", value)]);
            assert!(!s.pod_selected(&app, &a), "{value}");
        }
        let a = labels(&[("meshtap.io/capture", "true")]);
        assert!(s.pod_selected(&app, &a));
        s.opt_out_annotation = None;
        let a = labels(&[("meshtap.io/capture", "false")]);
        assert!(s.pod_selected(&app, &a), "opting out is off");
        assert!(Selection::default().pod_selected(&labels(&[]), &a));
    }
}
