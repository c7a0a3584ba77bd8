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
use quiver_control::ca::{IntermediatePolicy, KeyEncryptionKey, MeshCa};
use quiver_control::store::{CaRole, Store};
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

/// A `quiver-control` config on loopback with `data_dir` and `extra` flags.
fn config(data_dir: &std::path::Path, extra: &[String]) -> quiver_control::server::Config {
    let mut args = vec![
        "quiver-control".to_string(),
        "--listen=127.0.0.1:0".into(),
        "--discovery-listen=127.0.0.1:0".into(),
        format!("--data-dir={}", data_dir.display()),
    ];
    args.extend(extra.iter().cloned());
    <quiver_control::server::Config as clap::Parser>::try_parse_from(args).unwrap()
}

/// Start, expecting a refusal; the error text.
async fn refused(config: &quiver_control::server::Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    match quiver_control::server::start_on(config, listener).await {
        Ok(_) => panic!("the control plane started"),
        Err(e) => format!("{e:#}"),
    }
}

/// Join as shop/web; the SVID chain PEM and the trust bundle PEM.
async fn join(server: &TestServer) -> (String, String) {
    let token = join_token(server, "10m", 1).await.token;
    let (_, csr_der) = certs::new_key_and_csr().unwrap();
    let joined = identity_client(server)
        .await
        .join(v1::JoinRequest {
            join_token: token,
            csr_der,
        })
        .await
        .unwrap()
        .into_inner();
    (joined.cert_chain_pem, joined.trust_bundle_pem)
}

/// Every file under `dir`, read whole (the SQLite database, its journal, the key file).
/// Every byte of every file under `dir`, read by another process (`cat`): closing a file
/// descriptor of the database (or its -wal/-shm) in this process would drop every POSIX lock
/// this process's SQLite connections hold on it, and a later connection of another process
/// would then take itself for the only one and checkpoint the WAL from under them (seen as
/// SQLite error 522, a short read, on this process's next write).
fn all_bytes_under(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes_under(&path));
        } else {
            let read = std::process::Command::new("cat")
                .arg(&path)
                .output()
                .unwrap();
            out.extend(read.stdout);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_chain_through_a_sealed_intermediate_to_the_root() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let (chain_pem, bundle_pem) = join(&server).await;
    let metrics = common::http_get(server.addr, "/metrics").await;
    server.stop().await;

    // Leaf -> intermediate; the bundle is the root alone.
    let chain = certs::certs_from_pem(&chain_pem).unwrap();
    let bundle = certs::certs_from_pem(&bundle_pem).unwrap();
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    assert_eq!(bundle.len(), 1, "the root only");
    let (_, root) = x509_parser::parse_x509_certificate(&bundle[0]).unwrap();
    let (_, inter) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
    assert_eq!(
        root.subject(),
        root.issuer(),
        "the bundle holds a self-signed root"
    );
    assert!(inter.is_ca());
    assert_eq!(inter.issuer(), root.subject());
    assert!(inter.subject().to_string().contains("intermediate"));
    let life = inter.validity().not_after.timestamp() - inter.validity().not_before.timestamp();
    assert!(life <= 366 * 24 * 3600, "intermediate lives {life} s");
    // /metrics reports both ends, for the expiry alert (deploy/observability/rules.yml).
    for (certificate, cert) in [("signer", &inter), ("root", &root)] {
        let line = format!(
            "quiver_ca_certificate_expiry_timestamp_seconds{{certificate=\"{certificate}\"}} {}",
            cert.validity().not_after.timestamp()
        );
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in /metrics:\n{metrics}"
        );
    }
    assert!(verifies(&chain_pem, &bundle_pem));
    // The intermediate alone is not a trust anchor anywhere: a chain without it fails.
    let leaf_only = chain_pem
        .split_inclusive("-----END CERTIFICATE-----")
        .next()
        .unwrap();
    assert!(!verifies(leaf_only, &bundle_pem));

    // Both keys are sealed: no private key in clear anywhere under the data dir.
    let store = db.store().await;
    for role in [CaRole::Root, CaRole::Intermediate] {
        let sealed = store.ca_key(role).await.unwrap().unwrap();
        assert!(sealed.key_sealed.starts_with("v1:"), "{role:?}");
        assert!(!sealed.key_sealed.contains("PRIVATE KEY"), "{role:?}");
    }
    assert!(store.certificate_authority().await.unwrap().is_none());
    drop(store);
    assert!(!contains(&all_bytes_under(db.dir.path()), "PRIVATE KEY"));
    // The generated key-encryption key is the owner's alone.
    let kek = db.dir.path().join("ca-key-encryption.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kek).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Another key-encryption key cannot open the store: refused, naming the flag.
    let other = quiver_tests::scratch::ca_key_encryption_key(&db.dir.path().join("other"));
    std::fs::write(&other, format!("{}\n", "ab".repeat(32))).unwrap();
    let err = refused(&config(
        db.dir.path(),
        &[format!("--ca-key-encryption-key={}", other.display())],
    ))
    .await;
    assert!(
        err.contains("does not open") && err.contains("--ca-key-encryption-key"),
        "{err}"
    );
    // A key file others can read, or one that is not 32 hex bytes, is refused too.
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused(&config(
        db.dir.path(),
        &[format!("--ca-key-encryption-key={}", other.display())],
    ))
    .await;
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::write(&other, "not-a-key\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = refused(&config(
        db.dir.path(),
        &[format!("--ca-key-encryption-key={}", other.display())],
    ))
    .await;
    assert!(
        err.contains("--ca-key-encryption-key") && err.contains("64 hex"),
        "{err}"
    );

    // The right key again: the same root.
    let server = TestServer::start(None, db.dir.path()).await;
    let (_, again) = join(&server).await;
    assert_eq!(again, bundle_pem);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_ca_of_an_older_store_is_sealed_as_the_root() {
    // A store as older versions left it: one CA, its key in clear, and a proxy certificate
    // it issued.
    let db = SqliteTestDb::create();
    let old = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    let store = db.store().await;
    store
        .init_certificate_authority(old.cert_pem(), old.key_pem())
        .await
        .unwrap();
    drop(store);
    let id = quiver_api::SpiffeId::parse("spiffe://mesh.local/ns/shop/sa/web").unwrap();
    let earlier = old.issue(&id, Duration::from_secs(600)).unwrap();

    let server = TestServer::start(None, db.dir.path()).await;
    let (chain_pem, bundle_pem) = join(&server).await;
    // The old CA is the root: certificates it issued still verify, new ones chain to it
    // through the intermediate.
    assert_eq!(bundle_pem, old.cert_pem());
    assert!(verifies(&earlier.chain_pem, &bundle_pem));
    assert!(verifies(&chain_pem, &bundle_pem));
    assert_eq!(certs::certs_from_pem(&chain_pem).unwrap().len(), 2);
    // A proxy holding the old certificate renews over mTLS, into the new chain (renewal needs
    // a Service that runs as its service account).
    server
        .admin()
        .await
        .apply_service(common::doc::<v1::Service>(
            "apiVersion: quiver.dev/v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
             spec: {ports: [{name: http, port: 8080, protocol: http1}]}\n",
        ))
        .await
        .unwrap();
    let identity =
        quiver_api::tls::MeshIdentity::from_pem(&earlier.chain_pem, &earlier.key_pem, &bundle_pem)
            .unwrap();
    let tls = identity
        .pinned_client_config(&common::mesh::control_plane(), &[b"h2"])
        .unwrap();
    let (_, csr_der) = certs::new_key_and_csr().unwrap();
    let renewed = MeshDiscoveryClient::new(
        quiver_control::discovery::client::connect(server.discovery, tls)
            .await
            .unwrap(),
    )
    .renew(v1::RenewRequest { csr_der })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        certs::certs_from_pem(&renewed.cert_chain_pem)
            .unwrap()
            .len(),
        2
    );
    assert!(verifies(&renewed.cert_chain_pem, &bundle_pem));
    server.stop().await;

    // The plaintext row is gone; the root is sealed.
    let store = db.store().await;
    assert!(store.certificate_authority().await.unwrap().is_none());
    let root = store.ca_key(CaRole::Root).await.unwrap().unwrap();
    assert_eq!(root.cert_pem, old.cert_pem());
    assert!(!root.key_sealed.contains("PRIVATE KEY"));
    drop(store);
    assert!(!contains(&all_bytes_under(db.dir.path()), "PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_store_needs_an_explicit_key_encryption_key() {
    let db = common::PgTestDb::create().await;
    let data = tempfile::tempdir().unwrap();
    let err = refused(&config(
        data.path(),
        &[format!("--database-url={}", db.url)],
    ))
    .await;
    assert!(
        err.contains("--ca-key-encryption-key: required with --database-url"),
        "{err}"
    );
}

/// A key-encryption key for a CA opened straight on a store (no server), from a file in `dir`.
fn test_kek(dir: &std::path::Path) -> KeyEncryptionKey {
    let path = quiver_tests::scratch::ca_key_encryption_key(dir);
    KeyEncryptionKey::load(Some(&path), dir, true).unwrap()
}

/// An intermediate that lives 8 s and is due for renewal once less than 6 s are left: a
/// replica that starts within the first second keeps it, and the window opens about two
/// seconds after it was made (certificate times are whole seconds).
const SHORT_LIVED: IntermediatePolicy = IntermediatePolicy {
    validity: Duration::from_secs(8),
    renew_before: Duration::from_secs(6),
};

/// The generated CA of `store` with [`SHORT_LIVED`] intermediates, its keys sealed with a
/// key-encryption key in `dir`.
async fn short_lived_ca(store: &dyn Store, dir: &std::path::Path) -> MeshCa {
    MeshCa::load_or_create_with(store, "mesh.local", None, test_kek(dir), SHORT_LIVED)
        .await
        .unwrap()
}

fn not_after_of(pem: &str) -> SystemTime {
    certs::not_after(&certs::certs_from_pem(pem).unwrap()[0]).unwrap()
}

/// Sign an SVID for shop/web with `ca`; its chain PEM.
fn sign_with(ca: &MeshCa) -> String {
    let (_, csr) = certs::new_key_and_csr().unwrap();
    ca.sign(
        &csr,
        "shop",
        "web",
        Duration::from_secs(600),
        SystemTime::UNIX_EPOCH,
    )
    .unwrap()
    .chain_pem
}

/// Two replicas on one store renew a short-lived intermediate while running: exactly one new
/// intermediate is stored, both sign with it, the bundle (the root) is unchanged, a leaf from
/// before still verifies and a leaf from after chains to the new intermediate.
async fn two_replicas_renew_the_intermediate_once(store: Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let open = || short_lived_ca(store.as_ref(), dir.path());
    let a = open().await;
    let b = open().await;
    // What replica a's /metrics would report (`quiver_ca_certificate_expiry_timestamp_seconds`).
    let gauges = prometheus_client::metrics::family::Family::default();
    let reporter = tokio::spawn(quiver_control::ca::report_expiry(
        a.subscribe(),
        gauges.clone(),
    ));
    // The reporter runs beside this test: wait (a bounded time) for it to show `want`.
    let signer_expiry_becomes = |want: i64| {
        let gauges = gauges.clone();
        async move {
            let label = quiver_control::metrics::CaCertificateLabels {
                certificate: "signer",
            };
            for _ in 0..100 {
                if gauges.get_or_create(&label).get() == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "the signer's expiry metric is {}, not {want}",
                gauges.get_or_create(&label).get()
            );
        }
    };
    let unix = |t: SystemTime| {
        i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()).unwrap()
    };
    let first = store.ca_key(CaRole::Intermediate).await.unwrap().unwrap();
    signer_expiry_becomes(unix(not_after_of(&first.cert_pem))).await;
    assert_eq!(a.current().signer_pem(), first.cert_pem);
    assert_eq!(
        b.current().signer_pem(),
        first.cert_pem,
        "b kept a's intermediate"
    );
    let bundle = a.bundle_pem();
    let life = not_after_of(&first.cert_pem)
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        life <= SHORT_LIVED.validity,
        "the intermediate lives {life:?}"
    );

    // Not due yet: nothing is replaced.
    assert!(!a.renew_intermediate(store.as_ref()).await.unwrap());
    assert!(!b.renew_intermediate(store.as_ref()).await.unwrap());
    assert_eq!(
        store.ca_key(CaRole::Intermediate).await.unwrap().unwrap(),
        first
    );
    let before = sign_with(&a);
    assert!(verifies(&before, &bundle));

    // Wait for the instant the renewal window opens (a known time, not a guess).
    let opens = not_after_of(&first.cert_pem) - SHORT_LIVED.renew_before;
    if let Ok(wait) = opens.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(200)).await;
    }

    // Both replicas race to renew: the store lets one write, the other adopts it.
    let (ra, rb) = tokio::join!(
        a.renew_intermediate(store.as_ref()),
        b.renew_intermediate(store.as_ref())
    );
    let renewed = [ra.unwrap(), rb.unwrap()];
    assert_eq!(
        renewed.iter().filter(|r| **r).count(),
        1,
        "exactly one replica stored a new intermediate: {renewed:?}"
    );
    let second = store.ca_key(CaRole::Intermediate).await.unwrap().unwrap();
    assert_ne!(second.cert_pem, first.cert_pem);
    assert_eq!(a.current().signer_pem(), second.cert_pem);
    assert_eq!(b.current().signer_pem(), second.cert_pem);
    assert!(not_after_of(&second.cert_pem) > not_after_of(&first.cert_pem));
    // The expiry metric follows the renewed intermediate.
    signer_expiry_becomes(unix(not_after_of(&second.cert_pem))).await;
    // A replica that read the old intermediate before that write and writes its own after it
    // (whatever the interleaving above was) is refused: the store keeps the winner's.
    let late = quiver_control::store::SealedCa {
        cert_pem: CertificateAuthority::generate("mesh.local", Duration::from_secs(60))
            .unwrap()
            .cert_pem()
            .to_string(),
        key_sealed: "v1:late".into(),
    };
    let kept = store
        .replace_ca_key(CaRole::Intermediate, &first, &late)
        .await
        .unwrap();
    assert_eq!(kept, second, "a write keyed on the old intermediate lost");
    // A second round changes nothing: the new one is not due.
    assert!(!a.renew_intermediate(store.as_ref()).await.unwrap());
    assert!(!b.renew_intermediate(store.as_ref()).await.unwrap());
    assert_eq!(
        store.ca_key(CaRole::Intermediate).await.unwrap().unwrap(),
        second
    );

    // Same root: the bundle did not change, and the leaf from before still verifies.
    assert_eq!(a.bundle_pem(), bundle);
    assert_eq!(b.bundle_pem(), bundle);
    assert!(
        verifies(&before, &bundle),
        "a leaf from the old intermediate"
    );
    // New leaves, from either replica, chain to the new intermediate and verify.
    for ca in [&a, &b] {
        let after = sign_with(ca);
        let chain = certs::certs_from_pem(&after).unwrap();
        assert_eq!(
            chain[1].as_ref(),
            certs::certs_from_pem(&second.cert_pem).unwrap()[0].as_ref()
        );
        assert!(verifies(&after, &bundle));
    }
    reporter.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_replicas_renew_the_intermediate_once_sqlite() {
    let db = SqliteTestDb::create();
    two_replicas_renew_the_intermediate_once(db.store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_replicas_renew_the_intermediate_once_postgres() {
    let db = common::PgTestDb::create().await;
    two_replicas_renew_the_intermediate_once(db.store().await).await;
}

/// Run `quiver-control ca export-root` on a SQLite store; (success, stdout + stderr).
fn export_root(
    data_dir: &std::path::Path,
    kek: &std::path::Path,
    out: &std::path::Path,
    remove: bool,
) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quiver-control"));
    cmd.args(["ca", "export-root"])
        .arg(format!("--out={}", out.display()))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--ca-key-encryption-key={}", kek.display()))
        .env_remove("QUIVER_DATABASE_URL");
    if remove {
        cmd.arg("--remove-key");
    }
    let done = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    (done.status.success(), text)
}

/// The generated root taken offline: `quiver-control ca export-root` writes the root's
/// certificate and key (0600, never over a file), `--remove-key` takes the key out of the
/// store, the running CA then refuses to renew its intermediate (naming why and the expiry),
/// and a CA started with the exported files given back renews it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_can_be_exported_and_taken_offline() {
    use std::os::unix::fs::PermissionsExt;
    let db = SqliteTestDb::create();
    // Kept as what it is: it is closed (not only dropped) before --remove-key, below.
    let sqlite = Arc::new(
        quiver_control::store::SqliteStore::open_dir(db.dir.path())
            .await
            .unwrap(),
    );
    let store: Arc<dyn Store> = sqlite.clone();
    let kek_dir = tempfile::tempdir().unwrap();
    let kek_path = quiver_tests::scratch::ca_key_encryption_key(kek_dir.path());
    let open = |store: Arc<dyn Store>,
                operator: Option<(std::path::PathBuf, std::path::PathBuf)>| {
        let kek = KeyEncryptionKey::load(Some(&kek_path), kek_dir.path(), true).unwrap();
        async move {
            MeshCa::load_or_create_with(
                store.as_ref(),
                "mesh.local",
                operator.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                kek,
                SHORT_LIVED,
            )
            .await
        }
    };
    let running = open(store.clone(), None).await.unwrap();
    let root = store.ca_key(CaRole::Root).await.unwrap().unwrap();
    let first = store.ca_key(CaRole::Intermediate).await.unwrap().unwrap();
    let bundle = running.bundle_pem();

    // Export, keeping the key in the store.
    let out = tempfile::tempdir().unwrap();
    let (ok, text) = export_root(db.dir.path(), &kek_path, out.path(), false);
    assert!(ok, "{text}");
    let (cert, key) = (
        out.path().join("mesh-root.pem"),
        out.path().join("mesh-root.key"),
    );
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), root.cert_pem);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The key is the root certificate's: what it signs verifies against the bundle.
    let exported = CertificateAuthority::from_pem(
        &std::fs::read_to_string(&cert).unwrap(),
        &std::fs::read_to_string(&key).unwrap(),
    )
    .unwrap();
    let id = quiver_api::SpiffeId::parse("spiffe://mesh.local/ns/shop/sa/web").unwrap();
    let probe = exported.issue(&id, Duration::from_secs(60)).unwrap();
    assert!(verifies(&probe.chain_pem, &bundle));
    assert!(
        !store
            .ca_key(CaRole::Root)
            .await
            .unwrap()
            .unwrap()
            .key_offline()
    );

    // Exporting into the same directory again is refused, and removes nothing.
    let written = std::fs::read(&key).unwrap();
    let (ok, text) = export_root(db.dir.path(), &kek_path, out.path(), true);
    assert!(!ok, "a second export overwrote: {text}");
    assert!(
        text.contains("mesh-root") && text.contains("never overwrites"),
        "{text}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), written);
    assert_eq!(store.ca_key(CaRole::Root).await.unwrap().unwrap(), root);

    // Into an empty directory with --remove-key: the key leaves the store, the certificate
    // stays, and no copy of the sealed key is left in the database files.
    let offline = tempfile::tempdir().unwrap();
    // With SQLite the file has one owner: the control plane is stopped for --remove-key
    // (its scrub rewrites the file under other connections; docs/security.md) and opens it
    // afresh afterwards. The CA object below stands for the replica restarted. Dropping the
    // store closes its connections in the background, maybe after the scrub began (a CI
    // run failed so, with SQLite's error 522): closed and waited for, as a stopped process.
    drop(store);
    sqlite.close().await;
    drop(sqlite);
    let (ok, text) = export_root(db.dir.path(), &kek_path, offline.path(), true);
    assert!(ok, "{text}");
    assert!(text.contains("no longer in the store"), "{text}");
    let store = db.store().await;
    let stored = store.ca_key(CaRole::Root).await.unwrap().unwrap();
    assert!(stored.key_offline() && stored.key_sealed.is_empty());
    assert_eq!(stored.cert_pem, root.cert_pem);
    assert!(!contains(&all_bytes_under(db.dir.path()), &root.key_sealed));
    // Nothing left to export.
    let (ok, text) = export_root(
        db.dir.path(),
        &kek_path,
        tempfile::tempdir().unwrap().path(),
        false,
    );
    assert!(!ok && text.contains("offline"), "{text}");

    // The running CA notices, keeps signing with its intermediate, and once the renewal is
    // due refuses it loudly, naming the cause, the expiry and the way back.
    assert!(running.refresh(store.as_ref()).await.unwrap());
    assert!(running.current().root_key_offline());
    let opens = not_after_of(&first.cert_pem) - SHORT_LIVED.renew_before;
    if let Ok(wait) = opens.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(200)).await;
    }
    let err = running
        .renew_intermediate(store.as_ref())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("offline") && err.contains("export-root") && err.contains("--ca-cert"),
        "{err}"
    );
    let expiry = quiver_control::stored::rfc3339(
        i64::try_from(
            not_after_of(&first.cert_pem)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap(),
    );
    assert!(err.contains(&expiry), "{err} names {expiry}");
    assert_eq!(
        store.ca_key(CaRole::Intermediate).await.unwrap().unwrap(),
        first
    );
    assert!(verifies(&sign_with(&running), &bundle), "still signing");
    // A root rotation would put a new root key online: refused too.
    let err = running
        .rotate(store.as_ref())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("offline"), "{err}");

    // Started again without the root: it runs on the intermediate it has.
    let again = open(store.clone(), None).await.unwrap();
    assert!(again.current().root_key_offline());
    assert_eq!(again.current().signer_pem(), first.cert_pem);

    // Started with the exported root given back: the mesh root, not an operator CA; it
    // renews the intermediate from memory and the store still holds no root key.
    let given = (
        offline.path().join("mesh-root.pem"),
        offline.path().join("mesh-root.key"),
    );
    let back = open(store.clone(), Some(given.clone())).await.unwrap();
    assert!(!back.is_operator());
    assert!(!back.current().root_key_offline());
    assert_eq!(back.bundle_pem(), bundle);
    // (Started inside the window, so it renewed at start already.)
    let second = store.ca_key(CaRole::Intermediate).await.unwrap().unwrap();
    assert_ne!(second.cert_pem, first.cert_pem);
    assert_eq!(back.current().signer_pem(), second.cert_pem);
    let after = sign_with(&back);
    assert!(verifies(&after, &bundle));
    assert!(
        store
            .ca_key(CaRole::Root)
            .await
            .unwrap()
            .unwrap()
            .key_offline()
    );
    // The other replica adopts it.
    assert!(running.refresh(store.as_ref()).await.unwrap());
    assert_eq!(running.current().signer_pem(), second.cert_pem);

    // A key that is not the root's is refused, naming both files.
    let wrong = CertificateAuthority::generate("mesh.local", Duration::from_secs(60)).unwrap();
    let wrong_key = offline.path().join("other.key");
    std::fs::write(&wrong_key, wrong.key_pem()).unwrap();
    std::fs::set_permissions(&wrong_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = open(store.clone(), Some((given.0.clone(), wrong_key)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not this certificate's key"), "{err}");
}

/// A running control plane whose root key is exported and removed says so in `GetCaStatus`
/// (what `quiverctl ca status` prints): the root as "root-offline", with the intermediate's
/// expiry beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_status_shows_an_offline_root_key() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let status = server
        .admin()
        .await
        .get_ca_status(v1::GetCaStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let roles: Vec<&str> = status
        .certificates
        .iter()
        .map(|c| c.role.as_str())
        .collect();
    assert_eq!(roles, ["root", "intermediate"]);

    let out = tempfile::tempdir().unwrap();
    let kek = db.dir.path().join(quiver_control::ca::GENERATED_KEK_FILE);
    let (ok, text) = export_root(db.dir.path(), &kek, out.path(), true);
    assert!(ok, "{text}");
    let status = quiver_tests::eventually(
        "the root shown offline",
        Duration::from_secs(10),
        || async {
            let status = server
                .admin()
                .await
                .get_ca_status(v1::GetCaStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            (status.certificates[0].role == "root-offline").then_some(status)
        },
    )
    .await;
    let intermediate = &status.certificates[1];
    assert_eq!(intermediate.role, "intermediate");
    assert!(!intermediate.not_after.is_empty());
    // Signing goes on with the intermediate.
    let (chain, bundle) = join(&server).await;
    assert!(verifies(&chain, &bundle));
    server.stop().await;
}

/// The listeners' certificates follow the intermediate: once it is renewed (same root), the
/// discovery and API listeners present certificates from the new one (a certificate never
/// outlives its signer, so one kept from the old intermediate would end with it and take the
/// listener down), and `api-ca.pem` holds the bundle. A certificate that already ends with
/// its signer is not replaced again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listeners_take_a_certificate_from_the_renewed_intermediate() {
    use quiver_control::discovery::listener::{self, ListenerTls};
    use tokio_stream::StreamExt;
    let db = SqliteTestDb::create();
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(short_lived_ca(store.as_ref(), dir.path()).await);
    let discovery = ListenerTls::new(ca.clone()).unwrap();
    let bundle_file = dir.path().join("api").join("api-ca.pem");
    let api =
        ListenerTls::for_api(ca.clone(), vec!["127.0.0.1".into()], bundle_file.clone()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&bundle_file).unwrap(),
        ca.bundle_pem()
    );
    let signer_of = |chain: String| certs::certs_from_pem(&chain).unwrap()[1].to_vec();
    let der = |pem: &str| certs::certs_from_pem(pem).unwrap()[0].to_vec();
    let first = store.ca_key(CaRole::Intermediate).await.unwrap().unwrap();
    for tls in [&discovery, &api] {
        assert_eq!(signer_of(tls.chain_pem()), der(&first.cert_pem));
        // Nothing changed (seen from long before the certificate's end): kept.
        assert!(!tls.follow(&ca.current(), SystemTime::UNIX_EPOCH).unwrap());
    }

    let opens = not_after_of(&first.cert_pem) - SHORT_LIVED.renew_before;
    if let Ok(wait) = opens.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(200)).await;
    }
    assert!(ca.renew_intermediate(store.as_ref()).await.unwrap());
    let second = store.ca_key(CaRole::Intermediate).await.unwrap().unwrap();
    assert_ne!(second.cert_pem, first.cert_pem);
    for tls in [&discovery, &api] {
        assert!(tls.follow(&ca.current(), SystemTime::UNIX_EPOCH).unwrap());
        assert_eq!(signer_of(tls.chain_pem()), der(&second.cert_pem));
        // It ends with its signer already: no new one at every look.
        assert!(!tls.follow(&ca.current(), SystemTime::now()).unwrap());
    }

    // A real handshake with the API listener gets the new chain, verified by the bundle file.
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let mut accepted = listener::incoming(tcp, api.clone());
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(Ok(stream)) = accepted.next().await {
            held.push(stream);
        }
    });
    let bundle = std::fs::read(&bundle_file).unwrap();
    let client = quiver_tests::pki::client_trusting(&bundle);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        )
        .await
        .expect("the API listener's certificate verifies against api-ca.pem");
    let presented = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    assert_eq!(presented[1].to_vec(), der(&second.cert_pem));
    server.abort();
}
