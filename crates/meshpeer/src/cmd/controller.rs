//! `meshpeer controller`: one cluster's control plane.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use meshpeer::cluster_api::{CLUSTER_PORT, ClusterListener};
use meshpeer::controller::{Controller, ControllerConfig};
use meshpeer_ca::{StaticTokens, TokenReviewAuthenticator};
use meshpeer_identity::{ClusterCa, Identity, SpiffeId};
use meshpeer_model::{ClusterConfig, exports, labels};
use meshpeer_store::file_sink::FileSink;
use meshpeer_store::file_source::{DEFAULT_DEBOUNCE, FileSource};
use meshpeer_store::kube_sink::KubeSink;
use meshpeer_store::kube_source::KubeSource;
use meshpeer_store::{ClusterSource, Sink, load_cluster_dir};
use tracing::{info, warn};

use super::common::{Signals, init_logging, runtime};
use crate::cli::ControllerArgs;

/// The cluster listener's settings from the flags: where (file mode: the
/// east-west Gateway's address, port 15013; Kubernetes: every address), and
/// who the signing endpoint believes (TokenReview in Kubernetes mode, the
/// tokens file when given).
fn cluster_listener(args: &ControllerArgs, cluster: &Cluster) -> anyhow::Result<ClusterListener> {
    let listen = args.cluster_listen.unwrap_or_else(|| {
        let ip = match (&cluster.kube, cluster.peering) {
            (Some(_), _) => IpAddr::from([0, 0, 0, 0]),
            (None, Some(peering)) => peering.ip(),
            (None, None) => IpAddr::from([127, 0, 0, 1]),
        };
        SocketAddr::new(ip, CLUSTER_PORT)
    });
    let mut listener = ClusterListener::new(listen, &cluster.trust_domain);
    listener.names = if args.cluster_listener_names.is_empty() {
        default_listener_names(listen.ip(), cluster.kube.is_some())
    } else {
        args.cluster_listener_names.clone()
    };
    listener.ca.max_validity = args.max_cert_lifetime;
    listener.limits = args.listener.limits(args.max_connections);
    if let Some(client) = &cluster.kube {
        listener
            .ca
            .authenticators
            .push(Arc::new(TokenReviewAuthenticator::new(
                client.clone(),
                vec![args.token_audience.clone()],
            )));
    }
    match &args.tokens {
        Some(path) => listener
            .ca
            .authenticators
            .push(Arc::new(StaticTokens::load(path).with_context(|| {
                format!("cannot use the tokens file {}", path.display())
            })?)),
        None if cluster.kube.is_none() => warn!(
            "no --tokens file: proxies and gateways cannot get their first certificate from this controller (make tokens: meshpeer certs token --tokens FILE --namespace NS --service-account SA --out TOKEN_FILE)"
        ),
        None => {}
    }
    Ok(listener)
}

/// The names the cluster listener's certificate carries by default: its
/// address when specific; in Kubernetes mode the controller Service's names
/// (`deploy/base/controller.yaml`).
fn default_listener_names(ip: IpAddr, kube: bool) -> Vec<String> {
    let mut names = Vec::new();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    if kube {
        names.push("meshpeer-controller.istio-system.svc".to_owned());
        names.push("meshpeer-controller.istio-system.svc.cluster.local".to_owned());
    }
    names
}

pub(crate) fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    runtime()?.block_on(run_async(args))
}

/// The cluster's name, trust domain and default peering address, and the
/// Kubernetes client (Kubernetes mode: TokenReviews).
struct Cluster {
    name: String,
    trust_domain: String,
    peering: Option<SocketAddr>,
    kube: Option<kube::Client>,
}

async fn run_async(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    let (source, sink, cluster): (Box<dyn ClusterSource>, Box<dyn Sink>, Cluster) = match &args
        .cluster_dir
    {
        Some(dir) => {
            // Read once up front: a bad folder is an error now, not later.
            let snap = load_cluster_dir(dir).context("cannot load cluster folder")?;
            let export = exports(&snap);
            let peering = snap
                .gateways
                .values()
                .find(|g| g.spec.gateway_class_name == labels::EASTWEST_CLASS)
                .and_then(|g| {
                    let ip: IpAddr = g.status.as_ref()?.addresses.first()?.value.parse().ok()?;
                    let port = g
                        .spec
                        .listeners
                        .iter()
                        .find(|l| l.name == "xds-tls")
                        .and_then(|l| u16::try_from(l.port).ok())
                        .unwrap_or(labels::XDS_PORT);
                    Some(SocketAddr::new(ip, port))
                });
            let out = args
                .output_dir
                .clone()
                .unwrap_or_else(|| dir.join(".meshpeer").join("out"));
            (
                Box::new(
                    FileSource::new(dir.clone(), DEFAULT_DEBOUNCE)
                        .with_write_settle(args.write_settle),
                ),
                Box::new(FileSink::new(out)),
                Cluster {
                    name: export.cluster.name,
                    trust_domain: export.cluster.trust_domain,
                    peering,
                    kube: None,
                },
            )
        }
        None => {
            let name = args
                .cluster_name
                .clone()
                .context("--cluster-name is required in Kubernetes mode")?;
            let config = ClusterConfig {
                name: name.clone(),
                network: args.network.clone(),
                region: args.region.clone(),
                zone: args.zone.clone(),
                trust_domain: args.trust_domain.clone(),
            };
            config
                .check()
                .map_err(|e| anyhow::anyhow!("cluster flags: {e}"))?;
            let kube_config = match &args.context {
                Some(ctx) => kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
                    context: Some(ctx.clone()),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot load kubeconfig context {ctx}"))?,
                None => kube::Config::infer()
                    .await
                    .context("cannot find a Kubernetes config (in-cluster or kubeconfig)")?,
            };
            let client = kube::Client::try_from(kube_config)
                .context("cannot build the Kubernetes client")?;
            let trust_domain = config.trust_domain().to_owned();
            (
                Box::new(KubeSource::new(client.clone(), config)),
                Box::new(KubeSink::new(client.clone(), "meshpeer")),
                Cluster {
                    name,
                    trust_domain,
                    peering: None,
                    kube: Some(client),
                },
            )
        }
    };

    let now = SystemTime::now();
    let ca = ClusterCa::load(&args.cacerts, now).with_context(|| {
        format!(
            "cannot load cluster {}'s CA from {} (make one: meshpeer certs cluster {} --root ROOT_DIR --out {})",
            cluster.name,
            args.cacerts.display(),
            cluster.name,
            args.cacerts.display()
        )
    })?;
    match ca.binding() {
        Some(bound) if bound != cluster.trust_domain => anyhow::bail!(
            "the intermediate in {} is bound to trust domain {bound}, but cluster {} has trust domain {} (SPEC P6); issue it for this trust domain: meshpeer certs cluster {} --trust-domain {} --root ROOT_DIR --out NEW_DIR",
            args.cacerts.display(),
            cluster.name,
            cluster.trust_domain,
            cluster.name,
            cluster.trust_domain
        ),
        Some(_) => {}
        None => warn!(
            cacerts = %args.cacerts.display(),
            "the intermediate is not bound to a trust domain (made before SPEC P6): a leaked key could speak for any cluster; re-issue it with meshpeer certs cluster {} --trust-domain {}",
            cluster.name,
            cluster.trust_domain
        ),
    }
    // The cluster binding says which cluster this CA's chains speak for,
    // which is what tells clusters of a shared trust domain apart (P6).
    match ca.cluster_binding() {
        Some(bound) if bound != cluster.name => anyhow::bail!(
            "the intermediate in {} is bound to cluster {bound}, but this is cluster {} (SPEC P6): its chains would speak for {bound}; issue one for this cluster: meshpeer certs cluster {} --trust-domain {} --root ROOT_DIR --out NEW_DIR",
            args.cacerts.display(),
            cluster.name,
            cluster.name,
            cluster.trust_domain
        ),
        Some(_) => {}
        None if cluster.trust_domain != cluster.name => warn!(
            cacerts = %args.cacerts.display(),
            "the intermediate is not bound to a cluster (made before cluster bindings): where clusters share trust domain {}, peers and gateways refuse its chains (no_cluster_binding); re-issue it with meshpeer certs cluster {} --trust-domain {}",
            cluster.trust_domain,
            cluster.name,
            cluster.trust_domain
        ),
        None => {}
    }
    let trust_root = ca.trust_root().clone();
    let id = SpiffeId::new(cluster.trust_domain.as_str(), "istio-system", "meshpeer")?;
    let identity = Arc::new(Identity::new(ca, id, args.cert_lifetime, now)?);

    let peering_listen = args
        .peering_listen
        .or(cluster.peering)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], labels::XDS_PORT)));
    let mut cfg = ControllerConfig::new(source, sink, identity, trust_root, peering_listen);
    cfg.api_listen = Some(args.api_listen);
    cfg.vip_range = args.vip_cidr;
    cfg.istio_flavor = args.istio_flavor.into();
    cfg.grace = args.grace;
    cfg.heartbeat = args.heartbeat;
    if !args.allowed_peers.is_empty() {
        cfg.allowed_peers = Some(
            args.allowed_peers
                .iter()
                .map(|td| td.trim().to_owned())
                .filter(|td| !td.is_empty())
                .collect(),
        );
        info!(allowed = ?cfg.allowed_peers, "only these trust domains may peer with this cluster");
    }
    cfg.feed_identities = args.feed_identities.iter().cloned().collect();
    cfg.limits = args.limits();
    // The peering listener has the cluster listener's bounds (SPEC B5).
    cfg.peering_listener = args.listener.limits(args.max_connections);
    cfg.cluster = Some(cluster_listener(&args, &cluster)?);
    let controller = Controller::start(cfg).await?;
    let api = controller
        .api_addr
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(
        cluster = %cluster.name,
        peering = %controller.peering_addr,
        api = %api,
        "controller running; status: meshpeer status --controller {api}"
    );
    let web = match args.web_listen {
        Some(listen) => {
            let router = meshpeer::web::router_for(vec![meshpeer::web::PageCluster::of(
                &cluster.name,
                &controller,
            )]);
            Some(meshpeer::web::serve(listen, router).await?.1)
        }
        None => None,
    };
    // File mode: say where this controller listens, for `meshpeer check`.
    let runtime_dir = args.cluster_dir.clone();
    if let (Some(dir), Some(api)) = (&runtime_dir, controller.api_addr)
        && let Err(e) = meshpeer::check::write_runtime_file(
            dir,
            api,
            controller.peering_addr,
            controller.cluster_addr,
        )
    {
        warn!(folder = %dir.display(), error = %e, "cannot record the controller's addresses for `meshpeer check`");
    }
    let why = signals.recv().await;
    info!("{why} received; shutting down");
    if let Some(web) = web {
        web.abort();
    }
    controller.shutdown().await;
    if let Some(dir) = &runtime_dir {
        let _ = meshpeer::check::remove_runtime_file(dir);
    }
    Ok(ExitCode::SUCCESS)
}
