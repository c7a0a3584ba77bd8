//! Plain aligned tables for quiverctl's read commands (the first row is the header).

/// Columns padded to their widest cell, three spaces apart, trailing spaces trimmed.
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_columns() {
        let rows = vec![
            vec!["NAME".to_string(), "STATE".into()],
            vec!["reviews-1".into(), "SYNCED".into()],
        ];
        assert_eq!(
            super::render(&rows),
            "NAME        STATE\nreviews-1   SYNCED\n"
        );
    }
}
