//! `meshtap envoyfilter`: an Istio EnvoyFilter for meshtap's v2 Lua filter, built from options.
//!
//! [`Options`] (the flags) are checked by [`EnvoyFilter::new`]; [`EnvoyFilter::to_yaml`] renders
//! the manifest: the Lua of [`lua::SOURCE`] with the body cap and skipped headers set, inserted
//! before the router of the sidecar's HTTP connection manager, and, when paths or methods are
//! selected, wrapped in the Envoy matcher of [`matcher`]. With default options the output is the
//! shipped `deploy/envoyfilter-lua-v2.yaml` byte for byte (a test keeps them equal).

pub mod lua;
pub mod matcher;
pub mod options;

use serde::ser::SerializeMap;
use serde::Serialize;
use serde_json::Value;

pub use options::{Direction, InvalidOption, Options, PathMatch, Selection};

const LUA_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua";
const LUA_FILTER: &str = "envoy.filters.http.lua";

/// Why no manifest was produced.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] InvalidOption),
    #[error("--selector {0:?} is given more than once")]
    DuplicateSelector(String),
    #[error("cannot render the manifest as YAML: {0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
}

/// A checked EnvoyFilter request, ready to render.
#[derive(Debug, Clone)]
pub struct EnvoyFilter {
    name: String,
    namespace: Option<String>,
    selector: Vec<(String, String)>,
    direction: Direction,
    selection: Selection,
    max_body_bytes: u64,
    skip_headers: Vec<String>,
}

impl EnvoyFilter {
    /// Checks every option (see [`options`]); methods are upper-cased, header names lower-cased,
    /// repeated methods, paths and headers kept once.
    pub fn new(options: Options) -> Result<EnvoyFilter, Error> {
        options::check_name(&options.name)?;
        if let Some(ns) = &options.namespace {
            options::check_namespace(ns)?;
        }
        let mut selector: Vec<(String, String)> = Vec::new();
        for pair in &options.selector {
            let (key, value) = options::parse_selector(pair)?;
            if selector.iter().any(|(k, _)| *k == key) {
                return Err(Error::DuplicateSelector(key));
            }
            selector.push((key, value));
        }
        let mut paths: Vec<PathMatch> = Vec::new();
        for path in options.paths {
            options::check_path(&path)?;
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        let mut methods: Vec<String> = Vec::new();
        for method in &options.methods {
            let method = options::normalize_method(method)?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        options::check_max_body(options.max_body_bytes)?;
        let mut skip_headers: Vec<String> = Vec::new();
        for name in &options.skip_headers {
            let name = options::normalize_header(name)?;
            if !skip_headers.contains(&name) {
                skip_headers.push(name);
            }
        }
        Ok(EnvoyFilter {
            name: options.name,
            namespace: options.namespace,
            selector,
            direction: options.direction,
            selection: Selection { paths, methods },
            max_body_bytes: options.max_body_bytes,
            skip_headers,
        })
    }

    /// The requests this filter captures.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// The Lua the filter runs.
    pub fn lua(&self) -> String {
        lua::render(self.max_body_bytes, &self.skip_headers)
    }

    /// The `patch.value` of every config patch: the HTTP filter inserted before the router, as
    /// JSON (the form an Envoy bootstrap's `http_filters` entry takes).
    pub fn http_filter(&self) -> Value {
        // Serialising plain data into a JSON value cannot fail.
        serde_json::to_value(self.filter_value()).unwrap_or(Value::Null)
    }

    fn filter_value(&self) -> HttpFilter {
        let lua = LuaFilter {
            name: LUA_FILTER,
            typed_config: LuaConfig {
                type_url: LUA_TYPE,
                default_source_code: Source {
                    inline_string: serde_saphyr::LitString(self.lua()),
                },
            },
        };
        match matcher::xds_matcher(&self.selection) {
            None => HttpFilter::Lua(lua),
            Some(xds_matcher) => HttpFilter::Wrapped(WrappedFilter {
                name: LUA_FILTER,
                typed_config: WithMatcher {
                    type_url: matcher::WRAPPER_TYPE,
                    extension_config: lua,
                    xds_matcher,
                },
            }),
        }
    }

    /// The manifest: comments saying what it captures and how it was made, then the YAML.
    pub fn to_yaml(&self) -> Result<String, Error> {
        let value = self.filter_value();
        let patches: Vec<ConfigPatch> = self
            .direction
            .contexts()
            .iter()
            .map(|context| ConfigPatch {
                apply_to: "HTTP_FILTER",
                match_: Match {
                    context,
                    listener: Listener {
                        filter_chain: FilterChain {
                            filter: NamedFilter {
                                name: "envoy.filters.network.http_connection_manager",
                                sub_filter: Name {
                                    name: "envoy.filters.http.router",
                                },
                            },
                        },
                    },
                },
                patch: Patch {
                    operation: "INSERT_BEFORE",
                    value: &value,
                },
            })
            .collect();
        let manifest = Manifest {
            api_version: "networking.istio.io/v1alpha3",
            kind: "EnvoyFilter",
            metadata: Metadata {
                name: &self.name,
                namespace: self.namespace.as_deref(),
                labels: Labels {
                    name: "meshtap",
                    component: "envoyfilter",
                },
            },
            spec: Spec {
                workload_selector: (!self.selector.is_empty()).then_some(WorkloadSelector {
                    labels: OrderedMap(&self.selector),
                }),
                config_patches: patches,
            },
        };
        let yaml = serde_saphyr::to_string(&manifest)?;
        Ok(format!("{}{yaml}", self.header()))
    }

    /// The flags that generate this manifest again (defaults left out), shell-quoted.
    pub fn command_line(&self) -> String {
        let mut args: Vec<String> = vec!["meshtap".into(), "envoyfilter".into()];
        let mut flag = |name: &str, value: &str| {
            args.push(name.to_string());
            args.push(shell_quote(value));
        };
        if self.name != options::DEFAULT_NAME {
            flag("--name", &self.name);
        }
        if let Some(ns) = &self.namespace {
            flag("--namespace", ns);
        }
        for (key, value) in &self.selector {
            flag("--selector", &format!("{key}={value}"));
        }
        if self.direction != Direction::Inbound {
            flag("--direction", self.direction.as_str());
        }
        for path in &self.selection.paths {
            flag(path.flag(), path.value());
        }
        for method in &self.selection.methods {
            flag("--method", method);
        }
        if self.max_body_bytes != options::DEFAULT_MAX_BODY_BYTES {
            flag("--max-body-bytes", &self.max_body_bytes.to_string());
        }
        for name in &self.skip_headers {
            flag("--skip-header", name);
        }
        args.join(" ")
    }

    /// What the manifest captures, in words, one item per line.
    fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let traffic = match self.direction {
            Direction::Inbound => "requests the selected workloads receive (SIDECAR_INBOUND)",
            Direction::Outbound => "requests the selected workloads send (SIDECAR_OUTBOUND)",
            Direction::Both => {
                "requests the selected workloads receive and send (SIDECAR_INBOUND and SIDECAR_OUTBOUND)"
            }
        };
        lines.push(format!("Captures:  {traffic}"));
        if self.selector.is_empty() {
            lines.push(
                "Workloads: all in the namespace it is applied to; in Istio's root namespace (istio-system by default), the whole mesh"
                    .into(),
            );
        } else {
            let labels: Vec<String> = self
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            lines.push(format!("Workloads: labelled {}", labels.join(", ")));
        }
        if self.selection.paths.is_empty() {
            lines.push("Paths:     all".into());
        } else {
            for (i, path) in self.selection.paths.iter().enumerate() {
                let what = match path {
                    PathMatch::Exact(p) => format!("exactly {p}"),
                    PathMatch::Prefix(p) => format!("starting with {p}"),
                    PathMatch::Regex(r) => format!("matching the RE2 regex {r}"),
                };
                let head = if i == 0 { "Paths:     " } else { "       or  " };
                lines.push(format!("{head}{what}"));
            }
        }
        if self.selection.methods.is_empty() {
            lines.push("Methods:   all".into());
        } else {
            lines.push(format!("Methods:   {}", self.selection.methods.join(", ")));
        }
        lines.push(format!(
            "Bodies:    the first {} bytes of each are logged; the true size is always logged",
            self.max_body_bytes
        ));
        if !self.skip_headers.is_empty() {
            lines.push(format!(
                "Never logged: headers {}",
                self.skip_headers.join(", ")
            ));
        }
        lines
    }

    fn header(&self) -> String {
        let apply = if self.namespace.is_some() {
            "kubectl apply -f <this file>".to_string()
        } else {
            "kubectl apply -n <namespace> -f <this file>".to_string()
        };
        let remove = apply.replace("apply", "delete");
        let mut text = String::from(HEADER);
        text.push_str("#\n");
        text.push_str(&format!("# Generated by: {}\n", self.command_line()));
        text.push_str(
            "# Change the flags and generate it again rather than editing it (docs/envoyfilter.md).\n#\n",
        );
        for line in self.summary() {
            text.push_str(&format!("# {line}\n"));
        }
        text.push_str("#\n");
        text.push_str(&format!("# Apply:   {apply}\n# Remove:  {remove}\n"));
        text
    }
}

/// What every generated manifest says first.
const HEADER: &str = "\
# meshtap's payload logger (\"lua-v2\" format, documented in docs/lua-v2-format.md).
#
# Compared with the seed article's filter (deploy/legacy/) it writes one physical log line per event,
# base64-encodes every body and header block (binary, gRPC and multi-line bodies survive any container
# runtime), correlates request and response by a per-stream id carried through dynamic metadata,
# numbers every line so a gap is detected, caps what it logs per body, and logs the end of every
# direction with the true body size and a truncation flag. It reads chunks relative to the current
# chunk (the seed's getBytes bug does not exist here) and holds at most one 12 KiB piece of a body.
";

/// Wraps a value in single quotes for a POSIX shell when it holds anything but safe characters.
fn shell_quote(value: &str) -> String {
    let safe = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._=:,@+%-".contains(c));
    if safe {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    spec: Spec<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    labels: Labels,
}

#[derive(Serialize)]
struct Labels {
    #[serde(rename = "app.kubernetes.io/name")]
    name: &'static str,
    #[serde(rename = "app.kubernetes.io/component")]
    component: &'static str,
}

#[derive(Serialize)]
struct Spec<'a> {
    #[serde(rename = "workloadSelector", skip_serializing_if = "Option::is_none")]
    workload_selector: Option<WorkloadSelector<'a>>,
    #[serde(rename = "configPatches")]
    config_patches: Vec<ConfigPatch<'a>>,
}

#[derive(Serialize)]
struct WorkloadSelector<'a> {
    labels: OrderedMap<'a>,
}

/// Key-value pairs as a YAML mapping, in the order given.
struct OrderedMap<'a>(&'a [(String, String)]);

impl Serialize for OrderedMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct ConfigPatch<'a> {
    #[serde(rename = "applyTo")]
    apply_to: &'static str,
    #[serde(rename = "match")]
    match_: Match,
    patch: Patch<'a>,
}

#[derive(Serialize)]
struct Match {
    context: &'static str,
    listener: Listener,
}

#[derive(Serialize)]
struct Listener {
    #[serde(rename = "filterChain")]
    filter_chain: FilterChain,
}

#[derive(Serialize)]
struct FilterChain {
    filter: NamedFilter,
}

#[derive(Serialize)]
struct NamedFilter {
    name: &'static str,
    #[serde(rename = "subFilter")]
    sub_filter: Name,
}

#[derive(Serialize)]
struct Name {
    name: &'static str,
}

#[derive(Serialize)]
struct Patch<'a> {
    operation: &'static str,
    value: &'a HttpFilter,
}

#[derive(Serialize)]
#[serde(untagged)]
enum HttpFilter {
    Lua(LuaFilter),
    Wrapped(WrappedFilter),
}

#[derive(Serialize)]
struct LuaFilter {
    name: &'static str,
    typed_config: LuaConfig,
}

#[derive(Serialize)]
struct LuaConfig {
    #[serde(rename = "@type")]
    type_url: &'static str,
    default_source_code: Source,
}

#[derive(Serialize)]
struct Source {
    inline_string: serde_saphyr::LitString,
}

#[derive(Serialize)]
struct WrappedFilter {
    name: &'static str,
    typed_config: WithMatcher,
}

#[derive(Serialize)]
struct WithMatcher {
    #[serde(rename = "@type")]
    type_url: &'static str,
    extension_config: LuaFilter,
    xds_matcher: Value,
}

#[cfg(test)]
mod tests;
