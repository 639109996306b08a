//! L7 routes (SPEC section 11): this cluster's `HTTPRoute`s, checked and
//! compiled into one [`RouteTable`] per frontend (a global hostname, or a
//! manual entry's host, and an HTTP port), with a status per parentRef
//! (L7). Routes never travel to peers (L1): each cluster routes its own
//! clients, so they are compiled from the own snapshot against the view.
//!
//! The data plane only executes a table: matching, weights and filters
//! happen there; everything that can be decided from the objects (which
//! frontends a route attaches to, which backends resolve, the order of the
//! rules) is decided here.

mod matching;

pub use matching::{CompiledTable, Request, RequestParts, prefix_matches};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, ObjectRef, Rule, Severity};
use crate::export::Export;
use crate::objects::{
    BackendRef, Condition, HeaderModifier, HttpBackendRef, HttpRoute, HttpRouteFilter,
    HttpRouteMatch, NsName, ParentRef, PathModifier, RouteParentStatus,
};
use crate::pmap::ArcMap;
use crate::{ClusterSnapshot, GlobalService};

/// The `controllerName` of the route status meshpeer writes (L7).
pub const CONTROLLER_NAME: &str = "meshpeer.io/mesh-controller";

/// Retries on connect failure, refused stream and 503, as Istio (L5).
pub const DEFAULT_RETRIES: u32 = 2;

/// Every route attached to one frontend, its rules in the order the data
/// plane tries them (L3): the first rule whose match holds serves the
/// request; none: 404.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTable {
    /// The name clients call (a global hostname or a manual entry's host).
    pub host: String,
    pub port: u16,
    pub rules: Vec<RouteRule>,
}

/// One match of one rule of one route, with what the rule does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// The route, `namespace/name`.
    pub route: String,
    /// Index of the rule in `spec.rules`.
    pub rule: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    /// Where requests go, by weight. Empty (no backendRefs, or every
    /// weight 0) and no redirect: 500.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<RouteBackend>,
    #[serde(default, skip_serializing_if = "RouteTimeouts::is_empty")]
    pub timeouts: RouteTimeouts,
    /// Retries after the first attempt (L5).
    pub retries: u32,
}

/// What a request must look like (L3). Every part must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    pub path: PathMatch,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Element-wise: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    PathPrefix(String),
    RegularExpression(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::PathPrefix("/".into())
    }
}

/// A header (name compared case-insensitively) or query parameter (name
/// compared exactly) match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    pub name: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub regex: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RouteFilter {
    RequestHeaderModifier(HeaderEdit),
    ResponseHeaderModifier(HeaderEdit),
    RequestRedirect(Redirect),
    #[serde(rename = "urlRewrite")]
    UrlRewrite(Rewrite),
    RequestMirror(Mirror),
}

/// Headers to set (replace), add (append) and remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderEdit {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathEdit>,
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathEdit>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathEdit {
    ReplaceFullPath(String),
    /// Replaces the part the rule's `PathPrefix` matched.
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub target: BackendTarget,
    /// Share of requests mirrored, 0-100.
    pub percent: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteBackend {
    pub target: BackendTarget,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
}

/// Where a backendRef leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum BackendTarget {
    /// A global service visible here: the proxy picks its endpoint with the
    /// T-rules, failing over across clusters (L2).
    Global { hostname: String, port: u16 },
    /// A Service of this cluster that is not global: its ClusterIP, which
    /// the cluster's own service proxy balances.
    ClusterIp {
        service: String,
        ip: String,
        port: u16,
    },
    /// Does not resolve (`ResolvedRefs=False`): its share of requests gets
    /// 500.
    Unresolved { name: String, reason: String },
}

impl BackendTarget {
    /// The name the access log gives the backend.
    pub fn name(&self) -> String {
        match self {
            BackendTarget::Global { hostname, port } => format!("{hostname}:{port}"),
            BackendTarget::ClusterIp { service, port, .. } => format!("{service}:{port}"),
            BackendTarget::Unresolved { name, .. } => name.clone(),
        }
    }
}

/// `timeouts.request` and `timeouts.backendRequest`, in milliseconds (L5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_ms: Option<u64>,
}

impl RouteTimeouts {
    pub fn is_empty(&self) -> bool {
        self.request_ms.is_none() && self.backend_request_ms.is_none()
    }
}

/// The status meshpeer gives one route: one entry per parentRef it handles
/// (Service and ServiceEntry parents; others belong to other controllers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub parents: Vec<RouteParentStatus>,
}

impl RouteStatus {
    /// The condition `type_` of parent `i`, if set.
    pub fn condition(&self, parent: usize, type_: &str) -> Option<&Condition> {
        self.parents
            .get(parent)?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

/// What [`compile`] makes of a cluster's routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledRoutes {
    pub tables: Vec<Arc<RouteTable>>,
    pub status: Vec<RouteStatus>,
}

/// Whether a port is routed at L7 (L6): Istio's protocol HTTP, HTTP2 or
/// GRPC (from `appProtocol` `http`, `http2`, `kubernetes.io/h2c`, `grpc`,
/// or the port name's prefix).
pub fn is_l7(protocol: &str) -> bool {
    matches!(protocol, "HTTP" | "HTTP2" | "GRPC")
}

/// One frontend a route attaches to, as found from its parentRef.
struct Frontend {
    host: String,
    port: u16,
}

/// Compiles the routes of `snap` against this cluster's view: the global
/// services visible here (`services`) and the cluster's own export (which
/// of its Services are global, under which hostname).
pub fn compile(
    snap: &ClusterSnapshot,
    own: &Export,
    services: &ArcMap<String, GlobalService>,
    manual: &[crate::manual::ManualEntry],
    diags: &mut Vec<Diagnostic>,
) -> CompiledRoutes {
    let cluster = &snap.config.name;
    let names = Names { own, services };
    // Rules per frontend, with their sort keys.
    let mut by_frontend: BTreeMap<(String, u16), Vec<(SortKey, RouteRule)>> = BTreeMap::new();
    let mut status = Vec::new();
    for (key, route) in &snap.http_routes {
        let obj = ObjectRef::namespaced("httproute", &key.namespace, &key.name);
        let mut parents = Vec::new();
        let mut frontends: Vec<Frontend> = Vec::new();
        let mut problems: Vec<(String, String)> = Vec::new(); // (reason, message) of the rules
        let rules = compile_rules(route, key, snap, &names, &mut problems);
        let resolved = resolved_refs(route, key, snap, &names);
        for (i, parent) in route.spec.parent_refs.iter().enumerate() {
            let Some(found) = attach(parent, key, snap, own, services, manual) else {
                continue; // not a parent kind meshpeer handles
            };
            let field = format!("spec.parentRefs[{i}]");
            // An L7 finding about this parent.
            let finding = |message: String| {
                Diagnostic::new(cluster, Rule::L7, Severity::Error, obj.clone(), message)
                    .with_field(field.clone())
            };
            // Some rules usable: accepted, partially invalid; none (and
            // some were written): not accepted.
            let accepted = match found {
                Ok(_) if !problems.is_empty() && rules.is_empty() => Err(problems[0].clone()),
                Ok(f) => {
                    frontends.extend(f);
                    Ok(())
                }
                Err(e) => Err(e),
            };
            let mut conditions = Vec::new();
            match &accepted {
                Ok(()) if !problems.is_empty() => {
                    let message = problems
                        .iter()
                        .map(|(_, m)| m.as_str())
                        .collect::<Vec<_>>()
                        .join("; ");
                    diags.push(finding(format!(
                        "rules left out (the others are routed): {message}"
                    )));
                    conditions.push(condition(
                        "Accepted",
                        true,
                        "Accepted",
                        "meshpeer routes this parent's HTTP ports with the route's valid rules",
                        route,
                    ));
                    conditions.push(condition(
                        "PartiallyInvalid",
                        true,
                        &problems[0].0,
                        &format!("rules left out: {message}"),
                        route,
                    ));
                }
                Ok(()) => conditions.push(condition(
                    "Accepted",
                    true,
                    "Accepted",
                    "meshpeer routes this parent's HTTP ports",
                    route,
                )),
                Err((reason, message)) => {
                    diags.push(finding(format!(
                        "not accepted for its parent {}: {message}",
                        parent_name(parent, key)
                    )));
                    conditions.push(condition("Accepted", false, reason, message, route));
                }
            }
            match &resolved {
                Ok(()) => conditions.push(condition(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "every backendRef resolves",
                    route,
                )),
                Err((reason, message)) => {
                    conditions.push(condition("ResolvedRefs", false, reason, message, route))
                }
            }
            parents.push(RouteParentStatus {
                parent_ref: parent.clone(),
                controller_name: CONTROLLER_NAME.into(),
                conditions,
            });
        }
        if let Err((_, message)) = &resolved
            && !parents.is_empty()
        {
            diags.push(
                Diagnostic::new(
                    cluster,
                    Rule::L2,
                    Severity::Error,
                    obj.clone(),
                    format!("{message}; requests sent there get 500"),
                )
                .with_field("spec.rules[].backendRefs"),
            );
        }
        if parents.is_empty() {
            continue;
        }
        let created = route
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let mut seen = BTreeSet::new();
        for f in frontends {
            if !seen.insert((f.host.clone(), f.port)) {
                continue;
            }
            let list = by_frontend.entry((f.host, f.port)).or_default();
            for r in &rules {
                list.push((SortKey::new(&r.matches, &created, key), r.clone()));
            }
        }
        status.push(RouteStatus {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            generation: route.metadata.generation,
            parents,
        });
    }
    let tables: Vec<Arc<RouteTable>> = by_frontend
        .into_iter()
        .map(|((host, port), mut rules)| {
            rules.sort_by(|a, b| a.0.cmp(&b.0));
            Arc::new(RouteTable {
                host,
                port,
                rules: rules.into_iter().map(|(_, r)| r).collect(),
            })
        })
        .collect();
    report_conflicts(cluster, &tables, &mut status, diags);
    CompiledRoutes { tables, status }
}

/// The condition type meshpeer adds to a route whose rule never applies
/// because an earlier rule (of it or of another route) has the same match
/// on the same frontend (the Gateway API resolves such conflicts by
/// precedence and has no condition for them).
pub const CONFLICTED: &str = "meshpeer.io/Conflicted";

/// Rules shadowed by an earlier rule with the same match: a finding (L3)
/// and a `meshpeer.io/Conflicted` condition on the route that loses.
fn report_conflicts(
    cluster: &str,
    tables: &[Arc<RouteTable>],
    status: &mut [RouteStatus],
    diags: &mut Vec<Diagnostic>,
) {
    // route -> messages
    let mut shadowed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in tables {
        let mut first: Vec<(&RouteMatch, &RouteRule)> = Vec::new();
        for r in &t.rules {
            match first.iter().find(|(m, _)| **m == r.matches) {
                Some((_, winner)) => shadowed.entry(r.route.clone()).or_default().push(format!(
                    "spec.rules[{}] never applies to {}:{}: rule {} of route {} has the same match and comes first",
                    r.rule, t.host, t.port, winner.rule, winner.route
                )),
                None => first.push((&r.matches, r)),
            }
        }
    }
    for (route, messages) in shadowed {
        let (ns, name) = route.split_once('/').unwrap_or(("", &route));
        let message = messages.join("; ");
        diags.push(
            Diagnostic::new(
                cluster,
                Rule::L3,
                Severity::Warning,
                ObjectRef::namespaced("httproute", ns, name),
                format!("{message} (the older route wins, then the name that sorts first)"),
            )
            .with_field("spec.rules"),
        );
        if let Some(st) = status
            .iter_mut()
            .find(|s| s.namespace == ns && s.name == name)
        {
            for parent in &mut st.parents {
                parent.conditions.push(Condition {
                    type_: CONFLICTED.into(),
                    status: "True".into(),
                    reason: Some("ShadowedRules".into()),
                    message: Some(message.clone()),
                    last_transition_time: None,
                    observed_generation: st.generation,
                });
            }
        }
    }
}

fn parent_name(parent: &ParentRef, route: &NsName) -> String {
    format!(
        "{} {}/{}{}",
        parent.kind(),
        parent.namespace.as_deref().unwrap_or(&route.namespace),
        parent.name,
        parent.port.map(|p| format!(":{p}")).unwrap_or_default()
    )
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str, route: &HttpRoute) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: None,
        observed_generation: route.metadata.generation,
    }
}

type Refusal = (String, String);

fn refusal(reason: &str, message: impl Into<String>) -> Refusal {
    (reason.to_owned(), message.into())
}

/// The frontends of one parentRef (L1, L6); `None` for parent kinds that
/// are not a mesh's (a Gateway's routes belong to its own controller).
fn attach(
    parent: &ParentRef,
    route: &NsName,
    snap: &ClusterSnapshot,
    own: &Export,
    services: &ArcMap<String, GlobalService>,
    manual: &[crate::manual::ManualEntry],
) -> Option<Result<Vec<Frontend>, Refusal>> {
    let ns = parent.namespace.as_deref().unwrap_or(&route.namespace);
    let port = parent.port;
    let is_service = matches!(parent.group(), "" | "core") && parent.kind() == "Service";
    let is_entry = parent.group() == "networking.istio.io" && parent.kind() == "ServiceEntry";
    if !is_service && !is_entry {
        return None;
    }
    Some((|| {
        // A route applies to every client of this cluster: only the
        // parent's own namespace may route its traffic (section 9).
        if ns != route.namespace {
            return Err(refusal(
                "NotAllowedByParent",
                format!(
                    "a route in namespace {} cannot attach to {} {ns}/{}: meshpeer applies routes to every client of the cluster, so only routes in the parent's own namespace are accepted",
                    route.namespace,
                    parent.kind(),
                    parent.name
                ),
            ));
        }
        if let Some(s) = &parent.section_name {
            return Err(refusal(
                "UnsupportedValue",
                format!("parentRef sectionName {s:?} is not supported for mesh routes; use port"),
            ));
        }
        let mut out = Vec::new();
        if is_service {
            let key = NsName::new(ns, &parent.name);
            if !snap.services.contains_key(&key) {
                return Err(refusal(
                    "NoMatchingParent",
                    format!(
                        "Service {ns}/{} does not exist in this cluster",
                        parent.name
                    ),
                ));
            }
            let Some(exported) = own.service(ns, &parent.name) else {
                return Err(refusal(
                    "NoMatchingParent",
                    format!(
                        "Service {ns}/{} is not global (label solo.io/service-scope), so meshpeer has no address for its clients to call",
                        parent.name
                    ),
                ));
            };
            let Some(global) = services.get(&exported.hostname) else {
                return Err(refusal(
                    "NoMatchingParent",
                    format!(
                        "Service {ns}/{} is exported as {} but that name is not in this cluster's view",
                        parent.name, exported.hostname
                    ),
                ));
            };
            for p in &global.ports {
                if port.is_none_or(|want| i32::from(p.number) == want) && is_l7(&p.protocol) {
                    out.push(Frontend {
                        host: global.hostname.clone(),
                        port: p.number,
                    });
                }
            }
            if out.is_empty() {
                return Err(no_http_port(
                    port,
                    &global
                        .ports
                        .iter()
                        .map(|p| (p.number, p.protocol.as_str()))
                        .collect::<Vec<_>>(),
                    &parent.name,
                ));
            }
        } else {
            let Some(entry) = manual
                .iter()
                .find(|m| m.name.namespace == ns && m.name.name == parent.name)
            else {
                return Err(refusal(
                    "NoMatchingParent",
                    format!(
                        "ServiceEntry {ns}/{} is not one this cluster's data plane serves",
                        parent.name
                    ),
                ));
            };
            let ports: Vec<(u16, &str)> = entry
                .ports
                .iter()
                .map(|p| (p.number, p.protocol.as_str()))
                .collect();
            for host in &entry.hosts {
                for (number, protocol) in &ports {
                    if port.is_none_or(|want| i32::from(*number) == want) && is_l7(protocol) {
                        out.push(Frontend {
                            host: host.clone(),
                            port: *number,
                        });
                    }
                }
            }
            if out.is_empty() {
                return Err(no_http_port(port, &ports, &parent.name));
            }
        }
        Ok(out)
    })())
}

fn no_http_port(port: Option<i32>, ports: &[(u16, &str)], parent: &str) -> Refusal {
    let list = ports
        .iter()
        .map(|(n, p)| format!("{n} ({p})"))
        .collect::<Vec<_>>()
        .join(", ");
    match port {
        Some(p) => refusal(
            "NoMatchingParent",
            format!(
                "{parent} has no HTTP port {p} (ports: {list}); only HTTP, HTTP2 and GRPC ports are routed at L7 (L6)"
            ),
        ),
        None => refusal(
            "NoMatchingParent",
            format!(
                "{parent} has no HTTP port (ports: {list}); only HTTP, HTTP2 and GRPC ports are routed at L7 (L6)"
            ),
        ),
    }
}

/// Whether every backendRef (and mirror) resolves; the first that does
/// not, as (reason, message).
fn resolved_refs(
    route: &HttpRoute,
    key: &NsName,
    snap: &ClusterSnapshot,
    names: &Names<'_>,
) -> Result<(), Refusal> {
    let mut bad = Vec::new();
    let mut reason = None;
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let mirrors = rule
            .filters
            .iter()
            .filter_map(|f| f.request_mirror.as_ref().map(|m| &m.backend_ref));
        for (j, b) in rule.backend_refs.iter().map(|b| &b.backend).enumerate() {
            if let BackendTarget::Unresolved { reason: why, .. } = resolve(b, key, snap, names) {
                reason.get_or_insert_with(|| why.split(':').next().unwrap_or_default().to_owned());
                bad.push(format!("spec.rules[{i}].backendRefs[{j}]: {why}"));
            }
        }
        for b in mirrors {
            if let BackendTarget::Unresolved { reason: why, .. } = resolve(b, key, snap, names) {
                reason.get_or_insert_with(|| why.split(':').next().unwrap_or_default().to_owned());
                bad.push(format!("spec.rules[{i}] mirror: {why}"));
            }
        }
    }
    match reason {
        None => Ok(()),
        Some(r) => Err((r, bad.join("; "))),
    }
}

/// The names routes resolve against: this cluster's export (its own
/// Services' global names) and the global services visible here.
pub struct Names<'a> {
    pub own: &'a Export,
    pub services: &'a ArcMap<String, GlobalService>,
}

/// Where one backendRef leads (L2). The reason of an unresolved one starts
/// with the Gateway API reason (`BackendNotFound: ...`).
pub fn resolve(
    b: &BackendRef,
    route: &NsName,
    snap: &ClusterSnapshot,
    names: &Names<'_>,
) -> BackendTarget {
    let unresolved = |reason: String| BackendTarget::Unresolved {
        name: b.name.clone(),
        reason,
    };
    let Some(port) = b
        .port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
    else {
        return unresolved(format!(
            "UnsupportedValue: backendRef {} needs a port (1-65535)",
            b.name
        ));
    };
    match (b.group(), b.kind()) {
        ("networking.istio.io", "Hostname") => match names.services.get(&b.name) {
            Some(svc) if svc.ports.iter().any(|p| p.number == port) => BackendTarget::Global {
                hostname: svc.hostname.clone(),
                port,
            },
            Some(svc) => unresolved(format!(
                "BackendNotFound: {} has no port {port} (ports: {})",
                b.name,
                svc.ports
                    .iter()
                    .map(|p| p.number.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => unresolved(format!(
                "BackendNotFound: {} is not a global hostname visible to this cluster",
                b.name
            )),
        },
        ("" | "core", "Service") => {
            let ns = b.namespace.as_deref().unwrap_or(&route.namespace);
            if ns != route.namespace {
                // ReferenceGrants are not read: another namespace is refused.
                return unresolved(format!(
                    "RefNotPermitted: Service {ns}/{} is in another namespace than the route, and meshpeer does not read ReferenceGrants",
                    b.name
                ));
            }
            let Some(svc) = snap.services.get(&NsName::new(ns, &b.name)) else {
                return unresolved(format!(
                    "BackendNotFound: Service {ns}/{} does not exist in this cluster",
                    b.name
                ));
            };
            let spec = svc.spec.as_ref();
            let has_port = spec
                .and_then(|s| s.ports.as_ref())
                .is_some_and(|ps| ps.iter().any(|p| p.port == i32::from(port)));
            if !has_port {
                return unresolved(format!(
                    "BackendNotFound: Service {ns}/{} has no port {port}",
                    b.name
                ));
            }
            // A global Service is reached through its global name (T-rules);
            // another through its ClusterIP.
            // Found through this cluster's own export, not by walking the
            // view (SPEC I1).
            let global = names
                .own
                .service(ns, &b.name)
                .and_then(|e| names.services.get(&e.hostname))
                .filter(|g| {
                    g.contributions
                        .iter()
                        .any(|c| c.cluster == snap.config.name)
                });
            if let Some(g) = global {
                return BackendTarget::Global {
                    hostname: g.hostname.clone(),
                    port,
                };
            }
            match spec
                .and_then(|s| s.cluster_ip.as_deref())
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            {
                Some(ip) => BackendTarget::ClusterIp {
                    service: format!("{}.{ns}.svc", b.name),
                    ip: ip.to_owned(),
                    port,
                },
                None => unresolved(format!(
                    "BackendNotFound: Service {ns}/{} is not global and has no ClusterIP to send to",
                    b.name
                )),
            }
        }
        (g, k) => unresolved(format!(
            "InvalidKind: backendRef kind {k} of group {g:?} is not supported (Service, or networking.istio.io Hostname)"
        )),
    }
}

/// The route's usable rules, one entry per match; a rule with a problem is
/// left out whole (the Gateway API's partially invalid route), its
/// problems go to `problems`.
fn compile_rules(
    route: &HttpRoute,
    key: &NsName,
    snap: &ClusterSnapshot,
    names: &Names<'_>,
    problems: &mut Vec<Refusal>,
) -> Vec<RouteRule> {
    let mut out = Vec::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let (problems_before, out_before) = (problems.len(), out.len());
        compile_rule(i, rule, key, snap, names, problems, &mut out);
        if problems.len() > problems_before {
            out.truncate(out_before);
        }
    }
    out
}

fn compile_rule(
    i: usize,
    rule: &crate::objects::HttpRouteRule,
    key: &NsName,
    snap: &ClusterSnapshot,
    names: &Names<'_>,
    problems: &mut Vec<Refusal>,
    out: &mut Vec<RouteRule>,
) {
    {
        let at = format!("spec.rules[{i}]");
        let mut filters = Vec::new();
        for (j, f) in rule.filters.iter().enumerate() {
            match filter(f, key, snap, names) {
                Ok(f) => filters.push(f),
                Err(e) => problems.push(refusal(
                    "UnsupportedValue",
                    format!("{at}.filters[{j}]: {e}"),
                )),
            }
        }
        let redirects = filters
            .iter()
            .filter(|f| matches!(f, RouteFilter::RequestRedirect(_)))
            .count();
        let rewrites = filters
            .iter()
            .filter(|f| matches!(f, RouteFilter::UrlRewrite(_)))
            .count();
        if redirects > 1 || rewrites > 1 || (redirects == 1 && rewrites == 1) {
            problems.push(refusal(
                "IncompatibleFilters",
                format!("{at}.filters: at most one RequestRedirect or URLRewrite"),
            ));
        }
        if redirects == 1 && !rule.backend_refs.is_empty() {
            problems.push(refusal(
                "IncompatibleFilters",
                format!("{at}: a RequestRedirect rule has no backendRefs"),
            ));
        }
        let mut backends = Vec::new();
        for (j, b) in rule.backend_refs.iter().enumerate() {
            match backend(b, key, snap, names) {
                Ok(Some(b)) => backends.push(b),
                Ok(None) => {}
                Err(e) => problems.push(refusal(
                    "UnsupportedValue",
                    format!("{at}.backendRefs[{j}]: {e}"),
                )),
            }
        }
        let mut timeouts = RouteTimeouts::default();
        if let Some(t) = &rule.timeouts {
            for (name, value, slot) in [
                ("request", &t.request, &mut timeouts.request_ms),
                (
                    "backendRequest",
                    &t.backend_request,
                    &mut timeouts.backend_request_ms,
                ),
            ] {
                if let Some(v) = value {
                    match parse_duration_ms(v) {
                        // 0s: no timeout.
                        Some(0) => {}
                        Some(ms) => *slot = Some(ms),
                        None => problems.push(refusal(
                            "UnsupportedValue",
                            format!("{at}.timeouts.{name}: {v:?} is not a Gateway API duration (e.g. 500ms, 10s, 1m, 1h30m)"),
                        )),
                    }
                }
            }
            if let (Some(r), Some(b)) = (timeouts.request_ms, timeouts.backend_request_ms)
                && b > r
            {
                problems.push(refusal(
                    "UnsupportedValue",
                    format!("{at}.timeouts: backendRequest ({b} ms) may not be longer than request ({r} ms)"),
                ));
            }
        }
        let matches = match &rule.matches {
            Some(m) if !m.is_empty() => m.clone(),
            _ => vec![HttpRouteMatch::default()],
        };
        for (j, m) in matches.into_iter().enumerate() {
            match compile_match(&m) {
                Ok(rm) => out.push(RouteRule {
                    route: key.to_string(),
                    rule: i,
                    rule_name: rule.name.clone(),
                    matches: rm,
                    filters: filters.clone(),
                    backends: backends.clone(),
                    timeouts: timeouts.clone(),
                    retries: DEFAULT_RETRIES,
                }),
                Err(e) => problems.push(refusal(
                    "UnsupportedValue",
                    format!("{at}.matches[{j}]: {e}"),
                )),
            }
        }
        // A prefix rewrite needs a prefix match to replace.
        if filters
            .iter()
            .chain(backends.iter().flat_map(|b| &b.filters))
            .any(|f| {
                matches!(
                    f,
                    RouteFilter::UrlRewrite(Rewrite {
                        path: Some(PathEdit::ReplacePrefixMatch(_)),
                        ..
                    }) | RouteFilter::RequestRedirect(Redirect {
                        path: Some(PathEdit::ReplacePrefixMatch(_)),
                        ..
                    })
                )
            })
            && out
                .iter()
                .filter(|r| r.rule == i)
                .any(|r| !matches!(r.matches.path, PathMatch::PathPrefix(_)))
        {
            problems.push(refusal(
                "UnsupportedValue",
                format!("{at}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"),
            ));
        }
    }
}

fn compile_match(m: &HttpRouteMatch) -> Result<RouteMatch, String> {
    let path = match &m.path {
        None => PathMatch::default(),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.type_.as_deref().unwrap_or("PathPrefix") {
                "Exact" | "PathPrefix" if !value.starts_with('/') => {
                    return Err(format!("path value {value:?} must start with '/'"));
                }
                "Exact" => PathMatch::Exact(value),
                "PathPrefix" => {
                    // `/foo/` and `/foo` are the same prefix.
                    let trimmed = value.trim_end_matches('/');
                    PathMatch::PathPrefix(if trimmed.is_empty() {
                        "/".into()
                    } else {
                        trimmed.into()
                    })
                }
                "RegularExpression" => {
                    check_regex(&value)?;
                    PathMatch::RegularExpression(value)
                }
                other => {
                    return Err(format!(
                        "path type {other:?} is not one of Exact, PathPrefix, RegularExpression"
                    ));
                }
            }
        }
    };
    let mut headers = Vec::new();
    let mut names = BTreeSet::new();
    for h in &m.headers {
        check_header_name(&h.name)?;
        if !names.insert(h.name.to_ascii_lowercase()) {
            return Err(format!("header {} is matched twice", h.name));
        }
        headers.push(value_match(&h.type_, &h.name, &h.value)?);
    }
    let mut query_params = Vec::new();
    let mut names = BTreeSet::new();
    for q in &m.query_params {
        if q.name.is_empty() {
            return Err("a query parameter match needs a name".into());
        }
        if !names.insert(q.name.clone()) {
            return Err(format!("query parameter {} is matched twice", q.name));
        }
        query_params.push(value_match(&q.type_, &q.name, &q.value)?);
    }
    let method = match m.method.as_deref() {
        None => None,
        Some(
            x @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE"
            | "PATCH"),
        ) => Some(x.to_owned()),
        Some(x) => {
            return Err(format!(
                "method {x:?} is not one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH"
            ));
        }
    };
    Ok(RouteMatch {
        path,
        headers,
        query_params,
        method,
    })
}

fn value_match(type_: &Option<String>, name: &str, value: &str) -> Result<ValueMatch, String> {
    let regex = match type_.as_deref().unwrap_or("Exact") {
        "Exact" => false,
        "RegularExpression" => {
            check_regex(value)?;
            true
        }
        other => {
            return Err(format!(
                "match type {other:?} of {name} is not one of Exact, RegularExpression"
            ));
        }
    };
    Ok(ValueMatch {
        name: name.to_owned(),
        value: value.to_owned(),
        regex,
    })
}

/// The data plane compiles the same pattern anchored; a pattern that does
/// not compile, or would compile too large, is refused here.
fn check_regex(pattern: &str) -> Result<(), String> {
    if pattern.len() > 1024 {
        return Err(format!(
            "regular expression of {} bytes (at most 1024)",
            pattern.len()
        ));
    }
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| format!("regular expression {pattern:?} does not compile: {e}"))
}

/// RFC 7230 token characters, as the Gateway API's header name pattern.
/// Whether `name` is an HTTP header name as the Gateway API allows one:
/// RFC 7230 token characters, at most 256.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_header_name(name: &str) -> Result<(), String> {
    if is_header_name(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

fn header_edit(m: &HeaderModifier) -> Result<HeaderEdit, String> {
    for h in m.set.iter().chain(&m.add) {
        check_header_name(&h.name)?;
        if h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("the value of header {} holds a line break", h.name));
        }
    }
    for r in &m.remove {
        check_header_name(r)?;
    }
    Ok(HeaderEdit {
        set: m
            .set
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        remove: m.remove.clone(),
    })
}

fn path_edit(p: &PathModifier) -> Result<PathEdit, String> {
    match p.type_.as_str() {
        "ReplaceFullPath" => match &p.replace_full_path {
            Some(v) if v.starts_with('/') => Ok(PathEdit::ReplaceFullPath(v.clone())),
            v => Err(format!(
                "replaceFullPath {v:?} must be a path starting with '/'"
            )),
        },
        "ReplacePrefixMatch" => match &p.replace_prefix_match {
            Some(v) if v.starts_with('/') => Ok(PathEdit::ReplacePrefixMatch(v.clone())),
            v => Err(format!(
                "replacePrefixMatch {v:?} must be a path starting with '/'"
            )),
        },
        other => Err(format!(
            "path modifier type {other:?} is not one of ReplaceFullPath, ReplacePrefixMatch"
        )),
    }
}

fn filter(
    f: &HttpRouteFilter,
    key: &NsName,
    snap: &ClusterSnapshot,
    names: &Names<'_>,
) -> Result<RouteFilter, String> {
    let missing = |field: &str| format!("filter {} needs its field {field}", f.type_);
    match f.type_.as_str() {
        "RequestHeaderModifier" => Ok(RouteFilter::RequestHeaderModifier(header_edit(
            f.request_header_modifier
                .as_ref()
                .ok_or_else(|| missing("requestHeaderModifier"))?,
        )?)),
        "ResponseHeaderModifier" => Ok(RouteFilter::ResponseHeaderModifier(header_edit(
            f.response_header_modifier
                .as_ref()
                .ok_or_else(|| missing("responseHeaderModifier"))?,
        )?)),
        "RequestRedirect" => {
            let r = f
                .request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?;
            let status = r.status_code.unwrap_or(302);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(format!(
                    "redirect statusCode {status} is not one of 301, 302, 303, 307, 308"
                ));
            }
            if let Some(s) = &r.scheme
                && s != "http"
                && s != "https"
            {
                return Err(format!("redirect scheme {s:?} is not http or https"));
            }
            let port = match r.port {
                None => None,
                Some(p) => Some(
                    u16::try_from(p)
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("redirect port {p} is not 1-65535"))?,
                ),
            };
            Ok(RouteFilter::RequestRedirect(Redirect {
                scheme: r.scheme.clone(),
                hostname: r.hostname.clone(),
                port,
                path: r.path.as_ref().map(path_edit).transpose()?,
                status: status as u16,
            }))
        }
        "URLRewrite" => {
            let r = f
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing("urlRewrite"))?;
            Ok(RouteFilter::UrlRewrite(Rewrite {
                hostname: r.hostname.clone(),
                path: r.path.as_ref().map(path_edit).transpose()?,
            }))
        }
        "RequestMirror" => {
            let m = f
                .request_mirror
                .as_ref()
                .ok_or_else(|| missing("requestMirror"))?;
            let percent = m.percent.unwrap_or(100);
            if !(0..=100).contains(&percent) {
                return Err(format!("mirror percent {percent} is not 0-100"));
            }
            Ok(RouteFilter::RequestMirror(Mirror {
                target: resolve(&m.backend_ref, key, snap, names),
                percent: percent as u8,
            }))
        }
        other => Err(format!(
            "filter type {other:?} is not supported (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror)"
        )),
    }
}

/// A backendRef; `None` when its weight is 0 (it gets no requests).
fn backend(
    b: &HttpBackendRef,
    key: &NsName,
    snap: &ClusterSnapshot,
    names: &Names<'_>,
) -> Result<Option<RouteBackend>, String> {
    let weight = b.weight.unwrap_or(1);
    let weight = u32::try_from(weight)
        .ok()
        .filter(|w| *w <= 1_000_000)
        .ok_or_else(|| format!("weight {weight} is not 0-1000000"))?;
    if weight == 0 {
        return Ok(None);
    }
    let mut filters = Vec::new();
    for f in &b.filters {
        match f.type_.as_str() {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => {
                filters.push(filter(f, key, snap, names)?)
            }
            other => {
                return Err(format!(
                    "backendRef filter {other:?} is not supported (RequestHeaderModifier, ResponseHeaderModifier)"
                ));
            }
        }
    }
    Ok(Some(RouteBackend {
        target: resolve(&b.backend, key, snap, names),
        weight,
        filters,
    }))
}

/// Gateway API durations: one to four `<number><unit>` parts, units `h`,
/// `m`, `s`, `ms`, numbers of at most five digits.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let mut rest = s;
    let mut total: u64 = 0;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += n * unit;
        parts += 1;
        if parts > 4 {
            return None;
        }
    }
    (parts > 0).then_some(total)
}

/// The Gateway API's precedence between rules of one frontend (L3): exact
/// path first, then regular expressions, then the longest prefix; then a
/// method match, more header matches, more query matches; then the older
/// route, then the route's name; then the order inside the route (the
/// sort is stable).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    path_kind: u8,
    path_len: std::cmp::Reverse<usize>,
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
    created: String,
    route: String,
}

impl SortKey {
    fn new(m: &RouteMatch, created: &str, route: &NsName) -> SortKey {
        let (path_kind, path_len) = match &m.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::RegularExpression(p) => (1, p.len()),
            PathMatch::PathPrefix(p) => (2, p.len()),
        };
        SortKey {
            path_kind,
            path_len: std::cmp::Reverse(path_len),
            no_method: m.method.is_none(),
            headers: std::cmp::Reverse(m.headers.len()),
            query: std::cmp::Reverse(m.query_params.len()),
            // RFC 3339 UTC timestamps sort as text; unknown (file mode:
            // none given) sorts first, and then the name decides.
            created: created.to_owned(),
            route: route.to_string(),
        }
    }
}
