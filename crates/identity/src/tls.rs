//! rustls configs for mutual TLS 1.3 between meshpeer components.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, Error as TlsError, ServerConfig};

use crate::ca::TrustRoot;
use crate::identity::Identity;
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
