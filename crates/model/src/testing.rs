//! Builders for cluster snapshots in tests (feature `testing`). They produce
//! the same objects a real cluster holds: labelled Namespaces and Services,
//! Pods with IPs and Ready conditions, Nodes with topology labels, Segments
//! and Gateways.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, Pod, PodCondition, PodSpec, PodStatus, Service,
    ServicePort as K8sServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cluster::{ClusterConfig, ClusterSnapshot};
use crate::labels;
use crate::objects::{Gateway, GatewayAddress, GatewaySpec, Object, Segment, SegmentSpec};

fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        }),
        ..Default::default()
    }
}

/// A Namespace with labels.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: meta(None, name, labels),
        ..Default::default()
    }
}

/// A Node with topology labels.
pub fn node(name: &str, region: &str, zone: &str) -> Node {
    Node {
        metadata: meta(
            None,
            name,
            &[(labels::REGION, region), (labels::ZONE, zone)],
        ),
        ..Default::default()
    }
}

/// A Pod with an IP; `ready` sets the Ready condition.
pub fn pod(
    namespace: &str,
    name: &str,
    pod_labels: &[(&str, &str)],
    ip: &str,
    ready: bool,
    node: Option<&str>,
) -> Pod {
    Pod {
        metadata: meta(Some(namespace), name, pod_labels),
        spec: Some(PodSpec {
            node_name: node.map(str::to_owned),
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.to_owned()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// An IPv4 EndpointSlice `name` of Service `ns/svc` with port `http` 8080.
pub fn endpoint_slice(
    ns: &str,
    svc: &str,
    name: &str,
    endpoints: Vec<SliceEndpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(Some(ns), name, &[(labels::ENDPOINTSLICE_SERVICE_NAME, svc)]),
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// An EndpointSlice endpoint with the given conditions.
pub fn slice_endpoint(ip: &str, ready: Option<bool>, terminating: Option<bool>) -> SliceEndpoint {
    SliceEndpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready,
            serving: ready,
            terminating,
        }),
        ..Default::default()
    }
}

/// A Segment in `istio-system`.
pub fn segment(name: &str, domain: &str) -> Segment {
    Segment {
        metadata: meta(Some(labels::ISTIO_SYSTEM), name, &[]),
        spec: SegmentSpec {
            domain: domain.to_owned(),
        },
    }
}

/// The remote-peer Gateway `istio-remote-peer-<peer>` (C3).
pub fn peer_gateway(peer: &str, network: &str, trust_domain: &str, address: &str) -> Gateway {
    let mut m = meta(
        Some(labels::ISTIO_EASTWEST),
        &format!("{}{peer}", labels::PEER_GATEWAY_PREFIX),
        &[(labels::NETWORK, network)],
    );
    m.annotations = Some(BTreeMap::from([
        (labels::TRUST_DOMAIN.to_owned(), trust_domain.to_owned()),
        (
            labels::SERVICE_ACCOUNT.to_owned(),
            "istio-eastwest".to_owned(),
        ),
    ]));
    Gateway {
        metadata: m,
        spec: GatewaySpec {
            gateway_class_name: labels::REMOTE_CLASS.into(),
            addresses: vec![GatewayAddress::ip(address)],
            listeners: crate::gateways::listeners(labels::HBONE_PORT, labels::XDS_PORT),
        },
        status: None,
    }
}

/// Builds a Service and, optionally, its Pods.
#[derive(Clone, Debug)]
pub struct ServiceBuilder {
    namespace: String,
    name: String,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    ports: Vec<PortSpec>,
    ready: usize,
    not_ready: usize,
    node: Option<String>,
    selector: bool,
    cluster_ip: Option<String>,
}

/// (name, port, targetPort, protocol) of a Service port.
type PortSpec = (Option<String>, i32, Option<IntOrString>, Option<String>);

/// A Service `namespace/name` with one port `http` 8000 -> 8080 and no pods.
pub fn svc(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: Vec::new(),
        annotations: Vec::new(),
        ports: Vec::new(),
        ready: 0,
        not_ready: 0,
        node: None,
        selector: true,
        cluster_ip: None,
    }
}

impl ServiceBuilder {
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.to_owned(), v.to_owned()));
        self
    }
    /// `solo.io/service-scope=<v>`
    pub fn scope(self, v: &str) -> Self {
        self.label(labels::SERVICE_SCOPE, v)
    }
    /// `solo.io/service-scope=global`
    pub fn global(self) -> Self {
        self.scope("global")
    }
    /// `solo.io/service-takeover=<v>`
    pub fn takeover(self, v: &str) -> Self {
        self.label(labels::SERVICE_TAKEOVER, v)
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.push((k.to_owned(), v.to_owned()));
        self
    }
    /// `networking.istio.io/traffic-distribution=<v>`
    pub fn distribution(self, v: &str) -> Self {
        self.annotation(labels::TRAFFIC_DISTRIBUTION, v)
    }
    /// A TCP port `name` `port` -> `target`.
    pub fn port(mut self, name: &str, port: i32, target: i32) -> Self {
        let name = (!name.is_empty()).then(|| name.to_owned());
        self.ports
            .push((name, port, Some(IntOrString::Int(target)), None));
        self
    }
    /// A port with a given transport protocol (`UDP`, `SCTP`).
    pub fn port_protocol(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.ports
            .push((Some(name.to_owned()), port, None, Some(protocol.to_owned())));
        self
    }
    /// A port whose target is a named container port.
    pub fn port_named_target(mut self, name: &str, port: i32, target: &str) -> Self {
        self.ports.push((
            Some(name.to_owned()),
            port,
            Some(IntOrString::String(target.to_owned())),
            None,
        ));
        self
    }
    /// `n` ready pods.
    pub fn ready(mut self, n: usize) -> Self {
        self.ready = n;
        self
    }
    /// `n` pods that are not ready.
    pub fn not_ready(mut self, n: usize) -> Self {
        self.not_ready = n;
        self
    }
    /// Pods run on this node.
    pub fn on_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }
    /// No selector (endpoints come only from EndpointSlices).
    pub fn selectorless(mut self) -> Self {
        self.selector = false;
        self
    }
    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.cluster_ip = Some(ip.to_owned());
        self
    }

    /// The Service object.
    pub fn service(&self) -> Service {
        let mut m = meta(Some(&self.namespace), &self.name, &[]);
        if !self.labels.is_empty() {
            m.labels = Some(self.labels.iter().cloned().collect());
        }
        if !self.annotations.is_empty() {
            m.annotations = Some(self.annotations.iter().cloned().collect());
        }
        let ports = if self.ports.is_empty() {
            vec![(
                Some("http".to_owned()),
                8000,
                Some(IntOrString::Int(8080)),
                None,
            )]
        } else {
            self.ports.clone()
        };
        Service {
            metadata: m,
            spec: Some(ServiceSpec {
                selector: self
                    .selector
                    .then(|| BTreeMap::from([("app".to_owned(), self.name.clone())])),
                cluster_ip: self.cluster_ip.clone(),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, target, protocol)| K8sServicePort {
                            name,
                            port,
                            target_port: target,
                            protocol,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }
}

/// Builds a cluster snapshot.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    snap: ClusterSnapshot,
    pod_net: u8,
    next_pod: u32,
}

impl ClusterBuilder {
    /// A cluster with an `istio-system` namespace whose network is its name.
    pub fn new(name: &str) -> Self {
        let mut snap = ClusterSnapshot::new(ClusterConfig::new(name));
        snap.apply(Object::Namespace(namespace(
            labels::ISTIO_SYSTEM,
            &[(labels::NETWORK, name)],
        )));
        let pod_net = (name.bytes().map(u32::from).sum::<u32>() % 250) as u8 + 1;
        ClusterBuilder {
            snap,
            pod_net,
            next_pod: 0,
        }
    }

    fn istio_system_label(mut self, k: &str, v: &str) -> Self {
        let ns = self
            .snap
            .namespaces
            .entry(labels::ISTIO_SYSTEM.to_owned())
            .or_insert_with(|| namespace(labels::ISTIO_SYSTEM, &[]));
        ns.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.to_owned(), v.to_owned());
        self
    }

    /// Network label on `istio-system`.
    pub fn network(self, network: &str) -> Self {
        self.istio_system_label(labels::NETWORK, network)
    }

    /// Default locality of the cluster's workloads.
    pub fn locality(mut self, region: &str, zone: &str) -> Self {
        self.snap.config.region = Some(region.to_owned());
        self.snap.config.zone = Some(zone.to_owned());
        self
    }

    pub fn trust_domain(mut self, td: &str) -> Self {
        self.snap.config.trust_domain = Some(td.to_owned());
        self
    }

    /// Defines a Segment.
    pub fn segment(mut self, name: &str, domain: &str) -> Self {
        self.snap.apply(Object::Segment(segment(name, domain)));
        self
    }

    /// Joins a segment (label on `istio-system`).
    pub fn join(self, segment: &str) -> Self {
        self.istio_system_label(labels::SEGMENT, segment)
    }

    /// A Namespace with labels.
    pub fn namespace(mut self, name: &str, ns_labels: &[(&str, &str)]) -> Self {
        self.snap
            .apply(Object::Namespace(namespace(name, ns_labels)));
        self
    }

    pub fn node(mut self, name: &str, region: &str, zone: &str) -> Self {
        self.snap.apply(Object::Node(node(name, region, zone)));
        self
    }

    /// Links to `peer` (network = peer name, trust domain = peer name).
    pub fn link(self, peer: &str) -> Self {
        self.link_with(peer, peer, peer)
    }

    pub fn link_with(mut self, peer: &str, network: &str, trust_domain: &str) -> Self {
        let addr = format!("192.0.2.{}", (peer.len() % 200) + 1);
        self.snap.apply(Object::Gateway(peer_gateway(
            peer,
            network,
            trust_domain,
            &addr,
        )));
        self
    }

    /// Pins the segment of the already linked `peer` (label
    /// `admin.solo.io/segment` on its remote-peer Gateway; `""`: the default
    /// segment).
    pub fn pin_segment(mut self, peer: &str, segment: &str) -> Self {
        let key = crate::NsName::new(
            labels::ISTIO_EASTWEST,
            format!("{}{peer}", labels::PEER_GATEWAY_PREFIX),
        );
        if let Some(gw) = self.snap.gateways.get_mut(&key) {
            gw.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(labels::SEGMENT.to_owned(), segment.to_owned());
        }
        self
    }

    /// Adds a Service and its pods (ready first, then not ready).
    pub fn service(mut self, b: ServiceBuilder) -> Self {
        self.snap.apply(Object::Service(b.service()));
        for i in 0..(b.ready + b.not_ready) {
            let n = self.next_pod;
            self.next_pod += 1;
            let ip = format!("10.{}.{}.{}", self.pod_net, n / 250, n % 250 + 1);
            let name = format!("{}-{i}", b.name);
            self.snap.apply(Object::Pod(pod(
                &b.namespace,
                &name,
                &[("app", &b.name)],
                &ip,
                i < b.ready,
                b.node.as_deref(),
            )));
        }
        self
    }

    /// Adds any object.
    pub fn object(mut self, obj: Object) -> Self {
        self.snap.apply(obj);
        self
    }

    pub fn build(self) -> ClusterSnapshot {
        self.snap
    }
}
