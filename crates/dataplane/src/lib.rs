//! meshpeer's data plane.
//!
//! - [`dns`]: answers for global hostnames and taken-over local names (D1).
//! - [`endpoint_policy`]: which addresses may be dialled at all (P5).
//! - [`feed`]: the catalog the controller publishes, in process or over HTTP.
//! - [`hbone`]: HTTP/2 CONNECT tunnels over mutual TLS, client pool and server (D2, D3).
//! - [`state`]: the indexes a data plane works from, rebuilt per feed version.
//! - [`pick`]: destinations for a connection, tier by tier, with passive health (T2-T6).
//! - [`proxy`]: VIP listeners and connections to picked destinations (D2, D4).
//! - [`gateway`]: what the east-west gateway lets callers reach (D3).
//! - [`report`]: flow counts sent to the controller (issue 16).

pub mod access_log;
pub mod dns;
pub mod endpoint_policy;
pub mod feed;
pub mod feed_line;
pub mod flows;
pub mod gateway;
pub mod hbone;
pub mod metrics;
pub mod pick;
pub mod proxy;
pub mod report;
mod rewind;
pub mod sharded;
pub mod state;
