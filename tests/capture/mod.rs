//! `meshtap capture` against real traffic in network namespaces the test creates: a hyper server
//! in namespace A, a client in namespace B across a veth pair (and one inside A over loopback),
//! meshtap entering A through setns. Every record must match exactly what the server received and
//! the client received: methods, paths, headers, bodies byte for byte.

mod agent;
mod client;
mod env;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::support::meshtap::{body, headers, redacted};
use client::Got;
use env::{Capture, Namespaces, Seen, Server};

fn by_path<'a>(records: &'a [Value], path: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["request"]["path"] == path)
        .collect();
    assert_eq!(found.len(), 1, "records for {path}: {found:#?}");
    found[0]
}

/// Every exchange the client made has exactly one record equal to what both ends saw.
fn assert_records_match(records: &[Value], seen: &[Seen], got: &[Got], log_file: &str) {
    assert_eq!(records.len(), got.len(), "one record per exchange");
    assert_eq!(seen.len(), got.len(), "the server saw every request");
    for g in got {
        let s = seen
            .iter()
            .find(|s| s.path == g.path)
            .expect("server saw it");
        let r = by_path(records, &g.path);
        let what = format!("record for {}: {r:#}", g.path);
        assert_eq!(r["source"], "capture", "{what}");
        assert_eq!(r["log"]["file"], log_file, "{what}");
        assert_eq!(r["complete"], true, "{what}");
        assert_eq!(r["warnings"], serde_json::json!([]), "{what}");
        let req = &r["request"];
        assert_eq!(req["method"], s.method.as_str(), "{what}");
        assert_eq!(
            headers(req),
            Some(redacted("request", s.headers.clone())),
            "{what}"
        );
        assert_eq!(body(req).unwrap(), s.body, "request body of {}", g.path);
        assert_eq!(req["body_size"], s.body.len() as u64, "{what}");
        assert_eq!(req["body_truncated"], false, "{what}");
        assert_eq!(req["ended"], true, "{what}");
        if let Some(host) = s.headers.get("host") {
            assert_eq!(req["authority"], host[0].as_str(), "{what}");
        }
        let resp = &r["response"];
        assert_eq!(resp["status"], g.status, "{what}");
        assert_eq!(
            headers(resp),
            Some(redacted("response", g.headers.clone())),
            "{what}"
        );
        assert_eq!(body(resp).unwrap(), g.body, "response body of {}", g.path);
        assert_eq!(resp["ended"], true, "{what}");
    }
}

fn args(netns: &str, interface: &str, port: u16, extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--netns".to_string(), format!("/run/netns/{netns}")];
    v.extend(common_args(interface, port, extra));
    v
}

fn common_args(interface: &str, port: u16, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--interface",
        interface,
        "--port",
        &port.to_string(),
        "--max-body-bytes",
        "2000000",
        "--summary-json",
        "--duration",
        "120",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn assert_no_loss(summary: &Value) {
    assert_eq!(summary["kernel_drops"], 0, "{summary}");
    assert_eq!(summary["queue_drops"], 0, "{summary}");
    assert_eq!(summary["flows"]["gaps"], 0, "{summary}");
}

#[test]
fn capture_across_a_veth_pair_matches_what_both_ends_saw() {
    let ns = Namespaces::create();
    let server = Server::start(&ns.a);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("a.pcap");
    let capture = Capture::start(&args(
        &ns.a,
        &ns.veth_a,
        server.port,
        &["--pcap", pcap.to_str().unwrap()],
    ));
    let addr = SocketAddr::from((ns.a_ip, server.port));
    let got = env::in_netns(&ns.b, move || client::all(addr))
        .join()
        .unwrap();
    capture.wait_for_records(got.len(), Duration::from_secs(60));
    let (records, summary) = capture.stop();
    assert_records_match(
        &records,
        &server.seen(),
        &got,
        &format!("capture:/run/netns/{}", ns.a),
    );
    assert_no_loss(&summary);
    assert_eq!(summary["interfaces"], serde_json::json!([ns.veth_a]));
    // Connections: keep-alive, pipelined, 100-continue, close-delimited.
    assert_eq!(summary["flows"]["connections"], 4, "{summary}");
    assert_eq!(summary["flows"]["interim_responses"], 1, "{summary}");
    // The pcap file holds every frame meshtap read, readable as Ethernet.
    let frames = env::pcap_frames(&pcap);
    assert_eq!(frames.len() as u64, summary["frames"].as_u64().unwrap());
    assert!(frames.len() > 100, "a 1 MB body each way takes many frames");
    if let Ok(out) = std::process::Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&pcap)
        .output()
    {
        assert!(
            out.status.success(),
            "tcpdump -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            frames.len()
        );
    }
    replay_recorded_frames(&frames, &records, server.port, &ns.a);
}

/// The connection (sorted address pair) and TCP payload length of a recorded frame.
fn conn_of(frame: &[u8]) -> (String, usize) {
    let p = etherparse::SlicedPacket::from_ethernet(frame).expect("recorded frame parses");
    let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(tcp))) =
        (&p.net, &p.transport)
    else {
        panic!("not IPv4/TCP")
    };
    let a = format!("{}:{}", ip.header().source_addr(), tcp.source_port());
    let b = format!(
        "{}:{}",
        ip.header().destination_addr(),
        tcp.destination_port()
    );
    let key = if a < b {
        format!("{a}|{b}")
    } else {
        format!("{b}|{a}")
    };
    (key, tcp.payload().len())
}

/// The recorded frames fed again, in altered order, with duplicates, and with a frame lost.
fn replay_recorded_frames(frames: &[(i64, Vec<u8>)], live: &[Value], port: u16, netns: &str) {
    let options = meshtap::capture::Options {
        ports: vec![port],
        limits: {
            let mut l = meshtap::capture::flows::Limits::default();
            l.http.max_body_bytes = 2_000_000;
            l
        },
        ..Default::default()
    };
    let origin = meshtap::capture::Origin {
        file: format!("capture:/run/netns/{netns}"),
        k8s: None,
    };
    let strip_times = |r: &Value| {
        let mut r = r.clone();
        for d in ["request", "response"] {
            if let Some(o) = r[d].as_object_mut() {
                o.remove("start_time");
                o.remove("end_time");
            }
        }
        r.as_object_mut().unwrap().remove("time");
        r
    };
    let sorted = |records: &[Value]| {
        let mut v: Vec<Value> = records.iter().map(strip_times).collect();
        v.sort_by_key(|r| r["request"]["path"].to_string());
        v
    };

    // Reorder: within each connection, every run of 8 data-carrying frames is reversed (the
    // handshake stays first); every 5th frame is captured twice.
    let mut slots: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, (_, f)) in frames.iter().enumerate() {
        let (key, len) = conn_of(f);
        if len > 0 {
            slots.entry(key).or_default().push(i);
        }
    }
    let mut order: Vec<usize> = (0..frames.len()).collect();
    for idx in slots.values() {
        for window in idx.chunks(8) {
            for (slot, from) in window.iter().zip(window.iter().rev()) {
                order[*slot] = *from;
            }
        }
    }
    assert_ne!(
        order,
        (0..frames.len()).collect::<Vec<_>>(),
        "the order really changed"
    );
    let altered: Vec<(i64, Vec<u8>)> = order
        .iter()
        .enumerate()
        .flat_map(|(n, &i)| std::iter::repeat_n(frames[i].clone(), if n % 5 == 0 { 2 } else { 1 }))
        .collect();
    let (replayed, summary) = meshtap::capture::replay(altered, &options, &origin);
    // The live records went through the default stages (redaction); the replayed ones must too.
    let mut stages = meshtap::stage::Stages::from_config(&meshtap::config::Config::default())
        .expect("the default stages");
    let replayed: Vec<Value> = replayed
        .into_iter()
        .map(|e| serde_json::to_value(stages.run(e).expect("kept")).unwrap())
        .collect();
    assert_eq!(
        sorted(&replayed),
        sorted(live),
        "reordered and duplicated frames give the same records"
    );
    assert!(summary.flows.retransmitted_bytes > 0);
    assert_eq!(summary.flows.gaps, 0);

    // Lose one frame in the middle of a 1 MB body: that record says so, the others are exact.
    // Frames this large only carry the middle of the two 1 MB bodies.
    let large: Vec<usize> = (0..frames.len())
        .filter(|&i| conn_of(&frames[i].1).1 > 1000)
        .collect();
    let lost = large[large.len() / 2];
    let lost_len = conn_of(&frames[lost].1).1;
    let (replayed, summary) = meshtap::capture::replay(
        frames
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != lost)
            .map(|(_, f)| f.clone()),
        &options,
        &origin,
    );
    assert_eq!(summary.flows.gaps, 1);
    assert_eq!(summary.flows.gap_bytes, lost_len as u64);
    let replayed: Vec<Value> = replayed
        .into_iter()
        .map(|e| serde_json::to_value(stages.run(e).expect("kept")).unwrap())
        .collect();
    let damaged: Vec<&Value> = replayed.iter().filter(|r| r["complete"] == false).collect();
    assert_eq!(damaged.len(), 1, "{damaged:#?}");
    let d = damaged[0];
    let path = d["request"]["path"].as_str().unwrap().to_string();
    let dir = if d["request"]["body_truncated"] == true {
        "request"
    } else {
        "response"
    };
    assert_eq!(d[dir]["body_truncated"], true, "{d:#}");
    assert!(
        d["warnings"][0]
            .as_str()
            .unwrap()
            .contains(&format!("{lost_len} {dir} body bytes are missing")),
        "{d:#}"
    );
    // What was kept is exactly the body up to the lost bytes.
    let live_body = body(&by_path(live, &path)[dir]).unwrap();
    let kept = body(&d[dir]).unwrap();
    assert!(kept.len() < live_body.len() && live_body.starts_with(&kept));
    assert_eq!(d[dir]["body_size"], live_body.len() as u64);
    let exact: Vec<&Value> = replayed.iter().filter(|r| r["complete"] == true).collect();
    assert_eq!(exact.len(), live.len() - 1);
    for r in exact {
        let path = r["request"]["path"].as_str().unwrap();
        assert_eq!(strip_times(r), strip_times(by_path(live, path)));
    }
}

#[test]
fn capture_on_loopback_sees_each_packet_once() {
    let ns = Namespaces::create();
    let server = Server::start(&ns.a);
    let capture = Capture::start(&args(&ns.a, "lo", server.port, &[]));
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    // Client and server in the same namespace: the app-to-sidecar hop of a pod.
    let got = env::in_netns(&ns.a, move || client::all(addr))
        .join()
        .unwrap();
    capture.wait_for_records(got.len(), Duration::from_secs(60));
    let (records, summary) = capture.stop();
    assert_records_match(
        &records,
        &server.seen(),
        &got,
        &format!("capture:/run/netns/{}", ns.a),
    );
    assert_no_loss(&summary);
    // Loopback hands packet sockets every frame twice (outgoing, then incoming): the outgoing
    // copy is skipped, exactly once per frame used. (Byte-exact bodies above show that nothing
    // was delivered twice; real TCP retransmissions on lo are counted, not an error.)
    assert_eq!(
        summary["skipped"]["loopback_outgoing_copy"], summary["frames"],
        "{summary}"
    );
}

#[test]
fn path_prefix_and_count_select_exchanges() {
    let ns = Namespaces::create();
    let server = Server::start(&ns.a);
    let capture = Capture::start(&args(&ns.a, &ns.veth_a, server.port, &["--path", "/pipe/"]));
    let addr = SocketAddr::from((ns.a_ip, server.port));
    let got = env::in_netns(&ns.b, move || client::pipelined(addr))
        .join()
        .unwrap();
    // Traffic outside the prefix, on the same server, is left out.
    let other = env::in_netns(&ns.b, move || client::expect_continue(addr))
        .join()
        .unwrap();
    assert_eq!(other.status, 200);
    capture.wait_for_records(3, Duration::from_secs(60));
    let (records, summary) = capture.stop();
    let seen: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/pipe/"))
        .collect();
    assert_records_match(
        &records,
        &seen,
        &got,
        &format!("capture:/run/netns/{}", ns.a),
    );
    assert_eq!(summary["filtered_out"], 1, "{summary}");
}

#[test]
fn capture_on_two_interfaces_at_once_counts_nothing_twice() {
    let ns = Namespaces::create();
    let server = Server::start(&ns.a);
    let mut a = args(&ns.a, "lo", server.port, &[]);
    a.extend(["--interface".to_string(), ns.veth_a.clone()]);
    let capture = Capture::start(&a);
    let remote = SocketAddr::from((ns.a_ip, server.port));
    let local = SocketAddr::from(([127, 0, 0, 1], server.port));
    let from_b = env::in_netns(&ns.b, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(client::keep_alive(remote))
    });
    let from_a = env::in_netns(&ns.a, move || client::pipelined(local));
    let mut got = from_b.join().unwrap();
    got.extend(from_a.join().unwrap());
    capture.wait_for_records(got.len(), Duration::from_secs(60));
    let (records, summary) = capture.stop();
    assert_records_match(
        &records,
        &server.seen(),
        &got,
        &format!("capture:/run/netns/{}", ns.a),
    );
    assert_no_loss(&summary);
    assert_eq!(
        summary["interfaces"].as_array().unwrap().len(),
        2,
        "{summary}"
    );
    assert_eq!(summary["flows"]["connections"], 2, "{summary}");
}

#[test]
fn a_pod_is_found_through_the_kubelet_log_root_and_proc() {
    let ns = Namespaces::create();
    let server = Server::start(&ns.a);
    // A node's view of one pod: its log directory, and a process in its cgroup whose network
    // namespace is the test's namespace A.
    let node = tempfile::tempdir().unwrap();
    let uid = format!("0c1a2b3c-1111-2222-3333-{:012}", std::process::id());
    let log_root = node.path().join("pods");
    std::fs::create_dir_all(log_root.join(format!("shop_cart-1_{uid}/app"))).unwrap();
    let proc_root = node.path().join("proc");
    let process = proc_root.join("4242");
    std::fs::create_dir_all(process.join("ns")).unwrap();
    std::fs::write(
        process.join("cgroup"),
        format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-1.scope\n", uid.replace('-', "_")),
    )
    .unwrap();
    std::os::unix::fs::symlink(Namespaces::path(&ns.a), process.join("ns/net")).unwrap();

    let mut a = vec![
        "--pod".to_string(),
        "shop/cart-1".to_string(),
        "--proc-root".to_string(),
        proc_root.display().to_string(),
        "--log-root".to_string(),
        log_root.display().to_string(),
    ];
    a.extend(common_args("lo", server.port, &[]));
    let capture = Capture::start(&a);
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let got = env::in_netns(&ns.a, move || client::pipelined(addr))
        .join()
        .unwrap();
    capture.wait_for_records(got.len(), Duration::from_secs(60));
    let (records, _) = capture.stop();
    assert_records_match(&records, &server.seen(), &got, "capture:shop/cart-1");
    for r in &records {
        assert_eq!(
            r["k8s"],
            serde_json::json!({"namespace": "shop", "pod": "cart-1", "pod_uid": uid, "container": ""}),
            "{r:#}"
        );
    }
}

#[test]
fn sink_mode_delivers_through_the_configured_sink() {
    let ns = Namespaces::create();
    let server = Server::start(&ns.a);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exchanges.ndjson");
    let config = dir.path().join("meshtap.yaml");
    std::fs::write(
        &config,
        format!("sink:\n  type: file\n  path: {}\n", out.display()),
    )
    .unwrap();
    let capture = Capture::start(&args(
        &ns.a,
        "lo",
        server.port,
        &[
            "--config",
            config.to_str().unwrap(),
            "--sink",
            "--count",
            "3",
        ],
    ));
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let got = env::in_netns(&ns.a, move || client::pipelined(addr))
        .join()
        .unwrap();
    // --count 3: the capture stops by itself after three records; it exits once the sink
    // acknowledged them.
    let (stdout, summary) = capture.wait_for_exit(Duration::from_secs(60));
    assert!(stdout.is_empty(), "records go to the sink, not stdout");
    assert_eq!(summary["delivered"], 3, "{summary}");
    let records: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_records_match(
        &records,
        &server.seen(),
        &got,
        &format!("capture:/run/netns/{}", ns.a),
    );
}

#[test]
fn a_missing_capability_is_named() {
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set=-net_raw", "--inh-caps=-net_raw"])
        .arg(env!("CARGO_BIN_EXE_meshtap"))
        .args(["capture", "--netns", "/proc/self/ns/net", "--duration", "1"])
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("capture needs CAP_NET_RAW (missing) to open a packet socket"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("CAP_SYS_ADMIN"),
        "only what is missing is named: {stderr}"
    );
    assert!(stderr.contains("deploy/overlays/capture"), "{stderr}");
}

#[test]
fn bad_targets_and_interfaces_are_clear_errors() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshtap"))
            .arg("capture")
            .args(args)
            .output()
            .expect("run meshtap");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[
        "--netns",
        "/proc/self/ns/net",
        "--interface",
        "no-such-mcap",
        "--duration",
        "1",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no interface \"no-such-mcap\" in the network namespace (it has: lo"),
        "{stderr}"
    );
    let empty = tempfile::tempdir().unwrap();
    let root = empty.path().to_str().unwrap();
    let (code, stderr) = run(&[
        "--pod",
        "shop/cart-1",
        "--log-root",
        root,
        "--duration",
        "1",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no pod shop/cart-1 under"), "{stderr}");
    let (code, stderr) = run(&[
        "--pod-uid",
        "0c1a-none",
        "--proc-root",
        root,
        "--duration",
        "1",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no process of pod 0c1a-none"), "{stderr}");
    let (code, stderr) = run(&["--pod", "not-a-pod"]);
    assert_eq!(code, Some(2), "clap usage error: {stderr}");
    let (code, stderr) = run(&[
        "--netns",
        "/proc/self/ns/net",
        "--port",
        "1",
        "--pcap-max-files",
        "0",
        "--pcap",
        "/dev/null/x",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the number of pcap files must be at least 1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("listening"),
        "refused before capturing: {stderr}"
    );
}
