//! Where a connection goes (T2-T6): the model ranks a service's endpoint
//! groups into tiers for the client's location; here each tier becomes
//! destinations in weighted random order, minus those passive health
//! checking has ejected. The proxy tries them in order, within a budget:
//! another destination of the same tier first, then the next tier.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imbl::ordmap::DiffItem;
use meshpeer_model::{ClientLocation, GlobalCatalog, GlobalService, Reach, rank};
use tokio::time::Instant;

use crate::state::DataplaneState;

/// One place a connection may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// An endpoint reached directly: this cluster's, or a peer's in the same network.
    Direct {
        addr: SocketAddr,
        cluster: String,
        /// Pod name, for the access log.
        name: String,
    },
    /// Through a peer's east-west gateway, over HBONE.
    Gateway {
        cluster: String,
        /// Gateway addresses (IP or host name) and HBONE port.
        gateways: Vec<(String, u16)>,
        trust_domain: String,
        /// `<hostname>:<port>` asked of the gateway.
        authority: String,
    },
}

impl Dest {
    pub fn cluster(&self) -> &str {
        match self {
            Dest::Direct { cluster, .. } | Dest::Gateway { cluster, .. } => cluster,
        }
    }

    fn key(&self) -> HealthKey {
        match self {
            Dest::Direct { addr, .. } => HealthKey::Endpoint(*addr),
            Dest::Gateway {
                cluster, authority, ..
            } => HealthKey::Remote(cluster.clone(), authority.clone()),
        }
    }
}

/// What passive health checking tracks: an endpoint, or a service through a
/// peer's gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HealthKey {
    Endpoint(SocketAddr),
    Remote(String, String),
}

#[derive(Debug, Clone, Copy)]
struct Ejection {
    /// Consecutive ejections (the ejection time doubles with each).
    times: u32,
    until: Instant,
}

/// Passive outlier detection: a destination that fails to connect is
/// ejected for `base`, doubling with each consecutive ejection up to `cap`;
/// a success clears it.
///
/// Its memory is bounded by the catalog (SPEC B6): [`Health::sync`] drops
/// the state of destinations that left the catalog (visiting only the
/// services that changed), and entries whose ejection ended long ago are
/// dropped as the map grows.
#[derive(Debug)]
pub struct Health {
    base: Duration,
    cap: Duration,
    ejected: Mutex<HashMap<HealthKey, Ejection>>,
    /// The catalog the ejections were last checked against.
    synced: Mutex<Option<Arc<GlobalCatalog>>>,
    /// Size at which the ejections that ended long ago are swept.
    sweep_at: AtomicUsize,
}

/// Ejections kept before the first sweep of those that ended long ago.
const SWEEP_MIN: usize = 1024;

impl Health {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Health {
            base,
            cap: cap.max(base),
            ejected: Mutex::new(HashMap::new()),
            synced: Mutex::new(None),
            sweep_at: AtomicUsize::new(SWEEP_MIN),
        }
    }

    /// Ejections held now.
    pub fn len(&self) -> usize {
        self.ejected.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Brings the ejections in step with `state`'s catalog: the
    /// destinations of services removed or changed since the catalog last
    /// synced, and no longer in it, are forgotten. Persistent maps: only
    /// the services that differ are visited. Cheap when nothing changed
    /// (one pointer comparison); call it before using the state.
    pub fn sync(&self, state: &DataplaneState) {
        let Ok(mut synced) = self.synced.lock() else {
            return;
        };
        let new = &state.feed.catalog;
        let old = match synced.as_ref() {
            Some(old) if Arc::ptr_eq(old, new) => return,
            Some(old) => Arc::clone(old),
            None => {
                *synced = Some(Arc::clone(new));
                return;
            }
        };
        *synced = Some(Arc::clone(new));
        let Ok(mut ejected) = self.ejected.lock() else {
            return;
        };
        if ejected.is_empty() {
            return;
        }
        for item in old.services.diff(&new.services) {
            match item {
                DiffItem::Remove(_, gone) => {
                    for key in keys_of(gone) {
                        ejected.remove(&key);
                    }
                }
                DiffItem::Update {
                    old: (_, before),
                    new: (_, after),
                } => {
                    let kept: HashSet<HealthKey> = keys_of(after).collect();
                    for key in keys_of(before) {
                        if !kept.contains(&key) {
                            ejected.remove(&key);
                        }
                    }
                }
                DiffItem::Add(..) => {}
            }
        }
    }

    /// The destinations ejected at `now`, with how long they stay so, in
    /// key order.
    pub fn ejected(&self, now: Instant) -> Vec<(HealthKey, Duration)> {
        let mut out: Vec<(HealthKey, Duration)> = self
            .ejected
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, e)| e.until > now)
                    .map(|(k, e)| (k.clone(), e.until - now))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
        out
    }

    pub fn is_ejected(&self, key: &HealthKey, now: Instant) -> bool {
        self.ejected
            .lock()
            .map(|m| m.get(key).is_some_and(|e| e.until > now))
            .unwrap_or(false)
    }

    /// Records a failure; returns how long the destination is ejected.
    pub fn failed(&self, dest: &Dest, now: Instant) -> Duration {
        let Ok(mut m) = self.ejected.lock() else {
            return Duration::ZERO;
        };
        let e = m.entry(dest.key()).or_insert(Ejection {
            times: 0,
            until: now,
        });
        let factor = 2u32.saturating_pow(e.times.min(16));
        let d = self.base.saturating_mul(factor).min(self.cap);
        e.times = e.times.saturating_add(1);
        e.until = now + d;
        // Destinations outside the catalog (manual entries' resolved
        // addresses) are not synced away: sweep what ended long ago once
        // the map has doubled.
        if m.len() >= self.sweep_at.load(Ordering::Relaxed) {
            let cap = self.cap;
            m.retain(|_, e| e.until + cap > now);
            self.sweep_at
                .store((m.len() * 2).max(SWEEP_MIN), Ordering::Relaxed);
        }
        d
    }

    /// Records a success: the destination is healthy again.
    pub fn succeeded(&self, dest: &Dest) {
        if let Ok(mut m) = self.ejected.lock() {
            m.remove(&dest.key());
        }
    }

    /// Forgets ejections that ended long ago (keeps the map small).
    pub fn prune(&self, now: Instant) {
        if let Ok(mut m) = self.ejected.lock() {
            m.retain(|_, e| e.until + self.cap > now);
        }
    }
}

impl Default for Health {
    /// 1 s doubling up to 30 s.
    fn default() -> Self {
        Health::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// Every destination key of a global service: its endpoints reached
/// directly (address and target port), and per cluster reached through a
/// gateway, `<hostname>:<port>` for each of its ports.
fn keys_of(svc: &GlobalService) -> impl Iterator<Item = HealthKey> + '_ {
    svc.contributions.iter().flat_map(move |c| {
        let direct: Box<dyn Iterator<Item = HealthKey> + '_> = match c.reach {
            Reach::Local | Reach::Direct => Box::new(c.service.endpoints().flat_map(|(_, e)| {
                e.ports
                    .iter()
                    .map(move |p| HealthKey::Endpoint(SocketAddr::new(e.address, p.target)))
            })),
            Reach::Gateway => Box::new(svc.ports.iter().map(move |p| {
                HealthKey::Remote(c.cluster.clone(), format!("{}:{}", svc.hostname, p.number))
            })),
        };
        direct
    })
}

/// The destinations for a connection to `svc` on `port`, tier by tier,
/// each tier in weighted random order with ejected destinations left out.
/// When every destination of every tier is ejected, all are returned (a
/// failing mesh should still try rather than refuse outright).
pub fn plan(
    svc: &GlobalService,
    port: u16,
    state: &DataplaneState,
    health: &Health,
    now: Instant,
    rng: &mut fastrand::Rng,
) -> Vec<Vec<Dest>> {
    let client = ClientLocation {
        network: &state.feed.catalog.cluster.network,
        locality: &state.locality,
    };
    let mut all: Vec<Vec<(Dest, usize)>> = Vec::new();
    for tier in rank(svc, &client) {
        let mut dests: Vec<(Dest, usize)> = Vec::new();
        let mut remote: HashMap<String, usize> = HashMap::new();
        for g in tier {
            match g.reach {
                Reach::Local | Reach::Direct => {
                    for ep in g.endpoints {
                        if let Some(target) = ep.target(port) {
                            dests.push((
                                Dest::Direct {
                                    addr: SocketAddr::new(ep.address, target),
                                    cluster: g.cluster.to_owned(),
                                    name: ep.name.clone(),
                                },
                                1,
                            ));
                        }
                    }
                }
                Reach::Gateway => {
                    let serving = g
                        .endpoints
                        .iter()
                        .filter(|e| e.target(port).is_some())
                        .count();
                    if serving > 0 {
                        *remote.entry(g.cluster.to_owned()).or_default() += serving;
                    }
                }
            }
        }
        let mut clusters: Vec<(String, usize)> = remote.into_iter().collect();
        clusters.sort();
        for (cluster, weight) in clusters {
            let Some(link) = state.links.get(&cluster) else {
                continue;
            };
            dests.push((
                Dest::Gateway {
                    gateways: link
                        .addresses
                        .iter()
                        .map(|a| (a.value.clone(), link.hbone_port))
                        .collect(),
                    trust_domain: link.trust_domain.clone(),
                    authority: format!("{}:{port}", svc.hostname),
                    cluster,
                },
                weight,
            ));
        }
        if !dests.is_empty() {
            all.push(dests);
        }
    }
    let healthy: Vec<Vec<Dest>> = all
        .iter()
        .map(|t| {
            let live: Vec<(Dest, usize)> = t
                .iter()
                .filter(|(d, _)| !health.is_ejected(&d.key(), now))
                .cloned()
                .collect();
            weighted_order(live, rng)
        })
        .filter(|t| !t.is_empty())
        .collect();
    if !healthy.is_empty() {
        return healthy;
    }
    all.into_iter().map(|t| weighted_order(t, rng)).collect()
}

/// A random order in which heavier items tend to come first (each item's
/// key is `u^(1/w)`, sorted descending).
fn weighted_order(items: Vec<(Dest, usize)>, rng: &mut fastrand::Rng) -> Vec<Dest> {
    let mut keyed: Vec<(f64, Dest)> = items
        .into_iter()
        .map(|(d, w)| {
            let u = rng.f64().max(f64::MIN_POSITIVE);
            (u.powf(1.0 / w.max(1) as f64), d)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, d)| d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(port: u16) -> Dest {
        Dest::Direct {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            cluster: "c".into(),
            name: String::new(),
        }
    }

    #[test]
    fn t6_ejection_doubles_and_is_capped_and_success_clears_it() {
        let h = Health::new(Duration::from_secs(1), Duration::from_secs(5));
        let now = Instant::now();
        let d = direct(1);
        let times: Vec<u64> = (0..5).map(|_| h.failed(&d, now).as_secs()).collect();
        assert_eq!(times, [1, 2, 4, 5, 5]);
        assert!(h.is_ejected(&d.key(), now + Duration::from_millis(4900)));
        assert!(!h.is_ejected(&d.key(), now + Duration::from_secs(5)));
        h.succeeded(&d);
        assert!(!h.is_ejected(&d.key(), now));
        assert_eq!(h.failed(&d, now), Duration::from_secs(1));
    }

    #[test]
    fn t5_weighted_order_follows_the_weights() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut first_heavy = 0;
        for _ in 0..1000 {
            let o = weighted_order(vec![(direct(1), 1), (direct(2), 3)], &mut rng);
            if o[0] == direct(2) {
                first_heavy += 1;
            }
        }
        // P(heavy first) = 3/4.
        assert!((700..800).contains(&first_heavy), "{first_heavy}");
    }
}
