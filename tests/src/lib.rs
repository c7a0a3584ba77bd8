//! The test kit: real sample apps, run-time PKI, a harness that starts real proxies on
//! loopback, a whole mesh with a control plane, one Postgres scratch database, a lossy UDP
//! relay, what the browser tests share (`browser`). Nothing here is a mock: every test talks to real sockets. The benchmarks build on
//! it (crate `quiver-bench`); ARCHITECTURE.md has the map.
#![forbid(unsafe_code)]

pub mod apps;
pub mod browser;
pub mod client;
pub mod harness;
pub mod lossy;
pub mod mesh;
pub mod pki;
pub mod podman;
pub mod scratch;

/// Generated code for the test gRPC service (proto/echo.proto).
pub mod echo_proto {
    tonic::include_proto!("quiver.testing");
}

/// Poll `check` until it returns `Some`, or panic after `deadline` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Send the proxies' logs to the test output when `QUIVER_TEST_LOG` is set (e.g. `debug`).
/// The sum of the samples of metric `name` (exact name, before the labels) whose labels
/// include every one of `labels` (e.g. `direction="inbound"`); 0 when there is none.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn init_log() {
    if let Ok(filter) = std::env::var("QUIVER_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
