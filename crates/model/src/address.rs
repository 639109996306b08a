//! Addresses that are never a workload's, whoever names them (SPEC P5, B1):
//! a pure classification shared by the rules that judge peer input and the
//! data plane's dial policy.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A kind of address that is not a routable unicast workload address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpecialAddress {
    /// 0.0.0.0/8, `::` (Linux connects 0.0.0.0 to the local host).
    Unspecified,
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// 169.254.0.0/16, fe80::/10: where cloud metadata services answer.
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
}

impl SpecialAddress {
    /// A stable word for metrics and messages: `unspecified`, `loopback`,
    /// `link_local`, `multicast`, `broadcast`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecialAddress::Unspecified => "unspecified",
            SpecialAddress::Loopback => "loopback",
            SpecialAddress::LinkLocal => "link_local",
            SpecialAddress::Multicast => "multicast",
            SpecialAddress::Broadcast => "broadcast",
        }
    }
}

impl fmt::Display for SpecialAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecialAddress::Unspecified => "an unspecified address",
            SpecialAddress::Loopback => "a loopback address",
            SpecialAddress::LinkLocal => {
                "a link-local address (where cloud metadata services answer)"
            }
            SpecialAddress::Multicast => "a multicast address",
            SpecialAddress::Broadcast => "the broadcast address",
        })
    }
}

/// What kind of special address `addr` is, if any; IPv4-mapped IPv6
/// addresses are judged as the IPv4 address they carry.
pub fn special_address(addr: IpAddr) -> Option<SpecialAddress> {
    match addr.to_canonical() {
        IpAddr::V4(a) => special_v4(a),
        IpAddr::V6(a) => special_v6(a),
    }
}

fn special_v4(a: Ipv4Addr) -> Option<SpecialAddress> {
    if a.octets()[0] == 0 {
        Some(SpecialAddress::Unspecified)
    } else if a.is_loopback() {
        Some(SpecialAddress::Loopback)
    } else if a.is_link_local() {
        Some(SpecialAddress::LinkLocal)
    } else if a.is_multicast() {
        Some(SpecialAddress::Multicast)
    } else if a.is_broadcast() {
        Some(SpecialAddress::Broadcast)
    } else {
        None
    }
}

fn special_v6(a: Ipv6Addr) -> Option<SpecialAddress> {
    if a.is_unspecified() {
        Some(SpecialAddress::Unspecified)
    } else if a.is_loopback() {
        Some(SpecialAddress::Loopback)
    } else if a.is_unicast_link_local() {
        Some(SpecialAddress::LinkLocal)
    } else if a.is_multicast() {
        Some(SpecialAddress::Multicast)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p5_special_addresses_are_classified() {
        let cases = [
            ("10.1.0.7", None),
            ("2001:db8::1", None),
            ("0.0.0.0", Some(SpecialAddress::Unspecified)),
            ("0.1.2.3", Some(SpecialAddress::Unspecified)),
            ("::", Some(SpecialAddress::Unspecified)),
            ("127.0.0.1", Some(SpecialAddress::Loopback)),
            ("127.200.1.1", Some(SpecialAddress::Loopback)),
            ("::1", Some(SpecialAddress::Loopback)),
            ("::ffff:127.0.0.1", Some(SpecialAddress::Loopback)),
            ("169.254.169.254", Some(SpecialAddress::LinkLocal)),
            ("fe80::1", Some(SpecialAddress::LinkLocal)),
            ("::ffff:169.254.169.254", Some(SpecialAddress::LinkLocal)),
            ("224.0.0.1", Some(SpecialAddress::Multicast)),
            ("ff02::1", Some(SpecialAddress::Multicast)),
            ("255.255.255.255", Some(SpecialAddress::Broadcast)),
        ];
        for (addr, want) in cases {
            let ip: IpAddr = addr.parse().unwrap_or_else(|_| panic!("{addr}"));
            assert_eq!(special_address(ip), want, "{addr}");
        }
    }
}
