//! Who may open a peering stream to this cluster (P1, P3), judged by this
//! cluster's own configuration and links, never by what the client says.
//!
//! Any certificate under the shared root passes the TLS handshake; a
//! workload's or a proxy's must still not be able to peer. The certificate
//! must be a controller identity of another trust domain (and of an allowed
//! one, when an allow-list is set). What the client then claims in its
//! Hello (its cluster name, its segment) must agree with what this
//! cluster's own remote-peer Gateway for it says, when there is one.

use std::collections::{BTreeMap, BTreeSet};

use meshpeer_identity::SpiffeId;
use meshpeer_model::PeerLink;
use meshpeer_model::links::segment_display;

/// The default namespace of a controller's SPIFFE identity.
pub const CONTROLLER_NAMESPACE: &str = "istio-system";
/// The default service account of a controller's SPIFFE identity.
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "meshpeer";

/// What this cluster's own link to a client says of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownPeer {
    /// The cluster name the link gives it.
    pub cluster: String,
    /// The Gateway that declares the link (for messages).
    pub gateway: String,
    /// The pinned segment: `None` not pinned; `Some(None)` the default
    /// segment; `Some(Some(name))` that segment (P3).
    pub segment: Option<Option<String>>,
}

/// The server's admission rules; replaced as a whole when links change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// This cluster's own trust domain: a client presenting it is refused.
    pub own_trust_domain: String,
    /// Namespace and service account of a controller identity (P1).
    pub controller_namespace: String,
    pub controller_service_account: String,
    /// When set, only these trust domains may peer (`--allowed-peers`).
    pub allowed_trust_domains: Option<BTreeSet<String>>,
    /// This cluster's links, by the trust domain each expects (C1).
    pub links: BTreeMap<String, KnownPeer>,
}

impl Admission {
    /// Controllers of any other trust domain, no links known yet.
    pub fn new(own_trust_domain: &str) -> Self {
        Admission {
            own_trust_domain: own_trust_domain.to_owned(),
            controller_namespace: CONTROLLER_NAMESPACE.to_owned(),
            controller_service_account: CONTROLLER_SERVICE_ACCOUNT.to_owned(),
            allowed_trust_domains: None,
            links: BTreeMap::new(),
        }
    }

    /// Replaces the known links with `links` (the catalog's).
    pub fn with_links<'a>(mut self, links: impl IntoIterator<Item = &'a PeerLink>) -> Self {
        self.links = links
            .into_iter()
            .map(|l| {
                (
                    l.trust_domain.clone(),
                    KnownPeer {
                        cluster: l.cluster.clone(),
                        gateway: l.gateway.to_string(),
                        segment: l.pinned_segment().map(|s| s.map(str::to_owned)),
                    },
                )
            })
            .collect();
        self
    }

    /// The identity a controller of `trust_domain` presents.
    pub fn controller_identity(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.controller_namespace, self.controller_service_account
        )
    }

    /// Whether a verified certificate may peer at all (P1).
    pub fn admit_identity(&self, id: &SpiffeId) -> Result<(), Denial> {
        let td = id.trust_domain();
        if id.namespace() != self.controller_namespace
            || id.service_account() != self.controller_service_account
        {
            return Err(Denial {
                reason: "not_a_controller",
                message: format!(
                    "certificate {id} is not a controller identity; only {} may peer",
                    self.controller_identity(td)
                ),
            });
        }
        if td == self.own_trust_domain {
            return Err(Denial {
                reason: "own_trust_domain",
                message: format!(
                    "certificate {id} is of this cluster's own trust domain {td}; a cluster does not peer with itself"
                ),
            });
        }
        if let Some(allowed) = &self.allowed_trust_domains
            && !allowed.contains(td)
        {
            return Err(Denial {
                reason: "peer_not_allowed",
                message: format!(
                    "trust domain {td} is not among the allowed peers ({})",
                    allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Whether what a client claims in its Hello agrees with this cluster's
    /// own link to it, if any (P3). `segment`: `None` is the default one.
    pub fn admit_claims(
        &self,
        trust_domain: &str,
        cluster: &str,
        segment: Option<&str>,
    ) -> Result<(), Denial> {
        if let Some(known) = self.links.get(trust_domain) {
            if known.cluster != cluster {
                return Err(Denial {
                    reason: "cluster_name_mismatch",
                    message: format!(
                        "trust domain {trust_domain} says it is cluster {cluster}, but gateway {} links it as cluster {}",
                        known.gateway, known.cluster
                    ),
                });
            }
            if let Some(pin) = &known.segment
                && pin.as_deref() != segment
            {
                return Err(Denial {
                    reason: "segment_pin_mismatch",
                    message: format!(
                        "cluster {cluster} says it is in {}, but gateway {} pins it to {}",
                        segment_display(segment),
                        known.gateway,
                        segment_display(pin.as_deref())
                    ),
                });
            }
        } else if let Some((td, known)) = self.links.iter().find(|(_, k)| k.cluster == cluster) {
            return Err(Denial {
                reason: "cluster_name_mismatch",
                message: format!(
                    "trust domain {trust_domain} says it is cluster {cluster}, but gateway {} links cluster {cluster} with trust domain {td}",
                    known.gateway
                ),
            });
        }
        Ok(())
    }
}

/// Why a client may not peer: a stable metric label and a message for the
/// wire, the logs and status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub reason: &'static str,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn p1_only_controller_identities_of_other_trust_domains_may_peer() {
        let a = Admission::new("cluster1");
        assert!(
            a.admit_identity(&id("spiffe://cluster2/ns/istio-system/sa/meshpeer"))
                .is_ok()
        );
        for (who, reason) in [
            (
                "spiffe://cluster2/ns/httpbin/sa/default",
                "not_a_controller",
            ),
            (
                "spiffe://cluster2/ns/istio-system/sa/meshpeer-proxy",
                "not_a_controller",
            ),
            (
                "spiffe://cluster2/ns/istio-eastwest/sa/istio-eastwest",
                "not_a_controller",
            ),
            (
                "spiffe://cluster1/ns/istio-system/sa/meshpeer",
                "own_trust_domain",
            ),
        ] {
            let d = a.admit_identity(&id(who)).unwrap_err();
            assert_eq!(d.reason, reason, "{who}");
            assert!(d.message.contains(who), "{d}");
        }
        let mut allow = Admission::new("cluster1");
        allow.allowed_trust_domains = Some(["cluster3".to_owned()].into());
        let d = allow
            .admit_identity(&id("spiffe://cluster2/ns/istio-system/sa/meshpeer"))
            .unwrap_err();
        assert_eq!(d.reason, "peer_not_allowed");
        assert!(
            allow
                .admit_identity(&id("spiffe://cluster3/ns/istio-system/sa/meshpeer"))
                .is_ok()
        );
    }

    #[test]
    fn p3_claims_must_agree_with_the_local_link() {
        let mut a = Admission::new("cluster1");
        a.links.insert(
            "cluster2".into(),
            KnownPeer {
                cluster: "cluster2".into(),
                gateway: "istio-eastwest/istio-remote-peer-cluster2".into(),
                segment: Some(Some("prod".into())),
            },
        );
        assert!(a.admit_claims("cluster2", "cluster2", Some("prod")).is_ok());
        let d = a
            .admit_claims("cluster2", "cluster2", Some("dev"))
            .unwrap_err();
        assert_eq!(d.reason, "segment_pin_mismatch");
        assert!(
            d.message
                .contains("says it is in segment dev, but gateway istio-eastwest/istio-remote-peer-cluster2 pins it to segment prod"),
            "{d}"
        );
        assert!(a.admit_claims("cluster2", "cluster2", None).is_err());
        let d = a
            .admit_claims("cluster2", "cluster9", Some("prod"))
            .unwrap_err();
        assert_eq!(d.reason, "cluster_name_mismatch");
        // Another trust domain may not take a linked cluster's name.
        let d = a
            .admit_claims("cluster3", "cluster2", Some("prod"))
            .unwrap_err();
        assert_eq!(d.reason, "cluster_name_mismatch");
        // Unlinked peers (C4, asymmetric) are trusted in what they claim.
        assert!(a.admit_claims("cluster3", "cluster3", Some("dev")).is_ok());
    }
}
