//! Identity rotation in static mode: rewritten certificate files are picked up without a
//! restart, new connections use them, live ones are not disturbed, and bad files are ignored.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use quiver_api::certs::CertificateAuthority;
use quiver_tests::client::send_h1;
use quiver_tests::harness::{Apps, RunningProxy, client_yaml, server_yaml};
use quiver_tests::pki::{IdentityFiles, Pki};

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Turn on a fast file check for the identity block of a generated config.
fn with_reload(yaml: String) -> String {
    yaml.replacen("}\nlisten:", ", reload_interval: 100ms}\nlisten:", 1)
}

/// Overwrite `files` with a new SVID for `sa` from `ca` (key first, then the certificate).
fn rotate(files: &IdentityFiles, ca: &CertificateAuthority, pki: &Pki, sa: &str) {
    // A longer lifetime than the first certificate, so /config shows which one is in use.
    let leaf = ca.issue(&pki.id(sa), Duration::from_secs(7200)).unwrap();
    std::fs::write(&files.key, &leaf.key_pem).unwrap();
    std::fs::write(&files.cert, &leaf.chain_pem).unwrap();
}

fn metric(m: &str, needle: &str) -> bool {
    m.lines().any(|l| l == needle)
}

#[tokio::test]
async fn a_rotated_certificate_is_used_for_new_connections_without_restart() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let b = RunningProxy::start(&server_yaml(&pki.issue("b"), &apps, "1s"), &pki.dir)
        .await
        .unwrap();
    // A starts with a certificate B does not trust.
    let foreign = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let a_files = pki.write(
        "a-rotating",
        &foreign
            .issue(&pki.id("a"), Duration::from_secs(3600))
            .unwrap(),
        pki.ca.cert_pem(),
    );
    let a = RunningProxy::start(
        &with_reload(client_yaml(&a_files, b.bound.quic, pki.id("b").as_str())),
        &pki.dir,
    )
    .await
    .unwrap();
    let (head, _) = send_h1(a.bound.outbound[0], get("/")).await;
    assert_eq!(head.status(), 502);
    assert_eq!(head.headers()["quiver-error"], "peer-handshake");
    let (_, before) = a.admin_get("/config").await;
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();

    // An operator (or cert-manager) rotates the files to a certificate from the mesh CA.
    rotate(&a_files, &pki.ca, &pki, "a");
    quiver_tests::eventually(
        "requests succeed after rotation",
        Duration::from_secs(10),
        || async {
            let (head, _) = send_h1(a.bound.outbound[0], get("/")).await;
            (head.status() == 200).then_some(())
        },
    )
    .await;
    let (_, after) = a.admin_get("/config").await;
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(after["identity"]["reloads"], 1);
    assert_ne!(
        after["identity"]["cert_not_after_unix"],
        before["identity"]["cert_not_after_unix"]
    );
    let (_, m) = a.admin_get("/metrics").await;
    assert!(
        metric(&m, "quiver_identity_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn rotation_does_not_disturb_a_request_in_flight_and_bad_files_are_ignored() {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let b_files = pki.issue("b");
    let b = RunningProxy::start(&with_reload(server_yaml(&b_files, &apps, "1s")), &pki.dir)
        .await
        .unwrap();
    let a = RunningProxy::start(
        &client_yaml(&pki.issue("a"), b.bound.quic, pki.id("b").as_str()),
        &pki.dir,
    )
    .await
    .unwrap();
    let addr = a.bound.outbound[0];
    let slow = tokio::spawn(async move {
        let req = Request::post("/sleep/1200?rotation-test")
            .header("host", "echo")
            .body(Full::new(Bytes::from(vec![b'r'; 100_000])))
            .unwrap();
        send_h1(addr, req).await
    });
    quiver_tests::eventually("request inside the app", Duration::from_secs(5), || async {
        (quiver_tests::apps::sleeping("rotation-test") == 1).then_some(())
    })
    .await;
    rotate(&b_files, &pki.ca, &pki, "b");
    quiver_tests::eventually("B reloaded", Duration::from_secs(5), || async {
        let (_, m) = b.admin_get("/metrics").await;
        metric(&m, "quiver_identity_reloads_total{result=\"ok\"} 1").then_some(())
    })
    .await;
    let (head, body) = slow.await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(body == vec![b'r'; 100_000], "body cut by the rotation");

    // Garbage in the certificate file: counted, logged, and the proxy keeps its identity.
    std::fs::write(&b_files.cert, "not a certificate").unwrap();
    quiver_tests::eventually("failed reload counted", Duration::from_secs(5), || async {
        let (_, m) = b.admin_get("/metrics").await;
        m.lines()
            .any(|l| l.starts_with("quiver_identity_reloads_total{result=\"failed\"}"))
            .then_some(())
    })
    .await;
    let (head, _) = send_h1(addr, get("/after-bad-files")).await;
    assert_eq!(head.status(), 200);
    let (_, cfg) = b.admin_get("/config").await;
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        cfg["identity"]["spiffe_id"],
        "spiffe://mesh.local/ns/default/sa/b"
    );
    assert_eq!(cfg["identity"]["reloads"], 1);
}
