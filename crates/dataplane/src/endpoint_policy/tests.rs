use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn node() -> Vec<Cidr> {
    vec![cidr("192.0.2.7/32"), cidr("2001:db8::7/128")]
}

#[test]
fn p5_special_and_node_addresses_are_refused_by_default() {
    let policy = EndpointPolicy::new(Vec::new(), node());
    let vips = cidr("240.240.0.0/16");
    let cases: &[(&str, Option<Refusal>)] = &[
        ("127.0.0.1", Some(Refusal::Loopback)),
        ("127.201.0.14", Some(Refusal::Loopback)),
        ("::1", Some(Refusal::Loopback)),
        ("::ffff:127.0.0.1", Some(Refusal::Loopback)),
        ("169.254.169.254", Some(Refusal::LinkLocal)),
        ("::ffff:169.254.169.254", Some(Refusal::LinkLocal)),
        ("fe80::1", Some(Refusal::LinkLocal)),
        ("febf::1", Some(Refusal::LinkLocal)),
        ("224.0.0.1", Some(Refusal::Multicast)),
        ("239.255.255.250", Some(Refusal::Multicast)),
        ("ff02::1", Some(Refusal::Multicast)),
        ("0.0.0.0", Some(Refusal::Unspecified)),
        ("0.1.2.3", Some(Refusal::Unspecified)),
        ("::", Some(Refusal::Unspecified)),
        ("::ffff:0.0.0.0", Some(Refusal::Unspecified)),
        ("255.255.255.255", Some(Refusal::Broadcast)),
        ("240.240.3.4", Some(Refusal::VipRange)),
        ("::ffff:240.240.3.4", Some(Refusal::VipRange)),
        ("192.0.2.7", Some(Refusal::NodeAddress)),
        ("::ffff:192.0.2.7", Some(Refusal::NodeAddress)),
        ("2001:db8::7", Some(Refusal::NodeAddress)),
        // Pods, peers' endpoints, public services.
        ("10.1.0.14", None),
        ("192.0.2.8", None),
        ("2001:db8::8", None),
        ("fd00::2", None),
        ("fec0::1", None),
        ("8.8.8.8", None),
        ("240.241.0.1", None),
    ];
    for (addr, want) in cases {
        assert_eq!(policy.check(ip(addr), Some(&vips)).err(), *want, "{addr}");
    }
    // Without a VIP range from the catalog, only the range is not known.
    assert_eq!(policy.check(ip("240.240.3.4"), None), Ok(()));
    assert_eq!(policy.check(ip("127.0.0.1"), None), Err(Refusal::Loopback));
}

#[test]
fn p5_allow_endpoints_opens_exactly_the_given_cidrs_but_never_the_vip_range() {
    let policy = EndpointPolicy::new(
        vec![
            cidr("127.201.0.0/16"),
            cidr("169.254.10.0/24"),
            cidr("192.0.2.7/32"),
            cidr("127.255.0.0/16"),
        ],
        node(),
    );
    let vips = cidr("127.255.0.0/16");
    let cases: &[(&str, Option<Refusal>)] = &[
        ("127.201.0.14", None),
        ("::ffff:127.201.0.14", None),
        ("127.201.255.255", None),
        ("127.202.0.14", Some(Refusal::Loopback)),
        ("127.0.0.1", Some(Refusal::Loopback)),
        ("169.254.10.9", None),
        ("169.254.169.254", Some(Refusal::LinkLocal)),
        ("192.0.2.7", None),
        ("2001:db8::7", Some(Refusal::NodeAddress)),
        // Allowed, but the VIP range wins: it would loop.
        ("127.255.0.9", Some(Refusal::VipRange)),
    ];
    for (addr, want) in cases {
        assert_eq!(policy.check(ip(addr), Some(&vips)).err(), *want, "{addr}");
    }
}

#[test]
fn p5_node_addresses_can_be_replaced_while_running() {
    let policy = EndpointPolicy::new(Vec::new(), Vec::new());
    assert_eq!(policy.check(ip("192.0.2.7"), None), Ok(()));
    assert!(policy.set_node_addresses(node()));
    assert!(!policy.set_node_addresses(node().into_iter().rev().collect()));
    assert_eq!(
        policy.check(ip("192.0.2.7"), None),
        Err(Refusal::NodeAddress)
    );
    // A local range (`ip route add local 10.0.0.0/8 dev lo`) counts whole.
    policy.set_node_addresses(vec![cidr("10.0.0.0/8")]);
    assert_eq!(
        policy.check(ip("10.9.9.9"), None),
        Err(Refusal::NodeAddress)
    );
    assert_eq!(policy.check(ip("192.0.2.7"), None), Ok(()));
}

#[test]
fn p5_refusal_labels_and_messages() {
    let all = [
        (Refusal::Loopback, "loopback"),
        (Refusal::LinkLocal, "link_local"),
        (Refusal::Multicast, "multicast"),
        (Refusal::Unspecified, "unspecified"),
        (Refusal::Broadcast, "broadcast"),
        (Refusal::VipRange, "vip_range"),
        (Refusal::NodeAddress, "node_address"),
        (Refusal::OwnListener, "own_listener"),
    ];
    for (r, label) in all {
        assert_eq!(r.as_str(), label);
        let text = r.to_string();
        assert_eq!(
            text.contains("--allow-endpoints"),
            r.can_be_allowed(),
            "{text}"
        );
    }
    assert!(
        Refusal::LinkLocal.to_string().contains("metadata"),
        "{}",
        Refusal::LinkLocal
    );
}

#[test]
fn p5_allow_endpoints_values_are_cidrs_or_addresses() {
    assert_eq!(parse_cidr("10.1.0.0/16"), Ok(cidr("10.1.0.0/16")));
    assert_eq!(parse_cidr("10.1.0.14"), Ok(cidr("10.1.0.14/32")));
    assert_eq!(parse_cidr("fd00::2"), Ok(cidr("fd00::2/128")));
    let e = parse_cidr("10.1.0.14/16").unwrap_err();
    assert!(e.contains("did you mean 10.1.0.0/16"), "{e}");
    let e = parse_cidr("pods").unwrap_err();
    assert!(e.contains("neither a CIDR"), "{e}");
}

#[test]
fn p5_refusals_are_logged_once_per_address_per_interval() {
    let limit = LogLimit::new(Duration::from_secs(60));
    let t0 = Instant::now();
    let a = ip("127.0.0.1");
    assert!(limit.allow(a, t0));
    assert!(!limit.allow(a, t0 + Duration::from_secs(59)));
    assert!(limit.allow(ip("127.0.0.2"), t0));
    assert!(limit.allow(a, t0 + Duration::from_secs(60)));
    // Bounded: a flood of addresses does not grow it past its capacity.
    for i in 0..(LogLimit::CAPACITY as u32 * 2) {
        assert!(limit.allow(IpAddr::V4(Ipv4Addr::from(i)), t0));
    }
    assert!(limit.last.lock().unwrap().len() <= LogLimit::CAPACITY);
}
