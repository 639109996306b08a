//! Errors of CA generation, files and issuance.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::cert::rfc3339;

/// Why CA material could not be generated, written, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A required file does not exist.
    #[error("{} is missing: {hint}", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
        /// Which files belong together and how to produce them.
        hint: &'static str,
    },
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What we tried: `read`, `write`, `create directory`.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `write` refuses to replace existing CA material.
    #[error(
        "{} already exists; refusing to overwrite CA material (move the old files away first)",
        path.display()
    )]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file has no PEM block of the expected kind, or too many.
    #[error("{} is not usable PEM: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A PEM certificate is not a valid X.509 certificate.
    #[error("{} does not hold a valid X.509 certificate: {detail}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// A PEM private key cannot be used for signing.
    #[error("{} does not hold a usable private key: {detail}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// The key parser's complaint.
        detail: String,
    },
    /// The private key is not the one the certificate was issued for.
    #[error(
        "{} does not match {}: the private key is not the one the certificate was issued for; \
         restore both files from the same issuance",
        key_path.display(), cert_path.display()
    )]
    KeyMismatch {
        /// The key file.
        key_path: PathBuf,
        /// The certificate file.
        cert_path: PathBuf,
    },
    /// `cert-chain.pem` does not start with `ca-cert.pem`.
    #[error(
        "{} does not start with the certificate of {}; write cert-chain.pem as the intermediate \
         followed by the root",
        chain_path.display(), cert_path.display()
    )]
    ChainMismatch {
        /// `cert-chain.pem`.
        chain_path: PathBuf,
        /// `ca-cert.pem`.
        cert_path: PathBuf,
    },
    /// The intermediate was not issued by the root in `root-cert.pem`.
    #[error(
        "{} does not chain to {} (root SHA-256 {root_sha256}): the intermediate was issued by \
         another root; issue a new intermediate from the shared root, or put the shared root \
         in root-cert.pem",
        cert_path.display(), root_path.display()
    )]
    NotSignedByRoot {
        /// `ca-cert.pem`.
        cert_path: PathBuf,
        /// `root-cert.pem`.
        root_path: PathBuf,
        /// Fingerprint of the root in `root-cert.pem`.
        root_sha256: String,
    },
    /// The chain to the root does not verify for another reason than the signer.
    #[error("{} cannot issue certificates that peers accept: {detail}", cert_path.display())]
    Unusable {
        /// `ca-cert.pem`.
        cert_path: PathBuf,
        /// The verifier's complaint.
        detail: String,
    },
    /// A certificate file has expired.
    #[error("{} expired at {}; {hint}", path.display(), rfc3339(*not_after))]
    Expired {
        /// The file.
        path: PathBuf,
        /// Its notAfter.
        not_after: SystemTime,
        /// What to do.
        hint: &'static str,
    },
    /// A certificate file is not valid yet.
    #[error(
        "{} is not valid before {}; check this machine's clock",
        path.display(), rfc3339(*not_before)
    )]
    NotYetValid {
        /// The file.
        path: PathBuf,
        /// Its notBefore.
        not_before: SystemTime,
    },
    /// The issuing CA has expired, so it cannot issue.
    #[error(
        "cannot issue from CA {subject:?}: it expired at {}; replace the cluster's cacerts \
         with a new intermediate from the shared root",
        rfc3339(*not_after)
    )]
    IssuerExpired {
        /// The CA's subject.
        subject: String,
        /// The CA's notAfter.
        not_after: SystemTime,
    },
    /// A name given for a certificate subject is empty or too long.
    #[error("{what} {value:?} is not usable: {problem}")]
    InvalidName {
        /// `"root common name"` or `"cluster name"`.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A trust domain given for an intermediate's binding is not valid.
    #[error("cannot bind the intermediate to this trust domain: {source}")]
    InvalidTrustDomain {
        /// Why the trust domain is not valid.
        #[source]
        source: crate::spiffe::SpiffeIdError,
    },
    /// The intermediate is bound to one trust domain (SPEC P6) and was asked
    /// for a certificate of another.
    #[error(
        "cannot issue a certificate for {requested}: CA {subject:?} is bound to trust domain \
         {binding} (SPEC P6), and a cluster's CA issues identities of its own trust domain only"
    )]
    TrustDomainNotBound {
        /// The CA's subject.
        subject: String,
        /// The trust domain the CA is bound to.
        binding: String,
        /// The identity asked for.
        requested: String,
    },
    /// The validity window does not fit in an X.509 certificate.
    #[error("validity from {now:?} for {validity:?} cannot be expressed in a certificate")]
    Validity {
        /// The start time given.
        now: SystemTime,
        /// The duration given.
        validity: Duration,
    },
    /// Key generation or signing failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
}
