//! mTLS refusals: every peer that cannot prove the right identity is refused, and the app
//! calling through the mesh gets an explicit reason, never an opaque failure.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use quiver_api::certs::CertificateAuthority;
use quiver_tests::client::send_h1;
use quiver_tests::harness::{Apps, RunningProxy, client_yaml, server_yaml};
use quiver_tests::pki::{AnyServer, Pki};

fn get() -> Request<Full<Bytes>> {
    Request::get("/")
        .header("host", "echo")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// Metric value summed over the lines with `labels`, or 0 when absent.
fn metric(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    quiver_tests::metric_sum(metrics, name, labels) as u64
}

async fn server(pki: &Pki, files: quiver_tests::pki::IdentityFiles) -> (RunningProxy, Apps) {
    let apps = Apps::start().await;
    let b = RunningProxy::start(&server_yaml(&files, &apps, "1s"), &pki.dir)
        .await
        .expect("start B");
    (b, apps)
}

/// B saw no request from the mesh at all.
async fn assert_nothing_reached_the_app(b: &RunningProxy) {
    let (_, m) = b.admin_get("/metrics").await;
    assert_eq!(
        metric(&m, "quiver_requests_total", &["direction=\"inbound\""]),
        0,
        "a refused peer's request reached the app:\n{m}"
    );
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let pki = Pki::new();
    let (b, _) = server(&pki, pki.issue("b")).await;
    // A holds an SVID for sa/a from a foreign CA, but trusts our CA (so it accepts B).
    let foreign = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let leaf = foreign
        .issue(&pki.id("a"), Duration::from_secs(3600))
        .unwrap();
    let a_files = pki.write("a-foreign", &leaf, pki.ca.cert_pem());
    let a = RunningProxy::start(
        &client_yaml(&a_files, b.bound.quic, pki.id("b").as_str()),
        &pki.dir,
    )
    .await
    .unwrap();
    let (head, body) = send_h1(a.bound.outbound[0], get()).await;
    assert_eq!(head.status(), 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(head.headers()["quiver-error"], "peer-handshake");
    assert!(String::from_utf8_lossy(&body).contains("refused us"));
    assert_nothing_reached_the_app(&b).await;
    let (_, m) = b.admin_get("/metrics").await;
    assert!(
        metric(
            &m,
            "quiver_quic_handshakes_total",
            &["side=\"server\"", "result=\"failed\""]
        ) >= 1
    );
}

#[tokio::test]
async fn expired_client_cert_is_refused() {
    let pki = Pki::new();
    let (b, _) = server(&pki, pki.issue("b")).await;
    let a = RunningProxy::start(
        &client_yaml(&pki.issue_expired("a"), b.bound.quic, pki.id("b").as_str()),
        &pki.dir,
    )
    .await
    .unwrap();
    let (head, _) = send_h1(a.bound.outbound[0], get()).await;
    assert_eq!(head.status(), 502);
    assert_eq!(head.headers()["quiver-error"], "peer-handshake");
    assert_nothing_reached_the_app(&b).await;
}

#[tokio::test]
async fn server_with_an_unexpected_spiffe_id_is_refused() {
    let pki = Pki::new();
    let (b, _) = server(&pki, pki.issue("b")).await;
    // A expects sa/payments at B's address; B is sa/b.
    let a = RunningProxy::start(
        &client_yaml(&pki.issue("a"), b.bound.quic, pki.id("payments").as_str()),
        &pki.dir,
    )
    .await
    .unwrap();
    let (head, body) = send_h1(a.bound.outbound[0], get()).await;
    assert_eq!(head.status(), 502);
    assert_eq!(head.headers()["quiver-error"], "peer-identity-mismatch");
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("sa/b") && body.contains("sa/payments"),
        "{body}"
    );
    assert_nothing_reached_the_app(&b).await;
}

#[tokio::test]
async fn server_cert_from_another_ca_is_refused() {
    let pki = Pki::new();
    let foreign = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let leaf = foreign
        .issue(&pki.id("b"), Duration::from_secs(3600))
        .unwrap();
    // B trusts our CA (so it would accept A) but presents a foreign certificate.
    let (b, _) = server(&pki, pki.write("b-foreign", &leaf, pki.ca.cert_pem())).await;
    let a = RunningProxy::start(
        &client_yaml(&pki.issue("a"), b.bound.quic, pki.id("b").as_str()),
        &pki.dir,
    )
    .await
    .unwrap();
    let (head, body) = send_h1(a.bound.outbound[0], get()).await;
    assert_eq!(head.status(), 502);
    assert_eq!(head.headers()["quiver-error"], "peer-handshake");
    assert!(String::from_utf8_lossy(&body).contains("we refused the peer"));
    assert_nothing_reached_the_app(&b).await;
}

#[tokio::test]
async fn peer_without_a_client_cert_is_refused() {
    let pki = Pki::new();
    let (b, _) = server(&pki, pki.issue("b")).await;
    let provider = quiver_api::tls::provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));

    // TLS 1.3 lets the client finish before the server judges its (empty) certificate, so the
    // refusal may arrive on the handshake or on the first request: accept either, but demand
    // that no response ever comes and that the close is a TLS alert.
    let outcome = async {
        let conn = ep.connect(b.bound.quic, "quiver.mesh")?.await?;
        let (mut driver, mut send) =
            h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
        tokio::spawn(async move { driver.wait_idle().await });
        let req = Request::get("https://echo/")
            .header("quiver-target", "echo")
            .body(())
            .unwrap();
        let mut stream = send.send_request(req).await?;
        stream.finish().await?;
        let resp = stream.recv_response().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((resp.status(), conn))
    };
    match tokio::time::timeout(Duration::from_secs(10), outcome).await {
        Ok(Err(e)) => {
            let msg = e.to_string().to_lowercase();
            eprintln!("refusal seen by the certless peer: {msg}");
            // TLS alert 116 is certificate_required (RFC 8446 §6.2).
            assert!(
                msg.contains("error 116") || msg.contains("no certificates"),
                "unexpected refusal: {msg}"
            );
        }
        Ok(Ok((status, _))) => {
            panic!("a peer without a client certificate got a response: {status}")
        }
        Err(_) => panic!("no refusal within 10 s"),
    }
    assert_nothing_reached_the_app(&b).await;
    let (_, m) = b.admin_get("/metrics").await;
    assert!(
        metric(
            &m,
            "quiver_quic_handshakes_total",
            &["side=\"server\"", "result=\"failed\""]
        ) >= 1,
        "{m}"
    );
}

/// A hostile client keeps the session ticket of a connection made while its certificate was
/// valid and offers it after the certificate has expired. The serving proxy must judge the
/// certificate again (it issues no tickets and resumes nothing), so the second connection is
/// refused and nothing reaches the app. The client here is not a Quiver proxy: it keeps
/// rustls' default session cache, as an attacker would.
#[tokio::test]
async fn an_expired_client_cert_cannot_resume_a_session() {
    use rustls_pki_types::pem::PemObject;
    use std::time::SystemTime;

    let pki = Pki::new();
    let (b, _) = server(&pki, pki.issue("b")).await;
    let now = SystemTime::now();
    let not_after = now + Duration::from_secs(3);
    let leaf = pki
        .ca
        .issue_between(&pki.id("a"), now - Duration::from_secs(60), not_after)
        .unwrap();
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = quiver_api::tls::provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    // rustls' default resumption: an in-memory cache that stores the tickets servers send
    // and offers them on the next connection to the same server.
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let target = b.bound.quic;
    let call = || {
        let ep = ep.clone();
        async move {
            let conn = ep.connect(target, "quiver.mesh")?.await?;
            let (mut driver, mut send) =
                h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
            tokio::spawn(async move { driver.wait_idle().await });
            let req = Request::get("https://echo/")
                .header("quiver-target", "echo")
                .body(())
                .unwrap();
            let mut stream = send.send_request(req).await?;
            stream.finish().await?;
            let resp = stream.recv_response().await?;
            while stream.recv_data().await?.is_some() {}
            conn.close(0u32.into(), b"done");
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(resp.status())
        }
    };
    // While the certificate is valid: served (and, before the fix, handed a ticket).
    let first = tokio::time::timeout(Duration::from_secs(10), call())
        .await
        .expect("first call in time")
        .expect("the valid certificate is served");
    assert_eq!(first, 200);
    // Wait until the leaf has expired (a wait on the clock, not an assertion about time).
    let left = not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_secs(1)).await;
    match tokio::time::timeout(Duration::from_secs(10), call()).await {
        Ok(Err(e)) => {
            let msg = e.to_string().to_lowercase();
            eprintln!("refusal seen by the expired client: {msg}");
            // TLS alert 45 is certificate_expired (RFC 8446 §6.2).
            assert!(
                msg.contains("error 45") || msg.contains("expired"),
                "unexpected refusal: {msg}"
            );
        }
        Ok(Ok(status)) => {
            panic!("an expired certificate was served on a resumed session: {status}")
        }
        Err(_) => panic!("no answer within 10 s"),
    }
    let (_, m) = b.admin_get("/metrics").await;
    assert_eq!(
        metric(&m, "quiver_requests_total", &["direction=\"inbound\""]),
        1,
        "only the call made while the certificate was valid reached the app:\n{m}"
    );
}
