//! The controller's state and its one writer: source updates and peer events
//! come in, are applied in batches, and each batch ends with one recompute
//! that publishes the export to peers, the catalog to readers and the
//! rendered objects to the output.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use imbl::ordmap::DiffItem;
use meshpeer_model::engine::{CatalogEngine, ExportEngine, OwnChanges};
use meshpeer_model::render::upstream::{cluster_identity_gap, clusters_without_identity};
use meshpeer_model::trust::{
    REASON_HOSTNAME_REFUSED, REASON_SEGMENT_NOT_DEFINED, REASON_SEGMENT_PIN_MISMATCH,
};
use meshpeer_model::{Export, GlobalCatalog, PeerLink, Reach};
use meshpeer_peering::{
    Admission, Backoff, Connector, ExportPublisher, Limits, LinkConfig, LocalInfo,
    Metrics as PeeringMetrics, PeerUpdate, PeeringService, run_link,
};
use meshpeer_store::{PeerStatus, Update};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::hold::Hold;
use super::metrics::{ControllerMetrics, RefusalLabels};
use super::peers::PeerState;
use super::sink_task::SinkJob;
use super::view::{RecomputeStats, RefusedView, ServedView, Status, View};
use meshpeer_dataplane::feed::{Caller, CatalogFeed};

/// Every reason a peer's services may be refused for (P2, P3).
const REFUSAL_REASONS: [&str; 3] = [
    REASON_SEGMENT_PIN_MISMATCH,
    REASON_SEGMENT_NOT_DEFINED,
    REASON_HOSTNAME_REFUSED,
];

/// Settings the core needs.
pub(crate) struct CoreSettings {
    pub(crate) heartbeat: Duration,
    pub(crate) grace: Duration,
    pub(crate) peering_address: String,
    /// Who may peer, before this cluster's links are known (P1).
    pub(crate) admission: Admission,
    /// What one peer may make this cluster hold (B1, B2).
    pub(crate) limits: Arc<Limits>,
}

pub(crate) struct Core {
    pub(crate) settings: CoreSettings,
    /// This cluster's snapshot and export, kept by what changes (I1).
    pub(crate) exporter: ExportEngine,
    /// The catalog, kept by what changes in the export and the peers' (I1).
    pub(crate) cataloguer: CatalogEngine,
    /// Output entries kept as they were at start until their peers sync
    /// again (sync gating after a restart).
    pub(crate) hold: Hold,
    /// What of the snapshot besides the export changed since the catalog
    /// was last brought up to date.
    pub(crate) own_changes: OwnChanges,
    /// The source delivered its complete state.
    pub(crate) ready: bool,
    pub(crate) catalog: Arc<GlobalCatalog>,
    /// Services exported again since the last catalog update.
    pub(crate) pending_exported: usize,
    /// What the last recomputation touched, for status.
    pub(crate) last_step: RecomputeStats,
    /// Global services each peer contributes to, and those any peer
    /// contributes to, kept by what changes (not counted per publish).
    pub(crate) contributed: BTreeMap<String, usize>,
    pub(crate) imported: usize,
    pub(crate) peers: BTreeMap<String, PeerState>,
    pub(crate) link_tasks: BTreeMap<String, (PeerLink, JoinHandle<()>)>,
    pub(crate) publisher: ExportPublisher,
    pub(crate) service: PeeringService,
    pub(crate) local_info: watch::Sender<LocalInfo>,
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) peer_events: mpsc::Sender<PeerUpdate>,
    pub(crate) peering_metrics: Arc<PeeringMetrics>,
    pub(crate) metrics: Arc<ControllerMetrics>,
    pub(crate) view_tx: watch::Sender<Arc<View>>,
    pub(crate) feed_tx: watch::Sender<Arc<CatalogFeed>>,
    /// Clusters that link here, by `<trust domain>/<cluster>`, with when
    /// their stream went away (kept for the grace period).
    pub(crate) callers: BTreeMap<String, (Caller, Option<SystemTime>)>,
    /// When this controller started: until every linked peer is back (or
    /// the grace period since then is over), the feed says its callers are
    /// pending, so the gateway keeps the ones it knew.
    pub(crate) started: SystemTime,
    /// Every linked peer came back as a caller since the start, or the
    /// grace period is over (never false again).
    pub(crate) callers_settled: bool,
    /// Route backends that did not resolve (L2) while a linked peer had not
    /// sent its first state: logged once every linked peer has (or the
    /// grace period is over), if they still hold.
    pub(crate) deferred_diagnostics: Vec<meshpeer_model::Diagnostic>,
    /// For the upstream flavor (`None` for solo's): the global services
    /// with endpoints that carry no ServiceAccount, kept by what changed,
    /// for a G7 warning per exporting cluster.
    pub(crate) identity_gaps: Option<IdentityGaps>,
    pub(crate) sink_tx: watch::Sender<Arc<SinkJob>>,
    pub(crate) output_error: watch::Receiver<Option<String>>,
    pub(crate) snapshot_dirty: bool,
    pub(crate) catalog_dirty: bool,
    pub(crate) version: u64,
}

impl Core {
    /// Applies a batch from the source: only the services it touches are
    /// exported again.
    pub(crate) fn on_update(&mut self, update: Update) {
        self.metrics.source_updates.inc();
        let started = Instant::now();
        let step = self.exporter.apply(update.changes);
        self.metrics
            .export_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .services_exported_again
            .inc_by(step.recomputed as u64);
        self.pending_exported += step.recomputed;
        if step.export_changed {
            self.snapshot_dirty = true;
        }
        if step.snapshot_changed {
            self.catalog_dirty = true;
        }
        self.own_changes.gateways |= step.gateways_changed;
        self.own_changes.service_entries |= step.service_entries_changed;
        self.own_changes.routes |= step.routes_changed;
        if !self.ready {
            let snap = self.exporter.snapshot();
            info!(cluster = %snap.config.name, objects = snap.len(), "cluster state loaded");
            self.ready = true;
            self.snapshot_dirty = true;
            self.own_changes = OwnChanges::ALL;
        }
    }

    /// This cluster's snapshot.
    pub(crate) fn snapshot(&self) -> &meshpeer_model::ClusterSnapshot {
        self.exporter.snapshot()
    }

    /// This cluster's export.
    pub(crate) fn own_export(&self) -> &Export {
        self.exporter.export()
    }

    /// Applies an event about a peer.
    pub(crate) fn on_peer(&mut self, update: PeerUpdate) {
        let Some(peer) = self.peers.get_mut(&update.peer) else {
            return;
        };
        if peer.on_event(update.at, update.event, self.settings.grace) {
            self.catalog_dirty = true;
        }
    }

    /// Recomputes and publishes this cluster's export, if its input changed.
    /// Done apart from the catalog so that the peering streams, woken by the
    /// new export, get to run before the catalog is computed.
    pub(crate) fn publish_export(&mut self) {
        if !self.ready {
            return;
        }
        let export = self.exporter.export();
        // P3: the links' pins bind the peers served from now on, before they
        // are sent this export (the links may change without the export).
        if self.own_changes.gateways {
            let links = meshpeer_model::links::declared(self.snapshot(), &export.cluster.network);
            let mut admission = self.settings.admission.clone().with_links(&links);
            if !admission.own_cluster_bound {
                // Without a cluster binding of our own, our name is the
                // cluster a peer's chain may not claim.
                admission.own_cluster = export.cluster.name.clone();
            }
            self.service.set_admission(admission);
        }
        if !self.snapshot_dirty {
            return;
        }
        let version = self.publisher.publish(export);
        debug!(
            version,
            services = export.services.len(),
            "export published"
        );
        let info = LocalInfo {
            cluster: export.cluster.name.clone(),
            segment: export.cluster.segment_name().map(str::to_owned),
            trust_domain: export.cluster.trust_domain.clone(),
        };
        self.local_info.send_if_modified(|cur| {
            let changed = *cur != info;
            *cur = info;
            changed
        });
        self.snapshot_dirty = false;
        self.catalog_dirty = true;
    }

    /// Recomputes the catalog if anything changed, and publishes it.
    pub(crate) fn recompute(&mut self) {
        if !self.ready {
            return;
        }
        self.publish_export();
        let started = Instant::now();
        if self.catalog_dirty {
            self.compute_catalog();
            if self.reconcile_links() {
                // A removed link's services leave the catalog now.
                self.compute_catalog();
            }
            let seconds = started.elapsed().as_secs_f64();
            self.metrics.recompute_seconds.observe(seconds);
            self.last_step.seconds = seconds;
        }
        self.snapshot_dirty = false;
        self.catalog_dirty = false;
        self.publish();
    }

    fn compute_catalog(&mut self) {
        let peers: Vec<&Export> = self
            .peers
            .values()
            .filter_map(|p| p.export.as_deref())
            .collect();
        let step = self.cataloguer.update(
            self.exporter.snapshot(),
            self.exporter.export(),
            peers,
            self.own_changes,
        );
        self.own_changes = OwnChanges::default();
        self.metrics
            .services_merged_again
            .inc_by(step.merged as u64);
        self.metrics.hostnames_changed.inc_by(step.hostnames as u64);
        if step.full {
            self.metrics.full_recomputes.inc();
        }
        self.last_step = RecomputeStats {
            exported: self.pending_exported,
            merged: step.merged,
            hostnames: step.hostnames,
            full: step.full,
            seconds: 0.0,
        };
        self.pending_exported = 0;
        let mut next = self.cataloguer.catalog().clone();
        let old = Arc::clone(&self.catalog);
        self.account(&old, &next);
        if let Some(gaps) = &self.identity_gaps {
            // One finding per cluster: a few at most, put in order.
            for cluster in gaps.by_cluster.keys() {
                let d = cluster_identity_gap(&next.cluster.name, cluster);
                let at = next.diagnostics.binary_search(&d).unwrap_or_else(|i| i);
                next.diagnostics.insert(at, d);
            }
        }
        self.catalog = Arc::new(next);
    }

    /// Keeps `contributed`, `imported` and the identity gaps in step with
    /// a new catalog, by what changed.
    fn account(&mut self, old: &GlobalCatalog, new: &GlobalCatalog) {
        for item in old.services.diff(&new.services) {
            let (host, was, now) = match item {
                DiffItem::Add(host, s) => {
                    self.count(s, true);
                    (host, None, Some(s))
                }
                DiffItem::Remove(host, s) => {
                    self.count(s, false);
                    (host, Some(s), None)
                }
                DiffItem::Update { old, new } => {
                    self.count(old.1, false);
                    self.count(new.1, true);
                    (new.0, Some(old.1), Some(new.1))
                }
            };
            if let Some(gaps) = &mut self.identity_gaps {
                let was = was.map(|s| clusters_without_identity(s));
                let now = now.map(|s| clusters_without_identity(s));
                gaps.change(host, &was.unwrap_or_default(), &now.unwrap_or_default());
            }
        }
    }

    fn count(&mut self, s: &meshpeer_model::GlobalService, add: bool) {
        let mut remote = false;
        for c in s.contributions.iter().filter(|c| c.reach != Reach::Local) {
            remote = true;
            let n = self.contributed.entry(c.cluster.clone()).or_default();
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.contributed.remove(&c.cluster);
                }
            }
        }
        if remote {
            self.imported = if add {
                self.imported + 1
            } else {
                self.imported.saturating_sub(1)
            };
        }
    }

    /// Starts, restarts and stops link tasks to match the catalog's links;
    /// says whether a peer's export was dropped with its link. A link
    /// edited without changing its peer (same cluster and trust domain:
    /// labels, annotations, addresses) keeps the peer's export, stale while
    /// the new link task reconnects, for the grace period at most.
    fn reconcile_links(&mut self) -> bool {
        let wanted: BTreeMap<&str, &PeerLink> = self
            .catalog
            .links
            .iter()
            .map(|l| (l.cluster.as_str(), l))
            .collect();
        let changed: Vec<String> = self
            .link_tasks
            .iter()
            .filter(|(name, (link, _))| wanted.get(name.as_str()) != Some(&link))
            .map(|(name, _)| name.clone())
            .collect();
        let mut removed_any = false;
        let mut kept: BTreeMap<String, PeerState> = BTreeMap::new();
        for name in changed {
            let Some((old_link, task)) = self.link_tasks.remove(&name) else {
                continue;
            };
            task.abort();
            let old = self.peers.remove(&name);
            let same_peer = wanted.get(name.as_str()).is_some_and(|new| {
                new.cluster == old_link.cluster && new.trust_domain == old_link.trust_domain
            });
            match old {
                Some(old) if same_peer => {
                    info!(peer = %name, "link edited; the peer's export is kept (stale) while it reconnects");
                    kept.insert(name, old);
                }
                old => {
                    removed_any |= old.is_some_and(|p| p.export.is_some());
                    self.forget_refusal_metrics(&name);
                    self.peering_metrics.forget_peer(&name);
                    info!(peer = %name, "link removed, or now to another peer");
                }
            }
        }
        for (name, link) in wanted {
            if self.link_tasks.contains_key(name) {
                continue;
            }
            info!(peer = %name, addresses = ?link.addresses.iter().map(|a| &a.value).collect::<Vec<_>>(), port = link.xds_port, "linking to peer");
            let now = SystemTime::now();
            let peer = match kept.remove(name) {
                // A stale export keeps its deadline; a current one gets
                // the grace period from now.
                Some(old) => {
                    let until = old.stale_until.unwrap_or(now + self.settings.grace);
                    PeerState::kept(link.clone(), old, until)
                }
                None => PeerState::new(link.clone()),
            };
            let held_until = peer.stale_until.map(|until| {
                tokio::time::Instant::now() + until.duration_since(now).unwrap_or_default()
            });
            let cfg = LinkConfig {
                link: link.clone(),
                local: self.local_info.subscribe(),
                heartbeat: self.settings.heartbeat,
                grace: self.settings.grace,
                backoff: Backoff::default(),
                limits: Arc::clone(&self.settings.limits),
                held_until,
            };
            let task = tokio::spawn(run_link(
                cfg,
                Arc::clone(&self.connector),
                self.peer_events.clone(),
                Arc::clone(&self.peering_metrics),
            ));
            self.peers.insert(name.to_owned(), peer);
            self.link_tasks
                .insert(name.to_owned(), (link.clone(), task));
        }
        removed_any
    }

    /// Releases held output entries whose peers are settled: synced since
    /// the start, this cluster itself, or not linked; everything once the
    /// grace period is over. Costs the clusters still waited for.
    fn settle_hold(&mut self, now: SystemTime) {
        if self.hold.is_empty() {
            return;
        }
        let own = &self.exporter.snapshot().config.name;
        let settled: Vec<String> = self
            .hold
            .clusters()
            .filter(|c| c == own || self.peers.get(*c).is_none_or(|p| p.last_sync.is_some()))
            .map(str::to_owned)
            .collect();
        for c in settled {
            if self.hold.settle(&c) {
                debug!(peer = %c, "output entries released: the peer synced again");
            }
        }
        if self.hold.expire(now) {
            warn!(
                "grace period since the start is over: output entries of peers that did not sync again are released"
            );
        }
        if self.hold.is_empty() {
            self.cataloguer.release_parked();
            info!(
                "every peer contributing to the output synced again (or is gone): the output follows the catalog"
            );
        }
    }

    /// Whether held output entries wait for anything (the 1 s tick checks
    /// the grace period).
    pub(crate) fn holding(&self) -> bool {
        !self.hold.is_empty()
    }

    /// Publishes the view and the output job.
    pub(crate) fn publish(&mut self) {
        let now = SystemTime::now();
        self.settle_hold(now);
        let mut statuses = Vec::new();
        for (name, peer) in &mut self.peers {
            let generation = self
                .exporter
                .snapshot()
                .gateways
                .get(&peer.link.gateway)
                .and_then(|g| g.metadata.generation);
            let refusal = self
                .catalog
                .refused_peers
                .iter()
                .find(|r| &r.cluster == name);
            let listed = self.contributed.contains_key(name)
                || peer.export.as_ref().is_some_and(|e| e.services.is_empty());
            peer.update_conditions(listed, generation, now, refusal);
            for reason in REFUSAL_REASONS {
                let refused = refusal.filter(|r| r.reason == reason).map_or(0, |r| {
                    if r.whole {
                        peer.export.as_ref().map_or(0, |e| e.services.len())
                    } else {
                        r.services.len()
                    }
                });
                self.metrics
                    .refused_peer_services
                    .get_or_create(&RefusalLabels {
                        peer: name.clone(),
                        reason: reason.to_owned(),
                    })
                    .set(refused as i64);
            }
            statuses.push(PeerStatus {
                gateway: peer.link.gateway.clone(),
                conditions: peer.conditions.clone(),
            });
        }
        self.metrics
            .catalog_services
            .set(self.catalog.services.len() as i64);
        self.metrics
            .exported_services
            .set(self.own_export().services.len() as i64);
        self.version += 1;
        // Readers (data plane, API) first; rendering for the output after.
        self.refresh_callers(now);
        self.settle_callers(now);
        self.feed_tx.send_replace(Arc::new(CatalogFeed {
            version: self.version,
            catalog: Arc::clone(&self.catalog),
            callers: self.callers.values().map(|(c, _)| c.clone()).collect(),
            callers_pending: !self.callers_settled,
        }));
        let status = self.status();
        self.view_tx.send_replace(Arc::new(View {
            version: self.version,
            catalog: Arc::clone(&self.catalog),
            status,
        }));
        self.sink_tx.send_replace(Arc::new(SinkJob {
            version: self.version,
            catalog: Arc::clone(&self.catalog),
            held: self.hold.entries().clone(),
            held_workloads: self.hold.workloads().clone(),
            statuses,
        }));
    }

    fn status(&self) -> Status {
        let imported = self.imported;
        Status {
            cluster: self.catalog.cluster.clone(),
            peering_address: self.settings.peering_address.clone(),
            export_version: self.publisher.current().version,
            exported_services: self.own_export().services.len(),
            imported_services: imported,
            global_services: self.catalog.services.len(),
            peers: self.peers.values().map(PeerState::view).collect(),
            served: ServedView::of(&self.service),
            refused: RefusedView::of(&self.service),
            output_error: self.output_error.borrow().clone(),
            output_held: self.hold.entries().len(),
            diagnostics: crate::controller::view::Findings::of(&self.catalog),
            recompute: self.last_step.clone(),
        }
    }

    /// Settles the callers once every linked peer has synced since the
    /// start and links here again (its peering stream is up), or the grace
    /// period since the start is over; says whether that happened now.
    /// Until then the gateway keeps the callers it knew before a restart.
    /// A peer that this cluster does not link to is not waited for.
    pub(crate) fn settle_callers(&mut self, now: SystemTime) -> bool {
        if self.callers_settled || !self.ready {
            return false;
        }
        let over = now
            .duration_since(self.started)
            .is_ok_and(|d| d >= self.settings.grace);
        let back = self.peers.iter().all(|(name, p)| {
            p.last_sync.is_some()
                && self
                    .callers
                    .values()
                    .any(|(c, _)| c.cluster == *name && c.connected)
        });
        if !(over || back) {
            return false;
        }
        self.callers_settled = true;
        info!(
            grace_over = over,
            "callers settled: the gateway now follows this controller's list of callers"
        );
        true
    }

    /// Updates the callers from the peering server; says whether they changed.
    pub(crate) fn refresh_callers(&mut self, now: SystemTime) -> bool {
        let served = self.service.served();
        let before: Vec<(Caller, Option<SystemTime>)> = self.callers.values().cloned().collect();
        // A caller is a (trust domain, cluster): clusters may share a trust
        // domain, and the peering server admitted each one's name only when
        // its chain's cluster binding says it (P1, P6).
        for (_, (c, gone)) in self.callers.iter_mut() {
            if !served
                .iter()
                .any(|p| p.trust_domain == c.trust_domain && p.cluster == c.cluster)
                && c.connected
            {
                c.connected = false;
                *gone = Some(now);
            }
        }
        for p in &served {
            self.callers.insert(
                format!("{}/{}", p.trust_domain, p.cluster),
                (
                    Caller {
                        cluster: p.cluster.clone(),
                        trust_domain: p.trust_domain.clone(),
                        segment: p.segment.clone(),
                        connected: true,
                    },
                    None,
                ),
            );
        }
        let grace = self.settings.grace;
        self.callers.retain(|_, (_, gone)| {
            gone.is_none_or(|t| now.duration_since(t).unwrap_or_default() < grace)
        });
        let after: Vec<(Caller, Option<SystemTime>)> = self.callers.values().cloned().collect();
        before != after
    }

    /// Drops the refusal gauges of a peer that is no longer linked (B6).
    fn forget_refusal_metrics(&self, peer: &str) {
        for reason in REFUSAL_REASONS {
            self.metrics.refused_peer_services.remove(&RefusalLabels {
                peer: peer.to_owned(),
                reason: reason.to_owned(),
            });
        }
    }

    /// Stops every link task.
    pub(crate) fn stop_links(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.link_tasks) {
            task.abort();
        }
    }

    /// Logs diagnostics that are new since the last batch. A route backend
    /// that does not resolve (L2) while a linked peer has not yet sent its
    /// first state is most likely one of that peer's services: it is logged
    /// later ([`Core::log_deferred_diagnostics`]), and only if it still
    /// holds then, so a start-up does not log findings that the first sync
    /// clears. The catalog (page, `check`, `status`) has it all along.
    pub(crate) fn log_new_diagnostics(&mut self, before: &[meshpeer_model::Diagnostic]) {
        let now = SystemTime::now();
        // Most batches change no finding: compared in place, without a
        // copy or a hash.
        if before == self.catalog.diagnostics.as_slice() {
            self.log_deferred_diagnostics(now);
            return;
        }
        let waiting = self.waiting_for_first_sync(now);
        // A set, not a scan per diagnostic: a batch costs what the
        // findings number, not its square.
        let before: std::collections::HashSet<&meshpeer_model::Diagnostic> =
            before.iter().collect();
        let new: Vec<meshpeer_model::Diagnostic> = self
            .catalog
            .diagnostics
            .iter()
            .filter(|d| !before.contains(d))
            .cloned()
            .collect();
        for d in new {
            if waiting && d.rule == meshpeer_model::Rule::L2 {
                self.deferred_diagnostics.push(d);
            } else {
                log_diagnostic(&d);
            }
        }
        self.log_deferred_diagnostics(now);
    }

    /// Logs the deferred diagnostics that still hold, once no linked peer
    /// is awaited any more.
    pub(crate) fn log_deferred_diagnostics(&mut self, now: SystemTime) {
        if self.deferred_diagnostics.is_empty() || self.waiting_for_first_sync(now) {
            return;
        }
        let current: std::collections::HashSet<&meshpeer_model::Diagnostic> =
            self.catalog.diagnostics.iter().collect();
        for d in std::mem::take(&mut self.deferred_diagnostics) {
            if current.contains(&d) {
                log_diagnostic(&d);
            }
        }
    }

    /// Some linked peer has not sent its first state since the start, and
    /// the grace period is not over.
    fn waiting_for_first_sync(&self, now: SystemTime) -> bool {
        let over = now
            .duration_since(self.started)
            .is_ok_and(|d| d >= self.settings.grace);
        !over && self.peers.values().any(|p| p.last_sync.is_none())
    }
}

fn log_diagnostic(d: &meshpeer_model::Diagnostic) {
    match d.severity {
        meshpeer_model::Severity::Error | meshpeer_model::Severity::Warning => {
            warn!(rule = %d.rule, "{d}")
        }
        meshpeer_model::Severity::Info => info!(rule = %d.rule, "{d}"),
    }
}

/// Global services whose endpoints include some of no known Pod (so of no
/// known ServiceAccount), by exporting cluster: changed per changed
/// service, in the time of its contributions.
#[derive(Default)]
pub(crate) struct IdentityGaps {
    pub(crate) by_cluster: BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl IdentityGaps {
    /// `host`'s clusters with such endpoints were `was` (its previous
    /// version's) and are now `now`.
    fn change(&mut self, host: &str, was: &[&str], now: &[&str]) {
        for c in was {
            if let Some(hosts) = self.by_cluster.get_mut(*c) {
                hosts.remove(host);
                if hosts.is_empty() {
                    self.by_cluster.remove(*c);
                }
            }
        }
        for c in now {
            self.by_cluster
                .entry((*c).to_owned())
                .or_default()
                .insert(host.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdentityGaps;

    fn clusters(g: &IdentityGaps) -> Vec<(&str, Vec<&str>)> {
        g.by_cluster
            .iter()
            .map(|(c, hosts)| (c.as_str(), hosts.iter().map(String::as_str).collect()))
            .collect()
    }

    /// G7: a cluster has its finding while some service still has such
    /// endpoints there, and loses it with the last one.
    #[test]
    fn g7_identity_gaps_follow_each_service_and_go_with_the_last() {
        let mut g = IdentityGaps::default();
        g.change("a.ns.mesh.internal", &[], &["c1", "c2"]);
        g.change("b.ns.mesh.internal", &[], &["c2"]);
        assert_eq!(
            clusters(&g),
            [
                ("c1", vec!["a.ns.mesh.internal"]),
                ("c2", vec!["a.ns.mesh.internal", "b.ns.mesh.internal"])
            ]
        );
        // a's endpoints in c1 gain their Pods: c1 has no gap left.
        g.change("a.ns.mesh.internal", &["c1", "c2"], &["c2"]);
        assert_eq!(
            clusters(&g),
            [("c2", vec!["a.ns.mesh.internal", "b.ns.mesh.internal"])]
        );
        // Both services go (or are fixed): nothing is left.
        g.change("a.ns.mesh.internal", &["c2"], &[]);
        g.change("b.ns.mesh.internal", &["c2"], &[]);
        assert!(g.by_cluster.is_empty());
    }
}
