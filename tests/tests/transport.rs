//! The transport on a lossy path: two real proxies with a relay between them that drops a
//! share of the real QUIC packets each way. Bytes must arrive intact; the loss filter must
//! tolerate random loss only where the path class allows it; the path must show in `/config`
//! and `/metrics`, and its gauges must go when the connection closes.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use quiver_tests::apps::pattern_byte;
use quiver_tests::client::send_h1;
use quiver_tests::harness::{Apps, RunningProxy, client_yaml, server_yaml};
use quiver_tests::lossy::LossyRelay;
use quiver_tests::mesh::admin_get;
use quiver_tests::metric_sum;
use quiver_tests::pki::{Pki, temp_dir};
use rand::{Rng, SeedableRng};

/// A → relay (dropping `loss` each way) → B, both proxies with `tuning` appended.
struct LossyPair {
    pki: Pki,
    relay: LossyRelay,
    a: RunningProxy,
    b: RunningProxy,
}

impl LossyPair {
    async fn start(loss: f64, tuning: &str) -> Self {
        let pki = Pki::new();
        let apps = Apps::start().await;
        let dir = temp_dir("lossy");
        let b = RunningProxy::start(
            &format!("{}{tuning}", server_yaml(&pki.issue("b"), &apps, "5s")),
            &dir,
        )
        .await
        .expect("start B");
        let relay = LossyRelay::start(b.bound.quic, loss, 7).await;
        let a = RunningProxy::start(
            &format!(
                "{}{tuning}",
                client_yaml(&pki.issue("a"), relay.addr, pki.id("b").as_str())
            ),
            &dir,
        )
        .await
        .expect("start A");
        Self { pki, relay, a, b }
    }

    /// POST `body` to the echo app through A and B; the echoed bytes.
    async fn echo(&self, body: Vec<u8>) -> Bytes {
        let req = Request::post("/echo")
            .header("host", "echo")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let (head, got) = tokio::time::timeout(
            Duration::from_secs(60),
            send_h1(self.a.bound.outbound[0], req),
        )
        .await
        .expect("a request across the lossy path finishes");
        assert_eq!(head.status(), 200, "{}", String::from_utf8_lossy(&got));
        got
    }

    /// Echo `n` random bodies of `size` bytes, 4 at a time, and a download of `download`
    /// bytes; every byte checked.
    async fn traffic(&self, n: usize, size: usize, download: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..n / 4 {
            let bodies: Vec<Vec<u8>> = (0..4)
                .map(|_| (0..size).map(|_| rng.random()).collect())
                .collect();
            let sent = bodies.clone();
            let got =
                futures_util::future::join_all(bodies.into_iter().map(|b| self.echo(b))).await;
            for (s, g) in sent.iter().zip(got) {
                assert!(g.as_ref() == s.as_slice(), "echoed body differs");
            }
        }
        let req = Request::get(format!("/download/{download}"))
            .header("host", "echo")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (head, got) = tokio::time::timeout(
            Duration::from_secs(60),
            send_h1(self.a.bound.outbound[0], req),
        )
        .await
        .expect("the download across the lossy path finishes");
        assert_eq!(head.status(), 200);
        assert_eq!(got.len() as u64, download, "download length");
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, b)| *b == pattern_byte(i as u64)),
            "download bytes differ"
        );
    }

    /// B's live view of its connection from A, out of `/config`.
    async fn b_connection(&self) -> serde_json::Value {
        let (status, text) = admin_get(self.b.bound.admin, "/config")
            .await
            .expect("B /config");
        assert_eq!(status, 200);
        let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
        let conns = doc["connections"].as_array().expect("connections").clone();
        let a = self.pki.id("a").to_string();
        let mine: Vec<_> = conns.into_iter().filter(|c| c["peer"] == a).collect();
        assert_eq!(mine.len(), 1, "B holds one connection from A: {text}");
        mine[0].clone()
    }
}

fn count(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_loss_within_the_tolerance_is_retransmitted_without_shrinking_the_window() {
    let pair = LossyPair::start(
        0.03,
        "tuning:\n  paths:\n    loopback: {loss_tolerance_percent: 10}\n",
    )
    .await;
    pair.traffic(24, 64 * 1024, 4 * 1024 * 1024).await;
    assert!(pair.relay.dropped() > 20, "the relay dropped packets");

    let c = pair.b_connection().await;
    assert_eq!(c["class"], "loopback", "{c}");
    assert_eq!(c["side"], "server", "{c}");
    assert_eq!(c["congestion"], "cubic", "{c}");
    assert!(count(&c, "lost_packets") > 0, "B saw losses: {c}");
    assert!(
        count(&c, "tolerated_losses") > 0,
        "some random loss was tolerated: {c}"
    );
    assert!(
        count(&c, "congestion_events") < count(&c, "lost_packets"),
        "not every loss shrank the window: {c}"
    );
    assert!(c["rtt_ms"].as_f64().is_some_and(|r| r > 0.0), "{c}");

    // The connection closes with A; B's gauges for A go, its counters stay.
    let a_id = pair.pki.id("a").to_string();
    let peer = format!("peer=\"{a_id}\"");
    let b_admin = pair.b.bound.admin;
    pair.a.stop().await;
    quiver_tests::eventually("B drops A's path gauges", Duration::from_secs(20), || {
        let peer = peer.clone();
        async move {
            let (_, text) = admin_get(b_admin, "/metrics").await.ok()?;
            let gauges = [
                "quiver_quic_path_connections",
                "quiver_quic_path_rtt_seconds",
            ];
            let gone = gauges
                .iter()
                .all(|g| !text.lines().any(|l| l.starts_with(g) && l.contains(&peer)));
            let tolerated = metric_sum(&text, "quiver_quic_path_tolerated_losses_total", &[&peer]);
            (gone && tolerated > 0.0).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_tolerance_takes_every_loss_as_congestion_and_still_delivers() {
    // Loopback's default tolerance is 0: quinn's own response to every loss.
    let pair = LossyPair::start(0.03, "").await;
    pair.traffic(12, 64 * 1024, 1024 * 1024).await;
    assert!(pair.relay.dropped() > 10, "the relay dropped packets");
    let c = pair.b_connection().await;
    assert!(count(&c, "lost_packets") > 0, "B saw losses: {c}");
    assert_eq!(count(&c, "tolerated_losses"), 0, "nothing tolerated: {c}");
    assert!(
        count(&c, "congestion_events") > 0,
        "losses were congestion: {c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_path_reports_its_class_and_controller() {
    let pair = LossyPair::start(0.0, "").await;
    pair.traffic(4, 16 * 1024, 256 * 1024).await;
    assert_eq!(pair.relay.dropped(), 0);
    assert!(pair.relay.forwarded() > 0);
    let c = pair.b_connection().await;
    assert_eq!(c["class"], "loopback", "{c}");
    assert_eq!(c["congestion"], "cubic", "{c}");
    assert!(count(&c, "sent_packets") > 0, "{c}");
    assert!(count(&c, "congestion_window_bytes") > 0, "{c}");
}
