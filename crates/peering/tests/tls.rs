//! Peering over real mutual TLS on 127.0.0.1: a peer under the shared root
//! syncs; a peer from another root, with an expired certificate, or with an
//! unexpected trust domain is refused, and the reason is reported (C6, O7).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshpeer_identity::{
    ALPN_H2, ClusterCa, Identity, PeerPolicy, RootCa, SpiffeId, client_config, server_config,
};
use meshpeer_model::objects::GatewayAddress;
use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::{NsName, PeerLink, exports};
use meshpeer_peering::{
    Backoff, ExportPublisher, LinkConfig, LocalInfo, Metrics, PeerEvent, PeerUpdate,
    PeeringService, ServerSettings, TlsConnector, run_link, serve,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const DAY: Duration = Duration::from_secs(86_400);

fn root(name: &str) -> RootCa {
    RootCa::generate(name, DAY * 3650, SystemTime::now()).unwrap()
}

fn identity(
    ca: &RootCa,
    cluster: &str,
    td: &str,
    leaf_validity: Duration,
    now: SystemTime,
) -> Arc<Identity> {
    let cluster_ca: ClusterCa = ca
        .issue_intermediate(cluster, td, DAY * 365, now - DAY)
        .unwrap();
    let id = SpiffeId::new(td, "istio-system", "meshpeer").unwrap();
    Arc::new(Identity::new(cluster_ca, id, leaf_validity, now).unwrap())
}

/// cluster2's peering server on 127.0.0.1:0; returns its port.
async fn server2(ca: &RootCa, id: Arc<Identity>) -> (u16, PeeringService, ExportPublisher) {
    let publisher = ExportPublisher::new();
    publisher.publish(&exports(
        &ClusterBuilder::new("cluster2")
            .service(svc("shop", "web").global().ready(2))
            .build(),
    ));
    let service = PeeringService::new(
        ServerSettings::new("cluster2"),
        &publisher,
        Arc::new(Metrics::default()),
    );
    let tls = server_config(id, ca.trust_root(), PeerPolicy::AnyTrustDomain, &[ALPN_H2]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(
        listener,
        tls,
        service.clone(),
        std::future::pending(),
    ));
    (port, service, publisher)
}

fn link(port: u16, trust_domain: &str) -> PeerLink {
    PeerLink {
        cluster: "cluster2".into(),
        gateway: NsName::new("istio-eastwest", "istio-remote-peer-cluster2"),
        network: "cluster2".into(),
        trust_domain: trust_domain.into(),
        service_account: None,
        addresses: vec![GatewayAddress::ip("127.0.0.1")],
        hbone_port: 15008,
        xds_port: port,
        locality: Default::default(),
        segment: None,
    }
}

fn start_link(link: PeerLink, ca: &RootCa, id: Arc<Identity>) -> mpsc::Receiver<PeerUpdate> {
    let root = ca.trust_root().clone();
    let connector = TlsConnector::new(Arc::new(move |l: &PeerLink| {
        client_config(id.clone(), &root, &l.trust_domain, &[ALPN_H2]).map_err(|e| e.to_string())
    }));
    let (_tx, local) = watch::channel(LocalInfo {
        cluster: "cluster1".into(),
        segment: None,
        trust_domain: "cluster1".into(),
    });
    // Keep the sender alive for the test's duration.
    std::mem::forget(_tx);
    let (tx, rx) = mpsc::channel(64);
    let cfg = LinkConfig {
        link,
        local,
        heartbeat: Duration::from_secs(10),
        grace: Duration::from_secs(120),
        backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1), 3),
        limits: Default::default(),
        held_until: None,
    };
    tokio::spawn(run_link(
        cfg,
        Arc::new(connector),
        tx,
        Arc::new(Metrics::default()),
    ));
    rx
}

async fn first_outcome(rx: &mut mpsc::Receiver<PeerUpdate>) -> PeerEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no outcome within 10s")
            .expect("link ended");
        if matches!(
            ev.event,
            PeerEvent::Synced { .. } | PeerEvent::ConnectFailed { .. }
        ) {
            return ev.event;
        }
    }
}

#[tokio::test]
async fn c6_peers_under_the_shared_root_sync_over_mutual_tls() {
    let ca = root("shared");
    let now = SystemTime::now();
    let (port, service, publisher) =
        server2(&ca, identity(&ca, "cluster2", "cluster2", DAY, now)).await;
    let mut rx = start_link(
        link(port, "cluster2"),
        &ca,
        identity(&ca, "cluster1", "cluster1", DAY, now),
    );
    let PeerEvent::Synced { export, .. } = first_outcome(&mut rx).await else {
        panic!("expected a sync")
    };
    assert_eq!(
        export.services.values().next().unwrap().hostname,
        "web.shop.mesh.internal"
    );
    assert_eq!(export.services.values().next().unwrap().endpoint_count(), 2);
    // The server knows who it serves, from the certificate.
    let served = service.served();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].cluster, "cluster1");
    assert_eq!(
        served[0].spiffe_id,
        "spiffe://cluster1/ns/istio-system/sa/meshpeer"
    );
    // Changes flow as deltas.
    publisher.publish(&exports(&ClusterBuilder::new("cluster2").build()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let PeerEvent::Synced {
            export, full_state, ..
        } = ev.event
        {
            assert!(!full_state);
            assert!(export.services.is_empty());
            break;
        }
    }
}

fn refused(ev: PeerEvent) -> (&'static str, String) {
    match ev {
        PeerEvent::ConnectFailed {
            reason, message, ..
        } => (reason, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn c6_a_peer_from_another_root_is_refused() {
    let ca = root("shared");
    let other = root("other");
    let now = SystemTime::now();
    let (port, service, _p) = server2(&ca, identity(&ca, "cluster2", "cluster2", DAY, now)).await;
    // cluster1's certificate comes from another root.
    let mut rx = start_link(
        link(port, "cluster2"),
        &ca,
        identity(&other, "cluster1", "cluster1", DAY, now),
    );
    let (reason, message) = refused(first_outcome(&mut rx).await);
    assert_eq!(reason, "refused_by_peer", "{message}");
    // The server says why, in its status.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while service.refusals().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = &service.refusals()[0];
    assert_eq!(r.reason, "unknown_root");
    assert!(
        r.message.contains("does not lead to the shared root"),
        "{}",
        r.message
    );

    // The other way round: the server's certificate from another root.
    let (port, _s, _p) = server2(&other, identity(&other, "cluster2", "cluster2", DAY, now)).await;
    let mut rx = start_link(
        link(port, "cluster2"),
        &ca,
        identity(&ca, "cluster1", "cluster1", DAY, now),
    );
    let (reason, message) = refused(first_outcome(&mut rx).await);
    assert_eq!(reason, "unknown_root", "{message}");
    assert!(message.contains("peer cluster2 at 127.0.0.1"), "{message}");
    assert!(
        message.contains("does not lead to the shared root"),
        "{message}"
    );
}

#[tokio::test]
async fn c6_an_expired_certificate_is_refused() {
    let ca = root("shared");
    let now = SystemTime::now();
    // The server's leaf expired an hour ago.
    let expired = identity(
        &ca,
        "cluster2",
        "cluster2",
        Duration::from_secs(3600),
        now - 2 * Duration::from_secs(3600),
    );
    let (port, _s, _p) = server2(&ca, expired).await;
    let mut rx = start_link(
        link(port, "cluster2"),
        &ca,
        identity(&ca, "cluster1", "cluster1", DAY, now),
    );
    let (reason, message) = refused(first_outcome(&mut rx).await);
    assert_eq!(reason, "expired", "{message}");
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn c6_an_unexpected_trust_domain_is_refused() {
    let ca = root("shared");
    let now = SystemTime::now();
    // The gateway annotation says cluster2, but the server is cluster3.
    let (port, _s, _p) = server2(&ca, identity(&ca, "cluster2", "cluster3", DAY, now)).await;
    let mut rx = start_link(
        link(port, "cluster2"),
        &ca,
        identity(&ca, "cluster1", "cluster1", DAY, now),
    );
    let (reason, message) = refused(first_outcome(&mut rx).await);
    assert_eq!(reason, "wrong_trust_domain", "{message}");
    assert!(
        message.contains("trust domain is cluster3, expected cluster2"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreachable_peer_is_reported_as_such() {
    let ca = root("shared");
    let now = SystemTime::now();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut rx = start_link(
        link(port, "cluster2"),
        &ca,
        identity(&ca, "cluster1", "cluster1", DAY, now),
    );
    let (reason, message) = refused(first_outcome(&mut rx).await);
    assert_eq!(reason, "unreachable");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
}

/// An identity of cluster1's trust domain with any namespace and account.
fn identity_as(ca: &RootCa, td: &str, ns: &str, sa: &str) -> Arc<Identity> {
    let now = SystemTime::now();
    let cluster_ca: ClusterCa = ca.issue_intermediate(td, td, DAY * 365, now - DAY).unwrap();
    let id = SpiffeId::new(td, ns, sa).unwrap();
    Arc::new(Identity::new(cluster_ca, id, DAY, now).unwrap())
}

#[tokio::test]
async fn p1_a_workload_certificate_cannot_peer_and_is_told_why() {
    let ca = root("shared");
    let now = SystemTime::now();
    let (port, service, _p) = server2(&ca, identity(&ca, "cluster2", "cluster2", DAY, now)).await;
    for (ns, sa) in [
        ("httpbin", "default"),
        ("istio-system", "meshpeer-proxy"),
        ("istio-eastwest", "istio-eastwest"),
    ] {
        let mut rx = start_link(
            link(port, "cluster2"),
            &ca,
            identity_as(&ca, "cluster1", ns, sa),
        );
        let (reason, message) = refused(first_outcome(&mut rx).await);
        assert_eq!(reason, "refused", "{message}");
        // The reason travels on the wire.
        assert!(
            message.contains(&format!(
                "certificate spiffe://cluster1/ns/{ns}/sa/{sa} is not a controller identity"
            )),
            "{message}"
        );
    }
    assert!(service.served().is_empty());
    let refusals = service.refusals();
    assert_eq!(refusals.len(), 3);
    assert!(refusals.iter().all(|r| r.reason == "not_a_controller"));
}

#[tokio::test]
async fn p1_the_peering_port_must_be_answered_by_a_controller() {
    let ca = root("shared");
    // Something of cluster2's trust domain that is not its controller.
    let (port, _s, _p) = server2(
        &ca,
        identity_as(&ca, "cluster2", "istio-eastwest", "istio-eastwest"),
    )
    .await;
    let now = SystemTime::now();
    let mut rx = start_link(
        link(port, "cluster2"),
        &ca,
        identity(&ca, "cluster1", "cluster1", DAY, now),
    );
    let (reason, message) = refused(first_outcome(&mut rx).await);
    assert_eq!(reason, "not_a_controller", "{message}");
    assert!(
        message.contains("istio-eastwest/sa/istio-eastwest"),
        "{message}"
    );
}

#[tokio::test]
async fn p1_allowed_peers_and_own_trust_domain() {
    let ca = root("shared");
    let now = SystemTime::now();
    let (port, service, _p) = server2(&ca, identity(&ca, "cluster2", "cluster2", DAY, now)).await;
    let mut admission = service.admission();
    admission.allowed_trust_domains = Some(["cluster3".to_owned()].into());
    service.set_admission(admission);
    let mut rx = start_link(
        link(port, "cluster2"),
        &ca,
        identity(&ca, "cluster1", "cluster1", DAY, now),
    );
    let (_, message) = refused(first_outcome(&mut rx).await);
    assert!(
        message.contains("trust domain cluster1 is not among the allowed peers (cluster3)"),
        "{message}"
    );
    // A controller of the server's own trust domain is no peer either.
    let mut rx = start_link(
        link(port, "cluster2"),
        &ca,
        identity(&ca, "cluster2b", "cluster2", DAY, now),
    );
    let (_, message) = refused(first_outcome(&mut rx).await);
    assert!(
        message.contains("this cluster's own trust domain"),
        "{message}"
    );
    let reasons: Vec<&str> = service.refusals().iter().map(|r| r.reason).collect();
    assert_eq!(reasons, ["peer_not_allowed", "own_trust_domain"]);
}

// A mesh where cluster1, cluster2 and cluster3 share the trust domain
// cluster.local (Istio's multi-network model): each cluster's intermediate
// is bound to its cluster by the root, and that binding, not the trust
// domain, tells the clusters apart (P1, P6).

const SHARED: &str = "cluster.local";

fn shared_controller(ca: &RootCa, cluster: &str) -> Arc<Identity> {
    identity(ca, cluster, SHARED, DAY, SystemTime::now())
}

/// cluster2's peering server in the shared trust domain, reading clients'
/// cluster bindings from the shared root; `allowed`: `--allowed-peers`.
async fn shared_server2(
    ca: &RootCa,
    id: Arc<Identity>,
    allowed: Option<&[&str]>,
) -> (u16, PeeringService) {
    // The exports of cluster2 stay published for the test's duration.
    let publisher = ExportPublisher::new();
    publisher.publish(&exports(
        &ClusterBuilder::new("cluster2")
            .trust_domain(SHARED)
            .service(svc("shop", "web").global().ready(2))
            .build(),
    ));
    let mut settings = ServerSettings::new("cluster2");
    settings.admission.own_trust_domain = SHARED.into();
    settings.admission.own_cluster = "cluster2".into();
    settings.admission.own_cluster_bound = true;
    settings.admission.allowed_trust_domains =
        allowed.map(|a| a.iter().map(|s| (*s).to_owned()).collect());
    settings.trust_root = Some(ca.trust_root().clone());
    let service = PeeringService::new(settings, &publisher, Arc::new(Metrics::default()));
    std::mem::forget(publisher);
    let tls = server_config(id, ca.trust_root(), PeerPolicy::AnyTrustDomain, &[ALPN_H2]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(
        listener,
        tls,
        service.clone(),
        std::future::pending(),
    ));
    (port, service)
}

/// A link from `me` (a cluster of the shared trust domain) to cluster2,
/// checking that the server's chain is bound to cluster2.
fn start_shared_link(
    port: u16,
    me: &str,
    ca: &RootCa,
    id: Arc<Identity>,
) -> mpsc::Receiver<PeerUpdate> {
    let root = ca.trust_root().clone();
    let connector = TlsConnector::new(Arc::new(move |l: &PeerLink| {
        meshpeer_identity::client_config_for_cluster(
            id.clone(),
            &root,
            &l.trust_domain,
            &l.cluster,
            true,
            &[ALPN_H2],
        )
        .map_err(|e| e.to_string())
    }));
    let (tx, local) = watch::channel(LocalInfo {
        cluster: me.into(),
        segment: None,
        trust_domain: SHARED.into(),
    });
    std::mem::forget(tx);
    let (tx, rx) = mpsc::channel(64);
    let cfg = LinkConfig {
        link: link(port, SHARED),
        local,
        heartbeat: Duration::from_secs(10),
        grace: Duration::from_secs(120),
        backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1), 3),
        limits: Default::default(),
        held_until: None,
    };
    tokio::spawn(run_link(
        cfg,
        Arc::new(connector),
        tx,
        Arc::new(Metrics::default()),
    ));
    rx
}

#[tokio::test]
async fn p1_shared_trust_domain_peers_sync_and_the_own_cluster_is_refused() {
    let ca = root("shared");
    let (port, service) = shared_server2(&ca, shared_controller(&ca, "cluster2"), None).await;
    // cluster1, same SPIFFE ID as cluster2's controller, syncs.
    let mut rx = start_shared_link(port, "cluster1", &ca, shared_controller(&ca, "cluster1"));
    assert!(
        matches!(first_outcome(&mut rx).await, PeerEvent::Synced { .. }),
        "cluster1 syncs with cluster2"
    );
    let served = service.served();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].cluster, "cluster1");
    assert_eq!(served[0].cluster_binding.as_deref(), Some("cluster1"));

    // A chain from cluster2's own intermediate is no peer.
    let mut rx = start_shared_link(port, "cluster2", &ca, shared_controller(&ca, "cluster2"));
    let (reason, message) = refused(first_outcome(&mut rx).await);
    assert_eq!(reason, "refused", "{message}");
    assert!(
        message.contains("bound to this cluster cluster2"),
        "{message}"
    );
    assert_eq!(service.refusals().last().unwrap().reason, "own_cluster");
}

#[tokio::test]
async fn p1_shared_trust_domain_a_cluster_cannot_claim_another_and_allowed_peers_name_clusters() {
    let ca = root("shared");
    let (port, service) =
        shared_server2(&ca, shared_controller(&ca, "cluster2"), Some(&["cluster1"])).await;
    // cluster3 is not allowed.
    let mut rx = start_shared_link(port, "cluster3", &ca, shared_controller(&ca, "cluster3"));
    let (_, message) = refused(first_outcome(&mut rx).await);
    assert!(
        message.contains("cluster cluster3 (trust domain cluster.local) is not among the allowed peers (cluster1)"),
        "{message}"
    );
    // cluster3's controller says it is cluster1: its leaf is the same
    // SPIFFE ID, but its intermediate is cluster3's.
    let mut rx = start_shared_link(port, "cluster1", &ca, shared_controller(&ca, "cluster3"));
    let (_, message) = refused(first_outcome(&mut rx).await);
    assert!(message.contains("cluster cluster3"), "{message}");
    let reasons: Vec<&str> = service.refusals().iter().map(|r| r.reason).collect();
    assert_eq!(reasons, ["peer_not_allowed", "peer_not_allowed"]);
    assert!(service.served().is_empty());
}

#[tokio::test]
async fn p1_shared_trust_domain_a_cluster_cannot_claim_another_in_its_hello() {
    let ca = root("shared");
    let (port, service) = shared_server2(&ca, shared_controller(&ca, "cluster2"), None).await;
    let mut rx = start_shared_link(port, "cluster1", &ca, shared_controller(&ca, "cluster3"));
    let (_, message) = refused(first_outcome(&mut rx).await);
    assert!(
        message.contains(
            "says it is cluster cluster1, but its intermediate is bound to cluster cluster3"
        ),
        "{message}"
    );
    assert_eq!(service.refusals()[0].reason, "cluster_name_mismatch");
}

#[tokio::test]
async fn p6_shared_trust_domain_an_intermediate_without_cluster_binding_cannot_peer() {
    let ca = root("shared");
    let (port, service) = shared_server2(&ca, shared_controller(&ca, "cluster2"), None).await;
    let unbound = ca
        .issue_trust_domain_intermediate("cluster1", SHARED, DAY * 365, SystemTime::now() - DAY)
        .unwrap();
    let id = SpiffeId::new(SHARED, "istio-system", "meshpeer").unwrap();
    let client = Arc::new(Identity::new(unbound, id, DAY, SystemTime::now()).unwrap());
    let mut rx = start_shared_link(port, "cluster1", &ca, client);
    let (_, message) = refused(first_outcome(&mut rx).await);
    assert!(message.contains("cannot say which cluster"), "{message}");
    assert_eq!(service.refusals()[0].reason, "no_cluster_binding");
}

#[tokio::test]
async fn p1_shared_trust_domain_a_client_refuses_another_cluster_answering_for_its_peer() {
    let ca = root("shared");
    // cluster3's controller answers at the address cluster1 links as cluster2.
    let (port, _service) = shared_server2(&ca, shared_controller(&ca, "cluster3"), None).await;
    let mut rx = start_shared_link(port, "cluster1", &ca, shared_controller(&ca, "cluster1"));
    let (reason, message) = refused(first_outcome(&mut rx).await);
    assert_eq!(reason, "wrong_cluster", "{message}");
    assert!(message.contains("speaks for cluster cluster3"), "{message}");
}
