//! Who may call what on the discovery listener: Renew signs exactly the caller's id, and
//! Renew/Register/Watch are refused without a client certificate or with a foreign one.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::time::Duration;

use common::mesh::{self, registration};
use common::{REVIEWS_SERVICE, SqliteTestDb, TestServer, doc};
use quiver_api::SpiffeId;
use quiver_api::certs::{self, CertificateAuthority};
use quiver_api::tls::MeshIdentity;
use quiver_api::v1::{self, mesh_discovery_client::MeshDiscoveryClient};
use quiver_control::discovery::client;
use tonic::Code;

/// A CSR whose SAN claims another identity: the server must ignore it.
fn greedy_csr() -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://mesh.local/ns/quiver-system/sa/control-plane"
            .try_into()
            .unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    (key.serialize_pem(), csr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_signs_exactly_the_callers_id_and_needs_a_mesh_certificate() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    server
        .admin()
        .await
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    let proxy = mesh::join(&server, "shop", "reviews").await;

    // The server proves to be the control plane.
    // (Checked by the SPIFFE verifier in the client config: chain to the bundle, one SVID.)
    let (key_pem, csr_der) = greedy_csr();
    let renewed = proxy
        .client()
        .await
        .renew(v1::RenewRequest { csr_der })
        .await
        .expect("renew over mTLS")
        .into_inner();
    assert_eq!(renewed.spiffe_id, "spiffe://mesh.local/ns/shop/sa/reviews");
    let chain = certs::certs_from_pem(&renewed.cert_chain_pem).unwrap();
    assert_eq!(
        certs::spiffe_id_of(&chain[0]).unwrap().as_str(),
        "spiffe://mesh.local/ns/shop/sa/reviews",
        "the certificate carries the caller's id, not the CSR's"
    );
    // The renewed SVID works on the next call.
    let renewed_proxy = mesh::Proxy {
        chain_pem: renewed.cert_chain_pem,
        key_pem,
        ..proxy
    };
    renewed_proxy
        .client()
        .await
        .register(registration("reviews", "127.0.0.1:20003", "v1"))
        .await
        .expect("register with the renewed SVID");

    // No client certificate: Renew, Register and Watch are refused.
    let mut anon = mesh::anonymous(server.discovery, &renewed_proxy.bundle_pem).await;
    let (_, csr_der) = certs::new_key_and_csr().unwrap();
    let err = anon.renew(v1::RenewRequest { csr_der }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("client certificate"), "{err:?}");
    let err = anon
        .register(registration("reviews", "127.0.0.1:20004", "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = anon
        .watch(v1::ProxyWatchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // The plain API port has no client certificates at all.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = MeshDiscoveryClient::new(channel)
        .watch(v1::ProxyWatchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A certificate for the same SPIFFE id from another CA is refused by the handshake.
    let foreign = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let forged = foreign
        .issue(
            &SpiffeId::parse("spiffe://mesh.local/ns/shop/sa/reviews").unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    // Trust the real server, present the forged client certificate.
    let id = MeshIdentity::from_pem(
        &forged.chain_pem,
        &forged.key_pem,
        &renewed_proxy.bundle_pem,
    )
    .unwrap();
    let tls = id
        .pinned_client_config(&mesh::control_plane(), &[b"h2"])
        .unwrap();
    let refused = match client::connect(server.discovery, tls).await {
        Err(_) => true,
        Ok(channel) => {
            let (_, csr_der) = certs::new_key_and_csr().unwrap();
            MeshDiscoveryClient::new(channel)
                .renew(v1::RenewRequest { csr_der })
                .await
                .is_err()
        }
    };
    assert!(refused, "a certificate from a foreign CA must not renew");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_is_refused_for_services_the_caller_cannot_front() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    server
        .admin()
        .await
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    let web = mesh::join(&server, "shop", "web").await;
    let mut c = web.client().await;
    let err = c
        .register(registration("reviews", "127.0.0.1:20005", "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().starts_with("service:"), "{err:?}");
    let err = c
        .register(registration("ghost", "127.0.0.1:20005", "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = c
        .register(registration("web", "0.0.0.0:15443", "v1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("address:"), "{err:?}");
    let err = c
        .watch(v1::ProxyWatchRequest {
            services: vec!["reviews".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_planes_namespace_is_reserved() {
    // The operator's CA, so the test can mint what a join token for quiver-system would give.
    let db = SqliteTestDb::create();
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let (cert, key) = (db.dir.path().join("ca.pem"), db.dir.path().join("ca.key"));
    std::fs::write(&cert, ca.cert_pem()).unwrap();
    std::fs::write(&key, ca.key_pem()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let server = TestServer::start_with(
        None,
        db.dir.path(),
        &[
            "--ca-cert",
            cert.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let mut admin = server.admin().await;

    // No Service (nor any other resource) in quiver-system.
    let service = REVIEWS_SERVICE.replace("namespace: shop", "namespace: quiver-system");
    let err = admin
        .apply_service(doc::<v1::Service>(&service))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("metadata.namespace") && err.message().contains("reserved"),
        "{err:?}"
    );
    let route = common::route_yaml("r", 50).replace("namespace: shop", "namespace: quiver-system");
    let err = admin
        .apply_route(doc::<v1::Route>(&route))
        .await
        .unwrap_err();
    assert!(err.message().contains("reserved"), "{err:?}");

    // No join token for it: nobody can obtain a certificate there.
    let err = admin
        .create_join_token(v1::CreateJoinTokenRequest {
            namespace: "quiver-system".into(),
            service_account: "control-plane".into(),
            ttl: "10m".into(),
            uses: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("namespace:") && err.message().contains("reserved"),
        "{err:?}"
    );

    // No workload either, even for a certificate of that namespace (the control plane's own
    // included).
    for sa in ["web", "control-plane"] {
        let issued = ca
            .issue(
                &SpiffeId::workload("mesh.local", "quiver-system", sa).unwrap(),
                Duration::from_secs(600),
            )
            .unwrap();
        let id = MeshIdentity::from_pem(&issued.chain_pem, &issued.key_pem, ca.cert_pem()).unwrap();
        let tls = id
            .pinned_client_config(&mesh::control_plane(), &[b"h2"])
            .unwrap();
        let mut client =
            MeshDiscoveryClient::new(client::connect(server.discovery, tls).await.unwrap());
        let err = client
            .register(registration("reviews", "127.0.0.1:15443", "v1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{sa}: {err:?}");
        assert!(err.message().contains("reserved"), "{sa}: {err:?}");
    }
    server.stop().await;
}
