//! L7 routes compiled from HTTPRoutes (SPEC section 11): what attaches
//! where, what resolves, the order of rules, and a clear finding for every
//! route that cannot be used as written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshpeer_model::routes::{BackendTarget, PathMatch, RouteFilter, parse_duration_ms};
use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::{CatalogConfig, GlobalCatalog, Rule, catalog, parse_documents};

/// cluster1 with `web` (global, HTTP 8080 and TCP 9000), `api` (global,
/// HTTP 80), `local` (not global, ClusterIP) in namespace `shop`, and the
/// given documents.
fn view(yaml: &str) -> GlobalCatalog {
    let parsed = parse_documents("routes.yaml", yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut b = ClusterBuilder::new("cluster1")
        .service(
            svc("shop", "web")
                .global()
                .port("http", 8080, 8080)
                .port("tcp-db", 9000, 9000)
                .ready(1),
        )
        .service(svc("shop", "api").global().port("http", 80, 8080).ready(1))
        .service(
            svc("shop", "local")
                .port("http", 80, 8080)
                .cluster_ip("10.96.0.7")
                .ready(1),
        );
    for o in parsed.objects {
        b = b.object(o);
    }
    catalog(&b.build(), &[], &CatalogConfig::default())
}

fn route(name: &str, parent: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  parentRefs: [{parent}]\n  rules:\n{rules}"
    )
}

const WEB: &str = "{kind: Service, group: \"\", name: web}";
const API: &str = "shop-api.example";

fn finding<'a>(c: &'a GlobalCatalog, name: &str) -> Vec<&'a str> {
    c.diagnostics
        .iter()
        .filter(|d| d.object.name == name && matches!(d.rule, Rule::L2 | Rule::L7))
        .map(|d| d.message.as_str())
        .collect()
}

fn accepted(c: &GlobalCatalog, name: &str) -> (String, String) {
    let s = c.route_status.iter().find(|s| s.name == name).unwrap();
    let a = s.condition(0, "Accepted").unwrap();
    (a.status.clone(), a.reason.clone().unwrap_or_default())
}

#[test]
fn l1_l6_a_service_parent_routes_its_http_ports_only() {
    let c = view(&route(
        "r",
        WEB,
        "  - backendRefs: [{group: networking.istio.io, kind: Hostname, name: api.shop.mesh.internal, port: 80}]\n",
    ));
    let frontends: Vec<(String, u16)> = c.routes.iter().map(|t| (t.host.clone(), t.port)).collect();
    // 9000 is TCP: it stays L4.
    assert_eq!(frontends, [("web.shop.mesh.internal".to_owned(), 8080)]);
    let rule = &c.routes[0].rules[0];
    assert_eq!(rule.matches.path, PathMatch::PathPrefix("/".into()));
    assert_eq!(
        rule.backends[0].target,
        BackendTarget::Global {
            hostname: "api.shop.mesh.internal".into(),
            port: 80
        }
    );
    assert_eq!(accepted(&c, "r"), ("True".into(), "Accepted".into()));

    // A parentRef port that is not HTTP: not accepted, and why.
    let c = view(&route(
        "tcp",
        "{kind: Service, group: \"\", name: web, port: 9000}",
        "  - backendRefs: [{name: api, port: 80}]\n",
    ));
    assert!(c.routes.is_empty());
    assert_eq!(
        accepted(&c, "tcp"),
        ("False".into(), "NoMatchingParent".into())
    );
    let f = finding(&c, "tcp");
    assert!(
        f[0].contains("no HTTP port 9000") && f[0].contains("9000 (TCP)"),
        "{f:?}"
    );
}

#[test]
fn l2_service_backends_resolve_to_global_names_or_cluster_ips_and_other_namespaces_are_refused() {
    let c = view(&route(
        "r",
        WEB,
        "  - backendRefs:\n    - {name: api, port: 80}\n    - {name: local, port: 80, weight: 3}\n    - {name: api, namespace: other, port: 80}\n    - {name: ghost, port: 80}\n    - {group: example.com, kind: Bucket, name: b, port: 1}\n    - {name: api, port: 81}\n    - {name: api, port: 80, weight: 0}\n",
    ));
    let backends: Vec<(&BackendTarget, u32)> = c.routes[0].rules[0]
        .backends
        .iter()
        .map(|b| (&b.target, b.weight))
        .collect();
    // Weight 0 is left out.
    assert_eq!(backends.len(), 6);
    assert_eq!(
        backends[0],
        (
            &BackendTarget::Global {
                hostname: "api.shop.mesh.internal".into(),
                port: 80
            },
            1
        )
    );
    assert_eq!(
        backends[1],
        (
            &BackendTarget::ClusterIp {
                service: "local.shop.svc".into(),
                ip: "10.96.0.7".into(),
                port: 80
            },
            3
        )
    );
    let reasons: Vec<&str> = backends[2..]
        .iter()
        .map(|(t, _)| match t {
            BackendTarget::Unresolved { reason, .. } => reason.split(':').next().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "RefNotPermitted",
            "BackendNotFound",
            "InvalidKind",
            "BackendNotFound"
        ]
    );
    let s = c.route_status.iter().find(|s| s.name == "r").unwrap();
    let r = s.condition(0, "ResolvedRefs").unwrap();
    assert_eq!(
        (r.status.as_str(), r.reason.as_deref()),
        ("False", Some("RefNotPermitted"))
    );
    // The message names every bad reference by its field.
    for part in [
        "backendRefs[2]",
        "backendRefs[3]",
        "backendRefs[4]",
        "backendRefs[5]",
    ] {
        assert!(
            r.message.as_deref().unwrap().contains(part),
            "{part}: {r:?}"
        );
    }
    // Still accepted: the good backends serve their share.
    assert_eq!(accepted(&c, "r"), ("True".into(), "Accepted".into()));
}

#[test]
fn l3_rules_are_ordered_as_the_gateway_api_says_across_routes() {
    let yaml = [
        route(
            "b-second",
            WEB,
            "  - matches: [{path: {type: PathPrefix, value: /a}}]\n    backendRefs: [{name: api, port: 80}]\n",
        ),
        route(
            "a-first",
            WEB,
            "  - matches: [{path: {type: PathPrefix, value: /a}}]\n    backendRefs: [{name: api, port: 80}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /a/b/}}, {path: {type: Exact, value: /a}}]\n    backendRefs: [{name: api, port: 80}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /a}, headers: [{name: x, value: z}]}]\n    backendRefs: [{name: api, port: 80}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /a}, method: GET}]\n    backendRefs: [{name: api, port: 80}]\n\
             \x20 - matches: [{path: {type: RegularExpression, value: \"/a/[0-9]+\"}}]\n    backendRefs: [{name: api, port: 80}]\n",
        ),
    ]
    .join("---\n");
    let c = view(&yaml);
    let order: Vec<String> = c.routes[0]
        .rules
        .iter()
        .map(|r| format!("{}#{} {:?}", r.route, r.rule, r.matches.path))
        .collect();
    assert_eq!(
        order,
        [
            "shop/a-first#1 Exact(\"/a\")",
            "shop/a-first#4 RegularExpression(\"/a/[0-9]+\")",
            // Longest prefix first; a trailing slash is the same prefix.
            "shop/a-first#1 PathPrefix(\"/a/b\")",
            // Same prefix: a method, then more headers, then the route's
            // age and name, then the order in the route.
            "shop/a-first#3 PathPrefix(\"/a\")",
            "shop/a-first#2 PathPrefix(\"/a\")",
            "shop/a-first#0 PathPrefix(\"/a\")",
            "shop/b-second#0 PathPrefix(\"/a\")",
        ]
    );
}

#[test]
fn l3_l4_l5_what_cannot_be_used_is_refused_whole_with_the_field_and_value() {
    let cases = [
        (
            "  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n    backendRefs: [{name: api, port: 80}]\n",
            "spec.rules[0].matches[0]: regular expression \"(\" does not compile",
        ),
        (
            "  - matches: [{path: {type: Exact, value: nope}}]\n    backendRefs: [{name: api, port: 80}]\n",
            "path value \"nope\" must start with '/'",
        ),
        (
            "  - matches: [{path: {type: Glob, value: /x}}]\n    backendRefs: [{name: api, port: 80}]\n",
            "path type \"Glob\" is not one of Exact, PathPrefix, RegularExpression",
        ),
        (
            "  - matches: [{headers: [{name: \"bad header\", value: x}]}]\n    backendRefs: [{name: api, port: 80}]\n",
            "\"bad header\" is not a valid header name",
        ),
        (
            "  - matches: [{method: FETCH}]\n    backendRefs: [{name: api, port: 80}]\n",
            "method \"FETCH\" is not one of",
        ),
        (
            "  - timeouts: {request: 10 seconds}\n    backendRefs: [{name: api, port: 80}]\n",
            "spec.rules[0].timeouts.request: \"10 seconds\" is not a Gateway API duration",
        ),
        (
            "  - timeouts: {request: 1s, backendRequest: 2s}\n    backendRefs: [{name: api, port: 80}]\n",
            "backendRequest (2000 ms) may not be longer than request (1000 ms)",
        ),
        (
            "  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]\n",
            "redirect statusCode 304 is not one of 301, 302, 303, 307, 308",
        ),
        (
            "  - filters: [{type: RequestRedirect, requestRedirect: {}}]\n    backendRefs: [{name: api, port: 80}]\n",
            "a RequestRedirect rule has no backendRefs",
        ),
        (
            "  - filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]\n    backendRefs: [{name: api, port: 80}]\n",
            "filter type \"ExtensionRef\" is not supported",
        ),
        (
            "  - filters: [{type: RequestHeaderModifier}]\n    backendRefs: [{name: api, port: 80}]\n",
            "filter RequestHeaderModifier needs its field requestHeaderModifier",
        ),
        (
            "  - matches: [{path: {type: Exact, value: /x}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /y}}}]\n    backendRefs: [{name: api, port: 80}]\n",
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
        ),
        (
            "  - backendRefs: [{name: api, port: 80, weight: -1}]\n",
            "weight -1 is not 0-1000000",
        ),
    ];
    for (rules, message) in cases {
        let c = view(&route("bad", WEB, rules));
        assert!(c.routes.is_empty(), "{rules}: {:?}", c.routes);
        let (status, reason) = accepted(&c, "bad");
        assert_eq!(status, "False", "{rules}");
        assert!(
            ["UnsupportedValue", "IncompatibleFilters"].contains(&reason.as_str()),
            "{rules}: {reason}"
        );
        let f = finding(&c, "bad");
        assert!(f.iter().any(|m| m.contains(message)), "{rules}: {f:?}");
    }
}

#[test]
fn l1_service_entry_parents_route_the_hosts_the_data_plane_serves() {
    let entry = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: shop}\n\
                 spec:\n  hosts: [shop-api.example]\n  addresses: [127.253.0.9]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
                 \x20 ports: [{name: http, number: 80, protocol: HTTP}]\n  endpoints: [{address: 10.0.0.9}]\n---\n";
    let c = view(&format!(
        "{entry}{}",
        route(
            "r",
            "{group: networking.istio.io, kind: ServiceEntry, name: ext}",
            "  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: b}]}}]\n    backendRefs: [{name: api, port: 80}]\n",
        )
    ));
    assert_eq!(c.routes.len(), 1, "{:?}", c.diagnostics);
    assert_eq!((c.routes[0].host.as_str(), c.routes[0].port), (API, 80));
    assert!(matches!(
        c.routes[0].rules[0].filters[0],
        RouteFilter::RequestHeaderModifier(_)
    ));
}

#[test]
fn l1_routes_in_another_namespace_or_to_missing_or_unexported_parents_are_not_accepted() {
    let yaml = [
        route(
            "missing",
            "{kind: Service, group: \"\", name: nothere}",
            "  - backendRefs: [{name: api, port: 80}]\n",
        ),
        route(
            "not-global",
            "{kind: Service, group: \"\", name: local}",
            "  - backendRefs: [{name: api, port: 80}]\n",
        ),
        route(
            "section",
            "{kind: Service, group: \"\", name: web, sectionName: http}",
            "  - backendRefs: [{name: api, port: 80}]\n",
        ),
        route(
            "gateway",
            "{name: ingress}",
            "  - backendRefs: [{name: api, port: 80}]\n",
        ),
    ]
    .join("---\n");
    let c = view(&yaml);
    assert!(c.routes.is_empty());
    assert_eq!(
        accepted(&c, "missing"),
        ("False".into(), "NoMatchingParent".into())
    );
    assert_eq!(
        accepted(&c, "not-global"),
        ("False".into(), "NoMatchingParent".into())
    );
    assert!(finding(&c, "not-global")[0].contains("is not global (label solo.io/service-scope)"));
    assert_eq!(
        accepted(&c, "section"),
        ("False".into(), "UnsupportedValue".into())
    );
    // A Gateway's route is another controller's business: no status.
    assert!(c.route_status.iter().all(|s| s.name != "gateway"));
}

#[test]
fn l5_durations_are_read_as_the_gateway_api_writes_them() {
    assert_eq!(parse_duration_ms("500ms"), Some(500));
    assert_eq!(parse_duration_ms("10s"), Some(10_000));
    assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
    assert_eq!(parse_duration_ms("1m1s1ms"), Some(61_001));
    assert_eq!(parse_duration_ms("0s"), Some(0));
    for bad in ["", "10", "s", "1d", "1.5s", "123456s", "1h1m1s1ms1h", "-1s"] {
        assert_eq!(parse_duration_ms(bad), None, "{bad}");
    }
}

#[test]
fn l1_a_parent_ref_port_attaches_to_that_port_only() {
    let parsed = parse_documents(
        "r.yaml",
        &route(
            "r",
            "{kind: Service, group: \"\", name: two, port: 8081}",
            "  - backendRefs: [{name: api, port: 80}]\n",
        ),
    );
    let mut b = ClusterBuilder::new("cluster1")
        .service(
            svc("shop", "two")
                .global()
                .port("http", 8080, 8080)
                .port("http-admin", 8081, 8081)
                .ready(1),
        )
        .service(svc("shop", "api").global().port("http", 80, 8080).ready(1));
    for o in parsed.objects {
        b = b.object(o);
    }
    let c = catalog(&b.build(), &[], &CatalogConfig::default());
    let frontends: Vec<(String, u16)> = c.routes.iter().map(|t| (t.host.clone(), t.port)).collect();
    assert_eq!(frontends, [("two.shop.mesh.internal".to_owned(), 8081)]);
}

#[test]
fn l7_a_route_with_some_bad_rules_keeps_its_good_ones_and_says_it_is_partially_invalid() {
    let c = view(&route(
        "mixed",
        WEB,
        "  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n    backendRefs: [{name: api, port: 80}]\n\
         \x20 - matches: [{path: {value: /good}}]\n    backendRefs: [{name: api, port: 80}]\n",
    ));
    // Only rule 1 is routed.
    let rules: Vec<usize> = c.routes[0].rules.iter().map(|r| r.rule).collect();
    assert_eq!(rules, [1]);
    assert_eq!(accepted(&c, "mixed"), ("True".into(), "Accepted".into()));
    let s = c.route_status.iter().find(|s| s.name == "mixed").unwrap();
    let p = s.condition(0, "PartiallyInvalid").unwrap();
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref()),
        ("True", Some("UnsupportedValue"))
    );
    assert!(
        p.message
            .as_deref()
            .unwrap()
            .contains("spec.rules[0].matches[0]: regular expression \"(\" does not compile"),
        "{p:?}"
    );
    let f = finding(&c, "mixed");
    assert!(
        f.iter()
            .any(|m| m.starts_with("rules left out (the others are routed)")),
        "{f:?}"
    );
}
