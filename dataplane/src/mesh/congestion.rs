//! Congestion control between proxies: which controller a connection runs, by the class of its
//! path, and the loss filter that keeps random loss from being read as congestion.
//!
//! quinn's controllers (Cubic, NewReno) treat every lost packet as congestion, as RFC 9002's
//! example does: at 50 ms RTT and 0.5% random loss that holds Cubic's window near 40 KB
//! (the Mathis bound, about 1 MB/s), whatever the link could carry. The kernel's TCP on these
//! machines runs BBR, which does not. [`MeshController`] wraps one of quinn's controllers and
//! passes a loss on only when it looks like congestion:
//!
//! - a queue is building: the smoothed RTT is above the path's minimum by a quarter, and by
//!   at least [`QUEUE_DELAY_FLOOR`]. A loss then is what a full buffer does, as for Cubic;
//! - or the loss rate is clearly above `loss_tolerance`: over the last two round trips, more
//!   packets were lost than the tolerance predicts by [`SIGNIFICANCE`] standard deviations
//!   (so a small window's sample, where three losses in forty packets happen by chance at 2%
//!   loss, does not spiral the window down), and at least [`MIN_LOST_PACKETS`] of them. A
//!   queue that overflows without delay first (a policer, a shallow buffer) loses bursts,
//!   which pass this at once;
//! - persistent congestion and ECN marks always pass.
//!
//! Sparse random loss is still detected and retransmitted (loss recovery is quinn's,
//! untouched); it just does not shrink the window. RFC 9002 §7 leaves the congestion response
//! to the sender, and BBRv2's loss threshold (2% per round) is the same idea.
//! docs/transport.md has the measurements behind the defaults.
//!
//! Pure logic over quinn-proto's `Controller` trait: quinn calls it with its own `now`; no
//! sockets, no clock of its own, so it is tested in memory below.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{
    BbrConfig, Controller, ControllerFactory, ControllerMetrics, CubicConfig, NewRenoConfig,
};
use quinn_proto::RttEstimator;
use serde::{Deserialize, Serialize};

/// Losses in the sample window below this count are never congestion on their own: one or two
/// drops say nothing about a queue (a queue overflowing drops a run of packets).
pub const MIN_LOST_PACKETS: u64 = 3;
/// How many standard deviations (Poisson: the square root of the expected count) above the
/// tolerated loss count a sample must be to count as congestion.
pub const SIGNIFICANCE: f64 = 3.0;
/// The least queueing delay (smoothed RTT over the minimum) that says a queue is building.
/// Below it, scheduling noise on a busy host moves the RTT as much.
pub const QUEUE_DELAY_FLOOR: Duration = Duration::from_millis(10);

/// The controller underneath the loss filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// RFC 9438 CUBIC (quinn's implementation).
    Cubic,
    /// RFC 9002's NewReno (quinn's implementation).
    Newreno,
    /// quinn's BBR (v1-style; quinn marks it experimental). Measured, not the default: see
    /// docs/transport.md.
    Bbr,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Cubic => "cubic",
            Algorithm::Newreno => "newreno",
            Algorithm::Bbr => "bbr",
        }
    }
}

/// How a connection's controller is built: the algorithm, its first window, and how much loss
/// it takes as random.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlSettings {
    pub algorithm: Algorithm,
    /// Initial congestion window, bytes.
    pub initial_window: u64,
    /// Share (0..1) of recently sent bytes that may be lost before a loss counts as
    /// congestion. 0: every loss is congestion (quinn's own behaviour).
    pub loss_tolerance: f64,
}

/// Builds a [`MeshController`] per connection (quinn's `TransportConfig` holds one factory).
#[derive(Debug)]
pub struct MeshControllerFactory {
    settings: ControlSettings,
}

impl MeshControllerFactory {
    pub fn new(settings: ControlSettings) -> Arc<Self> {
        Arc::new(Self { settings })
    }
}

impl ControllerFactory for MeshControllerFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let s = self.settings;
        let inner = match s.algorithm {
            Algorithm::Cubic => {
                let mut c = CubicConfig::default();
                c.initial_window(s.initial_window);
                Arc::new(c).build(now, current_mtu)
            }
            Algorithm::Newreno => {
                let mut c = NewRenoConfig::default();
                c.initial_window(s.initial_window);
                Arc::new(c).build(now, current_mtu)
            }
            Algorithm::Bbr => {
                let mut c = BbrConfig::default();
                c.initial_window(s.initial_window);
                Arc::new(c).build(now, current_mtu)
            }
        };
        Box::new(MeshController {
            inner,
            algorithm: s.algorithm,
            filter: LossFilter::new(s.loss_tolerance, current_mtu),
            counts: LossCounts::default(),
            min_rtt: None,
        })
    }
}

/// What the filter decided so far on one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LossCounts {
    /// Loss events passed to the controller as congestion.
    pub congestion_events: u64,
    /// Loss events taken as random: retransmitted, the window kept.
    pub tolerated_events: u64,
    /// Bytes lost in tolerated events.
    pub tolerated_bytes: u64,
}

/// quinn's controller with the loss filter in front of its congestion response.
pub struct MeshController {
    inner: Box<dyn Controller>,
    algorithm: Algorithm,
    filter: LossFilter,
    counts: LossCounts,
    /// quinn's minimum RTT at the last acknowledgement (`None` before the first).
    min_rtt: Option<Duration>,
}

impl MeshController {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn counts(&self) -> LossCounts {
        self.counts
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }
}

impl Controller for MeshController {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.filter.on_sent(now, bytes);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.filter.on_rtt(rtt.get(), rtt.min());
        self.min_rtt = Some(rtt.min());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if self
            .filter
            .is_congestion(now, lost_bytes, is_persistent_congestion)
        {
            self.counts.congestion_events += 1;
            self.inner
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        } else {
            self.counts.tolerated_events += 1;
            self.counts.tolerated_bytes += lost_bytes;
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.filter.mtu = u64::from(new_mtu).max(1);
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(MeshController {
            inner: self.inner.clone_box(),
            algorithm: self.algorithm,
            filter: self.filter.clone(),
            counts: self.counts,
            min_rtt: self.min_rtt,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Bytes sent and lost in one sample round.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    sent: u64,
    lost: u64,
}

/// Tells random loss from congestion by queueing delay and by how far the share of recent
/// bytes lost exceeds the tolerance. The sample is the current round plus the one before it
/// (a round is one smoothed RTT): losses are declared about a round trip after their packets
/// were sent.
#[derive(Debug, Clone)]
struct LossFilter {
    tolerance: f64,
    mtu: u64,
    /// Length of a round: the latest smoothed RTT (quinn's initial estimate until a sample).
    round: Duration,
    /// The path's minimum RTT (`None` until the first acknowledgement).
    min_rtt: Option<Duration>,
    started: Option<Instant>,
    current: Round,
    previous: Round,
}

impl LossFilter {
    fn new(tolerance: f64, mtu: u16) -> Self {
        Self {
            tolerance,
            mtu: u64::from(mtu).max(1),
            round: Duration::from_millis(333),
            min_rtt: None,
            started: None,
            current: Round::default(),
            previous: Round::default(),
        }
    }

    fn roll(&mut self, now: Instant) {
        match self.started {
            Some(t) if now.saturating_duration_since(t) < self.round => {}
            Some(t) if now.saturating_duration_since(t) < self.round * 2 => {
                self.previous = std::mem::take(&mut self.current);
                self.started = Some(now);
            }
            // The first packet, or a gap of two rounds or more: nothing recent to compare.
            _ => {
                self.previous = Round::default();
                self.current = Round::default();
                self.started = Some(now);
            }
        }
    }

    fn on_rtt(&mut self, smoothed: Duration, min: Duration) {
        self.round = smoothed;
        self.min_rtt = Some(min);
    }

    /// A queue is building on the path: the smoothed RTT stands above the minimum.
    fn queueing(&self) -> bool {
        self.min_rtt.is_some_and(|min| {
            let margin = (min / 4).max(QUEUE_DELAY_FLOOR);
            self.round > min + margin
        })
    }

    fn on_sent(&mut self, now: Instant, bytes: u64) {
        self.roll(now);
        self.current.sent += bytes;
    }

    /// Whether a loss of `lost_bytes` declared at `now` is congestion. ECN marks (reported
    /// with no lost bytes) and persistent congestion always are.
    fn is_congestion(&mut self, now: Instant, lost_bytes: u64, persistent: bool) -> bool {
        self.roll(now);
        self.current.lost += lost_bytes;
        if persistent || lost_bytes == 0 || self.tolerance <= 0.0 || self.queueing() {
            return true;
        }
        let lost_packets = (self.current.lost + self.previous.lost).div_ceil(self.mtu);
        let sent = self.current.sent + self.previous.sent;
        let sent_packets = (sent as f64 / self.mtu as f64).max(lost_packets as f64);
        let expected = self.tolerance * sent_packets;
        lost_packets >= MIN_LOST_PACKETS
            && lost_packets as f64 > expected + SIGNIFICANCE * expected.sqrt()
    }
}

#[cfg(test)]
mod tests;
