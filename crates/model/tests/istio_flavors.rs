//! Issue 17, point 1: the output as upstream Istio reads it
//! (`render_upstream`), point by point, next to Solo's flavor (`render`).
//! Each test pins the exact values the cited Istio code needs
//! (ARCHITECTURE.md, "Istio flavors"; `crates/model/src/render/upstream.rs`).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use meshpeer_model::endpoints::AMBIENT_REDIRECTION;
use meshpeer_model::objects::{ServiceEntry, WorkloadEntry};
use meshpeer_model::render::upstream::{ENTRY, GEN_DISTRIBUTION, TLS_MODE, entry_key};
use meshpeer_model::render::{UpstreamEntry, render, render_upstream};
use meshpeer_model::testing::{ClusterBuilder, pod, svc};
use meshpeer_model::{CatalogConfig, GlobalCatalog, Object, catalog, exports, labels};

const TD: &str = "networking.istio.io/traffic-distribution";

/// Name, network, locality, weight, tlsMode of a remote group's entry.
type RemoteShape<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<u32>,
    Option<&'a str>,
);
/// Address, network, ambient redirection, ports of a local Pod's entry.
type LocalShape<'a> = (
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Vec<(&'a str, u32)>,
);

/// cluster1 (us-east) exports `shop/web` from an ambient Pod with account
/// `web` (10.1.0.10) and a Pod without ambient or account (10.1.0.11);
/// cluster2 (us-west) and cluster3 (eu), each its own network and trust
/// domain, export it with 2 and 1 ready Pods. cluster1's view.
fn mesh(distribution: Option<&str>) -> GlobalCatalog {
    let web = |s: meshpeer_model::testing::ServiceBuilder| match distribution {
        Some(d) => s.distribution(d),
        None => s,
    };
    let mut ambient = pod("shop", "web-0", &[("app", "web")], "10.1.0.10", true, None);
    ambient.spec.as_mut().unwrap().service_account_name = Some("web".into());
    ambient.metadata.annotations =
        Some([(AMBIENT_REDIRECTION.to_owned(), "enabled".to_owned())].into());
    let plain = pod("shop", "web-1", &[("app", "web")], "10.1.0.11", true, None);
    let c1 = ClusterBuilder::new("cluster1")
        .trust_domain("cluster1")
        .locality("us-east", "us-east-1")
        .link("cluster2")
        .link("cluster3")
        .service(web(svc("shop", "web").global().port("http", 8000, 8080)))
        .object(Object::Pod(ambient))
        .object(Object::Pod(plain))
        .build();
    let c2 = ClusterBuilder::new("cluster2")
        .trust_domain("cluster2")
        .locality("us-west", "us-west-1")
        .service(web(svc("shop", "web").global().port("http", 8000, 8080)).ready(2))
        .build();
    let c3 = ClusterBuilder::new("cluster3")
        .trust_domain("cluster3")
        .locality("eu", "eu-1")
        .service(web(svc("shop", "web").global().port("http", 8000, 8080)).ready(1))
        .build();
    let v = catalog(
        &c1,
        &[exports(&c2), exports(&c3)],
        &CatalogConfig::default(),
    );
    assert_eq!(
        v.service("web.shop.mesh.internal")
            .unwrap()
            .contributions
            .len(),
        3,
        "{:?}",
        v.diagnostics
    );
    v
}

fn upstream(v: &GlobalCatalog) -> UpstreamEntry {
    let mut all = render_upstream(v);
    assert_eq!(all.len(), 1);
    all.remove(0)
}

fn solo(v: &GlobalCatalog) -> ServiceEntry {
    let mut all = render(v);
    assert_eq!(all.len(), 1);
    all.remove(0)
}

fn annotation<'a>(se: &'a ServiceEntry, key: &str) -> Option<&'a str> {
    se.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn label<'a>(we: &'a WorkloadEntry, key: &str) -> Option<&'a str> {
    we.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

#[test]
fn istio_upstream_traffic_distribution_is_a_value_upstream_istio_knows() {
    // pilot/pkg/model/service.go GetTrafficDistribution: PreferClose,
    // PreferSameZone, PreferSameNode; anything else is Any.
    let cases = [
        (None, "PreferNetwork", Some("PreferClose")),
        (Some("PreferNetwork"), "PreferNetwork", Some("PreferClose")),
        (Some("PreferClose"), "PreferClose", Some("PreferClose")),
        (Some("PreferRegion"), "PreferRegion", Some("PreferClose")),
        (Some("Any"), "Any", None),
    ];
    for (given, ours, written) in cases {
        let v = mesh(given);
        let u = upstream(&v);
        assert_eq!(annotation(&u.service_entry, TD), written, "{given:?}");
        assert_eq!(
            annotation(&u.service_entry, GEN_DISTRIBUTION),
            Some(ours),
            "{given:?}"
        );
        // Solo's flavor writes meshpeer's own value, as the seeds show.
        assert_eq!(annotation(&solo(&v), TD), Some(ours), "{given:?}");
    }
}

#[test]
fn istio_upstream_subject_alt_names_are_the_exporting_pods_identities() {
    let v = mesh(None);
    // ztunnel checks double HBONE's inner TLS against these
    // (src/proxy/outbound.rs: final_sans = service_sans()).
    assert_eq!(
        upstream(&v).service_entry.spec.subject_alt_names,
        [
            "spiffe://cluster1/ns/shop/sa/default",
            "spiffe://cluster1/ns/shop/sa/web",
            "spiffe://cluster2/ns/shop/sa/default",
            "spiffe://cluster3/ns/shop/sa/default",
        ]
    );
    assert!(solo(&v).spec.subject_alt_names.is_empty());
}

#[test]
fn istio_upstream_each_remote_network_is_its_own_workload_entry_marked_mtls() {
    let v = mesh(None);
    let u = upstream(&v);
    let se = &u.service_entry;
    // A selector, no inline endpoints (CEL: one or the other).
    assert!(se.spec.endpoints.is_empty());
    let selector = &se.spec.workload_selector.as_ref().unwrap().labels;
    assert_eq!(
        selector,
        &BTreeMap::from([(ENTRY.to_owned(), "autogen.shop.web".to_owned())])
    );
    let remote: Vec<&WorkloadEntry> = u
        .workload_entries
        .iter()
        .filter(|w| w.spec.address.is_none())
        .collect();
    let shape: Vec<RemoteShape<'_>> = remote
        .iter()
        .map(|w| {
            (
                w.metadata.name.as_deref().unwrap(),
                w.spec.network.as_deref().unwrap(),
                w.spec.locality.as_deref(),
                w.spec.weight,
                label(w, TLS_MODE),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (
                "autogen.shop.web.cluster2.bccf3e4a",
                "cluster2",
                Some("us-west/us-west-1"),
                Some(2),
                Some("istio")
            ),
            (
                "autogen.shop.web.cluster3.8d23f028",
                "cluster3",
                Some("eu/eu-1"),
                Some(1),
                Some("istio")
            ),
        ]
    );
    for w in &u.workload_entries {
        // Selected by the entry, in its namespace (conversion.go: the
        // selector sees WorkloadEntries of the ServiceEntry's namespace).
        assert_eq!(w.metadata.namespace.as_deref(), Some(labels::ISTIO_SYSTEM));
        for (k, val) in selector {
            assert_eq!(label(w, k), Some(val.as_str()));
        }
        // Every endpoint names its network; none carries the cluster label
        // istiod overwrites.
        assert!(w.spec.network.is_some());
        assert_eq!(label(w, labels::CLUSTER), None);
    }
    // Solo's flavor: address-less inline endpoints, which istiod's ambient
    // index would give one UID.
    let inline: Vec<_> = solo(&v)
        .spec
        .endpoints
        .into_iter()
        .filter(|e| e.address.is_none())
        .collect();
    assert_eq!(inline.len(), 2);
}

#[test]
fn istio_upstream_ambient_pods_are_marked_for_hbone_and_others_are_not() {
    let v = mesh(None);
    let u = upstream(&v);
    let local: Vec<LocalShape<'_>> = u
        .workload_entries
        .iter()
        .filter(|w| w.spec.address.is_some())
        .map(|w| {
            (
                w.spec.address.as_deref().unwrap(),
                w.spec.network.as_deref(),
                w.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(AMBIENT_REDIRECTION))
                    .map(String::as_str),
                w.spec.ports.iter().map(|(k, p)| (k.as_str(), *p)).collect(),
            )
        })
        .collect();
    assert_eq!(
        local,
        [
            (
                "10.1.0.10",
                Some("cluster1"),
                Some("enabled"),
                vec![("http", 8080)]
            ),
            ("10.1.0.11", Some("cluster1"), None, vec![("http", 8080)]),
        ]
    );
    assert_eq!(
        u.workload_entries
            .iter()
            .filter(|w| w.spec.address.is_some())
            .map(|w| w.metadata.name.as_deref().unwrap())
            .collect::<Vec<_>>(),
        [
            "autogen.shop.web.cluster1.10-1-0-10",
            "autogen.shop.web.cluster1.10-1-0-11"
        ]
    );
}

#[test]
fn istio_upstream_entry_keys_are_label_values_and_stay_distinct() {
    assert_eq!(entry_key("autogen.shop.web"), "autogen.shop.web");
    let a = format!("autogen.{}.{}", "n".repeat(40), "a".repeat(40));
    let b = format!("autogen.{}.{}", "n".repeat(40), "b".repeat(40));
    let (ka, kb) = (entry_key(&a), entry_key(&b));
    assert_ne!(ka, kb);
    for k in [&ka, &kb] {
        assert!(k.len() <= 63, "{k}");
        meshpeer_model::validate::label_value(k).unwrap();
    }
    assert_eq!(entry_key(&a), ka, "not stable");
}

#[test]
fn istio_vips_are_outside_istios_own_auto_allocation_range() {
    // istiod gives ServiceEntries without addresses one from
    // 240.240.0.0/16: ours must not collide with them.
    let istio: meshpeer_model::Cidr = "240.240.0.0/16".parse().unwrap();
    let v = mesh(None);
    for se in [upstream(&v).service_entry, solo(&v)] {
        for a in &se.spec.addresses {
            let ip: std::net::IpAddr = a.parse().unwrap();
            assert!(!istio.contains(ip), "{a} is in Istio's range");
            assert!(CatalogConfig::default().vip_range.contains(ip), "{a}");
        }
    }
    assert_eq!(
        CatalogConfig::default().vip_range.to_string(),
        "240.241.0.0/16"
    );
}

/// Seed 002 (flat network): a peer on this cluster's network is reached
/// Pod to Pod, and its Pods are `autogenflat.<cluster>.<namespace>.<pod>.<hash>`
/// WorkloadEntries with their addresses, network and locality; a Pod
/// behind two global services gets one per service.
#[test]
fn istio_upstream_a_flat_peers_pods_are_autogenflat_workload_entries() {
    let c1 = ClusterBuilder::new("cluster1")
        .trust_domain("cluster1")
        .network("flat")
        .locality("us-east", "us-east-1")
        .link_with("cluster2", "flat", "cluster2")
        .service(svc("shop", "web").global().port("http", 8000, 8080))
        .build();
    let c2 = ClusterBuilder::new("cluster2")
        .trust_domain("cluster2")
        .network("flat")
        .locality("us-west", "us-west-1")
        .service(
            svc("shop", "web")
                .global()
                .port("http", 8000, 8080)
                .ready(2),
        )
        .service(
            svc("shop", "api")
                .global()
                .port("http", 8000, 8080)
                .ready(1),
        )
        .build();
    let v = catalog(&c1, &[exports(&c2)], &CatalogConfig::default());
    let all = render_upstream(&v);
    assert_eq!(all.len(), 2, "{:?}", v.diagnostics);
    let mut names = Vec::new();
    for u in &all {
        for w in &u.workload_entries {
            let name = w.metadata.name.as_deref().unwrap();
            assert!(name.starts_with("autogenflat.cluster2.shop."), "{name}");
            let hash = name.rsplit('.').next().unwrap();
            assert_eq!(hash.len(), 12, "{name}");
            assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
            assert!(name.len() <= 253);
            // Dialled directly: an address, the shared network, no mTLS
            // marker of a gateway group.
            assert!(w.spec.address.is_some(), "{name}");
            assert_eq!(w.spec.network.as_deref(), Some("flat"));
            assert_eq!(w.spec.locality.as_deref(), Some("us-west/us-west-1"));
            assert_eq!(label(w, "meshpeer.io/cluster"), Some("cluster2"));
            names.push(name.to_owned());
        }
    }
    assert_eq!(names.len(), 3, "{names:?}");
    let unique: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), 3, "one per service and Pod: {names:?}");
}

/// B1 lets a peer's Pod names hold `_`, upper case and empty labels; the
/// autogenflat name made of them is still a valid object name, so one
/// peer's odd name cannot fail the write of the whole output.
#[test]
fn istio_upstream_autogenflat_names_are_valid_object_names_whatever_the_pod_name() {
    use meshpeer_model::endpoints::Endpoint;
    use meshpeer_model::render::upstream::flat_name;
    let subdomain = |n: &str| {
        n.len() <= 253
            && n.split('.').all(|l| {
                let b = l.as_bytes();
                !b.is_empty()
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                    && b[0] != b'-'
                    && b[b.len() - 1] != b'-'
            })
    };
    let long = "x".repeat(300);
    for pod in [
        "web-0",
        "Web_0",
        "a..b",
        "-a-.b-",
        "_",
        "",
        "A.B_C",
        long.as_str(),
    ] {
        let ep = Endpoint {
            address: "10.2.0.7".parse().unwrap(),
            name: pod.to_owned(),
            ports: Vec::new().into(),
            service_account: String::new(),
            ambient: false,
        };
        let name = flat_name("autogen.shop.web", "cluster2", "shop", &ep);
        assert!(subdomain(&name), "{pod:?} -> {name}");
        assert!(name.starts_with("autogenflat.cluster2.shop."), "{name}");
    }
}
