//! The outbound entry: the bytes a malicious app writes to the proxy's HTTP proxy listener.
//! They are read by the proxy's own connection settings
//! (`quiver_proxy::proxy::outbound::app_connection_builder`: HTTP/1.1 or h2c, head limits)
//! over an in-memory pipe, and every request that parses goes through the steps the proxy
//! takes before it dials a peer, in its order: header-size check, the target service from the
//! URI or Host (`outbound::target_of`), path normalization, the route plan over a fixed
//! snapshot, and the head the peer would receive (`dispatch::prepare_head`).
//!
//! Any bytes: no panic, no hang (libFuzzer's `-timeout`); a target is always a mesh service
//! name; the head sent on carries the normalized path, `quiver-target` naming the target, and
//! none of the hop-by-hop headers, `host` or a caller-supplied `x-quiver-peer-identity`.
#![no_main]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::LazyLock;

use http::{HeaderMap, Method, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use quiver_api::SpiffeId;
use quiver_api::v1;
use quiver_policy::plan::{PolicyConfig, Rolls};
use quiver_policy::route::RequestHead;
use quiver_policy::services::Unknown;
use quiver_proxy::config::Tuning;
use quiver_proxy::errors::ProxyError;
use quiver_proxy::mesh::body::{self, ProxyBody};
use quiver_proxy::proxy::dispatch::prepare_head;
use quiver_proxy::proxy::http::{
    PEER_IDENTITY_HEADER, TARGET_HEADER, check_header_size, error_response, normalize_path,
};
use quiver_proxy::proxy::outbound::{Entry, app_connection_builder, target_of};
use quiver_proxy::snapshot::{Endpoint, RemoteService, Snapshot, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

static TUNING: LazyLock<Tuning> = LazyLock::new(Tuning::default);

/// One known service, `api`, with a Route that matches on path, method and headers.
static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let route: v1::RouteSpec = serde_yaml::from_str(
        r#"
service: api
rules:
  - name: beta
    match:
      path: {prefix: /api/}
      methods: [GET, HEAD]
      headers:
        - {name: x-beta, exact: "1"}
        - {name: x-user, regex: "^(alice|bob)$"}
    backends: [{service: api, weight: 100}]
    timeout: 2s
  - name: admin
    match:
      path: {exact: /admin}
    backends: [{service: api, weight: 100}]
"#,
    )
    .expect("the fuzz route parses");
    let endpoint = Endpoint {
        address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4443),
        identity: SpiffeId::parse("spiffe://fuzz.local/ns/default/sa/api")
            .expect("the fuzz identity parses"),
        labels: Default::default(),
        zone: String::new(),
    };
    let services = BTreeMap::from([(
        "api".to_string(),
        RemoteService::new("api".into(), vec![endpoint], Vec::new()),
    )]);
    let policy = PolicyConfig {
        routes: vec![route],
        ..PolicyConfig::default()
    };
    Snapshot::build(
        "fuzz".into(),
        String::new(),
        Vec::new(),
        services,
        policy,
        Unknown::Refuse,
    )
    .expect("the fuzz snapshot compiles")
});

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "keep-alive",
    "proxy-connection",
];

/// What the proxy decides for one request before it dials a peer; the head it would send.
fn decide(req: Request<Incoming>) -> Result<Request<()>, ProxyError> {
    let (mut parts, _body) = req.into_parts();
    check_header_size(&parts.headers, TUNING.max_header_bytes)?;
    let target = target_of(&Entry::HttpProxy, &parts.uri, &parts.headers)?;
    assert!(
        quiver_api::validate::check_dns_label(&target.service).is_ok() && target.port != Some(0),
        "a target that is not a mesh service name: {target:?}"
    );
    if !SNAPSHOT.services.contains_key(&target.service) {
        return Err(ProxyError::NoRoute("not a service of this mesh".into()));
    }
    if parts.method == Method::CONNECT {
        // A tunnel needs a peer; what came before is what the app's bytes decide.
        return Err(ProxyError::BadRequest("no tunnels in-process".into()));
    }
    normalize_path(&mut parts.uri, &TUNING.request_paths)?;
    let path = parts.uri.path().to_string();
    if path != "*" {
        let again = quiver_policy::path::normalize(&path, &TUNING.request_paths)
            .unwrap_or_else(|e| panic!("the normalized path {path:?} is refused: {e}"));
        assert!(
            matches!(again, std::borrow::Cow::Borrowed(_)),
            "the path {path:?} is not normal"
        );
    }
    let head = RequestHead {
        method: parts.method.as_str(),
        path: &path,
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let rolls = Rolls {
        backend: 42,
        delay: 0.5,
        abort: 0.5,
        mirror: 0.5,
    };
    if SNAPSHOT.policy.plan(&target.service, &head, rolls).is_err() {
        return Err(ProxyError::NoRoute("no rule matches".into()));
    }
    let sent = prepare_head(&target, parts)?;
    check_sent(&target, &path, sent.headers(), sent.uri());
    Ok(sent)
}

fn check_sent(target: &Target, path: &str, headers: &HeaderMap, uri: &http::Uri) {
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain([header::HOST.as_str(), PEER_IDENTITY_HEADER])
    {
        assert!(
            !headers.contains_key(name),
            "{name} is sent on: {headers:?}"
        );
    }
    if let Some(te) = headers.get(header::TE) {
        assert_eq!(te, "trailers", "te is sent on as {te:?}");
    }
    let sent_target = headers.get_all(TARGET_HEADER).iter().collect::<Vec<_>>();
    assert_eq!(sent_target, [target.authority().as_str()], "{headers:?}");
    assert_eq!(uri.scheme_str(), Some("https"));
    assert!(uri.authority().is_some(), "{uri}");
    assert_eq!(
        uri.path(),
        path,
        "the peer is sent another path than was matched"
    );
}

async fn serve(req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    Ok(match decide(req) {
        Ok(_) => Response::new(body::empty()),
        Err(e) => error_response(&e),
    })
}

fuzz_target!(|data: &[u8]| {
    LazyLock::force(&SNAPSHOT);
    RUNTIME.block_on(async {
        let (app, proxy) = tokio::io::duplex(64 * 1024);
        let builder = app_connection_builder(&TUNING);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(proxy), hyper::service::service_fn(serve));
        let (mut from_proxy, mut to_proxy) = tokio::io::split(app);
        let write = async {
            // The proxy may close first (a refused head): the app's write then fails.
            let _ = to_proxy.write_all(data).await;
            let _ = to_proxy.shutdown().await;
        };
        let read = async {
            let mut answer = Vec::new();
            let _ = from_proxy.read_to_end(&mut answer).await;
        };
        let (_, (), ()) = tokio::join!(conn, write, read);
    });
});
