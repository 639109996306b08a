//! What a cluster offers its peers: its identity, its Segment definitions and
//! its exported services with their ready endpoints (G1-G7, G10, K1-K3, T1, T7).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service};
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterSnapshot;
use crate::diag::{self, Diagnostic, ObjectRef, Rule, Severity, quoted, suggest};
use crate::endpoints::{self, Endpoint, EndpointIndex, Locality, LocalityGroup, Source};
use crate::labels;
use crate::links;
use crate::objects::{NsName, annotation, label};
use crate::pmap::{ArcMap, Keyed};
use crate::ports::{self, ServicePort};
use crate::scope::{
    DISTRIBUTION_VALUES, SCOPE_VALUES, Scope, ScopeLabel, TAKEOVER_VALUES, TakeoverLabel,
    TrafficDistribution,
};
use crate::segments::{self, SegmentDef};
use crate::validate;

/// Who a cluster is, as its peers need to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    pub name: String,
    pub network: String,
    pub trust_domain: String,
    /// Default locality of the cluster's workloads.
    #[serde(default, skip_serializing_if = "Locality::is_empty")]
    pub locality: Locality,
    /// The segment the cluster is in; `None` is the default segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentDef>,
}

impl ClusterInfo {
    pub fn segment_name(&self) -> Option<&str> {
        self.segment.as_ref().map(|s| s.name.as_str())
    }
}

/// Everything a cluster offers its peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    pub cluster: ClusterInfo,
    /// The cluster's Segment definitions, sorted by name (for S1 checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentDef>,
    /// Exported services by (namespace, name).
    #[serde(default, with = "crate::pmap::as_seq")]
    pub services: ArcMap<NsName, ExportedService>,
    /// Findings about the cluster's own input. Not sent to peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
}

impl Export {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ExportedService>> {
        self.services.get(&NsName::new(namespace, name))
    }

    /// What a peer in segment `peer_segment` may see of this export (S7):
    /// `segment`-scoped services only go to clusters of the same segment.
    pub fn visible_to(&self, peer_segment: Option<&str>) -> Export {
        let same_segment = self.cluster.segment_name() == peer_segment;
        Export {
            cluster: self.cluster.clone(),
            segments: self.segments.clone(),
            services: if same_segment {
                self.services.clone()
            } else {
                self.services
                    .iter()
                    .filter(|(_, s)| s.scope == Scope::Global)
                    .map(|(k, s)| (k.clone(), Arc::clone(s)))
                    .collect()
            },
            diagnostics: Vec::new(),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One service a cluster exports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedService {
    pub namespace: String,
    pub name: String,
    /// `<name>.<namespace>.<domain of the exporter's segment>` (G6, S3).
    pub hostname: String,
    pub scope: Scope,
    /// The Service's explicit, valid `networking.istio.io/traffic-distribution`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<TrafficDistribution>,
    /// `solo.io/service-takeover=true` on the Service or its Namespace (K1).
    #[serde(default, skip_serializing_if = "is_false")]
    pub takeover: bool,
    /// TCP ports, sorted by number.
    pub ports: Vec<ServicePort>,
    /// Ready endpoints by locality, in locality order (G10).
    #[serde(default)]
    pub localities: Vec<LocalityGroup>,
    /// The Service's cluster IPs, captured under takeover (K1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
}

impl Keyed for ExportedService {
    type Key = NsName;
    fn key(&self) -> NsName {
        NsName::new(&self.namespace, &self.name)
    }
}

impl ExportedService {
    /// Endpoints grouped by locality, in locality order.
    pub fn locality_groups(&self) -> impl Iterator<Item = (&Locality, &[Endpoint])> {
        self.localities
            .iter()
            .map(|g| (&g.locality, g.endpoints.as_slice()))
    }

    /// Every ready endpoint with its locality.
    pub fn endpoints(&self) -> impl Iterator<Item = (&Locality, &Endpoint)> {
        self.localities
            .iter()
            .flat_map(|g| g.endpoints.iter().map(move |e| (&g.locality, e)))
    }

    pub fn endpoint_count(&self) -> usize {
        self.localities.iter().map(|g| g.endpoints.len()).sum()
    }
}

/// Computes what a cluster exports, from scratch. The incremental
/// [`crate::engine::ExportEngine`] computes the same, service by service.
pub fn exports(snap: &ClusterSnapshot) -> Export {
    let index = EndpointIndex::new(snap);
    let ClusterPart {
        cluster,
        segments,
        mut diagnostics,
    } = cluster_part(snap);
    let mut services = ArcMap::new();
    for (key, svc) in &snap.services {
        let part = service_part(snap, &index, &cluster, key, svc);
        diagnostics.extend(part.diagnostics);
        if let Some(s) = part.service {
            services.insert(key.clone(), s);
        }
    }
    let exporting: BTreeSet<&str> = services.keys().map(|k| k.namespace.as_str()).collect();
    for (name, ns) in &snap.namespaces {
        diagnostics.extend(namespace_diagnostics(
            &cluster.name,
            name,
            ns,
            exporting.contains(name.as_str()),
        ));
    }
    diag::normalize(&mut diagnostics);
    Export {
        cluster,
        segments,
        services,
        diagnostics,
    }
}

/// What of an export depends on the cluster as a whole: its identity, its
/// Segments, and the findings about its config, Segments and Gateways.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClusterPart {
    pub(crate) cluster: ClusterInfo,
    pub(crate) segments: Vec<SegmentDef>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

pub(crate) fn cluster_part(snap: &ClusterSnapshot) -> ClusterPart {
    let mut diags = snap.diagnostics.clone();
    let segments = segments::segment_defs(snap, &mut diags);
    let cluster = cluster_info(snap, &segments, &mut diags);
    links::eastwest_gateway(snap, &cluster.network, &mut diags);
    links::peer_links(snap, &cluster.network, &mut diags);
    ClusterPart {
        cluster,
        segments,
        diagnostics: diags,
    }
}

/// What one Service contributes to its cluster's export.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServicePart {
    pub(crate) service: Option<Arc<ExportedService>>,
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// Nodes whose labels the endpoints' localities were read from.
    pub(crate) nodes: BTreeSet<String>,
}

pub(crate) fn service_part(
    snap: &ClusterSnapshot,
    index: &EndpointIndex,
    cluster: &ClusterInfo,
    key: &NsName,
    svc: &Service,
) -> ServicePart {
    let mut cx = Exporter {
        snap,
        cluster,
        index,
        diags: Vec::new(),
        found: endpoints::Found::default(),
    };
    let service = cx.service(key, svc).map(Arc::new);
    ServicePart {
        service,
        diagnostics: cx.diags,
        nodes: cx.found.nodes,
    }
}

/// A Namespace's own findings: bad scope or takeover labels (G5, K1), and a
/// takeover label with no exported service under it (K2).
pub(crate) fn namespace_diagnostics(
    cluster: &str,
    name: &str,
    ns: &Namespace,
    exports_any: bool,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut report = |rule: Rule, msg: String| {
        let obj = ObjectRef::namespace(name);
        let field = if rule == Rule::G5 {
            scope_field()
        } else {
            takeover_field()
        };
        out.push(Diagnostic::new(cluster, rule, Severity::Warning, obj, msg).with_field(field));
    };
    if let Some(v) = label(&ns.metadata, labels::SERVICE_SCOPE)
        && let ScopeLabel::Invalid(bad) = ScopeLabel::parse(v)
    {
        report(
            Rule::G5,
            format!(
                "{}; services in this namespace without a scope label of their own are not exported",
                bad_value(labels::SERVICE_SCOPE, &bad, &SCOPE_VALUES)
            ),
        );
    }
    let takeover = label(&ns.metadata, labels::SERVICE_TAKEOVER).map(TakeoverLabel::parse);
    if let Some(TakeoverLabel::Invalid(bad)) = &takeover {
        report(
            Rule::K1,
            format!(
                "{}; takeover is off for services that do not set it themselves",
                bad_value(labels::SERVICE_TAKEOVER, bad, &TAKEOVER_VALUES)
            ),
        );
    }
    if takeover == Some(TakeoverLabel::On) && !exports_any {
        report(
            Rule::K2,
            format!(
                "label {}=true has no effect: no service in this namespace has a scope ({} on the namespace or the service); takeover needs a global or segment scope",
                labels::SERVICE_TAKEOVER,
                labels::SERVICE_SCOPE
            ),
        );
    }
    out
}

fn cluster_info(
    snap: &ClusterSnapshot,
    segments: &[SegmentDef],
    diags: &mut Vec<Diagnostic>,
) -> ClusterInfo {
    let cfg = &snap.config;
    let ns_label = snap
        .namespaces
        .get(labels::ISTIO_SYSTEM)
        .and_then(|ns| label(&ns.metadata, labels::NETWORK))
        .filter(|n| !n.is_empty());
    let network = match (ns_label, cfg.network.as_deref()) {
        (Some(l), Some(c)) if l != c => {
            diags.push(
                Diagnostic::new(
                    &cfg.name,
                    Rule::C1,
                    Severity::Warning,
                    ObjectRef::namespace(labels::ISTIO_SYSTEM),
                    format!(
                        "label {}={l:?} differs from the cluster config's network {c:?}; the namespace label is used",
                        labels::NETWORK
                    ),
                )
                .with_field(format!("metadata.labels[{}]", labels::NETWORK)),
            );
            l.to_owned()
        }
        (Some(l), _) => l.to_owned(),
        (None, Some(c)) => c.to_owned(),
        (None, None) => cfg.name.clone(),
    };
    let segment = segments::cluster_segment(snap, segments, diags);
    ClusterInfo {
        name: cfg.name.clone(),
        network,
        trust_domain: cfg.trust_domain().to_owned(),
        locality: Locality {
            region: cfg.region.clone().unwrap_or_default(),
            zone: cfg.zone.clone().unwrap_or_default(),
            subzone: String::new(),
        },
        segment,
    }
}

struct Exporter<'a> {
    snap: &'a ClusterSnapshot,
    cluster: &'a ClusterInfo,
    index: &'a EndpointIndex,
    diags: Vec<Diagnostic>,
    found: endpoints::Found,
}

impl Exporter<'_> {
    fn report(&mut self, rule: Rule, sev: Severity, obj: ObjectRef, field: &str, msg: String) {
        let mut d = Diagnostic::new(&self.cluster.name, rule, sev, obj, msg);
        if !field.is_empty() {
            d = d.with_field(field);
        }
        self.diags.push(d);
    }

    fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.snap.namespaces.get(name)
    }

    fn service(&mut self, key: &NsName, svc: &Service) -> Option<ExportedService> {
        let obj = ObjectRef::service(&key.namespace, &key.name);
        let ns_meta = self.namespace(&key.namespace).map(|n| n.metadata.clone());
        let ns_meta = ns_meta.as_ref();

        // Scope: the Service's label wins over its Namespace's (G2, G3, G4).
        let svc_scope = label(&svc.metadata, labels::SERVICE_SCOPE).map(ScopeLabel::parse);
        let ns_scope = ns_meta
            .and_then(|m| label(m, labels::SERVICE_SCOPE))
            .map(ScopeLabel::parse);
        let scope = match (&svc_scope, &ns_scope) {
            (Some(ScopeLabel::Invalid(bad)), _) => {
                let bad = bad.clone();
                self.report(
                    Rule::G5,
                    Severity::Warning,
                    obj.clone(),
                    &scope_field(),
                    format!(
                        "{}; the service is not exported",
                        bad_value(labels::SERVICE_SCOPE, &bad, &SCOPE_VALUES)
                    ),
                );
                None
            }
            (Some(ScopeLabel::Exported(s)), _) => Some(*s),
            (Some(ScopeLabel::Cluster), _) => None,
            (None, Some(ScopeLabel::Exported(s))) => Some(*s),
            (None, _) => None,
        };

        // Takeover: the Service's label wins over its Namespace's (K1).
        let svc_takeover = label(&svc.metadata, labels::SERVICE_TAKEOVER).map(TakeoverLabel::parse);
        let ns_takeover = ns_meta
            .and_then(|m| label(m, labels::SERVICE_TAKEOVER))
            .map(TakeoverLabel::parse);
        let takeover = match (&svc_takeover, &ns_takeover) {
            (Some(TakeoverLabel::Invalid(bad)), _) => {
                let bad = bad.clone();
                self.report(
                    Rule::K1,
                    Severity::Warning,
                    obj.clone(),
                    &takeover_field(),
                    format!(
                        "{}; takeover is off",
                        bad_value(labels::SERVICE_TAKEOVER, &bad, &TAKEOVER_VALUES)
                    ),
                );
                false
            }
            (Some(t), _) => *t == TakeoverLabel::On,
            (None, Some(t)) => *t == TakeoverLabel::On,
            (None, None) => false,
        };

        let Some(scope) = scope else {
            if svc_takeover == Some(TakeoverLabel::On) {
                self.report(
                    Rule::K2,
                    Severity::Warning,
                    obj,
                    &takeover_field(),
                    format!(
                        "label {}=true has no effect: the service has no {} (global or segment), and takeover needs one",
                        labels::SERVICE_TAKEOVER,
                        labels::SERVICE_SCOPE
                    ),
                );
            } else if svc_takeover.is_none()
                && ns_takeover == Some(TakeoverLabel::On)
                && svc_scope.is_none()
            {
                // K2, per Service: the namespace's takeover label misses
                // every unscoped Service, whatever its siblings do. A Service
                // that opts out (scope `cluster`, takeover `false`) says so
                // itself and is not reported.
                self.report(
                    Rule::K2,
                    Severity::Warning,
                    obj,
                    &scope_field(),
                    format!(
                        "namespace {ns} is labelled {}=true, but this service has no {} (on itself or the namespace), so it is not taken over; label it global or segment, or {}=false to silence this",
                        labels::SERVICE_TAKEOVER,
                        labels::SERVICE_SCOPE,
                        labels::SERVICE_TAKEOVER,
                        ns = key.namespace,
                    ),
                );
            }
            return None;
        };

        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            self.report(
                Rule::G1,
                Severity::Warning,
                obj,
                "spec.type",
                "type ExternalName services have no endpoints of their own and cannot be exported"
                    .into(),
            );
            return None;
        }
        for part in [&key.name, &key.namespace] {
            if let Err(why) = validate::dns_label(part) {
                self.report(
                    Rule::G6,
                    Severity::Error,
                    obj,
                    "metadata.name",
                    format!(
                        "{part:?} cannot be part of a hostname: {why}; the service is not exported"
                    ),
                );
                return None;
            }
        }

        let (svc_ports, skipped) = ports::service_ports(svc);
        for s in skipped {
            self.report(
                Rule::G7,
                Severity::Warning,
                obj.clone(),
                "spec.ports",
                format!("port {} {}", s.number, s.reason),
            );
        }
        if svc_ports.is_empty() {
            self.report(
                Rule::G7,
                Severity::Warning,
                obj,
                "spec.ports",
                "the service has no TCP port; there is nothing to export".into(),
            );
            return None;
        }

        // Traffic distribution (T1, T7, K3).
        let mut distribution = None;
        if let Some(v) = annotation(&svc.metadata, labels::TRAFFIC_DISTRIBUTION) {
            match v.parse::<TrafficDistribution>() {
                Ok(d) => distribution = Some(d),
                Err(()) => {
                    let default = if takeover {
                        TrafficDistribution::PreferClose
                    } else {
                        TrafficDistribution::PreferNetwork
                    };
                    self.report(
                        Rule::T7,
                        Severity::Warning,
                        obj.clone(),
                        &format!("metadata.annotations[{}]", labels::TRAFFIC_DISTRIBUTION),
                        format!(
                            "{}; using the default {default}",
                            bad_value(labels::TRAFFIC_DISTRIBUTION, v, &DISTRIBUTION_VALUES)
                                .replacen("label", "annotation", 1)
                        ),
                    );
                }
            }
        }
        if takeover && distribution == Some(TrafficDistribution::PreferNetwork) {
            self.report(
                Rule::K3,
                Severity::Warning,
                obj.clone(),
                &format!("metadata.annotations[{}]", labels::TRAFFIC_DISTRIBUTION),
                format!(
                    "annotation {}=PreferNetwork is not allowed with {}=true: a taken-over name must reach every cluster; PreferClose is used",
                    labels::TRAFFIC_DISTRIBUTION,
                    labels::SERVICE_TAKEOVER
                ),
            );
        }

        let (localities, source) = endpoints::ready_endpoints(
            self.snap,
            self.index,
            key,
            svc,
            &svc_ports,
            &self.cluster.locality,
            &mut self.found,
        );
        // G10: Pods that do not declare a port's named targetPort are left
        // out of that port, as Kubernetes leaves them out of its endpoints.
        let unresolved = std::mem::take(&mut self.found.unresolved);
        for (port, (number, target, pods)) in unresolved {
            const NAMED: usize = 3;
            let more = pods.len().saturating_sub(NAMED);
            self.report(
                Rule::G10,
                Severity::Warning,
                obj.clone(),
                "spec.ports",
                format!(
                    "port {port} ({number}) targets the container port named {target:?}, which {} {} not declare; {} left out of port {number}'s endpoints",
                    pods.iter()
                        .take(NAMED)
                        .map(|p| format!("pod {}/{p}", key.namespace))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + &if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        },
                    if pods.len() == 1 { "does" } else { "do" },
                    if pods.len() == 1 { "it is" } else { "they are" }
                ),
            );
        }
        if source == Source::None {
            self.report(
                Rule::G10,
                Severity::Info,
                obj.clone(),
                "spec.selector",
                "the service has no selector and no EndpointSlice, so it has no local endpoints"
                    .into(),
            );
        }

        let hostname = segments::hostname(&key.name, &key.namespace, self.cluster.segment.as_ref());
        let cluster_ips = spec
            .map(|s| {
                let mut ips: Vec<&String> = s.cluster_ips.iter().flatten().collect();
                if ips.is_empty()
                    && let Some(ip) = &s.cluster_ip
                {
                    ips.push(ip);
                }
                ips.into_iter()
                    .filter_map(|ip| ip.parse::<IpAddr>().ok())
                    .collect()
            })
            .unwrap_or_default();
        Some(ExportedService {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            hostname,
            scope,
            traffic_distribution: distribution,
            takeover,
            ports: svc_ports.iter().map(ServicePort::wire).collect(),
            localities,
            cluster_ips,
        })
    }
}

fn scope_field() -> String {
    format!("metadata.labels[{}]", labels::SERVICE_SCOPE)
}

fn takeover_field() -> String {
    format!("metadata.labels[{}]", labels::SERVICE_TAKEOVER)
}

/// `label solo.io/service-scope has value "Global", which is not allowed;
/// allowed values: global, segment, cluster (did you mean "global"?)`
fn bad_value(key: &str, value: &str, allowed: &[&str]) -> String {
    let mut s = format!(
        "label {key} has value {}, which is not allowed; allowed values: {}",
        quoted(value),
        allowed.join(", ")
    );
    if let Some(hint) = suggest(value, allowed) {
        s.push_str(&format!(" (did you mean {}?)", quoted(hint)));
    }
    s
}
