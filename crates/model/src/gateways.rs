//! The Gateways operators create to connect clusters: a cluster's own
//! east-west gateway (C2, `meshpeer expose`) and the remote-peer Gateways that
//! link it to others (C3, `meshpeer link`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::cluster::ClusterSnapshot;
use crate::diag::Diagnostic;
use crate::export::{ClusterInfo, exports};
use crate::labels;
use crate::links::{self, EastWestGateway};
use crate::objects::{
    Gateway, GatewayAddress, GatewaySpec, GatewayStatus, Listener, ListenerTls, label,
};

/// The two listeners of an east-west or remote-peer Gateway (C2, C3).
pub(crate) fn listeners(hbone_port: u16, xds_port: u16) -> Vec<Listener> {
    vec![
        Listener {
            name: "cross-network".into(),
            port: i32::from(hbone_port),
            protocol: "HBONE".into(),
            hostname: None,
            tls: Some(ListenerTls {
                mode: Some("Passthrough".into()),
            }),
        },
        Listener {
            name: "xds-tls".into(),
            port: i32::from(xds_port),
            protocol: "TLS".into(),
            hostname: None,
            tls: Some(ListenerTls {
                mode: Some("Passthrough".into()),
            }),
        },
    ]
}

fn locality_labels(out: &mut BTreeMap<String, String>, region: &str, zone: &str) {
    if !region.is_empty() {
        out.insert(labels::REGION.into(), region.into());
    }
    if !zone.is_empty() {
        out.insert(labels::ZONE.into(), zone.into());
    }
}

/// The east-west Gateway of a cluster (C2), as `istioctl multicluster
/// expose` generates it. With `address`, the Gateway carries it in
/// `status.addresses` (file mode: the gateway is "programmed"); in
/// Kubernetes the load balancer assigns it.
pub fn eastwest_gateway(
    cluster: &ClusterInfo,
    address: Option<GatewayAddress>,
    hbone_port: u16,
    xds_port: u16,
) -> Gateway {
    let mut l = BTreeMap::from([
        (labels::EXPOSE_ISTIOD.to_owned(), xds_port.to_string()),
        (labels::NETWORK.to_owned(), cluster.network.clone()),
    ]);
    locality_labels(&mut l, &cluster.locality.region, &cluster.locality.zone);
    Gateway {
        metadata: ObjectMeta {
            name: Some(labels::ISTIO_EASTWEST.into()),
            namespace: Some(labels::ISTIO_EASTWEST.into()),
            labels: Some(l),
            ..Default::default()
        },
        spec: GatewaySpec {
            gateway_class_name: labels::EASTWEST_CLASS.into(),
            addresses: Vec::new(),
            listeners: listeners(hbone_port, xds_port),
        },
        status: address.map(|a| GatewayStatus {
            addresses: vec![a],
            conditions: Vec::new(),
        }),
    }
}

/// Why a link cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error(
        "cluster {cluster} has no east-west gateway (a Gateway of class istio-eastwest); create it first: meshpeer expose"
    )]
    NoEastWestGateway { cluster: String },
    #[error(
        "the east-west gateway {gateway} of cluster {cluster} has no address yet (not programmed); wait for its load balancer, or in file mode give one: meshpeer expose --address ADDR"
    )]
    NotProgrammed { cluster: String, gateway: String },
    #[error("a cluster cannot be linked to itself ({cluster})")]
    SelfLink { cluster: String },
}

/// Everything `link` needs to know about the cluster linked to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkTarget {
    pub cluster: ClusterInfo,
    pub gateway: EastWestGateway,
    /// The east-west gateway's own locality labels, if any.
    pub region: String,
    pub zone: String,
}

impl LinkTarget {
    /// Reads the target of a link from that cluster's snapshot.
    pub fn from_snapshot(snap: &ClusterSnapshot) -> Result<Self, LinkError> {
        let export = exports(snap);
        let mut ignored: Vec<Diagnostic> = Vec::new();
        let gateway = links::eastwest_gateway(snap, &export.cluster.network, &mut ignored)
            .ok_or_else(|| LinkError::NoEastWestGateway {
                cluster: snap.config.name.clone(),
            })?;
        if !gateway.programmed() {
            return Err(LinkError::NotProgrammed {
                cluster: snap.config.name.clone(),
                gateway: gateway.gateway.to_string(),
            });
        }
        let gw = snap.gateways.get(&gateway.gateway);
        let region = gw
            .and_then(|g| label(&g.metadata, labels::REGION))
            .map_or_else(|| export.cluster.locality.region.clone(), str::to_owned);
        let zone = gw
            .and_then(|g| label(&g.metadata, labels::ZONE))
            .map_or_else(|| export.cluster.locality.zone.clone(), str::to_owned);
        Ok(LinkTarget {
            cluster: export.cluster,
            gateway,
            region,
            zone,
        })
    }
}

/// The remote-peer Gateway `istio-remote-peer-<target>` that links a cluster
/// to `target` (C3), as the seeds declare it, with the target's segment
/// pinned when it is in one (P3).
pub fn remote_peer_gateway(target: &LinkTarget) -> Gateway {
    let mut l = BTreeMap::from([(labels::NETWORK.to_owned(), target.cluster.network.clone())]);
    locality_labels(&mut l, &target.region, &target.zone);
    // P3: pin the segment the peer is in now, so that it cannot later claim
    // another one. A peer of the default segment is left unpinned: moving
    // it into a segment (seed 004) must not need a new link.
    if let Some(segment) = target.cluster.segment_name() {
        l.insert(labels::SEGMENT.to_owned(), segment.to_owned());
    }
    let annotations = BTreeMap::from([
        (
            labels::SERVICE_ACCOUNT.to_owned(),
            labels::ISTIO_EASTWEST.to_owned(),
        ),
        (
            labels::TRUST_DOMAIN.to_owned(),
            target.cluster.trust_domain.clone(),
        ),
    ]);
    Gateway {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}{}",
                labels::PEER_GATEWAY_PREFIX,
                target.cluster.name
            )),
            namespace: Some(labels::ISTIO_EASTWEST.into()),
            labels: Some(l),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: GatewaySpec {
            gateway_class_name: labels::REMOTE_CLASS.into(),
            addresses: target.gateway.addresses.clone(),
            listeners: listeners(target.gateway.hbone_port, target.gateway.xds_port),
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Object;
    use crate::testing_support::ns;

    fn cluster(name: &str, address: Option<&str>) -> ClusterSnapshot {
        let mut snap = ClusterSnapshot::new(crate::ClusterConfig {
            name: name.into(),
            region: Some("us-west".into()),
            zone: Some("us-west-1".into()),
            ..Default::default()
        });
        snap.apply(ns(labels::ISTIO_SYSTEM));
        let info = exports(&snap).cluster;
        snap.apply(Object::Gateway(eastwest_gateway(
            &info,
            address.map(GatewayAddress::ip),
            15008,
            15012,
        )));
        snap
    }

    #[test]
    fn c3_link_targets_the_peers_programmed_gateway() {
        let target = LinkTarget::from_snapshot(&cluster("cluster2", Some("192.0.2.7"))).unwrap();
        let gw = remote_peer_gateway(&target);
        assert_eq!(
            gw.metadata.name.as_deref(),
            Some("istio-remote-peer-cluster2")
        );
        assert_eq!(gw.spec.addresses, [GatewayAddress::ip("192.0.2.7")]);
        let l = gw.metadata.labels.as_ref().unwrap();
        assert_eq!(l[labels::NETWORK], "cluster2");
        assert_eq!(l[labels::REGION], "us-west");
        let a = gw.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[labels::TRUST_DOMAIN], "cluster2");
        // Reading it back gives the link.
        let mut c1 = cluster("cluster1", Some("192.0.2.6"));
        c1.apply(Object::Gateway(gw));
        let links = links::peer_links(&c1, "cluster1", &mut Vec::new());
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].cluster, "cluster2");
        assert_eq!(links[0].xds_port, 15012);
    }

    #[test]
    fn p3_link_pins_the_segment_the_peer_is_in() {
        let mut c2 = cluster("cluster2", Some("192.0.2.7"));
        let gw = remote_peer_gateway(&LinkTarget::from_snapshot(&c2).unwrap());
        let l = gw.metadata.labels.as_ref().unwrap();
        assert!(
            !l.contains_key(labels::SEGMENT),
            "a default-segment peer is not pinned: {l:?}"
        );
        c2.apply(Object::Segment(crate::objects::Segment {
            metadata: ObjectMeta {
                name: Some("prod".into()),
                namespace: Some(labels::ISTIO_SYSTEM.into()),
                ..Default::default()
            },
            spec: crate::objects::SegmentSpec {
                domain: "cluster.prod".into(),
            },
        }));
        let mut ns = crate::testing_support::ns(labels::ISTIO_SYSTEM);
        if let Object::Namespace(n) = &mut ns {
            n.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(labels::SEGMENT.into(), "prod".into());
        }
        c2.apply(ns);
        let gw = remote_peer_gateway(&LinkTarget::from_snapshot(&c2).unwrap());
        assert_eq!(
            gw.metadata.labels.as_ref().unwrap()[labels::SEGMENT],
            "prod"
        );
        let mut c1 = cluster("cluster1", Some("192.0.2.6"));
        c1.apply(Object::Gateway(gw));
        let links = links::peer_links(&c1, "cluster1", &mut Vec::new());
        assert_eq!(links[0].pinned_segment(), Some(Some("prod")));
    }

    #[test]
    fn c2_a_gateway_without_address_cannot_be_linked_to() {
        let e = LinkTarget::from_snapshot(&cluster("cluster2", None)).unwrap_err();
        assert!(e.to_string().contains("no address yet"), "{e}");
        let mut bare = ClusterSnapshot::new(crate::ClusterConfig::new("c3"));
        bare.apply(ns(labels::ISTIO_SYSTEM));
        let e = LinkTarget::from_snapshot(&bare).unwrap_err();
        assert!(e.to_string().contains("meshpeer expose"), "{e}");
    }
}
