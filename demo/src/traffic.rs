//! The demo's traffic: a steady stream of `GET /` to frontend, and a running tally of which
//! catalog version answered, kept over a sliding window so a route change shows within
//! seconds.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::apps::FrontendReply;

/// The outcome of one request to frontend.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Frontend answered; `version` is the catalog version behind it.
    Served { version: String, rating_ok: bool },
    /// No usable answer; why.
    Failed(String),
}

/// Counts over the last `window` outcomes, and totals.
#[derive(Debug)]
pub struct Tally {
    window: usize,
    recent: VecDeque<Outcome>,
    pub total: u64,
    pub total_errors: u64,
    last_error: Option<String>,
}

impl Tally {
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            recent: VecDeque::new(),
            total: 0,
            total_errors: 0,
            last_error: None,
        }
    }

    pub fn record(&mut self, o: Outcome) {
        self.total += 1;
        if let Outcome::Failed(e) = &o {
            self.total_errors += 1;
            self.last_error = Some(e.clone());
        }
        if self.recent.len() == self.window {
            self.recent.pop_front();
        }
        self.recent.push_back(o);
    }

    /// One line: the share of each catalog version (v1 and v2 always shown), errors, and how
    /// many of the answers carried a rating from ratings.
    pub fn line(&self) -> String {
        let mut versions: BTreeMap<&str, u64> = [("v1", 0), ("v2", 0)].into();
        let (mut errors, mut rated, mut served) = (0u64, 0u64, 0u64);
        for o in &self.recent {
            match o {
                Outcome::Served { version, rating_ok } => {
                    *versions.entry(version.as_str()).or_default() += 1;
                    served += 1;
                    rated += u64::from(*rating_ok);
                }
                Outcome::Failed(_) => errors += 1,
            }
        }
        let n = self.recent.len().max(1) as f64;
        let mut line = String::from("catalog");
        for (v, c) in &versions {
            line.push_str(&format!(" {v} {:>5.1}%", *c as f64 * 100.0 / n));
        }
        line.push_str(&format!("  errors {errors}"));
        let rated_pct = if served == 0 {
            0.0
        } else {
            rated as f64 * 100.0 / served as f64
        };
        line.push_str(&format!("  ratings {rated_pct:.0}%"));
        line.push_str(&format!(
            "  (last {} requests; {} total, {} failed)",
            self.recent.len(),
            self.total,
            self.total_errors
        ));
        line
    }

    /// The last failure, once; for printing under the tally.
    pub fn take_last_error(&mut self) -> Option<String> {
        self.last_error.take()
    }
}

/// Read one frontend answer into an [`Outcome`].
pub fn outcome_of(status: http::StatusCode, body: &[u8]) -> Outcome {
    if !status.is_success() {
        let text = String::from_utf8_lossy(body);
        let why = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string());
        return Outcome::Failed(format!("frontend answered {status}: {why}"));
    }
    match serde_json::from_slice::<FrontendReply>(body) {
        Ok(r) => Outcome::Served {
            version: r.catalog.version,
            rating_ok: r.catalog.rating.is_some(),
        },
        Err(e) => Outcome::Failed(format!("frontend's answer did not parse: {e}")),
    }
}

/// One `GET /` to frontend.
pub async fn call(client: &HttpClient, frontend: SocketAddr) -> Outcome {
    let uri: http::Uri = match format!("http://{frontend}/").parse() {
        Ok(u) => u,
        Err(e) => return Outcome::Failed(format!("bad frontend address: {e}")),
    };
    match tokio::time::timeout(Duration::from_secs(6), get(client, uri)).await {
        Ok(Ok((status, body))) => outcome_of(status, &body),
        Ok(Err(e)) => Outcome::Failed(format!("calling frontend: {e}")),
        Err(_) => Outcome::Failed("frontend did not answer within 6s".into()),
    }
}

/// The demo's plain-HTTP client: traffic to frontend, and the sidecars' admin ports.
pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// GET `uri`: the status and the whole body, or why not.
pub async fn get(client: &HttpClient, uri: http::Uri) -> Result<(http::StatusCode, Bytes), String> {
    let resp = client.get(uri).await.map_err(|e| format!("{e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Send `rate` requests per second to frontend for ever, each outcome to `out`.
pub async fn generate(frontend: SocketAddr, rate: u32, out: mpsc::UnboundedSender<Outcome>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (client, out) = (client.clone(), out.clone());
        tokio::spawn(async move {
            let _ = out.send(call(&client, frontend).await);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(v: &str) -> Outcome {
        Outcome::Served {
            version: v.into(),
            rating_ok: true,
        }
    }

    #[test]
    fn tally_counts_the_window_only() {
        let mut t = Tally::new(10);
        for _ in 0..10 {
            t.record(served("v2"));
        }
        for _ in 0..9 {
            t.record(served("v1"));
        }
        t.record(Outcome::Failed("boom".into()));
        let line = t.line();
        assert!(
            line.starts_with("catalog v1  90.0% v2   0.0%  errors 1"),
            "{line}"
        );
        assert!(line.contains("ratings 100%"), "{line}");
        assert!(
            line.contains("(last 10 requests; 20 total, 1 failed)"),
            "{line}"
        );
        assert_eq!(t.take_last_error().as_deref(), Some("boom"));
        assert_eq!(t.take_last_error(), None);
    }

    #[test]
    fn outcomes_read_frontend_answers_and_errors() {
        let ok = br#"{"catalog":{"version":"v2","product":"p","caller":"spiffe://x","rating":{"stars":4.1,"served_by":"ratings","caller":"spiffe://y"}}}"#;
        assert_eq!(outcome_of(http::StatusCode::OK, ok), served("v2"));
        let unrated = br#"{"catalog":{"version":"v1","product":"p","caller":"","rating":null,"rating_error":"Unavailable: x"}}"#;
        assert_eq!(
            outcome_of(http::StatusCode::OK, unrated),
            Outcome::Served {
                version: "v1".into(),
                rating_ok: false
            }
        );
        let bad = br#"{"error":"catalog answered 503 Service Unavailable: no endpoints"}"#;
        match outcome_of(http::StatusCode::BAD_GATEWAY, bad) {
            Outcome::Failed(e) => assert!(e.contains("no endpoints"), "{e}"),
            o => panic!("{o:?}"),
        }
    }
}
