//! Where a connection goes (`pick::plan`): tiers under each traffic
//! distribution for the client's locality, remote networks through their
//! east-west gateway, and failover past ejected destinations (T2-T6, D2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Pod};
use meshpeer_dataplane::feed::CatalogFeed;
use meshpeer_dataplane::pick::{Dest, Health, plan};
use meshpeer_dataplane::state::{DataplaneState, StateOptions};
use meshpeer_model::objects::GatewayAddress;
use meshpeer_model::testing::{ClusterBuilder, peer_gateway, pod, svc};
use meshpeer_model::{
    CatalogConfig, ClusterSnapshot, Export, GlobalCatalog, GlobalService, Object,
    TrafficDistribution, catalog, exports,
};
use tokio::time::Instant;

const HTTP: u16 = 8000;
const GRPC: u16 = 9000;

/// A pod of `shop/web`; with `grpc`, it also has a container port `grpc` 9090.
fn web_pod(name: &str, ip: &str, node: Option<&str>, grpc: bool) -> Object {
    let mut p: Pod = pod("shop", name, &[("app", "web")], ip, true, node);
    if grpc {
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.ports.get_or_insert_with(Vec::new).push(ContainerPort {
            name: Some("grpc".into()),
            container_port: 9090,
            ..Default::default()
        });
    }
    Object::Pod(p)
}

/// A cluster named `name` in `network` at `region`/`zone` exporting
/// `shop/web` (http 8000 -> 8080, grpc 9000 -> named port `grpc`) with the
/// given pods (name, ip, node, grpc).
fn web_cluster(
    name: &str,
    network: &str,
    region: &str,
    zone: &str,
    distribution: Option<&str>,
    pods: &[(&str, &str, Option<&str>, bool)],
) -> ClusterBuilder {
    let mut s = svc("shop", "web")
        .global()
        .port("http", HTTP.into(), 8080)
        .port_named_target("grpc", GRPC.into(), "grpc");
    if let Some(d) = distribution {
        s = s.distribution(d);
    }
    let mut b = ClusterBuilder::new(name)
        .network(network)
        .locality(region, zone)
        .trust_domain(&format!("{name}.td"))
        .service(s);
    for (n, ip, node, grpc) in pods {
        b = b.object(web_pod(n, ip, *node, *grpc));
    }
    b
}

/// The link from cluster1 to `peer`, its gateway at `address` (cluster3's
/// gateway also has a host name and HBONE on 15443).
fn link(peer: &str, network: &str, address: &str) -> Object {
    let mut gw = peer_gateway(peer, network, &format!("{peer}.td"), address);
    if peer == "cluster3" {
        gw.spec
            .addresses
            .push(GatewayAddress::hostname("ew.cluster3.example"));
        gw.spec
            .listeners
            .iter_mut()
            .find(|l| l.name == "cross-network")
            .expect("the peer gateway has an HBONE listener")
            .port = 15443;
    }
    Object::Gateway(gw)
}

/// The client's view, from cluster1 (network net1, us-east/e1):
///
/// | cluster  | network | locality        | endpoints (grpc)                      |
/// |----------|---------|-----------------|---------------------------------------|
/// | cluster1 | net1    | us-east/e1,e2; us-west/w1 | web-a 10.1.0.1 (grpc) e1, web-b e2, web-c w1 |
/// | cluster2 | net1    | us-east/e1      | 10.2.0.1                              |
/// | cluster3 | net3    | us-east/e1 (2, one grpc), us-east/e2 (1) | 10.3.0.x           |
/// | cluster4 | net4    | us-west/w1      | 10.4.0.1                              |
/// | cluster5 | net5    | us-east/e2      | 10.5.0.1                              |
fn mesh(distribution: Option<&str>) -> GlobalCatalog {
    let d = distribution;
    let c1 = web_cluster(
        "cluster1",
        "net1",
        "us-east",
        "e1",
        d,
        &[
            ("web-a", "10.1.0.1", Some("a"), true),
            ("web-b", "10.1.0.2", Some("b"), false),
            ("web-c", "10.1.0.3", Some("c"), false),
        ],
    )
    .node("a", "us-east", "e1")
    .node("b", "us-east", "e2")
    .node("c", "us-west", "w1")
    .object(link("cluster2", "net1", "192.0.2.2"))
    .object(link("cluster3", "net3", "192.0.2.3"))
    .object(link("cluster4", "net4", "192.0.2.4"))
    .object(link("cluster5", "net5", "192.0.2.5"))
    .build();
    let peers: Vec<ClusterSnapshot> = vec![
        web_cluster(
            "cluster2",
            "net1",
            "us-east",
            "e1",
            d,
            &[("web-x", "10.2.0.1", None, false)],
        )
        .build(),
        web_cluster(
            "cluster3",
            "net3",
            "us-east",
            "e1",
            d,
            &[
                ("web-p", "10.3.0.1", None, true),
                ("web-q", "10.3.0.2", None, false),
                ("web-r", "10.3.0.3", Some("r"), false),
            ],
        )
        .node("r", "us-east", "e2")
        .build(),
        web_cluster(
            "cluster4",
            "net4",
            "us-west",
            "w1",
            d,
            &[("web-s", "10.4.0.1", None, false)],
        )
        .build(),
        web_cluster(
            "cluster5",
            "net5",
            "us-east",
            "e2",
            d,
            &[("web-t", "10.5.0.1", None, false)],
        )
        .build(),
    ];
    let exps: Vec<Export> = peers.iter().map(exports).collect();
    let v = catalog(&c1, &exps, &CatalogConfig::default());
    assert_eq!(v.services.len(), 1, "{:?}", v.diagnostics);
    assert_eq!(
        v.services.values().next().unwrap().contributions.len(),
        5,
        "{:?}",
        v.diagnostics
    );
    v
}

fn state_of(catalog: GlobalCatalog) -> DataplaneState {
    DataplaneState::build(
        Arc::new(CatalogFeed {
            version: 1,
            catalog: Arc::new(catalog),
            callers: Vec::new(),
            callers_pending: false,
        }),
        &StateOptions::default(),
    )
}

fn web(s: &DataplaneState) -> &GlobalService {
    s.service_by_host("web.shop.mesh.internal").unwrap()
}

/// A destination in short: `cluster1 10.1.0.1:8080` or `gw cluster3`.
fn short(d: &Dest) -> String {
    match d {
        Dest::Direct { addr, cluster, .. } => format!("{cluster} {addr}"),
        Dest::Gateway { cluster, .. } => format!("gw {cluster}"),
    }
}

/// The plan's tiers in short, each sorted (the order within a tier is random).
fn tiers(plan: &[Vec<Dest>]) -> Vec<Vec<String>> {
    plan.iter()
        .map(|t| {
            let mut v: Vec<String> = t.iter().map(short).collect();
            v.sort();
            v
        })
        .collect()
}

fn plan_for(s: &DataplaneState, port: u16, health: &Health, now: Instant) -> Vec<Vec<Dest>> {
    let mut rng = fastrand::Rng::with_seed(7);
    plan(web(s), port, s, health, now, &mut rng)
}

fn plan_tiers(s: &DataplaneState, port: u16) -> Vec<Vec<String>> {
    tiers(&plan_for(s, port, &Health::default(), Instant::now()))
}

fn strs(t: &[&[&str]]) -> Vec<Vec<String>> {
    t.iter()
        .map(|t| t.iter().map(|s| (*s).to_owned()).collect())
        .collect()
}

#[test]
fn t2_prefer_network_is_the_default_and_other_networks_come_last() {
    let s = state_of(mesh(None));
    assert_eq!(web(&s).distribution, TrafficDistribution::PreferNetwork);
    assert_eq!(
        plan_tiers(&s, HTTP),
        strs(&[
            &[
                "cluster1 10.1.0.1:8080",
                "cluster1 10.1.0.2:8080",
                "cluster1 10.1.0.3:8080",
                "cluster2 10.2.0.1:8080",
            ],
            &["gw cluster3", "gw cluster4", "gw cluster5"],
        ])
    );
}

#[test]
fn t3_prefer_close_tiers_by_network_then_region_then_zone() {
    let s = state_of(mesh(Some("PreferClose")));
    assert_eq!(web(&s).distribution, TrafficDistribution::PreferClose);
    assert_eq!(
        plan_tiers(&s, HTTP),
        strs(&[
            // same network, region and zone
            &["cluster1 10.1.0.1:8080", "cluster2 10.2.0.1:8080"],
            // same network and region
            &["cluster1 10.1.0.2:8080"],
            // same network
            &["cluster1 10.1.0.3:8080"],
            // other network, same region and zone
            &["gw cluster3"],
            // other network, same region: cluster3's e2 endpoint is its own tier entry
            &["gw cluster3", "gw cluster5"],
            // anywhere
            &["gw cluster4"],
        ])
    );
}

#[test]
fn t4_prefer_region_tiers_by_network_then_region() {
    let s = state_of(mesh(Some("PreferRegion")));
    assert_eq!(web(&s).distribution, TrafficDistribution::PreferRegion);
    assert_eq!(
        plan_tiers(&s, HTTP),
        strs(&[
            &[
                "cluster1 10.1.0.1:8080",
                "cluster1 10.1.0.2:8080",
                "cluster2 10.2.0.1:8080",
            ],
            &["cluster1 10.1.0.3:8080"],
            &["gw cluster3", "gw cluster5"],
            &["gw cluster4"],
        ])
    );
}

#[test]
fn t5_any_puts_every_destination_in_one_tier() {
    let s = state_of(mesh(Some("Any")));
    assert_eq!(web(&s).distribution, TrafficDistribution::Any);
    assert_eq!(
        plan_tiers(&s, HTTP),
        strs(&[&[
            "cluster1 10.1.0.1:8080",
            "cluster1 10.1.0.2:8080",
            "cluster1 10.1.0.3:8080",
            "cluster2 10.2.0.1:8080",
            "gw cluster3",
            "gw cluster4",
            "gw cluster5",
        ]])
    );
}

#[test]
fn t3_the_tiers_follow_the_client_locality_option() {
    // The same mesh seen from a proxy in us-west/w1: cluster1's w1 endpoint
    // is now the closest, and cluster4 (us-west) the closest remote.
    let opts = StateOptions {
        locality: Some(meshpeer_model::Locality::new("us-west", "w1")),
        ..StateOptions::default()
    };
    let s = DataplaneState::build(
        Arc::new(CatalogFeed {
            version: 1,
            catalog: Arc::new(mesh(Some("PreferClose"))),
            callers: Vec::new(),
            callers_pending: false,
        }),
        &opts,
    );
    assert_eq!(
        plan_tiers(&s, HTTP),
        strs(&[
            &["cluster1 10.1.0.3:8080"],
            &[
                "cluster1 10.1.0.1:8080",
                "cluster1 10.1.0.2:8080",
                "cluster2 10.2.0.1:8080",
            ],
            &["gw cluster4"],
            &["gw cluster3", "gw cluster5"],
        ])
    );
}

#[test]
fn d2_same_network_endpoints_are_reached_directly() {
    let s = state_of(mesh(None));
    let p = plan_for(&s, HTTP, &Health::default(), Instant::now());
    let x = p[0]
        .iter()
        .find(|d| d.cluster() == "cluster2")
        .expect("cluster2 shares net1: its endpoint is in the first tier");
    assert_eq!(
        *x,
        Dest::Direct {
            addr: "10.2.0.1:8080".parse().unwrap(),
            cluster: "cluster2".into(),
            name: "web-x".into(),
        }
    );
}

#[test]
fn d2_a_remote_network_is_one_gateway_destination_with_the_links_address_port_and_identity() {
    let s = state_of(mesh(None));
    let p = plan_for(&s, HTTP, &Health::default(), Instant::now());
    // cluster3's three endpoints (two localities) are one destination.
    let gws: Vec<&Dest> = p[1].iter().filter(|d| d.cluster() == "cluster3").collect();
    assert_eq!(gws.len(), 1, "{p:?}");
    assert_eq!(
        *gws[0],
        Dest::Gateway {
            cluster: "cluster3".into(),
            gateways: vec![
                ("192.0.2.3".into(), 15443),
                ("ew.cluster3.example".into(), 15443),
            ],
            trust_domain: "cluster3.td".into(),
            authority: "web.shop.mesh.internal:8000".into(),
        }
    );
    let c4 = p[1].iter().find(|d| d.cluster() == "cluster4").unwrap();
    assert_eq!(
        *c4,
        Dest::Gateway {
            cluster: "cluster4".into(),
            gateways: vec![("192.0.2.4".into(), 15008)],
            trust_domain: "cluster4.td".into(),
            authority: "web.shop.mesh.internal:8000".into(),
        }
    );
    // The authority names the port asked for.
    let p = plan_for(&s, GRPC, &Health::default(), Instant::now());
    let Dest::Gateway { authority, .. } = &p[1][0] else {
        panic!("{p:?}")
    };
    assert_eq!(authority, "web.shop.mesh.internal:9000");
}

#[test]
fn d2_a_gateway_destination_weighs_as_many_endpoints_as_its_cluster_has() {
    // PreferNetwork's second tier: cluster3 (3 endpoints), cluster4 (1),
    // cluster5 (1). With weights 3:1:1 cluster3 comes first 3/5 of the time;
    // were each destination weighted 1, 1/3 of the time.
    let s = state_of(mesh(None));
    let health = Health::default();
    let now = Instant::now();
    let mut rng = fastrand::Rng::with_seed(11);
    let runs = 3000;
    let mut first = std::collections::HashMap::<String, usize>::new();
    for _ in 0..runs {
        let p = plan(web(&s), HTTP, &s, &health, now, &mut rng);
        *first.entry(short(&p[1][0])).or_default() += 1;
    }
    let c3 = first["gw cluster3"];
    assert!((1650..1950).contains(&c3), "{first:?}");
    for other in ["gw cluster4", "gw cluster5"] {
        assert!((450..750).contains(&first[other]), "{first:?}");
    }
}

#[test]
fn d2_a_remote_cluster_without_a_link_is_left_out() {
    let mut cat = mesh(None);
    // The link to cluster4 is gone (its contribution is still in this version).
    cat.links.retain(|l| l.cluster != "cluster4");
    let s = state_of(cat);
    assert!(
        web(&s)
            .contributions
            .iter()
            .any(|c| c.cluster == "cluster4")
    );
    assert_eq!(
        plan_tiers(&s, HTTP)[1],
        ["gw cluster3", "gw cluster5"],
        "no way to reach cluster4"
    );
}

#[test]
fn d2_endpoints_without_the_asked_port_are_left_out() {
    let s = state_of(mesh(None));
    // Only web-a (cluster1) and web-p (cluster3) have a `grpc` container port.
    assert_eq!(
        plan_tiers(&s, GRPC),
        strs(&[&["cluster1 10.1.0.1:9090"], &["gw cluster3"]])
    );
    // A port the service does not have: nowhere to go.
    assert!(plan_tiers(&s, 7777).is_empty());
    // Under PreferClose a tier whose endpoints all lack the port disappears.
    let s = state_of(mesh(Some("PreferClose")));
    assert_eq!(
        plan_tiers(&s, GRPC),
        strs(&[&["cluster1 10.1.0.1:9090"], &["gw cluster3"]])
    );
}

#[test]
fn t6_an_ejected_destination_leaves_its_tier_until_the_ejection_ends() {
    let s = state_of(mesh(Some("PreferClose")));
    let health = Health::new(Duration::from_secs(1), Duration::from_secs(30));
    let now = Instant::now();
    let full = plan_for(&s, HTTP, &health, now);
    let a = full[0]
        .iter()
        .find(|d| d.cluster() == "cluster1")
        .unwrap()
        .clone();
    let x = full[0]
        .iter()
        .find(|d| d.cluster() == "cluster2")
        .unwrap()
        .clone();
    health.failed(&a, now);
    let p = tiers(&plan_for(&s, HTTP, &health, now));
    assert_eq!(p[0], ["cluster2 10.2.0.1:8080"], "{p:?}");
    assert_eq!(p.len(), 6);

    // The whole first tier ejected: traffic fails over to the next tier.
    health.failed(&x, now);
    let p = tiers(&plan_for(&s, HTTP, &health, now));
    assert_eq!(p[0], ["cluster1 10.1.0.2:8080"], "{p:?}");
    assert_eq!(p.len(), 5);

    // A gateway destination is ejected on its own, not the other clusters'.
    let gw3 = full[3][0].clone();
    assert_eq!(short(&gw3), "gw cluster3");
    health.failed(&gw3, now);
    let p = tiers(&plan_for(&s, HTTP, &health, now));
    assert_eq!(
        p,
        strs(&[
            &["cluster1 10.1.0.2:8080"],
            &["cluster1 10.1.0.3:8080"],
            &["gw cluster5"],
            &["gw cluster4"],
        ])
    );

    // The ejections end: new connections return to the first tier.
    let later = now + Duration::from_millis(1001);
    assert_eq!(tiers(&plan_for(&s, HTTP, &health, later)), tiers(&full));
    // A success clears an ejection at once.
    health.succeeded(&x);
    let p = tiers(&plan_for(&s, HTTP, &health, now));
    assert_eq!(p[0], ["cluster2 10.2.0.1:8080"], "{p:?}");
}

#[test]
fn t6_when_every_destination_is_ejected_the_plan_still_has_them_all() {
    let s = state_of(mesh(Some("PreferClose")));
    let health = Health::default();
    let now = Instant::now();
    let full = plan_for(&s, HTTP, &health, now);
    for d in full.iter().flatten() {
        health.failed(d, now);
    }
    let p = plan_for(&s, HTTP, &health, now);
    assert_eq!(tiers(&p), tiers(&full));
    // Every destination but one ejected: only that one is left.
    health.succeeded(&full[5][0]);
    let p = tiers(&plan_for(&s, HTTP, &health, now));
    assert_eq!(p, [["gw cluster4"]]);
}
