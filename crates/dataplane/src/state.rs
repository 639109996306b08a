//! What the data plane acts on: indexes rebuilt from each catalog feed by
//! one writer task, read by every connection through a `watch` channel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meshpeer_model::{GlobalService, Locality, ManualEntry, PeerLink, Reach, is_in_domain};
use tokio::sync::watch;

use crate::dns::DnsTable;
use crate::feed::CatalogFeed;

/// What a captured address:port leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A global service (by index in the catalog) and one of its ports.
    Global { service: usize, port: u16 },
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

/// One version of the data plane's view.
#[derive(Debug, Default)]
pub struct DataplaneState {
    pub feed: Arc<CatalogFeed>,
    /// Addresses to listen on and what they lead to.
    pub listeners: BTreeMap<SocketAddr, Target>,
    /// What the DNS server answers.
    pub dns: Arc<DnsTable>,
    /// Global service index by hostname.
    pub by_host: HashMap<String, usize>,
    /// Links to peers, by cluster: where their gateways are.
    pub links: HashMap<String, PeerLink>,
    /// The locality of this proxy's clients.
    pub locality: Locality,
    /// Global hostnames (and taken-over names) of the catalog outside the
    /// zones this cluster answers for: not in DNS, no listener (P2).
    pub outside_zones: Vec<String>,
}

/// The zone of taken-over cluster-local names (K1).
const CLUSTER_LOCAL: &str = "svc.cluster.local";

impl DataplaneState {
    /// Builds the indexes of a feed. Only names inside the zones this
    /// cluster is authoritative for are served (P2): `mesh.internal` and
    /// its Segments' domains for global services, `svc.cluster.local` for
    /// taken-over names; a manual entry's host never replaces one of those
    /// names nor lands in those zones, and its addresses never in the VIP
    /// range (P4, checked by the model; again here).
    pub fn build(feed: Arc<CatalogFeed>, opts: &StateOptions) -> DataplaneState {
        let catalog = &feed.catalog;
        let zones = catalog.global_domains();
        let in_zones = |host: &str| zones.iter().any(|z| is_in_domain(host, z));
        let mut listeners = BTreeMap::new();
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        let mut by_host = HashMap::new();
        let mut outside_zones = Vec::new();
        for (i, svc) in catalog.services.iter().enumerate() {
            if !in_zones(&svc.hostname) {
                outside_zones.push(svc.hostname.clone());
                continue;
            }
            by_host.insert(svc.hostname.clone(), i);
            names.insert(svc.hostname.to_ascii_lowercase(), vec![svc.vip]);
            for p in &svc.ports {
                listeners.insert(
                    SocketAddr::new(svc.vip, p.number),
                    Target::Global {
                        service: i,
                        port: p.number,
                    },
                );
            }
            if let Some(t) = &svc.takeover {
                if !is_in_domain(&t.hostname, CLUSTER_LOCAL) {
                    outside_zones.push(t.hostname.clone());
                    continue;
                }
                // The cluster-local name now leads to the global service (K1).
                names.insert(t.hostname.to_ascii_lowercase(), vec![svc.vip]);
                if opts.capture_cluster_ips {
                    // The ports the local Service has (the global service's
                    // may include ports only other clusters serve).
                    let local_ports: Vec<u16> = svc
                        .contributions
                        .iter()
                        .find(|c| c.reach == Reach::Local)
                        .map(|c| c.service.ports.iter().map(|p| p.number).collect())
                        .unwrap_or_default();
                    for ip in &t.cluster_ips {
                        for p in svc.ports.iter().filter(|p| local_ports.contains(&p.number)) {
                            listeners.insert(
                                SocketAddr::new(*ip, p.number),
                                Target::Global {
                                    service: i,
                                    port: p.number,
                                },
                            );
                        }
                    }
                }
            }
        }
        let owned: HashSet<String> = names.keys().cloned().collect();
        let in_vip_range = |a: &IpAddr| catalog.vip_range.is_some_and(|r| r.contains(*a));
        for (i, m) in catalog.manual.iter().enumerate() {
            let addresses: Vec<IpAddr> = m
                .addresses
                .iter()
                .filter(|a| !in_vip_range(a))
                .copied()
                .collect();
            for h in &m.hosts {
                let h = h.to_ascii_lowercase();
                if in_zones(&h) || owned.contains(&h) {
                    continue;
                }
                names.entry(h).or_default().extend(&addresses);
            }
            for a in &addresses {
                for p in &m.ports {
                    listeners
                        .entry(SocketAddr::new(*a, p.number))
                        .or_insert(Target::Manual {
                            entry: i,
                            port: p.number,
                        });
                }
            }
        }
        let dns = Arc::new(DnsTable {
            names,
            authoritative: zones,
        });
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
            feed,
            listeners,
            dns,
            by_host,
            links,
            locality,
            outside_zones,
        }
    }

    pub fn service(&self, i: usize) -> Option<&GlobalService> {
        self.feed.catalog.services.get(i)
    }

    pub fn service_by_host(&self, host: &str) -> Option<&GlobalService> {
        self.by_host.get(host).and_then(|i| self.service(*i))
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

/// Follows a feed: rebuilds the state (and the DNS table) on every version.
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
        loop {
            let current = feed.borrow_and_update().clone();
            if current.version > 0 {
                let state = DataplaneState::build(current, &opts);
                dns_tx.send_if_modified(|t| {
                    let changed = **t != *state.dns;
                    if changed {
                        *t = Arc::clone(&state.dns);
                    }
                    changed
                });
                state_tx.send_replace(Arc::new(state));
            }
            if feed.changed().await.is_err() || (state_tx.is_closed() && dns_tx.is_closed()) {
                return;
            }
        }
    });
    (state_rx, dns_rx, task)
}
