//! What one peer may make this cluster hold (SPEC B1, B2, B3), and why a
//! resource it sent was refused.
//!
//! The caps are checked on counts before anything is decoded or allocated:
//! a service with more ports or endpoints than allowed is refused on its
//! own, and so is every service beyond the peer's service or endpoint cap.
//! The message size limits of both sides follow from the caps
//! ([`Limits::max_message_bytes`]), so that any state within them syncs.

use std::fmt;
use std::net::IpAddr;

use meshpeer_model::Cidr;
use meshpeer_model::address::{SpecialAddress, special_address};

/// Bounds on one peer's export, as this cluster accepts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Services held per peer (`--max-peer-services`); those beyond are
    /// refused (`over_service_cap`).
    pub max_services: usize,
    /// Endpoints per service (`--max-endpoints-per-service`); a service
    /// with more is refused whole (`too_many_endpoints`).
    pub max_endpoints_per_service: usize,
    /// Ports per service, and port targets per endpoint
    /// (`--max-ports-per-service`); more: refused (`too_many_ports`).
    pub max_ports_per_service: usize,
    /// Endpoints held per peer, all services together
    /// (`--max-peer-endpoints`); a service that would go beyond is refused
    /// (`over_endpoint_cap`).
    pub max_endpoints: usize,
    /// Where a peer's endpoints may be although their address is special
    /// (loopback, link-local, ...: P5); the demo's loopback pods.
    pub allow_endpoints: Vec<Cidr>,
}

impl Default for Limits {
    /// 50,000 services, 10,000 endpoints per service, 128 ports per
    /// service, 1,000,000 endpoints per peer; no special address allowed.
    fn default() -> Self {
        Limits {
            max_services: 50_000,
            max_endpoints_per_service: 10_000,
            max_ports_per_service: 128,
            max_endpoints: 1_000_000,
            allow_endpoints: Vec::new(),
        }
    }
}

/// Bytes a chunk of a delta aims at (a resource is never split, so one
/// larger resource makes a larger chunk).
pub const CHUNK_BYTES: usize = 1 << 20;

/// The smallest decode limit either side sets (tonic's default).
const MIN_MESSAGE_BYTES: usize = 4 << 20;

/// Upper bounds of the encoded size of a resource's parts, from the length
/// checks of [`crate::wire`] (names 63, hostnames and endpoint names 253,
/// locality parts 63, protocols 16) with protobuf framing.
const SERVICE_BYTES: usize = 2 * (63 + 3) + (253 + 3) + 3 * 2 + 2;
const PORT_BYTES: usize = (63 + 2) + 4 + (16 + 2) + 3;
const PORT_TARGET_BYTES: usize = 2 * 4 + 2;
const ENDPOINT_BYTES: usize = (16 + 2) + (253 + 3) + 4;
const LOCALITY_GROUP_BYTES: usize = 3 * (63 + 2) + 2 + 4;
const RESOURCE_BYTES: usize = (6 + 2 * 63 + 4) + (16 + 2) + 8;

impl Limits {
    /// Trusts everything (tests and tools that read back this cluster's
    /// own resources).
    pub fn unbounded() -> Self {
        let all = ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        Limits {
            max_services: usize::MAX,
            max_endpoints_per_service: usize::MAX,
            max_ports_per_service: usize::MAX,
            max_endpoints: usize::MAX,
            allow_endpoints: all,
        }
    }

    /// The largest encoded service resource within the caps.
    pub fn max_resource_bytes(&self) -> usize {
        let endpoints = self.max_endpoints_per_service;
        let ports = self.max_ports_per_service;
        let per_endpoint = ENDPOINT_BYTES.saturating_add(ports.saturating_mul(PORT_TARGET_BYTES));
        // At worst every endpoint is alone in its locality group.
        endpoints
            .saturating_mul(per_endpoint.saturating_add(LOCALITY_GROUP_BYTES))
            .saturating_add(ports.saturating_mul(PORT_BYTES))
            .saturating_add(SERVICE_BYTES + RESOURCE_BYTES)
    }

    /// The decode limit of a client holding these caps: one chunk plus the
    /// largest resource within them, at least 4 MiB. Any state within the
    /// caps syncs: the server splits it into chunks under this.
    pub fn max_message_bytes(&self) -> usize {
        CHUNK_BYTES
            .saturating_add(self.max_resource_bytes())
            .max(MIN_MESSAGE_BYTES)
    }

    /// Why an endpoint address of a peer is not taken (P5), unless allowed.
    pub(crate) fn address_refused(&self, addr: IpAddr) -> Option<SpecialAddress> {
        let special = special_address(addr)?;
        let forms = [addr, addr.to_canonical()];
        let allowed = self
            .allow_endpoints
            .iter()
            .any(|c| forms.iter().any(|a| c.contains(*a)));
        (!allowed).then_some(special)
    }
}

/// Why a resource of a peer was refused (B1, B2). [`RefuseReason::as_str`]
/// is the metric label and the word on the wire (`Ack.refused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefuseReason {
    /// A name or namespace that is not a DNS-1123 label, or a resource name
    /// that does not match its body.
    InvalidName,
    /// A hostname that is not the one the peer's segment gives, or not a
    /// valid DNS name.
    InvalidHostname,
    /// A port outside 1-65535, or a port name or protocol that cannot be one.
    InvalidPort,
    /// An endpoint address that is not 4 or 16 bytes, or not unicast (P5).
    InvalidAddress,
    /// Another field out of bounds (locality, endpoint name, enum value).
    InvalidField,
    /// More ports than `--max-ports-per-service`.
    TooManyPorts,
    /// More endpoints than `--max-endpoints-per-service`.
    TooManyEndpoints,
    /// Beyond `--max-peer-services`.
    OverServiceCap,
    /// Beyond `--max-peer-endpoints`.
    OverEndpointCap,
}

impl RefuseReason {
    pub const ALL: [RefuseReason; 9] = [
        RefuseReason::InvalidName,
        RefuseReason::InvalidHostname,
        RefuseReason::InvalidPort,
        RefuseReason::InvalidAddress,
        RefuseReason::InvalidField,
        RefuseReason::TooManyPorts,
        RefuseReason::TooManyEndpoints,
        RefuseReason::OverServiceCap,
        RefuseReason::OverEndpointCap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::InvalidName => "invalid_name",
            RefuseReason::InvalidHostname => "invalid_hostname",
            RefuseReason::InvalidPort => "invalid_port",
            RefuseReason::InvalidAddress => "invalid_address",
            RefuseReason::InvalidField => "invalid_field",
            RefuseReason::TooManyPorts => "too_many_ports",
            RefuseReason::TooManyEndpoints => "too_many_endpoints",
            RefuseReason::OverServiceCap => "over_service_cap",
            RefuseReason::OverEndpointCap => "over_endpoint_cap",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource of a peer this cluster does not take, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {reason}: {message}")]
pub struct RefusedResource {
    /// The resource's name as sent (at most [`MAX_SHOWN`] bytes of it).
    pub resource: String,
    pub reason: RefuseReason,
    pub message: String,
}

/// At most this many bytes of a peer's string are repeated in a name or
/// message.
pub const MAX_SHOWN: usize = 256;

/// `s`, cut to `max` bytes at a character boundary (with `...` when cut).
pub(crate) fn shown(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b3_the_message_limit_follows_the_caps() {
        let d = Limits::default();
        // 10,000 endpoints with 128 port targets each: ~16 MiB.
        assert!(
            d.max_resource_bytes() > 10 << 20,
            "{}",
            d.max_resource_bytes()
        );
        assert!(
            d.max_message_bytes() < 32 << 20,
            "{}",
            d.max_message_bytes()
        );
        let small = Limits {
            max_endpoints_per_service: 10,
            max_ports_per_service: 2,
            ..Limits::default()
        };
        assert_eq!(small.max_message_bytes(), MIN_MESSAGE_BYTES);
        assert_eq!(Limits::unbounded().max_message_bytes(), usize::MAX);
    }

    #[test]
    fn p5_special_addresses_are_refused_unless_allowed() {
        let mut l = Limits::default();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(l.address_refused(lo), Some(SpecialAddress::Loopback));
        assert_eq!(l.address_refused("10.0.0.1".parse().unwrap()), None);
        l.allow_endpoints = vec!["127.0.0.0/8".parse().unwrap()];
        assert_eq!(l.address_refused(lo), None);
        assert_eq!(l.address_refused("::ffff:127.0.0.1".parse().unwrap()), None);
        assert!(Limits::unbounded().address_refused(lo).is_none());
    }

    #[test]
    fn shown_cuts_at_a_character_boundary() {
        assert_eq!(shown("abc", 5), "abc");
        assert_eq!(shown("abcdef", 3), "abc...");
        assert_eq!(shown("ééé", 3), "é...");
    }
}
