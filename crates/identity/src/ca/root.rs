//! The root CA shared by all clusters.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

use super::{
    CaError, ClusterCa, ROOT_CERT_FILE, ROOT_EXPIRED_HINT, ROOT_HINT, ROOT_KEY_FILE, TrustRoot,
    check_issuer, check_key, check_name, check_window, generate_key, issuer_from, subject, window,
};
use crate::pem_files::{self, NewFile};
use crate::spiffe::SpiffeId;

/// The root CA shared by all clusters of a mesh (certificate and key).
pub struct RootCa {
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
    root: TrustRoot,
}

impl RootCa {
    /// Generates a self-signed root (ECDSA P-256, subject `CN=<common_name>, O=meshpeer`),
    /// valid from `now` for `validity`, allowed to sign intermediates.
    ///
    /// Fails if `common_name` is empty or longer than 64 bytes, or the window
    /// does not fit in a certificate.
    pub fn generate(
        common_name: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        check_name("root common name", common_name)?;
        let (not_before, not_after) = window(now, Duration::ZERO, validity)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = generate_key("root key")?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: "root certificate",
                source,
            })?;
        let root = TrustRoot::new(cert.der().clone(), cert.pem(), Path::new(ROOT_CERT_FILE))?;
        Ok(RootCa {
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            root,
        })
    }

    /// Writes `root-cert.pem` (mode 0644) and `root-key.pem` (mode 0600) into
    /// `dir`, creating it if needed. Refuses to overwrite existing files.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        pem_files::write_new(
            dir,
            &[
                NewFile {
                    name: ROOT_CERT_FILE,
                    contents: &self.root.pem,
                    secret: false,
                },
                NewFile {
                    name: ROOT_KEY_FILE,
                    contents: &self.key_pem,
                    secret: true,
                },
            ],
        )
    }

    /// Loads `root-cert.pem` and `root-key.pem` from `dir`. Fails if a file is
    /// missing or malformed, the key does not match the certificate, or the
    /// root is not valid at `now`.
    pub fn load(dir: &Path, now: SystemTime) -> Result<Self, CaError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        let cert = pem_files::read_cert(&cert_path, ROOT_HINT)?;
        let key = pem_files::read_key(&key_path, ROOT_HINT)?;
        let root = TrustRoot::new(cert.value, cert.text, &cert_path)?;
        check_key(&root.facts, &key.value, &key_path, &cert_path)?;
        check_window(&root.facts, &cert_path, now, ROOT_EXPIRED_HINT)?;
        let issuer = issuer_from(&root.der, key.value, &cert_path)?;
        Ok(RootCa {
            issuer,
            key_pem: key.text,
            root,
        })
    }

    /// The root certificate, for verifying peers.
    pub fn trust_root(&self) -> &TrustRoot {
        &self.root
    }

    /// See [`TrustRoot::sha256_fingerprint`].
    pub fn sha256_fingerprint(&self) -> &str {
        self.root.sha256_fingerprint()
    }

    /// Issues the intermediate CA of one cluster (ECDSA P-256, subject
    /// `CN=<cluster_name>, O=meshpeer`, CA with path length 0, key usages
    /// keyCertSign and cRLSign), valid from `now` for `validity`, bound to
    /// `trust_domain` (SPEC P6) by the URI SAN `spiffe://<trust_domain>` and
    /// to the cluster by the URI SAN
    /// `spiffe://<trust_domain>/meshpeer/cluster/<cluster_name>`.
    ///
    /// The bindings are URI SANs, not X.509 name constraints: rcgen cannot
    /// write URI name constraints, and webpki does not enforce them on URI
    /// SANs anyway. A SAN on the CA is how SPIFFE and Istio tie a signing
    /// certificate to a trust domain; our verifiers ([`crate::server_config`],
    /// [`crate::client_config`]) refuse a leaf whose trust domain differs
    /// from it, and [`ClusterCa::issue_leaf`] refuses to issue one.
    ///
    /// The cluster binding is what tells clusters apart when they share one
    /// trust domain (Istio's multi-network model): only the root's holder
    /// writes it, and a verified peer's cluster is read from the CA the root
    /// signed on its path, never from its leaf ([`crate::verified_client`]).
    ///
    /// Fails if `cluster_name` is empty, longer than 64 bytes or not one
    /// SPIFFE path segment (letters, digits, `.`, `-`, `_`), the trust
    /// domain is not a valid SPIFFE trust domain, the root has expired at
    /// `now`, or the window does not fit in a certificate.
    pub fn issue_intermediate(
        &self,
        cluster_name: &str,
        trust_domain: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<ClusterCa, CaError> {
        check_name("cluster name", cluster_name)?;
        SpiffeId::check_cluster_name(cluster_name).map_err(|problem| CaError::InvalidName {
            what: "cluster name",
            value: cluster_name.to_owned(),
            problem,
        })?;
        let mut sans = trust_domain_san(trust_domain)?;
        sans.push(uri_san(
            format!(
                "spiffe://{trust_domain}/{}{cluster_name}",
                crate::cert::CLUSTER_BINDING_PATH
            ),
            "intermediate cluster URI SAN",
        )?);
        self.intermediate(cluster_name, sans, validity, now)
    }

    /// Issues an intermediate bound to `trust_domain` but to no cluster, as
    /// meshpeer did before cluster bindings. Such intermediates still load
    /// and verify when each cluster has a trust domain of its own; where
    /// clusters share a trust domain, their chains cannot say which cluster
    /// they speak for and are refused. This exists to test and reproduce
    /// that case. Use [`RootCa::issue_intermediate`].
    pub fn issue_trust_domain_intermediate(
        &self,
        cluster_name: &str,
        trust_domain: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<ClusterCa, CaError> {
        let sans = trust_domain_san(trust_domain)?;
        self.intermediate(cluster_name, sans, validity, now)
    }

    /// Issues an intermediate bound to no trust domain, as meshpeer did
    /// before SPEC P6. Such intermediates still load and verify (no flag
    /// day), and `meshpeer check` warns about them; this exists to test
    /// and reproduce that case. Use [`RootCa::issue_intermediate`].
    pub fn issue_unbound_intermediate(
        &self,
        cluster_name: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<ClusterCa, CaError> {
        self.intermediate(cluster_name, Vec::new(), validity, now)
    }

    fn intermediate(
        &self,
        cluster_name: &str,
        sans: Vec<SanType>,
        validity: Duration,
        now: SystemTime,
    ) -> Result<ClusterCa, CaError> {
        check_name("cluster name", cluster_name)?;
        check_issuer(&self.root.facts, now)?;
        let (not_before, not_after) = window(now, Duration::ZERO, validity)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(cluster_name);
        params.subject_alt_names = sans;
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = true;
        let key = generate_key("intermediate key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Generate {
                what: "intermediate certificate",
                source,
            })?;
        ClusterCa::issued(cert, params, key, &self.root)
    }
}

fn trust_domain_san(trust_domain: &str) -> Result<Vec<SanType>, CaError> {
    SpiffeId::check_trust_domain(trust_domain)
        .map_err(|source| CaError::InvalidTrustDomain { source })?;
    Ok(vec![uri_san(
        format!("spiffe://{trust_domain}"),
        "intermediate URI SAN",
    )?])
}

fn uri_san(uri: String, what: &'static str) -> Result<SanType, CaError> {
    Ok(SanType::URI(
        uri.try_into()
            .map_err(|source| CaError::Generate { what, source })?,
    ))
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}
