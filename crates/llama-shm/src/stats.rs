//! Latency summaries, one definition for the benchmark and the tests: nearest-rank
//! percentiles and a compact duration format.

use std::time::Duration;

/// Summary of a set of latency samples.
///
/// Percentiles use the nearest-rank method: the `p` percentile of `n` sorted samples is the
/// sample at 1-based rank `ceil(p/100 * n)`, so every reported value is an observed sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median (50th percentile).
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest sample.
    pub max: Duration,
    /// Arithmetic mean, truncated to whole nanoseconds.
    pub mean: Duration,
}

/// Sorts `samples` in place and summarizes them.
///
/// An empty slice gives a summary with `n == 0` and every duration zero.
pub fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let n = samples.len();
    let Some(&max) = samples.last() else {
        return Summary {
            n: 0,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            p999: Duration::ZERO,
            max: Duration::ZERO,
            mean: Duration::ZERO,
        };
    };
    let total: u128 = samples.iter().map(Duration::as_nanos).sum();
    // `n > 0` here; the mean of durations that each fit a `Duration` fits one too.
    let mean_nanos = total / n as u128;
    let mean = Duration::new(
        (mean_nanos / 1_000_000_000) as u64,
        (mean_nanos % 1_000_000_000) as u32,
    );
    Summary {
        n,
        p50: nearest_rank(samples, 500),
        p99: nearest_rank(samples, 990),
        p999: nearest_rank(samples, 999),
        max,
        mean,
    }
}

/// The nearest-rank percentile `per_mille / 10` of the sorted, non-empty `sorted`.
///
/// Integer arithmetic (per mille) so that e.g. 99.9 % of 1000 samples is exactly rank 999.
fn nearest_rank(sorted: &[Duration], per_mille: usize) -> Duration {
    let n = sorted.len();
    let rank = (per_mille * n).div_ceil(1000).clamp(1, n);
    sorted[rank - 1]
}

/// Formats a duration with three significant digits in µs, ms or s.
///
/// Examples: `"0.42 µs"`, `"12.3 µs"`, `"456 µs"`, `"1.25 ms"`, `"2.50 s"`. Durations below one
/// microsecond are still shown in µs (`"0.04 µs"`), the unit of interest for IPC latencies.
pub fn fmt_duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    let (value, unit) = if micros < 999.5 {
        (micros, "µs")
    } else if micros < 999_500.0 {
        (micros / 1e3, "ms")
    } else {
        (micros / 1e6, "s")
    };
    // Pick the decimals from the value as it will be rounded, so 9.996 prints "10.0", not "10.00".
    let decimals = if value < 9.995 {
        2
    } else if value < 99.95 {
        1
    } else {
        0
    };
    format!("{value:.decimals$} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    #[test]
    fn empty_is_all_zero() {
        let s = summarize(&mut []);
        assert_eq!(s.n, 0);
        assert_eq!(s.p50, Duration::ZERO);
        assert_eq!(s.max, Duration::ZERO);
        assert_eq!(s.mean, Duration::ZERO);
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let s = summarize(&mut [us(7)]);
        assert_eq!(
            (s.n, s.p50, s.p99, s.p999, s.max, s.mean),
            (1, us(7), us(7), us(7), us(7), us(7))
        );
    }

    #[test]
    fn ten_unsorted_samples() {
        // Sorted: 1..=10 µs. p50: ceil(0.5*10) = rank 5 -> 5 µs. p99: ceil(9.9) = rank 10 -> 10.
        // p99.9: ceil(9.99) = rank 10. Mean: 55/10 = 5.5 µs.
        let mut v: Vec<Duration> = [7, 3, 10, 1, 9, 2, 8, 5, 4, 6].into_iter().map(us).collect();
        let s = summarize(&mut v);
        assert_eq!(s.n, 10);
        assert_eq!(s.p50, us(5));
        assert_eq!(s.p99, us(10));
        assert_eq!(s.p999, us(10));
        assert_eq!(s.max, us(10));
        assert_eq!(s.mean, Duration::from_nanos(5_500));
        assert_eq!(v[0], us(1), "summarize sorts in place");
    }

    #[test]
    fn thousand_samples_hit_exact_ranks() {
        // Samples 1..=1000 ns in reverse order. p50: rank 500 -> 500 ns. p99: rank 990.
        // p99.9: 0.999 * 1000 = 999 exactly -> rank 999 (not 1000). Mean: 500.5 ns -> 500 ns.
        let mut v: Vec<Duration> = (1..=1000u64).rev().map(Duration::from_nanos).collect();
        let s = summarize(&mut v);
        assert_eq!(s.p50, Duration::from_nanos(500));
        assert_eq!(s.p99, Duration::from_nanos(990));
        assert_eq!(s.p999, Duration::from_nanos(999));
        assert_eq!(s.max, Duration::from_nanos(1000));
        assert_eq!(s.mean, Duration::from_nanos(500));
    }

    #[test]
    fn one_outlier_in_a_hundred() {
        // 99 samples of 2 µs and one of 1 ms. p99: rank ceil(99) = 99 -> 2 µs; p99.9: rank
        // ceil(99.9) = 100 -> 1 ms. Mean: (99*2 + 1000) / 100 = 11.98 µs.
        let mut v = vec![us(2); 99];
        v.push(us(1000));
        let s = summarize(&mut v);
        assert_eq!(s.p50, us(2));
        assert_eq!(s.p99, us(2));
        assert_eq!(s.p999, us(1000));
        assert_eq!(s.mean, Duration::from_nanos(11_980));
    }

    #[test]
    fn formats_three_significant_digits() {
        assert_eq!(fmt_duration(Duration::from_nanos(420)), "0.42 µs");
        assert_eq!(fmt_duration(Duration::from_nanos(12_345)), "12.3 µs");
        assert_eq!(fmt_duration(Duration::from_nanos(456_000)), "456 µs");
        assert_eq!(fmt_duration(Duration::from_nanos(9_996)), "10.0 µs");
        assert_eq!(fmt_duration(Duration::from_nanos(999_700)), "1.00 ms");
        assert_eq!(fmt_duration(Duration::from_micros(1_250)), "1.25 ms");
        assert_eq!(fmt_duration(Duration::from_millis(2_500)), "2.50 s");
        assert_eq!(fmt_duration(Duration::ZERO), "0.00 µs");
    }
}
