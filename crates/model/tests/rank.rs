//! Endpoint ranking: the tiers the data plane walks at connect time (T2-T6).

#![allow(clippy::unwrap_used)]

use meshpeer_model::testing::{ClusterBuilder, pod, svc};
use meshpeer_model::{
    CatalogConfig, ClientLocation, ClusterSnapshot, Export, GlobalCatalog, Locality, Object,
    TrafficDistribution, catalog, exports, rank, rank_with,
};

/// cluster1 (network net1, us-east): endpoints in zones e1 and e2.
/// cluster2 (network net2, us-east): endpoints in zone e1.
/// cluster3 (network net3, us-west): endpoints in zone w1.
fn mesh(c1_ready: bool, distribution: Option<&str>) -> (ClusterSnapshot, Vec<Export>) {
    let web = |b: ClusterBuilder| {
        let s = svc("shop", "web").global();
        b.service(match distribution {
            Some(d) => s.distribution(d),
            None => s,
        })
    };
    let c1 = web(ClusterBuilder::new("cluster1")
        .network("net1")
        .locality("us-east", "e1")
        .link_with("cluster2", "net2", "cluster2")
        .link_with("cluster3", "net3", "cluster3")
        .node("a", "us-east", "e1")
        .node("b", "us-east", "e2"))
    .object(Object::Pod(pod(
        "shop",
        "web-a",
        &[("app", "web")],
        "10.1.0.1",
        c1_ready,
        Some("a"),
    )))
    .object(Object::Pod(pod(
        "shop",
        "web-b",
        &[("app", "web")],
        "10.1.0.2",
        c1_ready,
        Some("b"),
    )))
    .build();
    let c2 = web(ClusterBuilder::new("cluster2")
        .network("net2")
        .locality("us-east", "e1"))
    .object(Object::Pod(pod(
        "shop",
        "web-x",
        &[("app", "web")],
        "10.2.0.1",
        true,
        None,
    )))
    .object(Object::Pod(pod(
        "shop",
        "web-y",
        &[("app", "web")],
        "10.2.0.2",
        true,
        None,
    )))
    .build();
    let c3 = web(ClusterBuilder::new("cluster3")
        .network("net3")
        .locality("us-west", "w1"))
    .object(Object::Pod(pod(
        "shop",
        "web-z",
        &[("app", "web")],
        "10.3.0.1",
        true,
        None,
    )))
    .build();
    (c1, vec![exports(&c2), exports(&c3)])
}

fn view(c1_ready: bool, distribution: Option<&str>) -> GlobalCatalog {
    let (c1, peers) = mesh(c1_ready, distribution);
    catalog(&c1, &peers, &CatalogConfig::default())
}

/// Tiers as "cluster/zone" strings.
fn tiers(v: &GlobalCatalog, mode: Option<TrafficDistribution>) -> Vec<Vec<String>> {
    let svc = &v.services.values().next().unwrap();
    let loc = Locality::new("us-east", "e1");
    let client = ClientLocation {
        network: "net1",
        locality: &loc,
    };
    let ranked = match mode {
        Some(m) => rank_with(svc, m, &client),
        None => rank(svc, &client),
    };
    ranked
        .iter()
        .map(|t| {
            t.iter()
                .map(|g| format!("{}/{}", g.cluster, g.locality.zone))
                .collect()
        })
        .collect()
}

#[test]
fn t2_prefer_network_is_the_default_and_puts_the_clients_network_first() {
    let v = view(true, None);
    assert_eq!(
        v.services.values().next().unwrap().distribution,
        TrafficDistribution::PreferNetwork
    );
    assert_eq!(
        tiers(&v, None),
        [
            vec!["cluster1/e1", "cluster1/e2"],
            vec!["cluster2/e1", "cluster3/w1"]
        ]
    );
}

#[test]
fn t3_prefer_close_orders_by_network_region_zone() {
    let v = view(true, Some("PreferClose"));
    assert_eq!(
        tiers(&v, None),
        [
            vec!["cluster1/e1"],
            vec!["cluster1/e2"],
            vec!["cluster2/e1"],
            vec!["cluster3/w1"]
        ]
    );
}

#[test]
fn t4_prefer_region_orders_by_network_then_region() {
    let v = view(true, Some("PreferRegion"));
    assert_eq!(
        tiers(&v, None),
        [
            vec!["cluster1/e1", "cluster1/e2"],
            vec!["cluster2/e1"],
            vec!["cluster3/w1"]
        ]
    );
}

#[test]
fn t5_any_is_one_tier_weighted_by_ready_endpoints() {
    let v = view(true, Some("Any"));
    assert_eq!(
        tiers(&v, None),
        [vec![
            "cluster1/e1",
            "cluster1/e2",
            "cluster2/e1",
            "cluster3/w1"
        ]]
    );
    let loc = Locality::default();
    let client = ClientLocation {
        network: "net1",
        locality: &loc,
    };
    let weights: Vec<usize> = rank(v.services.values().next().unwrap(), &client)[0]
        .iter()
        .map(|g| g.weight())
        .collect();
    assert_eq!(weights, [1, 1, 2, 1]);
}

#[test]
fn t6_failover_moves_to_the_next_tier_when_a_tier_has_no_ready_endpoint() {
    // Scale cluster1 to zero: the first tier is now the remote one.
    let v = view(false, None);
    assert_eq!(tiers(&v, None), [vec!["cluster2/e1", "cluster3/w1"]]);
    let v = view(false, Some("PreferClose"));
    assert_eq!(tiers(&v, None), [vec!["cluster2/e1"], vec!["cluster3/w1"]]);
    // Back up: traffic returns to the local tier.
    let v = view(true, Some("PreferClose"));
    assert_eq!(tiers(&v, None)[0], ["cluster1/e1"]);
}

#[test]
fn ranking_a_client_without_locality_keeps_network_tiers() {
    let v = view(true, Some("PreferClose"));
    let loc = Locality::default();
    let client = ClientLocation {
        network: "net1",
        locality: &loc,
    };
    let t: Vec<usize> = rank(v.services.values().next().unwrap(), &client)
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(t, [2, 2], "same network first, everything else after");
}
