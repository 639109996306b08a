//! Checks of one cluster: the order they run in, and those that need only
//! its objects and cacerts (configuration, east-west gateway, shared
//! services). The running parts are in `live`, the links in `peers`.

use std::time::{Duration, SystemTime};

use meshpeer_model::objects::{Gateway, label};
use meshpeer_model::{NsName, labels};

use super::facts::{CACERTS_KEYS, CACERTS_SECRET, CaFacts, CaPlace, ClusterFacts, Origin};
use super::{Check, Item, Options, Status, diagnostics, live, names, peers, routes};

/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Every check of cluster `f`; `all`: every cluster checked (for links).
pub(super) fn checks(f: &ClusterFacts, all: &[ClusterFacts], opts: Options) -> Vec<Check> {
    let mut out = vec![configuration(f)];
    if !opts.precheck {
        out.push(live::controller(f));
        out.push(live::data_plane(f));
    }
    out.push(gateway(f));
    if !opts.precheck {
        out.push(peers::peers(f, all));
        out.push(shared_services(f));
    }
    out.extend(routes::check(f));
    out.push(diagnostics::check(f));
    out
}

/// The title of a check: the first item of the worst status when there is a
/// problem, else `ok`.
pub(super) fn title_of(items: &[Item], status: Status, ok: impl Into<String>) -> String {
    if status.is_problem()
        && let Some(i) = items.iter().find(|i| i.status == status)
    {
        return i.text.clone();
    }
    ok.into()
}

pub(super) fn date(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|ts| ts.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The root fingerprint as `sha256sum` prints digests (the seed's look).
pub(super) fn sha256_sum(openssl_style: &str) -> String {
    openssl_style.replace(':', "").to_ascii_lowercase()
}

/// Rows as aligned columns, three spaces apart (as `meshpeer status`).
pub(super) fn table(rows: &[Vec<String>]) -> Vec<String> {
    let mut widths = vec![0usize; rows.first().map_or(0, Vec::len)];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (cell, w) in row.iter().zip(&widths) {
                line.push_str(cell);
                line.push_str(&" ".repeat(w + 3 - cell.chars().count()));
            }
            line.trim_end().to_owned()
        })
        .collect()
}

fn segment_text(f: &ClusterFacts) -> String {
    match &f.export.cluster.segment {
        Some(s) => format!("segment {} ({})", s.name, s.domain),
        None => format!("default segment ({})", labels::DEFAULT_DOMAIN),
    }
}

/// How to make the cluster's cacerts where it reads them from; `replace`:
/// something unusable is there already.
pub(super) fn make_cacerts(f: &ClusterFacts, replace: bool) -> String {
    let certs = |out: &str| {
        format!(
            "meshpeer certs cluster {} --root ROOT_DIR --out {out}",
            f.name
        )
    };
    match f.ca_place() {
        CaPlace::Folder(d) => certs(&d.display().to_string()),
        CaPlace::Secret { context } => {
            let kubectl = format!("kubectl --context {context} -n {}", labels::ISTIO_SYSTEM);
            let files: Vec<String> = CACERTS_KEYS
                .iter()
                .map(|k| format!("--from-file=NEW_DIR/{k}"))
                .collect();
            let delete = if replace {
                format!("{kubectl} delete secret {CACERTS_SECRET}, then ")
            } else {
                String::new()
            };
            format!(
                "{}, then {delete}{kubectl} create secret generic {CACERTS_SECRET} {}",
                certs("NEW_DIR"),
                files.join(" ")
            )
        }
    }
}

/// What to do when a cluster's cacerts cannot be compared with the others'.
pub(super) fn cacerts_fix(f: &ClusterFacts) -> String {
    match f.ca_place() {
        CaPlace::Folder(_) => format!("give --cacerts DIR for cluster {}", f.name),
        CaPlace::Secret { .. } => format!(
            "see cluster {}'s Configuration Check, or give --cacerts DIR (the files of its {}/{CACERTS_SECRET} Secret)",
            f.name,
            labels::ISTIO_SYSTEM
        ),
    }
}

fn configuration(f: &ClusterFacts) -> Check {
    let c = &f.export.cluster;
    let mut items = vec![Item::ok(format!(
        "cluster {}: network {}, trust domain {}, {}",
        c.name,
        c.network,
        c.trust_domain,
        segment_text(f)
    ))];
    let ns_network = f
        .snapshot
        .namespaces
        .get(labels::ISTIO_SYSTEM)
        .and_then(|ns| label(&ns.metadata, labels::NETWORK))
        .filter(|n| !n.is_empty());
    if let (Some(l), Some(cfg)) = (ns_network, f.snapshot.config.network.as_deref())
        && l != cfg
    {
        items.push(Item::warn(
            format!(
                "cluster.yaml says network {cfg} but namespace {} is labelled {}={l}; the label wins",
                labels::ISTIO_SYSTEM,
                labels::NETWORK
            ),
            format!(
                "make them agree: `network: {l}` in {}/cluster.yaml, or label namespace {} {}={cfg}",
                f.source_hint(),
                labels::ISTIO_SYSTEM,
                labels::NETWORK
            ),
        ));
    }
    let make = make_cacerts(f, false);
    let mut detail = vec![
        format!("Cluster: {}", c.name),
        format!("Source: {}", f.origin.describe()),
        format!("Network: {}", c.network),
        format!("Trust domain: {}", c.trust_domain),
        format!("Segment: {}", segment_text(f)),
        format!("Locality: {}", c.locality),
    ];
    match &f.ca {
        CaFacts::Loaded { at, ca } => {
            let now = SystemTime::now();
            let root = ca.trust_root();
            detail.push(format!("Cacerts: {at}"));
            detail.push(format!("  intermediate valid until {}", date(ca.not_after())));
            detail.push(format!(
                "  intermediate bound to trust domain: {}",
                ca.binding().unwrap_or("(none)")
            ));
            detail.push(format!(
                "  intermediate bound to cluster: {}",
                ca.cluster_binding().unwrap_or("(none)")
            ));
            detail.push(format!(
                "  root valid until {}, SHA-256 {}",
                date(root.not_after()),
                root.sha256_fingerprint()
            ));
            let soon = now + EXPIRY_WARNING;
            if root.not_after() < soon {
                items.push(Item::warn(
                    format!(
                        "the shared root in {at} expires on {}",
                        date(root.not_after())
                    ),
                    "make a new root (meshpeer certs root-ca) and re-issue every cluster's intermediate from it",
                ));
            } else if ca.not_after() < soon {
                items.push(Item::warn(
                    format!(
                        "the intermediate in {at} expires on {}",
                        date(ca.not_after())
                    ),
                    match at {
                        CaPlace::Folder(_) => format!("issue a new one from the shared root into a new folder: {make}, then point the cluster at it"),
                        CaPlace::Secret { .. } => format!("issue a new one from the shared root: {}", make_cacerts(f, true)),
                    },
                ));
            } else {
                items.push(Item::ok(format!(
                    "cacerts {at}: intermediate valid until {}",
                    date(ca.not_after())
                )));
            }
            items.push(binding(f, at, ca.binding()));
            if let Some(other) = ca.cluster_binding().filter(|c| *c != f.name) {
                items.push(Item::fail(
                    format!(
                        "cacerts {at}: the intermediate is bound to cluster {other}, but this is cluster {}: its chains speak for {other}, and the controller refuses to start with it (SPEC P6)",
                        f.name
                    ),
                    format!(
                        "issue this cluster's own intermediate: meshpeer certs cluster {} --trust-domain {} --root ROOT_DIR --out NEW_DIR",
                        f.name, f.export.cluster.trust_domain
                    ),
                ));
            }
        }
        CaFacts::Broken { at, error } => items.push(Item::fail(
            format!("cacerts {at} cannot be used: {error}"),
            format!(
                "issue the cluster's intermediate from the shared root: {}",
                make_cacerts(f, true)
            ),
        )),
        CaFacts::Missing {
            looked: CaPlace::Folder(dir),
        } => items.push(Item::fail(
            format!(
                "no trust root: no cacerts for cluster {} (looked in {})",
                f.name,
                dir.display()
            ),
            format!("give --cacerts DIR for this cluster, or make them: {make}"),
        )),
        CaFacts::Missing { looked } => items.push(Item::fail(
            format!(
                "no trust root: no {looked}, so istiod of cluster {} signs with its own self-signed root, which no other cluster accepts",
                f.name
            ),
            format!(
                "make the cluster's intermediate from the shared root and store it as Istio's plug-in CA Secret: {make}, then restart istiod (or give --cacerts DIR to check a folder instead)"
            ),
        )),
        CaFacts::Unreadable { at, error } => items.push(Item::warn(
            format!("cacerts not checked: cannot read {at}: {error}"),
            format!(
                "let this user read it (kubectl auth can-i get secret/{CACERTS_SECRET} -n {}), or give --cacerts DIR (the files of the Secret)",
                labels::ISTIO_SYSTEM
            ),
        )),
    }
    let cluster = f.name.clone();
    Check::from_items(Some(&cluster), names::CONFIGURATION, items, |_| {
        String::new()
    })
    .retitle("configuration is valid")
    .with_detail(detail)
}

/// SPEC P6: the intermediate must be bound to the cluster's trust domain.
fn binding(f: &ClusterFacts, at: &CaPlace, bound: Option<&str>) -> Item {
    let td = &f.export.cluster.trust_domain;
    let reissue = || {
        let certs = format!(
            "meshpeer certs cluster {} --trust-domain {td} --root ROOT_DIR",
            f.name
        );
        match f.ca_place() {
            CaPlace::Folder(_) => format!(
                "issue the cluster's intermediate bound to its trust domain: {certs} --out NEW_DIR, then restart the controller with --cacerts NEW_DIR"
            ),
            CaPlace::Secret { .. } => format!(
                "issue the cluster's intermediate bound to its trust domain: {}",
                make_cacerts(f, true).replacen(
                    &format!("meshpeer certs cluster {} --root ROOT_DIR", f.name),
                    &certs,
                    1
                )
            ),
        }
    };
    match bound {
        Some(b) if b == td => Item::ok(format!(
            "cacerts {at}: intermediate bound to trust domain {td}"
        )),
        Some(b) => Item::fail(
            format!(
                "cacerts {at}: the intermediate is bound to trust domain {b}, but cluster {} has trust domain {td}: it cannot issue this cluster's identities, and peers refuse them (SPEC P6)",
                f.name
            ),
            reissue(),
        ),
        None => Item::warn(
            format!(
                "cacerts {at}: the intermediate is not bound to a trust domain (made before SPEC P6): a leaked key could speak for any cluster"
            ),
            reissue(),
        ),
    }
}

impl Check {
    /// Sets the title from the items (see [`title_of`]).
    pub(super) fn retitle(mut self, ok: &str) -> Self {
        self.title = title_of(&self.items, self.status, ok);
        self
    }
}

pub(super) fn eastwest(f: &ClusterFacts) -> Vec<(&NsName, &Gateway)> {
    f.snapshot
        .gateways
        .iter()
        .filter(|(_, g)| g.spec.gateway_class_name == labels::EASTWEST_CLASS)
        .collect()
}

fn gateway(f: &ClusterFacts) -> Check {
    let cluster = Some(f.name.as_str());
    let gws = eastwest(f);
    let expose = match &f.origin {
        Origin::Folder(d) => format!("meshpeer expose {} --address ADDR --write", d.display()),
        Origin::Context(c) => format!(
            "meshpeer expose ... | kubectl --context {c} apply -f -, then check that its Service gets an address (kubectl get svc -n {})",
            labels::ISTIO_EASTWEST
        ),
    };
    let Some((key, gw)) = gws.first().copied() else {
        return Check::single(
            cluster,
            names::GATEWAY,
            Status::Fail,
            format!(
                "no east-west gateway (a Gateway of class {} in namespace {})",
                labels::EASTWEST_CLASS,
                labels::ISTIO_EASTWEST
            ),
        )
        .with_fix(format!("create it: {expose}"));
    };
    let mut items = Vec::new();
    let addresses: Vec<String> = gw
        .status
        .as_ref()
        .map(|s| s.addresses.iter().map(|a| a.value.clone()).collect())
        .unwrap_or_default();
    if addresses.is_empty() {
        items.push(Item::fail(
            format!("{key} has no address: not programmed, peers cannot reach this cluster"),
            format!("give it one: {expose}"),
        ));
    } else {
        items.push(Item::ok(format!(
            "{key} available at {}",
            addresses.join(", ")
        )));
    }
    for (other, _) in gws.iter().skip(1) {
        items.push(Item::warn(
            format!(
                "{other} is another gateway of class {}; only {key} is used",
                labels::EASTWEST_CLASS
            ),
            format!("delete {other}, or give it another class"),
        ));
    }
    let mut detail = vec![format!("Gateway: {}", key.name), "Addresses:".to_owned()];
    detail.extend(addresses.iter().map(|a| format!("- {a}")));
    detail.push(format!(
        "Status: {}",
        if addresses.is_empty() {
            "not programmed ❌"
        } else {
            "programmed ✅"
        }
    ));
    Check::from_items(cluster, names::GATEWAY, items, |_| String::new())
        .retitle("all eastwest gateways programmed")
        .with_detail(detail)
}

fn shared_services(f: &ClusterFacts) -> Check {
    let cluster = Some(f.name.as_str());
    let (exported, global, imported, from) = match f.live.state() {
        Some(s) => (
            s.status.exported_services,
            s.status.global_services,
            s.status.imported_services,
            "",
        ),
        None => {
            let imported = f
                .catalog
                .services
                .values()
                .filter(|s| s.clusters().any(|c| c != f.name))
                .count();
            (
                f.export.services.len(),
                f.catalog.services.len(),
                imported,
                match f.origin {
                    Origin::Folder(_) => " (from the folders: the controller is not reachable)",
                    Origin::Context(_) => {
                        " (from the API servers' objects: the controller is not reachable)"
                    }
                },
            )
        }
    };
    let services = match f.live.state().map(|s| &s.catalog) {
        Some(Ok(feed)) => &feed.catalog.services,
        _ => &f.catalog.services,
    };
    let mut rows = vec![
        ["HOSTNAME", "CLUSTERS", "ENDPOINTS"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for s in services.values() {
        rows.push(vec![
            s.hostname.clone(),
            s.clusters().collect::<Vec<_>>().join(","),
            s.endpoint_count().to_string(),
        ]);
    }
    let detail = table(&rows);
    if global == 0 && exported == 0 {
        return Check::single(
            cluster,
            names::SHARED_SERVICES,
            Status::Info,
            format!("no globally shared services found{from}"),
        )
        .with_detail(detail);
    }
    Check::single(
        cluster,
        names::SHARED_SERVICES,
        Status::Ok,
        format!(
            "exports {}; sees {global}, {imported} with endpoints from other clusters{from}",
            super::diagnostics::plural(exported, "global service")
        ),
    )
    .with_detail(detail)
}
