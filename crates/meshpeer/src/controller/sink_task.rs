//! The output writer: renders the latest catalog and applies it and the peer
//! statuses to the sink, off the controller's loop. Only the latest job
//! matters: jobs that arrive while one is being written are coalesced.
//! Rendering is remembered per service: a service equal to the one rendered
//! last time reuses its ServiceEntry.

use std::sync::Arc;
use std::time::Duration;

use imbl::ordmap::DiffItem;
use meshpeer_model::catalog::GlobalCatalog;
use meshpeer_model::render::{service_entry, service_entry_name};
use meshpeer_store::{Desired, PeerStatus, Sink};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::metrics::ControllerMetrics;
use super::peers::DATA_PLANE_PROGRAMMED;

/// What the output should hold.
#[derive(Debug, Default)]
pub(crate) struct SinkJob {
    pub(crate) version: u64,
    /// Rendered here: one ServiceEntry per global service.
    pub(crate) catalog: Arc<GlobalCatalog>,
    pub(crate) statuses: Vec<PeerStatus>,
}

/// The catalog rendered last and its ServiceEntries, by name.
#[derive(Default)]
struct Rendered {
    catalog: Arc<GlobalCatalog>,
    entries: Desired,
}

impl Rendered {
    /// `render(catalog)`, by what changed since the last catalog: only the
    /// services that differ are rendered again (SPEC I1).
    fn render(&mut self, catalog: &Arc<GlobalCatalog>) -> &Desired {
        for item in self.catalog.services.diff(&catalog.services) {
            match item {
                DiffItem::Add(_, svc) => {
                    self.entries
                        .insert(service_entry_name(svc), Arc::new(service_entry(svc)));
                }
                DiffItem::Update { old, new } => {
                    self.entries.remove(&service_entry_name(old.1));
                    self.entries
                        .insert(service_entry_name(new.1), Arc::new(service_entry(new.1)));
                }
                DiffItem::Remove(_, svc) => {
                    self.entries.remove(&service_entry_name(svc));
                }
            }
        }
        self.catalog = Arc::clone(catalog);
        &self.entries
    }
}

/// Runs until the job sender is dropped.
pub(crate) async fn run(
    mut sink: Box<dyn Sink>,
    mut jobs: watch::Receiver<Arc<SinkJob>>,
    error: watch::Sender<Option<String>>,
    applied: watch::Sender<u64>,
    metrics: Arc<ControllerMetrics>,
) {
    let mut rendered = Rendered::default();
    loop {
        let job = jobs.borrow_and_update().clone();
        if job.version > 0 {
            let result = sink.apply(rendered.render(&job.catalog)).await;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use meshpeer_model::render::render;
    use meshpeer_model::testing::{ClusterBuilder, svc};
    use meshpeer_model::{CatalogConfig, catalog};

    use super::*;

    fn afresh(catalog: &GlobalCatalog) -> Desired {
        meshpeer_store::desired(render(catalog))
    }

    fn catalog_of(b: ClusterBuilder) -> Arc<GlobalCatalog> {
        Arc::new(catalog(&b.build(), [], &CatalogConfig::default()))
    }

    #[test]
    fn g7_remembered_rendering_equals_rendering_afresh() {
        let mut rendered = Rendered::default();
        let first = catalog_of(
            ClusterBuilder::new("c1")
                .service(svc("a", "one").global().ready(1))
                .service(svc("a", "two").global().ready(1))
                .service(svc("a", "three").global().ready(1)),
        );
        assert_eq!(rendered.render(&first), &afresh(&first));
        // One service changes (more endpoints), one goes, one comes.
        let second = catalog_of(
            ClusterBuilder::new("c1")
                .service(svc("a", "one").global().ready(1))
                .service(svc("a", "two").global().ready(3))
                .service(svc("a", "four").global().ready(1)),
        );
        assert_ne!(render(&first), render(&second));
        assert_eq!(rendered.render(&second), &afresh(&second));
        // And back.
        assert_eq!(rendered.render(&first), &afresh(&first));
        let empty = Arc::new(GlobalCatalog::default());
        assert!(rendered.render(&empty).is_empty());
    }
}
