//! Metrics exposition formats. `prometheus-client` writes OpenMetrics text; Prometheus
//! negotiates that with `Accept: application/openmetrics-text`, but older scrapers, `curl`
//! and `promtool check metrics` read the classic text format (0.0.4), where a counter's
//! HELP and TYPE name the `_total` series and there is no `# UNIT` or `# EOF`. Both
//! endpoints (`quiver-proxy` admin, `quiver-control`) answer each client in its format.

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request's `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The classic text format of an OpenMetrics text document.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE, and only TYPE says whether the name needs `_total`.
    let mut help: Option<(&str, &str)> = None;
    let flush = |out: &mut String, help: &mut Option<(&str, &str)>| {
        if let Some((name, text)) = help.take() {
            out.push_str(&format!("# HELP {name} {text}\n"));
        }
    };
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush(&mut out, &mut help);
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush(&mut out, &mut help);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush(&mut out, &mut help);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_units_and_eof_dropped() {
        let om = "# HELP quiver_requests HTTP requests.\n# TYPE quiver_requests counter\n\
                  quiver_requests_total{a=\"b\"} 3\n# HELP quiver_rtt_seconds RTT.\n\
                  # TYPE quiver_rtt_seconds histogram\n# UNIT quiver_rtt_seconds seconds\n\
                  quiver_rtt_seconds_sum 0.5\n# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP quiver_requests_total HTTP requests.\n# TYPE quiver_requests_total counter\n\
             quiver_requests_total{a=\"b\"} 3\n# HELP quiver_rtt_seconds RTT.\n\
             # TYPE quiver_rtt_seconds histogram\nquiver_rtt_seconds_sum 0.5\n# HELP up Up.\n\
             # TYPE up gauge\nup 1\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
