//! The catalog a data plane works from: what the cluster's controller
//! publishes on every change (in process through a `watch` channel, across
//! processes as NDJSON on `GET /v1/catalog/watch`: over mutual TLS on the
//! controller's cluster listener, or plain on its loopback API, SPEC P8).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshpeer_identity::refusal_reason_io;
use meshpeer_model::GlobalCatalog;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::feed_line;

/// A cluster that links to this one: it learns this cluster's services and
/// may send to them through this cluster's gateway (C4, D3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Caller {
    pub cluster: String,
    /// The SPIFFE trust domain its certificates carry.
    pub trust_domain: String,
    /// Its segment; `None` is the default segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// Its peering stream is up now (else: kept for the grace period).
    pub connected: bool,
}

/// One version of what a data plane needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogFeed {
    /// Increases with every change.
    pub version: u64,
    pub catalog: Arc<GlobalCatalog>,
    /// Clusters allowed to send here, each by trust domain and cluster name
    /// (clusters may share a trust domain; their chains' cluster bindings
    /// then tell them apart, SPEC P6).
    #[serde(default)]
    pub callers: Vec<Caller>,
    /// The controller started recently and the clusters that link here may
    /// not all have come back yet (their links back off up to 30 s): a
    /// follower keeps the callers it knew besides `callers` until this is
    /// false (every linked peer is back, or the grace period is over).
    /// Absent (false) from controllers that do not say.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub callers_pending: bool,
}

impl CatalogFeed {
    /// The first caller presenting `trust_domain`, if one links to this
    /// cluster (where clusters share a trust domain, one of them).
    pub fn caller(&self, trust_domain: &str) -> Option<&Caller> {
        self.callers.iter().find(|c| c.trust_domain == trust_domain)
    }

    /// This feed as a follower holding `held` uses it: while the controller
    /// says its callers are pending (it restarted), the callers of `held`
    /// that this feed does not list are kept, marked not connected, so a
    /// tunnel from a linked cluster is not refused because its peering
    /// stream has not come back yet. Once the controller says they are
    /// settled, its list is taken as it is (removals apply).
    pub fn keeping_callers_of(mut self, held: &CatalogFeed) -> CatalogFeed {
        if !self.callers_pending {
            return self;
        }
        for old in &held.callers {
            if !self
                .callers
                .iter()
                .any(|c| c.trust_domain == old.trust_domain && c.cluster == old.cluster)
            {
                self.callers.push(Caller {
                    connected: false,
                    ..old.clone()
                });
            }
        }
        self
    }
}

/// Who follows a controller's catalog. Sent as query parameters of the
/// watch (`?role=proxy&name=...&health=...`), so that the controller lists
/// its data plane in its status and `meshpeer check` can probe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Follower {
    /// `proxy` or `gateway`; empty: not said.
    pub role: String,
    /// Who it is: its SPIFFE ID, or its host and process id.
    pub name: String,
    /// Where it answers `GET /healthz` (its `--metrics` address), if anywhere.
    pub health: Option<String>,
}

impl Follower {
    /// The watch's query string, `""` when nothing is said.
    pub fn query(&self) -> String {
        let mut pairs = Vec::new();
        for (key, value) in [
            ("role", self.role.as_str()),
            ("name", self.name.as_str()),
            ("health", self.health.as_deref().unwrap_or_default()),
        ] {
            if !value.is_empty() {
                pairs.push(format!("{key}={}", percent_encode(value)));
            }
        }
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    }
}

/// Query-value encoding: unreserved characters (RFC 3986) as they are,
/// every other byte as `%XX`.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Follows a controller's catalog stream at `http://<api>/v1/catalog/watch`,
/// publishing each version on `tx`, reconnecting (1 s apart) when the stream
/// breaks. Runs until `tx` has no receiver left. Plain HTTP: the controller
/// serves it only to callers on loopback (SPEC P8).
pub async fn follow(api: String, tx: watch::Sender<Arc<CatalogFeed>>) {
    follow_as(api, Follower::default(), tx).await;
}

/// Like [`follow`], telling the controller who follows (see [`Follower`]).
pub async fn follow_as(api: String, who: Follower, tx: watch::Sender<Arc<CatalogFeed>>) {
    follow_from(FeedSource::Plain(api), who, tx).await;
}

/// Follows the catalog over mutual TLS on the controller's cluster
/// listener (SPEC P8): `tls` presents this proxy's or gateway's identity
/// and accepts only the controller (meshpeer-identity's `client_config_for`,
/// ALPN `http/1.1`).
pub async fn follow_tls(
    address: String,
    tls: Arc<rustls::ClientConfig>,
    who: Follower,
    tx: watch::Sender<Arc<CatalogFeed>>,
) {
    follow_from(FeedSource::Tls { address, tls }, who, tx).await;
}

/// Where the catalog comes from.
#[derive(Clone)]
enum FeedSource {
    /// `http://<api>`: the controller's local API.
    Plain(String),
    /// `https://<address>` with a client certificate: its cluster listener.
    Tls {
        address: String,
        tls: Arc<rustls::ClientConfig>,
    },
}

impl FeedSource {
    fn address(&self) -> &str {
        match self {
            FeedSource::Plain(a) => a,
            FeedSource::Tls { address, .. } => address,
        }
    }
}

async fn follow_from(source: FeedSource, who: Follower, tx: watch::Sender<Arc<CatalogFeed>>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let query = who.query();
    let api = source.address().to_owned();
    let mut logged_down = false;
    loop {
        if tx.is_closed() {
            return;
        }
        let response = match &source {
            FeedSource::Plain(api) => get_plain(&client, api, &query).await,
            FeedSource::Tls { address, tls } => get_tls(address, tls, &query).await,
        };
        match response {
            Ok(resp) => {
                logged_down = false;
                match stream_once(resp, &api, &tx).await {
                    Ok(()) => info!(controller = %api, "catalog stream ended; reconnecting"),
                    Err(e) => {
                        warn!(controller = %api, error = %e, "catalog stream broke; reconnecting")
                    }
                }
            }
            Err(e) => {
                if !logged_down {
                    warn!(controller = %api, error = %e, "cannot follow the controller's catalog; retrying every second (the last catalog is kept)");
                    logged_down = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

const WATCH_PATH: &str = "/v1/catalog/watch";

async fn get_plain(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    api: &str,
    query: &str,
) -> Result<http::Response<Incoming>, String> {
    let uri: http::Uri = format!("http://{api}{WATCH_PATH}{query}")
        .parse()
        .map_err(|e| format!("{api}: {e}"))?;
    let resp = client.get(uri).await.map_err(|e| with_causes(&e))?;
    refused_unless_ok(resp).await
}

/// How long connecting and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn get_tls(
    address: &str,
    tls: &Arc<rustls::ClientConfig>,
    query: &str,
) -> Result<http::Response<Incoming>, String> {
    let io = connect_tls(address, tls).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| with_causes(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "catalog connection ended");
        }
    });
    let request = http::Request::get(format!("{WATCH_PATH}{query}"))
        .header(http::header::HOST, address)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(request)
        .await
        .map_err(|e| with_causes(&e))?;
    refused_unless_ok(resp).await
}

/// A TLS connection to the controller's cluster listener at `address`
/// (`HOST:PORT`), presenting what `tls` holds; bounded by 10 s.
pub(crate) async fn connect_tls(
    address: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(address);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host} is not a host name: {e}"))?;
    let connect = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with the controller failed: {}", refusal_reason_io(&e)))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no TLS connection within {CONNECT_TIMEOUT:?}"))?
}

/// The response when it is a success; else an error with the status and
/// the controller's reason (the body's first KiB).
pub(crate) async fn refused_unless_ok(
    resp: http::Response<Incoming>,
) -> Result<http::Response<Incoming>, String> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let mut reason = Vec::new();
    let mut body = resp.into_body().into_data_stream();
    while let Some(Ok(chunk)) = body.next().await {
        reason.extend_from_slice(&chunk);
        if reason.len() >= 1024 {
            reason.truncate(1024);
            break;
        }
    }
    let reason = String::from_utf8_lossy(&reason).trim().to_owned();
    Err(if reason.is_empty() {
        format!("the controller answered {status}")
    } else {
        format!("the controller answered {status}: {reason}")
    })
}

async fn stream_once(
    resp: http::Response<Incoming>,
    api: &str,
    tx: &watch::Sender<Arc<CatalogFeed>>,
) -> Result<(), String> {
    info!(controller = %api, "following the controller's catalog");
    let mut body = resp.into_body().into_data_stream();
    let mut lines = feed_line::LineReader::new(feed_line::MAX_LINE);
    // The version this stream brought us to: deltas apply to it.
    let mut current: Option<Arc<CatalogFeed>> = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        lines.push(&chunk).map_err(|e| e.to_string())?;
        while let Some(line) = lines.next_line() {
            let line = line.map_err(|e| e.to_string())?;
            match feed_line::decode(current.as_deref(), &line) {
                Ok(feed) => {
                    debug!(
                        version = feed.version,
                        services = feed.catalog.services.len(),
                        "catalog received"
                    );
                    let feed = Arc::new(feed);
                    current = Some(Arc::clone(&feed));
                    // Deltas apply to the stream's own version; what is
                    // published also keeps the callers known before a
                    // restart of the controller while it says so.
                    let published = if feed.callers_pending {
                        let held = tx.borrow().clone();
                        Arc::new((*feed).clone().keeping_callers_of(&held))
                    } else {
                        feed
                    };
                    tx.send_replace(published);
                }
                Err(e @ feed_line::LineError::OutOfStep { .. }) => return Err(e.to_string()),
                Err(e) => {
                    warn!(error = %e, "unreadable catalog line from the controller; reconnecting");
                    return Err(e.to_string());
                }
            }
        }
        if tx.is_closed() {
            return Ok(());
        }
    }
    Ok(())
}

/// An error and its causes, `: `-separated ("client error (Connect): tcp
/// connect error: Connection refused (os error 111)"); a cause already in
/// the text is not repeated.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn caller(cluster: &str, connected: bool) -> Caller {
        Caller {
            cluster: cluster.into(),
            trust_domain: cluster.into(),
            segment: None,
            connected,
        }
    }

    fn with_callers(callers: Vec<Caller>, pending: bool) -> CatalogFeed {
        CatalogFeed {
            callers,
            callers_pending: pending,
            ..CatalogFeed::default()
        }
    }

    #[test]
    fn a_restarted_controllers_pending_callers_keep_the_ones_known_until_settled() {
        let before = with_callers(
            vec![caller("cluster2", true), caller("cluster3", true)],
            false,
        );
        // Restarted: only cluster3 is back. cluster2 is kept, not connected.
        let restarted =
            with_callers(vec![caller("cluster3", true)], true).keeping_callers_of(&before);
        assert_eq!(
            restarted.callers,
            [caller("cluster3", true), caller("cluster2", false)]
        );
        // Still pending: kept from the feed held since.
        let next =
            with_callers(vec![caller("cluster3", true)], true).keeping_callers_of(&restarted);
        assert_eq!(next.callers, restarted.callers);
        // Settled without cluster2: it is gone.
        let settled = with_callers(vec![caller("cluster3", true)], false).keeping_callers_of(&next);
        assert_eq!(settled.callers, [caller("cluster3", true)]);
        // Lines carry the flag; a controller that does not say means settled.
        let line = crate::feed_line::encode(None, &restarted);
        assert!(
            crate::feed_line::decode(None, &line[..line.len() - 1])
                .unwrap()
                .callers_pending
        );
        let line = crate::feed_line::encode(None, &settled);
        assert!(!String::from_utf8_lossy(&line).contains("callers_pending"));
        assert!(
            !crate::feed_line::decode(None, &line[..line.len() - 1])
                .unwrap()
                .callers_pending
        );
    }

    #[test]
    fn follower_query_encodes_values_and_leaves_out_empty_ones() {
        assert_eq!(Follower::default().query(), "");
        let who = Follower {
            role: "proxy".into(),
            name: "spiffe://cluster1/ns/istio-system/sa/meshpeer-proxy".into(),
            health: Some("127.0.0.1:15120".into()),
        };
        assert_eq!(
            who.query(),
            "?role=proxy&name=spiffe%3A%2F%2Fcluster1%2Fns%2Fistio-system%2Fsa%2Fmeshpeer-proxy&health=127.0.0.1%3A15120"
        );
    }
}
