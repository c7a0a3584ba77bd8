//! The mesh certificate authority: created once per mesh (or loaded from an operator's files),
//! kept in the store so that every replica signs with the same key, and turned into SVIDs for
//! proxies that redeem a join token.
//!
//! A generated CA is two certificates: a root (10 years) that is the trust bundle and signs
//! only intermediates, and an online intermediate (one year, replaced when less than 90 days
//! are left, at start or by the periodic [`keep_refreshed`] task, exactly once across
//! replicas) that signs SVIDs; a leaf's chain is leaf -> intermediate, and peers trust the
//! root alone. Both private keys are stored sealed with AES-256-GCM under the
//! key-encryption key ([`KeyEncryptionKey`], `--ca-key-encryption-key`), never in clear; a
//! store from before this (one plaintext CA) is migrated at start: that CA becomes the root,
//! so every certificate it issued stays valid, and the plaintext row is deleted.
//!
//! The root can be taken offline: [`export_root`] (`quiver-control ca export-root --out DIR
//! --remove-key`) writes its certificate and key to files and deletes the sealed key from the
//! store, keeping the certificate (the trust anchor). The control plane then signs with the
//! intermediate it has but cannot renew it or rotate the root, and says so at error level; it
//! gets the root back when started with the exported files as `--ca-cert`/`--ca-key` (a
//! certificate equal to the stored root's is the mesh root given back, not an operator CA),
//! holding the key in memory only.
//!
//! The SPIFFE id of an SVID comes from the join token's scope, never from the CSR.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quiver_api::SpiffeId;
use quiver_api::certs::{CertError, CertificateAuthority, IssuedCert};
use tokio::sync::watch;

use crate::store::{CaRole, SealedCa, Store, StoreError};

mod export;
mod kek;

pub use export::{ExportedRoot, ROOT_CERT_FILE, ROOT_KEY_FILE, export_root};
use kek::to_hex;
pub use kek::{GENERATED_KEK_FILE, KeyEncryptionKey};

/// Validity of a generated mesh root.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of the online intermediate that signs SVIDs.
pub const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// An intermediate with less than this left is replaced (leaves live 30 days at most, so none
/// is ever cut short by its intermediate).
const INTERMEDIATE_RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long a generated intermediate lives and how long before its end it is replaced. The
/// defaults are [`INTERMEDIATE_VALIDITY`] and 90 days; tests shorten both so that a renewal
/// happens in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntermediatePolicy {
    pub validity: Duration,
    pub renew_before: Duration,
}

impl Default for IntermediatePolicy {
    fn default() -> Self {
        Self {
            validity: INTERMEDIATE_VALIDITY,
            renew_before: INTERMEDIATE_RENEW_BEFORE,
        }
    }
}

impl IntermediatePolicy {
    /// Whether an intermediate ending at `not_after` is due for replacement now.
    fn due(&self, not_after: SystemTime) -> bool {
        not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            < self.renew_before
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("certificate: {0}")]
    Cert(#[from] CertError),
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: the CA key is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyMode { path: String, mode: u32 },
    #[error("--ca-cert and --ca-key go together")]
    HalfConfigured,
    #[error("trust domain {0:?}: {1}")]
    TrustDomain(String, quiver_api::spiffe::SpiffeIdError),
    #[error(
        "--ca-key-encryption-key: required with --database-url, so that every replica opens the \
         same sealed CA keys (create one with `openssl rand -hex 32 > FILE; chmod 600 FILE` and \
         give every replica the same file)"
    )]
    KekRequired,
    #[error(
        "--ca-key-encryption-key {path}: {reason} (the file holds 32 random bytes as 64 hex \
         characters, e.g. from `openssl rand -hex 32`)"
    )]
    BadKek { path: String, reason: String },
    #[error(
        "the {role} CA key in the store does not open with this key-encryption key \
         (--ca-key-encryption-key): every replica must use the key the store was sealed with"
    )]
    Unseal { role: &'static str },
    #[error(
        "the mesh CA is the operator's (--ca-cert/--ca-key): rotate it by giving the control \
         plane a new CA, not with `quiverctl ca rotate`"
    )]
    OperatorCa,
    #[error("a root rotation is in progress: retire the old root first (`quiverctl ca retire`)")]
    RotationInProgress,
    #[error("the store holds no mesh root")]
    Missing,
    #[error(
        "the mesh root's private key is offline (taken out of the store by `quiver-control ca \
         export-root --remove-key`): the intermediate (valid until {intermediate_not_after}) \
         cannot be renewed and the root cannot be rotated; restart the control plane with the \
         exported root given back: --ca-cert DIR/{ROOT_CERT_FILE} --ca-key DIR/{ROOT_KEY_FILE}"
    )]
    RootOffline { intermediate_not_after: String },
    #[error("{path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} exists: export-root never overwrites a file (move it away or choose another --out)"
    )]
    Exists { path: String },
    #[error("{cert}: the key in {key} is not this certificate's key")]
    KeyMismatch { cert: String, key: String },
}

/// The mesh CA and its trust bundle. Cheap to read from many tasks: the signing intermediate
/// and the bundle are one [`CaState`] behind a `watch` channel, replaced whole when the stored
/// rows change (a rotation here or on another replica, [`MeshCa::refresh`]).
pub struct MeshCa {
    trust_domain: String,
    /// The key that opens the stored keys; None for an operator's CA (`--ca-cert`), which is
    /// neither stored nor rotated here.
    kek: Option<KeyEncryptionKey>,
    policy: IntermediatePolicy,
    /// The exported root given back as `--ca-cert`/`--ca-key` while its key is offline in the
    /// store: it renews the intermediate, from memory only.
    given_root: Option<CertificateAuthority>,
    state: watch::Sender<Arc<CaState>>,
}

/// The CA at one instant: what signs, and what peers must trust.
pub struct CaState {
    /// What signs SVIDs: the intermediate (or the operator's CA).
    authority: CertificateAuthority,
    /// The current root (PEM): the one the intermediate chains to.
    root_pem: String,
    /// Roots still trusted after a rotation until `quiverctl ca retire` (PEM, oldest first).
    retiring: Vec<String>,
    /// The current root, then the retiring ones.
    bundle_pem: String,
    /// The root's private key is neither in the store nor given back: nothing can renew the
    /// intermediate.
    root_key_offline: bool,
}

impl CaState {
    fn new(
        authority: CertificateAuthority,
        root_pem: String,
        retiring: Vec<String>,
        root_key_offline: bool,
    ) -> Self {
        let mut bundle_pem = root_pem.clone();
        for old in &retiring {
            if !bundle_pem.ends_with('\n') {
                bundle_pem.push('\n');
            }
            bundle_pem.push_str(old);
        }
        Self {
            authority,
            root_pem,
            retiring,
            bundle_pem,
            root_key_offline,
        }
    }

    /// Whether the root's key is offline (exported and removed, not given back): the
    /// intermediate cannot be renewed until the operator brings the root back.
    pub fn root_key_offline(&self) -> bool {
        self.root_key_offline
    }

    /// When the certificate that signs SVIDs expires.
    pub fn signer_not_after(&self) -> SystemTime {
        self.authority.not_after()
    }

    /// The PEM certificates a peer's chain must lead to.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The current root (PEM).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The roots kept in the bundle after a rotation (PEM), until retired.
    pub fn retiring(&self) -> &[String] {
        &self.retiring
    }

    /// The current root's fingerprint ([`fingerprint`]).
    pub fn fingerprint_of_root(&self) -> String {
        pem_fingerprint(&self.root_pem).unwrap_or_default()
    }

    /// The intermediate (or operator CA) certificate that signs SVIDs (PEM).
    pub fn signer_pem(&self) -> &str {
        self.authority.cert_pem()
    }
}

/// An SVID just signed, and the CA state that signed it.
pub struct Signed {
    pub id: SpiffeId,
    pub chain_pem: String,
    pub not_after: SystemTime,
    pub state: Arc<CaState>,
}

/// SHA-256 of a certificate's DER, hex: how roots and SVIDs are named in the store and in
/// `quiverctl ca status`.
pub fn fingerprint(der: &[u8]) -> String {
    to_hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// The fingerprint of the first certificate in `pem`, if it holds one.
pub fn pem_fingerprint(pem: &str) -> Option<String> {
    quiver_api::certs::certs_from_pem(pem)
        .ok()?
        .first()
        .map(|c| fingerprint(c))
}

/// When the first certificate in `pem` expires, if it holds one that parses.
pub fn pem_not_after(pem: &str) -> Option<SystemTime> {
    quiver_api::certs::not_after(quiver_api::certs::certs_from_pem(pem).ok()?.first()?).ok()
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl MeshCa {
    /// Load the operator's CA from files when given; else the root and intermediate stored
    /// sealed in the database (migrating a plaintext CA of an older store into them), else
    /// generate both for `trust_domain` and store them sealed with `kek`.
    pub async fn load_or_create(
        store: &dyn Store,
        trust_domain: &str,
        operator: Option<(&Path, &Path)>,
        kek: KeyEncryptionKey,
    ) -> Result<Self, CaError> {
        Self::load_or_create_with(
            store,
            trust_domain,
            operator,
            kek,
            IntermediatePolicy::default(),
        )
        .await
    }

    /// [`MeshCa::load_or_create`] with the intermediate's validity and renewal window given
    /// (tests use seconds).
    pub async fn load_or_create_with(
        store: &dyn Store,
        trust_domain: &str,
        operator: Option<(&Path, &Path)>,
        kek: KeyEncryptionKey,
        policy: IntermediatePolicy,
    ) -> Result<Self, CaError> {
        SpiffeId::parse(&format!("spiffe://{trust_domain}"))
            .map_err(|e| CaError::TrustDomain(trust_domain.into(), e))?;
        let mut given_root = None;
        if let Some((cert, key)) = operator {
            let cert_pem = read(cert)?;
            let authority = CertificateAuthority::from_pem(&cert_pem, &read_private(key)?)?;
            let stored = store.ca_key(CaRole::Root).await?;
            if stored.is_some_and(|s| same_cert(&s.cert_pem, &cert_pem)) {
                // The mesh root, exported, given back: it renews the intermediate from memory.
                if !signs_for(&authority) {
                    return Err(CaError::KeyMismatch {
                        cert: cert.display().to_string(),
                        key: key.display().to_string(),
                    });
                }
                tracing::info!(cert = %cert.display(), "the exported mesh root is given back; it renews the intermediate and stays out of the store");
                given_root = Some(authority);
            } else {
                return Ok(Self {
                    trust_domain: trust_domain.into(),
                    kek: None,
                    policy,
                    given_root: None,
                    state: watch::Sender::new(Arc::new(CaState::new(
                        authority,
                        cert_pem,
                        Vec::new(),
                        false,
                    ))),
                });
            }
        }
        let root = match store.ca_key(CaRole::Root).await? {
            Some(stored) => stored,
            None => {
                let (cert_pem, key_pem) = match store.certificate_authority().await? {
                    Some(legacy) => {
                        tracing::info!("sealing the store's plaintext CA as the mesh root");
                        legacy
                    }
                    None => {
                        let root = CertificateAuthority::generate(trust_domain, ROOT_VALIDITY)?;
                        (root.cert_pem().to_string(), root.key_pem().to_string())
                    }
                };
                let sealed = SealedCa {
                    key_sealed: kek.seal(CaRole::Root, &key_pem),
                    cert_pem,
                };
                // Another replica may have stored one meanwhile: whichever landed first wins.
                store.init_ca_key(CaRole::Root, &sealed).await?
            }
        };
        let opened;
        let root_ca = if root.key_offline() {
            given_root.as_ref()
        } else {
            opened = CertificateAuthority::from_pem(
                &root.cert_pem,
                &kek.open(CaRole::Root, &root.key_sealed)?,
            )?;
            Some(&opened)
        };
        // The root is sealed now: no plaintext copy stays behind.
        store.delete_certificate_authority().await?;
        let authority = intermediate(store, trust_domain, root_ca, &kek, policy).await?;
        let retiring = store.retiring_roots().await?;
        let offline = root_ca.is_none();
        Ok(Self {
            trust_domain: trust_domain.into(),
            kek: Some(kek),
            policy,
            given_root,
            state: watch::Sender::new(Arc::new(CaState::new(
                authority,
                root.cert_pem,
                retiring,
                offline,
            ))),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Whether this is an operator's CA (`--ca-cert`), which Quiver does not store or rotate.
    pub fn is_operator(&self) -> bool {
        self.kek.is_none()
    }

    /// The CA as it is now.
    pub fn current(&self) -> Arc<CaState> {
        self.state.borrow().clone()
    }

    /// Told each time the CA changes (a rotation or a retirement, here or on another replica).
    pub fn subscribe(&self) -> watch::Receiver<Arc<CaState>> {
        self.state.subscribe()
    }

    /// The PEM certificates a peer's chain must lead to: the current root and, during a
    /// rotation, the retiring one (for an operator CA, its certificate; for an operator
    /// intermediate, peers should also trust the operator's root).
    pub fn bundle_pem(&self) -> String {
        self.state.borrow().bundle_pem.clone()
    }

    /// Issue a certificate and a new key for `id` (the control plane's own listener).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedCert, CaError> {
        Ok(self.current().authority.issue(id, ttl)?)
    }

    /// Issue a server certificate for `id` that also names `hosts` (the API listener's TLS).
    pub fn issue_for_hosts(
        &self,
        id: &SpiffeId,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        Ok(self.current().authority.issue_for_hosts(id, hosts, ttl)?)
    }

    /// Sign the public key of `csr_der` into an SVID for `ns`/`service_account`, valid from no
    /// earlier than `not_before_floor` (the identity's revocation instant, if any). The answer
    /// carries the CA state it was signed with, so the bundle sent with it matches.
    pub fn sign(
        &self,
        csr_der: &[u8],
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        not_before_floor: SystemTime,
    ) -> Result<Signed, CaError> {
        let id = SpiffeId::workload(&self.trust_domain, namespace, service_account)
            .map_err(|e| CaError::TrustDomain(self.trust_domain.clone(), e))?;
        let state = self.current();
        let (chain_pem, not_after) =
            state
                .authority
                .sign_csr_not_before(csr_der, &id, ttl, not_before_floor)?;
        Ok(Signed {
            id,
            chain_pem,
            not_after,
            state,
        })
    }

    /// Re-read the stored root, intermediate and retiring roots, and publish them when they
    /// changed; whether they did. Every replica calls this every [`REFRESH`].
    pub async fn refresh(&self, store: &dyn Store) -> Result<bool, CaError> {
        let Some(kek) = &self.kek else {
            return Ok(false);
        };
        let (Some(root), Some(signer)) = (
            store.ca_key(CaRole::Root).await?,
            store.ca_key(CaRole::Intermediate).await?,
        ) else {
            return Ok(false);
        };
        let retiring = store.retiring_roots().await?;
        let offline = root.key_offline() && self.given(&root.cert_pem).is_none();
        let now = self.current();
        if now.root_pem == root.cert_pem
            && now.authority.cert_pem() == signer.cert_pem
            && now.retiring == retiring
            && now.root_key_offline == offline
        {
            return Ok(false);
        }
        let authority = open_intermediate(&signer, kek)?;
        if offline && !now.root_key_offline {
            tracing::warn!(
                intermediate.not_after = %crate::stored::rfc3339(unix_ms(authority.not_after())),
                "the mesh root's key left the store (export-root --remove-key): the intermediate \
                 can no longer be renewed here until the root is given back"
            );
        }
        tracing::info!(
            retiring_roots = retiring.len(),
            root_key_offline = offline,
            "the mesh CA changed; signing and trusting what the store holds now"
        );
        self.state.send_replace(Arc::new(CaState::new(
            authority,
            root.cert_pem,
            retiring,
            offline,
        )));
        Ok(true)
    }

    /// The given-back root when it is the one stored as `root_pem`.
    fn given(&self, root_pem: &str) -> Option<&CertificateAuthority> {
        self.given_root
            .as_ref()
            .filter(|g| same_cert(g.cert_pem(), root_pem))
    }

    /// Replace the stored intermediate with a new one from the same root when it has less than
    /// the renewal window left, then adopt whatever the store holds. Replicas racing here
    /// produce one new intermediate: the store replaces the row only if it still holds the
    /// certificate this replica read, and the loser adopts the winner's. The bundle does not
    /// change (same root), and SVIDs signed by the old intermediate stay valid until they or
    /// it expire. True when this call stored the new intermediate.
    pub async fn renew_intermediate(&self, store: &dyn Store) -> Result<bool, CaError> {
        let Some(kek) = &self.kek else {
            return Ok(false);
        };
        // What this replica signs with is not due: nothing to read from the store.
        if !self.policy.due(self.current().authority.not_after()) {
            return Ok(false);
        }
        let Some(current) = store.ca_key(CaRole::Intermediate).await? else {
            return Err(CaError::Missing);
        };
        let not_after = quiver_api::certs::certs_from_pem(&current.cert_pem)?
            .first()
            .map(|der| quiver_api::certs::not_after(der))
            .transpose()?
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if !self.policy.due(not_after) {
            // Another replica renewed it already.
            self.refresh(store).await?;
            return Ok(false);
        }
        let stored_root = store.ca_key(CaRole::Root).await?.ok_or(CaError::Missing)?;
        let opened;
        let root = if stored_root.key_offline() {
            self.given(&stored_root.cert_pem)
                .ok_or_else(|| CaError::RootOffline {
                    intermediate_not_after: crate::stored::rfc3339(unix_ms(not_after)),
                })?
        } else {
            opened = CertificateAuthority::from_pem(
                &stored_root.cert_pem,
                &kek.open(CaRole::Root, &stored_root.key_sealed)?,
            )?;
            &opened
        };
        let next = root.issue_intermediate(&self.trust_domain, self.policy.validity)?;
        let sealed = SealedCa {
            cert_pem: next.cert_pem().to_string(),
            key_sealed: kek.seal(CaRole::Intermediate, next.key_pem()),
        };
        let stored = store
            .replace_ca_key(CaRole::Intermediate, &current, &sealed)
            .await?;
        let renewed = stored.cert_pem == sealed.cert_pem;
        if renewed {
            tracing::info!(
                old.not_after = %crate::stored::rfc3339(unix_ms(not_after)),
                new.not_after = %crate::stored::rfc3339(unix_ms(next.not_after())),
                new.fingerprint = pem_fingerprint(next.cert_pem()).unwrap_or_default(),
                "renewed the CA intermediate (same root, the trust bundle is unchanged)"
            );
        }
        self.refresh(store).await?;
        Ok(renewed)
    }

    /// Start a root rotation: a new root and intermediate (sealed like the first), the old
    /// root kept in the bundle as retiring. Refused for an operator CA and while a rotation
    /// is not yet retired.
    pub async fn rotate(&self, store: &dyn Store) -> Result<(), CaError> {
        let Some(kek) = &self.kek else {
            return Err(CaError::OperatorCa);
        };
        let retiring = store.retiring_roots().await?;
        if !retiring.is_empty() {
            return Err(CaError::RotationInProgress);
        }
        let current = store.ca_key(CaRole::Root).await?.ok_or(CaError::Missing)?;
        // A rotation would put a new root key online without the operator.
        if current.key_offline() && self.given(&current.cert_pem).is_none() {
            return Err(CaError::RootOffline {
                intermediate_not_after: crate::stored::rfc3339(unix_ms(
                    self.current().authority.not_after(),
                )),
            });
        }
        let root = CertificateAuthority::generate(&self.trust_domain, ROOT_VALIDITY)?;
        let signer = root.issue_intermediate(&self.trust_domain, self.policy.validity)?;
        let sealed_root = SealedCa {
            cert_pem: root.cert_pem().to_string(),
            key_sealed: kek.seal(CaRole::Root, root.key_pem()),
        };
        let sealed_signer = SealedCa {
            cert_pem: signer.cert_pem().to_string(),
            key_sealed: kek.seal(CaRole::Intermediate, signer.key_pem()),
        };
        if !store
            .rotate_ca(&current, &sealed_root, &sealed_signer)
            .await?
        {
            return Err(CaError::RotationInProgress);
        }
        self.refresh(store).await?;
        Ok(())
    }

    /// End a rotation: the retiring roots leave the bundle. How many were removed.
    pub async fn retire(&self, store: &dyn Store) -> Result<u64, CaError> {
        if self.kek.is_none() {
            return Err(CaError::OperatorCa);
        }
        let removed = store.retire_roots().await?;
        self.refresh(store).await?;
        Ok(removed)
    }
}

/// How often each replica re-reads the stored CA (a rotation made on another replica reaches
/// this one's proxies within this).
pub const REFRESH: Duration = Duration::from_secs(1);

/// How often a failing intermediate renewal is logged again (at error) while it keeps failing.
const RENEW_FAILURE_LOG_EVERY: Duration = Duration::from_secs(600);

/// Every [`REFRESH`], for as long as the task runs: renew the intermediate when it is due
/// ([`MeshCa::renew_intermediate`]) and re-read the stored CA.
pub async fn keep_refreshed(ca: Arc<MeshCa>, store: Arc<dyn Store>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_failure_logged: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        match ca.renew_intermediate(store.as_ref()).await {
            Ok(_) => last_failure_logged = None,
            Err(e) => {
                if last_failure_logged.is_none_or(|t| t.elapsed() >= RENEW_FAILURE_LOG_EVERY) {
                    last_failure_logged = Some(tokio::time::Instant::now());
                    tracing::error!(
                        error = %e,
                        intermediate.not_after = %crate::stored::rfc3339(unix_ms(ca.current().authority.not_after())),
                        "renewing the CA intermediate failed; SVIDs stop being issued when it expires"
                    );
                }
            }
        }
        if let Err(e) = ca.refresh(store.as_ref()).await {
            tracing::warn!(error = %e, "reading the mesh CA failed; keeping the one in use");
        }
    }
}

/// Keep `quiver_ca_certificate_expiry_timestamp_seconds` at the CA in use: set now, and again
/// whenever the CA changes (a renewed intermediate, a rotated root), until the CA is dropped.
pub async fn report_expiry(
    mut ca: watch::Receiver<Arc<CaState>>,
    gauges: prometheus_client::metrics::family::Family<
        crate::metrics::CaCertificateLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
) {
    let set = |certificate: &'static str, at: SystemTime| {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        gauges
            .get_or_create(&crate::metrics::CaCertificateLabels { certificate })
            .set(secs);
    };
    loop {
        let state = ca.borrow_and_update().clone();
        set("signer", state.signer_not_after());
        match pem_not_after(state.root_pem()) {
            Some(at) => set("root", at),
            None => tracing::warn!("the CA root does not parse; its expiry is not reported"),
        }
        if ca.changed().await.is_err() {
            return;
        }
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The stored intermediate when it is still good for [`INTERMEDIATE_RENEW_BEFORE`]; else a new
/// one from `root`, stored in its place (the first replica to replace it wins).
async fn intermediate(
    store: &dyn Store,
    trust_domain: &str,
    root: Option<&CertificateAuthority>,
    kek: &KeyEncryptionKey,
    policy: IntermediatePolicy,
) -> Result<CertificateAuthority, CaError> {
    let fresh = |expiring: Option<SystemTime>| -> Result<SealedCa, CaError> {
        let root = root.ok_or_else(|| CaError::RootOffline {
            intermediate_not_after: expiring
                .map(|t| crate::stored::rfc3339(unix_ms(t)))
                .unwrap_or_else(|| "none stored".into()),
        })?;
        let ca = root.issue_intermediate(trust_domain, policy.validity)?;
        Ok(SealedCa {
            cert_pem: ca.cert_pem().to_string(),
            key_sealed: kek.seal(CaRole::Intermediate, ca.key_pem()),
        })
    };
    let stored = match store.ca_key(CaRole::Intermediate).await? {
        None => {
            store
                .init_ca_key(CaRole::Intermediate, &fresh(None)?)
                .await?
        }
        Some(current) => {
            let ca = open_intermediate(&current, kek)?;
            if !policy.due(ca.not_after()) {
                return Ok(ca);
            }
            let left = ca
                .not_after()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            if root.is_none() && !left.is_zero() {
                // Keep signing with it while it lasts; the operator must bring the root back.
                tracing::error!(
                    error = %CaError::RootOffline {
                        intermediate_not_after: crate::stored::rfc3339(unix_ms(ca.not_after())),
                    },
                    "the CA intermediate is due for renewal"
                );
                return Ok(ca);
            }
            tracing::info!(left = ?left, "replacing the CA intermediate");
            store
                .replace_ca_key(
                    CaRole::Intermediate,
                    &current,
                    &fresh(Some(ca.not_after()))?,
                )
                .await?
        }
    };
    open_intermediate(&stored, kek)
}

/// Whether two PEM texts hold the same first certificate (line endings and trailing text
/// aside).
fn same_cert(a: &str, b: &str) -> bool {
    matches!((pem_fingerprint(a), pem_fingerprint(b)), (Some(x), Some(y)) if x == y)
}

/// Whether `ca`'s key is its certificate's: a certificate it issues verifies against it.
fn signs_for(ca: &CertificateAuthority) -> bool {
    let Ok(probe_id) = SpiffeId::parse("spiffe://key-check.invalid/probe") else {
        return false;
    };
    let Ok(probe) = ca.issue(&probe_id, Duration::from_secs(60)) else {
        return false;
    };
    let (Ok(roots), Ok(chain)) = (
        quiver_api::certs::certs_from_pem(ca.cert_pem()),
        quiver_api::certs::certs_from_pem(&probe.chain_pem),
    ) else {
        return false;
    };
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        if store.add(root).is_err() {
            return false;
        }
    }
    let Ok(verifier) = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        quiver_api::tls::provider(),
    )
    .build() else {
        return false;
    };
    let Some((leaf, rest)) = chain.split_first() else {
        return false;
    };
    verifier
        .verify_client_cert(leaf, rest, rustls_pki_types::UnixTime::now())
        .is_ok()
}

pub(super) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn open_intermediate(
    stored: &SealedCa,
    kek: &KeyEncryptionKey,
) -> Result<CertificateAuthority, CaError> {
    Ok(CertificateAuthority::from_pem(
        &stored.cert_pem,
        &kek.open(CaRole::Intermediate, &stored.key_sealed)?,
    )?)
}

/// Read a private key, refusing one that group or others can read.
pub(super) fn read_private(path: &Path) -> Result<String, CaError> {
    let shared = quiver_api::certs::shared_key_mode(path).map_err(|source| CaError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if let Some(mode) = shared {
        return Err(CaError::KeyMode {
            path: path.display().to_string(),
            mode,
        });
    }
    read(path)
}
