//! Synthetic meshes for benchmarks: `clusters` clusters, each exporting the
//! same `services` services (namespace sameness) with `endpoints` ready
//! endpoints each, published as EndpointSlices like a real cluster does.

#![allow(dead_code, clippy::unwrap_used)]

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions};
use meshpeer_model::testing::{ClusterBuilder, endpoint_slice, svc};
use meshpeer_model::{ClusterSnapshot, Export, Object, exports, labels};

pub(crate) const NAMESPACES: usize = 20;

pub(crate) fn cluster(
    index: usize,
    clusters: usize,
    services: usize,
    endpoints: usize,
) -> ClusterSnapshot {
    let name = format!("cluster{index}");
    let mut b = ClusterBuilder::new(&name).locality(
        &format!("region{}", index % 3),
        &format!("zone{}", index % 6),
    );
    if index == 0 {
        for peer in 1..clusters {
            b = b.link(&format!("cluster{peer}"));
        }
    }
    for ns in 0..NAMESPACES {
        b = b.namespace(&format!("ns{ns}"), &[(labels::SERVICE_SCOPE, "global")]);
    }
    for s in 0..services {
        let ns = format!("ns{}", s % NAMESPACES);
        let svc_name = format!("svc{s}");
        b = b.service(svc(&ns, &svc_name).selectorless());
        let eps = (0..endpoints)
            .map(|e| {
                let n = s * endpoints + e;
                SliceEndpoint {
                    addresses: vec![format!(
                        "10.{}.{}.{}",
                        index % 250,
                        (n / 250) % 250,
                        n % 250 + 1
                    )],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(format!("svc{s}-7d9f8b6c5d-{e:05}")),
                        ..Default::default()
                    }),
                    zone: Some(format!("zone{}", (index + e) % 6)),
                    ..Default::default()
                }
            })
            .collect();
        b = b.object(Object::EndpointSlice(endpoint_slice(
            &ns,
            &svc_name,
            &format!("{svc_name}-abcde"),
            eps,
        )));
    }
    b.build()
}

/// Cluster 0's snapshot and the exports of clusters 1..n.
pub(crate) fn mesh(
    clusters: usize,
    services: usize,
    endpoints: usize,
) -> (ClusterSnapshot, Vec<Export>) {
    let own = cluster(0, clusters, services, endpoints);
    let peers = (1..clusters)
        .map(|i| exports(&cluster(i, clusters, services, endpoints)))
        .collect();
    (own, peers)
}
