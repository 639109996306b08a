//! SPEC P2 and P3 with real controllers, gateways and proxies in one
//! process: what a linked cluster claims about itself (its segment, its
//! hostnames) is judged by the local cluster's own objects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use meshpeer::controller::View;
use meshpeer_model::Rule;
use support::{Mesh, hosts, namespace, resolve, segments, service};

fn condition<'a>(
    v: &'a View,
    peer: &str,
    type_: &str,
) -> Option<&'a meshpeer_model::objects::Condition> {
    v.status
        .peers
        .iter()
        .find(|p| p.cluster == peer)?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn refused_with(v: &View, peer: &str, reason: &str) -> bool {
    condition(v, peer, "gloo.solo.io/PeeringSucceeded")
        .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some(reason))
}

/// The attack of issue 10: a linked cluster defines a Segment `evil` with
/// domain `com`, joins it and exports `www` in namespace `google`, hoping
/// that every linked cluster answers `www.google.com` with a VIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_a_peer_segment_named_com_does_not_make_www_google_com_resolve() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.cluster("cluster2").write(
        "istio-system.yaml",
        &format!(
            "{}---\napiVersion: admin.solo.io/v1alpha1\nkind: Segment\nmetadata: {{name: evil, namespace: istio-system}}\nspec: {{domain: com}}\n",
            namespace("istio-system", &[("admin.solo.io/segment", "evil")])
        ),
    );
    mesh.cluster("cluster2").write(
        "google.yaml",
        &format!(
            "{}---\n{}",
            namespace("google", &[]),
            service("google", "www", Some("global"), "10.2.0.9")
        ),
    );
    mesh.cluster("cluster1").write(
        "shop.yaml",
        &format!(
            "{}---\n{}",
            namespace("shop", &[]),
            service("shop", "web", Some("global"), "10.1.0.9")
        ),
    );
    mesh.start().await;
    mesh.start_dataplane().await;
    mesh.link_all().await;

    // cluster2 claims a segment cluster1 does not define: it contributes
    // nothing but a diagnostic and a condition.
    let v = mesh
        .cluster("cluster1")
        .wait("cluster2 refused with a condition", |v| {
            refused_with(v, "cluster2", "SegmentNotDefined")
        })
        .await;
    assert_eq!(hosts(&v), ["web.shop.mesh.internal"]);
    let d: Vec<_> = v
        .catalog
        .diagnostics
        .iter()
        .filter(|d| d.rule == Rule::P2)
        .collect();
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].message.contains("segment evil (domain com)"),
        "{}",
        d[0]
    );
    let programmed = condition(&v, "cluster2", "gloo.solo.io/PeerDataPlaneProgrammed").unwrap();
    assert_eq!(programmed.status, "False");

    // The proxy does not answer the name with a VIP.
    let dns = mesh.cluster("cluster1").proxy().dns.local_addr();
    let answer = resolve(dns, "www.google.com").await;
    assert!(answer.is_err(), "www.google.com answered: {answer:?}");
    assert!(resolve(dns, "web.shop.mesh.internal").await.is_ok());
    mesh.shutdown().await;
}

/// A link pinned to `prod` refuses a peer that says it is in `dev` (it
/// would otherwise receive dev's segment-scoped services), both ways: the
/// pinning cluster imports nothing, and serves nothing to that peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p3_a_peer_claiming_another_segment_on_a_pinned_link_is_refused() {
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.cluster("cluster1")
        .write("istio-system.yaml", &segments(Some("dev")));
    mesh.cluster("cluster2")
        .write("istio-system.yaml", &segments(Some("dev")));
    mesh.cluster("cluster1").write(
        "h.yaml",
        &format!(
            "{}---\n{}",
            namespace("h", &[]),
            service("h", "private", Some("segment"), "10.1.0.1")
        ),
    );
    mesh.cluster("cluster2").write(
        "h.yaml",
        &format!(
            "{}---\n{}",
            namespace("h", &[]),
            service("h", "other", Some("segment"), "10.2.0.1")
        ),
    );
    mesh.start().await;
    // cluster1 knows cluster2 as a prod cluster.
    mesh.link_pinned("cluster1", "cluster2", Some("prod")).await;
    mesh.link("cluster2", "cluster1").await;

    let v1 = mesh
        .cluster("cluster1")
        .wait("cluster2 refused", |v| {
            refused_with(v, "cluster2", "SegmentPinMismatch")
        })
        .await;
    assert_eq!(hosts(&v1), ["private.h.cluster.dev"]);
    let c = condition(&v1, "cluster2", "gloo.solo.io/PeeringSucceeded").unwrap();
    assert!(
        c.message.as_deref().unwrap_or_default().contains(
            "says it is in segment dev, but gateway istio-eastwest/istio-remote-peer-cluster2 pins it to segment prod"
        ),
        "{c:?}"
    );
    // cluster2's stream to cluster1 is refused with the reason on the wire,
    // so it never receives cluster1's segment-scoped service.
    let v2 = mesh
        .cluster("cluster2")
        .wait("cluster1 refuses cluster2", |v| {
            v.status.peers.iter().any(|p| {
                p.cluster == "cluster1"
                    && p.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("pins it to segment prod"))
            })
        })
        .await;
    assert_eq!(hosts(&v2), ["other.h.cluster.dev"]);
    let refused = mesh.cluster("cluster1").controller().current();
    assert!(
        refused
            .status
            .refused
            .iter()
            .any(|r| r.reason == "segment_pin_mismatch"),
        "{:?}",
        refused.status.refused
    );

    // cluster2 really moves to prod: both sides accept it again.
    mesh.cluster("cluster2")
        .write("istio-system.yaml", &segments(Some("prod")));
    mesh.cluster("cluster1")
        .wait("cluster2 accepted in prod", |v| {
            condition(v, "cluster2", "gloo.solo.io/PeeringSucceeded")
                .is_some_and(|c| c.status == "True")
        })
        .await;
    mesh.shutdown().await;
}
