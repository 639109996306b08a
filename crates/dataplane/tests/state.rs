//! The data plane's indexes (`DataplaneState::build`, `state::follow`) from
//! catalogs built with the model's test builders: which addresses are
//! captured, what the DNS table answers, and when a new version is published
//! (D1, D2, D4, K1, S1, C1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use meshpeer_dataplane::feed::CatalogFeed;
use meshpeer_dataplane::state::{self, DataplaneState, StateOptions, Target};
use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::{
    CatalogConfig, ClusterSnapshot, Export, GlobalCatalog, Locality, catalog, exports,
    parse_documents,
};
use tokio::sync::watch;

/// Bounds every wait: a hang fails instead of blocking.
const DEADLINE: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(ip_: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip_, port)
}

fn view(own: &ClusterSnapshot, peers: &[&ClusterSnapshot]) -> GlobalCatalog {
    let exps: Vec<Export> = peers.iter().map(|p| exports(p)).collect();
    catalog(own, &exps, &CatalogConfig::default())
}

fn feed(version: u64, catalog: GlobalCatalog) -> Arc<CatalogFeed> {
    Arc::new(CatalogFeed {
        version,
        catalog: Arc::new(catalog),
        callers: Vec::new(),
        callers_pending: false,
    })
}

fn build(catalog: GlobalCatalog, opts: &StateOptions) -> DataplaneState {
    DataplaneState::build(feed(1, catalog), opts)
}

/// cluster1 exports `shop/web` (8000 and 9000) and `shop/db` (5432);
/// cluster2 exports `shop/cart` (8080). cluster1 links to cluster2.
fn two_clusters() -> GlobalCatalog {
    let c1 = ClusterBuilder::new("cluster1")
        .locality("us-east", "e1")
        .link("cluster2")
        .service(
            svc("shop", "web")
                .global()
                .port("http", 8000, 8080)
                .port("grpc", 9000, 9000)
                .ready(2),
        )
        .service(svc("shop", "db").global().port("pg", 5432, 5432).ready(1))
        .service(svc("shop", "local-only").port("http", 80, 8080).ready(1))
        .build();
    let c2 = ClusterBuilder::new("cluster2")
        .service(
            svc("shop", "cart")
                .global()
                .port("http", 8080, 8080)
                .ready(1),
        )
        .build();
    view(&c1, &[&c2])
}

/// The listeners as (address, "hostname:port" or "manual <n>:port").
fn listeners(s: &DataplaneState) -> BTreeMap<SocketAddr, String> {
    s.listeners
        .iter()
        .map(|(a, t)| {
            let what = match t {
                Target::Global { host, port } => {
                    format!("{}:{port}", s.service(host).unwrap().hostname)
                }
                Target::Manual { entry, port } => {
                    format!("manual {}:{port}", s.manual(*entry).unwrap().name.name)
                }
            };
            (*a, what)
        })
        .collect()
}

#[test]
fn d2_every_port_of_every_global_service_gets_a_vip_listener() {
    let cat = two_clusters();
    let s = build(cat.clone(), &StateOptions::default());
    let vip = |host: &str| cat.service(host).unwrap().vip;
    let (web, db, cart) = (
        vip("web.shop.mesh.internal"),
        vip("db.shop.mesh.internal"),
        vip("cart.shop.mesh.internal"),
    );
    assert_eq!(
        listeners(&s),
        BTreeMap::from([
            (sa(web, 8000), "web.shop.mesh.internal:8000".to_owned()),
            (sa(web, 9000), "web.shop.mesh.internal:9000".to_owned()),
            (sa(db, 5432), "db.shop.mesh.internal:5432".to_owned()),
            (sa(cart, 8080), "cart.shop.mesh.internal:8080".to_owned()),
        ]),
        "a listener per (VIP, port), none for the cluster-local service"
    );
    // Hostname index and DNS: every global hostname, and nothing else.
    for host in [
        "web.shop.mesh.internal",
        "db.shop.mesh.internal",
        "cart.shop.mesh.internal",
    ] {
        assert_eq!(s.service_by_host(host).unwrap().hostname, host);
        assert_eq!(s.dns.names[host], [vip(host)], "{host}");
    }
    assert_eq!(s.dns.names.len(), 3, "{:?}", s.dns.names);
    assert!(s.service_by_host("local-only.shop.mesh.internal").is_none());
    // Links are indexed by cluster, and findable by gateway address and network.
    let link = &s.links["cluster2"];
    assert_eq!(link.network, "cluster2");
    let addr = &link.addresses[0].value;
    assert_eq!(s.link_by_gateway_address(addr).unwrap().cluster, "cluster2");
    assert_eq!(s.link_by_network("cluster2").unwrap().cluster, "cluster2");
    assert!(s.link_by_network("nowhere").is_none());
}

/// cluster1 takes over `shop/web` (ClusterIP 10.96.0.10); `shop/api` is
/// global without takeover (ClusterIP 10.96.0.11).
fn takeover_catalog() -> GlobalCatalog {
    let c1 = ClusterBuilder::new("cluster1")
        .service(
            svc("shop", "web")
                .global()
                .takeover("true")
                .cluster_ip("10.96.0.10")
                .port("http", 80, 8080)
                .port("admin", 9901, 9901)
                .ready(1),
        )
        .service(
            svc("shop", "api")
                .global()
                .cluster_ip("10.96.0.11")
                .port("http", 80, 8080)
                .ready(1),
        )
        .build();
    view(&c1, &[])
}

#[test]
fn k1_takeover_adds_the_cluster_local_name_to_dns_but_not_the_cluster_ip_by_default() {
    let cat = takeover_catalog();
    let web = cat.service("web.shop.mesh.internal").unwrap().vip;
    let s = build(cat.clone(), &StateOptions::default());
    assert_eq!(s.dns.names["web.shop.svc.cluster.local"], [web]);
    assert_eq!(s.dns.names["web.shop.mesh.internal"], [web]);
    // K4: a service without takeover keeps its cluster-local name.
    assert!(
        !s.dns.names.contains_key("api.shop.svc.cluster.local"),
        "{:?}",
        s.dns.names
    );
    let captured: Vec<IpAddr> = s.listeners.keys().map(|a| a.ip()).collect();
    assert!(
        !captured.contains(&ip("10.96.0.10")) && !captured.contains(&ip("10.96.0.11")),
        "ClusterIPs are captured only when asked: {captured:?}"
    );
    assert_eq!(s.listeners.len(), 3, "{:?}", listeners(&s));
}

#[test]
fn k1_takeover_captures_the_cluster_ip_ports_when_asked() {
    let cat = takeover_catalog();
    let opts = StateOptions {
        capture_cluster_ips: true,
        ..StateOptions::default()
    };
    let s = build(cat.clone(), &opts);
    let web = "web.shop.mesh.internal";
    for port in [80, 9901] {
        assert_eq!(
            s.listeners.get(&sa(ip("10.96.0.10"), port)),
            Some(&Target::Global {
                host: web.into(),
                port
            }),
            "ClusterIP port {port}"
        );
    }
    // The Service without takeover keeps its ClusterIP to kube-proxy.
    assert!(
        s.listeners.keys().all(|a| a.ip() != ip("10.96.0.11")),
        "{:?}",
        listeners(&s)
    );
    // VIP listeners are still there: 2 (web) + 1 (api) + 2 ClusterIP ports.
    assert_eq!(s.listeners.len(), 5, "{:?}", listeners(&s));
    assert_eq!(
        s.dns.names["web.shop.svc.cluster.local"],
        [s.service(web).unwrap().vip]
    );
}

const MANUAL: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: httpbin-bar, namespace: foo}
spec:
  hosts: [httpbin.bar.global, HTTPBIN.alias.example]
  location: MESH_INTERNAL
  ports:
  - {name: http1, number: 8000, protocol: http}
  - {name: tcp2, number: 9000, protocol: tcp}
  resolution: DNS
  addresses: [127.255.0.2, 127.255.0.3]
  endpoints:
  - address: 192.0.2.10
    ports: {http1: 15443, tcp2: 15443}
"#;

#[test]
fn d4_manual_entries_add_their_hosts_to_dns_and_their_addresses_as_listeners() {
    let parsed = parse_documents("se.yaml", MANUAL);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut b = ClusterBuilder::new("cluster1").service(svc("shop", "web").global().ready(1));
    for o in parsed.objects {
        b = b.object(o);
    }
    let cat = view(&b.build(), &[]);
    assert_eq!(cat.manual.len(), 1, "{:?}", cat.diagnostics);
    let s = build(cat.clone(), &StateOptions::default());
    let addrs = vec![ip("127.255.0.2"), ip("127.255.0.3")];
    assert_eq!(s.dns.names["httpbin.bar.global"], addrs);
    assert_eq!(
        s.dns.names["httpbin.alias.example"], addrs,
        "hosts are lower-cased"
    );
    for a in &addrs {
        for port in [8000, 9000] {
            assert_eq!(
                s.listeners.get(&sa(*a, port)),
                Some(&Target::Manual { entry: 0, port }),
                "{a}:{port}"
            );
        }
    }
    assert_eq!(s.manual(0).unwrap().hosts[0], "httpbin.bar.global");
    // The global service is still there, on a VIP of its own.
    let web = cat.service("web.shop.mesh.internal").unwrap().vip;
    assert!(!addrs.contains(&web));
    assert!(matches!(
        s.listeners.get(&sa(web, 8000)),
        Some(Target::Global { port: 8000, .. })
    ));
    assert_eq!(s.listeners.len(), 5, "{:?}", listeners(&s));
}

#[test]
fn d1_the_dns_is_authoritative_for_mesh_internal_and_the_segment_domains() {
    let plain = view(&ClusterBuilder::new("cluster1").build(), &[]);
    assert_eq!(
        build(plain, &StateOptions::default()).dns.authoritative,
        ["mesh.internal"]
    );
    let segmented = view(
        &ClusterBuilder::new("cluster1")
            .segment("prod", "cluster.prod")
            .segment("dev", "cluster.dev")
            .join("dev")
            .service(svc("shop", "web").global().ready(1))
            .build(),
        &[],
    );
    let s = build(segmented, &StateOptions::default());
    assert_eq!(
        s.dns.authoritative,
        ["cluster.dev", "cluster.prod", "mesh.internal"]
    );
    // S3: the service is named in its segment's domain.
    assert!(
        s.dns.names.contains_key("web.shop.cluster.dev"),
        "{:?}",
        s.dns.names
    );
    assert!(!s.dns.names.contains_key("web.shop.mesh.internal"));
}

#[test]
fn c1_the_locality_option_overrides_the_clusters_default_locality() {
    let cat = view(
        &ClusterBuilder::new("cluster1")
            .locality("us-east", "e1")
            .build(),
        &[],
    );
    let default = build(cat.clone(), &StateOptions::default());
    assert_eq!(default.locality, Locality::new("us-east", "e1"));
    let here = Locality::new("us-west", "w2");
    let opts = StateOptions {
        locality: Some(here.clone()),
        ..StateOptions::default()
    };
    assert_eq!(build(cat, &opts).locality, here);
}

async fn next<T: Clone>(rx: &mut watch::Receiver<T>, what: &str) -> T {
    tokio::time::timeout(DEADLINE, rx.changed())
        .await
        .unwrap_or_else(|_| panic!("no new {what} within {DEADLINE:?}"))
        .unwrap_or_else(|_| panic!("the {what} channel closed"));
    rx.borrow_and_update().clone()
}

fn web_cluster(ready: usize, extra: bool) -> GlobalCatalog {
    let mut b = ClusterBuilder::new("cluster1").service(svc("shop", "web").global().ready(ready));
    if extra {
        b = b.service(svc("shop", "cart").global().ready(1));
    }
    view(&b.build(), &[])
}

#[tokio::test]
async fn d1_follow_publishes_a_state_per_version_and_the_dns_table_only_when_it_changes() {
    // Version 0 is "nothing yet": nothing is published for it.
    let (feed_tx, feed_rx) = watch::channel(feed(0, web_cluster(1, true)));
    let (mut states, mut dns, task) = state::follow(feed_rx, StateOptions::default());
    assert_eq!(states.borrow().feed.version, 0);

    feed_tx.send_replace(feed(1, web_cluster(1, false)));
    let s1 = next(&mut states, "state").await;
    assert_eq!(s1.feed.version, 1);
    assert_eq!(s1.feed.catalog.services.len(), 1);
    let t1 = next(&mut dns, "DNS table").await;
    assert!(
        Arc::ptr_eq(&t1, &s1.dns),
        "the published table is the state's"
    );
    assert!(t1.names.contains_key("web.shop.mesh.internal"));
    assert!(!t1.names.contains_key("cart.shop.mesh.internal"));

    // Only endpoints change: a new state, the same DNS table (not re-sent).
    feed_tx.send_replace(feed(2, web_cluster(3, false)));
    let s2 = next(&mut states, "state").await;
    assert_eq!(s2.feed.version, 2);
    assert_eq!(
        s2.feed
            .catalog
            .services
            .values()
            .next()
            .unwrap()
            .endpoint_count(),
        3
    );
    assert_eq!(*s2.dns, *t1);
    // The table is decided before the state is published: no change is coming.
    assert!(
        !dns.has_changed().unwrap(),
        "an unchanged DNS table was re-sent"
    );
    assert!(Arc::ptr_eq(&dns.borrow(), &t1));

    // A new service: a new state and a new table.
    feed_tx.send_replace(feed(3, web_cluster(3, true)));
    let s3 = next(&mut states, "state").await;
    assert_eq!(s3.feed.version, 3);
    assert!(dns.has_changed().unwrap());
    let t3 = next(&mut dns, "DNS table").await;
    assert!(t3.names.contains_key("cart.shop.mesh.internal"));
    assert!(Arc::ptr_eq(&t3, &s3.dns));

    // The feed's end ends the task.
    drop(feed_tx);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("follow did not stop when the feed closed")
        .unwrap();
}

/// P2: a name a peer should never have given (its Segment claims `com`):
/// the model refuses it (P2, model side); if one gets through, the data
/// plane neither answers it nor listens for it.
#[test]
fn p2_a_catalog_name_outside_the_zones_is_neither_answered_nor_listened_for() {
    let mut cat = two_clusters();
    let mut cart = (*cat.services.remove("cart.shop.mesh.internal").unwrap()).clone();
    cart.hostname = "www.google.com".into();
    let cart_vip = cart.vip;
    cat.services.insert(cart.hostname.clone(), Arc::new(cart));
    let s = build(cat, &StateOptions::default());
    assert_eq!(
        s.outside_zones.iter().collect::<Vec<_>>(),
        ["www.google.com"]
    );
    assert!(!s.dns.names.contains_key("www.google.com"), "{:?}", s.dns);
    assert!(s.service_by_host("www.google.com").is_none());
    assert!(
        s.listeners.keys().all(|a| a.ip() != cart_vip),
        "{:?}",
        listeners(&s)
    );
    // The others are served as before.
    assert!(s.dns.names.contains_key("web.shop.mesh.internal"));
    assert_eq!(s.listeners.len(), 3, "{:?}", listeners(&s));

    // A taken-over name is a `svc.cluster.local` name, nothing else.
    let mut cat = takeover_catalog();
    let web = cat
        .services
        .values()
        .find(|s| s.takeover.is_some())
        .unwrap()
        .hostname
        .clone();
    let mut svc = (*cat.services[&web]).clone();
    if let Some(t) = svc.takeover.as_mut() {
        t.hostname = "metadata.google.internal".into();
    }
    cat.services.insert(web, Arc::new(svc));
    let s = build(
        cat,
        &StateOptions {
            capture_cluster_ips: true,
            ..StateOptions::default()
        },
    );
    assert_eq!(
        s.outside_zones.iter().collect::<Vec<_>>(),
        ["metadata.google.internal"]
    );
    assert!(!s.dns.names.contains_key("metadata.google.internal"));
    assert!(
        s.listeners.keys().all(|a| a.ip() != ip("10.96.0.10")),
        "{:?}",
        listeners(&s)
    );
    assert!(s.dns.names.contains_key("web.shop.mesh.internal"));
}

/// P4 again in the data plane: should a manual entry still claim a global
/// name or a VIP-range address (an older controller, a bug), the global
/// service keeps its name and the address gets no listener.
#[test]
fn p4_a_manual_entry_never_adds_to_a_global_name_nor_listens_in_the_vip_range() {
    let parsed = parse_documents("se.yaml", MANUAL);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut b = ClusterBuilder::new("cluster1").service(svc("shop", "web").global().ready(1));
    for o in parsed.objects {
        b = b.object(o);
    }
    let mut cat = view(&b.build(), &[]);
    let web_vip = cat.service("web.shop.mesh.internal").unwrap().vip;
    let in_range = ip("240.241.9.9");
    let m = &mut cat.manual[0];
    m.hosts.push("web.shop.mesh.internal".into());
    m.hosts.push("other.cluster.example".into());
    m.addresses.push(in_range);
    let s = build(cat, &StateOptions::default());
    assert_eq!(s.dns.names["web.shop.mesh.internal"], [web_vip]);
    assert_eq!(
        s.dns.names["other.cluster.example"],
        [ip("127.255.0.2"), ip("127.255.0.3")]
    );
    assert!(
        s.listeners.keys().all(|a| a.ip() != in_range),
        "{:?}",
        listeners(&s)
    );
}

mod incremental {
    //! SPEC I1: the state advanced version by version equals the state
    //! built from scratch, listeners, DNS table and all.

    use super::*;
    use meshpeer_model::{
        Contribution, ExportedService, GlobalService, LocalTakeover, ManualEndpoint, ManualEntry,
        NsName, Reach, Scope, ServicePort, TrafficDistribution,
    };
    use proptest::prelude::*;

    /// A global service: hostname index (3 is outside the zones), port
    /// set, takeover (with its own ClusterIP, which a manual entry may use
    /// too).
    #[derive(Clone, Debug)]
    struct Svc {
        host: u8,
        ports: u8,
        takeover: Option<u8>,
        local: bool,
    }

    #[derive(Clone, Debug)]
    struct Manual {
        host: u8,
        address: u8,
    }

    fn svc_spec() -> impl Strategy<Value = Svc> {
        (0..5u8, 1..4u8, prop::option::of(0..2u8), any::<bool>()).prop_map(
            |(host, ports, takeover, local)| Svc {
                host,
                ports,
                takeover,
                local,
            },
        )
    }

    fn manual_spec() -> impl Strategy<Value = Manual> {
        (0..4u8, 0..3u8).prop_map(|(host, address)| Manual { host, address })
    }

    fn hostname(i: u8) -> String {
        if i == 3 {
            "svc3.ns.example.com".into()
        } else {
            format!("svc{i}.ns.mesh.internal")
        }
    }

    fn catalog_of(services: &[Svc], manual: &[Manual]) -> GlobalCatalog {
        let mut cat = GlobalCatalog {
            vip_range: Some("240.240.0.0/16".parse().unwrap()),
            ..GlobalCatalog::default()
        };
        for s in services {
            let host = hostname(s.host);
            let ports: Vec<ServicePort> = [80u16, 8080, 9090]
                .iter()
                .enumerate()
                .filter(|(i, _)| s.ports & (1 << i) != 0)
                .map(|(_, p)| ServicePort::new(&format!("tcp-{p}"), *p, "TCP"))
                .collect();
            let name = format!("svc{}", s.host);
            let exported = ExportedService {
                namespace: "ns".into(),
                name: name.clone(),
                hostname: host.clone(),
                scope: Scope::Global,
                traffic_distribution: None,
                takeover: s.takeover.is_some(),
                ports: ports.iter().take(2).cloned().collect(),
                localities: Vec::new(),
                cluster_ips: Vec::new(),
            };
            let takeover = s.takeover.map(|_| LocalTakeover {
                hostname: format!("{name}.ns.svc.cluster.local"),
                cluster_ips: vec![ip_of(&format!("10.96.0.{}", s.host))],
            });
            let svc = GlobalService {
                hostname: host.clone(),
                namespace: "ns".into(),
                name,
                segment: None,
                scope: Scope::Global,
                vip: ip_of(&format!("240.240.0.{}", s.host + 1)),
                ports,
                distribution: TrafficDistribution::PreferNetwork,
                taken_over: s.takeover.is_some(),
                takeover,
                contributions: vec![Contribution {
                    cluster: "cluster1".into(),
                    network: "cluster1".into(),
                    reach: if s.local {
                        Reach::Local
                    } else {
                        Reach::Gateway
                    },
                    service: Arc::new(exported),
                }],
            };
            cat.services.insert(host, Arc::new(svc));
        }
        for (i, m) in manual.iter().enumerate() {
            let host = match m.host {
                0 => "legacy.example".to_owned(),
                1 => hostname(1),
                2 => "svc0.ns.svc.cluster.local".to_owned(),
                _ => "other.example".to_owned(),
            };
            let address = match m.address {
                0 => "192.0.2.10",
                1 => "10.96.0.1",
                _ => "240.240.0.2",
            };
            cat.manual.push(ManualEntry {
                name: NsName::new("ns", format!("m{i}")),
                hosts: vec![host],
                addresses: vec![ip_of(address)],
                ports: vec![ServicePort::new("http", 80, "HTTP")],
                endpoints: vec![ManualEndpoint {
                    address: "192.0.2.99".into(),
                    ports: Default::default(),
                    network: None,
                }],
            });
        }
        cat
    }

    fn ip_of(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn same(a: &DataplaneState, b: &DataplaneState) -> Result<(), TestCaseError> {
        let la: BTreeMap<_, _> = a.listeners.iter().map(|(k, v)| (*k, v.clone())).collect();
        let lb: BTreeMap<_, _> = b.listeners.iter().map(|(k, v)| (*k, v.clone())).collect();
        prop_assert_eq!(la, lb);
        prop_assert_eq!(&a.dns.names, &b.dns.names);
        prop_assert_eq!(&a.dns.authoritative, &b.dns.authoritative);
        prop_assert_eq!(&a.outside_zones, &b.outside_zones);
        prop_assert_eq!(a.local_names(), b.local_names());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn i1_the_state_advanced_by_versions_equals_the_state_built_afresh(
            capture in any::<bool>(),
            versions in prop::collection::vec(
                (prop::collection::vec(svc_spec(), 0..5), prop::collection::vec(manual_spec(), 0..3)),
                1..12,
            )
        ) {
            let opts = StateOptions {
                capture_cluster_ips: capture,
                ..StateOptions::default()
            };
            let mut state = Arc::new(DataplaneState::default());
            for (i, (services, manual)) in versions.iter().enumerate() {
                let f = feed(i as u64 + 1, catalog_of(services, manual));
                let (next, step) = state.advance(Arc::clone(&f), &opts);
                let fresh = DataplaneState::build(f, &opts);
                same(&next, &fresh)?;
                prop_assert_eq!(step.dns_changed, next.dns.names != state.dns.names || state.feed.version == 0);
                state = Arc::new(next);
            }
        }
    }
}
