//! Kubernetes mode's credentials: a ServiceAccount token, checked by the
//! API server with a `TokenReview` (`POST
//! /apis/authentication.k8s.io/v1/tokenreviews`), as istiod checks them.

use k8s_openapi::Resource;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use tracing::debug;

use crate::authn::{AuthError, AuthFuture, Authenticator, CallInfo, Caller};

/// The audience Istio's CA asks tokens to be for (`istio-ca`): what
/// proxies' and gateways' projected tokens are minted for.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";

/// The group every ServiceAccount token's user belongs to.
const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// `system:serviceaccount:<namespace>:<name>`.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// The extra field naming the token's pod (bound tokens carry it).
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// The RBAC rule this authenticator needs: (API group, resource, verb).
pub fn required_permission() -> (&'static str, &'static str, &'static str) {
    (TokenReview::GROUP, TokenReview::URL_PATH_SEGMENT, "create")
}

/// Checks bearer tokens with the API server (Istio's `KubeJWTAuthenticator`).
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    audiences: Vec<String>,
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// Reviews tokens through `client`, accepting tokens for any of
    /// `audiences` (usually [`DEFAULT_AUDIENCE`]).
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        TokenReviewAuthenticator { client, audiences }
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("token review failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if let Some(error) = status.error.filter(|e| !e.is_empty()) {
            return Err(AuthError::Rejected { reason: error });
        }
        if status.authenticated != Some(true) {
            return Err(AuthError::Rejected {
                reason: "the token is not authenticated".to_owned(),
            });
        }
        // A client that sets spec.audiences must check that one came back.
        let got = status.audiences.unwrap_or_default();
        if !self.audiences.is_empty() && !got.iter().any(|a| self.audiences.contains(a)) {
            return Err(AuthError::Audience {
                wanted: self.audiences.clone(),
                got,
            });
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let in_group = user
            .groups
            .unwrap_or_default()
            .iter()
            .any(|g| g == SERVICE_ACCOUNTS_GROUP);
        let parts: Option<(&str, &str)> = username
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'));
        let (Some((namespace, service_account)), true) = (parts, in_group) else {
            return Err(AuthError::NotServiceAccount { user: username });
        };
        let pod = user
            .extra
            .and_then(|mut e| e.remove(POD_NAME_EXTRA))
            .and_then(|v| v.into_iter().next());
        debug!(namespace, service_account, pod = ?pod, "token reviewed");
        Ok(Caller {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod,
            by: self.name(),
        })
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn name(&self) -> &'static str {
        "token-review"
    }

    fn authenticate<'a>(&'a self, call: &'a CallInfo) -> AuthFuture<'a> {
        Box::pin(async move {
            match call.bearer.as_deref() {
                None => Err(AuthError::NoCredential),
                Some(token) => self.review(token).await,
            }
        })
    }
}
