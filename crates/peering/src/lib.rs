//! meshpeer's peering protocol.
//!
//! A cluster that holds a remote-peer Gateway for another cluster (SPEC C3,
//! C4) runs a [`client`] for that link: it connects to the peer's control
//! plane over mutual TLS, opens one `Exchange` stream, and receives what the
//! peer exports to it as versioned resources: the full state first, then
//! deltas with explicit removals, each ACKed or NACKed. Every cluster runs a
//! [`server`] that sends its own export to whoever asks, filtered by what the
//! asking cluster may see (S7). The wire format is in
//! `proto/meshpeer/peering/v1/peering.proto`; [`wire`] converts exports to
//! resources and back.

pub mod admission;
pub mod backoff;
pub mod client;
pub mod limits;
pub mod machine;
pub mod metrics;
pub mod server;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod tls;
pub mod wire;

/// Generated from `proto/meshpeer/peering/v1/peering.proto`.
#[allow(
    unreachable_pub,
    missing_docs,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
pub mod proto {
    tonic::include_proto!("meshpeer.peering.v1");
}

/// Protocol version spoken by this build (`Hello.protocol`).
pub const PROTOCOL_VERSION: u32 = 1;

pub use admission::{Admission, Denial, KnownPeer};
pub use backoff::Backoff;
pub use client::{
    ConnectError, Connection, Connector, LinkConfig, LocalInfo, PeerEvent, PeerUpdate, run_link,
};
pub use limits::{Limits, RefuseReason, RefusedResource};
pub use metrics::Metrics;
pub use server::{
    ClientTls, ConnInfo, ExportPublisher, PeeringService, Published, Refused, ServedPeer,
    ServerSettings, TlsConnector, serve,
};
/// The peering listener's bounds (SPEC B5); see [`serve_with`].
pub use tls::{default_limits as default_listener_limits, serve_with};
