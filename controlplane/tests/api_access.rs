//! Who can reach the admin API and with what (issue 17, item 4): loopback unless TLS or an
//! explicit --insecure-plaintext, TLS from the mesh CA that quiverctl verifies, admin tokens
//! of at least 32 characters, the first admin token in a 0600 file when stdout is not a
//! terminal, and API and join tokens that expire, are listed without their secrets and are
//! refused at once when revoked.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{ADMIN_TOKEN, SqliteTestDb, TestServer};
use quiver_api::v1;
use quiver_control::server::{self, Config};
use tonic::Code;

fn config(args: &[String]) -> Config {
    let mut all = vec![
        "quiver-control".to_string(),
        "--discovery-listen=127.0.0.1:0".into(),
    ];
    all.extend_from_slice(args);
    <Config as clap::Parser>::try_parse_from(all).expect("flags parse")
}

async fn run(program: &str, args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .env_remove("QUIVER_ADMIN_TOKEN")
        .env_remove("QUIVER_LISTEN")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().expect("runs"))
        .await
        .unwrap()
}

/// Run quiver-control, expecting it to refuse to start: its output once it exits. One that
/// starts serving instead is stopped after 30 s and fails the test.
async fn refused_start(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver-control"))
        .args(args)
        .env_remove("QUIVER_ADMIN_TOKEN")
        .env_remove("QUIVER_LISTEN")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(30), async {
        while child.try_wait().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if exited.is_err() {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("quiver-control started instead of refusing");
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn the_api_listens_on_loopback_unless_told_otherwise() {
    let db = SqliteTestDb::create();
    let data = format!("--data-dir={}", db.dir.path().display());
    assert_eq!(
        config(std::slice::from_ref(&data)).listen,
        "127.0.0.1:8080".parse().unwrap(),
        "the default is loopback"
    );

    // The binary refuses a plaintext API on every interface, naming the flag.
    let out = refused_start(
        vec![
            "--listen=0.0.0.0:0".into(),
            "--discovery-listen=127.0.0.1:0".into(),
            data.clone(),
        ],
        vec![],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--listen 0.0.0.0:0: not a loopback address")
            && stderr.contains("--insecure-plaintext")
            && stderr.contains("--tls-mesh-ca"),
        "{stderr}"
    );

    // start_on checks the address it was handed too, and --insecure-plaintext accepts it.
    let exposed = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = server::start_on(&config(std::slice::from_ref(&data)), exposed)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{err:#}").contains("--insecure-plaintext"),
        "{err:#}"
    );
    let exposed = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let running = server::start_on(&config(&[data, "--insecure-plaintext".into()]), exposed)
        .await
        .expect("--insecure-plaintext accepts it");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_short_admin_token_is_refused_without_being_echoed() {
    let db = SqliteTestDb::create();
    let short = "qvr_only-twenty-chars";
    for (args, env) in [
        (vec![format!("--admin-token={short}")], vec![]),
        (vec![], vec![("QUIVER_ADMIN_TOKEN", short.to_string())]),
    ] {
        let mut all = vec![
            "--listen=127.0.0.1:0".to_string(),
            "--discovery-listen=127.0.0.1:0".into(),
            format!("--data-dir={}", db.dir.path().display()),
        ];
        all.extend(args);
        let out = refused_start(all, env).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(
            stderr.contains("--admin-token") && stderr.contains("at least 32 characters"),
            "{stderr}"
        );
        assert!(
            !stderr.contains(short),
            "the secret is not echoed: {stderr}"
        );
    }
    // The store was never opened: nothing was created.
    assert!(!db.dir.path().join("quiver.db").exists());
}

#[tokio::test]
async fn the_first_admin_token_goes_to_a_private_file_when_stdout_is_not_a_terminal() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let db = SqliteTestDb::create();
    let port = quiver_tests::mesh::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver-control"))
        .args([
            format!("--listen=127.0.0.1:{port}"),
            "--discovery-listen=127.0.0.1:0".into(),
            format!("--data-dir={}", db.dir.path().display()),
        ])
        .env_remove("QUIVER_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        lines.next().expect("a line").expect("UTF-8")
    })
    .await
    .unwrap();
    let path = db.dir.path().join(server::ADMIN_TOKEN_FILE);
    assert!(
        line.contains(&format!("Admin token written to {}", path.display())),
        "{line}"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the owner may read it");
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert!(
        token.starts_with("qvr_") && !line.contains(&token),
        "{line}"
    );
    // The token in the file is the admin token.
    let server = TestServer {
        running: None,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        discovery: "127.0.0.1:1".parse().unwrap(),
        admin: token.clone(),
        url: format!("http://127.0.0.1:{port}"),
    };
    let status = server
        .admin()
        .await
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.role, "admin");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn the_api_serves_tls_from_the_mesh_ca_that_quiverctl_verifies() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = SqliteTestDb::create();
    let data = db.dir.path().join("data");
    // Every interface: allowed because it is TLS.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let running = server::start_on(
        &config(&[
            format!("--data-dir={}", data.display()),
            format!("--admin-token={ADMIN_TOKEN}"),
            "--tls-mesh-ca".into(),
        ]),
        listener,
    )
    .await
    .expect("starts with TLS on 0.0.0.0");
    let ca_file = running.api_ca_file.clone().expect("the CA file is written");
    assert_eq!(ca_file, data.join(server::API_CA_FILE));
    let port = running.addr.port();

    let quiverctl = |server: String, ca: Option<std::path::PathBuf>| {
        let mut args = vec!["status".to_string(), "--server".into(), server];
        if let Some(ca) = ca {
            args.push("--ca-cert".into());
            args.push(ca.display().to_string());
        }
        run(
            env!("CARGO_BIN_EXE_quiverctl"),
            args,
            vec![("QUIVER_TOKEN", ADMIN_TOKEN.to_string())],
        )
    };
    for host in ["127.0.0.1", "localhost"] {
        let out = quiverctl(format!("https://{host}:{port}"), Some(ca_file.clone())).await;
        assert!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("your role:            admin"));
    }
    // HTTP/2 and HTTP/1.1-only TLS clients alike verify it with the written bundle.
    let bundle = std::fs::read(&ca_file).unwrap();
    for (alpn, chosen) in [
        (&[&b"h2"[..], b"http/1.1"][..], "h2"),
        (&[&b"http/1.1"[..]][..], "http/1.1"),
    ] {
        assert_eq!(
            tls_get(port, &bundle, alpn).await,
            Ok((chosen.to_string(), 200))
        );
    }
    // Without the bundle the certificate is not trusted.
    let out = quiverctl(format!("https://127.0.0.1:{port}"), None).await;
    assert!(!out.status.success(), "an unverified server was accepted");
    // A plaintext client gets nothing.
    let out = quiverctl(format!("http://127.0.0.1:{port}"), None).await;
    assert!(!out.status.success(), "plaintext was served");
    let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = v1::mesh_admin_client::MeshAdminClient::new(channel);
        assert!(client.status(v1::StatusRequest {}).await.is_err());
    }
    running.shutdown().await.unwrap();
}

/// GET `/metrics` over TLS from `port` on 127.0.0.1, trusting `ca_pem`, offering `alpn`:
/// (the protocol the server chose, the status), or why it failed.
async fn tls_get(port: u16, ca_pem: &[u8], alpn: &[&[u8]]) -> Result<(String, u16), String> {
    let mut tls = quiver_tests::pki::client_trusting(ca_pem);
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let chosen =
        String::from_utf8_lossy(stream.get_ref().1.alpn_protocol().unwrap_or(b"none")).into_owned();
    let io = hyper_util::rt::TokioIo::new(stream);
    let req = http::Request::get("/metrics")
        .header("host", format!("127.0.0.1:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let status = if chosen == "h2" {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://127.0.0.1:{port}/metrics"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        send.send_request(req)
            .await
            .map_err(|e| e.to_string())?
            .status()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req)
            .await
            .map_err(|e| e.to_string())?
            .status()
    };
    Ok((chosen, status.as_u16()))
}

/// With `--tls-cert`/`--tls-key` the operator's files are taken again when they change (as
/// cert-manager replaces a Secret's files): new handshakes get the new certificate without a
/// restart. HTTP/1.1-only TLS clients are served too (ALPN `http/1.1`).
#[tokio::test]
async fn the_api_takes_a_replaced_certificate_without_a_restart() {
    use quiver_api::certs::CertificateAuthority;
    let db = SqliteTestDb::create();
    let data = db.dir.path().join("data");
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    let id = quiver_api::SpiffeId::parse("spiffe://corp.example/ns/ops/sa/api").unwrap();
    let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    // Written as cert-manager does: the new files renamed into place.
    let write = |ca: &CertificateAuthority| {
        let issued = ca
            .issue_for_hosts(&id, &hosts, Duration::from_secs(3600))
            .unwrap();
        for (path, text) in [(&cert, &issued.chain_pem), (&key, &issued.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    };
    let first = CertificateAuthority::generate("corp.example", Duration::from_secs(3600)).unwrap();
    let second = CertificateAuthority::generate("corp.example", Duration::from_secs(3600)).unwrap();
    write(&first);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server::start_on(
        &config(&[
            format!("--data-dir={}", data.display()),
            format!("--admin-token={ADMIN_TOKEN}"),
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
        ]),
        listener,
    )
    .await
    .expect("starts with the operator's certificate");
    let port = running.addr.port();
    let (first_pem, second_pem) = (first.cert_pem().as_bytes(), second.cert_pem().as_bytes());

    assert_eq!(
        tls_get(port, first_pem, &[b"h2", b"http/1.1"]).await,
        Ok(("h2".to_string(), 200))
    );
    // An HTTP/1.1-only client (curl --http1.1) is served, not refused in the handshake.
    assert_eq!(
        tls_get(port, first_pem, &[b"http/1.1"]).await,
        Ok(("http/1.1".to_string(), 200))
    );
    assert!(tls_get(port, second_pem, &[b"h2"]).await.is_err());

    write(&second);
    let deadline = tokio::time::Instant::now() + 3 * server_tls_check_every();
    loop {
        if tls_get(port, second_pem, &[b"h2"]).await == Ok(("h2".to_string(), 200)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replaced certificate was not taken"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old = tls_get(port, first_pem, &[b"h2"]).await;
    assert!(old.is_err(), "the old certificate is still served: {old:?}");

    // A broken pair (the key of another certificate) is not taken: the last good one stays.
    let other = second
        .issue_for_hosts(&id, &hosts, Duration::from_secs(3600))
        .unwrap();
    std::fs::write(&key, other.key_pem).unwrap();
    tokio::time::sleep(server_tls_check_every() + Duration::from_secs(1)).await;
    assert_eq!(
        tls_get(port, second_pem, &[b"h2"]).await,
        Ok(("h2".to_string(), 200))
    );
    running.shutdown().await.unwrap();
}

fn server_tls_check_every() -> Duration {
    quiver_control::discovery::listener::CHECK_EVERY
}

async fn status_with(server: &TestServer, token: &str) -> Result<String, tonic::Status> {
    server
        .client(Some(token))
        .await
        .status(v1::StatusRequest {})
        .await
        .map(|r| r.into_inner().role)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_expire_are_revoked_at_once_and_are_listed_without_secrets() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let mut admin = server.admin().await;

    // A TTL beyond the maximum is refused naming the field.
    let long = admin
        .create_api_token(v1::CreateApiTokenRequest {
            role: "viewer".into(),
            description: String::new(),
            ttl: "400d".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument);
    assert!(long.message().starts_with("ttl: "), "{}", long.message());

    // Create with a TTL: works, then expires and is refused.
    let short = admin
        .create_api_token(v1::CreateApiTokenRequest {
            role: "viewer".into(),
            description: "short-lived".into(),
            ttl: "2s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!short.expires_at.is_empty());
    assert_eq!(status_with(&server, &short.token).await.unwrap(), "viewer");
    let expired = quiver_tests::eventually("the token to expire", Duration::from_secs(10), || {
        let s = &server;
        let t = short.token.clone();
        async move { status_with(s, &t).await.err() }
    })
    .await;
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );

    // Revoke: refused at once, even right after a successful call (which it may be cached by).
    let revoked = admin
        .create_api_token(v1::CreateApiTokenRequest {
            role: "admin".into(),
            description: "to revoke".into(),
            ttl: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.expires_at.is_empty(), "no TTL: no expiry");
    assert_eq!(status_with(&server, &revoked.token).await.unwrap(), "admin");
    let out = run(
        env!("CARGO_BIN_EXE_quiverctl"),
        vec![
            "token".into(),
            "revoke".into(),
            revoked.id.clone(),
            "--server".into(),
            server.url.clone(),
        ],
        vec![("QUIVER_TOKEN", ADMIN_TOKEN.to_string())],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = status_with(&server, &revoked.token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Join tokens are listed and revoked the same way.
    let join = admin
        .create_join_token(v1::CreateJoinTokenRequest {
            namespace: "shop".into(),
            service_account: "reviews".into(),
            ttl: "10m".into(),
            uses: 2,
        })
        .await
        .unwrap()
        .into_inner();
    let list = admin
        .list_tokens(v1::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .items;
    let ids: Vec<(&str, &str, bool)> = list
        .iter()
        .map(|t| (t.kind.as_str(), t.id.as_str(), t.expired))
        .collect();
    assert!(ids.contains(&("api", short.id.as_str(), true)), "{ids:?}");
    assert!(ids.contains(&("join", join.id.as_str(), false)), "{ids:?}");
    assert!(
        !ids.iter().any(|(_, id, _)| *id == revoked.id),
        "a revoked token is gone"
    );
    let listed = format!("{list:?}");
    for secret in [
        short.token.as_str(),
        revoked.token.as_str(),
        join.token.as_str(),
        ADMIN_TOKEN,
    ] {
        assert!(!listed.contains(secret), "a secret is listed");
        let hash = quiver_control::auth::hash_secret(secret);
        assert!(!listed.contains(&hash), "a hash is listed");
    }
    // quiverctl shows the same, without secrets.
    let out = run(
        env!("CARGO_BIN_EXE_quiverctl"),
        vec![
            "token".into(),
            "list".into(),
            "--server".into(),
            server.url.clone(),
        ],
        vec![("QUIVER_TOKEN", ADMIN_TOKEN.to_string())],
    )
    .await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains(&join.id) && shown.contains(&short.id) && shown.contains("expired"),
        "{shown}"
    );
    assert!(!shown.contains(&join.token) && !shown.contains(ADMIN_TOKEN));

    admin
        .revoke_token(v1::RevokeTokenRequest {
            kind: "join".into(),
            id: join.id.clone(),
        })
        .await
        .unwrap();
    let bundle = common::mesh::bundle(&server).await;
    let (_, csr_der) = quiver_api::certs::new_key_and_csr().unwrap();
    let refused = common::mesh::anonymous(server.discovery, &bundle)
        .await
        .join(v1::JoinRequest {
            join_token: join.token.clone(),
            csr_der,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // Viewers may not list or revoke.
    let viewer = admin
        .create_api_token(v1::CreateApiTokenRequest {
            role: "viewer".into(),
            description: String::new(),
            ttl: "1h".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let denied = server
        .client(Some(&viewer.token))
        .await
        .list_tokens(v1::ListTokensRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    server.stop().await;
}
