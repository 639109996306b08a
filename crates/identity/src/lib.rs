//! Certificates and mutual-TLS identities for meshpeer (SPEC rule C6).
//!
//! All clusters share one root CA ([`RootCa`]); the root signs one
//! intermediate per cluster ([`ClusterCa`], Istio's `cacerts` layout); each
//! component issues itself short-lived leaves from its cluster's
//! intermediate with the SPIFFE URI SAN
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`
//! ([`SpiffeId`]) and keeps them fresh ([`Identity`]). Each intermediate is
//! bound to its cluster's trust domain (a `spiffe://<td>` URI SAN, SPEC P6)
//! and verifiers refuse a leaf of another trust domain under it. Only the
//! controller holds the intermediate's key; proxies and gateways send a
//! certificate signing request ([`CertificateRequest`]) to it and check what
//! comes back ([`Leaf::from_issued`], [`LeafIssuer`], SPEC P7). Peering and tunnels
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
mod csr;
mod identity;
mod pem_files;
mod refusal;
mod spiffe;
mod tls;
mod verify;

pub use ca::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CaError, ClusterCa, IssuedError, LEAF_BACKDATE,
    Leaf, ROOT_CERT_FILE, ROOT_KEY_FILE, RootCa, SignedChain, TrustRoot,
};
pub use cert::civil_from_days;
pub use csr::{CertificateRequest, CsrError, MAX_CSR_LEN};
pub use identity::{Identity, IdentityError, IssueError, IssueFuture, LeafIssuer};
pub use refusal::{Refusal, refusal_reason, refusal_reason_io};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{
    ALPN_H2, client_config, client_config_for, client_config_for_cluster, install_default_provider,
    server_config, server_config_optional_client,
};
pub use verify::{PeerPolicy, VerifiedPeer, peer_identity, verified_client, verified_server};
