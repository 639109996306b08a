//! A component's own identity: its cluster's CA, its SPIFFE ID and the
//! current leaf, re-issued before it expires.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, SignatureScheme};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::ca::{CaError, ClusterCa, Leaf};
use crate::cert::rfc3339;
use crate::spiffe::SpiffeId;

/// How often the rotation task compares the wall clock with the renewal
/// time, so that a suspended or stepped clock cannot leave an expired leaf in place.
const WALL_CLOCK_RECHECK: Duration = Duration::from_secs(5 * 60);
/// Least time between two rotations, so that an intermediate that can only
/// issue already-due leaves (it expires soon) or a tiny leaf validity does
/// not make us spin.
const MIN_ROTATION_INTERVAL: Duration = Duration::from_secs(30);
/// Wait before retrying a failed issuance.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Why the identity's leaf could not be issued or loaded into rustls.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The cluster CA refused to issue.
    #[error("cannot issue a leaf certificate: {0}")]
    Issue(#[from] CaError),
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
    ca: ClusterCa,
    id: SpiffeId,
    leaf_validity: Duration,
    current: RwLock<Arc<Current>>,
}

impl Identity {
    /// Issues a first leaf for `id` from `ca`, valid from `now` for `leaf_validity`.
    pub fn new(
        ca: ClusterCa,
        id: SpiffeId,
        leaf_validity: Duration,
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        let current = issue(&ca, &id, leaf_validity, now)?;
        Ok(Identity {
            ca,
            id,
            leaf_validity,
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Our SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// The cluster CA that issues our leaves.
    pub fn cluster_ca(&self) -> &ClusterCa {
        &self.ca
    }

    /// The leaf presented right now.
    pub fn current(&self) -> Arc<Leaf> {
        self.snapshot().leaf.clone()
    }

    /// Re-issues the leaf if less than a third of its lifetime remains at
    /// `now` (or it has expired). Returns whether it did.
    pub fn rotate_if_due(&self, now: SystemTime) -> Result<bool, IdentityError> {
        if !self.current().is_due(now) {
            return Ok(false);
        }
        self.rotate(now)?;
        Ok(true)
    }

    /// Re-issues the leaf now, whether due or not, and returns the new one.
    fn rotate(&self, now: SystemTime) -> Result<Arc<Leaf>, IdentityError> {
        // Issue off-lock; only the swap happens under the lock.
        let next = Arc::new(issue(&self.ca, &self.id, self.leaf_validity, now)?);
        let leaf = next.leaf.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(leaf)
    }

    /// Keeps the leaf fresh forever: sleeps (with `tokio::time`) until two
    /// thirds of the current leaf's lifetime have passed on the real clock,
    /// then re-issues, logging each rotation and failure with `tracing`.
    /// Failures are retried after 30 s. Spawn it and abort it to stop.
    ///
    /// The deadline is kept on tokio's clock, so a paused test clock drives
    /// it; the wall clock is also checked every five minutes in case the
    /// machine slept.
    pub async fn run_rotation(self: Arc<Self>) {
        let mut leaf = self.current();
        let mut deadline = Instant::now() + until(leaf.renew_at(), SystemTime::now());
        info!(
            id = %self.id,
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
            deadline = match self.rotate(now) {
                Ok(new) => {
                    leaf = new;
                    info!(
                        id = %self.id,
                        not_after = %rfc3339(leaf.not_after),
                        renew_at = %rfc3339(leaf.renew_at()),
                        "rotated leaf certificate"
                    );
                    if leaf.not_after >= self.ca.not_after() {
                        warn!(
                            id = %self.id,
                            ca_not_after = %rfc3339(self.ca.not_after()),
                            "leaf lifetime is cut short by the cluster intermediate's expiry; \
                             replace the cluster's cacerts with a new intermediate"
                        );
                    }
                    Instant::now() + until(leaf.renew_at(), now).max(MIN_ROTATION_INTERVAL)
                }
                Err(err) => {
                    error!(
                        id = %self.id,
                        error = %err,
                        retry_in = ?RETRY_AFTER_FAILURE,
                        "cannot rotate leaf certificate"
                    );
                    Instant::now() + RETRY_AFTER_FAILURE
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

/// Time from `now` to `at`, zero if past. Capped at ten years, which keeps
/// `Instant` arithmetic far from overflow; a leaf that lives longer is
/// merely renewed early.
fn until(at: SystemTime, now: SystemTime) -> Duration {
    const MAX_WAIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    at.duration_since(now).unwrap_or_default().min(MAX_WAIT)
}

fn issue(
    ca: &ClusterCa,
    id: &SpiffeId,
    validity: Duration,
    now: SystemTime,
) -> Result<Current, IdentityError> {
    let leaf = ca.issue_leaf(id, validity, now)?;
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
            .field("ca", &self.ca)
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
