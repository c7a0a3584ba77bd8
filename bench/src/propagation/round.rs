//! One round's bookkeeping (which watcher holds the applied version, and when) and the
//! report: plain data, no I/O, so the rules (a watcher counts once, at the first snapshot at
//! or past the applied version; that snapshot must carry the applied weights) are tested here.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::Outcome;

/// Why a round cannot count.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoundError {
    #[error(
        "watcher {watcher}: snapshot version {version} (>= applied {applied}) carries v1 weight \
         {got}, not the applied {want}"
    )]
    WrongContent {
        watcher: usize,
        version: u64,
        applied: u64,
        got: u32,
        want: u32,
    },
    #[error("watcher {0} does not exist")]
    UnknownWatcher(usize),
}

/// Tracks one Apply until every watcher holds its version.
#[derive(Debug)]
pub struct RoundTracker {
    applied_version: u64,
    v1_weight: u32,
    sent_at: Instant,
    has_it: Vec<bool>,
    missing: usize,
    latencies: Outcome,
}

impl RoundTracker {
    /// `sent_at`: when the Apply was sent; `applied_version`: the resourceVersion it returned.
    pub fn new(watchers: usize, applied_version: u64, v1_weight: u32, sent_at: Instant) -> Self {
        Self {
            applied_version,
            v1_weight,
            sent_at,
            has_it: vec![false; watchers],
            missing: watchers,
            latencies: Outcome::default(),
        }
    }

    /// A watcher read a snapshot at `at`. Older versions (a previous round's) are ignored;
    /// the first at or past the applied version counts.
    pub fn observe(
        &mut self,
        watcher: usize,
        version: u64,
        v1_weight: u32,
        at: Instant,
    ) -> Result<(), RoundError> {
        let seen = self
            .has_it
            .get_mut(watcher)
            .ok_or(RoundError::UnknownWatcher(watcher))?;
        if version < self.applied_version || *seen {
            return Ok(());
        }
        if v1_weight != self.v1_weight {
            return Err(RoundError::WrongContent {
                watcher,
                version,
                applied: self.applied_version,
                got: v1_weight,
                want: self.v1_weight,
            });
        }
        *seen = true;
        self.missing -= 1;
        self.latencies
            .ok(at.saturating_duration_since(self.sent_at));
        Ok(())
    }

    /// Watchers that do not hold the applied version yet.
    pub fn missing(&self) -> usize {
        self.missing
    }

    /// The round's row, and its samples for the overall percentiles.
    pub fn finish(mut self, round: usize, apply: Duration) -> (RoundRow, Outcome) {
        self.latencies.sort();
        let row = RoundRow {
            round,
            v1_weight: self.v1_weight,
            resource_version: self.applied_version,
            apply_ms: ms(apply),
            latency: Latency::of(&self.latencies),
            control_plane_rss_mib: None,
        };
        (row, self.latencies)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Apply sent -> watcher read a snapshot holding it, over a set of watchers.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Latency {
    /// From sorted samples.
    pub fn of(sorted: &Outcome) -> Self {
        Self {
            samples: sorted.latencies_ns.len(),
            p50_ms: sorted.percentile_ms(0.5),
            p99_ms: sorted.percentile_ms(0.99),
            max_ms: sorted.percentile_ms(1.0),
        }
    }
}

/// One Apply.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    pub round: usize,
    /// The weight the Apply gave subset v1.
    pub v1_weight: u32,
    /// The resourceVersion the Apply returned; a watcher holds it once its snapshot's
    /// version is at least this.
    pub resource_version: u64,
    /// The Apply call's round trip.
    pub apply_ms: f64,
    #[serde(flatten)]
    pub latency: Latency,
    /// VmRSS after the round.
    pub control_plane_rss_mib: Option<f64>,
}

/// The control plane's memory, from `/proc/PID/status` of its process.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub pid: u32,
    /// VmRSS after set-up, before any watcher.
    pub rss_idle_mib: f64,
    /// VmRSS once every watcher holds its first snapshot.
    pub rss_watching_mib: f64,
    /// VmRSS after the last round.
    pub rss_after_mib: f64,
    /// VmHWM at the end.
    pub peak_rss_mib: f64,
}

/// Everything one run measured (`--json` prints it as one object).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub benchmark: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    pub watchers: usize,
    pub streams_per_connection: usize,
    pub endpoints: usize,
    /// Dialling every watcher and reading every first snapshot, seconds.
    pub connect_s: f64,
    pub rounds: Vec<RoundRow>,
    /// Over every watcher of every round.
    pub overall: Latency,
    pub control_plane: Memory,
    /// Where the control plane ran and how its memory was read.
    pub control_plane_process: String,
    pub cores: usize,
    /// 1-minute load average when the run started.
    pub load_average: String,
}

pub const ROUND_HEADER: &str =
    "round  v1 weight  version  Apply ms  samples   p50 ms   p99 ms   max ms  CP RSS MiB";

fn num(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

/// One table line per round.
pub fn round_line(r: &RoundRow) -> String {
    format!(
        "{:>5}  {:>9}  {:>7}  {:>8.1}  {:>7}  {:>7}  {:>7}  {:>7}  {:>10}",
        r.round,
        r.v1_weight,
        r.resource_version,
        r.apply_ms,
        r.latency.samples,
        num(r.latency.p50_ms, 1),
        num(r.latency.p99_ms, 1),
        num(r.latency.max_ms, 1),
        num(r.control_plane_rss_mib, 1),
    )
}

/// The closing lines of the table.
pub fn summary(r: &Report) -> String {
    let m = &r.control_plane;
    format!(
        "{:>5}  {:>9}  {:>7}  {:>8}  {:>7}  {:>7}  {:>7}  {:>7}\n\
         \n\
         Apply -> every watcher holds the new version ({} watchers x {} rounds): \
         p50 {} ms | p99 {} ms | max {} ms\n\
         watchers connected, each with its first snapshot, in {:.2} s\n\
         control-plane RSS: {:.1} MiB idle, {:.1} MiB with watchers, {:.1} MiB after the rounds, \
         peak {:.1} MiB ({})",
        "all",
        "",
        "",
        "",
        r.overall.samples,
        num(r.overall.p50_ms, 1),
        num(r.overall.p99_ms, 1),
        num(r.overall.max_ms, 1),
        r.watchers,
        r.rounds.len(),
        num(r.overall.p50_ms, 1),
        num(r.overall.p99_ms, 1),
        num(r.overall.max_ms, 1),
        r.connect_s,
        m.rss_idle_mib,
        m.rss_watching_mib,
        m.rss_after_mib,
        m.peak_rss_mib,
        r.control_plane_process,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_watcher_counts_once_at_the_first_snapshot_holding_the_version() {
        let t0 = Instant::now();
        let mut r = RoundTracker::new(3, 10, 80, t0);
        // A previous round's snapshot (older version, other weights) does not count.
        r.observe(0, 9, 20, after(t0, 1)).unwrap();
        assert_eq!(r.missing(), 3);
        r.observe(0, 10, 80, after(t0, 5)).unwrap();
        r.observe(0, 11, 80, after(t0, 50)).unwrap();
        r.observe(1, 12, 80, after(t0, 7)).unwrap();
        assert_eq!(r.missing(), 1);
        r.observe(2, 10, 80, after(t0, 30)).unwrap();
        assert_eq!(r.missing(), 0);
        let (row, samples) = r.finish(1, Duration::from_millis(3));
        assert_eq!(samples.latencies_ns.len(), 3);
        assert_eq!(row.latency.samples, 3);
        assert_eq!(row.latency.p50_ms, Some(7.0));
        assert_eq!(row.latency.max_ms, Some(30.0));
        assert_eq!(row.resource_version, 10);
        assert_eq!(row.apply_ms, 3.0);
    }

    #[test]
    fn a_new_version_without_the_applied_weights_is_an_error() {
        let t0 = Instant::now();
        let mut r = RoundTracker::new(2, 10, 80, t0);
        assert_eq!(
            r.observe(1, 10, 20, after(t0, 1)),
            Err(RoundError::WrongContent {
                watcher: 1,
                version: 10,
                applied: 10,
                got: 20,
                want: 80
            })
        );
        assert_eq!(
            r.observe(5, 10, 80, after(t0, 1)),
            Err(RoundError::UnknownWatcher(5))
        );
        assert_eq!(r.missing(), 2);
    }

    #[test]
    fn json_names_the_numbers() {
        let t0 = Instant::now();
        let mut r = RoundTracker::new(1, 4, 20, t0);
        r.observe(0, 4, 20, after(t0, 12)).unwrap();
        let (row, samples) = r.finish(2, Duration::from_millis(1));
        let report = Report {
            benchmark: "propagation",
            store: "sqlite",
            watchers: 1,
            streams_per_connection: 1,
            endpoints: 10,
            connect_s: 0.1,
            rounds: vec![row],
            overall: Latency::of(&samples),
            control_plane: Memory {
                pid: 1,
                rss_idle_mib: 1.0,
                rss_watching_mib: 2.0,
                rss_after_mib: 3.0,
                peak_rss_mib: 4.0,
            },
            control_plane_process: "child".into(),
            cores: 2,
            load_average: "0.5".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(v["rounds"][0]["p99_ms"], 12.0);
        assert_eq!(v["rounds"][0]["samples"], 1);
        assert_eq!(v["overall"]["max_ms"], 12.0);
        assert_eq!(v["control_plane"]["peak_rss_mib"], 4.0);
        assert!(summary(&report).contains("p99 12.0 ms"));
    }
}
