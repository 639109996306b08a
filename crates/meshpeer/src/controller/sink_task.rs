//! The output writer: renders the latest catalog and applies it, the peer
//! statuses and the HTTPRoute statuses (`catalog.route_status`, written only
//! when they changed since the last successful write) to the sink, off the
//! controller's loop. Only the latest job
//! matters: jobs that arrive while one is being written are coalesced.
//! Rendering is remembered per service: a service equal to the one rendered
//! last time reuses its ServiceEntry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use imbl::ordmap::DiffItem;
use meshpeer_model::catalog::{GlobalCatalog, GlobalService};
use meshpeer_model::objects::{ServiceEntry, WorkloadEntry};
use meshpeer_model::render::{IstioFlavor, service_entry, service_entry_name, upstream_entry};
use meshpeer_model::routes::RouteStatus;
use meshpeer_store::{Desired, Output, PeerStatus, Sink};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::hold::HeldWorkloads;
use super::metrics::ControllerMetrics;
use super::peers::DATA_PLANE_PROGRAMMED;

/// What the output should hold.
#[derive(Debug, Default)]
pub(crate) struct SinkJob {
    pub(crate) version: u64,
    /// Rendered here: one ServiceEntry per global service (and, upstream,
    /// its WorkloadEntries).
    pub(crate) catalog: Arc<GlobalCatalog>,
    /// Entries kept as the output held them at start, whatever the catalog
    /// says, until their peers sync again (sync gating after a restart).
    pub(crate) held: Desired,
    /// The WorkloadEntries of the held entries, by entry name.
    pub(crate) held_workloads: HeldWorkloads,
    pub(crate) statuses: Vec<PeerStatus>,
}

/// The WorkloadEntries of one ServiceEntry.
type Workloads = Arc<[Arc<WorkloadEntry>]>;

/// The catalog rendered last and its objects, by entry name; and the
/// output: those objects with the held ones in their place.
#[derive(Default)]
struct Rendered {
    flavor: IstioFlavor,
    catalog: Arc<GlobalCatalog>,
    entries: Desired,
    workloads: imbl::OrdMap<String, Workloads>,
    held: Desired,
    held_workloads: HeldWorkloads,
    output: Output,
    /// Per entry name, the names of the WorkloadEntries `output` holds
    /// for it.
    in_output: BTreeMap<String, Vec<String>>,
}

impl Rendered {
    fn new(flavor: IstioFlavor) -> Self {
        Rendered {
            flavor,
            ..Rendered::default()
        }
    }

    /// One service's objects in this flavor.
    fn render_one(
        &self,
        catalog: &GlobalCatalog,
        svc: &GlobalService,
    ) -> (Arc<ServiceEntry>, Option<Workloads>) {
        match self.flavor {
            IstioFlavor::Solo => (Arc::new(service_entry(svc)), None),
            IstioFlavor::Upstream => {
                let u = upstream_entry(catalog, svc);
                let wl: Workloads = u.workload_entries.into_iter().map(Arc::new).collect();
                (Arc::new(u.service_entry), Some(wl))
            }
        }
    }

    /// `render(catalog)` with `held` entries (and their WorkloadEntries) in
    /// place of (or besides) the rendered ones, by what changed since the
    /// last call: only the services that differ are rendered again, only
    /// the names whose entry or hold changed are looked at (SPEC I1). The
    /// upstream flavor reads the links' trust domains: a change of the
    /// links or of the cluster renders every service again.
    fn render(
        &mut self,
        catalog: &Arc<GlobalCatalog>,
        held: &Desired,
        held_workloads: &HeldWorkloads,
    ) -> &Output {
        let mut touched = Vec::new();
        let everything = self.flavor == IstioFlavor::Upstream
            && (self.catalog.links != catalog.links || self.catalog.cluster != catalog.cluster);
        if everything {
            touched.extend(self.entries.keys().cloned());
            self.entries = Desired::new();
            self.workloads = imbl::OrdMap::new();
            for svc in catalog.services.values() {
                let name = service_entry_name(svc);
                let (se, wl) = self.render_one(catalog, svc);
                self.entries.insert(name.clone(), se);
                if let Some(wl) = wl {
                    self.workloads.insert(name.clone(), wl);
                }
                touched.push(name);
            }
        } else {
            for item in self.catalog.services.diff(&catalog.services) {
                let (was, now) = match item {
                    DiffItem::Add(_, svc) => (None, Some(svc)),
                    DiffItem::Update { old, new } => (Some(old.1), Some(new.1)),
                    DiffItem::Remove(_, svc) => (Some(svc), None),
                };
                if let Some(svc) = was {
                    let name = service_entry_name(svc);
                    self.entries.remove(&name);
                    self.workloads.remove(&name);
                    touched.push(name);
                }
                if let Some(svc) = now {
                    let name = service_entry_name(svc);
                    let (se, wl) = self.render_one(catalog, svc);
                    self.entries.insert(name.clone(), se);
                    if let Some(wl) = wl {
                        self.workloads.insert(name.clone(), wl);
                    }
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
        for item in self.held_workloads.diff(held_workloads) {
            match item {
                DiffItem::Add(name, _)
                | DiffItem::Remove(name, _)
                | DiffItem::Update { new: (name, _), .. } => touched.push(name.clone()),
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for name in touched {
            for we in self.in_output.remove(&name).unwrap_or_default() {
                self.output.workloads.remove(&we);
            }
            // A held entry brings its own WorkloadEntries (or none).
            let (se, wl) = match held.get(&name) {
                Some(se) => (Some(se), held_workloads.get(&name)),
                None => (self.entries.get(&name), self.workloads.get(&name)),
            };
            match se {
                Some(se) => self.output.entries.insert(name.clone(), Arc::clone(se)),
                None => self.output.entries.remove(&name),
            };
            if let (Some(_), Some(wl)) = (se, wl) {
                let names = wl
                    .iter()
                    .map(|we| {
                        let n = we.metadata.name.clone().unwrap_or_default();
                        self.output.workloads.insert(n.clone(), Arc::clone(we));
                        n
                    })
                    .collect();
                self.in_output.insert(name, names);
            }
        }
        self.catalog = Arc::clone(catalog);
        self.held = held.clone();
        self.held_workloads = held_workloads.clone();
        &self.output
    }
}

/// Runs until the job sender is dropped.
pub(crate) async fn run(
    mut sink: Box<dyn Sink>,
    flavor: IstioFlavor,
    mut jobs: watch::Receiver<Arc<SinkJob>>,
    error: watch::Sender<Option<String>>,
    applied: watch::Sender<u64>,
    metrics: Arc<ControllerMetrics>,
) {
    let mut rendered = Rendered::new(flavor);
    // The route statuses last written; `None` until a write succeeds (the
    // first one also clears what an earlier run left).
    let mut routes_written: Option<Vec<RouteStatus>> = None;
    loop {
        let job = jobs.borrow_and_update().clone();
        if job.version > 0 {
            let result = sink
                .apply(rendered.render(&job.catalog, &job.held, &job.held_workloads))
                .await;
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
            let routes_ok = write_route_status(
                &mut *sink,
                &job.catalog.route_status,
                &mut routes_written,
                &metrics,
            )
            .await;
            if result.is_ok() {
                applied.send_replace(job.version);
            }
            if result.is_err() || !routes_ok {
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

/// Writes the route statuses unless they are the ones last written; false
/// when the write failed (to be retried).
async fn write_route_status(
    sink: &mut dyn Sink,
    routes: &[RouteStatus],
    written: &mut Option<Vec<RouteStatus>>,
    metrics: &ControllerMetrics,
) -> bool {
    if written.as_deref() == Some(routes) {
        return true;
    }
    match sink.write_route_status(routes).await {
        Ok(()) => {
            metrics
                .route_status_writes
                .get_or_create(&ok_label(true))
                .inc();
            debug!(routes = routes.len(), "route status written");
            *written = Some(routes.to_vec());
            true
        }
        Err(e) => {
            metrics
                .route_status_writes
                .get_or_create(&ok_label(false))
                .inc();
            warn!(sink = %sink.describe(), error = %e, "cannot write route status; will retry");
            *written = None;
            false
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

    use meshpeer_model::render::{render, render_upstream};
    use meshpeer_model::testing::{ClusterBuilder, svc};
    use meshpeer_model::{CatalogConfig, catalog};

    use super::*;

    fn afresh(flavor: IstioFlavor, catalog: &GlobalCatalog) -> Output {
        match flavor {
            IstioFlavor::Solo => Output::of_entries(meshpeer_store::desired(render(catalog))),
            IstioFlavor::Upstream => {
                let all = render_upstream(catalog);
                Output {
                    entries: meshpeer_store::desired(all.iter().map(|u| u.service_entry.clone())),
                    workloads: meshpeer_store::workloads(
                        all.into_iter().flat_map(|u| u.workload_entries),
                    ),
                }
            }
        }
    }

    fn catalog_of(b: ClusterBuilder) -> Arc<GlobalCatalog> {
        Arc::new(catalog(&b.build(), [], &CatalogConfig::default()))
    }

    fn none() -> (Desired, HeldWorkloads) {
        (Desired::new(), HeldWorkloads::new())
    }

    #[test]
    fn g7_remembered_rendering_equals_rendering_afresh_in_both_flavors() {
        for flavor in [IstioFlavor::Solo, IstioFlavor::Upstream] {
            let mut rendered = Rendered::new(flavor);
            let (held, held_wl) = none();
            let first = catalog_of(
                ClusterBuilder::new("c1")
                    .service(svc("a", "one").global().ready(1))
                    .service(svc("a", "two").global().ready(1))
                    .service(svc("a", "three").global().ready(1)),
            );
            assert_eq!(
                rendered.render(&first, &held, &held_wl),
                &afresh(flavor, &first)
            );
            // One service changes (more endpoints), one goes, one comes.
            let second = catalog_of(
                ClusterBuilder::new("c1")
                    .service(svc("a", "one").global().ready(1))
                    .service(svc("a", "two").global().ready(3))
                    .service(svc("a", "four").global().ready(1)),
            );
            assert_ne!(afresh(flavor, &first), afresh(flavor, &second));
            let out = rendered.render(&second, &held, &held_wl).clone();
            assert_eq!(out, afresh(flavor, &second), "{flavor}");
            if flavor == IstioFlavor::Upstream {
                // Three endpoints of `two`, one of `one` and one of `four`.
                assert_eq!(out.workloads.len(), 5);
            } else {
                assert!(out.workloads.is_empty());
            }
            // And back.
            assert_eq!(
                rendered.render(&first, &held, &held_wl),
                &afresh(flavor, &first)
            );
            let empty = Arc::new(GlobalCatalog::default());
            assert!(rendered.render(&empty, &held, &held_wl).is_empty());
        }
    }

    #[test]
    fn held_entries_stand_in_for_the_rendered_ones_with_their_workload_entries() {
        let mut rendered = Rendered::new(IstioFlavor::Upstream);
        let catalog = catalog_of(
            ClusterBuilder::new("c1")
                .service(svc("a", "one").global().ready(2))
                .service(svc("a", "two").global().ready(1)),
        );
        let fresh = afresh(IstioFlavor::Upstream, &catalog);
        // What the output held at start: `one` with other content and one
        // WorkloadEntry of its own, and `gone` (a remote service whose peer
        // has not synced yet) with none.
        let mut old_one = (*fresh.entries["autogen.a.one"]).clone();
        old_one.spec.hosts = vec!["before.a.mesh.internal".into()];
        let old_we = {
            let first = fresh
                .workloads
                .values()
                .find(|w| {
                    w.metadata
                        .name
                        .as_deref()
                        .unwrap()
                        .starts_with("autogen.a.one.")
                })
                .unwrap();
            let mut we = (**first).clone();
            we.metadata.name = Some("autogen.a.one.c1.before".into());
            Arc::new(we)
        };
        let mut gone = old_one.clone();
        gone.metadata.name = Some("autogen.a.gone".into());
        let held: Desired = [
            ("autogen.a.one".to_owned(), Arc::new(old_one.clone())),
            ("autogen.a.gone".to_owned(), Arc::new(gone.clone())),
        ]
        .into_iter()
        .collect();
        let held_wl: HeldWorkloads = [(
            "autogen.a.one".to_owned(),
            Workloads::from(vec![Arc::clone(&old_we)]),
        )]
        .into_iter()
        .collect();
        let out = rendered.render(&catalog, &held, &held_wl).clone();
        assert_eq!(*out.entries["autogen.a.one"], old_one);
        assert_eq!(*out.entries["autogen.a.gone"], gone);
        assert_eq!(out.entries["autogen.a.two"], fresh.entries["autogen.a.two"]);
        let one: Vec<&str> = out
            .workloads
            .keys()
            .filter(|n| n.starts_with("autogen.a.one."))
            .map(String::as_str)
            .collect();
        assert_eq!(one, ["autogen.a.one.c1.before"], "only the held endpoints");
        // `gone` is released: it leaves; then `one`: it is rendered, and
        // its held WorkloadEntry gives way to the rendered ones.
        let mut less = held.clone();
        less.remove("autogen.a.gone");
        let out = rendered.render(&catalog, &less, &held_wl).clone();
        assert!(!out.entries.contains_key("autogen.a.gone"));
        assert_eq!(*out.entries["autogen.a.one"], old_one);
        assert_eq!(
            rendered.render(&catalog, &Desired::new(), &HeldWorkloads::new()),
            &fresh
        );
    }

    /// Records route status writes; the first `fail` of them fail.
    struct RouteRecorder {
        writes: tokio::sync::mpsc::UnboundedSender<Vec<RouteStatus>>,
        fail: usize,
    }

    impl Sink for RouteRecorder {
        fn describe(&self) -> String {
            "recorder".into()
        }

        fn existing(&mut self) -> meshpeer_store::SinkFuture<'_, meshpeer_store::Existing> {
            Box::pin(async { Ok(meshpeer_store::Existing::default()) })
        }

        fn apply<'a>(
            &'a mut self,
            _: &'a Output,
        ) -> meshpeer_store::SinkFuture<'a, meshpeer_store::SinkReport> {
            Box::pin(async { Ok(meshpeer_store::SinkReport::default()) })
        }

        fn write_status<'a>(
            &'a mut self,
            _: &'a [PeerStatus],
        ) -> meshpeer_store::SinkFuture<'a, ()> {
            Box::pin(async { Ok(()) })
        }

        fn write_route_status<'a>(
            &'a mut self,
            routes: &'a [RouteStatus],
        ) -> meshpeer_store::SinkFuture<'a, ()> {
            let _ = self.writes.send(routes.to_vec());
            let fail = self.fail > 0;
            self.fail = self.fail.saturating_sub(1);
            Box::pin(async move {
                if fail {
                    Err(meshpeer_store::SinkError::Other("refused".into()))
                } else {
                    Ok(())
                }
            })
        }
    }

    fn route(name: &str, generation: i64) -> RouteStatus {
        RouteStatus {
            namespace: "bookinfo".into(),
            name: name.into(),
            generation: Some(generation),
            parents: Vec::new(),
        }
    }

    fn job(version: u64, routes: Vec<RouteStatus>) -> Arc<SinkJob> {
        Arc::new(SinkJob {
            version,
            catalog: Arc::new(GlobalCatalog {
                route_status: routes,
                ..GlobalCatalog::default()
            }),
            ..SinkJob::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn l7_route_status_is_written_when_it_changed_and_retried_when_it_failed() {
        let (writes_tx, mut writes) = tokio::sync::mpsc::unbounded_channel();
        let sink = RouteRecorder {
            writes: writes_tx,
            fail: 1,
        };
        let (jobs_tx, jobs) = watch::channel(Arc::new(SinkJob::default()));
        let (error, _) = watch::channel(None);
        let (applied, mut applied_rx) = watch::channel(0);
        let metrics =
            ControllerMetrics::register(&mut prometheus_client::registry::Registry::default());
        let task = tokio::spawn(run(
            Box::new(sink),
            IstioFlavor::Solo,
            jobs,
            error,
            applied,
            Arc::clone(&metrics),
        ));

        // The first write fails: tried again after the pause, unasked.
        jobs_tx.send_replace(job(1, vec![route("reviews", 1)]));
        assert_eq!(writes.recv().await.unwrap(), vec![route("reviews", 1)]);
        assert_eq!(writes.recv().await.unwrap(), vec![route("reviews", 1)]);
        let failed = metrics
            .route_status_writes
            .get_or_create(&ok_label(false))
            .get();
        assert_eq!(failed, 1);

        // A new catalog with the same route status: not written again.
        jobs_tx.send_replace(job(2, vec![route("reviews", 1)]));
        applied_rx.wait_for(|v| *v == 2).await.unwrap();
        // A changed one (and then none) is.
        jobs_tx.send_replace(job(3, vec![route("reviews", 2)]));
        assert_eq!(writes.recv().await.unwrap(), vec![route("reviews", 2)]);
        jobs_tx.send_replace(job(4, vec![]));
        assert_eq!(writes.recv().await.unwrap(), vec![]);
        applied_rx.wait_for(|v| *v == 4).await.unwrap();
        assert!(writes.try_recv().is_err(), "job 2 wrote nothing");
        let ok = metrics
            .route_status_writes
            .get_or_create(&ok_label(true))
            .get();
        assert_eq!(ok, 3);
        drop(jobs_tx);
        task.await.unwrap();
    }
}
