//! Identity rotation. In static mode: rewritten certificate files are picked up without a
//! restart, new connections use them, live ones are not disturbed, and bad files are ignored.
//! In a joined mesh: the mesh CA's root is rotated (`RotateCa`) and retired (`RetireCa`) on
//! one control-plane replica while the proxies follow another, under continuous traffic.
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

/// GET `/ca-rotation` through `addr`: Ok, or the status and `quiver-error` header.
async fn call_mesh(addr: std::net::SocketAddr) -> Result<(), String> {
    let req = Request::get("/ca-rotation")
        .header("host", "reviews")
        .body(Full::new(Bytes::new()))
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), send_h1_checked(addr, req)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e),
        Ok(Ok((200, _))) => Ok(()),
        Ok(Ok((status, error))) => Err(format!("status {status} quiver-error {error:?}")),
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, quiver-error) or the I/O error.
async fn send_h1_checked(
    addr: std::net::SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let error = resp
        .headers()
        .get("quiver-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let status = resp.status().as_u16();
    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    Ok((status, error))
}

/// A proxy's `/config` identity block.
async fn identity_of(proxy: &quiver_tests::mesh::MeshProxy) -> serde_json::Value {
    let (_, body) = quiver_tests::mesh::admin_get(proxy.admin, "/config")
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    doc["identity"].clone()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Rotate the mesh root on replica B while proxies follow replica A (same Postgres) and web
/// calls reviews without pause: the new bundle reaches both proxies (A read B's rotation
/// from the store), they renew onto the new root (svid-ttl 12 s), retiring is refused while
/// they have not and then accepted, every request succeeds throughout, and afterwards each
/// proxy holds a new-root certificate and trusts the new root alone; a certificate from the
/// old root is refused by a proxy, one from the new root is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mesh_root_rotates_and_retires_under_traffic_without_a_failed_request() {
    use quiver_api::v1;
    use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    quiver_tests::init_log();
    let dir = quiver_tests::pki::temp_dir("ca-rotation");
    let db = Db::postgres().await;
    let cp = ControlPlane::start(&db, &dir, &["--svid-ttl", "12s"]).await;
    let other = ControlPlane::start(&db, &dir, &["--svid-ttl", "12s"]).await;
    let app = quiver_tests::apps::serve_http_echo_with(
        "127.0.0.1:0".parse().unwrap(),
        quiver_tests::apps::Behaviour {
            tag: "ca-rotation-reviews".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    cp.apply(&format!(
        r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http1, targetPort: 1}}]
---
apiVersion: quiver.dev/v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, protocol: http1, targetPort: {}}}]
"#,
        app.port()
    ))
    .await;
    let ca = cp.write_ca(&dir).await;
    let spec = |service, token, outbound| ProxySpec {
        service,
        token,
        labels: &[],
        outbound,
        extra: &[],
    };
    let reviews = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "reviews",
            cp.join_token("default", "reviews", 1, "10m").await,
            &[],
        ),
    )
    .await;
    let web = MeshProxy::start(
        &cp,
        &ca,
        &dir,
        spec(
            "web",
            cp.join_token("default", "web", 1, "10m").await,
            &[("reviews", "http1")],
        ),
    )
    .await;
    // A certificate from the old root, kept for the end.
    let old_files = cp
        .issue_identity("default", "reviews-client", &dir.join("old-root"))
        .await;

    // Continuous traffic web -> reviews, one request every few milliseconds.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let outbound = web.outbound[0];
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call_mesh(outbound).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.lock().unwrap().push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    quiver_tests::eventually("web reaches reviews", Duration::from_secs(20), || async {
        (ok.load(Ordering::Relaxed) > 20).then_some(())
    })
    .await;
    // Failures before the rotation are the mesh coming up, not the rotation.
    failed.lock().unwrap().clear();

    let mut admin = other.admin().await;
    let before = admin
        .get_ca_status(v1::GetCaStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.phase, "single-root");
    let old_root = before.certificates[0].clone();
    assert_eq!(old_root.role, "root");

    let rotated = admin
        .rotate_ca(v1::RotateCaRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.phase, "overlap");
    let roles: Vec<&str> = rotated
        .certificates
        .iter()
        .map(|c| c.role.as_str())
        .collect();
    assert_eq!(roles, ["root", "intermediate", "retiring-root"]);
    let (new_root, new_signer) = (
        rotated.certificates[0].clone(),
        rotated.certificates[1].clone(),
    );
    assert_ne!(new_root.fingerprint, old_root.fingerprint);
    assert_eq!(rotated.certificates[2].fingerprint, old_root.fingerprint);
    // A second rotation before the first is retired is refused.
    let again = admin.rotate_ca(v1::RotateCaRequest {}).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);

    // Retiring now is refused, naming who still holds old-root certificates.
    let early = admin
        .retire_ca(v1::RetireCaRequest { force: false })
        .await
        .unwrap_err();
    assert_eq!(early.code(), tonic::Code::FailedPrecondition);
    assert!(
        early
            .message()
            .contains("spiffe://mesh.local/ns/default/sa/web"),
        "{}",
        early.message()
    );

    // Replica A picks the rotation up from the store and pushes old + new root to both.
    for proxy in [&web, &reviews] {
        quiver_tests::eventually(
            &format!("{} trusts both roots", proxy.name),
            Duration::from_secs(10),
            || async {
                let bundle = strings(&identity_of(proxy).await["trust_bundle"]);
                (bundle.contains(&new_root.subject) && bundle.contains(&old_root.subject))
                    .then_some(())
            },
        )
        .await;
    }
    // Both renew onto the new intermediate (within 2/3 of 12 s); then retiring is accepted.
    let retired = quiver_tests::eventually(
        "the old root can be retired",
        Duration::from_secs(40),
        || async {
            let mut admin = other.admin().await;
            admin
                .retire_ca(v1::RetireCaRequest { force: false })
                .await
                .ok()
                .map(tonic::Response::into_inner)
        },
    )
    .await;
    assert_eq!(retired.retired, 1);
    assert_eq!(retired.phase, "single-root");
    assert!(retired.old_root_holders.is_empty());

    // Each proxy: certificate from the new intermediate, the new root alone trusted, and
    // one more renewal through the control plane afterwards (its listener now presents a
    // new-root certificate, which the proxies accept; they present theirs, which it accepts).
    for proxy in [&web, &reviews] {
        let reloads = identity_of(proxy).await["reloads"].as_u64().unwrap();
        quiver_tests::eventually(
            &format!("{} on the new root only, renewed again", proxy.name),
            Duration::from_secs(30),
            || async {
                let id = identity_of(proxy).await;
                let chain = strings(&id["cert_chain"]);
                let bundle = strings(&id["trust_bundle"]);
                (chain.get(1) == Some(&new_signer.subject)
                    && bundle == [new_root.subject.clone()]
                    && id["reloads"].as_u64().unwrap() > reloads)
                    .then_some(())
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across rotate, renewals and retire: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests");

    // A proxy whose certificate comes from the old root is refused by reviews; one with a
    // certificate from the new root is not (same kind of client, same bundle).
    let reviews_addr: std::net::SocketAddr =
        cp.workloads("default", "reviews").await[0].parse().unwrap();
    let bundle_now = admin
        .get_trust_bundle(v1::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner()
        .pem;
    std::fs::write(&old_files.bundle, &bundle_now).unwrap();
    // A proxy that starts now with the new bundle alone joins, renews over a fresh mTLS
    // connection and serves: the discovery listener presents a new-root certificate and
    // accepts new-root client certificates on new handshakes.
    let new_ca = dir.join("mesh-ca-new.pem");
    std::fs::write(&new_ca, &bundle_now).unwrap();
    let late = MeshProxy::start(
        &cp,
        &new_ca,
        &dir,
        spec(
            "web",
            cp.join_token("default", "web", 1, "10m").await,
            &[("reviews", "http1")],
        ),
    )
    .await;
    quiver_tests::eventually(
        "a proxy started after retirement reaches reviews",
        Duration::from_secs(20),
        || async { call_mesh(late.outbound[0]).await.ok() },
    )
    .await;
    let new_files = cp
        .issue_identity("default", "reviews-client", &dir.join("new-root"))
        .await;
    let peer = "spiffe://mesh.local/ns/default/sa/reviews";
    let old_client = RunningProxy::start(&client_yaml(&old_files, reviews_addr, peer), &dir)
        .await
        .unwrap();
    let (head, _) = send_h1(old_client.bound.outbound[0], get("/old-root")).await;
    assert_eq!(head.status(), 502);
    assert_eq!(head.headers()["quiver-error"], "peer-handshake");
    let new_client = RunningProxy::start(&client_yaml(&new_files, reviews_addr, peer), &dir)
        .await
        .unwrap();
    let (head, _) = send_h1(new_client.bound.outbound[0], get("/new-root")).await;
    assert_ne!(
        head.headers()
            .get("quiver-error")
            .map(|v| v.to_str().unwrap()),
        Some("peer-handshake"),
        "status {}",
        head.status()
    );
}
