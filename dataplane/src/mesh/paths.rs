//! Transport settings per path class: `tuning.paths.{loopback,zone,region}`.
//!
//! A connection's class is known before its first packet (see [`PathClass::of`]), and picks
//! its congestion controller, initial window, loss tolerance and flow-control windows. Each
//! class has its own defaults; a file overrides any field of any class and keeps the class's
//! defaults for the rest. The measurements behind the defaults are in docs/transport.md.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::mesh::congestion::{Algorithm, ControlSettings};
use quiver_api::validate::FieldError;

/// Where a peer is, as far as the transport cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathClass {
    /// The peer is on this host (a loopback address).
    Loopback,
    /// The peer is in this proxy's zone (both zones known and equal).
    Zone,
    /// Anything else: another zone, another region or cloud, or a peer whose zone is unknown.
    Region,
}

impl PathClass {
    pub const ALL: [PathClass; 3] = [PathClass::Loopback, PathClass::Zone, PathClass::Region];

    pub fn name(self) -> &'static str {
        match self {
            PathClass::Loopback => "loopback",
            PathClass::Zone => "zone",
            PathClass::Region => "region",
        }
    }

    /// The class of a path to `peer`, whose zone is `peer_zone` ("" or `None`: unknown), from
    /// a proxy in `own_zone`. Unknown is `Region`: the settings that hold up on a long, lossy
    /// path also work on a short one, not the other way round.
    pub fn of(peer: IpAddr, peer_zone: Option<&str>, own_zone: &str) -> Self {
        let peer = match peer {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        if peer.is_loopback() {
            PathClass::Loopback
        } else if !own_zone.is_empty() && peer_zone == Some(own_zone) {
            PathClass::Zone
        } else {
            PathClass::Region
        }
    }

    /// The class of `addr`'s path.
    pub fn of_addr(addr: SocketAddr, peer_zone: Option<&str>, own_zone: &str) -> Self {
        Self::of(addr.ip(), peer_zone, own_zone)
    }
}

/// One class's settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathTuning {
    /// The congestion controller under the loss filter.
    pub congestion: Algorithm,
    /// Loss up to this share (percent) of the bytes sent over the last two round trips is
    /// taken as random: retransmitted without shrinking the window. 0 reacts to every loss.
    pub loss_tolerance_percent: f64,
    /// Initial congestion window, in 1200-byte packets.
    pub initial_window_packets: u32,
    /// Per-stream QUIC receive window, bytes: caps one stream at window / RTT.
    pub stream_receive_window: u32,
    /// Per-connection QUIC receive window, bytes.
    pub connection_receive_window: u32,
    /// QUIC send window, bytes: unacknowledged data buffered per connection.
    pub send_window: u64,
    /// Ack-eliciting packets the peer may receive before it must acknowledge (the QUIC ACK
    /// frequency extension; 1 is the RFC 9000 default of one ACK per two packets, and sends
    /// no ACK_FREQUENCY frame). Fewer ACKs cost both proxies less CPU per byte.
    pub ack_eliciting_threshold: u32,
}

impl PathTuning {
    pub fn control(&self) -> ControlSettings {
        ControlSettings {
            algorithm: self.congestion,
            initial_window: u64::from(self.initial_window_packets) * 1200,
            loss_tolerance: self.loss_tolerance_percent / 100.0,
        }
    }

    /// Defaults per class. The windows are sized from the bandwidth-delay product each class
    /// should carry on one stream: loopback and zone paths 8 MiB per stream (about 670 MB/s
    /// at 12 ms RTT), region paths 24 MiB (1 Gbit/s at 200 ms). Memory is spent only on
    /// data the app has not read yet, never up front.
    pub fn default_for(class: PathClass) -> Self {
        match class {
            PathClass::Loopback => PathTuning {
                congestion: Algorithm::Cubic,
                loss_tolerance_percent: 0.0,
                initial_window_packets: 10,
                stream_receive_window: 8 << 20,
                connection_receive_window: 32 << 20,
                send_window: 32 << 20,
                ack_eliciting_threshold: 1,
            },
            PathClass::Zone => PathTuning {
                congestion: Algorithm::Cubic,
                loss_tolerance_percent: 5.0,
                initial_window_packets: 32,
                stream_receive_window: 8 << 20,
                connection_receive_window: 32 << 20,
                send_window: 32 << 20,
                ack_eliciting_threshold: 1,
            },
            PathClass::Region => PathTuning {
                congestion: Algorithm::Cubic,
                loss_tolerance_percent: 5.0,
                initial_window_packets: 32,
                stream_receive_window: 24 << 20,
                connection_receive_window: 96 << 20,
                send_window: 96 << 20,
                ack_eliciting_threshold: 1,
            },
        }
    }
}

/// `tuning.paths`: every class's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "PathClassesFile")]
pub struct PathClasses {
    pub loopback: PathTuning,
    pub zone: PathTuning,
    pub region: PathTuning,
}

impl Default for PathClasses {
    fn default() -> Self {
        Self {
            loopback: PathTuning::default_for(PathClass::Loopback),
            zone: PathTuning::default_for(PathClass::Zone),
            region: PathTuning::default_for(PathClass::Region),
        }
    }
}

impl PathClasses {
    pub fn get(&self, class: PathClass) -> &PathTuning {
        match class {
            PathClass::Loopback => &self.loopback,
            PathClass::Zone => &self.zone,
            PathClass::Region => &self.region,
        }
    }

    /// Every out-of-range field, named `tuning.paths.<class>.<field>`.
    pub fn validate(&self, errs: &mut Vec<FieldError>) {
        for class in PathClass::ALL {
            let t = self.get(class);
            let mut err = |field: &str, reason: String| {
                errs.push(FieldError {
                    path: format!("tuning.paths.{}.{field}", class.name()),
                    reason,
                });
            };
            if !(0.0..=50.0).contains(&t.loss_tolerance_percent) {
                err(
                    "loss_tolerance_percent",
                    format!("must be between 0 and 50, not {}", t.loss_tolerance_percent),
                );
            }
            if !(2..=10_000).contains(&t.initial_window_packets) {
                err(
                    "initial_window_packets",
                    format!(
                        "must be between 2 and 10000, not {}",
                        t.initial_window_packets
                    ),
                );
            }
            if t.stream_receive_window < 16 * 1024 {
                err("stream_receive_window", "must be at least 16384".into());
            }
            if t.connection_receive_window < t.stream_receive_window {
                err(
                    "connection_receive_window",
                    "must be at least stream_receive_window".into(),
                );
            }
            if t.send_window < 16 * 1024 {
                err("send_window", "must be at least 16384".into());
            }
            if t.ack_eliciting_threshold > 100 {
                err(
                    "ack_eliciting_threshold",
                    format!("must be at most 100, not {}", t.ack_eliciting_threshold),
                );
            }
        }
    }
}

/// The file's shape: every field of every class optional, defaulting per class.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PathClassesFile {
    loopback: PathTuningFile,
    zone: PathTuningFile,
    region: PathTuningFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PathTuningFile {
    congestion: Option<Algorithm>,
    loss_tolerance_percent: Option<f64>,
    initial_window_packets: Option<u32>,
    stream_receive_window: Option<u32>,
    connection_receive_window: Option<u32>,
    send_window: Option<u64>,
    ack_eliciting_threshold: Option<u32>,
}

impl PathTuningFile {
    fn over(self, class: PathClass) -> PathTuning {
        let d = PathTuning::default_for(class);
        PathTuning {
            congestion: self.congestion.unwrap_or(d.congestion),
            loss_tolerance_percent: self
                .loss_tolerance_percent
                .unwrap_or(d.loss_tolerance_percent),
            initial_window_packets: self
                .initial_window_packets
                .unwrap_or(d.initial_window_packets),
            stream_receive_window: self
                .stream_receive_window
                .unwrap_or(d.stream_receive_window),
            connection_receive_window: self
                .connection_receive_window
                .unwrap_or(d.connection_receive_window),
            send_window: self.send_window.unwrap_or(d.send_window),
            ack_eliciting_threshold: self
                .ack_eliciting_threshold
                .unwrap_or(d.ack_eliciting_threshold),
        }
    }
}

impl From<PathClassesFile> for PathClasses {
    fn from(f: PathClassesFile) -> Self {
        Self {
            loopback: f.loopback.over(PathClass::Loopback),
            zone: f.zone.over(PathClass::Zone),
            region: f.region.over(PathClass::Region),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_address_and_zone() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let far: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(PathClass::of(lo, None, ""), PathClass::Loopback);
        assert_eq!(PathClass::of(mapped, None, "z1"), PathClass::Loopback);
        assert_eq!(PathClass::of(far, Some("z1"), "z1"), PathClass::Zone);
        assert_eq!(PathClass::of(far, Some("z2"), "z1"), PathClass::Region);
        assert_eq!(PathClass::of(far, None, "z1"), PathClass::Region);
        // Both zones unknown is not "the same zone".
        assert_eq!(PathClass::of(far, Some(""), ""), PathClass::Region);
    }

    #[test]
    fn a_partial_class_keeps_that_class_defaults() {
        let p: PathClasses =
            serde_yaml::from_str("region: {congestion: bbr}\nzone: {loss_tolerance_percent: 1}")
                .unwrap();
        assert_eq!(p.region.congestion, Algorithm::Bbr);
        assert_eq!(
            p.region.stream_receive_window,
            PathTuning::default_for(PathClass::Region).stream_receive_window
        );
        assert_eq!(p.zone.loss_tolerance_percent, 1.0);
        assert_eq!(p.zone.congestion, Algorithm::Cubic);
        assert_eq!(p.loopback, PathTuning::default_for(PathClass::Loopback));
    }

    #[test]
    fn unknown_keys_and_algorithms_are_refused() {
        let e = serde_yaml::from_str::<PathClasses>("region: {congestion: vegas}").unwrap_err();
        assert!(e.to_string().contains("vegas"), "{e}");
        let e = serde_yaml::from_str::<PathClasses>("region: {cwnd: 1}").unwrap_err();
        assert!(e.to_string().contains("cwnd"), "{e}");
        let e = serde_yaml::from_str::<PathClasses>("planet: {}").unwrap_err();
        assert!(e.to_string().contains("planet"), "{e}");
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let mut p = PathClasses::default();
        p.region.loss_tolerance_percent = 80.0;
        p.zone.initial_window_packets = 1;
        p.loopback.connection_receive_window = 1024 * 1024;
        p.loopback.stream_receive_window = 2 * 1024 * 1024;
        let mut errs = Vec::new();
        p.validate(&mut errs);
        let fields: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            fields,
            [
                "tuning.paths.loopback.connection_receive_window",
                "tuning.paths.zone.initial_window_packets",
                "tuning.paths.region.loss_tolerance_percent",
            ]
        );
        let mut errs = Vec::new();
        PathClasses::default().validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }
}
