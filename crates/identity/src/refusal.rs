//! Why a TLS peer was refused, in words for logs and status and in short
//! labels for metrics.

use std::time::SystemTime;

use rustls::{CertificateError, Error as TlsError};

use crate::cert::{self, rfc3339};

/// Why a handshake with a peer failed, classified from a [`rustls::Error`]
/// by [`refusal_reason`].
///
/// Our verifiers (see [`crate::server_config`], [`crate::client_config`])
/// put a `Refusal` into `CertificateError::Other`, except for expiry, which
/// they report as the standard `CertificateError::ExpiredContext` so that the
/// peer receives a `certificate_expired` alert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The peer's chain does not verify to the shared root: unknown issuer or
    /// a signature made by a different key than our root's.
    #[error(
        "peer certificate chain does not lead to the shared root{}",
        root_suffix(.our_root_sha256)
    )]
    UnknownRoot {
        /// SHA-256 fingerprint of our root, when the refusal came from our verifier.
        our_root_sha256: Option<String>,
    },
    /// The peer's leaf or intermediate has expired.
    #[error("peer certificate expired{}", expiry_suffix(.not_after))]
    Expired {
        /// The expired certificate's notAfter, when known.
        not_after: Option<SystemTime>,
    },
    /// The peer's SPIFFE trust domain is not one we accept.
    #[error("peer trust domain is {got}, expected {}", expected_list(.expected))]
    WrongTrustDomain {
        /// The trust domains we accept (sorted).
        expected: Vec<String>,
        /// The peer's trust domain.
        got: String,
    },
    /// The peer's leaf is of another trust domain than the one its issuing
    /// intermediate is bound to (SPEC P6): that intermediate may not speak
    /// for the leaf's trust domain.
    #[error(
        "peer certificate is for trust domain {got}, but its issuer {issuer} is bound to trust \
         domain {bound}; a cluster's CA may only issue identities of its own trust domain"
    )]
    TrustDomainNotBound {
        /// The leaf's trust domain.
        got: String,
        /// The trust domain its issuer is bound to.
        bound: String,
        /// The issuer's subject.
        issuer: String,
    },
    /// The peer's chain is bound to another cluster than the one we expect
    /// (its intermediate's cluster binding, SPEC P6).
    #[error(
        "peer certificate chain speaks for cluster {got} (its intermediate's cluster binding), expected cluster {expected}"
    )]
    WrongCluster {
        /// The cluster we expect.
        expected: String,
        /// The cluster its intermediate is bound to.
        got: String,
    },
    /// The peer's trust domain is shared by several clusters and its
    /// intermediate is bound to none, so its chain cannot say which
    /// cluster it speaks for.
    #[error(
        "peer certificate {id} is of a trust domain shared by several clusters, but its intermediate carries no cluster binding (spiffe://<td>/meshpeer/cluster/<name>), so it cannot say which cluster it speaks for; re-issue the intermediate with meshpeer certs cluster"
    )]
    NoClusterBinding {
        /// The peer's SPIFFE ID.
        id: String,
    },
    /// The peer's SPIFFE ID is not one we accept (e.g. a server that is not
    /// the controller).
    #[error("peer identity is {got}, expected {}", expected_list(.expected))]
    WrongIdentity {
        /// The identities we accept (sorted).
        expected: Vec<String>,
        /// The peer's SPIFFE ID.
        got: String,
    },
    /// The peer's leaf does not carry exactly one valid SPIFFE URI SAN.
    #[error("peer certificate has no usable SPIFFE ID: {detail}")]
    NoSpiffeId {
        /// What is wrong, e.g. "it has no URI SAN".
        detail: String,
    },
    /// The peer aborted the handshake with a TLS alert, typically because it
    /// refused our certificate; the peer's own logs and status say why.
    #[error(
        "peer aborted the handshake with TLS alert {alert} \
         (it may have refused our certificate; its logs say why)"
    )]
    RefusedByPeer {
        /// The alert, e.g. `CertificateExpired`, `UnknownCA`, `CertificateUnknown`.
        alert: String,
    },
    /// Anything else, with rustls' description.
    #[error("{0}")]
    Other(String),
}

impl Refusal {
    /// A stable short label for metrics: `unknown_root`, `expired`,
    /// `wrong_trust_domain`, `trust_domain_not_bound`, `wrong_identity`,
    /// `wrong_cluster`, `no_cluster_binding`,
    /// `no_spiffe_id`, `refused_by_peer` or `other`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnknownRoot { .. } => "unknown_root",
            Refusal::Expired { .. } => "expired",
            Refusal::WrongTrustDomain { .. } => "wrong_trust_domain",
            Refusal::TrustDomainNotBound { .. } => "trust_domain_not_bound",
            Refusal::WrongIdentity { .. } => "wrong_identity",
            Refusal::WrongCluster { .. } => "wrong_cluster",
            Refusal::NoClusterBinding { .. } => "no_cluster_binding",
            Refusal::NoSpiffeId { .. } => "no_spiffe_id",
            Refusal::RefusedByPeer { .. } => "refused_by_peer",
            Refusal::Other(_) => "other",
        }
    }
}

/// Classifies any handshake error: our verifiers' refusals keep their
/// context; rustls' standard certificate errors and received alerts are
/// mapped to the closest variant; everything else is [`Refusal::Other`].
pub fn refusal_reason(err: &TlsError) -> Refusal {
    match err {
        TlsError::InvalidCertificate(cert_err) => match cert_err {
            CertificateError::Other(other) => match other.0.downcast_ref::<Refusal>() {
                Some(refusal) => refusal.clone(),
                None => Refusal::Other(err.to_string()),
            },
            CertificateError::ExpiredContext { not_after, .. } => Refusal::Expired {
                not_after: Some(cert::from_unix(
                    i64::try_from(not_after.as_secs()).unwrap_or(i64::MAX),
                )),
            },
            CertificateError::Expired => Refusal::Expired { not_after: None },
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Refusal::UnknownRoot {
                    our_root_sha256: None,
                }
            }
            _ => Refusal::Other(err.to_string()),
        },
        TlsError::AlertReceived(alert) => Refusal::RefusedByPeer {
            alert: format!("{alert:?}"),
        },
        TlsError::NoCertificatesPresented => Refusal::NoSpiffeId {
            detail: "the peer presented no certificate".to_owned(),
        },
        _ => Refusal::Other(err.to_string()),
    }
}

/// [`refusal_reason`] for the `std::io::Error` that tokio-rustls returns
/// (it wraps the `rustls::Error`). An alert that layers above (h2, hyper)
/// passed on only as text, "received fatal alert: X", still becomes
/// [`Refusal::RefusedByPeer`]; other I/O errors become [`Refusal::Other`].
pub fn refusal_reason_io(err: &std::io::Error) -> Refusal {
    if let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    {
        return refusal_reason(tls);
    }
    let text = err.to_string();
    match text.strip_prefix("received fatal alert: ") {
        Some(alert) => Refusal::RefusedByPeer {
            alert: alert.to_owned(),
        },
        None => Refusal::Other(text),
    }
}

fn root_suffix(fingerprint: &Option<String>) -> String {
    match fingerprint {
        Some(fp) => format!(" (our root SHA-256 {fp})"),
        None => String::new(),
    }
}

fn expiry_suffix(not_after: &Option<SystemTime>) -> String {
    match not_after {
        Some(t) => format!(" at {}", rfc3339(*t)),
        None => String::new(),
    }
}

fn expected_list(expected: &[String]) -> String {
    match expected {
        [] => "none (no trust domain is allowed)".to_owned(),
        [one] => one.clone(),
        many => format!("one of {}", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::OtherError;
    use rustls_pki_types::UnixTime;

    use super::*;

    #[test]
    fn c6_p6_refusals_read_well_and_have_stable_labels() {
        let cases = [
            (
                Refusal::UnknownRoot {
                    our_root_sha256: Some("AB:CD".into()),
                },
                "peer certificate chain does not lead to the shared root (our root SHA-256 AB:CD)",
                "unknown_root",
            ),
            (
                Refusal::Expired {
                    not_after: Some(cert::from_unix(1_795_316_400)),
                },
                "peer certificate expired at 2026-11-22T03:00:00Z",
                "expired",
            ),
            (
                Refusal::WrongTrustDomain {
                    expected: vec!["cluster2".into()],
                    got: "cluster3".into(),
                },
                "peer trust domain is cluster3, expected cluster2",
                "wrong_trust_domain",
            ),
            (
                Refusal::WrongTrustDomain {
                    expected: vec!["a".into(), "b".into()],
                    got: "c".into(),
                },
                "peer trust domain is c, expected one of a, b",
                "wrong_trust_domain",
            ),
            (
                Refusal::NoSpiffeId {
                    detail: "it has no URI SAN".into(),
                },
                "peer certificate has no usable SPIFFE ID: it has no URI SAN",
                "no_spiffe_id",
            ),
            (
                Refusal::TrustDomainNotBound {
                    got: "cluster2".into(),
                    bound: "cluster1".into(),
                    issuer: "CN=cluster1, O=meshpeer".into(),
                },
                "peer certificate is for trust domain cluster2, but its issuer CN=cluster1, \
                 O=meshpeer is bound to trust domain cluster1; a cluster's CA may only issue \
                 identities of its own trust domain",
                "trust_domain_not_bound",
            ),
            (
                Refusal::WrongIdentity {
                    expected: vec!["spiffe://c1/ns/istio-system/sa/meshpeer".into()],
                    got: "spiffe://c1/ns/a/sa/b".into(),
                },
                "peer identity is spiffe://c1/ns/a/sa/b, expected \
                 spiffe://c1/ns/istio-system/sa/meshpeer",
                "wrong_identity",
            ),
            (Refusal::Other("x".into()), "x", "other"),
        ];
        for (refusal, text, label) in cases {
            assert_eq!(refusal.to_string(), text);
            assert_eq!(refusal.reason(), label);
        }
    }

    #[test]
    fn c6_refusal_survives_the_trip_through_rustls_errors() {
        let refusal = Refusal::WrongTrustDomain {
            expected: vec!["cluster2".into()],
            got: "cluster3".into(),
        };
        let err = TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            refusal.clone(),
        ))));
        assert_eq!(refusal_reason(&err), refusal);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        assert_eq!(refusal_reason_io(&io), refusal);

        let expired = TlsError::InvalidCertificate(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_795_316_500)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_795_316_400)),
        });
        assert_eq!(
            refusal_reason(&expired).to_string(),
            "peer certificate expired at 2026-11-22T03:00:00Z"
        );
        assert_eq!(
            refusal_reason(&TlsError::AlertReceived(
                rustls::AlertDescription::CertificateExpired
            ))
            .reason(),
            "refused_by_peer"
        );
        assert_eq!(
            refusal_reason(&TlsError::General("boom".into())).reason(),
            "other"
        );
        let as_text = std::io::Error::other(
            TlsError::AlertReceived(rustls::AlertDescription::UnknownCA).to_string(),
        );
        assert_eq!(
            refusal_reason_io(&as_text),
            Refusal::RefusedByPeer {
                alert: "UnknownCA".into()
            }
        );
        assert_eq!(
            refusal_reason_io(&std::io::Error::other("connection reset")),
            Refusal::Other("connection reset".into())
        );
    }
}
