//! What the sink tests share about HTTPRoute status (SPEC L7): statuses as
//! the model computes them, and the HTTPRoute CRD to validate writes with.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::OnceLock;

use meshpeer_crdcheck::Validator;
use meshpeer_model::routes::RouteStatus;
use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::{CatalogConfig, catalog, parse_documents};
use serde_json::{Value, json};

/// `reviews` routes to its own Service (resolves); `ratings` to a Service
/// that does not exist (ResolvedRefs False).
pub(crate) const ROUTES: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo, generation: 2}
spec:
  parentRefs: [{group: \"\", kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs: [{name: reviews, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings, namespace: bookinfo, generation: 1}
spec:
  parentRefs: [{group: \"\", kind: Service, name: ratings}]
  rules:
  - backendRefs: [{name: ratings-v9, port: 9080}]
";

/// The route statuses the catalog gives for [`ROUTES`].
pub(crate) fn route_status() -> Vec<RouteStatus> {
    let mut snap = ClusterBuilder::new("cluster1")
        .service(
            svc("bookinfo", "reviews")
                .global()
                .port("http", 9080, 9080)
                .ready(1),
        )
        .service(
            svc("bookinfo", "ratings")
                .global()
                .port("http", 9080, 9080)
                .ready(1),
        )
        .build();
    let parsed = parse_documents("routes.yaml", ROUTES);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    for o in parsed.objects {
        snap.apply(o);
    }
    let status = catalog(&snap, [], &CatalogConfig::default()).route_status;
    assert_eq!(status.len(), 2, "{status:#?}");
    status
}

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");
        Validator::from_dir(std::path::Path::new(dir)).unwrap()
    })
}

/// The status of `doc` (an HTTPRoute-shaped document, as written) on a
/// route with a minimal spec, checked against the HTTPRoute CRD (as a
/// create: the validator has no stored object, so only name and namespace
/// of the metadata are kept).
pub(crate) fn check_route_status(doc: &Value) -> Result<(), String> {
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": doc["metadata"]["name"], "namespace": doc["metadata"]["namespace"]},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}]},
        "status": doc["status"],
    });
    validator().validate(&route).map_err(|v| {
        let lines: Vec<String> = v.iter().map(ToString::to_string).collect();
        format!("{doc:#} is rejected:\n  {}", lines.join("\n  "))
    })
}
