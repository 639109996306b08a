//! The shared root CA, each cluster's intermediate CA (Istio's `cacerts`
//! layout) and the leaf certificates the intermediates issue.

mod cluster;
mod error;
mod leaf;
mod root;

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{DistinguishedName, DnType, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::cert::{self, CertFacts};

pub use cluster::ClusterCa;
pub use error::CaError;
pub use leaf::{IssuedError, Leaf, SignedChain};
pub use root::RootCa;

/// The intermediate certificate, in a cluster's `cacerts` directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The intermediate's private key, in `cacerts`; written with mode 0600.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The shared root certificate, in `cacerts` and in the root's directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The intermediate followed by the root, in `cacerts`.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// The root's private key, kept with the root and never in a cluster; mode 0600.
pub const ROOT_KEY_FILE: &str = "root-key.pem";

/// How far a leaf's notBefore is backdated, so that a peer whose clock is
/// a little behind ours does not refuse a freshly issued certificate.
pub const LEAF_BACKDATE: Duration = Duration::from_secs(60);

pub(crate) const CACERTS_HINT: &str = "a cluster's cacerts directory holds ca-cert.pem, \
    ca-key.pem, root-cert.pem and cert-chain.pem; issue them from the shared root \
    (RootCa::issue_intermediate then ClusterCa::write) or copy them from the cluster's \
    cacerts secret";
pub(crate) const ROOT_HINT: &str = "the root directory holds root-cert.pem and root-key.pem; \
    generate them once (RootCa::generate then RootCa::write) and keep them for every cluster \
    of the mesh";
pub(crate) const ROOT_FILE_HINT: &str = "the shared root certificate is root-cert.pem of \
    any cluster's cacerts (or of the root's directory); mount only that file, never ca-key.pem";
pub(crate) const ROOT_EXPIRED_HINT: &str = "the shared root has expired: generate a new root \
    and re-issue every cluster's intermediate from it";
pub(crate) const CA_EXPIRED_HINT: &str = "issue a new intermediate for this cluster from the \
    shared root and replace the cluster's cacerts";

/// The shared root certificate that every peer's chain must lead to.
///
/// Obtain it from [`RootCa::trust_root`] or [`ClusterCa::trust_root`].
#[derive(Clone)]
pub struct TrustRoot {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) pem: String,
    pub(crate) anchor: TrustAnchor<'static>,
    pub(crate) facts: CertFacts,
    fingerprint: String,
}

impl TrustRoot {
    pub(crate) fn new(
        der: CertificateDer<'static>,
        pem: String,
        path: &Path,
    ) -> Result<Self, CaError> {
        let bad = |detail: String| CaError::BadCertificate {
            path: path.to_owned(),
            detail,
        };
        let facts = cert::facts(&der).map_err(bad)?;
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|err| bad(err.to_string()))?
            .to_owned();
        Ok(TrustRoot {
            fingerprint: cert::sha256_fingerprint(&der),
            der,
            pem,
            anchor,
            facts,
        })
    }

    /// The root certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// SHA-256 of the root certificate, uppercase hex pairs joined by `:`
    /// as `openssl x509 -fingerprint -sha256` prints it. For display only.
    pub fn sha256_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The root's notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.facts.not_after
    }

    /// The root certificate in PEM (as in `root-cert.pem`).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Reads a root certificate file (such as `root-cert.pem`): the one
    /// certificate every chain must lead to, and all a proxy or gateway
    /// needs to verify its controller and its peers (SPEC P7).
    pub fn load(path: &Path) -> Result<Self, CaError> {
        let cert = crate::pem_files::read_cert(path, ROOT_FILE_HINT)?;
        TrustRoot::new(cert.value, cert.text, path)
    }
}

impl fmt::Debug for TrustRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustRoot")
            .field("subject", &self.facts.subject)
            .field("sha256", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

pub(crate) fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshpeer");
    dn.push(DnType::CommonName, common_name);
    dn
}

pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), CaError> {
    let problem = if value.is_empty() {
        "it is empty"
    } else if value.len() > 64 {
        "it is longer than 64 bytes (the X.509 limit for a common name)"
    } else {
        return Ok(());
    };
    Err(CaError::InvalidName {
        what,
        value: value.to_owned(),
        problem,
    })
}

pub(crate) fn generate_key(what: &'static str) -> Result<KeyPair, CaError> {
    KeyPair::generate().map_err(|source| CaError::Generate { what, source })
}

pub(crate) fn to_offset(
    secs: i64,
    now: SystemTime,
    validity: Duration,
) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| CaError::Validity { now, validity })
}

/// `[now - backdate, now + validity]` in whole seconds.
pub(crate) fn window(
    now: SystemTime,
    backdate: Duration,
    validity: Duration,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), CaError> {
    let invalid = || CaError::Validity { now, validity };
    let start = cert::to_unix(now);
    let secs = |d: Duration| i64::try_from(d.as_secs()).map_err(|_| invalid());
    let not_before = start.checked_sub(secs(backdate)?).ok_or_else(invalid)?;
    let not_after = start.checked_add(secs(validity)?).ok_or_else(invalid)?;
    // GeneralizedTime stops at year 9999.
    if not_after > 253_402_300_799 {
        return Err(invalid());
    }
    Ok((
        to_offset(not_before, now, validity)?,
        to_offset(not_after, now, validity)?,
    ))
}

pub(crate) fn check_key(
    facts: &CertFacts,
    key: &KeyPair,
    key_path: &Path,
    cert_path: &Path,
) -> Result<(), CaError> {
    if facts.public_key == key.public_key_raw() {
        Ok(())
    } else {
        Err(CaError::KeyMismatch {
            key_path: key_path.to_owned(),
            cert_path: cert_path.to_owned(),
        })
    }
}

/// Validity as webpki judges it: whole seconds, notAfter inclusive.
pub(crate) fn check_window(
    facts: &CertFacts,
    path: &Path,
    now: SystemTime,
    hint: &'static str,
) -> Result<(), CaError> {
    let now = cert::to_unix(now);
    if now > cert::to_unix(facts.not_after) {
        return Err(CaError::Expired {
            path: path.to_owned(),
            not_after: facts.not_after,
            hint,
        });
    }
    if now < cert::to_unix(facts.not_before) {
        return Err(CaError::NotYetValid {
            path: path.to_owned(),
            not_before: facts.not_before,
        });
    }
    Ok(())
}

pub(crate) fn check_issuer(facts: &CertFacts, now: SystemTime) -> Result<(), CaError> {
    if cert::to_unix(now) > cert::to_unix(facts.not_after) {
        return Err(CaError::IssuerExpired {
            subject: facts.subject.clone(),
            not_after: facts.not_after,
        });
    }
    Ok(())
}

pub(crate) fn issuer_from(
    der: &CertificateDer<'static>,
    key: KeyPair,
    path: &Path,
) -> Result<Issuer<'static, KeyPair>, CaError> {
    let bad = |detail: String| CaError::BadCertificate {
        path: path.to_owned(),
        detail,
    };
    // rcgen panics on a relative distinguished name without attributes and
    // refuses multi-valued ones; check first so that a bad file is an error.
    let parsed = cert::parse(der).map_err(bad)?;
    if parsed.subject().iter().any(|rdn| rdn.iter().count() != 1) {
        return Err(bad(
            "its subject has a multi-valued or empty relative distinguished name".to_owned(),
        ));
    }
    Issuer::from_ca_cert_der(der, key).map_err(|err| bad(err.to_string()))
}
