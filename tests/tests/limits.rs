//! Resource limits (`tuning.limits`) against hostile callers, through real proxies: slow or
//! silent app connections, bodies that never start, idle tunnels, peers' request streams
//! without a head, too many connections from one address or in total, and a flood of
//! half-open QUIC handshakes, each while a normal caller keeps working.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step fails the test"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use quiver_tests::client::send_h1;
use quiver_tests::harness::{Apps, RunningProxy, client_yaml, server_yaml};
use quiver_tests::metric_sum;
use quiver_tests::pki::{AnyServer, Pki, temp_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something the proxy must do after a 2 s limit.
const BOUND: Duration = Duration::from_secs(15);

/// A (client side, with `a_tuning`) -> B (server side, with `b_tuning`) and the sample apps.
async fn pair(a_tuning: &str, b_tuning: &str) -> (Pki, RunningProxy, RunningProxy, Apps) {
    let pki = Pki::new();
    let apps = Apps::start().await;
    let dir = temp_dir("limits");
    let b = RunningProxy::start(
        &format!(
            "{}tuning: {b_tuning}\n",
            server_yaml(&pki.issue("b"), &apps, "1s")
        ),
        &dir,
    )
    .await
    .expect("start B");
    let a = RunningProxy::start(
        &format!(
            "{}tuning: {a_tuning}\n",
            client_yaml(&pki.issue("a"), b.bound.quic, pki.id("b").as_str())
        ),
        &dir,
    )
    .await
    .expect("start A");
    (pki, a, b, apps)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn limit_count(p: &RunningProxy, limit: &str) -> f64 {
    let (_, m) = p.admin_get("/metrics").await;
    metric_sum(
        &m,
        "quiver_limit_refusals_total",
        &[&format!("limit=\"{limit}\"")],
    )
}

/// Write `bytes` one per `every` (then keep sending spaces) until the proxy closes the
/// connection; returns once it has. Reading 0 bytes or failing to write both mean closed.
async fn dribble(addr: SocketAddr, bytes: &'static [u8], every: Duration) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let mut buf = [0u8; 1024];
    let mut i = 0;
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                // Anything the proxy answers (it should not: no head is complete) is read
                // past; only the close ends the wait.
                Ok(_) => {}
            },
            () = tokio::time::sleep(every) => {
                let b = bytes.get(i).copied().unwrap_or(b' ');
                i += 1;
                if bytes.is_empty() {
                    continue;
                }
                if wr.write_all(&[b]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A silent connection, an HTTP/1.1 head and an h2 preface dribbled a byte a second are all
/// closed after `request_header_timeout`, while a normal client is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_app_connections_are_closed_while_others_are_served() {
    let (_pki, a, _b, _apps) = pair("{limits: {request_header_timeout: 2s}}", "{}").await;
    let echo = a.bound.outbound[0];
    let hostile = tokio::spawn(async move {
        tokio::join!(
            dribble(echo, b"", Duration::from_secs(1)),
            dribble(
                echo,
                b"GET / HTTP/1.1\r\nHost: echo\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                Duration::from_secs(1)
            ),
            dribble(
                echo,
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                Duration::from_secs(1)
            ),
        )
    });
    // A normal client keeps being served while the hostile ones are held.
    let served = async {
        let mut n = 0;
        while !hostile.is_finished() {
            let (head, _) = send_h1(echo, get("/hello")).await;
            assert_eq!(head.status(), 200);
            n += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        n
    };
    let n = tokio::time::timeout(BOUND, served)
        .await
        .expect("the proxy closes all three slow connections");
    assert!(n > 0);
    assert!(limit_count(&a, "request_header_timeout").await >= 3.0);
    // The same listener still serves a normal client afterwards.
    let (head, _) = send_h1(echo, get("/after")).await;
    assert_eq!(head.status(), 200);
}

/// A request that announces a body and never sends it is ended after
/// `request_body_timeout`: answered 400 by the caller's proxy when no response has started,
/// and the connection closed when the app had already begun answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_starts_is_cut() {
    let (_pki, a, _b, _apps) = pair("{limits: {request_body_timeout: 2s}}", "{}").await;
    let echo = a.bound.outbound[0];
    let raw = |path: &'static str| async move {
        let mut s = TcpStream::connect(echo).await.unwrap();
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: echo\r\nContent-Length: 10\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        // Until the proxy closes the connection (or resets it).
        let _ = s.read_to_end(&mut got).await;
        String::from_utf8_lossy(&got).into_owned()
    };
    // The app sleeps before answering: no response head yet when the body times out.
    let answered = tokio::time::timeout(BOUND, raw("/sleep/60000"))
        .await
        .expect("the request is answered in time");
    assert!(answered.starts_with("HTTP/1.1 400"), "{answered}");
    assert!(answered.contains("quiver-error: bad-request"), "{answered}");
    assert!(answered.contains("did not start"), "{answered}");
    // The echo app answers at once and streams the (missing) body back: the exchange is cut.
    let cut = tokio::time::timeout(BOUND, raw("/"))
        .await
        .expect("the exchange is cut in time");
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    assert!(limit_count(&a, "request_body_timeout").await >= 2.0);
    let (head, _) = send_h1(echo, get("/after")).await;
    assert_eq!(head.status(), 200);
}

/// A TCP tunnel with no bytes either way for `tunnel_idle_timeout` is closed; one that keeps
/// talking (more often than the timeout) stays open past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() {
    let (_pki, a, _b, _apps) = pair("{limits: {tunnel_idle_timeout: 2s}}", "{}").await;
    let tcp = a.bound.outbound[3];
    let mut idle = TcpStream::connect(tcp).await.unwrap();
    let mut busy = TcpStream::connect(tcp).await.unwrap();
    let mut buf = [0u8; 64];
    for s in [&mut idle, &mut busy] {
        s.write_all(b"hi").await.unwrap();
        s.read_exact(&mut buf[..2]).await.unwrap();
        assert_eq!(&buf[..2], b"hi");
    }
    // The busy tunnel talks every 500 ms for 5 s (2.5 timeouts); the idle one says nothing.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        busy.write_all(b"x").await.unwrap();
        busy.read_exact(&mut buf[..1]).await.unwrap();
        assert_eq!(buf[0], b'x', "the busy tunnel stays open");
    }
    let closed = tokio::time::timeout(BOUND, async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle tunnel was not closed");
    assert!(limit_count(&a, "tunnel_idle_timeout").await >= 1.0);
}

/// A client TLS config for a raw QUIC peer holding `files`' certificate (it trusts any
/// server: these tests play hostile peers, not careful ones).
fn raw_peer_config(files: &quiver_tests::pki::IdentityFiles) -> quinn::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_file_iter(&files.cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let provider = quiver_api::tls::provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A raw HTTP/3 peer's connection to `server`: the QUIC connection and a request sender.
async fn h3_peer(
    ep: &quinn::Endpoint,
    server: SocketAddr,
) -> Result<
    (
        quinn::Connection,
        h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    ),
    Box<dyn std::error::Error + Send + Sync>,
> {
    let conn = ep.connect(server, "quiver.mesh")?.await?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
    tokio::spawn(async move { driver.wait_idle().await });
    Ok((conn, send))
}

/// One request to `echo` on a raw peer's connection: its status.
async fn h3_get(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let req = Request::get("https://echo/hello")
        .header("quiver-target", "echo")
        .body(())
        .unwrap();
    let mut stream = send.send_request(req).await?;
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    while stream.recv_data().await?.is_some() {}
    Ok(resp.status().as_u16())
}

/// A peer that opens a request stream and never completes its head has the stream stopped
/// after `stream_header_timeout`; its other requests on the same connection are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stream_without_a_head_is_stopped() {
    let (pki, _a, b, _apps) = pair("{}", "{limits: {stream_header_timeout: 2s}}").await;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(raw_peer_config(&pki.issue("rogue")));
    let (conn, mut send) = h3_peer(&ep, b.bound.quic).await.unwrap();
    assert_eq!(h3_get(&mut send).await.unwrap(), 200);
    // A request stream with one byte of a HEADERS frame (type 0x01) and nothing more.
    let (mut tx, _rx) = conn.open_bi().await.unwrap();
    tx.write_all(&[0x01]).await.unwrap();
    let stopped = tokio::time::timeout(BOUND, tx.stopped())
        .await
        .expect("the proxy stops the headless stream");
    eprintln!("headless stream ended: {stopped:?}");
    assert_eq!(h3_get(&mut send).await.unwrap(), 200);
    assert!(limit_count(&b, "stream_header_timeout").await >= 1.0);
}

/// With `max_connections_per_peer: 2`, a third connection from the same address is refused
/// (and counted) while the first two keep working; once one closes, a new one is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_after_the_per_peer_limit_is_refused() {
    let (pki, _a, b, _apps) = pair("{}", "{limits: {max_connections_per_peer: 2}}").await;
    let config = raw_peer_config(&pki.issue("many"));
    let peer = || {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(config.clone());
        ep
    };
    let (ep1, ep2, ep3) = (peer(), peer(), peer());
    let (c1, mut s1) = h3_peer(&ep1, b.bound.quic).await.unwrap();
    let (_c2, mut s2) = h3_peer(&ep2, b.bound.quic).await.unwrap();
    assert_eq!(h3_get(&mut s1).await.unwrap(), 200);
    assert_eq!(h3_get(&mut s2).await.unwrap(), 200);
    // The third: TLS 1.3 lets the client finish its handshake before the server decides, so
    // the refusal may arrive at the handshake, the h3 setup or the first request.
    let third = async {
        let (_c3, mut s3) = h3_peer(&ep3, b.bound.quic).await?;
        h3_get(&mut s3).await
    };
    match tokio::time::timeout(BOUND, third).await.unwrap() {
        Ok(status) => panic!("a third connection from one address was served: {status}"),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("the third connection was refused: {msg}");
        }
    }
    assert_eq!(limit_count(&b, "max_connections_per_peer").await, 1.0);
    // The first two still work.
    assert_eq!(h3_get(&mut s1).await.unwrap(), 200);
    assert_eq!(h3_get(&mut s2).await.unwrap(), 200);
    // Closing one frees its place.
    c1.close(0u32.into(), b"done");
    drop(s1);
    let ep4 = peer();
    quiver_tests::eventually("a new connection is taken once one closed", BOUND, || {
        let ep4 = ep4.clone();
        async move {
            let (_c, mut s) = h3_peer(&ep4, b.bound.quic).await.ok()?;
            (h3_get(&mut s).await.ok()? == 200).then_some(())
        }
    })
    .await;
}

/// With `max_connections: 2`, a third connection is refused however many addresses the
/// peers use (each comes from its own loopback address, under its per-peer limit of 1), and
/// counted under `max_connections`; the two within the limit keep being served, and once one
/// closes its place is taken by a new one, and the limit holds again after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_after_the_total_limit_is_refused() {
    let (pki, _a, b, _apps) = pair(
        "{}",
        "{limits: {max_connections: 2, max_connections_per_peer: 1}}",
    )
    .await;
    let config = raw_peer_config(&pki.issue("many"));
    // Linux routes all of 127.0.0.0/8 to loopback: one address per peer.
    let peer_at = |host: u8| {
        let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, host], 0))).unwrap();
        ep.set_default_client_config(config.clone());
        ep
    };
    let refused_by = |limit: &'static str| {
        let b = &b;
        async move { limit_count(b, limit).await }
    };
    let (ep1, ep2, ep3) = (peer_at(2), peer_at(3), peer_at(4));
    let (c1, mut s1) = h3_peer(&ep1, b.bound.quic).await.unwrap();
    let (_c2, mut s2) = h3_peer(&ep2, b.bound.quic).await.unwrap();
    assert_eq!(h3_get(&mut s1).await.unwrap(), 200);
    assert_eq!(h3_get(&mut s2).await.unwrap(), 200);

    // The third, from a third address: refused before any handshake work.
    refused_before_handshake(
        &ep3,
        b.bound.quic,
        "a third connection was taken with max_connections: 2",
    )
    .await;
    assert_eq!(refused_by("max_connections").await, 1.0);
    assert_eq!(refused_by("max_connections_per_peer").await, 0.0);
    // The two within the limit are still served.
    assert_eq!(h3_get(&mut s1).await.unwrap(), 200);
    assert_eq!(h3_get(&mut s2).await.unwrap(), 200);

    // Closing one frees its place (once B has seen the close): a new peer gets in and is
    // served. The connection is kept, so it holds the place it took.
    c1.close(0u32.into(), b"done");
    drop(s1);
    let ep4 = peer_at(5);
    let deadline = tokio::time::Instant::now() + BOUND;
    let (_c4, mut s4) = loop {
        match h3_peer(&ep4, b.bound.quic).await {
            Ok(taken) => break taken,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no new connection was taken after one closed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(h3_get(&mut s4).await.unwrap(), 200);
    assert_eq!(h3_get(&mut s2).await.unwrap(), 200);

    // The freed place was one place: full again, the next is refused again.
    let before = refused_by("max_connections").await;
    let ep5 = peer_at(6);
    refused_before_handshake(
        &ep5,
        b.bound.quic,
        "a connection past the limit was taken after a place was freed",
    )
    .await;
    assert_eq!(refused_by("max_connections").await, before + 1.0);
    assert_eq!(refused_by("max_connections_per_peer").await, 0.0);
    assert_eq!(h3_get(&mut s4).await.unwrap(), 200);
}

/// With `retry_above_handshakes: 0` every attempt must first prove its address (a Retry),
/// which real peers do without noticing; a proven address over `max_connections_per_peer`
/// is then refused before any handshake work (QUIC CONNECTION_REFUSED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proven_address_over_its_limit_is_refused_before_the_handshake() {
    let (pki, _a, b, _apps) = pair(
        "{}",
        "{limits: {retry_above_handshakes: 0, max_connections_per_peer: 2}}",
    )
    .await;
    let config = raw_peer_config(&pki.issue("many"));
    let peer = || {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(config.clone());
        ep
    };
    let (ep1, ep2, ep3) = (peer(), peer(), peer());
    let (_c1, mut s1) = h3_peer(&ep1, b.bound.quic).await.unwrap();
    let (_c2, mut s2) = h3_peer(&ep2, b.bound.quic).await.unwrap();
    assert_eq!(h3_get(&mut s1).await.unwrap(), 200);
    assert_eq!(h3_get(&mut s2).await.unwrap(), 200);
    refused_before_handshake(
        &ep3,
        b.bound.quic,
        "a third proven connection from one address completed its handshake",
    )
    .await;
    let (_, m) = b.admin_get("/metrics").await;
    assert!(
        metric_sum(&m, "quiver_quic_retries_total", &[]) >= 3.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "quiver_limit_refusals_total",
            &["limit=\"max_connections_per_peer\""]
        ),
        1.0
    );
    // No handshake was started for it: two succeeded, none failed.
    let handshakes = |result: &str| {
        metric_sum(
            &m,
            "quiver_quic_handshakes_total",
            &["side=\"server\"", &format!("result=\"{result}\"")],
        )
    };
    assert_eq!((handshakes("ok"), handshakes("failed")), (2.0, 0.0), "{m}");
}

/// 5,000 QUIC Initial packets from 250 source ports, each starting a handshake that is never
/// continued. B answers all but a few with a Retry (keeping no state for them), its
/// handshakes in progress stay bounded, and callers through A, including a proxy that starts
/// and connects in the middle of the flood, see 0 failed requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_get_retries_while_real_callers_keep_working() {
    let (pki, a, b, _apps) = pair("{}", "{}").await;
    let echo = a.bound.outbound[0];
    let (head, _) = send_h1(echo, get("/warm")).await;
    assert_eq!(head.status(), 200);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = quiver_tests::client::client::<Full<Bytes>>(false);
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = Request::get(format!("http://{echo}/hello"))
                    .header("host", "echo")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };

    let flood = tokio::spawn(half_open_flood(b.bound.quic, 250, 20));
    // A proxy that starts during the flood must complete a fresh handshake through it.
    let dir = temp_dir("limits-late");
    let late = RunningProxy::start(
        &client_yaml(&pki.issue("late"), b.bound.quic, pki.id("b").as_str()),
        &dir,
    )
    .await
    .unwrap();
    let mut late_ok = 0;
    for _ in 0..20 {
        let (head, _) = send_h1(late.bound.outbound[0], get("/late")).await;
        assert_eq!(
            head.status(),
            200,
            "a caller that connected during the flood"
        );
        late_ok += 1;
    }
    let sent = flood.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    eprintln!(
        "flood: {sent} Initials; traffic: {ok} ok, {failed} failed; late caller: {late_ok} ok"
    );
    assert_eq!(sent, 5_000);
    assert_eq!(failed, 0, "requests failed during the flood");
    assert!(ok > 0);

    let (_, m) = b.admin_get("/metrics").await;
    let retries = metric_sum(&m, "quiver_quic_retries_total", &[]);
    let in_progress = metric_sum(&m, "quiver_quic_handshakes_in_progress", &[]);
    eprintln!("B: {retries} Retries, {in_progress} handshakes in progress after the flood");
    // Default retry_above_handshakes is 64: past that every unproven Initial is answered
    // with a Retry; a few hundred may be lost on the way (UDP).
    assert!(
        retries >= 4_000.0,
        "{retries} Retries for 5,000 Initials:\n{m}"
    );
    assert!(
        in_progress <= 64.0 + 2.0,
        "{in_progress} handshakes in progress"
    );
    // The half-open handshakes B did take on time out (connect_timeout) and are released.
    quiver_tests::eventually("the half-open handshakes are released", BOUND, || {
        let b = &b;
        async move {
            let (_, m) = b.admin_get("/metrics").await;
            (metric_sum(&m, "quiver_quic_handshakes_in_progress", &[]) == 0.0).then_some(m)
        }
    })
    .await;
    let (_, m) = b.admin_get("/metrics").await;
    let failed_handshakes = metric_sum(
        &m,
        "quiver_quic_handshakes_total",
        &["side=\"server\"", "result=\"failed\""],
    );
    // B did the handshake work for at most a few windows' worth, not for 5,000.
    assert!(
        failed_handshakes < 1_000.0,
        "{failed_handshakes} handshakes started and abandoned"
    );
    let (head, _) = send_h1(echo, get("/after")).await;
    assert_eq!(head.status(), 200);
}

/// Send `sockets * per_socket` QUIC Initial packets to `server`, each the first flight of a
/// different connection (its own connection id and TLS ClientHello), from `sockets` UDP
/// ports; answer nothing. Returns how many were sent.
async fn half_open_flood(server: SocketAddr, sockets: usize, per_socket: usize) -> usize {
    let pki = Pki::new();
    let config = raw_peer_config(&pki.issue("flood"));
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let mut socks = Vec::new();
    for _ in 0..sockets {
        socks.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let mut sent = 0;
    let mut buf = Vec::with_capacity(1500);
    for round in 0..per_socket {
        for s in &socks {
            let (_, mut conn) = endpoint
                .connect(
                    std::time::Instant::now(),
                    config.clone(),
                    server,
                    "quiver.mesh",
                )
                .unwrap();
            buf.clear();
            let t = conn
                .poll_transmit(std::time::Instant::now(), 1, &mut buf)
                .expect("an Initial to send");
            s.send_to(&buf[..t.size], server).await.unwrap();
            sent += 1;
        }
        // Paced per round so the flood is not just lost in the receive buffer.
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    sent
}

/// A connection attempt from `ep` to `to` that the proxy must refuse (QUIC
/// CONNECTION_REFUSED) rather than take; `taken` is the failure message if it is taken.
async fn refused_before_handshake(ep: &quinn::Endpoint, to: std::net::SocketAddr, taken: &str) {
    let attempt = tokio::time::timeout(BOUND, async {
        ep.connect(to, "quiver.mesh").unwrap().await
    })
    .await
    .expect("an answer in time");
    match attempt {
        Ok(_) => panic!("{taken}"),
        Err(e) => {
            eprintln!("the connection was refused: {e}");
            assert!(e.to_string().contains("refused"), "{e}");
        }
    }
}
