//! Carrying out an outbound HTTP request's plan: faults, mirroring, then attempts — pick an
//! endpoint (balancer, circuit limits, locality), send, judge the outcome, retry within the
//! budget and the deadlines — and the response streamed back.
//!
//! The decisions are all in [`crate::policy`]; this module performs them and reports what
//! happened back to it. It must not decide anything itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::Inputs;
use crate::body::{self, H3Body, ProxyBody};
use crate::errors::ProxyError;
use crate::http::{
    PEER_IDENTITY_HEADER, TARGET_HEADER, authority_of, rebase_uri, strip_hop_by_hop,
};
use crate::metrics::Metrics;
use crate::outbound::{content_length, open_stream, peer_addr};
use crate::policy::balance::{LOAD_HEADER, Pick, parse_load};
use crate::policy::breaker::Stage;
use crate::policy::outlier::Recorded;
use crate::policy::plan::{Plan, Rolls};
use crate::policy::retry::{self, Attempt, BodyState, Outcome, RetryDecision};
use crate::policy::route::RequestHead;
use crate::snapshot::{Endpoint, Snapshot, Target};
use crate::transport::PeerConn;
use crate::transport::classify_h3_conn;

/// The request body as one attempt sends it.
enum AttemptBody {
    /// Held in memory: can be sent again (retries) or copied (mirror).
    Held(Bytes),
    /// Streamed from the app: one attempt only.
    Stream(crate::body::Counted<Incoming>),
    /// Streamed by an earlier attempt: nothing left to send.
    Spent,
}

/// Plan and carry out one outbound HTTP request. Returns the result and a line for the
/// access log saying what the policy decided.
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
    /// The QUIC connection of the last attempt ([`crate::transport::connection_trace_id`]).
    pub connection: Arc<str>,
    pub attempts: u32,
}

pub async fn forward(
    inputs: &Arc<Inputs>,
    target: &Target,
    req: Request<Incoming>,
) -> (Result<Response<ProxyBody>, ProxyError>, Decided) {
    let snapshot = inputs.snapshot();
    let (parts, incoming) = req.into_parts();
    let head = RequestHead {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        headers: &parts.headers,
    };
    let rolls = Rolls::draw(&mut rand::rng());
    let mut plan = match snapshot.policy.plan(&target.service, &head, rolls) {
        Ok(p) => p,
        Err(_) => {
            return (
                Err(ProxyError::NoRoute(format!(
                    "no rule of the route for {:?} matches",
                    target.service
                ))),
                Decided::default(),
            );
        }
    };
    let seen = std::sync::Mutex::new((Arc::<str>::default(), String::new()));
    let result = carry_out(inputs, &snapshot, target, parts, incoming, &mut plan, &seen).await;
    let (connection, identity) = seen.into_inner().unwrap_or_else(|p| p.into_inner());
    let decided = Decided {
        explain: plan.explain(),
        route: plan.route().to_string(),
        endpoint: plan.endpoint.map(|(a, _)| a),
        identity,
        connection,
        attempts: plan.attempts,
    };
    (result, decided)
}

async fn carry_out(
    inputs: &Arc<Inputs>,
    snapshot: &Arc<Snapshot>,
    target: &Target,
    parts: http::request::Parts,
    incoming: Incoming,
    plan: &mut Plan,
    seen: &std::sync::Mutex<(Arc<str>, String)>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let metrics = &inputs.metrics;
    if let Some(d) = plan.fault.delay {
        Metrics::count_reason(&metrics.faults, &plan.service, "delay");
        tokio::time::sleep(d).await;
    }
    if let Some(status) = plan.fault.abort {
        Metrics::count_reason(&metrics.faults, &plan.service, "abort");
        return Err(ProxyError::Fault(status));
    }

    // Hold the body when a retry or a mirror may need it again and it is small enough.
    let limit = inputs.tuning.retries.max_buffered_body as u64;
    let replay = plan.retries().is_some() || plan.mirror.is_some();
    let declared = content_length(&parts.headers);
    // Bytes the app sent, once, however many attempts carry them.
    let received = Metrics::bytes(&metrics.request_bytes, "outbound", &target.service);
    let mut body = if incoming.is_end_stream() {
        AttemptBody::Held(Bytes::new())
    } else if replay && declared.is_some_and(|n| n <= limit) {
        let b = incoming
            .collect()
            .await
            .map_err(|e| ProxyError::BadRequest(format!("reading the request body: {e}")))?
            .to_bytes();
        received.inc_by(b.len() as u64);
        AttemptBody::Held(b)
    } else {
        AttemptBody::Stream(crate::body::Counted::new(incoming, received))
    };
    let h3head = prepare_head(target, parts)?;

    if let (Some(mirror), AttemptBody::Held(b)) = (plan.mirror.clone(), &body) {
        Metrics::count(&metrics.mirrored, &plan.service);
        mirror_copy(
            inputs,
            snapshot,
            &mirror.service,
            &mirror.selector,
            &h3head,
            b.clone(),
        );
    }

    let overall = plan.timeout.unwrap_or(inputs.tuning.response_timeout);
    let deadline = Instant::now() + overall;
    if plan.retries().is_some() {
        inputs
            .budgets()
            .for_plan(plan, &inputs.tuning.retries, Instant::now())
            .deposit(Instant::now());
    }
    loop {
        plan.attempts += 1;
        let service = plan.backend.service.clone();
        let svc = snapshot
            .services
            .get(&service)
            .ok_or_else(|| ProxyError::NoRoute(format!("service {service:?} is not known")))?;
        let now = Instant::now();
        let rolls = [rand::random::<u32>(), rand::random::<u32>()];
        let picked = inputs.with_balancer(snapshot, &service, |bal| {
            match plan.pick_endpoint(&svc.workloads, bal, &snapshot.zone, now, rolls) {
                Pick::Endpoint { address, .. } => bal
                    .start(address, Stage::Pending, now)
                    .map(|()| address)
                    .map_err(|limit| limit.as_str()),
                Pick::NoEndpoint => Err("no-endpoint"),
                Pick::Overloaded => Err("max-requests"),
            }
        });
        let address = match picked {
            Ok(a) => a,
            Err("no-endpoint") => return Err(ProxyError::NoEndpoint(service)),
            Err(limit) => {
                Metrics::count_reason(&metrics.overloads, &service, limit);
                return Err(ProxyError::Overloaded(limit));
            }
        };
        let Some(endpoint) = svc.endpoint(address).cloned() else {
            inputs.with_balancer(snapshot, &service, |bal| bal.end(address, Stage::Pending));
            return Err(ProxyError::NoEndpoint(service));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let per_try = plan.per_try_timeout().map_or(left, |t| t.min(left));
        let this_body = match &mut body {
            AttemptBody::Held(b) => AttemptBody::Held(b.clone()),
            other => std::mem::replace(other, AttemptBody::Spent),
        };
        let sent_at = Instant::now();
        // Pending until the attempt has its connection (circuit limit `max_pending`), then
        // active until the response head (`max_requests`).
        let connected = std::sync::atomic::AtomicBool::new(false);
        let result = match tokio::time::timeout(
            per_try,
            send_once(inputs, &endpoint, &h3head, this_body, |peer| {
                inputs.with_balancer(snapshot, &service, |bal| bal.connected(address));
                connected.store(true, std::sync::atomic::Ordering::Relaxed);
                *seen.lock().unwrap_or_else(|p| p.into_inner()) =
                    (peer.trace_id.clone(), endpoint.identity.to_string());
            }),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamTimeout(per_try)),
        };
        let now = Instant::now();
        let outcome = outcome_of(&result);
        let ejected = inputs.with_balancer(snapshot, &service, |bal| {
            bal.end(
                address,
                if connected.load(std::sync::atomic::Ordering::Relaxed) {
                    Stage::Active
                } else {
                    Stage::Pending
                },
            );
            if let Ok(resp) = &result {
                bal.observe(address, now - sent_at, now);
                if let Some(load) = resp
                    .headers()
                    .get(LOAD_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_load)
                {
                    bal.report_load(address, load, now);
                }
            }
            matches!(
                bal.record(address, outcome.is_success(), now),
                Recorded::Ejected { .. }
            )
        });
        if ejected {
            Metrics::count(&metrics.ejections, &service);
        }
        let Some(retries) = plan.retries().cloned() else {
            return result;
        };
        let body_state = match &body {
            AttemptBody::Held(b) if b.is_empty() => BodyState::Empty,
            AttemptBody::Held(b) => BodyState::Buffered(b.len()),
            _ => BodyState::NotHeld,
        };
        let attempt = Attempt {
            made: plan.attempts,
            outcome,
            method: h3head.method().as_str(),
            body: body_state,
        };
        let decision = {
            let mut budgets = inputs.budgets();
            let budget = budgets.for_plan(plan, &inputs.tuning.retries, now);
            retry::decide(
                &retries,
                &inputs.tuning.retries,
                budget,
                &attempt,
                now,
                Some(deadline),
                rand::random::<f64>(),
            )
        };
        match decision {
            RetryDecision::Retry { backoff, .. } => {
                Metrics::count(&metrics.retries, &plan.service);
                // The failed attempt's response (if any) is dropped here, resetting its stream.
                drop(result);
                tokio::time::sleep(backoff).await;
            }
            RetryDecision::Final(f) => {
                if !outcome.is_success() && !matches!(f, retry::Final::NotRetriable) {
                    Metrics::count_reason(&metrics.retry_stops, &plan.service, f.as_str());
                }
                return result;
            }
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
        Err(e) => match e {
            ProxyError::PeerConnect { .. }
            | ProxyError::PeerHandshake { .. }
            | ProxyError::PeerIdentityMismatch { .. }
            | ProxyError::UpstreamConnect(_)
            | ProxyError::Overloaded(_)
            | ProxyError::Draining => Outcome::ConnectFailure,
            ProxyError::UpstreamTimeout(_) => Outcome::Timeout,
            ProxyError::UpstreamReset(_) => Outcome::Reset,
            other => Outcome::Response {
                status: other.status().as_u16(),
                grpc_status: None,
            },
        },
    }
}

/// The request head as the peer proxy receives it.
fn prepare_head(target: &Target, parts: http::request::Parts) -> Result<Request<()>, ProxyError> {
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

/// One attempt: send the head and body to `endpoint`, return the response head with its body
/// streaming.
async fn send_once(
    inputs: &Inputs,
    endpoint: &Endpoint,
    head: &Request<()>,
    body: AttemptBody,
    on_connected: impl FnOnce(&PeerConn),
) -> Result<Response<ProxyBody>, ProxyError> {
    let (peer, stream) = open_stream(inputs, endpoint, head.clone()).await?;
    on_connected(&peer);
    let (mut tx, mut rx) = stream.split();
    match body {
        AttemptBody::Held(b) if b.is_empty() => tx
            .finish()
            .await
            .map_err(|e| classify_h3_conn(&peer_addr(&peer), &peer.conn, &e.to_string()))?,
        AttemptBody::Held(b) => {
            tokio::spawn(async move {
                let full = http_body_util::Full::new(b);
                if let Err(e) = body::send_body(full, &mut tx).await {
                    tracing::debug!(error = %e, "request body aborted");
                }
            });
        }
        AttemptBody::Stream(incoming) => {
            // Streams on its own task so that a response (e.g. gRPC bidirectional
            // streaming) can flow back while the app is still sending.
            tokio::spawn(async move {
                if let Err(e) = body::send_body(incoming, &mut tx).await {
                    tracing::debug!(error = %e, "request body aborted");
                }
            });
        }
        AttemptBody::Spent => {
            return Err(ProxyError::BadRequest(
                "the request body was already streamed".into(),
            ));
        }
    }
    let resp = rx
        .recv_response()
        .await
        .map_err(|e| classify_h3_conn(&peer_addr(&peer), &peer.conn, &e.to_string()))?;
    let (mut rparts, ()) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    rparts.version = http::Version::HTTP_11;
    let length = content_length(&rparts.headers);
    // The body holds a request handle: h3 closes a client connection when its last handle
    // goes, and the pool may let go of this one (GOAWAY) while the body still streams.
    let body = H3Body::new(rx, length).keep_alive(peer.send.clone());
    Ok(Response::from_parts(rparts, body.boxed()))
}

/// Send a copy of the request to an endpoint of the mirror backend and discard the answer.
/// Runs on its own task: the primary request never waits for it.
fn mirror_copy(
    inputs: &Arc<Inputs>,
    snapshot: &Arc<Snapshot>,
    service: &str,
    selector: &crate::policy::Labels,
    head: &Request<()>,
    body: Bytes,
) {
    let Some(svc) = snapshot.services.get(service) else {
        return;
    };
    let candidates: Vec<&Endpoint> = svc
        .endpoints
        .iter()
        .filter(|e| crate::policy::selects(selector, &e.labels))
        .collect();
    if candidates.is_empty() {
        return;
    }
    let endpoint = candidates[inputs.next_turn() % candidates.len()].clone();
    let mut head = head.clone();
    if let Ok(v) = HeaderValue::from_str(service) {
        head.headers_mut().insert(TARGET_HEADER, v);
    }
    let inputs = inputs.clone();
    tokio::spawn(async move {
        let timeout = Duration::from_secs(10).min(inputs.tuning.response_timeout);
        let r = tokio::time::timeout(
            timeout,
            send_once(&inputs, &endpoint, &head, AttemptBody::Held(body), |_| {}),
        )
        .await;
        if let Ok(Ok(resp)) = r {
            // Read and drop the mirror's answer so its stream ends cleanly.
            let _ = resp.into_body().collect().await;
        }
    });
}
