//! ServiceEntry (networking.istio.io/v1): a valid object, one failure per
//! CEL rule of the schema, and structural failures.

mod common;

use common::{assert_valid, violations, with, without, yaml};
use serde_json::{Value as Json, json};

fn valid() -> Json {
    yaml(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews-cluster2
  namespace: istio-system
  labels:
    app.kubernetes.io/managed-by: meshpeer
  annotations:
    meshpeer.io/peer: cluster2
spec:
  hosts:
  - reviews.default.svc.cluster.local
  - "*.reviews.example.com"
  addresses:
  - 240.240.0.1
  - 10.10.0.0/16
  ports:
  - number: 9080
    name: http
    protocol: HTTP
  - number: 15443
    name: tls
    protocol: TLS
    targetPort: 15443
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 192.0.2.10
    ports:
      http: 15443
      tls: 15443
    locality: us-west/us-west-1
    labels:
      topology.istio.io/network: cluster2
    weight: 1
  - network: cluster2
    locality: us-west/us-west-1
    weight: 2
"#,
    )
}

#[test]
fn valid_service_entry_passes() {
    assert_valid(&valid());
}

fn check(obj: &Json, expected: &[&str]) {
    assert_eq!(violations(obj), expected, "for {obj:#}");
}

// One failure per CEL rule of the ServiceEntry v1 schema.

#[test]
fn duplicate_port_numbers() {
    check(
        &with(&valid(), "/spec/ports/1/number", json!(9080)),
        &["spec.ports: port number cannot be duplicated"],
    );
}

#[test]
fn wildcard_host() {
    check(
        &with(&valid(), "/spec/hosts/0", json!("*")),
        &["spec.hosts[0]: hostname cannot be wildcard"],
    );
}

#[test]
fn workload_selector_with_endpoints() {
    check(
        &with(
            &valid(),
            "/spec/workloadSelector",
            json!({"labels": {"app": "reviews"}}),
        ),
        &["spec: only one of WorkloadSelector or Endpoints can be set"],
    );
}

#[test]
fn workload_selector_alone_passes_but_not_with_a_wildcard() {
    let selector = with(
        &without(&valid(), "/spec/endpoints"),
        "/spec/workloadSelector",
        json!({"labels": {"app": "reviews"}}),
    );
    assert_valid(&selector);
    check(
        &with(
            &selector,
            "/spec/workloadSelector/labels/app",
            json!("rev*"),
        ),
        &["spec.workloadSelector.labels[app]: wildcard is not supported in selector"],
    );
}

#[test]
fn cidr_address_with_dns_resolution() {
    check(
        &with(&valid(), "/spec/resolution", json!("DNS")),
        &["spec: CIDR addresses are allowed only for NONE/STATIC resolution types"],
    );
    // Without a CIDR, DNS is fine.
    let plain = with(&valid(), "/spec/addresses", json!(["240.240.0.1"]));
    assert_valid(&with(&plain, "/spec/resolution", json!("DNS")));
}

#[test]
fn none_resolution_with_endpoints() {
    check(
        &with(&valid(), "/spec/resolution", json!("NONE")),
        &["spec: NONE mode cannot set endpoints"],
    );
    // No resolution means NONE.
    check(
        &without(&valid(), "/spec/resolution"),
        &["spec: NONE mode cannot set endpoints"],
    );
}

#[test]
fn dns_round_robin_with_two_endpoints() {
    let plain = with(&valid(), "/spec/addresses", json!(["240.240.0.1"]));
    check(
        &with(&plain, "/spec/resolution", json!("DNS_ROUND_ROBIN")),
        &["spec: DNS_ROUND_ROBIN mode cannot have multiple endpoints"],
    );
    let one = without(&plain, "/spec/endpoints/1");
    assert_valid(&with(&one, "/spec/resolution", json!("DNS_ROUND_ROBIN")));
}

#[test]
fn endpoint_without_address_or_network() {
    check(
        &with(
            &valid(),
            "/spec/endpoints/1",
            json!({"locality": "us-west", "weight": 2}),
        ),
        &["spec.endpoints[1]: Address is required"],
    );
}

#[test]
fn bad_endpoint_port_name() {
    check(
        &with(
            &valid(),
            "/spec/endpoints/0/ports",
            json!({"http_1": 15443}),
        ),
        &["spec.endpoints[0].ports: port name must be valid"],
    );
    let long = "p".repeat(63);
    check(
        &with(&valid(), "/spec/endpoints/0/ports", json!({ long: 15443 })),
        &["spec.endpoints[0].ports: port name must be valid"],
    );
}

#[test]
fn endpoint_port_zero() {
    check(
        &with(&valid(), "/spec/endpoints/0/ports/http", json!(0)),
        &["spec.endpoints[0].ports[http]: port must be between 1-65535"],
    );
}

#[test]
fn service_port_and_target_port_out_of_range() {
    check(
        &with(&valid(), "/spec/ports/0/number", json!(0)),
        &["spec.ports[0].number: port must be between 1-65535"],
    );
    check(
        &with(&valid(), "/spec/ports/1/targetPort", json!(70000)),
        &["spec.ports[1].targetPort: port must be between 1-65535"],
    );
}

fn uds(address: &str, ports: bool) -> Json {
    let obj = with(&valid(), "/spec/endpoints/0/address", json!(address));
    if ports {
        obj
    } else {
        without(&obj, "/spec/endpoints/0/ports")
    }
}

#[test]
fn uds_rules() {
    assert_valid(&uds("unix:///var/run/reviews.sock", false));
    assert_valid(&uds("unix://@abstract", false));
    check(
        &uds("unix://var/run/reviews.sock", false),
        &["spec.endpoints[0].address: UDS must be an absolute path or abstract socket"],
    );
    check(
        &uds("unix:///var/run/", false),
        &["spec.endpoints[0].address: UDS may not be a dir"],
    );
    check(
        &uds("unix:///var/run/reviews.sock", true),
        &["spec.endpoints[0]: UDS may not include ports"],
    );
}

#[test]
fn uds_without_path_is_an_evaluation_error() {
    // `substring(7, 8)` of "unix://" is out of range: the API server reports
    // the error with the rule's message.
    check(
        &uds("unix://", false),
        &[
            "spec.endpoints[0].address: index out of range: 8 evaluating rule: UDS must be an \
             absolute path or abstract socket",
            "spec.endpoints[0].address: UDS may not be a dir",
        ],
    );
}

// Structural failures.

#[test]
fn unknown_fields_are_rejected() {
    check(
        &with(&valid(), "/spec/foo", json!(1)),
        &["spec.foo: unknown field \"spec.foo\""],
    );
    check(
        &with(&valid(), "/spec/ports/0/appProtocol", json!("http")),
        &["spec.ports[0].appProtocol: unknown field \"spec.ports[0].appProtocol\""],
    );
    check(
        &with(&valid(), "/extra", json!({})),
        &["extra: unknown field \"extra\""],
    );
}

#[test]
fn status_preserves_unknown_fields() {
    assert_valid(&with(
        &valid(),
        "/status",
        json!({"observedGeneration": 3, "anything": {"goes": true}}),
    ));
    check(
        &with(
            &valid(),
            "/status",
            json!({"validationMessages": [{"level": "FATAL"}]}),
        ),
        &[
            "status.validationMessages[0].level: Unsupported value: \"FATAL\": supported values: \
           \"UNKNOWN\", \"ERROR\", \"WARNING\", \"INFO\"",
        ],
    );
}

#[test]
fn wrong_types() {
    check(
        &with(&valid(), "/spec/hosts", json!("reviews.example.com")),
        &["spec.hosts: must be of type array: \"string\""],
    );
    check(
        &with(&valid(), "/spec/ports/0/number", json!("9080")),
        &[
            "spec.ports[0].number: must be of type integer: \"string\"",
            "spec.ports[0].number: invalid data, expected int, got string evaluating rule: port \
             must be between 1-65535",
        ],
    );
    check(
        &with(&valid(), "/spec/endpoints/0/weight", json!(1.5)),
        &["spec.endpoints[0].weight: must be of type integer: \"number\""],
    );
    // 2.0 is an integer to the API server.
    assert_valid(&with(&valid(), "/spec/endpoints/0/weight", json!(2.0)));
}

#[test]
fn enum_violation() {
    check(
        &with(&valid(), "/spec/location", json!("INSIDE")),
        &[
            "spec.location: Unsupported value: \"INSIDE\": supported values: \"MESH_EXTERNAL\", \
           \"MESH_INTERNAL\"",
        ],
    );
}

#[test]
fn missing_required_hosts() {
    check(
        &without(&valid(), "/spec/hosts"),
        &["spec.hosts: Required value"],
    );
    check(&without(&valid(), "/spec"), &["spec: Required value"]);
}

#[test]
fn value_bounds() {
    check(
        &with(&valid(), "/spec/hosts", json!([])),
        &["spec.hosts: should have at least 1 items"],
    );
    check(
        &with(&valid(), "/spec/addresses/0", json!("a".repeat(65))),
        &["spec.addresses[0]: Too long: may not be more than 64 bytes"],
    );
    check(
        &with(&valid(), "/spec/endpoints/0/weight", json!(-1)),
        &["spec.endpoints[0].weight: should be greater than or equal to 0"],
    );
}

#[test]
fn duplicate_port_name_in_list_map() {
    check(
        &with(&valid(), "/spec/ports/1/name", json!("http")),
        &["spec.ports[1]: Duplicate value: {\"name\":\"http\"}"],
    );
}

#[test]
fn invalid_metadata() {
    check(
        &with(&valid(), "/metadata/name", json!("Reviews_Cluster2")),
        &[
            "metadata.name: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
           characters, '-' or '.', and must start and end with an alphanumeric character (e.g. \
           'example.com', regex used for validation is \
           '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ],
    );
    check(
        &with(&valid(), "/metadata/name", json!("a".repeat(254))),
        &["metadata.name: must be no more than 253 characters"],
    );
    check(
        &without(&valid(), "/metadata/name"),
        &["metadata.name: Required value: name or generateName is required"],
    );
    assert_valid(&with(
        &without(&valid(), "/metadata/name"),
        "/metadata/generateName",
        json!("reviews-"),
    ));
    check(
        &without(&valid(), "/metadata/namespace"),
        &["metadata.namespace: Required value"],
    );
    let finalized = with(
        &valid(),
        "/metadata/finalizers",
        json!(["meshpeer.io/cleanup"]),
    );
    assert_valid(&finalized);
    check(
        &with(&finalized, "/metadata/bogus", json!(1)),
        &["metadata.bogus: unknown field \"metadata.bogus\""],
    );
    let bad_label = with(&valid(), "/metadata/labels/Bad_Prefix~1x", json!("-bad-"));
    let vs = violations(&bad_label);
    assert_eq!(vs.len(), 2, "{vs:#?}");
    assert!(
        vs[0].starts_with(
            "metadata.labels: Invalid value: \"Bad_Prefix/x\": prefix part a lowercase RFC 1123 \
             subdomain must consist of"
        ),
        "{}",
        vs[0]
    );
    assert!(
        vs[1].starts_with(
            "metadata.labels: Invalid value: \"-bad-\": a valid label must be an empty string"
        ),
        "{}",
        vs[1]
    );
    let vs = violations(&with(&valid(), "/metadata/labels/a~1b~1c", json!("x")));
    assert_eq!(vs.len(), 1, "{vs:#?}");
    assert!(
        vs[0].contains("a qualified name must consist of"),
        "{}",
        vs[0]
    );
    let vs = violations(&with(
        &valid(),
        "/metadata/annotations/-x",
        json!("anything goes"),
    ));
    assert_eq!(vs.len(), 1, "{vs:#?}");
    assert!(
        vs[0].starts_with("metadata.annotations: Invalid value: \"-x\": name part must consist"),
        "{}",
        vs[0]
    );
}

#[test]
fn violations_are_collected_in_order() {
    let obj = with(&valid(), "/spec/foo", json!(1));
    let obj = with(&obj, "/metadata/name", json!(""));
    let obj = with(&obj, "/spec/location", json!("INSIDE"));
    let obj = with(&obj, "/spec/hosts/1", json!("*"));
    let obj = with(&obj, "/spec/ports/1/number", json!(9080));
    let vs = violations(&obj);
    assert_eq!(
        vs,
        [
            "spec.foo: unknown field \"spec.foo\"",
            "metadata.name: Required value: name or generateName is required",
            "spec.location: Unsupported value: \"INSIDE\": supported values: \"MESH_EXTERNAL\", \
             \"MESH_INTERNAL\"",
            "spec.hosts[1]: hostname cannot be wildcard",
            "spec.ports: port number cannot be duplicated",
        ]
    );
    assert_eq!(violations(&obj), vs, "deterministic");
}

#[test]
fn versions_and_kinds() {
    for version in ["v1alpha3", "v1beta1"] {
        assert_valid(&with(
            &valid(),
            "/apiVersion",
            json!(format!("networking.istio.io/{version}")),
        ));
    }
    check(
        &with(&valid(), "/apiVersion", json!("networking.istio.io/v2")),
        &[
            "apiVersion: no version \"v2\" in CRD serviceentries.networking.istio.io (versions: \
           v1, v1alpha3, v1beta1)",
        ],
    );
    check(
        &with(&valid(), "/kind", json!("ServiceEntries")),
        &["kind: no CRD for kind \"ServiceEntries\" in group \"networking.istio.io\""],
    );
    check(
        &with(&valid(), "/apiVersion", json!("v1")),
        &["kind: no CRD for kind \"ServiceEntry\" in group \"\""],
    );
    check(&without(&valid(), "/kind"), &["kind: Required value"]);
}
