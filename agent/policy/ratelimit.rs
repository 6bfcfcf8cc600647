//! Volume control: token buckets for all exchanges (global) and for each pod, counting exchanges
//! and body bytes.
//!
//! Why not the `governor` crate: an exchange must pass the per-pod and the global limit, counted
//! in exchanges and in bytes, and a refusal by any of the four buckets must consume nothing from
//! the others (else a noisy pod's refused exchanges eat the global budget). governor's `check`
//! consumes as it admits, so four limiters cannot be checked together. Its `check_n` also refuses
//! outright a cost above the burst (`InsufficientCapacity`), where one 4 MiB body under a 1 MB/s
//! limit must pass and be paid back over time; and its keyed store grows without bound (only
//! `retain_recent`), where ours evicts idle pods at a fixed size. The stage runs on one thread,
//! so the bucket here is plain arithmetic on `f64`s with an injected clock (tests drive time).

use std::collections::HashMap;
use std::time::Instant;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::config::{LimitConfig, RateLimitsConfig};
use crate::record::Exchange;

/// Monotonic time in nanoseconds since some fixed point.
pub trait Clock: Send {
    fn now_nanos(&self) -> u64;
}

/// The real clock.
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// One token bucket. Tokens may go below zero: a cost larger than the burst passes when the
/// bucket is full, and the debt is paid back before anything else passes.
#[derive(Debug, Clone)]
struct Bucket {
    per_nano: f64,
    capacity: f64,
    tokens: f64,
    last: u64,
}

impl Bucket {
    fn new(per_second: f64, burst: f64, now: u64) -> Bucket {
        Bucket {
            per_nano: per_second / 1e9,
            capacity: burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: u64) {
        if now > self.last {
            let added = (now - self.last) as f64 * self.per_nano;
            self.tokens = (self.tokens + added).min(self.capacity);
            self.last = now;
        }
    }

    /// Whether `cost` may pass (after [`Bucket::refill`]).
    fn allows(&self, cost: f64) -> bool {
        self.tokens >= cost.min(self.capacity)
    }

    fn take(&mut self, cost: f64) {
        self.tokens -= cost;
    }

    fn is_full(&self) -> bool {
        self.tokens >= self.capacity
    }
}

/// The exchanges and bytes buckets of one limit.
#[derive(Debug, Clone)]
struct Buckets {
    exchanges: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Buckets {
    fn new(limit: &CompiledLimit, now: u64) -> Buckets {
        Buckets {
            exchanges: limit
                .exchanges
                .map(|(rate, burst)| Bucket::new(rate, burst, now)),
            bytes: limit
                .bytes
                .map(|(rate, burst)| Bucket::new(rate, burst, now)),
        }
    }

    fn refill(&mut self, now: u64) {
        self.exchanges.iter_mut().for_each(|b| b.refill(now));
        self.bytes.iter_mut().for_each(|b| b.refill(now));
    }

    fn allows(&self, bytes: f64) -> bool {
        self.exchanges.as_ref().is_none_or(|b| b.allows(1.0))
            && self.bytes.as_ref().is_none_or(|b| b.allows(bytes))
    }

    fn take(&mut self, bytes: f64) {
        self.exchanges.iter_mut().for_each(|b| b.take(1.0));
        self.bytes.iter_mut().for_each(|b| b.take(bytes));
    }

    fn is_full(&self) -> bool {
        self.exchanges.as_ref().is_none_or(Bucket::is_full)
            && self.bytes.as_ref().is_none_or(Bucket::is_full)
    }
}

/// A pod's buckets and when it last sent an exchange.
#[derive(Debug)]
struct Pod {
    buckets: Buckets,
    seen: u64,
}

/// A validated limit: `(per second, burst)` for exchanges and for bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CompiledLimit {
    exchanges: Option<(f64, f64)>,
    bytes: Option<(f64, f64)>,
}

impl CompiledLimit {
    fn compile(c: &LimitConfig, at: &str) -> Result<CompiledLimit, String> {
        let pair = |rate: Option<f64>, burst: Option<f64>, what: &str| -> Result<_, String> {
            let Some(rate) = rate else {
                if burst.is_some() {
                    return Err(format!(
                        "{at}.{what}_burst is set without {at}.{what}_per_second"
                    ));
                }
                return Ok(None);
            };
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!(
                    "{at}.{what}_per_second must be a number greater than 0, got {rate} \
                     (to deliver nothing, use a rule with `action: drop`)"
                ));
            }
            let burst = burst.unwrap_or(rate);
            if !(burst.is_finite() && burst >= 1.0) {
                return Err(format!("{at}.{what}_burst must be at least 1, got {burst}"));
            }
            Ok(Some((rate, burst)))
        };
        let limit = CompiledLimit {
            exchanges: pair(c.exchanges_per_second, c.exchanges_burst, "exchanges")?,
            bytes: pair(c.bytes_per_second, c.bytes_burst, "bytes")?,
        };
        if limit.exchanges.is_none() && limit.bytes.is_none() {
            return Err(format!(
                "{at}: give exchanges_per_second, bytes_per_second or both"
            ));
        }
        Ok(limit)
    }
}

/// The configured limits, with the per-pod buckets of the pods seen recently.
#[derive(Debug)]
pub struct RateLimiter {
    global: Option<Buckets>,
    per_pod: Option<CompiledLimit>,
    pods: HashMap<u64, Pod>,
    max_pods: usize,
}

impl RateLimiter {
    /// `None` when no limit is configured.
    pub fn compile(c: &RateLimitsConfig) -> Result<Option<RateLimiter>, String> {
        let global = c
            .global
            .as_ref()
            .map(|g| CompiledLimit::compile(g, "policy.rate_limits.global"))
            .transpose()?;
        let per_pod =
            c.per_pod
                .as_ref()
                .map(|p| {
                    if p.max_pods == 0 {
                        return Err("policy.rate_limits.per_pod.max_pods must be greater than 0"
                            .to_string());
                    }
                    CompiledLimit::compile(&p.limit(), "policy.rate_limits.per_pod")
                })
                .transpose()?;
        if global.is_none() && per_pod.is_none() {
            return Ok(None);
        }
        Ok(Some(RateLimiter {
            global: global.map(|g| Buckets::new(&g, 0)),
            per_pod,
            pods: HashMap::new(),
            max_pods: c.per_pod.as_ref().map_or(0, |p| p.max_pods),
        }))
    }

    /// Whether an exchange of pod `pod` (see [`pod_key`]) with `bytes` body bytes passes at time
    /// `now`; if it does, it is counted against every limit.
    pub fn admit(&mut self, pod: u64, bytes: u64, now: u64) -> bool {
        let bytes = bytes as f64;
        if let Some(global) = &mut self.global {
            global.refill(now);
            if !global.allows(bytes) {
                return false;
            }
        }
        if let Some(limit) = &self.per_pod {
            if !self.pods.contains_key(&pod) && self.pods.len() >= self.max_pods {
                evict(&mut self.pods, self.max_pods, now);
            }
            let pod = self.pods.entry(pod).or_insert_with(|| Pod {
                buckets: Buckets::new(limit, now),
                seen: now,
            });
            pod.seen = now;
            pod.buckets.refill(now);
            if !pod.buckets.allows(bytes) {
                return false;
            }
            pod.buckets.take(bytes);
        }
        if let Some(global) = &mut self.global {
            global.take(bytes);
        }
        true
    }

    /// Pods tracked now.
    pub fn pods(&self) -> usize {
        self.pods.len()
    }
}

/// Makes room for one more pod: forgets every idle pod (buckets full again: forgetting it changes
/// nothing), and if none is idle, the least recently seen one.
fn evict(pods: &mut HashMap<u64, Pod>, max: usize, now: u64) {
    pods.retain(|_, p| {
        p.buckets.refill(now);
        !p.buckets.is_full()
    });
    if pods.len() >= max {
        if let Some(oldest) = pods.iter().min_by_key(|(_, p)| p.seen).map(|(k, _)| *k) {
            pods.remove(&oldest);
        }
    }
}

/// The per-pod key of an exchange: its namespace and pod, or its log file when it has no pod
/// identity. Hashed, so looking it up allocates nothing (64-bit collisions are negligible).
#[inline]
pub fn pod_key(ex: &Exchange) -> u64 {
    match &ex.k8s {
        Some(k) => xxh3_64_with_seed(k.pod.as_bytes(), xxh3_64(k.namespace.as_bytes())),
        None => xxh3_64(ex.log.file.as_bytes()),
    }
}

/// Body bytes the record carries (what a bytes limit counts).
#[inline]
pub fn body_bytes(ex: &Exchange) -> u64 {
    let len = |d: &Option<crate::record::Direction>| d.as_ref().map_or(0, |d| d.body.len() as u64);
    len(&ex.request) + len(&ex.response)
}

#[cfg(test)]
mod tests {
    use super::super::config::PerPodLimitConfig;
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limiter(global: Option<LimitConfig>, per_pod: Option<PerPodLimitConfig>) -> RateLimiter {
        RateLimiter::compile(&RateLimitsConfig { global, per_pod })
            .unwrap()
            .unwrap()
    }

    fn exchanges(per_second: f64, burst: Option<f64>) -> LimitConfig {
        LimitConfig {
            exchanges_per_second: Some(per_second),
            exchanges_burst: burst,
            ..LimitConfig::default()
        }
    }

    /// How many of `n` exchanges (pod `pod`, `bytes` each) pass at time `now`.
    fn passed(l: &mut RateLimiter, n: usize, pod: u64, bytes: u64, now: u64) -> usize {
        (0..n).filter(|_| l.admit(pod, bytes, now)).count()
    }

    #[test]
    fn exchanges_per_second_with_burst_and_refill() {
        let mut l = limiter(Some(exchanges(10.0, Some(5.0))), None);
        assert_eq!(passed(&mut l, 100, 1, 0, 0), 5, "the burst passes at once");
        assert_eq!(passed(&mut l, 100, 1, 0, SEC / 10), 1, "0.1 s refills one");
        assert_eq!(
            passed(&mut l, 100, 1, 0, SEC / 10 + SEC),
            5,
            "refill stops at the burst"
        );
        // Sustained: over 10 s at 10/s, at most 10 per second pass (plus the burst once).
        let mut total = 0;
        for ms in (0..10_000).step_by(10) {
            total += passed(&mut l, 3, 1, 0, 2 * SEC + ms * 1_000_000);
        }
        assert!((100..=105).contains(&total), "{total}");
    }

    #[test]
    fn bytes_per_second_lets_one_big_body_through_then_repays_it() {
        let mut l = limiter(
            Some(LimitConfig {
                bytes_per_second: Some(1000.0),
                ..LimitConfig::default()
            }),
            None,
        );
        assert!(
            l.admit(1, 5000, 0),
            "a full bucket lets a body above the burst pass"
        );
        assert!(
            !l.admit(1, 1, SEC),
            "4000 bytes of debt: 1 s pays back only 1000"
        );
        assert!(!l.admit(1, 1, 4 * SEC));
        assert!(
            l.admit(1, 600, 5 * SEC + SEC / 2),
            "debt repaid, the bucket full again..."
        );
        assert!(
            !l.admit(1, 600, 5 * SEC + SEC / 2),
            "...with 400 left, not 600"
        );
    }

    #[test]
    fn per_pod_limits_are_separate_and_a_refusal_costs_the_global_nothing() {
        let mut l = limiter(
            Some(exchanges(100.0, Some(10.0))),
            Some(PerPodLimitConfig {
                exchanges_per_second: Some(1.0),
                exchanges_burst: Some(3.0),
                ..PerPodLimitConfig::default()
            }),
        );
        assert_eq!(
            passed(&mut l, 50, 1, 0, 0),
            3,
            "noisy pod capped at its burst"
        );
        assert_eq!(passed(&mut l, 50, 2, 0, 0), 3, "another pod has its own");
        // The global bucket (10) paid only for the 6 that passed.
        assert_eq!(passed(&mut l, 3, 3, 0, 0), 3);
        assert_eq!(passed(&mut l, 3, 4, 0, 0), 1, "global burst of 10 reached");
        assert_eq!(l.pods(), 4);
    }

    #[test]
    fn idle_pods_are_forgotten_and_the_map_stays_bounded() {
        let mut l = limiter(
            None,
            Some(PerPodLimitConfig {
                exchanges_per_second: Some(1.0),
                exchanges_burst: Some(2.0),
                max_pods: 3,
                ..PerPodLimitConfig::default()
            }),
        );
        for pod in 0..3 {
            assert_eq!(passed(&mut l, 5, pod, 0, 0), 2);
        }
        // At 10 s every bucket is full again: a fourth pod evicts the idle ones.
        assert_eq!(passed(&mut l, 5, 3, 0, 10 * SEC), 2);
        assert_eq!(l.pods(), 1);
        // None idle: the least recently seen goes, the map never exceeds max_pods.
        for pod in 10..20 {
            assert_eq!(passed(&mut l, 5, pod, 0, 10 * SEC + pod), 2);
            assert!(l.pods() <= 3);
        }
        // Pod 19 is still tracked (its bucket empty); pod 10 was evicted (fresh again).
        assert_eq!(passed(&mut l, 5, 19, 0, 10 * SEC + 20), 0);
        assert_eq!(passed(&mut l, 5, 10, 0, 10 * SEC + 21), 2);
    }

    #[test]
    fn bad_limits_are_clear_errors() {
        let err = |g: LimitConfig| {
            RateLimiter::compile(&RateLimitsConfig {
                global: Some(g),
                per_pod: None,
            })
            .unwrap_err()
        };
        let e = err(exchanges(0.0, None));
        assert!(
            e.contains(
                "policy.rate_limits.global.exchanges_per_second must be a number greater than 0"
            ),
            "{e}"
        );
        let e = err(LimitConfig {
            bytes_per_second: Some(-5.0),
            ..LimitConfig::default()
        });
        assert!(e.contains("bytes_per_second"), "{e}");
        let e = err(exchanges(10.0, Some(0.5)));
        assert!(e.contains("exchanges_burst must be at least 1"), "{e}");
        let e = err(LimitConfig::default());
        assert!(
            e.contains("give exchanges_per_second, bytes_per_second or both"),
            "{e}"
        );
        let e = err(LimitConfig {
            bytes_burst: Some(10.0),
            ..LimitConfig::default()
        });
        assert!(e.contains("bytes_burst is set without"), "{e}");
        let e = RateLimiter::compile(&RateLimitsConfig {
            global: None,
            per_pod: Some(PerPodLimitConfig {
                exchanges_per_second: Some(1.0),
                max_pods: 0,
                ..PerPodLimitConfig::default()
            }),
        })
        .unwrap_err();
        assert!(e.contains("max_pods must be greater than 0"), "{e}");
        assert!(RateLimiter::compile(&RateLimitsConfig::default())
            .unwrap()
            .is_none());
    }
}
