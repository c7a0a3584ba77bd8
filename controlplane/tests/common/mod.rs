//! Shared test fixtures: a private Postgres database per test, SQLite in a temp dir, polling.
#![allow(dead_code)]

pub mod ctl;
pub mod mesh;

use std::sync::Arc;

use quiver_control::store::{PgStore, SqliteStore, Store};
use quiver_tests::scratch::{PG_HINT, ScratchDatabase, server_url};

/// A private Postgres database for one test (the test kit's scratch database), dropped with
/// its connections when this value drops, even when the test panics.
pub struct PgTestDb {
    pub url: String,
    _db: ScratchDatabase,
}

impl PgTestDb {
    pub async fn create() -> Self {
        let db = ScratchDatabase::create(&server_url())
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{PG_HINT}"));
        Self {
            url: db.url.clone(),
            _db: db,
        }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        Arc::new(
            PgStore::connect(&self.url)
                .await
                .expect("connect test database"),
        )
    }
}

pub struct SqliteTestDb {
    pub dir: tempfile::TempDir,
}

impl SqliteTestDb {
    pub fn create() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        Arc::new(
            SqliteStore::open_dir(self.dir.path())
                .await
                .expect("open sqlite store"),
        )
    }
}

/// A control plane on 127.0.0.1:0 with a known admin token.
pub struct TestServer {
    pub running: Option<quiver_control::server::Running>,
    pub addr: std::net::SocketAddr,
    /// The discovery listener (TLS).
    pub discovery: std::net::SocketAddr,
    pub admin: String,
    pub url: String,
}

pub const ADMIN_TOKEN: &str = "qvr_test-admin-token-0123456789abcdef";

impl TestServer {
    /// `database_url`: Postgres URL, or None for SQLite in `data_dir`.
    pub async fn start(database_url: Option<&str>, data_dir: &std::path::Path) -> Self {
        Self::start_with(database_url, data_dir, &[]).await
    }

    /// As [`TestServer::start`], with extra flags.
    pub async fn start_with(
        database_url: Option<&str>,
        data_dir: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        let mut args = vec![
            "quiver-control".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--discovery-listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--admin-token".into(),
            ADMIN_TOKEN.into(),
        ];
        if let Some(url) = database_url {
            args.push("--database-url".into());
            args.push(url.into());
            args.push("--ca-key-encryption-key".into());
            args.push(
                quiver_tests::scratch::ca_key_encryption_key(data_dir)
                    .display()
                    .to_string(),
            );
        }
        args.extend(extra.iter().map(std::string::ToString::to_string));
        let config =
            <quiver_control::server::Config as clap::Parser>::try_parse_from(args).expect("config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let running = quiver_control::server::start_on(&config, listener)
            .await
            .expect("server starts");
        let addr = running.addr;
        let discovery = running.discovery_addr;
        Self {
            running: Some(running),
            addr,
            discovery,
            admin: ADMIN_TOKEN.into(),
            url: format!("http://{addr}"),
        }
    }

    pub async fn client(&self, token: Option<&str>) -> Client {
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("API URL")
            .connect()
            .await
            .expect("connect");
        let token = token.map(|t| format!("Bearer {t}").parse().expect("token header"));
        quiver_api::v1::mesh_admin_client::MeshAdminClient::with_interceptor(channel, Bearer(token))
    }

    pub async fn admin(&self) -> Client {
        self.client(Some(&self.admin.clone())).await
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = quiver_api::v1::mesh_admin_client::MeshAdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// The first document of a YAML text, as a concrete resource type.
pub fn doc<R: quiver_api::resource::Resource>(yaml: &str) -> R {
    let docs = quiver_api::document::parse_documents(yaml).expect("test YAML parses");
    let any = docs.into_iter().next().expect("one document");
    let value = any.to_yaml_value().expect("YAML value");
    serde_yaml::from_value(value).expect("document of the expected kind")
}

pub const REVIEWS_SERVICE: &str = r#"
apiVersion: quiver.dev/v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  ports: [{name: http, port: 9080, protocol: http1}]
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

/// `REVIEWS_SERVICE` under another name (same ports and subsets): a Service of its own for
/// a second Route (a service is routed by one Route).
pub fn service_like_reviews(name: &str) -> String {
    REVIEWS_SERVICE.replace("name: reviews,", &format!("name: {name},"))
}

pub fn route_yaml(name: &str, v1_weight: u32) -> String {
    route_yaml_on(name, "reviews", v1_weight)
}

/// A Route named `name` for `service` (which has subsets v1 and v2).
pub fn route_yaml_on(name: &str, service: &str, v1_weight: u32) -> String {
    format!(
        r#"
apiVersion: quiver.dev/v1
kind: Route
metadata: {{name: {name:?}, namespace: shop}}
spec:
  service: {service}
  rules:
  - name: default
    backends:
    - {{subset: v1, weight: {v1_weight}}}
    - {{subset: v2, weight: {}}}
    timeout: 2s
"#,
        100 - v1_weight
    )
}

/// GET `path` over HTTP/1.1 from the API port; the body of a 200 answer.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("answer");
    assert_eq!(resp.status(), 200, "GET {path}");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(body.to_vec()).expect("UTF-8 body")
}
