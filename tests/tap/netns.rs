//! The namespace path: a real Envoy inside a network namespace the test creates, whose admin port
//! is not reachable from the test's namespace; `meshtap tap` reaches it only by entering the
//! namespace (setns), named by `--netns`, `--pid`, `--pod` or `--pod-uid` (through a kubelet-like log root and
//! a /proc tree whose cgroup names the pod).

use std::net::TcpStream;
use std::time::Duration;

use super::envoy::{admin_filter, http_exchange, in_netns, TapCli, TapEnvoy, TestNetns};
use crate::support::envoy::free_port;

const UID: &str = "3f2a1b0c-1111-4222-8333-944455556666";

#[test]
fn envoy_admin_in_another_netns_is_tapped_through_setns() {
    let ns = TestNetns::create("admin");
    let tmp = tempfile::tempdir().unwrap();
    let (listener_port, admin_port) = (free_port(), free_port());
    let envoy = TapEnvoy::start_on(
        tmp.path(),
        &admin_filter("meshtap"),
        None,
        listener_port,
        admin_port,
        Some(&ns.name),
    )
    .expect("envoy starts in the namespace");
    assert!(
        TcpStream::connect_timeout(&envoy.admin, Duration::from_millis(500)).is_err(),
        "the admin port must not be reachable from the test's own namespace"
    );

    // A node-like layout for --pod: /var/log/pods/<ns>_<pod>_<uid>, /proc/<pid>/{cgroup,ns/net}.
    let log_root = tmp.path().join("pods");
    std::fs::create_dir_all(log_root.join(format!("shop_cart-1_{UID}/istio-proxy"))).unwrap();
    let proc_root = tmp.path().join("proc");
    let pid_dir = proc_root.join("4242");
    std::fs::create_dir_all(pid_dir.join("ns")).unwrap();
    std::fs::write(
        pid_dir.join("cgroup"),
        format!("0::/kubepods/burstable/pod{UID}/0123abcd\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(ns.path(), pid_dir.join("ns/net")).unwrap();

    let port = admin_port.to_string();
    let netns_path = ns.path().to_string_lossy().into_owned();
    let pid = envoy.pid().to_string();
    let log_root = log_root.to_string_lossy().into_owned();
    let proc_root = proc_root.to_string_lossy().into_owned();
    let cases: [(&str, Vec<&str>); 4] = [
        ("--netns", vec!["--netns", &netns_path]),
        ("--pid", vec!["--pid", &pid]),
        (
            "--pod",
            vec![
                "--pod",
                "shop/cart-1",
                "--log-root",
                &log_root,
                "--proc-root",
                &proc_root,
            ],
        ),
        (
            "--pod-uid",
            vec![
                "--pod-uid",
                UID,
                "--log-root",
                &log_root,
                "--proc-root",
                &proc_root,
            ],
        ),
    ];
    for (name, mut args) in cases {
        args.extend(["--admin-port", &port, "--count", "1"]);
        let mut tap = TapCli::spawn(&args);
        tap.wait_attached(1);
        let path = format!("/in/netns/{}", name.trim_start_matches('-'));
        let sent = path.clone();
        let listener = envoy.listener;
        let response = in_netns(&ns.name, move || {
            http_exchange(listener, "POST", &sent, b"hello from inside")
        });
        assert!(
            super::envoy_ok(&response),
            "{name}: {}",
            String::from_utf8_lossy(&response)
        );
        let (ok, stderr) = tap.wait_exit();
        assert!(ok, "{name}: {stderr}");
        let record = &tap.records[0];
        assert_eq!(record["request"]["path"], path.as_str(), "{name}");
        assert_eq!(
            record["request"]["headers"]["x-test"][0], "in-netns",
            "{name}"
        );
        assert_eq!(record["response"]["body"], "direct-response-body", "{name}");
        if name == "--pod" || name == "--pod-uid" {
            assert_eq!(record["k8s"]["namespace"], "shop");
            assert_eq!(record["k8s"]["pod"], "cart-1");
            assert_eq!(record["k8s"]["pod_uid"], UID);
            assert!(record["log"]["file"]
                .as_str()
                .unwrap()
                .starts_with("envoy-admin://shop/cart-1/127.0.0.1:"));
        } else {
            assert!(record["k8s"].is_null(), "{name}");
        }
    }
    drop(envoy);
    let name = ns.name.clone();
    drop(ns);
    assert!(
        !std::path::Path::new("/run/netns").join(name).exists(),
        "the namespace is deleted"
    );
}
