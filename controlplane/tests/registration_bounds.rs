//! What a proxy may assert about itself (issue 17, items 6 and 8), over real mTLS to the
//! discovery listener: the address it registers must be on its connection's source address
//! unless the operator granted its identity a network, one identity holds a bounded number of
//! endpoints and of Watch streams, and no served port may target the sidecar's own listeners.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use common::mesh::{self, Watcher, registration};
use common::{REVIEWS_SERVICE, SqliteTestDb, TestServer, doc};
use quiver_api::v1;
use tonic::Code;

async fn server_with(db: &SqliteTestDb, extra: &[&str]) -> TestServer {
    let server = TestServer::start_with(None, db.dir.path(), extra).await;
    server
        .admin()
        .await
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    server
}

async fn metrics(server: &TestServer) -> String {
    common::http_get(server.addr, "/metrics").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_registers_only_its_own_source_address_unless_granted() {
    let db = SqliteTestDb::create();
    let server = server_with(
        &db,
        &["--registration-exception=spiffe://mesh.local/ns/shop/sa/reviews=10.9.0.0/16"],
    )
    .await;
    let web = mesh::join(&server, "shop", "web").await;
    server
        .admin()
        .await
        .apply_service(doc::<v1::Service>(
            "apiVersion: quiver.dev/v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
             spec:\n  ports: [{name: http, port: 8080, protocol: http1}]\n",
        ))
        .await
        .unwrap();
    // The connection comes from 127.0.0.1: another service's address, or any other host's,
    // is refused naming the field.
    for address in ["10.1.2.3:15443", "127.0.0.2:15443", "10.9.0.1:15443"] {
        let refused = web
            .client()
            .await
            .register(registration("web", address, "v1"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{address}");
        assert!(
            refused.message().starts_with("address: ")
                && refused.message().contains("source address (127.0.0.1)"),
            "{address}: {}",
            refused.message()
        );
    }
    // Its own address works.
    web.client()
        .await
        .register(registration("web", "127.0.0.1:15443", "v1"))
        .await
        .expect("the caller's own address");
    // The operator's exception holds for that identity and that network only.
    let reviews = mesh::join(&server, "shop", "reviews").await;
    reviews
        .client()
        .await
        .register(registration("reviews", "10.9.0.1:15443", "v1"))
        .await
        .expect("granted network");
    let outside = reviews
        .client()
        .await
        .register(registration("reviews", "10.10.0.1:15443", "v1"))
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Code::PermissionDenied);
    assert!(
        metrics(&server)
            .await
            .contains("quiver_discovery_registrations_refused_total{reason=\"address\"} 4"),
        "refusals are counted"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_holds_at_most_the_endpoint_limit() {
    let db = SqliteTestDb::create();
    let server = server_with(&db, &["--max-endpoints-per-identity=2"]).await;
    let proxy = mesh::join(&server, "shop", "reviews").await;
    let mut client = proxy.client().await;
    let mut names = Vec::new();
    for port in [20001, 20002] {
        let r = client
            .register(registration("reviews", &format!("127.0.0.1:{port}"), "v1"))
            .await
            .expect("within the limit")
            .into_inner();
        names.push(r.workload.unwrap().metadata.unwrap().name);
    }
    // Registering one it holds again is an update, not a third endpoint.
    client
        .register(registration("reviews", "127.0.0.1:20002", "v2"))
        .await
        .expect("re-registering the same address");
    let third = client
        .register(registration("reviews", "127.0.0.1:20003", "v1"))
        .await
        .unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted);
    assert!(
        third.message().starts_with("address: ")
            && third.message().contains("--max-endpoints-per-identity 2"),
        "{}",
        third.message()
    );
    // Giving one back makes room.
    client
        .deregister(v1::DeregisterRequest {
            name: names[0].clone(),
        })
        .await
        .unwrap();
    client
        .register(registration("reviews", "127.0.0.1:20003", "v1"))
        .await
        .expect("room after a deregistration");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_targets_the_sidecars_own_listener_is_refused() {
    let db = SqliteTestDb::create();
    let server = server_with(&db, &[]).await;
    let proxy = mesh::join(&server, "shop", "reviews").await;
    let mut client = proxy.client().await;
    // The Service's port 9080 is the sidecar's admin port here.
    let mut reg = registration("reviews", "127.0.0.1:20001", "v1");
    reg.sidecar_ports = vec![9080, 15001];
    let refused = client.register(reg.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .starts_with("service spec.ports[0].targetPort: 9080 is one of the sidecar's own"),
        "{}",
        refused.message()
    );
    // The same through the registration's own ports, by targetPort.
    reg.ports = vec![v1::ServicePort {
        name: "http".into(),
        port: 9080,
        protocol: "http1".into(),
        target_port: 15001,
    }];
    let refused = client.register(reg.clone()).await.unwrap_err();
    assert!(
        refused
            .message()
            .starts_with("ports[0].targetPort: 15001 is one of the sidecar's own"),
        "{}",
        refused.message()
    );
    // An app port that is not the sidecar's is fine.
    reg.ports[0].target_port = 8081;
    client.register(reg).await.expect("an app port");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_per_identity_are_bounded_and_counted() {
    let db = SqliteTestDb::create();
    let server = server_with(&db, &["--max-watches-per-identity=3"]).await;
    let proxy = mesh::join(&server, "shop", "reviews").await;
    let mut client = proxy.client().await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut w = Watcher::open(&mut client, &["reviews"]).await;
        w.until("the first snapshot", |_| true).await;
        open.push(w);
    }
    let fourth = client
        .watch(v1::ProxyWatchRequest {
            services: vec!["reviews".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(fourth.code(), Code::ResourceExhausted);
    assert!(
        fourth.message().contains("--max-watches-per-identity"),
        "{}",
        fourth.message()
    );
    // Another identity is not affected.
    let web = mesh::join(&server, "shop", "web").await;
    let mut w = Watcher::open(&mut web.client().await, &[]).await;
    w.until("the first snapshot", |_| true).await;
    assert!(
        metrics(&server)
            .await
            .contains("quiver_discovery_watches_refused_total 1"),
        "the refusal is counted"
    );
    // A closed stream frees its slot.
    drop(open.pop());
    quiver_tests::eventually(
        "a slot frees up",
        std::time::Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                client
                    .watch(v1::ProxyWatchRequest {
                        services: vec!["reviews".into()],
                    })
                    .await
                    .ok()
            }
        },
    )
    .await;
    server.stop().await;
}
