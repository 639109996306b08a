//! Virtual IPs for global services (G11).
//!
//! A hostname's VIP is chosen by hashing the hostname (FNV-1a, stable across
//! releases and platforms) into the range and probing linearly past taken
//! addresses. Given the previous allocation, a hostname that still exists
//! keeps its address; new hostnames are placed in name order. So the result
//! is a function of (hostnames, previous allocation, range): the same after a
//! restart when the previous allocation is read back from the generated
//! ServiceEntries, unchanged for a service while it exists, and independent of
//! the order events arrived in, except when two new hostnames hash to the same
//! address in different batches (the first one keeps it).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 or IPv6 prefix, e.g. `240.240.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    base: IpAddr,
    prefix: u8,
}

/// A CIDR string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct CidrError {
    pub input: String,
    pub reason: String,
}

impl Cidr {
    pub fn new(base: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        Self::from_str(&format!("{base}/{prefix}"))
    }

    /// The default VIP range (G11): `240.241.0.0/16`, class E like Istio's
    /// but next to it: istiod auto-allocates addresses of ServiceEntries
    /// that have none from `240.240.0.0/16` (its IP allocation controller,
    /// `pilot/pkg/serviceregistry/serviceentry`), so VIPs there could
    /// collide with addresses Istio gives users' own entries.
    pub fn default_vip_range() -> Self {
        Cidr {
            base: IpAddr::V4(Ipv4Addr::new(240, 241, 0, 0)),
            prefix: 16,
        }
    }

    pub fn base(&self) -> IpAddr {
        self.base
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn bits(&self) -> u8 {
        match self.base {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// Number of addresses in the range (saturating at `u128::MAX`).
    pub fn size(&self) -> u128 {
        let host_bits = u32::from(self.bits() - self.prefix);
        if host_bits >= 128 {
            u128::MAX
        } else {
            1u128 << host_bits
        }
    }

    fn base_u128(&self) -> u128 {
        match self.base {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn at(&self, offset: u128) -> IpAddr {
        let v = self.base_u128() + offset;
        match self.base {
            // Offsets stay inside the range, which fits in 32 bits for IPv4.
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX))),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }

    /// Offset of an address inside the range.
    pub fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        let v = match (self.base, ip) {
            (IpAddr::V4(_), IpAddr::V4(a)) => u128::from(u32::from(a)),
            (IpAddr::V6(_), IpAddr::V6(a)) => u128::from(a),
            _ => return None,
        };
        let off = v.checked_sub(self.base_u128())?;
        (off < self.size() || self.size() == u128::MAX).then_some(off)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.offset_of(ip).is_some()
    }

    /// Offsets VIPs may use: the first (network) and last (broadcast)
    /// addresses are left out when the range has more than two.
    fn usable(&self) -> (u128, u128) {
        let size = self.size();
        if size <= 2 { (0, size) } else { (1, size - 2) }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| CidrError {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/PREFIX, e.g. 240.240.0.0/16"))?;
        let base: IpAddr = addr
            .parse()
            .map_err(|_| err("the address part is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("the prefix is not a number"))?;
        let bits = match base {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > bits {
            return Err(err(&format!("the prefix must be at most {bits}")));
        }
        let c = Cidr { base, prefix };
        let host_mask = if c.size() == u128::MAX {
            u128::MAX
        } else {
            c.size() - 1
        };
        if c.base_u128() & host_mask != 0 {
            let masked = c.at(0);
            let base_masked = c.base_u128() & !host_mask;
            let fixed = match base {
                IpAddr::V4(_) => {
                    IpAddr::V4(Ipv4Addr::from(u32::try_from(base_masked).unwrap_or(0)))
                }
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(base_masked)),
            };
            let _ = masked;
            return Err(err(&format!(
                "host bits are set; did you mean {fixed}/{prefix}?"
            )));
        }
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Result of an allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipAllocation {
    pub vips: BTreeMap<String, IpAddr>,
    /// Hostnames that got no address because the range is full.
    pub exhausted: Vec<String>,
}

/// The addresses of a range handed out so far: reserved ones and VIPs.
/// Used by [`allocate`] and, one hostname at a time, by the incremental
/// catalog, so that both hand out the same addresses.
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    range: Cidr,
    first: u128,
    count: u128,
    taken: HashSet<u128>,
}

impl Pool {
    /// A pool of `range` with `reserved` addresses taken.
    pub(crate) fn new<'a>(range: &Cidr, reserved: impl IntoIterator<Item = &'a IpAddr>) -> Self {
        let (first, count) = range.usable();
        Pool {
            range: *range,
            first,
            count,
            // Only usable addresses count: a reserved network or broadcast
            // address takes nothing from the pool.
            taken: reserved
                .into_iter()
                .filter_map(|ip| range.offset_of(*ip))
                .filter(|off| *off >= first && *off < first + count)
                .collect(),
        }
    }

    /// Takes `ip` if it is a usable address of the range and free.
    pub(crate) fn claim(&mut self, ip: IpAddr) -> bool {
        let Some(off) = self.range.offset_of(ip) else {
            return false;
        };
        off >= self.first && off < self.first + self.count && self.taken.insert(off)
    }

    /// Gives `ip` back.
    pub(crate) fn release(&mut self, ip: IpAddr) {
        if let Some(off) = self.range.offset_of(ip) {
            self.taken.remove(&off);
        }
    }

    /// The address `host` hashes to, or the next free one after it; `None`
    /// when the range is full.
    pub(crate) fn hashed(&mut self, host: &str) -> Option<IpAddr> {
        if self.taken.len() as u128 >= self.count {
            return None;
        }
        let mut slot = hash(host) % self.count;
        loop {
            let off = self.first + slot;
            if self.taken.insert(off) {
                return Some(self.range.at(off));
            }
            slot = (slot + 1) % self.count;
        }
    }
}

/// Allocates one VIP per hostname from `range`, avoiding `reserved`
/// addresses: first every hostname keeps its `previous` address (the
/// current allocation), then hostnames without one take their `hint` (an
/// address handed out before a restart), then the rest are hashed, each
/// pass in hostname order.
pub fn allocate(
    range: &Cidr,
    hostnames: &BTreeSet<&str>,
    previous: &BTreeMap<String, IpAddr>,
    hints: &BTreeMap<String, IpAddr>,
    reserved: &BTreeSet<IpAddr>,
) -> VipAllocation {
    let mut pool = Pool::new(range, reserved);
    let mut out = VipAllocation::default();
    // Keep previous addresses, in hostname order so that a (corrupt) previous
    // table with two hostnames on one address resolves deterministically.
    for (host, ip) in previous {
        if hostnames.contains(host.as_str()) && pool.claim(*ip) {
            out.vips.insert(host.clone(), *ip);
        }
    }
    for host in hostnames {
        if !out.vips.contains_key(*host)
            && let Some(ip) = hints.get(*host)
            && pool.claim(*ip)
        {
            out.vips.insert((*host).to_owned(), *ip);
        }
    }
    for host in hostnames {
        if out.vips.contains_key(*host) {
            continue;
        }
        match pool.hashed(host) {
            Some(ip) => {
                out.vips.insert((*host).to_owned(), ip);
            }
            None => out.exhausted.push((*host).to_owned()),
        }
    }
    out
}

/// 128 bits of FNV-1a over the hostname (two 64-bit passes with different
/// offsets), so that IPv6 ranges larger than 2^64 are covered too.
fn hash(s: &str) -> u128 {
    fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
        let mut h = seed;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let lo = fnv1a(0xcbf2_9ce4_8422_2325, s.as_bytes());
    let hi = fnv1a(0x6c62_272e_07bb_0142, s.as_bytes());
    (u128::from(hi) << 64) | u128::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<'a>(h: &[&'a str]) -> BTreeSet<&'a str> {
        h.iter().copied().collect()
    }

    #[test]
    fn cidr_parsing() {
        let c: Cidr = "240.240.0.0/16".parse().unwrap();
        assert_eq!(c.size(), 65536);
        assert!(c.contains("240.240.3.4".parse().unwrap()));
        assert!(!c.contains("240.241.0.1".parse().unwrap()));
        let e = "240.240.1.0/16".parse::<Cidr>().unwrap_err();
        assert!(e.to_string().contains("did you mean 240.240.0.0/16"), "{e}");
        assert!("240.240.0.0".parse::<Cidr>().is_err());
        assert!("1.2.3.0/33".parse::<Cidr>().is_err());
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
    }

    #[test]
    fn g11_allocation_is_deterministic_and_skips_network_and_broadcast() {
        let range: Cidr = "10.0.0.0/30".parse().unwrap();
        let hosts = set(&["a", "b"]);
        let a1 = allocate(
            &range,
            &hosts,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeSet::new(),
        );
        let a2 = allocate(
            &range,
            &hosts,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeSet::new(),
        );
        assert_eq!(a1, a2);
        let ips: BTreeSet<IpAddr> = a1.vips.values().copied().collect();
        assert_eq!(
            ips,
            ["10.0.0.1", "10.0.0.2"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect()
        );
        let full = allocate(
            &range,
            &set(&["a", "b", "c"]),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeSet::new(),
        );
        assert_eq!(full.exhausted, vec!["c".to_owned()]);
    }

    #[test]
    fn g11_previous_addresses_are_kept_and_reserved_avoided() {
        let range = Cidr::default_vip_range();
        let prev: BTreeMap<String, IpAddr> =
            [("a".to_owned(), "240.241.9.9".parse().unwrap())].into();
        let reserved: BTreeSet<IpAddr> = [hash_ip(&range, "b")].into();
        let a = allocate(
            &range,
            &set(&["a", "b"]),
            &prev,
            &BTreeMap::new(),
            &reserved,
        );
        assert_eq!(a.vips["a"], "240.241.9.9".parse::<IpAddr>().unwrap());
        assert_ne!(a.vips["b"], hash_ip(&range, "b"));
        // Out-of-range previous addresses are replaced.
        let prev: BTreeMap<String, IpAddr> = [("a".to_owned(), "10.0.0.1".parse().unwrap())].into();
        let a = allocate(
            &range,
            &set(&["a"]),
            &prev,
            &BTreeMap::new(),
            &BTreeSet::new(),
        );
        assert!(range.contains(a.vips["a"]));
    }

    #[test]
    fn g11_the_current_allocation_wins_over_hints_from_before_a_restart() {
        let range = Cidr::default_vip_range();
        let x: IpAddr = "240.241.9.9".parse().unwrap();
        // "b" holds x now; a stale hint gives x to "a" too.
        let prev: BTreeMap<String, IpAddr> = [("b".to_owned(), x)].into();
        let hints: BTreeMap<String, IpAddr> = [("a".to_owned(), x)].into();
        let a = allocate(&range, &set(&["a", "b"]), &prev, &hints, &BTreeSet::new());
        assert_eq!(a.vips["b"], x);
        assert_ne!(a.vips["a"], x);
        // A hint is used when its address is free.
        let a = allocate(
            &range,
            &set(&["a"]),
            &BTreeMap::new(),
            &hints,
            &BTreeSet::new(),
        );
        assert_eq!(a.vips["a"], x);
    }

    fn hash_ip(range: &Cidr, host: &str) -> IpAddr {
        let (first, count) = range.usable();
        range.at(first + hash(host) % count)
    }

    #[test]
    fn g11_hash_is_stable_across_releases() {
        // Pinned, all 128 bits and the addresses they give: changing the
        // hash would move every VIP on upgrade.
        assert_eq!(hash(""), 0x6c62_272e_07bb_0142_cbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xe5c9_b637_22c2_ee79_af63_dc4c_8601_ec8c);
        assert_eq!(
            hash("in-ambient.httpbin.mesh.internal"),
            0x93f5_e86e_a03b_fbe9_c162_6547_d771_a0a6
        );
        let host = "in-ambient.httpbin.mesh.internal";
        let a = allocate(
            &Cidr::default_vip_range(),
            &set(&[host]),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeSet::new(),
        );
        assert_eq!(a.vips[host], "240.241.205.7".parse::<IpAddr>().unwrap());
        let v6: Cidr = "fd00::/8".parse().unwrap();
        let a = allocate(
            &v6,
            &set(&[host]),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeSet::new(),
        );
        assert_eq!(
            a.vips[host],
            "fdf5:e86e:a03b:fbe9:c162:6547:d771:a1cd"
                .parse::<IpAddr>()
                .unwrap()
        );
    }

    #[test]
    fn g11_reserved_network_and_broadcast_addresses_cost_nothing() {
        // A /30 has two usable addresses, whatever holds .0 and .3.
        let range: Cidr = "10.0.0.0/30".parse().unwrap();
        for reserved in [&["10.0.0.0"][..], &["10.0.0.3"], &["10.0.0.0", "10.0.0.3"]] {
            let reserved: BTreeSet<IpAddr> = reserved.iter().map(|s| s.parse().unwrap()).collect();
            let a = allocate(
                &range,
                &set(&["a", "b"]),
                &BTreeMap::new(),
                &BTreeMap::new(),
                &reserved,
            );
            assert!(a.exhausted.is_empty(), "{reserved:?}: {a:?}");
            let ips: BTreeSet<IpAddr> = a.vips.values().copied().collect();
            assert_eq!(
                ips,
                ["10.0.0.1", "10.0.0.2"]
                    .iter()
                    .map(|s| s.parse().unwrap())
                    .collect(),
                "{reserved:?}"
            );
        }
        // A usable reserved address does count.
        let reserved: BTreeSet<IpAddr> = ["10.0.0.1".parse().unwrap()].into();
        let a = allocate(
            &range,
            &set(&["a", "b"]),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &reserved,
        );
        assert_eq!(a.exhausted.len(), 1, "{a:?}");
    }
}
