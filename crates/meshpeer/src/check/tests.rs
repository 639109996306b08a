//! Unit tests of the checks and the rendering, on facts gathered from the
//! example folders (no processes) and on hand-made reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meshpeer_identity::RootCa;
use meshpeer_model::objects::Condition;

use super::facts::{ClusterInput, Live, LiveState, gather};
use super::*;
use crate::controller::view::{LinkState, PeerView, Status as ControllerStatus};

const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn example(cluster: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/httpbin")
        .join(cluster)
}

/// The clusters of `folders` (cluster1, cluster2), each with cacerts under
/// one root in `<certs>/<cluster>` made by `make(root, cluster, now)`.
async fn facts_of(
    folders: [PathBuf; 2],
    certs: &Path,
    make: impl Fn(&RootCa, &str, SystemTime) -> meshpeer_identity::ClusterCa,
) -> Vec<ClusterFacts> {
    let now = SystemTime::now();
    let root = RootCa::generate("test root", YEAR, now).unwrap();
    let mut inputs = Vec::new();
    for (c, folder) in ["cluster1", "cluster2"].into_iter().zip(folders) {
        let dir = certs.join(c);
        make(&root, c, now).write(&dir).unwrap();
        let mut input = ClusterInput::folder(folder);
        input.cacerts = Some(dir);
        inputs.push(input);
    }
    gather(&inputs, true, Duration::from_secs(1)).await.unwrap()
}

/// The two example clusters, with cacerts under one root in `tmp`.
async fn example_facts(tmp: &Path) -> Vec<ClusterFacts> {
    facts_of(
        [example("cluster1"), example("cluster2")],
        tmp,
        |root, c, now| root.issue_intermediate(c, c, YEAR, now).unwrap(),
    )
    .await
}

#[tokio::test]
async fn precheck_of_the_example_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let facts = example_facts(tmp.path()).await;
    let report = evaluate(&facts, Options { precheck: true });
    assert_eq!(report.status(), Status::Ok, "{}", report.render(true));
    let names: Vec<&str> = report
        .of_cluster("cluster1")
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        [names::CONFIGURATION, names::GATEWAY, names::DIAGNOSTICS]
    );
    let across: Vec<&str> = report.across().map(|c| c.name.as_str()).collect();
    assert_eq!(
        across,
        [
            names::CERTS,
            names::NETWORK,
            names::TRUST_DOMAIN,
            names::SEGMENTS
        ]
    );
}

/// The two example clusters, cluster1's intermediate made by `make`.
async fn facts_with(
    tmp: &Path,
    make: impl Fn(&RootCa, SystemTime) -> meshpeer_identity::ClusterCa,
) -> Vec<ClusterFacts> {
    facts_of(
        [example("cluster1"), example("cluster2")],
        tmp,
        |root, c, now| {
            if c == "cluster1" {
                make(root, now)
            } else {
                root.issue_intermediate(c, c, YEAR, now).unwrap()
            }
        },
    )
    .await
}

#[tokio::test]
async fn p6_check_warns_about_an_unbound_intermediate() {
    let tmp = tempfile::tempdir().unwrap();
    let facts = facts_with(tmp.path(), |root, now| {
        root.issue_unbound_intermediate("cluster1", YEAR, now)
            .unwrap()
    })
    .await;
    let report = evaluate(&facts, Options { precheck: true });
    let config = report.find(Some("cluster1"), names::CONFIGURATION).unwrap();
    assert_eq!(config.status, Status::Warn, "{}", report.render(true));
    let item = config
        .items
        .iter()
        .find(|i| i.text.contains("not bound to a trust domain"))
        .unwrap_or_else(|| panic!("{}", report.render(true)));
    assert_eq!(item.status, Status::Warn);
    assert!(
        item.fix
            .as_deref()
            .unwrap_or_default()
            .contains("meshpeer certs cluster cluster1 --trust-domain cluster1 --root ROOT_DIR"),
        "{item:?}"
    );
    // Still compatible with the other cluster: no flag day.
    let certs = report.find(None, names::CERTS).unwrap();
    assert_eq!(certs.status, Status::Ok, "{}", report.render(true));
    // A bound one is fine.
    let ok = report.find(Some("cluster2"), names::CONFIGURATION).unwrap();
    assert!(
        ok.items.iter().any(|i| i.status == Status::Ok
            && i.text
                .ends_with("intermediate bound to trust domain cluster2")),
        "{}",
        report.render(true)
    );
}

#[tokio::test]
async fn p6_check_fails_when_the_binding_is_another_trust_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let facts = facts_with(tmp.path(), |root, now| {
        root.issue_intermediate("cluster1", "cluster9", YEAR, now)
            .unwrap()
    })
    .await;
    let report = evaluate(&facts, Options { precheck: true });
    let config = report.find(Some("cluster1"), names::CONFIGURATION).unwrap();
    assert_eq!(config.status, Status::Fail, "{}", report.render(true));
    assert!(
        config.title.contains(
            "the intermediate is bound to trust domain cluster9, but cluster cluster1 has trust domain cluster1"
        ),
        "{}",
        config.title
    );
}

fn condition(type_: &str, ok: bool, message: &str) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: Some(if ok { "Ok" } else { "ConnectFailed" }.to_owned()),
        message: Some(message.to_owned()),
        ..Default::default()
    }
}

#[tokio::test]
async fn live_state_is_judged_from_the_peer_conditions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut facts = example_facts(tmp.path()).await;
    let mut status = ControllerStatus::default();
    status.cluster.name = "cluster1".to_owned();
    status.peering_address = "127.0.1.1:15012".to_owned();
    status.peers = vec![PeerView {
        cluster: "cluster2".to_owned(),
        state: LinkState::Failed,
        last_error: Some("peer certificate chain does not lead to the shared root".to_owned()),
        conditions: vec![
            condition(peers::ACCEPTED, true, ""),
            condition(peers::PROGRAMMED, true, ""),
            condition(peers::PEER_CONNECTED, false, "cannot connect"),
        ],
        ..Default::default()
    }];
    facts[0].live = Live::Up(Box::new(LiveState {
        addr: "127.0.0.1:15114".to_owned(),
        cluster: None,
        from: "--controller".to_owned(),
        status,
        data_plane: Vec::new(),
        health: Default::default(),
        catalog: Err("not asked".to_owned()),
    }));
    facts[1].live = Live::Down {
        addr: "127.0.0.1:15214".to_owned(),
        from: "--controller".to_owned(),
        error: "connection refused".to_owned(),
    };
    let report = evaluate(&facts, Options::default());
    assert!(report.failed());

    let peers = report.find(Some("cluster1"), names::PEERS).unwrap();
    assert_eq!(peers.status, Status::Fail);
    assert_eq!(peers.title, "1 of 1 clusters not connected");
    let bad = &peers.items[0];
    assert_eq!(
        bad.text,
        "Not connected to cluster2 via 127.0.2.1: ConnectFailed: cannot connect"
    );
    assert!(bad.fix.as_deref().unwrap().contains("one root"), "{bad:?}");

    let ctl = report.find(Some("cluster1"), names::CONTROLLER).unwrap();
    assert_eq!(ctl.status, Status::Ok, "{ctl:?}");
    let dp = report.find(Some("cluster1"), names::DATA_PLANE).unwrap();
    assert_eq!(dp.status, Status::Warn);
    assert!(dp.items.iter().all(|i| {
        i.fix
            .as_deref()
            .is_some_and(|f| f.starts_with("start one: meshpeer"))
    }));

    let ctl2 = report.find(Some("cluster2"), names::CONTROLLER).unwrap();
    assert_eq!(ctl2.status, Status::Fail);
    assert!(
        ctl2.fix
            .as_deref()
            .unwrap()
            .contains("--api-listen 127.0.0.1:15214")
    );
    // Its data plane cannot be judged without it.
    let dp2 = report.find(Some("cluster2"), names::DATA_PLANE).unwrap();
    assert_eq!(dp2.status, Status::Info);
}

#[test]
fn chains_verify_only_under_the_issuing_root() {
    let now = SystemTime::now();
    let root = RootCa::generate("root a", YEAR, now).unwrap();
    let other = RootCa::generate("root b", YEAR, now).unwrap();
    let ca = root
        .issue_intermediate("cluster1", "cluster1", YEAR, now)
        .unwrap();
    assert_eq!(mesh::chains_to(&ca, root.trust_root()), Ok(()));
    let err = mesh::chains_to(&ca, other.trust_root()).unwrap_err();
    assert_eq!(err, "its intermediate was not issued by that root");
}

fn sample() -> Report {
    Report {
        precheck: false,
        clusters: vec!["cluster1".to_owned()],
        checks: vec![
            Check::from_items(
                Some("cluster1"),
                names::GATEWAY,
                vec![Item::ok(
                    "istio-eastwest/istio-eastwest available at 127.0.1.1",
                )],
                |_| "all eastwest gateways programmed".to_owned(),
            )
            .with_detail(vec!["Gateway: istio-eastwest".to_owned()]),
            Check::from_items(
                Some("cluster1"),
                names::PEERS,
                vec![
                    Item::fail(
                        "Not connected to cluster2 via 127.0.2.1",
                        "start cluster2's controller",
                    ),
                    Item::info("cluster2 does not link back to cluster1"),
                ],
                |_| "1 of 1 clusters not connected".to_owned(),
            ),
            Check::single(
                Some("cluster1"),
                names::SHARED_SERVICES,
                Status::Info,
                "no globally shared services found".to_owned(),
            ),
            Check::from_items(
                None,
                names::NETWORK,
                vec![
                    Item::ok("Cluster cluster1 has network: cluster1"),
                    Item::warn("Clusters a, b share network n", "give each its own"),
                ],
                |_| "network configuration has warnings".to_owned(),
            ),
        ],
    }
}

#[test]
fn report_renders_like_istioctl_multicluster_check() {
    let r = sample();
    assert_eq!(
        r.render(false),
        "=== Cluster: cluster1 ===
✅ Gateway Check: all eastwest gateways programmed
     ✅ istio-eastwest/istio-eastwest available at 127.0.1.1
❌ Peers Check: 1 of 1 clusters not connected
     ❌ Not connected to cluster2 via 127.0.2.1
        → fix: start cluster2's controller
ℹ  Shared Services Check: no globally shared services found
Summary: 1 passed, 1 failed, 1 informational
====== 

⚠  Network Configuration Check: network configuration has warnings
     ⚠  Clusters a, b share network n
        → fix: give each its own

❌ 1 check failed, 1 warning (see the → fix: lines)
"
    );
    let verbose = r.render(true);
    assert!(
        verbose.contains(
            "--- Gateway Check ---\n\nGateway: istio-eastwest\n\n✅ Gateway Check: all eastwest gateways programmed\n"
        ),
        "{verbose}"
    );
    assert!(
        verbose.contains("     ℹ  cluster2 does not link back to cluster1\n"),
        "{verbose}"
    );
    assert!(
        verbose.contains("     ✅ Cluster cluster1 has network: cluster1\n"),
        "{verbose}"
    );
}

#[test]
fn an_item_the_title_states_prints_only_its_fix() {
    let c = Check::from_items(
        Some("c"),
        names::GATEWAY,
        vec![Item::fail("no address", "give it one")],
        |_| String::new(),
    )
    .retitle("ok");
    let r = Report {
        precheck: true,
        clusters: vec!["c".to_owned()],
        checks: vec![c],
    };
    let text = r.render(false);
    assert!(
        text.contains("❌ Gateway Check: no address\n     → fix: give it one\nSummary:"),
        "{text}"
    );
    let json = serde_json::to_string(&r).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}

#[tokio::test]
async fn kubernetes_mode_names_the_context_it_cannot_use() {
    let input = ClusterInput {
        origin: facts::Origin::Context("no-such-context.meshpeer.invalid".to_owned()),
        cacerts: None,
        controller: None,
        name: Some("cluster1".to_owned()),
    };
    let err = gather(&[input], false, Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("Kubernetes context no-such-context.meshpeer.invalid: "),
        "{err}"
    );

    // A context name that is no cluster name needs --cluster-name.
    let input = ClusterInput {
        origin: facts::Origin::Context("arn:aws:eks:us-east-1:1:cluster/x".to_owned()),
        cacerts: None,
        controller: None,
        name: None,
    };
    let err = gather(&[input], false, Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--cluster-name"), "{err}");
}

#[tokio::test]
async fn kubernetes_mode_without_a_client_for_the_context_says_so() {
    let input = ClusterInput {
        origin: facts::Origin::Context("kind-cluster1".to_owned()),
        cacerts: None,
        controller: None,
        name: Some("cluster1".to_owned()),
    };
    let err = gather_with_clients(&[input], &Default::default(), true, Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "Kubernetes context kind-cluster1: no Kubernetes client was built for this context"
    );
}

fn live(status: ControllerStatus) -> Live {
    Live::Up(Box::new(LiveState {
        addr: "127.0.0.1:15114".to_owned(),
        cluster: None,
        from: "--controller".to_owned(),
        status,
        data_plane: Vec::new(),
        health: Default::default(),
        catalog: Err("not asked".to_owned()),
    }))
}

fn connected_peer(peering: Condition) -> PeerView {
    PeerView {
        cluster: "cluster2".to_owned(),
        state: LinkState::Connected,
        conditions: vec![
            condition(peers::ACCEPTED, true, ""),
            condition(peers::PROGRAMMED, true, ""),
            condition(peers::PEER_CONNECTED, true, "connected"),
            peering,
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn p3_a_refused_peer_says_why_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let mut facts = example_facts(tmp.path()).await;
    let mut status = ControllerStatus::default();
    status.cluster.name = "cluster1".to_owned();
    status.peers = vec![connected_peer(Condition {
        reason: Some("SegmentPinMismatch".to_owned()),
        ..condition(
            peers::PEERING_SUCCEEDED,
            false,
            "[P3] cluster cluster2 says it is in segment dev, but gateway istio-eastwest/istio-remote-peer-cluster2 pins it to segment prod",
        )
    })];
    facts[0].live = live(status);
    let report = evaluate(&facts, Options::default());
    let peers = report.find(Some("cluster1"), names::PEERS).unwrap();
    assert_eq!(peers.status, Status::Fail);
    let item = &peers.items[0];
    assert!(
        item.text
            .contains("its claims are refused: SegmentPinMismatch"),
        "{item:?}"
    );
    assert!(
        item.fix
            .as_deref()
            .unwrap()
            .contains("admin.solo.io/segment"),
        "{item:?}"
    );
}

#[tokio::test]
async fn p1_p3_connected_unlinked_peers_and_unpinned_links_are_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let mut facts = example_facts(tmp.path()).await;
    let mut status = ControllerStatus::default();
    status.cluster.name = "cluster1".to_owned();
    status.peers = vec![connected_peer(condition(
        peers::PEERING_SUCCEEDED,
        true,
        "synced",
    ))];
    status.served = vec![crate::controller::view::ServedView {
        cluster: "cluster9".to_owned(),
        spiffe_id: "spiffe://cluster9/ns/istio-system/sa/meshpeer".to_owned(),
        remote: "192.0.2.9:40000".to_owned(),
        linked: false,
        ..Default::default()
    }];
    facts[0].live = live(status);
    let report = evaluate(&facts, Options::default());
    let peers = report.find(Some("cluster1"), names::PEERS).unwrap();
    let texts: Vec<&str> = peers.items.iter().map(|i| i.text.as_str()).collect();
    assert!(
        texts.iter().any(|t| t.starts_with(
            "cluster9 (spiffe://cluster9/ns/istio-system/sa/meshpeer) is connected from 192.0.2.9:40000 and learns cluster1's services, but cluster1 does not link to it"
        )),
        "{texts:#?}"
    );
    // No cluster is in a segment: an unpinned link is no warning.
    assert!(
        !texts.iter().any(|t| t.contains("does not pin")),
        "{texts:#?}"
    );

    // Once cluster2 is in a segment, cluster1's unpinned link is.
    facts[1].export.cluster.segment = Some(meshpeer_model::SegmentDef {
        name: "prod-segment".to_owned(),
        domain: "cluster.prod".to_owned(),
    });
    let report = evaluate(&facts, Options::default());
    let peers = report.find(Some("cluster1"), names::PEERS).unwrap();
    let unpinned = peers
        .items
        .iter()
        .find(|i| i.text.contains("does not pin its segment"))
        .unwrap();
    assert_eq!(unpinned.status, Status::Warn);
    assert!(
        unpinned.fix.as_deref().unwrap().contains(
            "label gateway istio-eastwest/istio-remote-peer-cluster2 with admin.solo.io/segment="
        ),
        "{unpinned:?}"
    );
}

/// Seed 002's Stale Workloads Check on a flat network: the output's
/// `autogenflat` WorkloadEntries are compared with the Pods the peers
/// serve now (the controller's live catalog); one for a Pod that is gone
/// is named, one for a Pod still served is not.
#[tokio::test]
async fn stale_workloads_check_names_autogenflat_entries_of_pods_that_are_gone() {
    use meshpeer_model::objects::{WorkloadEntry, WorkloadEntrySpec};
    use meshpeer_model::render::upstream::{ENTRY, GEN_CLUSTER, entry_key};

    let tmp = tempfile::tempdir().unwrap();
    let mut facts = example_facts(tmp.path()).await;
    // Not flat (two networks): skipped, as seed 002 prints it.
    let report = evaluate(&facts, Options { precheck: false });
    assert_eq!(
        report.find(None, names::STALE).unwrap().title,
        "skipped (flat network not detected)"
    );

    // cluster2 on cluster1's network.
    let network = facts[0].export.cluster.network.clone();
    facts[1].export.cluster.network = network;
    let catalog = facts[0].catalog.clone();
    let (key, address) = catalog
        .services
        .values()
        .find_map(|svc| {
            let c = svc.contributions.iter().find(|c| c.cluster == "cluster2")?;
            let (_, ep) = c.service.endpoints().next()?;
            Some((
                entry_key(&meshpeer_model::render::service_entry_name(svc)),
                ep.address.to_string(),
            ))
        })
        .expect("cluster2 contributes an endpoint");
    let flat = |name: &str, address: &str| WorkloadEntry {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [
                    (ENTRY.to_owned(), key.clone()),
                    (GEN_CLUSTER.to_owned(), "cluster2".to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: WorkloadEntrySpec {
            address: Some(address.to_owned()),
            ..Default::default()
        },
    };
    let current = flat("autogenflat.cluster2.httpbin.pod-a.0123456789ab", &address);
    let gone = flat(
        "autogenflat.cluster2.httpbin.pod-b.ba9876543210",
        "10.99.99.99",
    );
    let mut state = live(ControllerStatus::default());
    if let Live::Up(s) = &mut state {
        s.catalog = Ok(meshpeer_dataplane::feed::CatalogFeed {
            version: 1,
            catalog: std::sync::Arc::new(catalog),
            ..Default::default()
        });
    }
    facts[0].live = state;
    facts[0].output = Some((
        tmp.path().join("out"),
        meshpeer_store::Existing {
            entries: Vec::new(),
            workloads: vec![current.clone()],
        },
    ));
    let report = evaluate(&facts, Options { precheck: false });
    let stale = report.find(None, names::STALE).unwrap();
    assert_eq!(stale.status, Status::Ok, "{}", report.render(true));
    assert_eq!(stale.title, "1 autogenflat workload entry, none stale");

    facts[0].output = Some((
        tmp.path().join("out"),
        meshpeer_store::Existing {
            entries: Vec::new(),
            workloads: vec![current, gone],
        },
    ));
    let report = evaluate(&facts, Options { precheck: false });
    let stale = report.find(None, names::STALE).unwrap();
    assert_eq!(stale.status, Status::Warn, "{}", report.render(true));
    assert_eq!(stale.items.len(), 1, "{}", report.render(true));
    assert!(
        stale.items[0]
            .text
            .contains("WorkloadEntry autogenflat.cluster2.httpbin.pod-b.ba9876543210")
            && stale.items[0]
                .text
                .contains("10.99.99.99 in cluster cluster2"),
        "{:?}",
        stale.items[0]
    );
}

/// The two example clusters moved into one trust domain, `cluster.local`
/// (cluster.yaml and the remote-peer Gateways' annotations), each with
/// cacerts made by `make(root, cluster, now)`.
async fn shared_facts(
    tmp: &Path,
    make: impl Fn(&RootCa, &str, SystemTime) -> meshpeer_identity::ClusterCa,
) -> Vec<ClusterFacts> {
    let folders = ["cluster1", "cluster2"].map(|c| {
        let folder = tmp.join("folders").join(c);
        std::fs::create_dir_all(&folder).unwrap();
        for entry in std::fs::read_dir(example(c)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text
                .replace(&format!("trustDomain: {c}"), "trustDomain: cluster.local")
                .replace(
                    "gateway.istio.io/trust-domain: cluster1",
                    "gateway.istio.io/trust-domain: cluster.local",
                )
                .replace(
                    "gateway.istio.io/trust-domain: cluster2",
                    "gateway.istio.io/trust-domain: cluster.local",
                );
            std::fs::write(folder.join(path.file_name().unwrap()), text).unwrap();
        }
        folder
    });
    facts_of(folders, &tmp.join("certs"), make).await
}

#[tokio::test]
async fn p6_check_says_clusters_share_a_trust_domain_and_whether_intermediates_are_bound_to_them() {
    let tmp = tempfile::tempdir().unwrap();
    let facts = shared_facts(tmp.path(), |root, c, now| {
        root.issue_intermediate(c, "cluster.local", YEAR, now)
            .unwrap()
    })
    .await;
    let report = evaluate(&facts, Options { precheck: true });
    let td = report.find(None, names::TRUST_DOMAIN).unwrap();
    assert_eq!(td.status, Status::Ok, "{}", report.render(true));
    assert!(
        td.items.iter().any(|i| i.status == Status::Ok
            && i.text.contains("Clusters cluster1, cluster2 share trust domain cluster.local; each intermediate is bound to its cluster")),
        "{}",
        report.render(true)
    );

    // Intermediates made before cluster bindings cannot tell them apart.
    let tmp = tempfile::tempdir().unwrap();
    let facts = shared_facts(tmp.path(), |root, c, now| {
        root.issue_trust_domain_intermediate(c, "cluster.local", YEAR, now)
            .unwrap()
    })
    .await;
    let report = evaluate(&facts, Options { precheck: true });
    let td = report.find(None, names::TRUST_DOMAIN).unwrap();
    assert_eq!(td.status, Status::Fail, "{}", report.render(true));
    let item = td.items.iter().find(|i| i.status == Status::Fail).unwrap();
    assert!(item.text.contains("no_cluster_binding"), "{item:?}");
    assert!(
        item.fix
            .as_deref()
            .unwrap_or_default()
            .contains("meshpeer certs cluster NAME --trust-domain cluster.local"),
        "{item:?}"
    );

    // An intermediate bound to another cluster fails cluster1's check.
    let tmp = tempfile::tempdir().unwrap();
    let facts = shared_facts(tmp.path(), |root, c, now| {
        let bound = if c == "cluster1" { "cluster9" } else { c };
        root.issue_intermediate(bound, "cluster.local", YEAR, now)
            .unwrap()
    })
    .await;
    let report = evaluate(&facts, Options { precheck: true });
    let config = report.find(Some("cluster1"), names::CONFIGURATION).unwrap();
    assert_eq!(config.status, Status::Fail, "{}", report.render(true));
    assert!(
        config.items.iter().any(|i| i
            .text
            .contains("bound to cluster cluster9, but this is cluster cluster1")),
        "{}",
        report.render(true)
    );
}

/// Bookinfo with seed 001's layer (examples/bookinfo/subsets) in `tmp`.
fn subsets_folders(tmp: &Path) -> [PathBuf; 2] {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/bookinfo");
    ["cluster1", "cluster2"].map(|c| {
        let dir = tmp.join("folders").join(c);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(base.join(c)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        std::fs::copy(
            base.join("subsets").join(c).join("subsets.yaml"),
            dir.join("subsets.yaml"),
        )
        .unwrap();
        dir
    })
}

#[tokio::test]
async fn l7_the_routes_check_says_why_a_route_is_not_accepted_and_what_it_routes_once_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let folders = subsets_folders(tmp.path());
    let make = |root: &RootCa, c: &str, now| root.issue_intermediate(c, c, YEAR, now).unwrap();
    let facts = facts_of(folders.clone(), &tmp.path().join("certs"), make).await;
    let report = evaluate(&facts, Options { precheck: true });
    let routes = report.find(Some("cluster1"), names::ROUTES).unwrap();
    assert_eq!(routes.status, Status::Fail, "{}", report.render(true));
    assert!(
        routes.title.contains("httproute bookinfo/reviews -> Service bookinfo/reviews:9080: not accepted, NoMatchingParent: Service bookinfo/reviews is not global"),
        "{}",
        routes.title
    );
    // cluster2 has no route: no Routes Check there.
    assert!(report.find(Some("cluster2"), names::ROUTES).is_none());

    // reviews made global: accepted, and it says what it routes.
    let bookinfo = folders[0].join("bookinfo.yaml");
    let text = std::fs::read_to_string(&bookinfo).unwrap().replacen(
        "  name: reviews\n  namespace: bookinfo\n  labels:\n",
        "  name: reviews\n  namespace: bookinfo\n  labels:\n    solo.io/service-scope: global\n",
        1,
    );
    std::fs::write(&bookinfo, text).unwrap();
    let facts = facts_of(folders, &tmp.path().join("certs2"), make).await;
    let report = evaluate(&facts, Options { precheck: true });
    let routes = report.find(Some("cluster1"), names::ROUTES).unwrap();
    assert_eq!(routes.status, Status::Ok, "{}", report.render(true));
    assert_eq!(
        routes.title,
        "1 route(s) accepted, routing 1 frontend(s) at L7"
    );
    assert!(
        routes.items[0].text.ends_with(
            "accepted, every backend resolves; routes reviews.bookinfo.mesh.internal:9080"
        ),
        "{:?}",
        routes.items
    );
}
