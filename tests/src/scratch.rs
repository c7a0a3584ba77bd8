//! One Postgres scratch database for tests and benchmarks: created next to the server's own
//! database, dropped (with its connections, `FORCE`) when the value drops, so an error, a
//! panic or Ctrl-C never leaves one behind.

use anyhow::Context;
use sqlx::Connection;

/// What to do when Postgres is not there.
pub const PG_HINT: &str = "Postgres is required: `apt-get install -y postgresql && \
     pg_ctlcluster 15 main start` (or point QUIVER_TEST_DATABASE_URL at a server where the \
     user may CREATE DATABASE)";

/// The server tests create their databases on: `QUIVER_TEST_DATABASE_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn server_url() -> String {
    std::env::var("QUIVER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A Postgres database made for one run (a benchmark, a test) next to the one `server_url` names (which must let
/// its user CREATE DATABASE), dropped with its connections when this value drops.
pub struct ScratchDatabase {
    /// The URL of the new database.
    pub url: String,
    name: String,
    server_url: String,
}

impl ScratchDatabase {
    pub async fn create(server_url: &str) -> anyhow::Result<Self> {
        // Unique across processes (pid) and across tests running at once in one (random).
        let name = format!(
            "quiver_scratch_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let url = sibling_database_url(server_url, &name)?;
        let mut conn = sqlx::PgConnection::connect(server_url)
            .await
            .with_context(|| format!("connecting to Postgres at {}", redact(server_url)))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let _ = conn.close().await;
        Ok(Self {
            url,
            name,
            server_url: server_url.to_string(),
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        // Drop may run inside the benchmark's runtime, which must not block on itself: a
        // short-lived runtime on its own thread does the DROP.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&server_url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "could not drop scratch database {}; drop it by hand",
                self.name
            );
        }
    }
}

/// `postgres://u@h:5432/postgres?x=y` with the database part replaced by `name`.
fn sibling_database_url(server_url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server_url, None),
    };
    let authority = base
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("--database-url {}: not a URL", redact(server_url)))?;
    let head = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{head}/{name}?{q}"),
        None => format!("{head}/{name}"),
    })
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// The key-encryption key every test control plane on Postgres uses (replicas of one store
/// must share it): written to `dir/ca-kek` (mode 0600), its path returned for
/// `--ca-key-encryption-key`.
pub fn ca_key_encryption_key(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("ca-kek");
    std::fs::create_dir_all(dir).expect("key-encryption key dir");
    std::fs::write(
        &path,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .expect("write the key-encryption key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod 600 the key-encryption key");
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_database_sits_next_to_the_named_one() {
        let url = |s| sibling_database_url(s, "scratch").unwrap();
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/scratch"
        );
        assert_eq!(
            url("postgres://u:pw@db/quiver?sslmode=disable"),
            "postgres://u:pw@db/scratch?sslmode=disable"
        );
        assert_eq!(url("postgres://db:5432"), "postgres://db:5432/scratch");
        assert!(sibling_database_url("nonsense", "x").is_err());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("postgres://u:secret@db/q"), "postgres://***@db/q");
        assert_eq!(redact("postgres://db/q"), "postgres://db/q");
    }
}
