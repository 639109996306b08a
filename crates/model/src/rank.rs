//! Endpoint ranking (T2-T6): for a client locality and a global service, the
//! ordered tiers of endpoint groups. The data plane takes the first tier with
//! a healthy endpoint and falls through to the next when it has none (T6).
//!
//! Network is the top tier of every mode except `Any`; locality ordering
//! applies inside the network tiers:
//!
//! | mode          | tiers, first to last |
//! |---------------|----------------------|
//! | PreferNetwork | same network; other networks |
//! | PreferRegion  | same network+region; same network; other network, same region; rest |
//! | PreferClose   | same network+region+zone; same network+region; same network; other network, same region+zone; other network, same region; rest |
//! | Any           | everything |

use std::collections::BTreeMap;

use crate::catalog::{GlobalService, Reach};
use crate::endpoints::{Endpoint, Locality};
use crate::scope::TrafficDistribution;

/// Endpoints of one cluster in one locality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointGroup<'a> {
    pub cluster: &'a str,
    pub network: &'a str,
    pub reach: Reach,
    pub locality: &'a Locality,
    pub endpoints: &'a [Endpoint],
}

impl EndpointGroup<'_> {
    /// Weight for spreading over groups: the number of ready endpoints.
    pub fn weight(&self) -> usize {
        self.endpoints.len()
    }
}

/// Where the client is.
#[derive(Clone, Copy, Debug)]
pub struct ClientLocation<'a> {
    pub network: &'a str,
    pub locality: &'a Locality,
}

impl GlobalService {
    /// Every endpoint group, by contribution (cluster order) then locality.
    pub fn groups(&self) -> Vec<EndpointGroup<'_>> {
        let mut out = Vec::new();
        for c in &self.contributions {
            for (locality, endpoints) in c.service.locality_groups() {
                out.push(EndpointGroup {
                    cluster: &c.cluster,
                    network: &c.network,
                    reach: c.reach,
                    locality,
                    endpoints,
                });
            }
        }
        out
    }
}

/// Tier index of a group for a client under a mode (lower is preferred).
fn tier(mode: TrafficDistribution, client: &ClientLocation<'_>, g: &EndpointGroup<'_>) -> u8 {
    let net = g.network == client.network;
    let region = !client.locality.region.is_empty() && g.locality.region == client.locality.region;
    let zone =
        region && !client.locality.zone.is_empty() && g.locality.zone == client.locality.zone;
    match mode {
        TrafficDistribution::Any => 0,
        TrafficDistribution::PreferNetwork => u8::from(!net),
        TrafficDistribution::PreferRegion => match (net, region) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        },
        TrafficDistribution::PreferClose => match (net, region, zone) {
            (true, true, true) => 0,
            (true, true, false) => 1,
            (true, false, _) => 2,
            (false, true, true) => 3,
            (false, true, false) => 4,
            (false, false, _) => 5,
        },
    }
}

/// The non-empty tiers of endpoint groups, most preferred first, under the
/// service's effective distribution.
pub fn rank<'a>(
    svc: &'a GlobalService,
    client: &ClientLocation<'_>,
) -> Vec<Vec<EndpointGroup<'a>>> {
    rank_with(svc, svc.distribution, client)
}

/// Like [`rank`], under an explicit mode.
pub fn rank_with<'a>(
    svc: &'a GlobalService,
    mode: TrafficDistribution,
    client: &ClientLocation<'_>,
) -> Vec<Vec<EndpointGroup<'a>>> {
    let mut tiers: BTreeMap<u8, Vec<EndpointGroup<'a>>> = BTreeMap::new();
    for g in svc.groups() {
        if g.endpoints.is_empty() {
            continue;
        }
        tiers.entry(tier(mode, client, &g)).or_default().push(g);
    }
    tiers.into_values().collect()
}
