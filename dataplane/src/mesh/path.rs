//! One QUIC connection's path, read from quinn and the loss filter: what `/config` lists
//! ([`PathStatus`]) and what the per-side and per-peer path metrics sample
//! ([`watch_connection`], every 5 s and at close).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::telemetry::metrics::{Metrics, PathLabels, SideLabels};

/// One connection's path as the transport sees it now: what `/config` lists and what the
/// metrics sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathStatus {
    pub peer: String,
    pub address: String,
    pub side: &'static str,
    pub class: &'static str,
    pub congestion: &'static str,
    pub rtt_ms: f64,
    pub min_rtt_ms: f64,
    pub congestion_window_bytes: u64,
    pub pacing_rate_bytes_per_second: u64,
    pub mtu: u16,
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub lost_bytes: u64,
    pub congestion_events: u64,
    pub tolerated_losses: u64,
}

impl PathStatus {
    /// Read `conn`'s path now.
    pub fn of(conn: &quinn::Connection, labels: &PathLabels) -> Self {
        let stats = conn.stats().path;
        let controller = conn
            .congestion_state()
            .into_any()
            .downcast::<super::congestion::MeshController>()
            .ok();
        let (counts, min_rtt) = controller
            .map(|c| (c.counts(), c.min_rtt()))
            .unwrap_or_default();
        let rtt = stats.rtt.as_secs_f64();
        // quinn's pacer lets out 1.25 windows per smoothed RTT.
        let pacing = if rtt > 0.0 {
            (1.25 * stats.cwnd as f64 / rtt) as u64
        } else {
            0
        };
        Self {
            peer: labels.peer.clone(),
            address: conn.remote_address().to_string(),
            side: labels.side,
            class: labels.class,
            congestion: labels.congestion,
            rtt_ms: rtt * 1e3,
            min_rtt_ms: min_rtt.unwrap_or(stats.rtt).as_secs_f64() * 1e3,
            congestion_window_bytes: stats.cwnd,
            pacing_rate_bytes_per_second: pacing,
            mtu: stats.current_mtu,
            sent_packets: stats.sent_packets,
            lost_packets: stats.lost_packets,
            lost_bytes: stats.lost_bytes,
            congestion_events: counts.congestion_events,
            tolerated_losses: counts.tolerated_events,
        }
    }
}

/// Track one QUIC connection for its life: the open-connections gauges, RTT and window
/// samples, and lost and sent packet counts (as deltas, so counters stay monotonic), per side
/// and per peer.
pub async fn watch_connection(metrics: Arc<Metrics>, conn: quinn::Connection, path: PathLabels) {
    let side = SideLabels { side: path.side };
    metrics.quic_connections.get_or_create(&side).inc();
    metrics.path.opened(&path);
    let mut seen = PathCounts::default();
    let mut sample = || {
        let now = PathStatus::of(&conn, &path);
        let counts = PathCounts {
            lost: now.lost_packets,
            sent: now.sent_packets,
            lost_bytes: now.lost_bytes,
            congestion: now.congestion_events,
            tolerated: now.tolerated_losses,
        };
        let add_side = |family: &Family<SideLabels, Counter>, new: u64, old: u64| {
            family.get_or_create(&side).inc_by(new.saturating_sub(old));
        };
        let add_path = |family: &Family<PathLabels, Counter>, new: u64, old: u64| {
            family.get_or_create(&path).inc_by(new.saturating_sub(old));
        };
        add_side(&metrics.quic_lost_packets, counts.lost, seen.lost);
        add_side(&metrics.quic_sent_packets, counts.sent, seen.sent);
        add_side(&metrics.quic_lost_bytes, counts.lost_bytes, seen.lost_bytes);
        add_side(
            &metrics.quic_congestion_events,
            counts.congestion,
            seen.congestion,
        );
        let p = &metrics.path;
        add_path(&p.lost_packets, counts.lost, seen.lost);
        add_path(&p.sent_packets, counts.sent, seen.sent);
        add_path(&p.lost_bytes, counts.lost_bytes, seen.lost_bytes);
        add_path(&p.congestion_events, counts.congestion, seen.congestion);
        add_path(&p.tolerated_losses, counts.tolerated, seen.tolerated);
        seen = seen.max(counts);
        metrics
            .quic_rtt
            .get_or_create(&side)
            .observe(now.rtt_ms / 1e3);
        metrics
            .quic_cwnd
            .get_or_create(&side)
            .observe(now.congestion_window_bytes as f64);
        p.rtt.get_or_create(&path).set(now.rtt_ms / 1e3);
        p.min_rtt.get_or_create(&path).set(now.min_rtt_ms / 1e3);
        p.cwnd
            .get_or_create(&path)
            .set(now.congestion_window_bytes as i64);
        p.pacing_rate
            .get_or_create(&path)
            .set(now.pacing_rate_bytes_per_second as i64);
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = conn.closed() => break,
            _ = tick.tick() => sample(),
        }
    }
    sample();
    metrics.quic_connections.get_or_create(&side).dec();
    metrics.path.closed(&path);
}

/// A connection's path counters at the last sample.
#[derive(Default, Clone, Copy)]
struct PathCounts {
    lost: u64,
    sent: u64,
    lost_bytes: u64,
    congestion: u64,
    tolerated: u64,
}

impl PathCounts {
    fn max(self, o: Self) -> Self {
        Self {
            lost: self.lost.max(o.lost),
            sent: self.sent.max(o.sent),
            lost_bytes: self.lost_bytes.max(o.lost_bytes),
            congestion: self.congestion.max(o.congestion),
            tolerated: self.tolerated.max(o.tolerated),
        }
    }
}
