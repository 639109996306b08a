//! Certificate signing requests (PKCS#10), as a CA receives them and as a
//! component without the CA key makes them (SPEC P7).

use std::fmt;

use rcgen::{CertificateParams, CertificateSigningRequestParams, DistinguishedName, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::ca::CaError;
use crate::spiffe::{SpiffeId, SpiffeIdError};

/// The longest CSR accepted, in bytes of PEM. A P-256 request with one
/// SPIFFE ID is under 1 KiB.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// A certificate signing request whose signature verifies (the requester
/// holds the private key), with the names it asks for.
pub struct CertificateRequest {
    public_key: rcgen::PublicKey,
    names: Vec<String>,
    uris: Vec<String>,
}

/// Why a CSR cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a PEM `CERTIFICATE REQUEST`, or a malformed one.
    #[error("the CSR cannot be read: {detail}")]
    Unreadable {
        /// What is wrong.
        detail: String,
    },
    /// The CSR's signature does not verify: its sender does not hold the key.
    #[error("the CSR's signature does not verify with its own public key")]
    BadSignature,
    /// The CSR does not name exactly one URI (and nothing else).
    #[error(
        "the CSR must ask for exactly one name, a URI SAN with the SPIFFE ID; it asks for {}",
        names_text(.names)
    )]
    Names {
        /// Every SAN of the request, as `URI:...`, `DNS:...`, `IP:...`.
        names: Vec<String>,
    },
    /// The one URI is not a SPIFFE ID.
    #[error("the CSR's URI SAN is not a SPIFFE ID: {0}")]
    NotSpiffe(#[source] SpiffeIdError),
}

fn names_text(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

impl CertificateRequest {
    /// Parses a PEM CSR and verifies its signature. At most [`MAX_CSR_LEN`]
    /// bytes; extensions other than subjectAltName, key usages and basic
    /// constraints are refused (none of which we copy into certificates).
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        if pem.len() > MAX_CSR_LEN {
            return Err(CsrError::Unreadable {
                detail: format!("it is {} bytes long; at most {MAX_CSR_LEN}", pem.len()),
            });
        }
        let params = CertificateSigningRequestParams::from_pem(pem).map_err(|err| match err {
            rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
            other => CsrError::Unreadable {
                detail: other.to_string(),
            },
        })?;
        let mut names = Vec::new();
        let mut uris = Vec::new();
        for san in &params.params.subject_alt_names {
            names.push(match san {
                SanType::URI(uri) => {
                    uris.push(uri.as_str().to_owned());
                    format!("URI:{}", uri.as_str())
                }
                SanType::DnsName(name) => format!("DNS:{}", name.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                SanType::Rfc822Name(mail) => format!("email:{}", mail.as_str()),
                SanType::OtherName(_) => "otherName".to_owned(),
                _ => "unknown SAN".to_owned(),
            });
        }
        Ok(CertificateRequest {
            public_key: params.public_key,
            names,
            uris,
        })
    }

    /// Every subject alternative name asked for (`URI:...`, `DNS:...`, ...).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The one identity asked for: the request names exactly one SAN, a URI,
    /// and it is a SPIFFE ID.
    pub fn spiffe_id(&self) -> Result<SpiffeId, CsrError> {
        match (self.uris.as_slice(), self.names.len()) {
            ([uri], 1) => uri.parse().map_err(CsrError::NotSpiffe),
            _ => Err(CsrError::Names {
                names: self.names.clone(),
            }),
        }
    }

    pub(crate) fn public_key(&self) -> &rcgen::PublicKey {
        &self.public_key
    }

    /// A new ECDSA P-256 key and a PEM CSR for `id` (one URI SAN, empty
    /// subject), as ztunnel and Istio's agents make them.
    pub fn generate(id: &SpiffeId) -> Result<(String, PrivateKeyDer<'static>), CaError> {
        let key = crate::ca::generate_key("leaf key")?;
        let uri = id
            .to_string()
            .try_into()
            .map_err(|source| CaError::Generate {
                what: "CSR URI SAN",
                source,
            })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|source| CaError::Generate {
                what: "certificate signing request",
                source,
            })?;
        Ok((
            csr,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ))
    }
}

impl fmt::Debug for CertificateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRequest")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p7_generated_request_round_trips_with_its_identity() {
        let id = SpiffeId::new("cluster1", "istio-system", "meshpeer-proxy").unwrap();
        let (pem, _key) = CertificateRequest::generate(&id).unwrap();
        let request = CertificateRequest::from_pem(&pem).unwrap();
        assert_eq!(request.spiffe_id().unwrap(), id);
        assert_eq!(
            request.names(),
            ["URI:spiffe://cluster1/ns/istio-system/sa/meshpeer-proxy"]
        );
    }

    #[test]
    fn p7_requests_that_are_not_one_spiffe_id_are_refused_with_the_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let request = |sans: Vec<SanType>| {
            let mut params = CertificateParams::default();
            params.subject_alt_names = sans;
            let pem = params.serialize_request(&key).unwrap().pem().unwrap();
            CertificateRequest::from_pem(&pem).unwrap()
        };
        let uri = |s: &str| SanType::URI(s.try_into().unwrap());
        let two = request(vec![
            uri("spiffe://c1/ns/a/sa/b"),
            SanType::DnsName("x.example".try_into().unwrap()),
        ]);
        assert_eq!(
            two.spiffe_id().unwrap_err().to_string(),
            "the CSR must ask for exactly one name, a URI SAN with the SPIFFE ID; it asks for \
             URI:spiffe://c1/ns/a/sa/b, DNS:x.example"
        );
        let none = request(Vec::new());
        assert!(none.spiffe_id().unwrap_err().to_string().ends_with("none"));
        let not_spiffe = request(vec![uri("https://example.com/x")]);
        assert!(matches!(
            not_spiffe.spiffe_id(),
            Err(CsrError::NotSpiffe(_))
        ));
        assert!(matches!(
            CertificateRequest::from_pem(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            ),
            Err(CsrError::Unreadable { .. })
        ));
        assert!(matches!(
            CertificateRequest::from_pem(&"x".repeat(MAX_CSR_LEN + 1)),
            Err(CsrError::Unreadable { .. })
        ));
    }
}
