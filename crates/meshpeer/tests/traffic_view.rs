//! Cross-cluster traffic through the controller's API (issue 16): real
//! connections from cluster1's clients through its proxy, over HBONE, to
//! cluster2's gateway and backend; both sides report their flow counts to
//! their own controller, which serves them at `GET /v1/traffic`. Reports
//! are taken only from this cluster's proxy and gateway identities.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshpeer::cluster_api::ClusterListener;
use meshpeer::controller::traffic::{FlowRow, TrafficBook, TrafficDoc};
use meshpeer::controller::{Controller, ControllerConfig};
use meshpeer_dataplane::report::{FlowCount, ReportTarget, TrafficReport, send};
use meshpeer_identity::{Identity, RootCa, SpiffeId, client_config_for};
use meshpeer_store::file_sink::FileSink;
use meshpeer_store::file_source::FileSource;
use rustls::client::ResolvesClientCert;
use support::{Backend, Mesh, WITHIN, namespace, service_with};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const HOST: &str = "echo.shop.mesh.internal";

/// The flow `reporter`/`src`/`dst`/`service` of a document, if listed.
fn flow<'a>(doc: &'a TrafficDoc, reporter: &str, src: &str, dst: &str) -> Option<&'a FlowRow> {
    doc.flows.iter().find(|f| {
        f.reporter == reporter
            && f.source_cluster == src
            && f.destination_cluster == dst
            && f.service == HOST
    })
}

/// Waits (new reports wake it; deadline [`WITHIN`]) until `book`'s
/// document satisfies `pred`.
async fn wait_traffic(
    book: &Arc<TrafficBook>,
    what: &str,
    mut pred: impl FnMut(&TrafficDoc) -> bool,
) -> TrafficDoc {
    let mut taken = book.subscribe();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        taken.borrow_and_update();
        let doc = book.doc();
        if pred(&doc) {
            return doc;
        }
        match tokio::time::timeout_at(deadline, taken.changed()).await {
            Ok(r) => r.unwrap(),
            Err(_) => panic!("{what}: not within {WITHIN:?}; last document: {doc:#?}"),
        }
    }
}

/// One connection to `vip`: reads the backend's name line, sends
/// `payload`, reads it echoed, closes. Returns the name.
async fn exchange(vip: SocketAddr, payload: &[u8]) -> String {
    let conn = TcpStream::connect(vip).await.unwrap();
    let mut conn = BufReader::new(conn);
    let mut name = String::new();
    conn.read_line(&mut name).await.unwrap();
    conn.get_mut().write_all(payload).await.unwrap();
    let mut echoed = vec![0; payload.len()];
    conn.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, payload);
    conn.get_mut().shutdown().await.unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    name.trim_end().to_owned()
}

/// cluster1 and cluster2, linked both ways, with data planes that report
/// every 100 ms; `echo.shop` exists only in cluster2 (one backend), so
/// cluster1's clients cross to it.
async fn crossing() -> (Mesh, Backend, SocketAddr) {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.report_interval = Some(Duration::from_millis(100));
    mesh.start().await;
    mesh.start_dataplane().await;
    mesh.link_all().await;
    let c2 = mesh.cluster("cluster2");
    let ip = c2.pod_ip(1);
    c2.write("shop-ns.yaml", &namespace("shop", &[]));
    c2.write(
        "echo.yaml",
        &service_with(
            "shop",
            "echo",
            &[("solo.io/service-scope", "global")],
            &[],
            &[("echo-0", &ip, &[])],
        ),
    );
    let backend = Backend::start(format!("{ip}:8080").parse().unwrap(), "cluster2").await;
    mesh.cluster("cluster2").wait_caller("cluster1").await;
    let vip = mesh
        .cluster("cluster1")
        .wait_route(HOST, 8000, &["cluster2"])
        .await;
    (mesh, backend, vip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_across_clusters_are_counted_exactly_by_both_controllers() {
    let (mesh, mut backend, vip) = crossing().await;
    const N: u64 = 7;
    let payload = b"0123456789abcdefghijklmnopqrstuvwxyz".repeat(3);
    let k = payload.len() as u64;
    for _ in 0..N {
        assert_eq!(exchange(vip, &payload).await, "cluster2");
    }
    // "cluster2\n" then the echo.
    let answer = "cluster2\n".len() as u64 + k;

    // cluster1's controller: what its proxy saw leave for cluster2.
    let c1 = mesh.cluster("cluster1").controller().traffic();
    // Bytes are counted as they pass (the gateway) or as a connection
    // ends (the proxy): wait for the report that has them all.
    let all = |f: &FlowRow| f.connections == N && f.bytes_received == N * answer;
    let doc = wait_traffic(&c1, "cluster1's proxy reports N connections", |d| {
        flow(d, "proxy", "cluster1", "cluster2").is_some_and(all)
    })
    .await;
    let f = flow(&doc, "proxy", "cluster1", "cluster2").unwrap();
    assert_eq!(
        (f.failures, f.bytes_sent, f.bytes_received),
        (0, N * k, N * answer),
        "{f:#?}"
    );
    assert_eq!(doc.cluster, "cluster1");
    assert!(doc.reporters.iter().any(|r| r.role == "proxy"), "{doc:#?}");
    assert!(
        doc.reporters.iter().any(|r| r.role == "gateway"),
        "{doc:#?}"
    );

    // cluster2's controller: what its gateway let in from cluster1.
    let c2 = mesh.cluster("cluster2").controller().traffic();
    let doc = wait_traffic(&c2, "cluster2's gateway reports N tunnels", |d| {
        flow(d, "gateway", "cluster1", "cluster2").is_some_and(all)
    })
    .await;
    let f = flow(&doc, "gateway", "cluster1", "cluster2").unwrap();
    assert_eq!(
        (f.failures, f.bytes_sent, f.bytes_received),
        (0, N * k, N * answer),
        "{f:#?}"
    );

    // The backend goes: the next connection fails. cluster1's proxy counts
    // a failure with no destination, cluster2's gateway its refusals.
    backend.stop().await;
    let mut conn = TcpStream::connect(vip).await.unwrap();
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let doc = wait_traffic(&c1, "cluster1's proxy reports the failure", |d| {
        flow(d, "proxy", "cluster1", "none").is_some_and(|f| f.connections == 1)
    })
    .await;
    let failed = flow(&doc, "proxy", "cluster1", "none").unwrap();
    assert_eq!(failed.failures, 1);
    assert_eq!(failed.error_rate, 1.0);
    let ok = flow(&doc, "proxy", "cluster1", "cluster2").unwrap();
    assert_eq!((ok.connections, ok.failures), (N, 0), "the successes stay");
    let doc = wait_traffic(&c2, "cluster2's gateway reports the refusals", |d| {
        flow(d, "gateway", "cluster1", "cluster2").is_some_and(|f| f.failures >= 1)
    })
    .await;
    let f = flow(&doc, "gateway", "cluster1", "cluster2").unwrap();
    assert_eq!(f.connections, N + f.failures, "{f:#?}");
    assert_eq!(f.bytes_sent, N * k, "failed tunnels carry no bytes");

    // The proxy stops: its last report keeps its counts at the controller.
    let mut mesh = mesh;
    let proxy = mesh.clusters[0].proxy.take().unwrap();
    proxy.shutdown().await;
    let doc = c1.doc();
    assert!(
        !doc.reporters.iter().any(|r| r.role == "proxy"),
        "a stopped proxy is no reporter any more: {doc:#?}"
    );
    let f = flow(&doc, "proxy", "cluster1", "cluster2").unwrap();
    assert_eq!((f.connections, f.bytes_sent), (N, N * k));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_traffic_as_json_and_takes_reports_from_loopback() {
    let mut mesh = Mesh::new(&["cluster1"]);
    mesh.start_controller(
        "cluster1",
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await;
    let c1 = mesh.cluster("cluster1");
    c1.write("shop-ns.yaml", &namespace("shop", &[]));
    c1.write(
        "echo.yaml",
        &service_with(
            "shop",
            "echo",
            &[("solo.io/service-scope", "global")],
            &[],
            &[("echo-0", &c1.pod_ip(1), &[])],
        ),
    );
    c1.wait("echo global", |v| v.catalog.service(HOST).is_some())
        .await;
    let api = c1.controller().api_addr.unwrap();
    let report = TrafficReport {
        role: "proxy".into(),
        instance: "a tool on this machine".into(),
        interval_ms: 5000,
        last: false,
        flows: vec![FlowCount {
            source_cluster: "cluster1".into(),
            destination_cluster: "cluster1".into(),
            service: HOST.into(),
            connections: 3,
            failures: 1,
            bytes_sent: 30,
            bytes_received: 300,
        }],
    };
    send(&ReportTarget::Plain(api.to_string()), &report)
        .await
        .unwrap();
    let body = meshpeer::api::get(&api.to_string(), "/v1/traffic", WITHIN)
        .await
        .unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(raw["cluster"], "cluster1");
    let f = &raw["flows"][0];
    assert_eq!(f["reporter"], "proxy");
    assert_eq!(f["sourceCluster"], "cluster1");
    assert_eq!(f["destinationCluster"], "cluster1");
    assert_eq!(f["service"], HOST);
    assert_eq!(
        (f["connections"].as_u64(), f["failures"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        (f["bytesSent"].as_u64(), f["bytesReceived"].as_u64()),
        (Some(30), Some(300))
    );
    assert!(f["connectionsPerSecond"].is_number() && f["errorRate"].is_number());
    assert_eq!(raw["reporters"][0]["identity"], "loopback");
    assert_eq!(raw["reporters"][0]["instance"], "a tool on this machine");

    // Not a report: 400 with the reason; a bad role too.
    let bad = TrafficReport {
        role: "controller".into(),
        ..report.clone()
    };
    let e = send(&ReportTarget::Plain(api.to_string()), &bad)
        .await
        .unwrap_err();
    assert!(
        e.contains("400") && e.contains("not proxy or gateway"),
        "{e}"
    );
    mesh.shutdown().await;
}

/// c1's controller with a cluster listener; identities minted by c1's CA
/// (and c2's, under the same root) report to it over mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p8_only_this_clusters_proxy_and_gateway_may_report_traffic() {
    meshpeer_identity::install_default_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), "name: c1\n").unwrap();
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let root = RootCa::generate("test root", 30 * day, now - day).unwrap();
    let ca = Arc::new(
        root.issue_intermediate("c1", "c1", 10 * day, now - day)
            .unwrap(),
    );
    let other = Arc::new(
        root.issue_intermediate("c2", "c2", 10 * day, now - day)
            .unwrap(),
    );
    let mint = |ca: &Arc<meshpeer_identity::ClusterCa>, td: &str, ns: &str, sa: &str| {
        Arc::new(
            Identity::new(Arc::clone(ca), SpiffeId::new(td, ns, sa).unwrap(), day, now).unwrap(),
        )
    };
    let controller_id = mint(&ca, "c1", "istio-system", "meshpeer");
    let mut cfg = ControllerConfig::new(
        Box::new(FileSource::new(dir.clone(), Duration::from_millis(20))),
        Box::new(FileSink::new(dir.join(".meshpeer/out"))),
        Arc::clone(&controller_id),
        root.trust_root().clone(),
        "127.0.0.1:0".parse().unwrap(),
    );
    cfg.cluster = Some(ClusterListener::new("127.0.0.1:0".parse().unwrap(), "c1"));
    let controller = Controller::start(cfg).await.unwrap();
    controller.wait_for(WITHIN, |_| true).await.unwrap();
    let address = controller.cluster_addr.unwrap().to_string();
    let book = controller.traffic();

    let report = |role: &str| TrafficReport {
        role: role.into(),
        instance: format!("{role} pid 1"),
        interval_ms: 5000,
        last: false,
        flows: Vec::new(),
    };
    let as_ = |client: Option<Arc<Identity>>| ReportTarget::Tls {
        address: address.clone(),
        tls: client_config_for(
            client.map(|c| c as Arc<dyn ResolvesClientCert>),
            root.trust_root(),
            controller_id.spiffe_id(),
            &[b"http/1.1"],
        )
        .unwrap(),
    };

    // This cluster's proxy and gateway: taken.
    for (role, ns, sa) in [
        ("proxy", "istio-system", "meshpeer-proxy"),
        ("gateway", "istio-eastwest", "istio-eastwest"),
    ] {
        send(&as_(Some(mint(&ca, "c1", ns, sa))), &report(role))
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}"));
    }
    // Anyone else: 403 with the reason.
    let refusals = [
        (
            Some(mint(&ca, "c1", "default", "sleep")),
            "spiffe://c1/ns/default/sa/sleep may not report traffic",
        ),
        (
            Some(mint(&ca, "c1", "istio-system", "meshpeer")),
            "spiffe://c1/ns/istio-system/sa/meshpeer may not report traffic",
        ),
        (
            Some(mint(&other, "c2", "istio-system", "meshpeer-proxy")),
            "is not of this cluster's trust domain c1",
        ),
        (None, "needs a client certificate"),
    ];
    for (client, why) in refusals {
        let e = send(&as_(client), &report("proxy")).await.unwrap_err();
        assert!(e.contains("403") && e.contains(why), "{e}");
    }
    let doc = book.doc();
    let mut who: Vec<(String, String)> = doc
        .reporters
        .iter()
        .map(|r| (r.role.clone(), r.identity.clone()))
        .collect();
    who.sort();
    assert_eq!(
        who,
        [
            (
                "gateway".to_owned(),
                "spiffe://c1/ns/istio-eastwest/sa/istio-eastwest".to_owned()
            ),
            (
                "proxy".to_owned(),
                "spiffe://c1/ns/istio-system/sa/meshpeer-proxy".to_owned()
            ),
        ]
    );
    controller.shutdown().await;
}
