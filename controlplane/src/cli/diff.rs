//! `quiverctl diff -f FILE|DIR`: what an apply would change, per field. The server answers
//! each document with a dry run (`DryRunApply`: the object as it would be stored and the
//! live one), so the comparison is between the canonical forms the store holds, never the
//! text of the file. Exit status as `kubectl diff`: 0 no differences, 1 differences, 2 an
//! error (as [`super::Exit`]).

use std::path::PathBuf;

use anyhow::bail;
use quiver_api::document;
use quiver_api::resource::AnyResource;
use quiver_api::v1;
use serde_yaml::Value;

use super::client::{self, describe};
use super::resources::read_documents;
use super::{Connection, Exit};

pub async fn run(conn: &Connection, files: &[PathBuf]) -> anyhow::Result<()> {
    match differences(conn, files).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(Exit(1).into()),
        Err(e) => {
            eprintln!("error: {e:#}");
            Err(Exit(2).into())
        }
    }
}

/// Print every difference; whether there was any. Documents the server refuses are reported
/// as apply reports them and make the whole diff an error.
async fn differences(conn: &Connection, files: &[PathBuf]) -> anyhow::Result<bool> {
    let mut docs = read_documents(files)?;
    if docs.is_empty() {
        bail!("no documents to compare");
    }
    docs.sort_by_key(|(_, d)| d.kind());
    let pending = super::resources::pending_services(&docs);
    let mut c = client::connect(conn).await?;
    let (mut differ, mut failed) = (false, 0);
    for (source, doc) in docs {
        let what = format!("{} {}", doc.kind(), doc.key());
        match client::dry_run(&mut c, doc, &pending).await {
            Ok((v1::ApplyOutcome::Unchanged, _, _)) => {}
            Ok((_, desired, None)) => {
                differ = true;
                println!("{what} would be created:");
                for line in document::to_yaml(&[desired])?.lines() {
                    println!("  + {line}");
                }
            }
            Ok((_, desired, Some(live))) => {
                differ = true;
                println!("{what} would be configured:");
                let changes = field_changes(&comparable(&live)?, &comparable(&desired)?);
                if changes.is_empty() {
                    // Not expected (different stored bytes render differently), but never
                    // claim a change without saying so.
                    println!("  (the stored encoding differs; no field renders differently)");
                }
                for line in changes {
                    println!("  {line}");
                }
            }
            Err(status) => {
                failed += 1;
                eprintln!("error: {what} (from {source}): {}", describe(&status));
            }
        }
    }
    if failed > 0 {
        bail!("{failed} document(s) could not be compared");
    }
    Ok(differ)
}

/// The document without the bookkeeping the server keeps (version, timestamps).
fn comparable(r: &AnyResource) -> anyhow::Result<Value> {
    let mut doc = document::to_document(r)?;
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_mapping_mut) {
        for key in ["resourceVersion", "createdAt", "updatedAt"] {
            meta.remove(key);
        }
    }
    Ok(doc)
}

/// Every leaf that differs between two documents, as `path: old -> new`
/// (`spec.rules[0].backends[1].weight: 10 -> 20`); a field only on one side shows
/// `(absent)` on the other. Lists are compared by position.
pub fn field_changes(live: &Value, desired: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", Some(live), Some(desired), &mut out);
    out
}

fn walk(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    match (old, new) {
        (Some(Value::Mapping(a)), Some(Value::Mapping(b))) => {
            let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
            for key in keys {
                walk(&join(path, key), a.get(key), b.get(key), out);
            }
        }
        (Some(Value::Sequence(a)), Some(Value::Sequence(b))) => {
            for i in 0..a.len().max(b.len()) {
                walk(&format!("{path}[{i}]"), a.get(i), b.get(i), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {} -> {}", show(a), show(b))),
    }
}

/// `path.key`, or `path["key"]` for a key that is not a plain name (label keys such as
/// `app.kubernetes.io/name`), as the API writes field paths.
fn join(path: &str, key: &Value) -> String {
    let key = match key {
        Value::String(s) => s.clone(),
        other => show(Some(other)),
    };
    let plain = !key.is_empty()
        && !key
            .chars()
            .any(|c| matches!(c, '.' | '[' | ']' | '"' | '/') || c.is_whitespace());
    if !plain {
        format!("{path}[{key:?}]")
    } else if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) if s.is_empty() => "\"\"".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) => "null".into(),
        // Lists and mappings on one line, as JSON.
        Some(other) => serde_json::to_string(other).unwrap_or_else(|_| "?".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn a_changed_weight_is_named_by_its_path() {
        let live = yaml(
            "spec: {service: r, rules: [{name: a, backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]}]}",
        );
        let desired = yaml(
            "spec: {service: r, rules: [{name: a, backends: [{subset: v1, weight: 80}, {subset: v2, weight: 20}]}]}",
        );
        assert_eq!(
            field_changes(&live, &desired),
            vec![
                "spec.rules[0].backends[0].weight: 90 -> 80",
                "spec.rules[0].backends[1].weight: 10 -> 20",
            ]
        );
        assert!(field_changes(&live, &live).is_empty());
    }

    #[test]
    fn fields_and_list_items_on_one_side_only() {
        let live = yaml(
            "metadata: {labels: {app.kubernetes.io/name: x}}\nspec: {rules: [{name: a}], timeout: 2s}",
        );
        let desired = yaml("metadata: {}\nspec: {rules: [{name: a}, {name: b}]}");
        assert_eq!(
            field_changes(&live, &desired),
            vec![
                "metadata.labels: {\"app.kubernetes.io/name\":\"x\"} -> (absent)",
                "spec.rules[1]: (absent) -> {\"name\":\"b\"}",
                "spec.timeout: 2s -> (absent)",
            ]
        );
        let live = yaml("metadata: {labels: {app.kubernetes.io/name: x}}");
        let desired = yaml("metadata: {labels: {app.kubernetes.io/name: y}}");
        assert_eq!(
            field_changes(&live, &desired),
            vec!["metadata.labels[\"app.kubernetes.io/name\"]: x -> y"]
        );
    }
}
