//! MeshDiscovery end to end over real TLS sockets, on Postgres and SQLite: proxies join,
//! register with a lease, and follow their Watch snapshots.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::time::Duration;

use common::mesh::{self, Watcher, endpoints, registration};
use common::{PgTestDb, REVIEWS_SERVICE, SqliteTestDb, TestServer, doc, route_yaml};
use quiver_api::v1;

const WEB_SERVICE: &str = r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 8080, protocol: http1, targetPort: 3000}]
"#;

const WEB_POLICY: &str = r#"
apiVersion: quiver.dev/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  service: web
  allow: [{sources: ["spiffe://mesh.local/ns/shop/sa/*"]}]
"#;

async fn apply_shop(server: &TestServer) {
    let mut admin = server.admin().await;
    admin
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    admin
        .apply_service(doc::<v1::Service>(WEB_SERVICE))
        .await
        .unwrap();
    admin
        .apply_authorization_policy(doc::<v1::AuthorizationPolicy>(WEB_POLICY))
        .await
        .unwrap();
}

/// Join -> register -> the workload appears in another proxy's snapshot; a Route change
/// reaches it; deregistering removes the endpoint.
async fn register_and_watch(server: &TestServer) {
    apply_shop(server).await;
    let web = mesh::join(server, "shop", "web").await;
    let reviews = mesh::join(server, "shop", "reviews").await;
    assert_eq!(web.spiffe_id, "spiffe://mesh.local/ns/shop/sa/web");

    let mut web_client = web.client().await;
    let mut watch = Watcher::open(&mut web_client, &["web"]).await;
    let first = watch.until("the first snapshot arrives", |_| true).await;
    assert_eq!(first.spiffe_id, web.spiffe_id);
    assert_eq!(first.namespace, "shop");
    assert!(endpoints(&first, "reviews").is_empty());
    assert_eq!(first.inbound.len(), 1, "{first:?}");
    assert_eq!(first.inbound[0].ports[0].target_port, 3000);
    assert_eq!(first.authorization_policies.len(), 1);
    assert_eq!(first.trust_bundle_pem, web.bundle_pem);
    let reviews_svc = first.services.iter().find(|s| s.name == "reviews").unwrap();
    assert_eq!(reviews_svc.spiffe_id, reviews.spiffe_id);
    assert_eq!(reviews_svc.subsets.len(), 2);

    let mut reviews_client = reviews.client().await;
    let registered = reviews_client
        .register(registration("reviews", "127.0.0.1:15443", "v2"))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(registered.lease_ttl, "30s");
    let workload = registered.workload.unwrap();
    assert_eq!(
        workload.spec.as_ref().unwrap().spiffe_id,
        reviews.spiffe_id,
        "identity from the certificate"
    );

    let snap = watch
        .until("reviews has an endpoint", |s| {
            !endpoints(s, "reviews").is_empty()
        })
        .await;
    let ep = &endpoints(&snap, "reviews")[0];
    assert_eq!(ep.address, "127.0.0.1:15443");
    assert_eq!(ep.spiffe_id, "spiffe://mesh.local/ns/shop/sa/reviews");
    assert_eq!(ep.labels.get("version").map(String::as_str), Some("v2"));
    assert_eq!(ep.zone, "zone-a");

    // The admin API lists it, with its lease.
    let listed = server
        .admin()
        .await
        .list_workloads(v1::ListRequest {
            namespace: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed.len(), 1);
    assert!(
        !listed[0]
            .status
            .as_ref()
            .unwrap()
            .lease_expires_at
            .is_empty()
    );

    // A Route change reaches the watcher.
    server
        .admin()
        .await
        .apply_route(doc::<v1::Route>(&route_yaml("reviews", 90)))
        .await
        .unwrap();
    let snap = watch
        .until("the route arrives", |s| !s.routes.is_empty())
        .await;
    let backends = &snap.routes[0].spec.as_ref().unwrap().rules[0].backends;
    assert_eq!((backends[0].weight, backends[1].weight), (90, 10));
    server
        .admin()
        .await
        .apply_route(doc::<v1::Route>(&route_yaml("reviews", 50)))
        .await
        .unwrap();
    watch
        .until("the new weights arrive", |s| {
            s.routes
                .first()
                .and_then(|r| r.spec.as_ref())
                .is_some_and(|r| r.rules[0].backends[0].weight == 50)
        })
        .await;

    // Only the registrant may deregister.
    let name = workload.metadata.unwrap().name;
    let err = web_client
        .deregister(v1::DeregisterRequest { name: name.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    reviews_client
        .deregister(v1::DeregisterRequest { name })
        .await
        .expect("deregister");
    watch
        .until("the endpoint is gone", |s| {
            endpoints(s, "reviews").is_empty()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_watch_on_sqlite() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    register_and_watch(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_watch_on_postgres() {
    let db = PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Some(&db.url), dir.path()).await;
    register_and_watch(&server).await;
    server.stop().await;
}

/// What ListProxyStatus answers.
async fn proxies(server: &TestServer) -> Vec<v1::ProxyStatus> {
    server
        .admin()
        .await
        .list_proxy_status(v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
}

/// Keep-alives hold the endpoint; when they stop, the lease lapses and the endpoint leaves
/// every snapshot and the workload list.
async fn lapsed_lease_removes_the_endpoint(server: &TestServer) {
    apply_shop(server).await;
    let web = mesh::join(server, "shop", "web").await;
    let reviews = mesh::join(server, "shop", "reviews").await;
    let mut watch = Watcher::open(&mut web.client().await, &["web"]).await;
    let mut reviews_client = reviews.client().await;
    let registered = reviews_client
        .register(registration("reviews", "127.0.0.1:20001", "v1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.lease_ttl, "1s");
    let name = registered.workload.unwrap().metadata.unwrap().name;
    watch
        .until("the endpoint appears", |s| {
            endpoints(s, "reviews").len() == 1
        })
        .await;

    // Keep-alives every 300 ms hold it for well past the lease.
    let held_until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < held_until {
        reviews_client
            .keep_alive(v1::KeepAliveRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .expect("keep-alive");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let snap = watch.last.clone().unwrap();
    assert_eq!(endpoints(&snap, "reviews").len(), 1, "held by keep-alives");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watch.stream.message())
            .await
            .is_err(),
        "keep-alives push nothing to watchers"
    );

    // Keep-alives without a report (a proxy older than proxy status): listed as UNKNOWN.
    let listed = proxies(server).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].workload.as_str(), listed[0].state.as_str()),
        (name.as_str(), "UNKNOWN")
    );
    // With a report, what it runs is stored.
    reviews_client
        .keep_alive(v1::KeepAliveRequest {
            name: name.clone(),
            report: Some(v1::ProxyReport {
                applied_version: 4,
                proxy_version: "9.9.9".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("keep-alive with a report");
    let listed = proxies(server).await;
    assert_eq!(
        (
            listed[0].state.as_str(),
            listed[0].proxy_version.as_str(),
            listed[0].applied_version
        ),
        ("SYNCED", "9.9.9", 4),
        "{listed:?}"
    );
    assert_eq!(listed[0].service, "reviews");

    // Stop: the endpoint goes within the lease plus a sweep.
    let stopped = tokio::time::Instant::now();
    watch
        .until("the lapsed endpoint is removed", |s| {
            endpoints(s, "reviews").is_empty()
        })
        .await;
    assert!(
        stopped.elapsed() < Duration::from_millis(2500),
        "removed after {:?}",
        stopped.elapsed()
    );
    let listed = server
        .admin()
        .await
        .list_workloads(v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(listed.is_empty(), "{listed:?}");
    // Its status row went with it.
    let listed = proxies(server).await;
    assert!(listed.is_empty(), "{listed:?}");
    let err = reviews_client
        .keep_alive(v1::KeepAliveRequest {
            name,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_lease_removes_the_endpoint_on_sqlite() {
    let db = SqliteTestDb::create();
    let server = TestServer::start_with(None, db.dir.path(), &["--lease-ttl=1s"]).await;
    lapsed_lease_removes_the_endpoint(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_lease_removes_the_endpoint_on_postgres() {
    let db = PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(Some(&db.url), dir.path(), &["--lease-ttl=1s"]).await;
    lapsed_lease_removes_the_endpoint(&server).await;
    server.stop().await;
}

/// Two replicas on one Postgres: a proxy registers on A, another watches on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_on_one_replica_is_watched_on_the_other() {
    let db = PgTestDb::create().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestServer::start(Some(&db.url), dir_a.path()).await;
    let b = TestServer::start(Some(&db.url), dir_b.path()).await;
    apply_shop(&a).await;
    let web = mesh::join(&b, "shop", "web").await;
    let reviews = mesh::join(&a, "shop", "reviews").await;
    let mut watch = Watcher::open(&mut web.client_to(b.discovery).await, &["web"]).await;
    watch.until("B's first snapshot", |_| true).await;
    reviews
        .client_to(a.discovery)
        .await
        .register(registration("reviews", "127.0.0.1:20002", "v1"))
        .await
        .unwrap();
    let snap = watch
        .until("the endpoint registered on A", |s| {
            !endpoints(s, "reviews").is_empty()
        })
        .await;
    assert_eq!(endpoints(&snap, "reviews")[0].address, "127.0.0.1:20002");
    a.stop().await;
    b.stop().await;
}
