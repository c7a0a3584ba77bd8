//! Telemetry over the API: `MeshDiscovery.ReportTelemetry` (proxies stream spans and edge
//! statistics; mTLS) and `MeshAdmin.SearchTraces`, `GetTrace`, `GetServiceGraph` (viewer or
//! admin token). Checking and shaping live in [`crate::telemetry`]; storage in the store.

use std::time::Duration;

use quiver_api::v1;
use tokio::sync::oneshot::error::RecvError;
use tonic::{Request, Status, Streaming};

use super::{AdminApi, DiscoveryApi, is_dns_label, store_status};
use crate::auth::Role;
use crate::telemetry::blocks::{self, TraceQuery};
use crate::telemetry::{self, ReportedBatch, now_ns};

/// SearchTraces limits.
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 200;
/// SearchTraces looks this far back when no start is given.
const DEFAULT_LOOKBACK: Duration = Duration::from_secs(15 * 60);
/// GetServiceGraph windows.
const DEFAULT_WINDOW: &str = "5m";
const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(3600);

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl DiscoveryApi {
    /// Read batches until the proxy closes the stream. Each batch is checked span by span (a
    /// bad span is refused and counted, the rest of the batch is kept) and handed to the span
    /// writer, which stores it with other proxies' batches in one transaction; the next batch
    /// is read meanwhile. The answer comes once every batch is stored and counts the new
    /// spans. A store failure ends the call with UNAVAILABLE; batches stored before it stay
    /// stored.
    pub(super) async fn report_telemetry(
        &self,
        req: Request<Streaming<v1::TelemetryBatch>>,
    ) -> Result<v1::ReportTelemetryResponse, Status> {
        let caller = self.caller(&req, "ReportTelemetry")?;
        let mut stream = req.into_inner();
        let mut accepted = 0u64;
        let mut pending = std::collections::VecDeque::new();
        while let Some(batch) = stream.message().await? {
            let now = now_ns();
            let mut spans = Vec::with_capacity(batch.spans.len());
            let mut span_refusals = Vec::new();
            for span in batch.spans {
                match telemetry::check_span(span, &caller, now) {
                    Ok(s) => spans.push(s),
                    Err(why) => span_refusals.push(why.as_str()),
                }
            }
            let mut edges = Vec::with_capacity(batch.edges.len());
            let mut edge_refusals = Vec::new();
            for edge in batch.edges {
                match telemetry::check_edge(edge, &caller) {
                    Ok(e) => edges.push(e),
                    Err(why) => edge_refusals.push(why.as_str()),
                }
            }
            if !span_refusals.is_empty() || !edge_refusals.is_empty() {
                tracing::debug!(
                    spiffe.id = %caller.spiffe_id,
                    spans = ?span_refusals,
                    edges = ?edge_refusals,
                    "refused malformed telemetry"
                );
            }
            self.inputs.metrics.telemetry_refused(
                &span_refusals,
                &edge_refusals,
                batch.dropped_spans,
            );
            let receipt = self
                .inputs
                .spans
                .submit(ReportedBatch { spans, edges })
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            pending.push_back(receipt);
            // Take the answers that are in without waiting for the others.
            while let Some(Ok(done)) = pending
                .front_mut()
                .map(tokio::sync::oneshot::Receiver::try_recv)
            {
                pending.pop_front();
                accepted += stored(Ok(done))?;
            }
        }
        for receipt in pending {
            accepted += stored(receipt.await)?;
        }
        Ok(v1::ReportTelemetryResponse {
            accepted_spans: accepted,
        })
    }
}

/// New spans of one batch from the writer's answer, or UNAVAILABLE.
fn stored(answer: Result<Result<u64, String>, RecvError>) -> Result<u64, Status> {
    match answer {
        Ok(Ok(n)) => Ok(n),
        // Logged by the writer.
        Ok(Err(_)) => Err(Status::unavailable("the store is unavailable; try again")),
        Err(_) => Err(Status::unavailable("the span writer has stopped")),
    }
}

/// A checked SearchTraces request, or every bad field in one message.
fn trace_query(req: &v1::SearchTracesRequest, now: i64) -> Result<TraceQuery, Status> {
    let mut errors = Vec::new();
    let optional_label = |field: &str, v: &str, errors: &mut Vec<String>| {
        if v.is_empty() {
            None
        } else {
            if !is_dns_label(v) {
                errors.push(format!("{field}: {v:?} is not a DNS label"));
            }
            Some(v.to_string())
        }
    };
    let namespace = optional_label("namespace", &req.namespace, &mut errors);
    let service = optional_label("service", &req.service, &mut errors);
    let min_duration_ns = if req.min_duration.is_empty() {
        None
    } else {
        match quiver_api::duration::parse(&req.min_duration) {
            Ok(d) => Some(nanos(d)),
            Err(e) => {
                errors.push(format!(
                    "minDuration: {:?} is not a duration ({e})",
                    req.min_duration
                ));
                None
            }
        }
    };
    let time = |field: &str, v: &str, errors: &mut Vec<String>| {
        if v.is_empty() {
            return None;
        }
        let parsed = telemetry::parse_rfc3339(v);
        if parsed.is_none() {
            errors.push(format!(
                "{field}: {v:?} is not an RFC 3339 time (e.g. 2026-11-24T22:00:00Z)"
            ));
        }
        parsed
    };
    let end = time("end", &req.end, &mut errors).unwrap_or(now);
    let start = time("start", &req.start, &mut errors)
        .unwrap_or_else(|| end.saturating_sub(nanos(DEFAULT_LOOKBACK)));
    if start >= end && errors.is_empty() {
        errors.push(format!(
            "start: {} is not before end {}",
            telemetry::rfc3339_nanos(start),
            telemetry::rfc3339_nanos(end)
        ));
    }
    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n if n > MAX_LIMIT => {
            errors.push(format!("limit: {n} is above the maximum of {MAX_LIMIT}"));
            MAX_LIMIT
        }
        n => n,
    };
    if !errors.is_empty() {
        return Err(Status::invalid_argument(errors.join("; ")));
    }
    Ok(TraceQuery {
        namespace,
        service,
        errors_only: req.errors_only,
        min_duration_ns,
        start_ns: start,
        end_ns: end,
        limit: i64::from(limit),
    })
}

fn graph_window(window: &str) -> Result<(Duration, String), Status> {
    let text = if window.is_empty() {
        DEFAULT_WINDOW
    } else {
        window
    };
    let d = quiver_api::duration::parse(text).map_err(|e| {
        Status::invalid_argument(format!("window: {text:?} is not a duration ({e})"))
    })?;
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&d) {
        return Err(Status::invalid_argument(format!(
            "window: {text:?} is outside 1s..1h"
        )));
    }
    Ok((d, quiver_api::duration::format(d)))
}

impl AdminApi {
    pub(super) async fn search_traces(
        &self,
        req: Request<v1::SearchTracesRequest>,
    ) -> Result<v1::SearchTracesResponse, Status> {
        let store = self.inputs.store.as_ref();
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Viewer, "SearchTraces")
            .await?;
        let query = trace_query(req.get_ref(), now_ns())?;
        let _timer = self.inputs.metrics.store_timer("search_traces");
        let ids = blocks::search_traces(store, &query)
            .await
            .map_err(store_status)?;
        let spans = blocks::spans_of_traces(store, &ids)
            .await
            .map_err(store_status)?;
        Ok(v1::SearchTracesResponse {
            traces: telemetry::summaries(spans),
        })
    }

    pub(super) async fn get_trace(
        &self,
        req: Request<v1::GetTraceRequest>,
    ) -> Result<v1::Trace, Status> {
        let store = self.inputs.store.as_ref();
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Viewer, "GetTrace")
            .await?;
        let trace_id = req.into_inner().trace_id;
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if trace_id.len() != 32 || !trace_id.chars().all(hex) {
            return Err(Status::invalid_argument(format!(
                "traceId: {trace_id:?} is not 32 lowercase hex characters"
            )));
        }
        let _timer = self.inputs.metrics.store_timer("get_trace");
        let spans = blocks::spans_of_traces(store, std::slice::from_ref(&trace_id))
            .await
            .map_err(store_status)?;
        if spans.is_empty() {
            return Err(Status::not_found(format!(
                "trace {trace_id} not found (never reported, or removed by retention)"
            )));
        }
        Ok(v1::Trace {
            trace_id,
            spans: spans.into_iter().map(telemetry::to_api).collect(),
        })
    }

    pub(super) async fn service_graph(
        &self,
        req: Request<v1::GetServiceGraphRequest>,
    ) -> Result<v1::ServiceGraph, Status> {
        let store = self.inputs.store.as_ref();
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Viewer, "GetServiceGraph")
            .await?;
        let req = req.into_inner();
        let (window, window_text) = graph_window(&req.window)?;
        if !req.namespace.is_empty() && !is_dns_label(&req.namespace) {
            return Err(Status::invalid_argument(format!(
                "namespace: {:?} is not a DNS label",
                req.namespace
            )));
        }
        let _timer = self.inputs.metrics.store_timer("service_graph");
        let now = now_ns();
        let after = now.saturating_sub(nanos(window));
        let namespace = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
        let edges = store
            .edge_stats_since(after, namespace)
            .await
            .map_err(store_status)?;
        let span = telemetry::Window {
            start_ns: after,
            end_ns: now,
        };
        Ok(telemetry::service_graph(&edges, span, window_text))
    }
}
