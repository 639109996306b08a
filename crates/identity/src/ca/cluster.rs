//! A cluster's intermediate CA and the leaves it issues.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use super::leaf::{Leaf, SignedChain};
use super::{
    CA_CERT_FILE, CA_EXPIRED_HINT, CA_KEY_FILE, CACERTS_HINT, CERT_CHAIN_FILE, CaError,
    LEAF_BACKDATE, ROOT_CERT_FILE, ROOT_EXPIRED_HINT, TrustRoot, check_issuer, check_key,
    check_window, generate_key, issuer_from, to_offset, window,
};
use crate::cert::{self, CertFacts, rfc3339};
use crate::csr::CertificateRequest;
use crate::pem_files::{self, NewFile};
use crate::spiffe::SpiffeId;
use crate::verify;

/// One cluster's intermediate CA, with the shared root it chains to.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    chain_pem: String,
    /// Certificates of `cert-chain.pem` after the intermediate that are not
    /// self-signed: the intermediates between ours and the root.
    chain_tail: Vec<CertificateDer<'static>>,
    facts: CertFacts,
    /// The trust domain of the intermediate's `spiffe://<td>` URI SAN (SPEC
    /// P6); `None` for an intermediate made before bindings existed.
    binding: Option<String>,
    /// The cluster of its `spiffe://<td>/meshpeer/cluster/<name>` URI SAN;
    /// `None` for an intermediate made before cluster bindings.
    cluster_binding: Option<String>,
    root: TrustRoot,
}

impl ClusterCa {
    /// Wraps an intermediate just issued by the root from `params` and `key`.
    pub(super) fn issued(
        cert: rcgen::Certificate,
        params: CertificateParams,
        key: KeyPair,
        root: &TrustRoot,
    ) -> Result<Self, CaError> {
        let cert_pem = cert.pem();
        let bad = |detail| CaError::BadCertificate {
            path: PathBuf::from(CA_CERT_FILE),
            detail,
        };
        let facts = cert::facts(cert.der()).map_err(bad)?;
        let bindings = cert::bindings_of(cert.der()).map_err(bad)?;
        Ok(ClusterCa {
            binding: bindings.trust_domain,
            cluster_binding: bindings.cluster,
            chain_pem: format!("{cert_pem}{}", root.pem),
            cert: cert.der().clone(),
            cert_pem,
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            chain_tail: Vec::new(),
            facts,
            root: root.clone(),
        })
    }

    /// Writes the `cacerts` layout into `dir`, creating it if needed:
    /// `ca-cert.pem`, `ca-key.pem` (mode 0600), `root-cert.pem` and
    /// `cert-chain.pem` (intermediate, then root). Refuses to overwrite existing files.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        pem_files::write_new(
            dir,
            &[
                NewFile {
                    name: CA_CERT_FILE,
                    contents: &self.cert_pem,
                    secret: false,
                },
                NewFile {
                    name: CA_KEY_FILE,
                    contents: &self.key_pem,
                    secret: true,
                },
                NewFile {
                    name: ROOT_CERT_FILE,
                    contents: &self.root.pem,
                    secret: false,
                },
                NewFile {
                    name: CERT_CHAIN_FILE,
                    contents: &self.chain_pem,
                    secret: false,
                },
            ],
        )
    }

    /// Loads a `cacerts` directory and checks, in this order, with a distinct
    /// [`CaError`] for each: all four files exist and parse; `ca-key.pem`
    /// matches `ca-cert.pem`; `cert-chain.pem` starts with `ca-cert.pem`;
    /// `root-cert.pem` and `ca-cert.pem` are valid at `now`; `ca-cert.pem`
    /// chains to `root-cert.pem` (through any further certificates of
    /// `cert-chain.pem`) such that leaves it issues verify.
    pub fn load(dir: &Path, now: SystemTime) -> Result<Self, CaError> {
        Self::load_with(dir, now, |_, path| pem_files::read_text(path, CACERTS_HINT))
    }

    /// The `cacerts` layout held elsewhere than in a folder, e.g. in the data
    /// of Istio's `cacerts` Secret, whose keys are the file names:
    /// `file(name)` gives the contents of [`CA_CERT_FILE`], [`CA_KEY_FILE`],
    /// [`ROOT_CERT_FILE`] and [`CERT_CHAIN_FILE`], `None` for one that is
    /// not there. Errors name each file as `source/<name>`. The same checks,
    /// in the same order, as [`ClusterCa::load`].
    pub fn from_pem<'a>(
        source: &Path,
        file: impl Fn(&str) -> Option<&'a [u8]>,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        Self::load_with(source, now, |name, path| match file(name) {
            Some(bytes) => pem_files::text_of(bytes.to_vec(), path),
            None => Err(CaError::Missing {
                path: path.to_owned(),
                hint: CACERTS_HINT,
            }),
        })
    }

    /// [`ClusterCa::load`] with `read(name, dir/name)` giving the text of each file.
    fn load_with(
        dir: &Path,
        now: SystemTime,
        read: impl Fn(&str, &Path) -> Result<String, CaError>,
    ) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let root_path = dir.join(ROOT_CERT_FILE);
        let chain_path = dir.join(CERT_CHAIN_FILE);
        let cert = pem_files::parse_cert(read(CA_CERT_FILE, &cert_path)?, &cert_path)?;
        let key = pem_files::parse_key(read(CA_KEY_FILE, &key_path)?, &key_path)?;
        let root = pem_files::parse_cert(read(ROOT_CERT_FILE, &root_path)?, &root_path)?;
        let chain = pem_files::parse_certs(read(CERT_CHAIN_FILE, &chain_path)?, &chain_path)?;

        let bad = |detail| CaError::BadCertificate {
            path: cert_path.clone(),
            detail,
        };
        let facts = cert::facts(&cert.value).map_err(bad)?;
        // An intermediate without a binding (made before SPEC P6) still loads.
        let bindings = cert::bindings_of(&cert.value).map_err(bad)?;
        let root = TrustRoot::new(root.value, root.text, &root_path)?;
        check_key(&facts, &key.value, &key_path, &cert_path)?;
        if chain.value.first() != Some(&cert.value) {
            return Err(CaError::ChainMismatch {
                chain_path,
                cert_path,
            });
        }
        check_window(&root.facts, &root_path, now, ROOT_EXPIRED_HINT)?;
        check_window(&facts, &cert_path, now, CA_EXPIRED_HINT)?;
        let chain_tail = chain
            .value
            .iter()
            .skip(1)
            .filter(|c| !cert::is_self_signed(c))
            .cloned()
            .collect();
        let ca = ClusterCa {
            issuer: issuer_from(&cert.value, key.value, &cert_path)?,
            cert: cert.value,
            cert_pem: cert.text,
            key_pem: key.text,
            chain_pem: chain.text,
            chain_tail,
            facts,
            binding: bindings.trust_domain,
            cluster_binding: bindings.cluster,
            root,
        };
        ca.check_issues_verifiable_leaves(now, cert_path, root_path)?;
        Ok(ca)
    }

    /// Issues a probe leaf and verifies it the way a peer would.
    fn check_issues_verifiable_leaves(
        &self,
        now: SystemTime,
        cert_path: PathBuf,
        root_path: PathBuf,
    ) -> Result<(), CaError> {
        let probe_td = self.binding().unwrap_or("probe.invalid");
        let probe_id =
            SpiffeId::new(probe_td, "probe", "probe").map_err(|err| CaError::Unusable {
                cert_path: cert_path.clone(),
                detail: err.to_string(),
            })?;
        let probe = self.issue_leaf(&probe_id, Duration::from_secs(60), now)?;
        let Some((end_entity, intermediates)) = probe.chain.split_first() else {
            return Ok(());
        };
        let time = UnixTime::since_unix_epoch(Duration::from_secs(
            cert::to_unix(now).max(0).unsigned_abs(),
        ));
        match verify::verify_chain(&self.root, end_entity, intermediates, time, true) {
            Ok(_) => Ok(()),
            Err(err) if verify::is_wrong_root(&err) => Err(CaError::NotSignedByRoot {
                cert_path,
                root_path,
                root_sha256: self.root.sha256_fingerprint().to_owned(),
            }),
            Err(err) => Err(CaError::Unusable {
                cert_path,
                detail: err.to_string(),
            }),
        }
    }

    /// The shared root this intermediate chains to (`root-cert.pem`).
    pub fn trust_root(&self) -> &TrustRoot {
        &self.root
    }

    /// The intermediate certificate (`ca-cert.pem`).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The intermediate's notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.facts.not_after
    }

    /// The trust domain this intermediate is bound to (its `spiffe://<td>`
    /// URI SAN, SPEC P6), or `None` for an intermediate made before
    /// bindings existed, which may issue for any trust domain.
    pub fn binding(&self) -> Option<&str> {
        self.binding.as_deref()
    }

    /// The cluster this intermediate is bound to (its
    /// `spiffe://<td>/meshpeer/cluster/<name>` URI SAN, written by the
    /// root's holder), or `None` for an intermediate made before cluster
    /// bindings. Peers read it from the chains this CA issues to tell
    /// clusters of one trust domain apart.
    pub fn cluster_binding(&self) -> Option<&str> {
        self.cluster_binding.as_deref()
    }

    /// Issues a leaf for `id`: ECDSA P-256, empty subject, the SPIFFE ID as
    /// its only SAN (a URI, marked critical), not a CA, key usage
    /// digitalSignature, extended key usages serverAuth and clientAuth.
    ///
    /// Valid from `now` minus [`LEAF_BACKDATE`] until `now + validity`, but
    /// never past the intermediate's notAfter. Fails if the intermediate has
    /// expired at `now`, or is bound to another trust domain than `id`'s
    /// ([`CaError::TrustDomainNotBound`]).
    pub fn issue_leaf(
        &self,
        id: &SpiffeId,
        validity: Duration,
        now: SystemTime,
    ) -> Result<Leaf, CaError> {
        self.issue_server_leaf(id, &[], validity, now)
    }

    /// [`ClusterCa::issue_leaf`] with DNS names and IP addresses as SANs
    /// after the SPIFFE ID, for a listener that clients reach by name or
    /// address and check it against them (Istio's CA clients, ztunnel's
    /// among them, check `CA_ADDRESS`'s host this way). An entry that
    /// parses as an IP address is an IP SAN, any other a DNS name.
    pub fn issue_server_leaf(
        &self,
        id: &SpiffeId,
        names: &[String],
        validity: Duration,
        now: SystemTime,
    ) -> Result<Leaf, CaError> {
        let key = generate_key("leaf key")?;
        let signed = self.sign_with_names(&key, id, names, validity, now)?;
        Ok(Leaf {
            chain: signed.chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before: signed.not_before,
            not_after: signed.not_after,
        })
    }

    /// Signs a leaf for `id` over the public key of `request` (whose
    /// signature [`CertificateRequest::from_pem`] checked), exactly as
    /// [`ClusterCa::issue_leaf`] would: only the key comes from the request;
    /// names, usages and validity are ours. Checking that `id` is what the
    /// requester may have is the caller's job.
    pub fn sign_request(
        &self,
        request: &CertificateRequest,
        id: &SpiffeId,
        validity: Duration,
        now: SystemTime,
    ) -> Result<SignedChain, CaError> {
        self.sign(request.public_key(), id, validity, now)
    }

    fn sign(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        validity: Duration,
        now: SystemTime,
    ) -> Result<SignedChain, CaError> {
        self.sign_with_names(public_key, id, &[], validity, now)
    }

    fn sign_with_names(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        names: &[String],
        validity: Duration,
        now: SystemTime,
    ) -> Result<SignedChain, CaError> {
        if let Some(binding) = self.binding()
            && binding != id.trust_domain()
        {
            return Err(CaError::TrustDomainNotBound {
                subject: self.facts.subject.clone(),
                binding: binding.to_owned(),
                requested: id.to_string(),
            });
        }
        check_issuer(&self.facts, now)?;
        let (not_before, mut not_after) = window(now, LEAF_BACKDATE, validity)?;
        let ca_not_after = to_offset(cert::to_unix(self.facts.not_after), now, validity)?;
        not_after = not_after.min(ca_not_after);
        let uri = id
            .to_string()
            .try_into()
            .map_err(|source| CaError::Generate {
                what: "leaf URI SAN",
                source,
            })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().map_err(|source| {
                    CaError::Generate {
                        what: "leaf DNS SAN",
                        source,
                    }
                })?),
            };
            params.subject_alt_names.push(san);
        }
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|source| CaError::Generate {
                what: "leaf certificate",
                source,
            })?;
        let mut chain = Vec::with_capacity(2 + self.chain_tail.len());
        chain.push(cert.der().clone());
        chain.push(self.cert.clone());
        chain.extend(self.chain_tail.iter().cloned());
        Ok(SignedChain {
            chain,
            not_before: cert::from_unix(not_before.unix_timestamp()),
            not_after: cert::from_unix(not_after.unix_timestamp()),
        })
    }
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("subject", &self.facts.subject)
            .field("not_after", &rfc3339(self.facts.not_after))
            .field("binding", &self.binding)
            .field("cluster_binding", &self.cluster_binding)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}
