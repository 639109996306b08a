//! What the DNS server knows, and which of the four answers a name gets.
//!
//! Pure: plain strings in, a [`Lookup`] out; no sockets, no DNS wire types.

use std::net::IpAddr;

/// Names to addresses: persistent maps, so that a new version of the table
/// that changes one name costs O(labels) and shares the rest. Besides the
/// names, how many of them lie below each of their ancestors, so that
/// telling an empty non-terminal from NXDOMAIN is one lookup, not a scan
/// of every name (issue 14: cost follows the query, not the mesh).
#[derive(Clone, Debug, Default)]
pub struct Names {
    map: imbl::HashMap<String, Vec<IpAddr>>,
    /// Strict ancestors of the names (`b.c` and `c` for `a.b.c`) -> how
    /// many names lie below them.
    below: imbl::HashMap<String, u32>,
}

impl PartialEq for Names {
    fn eq(&self, other: &Self) -> bool {
        // `below` follows from `map`.
        self.map == other.map
    }
}

impl Eq for Names {}

impl FromIterator<(String, Vec<IpAddr>)> for Names {
    fn from_iter<I: IntoIterator<Item = (String, Vec<IpAddr>)>>(iter: I) -> Self {
        let mut names = Names::new();
        for (name, addrs) in iter {
            names.insert(name, addrs);
        }
        names
    }
}

impl Names {
    pub fn new() -> Self {
        Names::default()
    }

    /// Sets the addresses of `name` (lower-case, no trailing dot).
    pub fn insert(&mut self, name: String, addrs: Vec<IpAddr>) -> Option<Vec<IpAddr>> {
        let old = self.map.insert(name.clone(), addrs);
        if old.is_none() {
            for ancestor in ancestors(&name) {
                *self.below.entry(ancestor.to_owned()).or_default() += 1;
            }
        }
        old
    }

    pub fn remove(&mut self, name: &str) -> Option<Vec<IpAddr>> {
        let old = self.map.remove(name);
        if old.is_some() {
            for ancestor in ancestors(name) {
                match self.below.get(ancestor).copied() {
                    Some(n) if n > 1 => {
                        self.below.insert(ancestor.to_owned(), n - 1);
                    }
                    _ => {
                        self.below.remove(ancestor);
                    }
                }
            }
        }
        old
    }

    pub fn get(&self, name: &str) -> Option<&Vec<IpAddr>> {
        self.map.get(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<IpAddr>)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether both share their storage (cheap: no change between them).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.map.ptr_eq(&other.map) && self.below.ptr_eq(&other.below)
    }

    /// Whether some name lies strictly below `name` (lower-case).
    pub fn has_below(&self, name: &str) -> bool {
        self.below.contains_key(name)
    }
}

impl std::ops::Index<&str> for Names {
    type Output = Vec<IpAddr>;

    /// The addresses of `name`; panics when it is not in the table.
    fn index(&self, name: &str) -> &Vec<IpAddr> {
        &self.map[name]
    }
}

/// The strict ancestors of a dotted name, nearest first.
fn ancestors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('.').map(move |(i, _)| &name[i + 1..])
}

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
        let lower = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(name.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        if name.len() == zone.len() || self.names.has_below(&lower) {
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

    /// Issue 14: the index of names below each ancestor stays what a scan
    /// of every name would say, through any sequence of inserts and
    /// removals (so NXDOMAIN and empty non-terminals are told apart in one
    /// lookup, whatever the size of the table).
    #[test]
    fn d1_interior_names_index_matches_a_scan_through_edits() {
        use proptest::prelude::*;
        let label = prop::sample::select(vec!["a", "b", "web", "shop", "mesh", "internal"]);
        let name = prop::collection::vec(label, 1..5).prop_map(|l| l.join("."));
        let edits = prop::collection::vec((any::<bool>(), name.clone()), 0..60);
        let probes = prop::collection::vec(name, 1..20);
        proptest!(|(edits in edits, probes in probes)| {
            let mut names = Names::new();
            for (insert, n) in &edits {
                if *insert {
                    names.insert(n.clone(), vec!["240.241.0.1".parse().unwrap()]);
                } else {
                    names.remove(n);
                }
            }
            for p in &probes {
                let scan = names.keys().any(|known| is_below(known, p));
                prop_assert_eq!(names.has_below(p), scan, "{}", p);
            }
            // Equal contents are equal tables, however they were reached.
            let fresh: Names = names.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(&fresh, &names);
            for p in &probes {
                prop_assert_eq!(fresh.has_below(p), names.has_below(p));
            }
        });
    }
}
