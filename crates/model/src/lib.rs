//! meshpeer's pure core.
//!
//! Given the objects of a cluster ([`ClusterSnapshot`]) this crate works out
//! what the cluster exports to its peers ([`exports`]), what it sees of the
//! mesh given its peers' exports ([`catalog`]), which endpoints a client
//! should prefer ([`rank`]), and the Istio objects that represent it
//! ([`render`]). Every rule of SPEC sections 1-5 lives here as a pure
//! function: no I/O, no async runtime, no clock. Bad input becomes a
//! [`Diagnostic`] naming the rule, the object, the field and the value.

pub mod address;
pub mod catalog;
pub mod cluster;
pub mod crd;
pub mod diag;
pub mod endpoints;
pub mod engine;
pub mod export;
pub mod gateways;
pub mod labels;
pub mod links;
pub mod manual;
pub mod objects;
pub mod parse;
pub mod pmap;
pub mod ports;
pub mod rank;
pub mod render;
pub mod routes;
pub mod scope;
pub mod segments;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "testing")]
pub mod testing_b7;
#[cfg(test)]
mod testing_support;
pub mod trust;
pub mod validate;
pub mod vip;

pub use catalog::{
    CatalogConfig, Contribution, GlobalCatalog, GlobalService, LocalTakeover, Reach, catalog,
    catalog_with,
};
pub use cluster::{Change, ClusterConfig, ClusterSnapshot, ConfigError};
pub use diag::{Diagnostic, ObjectRef, Rule, Severity};
pub use endpoints::{Endpoint, Locality, LocalityGroup, PortTarget};
pub use export::{ClusterInfo, Export, ExportedService, exports};
pub use links::{EastWestGateway, PeerLink};
pub use manual::{ManualEndpoint, ManualEntry, is_in_domain};
pub use objects::{Kind, NsName, Object, ObjectKey};
pub use parse::{ParseError, Parsed, parse_documents};
pub use pmap::{ArcMap, Keyed};
pub use ports::ServicePort;
pub use rank::{ClientLocation, EndpointGroup, rank, rank_with};
pub use render::{render, service_entry, service_entry_name};
pub use scope::{Scope, TrafficDistribution};
pub use segments::SegmentDef;
pub use trust::PeerRefusal;
pub use vip::{Cidr, VipAllocation};
