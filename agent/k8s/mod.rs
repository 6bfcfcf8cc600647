//! Kubernetes identity without the API: kubelet names container log paths after the pod.

pub mod path;

pub use path::meta_from_log_path;

/// Everything the agent asks of the Kubernetes API, as RBAC sees it: (API group, resource, verbs).
/// The ClusterRole in `deploy/` grants exactly this and nothing more (a test checks both ways).
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["get", "list", "watch"]),
    ("apps", "replicasets", &["get", "list", "watch"]),
];
