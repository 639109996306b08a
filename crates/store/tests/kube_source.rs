//! `KubeSource` against a mocked API server (tower-test): every request the
//! watchers make is checked (method, path, query) and answered with recorded
//! responses from `tests/fixtures/kube/`.
//!
//! The watchers run concurrently, so requests arrive in any order; each
//! phase lists the exact requests it expects, keyed by path and query, with
//! the answer to each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::client::Body;
use meshpeer_model::objects::{Gateway, HttpRoute, Segment, ServiceEntry};
use meshpeer_model::{Change, ClusterConfig, Kind, Object};
use meshpeer_store::kube_source::{KubeSource, WATCHED_KINDS};
use meshpeer_store::{ClusterSource, Update};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tower_test::mock::{Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;
type Responder = SendResponse<Response<Body>>;

const DEADLINE: Duration = Duration::from_secs(20);

fn mock_api() -> (Client, ApiHandle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/kube/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the mock API server does with one expected request.
enum Answer {
    /// 200 with this JSON (a list, or a finite watch stream).
    Ok(String),
    /// An error status with this body, as a real API server sends it.
    Status(StatusCode, &'static str),
    /// Never answered: a watch that stays open with no events.
    HoldOpen,
}

fn respond(responder: Responder, status: StatusCode, body: String) {
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.into_bytes()))
        .unwrap();
    responder.send_response(response);
}

/// Takes requests until every expected one (GET, exact path and query) has
/// arrived, answering each as the table says. Returns the responders of
/// watches held open, which must be kept alive.
async fn serve(handle: &mut ApiHandle, expected: Vec<(String, Answer)>) -> Vec<Responder> {
    let mut expected: BTreeMap<String, Answer> = expected.into_iter().collect();
    let mut held = Vec::new();
    while !expected.is_empty() {
        let (req, responder) = tokio::time::timeout(DEADLINE, handle.next_request())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "requests never made: {:?}",
                    expected.keys().collect::<Vec<_>>()
                )
            })
            .expect("client dropped");
        assert_eq!(req.method(), Method::GET);
        let uri = path_and_query(req.uri());
        let answer = expected.remove(&uri).unwrap_or_else(|| {
            panic!(
                "unexpected request GET {uri}; still expecting {:?}",
                expected.keys().collect::<Vec<_>>()
            )
        });
        match answer {
            Answer::Ok(body) => respond(responder, StatusCode::OK, body),
            Answer::Status(code, body) => respond(responder, code, body.to_owned()),
            Answer::HoldOpen => held.push(responder),
        }
    }
    held
}

/// Path and query, parameters in the order sent. kube-rs writes queries as
/// `?&limit=500`; the empty parameter means nothing and is dropped here.
fn path_and_query(uri: &http::Uri) -> String {
    let query: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .collect();
    format!("{}?{}", uri.path(), query.join("&"))
}

fn list(path: &str) -> String {
    format!("{path}?limit=500")
}

fn watch(path: &str, resource_version: &str) -> String {
    format!(
        "{path}?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={resource_version}"
    )
}

/// Every watched kind: its collection path and the recorded list answer.
const COLLECTIONS: [(Kind, &str, &str); 9] = [
    (
        Kind::Namespace,
        "/api/v1/namespaces",
        "list-namespaces.json",
    ),
    (Kind::Node, "/api/v1/nodes", "list-nodes.json"),
    (Kind::Service, "/api/v1/services", "list-services.json"),
    (Kind::Pod, "/api/v1/pods", "list-pods.json"),
    (
        Kind::EndpointSlice,
        "/apis/discovery.k8s.io/v1/endpointslices",
        "list-endpointslices.json",
    ),
    (
        Kind::Segment,
        "/apis/admin.solo.io/v1alpha1/segments",
        "list-segments.json",
    ),
    (
        Kind::Gateway,
        "/apis/gateway.networking.k8s.io/v1/gateways",
        "list-gateways.json",
    ),
    (
        Kind::ServiceEntry,
        "/apis/networking.istio.io/v1/serviceentries",
        "list-serviceentries.json",
    ),
    (
        Kind::HttpRoute,
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "list-httproutes.json",
    ),
];

fn path_of(kind: Kind) -> &'static str {
    COLLECTIONS.iter().find(|c| c.0 == kind).unwrap().1
}

/// The objects of a recorded list (or watch line) as the source reports
/// them: managedFields and resourceVersion dropped, a Node and an HTTPRoute
/// without status.
fn as_reported(mut object: Object) -> Object {
    let meta = object.metadata_mut();
    meta.managed_fields = None;
    meta.resource_version = None;
    match &mut object {
        Object::Node(node) => node.status = None,
        Object::HttpRoute(route) => route.status = None,
        _ => {}
    }
    object
}

fn items<K: DeserializeOwned>(fixture_name: &str, wrap: fn(K) -> Object) -> Vec<Object> {
    let list: serde_json::Value = serde_json::from_str(&fixture(fixture_name)).unwrap();
    let items = list["items"].as_array().unwrap().clone();
    items
        .into_iter()
        .map(|i| as_reported(wrap(serde_json::from_value(i).unwrap())))
        .collect()
}

fn listed(kind: Kind) -> Vec<Object> {
    let file = COLLECTIONS.iter().find(|c| c.0 == kind).unwrap().2;
    match kind {
        Kind::Namespace => items::<Namespace>(file, Object::Namespace),
        Kind::Node => items::<Node>(file, Object::Node),
        Kind::Service => items::<Service>(file, Object::Service),
        Kind::Pod => items::<Pod>(file, Object::Pod),
        Kind::EndpointSlice => items::<EndpointSlice>(file, Object::EndpointSlice),
        Kind::Segment => items::<Segment>(file, Object::Segment),
        Kind::Gateway => items::<Gateway>(file, Object::Gateway),
        Kind::ServiceEntry => items::<ServiceEntry>(file, Object::ServiceEntry),
        Kind::HttpRoute => items::<HttpRoute>(file, Object::HttpRoute),
        Kind::WorkloadEntry => unreachable!("not watched"),
    }
}

/// The objects of a recorded watch stream, one per line.
fn watched<K: DeserializeOwned>(fixture_name: &str, wrap: fn(K) -> Object) -> Vec<Object> {
    fixture(fixture_name)
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            as_reported(wrap(
                serde_json::from_value(event["object"].clone()).unwrap(),
            ))
        })
        .collect()
}

fn config() -> ClusterConfig {
    ClusterConfig {
        network: Some("cluster1".into()),
        region: Some("us-east".into()),
        zone: Some("us-east-1".into()),
        ..ClusterConfig::new("cluster1")
    }
}

fn start(client: Client) -> (mpsc::Receiver<Update>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16);
    let source: Box<dyn ClusterSource> = Box::new(KubeSource::new(client, config()));
    assert_eq!(
        source.describe(),
        "Kubernetes API server of cluster cluster1"
    );
    let task = tokio::spawn(async move {
        source.run(tx).await.expect("source ends without error");
    });
    (rx, task)
}

async fn next_update(rx: &mut mpsc::Receiver<Update>) -> Update {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("an update in time")
        .expect("source still running")
}

/// Dropping the receiver ends the source, with `Ok`.
async fn stop(rx: mpsc::Receiver<Update>, task: tokio::task::JoinHandle<()>) {
    drop(rx);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("source stops when its receiver is dropped")
        .unwrap();
}

#[tokio::test]
async fn r2_first_update_is_config_and_a_replace_per_kind_after_every_initial_list() {
    let (client, mut api) = mock_api();
    let (mut rx, task) = start(client);

    // Every watcher lists its kind in all namespaces first.
    let lists = COLLECTIONS
        .iter()
        .map(|(_, path, file)| (list(path), Answer::Ok(fixture(file))))
        .collect();
    let _held = serve(&mut api, lists).await;

    let first = next_update(&mut rx).await;
    let mut expected = vec![Change::Config(config())];
    expected.extend(WATCHED_KINDS.map(|kind| Change::Replace(kind, listed(kind))));
    expected.push(Change::SourceDiagnostics(vec![]));
    assert_eq!(first.changes, expected);
    // A spot check that the fixtures are what the test is about.
    assert_eq!(
        listed(Kind::Gateway)[1].key().name,
        "istio-remote-peer-cluster2"
    );
    assert!(first.changes.iter().all(|c| match c {
        Change::Replace(_, objects) =>
            objects.iter().all(|o| o.metadata().managed_fields.is_none()
                && o.metadata().resource_version.is_none()),
        _ => true,
    }));

    stop(rx, task).await;
}

#[tokio::test]
async fn r2_watch_events_become_apply_and_delete_batched_per_arrival() {
    let (client, mut api) = mock_api();
    let (mut rx, task) = start(client);
    let lists = COLLECTIONS
        .iter()
        .map(|(_, path, file)| (list(path), Answer::Ok(fixture(file))))
        .collect();
    let _held_lists = serve(&mut api, lists).await;
    let first = next_update(&mut rx).await;
    assert_eq!(first.changes.len(), 1 + WATCHED_KINDS.len() + 1);

    // Then each watcher watches from its list's resourceVersion. Four
    // answer with recorded events; the stream then ends and the watcher
    // watches again from the last event's resourceVersion.
    let ns = path_of(Kind::Namespace);
    let nodes = path_of(Kind::Node);
    let pods = path_of(Kind::Pod);
    let routes = path_of(Kind::HttpRoute);
    let watches = vec![
        (
            watch(ns, "1001"),
            Answer::Ok(fixture("watch-namespaces.jsonl")),
        ),
        (
            watch(nodes, "1002"),
            Answer::Ok(fixture("watch-nodes.jsonl")),
        ),
        (watch(path_of(Kind::Service), "1003"), Answer::HoldOpen),
        (watch(pods, "1004"), Answer::Ok(fixture("watch-pods.jsonl"))),
        (
            watch(path_of(Kind::EndpointSlice), "1005"),
            Answer::HoldOpen,
        ),
        (watch(path_of(Kind::Segment), "1211"), Answer::HoldOpen),
        (watch(path_of(Kind::Gateway), "1007"), Answer::HoldOpen),
        (watch(path_of(Kind::ServiceEntry), "1008"), Answer::HoldOpen),
        (
            watch(routes, "1009"),
            Answer::Ok(fixture("watch-httproutes.jsonl")),
        ),
        (watch(ns, "1101"), Answer::HoldOpen),
        (watch(nodes, "1102"), Answer::HoldOpen),
        (watch(pods, "1104"), Answer::HoldOpen),
        (watch(routes, "1302"), Answer::HoldOpen),
    ];
    let _held_watches = serve(&mut api, watches).await;

    // MODIFIED istio-system (joins segment dev) -> Apply.
    let istio_system = watched::<Namespace>("watch-namespaces.jsonl", Object::Namespace);
    // MODIFIED node: only resourceVersion and heartbeat changed -> an Apply
    // equal to the object already reported, which the snapshot ignores.
    let node = watched::<Node>("watch-nodes.jsonl", Object::Node);
    assert_eq!(node, listed(Kind::Node));
    // ADDED pod -> Apply; DELETED pod -> Delete, in one update (one arrival).
    let pod_events = watched::<Pod>("watch-pods.jsonl", Object::Pod);
    let pod_changes = vec![
        Change::Apply(pod_events[0].clone()),
        Change::Delete(pod_events[1].key()),
    ];
    // MODIFIED reviews: only its status (meshpeer's own write, L7) and
    // resourceVersion changed -> an Apply equal to the listed route; ADDED
    // ratings -> Apply.
    let route_events = watched::<HttpRoute>("watch-httproutes.jsonl", Object::HttpRoute);
    assert_eq!(route_events[..1], listed(Kind::HttpRoute)[..]);
    assert_eq!(route_events[1].key().name, "ratings");
    let mut want = vec![
        Change::Apply(istio_system[0].clone()),
        Change::Apply(node[0].clone()),
        Change::Apply(route_events[0].clone()),
        Change::Apply(route_events[1].clone()),
    ];
    want.extend(pod_changes.clone());

    let mut got: Vec<Change> = Vec::new();
    let mut pod_update = None;
    while got.len() < want.len() {
        let update = next_update(&mut rx).await;
        if update.changes.contains(&pod_changes[0]) {
            pod_update = Some(update.clone());
        }
        got.extend(update.changes);
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for change in &want {
        assert!(got.contains(change), "missing {change:#?}");
    }
    let pod_update = pod_update.expect("the pod events arrived");
    assert!(
        pod_changes.iter().all(|c| pod_update.changes.contains(c)),
        "events of one arrival go out in one update: {pod_update:#?}"
    );
    assert_eq!(pod_events[1].key().name, "in-ambient-5f8b7c6d9-x2k7q");

    stop(rx, task).await;
}

/// The resourceVersion of each recorded list.
fn listed_version(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace => "1001",
        Kind::Node => "1002",
        Kind::Service => "1003",
        Kind::Pod => "1004",
        Kind::EndpointSlice => "1005",
        Kind::Segment => "1211",
        Kind::Gateway => "1007",
        Kind::ServiceEntry => "1008",
        Kind::HttpRoute => "1009",
        Kind::WorkloadEntry => unreachable!("not watched"),
    }
}

#[tokio::test]
async fn r2_missing_segment_crd_does_not_block_the_first_update_and_is_retried() {
    missing_crd_does_not_block_the_first_update_and_is_retried(Kind::Segment).await;
}

#[tokio::test]
async fn l1_missing_httproute_crd_does_not_block_the_first_update_and_is_retried() {
    missing_crd_does_not_block_the_first_update_and_is_retried(Kind::HttpRoute).await;
}

async fn missing_crd_does_not_block_the_first_update_and_is_retried(missing: Kind) {
    let (client, mut api) = mock_api();
    let (mut rx, task) = start(client);

    // No CRD: the API server answers its path with a plain 404.
    let lists = COLLECTIONS
        .iter()
        .map(|(kind, path, file)| {
            let answer = if *kind == missing {
                Answer::Status(StatusCode::NOT_FOUND, "404 page not found\n")
            } else {
                Answer::Ok(fixture(file))
            };
            (list(path), answer)
        })
        .collect();
    let _held_lists = serve(&mut api, lists).await;

    let first = next_update(&mut rx).await;
    let mut expected = vec![Change::Config(config())];
    expected.extend(WATCHED_KINDS.map(|kind| match kind {
        k if k == missing => Change::Replace(kind, vec![]),
        _ => Change::Replace(kind, listed(kind)),
    }));
    expected.push(Change::SourceDiagnostics(vec![]));
    assert_eq!(first.changes, expected);

    // The other kinds watch; the missing kind's watcher lists again after
    // its backoff. This time the CRD is installed.
    let (_, path, file) = COLLECTIONS.iter().find(|c| c.0 == missing).unwrap();
    let mut next = vec![
        (list(path), Answer::Ok(fixture(file))),
        (watch(path, listed_version(missing)), Answer::HoldOpen),
    ];
    for (kind, path, _) in COLLECTIONS {
        if kind != missing {
            next.push((watch(path, listed_version(kind)), Answer::HoldOpen));
        }
    }
    let _held = serve(&mut api, next).await;

    let update = next_update(&mut rx).await;
    assert_eq!(
        update.changes,
        vec![Change::Replace(missing, listed(missing))]
    );

    stop(rx, task).await;
}

#[tokio::test]
async fn r2_relist_after_an_expired_watch_is_a_replace_of_that_kind() {
    let (client, mut api) = mock_api();
    let (mut rx, task) = start(client);
    let lists = COLLECTIONS
        .iter()
        .map(|(_, path, file)| (list(path), Answer::Ok(fixture(file))))
        .collect();
    let _held_lists = serve(&mut api, lists).await;
    next_update(&mut rx).await;

    // The namespace watch falls out of the server's window (410 Expired);
    // the watcher lists again, and by then `httpbin` is gone.
    let ns = path_of(Kind::Namespace);
    let expired = serde_json::json!({
        "type": "ERROR",
        "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 1001 (1580)", "reason": "Expired", "code": 410
        }
    });
    let mut relisted: serde_json::Value =
        serde_json::from_str(&fixture("list-namespaces.json")).unwrap();
    relisted["metadata"]["resourceVersion"] = "1600".into();
    relisted["items"].as_array_mut().unwrap().remove(0);
    let mut exchanges = vec![
        (watch(ns, "1001"), Answer::Ok(format!("{expired}\n"))),
        (list(ns), Answer::Ok(relisted.to_string())),
        (watch(ns, "1600"), Answer::HoldOpen),
    ];
    for kind in WATCHED_KINDS.into_iter().filter(|k| *k != Kind::Namespace) {
        exchanges.push((watch(path_of(kind), listed_version(kind)), Answer::HoldOpen));
    }
    let _held = serve(&mut api, exchanges).await;

    let update = next_update(&mut rx).await;
    let mut remaining = listed(Kind::Namespace);
    assert_eq!(remaining.remove(0).key().name, "httpbin");
    assert_eq!(
        update.changes,
        vec![Change::Replace(Kind::Namespace, remaining)]
    );

    stop(rx, task).await;
}
