//! Revocation on the control plane, over real TLS sockets, on SQLite and Postgres: a
//! certificate is renewable only while its identity is entitled (its Service exists, it is not
//! revoked); a revoked identity is refused on every discovery call and with join tokens made
//! before the revocation, its revocation is pushed to every Watch stream and survives a
//! restart, and a fresh join token issues certificates that work. (Proxies enforcing the
//! pushed deny-list on live traffic: `tests/tests/revocation.rs`.)
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use common::mesh::{self, Watcher, registration};
use common::{PgTestDb, REVIEWS_SERVICE, SqliteTestDb, TestServer, doc};
use quiver_api::certs;
use quiver_api::v1;
use tonic::Code;

const REVIEWS_ID: &str = "spiffe://mesh.local/ns/shop/sa/reviews";

const WEB_SERVICE: &str = r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 8080, protocol: http1}]
"#;

async fn renew(
    proxy: &mesh::Proxy,
    at: std::net::SocketAddr,
) -> Result<v1::RenewResponse, tonic::Status> {
    let (_, csr_der) = certs::new_key_and_csr().unwrap();
    proxy
        .client_to(at)
        .await
        .renew(v1::RenewRequest { csr_der })
        .await
        .map(tonic::Response::into_inner)
}

fn revoke_identity(id: &str, reason: &str) -> v1::RevokeRequest {
    v1::RevokeRequest {
        target: Some(v1::revoke_request::Target::SpiffeId(id.into())),
        namespace: String::new(),
        reason: reason.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_is_refused_once_the_service_is_deleted() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let mut admin = server.admin().await;
    admin
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    let proxy = mesh::join(&server, "shop", "reviews").await;
    renew(&proxy, server.discovery)
        .await
        .expect("renewal while the Service exists");

    admin
        .delete_service(v1::DeleteRequest {
            namespace: "shop".into(),
            name: "reviews".into(),
            resource_version: 0,
        })
        .await
        .unwrap();
    let err = renew(&proxy, server.discovery).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("no Service in namespace shop runs as service account \"reviews\""),
        "{err:?}"
    );

    // Entitled again once a Service runs as the identity.
    admin
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    renew(&proxy, server.discovery)
        .await
        .expect("renewal once the Service is back");
    server.stop().await;
}

/// Revoke `reviews` while `web` watches; everything a revoked certificate or an old join
/// token tries is refused; a fresh token rejoins; the revocation survives a restart.
async fn revoke_refuse_rejoin_restart(db_url: Option<&str>, dir: &std::path::Path) {
    let server = TestServer::start(db_url, dir).await;
    let mut admin = server.admin().await;
    admin
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    admin
        .apply_service(doc::<v1::Service>(WEB_SERVICE))
        .await
        .unwrap();
    // A token with a use left over: the leaked one.
    let old_token = mesh::join_token(&server, "shop", "reviews", 2).await;
    let stolen = mesh::join_with(&server, &old_token).await.unwrap();
    assert_eq!(stolen.spiffe_id, REVIEWS_ID);
    let web = mesh::join(&server, "shop", "web").await;
    let mut web_client = web.client().await;
    let mut watch = Watcher::open(&mut web_client, &["web"]).await;
    let first = watch.until("the first snapshot", |_| true).await;
    assert!(first.revocations.is_empty(), "{:?}", first.revocations);
    // The revoked proxy's own Watch, open before the revocation.
    let mut stolen_client = stolen.client().await;
    let mut stolen_watch = Watcher::open(&mut stolen_client, &["reviews"]).await;
    stolen_watch.until("the first snapshot", |_| true).await;

    let revoked = admin
        .revoke(revoke_identity(REVIEWS_ID, "key leaked"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.spiffe_id, REVIEWS_ID);
    assert_eq!(revoked.reason, "key leaked");
    let stolen_not_before =
        certs::not_before_unix(&certs::certs_from_pem(&stolen.chain_pem).unwrap()[0]).unwrap();
    assert!(revoked.not_before_unix > stolen_not_before);

    // Pushed to every Watch stream.
    let pushed = watch
        .until("the deny-list names reviews", |s| !s.revocations.is_empty())
        .await;
    assert_eq!(pushed.revocations, vec![revoked.clone()]);
    // The revoked proxy's stream ends, saying why.
    let ended = loop {
        match stolen_watch.stream.message().await {
            Ok(Some(_)) => {}
            other => break other,
        }
    };
    let err = ended.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("is revoked"), "{err:?}");

    // The revoked certificate: no renewal, no registration, no new Watch.
    let err = renew(&stolen, server.discovery).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains(&format!("{REVIEWS_ID} is revoked")),
        "{err:?}"
    );
    let err = stolen
        .client()
        .await
        .register(registration("reviews", "127.0.0.1:20010", "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = stolen
        .client()
        .await
        .watch(v1::ProxyWatchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // The leaked token's last use.
    let err = mesh::join_with(&server, &old_token).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("was made before"), "{err:?}");

    // A fresh token: a certificate from the revocation's instant on, which works.
    let fresh_token = mesh::join_token(&server, "shop", "reviews", 1).await;
    let fresh = mesh::join_with(&server, &fresh_token)
        .await
        .expect("fresh join");
    let fresh_not_before =
        certs::not_before_unix(&certs::certs_from_pem(&fresh.chain_pem).unwrap()[0]).unwrap();
    assert!(fresh_not_before >= revoked.not_before_unix);
    fresh
        .client()
        .await
        .register(registration("reviews", "127.0.0.1:20011", "v1"))
        .await
        .expect("the rejoined proxy registers");
    let renewed = renew(&fresh, server.discovery)
        .await
        .expect("the rejoined proxy renews");
    let renewed_not_before =
        certs::not_before_unix(&certs::certs_from_pem(&renewed.cert_chain_pem).unwrap()[0])
            .unwrap();
    assert!(renewed_not_before >= revoked.not_before_unix);

    let listed = admin
        .list_revocations(v1::ListRevocationsRequest {})
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed, vec![revoked.clone()]);

    // Stored: a restarted control plane still refuses and still pushes it.
    drop(web_client);
    drop(stolen_client);
    server.stop().await;
    let server = TestServer::start(db_url, dir).await;
    let listed = server
        .admin()
        .await
        .list_revocations(v1::ListRevocationsRequest {})
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed, vec![revoked.clone()]);
    let err = renew(&stolen, server.discovery).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut web_client = web.client_to(server.discovery).await;
    let mut watch = Watcher::open(&mut web_client, &["web"]).await;
    let first = watch.until("the first snapshot", |_| true).await;
    assert_eq!(first.revocations, vec![revoked]);
    renew(&fresh, server.discovery)
        .await
        .expect("the rejoined proxy still renews");
    drop(web_client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_identity_is_refused_until_it_rejoins_on_sqlite() {
    let db = SqliteTestDb::create();
    revoke_refuse_rejoin_restart(None, db.dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_identity_is_refused_until_it_rejoins_on_postgres() {
    let db = PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    revoke_refuse_rejoin_restart(Some(&db.url), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_workload_revokes_its_identity_and_removes_the_endpoint() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let mut admin = server.admin().await;
    admin
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    let proxy = mesh::join(&server, "shop", "reviews").await;
    let registered = proxy
        .client()
        .await
        .register(registration("reviews", "127.0.0.1:20020", "v1"))
        .await
        .unwrap()
        .into_inner();
    let name = registered.workload.unwrap().metadata.unwrap().name;

    let revoked = admin
        .revoke(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::Workload(name.clone())),
            namespace: "shop".into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.spiffe_id, REVIEWS_ID);
    assert_eq!(revoked.workload, format!("shop/{name}"));
    let workloads = admin
        .list_workloads(v1::ListRequest {
            namespace: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(workloads.is_empty(), "{workloads:?}");
    let err = proxy
        .client()
        .await
        .keep_alive(v1::KeepAliveRequest {
            name,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_refuses_bad_input_naming_the_field() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let mut admin = server.admin().await;
    let cases: Vec<(v1::RevokeRequest, Code, &str)> = vec![
        (
            v1::RevokeRequest::default(),
            Code::InvalidArgument,
            "target: give a workload or a spiffeId",
        ),
        (
            revoke_identity("reviews", ""),
            Code::InvalidArgument,
            "spiffeId:",
        ),
        (
            revoke_identity("spiffe://other.domain/ns/shop/sa/reviews", ""),
            Code::InvalidArgument,
            "spiffeId: spiffe://other.domain/ns/shop/sa/reviews is not in this mesh's trust domain",
        ),
        (
            revoke_identity("spiffe://mesh.local/some/path", ""),
            Code::InvalidArgument,
            "spiffeId: spiffe://mesh.local/some/path is not a workload identity",
        ),
        (
            revoke_identity(REVIEWS_ID, &"x".repeat(300)),
            Code::InvalidArgument,
            "reason: longer than 256 characters",
        ),
        (
            v1::RevokeRequest {
                target: Some(v1::revoke_request::Target::Workload("nosuch".into())),
                namespace: "shop".into(),
                reason: String::new(),
            },
            Code::NotFound,
            "workload: shop/nosuch is not registered",
        ),
        (
            v1::RevokeRequest {
                target: Some(v1::revoke_request::Target::Workload("w".into())),
                namespace: "Bad_NS".into(),
                reason: String::new(),
            },
            Code::InvalidArgument,
            "namespace: \"Bad_NS\" is not a DNS label",
        ),
    ];
    for (req, code, message) in cases {
        let err = admin.revoke(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(err.message().contains(message), "{req:?}: {err:?}");
    }
    // A viewer may list, not revoke.
    let viewer = admin
        .create_api_token(v1::CreateApiTokenRequest {
            role: "viewer".into(),
            description: String::new(),
            ttl: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut as_viewer = server.client(Some(&viewer)).await;
    let err = as_viewer
        .revoke(revoke_identity(REVIEWS_ID, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        as_viewer
            .list_revocations(v1::ListRevocationsRequest {})
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
    server.stop().await;
}

/// Two replicas on one Postgres: a revocation made through one reaches the proxies watching
/// the other (its one-second poll of the table) and is enforced there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_one_replica_is_pushed_and_enforced_by_the_other() {
    let db = PgTestDb::create().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestServer::start(Some(&db.url), dir_a.path()).await;
    let b = TestServer::start(Some(&db.url), dir_b.path()).await;
    let mut admin_a = a.admin().await;
    admin_a
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    admin_a
        .apply_service(doc::<v1::Service>(WEB_SERVICE))
        .await
        .unwrap();
    let reviews = mesh::join(&a, "shop", "reviews").await;
    let web = mesh::join(&a, "shop", "web").await;
    let mut web_on_b = web.client_to(b.discovery).await;
    let mut watch = Watcher::open(&mut web_on_b, &["web"]).await;
    watch.until("the first snapshot", |_| true).await;

    let revoked = admin_a
        .revoke(revoke_identity(REVIEWS_ID, ""))
        .await
        .unwrap()
        .into_inner();
    let pushed = watch
        .until("replica B pushes the revocation made on A", |s| {
            !s.revocations.is_empty()
        })
        .await;
    assert_eq!(pushed.revocations, vec![revoked]);
    let err = reviews
        .client_to(b.discovery)
        .await
        .register(registration("reviews", "127.0.0.1:20030", "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = renew(&reviews, b.discovery).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    drop(web_on_b);
    a.stop().await;
    b.stop().await;
}
