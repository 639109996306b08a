//! Checks of a cluster's running parts: its controller (through its API)
//! and the data plane following the controller's catalog.

use std::net::{IpAddr, SocketAddr};

use meshpeer_model::labels;
use meshpeer_model::links::listener_port;

use super::cluster::{eastwest, table};
use super::facts::{ClusterFacts, Live, LiveState, Origin};
use super::{Check, Item, Status, names};
use crate::api::age;

/// `meshpeer controller ...` for this cluster, for fix lines.
fn start_controller(f: &ClusterFacts, api: &str) -> String {
    match &f.origin {
        Origin::Folder(d) => format!(
            "meshpeer controller --cluster-dir {} --cacerts {} --api-listen {api}",
            d.display(),
            f.cacerts_hint()
        ),
        Origin::Context(c) => format!(
            "meshpeer controller --kubernetes --context {c} --cluster-name {} --cacerts {}",
            f.name,
            f.cacerts_hint()
        ),
    }
}

pub(super) fn controller(f: &ClusterFacts) -> Check {
    let cluster = Some(f.name.as_str());
    let s = match &f.live {
        Live::NotChecked(why) => {
            return Check::single(
                cluster,
                names::CONTROLLER,
                Status::Info,
                format!("not checked ({why})"),
            );
        }
        Live::NoAddress => {
            return Check::single(
                cluster,
                names::CONTROLLER,
                Status::Warn,
                "not checked: where does the controller listen? (no --controller, no runtime file)"
                    .to_owned(),
            )
            .with_fix(format!(
                "give --controller ADDR (the controller's --api-listen, default 127.0.0.1:15014) for cluster {}",
                f.name
            ));
        }
        Live::Down { addr, from, error } => {
            return Check::single(
                cluster,
                names::CONTROLLER,
                Status::Fail,
                format!("the controller at {addr} (from {from}) does not answer: {error}"),
            )
            .with_fix(format!("start it: {}", start_controller(f, addr)));
        }
        Live::Up(s) => s,
    };
    let st = &s.status;
    let mut items = Vec::new();
    if st.cluster.name != f.name {
        items.push(Item::fail(
            format!(
                "the controller at {} runs cluster {}, not {}",
                s.addr, st.cluster.name, f.name
            ),
            format!("give the API address of cluster {}'s controller", f.name),
        ));
    } else {
        items.push(Item::ok(format!(
            "controller at {} runs cluster {} (export version {}, peering on {})",
            s.addr, st.cluster.name, st.export_version, st.peering_address
        )));
    }
    if let Some(e) = &st.output_error {
        let fix = match &f.origin {
            Origin::Folder(d) => format!(
                "check that {}/.meshpeer/out can be written (space, permissions)",
                d.display()
            ),
            Origin::Context(_) => {
                "check the controller's RBAC: it applies ServiceEntries and Gateway status"
                    .to_owned()
            }
        };
        items.push(Item::fail(
            format!("its output cannot be written: {e}"),
            fix,
        ));
    }
    if let Some(item) = peering_mismatch(f, s) {
        items.push(item);
    }
    // Refusals are kept for a while; one line per reason, the latest message.
    let mut refused: std::collections::BTreeMap<
        &str,
        (usize, &crate::controller::view::RefusedView),
    > = std::collections::BTreeMap::new();
    for r in &st.refused {
        let e = refused.entry(r.reason.as_str()).or_insert((0, r));
        e.0 += 1;
        if r.at >= e.1.at {
            e.1 = r;
        }
    }
    for (reason, (n, r)) in refused {
        let fix = match reason {
            "unknown_root" | "refused_by_peer" => {
                "this cluster and the caller do not accept each other's certificates: issue every cluster's intermediate from one root (see Intermediate Certs Compatibility Check)"
            }
            "expired" => "the caller's certificate has expired: renew its cluster's intermediate",
            "wrong_trust_domain" => {
                "the caller's trust domain is not the one its link expects: check the gateway.istio.io/trust-domain annotations (see Trust Domain Check)"
            }
            "not_a_controller" => {
                "a certificate that is not a controller's tried to peer (a workload, proxy or gateway of another cluster): find who holds it; only spiffe://<td>/ns/istio-system/sa/meshpeer may peer (SPEC P1)"
            }
            "own_trust_domain" => {
                "something presenting this cluster's own trust domain tried to peer: two clusters share a trust domain, or a certificate of this cluster is used elsewhere"
            }
            "own_cluster" => {
                "a chain issued by this cluster's own intermediate tried to peer (clusters share a trust domain; the cluster binding of the intermediate says it is this one): a certificate of this cluster is used elsewhere, or a cluster's cacerts were copied"
            }
            "no_cluster_binding" => {
                "a peer of a trust domain several clusters share presented a chain whose intermediate carries no cluster binding: re-issue that cluster's intermediate with meshpeer certs cluster NAME --trust-domain TD (SPEC P6)"
            }
            "peer_not_allowed" => {
                "a cluster outside --allowed-peers tried to peer: add its trust domain (or, where clusters share one, its cluster name) to --allowed-peers if it should"
            }
            "segment_pin_mismatch" | "cluster_name_mismatch" => {
                "a linked cluster claims a segment or name its remote-peer Gateway here does not give it: fix the Gateway's admin.solo.io/segment label if it moved on purpose, else look at that cluster"
            }
            _ => "look at both controllers' logs",
        };
        let times = if n == 1 {
            "a peer connection".to_owned()
        } else {
            format!("{n} peer connections")
        };
        items.push(Item::warn(
            format!(
                "refused {times} ({reason}), last from {}: {}",
                r.remote, r.message
            ),
            fix,
        ));
    }
    let detail = vec![
        format!("Address: {} (from {})", s.addr, s.from),
        format!("Cluster: {}", st.cluster.name),
        format!("Peering: {}", st.peering_address),
        format!(
            "Exports {} (version {}); sees {}",
            super::diagnostics::plural(st.exported_services, "service"),
            st.export_version,
            super::diagnostics::plural(st.global_services, "global service")
        ),
        format!(
            "Serving: {}",
            if st.served.is_empty() {
                "no peer".to_owned()
            } else {
                st.served
                    .iter()
                    .map(|p| format!("{} ({})", p.cluster, p.spiffe_id))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    ];
    let ok = format!("controller at {} is running", s.addr);
    Check::from_items(cluster, names::CONTROLLER, items, |_| String::new())
        .retitle(&ok)
        .with_detail(detail)
}

/// The east-west Gateway says peers dial one address, the controller
/// listens on another (SPEC C2, C4).
fn peering_mismatch(f: &ClusterFacts, s: &LiveState) -> Option<Item> {
    let (key, gw) = eastwest(f).into_iter().next()?;
    let listening: SocketAddr = s.status.peering_address.parse().ok()?;
    let port = listener_port(gw, "xds-tls", labels::XDS_PORT);
    let ips: Vec<IpAddr> = gw
        .status
        .as_ref()?
        .addresses
        .iter()
        .filter_map(|a| a.value.parse().ok())
        .collect();
    let ip_ok = listening.ip().is_unspecified() || ips.is_empty() || ips.contains(&listening.ip());
    if ip_ok && listening.port() == port {
        return None;
    }
    let dialled = ips.first().map_or_else(
        || format!("port {port}"),
        |ip| SocketAddr::new(*ip, port).to_string(),
    );
    Some(Item::warn(
        format!(
            "peers dial {dialled} (east-west Gateway {key}) but the controller listens for them on {listening}"
        ),
        "start the controller without --peering-listen (it then listens on its Gateway's address and xds-tls port), or correct the Gateway",
    ))
}

pub(super) fn data_plane(f: &ClusterFacts) -> Check {
    let cluster = Some(f.name.as_str());
    let s = match &f.live {
        Live::Up(s) => s,
        Live::NotChecked(why) => {
            return Check::single(
                cluster,
                names::DATA_PLANE,
                Status::Info,
                format!("not checked ({why})"),
            );
        }
        Live::NoAddress | Live::Down { .. } => {
            return Check::single(
                cluster,
                names::DATA_PLANE,
                Status::Info,
                "not checked: the controller is not reachable".to_owned(),
            );
        }
    };
    let current = s.catalog.as_ref().ok().map(|c| c.version);
    let mut items = Vec::new();
    let mut rows = vec![
        ["ROLE", "NAME", "REMOTE", "CONNECTED", "VERSION", "HEALTH"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for d in &s.data_plane {
        let role = if d.role.is_empty() {
            "follower (role not said)"
        } else {
            d.role.as_str()
        };
        let who = if d.name.is_empty() {
            format!("{role} at {}", d.remote)
        } else {
            format!("{role} {}", d.name)
        };
        let since = d.since.map(age).unwrap_or_else(|| "-".to_owned());
        let following = match current {
            Some(v) if d.version < v => {
                format!("following catalog version {} (current {v})", d.version)
            }
            _ => format!("following catalog version {}", d.version),
        };
        let (item, health) = match &d.health {
            None => (
                Item::ok(format!("{who} connected ({following})")),
                "-".to_owned(),
            ),
            Some(h) => match s.health.get(h) {
                Some(Ok(())) => (
                    Item::ok(format!("{who} connected ({following}), healthy")),
                    "ok".to_owned(),
                ),
                Some(Err(e)) => (
                    Item::fail(
                        format!("{who} connected ({following}) but its /healthz at {h}: {e}"),
                        format!(
                            "look at the {role}'s log: its /healthz answers once it runs with the controller's catalog"
                        ),
                    ),
                    "failing".to_owned(),
                ),
                None => (
                    Item::ok(format!("{who} connected ({following})")),
                    "-".to_owned(),
                ),
            },
        };
        rows.push(vec![
            role.to_owned(),
            if d.name.is_empty() {
                "-".to_owned()
            } else {
                d.name.clone()
            },
            d.remote.clone(),
            since,
            d.version.to_string(),
            health,
        ]);
        items.push(item);
    }
    let unknown = s.data_plane.iter().filter(|d| d.role.is_empty()).count();
    for (role, what, start) in [
        (
            "gateway",
            "linked clusters cannot send to this cluster's services",
            format!(
                "meshpeer gateway --controller {} --root-cert {}/root-cert.pem --token-file TOKEN_FILE --trust-domain {} --listen {} --metrics ADDR",
                s.cluster.as_deref().unwrap_or("CONTROLLER:15013"),
                f.cacerts_hint(),
                f.export.cluster.trust_domain,
                hbone_listen(f)
            ),
        ),
        (
            "proxy",
            "this cluster's clients cannot resolve or reach global services",
            format!(
                "meshpeer proxy --controller {} --root-cert {}/root-cert.pem --token-file TOKEN_FILE --trust-domain {} --metrics ADDR",
                s.cluster.as_deref().unwrap_or("CONTROLLER:15013"),
                f.cacerts_hint(),
                f.export.cluster.trust_domain
            ),
        ),
    ] {
        if s.data_plane.iter().any(|d| d.role == role) {
            continue;
        }
        if unknown > 0 {
            items.push(Item::info(format!(
                "no follower says it is a {role} ({unknown} did not say their role)"
            )));
        } else {
            items.push(Item::warn(
                format!("no {role} follows the controller's catalog: {what}"),
                format!("start one: {start}"),
            ));
        }
    }
    Check::from_items(cluster, names::DATA_PLANE, items, |_| String::new())
        .retitle("gateway and proxy follow the catalog")
        .with_detail(table(&rows))
}

/// Where this cluster's gateway should listen: its east-west Gateway's
/// address and cross-network port.
fn hbone_listen(f: &ClusterFacts) -> String {
    let Some((_, gw)) = eastwest(f).into_iter().next() else {
        return format!("0.0.0.0:{}", labels::HBONE_PORT);
    };
    let port = listener_port(gw, "cross-network", labels::HBONE_PORT);
    let ip = gw
        .status
        .as_ref()
        .and_then(|s| s.addresses.first())
        .map_or("0.0.0.0", |a| a.value.as_str());
    format!("{ip}:{port}")
}
