//! Every object meshpeer renders validates against the real CRD schemas
//! (structure and the CEL rules an API server enforces) (G7).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use common::{build_mesh, mesh_spec, views};
use meshpeer_crdcheck::Validator;
use meshpeer_model::render::{render, render_upstream};
use meshpeer_model::testing::{ClusterBuilder, peer_gateway, svc};
use meshpeer_model::{CatalogConfig, Cidr, catalog, exports};
use proptest::prelude::*;

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");
        Validator::from_dir(std::path::Path::new(dir)).unwrap()
    })
}

fn check(obj: &serde_json::Value) -> Result<(), String> {
    validator().validate(obj).map_err(|v| {
        let lines: Vec<String> = v.iter().map(ToString::to_string).collect();
        format!(
            "{} is rejected:\n  {}\n{}",
            obj["metadata"]["name"],
            lines.join("\n  "),
            serde_json::to_string_pretty(obj).unwrap()
        )
    })
}

#[test]
fn g7_rendered_service_entries_validate_against_the_istio_crd() {
    let c1 = ClusterBuilder::new("cluster1")
        .link("cluster2")
        .locality("us-east", "us-east-1")
        .service(
            svc("httpbin", "in-ambient")
                .global()
                .ready(2)
                .takeover("true"),
        )
        .service(
            svc("a", "multi")
                .global()
                .port("http", 80, 8080)
                .port("", 9090, 9090)
                .ready(1),
        )
        .build();
    let c2 = ClusterBuilder::new("cluster2")
        .locality("us-west", "us-west-1")
        .service(
            svc("httpbin", "in-ambient")
                .global()
                .ready(3)
                .distribution("Any"),
        )
        .service(svc("a", "empty").global())
        .build();
    let v = catalog(&c1, &[exports(&c2)], &CatalogConfig::default());
    let rendered = render(&v);
    assert_eq!(rendered.len(), 3);
    for se in &rendered {
        check(&serde_json::to_value(se).unwrap()).unwrap();
    }
    // IPv6 VIP range.
    let v6 = CatalogConfig {
        vip_range: "fd00:240::/64".parse::<Cidr>().unwrap(),
        ..Default::default()
    };
    for se in render(&catalog(&c1, &[exports(&c2)], &v6)) {
        check(&serde_json::to_value(&se).unwrap()).unwrap();
    }
}

#[test]
fn c3_gateways_built_by_meshpeer_validate_against_the_gateway_api_crd() {
    let gw = peer_gateway("cluster2", "cluster2", "cluster2", "192.0.2.10");
    check(&serde_json::to_value(&gw).unwrap()).unwrap();
}

#[test]
fn the_validator_rejects_what_an_api_server_rejects() {
    // Guard against a validator that accepts everything.
    let c1 = ClusterBuilder::new("cluster1")
        .service(svc("a", "web").global().ready(1))
        .build();
    let mut se =
        serde_json::to_value(&render(&catalog(&c1, &[], &CatalogConfig::default()))[0]).unwrap();
    se["spec"]["ports"][0]["number"] = serde_json::json!(0);
    assert!(check(&se).is_err());
    let mut se2 = se.clone();
    se2["spec"]["ports"][0]["number"] = serde_json::json!(8000);
    se2["spec"]["hosts"] = serde_json::json!(["*"]);
    assert!(check(&se2).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn g7_every_rendered_object_of_random_meshes_validates(specs in mesh_spec()) {
        let mesh = build_mesh(&specs);
        for v in views(&mesh, &CatalogConfig::default()) {
            for se in render(&v) {
                let value = serde_json::to_value(&se).unwrap();
                if let Err(e) = check(&value) {
                    prop_assert!(false, "{}", e);
                }
            }
            // Upstream Istio's flavor (issue 17): entries and WorkloadEntries.
            for u in render_upstream(&v) {
                let mut objects = vec![serde_json::to_value(&u.service_entry).unwrap()];
                objects.extend(u.workload_entries.iter().map(|w| serde_json::to_value(w).unwrap()));
                for value in objects {
                    if let Err(e) = check(&value) {
                        prop_assert!(false, "{}", e);
                    }
                }
            }
        }
    }
}
