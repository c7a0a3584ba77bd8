//! A lossy UDP relay on loopback: real QUIC packets between two real proxies, with a share
//! of them dropped in each direction. The WAN benchmark (`tests/bench/wan.sh`) uses a real
//! link emulator between network namespaces; this relay is the same idea small enough for a
//! test: it lets a test assert what the transport does when packets go missing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Packet counts of one relay, both directions together.
#[derive(Default, Debug)]
pub struct RelayCounts {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

/// Forwards datagrams between clients that send to [`LossyRelay::addr`] and one server,
/// dropping each datagram with probability `loss` (independently, each way).
pub struct LossyRelay {
    pub addr: SocketAddr,
    pub counts: Arc<RelayCounts>,
    task: JoinHandle<()>,
}

impl LossyRelay {
    /// Start relaying to `server`. `loss` is a probability in [0, 1); `seed` makes the drop
    /// pattern repeatable.
    pub async fn start(server: SocketAddr, loss: f64, seed: u64) -> Self {
        assert!((0.0..1.0).contains(&loss), "loss {loss} must be in [0, 1)");
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = front.local_addr().expect("relay address");
        let counts = Arc::new(RelayCounts::default());
        let task = tokio::spawn(relay(front, server, loss, seed, counts.clone()));
        Self { addr, counts, task }
    }

    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    pub fn forwarded(&self) -> u64 {
        self.counts.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One drop decision per datagram, shared by both directions.
struct Dice {
    rng: std::sync::Mutex<StdRng>,
    loss: f64,
    counts: Arc<RelayCounts>,
}

impl Dice {
    fn keep(&self) -> bool {
        let roll: f64 = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .random();
        let keep = roll >= self.loss;
        let c = if keep {
            &self.counts.forwarded
        } else {
            &self.counts.dropped
        };
        c.fetch_add(1, Ordering::Relaxed);
        keep
    }
}

async fn relay(
    front: Arc<UdpSocket>,
    server: SocketAddr,
    loss: f64,
    seed: u64,
    counts: Arc<RelayCounts>,
) {
    let dice = Arc::new(Dice {
        rng: std::sync::Mutex::new(StdRng::seed_from_u64(seed)),
        loss,
        counts,
    });
    // One upstream socket per client address, so the server sees distinct clients. The
    // backward tasks live in a JoinSet: aborting the relay drops it, which aborts them.
    let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut backward_tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            continue;
        };
        let up = match upstream.get(&client) {
            Some(s) => s.clone(),
            None => {
                let Ok(s) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let s = Arc::new(s);
                backward_tasks.spawn(backward(s.clone(), front.clone(), client, dice.clone()));
                upstream.insert(client, s.clone());
                s
            }
        };
        if dice.keep() {
            let _ = up.send_to(&buf[..n], server).await;
        }
    }
}

/// Server → client for one client.
async fn backward(up: Arc<UdpSocket>, front: Arc<UdpSocket>, client: SocketAddr, dice: Arc<Dice>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, _)) = up.recv_from(&mut buf).await else {
            continue;
        };
        if dice.keep() {
            let _ = front.send_to(&buf[..n], client).await;
        }
    }
}
