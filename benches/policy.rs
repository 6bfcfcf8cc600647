//! The cost of the capture policy stage per exchange, on generated exchanges shaped like a shop's
//! traffic (probes, static assets, catalog reads, payments, uploads, dev and system namespaces):
//!
//! - `default config`: the stage chain `Stages::from_config` builds from the default config (no
//!   rules, no limits: no stage at all), i.e. what a user who configures nothing pays;
//! - `no rules`: a policy stage with an empty policy, called directly;
//! - `10 rules`: the policy of `config/meshtap-policy.yaml` without its rate limits;
//! - `rate limits`: global and per-pod limits (high enough that everything passes), no rules;
//! - `10 rules + rate limits`: `config/meshtap-policy.yaml` as shipped.
//!
//! Prints exchanges/s and ns/exchange of CPU time (and of wall time). Run:
//! `cargo bench --bench policy` (`MESHTAP_BENCH_ROUNDS`, default 100, sets the repetitions).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use meshtap::config::Config;
use meshtap::policy::{
    LimitConfig, PerPodLimitConfig, PolicyConfig, PolicyStage, RateLimitsConfig,
};
use meshtap::record::{Direction, Exchange, Headers, K8sMeta, LogPosition, Source, Workload};
use meshtap::stage::{Stage, Stages, Verdict};

const EXCHANGES: usize = 1_000;

fn headers(list: &[(&str, &str)]) -> Option<Headers> {
    let mut h = Headers::new();
    for (k, v) in list {
        h.entry(k.to_string()).or_default().push(v.to_string());
    }
    Some(h)
}

/// A deterministic mix: exchange `i` of a shop-like cluster with 60 pods.
fn exchange(i: usize) -> Exchange {
    let kinds = [
        (
            "shop",
            "catalog",
            "GET",
            "/api/v1/catalog/items?page=2",
            "application/json",
            200,
        ),
        (
            "shop",
            "catalog",
            "GET",
            "/api/v2/catalog/items/42",
            "application/json",
            304,
        ),
        (
            "shop",
            "payments",
            "POST",
            "/api/v2/charge",
            "application/json",
            201,
        ),
        (
            "shop",
            "payments",
            "POST",
            "/api/v2/charge",
            "application/json",
            503,
        ),
        (
            "shop",
            "frontend",
            "GET",
            "/static/app.js",
            "text/plain",
            200,
        ),
        ("shop", "frontend", "GET", "/healthz", "text/plain", 200),
        (
            "shop",
            "uploads",
            "POST",
            "/upload",
            "multipart/form-data; boundary=x",
            200,
        ),
        (
            "shop",
            "orders",
            "POST",
            "/orders.v1.Orders/Create",
            "application/grpc",
            200,
        ),
        (
            "dev",
            "orders",
            "GET",
            "/api/v1/orders/7",
            "application/json",
            404,
        ),
        (
            "kube-system",
            "coredns",
            "GET",
            "/metrics",
            "text/plain",
            200,
        ),
    ];
    let (ns, app, method, path, ctype, status) = kinds[i % kinds.len()];
    let pod = format!("{app}-7d9f8-{}", i % 6);
    let body = vec![b'x'; 256 + (i * 37) % 2048];
    Exchange {
        id: format!("9f2c41d07a3e55b1-{}", i * 613),
        source: Source::LuaV2,
        time: "2026-11-25T08:47:45.772Z".into(),
        k8s: Some(K8sMeta {
            namespace: ns.into(),
            pod: pod.clone(),
            pod_uid: "uid".into(),
            container: "istio-proxy".into(),
            labels: BTreeMap::from([
                ("app".to_string(), app.to_string()),
                ("version".to_string(), "v1".to_string()),
            ]),
            workload: Some(Workload {
                kind: "Deployment".into(),
                name: app.into(),
            }),
            ..K8sMeta::default()
        }),
        log: LogPosition {
            file: format!("/var/log/pods/{ns}_{pod}_uid/istio-proxy/0.log"),
            ..LogPosition::default()
        },
        request: Some(Direction {
            method: Some(method.into()),
            path: Some(path.into()),
            authority: Some(format!("{app}.{ns}.svc.cluster.local:8080")),
            headers: headers(&[
                (":method", method),
                (":path", path),
                ("content-type", ctype),
                ("user-agent", "Go-http-client/1.1"),
                ("x-request-id", "0f7c2b1e-1d2c-4c5a-9a43-2b6f1e0d9c11"),
            ]),
            body: body.clone(),
            body_size: body.len() as u64,
            ..Direction::default()
        }),
        response: Some(Direction {
            status: Some(status),
            headers: headers(&[(":status", &status.to_string()), ("content-type", ctype)]),
            body: body.clone(),
            body_size: body.len() as u64,
            ..Direction::default()
        }),
        complete: true,
        warnings: vec![],
        redacted: vec![],
    }
}

/// CPU time of this thread: the figures hold on a busy machine, where wall time would count the
/// time other processes had the core.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall and CPU time since a start.
struct Timer(Instant, Duration);

impl Timer {
    fn start() -> Timer {
        Timer(Instant::now(), cpu_time())
    }
    fn stop(&self) -> (Duration, Duration) {
        (self.0.elapsed(), cpu_time() - self.1)
    }
}

/// Runs `stage` over every exchange, `rounds` times; (kept, (wall, cpu)).
fn time_stage(
    stage: &mut PolicyStage,
    exchanges: &mut [Exchange],
    rounds: usize,
) -> (usize, (Duration, Duration)) {
    let mut kept = 0;
    let timer = Timer::start();
    for _ in 0..rounds {
        for ex in exchanges.iter_mut() {
            kept += usize::from(black_box(stage.process(black_box(ex))) == Verdict::Keep);
        }
    }
    (kept, timer.stop())
}

fn report(name: &str, n: usize, kept: usize, (wall, cpu): (Duration, Duration)) {
    let per = cpu.as_nanos() as f64 / n as f64;
    println!(
        "{name:<24} {:>11.0} exchanges/s {per:>7.1} ns/exchange (CPU; wall {:>7.1} ns)  {:>5.1}% kept",
        n as f64 / cpu.as_secs_f64(),
        wall.as_nanos() as f64 / n as f64,
        100.0 * kept as f64 / n as f64
    );
}

fn main() {
    let rounds = std::env::var("MESHTAP_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    let mut exchanges: Vec<Exchange> = (0..EXCHANGES).map(exchange).collect();
    let n = EXCHANGES * rounds;
    println!("policy stage, {EXCHANGES} exchanges x {rounds} rounds");

    // What the default configuration costs: Stages::from_config adds no policy stage.
    let mut stages = Stages::from_config(&Config::default()).expect("default config");
    assert!(stages.is_empty());
    let mut kept = 0;
    let timer = Timer::start();
    for _ in 0..rounds {
        // Moved through the chain and back into the same allocation (in-place collect).
        exchanges = std::mem::take(&mut exchanges)
            .into_iter()
            .map(|ex| {
                kept += 1;
                black_box(stages.run(ex)).expect("kept")
            })
            .collect();
    }
    report("default config", n, kept, timer.stop());

    let mut empty = PolicyStage::new(&PolicyConfig::default()).unwrap();
    let (kept, elapsed) = time_stage(&mut empty, &mut exchanges, rounds);
    report("no rules", n, kept, elapsed);

    let shipped = Config::from_yaml(include_str!("../config/meshtap-policy.yaml"))
        .expect("config/meshtap-policy.yaml loads");
    assert_eq!(shipped.policy.rules.len(), 10);
    let rules_only = PolicyConfig {
        rules: shipped.policy.rules.clone(),
        rate_limits: RateLimitsConfig::default(),
    };
    let mut stage = PolicyStage::new(&rules_only).unwrap();
    let (kept, elapsed) = time_stage(&mut stage, &mut exchanges, rounds);
    report("10 rules", n, kept, elapsed);

    let unlimited = |per_second: f64| LimitConfig {
        exchanges_per_second: Some(per_second),
        bytes_per_second: Some(per_second * 1e6),
        ..LimitConfig::default()
    };
    let limits_only = PolicyConfig {
        rules: vec![],
        rate_limits: RateLimitsConfig {
            global: Some(unlimited(1e12)),
            per_pod: Some(PerPodLimitConfig {
                exchanges_per_second: Some(1e12),
                bytes_per_second: Some(1e18),
                ..PerPodLimitConfig::default()
            }),
        },
    };
    let mut stage = PolicyStage::new(&limits_only).unwrap();
    let (kept, elapsed) = time_stage(&mut stage, &mut exchanges, rounds);
    report("rate limits", n, kept, elapsed);

    let mut stage = PolicyStage::new(&shipped.policy).unwrap();
    let (kept, elapsed) = time_stage(&mut stage, &mut exchanges, rounds);
    report("10 rules + rate limits", n, kept, elapsed);
}
