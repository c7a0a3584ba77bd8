//! `apply --prune -l KEY=VALUE`: the label selector, the set an apply names, and deleting the
//! labelled resources of the applied kinds that the set no longer names. Labels are
//! `metadata.labels`; the API lists whole kinds, so selection happens here, over List.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::bail;
use quiver_api::resource::{AnyResource, DEFAULT_NAMESPACE, Kind};
use quiver_api::v1;

use super::client::{self, Client, describe};

/// `-l key=value[,key=value...]`: every pair must be among an object's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(BTreeMap<String, String>);

impl Selector {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut pairs = BTreeMap::new();
        for part in text.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                bail!("-l/--selector {text:?}: {part:?} is not key=value");
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || value.contains('=') {
                bail!("-l/--selector {text:?}: {part:?} is not key=value");
            }
            if let Some(before) = pairs.insert(key.to_string(), value.to_string())
                && before != value
            {
                bail!("-l/--selector {text:?}: {key} is given two values");
            }
        }
        Ok(Self(pairs))
    }

    pub fn matches(&self, meta: Option<&v1::ObjectMeta>) -> bool {
        let labels = meta.map(|m| &m.labels);
        self.0
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&pairs.join(","))
    }
}

/// What an apply names: its kinds, and each object by kind, namespace and name.
#[derive(Debug, Default)]
pub struct AppliedSet {
    kinds: BTreeSet<Kind>,
    objects: BTreeSet<(Kind, String, String)>,
}

impl AppliedSet {
    pub fn of<'a>(docs: impl Iterator<Item = &'a AnyResource>) -> Self {
        let mut set = Self::default();
        for d in docs {
            set.kinds.insert(d.kind());
            let (ns, name) = namespace_and_name(d.metadata());
            set.objects.insert((d.kind(), ns, name));
        }
        set
    }

    fn names(&self, kind: Kind, meta: Option<&v1::ObjectMeta>) -> bool {
        let (ns, name) = namespace_and_name(meta);
        self.objects.contains(&(kind, ns, name))
    }
}

fn namespace_and_name(meta: Option<&v1::ObjectMeta>) -> (String, String) {
    let meta = meta.cloned().unwrap_or_default();
    let ns = if meta.namespace.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        meta.namespace
    };
    (ns, meta.name)
}

/// Delete (or, on a dry run, name) every object of the applied kinds, in any namespace, that
/// carries the selector's labels and is not in `applied`. Dependents go first (Canaries and
/// Routes before Services). Each delete is conditional on the version listed, so an object
/// changed in the meantime is reported, not removed.
pub async fn prune(
    c: &mut Client,
    selector: &Selector,
    applied: &AppliedSet,
    dry_run: bool,
) -> anyhow::Result<()> {
    let mut failed = 0;
    for &kind in applied.kinds.iter().rev() {
        let items = client::list(c, kind, "")
            .await
            .map_err(|s| anyhow::anyhow!("listing {kind} to prune: {}", describe(&s)))?;
        for item in items {
            let meta = item.metadata();
            if !selector.matches(meta) || applied.names(kind, meta) {
                continue;
            }
            let (ns, name) = namespace_and_name(meta);
            if dry_run {
                println!("{kind} {ns}/{name} pruned (dry run)");
                continue;
            }
            let at = meta.map_or(0, |m| m.resource_version);
            match client::delete_at(c, kind, &ns, &name, at).await {
                Ok(version) => println!("{kind} {ns}/{name} pruned (resourceVersion {version})"),
                Err(s) => {
                    failed += 1;
                    eprintln!("error: pruning {kind} {ns}/{name}: {}", describe(&s));
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} resource(s) were not pruned");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)]) -> v1::ObjectMeta {
        v1::ObjectMeta {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn selector_needs_every_pair() {
        let s = Selector::parse("app=shop, team=web").unwrap();
        assert!(s.matches(Some(&meta(&[("app", "shop"), ("team", "web"), ("x", "y")]))));
        assert!(!s.matches(Some(&meta(&[("app", "shop")]))));
        assert!(!s.matches(Some(&meta(&[("app", "shop"), ("team", "db")]))));
        assert!(!s.matches(None));
        assert_eq!(s.to_string(), "app=shop,team=web");
    }

    #[test]
    fn selector_refuses_what_is_not_key_value() {
        for bad in ["app", "=shop", "app=shop,", "a=b=c", "app=x,app=y"] {
            let err = Selector::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("-l/--selector"), "{bad}: {err}");
        }
        // An empty value is a value (a label set to "").
        assert!(Selector::parse("app=").is_ok());
    }
}
