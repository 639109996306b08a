//! The node's own addresses, as the kernel of this network namespace lists
//! them: IPv4 local routes from `/proc/net/fib_trie` (`host LOCAL` entries:
//! every interface address, and local ranges such as `ip route add local
//! 10.0.0.0/8 dev lo`), IPv6 interface addresses from `/proc/net/if_inet6`.
//!
//! In Kubernetes the proxy runs in the node's network, so this is the
//! node's; the gateway runs in its Pod's, so this is the Pod's (and it is
//! told the node's address with `--node-ip`, from the downward API).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use meshpeer_model::Cidr;

use super::host_cidr;

const FIB_TRIE: &str = "/proc/net/fib_trie";
const IF_INET6: &str = "/proc/net/if_inet6";

/// The addresses and local ranges of this network namespace. A file that
/// cannot be read is skipped (`/proc/net/if_inet6` is absent when IPv6 is
/// off); an error only when neither can.
pub fn local_addresses() -> std::io::Result<Vec<Cidr>> {
    read_from(Path::new(FIB_TRIE), Path::new(IF_INET6))
}

fn read_from(fib_trie: &Path, if_inet6: &Path) -> std::io::Result<Vec<Cidr>> {
    let v4 = std::fs::read_to_string(fib_trie);
    let v6 = std::fs::read_to_string(if_inet6);
    let mut out = Vec::new();
    match (&v4, &v6) {
        (Err(e), Err(_)) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot read {} nor {}: {e}",
                    fib_trie.display(),
                    if_inet6.display()
                ),
            ));
        }
        _ => {
            if let Ok(text) = &v4 {
                out.extend(parse_fib_trie(text));
            }
            if let Ok(text) = &v6 {
                out.extend(
                    parse_if_inet6(text)
                        .into_iter()
                        .filter_map(|a| host_cidr(a.into())),
                );
            }
        }
    }
    Ok(out)
}

/// The `host LOCAL` entries of `/proc/net/fib_trie`: a leaf line
/// `|-- 10.0.2.15` followed by attribute lines such as `/32 host LOCAL`.
/// Lines that do not parse are skipped.
pub fn parse_fib_trie(text: &str) -> Vec<Cidr> {
    let mut out = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            leaf = addr.trim().parse().ok();
            continue;
        }
        let Some(attrs) = line.strip_prefix('/') else {
            if line.starts_with("+--") || line.ends_with(':') {
                leaf = None;
            }
            continue;
        };
        let mut words = attrs.split_whitespace();
        let (Some(prefix), Some(scope), Some(kind)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if scope != "host" || kind != "LOCAL" {
            continue;
        }
        if let (Some(ip), Ok(prefix)) = (leaf, prefix.parse::<u8>())
            && let Ok(c) = Cidr::new(IpAddr::V4(ip), prefix)
        {
            out.push(c);
        }
    }
    out.sort_by_key(|c| (c.base(), c.prefix()));
    out.dedup();
    out
}

/// The addresses of `/proc/net/if_inet6`: one per line, 32 hex digits
/// first. Lines that do not parse are skipped.
pub fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    let mut out: Vec<Ipv6Addr> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|hex| hex.len() == 32)
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
        .map(Ipv6Addr::from)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIB_TRIE_TEXT: &str = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.244.0.1
        /24 link UNICAST
        /32 host LOCAL
     |-- garbage
        /32 host LOCAL
     |-- 192.0.2.2
        /32 host LOCAL
        /x host LOCAL
";

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn p5_fib_trie_local_entries_are_the_nodes_ipv4_addresses() {
        assert_eq!(
            parse_fib_trie(FIB_TRIE_TEXT),
            cidrs(&[
                "10.244.0.1/32",
                "127.0.0.0/8",
                "127.0.0.1/32",
                "192.0.2.2/32"
            ])
        );
        assert!(parse_fib_trie("").is_empty());
        assert!(parse_fib_trie("/32 host LOCAL\n|--\n|-- 1.2.3.4\n/99 host LOCAL").is_empty());
    }

    #[test]
    fn p5_if_inet6_lists_the_nodes_ipv6_addresses() {
        let text = "\
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
zz
fe80 01 02
";
        let want: Vec<Ipv6Addr> = ["::1", "fd00::2", "fe80::fc:ff:fe00:1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(parse_if_inet6(text), want);
    }

    #[test]
    fn p5_local_addresses_read_what_can_be_read() {
        let dir = std::env::temp_dir().join(format!("meshpeer-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fib = dir.join("fib_trie");
        std::fs::write(&fib, FIB_TRIE_TEXT).unwrap();
        let missing = dir.join("missing");
        let got = read_from(&fib, &missing).unwrap();
        assert!(got.contains(&"192.0.2.2/32".parse().unwrap()), "{got:?}");
        let err = read_from(&missing, &missing).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
