//! meshpeer's certificate-signing endpoint (SPEC P7).
//!
//! The controller alone holds its cluster's intermediate key. Proxies and
//! gateways hold the shared root and a credential, and obtain short-lived
//! leaves from the controller through Istio's CA API
//! (`istio.v1.auth.IstioCertificateService/CreateCertificate`, [`proto`]),
//! so that a ztunnel can use the endpoint too.
//!
//! - [`server`]: the endpoint: authenticate, check the CSR asks for exactly
//!   the caller's identity, cap the lifetime, sign; refusals logged and
//!   counted ([`metrics`]); an extension point for node impersonation.
//! - [`authn`]: the [`authn::Authenticator`] trait and renewal by client
//!   certificate; [`tokenreview`] (Kubernetes ServiceAccount tokens) and
//!   [`tokens`] (file mode's static tokens file).
//! - [`client`]: the endpoint's client, a `LeafIssuer` for
//!   `meshpeer_identity::Identity`.
//! - [`listener`]: the controller's cluster listener (TLS, client
//!   certificates optional, HTTP/1.1 and HTTP/2), which serves this
//!   endpoint next to the catalog feed.

pub mod authn;
pub mod client;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod tokenreview;
pub mod tokens;

/// Istio's CA API, generated from `proto/istio/v1/auth/ca.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("istio.v1.auth");
}

pub use authn::{AuthError, Authenticator, CallInfo, Caller, ClientCertAuthenticator};
pub use client::{CaClient, CaClientConfig, CaClientError, TokenSource};
pub use listener::{ConnInfo, ListenerLimits, serve};
pub use metrics::CaMetrics;
pub use server::{CaService, CaSettings, DEFAULT_MAX_VALIDITY, Impersonation, NoImpersonation};
pub use tokenreview::{DEFAULT_AUDIENCE, TokenReviewAuthenticator};
pub use tokens::{StaticTokens, TokensError, add_token, new_token, write_token_file};
