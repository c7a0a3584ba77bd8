use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const MS: Duration = Duration::from_millis(1);

fn w(addr: &str, zone: &str) -> Workload {
    Workload {
        address: addr.parse().unwrap(),
        labels: Labels::new(),
        zone: zone.into(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn picked(p: Pick) -> (SocketAddr, Tier) {
    match p {
        Pick::Endpoint { address, tier } => (address, tier),
        other => panic!("no endpoint: {other:?}"),
    }
}

#[test]
fn peak_ewma_takes_peaks_at_once_and_decays_with_time() {
    let t0 = Instant::now();
    let decay = Duration::from_secs(10);
    let mut e = PeakEwma::new(30 * MS, t0);
    assert_eq!(e.estimate(t0, decay), 30e6);
    // A peak replaces the estimate immediately.
    e.observe(200 * MS, t0, decay);
    assert_eq!(e.estimate(t0, decay), 200e6);
    // Idle for one time constant: e^-1 of it is left.
    let tau = t0 + decay;
    assert!((e.estimate(tau, decay) - 200e6 * (-1f64).exp()).abs() < 1.0);
    // A lower sample after 10 s blends: 200 * e^-1 + 10 * (1 - e^-1).
    e.observe(10 * MS, tau, decay);
    let want = 200e6 * (-1f64).exp() + 10e6 * (1.0 - (-1f64).exp());
    assert!((e.estimate(tau, decay) - want).abs() < 1.0);
    // A lower sample right away changes nothing.
    let mut f = PeakEwma::new(100 * MS, t0);
    f.observe(1 * MS, t0, decay);
    assert_eq!(f.estimate(t0, decay), 100e6);
    // Half-life: ln 2 * decay.
    let half = t0 + decay.mul_f64(std::f64::consts::LN_2);
    assert!((f.estimate(half, decay) - 50e6).abs() < 10.0);
}

#[test]
fn cost_multiplies_latency_outstanding_and_reported_load() {
    let t0 = Instant::now();
    let a = addr("10.0.0.1:1");
    let mut b = Balancer::new(BalanceConfig::default());
    b.observe(a, 40 * MS, t0);
    assert_eq!(b.cost(&a, t0), 40e6);
    b.start(a, Stage::Active, t0).unwrap();
    b.start(a, Stage::Pending, t0).unwrap();
    assert_eq!(b.cost(&a, t0), 120e6);
    b.report_load(a, 0.5, t0);
    assert_eq!(b.cost(&a, t0), 240e6);
    // Saturated counts as 0.95: at most 20x.
    b.report_load(a, 3.0, t0);
    assert!((b.cost(&a, t0) - 2400e6).abs() < 1.0);
    // A stale report is ignored.
    let stale = t0 + Duration::from_secs(11);
    let ewma = b
        .endpoint(&a)
        .unwrap()
        .ewma
        .estimate(stale, Duration::from_secs(10));
    assert!((b.cost(&a, stale) - ewma * 3.0).abs() < 1.0);
    b.connected(a);
    b.end(a, Stage::Active);
    b.end(a, Stage::Active);
    assert_eq!(b.endpoint(&a).unwrap().counters.outstanding(), 0);
}

#[test]
fn p2c_compares_the_two_rolled_endpoints() {
    let t0 = Instant::now();
    let ws = [
        w("10.0.0.1:1", ""),
        w("10.0.0.2:1", ""),
        w("10.0.0.3:1", ""),
    ];
    let refs: Vec<&Workload> = ws.iter().collect();
    let mut b = Balancer::new(BalanceConfig::default());
    b.observe(ws[0].address, 100 * MS, t0);
    b.observe(ws[1].address, 5 * MS, t0); // below the 30 ms start: stays 30 ms at t0
    b.observe(ws[2].address, 50 * MS, t0);
    // rolls [0, 0] -> indexes 0 and 1 (the second skips the first): 1 is cheaper.
    assert_eq!(picked(b.pick(&refs, "", t0, [0, 0])).0, ws[1].address);
    // rolls [0, 1] -> 0 and 2: 2 is cheaper.
    assert_eq!(picked(b.pick(&refs, "", t0, [0, 1])).0, ws[2].address);
    // rolls [2, 0] -> 2 and 0.
    assert_eq!(picked(b.pick(&refs, "", t0, [2, 0])).0, ws[2].address);
    // Equal costs: the first roll wins.
    let mut fresh = Balancer::new(BalanceConfig::default());
    assert_eq!(picked(fresh.pick(&refs, "", t0, [1, 1])).0, ws[1].address);
}

#[test]
fn p2c_sends_clearly_less_to_a_slow_endpoint() {
    let t0 = Instant::now();
    let fast = w("10.0.0.1:1", "");
    let slow = w("10.0.0.2:1", "");
    let refs = [&fast, &slow];
    let mut b = Balancer::new(BalanceConfig::default());
    let mut rng = StdRng::seed_from_u64(1);
    let (mut to_fast, mut to_slow) = (0, 0);
    let mut now = t0;
    // 1,000 requests, 50 ms apart (50 s, five decay time constants), each observed as it completes (fast 10 ms, slow 100 ms),
    // with the requests still outstanding counted.
    let mut open: Vec<(Instant, SocketAddr)> = Vec::new();
    for _ in 0..1000 {
        now += 50 * MS;
        open.retain(|(done, a)| {
            if *done <= now {
                let latency = if *a == fast.address {
                    10 * MS
                } else {
                    100 * MS
                };
                b.observe(*a, latency, *done);
                b.end(*a, Stage::Active);
                false
            } else {
                true
            }
        });
        let (a, _) = picked(b.pick(&refs, "", now, [rng.random(), rng.random()]));
        b.start(a, Stage::Active, now).unwrap();
        if a == fast.address {
            to_fast += 1;
            open.push((now + 10 * MS, a));
        } else {
            to_slow += 1;
            open.push((now + 100 * MS, a));
        }
    }
    assert_eq!(to_fast + to_slow, 1000);
    assert!(to_slow < 100, "slow endpoint got {to_slow} of 1000");
    assert!(
        to_slow > 0,
        "the slow endpoint is still probed as its estimate decays"
    );
}

#[test]
fn round_robin_takes_turns_among_available() {
    let t0 = Instant::now();
    let ws = [
        w("10.0.0.1:1", ""),
        w("10.0.0.2:1", ""),
        w("10.0.0.3:1", ""),
    ];
    let refs: Vec<&Workload> = ws.iter().collect();
    let mut b = Balancer::new(BalanceConfig {
        algorithm: Algorithm::RoundRobin,
        ..BalanceConfig::default()
    });
    let got: Vec<SocketAddr> = (0..6)
        .map(|_| picked(b.pick(&refs, "", t0, [0, 0])).0)
        .collect();
    let a: Vec<SocketAddr> = ws.iter().map(|w| w.address).collect();
    assert_eq!(got, [a[0], a[1], a[2], a[0], a[1], a[2]]);
}

#[test]
fn locality_prefers_the_callers_zone_and_fails_over() {
    let t0 = Instant::now();
    let ws = [
        w("10.0.1.1:1", "a"),
        w("10.0.1.2:1", "a"),
        w("10.0.2.1:1", "b"),
    ];
    let refs: Vec<&Workload> = ws.iter().collect();
    let cfg = BalanceConfig {
        limits: CircuitLimits {
            max_requests: 1,
            max_pending: 1,
        },
        ..BalanceConfig::default()
    };
    let mut b = Balancer::new(cfg);
    b.sync(&ws.iter().map(|w| w.address).collect::<Vec<_>>(), t0);
    // Zone b is much faster, but zone a is local.
    b.observe(ws[0].address, 500 * MS, t0);
    b.observe(ws[1].address, 500 * MS, t0);
    for r in 0..20u32 {
        let (a, tier) = picked(b.pick(&refs, "a", t0, [r, r / 2]));
        assert_eq!(tier, Tier::Local);
        assert_ne!(a, ws[2].address);
    }
    // No zone given: plain P2C over all.
    assert_eq!(
        picked(b.pick(&refs, "", t0, [0, 1])),
        (ws[2].address, Tier::Local)
    );
    // One local endpoint ejected: the other local one still serves.
    for _ in 0..5 {
        b.record(ws[0].address, false, t0);
    }
    assert_eq!(
        picked(b.pick(&refs, "a", t0, [0, 0])),
        (ws[1].address, Tier::Local)
    );
    // The other local one overloaded (at its limit): fail over to zone b.
    b.start(ws[1].address, Stage::Active, t0).unwrap();
    assert_eq!(
        picked(b.pick(&refs, "a", t0, [0, 0])),
        (ws[2].address, Tier::Failover)
    );
    // Everything full: refuse fast.
    b.start(ws[2].address, Stage::Active, t0).unwrap();
    assert_eq!(b.pick(&refs, "a", t0, [0, 0]), Pick::Overloaded);
    // The ejected one returns after 30 s and is local again.
    let later = t0 + Duration::from_secs(30);
    assert_eq!(
        picked(b.pick(&refs, "a", later, [0, 0])),
        (ws[0].address, Tier::Local)
    );
    assert_eq!(b.pick(&[], "a", later, [0, 0]), Pick::NoEndpoint);
}

#[test]
fn reported_load_steers_and_overload_fails_over() {
    let t0 = Instant::now();
    let ws = [
        w("10.0.1.1:1", "a"),
        w("10.0.1.2:1", "a"),
        w("10.0.2.1:1", "b"),
    ];
    let refs: Vec<&Workload> = ws.iter().collect();
    let mut b = Balancer::new(BalanceConfig::default());
    // Equal latency; 0 reports 0.8 (5x cost), 1 reports 0.1.
    b.report_load(ws[0].address, 0.8, t0);
    b.report_load(ws[1].address, 0.1, t0);
    assert_eq!(picked(b.pick(&refs, "a", t0, [0, 0])).0, ws[1].address);
    // Without the reports, the first roll would have won the tie.
    let mut plain = Balancer::new(BalanceConfig::default());
    assert_eq!(picked(plain.pick(&refs, "a", t0, [0, 0])).0, ws[0].address);
    // Both local endpoints at or above 0.9: overloaded, so zone b serves.
    b.report_load(ws[0].address, 0.95, t0);
    b.report_load(ws[1].address, 0.9, t0);
    assert_eq!(
        picked(b.pick(&refs, "a", t0, [0, 0])),
        (ws[2].address, Tier::Failover)
    );
    // Everyone overloaded: still served, by the cheapest of two.
    b.report_load(ws[2].address, 0.99, t0);
    assert_eq!(
        picked(b.pick(&refs, "a", t0, [0, 0])),
        (ws[1].address, Tier::Overloaded)
    );
    // Reports expire.
    let later = t0 + Duration::from_secs(11);
    assert_eq!(picked(b.pick(&refs, "a", later, [0, 0])).1, Tier::Local);
    assert_eq!(parse_load(" 0.73 "), Some(0.73));
    assert_eq!(parse_load("-1"), None);
    assert_eq!(parse_load("NaN"), None);
    assert_eq!(parse_load("high"), None);
}

#[test]
fn ejection_never_passes_half_the_service() {
    let t0 = Instant::now();
    let ws = [
        w("10.0.0.1:1", ""),
        w("10.0.0.2:1", ""),
        w("10.0.0.3:1", ""),
        w("10.0.0.4:1", ""),
    ];
    let refs: Vec<&Workload> = ws.iter().collect();
    let mut b = Balancer::new(BalanceConfig::default());
    b.sync(&ws.iter().map(|w| w.address).collect::<Vec<_>>(), t0);
    let mut ejected = 0;
    for w in &ws {
        for _ in 0..5 {
            if let Recorded::Ejected { .. } = b.record(w.address, false, t0) {
                ejected += 1;
            }
        }
    }
    assert_eq!(ejected, 2);
    let served: std::collections::HashSet<SocketAddr> = (0..50u32)
        .map(|r| picked(b.pick(&refs, "", t0, [r, r * 7])).0)
        .collect();
    assert_eq!(served, [ws[2].address, ws[3].address].into());
    // An endpoint removed from the config is forgotten, and shares are over what is left.
    b.sync(&[ws[0].address, ws[1].address], t0);
    assert!(b.endpoint(&ws[3].address).is_none());
    // Both remaining are ejected: panic mode serves them rather than nothing.
    let (_, tier) = picked(b.pick(&refs[..2], "", t0, [0, 0]));
    assert_eq!(tier, Tier::Panic);
}
