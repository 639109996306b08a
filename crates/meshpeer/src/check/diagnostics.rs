//! Every model diagnostic about a cluster (SPEC sections 2-5, F1, F2), each
//! with the object it names and what to do about it.

use std::collections::BTreeSet;

use meshpeer_model::{Diagnostic, Rule, Severity, labels};

use super::facts::ClusterFacts;
use super::{Check, Item, Status, names};

/// What to do about a diagnostic. The message already names the value and
/// what is allowed; this says where to act.
pub(super) fn hint(d: &Diagnostic) -> String {
    let obj = &d.object;
    match d.rule {
        Rule::G1 | Rule::G2 | Rule::G3 | Rule::G4 | Rule::G5 => format!(
            "set label {} on {obj} to global, segment or cluster (or remove it)",
            labels::SERVICE_SCOPE
        ),
        Rule::K1 | Rule::K4 => format!(
            "set label {} on {obj} to true or false (or remove it)",
            labels::SERVICE_TAKEOVER
        ),
        Rule::K2 => format!(
            "give {obj} a scope ({}=global or segment), or remove its {} label",
            labels::SERVICE_SCOPE,
            labels::SERVICE_TAKEOVER
        ),
        Rule::K3 => format!(
            "remove {}=PreferNetwork from {obj} (taken-over services use PreferClose), or set PreferClose, PreferRegion or Any",
            labels::TRAFFIC_DISTRIBUTION
        ),
        Rule::T1 | Rule::T7 => format!(
            "annotate {obj} with {} PreferNetwork, PreferClose, PreferRegion or Any, the same in every cluster",
            labels::TRAFFIC_DISTRIBUTION
        ),
        Rule::G9 => format!(
            "give each port of {obj} the same name and protocol in every cluster that exports it"
        ),
        Rule::G7 | Rule::G8 | Rule::G10 | Rule::G11 | Rule::G12 | Rule::G6 => {
            format!("fix {obj} as the message says")
        }
        Rule::S1 | Rule::S3 | Rule::S4 | Rule::S5 | Rule::S6 | Rule::S7 => format!(
            "define the same Segments (name and spec.domain) in namespace {} of every cluster",
            labels::ISTIO_SYSTEM
        ),
        Rule::S2 => format!(
            "create the Segment in namespace {}, or correct label {} on namespace {}",
            labels::ISTIO_SYSTEM,
            labels::SEGMENT,
            labels::ISTIO_SYSTEM
        ),
        Rule::C1 | Rule::C3 if obj.kind == "cluster" => format!(
            "make the remote-peer Gateway for cluster {} carry its network (label {}) and trust domain (annotation {}); see the Network Configuration and Trust Domain Checks",
            obj.name,
            labels::NETWORK,
            labels::TRUST_DOMAIN
        ),
        Rule::C1 | Rule::C2 => format!(
            "make label {} agree on namespace {}, the east-west gateway and cluster.yaml",
            labels::NETWORK,
            labels::ISTIO_SYSTEM
        ),
        Rule::C3 | Rule::C4 | Rule::C5 | Rule::C6 => format!(
            "fix {obj}: a remote-peer Gateway istio-remote-peer-<cluster> with the peer's addresses, network and trust domain (meshpeer link writes one)"
        ),
        Rule::D4 | Rule::P4 => format!("fix the ServiceEntry {obj} as the message says"),
        Rule::P1 | Rule::P2 | Rule::P3 => format!(
            "check what {obj} claims against this cluster's own objects (Segments, remote-peer Gateways and their {} label) as the message says",
            labels::SEGMENT
        ),
        Rule::P5 | Rule::P6 | Rule::P7 | Rule::P8 => format!("fix {obj} as the message says"),
        Rule::B1 | Rule::B2 => {
            format!("fix {obj} in the cluster that sends it, as the message says")
        }
        Rule::L1 | Rule::L2 | Rule::L3 | Rule::L4 | Rule::L5 | Rule::L6 | Rule::L7 | Rule::L8 => {
            format!("fix the route {obj} as the message says")
        }
        Rule::F1 => format!("fix the manifest: {obj} cannot be read as written"),
        Rule::F2 => {
            "fix cluster.yaml (fields: name, network, region, zone, trustDomain)".to_owned()
        }
    }
}

fn status_of(s: Severity) -> Status {
    match s {
        Severity::Error => Status::Fail,
        Severity::Warning => Status::Warn,
        Severity::Info => Status::Info,
    }
}

/// The cluster's diagnostics: from its objects and the other clusters given
/// (as `render` computes them), and the live controller's.
pub(super) fn of(f: &ClusterFacts) -> BTreeSet<Diagnostic> {
    let mut all: BTreeSet<Diagnostic> = f.catalog.diagnostics.iter().cloned().collect();
    if let Some(s) = f.live.state() {
        all.extend(s.status.diagnostics.iter().cloned());
    }
    all
}

pub(super) fn check(f: &ClusterFacts) -> Check {
    let diags = of(f);
    let mut items = Vec::new();
    let mut detail = Vec::new();
    for d in &diags {
        let status = status_of(d.severity);
        let text = format!("[{}] {}: {}", d.rule, d.object, d.message);
        detail.push(match &d.field {
            Some(field) => format!("{d} (field {field})"),
            None => d.to_string(),
        });
        let item = Item::new(status, text);
        items.push(if status.is_problem() {
            item.with_fix(hint(d))
        } else {
            item
        });
    }
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .count();
    let notes = diags.len() - errors - warnings;
    let cluster = f.name.clone();
    let mut check = Check::from_items(Some(&cluster), names::DIAGNOSTICS, items, |_| String::new());
    if check.status == Status::Info {
        check.status = Status::Ok;
    }
    check.title = match (errors, warnings) {
        (0, 0) if notes == 0 => format!("no problems in cluster {cluster}'s input"),
        (0, 0) => format!("no problems in cluster {cluster}'s input ({notes} notes)"),
        (0, w) => format!("{} in cluster {cluster}'s input", plural(w, "warning")),
        (e, 0) => format!("{} in cluster {cluster}'s input", plural(e, "error")),
        (e, w) => format!(
            "{} and {} in cluster {cluster}'s input",
            plural(e, "error"),
            plural(w, "warning")
        ),
    };
    check.with_detail(detail)
}

/// `1 warning`, `2 warnings`.
pub(super) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
