//! Sync gating after a restart (issue 11): a restarted controller knows its
//! own cluster at once, its peers only once they have synced again (their
//! link tasks back off up to 30 s). Until then, what the output held at
//! start for a service that a peer contributes to is kept as it was: not
//! deleted, not rewritten without the peer's endpoints. A held entry is
//! released when every peer it waits for has synced once, is no longer
//! linked, or the grace period since the start is over.
//!
//! A held entry keeps the WorkloadEntries it selected at start (upstream
//! flavor: `meshpeer.io/entry`), so its endpoints stay as they were too.
//!
//! Only entries read back at start are held, so the hold only shrinks, and
//! each release costs the entries it releases (SPEC I1).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use meshpeer_model::labels;
use meshpeer_model::objects::WorkloadEntry;
use meshpeer_model::render::upstream::{ENTRY, entry_key};
use meshpeer_store::{Desired, Existing};

/// The WorkloadEntries of held entries, by entry name (a persistent map:
/// cloning is O(1)).
pub(crate) type HeldWorkloads = imbl::OrdMap<String, Arc<[Arc<WorkloadEntry>]>>;

/// The output entries held until their peers sync again.
#[derive(Debug, Default)]
pub(crate) struct Hold {
    /// What the output held at start, for the entries still held.
    entries: Desired,
    /// The WorkloadEntries those entries selected at start.
    workloads: HeldWorkloads,
    /// Per held entry, the clusters it still waits for.
    waits: BTreeMap<String, BTreeSet<String>>,
    /// Per cluster, the entries that wait for it.
    by_cluster: BTreeMap<String, BTreeSet<String>>,
    /// When everything still held is released.
    until: Option<SystemTime>,
}

impl Hold {
    /// Holds every entry of `existing` that names contributing clusters
    /// (annotation `meshpeer.io/clusters`), with the WorkloadEntries it
    /// selects, until `until`. The own cluster and clusters that are not
    /// linked are settled later, once known.
    pub(crate) fn new(existing: &Existing, until: SystemTime) -> Self {
        let mut hold = Hold {
            until: Some(until),
            ..Hold::default()
        };
        let mut by_key: BTreeMap<&str, Vec<Arc<WorkloadEntry>>> = BTreeMap::new();
        for we in &existing.workloads {
            if let Some(key) = we.metadata.labels.as_ref().and_then(|l| l.get(ENTRY)) {
                by_key
                    .entry(key.as_str())
                    .or_default()
                    .push(Arc::new(we.clone()));
            }
        }
        for se in &existing.entries {
            let Some(name) = se.metadata.name.clone() else {
                continue;
            };
            let clusters: BTreeSet<String> = se
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(labels::GEN_CLUSTERS))
                .map(|c| {
                    c.split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if clusters.is_empty() {
                continue;
            }
            for c in &clusters {
                hold.by_cluster
                    .entry(c.clone())
                    .or_default()
                    .insert(name.clone());
            }
            hold.waits.insert(name.clone(), clusters);
            if let Some(wl) = by_key.remove(entry_key(&name).as_str()) {
                hold.workloads.insert(name.clone(), wl.into());
            }
            hold.entries.insert(name, Arc::new(se.clone()));
        }
        hold
    }

    /// The entries still held (a persistent map: cloning is O(1)).
    pub(crate) fn entries(&self) -> &Desired {
        &self.entries
    }

    /// The WorkloadEntries of the entries still held.
    pub(crate) fn workloads(&self) -> &HeldWorkloads {
        &self.workloads
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The clusters entries still wait for.
    pub(crate) fn clusters(&self) -> impl Iterator<Item = &str> {
        self.by_cluster.keys().map(String::as_str)
    }

    /// `cluster` will not change what it contributes any more by coming
    /// back (it synced, it is this cluster, or it is not linked): entries
    /// that waited only for it are released. Says whether any was.
    pub(crate) fn settle(&mut self, cluster: &str) -> bool {
        let Some(names) = self.by_cluster.remove(cluster) else {
            return false;
        };
        let mut released = false;
        for name in names {
            let done = self.waits.get_mut(&name).is_some_and(|w| {
                w.remove(cluster);
                w.is_empty()
            });
            if done {
                self.waits.remove(&name);
                self.entries.remove(&name);
                self.workloads.remove(&name);
                released = true;
            }
        }
        released
    }

    /// Releases everything once the grace period is over. Says whether
    /// anything was held.
    pub(crate) fn expire(&mut self, now: SystemTime) -> bool {
        if self.until.is_some_and(|t| t <= now) {
            self.until = None;
            return self.release_all();
        }
        false
    }

    /// Releases everything; says whether anything was held.
    pub(crate) fn release_all(&mut self) -> bool {
        let any = !self.entries.is_empty();
        self.entries = Desired::new();
        self.workloads = HeldWorkloads::new();
        self.waits.clear();
        self.by_cluster.clear();
        any
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use meshpeer_model::objects::ServiceEntry;

    use super::*;

    fn existing(entries: Vec<ServiceEntry>) -> Existing {
        Existing {
            entries,
            workloads: Vec::new(),
        }
    }

    fn workload(name: &str, entry: &str) -> WorkloadEntry {
        WorkloadEntry {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some([(ENTRY.to_owned(), entry_key(entry))].into()),
                ..Default::default()
            },
            spec: Default::default(),
        }
    }

    #[test]
    fn held_entries_keep_the_workload_entries_they_selected() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut hold = Hold::new(
            &Existing {
                entries: vec![
                    entry("autogen.a.remote", "cluster2"),
                    entry("autogen.a.other", "cluster3"),
                ],
                workloads: vec![
                    workload("autogen.a.remote.cluster2.any", "autogen.a.remote"),
                    workload("autogen.a.remote.cluster2.0a0b0c0d", "autogen.a.remote"),
                    workload("autogen.a.unheld.cluster2.any", "autogen.a.unheld"),
                ],
            },
            t0 + Duration::from_secs(120),
        );
        let held = &hold.workloads()["autogen.a.remote"];
        assert_eq!(held.len(), 2);
        assert!(!hold.workloads().contains_key("autogen.a.other"));
        assert_eq!(hold.workloads().len(), 1, "only held entries' endpoints");
        assert!(hold.settle("cluster2"));
        assert!(hold.workloads().is_empty());
        assert!(hold.release_all());
        assert!(hold.entries().is_empty());
    }

    fn entry(name: &str, clusters: &str) -> ServiceEntry {
        ServiceEntry {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                annotations: Some([(labels::GEN_CLUSTERS.to_owned(), clusters.to_owned())].into()),
                ..Default::default()
            },
            spec: Default::default(),
        }
    }

    #[test]
    fn entries_are_released_when_every_peer_they_wait_for_is_settled() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut hold = Hold::new(
            &existing(vec![
                entry("autogen.a.local", "cluster1"),
                entry("autogen.a.remote", "cluster2"),
                entry("autogen.a.both", "cluster1,cluster2,cluster3"),
            ]),
            t0 + Duration::from_secs(120),
        );
        assert_eq!(hold.entries().len(), 3);
        // The own cluster is known once the source loaded.
        assert!(hold.settle("cluster1"));
        assert_eq!(hold.entries().len(), 2);
        // cluster3 is not linked any more.
        assert!(!hold.settle("cluster3"));
        assert!(!hold.settle("cluster9"));
        assert_eq!(hold.clusters().collect::<Vec<_>>(), ["cluster2"]);
        // cluster2 synced.
        assert!(hold.settle("cluster2"));
        assert!(hold.is_empty());
    }

    #[test]
    fn everything_is_released_when_the_grace_period_is_over() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut hold = Hold::new(
            &existing(vec![entry("autogen.a.remote", "cluster2")]),
            t0 + Duration::from_secs(120),
        );
        assert!(!hold.expire(t0 + Duration::from_secs(119)));
        assert!(hold.expire(t0 + Duration::from_secs(120)));
        assert!(hold.is_empty());
        assert!(!hold.expire(t0 + Duration::from_secs(121)));
    }
}
