//! Server start-up: the first-start admin token, optional TLS, and Watch resume.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::time::Duration;

use common::{REVIEWS_SERVICE, SqliteTestDb, TestServer, doc, route_yaml_on, service_like_reviews};
use quiver_api::v1::{self, watch_event};
use quiver_control::server::{self, Config};

fn config(args: &[String]) -> Config {
    let mut all = vec![
        "quiver-control".to_string(),
        "--listen=127.0.0.1:0".into(),
        "--discovery-listen=127.0.0.1:0".into(),
    ];
    all.extend_from_slice(args);
    <Config as clap::Parser>::try_parse_from(all).expect("flags parse")
}

async fn start(config: &Config) -> server::Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    server::start_on(config, listener)
        .await
        .expect("server starts")
}

#[tokio::test]
async fn first_start_creates_an_admin_token_once() {
    let db = SqliteTestDb::create();
    let cfg = config(&[format!("--data-dir={}", db.dir.path().display())]);
    let running = start(&cfg).await;
    let token = running
        .new_admin_token
        .clone()
        .expect("a token on first start");
    assert!(token.starts_with("qvr_"));
    let (addr, discovery) = (running.addr, running.discovery_addr);
    let server = TestServer {
        running: Some(running),
        addr,
        discovery,
        admin: token.clone(),
        url: format!("http://{addr}"),
    };
    let status = server
        .admin()
        .await
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.role, "admin");
    let viewer = server
        .admin()
        .await
        .create_api_token(v1::CreateApiTokenRequest {
            role: "viewer".into(),
            description: String::new(),
            ttl: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    server.stop().await;

    // Only hashes are stored: no secret appears anywhere in the database files.
    let mut bytes = Vec::new();
    for f in ["quiver.db", "quiver.db-wal"] {
        bytes.extend(std::fs::read(db.dir.path().join(f)).unwrap_or_default());
    }
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        !contains(&token) && !contains(&viewer),
        "a token secret was stored"
    );
    assert!(
        contains(&quiver_control::auth::hash_secret(&viewer)),
        "the hash is what is stored"
    );

    let again = start(&cfg).await;
    assert_eq!(again.new_admin_token, None, "printed once, never again");
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn serves_tls_when_given_a_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = SqliteTestDb::create();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let (cert, key) = (db.dir.path().join("tls.pem"), db.dir.path().join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let cfg = config(&[
        format!("--data-dir={}", db.dir.path().join("data").display()),
        format!("--tls-cert={}", cert.display()),
        format!("--tls-key={}", key.display()),
        format!("--admin-token={}", common::ADMIN_TOKEN),
    ]);
    let running = start(&cfg).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            certified.cert.pem(),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", running.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS handshake with the server certificate");
    let mut client = v1::mesh_admin_client::MeshAdminClient::new(channel);
    let mut req = tonic::Request::new(v1::StatusRequest {});
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", common::ADMIN_TOKEN).parse().unwrap(),
    );
    let status = client.status(req).await.unwrap().into_inner();
    assert_eq!(status.store, "sqlite");

    // quiverctl with --ca-file.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quiverctl"));
    cmd.args(["status", "--ca-file"])
        .arg(&cert)
        .arg("--server")
        .arg(format!("https://127.0.0.1:{}", running.addr.port()))
        .env("QUIVER_TOKEN", common::ADMIN_TOKEN);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("your role:            admin"));

    // Plaintext h2c is not served on a TLS port.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = v1::mesh_admin_client::MeshAdminClient::new(channel);
        assert!(client.status(v1::StatusRequest {}).await.is_err());
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn watch_resumes_after_a_version() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let mut c = server.admin().await;
    c.apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();
    // Route "b" routes a Service of its own (a service is routed by one Route).
    c.apply_service(doc::<v1::Service>(&service_like_reviews("details")))
        .await
        .unwrap();
    for (name, service, w) in [
        ("a", "reviews", 90),
        ("b", "details", 80),
        ("a", "reviews", 70),
    ] {
        c.apply_route(doc::<v1::Route>(&route_yaml_on(name, service, w)))
            .await
            .unwrap();
    }
    // Resume after version 3 (route "a" created): expect b's creation and a's update, no snapshot.
    let mut stream = c
        .watch_routes(v1::WatchRequest {
            namespace: "shop".into(),
            resource_version: 3,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        got.push((e.r#type, e.resource_version));
    }
    use watch_event::Type::*;
    assert_eq!(got, vec![(Added as i32, 4), (Modified as i32, 5)]);
    server.stop().await;
}
