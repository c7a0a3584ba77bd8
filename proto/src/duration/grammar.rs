//! The duration grammar (`250ms`, `30s`, `1h30m`; units ms, s, m, h, d; no bare numbers),
//! std only: the web console (`console/src/traces.rs`) compiles this same file, so a
//! duration the console's form accepts is exactly one the API accepts.

use std::time::Duration;

/// Parse `1h30m`, `250ms`, `10s`... A bare number is refused: the unit is never guessed.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?}: expected a number at {rest:?}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => return Err(format!("{s:?}: missing unit (use ms, s, m, h or d)")),
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
                ));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Format as the largest exact units, e.g. `1h30m`, `250ms`, `0s`.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_millis(1500)), "1s500ms");
        assert!(parse("10").unwrap_err().contains("missing unit"));
        assert!(parse("10y").unwrap_err().contains("unknown unit"));
        assert!(parse("-1s").unwrap_err().contains("expected a number"));
        assert!(parse("").is_err());
    }
}
