//! The demo's sample services, run as `quiver-demo demo-app NAME` child processes next to
//! their sidecars. They are plain apps: they listen on loopback, speak plain HTTP/1.1 or
//! gRPC (h2c), and reach each other only through their sidecar's outbound listener. They
//! never see TLS; what they report about their callers (`x-quiver-peer-identity`) is what the
//! receiving sidecar proved with mTLS.
//!
//! - `frontend`: `GET /` calls catalog (`GET /product/quiver-book`) and answers with which
//!   catalog version served it and the rating catalog got from ratings.
//! - `catalog --version v1|v2`: `GET /product/NAME` calls ratings over gRPC and answers with
//!   its version, the caller it saw and the rating.
//! - `ratings`: gRPC `quiver.demo.Ratings/Get`.
//! - `job`: not a service but a batch job, for the demo as pods (deploy/podman/): calls `--url`
//!   until it answers 2xx (the sidecar may still be starting), prints the answer, POSTs
//!   `--quit` (the sidecar's `/quitquitquit`, so that the pod completes) and exits 0.
//!
//! The upstream URLs come from flags or the environment (`QUIVER_DEMO_CATALOG_URL`,
//! `QUIVER_DEMO_RATINGS_URL`): the process demo passes its sidecars' outbound listeners, the
//! pods pass mesh names (`http://catalog.demo.mesh`), which transparent capture and the
//! sidecar's DNS resolver carry into the mesh.
//!
//! frontend and catalog can be told to misbehave at run time, a demo facility for watching a
//! canary roll back: `POST /demo/misbehave` on the app's own port (not through the mesh) with
//! `{"errorPercent": 30, "extraLatency": "200ms"}` ([`Misbehave`]); `{"errorPercent": 0}`
//! heals. `GET /demo/misbehave` shows the current settings.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::proto::ratings_client::RatingsClient;
use crate::proto::ratings_server::{Ratings, RatingsServer};
use crate::proto::{RatingReply, RatingRequest};

/// Set by the receiving sidecar: the caller's SPIFFE id from its mTLS certificate.
const PEER_IDENTITY: &str = "x-quiver-peer-identity";
/// The product the frontend shows.
pub const PRODUCT: &str = "quiver-book";
/// Where frontend and catalog take their misbehaviour settings, on the app's own port.
pub const MISBEHAVE_PATH: &str = "/demo/misbehave";
/// The longest `extraLatency` accepted.
pub const MAX_EXTRA_LATENCY: Duration = Duration::from_secs(60);
/// A valid `POST /demo/misbehave` body, for error messages.
const MISBEHAVE_EXAMPLE: &str = r#"{"errorPercent": 30, "extraLatency": "200ms"}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AppName {
    Frontend,
    Catalog,
    Ratings,
    Job,
}

/// `quiver-demo demo-app NAME`: one of the demo's sample services.
#[derive(Debug, clap::Parser)]
#[command(name = "quiver-demo demo-app", bin_name = "quiver-demo demo-app")]
pub struct AppArgs {
    /// Which service to run.
    #[arg(value_enum)]
    pub name: AppName,
    /// Where to listen (plain HTTP/1.1 for frontend and catalog, gRPC h2c for ratings); not
    /// for job.
    #[arg(long, env = "QUIVER_DEMO_LISTEN", required_if_eq_any([
        ("name", "frontend"), ("name", "catalog"), ("name", "ratings"),
    ]))]
    pub listen: Option<SocketAddr>,
    /// catalog only: the version it reports (v1, v2).
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// frontend only: catalog's base URL (its sidecar's outbound listener, or a mesh name
    /// such as http://catalog.demo.mesh under transparent capture).
    #[arg(
        long,
        env = "QUIVER_DEMO_CATALOG_URL",
        required_if_eq("name", "frontend")
    )]
    pub catalog: Option<String>,
    /// catalog only: ratings' URL, gRPC (its sidecar's outbound listener, or
    /// http://ratings.demo.mesh:9090 under transparent capture).
    #[arg(
        long,
        env = "QUIVER_DEMO_RATINGS_URL",
        required_if_eq("name", "catalog")
    )]
    pub ratings: Option<String>,
    /// job only: the URL it GETs until it answers 2xx.
    #[arg(long, env = "QUIVER_DEMO_URL", required_if_eq("name", "job"))]
    pub url: Option<String>,
    /// job only: a URL it POSTs once done (the sidecar's
    /// http://127.0.0.1:15020/quitquitquit), whatever the outcome.
    #[arg(long, env = "QUIVER_DEMO_QUIT_URL")]
    pub quit: Option<String>,
    /// job only: how long it keeps trying --url.
    #[arg(long, default_value = "60s", value_parser = quiver_api::duration::parse)]
    pub wait: Duration,
}

/// What frontend answers on `GET /`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrontendReply {
    pub catalog: CatalogReply,
}

/// What catalog answers on `GET /product/NAME`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogReply {
    pub version: String,
    pub product: String,
    /// The caller's SPIFFE id, as catalog's sidecar proved it.
    pub caller: String,
    pub rating: Option<Rating>,
    /// Why there is no rating (ratings unreachable, denied, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rating {
    pub stars: f32,
    pub served_by: String,
    /// The caller's SPIFFE id, as ratings' sidecar proved it.
    pub caller: String,
}

/// `quiver-demo demo-app`: run the app on its own runtime; the process's exit status.
pub fn main(args: AppArgs) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Run the app until SIGTERM or SIGINT.
pub async fn run(args: AppArgs) -> anyhow::Result<()> {
    if args.name == AppName::Job {
        return job(&args).await;
    }
    let listen = args.listen.context("--listen is required")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot bind"))?;
    let serve = async {
        match args.name {
            AppName::Frontend => {
                let catalog = args.catalog.clone().context("--catalog is required")?;
                let state = Arc::new(Frontend {
                    catalog: catalog.trim_end_matches('/').to_string(),
                    client: Client::builder(TokioExecutor::new()).build_http(),
                });
                let faults = Arc::new(Faults::new("frontend".into()));
                serve_http(listener, move |req| {
                    let state = state.clone();
                    misbehaving(faults.clone(), req, move |req| frontend(state, req))
                })
                .await
            }
            AppName::Catalog => {
                let url = args.ratings.clone().context("--ratings is required")?;
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .with_context(|| format!("--ratings {url:?}: not a URL"))?
                    .timeout(Duration::from_secs(3))
                    .connect_lazy();
                let state = Arc::new(Catalog {
                    version: args.version.clone(),
                    ratings: RatingsClient::new(channel),
                });
                let faults = Arc::new(Faults::new(format!("catalog {}", args.version)));
                serve_http(listener, move |req| {
                    let state = state.clone();
                    misbehaving(faults.clone(), req, move |req| catalog(state, req))
                })
                .await
            }
            AppName::Ratings => tonic::transport::Server::builder()
                .add_service(RatingsServer::new(RatingsApp))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .context("ratings gRPC server"),
            AppName::Job => Ok(()),
        }
    };
    tokio::select! {
        r = serve => r,
        _ = crate::children::stop_signal() => Ok(()),
    }
}

async fn serve_http<F, Fut>(listener: TcpListener, handle: F) -> anyhow::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn caller_of(headers: &http::HeaderMap) -> String {
    headers
        .get(PEER_IDENTITY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// How a sample app misbehaves, set at run time by `POST /demo/misbehave` on the app's own
/// port: a demo facility, so that a user can watch a canary roll back. The body is the whole
/// new setting: a field left out goes back to normal, so `{"errorPercent": 0}` heals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Misbehave {
    /// The share of requests answered 500, 0 to 100, spread evenly (30: 3 of every 10).
    pub error_percent: u32,
    /// Added to every request before it is answered (errors included).
    #[serde(with = "quiver_api::duration::serde_human")]
    pub extra_latency: Duration,
}

/// Why a `POST /demo/misbehave` body was refused: the field (`body` for the body as a whole)
/// and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadField {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for BadField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl Misbehave {
    /// Parse a `POST /demo/misbehave` body: a JSON object with `errorPercent` (a whole number
    /// 0..100) and `extraLatency` (a duration such as `200ms`, at most [`MAX_EXTRA_LATENCY`]),
    /// both optional (absent or null: normal); any other field is refused.
    pub fn parse(body: &[u8]) -> Result<Self, BadField> {
        let bad = |field: &str, reason: String| BadField {
            field: field.into(),
            reason,
        };
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            bad(
                "body",
                format!("not valid JSON ({e}); send e.g. {MISBEHAVE_EXAMPLE}"),
            )
        })?;
        let serde_json::Value::Object(fields) = value else {
            return Err(bad(
                "body",
                format!("expected a JSON object such as {MISBEHAVE_EXAMPLE}"),
            ));
        };
        let mut m = Self::default();
        for (name, v) in &fields {
            match name.as_str() {
                _ if v.is_null() && matches!(name.as_str(), "errorPercent" | "extraLatency") => {}
                "errorPercent" => {
                    m.error_percent = match v.as_u64() {
                        Some(p) if p <= 100 => p as u32,
                        _ => {
                            return Err(bad(
                                name,
                                format!("{v} is not a whole number from 0 to 100"),
                            ));
                        }
                    }
                }
                "extraLatency" => {
                    let Some(s) = v.as_str() else {
                        return Err(bad(
                            name,
                            format!("{v} is not a duration string such as \"200ms\""),
                        ));
                    };
                    let d = quiver_api::duration::parse(s).map_err(|e| bad(name, e))?;
                    if d > MAX_EXTRA_LATENCY {
                        return Err(bad(
                            name,
                            format!(
                                "{s:?} is longer than {}",
                                quiver_api::duration::format(MAX_EXTRA_LATENCY)
                            ),
                        ));
                    }
                    m.extra_latency = d;
                }
                other => {
                    return Err(bad(
                        other,
                        "unknown field (the fields are errorPercent and extraLatency)".into(),
                    ));
                }
            }
        }
        Ok(m)
    }
}

/// An app's misbehaviour settings and the requests counted since they were set.
struct Faults {
    /// `frontend`, `catalog v2`: for messages and the log.
    app: String,
    settings: Mutex<Misbehave>,
    served: AtomicU64,
}

impl Faults {
    fn new(app: String) -> Self {
        Self {
            app,
            settings: Mutex::new(Misbehave::default()),
            served: AtomicU64::new(0),
        }
    }

    fn settings(&self) -> Misbehave {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, m: Misbehave) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = m;
        // Count afresh: the share asked holds from the first request after the change.
        self.served.store(0, Ordering::Relaxed);
    }

    /// For the next request: the delay to add, and whether to answer it with an error.
    /// Errors are spread evenly: request n fails when floor(n·p/100) steps up, so any run of
    /// 100 requests has exactly p errors.
    fn next(&self) -> (Duration, bool) {
        let m = self.settings();
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        let p = u64::from(m.error_percent);
        let fail = (n + 1) * p / 100 > n * p / 100;
        (m.extra_latency, fail)
    }

    /// `GET` or `POST /demo/misbehave`.
    async fn endpoint(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.headers().contains_key(PEER_IDENTITY) {
            // The receiving sidecar sets this on every request that came through the mesh.
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "{MISBEHAVE_PATH} is a demo facility on the app's own port; it is not \
                     served through the mesh"
                ),
            );
        }
        match *req.method() {
            http::Method::GET => json(StatusCode::OK, &self.settings()),
            http::Method::POST => {
                let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return bad_field(&BadField {
                            field: "body".into(),
                            reason: format!("cannot read it: {e}"),
                        });
                    }
                };
                match Misbehave::parse(&body) {
                    Ok(m) => {
                        self.set(m);
                        eprintln!(
                            "{}: misbehaving as asked: errorPercent {}, extraLatency {}",
                            self.app,
                            m.error_percent,
                            quiver_api::duration::format(m.extra_latency)
                        );
                        json(StatusCode::OK, &m)
                    }
                    Err(e) => bad_field(&e),
                }
            }
            _ => {
                let mut resp = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{MISBEHAVE_PATH}: use POST (or GET to read the settings)"),
                );
                resp.headers_mut().insert(
                    http::header::ALLOW,
                    http::HeaderValue::from_static("GET, POST"),
                );
                resp
            }
        }
    }
}

fn bad_field(e: &BadField) -> Response<Full<Bytes>> {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": e.to_string(), "field": e.field }),
    )
}

/// Serve `req` with `app`, misbehaving as the settings say; `/demo/misbehave` changes them
/// and `/healthz` is never touched.
async fn misbehaving<F, Fut>(
    faults: Arc<Faults>,
    req: Request<Incoming>,
    app: F,
) -> Response<Full<Bytes>>
where
    F: FnOnce(Request<Incoming>) -> Fut,
    Fut: std::future::Future<Output = Response<Full<Bytes>>>,
{
    match req.uri().path() {
        MISBEHAVE_PATH => return faults.endpoint(req).await,
        "/healthz" => return app(req).await,
        _ => {}
    }
    let (delay, fail) = faults.next();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if fail {
        let m = faults.settings();
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{} failed this request on purpose (errorPercent {}, set by POST {MISBEHAVE_PATH})",
                faults.app, m.error_percent
            ),
        );
    }
    app(req).await
}

struct Frontend {
    catalog: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

async fn frontend(state: Arc<Frontend>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/" => {}
        "/healthz" => return json(StatusCode::OK, &serde_json::json!({"ok": true})),
        other => return error(StatusCode::NOT_FOUND, format!("no page {other}")),
    }
    let url = format!("{}/product/{PRODUCT}", state.catalog);
    let call = async {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad catalog URL: {e}"))?;
        let resp = state
            .client
            .get(uri)
            .await
            .map_err(|e| format!("calling catalog: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading catalog's answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            // The sidecar's own errors say why in the body (no route, denied, ...).
            return Err(format!(
                "catalog answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        serde_json::from_slice::<CatalogReply>(&body)
            .map_err(|e| format!("catalog's answer is not what catalog sends: {e}"))
    };
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(Ok(catalog)) => json(StatusCode::OK, &FrontendReply { catalog }),
        Ok(Err(e)) => error(StatusCode::BAD_GATEWAY, e),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "catalog did not answer within 5s".into(),
        ),
    }
}

/// `job`: GET `--url` until it answers 2xx or `--wait` has passed (a first call may find the
/// sidecar still starting: no DNS answer yet, a refused connection, a 503 before its first
/// snapshot), print the answer, then POST `--quit` whatever happened, so that the sidecar
/// exits too and the pod completes. Fails (exit 1) when no call succeeded.
async fn job(args: &AppArgs) -> anyhow::Result<()> {
    let url = args.url.clone().context("--url is required")?;
    let uri: http::Uri = url.parse().with_context(|| format!("--url {url:?}"))?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let deadline = tokio::time::Instant::now() + args.wait;
    let mut attempts = 0u32;
    let outcome = loop {
        attempts += 1;
        let call = async {
            let resp = client.get(uri.clone()).await.map_err(|e| format!("{e}"))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            if status.is_success() {
                Ok(body)
            } else {
                Err(format!("answered {status}: {}", body.trim()))
            }
        };
        let result = match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(r) => r,
            Err(_) => Err("no answer within 5s".into()),
        };
        match result {
            Ok(body) => break Ok(body),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                break Err(anyhow::anyhow!(
                    "GET {url}: {e} (attempt {attempts}, giving up after {})",
                    quiver_api::duration::format(args.wait)
                ));
            }
            Err(e) => {
                eprintln!("job: GET {url}: {e}; trying again (attempt {attempts})");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    if let Ok(body) = &outcome {
        println!("{}", body.trim());
        eprintln!("job: GET {url} answered after {attempts} attempt(s)");
    }
    if let Some(quit) = &args.quit {
        quit_sidecar(quit).await;
    }
    outcome.map(|_| ())
}

/// POST `url` (the sidecar's `/quitquitquit`); a failure is only reported: the job's own
/// outcome decides its exit status.
async fn quit_sidecar(url: &str) {
    let request = match Request::post(url).body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("job: --quit {url:?}: {e}");
            return;
        }
    };
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
        Ok(Ok(resp)) => eprintln!("job: POST {url}: {}", resp.status()),
        Ok(Err(e)) => eprintln!("job: POST {url}: {e}"),
        Err(_) => eprintln!("job: POST {url}: no answer within 5s"),
    }
}

struct Catalog {
    version: String,
    ratings: RatingsClient<tonic::transport::Channel>,
}

async fn catalog(state: Arc<Catalog>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(product) = req.uri().path().strip_prefix("/product/") else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no page {} (try /product/NAME)", req.uri().path()),
        );
    };
    let product = product.to_string();
    let caller = caller_of(req.headers());
    let mut ratings = state.ratings.clone();
    let mut call = tonic::Request::new(RatingRequest {
        product: product.clone(),
    });
    // Pass the trace context on, as every app in a mesh must: without it the call to ratings
    // starts a new trace and frontend -> catalog -> ratings shows up as two unrelated traces.
    for name in ["traceparent", "tracestate"] {
        let value = req.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(v) = value.and_then(|v| v.parse().ok()) {
            call.metadata_mut().insert(name, v);
        }
    }
    let (rating, rating_error) = match ratings.get(call).await {
        Ok(r) => {
            let r = r.into_inner();
            (
                Some(Rating {
                    stars: r.stars,
                    served_by: r.served_by,
                    caller: r.caller,
                }),
                None,
            )
        }
        Err(s) => (None, Some(format!("{:?}: {}", s.code(), s.message()))),
    };
    json(
        StatusCode::OK,
        &CatalogReply {
            version: state.version.clone(),
            product,
            caller,
            rating,
            rating_error,
        },
    )
}

struct RatingsApp;

#[tonic::async_trait]
impl Ratings for RatingsApp {
    async fn get(
        &self,
        req: tonic::Request<RatingRequest>,
    ) -> Result<tonic::Response<RatingReply>, tonic::Status> {
        let caller = req
            .metadata()
            .get(PEER_IDENTITY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let product = req.into_inner().product;
        if product.is_empty() {
            return Err(tonic::Status::invalid_argument("product is empty"));
        }
        Ok(tonic::Response::new(RatingReply {
            stars: stars_of(&product),
            product,
            served_by: "ratings".into(),
            caller,
        }))
    }
}

/// A stable rating per product (3.0 to 5.0): the demo has no database.
fn stars_of(product: &str) -> f32 {
    let h = product
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    3.0 + (h % 21) as f32 / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_are_stable_and_in_range() {
        let s = stars_of(PRODUCT);
        assert_eq!(s, stars_of(PRODUCT));
        assert!((3.0..=5.0).contains(&s), "{s}");
    }

    #[test]
    fn misbehave_bodies_parse_or_name_the_bad_field() {
        let m = Misbehave::parse(br#"{"errorPercent": 30, "extraLatency": "200ms"}"#).unwrap();
        assert_eq!(m.error_percent, 30);
        assert_eq!(m.extra_latency, Duration::from_millis(200));
        // A field left out (or null) is back to normal.
        assert_eq!(
            Misbehave::parse(br#"{"errorPercent": 0}"#).unwrap(),
            Misbehave::default()
        );
        assert_eq!(
            Misbehave::parse(br#"{"extraLatency": null}"#).unwrap(),
            Misbehave::default()
        );
        for (body, field, says) in [
            (&b"errorPercent=30"[..], "body", "not valid JSON"),
            (b"[30]", "body", "JSON object"),
            (br#"{"errorPercent": 101}"#, "errorPercent", "0 to 100"),
            (br#"{"errorPercent": -1}"#, "errorPercent", "0 to 100"),
            (br#"{"errorPercent": 2.5}"#, "errorPercent", "whole number"),
            (br#"{"errorPercent": "30"}"#, "errorPercent", "whole number"),
            (
                br#"{"extraLatency": "200"}"#,
                "extraLatency",
                "missing unit",
            ),
            (
                br#"{"extraLatency": 200}"#,
                "extraLatency",
                "duration string",
            ),
            (
                br#"{"extraLatency": "2m"}"#,
                "extraLatency",
                "longer than 1m",
            ),
            (br#"{"errorRate": 5}"#, "errorRate", "unknown field"),
        ] {
            let e = Misbehave::parse(body).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains(says), "{e}");
        }
    }

    #[test]
    fn errors_are_spread_evenly_at_the_share_asked() {
        let faults = Faults::new("catalog v2".into());
        for p in [0, 1, 30, 50, 99, 100] {
            faults.set(Misbehave {
                error_percent: p,
                extra_latency: Duration::ZERO,
            });
            let errors: Vec<bool> = (0..200).map(|_| faults.next().1).collect();
            assert_eq!(errors.iter().filter(|e| **e).count() as u32, 2 * p);
            // Any 10 in a row at 30%: exactly 3.
            if p == 30 {
                assert!(
                    errors
                        .windows(10)
                        .all(|w| w.iter().filter(|e| **e).count() == 3)
                );
            }
        }
    }

    #[test]
    fn frontend_needs_catalog_and_catalog_needs_ratings() {
        use clap::Parser;
        let e = AppArgs::try_parse_from(["x", "frontend", "--listen", "127.0.0.1:1"]).unwrap_err();
        assert!(e.to_string().contains("--catalog"), "{e}");
        let e = AppArgs::try_parse_from(["x", "catalog", "--listen", "127.0.0.1:1"]).unwrap_err();
        assert!(e.to_string().contains("--ratings"), "{e}");
        AppArgs::try_parse_from(["x", "ratings", "--listen", "127.0.0.1:1"]).unwrap();
        let e = AppArgs::try_parse_from(["x", "ratings"]).unwrap_err();
        assert!(e.to_string().contains("--listen"), "{e}");
        let e = AppArgs::try_parse_from(["x", "job"]).unwrap_err();
        assert!(e.to_string().contains("--url"), "{e}");
        let job =
            AppArgs::try_parse_from(["x", "job", "--url", "http://catalog.demo.mesh/"]).unwrap();
        assert_eq!(job.wait, Duration::from_secs(60));
        assert!(job.listen.is_none() && job.quit.is_none());
    }
}
