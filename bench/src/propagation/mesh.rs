//! What the watchers watch: two Services in namespace `shop` (`web`, which every watcher
//! fronts, and `reviews`, which it calls, with `--endpoints` registered workloads), a
//! `reviews` Route whose weights each round flips, and N Watch streams over mTLS with an SVID
//! joined like a proxy's (join token + CSR; the key never leaves this process).

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context;
use quiver_api::SpiffeId;
use quiver_api::certs;
use quiver_api::tls::{MeshIdentity, PinnedClientConfig, pinned_client_config_without_identity};
use quiver_api::v1::{self, mesh_discovery_client::MeshDiscoveryClient};
use quiver_control::discovery::client;
use tokio::sync::mpsc;

use super::control::{Admin, ControlPlane};

/// Largest snapshot a watcher accepts (hundreds of endpoints make multi-MiB snapshots).
const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// What a watcher reports.
#[derive(Debug)]
pub enum Event {
    /// It holds its first snapshot.
    Ready(usize),
    /// It read a later snapshot at `at`.
    Snapshot {
        watcher: usize,
        version: u64,
        /// Weight of the Route's first backend (`v1`), to check the content, not just the
        /// version.
        v1_weight: u32,
        at: Instant,
    },
    /// Its stream failed or ended.
    Lost(usize, String),
}

pub(crate) fn yaml<R: quiver_api::resource::Resource>(text: &str) -> anyhow::Result<R> {
    let docs = quiver_api::document::parse_documents(text)?;
    let any = docs.into_iter().next().context("one document")?;
    Ok(serde_yaml::from_value(any.to_yaml_value()?)?)
}

/// The `reviews` Route: `v1_weight` to v1, the rest to v2.
pub fn route(v1_weight: u32) -> anyhow::Result<v1::Route> {
    yaml(&format!(
        "apiVersion: quiver.dev/v1\nkind: Route\nmetadata: {{name: reviews, namespace: shop}}\n\
         spec:\n  service: reviews\n  rules:\n  - name: default\n    backends:\n    \
         - {{subset: v1, weight: {v1_weight}}}\n    - {{subset: v2, weight: {}}}\n",
        100 - v1_weight
    ))
}

/// Services, the Route at 50/50 and `endpoints` registered `reviews` workloads; returns the
/// client TLS config of a joined `web` proxy for the watchers.
pub async fn set_up(cp: &ControlPlane, endpoints: usize) -> anyhow::Result<PinnedClientConfig> {
    let mut admin = cp.admin();
    admin
        .apply_service(yaml::<v1::Service>(
            "apiVersion: quiver.dev/v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\n\
             spec:\n  ports: [{name: http, port: 9080, protocol: http1}]\n  subsets:\n  \
             - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n",
        )?)
        .await
        .context("applying Service reviews")?;
    admin
        .apply_service(yaml::<v1::Service>(
            "apiVersion: quiver.dev/v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
             spec:\n  ports: [{name: http, port: 8080, protocol: http1}]\n",
        )?)
        .await
        .context("applying Service web")?;
    admin
        .apply_route(route(50)?)
        .await
        .context("applying Route reviews")?;

    let reviews = join(&mut admin, cp, "reviews").await?;
    let channel = client::connect(
        cp.discovery,
        reviews.pinned_client_config(&control_plane()?, &[b"h2"])?,
    )
    .await?;
    let mut registrar = MeshDiscoveryClient::new(channel);
    for i in 0..endpoints {
        let mut reg = v1::WorkloadRegistration {
            service: "reviews".into(),
            address: format!("10.0.{}.{}:15443", i / 250, i % 250 + 1),
            zone: "zone-a".into(),
            ..Default::default()
        };
        let version = if i % 2 == 0 { "v1" } else { "v2" };
        reg.labels.insert("version".into(), version.into());
        registrar
            .register(reg)
            .await
            .with_context(|| format!("registering endpoint {i}"))?;
    }
    let web = join(&mut admin, cp, "web").await?;
    Ok(web.pinned_client_config(&control_plane()?, &[b"h2"])?)
}

/// The id the benchmark's control plane proves on its discovery listener.
fn control_plane() -> anyhow::Result<SpiffeId> {
    Ok(SpiffeId::control_plane("mesh.local")?)
}

/// A one-use join token for `shop/<sa>`, then Join over TLS with a fresh key's CSR.
async fn join(admin: &mut Admin, cp: &ControlPlane, sa: &str) -> anyhow::Result<MeshIdentity> {
    let token = admin
        .create_join_token(v1::CreateJoinTokenRequest {
            namespace: "shop".into(),
            service_account: sa.into(),
            ttl: "10m".into(),
            uses: 1,
        })
        .await
        .with_context(|| format!("join token for {sa}"))?
        .into_inner()
        .token;
    let (key, csr_der) = certs::new_key_and_csr()?;
    let tls = pinned_client_config_without_identity(&cp.bundle_pem, &control_plane()?, &[b"h2"])?;
    let joined = MeshDiscoveryClient::new(client::connect(cp.discovery, tls).await?)
        .join(v1::JoinRequest {
            join_token: token,
            csr_der,
        })
        .await
        .with_context(|| format!("joining as {sa}"))?
        .into_inner();
    Ok(MeshIdentity::from_pem(
        &joined.cert_chain_pem,
        &key,
        &cp.bundle_pem,
    )?)
}

/// Open `n` Watch streams as proxies fronting `web`, `per_connection` of them on each TLS
/// connection (connections are dialled here, one after another; the streams run as tasks).
pub async fn spawn_watchers(
    discovery: SocketAddr,
    tls: &PinnedClientConfig,
    n: usize,
    per_connection: usize,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let mut channel = None;
    for watcher in 0..n {
        if watcher % per_connection.max(1) == 0 {
            let c = client::connect(discovery, tls.clone())
                .await
                .with_context(|| format!("watcher {watcher}: connecting"))?;
            channel = Some(c);
        }
        let shared = channel
            .clone()
            .context("a channel is dialled at watcher 0")?;
        let mut client =
            MeshDiscoveryClient::new(shared).max_decoding_message_size(MAX_SNAPSHOT_BYTES);
        let events = events.clone();
        tokio::spawn(async move {
            let request = v1::ProxyWatchRequest {
                services: vec!["web".into()],
            };
            let mut stream = match client.watch(request).await {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    let _ = events.send(Event::Lost(watcher, format!("Watch refused: {e}")));
                    return;
                }
            };
            let mut first = true;
            loop {
                let snap = match stream.message().await {
                    Ok(Some(snap)) => snap,
                    Ok(None) => {
                        let _ = events.send(Event::Lost(watcher, "stream ended".into()));
                        return;
                    }
                    Err(e) => {
                        let _ = events.send(Event::Lost(watcher, e.to_string()));
                        return;
                    }
                };
                let at = Instant::now();
                let event = if std::mem::take(&mut first) {
                    Event::Ready(watcher)
                } else {
                    Event::Snapshot {
                        watcher,
                        version: snap.version,
                        v1_weight: v1_weight(&snap),
                        at,
                    }
                };
                if events.send(event).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn v1_weight(snap: &v1::ProxySnapshot) -> u32 {
    snap.routes
        .iter()
        .find(|r| r.metadata.as_ref().is_some_and(|m| m.name == "reviews"))
        .and_then(|r| r.spec.as_ref())
        .and_then(|s| s.rules.first())
        .and_then(|r| r.backends.first())
        .map_or(0, |b| b.weight)
}
