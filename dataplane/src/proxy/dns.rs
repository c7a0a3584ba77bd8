//! The pod's local DNS resolver (mesh DNS; capture points the app's UDP and TCP port 53 here).
//! It answers the mesh names of the proxy's own namespace, `<service>.<namespace>.mesh` and
//! `<service>.<namespace>.svc.cluster.local`, with the service's virtual IP; it owns `.mesh`
//! (unknown names there are NXDOMAIN, never forwarded) and forwards every other query byte for
//! byte to the upstream resolvers, UDP as UDP and TCP as TCP. Counts its outcomes in
//! [`Counters`] (the proxy's `quiver_dns_queries_total`).
//!
//! It must not trust a byte: queries come from any process in the pod. Parsing reads the header
//! and the one question only (the rest is forwarded as is), never follows a compression
//! pointer, and every buffer is bounded: a query by [`MAX_QUERY`], an upstream's answer by the
//! 16-bit DNS length, in-flight forwards by [`MAX_FORWARDS`], TCP clients by
//! [`MAX_TCP_CLIENTS`]. It does not bind sockets or read config: the caller hands it bound
//! sockets, the upstreams and a `lookup` over the live snapshot.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use crate::drain::Drain;
use crate::telemetry::metrics::DnsLabels;

/// The largest query accepted, over UDP or TCP. One question with EDNS options (cookies,
/// padding) fits in a few hundred bytes; a bigger "query" is refused with FORMERR.
pub const MAX_QUERY: usize = 4096;
/// Queries being forwarded at once from the UDP listener; beyond it clients get SERVFAIL at
/// once rather than queueing. Each holds a 64 KiB receive buffer while it waits.
pub const MAX_FORWARDS: usize = 128;
/// TCP clients served at once; further connections are closed on accept.
pub const MAX_TCP_CLIENTS: usize = 64;
/// A TCP client that sends no query for this long is disconnected (RFC 7766 §6.2.3).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The TTL of a mesh answer: short, so a virtual IP reassigned by the control plane (or a
/// service deleted) is noticed within seconds.
pub const MESH_TTL_SECS: u32 = 5;

const HEADER: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const RCODE_FORMERR: u16 = 1;
const RCODE_SERVFAIL: u16 = 2;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;
const RCODE_REFUSED: u16 = 5;

/// `lookup(service)`: the virtual IP of a service of the proxy's namespace, if it has one.
pub type Lookup = Arc<dyn Fn(&str) -> Option<Ipv4Addr> + Send + Sync>;

/// What happened to a query, one count each ([`Counters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered from the mesh: an A record, or NOERROR without answers (NODATA).
    Mesh,
    /// A name under `.mesh` that does not exist (authoritative, never forwarded).
    NxDomain,
    /// An upstream's answer returned to the client.
    Forwarded,
    /// No upstream answered in time (or too many forwards in flight).
    ServFail,
    /// Not a single-question query: FORMERR or NOTIMP when an id could be read, else dropped.
    Malformed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Mesh,
        Outcome::NxDomain,
        Outcome::Forwarded,
        Outcome::ServFail,
        Outcome::Malformed,
    ];

    /// A metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Mesh => "mesh",
            Outcome::NxDomain => "nxdomain",
            Outcome::Forwarded => "forwarded",
            Outcome::ServFail => "servfail",
            Outcome::Malformed => "malformed",
        }
    }
}

/// Queries by [`Outcome`]: the proxy's `quiver_dns_queries_total{outcome}` when built
/// [`Counters::on`] its family, else a family of their own (tests read them with `get`).
#[derive(Debug, Default, Clone)]
pub struct Counters {
    family: Family<DnsLabels, Counter>,
}

impl Counters {
    /// Count into `family` (registered by the metrics).
    pub fn on(family: Family<DnsLabels, Counter>) -> Self {
        Self { family }
    }

    pub fn get(&self, outcome: Outcome) -> u64 {
        self.family
            .get_or_create(&DnsLabels {
                outcome: outcome.as_str(),
            })
            .get()
    }

    fn add(&self, outcome: Outcome) {
        self.family
            .get_or_create(&DnsLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }
}

/// Which transport a query arrived on; it is forwarded on the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Udp,
    Tcp,
}

/// The resolver: the proxy's namespace, how to find a service's virtual IP, where to forward.
pub struct Resolver {
    namespace: String,
    lookup: Lookup,
    upstreams: Vec<SocketAddr>,
    /// Per upstream, for the whole exchange (connect, send, answer).
    timeout: Duration,
    counters: Counters,
    forwards: Arc<Semaphore>,
}

/// The one question of a query, located in its bytes.
struct Question {
    id: u16,
    flags: u16,
    /// End of the question section (the header and the question are `query[..end]`).
    end: usize,
    qtype: u16,
    qclass: u16,
}

/// What to do with a query, decided without I/O.
enum Step {
    Reply(Vec<u8>),
    Forward(Question),
    Drop,
}

/// How the mesh answers a name it owns.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// NOERROR: with this address for A queries, else no answers (NODATA).
    Exists(Option<Ipv4Addr>),
    NxDomain,
    Forward,
}

impl Resolver {
    pub fn new(
        namespace: impl Into<String>,
        lookup: Lookup,
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            lookup,
            upstreams,
            timeout,
            counters: Counters::default(),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
        }
    }

    /// Count into `counters` instead of counters of its own.
    pub fn with_counters(mut self, counters: Counters) -> Self {
        self.counters = counters;
        self
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The reply to one query (`None`: dropped, not even an id to answer). Mesh names are
    /// answered at once; other names wait for the upstreams (at most `timeout` each).
    pub async fn answer(&self, query: &[u8], over: Over) -> Option<Vec<u8>> {
        match self.step(query) {
            Step::Reply(reply) => Some(reply),
            Step::Drop => None,
            Step::Forward(q) => Some(self.forward(query, &q, over).await),
        }
    }

    /// Answer queries on `socket` until drain. Forwards run on their own tasks, so a slow
    /// upstream never delays a mesh answer.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket, drain: Drain) {
        let socket = Arc::new(socket);
        // The largest datagram: a bigger query must not be cut to a smaller valid-looking one.
        let mut buf = vec![0u8; 65535];
        loop {
            let (len, client) = tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        // Transient (an ICMP error surfaced on the socket); back off briefly
                        // so a persistent one cannot spin.
                        tracing::debug!(error = %e, "dns: udp receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = drain.signaled() => return,
            };
            let query = &buf[..len];
            let reply = match self.step(query) {
                Step::Reply(reply) => reply,
                Step::Drop => continue,
                Step::Forward(q) => match self.forwards.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let me = self.clone();
                        let socket = socket.clone();
                        let query = query.to_vec();
                        tokio::spawn(async move {
                            let reply = me.forward(&query, &q, Over::Udp).await;
                            let _ = socket.send_to(&reply, client).await;
                            drop(permit);
                        });
                        continue;
                    }
                    Err(_) => {
                        self.counters.add(Outcome::ServFail);
                        reply_to(query, &q, RCODE_SERVFAIL, false, None)
                    }
                },
            };
            let _ = socket.send_to(&reply, client).await;
        }
    }

    /// Answer queries on TCP connections (2-byte length prefix, several queries per
    /// connection, answered in order) until drain.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener, drain: Drain) {
        let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "dns: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = drain.signaled() => return,
            };
            let Ok(permit) = clients.clone().try_acquire_owned() else {
                continue; // dropping the stream closes it
            };
            let me = self.clone();
            let drain = drain.clone();
            tokio::spawn(async move {
                me.tcp_client(stream, drain).await;
                drop(permit);
            });
        }
    }

    async fn tcp_client(&self, mut stream: TcpStream, drain: Drain) {
        loop {
            let len = tokio::select! {
                r = timeout(TCP_IDLE_TIMEOUT, stream.read_u16()) => match r {
                    Ok(Ok(len)) => usize::from(len),
                    _ => return, // idle, closed or reset
                },
                () = drain.signaled() => return,
            };
            if len > MAX_QUERY {
                // Refuse without reading it all: the id, if it comes, is enough for FORMERR.
                let mut id = [0u8; 2];
                if let Ok(Ok(_)) = timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut id)).await {
                    self.counters.add(Outcome::Malformed);
                    let _ = write_framed(&mut stream, &refusal(&id, RCODE_FORMERR)).await;
                }
                return; // the framing is lost
            }
            let mut query = vec![0u8; len];
            match timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut query)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let Some(reply) = self.answer(&query, Over::Tcp).await else {
                return; // not even an id: nothing sensible to say on this connection
            };
            if timeout(TCP_IDLE_TIMEOUT, write_framed(&mut stream, &reply))
                .await
                .map_or(true, |r| r.is_err())
            {
                return;
            }
        }
    }

    /// Parse and decide; counts every outcome but the forwards'.
    fn step(&self, query: &[u8]) -> Step {
        let q = match parse(query) {
            Ok(q) => q,
            Err(Bad::Drop) => {
                self.counters.add(Outcome::Malformed);
                return Step::Drop;
            }
            Err(Bad::Refuse(rcode)) => {
                self.counters.add(Outcome::Malformed);
                return Step::Reply(refusal(query, rcode));
            }
        };
        match decide(&self.namespace, &*self.lookup, &query[HEADER..q.end]) {
            Decision::Forward => Step::Forward(q),
            Decision::NxDomain => {
                self.counters.add(Outcome::NxDomain);
                Step::Reply(reply_to(query, &q, RCODE_NXDOMAIN, true, None))
            }
            Decision::Exists(ip) => {
                self.counters.add(Outcome::Mesh);
                let a = matches!(q.qtype, TYPE_A | TYPE_ANY)
                    && matches!(q.qclass, CLASS_IN | CLASS_ANY);
                Step::Reply(reply_to(query, &q, 0, true, ip.filter(|_| a)))
            }
        }
    }

    /// Each upstream in turn until one answers; SERVFAIL if none does. An upstream's
    /// SERVFAIL, NOTIMP or REFUSED moves on to the next (as libc resolvers do), and is
    /// returned if it was the last word.
    async fn forward(&self, query: &[u8], q: &Question, over: Over) -> Vec<u8> {
        let mut last = None;
        for upstream in &self.upstreams {
            let exchange = async {
                match over {
                    Over::Udp => exchange_udp(*upstream, query).await,
                    Over::Tcp => exchange_tcp(*upstream, query).await,
                }
            };
            let answer = match timeout(self.timeout, exchange).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => {
                    tracing::debug!(%upstream, error = %e, "dns: upstream failed");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%upstream, "dns: upstream timed out");
                    continue;
                }
            };
            let rcode = u16::from(answer[3] & 0x0f);
            if matches!(rcode, RCODE_SERVFAIL | RCODE_NOTIMP | RCODE_REFUSED) {
                last = Some(answer);
                continue;
            }
            self.counters.add(Outcome::Forwarded);
            return answer;
        }
        match last {
            Some(answer) => {
                self.counters.add(Outcome::Forwarded);
                answer
            }
            None => {
                self.counters.add(Outcome::ServFail);
                reply_to(query, q, RCODE_SERVFAIL, false, None)
            }
        }
    }
}

/// One UDP exchange from a fresh socket (a random source port per query), waiting for the
/// datagram that answers this query: anything else arriving on it is ignored.
async fn exchange_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        if answers(query, &buf[..n]) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// One TCP exchange on a connection of its own.
async fn exchange_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    let len = usize::from(stream.read_u16().await?);
    let mut answer = vec![0u8; len];
    stream.read_exact(&mut answer).await?;
    if answers(query, &answer) {
        Ok(answer)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the answer is not for this query",
        ))
    }
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "message too long"))?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Whether `answer` is a response to `query`: same id, QR set, and the same question (case
/// aside: resolvers may randomize it) unless the upstream sent none, as it may with an error.
fn answers(query: &[u8], answer: &[u8]) -> bool {
    if answer.len() < HEADER || answer[..2] != query[..2] || u16_at(answer, 2) & FLAG_QR == 0 {
        return false;
    }
    if u16_at(answer, 4) == 0 {
        return true;
    }
    let Ok(q) = parse(query) else { return false };
    answer.len() >= q.end && answer[HEADER..q.end].eq_ignore_ascii_case(&query[HEADER..q.end])
}

/// Why a query is not one we can decide on.
#[derive(Debug, PartialEq, Eq)]
enum Bad {
    /// No id to answer to, or a response (never answer one: that is how loops start).
    Drop,
    /// Answer with this rcode and no question.
    Refuse(u16),
}

/// Reads the header and the one question. Compression pointers are refused (a query's only
/// name has nothing earlier to point at), and so are the obsolete label types.
fn parse(query: &[u8]) -> Result<Question, Bad> {
    if query.len() < 2 {
        return Err(Bad::Drop);
    }
    if query.len() < HEADER {
        if query.len() >= 3 && query[2] & 0x80 != 0 {
            return Err(Bad::Drop);
        }
        return Err(Bad::Refuse(RCODE_FORMERR));
    }
    let id = u16_at(query, 0);
    let flags = u16_at(query, 2);
    if flags & FLAG_QR != 0 {
        return Err(Bad::Drop);
    }
    if (flags >> 11) & 0x0f != 0 {
        return Err(Bad::Refuse(RCODE_NOTIMP)); // opcode other than QUERY
    }
    if query.len() > MAX_QUERY
        || u16_at(query, 4) != 1
        || u16_at(query, 6) != 0
        || u16_at(query, 8) != 0
    {
        return Err(Bad::Refuse(RCODE_FORMERR));
    }
    let mut at = HEADER;
    loop {
        let Some(&len) = query.get(at) else {
            return Err(Bad::Refuse(RCODE_FORMERR));
        };
        let len = usize::from(len);
        if len & 0xc0 != 0 {
            return Err(Bad::Refuse(RCODE_FORMERR));
        }
        at += 1 + len;
        // RFC 1035 §3.1: a name is at most 255 bytes on the wire.
        if at - HEADER > 255 {
            return Err(Bad::Refuse(RCODE_FORMERR));
        }
        if len == 0 {
            break;
        }
    }
    let end = at + 4;
    if query.len() < end {
        return Err(Bad::Refuse(RCODE_FORMERR));
    }
    Ok(Question {
        id,
        flags,
        end,
        qtype: u16_at(query, at),
        qclass: u16_at(query, at + 2),
    })
}

/// The labels of a name in wire form (as [`parse`] checked it).
fn labels(mut name: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = name.split_first()?;
        let len = usize::from(len);
        if len == 0 || rest.len() < len {
            return None;
        }
        let (label, rest) = rest.split_at(len);
        name = rest;
        Some(label)
    })
}

/// The mesh's decision for a name (`question` is the name in wire form, then type and class).
/// `.mesh` is ours: the namespace and the zone itself exist (NODATA, so a resolver that
/// caches NXDOMAIN for everything below a name, RFC 8020, still asks for the services), any
/// other name there does not. `.svc.cluster.local` names are answered only for services the
/// mesh knows; Kubernetes DNS may know others.
fn decide(
    namespace: &str,
    lookup: &(dyn Fn(&str) -> Option<Ipv4Addr> + Send + Sync),
    question: &[u8],
) -> Decision {
    // Only names of up to 5 labels are answered: keep those, and the last label of any.
    let mut first = [&[][..]; 5];
    let mut last = &[][..];
    let mut count = 0;
    for label in labels(question) {
        if let Some(slot) = first.get_mut(count) {
            *slot = label;
        }
        last = label;
        count += 1;
    }
    let is = |label: &[u8], word: &str| label.eq_ignore_ascii_case(word.as_bytes());
    let ours = |label: &[u8]| is(label, namespace);
    let vip = |label: &[u8]| {
        let service = std::str::from_utf8(label).ok()?.to_ascii_lowercase();
        quiver_api::validate::check_dns_label(&service).ok()?;
        lookup(&service)
    };
    if !is(last, "mesh") {
        let [service, ns, svc, cluster, local] = first;
        let kubernetes = count == 5
            && ours(ns)
            && is(svc, "svc")
            && is(cluster, "cluster")
            && is(local, "local");
        return match kubernetes.then(|| vip(service)).flatten() {
            Some(ip) => Decision::Exists(Some(ip)),
            None => Decision::Forward,
        };
    }
    match count {
        1 => Decision::Exists(None),
        2 if ours(first[0]) => Decision::Exists(None),
        3 if ours(first[1]) => {
            vip(first[0]).map_or(Decision::NxDomain, |ip| Decision::Exists(Some(ip)))
        }
        _ => Decision::NxDomain,
    }
}

/// A reply echoing the query's question: `rcode`, authoritative or not, with one A record.
fn reply_to(
    query: &[u8],
    q: &Question,
    rcode: u16,
    authoritative: bool,
    a: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut flags = FLAG_QR | (q.flags & FLAG_RD) | FLAG_RA | rcode;
    if authoritative {
        flags |= FLAG_AA;
    }
    let mut out = Vec::with_capacity(q.end + 16);
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    out.extend_from_slice(&u16::from(a.is_some()).to_be_bytes()); // ANCOUNT
    out.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    out.extend_from_slice(&query[HEADER..q.end]);
    if let Some(ip) = a {
        out.extend_from_slice(&[0xc0, HEADER as u8]); // the question's name
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&MESH_TTL_SECS.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// A header-only reply to a query we could not read past its id: `rcode`, the id, RD kept.
fn refusal(query: &[u8], rcode: u16) -> Vec<u8> {
    let rd = query.get(2).map_or(0, |b| u16::from(*b & 0x01) << 8);
    let flags = FLAG_QR | rd | FLAG_RA | rcode;
    let mut out = vec![0u8; HEADER];
    out[..2].copy_from_slice(&query[..2]);
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    out
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// The upstream resolvers of a resolv.conf (`nameserver` lines, port 53, in order, at most 3
/// as libc uses). A nameserver that is this resolver itself (`own`, its listen address; a
/// loopback address reaches an unspecified one) is left out: forwarding there would loop.
/// IPv6 link-local addresses with a named scope (`fe80::1%eth0`) are left out too (only a
/// numeric scope can be used without asking the kernel).
pub fn upstreams_from_resolv_conf(text: &str, own: SocketAddr) -> Vec<SocketAddr> {
    let is_own = |addr: SocketAddr| {
        addr == own
            || (addr.port() == own.port()
                && own.ip().is_unspecified()
                && (addr.ip().is_loopback() || addr.ip().is_unspecified()))
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next().and_then(nameserver) else {
            continue;
        };
        if !is_own(addr) && !out.contains(&addr) && out.len() < 3 {
            out.push(addr);
        }
    }
    out
}

fn nameserver(word: &str) -> Option<SocketAddr> {
    let (ip, scope) = match word.split_once('%') {
        Some((ip, scope)) => (ip, Some(scope.parse::<u32>().ok()?)),
        None => (word, None),
    };
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(ip) if scope.is_none() => Some((ip, 53).into()),
        IpAddr::V4(_) => None,
        IpAddr::V6(ip) => Some(SocketAddr::V6(std::net::SocketAddrV6::new(
            ip,
            53,
            0,
            scope.unwrap_or(0),
        ))),
    }
}

#[cfg(test)]
mod tests;
