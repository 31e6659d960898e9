//! Fault campaigns: a seeded random source, the trial count, latency summaries.

use std::time::Duration;

use llama_shm::internals::stats::summarize;

/// A small deterministic PRNG (xorshift64*) so campaigns can print and replay their seed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `LST_SEED` if set, else from the clock; prints the seed.
    pub fn from_env(name: &str) -> Self {
        let seed = std::env::var("LST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{name}: LST_SEED={seed}");
        Self(seed.max(1))
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Trials for a campaign: `LST_TRIALS` if set (the long run), else `default`.
pub fn trials(default: usize) -> usize {
    std::env::var("LST_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Median and maximum of a sample (nearest rank: the benchmark's definition).
pub fn p50_max(samples: &mut [Duration]) -> (Duration, Duration) {
    let s = summarize(samples);
    (s.p50, s.max)
}

/// p50, p99 and max of a sample (nearest rank: the benchmark's definition).
pub fn p50_p99_max(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    let s = summarize(samples);
    (s.p50, s.p99, s.max)
}
