//! [`CatalogEngine`]: what a cluster sees of the mesh, kept up to date from
//! its own export and its peers' as they change. The versions of the inputs
//! are compared by what they share ([`imbl::OrdMap::diff`]), each changed
//! service re-merges one global service (one hostname), and VIPs are handed
//! out and freed one hostname at a time. The result always equals
//! [`crate::catalog_with`] given the previous allocation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use imbl::ordmap::DiffItem;

use crate::catalog::{
    Accepted, Contribution, GlobalCatalog, GlobalService, MergeKey, Placement, Verdict, collision,
    exhausted, judge, merge, place, vip_inputs,
};
use crate::cluster::ClusterSnapshot;
use crate::diag::Diagnostic;
use crate::export::{ClusterInfo, Export, ExportedService};
use crate::links::{self, PeerLink};
use crate::objects::NsName;
use crate::segments::SegmentDef;
use crate::trust::{self, PeerRefusal};
use crate::vip::{Cidr, Pool};

/// What changed in this cluster's own input besides its export, as
/// [`crate::engine::ExportStep`] reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnChanges {
    /// Gateways changed: the links may have.
    pub gateways: bool,
    /// ServiceEntries changed: manual entries and VIP reservations may have.
    pub service_entries: bool,
    /// HTTPRoutes (or Services they may read) changed (section 11).
    pub routes: bool,
}

impl OwnChanges {
    /// Everything may have changed.
    pub const ALL: OwnChanges = OwnChanges {
        gateways: true,
        service_entries: true,
        routes: true,
    };
}

/// What one update did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatalogStep {
    /// Global services (merge keys) re-merged.
    pub merged: usize,
    /// Hostnames whose global service was replaced, added or removed.
    pub hostnames: usize,
    /// The cluster's identity, Segments or links changed: everything was redone.
    pub full: bool,
    /// The catalog changed.
    pub changed: bool,
}

/// What is known of the peers presenting one name.
#[derive(Clone, Debug, Default)]
struct Peer {
    /// The exports presenting the name (usually one).
    exports: Vec<Export>,
    verdict: Verdict,
    /// Services refused for their hostnames (P2), in key order.
    refused: BTreeMap<NsName, Arc<ExportedService>>,
    /// The refusal naming them.
    hostname_refusal: Option<PeerRefusal>,
}

/// One merge key's last merge.
#[derive(Clone, Debug)]
struct Merged {
    service: GlobalService,
    diagnostics: Vec<Diagnostic>,
}

/// Counted findings: the catalog's are the keys, in order. `changed` says
/// whether they may differ from the ones last published.
#[derive(Clone, Debug, Default)]
struct Findings(BTreeMap<Diagnostic, usize>, bool);

impl Findings {
    fn add(&mut self, diags: &[Diagnostic]) {
        self.1 |= !diags.is_empty();
        for d in diags {
            *self.0.entry(d.clone()).or_default() += 1;
        }
    }
    fn remove(&mut self, diags: &[Diagnostic]) {
        self.1 |= !diags.is_empty();
        for d in diags {
            if let Some(n) = self.0.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    self.0.remove(d);
                }
            }
        }
    }
    /// Replaces `old` with `new`; says whether they differed.
    fn replace(&mut self, old: &[Diagnostic], new: &[Diagnostic]) -> bool {
        if old == new {
            return false;
        }
        self.remove(old);
        self.add(new);
        true
    }
}

/// A cluster's catalog, updated incrementally.
#[derive(Clone, Debug)]
pub struct CatalogEngine {
    vip_range: Cidr,
    /// Addresses used the first time (a restart's), like
    /// `CatalogConfig::previous_vips`.
    initial_vips: BTreeMap<String, IpAddr>,
    started: bool,
    me: ClusterInfo,
    own_segments: Vec<SegmentDef>,
    links: Vec<PeerLink>,
    own: Export,
    peers: BTreeMap<String, Peer>,
    contributions: BTreeMap<MergeKey, BTreeMap<String, Contribution>>,
    merged: BTreeMap<MergeKey, Merged>,
    /// Hostname -> the keys whose merge has it; the first wins (S1).
    claims: BTreeMap<String, BTreeSet<MergeKey>>,
    /// Taken-over cluster-local name -> the keys whose merge takes it over.
    takeovers: BTreeMap<String, BTreeSet<MergeKey>>,
    /// Hosts of the user-written ServiceEntries (P4 checks them against
    /// the names above).
    manual_hosts: BTreeSet<String>,
    collisions: BTreeMap<MergeKey, Diagnostic>,
    vips: BTreeMap<String, IpAddr>,
    pool: Pool,
    hints: BTreeMap<String, IpAddr>,
    /// Addresses a restart read back for hostnames not (yet) in the catalog
    /// (a peer that has not synced again): kept out of the pool for them
    /// until [`CatalogEngine::release_parked`].
    parked: BTreeMap<String, IpAddr>,
    /// Whether restart addresses of absent hostnames are parked.
    park: bool,
    reserved: BTreeSet<IpAddr>,
    exhausted: BTreeSet<String>,
    exhausted_diags: Vec<Diagnostic>,
    manual_diags: Vec<Diagnostic>,
    /// Findings of the last route compilation.
    route_diags: Vec<Diagnostic>,
    findings: Findings,
    catalog: GlobalCatalog,
}

impl CatalogEngine {
    /// An engine handing out VIPs from `vip_range`, keeping `previous_vips`
    /// (a restart's) for the services that still exist.
    pub fn new(vip_range: Cidr, previous_vips: BTreeMap<String, IpAddr>) -> Self {
        CatalogEngine {
            vip_range,
            initial_vips: previous_vips,
            started: false,
            me: ClusterInfo::default(),
            own_segments: Vec::new(),
            links: Vec::new(),
            own: Export::default(),
            peers: BTreeMap::new(),
            contributions: BTreeMap::new(),
            merged: BTreeMap::new(),
            claims: BTreeMap::new(),
            takeovers: BTreeMap::new(),
            manual_hosts: BTreeSet::new(),
            collisions: BTreeMap::new(),
            vips: BTreeMap::new(),
            pool: Pool::new(&vip_range, &BTreeSet::new()),
            hints: BTreeMap::new(),
            parked: BTreeMap::new(),
            park: false,
            reserved: BTreeSet::new(),
            exhausted: BTreeSet::new(),
            exhausted_diags: Vec::new(),
            manual_diags: Vec::new(),
            route_diags: Vec::new(),
            findings: Findings::default(),
            catalog: GlobalCatalog::default(),
        }
    }

    /// The current catalog.
    pub fn catalog(&self) -> &GlobalCatalog {
        &self.catalog
    }

    /// The VIPs handed out, by hostname.
    pub fn vips(&self) -> &BTreeMap<String, IpAddr> {
        &self.vips
    }

    /// Brings the catalog up to date with this cluster's snapshot and
    /// export and its peers' exports. `changes` says what of the snapshot
    /// besides the export may have changed.
    pub fn update<'a>(
        &mut self,
        own_snap: &ClusterSnapshot,
        own: &Export,
        peers: impl IntoIterator<Item = &'a Export>,
        changes: OwnChanges,
    ) -> CatalogStep {
        let mut step = CatalogStep::default();
        let mut dirty: BTreeSet<MergeKey> = BTreeSet::new();
        let mut hosts: BTreeSet<String> = BTreeSet::new();

        let links = if changes.gateways || !self.started {
            links::declared(own_snap, &own.cluster.network)
        } else {
            self.links.clone()
        };
        let full = !self.started
            || own.cluster != self.me
            || own.segments != self.own_segments
            || links != self.links;
        if full {
            step.full = true;
            // Every hostname is reconsidered; those that still exist keep
            // their VIPs.
            hosts.extend(self.vips.keys().cloned());
            hosts.extend(self.catalog.services.keys().cloned());
            hosts.extend(self.exhausted.iter().cloned());
            self.reset(own, links);
        }

        // This cluster's own services.
        let own_acc = Accepted::own(own);
        if full {
            for svc in own.services.values() {
                self.add_service(&own.cluster, &own_acc, svc, &mut dirty, None);
            }
        } else if !own.services.ptr_eq(&self.own.services) {
            let previous = self.own.services.clone();
            for item in previous.diff(&own.services) {
                match item {
                    DiffItem::Add(_, new) => {
                        self.add_service(&own.cluster, &own_acc, new, &mut dirty, None)
                    }
                    DiffItem::Update { old, new } => {
                        self.remove_service(&own.cluster, old.1, &mut dirty);
                        self.add_service(&own.cluster, &own_acc, new.1, &mut dirty, None);
                    }
                    DiffItem::Remove(_, old) => self.remove_service(&own.cluster, old, &mut dirty),
                }
            }
        }
        if !self.own.diagnostics.is_empty() || !own.diagnostics.is_empty() {
            self.findings
                .replace(&self.own.diagnostics, &own.diagnostics);
        }
        self.own = own.clone();

        // Peers, by the name they present.
        let mut by_name: BTreeMap<&str, Vec<&Export>> = BTreeMap::new();
        for p in peers {
            by_name.entry(p.cluster.name.as_str()).or_default().push(p);
        }
        let gone: Vec<String> = self
            .peers
            .keys()
            .filter(|n| !by_name.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.update_peer(&name, &[], &mut dirty);
        }
        for (name, exps) in by_name {
            self.update_peer(name, &exps, &mut dirty);
        }

        // Re-merge what changed.
        step.merged = dirty.len();
        let mut touched_takeovers = BTreeSet::new();
        for key in dirty {
            self.remerge(key, &mut hosts, &mut touched_takeovers);
        }

        // ServiceEntries: VIP hints and reservations.
        if changes.service_entries || full {
            self.refresh_vip_inputs(own_snap, &mut hosts);
        }

        step.hostnames = hosts.len();
        let before = self.catalog.services.clone();
        // Manual entries never take names meshpeer owns (P4): they are
        // checked again when one of their hosts became or stopped being one.
        let touched_manual = hosts
            .iter()
            .chain(&touched_takeovers)
            .any(|h| self.manual_hosts.contains(h));
        self.settle(hosts);
        let manual_before = self.catalog.manual.clone();
        if changes.service_entries || full || touched_manual {
            self.refresh_manual(own_snap);
        }
        // Routes attach to global names and manual entries and point at
        // global names: compiled again when one of those changed. Their
        // cost follows the number of routes, and nothing is done without.
        let had_routes = !self.catalog.routes.is_empty()
            || !self.catalog.route_status.is_empty()
            || !self.route_diags.is_empty();
        if !own_snap.http_routes.is_empty() || had_routes {
            let names_changed =
                !self.catalog.services.ptr_eq(&before) || manual_before != self.catalog.manual;
            if changes.routes || full || names_changed || !self.started {
                self.refresh_routes(own_snap, own);
            }
        }
        step.changed =
            full || !before.ptr_eq(&self.catalog.services) && before != self.catalog.services;
        self.publish_findings();
        self.publish_refusals();
        self.catalog.vip_range = Some(self.vip_range);
        self.catalog.cluster = self.me.clone();
        self.catalog.links = self.links.clone();
        self.catalog.segments = self.own_segments.clone();
        self.started = true;
        step
    }

    /// Forgets every merge (the VIPs stay), for a cluster-wide change.
    fn reset(&mut self, own: &Export, links: Vec<PeerLink>) {
        self.me = own.cluster.clone();
        self.own_segments = own.segments.clone();
        self.links = links;
        self.own = Export::default();
        self.peers.clear();
        self.contributions.clear();
        self.merged.clear();
        self.claims.clear();
        self.takeovers.clear();
        self.collisions.clear();
        self.findings = Findings(BTreeMap::new(), true);
        self.findings.add(&self.exhausted_diags);
        self.findings.add(&self.manual_diags);
        self.findings.add(&self.route_diags);
    }

    fn add_service(
        &mut self,
        exporter: &ClusterInfo,
        acc: &Accepted,
        svc: &Arc<ExportedService>,
        dirty: &mut BTreeSet<MergeKey>,
        refused: Option<&mut BTreeMap<NsName, Arc<ExportedService>>>,
    ) {
        match place(&self.me, exporter, acc, svc) {
            Placement::Merge(key, c) => {
                self.contributions
                    .entry(key.clone())
                    .or_default()
                    .insert(c.cluster.clone(), c);
                dirty.insert(key);
            }
            Placement::Hidden => {}
            Placement::Refused => {
                if let Some(r) = refused {
                    r.insert(NsName::new(&svc.namespace, &svc.name), Arc::clone(svc));
                }
            }
        }
    }

    fn remove_service(
        &mut self,
        exporter: &ClusterInfo,
        svc: &Arc<ExportedService>,
        dirty: &mut BTreeSet<MergeKey>,
    ) {
        let key: MergeKey = (
            exporter.segment_name().map(str::to_owned),
            svc.namespace.clone(),
            svc.name.clone(),
        );
        if let Some(by_cluster) = self.contributions.get_mut(&key)
            && by_cluster.remove(&exporter.name).is_some()
        {
            if by_cluster.is_empty() {
                self.contributions.remove(&key);
            }
            dirty.insert(key);
        }
    }

    /// Brings one peer name up to date: its verdict, and its services'
    /// contributions (all of them when the verdict changed, else what its
    /// export's new version changed).
    fn update_peer(&mut self, name: &str, exps: &[&Export], dirty: &mut BTreeSet<MergeKey>) {
        let mut peer = self.peers.remove(name).unwrap_or_default();
        let verdict = if exps.is_empty() {
            Verdict::default()
        } else {
            judge(&self.me, &self.own_segments, &self.links, name, exps)
        };
        let same_cluster = match (peer.exports.as_slice(), exps) {
            ([old], [new]) => old.cluster == new.cluster && old.segments == new.segments,
            _ => false,
        };
        self.findings
            .replace(&peer.verdict.diagnostics, &verdict.diagnostics);
        if verdict == peer.verdict && same_cluster {
            // Same standing: only the services that changed.
            if let (Some(acc), [old], [new]) = (&verdict.accepted, peer.exports.as_slice(), exps)
                && !old.services.ptr_eq(&new.services)
            {
                let exporter = new.cluster.clone();
                let mut refused = std::mem::take(&mut peer.refused);
                for item in old.services.diff(&new.services) {
                    match item {
                        DiffItem::Add(_, s) => {
                            self.add_service(&exporter, acc, s, dirty, Some(&mut refused))
                        }
                        DiffItem::Update { old, new } => {
                            refused.remove(old.0);
                            self.remove_service(&exporter, old.1, dirty);
                            self.add_service(&exporter, acc, new.1, dirty, Some(&mut refused));
                        }
                        DiffItem::Remove(k, s) => {
                            refused.remove(k);
                            self.remove_service(&exporter, s, dirty);
                        }
                    }
                }
                peer.refused = refused;
            }
        } else {
            // New standing: withdraw everything, then add what is accepted.
            if let ([old], Some(_)) = (peer.exports.as_slice(), &peer.verdict.accepted) {
                let exporter = old.cluster.clone();
                for s in old.services.values() {
                    self.remove_service(&exporter, s, dirty);
                }
            }
            peer.refused.clear();
            if let (Some(acc), [new]) = (&verdict.accepted, exps) {
                let exporter = new.cluster.clone();
                let mut refused = BTreeMap::new();
                for s in new.services.values() {
                    self.add_service(&exporter, acc, s, dirty, Some(&mut refused));
                }
                peer.refused = refused;
            }
            peer.verdict = verdict;
        }
        peer.exports = exps.iter().map(|e| (*e).clone()).collect();
        // The hostname refusal names the peer's refused services (P2).
        let refusal = match (&peer.verdict.accepted, exps) {
            (Some(acc), [new]) => {
                let refused: Vec<&ExportedService> = peer.refused.values().map(|s| &**s).collect();
                trust::refuse_hostnames(&new.cluster.name, acc.local_segment.as_ref(), &refused)
            }
            _ => None,
        };
        if refusal != peer.hostname_refusal {
            let diag = |r: &Option<PeerRefusal>| {
                let mut v = Vec::new();
                if let Some(r) = r {
                    trust::report(&self.me.name, r, &mut v);
                }
                v
            };
            let (old, new) = (diag(&peer.hostname_refusal), diag(&refusal));
            self.findings.replace(&old, &new);
            peer.hostname_refusal = refusal;
        }
        if !exps.is_empty() {
            self.peers.insert(name.to_owned(), peer);
        }
    }

    /// Merges one key again and records which hostnames (and taken-over
    /// names) it touches.
    fn remerge(
        &mut self,
        key: MergeKey,
        hosts: &mut BTreeSet<String>,
        takeovers: &mut BTreeSet<String>,
    ) {
        let old = self.merged.remove(&key);
        if let Some(old) = &old {
            self.findings.remove(&old.diagnostics);
            hosts.insert(old.service.hostname.clone());
            unindex(&mut self.claims, &old.service.hostname, &key);
            if let Some(t) = &old.service.takeover {
                takeovers.insert(t.hostname.clone());
                unindex(&mut self.takeovers, &t.hostname, &key);
            }
        }
        let Some(by_cluster) = self.contributions.get(&key) else {
            return;
        };
        let contributions: Vec<Contribution> = by_cluster.values().cloned().collect();
        let mut diagnostics = Vec::new();
        let service = merge(&self.me, &key, contributions, &mut diagnostics);
        self.findings.add(&diagnostics);
        hosts.insert(service.hostname.clone());
        self.claims
            .entry(service.hostname.clone())
            .or_default()
            .insert(key.clone());
        if let Some(t) = &service.takeover {
            takeovers.insert(t.hostname.clone());
            self.takeovers
                .entry(t.hostname.clone())
                .or_default()
                .insert(key.clone());
        }
        self.merged.insert(
            key,
            Merged {
                service,
                diagnostics,
            },
        );
    }

    /// This cluster's routes compiled against the view (section 11).
    fn refresh_routes(&mut self, own_snap: &ClusterSnapshot, own: &Export) {
        let mut diags = Vec::new();
        let compiled = crate::routes::compile(
            own_snap,
            own,
            &self.catalog.services,
            &self.catalog.manual,
            &mut diags,
        );
        self.catalog.routes = compiled.tables;
        self.catalog.route_status = compiled.status;
        self.findings.replace(&self.route_diags, &diags);
        self.route_diags = diags;
    }

    /// The manual entries (D4), checked against the names meshpeer owns (P4).
    fn refresh_manual(&mut self, own_snap: &ClusterSnapshot) {
        let mut manual_diags = Vec::new();
        let names = EngineNames {
            claims: &self.claims,
            takeovers: &self.takeovers,
            merged: &self.merged,
        };
        let owned = crate::manual::Owned::new(&self.own_segments, &names, &self.vip_range);
        let manual = crate::manual::manual_entries(own_snap, &owned, &mut manual_diags);
        if manual != self.catalog.manual {
            self.catalog.manual = manual;
        }
        self.findings.replace(&self.manual_diags, &manual_diags);
        self.manual_diags = manual_diags;
        self.manual_hosts = own_snap
            .service_entries
            .values()
            .filter(|se| !crate::objects::is_managed(&se.metadata))
            .flat_map(|se| se.spec.hosts.iter())
            .map(|h| {
                let h = h.to_ascii_lowercase();
                h.strip_suffix('.').map(str::to_owned).unwrap_or(h)
            })
            .collect();
    }

    fn refresh_vip_inputs(&mut self, own_snap: &ClusterSnapshot, hosts: &mut BTreeSet<String>) {
        let (hints, reserved) = vip_inputs(own_snap);
        self.hints = hints;
        if reserved != self.reserved {
            // Hostnames holding a newly reserved address give it up.
            self.reserved = reserved;
            self.pool = Pool::new(&self.vip_range, &self.reserved);
            let mut released = Vec::new();
            for (host, ip) in &self.vips {
                if !self.pool.claim(*ip) {
                    released.push(host.clone());
                }
            }
            for host in released {
                self.vips.remove(&host);
                hosts.insert(host);
            }
            let pool = &mut self.pool;
            self.parked.retain(|_, ip| pool.claim(*ip));
        }
    }

    /// Parks the restart addresses (`previous_vips`) of hostnames absent
    /// from the first catalog: a hostname that comes back later (its peer
    /// syncs again after a restart) gets its address again, and no other
    /// hostname takes it meanwhile, until [`CatalogEngine::release_parked`].
    /// Off by default (the pure `catalog_with` does not park).
    pub fn park_restart_vips(mut self) -> Self {
        self.park = true;
        self
    }

    /// Hands the addresses parked for hostnames a restart read back, and
    /// that have not come back, to the pool (once every peer synced again
    /// or the grace period is over).
    pub fn release_parked(&mut self) {
        for (_, ip) in std::mem::take(&mut self.parked) {
            self.pool.release(ip);
        }
    }

    /// Hostnames whose restart address is still parked.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Settles the hostnames that may have changed: winners of collisions,
    /// VIPs freed and handed out, the catalog's services. VIPs follow
    /// `vip::allocate` with the current allocation as the previous one:
    /// hostnames keep their address, new ones take their hint, then are
    /// hashed, in hostname order.
    fn settle(&mut self, mut hosts: BTreeSet<String>) {
        for host in &hosts {
            // S1: the first key claiming a hostname wins; the others are reported.
            let claimants: Vec<MergeKey> = self
                .claims
                .get(host)
                .map(|c| c.iter().cloned().collect())
                .unwrap_or_default();
            for (i, key) in claimants.iter().enumerate() {
                let fresh = (i > 0).then(|| collision(&self.me, host, &claimants[0], key));
                let old = match &fresh {
                    Some(d) => self.collisions.insert(key.clone(), d.clone()),
                    None => self.collisions.remove(key),
                };
                if old != fresh {
                    self.findings.replace(old.as_slice(), fresh.as_slice());
                }
            }
        }
        // Collision findings of keys that no longer merge anything.
        let stale: Vec<MergeKey> = self
            .collisions
            .keys()
            .filter(|k| !self.merged.contains_key(*k))
            .cloned()
            .collect();
        for key in stale {
            if let Some(d) = self.collisions.remove(&key) {
                self.findings.remove(std::slice::from_ref(&d));
            }
        }
        if !self.started {
            // The first allocation keeps a restart's addresses, in hostname
            // order, as `CatalogConfig::previous_vips` does.
            for (host, ip) in std::mem::take(&mut self.initial_vips) {
                if !self.pool.claim(ip) {
                    continue;
                }
                if self.claims.contains_key(&host) {
                    self.vips.insert(host, ip);
                } else if self.park {
                    self.parked.insert(host, ip);
                } else {
                    self.pool.release(ip);
                }
            }
        }
        // Freed: hostnames no global service has any more.
        for host in &hosts {
            if !self.claims.contains_key(host)
                && let Some(ip) = self.vips.remove(host)
            {
                self.pool.release(ip);
            }
        }
        // Wanted: new hostnames, and those the range had no room for.
        let mut wanted: BTreeSet<String> = std::mem::take(&mut self.exhausted)
            .into_iter()
            .filter(|h| self.claims.contains_key(h))
            .collect();
        wanted.extend(
            hosts
                .iter()
                .filter(|h| self.claims.contains_key(*h) && !self.vips.contains_key(*h))
                .cloned(),
        );
        for host in &wanted {
            if let Some(ip) = self.parked.remove(host) {
                self.vips.insert(host.clone(), ip);
            } else if let Some(ip) = self.hints.get(host)
                && self.pool.claim(*ip)
            {
                self.vips.insert(host.clone(), *ip);
            }
        }
        for host in &wanted {
            if self.vips.contains_key(host) {
                continue;
            }
            match self.pool.hashed(host) {
                Some(ip) => {
                    self.vips.insert(host.clone(), ip);
                }
                None => {
                    self.exhausted.insert(host.clone());
                }
            }
        }
        hosts.extend(wanted);
        // Exhaustion findings name the number of global services.
        let count = self.claims.len();
        let exhausted_diags: Vec<Diagnostic> = self
            .exhausted
            .iter()
            .map(|h| exhausted(&self.me, h, &self.vip_range, count))
            .collect();
        self.findings
            .replace(&self.exhausted_diags, &exhausted_diags);
        self.exhausted_diags = exhausted_diags;
        // The catalog's services, one hostname at a time.
        for host in hosts {
            let winner = self
                .claims
                .get(&host)
                .and_then(|c| c.iter().next())
                .and_then(|k| self.merged.get(k));
            match (winner, self.vips.get(&host)) {
                (Some(m), Some(ip)) => {
                    let mut s = m.service.clone();
                    s.vip = *ip;
                    let unchanged = self
                        .catalog
                        .services
                        .get(&host)
                        .is_some_and(|old| **old == s);
                    if !unchanged {
                        self.catalog.services.insert(host, Arc::new(s));
                    }
                }
                _ => {
                    self.catalog.services.remove(&host);
                }
            }
        }
    }

    fn publish_findings(&mut self) {
        if !std::mem::take(&mut self.findings.1) {
            return;
        }
        let fresh: Vec<Diagnostic> = self.findings.0.keys().cloned().collect();
        if fresh != self.catalog.diagnostics {
            self.catalog.diagnostics = fresh;
        }
    }

    fn publish_refusals(&mut self) {
        let mut refused: Vec<PeerRefusal> = Vec::new();
        for p in self.peers.values() {
            refused.extend(p.verdict.refusal.iter().cloned());
            refused.extend(p.hostname_refusal.iter().cloned());
        }
        refused.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        self.catalog.refused_peers = refused;
    }
}

/// Removes `key` from the set of `name`, dropping an emptied set.
fn unindex(index: &mut BTreeMap<String, BTreeSet<MergeKey>>, name: &str, key: &MergeKey) {
    if let Some(keys) = index.get_mut(name) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(name);
        }
    }
}

/// The names the engine's global services own, for the P4 checks: the
/// winners of their hostnames, as the from-scratch catalog lists them.
#[derive(Debug)]
struct EngineNames<'e> {
    claims: &'e BTreeMap<String, BTreeSet<MergeKey>>,
    takeovers: &'e BTreeMap<String, BTreeSet<MergeKey>>,
    merged: &'e BTreeMap<MergeKey, Merged>,
}

impl EngineNames<'_> {
    fn is_winner(&self, key: &MergeKey) -> bool {
        self.merged.get(key).is_some_and(|m| {
            self.claims
                .get(&m.service.hostname)
                .and_then(|c| c.iter().next())
                == Some(key)
        })
    }
}

impl crate::manual::OwnedNames for EngineNames<'_> {
    fn owner(&self, host: &str) -> Option<(String, String, bool)> {
        if let Some(m) = self
            .claims
            .get(host)
            .and_then(|c| c.iter().next())
            .and_then(|k| self.merged.get(k))
        {
            return Some((m.service.namespace.clone(), m.service.name.clone(), false));
        }
        // As the from-scratch list: the last winner taking the name over.
        let key = self
            .takeovers
            .get(host)?
            .iter()
            .rev()
            .find(|k| self.is_winner(k))?;
        Some((key.1.clone(), key.2.clone(), true))
    }
}
