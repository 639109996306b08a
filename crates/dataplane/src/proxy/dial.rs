//! One dial of one destination: the endpoint policy first (P5), then TCP,
//! or HBONE through a peer's gateway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::{Ctx, Stream};
use crate::endpoint_policy::Refusal;
use crate::hbone::TunnelMeta;
use crate::pick::Dest;
use crate::state::DataplaneState;

/// Why one destination was not reached.
pub(super) enum DialError {
    /// The endpoint policy refused the address: it was not dialled (P5).
    Refused(String),
    /// Dialled, and it failed.
    Failed(String),
}

/// Why the endpoint policy refuses `addr`, if it does: the policy (P5),
/// and the proxy's own listeners, which a connection must not loop into.
pub(super) fn refusal(ctx: &Ctx, state: &DataplaneState, addr: SocketAddr) -> Option<Refusal> {
    if state.listeners.contains_key(&addr) {
        return Some(Refusal::OwnListener);
    }
    ctx.config
        .endpoints
        .check(addr.ip(), state.feed.catalog.vip_range.as_ref())
        .err()
}

/// Counts and logs (at most once a minute per address) a refused endpoint;
/// the text for the access log.
pub(super) fn refused(ctx: &Ctx, addr: SocketAddr, why: Refusal) -> String {
    ctx.metrics.endpoint_refusal(why.as_str());
    if ctx.refusal_log.allow(addr.ip(), StdInstant::now()) {
        warn!(endpoint = %addr, reason = why.as_str(), "endpoint not dialled: {why}");
    } else {
        debug!(endpoint = %addr, reason = why.as_str(), "endpoint not dialled");
    }
    format!("{addr} not dialled: {}", why.as_str())
}

/// Resolves `host` with the system resolver, bounded: at most
/// `resolve_timeout`, and at most `max_lookups` in flight (a lookup keeps
/// its blocking thread until the resolver returns, so its permit is held
/// until then, not until the timeout).
pub(super) async fn lookup(ctx: &Ctx, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let Ok(permit) = Arc::clone(&ctx.lookups).try_acquire_owned() else {
        return Err(format!(
            "cannot resolve {host}: {} lookups already in flight",
            ctx.config.max_lookups
        ));
    };
    let name = host.to_owned();
    let task = tokio::spawn(async move {
        let found = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map(|a| a.collect::<Vec<_>>());
        drop(permit);
        found
    });
    let timeout = ctx.config.resolve_timeout;
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(Ok(addrs))) => Ok(addrs),
        Ok(Ok(Err(e))) => Err(format!("cannot resolve {host}: {e}")),
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Err(_) => Err(format!(
            "cannot resolve {host}: no answer within {timeout:?}"
        )),
    }
}

pub(super) async fn connect_dest(
    ctx: &Ctx,
    state: &DataplaneState,
    dest: &Dest,
    meta: &TunnelMeta,
) -> Result<Box<dyn Stream>, DialError> {
    let timeout = ctx.config.connect_timeout;
    match dest {
        Dest::Direct { addr, .. } => {
            if let Some(why) = refusal(ctx, state, *addr) {
                return Err(DialError::Refused(refused(ctx, *addr, why)));
            }
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Box::new(s))
                }
                Ok(Err(e)) => Err(DialError::Failed(format!("{addr}: {e}"))),
                Err(_) => Err(DialError::Failed(format!(
                    "{addr}: timed out after {timeout:?}"
                ))),
            }
        }
        Dest::Gateway {
            gateways,
            trust_domain,
            authority,
            cluster,
        } => {
            let mut last = format!("cluster {cluster} has no gateway address");
            for (host, port) in gateways {
                let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => vec![SocketAddr::new(ip, *port)],
                    Err(_) => match lookup(ctx, host, *port).await {
                        Ok(a) => a,
                        Err(e) => {
                            last = format!("gateway {host}: {e}");
                            continue;
                        }
                    },
                };
                // Bounded by the HBONE pool: reaching the gateway by its
                // connect timeout (the proxy's), its answer (it reaches an
                // endpoint first) by its answer timeout.
                for addr in addrs {
                    match ctx
                        .hbone
                        .connect_to_cluster(addr, trust_domain, cluster, authority, meta)
                        .await
                    {
                        Ok(t) => return Ok(Box::new(t)),
                        Err(e) => last = format!("gateway of {cluster} at {addr}: {e}"),
                    }
                }
            }
            Err(DialError::Failed(last))
        }
    }
}
