//! Gateway API documents (the corpus in `tests/gateway/`) through the real `quiverctl` and a
//! real server, on SQLite and on Postgres: applied as written, stored and shown as what they
//! are (`get -o yaml` round-trips, `group: ""` and `weight: 0` kept), listed, refused by
//! field, translated into the Route a proxy of the namespace is pushed, and deleted.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::path::Path;

use common::ctl::Ctl;
use common::mesh::{Watcher, join};
use common::{PgTestDb, SqliteTestDb, TestServer};
use quiver_api::v1;

fn corpus() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gateway"))
}

/// The Route a proxy of `shop` is pushed for `service`, if any.
fn pushed<'a>(snap: &'a v1::ProxySnapshot, service: &str) -> Option<&'a v1::Route> {
    snap.routes
        .iter()
        .find(|r| r.spec.as_ref().is_some_and(|s| s.service == service))
}

fn rule_names(route: &v1::Route) -> Vec<&str> {
    route
        .spec
        .iter()
        .flat_map(|s| &s.rules)
        .map(|r| r.name.as_str())
        .collect()
}

async fn corpus_round_trip(server: &TestServer) {
    let ctl = Ctl::new(server);
    let out = ctl.ok(&["apply", "-f", corpus().to_str().unwrap()]).await;
    for applied in [
        "HTTPRoute shop/reviews-canary created",
        "HTTPRoute shop/reviews-api created",
        "GRPCRoute shop/ratings created",
    ] {
        assert!(out.contains(applied), "{applied} not in:\n{out}");
    }

    // Stored and shown as written: the Gateway API document, defaults that mean something
    // kept, annotations and the older apiVersion's document shown as v1.
    let yaml = ctl
        .ok(&[
            "get",
            "httproute",
            "reviews-canary",
            "-n",
            "shop",
            "-o",
            "yaml",
        ])
        .await;
    assert!(
        yaml.starts_with("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"),
        "{yaml}"
    );
    for kept in [
        "group: ''",
        "weight: 0",
        "owner: team-books",
        "kind: Subset",
    ] {
        assert!(yaml.contains(kept), "{kept:?} not in:\n{yaml}");
    }
    let again = ctl.ok_stdin(&["apply", "-f", "-"], yaml).await;
    assert!(again.contains("unchanged"), "{again}");
    let api = ctl
        .ok(&[
            "get",
            "httproute",
            "reviews-api",
            "-n",
            "shop",
            "-o",
            "yaml",
        ])
        .await;
    assert!(
        api.starts_with("apiVersion: gateway.networking.k8s.io/v1\n"),
        "{api}"
    );

    let table = ctl.ok(&["get", "httproutes", "-n", "shop"]).await;
    assert!(table.contains("PARENTS"), "{table}");
    let canary_row = table
        .lines()
        .find(|l| l.contains("reviews-canary"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(canary_row.contains("reviews"), "{canary_row}");
    let wide = ctl
        .ok(&["get", "grpcroutes", "-n", "shop", "-o", "wide"])
        .await;
    assert!(wide.contains("ratings=1"), "{wide}");

    // Refused by field, nothing stored.
    let bad = std::fs::read_to_string(corpus().join("reviews-api.yaml"))
        .unwrap()
        .replace("name: reviews-api", "name: reviews-bad")
        .replace("fraction: {numerator: 1, denominator: 4}", "percent: 0");
    let err = ctl.fails_stdin(&["apply", "-f", "-"], bad).await;
    assert!(
        err.contains("spec.rules[0].filters[3].requestMirror.percent: 0 mirrors nothing"),
        "{err}"
    );
    let gateway_parent = std::fs::read_to_string(corpus().join("ratings.yaml"))
        .unwrap()
        .replace(
            "{group: \"\", kind: Service, name: ratings}",
            "{name: edge}",
        );
    let err = ctl.fails_stdin(&["apply", "-f", "-"], gateway_parent).await;
    assert!(err.contains("spec.parentRefs[0].group"), "{err}");
    let listed = ctl.ok(&["get", "httproutes"]).await;
    assert!(!listed.contains("reviews-bad"), "{listed}");

    // A Quiver Route for a Service the HTTPRoutes route is refused, naming one of them.
    let route = "apiVersion: quiver.dev/v1
kind: Route
metadata: {name: reviews, namespace: shop}
spec:
  service: reviews
  rules: [{name: all, backends: [{subset: v1, weight: 100}]}]
";
    let err = ctl.fails_stdin(&["apply", "-f", "-"], route.into()).await;
    assert!(
        err.contains("is already routed by HTTPRoute shop/reviews-"),
        "{err}"
    );

    // A proxy of the namespace is pushed one Route per Service, translated.
    let proxy = join(server, "shop", "web").await;
    let mut client = proxy.client().await;
    let mut watch = Watcher::open(&mut client, &[]).await;
    let snap = watch
        .until("the translated routes are pushed", |s| {
            pushed(s, "reviews").is_some() && pushed(s, "ratings").is_some()
        })
        .await;
    let reviews = pushed(&snap, "reviews").unwrap();
    let meta = reviews.metadata.as_ref().unwrap();
    assert_eq!(meta.name, "gateway/reviews");
    assert_eq!(
        meta.annotations["quiver.dev/translated-from"],
        "HTTPRoute/reviews-api,HTTPRoute/reviews-canary"
    );
    // Most specific first: the exact redirect, the API prefix (exact half, prefix half),
    // the testers' header and query matches, the catch-all split last.
    assert_eq!(
        rule_names(reviews),
        [
            "httproute/reviews-api/1",
            "httproute/reviews-api/0.0",
            "httproute/reviews-api/0.1",
            "httproute/reviews-canary/testers.0",
            "httproute/reviews-canary/testers.1",
            "httproute/reviews-canary/split",
        ]
    );
    let split = &reviews.spec.as_ref().unwrap().rules[5];
    let weights: Vec<(&str, &str, u32)> = split
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.subset.as_str(), b.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("reviews-v1", "", 90),
            ("reviews-v2", "", 10),
            ("reviews", "v1", 0)
        ]
    );
    let ratings = pushed(&snap, "ratings").unwrap();
    let exact = &ratings.spec.as_ref().unwrap().rules[0];
    assert_eq!(
        exact.r#match.as_ref().unwrap().path.as_ref().unwrap().exact,
        "/demo.Ratings/Rate"
    );

    // Deleted with the files they came from: the Service is routed by nothing again.
    for file in ["reviews-canary.yaml", "reviews-api.yaml"] {
        ctl.ok(&["delete", "-f", corpus().join(file).to_str().unwrap()])
            .await;
    }
    watch
        .until("the translated reviews route is gone", |s| {
            pushed(s, "reviews").is_none() && pushed(s, "ratings").is_some()
        })
        .await;
    // And now the Quiver Route is accepted.
    ctl.ok_stdin(&["apply", "-f", "-"], route.into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_api_corpus_round_trips_on_sqlite() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    corpus_round_trip(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_api_corpus_round_trips_on_postgres() {
    let db = PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Some(&db.url), dir.path()).await;
    corpus_round_trip(&server).await;
    server.stop().await;
}
