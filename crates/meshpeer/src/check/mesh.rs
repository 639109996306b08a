//! Checks across clusters: one root of trust, networks, trust domains,
//! segments, stale entries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshpeer_identity::{ClusterCa, SpiffeId, TrustRoot};
use meshpeer_model::objects::{is_managed, label};
use meshpeer_model::{PeerLink, labels};
use rustls::pki_types::UnixTime;

use super::cluster::{cacerts_fix, date, eastwest, sha256_sum, title_of};
use super::facts::{CaFacts, ClusterFacts, Live};
use super::{Check, Item, Options, Status, names};

pub(super) fn checks(all: &[ClusterFacts], opts: Options) -> Vec<Check> {
    let mut out = vec![certs(all), network(all), trust_domains(all), segments(all)];
    if !opts.precheck {
        out.push(stale(all));
    }
    out
}

/// Whether leaves issued by `ca` verify under `root`, as a peer holding
/// `root` checks them (SPEC C6).
pub(super) fn chains_to(ca: &ClusterCa, root: &TrustRoot) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(root.cert_der().clone())
        .map_err(|e| format!("the root cannot be used: {e}"))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .map_err(|e| format!("the root cannot be used: {e}"))?;
    // A bound intermediate issues only for its trust domain (SPEC P6).
    let td = ca.binding().unwrap_or("probe.invalid");
    let id = SpiffeId::new(td, "probe", "probe").map_err(|e| e.to_string())?;
    let leaf = ca
        .issue_leaf(&id, Duration::from_secs(60), SystemTime::now())
        .map_err(|e| e.to_string())?;
    let Some((end_entity, intermediates)) = leaf.chain.split_first() else {
        return Err("no certificate was issued".to_owned());
    };
    match verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
        )) => Err("its intermediate was not issued by that root".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn certs(all: &[ClusterFacts]) -> Check {
    let mut items = Vec::new();
    let mut detail = Vec::new();
    for f in all {
        match &f.ca {
            CaFacts::Loaded { at, ca } => {
                let root = ca.trust_root();
                items.push(Item::info(format!(
                    "cluster {} root certificate SHA256 sum: {}",
                    f.name,
                    sha256_sum(root.sha256_fingerprint())
                )));
                detail.push(format!(
                    "{}: {at} (intermediate valid until {}; root {}, valid until {})",
                    f.name,
                    date(ca.not_after()),
                    root.sha256_fingerprint(),
                    date(root.not_after())
                ));
            }
            _ => items.push(Item::warn(
                format!(
                    "cluster {} not checked: its cacerts cannot be read (see its Configuration Check)",
                    f.name
                ),
                cacerts_fix(f),
            )),
        }
    }
    let loaded: Vec<(&ClusterFacts, &ClusterCa)> =
        all.iter().filter_map(|f| Some((f, f.ca.ca()?))).collect();
    for (a, ca) in &loaded {
        for (b, other) in &loaded {
            if a.name == b.name {
                continue;
            }
            match chains_to(ca, other.trust_root()) {
                Ok(()) => items.push(Item::ok(format!(
                    "cluster {} has compatible intermediate certificates with cluster {}",
                    a.name, b.name
                ))),
                Err(why) => items.push(Item::fail(
                    format!(
                        "cluster {}'s certificates are not accepted by cluster {}: {why} (root SHA256 sum {}): {} refuses {}",
                        a.name,
                        b.name,
                        sha256_sum(other.trust_root().sha256_fingerprint()),
                        b.name,
                        a.name
                    ),
                    format!(
                        "issue every cluster's intermediate from one root: meshpeer certs cluster {} --root ROOT_DIR --out NEW_DIR (the root {} uses), then restart {}'s controller, gateway and proxy with it",
                        a.name, b.name, a.name
                    ),
                )),
            }
        }
    }
    let check = Check::from_items(None, names::CERTS, items, |_| String::new());
    let title = match check.status {
        Status::Fail => "clusters do not share one root of trust".to_owned(),
        Status::Warn => title_of(&check.items, check.status, ""),
        _ if loaded.len() < 2 => "fewer than two clusters to compare".to_owned(),
        _ => "all clusters have compatible intermediate certificates".to_owned(),
    };
    let status = if check.status == Status::Info {
        Status::Ok
    } else {
        check.status
    };
    Check {
        title,
        status,
        ..check
    }
    .with_detail(detail)
}

fn target<'a>(all: &'a [ClusterFacts], link: &PeerLink) -> Option<&'a ClusterFacts> {
    all.iter().find(|f| f.name == link.cluster)
}

fn network(all: &[ClusterFacts]) -> Check {
    let mut items = Vec::new();
    let mut by_network: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in all {
        let n = f.export.cluster.network.as_str();
        by_network.entry(n).or_default().push(&f.name);
        let ns_label = f
            .snapshot
            .namespaces
            .get(labels::ISTIO_SYSTEM)
            .and_then(|ns| label(&ns.metadata, labels::NETWORK))
            .filter(|l| !l.is_empty());
        items.push(Item::ok(match ns_label {
            Some(_) => format!("Cluster {} has network: {n}", f.name),
            None if f.snapshot.config.network.is_some() => format!(
                "Cluster {} has network: {n} (from cluster.yaml; namespace {} has no label {})",
                f.name,
                labels::ISTIO_SYSTEM,
                labels::NETWORK
            ),
            None => format!(
                "Cluster {} has network: {n} (the default, its name; namespace {} has no label {})",
                f.name,
                labels::ISTIO_SYSTEM,
                labels::NETWORK
            ),
        }));
        if let Some((key, gw)) = eastwest(f).into_iter().next() {
            match label(&gw.metadata, labels::NETWORK) {
                Some(l) if l == n => items.push(Item::ok(format!(
                    "Eastwest gateway {key} has correct network label: {n}"
                ))),
                Some(l) => items.push(Item::fail(
                    format!(
                        "Eastwest gateway {key} of cluster {} has network label {l}, but the cluster is in network {n} (label {} on namespace {})",
                        f.name,
                        labels::NETWORK,
                        labels::ISTIO_SYSTEM
                    ),
                    format!(
                        "in cluster {}, label gateway {key} {}={n}, or label namespace {} {}={l} if {l} is the network meant",
                        f.name,
                        labels::NETWORK,
                        labels::ISTIO_SYSTEM,
                        labels::NETWORK
                    ),
                )),
                None => items.push(Item::warn(
                    format!(
                        "Eastwest gateway {key} of cluster {} has no network label (expected {n})",
                        f.name
                    ),
                    format!("label gateway {key} {}={n}", labels::NETWORK),
                )),
            }
        }
    }
    for (n, clusters) in &by_network {
        if clusters.len() > 1 {
            items.push(Item::warn(
                format!(
                    "Clusters {} share network {n}: their endpoints are reached directly, as one flat network",
                    clusters.join(", ")
                ),
                format!(
                    "unless they are one flat network, give each cluster its own: label namespace {} {}=<cluster> in each",
                    labels::ISTIO_SYSTEM,
                    labels::NETWORK
                ),
            ));
        }
    }
    for f in all {
        for link in &f.catalog.links {
            let said = f
                .snapshot
                .gateways
                .get(&link.gateway)
                .and_then(|g| label(&g.metadata, labels::NETWORK));
            let g = &link.gateway;
            match (target(all, link), said) {
                (Some(t), Some(l)) if l == t.export.cluster.network => items.push(Item::ok(format!(
                    "Remote gateway {g} in cluster {} references network {l} (clusters: [{}])",
                    f.name, t.name
                ))),
                (Some(t), Some(l)) => items.push(Item::fail(
                    format!(
                        "Remote gateway {g} in cluster {} references network {l}, but cluster {} is in network {}",
                        f.name, t.name, t.export.cluster.network
                    ),
                    format!(
                        "in cluster {}, label gateway {g} {}={} (or fix cluster {}'s network)",
                        f.name,
                        labels::NETWORK,
                        t.export.cluster.network,
                        t.name
                    ),
                )),
                (Some(t), None) => items.push(Item::warn(
                    format!(
                        "Remote gateway {g} in cluster {} has no network label (cluster {} is in network {})",
                        f.name, t.name, t.export.cluster.network
                    ),
                    format!(
                        "label gateway {g} in cluster {} {}={}",
                        f.name,
                        labels::NETWORK,
                        t.export.cluster.network
                    ),
                )),
                (None, _) => items.push(Item::info(format!(
                    "Remote gateway {g} in cluster {} references network {} (cluster {} not checked)",
                    f.name, link.network, link.cluster
                ))),
            }
        }
    }
    let check = Check::from_items(None, names::NETWORK, items, |_| String::new());
    let title = match check.status {
        Status::Fail => "network labels disagree".to_owned(),
        Status::Warn => "network configuration has warnings".to_owned(),
        _ => "all network configurations are valid".to_owned(),
    };
    Check { title, ..check }
}

fn trust_domains(all: &[ClusterFacts]) -> Check {
    let mut items = Vec::new();
    let mut by_td: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in all {
        by_td
            .entry(f.export.cluster.trust_domain.as_str())
            .or_default()
            .push(&f.name);
        items.push(Item::info(format!(
            "Cluster {} has trust domain: {}",
            f.name, f.export.cluster.trust_domain
        )));
    }
    for (td, clusters) in &by_td {
        if clusters.len() < 2 {
            continue;
        }
        // A shared trust domain (Istio's multi-network model) is told apart
        // by each intermediate's cluster binding (SPEC P6).
        let mut unbound = Vec::new();
        let mut unknown = Vec::new();
        for f in all.iter().filter(|f| clusters.contains(&f.name.as_str())) {
            match &f.ca {
                CaFacts::Loaded { ca, .. } => {
                    if ca.cluster_binding() != Some(f.name.as_str()) {
                        unbound.push(f.name.as_str());
                    }
                }
                _ => unknown.push(f.name.as_str()),
            }
        }
        let reissue = format!(
            "issue each cluster's intermediate bound to it: meshpeer certs cluster NAME --trust-domain {td} --root ROOT_DIR --out NEW_DIR"
        );
        if !unbound.is_empty() {
            items.push(Item::fail(
                format!(
                    "Clusters {} share trust domain {td}, but the intermediate of {} is not bound to its cluster (spiffe://{td}/meshpeer/cluster/<name>): its peers and callers are refused (no_cluster_binding), or it speaks for another cluster",
                    clusters.join(", "),
                    unbound.join(", ")
                ),
                reissue,
            ));
        } else if !unknown.is_empty() {
            items.push(Item::warn(
                format!(
                    "Clusters {} share trust domain {td}; the intermediates of {} were not checked (no cacerts given): each must be bound to its cluster",
                    clusters.join(", "),
                    unknown.join(", ")
                ),
                "pass each cluster's cacerts to check (or check it where the cacerts are)",
            ));
        } else {
            items.push(Item::ok(format!(
                "Clusters {} share trust domain {td}; each intermediate is bound to its cluster, so peers and gateways tell them apart",
                clusters.join(", ")
            )));
        }
    }
    for f in all {
        for link in &f.catalog.links {
            let Some(t) = target(all, link) else {
                continue;
            };
            let actual = &t.export.cluster.trust_domain;
            if &link.trust_domain != actual {
                items.push(Item::fail(
                    format!(
                        "Remote gateway {} in cluster {} expects trust domain {}, but cluster {} has {actual}: peering is refused",
                        link.gateway, f.name, link.trust_domain, t.name
                    ),
                    format!(
                        "in cluster {}, annotate gateway {} {}={actual}",
                        f.name,
                        link.gateway,
                        labels::TRUST_DOMAIN
                    ),
                ));
            } else {
                items.push(Item::ok(format!(
                    "Remote gateway {} in cluster {} expects trust domain {actual}",
                    link.gateway, f.name
                )));
            }
        }
    }
    let check = Check::from_items(None, names::TRUST_DOMAIN, items, |_| String::new());
    let status = if check.status == Status::Info {
        Status::Ok
    } else {
        check.status
    };
    let title = match status {
        Status::Fail => "remote-peer gateways expect other trust domains".to_owned(),
        Status::Warn => "clusters share a trust domain".to_owned(),
        _ => "every cluster has its own trust domain, and every link expects it".to_owned(),
    };
    Check {
        title,
        status,
        ..check
    }
}

fn segments(all: &[ClusterFacts]) -> Check {
    let mut items = Vec::new();
    // Segment name -> cluster -> domain.
    let mut defs: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for f in all {
        for s in &f.export.segments {
            defs.entry(&s.name).or_default().insert(&f.name, &s.domain);
        }
    }
    for (name, by_cluster) in &defs {
        let domains: BTreeSet<&str> = by_cluster.values().copied().collect();
        if domains.len() > 1 {
            let said: Vec<String> = by_cluster
                .iter()
                .map(|(c, d)| format!("{d} in {c}"))
                .collect();
            items.push(Item::fail(
                format!(
                    "Segment {}/{name} has different domains: {}",
                    labels::ISTIO_SYSTEM,
                    said.join(", ")
                ),
                format!(
                    "make spec.domain of Segment {}/{name} the same in every cluster",
                    labels::ISTIO_SYSTEM
                ),
            ));
        } else if let Some(d) = domains.first() {
            items.push(Item::ok(format!("Segment {name} has domain {d}")));
        }
        let missing: Vec<&str> = all
            .iter()
            .map(|f| f.name.as_str())
            .filter(|c| !by_cluster.contains_key(c))
            .collect();
        if !missing.is_empty() {
            items.push(Item::warn(
                format!(
                    "Segment {name} is defined in {} but not in {}",
                    by_cluster.keys().copied().collect::<Vec<_>>().join(", "),
                    missing.join(", ")
                ),
                format!(
                    "apply the same Segment {}/{name} to {}",
                    labels::ISTIO_SYSTEM,
                    missing.join(", ")
                ),
            ));
        }
    }
    for f in all {
        let wanted = f
            .snapshot
            .namespaces
            .get(labels::ISTIO_SYSTEM)
            .and_then(|ns| label(&ns.metadata, labels::SEGMENT));
        match (wanted, &f.export.cluster.segment) {
            (Some(w), None) => items.push(Item::fail(
                format!(
                    "Cluster {}'s namespace {} names segment {w} (label {}), which the cluster does not define: it stays in the default segment",
                    f.name,
                    labels::ISTIO_SYSTEM,
                    labels::SEGMENT
                ),
                format!(
                    "create Segment {}/{w} in cluster {} (with the domain the other clusters give it), or correct the label",
                    labels::ISTIO_SYSTEM,
                    f.name
                ),
            )),
            (_, Some(s)) => items.push(Item::info(format!(
                "Cluster {} is in segment {} ({})",
                f.name, s.name, s.domain
            ))),
            (None, None) => items.push(Item::info(format!(
                "Cluster {} is in the default segment ({})",
                f.name,
                labels::DEFAULT_DOMAIN
            ))),
        }
    }
    let check = Check::from_items(None, names::SEGMENTS, items, |_| String::new());
    let status = if check.status == Status::Info {
        Status::Ok
    } else {
        check.status
    };
    let title = match status {
        Status::Fail => "segments disagree".to_owned(),
        Status::Warn => "segments are not defined the same everywhere".to_owned(),
        _ if defs.is_empty() => format!(
            "no Segments defined: every cluster is in the default segment ({})",
            labels::DEFAULT_DOMAIN
        ),
        _ => "all clusters define the same Segments".to_owned(),
    };
    Check {
        title,
        status,
        ..check
    }
}

fn stale(all: &[ClusterFacts]) -> Check {
    use meshpeer_model::render::upstream::{ENTRY, FLAT_PREFIX, GEN_CLUSTER, entry_key};

    let mut items = Vec::new();
    let mut checked = 0;
    let mut flat_entries = 0;
    for f in all {
        let managed_workloads: Vec<String> = f
            .snapshot
            .workload_entries
            .iter()
            .filter(|(_, w)| is_managed(&w.metadata))
            .map(|(k, _)| k.to_string())
            .collect();
        if !managed_workloads.is_empty() {
            items.push(Item::warn(
                format!(
                    "cluster {} has WorkloadEntries labelled as meshpeer's among its own objects, where meshpeer never writes them (it writes to its output): {}",
                    f.name,
                    managed_workloads.join(", ")
                ),
                "delete them (leftovers of another tool or version)",
            ));
        }
        let (Live::Up(s), Some((dir, output))) = (&f.live, &f.output) else {
            continue;
        };
        let Ok(feed) = &s.catalog else {
            continue;
        };
        checked += 1;
        let hosts: BTreeSet<&str> = feed
            .catalog
            .services
            .values()
            .map(|s| s.hostname.as_str())
            .collect();
        for se in &output.entries {
            let host = se.spec.hosts.first().map_or("", String::as_str);
            if !hosts.contains(host) {
                let name = se.metadata.name.as_deref().unwrap_or_default();
                items.push(Item::warn(
                    format!(
                        "cluster {}: ServiceEntry {name} in {} is for {host}, which is no longer a global service there",
                        f.name,
                        dir.display()
                    ),
                    "the controller removes it on its next write; if it stays, check the Controller Check for output errors",
                ));
            }
        }
        // Seed 002: the autogenflat entries of a flat network's peer Pods,
        // compared with the Pods those peers serve now (the live catalog).
        let serving: BTreeSet<(String, &str, String)> = feed
            .catalog
            .services
            .values()
            .flat_map(|svc| {
                let key = entry_key(&meshpeer_model::render::service_entry_name(svc));
                svc.contributions.iter().flat_map(move |c| {
                    let key = key.clone();
                    c.service.endpoints().map(move |(_, ep)| {
                        (key.clone(), c.cluster.as_str(), ep.address.to_string())
                    })
                })
            })
            .collect();
        for we in &output.workloads {
            let name = we.metadata.name.as_deref().unwrap_or_default();
            if !name.starts_with(FLAT_PREFIX) {
                continue;
            }
            flat_entries += 1;
            let label = |k: &str| {
                we.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            };
            let (key, cluster) = (label(ENTRY), label(GEN_CLUSTER));
            let address = we.spec.address.clone().unwrap_or_default();
            if !serving.contains(&(key, cluster.as_str(), address.clone())) {
                items.push(Item::warn(
                    format!(
                        "cluster {}: WorkloadEntry {name} in {} is for {address} in cluster {cluster}, which no longer serves that service there",
                        f.name,
                        dir.display()
                    ),
                    "the controller removes it on its next write; if it stays, check the Controller Check for output errors, or delete it (kubectl delete workloadentry -n istio-system NAME)",
                ));
            }
        }
    }
    let mut networks: BTreeMap<&str, usize> = BTreeMap::new();
    for f in all {
        *networks
            .entry(f.export.cluster.network.as_str())
            .or_default() += 1;
    }
    let flat = networks.values().any(|n| *n > 1);
    let check = Check::from_items(None, names::STALE, items, |_| String::new());
    let title = match check.status {
        Status::Warn | Status::Fail => title_of(&check.items, check.status, ""),
        // Seed 002: without two clusters on one network there are no flat
        // endpoints whose entries could go stale.
        _ if !flat => "skipped (flat network not detected)".to_owned(),
        _ if checked == 0 => {
            "skipped (no controller reachable with a file-mode output to compare)".to_owned()
        }
        _ if flat_entries == 0 => "no autogenflat workload entries found".to_owned(),
        _ => format!(
            "{flat_entries} autogenflat workload {}, none stale",
            if flat_entries == 1 {
                "entry"
            } else {
                "entries"
            }
        ),
    };
    Check { title, ..check }
}
