//! The manifests wired to the agent: what the DaemonSet mounts, probes and grants is checked
//! against the config the ConfigMap gives the agent, the agent's defaults and its code, for each
//! way of installing (deploy/, deploy/agent, and the overlays).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, SecurityContext, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshtap::config::Config;
use serde_json::Value;

use super::manifests::typed;
use super::{deploy_dir, kustomize, object_id};
use crate::agent::{http_get, terminate_child, wait_for, BIN};
use crate::support::envoy::free_port;

/// The capabilities the capture overlay adds, and why (deploy/overlays/capture).
const CAPTURE_CAPABILITIES: [&str; 4] = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"];

/// One way of installing, built from its kustomization and typed.
struct Install {
    dir: PathBuf,
    namespace: Option<Namespace>,
    service_account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    config_map: ConfigMap,
    daemonset: DaemonSet,
    envoyfilters: Vec<Value>,
}

impl Install {
    fn build(rel: &str) -> Install {
        let dir = deploy_dir().join(rel);
        let objects = kustomize::build(&dir).unwrap_or_else(|e| panic!("{e}"));
        let one = |kind: &str| -> &Value {
            let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
            assert_eq!(
                found.len(),
                1,
                "{rel}: {kind}: {:?}",
                found.iter().map(|o| object_id(o)).collect::<Vec<_>>()
            );
            found[0]
        };
        let install = Install {
            namespace: objects
                .iter()
                .find(|o| o["kind"] == "Namespace")
                .map(|o| typed(o).unwrap()),
            service_account: typed(one("ServiceAccount")).unwrap(),
            role: typed(one("ClusterRole")).unwrap(),
            binding: typed(one("ClusterRoleBinding")).unwrap(),
            config_map: typed(one("ConfigMap")).unwrap(),
            daemonset: typed(one("DaemonSet")).unwrap(),
            envoyfilters: objects
                .iter()
                .filter(|o| o["kind"] == "EnvoyFilter")
                .cloned()
                .collect(),
            dir,
        };
        // Nothing else is installed (a new kind needs its checks here).
        let known = [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "EnvoyFilter",
        ];
        for object in &objects {
            let kind = object["kind"].as_str().unwrap_or_default();
            assert!(
                known.contains(&kind),
                "{rel}: unexpected {:?}",
                object_id(object)
            );
        }
        install
    }

    fn pod(&self) -> &PodSpec {
        self.daemonset
            .spec
            .template
            .spec
            .as_ref()
            .expect("DaemonSet without a pod spec")
    }

    /// The pod template's annotations.
    fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        let metadata = self.daemonset.spec.template.metadata.as_ref();
        metadata
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default()
    }

    fn container(&self) -> &Container {
        let pod = self.pod();
        assert_eq!(
            pod.containers.len(),
            1,
            "{}: one container",
            self.dir.display()
        );
        &pod.containers[0]
    }

    fn security(&self) -> &SecurityContext {
        self.container()
            .security_context
            .as_ref()
            .expect("container without securityContext")
    }

    fn volume(&self, name: &str) -> &Volume {
        self.pod()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    /// The config file the agent reads: `--config PATH` in the container's args, resolved
    /// through the volume mounted at PATH's directory to the ConfigMap key it names.
    fn agent_config(&self) -> (String, Config) {
        let container = self.container();
        let args = container.args.as_deref().unwrap_or_default();
        let path = match args {
            [run, flag, path] if run == "run" && flag == "--config" => Path::new(path),
            _ => panic!("container args must be `run --config PATH`, got {args:?}"),
        };
        let (dir, key) = (path.parent().unwrap(), path.file_name().unwrap());
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(&m.mount_path) == dir)
            .unwrap_or_else(|| panic!("nothing mounted at {}", dir.display()));
        assert_eq!(mount.read_only, Some(true), "the config mount is read-only");
        assert!(mount.sub_path.is_none());
        let source = self.volume(&mount.name).config_map.as_ref();
        let source = source.unwrap_or_else(|| panic!("volume {} is not a ConfigMap", mount.name));
        assert_eq!(
            Some(&source.name),
            self.config_map.metadata.name.as_ref(),
            "the config volume names the ConfigMap"
        );
        let text = self
            .config_map
            .data
            .as_ref()
            .and_then(|d| d.get(key.to_str().unwrap()))
            .unwrap_or_else(|| panic!("ConfigMap has no key {key:?}"))
            .clone();
        let config = Config::from_yaml(&text).unwrap_or_else(|e| {
            panic!(
                "{}: the ConfigMap's config does not load: {e}",
                self.dir.display()
            )
        });
        (text, config)
    }
}

/// Everything that must hold for an install whatever its variant: the DaemonSet reads the
/// config it is given, mounts where that config points, probes where the agent serves, names
/// what the RBAC grants, and stops within its grace period.
fn check_wiring(install: &Install) -> Config {
    let where_ = install.dir.display().to_string();
    let (_, config) = install.agent_config();
    let pod = install.pod();
    let container = install.container();

    // Namespace: one for everything namespaced, and the Namespace object (when shipped) names it.
    let namespace = install
        .daemonset
        .metadata
        .namespace
        .clone()
        .expect("DaemonSet namespace");
    assert_eq!(
        install.service_account.metadata.namespace.as_ref(),
        Some(&namespace)
    );
    assert_eq!(
        install.config_map.metadata.namespace.as_ref(),
        Some(&namespace)
    );
    if let Some(ns) = &install.namespace {
        assert_eq!(ns.metadata.name.as_ref(), Some(&namespace));
    }

    // Mounts: the node's log directory read-only at agent.log_root, the checkpoint directory
    // (created on the node if missing) writable at agent.state_dir.
    let mount = |path: &Path| {
        container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(&m.mount_path) == path)
            .unwrap_or_else(|| panic!("{where_}: nothing mounted at {}", path.display()))
    };
    let logs = mount(&config.agent.log_root);
    assert_eq!(
        logs.read_only,
        Some(true),
        "{where_}: the log mount is read-only"
    );
    let host = install
        .volume(&logs.name)
        .host_path
        .as_ref()
        .expect("log volume is a hostPath");
    // The same path on the node: the agent takes pod identity from kubelet's path layout.
    assert_eq!(Path::new(&host.path), config.agent.log_root);
    assert_eq!(host.type_.as_deref(), Some("Directory"));
    let state = mount(&config.agent.state_dir);
    assert_ne!(
        state.read_only,
        Some(true),
        "{where_}: the state mount is writable"
    );
    let host = install
        .volume(&state.name)
        .host_path
        .as_ref()
        .expect("state volume is a hostPath");
    assert_eq!(host.type_.as_deref(), Some("DirectoryOrCreate"));
    // Only those two come from the node.
    let host_paths: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
        .collect();
    assert_eq!(
        host_paths.len(),
        2,
        "{where_}: hostPath volumes {host_paths:?}"
    );
    // Everything but the state directory is read-only, so the read-only root filesystem plus
    // these leave the agent exactly one place to write.
    for m in container.volume_mounts.iter().flatten() {
        if Path::new(&m.mount_path) != config.agent.state_dir {
            assert_eq!(
                m.read_only,
                Some(true),
                "{where_}: {} read-only",
                m.mount_path
            );
        }
    }

    // Ports and probes: the metrics port is where the agent's ops endpoint listens, the probes
    // use it by name.
    assert!(
        config.ops.enabled,
        "{where_}: the probes need the ops endpoint"
    );
    let port = config.ops.listen.port();
    let ports = container.ports.as_deref().unwrap_or_default();
    let metrics = ports.iter().find(|p| p.name.as_deref() == Some("metrics"));
    let metrics = metrics.unwrap_or_else(|| panic!("{where_}: no port named metrics"));
    assert_eq!(
        metrics.container_port,
        i32::from(port),
        "{where_}: metrics port"
    );
    for (probe, which) in [
        (&container.liveness_probe, "liveness"),
        (&container.readiness_probe, "readiness"),
    ] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref());
        let get = get.unwrap_or_else(|| panic!("{where_}: no {which} httpGet probe"));
        let probe_port = match &get.port {
            IntOrString::String(name) => ports
                .iter()
                .find(|p| p.name.as_ref() == Some(name))
                .map(|p| p.container_port),
            IntOrString::Int(n) => Some(*n),
        };
        assert_eq!(probe_port, Some(i32::from(port)), "{where_}: {which} port");
    }
    let annotations = install.annotations();
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&port.to_string()),
        "{where_}: scrape annotation"
    );
    // No sidecar: the label for current Istio, the annotation for older ones.
    let labels = install
        .daemonset
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    for map in [&labels.unwrap_or_default(), &annotations] {
        assert_eq!(
            map.get("sidecar.istio.io/inject").map(String::as_str),
            Some("false")
        );
    }

    // NODE_NAME from the pod's node (the Kubernetes integration watches that node's pods).
    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME");
    let field = node_name
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"), "{where_}: NODE_NAME");

    // Stop: the kubelet waits longer than the agent needs to drain.
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(
        u64::try_from(grace).unwrap() > config.agent.shutdown_grace_seconds,
        "{where_}: grace {grace}s <= agent.shutdown_grace_seconds {}",
        config.agent.shutdown_grace_seconds
    );

    // Every node, whatever its taints.
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{where_}: a toleration with operator Exists and no key or effect"
    );

    // Requests and limits for CPU and memory.
    let resources = container.resources.as_ref().expect("resources");
    for (which, list) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let list = list
            .as_ref()
            .unwrap_or_else(|| panic!("{where_}: no {which}"));
        for resource in ["cpu", "memory"] {
            assert!(list.contains_key(resource), "{where_}: {which}.{resource}");
        }
    }

    // RBAC: the binding gives the ClusterRole to the DaemonSet's ServiceAccount.
    let account = pod
        .service_account_name
        .as_deref()
        .expect("serviceAccountName");
    assert_eq!(
        install.service_account.metadata.name.as_deref(),
        Some(account)
    );
    let binding = &install.binding;
    assert_eq!(
        (binding.role_ref.kind.as_str(), Some(&binding.role_ref.name)),
        ("ClusterRole", install.role.metadata.name.as_ref())
    );
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{where_}: one subject");
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            subjects[0].name.as_str(),
            subjects[0].namespace.as_ref()
        ),
        ("ServiceAccount", account, Some(&namespace))
    );
    assert_api_accepts(install);
    config
}

/// Kubernetes' own validation (ValidateSecurityContext): `allowPrivilegeEscalation: false` is
/// rejected together with `privileged: true` or an added SYS_ADMIN.
fn assert_api_accepts(install: &Install) {
    let sc = install.security();
    if sc.allow_privilege_escalation == Some(false) {
        assert_ne!(sc.privileged, Some(true));
        let added = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.clone())
            .unwrap_or_default();
        assert!(
            !added
                .iter()
                .any(|c| c == "SYS_ADMIN" || c == "CAP_SYS_ADMIN"),
            "{}: the API server rejects allowPrivilegeEscalation: false with SYS_ADMIN",
            install.dir.display()
        );
    }
}

/// The default: no host namespaces, no capabilities, nothing writable but the state directory.
fn assert_least_privilege(install: &Install) {
    let where_ = install.dir.display();
    let pod = install.pod();
    for (flag, name) in [
        (pod.host_pid, "hostPID"),
        (pod.host_network, "hostNetwork"),
        (pod.host_ipc, "hostIPC"),
    ] {
        assert_ne!(flag, Some(true), "{where_}: {name}");
    }
    let seccomp = pod
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref());
    assert_eq!(
        seccomp.map(|s| s.type_.as_str()),
        Some("RuntimeDefault"),
        "{where_}"
    );
    let sc = install.security();
    assert_ne!(sc.privileged, Some(true), "{where_}: privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{where_}");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{where_}");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "{where_}"
    );
    assert!(
        caps.add.as_deref().unwrap_or_default().is_empty(),
        "{where_}: added capabilities"
    );
}

/// `(API group, resource, verb)` triples.
type Access = BTreeSet<(String, String, String)>;

fn granted(role: &ClusterRole) -> Access {
    let mut access = Access::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    access.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    access
}

fn needed() -> Access {
    let mut access = Access::new();
    for (group, resource, verbs) in meshtap::k8s::API_ACCESS {
        for verb in *verbs {
            access.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    access
}

#[test]
fn default_install_is_wired_and_least_privilege() {
    let install = Install::build("");
    check_wiring(&install);
    assert_least_privilege(&install);
    // The filter is the shipped file, placed in Istio's root namespace and otherwise unchanged.
    let shipped = &super::yaml_documents(&deploy_dir().join("envoyfilter-lua-v2.yaml"))[0];
    assert_eq!(install.envoyfilters.len(), 1);
    let mut filter = install.envoyfilters[0].clone();
    assert_eq!(filter["metadata"]["namespace"], "istio-system");
    filter["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    assert_eq!(&filter, shipped);
    // The image is the one the kustomization names (images:), not the bare placeholder.
    assert_eq!(install.container().image.as_deref(), Some("meshtap:dev"));
}

#[test]
fn agent_alone_is_the_same_agent_without_the_filter() {
    let agent = Install::build("agent");
    let all = Install::build("");
    assert!(agent.envoyfilters.is_empty());
    check_wiring(&agent);
    assert_least_privilege(&agent);
    assert_eq!(agent.daemonset, all.daemonset);
    assert_eq!(agent.config_map, all.config_map);
}

#[test]
fn rbac_grants_exactly_what_the_agent_asks_for() {
    let install = Install::build("agent");
    let granted = granted(&install.role);
    let needed = needed();
    assert!(!needed.is_empty());
    let missing: Vec<_> = needed.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(
        missing.is_empty(),
        "the ClusterRole lacks {missing:?} (agent/k8s API_ACCESS)"
    );
    assert!(
        extra.is_empty(),
        "the ClusterRole grants {extra:?}, which the agent does not use"
    );
}

#[test]
fn capture_overlay_adds_exactly_the_capture_privileges() {
    let agent = Install::build("agent");
    let capture = Install::build("overlays/capture");
    check_wiring(&capture);
    assert_eq!(capture.pod().host_pid, Some(true));
    let sc = capture.security();
    let caps = sc.capabilities.as_ref().unwrap();
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(CAPTURE_CAPABILITIES));
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "the rest stays dropped"
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_ne!(sc.privileged, Some(true));

    // Everything else is the default agent: undo the four changes and compare.
    let mut undone = capture.daemonset.clone();
    let spec = undone.spec.template.spec.as_mut().unwrap();
    spec.host_pid = agent.pod().host_pid;
    let sc = spec.containers[0].security_context.as_mut().unwrap();
    sc.capabilities.as_mut().unwrap().add = None;
    sc.allow_privilege_escalation = agent.security().allow_privilege_escalation;
    assert_eq!(undone, agent.daemonset);
    assert_eq!(capture.config_map, agent.config_map);
    assert_eq!(capture.role, agent.role);
}

#[test]
fn kafka_overlay_changes_only_the_sink() {
    let agent = Install::build("agent");
    let kafka = Install::build("overlays/kafka");
    let config = check_wiring(&kafka);
    assert_least_privilege(&kafka);
    assert_eq!(config.sink.name(), "kafka");
    let (_, default) = agent.agent_config();
    assert_eq!(
        (
            &config.agent.log_root,
            &config.agent.state_dir,
            config.ops.listen
        ),
        (
            &default.agent.log_root,
            &default.agent.state_dir,
            default.ops.listen
        )
    );
    assert_eq!(kafka.daemonset, agent.daemonset);
}

#[test]
fn shipped_config_keeps_the_agent_defaults_the_manifests_rely_on() {
    let (_, config) = Install::build("agent").agent_config();
    let defaults = Config::default();
    // The Dockerfile and `docker run` examples use the defaults; the cluster must agree.
    assert_eq!(config.agent.log_root, defaults.agent.log_root);
    assert_eq!(config.agent.state_dir, defaults.agent.state_dir);
    assert_eq!(config.agent.container, defaults.agent.container);
    assert_eq!(config.ops, meshtap::ops::OpsConfig::default());
}

/// The agent itself, started with the ConfigMap's config (only the node paths and the listen
/// address moved into a temp dir and an ephemeral port): the probe and scrape paths the
/// DaemonSet uses answer as the kubelet and Prometheus expect, and SIGTERM ends it cleanly well
/// within the pod's grace period.
#[test]
fn the_agent_answers_the_manifest_probes_and_stops_within_the_grace_period() {
    let install = Install::build("");
    let container = install.container();
    let (text, _) = install.agent_config();
    let dir = tempfile::Builder::new()
        .prefix(&format!("meshtap-deploy-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let mut config: Value = serde_saphyr::from_str(&text).unwrap();
    let logs = dir.path().join("pods");
    std::fs::create_dir(&logs).unwrap();
    config["agent"]["log_root"] = logs.display().to_string().into();
    config["agent"]["state_dir"] = dir.path().join("state").display().to_string().into();
    let ops: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    config["ops"]["listen"] = ops.to_string().into();
    let file = dir.path().join("meshtap.yaml");
    std::fs::write(&file, serde_json::to_string(&config).unwrap()).unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();

    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .env_remove("MESHTAP_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    let (liveness, readiness) = (
        path(&container.liveness_probe),
        path(&container.readiness_probe),
    );
    // 503 while starting; then 200, or 404 at once for a path the agent does not serve.
    let ready = wait_for(Duration::from_secs(20), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the agent exited at startup ({status}): {}",
                stderr_of(dir.path())
            );
        }
        match http_get(ops, &readiness) {
            Ok((503, _)) | Err(_) => None,
            Ok((status, _)) => Some(status),
        }
    });
    if ready != Some(200) {
        let _ = child.kill();
        panic!("{readiness} answered {ready:?}: {}", stderr_of(dir.path()));
    }
    assert_eq!(http_get(ops, &liveness).unwrap().0, 200, "{liveness}");
    let annotations = install.annotations();
    let (status, body) = http_get(ops, &annotations["prometheus.io/path"]).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("meshtap_"), "metrics page: {body:.300}");
    // A path the agent does not serve is 404: the checks above are not vacuous.
    assert_eq!(http_get(ops, "/health").unwrap().0, 404);

    let grace = install.pod().termination_grace_period_seconds.unwrap();
    let status = terminate_child(child, Duration::from_secs(grace.try_into().unwrap()))
        .unwrap_or_else(|e| panic!("{e}: {}", stderr_of(dir.path())));
    assert!(status.success(), "exit {status}: {}", stderr_of(dir.path()));
}

fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
}
