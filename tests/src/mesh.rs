//! A real mesh for tests: the control plane and the proxies run as child processes (the
//! `quiver-control` and `quiver-proxy` binaries cargo built for this workspace), proxies join
//! with join tokens, apps run in the test process. Nothing is mocked: the tests can kill a
//! process the way an operator's node would.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quiver_api::v1;
use quiver_api::v1::mesh_admin_client::MeshAdminClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::scratch::{PG_HINT, ScratchDatabase, server_url};

/// The admin token every test control plane accepts.
pub const ADMIN_TOKEN: &str = "qvr_mesh-test-admin-token-0123456789";

/// A binary of this workspace, next to the test executable's `deps/` folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --workspace --bins` (`cargo test --workspace` \
         builds it too)",
        path.display()
    );
    path
}

/// A TCP port free right now on 127.0.0.1 (for processes that must come back on the same one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Where the control plane keeps its state.
pub enum Db {
    /// A private Postgres database, dropped at the end.
    Postgres(ScratchDatabase),
    Sqlite(PathBuf),
}

impl Db {
    /// A fresh database on the test Postgres (`QUIVER_TEST_DATABASE_URL`, default
    /// postgres://postgres@127.0.0.1:5432/postgres).
    pub async fn postgres() -> Self {
        match ScratchDatabase::create(&server_url()).await {
            Ok(db) => Self::Postgres(db),
            Err(e) => panic!("{e:#}\n{PG_HINT}"),
        }
    }

    pub fn sqlite(dir: &Path) -> Self {
        Self::Sqlite(dir.join("control-plane"))
    }

    fn args(&self) -> Vec<String> {
        match self {
            Self::Postgres(db) => vec!["--database-url".into(), db.url.clone()],
            Self::Sqlite(dir) => vec!["--data-dir".into(), dir.display().to_string()],
        }
    }
}

/// Adds the bearer token to every admin call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Admin = MeshAdminClient<InterceptedService<Channel, Bearer>>;

/// A `quiver-control` process.
pub struct ControlPlane {
    child: Option<Child>,
    pub api: SocketAddr,
    pub discovery: SocketAddr,
    pub log: PathBuf,
    args: Vec<String>,
}

impl ControlPlane {
    /// Start on fresh ports with `db`, plus `extra` flags (e.g. `--lease-ttl 3s`).
    pub async fn start(db: &Db, dir: &Path, extra: &[&str]) -> Self {
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let discovery = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::start_on(db, dir, api, discovery, extra).await
    }

    /// Start on the given ports (a restart comes back where proxies look for it).
    pub async fn start_on(
        db: &Db,
        dir: &Path,
        api: SocketAddr,
        discovery: SocketAddr,
        extra: &[&str],
    ) -> Self {
        let mut args = vec![
            "--listen".to_string(),
            api.to_string(),
            "--discovery-listen".into(),
            discovery.to_string(),
        ];
        args.extend(db.args());
        if let Db::Postgres(_) = db {
            args.push("--ca-key-encryption-key".into());
            args.push(
                crate::scratch::ca_key_encryption_key(dir)
                    .display()
                    .to_string(),
            );
        }
        args.extend(extra.iter().map(std::string::ToString::to_string));
        let mut cp = Self {
            child: None,
            api,
            discovery,
            log: dir.join(format!("control-plane-{}.log", api.port())),
            args,
        };
        cp.spawn().await;
        cp
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("control plane log file");
        let child = Command::new(binary("quiver-control"))
            .args(&self.args)
            .env("QUIVER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn quiver-control");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "quiver-control exited with {status} at start:\n{}",
                    self.logs()
                );
            }
            if let Ok(mut admin) = self.try_admin().await
                && admin.status(v1::StatusRequest {}).await.is_ok()
            {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("quiver-control did not come up in 60s:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_admin(&self) -> Result<Admin, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.api))?
            .connect()
            .await?;
        let bearer = Bearer(
            format!("Bearer {ADMIN_TOKEN}")
                .parse()
                .expect("ascii token"),
        );
        Ok(MeshAdminClient::with_interceptor(channel, bearer))
    }

    /// An admin API client.
    pub async fn admin(&self) -> Admin {
        self.try_admin().await.expect("connect to the admin API")
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send `signal` (e.g. "STOP", "CONT") to the process with kill(1): SIGSTOP freezes it
    /// with its sockets open, the way a wedged or overloaded control plane looks to proxies.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("control plane running").id();
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid} failed");
    }

    /// Start again after [`ControlPlane::kill`], same ports and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Write the mesh CA (what `--ca-cert` wants) into `dir` and return its path.
    pub async fn write_ca(&self, dir: &Path) -> PathBuf {
        let bundle = self
            .admin()
            .await
            .get_trust_bundle(v1::GetTrustBundleRequest {})
            .await
            .expect("trust bundle")
            .into_inner();
        let path = dir.join("mesh-ca.pem");
        std::fs::write(&path, bundle.pem).expect("write CA");
        path
    }

    /// A join token for `namespace/service_account` with `uses` uses and `ttl`.
    pub async fn join_token(&self, namespace: &str, sa: &str, uses: u32, ttl: &str) -> String {
        self.admin()
            .await
            .create_join_token(v1::CreateJoinTokenRequest {
                namespace: namespace.into(),
                service_account: sa.into(),
                ttl: ttl.into(),
                uses,
            })
            .await
            .expect("create join token")
            .into_inner()
            .token
    }

    /// A certificate for `namespace/service_account` from the mesh CA, got the way a joining
    /// proxy gets one (a join token, then Join with a fresh key's CSR), written under `dir`
    /// as identity files (cert chain, 0600 key, trust bundle): for clients that are not
    /// Quiver proxies.
    pub async fn issue_identity(
        &self,
        namespace: &str,
        service_account: &str,
        dir: &Path,
    ) -> crate::pki::IdentityFiles {
        use quiver_api::v1::mesh_discovery_client::MeshDiscoveryClient;
        let token = self.join_token(namespace, service_account, 1, "10m").await;
        let (key_pem, csr_der) = quiver_api::certs::new_key_and_csr().expect("key and CSR");
        let joined = MeshDiscoveryClient::connect(format!("http://{}", self.api))
            .await
            .expect("connect to the discovery API")
            .join(v1::JoinRequest {
                join_token: token,
                csr_der,
            })
            .await
            .expect("join")
            .into_inner();
        let d = dir.join(format!("{namespace}.{service_account}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        let files = crate::pki::IdentityFiles {
            cert: d.join("cert.pem"),
            key: d.join("key.pem"),
            bundle: d.join("bundle.pem"),
        };
        std::fs::write(&files.cert, &joined.cert_chain_pem).expect("write cert");
        crate::pki::write_private(&files.key, &key_pem);
        std::fs::write(&files.bundle, &joined.trust_bundle_pem).expect("write bundle");
        files
    }

    /// Apply YAML documents (`---`-separated, as `quiverctl apply` reads them) through the API.
    pub async fn apply(&self, yaml: &str) {
        use quiver_api::resource::AnyResource;
        let mut admin = self.admin().await;
        for doc in quiver_api::document::parse_documents(yaml).expect("test YAML parses") {
            let kind = format!("{:?}", doc.kind());
            let result = match doc {
                AnyResource::Service(r) => admin.apply_service(r).await.map(|_| ()),
                AnyResource::Route(r) => admin.apply_route(r).await.map(|_| ()),
                AnyResource::AuthorizationPolicy(r) => {
                    admin.apply_authorization_policy(r).await.map(|_| ())
                }
                AnyResource::MeshConfig(r) => admin.apply_mesh_config(r).await.map(|_| ()),
                AnyResource::Canary(r) => admin.apply_canary(r).await.map(|_| ()),
                AnyResource::HttpRoute(r) => admin.apply_http_route(r).await.map(|_| ()),
                AnyResource::GrpcRoute(r) => admin.apply_grpc_route(r).await.map(|_| ()),
                other => panic!("apply: {:?} cannot be applied", other.kind()),
            };
            result.unwrap_or_else(|e| panic!("apply {kind}: {e}"));
        }
    }

    /// The endpoints (addresses) the control plane lists for `namespace/service`.
    pub async fn workloads(&self, namespace: &str, service: &str) -> Vec<String> {
        self.admin()
            .await
            .list_workloads(v1::ListRequest {
                namespace: namespace.into(),
            })
            .await
            .expect("list workloads")
            .into_inner()
            .items
            .into_iter()
            .filter_map(|w| w.spec)
            .filter(|s| s.service == service)
            .map(|s| s.address)
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a joined proxy should do.
pub struct ProxySpec<'a> {
    pub service: &'a str,
    pub token: String,
    pub labels: &'a [(&'a str, &'a str)],
    /// Explicit upstream listeners: (service, protocol).
    pub outbound: &'a [(&'a str, &'a str)],
    /// More flags, e.g. `--app-host 127.0.0.2`.
    pub extra: &'a [&'a str],
}

/// A `quiver-proxy` process in control-plane mode.
pub struct MeshProxy {
    child: Option<Child>,
    pub admin: SocketAddr,
    pub http_proxy: SocketAddr,
    pub outbound: Vec<SocketAddr>,
    pub log: PathBuf,
    pub name: String,
}

impl MeshProxy {
    /// Spawn a proxy that joins `cp` (it is not ready yet: see [`MeshProxy::ready`]).
    pub fn spawn(cp: &ControlPlane, ca: &Path, dir: &Path, spec: ProxySpec<'_>) -> Self {
        Self::spawn_to(cp.discovery, ca, dir, spec)
    }

    /// Spawn a proxy that joins whatever listens at `discovery` (an impostor, in the trust
    /// tests).
    pub fn spawn_to(discovery: SocketAddr, ca: &Path, dir: &Path, spec: ProxySpec<'_>) -> Self {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http_proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let outbound: Vec<SocketAddr> = spec
            .outbound
            .iter()
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let name = format!("{}-{}", spec.service, admin.port());
        let log = dir.join(format!("proxy-{name}.log"));
        let mut cmd = Command::new(binary("quiver-proxy"));
        cmd.arg("--control-plane")
            .arg(discovery.to_string())
            .arg("--ca-cert")
            .arg(ca)
            .arg("--service")
            .arg(spec.service)
            .arg("--quic-listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--http-proxy-listen")
            .arg(http_proxy.to_string())
            .arg("--drain-timeout")
            .arg("5s")
            .env("QUIVER_JOIN_TOKEN", &spec.token)
            .env("RUST_LOG", "info");
        for (k, v) in spec.labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        for ((svc, proto), listen) in spec.outbound.iter().zip(&outbound) {
            cmd.arg("--outbound").arg(format!("{listen}={svc}/{proto}"));
        }
        cmd.args(spec.extra);
        let file = std::fs::File::create(&log).expect("proxy log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("spawn quiver-proxy");
        Self {
            child: Some(child),
            admin,
            http_proxy,
            outbound,
            log,
            name,
        }
    }

    /// Spawn and wait until `/readyz` says ready.
    pub async fn start(cp: &ControlPlane, ca: &Path, dir: &Path, spec: ProxySpec<'_>) -> Self {
        let mut p = Self::spawn(cp, ca, dir, spec);
        p.ready(Duration::from_secs(30)).await;
        p
    }

    /// Wait for `/readyz` 200; panics with the proxy's log if it exits or takes too long.
    pub async fn ready(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                panic!("proxy {} exited with {status}:\n{}", self.name, self.logs());
            }
            if let Ok((200, _)) = self.readyz().await {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "proxy {} not ready in {within:?}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/readyz`: (status, body).
    pub async fn readyz(&self) -> std::io::Result<(u16, String)> {
        admin_get(self.admin, "/readyz").await
    }

    /// `/metrics` text ("" when unreachable).
    pub async fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait (up to `within`) for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "proxy {} still running after {within:?}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a clean stop: deregister, drain).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MeshProxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET over HTTP/1.1 on a fresh connection, without panicking when nothing listens.
pub async fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(std::io::Error::other)?;
    let resp = send
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of an unlabelled gauge or counter in Prometheus text, if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
