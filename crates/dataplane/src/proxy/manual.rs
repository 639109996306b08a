//! Connections to a user-written ServiceEntry's endpoints (D4).

use std::net::{IpAddr, SocketAddr};

use meshpeer_model::{ManualEndpoint, ManualEntry, PeerLink, ServicePort};

use super::dial::{DialError, connect_dest, refusal, refused};
use super::{Chosen, Ctx, NoDest, Stream, meta};
use crate::pick::Dest;
use crate::state::DataplaneState;

/// A user-written entry (D4): its endpoints, reached directly when they are
/// in this network, or over HBONE to a peer's gateway (an endpoint whose
/// address is a linked gateway's, or whose network is a linked peer's).
pub(super) async fn connect_manual(
    ctx: &Ctx,
    state: &DataplaneState,
    m: &ManualEntry,
    port: u16,
    peer: SocketAddr,
) -> Result<(Box<dyn Stream>, Chosen), NoDest> {
    let sp = m
        .ports
        .iter()
        .find(|p| p.number == port)
        .ok_or("the entry no longer has this port")?;
    let host = m.hosts.first().cloned().unwrap_or_default();
    let meta = meta(
        &state.feed.catalog.cluster.name,
        &state.locality,
        Some(peer),
    );
    let mut errors = Vec::new();
    let mut refused = Vec::new();
    let mut order: Vec<&ManualEndpoint> = m.endpoints.iter().collect();
    fastrand::shuffle(&mut order);
    for (i, e) in order.into_iter().enumerate() {
        if i == ctx.config.max_attempts {
            break;
        }
        let dialled = match manual_dest(ctx, state, m, sp, e, &host).await {
            Ok(dest) => match connect_dest(ctx, state, &dest, &meta).await {
                Ok(s) => {
                    return Ok((
                        s,
                        Chosen {
                            dest: e.address.clone(),
                            cluster: dest.cluster().to_owned(),
                            attempts: i + 1,
                            refused,
                        },
                    ));
                }
                Err(err) => err,
            },
            Err(err) => err,
        };
        match dialled {
            DialError::Refused(r) => {
                errors.push(r.clone());
                refused.push(r);
            }
            DialError::Failed(f) => errors.push(f),
        }
    }
    Err(NoDest {
        why: format!("no endpoint of {host} answered: {}", errors.join("; ")),
        refused,
    })
}

/// Where one endpoint of a manual entry is reached. An address that names
/// a linked gateway is trusted (this cluster's own remote-peer Gateway says
/// it); any other is the entry author's, resolved once here and checked by
/// the endpoint policy before it is dialled (P5).
async fn manual_dest(
    ctx: &Ctx,
    state: &DataplaneState,
    m: &ManualEntry,
    sp: &ServicePort,
    e: &ManualEndpoint,
    host: &str,
) -> Result<Dest, DialError> {
    // A linked gateway at this address; when several peers' gateways
    // share it (one host, several ports), the one on the endpoint's port.
    let at_address: Vec<&PeerLink> = state
        .links
        .values()
        .filter(|l| l.addresses.iter().any(|a| a.value == e.address))
        .collect();
    let on_port = at_address
        .iter()
        .find(|l| l.hbone_port == e.target(sp))
        .copied();
    let only = match at_address.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let gateway = |l: &PeerLink, address: String| Dest::Gateway {
        cluster: l.cluster.clone(),
        gateways: vec![(address, l.hbone_port)],
        trust_domain: l.trust_domain.clone(),
        authority: format!("{host}:{}", sp.number),
    };
    if let Some(l) = on_port.or(only) {
        return Ok(gateway(l, e.address.clone()));
    }
    let own_network = &state.feed.catalog.cluster.network;
    let via = e
        .network
        .as_deref()
        .filter(|n| *n != own_network)
        .and_then(|n| state.link_by_network(n));
    let target = via.map_or_else(|| e.target(sp), |l| l.hbone_port);
    let addr = resolve(ctx, state, &e.address, target).await?;
    match via {
        Some(l) => match refusal(ctx, state, addr) {
            Some(why) => Err(DialError::Refused(refused(ctx, addr, why))),
            None => Ok(gateway(l, addr.ip().to_string())),
        },
        // Checked by connect_dest, as every direct dial.
        None => Ok(Dest::Direct {
            addr,
            cluster: state.feed.catalog.cluster.name.clone(),
            name: m.name.to_string(),
        }),
    }
}

/// An endpoint's address and port; a name is resolved, and the first of its
/// addresses the endpoint policy allows is used (else the first, which the
/// policy then refuses and counts).
async fn resolve(
    ctx: &Ctx,
    state: &DataplaneState,
    address: &str,
    port: u16,
) -> Result<SocketAddr, DialError> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs = super::dial::lookup(ctx, address, port)
        .await
        .map_err(DialError::Failed)?;
    addrs
        .iter()
        .find(|a| refusal(ctx, state, **a).is_none())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| DialError::Failed(format!("cannot resolve {address}: no address")))
}
