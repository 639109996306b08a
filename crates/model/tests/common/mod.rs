//! Random meshes for property tests: clusters with segments, links,
//! namespace labels and services with every kind of label value (valid and
//! not), ready and unready pods.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeSet;

use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::{
    CatalogConfig, ClusterSnapshot, Export, GlobalCatalog, Object, catalog, exports, labels,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
pub(crate) struct SvcSpec {
    pub(crate) ns: u8,
    pub(crate) name: u8,
    pub(crate) scope: u8,
    pub(crate) takeover: u8,
    pub(crate) dist: u8,
    pub(crate) ready: u8,
    pub(crate) not_ready: u8,
    pub(crate) ports: u8,
}

#[derive(Clone, Debug)]
pub(crate) struct ClusterSpec {
    pub(crate) segment: u8,
    pub(crate) links: u8,
    pub(crate) ns_scope: u8,
    pub(crate) services: Vec<SvcSpec>,
}

pub(crate) fn svc_spec() -> impl Strategy<Value = SvcSpec> {
    (
        0..3u8,
        0..6u8,
        0..6u8,
        0..3u8,
        0..6u8,
        0..3u8,
        0..2u8,
        0..3u8,
    )
        .prop_map(
            |(ns, name, scope, takeover, dist, ready, not_ready, ports)| SvcSpec {
                ns,
                name,
                scope,
                takeover,
                dist,
                ready,
                not_ready,
                ports,
            },
        )
}

pub(crate) fn cluster_spec() -> impl Strategy<Value = ClusterSpec> {
    (
        0..3u8,
        any::<u8>(),
        0..4u8,
        prop::collection::vec(svc_spec(), 0..8),
    )
        .prop_map(|(segment, links, ns_scope, services)| ClusterSpec {
            segment,
            links,
            ns_scope,
            services,
        })
}

pub(crate) fn mesh_spec() -> impl Strategy<Value = Vec<ClusterSpec>> {
    prop::collection::vec(cluster_spec(), 1..5)
}

const SCOPES: [Option<&str>; 6] = [
    None,
    Some("global"),
    Some("segment"),
    Some("cluster"),
    Some("Global"),
    Some("global"),
];
const DISTS: [Option<&str>; 6] = [
    None,
    Some("Any"),
    Some("PreferClose"),
    Some("PreferRegion"),
    Some("PreferNetwork"),
    Some("nearest"),
];

pub(crate) fn build(i: usize, spec: &ClusterSpec, n: usize) -> ClusterSnapshot {
    let name = format!("cluster{i}");
    let mut b = ClusterBuilder::new(&name)
        .locality(if i.is_multiple_of(2) { "east" } else { "west" }, "z1")
        .segment("dev", "cluster.dev")
        .segment("prod", "cluster.prod");
    // Some clusters share a flat network: their endpoints are reached directly.
    if spec.links & 0x80 != 0 {
        b = b.network("flat");
    }
    match spec.segment {
        1 => b = b.join("dev"),
        2 => b = b.join("prod"),
        _ => {}
    }
    for j in 0..n {
        if j != i && spec.links & (1 << j) != 0 {
            b = b.link(&format!("cluster{j}"));
        }
    }
    for ns in 0..3u8 {
        let label = match (spec.ns_scope, ns) {
            (1, 0) => vec![(labels::SERVICE_SCOPE, "global")],
            (2, 1) => vec![(labels::SERVICE_SCOPE, "segment")],
            (3, 2) => vec![(labels::SERVICE_TAKEOVER, "true")],
            _ => vec![],
        };
        b = b.namespace(&format!("ns{ns}"), &label);
    }
    let mut seen = BTreeSet::new();
    for s in &spec.services {
        if !seen.insert((s.ns, s.name)) {
            continue;
        }
        let mut sb = svc(&format!("ns{}", s.ns), &format!("svc{}", s.name))
            .ready(s.ready.into())
            .not_ready(s.not_ready.into());
        if let Some(v) = SCOPES[s.scope as usize] {
            sb = sb.scope(v);
        }
        match s.takeover {
            1 => sb = sb.takeover("true"),
            2 => sb = sb.takeover("false"),
            _ => {}
        }
        match s.ports {
            1 => sb = sb.port("http", 8000, 8080).port("grpc", 9000, 9000),
            2 => sb = sb.port("", 9090, 9090),
            _ => {}
        }
        if let Some(v) = DISTS[s.dist as usize] {
            sb = sb.distribution(v);
        }
        b = b.service(sb);
    }
    b.build()
}

pub(crate) fn build_mesh(specs: &[ClusterSpec]) -> Vec<ClusterSnapshot> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| build(i, s, specs.len()))
        .collect()
}

/// Deterministic Fisher-Yates with xorshift, seeded by proptest.
pub(crate) fn shuffle<T>(v: &mut [T], mut seed: u64) {
    seed |= 1;
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// The same cluster, rebuilt by applying its objects in a shuffled order.
pub(crate) fn reapplied(snap: &ClusterSnapshot, seed: u64) -> ClusterSnapshot {
    let mut objects: Vec<Object> = snap.objects();
    shuffle(&mut objects, seed);
    let mut out = ClusterSnapshot::new(snap.config.clone());
    for o in objects {
        out.apply(o);
    }
    out
}

pub(crate) fn views(mesh: &[ClusterSnapshot], config: &CatalogConfig) -> Vec<GlobalCatalog> {
    let exps: Vec<Export> = mesh.iter().map(exports).collect();
    mesh.iter()
        .enumerate()
        .map(|(i, own)| {
            let peers = exps
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, e)| e);
            catalog(own, peers, config)
        })
        .collect()
}
