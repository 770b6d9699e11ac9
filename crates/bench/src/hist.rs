//! A fixed-size log-linear histogram of nanosecond values: recording is a few integer
//! operations and never allocates, so it can run in a polling loop; percentiles are
//! exact to within one bucket, 1/128 (0.8 %) of the value.

use latency_stages::LogLinear;

/// 2^7 buckets per power of two (the relative precision, 0.8 %); values up to 2^40 ns
/// (about 18 minutes) are kept apart, larger ones share the last bucket.
const BUCKETING: LogLinear = LogLinear::new(7, 40);
const BUCKETS: usize = BUCKETING.buckets();

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram { counts: Box::new([0; BUCKETS]), total: 0, sum: 0, min: u64::MAX, max: 0 }
    }

    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[BUCKETING.index(v)] += 1;
        self.total += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn min(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<u64> {
        (self.total > 0).then(|| (self.sum / self.total as u128) as u64)
    }

    /// The value below which a fraction `q` (0..=1) of the recorded values lie: the
    /// middle of the bucket holding the ceil(q * n)-th smallest value, clamped to the
    /// exact min and max.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = BUCKETING.bounds(i);
                return Some((low + width / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_uniform_sample() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=10_000u64 {
            h.record(v * 100); // 100 ns .. 1 ms
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!((h.min(), h.max()), (Some(100), Some(1_000_000)));
        assert_eq!(h.mean(), Some(500_050));
        for (q, exact) in [(0.5, 500_000.0), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!((got - exact).abs() / exact < 0.01, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert_eq!(h.quantile(0.0), Some(100));
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in [3, 3, 5, 90] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), Some(3));
        assert_eq!(h.quantile(0.75), Some(5));
        assert_eq!(h.quantile(0.999), Some(90));
    }
}
