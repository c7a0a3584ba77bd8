//! The latency buckets both planes count requests in (`EdgeStats.latency_buckets`): the
//! proxy puts each request in one ([`bucket_of`]), the control plane reads quantiles off the
//! sums ([`quantile_ms`]) for the service graph and for canary checks.

/// Upper bounds (ms) of the buckets; the last bucket is +Inf.
pub const LATENCY_BOUNDS_MS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Buckets per edge interval: one per bound plus +Inf.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The bucket a request of `ms` milliseconds is counted in.
pub fn bucket_of(ms: f64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The latency (ms) at quantile `q` (0-1) of bucketed counts, interpolating linearly inside
/// the bucket where the rank falls (the first bucket spans 0..1 ms). A rank in the +Inf
/// bucket answers the highest finite bound, as Prometheus' `histogram_quantile` does. No
/// requests: 0.
pub fn quantile_ms(buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if (below + count) as f64 >= rank {
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                return LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1];
            };
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1]
            };
            let into = (rank - below as f64) / count as f64;
            return lower + (upper - lower) * into;
        }
        below += count;
    }
    LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1]
}
