//! The `topic` setting: a fixed topic name, or a template whose `{namespace}`, `{pod}`,
//! `{container}` and `{source}` placeholders are filled from each record.
//!
//! The template is parsed when the config is read, so a misspelt placeholder is a config error, not
//! a record sent to a topic literally named `{namespce}`. Filled-in values are made legal topic
//! names: Kafka allows only ASCII letters, digits, `.`, `_` and `-`, at most 249 characters.
//! Kubernetes names already keep to that set, so in practice nothing is replaced.

use std::fmt;

use crate::record::Exchange;

/// Kafka's longest topic name.
const MAX_TOPIC_LEN: usize = 249;

/// The value of a placeholder when the record has no Kubernetes identity (its log path was not a
/// kubelet path).
pub const UNKNOWN: &str = "unknown";

/// A parsed `topic` setting. Deserialized from (and displayed as) its text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct TopicTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Namespace,
    Pod,
    Container,
    Source,
}

/// True for the characters Kafka allows in a topic name.
fn legal(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl TryFrom<String> for TopicTemplate {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text.as_str();
        while let Some(c) = rest.chars().next() {
            if c == '{' {
                let end = rest.find('}').ok_or_else(|| {
                    format!("sink.topic {text:?}: a placeholder is not closed with '}}'")
                })?;
                let part = match &rest[1..end] {
                    "namespace" => Part::Namespace,
                    "pod" => Part::Pod,
                    "container" => Part::Container,
                    "source" => Part::Source,
                    other => {
                        return Err(format!(
                            "sink.topic {text:?}: unknown placeholder {{{other}}}; \
                             use {{namespace}}, {{pod}}, {{container}} or {{source}}"
                        ))
                    }
                };
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part);
                rest = &rest[end + 1..];
                continue;
            }
            if !legal(c) {
                return Err(format!(
                    "sink.topic {text:?}: {c:?} is not allowed in a Kafka topic name \
                     (ASCII letters, digits, '.', '_', '-')"
                ));
            }
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        match parts.as_slice() {
            [] => return Err("sink.topic must not be empty".into()),
            [Part::Literal(fixed)] if fixed == "." || fixed == ".." => {
                return Err(format!(
                    "sink.topic {fixed:?} is not a legal Kafka topic name"
                ));
            }
            [Part::Literal(fixed)] if fixed.len() > MAX_TOPIC_LEN => {
                return Err(format!(
                    "sink.topic is {} characters long; Kafka allows at most {MAX_TOPIC_LEN}",
                    fixed.len()
                ));
            }
            _ => {}
        }
        Ok(TopicTemplate { text, parts })
    }
}

impl std::str::FromStr for TopicTemplate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        TopicTemplate::try_from(text.to_owned())
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TopicTemplate {
    /// The topic for `record`, written into `out` (cleared first). A value with characters Kafka
    /// does not allow has them replaced by `_`; a name longer than Kafka allows is cut.
    pub fn render(&self, record: &Exchange, out: &mut String) {
        out.clear();
        let k8s = record.k8s.as_ref();
        for part in &self.parts {
            let value = match part {
                Part::Literal(text) => text.as_str(),
                Part::Namespace => k8s.map_or(UNKNOWN, |k| k.namespace.as_str()),
                Part::Pod => k8s.map_or(UNKNOWN, |k| k.pod.as_str()),
                Part::Container => k8s.map_or(UNKNOWN, |k| k.container.as_str()),
                Part::Source => record.source.as_str(),
            };
            let value = if value.is_empty() { UNKNOWN } else { value };
            out.extend(value.chars().map(|c| if legal(c) { c } else { '_' }));
        }
        // Only ASCII is left, so any byte index is a char boundary.
        out.truncate(MAX_TOPIC_LEN);
        if out == "." || out == ".." {
            out.replace_range(.., UNKNOWN);
        }
    }

    /// The topic when the template has no placeholder.
    pub fn fixed(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Literal(fixed)] => Some(fixed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{K8sMeta, LogPosition, Source};

    fn exchange(k8s: Option<K8sMeta>) -> Exchange {
        Exchange {
            id: "id".into(),
            source: Source::LuaV2,
            time: "t".into(),
            k8s,
            log: LogPosition::default(),
            request: None,
            response: None,
            complete: true,
            warnings: vec![],
            redacted: Vec::new(),
        }
    }

    fn render(template: &str, record: &Exchange) -> String {
        let mut out = String::new();
        template
            .parse::<TopicTemplate>()
            .unwrap()
            .render(record, &mut out);
        out
    }

    #[test]
    fn placeholders_are_filled_from_the_record() {
        let meta = K8sMeta {
            namespace: "bookinfo".into(),
            pod: "productpage-v1-6b7".into(),
            pod_uid: "u".into(),
            container: "istio-proxy".into(),
            ..K8sMeta::default()
        };
        let with = exchange(Some(meta));
        let without = exchange(None);
        let t = "mesh.{namespace}.{pod}.{container}.{source}";
        assert_eq!(
            render(t, &with),
            "mesh.bookinfo.productpage-v1-6b7.istio-proxy.lua-v2"
        );
        assert_eq!(render(t, &without), "mesh.unknown.unknown.unknown.lua-v2");
        assert_eq!(render("fixed_topic-1", &with), "fixed_topic-1");
        assert_eq!(
            "fixed".parse::<TopicTemplate>().unwrap().fixed(),
            Some("fixed")
        );
        assert_eq!("{pod}".parse::<TopicTemplate>().unwrap().fixed(), None);
    }

    #[test]
    fn filled_values_become_legal_topic_names() {
        let meta = K8sMeta {
            namespace: "ns with spaces/ü".into(),
            pod: "p".repeat(300),
            ..K8sMeta::default()
        };
        let record = exchange(Some(meta));
        assert_eq!(render("{namespace}", &record), "ns_with_spaces__");
        assert_eq!(render("x-{pod}", &record).len(), MAX_TOPIC_LEN);
        assert_eq!(render("{container}", &record), "unknown", "empty value");
    }

    #[test]
    fn bad_templates_are_refused() {
        for (text, expected) in [
            ("{namespce}", "unknown placeholder {namespce}"),
            ("a{pod", "not closed"),
            ("", "must not be empty"),
            ("a b", "' ' is not allowed"),
            ("..", "not a legal Kafka topic name"),
        ] {
            let e = text.parse::<TopicTemplate>().unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
        let long = "t".repeat(250);
        assert!(long.parse::<TopicTemplate>().unwrap_err().contains("249"));
    }
}
