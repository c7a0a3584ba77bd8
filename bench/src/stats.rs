//! Latency samples and what one load run produced. Plain data, no I/O.

use std::time::Duration;

/// What one load generator worker (or a whole run, once merged) saw in the measured window.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Latency of every successful request, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Non-2xx answers, transport failures, wrong byte counts.
    pub errors: u64,
    /// The first few error texts, to print.
    pub error_samples: Vec<String>,
}

/// How many distinct error texts to keep per run.
const ERROR_SAMPLES: usize = 3;

impl Outcome {
    pub fn ok(&mut self, latency: Duration) {
        self.latencies_ns.push(latency.as_nanos() as u64);
    }

    pub fn error(&mut self, what: impl std::fmt::Display) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES {
            let s = what.to_string();
            if !self.error_samples.contains(&s) {
                self.error_samples.push(s);
            }
        }
    }

    pub fn merge(&mut self, other: Outcome) {
        self.latencies_ns.extend(other.latencies_ns);
        self.errors += other.errors;
        for s in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&s) {
                self.error_samples.push(s);
            }
        }
    }

    pub fn requests(&self) -> u64 {
        self.latencies_ns.len() as u64
    }

    /// Sort once, then read percentiles with [`Outcome::percentile_ms`].
    pub fn sort(&mut self) {
        self.latencies_ns.sort_unstable();
    }

    /// The `q`-quantile (0..=1) of the sorted latencies, in milliseconds (nearest rank).
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        let n = self.latencies_ns.len();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(self.latencies_ns[rank - 1] as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut o = Outcome::default();
        for ms in (1..=100).rev() {
            o.ok(Duration::from_millis(ms));
        }
        o.sort();
        assert_eq!(o.percentile_ms(0.5), Some(50.0));
        assert_eq!(o.percentile_ms(0.99), Some(99.0));
        assert_eq!(o.percentile_ms(1.0), Some(100.0));
        assert_eq!(o.percentile_ms(0.0), Some(1.0));
        assert_eq!(Outcome::default().percentile_ms(0.5), None);
    }

    #[test]
    fn merge_keeps_counts_and_distinct_error_texts() {
        let mut a = Outcome::default();
        a.error("refused");
        a.ok(Duration::from_micros(10));
        let mut b = Outcome::default();
        b.error("refused");
        b.error("status 503");
        b.ok(Duration::from_micros(20));
        a.merge(b);
        assert_eq!(a.errors, 3);
        assert_eq!(a.requests(), 2);
        assert_eq!(a.error_samples, vec!["refused", "status 503"]);
    }
}
