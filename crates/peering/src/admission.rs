//! Who may open a peering stream to this cluster (P1, P3), judged by this
//! cluster's own configuration and links, never by what the client says.
//!
//! Any certificate under the shared root passes the TLS handshake; a
//! workload's or a proxy's must still not be able to peer. The certificate
//! must be a controller identity of another cluster (and of an allowed
//! one, when an allow-list is set). Another cluster is another trust
//! domain, or, where clusters share one trust domain, a chain whose
//! intermediate the root bound to another cluster (SPEC P6's cluster
//! binding): then the cluster binding, not the trust domain, tells them
//! apart. What the client then claims in its Hello (its cluster name, its
//! segment) must agree with its cluster binding and with what this
//! cluster's own remote-peer Gateway for it says, when there is one.

use std::collections::{BTreeMap, BTreeSet};

use meshpeer_identity::{SpiffeId, VerifiedPeer};
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
    /// The trust domain the link expects of it.
    pub trust_domain: String,
    /// The Gateway that declares the link (for messages).
    pub gateway: String,
    /// The pinned segment: `None` not pinned; `Some(None)` the default
    /// segment; `Some(Some(name))` that segment (P3).
    pub segment: Option<Option<String>>,
}

/// The server's admission rules; replaced as a whole when links change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// This cluster's own trust domain: a client presenting it is refused,
    /// unless its chain is bound to another cluster (a shared trust domain).
    pub own_trust_domain: String,
    /// This cluster's name: a chain bound to it is refused (`own_cluster`).
    pub own_cluster: String,
    /// Whether this cluster's own intermediate carries a cluster binding:
    /// then a chain of our trust domain without one cannot be told apart
    /// from ours and is refused as `no_cluster_binding` (else as
    /// `own_trust_domain`, as before cluster bindings).
    pub own_cluster_bound: bool,
    /// Namespace and service account of a controller identity (P1).
    pub controller_namespace: String,
    pub controller_service_account: String,
    /// When set, only these may peer (`--allowed-peers`): an entry names a
    /// trust domain (any cluster of it, except ours) or a cluster (its
    /// chain's cluster binding), which is how one cluster of a shared trust
    /// domain is allowed.
    pub allowed_trust_domains: Option<BTreeSet<String>>,
    /// This cluster's links, by the cluster name each gives its peer (C1).
    pub links: BTreeMap<String, KnownPeer>,
}

impl Admission {
    /// Controllers of any other trust domain, no links known yet; the
    /// cluster is taken to be named after its trust domain.
    pub fn new(own_trust_domain: &str) -> Self {
        Admission {
            own_trust_domain: own_trust_domain.to_owned(),
            own_cluster: own_trust_domain.to_owned(),
            own_cluster_bound: false,
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
                    l.cluster.clone(),
                    KnownPeer {
                        cluster: l.cluster.clone(),
                        trust_domain: l.trust_domain.clone(),
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

    /// Whether `trust_domain` is shared by several clusters as far as this
    /// cluster can tell: it is our own, or two of our links expect it.
    pub fn is_shared(&self, trust_domain: &str) -> bool {
        trust_domain == self.own_trust_domain
            || self
                .links
                .values()
                .filter(|k| k.trust_domain == trust_domain)
                .count()
                > 1
    }

    /// Whether a verified certificate may peer at all (P1).
    pub fn admit_identity(&self, peer: &VerifiedPeer) -> Result<(), Denial> {
        let id = &peer.id;
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
        match peer.cluster.as_deref() {
            Some(cluster) if cluster == self.own_cluster => {
                return Err(Denial {
                    reason: "own_cluster",
                    message: format!(
                        "certificate {id} is issued by an intermediate bound to this cluster {cluster}; a cluster does not peer with itself"
                    ),
                });
            }
            None if td == self.own_trust_domain && self.own_cluster_bound => {
                return Err(no_binding(id));
            }
            None if td == self.own_trust_domain => {
                return Err(Denial {
                    reason: "own_trust_domain",
                    message: format!(
                        "certificate {id} is of this cluster's own trust domain {td}; a cluster does not peer with itself"
                    ),
                });
            }
            None if self.is_shared(td) => return Err(no_binding(id)),
            _ => {}
        }
        if let Some(allowed) = &self.allowed_trust_domains {
            let by_cluster = peer.cluster.as_ref().is_some_and(|c| allowed.contains(c));
            let by_trust_domain = td != self.own_trust_domain && allowed.contains(td);
            if !by_cluster && !by_trust_domain {
                let who = match &peer.cluster {
                    Some(c) => format!("cluster {c} (trust domain {td})"),
                    None => format!("trust domain {td}"),
                };
                return Err(Denial {
                    reason: "peer_not_allowed",
                    message: format!(
                        "{who} is not among the allowed peers ({})",
                        allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// The link this cluster holds for a verified peer, if any: by its
    /// cluster binding when its chain has one, else by its trust domain.
    pub fn link_of(&self, peer: &VerifiedPeer) -> Option<&KnownPeer> {
        match &peer.cluster {
            Some(c) => self
                .links
                .get(c)
                .filter(|k| k.trust_domain == peer.id.trust_domain()),
            None => self
                .links
                .values()
                .find(|k| k.trust_domain == peer.id.trust_domain()),
        }
    }

    /// Whether what a client claims in its Hello agrees with its chain's
    /// cluster binding and with this cluster's own link to it, if any
    /// (P3). `segment`: `None` is the default one.
    pub fn admit_claims(
        &self,
        peer: &VerifiedPeer,
        cluster: &str,
        segment: Option<&str>,
    ) -> Result<(), Denial> {
        let trust_domain = peer.id.trust_domain();
        if let Some(bound) = &peer.cluster
            && bound != cluster
        {
            return Err(Denial {
                reason: "cluster_name_mismatch",
                message: format!(
                    "certificate {} says it is cluster {cluster}, but its intermediate is bound to cluster {bound}",
                    peer.id
                ),
            });
        }
        if let Some(known) = self.link_of(peer) {
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
        } else if let Some(known) = self.links.get(cluster) {
            return Err(Denial {
                reason: "cluster_name_mismatch",
                message: format!(
                    "trust domain {trust_domain} says it is cluster {cluster}, but gateway {} links cluster {cluster} with trust domain {}",
                    known.gateway, known.trust_domain
                ),
            });
        }
        Ok(())
    }

    /// Whether this cluster links to the served peer `peer`, which said it
    /// is `cluster` (admitted by [`Admission::admit_claims`]).
    pub fn links_to(&self, peer: &VerifiedPeer, cluster: &str) -> bool {
        self.link_of(peer).is_some_and(|k| k.cluster == cluster)
    }
}

fn no_binding(id: &SpiffeId) -> Denial {
    Denial {
        reason: "no_cluster_binding",
        message: format!(
            "certificate {id} is of a trust domain shared by several clusters, but its intermediate carries no cluster binding (spiffe://<td>/meshpeer/cluster/<name>), so it cannot say which cluster it speaks for; re-issue that cluster's intermediate with meshpeer certs cluster"
        ),
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

    /// A peer whose chain carries no cluster binding (per-cluster trust
    /// domains, intermediates made before cluster bindings).
    fn unbound(s: &str) -> VerifiedPeer {
        VerifiedPeer {
            id: id(s),
            cluster: None,
        }
    }

    fn bound(s: &str, cluster: &str) -> VerifiedPeer {
        VerifiedPeer {
            id: id(s),
            cluster: Some(cluster.to_owned()),
        }
    }

    fn link(cluster: &str, td: &str, segment: Option<Option<String>>) -> (String, KnownPeer) {
        (
            cluster.to_owned(),
            KnownPeer {
                cluster: cluster.into(),
                trust_domain: td.into(),
                gateway: format!("istio-eastwest/istio-remote-peer-{cluster}"),
                segment,
            },
        )
    }

    #[test]
    fn p1_only_controller_identities_of_other_trust_domains_may_peer() {
        let a = Admission::new("cluster1");
        assert!(
            a.admit_identity(&unbound("spiffe://cluster2/ns/istio-system/sa/meshpeer"))
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
            let d = a.admit_identity(&unbound(who)).unwrap_err();
            assert_eq!(d.reason, reason, "{who}");
            assert!(d.message.contains(who), "{d}");
        }
        let mut allow = Admission::new("cluster1");
        allow.allowed_trust_domains = Some(["cluster3".to_owned()].into());
        let d = allow
            .admit_identity(&unbound("spiffe://cluster2/ns/istio-system/sa/meshpeer"))
            .unwrap_err();
        assert_eq!(d.reason, "peer_not_allowed");
        assert!(
            allow
                .admit_identity(&unbound("spiffe://cluster3/ns/istio-system/sa/meshpeer"))
                .is_ok()
        );
        // Per-cluster trust domains with cluster-bound chains: the same.
        assert!(
            a.admit_identity(&bound(
                "spiffe://cluster2/ns/istio-system/sa/meshpeer",
                "cluster2"
            ))
            .is_ok()
        );
        let d = a
            .admit_identity(&bound(
                "spiffe://cluster1/ns/istio-system/sa/meshpeer",
                "cluster1",
            ))
            .unwrap_err();
        assert_eq!(d.reason, "own_cluster");
    }

    #[test]
    fn p1_in_a_shared_trust_domain_the_cluster_binding_decides() {
        const ME: &str = "spiffe://cluster.local/ns/istio-system/sa/meshpeer";
        let mut a = Admission::new("cluster.local");
        a.own_cluster = "cluster1".into();
        a.own_cluster_bound = true;
        a.links = [link("cluster2", "cluster.local", None)].into();
        assert!(a.admit_identity(&bound(ME, "cluster2")).is_ok());
        assert!(
            a.admit_identity(&bound(ME, "cluster3")).is_ok(),
            "C4: one-way peers"
        );
        let d = a.admit_identity(&bound(ME, "cluster1")).unwrap_err();
        assert_eq!(d.reason, "own_cluster");
        let d = a.admit_identity(&unbound(ME)).unwrap_err();
        assert_eq!(d.reason, "no_cluster_binding");
        assert!(d.message.contains("cannot say which cluster"), "{d}");

        // --allowed-peers names clusters; the shared trust domain itself
        // does not open the door to every cluster of it.
        a.allowed_trust_domains = Some(["cluster2".to_owned(), "cluster.local".to_owned()].into());
        assert!(a.admit_identity(&bound(ME, "cluster2")).is_ok());
        let d = a.admit_identity(&bound(ME, "cluster3")).unwrap_err();
        assert_eq!(d.reason, "peer_not_allowed");
        assert!(d.message.contains("cluster cluster3"), "{d}");

        // Claims: its Hello must name its intermediate's cluster.
        assert!(
            a.admit_claims(&bound(ME, "cluster2"), "cluster2", None)
                .is_ok()
        );
        let d = a
            .admit_claims(&bound(ME, "cluster3"), "cluster2", None)
            .unwrap_err();
        assert_eq!(d.reason, "cluster_name_mismatch");
        assert!(d.message.contains("bound to cluster cluster3"), "{d}");
        assert!(a.links_to(&bound(ME, "cluster2"), "cluster2"));
        assert!(!a.links_to(&bound(ME, "cluster3"), "cluster3"));
    }

    #[test]
    fn p1_two_links_of_one_other_trust_domain_need_cluster_bindings() {
        let mut a = Admission::new("cluster1");
        a.links = [
            link("cluster2", "shared.example", None),
            link("cluster3", "shared.example", None),
        ]
        .into();
        let them = "spiffe://shared.example/ns/istio-system/sa/meshpeer";
        assert_eq!(
            a.admit_identity(&unbound(them)).unwrap_err().reason,
            "no_cluster_binding"
        );
        assert!(a.admit_identity(&bound(them, "cluster3")).is_ok());
        assert!(a.links_to(&bound(them, "cluster3"), "cluster3"));
        assert!(!a.links_to(&bound(them, "cluster3"), "cluster2"));
    }

    #[test]
    fn p3_claims_must_agree_with_the_local_link() {
        let mut a = Admission::new("cluster1");
        a.links = [link("cluster2", "cluster2", Some(Some("prod".into())))].into();
        let c2 = unbound("spiffe://cluster2/ns/istio-system/sa/meshpeer");
        assert!(a.admit_claims(&c2, "cluster2", Some("prod")).is_ok());
        let d = a.admit_claims(&c2, "cluster2", Some("dev")).unwrap_err();
        assert_eq!(d.reason, "segment_pin_mismatch");
        assert!(
            d.message
                .contains("says it is in segment dev, but gateway istio-eastwest/istio-remote-peer-cluster2 pins it to segment prod"),
            "{d}"
        );
        assert!(a.admit_claims(&c2, "cluster2", None).is_err());
        let d = a.admit_claims(&c2, "cluster9", Some("prod")).unwrap_err();
        assert_eq!(d.reason, "cluster_name_mismatch");
        // Another trust domain may not take a linked cluster's name.
        let c3 = unbound("spiffe://cluster3/ns/istio-system/sa/meshpeer");
        let d = a.admit_claims(&c3, "cluster2", Some("prod")).unwrap_err();
        assert_eq!(d.reason, "cluster_name_mismatch");
        // Unlinked peers (C4, asymmetric) are trusted in what they claim.
        assert!(a.admit_claims(&c3, "cluster3", Some("dev")).is_ok());
    }
}
