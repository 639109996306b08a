//! The signing endpoint (SPEC P7): Istio's
//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, served by the
//! controller, which alone holds the cluster's intermediate key.
//!
//! A call is authenticated as istiod does (the [`Authenticator`]s in order,
//! then a client certificate of this trust domain); the CSR must ask for
//! exactly the caller's identity, `spiffe://<td>/ns/<ns>/sa/<sa>`; the
//! lifetime is capped. Anything else is refused with a gRPC status that says
//! why, logged and counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshpeer_identity::{CertificateRequest, ClusterCa, SpiffeId};
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};

use crate::authn::{AuthError, Authenticator, CallInfo, Caller, ClientCertAuthenticator};
use crate::listener::ConnInfo;
use crate::metrics::CaMetrics;
use crate::proto::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::proto::{IstioCertificateRequest, IstioCertificateResponse};

/// The metadata key with which a node agent (ztunnel) asks for another
/// identity than its own.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The longest leaf lifetime granted unless configured otherwise.
pub const DEFAULT_MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// What [`Impersonation::authorize`] returns.
pub type ImpersonationFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The extension point for node agents that obtain their workloads'
/// certificates (ztunnel sends the metadata [`IMPERSONATED_IDENTITY`];
/// istiod allows it for the accounts of `CA_TRUSTED_NODE_ACCOUNTS`, checking
/// that the workload runs on the caller's node). Decides whether `caller`
/// may obtain a certificate for `requested`.
///
/// Not implemented yet: [`NoImpersonation`] refuses every such request.
pub trait Impersonation: Send + Sync + 'static {
    /// `Ok` to let `caller` obtain `requested`; `Err` says why not.
    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        call: &'a CallInfo,
        requested: &'a SpiffeId,
    ) -> ImpersonationFuture<'a>;
}

/// Refuses every impersonation.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoImpersonation;

impl Impersonation for NoImpersonation {
    fn authorize<'a>(
        &'a self,
        _caller: &'a Caller,
        _call: &'a CallInfo,
        _requested: &'a SpiffeId,
    ) -> ImpersonationFuture<'a> {
        Box::pin(std::future::ready(Err(
            "this controller does not let node agents impersonate workloads yet".to_owned(),
        )))
    }
}

/// How the endpoint decides.
#[derive(Clone)]
pub struct CaSettings {
    /// This cluster's trust domain: the one identity issued is
    /// `spiffe://<trust_domain>/ns/<ns>/sa/<sa>` of the caller.
    pub trust_domain: String,
    /// Longest lifetime granted (longer requests are shortened; none or
    /// zero gets this).
    pub max_validity: Duration,
    /// Token authenticators, tried in order; a client certificate of
    /// `trust_domain` is tried after them.
    pub authenticators: Vec<Arc<dyn Authenticator>>,
    /// Node agents asking for others' certificates.
    pub impersonation: Arc<dyn Impersonation>,
}

impl CaSettings {
    /// No token authenticator (only renewal by client certificate), a 24 h
    /// cap, no impersonation.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        CaSettings {
            trust_domain: trust_domain.into(),
            max_validity: DEFAULT_MAX_VALIDITY,
            authenticators: Vec::new(),
            impersonation: Arc::new(NoImpersonation),
        }
    }
}

impl std::fmt::Debug for CaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.authenticators.iter().map(|a| a.name()).collect();
        f.debug_struct("CaSettings")
            .field("trust_domain", &self.trust_domain)
            .field("max_validity", &self.max_validity)
            .field("authenticators", &names)
            .finish_non_exhaustive()
    }
}

/// A refused call: its gRPC code, a metric reason and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The gRPC status code.
    pub code: Code,
    /// A stable short label for metrics.
    pub reason: &'static str,
    /// What the caller is told (and what is logged).
    pub message: String,
}

impl Refused {
    fn new(code: Code, reason: &'static str, message: String) -> Self {
        Refused {
            code,
            reason,
            message,
        }
    }
}

/// The signing endpoint.
#[derive(Clone)]
pub struct CaService {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Arc<ClusterCa>,
    settings: CaSettings,
    client_cert: ClientCertAuthenticator,
    metrics: Arc<CaMetrics>,
}

impl CaService {
    /// Signs with `ca` (the controller's), deciding as `settings` say.
    pub fn new(ca: Arc<ClusterCa>, settings: CaSettings, metrics: Arc<CaMetrics>) -> Self {
        CaService {
            inner: Arc::new(Inner {
                client_cert: ClientCertAuthenticator::new(settings.trust_domain.clone()),
                ca,
                settings,
                metrics,
            }),
        }
    }

    /// The gRPC routes to serve (mount them next to other routes with
    /// `Routes::into_axum_router`, or serve them alone).
    pub fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(IstioCertificateServiceServer::new(self.clone()))
    }

    /// Decides one call: who calls (`call`), what it asks (`request`).
    pub async fn create(
        &self,
        call: &CallInfo,
        request: &IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, Refused> {
        let s = &self.inner.settings;
        let caller = self.authenticate(call).await?;
        let own = caller.spiffe_id(&s.trust_domain).map_err(|detail| {
            Refused::new(
                Code::PermissionDenied,
                "invalid_caller",
                format!(
                    "caller {}/{} cannot have an identity: {detail}",
                    caller.namespace, caller.service_account
                ),
            )
        })?;
        let csr = CertificateRequest::from_pem(&request.csr).map_err(|e| {
            Refused::new(
                Code::InvalidArgument,
                "bad_csr",
                format!("{e} (caller {own})"),
            )
        })?;
        let requested = csr.spiffe_id().map_err(|e| {
            Refused::new(
                Code::InvalidArgument,
                "bad_csr",
                format!("{e} (caller {own})"),
            )
        })?;
        let allowed = match impersonated(request) {
            None => own.clone(),
            Some(Err(detail)) => {
                return Err(Refused::new(
                    Code::InvalidArgument,
                    "impersonation",
                    format!("metadata {IMPERSONATED_IDENTITY} is not a SPIFFE ID: {detail}"),
                ));
            }
            Some(Ok(other)) => {
                s.impersonation
                    .authorize(&caller, call, &other)
                    .await
                    .map_err(|why| {
                        Refused::new(
                            Code::PermissionDenied,
                            "impersonation",
                            format!("caller {own} may not obtain a certificate for {other}: {why}"),
                        )
                    })?;
                other
            }
        };
        if requested != allowed {
            return Err(Refused::new(
                Code::PermissionDenied,
                "identity_mismatch",
                format!(
                    "the CSR asks for {requested}, but the caller is {own} (authenticated by {}); a caller may only obtain its own identity",
                    caller.by
                ),
            ));
        }
        let validity = match u64::try_from(request.validity_duration) {
            Ok(secs) if secs > 0 => Duration::from_secs(secs).min(s.max_validity),
            _ => s.max_validity,
        };
        let signed = self
            .inner
            .ca
            .sign_request(&csr, &requested, validity, SystemTime::now())
            .map_err(|e| {
                Refused::new(
                    Code::Internal,
                    "signing_failed",
                    format!("cannot sign for {requested}: {e}"),
                )
            })?;
        self.inner.metrics.issued.inc();
        info!(
            id = %requested,
            by = caller.by,
            pod = caller.pod.as_deref().unwrap_or_default(),
            remote = %remote_text(call),
            validity_s = validity.as_secs(),
            "certificate issued"
        );
        Ok(IstioCertificateResponse {
            cert_chain: signed.to_pem_chain(self.inner.ca.trust_root()),
        })
    }

    /// The first authenticator that vouches for the caller, else why none did.
    async fn authenticate(&self, call: &CallInfo) -> Result<Caller, Refused> {
        let s = &self.inner.settings;
        let client_cert: &dyn Authenticator = &self.inner.client_cert;
        let mut why: Vec<(&'static str, AuthError)> = Vec::new();
        for auth in s
            .authenticators
            .iter()
            .map(|a| a.as_ref())
            .chain(std::iter::once(client_cert))
        {
            match auth.authenticate(call).await {
                Ok(caller) => return Ok(caller),
                Err(AuthError::NoCredential) => {}
                Err(e) => why.push((auth.name(), e)),
            }
        }
        if why.is_empty() {
            return Err(Refused::new(
                Code::Unauthenticated,
                "no_credential",
                format!(
                    "no credential: send `authorization: Bearer <token>` ({}) or present a client certificate of trust domain {}",
                    token_kinds(&s.authenticators),
                    s.trust_domain
                ),
            ));
        }
        let unavailable = why
            .iter()
            .any(|(_, e)| matches!(e, AuthError::Unavailable(_)));
        let reasons: Vec<String> = why.iter().map(|(n, e)| format!("{n}: {e}")).collect();
        Err(Refused::new(
            if unavailable {
                Code::Unavailable
            } else {
                Code::Unauthenticated
            },
            if unavailable {
                "authenticator_unavailable"
            } else {
                why[0].1.reason()
            },
            format!("request not authenticated: {}", reasons.join("; ")),
        ))
    }
}

fn token_kinds(authenticators: &[Arc<dyn Authenticator>]) -> String {
    let names: Vec<&str> = authenticators
        .iter()
        .map(|a| match a.name() {
            "token-review" => "a ServiceAccount token for audience istio-ca",
            "tokens-file" => "a token of the controller's --tokens file",
            other => other,
        })
        .collect();
    if names.is_empty() {
        "no token is accepted by this controller".to_owned()
    } else {
        names.join(", or ")
    }
}

/// The `ImpersonatedIdentity` metadata, if present and not empty.
fn impersonated(request: &IstioCertificateRequest) -> Option<Result<SpiffeId, String>> {
    let value = request
        .metadata
        .as_ref()?
        .fields
        .get(IMPERSONATED_IDENTITY)?;
    match &value.kind {
        Some(prost_types::value::Kind::StringValue(s)) if s.is_empty() => None,
        Some(prost_types::value::Kind::StringValue(s)) => {
            Some(s.parse::<SpiffeId>().map_err(|e| e.to_string()))
        }
        _ => Some(Err("it is not a string".to_owned())),
    }
}

fn remote_text(call: &CallInfo) -> String {
    call.remote
        .map(|r| r.to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The bearer token of `authorization: Bearer <token>`.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let call = CallInfo {
            remote: conn.as_ref().map(|c| c.remote).or(request.remote_addr()),
            bearer: bearer(request.metadata()),
            client_id: conn.and_then(|c| c.client_id),
        };
        match self.create(&call, request.get_ref()).await {
            Ok(response) => Ok(Response::new(response)),
            Err(refused) => {
                self.inner.metrics.refused(refused.reason);
                warn!(
                    remote = %remote_text(&call),
                    reason = refused.reason,
                    client_certificate = %call.client_id.as_ref().map(ToString::to_string).unwrap_or_default(),
                    "certificate request refused: {}",
                    refused.message
                );
                Err(Status::new(refused.code, refused.message))
            }
        }
    }
}
