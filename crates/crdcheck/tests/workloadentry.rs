//! WorkloadEntry (networking.istio.io/v1).

mod common;

use common::{assert_valid, violations, with, without, yaml};
use serde_json::{Value as Json, json};

fn valid() -> Json {
    yaml(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-vm-1
  namespace: bookinfo
spec:
  address: 192.0.2.20
  ports:
    http: 9080
  labels:
    app: reviews
    version: v3
  network: vm-network
  locality: us-west/us-west-1
  serviceAccount: reviews
  weight: 10
"#,
    )
}

#[test]
fn valid_workload_entry_passes() {
    assert_valid(&valid());
    // Only a network is enough, too.
    let network_only = without(&without(&valid(), "/spec/address"), "/spec/ports");
    assert_valid(&network_only);
}

#[test]
fn invalid_workload_entries() {
    let nowhere = without(&without(&valid(), "/spec/address"), "/spec/network");
    assert_eq!(violations(&nowhere), ["spec: Address is required"]);
    assert_eq!(
        violations(&with(&valid(), "/spec/ports/http", json!(65536))),
        ["spec.ports[http]: port must be between 1-65535"]
    );
    assert_eq!(
        violations(&with(
            &valid(),
            "/spec/address",
            json!("unix:///var/run/app.sock")
        )),
        ["spec: UDS may not include ports"]
    );
    assert_eq!(
        violations(&with(&valid(), "/spec/ports", json!({"-http": 9080}))),
        ["spec.ports: port name must be valid"]
    );
    assert_eq!(
        violations(&with(&valid(), "/spec/weight", json!(4_294_967_296_u64))),
        ["spec.weight: should be less than or equal to 4294967295"]
    );
}
