//! Services' virtual IPs over the real API on SQLite and Postgres: assigned when a Service
//! is created, kept by every later Apply, unique, released on delete, refused by name when the
//! range is full (docs/deploy.md, "Service addresses").
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::{SqliteTestDb, TestServer, doc, service_like_reviews};
use quiver_api::v1;
use tonic::Code;

/// A range with room for two Services.
const TINY: &str = "10.250.0.0/30";

fn address(svc: &v1::Service) -> Ipv4Addr {
    svc.status
        .as_ref()
        .map(|s| s.virtual_ip.as_str())
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|_| panic!("no virtual IP in {svc:?}"))
}

#[tokio::test]
async fn addresses_on_sqlite() {
    let db = SqliteTestDb::create();
    let server = TestServer::start_with(None, db.dir.path(), &["--service-vip-range", TINY]).await;
    addresses(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_on_postgres() {
    let db = common::PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::start_with(Some(&db.url), dir.path(), &["--service-vip-range", TINY]).await;
    addresses(server).await;
}

/// The Services of namespace `shop`.
async fn shop_services(c: &mut common::Client) -> v1::ServiceList {
    c.list_services(v1::ListRequest {
        namespace: "shop".into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn addresses(server: TestServer) {
    let mut c = server.admin().await;
    let apply = |name: &str| doc::<v1::Service>(&service_like_reviews(name));

    let a = c.apply_service(apply("alpha")).await.unwrap().into_inner();
    let b = c.apply_service(apply("bravo")).await.unwrap().into_inner();
    let (a_ip, b_ip) = (address(&a.service.unwrap()), address(&b.service.unwrap()));
    let usable: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 250, 0, 1), Ipv4Addr::new(10, 250, 0, 2)]
        .into_iter()
        .collect();
    assert_eq!(
        [a_ip, b_ip].into_iter().collect::<BTreeSet<_>>(),
        usable,
        "two Services share an address, or one is outside the range"
    );

    // Applied again (as a user's file has no status): the same address, nothing changed.
    let again = c.apply_service(apply("alpha")).await.unwrap().into_inner();
    assert_eq!(again.outcome, v1::ApplyOutcome::Unchanged as i32);
    assert_eq!(address(&again.service.unwrap()), a_ip);
    // A user cannot pick one: the status they send is the controller's, and is kept.
    let mut forged = apply("alpha");
    forged.status = Some(v1::ServiceStatus {
        virtual_ip: "10.250.0.3".into(),
    });
    let kept = c.apply_service(forged).await.unwrap().into_inner();
    assert_eq!(address(&kept.service.unwrap()), a_ip);

    // Full: the third is refused, naming the flag; nothing was stored for it.
    let full = c.apply_service(apply("charlie")).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(
        full.message().contains("--service-vip-range 10.250.0.0/30"),
        "{full:?}"
    );
    let listed = shop_services(&mut c).await;
    assert_eq!(listed.items.len(), 2);

    // Deleting one frees its address for the next.
    c.delete_service(v1::DeleteRequest {
        namespace: "shop".into(),
        name: "alpha".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let charlie = c
        .apply_service(apply("charlie"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(address(&charlie.service.unwrap()), a_ip);
    server.stop().await;
}

/// Services stored before virtual IPs existed (migration 0012) have no address and no claim;
/// the control plane gives each one at start, as an Apply would have.
async fn stored_without_addresses(store: std::sync::Arc<dyn quiver_control::store::Store>) {
    for name in ["alpha", "bravo"] {
        let svc = doc::<v1::Service>(&service_like_reviews(name));
        assert!(svc.status.is_none());
        store
            .put(
                quiver_api::resource::Kind::Service,
                "shop",
                name,
                prost::Message::encode_to_vec(&svc),
                None,
            )
            .await
            .unwrap();
    }
    assert!(store.service_addresses().await.unwrap().is_empty());
}

async fn backfilled(server: TestServer) {
    let mut c = server.admin().await;
    let listed = shop_services(&mut c).await;
    let got: BTreeSet<Ipv4Addr> = listed.items.iter().map(address).collect();
    assert_eq!(
        got,
        [Ipv4Addr::new(10, 250, 0, 1), Ipv4Addr::new(10, 250, 0, 2)]
            .into_iter()
            .collect(),
        "each stored Service got its own address in the range: {listed:?}"
    );
    // The claims were recorded: the range is full for a third.
    let full = c
        .apply_service(doc::<v1::Service>(&service_like_reviews("charlie")))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    // And a re-apply of a backfilled Service keeps its address, unchanged.
    let before = listed
        .items
        .iter()
        .find(|s| s.metadata.as_ref().unwrap().name == "alpha");
    let again = c
        .apply_service(doc::<v1::Service>(&service_like_reviews("alpha")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome, v1::ApplyOutcome::Unchanged as i32);
    assert_eq!(address(&again.service.unwrap()), address(before.unwrap()));
    server.stop().await;
}

#[tokio::test]
async fn services_stored_without_an_address_get_one_at_start_on_sqlite() {
    let db = SqliteTestDb::create();
    stored_without_addresses(db.store().await).await;
    let server = TestServer::start_with(None, db.dir.path(), &["--service-vip-range", TINY]).await;
    backfilled(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_stored_without_an_address_get_one_at_start_on_postgres() {
    let db = common::PgTestDb::create().await;
    stored_without_addresses(db.store().await).await;
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::start_with(Some(&db.url), dir.path(), &["--service-vip-range", TINY]).await;
    backfilled(server).await;
}
