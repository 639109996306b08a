//! Who may follow the controller's catalog feed (SPEC P8): on the plain
//! API, loopback callers; on the cluster listener, clients whose
//! certificate is of this cluster's trust domain and an allowed identity
//! (the proxy's and the gateway's by default). Refusals are `403` with the
//! reason, logged and counted (`meshpeer_feed_refusals_total`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meshpeer_ca::ConnInfo;
use meshpeer_listener::ListenerMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// `(namespace, service account)` of the proxy and of the east-west
/// gateway: who may follow the catalog over mutual TLS by default.
pub const DEFAULT_FEED_IDENTITIES: [(&str, &str); 2] = [
    crate::dataplane::PROXY_IDENTITY,
    crate::dataplane::GATEWAY_IDENTITY,
];

/// Who may follow the catalog feed (SPEC P8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedAccess {
    /// This cluster's trust domain: a certificate of another is refused.
    pub trust_domain: String,
    /// `(namespace, service account)` allowed over mutual TLS.
    pub identities: BTreeSet<(String, String)>,
}

impl FeedAccess {
    /// The proxy's and the gateway's identities of `trust_domain`.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        FeedAccess {
            trust_domain: trust_domain.into(),
            identities: DEFAULT_FEED_IDENTITIES
                .iter()
                .map(|(ns, sa)| ((*ns).to_owned(), (*sa).to_owned()))
                .collect(),
        }
    }

    /// Whether `caller` may follow the catalog.
    pub fn check(&self, caller: &FeedCaller) -> Result<(), FeedRefusal> {
        match caller {
            FeedCaller::Api(remote) => {
                let ip = remote.ip().to_canonical();
                if ip.is_loopback() {
                    Ok(())
                } else {
                    Err(FeedRefusal::NotLoopback { remote: *remote })
                }
            }
            FeedCaller::Cluster(conn) => {
                let Some(id) = &conn.client_id else {
                    return Err(FeedRefusal::NoClientCertificate);
                };
                if id.trust_domain() != self.trust_domain {
                    return Err(FeedRefusal::OtherTrustDomain {
                        id: id.to_string(),
                        trust_domain: self.trust_domain.clone(),
                    });
                }
                let key = (id.namespace().to_owned(), id.service_account().to_owned());
                if self.identities.contains(&key) {
                    Ok(())
                } else {
                    let allowed: Vec<String> = self
                        .identities
                        .iter()
                        .map(|(ns, sa)| format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain))
                        .collect();
                    Err(FeedRefusal::NotAllowed {
                        id: id.to_string(),
                        allowed: allowed.join(", "),
                    })
                }
            }
        }
    }
}

/// Where a request for the catalog arrived.
#[derive(Clone, Debug)]
pub enum FeedCaller {
    /// On the plain API, from this address.
    Api(SocketAddr),
    /// On the cluster listener (TLS), from this connection.
    Cluster(ConnInfo),
}

impl FeedCaller {
    fn listener(&self) -> &'static str {
        match self {
            FeedCaller::Api(_) => "api",
            FeedCaller::Cluster(_) => "cluster",
        }
    }

    fn remote(&self) -> SocketAddr {
        match self {
            FeedCaller::Api(r) => *r,
            FeedCaller::Cluster(c) => c.remote,
        }
    }
}

/// Why a caller may not follow the catalog (answered with `403`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedRefusal {
    #[error(
        "this API serves the catalog feed to loopback callers only, and {remote} is not one; proxies and gateways follow it over mutual TLS on the controller's cluster listener (SPEC P8)"
    )]
    NotLoopback { remote: SocketAddr },
    #[error(
        "the catalog feed needs a client certificate (the proxy's or the gateway's identity); none was presented"
    )]
    NoClientCertificate,
    #[error("the client certificate {id} is not of this cluster's trust domain {trust_domain}")]
    OtherTrustDomain { id: String, trust_domain: String },
    #[error("{id} may not follow the catalog feed; allowed: {allowed}")]
    NotAllowed { id: String, allowed: String },
}

impl FeedRefusal {
    /// A stable short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FeedRefusal::NotLoopback { .. } => "not_loopback",
            FeedRefusal::NoClientCertificate => "no_client_certificate",
            FeedRefusal::OtherTrustDomain { .. } => "other_trust_domain",
            FeedRefusal::NotAllowed { .. } => "identity_not_allowed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedRefusalLabels {
    listener: &'static str,
    reason: &'static str,
}

/// [`FeedAccess`] and the refusals it counted.
#[derive(Debug)]
pub struct FeedGuard {
    access: FeedAccess,
    refusals: Family<FeedRefusalLabels, Counter>,
    /// The plain API's listener bounds at work (SPEC B5), registered with
    /// the feed's counters: the API is where the feed is served plainly.
    pub(crate) api_listener: Arc<ListenerMetrics>,
}

impl FeedGuard {
    /// Registers `feed_refusals_total{listener, reason}` in `registry`, and
    /// the plain API listener's `api_listener_*` (B5).
    pub fn new(access: FeedAccess, registry: &mut Registry) -> Arc<FeedGuard> {
        let refusals = Family::<FeedRefusalLabels, Counter>::default();
        registry.register(
            "feed_refusals",
            "Catalog feed requests refused (SPEC P8), by listener and reason",
            refusals.clone(),
        );
        let api_listener = ListenerMetrics::register(registry.sub_registry_with_prefix("api"));
        Arc::new(FeedGuard {
            access,
            refusals,
            api_listener,
        })
    }

    /// Whether `caller` is who may follow the catalog (also who may
    /// report traffic), not counted.
    pub(crate) fn check(&self, caller: &FeedCaller) -> Result<(), FeedRefusal> {
        self.access.check(caller)
    }

    /// `None` when `caller` may follow the catalog; else the `403` to
    /// answer (logged and counted).
    pub(crate) fn refusal(&self, caller: &FeedCaller) -> Option<Response> {
        self.access.check(caller).err().map(|refusal| {
            self.refusals
                .get_or_create(&FeedRefusalLabels {
                    listener: caller.listener(),
                    reason: refusal.reason(),
                })
                .inc();
            tracing::warn!(
                remote = %caller.remote(),
                listener = caller.listener(),
                reason = refusal.reason(),
                "catalog feed refused: {refusal}"
            );
            (StatusCode::FORBIDDEN, format!("{refusal}\n")).into_response()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(id: Option<&str>) -> FeedCaller {
        FeedCaller::Cluster(ConnInfo {
            remote: "10.0.0.7:40000".parse().unwrap(),
            client_id: id.map(|s| s.parse().unwrap()),
        })
    }

    #[test]
    fn p8_who_may_follow_the_catalog() {
        let access = FeedAccess::new("c1");
        let cases: Vec<(FeedCaller, Option<&str>)> = vec![
            (FeedCaller::Api("127.0.0.1:1".parse().unwrap()), None),
            (FeedCaller::Api("127.9.9.9:1".parse().unwrap()), None),
            (FeedCaller::Api("[::1]:1".parse().unwrap()), None),
            (
                FeedCaller::Api("[::ffff:127.0.0.1]:1".parse().unwrap()),
                None,
            ),
            (
                FeedCaller::Api("10.0.0.7:1".parse().unwrap()),
                Some("not_loopback"),
            ),
            (
                FeedCaller::Api("[::ffff:10.0.0.7]:1".parse().unwrap()),
                Some("not_loopback"),
            ),
            (
                cluster(Some("spiffe://c1/ns/istio-system/sa/meshpeer-proxy")),
                None,
            ),
            (
                cluster(Some("spiffe://c1/ns/istio-eastwest/sa/istio-eastwest")),
                None,
            ),
            (cluster(None), Some("no_client_certificate")),
            (
                cluster(Some("spiffe://c2/ns/istio-system/sa/meshpeer-proxy")),
                Some("other_trust_domain"),
            ),
            (
                cluster(Some("spiffe://c1/ns/istio-system/sa/meshpeer")),
                Some("identity_not_allowed"),
            ),
            (
                cluster(Some("spiffe://c1/ns/default/sa/sleep")),
                Some("identity_not_allowed"),
            ),
        ];
        for (caller, want) in cases {
            let got = access.check(&caller).err().map(|r| r.reason());
            assert_eq!(got, want, "{caller:?}");
        }
        // The list is configurable.
        let mut custom = FeedAccess::new("c1");
        custom.identities = [("istio-system".to_owned(), "meshpeer-gateway".to_owned())].into();
        assert!(
            custom
                .check(&cluster(Some(
                    "spiffe://c1/ns/istio-system/sa/meshpeer-gateway"
                )))
                .is_ok()
        );
        assert!(
            custom
                .check(&cluster(Some(
                    "spiffe://c1/ns/istio-eastwest/sa/istio-eastwest"
                )))
                .is_err()
        );
    }
}
