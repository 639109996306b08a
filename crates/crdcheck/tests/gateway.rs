//! Gateway (gateway.networking.k8s.io/v1): the documented east-west and
//! remote-peer gateways pass; CEL rules of the Gateway CRD reject bad
//! listeners and addresses; the status schema is enforced too.

mod common;

use common::{assert_valid, violations, with, without, yaml_docs};
use serde_json::{Value as Json, json};

const DOCUMENTED: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  labels:
    istio.io/expose-istiod: "15012"
    topology.istio.io/network: "cluster1"
    topology.kubernetes.io/region: "us-east"
    topology.kubernetes.io/zone: "us-east-1"
  name: istio-eastwest
  namespace: istio-eastwest
spec:
  gatewayClassName: istio-eastwest
  listeners:
  - name: cross-network
    port: 15008
    protocol: HBONE
    tls:
      mode: Passthrough
  - name: xds-tls
    port: 15012
    protocol: TLS
    tls:
      mode: Passthrough
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  annotations:
    gateway.istio.io/service-account: istio-eastwest
    gateway.istio.io/trust-domain: cluster2
  labels:
    topology.istio.io/network: cluster2
    topology.kubernetes.io/region: us-west
  name: istio-remote-peer-cluster2
  namespace: istio-eastwest
spec:
  addresses:
  - type: IPAddress
    value: 192.0.2.10
  gatewayClassName: istio-remote
  listeners:
  - name: cross-network
    port: 15008
    protocol: HBONE
    tls:
      mode: Passthrough
  - name: xds-tls
    port: 15012
    protocol: TLS
    tls:
      mode: Passthrough
"#;

fn eastwest() -> Json {
    yaml_docs(DOCUMENTED).remove(0)
}

fn remote() -> Json {
    yaml_docs(DOCUMENTED).remove(1)
}

fn check(obj: &Json, expected: &[&str]) {
    assert_eq!(violations(obj), expected, "for {obj:#}");
}

#[test]
fn documented_gateways_pass() {
    let docs = yaml_docs(DOCUMENTED);
    assert_eq!(docs.len(), 2);
    for doc in &docs {
        assert_valid(doc);
    }
}

#[test]
fn v1beta1_is_served_too() {
    assert_valid(&with(
        &remote(),
        "/apiVersion",
        json!("gateway.networking.k8s.io/v1beta1"),
    ));
}

// CEL rules of the listeners list.

#[test]
fn duplicate_listener_names() {
    // Rejected twice, as by the API server: the list is a map keyed by name,
    // and a CEL rule requires unique names.
    check(
        &with(
            &eastwest(),
            "/spec/listeners/1/name",
            json!("cross-network"),
        ),
        &[
            "spec.listeners[1]: Duplicate value: {\"name\":\"cross-network\"}",
            "spec.listeners: Listener name must be unique within the Gateway",
        ],
    );
}

#[test]
fn https_listener_must_terminate() {
    check(
        &with(&eastwest(), "/spec/listeners/1/protocol", json!("HTTPS")),
        &["spec.listeners: tls mode must be Terminate for protocol HTTPS"],
    );
}

#[test]
fn tls_listener_needs_tls() {
    check(
        &without(&eastwest(), "/spec/listeners/1/tls"),
        &["spec.listeners: tls mode must be set for protocol TLS"],
    );
}

#[test]
fn tcp_listener_must_not_have_tls_or_hostname() {
    check(
        &with(&eastwest(), "/spec/listeners/1/protocol", json!("TCP")),
        &["spec.listeners: tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']"],
    );
    let tcp = with(
        &eastwest(),
        "/spec/listeners/1",
        json!({"name": "tcp", "port": 15012, "protocol": "TCP"}),
    );
    assert_valid(&tcp);
    check(
        &with(
            &tcp,
            "/spec/listeners/1/hostname",
            json!("istiod.example.com"),
        ),
        &["spec.listeners: hostname must not be specified for protocols ['TCP', 'UDP']"],
    );
}

#[test]
fn listeners_must_differ_in_port_protocol_or_hostname() {
    let same = with(&eastwest(), "/spec/listeners/1/port", json!(15008));
    check(
        &with(&same, "/spec/listeners/1/protocol", json!("HBONE")),
        &[
            "spec.listeners: Combination of port, protocol and hostname must be unique for each \
           listener",
        ],
    );
}

#[test]
fn terminate_without_certificates_fails_after_defaulting() {
    // `tls: {}` gets `mode: Terminate` by default before the rules run; the
    // rule then reads the missing `certificateRefs`, an evaluation error.
    let https = with(
        &eastwest(),
        "/spec/listeners/1",
        json!({"name": "https", "port": 443, "protocol": "HTTPS", "tls": {}}),
    );
    check(
        &https,
        &[
            "spec.listeners[1].tls: no such key: certificateRefs evaluating rule: certificateRefs \
           or options must be specified when mode is Terminate",
        ],
    );
    assert_valid(&with(
        &https,
        "/spec/listeners/1/tls/certificateRefs",
        json!([{"name": "istio-eastwest-cert"}]),
    ));
}

// CEL rules and the schema of addresses.

#[test]
fn duplicate_ip_addresses() {
    // The second address has no type: it defaults to IPAddress.
    check(
        &with(
            &remote(),
            "/spec/addresses/1",
            json!({"value": "192.0.2.10"}),
        ),
        &["spec.addresses: IPAddress values must be unique"],
    );
}

#[test]
fn hostname_address_must_be_a_hostname() {
    assert_valid(&with(
        &remote(),
        "/spec/addresses/0",
        json!({"type": "Hostname", "value": "peer.cluster2.example.com"}),
    ));
    check(
        &with(
            &remote(),
            "/spec/addresses/0",
            json!({"type": "Hostname", "value": "Peer_Cluster2"}),
        ),
        &[
            "spec.addresses[0]: Hostname value must be empty or contain only valid characters \
           (matching ^(\\*\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$)",
        ],
    );
}

#[test]
fn ip_address_must_be_an_ip() {
    assert_valid(&with(
        &remote(),
        "/spec/addresses/0/value",
        json!("2001:db8::10"),
    ));
    // Checked by the schema (`oneOf` with `format: ipv4`/`ipv6`), not by CEL.
    check(
        &with(&remote(), "/spec/addresses/0/value", json!("192.0.2.300")),
        &[
            "spec.addresses[0]: must validate one and only one schema (oneOf). Found none valid",
            "spec.addresses[0].value: must validate at least one schema (anyOf)",
            "spec.addresses[0].value: must be of type ipv4: \"192.0.2.300\"",
        ],
    );
}

#[test]
fn infrastructure_label_keys() {
    let labelled = with(
        &remote(),
        "/spec/infrastructure",
        json!({"labels": {"topology.istio.io/network": "cluster2"}}),
    );
    assert_valid(&labelled);
    check(
        &with(&labelled, "/spec/infrastructure/labels/bad key", json!("x")),
        &[
            "spec.infrastructure.labels: Label keys must be in the form of an optional DNS subdomain \
           prefix followed by a required name segment of up to 63 characters.",
        ],
    );
}

#[test]
fn structural_failures() {
    check(
        &without(&eastwest(), "/spec/gatewayClassName"),
        &["spec.gatewayClassName: Required value"],
    );
    check(
        &with(&eastwest(), "/spec/listeners/0/port", json!(0)),
        &["spec.listeners[0].port: should be greater than or equal to 1"],
    );
    check(
        &with(
            &eastwest(),
            "/spec/listeners/0/tls/mode",
            json!("Reencrypt"),
        ),
        &[
            "spec.listeners[0].tls.mode: Unsupported value: \"Reencrypt\": supported values: \
           \"Terminate\", \"Passthrough\"",
        ],
    );
    check(
        &with(
            &eastwest(),
            "/spec/listeners/0/tls/frontendValidation",
            json!({}),
        ),
        &["spec.listeners[0].tls.frontendValidation: unknown field \
           \"spec.listeners[0].tls.frontendValidation\""],
    );
    check(
        &with(&eastwest(), "/metadata/namespace", json!("istio.eastwest")),
        &[
            "metadata.namespace: a lowercase RFC 1123 label must consist of lower case alphanumeric \
           characters or '-', and must start and end with an alphanumeric character (e.g. \
           'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        ],
    );
}

// The status subresource.

fn with_status() -> Json {
    with(
        &remote(),
        "/status",
        json!({
            "addresses": [
                {"type": "IPAddress", "value": "192.0.2.10"},
                {"type": "Hostname", "value": "peer.cluster2.example.com"}
            ],
            "conditions": [
                {
                    "type": "Accepted",
                    "status": "True",
                    "reason": "Accepted",
                    "message": "",
                    "lastTransitionTime": "2025-01-02T03:04:05Z",
                    "observedGeneration": 1
                },
                {
                    "type": "Programmed",
                    "status": "True",
                    "reason": "Programmed",
                    "message": "Resource programmed",
                    "lastTransitionTime": "2025-01-02T03:04:05Z",
                    "observedGeneration": 1
                }
            ],
            "listeners": [{
                "name": "cross-network",
                "attachedRoutes": 0,
                "supportedKinds": [],
                "conditions": [{
                    "type": "Programmed",
                    "status": "True",
                    "reason": "Programmed",
                    "message": "",
                    "lastTransitionTime": "2025-01-02T03:04:05.123456Z"
                }]
            }]
        }),
    )
}

#[test]
fn status_is_validated_against_the_status_schema() {
    assert_valid(&with_status());
    check(
        &with(
            &with_status(),
            "/status/conditions/0/status",
            json!("Maybe"),
        ),
        &[
            "status.conditions[0].status: Unsupported value: \"Maybe\": supported values: \
           \"True\", \"False\", \"Unknown\"",
        ],
    );
    check(
        &without(&with_status(), "/status/conditions/1/reason"),
        &["status.conditions[1].reason: Required value"],
    );
    check(
        &with(
            &with_status(),
            "/status/conditions/1/lastTransitionTime",
            json!("yesterday"),
        ),
        &["status.conditions[1].lastTransitionTime: must be of type date-time: \"yesterday\""],
    );
    check(
        &with(
            &with_status(),
            "/status/conditions/1/type",
            json!("Accepted"),
        ),
        &["status.conditions[1]: Duplicate value: {\"type\":\"Accepted\"}"],
    );
    check(
        &with(&with_status(), "/status/unknown", json!(1)),
        &["status.unknown: unknown field \"status.unknown\""],
    );
}

#[test]
fn status_addresses_rules() {
    check(
        &with(
            &with_status(),
            "/status/addresses/1/value",
            json!("Peer_Cluster2"),
        ),
        &[
            "status.addresses[1]: Hostname value must only contain valid characters (matching \
           ^(\\*\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$)",
        ],
    );
    check(
        &with(
            &with_status(),
            "/status/addresses/0/value",
            json!("not-an-ip"),
        ),
        &[
            "status.addresses[0]: must validate one and only one schema (oneOf). Found none valid",
            "status.addresses[0].value: must validate at least one schema (anyOf)",
            "status.addresses[0].value: must be of type ipv4: \"not-an-ip\"",
        ],
    );
    check(
        &without(&with_status(), "/status/addresses/0/value"),
        &["status.addresses[0].value: Required value"],
    );
}
