//! `deploy/`: the Kubernetes manifests, their kustomizations and the Dockerfile, checked against
//! the agent's own code rather than against numbers copied into the test.
//!
//! - [`kustomize`]: the kustomizations as typed structs, built the way kustomize builds them
//!   (resources, `configMapGenerator`, JSON 6902 patches, `images:`), and the same directories
//!   rendered by a real `kubectl kustomize` (installed by `scripts/install-test-deps.sh`): both
//!   must agree, so the checks below hold for what a cluster receives.
//! - [`manifests`]: every YAML file under `deploy/` parses: Kubernetes objects into their
//!   `k8s-openapi` types (a field the type does not know fails the test), EnvoyFilters by
//!   apiVersion and kind, patches as JSON patches, agent configs with the agent's loader.
//! - [`wiring`]: the DaemonSet against the config it mounts (log and state paths, probe port and
//!   paths, grace period), against a real `meshtap run` started with that config, RBAC against
//!   [`meshtap::k8s::API_ACCESS`], least privilege by default and exactly the capture privileges
//!   in the capture overlay.
//! - [`dockerfile`]: the paths the Dockerfile copies exist, cover what Cargo.toml names, and its
//!   CMD reads the config where the DaemonSet mounts it.

mod dockerfile;
mod kustomize;
mod manifests;
mod wiring;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `deploy/` in this repository.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The YAML documents of a file (multi-document files give several), as JSON values.
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// `(apiVersion, kind, namespace, name)` of an object, for messages and lookups.
pub fn object_id(object: &Value) -> (String, String, String, String) {
    let field = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        field(&object["apiVersion"]),
        field(&object["kind"]),
        field(&object["metadata"]["namespace"]),
        field(&object["metadata"]["name"]),
    )
}
