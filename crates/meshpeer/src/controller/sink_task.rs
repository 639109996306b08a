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
    /// Entries kept as the output held them at start, whatever the catalog
    /// says, until their peers sync again (sync gating after a restart).
    pub(crate) held: Desired,
    pub(crate) statuses: Vec<PeerStatus>,
}

/// The catalog rendered last and its ServiceEntries, by name; and the
/// output: those entries with the held ones in their place.
#[derive(Default)]
struct Rendered {
    catalog: Arc<GlobalCatalog>,
    entries: Desired,
    held: Desired,
    output: Desired,
}

impl Rendered {
    /// `render(catalog)` with `held` entries in place of (or besides) the
    /// rendered ones, by what changed since the last call: only the
    /// services that differ are rendered again, only the names whose
    /// entry or hold changed are looked at (SPEC I1).
    fn render(&mut self, catalog: &Arc<GlobalCatalog>, held: &Desired) -> &Desired {
        let mut touched = Vec::new();
        for item in self.catalog.services.diff(&catalog.services) {
            match item {
                DiffItem::Add(_, svc) => {
                    let name = service_entry_name(svc);
                    self.entries
                        .insert(name.clone(), Arc::new(service_entry(svc)));
                    touched.push(name);
                }
                DiffItem::Update { old, new } => {
                    let (was, name) = (service_entry_name(old.1), service_entry_name(new.1));
                    self.entries.remove(&was);
                    self.entries
                        .insert(name.clone(), Arc::new(service_entry(new.1)));
                    touched.extend([was, name]);
                }
                DiffItem::Remove(_, svc) => {
                    let name = service_entry_name(svc);
                    self.entries.remove(&name);
                    touched.push(name);
                }
            }
        }
        for item in self.held.diff(held) {
            match item {
                DiffItem::Add(name, _)
                | DiffItem::Remove(name, _)
                | DiffItem::Update { new: (name, _), .. } => touched.push(name.clone()),
            }
        }
        for name in touched {
            match held.get(&name).or_else(|| self.entries.get(&name)) {
                Some(se) => self.output.insert(name, Arc::clone(se)),
                None => self.output.remove(&name),
            };
        }
        self.catalog = Arc::clone(catalog);
        self.held = held.clone();
        &self.output
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
            let result = sink.apply(rendered.render(&job.catalog, &job.held)).await;
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
        let none = Desired::new();
        let first = catalog_of(
            ClusterBuilder::new("c1")
                .service(svc("a", "one").global().ready(1))
                .service(svc("a", "two").global().ready(1))
                .service(svc("a", "three").global().ready(1)),
        );
        assert_eq!(rendered.render(&first, &none), &afresh(&first));
        // One service changes (more endpoints), one goes, one comes.
        let second = catalog_of(
            ClusterBuilder::new("c1")
                .service(svc("a", "one").global().ready(1))
                .service(svc("a", "two").global().ready(3))
                .service(svc("a", "four").global().ready(1)),
        );
        assert_ne!(render(&first), render(&second));
        assert_eq!(rendered.render(&second, &none), &afresh(&second));
        // And back.
        assert_eq!(rendered.render(&first, &none), &afresh(&first));
        let empty = Arc::new(GlobalCatalog::default());
        assert!(rendered.render(&empty, &none).is_empty());
    }

    #[test]
    fn held_entries_stand_in_for_the_rendered_ones_until_released() {
        let mut rendered = Rendered::default();
        let catalog = catalog_of(
            ClusterBuilder::new("c1")
                .service(svc("a", "one").global().ready(1))
                .service(svc("a", "two").global().ready(1)),
        );
        let fresh = afresh(&catalog);
        // What the output held at start: `one` with other content, and
        // `gone` (a remote service whose peer has not synced yet).
        let mut old_one = (*fresh["autogen.a.one"]).clone();
        old_one.spec.hosts = vec!["before.a.mesh.internal".into()];
        let mut gone = old_one.clone();
        gone.metadata.name = Some("autogen.a.gone".into());
        let held: Desired = [
            ("autogen.a.one".to_owned(), Arc::new(old_one.clone())),
            ("autogen.a.gone".to_owned(), Arc::new(gone.clone())),
        ]
        .into_iter()
        .collect();
        let out = rendered.render(&catalog, &held).clone();
        assert_eq!(*out["autogen.a.one"], old_one);
        assert_eq!(*out["autogen.a.gone"], gone);
        assert_eq!(out["autogen.a.two"], fresh["autogen.a.two"]);
        // `gone` is released: it leaves; then `one`: it is rendered.
        let mut less = held.clone();
        less.remove("autogen.a.gone");
        let out = rendered.render(&catalog, &less).clone();
        assert!(!out.contains_key("autogen.a.gone"));
        assert_eq!(*out["autogen.a.one"], old_one);
        assert_eq!(rendered.render(&catalog, &Desired::new()), &fresh);
    }
}
