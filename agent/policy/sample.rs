//! Deterministic sampling: whether an exchange is kept depends only on its id and the rate, so a
//! replay of the same log, or the agent after a restart, keeps exactly the same exchanges.
//!
//! The id is hashed with xxh3 (64 bits, well mixed even for ids that differ in one digit) and the
//! hash, read as a fraction of 2^64, is compared with the rate.

use xxhash_rust::xxh3::xxh3_64;

/// Keeps a fraction `rate` of exchanges, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    /// Kept when `hash < threshold`; `None` keeps everything (rate 1).
    threshold: Option<u64>,
}

impl Sampler {
    /// `rate` in `[0, 1]` (checked by the caller).
    pub fn new(rate: f64) -> Sampler {
        if rate >= 1.0 {
            return Sampler { threshold: None };
        }
        // 2^64 as f64 is exact; the product is below 2^64, and `as` saturates anyway.
        let threshold = (rate.max(0.0) * 18_446_744_073_709_551_616.0) as u64;
        Sampler {
            threshold: Some(threshold),
        }
    }

    /// Whether the exchange with this id is kept.
    #[inline]
    pub fn keeps(&self, id: &str) -> bool {
        match self.threshold {
            None => true,
            Some(t) => xxh3_64(id.as_bytes()) < t,
        }
    }
}

/// The id's position in `[0, 1)`: kept by every rate above it.
pub fn position(id: &str) -> f64 {
    (xxh3_64(id.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> impl Iterator<Item = String> {
        // Shaped like real ids (fingerprint-offset), differing only in the offset.
        (0..n).map(|i| format!("9f2c41d07a3e55b1-{}", i * 317))
    }

    #[test]
    fn same_id_same_decision() {
        let s = Sampler::new(0.3);
        for id in ids(1000) {
            let first = s.keeps(&id);
            assert_eq!(Sampler::new(0.3).keeps(&id), first, "{id}");
            assert_eq!(s.keeps(&id.clone()), first, "{id}");
        }
    }

    #[test]
    fn observed_rate_is_the_configured_rate() {
        const N: usize = 100_000;
        for rate in [0.01, 0.1, 0.25, 0.5, 0.9] {
            let s = Sampler::new(rate);
            let kept = ids(N).filter(|id| s.keeps(id)).count();
            let observed = kept as f64 / N as f64;
            // Binomial standard deviation at most 0.0016 for N = 100k: 4 sigma is 0.0064.
            let tolerance = 4.0 * (rate * (1.0 - rate) / N as f64).sqrt();
            assert!(
                (observed - rate).abs() <= tolerance,
                "rate {rate}: observed {observed} (tolerance {tolerance})"
            );
        }
    }

    #[test]
    fn edges_keep_all_or_nothing_and_rates_nest() {
        let all = Sampler::new(1.0);
        let none = Sampler::new(0.0);
        let (low, high) = (Sampler::new(0.2), Sampler::new(0.6));
        for id in ids(10_000) {
            assert!(all.keeps(&id));
            assert!(!none.keeps(&id));
            // What a lower rate keeps, a higher rate keeps too.
            if low.keeps(&id) {
                assert!(high.keeps(&id), "{id}");
            }
            assert_eq!(high.keeps(&id), position(&id) < 0.6, "{id}");
        }
    }
}
