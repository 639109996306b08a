//! A hostile peer speaking the real peering protocol over mutual TLS
//! (SPEC B1-B4, issue 11). cluster1 runs a real controller that links to an
//! honest cluster3 (a real controller) and to "cluster2", a scripted gRPC
//! server under the mesh's root presenting cluster2's controller identity.
//! As a server, cluster2 sends invalid names (a `/` among them), 100,000
//! services, and a message larger than cluster1 decodes; as a client, it
//! opens duplicate sessions and 1,000 streams on one connection. Each is
//! refused on its own; cluster3's services and cluster1's own output stay
//! as they were, and what cluster1 holds of cluster2 stays within its caps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use meshpeer::controller::{LinkState, View};
use meshpeer_identity::{
    ALPN_H2, Identity, PeerPolicy, SpiffeId, TrustRoot, client_config, server_config,
};
use meshpeer_model::exports;
use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_peering::Limits;
use meshpeer_peering::proto::{
    self, Ack, Delta, Heartbeat, Hello, PeerRequest, PeerResponse, peer_request, peer_response,
};
use meshpeer_peering::server::MAX_STREAMS_PER_CONNECTION;
use meshpeer_peering::wire::ResourceSet;
use support::{Mesh, WITHIN, contributors, namespace, peer_gateway, service};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

const LOCAL: &str = "local.shop.mesh.internal";
const HONEST: &str = "honest.shop.mesh.internal";
const OK: &str = "ok.shop.mesh.internal";
/// What cluster1 holds of one peer at most, in this test.
const CAP: usize = 1_000;

/// cluster1's caps: [`CAP`] services of 100 endpoints and 8 ports at most
/// (so that it decodes messages of a few MiB only).
fn limits() -> Limits {
    Limits {
        max_services: CAP,
        max_endpoints_per_service: 100,
        max_ports_per_service: 8,
        allow_endpoints: vec!["127.0.0.0/8".parse().unwrap()],
        ..Limits::default()
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<PeerResponse, Status>> + Send>>;

/// cluster2 as a server: each stream gets the current script, then
/// heartbeats, and ends when the script changes (the client reconnects
/// and gets the new one). What the client sends is recorded.
#[derive(Clone)]
struct HostileServer {
    script: Arc<watch::Sender<Arc<Vec<PeerResponse>>>>,
    heard: mpsc::UnboundedSender<PeerRequest>,
}

fn heartbeat() -> PeerResponse {
    PeerResponse {
        kind: Some(peer_response::Kind::Heartbeat(Heartbeat {
            sent_unix_ms: 0,
        })),
    }
}

#[tonic::async_trait]
impl proto::peering_server::Peering for HostileServer {
    type ExchangeStream = Responses;

    async fn exchange(
        &self,
        request: Request<Streaming<PeerRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let mut inbound = request.into_inner();
        let heard = self.heard.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                if heard.send(m).is_err() {
                    return;
                }
            }
        });
        let mut script = self.script.subscribe();
        let messages = script.borrow_and_update().clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for m in messages.iter() {
                if tx.send(Ok(m.clone())).await.is_err() {
                    return;
                }
            }
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = beat.tick() => if tx.send(Ok(heartbeat())).await.is_err() { return },
                    _ = script.changed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A TLS connection handed to tonic.
struct Conn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Serves `hostile` over mutual TLS on 127.0.0.1:0; returns its port.
async fn serve_hostile(hostile: HostileServer, id: Arc<Identity>, root: &TrustRoot) -> u16 {
    let tls = server_config(id, root, PeerPolicy::AnyTrustDomain, &[ALPN_H2]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel::<Result<Conn, io::Error>>(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = tx.send(Ok(Conn(tls))).await;
                }
            });
        }
    });
    tokio::spawn(
        Server::builder()
            .add_service(
                proto::peering_server::PeeringServer::new(hostile)
                    .max_encoding_message_size(usize::MAX),
            )
            .serve_with_incoming(ReceiverStream::new(rx)),
    );
    port
}

/// cluster2's controller identity under the mesh's root.
fn cluster2_identity(mesh: &Mesh) -> Arc<Identity> {
    let now = SystemTime::now();
    let ca = mesh
        .root
        .issue_intermediate("cluster2", "cluster2", Duration::from_secs(86_400), now)
        .unwrap();
    let id = SpiffeId::new("cluster2", "istio-system", "meshpeer").unwrap();
    Arc::new(Identity::new(ca, id, Duration::from_secs(3600), now).unwrap())
}

/// cluster2's export as the real encoder makes it: its cluster resource and
/// one valid service to copy.
fn templates() -> (proto::Resource, proto::Resource) {
    let export = exports(
        &ClusterBuilder::new("cluster2")
            .service(svc("shop", "ok").global().ready(1))
            .build(),
    );
    let set = ResourceSet::from_export(&export);
    (
        (**set.get("cluster").unwrap()).clone(),
        (**set.get("service/shop/ok").unwrap()).clone(),
    )
}

/// `template` as service `<ns>/<name>` with hostname `host`.
fn service_named(template: &proto::Resource, ns: &str, name: &str, host: &str) -> proto::Resource {
    let mut r = template.clone();
    let Some(proto::resource::Body::Service(s)) = &mut r.body else {
        panic!("not a service")
    };
    s.namespace = ns.into();
    s.name = name.into();
    s.hostname = host.into();
    r.name = format!("service/{ns}/{name}");
    r.version = format!("v-{ns}-{name}");
    r
}

fn delta(
    nonce: &str,
    full_state: bool,
    resources: Vec<proto::Resource>,
    more: bool,
) -> PeerResponse {
    PeerResponse {
        kind: Some(peer_response::Kind::Delta(Delta {
            nonce: nonce.into(),
            version: 1,
            full_state,
            resources,
            removed: Vec::new(),
            more,
        })),
    }
}

/// Waits for cluster1's ACK of `nonce`.
async fn ack_of(heard: &mut mpsc::UnboundedReceiver<PeerRequest>, nonce: &str) -> Ack {
    tokio::time::timeout(WITHIN, async {
        loop {
            match heard.recv().await.unwrap().kind {
                Some(peer_request::Kind::Ack(a)) if a.nonce == nonce => return a,
                Some(peer_request::Kind::Nack(n)) if n.nonce == nonce => {
                    panic!("delta {nonce} NACKed whole: {}", n.error)
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no ACK of {nonce}"))
}

/// The resident memory of this test process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// What must hold after each attack: cluster3's and cluster1's own
/// services in cluster1's catalog and output, nothing of cluster2 beyond
/// the cap, no file but the generated ones and the status folder.
fn untouched(mesh: &Mesh, v: &View) {
    let c1 = mesh.cluster("cluster1");
    assert_eq!(contributors(v, HONEST), Some(vec!["cluster3".to_owned()]));
    assert_eq!(contributors(v, LOCAL), Some(vec!["cluster1".to_owned()]));
    let peer3 = v
        .status
        .peers
        .iter()
        .find(|p| p.cluster == "cluster3")
        .unwrap();
    assert_eq!(peer3.state, LinkState::Synced);
    let output = c1.output();
    assert_eq!(output[HONEST], "cluster3");
    assert_eq!(output[LOCAL], "cluster1");
    let from2 = v
        .catalog
        .services
        .values()
        .filter(|s| s.clusters().any(|c| c == "cluster2"))
        .count();
    assert!(from2 <= CAP, "{from2} services of cluster2 held");
    for e in std::fs::read_dir(&c1.out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            name == "status"
                || name == "workloadentries"
                || (name.starts_with("autogen.") && name.ends_with(".yaml")),
            "unexpected output file {name}"
        );
    }
}

/// A client channel to `addr` over one mutual-TLS connection as `id`.
async fn one_connection(
    addr: SocketAddr,
    id: Arc<Identity>,
    root: &TrustRoot,
) -> tonic::transport::Channel {
    let tls = client_config(id, root, "cluster1", &[ALPN_H2]).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("cluster1.invalid").unwrap();
    let io = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let slot = Arc::new(Mutex::new(Some(TokioIo::new(io))));
    Endpoint::from_static("http://cluster1.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let io = slot.lock().unwrap().take();
            async move { io.ok_or_else(|| io::Error::other("one connection only")) }
        }))
        .await
        .unwrap()
}

fn hello() -> PeerRequest {
    PeerRequest {
        kind: Some(peer_request::Kind::Hello(Hello {
            cluster: "cluster2".into(),
            segment: String::new(),
            trust_domain: "cluster2".into(),
            protocol: meshpeer_peering::PROTOCOL_VERSION,
            max_message_bytes: 0,
        })),
    }
}

/// Opens an Exchange stream on `channel`; the sender keeps it open.
async fn open_stream(
    channel: tonic::transport::Channel,
) -> Result<(mpsc::Sender<PeerRequest>, Streaming<PeerResponse>), Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello()).await.unwrap();
    let mut client = proto::peering_client::PeeringClient::new(channel);
    let response = client.exchange(ReceiverStream::new(rx)).await?;
    Ok((tx, response.into_inner()))
}

/// Sessions cluster1's peering server holds for cluster2.
fn served_cluster2(v: &View) -> usize {
    v.status
        .served
        .iter()
        .filter(|s| s.cluster == "cluster2")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_b4_a_hostile_peer_over_mtls_is_refused_attack_by_attack_and_nothing_else_moves() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2", "cluster3"]);
    mesh.grace = Duration::from_secs(300);
    for (cluster, name) in [("cluster1", "local"), ("cluster3", "honest")] {
        let c = mesh.cluster(cluster);
        c.write(
            "shop.yaml",
            &format!(
                "{}---\n{}",
                namespace("shop", &[]),
                service("shop", name, Some("global"), &c.pod_ip(1))
            ),
        );
    }
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    mesh.start_controller("cluster3", any, None).await;
    let mut cfg = mesh.controller_config("cluster1", any, None);
    cfg.limits = limits();
    mesh.start_with("cluster1", cfg).await;
    mesh.link("cluster1", "cluster3").await;

    // cluster2, hostile, first with invalid names next to one valid service.
    let (cluster, ok) = templates();
    let invalid = vec![
        service_named(&ok, "shop", "Bad_Name", "Bad_Name.shop.mesh.internal"),
        service_named(&ok, "shop", "a/b", "a/b.shop.mesh.internal"),
        service_named(&ok, "x/y", "web", "web.x/y.mesh.internal"),
        service_named(&ok, "shop", "elsewhere", "elsewhere.shop.example.com"),
        service_named(&ok, "shop", &"x".repeat(64), "long.shop.mesh.internal"),
    ];
    let mut first = vec![cluster.clone(), ok.clone()];
    first.extend(invalid.iter().cloned());
    let (script, _) = watch::channel(Arc::new(vec![delta("names", true, first, false)]));
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    let hostile = HostileServer {
        script: Arc::new(script),
        heard: heard_tx,
    };
    let id2 = cluster2_identity(&mesh);
    let root = id2.trust_root().clone();
    let port = serve_hostile(hostile.clone(), Arc::clone(&id2), &root).await;
    mesh.cluster("cluster1").write(
        "peer-cluster2.yaml",
        &peer_gateway("cluster2", 15008, port, None),
    );

    // Invalid names, a `/` among them: refused one by one, `ok` applies.
    let ack = ack_of(&mut heard, "names").await;
    let refused: BTreeSet<String> = ack.refused.iter().map(|r| r.resource.clone()).collect();
    for r in &invalid {
        assert!(refused.contains(&r.name), "{} not refused: {ack:?}", r.name);
    }
    assert_eq!(ack.refused_total as usize, invalid.len());
    let c1 = mesh.cluster("cluster1");
    let v = c1
        .wait("ok from cluster2, cluster3's honest", |v| {
            contributors(v, OK) == Some(vec!["cluster2".into()])
                && contributors(v, HONEST).is_some()
        })
        .await;
    untouched(&mesh, &v);
    assert_eq!(c1.output()[OK], "cluster2");
    let before = rss();

    // 100,000 services, chunked as the protocol allows: the cap holds.
    let mut chunks = Vec::new();
    let many: Vec<proto::Resource> = (0..100_000)
        .map(|i| {
            let name = format!("s{i}");
            let host = format!("{name}.shop.mesh.internal");
            service_named(&ok, "shop", &name, &host)
        })
        .collect();
    let mut iter = many.chunks(2_000).peekable();
    let mut firstchunk = true;
    while let Some(part) = iter.next() {
        let mut resources = part.to_vec();
        if firstchunk {
            resources.insert(0, cluster.clone());
        }
        chunks.push(delta("many", firstchunk, resources, iter.peek().is_some()));
        firstchunk = false;
    }
    drop(many);
    hostile.script.send_replace(Arc::new(chunks));
    let ack = ack_of(&mut heard, "many").await;
    assert_eq!(ack.refused_total as usize, 100_000 - CAP);
    assert!(ack.refused.iter().all(|r| r.reason == "over_service_cap"));
    let v = c1
        .wait("cluster2 at its cap", |v| {
            v.catalog
                .services
                .values()
                .filter(|s| s.clusters().any(|c| c == "cluster2"))
                .count()
                == CAP
        })
        .await;
    untouched(&mesh, &v);
    hostile.script.send_replace(Arc::new(Vec::new()));
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 512 << 20,
        "the process grew by {} MiB holding a peer at its cap",
        grown >> 20
    );

    // One message larger than cluster1 decodes: the stream is dropped, what
    // cluster2 sent before is kept (stale), nothing else moves.
    let huge = service_named(
        &ok,
        "shop",
        "huge",
        &"h".repeat(limits().max_message_bytes() + (1 << 20)),
    );
    hostile.script.send_replace(Arc::new(vec![delta(
        "huge",
        true,
        vec![cluster.clone(), huge],
        false,
    )]));
    let v = c1
        .wait("cluster2's oversize message refused", |v| {
            v.status.peers.iter().any(|p| {
                p.cluster == "cluster2"
                    && p.state != LinkState::Synced
                    && p.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("decoded message length too large"))
            })
        })
        .await;
    untouched(&mesh, &v);
    assert_eq!(
        contributors(&v, "s0.shop.mesh.internal"),
        Some(vec!["cluster2".into()])
    );

    // As a client: two sessions with one identity, the newer replaces the
    // older.
    let peering = c1.controller().peering_addr;
    let (_keep1, mut first) = open_stream(one_connection(peering, Arc::clone(&id2), &root).await)
        .await
        .unwrap();
    let (_keep2, _second) = open_stream(one_connection(peering, Arc::clone(&id2), &root).await)
        .await
        .unwrap();
    let ended = tokio::time::timeout(WITHIN, async {
        loop {
            match first.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the older session ends");
    assert!(
        !matches!(ended, Some(Ok(_))),
        "the older session was not replaced"
    );
    let v = c1
        .wait("one session for cluster2", |v| served_cluster2(v) == 1)
        .await;
    untouched(&mesh, &v);

    // 1,000 streams on one connection: a handful at a time, each replacing
    // the last; cluster1 never holds more than one session for cluster2.
    let channel = one_connection(peering, Arc::clone(&id2), &root).await;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for _ in 0..1_000 {
        let (channel, done_tx) = (channel.clone(), done_tx.clone());
        tasks.push(tokio::spawn(async move {
            if let Ok((tx, mut inbound)) = open_stream(channel).await {
                while let Some(Ok(_)) = inbound.next().await {}
                drop(tx);
            }
            let _ = done_tx.send(());
        }));
    }
    // Every stream but the last is replaced and ends; the server never
    // holds more sessions of cluster2 than one connection may open streams
    // (and the one of the duplicate above, until replaced).
    let mut most = 0;
    let ended = AtomicUsize::new(0);
    tokio::time::timeout(Duration::from_secs(120), async {
        while ended.load(Ordering::SeqCst) < 999 {
            done.recv().await.unwrap();
            ended.fetch_add(1, Ordering::SeqCst);
            most = most.max(served_cluster2(&c1.controller().current()));
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "only {} of 1,000 streams ended",
            ended.load(Ordering::SeqCst)
        )
    });
    assert!(
        most <= MAX_STREAMS_PER_CONNECTION as usize + 1,
        "{most} sessions of cluster2 at once"
    );
    for t in tasks {
        t.abort();
    }
    let v = c1
        .wait("cluster3 still synced", |v| {
            v.status
                .peers
                .iter()
                .any(|p| p.cluster == "cluster3" && p.state == LinkState::Synced)
        })
        .await;
    untouched(&mesh, &v);
    mesh.shutdown().await;
}
