//! What the DNS server knows, and which of the four answers a name gets.
//!
//! Pure: plain strings in, a [`Lookup`] out; no sockets, no DNS wire types.

use std::net::IpAddr;

/// Names to addresses: a persistent map, so that a new version of the table
/// that changes one name costs O(1) and shares the rest.
pub type Names = imbl::HashMap<String, Vec<IpAddr>>;

/// What the server answers from; replaced as a whole when the catalog changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsTable {
    /// Lower-case fully-qualified names WITHOUT trailing dot -> addresses (v4 and/or v6).
    pub names: Names,
    /// Lower-case domains this server is authoritative for (e.g. "mesh.internal", "cluster.dev"):
    /// a name under one of them (or equal to it) that is not in `names` gets NXDOMAIN (equal: NODATA).
    pub authoritative: Vec<String>,
}

/// How the server treats one query name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'t> {
    /// The name is in the table. `zone` is the authoritative domain holding it, if any
    /// (taken-over `*.svc.cluster.local` names usually have none).
    Found {
        addrs: &'t [IpAddr],
        zone: Option<&'t str>,
    },
    /// The name exists but owns no address: an authoritative domain itself, or an
    /// empty non-terminal above table names (`ns.mesh.internal` when
    /// `svc.ns.mesh.internal` exists). RFC 8020: NXDOMAIN there would tell resolvers
    /// that nothing below exists either.
    Exists { zone: &'t str },
    /// Under an authoritative domain and not visible to this cluster.
    NxDomain { zone: &'t str },
    /// Not ours: forward upstream.
    Foreign,
}

impl DnsTable {
    /// Classifies `name` (lower-case, with or without the trailing dot).
    pub(crate) fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let zone = self.zone_of(name);
        if let Some(addrs) = self.names.get(name) {
            return Lookup::Found { addrs, zone };
        }
        let Some(zone) = zone else {
            return Lookup::Foreign;
        };
        if name.len() == zone.len() || self.names.keys().any(|known| is_below(known, name)) {
            Lookup::Exists { zone }
        } else {
            Lookup::NxDomain { zone }
        }
    }

    /// The longest authoritative domain that is `name` or an ancestor of it.
    fn zone_of(&self, name: &str) -> Option<&str> {
        self.authoritative
            .iter()
            .map(|domain| domain.strip_suffix('.').unwrap_or(domain))
            .filter(|domain| !domain.is_empty())
            .filter(|domain| domain.eq_ignore_ascii_case(name) || is_below(name, domain))
            .max_by_key(|domain| domain.len())
    }
}

/// Whether `name` is a strict descendant of `ancestor` (label-wise, ASCII case-insensitive).
fn is_below(name: &str, ancestor: &str) -> bool {
    let Some(split) = name.len().checked_sub(ancestor.len() + 1) else {
        return false;
    };
    name.as_bytes()[split] == b'.'
        && name
            .get(split + 1..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(ancestor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> DnsTable {
        let vip: IpAddr = "240.240.0.1".parse().unwrap();
        DnsTable {
            names: [
                ("in-ambient.httpbin.mesh.internal", vec![vip]),
                ("productpage.bookinfo.cluster.dev", vec![vip]),
                ("in-ambient.httpbin.svc.cluster.local", vec![vip]),
                ("httpbin.bar.global", vec![vip]),
            ]
            .into_iter()
            .map(|(name, addrs)| (name.to_owned(), addrs))
            .collect(),
            authoritative: vec![
                "mesh.internal".into(),
                "cluster.dev".into(),
                "cluster.prod".into(),
            ],
        }
    }

    #[test]
    fn d1_names_are_classified() {
        let table = table();
        let vip: IpAddr = "240.240.0.1".parse().unwrap();
        let cases: &[(&str, Lookup<'_>)] = &[
            (
                "in-ambient.httpbin.mesh.internal",
                Lookup::Found {
                    addrs: &[vip],
                    zone: Some("mesh.internal"),
                },
            ),
            (
                "in-ambient.httpbin.mesh.internal.",
                Lookup::Found {
                    addrs: &[vip],
                    zone: Some("mesh.internal"),
                },
            ),
            (
                "in-ambient.httpbin.svc.cluster.local",
                Lookup::Found {
                    addrs: &[vip],
                    zone: None,
                },
            ),
            (
                "httpbin.bar.global",
                Lookup::Found {
                    addrs: &[vip],
                    zone: None,
                },
            ),
            (
                "x.y.mesh.internal",
                Lookup::NxDomain {
                    zone: "mesh.internal",
                },
            ),
            (
                "x.y.cluster.prod",
                Lookup::NxDomain {
                    zone: "cluster.prod",
                },
            ),
            (
                "mesh.internal",
                Lookup::Exists {
                    zone: "mesh.internal",
                },
            ),
            (
                "httpbin.mesh.internal",
                Lookup::Exists {
                    zone: "mesh.internal",
                },
            ),
            (
                "bookinfo.cluster.dev",
                Lookup::Exists {
                    zone: "cluster.dev",
                },
            ),
            ("other.httpbin.svc.cluster.local", Lookup::Foreign),
            ("example.org", Lookup::Foreign),
            ("internal", Lookup::Foreign),
            ("xmesh.internal", Lookup::Foreign),
            ("", Lookup::Foreign),
        ];
        for (name, want) in cases {
            assert_eq!(table.lookup(name), *want, "{name}");
        }
    }

    #[test]
    fn d1_the_longest_authoritative_domain_wins() {
        let table = DnsTable {
            names: Names::new(),
            authoritative: vec!["internal".into(), "Mesh.Internal.".into(), String::new()],
        };
        assert_eq!(
            table.lookup("a.mesh.internal"),
            Lookup::NxDomain {
                zone: "Mesh.Internal"
            }
        );
        assert_eq!(
            table.lookup("a.internal"),
            Lookup::NxDomain { zone: "internal" }
        );
        assert_eq!(table.lookup("example.org"), Lookup::Foreign);
    }
}
