//! Flow counts sent to the controller (issue 16): the proxy and the
//! gateway send, every `interval` and once more when they stop, what their
//! [`crate::flows::Flows`] counted so far (cumulative counts per source
//! cluster, destination cluster and global service) to their cluster's
//! controller, which keeps the latest report per reporter and serves the
//! sum with rates at `GET /v1/traffic`.
//!
//! The report goes where the catalog comes from (SPEC P8): `POST
//! /v1/traffic` over mutual TLS on the controller's cluster listener (the
//! controller accepts only its proxy and gateway identities), or on its
//! plain API from loopback, or to a function in the same process.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::feed::{connect_tls, refused_unless_ok, with_causes};
use crate::metrics::DataplaneMetrics;

/// Where reports are posted, on the cluster listener and on the plain API.
pub const REPORT_PATH: &str = "/v1/traffic";

/// How often a proxy or gateway reports by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The most flows one report may carry; a controller refuses more.
pub const MAX_FLOWS: usize = 10_000;

/// The largest report body a controller reads.
pub const MAX_REPORT_BYTES: usize = 4 << 20;

/// One flow's counts since the reporter started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowCount {
    pub source_cluster: String,
    pub destination_cluster: String,
    /// The global hostname, or `unknown`.
    pub service: String,
    /// Connections (the proxy) or tunnels (the gateway), whatever their outcome.
    pub connections: u64,
    /// Of those, the ones that did not end `ok`: no endpoint answered,
    /// refused by the gateway, reset.
    pub failures: u64,
    /// Towards the destination.
    pub bytes_sent: u64,
    /// From the destination.
    pub bytes_received: u64,
}

/// What a proxy or gateway sends its controller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficReport {
    /// `proxy` or `gateway`.
    pub role: String,
    /// Which process (several may share one identity): e.g. `proxy pid 7
    /// on node-1`. Counts restart from zero with a new instance.
    pub instance: String,
    /// How often it reports: the controller forgets it after three
    /// intervals without a report.
    pub interval_ms: u64,
    /// The process is stopping: this is its last report.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last: bool,
    pub flows: Vec<FlowCount>,
}

/// A report, delivered in this process (the caller says who sent it).
pub type DeliverFn = Arc<dyn Fn(TrafficReport) -> Result<(), String> + Send + Sync>;

/// Where reports go.
#[derive(Clone)]
pub enum ReportTarget {
    /// `http://<api>/v1/traffic`: the controller's plain API (loopback).
    Plain(String),
    /// `https://<address>/v1/traffic` with a client certificate: the
    /// controller's cluster listener (`tls` as for the catalog feed).
    Tls {
        address: String,
        tls: Arc<rustls::ClientConfig>,
    },
    /// A controller in this process.
    InProcess(DeliverFn),
}

impl std::fmt::Debug for ReportTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ReportTarget {
    fn describe(&self) -> String {
        match self {
            ReportTarget::Plain(api) => format!("http://{api}{REPORT_PATH}"),
            ReportTarget::Tls { address, .. } => format!("https://{address}{REPORT_PATH}"),
            ReportTarget::InProcess(_) => "the controller in this process".to_owned(),
        }
    }
}

/// Posts one report; the controller's refusal (status and reason) is the error.
pub async fn send(target: &ReportTarget, report: &TrafficReport) -> Result<(), String> {
    match target {
        ReportTarget::InProcess(deliver) => deliver(report.clone()),
        ReportTarget::Plain(api) => {
            let connect = async {
                let tcp = TcpStream::connect(api.as_str())
                    .await
                    .map_err(|e| format!("cannot connect to {api}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                Ok::<_, String>(tcp)
            };
            let io = tokio::time::timeout(EXCHANGE_TIMEOUT, connect)
                .await
                .map_err(|_| format!("{api}: no connection within {EXCHANGE_TIMEOUT:?}"))??;
            post(io, api, report).await
        }
        ReportTarget::Tls { address, tls } => {
            let io = connect_tls(address, tls).await?;
            post(io, address, report).await
        }
    }
}

/// How long one exchange with the controller may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

async fn post<IO>(io: IO, host: &str, report: &TrafficReport) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let body = serde_json::to_vec(report).map_err(|e| e.to_string())?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| with_causes(&e))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "report connection ended");
            }
        });
        let request = http::Request::post(REPORT_PATH)
            .header(http::header::HOST, host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let result = match sender.send_request(request).await {
            Ok(resp) => refused_unless_ok(resp).await.map(|_| ()),
            Err(e) => Err(with_causes(&e)),
        };
        drop(sender);
        driver.abort();
        result
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {EXCHANGE_TIMEOUT:?}"))?
}

/// A running reporter: sends every interval; [`Reporter::stop`] sends the
/// last report.
pub struct Reporter {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// What a reporter sends and where.
#[derive(Clone, Debug)]
pub struct ReportConfig {
    pub target: ReportTarget,
    /// `proxy` or `gateway`.
    pub role: String,
    /// Which process this is (see [`TrafficReport::instance`]).
    pub instance: String,
    pub interval: Duration,
}

impl Reporter {
    /// Starts reporting what `metrics` counts.
    pub fn start(metrics: Arc<DataplaneMetrics>, cfg: ReportConfig) -> Reporter {
        let (stop, mut stopped) = oneshot::channel();
        let interval = cfg.interval.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let report = |last: bool| TrafficReport {
                role: cfg.role.clone(),
                instance: cfg.instance.clone(),
                interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
                last,
                flows: metrics.flows.snapshot(),
            };
            info!(to = %cfg.target.describe(), every = ?interval, "reporting flow counts to the controller");
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                match send(&cfg.target, &report(false)).await {
                    Ok(()) => {
                        if failing {
                            info!(to = %cfg.target.describe(), "flow counts reported again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            warn!(to = %cfg.target.describe(), error = %e, "cannot report flow counts to the controller; retrying every interval");
                        }
                        failing = true;
                    }
                }
            }
            if let Err(e) = send(&cfg.target, &report(true)).await {
                warn!(to = %cfg.target.describe(), error = %e, "cannot send the last flow counts to the controller");
            }
        });
        Reporter {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sends the last report (bounded by the exchange timeout) and stops.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(mut t) = self.task.take()
            && tokio::time::timeout(EXCHANGE_TIMEOUT + Duration::from_secs(1), &mut t)
                .await
                .is_err()
        {
            t.abort();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
