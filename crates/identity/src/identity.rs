//! A component's own identity: its SPIFFE ID and the current leaf, issued
//! by its cluster's CA (the controller, which holds the key) or obtained
//! from a remote CA (proxies and gateways, SPEC P7), and re-issued before
//! it expires.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, SignatureScheme};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::ca::{CaError, ClusterCa, Leaf, TrustRoot};
use crate::cert::rfc3339;
use crate::spiffe::SpiffeId;

/// How often the rotation task compares the wall clock with the renewal
/// time, so that a suspended or stepped clock cannot leave an expired leaf in place.
const WALL_CLOCK_RECHECK: Duration = Duration::from_secs(5 * 60);
/// Least time between two rotations, so that an intermediate that can only
/// issue already-due leaves (it expires soon) or a tiny leaf validity does
/// not make us spin.
const MIN_ROTATION_INTERVAL: Duration = Duration::from_secs(30);
/// First wait before retrying a failed issuance; doubled per failure.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two attempts after failures.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The error a [`LeafIssuer`] fails with.
pub type IssueError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What [`LeafIssuer::issue`] returns.
pub type IssueFuture<'a> = Pin<Box<dyn Future<Output = Result<Leaf, IssueError>> + Send + 'a>>;

/// Where a component without the CA key gets its leaves (SPEC P7): the
/// client of the controller's certificate-signing endpoint.
pub trait LeafIssuer: Send + Sync + 'static {
    /// A new leaf for `id`, valid for about `validity` (the CA may cap it),
    /// already checked: its chain leads to the shared root and it carries
    /// exactly `id` (see [`Leaf::from_issued`]).
    fn issue<'a>(&'a self, id: &'a SpiffeId, validity: Duration) -> IssueFuture<'a>;

    /// Where the leaves come from, for logs (e.g. `controller at 10.0.0.5:15013`).
    fn describe(&self) -> String;
}

/// Where an [`Identity`]'s leaves come from.
enum Source {
    /// The cluster's CA, in this process (the controller).
    Local(Arc<ClusterCa>),
    /// A remote CA (proxies and gateways).
    Remote(Arc<dyn LeafIssuer>),
}

/// Why the identity's leaf could not be issued or loaded into rustls.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The cluster CA refused to issue.
    #[error("cannot issue a leaf certificate: {0}")]
    Issue(#[from] CaError),
    /// The remote CA did not give us a usable leaf.
    #[error("cannot get a leaf certificate from the {from}: {source}")]
    Remote {
        /// [`LeafIssuer::describe`].
        from: String,
        /// Why.
        #[source]
        source: IssueError,
    },
    /// rustls could not load the issued key.
    #[error("cannot load the issued leaf key into rustls: {0}")]
    Key(#[source] TlsError),
}

/// The current leaf in both forms we hand out.
struct Current {
    leaf: Arc<Leaf>,
    certified: Arc<CertifiedKey>,
}

/// This component's mutual-TLS identity.
///
/// Serves as rustls' [`ResolvesServerCert`] and [`ResolvesClientCert`]: it
/// always presents the current leaf, so configs built once (see
/// [`crate::server_config`]) keep working across rotations. The leaf is
/// swapped under a short lock that is never held across an await.
pub struct Identity {
    source: Source,
    root: TrustRoot,
    id: SpiffeId,
    /// DNS names and IP addresses a locally issued leaf also carries.
    server_names: Vec<String>,
    leaf_validity: Duration,
    current: RwLock<Arc<Current>>,
}

impl Identity {
    /// Issues a first leaf for `id` from `ca`, valid from `now` for `leaf_validity`.
    pub fn new(
        ca: impl Into<Arc<ClusterCa>>,
        id: SpiffeId,
        leaf_validity: Duration,
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        Identity::serving(ca, id, Vec::new(), leaf_validity, now)
    }

    /// Like [`Identity::new`], with `server_names` (DNS names, IP
    /// addresses) as SANs after the SPIFFE ID in every leaf: for a
    /// listener that clients check by the name or address they dial.
    pub fn serving(
        ca: impl Into<Arc<ClusterCa>>,
        id: SpiffeId,
        server_names: Vec<String>,
        leaf_validity: Duration,
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        let ca = ca.into();
        let current = certified(ca.issue_server_leaf(&id, &server_names, leaf_validity, now)?)?;
        Ok(Identity {
            root: ca.trust_root().clone(),
            source: Source::Local(ca),
            id,
            server_names,
            leaf_validity,
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Obtains a first leaf for `id` from `issuer` (SPEC P7: a proxy or
    /// gateway, which holds only the shared `root`), asking for
    /// `leaf_validity`. One attempt; the caller decides about retrying.
    pub async fn from_issuer(
        issuer: Arc<dyn LeafIssuer>,
        root: TrustRoot,
        id: SpiffeId,
        leaf_validity: Duration,
    ) -> Result<Self, IdentityError> {
        let leaf =
            issuer
                .issue(&id, leaf_validity)
                .await
                .map_err(|source| IdentityError::Remote {
                    from: issuer.describe(),
                    source,
                })?;
        let current = certified(leaf)?;
        Ok(Identity {
            root,
            source: Source::Remote(issuer),
            id,
            server_names: Vec::new(),
            leaf_validity,
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Our SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// The shared root our peers' chains (and ours) lead to.
    pub fn trust_root(&self) -> &TrustRoot {
        &self.root
    }

    /// The cluster CA that issues our leaves, when it is in this process
    /// (the controller); `None` when they come from a remote CA.
    pub fn cluster_ca(&self) -> Option<&ClusterCa> {
        match &self.source {
            Source::Local(ca) => Some(ca),
            Source::Remote(_) => None,
        }
    }

    /// [`Identity::cluster_ca`], shared (e.g. with a signing endpoint).
    pub fn local_ca(&self) -> Option<Arc<ClusterCa>> {
        match &self.source {
            Source::Local(ca) => Some(Arc::clone(ca)),
            Source::Remote(_) => None,
        }
    }

    /// Where our leaves come from, for logs.
    pub fn issuer(&self) -> String {
        match &self.source {
            Source::Local(_) => "cluster CA in this process".to_owned(),
            Source::Remote(issuer) => issuer.describe(),
        }
    }

    /// The leaf presented right now.
    pub fn current(&self) -> Arc<Leaf> {
        self.snapshot().leaf.clone()
    }

    /// Re-issues the leaf if less than a third of its lifetime remains at
    /// `now` (or it has expired). Returns whether it did. On failure the
    /// current leaf stays.
    pub async fn rotate_if_due(&self, now: SystemTime) -> Result<bool, IdentityError> {
        if !self.current().is_due(now) {
            return Ok(false);
        }
        self.rotate(now).await?;
        Ok(true)
    }

    /// Re-issues the leaf now, whether due or not, and returns the new one.
    async fn rotate(&self, now: SystemTime) -> Result<Arc<Leaf>, IdentityError> {
        // Issue off-lock; only the swap happens under the lock.
        let leaf =
            match &self.source {
                Source::Local(ca) => {
                    ca.issue_server_leaf(&self.id, &self.server_names, self.leaf_validity, now)?
                }
                Source::Remote(issuer) => issuer
                    .issue(&self.id, self.leaf_validity)
                    .await
                    .map_err(|source| IdentityError::Remote {
                        from: issuer.describe(),
                        source,
                    })?,
            };
        let next = Arc::new(certified(leaf)?);
        let leaf = next.leaf.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(leaf)
    }

    /// Keeps the leaf fresh forever: sleeps (with `tokio::time`) until two
    /// thirds of the current leaf's lifetime have passed on the real clock,
    /// then re-issues, logging each rotation and failure with `tracing`.
    /// Failures are retried after 1 s, doubling up to 60 s (with jitter),
    /// and the current leaf is kept meanwhile. Spawn it and abort it to stop.
    ///
    /// The deadline is kept on tokio's clock, so a paused test clock drives
    /// it; the wall clock is also checked every five minutes in case the
    /// machine slept.
    pub async fn run_rotation(self: Arc<Self>) {
        let mut leaf = self.current();
        let mut deadline = Instant::now() + until(leaf.renew_at(), SystemTime::now());
        let mut retry = RETRY_FIRST;
        info!(
            id = %self.id,
            from = %self.issuer(),
            not_after = %rfc3339(leaf.not_after),
            renew_at = %rfc3339(leaf.renew_at()),
            "leaf certificate rotation started"
        );
        loop {
            tokio::time::sleep_until(deadline.min(Instant::now() + WALL_CLOCK_RECHECK)).await;
            let now = SystemTime::now();
            let current = self.current();
            if !Arc::ptr_eq(&current, &leaf) {
                // Someone called `rotate_if_due`: plan for the leaf we now have.
                leaf = current;
                deadline = Instant::now() + until(leaf.renew_at(), now);
                continue;
            }
            if Instant::now() < deadline && !leaf.is_due(now) {
                continue;
            }
            deadline = match self.rotate(now).await {
                Ok(new) => {
                    leaf = new;
                    retry = RETRY_FIRST;
                    info!(
                        id = %self.id,
                        not_after = %rfc3339(leaf.not_after),
                        renew_at = %rfc3339(leaf.renew_at()),
                        "rotated leaf certificate"
                    );
                    if let Some(ca) = self.cluster_ca()
                        && leaf.not_after >= ca.not_after()
                    {
                        warn!(
                            id = %self.id,
                            ca_not_after = %rfc3339(ca.not_after()),
                            "leaf lifetime is cut short by the cluster intermediate's expiry; \
                             replace the cluster's cacerts with a new intermediate"
                        );
                    }
                    Instant::now() + until(leaf.renew_at(), now).max(MIN_ROTATION_INTERVAL)
                }
                Err(err) => {
                    let wait = jittered(retry);
                    retry = (retry * 2).min(RETRY_MAX);
                    error!(
                        id = %self.id,
                        error = %err,
                        retry_in = ?wait,
                        leaf_not_after = %rfc3339(leaf.not_after),
                        "cannot rotate leaf certificate; the current one is kept"
                    );
                    Instant::now() + wait
                }
            };
        }
    }

    fn snapshot(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// `d` scaled by a random factor in [0.5, 1.0], so that many components
/// whose CA went away do not all come back at once.
fn jittered(d: Duration) -> Duration {
    use aws_lc_rs::rand::SecureRandom;
    let mut byte = [0u8; 1];
    let fraction = match aws_lc_rs::rand::SystemRandom::new().fill(&mut byte) {
        Ok(()) => 0.5 + f64::from(byte[0]) / 510.0,
        Err(_) => 1.0,
    };
    d.mul_f64(fraction)
}

/// Time from `now` to `at`, zero if past. Capped at ten years, which keeps
/// `Instant` arithmetic far from overflow; a leaf that lives longer is
/// merely renewed early.
fn until(at: SystemTime, now: SystemTime) -> Duration {
    const MAX_WAIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    at.duration_since(now).unwrap_or_default().min(MAX_WAIT)
}

fn certified(leaf: Leaf) -> Result<Current, IdentityError> {
    let certified = CertifiedKey::from_der(
        leaf.chain.clone(),
        leaf.key.clone_key(),
        &rustls::crypto::aws_lc_rs::default_provider(),
    )
    .map_err(IdentityError::Key)?;
    Ok(Current {
        leaf: Arc::new(leaf),
        certified: Arc::new(certified),
    })
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current();
        f.debug_struct("Identity")
            .field("id", &self.id.to_string())
            .field("leaf_not_after", &rfc3339(current.not_after))
            .field("issuer", &self.issuer())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.snapshot().certified.clone())
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.snapshot().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
