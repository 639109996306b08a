//! An in-memory [`Connector`] for tests (feature `testing`): links reach
//! [`PeeringService`]s directly over channels, and a peer can be taken down
//! (new connections fail, open streams are cut) and brought back.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use futures_util::StreamExt;
use meshpeer_model::PeerLink;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::client::{ConnectError, Connection, Connector};
use crate::proto::{self, PeerRequest, peer_request};
use crate::server::{ConnInfo, PeeringService};

struct Peer {
    service: PeeringService,
    up: bool,
    /// Bumped to cut every open stream.
    generation: watch::Sender<u64>,
}

/// Reaches peers in the same process.
#[derive(Default)]
pub struct MemoryConnector {
    peers: Mutex<BTreeMap<String, Peer>>,
}

impl std::fmt::Debug for MemoryConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConnector").finish_non_exhaustive()
    }
}

impl MemoryConnector {
    pub fn new() -> Self {
        MemoryConnector::default()
    }

    /// Makes `cluster` reachable through its service.
    pub fn add(&self, cluster: &str, service: PeeringService) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.insert(
                cluster.to_owned(),
                Peer {
                    service,
                    up: true,
                    generation: watch::channel(0).0,
                },
            );
        }
    }

    /// Takes a peer down (new connections fail, open streams end) or up.
    pub fn set_up(&self, cluster: &str, up: bool) {
        if let Ok(mut peers) = self.peers.lock()
            && let Some(p) = peers.get_mut(cluster)
        {
            p.up = up;
            if !up {
                p.generation.send_modify(|g| *g += 1);
            }
        }
    }

    /// Cuts the open streams of a peer without taking it down.
    pub fn cut(&self, cluster: &str) {
        if let Ok(peers) = self.peers.lock()
            && let Some(p) = peers.get(cluster)
        {
            p.generation.send_modify(|g| *g += 1);
        }
    }
}

impl Connector for MemoryConnector {
    fn connect(
        &self,
        link: &PeerLink,
        hello: proto::Hello,
    ) -> Pin<Box<dyn Future<Output = Result<Connection, ConnectError>> + Send + 'static>> {
        let found = self.peers.lock().ok().and_then(|peers| {
            peers
                .get(&link.cluster)
                .map(|p| (p.service.clone(), p.up, p.generation.subscribe()))
        });
        let cluster = link.cluster.clone();
        Box::pin(async move {
            let Some((service, true, mut generation)) = found else {
                return Err(ConnectError {
                    reason: "unreachable",
                    message: format!("peer {cluster} is unreachable"),
                });
            };
            let (tx, rx) = mpsc::channel::<PeerRequest>(16);
            let conn = ConnInfo {
                remote: format!("memory://{cluster}"),
                spiffe_id: format!(
                    "spiffe://{}/ns/istio-system/sa/meshpeer",
                    hello.trust_domain
                ),
                trust_domain: hello.trust_domain.clone(),
                // As a chain from an intermediate `meshpeer certs` bound to
                // the cluster would say.
                cluster: Some(hello.cluster.clone()),
            };
            let _ = tx
                .send(PeerRequest {
                    kind: Some(peer_request::Kind::Hello(hello)),
                })
                .await;
            generation.borrow_and_update();
            // The server reads until the cut, then sees the stream end.
            let mut cut_in = generation.clone();
            let inbound_to_server = ReceiverStream::new(rx)
                .map(Ok::<_, Status>)
                .take_until(async move {
                    let _ = cut_in.changed().await;
                })
                .boxed();
            let stream = service
                .open(conn, inbound_to_server)
                .await
                .map_err(|status| ConnectError {
                    reason: "refused",
                    message: format!("peer {cluster} refused: {}", status.message()),
                })?;
            let inbound = stream
                .take_until(async move {
                    let _ = generation.changed().await;
                })
                .boxed();
            Ok(Connection {
                remote: format!("memory://{cluster}"),
                inbound,
                outbound: tx,
            })
        })
    }
}
