//! Properties over random meshes: the catalog does not depend on the order of
//! objects or peers, rendering is deterministic, VIPs are unique and stable
//! (G8, G11, G12).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{build_mesh, mesh_spec, reapplied, shuffle, svc_spec, views};
use meshpeer_model::render::{render, to_yaml};
use meshpeer_model::testing::svc;
use meshpeer_model::{
    CatalogConfig, ClusterSnapshot, Export, GlobalCatalog, Object, catalog, exports,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn catalog_does_not_depend_on_object_or_peer_order(specs in mesh_spec(), seed in any::<u64>()) {
        let mesh = build_mesh(&specs);
        let config = CatalogConfig::default();
        let expected = views(&mesh, &config);

        let shuffled: Vec<ClusterSnapshot> = mesh
            .iter()
            .enumerate()
            .map(|(i, s)| reapplied(s, seed.wrapping_add(i as u64)))
            .collect();
        let mut exps: Vec<Export> = shuffled.iter().map(exports).collect();
        for (i, own) in shuffled.iter().enumerate() {
            exps.rotate_left(1);
            shuffle(&mut exps, seed ^ 0x9e37_79b9);
            let peers = exps.iter().filter(|e| e.cluster.name != own.config.name);
            let got = catalog(own, peers, &config);
            prop_assert_eq!(&got, &expected[i]);
        }
    }

    #[test]
    fn rendering_is_deterministic(specs in mesh_spec(), seed in any::<u64>()) {
        let mesh = build_mesh(&specs);
        let config = CatalogConfig::default();
        let a: Vec<String> = views(&mesh, &config).iter().map(|v| to_yaml(&render(v))).collect();
        let shuffled: Vec<ClusterSnapshot> =
            mesh.iter().map(|s| reapplied(s, seed)).collect();
        let b: Vec<String> = views(&shuffled, &config).iter().map(|v| to_yaml(&render(v))).collect();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn vips_are_unique_and_stable_while_unrelated_services_come_and_go(
        specs in mesh_spec(),
        edits in prop::collection::vec((0..4usize, svc_spec(), any::<bool>()), 1..12),
    ) {
        let mut mesh = build_mesh(&specs);
        // A small range, so that hostnames collide and probing is exercised.
        let mut config = CatalogConfig {
            vip_range: "10.0.0.0/25".parse().unwrap(),
            ..CatalogConfig::default()
        };
        let mut previous: Vec<BTreeMap<String, std::net::IpAddr>> = views(&mesh, &config)
            .iter()
            .map(GlobalCatalog::vips)
            .collect();
        for (cluster, s, add) in edits {
            let i = cluster % mesh.len();
            let name = format!("svc{}", s.name);
            let ns = format!("ns{}", s.ns);
            if add {
                let b = svc(&ns, &name).global().ready(s.ready.into());
                mesh[i].apply(Object::Service(b.service()));
            } else {
                mesh[i].services.remove(&meshpeer_model::NsName::new(ns, name));
            }
            let exps: Vec<Export> = mesh.iter().map(exports).collect();
            for (j, own) in mesh.iter().enumerate() {
                config.previous_vips = previous[j].clone();
                let peers = exps.iter().filter(|e| e.cluster.name != own.config.name);
                let now = catalog(own, peers, &config).vips();
                let unique: BTreeSet<_> = now.values().collect();
                prop_assert_eq!(unique.len(), now.len(), "VIPs must be unique");
                for (host, ip) in &now {
                    if let Some(before) = previous[j].get(host) {
                        prop_assert_eq!(before, ip, "VIP of {} moved", host);
                    }
                }
                previous[j] = now;
            }
        }
    }

    #[test]
    fn without_history_vips_depend_only_on_the_set_of_hostnames(specs in mesh_spec(), seed in any::<u64>()) {
        // Same hostnames, different history of events: same addresses.
        let mesh = build_mesh(&specs);
        let config = CatalogConfig::default();
        let a: Vec<_> = views(&mesh, &config).iter().map(GlobalCatalog::vips).collect();
        let shuffled: Vec<ClusterSnapshot> = mesh.iter().map(|s| reapplied(s, seed)).collect();
        let b: Vec<_> = views(&shuffled, &config).iter().map(GlobalCatalog::vips).collect();
        prop_assert_eq!(a, b);
    }
}
