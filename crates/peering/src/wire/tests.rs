use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::{NsName, exports};

use super::*;
use crate::limits::RefuseReason;

fn sample() -> Export {
    let snap = ClusterBuilder::new("cluster2")
        .locality("us-west", "us-west-1")
        .segment("dev", "cluster.dev")
        .join("dev")
        .service(
            svc("httpbin", "in-ambient")
                .global()
                .ready(2)
                .distribution("Any"),
        )
        .service(
            svc("httpbin", "private")
                .scope("segment")
                .ready(1)
                .takeover("true"),
        )
        .build();
    exports(&snap)
}

/// What a peer can rebuild: the export without local-only fields.
fn wire_view(e: &Export) -> Export {
    let mut e = e.clone();
    e.diagnostics.clear();
    e.services = e
        .services
        .iter()
        .map(|(k, s)| {
            let mut s = (**s).clone();
            s.cluster_ips.clear();
            (k.clone(), Arc::new(s))
        })
        .collect();
    e
}

#[test]
fn exports_round_trip_through_resources() {
    let e = sample();
    let back = ResourceSet::from_export(&e).to_export().unwrap();
    assert_eq!(back, wire_view(&e));
}

#[test]
fn endpoints_carry_their_service_account_and_ambient_capture() {
    use meshpeer_model::Object;
    use meshpeer_model::endpoints::AMBIENT_REDIRECTION;
    use meshpeer_model::testing::pod;
    let mut web = pod("shop", "web-0", &[("app", "web")], "10.0.0.5", true, None);
    if let Some(spec) = web.spec.as_mut() {
        spec.service_account_name = Some("web".into());
    }
    web.metadata.annotations =
        Some([(AMBIENT_REDIRECTION.to_owned(), "enabled".to_owned())].into());
    let plain = pod("shop", "web-1", &[("app", "web")], "10.0.0.6", true, None);
    let snap = ClusterBuilder::new("cluster2")
        .service(svc("shop", "web").global())
        .object(Object::Pod(web))
        .object(Object::Pod(plain))
        .build();
    let e = exports(&snap);
    let eps: Vec<(String, bool)> = e.services[&NsName::new("shop", "web")]
        .localities
        .iter()
        .flat_map(|g| &g.endpoints)
        .map(|ep| (ep.service_account.clone(), ep.ambient))
        .collect();
    assert_eq!(
        eps,
        [("web".to_owned(), true), ("default".to_owned(), false)]
    );
    let back = ResourceSet::from_export(&e).to_export().unwrap();
    assert_eq!(back, wire_view(&e));
}

#[test]
fn diff_sends_only_what_changed_and_removes_explicitly() {
    let a = ResourceSet::from_export(&sample());
    assert!(a.diff(&a).is_empty());
    let mut e = sample();
    e.services.remove(&NsName::new("httpbin", "private"));
    let b = ResourceSet::from_export(&e);
    let d = a.diff(&b);
    assert!(d.changed.is_empty());
    assert_eq!(d.removed, ["service/httpbin/private"]);
    let full = ResourceSet::default().diff(&a);
    assert_eq!(full.changed.len(), 3);
}

#[test]
fn s7_segment_scoped_resources_are_not_sent_to_other_segments() {
    let a = ResourceSet::from_export(&sample());
    assert_eq!(a.visible_to(Some("dev"), Some("dev")).len(), 3);
    assert_eq!(a.visible_to(Some("dev"), Some("prod")).len(), 2);
    assert_eq!(a.visible_to(Some("dev"), None).len(), 2);
}

fn full(set: &ResourceSet, nonce: &str) -> proto::Delta {
    proto::Delta {
        nonce: nonce.into(),
        version: 1,
        full_state: true,
        resources: set.resources.values().map(|r| (*r.0).clone()).collect(),
        ..Default::default()
    }
}

fn delta(nonce: &str, resources: Vec<proto::Resource>, removed: Vec<String>) -> proto::Delta {
    proto::Delta {
        nonce: nonce.into(),
        version: 2,
        full_state: false,
        resources,
        removed,
        more: false,
    }
}

fn limits() -> Limits {
    Limits::default()
}

#[test]
fn a_peer_state_follows_deltas_and_decodes_only_what_they_carry() {
    let e = sample();
    let mut state = PeerState::default();
    state
        .apply(&full(&ResourceSet::from_export(&e), "1"), &limits())
        .unwrap();
    assert_eq!(state.export(), &wire_view(&e));
    // A publisher's next version, as deltas from the last.
    let mut all = ResourceSet::from_export(&e);
    let mut global = all.visible_to(Some("dev"), None);
    let mut next = e.clone();
    next.services.remove(&NsName::new("httpbin", "private"));
    let before = all.clone();
    assert!(all.update(&mut global, &e, &next));
    let d = before.diff(&all);
    assert_eq!(d.removed, ["service/httpbin/private"]);
    let before_export = state.export().services.clone();
    state
        .apply(
            &delta(
                "2",
                d.changed.iter().map(|r| (**r).clone()).collect(),
                d.removed,
            ),
            &limits(),
        )
        .unwrap();
    assert_eq!(state.export(), &wire_view(&next));
    // The untouched service is the same shared value as before.
    let key = NsName::new("httpbin", "in-ambient");
    assert!(Arc::ptr_eq(
        &before_export[&key],
        &state.export().services[&key]
    ));
    // Publishing the same export again changes nothing.
    assert!(!all.update(&mut global, &next, &next));
    assert_eq!(global.len(), 2);
}

/// A synced state and a valid service resource of it to break.
fn synced() -> (PeerState, proto::Resource) {
    let set = ResourceSet::from_export(&sample());
    let mut state = PeerState::default();
    state.apply(&full(&set, "0"), &limits()).unwrap();
    let good = (*set.resources["service/httpbin/in-ambient"].0).clone();
    (state, good)
}

fn service_of(r: &mut proto::Resource) -> &mut proto::ServiceResource {
    match &mut r.body {
        Some(proto::resource::Body::Service(s)) => s,
        _ => panic!("not a service"),
    }
}

/// A resource named after its (possibly broken) body.
fn renamed(mut r: proto::Resource) -> proto::Resource {
    let s = service_of(&mut r);
    r.name = service_resource_name(&s.namespace, &s.name);
    r
}

/// A valid new service `httpbin/<name>` of cluster2 (segment dev).
fn fresh(good: &proto::Resource, name: &str) -> proto::Resource {
    let mut r = good.clone();
    let s = service_of(&mut r);
    s.name = name.into();
    s.hostname = format!("{name}.httpbin.cluster.dev");
    renamed(r)
}

#[test]
fn b1_each_invalid_resource_is_refused_on_its_own_and_the_rest_applies() {
    type Break = fn(&mut proto::ServiceResource);
    let cases: Vec<(&str, RefuseReason, Break)> = vec![
        ("a name with /", RefuseReason::InvalidName, |s| {
            s.name = "a/b".into();
        }),
        ("an upper-case namespace", RefuseReason::InvalidName, |s| {
            s.namespace = "HttpBin".into();
        }),
        ("a 64-character name", RefuseReason::InvalidName, |s| {
            s.name = "a".repeat(64);
        }),
        (
            "a hostname of another domain",
            RefuseReason::InvalidHostname,
            |s| {
                s.hostname = "x.httpbin.mesh.internal".into();
            },
        ),
        ("port 0", RefuseReason::InvalidPort, |s| {
            s.ports[0].number = 0
        }),
        ("port 70000", RefuseReason::InvalidPort, |s| {
            s.ports[0].number = 70_000;
        }),
        ("a port name with a space", RefuseReason::InvalidPort, |s| {
            s.ports[0].name = "h p".into();
        }),
        ("an endpoint port 0", RefuseReason::InvalidPort, |s| {
            s.localities[0].endpoints[0].ports[0].target = 0;
        }),
        ("a loopback endpoint", RefuseReason::InvalidAddress, |s| {
            s.localities[0].endpoints[0].address = vec![127, 0, 0, 1];
        }),
        ("a link-local endpoint", RefuseReason::InvalidAddress, |s| {
            s.localities[0].endpoints[0].address = vec![169, 254, 169, 254];
        }),
        ("a multicast endpoint", RefuseReason::InvalidAddress, |s| {
            s.localities[0].endpoints[0].address = vec![224, 0, 0, 1];
        }),
        (
            "an unspecified endpoint",
            RefuseReason::InvalidAddress,
            |s| {
                s.localities[0].endpoints[0].address = vec![0; 16];
            },
        ),
        ("a 5-byte address", RefuseReason::InvalidAddress, |s| {
            s.localities[0].endpoints[0].address = vec![10, 0, 0, 1, 9];
        }),
        ("a long locality", RefuseReason::InvalidField, |s| {
            s.localities[0].locality = Some(proto::Locality {
                region: "r".repeat(1000),
                ..Default::default()
            });
        }),
        ("a locality with /", RefuseReason::InvalidField, |s| {
            s.localities[0].locality = Some(proto::Locality {
                zone: "a/b".into(),
                ..Default::default()
            });
        }),
        (
            "a service account with /",
            RefuseReason::InvalidField,
            |s| {
                s.localities[0].endpoints[0].service_account = "a/b".into();
            },
        ),
        (
            "an endpoint name with a newline",
            RefuseReason::InvalidField,
            |s| {
                s.localities[0].endpoints[0].name = "pod\n0".into();
            },
        ),
        ("an unknown scope", RefuseReason::InvalidField, |s| {
            s.scope = 9
        }),
        ("an unknown distribution", RefuseReason::InvalidField, |s| {
            s.traffic_distribution = 42;
        }),
    ];
    for (what, reason, break_it) in cases {
        let (mut state, good) = synced();
        let before = state.export().services.len();
        let mut bad = fresh(&good, "broken");
        break_it(service_of(&mut bad));
        let bad = if reason == RefuseReason::InvalidName {
            renamed(bad)
        } else {
            bad
        };
        let ok = fresh(&good, "fine");
        let applied = state
            .apply(&delta("1", vec![bad.clone(), ok], vec![]), &limits())
            .unwrap_or_else(|e| panic!("{what}: the whole delta was refused: {e}"));
        assert_eq!(applied.refused_total, 1, "{what}");
        assert_eq!(applied.refused[0].reason, reason, "{what}: {applied:?}");
        assert_eq!(applied.count(reason), 1, "{what}");
        assert_eq!(state.export().services.len(), before + 1, "{what}");
        assert!(
            state
                .export()
                .services
                .contains_key(&NsName::new("httpbin", "fine")),
            "{what}"
        );
        assert_eq!(state.refusals().len(), 1, "{what}");
        assert_eq!(state.refusals().count(reason), 1, "{what}");
        assert!(state.resources().get(&bad.name).is_none(), "{what}");
        // The ACK lists it with its reason.
        let ack = applied.ack("1");
        assert_eq!(ack.refused_total, 1);
        assert_eq!(ack.refused[0].reason, reason.as_str());
    }
}

#[test]
fn b1_a_refused_update_removes_the_older_version_and_a_valid_one_clears_it() {
    let (mut state, good) = synced();
    let key = NsName::new("httpbin", "in-ambient");
    let mut bad = good.clone();
    service_of(&mut bad).ports[0].number = 0;
    state
        .apply(&delta("1", vec![bad], vec![]), &limits())
        .unwrap();
    assert!(!state.export().services.contains_key(&key));
    assert_eq!(state.refusals().len(), 1);
    state
        .apply(&delta("2", vec![good.clone()], vec![]), &limits())
        .unwrap();
    assert!(state.export().services.contains_key(&key));
    assert!(state.refusals().is_empty());
    // Removing a refused resource forgets its refusal.
    let mut bad = good.clone();
    service_of(&mut bad).ports[0].number = 0;
    state
        .apply(&delta("3", vec![bad.clone()], vec![]), &limits())
        .unwrap();
    assert_eq!(state.refusals().len(), 1);
    state
        .apply(&delta("4", vec![], vec![bad.name.clone()]), &limits())
        .unwrap();
    assert!(state.refusals().is_empty());
}

#[test]
fn b1_a_delta_without_a_usable_cluster_is_refused_whole() {
    let (good, _) = synced();
    let mut state = good.clone();
    // A full state without the cluster resource.
    let err = state
        .apply(
            &proto::Delta {
                nonce: "2".into(),
                full_state: true,
                ..Default::default()
            },
            &limits(),
        )
        .unwrap_err();
    assert!(
        err.message.contains("must describe the peer cluster"),
        "{err}"
    );
    assert_eq!(state, good);
    // A cluster resource with a name that is not a DNS label.
    let mut cluster = (**good.resources().get(CLUSTER_RESOURCE).unwrap()).clone();
    if let Some(proto::resource::Body::Cluster(c)) = &mut cluster.body {
        c.name = "cluster/2".into();
    }
    let err = state
        .apply(&delta("3", vec![cluster], vec![]), &limits())
        .unwrap_err();
    assert!(err.message.contains("cluster name"), "{err}");
    assert_eq!(state, good);
    // Removing the cluster resource.
    assert!(
        state
            .apply(
                &delta("4", vec![], vec![CLUSTER_RESOURCE.into()]),
                &limits()
            )
            .is_err()
    );
    assert_eq!(state, good);
}

#[test]
fn b1_a_changed_segment_checks_the_hostnames_held_again() {
    let (mut state, _) = synced();
    let mut cluster = (**state.resources().get(CLUSTER_RESOURCE).unwrap()).clone();
    if let Some(proto::resource::Body::Cluster(c)) = &mut cluster.body {
        c.segment = None;
    }
    // The peer moves to the default segment without resending its services.
    let applied = state
        .apply(&delta("1", vec![cluster], vec![]), &limits())
        .unwrap();
    assert_eq!(applied.count(RefuseReason::InvalidHostname), 2);
    assert!(state.export().services.is_empty());
}

fn with_endpoints(good: &proto::Resource, name: &str, n: usize) -> proto::Resource {
    let mut r = fresh(good, name);
    let s = service_of(&mut r);
    let template = s.localities[0].endpoints[0].clone();
    s.localities[0].endpoints = (0..n)
        .map(|i| proto::Endpoint {
            address: vec![10, 9, (i >> 8) as u8, i as u8],
            ..template.clone()
        })
        .collect();
    r
}

#[test]
fn b2_services_beyond_the_cap_are_refused_and_never_held() {
    let (mut state, good) = synced();
    let caps = Limits {
        max_services: 5,
        ..Limits::default()
    };
    let many: Vec<proto::Resource> = (0..100)
        .map(|i| fresh(&good, &format!("s{i:03}")))
        .collect();
    let applied = state.apply(&delta("1", many, vec![]), &caps).unwrap();
    assert_eq!(state.export().services.len(), 5);
    assert_eq!(applied.count(RefuseReason::OverServiceCap), 97);
    assert_eq!(applied.refused.len(), MAX_ACK_REFUSALS.min(97));
    assert_eq!(state.refusals().count(RefuseReason::OverServiceCap), 97);
    // An update of a service held is not beyond the cap.
    let again = fresh(&good, "s000");
    let applied = state
        .apply(&delta("2", vec![again], vec![]), &caps)
        .unwrap();
    assert_eq!(applied.refused_total, 0);
}

#[test]
fn b2_too_many_endpoints_or_ports_refuse_the_service() {
    let (mut state, good) = synced();
    let caps = Limits {
        max_endpoints_per_service: 10,
        max_ports_per_service: 2,
        max_endpoints: 25,
        ..Limits::default()
    };
    let big = with_endpoints(&good, "big", 11);
    let mut ports = fresh(&good, "ports");
    let p = service_of(&mut ports).ports[0].clone();
    service_of(&mut ports).ports = (1..=3)
        .map(|n| proto::Port {
            number: 8000 + n,
            name: format!("p{n}"),
            ..p.clone()
        })
        .collect();
    let applied = state
        .apply(&delta("1", vec![big, ports], vec![]), &caps)
        .unwrap();
    assert_eq!(applied.count(RefuseReason::TooManyEndpoints), 1);
    assert_eq!(applied.count(RefuseReason::TooManyPorts), 1);
    // The peer's endpoint cap: 3 already held, 10 + 10 fit, the next 10 do not.
    assert_eq!(state.endpoint_count(), 3);
    let tens: Vec<proto::Resource> = (0..3)
        .map(|i| with_endpoints(&good, &format!("t{i}"), 10))
        .collect();
    let applied = state.apply(&delta("2", tens, vec![]), &caps).unwrap();
    assert_eq!(applied.count(RefuseReason::OverEndpointCap), 1);
    assert_eq!(state.endpoint_count(), 23);
    // Removing one makes room (removals are applied first).
    let t2 = with_endpoints(&good, "t2", 10);
    let applied = state
        .apply(
            &delta("3", vec![t2], vec!["service/httpbin/t0".into()]),
            &caps,
        )
        .unwrap();
    assert_eq!(applied.refused_total, 0);
    assert_eq!(state.endpoint_count(), 23);
}

#[test]
fn b3_a_chunked_delta_applies_only_with_its_last_chunk() {
    let (state, good) = synced();
    let mut chunks: Vec<proto::Delta> = (0..3)
        .map(|i| proto::Delta {
            nonce: "7".into(),
            version: 9,
            full_state: false,
            resources: vec![fresh(&good, &format!("c{i}"))],
            removed: vec![],
            more: true,
        })
        .collect();
    chunks[2].more = false;
    let mut pending = state.begin(&chunks[0]);
    for c in &chunks {
        pending.add(c, &limits());
    }
    assert_eq!(pending.chunks(), 3);
    assert_eq!(pending.nonce(), "7");
    // The state itself did not move.
    assert_eq!(state.export().services.len(), 2);
    let (next, applied) = pending.finish().unwrap();
    assert_eq!(applied.refused_total, 0);
    assert_eq!(next.export().services.len(), 5);
}
