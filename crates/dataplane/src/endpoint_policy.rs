//! Where the data plane may connect (P5).
//!
//! Endpoints come from other people's input: a tenant's ServiceEntry, a
//! peer's export, a Pod's status. The proxy runs in the node's network in
//! Kubernetes, so an endpoint at loopback, at the node's own addresses or at
//! link-local (the cloud metadata service) would let that input reach the
//! kubelet, node-local ports or cloud credentials. [`EndpointPolicy::check`]
//! is asked before every dial of an endpoint (the proxy's direct connects,
//! the gateway's connects to local endpoints); a refused address is never
//! dialled. Peers' east-west gateways are not checked: their addresses come
//! from this cluster's own remote-peer Gateways.
//!
//! Refused unless an operator allows a CIDR (`--allow-endpoints`):
//! loopback, link-local, multicast, unspecified, broadcast (and the
//! IPv4-mapped IPv6 forms of these), and the node's own addresses. The VIP
//! range is refused whatever is allowed: a connection from the proxy to a
//! VIP would come back to the proxy.
//!
//! Pure: addresses in, a verdict out; no sockets. [`node`] reads the node's
//! addresses from `/proc`.

pub mod node;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use meshpeer_model::Cidr;

/// Why an endpoint is not dialled. [`Refusal::as_str`] is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 169.254.0.0/16, fe80::/10: where cloud metadata services answer.
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 0.0.0.0/8, :: (Linux connects 0.0.0.0 to the local host).
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// In the cluster's VIP range: the connection would loop back into a
    /// proxy. No allowance opens it.
    VipRange,
    /// One of the node's own addresses (its interfaces, `--node-ip`).
    NodeAddress,
    /// An address and port the proxy itself listens on (a manual entry's
    /// address, a captured ClusterIP): the connection would loop. No
    /// allowance opens it.
    OwnListener,
}

impl Refusal {
    /// The metric label: `loopback`, `link_local`, `multicast`,
    /// `unspecified`, `broadcast`, `vip_range`, `node_address`, `own_listener`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Loopback => "loopback",
            Refusal::LinkLocal => "link_local",
            Refusal::Multicast => "multicast",
            Refusal::Unspecified => "unspecified",
            Refusal::Broadcast => "broadcast",
            Refusal::VipRange => "vip_range",
            Refusal::NodeAddress => "node_address",
            Refusal::OwnListener => "own_listener",
        }
    }

    /// Whether `--allow-endpoints` can open addresses refused for this reason.
    pub fn can_be_allowed(self) -> bool {
        !matches!(self, Refusal::VipRange | Refusal::OwnListener)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Refusal::Loopback => "a loopback address",
            Refusal::LinkLocal => "a link-local address (where cloud metadata services answer)",
            Refusal::Multicast => "a multicast address",
            Refusal::Unspecified => "an unspecified address",
            Refusal::Broadcast => "the broadcast address",
            Refusal::VipRange => "in the VIP range (it would loop back into a proxy)",
            Refusal::NodeAddress => "one of this node's own addresses",
            Refusal::OwnListener => "an address this proxy listens on (it would loop)",
        };
        f.write_str(what)?;
        if self.can_be_allowed() {
            f.write_str("; an operator may allow it with --allow-endpoints")?;
        }
        Ok(())
    }
}

/// What the data plane may dial: the operator's allowed CIDRs and the
/// node's addresses. Shared by the connections of a role; the node's
/// addresses may be replaced while it runs ([`EndpointPolicy::set_node_addresses`]).
#[derive(Debug, Default)]
pub struct EndpointPolicy {
    allow: Vec<Cidr>,
    node: RwLock<Arc<Vec<Cidr>>>,
}

impl EndpointPolicy {
    /// Refuses what P5 refuses, except inside `allow`; `node` are this
    /// node's addresses or local ranges.
    pub fn new(allow: Vec<Cidr>, node: Vec<Cidr>) -> Self {
        EndpointPolicy {
            allow,
            node: RwLock::new(Arc::new(dedup(node))),
        }
    }

    /// The CIDRs an operator allowed.
    pub fn allowed(&self) -> &[Cidr] {
        &self.allow
    }

    /// The node's addresses now.
    pub fn node_addresses(&self) -> Arc<Vec<Cidr>> {
        match self.node.read() {
            Ok(n) => Arc::clone(&n),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the node's addresses; says whether they changed.
    pub fn set_node_addresses(&self, node: Vec<Cidr>) -> bool {
        let node = dedup(node);
        let mut current = match self.node.write() {
            Ok(n) => n,
            Err(poisoned) => poisoned.into_inner(),
        };
        if **current == node {
            return false;
        }
        *current = Arc::new(node);
        true
    }

    /// Whether `addr` may be dialled, given the cluster's VIP range (from
    /// the catalog; `None` when the controller did not say).
    pub fn check(&self, addr: IpAddr, vip_range: Option<&Cidr>) -> Result<(), Refusal> {
        let canonical = addr.to_canonical();
        let forms = [addr, canonical];
        if let Some(range) = vip_range
            && forms.iter().any(|a| range.contains(*a))
        {
            return Err(Refusal::VipRange);
        }
        if self
            .allow
            .iter()
            .any(|c| forms.iter().any(|a| c.contains(*a)))
        {
            return Ok(());
        }
        if let Some(r) = special(canonical) {
            return Err(r);
        }
        if self
            .node_addresses()
            .iter()
            .any(|c| forms.iter().any(|a| c.contains(*a)))
        {
            return Err(Refusal::NodeAddress);
        }
        Ok(())
    }
}

fn dedup(mut cidrs: Vec<Cidr>) -> Vec<Cidr> {
    cidrs.sort_by_key(|c| (c.base(), c.prefix()));
    cidrs.dedup();
    cidrs
}

/// Addresses refused by their kind alone.
fn special(addr: IpAddr) -> Option<Refusal> {
    match addr {
        IpAddr::V4(a) => special_v4(a),
        IpAddr::V6(a) => special_v6(a),
    }
}

fn special_v4(a: Ipv4Addr) -> Option<Refusal> {
    if a.octets()[0] == 0 {
        Some(Refusal::Unspecified)
    } else if a.is_loopback() {
        Some(Refusal::Loopback)
    } else if a.is_link_local() {
        Some(Refusal::LinkLocal)
    } else if a.is_multicast() {
        Some(Refusal::Multicast)
    } else if a.is_broadcast() {
        Some(Refusal::Broadcast)
    } else {
        None
    }
}

fn special_v6(a: Ipv6Addr) -> Option<Refusal> {
    if a.is_unspecified() {
        Some(Refusal::Unspecified)
    } else if a.is_loopback() {
        Some(Refusal::Loopback)
    } else if a.is_unicast_link_local() {
        Some(Refusal::LinkLocal)
    } else if a.is_multicast() {
        Some(Refusal::Multicast)
    } else {
        None
    }
}

/// Parses `--allow-endpoints` values: a CIDR, or one address (`/32`, `/128`).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    if s.contains('/') {
        return s.parse::<Cidr>().map_err(|e| e.to_string());
    }
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is neither a CIDR (10.1.0.0/16) nor an IP address"))?;
    Cidr::new(ip, host_prefix(ip)).map_err(|e| e.to_string())
}

/// One address as a CIDR.
pub fn host_cidr(ip: IpAddr) -> Option<Cidr> {
    Cidr::new(ip, host_prefix(ip)).ok()
}

fn host_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Lets through one log line per address per interval, so that a client
/// hammering a refused endpoint is counted in full but logged rarely.
/// Remembers at most [`LogLimit::CAPACITY`] addresses.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    last: Mutex<HashMap<IpAddr, Instant>>,
}

impl LogLimit {
    pub const CAPACITY: usize = 1024;

    pub fn new(every: Duration) -> Self {
        LogLimit {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line about `addr` may be logged at `now` (and, if so,
    /// remembers it).
    pub fn allow(&self, addr: IpAddr, now: Instant) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        if let Some(t) = last.get(&addr)
            && now.saturating_duration_since(*t) < self.every
        {
            return false;
        }
        if last.len() >= Self::CAPACITY {
            let every = self.every;
            last.retain(|_, t| now.saturating_duration_since(*t) < every);
            if last.len() >= Self::CAPACITY {
                last.clear();
            }
        }
        last.insert(addr, now);
        true
    }
}

impl Default for LogLimit {
    /// One line per address per minute.
    fn default() -> Self {
        LogLimit::new(Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests;
