//! The scenarios `meshpeer demo` runs, embedded from `examples/`, and the
//! state folder they are unpacked into: cluster folders (with pod addresses
//! moved onto loopback so that backends bind without privileges) and
//! certificates under one root, made on first run.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use meshpeer_identity::RootCa;
use meshpeer_model::Cidr;
use serde::{Deserialize, Serialize};

/// `(scenario, cluster, file, text)` of every embedded example file.
const FILES: &[(&str, &str, &str, &str)] = &[
    (
        "httpbin",
        "cluster1",
        "cluster.yaml",
        include_str!("../../../../examples/httpbin/cluster1/cluster.yaml"),
    ),
    (
        "httpbin",
        "cluster1",
        "eastwest.yaml",
        include_str!("../../../../examples/httpbin/cluster1/eastwest.yaml"),
    ),
    (
        "httpbin",
        "cluster1",
        "httpbin.yaml",
        include_str!("../../../../examples/httpbin/cluster1/httpbin.yaml"),
    ),
    (
        "httpbin",
        "cluster1",
        "istio-system.yaml",
        include_str!("../../../../examples/httpbin/cluster1/istio-system.yaml"),
    ),
    (
        "httpbin",
        "cluster1",
        "nodes.yaml",
        include_str!("../../../../examples/httpbin/cluster1/nodes.yaml"),
    ),
    (
        "httpbin",
        "cluster2",
        "cluster.yaml",
        include_str!("../../../../examples/httpbin/cluster2/cluster.yaml"),
    ),
    (
        "httpbin",
        "cluster2",
        "eastwest.yaml",
        include_str!("../../../../examples/httpbin/cluster2/eastwest.yaml"),
    ),
    (
        "httpbin",
        "cluster2",
        "httpbin.yaml",
        include_str!("../../../../examples/httpbin/cluster2/httpbin.yaml"),
    ),
    (
        "httpbin",
        "cluster2",
        "istio-system.yaml",
        include_str!("../../../../examples/httpbin/cluster2/istio-system.yaml"),
    ),
    (
        "httpbin",
        "cluster2",
        "nodes.yaml",
        include_str!("../../../../examples/httpbin/cluster2/nodes.yaml"),
    ),
    (
        "httpbin-flat",
        "cluster1",
        "cluster.yaml",
        include_str!("../../../../examples/httpbin-flat/cluster1/cluster.yaml"),
    ),
    (
        "httpbin-flat",
        "cluster1",
        "eastwest.yaml",
        include_str!("../../../../examples/httpbin-flat/cluster1/eastwest.yaml"),
    ),
    (
        "httpbin-flat",
        "cluster1",
        "httpbin.yaml",
        include_str!("../../../../examples/httpbin-flat/cluster1/httpbin.yaml"),
    ),
    (
        "httpbin-flat",
        "cluster1",
        "istio-system.yaml",
        include_str!("../../../../examples/httpbin-flat/cluster1/istio-system.yaml"),
    ),
    (
        "httpbin-flat",
        "cluster1",
        "nodes.yaml",
        include_str!("../../../../examples/httpbin-flat/cluster1/nodes.yaml"),
    ),
    (
        "httpbin-flat",
        "cluster2",
        "cluster.yaml",
        include_str!("../../../../examples/httpbin-flat/cluster2/cluster.yaml"),
    ),
    (
        "httpbin-flat",
        "cluster2",
        "eastwest.yaml",
        include_str!("../../../../examples/httpbin-flat/cluster2/eastwest.yaml"),
    ),
    (
        "httpbin-flat",
        "cluster2",
        "httpbin.yaml",
        include_str!("../../../../examples/httpbin-flat/cluster2/httpbin.yaml"),
    ),
    (
        "httpbin-flat",
        "cluster2",
        "istio-system.yaml",
        include_str!("../../../../examples/httpbin-flat/cluster2/istio-system.yaml"),
    ),
    (
        "httpbin-flat",
        "cluster2",
        "nodes.yaml",
        include_str!("../../../../examples/httpbin-flat/cluster2/nodes.yaml"),
    ),
    (
        "bookinfo",
        "cluster1",
        "bookinfo.yaml",
        include_str!("../../../../examples/bookinfo/cluster1/bookinfo.yaml"),
    ),
    (
        "bookinfo",
        "cluster1",
        "cluster.yaml",
        include_str!("../../../../examples/bookinfo/cluster1/cluster.yaml"),
    ),
    (
        "bookinfo",
        "cluster1",
        "eastwest.yaml",
        include_str!("../../../../examples/bookinfo/cluster1/eastwest.yaml"),
    ),
    (
        "bookinfo",
        "cluster1",
        "istio-system.yaml",
        include_str!("../../../../examples/bookinfo/cluster1/istio-system.yaml"),
    ),
    (
        "bookinfo",
        "cluster1",
        "nodes.yaml",
        include_str!("../../../../examples/bookinfo/cluster1/nodes.yaml"),
    ),
    (
        "bookinfo",
        "cluster2",
        "bookinfo.yaml",
        include_str!("../../../../examples/bookinfo/cluster2/bookinfo.yaml"),
    ),
    (
        "bookinfo",
        "cluster2",
        "cluster.yaml",
        include_str!("../../../../examples/bookinfo/cluster2/cluster.yaml"),
    ),
    (
        "bookinfo",
        "cluster2",
        "eastwest.yaml",
        include_str!("../../../../examples/bookinfo/cluster2/eastwest.yaml"),
    ),
    (
        "bookinfo",
        "cluster2",
        "istio-system.yaml",
        include_str!("../../../../examples/bookinfo/cluster2/istio-system.yaml"),
    ),
    (
        "bookinfo",
        "cluster2",
        "nodes.yaml",
        include_str!("../../../../examples/bookinfo/cluster2/nodes.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster1",
        "bookinfo.yaml",
        include_str!("../../../../examples/bookinfo/cluster1/bookinfo.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster1",
        "cluster.yaml",
        include_str!("../../../../examples/bookinfo/cluster1/cluster.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster1",
        "eastwest.yaml",
        include_str!("../../../../examples/bookinfo/cluster1/eastwest.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster1",
        "istio-system.yaml",
        include_str!("../../../../examples/bookinfo/cluster1/istio-system.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster1",
        "nodes.yaml",
        include_str!("../../../../examples/bookinfo/cluster1/nodes.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster1",
        "subsets.yaml",
        include_str!("../../../../examples/bookinfo/subsets/cluster1/subsets.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster2",
        "bookinfo.yaml",
        include_str!("../../../../examples/bookinfo/cluster2/bookinfo.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster2",
        "cluster.yaml",
        include_str!("../../../../examples/bookinfo/cluster2/cluster.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster2",
        "eastwest.yaml",
        include_str!("../../../../examples/bookinfo/cluster2/eastwest.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster2",
        "istio-system.yaml",
        include_str!("../../../../examples/bookinfo/cluster2/istio-system.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster2",
        "nodes.yaml",
        include_str!("../../../../examples/bookinfo/cluster2/nodes.yaml"),
    ),
    (
        "bookinfo-subsets",
        "cluster2",
        "subsets.yaml",
        include_str!("../../../../examples/bookinfo/subsets/cluster2/subsets.yaml"),
    ),
];

/// The scenarios there are.
pub fn scenarios() -> Vec<&'static str> {
    let mut s: Vec<&str> = FILES.iter().map(|f| f.0).collect();
    s.dedup();
    s
}

/// Where the examples' addresses live in the demo, on loopback (which binds
/// without privileges on Linux): pods `10.A.B.C` (A < 55, one A per
/// cluster in the examples) at `127.(200+A).B.C`; ClusterIPs `10.96.B.C`
/// of cluster number `n` (1-based; clusters may reuse them) at
/// `127.(96+n).B.C`.
pub fn demo_address(cluster: u8, a: u8, b: u8, c: u8) -> Option<Ipv4Addr> {
    match a {
        0..POD_BLOCKS => Some(Ipv4Addr::new(127, 200 + a, b, c)),
        96 => Some(Ipv4Addr::new(127, 96 + cluster.min(100), b, c)),
        _ => None,
    }
}

/// Pods of `10.A.B.C` with `A` below this are moved onto loopback.
const POD_BLOCKS: u8 = 55;

/// Where [`demo_address`] puts pods (127.200.0.0 to 127.254.255.255), as
/// few CIDRs as cover it: what the demo's proxies and gateways may dial
/// although it is loopback (SPEC P5, `--allow-endpoints`).
pub fn pod_ranges() -> Vec<Cidr> {
    let first = Ipv4Addr::new(127, 200, 0, 0);
    let last = Ipv4Addr::new(127, 200 + POD_BLOCKS - 1, 255, 255);
    cover(u32::from(first), u32::from(last))
}

/// The fewest CIDRs that hold exactly `first..=last`.
fn cover(first: u32, last: u32) -> Vec<Cidr> {
    let mut out = Vec::new();
    let mut start = u64::from(first);
    let end = u64::from(last);
    while start <= end {
        // The largest block aligned at `start` that ends by `end`.
        let mut bits = start.trailing_zeros().min(32);
        while bits > 0 && start + (1u64 << bits) - 1 > end {
            bits -= 1;
        }
        let base = u32::try_from(start).unwrap_or(u32::MAX);
        let prefix = u8::try_from(32 - bits).unwrap_or(32);
        out.extend(Cidr::new(IpAddr::V4(Ipv4Addr::from(base)), prefix).ok());
        start += 1u64 << bits;
    }
    out
}

/// Rewrites every `10.A.B.C` literal of cluster number `cluster`'s manifest
/// to its demo address.
pub fn relocate(text: &str, cluster: u8) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.');
        if boundary
            && text[i..].starts_with("10.")
            && let Some((addr, len)) = parse_v4(&text[i..])
            && let [10, a, b, c] = addr.octets()
            && let Some(new) = demo_address(cluster, a, b, c)
        {
            out.push_str(&new.to_string());
            i += len;
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// An IPv4 literal at the start of `s` (not followed by another digit or
/// dot-digit), and its length.
fn parse_v4(s: &str) -> Option<(Ipv4Addr, usize)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let mut lit = &s[..end];
    if lit.ends_with('.') {
        lit = &lit[..lit.len() - 1];
    }
    let addr: Ipv4Addr = lit.parse().ok()?;
    Some((addr, lit.len()))
}

/// What a running demo publishes for `demo curl`, `demo scale` and tests.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    pub scenario: String,
    pub clusters: BTreeMap<String, ClusterRuntime>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRuntime {
    pub folder: PathBuf,
    pub dns: std::net::SocketAddr,
    pub api: std::net::SocketAddr,
    pub gateway: std::net::SocketAddr,
    pub vip_range: String,
}

/// The folders of one scenario in the state folder.
#[derive(Clone, Debug)]
pub struct Layout {
    pub scenario: String,
    /// `<state>/<scenario>`
    pub root: PathBuf,
    /// Cluster names, in order.
    pub clusters: Vec<String>,
}

impl Layout {
    pub fn cluster_dir(&self, cluster: &str) -> PathBuf {
        self.root.join(cluster)
    }

    pub fn cacerts(&self, cluster: &str) -> PathBuf {
        self.root.join("certs").join(cluster)
    }

    /// `demo.json`, or `demo-<cluster>.json` for a process running one cluster.
    pub fn runtime_file(&self, only: Option<&str>) -> PathBuf {
        match only {
            Some(c) => self.root.join(format!("demo-{c}.json")),
            None => self.root.join("demo.json"),
        }
    }

    pub fn read_runtime(&self) -> anyhow::Result<Runtime> {
        read_runtime(&self.root)
    }
}

/// What the running demo processes under `<state>/<scenario>` published:
/// `demo.json` (all clusters) and `demo-<cluster>.json` (one cluster each,
/// `--only`), merged.
pub fn read_runtime(root: &Path) -> anyhow::Result<Runtime> {
    let mut merged: Option<Runtime> = None;
    let mut entries: Vec<PathBuf> = fs::read_dir(root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("demo") && name.ends_with(".json")) {
            continue;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let rt: Runtime = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a demo runtime file", path.display()))?;
        match &mut merged {
            Some(m) => m.clusters.extend(rt.clusters),
            None => merged = Some(rt),
        }
    }
    merged.with_context(|| {
        format!(
            "no running demo found in {} (start one with `meshpeer demo`)",
            root.display()
        )
    })
}

/// Whether a demo process publishes its runtime under `<state>/<scenario>`.
pub fn is_running(root: &Path) -> bool {
    read_runtime(root).is_ok()
}

/// Unpacks `scenario` into `<state>/<scenario>` unless it is there already
/// (then the user's edits are kept), or always with `reset`; makes the
/// certificates when missing. Returns the layout and whether it was made now.
pub fn prepare(state: &Path, scenario: &str, reset: bool) -> anyhow::Result<(Layout, bool)> {
    let files: Vec<_> = FILES.iter().filter(|f| f.0 == scenario).collect();
    if files.is_empty() {
        anyhow::bail!(
            "no scenario {scenario:?}; there are: {}",
            scenarios().join(", ")
        );
    }
    let root = state.join(scenario);
    let mut clusters: Vec<String> = files.iter().map(|f| f.1.to_owned()).collect();
    clusters.dedup();
    let layout = Layout {
        scenario: scenario.to_owned(),
        root: root.clone(),
        clusters,
    };
    let fresh = reset || !root.join(&layout.clusters[0]).join("cluster.yaml").exists();
    if fresh {
        for c in &layout.clusters {
            let dir = layout.cluster_dir(c);
            if dir.exists() {
                fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot reset {}", dir.display()))?;
            }
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        for (_, cluster, file, text) in files {
            let n = layout
                .clusters
                .iter()
                .position(|c| c == cluster)
                .unwrap_or(0)
                + 1;
            let path = layout.cluster_dir(cluster).join(file);
            let text = relocate(text, u8::try_from(n).unwrap_or(u8::MAX));
            fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    let now = SystemTime::now();
    let root_dir = root.join("certs").join("root");
    let ca = if root_dir.join(meshpeer_identity::ROOT_CERT_FILE).exists() {
        RootCa::load(&root_dir, now).with_context(|| {
            format!("cannot load the demo's root CA from {}", root_dir.display())
        })?
    } else {
        let ca = RootCa::generate(
            "meshpeer demo root CA",
            Duration::from_secs(10 * 365 * 86_400),
            now,
        )?;
        ca.write(&root_dir)
            .with_context(|| format!("cannot write {}", root_dir.display()))?;
        ca
    };
    for c in &layout.clusters {
        let dir = layout.cacerts(c);
        if !dir.join(meshpeer_identity::CA_CERT_FILE).exists() {
            // Bound to the trust domain the cluster's folder declares (P6).
            let td = meshpeer_store::load_cluster_dir(&layout.cluster_dir(c))
                .map(|snap| meshpeer_model::exports(&snap).cluster.trust_domain)
                .unwrap_or_else(|_| c.clone());
            ca.issue_intermediate(c, &td, Duration::from_secs(365 * 86_400), now)?
                .write(&dir)
                .with_context(|| format!("cannot write {}", dir.display()))?;
        }
    }
    Ok((layout, fresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocate_moves_ten_slash_eight_literals_onto_loopback_only() {
        let t = "podIP: 10.1.0.14\npodCIDR: 10.2.1.0/24\nx: 110.1.2.3\nv: 1.10.1.2.3\nimage: foo:10.1\nclusterIP: 10.96.1.2\ny: 10.100.1.1\n";
        assert_eq!(
            relocate(t, 2),
            "podIP: 127.201.0.14\npodCIDR: 127.202.1.0/24\nx: 110.1.2.3\nv: 1.10.1.2.3\nimage: foo:10.1\nclusterIP: 127.98.1.2\ny: 10.100.1.1\n"
        );
    }

    #[test]
    fn p5_the_demo_allows_exactly_its_pod_ranges() {
        let ranges: Vec<String> = pod_ranges().iter().map(ToString::to_string).collect();
        assert_eq!(
            ranges,
            [
                "127.200.0.0/13",
                "127.208.0.0/12",
                "127.224.0.0/12",
                "127.240.0.0/13",
                "127.248.0.0/14",
                "127.252.0.0/15",
                "127.254.0.0/16"
            ]
        );
        let inside = |ip: Ipv4Addr| pod_ranges().iter().any(|c| c.contains(IpAddr::V4(ip)));
        for a in [0, 1, 2, 54] {
            let ip = demo_address(1, a, 255, 255).unwrap();
            assert!(inside(ip), "{ip}");
            let ip = demo_address(1, a, 0, 0).unwrap();
            assert!(inside(ip), "{ip}");
        }
        for ip in ["127.0.0.1", "127.199.255.255", "127.255.0.1", "127.97.0.1"] {
            assert!(!inside(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(cover(0, u32::MAX).len(), 1);
        assert_eq!(cover(5, 5).len(), 1);
    }

    #[test]
    fn every_scenario_has_two_clusters() {
        assert_eq!(
            scenarios(),
            ["httpbin", "httpbin-flat", "bookinfo", "bookinfo-subsets"]
                .map(str::to_owned)
                .to_vec()
        );
        for s in scenarios() {
            let mut c: Vec<&str> = FILES.iter().filter(|f| f.0 == s).map(|f| f.1).collect();
            c.dedup();
            assert_eq!(c, ["cluster1", "cluster2"], "{s}");
        }
    }
}
