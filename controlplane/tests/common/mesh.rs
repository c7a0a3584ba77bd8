//! Proxies' side of the control plane for tests: join with a token over TLS, then call
//! MeshDiscovery over mTLS with the SVID, exactly as a proxy would.

use std::net::SocketAddr;
use std::time::Duration;

use quiver_api::SpiffeId;
use quiver_api::certs;
use quiver_api::tls::{MeshIdentity, pinned_client_config_without_identity};
use quiver_api::v1::{self, mesh_discovery_client::MeshDiscoveryClient};
use quiver_control::discovery::client;
use tonic::transport::Channel;

use super::TestServer;

pub type Discovery = MeshDiscoveryClient<Channel>;

/// A joined proxy: its SVID, key and the trust bundle.
pub struct Proxy {
    pub spiffe_id: String,
    pub chain_pem: String,
    pub key_pem: String,
    pub bundle_pem: String,
    pub discovery: SocketAddr,
}

pub async fn bundle(server: &TestServer) -> String {
    server
        .admin()
        .await
        .get_trust_bundle(v1::GetTrustBundleRequest {})
        .await
        .expect("GetTrustBundle")
        .into_inner()
        .pem
}

/// The id every test control plane's discovery listener proves.
pub fn control_plane() -> SpiffeId {
    SpiffeId::control_plane("mesh.local").expect("control-plane id")
}

/// A client without a certificate (what a proxy has before joining).
pub async fn anonymous(addr: SocketAddr, bundle_pem: &str) -> Discovery {
    let tls = pinned_client_config_without_identity(bundle_pem, &control_plane(), &[b"h2"])
        .expect("client TLS config");
    MeshDiscoveryClient::new(client::connect(addr, tls).await.expect("TLS to discovery"))
}

/// A join token for `ns`/`sa` with `uses` uses.
pub async fn join_token(server: &TestServer, ns: &str, sa: &str, uses: u32) -> String {
    server
        .admin()
        .await
        .create_join_token(v1::CreateJoinTokenRequest {
            namespace: ns.into(),
            service_account: sa.into(),
            ttl: "10m".into(),
            uses,
        })
        .await
        .expect("CreateJoinToken")
        .into_inner()
        .token
}

/// Create a join token for `ns`/`sa` and join with it over TLS.
pub async fn join(server: &TestServer, ns: &str, sa: &str) -> Proxy {
    let token = join_token(server, ns, sa, 1).await;
    join_with(server, &token).await.expect("join over TLS")
}

/// Join with `token` over TLS, as a proxy does: the control plane's answer or refusal.
pub async fn join_with(server: &TestServer, token: &str) -> Result<Proxy, tonic::Status> {
    let bundle_pem = bundle(server).await;
    let (key_pem, csr_der) = certs::new_key_and_csr().expect("key and CSR");
    let joined = anonymous(server.discovery, &bundle_pem)
        .await
        .join(v1::JoinRequest {
            join_token: token.into(),
            csr_der,
        })
        .await?
        .into_inner();
    Ok(Proxy {
        spiffe_id: joined.spiffe_id,
        chain_pem: joined.cert_chain_pem,
        key_pem,
        bundle_pem,
        discovery: server.discovery,
    })
}

impl Proxy {
    /// A MeshDiscovery client presenting this proxy's SVID, to `addr` (a replica).
    pub async fn client_to(&self, addr: SocketAddr) -> Discovery {
        let id = MeshIdentity::from_pem(&self.chain_pem, &self.key_pem, &self.bundle_pem)
            .expect("joined identity");
        let tls = id
            .pinned_client_config(&control_plane(), &[b"h2"])
            .expect("client TLS config");
        MeshDiscoveryClient::new(client::connect(addr, tls).await.expect("mTLS to discovery"))
    }

    pub async fn client(&self) -> Discovery {
        self.client_to(self.discovery).await
    }
}

/// A Watch stream and the latest snapshot read from it.
pub struct Watcher {
    pub stream: tonic::Streaming<v1::ProxySnapshot>,
    pub last: Option<v1::ProxySnapshot>,
}

impl Watcher {
    pub async fn open(client: &mut Discovery, fronts: &[&str]) -> Self {
        let stream = client
            .watch(v1::ProxyWatchRequest {
                services: fronts
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect(),
            })
            .await
            .expect("watch")
            .into_inner();
        Self { stream, last: None }
    }

    /// Read snapshots until one satisfies `ok`; versions must only grow.
    pub async fn until(
        &mut self,
        what: &str,
        ok: impl Fn(&v1::ProxySnapshot) -> bool,
    ) -> v1::ProxySnapshot {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.message())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for a snapshot where {what}"))
                .expect("watch stream failed")
                .expect("watch stream ended");
            if let Some(last) = &self.last {
                assert!(
                    next.version > last.version,
                    "snapshot versions must grow: {} then {}",
                    last.version,
                    next.version
                );
            }
            self.last = Some(next.clone());
            if ok(&next) {
                return next;
            }
        }
    }
}

/// The endpoints of `service` in a snapshot.
pub fn endpoints<'a>(snap: &'a v1::ProxySnapshot, service: &str) -> &'a [v1::SnapshotEndpoint] {
    snap.services
        .iter()
        .find(|s| s.name == service)
        .map(|s| s.endpoints.as_slice())
        .unwrap_or_default()
}

pub fn registration(service: &str, address: &str, version: &str) -> v1::WorkloadRegistration {
    v1::WorkloadRegistration {
        service: service.into(),
        address: address.into(),
        ports: vec![],
        labels: [("version".to_string(), version.to_string())].into(),
        zone: "zone-a".into(),
        sidecar_ports: vec![],
    }
}
