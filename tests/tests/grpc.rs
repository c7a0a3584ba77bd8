//! gRPC (unary, server, client and bidirectional streaming, OK and non-OK statuses) across
//! the mesh.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use quiver_tests::echo_proto::EchoRequest;
use quiver_tests::echo_proto::echo_client::EchoClient;
use quiver_tests::harness::Pair;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

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

fn say(message: String) -> EchoRequest {
    EchoRequest {
        message,
        fail_with: 0,
        count: 0,
    }
}

#[tokio::test]
async fn client_streaming_delivers_every_message_in_order() {
    let pair = Pair::start().await;
    let mut c = client(&pair).await;
    let sent: Vec<String> = (0..200).map(|i| format!("part {i}")).collect();
    let requests = tokio_stream::iter(sent.clone().into_iter().map(say));
    let reply = c.collect(requests).await.expect("collect").into_inner();
    assert_eq!(reply.messages, sent);
    assert_eq!(reply.peer_identity, "spiffe://mesh.local/ns/default/sa/a");

    // A message larger than one HTTP/3 frame's worth of flow control still arrives whole.
    let big = "x".repeat(600_000);
    let requests = tokio_stream::iter([say("first".into()), say(big.clone()), say("last".into())]);
    let reply = c.collect(requests).await.expect("collect").into_inner();
    assert_eq!(
        reply.messages,
        vec!["first".to_string(), big, "last".to_string()]
    );
}

#[tokio::test]
async fn bidirectional_streaming_interleaves_turn_by_turn() {
    let pair = Pair::start().await;
    let mut c = client(&pair).await;
    // One message may wait in the channel; every later one is sent only after the reply to
    // the one before it arrived. A proxy that held the request stream until its end (or
    // the response until the request ended) would leave this waiting forever, hence the
    // guard, which only turns a hang into a failure.
    let turns = async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(say("turn 0".into())).await.unwrap();
        let mut replies = c
            .chat(ReceiverStream::new(rx))
            .await
            .expect("chat")
            .into_inner();
        for i in 0..150u32 {
            let r = replies
                .next()
                .await
                .expect("a reply to each turn")
                .expect("ok reply");
            assert_eq!(r.message, format!("turn {i}"));
            assert_eq!(r.seq, i);
            assert_eq!(r.peer_identity, "spiffe://mesh.local/ns/default/sa/a");
            if i + 1 < 150 {
                tx.send(say(format!("turn {}", i + 1))).await.unwrap();
            }
        }
        drop(tx);
        // The caller ended its stream: the server ends its own with OK.
        assert!(
            replies.next().await.is_none(),
            "no reply after the last turn"
        );
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), turns)
        .await
        .expect("the turns completed");
}
