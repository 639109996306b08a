//! `meshpeer gateway`: one cluster's east-west gateway (SPEC D3): accepts
//! HBONE tunnels from linked clusters' proxies and connects them to ready
//! local endpoints, following the controller's catalog.

use std::process::ExitCode;
use std::sync::Arc;

use meshpeer::dataplane::{GatewayRole, endpoint_policy, refresh_node_addresses};
use meshpeer_dataplane::gateway::GatewayConfig;
use prometheus_client::registry::Registry;
use tracing::info;

use super::common::{
    Signals, Telemetry, check_free, follower, init_logging, issue_identity, keep_renewed, load_ca,
    runtime, wait_or_stop,
};
use crate::cli::GatewayArgs;

/// The gateway's workload identity, as Istio's east-west gateway has it:
/// `spiffe://<td>/ns/istio-eastwest/sa/istio-eastwest`.
const GATEWAY_NAMESPACE: &str = "istio-eastwest";
const GATEWAY_ACCOUNT: &str = "istio-eastwest";

pub(crate) fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    runtime()?.block_on(run_async(args))
}

async fn run_async(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    let ca = load_ca(&args.cacerts)?;
    // Fail now, not once the controller answers, when the port is taken.
    check_free(args.listen, "HBONE", false).await?;
    let telemetry = match args.metrics {
        Some(addr) => Some(Telemetry::start(addr).await?),
        None => None,
    };

    let Some((feed, follow)) = wait_or_stop(
        &args.controller,
        follower("gateway", args.metrics),
        &mut signals,
    )
    .await?
    else {
        Telemetry::stop(telemetry).await;
        return Ok(ExitCode::SUCCESS);
    };
    let cluster = feed.borrow().catalog.cluster.clone();
    let identity = issue_identity(
        ca,
        &args.cacerts,
        &cluster.trust_domain,
        GATEWAY_NAMESPACE,
        GATEWAY_ACCOUNT,
        args.cert_lifetime,
    )?;
    let root = identity.cluster_ca().trust_root().clone();

    let config = GatewayConfig {
        endpoints: endpoint_policy(args.allow_endpoints.clone(), &args.node_ip),
        ..GatewayConfig::default()
    };
    let refresh = refresh_node_addresses(Arc::clone(&config.endpoints), args.node_ip.clone());
    let mut registry = Registry::default();
    let role = GatewayRole::start(
        feed,
        Arc::clone(&identity),
        root,
        args.listen,
        config,
        &mut registry,
    )
    .await?;
    let renew = keep_renewed(Arc::clone(&identity), args.cert_lifetime);
    if let Some(t) = &telemetry {
        t.ready(registry);
    }
    let hbone = role.addr;
    info!(
        cluster = %cluster.name,
        identity = %identity.spiffe_id(),
        hbone = %hbone,
        metrics = %Telemetry::addr_of(telemetry.as_ref()),
        "gateway running: HBONE (mutual TLS, HTTP/2 CONNECT) on {hbone}"
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
