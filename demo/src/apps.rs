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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AppName {
    Frontend,
    Catalog,
    Ratings,
}

/// `quiver-demo demo-app NAME`: one of the demo's sample services.
#[derive(Debug, clap::Parser)]
#[command(name = "quiver-demo demo-app", bin_name = "quiver-demo demo-app")]
pub struct AppArgs {
    /// Which service to run.
    #[arg(value_enum)]
    pub name: AppName,
    /// Where to listen (plain HTTP/1.1 for frontend and catalog, gRPC h2c for ratings).
    #[arg(long)]
    pub listen: SocketAddr,
    /// catalog only: the version it reports (v1, v2).
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// frontend only: catalog's base URL (its sidecar's outbound listener).
    #[arg(long, required_if_eq("name", "frontend"))]
    pub catalog: Option<String>,
    /// catalog only: ratings' URL (its sidecar's outbound listener, gRPC).
    #[arg(long, required_if_eq("name", "catalog"))]
    pub ratings: Option<String>,
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
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let serve = async {
        match args.name {
            AppName::Frontend => {
                let catalog = args.catalog.clone().context("--catalog is required")?;
                let state = Arc::new(Frontend {
                    catalog: catalog.trim_end_matches('/').to_string(),
                    client: Client::builder(TokioExecutor::new()).build_http(),
                });
                serve_http(listener, move |req| frontend(state.clone(), req)).await
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
                serve_http(listener, move |req| catalog(state.clone(), req)).await
            }
            AppName::Ratings => tonic::transport::Server::builder()
                .add_service(RatingsServer::new(RatingsApp))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .context("ratings gRPC server"),
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
    fn frontend_needs_catalog_and_catalog_needs_ratings() {
        use clap::Parser;
        let e = AppArgs::try_parse_from(["x", "frontend", "--listen", "127.0.0.1:1"]).unwrap_err();
        assert!(e.to_string().contains("--catalog"), "{e}");
        let e = AppArgs::try_parse_from(["x", "catalog", "--listen", "127.0.0.1:1"]).unwrap_err();
        assert!(e.to_string().contains("--ratings"), "{e}");
        AppArgs::try_parse_from(["x", "ratings", "--listen", "127.0.0.1:1"]).unwrap();
    }
}
