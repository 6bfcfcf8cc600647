//! The `kubernetes:` section of the agent's YAML config: whether and how the agent asks the
//! Kubernetes API about the pods on its node, which labels it copies into records, and which pods
//! it captures.
//!
//! ```yaml
//! kubernetes:
//!   enabled: auto
//!   node_name: ""
//!   kubeconfig: null
//!   labels: [app, app.kubernetes.io/name, version, app.kubernetes.io/version]
//!   deletion_grace_seconds: 300
//!   initial_sync_timeout_seconds: 10
//!   select:
//!     namespaces:
//!       include: []
//!       exclude: [kube-system]
//!     labels: ""
//!     opt_out_annotation: meshtap.io/capture
//!     unknown_pods: keep
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use super::select::{parse_selector, Selection};

/// Whether the agent uses the Kubernetes API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enabled {
    /// Use it when a client configuration can be found (in-cluster service account, `kubeconfig`,
    /// `$KUBECONFIG` or `~/.kube/config`) and the node name is known; otherwise work from the log
    /// paths alone.
    #[default]
    Auto,
    /// Use it; the agent refuses to start without a client configuration or a node name.
    /// (An API that is unreachable once started is retried, never fatal.)
    True,
    /// Never contact the API: metadata comes from the log paths alone.
    False,
}

/// What happens to an exchange of a pod the agent does not know (yet) while selection by labels
/// or annotation is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPods {
    /// Deliver it (with path-only metadata) and count it in
    /// `meshtap_kubernetes_unenriched_exchanges_total`: nothing is lost when the API lags or is
    /// down, at the price of capturing a pod that would have opted out.
    #[default]
    Keep,
    /// Drop it as `not_selected`: nothing is captured from a pod the agent cannot check, at the
    /// price of losing what such pods log while the API is unavailable.
    Drop,
}

/// The `kubernetes:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// `auto`, `true` or `false` (see [`Enabled`]).
    pub enabled: Enabled,
    /// The node whose pods are watched; empty means the `NODE_NAME` environment variable (set it
    /// from the downward API, `fieldRef: spec.nodeName`).
    pub node_name: String,
    /// A kubeconfig file to use instead of the in-cluster service account (or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// Pod labels copied into `k8s.labels`: exact keys, or `*` for every label.
    pub labels: Vec<String>,
    /// Seconds a deleted pod's metadata is kept, so the lines it logged last are still enriched.
    pub deletion_grace_seconds: u64,
    /// Seconds the agent waits at startup for the first list of its node's pods before it starts
    /// reading logs (it stops waiting at once when the API answers with an error).
    pub initial_sync_timeout_seconds: u64,
    /// Which pods are captured.
    pub select: SelectConfig,
}

/// The labels most dashboards group by: the app and its version, in both common spellings.
fn default_labels() -> Vec<String> {
    [
        "app",
        "app.kubernetes.io/name",
        "version",
        "app.kubernetes.io/version",
    ]
    .map(String::from)
    .to_vec()
}

/// Kubelet keeps a dead container's log for a while and the agent may be behind on it; 5 minutes
/// covers a long tail of unread lines without holding many dead pods on a busy node.
const fn default_deletion_grace_seconds() -> u64 {
    300
}

/// Long enough for a list of a node's pods from a loaded API server, short enough that a hanging
/// API does not hold up reading for long.
const fn default_initial_sync_timeout_seconds() -> u64 {
    10
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: Enabled::Auto,
            node_name: String::new(),
            kubeconfig: None,
            labels: default_labels(),
            deletion_grace_seconds: default_deletion_grace_seconds(),
            initial_sync_timeout_seconds: default_initial_sync_timeout_seconds(),
            select: SelectConfig::default(),
        }
    }
}

/// `kubernetes.select`: which pods are captured. Namespace rules need only the log path; the
/// label selector and the opt-out annotation need the pod's metadata from the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectConfig {
    pub namespaces: NamespacesConfig,
    /// A Kubernetes label selector (`app in (a,b),tier!=db,!canary`); empty selects every pod.
    pub labels: String,
    /// A pod annotation that opts the pod out when its value is `false` or `disabled`; empty
    /// disables opting out.
    pub opt_out_annotation: String,
    /// What happens to exchanges of pods not (yet) known from the API (see [`UnknownPods`]).
    pub unknown_pods: UnknownPods,
}

impl Default for SelectConfig {
    fn default() -> Self {
        SelectConfig {
            namespaces: NamespacesConfig::default(),
            labels: String::new(),
            opt_out_annotation: "meshtap.io/capture".to_string(),
            unknown_pods: UnknownPods::Keep,
        }
    }
}

/// `kubernetes.select.namespaces`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespacesConfig {
    /// Only these namespaces are captured; empty means all.
    pub include: Vec<String>,
    /// These namespaces are never captured (applied after `include`).
    pub exclude: Vec<String>,
}

impl Default for NamespacesConfig {
    fn default() -> Self {
        NamespacesConfig {
            include: Vec::new(),
            // The control plane's own namespace: Istio injects no sidecars there, and what runs
            // there is the cluster's, not an application's API traffic.
            exclude: vec!["kube-system".to_string()],
        }
    }
}

impl KubernetesConfig {
    /// Checks the section before any I/O: a clear message for a bad selector or value.
    pub fn validate(&self) -> Result<(), String> {
        self.selection().map(|_| ())?;
        if self.deletion_grace_seconds == 0 {
            return Err("kubernetes.deletion_grace_seconds must be greater than 0".to_string());
        }
        if let Some(label) = self
            .labels
            .iter()
            .find(|l| l.as_str() != "*" && super::select::check_key(l).is_err())
        {
            let why = super::select::check_key(label).unwrap_err();
            return Err(format!(
                "kubernetes.labels: {label:?} is not a label key: {why}"
            ));
        }
        if self
            .kubeconfig
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("kubernetes.kubeconfig must not be empty (leave it out instead)".into());
        }
        if self.enabled == Enabled::False
            && (!self.select.labels.trim().is_empty()
                || self.select.unknown_pods == UnknownPods::Drop)
        {
            return Err(
                "kubernetes.select.labels and select.unknown_pods: drop need the API, but kubernetes.enabled is false"
                    .to_string(),
            );
        }
        Ok(())
    }

    /// The compiled selection rules.
    pub fn selection(&self) -> Result<Selection, String> {
        let labels = parse_selector(&self.select.labels)
            .map_err(|e| format!("kubernetes.select.labels {:?}: {e}", self.select.labels))?;
        for (field, list) in [
            ("include", &self.select.namespaces.include),
            ("exclude", &self.select.namespaces.exclude),
        ] {
            if let Some(bad) = list.iter().find(|n| !is_dns_label(n)) {
                return Err(format!(
                    "kubernetes.select.namespaces.{field}: {bad:?} is not a namespace name"
                ));
            }
        }
        Ok(Selection {
            include: self.select.namespaces.include.iter().cloned().collect(),
            exclude: self.select.namespaces.exclude.iter().cloned().collect(),
            labels,
            opt_out_annotation: Some(self.select.opt_out_annotation.trim())
                .filter(|a| !a.is_empty())
                .map(String::from),
            unknown_pods: self.select.unknown_pods,
        })
    }

    /// The node name: the configured one, else `$NODE_NAME`.
    pub fn node_name(&self) -> Option<String> {
        Some(self.node_name.trim().to_string())
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::env::var("NODE_NAME")
                    .ok()
                    .filter(|n| !n.trim().is_empty())
            })
    }
}

/// A namespace name: an RFC 1123 label (lower-case alphanumerics and `-`, at most 63).
fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<KubernetesConfig, String> {
        let c: KubernetesConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_are_valid() {
        let c = KubernetesConfig::default();
        c.validate().unwrap();
        let s = c.selection().unwrap();
        assert!(s.namespace_selected("default"));
        assert!(!s.namespace_selected("kube-system"));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = parse("select:\n  labels: \"app in (a,b\"\n").unwrap_err();
        assert!(e.contains("kubernetes.select.labels"), "{e}");
        let e = parse("select:\n  namespaces:\n    exclude: [Kube_System]\n").unwrap_err();
        assert!(
            e.contains("namespaces.exclude") && e.contains("Kube_System"),
            "{e}"
        );
        let e = parse("labels: [\"bad key!\"]\n").unwrap_err();
        assert!(e.contains("kubernetes.labels"), "{e}");
        let e = parse("deletion_grace_seconds: 0\n").unwrap_err();
        assert!(e.contains("deletion_grace_seconds"), "{e}");
        let e = parse("enabled: false\nselect:\n  labels: app=a\n").unwrap_err();
        assert!(e.contains("enabled is false"), "{e}");
        let e = parse("enabled: maybe\n").unwrap_err();
        assert!(e.contains("maybe"), "{e}");
        let e = parse("select:\n  namespace: {}\n").unwrap_err();
        assert!(e.contains("namespace"), "{e}");
        assert!(parse("labels: [\"*\"]\nenabled: \"true\"\n").is_ok());
        assert_eq!(parse("enabled: true\n").unwrap().enabled, Enabled::True);
        assert_eq!(parse("enabled: false\n").unwrap().enabled, Enabled::False);
        assert_eq!(
            parse("kubeconfig: /etc/kube.yaml\n")
                .unwrap()
                .kubeconfig
                .unwrap(),
            PathBuf::from("/etc/kube.yaml")
        );
        assert_eq!(parse("kubeconfig: null\n").unwrap().kubeconfig, None);
    }

    #[test]
    fn the_module_doc_sample_is_the_defaults() {
        let doc: String = include_str!("config.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .skip_while(|l| !l.starts_with("kubernetes:"))
            .take_while(|l| !l.starts_with("```"))
            .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
            .skip(1)
            .collect();
        let sample = parse(&doc).unwrap();
        let d = KubernetesConfig::default();
        assert_eq!(
            (
                sample.enabled,
                &sample.node_name,
                &sample.kubeconfig,
                &sample.labels
            ),
            (d.enabled, &d.node_name, &d.kubeconfig, &d.labels)
        );
        assert_eq!(
            (
                sample.deletion_grace_seconds,
                sample.initial_sync_timeout_seconds
            ),
            (d.deletion_grace_seconds, d.initial_sync_timeout_seconds)
        );
        let (s, ds) = (&sample.select, &d.select);
        assert_eq!(
            (
                &s.namespaces.exclude,
                &s.labels,
                &s.opt_out_annotation,
                s.unknown_pods
            ),
            (
                &ds.namespaces.exclude,
                &ds.labels,
                &ds.opt_out_annotation,
                ds.unknown_pods
            )
        );
    }

    #[test]
    fn node_name_prefers_the_config() {
        let c = KubernetesConfig {
            node_name: " node-a ".into(),
            ..KubernetesConfig::default()
        };
        assert_eq!(c.node_name().as_deref(), Some("node-a"));
    }
}
