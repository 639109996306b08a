//! Label, annotation and object names meshpeer reads and writes. They are the
//! ones of the system meshpeer is modelled on (see SPEC), so existing manifests
//! work unchanged.

/// Service or Namespace label that makes services global (G1).
pub const SERVICE_SCOPE: &str = "solo.io/service-scope";
/// Service or Namespace label that takes over the cluster-local name (K1).
pub const SERVICE_TAKEOVER: &str = "solo.io/service-takeover";
/// Service annotation selecting the traffic distribution (T1).
pub const TRAFFIC_DISTRIBUTION: &str = "networking.istio.io/traffic-distribution";
/// `istio-system` Namespace label naming the cluster's Segment (S2).
pub const SEGMENT: &str = "admin.solo.io/segment";
/// Network of a cluster (on `istio-system`) or of a gateway (C1, C2, C3).
pub const NETWORK: &str = "topology.istio.io/network";
/// Cluster an endpoint belongs to, on rendered endpoints.
pub const CLUSTER: &str = "topology.istio.io/cluster";
/// Node / Pod / Gateway locality labels (C1).
pub const REGION: &str = "topology.kubernetes.io/region";
pub const ZONE: &str = "topology.kubernetes.io/zone";
pub const SUBZONE: &str = "topology.istio.io/subzone";
/// Remote-peer Gateway annotations (C3).
pub const TRUST_DOMAIN: &str = "gateway.istio.io/trust-domain";
pub const SERVICE_ACCOUNT: &str = "gateway.istio.io/service-account";
/// East-west Gateway label exposing the control plane (C2).
pub const EXPOSE_ISTIOD: &str = "istio.io/expose-istiod";
/// EndpointSlice label naming its Service.
pub const ENDPOINTSLICE_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Label on every object meshpeer generates; only objects carrying it are
/// ever updated or deleted by meshpeer.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "meshpeer";
/// Labels and annotations on generated ServiceEntries.
pub const GEN_SERVICE_NAME: &str = "meshpeer.io/service-name";
pub const GEN_SERVICE_NAMESPACE: &str = "meshpeer.io/service-namespace";
pub const GEN_SEGMENT: &str = "meshpeer.io/segment";
pub const GEN_SCOPE: &str = "meshpeer.io/scope";
pub const GEN_CLUSTERS: &str = "meshpeer.io/clusters";
pub const GEN_TAKEOVER: &str = "meshpeer.io/takeover";

pub const ISTIO_SYSTEM: &str = "istio-system";
pub const ISTIO_EASTWEST: &str = "istio-eastwest";
/// GatewayClass of a cluster's own east-west gateway (C2).
pub const EASTWEST_CLASS: &str = "istio-eastwest";
/// GatewayClass of a link to another cluster (C3).
pub const REMOTE_CLASS: &str = "istio-remote";
/// Name prefix of remote-peer Gateways: `istio-remote-peer-<cluster>` (C3).
pub const PEER_GATEWAY_PREFIX: &str = "istio-remote-peer-";
/// Domain of the implicit default segment (G6, S2).
pub const DEFAULT_DOMAIN: &str = "mesh.internal";
/// Suffix of cluster-local service names (K1).
pub const CLUSTER_LOCAL_SUFFIX: &str = "svc.cluster.local";

/// HBONE port of an east-west gateway (C2, D2).
pub const HBONE_PORT: u16 = 15008;
/// Control-plane (peering) port of an east-west gateway (C2, C4).
pub const XDS_PORT: u16 = 15012;
