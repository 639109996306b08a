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
    Signals, Telemetry, check_free, controller_link, follower, init_logging, obtain_identity,
    report_config, runtime, wait_or_stop,
};
use crate::cli::GatewayArgs;

pub(crate) fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    runtime()?.block_on(run_async(args))
}

async fn run_async(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    let link = controller_link(&args.conn, meshpeer::dataplane::GATEWAY_IDENTITY)?;
    // Fail now, not once the controller answers, when the port is taken.
    check_free(args.listen, "HBONE", false).await?;
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
        follower("gateway", args.metrics),
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

    let config = GatewayConfig {
        endpoints: endpoint_policy(args.allow_endpoints.clone(), &args.node_ip),
        listener: args.listener.limits(args.max_connections),
        ambient_inbound_port: args.ambient_inbound_port,
        ..GatewayConfig::default()
    };
    let refresh = refresh_node_addresses(Arc::clone(&config.endpoints), args.node_ip.clone());
    let mut registry = Registry::default();
    let mut role = GatewayRole::start(
        feed,
        Arc::clone(&identity),
        root,
        args.listen,
        config,
        &mut registry,
    )
    .await?;
    let who = follower("gateway", args.metrics);
    if let Some(report) = report_config(&link, &identity, &who, args.conn.report_interval)? {
        role.report_to(report);
    }
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
