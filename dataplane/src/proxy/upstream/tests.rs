use std::collections::BTreeMap;

use quiver_api::SpiffeId;

use super::*;
use crate::snapshot::RemoteService;
use quiver_policy::balance::Algorithm;
use quiver_policy::breaker::CircuitLimits;
use quiver_policy::plan::{PolicyConfig, Rolls};
use quiver_policy::retry::RetryTuning;
use quiver_policy::route::RequestHead;

fn endpoint(address: &str, sa: &str) -> Endpoint {
    Endpoint {
        address: address.parse().unwrap(),
        identity: SpiffeId::parse(&format!("spiffe://mesh.local/ns/default/sa/{sa}")).unwrap(),
        labels: Default::default(),
        zone: String::new(),
    }
}

/// `reviews` with the given endpoints, `empty` without any, and `routes` (YAML) compiled.
fn snapshot(reviews: &[(&str, &str)], routes: &str) -> Arc<Snapshot> {
    let mut services = BTreeMap::new();
    services.insert(
        "reviews".to_string(),
        RemoteService::new(
            "reviews".into(),
            reviews.iter().map(|(a, sa)| endpoint(a, sa)).collect(),
            vec![],
        ),
    );
    services.insert(
        "empty".to_string(),
        RemoteService::new("empty".into(), vec![], vec![]),
    );
    let policy: PolicyConfig = serde_yaml::from_str(routes).unwrap();
    Arc::new(
        Snapshot::build(
            "1".into(),
            String::new(),
            vec![],
            services,
            policy,
            quiver_policy::services::Unknown::Refuse,
        )
        .unwrap(),
    )
}

const TWO: [(&str, &str); 2] = [
    ("10.0.0.1:15443", "reviews"),
    ("10.0.0.2:15443", "reviews-v2"),
];

fn round_robin() -> BalanceConfig {
    BalanceConfig {
        algorithm: Algorithm::RoundRobin,
        ..BalanceConfig::default()
    }
}

fn any() -> Labels {
    Labels::default()
}

#[test]
fn leases_take_turns_and_carry_the_endpoints_identity() {
    let r = Routing::install(snapshot(&TWO, "{}"), None, &round_robin(), Instant::now());
    let picks: Vec<Endpoint> = (0..4)
        .map(|_| {
            let lease = r.lease("reviews", &any(), Instant::now(), [0, 0]).unwrap();
            lease.endpoint.clone()
        })
        .collect();
    assert_eq!(picks[0].address.to_string(), "10.0.0.1:15443");
    assert_eq!(picks[1].address.to_string(), "10.0.0.2:15443");
    assert_eq!(picks[2], picks[0]);
    assert_eq!(
        picks[1].identity.as_str(),
        "spiffe://mesh.local/ns/default/sa/reviews-v2"
    );
}

#[test]
fn lease_errors_name_the_reason() {
    let r = Routing::install(snapshot(&TWO, "{}"), None, &round_robin(), Instant::now());
    let now = Instant::now();
    let e = r.lease("nope", &any(), now, [0, 0]).unwrap_err();
    assert_eq!(e.reason(), "no-route");
    let e = r.lease("empty", &any(), now, [0, 0]).unwrap_err();
    assert_eq!(e.reason(), "no-endpoint");
    assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn an_abandoned_lease_gives_its_circuit_slot_back() {
    let cfg = BalanceConfig {
        limits: CircuitLimits {
            max_requests: 1,
            max_pending: 1,
        },
        ..round_robin()
    };
    let one = [("10.0.0.1:15443", "reviews")];
    let r = Routing::install(snapshot(&one, "{}"), None, &cfg, Instant::now());
    let now = Instant::now();
    let mut held = r.lease("reviews", &any(), now, [0, 0]).unwrap();
    held.connected();
    let e = r.lease("reviews", &any(), now, [0, 0]).unwrap_err();
    assert_eq!(e.reason(), "overloaded");
    // The holder went away (a cancelled request) without finishing: the slot is free again.
    drop(held);
    let lease = r.lease("reviews", &any(), now, [0, 0]).unwrap();
    let up = r.upstream("reviews").unwrap();
    let outstanding = || {
        up.with_balancer(|b| {
            let a = "10.0.0.1:15443".parse().unwrap();
            b.endpoint(&a).unwrap().counters.outstanding()
        })
    };
    assert_eq!(outstanding(), 1);
    let report = Report {
        success: true,
        latency: Some(Duration::from_millis(5)),
        load: None,
    };
    assert!(!lease.finish(report, now));
    assert_eq!(outstanding(), 0);
}

#[test]
fn state_is_carried_across_snapshots_by_service_name_and_pruned() {
    let cfg = round_robin();
    let t0 = Instant::now();
    let first = Routing::install(snapshot(&TWO, "{}"), None, &cfg, t0);
    let lease = first.lease("reviews", &any(), t0, [0, 0]).unwrap();
    let slow = Report {
        success: true,
        latency: Some(Duration::from_secs(2)),
        load: None,
    };
    lease.finish(slow, t0);
    let ewma = |r: &Routing, a: &str| {
        r.upstream("reviews").unwrap().with_balancer(|b| {
            b.endpoint(&a.parse().unwrap())
                .map(|s| s.ewma.estimate(t0, Duration::from_secs(10)))
        })
    };
    let learned = ewma(&first, "10.0.0.1:15443").unwrap();
    assert!(learned >= 1.9e9, "{learned}");

    // A new snapshot keeps the service and one endpoint, adds one, and drops `empty`.
    let next = [("10.0.0.1:15443", "reviews"), ("10.0.0.3:15443", "reviews")];
    let second = Routing::install(snapshot(&next, "{}"), Some(&first), &cfg, t0);
    assert!(Arc::ptr_eq(
        first.upstream("reviews").unwrap(),
        second.upstream("reviews").unwrap()
    ));
    assert_eq!(ewma(&second, "10.0.0.1:15443"), Some(learned), "kept");
    assert_eq!(
        ewma(&second, "10.0.0.2:15443"),
        None,
        "gone endpoint forgotten"
    );
    assert!(
        ewma(&second, "10.0.0.3:15443").is_some(),
        "new endpoint started"
    );

    let mut without = (*snapshot(&TWO, "{}")).clone();
    without.services.remove("reviews");
    let third = Routing::install(Arc::new(without), Some(&second), &cfg, t0);
    assert!(third.upstream("reviews").is_none(), "gone service pruned");
    assert!(third.upstream("empty").is_some());
    // In-flight requests of the old snapshot still hold their state.
    assert!(second.upstream("reviews").is_some());
}

#[test]
fn retry_budgets_live_while_their_rule_does() {
    let routes = |rule: &str| {
        format!(
            "routes:\n- service: reviews\n  rules:\n  - name: {rule}\n    backends: \
             [{{service: reviews, weight: 100}}]\n    retries: {{attempts: 2, retryOn: [connect-failure]}}\n"
        )
    };
    let cfg = round_robin();
    let tuning = RetryTuning::default();
    let t0 = Instant::now();
    let headers = http::HeaderMap::new();
    let head = RequestHead {
        method: "GET",
        path: "/",
        query: None,
        headers: &headers,
    };
    let first = Routing::install(snapshot(&TWO, &routes("main")), None, &cfg, t0);
    let plan = first
        .snapshot
        .policy
        .plan("reviews", &head, Rolls::default())
        .unwrap();
    let up = first.upstream("reviews").unwrap();
    up.with_budget(&plan, &tuning, t0, |b| b.deposit(t0));
    assert_eq!(up.with_budget(&plan, &tuning, t0, |b| b.window(t0)), (1, 0));

    // Same rule name in the next snapshot: the budget stays.
    let second = Routing::install(snapshot(&TWO, &routes("main")), Some(&first), &cfg, t0);
    let up = second.upstream("reviews").unwrap();
    assert_eq!(up.with_budget(&plan, &tuning, t0, |b| b.window(t0)), (1, 0));

    // The rule is renamed: the old rule's budget is dropped.
    let third = Routing::install(snapshot(&TWO, &routes("other")), Some(&second), &cfg, t0);
    let up = third.upstream("reviews").unwrap();
    assert_eq!(up.with_budget(&plan, &tuning, t0, |b| b.window(t0)), (0, 0));
}
