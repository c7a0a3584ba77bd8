//! Who may call what on the discovery listener: Renew signs exactly the caller's id, and
//! Renew/Register/Watch are refused without a client certificate, with a foreign one, or with
//! an expired one offered on a resumed TLS session.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

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

/// A control plane signing with an operator CA the test holds, so the test can mint
/// certificates the control plane would issue (with any validity it likes).
async fn with_operator_ca(dir: &Path) -> (CertificateAuthority, TestServer) {
    let ca = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    std::fs::write(&cert, ca.cert_pem()).unwrap();
    std::fs::write(&key, ca.key_pem()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let server = TestServer::start_with(
        None,
        dir,
        &[
            "--ca-cert",
            cert.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    (ca, server)
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
    let (ca, server) = with_operator_ca(db.dir.path()).await;
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

/// Dials one address with one rustls config, whatever URI tonic asks for. Every dial shares
/// the config's session cache, so a second dial offers the ticket the first one was given.
#[derive(Clone)]
struct ResumingDialer {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for ResumingDialer {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, tls) = (self.addr, self.tls.clone());
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::try_from("quiver-control")
                .map_err(std::io::Error::other)?;
            Ok(hyper_util::rt::TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// A hostile proxy keeps the TLS session of a connection made while its SVID was valid and
/// offers it after the SVID has expired. The discovery listener must judge the certificate
/// again (it keeps no session and sends no ticket), so the second Renew is refused. The
/// client is the proxy's own pinned config with rustls' default session cache put back, as
/// an attacker would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_svid_cannot_resume_a_session_on_the_discovery_listener() {
    let db = SqliteTestDb::create();
    let (ca, server) = with_operator_ca(db.dir.path()).await;
    server
        .admin()
        .await
        .apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    let now = SystemTime::now();
    let not_after = now + Duration::from_secs(3);
    let leaf = ca
        .issue_between(
            &SpiffeId::parse("spiffe://mesh.local/ns/shop/sa/reviews").unwrap(),
            now - Duration::from_secs(60),
            not_after,
        )
        .unwrap();
    let id = MeshIdentity::from_pem(&leaf.chain_pem, &leaf.key_pem, ca.cert_pem()).unwrap();
    let mut tls = id
        .pinned_client_config(&mesh::control_plane(), &[b"h2"])
        .unwrap()
        .into_inner();
    // rustls' default: an in-memory cache storing the tickets servers send, offered on the
    // next connection to the same server name.
    tls.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let dialer = ResumingDialer {
        addr: server.discovery,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
    };
    let renew = || {
        let dialer = dialer.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_static("http://quiver-control")
                .connect_with_connector(dialer)
                .await
                .map_err(|e| chain(&e))?;
            let (_, csr_der) = certs::new_key_and_csr().unwrap();
            MeshDiscoveryClient::new(channel)
                .renew(v1::RenewRequest { csr_der })
                .await
                .map(|r| r.into_inner().spiffe_id)
                .map_err(|e| chain(&e))
        }
    };

    // While the SVID is valid: renewed (and, with resumption on, handed a ticket).
    let first = tokio::time::timeout(Duration::from_secs(10), renew())
        .await
        .expect("first Renew in time")
        .expect("a valid SVID renews");
    assert_eq!(first, "spiffe://mesh.local/ns/shop/sa/reviews");
    // Wait until the leaf has expired (a wait on the clock, not an assertion about time).
    let left = not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_secs(1)).await;
    match tokio::time::timeout(Duration::from_secs(10), renew()).await {
        // TLS 1.3 lets the client finish first: the server's alert reaches the channel or
        // the call, which tonic reports either as the alert or as a closed connection.
        Ok(Err(e)) => eprintln!("Renew refused to the expired client: {e}"),
        Ok(Ok(id)) => panic!("an expired SVID renewed {id} on a resumed session"),
        Err(_) => panic!("no answer within 10 s"),
    }
    // Why, read straight off TLS with the same session cache: the certificate_expired alert
    // (RFC 8446 §6.2), where a resumed session would have read the server's HTTP/2 SETTINGS.
    let probe = async {
        use tokio::io::AsyncReadExt;
        let tcp = tokio::net::TcpStream::connect(server.discovery).await?;
        let name = rustls_pki_types::ServerName::try_from("quiver-control").unwrap();
        let mut stream = dialer.tls.connect(name, tcp).await?;
        let mut buf = [0u8; 64];
        stream.read(&mut buf).await
    };
    match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Ok(Err(e)) => assert!(
            e.to_string().contains("CertificateExpired"),
            "unexpected refusal: {e}"
        ),
        Ok(Ok(n)) => panic!("the server spoke to an expired SVID ({n} bytes)"),
        Err(_) => panic!("no answer within 10 s"),
    }
    server.stop().await;
}
