//! The contract every cluster source keeps.

use std::future::Future;
use std::pin::Pin;

use meshpeer_model::Change;
use tokio::sync::mpsc;

/// A batch of changes, applied together.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Update {
    pub changes: Vec<Change>,
}

/// A source that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Load(#[from] crate::file::LoadError),
    #[error("watching {what} failed: {message}")]
    Watch { what: String, message: String },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Where a cluster's objects come from.
///
/// A source runs as one task and sends [`Update`]s until the receiver is
/// dropped. Its first update holds the complete state: the config
/// ([`Change::Config`]), a [`Change::Replace`] for every kind it reads, and
/// its diagnostics ([`Change::SourceDiagnostics`]). Later updates are
/// incremental. A source never sends a partial state as if it were complete
/// (a Kubernetes source waits until every watcher has listed). Input that
/// cannot be read is reported as diagnostics, and the last good state of that
/// input is kept.
pub trait ClusterSource: Send + 'static {
    /// For logs: `folder examples/httpbin/cluster1`, `Kubernetes context kind-c1`.
    fn describe(&self) -> String;

    /// Runs until `tx` is closed (then `Ok`) or the source cannot go on.
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Update>,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>>;
}
