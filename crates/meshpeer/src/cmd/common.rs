//! What the long-running roles (`controller`, `proxy`, `gateway`) share:
//! logging, the runtime, signals, the cluster CA and a renewed workload
//! certificate, waiting for the controller's first catalog, and the
//! `--metrics` endpoint.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meshpeer_dataplane::feed::{self, CatalogFeed};
use meshpeer_identity::{CA_CERT_FILE, ClusterCa, Identity, SpiffeId};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cli::LogFormat;

/// `info`, except hickory's per-query lines (the proxy counts queries in
/// its metrics instead). `RUST_LOG` replaces it.
const DEFAULT_LOG_FILTER: &str = "info,hickory_server=warn";

pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// SIGINT and SIGTERM, listened for from the start (so that a signal that
/// arrives early is not the default, abrupt, exit).
pub(crate) struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for the next signal; returns its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Loads the cluster's intermediate CA; the error names the folder and the file.
pub(crate) fn load_ca(cacerts: &Path) -> anyhow::Result<ClusterCa> {
    ClusterCa::load(cacerts, SystemTime::now()).with_context(|| {
        format!(
            "cannot load the cluster's CA from {} (make one: meshpeer certs cluster NAME --root ROOT_DIR --out {})",
            cacerts.display(),
            cacerts.display()
        )
    })
}

/// Issues this process's certificate for `spiffe://<trust_domain>/ns/<ns>/sa/<sa>`.
pub(crate) fn issue_identity(
    ca: ClusterCa,
    cacerts: &Path,
    trust_domain: &str,
    ns: &str,
    sa: &str,
    lifetime: Duration,
) -> anyhow::Result<Arc<Identity>> {
    let id = SpiffeId::new(trust_domain, ns, sa).with_context(|| {
        format!("the controller's trust domain {trust_domain:?} does not make a SPIFFE ID")
    })?;
    let identity =
        Identity::new(ca, id.clone(), lifetime, SystemTime::now()).with_context(|| {
            format!(
                "the cluster CA in {} ({}) cannot issue a certificate for {id}",
                cacerts.display(),
                cacerts.join(CA_CERT_FILE).display()
            )
        })?;
    info!(identity = %id, "certificate issued");
    Ok(Arc::new(identity))
}

/// Renews the certificate when two thirds of its lifetime have passed.
pub(crate) fn keep_renewed(identity: Arc<Identity>, lifetime: Duration) -> JoinHandle<()> {
    let every = (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match identity.rotate_if_due(SystemTime::now()) {
                Ok(true) => info!(identity = %identity.spiffe_id(), "certificate renewed"),
                Ok(false) => {}
                Err(e) => {
                    warn!(identity = %identity.spiffe_id(), error = %e, "cannot renew the certificate; will retry")
                }
            }
        }
    })
}

/// Fails, naming `addr`, when it cannot be listened on (TCP, and UDP when
/// `udp`). Port 0 always can.
pub(crate) async fn check_free(addr: SocketAddr, what: &str, udp: bool) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let tcp = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr} (tcp)"))?;
    drop(tcp);
    if udp {
        let u = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("cannot listen for {what} on {addr} (udp)"))?;
        drop(u);
    }
    Ok(())
}

/// Stops following the catalog when dropped.
pub(crate) struct Follow(JoinHandle<()>);

impl Drop for Follow {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Who this process is, for the controller's list of its data plane
/// (`meshpeer check` probes `health`).
pub(crate) fn follower(role: &str, metrics: Option<SocketAddr>) -> feed::Follower {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    feed::Follower {
        role: role.to_owned(),
        name: format!(
            "{role} pid {} on {}",
            std::process::id(),
            if host.is_empty() { "localhost" } else { &host }
        ),
        health: metrics.map(|a| a.to_string()),
    }
}

/// Follows the controller's catalog and waits for its first version, or for
/// a signal (then `None`).
pub(crate) async fn wait_or_stop(
    controller: &str,
    who: feed::Follower,
    signals: &mut Signals,
) -> anyhow::Result<Option<(watch::Receiver<Arc<CatalogFeed>>, Follow)>> {
    tokio::select! {
        r = wait_for_catalog(controller, who) => r.map(Some),
        why = signals.recv() => {
            info!("{why} received while waiting for the controller's catalog; exiting");
            Ok(None)
        }
    }
}

/// Follows `GET /v1/catalog/watch` of the controller at `controller` and
/// waits, as long as it takes, for the first catalog.
async fn wait_for_catalog(
    controller: &str,
    who: feed::Follower,
) -> anyhow::Result<(watch::Receiver<Arc<CatalogFeed>>, Follow)> {
    let (tx, mut rx) = watch::channel(Arc::new(CatalogFeed::default()));
    info!(controller = %controller, "waiting for the controller's catalog at {controller}");
    let follow = Follow(tokio::spawn(feed::follow_as(
        controller.to_owned(),
        who,
        tx,
    )));
    let started = tokio::time::Instant::now();
    let mut nag =
        tokio::time::interval_at(started + Duration::from_secs(10), Duration::from_secs(30));
    loop {
        tokio::select! {
            r = rx.wait_for(|f| f.version > 0) => {
                let version = r
                    .map(|f| f.version)
                    .map_err(|_| anyhow::anyhow!("stopped following the controller's catalog at {controller}"))?;
                info!(controller = %controller, version, "catalog received");
                break;
            }
            _ = nag.tick() => {
                warn!(
                    controller = %controller,
                    waited_s = started.elapsed().as_secs(),
                    "still waiting for the controller's catalog at {controller} (is `meshpeer controller --api-listen {controller}` running?); retrying"
                );
            }
        }
    }
    Ok((rx, follow))
}

/// The `--metrics` endpoint: `GET /metrics` (Prometheus text, empty until
/// the role runs) and `GET /healthz` (200 once the role runs, else 503).
pub(crate) struct Telemetry {
    addr: SocketAddr,
    registry: Arc<OnceLock<Registry>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Telemetry {
    pub(crate) async fn start(listen: SocketAddr) -> anyhow::Result<Telemetry> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen for metrics on {listen}"))?;
        let addr = listener.local_addr()?;
        let registry: Arc<OnceLock<Registry>> = Arc::new(OnceLock::new());
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .with_state(Arc::clone(&registry));
        let (stop, mut stop_rx) = watch::channel(false);
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
        let task = tokio::spawn(async move {
            if let Err(e) = serve.into_future().await {
                warn!(error = %e, "metrics endpoint stopped");
            }
        });
        info!(address = %addr, "metrics listening (/metrics, /healthz)");
        Ok(Telemetry {
            addr,
            registry,
            stop,
            task,
        })
    }

    /// The role runs: serve its metrics, and healthz is 200 from now on.
    pub(crate) fn ready(&self, registry: Registry) {
        let _ = self.registry.set(registry);
    }

    pub(crate) fn addr_of(t: Option<&Telemetry>) -> String {
        t.map(|t| t.addr.to_string())
            .unwrap_or_else(|| "off".to_owned())
    }

    pub(crate) async fn stop(t: Option<Telemetry>) {
        if let Some(t) = t {
            let _ = t.stop.send(true);
            let _ = t.task.await;
        }
    }
}

async fn healthz(State(registry): State<Arc<OnceLock<Registry>>>) -> Response {
    if registry.get().is_some() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the controller's catalog\n",
        )
            .into_response()
    }
}

async fn metrics(State(registry): State<Arc<OnceLock<Registry>>>) -> Response {
    let mut out = String::new();
    if let Some(r) = registry.get()
        && let Err(e) = prometheus_client::encoding::text::encode(&mut out, r)
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    if out.is_empty() {
        out.push_str("# EOF\n");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
