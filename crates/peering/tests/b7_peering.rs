//! SPEC B7: peering messages, what a peer sends, through the client's
//! application of them (`PeerState::apply`): arbitrary structured deltas
//! and arbitrary bytes decoded as the wire does (prost). No panic; a
//! refused delta leaves the state as it was; an applied one leaves the
//! state's export equal to its resources read afresh (once they describe
//! the peer cluster); and no case
//! allocates beyond a bound proportional to its input.
//!
//! Cases: `PROPTEST_CASES` (default 256; `scripts/fuzz.sh` runs 100,000).

#![allow(clippy::unwrap_used)]

use std::alloc::System;

use meshpeer_model::testing_b7::{self as b7, run};
use meshpeer_peering::limits::Limits;
use meshpeer_peering::proto::{self, resource::Body};
use meshpeer_peering::wire::PeerState;
use proptest::prelude::*;
use prost::Message;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated while `f` runs.
fn allocated<T>(f: impl FnOnce() -> T) -> (T, usize) {
    b7::allocated(GLOBAL, f)
}

/// What one case may allocate: a fixed amount and a multiple of what the
/// peer sent (decoded strings, the export built from them, a clone of
/// the state for the all-or-nothing apply).
fn bound(input: usize, held: usize) -> usize {
    256 * 1024 + 64 * input + 4 * held
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        // Plausible names.
        prop::sample::select(
            [
                "",
                "cluster",
                "web",
                "shop",
                "mesh.internal",
                "cluster.dev",
                "c1",
                "c2",
                "web.shop.mesh.internal",
                "a/b",
                "..",
                "-",
                "Web.Shop",
                "ünï",
                "service/shop/web",
                "service/shop",
                "service//",
            ]
            .map(str::to_owned)
            .into_iter()
            .chain(["x".repeat(300)])
            .collect::<Vec<_>>()
        ),
        // Anything.
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn locality() -> impl Strategy<Value = Option<proto::Locality>> {
    prop::option::of(
        (text(), text(), text()).prop_map(|(region, zone, subzone)| proto::Locality {
            region,
            zone,
            subzone,
        }),
    )
}

fn segment() -> impl Strategy<Value = proto::Segment> {
    (text(), text()).prop_map(|(name, domain)| proto::Segment { name, domain })
}

fn cluster() -> impl Strategy<Value = proto::ClusterResource> {
    (
        text(),
        text(),
        text(),
        locality(),
        prop::option::of(segment()),
        prop::collection::vec(segment(), 0..3),
    )
        .prop_map(
            |(name, network, trust_domain, locality, segment, segment_definitions)| {
                proto::ClusterResource {
                    name,
                    network,
                    trust_domain,
                    locality,
                    segment,
                    segment_definitions,
                }
            },
        )
}

fn endpoint() -> impl Strategy<Value = proto::Endpoint> {
    (
        prop_oneof![
            prop::collection::vec(any::<u8>(), 4..=4),
            prop::collection::vec(any::<u8>(), 16..=16),
            prop::collection::vec(any::<u8>(), 0..20),
        ],
        text(),
        prop::collection::vec(
            (any::<u32>(), any::<u32>())
                .prop_map(|(port, target)| proto::PortTarget { port, target }),
            0..4,
        ),
        text(),
        any::<bool>(),
    )
        .prop_map(
            |(address, name, ports, service_account, ambient)| proto::Endpoint {
                address,
                name,
                ports,
                service_account,
                ambient,
            },
        )
}

fn service() -> impl Strategy<Value = proto::ServiceResource> {
    (
        (text(), text(), text()),
        (any::<i32>(), any::<i32>(), any::<bool>()),
        prop::collection::vec(
            (text(), any::<u32>(), text()).prop_map(|(name, number, protocol)| proto::Port {
                name,
                number,
                protocol,
            }),
            0..4,
        ),
        prop::collection::vec(
            (locality(), prop::collection::vec(endpoint(), 0..4)).prop_map(
                |(locality, endpoints)| proto::LocalityGroup {
                    locality,
                    endpoints,
                },
            ),
            0..3,
        ),
    )
        .prop_map(
            |((namespace, name, hostname), (scope, td, takeover), ports, localities)| {
                proto::ServiceResource {
                    namespace,
                    name,
                    hostname,
                    // Valid enum values most of the time, any i32 sometimes.
                    scope: if scope % 4 == 0 {
                        scope
                    } else {
                        scope.rem_euclid(3)
                    },
                    traffic_distribution: if td % 4 == 0 { td } else { td.rem_euclid(5) },
                    takeover,
                    ports,
                    localities,
                }
            },
        )
}

fn resource() -> impl Strategy<Value = proto::Resource> {
    (
        prop_oneof![
            cluster().prop_map(Body::Cluster).prop_map(Some),
            service().prop_map(Body::Service).prop_map(Some),
            Just(None),
        ],
        any::<bool>(),
        text(),
        text(),
    )
        .prop_map(|(body, name_from_body, name, version)| {
            // Mostly the name the body implies, so that the body is used.
            let name = match (&body, name_from_body) {
                (Some(Body::Cluster(_)), true) => "cluster".to_owned(),
                (Some(Body::Service(s)), true) => format!("service/{}/{}", s.namespace, s.name),
                _ => name,
            };
            proto::Resource {
                name,
                version,
                body,
            }
        })
}

fn delta() -> impl Strategy<Value = proto::Delta> {
    (
        text(),
        any::<u64>(),
        any::<bool>(),
        prop::collection::vec(resource(), 0..6),
        prop::collection::vec(text(), 0..3),
    )
        .prop_map(
            |(nonce, version, full_state, resources, removed)| proto::Delta {
                nonce,
                version,
                full_state,
                resources,
                removed,
                // One message per delta: chunks are put together by the
                // stream (`Pending`), which `PeerState::apply` goes through.
                more: false,
            },
        )
}

/// Applies `delta` and checks the invariants.
fn apply_checked(state: &mut PeerState, delta: &proto::Delta) -> Result<(), TestCaseError> {
    let before = state.clone();
    let held = before.resources().len() * 512;
    let input = delta.encoded_len();
    let limits = Limits::default();
    let (result, bytes) = allocated(|| state.apply(delta, &limits));
    prop_assert!(
        bytes <= bound(input, held),
        "applying a delta of {input} bytes allocated {bytes} bytes"
    );
    match result {
        Err(_) => prop_assert_eq!(&*state, &before, "a refused delta changed the state"),
        Ok(_) => {
            // Resources that make an export (a cluster resource came) make
            // the same one read afresh.
            if let Ok(afresh) = state.resources().to_export() {
                prop_assert_eq!(&afresh, state.export());
            }
        }
    }
    Ok(())
}

#[test]
fn b7_peering_arbitrary_deltas_apply_or_are_refused_whole() {
    run(prop::collection::vec(delta(), 1..5), |deltas| {
        let mut state = PeerState::default();
        for d in &deltas {
            apply_checked(&mut state, d)?;
        }
        Ok(())
    });
}

fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // A real delta, mangled.
        (
            delta(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8)
        )
            .prop_map(|(d, edits)| {
                let mut b = proto::PeerResponse {
                    kind: Some(proto::peer_response::Kind::Delta(d)),
                }
                .encode_to_vec();
                for (at, byte) in edits {
                    if !b.is_empty() {
                        let i = at.index(b.len());
                        b[i] = byte;
                    }
                }
                b
            }),
        // Huge length prefixes and counts.
        (any::<u8>(), any::<u64>()).prop_map(|(tag, len)| {
            let mut b = vec![tag];
            prost::encoding::encode_varint(len, &mut b);
            b.extend_from_slice(&[0; 8]);
            b
        }),
    ]
}

#[test]
fn b7_peering_arbitrary_bytes_decoded_as_the_wire_does() {
    run(wire_bytes(), |bytes| {
        let (decoded, used) = allocated(|| proto::PeerResponse::decode(bytes.as_slice()));
        prop_assert!(
            used <= bound(bytes.len(), 0),
            "decoding {} bytes allocated {used}",
            bytes.len()
        );
        if let Ok(proto::PeerResponse {
            kind: Some(proto::peer_response::Kind::Delta(d)),
        }) = decoded
        {
            apply_checked(&mut PeerState::default(), &d)?;
        }
        if let Ok(d) = proto::Delta::decode(bytes.as_slice()) {
            apply_checked(&mut PeerState::default(), &d)?;
        }
        Ok(())
    });
}

/// A length prefix that claims more than the message holds is refused
/// before anything of that size is allocated.
#[test]
fn b7_peering_a_huge_length_prefix_allocates_nothing_of_its_size() {
    let _one = b7::alone();
    // Field 1 (delta), length-delimited, claiming 2^40 bytes.
    let mut b = vec![0x0a];
    prost::encoding::encode_varint(1 << 40, &mut b);
    b.extend_from_slice(&[0x0a, 0x01, b'x']);
    let (decoded, bytes) = allocated(|| proto::PeerResponse::decode(b.as_slice()));
    assert!(decoded.is_err());
    assert!(bytes < 64 * 1024, "{bytes} bytes allocated");
}
