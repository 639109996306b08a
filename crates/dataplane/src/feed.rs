//! The catalog a data plane works from: what the cluster's controller
//! publishes on every change (in process through a `watch` channel, across
//! processes as NDJSON on `GET /v1/catalog/watch`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshpeer_model::GlobalCatalog;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

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
    pub catalog: GlobalCatalog,
    /// Clusters allowed to send here, by trust domain.
    #[serde(default)]
    pub callers: Vec<Caller>,
}

impl CatalogFeed {
    /// The caller presenting `trust_domain`, if it links to this cluster.
    pub fn caller(&self, trust_domain: &str) -> Option<&Caller> {
        self.callers.iter().find(|c| c.trust_domain == trust_domain)
    }
}

/// Follows a controller's catalog stream at `http://<api>/v1/catalog/watch`,
/// publishing each version on `tx`, reconnecting (1 s apart) when the stream
/// breaks. Runs until `tx` has no receiver left.
pub async fn follow(api: String, tx: watch::Sender<Arc<CatalogFeed>>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut logged_down = false;
    loop {
        if tx.is_closed() {
            return;
        }
        match stream_once(&client, &api, &tx).await {
            Ok(()) => info!(controller = %api, "catalog stream ended; reconnecting"),
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

async fn stream_once(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    api: &str,
    tx: &watch::Sender<Arc<CatalogFeed>>,
) -> Result<(), String> {
    let uri: http::Uri = format!("http://{api}/v1/catalog/watch")
        .parse()
        .map_err(|e| format!("{api}: {e}"))?;
    let resp = client.get(uri).await.map_err(|e| with_causes(&e))?;
    if !resp.status().is_success() {
        return Err(format!("the controller answered {}", resp.status()));
    }
    info!(controller = %api, "following the controller's catalog");
    let mut body = resp.into_body().into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            match serde_json::from_slice::<CatalogFeed>(&line[..line.len() - 1]) {
                Ok(feed) => {
                    debug!(
                        version = feed.version,
                        services = feed.catalog.services.len(),
                        "catalog received"
                    );
                    tx.send_replace(Arc::new(feed));
                }
                Err(e) => {
                    warn!(error = %e, "unreadable catalog document from the controller; skipped")
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
/// connect error: Connection refused (os error 111)").
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
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
