//! What the data plane acts on: indexes kept from the catalog feed by one
//! writer task, read by every connection through a `watch` channel.
//!
//! Each feed version is applied by what changed since the last one (SPEC
//! I1): the catalog's services are a persistent map, so the hostnames that
//! changed are found without visiting the others, and only their listeners
//! and DNS names are replaced. [`DataplaneState::build`] computes the same
//! from scratch; it is the reference the incremental path is tested against.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use meshpeer_model::{GlobalService, Locality, ManualEntry, PeerLink, Reach, is_in_domain};
use tokio::sync::watch;

use crate::dns::{DnsTable, Names};
use crate::feed::CatalogFeed;

/// What a captured address:port leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A global service (by hostname) and one of its ports.
    Global { host: Arc<str>, port: u16 },
    /// A user-written ServiceEntry (D4) and one of its ports.
    Manual { entry: usize, port: u16 },
}

/// Options that shape the state.
#[derive(Clone, Debug, Default)]
pub struct StateOptions {
    /// Also capture the ClusterIP:port of taken-over Services (K1).
    pub capture_cluster_ips: bool,
    /// Where the workloads served by this proxy are; default: the cluster's
    /// default locality.
    pub locality: Option<Locality>,
}

/// What one global service put into the listeners and the DNS table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Placed {
    listeners: Vec<SocketAddr>,
    names: Vec<String>,
    /// Its names outside this cluster's zones (P2).
    outside: Vec<String>,
    /// `(name, namespace)` when this cluster contributes to it (the
    /// gateway's aliases for manual entries, D4).
    local: Option<(String, String)>,
}

/// What a global service is to place: listeners, DNS names, and a record
/// of both.
#[derive(Debug, Default)]
struct Plan {
    placed: Placed,
    listeners: Vec<(SocketAddr, Target)>,
    names: Vec<(String, IpAddr)>,
}

/// One version of the data plane's view.
#[derive(Clone, Debug, Default)]
pub struct DataplaneState {
    pub feed: Arc<CatalogFeed>,
    /// Addresses to listen on and what they lead to.
    pub listeners: imbl::OrdMap<SocketAddr, Target>,
    /// What the DNS server answers.
    pub dns: Arc<DnsTable>,
    /// Links to peers, by cluster: where their gateways are.
    pub links: HashMap<String, PeerLink>,
    /// The locality of this proxy's clients.
    pub locality: Locality,
    /// Global hostnames (and taken-over names) of the catalog outside the
    /// zones this cluster answers for: not in DNS, no listener (P2).
    pub outside_zones: BTreeSet<String>,
    /// Global hostnames with a local contribution, by `(name, namespace)`:
    /// what the gateway's `<name>.<namespace>.<any suffix>` aliases of
    /// manual entries (D4) may reach, found without walking the catalog.
    local_names: imbl::HashMap<(String, String), imbl::OrdSet<String>>,
    /// Per global hostname, what it placed.
    placed: imbl::HashMap<String, Placed>,
    /// What the manual entries placed.
    manual: Placed,
    /// What the manual entries want: placed or held by a global service.
    manual_wants: Placed,
}

/// The zone of taken-over cluster-local names (K1).
const CLUSTER_LOCAL: &str = "svc.cluster.local";

/// What [`DataplaneState::advance`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Advance {
    /// Global hostnames whose listeners and names were replaced.
    pub hostnames: usize,
    /// Everything was rebuilt (zones, links or manual entries changed).
    pub full: bool,
    /// The DNS table changed.
    pub dns_changed: bool,
}

impl DataplaneState {
    /// Builds the indexes of a feed from scratch. Only names inside the
    /// zones this cluster is authoritative for are served (P2):
    /// `mesh.internal` and its Segments' domains for global services,
    /// `svc.cluster.local` for taken-over names; a manual entry's host never
    /// replaces one of those names nor lands in those zones, and its
    /// addresses never in the VIP range (P4, checked by the model; again
    /// here).
    pub fn build(feed: Arc<CatalogFeed>, opts: &StateOptions) -> DataplaneState {
        let mut state = DataplaneState::frame(feed, opts);
        let mut names = Names::new();
        let hosts: Vec<String> = state.feed.catalog.services.keys().cloned().collect();
        for host in hosts {
            state.place(&host, &mut names, opts);
        }
        state.place_manual(&mut names);
        state.dns = Arc::new(DnsTable {
            names,
            authoritative: state.feed.catalog.global_domains(),
        });
        state
    }

    /// An empty state for a feed: its links and locality.
    fn frame(feed: Arc<CatalogFeed>, opts: &StateOptions) -> DataplaneState {
        let catalog = &feed.catalog;
        let links = catalog
            .links
            .iter()
            .map(|l| (l.cluster.clone(), l.clone()))
            .collect();
        let locality = opts
            .locality
            .clone()
            .unwrap_or_else(|| catalog.cluster.locality.clone());
        DataplaneState {
            links,
            locality,
            dns: Arc::new(DnsTable {
                names: Names::new(),
                authoritative: catalog.global_domains(),
            }),
            feed,
            ..DataplaneState::default()
        }
    }

    /// The state of `feed`, from `self` (the previous version's): only the
    /// hostnames that changed are replaced. Equal to [`DataplaneState::build`].
    pub fn advance(
        &self,
        feed: Arc<CatalogFeed>,
        opts: &StateOptions,
    ) -> (DataplaneState, Advance) {
        let old = &self.feed.catalog;
        let new = &feed.catalog;
        let full = self.feed.version == 0
            || old.segments != new.segments
            || old.links != new.links
            || old.cluster != new.cluster
            || old.vip_range != new.vip_range;
        if full {
            let state = DataplaneState::build(feed, opts);
            let dns_changed = state.dns != self.dns;
            let hostnames = state.feed.catalog.services.len();
            return (
                state,
                Advance {
                    hostnames,
                    full: true,
                    dns_changed,
                },
            );
        }
        let mut next = DataplaneState {
            feed: Arc::clone(&feed),
            ..self.clone()
        };
        let mut names = self.dns.names.clone();
        let mut changed: Vec<String> = Vec::new();
        for item in old.services.diff(&new.services) {
            let host = match item {
                DiffItem::Add(h, _)
                | DiffItem::Remove(h, _)
                | DiffItem::Update { new: (h, _), .. } => h,
            };
            changed.push(host.clone());
        }
        // Manual entries fill in around the global services: redo them when
        // they changed, or a global service takes or leaves one of their
        // places. They are taken out before the global services go in, so
        // that taking them out never removes a global service's name.
        let mut redo_manual = old.manual != new.manual;
        let mut plans = Vec::with_capacity(changed.len());
        for host in &changed {
            let before = next.unplace(host, &mut names);
            let plan = next.plan(host, opts);
            if !redo_manual {
                let wants = &self.manual_wants;
                redo_manual = [&before, &plan.placed].iter().any(|p| {
                    p.listeners.iter().any(|a| wants.listeners.contains(a))
                        || p.names.iter().any(|n| wants.names.contains(n))
                });
            }
            plans.push((host, plan));
        }
        if redo_manual {
            next.unplace_manual(&mut names);
        }
        for (host, plan) in plans {
            next.apply_plan(host, plan, &mut names);
        }
        if redo_manual {
            next.place_manual(&mut names);
        }
        let dns_changed = !names.ptr_eq(&self.dns.names) && names != self.dns.names;
        if dns_changed {
            next.dns = Arc::new(DnsTable {
                names,
                authoritative: self.dns.authoritative.clone(),
            });
        }
        (
            next,
            Advance {
                hostnames: changed.len(),
                full: false,
                dns_changed,
            },
        )
    }

    /// Adds the listeners and names of the global service `host`.
    fn place(&mut self, host: &str, names: &mut Names, opts: &StateOptions) {
        let plan = self.plan(host, opts);
        self.apply_plan(host, plan, names);
    }

    /// What the global service `host` would place, without placing it.
    fn plan(&self, host: &str, opts: &StateOptions) -> Plan {
        let mut plan = Plan::default();
        let Some(svc) = self.feed.catalog.services.get(host) else {
            return plan;
        };
        let zones = &self.dns.authoritative;
        let in_zones = |h: &str| zones.iter().any(|z| is_in_domain(h, z));
        if !in_zones(&svc.hostname) {
            plan.placed.outside.push(svc.hostname.clone());
            return plan;
        }
        let key: Arc<str> = Arc::from(svc.hostname.as_str());
        let listen = |addr: SocketAddr, plan: &mut Plan| {
            plan.listeners.push((
                addr,
                Target::Global {
                    host: Arc::clone(&key),
                    port: addr.port(),
                },
            ));
            plan.placed.listeners.push(addr);
        };
        if svc.contributions.iter().any(|c| c.reach == Reach::Local) {
            plan.placed.local = Some((svc.name.clone(), svc.namespace.clone()));
        }
        plan.names
            .push((svc.hostname.to_ascii_lowercase(), svc.vip));
        for p in &svc.ports {
            listen(SocketAddr::new(svc.vip, p.number), &mut plan);
        }
        if let Some(t) = &svc.takeover {
            if !is_in_domain(&t.hostname, CLUSTER_LOCAL) {
                plan.placed.outside.push(t.hostname.clone());
            } else {
                // The cluster-local name now leads to the global service (K1).
                plan.names.push((t.hostname.to_ascii_lowercase(), svc.vip));
                if opts.capture_cluster_ips {
                    for addr in cluster_ip_listeners(svc) {
                        listen(addr, &mut plan);
                    }
                }
            }
        }
        plan.placed.names = plan.names.iter().map(|(n, _)| n.clone()).collect();
        plan
    }

    fn apply_plan(&mut self, host: &str, plan: Plan, names: &mut Names) {
        for (addr, target) in plan.listeners {
            self.listeners.insert(addr, target);
        }
        for (name, vip) in plan.names {
            names.insert(name, vec![vip]);
        }
        self.outside_zones
            .extend(plan.placed.outside.iter().cloned());
        if let Some(key) = &plan.placed.local {
            self.local_names
                .entry(key.clone())
                .or_default()
                .insert(host.to_owned());
        }
        self.placed.insert(host.to_owned(), plan.placed);
    }

    /// Removes what the global service `host` placed; returns it.
    fn unplace(&mut self, host: &str, names: &mut Names) -> Placed {
        let Some(placed) = self.placed.remove(host) else {
            return Placed::default();
        };
        for addr in &placed.listeners {
            if matches!(self.listeners.get(addr), Some(Target::Global { host: h, .. }) if **h == *host)
            {
                self.listeners.remove(addr);
            }
        }
        for name in &placed.names {
            names.remove(name);
        }
        for name in &placed.outside {
            self.outside_zones.remove(name);
        }
        if let Some(key) = &placed.local
            && let Some(hosts) = self.local_names.get_mut(key)
        {
            hosts.remove(host);
            if hosts.is_empty() {
                self.local_names.remove(key);
            }
        }
        placed
    }

    /// Adds the manual entries' listeners and names, around what global
    /// services hold.
    fn place_manual(&mut self, names: &mut Names) {
        let feed = Arc::clone(&self.feed);
        let catalog = &feed.catalog;
        let zones = &self.dns.authoritative;
        let in_zones = |h: &str| zones.iter().any(|z| is_in_domain(h, z));
        let owned: HashSet<&str> = self
            .placed
            .values()
            .flat_map(|p| p.names.iter().map(String::as_str))
            .collect();
        let in_vip_range = |a: &IpAddr| catalog.vip_range.is_some_and(|r| r.contains(*a));
        let mut placed = Placed::default();
        let mut wants = Placed::default();
        let mut added: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for (i, m) in catalog.manual.iter().enumerate() {
            let addresses: Vec<IpAddr> = m
                .addresses
                .iter()
                .filter(|a| !in_vip_range(a))
                .copied()
                .collect();
            for h in &m.hosts {
                let h = h.to_ascii_lowercase();
                if in_zones(&h) {
                    continue;
                }
                wants.names.push(h.clone());
                if owned.contains(h.as_str()) {
                    continue;
                }
                added.entry(h).or_default().extend(&addresses);
            }
            for a in &addresses {
                for p in &m.ports {
                    let addr = SocketAddr::new(*a, p.number);
                    wants.listeners.push(addr);
                    if !self.listeners.contains_key(&addr) {
                        self.listeners.insert(
                            addr,
                            Target::Manual {
                                entry: i,
                                port: p.number,
                            },
                        );
                        placed.listeners.push(addr);
                    }
                }
            }
        }
        for (h, addrs) in added {
            names.insert(h.clone(), addrs);
            placed.names.push(h);
        }
        self.manual = placed;
        self.manual_wants = wants;
    }

    fn unplace_manual(&mut self, names: &mut Names) {
        let placed = std::mem::take(&mut self.manual);
        for addr in &placed.listeners {
            if matches!(self.listeners.get(addr), Some(Target::Manual { .. })) {
                self.listeners.remove(addr);
            }
        }
        for name in &placed.names {
            names.remove(name);
        }
    }

    /// The global service of `host`, unless its name is outside this
    /// cluster's zones (P2): such a service is neither answered, listened
    /// for nor reachable.
    pub fn service(&self, host: &str) -> Option<&GlobalService> {
        if self.outside_zones.contains(host) {
            return None;
        }
        self.feed.catalog.services.get(host).map(|s| &**s)
    }

    pub fn service_by_host(&self, host: &str) -> Option<&GlobalService> {
        self.service(host)
    }

    /// The global service named `name` in `namespace` that this cluster
    /// contributes to, when exactly one is (in this cluster's zones).
    pub fn local_by_name(&self, name: &str, namespace: &str) -> Option<&GlobalService> {
        let hosts = self
            .local_names
            .get(&(name.to_owned(), namespace.to_owned()))?;
        match hosts.len() {
            1 => self.service(hosts.get_min()?),
            _ => None,
        }
    }

    /// Every `(name, namespace)` with local global services, and their
    /// hostnames (for tests of the index).
    pub fn local_names(&self) -> BTreeMap<(String, String), Vec<String>> {
        self.local_names
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect()
    }

    pub fn manual(&self, i: usize) -> Option<&ManualEntry> {
        self.feed.catalog.manual.get(i)
    }

    /// The link to a peer whose gateway has this address, if any.
    pub fn link_by_gateway_address(&self, address: &str) -> Option<&PeerLink> {
        self.links
            .values()
            .find(|l| l.addresses.iter().any(|a| a.value == address))
    }

    /// The link to a peer in `network`, if exactly one.
    pub fn link_by_network(&self, network: &str) -> Option<&PeerLink> {
        let mut found = self.links.values().filter(|l| l.network == network);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}

/// The ClusterIP:port listeners of a taken-over service: only the ports the
/// local Service has (the global service's may include ports only other
/// clusters serve).
fn cluster_ip_listeners(svc: &GlobalService) -> Vec<SocketAddr> {
    let Some(t) = &svc.takeover else {
        return Vec::new();
    };
    let local_ports: Vec<u16> = svc
        .contributions
        .iter()
        .find(|c| c.reach == Reach::Local)
        .map(|c| c.service.ports.iter().map(|p| p.number).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for ip in &t.cluster_ips {
        for p in svc.ports.iter().filter(|p| local_ports.contains(&p.number)) {
            out.push(SocketAddr::new(*ip, p.number));
        }
    }
    out
}

/// Follows a feed: advances the state (and the DNS table) on every version.
/// The state channel starts empty (version 0) until the first feed arrives.
pub fn follow(
    mut feed: watch::Receiver<Arc<CatalogFeed>>,
    opts: StateOptions,
) -> (
    watch::Receiver<Arc<DataplaneState>>,
    watch::Receiver<Arc<DnsTable>>,
    tokio::task::JoinHandle<()>,
) {
    let (state_tx, state_rx) = watch::channel(Arc::new(DataplaneState::default()));
    let (dns_tx, dns_rx) = watch::channel(Arc::new(DnsTable::default()));
    let task = tokio::spawn(async move {
        let mut state = Arc::new(DataplaneState::default());
        loop {
            let current = feed.borrow_and_update().clone();
            if current.version > 0 {
                let (next, step) = state.advance(current, &opts);
                state = Arc::new(next);
                if step.dns_changed {
                    dns_tx.send_replace(Arc::clone(&state.dns));
                }
                state_tx.send_replace(Arc::clone(&state));
            }
            if feed.changed().await.is_err() || (state_tx.is_closed() && dns_tx.is_closed()) {
                return;
            }
        }
    });
    (state_rx, dns_rx, task)
}
