//! The admin API over real gRPC on 127.0.0.1: CRUD, auth, validation, conflicts, watch,
//! reflection and metrics.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::time::Duration;

use common::{
    REVIEWS_SERVICE, SqliteTestDb, TestServer, doc, route_yaml, route_yaml_on, service_like_reviews,
};
use quiver_api::v1::{self, watch_event};
use tonic::Code;

async fn sqlite_server() -> (SqliteTestDb, TestServer) {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    (db, server)
}

fn get(ns: &str, name: &str) -> v1::GetRequest {
    v1::GetRequest {
        namespace: ns.into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn apply_get_list_delete_round_trip_sqlite() {
    let (_db, server) = sqlite_server().await;
    round_trip(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_list_delete_round_trip_postgres() {
    let db = common::PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Some(&db.url), dir.path()).await;
    round_trip(server).await;
}

async fn round_trip(server: TestServer) {
    let mut c = server.admin().await;
    let svc = c
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(svc.outcome, v1::ApplyOutcome::Created as i32);
    let route: v1::Route = doc(&route_yaml("reviews", 90));
    let applied = c.apply_route(route.clone()).await.unwrap().into_inner();
    assert_eq!(applied.outcome, v1::ApplyOutcome::Created as i32);
    let stored = applied.route.unwrap();
    assert_eq!(stored.spec, route.spec);
    let meta = stored.metadata.clone().unwrap();
    assert_eq!(
        (meta.namespace.as_str(), meta.resource_version),
        ("shop", 2)
    );
    assert!(meta.created_at.ends_with('Z'), "{meta:?}");

    let got = c
        .get_route(get("shop", "reviews"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, stored);
    // Re-applying what was read changes nothing.
    let again = c.apply_route(got.clone()).await.unwrap().into_inner();
    assert_eq!(again.outcome, v1::ApplyOutcome::Unchanged as i32);
    assert_eq!(again.route.unwrap().metadata.unwrap().resource_version, 2);

    let list = c
        .list_routes(v1::ListRequest {
            namespace: "".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.items, vec![got]);
    let deleted = c
        .delete_route(v1::DeleteRequest {
            namespace: "shop".into(),
            name: "reviews".into(),
            resource_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.resource_version, 3);
    let err = c.get_route(get("shop", "reviews")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("Route shop/reviews not found"),
        "{err:?}"
    );
    let err = c.get_route(get("shop", "")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "name: required")
    );
    server.stop().await;
}

#[tokio::test]
async fn stale_resource_version_is_aborted() {
    let (_db, server) = sqlite_server().await;
    let mut c = server.admin().await;
    c.apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    c.apply_route(doc::<v1::Route>(&route_yaml("r", 90)))
        .await
        .unwrap();
    // Two editors read the same version.
    let alice = c.get_route(get("shop", "r")).await.unwrap().into_inner();
    let mut bob = alice.clone();
    let mut alice_edit = alice.clone();
    alice_edit.spec.as_mut().unwrap().rules[0].timeout = "5s".into();
    c.apply_route(alice_edit).await.unwrap();
    bob.spec.as_mut().unwrap().rules[0].timeout = "9s".into();
    let err = c.apply_route(bob).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(
        err.message().contains("changed since you read it"),
        "{err:?}"
    );
    let now = c.get_route(get("shop", "r")).await.unwrap().into_inner();
    assert_eq!(
        now.spec.unwrap().rules[0].timeout,
        "5s",
        "Alice's edit survives"
    );
    server.stop().await;
}

#[tokio::test]
async fn invalid_documents_are_refused_with_field_paths() {
    let (_db, server) = sqlite_server().await;
    let mut c = server.admin().await;
    c.apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    let mut route: v1::Route = doc(&route_yaml("r", 90));
    let rule = &mut route.spec.as_mut().unwrap().rules[0];
    rule.backends[1].subset = "v3".into();
    rule.backends[1].weight = 5;
    rule.timeout = "-1s".into();
    let err = c.apply_route(route).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let msg = err.message();
    assert!(
        msg.contains("spec.rules[0].backends: weights sum to 95"),
        "{msg}"
    );
    assert!(
        msg.contains("spec.rules[0].backends[1].subset: unknown subset \"v3\""),
        "{msg}"
    );
    assert!(msg.contains("spec.rules[0].timeout"), "{msg}");
    let err = c
        .list_routes(v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        err.items.is_empty(),
        "nothing of a refused document is stored"
    );

    // A 100 KB name is refused without coming back whole in grpc-message.
    let mut huge: v1::Route = doc(&route_yaml("r", 100));
    huge.metadata.as_mut().unwrap().name = "x".repeat(100_000);
    let err = c.apply_route(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("metadata.name: longer than 253 bytes"),
        "{}",
        &err.message()[..300]
    );
    assert!(
        err.message().len() < 4096,
        "{} bytes echoed",
        err.message().len()
    );
    let err = c
        .get_route(get("default", &"y".repeat(100_000)))
        .await
        .unwrap_err();
    assert!(
        err.message().len() < 4096,
        "{} bytes echoed",
        err.message().len()
    );
    server.stop().await;
}

/// Durations past their maximums are refused over the real API (issue 17, item 5): before
/// the bounds, `defaultTimeout: 9999999999999999999d` was stored and panicked every outbound
/// request of every proxy. Each refusal names its field, and nothing of it is stored.
#[tokio::test]
async fn overflowing_durations_are_refused_and_nothing_is_stored() {
    let (_db, server) = sqlite_server().await;
    let mut c = server.admin().await;
    c.apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();

    // MeshConfig: a good value first, then an overflowing one.
    let good: v1::MeshConfig = doc(
        "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {defaultTimeout: 15s, svidTtl: 24h}\n",
    );
    c.apply_mesh_config(good).await.unwrap();
    let stored = c
        .get_mesh_config(get("default", "mesh"))
        .await
        .unwrap()
        .into_inner();
    let mut huge = stored.clone();
    huge.spec.as_mut().unwrap().default_timeout = "9999999999999999999d".into();
    let err = c.apply_mesh_config(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(
            "spec.defaultTimeout: \"9999999999999999999d\" is longer than the maximum, 1h"
        ),
        "{}",
        err.message()
    );
    let mut long_svid = stored.clone();
    long_svid.spec.as_mut().unwrap().svid_ttl = "31d".into();
    let err = c.apply_mesh_config(long_svid).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("spec.svidTtl: \"31d\" is longer than the maximum"),
        "{}",
        err.message()
    );
    let now = c
        .get_mesh_config(get("default", "mesh"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now, stored, "a refused MeshConfig changed what is stored");
    assert_eq!(now.spec.unwrap().default_timeout, "15s");

    // Route: the rule's timeout (2s in the good one) at 100000000h.
    c.apply_route(doc::<v1::Route>(&route_yaml("r", 90)))
        .await
        .unwrap();
    let stored = c.get_route(get("shop", "r")).await.unwrap().into_inner();
    let mut slow = stored.clone();
    slow.spec.as_mut().unwrap().rules[0].timeout = "100000000h".into();
    let err = c.apply_route(slow).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("spec.rules[0].timeout: \"100000000h\" is longer than the maximum, 1h"),
        "{}",
        err.message()
    );
    let now = c.get_route(get("shop", "r")).await.unwrap().into_inner();
    assert_eq!(now, stored, "a refused Route changed what is stored");
    assert_eq!(now.spec.unwrap().rules[0].timeout, "2s");

    // A join token for 1000 days (the maximum is 90).
    let tokens_before = c
        .list_tokens(v1::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .items;
    let err = c
        .create_join_token(v1::CreateJoinTokenRequest {
            namespace: "shop".into(),
            service_account: "reviews".into(),
            ttl: "1000d".into(),
            uses: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("ttl: \"1000d\" is longer than the maximum, 2160h"),
        "{}",
        err.message()
    );
    let tokens_after = c
        .list_tokens(v1::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        tokens_after, tokens_before,
        "a refused join token was stored"
    );
    assert!(
        tokens_after.iter().all(|t| t.kind != "join"),
        "{tokens_after:?}"
    );
    // The maximum itself is accepted.
    c.create_join_token(v1::CreateJoinTokenRequest {
        namespace: "shop".into(),
        service_account: "reviews".into(),
        ttl: "90d".into(),
        uses: 1,
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn tokens_and_roles() {
    let (_db, server) = sqlite_server().await;
    let mut admin = server.admin().await;
    admin
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();

    let err = server
        .client(None)
        .await
        .list_services(v1::ListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = server
        .client(Some("qvr_made-up"))
        .await
        .list_services(v1::ListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let viewer = admin
        .create_api_token(v1::CreateApiTokenRequest {
            role: "viewer".into(),
            description: "dashboards".into(),
            ttl: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(viewer.token.starts_with("qvr_"));
    let mut v = server.client(Some(&viewer.token)).await;
    let list = v
        .list_services(v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.items.len(), 1, "a viewer can read");
    let status = v.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (status.role.as_str(), status.store.as_str()),
        ("viewer", "sqlite")
    );

    let err = v
        .apply_route(doc::<v1::Route>(&route_yaml("r", 90)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("viewer may not call ApplyRoute"),
        "{err:?}"
    );
    let err = v
        .delete_service(v1::DeleteRequest {
            namespace: "shop".into(),
            name: "reviews".into(),
            resource_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = v
        .create_api_token(v1::CreateApiTokenRequest {
            role: "admin".into(),
            description: String::new(),
            ttl: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        admin.get_service(get("shop", "reviews")).await.is_ok(),
        "the viewer's delete did not happen"
    );
    server.stop().await;
}

#[tokio::test]
async fn sql_metacharacters_in_names_round_trip() {
    let (_db, server) = sqlite_server().await;
    let mut c = server.admin().await;
    c.apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    let name = "x'); DROP TABLE resources; -- \"%_\\";
    let mut route: v1::Route = doc(&route_yaml("placeholder", 50));
    route.metadata.as_mut().unwrap().name = name.into();
    c.apply_route(route).await.unwrap();
    let got = c.get_route(get("shop", name)).await.unwrap().into_inner();
    assert_eq!(got.metadata.unwrap().name, name);
    let list = c
        .list_routes(v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].metadata.as_ref().unwrap().name, name);
    // The services table is still there.
    assert!(c.get_service(get("shop", "reviews")).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn watch_sends_snapshot_then_changes() {
    let (_db, server) = sqlite_server().await;
    let mut c = server.admin().await;
    c.apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    // Route "b" routes a Service of its own (a service is routed by one Route).
    c.apply_service(doc::<v1::Service>(&service_like_reviews("details")))
        .await
        .unwrap();
    c.apply_route(doc::<v1::Route>(&route_yaml("a", 90)))
        .await
        .unwrap();
    let mut stream = c
        .watch_routes(v1::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("watch event in time")
            .expect("stream ok")
            .expect("stream open")
    };
    let e = next().await;
    assert_eq!(e.r#type, watch_event::Type::Added as i32);
    assert!(
        matches!(&e.object, Some(watch_event::Object::Route(r)) if r.metadata.as_ref().unwrap().name == "a")
    );
    let e = next().await;
    assert_eq!(
        (e.r#type, e.resource_version),
        (watch_event::Type::Synced as i32, 3)
    );

    let mut c2 = server.admin().await;
    c2.apply_route(doc::<v1::Route>(&route_yaml("a", 80)))
        .await
        .unwrap();
    c2.apply_route(doc::<v1::Route>(&route_yaml_on("b", "details", 80)))
        .await
        .unwrap();
    // A change of another kind is not sent on the route watch.
    c2.apply_mesh_config(doc::<v1::MeshConfig>(
        "apiVersion: quiver.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {defaultPolicy: DENY}\n",
    ))
    .await
    .unwrap();
    c2.delete_route(v1::DeleteRequest {
        namespace: "shop".into(),
        name: "a".into(),
        resource_version: 0,
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next().await;
        let Some(watch_event::Object::Route(r)) = e.object else {
            panic!("{e:?}")
        };
        seen.push((e.r#type, e.resource_version, r.metadata.unwrap().name));
    }
    use watch_event::Type::*;
    assert_eq!(
        seen,
        vec![
            (Modified as i32, 4, "a".to_string()),
            (Added as i32, 5, "b".to_string()),
            (Deleted as i32, 7, "a".to_string()),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn canary_status_is_kept_on_apply() {
    let (_db, server) = sqlite_server().await;
    let mut c = server.admin().await;
    c.apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    let mut canary: v1::Canary = doc(
        "apiVersion: quiver.dev/v1\nkind: Canary\nmetadata: {name: reviews, namespace: shop}\nspec: {service: reviews, stableSubset: v1, canarySubset: v2, steps: [10, 50, 100], interval: 1m}\n",
    );
    canary.status = Some(v1::CanaryStatus {
        phase: "Promoted".into(),
        ..Default::default()
    });
    let stored = c
        .apply_canary(canary)
        .await
        .unwrap()
        .into_inner()
        .canary
        .unwrap();
    assert_eq!(
        stored.status, None,
        "Apply does not set controller-owned status"
    );
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (_db, server) = sqlite_server().await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("{msg:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["quiver.v1.MeshAdmin", "quiver.v1.MeshDiscovery"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code() {
    let (_db, server) = sqlite_server().await;
    let mut c = server.admin().await;
    c.apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    let _ = c.get_route(get("shop", "missing")).await;
    let _watch = c.watch_services(v1::WatchRequest::default()).await.unwrap();
    let body = quiver_tests::eventually("watcher gauge", Duration::from_secs(5), || async {
        let body = http_get(server.addr, "/metrics").await;
        body.contains("quiver_watchers 1").then_some(body)
    })
    .await;
    assert!(
        body.contains(r#"quiver_api_calls_total{method="ApplyService",code="OK"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"quiver_api_calls_total{method="GetRoute",code="NOT_FOUND"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"quiver_store_operation_duration_seconds_count{op="put"} 1"#),
        "{body}"
    );
    server.stop().await;
}

/// A plain HTTP/1.1 GET, as Prometheus scrapes.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
