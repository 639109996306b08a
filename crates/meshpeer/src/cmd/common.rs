//! What the long-running roles (`controller`, `proxy`, `gateway`) share:
//! logging, the runtime, signals, a proxy's or gateway's certificate from
//! the controller's signing endpoint (kept renewed), waiting for the
//! controller's first catalog over mutual TLS, and the `--metrics` endpoint.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meshpeer_ca::{CaClient, CaClientConfig, TokenSource};
use meshpeer_dataplane::feed::{self, CatalogFeed};
use meshpeer_dataplane::pick::Health;
use meshpeer_identity::{Identity, LeafIssuer, SpiffeId, TrustRoot, client_config_for};
use prometheus_client::registry::Registry;
use rustls::client::ResolvesClientCert;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cli::{ControllerConnArgs, LogFormat};

/// `info`, except hickory's per-query lines (the proxy counts queries in
/// its metrics instead). `RUST_LOG` replaces it.
const DEFAULT_LOG_FILTER: &str = "info,hickory_server=warn";

pub(crate) fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (targets, env) = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let registry = tracing_subscriber::registry().with(targets).with(env);
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(crate::log_writer::BatchedStderr);
    match format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => {
            registry.with(layer.json()).init();
            // The L7 access log writes its JSON lines itself (L8).
            meshpeer_dataplane::access_log::set_json_sink(|line| {
                use std::io::Write;
                let _ = crate::log_writer::LineWriter.write_all(line);
            });
        }
    }
}

/// The filter of `RUST_LOG` (else [`DEFAULT_LOG_FILTER`]): targets and
/// levels only are a static filter (`Targets`), whose answer for each call
/// site is kept; span and field filters (`[span{field=value}]`) need an
/// `EnvFilter`, which takes a lock every thread shares each time a span is
/// entered or left, on every poll of a connection's task (each such lock
/// moves a cache line between cores). A `RUST_LOG` neither reads is
/// ignored (the default applies), as it always was.
fn log_filter(
    rust_log: Option<&str>,
) -> (
    Option<tracing_subscriber::filter::Targets>,
    Option<tracing_subscriber::EnvFilter>,
) {
    let directives = rust_log
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or(DEFAULT_LOG_FILTER);
    if !directives.contains(['[', '{'])
        && let Ok(targets) = directives.parse::<tracing_subscriber::filter::Targets>()
    {
        return (Some(targets), None);
    }
    match tracing_subscriber::EnvFilter::try_new(directives) {
        Ok(env) => (None, Some(env)),
        Err(_) => log_filter(Some(DEFAULT_LOG_FILTER)),
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

/// How a proxy or gateway reaches its controller and who it is there
/// (SPEC P7): the shared root, the signing endpoint's client, the
/// controller's identity and its own.
pub(crate) struct ControllerLink {
    pub(crate) address: String,
    pub(crate) root: TrustRoot,
    pub(crate) controller_id: SpiffeId,
    pub(crate) own_id: SpiffeId,
    pub(crate) client: CaClient,
}

/// Reads the root and checks the token file, from the flags of a role whose
/// identity is `default_id` (namespace, service account) unless the flags say.
pub(crate) fn controller_link(
    args: &ControllerConnArgs,
    default_id: (&str, &str),
) -> anyhow::Result<ControllerLink> {
    let td = args
        .trust_domain
        .as_deref()
        .or(args.cluster_name.as_deref())
        .context("give --trust-domain (or --cluster-name)")?;
    let root = TrustRoot::load(&args.root_cert).with_context(|| {
        format!(
            "cannot read the shared root certificate from {} (a cluster's root-cert.pem: meshpeer certs cluster NAME --root ROOT_DIR --out DIR writes it)",
            args.root_cert.display()
        )
    })?;
    std::fs::metadata(&args.token_file).with_context(|| {
        format!(
            "cannot read the token file {} (make one: meshpeer certs token --tokens TOKENS_FILE --namespace {} --service-account {} --out {})",
            args.token_file.display(),
            default_id.0,
            default_id.1,
            args.token_file.display()
        )
    })?;
    let (ns, sa) = meshpeer::cluster_api::CONTROLLER_IDENTITY;
    let controller_id = SpiffeId::new(td, ns, sa)
        .with_context(|| format!("trust domain {td:?} does not make a SPIFFE ID"))?;
    let own_id = SpiffeId::new(
        td,
        args.namespace.as_deref().unwrap_or(default_id.0),
        args.service_account.as_deref().unwrap_or(default_id.1),
    )
    .context("--namespace/--service-account do not make a SPIFFE ID")?;
    let client = CaClient::new(CaClientConfig {
        address: args.controller.clone(),
        root: root.clone(),
        server: controller_id.clone(),
        token: TokenSource::File(args.token_file.clone()),
        timeout: Duration::from_secs(10),
    });
    Ok(ControllerLink {
        address: args.controller.clone(),
        root,
        controller_id,
        own_id,
        client,
    })
}

/// Obtains this process's first certificate from the controller's signing
/// endpoint, retrying (1 s, doubling up to 30 s) as long as it takes, or
/// until a signal (then `None`). From then on the certificate is presented
/// when renewing, and renewed at two thirds of its lifetime.
pub(crate) async fn obtain_identity(
    link: &ControllerLink,
    lifetime: Duration,
    signals: &mut Signals,
) -> anyhow::Result<Option<(Arc<Identity>, JoinHandle<()>)>> {
    let address = &link.address;
    info!(controller = %address, identity = %link.own_id, "waiting for a certificate from the controller at {address}");
    let issuer: Arc<dyn LeafIssuer> = Arc::new(link.client.clone());
    let attempts = async {
        let mut wait = Duration::from_secs(1);
        let mut last_said = None::<tokio::time::Instant>;
        loop {
            match Identity::from_issuer(
                Arc::clone(&issuer),
                link.root.clone(),
                link.own_id.clone(),
                lifetime,
            )
            .await
            {
                Ok(identity) => return Arc::new(identity),
                Err(e) => {
                    if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                        warn!(controller = %address, error = %e, retry_in = ?wait, "cannot get a certificate from the controller; retrying");
                        last_said = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    };
    let identity = tokio::select! {
        identity = attempts => identity,
        why = signals.recv() => {
            info!("{why} received while waiting for a certificate; exiting");
            return Ok(None);
        }
    };
    link.client.renew_with(&identity);
    let leaf = identity.current();
    info!(
        identity = %identity.spiffe_id(),
        from = %identity.issuer(),
        valid_for_s = leaf
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .as_secs(),
        "certificate issued"
    );
    let renew = tokio::spawn(Arc::clone(&identity).run_rotation());
    Ok(Some((identity, renew)))
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

/// Sends the role's flow counts to the controller's cluster listener over
/// mutual TLS, as the catalog comes, every `--report-interval` (issue 16);
/// `None` when the interval is 0.
pub(crate) fn report_config(
    link: &ControllerLink,
    identity: &Arc<Identity>,
    who: &feed::Follower,
    interval: Duration,
) -> anyhow::Result<Option<meshpeer_dataplane::report::ReportConfig>> {
    if interval.is_zero() {
        return Ok(None);
    }
    let resolver: Arc<dyn ResolvesClientCert> = Arc::clone(identity) as Arc<dyn ResolvesClientCert>;
    let tls = client_config_for(
        Some(resolver),
        &link.root,
        &link.controller_id,
        &[b"http/1.1"],
    )?;
    Ok(Some(meshpeer_dataplane::report::ReportConfig {
        target: meshpeer_dataplane::report::ReportTarget::Tls {
            address: link.address.clone(),
            tls,
        },
        role: who.role.clone(),
        instance: who.name.clone(),
        interval,
    }))
}

/// Follows the controller's catalog over mutual TLS (SPEC P8) and waits for
/// its first version, or for a signal (then `None`).
pub(crate) async fn wait_or_stop(
    link: &ControllerLink,
    identity: &Arc<Identity>,
    who: feed::Follower,
    signals: &mut Signals,
) -> anyhow::Result<Option<(watch::Receiver<Arc<CatalogFeed>>, Follow)>> {
    let resolver: Arc<dyn ResolvesClientCert> = Arc::clone(identity) as Arc<dyn ResolvesClientCert>;
    let tls = client_config_for(
        Some(resolver),
        &link.root,
        &link.controller_id,
        &[b"http/1.1"],
    )?;
    tokio::select! {
        r = wait_for_catalog(&link.address, tls, who) => r.map(Some),
        why = signals.recv() => {
            info!("{why} received while waiting for the controller's catalog; exiting");
            Ok(None)
        }
    }
}

/// Follows `GET /v1/catalog/watch` of the controller's cluster listener at
/// `controller` and waits, as long as it takes, for the first catalog.
async fn wait_for_catalog(
    controller: &str,
    tls: Arc<rustls::ClientConfig>,
    who: feed::Follower,
) -> anyhow::Result<(watch::Receiver<Arc<CatalogFeed>>, Follow)> {
    let (tx, mut rx) = watch::channel(Arc::new(CatalogFeed::default()));
    info!(controller = %controller, "waiting for the controller's catalog at {controller}");
    let follow = Follow(tokio::spawn(feed::follow_tls(
        controller.to_owned(),
        tls,
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
                    "still waiting for the controller's catalog at {controller} (is `meshpeer controller --cluster-listen {controller}` running?); retrying"
                );
            }
        }
    }
    Ok((rx, follow))
}

/// The `--metrics` endpoint: `GET /metrics` (Prometheus text, empty until
/// the role runs), `GET /healthz` (200 once the role runs, else 503) and,
/// for a proxy, `GET /v1/ejections` (the destinations passive health
/// checking has ejected now, which `meshpeer explain --proxy` shows).
pub(crate) struct Telemetry {
    addr: SocketAddr,
    registry: Arc<OnceLock<Registry>>,
    health: Arc<OnceLock<Arc<Health>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct TelemetryState {
    registry: Arc<OnceLock<Registry>>,
    health: Arc<OnceLock<Arc<Health>>>,
}

impl Telemetry {
    pub(crate) async fn start(listen: SocketAddr) -> anyhow::Result<Telemetry> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen for metrics on {listen}"))?;
        let addr = listener.local_addr()?;
        let registry: Arc<OnceLock<Registry>> = Arc::new(OnceLock::new());
        let health: Arc<OnceLock<Arc<Health>>> = Arc::new(OnceLock::new());
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/v1/ejections", get(ejections))
            .with_state(TelemetryState {
                registry: Arc::clone(&registry),
                health: Arc::clone(&health),
            });
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
            health,
            stop,
            task,
        })
    }

    /// The role runs: serve its metrics, and healthz is 200 from now on.
    pub(crate) fn ready(&self, registry: Registry) {
        let _ = self.registry.set(registry);
    }

    /// A proxy's passive health, served at `/v1/ejections`.
    pub(crate) fn serve_health(&self, health: Arc<Health>) {
        let _ = self.health.set(health);
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

async fn healthz(State(t): State<TelemetryState>) -> Response {
    if t.registry.get().is_some() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the controller's catalog\n",
        )
            .into_response()
    }
}

/// `[{"endpoint": "10.0.0.5:8080"} | {"cluster": "c2", "authority":
/// "web.shop.mesh.internal:8000"}, with "remainingMs"]`, or 404 for a role
/// without passive health.
async fn ejections(State(t): State<TelemetryState>) -> Response {
    let Some(health) = t.health.get() else {
        return (
            StatusCode::NOT_FOUND,
            "no passive health here (not a proxy)\n",
        )
            .into_response();
    };
    let list: Vec<meshpeer::explain::Ejected> = health
        .ejected(tokio::time::Instant::now())
        .into_iter()
        .map(|(key, left)| meshpeer::explain::Ejected::of(&key, left))
        .collect();
    axum::Json(list).into_response()
}

async fn metrics(State(t): State<TelemetryState>) -> Response {
    let mut out = String::new();
    if let Some(r) = t.registry.get()
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

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    /// `RUST_LOG` of targets and levels is a static filter that reads it
    /// as `EnvFilter` did; span filters keep `EnvFilter`; what neither
    /// reads, or nothing, is the default.
    #[test]
    fn o7_rust_log_of_targets_and_levels_is_a_static_filter_that_reads_it_the_same() {
        let on = |t: &tracing_subscriber::filter::Targets, target: &str, level: Level| {
            t.would_enable(target, &level)
        };
        for rust_log in [None, Some(""), Some("  "), Some("info,=x=y==")] {
            let (targets, env) = log_filter(rust_log);
            let targets = targets.expect("the default is static");
            assert!(env.is_none());
            assert!(on(&targets, "meshpeer_dataplane::proxy::l7", Level::INFO));
            assert!(!on(&targets, "meshpeer_dataplane::proxy::l7", Level::DEBUG));
            assert!(!on(&targets, "hickory_server::server", Level::INFO));
            assert!(on(&targets, "hickory_server::server", Level::WARN));
        }
        let (targets, _) = log_filter(Some("warn,meshpeer_dataplane::proxy=debug"));
        let targets = targets.unwrap();
        assert!(on(&targets, "meshpeer_dataplane::proxy::h1", Level::DEBUG));
        assert!(!on(&targets, "meshpeer_dataplane::dns", Level::INFO));
        assert!(on(&targets, "meshpeer::cmd", Level::WARN));
        let (targets, env) = log_filter(Some("info,[conn{peer=1.2.3.4:5}]=debug"));
        assert!(
            targets.is_none() && env.is_some(),
            "span filters need EnvFilter"
        );
    }
}
