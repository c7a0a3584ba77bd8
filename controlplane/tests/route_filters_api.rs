//! The API refuses a Route's query matches, header modifiers, redirects and rewrites by
//! field path and reason, stores nothing of a refused document, and keeps a valid one's
//! new fields as they were sent.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

mod common;

use common::{REVIEWS_SERVICE, SqliteTestDb, TestServer, doc};
use quiver_api::v1;
use tonic::Code;

const BAD: &str = r#"
apiVersion: quiver.dev/v1
kind: Route
metadata: {name: bad, namespace: shop}
spec:
  service: reviews
  rules:
  - name: query
    match:
      queryParams:
      - {exact: gold}
      - {name: tier, exact: gold, present: true}
      - {name: id, regex: "("}
  - name: headers
    requestHeaders:
      set: [{name: host, value: a.example}, {name: ":path", value: /x}]
      add: [{name: connection, value: close}, {name: x-quiver-peer-identity, value: spoofed}]
      remove: [quiver-target, "bad name"]
    responseHeaders:
      set: [{name: x-ok, value: "tab\u0001ctl"}, {name: x-ok, value: again}]
  - name: redirect
    match: {path: {exact: /old}}
    redirect: {scheme: ftp, port: 70000, statusCode: 304, path: {replacePrefixMatch: /new}}
    backends: [{subset: v1, weight: 100}]
  - name: rewrite
    rewrite: {hostname: Not_A_Host, path: {replaceFullPath: "no-slash"}}
  - name: empty-rewrite
    rewrite: {}
  - name: empty-redirect
    redirect: {}
"#;

#[tokio::test]
async fn route_filters_are_refused_by_field_and_kept_when_valid() {
    let db = SqliteTestDb::create();
    let server = TestServer::start(None, db.dir.path()).await;
    let mut c = server.admin().await;
    c.apply_service(doc::<v1::Service>(REVIEWS_SERVICE))
        .await
        .unwrap();

    let err = c.apply_route(doc::<v1::Route>(BAD)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let msg = err.message();
    for want in [
        "spec.rules[0].match.queryParams[0].name: required",
        "spec.rules[0].match.queryParams[1]: set exactly one of exact, regex, present",
        "spec.rules[0].match.queryParams[2].regex: regex does not compile",
        "spec.rules[1].requestHeaders.set[0].name: \"host\" cannot be modified here; use rewrite.hostname",
        "spec.rules[1].requestHeaders.set[1].name: \":path\" is a pseudo-header",
        "spec.rules[1].requestHeaders.add[0].name: \"connection\" belongs to the connection",
        "spec.rules[1].requestHeaders.add[1].name: \"x-quiver-peer-identity\" is one of Quiver's own headers",
        "spec.rules[1].requestHeaders.remove[0]: \"quiver-target\" is one of Quiver's own headers",
        "spec.rules[1].requestHeaders.remove[1]: \"bad name\" is not a valid header name",
        "spec.rules[1].responseHeaders.set[0].value: not a valid header value",
        "spec.rules[1].responseHeaders.set[1].name: \"x-ok\" is named twice in set",
        "spec.rules[2].redirect.scheme: \"ftp\" is not one of http, https",
        "spec.rules[2].redirect.port: 70000 is outside 1..65535",
        "spec.rules[2].redirect.path.replacePrefixMatch: needs the rule's match.path to be a prefix",
        "spec.rules[2].redirect.statusCode: 304 is not one of 301, 302, 303, 307, 308",
        "spec.rules[2].backends: backends and redirect cannot both be set",
        "spec.rules[3].rewrite.hostname: \"Not_A_Host\" is not a DNS name",
        "spec.rules[3].rewrite.path.replaceFullPath: must start with '/'",
        "spec.rules[4].rewrite: set hostname, path or both",
        "spec.rules[5].redirect: set at least one of scheme, hostname, port, path, statusCode",
    ] {
        assert!(msg.contains(want), "{want:?} missing from:\n{msg}");
    }
    let listed = c
        .list_routes(v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.items.is_empty(),
        "nothing of a refused document is stored"
    );

    let good = r#"
apiVersion: quiver.dev/v1
kind: Route
metadata: {name: good, namespace: shop}
spec:
  service: reviews
  rules:
  - name: moved
    match: {path: {prefix: /old/}}
    redirect: {scheme: https, path: {replacePrefixMatch: /new/}, statusCode: 308}
  - name: api
    match:
      path: {prefix: /api/}
      queryParams: [{name: tier, exact: gold}]
    rewrite: {hostname: reviews.internal, path: {replacePrefixMatch: /}}
    requestHeaders: {set: [{name: x-env, value: prod}], remove: [x-debug]}
    responseHeaders: {add: [{name: x-served-by, value: quiver}]}
    backends: [{subset: v2, weight: 100}]
"#;
    let sent: v1::Route = doc(good);
    c.apply_route(sent.clone()).await.unwrap();
    let got = c
        .get_route(v1::GetRequest {
            namespace: "shop".into(),
            name: "good".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.spec, sent.spec, "the new fields are stored as sent");
    server.stop().await;
}
