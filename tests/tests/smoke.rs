use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use quiver_tests::client::send_h1;
use quiver_tests::harness::Pair;

#[tokio::test]
async fn get_crosses_the_mesh() {
    let pair = Pair::start().await;
    let req = Request::get("/hello?x=1")
        .header("host", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (head, body) = send_h1(pair.http1(), req).await;
    println!("{head:?} {body:?}");
    assert_eq!(head.status(), 200);
}
