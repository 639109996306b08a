//! What a peer may claim (P2, P3), judged by this cluster's own objects,
//! never by what the peer declares about itself.
//!
//! A peer says which segment it is in and which hostnames its services
//! have. Both are checked here against local truth: the remote-peer
//! Gateway's pin (`admin.solo.io/segment`, P3) and this cluster's own
//! Segment definitions (P2). A peer that fails the segment checks
//! contributes nothing; a service whose hostname is not the one the local
//! definition gives is left out on its own.

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, ObjectRef, Rule, Severity};
use crate::export::{Export, ExportedService};
use crate::labels;
use crate::links::{PeerLink, segment_display};
use crate::segments::{self, SegmentDef};

/// Condition reason of a peer whose segment contradicts its link's pin.
pub const REASON_SEGMENT_PIN_MISMATCH: &str = "SegmentPinMismatch";
/// Condition reason of a peer that claims a segment this cluster does not define.
pub const REASON_SEGMENT_NOT_DEFINED: &str = "SegmentNotDefined";
/// Condition reason of services whose hostnames are outside the peer's zone.
pub const REASON_HOSTNAME_REFUSED: &str = "HostnameRefused";

/// At most this many refused hostnames are named in one message.
const NAMED: usize = 5;

/// What this cluster refused of a peer's export, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRefusal {
    /// The peer cluster.
    pub cluster: String,
    /// The rule that refused it (P2 or P3).
    pub rule: Rule,
    /// A condition reason: [`REASON_SEGMENT_PIN_MISMATCH`],
    /// [`REASON_SEGMENT_NOT_DEFINED`] or [`REASON_HOSTNAME_REFUSED`].
    pub reason: String,
    pub message: String,
    /// The whole export is refused (else only `services`).
    pub whole: bool,
    /// Refused services as `<namespace>/<name>`, when not `whole`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

impl PeerRefusal {
    fn diagnostic(&self, viewer: &str) -> Diagnostic {
        Diagnostic::new(
            viewer,
            self.rule,
            Severity::Error,
            ObjectRef::cluster(&self.cluster),
            self.message.clone(),
        )
    }
}

/// The local Segment definition under which `exp`'s hostnames are read,
/// (`None`: the default segment), or why the whole export is refused.
pub(crate) fn judge_peer<'a>(
    local_segments: &'a [SegmentDef],
    link: &PeerLink,
    exp: &Export,
) -> Result<Option<&'a SegmentDef>, PeerRefusal> {
    let peer = &exp.cluster.name;
    let claimed = exp.cluster.segment.as_ref();
    let claimed_name = claimed.map(|s| s.name.as_str());
    if let Some(pin) = link.pinned_segment()
        && pin != claimed_name
    {
        return Err(PeerRefusal {
            cluster: peer.clone(),
            rule: Rule::P3,
            reason: REASON_SEGMENT_PIN_MISMATCH.to_owned(),
            message: format!(
                "cluster {peer} says it is in {}, but gateway {} pins it to {} (label {}); none of its services are imported",
                segment_display(claimed_name),
                link.gateway,
                segment_display(pin),
                labels::SEGMENT
            ),
            whole: true,
            services: Vec::new(),
        });
    }
    let Some(claimed) = claimed else {
        return Ok(None);
    };
    match local_segments.iter().find(|d| d.name == claimed.name) {
        Some(local) => Ok(Some(local)),
        None => {
            let defined: Vec<&str> = local_segments.iter().map(|d| d.name.as_str()).collect();
            Err(PeerRefusal {
                cluster: peer.clone(),
                rule: Rule::P2,
                reason: REASON_SEGMENT_NOT_DEFINED.to_owned(),
                message: format!(
                    "cluster {peer} says it is in segment {} (domain {}), which this cluster does not define (Segments in {}: {}); none of its services are imported; define the Segment here to accept them",
                    claimed.name,
                    claimed.domain,
                    labels::ISTIO_SYSTEM,
                    if defined.is_empty() {
                        "none".to_owned()
                    } else {
                        defined.join(", ")
                    }
                ),
                whole: true,
                services: Vec::new(),
            })
        }
    }
}

/// Whether a peer's service carries the hostname this cluster gives it:
/// `<name>.<namespace>.<domain of the local Segment>` (P2).
pub(crate) fn hostname_allowed(svc: &ExportedService, local: Option<&SegmentDef>) -> bool {
    svc.hostname == segments::hostname(&svc.name, &svc.namespace, local)
}

/// The refusal of the services of `peer` whose hostnames are not allowed.
pub(crate) fn refuse_hostnames(
    peer: &str,
    local: Option<&SegmentDef>,
    refused: &[&ExportedService],
) -> Option<PeerRefusal> {
    if refused.is_empty() {
        return None;
    }
    let named: Vec<String> = refused
        .iter()
        .take(NAMED)
        .map(|s| {
            format!(
                "{}/{} as {} (expected {})",
                s.namespace,
                s.name,
                s.hostname,
                segments::hostname(&s.name, &s.namespace, local)
            )
        })
        .collect();
    let more = refused.len().saturating_sub(NAMED);
    let zone = local.map_or(labels::DEFAULT_DOMAIN, |d| d.domain.as_str());
    Some(PeerRefusal {
        cluster: peer.to_owned(),
        rule: Rule::P2,
        reason: REASON_HOSTNAME_REFUSED.to_owned(),
        message: format!(
            "{} service(s) of cluster {peer} are refused: their hostnames are not under {zone}, the domain this cluster gives {}: {}{}",
            refused.len(),
            segment_display(local.map(|d| d.name.as_str())),
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
        whole: false,
        services: refused
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect(),
    })
}

/// Records a refusal as a diagnostic of the viewing cluster.
pub(crate) fn report(viewer: &str, refusal: &PeerRefusal, diags: &mut Vec<Diagnostic>) {
    diags.push(refusal.diagnostic(viewer));
}
