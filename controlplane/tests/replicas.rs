//! Two control-plane replicas on one Postgres: a write through one is seen by a watcher of the
//! other, and both sign with the same CA.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::time::Duration;

use common::{PgTestDb, REVIEWS_SERVICE, TestServer, doc, route_yaml};
use quiver_api::v1::{self, watch_event};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_on_one_replica_is_watched_on_the_other() {
    let db = PgTestDb::create().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestServer::start(Some(&db.url), dir_a.path()).await;
    let b = TestServer::start(Some(&db.url), dir_b.path()).await;

    let mut watch_b = b
        .admin()
        .await
        .watch_routes(v1::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), watch_b.message())
            .await
            .expect("replica B's watch stalled")
            .unwrap()
            .unwrap()
    };
    assert_eq!(next().await.r#type, watch_event::Type::Synced as i32);

    let mut on_a = a.admin().await;
    on_a.apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    let applied = on_a
        .apply_route(doc::<v1::Route>(&route_yaml("reviews", 60)))
        .await
        .unwrap()
        .into_inner()
        .route
        .unwrap();
    let e = next().await;
    assert_eq!(e.r#type, watch_event::Type::Added as i32);
    let Some(watch_event::Object::Route(seen)) = e.object else {
        panic!("{e:?}")
    };
    assert_eq!(seen, applied, "B streams exactly what A stored");

    let status_b = b
        .admin()
        .await
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status_b.store.as_str(), status_b.resource_version),
        ("postgres", 2)
    );
    let bundle = |s: &TestServer| {
        let url = s.url.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            v1::mesh_discovery_client::MeshDiscoveryClient::new(channel)
                .get_trust_bundle(v1::GetTrustBundleRequest {})
                .await
                .unwrap()
                .into_inner()
                .pem
        }
    };
    assert_eq!(
        bundle(&a).await,
        bundle(&b).await,
        "one mesh CA for all replicas"
    );
    a.stop().await;
    b.stop().await;
}
