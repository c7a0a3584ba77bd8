//! gRPC (unary and server streaming, OK and non-OK statuses) across the mesh.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use quiver_tests::echo_proto::EchoRequest;
use quiver_tests::echo_proto::echo_client::EchoClient;
use quiver_tests::harness::Pair;
use tokio_stream::StreamExt;

async fn client(pair: &Pair) -> EchoClient<tonic::transport::Channel> {
    EchoClient::connect(format!("http://{}", pair.grpc()))
        .await
        .expect("connect to A's grpc listener")
}

#[tokio::test]
async fn unary_ok_and_error_statuses_cross_the_mesh() {
    let pair = Pair::start().await;
    let mut c = client(&pair).await;
    let reply = c
        .unary(EchoRequest {
            message: "ping".into(),
            fail_with: 0,
            count: 0,
        })
        .await
        .expect("unary ok")
        .into_inner();
    assert_eq!(reply.message, "ping");
    assert_eq!(reply.peer_identity, "spiffe://mesh.local/ns/default/sa/a");

    // grpc-status travels in trailers (a trailers-only response here); losing them would turn
    // this into an OK with no message or an internal error.
    let status = c
        .unary(EchoRequest {
            message: "boom".into(),
            fail_with: tonic::Code::PermissionDenied as i32,
            count: 0,
        })
        .await
        .expect_err("non-OK status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "asked to fail: boom");
}

#[tokio::test]
async fn server_streaming_delivers_every_message_then_the_final_status() {
    let pair = Pair::start().await;
    let mut c = client(&pair).await;
    let mut stream = c
        .stream(EchoRequest {
            message: "tick".into(),
            fail_with: 0,
            count: 100,
        })
        .await
        .expect("stream")
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(item) = stream.next().await {
        let r = item.expect("ok item");
        assert_eq!(r.message, "tick");
        seqs.push(r.seq);
    }
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());

    // Messages first, then a non-OK status in the trailers.
    let mut stream = c
        .stream(EchoRequest {
            message: "x".into(),
            fail_with: tonic::Code::ResourceExhausted as i32,
            count: 3,
        })
        .await
        .expect("stream")
        .into_inner();
    let mut got = 0;
    let mut last = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => got += 1,
            Err(s) => {
                last = Some(s);
                break;
            }
        }
    }
    assert_eq!(got, 3);
    let s = last.expect("final error status");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    assert_eq!(s.message(), "stream ended with an error");
}

#[tokio::test]
async fn many_concurrent_unary_calls_on_one_h2_connection() {
    let pair = Pair::start().await;
    let c = client(&pair).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = c
                .unary(EchoRequest {
                    message: format!("m{i}"),
                    fail_with: 0,
                    count: 0,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.message, format!("m{i}"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
