//! Where meshpeer's cluster snapshots come from and where its output goes.
//!
//! File mode: a cluster is a folder of Kubernetes manifests plus a
//! `cluster.yaml` ([`file`]).

pub mod file;

pub use file::{CLUSTER_FILE, LoadError, load_cluster_dir};
