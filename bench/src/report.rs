//! One result row per (scenario, path), printed as a table line or a JSON line.

use serde::Serialize;

/// One measured row. The JSON keys are the issue's: `scenario`, `path`, `rps`, `p50_ms`,
/// `p99_ms`, `mib_s`, `proxy_rss_mib`, `proxy_cpu_us_per_req`; `requests`, `errors` and
/// `error_samples` are extra.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub path: &'static str,
    pub rps: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mib_s: Option<f64>,
    pub proxy_rss_mib: Option<f64>,
    pub proxy_cpu_us_per_req: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Free text for the table (added latency vs direct, bulk CPU); not in the JSON.
    #[serde(skip)]
    pub note: String,
}

impl Row {
    pub fn new(scenario: &'static str, path: &'static str) -> Self {
        Self {
            scenario,
            path,
            rps: None,
            p50_ms: None,
            p99_ms: None,
            mib_s: None,
            proxy_rss_mib: None,
            proxy_cpu_us_per_req: None,
            requests: 0,
            errors: 0,
            error_samples: Vec::new(),
            note: String::new(),
        }
    }

    pub fn failed(&self) -> bool {
        self.errors > 0
    }

    pub fn json(&self) -> String {
        // Serializing plain numbers, strings and options cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub const TABLE_HEADER: &str =
    "scenario  path       req/s    p50 ms    p99 ms     MiB/s  RSS MiB  CPU us/req  errors  notes";

/// One table line (fixed-width columns; `-` for what does not apply).
pub fn table_line(r: &Row) -> String {
    let num = |v: Option<f64>, prec: usize| match v {
        Some(v) => format!("{v:.prec$}"),
        None => "-".to_string(),
    };
    let errors = if r.failed() {
        format!("{} !!", r.errors)
    } else {
        "0".to_string()
    };
    let mut notes = r.note.clone();
    if !r.error_samples.is_empty() {
        if !notes.is_empty() {
            notes.push_str("; ");
        }
        notes.push_str(&format!("errors: {}", r.error_samples.join(" | ")));
    }
    format!(
        "{:<9} {:<6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>11} {:>7}  {}",
        r.scenario,
        r.path,
        num(r.rps, 0),
        num(r.p50_ms, 3),
        num(r.p99_ms, 3),
        num(r.mib_s, 0),
        num(r.proxy_rss_mib, 1),
        num(r.proxy_cpu_us_per_req, 1),
        errors,
        notes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_issue_keys_with_nulls() {
        let mut r = Row::new("bulk", "mesh");
        r.mib_s = Some(612.5);
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        for k in [
            "scenario",
            "path",
            "rps",
            "p50_ms",
            "p99_ms",
            "mib_s",
            "proxy_rss_mib",
            "proxy_cpu_us_per_req",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["mib_s"], 612.5);
        assert!(v["rps"].is_null());
        assert!(v.get("note").is_none());
    }

    #[test]
    fn failed_rows_are_flagged() {
        let mut r = Row::new("h1", "mesh");
        r.errors = 2;
        r.error_samples = vec!["status 503".into()];
        let line = table_line(&r);
        assert!(line.contains("2 !!"), "{line}");
        assert!(line.contains("status 503"), "{line}");
    }
}
