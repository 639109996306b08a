//! Verifying peers: the chain must lead to the shared root, the leaf must
//! carry exactly one SPIFFE URI whose trust domain we accept, and every CA
//! on the way that is bound to a trust domain must be bound to the leaf's
//! (SPEC P6). rustls never
//! looks at URI SANs, so both rustls verifier traits are implemented here.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::debug;

use crate::ca::TrustRoot;
use crate::cert;
use crate::refusal::Refusal;
use crate::spiffe::SpiffeId;

/// Which SPIFFE trust domains a server accepts from clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Any trust domain, as long as the chain leads to the shared root.
    AnyTrustDomain,
    /// Only these trust domains (an empty set refuses every client).
    TrustDomains(BTreeSet<String>),
}

/// The SPIFFE ID of a verified peer's leaf (`certs[0]`), e.g. from
/// `tokio_rustls` `get_ref().1.peer_certificates()` after the handshake.
///
/// Only parses: it does not verify the chain, which the handshake did.
/// Fails with [`Refusal::NoSpiffeId`] if `certs` is empty or the leaf does
/// not carry exactly one URI SAN that is a valid SPIFFE ID.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, Refusal> {
    let leaf = certs.first().ok_or_else(|| Refusal::NoSpiffeId {
        detail: "the peer presented no certificate".to_owned(),
    })?;
    cert::spiffe_id_of(leaf).map_err(|detail| Refusal::NoSpiffeId { detail })
}

/// Verifies `end_entity` through `intermediates` to `root` at `now`, for
/// server authentication (`server_auth`) or client authentication.
/// Returns the intermediates of the verified path, the leaf's issuer first.
pub(crate) fn verify_chain(
    root: &TrustRoot,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    server_auth: bool,
) -> Result<Vec<CertificateDer<'static>>, webpki::Error> {
    let cert = webpki::EndEntityCert::try_from(end_entity)?;
    let usage = if server_auth {
        webpki::KeyUsage::server_auth()
    } else {
        webpki::KeyUsage::client_auth()
    };
    cert.verify_for_usage(
        algorithms().all,
        std::slice::from_ref(&root.anchor),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map(|path| {
        path.intermediate_certificates()
            .map(|c| c.der().into_owned())
            .collect()
    })
}

/// SPEC P6: every CA of a verified path that is bound to a trust domain
/// must be bound to the leaf's. Unbound CAs (made before bindings) pass.
///
/// Returns the cluster the chain speaks for: the cluster binding of the CA
/// the root signed (the last of `path`), which only the root's holder can
/// have written. A cluster binding on a CA below it (one a cluster could
/// have made, were its CA allowed to sign CAs) must agree with it, or the
/// chain is refused; the leaf's own SANs never name a cluster.
pub(crate) fn check_bindings(
    leaf: &SpiffeId,
    path: &[CertificateDer<'static>],
) -> Result<Option<String>, Refusal> {
    let mut top = None;
    let mut below = Vec::new();
    for (i, ca) in path.iter().enumerate() {
        let issuer = || {
            cert::facts(ca)
                .map(|f| f.subject)
                .unwrap_or_else(|_| "(unreadable subject)".to_owned())
        };
        let bindings = cert::bindings_of(ca).map_err(|detail| {
            Refusal::Other(format!(
                "peer certificate's issuer {} has an unusable trust domain binding: {detail}",
                issuer()
            ))
        })?;
        if let Some(bound) = bindings.trust_domain
            && bound != leaf.trust_domain()
        {
            return Err(Refusal::TrustDomainNotBound {
                got: leaf.trust_domain().to_owned(),
                bound,
                issuer: issuer(),
            });
        }
        if let Some(cluster) = bindings.cluster {
            if i + 1 == path.len() {
                top = Some(cluster);
            } else {
                below.push((cluster, issuer()));
            }
        }
    }
    for (cluster, issuer) in below {
        if top.as_deref() != Some(cluster.as_str()) {
            return Err(Refusal::Other(format!(
                "peer certificate's issuer {issuer} claims cluster {cluster}, but the CA the root signed on its path is bound to {}; only the root's holder binds a CA to a cluster",
                top.as_deref().unwrap_or("no cluster")
            )));
        }
    }
    Ok(top)
}

/// A peer whose chain was verified to the shared root: its SPIFFE ID (from
/// its leaf) and the cluster its chain speaks for (from the cluster binding
/// of the intermediate the root signed, SPEC P6; never from the leaf).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPeer {
    /// The leaf's SPIFFE ID.
    pub id: SpiffeId,
    /// The cluster binding of the peer's intermediate; `None` when it has
    /// none (made before cluster bindings).
    pub cluster: Option<String>,
}

impl VerifiedPeer {
    /// Whether this peer may be the cluster `cluster` of trust domain
    /// `trust_domain` that a local link or caller names: same trust domain,
    /// and, when the chain is bound to a cluster, that cluster. A chain
    /// without a cluster binding matches on the trust domain alone, which
    /// tells clusters apart only when each has a trust domain of its own:
    /// callers check [`VerifiedPeer::cluster`] first where trust domains are
    /// shared.
    pub fn is(&self, trust_domain: &str, cluster: &str) -> bool {
        self.id.trust_domain() == trust_domain
            && self.cluster.as_deref().is_none_or(|c| c == cluster)
    }
}

impl std::fmt::Display for VerifiedPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cluster {
            Some(c) => write!(f, "{} (cluster {c})", self.id),
            None => write!(f, "{} (no cluster binding)", self.id),
        }
    }
}

/// A client's identity after a handshake that `server_config` verified,
/// from `tokio_rustls` `get_ref().1.peer_certificates()`: its SPIFFE ID and
/// the cluster of its chain. The chain is verified again to `root` (now,
/// for client authentication) so that the cluster is read from the path
/// that leads to the root, not from whatever else the client sent along.
pub fn verified_client(
    root: &TrustRoot,
    certs: &[CertificateDer<'_>],
) -> Result<VerifiedPeer, Refusal> {
    verified(root, certs, false)
}

/// [`verified_client`] for a server (after `client_config`'s handshake).
pub fn verified_server(
    root: &TrustRoot,
    certs: &[CertificateDer<'_>],
) -> Result<VerifiedPeer, Refusal> {
    verified(root, certs, true)
}

fn verified(
    root: &TrustRoot,
    certs: &[CertificateDer<'_>],
    server_auth: bool,
) -> Result<VerifiedPeer, Refusal> {
    let (leaf, intermediates) = certs.split_first().ok_or_else(|| Refusal::NoSpiffeId {
        detail: "the peer presented no certificate".to_owned(),
    })?;
    let now = UnixTime::now();
    let path = verify_chain(root, leaf, intermediates, now, server_auth).map_err(|err| {
        if is_wrong_root(&err) {
            Refusal::UnknownRoot {
                our_root_sha256: Some(root.sha256_fingerprint().to_owned()),
            }
        } else {
            Refusal::Other(format!("peer certificate chain is not acceptable: {err}"))
        }
    })?;
    let id = cert::spiffe_id_of(leaf).map_err(|detail| Refusal::NoSpiffeId { detail })?;
    let cluster = check_bindings(&id, &path)?;
    Ok(VerifiedPeer { id, cluster })
}

/// Whether a chain failure means "not issued under this root" (as opposed
/// to a malformed or misused certificate).
pub(crate) fn is_wrong_root(err: &webpki::Error) -> bool {
    matches!(
        err,
        webpki::Error::UnknownIssuer
            | webpki::Error::InvalidSignatureForPublicKey
            | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
            | webpki::Error::CertDistrusted
    )
}

/// aws-lc-rs' signature algorithms (rustls keeps its table private).
static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> = LazyLock::new(|| {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
});

fn algorithms() -> WebPkiSupportedAlgorithms {
    *ALGORITHMS
}

/// The check both sides run; the two rustls traits below only adapt it.
#[derive(Debug)]
pub(crate) struct PeerVerifier {
    root: TrustRoot,
    /// Accepted trust domains; `None` accepts any.
    trust_domains: Option<BTreeSet<String>>,
    /// Accepted identities; `None` accepts any (within `trust_domains`).
    identities: Option<BTreeSet<SpiffeId>>,
    /// The cluster the peer's chain must be bound to (SPEC P6): `None`
    /// any; `Some((cluster, required))`: a chain bound to another cluster is
    /// refused, and so is one bound to none when `required`.
    cluster: Option<(String, bool)>,
    /// `(trust domain, cluster)`: a peer of that trust domain must be of
    /// that cluster (its chain bound to it), e.g. clients of a cluster's
    /// own listener where other clusters share its trust domain.
    own_cluster: Option<(String, String)>,
    /// Server side: whether a client must present a certificate.
    client_auth_mandatory: bool,
    root_subjects: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    pub(crate) fn new(root: &TrustRoot, policy: PeerPolicy) -> Self {
        let root_subjects = vec![DistinguishedName::in_sequence(root.anchor.subject.as_ref())];
        PeerVerifier {
            root: root.clone(),
            trust_domains: match policy {
                PeerPolicy::AnyTrustDomain => None,
                PeerPolicy::TrustDomains(set) => Some(set),
            },
            identities: None,
            cluster: None,
            own_cluster: None,
            client_auth_mandatory: true,
            root_subjects,
            algorithms: algorithms(),
        }
    }

    /// Accepts exactly `ids` (a server that must be the controller).
    pub(crate) fn only(mut self, ids: BTreeSet<SpiffeId>) -> Self {
        self.identities = Some(ids);
        self
    }

    /// Accepts only chains bound to `cluster` (and chains bound to no
    /// cluster unless `required`).
    pub(crate) fn of_cluster(mut self, cluster: &str, required: bool) -> Self {
        self.cluster = Some((cluster.to_owned(), required));
        self
    }

    /// Peers of `trust_domain` must have chains bound to `cluster`; peers
    /// of other trust domains are not checked here.
    pub(crate) fn within_cluster(mut self, trust_domain: &str, cluster: &str) -> Self {
        self.own_cluster = Some((trust_domain.to_owned(), cluster.to_owned()));
        self
    }

    /// Server side: lets clients connect without a certificate (those that
    /// present one are still verified in full).
    pub(crate) fn client_certificate_optional(mut self) -> Self {
        self.client_auth_mandatory = false;
        self
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        server_auth: bool,
    ) -> Result<SpiffeId, TlsError> {
        let result = self.check(end_entity, intermediates, now, server_auth);
        if let Err(err) = &result {
            let refusal = crate::refusal::refusal_reason(err);
            debug!(reason = refusal.reason(), %refusal, "refusing peer certificate");
        }
        result
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        server_auth: bool,
    ) -> Result<SpiffeId, TlsError> {
        let path = verify_chain(&self.root, end_entity, intermediates, now, server_auth).map_err(
            |err| match err {
                webpki::Error::CertExpired { time, not_after } => {
                    TlsError::InvalidCertificate(CertificateError::ExpiredContext {
                        time,
                        not_after,
                    })
                }
                webpki::Error::CertNotValidYet { time, not_before } => {
                    TlsError::InvalidCertificate(CertificateError::NotValidYetContext {
                        time,
                        not_before,
                    })
                }
                err if is_wrong_root(&err) => refuse(Refusal::UnknownRoot {
                    our_root_sha256: Some(self.root.sha256_fingerprint().to_owned()),
                }),
                err => refuse(Refusal::Other(format!(
                    "peer certificate chain is not acceptable: {err}"
                ))),
            },
        )?;
        let id = cert::spiffe_id_of(end_entity)
            .map_err(|detail| refuse(Refusal::NoSpiffeId { detail }))?;
        if let Some(allowed) = &self.trust_domains
            && !allowed.contains(id.trust_domain())
        {
            return Err(refuse(Refusal::WrongTrustDomain {
                expected: allowed.iter().cloned().collect(),
                got: id.trust_domain().to_owned(),
            }));
        }
        let bound = check_bindings(&id, &path).map_err(refuse)?;
        if let Some((expected, required)) = &self.cluster {
            match &bound {
                Some(got) if got != expected => {
                    return Err(refuse(Refusal::WrongCluster {
                        expected: expected.clone(),
                        got: got.clone(),
                    }));
                }
                None if *required => {
                    return Err(refuse(Refusal::NoClusterBinding { id: id.to_string() }));
                }
                _ => {}
            }
        }
        if let Some((td, cluster)) = &self.own_cluster
            && id.trust_domain() == td
        {
            match &bound {
                Some(got) if got == cluster => {}
                Some(got) => {
                    return Err(refuse(Refusal::WrongCluster {
                        expected: cluster.clone(),
                        got: got.clone(),
                    }));
                }
                None => {
                    return Err(refuse(Refusal::NoClusterBinding { id: id.to_string() }));
                }
            }
        }
        if let Some(allowed) = &self.identities
            && !allowed.contains(&id)
        {
            return Err(refuse(Refusal::WrongIdentity {
                expected: allowed.iter().map(ToString::to_string).collect(),
                got: id.to_string(),
            }));
        }
        Ok(id)
    }
}

fn refuse(refusal: Refusal) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refusal))))
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.client_auth_mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.verify(end_entity, intermediates, now, false)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The client side: the server name is ignored, since our certificates
/// carry only SPIFFE URIs.
impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.verify(end_entity, intermediates, now, true)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        Some(&self.root_subjects)
    }
}
