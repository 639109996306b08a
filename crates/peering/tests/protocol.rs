//! The peering protocol over in-memory links, on tokio's paused clock: full
//! state then deltas, ACK/NACK, segment filtering, heartbeats, stale exports
//! and their grace period, reconnect back-off and resync.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::{Export, NsName, PeerLink, exports};
use meshpeer_peering::proto::{self, PeerRequest, peer_request};
use meshpeer_peering::testing::MemoryConnector;
use meshpeer_peering::{
    Backoff, ConnInfo, ConnectError, Connection, Connector, ExportPublisher, LinkConfig, LocalInfo,
    Metrics, PeerEvent, PeerUpdate, PeeringService, ServerSettings, run_link,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const HEARTBEAT: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(120);

fn link(peer: &str) -> PeerLink {
    PeerLink {
        cluster: peer.to_owned(),
        gateway: NsName::new("istio-eastwest", format!("istio-remote-peer-{peer}")),
        network: peer.to_owned(),
        trust_domain: peer.to_owned(),
        service_account: None,
        addresses: vec![],
        hbone_port: 15008,
        xds_port: 15012,
        locality: Default::default(),
        segment: None,
    }
}

fn local(cluster: &str, segment: Option<&str>) -> LocalInfo {
    LocalInfo {
        cluster: cluster.to_owned(),
        segment: segment.map(str::to_owned),
        trust_domain: cluster.to_owned(),
    }
}

/// cluster2's export, in segment `segment`, with the given services.
fn export2(segment: Option<&str>, services: &[(&str, &str)]) -> Export {
    let mut b = ClusterBuilder::new("cluster2")
        .segment("dev", "cluster.dev")
        .segment("prod", "cluster.prod");
    if let Some(s) = segment {
        b = b.join(s);
    }
    for (name, scope) in services {
        b = b.service(svc("shop", name).scope(scope).ready(1));
    }
    exports(&b.build())
}

fn names(e: &Export) -> Vec<String> {
    e.services.values().map(|s| s.name.clone()).collect()
}

struct Setup {
    publisher: ExportPublisher,
    service: PeeringService,
    connector: Arc<MemoryConnector>,
    local: watch::Sender<LocalInfo>,
    events: mpsc::Receiver<PeerUpdate>,
}

fn setup(initial: &Export, segment: Option<&str>) -> Setup {
    let publisher = ExportPublisher::new();
    publisher.publish(initial);
    let mut settings = ServerSettings::new("cluster2");
    settings.heartbeat = HEARTBEAT;
    let service = PeeringService::new(settings, &publisher, Arc::new(Metrics::default()));
    let connector = Arc::new(MemoryConnector::new());
    connector.add("cluster2", service.clone());
    let (local_tx, local_rx) = watch::channel(local("cluster1", segment));
    let (tx, rx) = mpsc::channel(64);
    let cfg = LinkConfig {
        link: link("cluster2"),
        local: local_rx,
        heartbeat: HEARTBEAT,
        grace: GRACE,
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 1),
        limits: Default::default(),
        held_until: None,
    };
    tokio::spawn(run_link(
        cfg,
        connector.clone(),
        tx,
        Arc::new(Metrics::default()),
    ));
    Setup {
        publisher,
        service,
        connector,
        local: local_tx,
        events: rx,
    }
}

/// The next event that matches, within a (virtual) deadline.
async fn wait_for(
    rx: &mut mpsc::Receiver<PeerUpdate>,
    within: Duration,
    mut pred: impl FnMut(&PeerEvent) -> bool,
) -> PeerEvent {
    let deadline = Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no matching event before the deadline")
            .expect("link task ended");
        if pred(&ev.event) {
            return ev.event;
        }
    }
}

async fn synced(rx: &mut mpsc::Receiver<PeerUpdate>) -> (Arc<Export>, bool) {
    match wait_for(rx, Duration::from_secs(5), |e| {
        matches!(e, PeerEvent::Synced { .. })
    })
    .await
    {
        PeerEvent::Synced {
            export, full_state, ..
        } => (export, full_state),
        _ => unreachable!(),
    }
}

#[tokio::test(start_paused = true)]
async fn full_state_then_deltas_with_explicit_removals() {
    let mut s = setup(&export2(None, &[("cart", "global")]), None);
    let (e, full) = synced(&mut s.events).await;
    assert!(full);
    assert_eq!(names(&e), ["cart"]);
    assert_eq!(e.cluster.name, "cluster2");

    s.publisher
        .publish(&export2(None, &[("cart", "global"), ("web", "global")]));
    let (e, full) = synced(&mut s.events).await;
    assert!(!full, "changes come as deltas");
    assert_eq!(names(&e), ["cart", "web"]);

    s.publisher.publish(&export2(None, &[("web", "global")]));
    let (e, _) = synced(&mut s.events).await;
    assert_eq!(names(&e), ["web"], "removal is explicit");

    // The server saw the ACK of the last version.
    let version = s.publisher.current().version;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let served = s.service.served();
        if served.len() == 1 && served[0].acked_version == Some(version) {
            assert_eq!(served[0].cluster, "cluster1");
            assert_eq!(served[0].resources, 2);
            break;
        }
        assert!(Instant::now() < deadline, "{served:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_rejected_delta_is_nacked_and_the_last_good_state_kept() {
    let mut s = setup(&export2(None, &[("cart", "global")]), None);
    synced(&mut s.events).await;
    // cluster2 suddenly claims to be another cluster: cluster1 refuses it.
    let mut impostor = export2(None, &[("cart", "global"), ("evil", "global")]);
    impostor.cluster.name = "cluster9".into();
    s.publisher.publish(&impostor);
    let ev = wait_for(&mut s.events, Duration::from_secs(5), |e| {
        matches!(e, PeerEvent::Rejected { .. } | PeerEvent::Synced { .. })
    })
    .await;
    let PeerEvent::Rejected { error, .. } = ev else {
        panic!("expected a rejection, got {ev:?}")
    };
    assert!(error.contains("says it is cluster cluster9"), "{error}");
    let deadline = Instant::now() + Duration::from_secs(1);
    while s.service.served()[0].last_error.is_none() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // A later good version is accepted again.
    s.publisher
        .publish(&export2(None, &[("cart", "global"), ("web", "global")]));
    let (e, _) = synced(&mut s.events).await;
    assert_eq!(names(&e), ["cart", "web"]);
}

#[tokio::test(start_paused = true)]
async fn s7_segment_scoped_services_go_only_to_the_same_segment() {
    let export = export2(Some("prod"), &[("open", "global"), ("private", "segment")]);
    // cluster1 is in dev: it gets only the global service.
    let mut s = setup(&export, Some("dev"));
    let (e, _) = synced(&mut s.events).await;
    assert_eq!(names(&e), ["open"]);
    // cluster1 moves to prod: it reconnects with a new Hello and gets both.
    s.local.send(local("cluster1", Some("prod"))).unwrap();
    let (e, full) = synced(&mut s.events).await;
    assert!(full, "a new stream starts with the full state");
    assert_eq!(names(&e), ["open", "private"]);
}

#[tokio::test(start_paused = true)]
async fn a_lost_peer_is_stale_for_the_grace_period_then_dropped() {
    let mut s = setup(&export2(None, &[("cart", "global")]), None);
    synced(&mut s.events).await;
    s.connector.set_up("cluster2", false);
    let t0 = Instant::now();
    let ev = wait_for(&mut s.events, Duration::from_secs(5), |e| {
        matches!(e, PeerEvent::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(ev, PeerEvent::Disconnected { stale: true, .. }),
        "{ev:?}"
    );
    // Reconnects fail meanwhile; the export is dropped only at the end of the grace period.
    let ev = wait_for(&mut s.events, GRACE * 2, |e| {
        matches!(e, PeerEvent::Expired)
    })
    .await;
    assert!(matches!(ev, PeerEvent::Expired));
    let waited = t0.elapsed();
    assert!(
        waited >= GRACE && waited < GRACE + Duration::from_secs(1),
        "expired after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_within_grace_resyncs_to_exactly_the_current_export() {
    let mut s = setup(
        &export2(None, &[("cart", "global"), ("web", "global")]),
        None,
    );
    synced(&mut s.events).await;
    s.connector.set_up("cluster2", false);
    wait_for(&mut s.events, Duration::from_secs(5), |e| {
        matches!(e, PeerEvent::Disconnected { .. })
    })
    .await;
    // While disconnected, cluster2 drops "web" and adds "api".
    s.publisher
        .publish(&export2(None, &[("api", "global"), ("cart", "global")]));
    tokio::time::sleep(Duration::from_secs(30)).await;
    s.connector.set_up("cluster2", true);
    let (e, full) = synced(&mut s.events).await;
    assert!(full);
    assert_eq!(
        names(&e),
        ["api", "cart"],
        "nothing stale survives a resync"
    );
}

#[tokio::test(start_paused = true)]
async fn reconnect_delays_grow_with_jitter_and_are_capped() {
    let mut s = setup(&export2(None, &[]), None);
    synced(&mut s.events).await;
    s.connector.set_up("cluster2", false);
    let mut attempts = Vec::new();
    let mut delays = Vec::new();
    while attempts.len() < 10 {
        match wait_for(&mut s.events, Duration::from_secs(60), |_| true).await {
            PeerEvent::Connecting { .. } => attempts.push(Instant::now()),
            PeerEvent::ConnectFailed {
                retry_in, reason, ..
            } => {
                assert_eq!(reason, "unreachable");
                delays.push(retry_in);
            }
            _ => {}
        }
    }
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    // Each gap is the announced delay (virtual time; timers have 1 ms resolution).
    for (gap, delay) in gaps.iter().zip(&delays[..]) {
        assert!(
            *gap >= *delay && *gap <= *delay + Duration::from_millis(1),
            "{gap:?} vs {delay:?}"
        );
    }
    // The disconnect itself announced the 100 ms delay; failed attempts then
    // wait 200 ms, 400 ms, ... capped at 5 s, each in [ceiling/2, ceiling].
    let ceilings = [200u64, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000];
    for (d, c) in delays.iter().zip(ceilings) {
        let c = Duration::from_millis(c);
        assert!(*d >= c / 2 && *d <= c, "{d:?} vs ceiling {c:?}");
    }
    // Back up: connects, and the back-off starts over.
    s.connector.set_up("cluster2", true);
    synced(&mut s.events).await;
}

/// A connector whose peer accepts the stream and then says nothing.
struct Silent;

impl Connector for Silent {
    fn connect(
        &self,
        _link: &PeerLink,
        _hello: proto::Hello,
    ) -> Pin<Box<dyn Future<Output = Result<Connection, ConnectError>> + Send + 'static>> {
        Box::pin(async {
            let (tx, mut rx) = mpsc::channel(16);
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            Ok(Connection {
                remote: "silent".into(),
                inbound: Box::pin(futures_util::stream::pending()),
                outbound: tx,
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_dropped_after_three_heartbeats() {
    let (_local_tx, local_rx) = watch::channel(local("cluster1", None));
    let (tx, mut rx) = mpsc::channel(64);
    let cfg = LinkConfig {
        link: link("cluster2"),
        local: local_rx,
        heartbeat: HEARTBEAT,
        grace: GRACE,
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 1),
        limits: Default::default(),
        held_until: None,
    };
    tokio::spawn(run_link(
        cfg,
        Arc::new(Silent),
        tx,
        Arc::new(Metrics::default()),
    ));
    wait_for(&mut rx, Duration::from_secs(1), |e| {
        matches!(e, PeerEvent::Connected { .. })
    })
    .await;
    let t0 = Instant::now();
    let ev = wait_for(&mut rx, Duration::from_secs(120), |e| {
        matches!(e, PeerEvent::Disconnected { .. })
    })
    .await;
    let PeerEvent::Disconnected { reason, stale, .. } = ev else {
        unreachable!()
    };
    assert!(reason.contains("no message from the peer"), "{reason}");
    assert!(!stale, "nothing was ever synced");
    let waited = t0.elapsed();
    assert!(
        waited > HEARTBEAT * 3 && waited <= HEARTBEAT * 4 + Duration::from_millis(1),
        "{waited:?}"
    );
}

fn hello(cluster: &str, td: &str) -> PeerRequest {
    PeerRequest {
        kind: Some(peer_request::Kind::Hello(proto::Hello {
            cluster: cluster.into(),
            segment: String::new(),
            trust_domain: td.into(),
            protocol: meshpeer_peering::PROTOCOL_VERSION,
            max_message_bytes: 0,
        })),
    }
}

fn conn(td: &str) -> ConnInfo {
    ConnInfo {
        remote: "127.0.0.1:1".into(),
        spiffe_id: format!("spiffe://{td}/ns/istio-system/sa/meshpeer"),
        trust_domain: td.into(),
        cluster: None,
    }
}

#[tokio::test(start_paused = true)]
async fn the_server_refuses_a_hello_that_does_not_match_the_certificate() {
    let publisher = ExportPublisher::new();
    publisher.publish(&export2(None, &[]));
    let service = PeeringService::new(
        ServerSettings::new("cluster2"),
        &publisher,
        Arc::new(Metrics::default()),
    );
    let inbound = tokio_stream::iter(vec![Ok(hello("cluster1", "cluster1"))]);
    let err = service.open(conn("cluster3"), inbound).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("says trust domain cluster1"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("spiffe://cluster3/"),
        "{}",
        err.message()
    );

    let mut wrong_version = hello("cluster1", "cluster1");
    if let Some(peer_request::Kind::Hello(h)) = &mut wrong_version.kind {
        h.protocol = 99;
    }
    let err = service
        .open(
            conn("cluster1"),
            tokio_stream::iter(vec![Ok(wrong_version)]),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("protocol 99 is not supported"));

    let no_hello = PeerRequest {
        kind: Some(peer_request::Kind::Ack(proto::Ack {
            nonce: "1".into(),
            ..Default::default()
        })),
    };
    let err = service
        .open(conn("cluster1"), tokio_stream::iter(vec![Ok(no_hello)]))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(start_paused = true)]
async fn the_server_drops_a_client_that_stays_silent() {
    use futures_util::StreamExt;
    let publisher = ExportPublisher::new();
    publisher.publish(&export2(None, &[("cart", "global")]));
    let mut settings = ServerSettings::new("cluster2");
    settings.heartbeat = HEARTBEAT;
    let service = PeeringService::new(settings, &publisher, Arc::new(Metrics::default()));
    let (tx, rx) = mpsc::channel(4);
    tx.send(Ok(hello("cluster1", "cluster1"))).await.unwrap();
    let mut out = service
        .open(
            conn("cluster1"),
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )
        .await
        .unwrap();
    let first = out.next().await.unwrap().unwrap();
    assert!(matches!(
        first.kind,
        Some(proto::peer_response::Kind::Delta(proto::Delta {
            full_state: true,
            ..
        }))
    ));
    let t0 = Instant::now();
    // No ACK, no heartbeat: heartbeats from the server, then the stream ends.
    let mut heartbeats = 0;
    loop {
        match out.next().await {
            Some(Ok(proto::PeerResponse {
                kind: Some(proto::peer_response::Kind::Heartbeat(_)),
            })) => heartbeats += 1,
            Some(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(heartbeats >= 2, "{heartbeats}");
    assert!(t0.elapsed() > HEARTBEAT * 3);
    drop(tx);
    assert!(
        service.served().is_empty() || {
            tokio::time::sleep(Duration::from_millis(10)).await;
            service.served().is_empty()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn random_changes_and_cuts_converge_to_the_current_export() {
    for seed in 0..8u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let all = ["a", "b", "c", "d", "e", "f"];
        let pick = |rng: &mut fastrand::Rng| -> Vec<(&'static str, &'static str)> {
            let mut out = Vec::new();
            for n in all {
                if rng.bool() {
                    out.push((
                        n,
                        if rng.u8(..4) == 0 {
                            "segment"
                        } else {
                            "global"
                        },
                    ));
                }
            }
            out
        };
        let mut current = export2(None, &pick(&mut rng));
        let mut s = setup(&current, None);
        for _ in 0..30 {
            match rng.u8(..4) {
                0 => s.connector.cut("cluster2"),
                1 => {
                    s.connector.set_up("cluster2", false);
                    tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
                    s.connector.set_up("cluster2", true);
                }
                _ => {
                    current = export2(None, &pick(&mut rng));
                    s.publisher.publish(&current);
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.u64(0..50))).await;
        }
        // Quiescence: the last export seen is exactly the current one.
        let want = names(&current);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        loop {
            match tokio::time::timeout_at(deadline, s.events.recv()).await {
                Ok(Some(PeerUpdate {
                    event: PeerEvent::Synced { export, .. },
                    ..
                })) => {
                    let done = names(&export) == want;
                    last = Some(export);
                    if done {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                _ => panic!(
                    "seed {seed}: did not converge; last {:?}, want {want:?}",
                    last.map(|e| names(&e))
                ),
            }
        }
    }
}

fn hello_in(cluster: &str, segment: &str) -> PeerRequest {
    let mut h = hello(cluster, cluster);
    if let Some(peer_request::Kind::Hello(h)) = &mut h.kind {
        h.segment = segment.into();
    }
    h
}

#[tokio::test(start_paused = true)]
async fn p3_a_pinned_link_refuses_a_client_claiming_another_segment() {
    use futures_util::StreamExt;
    let publisher = ExportPublisher::new();
    publisher.publish(&export2(Some("dev"), &[("shop", "segment")]));
    let service = PeeringService::new(
        ServerSettings::new("cluster2"),
        &publisher,
        Arc::new(Metrics::default()),
    );
    // cluster2 links back to cluster1 and pins it to prod.
    let mut pinned = link("cluster1");
    pinned.segment = Some("prod".into());
    service.set_admission(service.admission().with_links([&pinned]));

    // Claiming dev (to receive dev's segment-scoped services) is refused.
    let err = service
        .open(
            conn("cluster1"),
            tokio_stream::iter(vec![Ok(hello_in("cluster1", "dev"))]),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("cluster cluster1 says it is in segment dev, but gateway istio-eastwest/istio-remote-peer-cluster1 pins it to segment prod"),
        "{}",
        err.message()
    );
    assert_eq!(service.refusals()[0].reason, "segment_pin_mismatch");

    // The truth is served; when the pin changes, the stream is ended.
    let (_keep, rx) = mpsc::channel::<Result<PeerRequest, tonic::Status>>(4);
    let inbound = tokio_stream::iter(vec![Ok(hello_in("cluster1", "prod"))])
        .chain(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut out = service.open(conn("cluster1"), inbound).await.unwrap();
    let first = out.next().await.unwrap().unwrap();
    assert!(matches!(
        first.kind,
        Some(meshpeer_peering::proto::peer_response::Kind::Delta(_))
    ));
    pinned.segment = Some("staging".into());
    service.set_admission(service.admission().with_links([&pinned]));
    let end = loop {
        match out.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a reason"),
        }
    };
    assert_eq!(end.code(), tonic::Code::PermissionDenied);
    assert!(
        end.message().contains("pins it to segment staging"),
        "{}",
        end.message()
    );

    // A linked cluster's name cannot be taken by another trust domain.
    let err = service
        .open(
            conn("cluster9"),
            tokio_stream::iter(vec![Ok(hello("cluster1", "cluster9"))]),
        )
        .await
        .err()
        .unwrap();
    assert!(
        err.message()
            .contains("links cluster cluster1 with trust domain cluster1"),
        "{}",
        err.message()
    );
}
