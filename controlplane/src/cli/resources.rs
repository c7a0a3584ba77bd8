//! `quiverctl apply | get | delete` (apply also with --dry-run and --prune, delete also
//! with -f).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use quiver_api::document;
use quiver_api::resource::{AnyResource, Kind};
use quiver_api::v1;
use quiver_policy::gateway::GatewayRoute;

use super::Connection;
use super::client::{self, describe};
use super::prune::{self, Selector};

/// Read every document from the -f arguments, in order (directories: their YAML/JSON files
/// sorted by name).
pub(super) fn read_documents(files: &[PathBuf]) -> anyhow::Result<Vec<(String, AnyResource)>> {
    let mut sources: Vec<(String, String)> = Vec::new();
    for f in files {
        if f.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            sources.push(("<stdin>".into(), text));
        } else if f.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(f)
                .with_context(|| format!("reading directory {}", f.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                bail!("{}: no .yaml, .yml or .json files", f.display());
            }
            for p in entries {
                sources.push((p.display().to_string(), read(&p)?));
            }
        } else {
            sources.push((f.display().to_string(), read(f)?));
        }
    }
    let mut docs: Vec<(String, AnyResource)> = Vec::new();
    for (name, text) in sources {
        let parsed = document::parse_documents(&text).with_context(|| name.clone())?;
        docs.extend(parsed.into_iter().map(|d| (name.clone(), d)));
    }
    // The same object twice in one apply is almost always a copy-paste slip: the second would
    // silently win. Refuse it, naming both places.
    let mut seen = std::collections::BTreeMap::new();
    for (source, doc) in &docs {
        if let Some(first) = seen.insert((doc.kind(), doc.key()), source) {
            bail!(
                "{} {} appears twice (in {first} and in {source}); nothing was applied",
                doc.kind(),
                doc.key()
            );
        }
    }
    Ok(docs)
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// How `apply` runs beyond its files.
#[derive(Debug, Default)]
pub struct ApplyOptions {
    /// Ask the server what would happen (`DryRunApply`); nothing is stored.
    pub dry_run: bool,
    /// Only documents carrying these labels are applied; with `prune`, the labelled set.
    pub selector: Option<Selector>,
    /// Delete labelled resources of the applied kinds that the documents do not name.
    pub prune: bool,
}

/// `quiverctl apply -f ...`: every document applied, in kind order.
pub async fn apply(conn: &Connection, files: &[PathBuf]) -> anyhow::Result<()> {
    apply_with(conn, files, &ApplyOptions::default()).await
}

/// `apply` with `--dry-run`, `-l` and `--prune`.
pub async fn apply_with(
    conn: &Connection,
    files: &[PathBuf],
    opts: &ApplyOptions,
) -> anyhow::Result<()> {
    // Every document is parsed before anything is sent: a typo in the last file applies nothing.
    let mut docs = read_documents(files)?;
    if docs.is_empty() {
        bail!("no documents to apply");
    }
    if let Some(selector) = &opts.selector {
        // As kubectl: -l narrows the documents to those it selects.
        docs.retain(|(source, d)| {
            let keep = selector.matches(d.metadata());
            if !keep {
                eprintln!(
                    "{} {} (from {source}) skipped: it does not carry {selector}",
                    d.kind(),
                    d.key()
                );
            }
            keep
        });
    }
    // Referenced kinds first (Services before the Routes that name them); stable otherwise.
    docs.sort_by_key(|(_, d)| d.kind());
    let applied = prune::AppliedSet::of(docs.iter().map(|(_, d)| d));
    // A dry run checks each document as the real apply of the whole set would: the set's
    // Services stand in for the stored ones in reference checks.
    let pending = pending_services(&docs);
    let mut c = client::connect(conn).await?;
    let mut failed = 0;
    for (source, doc) in docs {
        let what = format!("{} {}", doc.kind(), doc.key());
        let result = if opts.dry_run {
            client::dry_run(&mut c, doc, &pending)
                .await
                .map(|(outcome, _, _)| format!("{} (dry run)", verb(outcome)))
        } else {
            client::apply(&mut c, doc).await.map(|(stored, outcome)| {
                let version = stored.metadata().map(|m| m.resource_version).unwrap_or(0);
                format!("{} (resourceVersion {version})", verb(outcome))
            })
        };
        match result {
            Ok(said) => println!("{what} {said}"),
            Err(status) => {
                failed += 1;
                eprintln!("error: {what} (from {source}): {}", describe(&status));
            }
        }
    }
    if failed > 0 {
        if opts.prune {
            bail!("{failed} document(s) were not applied; nothing was pruned");
        }
        bail!("{failed} document(s) were not applied");
    }
    if opts.prune
        && let Some(selector) = &opts.selector
    {
        prune::prune(&mut c, selector, &applied, opts.dry_run).await?;
    }
    Ok(())
}

fn verb(outcome: v1::ApplyOutcome) -> &'static str {
    match outcome {
        v1::ApplyOutcome::Created => "created",
        v1::ApplyOutcome::Updated => "configured",
        v1::ApplyOutcome::Unchanged => "unchanged",
        v1::ApplyOutcome::Unspecified => "applied",
    }
}

pub(super) fn parse_kind(kind: &str) -> anyhow::Result<Kind> {
    Kind::from_cli(kind).with_context(|| {
        format!(
            "unknown kind {kind:?} (expected service, route, canary, authorizationpolicy, meshconfig, workload, httproute or grpcroute)"
        )
    })
}

pub async fn get(
    conn: &Connection,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    output: &str,
) -> anyhow::Result<()> {
    let kind = parse_kind(kind)?;
    let mut c = client::connect(conn).await?;
    let items = match name {
        Some(name) => {
            let ns = namespace.unwrap_or("default");
            vec![
                client::get(&mut c, kind, ns, name)
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?,
            ]
        }
        None => client::list(&mut c, kind, namespace.unwrap_or(""))
            .await
            .map_err(|s| anyhow::anyhow!("{}", describe(&s)))?,
    };
    let text = match output {
        "yaml" => document::to_yaml(&items)?,
        "json" => document::to_json(&items)? + "\n",
        "wide" => super::wide::render(kind, &items),
        _ => table(kind, &items),
    };
    print!("{text}");
    Ok(())
}

pub async fn delete(
    conn: &Connection,
    kind: &str,
    namespace: &str,
    name: &str,
    ignore_not_found: bool,
) -> anyhow::Result<()> {
    let kind = parse_kind(kind)?;
    let mut c = client::connect(conn).await?;
    match client::delete(&mut c, kind, namespace, name).await {
        Ok(version) => {
            println!("{kind} {namespace}/{name} deleted (resourceVersion {version})");
        }
        Err(s) if ignore_not_found && client::is_not_found(&s) => {}
        Err(s) => bail!("{}", describe(&s)),
    }
    Ok(())
}

/// `delete -f`: every resource the documents name, dependents first (Canaries and Routes
/// before the Services they name). One that is not there is an error (reported, the rest
/// still deleted) unless `ignore_not_found`.
pub async fn delete_files(
    conn: &Connection,
    files: &[PathBuf],
    ignore_not_found: bool,
) -> anyhow::Result<()> {
    let mut docs = read_documents(files)?;
    if docs.is_empty() {
        bail!("no documents name anything to delete");
    }
    docs.sort_by_key(|(_, d)| std::cmp::Reverse(d.kind()));
    let mut c = client::connect(conn).await?;
    let mut failed = 0;
    for (source, doc) in docs {
        let kind = doc.kind();
        let meta = doc.metadata().cloned().unwrap_or_default();
        let ns = if meta.namespace.is_empty() {
            quiver_api::resource::DEFAULT_NAMESPACE
        } else {
            meta.namespace.as_str()
        };
        match client::delete(&mut c, kind, ns, &meta.name).await {
            Ok(version) => println!(
                "{kind} {ns}/{} deleted (resourceVersion {version})",
                meta.name
            ),
            Err(s) if ignore_not_found && client::is_not_found(&s) => {}
            Err(s) => {
                failed += 1;
                eprintln!(
                    "error: {kind} {ns}/{} (from {source}): {}",
                    meta.name,
                    describe(&s)
                );
            }
        }
    }
    if failed > 0 {
        bail!("{failed} resource(s) were not deleted");
    }
    Ok(())
}

/// The kind-specific columns of the table (after NAMESPACE NAME VERSION).
pub(super) fn column_names(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Service => &["PORTS", "SUBSETS"],
        Kind::Route => &["SERVICE", "RULES"],
        Kind::Canary => &["SERVICE", "PHASE", "WEIGHT"],
        Kind::AuthorizationPolicy => &["SERVICE", "ALLOW", "DENY"],
        Kind::MeshConfig => &["DEFAULT-POLICY", "CROSS-NAMESPACE"],
        Kind::Workload => &["SERVICE", "ADDRESS", "READY"],
        Kind::HttpRoute | Kind::GrpcRoute => &["PARENTS", "RULES"],
    }
}

/// A plain aligned table: NAMESPACE NAME VERSION and a few kind-specific columns.
fn table(kind: Kind, items: &[AnyResource]) -> String {
    let extra = column_names(kind);
    let mut rows = vec![
        ["NAMESPACE", "NAME", "VERSION"]
            .iter()
            .chain(extra)
            .map(std::string::ToString::to_string)
            .collect::<Vec<_>>(),
    ];
    for item in items {
        let meta = item.metadata().cloned().unwrap_or_default();
        let mut row = vec![meta.namespace, meta.name, meta.resource_version.to_string()];
        row.extend(columns(item));
        rows.push(row);
    }
    if rows.len() == 1 {
        if kind == Kind::MeshConfig {
            // The settings in effect are never a mystery: say what the defaults are.
            let mesh = effective_mesh(&v1::MeshConfigSpec::default());
            return format!(
                "No MeshConfig resources found: the defaults apply (defaultPolicy {}, \
                 crossNamespacePolicy {}).\n",
                mesh[0], mesh[1]
            );
        }
        return format!("No {kind} resources found.\n");
    }
    super::table::render(&rows)
}

pub(super) fn columns(item: &AnyResource) -> Vec<String> {
    match item {
        AnyResource::Service(s) => {
            let spec = s.spec.clone().unwrap_or_default();
            vec![
                spec.ports
                    .iter()
                    .map(|p| format!("{}/{}", p.port, p.protocol))
                    .collect::<Vec<_>>()
                    .join(","),
                spec.subsets
                    .iter()
                    .map(|s| s.name.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        }
        AnyResource::Route(r) => {
            let spec = r.spec.clone().unwrap_or_default();
            vec![spec.service, spec.rules.len().to_string()]
        }
        AnyResource::Canary(c) => {
            let spec = c.spec.clone().unwrap_or_default();
            let status = c.status.clone().unwrap_or_default();
            vec![
                spec.service,
                if status.phase.is_empty() {
                    "Pending".into()
                } else {
                    status.phase
                },
                format!("{}%", status.canary_weight),
            ]
        }
        AnyResource::AuthorizationPolicy(p) => {
            let spec = p.spec.clone().unwrap_or_default();
            vec![
                spec.service,
                spec.allow.len().to_string(),
                spec.deny.len().to_string(),
            ]
        }
        AnyResource::MeshConfig(m) => effective_mesh(&m.spec.clone().unwrap_or_default()),
        AnyResource::Workload(w) => {
            let spec = w.spec.clone().unwrap_or_default();
            let ready = w.status.as_ref().is_some_and(|s| s.ready);
            vec![spec.service, spec.address, ready.to_string()]
        }
        AnyResource::HttpRoute(r) => vec![
            GatewayRoute::Http(r).parents().join(","),
            r.spec.as_ref().map_or(0, |s| s.rules.len()).to_string(),
        ],
        AnyResource::GrpcRoute(r) => vec![
            GatewayRoute::Grpc(r).parents().join(","),
            r.spec.as_ref().map_or(0, |s| s.rules.len()).to_string(),
        ],
    }
}

/// The authorization settings a MeshConfig spec puts in effect (defaults filled in):
/// `[defaultPolicy, crossNamespacePolicy]`.
fn effective_mesh(spec: &v1::MeshConfigSpec) -> Vec<String> {
    let mesh =
        quiver_policy::mesh::Mesh::compile(spec, "spec", &mut Vec::new()).unwrap_or_default();
    vec![
        mesh.default_policy.as_str().into(),
        mesh.cross_namespace.as_str().into(),
    ]
}

/// The Services among documents about to be applied: a dry run checks references against
/// them as the real apply of the whole set would (they stand in for the stored ones).
pub(super) fn pending_services<S>(docs: &[(S, AnyResource)]) -> Vec<v1::Service> {
    docs.iter()
        .filter_map(|(_, d)| match d {
            AnyResource::Service(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}
