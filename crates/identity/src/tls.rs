//! rustls configs for mutual TLS 1.3 between meshpeer components.

use std::sync::Arc;

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, Error as TlsError, ServerConfig};

use crate::ca::TrustRoot;
use crate::identity::Identity;
use crate::spiffe::SpiffeId;
use crate::verify::{PeerPolicy, PeerVerifier};

/// The ALPN protocol of control-plane peering (gRPC) and data-plane tunnels
/// (HTTP/2 CONNECT).
pub const ALPN_H2: &[u8] = b"h2";

/// Installs aws-lc-rs as rustls' process-wide crypto provider, for
/// libraries that build their own configs. Call it first thing in `main`.
/// Idempotent: does nothing if a provider is already installed. The configs
/// of this crate do not need it; they name aws-lc-rs explicitly.
pub fn install_default_provider() {
    // An Err only says that a provider is already installed.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A server config: TLS 1.3 only, aws-lc-rs, presents `identity`'s current
/// leaf (across rotations), offers `alpn` in order.
///
/// A client certificate is required; its chain must verify to `root` and its
/// leaf must carry exactly one SPIFFE URI whose trust domain `policy`
/// accepts. Refusals carry a [`crate::Refusal`] (see
/// [`crate::refusal_reason`]). Session resumption is off, so every
/// connection is verified in full.
///
/// Fails only if the crypto provider does not support TLS 1.3 (aws-lc-rs does).
pub fn server_config(
    identity: Arc<Identity>,
    root: &TrustRoot,
    policy: PeerPolicy,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_client_cert_verifier(Arc::new(PeerVerifier::new(root, policy)))
    .with_cert_resolver(identity);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client config: TLS 1.3 only, aws-lc-rs, sends `identity`'s current
/// leaf as client certificate (across rotations), offers `alpn` in order.
///
/// The server's chain must verify to `root` and its leaf must carry exactly
/// one SPIFFE URI with trust domain `expected_trust_domain`. The server name
/// given to `connect` is not checked (our certificates carry no DNS names)
/// but is still sent as SNI when it is a DNS name. Session resumption is off.
///
/// Fails only if the crypto provider does not support TLS 1.3 (aws-lc-rs does).
pub fn client_config(
    identity: Arc<Identity>,
    root: &TrustRoot,
    expected_trust_domain: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let policy = PeerPolicy::TrustDomains([expected_trust_domain.to_owned()].into());
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(root, policy)))
    .with_client_cert_resolver(identity);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// [`client_config`] for a server that must also speak for `cluster`: its
/// chain's cluster binding (on the intermediate the root signed, SPEC P6)
/// must be `cluster` ([`crate::Refusal::WrongCluster`]); a chain bound to
/// no cluster passes unless `require_binding`
/// ([`crate::Refusal::NoClusterBinding`]), which a client sets when the
/// trust domain is shared by several clusters, so that another cluster of
/// it cannot answer in the expected one's place.
pub fn client_config_for_cluster(
    identity: Arc<Identity>,
    root: &TrustRoot,
    expected_trust_domain: &str,
    cluster: &str,
    require_binding: bool,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let policy = PeerPolicy::TrustDomains([expected_trust_domain.to_owned()].into());
    let verifier = PeerVerifier::new(root, policy).of_cluster(cluster, require_binding);
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(verifier))
    .with_client_cert_resolver(identity);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A server config for listeners where a client certificate is optional
/// (the controller's cluster listener, SPEC P7/P8): TLS 1.3, aws-lc-rs,
/// presents `identity`'s current leaf, offers `alpn` in order.
///
/// A client that presents a certificate is verified in full (chain to
/// `root`, one SPIFFE URI, P6 bindings; any trust domain, so that the
/// application can refuse it with a reason); one that presents none is
/// let in, and the application decides what it may do. When `identity`'s
/// CA is bound to a cluster, a client certificate of `identity`'s trust
/// domain must also be bound to that cluster ([`crate::Refusal::WrongCluster`],
/// [`crate::Refusal::NoClusterBinding`]): where clusters share a trust
/// domain, another cluster's workload may not renew here or follow this
/// cluster's catalog. Session resumption is off.
pub fn server_config_optional_client(
    identity: Arc<Identity>,
    root: &TrustRoot,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut verifier =
        PeerVerifier::new(root, PeerPolicy::AnyTrustDomain).client_certificate_optional();
    // The listener of a cluster whose CA is bound to it (SPEC P6): a client
    // certificate of its trust domain must come from this cluster's
    // intermediate, not from another cluster sharing the trust domain.
    if let Some(cluster) = identity.cluster_ca().and_then(|ca| ca.cluster_binding()) {
        verifier = verifier.within_cluster(identity.spiffe_id().trust_domain(), cluster);
    }
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_client_cert_verifier(Arc::new(verifier))
    .with_cert_resolver(identity);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client config for talking to exactly one server identity (a proxy or
/// gateway to its controller, `spiffe://<td>/ns/istio-system/sa/meshpeer`):
/// TLS 1.3, aws-lc-rs, offers `alpn` in order. The server's chain must
/// verify to `root` and its leaf must be `server`; anything else is refused
/// ([`crate::Refusal::WrongIdentity`], ...).
///
/// `client_cert` is presented when it has one (an [`Identity`], or a
/// resolver that has none yet: then no certificate is sent).
pub fn client_config_for(
    client_cert: Option<Arc<dyn ResolvesClientCert>>,
    root: &TrustRoot,
    server: &SpiffeId,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let policy = PeerPolicy::TrustDomains([server.trust_domain().to_owned()].into());
    let verifier = PeerVerifier::new(root, policy).only([server.clone()].into());
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client_cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}
