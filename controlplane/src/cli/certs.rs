//! `quiverctl certs ca|issue`: a development CA and SVIDs on disk, for static mode and tests.
//! The control plane's own CA (with join tokens and CSRs) does not go through here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use quiver_api::SpiffeId;
use quiver_api::certs::CertificateAuthority;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a self-signed mesh root CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Trust domain the CA is for (informational in the subject).
        #[arg(long, default_value = "mesh.local")]
        trust_domain: String,
        /// How long the root is valid, e.g. 8760h.
        #[arg(long, default_value = "8760h", value_parser = quiver_api::duration::parse)]
        validity: Duration,
        /// Replace an existing CA in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Issue an SVID signed by the CA in --ca: DIR/cert.pem, DIR/key.pem (0600), DIR/bundle.pem.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// The SPIFFE id to put in the certificate's URI SAN.
        #[arg(long, value_parser = parse_spiffe)]
        spiffe_id: SpiffeId,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Lifetime of the certificate, e.g. 24h.
        #[arg(long, default_value = "24h", value_parser = quiver_api::duration::parse)]
        ttl: Duration,
    },
}

fn parse_spiffe(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(s).map_err(|e| e.to_string())
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Ca {
            out,
            trust_domain,
            validity,
            force,
        } => {
            SpiffeId::parse(&format!("spiffe://{trust_domain}"))
                .with_context(|| format!("--trust-domain {trust_domain:?}"))?;
            if out.join("ca.key").exists() && !force {
                bail!(
                    "{} already holds a CA; pass --force to replace it",
                    out.display()
                );
            }
            let ca = CertificateAuthority::generate(&trust_domain, validity)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            write(&out.join("ca.pem"), ca.cert_pem(), false)?;
            write(&out.join("ca.key"), ca.key_pem(), true)?;
            println!("wrote {0}/ca.pem and {0}/ca.key", out.display());
        }
        CertsCommand::Issue {
            ca,
            spiffe_id,
            out,
            ttl,
        } => {
            let read = |name: &str| {
                let p = ca.join(name);
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
            };
            let (cert, key) = (read("ca.pem")?, read("ca.key")?);
            let authority = CertificateAuthority::from_pem(&cert, &key)
                .with_context(|| format!("loading the CA in {}", ca.display()))?;
            let leaf = authority.issue(&spiffe_id, ttl)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            write(&out.join("cert.pem"), &leaf.chain_pem, false)?;
            write(&out.join("key.pem"), &leaf.key_pem, true)?;
            write(&out.join("bundle.pem"), &cert, false)?;
            println!(
                "wrote {0}/cert.pem, {0}/key.pem and {0}/bundle.pem for {spiffe_id}",
                out.display()
            );
        }
    }
    Ok(())
}

/// Write a file; private keys get mode 0600 from creation, so they are never world-readable.
fn write(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
