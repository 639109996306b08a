//! Two and three controllers in one process, file mode, peering over mutual
//! TLS on 127.0.0.1: edits in one cluster's folder reach the others' catalogs
//! and output folders (C4, G8, G12, S7, C5), and churn converges.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use meshpeer::controller::LinkState;
use meshpeer_model::{CatalogConfig, ClusterSnapshot, Export, catalog, exports};
use meshpeer_peering::wire::ResourceSet;
use support::{Mesh, contributors, hosts, namespace, segments, service};

const WEB: &str = "web.shop.mesh.internal";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_labelling_a_service_makes_it_appear_in_the_other_cluster_and_unlabelling_removes_it() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    let c1 = mesh.cluster("cluster1");
    c1.write(
        "shop.yaml",
        &format!(
            "{}---\n{}",
            namespace("shop", &[]),
            service("shop", "web", None, "10.1.0.5")
        ),
    );
    let c2 = mesh.cluster("cluster2");
    c2.write(
        "shop.yaml",
        &format!(
            "{}---\n{}",
            namespace("shop", &[]),
            service("shop", "web", None, "10.2.0.5")
        ),
    );
    mesh.start().await;
    mesh.link_all().await;
    let (c1, c2) = (mesh.cluster("cluster1"), mesh.cluster("cluster2"));
    c1.wait("peer synced", |v| {
        v.status.peers.iter().any(|p| p.state == LinkState::Synced)
    })
    .await;
    c2.wait("peer synced", |v| {
        v.status.peers.iter().any(|p| p.state == LinkState::Synced)
    })
    .await;
    assert!(hosts(&c1.controller().current()).is_empty());

    // Label cluster1's service: both clusters see it, from cluster1 only.
    c1.write(
        "shop.yaml",
        &format!(
            "{}---\n{}",
            namespace("shop", &[]),
            service("shop", "web", Some("global"), "10.1.0.5")
        ),
    );
    for c in [c1, c2] {
        c.wait("web from cluster1", |v| {
            contributors(v, WEB) == Some(vec!["cluster1".into()])
        })
        .await;
        assert_eq!(
            c.output().get(WEB).map(String::as_str),
            Some("cluster1"),
            "{} output",
            c.name
        );
    }
    // Label cluster2's too: one service, both clusters' endpoints.
    c2.write(
        "shop.yaml",
        &format!(
            "{}---\n{}",
            namespace("shop", &[]),
            service("shop", "web", Some("global"), "10.2.0.5")
        ),
    );
    for c in [c1, c2] {
        let v = c
            .wait("web from both", |v| {
                contributors(v, WEB) == Some(vec!["cluster1".into(), "cluster2".into()])
            })
            .await;
        assert_eq!(v.catalog.service(WEB).unwrap().endpoint_count(), 2);
        assert_eq!(c.output()[WEB], "cluster1,cluster2");
    }
    // Remove the labels: gone everywhere, output files too (G12).
    c1.write(
        "shop.yaml",
        &format!(
            "{}---\n{}",
            namespace("shop", &[]),
            service("shop", "web", None, "10.1.0.5")
        ),
    );
    c2.remove("shop.yaml");
    for c in [c1, c2] {
        c.wait("web gone", |v| v.catalog.services.is_empty()).await;
        assert!(c.output().is_empty(), "{} output: {:?}", c.name, c.output());
    }
    // Peer conditions (C5) were written for the link, and say what happened:
    // connected, synced (cluster2 exports nothing now), programmed.
    #[derive(serde::Deserialize)]
    struct Doc {
        status: Status,
    }
    #[derive(serde::Deserialize)]
    struct Status {
        conditions: Vec<meshpeer_model::objects::Condition>,
    }
    let path = c1
        .out
        .join("status/istio-eastwest.istio-remote-peer-cluster2.yaml");
    let deadline = tokio::time::Instant::now() + support::WITHIN;
    let (status, doc) = loop {
        let status = std::fs::read_to_string(&path).unwrap_or_default();
        if let Ok(doc) = serde_saphyr::from_str::<Doc>(&status)
            && status.contains("(0 services)")
        {
            break (status, doc);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link's status never said cluster2 exports nothing: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let got: Vec<(&str, &str, &str)> = doc
        .status
        .conditions
        .iter()
        .map(|c| {
            (
                c.type_.as_str(),
                c.status.as_str(),
                c.reason.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Accepted", "True", "Accepted"),
            ("Programmed", "True", "Programmed"),
            ("gloo.solo.io/PeerConnected", "True", "Connected"),
            ("gloo.solo.io/PeeringSucceeded", "True", "Synced"),
            ("gloo.solo.io/PeerDataPlaneProgrammed", "True", "Programmed"),
        ],
        "{status}"
    );
    let succeeded = &doc.status.conditions[3];
    assert!(
        succeeded
            .message
            .as_deref()
            .unwrap()
            .contains("(0 services)"),
        "cluster2 exports nothing now: {status}"
    );
    assert!(
        doc.status
            .conditions
            .iter()
            .all(|c| c.last_transition_time.is_some()),
        "{status}"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_an_asymmetric_link_only_teaches_the_linking_cluster() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.cluster("cluster1").write(
        "a.yaml",
        &format!(
            "{}---\n{}",
            namespace("a", &[]),
            service("a", "one", Some("global"), "10.1.0.1")
        ),
    );
    mesh.cluster("cluster2").write(
        "b.yaml",
        &format!(
            "{}---\n{}",
            namespace("b", &[]),
            service("b", "two", Some("global"), "10.2.0.1")
        ),
    );
    mesh.start().await;
    mesh.link("cluster1", "cluster2").await;
    let (c1, c2) = (mesh.cluster("cluster1"), mesh.cluster("cluster2"));
    c1.wait("sees two", |v| {
        hosts(v) == ["one.a.mesh.internal", "two.b.mesh.internal"]
    })
    .await;
    // cluster2 serves cluster1 but never learns cluster1's service.
    let v2 = c2
        .wait("serves cluster1", |v| v.status.peers.is_empty())
        .await;
    assert_eq!(hosts(&v2), ["two.b.mesh.internal"]);
    let deadline = tokio::time::Instant::now() + support::WITHIN;
    while c2.controller().current().status.served.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster2 never served cluster1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c2.controller().current().status.served[0].cluster,
        "cluster1"
    );
    // Unlinking drops cluster2's service from cluster1 at once.
    mesh.unlink("cluster1", "cluster2");
    mesh.cluster("cluster1")
        .wait("unlinked", |v| hosts(v) == ["one.a.mesh.internal"])
        .await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_segment_scope_reaches_only_the_clusters_of_the_segment() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2", "cluster3"]);
    mesh.cluster("cluster1")
        .write("istio-system.yaml", &segments(Some("dev")));
    mesh.cluster("cluster2")
        .write("istio-system.yaml", &segments(Some("prod")));
    mesh.cluster("cluster3")
        .write("istio-system.yaml", &segments(Some("prod")));
    mesh.cluster("cluster2").write(
        "h.yaml",
        &format!(
            "{}---\n{}---\n{}",
            namespace("h", &[]),
            service("h", "private", Some("segment"), "10.2.0.1"),
            service("h", "open", Some("global"), "10.2.0.2")
        ),
    );
    mesh.start().await;
    mesh.link_all().await;
    mesh.cluster("cluster3")
        .wait("prod sees both", |v| {
            hosts(v) == ["open.h.cluster.prod", "private.h.cluster.prod"]
        })
        .await;
    let v1 = mesh
        .cluster("cluster1")
        .wait("dev sees the global one", |v| {
            hosts(v) == ["open.h.cluster.prod"]
        })
        .await;
    // cluster2 did not even send it to cluster1.
    let peer = v1
        .status
        .peers
        .iter()
        .find(|p| p.cluster == "cluster2")
        .unwrap();
    assert_eq!(peer.services, 1);
    // cluster1 moves to prod: it reconnects with a new segment and gets both.
    mesh.cluster("cluster1")
        .write("istio-system.yaml", &segments(Some("prod")));
    mesh.cluster("cluster1")
        .wait("now in prod", |v| {
            hosts(v) == ["open.h.cluster.prod", "private.h.cluster.prod"]
        })
        .await;
    mesh.shutdown().await;
}

/// What a cluster should see, computed from scratch from the folders: its
/// own snapshot, and each linked peer's export as the wire carries it
/// (filtered for this cluster's segment).
fn from_scratch(
    mesh: &Mesh,
    name: &str,
    previous: &meshpeer_model::GlobalCatalog,
) -> meshpeer_model::GlobalCatalog {
    let read = |dir: &std::path::Path| -> ClusterSnapshot {
        meshpeer_store::file::FolderState::load(dir)
            .unwrap()
            .snapshot()
    };
    let own = read(&mesh.cluster(name).dir);
    let own_segment = exports(&own).cluster.segment_name().map(str::to_owned);
    let peers: Vec<Export> = mesh
        .clusters
        .iter()
        .filter(|c| c.name != name)
        .map(|c| {
            let e = exports(&read(&c.dir));
            let wire = ResourceSet::from_export(&e)
                .visible_to(e.cluster.segment_name(), own_segment.as_deref());
            wire.to_export().unwrap()
        })
        .collect();
    let config = CatalogConfig {
        previous_vips: previous.vips(),
        vip_range: mesh.cluster(name).vip_range(),
    };
    catalog(&own, &peers, &config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_with_disconnects_converges_to_the_catalog_computed_from_scratch() {
    let names = ["cluster1", "cluster2", "cluster3"];
    let mut mesh = Mesh::new(&names);
    mesh.start().await;
    mesh.link_all().await;
    let mut rng = fastrand_like(7);
    for step in 0..60u32 {
        let c = names[rng.next(3)];
        match rng.next(10) {
            // Network trouble between two clusters.
            0 => {
                let to = names[rng.next(3)];
                if let Some(r) = mesh.relays.get(&(c.to_owned(), to.to_owned())) {
                    r.cut();
                }
            }
            1 => {
                let to = names[rng.next(3)];
                if let Some(r) = mesh.relays.get(&(c.to_owned(), to.to_owned())) {
                    r.set_up(false);
                }
            }
            // A cluster changes segment.
            2 => {
                let seg = [None, Some("dev"), Some("prod")][rng.next(3)];
                mesh.cluster(c).write("istio-system.yaml", &segments(seg));
            }
            // Services come, change scope, go.
            _ => {
                let ns = ["shop", "pay"][rng.next(2)];
                let svc = ["web", "api", "db"][rng.next(3)];
                let file = format!("{ns}-{svc}.yaml");
                match rng.next(4) {
                    0 => mesh.cluster(c).remove(&file),
                    n => {
                        let scope = [None, Some("global"), Some("segment")][n - 1];
                        let ip = format!("10.{}.{}.{}", rng.next(200), rng.next(200), step + 1);
                        mesh.cluster(c).write(
                            &file,
                            &format!(
                                "{}---\n{}",
                                namespace(ns, &[]),
                                service(ns, svc, scope, &ip)
                            ),
                        );
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.next(40) as u64)).await;
    }
    // Quiescence: the network heals, nothing changes any more.
    for r in mesh.relays.values() {
        r.set_up(true);
    }
    for name in names {
        let cluster = mesh.cluster(name);
        let mut last = String::new();
        let ok = cluster
            .controller()
            .wait_for(support::WITHIN, |v| {
                let want = from_scratch(&mesh, name, &v.catalog);
                if *v.catalog == want {
                    return true;
                }
                last = first_difference(
                    &serde_json::to_value(&v.catalog).unwrap(),
                    &serde_json::to_value(&want).unwrap(),
                    "catalog",
                );
                false
            })
            .await;
        assert!(ok.is_ok(), "{name} did not converge: {last}");
    }
    mesh.shutdown().await;
}

/// Where two JSON values first differ, for failure messages.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> String {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let (xa, yb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                if xa != yb {
                    return first_difference(xa, yb, &format!("{path}.{k}"));
                }
            }
            String::new()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (xa, yb)) in x.iter().zip(y).enumerate() {
                if xa != yb {
                    return first_difference(xa, yb, &format!("{path}[{i}]"));
                }
            }
            String::new()
        }
        _ => format!("{path}: have {a}, want {b}"),
    }
}

/// A tiny seeded generator (xorshift), so the churn is the same every run.
struct Rng(u64);
fn fastrand_like(seed: u64) -> Rng {
    Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}
impl Rng {
    fn next(&mut self, n: u32) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(n)) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_a_peer_under_another_root_is_refused_and_the_reason_is_shown() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.start().await;
    // cluster3 is a controller from another mesh (another root).
    let mut other = Mesh::new(&["cluster3"]);
    other.start().await;
    let target = other.cluster("cluster3").controller().peering_addr;
    let relay = support::Relay::start(target).await;
    mesh.cluster("cluster1").write(
        "peer-cluster3.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: istio-remote-peer-cluster3\n  namespace: istio-eastwest\n  annotations: {{gateway.istio.io/trust-domain: cluster3}}\nspec:\n  gatewayClassName: istio-remote\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: xds-tls, port: {}, protocol: TLS, tls: {{mode: Passthrough}}}}\n",
            relay.addr.port()
        ),
    );
    let v = mesh
        .cluster("cluster1")
        .wait("refused", |v| {
            v.status.peers.iter().any(|p| p.state == LinkState::Failed)
        })
        .await;
    let p = &v.status.peers[0];
    let err = p.last_error.clone().unwrap();
    assert!(err.contains("does not lead to the shared root"), "{err}");
    let connected = p
        .conditions
        .iter()
        .find(|c| c.type_ == "gloo.solo.io/PeerConnected")
        .unwrap();
    assert_eq!(connected.status, "False");
    assert!(
        connected
            .message
            .as_deref()
            .unwrap()
            .contains("shared root")
    );
    // And the other side logged and counted why.
    let deadline = tokio::time::Instant::now() + support::WITHIN;
    loop {
        let refused = other
            .cluster("cluster3")
            .controller()
            .current()
            .status
            .refused
            .clone();
        if let Some(r) = refused.first() {
            // TLS 1.3: the client checks the server first, so cluster1 refuses
            // cluster3's certificate and cluster3 only hears the alert.
            assert_eq!(r.reason, "refused_by_peer", "{}", r.message);
            assert!(r.message.contains("TLS alert"), "{}", r.message);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mesh.shutdown().await;
    other.shutdown().await;
}

/// SPEC I1 with real controllers: a pod of one service of many changes in
/// cluster2; cluster2 exports that one service again, and cluster1 merges
/// that one global service again, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_one_pod_change_costs_one_service_on_both_sides() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    let c2 = mesh.cluster("cluster2");
    c2.write("ns.yaml", &namespace("shop", &[]));
    for i in 0..200 {
        c2.write(
            &format!("svc{i}.yaml"),
            &service(
                "shop",
                &format!("svc{i}"),
                Some("global"),
                &format!("10.2.{}.{}", i / 200, i % 200 + 1),
            ),
        );
    }
    mesh.start().await;
    mesh.link_all().await;
    mesh.cluster("cluster1")
        .wait("all 200 seen", |v| v.catalog.services.len() == 200)
        .await;

    // svc7's pod moves to another address.
    mesh.cluster("cluster2").write(
        "svc7.yaml",
        &service("shop", "svc7", Some("global"), "10.2.9.9"),
    );
    let v2 = mesh
        .cluster("cluster2")
        .wait("svc7 exported again", |v| {
            v.status.recompute.exported == 1 && v.status.exported_services == 200
        })
        .await;
    assert!(!v2.status.recompute.full, "{:?}", v2.status.recompute);
    let v1 = mesh
        .cluster("cluster1")
        .wait("svc7's new endpoint", |v| {
            v.catalog
                .service("svc7.shop.mesh.internal")
                .is_some_and(|s| {
                    s.contributions.iter().any(|c| {
                        c.service
                            .endpoints()
                            .any(|(_, e)| e.address.to_string() == "10.2.9.9")
                    })
                })
        })
        .await;
    let r = &v1.status.recompute;
    assert_eq!((r.merged, r.hostnames, r.full), (1, 1, false), "{r:?}");
    mesh.shutdown().await;
}

/// SPEC C5 end to end in Kubernetes mode: the conditions cluster1's
/// controller computes for its link to cluster2 reach the remote-peer
/// Gateway's status as a server-side apply (kube-rs against a mocked API
/// server, tower-test), with the Gateway's generation filled in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c5_the_conditions_the_controller_computes_are_applied_to_the_gateway_status() {
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};

    const GW: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/istio-eastwest/gateways/istio-remote-peer-cluster2";
    const SE: &str = "/apis/networking.istio.io/v1/namespaces/istio-system/serviceentries";
    const WE: &str = "/apis/networking.istio.io/v1/namespaces/istio-system/workloadentries";

    let (svc, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    // The API server: ServiceEntries are applied and echoed; the peer
    // Gateway exists at generation 3; status applies are handed to the test.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Result<Value, String>>();
    let server = tokio::spawn(async move {
        while let Some((req, respond)) = api.next_request().await {
            let (parts, body) = req.into_parts();
            let body: Option<Value> = body
                .collect_bytes()
                .await
                .ok()
                .filter(|b| !b.is_empty())
                .and_then(|b| serde_json::from_slice(&b).ok());
            let path = parts.uri.path().to_owned();
            let gateway = json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "istio-remote-peer-cluster2", "namespace": "istio-eastwest",
                             "uid": "u-gw", "resourceVersion": "7", "generation": 3},
                "spec": {"gatewayClassName": "istio-remote", "listeners": []},
            });
            let reply = match (&parts.method, path.as_str()) {
                (&Method::GET, SE) => json!({
                    "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntryList",
                    "metadata": {"resourceVersion": "1"}, "items": [],
                }),
                (&Method::GET, WE) => json!({
                    "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntryList",
                    "metadata": {"resourceVersion": "1"}, "items": [],
                }),
                (&Method::PATCH, p) if p.starts_with(SE) || p.starts_with(WE) => {
                    let mut se = body.clone().unwrap_or_default();
                    se["metadata"]["uid"] = json!("u-se");
                    se["metadata"]["resourceVersion"] = json!("2");
                    se
                }
                (&Method::GET, GW) => gateway,
                (&Method::PATCH, p) if p == format!("{GW}/status") => {
                    let _ = seen_tx.send(body.ok_or_else(|| "status apply without body".into()));
                    gateway
                }
                (m, p) => {
                    let _ = seen_tx.send(Err(format!("unexpected request {m} {p}")));
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not here"})
                }
            };
            let status = if reply["kind"] == "Status" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });

    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.with_sink(
        "cluster1",
        Box::new(meshpeer_store::kube_sink::KubeSink::new(client, "meshpeer")),
    );
    let c2 = mesh.cluster("cluster2");
    c2.write(
        "shop.yaml",
        &format!(
            "{}---\n{}",
            namespace("shop", &[]),
            service("shop", "web", Some("global"), "10.2.0.5")
        ),
    );
    mesh.start().await;
    mesh.link("cluster1", "cluster2").await;
    mesh.link("cluster2", "cluster1").await;

    // Status applies follow the link's progress; wait for the synced one.
    let deadline = tokio::time::Instant::now() + support::WITHIN;
    let sent = loop {
        let next = tokio::time::timeout_at(deadline, seen.recv())
            .await
            .expect("a status apply saying the link is synced")
            .expect("API server alive");
        let sent = next.unwrap_or_else(|e| panic!("{e}"));
        let synced = sent["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "gloo.solo.io/PeeringSucceeded" && c["status"] == "True");
        if synced {
            break sent;
        }
    };
    assert_eq!(sent["metadata"]["name"], "istio-remote-peer-cluster2");
    let conditions = sent["status"]["conditions"].as_array().unwrap();
    let got: Vec<(&str, &str, &str)> = conditions
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
                c["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Accepted", "True", "Accepted"),
            ("Programmed", "True", "Programmed"),
            ("gloo.solo.io/PeerConnected", "True", "Connected"),
            ("gloo.solo.io/PeeringSucceeded", "True", "Synced"),
            ("gloo.solo.io/PeerDataPlaneProgrammed", "True", "Programmed"),
        ],
        "{sent:#}"
    );
    for c in conditions {
        // The file Gateway has no generation: the API server's is used.
        assert_eq!(c["observedGeneration"], 3, "{c}");
        assert!(
            c["lastTransitionTime"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{c}"
        );
    }
    assert!(
        conditions[3]["message"]
            .as_str()
            .unwrap()
            .contains("(1 services)"),
        "{sent:#}"
    );
    assert_eq!(
        conditions[4]["message"],
        "the peer's 1 services are in this cluster's catalog"
    );
    mesh.shutdown().await;
    server.abort();
}

/// Issue 11: editing a remote-peer Gateway without changing the peer (a
/// label, an annotation) keeps the peer's services in every version of the
/// catalog while the link is set up again; it does not drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_a_link_edit_that_keeps_the_peer_keeps_its_services() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.cluster("cluster2").write(
        "shop.yaml",
        &format!(
            "{}---\n{}",
            namespace("shop", &[]),
            service("shop", "web", Some("global"), "10.2.0.5")
        ),
    );
    mesh.start().await;
    mesh.link("cluster1", "cluster2").await;
    let c1 = mesh.cluster("cluster1");
    let before = c1
        .wait("cluster2's web", |v| {
            contributors(v, WEB).is_some_and(|c| c == ["cluster2"])
                && v.status.peers.iter().any(|p| p.state == LinkState::Synced)
        })
        .await;

    // Every version of the feed from now on must hold web.
    let mut feed = c1.controller().feed();
    let sampler = tokio::spawn(async move {
        let mut missing = Vec::new();
        while feed.changed().await.is_ok() {
            let f = feed.borrow_and_update().clone();
            if f.catalog.service(WEB).is_none() {
                missing.push(f.version);
            }
        }
        missing
    });

    // The same Gateway, with one more label and one more annotation.
    let gateway = std::fs::read_to_string(c1.dir.join("peer-cluster2.yaml")).unwrap();
    let edited = gateway
        .replace(
            "labels: {topology.istio.io/network: cluster2",
            "labels: {team.example.com/owner: payments, topology.istio.io/network: cluster2",
        )
        .replace(
            "annotations: {gateway.istio.io/trust-domain: cluster2}",
            "annotations: {gateway.istio.io/trust-domain: cluster2, example.com/note: edited}",
        );
    assert_ne!(edited, gateway, "the edit changed nothing");
    c1.write("peer-cluster2.yaml", &edited);
    let after = c1
        .wait("the edit taken and the peer synced", |v| {
            v.version > before.version
                && v.status.peers.iter().any(|p| p.state == LinkState::Synced)
                && contributors(v, WEB).is_some_and(|c| c == ["cluster2"])
        })
        .await;
    assert!(after.version > before.version);
    assert!(c1.output().contains_key(WEB), "{:?}", c1.output());
    mesh.shutdown().await;
    let missing = sampler.await.unwrap();
    assert!(
        missing.is_empty(),
        "catalog versions without {WEB}: {missing:?}"
    );
}

/// SPEC L7 in file mode: the status a controller computes for an HTTPRoute
/// of its folder is written to `<out>/status/httproutes/<ns>.<name>.yaml`
/// (what the CRD requires: transition times, generations), and the file
/// goes with the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_route_status_is_written_to_a_status_file_in_file_mode() {
    const ROUTE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: \"\", kind: Service, name: web, port: 8000}]
  rules:
  - backendRefs: [{name: web, port: 8000}]
";
    let mut mesh = Mesh::new(&["cluster1"]);
    let c1 = mesh.cluster("cluster1");
    c1.write(
        "shop.yaml",
        &format!(
            "{}---\n{}",
            namespace("shop", &[]),
            service("shop", "web", Some("global"), "10.1.0.5")
        ),
    );
    c1.write("route.yaml", ROUTE);
    mesh.start().await;
    let c1 = mesh.cluster("cluster1");
    c1.wait("route status", |v| v.catalog.route_status.len() == 1)
        .await;
    let file = c1.out.join("status/httproutes/shop.web.yaml");
    let doc: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc["kind"], "HTTPRoute");
    assert_eq!(doc["metadata"]["name"], "web");
    let parent = &doc["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "meshpeer.io/mesh-controller");
    assert_eq!(parent["parentRef"]["name"], "web");
    let conditions: Vec<(&str, &str)> = parent["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(
                c["lastTransitionTime"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z')),
                "{c}"
            );
            (c["type"].as_str().unwrap(), c["status"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        conditions,
        [("Accepted", "True"), ("ResolvedRefs", "True")],
        "{doc:#}"
    );

    c1.remove("route.yaml");
    c1.wait("route gone", |v| v.catalog.route_status.is_empty())
        .await;
    assert!(!file.exists(), "{} still there", file.display());
    mesh.shutdown().await;
}
