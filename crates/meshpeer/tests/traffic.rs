//! Traffic through the data plane, in process with real sockets: per
//! cluster a controller, an east-west gateway (HBONE over mutual TLS) and a
//! proxy (DNS and VIP listeners), and backends that answer with their name.
//! Cross-cluster connections go proxy -> HBONE -> peer gateway -> backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshpeer_dataplane::hbone::{HboneClient, HboneError, HboneMetrics, PoolConfig, TunnelMeta};
use meshpeer_identity::{ALPN_H2, Identity, SpiffeId, client_config};
use prometheus_client::registry::Registry;
use support::{Backend, Mesh, ask, ask_until, namespace, resolve, segments, service_with, tally};
use tokio::io::{AsyncBufReadExt, BufReader};

const HOST: &str = "in-ambient.httpbin.mesh.internal";
const GLOBAL: (&str, &str) = ("solo.io/service-scope", "global");

/// Two linked clusters, each with `in-ambient` in `httpbin` (global scope,
/// annotations as given) and one backend answering with the cluster name.
async fn two_clusters(annotations: &[(&str, &str)]) -> (Mesh, Vec<Backend>) {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.start().await;
    mesh.start_dataplane().await;
    mesh.link_all().await;
    let mut backends = Vec::new();
    for c in &mesh.clusters {
        let ip = c.pod_ip(1);
        c.write("httpbin-ns.yaml", &namespace("httpbin", &[]));
        c.write(
            "in-ambient.yaml",
            &service_with(
                "httpbin",
                "in-ambient",
                &[GLOBAL],
                annotations,
                &[("in-ambient-0", &ip, &[])],
            ),
        );
        let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
        backends.push(Backend::start(addr, &c.name).await);
    }
    mesh.cluster("cluster2").wait_caller("cluster1").await;
    mesh.cluster("cluster1").wait_caller("cluster2").await;
    (mesh, backends)
}

fn metric(registry: &Registry, line_start: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_t6_prefer_network_fails_over_to_cluster2_and_returns_with_no_client_error() {
    let (mesh, mut backends) = two_clusters(&[]).await;
    let c1 = mesh.cluster("cluster1");
    let vip = c1.wait_route(HOST, 8000, &["cluster1", "cluster2"]).await;

    // D1: the proxy's DNS answers the global name with this VIP.
    let dns = c1.proxy().dns.local_addr();
    assert_eq!(resolve(dns, HOST).await.unwrap(), vec![vip.ip()]);

    // T2: the local endpoint while it is healthy.
    assert_eq!(
        tally(vip, 20).await,
        BTreeMap::from([("cluster1".into(), 20)])
    );

    // T6: the local backend stops (still advertised ready): every new
    // connection lands in cluster2 through its gateway, none fails.
    backends[0].stop().await;
    assert_eq!(
        tally(vip, 20).await,
        BTreeMap::from([("cluster2".into(), 20)])
    );
    assert!(metric(&c1.registry, "dataplane_ejections_total{kind=\"endpoint\"}") >= 1.0);
    assert!(metric(&c1.registry, "dataplane_retries_total") >= 1.0);

    // The tunnels really went through cluster2's gateway.
    let c2 = mesh.cluster("cluster2");
    let tunnels = metric(
        &c2.registry,
        "hbone_tunnels_opened_total{direction=\"inbound\",outcome=\"ok\"}",
    );
    assert!(
        tunnels >= 20.0,
        "cluster2's gateway opened {tunnels} tunnels"
    );

    // It comes back: once its ejection ends, new connections return to it.
    backends[0].resume().await;
    ask_until(vip, "back to cluster1", |who| who == "cluster1").await;
    assert_eq!(
        tally(vip, 20).await,
        BTreeMap::from([("cluster1".into(), 20)])
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_readiness_from_the_catalog_moves_traffic_without_failed_attempts() {
    let (mesh, _backends) = two_clusters(&[]).await;
    let c1 = mesh.cluster("cluster1");
    let vip = c1.wait_route(HOST, 8000, &["cluster1", "cluster2"]).await;
    assert_eq!(
        tally(vip, 5).await,
        BTreeMap::from([("cluster1".into(), 5)])
    );

    // Scaled to zero in cluster1: the Service stays, its pod goes.
    c1.write(
        "in-ambient.yaml",
        &service_with("httpbin", "in-ambient", &[GLOBAL], &[], &[]),
    );
    assert_eq!(
        c1.wait_route(HOST, 8000, &["cluster2"]).await,
        vip,
        "the VIP is sticky"
    );
    let retries = metric(&c1.registry, "dataplane_retries_total");
    assert_eq!(
        tally(vip, 20).await,
        BTreeMap::from([("cluster2".into(), 20)])
    );
    assert_eq!(
        metric(&c1.registry, "dataplane_retries_total"),
        retries,
        "no attempt at the pod that is gone"
    );

    // Scaled back up: traffic returns.
    let ip = c1.pod_ip(1);
    c1.write(
        "in-ambient.yaml",
        &service_with(
            "httpbin",
            "in-ambient",
            &[GLOBAL],
            &[],
            &[("in-ambient-0", &ip, &[])],
        ),
    );
    c1.wait_route(HOST, 8000, &["cluster1", "cluster2"]).await;
    assert_eq!(
        tally(vip, 20).await,
        BTreeMap::from([("cluster1".into(), 20)])
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t5_any_spreads_connections_over_both_clusters() {
    let any = ("networking.istio.io/traffic-distribution", "Any");
    let (mesh, _backends) = two_clusters(&[any]).await;
    let c1 = mesh.cluster("cluster1");
    let vip = c1.wait_route(HOST, 8000, &["cluster1", "cluster2"]).await;
    let counts = tally(vip, 200).await;
    // Each cluster has one endpoint: about 100 each. Fewer than 50 would be
    // more than seven standard deviations off.
    assert_eq!(counts.values().sum::<usize>(), 200);
    for cluster in ["cluster1", "cluster2"] {
        let n = counts.get(cluster).copied().unwrap_or(0);
        assert!(n >= 50, "{cluster} got {n} of 200: {counts:?}");
    }
    mesh.shutdown().await;
}

/// Three clusters in two regions, seen from cluster1 (r1/z1): cluster2 is
/// r1/z2, cluster3 r2/z1. cluster1 has two pods: `near` (z1) and `far` (z2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_t4_prefer_close_and_prefer_region_order_across_three_clusters_in_two_regions() {
    let mut mesh = Mesh::with_localities(&[
        ("cluster1", "r1", "z1"),
        ("cluster2", "r1", "z2"),
        ("cluster3", "r2", "z1"),
    ]);
    mesh.start().await;
    mesh.start_dataplane().await;
    mesh.link_all().await;
    let mut backends: BTreeMap<String, Backend> = BTreeMap::new();
    let modes = [("close", "PreferClose"), ("region", "PreferRegion")];
    for c in &mesh.clusters {
        c.write("ns.yaml", &namespace("lab", &[]));
        for (i, (svc, mode)) in modes.iter().enumerate() {
            let td = [("networking.istio.io/traffic-distribution", *mode)];
            let n = u8::try_from(i).unwrap() * 10;
            type OwnedPod = (String, String, Vec<(&'static str, &'static str)>);
            let mut pods: Vec<OwnedPod> =
                vec![(format!("{svc}-{}", c.name), c.pod_ip(n + 1), vec![])];
            if c.name == "cluster1" {
                pods = vec![
                    (format!("{svc}-near"), c.pod_ip(n + 1), vec![]),
                    (
                        format!("{svc}-far"),
                        c.pod_ip(n + 2),
                        vec![
                            ("topology.kubernetes.io/region", "r1"),
                            ("topology.kubernetes.io/zone", "z2"),
                        ],
                    ),
                ];
            }
            let pod_refs: Vec<support::Pod<'_>> = pods
                .iter()
                .map(|(p, ip, l)| (p.as_str(), ip.as_str(), l.as_slice()))
                .collect();
            c.write(
                &format!("{svc}.yaml"),
                &service_with("lab", svc, &[GLOBAL], &td, &pod_refs),
            );
            for (pod, ip, _) in &pods {
                let name = if c.name == "cluster1" {
                    pod.clone()
                } else {
                    c.name.clone()
                };
                let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
                backends.insert(pod.clone(), Backend::start(addr, &name).await);
            }
        }
    }
    for to in ["cluster2", "cluster3"] {
        mesh.cluster(to).wait_caller("cluster1").await;
    }
    let c1 = mesh.cluster("cluster1");
    let all = ["cluster1", "cluster2", "cluster3"];
    let close = c1.wait_route("close.lab.mesh.internal", 8000, &all).await;
    let region = c1.wait_route("region.lab.mesh.internal", 8000, &all).await;

    // T3: same zone first; T4: the whole region of the client's network.
    assert_eq!(
        tally(close, 30).await,
        BTreeMap::from([("close-near".into(), 30)])
    );
    let spread = tally(region, 60).await;
    assert!(
        spread.get("region-near").copied().unwrap_or(0) >= 10
            && spread.get("region-far").copied().unwrap_or(0) >= 10,
        "PreferRegion should spread over both pods of the region: {spread:?}"
    );

    // Losing the zone: PreferClose moves to the same region's other zone.
    backends.get_mut("close-near").unwrap().stop().await;
    assert_eq!(
        tally(close, 10).await,
        BTreeMap::from([("close-far".into(), 10)])
    );

    // Losing cluster1: the same region (cluster2) before the other (cluster3).
    backends.get_mut("close-far").unwrap().stop().await;
    backends.get_mut("region-near").unwrap().stop().await;
    backends.get_mut("region-far").unwrap().stop().await;
    assert_eq!(
        tally(close, 20).await,
        BTreeMap::from([("cluster2".into(), 20)])
    );
    assert_eq!(
        tally(region, 20).await,
        BTreeMap::from([("cluster2".into(), 20)])
    );

    // Losing cluster2 too: the other region.
    backends.get_mut("close-cluster2").unwrap().stop().await;
    backends.get_mut("region-cluster2").unwrap().stop().await;
    assert_eq!(
        tally(close, 20).await,
        BTreeMap::from([("cluster3".into(), 20)])
    );
    assert_eq!(
        tally(region, 20).await,
        BTreeMap::from([("cluster3".into(), 20)])
    );
    mesh.shutdown().await;
}

/// An HBONE client holding `cluster`'s proxy identity, as a test's own caller.
fn hbone_client(mesh: &Mesh, cluster: &str) -> HboneClient {
    let now = SystemTime::now();
    let ca = mesh
        .root
        .issue_intermediate(cluster, cluster, Duration::from_secs(3600), now)
        .unwrap();
    let root = ca.trust_root().clone();
    let id = SpiffeId::new(cluster, "istio-system", "meshpeer-proxy").unwrap();
    let identity = Arc::new(Identity::new(ca, id, Duration::from_secs(3600), now).unwrap());
    HboneClient::new(
        Arc::new(move |td: &str| {
            client_config(Arc::clone(&identity), &root, td, &[ALPN_H2]).map_err(|e| e.to_string())
        }),
        PoolConfig::default(),
        HboneMetrics::register(&mut Registry::default()),
    )
}

async fn first_line(t: meshpeer_dataplane::hbone::Tunnel) -> String {
    let mut line = String::new();
    BufReader::new(t).read_line(&mut line).await.unwrap();
    line.trim_end().to_owned()
}

/// cluster1 (segment dev) and cluster2 (segment prod) link both ways;
/// cluster3 (default segment) is not linked to cluster2 at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_gateway_refuses_segment_scoped_services_to_other_segments_and_unlinked_callers() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2", "cluster3"]);
    mesh.cluster("cluster1")
        .write("istio-system.yaml", &segments(Some("dev")));
    mesh.cluster("cluster2")
        .write("istio-system.yaml", &segments(Some("prod")));
    mesh.start().await;
    mesh.start_dataplane().await;
    mesh.link("cluster1", "cluster2").await;
    mesh.link("cluster2", "cluster1").await;
    let c2 = mesh.cluster("cluster2");
    c2.write("ns.yaml", &namespace("shop", &[]));
    let (ip1, ip2) = (c2.pod_ip(1), c2.pod_ip(2));
    c2.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service_with(
                "shop",
                "cart",
                &[("solo.io/service-scope", "segment")],
                &[],
                &[("cart-0", &ip1, &[])]
            ),
            service_with("shop", "front", &[GLOBAL], &[], &[("front-0", &ip2, &[])]),
        ),
    );
    let _cart = Backend::start(format!("{ip1}:8080").parse().unwrap(), "cart").await;
    let _front = Backend::start(format!("{ip2}:8080").parse().unwrap(), "front").await;
    c2.wait_caller("cluster1").await;
    let view = c2
        .wait("both services global", |v| v.catalog.services.len() == 2)
        .await;
    let host = |name: &str| {
        view.catalog
            .services
            .values()
            .find(|s| s.name == name)
            .unwrap()
            .hostname
            .clone()
    };
    let (cart, front) = (host("cart"), host("front"));
    assert_eq!(cart, "cart.shop.cluster.prod");
    let gw: SocketAddr = SocketAddr::from(([127, 0, 0, 1], c2.gateway().addr.port()));
    // As meshpeer's proxy sends them: the bytes are the application's.
    let meta = TunnelMeta {
        payload: Some(meshpeer_dataplane::hbone::PAYLOAD_TCP.into()),
        ..TunnelMeta::default()
    };

    // A global service of cluster2 is open to the linked dev cluster ...
    let client1 = hbone_client(&mesh, "cluster1");
    let t = client1
        .connect(gw, "cluster2", &format!("{front}:8000"), &meta)
        .await
        .unwrap();
    assert_eq!(first_line(t).await, "front");

    // ... a segment-scoped one is not (S7, D3): 403 naming both segments.
    let err = client1
        .connect(gw, "cluster2", &format!("{cart}:8000"), &meta)
        .await
        .unwrap_err();
    match &err {
        HboneError::Refused { status, message } => {
            assert_eq!(*status, 403, "{message}");
            assert!(
                message.contains("segment prod") && message.contains("segment dev"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other}"),
    }

    // A cluster that does not link to cluster2 is refused everything (C4).
    let client3 = hbone_client(&mesh, "cluster3");
    let err = client3
        .connect(gw, "cluster2", &format!("{front}:8000"), &meta)
        .await
        .unwrap_err();
    match &err {
        HboneError::Refused { status, message } => {
            assert_eq!(*status, 403, "{message}");
            assert!(
                message.contains("does not link to cluster cluster2"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other}"),
    }

    // A name cluster2 does not export: 404.
    let err = client1
        .connect(gw, "cluster2", "nope.shop.cluster.prod:8000", &meta)
        .await
        .unwrap_err();
    assert!(
        matches!(err, HboneError::Refused { status: 404, .. }),
        "{err}"
    );

    // Each refusal was counted by reason.
    assert_eq!(
        metric(&c2.registry, "dataplane_refusals_total{kind=\"segment\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &c2.registry,
            "dataplane_refusals_total{kind=\"not_linked\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &c2.registry,
            "dataplane_refusals_total{kind=\"not_exported\"}"
        ),
        1.0
    );
    // And the dev cluster's own proxy never sees the prod-only name (S7).
    let dns = mesh.cluster("cluster1").proxy().dns.local_addr();
    let answer = resolve(dns, &cart).await;
    assert!(
        answer.as_ref().is_err_and(|e| e.contains("NXDomain")),
        "{answer:?}"
    );
    mesh.shutdown().await;
}

/// Seed 003: a ServiceEntry written by hand in cluster1 (`httpbin.bar.global`,
/// an address of its own, the endpoint at cluster2's gateway) reaches
/// cluster2's `httpbin` in `bar` through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_manual_service_entry_reaches_the_remote_service_through_its_gateway() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.start().await;
    mesh.start_dataplane().await;
    mesh.link_all().await;
    let c2 = mesh.cluster("cluster2");
    c2.write("bar.yaml", &namespace("bar", &[]));
    let ip = c2.pod_ip(1);
    c2.write(
        "httpbin.yaml",
        &service_with("bar", "httpbin", &[GLOBAL], &[], &[("httpbin-0", &ip, &[])]),
    );
    let _b = Backend::start(format!("{ip}:8080").parse().unwrap(), "httpbin-cluster2").await;
    c2.wait_caller("cluster1").await;
    let c1 = mesh.cluster("cluster1");
    c1.wait_route("httpbin.bar.mesh.internal", 8000, &["cluster2"])
        .await;

    let address = format!("127.{}.150.2", c1.block.octet);
    let gw_port = c2.gateway().addr.port();
    c1.write("bar.yaml", &namespace("bar", &[]));
    c1.write(
        "httpbin-bar.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: httpbin-bar, namespace: bar}}\n\
             spec:\n  hosts: [httpbin.bar.global]\n  location: MESH_INTERNAL\n\
             \x20 ports: [{{name: http1, number: 8000, protocol: http}}]\n  resolution: DNS\n\
             \x20 addresses: [{address}]\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http1: {gw_port}}}\n"
        ),
    );
    let vip: SocketAddr = format!("{address}:8000").parse().unwrap();
    let mut listening = c1.proxy().proxy.listening();
    tokio::time::timeout(support::WITHIN, listening.wait_for(|l| l.contains(&vip)))
        .await
        .expect("the proxy listens on the entry's address")
        .unwrap();
    let dns = c1.proxy().dns.local_addr();
    assert_eq!(
        resolve(dns, "httpbin.bar.global").await.unwrap(),
        vec![vip.ip()]
    );
    assert_eq!(ask(vip).await.unwrap(), "httpbin-cluster2");
    mesh.shutdown().await;
}

/// Seed 004's takeover: `in-ambient.httpbin.svc.cluster.local` and the
/// Service's ClusterIP lead to the global service (K1) — PreferClose, so
/// the local pod first and cluster2 when it fails (K3) — until the label
/// goes (K4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k1_k3_k4_takeover_captures_the_cluster_local_name_and_cluster_ip() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.start().await;
    mesh.start_dataplane().await;
    mesh.link_all().await;
    let takeover = ("solo.io/service-takeover", "true");
    let svc = |c: &support::Cluster, labels: &[(&str, &str)]| {
        let ip = c.pod_ip(1);
        service_with(
            "httpbin",
            "in-ambient",
            labels,
            &[],
            &[("in-ambient-0", &ip, &[])],
        )
        .replace(
            "spec:\n  selector",
            &format!(
                "spec:\n  clusterIP: 127.{}.100.1\n  selector",
                c.block.octet
            ),
        )
    };
    let mut backends = Vec::new();
    for c in &mesh.clusters {
        c.write("httpbin-ns.yaml", &namespace("httpbin", &[]));
        c.write("in-ambient.yaml", &svc(c, &[GLOBAL, takeover]));
        let addr: SocketAddr = format!("{}:8080", c.pod_ip(1)).parse().unwrap();
        backends.push(Backend::start(addr, &c.name).await);
    }
    mesh.cluster("cluster2").wait_caller("cluster1").await;
    let c1 = mesh.cluster("cluster1");
    let vip = c1.wait_route(HOST, 8000, &["cluster1", "cluster2"]).await;
    let local_name = "in-ambient.httpbin.svc.cluster.local";
    let cluster_ip: SocketAddr = format!("127.{}.100.1:8000", c1.block.octet)
        .parse()
        .unwrap();
    let mut listening = c1.proxy().proxy.listening();
    tokio::time::timeout(
        support::WITHIN,
        listening.wait_for(|l| l.contains(&cluster_ip)),
    )
    .await
    .expect("the proxy captures the ClusterIP")
    .unwrap();
    let dns = c1.proxy().dns.local_addr();
    assert_eq!(resolve(dns, local_name).await.unwrap(), vec![vip.ip()]);
    assert_eq!(
        tally(cluster_ip, 10).await,
        BTreeMap::from([("cluster1".into(), 10)])
    );
    backends[0].stop().await;
    assert_eq!(
        tally(cluster_ip, 10).await,
        BTreeMap::from([("cluster2".into(), 10)])
    );

    // K4: without the label the cluster-local name and ClusterIP are the
    // cluster's own again (not answered here; no upstream in this test).
    c1.write("in-ambient.yaml", &svc(c1, &[GLOBAL]));
    tokio::time::timeout(
        support::WITHIN,
        listening.wait_for(|l| !l.contains(&cluster_ip)),
    )
    .await
    .expect("the ClusterIP is released")
    .unwrap();
    let answer = resolve(dns, local_name).await;
    assert!(answer.is_err(), "{answer:?}");
    mesh.shutdown().await;
}

/// A listener standing for what a node holds on loopback (the controller's
/// API, the kubelet, the metadata service). A dial completes its handshake
/// in the kernel's backlog before the dialler goes on, so an empty backlog
/// means it was never dialled.
struct Sentinel(std::net::TcpListener);

impl Sentinel {
    fn start(ip: &str, port: u16) -> Sentinel {
        let l = std::net::TcpListener::bind((ip, port)).unwrap();
        l.set_nonblocking(true).unwrap();
        Sentinel(l)
    }

    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }

    fn assert_never_dialled(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("{} was dialled: {other:?}", self.addr()),
        }
    }
}

/// A tenant's ServiceEntry in `httpbin` claiming the global name, with an
/// address of its own and its endpoint on a loopback port of the node: the
/// global name keeps its one VIP (P4), the claim is reported, and the
/// entry's address leads nowhere: the proxy never dials loopback (P5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p4_p5_a_tenant_entry_neither_takes_a_global_name_nor_reaches_loopback() {
    let mut mesh = Mesh::new(&["cluster1"]);
    mesh.start().await;
    mesh.start_dataplane().await;
    let c1 = mesh.cluster("cluster1");
    c1.write("httpbin-ns.yaml", &namespace("httpbin", &[]));
    let ip = c1.pod_ip(1);
    c1.write(
        "in-ambient.yaml",
        &service_with(
            "httpbin",
            "in-ambient",
            &[GLOBAL],
            &[],
            &[("in-ambient-0", &ip, &[])],
        ),
    );
    let _b = Backend::start(format!("{ip}:8080").parse().unwrap(), "cluster1").await;
    let vip = c1.wait_route(HOST, 8000, &["cluster1"]).await;

    let node_local = Sentinel::start("127.0.0.1", 0);
    let address = format!("127.{}.150.9", c1.block.octet);
    c1.write(
        "hijack.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: hijack, namespace: httpbin}}\n\
             spec:\n  hosts: [{HOST}, metrics.httpbin.example]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
             \x20 ports: [{{name: http, number: 80, protocol: HTTP}}]\n  addresses: [{address}]\n\
             \x20 endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n",
            node_local.addr().port()
        ),
    );
    // P4: the claim on the global name is reported in the controller's view.
    let view = c1
        .wait("a P4 diagnostic for the tenant's entry", |v| {
            v.catalog.diagnostics.iter().any(|d| {
                d.rule == meshpeer_model::Rule::P4
                    && d.object.name == "hijack"
                    && d.field.as_deref() == Some("spec.hosts[0]")
            })
        })
        .await;
    assert_eq!(view.catalog.manual.len(), 1, "{:?}", view.catalog.manual);
    assert_eq!(view.catalog.manual[0].hosts, ["metrics.httpbin.example"]);

    // The entry is still served for its own name and address...
    let captured: SocketAddr = format!("{address}:80").parse().unwrap();
    let mut listening = c1.proxy().proxy.listening();
    tokio::time::timeout(
        support::WITHIN,
        listening.wait_for(|l| l.contains(&captured)),
    )
    .await
    .expect("the proxy listens on the entry's address")
    .unwrap();
    // ...but the global name answers with the VIP only.
    let dns = c1.proxy().dns.local_addr();
    assert_eq!(resolve(dns, HOST).await.unwrap(), vec![vip.ip()]);
    assert_eq!(
        resolve(dns, "metrics.httpbin.example").await.unwrap(),
        vec![captured.ip()]
    );
    assert_eq!(ask(vip).await.unwrap(), "cluster1");

    // P5: a connection to the entry's address is not sent to loopback.
    let answer = ask(captured).await;
    assert!(answer.is_err(), "{answer:?}");
    node_local.assert_never_dialled();
    assert_eq!(
        metric(
            &c1.registry,
            "dataplane_endpoint_refusals_total{reason=\"loopback\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &c1.registry,
            "dataplane_connections_total{direction=\"outbound\",outcome=\"no_endpoint\"}"
        ),
        1.0
    );
    mesh.shutdown().await;
}

/// P5: a global service whose endpoints are at loopback (IPv4 and IPv6),
/// link-local (the metadata service), a VIP, the node's address and just
/// outside the allowed pod range, and one pod inside it. Only the pod is
/// ever dialled; each refusal is counted, costs no ejection, and the next
/// endpoint is tried, so every client gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p5_the_proxy_never_dials_refused_endpoints_and_uses_the_next() {
    let mut mesh = Mesh::new(&["cluster1"]);
    mesh.max_attempts = 8;
    mesh.start().await;
    mesh.start_dataplane().await;
    let c1 = mesh.cluster("cluster1");
    c1.endpoints
        .set_node_addresses(vec!["198.51.100.1/32".parse().unwrap()]);
    let o = c1.block.octet;
    // One target port for every pod: free on 127.0.0.1, and in our block.
    let node_local = Sentinel::start("127.0.0.1", 0);
    let port = node_local.addr().port();
    let next_door = Sentinel::start(&format!("127.{o}.201.1"), port);
    let pod = c1.pod_ip(1);
    let _b = Backend::start(format!("{pod}:{port}").parse().unwrap(), "pod").await;
    let refused = [
        ("127.0.0.1".to_owned(), "loopback"),
        ("\"::1\"".to_owned(), "loopback"),
        ("169.254.169.254".to_owned(), "link_local"),
        (format!("127.{o}.0.5"), "vip_range"),
        ("198.51.100.1".to_owned(), "node_address"),
        (format!("127.{o}.201.1"), "loopback"),
    ];
    let names: Vec<String> = (0..=refused.len()).map(|i| format!("web-{i}")).collect();
    let mut pods: Vec<support::Pod<'_>> = refused
        .iter()
        .zip(&names)
        .map(|((ip, _), name)| (name.as_str(), ip.as_str(), &[][..]))
        .collect();
    pods.push((names[refused.len()].as_str(), pod.as_str(), &[]));
    c1.write("shop-ns.yaml", &namespace("shop", &[]));
    c1.write(
        "web.yaml",
        &service_with("shop", "web", &[GLOBAL], &[], &pods)
            .replace("targetPort: 8080", &format!("targetPort: {port}")),
    );
    let host = "web.shop.mesh.internal";
    let vip = c1.wait_route(host, 8000, &["cluster1"]).await;
    let endpoints = c1
        .proxy()
        .state
        .borrow()
        .service_by_host(host)
        .map(|s| s.endpoint_count());
    assert_eq!(endpoints, Some(pods.len()));

    assert_eq!(tally(vip, 24).await, BTreeMap::from([("pod".into(), 24)]));
    node_local.assert_never_dialled();
    next_door.assert_never_dialled();
    let by_reason = |reason: &str| {
        metric(
            &c1.registry,
            &format!("dataplane_endpoint_refusals_total{{reason=\"{reason}\"}}"),
        )
    };
    // Each connection tries the refused endpoints drawn before the pod:
    // over 24 connections, every reason comes up.
    for reason in ["loopback", "link_local", "vip_range", "node_address"] {
        assert!(by_reason(reason) >= 1.0, "{reason} never counted");
    }
    assert_eq!(
        metric(&c1.registry, "dataplane_ejections_total"),
        0.0,
        "a refused endpoint is not ejected: it was never tried"
    );
    assert_eq!(
        metric(
            &c1.registry,
            "dataplane_connections_total{direction=\"outbound\",outcome=\"no_endpoint\"}"
        ),
        0.0
    );
    mesh.shutdown().await;
}
