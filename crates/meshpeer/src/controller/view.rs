//! What a controller shows of itself: its catalog and its status. Served as
//! JSON by the local API and printed by `meshpeer status`.

use meshpeer_identity::VerifiedPeer;
use std::sync::Arc;
use std::time::SystemTime;

use meshpeer_model::objects::Condition;
use meshpeer_model::{ClusterInfo, Diagnostic, GlobalCatalog};
use meshpeer_peering::PeeringService;
use serde::{Deserialize, Serialize};

/// The latest catalog and status, replaced as a whole on every change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct View {
    /// Increases with every published change.
    pub version: u64,
    pub catalog: Arc<GlobalCatalog>,
    pub status: Status,
}

/// A controller's status (SPEC O5).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub cluster: ClusterInfo,
    /// Address the peering server listens on.
    pub peering_address: String,
    /// Version of this cluster's export sent to peers.
    pub export_version: u64,
    /// Services this cluster exports.
    pub exported_services: usize,
    /// Global services visible here that another cluster contributes to.
    pub imported_services: usize,
    /// Global services visible here.
    pub global_services: usize,
    /// Linked peers (this cluster learns from them).
    pub peers: Vec<PeerView>,
    /// Peers that learn from this cluster.
    pub served: Vec<ServedView>,
    /// Recent connections refused before reaching the peering service.
    pub refused: Vec<RefusedView>,
    /// The last output write, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_error: Option<String>,
    /// Output entries kept as they were at start until the peers that
    /// contribute to them sync again (or the grace period ends).
    #[serde(default)]
    pub output_held: usize,
    /// The catalog's findings (shared with it: a status is published on
    /// every change, and copying every finding each time would make a
    /// batch cost what the findings number).
    pub diagnostics: Findings,
    /// What the last recomputation cost (SPEC I1).
    #[serde(default)]
    pub recompute: RecomputeStats,
}

/// The findings of a catalog, held with it; written and read as their
/// list.
#[derive(Clone, Debug, Default)]
pub struct Findings(Arc<GlobalCatalog>);

impl Findings {
    pub fn of(catalog: &Arc<GlobalCatalog>) -> Findings {
        Findings(Arc::clone(catalog))
    }
}

impl std::ops::Deref for Findings {
    type Target = [Diagnostic];

    fn deref(&self) -> &[Diagnostic] {
        &self.0.diagnostics
    }
}

impl Serialize for Findings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.diagnostics.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Findings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Findings, D::Error> {
        let diagnostics = Vec::<Diagnostic>::deserialize(d)?;
        Ok(Findings(Arc::new(GlobalCatalog {
            diagnostics,
            ..GlobalCatalog::default()
        })))
    }
}

/// What one recomputation of the export and catalog touched (SPEC I1: it
/// follows the change, not the mesh).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecomputeStats {
    /// Services whose export was recomputed.
    pub exported: usize,
    /// Global services merged again.
    pub merged: usize,
    /// Hostnames whose global service changed.
    pub hostnames: usize,
    /// Everything was recomputed (identity, Segments or links changed).
    pub full: bool,
    /// Seconds the export and catalog work took.
    pub seconds: f64,
}

/// Connection state of a link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LinkState {
    #[default]
    Connecting,
    Connected,
    Synced,
    Disconnected,
    Failed,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "Connecting",
            LinkState::Connected => "Connected",
            LinkState::Synced => "Synced",
            LinkState::Disconnected => "Disconnected",
            LinkState::Failed => "Failed",
        }
    }
}

/// A linked peer, as this cluster sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    pub cluster: String,
    /// `namespace/name` of the remote-peer Gateway.
    pub gateway: String,
    pub network: String,
    /// Where the peer is dialled (addresses of its east-west gateway).
    pub addresses: Vec<String>,
    pub state: LinkState,
    /// The peer address of the current stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_since: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<SystemTime>,
    /// Version of the peer's export last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The export is kept from a lost stream, until `stale_until`.
    pub stale: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_until: Option<SystemTime>,
    /// Services the peer exports to this cluster (those taken).
    pub services: usize,
    /// Resources of the peer refused on their own (SPEC B1, B2): how many,
    /// and the first few as `<resource>: <reason>: <why>`.
    #[serde(default)]
    pub refused: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_resources: Vec<String>,
    /// Why the last attempt or stream failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The conditions written on the remote-peer Gateway (SPEC C5).
    pub conditions: Vec<Condition>,
}

/// A peer served by this cluster.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedView {
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    pub spiffe_id: String,
    /// This cluster links back to it (it holds a remote-peer Gateway for
    /// the peer's trust domain). An unlinked peer learns this cluster's
    /// services without this cluster learning its (C4, P1).
    #[serde(default)]
    pub linked: bool,
    pub remote: String,
    pub connected_since: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ack: Option<SystemTime>,
    pub resources: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Resources of ours the peer refused in the last delta it took (B1,
    /// B2), and the first few of them.
    #[serde(default)]
    pub refused: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_resources: Vec<String>,
}

/// A refused connection attempt.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedView {
    pub at: Option<SystemTime>,
    pub remote: String,
    pub reason: String,
    pub message: String,
}

impl ServedView {
    /// The peers a peering server serves right now.
    pub(crate) fn of(service: &PeeringService) -> Vec<ServedView> {
        let admission = service.admission();
        service
            .served()
            .into_iter()
            .map(|p| ServedView {
                linked: p.spiffe_id.parse().is_ok_and(|id| {
                    let peer = VerifiedPeer {
                        id,
                        cluster: p.cluster_binding.clone(),
                    };
                    admission.links_to(&peer, &p.cluster)
                }),
                cluster: p.cluster,
                segment: p.segment,
                spiffe_id: p.spiffe_id,
                remote: p.remote,
                connected_since: Some(p.connected_since),
                acked_version: p.acked_version,
                last_ack: p.last_ack,
                resources: p.resources,
                last_error: p.last_error,
                refused: p.refused,
                refused_resources: p.refused_resources,
            })
            .collect()
    }
}

impl RefusedView {
    /// The connections a peering server refused recently.
    pub(crate) fn of(service: &PeeringService) -> Vec<RefusedView> {
        service
            .refusals()
            .into_iter()
            .map(|r| RefusedView {
                at: Some(r.at),
                remote: r.remote,
                reason: r.reason.to_owned(),
                message: r.message,
            })
            .collect()
    }
}

#[cfg(test)]
mod findings_tests {
    use meshpeer_model::{ObjectRef, Rule, Severity};

    use super::*;

    /// I1 (cost follows the change): a status holds its catalog's findings,
    /// not a copy of them, and still writes and reads them as the list the
    /// API has always served.
    #[test]
    fn i1_a_status_shares_its_findings_with_the_catalog_and_writes_them_as_a_list() {
        let catalog = Arc::new(GlobalCatalog {
            diagnostics: vec![Diagnostic::new(
                "cluster1",
                Rule::G7,
                Severity::Warning,
                ObjectRef::new("service", Some("ns"), "svc"),
                "a finding",
            )],
            ..GlobalCatalog::default()
        });
        let status = Status {
            diagnostics: Findings::of(&catalog),
            ..Status::default()
        };
        assert!(std::ptr::eq(
            status.diagnostics.as_ptr(),
            catalog.diagnostics.as_ptr()
        ));
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["diagnostics"],
            serde_json::to_value(&catalog.diagnostics).unwrap()
        );
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(&*back.diagnostics, &catalog.diagnostics[..]);
    }
}
