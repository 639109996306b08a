//! The contract every output sink keeps.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use meshpeer_model::NsName;
use meshpeer_model::objects::{Condition, ServiceEntry, WorkloadEntry};
use meshpeer_model::routes::RouteStatus;

/// The status conditions of one remote-peer Gateway (SPEC C5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The remote-peer Gateway (`istio-eastwest/istio-remote-peer-<cluster>`).
    pub gateway: NsName,
    /// Conditions meshpeer owns on it (`Accepted`, `Programmed`,
    /// `gloo.solo.io/PeerConnected`, ...). Other conditions are left alone.
    pub conditions: Vec<Condition>,
}

/// What one `apply` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Objects created or changed.
    pub applied: usize,
    /// Objects already as wanted (not rewritten).
    pub unchanged: usize,
    /// meshpeer-managed objects removed because they are no longer wanted.
    pub deleted: usize,
}

impl std::ops::Add for SinkReport {
    type Output = SinkReport;

    /// What two writes did together (one per kind of object).
    fn add(self, other: SinkReport) -> SinkReport {
        SinkReport {
            applied: self.applied + other.applied,
            unchanged: self.unchanged + other.unchanged,
            deleted: self.deleted + other.deleted,
        }
    }
}

/// Output that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// The ServiceEntries an output should hold, by name: a persistent map, so
/// that a sink compares a new version with the last one it wrote by what
/// changed (SPEC I1), not entry by entry.
pub type Desired = imbl::OrdMap<String, Arc<ServiceEntry>>;

/// The WorkloadEntries an output should hold, by name (`--istio-flavor
/// upstream`: the endpoints its ServiceEntries select).
pub type Workloads = imbl::OrdMap<String, Arc<WorkloadEntry>>;

/// Everything an output should hold among meshpeer-managed objects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    pub entries: Desired,
    pub workloads: Workloads,
}

impl Output {
    /// An output of ServiceEntries only (Solo's flavor).
    pub fn of_entries(entries: Desired) -> Self {
        Output {
            entries,
            workloads: Workloads::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.workloads.is_empty()
    }
}

/// meshpeer-managed objects an output holds, read back on start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Existing {
    pub entries: Vec<ServiceEntry>,
    pub workloads: Vec<WorkloadEntry>,
}

/// The desired map of a list of ServiceEntries (tests, one-shot writers).
pub fn desired<I: IntoIterator<Item = ServiceEntry>>(entries: I) -> Desired {
    entries
        .into_iter()
        .map(|se| (se.metadata.name.clone().unwrap_or_default(), Arc::new(se)))
        .collect()
}

/// The desired map of a list of WorkloadEntries.
pub fn workloads<I: IntoIterator<Item = WorkloadEntry>>(entries: I) -> Workloads {
    entries
        .into_iter()
        .map(|we| (we.metadata.name.clone().unwrap_or_default(), Arc::new(we)))
        .collect()
}

pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'a>>;

/// Where the rendered catalog goes.
pub trait Sink: Send + 'static {
    /// For logs: `folder out/cluster1`, `Kubernetes istio-system`.
    fn describe(&self) -> String;

    /// meshpeer-managed ServiceEntries and WorkloadEntries the output holds
    /// now (read back on start, so VIPs survive restarts and held entries
    /// keep their endpoints).
    fn existing(&mut self) -> SinkFuture<'_, Existing>;

    /// Makes the output hold exactly `desired` among meshpeer-managed
    /// objects of both kinds: creates and updates what differs, deletes
    /// managed objects no longer wanted, never touches objects without
    /// meshpeer's managed-by label. ServiceEntries are written before
    /// WorkloadEntries, so a removed entry stops selecting before its
    /// endpoints go.
    fn apply<'a>(&'a mut self, desired: &'a Output) -> SinkFuture<'a, SinkReport>;

    /// Writes the peer conditions of remote-peer Gateways.
    fn write_status<'a>(&'a mut self, statuses: &'a [PeerStatus]) -> SinkFuture<'a, ()>;

    /// Writes meshpeer's parents of each HTTPRoute's status (SPEC L7):
    /// `routes` is every route meshpeer handles, as the catalog gives them
    /// (conditions without `lastTransitionTime`: the sink keeps the one
    /// written before while a condition's status stays, else stamps now).
    /// A route that no longer exists is not an error.
    fn write_route_status<'a>(&'a mut self, routes: &'a [RouteStatus]) -> SinkFuture<'a, ()>;
}
