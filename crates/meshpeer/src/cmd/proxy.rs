//! `meshpeer proxy`: one cluster's data plane for its clients (SPEC D1, D2):
//! DNS for the global names and one listener per VIP:port, following the
//! controller's catalog.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use meshpeer::dataplane::{ProxyRole, ProxyRoleConfig, endpoint_policy, refresh_node_addresses};
use meshpeer_model::Locality;
use prometheus_client::registry::Registry;
use tracing::info;

use super::common::{
    Signals, Telemetry, check_free, controller_link, follower, init_logging, obtain_identity,
    report_config, runtime, wait_or_stop,
};
use crate::cli::ProxyArgs;

/// How long the startup line waits for the VIP listeners to be bound.
const LISTEN_SETTLE: Duration = Duration::from_secs(2);

pub(crate) fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    runtime()?.block_on(run_async(args))
}

async fn run_async(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    let link = controller_link(&args.conn, meshpeer::dataplane::PROXY_IDENTITY)?;
    // Fail now, not once the controller answers, when a port is taken.
    check_free(args.dns_listen, "DNS", true).await?;
    let telemetry = match args.metrics {
        Some(addr) => Some(Telemetry::start(addr).await?),
        None => None,
    };
    let Some((identity, renew)) = obtain_identity(&link, args.cert_lifetime, &mut signals).await?
    else {
        Telemetry::stop(telemetry).await;
        return Ok(ExitCode::SUCCESS);
    };
    let Some((feed, follow)) = wait_or_stop(
        &link,
        &identity,
        follower("proxy", args.metrics),
        &mut signals,
    )
    .await?
    else {
        renew.abort();
        Telemetry::stop(telemetry).await;
        return Ok(ExitCode::SUCCESS);
    };
    let cluster = feed.borrow().catalog.cluster.clone();
    let root = link.root.clone();

    let mut cfg = ProxyRoleConfig::new(args.dns_listen);
    cfg.dns.upstreams = args.dns_upstream.clone();
    cfg.dns.max_forwards = args.dns_max_forwards;
    cfg.dns.max_tcp_connections = args.dns_max_tcp_connections;
    cfg.proxy.resolve_timeout = args.resolve_timeout;
    cfg.proxy.header_timeout = args.header_timeout;
    cfg.proxy.body_timeout = args.body_timeout;
    if let Some(n) = args.l7_workers {
        cfg.proxy.l7_workers = n;
    }
    cfg.proxy.l7_direct_http1 = args.l7_http1 == "direct";
    cfg.state.capture_cluster_ips = args.capture_cluster_ips;
    cfg.state.locality = match (&args.region, &args.zone) {
        (Some(region), Some(zone)) => Some(Locality::new(region, zone)),
        _ => None,
    };
    cfg.proxy.endpoints = endpoint_policy(args.allow_endpoints.clone(), &args.node_ip);
    let refresh = refresh_node_addresses(Arc::clone(&cfg.proxy.endpoints), args.node_ip.clone());
    let mut registry = Registry::default();
    let mut role = ProxyRole::start(feed, Arc::clone(&identity), root, cfg, &mut registry).await?;
    let who = follower("proxy", args.metrics);
    if let Some(report) = report_config(&link, &identity, &who, args.conn.report_interval)? {
        role.report_to(report);
    }

    // The startup line tells how many VIP:port listeners are up.
    let mut state = role.state.clone();
    let wanted = match state.wait_for(|s| s.feed.version > 0).await {
        Ok(s) => s.listeners.len(),
        Err(_) => 0,
    };
    let mut listening = role.proxy.listening();
    let _ = tokio::time::timeout(LISTEN_SETTLE, listening.wait_for(|l| l.len() >= wanted)).await;
    let bound = listening.borrow().len();
    if let Some(t) = &telemetry {
        t.serve_health(role.proxy.health());
        t.ready(registry);
    }
    let dns = role.dns.local_addr();
    let upstream = cfg_upstream(&args.dns_upstream);
    info!(
        cluster = %cluster.name,
        identity = %identity.spiffe_id(),
        dns = %dns,
        dns_upstream = %upstream,
        vips = wanted,
        listening = bound,
        metrics = %Telemetry::addr_of(telemetry.as_ref()),
        "proxy running: DNS on {dns} (other names: {upstream}), {bound} of {wanted} VIP listeners bound"
    );

    let why = signals.recv().await;
    info!("{why} received; shutting down");
    renew.abort();
    refresh.abort();
    role.shutdown().await;
    drop(follow);
    Telemetry::stop(telemetry).await;
    Ok(ExitCode::SUCCESS)
}

fn cfg_upstream(upstreams: &[SocketAddr]) -> String {
    if upstreams.is_empty() {
        return "refused, no --dns-upstream".to_owned();
    }
    let list: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
    format!("forwarded to {}", list.join(", then "))
}
