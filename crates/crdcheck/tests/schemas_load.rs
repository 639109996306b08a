//! Every CRD in `schemas/` loads, and every CEL rule in them compiles
//! (a rule that does not compile makes loading fail; see `custom_crd.rs`).

use std::path::Path;

use meshpeer_crdcheck::Validator;

const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");

#[test]
fn every_rule_of_every_crd_compiles() {
    let v = match Validator::from_dir(Path::new(SCHEMAS)) {
        Ok(v) => v,
        Err(e) => panic!("loading {SCHEMAS}: {e}"),
    };
    let loaded = format!("{v:?}");
    for crd in [
        "gateways.gateway.networking.k8s.io",
        "httproutes.gateway.networking.k8s.io",
        "serviceentries.networking.istio.io",
        "workloadentries.networking.istio.io",
    ] {
        assert!(loaded.contains(crd), "{crd} not in {loaded}");
    }
}
