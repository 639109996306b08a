//! SPEC B7: the DNS handler over arbitrary query bytes and arbitrary
//! structured messages, through the server's own handler
//! (`dns::answer`): no panic; every message with a header gets an answer
//! that decodes, with the query's id; names of the table are answered
//! from it; and no case allocates beyond a bound proportional to its
//! input (a header's counts must not size what is allocated).
//!
//! Cases: `PROPTEST_CASES` (default 256; `scripts/fuzz.sh` runs 100,000).

#![allow(clippy::unwrap_used)]

use std::alloc::System;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use meshpeer_dataplane::dns::{DnsTable, Names, answer};
use meshpeer_model::testing_b7::{self as b7, run};
use proptest::prelude::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated while `f` runs.
fn allocated<T>(f: impl FnOnce() -> T) -> (T, usize) {
    b7::allocated(GLOBAL, f)
}

/// What one query may cost: a fixed amount (the response, records,
/// hickory's buffers) and a multiple of its size.
fn bound(input: usize) -> usize {
    256 * 1024 + 64 * input
}

const VIP: [u8; 4] = [240, 240, 0, 7];

fn table() -> Arc<DnsTable> {
    let mut names = Names::new();
    names.insert(
        "web.shop.mesh.internal".to_owned(),
        vec![IpAddr::from(VIP), "fd00::7".parse().unwrap()],
    );
    names.insert(
        "web.shop.svc.cluster.local".to_owned(),
        vec![IpAddr::from(VIP)],
    );
    Arc::new(DnsTable {
        names,
        authoritative: vec!["mesh.internal".to_owned(), "cluster.dev".to_owned()],
    })
}

/// Answers `query` with the server's handler, checking what holds for
/// every input; returns the decoded answer.
fn checked(
    rt: &tokio::runtime::Runtime,
    table: &Arc<DnsTable>,
    query: &[u8],
    tcp: bool,
) -> Result<Option<Message>, TestCaseError> {
    let (wire, used) = allocated(|| rt.block_on(answer(Arc::clone(table), 5, query.to_vec(), tcp)));
    prop_assert!(
        used <= bound(query.len()),
        "a query of {} bytes allocated {used} bytes",
        query.len()
    );
    let Some(wire) = wire else {
        prop_assert!(query.len() < 12, "a query with a header got no answer");
        return Ok(None);
    };
    prop_assert!(wire.len() <= usize::from(u16::MAX));
    if !tcp {
        // UDP: within what a client may receive (512, or its EDNS size).
        prop_assert!(wire.len() <= 65_535);
    }
    let message = Message::from_vec(&wire);
    prop_assert!(message.is_ok(), "our answer does not decode: {message:?}");
    let message = message.unwrap();
    prop_assert_eq!(message.metadata.message_type, MessageType::Response);
    prop_assert_eq!(&message.metadata.id.to_be_bytes()[..], &query[..2]);
    Ok(Some(message))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "web", "shop", "mesh", "internal", "svc", "cluster", "local", "WEB", "dev", "x",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9-]{1,63}",
        // A label holding a dot: printed as `\.`, must not fake a suffix.
        Just("web.shop".to_owned()),
    ]
}

fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        prop::sample::select(vec![
            "web.shop.mesh.internal.",
            "Web.Shop.Mesh.Internal.",
            "nope.shop.mesh.internal.",
            "web.shop.svc.cluster.local.",
            "mesh.internal.",
            "a.cluster.dev.",
            "example.com.",
            ".",
        ])
        .prop_map(|n| Name::from_ascii(n).unwrap()),
        prop::collection::vec(label(), 0..6).prop_filter_map("too long", |labels| {
            Name::from_labels(labels.iter().map(String::as_bytes)).ok()
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<u16>(),
        0u8..16,
        prop::collection::vec((name(), any::<u16>(), any::<u16>()), 0..3),
        prop::option::of(any::<u16>()),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(|(id, op, queries, edns, (rd, cd, resp))| {
            let mut m = Message::new(id, MessageType::Query, OpCode::from_u8(op));
            m.metadata.recursion_desired = rd;
            m.metadata.checking_disabled = cd;
            if resp {
                m.metadata.message_type = MessageType::Response;
            }
            for (name, rtype, class) in queries {
                let mut q = Query::query(name, RecordType::from(rtype % 300));
                q.query_class = DNSClass::from(class % 260);
                m.add_query(q);
            }
            if let Some(size) = edns {
                let mut e = Edns::new();
                e.set_max_payload(size);
                m.edns = Some(e);
            }
            m
        })
}

fn query_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        // A header claiming up to 65,535 questions (and records) it does not hold.
        (
            any::<[u8; 4]>(),
            any::<[u16; 4]>(),
            prop::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(|(head, counts, tail)| {
                let mut b = head.to_vec();
                for c in counts {
                    b.extend_from_slice(&c.to_be_bytes());
                }
                b.extend(tail);
                b
            }),
        // A message, mangled.
        (
            message(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6)
        )
            .prop_map(|(m, edits)| {
                let mut b = m.to_vec().unwrap_or_default();
                for (at, byte) in edits {
                    if !b.is_empty() {
                        let i = at.index(b.len());
                        b[i] = byte;
                    }
                }
                b
            }),
    ]
}

#[test]
fn b7_dns_arbitrary_query_bytes() {
    let rt = runtime();
    let table = table();
    run((query_bytes(), any::<bool>()), |(bytes, tcp)| {
        checked(&rt, &table, &bytes, tcp)?;
        Ok(())
    });
}

#[test]
fn b7_dns_arbitrary_structured_messages() {
    let rt = runtime();
    let table = table();
    run((message(), any::<bool>()), |(m, tcp)| {
        let Ok(bytes) = m.to_vec() else {
            return Ok(());
        };
        let Some(answer) = checked(&rt, &table, &bytes, tcp)? else {
            return Ok(());
        };
        // A plain question for a name of the table is answered from it.
        if let [q] = m.queries.as_slice()
            && m.metadata.op_code == OpCode::Query
            && m.metadata.message_type == MessageType::Query
            && q.query_type() == RecordType::A
            && q.query_class() == DNSClass::IN
            && q.name()
                .to_ascii()
                .eq_ignore_ascii_case("web.shop.mesh.internal.")
        {
            prop_assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
            let ips: Vec<RData> = answer.answers.iter().map(|r| r.data.clone()).collect();
            prop_assert!(
                ips.iter()
                    .any(|d| matches!(d, RData::A(a) if a.0.octets() == VIP)),
                "{ips:?}"
            );
        }
        Ok(())
    });
}

/// A header that claims 65,535 questions in a 12-byte message must not
/// make the server reserve room for them.
#[test]
fn b7_dns_a_header_count_does_not_size_an_allocation() {
    let _one = b7::alone();
    let rt = runtime();
    let table = table();
    let query = [0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0];
    let (wire, used) = allocated(|| rt.block_on(answer(table, 5, query.to_vec(), true)));
    let answer = Message::from_vec(&wire.unwrap()).unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    assert!(used < 64 * 1024, "{used} bytes allocated");
}
