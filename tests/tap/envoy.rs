//! A real Envoy with the tap filter, in the test's network namespace or in one the test created
//! (started with `ip netns exec`: test setup only; meshtap itself enters namespaces with setns).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::envoy::{envoy_binary, free_port, next_base_id};

/// The tap filter's `http_filters` entry for a `common_config`.
pub fn tap_filter(common_config: Value) -> Value {
    json!({
        "name": "envoy.filters.http.tap",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.tap.v3.Tap",
            "common_config": common_config,
            "record_headers_received_time": true
        }
    })
}

pub fn admin_filter(config_id: &str) -> Value {
    tap_filter(json!({"admin_config": {"config_id": config_id}}))
}

/// A `file_per_tap` filter writing `format` files under `dir` with `limit` body bytes buffered.
pub fn file_filter(dir: &Path, format: &str, limit: u32) -> Value {
    tap_filter(json!({"static_config": {
        "match": {"any_match": true},
        "output_config": {
            "sinks": [{"format": format, "file_per_tap": {"path_prefix": dir.join("tap").to_string_lossy()}}],
            "max_buffered_rx_bytes": limit,
            "max_buffered_tx_bytes": limit
        }
    }}))
}

/// Envoy's bootstrap: listener -> HCM -> `filter` -> router to `upstream` (or a direct response
/// `direct-response-body` when there is none).
pub fn bootstrap(
    filter: Value,
    listener_port: u16,
    admin_port: u16,
    upstream: Option<SocketAddr>,
) -> Value {
    let socket =
        |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let route = match upstream {
        Some(_) => json!({"match": {"prefix": "/"}, "route": {"cluster": "app"}}),
        None => json!({"match": {"prefix": "/"}, "direct_response": {
            "status": 200, "body": {"inline_string": "direct-response-body"}}}),
    };
    let clusters: Vec<Value> = upstream
        .map(|up| {
            json!({
                "name": "app",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": up.ip().to_string(), "port_value": up.port()}}}}
                ]}]}
            })
        })
        .into_iter()
        .collect();
    json!({
        "admin": {"address": socket(admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": socket(listener_port),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound",
                        "route_config": {"name": "inbound", "virtual_hosts": [
                            {"name": "all", "domains": ["*"], "routes": [route]}
                        ]},
                        "http_filters": [filter, {
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                        }]
                    }
                }]}]
            }],
            "clusters": clusters
        }
    })
}

/// A running Envoy; dropping it kills the process.
pub struct TapEnvoy {
    child: Child,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    stderr: PathBuf,
}

impl TapEnvoy {
    /// Starts Envoy with `filter` (fixed ports, so a restart can reuse them); in `netns` (a name
    /// under /run/netns) when given. Returns once the listener accepts connections.
    pub fn start_on(
        dir: &Path,
        filter: &Value,
        upstream: Option<SocketAddr>,
        listener_port: u16,
        admin_port: u16,
        netns: Option<&str>,
    ) -> Result<TapEnvoy, String> {
        let config = bootstrap(filter.clone(), listener_port, admin_port, upstream);
        let n = next_base_id();
        let config_path = dir.join(format!("envoy-{n}.json"));
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let stderr = dir.join(format!("envoy-{n}.stderr"));
        let mut command = match netns {
            Some(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name]).arg(envoy_binary());
                c
            }
            None => Command::new(envoy_binary()),
        };
        let child = command
            .arg("-c")
            .arg(&config_path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "2",
                "-l",
                "warning",
            ])
            .args(["--base-id", &n.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .map_err(|e| format!("cannot start envoy: {e}"))?;
        let mut envoy = TapEnvoy {
            child,
            listener: SocketAddr::from(([127, 0, 0, 1], listener_port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = envoy.child.try_wait().unwrap() {
                return Err(format!("envoy exited: {status}\n{}", envoy.stderr_text()));
            }
            let ready = match netns {
                Some(name) => in_netns(name, move || {
                    TcpStream::connect_timeout(
                        &envoy_listener(listener_port),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                }),
                None => {
                    TcpStream::connect_timeout(&envoy.listener, Duration::from_millis(200)).is_ok()
                }
            };
            if ready {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                return Err(format!("envoy not ready\n{}", envoy.stderr_text()));
            }
            // Polling interval, not a readiness guess.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts Envoy on fresh ports in the test's own namespace.
    pub fn start(dir: &Path, filter: &Value, upstream: Option<SocketAddr>) -> TapEnvoy {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::start_on(dir, filter, upstream, free_port(), free_port(), None) {
                Ok(envoy) => return envoy,
                Err(e) => failures.push(e),
            }
        }
        panic!("Envoy did not start:\n{}", failures.join("\n---\n"));
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Kills Envoy and waits for it to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TapEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envoy_listener(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs `f` on a thread inside the network namespace `/run/netns/<name>` (the test's client side).
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = meshtap::netns::Netns::open(&Path::new("/run/netns").join(name)).expect("open netns");
    meshtap::netns::spawn_in(ns, "test-netns-client", f)
        .expect("spawn")
        .join()
        .expect("join")
        .expect("setns")
}

/// A minimal HTTP/1.1 exchange on a std socket (used inside a namespace): the response bytes.
pub fn http_exchange(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: netns.test\r\nx-test: in-netns\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    response
}

/// A network namespace made for one test (`mtap-<pid>-<tag>`), deleted on drop (also when the
/// test fails).
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn create(tag: &str) -> TestNetns {
        let name = format!("mtap-{}-{tag}", std::process::id());
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &name]);
        let ns = TestNetns { name };
        run(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// `meshtap tap ...` running as a child: stdout lines (records) and stderr collected by threads.
pub struct TapCli {
    child: Child,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    pub records: Vec<Value>,
}

impl TapCli {
    pub fn spawn(args: &[&str]) -> TapCli {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshtap"))
            .arg("tap")
            .args(args)
            .env("MESHTAP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run meshtap");
        let (tx, stdout) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        TapCli {
            child,
            stdout,
            stderr,
            records: Vec::new(),
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until meshtap has attached `n` times in total (its log says so).
    pub fn wait_attached(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .stderr()
            .matches("Attached to Envoy's admin tap stream")
            .count()
            < n
        {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "meshtap exited ({status}) before attaching:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "meshtap did not attach {n} time(s):\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for meshtap to exit; `(success, stderr)`.
    pub fn wait_exit(&mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads reach EOF.
                let mut more = Vec::new();
                while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(5)) {
                    more.push(line);
                }
                for line in more {
                    self.records
                        .push(serde_json::from_str(&line).expect("JSON record"));
                }
                return (status.success(), self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "meshtap did not exit:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

impl Drop for TapCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
