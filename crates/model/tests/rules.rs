//! One test (or table) per SPEC rule of sections 1-5, named after the rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::Endpoint as SliceEndpoint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use meshpeer_model::objects::{ServiceEntry, ServiceEntrySpec};
use meshpeer_model::render::render;
use meshpeer_model::testing::{
    ClusterBuilder, endpoint_slice, namespace, pod, slice_endpoint, svc,
};
use meshpeer_model::{
    CatalogConfig, Cidr, ClusterSnapshot, Diagnostic, Export, GlobalCatalog, NsName, Object, Reach,
    Rule, Scope, Severity, TrafficDistribution, catalog, exports, labels,
};

// ------------------------------------------------------------------ helpers

fn view(own: &ClusterSnapshot, peers: &[&ClusterSnapshot]) -> GlobalCatalog {
    let exps: Vec<Export> = peers.iter().map(|p| exports(p)).collect();
    catalog(own, &exps, &CatalogConfig::default())
}

fn hosts(c: &GlobalCatalog) -> Vec<&str> {
    c.services.values().map(|s| s.hostname.as_str()).collect()
}

fn with_rule(diags: &[Diagnostic], rule: Rule) -> Vec<&Diagnostic> {
    diags.iter().filter(|d| d.rule == rule).collect()
}

fn exported(snap: &ClusterSnapshot) -> Vec<String> {
    exports(snap)
        .services
        .values()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect()
}

/// Two clusters linked both ways.
fn pair(
    c1: impl FnOnce(ClusterBuilder) -> ClusterBuilder,
    c2: impl FnOnce(ClusterBuilder) -> ClusterBuilder,
) -> (ClusterSnapshot, ClusterSnapshot) {
    (
        c1(ClusterBuilder::new("cluster1").link("cluster2")).build(),
        c2(ClusterBuilder::new("cluster2").link("cluster1")).build(),
    )
}

fn slice(ns: &str, svc: &str, name: &str, eps: Vec<SliceEndpoint>) -> Object {
    Object::EndpointSlice(endpoint_slice(ns, svc, name, eps))
}

// ------------------------------------------------------------------ C: clusters and links

#[test]
fn c1_network_trust_domain_and_defaults() {
    // No label on istio-system: the network is the cluster name.
    let mut snap = ClusterBuilder::new("east").build();
    snap.namespaces.clear();
    let e = exports(&snap);
    assert_eq!(e.cluster.network, "east");
    assert_eq!(e.cluster.trust_domain, "east");

    // The istio-system label names the network; the config's network is the fallback.
    let snap = ClusterBuilder::new("east").network("net-a").build();
    assert_eq!(exports(&snap).cluster.network, "net-a");
    let mut snap = ClusterBuilder::new("east").build();
    snap.namespaces.clear();
    snap.config.network = Some("net-b".into());
    assert_eq!(exports(&snap).cluster.network, "net-b");

    // Both set and different: the label wins, with a diagnostic.
    let mut snap = ClusterBuilder::new("east").network("net-a").build();
    snap.config.network = Some("net-b".into());
    let e = exports(&snap);
    assert_eq!(e.cluster.network, "net-a");
    let d = with_rule(&e.diagnostics, Rule::C1);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("net-a") && d[0].message.contains("net-b"));

    // A configured trust domain is used.
    let snap = ClusterBuilder::new("east")
        .trust_domain("east.corp")
        .build();
    assert_eq!(exports(&snap).cluster.trust_domain, "east.corp");

    // A peer whose trust domain is not the one its link expects is reported.
    let (c1, c2) = pair(|b| b, |b| b.trust_domain("other.td"));
    let v = view(&c1, &[&c2]);
    let d = with_rule(&v.diagnostics, Rule::C1);
    assert_eq!(d.len(), 1, "{:#?}", v.diagnostics);
    assert!(d[0].message.contains("other.td"));
    assert_eq!(d[0].object.to_string(), "cluster cluster2");
}

#[test]
fn c1_endpoint_locality_from_node_then_pod_then_cluster() {
    let snap = ClusterBuilder::new("c1")
        .locality("us-east", "us-east-1")
        .node("n1", "eu-west", "eu-west-3")
        .service(svc("app", "on-node").global().ready(1).on_node("n1"))
        .service(svc("app", "no-node").global().ready(1))
        .object(Object::Pod(pod(
            "app",
            "labelled",
            &[
                ("app", "labelled"),
                (labels::REGION, "ap-south"),
                (labels::ZONE, "ap-south-2"),
            ],
            "10.9.9.9",
            true,
            None,
        )))
        .service(svc("app", "labelled").global())
        .build();
    let e = exports(&snap);
    let loc = |name: &str| {
        e.service("app", name).unwrap().localities[0]
            .locality
            .to_istio()
    };
    assert_eq!(loc("on-node"), "eu-west/eu-west-3");
    assert_eq!(loc("labelled"), "ap-south/ap-south-2");
    assert_eq!(loc("no-node"), "us-east/us-east-1");
}

#[test]
fn c3_peer_gateways_are_read_and_bad_ones_reported() {
    let snap = ClusterBuilder::new("cluster1")
        .link_with("cluster2", "net2", "td2")
        .build();
    let v = view(&snap, &[]);
    assert_eq!(v.links.len(), 1);
    let l = &v.links[0];
    assert_eq!(
        (
            l.cluster.as_str(),
            l.network.as_str(),
            l.trust_domain.as_str()
        ),
        ("cluster2", "net2", "td2")
    );
    assert_eq!((l.hbone_port, l.xds_port), (15008, 15012));

    // A link to itself, a badly named one, and one without addresses.
    let mut bad = meshpeer_model::testing::peer_gateway("cluster1", "n", "cluster1", "10.0.0.1");
    let mut noaddr = meshpeer_model::testing::peer_gateway("cluster3", "n3", "cluster3", "x");
    noaddr.spec.addresses[0].value = "not-an-ip".into();
    let mut misnamed = bad.clone();
    misnamed.metadata.name = Some("to-cluster4".into());
    bad.metadata.name = Some("istio-remote-peer-cluster1".into());
    let snap = ClusterBuilder::new("cluster1")
        .object(Object::Gateway(bad))
        .object(Object::Gateway(noaddr))
        .object(Object::Gateway(misnamed))
        .build();
    let e = exports(&snap);
    let d = with_rule(&e.diagnostics, Rule::C3);
    let msgs: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("this cluster itself")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("must be named istio-remote-peer-")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("\"not-an-ip\" is not an IP address")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("no usable address")),
        "{msgs:#?}"
    );
}

#[test]
fn c4_link_direction_decides_who_learns_what() {
    // cluster1 links to cluster2 only (link --from cluster1 --to cluster2).
    let c1 = ClusterBuilder::new("cluster1")
        .link("cluster2")
        .service(svc("shop", "cart").global().ready(1))
        .build();
    let c2 = ClusterBuilder::new("cluster2")
        .service(svc("shop", "web").global().ready(1))
        .build();
    let v1 = view(&c1, &[&c2]);
    assert_eq!(
        hosts(&v1),
        ["cart.shop.mesh.internal", "web.shop.mesh.internal"]
    );
    let v2 = view(&c2, &[&c1]);
    assert_eq!(
        hosts(&v2),
        ["web.shop.mesh.internal"],
        "cluster2 never learns cluster1's services"
    );
    let d = with_rule(&v2.diagnostics, Rule::C4);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].severity, Severity::Info);
    assert!(
        d[0].message.contains("istio-remote-peer-cluster1"),
        "{}",
        d[0]
    );

    // Remote endpoints in another network go through that cluster's gateway.
    let web = v1.service("web.shop.mesh.internal").unwrap();
    assert_eq!(web.contributions[0].reach, Reach::Gateway);
    // Same network (flat): reached directly.
    let c1_flat = ClusterBuilder::new("cluster1")
        .network("flat")
        .link_with("cluster2", "flat", "cluster2")
        .build();
    let c2_flat = ClusterBuilder::new("cluster2")
        .network("flat")
        .service(svc("shop", "web").global().ready(1))
        .build();
    let v = view(&c1_flat, &[&c2_flat]);
    assert_eq!(
        v.service("web.shop.mesh.internal").unwrap().contributions[0].reach,
        Reach::Direct
    );
}

#[test]
fn c4_peers_that_cannot_be_told_apart_are_refused() {
    let c1 = ClusterBuilder::new("cluster1").link("cluster2").build();
    let twin_a = ClusterBuilder::new("cluster2")
        .service(svc("a", "x").global())
        .build();
    let twin_b = ClusterBuilder::new("cluster2")
        .service(svc("b", "y").global())
        .build();
    let me_again = ClusterBuilder::new("cluster1")
        .service(svc("c", "z").global())
        .build();
    let v = view(&c1, &[&twin_a, &twin_b, &me_again]);
    assert!(v.services.is_empty(), "{:?}", hosts(&v));
    let d = with_rule(&v.diagnostics, Rule::C4);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(d.iter().all(|d| d.severity == Severity::Error));
}

// ------------------------------------------------------------------ G: global services

#[test]
fn g1_service_label_makes_a_service_global() {
    for (value, scope) in [("global", Scope::Global), ("segment", Scope::Segment)] {
        let snap = ClusterBuilder::new("c1")
            .service(svc("shop", "web").scope(value).ready(1))
            .service(svc("shop", "db").ready(1))
            .build();
        let e = exports(&snap);
        assert_eq!(e.services.len(), 1, "{value}");
        assert_eq!(e.services.values().next().unwrap().name, "web");
        assert_eq!(e.services.values().next().unwrap().scope, scope);
    }
    // ExternalName services cannot be exported, and say so.
    let mut ext = svc("shop", "ext").global().service();
    ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    let snap = ClusterBuilder::new("c1")
        .object(Object::Service(ext))
        .build();
    let e = exports(&snap);
    assert!(e.services.is_empty());
    assert_eq!(with_rule(&e.diagnostics, Rule::G1).len(), 1);
}

#[test]
fn g2_namespace_label_makes_every_service_global() {
    let snap = ClusterBuilder::new("c1")
        .namespace("shop", &[(labels::SERVICE_SCOPE, "global")])
        .namespace("other", &[])
        .service(svc("shop", "web"))
        .service(svc("shop", "db"))
        .service(svc("other", "x"))
        .build();
    assert_eq!(exported(&snap), ["shop/db", "shop/web"]);
}

#[test]
fn g3_cluster_value_opts_a_service_out() {
    let snap = ClusterBuilder::new("c1")
        .namespace("shop", &[(labels::SERVICE_SCOPE, "global")])
        .service(svc("shop", "web"))
        .service(svc("shop", "db").scope("cluster"))
        .build();
    assert_eq!(exported(&snap), ["shop/web"]);
}

#[test]
fn g4_service_label_overrides_namespace_label() {
    let cases = [
        // (namespace label, service label, expected scope)
        (Some("global"), Some("segment"), Some(Scope::Segment)),
        (Some("segment"), Some("global"), Some(Scope::Global)),
        (Some("cluster"), Some("global"), Some(Scope::Global)),
        (Some("global"), Some("cluster"), None),
        (Some("Global"), Some("global"), Some(Scope::Global)),
        (Some("global"), Some("Global"), None),
        (Some("global"), None, Some(Scope::Global)),
        (None, None, None),
    ];
    for (ns, s, want) in cases {
        let ns_labels: Vec<(&str, &str)> = ns
            .map(|v| vec![(labels::SERVICE_SCOPE, v)])
            .unwrap_or_default();
        let mut b = svc("shop", "web");
        if let Some(v) = s {
            b = b.scope(v);
        }
        let snap = ClusterBuilder::new("c1")
            .namespace("shop", &ns_labels)
            .service(b)
            .build();
        let got = exports(&snap).services.values().next().map(|s| s.scope);
        assert_eq!(got, want, "namespace={ns:?} service={s:?}");
    }
}

#[test]
fn g5_invalid_scope_values_export_nothing_and_are_reported() {
    for (value, hint) in [
        ("Global", Some("global")),
        ("globall", Some("global")),
        ("", None),
        ("everywhere", None),
    ] {
        // On the Service.
        let snap = ClusterBuilder::new("cluster1")
            .service(svc("httpbin", "in-ambient").scope(value).ready(1))
            .build();
        let e = exports(&snap);
        assert!(e.services.is_empty(), "{value:?} must export nothing");
        let d = with_rule(&e.diagnostics, Rule::G5);
        assert_eq!(d.len(), 1, "{value:?}");
        let shown = d[0].to_string();
        assert!(
            shown.starts_with("warning[G5] service httpbin/in-ambient (cluster cluster1): "),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("{value:?}")),
            "names the value: {shown}"
        );
        assert!(
            shown.contains("allowed values: global, segment, cluster"),
            "{shown}"
        );
        assert_eq!(
            d[0].field.as_deref(),
            Some("metadata.labels[solo.io/service-scope]")
        );
        match hint {
            Some(h) => assert!(shown.contains(&format!("did you mean {h:?}")), "{shown}"),
            None => assert!(!shown.contains("did you mean"), "{shown}"),
        }

        // On the Namespace: reported once, on the namespace.
        let snap = ClusterBuilder::new("cluster1")
            .namespace("httpbin", &[(labels::SERVICE_SCOPE, value)])
            .service(svc("httpbin", "a"))
            .service(svc("httpbin", "b"))
            .build();
        let e = exports(&snap);
        assert!(e.services.is_empty());
        let d = with_rule(&e.diagnostics, Rule::G5);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].object.to_string(), "namespace httpbin");
    }
}

#[test]
fn g6_hostname_without_segments() {
    let snap = ClusterBuilder::new("c1")
        .service(svc("httpbin", "in-ambient").global())
        .build();
    assert_eq!(
        exports(&snap).services.values().next().unwrap().hostname,
        "in-ambient.httpbin.mesh.internal"
    );
}

#[test]
fn g7_service_entry_shape() {
    let (c1, c2) = pair(
        |b| {
            b.locality("us-east", "us-east-1")
                .service(svc("httpbin", "in-ambient").global().ready(2))
        },
        |b| {
            b.locality("us-west", "us-west-1")
                .service(svc("httpbin", "in-ambient").global().ready(3))
        },
    );
    let v = view(&c1, &[&c2]);
    let ses = render(&v);
    assert_eq!(ses.len(), 1);
    let se = &ses[0];
    assert_eq!(
        se.metadata.name.as_deref(),
        Some("autogen.httpbin.in-ambient")
    );
    assert_eq!(se.metadata.namespace.as_deref(), Some("istio-system"));
    let l = se.metadata.labels.as_ref().unwrap();
    assert_eq!(l[labels::MANAGED_BY], "meshpeer");
    assert_eq!(se.spec.hosts, ["in-ambient.httpbin.mesh.internal"]);
    assert_eq!(se.spec.resolution.as_deref(), Some("STATIC"));
    assert_eq!(se.spec.location.as_deref(), Some("MESH_INTERNAL"));
    assert_eq!(
        se.spec.addresses,
        [v.services.values().next().unwrap().vip.to_string()]
    );
    assert_eq!(se.spec.ports.len(), 1);
    assert_eq!(
        (se.spec.ports[0].name.as_str(), se.spec.ports[0].number),
        ("http", 8000)
    );
    assert_eq!(se.spec.ports[0].protocol.as_deref(), Some("HTTP"));
    // Two local endpoints, one by one; cluster2's three as one gateway entry.
    assert_eq!(se.spec.endpoints.len(), 3);
    let local: Vec<_> = se
        .spec
        .endpoints
        .iter()
        .filter(|e| e.address.is_some())
        .collect();
    assert_eq!(local.len(), 2);
    assert!(local.iter().all(|e| e.ports["http"] == 8080
        && e.network.as_deref() == Some("cluster1")
        && e.locality.as_deref() == Some("us-east/us-east-1")));
    let remote = se
        .spec
        .endpoints
        .iter()
        .find(|e| e.address.is_none())
        .unwrap();
    assert_eq!(remote.network.as_deref(), Some("cluster2"));
    assert_eq!(remote.weight, Some(3));
    assert_eq!(remote.locality.as_deref(), Some("us-west/us-west-1"));
    assert_eq!(remote.labels[labels::CLUSTER], "cluster2");

    // Ports the mesh cannot carry are left out and reported.
    let snap = ClusterBuilder::new("c1")
        .service(
            svc("dns", "resolver")
                .global()
                .port("tcp-dns", 53, 53)
                .port_protocol("udp-dns", 53, "UDP"),
        )
        .service(
            svc("dns", "udp-only")
                .global()
                .port_protocol("udp", 53, "UDP"),
        )
        .build();
    let e = exports(&snap);
    assert_eq!(exported(&snap), ["dns/resolver"]);
    assert_eq!(e.services.values().next().unwrap().ports.len(), 1);
    let d = with_rule(&e.diagnostics, Rule::G7);
    assert_eq!(d.len(), 3, "{d:#?}");
    assert!(d.iter().any(|d| d.message.contains("no TCP port")));
}

#[test]
fn g7_unnamed_port_gets_a_name() {
    let snap = ClusterBuilder::new("c1")
        .service(svc("a", "b").global().port("", 9090, 9090))
        .build();
    let e = exports(&snap);
    assert_eq!(
        e.services.values().next().unwrap().ports[0].name,
        "tcp-9090"
    );
}

#[test]
fn g8_namespace_sameness_merges_only_exporting_clusters() {
    // Same service in both clusters, labelled only in cluster1.
    let (c1, c2) = pair(
        |b| b.service(svc("stage", "myapp").global().ready(1)),
        |b| b.service(svc("stage", "myapp").ready(2)),
    );
    let v = view(&c1, &[&c2]);
    let s = v.service("myapp.stage.mesh.internal").unwrap();
    assert_eq!(s.clusters().collect::<Vec<_>>(), ["cluster1"]);
    assert_eq!(s.endpoint_count(), 1);
    // cluster2 sees the global service too, with cluster1's endpoints only.
    let v2 = view(&c2, &[&c1]);
    let s2 = v2.service("myapp.stage.mesh.internal").unwrap();
    assert_eq!(s2.clusters().collect::<Vec<_>>(), ["cluster1"]);

    // Labelled in both: one global service with the union of endpoints.
    let (c1, c2) = pair(
        |b| b.service(svc("stage", "myapp").global().ready(1)),
        |b| b.service(svc("stage", "myapp").global().ready(2)),
    );
    let v = view(&c1, &[&c2]);
    assert_eq!(v.services.len(), 1);
    let s = &v.services.values().next().unwrap();
    assert_eq!(s.clusters().collect::<Vec<_>>(), ["cluster1", "cluster2"]);
    assert_eq!(s.endpoint_count(), 3);
    // Different namespace = different service.
    let (c1, c2) = pair(
        |b| b.service(svc("stage", "myapp").global()),
        |b| b.service(svc("prod", "myapp").global()),
    );
    assert_eq!(
        hosts(&view(&c1, &[&c2])),
        ["myapp.prod.mesh.internal", "myapp.stage.mesh.internal"]
    );
}

#[test]
fn g9_ports_are_the_union_by_number_with_a_deterministic_winner() {
    let (c1, c2) = pair(
        |b| {
            b.service(
                svc("a", "web")
                    .global()
                    .port("http", 8000, 8080)
                    .port("grpc", 9000, 9000),
            )
        },
        |b| {
            b.service(
                svc("a", "web")
                    .global()
                    .port("tcp-web", 8000, 8080)
                    .port("metrics", 9100, 9100),
            )
        },
    );
    let v = view(&c1, &[&c2]);
    let s = &v.services.values().next().unwrap();
    let ports: Vec<(u16, &str, &str)> = s
        .ports
        .iter()
        .map(|p| (p.number, p.name.as_str(), p.protocol.as_str()))
        .collect();
    // A 1-1 tie on 8000: the cluster whose name sorts first wins.
    assert_eq!(
        ports,
        [
            (8000, "http", "HTTP"),
            (9000, "grpc", "GRPC"),
            (9100, "metrics", "TCP")
        ]
    );
    let d = with_rule(&v.diagnostics, Rule::G9);
    assert_eq!(d.len(), 3, "{d:#?}");
    assert!(d[0].message.contains("cluster2=tcp-web/TCP"), "{}", d[0]);
    assert!(
        d[1].message
            .starts_with("port 9000 is served by cluster1 only, not by cluster2:"),
        "{}",
        d[1]
    );
    assert!(
        d[2].message
            .starts_with("port 9100 is served by cluster2 only, not by cluster1:"),
        "{}",
        d[2]
    );
    // Same winner from cluster2's side.
    let v2 = view(&c2, &[&c1]);
    assert_eq!(
        v2.services.values().next().unwrap().ports,
        v.services.values().next().unwrap().ports
    );
}

#[test]
fn g10_only_ready_endpoints_are_advertised() {
    let mut deleting = pod("a", "web-del", &[("app", "web")], "10.0.0.9", true, None);
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    let snap = ClusterBuilder::new("c1")
        .service(svc("a", "web").global().ready(2).not_ready(3))
        .object(Object::Pod(deleting))
        .service(svc("a", "sliced").global().selectorless())
        .object(slice(
            "a",
            "sliced",
            "sliced-abc",
            vec![
                slice_endpoint("10.1.0.1", Some(true), None),
                slice_endpoint("10.1.0.2", Some(false), None),
                slice_endpoint("10.1.0.3", None, None),
                slice_endpoint("10.1.0.4", Some(true), Some(true)),
            ],
        ))
        .build();
    let e = exports(&snap);
    assert_eq!(e.service("a", "web").unwrap().endpoint_count(), 2);
    let sliced: Vec<String> = e
        .service("a", "sliced")
        .unwrap()
        .endpoints()
        .map(|(_, ep)| ep.address.to_string())
        .collect();
    assert_eq!(
        sliced,
        ["10.1.0.1", "10.1.0.3"],
        "unknown readiness counts as ready"
    );
    let first = |svc: &str| {
        e.service("a", svc)
            .unwrap()
            .endpoints()
            .next()
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(first("sliced").target(8000), Some(8080));

    // An endpoint that stops being ready leaves every cluster's view.
    let (c1, mut c2) = pair(|b| b, |b| b.service(svc("a", "web").global().ready(1)));
    assert_eq!(
        view(&c1, &[&c2])
            .services
            .values()
            .next()
            .unwrap()
            .endpoint_count(),
        1
    );
    let p = c2.pods.values_mut().next().unwrap();
    p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
    let v = view(&c1, &[&c2]);
    assert_eq!(v.services.values().next().unwrap().endpoint_count(), 0);
    assert_eq!(render(&v)[0].spec.endpoints.len(), 0);
}

#[test]
fn g10_an_address_listed_twice_is_one_endpoint_serving_both_port_sets() {
    // Two slices (one per port set, as the EndpointSlice controller splits
    // them) list 10.1.0.1; the first serves http, the second metrics. One
    // endpoint serves both; 10.1.0.2 stays as it is.
    let mut http = endpoint_slice(
        "a",
        "web",
        "web-http",
        vec![
            slice_endpoint("10.1.0.1", Some(true), None),
            slice_endpoint("10.1.0.2", Some(true), None),
        ],
    );
    http.ports.as_mut().unwrap()[0].port = Some(8080);
    let mut metrics = endpoint_slice(
        "a",
        "web",
        "web-metrics",
        vec![slice_endpoint("10.1.0.1", Some(true), None)],
    );
    let mp = &mut metrics.ports.as_mut().unwrap()[0];
    mp.name = Some("metrics".into());
    mp.port = Some(9090);
    let snap = ClusterBuilder::new("c1")
        .service(
            svc("a", "web")
                .global()
                .selectorless()
                .port("http", 8000, 8080)
                .port("metrics", 9000, 9090),
        )
        .object(Object::EndpointSlice(http))
        .object(Object::EndpointSlice(metrics))
        .build();
    let e = exports(&snap);
    let eps: Vec<(String, Option<u16>, Option<u16>)> = e
        .service("a", "web")
        .unwrap()
        .endpoints()
        .map(|(_, ep)| (ep.address.to_string(), ep.target(8000), ep.target(9000)))
        .collect();
    assert_eq!(
        eps,
        [
            ("10.1.0.1".to_owned(), Some(8080), Some(9090)),
            ("10.1.0.2".to_owned(), Some(8080), None),
        ]
    );
}

#[test]
fn g10_named_target_ports_resolve_per_pod() {
    let snap = ClusterBuilder::new("c1")
        .service(
            svc("a", "web")
                .global()
                .port_named_target("http", 80, "http")
                .ready(1),
        )
        .service(
            svc("a", "bad")
                .global()
                .port_named_target("http", 80, "nope")
                .ready(2),
        )
        .service(
            svc("a", "half")
                .global()
                .port("metrics", 9090, 9090)
                .port_named_target("grpc", 81, "grpc")
                .ready(1),
        )
        .build();
    let e = exports(&snap);
    let eps = |svc: &str| {
        e.service("a", svc)
            .unwrap()
            .endpoints()
            .map(|(_, ep)| ep.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(eps("web")[0].target(80), Some(8080));
    // Kubernetes leaves a Pod that does not declare the named port out of
    // that port's endpoints: with no other port, the Pod is no endpoint.
    assert!(eps("bad").is_empty(), "{:?}", eps("bad"));
    // With another port it still serves that one, and only that one.
    let half = eps("half");
    assert_eq!(half.len(), 1);
    assert_eq!(half[0].target(9090), Some(9090));
    assert_eq!(half[0].target(81), None, "{:?}", half[0]);
    // Each such Service is reported, naming the Pods, the Service and the
    // port's name.
    let g10 = with_rule(&e.diagnostics, Rule::G10);
    let bad = g10
        .iter()
        .find(|d| d.object.name == "bad" && d.message.contains("\"nope\""))
        .unwrap_or_else(|| panic!("{g10:#?}"));
    assert!(
        bad.message.contains("pod a/bad-0, pod a/bad-1")
            && bad.message.contains("port http (80)")
            && bad.message.contains("do not declare"),
        "{}",
        bad.message
    );
    let half = g10
        .iter()
        .find(|d| d.object.name == "half" && d.message.contains("\"grpc\""))
        .unwrap_or_else(|| panic!("{g10:#?}"));
    assert!(
        half.message.contains("pod a/half-0 does not declare"),
        "{}",
        half.message
    );
    assert!(!g10.iter().any(|d| d.object.name == "web"), "{g10:#?}");
}

#[test]
fn g11_vips_are_unique_deterministic_and_from_the_configured_range() {
    // 200 services in a /24: most hostnames collide with another, so the
    // order they are looked at would show.
    let range: Cidr = "127.255.0.0/24".parse().unwrap();
    let config = CatalogConfig {
        vip_range: range,
        ..Default::default()
    };
    let build = |name: &str, order: &mut dyn Iterator<Item = usize>| {
        let mut b = ClusterBuilder::new(name).link("c2").link("c3");
        for i in order {
            b = b.service(svc("ns", &format!("s{i}")).global());
        }
        b.build()
    };
    // The same services, exported by c1 itself, or by two peers in either
    // order, each peer's objects applied in either order.
    let own = build("c1", &mut (0..200));
    let own_reversed = build("c1", &mut (0..200).rev());
    let c1 = ClusterBuilder::new("c1").link("c2").link("c3").build();
    let c2 = build("c2", &mut (0..200).filter(|i| i % 2 == 0));
    let c3 = build("c3", &mut (0..200).filter(|i| i % 2 == 1).rev());
    let c2_reversed = build("c2", &mut (0..200).filter(|i| i % 2 == 0).rev());
    let v1 = catalog(&own, &[], &config);
    assert_eq!(v1.services.len(), 200);
    assert_eq!(catalog(&own_reversed, &[], &config).vips(), v1.vips());
    let from_peers = catalog(&c1, &[exports(&c2), exports(&c3)], &config);
    assert_eq!(from_peers.vips(), v1.vips());
    assert_eq!(
        catalog(&c1, &[exports(&c3), exports(&c2_reversed)], &config).vips(),
        v1.vips()
    );
    let mut seen = std::collections::BTreeSet::new();
    for s in v1.services.values() {
        assert!(range.contains(s.vip), "{} outside range", s.vip);
        assert!(seen.insert(s.vip), "duplicate VIP {}", s.vip);
    }
    // The default range.
    let v = catalog(&own, &[], &CatalogConfig::default());
    assert!(
        v.services
            .values()
            .all(|s| Cidr::default_vip_range().contains(s.vip))
    );
}

#[test]
fn g11_vips_survive_restarts_through_the_generated_service_entries() {
    let base = ClusterBuilder::new("c1")
        .service(svc("a", "web").global())
        .build();
    let first = catalog(&base, &[], &CatalogConfig::default());
    let mut rendered = render(&first).remove(0);
    // Pretend the address was moved earlier (e.g. by a collision since gone).
    rendered.spec.addresses = vec!["240.241.7.7".into()];
    let mut restarted = base.clone();
    restarted.apply(Object::ServiceEntry(rendered));
    let again = catalog(&restarted, &[], &CatalogConfig::default());
    assert_eq!(
        again.services.values().next().unwrap().vip,
        "240.241.7.7".parse::<IpAddr>().unwrap()
    );

    // A user-written ServiceEntry's address is never handed out.
    let taken = first.services.values().next().unwrap().vip;
    let mut manual = base.clone();
    manual.apply(Object::ServiceEntry(ServiceEntry {
        metadata: ObjectMeta {
            name: Some("httpbin-bar".into()),
            namespace: Some("foo".into()),
            ..Default::default()
        },
        spec: ServiceEntrySpec {
            hosts: vec!["httpbin.bar.global".into()],
            addresses: vec![taken.to_string()],
            ..Default::default()
        },
    }));
    let v = catalog(&manual, &[], &CatalogConfig::default());
    assert_ne!(v.services.values().next().unwrap().vip, taken);
}

#[test]
fn g11_exhausted_range_is_reported() {
    let snap = ClusterBuilder::new("c1")
        .service(svc("a", "x").global())
        .service(svc("a", "y").global())
        .service(svc("a", "z").global())
        .build();
    let config = CatalogConfig {
        vip_range: "10.0.0.0/30".parse().unwrap(),
        ..Default::default()
    };
    let v = catalog(&snap, &[], &config);
    assert_eq!(v.services.len(), 2);
    let d = with_rule(&v.diagnostics, Rule::G11);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("10.0.0.0/30"));
}

#[test]
fn g12_removing_the_label_service_or_last_cluster_removes_the_global_service() {
    let (c1, c2) = pair(
        |b| b.service(svc("a", "web").global().ready(1)),
        |b| b.service(svc("a", "web").global().ready(1)),
    );
    assert_eq!(view(&c1, &[&c2]).services.len(), 1);

    // Label removed in cluster1: still there through cluster2.
    let mut c1_unlabelled = c1.clone();
    let s = c1_unlabelled
        .services
        .get_mut(&NsName::new("a", "web"))
        .unwrap();
    s.metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(labels::SERVICE_SCOPE);
    let v = view(&c1_unlabelled, &[&c2]);
    assert_eq!(
        v.services
            .values()
            .next()
            .unwrap()
            .clusters()
            .collect::<Vec<_>>(),
        ["cluster2"]
    );

    // Service deleted in cluster2 as well: gone everywhere.
    let mut c2_deleted = c2.clone();
    c2_deleted.services.remove(&NsName::new("a", "web"));
    assert!(view(&c1_unlabelled, &[&c2_deleted]).services.is_empty());
    assert!(view(&c2_deleted, &[&c1_unlabelled]).services.is_empty());
    // The last exporting cluster disappears: gone.
    assert!(view(&c1_unlabelled, &[]).services.is_empty());
}

// ------------------------------------------------------------------ S: segments

fn segmented(name: &str, join: Option<&str>) -> ClusterBuilder {
    let b = ClusterBuilder::new(name)
        .segment("dev-segment", "cluster.dev")
        .segment("prod-segment", "cluster.prod");
    match join {
        Some(s) => b.join(s),
        None => b,
    }
}

#[test]
fn s1_segment_definitions_are_checked_and_compared() {
    let bad = ClusterBuilder::new("c1")
        .segment("dev", "cluster.dev")
        .segment("dup", "cluster.dev")
        .segment("mesh", "mesh.internal")
        .segment("broken", "Not A Domain")
        .object(Object::Segment({
            let mut s = meshpeer_model::testing::segment("elsewhere", "x.y");
            s.metadata.namespace = Some("default".into());
            s
        }))
        .build();
    let e = exports(&bad);
    assert_eq!(
        e.segments
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["dev"]
    );
    let d = with_rule(&e.diagnostics, Rule::S1);
    assert_eq!(d.len(), 4, "{d:#?}");

    // Same name, different domain in a peer.
    let c1 = ClusterBuilder::new("cluster1")
        .link("cluster2")
        .segment("dev", "cluster.dev")
        .build();
    let c2 = ClusterBuilder::new("cluster2")
        .segment("dev", "dev.example")
        .build();
    let v = view(&c1, &[&c2]);
    let d = with_rule(&v.diagnostics, Rule::S1);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("cluster.dev") && d[0].message.contains("dev.example"));
}

#[test]
fn s2_a_cluster_joins_a_segment_by_label() {
    let snap = segmented("c1", Some("dev-segment")).build();
    assert_eq!(
        exports(&snap).cluster.segment.unwrap().domain,
        "cluster.dev"
    );
    // A label naming a missing Segment: diagnostic, default segment.
    let snap = segmented("c1", Some("qa-segment"))
        .service(svc("a", "web").global())
        .build();
    let e = exports(&snap);
    assert!(e.cluster.segment.is_none());
    let d = with_rule(&e.diagnostics, Rule::S2);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("qa-segment"));
    assert!(d[0].message.contains("dev-segment, prod-segment"));
    assert_eq!(
        e.services.values().next().unwrap().hostname,
        "web.a.mesh.internal"
    );
}

#[test]
fn s3_hostname_and_service_entry_name_carry_the_exporters_segment() {
    let (c1, c2) = (
        segmented("cluster1", Some("dev-segment"))
            .link("cluster2")
            .service(svc("httpbin", "in-ambient").global())
            .build(),
        segmented("cluster2", Some("prod-segment"))
            .link("cluster1")
            .service(svc("httpbin", "in-ambient").global())
            .build(),
    );
    let v = view(&c1, &[&c2]);
    assert_eq!(
        hosts(&v),
        [
            "in-ambient.httpbin.cluster.dev",
            "in-ambient.httpbin.cluster.prod"
        ]
    );
    let names: Vec<String> = render(&v)
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "autogen.dev-segment.httpbin.in-ambient",
            "autogen.prod-segment.httpbin.in-ambient"
        ]
    );
}

#[test]
fn s4_sameness_applies_within_a_segment() {
    let c1 = segmented("cluster1", Some("dev-segment"))
        .link("cluster2")
        .link("cluster3")
        .service(svc("a", "x").global().ready(1))
        .build();
    let c2 = segmented("cluster2", Some("dev-segment"))
        .service(svc("a", "x").global().ready(1))
        .build();
    let c3 = segmented("cluster3", Some("prod-segment"))
        .service(svc("a", "x").global().ready(1))
        .build();
    let v = view(&c1, &[&c2, &c3]);
    assert_eq!(v.services.len(), 2);
    let dev = v.service("x.a.cluster.dev").unwrap();
    assert_eq!(dev.clusters().collect::<Vec<_>>(), ["cluster1", "cluster2"]);
    let prod = v.service("x.a.cluster.prod").unwrap();
    assert_eq!(prod.clusters().collect::<Vec<_>>(), ["cluster3"]);
    assert_eq!(prod.segment.as_deref(), Some("prod-segment"));
}

#[test]
fn s5_mesh_internal_names_disappear_once_clusters_join_segments() {
    let before = pair(
        |b| b.service(svc("h", "a").global()),
        |b| b.service(svc("h", "a").global()),
    );
    assert_eq!(hosts(&view(&before.0, &[&before.1])), ["a.h.mesh.internal"]);
    // cluster1 moves to dev: cluster2 still has a mesh.internal name of its own.
    let c1 = segmented("cluster1", Some("dev-segment"))
        .link("cluster2")
        .service(svc("h", "a").global())
        .build();
    let c2 = segmented("cluster2", None)
        .link("cluster1")
        .service(svc("h", "a").global())
        .build();
    assert_eq!(
        hosts(&view(&c1, &[&c2])),
        ["a.h.cluster.dev", "a.h.mesh.internal"]
    );
    // Both in segments: no mesh.internal name anywhere.
    let c2 = segmented("cluster2", Some("prod-segment"))
        .link("cluster1")
        .service(svc("h", "a").global())
        .build();
    for v in [view(&c1, &[&c2]), view(&c2, &[&c1])] {
        assert!(
            v.services
                .values()
                .all(|s| !s.hostname.ends_with(".mesh.internal")),
            "{:?}",
            hosts(&v)
        );
    }
}

#[test]
fn s6_global_scope_is_visible_from_every_segment() {
    let c1 = segmented("cluster1", Some("dev-segment"))
        .link("cluster2")
        .build();
    let c2 = segmented("cluster2", Some("prod-segment"))
        .service(svc("h", "a").global())
        .build();
    assert_eq!(hosts(&view(&c1, &[&c2])), ["a.h.cluster.prod"]);
}

#[test]
fn s7_segment_scope_is_visible_only_within_the_segment() {
    let c1 = segmented("cluster1", Some("dev-segment"))
        .link("cluster2")
        .link("cluster3")
        .service(svc("h", "in-ambient").scope("segment"))
        .build();
    let c2 = segmented("cluster2", Some("prod-segment"))
        .link("cluster1")
        .service(svc("h", "in-ambient").scope("segment"))
        .build();
    let c3 = segmented("cluster3", Some("prod-segment"))
        .link("cluster2")
        .build();
    // dev sees its own name only; the prod name is not generated there.
    assert_eq!(hosts(&view(&c1, &[&c2, &c3])), ["in-ambient.h.cluster.dev"]);
    // Another prod cluster sees the prod name.
    assert_eq!(hosts(&view(&c3, &[&c2])), ["in-ambient.h.cluster.prod"]);
    // What a peer is sent is filtered too.
    assert!(
        exports(&c2)
            .visible_to(Some("dev-segment"))
            .services
            .is_empty()
    );
    assert_eq!(
        exports(&c2).visible_to(Some("prod-segment")).services.len(),
        1
    );

    // The default segment counts as a segment.
    let d1 = ClusterBuilder::new("cluster1")
        .link("cluster2")
        .link("cluster3")
        .build();
    let d2 = ClusterBuilder::new("cluster2")
        .service(svc("h", "x").scope("segment"))
        .build();
    let p3 = segmented("cluster3", Some("prod-segment"))
        .service(svc("h", "y").scope("segment"))
        .build();
    assert_eq!(hosts(&view(&d1, &[&d2, &p3])), ["x.h.mesh.internal"]);
    assert_eq!(exports(&d2).visible_to(None).services.len(), 1);
}

// ------------------------------------------------------------------ T: traffic distribution

#[test]
fn t1_distribution_annotation_and_conflicts() {
    let (c1, c2) = pair(
        |b| b.service(svc("b", "productpage").global().distribution("Any")),
        |b| b.service(svc("b", "productpage").global().distribution("Any")),
    );
    let v = view(&c1, &[&c2]);
    assert_eq!(
        v.services.values().next().unwrap().distribution,
        TrafficDistribution::Any
    );
    assert!(with_rule(&v.diagnostics, Rule::T1).is_empty());
    assert_eq!(
        render(&v)[0].metadata.annotations.as_ref().unwrap()[labels::TRAFFIC_DISTRIBUTION],
        "Any"
    );

    // Default.
    let (c1, c2) = pair(
        |b| b.service(svc("b", "p").global()),
        |b| b.service(svc("b", "p").global()),
    );
    assert_eq!(
        view(&c1, &[&c2])
            .services
            .values()
            .next()
            .unwrap()
            .distribution,
        TrafficDistribution::PreferNetwork
    );

    // Disagreement: majority, then the cluster whose name sorts first.
    let c1 = ClusterBuilder::new("cluster1")
        .link("cluster2")
        .link("cluster3")
        .service(svc("b", "p").global().distribution("PreferClose"))
        .build();
    let c2 = ClusterBuilder::new("cluster2")
        .service(svc("b", "p").global().distribution("Any"))
        .build();
    let c3 = ClusterBuilder::new("cluster3")
        .service(svc("b", "p").global().distribution("Any"))
        .build();
    let v = view(&c1, &[&c2, &c3]);
    assert_eq!(
        v.services.values().next().unwrap().distribution,
        TrafficDistribution::Any
    );
    let d = with_rule(&v.diagnostics, Rule::T1);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("cluster1=PreferClose"), "{}", d[0]);
    let v = view(&c1, &[&c2]);
    assert_eq!(
        v.services.values().next().unwrap().distribution,
        TrafficDistribution::PreferClose
    );
}

#[test]
fn t1_a_cluster_that_does_not_annotate_votes_for_the_default() {
    let c1 = ClusterBuilder::new("cluster1")
        .link("cluster2")
        .link("cluster3")
        .service(svc("b", "p").global().distribution("PreferClose"))
        .build();
    let c2 = ClusterBuilder::new("cluster2")
        .service(svc("b", "p").global())
        .build();
    let c3 = ClusterBuilder::new("cluster3")
        .service(svc("b", "p").global())
        .build();
    // One each: a tie, won by the cluster whose name sorts first; cluster2
    // loses its (default) value, and is told so.
    let v = view(&c1, &[&c2]);
    assert_eq!(
        v.services.values().next().unwrap().distribution,
        TrafficDistribution::PreferClose
    );
    let d = with_rule(&v.diagnostics, Rule::T1);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].message.contains("cluster1=PreferClose")
            && d[0]
                .message
                .contains("cluster2=PreferNetwork (not annotated: the default)")
            && d[0].message.contains("using PreferClose"),
        "{}",
        d[0]
    );
    // Two clusters keep the default: it wins, and cluster1 is told so.
    let v = view(&c1, &[&c2, &c3]);
    assert_eq!(
        v.services.values().next().unwrap().distribution,
        TrafficDistribution::PreferNetwork
    );
    let d = with_rule(&v.diagnostics, Rule::T1);
    assert!(
        d.len() == 1 && d[0].message.contains("using PreferNetwork"),
        "{d:#?}"
    );
    // Nobody annotates: nothing to report.
    let c1 = ClusterBuilder::new("cluster1")
        .link("cluster2")
        .service(svc("b", "p").global())
        .build();
    assert!(with_rule(&view(&c1, &[&c2]).diagnostics, Rule::T1).is_empty());
    // An explicit default agrees with the implicit one.
    let c1 = ClusterBuilder::new("cluster1")
        .link("cluster2")
        .service(svc("b", "p").global().distribution("PreferNetwork"))
        .build();
    assert!(with_rule(&view(&c1, &[&c2]).diagnostics, Rule::T1).is_empty());
}

#[test]
fn t7_unknown_distribution_falls_back_to_the_default() {
    let (c1, c2) = pair(
        |b| b.service(svc("b", "p").global().distribution("preferclose")),
        |b| b.service(svc("b", "p").global()),
    );
    let e = exports(&c1);
    let d = with_rule(&e.diagnostics, Rule::T7);
    assert_eq!(d.len(), 1);
    assert!(
        d[0].message.contains("did you mean \"PreferClose\""),
        "{}",
        d[0]
    );
    assert!(
        d[0].message
            .contains("annotation networking.istio.io/traffic-distribution")
    );
    assert_eq!(
        view(&c1, &[&c2])
            .services
            .values()
            .next()
            .unwrap()
            .distribution,
        TrafficDistribution::PreferNetwork
    );
}

// ------------------------------------------------------------------ K: takeover

#[test]
fn k1_takeover_label_on_service_or_namespace_service_wins() {
    let cases = [
        (None, Some("true"), true),
        (Some("true"), None, true),
        (Some("true"), Some("false"), false),
        (Some("false"), Some("true"), true),
        (None, None, false),
    ];
    for (ns, s, want) in cases {
        let ns_labels: Vec<(&str, &str)> = ns
            .map(|v| vec![(labels::SERVICE_TAKEOVER, v)])
            .unwrap_or_default();
        let mut b = svc("httpbin", "in-ambient")
            .global()
            .cluster_ip("10.96.0.10");
        if let Some(v) = s {
            b = b.takeover(v);
        }
        let snap = ClusterBuilder::new("c1")
            .namespace("httpbin", &ns_labels)
            .service(b)
            .build();
        let v = view(&snap, &[]);
        let g = &v.services.values().next().unwrap();
        assert_eq!(g.taken_over, want, "ns={ns:?} svc={s:?}");
        assert_eq!(g.takeover.is_some(), want);
        if want {
            let t = g.takeover.as_ref().unwrap();
            assert_eq!(t.hostname, "in-ambient.httpbin.svc.cluster.local");
            assert_eq!(t.cluster_ips, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
            assert_eq!(
                render(&v)[0].metadata.annotations.as_ref().unwrap()[labels::GEN_TAKEOVER],
                "in-ambient.httpbin.svc.cluster.local"
            );
        }
    }
    // Invalid value: reported, off.
    let snap = ClusterBuilder::new("c1")
        .service(svc("a", "b").global().takeover("yes"))
        .build();
    let e = exports(&snap);
    assert!(!e.services.values().next().unwrap().takeover);
    assert_eq!(with_rule(&e.diagnostics, Rule::K1).len(), 1);

    // Takeover in one cluster: only that cluster's local name is captured.
    let (c1, c2) = pair(
        |b| b.service(svc("a", "web").global().takeover("true")),
        |b| b.service(svc("a", "web").global()),
    );
    assert!(
        view(&c1, &[&c2])
            .services
            .values()
            .next()
            .unwrap()
            .takeover
            .is_some()
    );
    assert!(
        view(&c2, &[&c1])
            .services
            .values()
            .next()
            .unwrap()
            .takeover
            .is_none()
    );
    assert!(
        view(&c2, &[&c1])
            .services
            .values()
            .next()
            .unwrap()
            .taken_over
    );
}

#[test]
fn k2_takeover_without_scope_is_a_noop_with_a_diagnostic() {
    let snap = ClusterBuilder::new("c1")
        .service(svc("a", "web").takeover("true"))
        .namespace("b", &[(labels::SERVICE_TAKEOVER, "true")])
        .service(svc("b", "x"))
        .build();
    let e = exports(&snap);
    assert!(e.services.is_empty());
    let d = with_rule(&e.diagnostics, Rule::K2);
    let objects: Vec<String> = d.iter().map(|d| d.object.to_string()).collect();
    assert_eq!(objects, ["namespace b", "service a/web", "service b/x"]);
    // Namespace takeover with a service that has its own scope: no K2.
    let snap = ClusterBuilder::new("c1")
        .namespace("b", &[(labels::SERVICE_TAKEOVER, "true")])
        .service(svc("b", "x").global())
        .build();
    let e = exports(&snap);
    assert!(e.services.values().next().unwrap().takeover);
    assert!(with_rule(&e.diagnostics, Rule::K2).is_empty());
}

#[test]
fn k2_every_unscoped_service_of_a_takeover_namespace_is_reported() {
    // One exported sibling does not hide the others.
    let snap = ClusterBuilder::new("c1")
        .namespace("b", &[(labels::SERVICE_TAKEOVER, "true")])
        .service(svc("b", "exported").global())
        .service(svc("b", "missed"))
        .service(svc("b", "missed-too"))
        .service(svc("b", "local").scope("cluster"))
        .service(svc("b", "opted-out").takeover("false"))
        .build();
    let e = exports(&snap);
    assert_eq!(e.services.len(), 1);
    let d = with_rule(&e.diagnostics, Rule::K2);
    let objects: Vec<String> = d.iter().map(|d| d.object.to_string()).collect();
    assert_eq!(
        objects,
        ["service b/missed", "service b/missed-too"],
        "{d:#?}"
    );
    assert!(
        d[0].message
            .contains("namespace b is labelled solo.io/service-takeover=true")
            && d[0].message.contains("not taken over"),
        "{}",
        d[0].message
    );
    assert_eq!(
        d[0].field.as_deref(),
        Some("metadata.labels[solo.io/service-scope]")
    );
}

#[test]
fn k3_prefer_network_is_not_allowed_with_takeover() {
    // Explicit PreferNetwork: diagnostic, PreferClose.
    let snap = ClusterBuilder::new("c1")
        .service(
            svc("a", "web")
                .global()
                .takeover("true")
                .distribution("PreferNetwork"),
        )
        .build();
    let v = view(&snap, &[]);
    assert_eq!(
        v.services.values().next().unwrap().distribution,
        TrafficDistribution::PreferClose
    );
    assert_eq!(with_rule(&v.diagnostics, Rule::K3).len(), 1);
    // Default with takeover: PreferClose, no diagnostic.
    let snap = ClusterBuilder::new("c1")
        .service(svc("a", "web").global().takeover("true"))
        .build();
    let v = view(&snap, &[]);
    assert_eq!(
        v.services.values().next().unwrap().distribution,
        TrafficDistribution::PreferClose
    );
    assert!(with_rule(&v.diagnostics, Rule::K3).is_empty());
    // Other explicit modes are kept.
    let snap = ClusterBuilder::new("c1")
        .service(
            svc("a", "web")
                .global()
                .takeover("true")
                .distribution("Any"),
        )
        .build();
    assert_eq!(
        view(&snap, &[])
            .services
            .values()
            .next()
            .unwrap()
            .distribution,
        TrafficDistribution::Any
    );
}

#[test]
fn k4_removing_the_takeover_label_restores_local_behaviour() {
    let on = ClusterBuilder::new("c1")
        .service(svc("a", "web").global().takeover("true"))
        .build();
    assert!(
        view(&on, &[])
            .services
            .values()
            .next()
            .unwrap()
            .takeover
            .is_some()
    );
    let mut off = on.clone();
    off.services
        .get_mut(&NsName::new("a", "web"))
        .unwrap()
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(labels::SERVICE_TAKEOVER);
    let v = view(&off, &[]);
    assert!(v.services.values().next().unwrap().takeover.is_none());
    assert!(!v.services.values().next().unwrap().taken_over);
    assert_eq!(
        v.services.values().next().unwrap().distribution,
        TrafficDistribution::PreferNetwork
    );
    assert!(
        !render(&v)[0]
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(labels::GEN_TAKEOVER)
    );
}

// ------------------------------------------------------------------ file input

#[test]
fn parse_documents_feed_snapshots() {
    let text = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: httpbin
---
apiVersion: v1
kind: Service
metadata:
  name: in-ambient
  namespace: httpbin
  labels:
    solo.io/service-scope: global
spec:
  selector: {app: in-ambient}
  ports:
  - {name: http, port: 8000, targetPort: 8080}
"#;
    let parsed = meshpeer_model::parse_documents("httpbin.yaml", text);
    assert!(parsed.errors.is_empty());
    let snap = ClusterSnapshot::from_objects(
        meshpeer_model::ClusterConfig::new("cluster1"),
        parsed
            .objects
            .into_iter()
            .chain([Object::Namespace(namespace("x", &[]))]),
    );
    assert_eq!(exported(&snap), ["httpbin/in-ambient"]);
}

#[test]
fn k3_prefer_network_from_a_cluster_without_takeover_conflicts_with_one_with_it() {
    let (c1, c2) = pair(
        |b| b.service(svc("a", "web").global().takeover("true")),
        |b| b.service(svc("a", "web").global().distribution("PreferNetwork")),
    );
    let v = view(&c1, &[&c2]);
    assert_eq!(
        v.services.values().next().unwrap().distribution,
        TrafficDistribution::PreferClose
    );
    let d = with_rule(&v.diagnostics, Rule::K3);
    assert_eq!(d.len(), 1);
    assert!(
        d[0].message.contains("cluster2 ask for PreferNetwork"),
        "{}",
        d[0]
    );
    assert!(d[0].message.contains("takeover in cluster1"), "{}", d[0]);
}

#[test]
fn d4_user_written_service_entries_are_carried_for_the_data_plane() {
    let text = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: httpbin-bar, namespace: foo}
spec:
  hosts: [httpbin.bar.global]
  location: MESH_INTERNAL
  ports: [{name: http1, number: 8000, protocol: http}]
  resolution: DNS
  addresses: [127.255.0.2]
  endpoints:
  - address: 192.0.2.10
    ports: {http1: 15443}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: no-address, namespace: foo}
spec:
  hosts: [x.example]
  ports: [{name: tcp, number: 9}]
"#;
    let parsed = meshpeer_model::parse_documents("se.yaml", text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let snap = ClusterSnapshot::from_objects(
        meshpeer_model::ClusterConfig::new("cluster1"),
        parsed.objects,
    );
    let v = view(&snap, &[]);
    assert_eq!(v.manual.len(), 1);
    let m = &v.manual[0];
    assert_eq!(m.hosts, ["httpbin.bar.global"]);
    assert_eq!(m.addresses, ["127.255.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(m.ports[0].number, 8000);
    assert_eq!(m.endpoints[0].target(&m.ports[0]), 15443);
    let d = with_rule(&v.diagnostics, Rule::D4);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("no IP address"), "{}", d[0]);
}

// ------------------------------------------------------------------ P: trust

#[test]
fn p2_a_peer_segment_with_a_domain_of_its_own_choosing_is_refused() {
    // The attack: a linked cluster defines Segment `evil` with domain `com`,
    // joins it and exports `www` in namespace `google`.
    let c1 = ClusterBuilder::new("cluster1")
        .link("cluster2")
        .segment("dev", "cluster.dev")
        .build();
    let evil = ClusterBuilder::new("cluster2")
        .segment("evil", "com")
        .join("evil")
        .service(svc("google", "www").global().ready(1))
        .build();
    let v = view(&c1, &[&evil]);
    assert!(v.services.is_empty(), "{:?}", hosts(&v));
    assert!(v.service("www.google.com").is_none());
    let d = with_rule(&v.diagnostics, Rule::P2);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].severity, Severity::Error);
    assert_eq!(d[0].object.to_string(), "cluster cluster2");
    assert!(
        d[0].message.contains("segment evil (domain com)")
            && d[0].message.contains("does not define"),
        "{}",
        d[0]
    );
    assert_eq!(v.refused_peers.len(), 1);
    assert_eq!(v.refused_peers[0].reason, "SegmentNotDefined");
    assert!(v.refused_peers[0].whole);
}

#[test]
fn p2_a_segment_defined_here_with_another_domain_gets_the_local_domain_only() {
    // Both define `dev`, the peer with domain `com`: the peer's names under
    // `com` are refused; an honest peer of the same segment is accepted.
    let c1 = ClusterBuilder::new("cluster1")
        .link("cluster2")
        .link("cluster3")
        .segment("dev", "cluster.dev")
        .build();
    let liar = ClusterBuilder::new("cluster2")
        .segment("dev", "com")
        .join("dev")
        .service(svc("google", "www").global().ready(1))
        .build();
    let honest = ClusterBuilder::new("cluster3")
        .segment("dev", "cluster.dev")
        .join("dev")
        .service(svc("shop", "web").global().ready(1))
        .build();
    let v = view(&c1, &[&liar, &honest]);
    assert_eq!(hosts(&v), ["web.shop.cluster.dev"]);
    let d = with_rule(&v.diagnostics, Rule::P2);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].message.contains("google/www as www.google.com")
            && d[0].message.contains("expected www.google.cluster.dev"),
        "{}",
        d[0]
    );
    let r = &v.refused_peers[0];
    assert_eq!(
        (r.cluster.as_str(), r.reason.as_str(), r.whole),
        ("cluster2", "HostnameRefused", false)
    );
    assert_eq!(r.services, ["google/www"]);
    // S1 still says why.
    assert_eq!(with_rule(&v.diagnostics, Rule::S1).len(), 1);
}

#[test]
fn p2_a_default_segment_peer_may_only_use_mesh_internal() {
    // A tampered export: the hostname is not the one its segment gives.
    let c1 = ClusterBuilder::new("cluster1").link("cluster2").build();
    let c2 = ClusterBuilder::new("cluster2")
        .service(svc("shop", "web").global().ready(1))
        .service(svc("shop", "cart").global().ready(1))
        .build();
    let mut e2 = exports(&c2);
    let key = meshpeer_model::NsName::new("shop", "web");
    let mut forged = (*e2.services[&key]).clone();
    forged.hostname = "web.shop.svc.cluster.local".into();
    e2.services.insert(key, std::sync::Arc::new(forged));
    let v = catalog(&c1, &[e2], &CatalogConfig::default());
    assert_eq!(hosts(&v), ["cart.shop.mesh.internal"]);
    assert_eq!(with_rule(&v.diagnostics, Rule::P2).len(), 1);
}

#[test]
fn p3_a_pinned_link_refuses_a_peer_claiming_another_segment() {
    let c1 = ClusterBuilder::new("cluster1")
        .segment("dev", "cluster.dev")
        .segment("prod", "cluster.prod")
        .join("dev")
        .link("cluster2")
        .pin_segment("cluster2", "prod")
        .build();
    let claims_dev = ClusterBuilder::new("cluster2")
        .segment("dev", "cluster.dev")
        .segment("prod", "cluster.prod")
        .join("dev")
        .service(svc("shop", "web").scope("segment").ready(1))
        .build();
    let v = view(&c1, &[&claims_dev]);
    assert!(v.services.is_empty(), "{:?}", hosts(&v));
    let d = with_rule(&v.diagnostics, Rule::P3);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].message
            .contains("says it is in segment dev, but gateway istio-eastwest/istio-remote-peer-cluster2 pins it to segment prod"),
        "{}",
        d[0]
    );
    assert_eq!(v.refused_peers[0].reason, "SegmentPinMismatch");

    // The truth is accepted.
    let in_prod = ClusterBuilder::new("cluster2")
        .segment("dev", "cluster.dev")
        .segment("prod", "cluster.prod")
        .join("prod")
        .service(svc("shop", "web").global().ready(1))
        .build();
    let v = view(&c1, &[&in_prod]);
    assert_eq!(hosts(&v), ["web.shop.cluster.prod"]);
    assert!(v.refused_peers.is_empty());

    // An empty pin is the default segment.
    let c1 = ClusterBuilder::new("cluster1")
        .segment("prod", "cluster.prod")
        .link("cluster2")
        .pin_segment("cluster2", "")
        .build();
    assert!(view(&c1, &[&in_prod]).services.is_empty());
    let plain = ClusterBuilder::new("cluster2")
        .service(svc("shop", "web").global().ready(1))
        .build();
    assert_eq!(hosts(&view(&c1, &[&plain])), ["web.shop.mesh.internal"]);
}

#[test]
fn p3_an_unusable_pin_refuses_rather_than_trusts() {
    let c1 = ClusterBuilder::new("cluster1")
        .segment("dev", "cluster.dev")
        .link("cluster2")
        .pin_segment("cluster2", "not a name!")
        .build();
    let c2 = ClusterBuilder::new("cluster2")
        .segment("dev", "cluster.dev")
        .join("dev")
        .service(svc("shop", "web").global().ready(1))
        .build();
    let v = view(&c1, &[&c2]);
    assert!(v.services.is_empty());
    let d = with_rule(&v.diagnostics, Rule::P3);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(
        d.iter()
            .any(|d| d.field.as_deref() == Some("metadata.labels[admin.solo.io/segment]"))
    );
}

/// An endpoint's network and its ports map.
type PortsOf<'a> = (Option<&'a str>, Vec<(String, u32)>);

fn ports_of(e: &meshpeer_model::objects::WorkloadEntrySpec) -> PortsOf<'_> {
    let ports = e.ports.iter().map(|(k, v)| (k.clone(), *v)).collect();
    (e.network.as_deref(), ports)
}

/// The network and ports map of each inline endpoint of `se`.
fn inline_ports(se: &ServiceEntry) -> Vec<PortsOf<'_>> {
    se.spec.endpoints.iter().map(ports_of).collect()
}

#[test]
fn g9_rendered_endpoints_and_gateway_entries_list_only_the_ports_their_cluster_serves() {
    // cluster2 adds port 9000; cluster1 serves 8000 only.
    let (c1, c2) = pair(
        |b| b.service(svc("a", "web").global().port("http", 8000, 8080).ready(1)),
        |b| {
            b.service(
                svc("a", "web")
                    .global()
                    .port("http", 8000, 8080)
                    .port("admin", 9000, 9090)
                    .ready(1),
            )
        },
    );
    // cluster2's view: its own endpoint serves both; cluster1 is reached
    // through its gateway, for 8000 only.
    let v2 = view(&c2, &[&c1]);
    let se = &render(&v2)[0];
    let shapes = inline_ports(se);
    assert_eq!(
        shapes,
        [
            (Some("cluster1"), vec![("http".to_owned(), 8000)]),
            (
                Some("cluster2"),
                vec![("admin".to_owned(), 9090), ("http".to_owned(), 8080)]
            ),
        ]
    );
    // Upstream Istio's flavor: the same maps on the WorkloadEntries.
    let u = &meshpeer_model::render::render_upstream(&v2)[0];
    let mut we: Vec<PortsOf<'_>> = u
        .workload_entries
        .iter()
        .map(|w| ports_of(&w.spec))
        .collect();
    we.sort();
    assert_eq!(we, shapes);
    // cluster1's view: its endpoint lists 8000 only; cluster2's gateway
    // entry 8000 and 9000, each to the service port.
    let v1 = view(&c1, &[&c2]);
    let se = &render(&v1)[0];
    let shapes = inline_ports(se);
    assert_eq!(
        shapes,
        [
            (Some("cluster1"), vec![("http".to_owned(), 8080)]),
            (
                Some("cluster2"),
                vec![("admin".to_owned(), 9000), ("http".to_owned(), 8000)]
            ),
        ]
    );
    let d = with_rule(&v1.diagnostics, Rule::G9);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].message
            .contains("an Istio data plane may still send it to cluster1"),
        "{}",
        d[0]
    );
}
