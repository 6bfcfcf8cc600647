//! Every YAML file under `deploy/` parses into what it is: Kubernetes objects into their
//! `k8s-openapi` types, EnvoyFilters (a CRD, no typed struct) by their shape, kustomizations into
//! [`super::kustomize::Kustomization`], patches into JSON patches, agent configs with the agent's
//! own loader. None is skipped: a file no kustomization names must be a manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::kustomize::{self, kustomization_dirs};
use super::{deploy_dir, object_id, yaml_documents};

/// Deserializes `object` as `T` and serializes it back: the two must be equal, so a misspelt or
/// misplaced field (which the types would otherwise ignore) fails.
pub fn typed<T: DeserializeOwned + Serialize>(object: &Value) -> Result<T, String> {
    let id = object_id(object);
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| format!("{id:?}: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("{id:?}: {e}"))?;
    match first_difference(object, &back, String::new()) {
        None => Ok(typed),
        Some(path) => Err(format!(
            "{id:?}: {path} does not survive the typed round trip (unknown or misplaced field?)"
        )),
    }
}

/// The JSON path of the first place where `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.keys()
                .chain(b.keys())
                .find_map(|k| match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => first_difference(x, y, format!("{path}/{k}")),
                    _ => Some(format!("{path}/{k}")),
                })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, format!("{path}/{i}"))),
        _ => (a != b).then_some(path),
    }
}

/// Checks one object (a document of a manifest, or of a build) against its type.
pub fn check_object(object: &Value) -> Result<(), String> {
    let (api_version, kind, _, name) = object_id(object);
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => typed::<Namespace>(object).map(drop),
        ("v1", "ServiceAccount") => typed::<ServiceAccount>(object).map(drop),
        ("v1", "ConfigMap") => typed::<ConfigMap>(object).map(drop),
        ("apps/v1", "DaemonSet") => typed::<DaemonSet>(object).map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed::<ClusterRole>(object).map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            typed::<ClusterRoleBinding>(object).map(drop)
        }
        ("networking.istio.io/v1alpha3" | "networking.istio.io/v1", "EnvoyFilter") => {
            check_envoyfilter(object)
        }
        _ => Err(format!(
            "{api_version} {kind} {name}: no type known to this test (add it to check_object)"
        )),
    }
}

/// An EnvoyFilter: named, with config patches that each say where they apply and what they add.
fn check_envoyfilter(object: &Value) -> Result<(), String> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        return Err("EnvoyFilter without metadata.name".into());
    }
    let patches = object["spec"]["configPatches"]
        .as_array()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("EnvoyFilter {name}: no spec.configPatches"))?;
    for patch in patches {
        if !patch["applyTo"].is_string() || !patch["patch"]["operation"].is_string() {
            return Err(format!(
                "EnvoyFilter {name}: a config patch lacks applyTo or operation"
            ));
        }
    }
    Ok(())
}

/// What a YAML file under `deploy/` is, as the kustomizations name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Kustomization,
    Patch,
    AgentConfig,
    /// Named as a resource, or named by nothing (applied with `kubectl apply -f`).
    Manifest,
}

fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
}

#[test]
fn every_yaml_file_in_deploy_parses() {
    let mut roles: BTreeMap<PathBuf, Role> = BTreeMap::new();
    let mut set = |path: PathBuf, role: Role| {
        let path = path
            .canonicalize()
            .unwrap_or_else(|e| panic!("{} is named but: {e}", path.display()));
        if let Some(old) = roles.insert(path.clone(), role) {
            assert_eq!(old, role, "{} has two roles", path.display());
        }
    };
    for dir in kustomization_dirs() {
        let k = kustomize::load(&dir).unwrap();
        set(dir.join("kustomization.yaml"), Role::Kustomization);
        for resource in &k.resources {
            let path = dir.join(resource);
            if path.is_dir() {
                assert!(
                    path.join("kustomization.yaml").is_file(),
                    "{}: resource {resource} is a directory without a kustomization",
                    dir.display()
                );
            } else {
                set(path, Role::Manifest);
            }
        }
        for patch in &k.patches {
            if let Some(path) = &patch.path {
                set(dir.join(path), Role::Patch);
            }
        }
        for generator in &k.config_map_generator {
            for (_, file) in generator.files() {
                set(dir.join(file), Role::AgentConfig);
            }
        }
    }

    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    files.sort();
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let role = roles
            .get(&file.canonicalize().unwrap())
            .copied()
            .unwrap_or(Role::Manifest);
        let name = file.display();
        match role {
            // Parsed (typed, unknown fields rejected) when its directory was listed above.
            Role::Kustomization => {}
            Role::Patch => {
                let text = std::fs::read_to_string(file).unwrap();
                serde_saphyr::from_str::<json_patch::Patch>(&text)
                    .unwrap_or_else(|e| panic!("{name}: not a JSON 6902 patch: {e}"));
            }
            Role::AgentConfig => {
                meshtap::config::Config::load(file).unwrap_or_else(|e| panic!("{e}"));
            }
            Role::Manifest => {
                let documents = yaml_documents(file);
                assert!(!documents.is_empty(), "{name}: no YAML document");
                for document in &documents {
                    check_object(document).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
        }
        *checked.entry(format!("{role:?}")).or_default() += 1;
    }
    // The layout this repository ships; a file moved or added without its role shows up here.
    let expected: BTreeMap<String, usize> = [
        ("Kustomization", kustomization_dirs().len()),
        ("Patch", 1),
        ("AgentConfig", 2),
        ("Manifest", files.len() - kustomization_dirs().len() - 3),
    ]
    .map(|(role, n)| (role.to_string(), n))
    .into();
    assert_eq!(checked, expected, "files: {files:#?}");
    for must in [
        "envoyfilter-lua-v2.yaml",
        "legacy/envoyfilter-logpayload-body.yaml",
        "agent/daemonset.yaml",
        "overlays/capture/capture-privileges.yaml",
    ] {
        assert!(files.contains(&deploy_dir().join(must)), "{must} not found");
    }
}

#[test]
fn the_typed_round_trip_catches_a_misplaced_field() {
    let daemonset = &yaml_documents(&deploy_dir().join("agent/daemonset.yaml"))[0];
    typed::<DaemonSet>(daemonset).unwrap();
    let mut wrong = daemonset.clone();
    // `readonly` for `readOnly`: Kubernetes would ignore it and mount the logs writable.
    let mount = &mut wrong["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0];
    let read_only = mount.as_object_mut().unwrap().remove("readOnly").unwrap();
    mount["readonly"] = read_only;
    let e = typed::<DaemonSet>(&wrong).unwrap_err();
    assert!(e.contains("volumeMounts/0/readonly"), "{e}");
    let mut unknown = serde_json::json!({"apiVersion": "v1", "kind": "Secret"});
    unknown["metadata"]["name"] = "x".into();
    assert!(check_object(&unknown)
        .unwrap_err()
        .contains("no type known"));
}
