//! Certificates and mutual-TLS identities for meshpeer (SPEC rule C6).
//!
//! All clusters share one root CA ([`RootCa`]); the root signs one
//! intermediate per cluster ([`ClusterCa`], Istio's `cacerts` layout); each
//! component issues itself short-lived leaves from its cluster's
//! intermediate with the SPIFFE URI SAN
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`
//! ([`SpiffeId`]) and keeps them fresh ([`Identity`]). Peering and tunnels
//! use [`server_config`] / [`client_config`]: mutual TLS 1.3 on rustls with
//! aws-lc-rs, where a peer whose chain does not lead to the shared root, or
//! whose SPIFFE trust domain is not accepted, is refused with a reason
//! ([`refusal_reason`]) fit for logs, metrics and status.
//!
//! Everything that reads the clock takes `now` as a parameter, except the
//! rotation task and the handshake verifiers, which use the real clock.

#![warn(missing_docs)]

mod ca;
mod cert;
mod identity;
mod pem_files;
mod refusal;
mod spiffe;
mod tls;
mod verify;

pub use ca::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CaError, ClusterCa, LEAF_BACKDATE, Leaf,
    ROOT_CERT_FILE, ROOT_KEY_FILE, RootCa, TrustRoot,
};
pub use identity::{Identity, IdentityError};
pub use refusal::{Refusal, refusal_reason, refusal_reason_io};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{ALPN_H2, client_config, install_default_provider, server_config};
pub use verify::{PeerPolicy, peer_identity};
