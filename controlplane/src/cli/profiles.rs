//! `quiverctl config ...` and named contexts: a YAML file (`$QUIVERCTL_CONFIG`, else
//! `$XDG_CONFIG_HOME/quiver/config.yaml`, else `~/.config/quiver/config.yaml`) holding
//! contexts (server URL, token or token file, CA bundle) and the current one. What a command
//! connects with is resolved in one place ([`resolve`]): a flag or environment variable wins
//! over the context (`--context NAME`, else `QUIVER_CONTEXT`, else the file's current
//! context), which wins over the defaults. The file holds tokens: it is written 0600.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::Connection;

/// Where quiverctl talks to when nothing says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The config file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// The context used when neither --context nor QUIVER_CONTEXT names one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub current_context: String,
    pub contexts: Vec<NamedContext>,
}

/// One control plane and how to authenticate to it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedContext {
    pub name: String,
    pub server: String,
    /// The API token itself, or a file holding it (read at each use; whitespace trimmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify an https:// server with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// What a command connects with, after flags, environment and the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub server: String,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// The context it came from, if any.
    pub context: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Make NAME the current context.
    #[command(name = "use-context")]
    UseContext { name: String },
    /// List the contexts (`*` marks the current one; tokens are never printed).
    #[command(name = "get-contexts")]
    GetContexts {
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "wide", "json", "yaml"])]
        output: String,
    },
    /// Print the current context's name.
    #[command(name = "current-context")]
    CurrentContext,
    /// Create or update context NAME (only the fields given change).
    #[command(name = "set-context")]
    SetContext {
        name: String,
        /// Control-plane API URL.
        #[arg(long)]
        server: Option<String>,
        /// API token (stored in the file).
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// A file holding the API token (read at each use).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// CA certificate (PEM) for an https:// server.
        #[arg(long, visible_alias = "ca-cert")]
        ca_file: Option<PathBuf>,
        /// Also make it the current context.
        #[arg(long)]
        current: bool,
    },
    /// Remove context NAME.
    #[command(name = "delete-context")]
    DeleteContext { name: String },
}

/// The config file's path.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("QUIVERCTL_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p).join("quiver").join("config.yaml"));
    }
    let home = std::env::var_os("HOME")
        .filter(|p| !p.is_empty())
        .context("no QUIVERCTL_CONFIG, XDG_CONFIG_HOME or HOME to find the config file in")?;
    Ok(PathBuf::from(home)
        .join(".config")
        .join("quiver")
        .join("config.yaml"))
}

/// Read the file at `path`; a missing file is an empty config.
pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    let file: ConfigFile = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: not a quiverctl config", path.display()))?;
    file.check()
        .with_context(|| format!("{}: not a quiverctl config", path.display()))?;
    Ok(file)
}

/// Write the file (mode 0600: it may hold tokens), through a temporary file in the same
/// directory so a crash never leaves half a file.
pub fn save(path: &Path, file: &ConfigFile) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_yaml::to_string(file)?;
    let tmp = path.with_extension("yaml.tmp");
    write_private(&tmp, text.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through open(): set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

impl ConfigFile {
    /// Every problem in one pass, naming the field.
    fn check(&self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, c) in self.contexts.iter().enumerate() {
            if c.name.trim().is_empty() {
                errors.push(format!("contexts[{i}].name: required"));
            } else if !seen.insert(c.name.as_str()) {
                errors.push(format!("contexts[{i}].name: {:?} appears twice", c.name));
            }
            if c.server.trim().is_empty() {
                errors.push(format!("contexts[{i}].server: required"));
            }
            if c.token.is_some() && c.token_file.is_some() {
                errors.push(format!(
                    "contexts[{i}]: token and tokenFile are both set; keep one"
                ));
            }
        }
        if !self.current_context.is_empty() && self.find(&self.current_context).is_none() {
            errors.push(format!(
                "currentContext: {:?} is not one of the contexts",
                self.current_context
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }

    pub fn find(&self, name: &str) -> Option<&NamedContext> {
        self.contexts.iter().find(|c| c.name == name)
    }
}

/// Resolve what to connect with: flags and environment (already in `conn`, clap read both)
/// over the named or current context over the defaults.
pub fn resolve(conn: &Connection) -> anyhow::Result<Target> {
    let cfg_path = path();
    let chosen = conn.context.clone().filter(|c| !c.is_empty());
    let file = match &cfg_path {
        Ok(p) => load(p)?,
        // No place for a config file: fine unless a context was asked for.
        Err(e) if chosen.is_some() => return Err(anyhow::anyhow!("--context: {e}")),
        Err(_) => ConfigFile::default(),
    };
    let name = chosen
        .clone()
        .or_else(|| (!file.current_context.is_empty()).then(|| file.current_context.clone()));
    let ctx = match &name {
        Some(n) => Some(file.find(n).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "--context / QUIVER_CONTEXT: no context named {n:?} in {} (see quiverctl config get-contexts)",
                cfg_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })?),
        None => None,
    };
    let server = conn
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| ctx.as_ref().map(|c| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let token = match conn.token.clone().filter(|t| !t.trim().is_empty()) {
        Some(t) => Some(t),
        None => match &ctx {
            Some(c) => match (&c.token, &c.token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(f)) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| {
                            format!("context {:?}: tokenFile {}", c.name, f.display())
                        })?
                        .trim()
                        .to_string(),
                ),
                (None, None) => None,
            },
            None => None,
        },
    };
    let ca_file = conn
        .ca_file
        .clone()
        .or_else(|| ctx.as_ref().and_then(|c| c.ca_file.clone()));
    Ok(Target {
        server,
        token,
        ca_file,
        context: ctx.map(|c| c.name),
    })
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    let path = path()?;
    let mut file = load(&path)?;
    match cmd {
        ConfigCommand::UseContext { name } => {
            if file.find(&name).is_none() {
                bail!(
                    "no context named {name:?} in {} (create it with quiverctl config set-context)",
                    path.display()
                );
            }
            file.current_context = name.clone();
            save(&path, &file)?;
            println!("switched to context {name:?}");
        }
        ConfigCommand::CurrentContext => {
            if file.current_context.is_empty() {
                bail!("no current context in {}", path.display());
            }
            println!("{}", file.current_context);
        }
        ConfigCommand::GetContexts { output } => print_contexts(&file, &output)?,
        ConfigCommand::SetContext {
            name,
            server,
            token,
            token_file,
            ca_file,
            current,
        } => {
            if name.trim().is_empty() {
                bail!("NAME: required");
            }
            let existing = file.contexts.iter().position(|c| c.name == name);
            let created = existing.is_none();
            let idx = existing.unwrap_or_else(|| {
                file.contexts.push(NamedContext {
                    name: name.clone(),
                    ..Default::default()
                });
                file.contexts.len() - 1
            });
            let ctx = &mut file.contexts[idx];
            if let Some(s) = server {
                check_server(&s)?;
                ctx.server = s;
            }
            if ctx.server.is_empty() {
                bail!("--server: required for a new context");
            }
            if let Some(t) = token {
                ctx.token = Some(t);
                ctx.token_file = None;
            }
            if let Some(f) = token_file {
                ctx.token_file = Some(absolute(&f)?);
                ctx.token = None;
            }
            if let Some(f) = ca_file {
                ctx.ca_file = Some(absolute(&f)?);
            }
            if current || file.current_context.is_empty() {
                file.current_context = name.clone();
            }
            save(&path, &file)?;
            println!(
                "context {name:?} {} in {}",
                if created { "created" } else { "updated" },
                path.display()
            );
        }
        ConfigCommand::DeleteContext { name } => {
            let before = file.contexts.len();
            file.contexts.retain(|c| c.name != name);
            if file.contexts.len() == before {
                bail!("no context named {name:?} in {}", path.display());
            }
            if file.current_context == name {
                file.current_context.clear();
            }
            save(&path, &file)?;
            println!("context {name:?} deleted");
        }
    }
    Ok(())
}

/// A relative file name is kept relative to where the command ran, not to where it is used.
fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("the current directory")?
        .join(p))
}

/// A server URL a context may hold: http:// or https://, and a URL tonic accepts.
fn check_server(server: &str) -> anyhow::Result<()> {
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        bail!("--server {server:?}: must start with http:// or https://");
    }
    tonic::transport::Endpoint::from_shared(server.to_string())
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("--server {server:?}: not a URL: {e}"))
}

fn print_contexts(file: &ConfigFile, output: &str) -> anyhow::Result<()> {
    // Tokens never leave the file through this command.
    let shown: Vec<serde_json::Value> = file
        .contexts
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "current": c.name == file.current_context,
                "server": c.server,
                "auth": auth_of(c),
                "caFile": c.ca_file.as_ref().map(|p| p.display().to_string()),
            })
        })
        .collect();
    match output {
        "json" | "yaml" => super::print_doc(&shown, output)?,
        _ => {
            let wide = output == "wide";
            let mut rows = vec![vec![
                "CURRENT".to_string(),
                "NAME".into(),
                "SERVER".into(),
                "AUTH".into(),
            ]];
            if wide {
                rows[0].push("CA-FILE".into());
            }
            for c in &file.contexts {
                let mut row = vec![
                    if c.name == file.current_context {
                        "*"
                    } else {
                        ""
                    }
                    .to_string(),
                    c.name.clone(),
                    c.server.clone(),
                    auth_of(c),
                ];
                if wide {
                    row.push(
                        c.ca_file
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "-".into()),
                    );
                }
                rows.push(row);
            }
            print!("{}", super::table::render(&rows));
        }
    }
    Ok(())
}

fn auth_of(c: &NamedContext) -> String {
    match (&c.token, &c.token_file) {
        (Some(_), _) => "token".into(),
        (None, Some(f)) => format!("tokenFile {}", f.display()),
        (None, None) => "none".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_files_naming_fields() {
        let file: ConfigFile = serde_yaml::from_str(
            "currentContext: nope\ncontexts:\n- name: a\n  server: ''\n- name: a\n  server: http://x\n  token: t\n  tokenFile: /f\n",
        )
        .unwrap();
        let err = file.check().unwrap_err().to_string();
        assert!(err.contains("contexts[0].server: required"), "{err}");
        assert!(
            err.contains("contexts[1].name: \"a\" appears twice"),
            "{err}"
        );
        assert!(err.contains("contexts[1]: token and tokenFile"), "{err}");
        assert!(err.contains("currentContext: \"nope\""), "{err}");
        let unknown = serde_yaml::from_str::<ConfigFile>("contexts: []\nservr: x\n");
        assert!(unknown.unwrap_err().to_string().contains("servr"));
    }
}
