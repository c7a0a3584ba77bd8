//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/config`,
//! `/app-health/...` (the app's own probes, checked for kubelet: [`crate::app_health`]), and
//! `POST /quitquitquit` (shut down as on SIGTERM; from a loopback address only, so that only
//! the pod itself can stop its sidecar: a Job's app calls it when it is done).
//! Loopback by default; it serves no secrets (the key file's contents never enter the config).

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::Inputs;
use crate::mesh::body::{self, ProxyBody};

/// What the admin endpoints read.
pub struct Admin {
    pub inputs: Arc<Inputs>,
    pub registry: Registry,
    /// The effective config and bound addresses (the identity is added per request).
    pub config_json: serde_json::Value,
    /// The app's probes, rewritten to this listener by the injector.
    pub app_probes: crate::app_health::AppProbes,
}

pub async fn serve(admin: Arc<Admin>, listener: TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            // The admin port stays up while draining so /readyz can report it; it closes
            // with the process.
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move {
                    let path = req.uri().path();
                    if path.starts_with(crate::app_health::PREFIX)
                        && (req.method() == Method::GET || req.method() == Method::HEAD)
                        && let Some(v) = admin.app_probes.answer(path).await
                    {
                        return Ok::<_, Infallible>(text(v.status, &format!("{}\n", v.detail)));
                    }
                    Ok::<_, Infallible>(route(&admin, req, peer))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(admin: &Admin, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<ProxyBody> {
    if req.uri().path() == "/quitquitquit" {
        return quit(admin, req.method(), peer);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            use quiver_api::exposition;
            let mut out = String::new();
            if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &admin.registry) {
                return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"));
            }
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (out, kind) = if exposition::wants_openmetrics(accept) {
                (out, exposition::OPENMETRICS)
            } else {
                (
                    exposition::to_prometheus_text(&out),
                    exposition::PROMETHEUS_TEXT,
                )
            };
            let mut r = Response::new(body::full(out));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if admin.inputs.drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if let Some(why) = admin.inputs.waiting_for() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/config" => {
            let mut doc = admin.config_json.clone();
            doc["identity"] = serde_json::to_value(admin.inputs.identity()).unwrap_or_default();
            doc["snapshot"] = serde_json::to_value(&*admin.inputs.snapshot()).unwrap_or_default();
            // Live: every open peer connection's path (RTT, window, losses, controller).
            doc["connections"] =
                serde_json::to_value(admin.inputs.transport.paths()).unwrap_or_default();
            let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
            let mut r = Response::new(body::full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /healthz /readyz /config (and /app-health/... when the \
             injector rewrote the app's probes)\n",
        ),
    }
}

/// `POST /quitquitquit`: begin shutting down (drain, deregister, exit 0), from the pod only.
fn quit(admin: &Admin, method: &Method, peer: std::net::SocketAddr) -> Response<ProxyBody> {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    if !peer.ip().to_canonical().is_loopback() {
        return text(
            StatusCode::FORBIDDEN,
            "only the pod itself (a loopback address) may stop its sidecar\n",
        );
    }
    admin.inputs.drain.request_stop();
    text(StatusCode::OK, "stopping: draining, then exiting\n")
}

fn text(status: StatusCode, s: &str) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(s.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
