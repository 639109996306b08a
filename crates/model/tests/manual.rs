//! Manual entries (D4) never change what meshpeer owns (P4): names under
//! `mesh.internal` or a Segment domain, taken-over local names, VIPs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::{
    CatalogConfig, Cidr, Diagnostic, GlobalCatalog, Rule, catalog, is_in_domain, parse_documents,
};

fn entry(name: &str, hosts: &[&str], addresses: &[&str]) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: httpbin}}\n\
         spec:\n  hosts: [{}]\n  addresses: [{}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
         \x20 ports: [{{name: http, number: 80, protocol: HTTP}}]\n\
         \x20 endpoints: [{{address: 127.0.0.1, ports: {{http: 15014}}}}]\n",
        hosts
            .iter()
            .map(|h| format!("{h:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        addresses.join(", ")
    )
}

fn view(b: ClusterBuilder, yaml: &str) -> GlobalCatalog {
    let parsed = parse_documents("se.yaml", yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut b = b;
    for o in parsed.objects {
        b = b.object(o);
    }
    catalog(&b.build(), &[], &CatalogConfig::default())
}

fn p4(c: &GlobalCatalog) -> Vec<&Diagnostic> {
    c.diagnostics
        .iter()
        .filter(|d| d.rule == Rule::P4)
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn p4_a_host_under_mesh_internal_is_ignored_and_the_global_service_wins() {
    let c = view(
        ClusterBuilder::new("cluster1").service(svc("httpbin", "in-ambient").global().ready(1)),
        &entry(
            "hijack",
            &[
                "in-ambient.httpbin.mesh.internal",
                "metrics.httpbin.example",
            ],
            &["127.253.0.9"],
        ),
    );
    assert_eq!(c.manual.len(), 1, "{:?}", c.diagnostics);
    assert_eq!(c.manual[0].hosts, ["metrics.httpbin.example"]);
    assert_eq!(c.manual[0].addresses, [ip("127.253.0.9")]);
    let d = p4(&c);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].field.as_deref(), Some("spec.hosts[0]"));
    assert_eq!(d[0].object.to_string(), "serviceentry httpbin/hijack");
    for part in [
        "spec.hosts[0]",
        "\"in-ambient.httpbin.mesh.internal\"",
        "global service httpbin/in-ambient",
        "global services win",
    ] {
        assert!(d[0].message.contains(part), "{part}: {}", d[0]);
    }
    // The global name is still the global service's, on its VIP.
    let g = c.service("in-ambient.httpbin.mesh.internal").unwrap();
    assert!(Cidr::default_vip_range().contains(g.vip));

    // A name under mesh.internal that no global service has is meshpeer's too.
    let c = view(
        ClusterBuilder::new("cluster1"),
        &entry(
            "squat",
            &["future.ns.mesh.internal", "*.mesh.internal", "ok.example"],
            &["192.0.2.1"],
        ),
    );
    assert_eq!(c.manual[0].hosts, ["ok.example"]);
    let d = p4(&c);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d.iter().all(|d| d.message.contains("under mesh.internal")),
        "{d:?}"
    );
}

#[test]
fn p4_hosts_under_a_segment_domain_or_taken_over_local_names_are_ignored() {
    let c = view(
        ClusterBuilder::new("cluster1")
            .segment("dev", "cluster.dev")
            .segment("prod", "cluster.prod")
            .join("dev")
            .service(svc("shop", "web").global().takeover("true").ready(1)),
        &entry(
            "names",
            &[
                "web.shop.svc.cluster.local",
                "x.y.cluster.prod",
                "WEB.SHOP.CLUSTER.DEV",
                "other.shop.svc.cluster.local",
            ],
            &["192.0.2.1"],
        ),
    );
    assert_eq!(c.manual[0].hosts, ["other.shop.svc.cluster.local"]);
    let d = p4(&c);
    let fields: Vec<&str> = d.iter().filter_map(|d| d.field.as_deref()).collect();
    assert_eq!(
        fields,
        ["spec.hosts[0]", "spec.hosts[1]", "spec.hosts[2]"],
        "{d:?}"
    );
    let by_field = |f: &str| d.iter().find(|d| d.field.as_deref() == Some(f)).unwrap();
    assert!(
        by_field("spec.hosts[0]")
            .message
            .contains("cluster-local name of service shop/web, taken over"),
        "{d:?}"
    );
    assert!(
        by_field("spec.hosts[1]")
            .message
            .contains("under cluster.prod, the domain of Segment prod"),
        "{d:?}"
    );
    assert!(
        by_field("spec.hosts[2]")
            .message
            .contains("global service shop/web"),
        "{d:?}"
    );
}

#[test]
fn p4_an_address_in_the_vip_range_is_refused() {
    let c = view(
        ClusterBuilder::new("cluster1"),
        &entry("vips", &["a.example"], &["240.241.7.7", "192.0.2.1"]),
    );
    assert_eq!(c.manual[0].addresses, [ip("192.0.2.1")]);
    let d = p4(&c);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].field.as_deref(), Some("spec.addresses[0]"));
    assert!(d[0].message.contains("240.241.7.7"), "{}", d[0]);
    assert!(d[0].message.contains("240.241.0.0/16"), "{}", d[0]);
}

#[test]
fn p4_an_entry_left_without_host_or_address_is_not_used() {
    let c = view(
        ClusterBuilder::new("cluster1"),
        &format!(
            "{}---\n{}",
            entry("only-ours", &["a.b.mesh.internal"], &["192.0.2.1"]),
            entry("only-vips", &["a.example"], &["240.241.0.1"])
        ),
    );
    assert!(c.manual.is_empty(), "{:?}", c.manual);
    let d = p4(&c);
    for (name, what) in [
        ("only-ours", "no host is left"),
        ("only-vips", "no address is left"),
    ] {
        assert!(
            d.iter().any(|d| d.object.name == name
                && d.message.contains(what)
                && d.message.contains("not used")),
            "{name}: {d:?}"
        );
    }
}

#[test]
fn p5_the_catalog_carries_its_vip_range_and_old_feeds_read_without_it() {
    let c = view(ClusterBuilder::new("cluster1"), "");
    assert_eq!(c.vip_range, Some(Cidr::default_vip_range()));
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["vipRange"], "240.241.0.0/16");
    let mut old = json;
    old.as_object_mut().unwrap().remove("vipRange");
    let read: GlobalCatalog = serde_json::from_value(old).unwrap();
    assert_eq!(read.vip_range, None);
}

#[test]
fn p4_domains_are_matched_label_by_label() {
    for (name, domain, want) in [
        ("a.mesh.internal", "mesh.internal", true),
        ("mesh.internal.", "mesh.internal", true),
        ("A.Mesh.Internal", "mesh.internal.", true),
        ("xmesh.internal", "mesh.internal", false),
        ("internal", "mesh.internal", false),
        ("a.mesh.internal.example", "mesh.internal", false),
        ("a.b", "", false),
    ] {
        assert_eq!(is_in_domain(name, domain), want, "{name} in {domain}");
    }
}
