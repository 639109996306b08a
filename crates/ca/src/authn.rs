//! Who is calling the signing endpoint, as Istio decides it: a bearer
//! token (a Kubernetes ServiceAccount token checked with a TokenReview, or
//! a token of a static file in file mode), or a client certificate of this
//! cluster's trust domain (renewal). Each way is an [`Authenticator`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use meshpeer_identity::SpiffeId;

/// What the endpoint knows about one call, before authentication.
#[derive(Clone, Debug, Default)]
pub struct CallInfo {
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// The token of `authorization: Bearer <token>`, if sent.
    pub bearer: Option<String>,
    /// The SPIFFE ID of the client certificate the TLS layer verified
    /// (chain to the shared root, SPEC P6 bindings), if one was presented.
    pub client_id: Option<SpiffeId>,
}

/// An authenticated caller: a Kubernetes service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// Its pod, when the credential says (a projected token does).
    pub pod: Option<String>,
    /// Which [`Authenticator`] vouched for it ([`Authenticator::name`]).
    pub by: &'static str,
}

impl Caller {
    /// The SPIFFE ID this caller may have in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> Result<SpiffeId, String> {
        SpiffeId::new(trust_domain, &self.namespace, &self.service_account)
            .map_err(|e| e.to_string())
    }
}

/// Why an [`Authenticator`] did not vouch for a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The call carries nothing this authenticator checks (no token, no
    /// client certificate); another may still vouch for it.
    #[error("no credential of this kind")]
    NoCredential,
    /// The token is not one of the static tokens file.
    #[error("the token is not in {file}")]
    UnknownToken {
        /// The tokens file.
        file: String,
    },
    /// The Kubernetes API server did not authenticate the token.
    #[error("the API server did not authenticate the token: {reason}")]
    Rejected {
        /// What it said.
        reason: String,
    },
    /// The token is not a ServiceAccount's.
    #[error("the token is not a service account's (user {user:?})")]
    NotServiceAccount {
        /// The user the token belongs to.
        user: String,
    },
    /// The token was issued for another audience.
    #[error("the token is not for audience {}, it is for {}", .wanted.join(" or "), audiences(.got))]
    Audience {
        /// The audiences we accept.
        wanted: Vec<String>,
        /// The audiences the API server reported.
        got: Vec<String>,
    },
    /// The client certificate belongs to another trust domain.
    #[error("the client certificate {id} is not of this cluster's trust domain {trust_domain}")]
    OtherTrustDomain {
        /// The certificate's SPIFFE ID.
        id: String,
        /// Ours.
        trust_domain: String,
    },
    /// The check could not be made (API server unreachable, tokens file
    /// unreadable); the caller may retry.
    #[error("cannot check the credential: {0}")]
    Unavailable(String),
}

fn audiences(got: &[String]) -> String {
    if got.is_empty() {
        "no audience".to_owned()
    } else {
        got.join(", ")
    }
}

impl AuthError {
    /// A stable short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::NoCredential => "no_credential",
            AuthError::UnknownToken { .. } => "unknown_token",
            AuthError::Rejected { .. } => "token_rejected",
            AuthError::NotServiceAccount { .. } => "not_service_account",
            AuthError::Audience { .. } => "wrong_audience",
            AuthError::OtherTrustDomain { .. } => "other_trust_domain",
            AuthError::Unavailable(_) => "authenticator_unavailable",
        }
    }
}

/// What [`Authenticator::authenticate`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>>;

/// One way of authenticating callers (Istio's `security.Authenticator`).
pub trait Authenticator: Send + Sync + 'static {
    /// A short name for logs and [`Caller::by`] (`token-review`, `tokens-file`, `client-certificate`).
    fn name(&self) -> &'static str;

    /// Vouches for the caller of `call`, or says why not
    /// ([`AuthError::NoCredential`] when the call carries nothing it checks).
    fn authenticate<'a>(&'a self, call: &'a CallInfo) -> AuthFuture<'a>;
}

/// Renewal: a client certificate of this cluster's trust domain, verified
/// by the TLS layer, vouches for its own namespace and service account
/// (Istio's `ClientCertAuthenticator`). A certificate of another trust
/// domain vouches for nothing here.
#[derive(Clone, Debug)]
pub struct ClientCertAuthenticator {
    trust_domain: String,
}

impl ClientCertAuthenticator {
    /// Accepts client certificates of `trust_domain` (this cluster's).
    pub fn new(trust_domain: impl Into<String>) -> Self {
        ClientCertAuthenticator {
            trust_domain: trust_domain.into(),
        }
    }
}

impl Authenticator for ClientCertAuthenticator {
    fn name(&self) -> &'static str {
        "client-certificate"
    }

    fn authenticate<'a>(&'a self, call: &'a CallInfo) -> AuthFuture<'a> {
        let result = match &call.client_id {
            None => Err(AuthError::NoCredential),
            Some(id) if id.trust_domain() != self.trust_domain => {
                Err(AuthError::OtherTrustDomain {
                    id: id.to_string(),
                    trust_domain: self.trust_domain.clone(),
                })
            }
            Some(id) => Ok(Caller {
                namespace: id.namespace().to_owned(),
                service_account: id.service_account().to_owned(),
                pod: None,
                by: self.name(),
            }),
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: Option<&str>) -> CallInfo {
        CallInfo {
            client_id: id.map(|s| s.parse().unwrap()),
            ..CallInfo::default()
        }
    }

    #[tokio::test]
    async fn p7_client_certificate_vouches_only_within_the_trust_domain() {
        let auth = ClientCertAuthenticator::new("cluster1");
        let caller = auth
            .authenticate(&call(Some(
                "spiffe://cluster1/ns/istio-system/sa/meshpeer-proxy",
            )))
            .await
            .unwrap();
        assert_eq!(
            (
                caller.namespace.as_str(),
                caller.service_account.as_str(),
                caller.by
            ),
            ("istio-system", "meshpeer-proxy", "client-certificate")
        );
        assert_eq!(
            auth.authenticate(&call(None)).await,
            Err(AuthError::NoCredential)
        );
        let other = auth
            .authenticate(&call(Some(
                "spiffe://cluster2/ns/istio-system/sa/meshpeer-proxy",
            )))
            .await;
        assert!(
            matches!(other, Err(AuthError::OtherTrustDomain { .. })),
            "{other:?}"
        );
    }
}
