use http::{HeaderMap, HeaderValue};

use std::collections::BTreeMap;

use super::*;
use crate::Subset;
use crate::balance::{BalanceConfig, Balancer, Pick, Workload};
use crate::services::Unknown;

const CONFIG: &str = r#"
mesh:
  defaultPolicy: ALLOW
  defaultTimeout: 15s
routes:
  - service: reviews
    rules:
      - name: testers
        match:
          headers: [{name: x-user, exact: tester}]
        backends: [{subset: v2, weight: 100}]
        timeout: 2s
      - name: split
        match: {path: {prefix: /}}
        backends:
          - {subset: v1, weight: 80}
          - {subset: v2, weight: 20}
        retries: {attempts: 3, perTryTimeout: 500ms, retryOn: [gateway-error]}
        fault:
          delay: {fixedDelay: 100ms, percent: 10}
          abort: {httpStatus: 503, percent: 5}
        mirror: {subset: v3, percent: 50}
  - service: ratings
    rules:
      - name: api-only
        match: {path: {prefix: /api/}}
authorization:
  - name: reviews-readers
    service: reviews
    allow: [{sources: ["spiffe://mesh.local/ns/shop/sa/*"]}]
"#;

type Subsets = BTreeMap<String, Vec<Subset>>;

fn subsets() -> Subsets {
    let s = |v: &str| Subset {
        name: v.into(),
        labels: [("version".to_string(), v.to_string())].into(),
    };
    [
        ("reviews".to_string(), vec![s("v1"), s("v2"), s("v3")]),
        ("ratings".to_string(), Vec::new()),
    ]
    .into()
}

fn compile(c: &PolicyConfig, subsets: &Subsets) -> Result<Policy, Vec<FieldError>> {
    let services = Services::new(
        subsets.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        Unknown::Refuse,
    );
    Policy::compile(c, &services)
}

fn policy() -> Policy {
    let c: PolicyConfig = serde_yaml::from_str(CONFIG).unwrap();
    compile(&c, &subsets()).unwrap()
}

fn head<'a>(path: &'a str, h: &'a HeaderMap) -> RequestHead<'a> {
    RequestHead {
        method: "GET",
        path,
        query: None,
        headers: h,
    }
}

fn workloads() -> Vec<Workload> {
    let w = |a: &str, v: &str, zone: &str| Workload {
        address: a.parse().unwrap(),
        labels: [("version".to_string(), v.to_string())].into(),
        zone: zone.into(),
    };
    vec![
        w("10.0.0.1:15443", "v1", "a"),
        w("10.0.0.2:15443", "v2", "a"),
        w("10.0.0.3:15443", "v2", "b"),
    ]
}

#[test]
fn a_plan_carries_every_decision() {
    let p = policy();
    let none = HeaderMap::new();
    let rolls = Rolls {
        backend: 85,
        delay: 0.05,
        abort: 0.5,
        mirror: 0.2,
    };
    let mut plan = p.plan("reviews", &head("/x", &none), rolls).unwrap();
    assert_eq!(plan.route(), "split");
    assert_eq!(plan.backend.label(), "reviews/v2");
    assert_eq!(plan.timeout, Some(Duration::from_secs(15)), "mesh default");
    assert_eq!(plan.per_try_timeout(), Some(Duration::from_millis(500)));
    assert_eq!(plan.retries().map(|r| r.attempts), Some(3));
    assert_eq!(plan.fault.delay, Some(Duration::from_millis(100)));
    assert_eq!(plan.fault.abort, None);
    assert_eq!(
        plan.mirror.as_ref().map(|b| b.label()).as_deref(),
        Some("reviews/v3")
    );

    let t0 = Instant::now();
    let mut b = Balancer::new(BalanceConfig::default());
    let pick = b.pick_selected(&workloads(), &plan.backend.selector, "b", t0, [0, 0]);
    // Only v2 workloads are candidates; the one in the caller's zone b wins.
    assert_eq!(
        pick,
        Pick::Endpoint {
            address: "10.0.0.3:15443".parse().unwrap(),
            tier: Tier::Local
        }
    );
    if let Pick::Endpoint { address, tier } = pick {
        plan.endpoint = Some((address, tier));
    }
    plan.attempts = 1;
    assert_eq!(
        plan.explain(),
        "route=reviews/split backend=reviews/v2 endpoint=10.0.0.3:15443 locality=Local \
         timeout=15s attempts=1/3 fault.delay=100ms mirror=reviews/v3"
    );
}

#[test]
fn header_match_sends_testers_to_v2_only() {
    let p = policy();
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("tester"));
    for roll in 0..100 {
        let plan = p
            .plan(
                "reviews",
                &head("/x", &h),
                Rolls {
                    backend: roll,
                    ..Rolls::default()
                },
            )
            .unwrap();
        assert_eq!(plan.route(), "testers");
        assert_eq!(plan.backend.subset, "v2");
        assert_eq!(plan.timeout, Some(Duration::from_secs(2)));
        assert!(plan.mirror.is_none() && !plan.fault.any() && plan.retries().is_none());
    }
    assert_eq!(
        p.plan("reviews", &head("/x", &h), Rolls::default())
            .unwrap()
            .explain(),
        "route=reviews/testers backend=reviews/v2 timeout=2s"
    );
}

#[test]
fn unmatched_is_no_rule_and_services_without_routes_get_the_default() {
    let p = policy();
    let none = HeaderMap::new();
    assert_eq!(
        p.plan("ratings", &head("/health", &none), Rolls::default())
            .unwrap_err(),
        NoRule {
            service: "ratings".into()
        }
    );
    let plan = p
        .plan("details", &head("/", &none), Rolls::default())
        .unwrap();
    assert_eq!(
        (plan.route(), plan.backend.label()),
        ("default", "details".to_string())
    );
    let mut b = Balancer::new(BalanceConfig::default());
    assert_eq!(
        b.pick_selected(&[], &plan.backend.selector, "", Instant::now(), [0, 0]),
        Pick::NoEndpoint
    );
}

#[test]
fn a_swapped_policy_leaves_in_flight_plans_alone() {
    let old = Arc::new(policy());
    let none = HeaderMap::new();
    let plan = old
        .plan(
            "reviews",
            &head("/x", &none),
            Rolls {
                backend: 10,
                ..Rolls::default()
            },
        )
        .unwrap();
    let changed = CONFIG
        .replace("{subset: v1, weight: 80}", "{subset: v1, weight: 0}")
        .replace("{subset: v2, weight: 20}", "{subset: v2, weight: 100}");
    let new = Arc::new(compile(&serde_yaml::from_str(&changed).unwrap(), &subsets()).unwrap());
    drop(old);
    assert_eq!(plan.backend.subset, "v1");
    assert_eq!(
        plan.rule.pick_backend(10).map(|b| b.subset.as_str()),
        Some("v1")
    );
    let next = new
        .plan(
            "reviews",
            &head("/x", &none),
            Rolls {
                backend: 10,
                ..Rolls::default()
            },
        )
        .unwrap();
    assert_eq!(next.backend.subset, "v2");
}

#[test]
fn errors_from_every_block_come_together() {
    let bad: PolicyConfig = serde_yaml::from_str(
        r#"
routes:
  - service: reviews
    rules: [{name: a, match: {path: {regex: "("}}}]
  - service: reviews
authorization:
  - name: p
    service: reviews
    allow: [{paths: [nope]}]
"#,
    )
    .unwrap();
    let e = compile(&bad, &subsets()).unwrap_err();
    let fields: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        fields,
        [
            "routes[0].rules[0].match.path.regex",
            "routes[1].service",
            "routes[1].rules",
            "authorization[0].allow[0].paths[0]",
        ]
    );
    assert!(serde_yaml::from_str::<PolicyConfig>("routes: []\nroutez: []\n").is_err());
}

#[test]
fn budgets_are_per_rule_and_survive_swaps() {
    let p = policy();
    let none = HeaderMap::new();
    let t0 = Instant::now();
    let tuning = RetryTuning::default();
    let mut budgets = Budgets::default();
    let plan = p
        .plan("reviews", &head("/x", &none), Rolls::default())
        .unwrap();
    budgets.for_plan(&plan, &tuning, t0).deposit(t0);
    let again = policy()
        .plan("reviews", &head("/y", &none), Rolls::default())
        .unwrap();
    assert_eq!(budgets.for_plan(&again, &tuning, t0).window(t0), (1, 0));
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("tester"));
    let other = p
        .plan("reviews", &head("/x", &h), Rolls::default())
        .unwrap();
    assert_eq!(budgets.for_plan(&other, &tuning, t0).window(t0), (0, 0));
}

/// Every YAML example in docs/traffic.md parses and compiles, so the docs cannot drift from
/// the code: whole policy blocks, rule fragments, and the tuning block.
#[test]
fn every_example_in_the_traffic_docs_compiles() {
    use serde_yaml::{Mapping, Value};
    let doc = include_str!("../../../docs/traffic.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    let rule_keys = ["backends", "retries", "fault", "mirror", "match", "timeout"];
    let (mut policies, mut fragments, mut tuning) = (0, 0, 0);
    for (i, text) in blocks.iter().enumerate() {
        let v: Mapping = serde_yaml::from_str(text).unwrap_or_else(|e| panic!("block {i}: {e}"));
        let key = |k: &str| v.get(Value::from(k));
        let mut subsets = subsets();
        // docs/traffic.md keeps a zero-weight backend of this service.
        subsets.insert("reviews-legacy".into(), Vec::new());
        if let Some(services) = key("services") {
            /// The proxy file's service entry, as far as policy reads it.
            #[derive(serde::Deserialize)]
            struct S {
                name: String,
                #[serde(default)]
                subsets: Vec<Subset>,
                endpoints: Vec<E>,
            }
            #[derive(serde::Deserialize)]
            struct E {
                address: std::net::SocketAddr,
                labels: crate::Labels,
                zone: String,
            }
            let services: Vec<S> = serde_yaml::from_value(services.clone()).unwrap();
            for s in services {
                for e in &s.endpoints {
                    assert!(!e.address.ip().is_unspecified() && !e.zone.is_empty());
                    assert!(
                        s.subsets
                            .iter()
                            .any(|x| crate::selects(&x.labels, &e.labels))
                    );
                }
                subsets.insert(s.name, s.subsets);
            }
        }
        if ["routes", "authorization", "mesh"]
            .iter()
            .any(|k| key(k).is_some())
        {
            let mut m = Mapping::new();
            for k in ["routes", "authorization", "mesh"] {
                if let Some(x) = key(k) {
                    m.insert(k.into(), x.clone());
                }
            }
            let c: PolicyConfig = serde_yaml::from_value(Value::Mapping(m))
                .unwrap_or_else(|e| panic!("block {i}: {e}"));
            compile(&c, &subsets).unwrap_or_else(|e| panic!("block {i}: {e:?}"));
            policies += 1;
        } else if v
            .keys()
            .all(|k| rule_keys.iter().any(|r| k.as_str() == Some(*r)))
        {
            let mut rule = v.clone();
            rule.insert("name".into(), "example".into());
            let route = v1::RouteSpec {
                service: "reviews".into(),
                rules: vec![
                    serde_yaml::from_value(Value::Mapping(rule))
                        .unwrap_or_else(|e| panic!("block {i}: {e}")),
                ],
            };
            let c = PolicyConfig {
                routes: vec![route],
                ..PolicyConfig::default()
            };
            compile(&c, &subsets).unwrap_or_else(|e| panic!("block {i}: {e:?}"));
            fragments += 1;
        } else if let Some(t) = key("tuning") {
            let b: BalanceConfig = serde_yaml::from_value(t["balancing"].clone())
                .unwrap_or_else(|e| panic!("block {i}: {e}"));
            assert_eq!(b, BalanceConfig::default(), "the docs show the defaults");
            let r: RetryTuning = serde_yaml::from_value(t["retries"].clone())
                .unwrap_or_else(|e| panic!("block {i}: {e}"));
            assert_eq!(r, RetryTuning::default(), "the docs show the defaults");
            tuning += 1;
        } else {
            panic!("block {i} is not a policy example:\n{text}");
        }
    }
    assert_eq!((policies, fragments, tuning), (4, 4, 1), "examples checked");
}
