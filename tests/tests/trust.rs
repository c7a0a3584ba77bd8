//! Trust between a proxy and its control plane (issue 17, item 1), with real `quiver-proxy`
//! processes over real TLS. The control plane here is a scripted `MeshDiscovery` server (the
//! generated tonic service, on TLS with a certificate of the test's mesh CA), so a test can make
//! it what an attacker would run: an impostor holding a stolen workload certificate, or a
//! control plane that hands out a foreign trust bundle (in the Join answer, a Renew answer or a
//! pushed snapshot). The pinned control-plane id is also checked against a real
//! `quiver-control`; the control plane's own side (the reserved namespace) is tested in
//! `controlplane/tests/auth_mtls.rs`.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use quiver_api::SpiffeId;
use quiver_api::certs::{CertificateAuthority, IssuedCert};
use quiver_api::v1;
use quiver_api::v1::mesh_discovery_server::{MeshDiscovery, MeshDiscoveryServer};
use quiver_tests::mesh::{ControlPlane, Db, MeshProxy, ProxySpec, admin_get};
use quiver_tests::pki::Pki;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

const WEB: &str = "spiffe://mesh.local/ns/default/sa/web";
const CONTROL_PLANE: &str = "spiffe://mesh.local/ns/quiver-system/sa/control-plane";

/// What the scripted control plane answers.
struct Script {
    /// Signs Join (and, unless `renew_from` is set, Renew) CSRs.
    ca: CertificateAuthority,
    svid_ttl: Duration,
    /// When set, Renew answers with a certificate of this CA and a bundle of it alone.
    renew_from: Mutex<Option<CertificateAuthority>>,
    snapshots: tokio::sync::watch::Sender<v1::ProxySnapshot>,
    joins: AtomicUsize,
    renews: AtomicUsize,
}

impl Script {
    fn new(ca: CertificateAuthority, svid_ttl: Duration) -> Arc<Self> {
        let first = snapshot(1, ca.cert_pem());
        Arc::new(Self {
            ca,
            svid_ttl,
            renew_from: Mutex::new(None),
            snapshots: tokio::sync::watch::channel(first).0,
            joins: AtomicUsize::new(0),
            renews: AtomicUsize::new(0),
        })
    }

    fn push(&self, version: u64, bundle_pem: &str) {
        self.snapshots.send_replace(snapshot(version, bundle_pem));
    }
}

/// A complete (empty) config for `web`, with `bundle_pem` as the trust bundle.
fn snapshot(version: u64, bundle_pem: &str) -> v1::ProxySnapshot {
    v1::ProxySnapshot {
        version,
        spiffe_id: WEB.into(),
        namespace: "default".into(),
        trust_domain: "mesh.local".into(),
        trust_bundle_pem: bundle_pem.into(),
        ..Default::default()
    }
}

#[derive(Clone)]
struct Scripted(Arc<Script>);

type Snapshots = Pin<Box<dyn Stream<Item = Result<v1::ProxySnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl MeshDiscovery for Scripted {
    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        self.0.joins.fetch_add(1, Ordering::SeqCst);
        let id = SpiffeId::parse(WEB).unwrap();
        let (chain, _) = self
            .0
            .ca
            .sign_csr(&req.into_inner().csr_der, &id, self.0.svid_ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(v1::JoinResponse {
            spiffe_id: WEB.into(),
            cert_chain_pem: chain,
            trust_bundle_pem: self.0.ca.cert_pem().into(),
            expires_at: String::new(),
        }))
    }

    async fn get_trust_bundle(
        &self,
        _: Request<v1::GetTrustBundleRequest>,
    ) -> Result<Response<v1::TrustBundle>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn renew(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        self.0.renews.fetch_add(1, Ordering::SeqCst);
        let id = SpiffeId::parse(WEB).unwrap();
        let csr = req.into_inner().csr_der;
        let foreign = self.0.renew_from.lock().unwrap();
        let ca = foreign.as_ref().unwrap_or(&self.0.ca);
        let (chain, _) = ca
            .sign_csr(&csr, &id, self.0.svid_ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(v1::RenewResponse {
            spiffe_id: WEB.into(),
            cert_chain_pem: chain,
            trust_bundle_pem: ca.cert_pem().into(),
            expires_at: String::new(),
        }))
    }

    async fn register(
        &self,
        _: Request<v1::WorkloadRegistration>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        Ok(Response::new(v1::RegisterResponse {
            workload: Some(v1::Workload {
                metadata: Some(v1::ObjectMeta {
                    name: "web-1".into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            lease_ttl: "30s".into(),
            lease_expires_at: String::new(),
        }))
    }

    async fn keep_alive(
        &self,
        _: Request<v1::KeepAliveRequest>,
    ) -> Result<Response<v1::KeepAliveResponse>, Status> {
        Ok(Response::new(v1::KeepAliveResponse::default()))
    }

    async fn deregister(
        &self,
        _: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, Status> {
        Ok(Response::new(v1::DeregisterResponse {}))
    }

    type WatchStream = Snapshots;

    async fn watch(
        &self,
        _: Request<v1::ProxyWatchRequest>,
    ) -> Result<Response<Snapshots>, Status> {
        let rx = self.0.snapshots.subscribe();
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::WatchStream::new(rx).map(Ok),
        )))
    }

    async fn report_telemetry(
        &self,
        req: Request<tonic::Streaming<v1::TelemetryBatch>>,
    ) -> Result<Response<v1::ReportTelemetryResponse>, Status> {
        let mut batches = req.into_inner();
        while let Some(Ok(_)) = batches.next().await {}
        Ok(Response::new(v1::ReportTelemetryResponse::default()))
    }
}

/// Serve `script` on a fresh port over TLS, presenting `presents` (a certificate of the test's
/// CA: the control plane's own, or a stolen workload's); client certificates are optional
/// (Join has none) and, when sent, must chain to the test's CA, as on the real listener.
async fn serve(script: &Arc<Script>, presents: &IssuedCert) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&presents.chain_pem, &presents.key_pem))
        .client_ca_root(Certificate::from_pem(script.ca.cert_pem()))
        .client_auth_optional(true);
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(MeshDiscoveryServer::new(Scripted(script.clone())));
    tokio::spawn(
        server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// A TCP relay: the first connection goes to `first`, every later one to `then`. One address
/// (what the proxy is told) with two servers behind it, so the Join and the calls after it
/// can be answered under different certificates.
async fn switch(first: SocketAddr, then: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut to = first;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = std::mem::replace(&mut to, then);
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    addr
}

fn spec() -> ProxySpec<'static> {
    spec_with(&[])
}

/// [`spec`] with more flags.
fn spec_with<'a>(extra: &'a [&'a str]) -> ProxySpec<'a> {
    ProxySpec {
        service: "web",
        token: "qjt_a-secret-join-token".into(),
        labels: &[],
        outbound: &[],
        extra,
    }
}

/// The proxy's `/config`, `identity` part.
async fn identity(proxy: &MeshProxy) -> serde_json::Value {
    let (status, body) = admin_get(proxy.admin, "/config").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    config["identity"].clone()
}

/// The roots a proxy trusts now, as `/config` describes them.
async fn roots(proxy: &MeshProxy) -> Vec<String> {
    identity(proxy).await["trust_bundle"]
        .as_array()
        .unwrap_or_else(|| panic!("/config identity has no trust_bundle"))
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

fn describe(ca: &CertificateAuthority) -> String {
    quiver_api::certs::describe(&quiver_api::certs::certs_from_pem(ca.cert_pem()).unwrap()[0])
}

fn metric_line(metrics: &str, needle: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_with_a_workload_certificate_never_sees_the_join_token() {
    let pki = Pki::new();
    // An attacker stole a workload's key: a valid certificate of the trust domain, from the
    // mesh CA itself.
    let stolen = pki
        .ca
        .issue(
            &SpiffeId::parse("spiffe://mesh.local/ns/default/sa/attacker").unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let script = Script::new(
        CertificateAuthority::from_pem(pki.ca.cert_pem(), pki.ca.key_pem()).unwrap(),
        Duration::from_secs(3600),
    );
    let impostor = serve(&script, &stolen).await;
    let mut proxy = MeshProxy::spawn_to(impostor, &pki.dir.join("ca.pem"), &pki.dir, spec());

    let why = "the server presented spiffe://mesh.local/ns/default/sa/attacker, not the control \
               plane's id spiffe://mesh.local/ns/quiver-system/sa/control-plane";
    quiver_tests::eventually(
        "the proxy says why it refuses the impostor",
        Duration::from_secs(20),
        || async { proxy.logs().contains(why).then_some(()) },
    )
    .await;
    // It keeps refusing (retrying, as for an unreachable control plane) and never sent the
    // token: the handshake failed before any request.
    assert!(proxy.exited().is_none(), "{}", proxy.logs());
    assert_eq!(script.joins.load(Ordering::SeqCst), 0, "{}", proxy.logs());
    assert_ne!(proxy.readyz().await.map(|r| r.0).unwrap_or(0), 200);
    proxy.kill();

    // The same server with the control plane's own certificate is accepted: what refused the
    // impostor is its identity, nothing else.
    let genuine = pki
        .ca
        .issue(
            &SpiffeId::parse(CONTROL_PLANE).unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let real = serve(&script, &genuine).await;
    let mut proxy = MeshProxy::spawn_to(real, &pki.dir.join("ca.pem"), &pki.dir, spec());
    proxy.ready(Duration::from_secs(30)).await;
    assert_eq!(script.joins.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_bundle_that_drops_every_known_root_is_refused() {
    let pki = Pki::new();
    let script = Script::new(
        CertificateAuthority::from_pem(pki.ca.cert_pem(), pki.ca.key_pem()).unwrap(),
        Duration::from_secs(3600),
    );
    let genuine = pki
        .ca
        .issue(
            &SpiffeId::parse(CONTROL_PLANE).unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let addr = serve(&script, &genuine).await;
    let mut proxy = MeshProxy::spawn_to(addr, &pki.dir.join("ca.pem"), &pki.dir, spec());
    proxy.ready(Duration::from_secs(30)).await;
    assert_eq!(roots(&proxy).await, vec![describe(&pki.ca)]);

    // The control plane pushes a snapshot whose bundle holds only a foreign root.
    let foreign = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    script.push(2, foreign.cert_pem());
    quiver_tests::eventually(
        "the proxy refuses the snapshot",
        Duration::from_secs(10),
        || async {
            proxy
                .logs()
                .contains("keeps none of the roots trusted now")
                .then_some(())
        },
    )
    .await;
    // Refused whole: the old bundle and the old config stay.
    assert_eq!(roots(&proxy).await, vec![describe(&pki.ca)]);
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_line(&metrics, "quiver_snapshot_version "),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric_line(&metrics, "quiver_config_reloads_total{result=\"failed\"}")
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );

    // A rotation that keeps the old root beside the new one is taken.
    script.push(3, &format!("{}{}", foreign.cert_pem(), pki.ca.cert_pem()));
    let both = vec![describe(&foreign), describe(&pki.ca)];
    quiver_tests::eventually(
        "the overlapping bundle is taken",
        Duration::from_secs(10),
        || async { (roots(&proxy).await == both).then_some(()) },
    )
    .await;
    assert_eq!(
        metric_line(&proxy.metrics().await, "quiver_snapshot_version "),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renew_answer_that_drops_every_known_root_is_refused() {
    let pki = Pki::new();
    // Short SVIDs: renewal is due two thirds in, about 8 s after joining, which leaves the
    // retries 4 s before the certificate expires.
    let script = Script::new(
        CertificateAuthority::from_pem(pki.ca.cert_pem(), pki.ca.key_pem()).unwrap(),
        Duration::from_secs(12),
    );
    let foreign = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    *script.renew_from.lock().unwrap() =
        Some(CertificateAuthority::from_pem(foreign.cert_pem(), foreign.key_pem()).unwrap());
    let genuine = pki
        .ca
        .issue(
            &SpiffeId::parse(CONTROL_PLANE).unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let addr = serve(&script, &genuine).await;
    let mut proxy = MeshProxy::spawn_to(addr, &pki.dir.join("ca.pem"), &pki.dir, spec());
    proxy.ready(Duration::from_secs(30)).await;
    let joined_until = identity(&proxy).await["cert_not_after_unix"].clone();

    quiver_tests::eventually(
        "the proxy refuses the Renew answer",
        Duration::from_secs(20),
        || async {
            proxy
                .logs()
                .contains("the trust bundle in the Renew answer is refused")
                .then_some(())
        },
    )
    .await;
    assert!(script.renews.load(Ordering::SeqCst) >= 1);
    // Neither the foreign bundle nor the foreign certificate was taken.
    assert_eq!(roots(&proxy).await, vec![describe(&pki.ca)]);
    assert_eq!(identity(&proxy).await["cert_not_after_unix"], joined_until);

    // Once the answers come from the mesh CA again, the retry renews.
    *script.renew_from.lock().unwrap() = None;
    quiver_tests::eventually(
        "the certificate is renewed from the mesh CA",
        Duration::from_secs(40),
        || async {
            let now = identity(&proxy).await;
            (now["cert_not_after_unix"] != joined_until).then_some(())
        },
    )
    .await;
    assert_eq!(roots(&proxy).await, vec![describe(&pki.ca)]);
}

/// The Join answer comes over the pinned channel, from a server proving the control plane's id
/// under the mesh CA, but its trust bundle holds only a foreign root (and its certificate is
/// from that foreign CA); every later connection is then served under the foreign CA, with
/// snapshots carrying the foreign bundle. A proxy that took the Join answer's bundle would be
/// ready and run entirely under the attacker's CA; it must refuse the Join answer instead, say
/// why, and stop (a refusal is final, like a spent token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_answer_that_drops_every_known_root_is_refused() {
    let pki = Pki::new();
    let foreign = CertificateAuthority::generate("mesh.local", Duration::from_secs(3600)).unwrap();
    // Signs the Join CSR and puts its own root alone in the Join answer and the snapshots.
    let script = Script::new(
        CertificateAuthority::from_pem(foreign.cert_pem(), foreign.key_pem()).unwrap(),
        Duration::from_secs(3600),
    );
    let control_plane = SpiffeId::parse(CONTROL_PLANE).unwrap();
    let genuine = pki
        .ca
        .issue(&control_plane, Duration::from_secs(3600))
        .unwrap();
    let under_foreign = foreign
        .issue(&control_plane, Duration::from_secs(3600))
        .unwrap();
    let join_server = serve(&script, &genuine).await;
    let later = serve(&script, &under_foreign).await;
    let addr = switch(join_server, later).await;
    let mut proxy = MeshProxy::spawn_to(addr, &pki.dir.join("ca.pem"), &pki.dir, spec());

    let status = proxy.wait_exit(Duration::from_secs(30)).await;
    let logs = proxy.logs();
    assert!(!status.success(), "{status}\n{logs}");
    assert!(
        logs.contains("the trust bundle in the Join answer is refused")
            && logs.contains("keeps none of the roots trusted now")
            && logs.contains(&describe(&foreign)),
        "the proxy does not say why:\n{logs}"
    );
    // The Join was answered (over the pinned channel) and its bundle still not taken.
    assert_eq!(script.joins.load(Ordering::SeqCst), 1, "{logs}");
}

/// `--control-plane-id` is what the proxy pins, against a real `quiver-control` (which always
/// proves `spiffe://<td>/ns/quiver-system/sa/control-plane`): a proxy told to expect another
/// id refuses it, says why, and never sends its token, so the same one-use token then joins
/// when the proxy is told the right id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_pins_the_control_plane_id_it_is_given() {
    let dir = quiver_tests::pki::temp_dir("trust-pinned-id");
    let db = Db::sqlite(&dir);
    let cp = ControlPlane::start(&db, &dir, &[]).await;
    cp.apply(
        r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http1, targetPort: 1}]
"#,
    )
    .await;
    let ca = cp.write_ca(&dir).await;
    let token = cp.join_token("default", "web", 1, "10m").await;
    let other = "spiffe://mesh.local/ns/quiver-system/sa/control-plane-b";

    let mut proxy = MeshProxy::spawn(
        &cp,
        &ca,
        &dir,
        ProxySpec {
            token: token.clone(),
            ..spec_with(&["--control-plane-id", other])
        },
    );
    let why = format!("the server presented {CONTROL_PLANE}, not the control plane's id {other}");
    quiver_tests::eventually(
        "the proxy says why it refuses the control plane",
        Duration::from_secs(20),
        || async { proxy.logs().contains(&why).then_some(()) },
    )
    .await;
    assert!(proxy.exited().is_none(), "{}", proxy.logs());
    assert_ne!(proxy.readyz().await.map(|r| r.0).unwrap_or(0), 200);
    proxy.kill();

    let mut proxy = MeshProxy::spawn(
        &cp,
        &ca,
        &dir,
        ProxySpec {
            token,
            ..spec_with(&["--control-plane-id", CONTROL_PLANE])
        },
    );
    proxy.ready(Duration::from_secs(30)).await;
    assert_eq!(identity(&proxy).await["spiffe_id"], WEB, "{}", proxy.logs());
}

/// A control plane under a non-default id: a proxy told that id joins it, a proxy left on the
/// default refuses it (the default is a pin too, not "any control-plane-looking id").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_default_control_plane_id_is_the_only_one_accepted() {
    let pki = Pki::new();
    let other = "spiffe://mesh.local/ns/quiver-system/sa/control-plane-b";
    let script = Script::new(
        CertificateAuthority::from_pem(pki.ca.cert_pem(), pki.ca.key_pem()).unwrap(),
        Duration::from_secs(3600),
    );
    let presents = pki
        .ca
        .issue(&SpiffeId::parse(other).unwrap(), Duration::from_secs(3600))
        .unwrap();
    let addr = serve(&script, &presents).await;
    let ca = pki.dir.join("ca.pem");

    let mut proxy = MeshProxy::spawn_to(addr, &ca, &pki.dir, spec());
    let why = format!("the server presented {other}, not the control plane's id {CONTROL_PLANE}");
    quiver_tests::eventually(
        "a proxy on the default id refuses it",
        Duration::from_secs(20),
        || async { proxy.logs().contains(&why).then_some(()) },
    )
    .await;
    assert_eq!(script.joins.load(Ordering::SeqCst), 0, "{}", proxy.logs());
    proxy.kill();

    let mut proxy = MeshProxy::spawn_to(
        addr,
        &ca,
        &pki.dir,
        spec_with(&["--control-plane-id", other]),
    );
    proxy.ready(Duration::from_secs(30)).await;
    assert_eq!(script.joins.load(Ordering::SeqCst), 1);
}
