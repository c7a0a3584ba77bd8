//! `POST /inject` on the API listener: the Kubernetes API server's call to the sidecar
//! injector. The body is bounded ([`MAX_BODY`], 413 beyond it); the answer is the
//! AdmissionReview [`Injector::review`] builds (200), or 400 with a text reason when the body
//! does not even carry a `request.uid`.
//!
//! No bearer token: the API server calls webhooks with none, and nothing here reads or
//! changes the store: the answer is a function of the request and the injector's flags
//! (image, control-plane address, ConfigMap and Secret names, never a secret's value).
//! Kubernetes calls webhooks over HTTPS only, so in a cluster the API listener serves TLS
//! (docs/deploy.md, "Sidecar injector").

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};

use super::{Decision, Injector};

/// The largest AdmissionReview taken: a Pod is at most ~1.5 MiB in etcd, and an
/// AdmissionReview may carry it twice (object and oldObject) plus the envelope.
pub const MAX_BODY: usize = 4 << 20;

/// The path the webhook's `clientConfig.service.path` names.
pub const PATH: &str = "/inject";

/// The route, to merge into the API listener's router.
pub fn routes(injector: Arc<Injector>) -> axum::Router {
    axum::Router::new()
        .route(
            PATH,
            axum::routing::post(move |body: Bytes| {
                let injector = injector.clone();
                async move { answer(&injector, &body) }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

fn answer(injector: &Injector, body: &[u8]) -> Response {
    match injector.review(body) {
        Ok(reviewed) => {
            match &reviewed.decision {
                Decision::Injected { pod, service } => {
                    tracing::info!(pod, service, "sidecar injected");
                }
                Decision::Untouched { pod, why } => {
                    tracing::debug!(pod, why, "pod admitted unchanged");
                }
                Decision::Refused(refusal) => {
                    tracing::warn!(%refusal, "admission review refused");
                }
            }
            // A Value made of maps, strings, numbers and booleans always serializes.
            let body = serde_json::to_vec(&reviewed.document).unwrap_or_default();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(unreadable) => {
            tracing::warn!(%unreadable, "unreadable admission review");
            (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("not an AdmissionReview v1: {unreadable}\n"),
            )
                .into_response()
        }
    }
}
