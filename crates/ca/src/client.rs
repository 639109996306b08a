//! The client of the signing endpoint, as ztunnel calls istiod: a new key
//! and CSR per certificate, `authorization: Bearer <token>`, the answer
//! checked against the shared root before use. Proxies and gateways hold
//! this instead of the CA key (SPEC P7).

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use meshpeer_identity::{
    ALPN_H2, CaError, CertificateRequest, Identity, IssueFuture, IssuedError, Leaf, LeafIssuer,
    Refusal, SpiffeId, TrustRoot, client_config_for, refusal_reason_io,
};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tonic::transport::Endpoint;
use tracing::debug;

use crate::proto::IstioCertificateRequest;
use crate::proto::istio_certificate_service_client::IstioCertificateServiceClient;

/// Where the bearer token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// No token: only renewal with a client certificate.
    None,
    /// Read afresh for every call (a projected ServiceAccount token, which
    /// the kubelet rotates; or a token made by `meshpeer certs token`).
    File(PathBuf),
    /// This token (the demo's, made in the same process).
    Value(String),
}

/// How to reach and trust the signing endpoint.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// `HOST:PORT` of the controller's cluster listener.
    pub address: String,
    /// The shared root (`root-cert.pem`).
    pub root: TrustRoot,
    /// The controller's identity, `spiffe://<td>/ns/istio-system/sa/meshpeer`.
    pub server: SpiffeId,
    /// The credential.
    pub token: TokenSource,
    /// Bound on connecting and the TLS handshake, and on the call.
    pub timeout: Duration,
}

/// Why no certificate came back.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// The token file cannot be read.
    #[error(
        "cannot read the token file {}: {source} (in Kubernetes: a projected ServiceAccount token \
         with audience istio-ca; in file mode: meshpeer certs token ... --out FILE)",
        path.display()
    )]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CSR could not be made.
    #[error("cannot make a certificate request: {0}")]
    Csr(#[from] CaError),
    /// The controller cannot be reached.
    #[error("cannot reach the controller at {address}: {detail}")]
    Connect {
        /// Where we dialled.
        address: String,
        /// Why it failed.
        detail: String,
    },
    /// The TLS handshake failed (the controller is not who we expect, or
    /// it refused our certificate).
    #[error("TLS with the controller at {address} failed: {refusal}")]
    Tls {
        /// Where we dialled.
        address: String,
        /// Why, classified.
        refusal: Refusal,
    },
    /// The controller refused the request; its message says why.
    #[error("the controller at {address} refused the certificate request ({code:?}): {message}")]
    Refused {
        /// Where we dialled.
        address: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The controller's message.
        message: String,
    },
    /// What came back is not usable.
    #[error("from the controller at {address}: {source}")]
    Issued {
        /// Where we dialled.
        address: String,
        /// Why.
        #[source]
        source: IssuedError,
    },
}

/// The certificate presented when renewing: the identity's current leaf,
/// unless it has expired (a server would refuse the whole handshake).
#[derive(Debug, Default)]
struct Presented {
    identity: RwLock<Option<Weak<Identity>>>,
}

impl Presented {
    fn live(&self) -> Option<Arc<Identity>> {
        let id = self
            .identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()?
            .upgrade()?;
        (id.current().not_after > SystemTime::now()).then_some(id)
    }
}

impl ResolvesClientCert for Presented {
    fn resolve(
        &self,
        hints: &[&[u8]],
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let id = self.live()?;
        ResolvesClientCert::resolve(&*id, hints, schemes)
    }

    fn has_certs(&self) -> bool {
        self.live().is_some()
    }
}

/// The signing endpoint's client; an [`LeafIssuer`] for
/// [`Identity::from_issuer`].
#[derive(Clone, Debug)]
pub struct CaClient {
    cfg: CaClientConfig,
    presented: Arc<Presented>,
}

impl CaClient {
    /// A client of the endpoint `cfg` describes.
    pub fn new(cfg: CaClientConfig) -> Self {
        CaClient {
            cfg,
            presented: Arc::new(Presented::default()),
        }
    }

    /// From now on, present `identity`'s current (unexpired) leaf as client
    /// certificate: the controller then renews it even without a token.
    pub fn renew_with(&self, identity: &Arc<Identity>) {
        *self
            .presented
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::downgrade(identity));
    }

    fn token(&self) -> Result<Option<String>, CaClientError> {
        match &self.cfg.token {
            TokenSource::None => Ok(None),
            TokenSource::Value(t) => Ok(Some(t.clone())),
            TokenSource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
                // Renewal by certificate still works without the token.
                Err(_) if self.presented.live().is_some() => Ok(None),
                Err(source) => Err(CaClientError::Token {
                    path: path.clone(),
                    source,
                }),
            },
        }
    }

    /// A leaf for `id`, asking for `validity`: a new key and CSR, one call,
    /// the answer checked ([`Leaf::from_issued`]).
    pub async fn create(&self, id: &SpiffeId, validity: Duration) -> Result<Leaf, CaClientError> {
        let token = self.token()?;
        let (csr, key) = CertificateRequest::generate(id)?;
        let request = IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
            metadata: None,
        };
        let present = self.presented.live().is_some();
        let answer = match self.call(&request, token.as_deref(), present).await {
            // The controller may refuse the certificate we renew with (a
            // new root, say); the token alone may still do.
            Err(CaClientError::Tls { .. }) if present && token.is_some() => {
                self.call(&request, token.as_deref(), false).await?
            }
            other => other?,
        };
        Leaf::from_issued(&answer, key, &self.cfg.root, id, SystemTime::now()).map_err(|source| {
            CaClientError::Issued {
                address: self.cfg.address.clone(),
                source,
            }
        })
    }

    async fn call(
        &self,
        request: &IstioCertificateRequest,
        token: Option<&str>,
        present: bool,
    ) -> Result<Vec<String>, CaClientError> {
        let address = self.cfg.address.clone();
        let connect = |detail: String| CaClientError::Connect {
            address: address.clone(),
            detail,
        };
        let resolver: Option<Arc<dyn ResolvesClientCert>> = if present {
            Some(Arc::clone(&self.presented) as Arc<dyn ResolvesClientCert>)
        } else {
            None
        };
        let tls = client_config_for(resolver, &self.cfg.root, &self.cfg.server, &[ALPN_H2])
            .map_err(|e| connect(format!("cannot build the TLS config: {e}")))?;
        let host = address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(&address);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| connect(format!("{host} is not a host name: {e}")))?;
        let timeout = self.cfg.timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(address.as_str()))
            .await
            .map_err(|_| connect(format!("no connection within {timeout:?}")))?
            .map_err(|e| connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io = tokio::time::timeout(
            timeout,
            tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
        )
        .await
        .map_err(|_| connect(format!("TLS handshake took longer than {timeout:?}")))?
        .map_err(|e| CaClientError::Tls {
            address: address.clone(),
            refusal: refusal_reason_io(&e),
        })?;
        // Hand the established connection to tonic; it gets exactly this one.
        let slot = std::sync::Mutex::new(Some(TokioIo::new(io)));
        let slot = Arc::new(slot);
        let connector = tower::service_fn(move |_uri| {
            let io = slot.lock().ok().and_then(|mut s| s.take());
            async move {
                io.ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection used")
                })
            }
        });
        let channel = Endpoint::from_static("http://meshpeer-controller.invalid")
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(timeout);
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| connect("the token is not a valid header value".to_owned()))?;
            call.metadata_mut().insert("authorization", value);
        }
        let answer = IstioCertificateServiceClient::new(channel)
            .create_certificate(call)
            .await
            .map_err(|status| match tls_refusal(&status) {
                Some(refusal) => CaClientError::Tls {
                    address: address.clone(),
                    refusal,
                },
                None => CaClientError::Refused {
                    address: address.clone(),
                    code: status.code(),
                    message: status.message().to_owned(),
                },
            })?;
        debug!(controller = %address, "certificate received");
        Ok(answer.into_inner().cert_chain)
    }
}

/// TLS 1.3: the server checks our certificate after our side of the
/// handshake is done; its alert arrives with the first call.
fn tls_refusal(status: &tonic::Status) -> Option<Refusal> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let refusal = refusal_reason_io(io);
            if !matches!(refusal, Refusal::Other(_)) {
                return Some(refusal);
            }
        }
        cause = e.source();
    }
    None
}

impl LeafIssuer for CaClient {
    fn issue<'a>(&'a self, id: &'a SpiffeId, validity: Duration) -> IssueFuture<'a> {
        Box::pin(async move { self.create(id, validity).await.map_err(Into::into) })
    }

    fn describe(&self) -> String {
        format!("controller at {} ({})", self.cfg.address, self.cfg.server)
    }
}
