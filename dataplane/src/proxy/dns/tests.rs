use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::*;

const CATALOG: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 7);
const UPSTREAM_A: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const TYPE_AAAA: u16 = 28;
/// How long a test waits for something that must arrive.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long a test listens for a reply that must not come.
const SILENCE: Duration = Duration::from_millis(200);

fn lookup() -> Lookup {
    Arc::new(|service: &str| (service == "catalog").then_some(CATALOG))
}

/// A query as a stub resolver sends it (RD set), optionally with an EDNS OPT record.
fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if edns {
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

/// The end of the question section, walked independently of the code under test.
fn question_end(msg: &[u8]) -> usize {
    let mut at = 12;
    while msg[at] != 0 {
        at += 1 + usize::from(msg[at]);
    }
    at + 5
}

fn id(reply: &[u8]) -> u16 {
    u16::from_be_bytes([reply[0], reply[1]])
}

fn rcode(reply: &[u8]) -> u8 {
    reply[3] & 0x0f
}

fn authoritative(reply: &[u8]) -> bool {
    reply[2] & 0x04 != 0
}

/// The A records of a reply's answer section, with their TTLs.
fn a_records(reply: &[u8]) -> Vec<(Ipv4Addr, u32)> {
    let count = u16::from_be_bytes([reply[6], reply[7]]);
    let mut at = question_end(reply);
    let mut out = Vec::new();
    for _ in 0..count {
        if reply[at] & 0xc0 == 0xc0 {
            at += 2;
        } else {
            while reply[at] != 0 {
                at += 1 + usize::from(reply[at]);
            }
            at += 1;
        }
        let rtype = u16::from_be_bytes([reply[at], reply[at + 1]]);
        let ttl = u32::from_be_bytes(reply[at + 4..at + 8].try_into().unwrap());
        let len = usize::from(u16::from_be_bytes([reply[at + 8], reply[at + 9]]));
        at += 10;
        if rtype == 1 {
            let ip: [u8; 4] = reply[at..at + len].try_into().unwrap();
            out.push((ip.into(), ttl));
        }
        at += len;
    }
    out
}

/// What the test upstream answers: the question echoed and one A record, or just `rcode`.
fn upstream_answer(query: &[u8], rcode: u8) -> Vec<u8> {
    let end = question_end(query);
    let mut a = query[..end].to_vec();
    a[2] |= 0x80;
    a[3] = 0x80 | rcode;
    a[6..12].copy_from_slice(&[0, u8::from(rcode == 0), 0, 0, 0, 0]);
    if rcode == 0 {
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        a.extend_from_slice(&UPSTREAM_A.octets());
    }
    a
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Answer,
    Refuse,
    /// Reads queries and never answers: a black hole.
    Silent,
}

/// A real DNS server on UDP and TCP of one port; every query it reads goes to `received`.
struct Upstream {
    addr: SocketAddr,
    received: mpsc::UnboundedReceiver<Vec<u8>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// A UDP socket and a TCP listener on the same loopback port, as a resolver address is.
async fn udp_and_tcp() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

async fn upstream(behaviour: Behaviour) -> Upstream {
    let (udp, tcp) = udp_and_tcp().await;
    let addr = udp.local_addr().unwrap();
    let (tx, received) = mpsc::unbounded_channel();
    let reply = move |q: &[u8]| match behaviour {
        Behaviour::Answer => Some(upstream_answer(q, 0)),
        Behaviour::Refuse => Some(upstream_answer(q, 5)),
        Behaviour::Silent => None,
    };
    let udp_tx = tx.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await.unwrap();
            udp_tx.send(buf[..n].to_vec()).unwrap();
            if let Some(a) = reply(&buf[..n]) {
                udp.send_to(&a, from).await.unwrap();
            }
        }
    });
    let tcp_task = tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(len) = s.read_u16().await {
                    let mut q = vec![0u8; usize::from(len)];
                    s.read_exact(&mut q).await.unwrap();
                    tx.send(q.clone()).unwrap();
                    if let Some(a) = reply(&q) {
                        s.write_all(&(a.len() as u16).to_be_bytes()).await.unwrap();
                        s.write_all(&a).await.unwrap();
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        received,
        tasks: vec![udp_task, tcp_task],
    }
}

/// An address with nothing listening on it (UDP gets ICMP unreachable, TCP a reset).
async fn closed() -> SocketAddr {
    udp_and_tcp().await.0.local_addr().unwrap()
}

struct Running {
    resolver: Arc<Resolver>,
    udp: SocketAddr,
    tcp: SocketAddr,
    drain: Drain,
    tasks: Vec<JoinHandle<()>>,
}

async fn start(upstreams: Vec<SocketAddr>, per_upstream: Duration) -> Running {
    let resolver = Arc::new(Resolver::new("demo", lookup(), upstreams, per_upstream));
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let drain = Drain::new();
    let tasks = vec![
        tokio::spawn(resolver.clone().serve_udp(udp, drain.clone())),
        tokio::spawn(resolver.clone().serve_tcp(tcp, drain.clone())),
    ];
    Running {
        resolver,
        udp: udp_addr,
        tcp: tcp_addr,
        drain,
        tasks,
    }
}

/// One datagram out, the reply back (`None`: nothing within `wait`).
async fn udp_ask(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(server).await.unwrap();
    s.send(bytes).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = timeout(wait, s.recv(&mut buf)).await.ok()?.unwrap();
    Some(buf[..n].to_vec())
}

/// A DNS-over-TCP client connection.
struct Tcp(TcpStream);

impl Tcp {
    async fn connect(server: SocketAddr) -> Self {
        Self(TcpStream::connect(server).await.unwrap())
    }

    async fn ask(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.0
            .write_all(&(bytes.len() as u16).to_be_bytes())
            .await
            .unwrap();
        self.0.write_all(bytes).await.unwrap();
        self.read().await
    }

    /// The next framed reply (`None`: the server closed the connection).
    async fn read(&mut self) -> Option<Vec<u8>> {
        let len = timeout(PATIENCE, self.0.read_u16()).await.unwrap().ok()?;
        let mut reply = vec![0u8; usize::from(len)];
        self.0.read_exact(&mut reply).await.unwrap();
        Some(reply)
    }
}

async fn ask_both(r: &Running, q: &[u8]) -> [Vec<u8>; 2] {
    let udp = udp_ask(r.udp, q, PATIENCE).await.expect("a UDP reply");
    let tcp = Tcp::connect(r.tcp).await.ask(q).await.expect("a TCP reply");
    [udp, tcp]
}

#[tokio::test]
async fn mesh_names_are_answered_with_the_virtual_ip_over_udp_and_tcp() {
    let r = start(vec![], Duration::from_secs(2)).await;
    let names = [
        "catalog.demo.mesh",
        "catalog.demo.svc.cluster.local.",
        "Catalog.DEMO.Mesh.",
        "CATALOG.demo.SVC.cluster.LOCAL",
    ];
    for (i, name) in names.into_iter().enumerate() {
        let q = query(0x1000 + i as u16, name, TYPE_A, i % 2 == 0);
        for reply in ask_both(&r, &q).await {
            assert_eq!(id(&reply), id(&q), "{name}");
            assert_eq!(rcode(&reply), 0, "{name}");
            assert!(authoritative(&reply), "{name}");
            assert_eq!(a_records(&reply), vec![(CATALOG, MESH_TTL_SECS)], "{name}");
            // The question comes back exactly as asked, case included (0x20 randomization).
            assert_eq!(reply[12..question_end(&reply)], q[12..question_end(&q)]);
        }
    }

    // Several queries on one TCP connection.
    let mut tcp = Tcp::connect(r.tcp).await;
    for i in 0..3u16 {
        let reply = tcp.ask(&query(i, "catalog.demo.mesh", TYPE_A, false)).await;
        assert_eq!(a_records(&reply.unwrap()), vec![(CATALOG, MESH_TTL_SECS)]);
    }
    assert_eq!(r.resolver.counters().get(Outcome::Mesh), 11);
}

#[tokio::test]
async fn other_types_for_a_mesh_name_are_nodata() {
    let r = start(vec![], Duration::from_secs(2)).await;
    for (name, qtype) in [
        ("catalog.demo.mesh", TYPE_AAAA),
        ("catalog.demo.svc.cluster.local", TYPE_AAAA),
        ("catalog.demo.mesh", 16), // TXT
        // The namespace and the zone exist, with no records of their own.
        ("demo.mesh", TYPE_A),
        ("mesh", TYPE_A),
    ] {
        for reply in ask_both(&r, &query(7, name, qtype, false)).await {
            assert_eq!(rcode(&reply), 0, "{name} {qtype}");
            assert!(authoritative(&reply));
            assert_eq!(&reply[6..8], &[0, 0], "no answers for {name} {qtype}");
        }
    }
}

#[tokio::test]
async fn unknown_mesh_names_are_nxdomain_and_never_forwarded() {
    let mut up = upstream(Behaviour::Answer).await;
    let r = start(vec![up.addr], Duration::from_secs(2)).await;
    for name in [
        "nope.demo.mesh",
        "catalog.other.mesh",
        "other.mesh",
        "v1.catalog.demo.mesh",
        "a.b.c.d.e.f.catalog.demo.mesh",
        "ca\u{e9}talog.demo.mesh",
    ] {
        for qtype in [TYPE_A, TYPE_AAAA] {
            for reply in ask_both(&r, &query(9, name, qtype, false)).await {
                assert_eq!(rcode(&reply), 3, "{name}");
                assert!(authoritative(&reply), "{name}");
                assert_eq!(id(&reply), 9);
            }
        }
    }
    assert!(
        up.received.try_recv().is_err(),
        "nothing under .mesh leaves the pod"
    );
    assert_eq!(r.resolver.counters().get(Outcome::NxDomain), 24);
}

#[tokio::test]
async fn other_names_are_forwarded_byte_for_byte_on_the_same_transport() {
    let mut up = upstream(Behaviour::Answer).await;
    let r = start(vec![up.addr], Duration::from_secs(2)).await;
    for (i, name) in [
        "example.com",
        // Kubernetes DNS may know services the mesh does not, and other namespaces'.
        "nope.demo.svc.cluster.local",
        "catalog.other.svc.cluster.local",
        "catalog.demo.mesh.demo.svc.cluster.local",
    ]
    .into_iter()
    .enumerate()
    {
        let q = query(0xbeef - i as u16, name, TYPE_A, true);
        for reply in ask_both(&r, &q).await {
            assert_eq!(
                reply,
                upstream_answer(&q, 0),
                "{name}: the upstream's answer, unchanged"
            );
            assert_eq!(id(&reply), id(&q));
            assert_eq!(a_records(&reply), vec![(UPSTREAM_A, 60)]);
            assert_eq!(
                up.received.recv().await.unwrap(),
                q,
                "{name}: the query, unchanged"
            );
        }
    }
    assert_eq!(r.resolver.counters().get(Outcome::Forwarded), 8);
}

#[tokio::test]
async fn a_dead_upstream_is_servfail_within_the_timeout() {
    let per_upstream = Duration::from_millis(300);
    let hole = upstream(Behaviour::Silent).await;
    let r = start(vec![hole.addr], per_upstream).await;
    let q = query(0x4242, "example.com", TYPE_A, false);

    let t = Instant::now();
    let reply = udp_ask(r.udp, &q, PATIENCE).await.unwrap();
    assert!(t.elapsed() >= per_upstream && t.elapsed() < Duration::from_secs(2));
    assert_eq!((id(&reply), rcode(&reply)), (0x4242, 2));

    let t = Instant::now();
    let reply = Tcp::connect(r.tcp).await.ask(&q).await.unwrap();
    assert!(t.elapsed() >= per_upstream && t.elapsed() < Duration::from_secs(2));
    assert_eq!((id(&reply), rcode(&reply)), (0x4242, 2));
    assert_eq!(reply[12..], q[12..], "SERVFAIL echoes the question");

    // No upstreams at all: SERVFAIL at once.
    let none = start(vec![], per_upstream).await;
    for reply in ask_both(&none, &q).await {
        assert_eq!(rcode(&reply), 2);
    }
    assert_eq!(r.resolver.counters().get(Outcome::ServFail), 2);
}

#[tokio::test]
async fn the_next_upstream_answers_when_one_is_dead_or_refuses() {
    let per_upstream = Duration::from_millis(300);
    let hole = upstream(Behaviour::Silent).await;
    let refusing = upstream(Behaviour::Refuse).await;
    let good = upstream(Behaviour::Answer).await;
    let dead = closed().await;
    for first in [hole.addr, dead, refusing.addr] {
        let r = start(vec![first, good.addr], per_upstream).await;
        let q = query(77, "example.com", TYPE_A, false);
        let t = Instant::now();
        for reply in ask_both(&r, &q).await {
            assert_eq!(reply, upstream_answer(&q, 0));
        }
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    // When every upstream refuses, the last refusal is the answer.
    let r = start(vec![refusing.addr], per_upstream).await;
    let q = query(78, "example.com", TYPE_A, false);
    for reply in ask_both(&r, &q).await {
        assert_eq!(reply, upstream_answer(&q, 5));
    }
}

#[tokio::test]
async fn hostile_udp_datagrams_are_refused_or_dropped_and_service_goes_on() {
    let r = start(vec![], Duration::from_secs(2)).await;
    let good = query(1, "catalog.demo.mesh", TYPE_A, false);
    let mut two_questions = good.clone();
    two_questions[5] = 2;
    two_questions.extend_from_slice(&good[12..]);
    let mut pointer = good[..12].to_vec();
    pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let mut long_name = good[..12].to_vec();
    for _ in 0..5 {
        long_name.push(63);
        long_name.extend_from_slice(&[b'a'; 63]);
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut past_end = good[..12].to_vec();
    past_end.extend_from_slice(&[40, b'a', b'b']);
    let mut response = good.clone();
    response[2] |= 0x80;
    let mut notify = good.clone();
    notify[2] = 4 << 3;
    let mut huge = good.clone();
    huge.resize(MAX_QUERY + 1, 0);

    // (bytes, the reply's rcode, or None: dropped)
    let cases: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
        ("one byte", vec![0x12], None),
        ("empty", vec![], None),
        ("truncated header", vec![0x12, 0x34, 0x01, 0, 0], Some(1)),
        ("two questions", two_questions, Some(1)),
        ("compression pointer", pointer, Some(1)),
        ("name over 255 bytes", long_name, Some(1)),
        ("label past the end", past_end, Some(1)),
        (
            "no type and class",
            good[..good.len() - 4].to_vec(),
            Some(1),
        ),
        ("a response", response, None),
        ("opcode NOTIFY", notify, Some(4)),
        ("over MAX_QUERY", huge, Some(1)),
        (
            "garbage",
            b"\xde\xad\x00\x01garbage that is not dns".to_vec(),
            Some(1),
        ),
    ];
    for (what, bytes, expect) in cases {
        let reply = udp_ask(
            r.udp,
            &bytes,
            if expect.is_some() { PATIENCE } else { SILENCE },
        )
        .await;
        match expect {
            Some(code) => {
                let reply = reply.unwrap_or_else(|| panic!("{what}: no reply"));
                assert_eq!(rcode(&reply), code, "{what}");
                assert_eq!(reply[..2], bytes[..2], "{what}: the id");
                assert_eq!(reply[2] & 0x80, 0x80, "{what}: a response");
            }
            None => assert!(reply.is_none(), "{what}: dropped"),
        }
        let reply = udp_ask(r.udp, &good, PATIENCE)
            .await
            .expect("still serving");
        assert_eq!(
            a_records(&reply),
            vec![(CATALOG, MESH_TTL_SECS)],
            "after {what}"
        );
    }
}

#[tokio::test]
async fn hostile_tcp_clients_are_refused_or_dropped_and_service_goes_on() {
    let r = start(vec![], Duration::from_secs(2)).await;
    let good = query(2, "catalog.demo.mesh", TYPE_A, false);
    let answered = |reply: Option<Vec<u8>>| {
        assert_eq!(a_records(&reply.unwrap()), vec![(CATALOG, MESH_TTL_SECS)]);
    };

    // A malformed query on a good frame: FORMERR, and the connection goes on.
    let mut c = Tcp::connect(r.tcp).await;
    let mut two = good.clone();
    two[5] = 2;
    assert_eq!(rcode(&c.ask(&two).await.unwrap()), 1);
    answered(c.ask(&good).await);

    // A huge length prefix: FORMERR on the id that follows, then the connection closes.
    let mut c = Tcp::connect(r.tcp).await;
    c.0.write_all(&[0xff, 0xff, 0xab, 0xcd, 1, 2, 3])
        .await
        .unwrap();
    let reply = c.read().await.unwrap();
    assert_eq!((id(&reply), rcode(&reply)), (0xabcd, 1));
    assert!(c.read().await.is_none());

    // A huge length prefix and nothing after it; a frame too short for an id; a frame cut
    // short; a zero-length frame: closed without a reply.
    for bytes in [&[0xff, 0xff][..], &[0, 1, 0x12], &[0, 40, 1, 2, 3], &[0, 0]] {
        let mut c = Tcp::connect(r.tcp).await;
        c.0.write_all(bytes).await.unwrap();
        c.0.shutdown().await.unwrap();
        assert!(c.read().await.is_none(), "{bytes:?}");
    }

    answered(Tcp::connect(r.tcp).await.ask(&good).await);
    assert!(r.resolver.counters().get(Outcome::Malformed) >= 3);
}

/// Mutated queries straight into [`Resolver::answer`]: whatever the bytes, no panic, and a
/// reply is a response with the query's id.
#[tokio::test]
async fn mutated_queries_never_panic() {
    let resolver = Resolver::new("demo", lookup(), vec![], Duration::from_millis(10));
    let seeds = [
        query(3, "catalog.demo.mesh", TYPE_A, true),
        query(4, "catalog.demo.svc.cluster.local", TYPE_AAAA, false),
        query(5, "example.com", TYPE_A, false),
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..20_000 {
        let mut q = seeds[round % seeds.len()].clone();
        for _ in 0..=(next() % 4) {
            let at = (next() as usize) % (q.len() + 1);
            match next() % 3 {
                0 if at < q.len() => q[at] = next() as u8,
                1 => q.truncate(at),
                _ => q.insert(at, next() as u8),
            }
        }
        if let Some(reply) = resolver.answer(&q, Over::Udp).await {
            assert!(reply.len() >= 12 && reply[..2] == q[..2] && reply[2] & 0x80 != 0);
        }
    }
}

#[tokio::test]
async fn a_slow_upstream_does_not_delay_mesh_answers() {
    let hole = upstream(Behaviour::Silent).await;
    let r = start(vec![hole.addr], Duration::from_secs(3)).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(r.udp).await.unwrap();
    for i in 0..10 {
        client
            .send(&query(100 + i, "example.com", TYPE_A, false))
            .await
            .unwrap();
    }
    let t = Instant::now();
    let reply = udp_ask(
        r.udp,
        &query(1, "catalog.demo.mesh", TYPE_A, false),
        PATIENCE,
    )
    .await;
    assert_eq!(a_records(&reply.unwrap()), vec![(CATALOG, MESH_TTL_SECS)]);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[tokio::test]
async fn serving_stops_on_drain() {
    let r = start(vec![], Duration::from_secs(2)).await;
    answered_once(&r).await;
    let mut open = Tcp::connect(r.tcp).await;
    assert!(
        open.ask(&query(8, "catalog.demo.mesh", TYPE_A, false))
            .await
            .is_some()
    );
    r.drain.drain(Duration::ZERO).await;
    for task in r.tasks {
        timeout(PATIENCE, task).await.expect("stopped").unwrap();
    }
    assert!(
        open.read().await.is_none(),
        "an idle client is closed on drain"
    );
}

async fn answered_once(r: &Running) {
    let q = query(6, "catalog.demo.mesh", TYPE_A, false);
    for reply in ask_both(r, &q).await {
        assert_eq!(rcode(&reply), 0);
    }
}

#[test]
fn decisions_over_names() {
    let l = lookup();
    let decide = |name: &str| {
        let q = query(0, name, TYPE_A, false);
        decide("demo", &*l, &q[12..])
    };
    assert_eq!(decide("catalog.demo.mesh"), Decision::Exists(Some(CATALOG)));
    assert_eq!(decide("CATALOG.DEMO.MESH"), Decision::Exists(Some(CATALOG)));
    assert_eq!(decide("demo.mesh"), Decision::Exists(None));
    assert_eq!(decide("nope.demo.mesh"), Decision::NxDomain);
    assert_eq!(decide("catalog.other.mesh"), Decision::NxDomain);
    assert_eq!(decide("x.y.z.w.v.u.mesh"), Decision::NxDomain);
    assert_eq!(
        decide("catalog.demo.svc.cluster.local"),
        Decision::Exists(Some(CATALOG))
    );
    assert_eq!(decide("nope.demo.svc.cluster.local"), Decision::Forward);
    assert_eq!(decide("catalog.other.svc.cluster.local"), Decision::Forward);
    assert_eq!(
        decide("catalog.demo.svc.cluster.example"),
        Decision::Forward
    );
    assert_eq!(decide("mesh.example.com"), Decision::Forward);
    assert_eq!(decide(""), Decision::Forward);
}

#[test]
fn resolv_conf_nameservers() {
    let text = "# generated\n\
                search demo.svc.cluster.local svc.cluster.local cluster.local\n\
                nameserver 10.96.0.10\n\
                nameserver\t127.0.0.53 # systemd-resolved\n\
                ; nameserver 10.0.0.1\n\
                nameserver 10.96.0.10\n\
                nameserver fe80::1%eth0\n\
                nameserver fe80::1%2\n\
                nameserver not-an-address\n\
                options ndots:5\n\
                nameserver 2001:db8::53\n";
    let own: SocketAddr = "127.0.0.1:15053".parse().unwrap();
    let got = upstreams_from_resolv_conf(text, own);
    let want: Vec<SocketAddr> = vec![
        "10.96.0.10:53".parse().unwrap(),
        "127.0.0.53:53".parse().unwrap(),
        "[fe80::1%2]:53".parse().unwrap(),
    ];
    assert_eq!(got, want, "in order, deduplicated, at most 3");

    // Only a nameserver that is this resolver itself is left out.
    let text = "nameserver 127.0.0.1\nnameserver 10.96.0.10\n";
    let at_53: SocketAddr = "127.0.0.1:53".parse().unwrap();
    assert_eq!(
        upstreams_from_resolv_conf(text, at_53),
        vec!["10.96.0.10:53".parse().unwrap()]
    );
    assert_eq!(upstreams_from_resolv_conf(text, own).len(), 2);
    let anywhere: SocketAddr = "0.0.0.0:53".parse().unwrap();
    assert_eq!(upstreams_from_resolv_conf(text, anywhere).len(), 1);
    assert!(upstreams_from_resolv_conf("", own).is_empty());
}
