//! SPEC I1: the incremental engines agree with the pure, from-scratch
//! functions after every change of random sequences of changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use meshpeer_model::engine::{CatalogEngine, ExportEngine, OwnChanges};
use meshpeer_model::objects::{ServiceEntry, ServiceEntryPort, ServiceEntrySpec};
use meshpeer_model::testing::{
    endpoint_slice, namespace, node, peer_gateway, pod, segment, slice_endpoint, svc,
};
use meshpeer_model::{
    CatalogConfig, Change, Cidr, ClusterConfig, ClusterSnapshot, Export, Kind, Object, ObjectKey,
    catalog_with, exports, labels,
};
use proptest::prelude::*;

/// One change to a cluster, in terms small enough for proptest to shrink.
#[derive(Clone, Debug)]
enum Op {
    Service {
        ns: u8,
        name: u8,
        variant: u8,
    },
    DeleteService {
        ns: u8,
        name: u8,
    },
    Pod {
        ns: u8,
        n: u8,
        app: u8,
        ready: bool,
        node: u8,
        ip: u8,
    },
    DeletePod {
        ns: u8,
        n: u8,
    },
    Slice {
        ns: u8,
        svc: u8,
        n: u8,
        ready: u8,
    },
    DeleteSlice {
        ns: u8,
        svc: u8,
        n: u8,
    },
    Namespace {
        ns: u8,
        variant: u8,
    },
    DeleteNamespace {
        ns: u8,
    },
    Node {
        n: u8,
        zone: u8,
    },
    DeleteNode {
        n: u8,
    },
    IstioSystem {
        segment: u8,
        network: u8,
    },
    Segment {
        name: u8,
        domain: u8,
    },
    DeleteSegment {
        name: u8,
    },
    Link {
        peer: u8,
    },
    Unlink {
        peer: u8,
    },
    Config {
        region: u8,
    },
    ReplacePods {
        keep: u8,
    },
    SourceDiagnostics {
        n: u8,
    },
    /// A user-written ServiceEntry: its address is reserved (G11).
    UserEntry {
        ip: u8,
        host: u8,
    },
    /// One of meshpeer's own ServiceEntries, read back: a VIP hint (G11).
    GeneratedEntry {
        svc: u8,
        ip: u8,
    },
    DeleteEntries,
    /// An HTTPRoute on a Service, to a Service or a Hostname (section 11).
    Route {
        ns: u8,
        n: u8,
        parent: u8,
        backend: u8,
        hostname: bool,
    },
    DeleteRoute {
        ns: u8,
        n: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2u8, 0..4u8, 0..12u8).prop_map(|(ns, name, variant)| Op::Service { ns, name, variant }),
        1 => (0..2u8, 0..4u8).prop_map(|(ns, name)| Op::DeleteService { ns, name }),
        5 => (0..2u8, 0..6u8, 0..4u8, any::<bool>(), 0..4u8, 0..3u8)
            .prop_map(|(ns, n, app, ready, node, ip)| Op::Pod { ns, n, app, ready, node, ip }),
        1 => (0..2u8, 0..6u8).prop_map(|(ns, n)| Op::DeletePod { ns, n }),
        2 => (0..2u8, 0..4u8, 0..2u8, 0..8u8).prop_map(|(ns, svc, n, ready)| Op::Slice { ns, svc, n, ready }),
        1 => (0..2u8, 0..4u8, 0..2u8).prop_map(|(ns, svc, n)| Op::DeleteSlice { ns, svc, n }),
        2 => (0..2u8, 0..6u8).prop_map(|(ns, variant)| Op::Namespace { ns, variant }),
        1 => (0..2u8).prop_map(|ns| Op::DeleteNamespace { ns }),
        2 => (0..3u8, 0..3u8).prop_map(|(n, zone)| Op::Node { n, zone }),
        1 => (0..3u8).prop_map(|n| Op::DeleteNode { n }),
        1 => (0..4u8, 0..3u8).prop_map(|(segment, network)| Op::IstioSystem { segment, network }),
        1 => (0..3u8, 0..3u8).prop_map(|(name, domain)| Op::Segment { name, domain }),
        1 => (0..3u8).prop_map(|name| Op::DeleteSegment { name }),
        1 => (0..3u8).prop_map(|peer| Op::Link { peer }),
        1 => (0..3u8).prop_map(|peer| Op::Unlink { peer }),
        1 => (0..3u8).prop_map(|region| Op::Config { region }),
        1 => any::<u8>().prop_map(|keep| Op::ReplacePods { keep }),
        1 => (0..3u8).prop_map(|n| Op::SourceDiagnostics { n }),
        2 => (0..8u8, 0..6u8).prop_map(|(ip, host)| Op::UserEntry { ip, host }),
        1 => (0..4u8, 0..8u8).prop_map(|(svc, ip)| Op::GeneratedEntry { svc, ip }),
        1 => Just(Op::DeleteEntries),
        2 => (0..2u8, 0..2u8, 0..4u8, 0..4u8, any::<bool>())
            .prop_map(|(ns, n, parent, backend, hostname)| Op::Route { ns, n, parent, backend, hostname }),
        1 => (0..2u8, 0..2u8).prop_map(|(ns, n)| Op::DeleteRoute { ns, n }),
    ]
}

fn ns_name(ns: u8) -> String {
    format!("ns{ns}")
}

fn service(ns: u8, name: u8, variant: u8) -> Object {
    let mut b = svc(&ns_name(ns), &format!("svc{name}"));
    b = match variant % 4 {
        0 => b.global(),
        1 => b.scope("segment"),
        2 => b.scope("Global"),
        _ => b,
    };
    if variant & 4 != 0 {
        b = b.takeover("true");
    }
    if variant & 8 != 0 {
        b = b
            .distribution("PreferClose")
            .port("http", 8000, 8080)
            .port("grpc", 9000, 9000);
    }
    let mut s = b.service();
    // Some services select another app's pods.
    if variant % 3 == 2
        && let Some(sel) = s.spec.as_mut().and_then(|s| s.selector.as_mut())
    {
        sel.insert("app".into(), format!("svc{}", (name + 1) % 4));
    }
    Object::Service(s)
}

fn route(ns: u8, n: u8, parent: u8, backend: u8, hostname: bool) -> Object {
    let ns = ns_name(ns);
    let backend = if hostname {
        serde_json::json!({"group": "networking.istio.io", "kind": "Hostname",
            "name": format!("svc{backend}.{ns}.mesh.internal"), "port": 8000})
    } else {
        serde_json::json!({"name": format!("svc{backend}"), "port": 8000})
    };
    let route = serde_json::json!({
        "metadata": {"name": format!("route{n}"), "namespace": ns},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": format!("svc{parent}")}],
            "rules": [
                {"matches": [{"headers": [{"name": "x-user", "value": format!("u{n}")}]}],
                 "backendRefs": [backend.clone()]},
                {"backendRefs": [backend]},
            ],
        },
    });
    Object::HttpRoute(serde_json::from_value(route).unwrap())
}

fn entry(name: &str, host: &str, ip: &str, managed: bool) -> Object {
    let mut se = ServiceEntry {
        metadata: Default::default(),
        spec: ServiceEntrySpec {
            hosts: vec![host.to_owned()],
            addresses: vec![ip.to_owned()],
            ports: vec![ServiceEntryPort {
                number: 80,
                name: "http".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    };
    se.metadata.name = Some(name.to_owned());
    se.metadata.namespace = Some(if managed { labels::ISTIO_SYSTEM } else { "ns0" }.to_owned());
    if managed {
        se.metadata.labels = Some(
            [(
                labels::MANAGED_BY.to_owned(),
                labels::MANAGED_BY_VALUE.to_owned(),
            )]
            .into(),
        );
    }
    Object::ServiceEntry(se)
}

/// The change an op makes to a cluster (given what it holds now); links
/// name `peer<n>` in the export test, `cluster<n>` in the catalog test.
fn change(op: &Op, snap: &ClusterSnapshot) -> Change {
    change_in(op, snap, "peer")
}

fn change_in(op: &Op, snap: &ClusterSnapshot, peers: &str) -> Change {
    let del = |kind, ns: &str, name: String| {
        Change::Delete(ObjectKey {
            kind,
            namespace: ns.to_owned(),
            name,
        })
    };
    match *op {
        Op::Service { ns, name, variant } => Change::Apply(service(ns, name, variant)),
        Op::DeleteService { ns, name } => del(Kind::Service, &ns_name(ns), format!("svc{name}")),
        Op::Pod {
            ns,
            n,
            app,
            ready,
            node,
            ip,
        } => {
            let node = (node < 3).then(|| format!("node{node}"));
            Change::Apply(Object::Pod(pod(
                &ns_name(ns),
                &format!("pod{n}"),
                &[("app", &format!("svc{app}"))],
                // Two pods may share an address (host network).
                &format!("10.{ns}.{ip}.{}", n % 3),
                ready,
                node.as_deref(),
            )))
        }
        Op::DeletePod { ns, n } => del(Kind::Pod, &ns_name(ns), format!("pod{n}")),
        Op::Slice { ns, svc, n, ready } => {
            let eps = (0..3u8)
                .map(|i| {
                    let r = ready & (1 << i) != 0;
                    slice_endpoint(&format!("10.9.{svc}.{i}"), Some(r), None)
                })
                .collect();
            Change::Apply(Object::EndpointSlice(endpoint_slice(
                &ns_name(ns),
                &format!("svc{svc}"),
                &format!("svc{svc}-{n}"),
                eps,
            )))
        }
        Op::DeleteSlice { ns, svc, n } => {
            del(Kind::EndpointSlice, &ns_name(ns), format!("svc{svc}-{n}"))
        }
        Op::Namespace { ns, variant } => {
            let labels: &[(&str, &str)] = match variant {
                0 => &[],
                1 => &[(labels::SERVICE_SCOPE, "global")],
                2 => &[(labels::SERVICE_SCOPE, "segment")],
                3 => &[(labels::SERVICE_TAKEOVER, "true")],
                4 => &[(labels::SERVICE_SCOPE, "globall")],
                _ => &[(labels::SERVICE_TAKEOVER, "yes")],
            };
            Change::Apply(Object::Namespace(namespace(&ns_name(ns), labels)))
        }
        Op::DeleteNamespace { ns } => del(Kind::Namespace, "", ns_name(ns)),
        Op::Node { n, zone } => Change::Apply(Object::Node(node(
            &format!("node{n}"),
            "r1",
            &format!("z{zone}"),
        ))),
        Op::DeleteNode { n } => del(Kind::Node, "", format!("node{n}")),
        Op::IstioSystem { segment, network } => {
            let mut l = vec![];
            let seg = ["dev", "prod", "nope"];
            if (segment as usize) < seg.len() {
                l.push((labels::SEGMENT, seg[segment as usize]));
            }
            let net = ["net-a", "net-b"];
            if (network as usize) < net.len() {
                l.push((labels::NETWORK, net[network as usize]));
            }
            Change::Apply(Object::Namespace(namespace(labels::ISTIO_SYSTEM, &l)))
        }
        Op::Segment { name, domain } => {
            let names = ["dev", "prod", "qa"];
            let domains = ["cluster.dev", "cluster.prod", "mesh.internal"];
            Change::Apply(Object::Segment(segment(
                names[name as usize],
                domains[domain as usize],
            )))
        }
        Op::DeleteSegment { name } => del(
            Kind::Segment,
            labels::ISTIO_SYSTEM,
            ["dev", "prod", "qa"][name as usize].to_owned(),
        ),
        Op::Link { peer } => {
            let p = format!("{peers}{peer}");
            Change::Apply(Object::Gateway(peer_gateway(&p, &p, &p, "192.0.2.1")))
        }
        Op::Unlink { peer } => del(
            Kind::Gateway,
            labels::ISTIO_EASTWEST,
            format!("{}{peers}{peer}", labels::PEER_GATEWAY_PREFIX),
        ),
        Op::UserEntry { ip, host } => {
            // Some take names meshpeer owns (P4): a global hostname, a
            // taken-over local name, a name under a global domain.
            let host = match host {
                0 => "legacy.example".to_owned(),
                1 | 2 => format!("svc{host}.ns0.mesh.internal"),
                3 => "svc1.ns0.svc.cluster.local".to_owned(),
                4 => "svc0.ns1.cluster.dev".to_owned(),
                _ => "other.ns0.svc.cluster.local".to_owned(),
            };
            Change::Apply(entry(
                &format!("user{}", ip % 2),
                &host,
                &format!("10.0.0.{ip}"),
                false,
            ))
        }
        Op::GeneratedEntry { svc, ip } => Change::Apply(entry(
            &format!("autogen.ns0.svc{svc}"),
            &format!("svc{svc}.ns0.mesh.internal"),
            &format!("10.0.0.{ip}"),
            true,
        )),
        Op::DeleteEntries => Change::Replace(Kind::ServiceEntry, Vec::new()),
        Op::Route {
            ns,
            n,
            parent,
            backend,
            hostname,
        } => Change::Apply(route(ns, n, parent, backend, hostname)),
        Op::DeleteRoute { ns, n } => del(Kind::HttpRoute, &ns_name(ns), format!("route{n}")),
        Op::Config { region } => {
            let mut c = snap.config.clone();
            c.region = (region > 0).then(|| format!("region{region}"));
            Change::Config(c)
        }
        Op::ReplacePods { keep } => {
            let pods = snap
                .pods
                .values()
                .enumerate()
                .filter(|(i, _)| keep & (1 << (i % 8)) != 0)
                .map(|(_, p)| Object::Pod(p.clone()))
                .collect();
            Change::Replace(Kind::Pod, pods)
        }
        Op::SourceDiagnostics { n } => {
            let d = (0..n)
                .map(|i| {
                    meshpeer_model::Diagnostic::new(
                        &snap.config.name,
                        meshpeer_model::Rule::F1,
                        meshpeer_model::Severity::Error,
                        meshpeer_model::ObjectRef::new("file", None, &format!("f{i}.yaml")),
                        "unreadable",
                    )
                })
                .collect();
            Change::SourceDiagnostics(d)
        }
    }
}

fn empty_cluster(name: &str) -> ClusterSnapshot {
    let mut snap = ClusterSnapshot::new(ClusterConfig::new(name));
    snap.apply(Object::Namespace(namespace(labels::ISTIO_SYSTEM, &[])));
    snap
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// After every batch of a random sequence, the export kept by the
    /// engine is the export computed from scratch, and a change that changes
    /// nothing recomputes nothing.
    #[test]
    fn i1_incremental_export_equals_the_export_from_scratch(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..40)
    ) {
        let mut engine = ExportEngine::new(empty_cluster("cluster1"));
        for batch in &batches {
            let changes: Vec<Change> = batch.iter().map(|o| change(o, engine.snapshot())).collect();
            let step = engine.apply(changes.clone());
            let reference = exports(engine.snapshot());
            prop_assert_eq!(engine.export(), &reference, "after {:?}", batch);
            // The batch's last change, made again, changes nothing.
            let again = engine.apply(changes.last().cloned());
            prop_assert!(!again.snapshot_changed, "{:?}", batch);
            prop_assert_eq!(again.recomputed, 0);
            prop_assert!(!again.export_changed);
            let _ = step;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Three clusters change at random; after every batch, each cluster's
    /// incremental catalog is the catalog computed from scratch from the
    /// same inputs (given the VIPs it had before), and so is its rendering.
    #[test]
    fn i1_incremental_catalog_equals_the_catalog_from_scratch(
        small_range in any::<bool>(),
        initial in prop::collection::vec((0..4u8, 0..8u8), 0..3),
        batches in prop::collection::vec(
            prop::collection::vec((0..3usize, op()), 1..4),
            1..30,
        )
    ) {
        let range: Cidr = if small_range { "10.0.0.0/30" } else { "10.0.0.0/24" }.parse().unwrap();
        let previous: BTreeMap<String, std::net::IpAddr> = initial
            .iter()
            .map(|(svc, ip)| (format!("svc{svc}.ns0.mesh.internal"), format!("10.0.0.{ip}").parse().unwrap()))
            .collect();
        let mut clusters: Vec<ExportEngine> = (1..=3)
            .map(|i| ExportEngine::new(empty_cluster(&format!("cluster{i}"))))
            .collect();
        let mut catalogs: Vec<CatalogEngine> = (0..3)
            .map(|_| CatalogEngine::new(range, previous.clone()))
            .collect();
        let mut vips_before: Vec<BTreeMap<String, std::net::IpAddr>> = vec![previous.clone(); 3];
        for batch in &batches {
            let mut own = [OwnChanges::default(); 3];
            for (i, o) in batch {
                // Links point at cluster1..3 (an index past the mesh: nobody).
                let c = change_in(o, clusters[*i].snapshot(), "cluster");
                let step = clusters[*i].apply([c]);
                own[*i].gateways |= step.gateways_changed;
                own[*i].service_entries |= step.service_entries_changed;
                own[*i].routes |= step.routes_changed;
            }
            for i in 0..3 {
                let me = clusters[i].export().cluster.segment_name().map(str::to_owned);
                // What the wire carries: what each peer may see (S7).
                let peers: Vec<Export> = (0..3)
                    .filter(|j| *j != i)
                    .map(|j| clusters[j].export().visible_to(me.as_deref()))
                    .collect();
                catalogs[i].update(clusters[i].snapshot(), clusters[i].export(), &peers, own[i]);
                let config = CatalogConfig {
                    vip_range: range,
                    previous_vips: vips_before[i].clone(),
                };
                let reference = catalog_with(
                    clusters[i].snapshot(),
                    &exports(clusters[i].snapshot()),
                    &peers,
                    &config,
                );
                prop_assert_eq!(catalogs[i].catalog(), &reference, "cluster{} after {:?}", i + 1, batch);
                prop_assert_eq!(
                    meshpeer_model::render(catalogs[i].catalog()),
                    meshpeer_model::render(&reference)
                );
                vips_before[i] = catalogs[i].vips().clone();
                prop_assert_eq!(&vips_before[i], &reference.vips());
            }
        }
    }
}

#[test]
fn i1_a_pod_change_recomputes_only_the_services_that_select_it() {
    let mut snap = empty_cluster("cluster1");
    snap.apply(Object::Namespace(namespace("shop", &[])));
    for i in 0..500 {
        snap.apply(Object::Service(
            svc("shop", &format!("svc{i}")).global().service(),
        ));
        snap.apply(Object::Pod(pod(
            "shop",
            &format!("svc{i}-0"),
            &[("app", &format!("svc{i}"))],
            &format!("10.1.{}.{}", i / 250, i % 250 + 1),
            true,
            None,
        )));
    }
    let mut engine = ExportEngine::new(snap);
    assert_eq!(engine.export().services.len(), 500);
    let flip = pod(
        "shop",
        "svc7-0",
        &[("app", "svc7")],
        "10.1.0.8",
        false,
        None,
    );
    let step = engine.apply([Change::Apply(Object::Pod(flip))]);
    assert_eq!(step.recomputed, 1);
    assert!(step.export_changed);
    assert_eq!(
        engine
            .export()
            .service("shop", "svc7")
            .unwrap()
            .endpoint_count(),
        0
    );
    // A label on the namespace touches its services, no more.
    let step = engine.apply([Change::Apply(Object::Namespace(namespace(
        "other",
        &[(labels::SERVICE_SCOPE, "global")],
    )))]);
    assert_eq!(step.recomputed, 0);
    let by_service: BTreeMap<_, _> = engine
        .export()
        .services
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(by_service.len(), 500);
}

#[test]
fn i1_one_changed_service_of_a_peer_re_merges_one_global_service() {
    let mut c1 = empty_cluster("cluster1");
    c1.apply(Object::Gateway(peer_gateway(
        "cluster2",
        "cluster2",
        "cluster2",
        "192.0.2.2",
    )));
    let mut c2 = empty_cluster("cluster2");
    c2.apply(Object::Namespace(namespace("shop", &[])));
    for i in 0..1000 {
        c2.apply(Object::Service(
            svc("shop", &format!("svc{i}")).global().service(),
        ));
        c2.apply(Object::Pod(pod(
            "shop",
            &format!("svc{i}-0"),
            &[("app", &format!("svc{i}"))],
            &format!("10.2.{}.{}", i / 250, i % 250 + 1),
            true,
            None,
        )));
    }
    let mut e2 = ExportEngine::new(c2);
    let e1 = ExportEngine::new(c1);
    let mut cat = CatalogEngine::new(Cidr::default_vip_range(), BTreeMap::new());
    let first = cat.update(e1.snapshot(), e1.export(), [e2.export()], OwnChanges::ALL);
    assert!(first.full);
    assert_eq!(cat.catalog().services.len(), 1000);
    let before = cat.catalog().clone();

    // A pod of svc7 stops being ready in cluster2.
    let flip = pod(
        "shop",
        "svc7-0",
        &[("app", "svc7")],
        "10.2.0.8",
        false,
        None,
    );
    e2.apply([Change::Apply(Object::Pod(flip))]);
    let step = cat.update(
        e1.snapshot(),
        e1.export(),
        [e2.export()],
        OwnChanges::default(),
    );
    assert_eq!((step.merged, step.hostnames, step.full), (1, 1, false));
    assert!(step.changed);
    let changed: Vec<String> = before
        .services
        .diff(&cat.catalog().services)
        .map(|d| match d {
            imbl::ordmap::DiffItem::Add(k, _)
            | imbl::ordmap::DiffItem::Remove(k, _)
            | imbl::ordmap::DiffItem::Update { old: (k, _), .. } => k.clone(),
        })
        .collect();
    assert_eq!(changed, ["svc7.shop.mesh.internal"]);
    // Nothing changed: nothing is merged.
    let step = cat.update(
        e1.snapshot(),
        e1.export(),
        [e2.export()],
        OwnChanges::default(),
    );
    assert_eq!((step.merged, step.hostnames, step.changed), (0, 0, false));
}

/// After a restart, a remote service whose peer has not synced yet is not
/// in the catalog: its address is parked, no other hostname takes it, and
/// it gets it back when the peer syncs (G11 across the restart gate).
#[test]
fn g11_a_restart_parks_the_addresses_of_services_not_back_yet() {
    let mut c1 = empty_cluster("cluster1");
    c1.apply(Object::Gateway(peer_gateway(
        "cluster2",
        "cluster2",
        "cluster2",
        "192.0.2.2",
    )));
    let e1 = ExportEngine::new(c1);
    let mut c2 = empty_cluster("cluster2");
    c2.apply(Object::Namespace(namespace("shop", &[])));
    for (i, name) in ["back", "late"].iter().enumerate() {
        c2.apply(Object::Service(svc("shop", name).global().service()));
        c2.apply(Object::Pod(pod(
            "shop",
            &format!("{name}-0"),
            &[("app", name)],
            &format!("10.2.0.{}", i + 1),
            true,
            None,
        )));
    }
    let e2 = ExportEngine::new(c2);
    // A /30 holds two VIPs: both were handed out before the restart.
    let range: Cidr = "10.0.0.0/30".parse().unwrap();
    let previous: BTreeMap<String, std::net::IpAddr> = [
        ("back.shop.mesh.internal", "10.0.0.1"),
        ("late.shop.mesh.internal", "10.0.0.2"),
    ]
    .iter()
    .map(|(h, ip)| ((*h).to_owned(), ip.parse().unwrap()))
    .collect();
    let mut cat = CatalogEngine::new(range, previous.clone()).park_restart_vips();
    // The peer is not back: nothing of it in the catalog, both addresses parked.
    cat.update(e1.snapshot(), e1.export(), [], OwnChanges::ALL);
    assert_eq!(cat.parked(), 2);
    // It syncs: each hostname gets its own address again.
    cat.update(
        e1.snapshot(),
        e1.export(),
        [e2.export()],
        OwnChanges::default(),
    );
    assert_eq!(cat.vips(), &previous);
    assert_eq!(cat.parked(), 0);
    // The gate is over before the peer is back: the addresses go back to
    // the pool.
    let mut cat = CatalogEngine::new(range, previous.clone()).park_restart_vips();
    cat.update(e1.snapshot(), e1.export(), [], OwnChanges::ALL);
    cat.release_parked();
    assert_eq!(cat.parked(), 0);
}

/// Two hostnames of `ns0` (services `svc<a>`, `svc<b>`) that hash to the
/// same address of `range`.
fn colliding(range: &Cidr) -> (String, String) {
    let alone = |i: usize| {
        let host = format!("svc{i}.ns0.mesh.internal");
        let a = meshpeer_model::vip::allocate(
            range,
            &[host.as_str()].into(),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &Default::default(),
        );
        a.vips[&host]
    };
    for a in 0..64 {
        for b in a + 1..64 {
            if alone(a) == alone(b) {
                return (format!("svc{a}"), format!("svc{b}"));
            }
        }
    }
    unreachable!("64 hostnames in 6 addresses collide");
}

/// `cluster` exports `names` from ns0, each with one ready pod.
fn exporter(cluster: &str, names: &[&str]) -> ExportEngine {
    let mut snap = empty_cluster(cluster);
    snap.apply(Object::Namespace(namespace("ns0", &[])));
    for (i, name) in names.iter().enumerate() {
        snap.apply(Object::Service(svc("ns0", name).global().service()));
        snap.apply(Object::Pod(pod(
            "ns0",
            &format!("{name}-0"),
            &[("app", name)],
            &format!("10.9.0.{}", i + 1),
            true,
            None,
        )));
    }
    ExportEngine::new(snap)
}

fn linked(me: &str, peers: &[&str]) -> ExportEngine {
    let mut snap = empty_cluster(me);
    for (i, p) in peers.iter().enumerate() {
        snap.apply(Object::Gateway(peer_gateway(
            p,
            p,
            p,
            &format!("192.0.2.{}", i + 1),
        )));
    }
    ExportEngine::new(snap)
}

#[test]
fn g11_colliding_new_hostnames_get_the_same_vips_whatever_the_order_of_events() {
    let range: Cidr = "10.0.0.0/29".parse().unwrap();
    let (a, b) = colliding(&range);
    let host = |s: &str| format!("{s}.ns0.mesh.internal");
    let me = linked("cluster1", &["cluster2", "cluster3"]);

    // The two services come from two peers in one update, the peers in
    // either order, and from one peer whose objects came in either order.
    let two = (exporter("cluster2", &[&a]), exporter("cluster3", &[&b]));
    let mut seen = Vec::new();
    for peers in [
        vec![two.0.export(), two.1.export()],
        vec![two.1.export(), two.0.export()],
    ] {
        let mut cat = CatalogEngine::new(range, BTreeMap::new());
        cat.update(me.snapshot(), me.export(), peers, OwnChanges::ALL);
        seen.push(cat.vips().clone());
    }
    for names in [[a.as_str(), b.as_str()], [b.as_str(), a.as_str()]] {
        let one = exporter("cluster2", &names);
        let mut cat = CatalogEngine::new(range, BTreeMap::new());
        cat.update(me.snapshot(), me.export(), [one.export()], OwnChanges::ALL);
        seen.push(cat.vips().clone());
    }
    // Both arrive after a first update with neither.
    for peers in [
        vec![two.0.export(), two.1.export()],
        vec![two.1.export(), two.0.export()],
    ] {
        let mut cat = CatalogEngine::new(range, BTreeMap::new());
        cat.update(me.snapshot(), me.export(), [], OwnChanges::ALL);
        cat.update(me.snapshot(), me.export(), peers, OwnChanges::default());
        seen.push(cat.vips().clone());
    }
    assert_eq!(seen[0].len(), 2, "{:?}", seen[0]);
    assert_ne!(seen[0][&host(&a)], seen[0][&host(&b)]);
    for s in &seen[1..] {
        assert_eq!(s, &seen[0]);
    }
    // The allocation is the hostname order's: the first one takes the
    // address both hash to.
    let alone = meshpeer_model::vip::allocate(
        &range,
        &[host(&a).as_str()].into(),
        &BTreeMap::new(),
        &BTreeMap::new(),
        &Default::default(),
    );
    let first = host(&a).min(host(&b));
    assert_eq!(seen[0][&first], alone.vips[&host(&a)]);

    // One that arrives in a later update finds the address taken, and the
    // one holding it keeps it (stable while it exists, G11): here the
    // allocation follows history, and survives a restart through the
    // addresses handed out before (the previous VIPs).
    let later = host(&a).max(host(&b));
    let (early_export, later_export) = if host(&a) == later {
        (&two.1, &two.0)
    } else {
        (&two.0, &two.1)
    };
    let mut cat = CatalogEngine::new(range, BTreeMap::new());
    cat.update(
        me.snapshot(),
        me.export(),
        [later_export.export()],
        OwnChanges::ALL,
    );
    cat.update(
        me.snapshot(),
        me.export(),
        [later_export.export(), early_export.export()],
        OwnChanges::default(),
    );
    let history = cat.vips().clone();
    assert_eq!(history[&later], alone.vips[&host(&a)]);
    assert_ne!(history, seen[0]);
    let mut restarted = CatalogEngine::new(range, history.clone());
    restarted.update(
        me.snapshot(),
        me.export(),
        [early_export.export(), later_export.export()],
        OwnChanges::ALL,
    );
    assert_eq!(restarted.vips(), &history);
}
