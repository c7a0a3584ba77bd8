//! Carrying out an outbound HTTP request's plan, in plain phases: faults; hold the body if
//! it may be sent again; mirror; then attempts — lease an endpoint ([`crate::proxy::upstream`]:
//! balancer, circuit limits, locality), send, report the outcome, judge it against the
//! retry policy and budget within the deadlines — and the response streamed back.
//!
//! The decisions are all in [`quiver_policy`]; this module performs them and reports what
//! happened back to it. It must not decide anything itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::Inputs;
use crate::errors::{AttemptFailure, Direction, ProxyError};
use crate::mesh::body::{self, ProxyBody, SendHalf};
use crate::mesh::transport::PeerConn;
use crate::proxy::http::{
    PEER_IDENTITY_HEADER, TARGET_HEADER, authority_of, content_length, normalize_path, rebase_uri,
    strip_hop_by_hop,
};
use crate::proxy::upgrade::{self, Upgrade};
use crate::proxy::upstream::{Lease, Report, Routing};
use crate::snapshot::Target;
use crate::telemetry::metrics::Metrics;
use quiver_policy::balance::{LOAD_HEADER, parse_load};
use quiver_policy::filters::{Redirect, RedirectFrom, Rewrite};
use quiver_policy::plan::{Plan, Rolls};
use quiver_policy::retry::{self, Attempt, BodyState, Outcome, RetryDecision};
use quiver_policy::route::RequestHead;
use quiver_policy::services::Backend;

/// When a request with `timeout` started at `now` must be done. Validated timeouts are at
/// most a day, but a timeout from anywhere else (a snapshot, a future field) must not panic
/// the request path: past what the clock can hold, a day from now.
fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// An app's request body, which must start within `tuning.limits.request_body_timeout`.
pub type AppBody = body::StartBy<hyper::body::Incoming>;

/// The request body as one attempt sends it.
enum AttemptBody {
    /// Held in memory: can be sent again (retries) or copied (mirror).
    Held(Bytes),
    /// Streamed from the app: one attempt only.
    Stream(crate::mesh::body::Counted<AppBody>),
    /// Streamed by an earlier attempt: nothing left to send.
    Spent,
    /// No body: the request asks to switch protocols, and the app's connection becomes the
    /// tunnel's if the peer's app agrees. One attempt only (a CONNECT is never replayed).
    Upgrade(Upgrade),
}

/// What was decided for one request, for its span and the access log.
#[derive(Debug, Default)]
pub struct Decided {
    /// One line: route, backend, endpoint, attempts, faults.
    pub explain: String,
    pub route: String,
    /// The endpoint of the last attempt.
    pub endpoint: Option<std::net::SocketAddr>,
    /// The identity that endpoint proved.
    pub identity: String,
    /// The QUIC connection of the last attempt ([`crate::mesh::transport::connection_trace_id`]).
    pub connection: Arc<str>,
    pub attempts: u32,
    /// The backend the plan chose (none for a redirect): its subset is what edge statistics,
    /// and so canary checks, are counted by. Shared with the plan, so recording it costs no
    /// allocation.
    pub backend: Option<Arc<quiver_policy::services::Backend>>,
}

/// Plan and carry out one outbound HTTP request. Returns the result and what was decided.
pub async fn forward(
    inputs: &Arc<Inputs>,
    target: &Target,
    req: Request<AppBody>,
) -> (Result<Response<ProxyBody>, ProxyError>, Decided) {
    let routing = inputs.routing();
    let (mut parts, incoming) = req.into_parts();
    // Routes match, and the peer receives, the normalized path.
    if let Err(e) = normalize_path(&mut parts.uri, &inputs.tuning.request_paths) {
        return (Err(e), Decided::default());
    }
    // An upgrade (WebSocket) is routed like any request; only its last hop differs.
    let upgrade = match upgrade::take(&mut parts, !incoming.is_end_stream()) {
        Ok(u) => u,
        Err(e) => return (Err(e), Decided::default()),
    };
    let head = RequestHead {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let rolls = Rolls::draw(&mut rand::rng());
    let Ok(plan) = routing.snapshot.policy.plan(&target.service, &head, rolls) else {
        let e = ProxyError::NoRoute(format!(
            "no rule of the route for {:?} matches",
            target.service
        ));
        return (Err(e), Decided::default());
    };
    if let Some(redirect) = &plan.rule.redirect {
        let result = redirect_response(target, &parts, redirect, &plan);
        let decided = Decided {
            explain: format!("{} redirect={}", plan.explain(), redirect.status),
            route: plan.route().to_string(),
            ..Decided::default()
        };
        return (result, decided);
    }
    let mut exchange = Exchange {
        inputs,
        routing: &routing,
        plan,
        connection: Arc::default(),
        identity: String::new(),
    };
    let mut result = exchange.run(target, parts, incoming, upgrade).await;
    if let (Ok(resp), Some(edits)) = (&mut result, &exchange.plan.rule.response_headers) {
        edits.apply(resp.headers_mut());
    }
    let Exchange {
        plan,
        connection,
        identity,
        ..
    } = exchange;
    let decided = Decided {
        explain: plan.explain(),
        route: plan.route().to_string(),
        endpoint: plan.endpoint.map(|(a, _)| a),
        identity,
        connection,
        attempts: plan.attempts,
        backend: Some(plan.backend.clone()),
    };
    (result, decided)
}

/// One outbound request being carried out: its plan, and what its attempts learned.
struct Exchange<'a> {
    inputs: &'a Arc<Inputs>,
    routing: &'a Arc<Routing>,
    plan: Plan,
    /// The QUIC connection and peer identity of the last attempt that got a connection.
    connection: Arc<str>,
    identity: String,
}

impl Exchange<'_> {
    /// Faults, then hold the body if it may be sent again, mirror, then attempts until one
    /// is final. An upgrade has no body to hold and goes to the peer as a CONNECT, which is
    /// never mirrored or retried.
    async fn run(
        &mut self,
        target: &Target,
        parts: http::request::Parts,
        incoming: AppBody,
        upgrade: Option<Upgrade>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        self.inject_faults().await?;
        let (mut body, head) = match upgrade {
            Some(u) => {
                let head = upgrade::mesh_head(self.edited_head(target, parts)?, &u.protocol)?;
                (AttemptBody::Upgrade(u), head)
            }
            None => {
                let body = self.hold_body(target, &parts.headers, incoming).await?;
                (body, self.edited_head(target, parts)?)
            }
        };
        if let (Some(mirror), AttemptBody::Held(b)) = (self.plan.mirror.clone(), &body) {
            Metrics::count(&self.inputs.metrics.mirrored, &self.plan.service);
            mirror_copy(self.inputs, self.routing, &mirror, &head, b.clone());
        }
        let overall = self
            .plan
            .timeout
            .unwrap_or(self.inputs.tuning.response_timeout);
        let deadline = deadline_after(Instant::now(), overall);
        let budget_owner = self.routing.upstream(&self.plan.service).cloned();
        let tuning = &self.inputs.tuning.retries;
        if let (Some(_), Some(up)) = (self.plan.retries(), &budget_owner) {
            let now = Instant::now();
            up.with_budget(&self.plan, tuning, now, |b| b.deposit(now));
        }
        loop {
            let (result, outcome) = self.attempt(&head, &mut body, deadline).await?;
            let (Some(retries), Some(up)) = (self.plan.retries().cloned(), &budget_owner) else {
                return result;
            };
            let attempt = Attempt {
                made: self.plan.attempts,
                outcome,
                method: head.method().as_str(),
                body: body.state(),
            };
            let now = Instant::now();
            let decision = up.with_budget(&self.plan, tuning, now, |budget| {
                retry::decide(
                    &retries,
                    tuning,
                    budget,
                    &attempt,
                    now,
                    Some(deadline),
                    rand::random::<f64>(),
                )
            });
            match decision {
                RetryDecision::Retry { backoff, .. } => {
                    Metrics::count(&self.inputs.metrics.retries, &self.plan.service);
                    // The failed attempt's response (if any) is dropped here, resetting its
                    // stream.
                    drop(result);
                    tokio::time::sleep(backoff).await;
                }
                RetryDecision::Final(f) => {
                    if !outcome.is_success() && !matches!(f, retry::Final::NotRetriable) {
                        let stops = &self.inputs.metrics.retry_stops;
                        Metrics::count_reason(stops, &self.plan.service, f.as_str());
                    }
                    return result;
                }
            }
        }
    }

    /// The head every attempt (and a mirror copy) sends: prepared for the peer, then the
    /// rule's rewrite and request header edits, applied once.
    fn edited_head(
        &self,
        target: &Target,
        parts: http::request::Parts,
    ) -> Result<Request<()>, ProxyError> {
        let mut head = prepare_head(target, parts)?;
        // The rule may send to another Service (a backend's `service`, a Gateway API
        // backendRef): the peer serves that one, on the port the app called.
        if self.plan.backend.service != target.service {
            let to = Target {
                service: self.plan.backend.service.clone(),
                port: target.port,
            };
            let v = HeaderValue::from_str(&to.authority())
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            head.headers_mut().insert(TARGET_HEADER, v);
        }
        if let Some(rewrite) = &self.plan.rule.rewrite {
            apply_rewrite(&mut head, rewrite)?;
        }
        if let Some(edits) = &self.plan.rule.request_headers {
            edits.apply(head.headers_mut());
        }
        Ok(head)
    }

    async fn inject_faults(&self) -> Result<(), ProxyError> {
        let metrics = &self.inputs.metrics;
        if let Some(d) = self.plan.fault.delay {
            Metrics::count_reason(&metrics.faults, &self.plan.service, "delay");
            tokio::time::sleep(d).await;
        }
        if let Some(status) = self.plan.fault.abort {
            Metrics::count_reason(&metrics.faults, &self.plan.service, "abort");
            return Err(ProxyError::Fault(status));
        }
        Ok(())
    }

    /// Hold the body when a retry or a mirror may need it again and it is small enough;
    /// otherwise stream it (one attempt only).
    async fn hold_body(
        &self,
        target: &Target,
        headers: &http::HeaderMap,
        incoming: AppBody,
    ) -> Result<AttemptBody, ProxyError> {
        let limit = self.inputs.tuning.retries.max_buffered_body as u64;
        let replay = self.plan.retries().is_some() || self.plan.mirror.is_some();
        // Bytes the app sent, once, however many attempts carry them.
        let received = Metrics::bytes(
            &self.inputs.metrics.request_bytes,
            Direction::Outbound,
            &target.service,
        );
        if incoming.is_end_stream() {
            return Ok(AttemptBody::Held(Bytes::new()));
        }
        if replay && content_length(headers).is_some_and(|n| n <= limit) {
            let b = incoming
                .collect()
                .await
                .map_err(|e| ProxyError::BadRequest(format!("reading the request body: {e}")))?
                .to_bytes();
            received.inc_by(b.len() as u64);
            return Ok(AttemptBody::Held(b));
        }
        Ok(AttemptBody::Stream(crate::mesh::body::Counted::new(
            incoming, received,
        )))
    }

    /// One attempt: lease an endpoint of the plan's backend, send within the per-try
    /// timeout, and report the outcome to the balancer. An error here (no endpoint, every
    /// endpoint at its limit) is final; a failed send is judged by the caller.
    async fn attempt(
        &mut self,
        head: &Request<()>,
        body: &mut AttemptBody,
        deadline: Instant,
    ) -> Result<(Result<Response<ProxyBody>, ProxyError>, Outcome), ProxyError> {
        self.plan.attempts += 1;
        let backend = self.plan.backend.clone();
        let rolls = [rand::random::<u32>(), rand::random::<u32>()];
        let mut lease = self
            .routing
            .lease(&backend.service, &backend.selector, Instant::now(), rolls)
            .inspect_err(|e| {
                if let ProxyError::Overloaded(limit) = e {
                    let overloads = &self.inputs.metrics.overloads;
                    Metrics::count_reason(overloads, &backend.service, limit);
                }
            })?;
        self.plan.endpoint = Some((lease.address(), lease.tier));
        let left = deadline.saturating_duration_since(Instant::now());
        let per_try = self.plan.per_try_timeout().map_or(left, |t| t.min(left));
        let this_body = match body {
            AttemptBody::Held(b) => AttemptBody::Held(b.clone()),
            other => std::mem::replace(other, AttemptBody::Spent),
        };
        let sent_at = Instant::now();
        let identity = lease.endpoint.identity.to_string();
        let sent = send_once(self.inputs, &mut lease, head, this_body, |peer| {
            self.connection = peer.trace_id.clone();
            self.identity = identity;
        });
        let result = match tokio::time::timeout(per_try, sent).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamTimeout(per_try)),
        };
        let now = Instant::now();
        let outcome = outcome_of(&result);
        let report = match &result {
            Ok(resp) => {
                let load = resp
                    .headers()
                    .get(LOAD_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_load);
                Report::answered(outcome.is_success(), now - sent_at, load)
            }
            Err(_) => Report::failed(),
        };
        if lease.finish(report, now) {
            Metrics::count(&self.inputs.metrics.ejections, &backend.service);
        }
        Ok((result, outcome))
    }
}

impl AttemptBody {
    /// What retries need to know about the body.
    fn state(&self) -> BodyState {
        match self {
            AttemptBody::Held(b) if b.is_empty() => BodyState::Empty,
            AttemptBody::Held(b) => BodyState::Buffered(b.len()),
            _ => BodyState::NotHeld,
        }
    }
}

/// How an attempt ended, as retries and outlier detection judge it.
fn outcome_of(result: &Result<Response<ProxyBody>, ProxyError>) -> Outcome {
    match result {
        Ok(resp) => Outcome::Response {
            status: resp.status().as_u16(),
            grpc_status: resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        },
        Err(e) => match e.kind().attempt_failure() {
            AttemptFailure::Connect => Outcome::ConnectFailure,
            AttemptFailure::Timeout => Outcome::Timeout,
            AttemptFailure::Reset => Outcome::Reset,
            AttemptFailure::Answered => Outcome::Response {
                status: e.status().as_u16(),
                grpc_status: None,
            },
        },
    }
}

/// The request head as the peer proxy receives it: hop-by-hop headers, `host` and any
/// caller-supplied `x-quiver-peer-identity` removed, `quiver-target` set.
pub fn prepare_head(
    target: &Target,
    parts: http::request::Parts,
) -> Result<Request<()>, ProxyError> {
    let authority = authority_of(&parts.uri, &parts.headers).unwrap_or_else(|| target.authority());
    let uri = rebase_uri("https", &authority, &parts.uri)?;
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(PEER_IDENTITY_HEADER);
    let target_value = HeaderValue::from_str(&target.authority())
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    headers.insert(TARGET_HEADER, target_value);
    let mut h3req = Request::new(());
    *h3req.method_mut() = parts.method;
    *h3req.uri_mut() = uri;
    *h3req.headers_mut() = headers;
    Ok(h3req)
}

/// The rule's URL rewrite on the head the peer receives: a new authority (the Host the
/// callee's app sees) and/or path; the query is kept.
fn apply_rewrite(head: &mut Request<()>, rewrite: &Rewrite) -> Result<(), ProxyError> {
    let uri = head.uri();
    let authority = match &rewrite.hostname {
        Some(h) => h.clone(),
        None => uri.authority().map(ToString::to_string).unwrap_or_default(),
    };
    let path_and_query = match (rewrite.path(uri.path()), uri.query()) {
        (Some(p), Some(q)) => format!("{p}?{q}"),
        (Some(p), None) => p,
        (None, _) => uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), ToString::to_string),
    };
    *head.uri_mut() = http::Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("rewritten request target: {e}")))?;
    Ok(())
}

/// The proxy's own answer for a rule with a redirect: its status and `Location` (built by
/// [`Redirect::location`] from what the app asked for), an empty body, and the rule's
/// response header edits.
fn redirect_response(
    target: &Target,
    parts: &http::request::Parts,
    redirect: &Redirect,
    plan: &Plan,
) -> Result<Response<ProxyBody>, ProxyError> {
    let authority = authority_of(&parts.uri, &parts.headers).unwrap_or_else(|| target.authority());
    let location = redirect.location(&RedirectFrom {
        scheme: parts.uri.scheme_str().unwrap_or("http"),
        authority: &authority,
        path: parts.uri.path(),
        query: parts.uri.query(),
    });
    let location = HeaderValue::from_str(&location)
        .map_err(|e| ProxyError::BadRequest(format!("redirect location: {e}")))?;
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = http::StatusCode::from_u16(redirect.status)
        .map_err(|e| ProxyError::BadRequest(format!("redirect status: {e}")))?;
    resp.headers_mut().insert(header::LOCATION, location);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    if let Some(edits) = &plan.rule.response_headers {
        edits.apply(resp.headers_mut());
    }
    Ok(resp)
}

/// One attempt: send the head and body to the leased endpoint, return the response head with
/// its body streaming.
async fn send_once(
    inputs: &Arc<Inputs>,
    lease: &mut Lease,
    head: &Request<()>,
    body: AttemptBody,
    on_connected: impl FnOnce(&PeerConn),
) -> Result<Response<ProxyBody>, ProxyError> {
    let (peer, stream) = inputs
        .transport
        .open_stream(&lease.endpoint, head.clone(), || {
            inputs.snapshot().zone.clone()
        })
        .await?;
    lease.connected();
    on_connected(&peer);
    let (mut tx, mut rx) = stream.split();
    let mut sending = None;
    let mut stall = None;
    let mut upgrading = None;
    match body {
        AttemptBody::Held(b) if b.is_empty() => {
            // A peer that answers at once (a refusal: 403, 404) may stop our sending side
            // before the end of the empty body goes out. Its answer still counts: read it; a
            // stream that was really reset fails there too.
            if let Err(e) = tx.finish().await {
                tracing::debug!(error = %e, "the peer stopped the request side before its end");
            }
        }
        AttemptBody::Held(b) => {
            tokio::spawn(async move {
                let full = http_body_util::Full::new(b);
                if let Err(e) = body::send_body(full, &mut tx).await {
                    tracing::debug!(error = %e, "request body aborted");
                }
            });
        }
        AttemptBody::Stream(incoming) => {
            stall = Some(incoming.get_ref().stall_watch());
            // Streams on its own task so that a response (e.g. gRPC bidirectional
            // streaming) can flow back while the app is still sending.
            sending = Some(tokio::spawn(async move {
                let sent = body::send_body(incoming, &mut tx).await;
                if let Err(e) = &sent {
                    tracing::debug!(error = %e, "request body aborted");
                }
                sent
            }));
        }
        AttemptBody::Upgrade(u) => {
            // The CONNECT's request side stays open: it becomes the tunnel's upstream half.
            upgrading = Some((u, tx));
        }
        AttemptBody::Spent => {
            return Err(ProxyError::BadRequest(
                "the request body was already streamed".into(),
            ));
        }
    }
    let resp = match sending {
        // A body that never started is the app's fault, answered here: the peer only sees
        // its stream reset, and must not be blamed (no outlier ejection, no retry).
        Some(mut sending) => tokio::select! {
            // The stalled body first: the peer's answer to the stream reset it caused (a
            // 502 for the cut body) must not win a tie and blame the peer.
            biased;
            Ok(Err(e)) = &mut sending => match e.downcast_ref::<body::BodyStalled>() {
                Some(stalled) => return Err(ProxyError::BadRequest(stalled.to_string())),
                None => rx.recv_response().await,
            },
            // The peer's answer may also be to the reset a cut body caused, arriving before
            // the sending task returned: the cut decides, not the answer.
            r = rx.recv_response() => match stall.as_ref().and_then(body::StallWatch::stalled) {
                Some(stalled) => return Err(ProxyError::BadRequest(stalled.to_string())),
                None => r,
            },
        },
        None => rx.recv_response().await,
    }
    .map_err(|e| peer.stream_error(&e))?;
    if let Some((u, mut tx)) = upgrading {
        if let Some(protocol) = upgrade::accepted(&resp) {
            let service = lease.service().to_string();
            let stream = (tx, rx);
            return Ok(upgrade::switched(
                inputs,
                service,
                peer,
                stream,
                resp,
                protocol,
                u.on_upgrade,
            ));
        }
        // The app answered without switching: that answer streams back like any response.
        if let Err(e) = tx.finish().await {
            tracing::debug!(error = %e, "the peer stopped the upgrade's request side");
        }
    }
    let (mut rparts, ()) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    rparts.version = http::Version::HTTP_11;
    let length = content_length(&rparts.headers);
    // The body keeps the connection open while it streams (see `PeerConn::response_body`).
    let body = peer.response_body(rx, length);
    Ok(Response::from_parts(rparts, body))
}

/// Send a copy of the request to an endpoint of the mirror backend and discard the answer.
/// Runs on its own task: the primary request never waits for it. The copy takes a lease
/// like any attempt (circuit limits, outlier detection of the mirror's endpoints).
fn mirror_copy(
    inputs: &Arc<Inputs>,
    routing: &Arc<Routing>,
    mirror: &Backend,
    head: &Request<()>,
    body: Bytes,
) {
    let rolls = [rand::random::<u32>(), rand::random::<u32>()];
    let Ok(mut lease) = routing.lease(&mirror.service, &mirror.selector, Instant::now(), rolls)
    else {
        return;
    };
    let mut head = head.clone();
    if let Ok(v) = HeaderValue::from_str(&mirror.service) {
        head.headers_mut().insert(TARGET_HEADER, v);
    }
    let inputs = inputs.clone();
    let subset = mirror.subset.clone();
    tokio::spawn(async move {
        let timeout = Duration::from_secs(10).min(inputs.tuning.response_timeout);
        let sent_at = Instant::now();
        let sent = send_once(&inputs, &mut lease, &head, AttemptBody::Held(body), |_| {});
        let result = tokio::time::timeout(timeout, sent)
            .await
            .unwrap_or(Err(ProxyError::UpstreamTimeout(timeout)));
        let now = Instant::now();
        let service = lease.service().to_string();
        // Counted in the edge statistics as requests to the mirror's subset: what a canary's
        // mirror stage is judged by (docs/canary.md).
        if let Some(telemetry) = inputs.telemetry.as_ref() {
            let failed = !matches!(&result, Ok(r) if r.status().as_u16() < 500);
            telemetry.count_edge(&service, &subset, now - sent_at, failed);
        }
        // Judged like an attempt (no 5xx); the mirror's reported load is not taken.
        let report = match &result {
            Ok(_) => Report::answered(outcome_of(&result).is_success(), now - sent_at, None),
            Err(_) => Report::failed(),
        };
        if lease.finish(report, now) {
            Metrics::count(&inputs.metrics.ejections, &service);
        }
        if let Ok(resp) = result {
            // Read and drop the mirror's answer so its stream ends cleanly.
            let _ = resp.into_body().collect().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_saturates_instead_of_panicking() {
        let now = Instant::now();
        // The largest allowed: a Route's or MeshConfig's timeout (1h), tuning.response_timeout
        // (24h). Exact.
        for allowed in [Duration::from_secs(3600), Duration::from_secs(86_400)] {
            assert_eq!(deadline_after(now, allowed), now + allowed);
        }
        // What `9999999999999999999d` parses to, and the largest Duration: no overflow panic,
        // and a deadline that is still in the future.
        let huge = quiver_api::duration::parse("9999999999999999999d").unwrap();
        for unbounded in [huge, Duration::MAX] {
            let deadline = deadline_after(now, unbounded);
            assert!(
                deadline >= now + Duration::from_secs(86_400),
                "{unbounded:?}"
            );
            assert!(deadline.saturating_duration_since(Instant::now()) > Duration::ZERO);
        }
    }
}
