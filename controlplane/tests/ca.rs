//! The CA through the API: join tokens, CSRs, SVIDs and the trust bundle.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{SqliteTestDb, TestServer};
use quiver_api::certs::{self, CertificateAuthority};
use quiver_api::v1::{self, mesh_discovery_client::MeshDiscoveryClient};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::UnixTime;
use tonic::Code;

async fn identity_client(server: &TestServer) -> MeshDiscoveryClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    MeshDiscoveryClient::new(channel)
}

async fn join_token(server: &TestServer, ttl: &str, uses: u32) -> v1::CreateJoinTokenResponse {
    server
        .admin()
        .await
        .create_join_token(v1::CreateJoinTokenRequest {
            namespace: "shop".into(),
            service_account: "web".into(),
            ttl: ttl.into(),
            uses,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Does `chain` verify against `bundle_pem` as a client certificate would?
fn verifies(chain_pem: &str, bundle_pem: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs::certs_from_pem(bundle_pem).unwrap() {
        roots.add(c).unwrap();
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), quiver_api::tls::provider())
            .build()
            .unwrap();
    let chain = certs::certs_from_pem(chain_pem).unwrap();
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .is_ok()
}

#[tokio::test]
async fn join_issues_a_24h_svid_for_the_entitled_id_only() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let token = join_token(&server, "10m", 1).await;
    assert_eq!(token.spiffe_id, "spiffe://mesh.local/ns/shop/sa/web");
    assert!(token.token.starts_with("qvj_"));

    // The CSR asks for somebody else's identity; only its public key may be used.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://mesh.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().der().to_vec();

    let mut id = identity_client(&server).await;
    let resp = id
        .join(v1::JoinRequest {
            join_token: token.token.clone(),
            csr_der: csr,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.spiffe_id, "spiffe://mesh.local/ns/shop/sa/web");
    let chain = certs::certs_from_pem(&resp.cert_chain_pem).unwrap();
    assert_eq!(
        certs::spiffe_id_of(&chain[0]).unwrap().as_str(),
        "spiffe://mesh.local/ns/shop/sa/web",
        "exactly the entitled id, never the CSR's"
    );
    let not_after = certs::not_after(&chain[0]).unwrap();
    let want = SystemTime::now() + Duration::from_secs(24 * 3600);
    let off = want
        .duration_since(not_after)
        .unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(120), "expiry off by {off:?}");

    let bundle = id
        .get_trust_bundle(v1::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bundle.pem, resp.trust_bundle_pem);
    assert_eq!(bundle.trust_domain, "mesh.local");
    assert!(
        verifies(&resp.cert_chain_pem, &bundle.pem),
        "SVID verifies against the bundle"
    );
    let stranger = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    assert!(
        !verifies(&resp.cert_chain_pem, stranger.cert_pem()),
        "negative control"
    );

    // The one use is spent.
    let (_, csr) = certs::new_key_and_csr().unwrap();
    let err = id
        .join(v1::JoinRequest {
            join_token: token.token,
            csr_der: csr,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("used 1 times"), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn expired_unknown_and_malformed_requests_are_refused() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let mut id = identity_client(&server).await;
    let (_, csr) = certs::new_key_and_csr().unwrap();

    let short = join_token(&server, "1ms", 5).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let err = id
        .join(v1::JoinRequest {
            join_token: short.token,
            csr_der: csr.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("expired"), "{err:?}");

    let err = id
        .join(v1::JoinRequest {
            join_token: "qvj_not-a-token".into(),
            csr_der: csr.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A bad CSR does not use the token up.
    let once = join_token(&server, "1h", 1).await;
    let err = id
        .join(v1::JoinRequest {
            join_token: once.token.clone(),
            csr_der: b"not a csr".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("csrDer"), "{err:?}");
    id.join(v1::JoinRequest {
        join_token: once.token,
        csr_der: csr,
    })
    .await
    .expect("the token still has its use");

    let err = server
        .admin()
        .await
        .create_join_token(v1::CreateJoinTokenRequest {
            namespace: "Shop".into(),
            service_account: "".into(),
            ttl: "-5m".into(),
            uses: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for field in ["namespace", "serviceAccount", "ttl"] {
        assert!(err.message().contains(field), "{field} in {err:?}");
    }
    // A TTL past the maximum (or one that overflows) is refused, naming the field.
    for ttl in ["91d", "9999999999999999999d"] {
        let err = server
            .admin()
            .await
            .create_join_token(v1::CreateJoinTokenRequest {
                namespace: "shop".into(),
                service_account: "web".into(),
                ttl: ttl.into(),
                uses: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{ttl}");
        assert!(
            err.message().contains("ttl:") && err.message().contains("maximum"),
            "{err:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn the_ca_survives_restarts_and_operator_keys_must_be_private() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let first = identity_client(&server)
        .await
        .get_trust_bundle(v1::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    server.stop().await;
    let server = TestServer::start(None, db.dir.path()).await;
    let second = identity_client(&server)
        .await
        .get_trust_bundle(v1::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.pem, second.pem, "same root after a restart");
    let root = certs::certs_from_pem(&first.pem).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(&root[0]).unwrap();
    assert!(root.is_ca());
    match root.public_key().parsed().unwrap() {
        x509_parser::public_key::PublicKey::EC(ec) => assert_eq!(ec.key_size(), 256),
        other => panic!("root key is not ECDSA P-256: {other:?}"),
    }
    assert!(
        root.subject().to_string().contains("mesh.local"),
        "{}",
        root.subject()
    );
    server.stop().await;

    // An operator CA whose key is group-readable is refused, naming the fix.
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::write(&cert, ca.cert_pem()).unwrap();
    std::fs::write(&key, ca.key_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = <quiver_control::server::Config as clap::Parser>::try_parse_from([
        "quiver-control".to_string(),
        "--listen=127.0.0.1:0".into(),
        "--discovery-listen=127.0.0.1:0".into(),
        format!("--data-dir={}", data.path().display()),
        format!("--ca-cert={}", cert.display()),
        format!("--ca-key={}", key.display()),
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match quiver_control::server::start_on(&config, listener).await {
        Ok(_) => panic!("a 0644 CA key was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("chmod 600"), "{err}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = quiver_control::server::start_on(&config, listener)
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bundle = MeshDiscoveryClient::new(channel)
        .get_trust_bundle(v1::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bundle.pem, ca.cert_pem(), "the operator's CA is used");
    running.shutdown().await.unwrap();
}
