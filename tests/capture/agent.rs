//! `meshtap run` with `capture.enabled`: the agent captures the traffic of a pod whose sidecar log
//! shows no Lua exchange, and not of a pod whose log does. The node is faked where only the kernel
//! could provide it (a kubelet log tree, a /proc tree whose process of each pod has its `ns/net`
//! pointing at a namespace the test made); the traffic is real, in a real network namespace.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use super::env::{self, Namespaces, Server};
use super::{assert_records_match, client};
use crate::agent::{metric, read_sink, terminate_child, wait_agent_ready, wait_for, BIN};
use crate::support::envoy::free_port;

/// A CRI line of Envoy's default layout from the istio-proxy container.
fn envoy_line(ms: u32, text: &str) -> String {
    format!(
        "2026-11-25T08:47:45.{ms:03}000001Z stderr F [2026-11-25 08:47:45.{ms:03}][23][warning][lua] [source/extensions/filters/common/lua/lua.cc:31] script log: {text}\n"
    )
}

/// A sidecar log with one complete v2 exchange: the filter is installed.
fn lua_log() -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let sid = "6b06a18c.7f2ddc2776b0.1";
    let rq = b64(b":method\nGET\n:path\n/from-lua\n:authority\nreviews:9080\n");
    let rs = b64(b":status\n200\n");
    [
        format!("[logPayload] v2 rq {sid} 0 1795596685632 {rq}"),
        format!("[logPayload] v2 rqe {sid} 1 1795596685633 0 0"),
        format!("[logPayload] v2 rs {sid} 0 1795596685634 {rs}"),
        format!("[logPayload] v2 rsb {sid} 1 {}", b64(b"lua")),
        format!("[logPayload] v2 rse {sid} 2 1795596685635 3 0"),
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| envoy_line(i as u32, t))
    .collect()
}

/// A sidecar log without the filter: Envoy and pilot-agent chatter only.
fn quiet_log() -> String {
    "2026-11-25T08:47:45.000000001Z stderr F [2026-11-25 08:47:45.000][23][info][main] [source/server/server.cc:990] starting main dispatch loop\n\
     2026-11-25T08:47:45.100000001Z stdout F 2026-11-25T08:47:45.100000Z\tinfo\tEnvoy proxy is ready\n"
        .to_string()
}

/// A node with pods: the kubelet's log tree and a /proc tree with one process per pod.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("meshtap-agent-capture-")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("pods")).unwrap();
        Node { dir }
    }

    fn log_root(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    fn proc_root(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    /// Pod `shop/<name>` whose processes live in namespace `netns` and whose sidecar log is `log`.
    fn add_pod(&self, name: &str, uid: &str, pid: u32, netns: &Path, log: &str) -> PathBuf {
        let pod_dir = self.log_root().join(format!("shop_{name}_{uid}"));
        fs::create_dir_all(pod_dir.join("istio-proxy")).unwrap();
        fs::write(pod_dir.join("istio-proxy/0.log"), log).unwrap();
        let process = self.proc_root().join(pid.to_string());
        fs::create_dir_all(process.join("ns")).unwrap();
        fs::write(
            process.join("cgroup"),
            format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-1.scope\n", uid.replace('-', "_")),
        )
        .unwrap();
        std::os::unix::fs::symlink(netns, process.join("ns/net")).unwrap();
        pod_dir
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out/exchanges.ndjson")
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.stderr")).unwrap_or_default()
    }

    fn records(&self) -> Vec<Value> {
        read_sink(&self.out(), 5).records
    }

    /// Starts `meshtap run` (through `wrapper` if given) with capture on `port`; waits until ready.
    fn start_agent(&self, port: u16, wrapper: &[&str]) -> (Child, SocketAddr) {
        let q = serde_json::to_string(&self.proc_root().display().to_string()).unwrap();
        self.start_agent_with(
            &format!("capture:\n  enabled: true\n  ports: [{port}]\n  interfaces: [lo]\n  idle_before_capture_seconds: 2\n  proc_root: {q}\n"),
            wrapper,
        )
    }

    /// Starts `meshtap run` with `sources` (YAML of the `capture:`/`tap:` sections) appended.
    fn start_agent_with(&self, sources: &str, wrapper: &[&str]) -> (Child, SocketAddr) {
        let ops = free_port();
        let q = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap();
        let config = self.dir.path().join("meshtap.yaml");
        fs::write(
            &config,
            format!(
                "agent:\n  log_root: {}\n  state_dir: {}\n  poll_interval_ms: 100\n  idle_flush_ms: 50\n  checkpoint_interval_ms: 100\n\
                 sink:\n  type: file\n  path: {}\n  max_bytes: 67108864\n  max_files: 5\n\
                 ops:\n  listen: 127.0.0.1:{ops}\n\
                 kubernetes:\n  enabled: false\n{sources}",
                q(&self.log_root()),
                q(&self.dir.path().join("state")),
                q(&self.out()),
            ),
        )
        .unwrap();
        let stderr = fs::File::create(self.dir.path().join("agent.stderr")).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("MESHTAP_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn meshtap run");
        let addr = SocketAddr::from(([127, 0, 0, 1], ops));
        if let Err(why) = wait_agent_ready(&mut child, addr, Duration::from_secs(30)) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meshtap run did not start: {why}\n{}", self.stderr());
        }
        (child, addr)
    }
}

fn metrics(ops: SocketAddr) -> String {
    match crate::agent::http_get(ops, "/metrics") {
        Ok((200, body)) => body,
        other => panic!("/metrics: {other:?}"),
    }
}

/// Waits until the series `series` has value `value`.
fn wait_metric(ops: SocketAddr, series: &str, value: f64, node: &Node) {
    let ok = wait_for(Duration::from_secs(30), || {
        (metric(&metrics(ops), series) == Some(value)).then_some(())
    });
    assert!(
        ok.is_some(),
        "{series} did not reach {value}: {:?}\n--- agent stderr ---\n{}",
        metric(&metrics(ops), series),
        node.stderr()
    );
}

/// Kills the agent if a test fails before stopping it.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn the_agent_captures_a_pod_without_lua_logs_until_the_pod_is_deleted() {
    let ns = Namespaces::create();
    let server = Server::start(&ns.a);
    let node = Node::new();
    let pid = std::process::id();
    let quiet_uid = format!("0c1a2b3c-1111-2222-3333-{pid:012}");
    let lua_uid = format!("0c1a2b3c-4444-5555-6666-{pid:012}");
    let netns = Namespaces::path(&ns.a);
    let quiet_dir = node.add_pod("cart-1", &quiet_uid, 4242, &netns, &quiet_log());
    // Same namespace: if this pod were captured too, its records would show up for it.
    node.add_pod("reviews-1", &lua_uid, 4343, &netns, &lua_log());
    let (child, ops) = node.start_agent(server.port, &[]);
    let mut running = Running(Some(child));

    assert_eq!(
        metric(&metrics(ops), "meshtap_capture_enabled"),
        Some(1.0),
        "{}",
        node.stderr()
    );
    // After idle_before_capture_seconds the quiet pod is captured, the one with Lua logs never.
    wait_metric(ops, "meshtap_capture_active", 1.0, &node);

    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let got = env::in_netns(&ns.a, move || client::all(addr))
        .join()
        .unwrap();
    let captured = |records: &[Value]| -> Vec<Value> {
        records
            .iter()
            .filter(|r| r["source"] == "capture")
            .cloned()
            .collect()
    };
    let records = wait_for(Duration::from_secs(60), || {
        let records = node.records();
        (captured(&records).len() >= got.len()).then_some(records)
    })
    .unwrap_or_else(|| {
        panic!(
            "{} of {} captured records in the sink\n--- agent stderr ---\n{}",
            captured(&node.records()).len(),
            got.len(),
            node.stderr()
        )
    });
    let capture_records = captured(&records);
    assert_records_match(
        &capture_records,
        &server.seen(),
        &got,
        "capture:shop/cart-1",
    );
    for r in &capture_records {
        assert_eq!(
            r["k8s"],
            serde_json::json!({"namespace": "shop", "pod": "cart-1", "pod_uid": quiet_uid, "container": ""}),
            "{r:#}"
        );
    }
    // The Lua pod's exchange came through the log path, and nothing of it through capture.
    let lua: Vec<&Value> = records.iter().filter(|r| r["source"] == "lua-v2").collect();
    assert_eq!(lua.len(), 1, "{records:#?}");
    assert_eq!(lua[0]["k8s"]["pod"], "reviews-1");
    assert_eq!(records.len(), got.len() + 1, "nothing else, nothing twice");
    let text = metrics(ops);
    assert_eq!(
        metric(
            &text,
            r#"meshtap_exchanges_total{source="capture",complete="true"}"#
        ),
        Some(got.len() as f64),
        "{text}"
    );
    assert_eq!(metric(&text, "meshtap_capture_failures_total"), Some(0.0));

    // The pod is deleted: its log stream ends, and its capture stops.
    fs::remove_dir_all(&quiet_dir).unwrap();
    wait_metric(ops, "meshtap_capture_active", 0.0, &node);
    let status = terminate_child(running.0.take().unwrap(), Duration::from_secs(40)).unwrap();
    assert!(status.success(), "{status}: {}", node.stderr());
    let stderr = node.stderr();
    assert!(
        stderr.contains("Stopping the capture: the pod is gone"),
        "{stderr}"
    );
    let captures: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Capturing the pod's traffic"))
        .collect();
    assert_eq!(captures.len(), 1, "{stderr}");
    assert!(captures[0].contains("shop/cart-1"), "{stderr}");
    assert_eq!(
        node.records().len(),
        got.len() + 1,
        "nothing more after the stop"
    );
}

#[test]
fn without_net_raw_the_agent_names_it_and_keeps_reading_logs() {
    let node = Node::new();
    let uid = format!("0c1a2b3c-7777-8888-9999-{:012}", std::process::id());
    node.add_pod(
        "reviews-1",
        &uid,
        4444,
        Path::new("/proc/self/ns/net"),
        &lua_log(),
    );
    let (child, ops) = node.start_agent(
        8080,
        &["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw"],
    );
    let mut running = Running(Some(child));
    let records = wait_for(Duration::from_secs(30), || {
        let r = node.records();
        (!r.is_empty()).then_some(r)
    })
    .unwrap_or_else(|| panic!("the log path delivered nothing: {}", node.stderr()));
    assert_eq!(records[0]["source"], "lua-v2");
    let text = metrics(ops);
    assert_eq!(
        metric(&text, "meshtap_capture_enabled"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(metric(&text, "meshtap_capture_active"), Some(0.0), "{text}");
    let status = terminate_child(running.0.take().unwrap(), Duration::from_secs(40)).unwrap();
    assert!(status.success(), "{status}");
    let stderr = node.stderr();
    assert_eq!(
        stderr.matches("Capture is disabled").count(),
        1,
        "one error: {stderr}"
    );
    assert!(
        stderr.contains("capture needs CAP_NET_RAW (missing) to open a packet socket"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("CAP_SYS_ADMIN") && !stderr.contains("CAP_SYS_PTRACE"),
        "only what is missing is named: {stderr}"
    );
    assert!(stderr.contains("deploy/overlays/capture"), "{stderr}");
}

/// The filter gets installed while the pod is captured: Lua exchanges appear in its log, and its
/// capture stops (the log path has it from then on). A pod in the host's network namespace
/// (hostNetwork) is never captured: that would be the node's traffic.
#[test]
fn a_capture_stops_once_the_filter_logs_and_host_network_pods_are_skipped() {
    let ns = Namespaces::create();
    let node = Node::new();
    let pid = std::process::id();
    let uid = format!("0c1a2b3c-aaaa-bbbb-cccc-{pid:012}");
    let host_uid = format!("0c1a2b3c-dddd-eeee-ffff-{pid:012}");
    let dir = node.add_pod("cart-2", &uid, 4545, &Namespaces::path(&ns.a), &quiet_log());
    // The agent runs in the test's own namespace: /proc/self/ns/net is the "host's".
    node.add_pod(
        "node-exporter-1",
        &host_uid,
        4646,
        Path::new("/proc/self/ns/net"),
        &quiet_log(),
    );
    let (child, ops) = node.start_agent(8080, &[]);
    let mut running = Running(Some(child));
    wait_metric(ops, "meshtap_capture_active", 1.0, &node);
    wait_metric(ops, "meshtap_capture_failures_total", 1.0, &node);

    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("istio-proxy/0.log"))
        .unwrap();
    std::io::Write::write_all(&mut log, lua_log().as_bytes()).unwrap();
    wait_metric(ops, "meshtap_capture_active", 0.0, &node);
    let status = terminate_child(running.0.take().unwrap(), Duration::from_secs(40)).unwrap();
    assert!(status.success(), "{status}");
    let stderr = node.stderr();
    assert!(
        stderr.contains("Stopping the capture: its sidecar now logs exchanges"),
        "{stderr}"
    );
    assert!(stderr.contains("hostNetwork"), "{stderr}");
    let records = node.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["source"], "lua-v2");
    assert_eq!(records[0]["k8s"]["pod"], "cart-2");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("hostNetwork")).count(),
        1,
        "{stderr}"
    );
}

/// SIGTERM: the agent stops its captures and delivers what they hold. A request whose body is
/// still coming when the agent stops is delivered as it stands, marked incomplete.
#[test]
fn on_sigterm_what_the_captures_hold_is_delivered() {
    let ns = Namespaces::create();
    let server = Server::start(&ns.a);
    let node = Node::new();
    let uid = format!("0c1a2b3c-1212-3434-5656-{:012}", std::process::id());
    node.add_pod("cart-3", &uid, 4747, &Namespaces::path(&ns.a), &quiet_log());
    let (child, ops) = node.start_agent(server.port, &[]);
    let mut running = Running(Some(child));
    wait_metric(ops, "meshtap_capture_active", 1.0, &node);

    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    // Held open: 3 of 10 body bytes sent.
    let held = env::in_netns(&ns.a, move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(
            &mut s,
            b"POST /held HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nabc",
        )
        .unwrap();
        s
    })
    .join()
    .unwrap();
    // Later traffic on the same interface, delivered: the capture has read past the held bytes.
    let got = env::in_netns(&ns.a, move || client::pipelined(addr))
        .join()
        .unwrap();
    wait_for(Duration::from_secs(30), || {
        (node.records().len() >= got.len()).then_some(())
    })
    .unwrap_or_else(|| panic!("pipelined records not delivered: {}", node.stderr()));

    let status = terminate_child(running.0.take().unwrap(), Duration::from_secs(40)).unwrap();
    assert!(status.success(), "{status}: {}", node.stderr());
    drop(held);
    let records = node.records();
    assert_eq!(records.len(), got.len() + 1, "{records:#?}");
    let r = records
        .iter()
        .find(|r| r["request"]["path"] == "/held")
        .unwrap_or_else(|| panic!("no record of the held request: {records:#?}"));
    assert_eq!(r["source"], "capture");
    assert_eq!(r["complete"], false, "{r:#}");
    assert_eq!(
        crate::support::meshtap::body(&r["request"]).unwrap(),
        b"abc",
        "{r:#}"
    );
    assert_eq!(r["request"]["ended"], false, "{r:#}");
}

/// `tap.enabled`: the agent reads the admin /tap stream of a real Envoy (tap filter with an
/// `admin_config`) running in a pod's network namespace, whose admin port is reachable only from
/// inside it; the records carry the pod's identity, and the tap stops when the pod is deleted.
#[test]
fn the_agent_taps_a_pod_sidecar_through_its_admin_port() {
    use crate::tap::envoy::{admin_filter, http_exchange, in_netns, TapEnvoy, TestNetns};
    let ns = TestNetns::create("agent");
    let node = Node::new();
    let (listener_port, admin_port) = (free_port(), free_port());
    let envoy = TapEnvoy::start_on(
        node.dir.path(),
        &admin_filter("meshtap"),
        None,
        listener_port,
        admin_port,
        Some(&ns.name),
    )
    .expect("envoy starts in the namespace");
    let uid = format!("0c1a2b3c-abab-cdcd-efef-{:012}", std::process::id());
    let dir = node.add_pod("cart-4", &uid, envoy.pid(), &ns.path(), &quiet_log());
    let q = serde_json::to_string(&node.proc_root().display().to_string()).unwrap();
    let (child, ops) = node.start_agent_with(
        &format!("tap:\n  enabled: true\n  admin_port: {admin_port}\n  idle_before_tap_seconds: 1\n  proc_root: {q}\n"),
        &[],
    );
    let mut running = Running(Some(child));
    wait_metric(ops, "meshtap_tap_active", 1.0, &node);
    assert_eq!(metric(&metrics(ops), "meshtap_capture_enabled"), Some(0.0));

    // The stream is attached some time after the session starts: requests until one is tapped.
    let listener = SocketAddr::from(([127, 0, 0, 1], listener_port));
    let mut sent = 0;
    let record = wait_for(Duration::from_secs(30), || {
        sent += 1;
        let path = format!("/tapped/{sent}");
        let response = in_netns(&ns.name, move || {
            http_exchange(listener, "POST", &path, b"ping")
        });
        assert!(response.ends_with(b"direct-response-body"));
        node.records().into_iter().find(|r| r["source"] == "tap")
    })
    .unwrap_or_else(|| panic!("nothing tapped: {}", node.stderr()));
    assert_eq!(
        record["k8s"],
        serde_json::json!({"namespace": "shop", "pod": "cart-4", "pod_uid": uid, "container": ""}),
        "{record:#}"
    );
    assert_eq!(record["request"]["method"], "POST", "{record:#}");
    assert!(
        record["request"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/tapped/")),
        "{record:#}"
    );
    // (A direct response does not wait for the request body: Envoy taps none.)
    assert_eq!(
        record["request"]["headers"]["x-test"][0], "in-netns",
        "{record:#}"
    );
    assert!(
        record["log"]["file"]
            .as_str()
            .is_some_and(|f| f.starts_with("envoy-admin://shop/cart-4/127.0.0.1:")),
        "{record:#}"
    );
    assert_eq!(
        crate::support::meshtap::body(&record["response"]).unwrap(),
        b"direct-response-body"
    );

    fs::remove_dir_all(&dir).unwrap();
    wait_metric(ops, "meshtap_tap_active", 0.0, &node);
    let status = terminate_child(running.0.take().unwrap(), Duration::from_secs(40)).unwrap();
    assert!(status.success(), "{status}: {}", node.stderr());
    assert!(
        node.stderr().contains("Stopping the tap: the pod is gone"),
        "{}",
        node.stderr()
    );
    let text_failures = node.stderr().matches("Could not tap").count();
    assert_eq!(text_failures, 0, "{}", node.stderr());
}
