//! The Routes Check (SPEC L7): each HTTPRoute of a cluster with the status
//! meshpeer gives it per parent, the frontends it routes, and what to do
//! about a route that is not accepted, a backend that does not resolve, or
//! a rule another route shadows. Only shown for clusters with HTTPRoutes.

use meshpeer_model::routes::{CONFLICTED, RouteStatus};

use super::facts::ClusterFacts;
use super::{Check, Item, Status, names};

pub(super) fn check(f: &ClusterFacts) -> Option<Check> {
    if f.snapshot.http_routes.is_empty() {
        return None;
    }
    let mut items = Vec::new();
    for st in &f.catalog.route_status {
        for (i, parent) in st.parents.iter().enumerate() {
            items.push(item(f, st, i, parent));
        }
    }
    let handled = f.catalog.route_status.len();
    let others = f.snapshot.http_routes.len() - handled;
    if others > 0 {
        items.push(Item::info(format!(
            "{others} other HTTPRoute(s) attach only to parents meshpeer does not route (Gateways): their controllers report them"
        )));
    }
    let frontends = f.catalog.routes.len();
    let mut check = Check::from_items(Some(&f.name), names::ROUTES, items, |_| String::new());
    if check.status == Status::Info {
        check.status = Status::Ok;
    }
    check.title = super::cluster::title_of(
        &check.items,
        check.status,
        format!("{handled} route(s) accepted, routing {frontends} frontend(s) at L7"),
    );
    Some(check)
}

fn item(
    f: &ClusterFacts,
    st: &RouteStatus,
    i: usize,
    parent: &meshpeer_model::objects::RouteParentStatus,
) -> Item {
    let p = &parent.parent_ref;
    let name = format!(
        "httproute {}/{} -> {} {}/{}{}",
        st.namespace,
        st.name,
        p.kind(),
        p.namespace.as_deref().unwrap_or(&st.namespace),
        p.name,
        p.port.map(|n| format!(":{n}")).unwrap_or_default()
    );
    let cond = |t: &str| st.condition(i, t);
    let why = |c: &meshpeer_model::objects::Condition| {
        format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or_default(),
            c.message.as_deref().unwrap_or_default()
        )
    };
    let fix_route = format!(
        "edit the route (kubectl edit httproute -n {} {}) or what it names",
        st.namespace, st.name
    );
    if let Some(a) = cond("Accepted").filter(|c| c.status != "True") {
        return Item::fail(format!("{name}: not accepted, {}", why(a)), fix_route);
    }
    if let Some(r) = cond("ResolvedRefs").filter(|c| c.status != "True") {
        return Item::fail(
            format!(
                "{name}: accepted, but a backend does not resolve (its share of requests gets 500), {}",
                why(r)
            ),
            fix_route,
        );
    }
    if let Some(p) = cond("PartiallyInvalid").filter(|c| c.status == "True") {
        return Item::warn(
            format!("{name}: accepted, but some rules are left out, {}", why(p)),
            fix_route,
        );
    }
    if let Some(c) = cond(CONFLICTED) {
        return Item::warn(format!("{name}: accepted, {}", why(c)), fix_route);
    }
    // Which frontends carry its rules.
    let route = format!("{}/{}", st.namespace, st.name);
    let frontends: Vec<String> = f
        .catalog
        .routes
        .iter()
        .filter(|t| t.rules.iter().any(|r| r.route == route))
        .map(|t| format!("{}:{}", t.host, t.port))
        .collect();
    Item::ok(format!(
        "{name}: accepted, every backend resolves; routes {}",
        frontends.join(", ")
    ))
}
