//! Real proxies, in process, on loopback ports chosen by the kernel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use quiver_proxy::Bound;
use quiver_proxy::config::ProxyConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::apps;
use crate::pki::{IdentityFiles, Pki, temp_dir, yaml_path};

/// A proxy running in this process.
pub struct RunningProxy {
    pub bound: Bound,
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningProxy {
    /// Parse `yaml` (relative paths against `dir`), bind and run it.
    pub async fn start(yaml: &str, dir: &Path) -> anyhow::Result<Self> {
        crate::init_log();
        let config = ProxyConfig::parse(yaml, dir).map_err(|e| anyhow::anyhow!("{e}"))?;
        let proxy = quiver_proxy::Proxy::bind(config).await?;
        let bound = proxy.bound().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async move {
            let _ = rx.await;
        }));
        Ok(Self {
            bound,
            dir: dir.to_path_buf(),
            stop: Some(tx),
            task,
        })
    }

    /// Start from a config file that is re-read every `reload` for live changes.
    pub async fn start_file(path: &Path, reload: std::time::Duration) -> anyhow::Result<Self> {
        crate::init_log();
        let config = ProxyConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let proxy = quiver_proxy::Proxy::bind(config)
            .await?
            .reload_config_from(path.to_path_buf(), reload);
        let bound = proxy.bound().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async move {
            let _ = rx.await;
        }));
        Ok(Self {
            bound,
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            stop: Some(tx),
            task,
        })
    }

    /// Begin the drain (like SIGTERM) without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Drain and wait until the proxy has stopped.
    pub async fn stop(mut self) {
        self.signal_stop();
        let _ = (&mut self.task).await;
    }

    /// Wait for a stop begun with [`RunningProxy::signal_stop`].
    pub async fn stopped(mut self) {
        let _ = (&mut self.task).await;
    }

    /// GET a path on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        crate::client::get_text(self.bound.admin, path).await
    }
}

/// The identity block of a proxy's YAML.
pub fn identity_yaml(f: &IdentityFiles) -> String {
    format!(
        "identity: {{cert: {}, key: {}, trust_bundle: {}}}\n",
        yaml_path(&f.cert),
        yaml_path(&f.key),
        yaml_path(&f.bundle)
    )
}

/// The sample apps behind the server-side proxy.
#[derive(Debug, Clone, Copy)]
pub struct Apps {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub tcp: SocketAddr,
}

impl Apps {
    pub async fn start() -> Self {
        Self {
            http: apps::start_http_echo().await,
            grpc: apps::start_grpc_echo().await,
            tcp: apps::start_tcp_echo().await,
        }
    }
}

/// YAML for a server-side proxy fronting the sample apps:
/// services `echo` (http1), `echo-h2` (http2), `grpc` (grpc), `tcp-echo` (tcp).
pub fn server_yaml(id: &IdentityFiles, apps: &Apps, drain: &str) -> String {
    format!(
        "{}listen: {{quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}
drain_timeout: {drain}
inbound:
  - {{service: echo, port: 8080, protocol: http1, app: \"{http}\"}}
  - {{service: echo-h2, port: 8080, protocol: http2, app: \"{http}\"}}
  - {{service: grpc, port: 50051, protocol: grpc, app: \"{grpc}\"}}
  - {{service: tcp-echo, port: 9000, protocol: tcp, app: \"{tcp}\"}}
",
        identity_yaml(id),
        http = apps.http,
        grpc = apps.grpc,
        tcp = apps.tcp,
    )
}

/// YAML for a client-side proxy whose four outbound listeners (echo, echo-h2, grpc,
/// tcp-echo, in that order) and HTTP proxy listener all lead to `peer`, which must prove
/// `peer_id`.
pub fn client_yaml(id: &IdentityFiles, peer: SocketAddr, peer_id: &str) -> String {
    let mut y = identity_yaml(id);
    y.push_str(
        "listen: {quic: \"127.0.0.1:0\", admin: \"127.0.0.1:0\", http_proxy: \"127.0.0.1:0\"}
drain_timeout: 5s
outbound:
  - {listen: \"127.0.0.1:0\", service: echo, protocol: http1}
  - {listen: \"127.0.0.1:0\", service: echo-h2, protocol: http2}
  - {listen: \"127.0.0.1:0\", service: grpc, protocol: grpc}
  - {listen: \"127.0.0.1:0\", service: tcp-echo, protocol: tcp}
services:
",
    );
    for name in ["echo", "echo-h2", "grpc", "tcp-echo"] {
        y.push_str(&format!(
            "  - name: {name}\n    endpoints: [{{address: \"{peer}\", identity: \"{peer_id}\"}}]\n"
        ));
    }
    y.push_str("  - name: nowhere\n    endpoints: []\n");
    y
}

/// Two proxies, A (client side, sa/a) and B (server side, sa/b), with the sample apps behind B.
pub struct Pair {
    pub pki: Pki,
    pub apps: Apps,
    pub a: RunningProxy,
    pub b: RunningProxy,
}

impl Pair {
    pub async fn start() -> Self {
        Self::start_with_drain("5s").await
    }

    pub async fn start_with_drain(drain: &str) -> Self {
        let pki = Pki::new();
        let apps = Apps::start().await;
        let dir = temp_dir("pair");
        let b = RunningProxy::start(&server_yaml(&pki.issue("b"), &apps, drain), &dir)
            .await
            .expect("start B");
        let a = RunningProxy::start(
            &client_yaml(&pki.issue("a"), b.bound.quic, pki.id("b").as_str()),
            &dir,
        )
        .await
        .expect("start A");
        Self { pki, apps, a, b }
    }

    /// A's listener for service `echo` (HTTP/1.1).
    pub fn http1(&self) -> SocketAddr {
        self.a.bound.outbound[0]
    }
    /// A's listener for `echo-h2` (h2c to the app).
    pub fn http2(&self) -> SocketAddr {
        self.a.bound.outbound[1]
    }
    /// A's listener for `grpc`.
    pub fn grpc(&self) -> SocketAddr {
        self.a.bound.outbound[2]
    }
    /// A's listener for `tcp-echo`.
    pub fn tcp(&self) -> SocketAddr {
        self.a.bound.outbound[3]
    }
    /// A's HTTP proxy listener.
    pub fn http_proxy(&self) -> SocketAddr {
        self.a.bound.http_proxy.expect("http proxy listener")
    }
}
