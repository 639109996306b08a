//! Leaf certificates: the ones a cluster CA issues, and the ones a remote
//! CA hands back, checked before use (SPEC P7).

use std::time::SystemTime;

use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::TrustRoot;
use crate::cert;
use crate::refusal::Refusal;
use crate::spiffe::SpiffeId;
use crate::verify;

/// A leaf certificate and its key, as issued by [`crate::ClusterCa::issue_leaf`]
/// or obtained from a remote CA ([`Leaf::from_issued`]).
#[derive(Debug)]
pub struct Leaf {
    /// The leaf, then the intermediate (then any further certificates of
    /// `cert-chain.pem` short of the root): what a TLS peer is sent.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8, ECDSA P-256).
    pub key: PrivateKeyDer<'static>,
    /// The leaf's notBefore (whole seconds).
    pub not_before: SystemTime,
    /// The leaf's notAfter (whole seconds).
    pub not_after: SystemTime,
}

/// A certificate chain a cluster CA signed for someone else's key
/// ([`crate::ClusterCa::sign_request`]).
#[derive(Debug, Clone)]
pub struct SignedChain {
    /// The leaf, then the intermediate(s), without the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's notBefore (whole seconds).
    pub not_before: SystemTime,
    /// The leaf's notAfter (whole seconds).
    pub not_after: SystemTime,
}

impl SignedChain {
    /// The chain as Istio's CA answers it (`IstioCertificateResponse.cert_chain`):
    /// one PEM certificate per element, the leaf first and `root` last.
    pub fn to_pem_chain(&self, root: &TrustRoot) -> Vec<String> {
        self.chain
            .iter()
            .chain(std::iter::once(root.cert_der()))
            .map(|der| {
                pem::encode_config(
                    &pem::Pem::new("CERTIFICATE", der.to_vec()),
                    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
                )
            })
            .collect()
    }
}

/// Why a chain handed back by a CA cannot be used as our leaf.
#[derive(Debug, thiserror::Error)]
pub enum IssuedError {
    /// The answer holds no certificate.
    #[error("the CA answered without a certificate")]
    Empty,
    /// A PEM block is not a certificate.
    #[error("the CA's answer is not PEM certificates: {detail}")]
    Pem {
        /// What is wrong.
        detail: String,
    },
    /// The chain ends at a root that is not ours.
    #[error(
        "the CA's chain ends at another root (SHA-256 {got}) than ours ({ours}); is --root-cert \
         the shared root of the mesh?"
    )]
    OtherRoot {
        /// Fingerprint of the root it sent.
        got: String,
        /// Fingerprint of our root.
        ours: String,
    },
    /// The leaf does not verify to our root, does not carry the identity we
    /// asked for, or its issuer is bound to another trust domain.
    #[error("the certificate the CA issued is not usable: {0}")]
    Refused(Refusal),
    /// The certificate is not for the key we made.
    #[error("the certificate the CA issued is for another key than the one in our request")]
    WrongKey,
    /// Our own key cannot be read back.
    #[error("cannot read our own key: {detail}")]
    Key {
        /// The key parser's complaint.
        detail: String,
    },
}

impl Leaf {
    /// When the leaf should be replaced: once two thirds of its lifetime have passed.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime * 2 / 3
    }

    /// Whether less than a third of the lifetime remains at `now` (or it has expired).
    pub fn is_due(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }

    /// Our leaf from a CA's answer: `cert_chain` (PEM, leaf first, the root
    /// last or left out, as Istio's CA answers; an element may hold several
    /// certificates) for `key`, which we made for the request.
    ///
    /// Checked as a peer would check it, and more: the chain verifies to
    /// `root` at `now` for both client and server use; its issuers' trust
    /// domain bindings (SPEC P6) agree with the leaf; the leaf carries
    /// exactly `expected`; and it certifies `key`.
    pub fn from_issued(
        cert_chain: &[String],
        key: PrivateKeyDer<'static>,
        root: &TrustRoot,
        expected: &SpiffeId,
        now: SystemTime,
    ) -> Result<Leaf, IssuedError> {
        let mut chain = Vec::new();
        for text in cert_chain {
            for der in CertificateDer::pem_slice_iter(text.as_bytes()) {
                chain.push(der.map_err(|err| IssuedError::Pem {
                    detail: err.to_string(),
                })?);
            }
        }
        if chain.last() == Some(root.cert_der()) {
            chain.pop();
        } else if let Some(last) = chain.last()
            && chain.len() > 1
            && cert::is_self_signed(last)
        {
            return Err(IssuedError::OtherRoot {
                got: cert::sha256_fingerprint(last),
                ours: root.sha256_fingerprint().to_owned(),
            });
        }
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err(IssuedError::Empty);
        };
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            cert::to_unix(now).max(0).unsigned_abs(),
        ));
        let refused = |err: webpki::Error| {
            IssuedError::Refused(if verify::is_wrong_root(&err) {
                Refusal::UnknownRoot {
                    our_root_sha256: Some(root.sha256_fingerprint().to_owned()),
                }
            } else {
                Refusal::Other(format!("its chain is not acceptable: {err}"))
            })
        };
        verify::verify_chain(root, end_entity, intermediates, time, false).map_err(refused)?;
        let path =
            verify::verify_chain(root, end_entity, intermediates, time, true).map_err(refused)?;
        let id = cert::spiffe_id_of(end_entity)
            .map_err(|detail| IssuedError::Refused(Refusal::NoSpiffeId { detail }))?;
        verify::check_bindings(&id, &path).map_err(IssuedError::Refused)?;
        if &id != expected {
            return Err(IssuedError::Refused(Refusal::WrongIdentity {
                expected: vec![expected.to_string()],
                got: id.to_string(),
            }));
        }
        let pair = KeyPair::try_from(&key).map_err(|err| IssuedError::Key {
            detail: err.to_string(),
        })?;
        let facts = cert::facts(end_entity).map_err(|detail| IssuedError::Pem { detail })?;
        if facts.public_key != pair.public_key_raw() {
            return Err(IssuedError::WrongKey);
        }
        Ok(Leaf {
            chain,
            key,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }
}
