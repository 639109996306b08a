//! `meshpeer explain HOST[:PORT] --from CLUSTER` (issue 16): why a name
//! resolves in a cluster (or does not), and where a request to it goes.
//!
//! A pure function of what `check` gathers ([`ClusterFacts`]): each
//! cluster's objects, what it exports, the catalog its objects give, and,
//! when its controller answers, the live catalog and peer states. The
//! account is ordered as an operator reads it: does the name exist, why
//! (or the first rule that keeps it out, per cluster, with the object, the
//! field and the value), the VIP and ports, the traffic distribution and
//! where it came from, then the endpoint tiers in the order the proxy tries
//! them from that cluster.

mod text;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use meshpeer_model::{
    ClientLocation, ClusterSnapshot, GlobalCatalog, GlobalService, NsName, Reach, Rule, Scope,
    ServicePort, labels, rank,
};
use serde::{Deserialize, Serialize};

use meshpeer_model::routes::{BackendTarget, CompiledTable, RequestParts};

use crate::check::{ClusterFacts, Live};
use crate::controller::LinkState;

/// What is asked: a hostname (a global one, or a taken-over cluster-local
/// one), maybe a port, from one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub host: String,
    pub port: Option<u16>,
    pub from: String,
    /// The request whose route is asked for, when the port is routed at
    /// L7 (default `GET /`, no headers).
    pub request: RequestParts,
}

impl Query {
    /// `HOST` or `HOST:PORT`; the host is lower-cased, a trailing dot dropped.
    pub fn parse(target: &str, from: &str) -> Result<Query, String> {
        let (host, port) = match target.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("{p:?} in {target:?} is not a port (1-65535)"))?;
                (h, Some(port))
            }
            None => (target, None),
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(format!("{target:?} is not a host name (HOST or HOST:PORT)"));
        }
        Ok(Query {
            host,
            port,
            from: from.to_owned(),
            request: RequestParts {
                method: "GET".into(),
                path: "/".into(),
                ..RequestParts::default()
            },
        })
    }

    /// The request to match at L7: `-X METHOD`, `--path /p?q`, `-H 'Name:
    /// value'` (repeatable), as curl takes them.
    pub fn with_request(
        mut self,
        method: &str,
        path: &str,
        headers: &[String],
    ) -> Result<Query, String> {
        if !path.starts_with('/') {
            return Err(format!("--path {path:?} must start with '/'"));
        }
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        // Checked as `demo curl` checks them.
        let given =
            crate::demo::client::Request::new(method, headers).map_err(|e| e.to_string())?;
        self.request = RequestParts {
            method: given.method,
            path: path.to_owned(),
            query: query.to_owned(),
            headers: given.headers,
        };
        Ok(self)
    }
}

/// L7 (section 11): the rules a frontend's routes give it, which one the
/// request asked about takes, and where that sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteAccount {
    /// `host:port`.
    pub frontend: String,
    /// The request matched, as `METHOD /path?query header: value ...`.
    pub request: String,
    /// Every rule, in the order the proxy tries them (L3).
    pub rules: Vec<RuleLine>,
    /// The index in `rules` of the rule the request takes; none: 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<usize>,
    /// What the matched rule does besides sending (filters, redirect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Where the matched rule sends requests, by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendLine>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleLine {
    /// `namespace/name`.
    pub route: String,
    pub rule: usize,
    /// The match, as text.
    #[serde(rename = "match")]
    pub matches: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendLine {
    pub name: String,
    pub weight: u32,
    /// Share of the rule's requests, in percent (`66.7`).
    pub percent: String,
    /// Why it does not resolve (its share gets 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

/// One line of the account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// Whether this line is good news for the name (`false`: it is why the
    /// name, or a cluster's part of it, is missing).
    pub ok: bool,
    /// The SPEC rule behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
    /// The cluster it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `kind namespace/name` of the object at fault or at work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub text: String,
}

impl Line {
    fn ok(rule: Rule, cluster: &str, text: impl Into<String>) -> Line {
        Line {
            ok: true,
            rule: Some(rule),
            cluster: Some(cluster.to_owned()),
            object: None,
            field: None,
            value: None,
            text: text.into(),
        }
    }

    fn not(rule: Rule, cluster: &str, text: impl Into<String>) -> Line {
        Line {
            ok: false,
            ..Line::ok(rule, cluster, text)
        }
    }

    fn object(mut self, object: impl Into<String>) -> Line {
        self.object = Some(object.into());
        self
    }

    fn field(mut self, field: impl Into<String>, value: Option<&str>) -> Line {
        self.field = Some(field.into());
        self.value = value.map(str::to_owned);
        self
    }
}

/// The effective traffic distribution and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Distribution {
    pub value: String,
    pub rule: Rule,
    pub source: String,
}

/// One endpoint of a group, as the proxy would dial it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointLine {
    pub name: String,
    pub address: String,
    /// The endpoint port serving the asked port (or the first port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Live, from the proxy: ejected by passive health for this long more
    /// (T6); the proxy skips it while a healthy one is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_ms: Option<u64>,
}

/// A destination a proxy's passive health checking has ejected (its
/// `GET /v1/ejections`): an endpoint, or a service through a peer's
/// gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ejected {
    /// `address:port` of an endpoint dialled directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The peer cluster, for a service reached through its gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `<hostname>:<port>` asked of that gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    pub remaining_ms: u64,
}

impl Ejected {
    pub fn of(key: &meshpeer_dataplane::pick::HealthKey, left: std::time::Duration) -> Ejected {
        let remaining_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        match key {
            meshpeer_dataplane::pick::HealthKey::Endpoint(a) => Ejected {
                endpoint: Some(a.to_string()),
                cluster: None,
                authority: None,
                remaining_ms,
            },
            meshpeer_dataplane::pick::HealthKey::Remote(c, auth) => Ejected {
                endpoint: None,
                cluster: Some(c.clone()),
                authority: Some(auth.clone()),
                remaining_ms,
            },
        }
    }
}

/// The endpoints of one cluster in one locality.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub cluster: String,
    pub network: String,
    /// `region/zone/subzone`; empty when unknown.
    pub locality: String,
    pub reach: Reach,
    /// For `gateway`: the peer's east-west gateway, `address:port` (HBONE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
    /// Ready endpoints (serving the asked port, when one is asked).
    pub ready: usize,
    /// Live, from the proxy, for a group reached through a gateway: the
    /// service through that gateway is ejected for this long more (T6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_ms: Option<u64>,
    /// Listed one by one for endpoints dialled directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointLine>,
}

/// One tier: the proxy spreads over its groups, and falls through to the
/// next tier only when none of them has a healthy endpoint (T6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    pub groups: Vec<Group>,
}

/// The whole account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// As asked.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub from: String,
    /// Where the answer comes from: the controller's live catalog, or the
    /// clusters' objects.
    pub source: String,
    /// The name resolves in `from`.
    pub resolves: bool,
    /// The global hostname (differs from `host` for a taken-over name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Why the name is there (or not), cluster by cluster.
    pub why: Vec<Line>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    /// `from`'s network and locality, which the tiers are ranked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Most preferred first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    /// Where the ejection state comes from (`the proxy at ADDR`), when a
    /// proxy was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// L7 routes of the frontend, when it has some (section 11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<RouteAccount>,
}

impl Explanation {
    /// Marks what `proxy` (its address) has ejected now in the tiers.
    pub fn with_ejections(mut self, proxy: &str, ejected: &[Ejected]) -> Explanation {
        let port = self.port;
        let hostname = self.hostname.clone().unwrap_or_else(|| self.host.clone());
        for tier in &mut self.tiers {
            for g in &mut tier.groups {
                for ep in &mut g.endpoints {
                    let Some(p) = ep.port else { continue };
                    let addr = format!("{}:{p}", ep.address);
                    let addr = addr
                        .parse::<std::net::SocketAddr>()
                        .map_or(addr, |a| a.to_string());
                    ep.ejected_ms = ejected
                        .iter()
                        .find(|e| e.endpoint.as_deref() == Some(addr.as_str()))
                        .map(|e| e.remaining_ms);
                }
                if g.reach == Reach::Gateway {
                    g.ejected_ms = ejected
                        .iter()
                        .filter(|e| e.cluster.as_deref() == Some(g.cluster.as_str()))
                        .filter(|e| {
                            e.authority.as_deref().is_some_and(|a| match port {
                                Some(p) => a == format!("{hostname}:{p}"),
                                None => a.starts_with(&format!("{hostname}:")),
                            })
                        })
                        .map(|e| e.remaining_ms)
                        .max();
                }
            }
        }
        self.health = Some(format!("the proxy at {proxy}"));
        self
    }
}

impl Explanation {
    /// The account as text, one line per finding.
    pub fn render(&self) -> String {
        text::render(self)
    }
}

/// Explains `query` from the facts of every cluster given.
pub fn explain(facts: &[ClusterFacts], query: &Query) -> Result<Explanation, String> {
    let from = facts.iter().find(|f| f.name == query.from).ok_or_else(|| {
        let names: Vec<&str> = facts.iter().map(|f| f.name.as_str()).collect();
        format!(
            "cluster {:?} is not among the clusters read ({})",
            query.from,
            names.join(", ")
        )
    })?;
    let live = from.live.state().and_then(|s| s.catalog.as_ref().ok());
    let (catalog, source): (&GlobalCatalog, String) = match (live, &from.live) {
        (Some(feed), Live::Up(state)) => (
            &feed.catalog,
            format!(
                "the live catalog of {}'s controller at {} (version {})",
                from.name, state.addr, feed.version
            ),
        ),
        _ => (
            &from.catalog,
            format!(
                "the objects of the clusters read ({}), as if linked and running",
                facts
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    };
    let mut out = Explanation {
        host: query.host.clone(),
        port: query.port,
        from: query.from.clone(),
        source,
        resolves: false,
        hostname: None,
        vip: None,
        ports: Vec::new(),
        why: Vec::new(),
        distribution: None,
        client: None,
        tiers: Vec::new(),
        health: None,
        routes: None,
    };
    let found = catalog.services.values().find(|s| {
        s.hostname == query.host
            || s.takeover
                .as_ref()
                .is_some_and(|t| t.hostname == query.host)
    });
    match found {
        Some(svc) => present(facts, from, catalog, svc, query, &mut out),
        None => absent(facts, from, catalog, query, &mut out),
    }
    Ok(out)
}

/// `<name>.<namespace>.<domain>` or `<name>.<namespace>.svc.cluster.local`.
fn split_host(host: &str) -> Option<(&str, &str, &str)> {
    let (name, rest) = host.split_once('.')?;
    let (namespace, domain) = rest.split_once('.')?;
    (!name.is_empty() && !namespace.is_empty() && !domain.is_empty())
        .then_some((name, namespace, domain))
}

fn present(
    facts: &[ClusterFacts],
    from: &ClusterFacts,
    catalog: &GlobalCatalog,
    svc: &GlobalService,
    query: &Query,
    out: &mut Explanation,
) {
    out.resolves = true;
    out.hostname = Some(svc.hostname.clone());
    out.vip = Some(svc.vip.to_string());
    out.ports = svc.ports.clone();
    let me = from.name.as_str();
    let ports: Vec<String> = svc
        .ports
        .iter()
        .map(|p| format!("{}/{} ({})", p.number, p.name, p.protocol))
        .collect();
    let mut resolves = Line::ok(
        Rule::G11,
        me,
        format!(
            "{} resolves in {me} to {} (VIP), ports {}",
            query.host,
            svc.vip,
            ports.join(", ")
        ),
    );
    if svc.hostname != query.host {
        resolves.rule = Some(Rule::K1);
        resolves.text = format!(
            "{} is taken over in {me}: it resolves to {}, the VIP of {}, ports {}",
            query.host,
            svc.vip,
            svc.hostname,
            ports.join(", ")
        );
    }
    out.why.push(resolves);
    if let Some(port) = query.port
        && !svc.ports.iter().any(|p| p.number == port)
    {
        out.why.push(Line::not(
            Rule::G9,
            me,
            format!(
                "port {port} is not a port of {}: no cluster serves it (ports: {})",
                svc.hostname,
                ports.join(", ")
            ),
        ));
    }

    // Why each contributing cluster is in it.
    for c in &svc.contributions {
        let facts_of = facts.iter().find(|f| f.name == c.cluster);
        let key = NsName::new(&svc.namespace, &svc.name);
        match facts_of {
            Some(f) => out.why.push(why_global(f, &key, &svc.hostname)),
            None => out.why.push(Line::ok(
                Rule::G1,
                &c.cluster,
                format!(
                    "{} exports {}/{} (its objects were not read here, so not why)",
                    c.cluster, svc.namespace, svc.name
                ),
            )),
        }
        out.why
            .push(reach_line(from, catalog, &c.cluster, c.reach, &c.network));
        out.why.extend(peer_state(from, &c.cluster));
        let ready = match query.port {
            Some(port) => c
                .service
                .endpoints()
                .filter(|(_, e)| e.target(port).is_some())
                .count(),
            None => c.service.endpoint_count(),
        };
        let of_port = query
            .port
            .map(|p| format!(" serving port {p}"))
            .unwrap_or_default();
        if ready == 0 {
            let port_missing = query
                .port
                .is_some_and(|p| !c.service.ports.iter().any(|sp| sp.number == p));
            out.why.push(if port_missing {
                Line::not(
                    Rule::G9,
                    &c.cluster,
                    format!(
                        "{} does not serve port {} of {}: its Service has no such port",
                        c.cluster,
                        query.port.unwrap_or_default(),
                        svc.hostname
                    ),
                )
                .object(format!("service {}/{}", svc.namespace, svc.name))
            } else {
                Line::not(
                    Rule::G10,
                    &c.cluster,
                    format!("no ready endpoint{of_port} in {}", c.cluster),
                )
                .object(format!("service {}/{}", svc.namespace, svc.name))
            });
        } else {
            out.why.push(Line::ok(
                Rule::G10,
                &c.cluster,
                format!(
                    "{ready} ready endpoint{}{of_port} in {}",
                    if ready == 1 { "" } else { "s" },
                    c.cluster
                ),
            ));
        }
    }
    if let Some(t) = &svc.takeover {
        out.why.push(Line::ok(
            Rule::K1,
            me,
            format!(
                "{me} takes over its own {}/{}: {} resolves to the VIP too",
                svc.namespace, svc.name, t.hostname
            ),
        ));
    }
    // Clusters that have the Service but are not part of it here.
    let key = NsName::new(&svc.namespace, &svc.name);
    for f in facts {
        if svc.contributions.iter().any(|c| c.cluster == f.name) {
            continue;
        }
        if f.snapshot.services.contains_key(&key) {
            out.why
                .extend(why_not(from, catalog, f, &key, &svc.hostname, true));
        }
    }
    out.distribution = Some(distribution(catalog, svc));
    tiers(catalog, svc, query.port, out);
    out.routes = route_account(catalog, svc, query);
}

/// The route account of the frontend asked about: the port given, else
/// the first port with routes.
fn route_account(
    catalog: &GlobalCatalog,
    svc: &GlobalService,
    query: &Query,
) -> Option<RouteAccount> {
    let table = catalog
        .routes
        .iter()
        .find(|t| t.host == svc.hostname && query.port.is_none_or(|p| p == t.port))?;
    let compiled = CompiledTable::new(std::sync::Arc::clone(table));
    let matched = compiled.find(&query.request);
    let rules: Vec<RuleLine> = table
        .rules
        .iter()
        .map(|r| RuleLine {
            route: r.route.clone(),
            rule: r.rule,
            matches: match_text(&r.matches),
        })
        .collect();
    let index = matched.and_then(|m| table.rules.iter().position(|r| std::ptr::eq(r, m)));
    let total: u64 = matched
        .map(|m| m.backends.iter().map(|b| u64::from(b.weight)).sum())
        .unwrap_or(0);
    let backends = matched
        .map(|m| {
            m.backends
                .iter()
                .map(|b| BackendLine {
                    name: b.target.name(),
                    weight: b.weight,
                    percent: if total == 0 {
                        "0".into()
                    } else {
                        format!("{:.1}", f64::from(b.weight) * 100.0 / total as f64)
                            .trim_end_matches(".0")
                            .to_owned()
                    },
                    unresolved: match &b.target {
                        BackendTarget::Unresolved { reason, .. } => Some(reason.clone()),
                        _ => None,
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    let filters = matched
        .map(|m| m.filters.iter().map(filter_text).collect())
        .unwrap_or_default();
    let r = &query.request;
    let mut request = format!("{} {}", r.method, r.path);
    if !r.query.is_empty() {
        request.push('?');
        request.push_str(&r.query);
    }
    for (n, v) in &r.headers {
        request.push_str(&format!(" {n}: {v}"));
    }
    Some(RouteAccount {
        frontend: format!("{}:{}", table.host, table.port),
        request,
        rules,
        matched: index,
        filters,
        backends,
    })
}

fn match_text(m: &meshpeer_model::routes::RouteMatch) -> String {
    use meshpeer_model::routes::PathMatch;
    let mut parts = vec![match &m.path {
        PathMatch::Exact(p) => format!("path = {p}"),
        PathMatch::PathPrefix(p) => format!("path under {p}"),
        PathMatch::RegularExpression(p) => format!("path ~ {p}"),
    }];
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    for h in &m.headers {
        parts.push(format!(
            "header {} {} {}",
            h.name,
            if h.regex { "~" } else { "=" },
            h.value
        ));
    }
    for q in &m.query_params {
        parts.push(format!(
            "query {} {} {}",
            q.name,
            if q.regex { "~" } else { "=" },
            q.value
        ));
    }
    parts.join(", ")
}

fn filter_text(f: &meshpeer_model::routes::RouteFilter) -> String {
    use meshpeer_model::routes::RouteFilter;
    match f {
        RouteFilter::RequestHeaderModifier(_) => "request headers modified".into(),
        RouteFilter::ResponseHeaderModifier(_) => "response headers modified".into(),
        RouteFilter::RequestRedirect(r) => format!("redirect ({}): no backend is asked", r.status),
        RouteFilter::UrlRewrite(_) => "URL rewritten".into(),
        RouteFilter::RequestMirror(m) => {
            format!("mirrored to {} ({}%)", m.target.name(), m.percent)
        }
    }
}

fn absent(
    facts: &[ClusterFacts],
    from: &ClusterFacts,
    catalog: &GlobalCatalog,
    query: &Query,
    out: &mut Explanation,
) {
    let me = from.name.as_str();
    let Some((name, namespace, domain)) = split_host(&query.host) else {
        out.why.push(Line::not(
            Rule::G6,
            me,
            format!(
                "{} is not a global name: global names are <name>.<namespace>.{} or <name>.<namespace>.<segment domain>",
                query.host,
                labels::DEFAULT_DOMAIN
            ),
        ));
        return;
    };
    let key = NsName::new(namespace, name);
    let local = domain == labels::CLUSTER_LOCAL_SUFFIX;
    let domains: Vec<&str> = std::iter::once(labels::DEFAULT_DOMAIN)
        .chain(catalog.segments.iter().map(|s| s.domain.as_str()))
        .collect();
    if !local && !domains.contains(&domain) {
        out.why.push(Line::not(
            Rule::S3,
            me,
            format!(
                "{me} answers for {} only; {domain} is not the domain of a Segment defined in {me}",
                domains.join(", ")
            ),
        ));
    }
    let having: Vec<&ClusterFacts> = facts
        .iter()
        .filter(|f| f.snapshot.services.contains_key(&key))
        .collect();
    if having.is_empty() {
        let names: Vec<&str> = facts.iter().map(|f| f.name.as_str()).collect();
        out.why.push(
            Line::not(
                Rule::G1,
                me,
                format!(
                    "no cluster read ({}) has a Service {namespace}/{name}",
                    names.join(", ")
                ),
            )
            .object(format!("service {namespace}/{name}")),
        );
        return;
    }
    if local {
        // A cluster-local name resolves through meshpeer only when taken over.
        let own = having.iter().find(|f| f.name == me);
        let line = match own.and_then(|f| f.export.services.get(&key)) {
            Some(e) if !e.takeover => Line::not(
                Rule::K1,
                me,
                format!(
                    "{name}.{namespace}.{} is Kubernetes' own name in {me}: {me} exports {namespace}/{name} as {} but does not take it over (label {}=true)",
                    labels::CLUSTER_LOCAL_SUFFIX,
                    e.hostname,
                    labels::SERVICE_TAKEOVER
                ),
            )
            .object(format!("service {namespace}/{name}"))
            .field(format!("metadata.labels[{}]", labels::SERVICE_TAKEOVER), None),
            _ => Line::not(
                Rule::K1,
                me,
                format!(
                    "{name}.{namespace}.{} is Kubernetes' own name in {me}; meshpeer answers for it only when {me} exports and takes over {namespace}/{name}",
                    labels::CLUSTER_LOCAL_SUFFIX
                ),
            ),
        };
        out.why.push(line);
    }
    let hostname = (!local).then_some(query.host.as_str());
    for f in having {
        out.why.extend(why_not(
            from,
            catalog,
            f,
            &key,
            hostname.unwrap_or_default(),
            false,
        ));
    }
}

/// Why a Service is exported by its cluster: which label, where.
fn why_global(f: &ClusterFacts, key: &NsName, hostname: &str) -> Line {
    let obj = format!("service {}/{}", key.namespace, key.name);
    let field = format!("metadata.labels[{}]", labels::SERVICE_SCOPE);
    let (svc_label, ns_label) = scope_labels(&f.snapshot, key);
    let segment = match f.export.cluster.segment.as_ref() {
        Some(s) => format!("segment {} (domain {})", s.name, s.domain),
        None => format!("the default segment ({})", labels::DEFAULT_DOMAIN),
    };
    let scope = f
        .export
        .services
        .get(key)
        .map_or(Scope::Global, |e| e.scope);
    match (svc_label, ns_label) {
        (Some(v), _) => Line::ok(
            Rule::G1,
            &f.name,
            format!(
                "{} exports {}/{} as {hostname}: label {}={v} on the Service; {} is in {segment}",
                f.name,
                key.namespace,
                key.name,
                labels::SERVICE_SCOPE,
                f.name
            ),
        )
        .object(obj)
        .field(field, Some(v)),
        (None, Some(v)) => Line::ok(
            Rule::G2,
            &f.name,
            format!(
                "{} exports {}/{} as {hostname}: label {}={v} on Namespace {}; {} is in {segment}",
                f.name,
                key.namespace,
                key.name,
                labels::SERVICE_SCOPE,
                key.namespace,
                f.name
            ),
        )
        .object(format!("namespace {}", key.namespace))
        .field(field, Some(v)),
        (None, None) => Line::ok(
            Rule::G1,
            &f.name,
            format!(
                "{} exports {}/{} as {hostname} ({scope} scope); {} is in {segment}",
                f.name, key.namespace, key.name, f.name
            ),
        ),
    }
}

/// The Service's and its Namespace's `solo.io/service-scope` values.
fn scope_labels<'a>(snap: &'a ClusterSnapshot, key: &NsName) -> (Option<&'a str>, Option<&'a str>) {
    let svc = snap
        .services
        .get(key)
        .and_then(|s| label(&s.metadata.labels, labels::SERVICE_SCOPE));
    let ns = snap
        .namespaces
        .get(&key.namespace)
        .and_then(|n| label(&n.metadata.labels, labels::SERVICE_SCOPE));
    (svc, ns)
}

fn label<'a>(labels: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    labels.as_ref()?.get(key).map(String::as_str)
}

/// Labels that look like `solo.io/service-scope` but are not it.
fn near_misses(labels: &Option<BTreeMap<String, String>>) -> Vec<(String, String)> {
    let squash = |s: &str| {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let want = squash(labels::SERVICE_SCOPE);
    labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != labels::SERVICE_SCOPE)
        .filter(|(k, _)| {
            let k = squash(k);
            k == want || k.ends_with("servicescope") || edit_distance(&k, &want) <= 2
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Levenshtein distance, for short label keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The first rule that keeps cluster `f`'s Service `key` out of `from`'s
/// catalog under `hostname` (empty: any hostname). `listed`: the name exists
/// (from other clusters), so this is about `f`'s part.
fn why_not(
    from: &ClusterFacts,
    catalog: &GlobalCatalog,
    f: &ClusterFacts,
    key: &NsName,
    hostname: &str,
    listed: bool,
) -> Vec<Line> {
    let me = from.name.as_str();
    let c = f.name.as_str();
    let svc_obj = format!("service {}/{}", key.namespace, key.name);
    let field = format!("metadata.labels[{}]", labels::SERVICE_SCOPE);
    let Some(exported) = f.export.services.get(key) else {
        // Not exported: say which label (not) does it.
        let (svc_label, ns_label) = scope_labels(&f.snapshot, key);
        let svc: Option<&Service> = f.snapshot.services.get(key);
        return vec![match (svc_label, ns_label) {
            (Some("cluster"), _) => Line::not(
                Rule::G3,
                c,
                format!(
                    "{c} keeps {}/{} to itself: label {}=cluster on the Service",
                    key.namespace,
                    key.name,
                    labels::SERVICE_SCOPE
                ),
            )
            .object(svc_obj)
            .field(field, Some("cluster")),
            (Some(v), _) => Line::not(
                Rule::G5,
                c,
                format!(
                    "{c} does not export {}/{}: label {}={v:?} on the Service is not one of global, segment, cluster",
                    key.namespace,
                    key.name,
                    labels::SERVICE_SCOPE
                ),
            )
            .object(svc_obj)
            .field(field, Some(v)),
            (None, Some(v)) if v != "global" && v != "segment" => Line::not(
                Rule::G5,
                c,
                format!(
                    "{c} does not export {}/{}: label {}={v:?} on Namespace {} is not one of global, segment, cluster",
                    key.namespace,
                    key.name,
                    labels::SERVICE_SCOPE,
                    key.namespace
                ),
            )
            .object(format!("namespace {}", key.namespace))
            .field(field, Some(v)),
            (None, Some(_)) => {
                // Labelled, yet not exported: the export's own findings say why.
                let reasons: Vec<String> = f
                    .export
                    .diagnostics
                    .iter()
                    .filter(|d| {
                        d.object.namespace.as_deref() == Some(key.namespace.as_str())
                            && d.object.name == key.name
                    })
                    .map(|d| format!("[{}] {}", d.rule, d.message))
                    .collect();
                Line::not(
                    Rule::G1,
                    c,
                    format!(
                        "{c} does not export {}/{} although Namespace {} is labelled: {}",
                        key.namespace,
                        key.name,
                        key.namespace,
                        if reasons.is_empty() {
                            "no reason was found".to_owned()
                        } else {
                            reasons.join("; ")
                        }
                    ),
                )
                .object(svc_obj)
            }
            (None, None) => {
                let mut misses = near_misses(&svc.and_then(|s| s.metadata.labels.clone()));
                let ns_labels = f
                    .snapshot
                    .namespaces
                    .get(&key.namespace)
                    .and_then(|n| n.metadata.labels.clone());
                misses.extend(near_misses(&ns_labels));
                let hint = match misses.first() {
                    Some((k, v)) => format!(" (label {k}={v} is not {}: misspelt?)", labels::SERVICE_SCOPE),
                    None => String::new(),
                };
                Line::not(
                    Rule::G1,
                    c,
                    format!(
                        "{c} does not export {}/{}: neither the Service nor Namespace {} has label {}{hint}",
                        key.namespace,
                        key.name,
                        key.namespace,
                        labels::SERVICE_SCOPE
                    ),
                )
                .object(svc_obj)
                .field(field, None)
            }
        }];
    };
    let mut out = Vec::new();
    if !hostname.is_empty() && exported.hostname != hostname {
        let segment = f
            .export
            .cluster
            .segment
            .as_ref()
            .map(|s| format!("segment {} (domain {})", s.name, s.domain))
            .unwrap_or_else(|| format!("the default segment ({})", labels::DEFAULT_DOMAIN));
        out.push(
            Line::not(
                Rule::S3,
                c,
                format!(
                    "{c} exports {}/{} as {}, not {hostname}: {c} is in {segment}",
                    key.namespace, key.name, exported.hostname
                ),
            )
            .object(svc_obj.clone()),
        );
        if !listed {
            return out;
        }
    }
    if c == me {
        return out;
    }
    // S7: segment scope stays in the exporter's segment.
    let my_segment = catalog.cluster.segment_name();
    if exported.scope == Scope::Segment && f.export.cluster.segment_name() != my_segment {
        out.push(
            Line::not(
                Rule::S7,
                c,
                format!(
                    "{}/{} has scope segment in {c} ({}), and {me} is in {}",
                    key.namespace,
                    key.name,
                    f.export
                        .cluster
                        .segment_name()
                        .unwrap_or("the default segment"),
                    my_segment.unwrap_or("the default segment")
                ),
            )
            .object(svc_obj.clone())
            .field(
                format!("metadata.labels[{}]", labels::SERVICE_SCOPE),
                Some("segment"),
            ),
        );
        return out;
    }
    // C4: only a link from `from` teaches it.
    if !catalog.links.iter().any(|l| l.cluster == c) {
        let reverse = f.catalog.links.iter().any(|l| l.cluster == me);
        out.push(Line::not(
            Rule::C4,
            me,
            format!(
                "{me} has no link to {c} (no Gateway {}/{}{c}){}",
                labels::ISTIO_EASTWEST,
                labels::PEER_GATEWAY_PREFIX,
                if reverse {
                    format!(
                        "; {c} links to {me}, but a link only teaches the cluster that declares it"
                    )
                } else {
                    String::new()
                }
            ),
        ));
        return out;
    }
    // P2, P3: what this cluster refuses of the peer.
    if let Some(r) = catalog.refused_peers.iter().find(|r| r.cluster == c) {
        let name = format!("{}/{}", key.namespace, key.name);
        if r.whole || r.services.contains(&name) {
            out.push(Line::not(
                r.rule,
                me,
                format!("{me} refuses it from {c}: {}", r.message),
            ));
            return out;
        }
    }
    let states = peer_state(from, c);
    if !states.is_empty() {
        out.extend(states);
        return out;
    }
    if out.is_empty() {
        out.push(Line::not(
            Rule::G8,
            c,
            format!(
                "{c} exports {}/{} as {} and {me} links to {c}, but {me}'s catalog does not hold it; see `meshpeer check`",
                key.namespace, key.name, exported.hostname
            ),
        ));
    }
    out
}

/// How `from` reaches a contributing cluster.
fn reach_line(
    from: &ClusterFacts,
    catalog: &GlobalCatalog,
    cluster: &str,
    reach: Reach,
    network: &str,
) -> Line {
    let me = from.name.as_str();
    match reach {
        Reach::Local => Line {
            rule: None,
            ..Line::ok(
                Rule::C4,
                me,
                format!("{me}'s own endpoints, dialled directly"),
            )
        },
        Reach::Direct => Line::ok(
            Rule::C4,
            me,
            format!(
                "{me} links to {cluster}; same network ({network}): its pods are dialled directly"
            ),
        ),
        Reach::Gateway => {
            let via = catalog
                .links
                .iter()
                .find(|l| l.cluster == cluster)
                .map(|l| {
                    let addrs: Vec<String> = l
                        .addresses
                        .iter()
                        .map(|a| format!("{}:{}", a.value, l.hbone_port))
                        .collect();
                    format!(
                        " (Gateway {}/{}), through its east-west gateway {} over HBONE",
                        l.gateway.namespace,
                        l.gateway.name,
                        addrs.join(", ")
                    )
                })
                .unwrap_or_default();
            Line::ok(
                Rule::C4,
                me,
                format!("{me} links to {cluster}{via}; network {network}"),
            )
        }
    }
}

/// What the live controller says of the link to `peer`, when it is not
/// plainly synced.
fn peer_state(from: &ClusterFacts, peer: &str) -> Vec<Line> {
    let Some(state) = from.live.state() else {
        return Vec::new();
    };
    let me = from.name.as_str();
    let Some(p) = state.status.peers.iter().find(|p| p.cluster == peer) else {
        return Vec::new();
    };
    if p.stale {
        return vec![Line::not(
            Rule::C5,
            peer,
            format!(
                "the link to {peer} is down; {me} keeps {peer}'s last export until the grace period ends ({})",
                p.last_error.as_deref().unwrap_or("no error given")
            ),
        )];
    }
    match p.state {
        LinkState::Synced => Vec::new(),
        other => vec![Line::not(
            Rule::C5,
            peer,
            format!(
                "the link to {peer} is {} ({})",
                other.as_str(),
                p.last_error.as_deref().unwrap_or("no error given")
            ),
        )],
    }
}

/// The effective distribution, and why it is that.
fn distribution(catalog: &GlobalCatalog, svc: &GlobalService) -> Distribution {
    let value = svc.distribution.to_string();
    let obj_matches = |d: &&meshpeer_model::Diagnostic| {
        d.object.namespace.as_deref() == Some(svc.namespace.as_str()) && d.object.name == svc.name
    };
    if let Some(d) = catalog
        .diagnostics
        .iter()
        .filter(obj_matches)
        .find(|d| d.rule == Rule::K3)
    {
        return Distribution {
            value,
            rule: Rule::K3,
            source: d.message.clone(),
        };
    }
    if let Some(d) = catalog
        .diagnostics
        .iter()
        .filter(obj_matches)
        .find(|d| d.rule == Rule::T1)
    {
        return Distribution {
            value,
            rule: Rule::T1,
            source: d.message.clone(),
        };
    }
    let annotated: Vec<String> = svc
        .contributions
        .iter()
        .filter_map(|c| {
            c.service
                .traffic_distribution
                .map(|d| format!("{}={d}", c.cluster))
        })
        .collect();
    let source = if svc.taken_over && annotated.is_empty() {
        "takeover: PreferNetwork is not allowed for a taken-over service, PreferClose is used"
            .to_owned()
    } else if annotated.is_empty() {
        format!(
            "the default: no cluster sets annotation {}",
            labels::TRAFFIC_DISTRIBUTION
        )
    } else {
        format!(
            "annotation {} ({})",
            labels::TRAFFIC_DISTRIBUTION,
            annotated.join(", ")
        )
    };
    Distribution {
        value,
        rule: if svc.taken_over && annotated.is_empty() {
            Rule::K3
        } else {
            Rule::T1
        },
        source,
    }
}

/// The tiers the proxy of `catalog`'s cluster tries, in order.
fn tiers(catalog: &GlobalCatalog, svc: &GlobalService, port: Option<u16>, out: &mut Explanation) {
    let me = &catalog.cluster;
    out.client = Some(format!(
        "network {}, locality {}",
        me.network,
        non_empty(&me.locality.to_istio())
    ));
    let client = ClientLocation {
        network: &me.network,
        locality: &me.locality,
    };
    let first_port = svc.ports.first().map(|p| p.number);
    for tier in rank(svc, &client) {
        let mut groups = Vec::new();
        for g in tier {
            let serving: Vec<_> = g
                .endpoints
                .iter()
                .filter(|e| port.is_none_or(|p| e.target(p).is_some()))
                .collect();
            if serving.is_empty() {
                continue;
            }
            let via = if g.reach == Reach::Gateway {
                catalog
                    .links
                    .iter()
                    .find(|l| l.cluster == g.cluster)
                    .map(|l| {
                        l.addresses
                            .iter()
                            .map(|a| format!("{}:{}", a.value, l.hbone_port))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let endpoints = if g.reach == Reach::Gateway {
                Vec::new()
            } else {
                serving
                    .iter()
                    .map(|e| EndpointLine {
                        name: e.name.clone(),
                        address: e.address.to_string(),
                        port: port.or(first_port).and_then(|p| e.target(p)),
                        ejected_ms: None,
                    })
                    .collect()
            };
            groups.push(Group {
                cluster: g.cluster.to_owned(),
                network: g.network.to_owned(),
                locality: g.locality.to_istio(),
                reach: g.reach,
                via,
                ready: serving.len(),
                ejected_ms: None,
                endpoints,
            });
        }
        if !groups.is_empty() {
            out.tiers.push(Tier { groups });
        }
    }
}

fn non_empty(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

#[cfg(test)]
mod tests;
