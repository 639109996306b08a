//! What the controller knows of each linked peer, and the conditions it
//! writes on the peer's remote-peer Gateway (SPEC C5).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use meshpeer_model::objects::Condition;
use meshpeer_model::{Export, PeerLink, PeerRefusal};
use meshpeer_peering::PeerEvent;
use meshpeer_peering::wire::Refusals;

use super::view::{LinkState, PeerView};

pub(crate) const ACCEPTED: &str = "Accepted";
pub(crate) const PROGRAMMED: &str = "Programmed";
pub(crate) const PEER_CONNECTED: &str = "gloo.solo.io/PeerConnected";
pub(crate) const PEERING_SUCCEEDED: &str = "gloo.solo.io/PeeringSucceeded";
pub(crate) const DATA_PLANE_PROGRAMMED: &str = "gloo.solo.io/PeerDataPlaneProgrammed";
/// `PeeringSucceeded` reason when some of the peer's resources are refused
/// on their own (B1, B2) and the rest applies.
pub(crate) const REASON_PARTIALLY_REFUSED: &str = "PartiallyRefused";

/// Refused resources named in a condition message and in status.
const NAMED_REFUSALS: usize = 5;
const LISTED_REFUSALS: usize = 20;

/// One linked peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerState {
    pub(crate) link: PeerLink,
    pub(crate) state: LinkState,
    pub(crate) remote: Option<String>,
    pub(crate) connected_since: Option<SystemTime>,
    pub(crate) last_sync: Option<SystemTime>,
    pub(crate) version: Option<u64>,
    /// The peer's export: current, or kept while stale.
    pub(crate) export: Option<Arc<Export>>,
    pub(crate) stale_until: Option<SystemTime>,
    pub(crate) last_error: Option<String>,
    /// The peer's resources refused on their own (B1, B2), as of its last
    /// delta applied.
    pub(crate) refusals: Refusals,
    /// Conditions as last computed, to keep transition times.
    pub(crate) conditions: Vec<Condition>,
}

impl PeerState {
    pub(crate) fn new(link: PeerLink) -> Self {
        PeerState {
            link,
            state: LinkState::Connecting,
            remote: None,
            connected_since: None,
            last_sync: None,
            version: None,
            export: None,
            stale_until: None,
            last_error: None,
            refusals: Refusals::default(),
            conditions: Vec::new(),
        }
    }

    /// A peer whose export is kept across an edit of its link (same
    /// cluster and trust domain): stale until `until`, reconnecting.
    pub(crate) fn kept(link: PeerLink, old: PeerState, until: SystemTime) -> Self {
        PeerState {
            state: LinkState::Connecting,
            remote: None,
            connected_since: None,
            stale_until: old.export.is_some().then_some(until),
            last_error: Some("the link was edited; reconnecting".into()),
            link,
            ..old
        }
    }

    /// `<resource>: <reason>: <why>` of the first `n` refused resources.
    fn refused_list(&self, n: usize) -> Vec<String> {
        self.refusals
            .named()
            .take(n)
            .map(ToString::to_string)
            .collect()
    }

    /// Applies an event; says whether the peer's export changed.
    pub(crate) fn on_event(&mut self, at: SystemTime, event: PeerEvent, grace: Duration) -> bool {
        match event {
            PeerEvent::Connecting { .. } => {
                if self.state != LinkState::Failed && self.state != LinkState::Disconnected {
                    self.state = LinkState::Connecting;
                }
                false
            }
            PeerEvent::ConnectFailed { message, .. } => {
                self.state = LinkState::Failed;
                self.remote = None;
                self.connected_since = None;
                self.last_error = Some(message);
                false
            }
            PeerEvent::Connected { remote } => {
                self.state = LinkState::Connected;
                self.remote = Some(remote);
                self.connected_since = Some(at);
                false
            }
            PeerEvent::Synced {
                export,
                version,
                refusals,
                ..
            } => {
                self.state = LinkState::Synced;
                self.last_sync = Some(at);
                self.version = Some(version);
                self.stale_until = None;
                self.last_error = None;
                self.refusals = refusals;
                let changed = self.export.as_ref() != Some(&export);
                self.export = Some(export);
                changed
            }
            PeerEvent::Rejected { version, error } => {
                self.last_error = Some(format!("rejected version {version}: {error}"));
                false
            }
            PeerEvent::Disconnected { reason, stale, .. } => {
                self.state = LinkState::Disconnected;
                self.remote = None;
                self.connected_since = None;
                self.last_error = Some(reason);
                if stale {
                    self.stale_until = Some(at + grace);
                }
                false
            }
            PeerEvent::Expired => {
                self.stale_until = None;
                self.refusals = Refusals::default();
                self.export.take().is_some()
            }
        }
    }

    pub(crate) fn stale(&self) -> bool {
        self.stale_until.is_some() && self.export.is_some()
    }

    pub(crate) fn view(&self) -> PeerView {
        PeerView {
            cluster: self.link.cluster.clone(),
            gateway: self.link.gateway.to_string(),
            network: self.link.network.clone(),
            addresses: self
                .link
                .addresses
                .iter()
                .map(|a| format!("{}:{}", a.value, self.link.xds_port))
                .collect(),
            state: self.state,
            remote: self.remote.clone(),
            connected_since: self.connected_since,
            last_sync: self.last_sync,
            version: self.version,
            stale: self.stale(),
            stale_until: self.stale_until,
            services: self.export.as_ref().map_or(0, |e| e.services.len()),
            refused: self.refusals.len(),
            refused_resources: self.refused_list(LISTED_REFUSALS),
            last_error: self.last_error.clone(),
            conditions: self.conditions.clone(),
        }
    }

    /// Recomputes the C5 conditions. `in_catalog`: the peer's current export
    /// is part of the catalog the output was last built from.
    pub(crate) fn update_conditions(
        &mut self,
        in_catalog: bool,
        generation: Option<i64>,
        now: SystemTime,
        refusal: Option<&PeerRefusal>,
    ) {
        let addresses: Vec<String> = self.view().addresses;
        let mut fresh = Vec::new();
        let mut push = |type_: &str, ok: bool, reason: &str, message: String| {
            fresh.push(Condition {
                type_: type_.to_owned(),
                status: if ok { "True" } else { "False" }.to_owned(),
                reason: Some(reason.to_owned()),
                message: Some(message),
                last_transition_time: None,
                observed_generation: generation,
            });
        };
        push(
            ACCEPTED,
            true,
            "Accepted",
            format!(
                "link to cluster {} (network {}, trust domain {})",
                self.link.cluster, self.link.network, self.link.trust_domain
            ),
        );
        if addresses.is_empty() {
            push(
                PROGRAMMED,
                false,
                "AddressNotUsable",
                "spec.addresses holds no usable address of the peer's east-west gateway".into(),
            );
        } else {
            push(
                PROGRAMMED,
                true,
                "Programmed",
                format!("peer control plane at {}", addresses.join(", ")),
            );
        }
        let error = self.last_error.clone().unwrap_or_default();
        match self.state {
            LinkState::Connected | LinkState::Synced => push(
                PEER_CONNECTED,
                true,
                "Connected",
                format!(
                    "connected to {}",
                    self.remote.as_deref().unwrap_or("the peer")
                ),
            ),
            LinkState::Connecting => push(
                PEER_CONNECTED,
                false,
                "Connecting",
                "connecting to the peer".into(),
            ),
            LinkState::Failed => push(PEER_CONNECTED, false, "ConnectFailed", error.clone()),
            LinkState::Disconnected => push(PEER_CONNECTED, false, "Disconnected", error.clone()),
        }
        match (self.state, self.stale(), refusal) {
            // P2, P3: what the peer claims contradicts this cluster's objects.
            (_, _, Some(r)) if r.whole => push(
                PEERING_SUCCEEDED,
                false,
                &r.reason,
                format!("[{}] {}", r.rule, r.message),
            ),
            (LinkState::Synced, _, _) if !self.refusals.is_empty() => {
                let named = self.refused_list(NAMED_REFUSALS);
                let more = self.refusals.len().saturating_sub(named.len());
                push(
                    PEERING_SUCCEEDED,
                    true,
                    REASON_PARTIALLY_REFUSED,
                    format!(
                        "version {} of the peer's export applied ({} services); {} of its resources refused on their own (SPEC B1, B2): {}{}",
                        self.version.unwrap_or(0),
                        self.export.as_ref().map_or(0, |e| e.services.len()),
                        self.refusals.len(),
                        named.join("; "),
                        if more > 0 {
                            format!("; and {more} more (meshpeer status)")
                        } else {
                            String::new()
                        }
                    ),
                )
            }
            (LinkState::Synced, _, _) => push(
                PEERING_SUCCEEDED,
                true,
                "Synced",
                format!(
                    "version {} of the peer's export applied ({} services)",
                    self.version.unwrap_or(0),
                    self.export.as_ref().map_or(0, |e| e.services.len())
                ),
            ),
            (_, true, _) => push(
                PEERING_SUCCEEDED,
                false,
                "Stale",
                format!(
                    "the peer's last export is kept until {} ({error})",
                    self.stale_until.map(rfc3339).unwrap_or_default()
                ),
            ),
            _ => push(
                PEERING_SUCCEEDED,
                false,
                "NotSynced",
                if error.is_empty() {
                    "the peer's state has not been received yet".into()
                } else {
                    error.clone()
                },
            ),
        }
        if let Some(r) = refusal.filter(|r| r.whole) {
            push(
                DATA_PLANE_PROGRAMMED,
                false,
                &r.reason,
                "none of the peer's services are imported (see PeeringSucceeded)".into(),
            );
        } else if in_catalog && self.export.is_some() {
            let total = self.export.as_ref().map_or(0, |e| e.services.len());
            match refusal {
                Some(r) => push(
                    DATA_PLANE_PROGRAMMED,
                    true,
                    "PartiallyProgrammed",
                    format!(
                        "{} of the peer's {total} services are in this cluster's catalog; [{}] {}",
                        total.saturating_sub(r.services.len()),
                        r.rule,
                        r.message
                    ),
                ),
                None => push(
                    DATA_PLANE_PROGRAMMED,
                    true,
                    "Programmed",
                    format!("the peer's {total} services are in this cluster's catalog"),
                ),
            }
        } else {
            push(
                DATA_PLANE_PROGRAMMED,
                false,
                "NotProgrammed",
                "the peer's services are not in this cluster's catalog".into(),
            );
        }
        // Keep transition times of conditions whose status did not change.
        let old: BTreeMap<&str, &Condition> = self
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c))
            .collect();
        for c in &mut fresh {
            c.last_transition_time = match old.get(c.type_.as_str()) {
                Some(o) if o.status == c.status => o.last_transition_time.clone(),
                _ => Some(rfc3339(now)),
            };
        }
        self.conditions = fresh;
    }
}

/// `2026-11-22T03:12:52Z`, as Kubernetes writes times.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    Timestamp::try_from(t)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}
