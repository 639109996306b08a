//! Where meshpeer's cluster snapshots come from and where its output goes.
//!
//! Sources ([`ClusterSource`]) report a cluster's objects as batches of
//! [`meshpeer_model::Change`]s; the controller applies each batch to its
//! snapshot under one short lock. Sinks ([`Sink`]) make the outside world
//! hold exactly the ServiceEntries (and, for upstream Istio, WorkloadEntries)
//! the catalog renders, and write peer status and HTTPRoute status.
//!
//! - File mode: a cluster is a folder of manifests plus `cluster.yaml`
//!   ([`file`], [`file_source`], [`file_sink`]).
//! - Kubernetes mode: kube-rs watchers and server-side apply
//!   ([`kube_source`], [`kube_sink`]).

mod conditions;
pub mod file;
pub mod file_sink;
pub mod file_source;
pub mod kube_sink;
pub mod kube_source;
mod managed;
mod sink;
mod source;

pub use file::{CLUSTER_FILE, LoadError, load_cluster_dir};
pub use managed::Generated;
pub use sink::{
    Desired, Existing, Output, PeerStatus, Sink, SinkError, SinkFuture, SinkReport, Workloads,
    desired, workloads,
};
pub use source::{ClusterSource, SourceError, Update};
