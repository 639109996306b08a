//! The Peers Check: each remote-peer Gateway's link, judged from the peer
//! conditions of SPEC C5 (live from the controller, else from the Gateway's
//! status or the status files the controller wrote).

use meshpeer_model::labels;
use meshpeer_model::objects::Condition;
use meshpeer_model::{PeerLink, trust};

use super::cluster::title_of;
use super::facts::{ClusterFacts, Live, Origin};
use super::{Check, Item, Status, names};
use crate::controller::view::PeerView;

pub(super) const ACCEPTED: &str = "Accepted";
pub(super) const PROGRAMMED: &str = "Programmed";
pub(super) const PEER_CONNECTED: &str = "gloo.solo.io/PeerConnected";
pub(super) const PEERING_SUCCEEDED: &str = "gloo.solo.io/PeeringSucceeded";
pub(super) const DATA_PLANE_PROGRAMMED: &str = "gloo.solo.io/PeerDataPlaneProgrammed";
/// The peer conditions of SPEC C5, in the order the seed lists them.
const PEER_CONDITIONS: [&str; 5] = [
    ACCEPTED,
    PROGRAMMED,
    PEER_CONNECTED,
    PEERING_SUCCEEDED,
    DATA_PLANE_PROGRAMMED,
];

/// What is known of one link's state.
struct LinkFacts<'a> {
    conditions: Vec<Condition>,
    peer: Option<&'a PeerView>,
    /// Where the conditions come from, when not the live controller.
    source: Option<String>,
}

fn link_facts<'a>(f: &'a ClusterFacts, link: &PeerLink) -> Option<LinkFacts<'a>> {
    if let Some(s) = f.live.state() {
        let peer = s.status.peers.iter().find(|p| p.cluster == link.cluster)?;
        return Some(LinkFacts {
            conditions: peer.conditions.clone(),
            peer: Some(peer),
            source: None,
        });
    }
    let own = f
        .snapshot
        .gateways
        .get(&link.gateway)
        .and_then(|g| g.status.as_ref())
        .map(|s| s.conditions.clone())
        .filter(|c| c.iter().any(|c| c.type_ == PEER_CONNECTED));
    if let Some(conditions) = own {
        return Some(LinkFacts {
            conditions,
            peer: None,
            source: Some(format!("status of Gateway {}", link.gateway)),
        });
    }
    let written = f.written_status.get(&link.gateway)?;
    Some(LinkFacts {
        conditions: written.clone(),
        peer: None,
        source: Some("the status the controller last wrote".to_owned()),
    })
}

fn condition<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

fn is_true(conds: &[Condition], type_: &str) -> bool {
    condition(conds, type_).is_some_and(|c| c.status == "True")
}

fn why(c: Option<&Condition>) -> String {
    match c {
        Some(c) => {
            let reason = c.reason.as_deref().unwrap_or("False");
            match c.message.as_deref().filter(|m| !m.is_empty()) {
                Some(m) => format!("{reason}: {m}"),
                None => reason.to_owned(),
            }
        }
        None => "no such condition".to_owned(),
    }
}

/// What to do about a peer refused by this cluster's own objects (P2, P3).
fn refusal_fix(f: &ClusterFacts, link: &PeerLink, reason: &str) -> Option<String> {
    let peer = &link.cluster;
    match reason {
        trust::REASON_SEGMENT_PIN_MISMATCH => Some(format!(
            "{peer} is not in the segment gateway {} pins (label {}): if {peer} moved on purpose, update the label (or run meshpeer link again); if not, {peer} is misconfigured or compromised",
            link.gateway,
            labels::SEGMENT
        )),
        trust::REASON_SEGMENT_NOT_DEFINED => Some(format!(
            "define the same Segments (name and spec.domain) in namespace {} of {} as in {peer}, or move {peer} out of the segment",
            labels::ISTIO_SYSTEM,
            f.name
        )),
        _ => None,
    }
}

/// One link judged from its conditions (SPEC C5).
fn judge(f: &ClusterFacts, link: &PeerLink, via: &str, lf: &LinkFacts<'_>) -> Item {
    let conds = &lf.conditions;
    let peer = &link.cluster;
    let connected = condition(conds, PEER_CONNECTED);
    if !is_true(conds, PEER_CONNECTED) {
        let message = why(connected);
        let error = lf
            .peer
            .and_then(|p| p.last_error.clone())
            .unwrap_or_default();
        let text = format!("{message} {error}");
        let fix = if text.contains("root")
            || text.contains("UnknownCA")
            || text.contains("unknown_root")
        {
            format!(
                "{peer}'s certificates and {}'s do not come from one root: issue both intermediates from the shared root (see Intermediate Certs Compatibility Check), then restart the controllers",
                f.name
            )
        } else if text.contains("trust domain") {
            format!(
                "set annotation {} on gateway {} to {peer}'s trust domain",
                labels::TRUST_DOMAIN,
                link.gateway
            )
        } else {
            format!(
                "check that {peer}'s controller runs and listens on {via}:{} (its east-west Gateway's xds-tls port) and that nothing blocks it",
                link.xds_port
            )
        };
        return Item::fail(format!("Not connected to {peer} via {via}: {message}"), fix);
    }
    let synced = condition(conds, PEERING_SUCCEEDED);
    if let Some(c) = synced.filter(|c| c.status != "True")
        && let Some(fix) = refusal_fix(f, link, c.reason.as_deref().unwrap_or_default())
    {
        return Item::fail(
            format!(
                "Connected to {peer} via {via}, but its claims are refused: {}",
                why(Some(c))
            ),
            fix,
        );
    }
    if !is_true(conds, PEERING_SUCCEEDED) {
        return Item::fail(
            format!(
                "Connected to {peer} via {via}, but not synced: {}",
                why(condition(conds, PEERING_SUCCEEDED))
            ),
            format!(
                "look at the logs of {}'s and {peer}'s controllers (a rejected export says why)",
                f.name
            ),
        );
    }
    if !is_true(conds, DATA_PLANE_PROGRAMMED) {
        return Item::warn(
            format!(
                "Connected to {peer} via {via}, but its services are not programmed: {}",
                why(condition(conds, DATA_PLANE_PROGRAMMED))
            ),
            "see the Controller Check: the output may be failing",
        );
    }
    for t in [ACCEPTED, PROGRAMMED] {
        if !is_true(conds, t) {
            return Item::warn(
                format!(
                    "Connected to {peer} via {via}, but {t}: {}",
                    why(condition(conds, t))
                ),
                format!("fix gateway {} (spec.addresses)", link.gateway),
            );
        }
    }
    if lf.peer.is_some_and(|p| p.stale) {
        return Item::warn(
            format!("Connected to {peer} via {via}, but its services are stale"),
            "wait for the next sync, or look at the controllers' logs",
        );
    }
    Item::ok(format!("Connected to {peer} via {via}"))
}

pub(super) fn peers(f: &ClusterFacts, all: &[ClusterFacts]) -> Check {
    let cluster = Some(f.name.as_str());
    let links = &f.catalog.links;
    if links.is_empty() {
        let link = match &f.origin {
            Origin::Folder(_) => "meshpeer link DIR1 DIR2 (both ways) or --from DIR1 --to DIR2",
            Origin::Context(_) => {
                "create istio-remote-peer-<cluster> Gateways (meshpeer link --dry-run prints them)"
            }
        };
        return Check::single(
            cluster,
            names::PEERS,
            Status::Warn,
            format!(
                "no remote-peer Gateways: cluster {} is not linked to any cluster",
                f.name
            ),
        )
        .with_fix(format!("link it: {link}"));
    }
    let mut items = Vec::new();
    let mut detail = Vec::new();
    for link in links {
        let via = link
            .addresses
            .iter()
            .map(|a| a.value.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let via = if via.is_empty() {
            "(no address)".to_owned()
        } else {
            via
        };
        if !detail.is_empty() {
            detail.push(String::new());
        }
        detail.push(format!("Cluster: {}", link.cluster));
        detail.push("Addresses:".to_owned());
        detail.extend(link.addresses.iter().map(|a| format!("- {}", a.value)));
        let lf = link_facts(f, link);
        let item = match (&lf, &f.live) {
            (None, Live::Up(_)) => Item::warn(
                format!(
                    "the controller does not know the link to {} yet",
                    link.cluster
                ),
                "wait for it to read the folder, or look at its log",
            ),
            (None, _) => Item::warn(
                format!(
                    "no status for the link to {} (the controller is not reachable and wrote none)",
                    link.cluster
                ),
                "start the cluster's controller and check again",
            ),
            (Some(lf), live) => {
                let mut item = judge(f, link, &via, lf);
                if let Some(src) = &lf.source {
                    item.text.push_str(&format!(" (from {src})"));
                    if let Live::Down { .. } = live
                        && item.status == Status::Ok
                    {
                        item.status = Status::Warn;
                        item.fix = Some(
                            "the controller is not running: this is its last word; see the Controller Check"
                                .to_owned(),
                        );
                    }
                }
                item
            }
        };
        if let Some(lf) = &lf {
            detail.push("Conditions:".to_owned());
            for t in PEER_CONDITIONS {
                let st = condition(&lf.conditions, t).map_or("Unknown", |c| c.status.as_str());
                detail.push(format!("- {t}: {st}"));
            }
        }
        detail.push(format!(
            "Status: {}",
            if item.status == Status::Ok {
                "connected ✅"
            } else {
                "not connected ❌"
            }
        ));
        items.push(item);
        match all.iter().find(|o| o.name == link.cluster) {
            Some(other) if !other.catalog.links.iter().any(|l| l.cluster == f.name) => {
                items.push(Item::info(format!(
                    "{} does not link back to {}: a one-way link ({} learns nothing from {})",
                    link.cluster, f.name, link.cluster, f.name
                )));
            }
            Some(_) => {}
            None => items.push(Item::info(format!(
                "{} is not among the clusters checked",
                link.cluster
            ))),
        }
    }
    items.extend(unpinned(f, all));
    items.extend(unlinked_peers(f));
    let bad = items.iter().filter(|i| i.status == Status::Fail).count();
    let total = links.len();
    let check = Check::from_items(cluster, names::PEERS, items, |_| String::new());
    let title = match check.status {
        Status::Fail => format!("{bad} of {total} clusters not connected"),
        _ => title_of(&check.items, check.status, "all clusters connected"),
    };
    Check { title, ..check }.with_detail(detail)
}

/// P3: with segments in use (this cluster, or one of the clusters
/// checked, is in a named segment), a link whose Gateway does not pin the
/// peer's segment trusts whatever segment the peer claims.
fn unpinned(f: &ClusterFacts, all: &[ClusterFacts]) -> Vec<Item> {
    let in_use = std::iter::once(f)
        .chain(all)
        .any(|c| c.export.cluster.segment.is_some());
    if !in_use {
        return Vec::new();
    }
    f.catalog
        .links
        .iter()
        .filter(|l| l.segment.is_none())
        .map(|l| {
            Item::warn(
                format!(
                    "the link to {} does not pin its segment: {} trusts whatever segment {} claims, and sends it that segment's segment-scoped services",
                    l.cluster, f.name, l.cluster
                ),
                format!(
                    "label gateway {} with {}=<the segment {} is in> (empty for the default segment), or run meshpeer link again",
                    l.gateway,
                    labels::SEGMENT,
                    l.cluster
                ),
            )
        })
        .collect()
}

/// P1: peers connected to this cluster's peering server that this cluster
/// does not link to (C4, asymmetric): they learn its services.
fn unlinked_peers(f: &ClusterFacts) -> Vec<Item> {
    let Some(s) = f.live.state() else {
        return Vec::new();
    };
    s.status
        .served
        .iter()
        .filter(|p| !p.linked)
        .map(|p| {
            Item::info(format!(
                "{} ({}) is connected from {} and learns {}'s services, but {} does not link to it (a one-way link; --allowed-peers on the controller limits who may)",
                p.cluster, p.spiffe_id, p.remote, f.name, f.name
            ))
        })
        .collect()
}
