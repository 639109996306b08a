//! HTTPRoute (gateway.networking.k8s.io/v1).

mod common;

use common::{assert_valid, violations, with, without, yaml};
use serde_json::{Value as Json, json};

fn valid() -> Json {
    yaml(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: bookinfo
spec:
  parentRefs:
  - name: istio-eastwest
    namespace: istio-eastwest
    sectionName: cross-network
  hostnames:
  - reviews.example.com
  rules:
  - name: v1-and-v2
    matches:
    - path:
        type: PathPrefix
        value: /reviews
      headers:
      - name: x-canary
        value: "true"
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: x-peer
          value: cluster2
    backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - name: reviews-v2
      port: 9080
      weight: 10
    timeouts:
      request: 10s
      backendRequest: 2s
  - backendRefs:
    - name: reviews-v3
      port: 9080
"#,
    )
}

#[test]
fn valid_http_route_passes() {
    assert_valid(&valid());
}

#[test]
fn backend_service_without_port() {
    // `group` ("") and `kind` ("Service") come from defaults.
    assert_eq!(
        violations(&without(&valid(), "/spec/rules/1/backendRefs/0/port")),
        ["spec.rules[1].backendRefs[0]: Must have port for Service reference"]
    );
    // Not a Service: no port needed.
    let other = with(
        &without(&valid(), "/spec/rules/1/backendRefs/0/port"),
        "/spec/rules/1/backendRefs/0/kind",
        json!("ServiceImport"),
    );
    let other = with(
        &other,
        "/spec/rules/1/backendRefs/0/group",
        json!("multicluster.x-k8s.io"),
    );
    assert_valid(&other);
}

#[test]
fn path_match_rules() {
    assert_eq!(
        violations(&with(
            &valid(),
            "/spec/rules/0/matches/0/path/value",
            json!("reviews")
        )),
        [
            "spec.rules[0].matches[0].path: value must be an absolute path and start with '/' when \
          type one of ['Exact', 'PathPrefix']"
        ]
    );
    assert_eq!(
        violations(&with(
            &valid(),
            "/spec/rules/0/matches/0/path/value",
            json!("/a//b")
        )),
        [
            "spec.rules[0].matches[0].path: must not contain '//' when type one of ['Exact', \
          'PathPrefix']"
        ]
    );
}

#[test]
fn timeouts_are_compared_as_durations() {
    assert_eq!(
        violations(&with(
            &valid(),
            "/spec/rules/0/timeouts/backendRequest",
            json!("1m")
        )),
        ["spec.rules[0].timeouts: backendRequest timeout cannot be longer than request timeout"]
    );
    // A zero request timeout disables the check.
    let zero = with(&valid(), "/spec/rules/0/timeouts/request", json!("0s"));
    assert_valid(&with(
        &zero,
        "/spec/rules/0/timeouts/backendRequest",
        json!("1m"),
    ));
}

#[test]
fn redirect_with_backends_and_parent_refs() {
    let redirect = with(
        &valid(),
        "/spec/rules/0/filters/1",
        json!({"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}),
    );
    assert_eq!(
        violations(&redirect),
        ["spec.rules[0]: RequestRedirect filter must not be used together with backendRefs"]
    );
    let mismatched = with(
        &valid(),
        "/spec/rules/0/filters/0/type",
        json!("ResponseHeaderModifier"),
    );
    assert_eq!(
        violations(&mismatched),
        [
            "spec.rules[0].filters[0]: filter.requestHeaderModifier must be nil if the \
             filter.type is not RequestHeaderModifier",
            "spec.rules[0].filters[0]: filter.responseHeaderModifier must be specified for \
             ResponseHeaderModifier filter.type",
        ]
    );
    let same_parent = with(
        &valid(),
        "/spec/parentRefs/1",
        json!({"name": "istio-eastwest", "namespace": "istio-eastwest"}),
    );
    assert_eq!(
        violations(&same_parent),
        [
            "spec.parentRefs: sectionName or port must be specified when parentRefs includes 2 or \
          more references to the same parent"
        ]
    );
}

#[test]
fn rule_names_are_unique() {
    assert_eq!(
        violations(&with(&valid(), "/spec/rules/1/name", json!("v1-and-v2"))),
        ["spec.rules: Rule name must be unique within the route"]
    );
}

#[test]
fn default_rules_pass() {
    // `rules` defaults to one PathPrefix "/" match.
    assert_valid(&without(&valid(), "/spec/rules"));
}
