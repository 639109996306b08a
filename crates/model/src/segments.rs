//! Segments (S1, S2): named DNS domains that clusters join.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterSnapshot;
use crate::diag::{Diagnostic, ObjectRef, Rule, Severity};
use crate::labels;
use crate::objects::label;
use crate::validate;

/// A Segment as a cluster defines it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentDef {
    pub name: String,
    pub domain: String,
}

/// The usable Segment definitions of a cluster, sorted by name. Bad ones are
/// reported and left out (S1).
pub(crate) fn segment_defs(snap: &ClusterSnapshot, diags: &mut Vec<Diagnostic>) -> Vec<SegmentDef> {
    let cluster = &snap.config.name;
    let mut by_domain: BTreeMap<&str, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for (key, seg) in &snap.segments {
        let obj = ObjectRef::namespaced("segment", &key.namespace, &key.name);
        let mut report = |sev: Severity, msg: String| {
            diags.push(Diagnostic::new(cluster, Rule::S1, sev, obj.clone(), msg));
        };
        if key.namespace != labels::ISTIO_SYSTEM {
            report(
                Severity::Warning,
                format!(
                    "Segments are read only from namespace {}; this one (in {}) is ignored",
                    labels::ISTIO_SYSTEM,
                    key.namespace
                ),
            );
            continue;
        }
        if let Err(why) = validate::label_value(&key.name) {
            report(
                Severity::Error,
                format!(
                    "segment name {:?} cannot be used as the value of label {}: {why}; the segment is ignored",
                    key.name,
                    labels::SEGMENT
                ),
            );
            continue;
        }
        let domain = seg.spec.domain.trim_end_matches('.');
        if let Err(why) = validate::dns_domain(domain) {
            report(
                Severity::Error,
                format!(
                    "spec.domain {:?} is not a DNS domain: {why}; the segment is ignored",
                    seg.spec.domain
                ),
            );
            continue;
        }
        if domain == labels::DEFAULT_DOMAIN
            || domain == "cluster.local"
            || domain.ends_with(".cluster.local")
        {
            report(
                Severity::Error,
                format!(
                    "spec.domain {domain:?} is reserved ({} is the default segment's, cluster.local is Kubernetes'); the segment is ignored",
                    labels::DEFAULT_DOMAIN
                ),
            );
            continue;
        }
        if let Some(first) = by_domain.get(domain) {
            report(
                Severity::Error,
                format!(
                    "spec.domain {domain:?} is already the domain of segment {first}; two segments cannot share a domain; this one is ignored"
                ),
            );
            continue;
        }
        by_domain.insert(domain, &key.name);
        out.push(SegmentDef {
            name: key.name.clone(),
            domain: domain.to_owned(),
        });
    }
    out
}

/// The segment this cluster is in, from the `admin.solo.io/segment` label on
/// its `istio-system` namespace (S2). `None` is the default segment.
pub(crate) fn cluster_segment(
    snap: &ClusterSnapshot,
    defs: &[SegmentDef],
    diags: &mut Vec<Diagnostic>,
) -> Option<SegmentDef> {
    let ns = snap.namespaces.get(labels::ISTIO_SYSTEM)?;
    let wanted = label(&ns.metadata, labels::SEGMENT)?;
    if let Some(def) = defs.iter().find(|d| d.name == wanted) {
        return Some(def.clone());
    }
    let known: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
    diags.push(
        Diagnostic::new(
            &snap.config.name,
            Rule::S2,
            Severity::Warning,
            ObjectRef::namespace(labels::ISTIO_SYSTEM),
            format!(
                "label {}={wanted:?} names a Segment that does not exist in namespace {} (defined: {}); the cluster stays in the default segment ({})",
                labels::SEGMENT,
                labels::ISTIO_SYSTEM,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                },
                labels::DEFAULT_DOMAIN
            ),
        )
        .with_field(format!("metadata.labels[{}]", labels::SEGMENT)),
    );
    None
}

/// S1: the same Segment objects are expected in every peered cluster. Reports
/// names whose domains differ between `own` and a peer.
pub(crate) fn compare(
    viewer: &str,
    own: &[SegmentDef],
    peer: &str,
    theirs: &[SegmentDef],
    diags: &mut Vec<Diagnostic>,
) {
    for mine in own {
        if let Some(other) = theirs.iter().find(|t| t.name == mine.name)
            && other.domain != mine.domain
        {
            diags.push(Diagnostic::new(
                viewer,
                Rule::S1,
                Severity::Warning,
                ObjectRef::namespaced("segment", labels::ISTIO_SYSTEM, &mine.name),
                format!(
                    "segment {} has domain {} here but {} in cluster {peer}; define the same Segments in every cluster",
                    mine.name, mine.domain, other.domain
                ),
            ));
        }
    }
}

/// The global hostname of a service exported from a cluster in `segment` (G6, S3).
pub fn hostname(name: &str, namespace: &str, segment: Option<&SegmentDef>) -> String {
    let domain = segment.map_or(labels::DEFAULT_DOMAIN, |s| s.domain.as_str());
    format!("{name}.{namespace}.{domain}")
}
