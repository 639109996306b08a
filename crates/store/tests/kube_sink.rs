//! `KubeSink` against a mocked API server (tower-test). Each test runs the
//! sink call next to a script of the exact exchanges a real API server
//! would see, in order: method, path, query, content type, body, answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::client::Body;
use meshpeer_model::NsName;
use meshpeer_model::objects::{
    Condition, ServiceEntry, ServiceEntryPort, ServiceEntrySpec, WorkloadEntry, WorkloadEntrySpec,
};
use meshpeer_model::routes::RouteStatus;
use meshpeer_store::kube_sink::KubeSink;
use meshpeer_store::{Output, PeerStatus, Sink, SinkReport, desired};

fn want<I: IntoIterator<Item = ServiceEntry>>(entries: I) -> Output {
    Output::of_entries(desired(entries))
}
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;
type Responder = SendResponse<Response<Body>>;

const SE_PATH: &str = "/apis/networking.istio.io/v1/namespaces/istio-system/serviceentries";
const MANAGED: &str = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmeshpeer";
const APPLY_QUERY: &str = "force=true&fieldManager=meshpeer&fieldValidation=Strict";
const PEER_GW_PATH: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/istio-eastwest/gateways/istio-remote-peer-cluster2";

fn mock_api() -> (Client, ApiHandle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

/// One request as the API server sees it.
struct Seen {
    method: Method,
    /// Path and query; kube-rs's leading empty query parameter (`?&`) dropped.
    target: String,
    content_type: Option<String>,
    body: Option<Value>,
    responder: Responder,
}

async fn next(api: &mut ApiHandle) -> Seen {
    let (req, responder) = tokio::time::timeout(Duration::from_secs(10), api.next_request())
        .await
        .expect("a request in time")
        .expect("client alive");
    let (parts, body) = req.into_parts();
    let query: Vec<&str> = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .collect();
    let target = if query.is_empty() {
        parts.uri.path().to_owned()
    } else {
        format!("{}?{}", parts.uri.path(), query.join("&"))
    };
    let bytes = body.collect_bytes().await.unwrap();
    Seen {
        method: parts.method,
        target,
        content_type: parts
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap()),
        responder,
    }
}

fn answer(responder: Responder, status: StatusCode, body: Value) {
    responder.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

/// Nothing more was sent: every request of the finished call was answered.
fn assert_quiet(api: &mut ApiHandle) {
    if let Some(Some((req, _))) = api.next_request().now_or_never() {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
}

/// A call expected to finish without any request (none is answered).
async fn quick<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("finished without waiting for the API server")
}

fn has_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.iter().any(has_null),
        Value::Object(o) => o.values().any(has_null),
        _ => false,
    }
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The generated ServiceEntry of httpbin/in-ambient (G7), as rendered.
fn in_ambient(vip: &str) -> ServiceEntry {
    ServiceEntry {
        metadata: ObjectMeta {
            name: Some("autogen.httpbin.in-ambient".into()),
            namespace: Some("istio-system".into()),
            labels: Some(strings(&[
                ("app.kubernetes.io/managed-by", "meshpeer"),
                ("meshpeer.io/scope", "global"),
                ("meshpeer.io/service-name", "in-ambient"),
                ("meshpeer.io/service-namespace", "httpbin"),
            ])),
            annotations: Some(strings(&[
                ("meshpeer.io/clusters", "cluster1,cluster2"),
                ("networking.istio.io/traffic-distribution", "PreferNetwork"),
            ])),
            ..Default::default()
        },
        spec: ServiceEntrySpec {
            hosts: vec!["in-ambient.httpbin.mesh.internal".into()],
            addresses: vec![vip.into()],
            ports: vec![ServiceEntryPort {
                number: 8000,
                protocol: Some("HTTP".into()),
                name: "http".into(),
                target_port: None,
            }],
            location: Some("MESH_INTERNAL".into()),
            resolution: Some("STATIC".into()),
            endpoints: vec![WorkloadEntrySpec {
                address: Some("10.244.0.12".into()),
                ports: BTreeMap::from([("http".to_owned(), 8080)]),
                labels: strings(&[("topology.istio.io/cluster", "cluster1")]),
                network: Some("cluster1".into()),
                locality: Some("us-east/us-east-1".into()),
                ..Default::default()
            }],
            ..Default::default()
        },
    }
}

/// The exact SSA body for [`in_ambient`]: apiVersion and kind, only the
/// fields meshpeer owns, no nulls.
fn in_ambient_body(vip: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {
            "name": "autogen.httpbin.in-ambient",
            "namespace": "istio-system",
            "labels": {
                "app.kubernetes.io/managed-by": "meshpeer",
                "meshpeer.io/scope": "global",
                "meshpeer.io/service-name": "in-ambient",
                "meshpeer.io/service-namespace": "httpbin",
            },
            "annotations": {
                "meshpeer.io/clusters": "cluster1,cluster2",
                "networking.istio.io/traffic-distribution": "PreferNetwork",
            },
        },
        "spec": {
            "hosts": ["in-ambient.httpbin.mesh.internal"],
            "addresses": [vip],
            "ports": [{"number": 8000, "protocol": "HTTP", "name": "http"}],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "endpoints": [{
                "address": "10.244.0.12",
                "ports": {"http": 8080},
                "labels": {"topology.istio.io/cluster": "cluster1"},
                "network": "cluster1",
                "locality": "us-east/us-east-1",
            }],
        },
    })
}

/// `body` as the API server holds it after the apply: server fields added.
fn stored(mut body: Value, uid: &str, resource_version: &str) -> Value {
    let meta = body["metadata"].as_object_mut().unwrap();
    meta.insert("uid".into(), json!(uid));
    meta.insert("resourceVersion".into(), json!(resource_version));
    meta.insert("generation".into(), json!(1));
    meta.insert("creationTimestamp".into(), json!("2026-11-22T09:00:00Z"));
    meta.insert(
        "managedFields".into(),
        json!([{
            "manager": "meshpeer",
            "operation": "Apply",
            "apiVersion": "networking.istio.io/v1",
            "time": "2026-11-22T09:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:hosts": {}}},
        }]),
    );
    body
}

fn se_list(resource_version: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntryList",
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
}

/// LIST of the managed ServiceEntries in istio-system.
async fn expect_list(api: &mut ApiHandle, items: Vec<Value>) {
    let req = next(api).await;
    assert_eq!(req.method, Method::GET);
    assert_eq!(req.target, format!("{SE_PATH}?{MANAGED}"));
    answer(req.responder, StatusCode::OK, se_list("2000", items));
}

const WE_PATH: &str = "/apis/networking.istio.io/v1/namespaces/istio-system/workloadentries";

/// LIST of the managed WorkloadEntries in istio-system.
async fn expect_we_list(api: &mut ApiHandle, items: Vec<Value>) {
    let req = next(api).await;
    assert_eq!(req.method, Method::GET);
    assert_eq!(req.target, format!("{WE_PATH}?{MANAGED}"));
    answer(
        req.responder,
        StatusCode::OK,
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntryList",
            "metadata": {"resourceVersion": "2000"},
            "items": items,
        }),
    );
}

/// A DELETE of `path` whose precondition `key` (`uid` or
/// `resourceVersion`) is `value`; answered as deleted.
async fn expect_delete(api: &mut ApiHandle, path: &str, key: &str, value: &str) {
    let req = next(api).await;
    assert_eq!(req.method, Method::DELETE);
    assert_eq!(req.target, path);
    let body = req.body.unwrap();
    assert_eq!(body["preconditions"][key], value, "{body:#}");
    answer(
        req.responder,
        StatusCode::OK,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    );
}

/// Server-side apply of one ServiceEntry; answers with the stored object.
async fn expect_apply(api: &mut ApiHandle, name: &str, body: &Value, resource_version: &str) {
    let req = next(api).await;
    assert_eq!(req.method, Method::PATCH);
    assert_eq!(req.target, format!("{SE_PATH}/{name}?{APPLY_QUERY}"));
    assert_eq!(
        req.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let sent = req.body.unwrap();
    assert!(!has_null(&sent), "no nulls in an apply body: {sent:#}");
    assert_eq!(&sent, body);
    answer(
        req.responder,
        StatusCode::OK,
        stored(
            sent,
            "2d6a1c8e-0000-4000-8000-000000000001",
            resource_version,
        ),
    );
}

#[tokio::test]
async fn g7_apply_is_a_forced_server_side_apply_and_unchanged_objects_are_not_resent() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::ZERO);
    assert_eq!(
        sink.describe(),
        "Kubernetes istio-system (field manager meshpeer)"
    );
    let desired = want(vec![in_ambient("240.240.0.10")]);

    // First apply: nothing managed yet -> one PATCH (apply-patch), forced.
    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        expect_list(&mut api, vec![]).await;
        expect_apply(
            &mut api,
            "autogen.httpbin.in-ambient",
            &in_ambient_body("240.240.0.10"),
            "2001",
        )
        .await;
        expect_we_list(&mut api, vec![]).await;
    });
    assert_eq!(
        report.unwrap(),
        SinkReport {
            applied: 1,
            unchanged: 0,
            deleted: 0
        }
    );
    assert_quiet(&mut api);

    // Second apply of the same: the server still holds what was applied
    // (same resourceVersion) -> LIST only, no PATCH.
    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        let held = stored(
            in_ambient_body("240.240.0.10"),
            "2d6a1c8e-0000-4000-8000-000000000001",
            "2001",
        );
        expect_list(&mut api, vec![held]).await;
        expect_we_list(&mut api, vec![]).await;
    });
    assert_eq!(
        report.unwrap(),
        SinkReport {
            applied: 0,
            unchanged: 1,
            deleted: 0
        }
    );
    assert_quiet(&mut api);

    // A changed object is applied again.
    let changed = want(vec![in_ambient("240.240.0.11")]);
    let (report, ()) = tokio::join!(sink.apply(&changed), async {
        let held = stored(
            in_ambient_body("240.240.0.10"),
            "2d6a1c8e-0000-4000-8000-000000000001",
            "2001",
        );
        expect_list(&mut api, vec![held]).await;
        expect_apply(
            &mut api,
            "autogen.httpbin.in-ambient",
            &in_ambient_body("240.240.0.11"),
            "2002",
        )
        .await;
        expect_we_list(&mut api, vec![]).await;
    });
    assert_eq!(report.unwrap().applied, 1);
    assert_quiet(&mut api);
}

#[tokio::test]
async fn g12_apply_deletes_only_stale_managed_objects_and_never_unlabelled_ones() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::ZERO);
    let desired = want(vec![in_ambient("240.240.0.10")]);

    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        let mut gone = stored(
            in_ambient_body("240.240.0.12"),
            "2d6a1c8e-0000-4000-8000-0000000000ff",
            "1500",
        );
        gone["metadata"]["name"] = json!("autogen.httpbin.gone");
        // A user's ServiceEntry. A real server would not list it under the
        // selector; the sink checks the label itself all the same.
        let mut users = stored(
            in_ambient_body("240.240.0.13"),
            "2d6a1c8e-0000-4000-8000-0000000000aa",
            "1400",
        );
        users["metadata"]["name"] = json!("httpbin-bar-global");
        users["metadata"]["labels"] = json!({"app": "httpbin"});
        expect_list(&mut api, vec![gone, users]).await;

        expect_apply(
            &mut api,
            "autogen.httpbin.in-ambient",
            &in_ambient_body("240.240.0.10"),
            "2001",
        )
        .await;

        // Stale: deleted, only if it is still the object that was listed.
        let req = next(&mut api).await;
        assert_eq!(req.method, Method::DELETE);
        assert_eq!(req.target, format!("{SE_PATH}/autogen.httpbin.gone"));
        assert_eq!(
            req.body,
            Some(json!({"preconditions": {"uid": "2d6a1c8e-0000-4000-8000-0000000000ff"}}))
        );
        answer(
            req.responder,
            StatusCode::OK,
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": "autogen.httpbin.gone",
                    "group": "networking.istio.io",
                    "kind": "serviceentries",
                    "uid": "2d6a1c8e-0000-4000-8000-0000000000ff"
                }
            }),
        );
        expect_we_list(&mut api, vec![]).await;
    });
    assert_eq!(
        report.unwrap(),
        SinkReport {
            applied: 1,
            unchanged: 0,
            deleted: 1
        }
    );
    assert_quiet(&mut api);
}

#[tokio::test]
async fn g11_existing_reads_managed_objects_back_so_a_restart_rewrites_nothing() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::ZERO);
    let held = stored(
        in_ambient_body("240.240.0.10"),
        "2d6a1c8e-0000-4000-8000-000000000001",
        "2001",
    );

    let (existing, ()) = tokio::join!(sink.existing(), async {
        expect_list(&mut api, vec![held.clone()]).await;
        expect_we_list(&mut api, vec![]).await;
    });
    let existing = existing.unwrap().entries;
    assert_eq!(existing.len(), 1);
    assert_eq!(existing[0].spec.addresses, ["240.240.0.10"]);
    assert_eq!(existing[0].metadata.managed_fields, None);

    let desired = want(vec![in_ambient("240.240.0.10")]);
    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        expect_list(&mut api, vec![held]).await;
        expect_we_list(&mut api, vec![]).await;
    });
    assert_eq!(report.unwrap().unchanged, 1);
    assert_quiet(&mut api);
}

#[tokio::test]
async fn g12_objects_edited_or_deleted_by_someone_else_are_applied_again() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::ZERO);
    let desired = want(vec![in_ambient("240.240.0.10")]);
    let body = in_ambient_body("240.240.0.10");
    let name = "autogen.httpbin.in-ambient";
    let uid = "2d6a1c8e-0000-4000-8000-000000000001";

    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        expect_list(&mut api, vec![]).await;
        expect_apply(&mut api, name, &body, "2001").await;
        expect_we_list(&mut api, vec![]).await;
    });
    assert_eq!(report.unwrap().applied, 1);

    // Edited (resourceVersion moved) -> applied again.
    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        expect_list(&mut api, vec![stored(body.clone(), uid, "2007")]).await;
        expect_apply(&mut api, name, &body, "2008").await;
        expect_we_list(&mut api, vec![]).await;
    });
    assert_eq!(report.unwrap().applied, 1);

    // Deleted -> applied again.
    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        expect_list(&mut api, vec![]).await;
        expect_apply(&mut api, name, &body, "2010").await;
        expect_we_list(&mut api, vec![]).await;
    });
    assert_eq!(report.unwrap().applied, 1);
    assert_quiet(&mut api);
}

#[tokio::test]
async fn failed_writes_name_the_object_and_do_not_stop_the_others() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::ZERO);
    let mut elsewhere = in_ambient("240.240.0.20");
    elsewhere.metadata.name = Some("autogen.default.other".into());
    elsewhere.metadata.namespace = Some("default".into());
    let mut second = in_ambient("240.240.0.21");
    second.metadata.name = Some("autogen.httpbin.second".into());
    let mut second_body = in_ambient_body("240.240.0.21");
    second_body["metadata"]["name"] = json!("autogen.httpbin.second");
    let desired = want(vec![elsewhere, in_ambient("240.240.0.10"), second]);

    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        expect_list(&mut api, vec![]).await;
        // The object outside istio-system is refused without a request.
        let req = next(&mut api).await;
        assert_eq!(req.method, Method::PATCH);
        assert_eq!(
            req.target,
            format!("{SE_PATH}/autogen.httpbin.in-ambient?{APPLY_QUERY}")
        );
        answer(
            req.responder,
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "ServiceEntry.networking.istio.io \"autogen.httpbin.in-ambient\" is invalid: spec: Invalid value: \"object\": only one of WorkloadSelector or Endpoints is allowed in Service Entry",
                "reason": "Invalid",
                "code": 422
            }),
        );
        expect_apply(&mut api, "autogen.httpbin.second", &second_body, "2003").await;
        expect_we_list(&mut api, vec![]).await;
    });
    let err = report.unwrap_err().to_string();
    assert!(
        err.contains("ServiceEntry istio-system/autogen.httpbin.in-ambient"),
        "{err}"
    );
    assert!(
        err.contains("only one of WorkloadSelector or Endpoints"),
        "{err}"
    );
    assert!(
        err.contains("ServiceEntry default/autogen.default.other"),
        "{err}"
    );
    assert!(err.contains("not managed"), "{err}");
    assert_quiet(&mut api);
}

// ------------------------------------------------------------------ status

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some("2026-11-22T09:30:00Z".into()),
        observed_generation: Some(1),
    }
}

fn peer_status(conditions: Vec<Condition>) -> Vec<PeerStatus> {
    vec![PeerStatus {
        gateway: NsName::new("istio-eastwest", "istio-remote-peer-cluster2"),
        conditions,
    }]
}

/// The five conditions SPEC C5 asks for, complete.
fn c5_conditions() -> Vec<Condition> {
    vec![
        condition("Accepted", "True", "Accepted", "Resource accepted"),
        condition(
            "Programmed",
            "True",
            "Programmed",
            "Peer gateway 172.18.255.2 is reachable",
        ),
        condition(
            "gloo.solo.io/PeerConnected",
            "True",
            "Connected",
            "Connected to cluster2 at 172.18.255.2:15012",
        ),
        condition(
            "gloo.solo.io/PeeringSucceeded",
            "True",
            "Synced",
            "Received 3 global services from cluster2",
        ),
        condition(
            "gloo.solo.io/PeerDataPlaneProgrammed",
            "True",
            "Programmed",
            "Endpoints of cluster2 are in the local data plane",
        ),
    ]
}

/// Required fields of a Gateway status condition, read from the CRD.
fn required_condition_fields() -> (Vec<String>, usize) {
    let path = format!(
        "{}/../../schemas/gateways.gateway.networking.k8s.io.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let crd: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let v1 = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1")
        .unwrap();
    let conditions =
        &v1["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    let required = conditions["items"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let max = usize::try_from(conditions["maxItems"].as_u64().unwrap()).unwrap();
    (required, max)
}

fn status_body(conditions: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "istio-remote-peer-cluster2", "namespace": "istio-eastwest"},
        "status": {"conditions": conditions},
    })
}

/// Server-side apply of the peer Gateway's status; returns the body sent.
async fn expect_status_apply(api: &mut ApiHandle, answer_with: StatusCode) -> Value {
    let req = next(api).await;
    assert_eq!(req.method, Method::PATCH);
    assert_eq!(req.target, format!("{PEER_GW_PATH}/status?{APPLY_QUERY}"));
    assert_eq!(
        req.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let sent = req.body.unwrap();
    assert!(!has_null(&sent), "{sent:#}");
    let (required, max) = required_condition_fields();
    let conditions = sent["status"]["conditions"].as_array().unwrap();
    assert!(conditions.len() <= max);
    for c in conditions {
        for field in required
            .iter()
            .map(String::as_str)
            .chain(["observedGeneration"])
        {
            assert!(c.get(field).is_some(), "condition without {field}: {c}");
        }
    }
    if answer_with == StatusCode::OK {
        answer(req.responder, StatusCode::OK, peer_gateway(1, json!([])));
    } else {
        answer(req.responder, answer_with, not_found());
    }
    sent
}

fn peer_gateway(generation: i64, conditions: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": "istio-remote-peer-cluster2",
            "namespace": "istio-eastwest",
            "uid": "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d02",
            "resourceVersion": "618",
            "generation": generation,
        },
        "spec": {
            "gatewayClassName": "istio-remote",
            "addresses": [{"type": "IPAddress", "value": "172.18.255.2"}],
            "listeners": [
                {"name": "cross-network", "port": 15008, "protocol": "HBONE", "tls": {"mode": "Passthrough"}},
                {"name": "xds-tls", "port": 15012, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
            ],
        },
        "status": {"conditions": conditions},
    })
}

fn not_found() -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "gateways.gateway.networking.k8s.io \"istio-remote-peer-cluster2\" not found",
        "reason": "NotFound",
        "details": {"name": "istio-remote-peer-cluster2", "group": "gateway.networking.k8s.io", "kind": "gateways"},
        "code": 404
    })
}

#[tokio::test]
async fn c5_peer_conditions_are_server_side_applied_to_the_gateway_status() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::ZERO);
    let statuses = peer_status(c5_conditions());

    let (result, sent) = tokio::join!(
        sink.write_status(&statuses),
        expect_status_apply(&mut api, StatusCode::OK)
    );
    result.unwrap();
    let conditions = serde_json::to_value(c5_conditions()).unwrap();
    assert_eq!(sent, status_body(conditions));
    assert_eq!(
        sent["status"]["conditions"][2],
        json!({
            "type": "gloo.solo.io/PeerConnected",
            "status": "True",
            "reason": "Connected",
            "message": "Connected to cluster2 at 172.18.255.2:15012",
            "lastTransitionTime": "2026-11-22T09:30:00Z",
            "observedGeneration": 1,
        })
    );
    assert_quiet(&mut api);

    // The same status again: nothing to write.
    quick(sink.write_status(&statuses)).await.unwrap();
    assert_quiet(&mut api);
}

#[tokio::test]
async fn c5_missing_generation_and_times_are_filled_from_the_gateway() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer")
        .with_resync(Duration::ZERO)
        .with_clock(|| "2026-11-22T10:00:00Z".into());
    let bare = |type_: &str, status: &str, reason: &str| Condition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        ..Default::default()
    };
    let statuses = peer_status(vec![
        bare("Accepted", "True", "Accepted"),
        bare("gloo.solo.io/PeerConnected", "True", "Connected"),
    ]);

    let (result, sent) = tokio::join!(sink.write_status(&statuses), async {
        // The Gateway is read for its generation and current conditions.
        let req = next(&mut api).await;
        assert_eq!(req.method, Method::GET);
        assert_eq!(req.target, PEER_GW_PATH);
        answer(
            req.responder,
            StatusCode::OK,
            peer_gateway(
                3,
                json!([
                    {"type": "Accepted", "status": "Unknown", "reason": "Pending", "message": "Waiting for controller", "lastTransitionTime": "1970-01-01T00:00:00Z"},
                    {"type": "gloo.solo.io/PeerConnected", "status": "True", "reason": "Connected", "message": "", "lastTransitionTime": "2026-11-22T08:00:00Z", "observedGeneration": 2},
                ]),
            ),
        );
        expect_status_apply(&mut api, StatusCode::OK).await
    });
    result.unwrap();
    assert_eq!(
        sent,
        status_body(json!([
            // Status changed (Unknown -> True): the transition is now.
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
             "lastTransitionTime": "2026-11-22T10:00:00Z", "observedGeneration": 3},
            // Status unchanged: the transition time stays.
            {"type": "gloo.solo.io/PeerConnected", "status": "True", "reason": "Connected", "message": "",
             "lastTransitionTime": "2026-11-22T08:00:00Z", "observedGeneration": 3},
        ]))
    );
    assert_quiet(&mut api);
}

#[tokio::test]
async fn c5_status_of_a_gateway_that_no_longer_exists_is_skipped() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::ZERO);

    // Incomplete conditions: the GET answers 404, nothing is patched.
    let mut bare = c5_conditions();
    bare[0].observed_generation = None;
    let statuses = peer_status(bare);
    let (result, ()) = tokio::join!(sink.write_status(&statuses), async {
        let req = next(&mut api).await;
        assert_eq!(req.method, Method::GET);
        assert_eq!(req.target, PEER_GW_PATH);
        answer(req.responder, StatusCode::NOT_FOUND, not_found());
    });
    result.unwrap();
    assert_quiet(&mut api);

    // Complete conditions: the status PATCH answers 404; not an error, and
    // not remembered: the next call tries again.
    let statuses = peer_status(c5_conditions());
    for _ in 0..2 {
        let (result, _) = tokio::join!(
            sink.write_status(&statuses),
            expect_status_apply(&mut api, StatusCode::NOT_FOUND)
        );
        result.unwrap();
    }
    assert_quiet(&mut api);
}

#[tokio::test]
async fn c5_conditions_a_server_would_reject_are_refused_naming_the_gateway() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::ZERO);
    let mut no_reason = c5_conditions();
    no_reason[2].reason = None;
    let err = quick(sink.write_status(&peer_status(no_reason)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Gateway istio-eastwest/istio-remote-peer-cluster2"),
        "{err}"
    );
    assert!(err.contains("gloo.solo.io/PeerConnected"), "{err}");

    let mut bad_status = c5_conditions();
    bad_status[0].status = "true".into();
    assert!(
        quick(sink.write_status(&peer_status(bad_status)))
            .await
            .is_err()
    );

    let too_many: Vec<Condition> = (0..9)
        .map(|i| condition(&format!("Cond{i}"), "True", "Ok", ""))
        .collect();
    let err = quick(sink.write_status(&peer_status(too_many)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 8"), "{err}");
    assert_quiet(&mut api);
}

#[tokio::test]
async fn i1_between_resyncs_only_what_changed_is_written() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::from_secs(3600));
    let name = "autogen.httpbin.in-ambient";

    // The first apply lists and writes.
    let desired = want(vec![in_ambient("240.240.0.10")]);
    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        expect_list(&mut api, vec![]).await;
        expect_apply(&mut api, name, &in_ambient_body("240.240.0.10"), "3001").await;
        expect_we_list(&mut api, vec![]).await;
    });
    assert_eq!(report.unwrap().applied, 1);

    // The same again: no request at all.
    let report = quick(sink.apply(&desired)).await.unwrap();
    assert_eq!(report, SinkReport::default());
    assert_quiet(&mut api);

    // A change: one apply, no list.
    let changed = want(vec![in_ambient("240.240.0.11")]);
    let (report, ()) = tokio::join!(sink.apply(&changed), async {
        expect_apply(&mut api, name, &in_ambient_body("240.240.0.11"), "3002").await;
    });
    assert_eq!(report.unwrap().applied, 1);

    // Gone: deleted with the resourceVersion last written as precondition.
    let none = want(vec![]);
    let (report, ()) = tokio::join!(sink.apply(&none), async {
        expect_delete(
            &mut api,
            &format!("{SE_PATH}/{name}"),
            "resourceVersion",
            "3002",
        )
        .await;
    });
    assert_eq!(report.unwrap().deleted, 1);
    assert_quiet(&mut api);
}

/// A remote network's group of `in-ambient` as the upstream flavor renders
/// it: a WorkloadEntry without address, selected by the entry's key.
fn remote_group(name: &str, weight: u32) -> WorkloadEntry {
    WorkloadEntry {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("istio-system".into()),
            labels: Some(strings(&[
                ("meshpeer.io/entry", "autogen.httpbin.in-ambient"),
                ("meshpeer.io/cluster", "cluster2"),
                ("security.istio.io/tlsMode", "istio"),
            ])),
            ..Default::default()
        },
        spec: WorkloadEntrySpec {
            ports: BTreeMap::from([("http".to_owned(), 8080)]),
            network: Some("cluster2".into()),
            weight: Some(weight),
            ..Default::default()
        },
    }
}

fn remote_group_body(name: &str, weight: u32) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {
            "name": name,
            "namespace": "istio-system",
            "labels": {
                "app.kubernetes.io/managed-by": "meshpeer",
                "meshpeer.io/entry": "autogen.httpbin.in-ambient",
                "meshpeer.io/cluster": "cluster2",
                "security.istio.io/tlsMode": "istio",
            },
        },
        "spec": {"ports": {"http": 8080}, "network": "cluster2", "weight": weight},
    })
}

#[tokio::test]
async fn g7_upstream_workload_entries_are_applied_after_their_entry_and_pruned_like_it() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::from_secs(3600));
    let (a, b) = (
        "autogen.httpbin.in-ambient.cluster2.any",
        "autogen.httpbin.in-ambient.cluster2.0a1b2c3d",
    );
    let desired = Output {
        entries: desired(vec![in_ambient("240.241.0.10")]),
        workloads: meshpeer_store::workloads(vec![remote_group(a, 2), remote_group(b, 1)]),
    };
    // The server holds a stale managed WorkloadEntry (left by an earlier
    // run) and one a user wrote without meshpeer's label.
    let stale = stored(
        remote_group_body("autogen.httpbin.gone.cluster2.any", 1),
        "5e1f0000-0000-4000-8000-0000000000aa",
        "1999",
    );
    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        expect_list(&mut api, vec![]).await;
        expect_apply(
            &mut api,
            "autogen.httpbin.in-ambient",
            &in_ambient_body("240.241.0.10"),
            "3001",
        )
        .await;
        // WorkloadEntries come after the entry that selects them.
        expect_we_list(&mut api, vec![stale]).await;
        for (name, weight, rv) in [(b, 1, "3002"), (a, 2, "3003")] {
            let req = next(&mut api).await;
            assert_eq!(req.method, Method::PATCH);
            assert_eq!(req.target, format!("{WE_PATH}/{name}?{APPLY_QUERY}"));
            let sent = req.body.unwrap();
            assert_eq!(sent, remote_group_body(name, weight));
            answer(
                req.responder,
                StatusCode::OK,
                stored(sent, "5e1f0000-0000-4000-8000-000000000001", rv),
            );
        }
        // The stale one is deleted with its uid as precondition.
        expect_delete(
            &mut api,
            &format!("{WE_PATH}/autogen.httpbin.gone.cluster2.any"),
            "uid",
            "5e1f0000-0000-4000-8000-0000000000aa",
        )
        .await;
    });
    assert_eq!(
        report.unwrap(),
        SinkReport {
            applied: 3,
            unchanged: 0,
            deleted: 1
        }
    );
    assert_quiet(&mut api);

    // One group goes (the locality emptied): only its WorkloadEntry is
    // deleted, with the resourceVersion last written; nothing is listed.
    let less = Output {
        entries: desired.entries.clone(),
        workloads: meshpeer_store::workloads(vec![remote_group(a, 2)]),
    };
    let (report, ()) = tokio::join!(sink.apply(&less), async {
        expect_delete(
            &mut api,
            &format!("{WE_PATH}/{b}"),
            "resourceVersion",
            "3002",
        )
        .await;
    });
    assert_eq!(report.unwrap().deleted, 1);
    assert_quiet(&mut api);
}

#[tokio::test]
async fn g11_existing_reads_workload_entries_back_so_a_restart_rewrites_none() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_resync(Duration::ZERO);
    let name = "autogen.httpbin.in-ambient.cluster2.any";
    let held = stored(
        remote_group_body(name, 2),
        "5e1f0000-0000-4000-8000-000000000001",
        "3003",
    );
    let (existing, ()) = tokio::join!(sink.existing(), async {
        expect_list(&mut api, vec![]).await;
        expect_we_list(&mut api, vec![held.clone()]).await;
    });
    let existing = existing.unwrap();
    assert!(existing.entries.is_empty());
    assert_eq!(existing.workloads.len(), 1);
    assert_eq!(existing.workloads[0].spec.weight, Some(2));
    assert_eq!(existing.workloads[0].metadata.managed_fields, None);

    let desired = Output {
        entries: desired(vec![]),
        workloads: meshpeer_store::workloads(vec![remote_group(name, 2)]),
    };
    let (report, ()) = tokio::join!(sink.apply(&desired), async {
        expect_list(&mut api, vec![]).await;
        expect_we_list(&mut api, vec![held]).await;
    });
    assert_eq!(report.unwrap().unchanged, 1);
    assert_quiet(&mut api);
}

// ------------------------------------------------------------ route status

const ROUTE_PATH: &str =
    "/apis/gateway.networking.k8s.io/v1/namespaces/bookinfo/httproutes/reviews";
const ROUTE_NOW: &str = "2026-12-01T10:00:00Z";

fn route_clock() -> String {
    ROUTE_NOW.to_owned()
}

fn reviews_status() -> Vec<RouteStatus> {
    common::route_status()
        .into_iter()
        .filter(|r| r.name == "reviews")
        .collect()
}

/// The parent another controller (a gateway implementation) wrote.
fn other_parent() -> Value {
    json!({
        "parentRef": {"name": "ingress", "namespace": "gateways"},
        "controllerName": "example.net/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                        "message": "", "lastTransitionTime": "2026-10-10T10:10:10Z",
                        "observedGeneration": 2}],
    })
}

/// meshpeer's parent of `reviews` with this ResolvedRefs status, both
/// conditions stamped `time`.
fn our_parent(resolved: &str, time: &str) -> Value {
    let reason = if resolved == "True" {
        "ResolvedRefs"
    } else {
        "BackendNotFound"
    };
    let message = if resolved == "True" {
        "every backendRef resolves"
    } else {
        "backend gone"
    };
    json!({
        "parentRef": {"group": "", "kind": "Service", "name": "reviews", "port": 9080},
        "controllerName": "meshpeer.io/mesh-controller",
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted",
             "message": "meshpeer routes this parent's HTTP ports",
             "lastTransitionTime": time, "observedGeneration": 2},
            {"type": "ResolvedRefs", "status": resolved, "reason": reason,
             "message": message, "lastTransitionTime": time, "observedGeneration": 2},
        ],
    })
}

/// `reviews` as the API server holds it, with these status parents.
fn stored_route(parents: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "reviews", "namespace": "bookinfo",
                     "uid": "7c8d9e0f-1a2b-4c3d-9e4f-5a6b7c8d9e01",
                     "resourceVersion": "4100", "generation": 2},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
            "rules": [{"backendRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080, "weight": 1}]}],
        },
        "status": {"parents": parents},
    })
}

fn route_not_found() -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "httproutes.gateway.networking.k8s.io \"reviews\" not found",
        "reason": "NotFound",
        "details": {"name": "reviews", "group": "gateway.networking.k8s.io", "kind": "httproutes"},
        "code": 404
    })
}

/// GET of the route, answered with `route` (an object, or a 404 Status).
async fn expect_route_get(api: &mut ApiHandle, status: StatusCode, route: Value) {
    let req = next(api).await;
    assert_eq!(req.method, Method::GET);
    assert_eq!(req.target, ROUTE_PATH);
    answer(req.responder, status, route);
}

/// Server-side apply of the route's status subresource; answered with
/// `status` and `reply`; returns the body sent.
async fn expect_route_apply(api: &mut ApiHandle, status: StatusCode, reply: Value) -> Value {
    let req = next(api).await;
    assert_eq!(req.method, Method::PATCH);
    assert_eq!(req.target, format!("{ROUTE_PATH}/status?{APPLY_QUERY}"));
    assert_eq!(
        req.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let sent = req.body.unwrap();
    assert!(!has_null(&sent), "{sent:#}");
    answer(req.responder, status, reply);
    sent
}

#[tokio::test]
async fn l7_route_status_is_applied_to_the_status_subresource_keeping_other_controllers_parents() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_clock(route_clock);
    let routes = reviews_status();

    // On the server: another controller's parent, and meshpeer's from an
    // earlier run, when the backend did not resolve.
    let earlier = "2026-11-30T08:00:00Z";
    let on_server = stored_route(json!([other_parent(), our_parent("False", earlier)]));
    let (result, sent) = tokio::join!(sink.write_route_status(&routes), async {
        expect_route_get(&mut api, StatusCode::OK, on_server.clone()).await;
        expect_route_apply(&mut api, StatusCode::OK, on_server.clone()).await
    });
    result.unwrap();
    // The other controller's parent as it was (the list is atomic: left
    // out, it would be erased); meshpeer's replaced. Accepted stayed True:
    // its time is kept; ResolvedRefs turned True: now. The read's
    // resourceVersion guards against a write in between.
    let mut ours = our_parent("True", earlier);
    ours["conditions"][1]["lastTransitionTime"] = ROUTE_NOW.into();
    assert_eq!(
        sent,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "reviews", "namespace": "bookinfo", "resourceVersion": "4100"},
            "status": {"parents": [other_parent(), ours]},
        })
    );
    common::check_route_status(&sent).unwrap();
    assert_quiet(&mut api);

    // The same status again: nothing to write.
    quick(sink.write_route_status(&routes)).await.unwrap();
    assert_quiet(&mut api);

    // A route no longer listed (its mesh parentRef removed) loses
    // meshpeer's parents; the other controller's stay.
    let written = stored_route(sent["status"]["parents"].clone());
    let (result, sent) = tokio::join!(sink.write_route_status(&[]), async {
        expect_route_get(&mut api, StatusCode::OK, written.clone()).await;
        expect_route_apply(&mut api, StatusCode::OK, written.clone()).await
    });
    result.unwrap();
    assert_eq!(sent["status"]["parents"], json!([other_parent()]));
    assert_eq!(sent["metadata"]["resourceVersion"], "4100");
    quick(sink.write_route_status(&[])).await.unwrap();
    assert_quiet(&mut api);
    // Listed again, it is written again (here to a route without status:
    // every time is now).
    let (result, sent) = tokio::join!(sink.write_route_status(&routes), async {
        expect_route_get(&mut api, StatusCode::OK, stored_route(json!([]))).await;
        expect_route_apply(&mut api, StatusCode::OK, stored_route(json!([]))).await
    });
    result.unwrap();
    assert_eq!(
        sent["status"]["parents"],
        json!([our_parent("True", ROUTE_NOW)])
    );
    assert_quiet(&mut api);
}

#[tokio::test]
async fn l7_a_restarted_sink_reads_the_route_status_and_rewrites_nothing_the_same() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_clock(route_clock);
    let earlier = "2026-11-30T08:00:00Z";
    // What the run before the restart wrote: read, found equal, not sent.
    let on_server = stored_route(json!([other_parent(), our_parent("True", earlier)]));
    let routes = reviews_status();
    let (result, ()) = tokio::join!(sink.write_route_status(&routes), async {
        expect_route_get(&mut api, StatusCode::OK, on_server).await;
    });
    result.unwrap();
    quick(sink.write_route_status(&routes)).await.unwrap();
    assert_quiet(&mut api);
}

#[tokio::test]
async fn l7_status_of_a_route_that_no_longer_exists_is_skipped() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_clock(route_clock);
    let routes = reviews_status();

    // Gone before the read, then between read and write: not an error,
    // and not remembered (the next call tries again).
    let (result, ()) = tokio::join!(sink.write_route_status(&routes), async {
        expect_route_get(&mut api, StatusCode::NOT_FOUND, route_not_found()).await;
    });
    result.unwrap();
    let (result, _) = tokio::join!(sink.write_route_status(&routes), async {
        expect_route_get(&mut api, StatusCode::OK, stored_route(json!([]))).await;
        expect_route_apply(&mut api, StatusCode::NOT_FOUND, route_not_found()).await
    });
    result.unwrap();
    let (result, ()) = tokio::join!(sink.write_route_status(&routes), async {
        expect_route_get(&mut api, StatusCode::NOT_FOUND, route_not_found()).await;
    });
    result.unwrap();
    assert_quiet(&mut api);
}

#[tokio::test]
async fn l7_failed_route_status_writes_name_the_route_and_are_tried_again() {
    let (client, mut api) = mock_api();
    let mut sink = KubeSink::new(client, "meshpeer").with_clock(route_clock);
    let routes = reviews_status();
    let conflict = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Operation cannot be fulfilled on httproutes.gateway.networking.k8s.io \"reviews\": the object has been modified",
        "reason": "Conflict", "code": 409
    });
    // Someone else wrote the route between the read and the apply.
    let (result, _) = tokio::join!(sink.write_route_status(&routes), async {
        expect_route_get(&mut api, StatusCode::OK, stored_route(json!([]))).await;
        expect_route_apply(&mut api, StatusCode::CONFLICT, conflict).await
    });
    let err = result.unwrap_err().to_string();
    assert!(err.contains("HTTPRoute bookinfo/reviews"), "{err}");
    // Tried again (the controller retries): read again, written.
    let (result, _) = tokio::join!(sink.write_route_status(&routes), async {
        expect_route_get(&mut api, StatusCode::OK, stored_route(json!([]))).await;
        expect_route_apply(&mut api, StatusCode::OK, stored_route(json!([]))).await
    });
    result.unwrap();

    // Conditions a server would reject are refused before any request.
    let mut bad = routes.clone();
    bad[0].parents[0].conditions[0].reason = Some("not a reason".into());
    let err = quick(sink.write_route_status(&bad))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTPRoute bookinfo/reviews"), "{err}");
    assert_quiet(&mut api);
}
