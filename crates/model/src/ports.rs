//! Service ports of a global service: reading them from a Service, the
//! protocol Istio would give them, and merging them across clusters (G9).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

/// A port of a global service, as rendered in the ServiceEntry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// Port name (the Service's, or `<protocol>-<number>` for an unnamed port).
    pub name: String,
    pub number: u16,
    /// Istio protocol: HTTP, HTTP2, HTTPS, GRPC, TLS, TCP, MONGO, MYSQL, REDIS.
    pub protocol: String,
    /// Name on the Service (empty for an unnamed port); EndpointSlice ports
    /// are matched by it. Not sent to peers.
    #[serde(skip)]
    pub(crate) source: String,
    /// The Service's `targetPort`. Not sent to peers.
    #[serde(skip)]
    pub(crate) target: Option<TargetPort>,
}

/// A Service's `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TargetPort {
    Number(u16),
    Named(String),
}

impl ServicePort {
    /// A port as peers see it (no Service-local details).
    pub fn new(name: &str, number: u16, protocol: &str) -> Self {
        ServicePort {
            name: name.to_owned(),
            number,
            protocol: protocol.to_owned(),
            source: String::new(),
            target: None,
        }
    }

    pub(crate) fn source_name(&self) -> &str {
        &self.source
    }

    pub(crate) fn target_number(&self) -> Option<u16> {
        match &self.target {
            Some(TargetPort::Number(n)) => Some(*n),
            _ => None,
        }
    }

    /// The same port as seen by a peer (local-only fields cleared).
    pub(crate) fn wire(&self) -> ServicePort {
        ServicePort {
            source: String::new(),
            target: None,
            ..self.clone()
        }
    }
}

/// A Service port that cannot be carried by the mesh, with why.
pub(crate) struct SkippedPort {
    pub(crate) number: i32,
    pub(crate) reason: String,
}

/// The TCP ports of a Service, sorted by number; other ports with the reason
/// they are skipped.
pub(crate) fn service_ports(svc: &Service) -> (Vec<ServicePort>, Vec<SkippedPort>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let mut seen_numbers = BTreeSet::new();
    let mut seen_names = BTreeSet::new();
    for p in svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
    {
        let transport = p.protocol.as_deref().unwrap_or("TCP");
        if transport != "TCP" {
            skipped.push(SkippedPort {
                number: p.port,
                reason: format!(
                    "protocol {transport} is not carried by the mesh (TCP only); the port is left out"
                ),
            });
            continue;
        }
        let Some(number) = u16::try_from(p.port).ok().filter(|n| *n != 0) else {
            skipped.push(SkippedPort {
                number: p.port,
                reason: "is not a port number (1-65535); the port is left out".into(),
            });
            continue;
        };
        let source = p.name.clone().unwrap_or_default();
        let protocol = protocol_of(p.app_protocol.as_deref(), &source);
        let name = if source.is_empty() {
            format!("{}-{number}", protocol.to_ascii_lowercase())
        } else {
            source.clone()
        };
        if !seen_numbers.insert(number) || !seen_names.insert(name.clone()) {
            skipped.push(SkippedPort {
                number: p.port,
                reason: format!(
                    "duplicates another port's number or name ({name}); only the first is used"
                ),
            });
            continue;
        }
        out.push(ServicePort {
            name,
            number,
            protocol: protocol.to_owned(),
            source,
            target: p.target_port.as_ref().and_then(|t| match t {
                IntOrString::Int(n) => u16::try_from(*n).ok().map(TargetPort::Number),
                IntOrString::String(s) => match s.parse::<u16>() {
                    Ok(n) => Some(TargetPort::Number(n)),
                    Err(_) => Some(TargetPort::Named(s.clone())),
                },
            }),
        });
    }
    out.sort_by_key(|p| p.number);
    (out, skipped)
}

/// Istio's protocol selection: `appProtocol` first, then the port name prefix
/// (`http`, `http-web`, `grpc-api` ...), else TCP.
pub fn protocol_of(app_protocol: Option<&str>, name: &str) -> &'static str {
    if let Some(app) = app_protocol
        && let Some(p) = known_protocol(app)
    {
        return p;
    }
    let prefix = name.split('-').next().unwrap_or_default();
    known_protocol(prefix).unwrap_or("TCP")
}

fn known_protocol(s: &str) -> Option<&'static str> {
    Some(match s.to_ascii_lowercase().as_str() {
        "http" | "kubernetes.io/ws" => "HTTP",
        "http2" | "h2c" | "kubernetes.io/h2c" => "HTTP2",
        "https" | "kubernetes.io/wss" => "HTTPS",
        "grpc" | "grpc-web" => "GRPC",
        "tls" => "TLS",
        "tcp" => "TCP",
        "mongo" => "MONGO",
        "mysql" => "MYSQL",
        "redis" => "REDIS",
        _ => return None,
    })
}

/// Merged ports of a global service and the conflicts found.
pub(crate) struct MergedPorts {
    pub(crate) ports: Vec<ServicePort>,
    /// Human-readable conflict descriptions (one per port number or name).
    pub(crate) conflicts: Vec<String>,
}

/// Union by port number (G9). When clusters disagree on a port's name or
/// protocol, the definition used by most clusters wins; on a tie, the one of
/// the cluster whose name sorts first. Two numbers that end up with the same
/// name keep the name on the lower number; the higher becomes
/// `<name>-<number>` (ServiceEntry port names must be unique).
pub(crate) fn merge<'a>(
    contributions: impl IntoIterator<Item = (&'a str, &'a [ServicePort])>,
) -> MergedPorts {
    // port number -> (cluster, (name, protocol)) votes
    type Votes<'v> = Vec<(&'v str, (&'v str, &'v str))>;
    let mut by_number: BTreeMap<u16, Votes<'_>> = BTreeMap::new();
    let mut clusters: Vec<&str> = Vec::new();
    for (cluster, ports) in contributions {
        clusters.push(cluster);
        for p in ports {
            by_number
                .entry(p.number)
                .or_default()
                .push((cluster, (p.name.as_str(), p.protocol.as_str())));
        }
    }
    let mut conflicts = Vec::new();
    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    for (number, votes) in by_number {
        let Some(((name, protocol), disagreed)) = crate::catalog::pick(&votes) else {
            continue;
        };
        if disagreed {
            let seen: Vec<String> = votes
                .iter()
                .map(|(c, (n, p))| format!("{c}={n}/{p}"))
                .collect();
            conflicts.push(format!(
                "clusters disagree on port {number}: {}; using {name}/{protocol} (most clusters, ties to the cluster whose name sorts first)",
                seen.join(", ")
            ));
        }
        if votes.len() < clusters.len() {
            let serving: Vec<&str> = votes.iter().map(|(c, _)| *c).collect();
            let lacking: Vec<&str> = clusters
                .iter()
                .copied()
                .filter(|c| !serving.contains(c))
                .collect();
            conflicts.push(format!(
                "port {number} is served by {} only, not by {}: meshpeer's proxies and gateways send port {number} only to endpoints that serve it, and the rendered endpoints list only their cluster's ports, but an Istio data plane may still send it to {}'s endpoints (Istio gives every endpoint of a ServiceEntry all its ports: pilot/pkg/serviceregistry/serviceentry/conversion.go); serve the same ports in every cluster",
                serving.join(", "),
                lacking.join(", "),
                lacking.join(", ")
            ));
        }
        let mut final_name = name.to_owned();
        if !names.insert(final_name.clone()) {
            final_name = format!("{name}-{number}");
            names.insert(final_name.clone());
            conflicts.push(format!(
                "port name {name} is used by two port numbers across clusters; port {number} is renamed {final_name}"
            ));
        }
        ports.push(ServicePort {
            name: final_name,
            number,
            protocol: protocol.to_owned(),
            source: String::new(),
            target: None,
        });
    }
    MergedPorts { ports, conflicts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_selection() {
        assert_eq!(protocol_of(None, "http"), "HTTP");
        assert_eq!(protocol_of(None, "http-web"), "HTTP");
        assert_eq!(protocol_of(None, "grpc-api"), "GRPC");
        assert_eq!(protocol_of(None, "web"), "TCP");
        assert_eq!(protocol_of(None, ""), "TCP");
        assert_eq!(protocol_of(Some("kubernetes.io/h2c"), "web"), "HTTP2");
        assert_eq!(protocol_of(Some("unknown"), "http"), "HTTP");
    }

    #[test]
    fn g9_port_union_and_conflicts() {
        let c1 = [ServicePort::new("http", 8000, "HTTP")];
        let c2 = [
            ServicePort::new("web", 8000, "TCP"),
            ServicePort::new("http", 9000, "HTTP"),
        ];
        let c3 = [ServicePort::new("http", 8000, "HTTP")];
        let m = merge([
            ("cluster2", &c2[..]),
            ("cluster1", &c1[..]),
            ("cluster3", &c3[..]),
        ]);
        let got: Vec<(String, u16, String)> = m
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.number, p.protocol.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("http".to_owned(), 8000, "HTTP".to_owned()),
                ("http-9000".to_owned(), 9000, "HTTP".to_owned())
            ]
        );
        assert_eq!(m.conflicts.len(), 3, "{:?}", m.conflicts);
        assert!(m.conflicts[0].contains("cluster2=web/TCP"));
        assert!(
            m.conflicts[1]
                .starts_with("port 9000 is served by cluster2 only, not by cluster1, cluster3:"),
            "{}",
            m.conflicts[1]
        );
    }
}
