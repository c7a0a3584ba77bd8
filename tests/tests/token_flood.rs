//! A flood of bogus bearer tokens against the admin API must not starve the store calls that
//! keep workloads registered (issue 17, item 6): a real `quiver-control` on Postgres with a
//! short lease, real proxies keeping their leases alive over mTLS, and 2,000 API calls a
//! second for 30 s, each with a token the control plane has never seen.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use quiver_api::v1::{self, mesh_admin_client::MeshAdminClient};
use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec, metric};
use quiver_tests::pki::temp_dir;
use tonic::Code;

const RATE: u64 = 2_000;
const SECONDS: u64 = 30;
const ENDPOINTS: usize = 3;

const MESH: &str = "\
apiVersion: quiver.dev/v1
kind: Service
metadata: {name: reviews}
spec:
  ports: [{name: http, port: 9080, protocol: http1}]
";

/// What the flood's answers were.
struct Answers {
    sent: AtomicU64,
    unauthenticated: AtomicU64,
    throttled: AtomicU64,
    accepted: AtomicU64,
    other: AtomicU64,
    /// The first few answers of any other kind, for the failure message.
    samples: std::sync::Mutex<Vec<String>>,
    /// Calls sent in each second since the flood started (the last slot: any later).
    per_second: Vec<AtomicU64>,
    /// When the last call was sent, in milliseconds since the flood started.
    last_sent_ms: AtomicU64,
}

impl Answers {
    fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            unauthenticated: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            other: AtomicU64::new(0),
            samples: std::sync::Mutex::new(Vec::new()),
            per_second: (0..2 * SECONDS).map(|_| AtomicU64::new(0)).collect(),
            last_sent_ms: AtomicU64::new(0),
        }
    }

    /// Count a call sent now, `since` the flood started.
    fn sent_at(&self, since: Duration) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let second = (since.as_secs() as usize).min(self.per_second.len() - 1);
        self.per_second[second].fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        self.last_sent_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bogus_token_flood_does_not_cost_a_single_endpoint() {
    quiver_tests::init_log();
    let db = Db::postgres().await;
    let dir = temp_dir("token-flood");
    // A 10 s lease renewed every 3.3 s (a third of the default): three KeepAlives of a proxy
    // stuck behind a busy store pool cost its endpoint. (Shorter leases measure how much CPU
    // the flood leaves the database on this shared 2-core machine, not the store's pool.)
    let cp = ControlPlane::start(&db, &dir, &["--lease-ttl", "10s"]).await;
    cp.apply(MESH).await;
    let ca = cp.write_ca(&dir).await;
    let mut proxies = Vec::new();
    for _ in 0..ENDPOINTS {
        let token = cp.join_token("default", "reviews", 1, "10m").await;
        proxies.push(
            MeshProxy::start(
                &cp,
                &ca,
                &dir,
                ProxySpec {
                    service: "reviews",
                    token,
                    labels: &[],
                    outbound: &[],
                    extra: &[],
                },
            )
            .await,
        );
    }
    quiver_tests::eventually(
        "every proxy registered",
        Duration::from_secs(30),
        || async { (cp.workloads("default", "reviews").await.len() == ENDPOINTS).then_some(()) },
    )
    .await;

    // Watch the endpoints through the flood (with the admin token, which is known).
    let stop = Arc::new(AtomicBool::new(false));
    let fewest = Arc::new(AtomicU64::new(ENDPOINTS as u64));
    let watcher = {
        let (stop, fewest) = (stop.clone(), fewest.clone());
        let mut admin = cp.admin().await;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(list) = admin
                    .list_workloads(v1::ListRequest {
                        namespace: "default".into(),
                    })
                    .await
                {
                    fewest.fetch_min(list.into_inner().items.len() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // The flood: open loop at RATE, every call with a fresh 47-character token.
    let answers = Arc::new(Answers::new());
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{}", cp.api))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let in_flight = Arc::new(tokio::sync::Semaphore::new(4_096));
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_tick = RATE / 100;
    for n in 0..(SECONDS * 100) {
        tick.tick().await;
        for i in 0..per_tick {
            let permit = in_flight.clone().acquire_owned().await.unwrap();
            let channel = channels[((n * per_tick + i) % 8) as usize].clone();
            let answers = answers.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let bogus = quiver_control::auth::new_secret("qvr_");
                let mut req = tonic::Request::new(v1::StatusRequest {});
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {bogus}").parse().unwrap());
                answers.sent_at(started.elapsed());
                let counter = match MeshAdminClient::new(channel).status(req).await {
                    Err(s) if s.code() == Code::Unauthenticated => &answers.unauthenticated,
                    Err(s) if s.code() == Code::ResourceExhausted => &answers.throttled,
                    Ok(_) => &answers.accepted,
                    Err(s) => {
                        let mut samples = answers.samples.lock().unwrap();
                        if samples.len() < 5 {
                            samples.push(format!("{:?}: {}", s.code(), s.message()));
                        }
                        &answers.other
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
            });
        }
    }
    // Every call answered.
    let _all = in_flight.acquire_many(4_096).await.unwrap();
    let flooded = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    let sent = answers.sent.load(Ordering::Relaxed);
    let unauthenticated = answers.unauthenticated.load(Ordering::Relaxed);
    let throttled = answers.throttled.load(Ordering::Relaxed);
    let accepted = answers.accepted.load(Ordering::Relaxed);
    let other = answers.other.load(Ordering::Relaxed);
    let samples = answers.samples.lock().unwrap().clone();
    eprintln!(
        "flood: {sent} calls, {unauthenticated} unauthenticated, {throttled} throttled, \
         {accepted} accepted, {other} other {samples:?}"
    );
    assert_eq!(sent, RATE * SECONDS);
    // The flood was a flood: spread over the 30 s at about RATE, not a burst and not a
    // trickle. The ticks cannot run ahead of the clock, so it took at least 30 s; the
    // generator only falls behind when the control plane cannot keep up (4,096 calls in
    // flight), so the rate achieved is also what the control plane answered.
    let per_second: Vec<u64> = answers
        .per_second
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    let secs = answers.last_sent_ms.load(Ordering::Relaxed) as f64 / 1000.0;
    let achieved = sent as f64 / secs;
    let window = &per_second[..(secs.ceil() as usize).min(per_second.len())];
    let (quietest, busiest) = (
        window[..window.len().saturating_sub(1)]
            .iter()
            .min()
            .copied()
            .unwrap_or(0),
        window.iter().max().copied().unwrap_or(0),
    );
    eprintln!(
        "sent in {secs:.1} s ({achieved:.0} calls/s), all answered after {:.1} s; per second: \
         quietest {quietest}, busiest {busiest}: {per_second:?}",
        flooded.as_secs_f64()
    );
    assert!(
        (29.5..=40.0).contains(&secs),
        "the flood took {secs:.1} s to send, not ~{SECONDS} s"
    );
    assert!(
        achieved >= 1_500.0,
        "{achieved:.0} calls/s: the flood did not reach 1,500 calls/s"
    );
    // Every whole second of the window carried a share of it (no stall, no catch-up burst
    // carrying the load).
    assert!(
        quietest >= RATE / 4,
        "a second with only {quietest} calls: {per_second:?}"
    );
    assert!(
        busiest <= 2 * RATE,
        "a second with {busiest} calls: {per_second:?}"
    );
    assert_eq!(accepted, 0, "a bogus token was accepted");
    assert_eq!(
        other, 0,
        "every bogus token is refused as such: {samples:?}"
    );

    // Not one endpoint lapsed, and the proxies never had to register again.
    assert_eq!(
        fewest.load(Ordering::Relaxed),
        ENDPOINTS as u64,
        "endpoints were lost during the flood"
    );
    assert_eq!(cp.workloads("default", "reviews").await.len(), ENDPOINTS);
    assert!(
        !cp.logs().contains("workload lease lapsed"),
        "a lease lapsed:\n{}",
        cp.logs()
    );
    for p in &proxies {
        assert!(!p.logs().contains("lease lapsed"), "{}", p.logs());
    }

    // The store saw a bounded number of token lookups, not one per bogus call.
    let (_, text) = quiver_tests::mesh::admin_get(cp.api, "/metrics")
        .await
        .unwrap();
    let looked_up = metric(
        &text,
        "quiver_api_token_checks_total{outcome=\"looked_up\"}",
    )
    .expect("token lookups are counted");
    // The bucket's rate over the flood (and the few seconds of set-up and watching around
    // it), plus one full bucket.
    let rate = quiver_control::auth::LOOKUPS_PER_SECOND;
    let bound = rate * (flooded.as_secs_f64() + 10.0) + rate;
    assert!(
        looked_up <= bound,
        "{looked_up} store lookups for {sent} bogus calls (bound {bound})"
    );
    drop(proxies);
}
