//! `meshtap run` with the Kubernetes API: the built agent against [`api::FakeApi`] (real-shaped
//! list and watch responses, a watch restart, a `410 Gone`, deletions, a ReplicaSet owner
//! chain), reading v2 logs from a temp `/var/log/pods` tree, delivering to the file sink. The
//! records must be enriched and selected as `docs/kubernetes.md` says; without an API at all (no
//! configuration, or a server that is not there) records still flow with path-only metadata.
//!
//! Nothing is timed: the tests wait for the fake API's request log, the agent's `/metrics` and
//! the sink's records, each with a timeout.

mod api;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::agent::{metric, terminate_child, wait_agent_ready, wait_for, Setup, BIN};
use crate::support::envoy::free_port;
use api::{FakeApi, Watch};

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(30);

/// A pod as the API serves it: owner reference, service account, pod IP, labels and
/// annotations, plus the noise a real one carries (managed fields, containers, conditions).
fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    owner: Option<(&str, &str)>,
    labels: Value,
    annotations: Value,
) -> Value {
    let owners: Vec<Value> = owner
        .map(|(kind, owner_name)| {
            let api_version = if kind == "Job" { "batch/v1" } else { "apps/v1" };
            json!({"apiVersion": api_version, "kind": kind, "name": owner_name,
                   "uid": format!("{owner_name}-uid"), "controller": true, "blockOwnerDeletion": true})
        })
        .into_iter()
        .collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": ns, "uid": uid, "resourceVersion": "900",
            "creationTimestamp": "2026-11-25T08:00:00Z",
            "labels": labels, "annotations": annotations, "ownerReferences": owners,
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                "apiVersion": "v1", "time": "2026-11-25T08:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]
        },
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": format!("{name}-sa"),
            "serviceAccount": format!("{name}-sa"),
            "containers": [{"name": "app", "image": "example/app:1"},
                           {"name": "istio-proxy", "image": "istio/proxyv2:1.24.0"}]
        },
        "status": {
            "phase": "Running", "podIP": format!("10.244.1.{}", uid.len()),
            "podIPs": [{"ip": format!("10.244.1.{}", uid.len())}],
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

/// A pod with a resource version, for watch events.
fn at(mut pod: Value, rv: &str) -> Value {
    pod["metadata"]["resourceVersion"] = json!(rv);
    pod
}

fn list(rv: &str, pods: &[&Value]) -> Value {
    let items: Vec<Value> = pods
        .iter()
        .map(|p| {
            // A list's items carry no kind and apiVersion.
            let mut p = (*p).clone();
            let o = p.as_object_mut().unwrap();
            o.remove("kind");
            o.remove("apiVersion");
            p
        })
        .collect();
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn bookmark(rv: &str) -> Value {
    event(
        "BOOKMARK",
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv}}),
    )
}

/// A ReplicaSet's metadata as `get` with `as=PartialObjectMetadata` returns it.
fn replica_set(ns: &str, name: &str, deployment: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("{name}-uid"), "resourceVersion": "500",
            "labels": {"app": "reviews", "pod-template-hash": "6b8d5c7f9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                "uid": format!("{deployment}-uid"), "controller": true, "blockOwnerDeletion": true}]
        }
    })
}

/// Writes one complete lua-v2 exchange (CRI framing, Envoy's default layout) to the pod's log,
/// its path `/t/<tag>` so the record can be told apart.
fn write_exchange(root: &Path, ns: &str, pod: &str, uid: &str, tag: &str) {
    let dir = root.join(format!("{ns}_{pod}_{uid}/istio-proxy"));
    fs::create_dir_all(&dir).unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let sid = format!("6b06a18c.{}.{tag}", std::process::id());
    let rq = b64(format!(":method\nGET\n:path\n/t/{tag}\n:authority\nreviews:9080\n").as_bytes());
    let rs = b64(b":status\n200\n");
    let body = format!("reply {tag}");
    let mut text = String::new();
    for (i, msg) in [
        format!("[logPayload] v2 rq {sid} 0 1795596685632 {rq}"),
        format!("[logPayload] v2 rqe {sid} 1 1795596685633 0 0"),
        format!("[logPayload] v2 rs {sid} 0 1795596685634 {rs}"),
        format!("[logPayload] v2 rsb {sid} 1 {}", b64(body.as_bytes())),
        format!("[logPayload] v2 rse {sid} 2 1795596685635 {} 0", body.len()),
    ]
    .iter()
    .enumerate()
    {
        text.push_str(&format!(
            "2026-11-25T08:47:45.{i:03}000001Z stderr F [2026-11-25 08:47:45.{i:03}][23][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: {msg}\n"
        ));
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("0.log"))
        .unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
}

/// A running agent with a `kubernetes:` section; killed when dropped unless terminated.
struct K8sAgent {
    child: Option<Child>,
    ops: std::net::SocketAddr,
}

impl K8sAgent {
    /// Starts `meshtap run` with `kubernetes` (YAML, indented under `kubernetes:`) and the given
    /// environment, with `HOME` in `dir` and no `KUBECONFIG` or in-cluster variables inherited,
    /// so only what the test gives can point the agent at an API.
    fn start(setup: &Setup, dir: &Path, kubernetes: &str, env: &[(&str, &str)]) -> K8sAgent {
        let port = free_port();
        let yaml = format!("{}kubernetes:\n{kubernetes}", setup.yaml(port));
        fs::write(&setup.config, yaml).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&setup.stderr)
            .unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .arg("--config")
            .arg(&setup.config)
            .env_remove("MESHTAP_LOG")
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("NODE_NAME")
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn meshtap run");
        let ops = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if let Err(why) = wait_agent_ready(&mut child, ops, WAIT) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "meshtap run did not start: {why}\n{}",
                setup.stderr_tail(4000)
            );
        }
        K8sAgent {
            child: Some(child),
            ops,
        }
    }

    fn metrics(&self) -> String {
        match crate::agent::http_get(self.ops, "/metrics") {
            Ok((200, body)) => body,
            other => panic!("/metrics: {other:?}"),
        }
    }

    /// Waits until every `(series, value)` holds in `/metrics`.
    fn wait_metrics(&self, setup: &Setup, want: &[(&str, f64)]) {
        let mut last = String::new();
        let ok = wait_for(WAIT, || {
            last = self.metrics();
            want.iter()
                .all(|(series, value)| metric(&last, series) == Some(*value))
                .then_some(())
        });
        if ok.is_none() {
            let have: Vec<String> = want
                .iter()
                .map(|(s, _)| format!("{s} = {:?}", metric(&last, s)))
                .collect();
            panic!(
                "metrics never reached {want:?}; last seen: {have:?}\nagent stderr:\n{}",
                setup.stderr_tail(3000)
            );
        }
    }

    fn terminate(mut self) {
        let status = terminate_child(self.child.take().unwrap(), Duration::from_secs(40)).unwrap();
        assert!(status.success(), "agent exit: {status}");
    }
}

impl Drop for K8sAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The sink's records by the tag in their request path, once there are `n`.
fn records(setup: &Setup, n: usize) -> std::collections::BTreeMap<String, Value> {
    let records = wait_for(WAIT, || {
        let sink = setup.sink();
        (sink.records.len() >= n).then_some(sink.records)
    })
    .unwrap_or_else(|| {
        panic!(
            "the sink did not get {n} records (has {}); agent stderr:\n{}",
            setup.sink().records.len(),
            setup.stderr_tail(3000)
        )
    });
    records
        .into_iter()
        .map(|r| {
            let tag = r["request"]["path"]
                .as_str()
                .unwrap()
                .trim_start_matches("/t/")
                .to_string();
            (tag, r)
        })
        .collect()
}

fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("meshtap-k8s-{name}-{}-", std::process::id()))
        .tempdir()
        .unwrap()
}

fn kubeconfig_file(dir: &Path, api: &FakeApi) -> PathBuf {
    let path = dir.join("kubeconfig.yaml");
    fs::write(&path, api.kubeconfig()).unwrap();
    path
}

const DROPPED: &str = r#"meshtap_exchanges_dropped_total{reason="not_selected"}"#;
const UNENRICHED: &str = "meshtap_kubernetes_unenriched_exchanges_total";
const LIVE: &str = r#"meshtap_kubernetes_pods{state="live"}"#;
const DELETED: &str = r#"meshtap_kubernetes_pods{state="deleted"}"#;
const UP: &str = "meshtap_kubernetes_up";

/// The whole story: list, watch, watch restart, 410 and re-list, deletion, owner chain;
/// enrichment and every selection rule, end to end.
#[test]
fn agent_enriches_and_selects_from_the_api() {
    let dir = temp_dir("e2e");
    let setup = Setup::new(dir.path());
    let labels = |app: &str| json!({"app": app, "version": "v1", "pod-template-hash": "6b8d5c7f9", "security.istio.io/tlsMode": "istio"});
    let none = json!({});
    // Deployment pod (through its ReplicaSet), known from the first list.
    let a = pod(
        "shop",
        "reviews-v1-6b8d5c7f9-x2x7q",
        "uid-a",
        Some(("ReplicaSet", "reviews-v1-6b8d5c7f9")),
        labels("reviews"),
        none.clone(),
    );
    // StatefulSet pod, owner direct.
    let b = pod(
        "shop",
        "db-0",
        "uid-b",
        Some(("StatefulSet", "db")),
        json!({"app": "db", "tier": "backend"}),
        none.clone(),
    );
    // Opted out by annotation.
    let c = pod(
        "shop",
        "ratings-0",
        "uid-c",
        Some(("StatefulSet", "ratings")),
        labels("ratings"),
        json!({"meshtap.io/capture": "false", "sidecar.istio.io/status": "{}"}),
    );
    // Misses the label selector (tier=internal).
    let d = pod(
        "shop",
        "cache-0",
        "uid-d",
        Some(("StatefulSet", "cache")),
        json!({"app": "cache", "tier": "internal"}),
        none.clone(),
    );
    // Added by the first watch (DaemonSet).
    let e = pod(
        "shop",
        "cart-agent-x7k2p",
        "uid-e",
        Some(("DaemonSet", "cart-agent")),
        labels("cart"),
        none.clone(),
    );
    // Appears in the re-list after the 410 (Job).
    let f = pod(
        "shop",
        "report-28391-abcde",
        "uid-f",
        Some(("Job", "report-28391")),
        labels("report"),
        none.clone(),
    );
    // Listed first, missing from the re-list: deleted while the watch was down.
    let g = pod(
        "shop",
        "gone-0",
        "uid-g",
        Some(("StatefulSet", "gone")),
        labels("gone"),
        none.clone(),
    );
    // Selected by labels, but in an excluded namespace.
    let x = pod(
        "kube-system",
        "coredns-0",
        "uid-x",
        Some(("StatefulSet", "coredns")),
        labels("coredns"),
        none.clone(),
    );

    let api = FakeApi::start(
        vec![
            list("1000", &[&a, &b, &c, &d, &g, &x]),
            list("2000", &[&a, &b, &c, &d, &e, &f, &x]),
        ],
        vec![
            // Ends after these: the agent resumes from the bookmark's version.
            Watch::Events(vec![
                event("ADDED", at(e.clone(), "1001")),
                event("MODIFIED", at(a.clone(), "1002")),
                bookmark("1005"),
            ]),
            Watch::Gone,
            Watch::Live(vec![bookmark("2001")]),
        ],
        vec![replica_set("shop", "reviews-v1-6b8d5c7f9", "reviews-v1")],
    );
    let kubeconfig = kubeconfig_file(dir.path(), &api);

    // Logged before the agent starts: read only after the first list, so enriched.
    write_exchange(
        &setup.root,
        "shop",
        "reviews-v1-6b8d5c7f9-x2x7q",
        "uid-a",
        "a1",
    );
    let agent = K8sAgent::start(
        &setup,
        dir.path(),
        &format!(
            "  enabled: true\n  kubeconfig: {}\n  labels: [app, version]\n  select:\n    labels: \"app,tier!=internal\"\n",
            kubeconfig.display()
        ),
        &[("NODE_NAME", NODE)],
    );
    // The script played out: two lists, three watches, the live one open.
    wait_for(WAIT, || {
        (api.live() && api.seen().iter().filter(|s| s.is_watch()).count() == 3).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the agent did not reach the third watch: {:#?}\n{}",
            api.seen(),
            setup.stderr_tail(3000)
        )
    });
    agent.wait_metrics(&setup, &[(UP, 1.0), (LIVE, 7.0), (DELETED, 1.0)]);

    for (ns, name, uid, tag) in [
        ("shop", "reviews-v1-6b8d5c7f9-x2x7q", "uid-a", "a2"),
        ("shop", "db-0", "uid-b", "b"),
        ("shop", "ratings-0", "uid-c", "c"),
        ("shop", "cache-0", "uid-d", "d"),
        ("shop", "cart-agent-x7k2p", "uid-e", "e"),
        ("shop", "report-28391-abcde", "uid-f", "f"),
        ("shop", "gone-0", "uid-g", "g"),
        ("kube-system", "coredns-0", "uid-x", "x"),
        ("shop", "unknown-0", "uid-u", "u"),
    ] {
        write_exchange(&setup.root, ns, name, uid, tag);
    }
    let got = records(&setup, 7);
    agent.wait_metrics(&setup, &[(DROPPED, 3.0), (UNENRICHED, 1.0)]);

    // The pod is deleted; its later lines are still enriched within the grace period.
    api.push(event("DELETED", at(a.clone(), "2002")));
    agent.wait_metrics(&setup, &[(LIVE, 6.0), (DELETED, 2.0)]);
    write_exchange(
        &setup.root,
        "shop",
        "reviews-v1-6b8d5c7f9-x2x7q",
        "uid-a",
        "a3",
    );
    let got = {
        let mut all = got;
        all.extend(records(&setup, 8));
        all
    };
    let metrics = agent.metrics();
    agent.terminate();
    assert_eq!(setup.sink().records.len(), 8, "no record twice");

    let tags: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        tags,
        ["a1", "a2", "a3", "b", "e", "f", "g", "u"],
        "delivered exactly these"
    );
    let k8s = |tag: &str| got[tag]["k8s"].clone();
    let workload = |tag: &str| {
        let w = &got[tag]["k8s"]["workload"];
        (
            w["kind"].as_str().unwrap_or("-").to_string(),
            w["name"].as_str().unwrap_or("-").to_string(),
        )
    };
    for tag in ["a1", "a2", "a3"] {
        let k = k8s(tag);
        assert_eq!(
            k["labels"],
            json!({"app": "reviews", "version": "v1"}),
            "{tag}: allow-listed labels only"
        );
        assert_eq!(
            workload(tag),
            ("Deployment".into(), "reviews-v1".into()),
            "{tag}: Deployment via ReplicaSet"
        );
        assert_eq!(k["service_account"], "reviews-v1-6b8d5c7f9-x2x7q-sa");
        assert_eq!(k["node"], NODE);
        assert_eq!(k["pod_ip"], "10.244.1.5");
        assert_eq!(k["pod"], "reviews-v1-6b8d5c7f9-x2x7q");
    }
    assert_eq!(workload("b"), ("StatefulSet".into(), "db".into()));
    assert_eq!(k8s("b")["labels"], json!({"app": "db"}));
    assert_eq!(
        workload("e"),
        ("DaemonSet".into(), "cart-agent".into()),
        "added by the watch"
    );
    assert_eq!(
        workload("f"),
        ("Job".into(), "report-28391".into()),
        "added by the re-list"
    );
    assert_eq!(
        workload("g"),
        ("StatefulSet".into(), "gone".into()),
        "deleted by the re-list, within grace"
    );
    let u = k8s("u");
    assert_eq!(u["namespace"], "shop");
    assert_eq!(u["pod_uid"], "uid-u");
    for field in ["labels", "workload", "service_account", "node", "pod_ip"] {
        assert!(u.get(field).is_none(), "unknown pod has no {field}: {u}");
    }
    assert_eq!(
        metric(&metrics, DROPPED),
        Some(3.0),
        "c (opted out), d (label selector), x (namespace)"
    );
    assert_eq!(metric(&metrics, UNENRICHED), Some(1.0), "only u");

    // What the agent asked.
    let seen = api.seen();
    let pods: Vec<_> = seen.iter().filter(|s| s.path == "/api/v1/pods").collect();
    assert_eq!(pods.len(), 5, "two lists and three watches: {seen:#?}");
    for s in &pods {
        assert_eq!(
            s.query.get("fieldSelector").map(String::as_str),
            Some("spec.nodeName=node-a"),
            "{s:?}"
        );
        assert_eq!(s.authorization, "Bearer test-token");
    }
    let watches: Vec<_> = pods.iter().filter(|s| s.is_watch()).collect();
    let versions: Vec<&str> = watches
        .iter()
        .map(|s| s.query["resourceVersion"].as_str())
        .collect();
    assert_eq!(
        versions,
        ["1000", "1005", "2000"],
        "resumed from the bookmark, re-listed after 410"
    );
    let rs: Vec<_> = seen
        .iter()
        .filter(|s| s.path.contains("/replicasets/"))
        .collect();
    assert_eq!(
        rs.len(),
        1,
        "the ReplicaSet is read once, then the pod's workload is reused: {rs:#?}"
    );
    assert_eq!(
        rs[0].path,
        "/apis/apps/v1/namespaces/shop/replicasets/reviews-v1-6b8d5c7f9"
    );
    assert!(
        rs[0].accept.contains("as=PartialObjectMetadata"),
        "metadata only: {}",
        rs[0].accept
    );
    assert_eq!(seen.len(), 6, "nothing else: {seen:#?}");
}

/// A deleted pod is forgotten after the grace period: its lines then get path-only metadata.
#[test]
fn deleted_pods_are_forgotten_after_the_grace_period() {
    let dir = temp_dir("grace");
    let setup = Setup::new(dir.path());
    let a = pod(
        "shop",
        "web-0",
        "uid-a",
        Some(("StatefulSet", "web")),
        json!({"app": "web"}),
        json!({}),
    );
    let api = FakeApi::start(
        vec![list("10", &[&a])],
        vec![Watch::Live(Vec::new())],
        Vec::new(),
    );
    let kubeconfig = kubeconfig_file(dir.path(), &api);
    let agent = K8sAgent::start(
        &setup,
        dir.path(),
        &format!(
            "  kubeconfig: {}\n  node_name: {NODE}\n  deletion_grace_seconds: 1\n",
            kubeconfig.display()
        ),
        &[],
    );
    wait_for(WAIT, || api.live().then_some(())).expect("the agent watches");
    write_exchange(&setup.root, "shop", "web-0", "uid-a", "1");
    assert_eq!(records(&setup, 1)["1"]["k8s"]["workload"]["name"], "web");

    api.push(event("DELETED", at(a, "11")));
    // Live 1 before the deletion, deleted 1 during the grace period (1 s, purged every 250 ms),
    // then nothing: waiting for the last state needs no race with the purge.
    agent.wait_metrics(&setup, &[(LIVE, 0.0), (DELETED, 0.0)]);
    write_exchange(&setup.root, "shop", "web-0", "uid-a", "2");
    let got = records(&setup, 2);
    assert!(
        got["2"]["k8s"].get("workload").is_none(),
        "forgotten: {}",
        got["2"]
    );
    assert_eq!(got["2"]["k8s"]["pod"], "web-0", "the path identity stays");
    agent.wait_metrics(&setup, &[(UNENRICHED, 1.0), (UP, 1.0)]);
    agent.terminate();
}

/// No API at all: `enabled: auto` without any client configuration, and a configured API server
/// that is not there. Records flow with path-only metadata, namespace selection still applies,
/// the agent is ready, and `meshtap_kubernetes_up` says 0.
#[test]
fn agent_works_without_the_api() {
    for (name, with_server) in [("none", false), ("unreachable", true)] {
        let dir = temp_dir(name);
        let setup = Setup::new(dir.path());
        let kubernetes = if with_server {
            // A port nothing listens on (bound, then released).
            let kubeconfig = dir.path().join("kubeconfig.yaml");
            let port = free_port();
            fs::write(
                &kubeconfig,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                     contexts:\n- name: x\n  context:\n    cluster: x\n    user: x\ncurrent-context: x\nusers:\n- name: x\n  user: {{}}\n"
                ),
            )
            .unwrap();
            format!("  enabled: true\n  kubeconfig: {}\n", kubeconfig.display())
        } else {
            "  enabled: auto\n".to_string()
        };
        write_exchange(&setup.root, "shop", "web-0", "uid-a", "1");
        write_exchange(&setup.root, "kube-system", "dns-0", "uid-k", "k");
        let agent = K8sAgent::start(&setup, dir.path(), &kubernetes, &[("NODE_NAME", NODE)]);
        write_exchange(&setup.root, "shop", "web-0", "uid-a", "2");
        let got = records(&setup, 2);
        let unenriched = if with_server { 2.0 } else { 0.0 };
        agent.wait_metrics(
            &setup,
            &[(DROPPED, 1.0), (UP, 0.0), (UNENRICHED, unenriched)],
        );
        assert_eq!(got.keys().collect::<Vec<_>>(), ["1", "2"], "{name}");
        for r in got.values() {
            assert_eq!(r["k8s"]["pod"], "web-0", "{name}");
            assert!(r["k8s"].get("workload").is_none(), "{name}: {r}");
        }
        let stderr = setup.stderr_tail(20_000);
        let said = if with_server {
            "Cannot watch this node's pods"
        } else {
            "No Kubernetes client configuration"
        };
        assert_eq!(
            stderr.matches(said).count(),
            1,
            "{name}: said once:\n{stderr}"
        );
        assert!(
            !stderr.contains("kube_client"),
            "{name}: kube's per-request errors are quiet:\n{stderr}"
        );
        assert!(matches!(
            crate::agent::http_get(agent.ops, "/readyz"),
            Ok((200, _))
        ));
        agent.terminate();
    }
}
