//! The output writer: applies the latest rendered catalog and peer statuses
//! to the sink, off the controller's loop. Only the latest job matters: jobs
//! that arrive while one is being written are coalesced.

use std::sync::Arc;
use std::time::Duration;

use meshpeer_model::objects::ServiceEntry;
use meshpeer_store::{PeerStatus, Sink};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::metrics::ControllerMetrics;
use super::peers::DATA_PLANE_PROGRAMMED;

/// What the output should hold.
#[derive(Debug, Default)]
pub(crate) struct SinkJob {
    pub(crate) version: u64,
    pub(crate) entries: Vec<ServiceEntry>,
    pub(crate) statuses: Vec<PeerStatus>,
}

/// Runs until the job sender is dropped.
pub(crate) async fn run(
    mut sink: Box<dyn Sink>,
    mut jobs: watch::Receiver<Arc<SinkJob>>,
    error: watch::Sender<Option<String>>,
    applied: watch::Sender<u64>,
    metrics: Arc<ControllerMetrics>,
) {
    loop {
        let job = jobs.borrow_and_update().clone();
        if job.version > 0 {
            let result = sink.apply(&job.entries).await;
            let mut statuses = job.statuses.clone();
            match &result {
                Ok(report) => {
                    metrics.output_applies.get_or_create(&ok_label(true)).inc();
                    debug!(
                        version = job.version,
                        applied = report.applied,
                        unchanged = report.unchanged,
                        deleted = report.deleted,
                        "output written"
                    );
                    error.send_replace(None);
                }
                Err(e) => {
                    metrics.output_applies.get_or_create(&ok_label(false)).inc();
                    warn!(sink = %sink.describe(), error = %e, "cannot write the output; will retry");
                    error.send_replace(Some(e.to_string()));
                    // The peers' services are not in the data plane then.
                    for s in &mut statuses {
                        for c in &mut s.conditions {
                            if c.type_ == DATA_PLANE_PROGRAMMED {
                                c.status = "False".into();
                                c.reason = Some("OutputFailed".into());
                                c.message = Some(format!("writing the output failed: {e}"));
                            }
                        }
                    }
                }
            }
            if let Err(e) = sink.write_status(&statuses).await {
                warn!(sink = %sink.describe(), error = %e, "cannot write peer status");
            }
            if result.is_ok() {
                applied.send_replace(job.version);
            } else {
                // Retry after a pause, unless a newer job comes first.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    changed = jobs.changed() => if changed.is_err() { return },
                }
                continue;
            }
        }
        if jobs.changed().await.is_err() {
            return;
        }
    }
}

fn ok_label(ok: bool) -> super::metrics::ResultLabels {
    super::metrics::ResultLabels {
        result: if ok { "ok" } else { "error" }.to_owned(),
    }
}
