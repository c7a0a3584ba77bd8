//! Graceful shutdown: one signal that tells every listener to stop accepting, and a count of
//! in-flight requests and tunnels that shutdown waits on (up to the drain timeout).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// Shared shutdown state.
#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    signal: watch::Sender<bool>,
    /// Someone asked the process to stop (`POST /quitquitquit` on the admin listener).
    stop: watch::Sender<bool>,
    inflight: AtomicUsize,
    idle: Notify,
}

/// Held for the life of one request or tunnel.
pub struct InflightGuard {
    inner: Arc<Inner>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.inner.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                signal: watch::channel(false).0,
                stop: watch::channel(false).0,
                inflight: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Count one more request or tunnel in flight.
    pub fn track(&self) -> InflightGuard {
        self.inner.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn inflight(&self) -> usize {
        self.inner.inflight.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.signal.borrow()
    }

    /// Ask the process to shut down as it does on SIGTERM (drain, deregister, exit 0).
    pub fn request_stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Resolves once [`Drain::request_stop`] was called.
    pub async fn stop_requested(&self) {
        let mut rx = self.inner.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Resolves once shutdown has begun.
    pub async fn signaled(&self) {
        let mut rx = self.inner.signal.subscribe();
        // An error means the sender is gone, which only happens when Drain is dropped.
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Begin shutdown, then wait until nothing is in flight or `timeout` passes. Returns how
    /// many were still in flight at the end.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.inner.signal.send_replace(true);
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.inflight() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.inflight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_inflight_work_and_gives_up_at_the_timeout() {
        let d = Drain::new();
        let g = d.track();
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.drain(Duration::from_secs(30)).await });
        d.signaled().await;
        assert!(d.is_draining());
        drop(g);
        assert_eq!(waiter.await.unwrap(), 0);

        let d = Drain::new();
        let _stuck = d.track();
        assert_eq!(d.drain(Duration::from_millis(50)).await, 1);
    }
}
