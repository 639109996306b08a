//! The UDP fast path (issue 14): a plain query for a name in our zones is
//! answered straight from its datagram, without decoding it into hickory's
//! types, without a task, and with two small allocations (the lower-case
//! name for the lookup, and the answer). Anything
//! else (another opcode, several questions, records besides a bare OPT,
//! EDNS options, compressed or odd names, names we forward) goes the full
//! way ([`super::handler`]), which stays the reference: a test asks both
//! ways and compares the answers.
//!
//! The answer is what the full path sends: same header bits (QR, the
//! query's opcode and RD and CD, AA, RA when forwarding is on), the
//! question as asked (original case), the addresses of the asked family
//! (owner: a pointer to the question), or for NXDOMAIN/NODATA the zone's
//! synthetic SOA (RFC 2308), and an OPT record only when the query had one
//! (our payload size: the client's, at least 512).

use std::net::IpAddr;

use super::metrics::QueryResult;
use super::table::{DnsTable, Lookup};

/// RFC 6891: a responder never advertises less than 512 bytes.
const MIN_PAYLOAD: u16 = 512;
/// Longest name on the wire (RFC 1035 3.1).
const MAX_NAME: usize = 255;

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

/// What the fast path made of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fast {
    /// The answer to send, and what it was.
    Answer(Vec<u8>, QueryResult),
    /// Not a query the fast path answers: take the full path.
    Slow,
}

/// The question of a plain query, as read from the datagram.
struct Question<'q> {
    /// The question's wire bytes (name, type, class), to copy.
    wire: &'q [u8],
    /// The name, lower-cased, dotted, without the trailing dot.
    name: String,
    qtype: u16,
    qclass: u16,
    /// The client's OPT record: its UDP payload size, when present.
    edns: Option<u16>,
}

/// Answers `query` from `table` when it is a plain query for one of our
/// names (see the module docs).
pub(crate) fn answer(query: &[u8], table: &DnsTable, ttl: u32, recursion: bool) -> Fast {
    let Some(q) = read(query) else {
        return Fast::Slow;
    };
    let (code, addrs, zone) = match table.lookup(&q.name) {
        Lookup::Foreign => return Fast::Slow,
        Lookup::Found { addrs, zone } => (0u8, addrs, zone),
        Lookup::Exists { zone } => (0, &[][..], Some(zone)),
        Lookup::NxDomain { zone } => (3, &[][..], Some(zone)),
    };
    let in_class = matches!(q.qclass, CLASS_IN | CLASS_ANY);
    let v4 = in_class && matches!(q.qtype, TYPE_A | TYPE_ANY);
    let v6 = in_class && matches!(q.qtype, TYPE_AAAA | TYPE_ANY);
    let asked = |a: &&IpAddr| match a {
        IpAddr::V4(_) => v4,
        IpAddr::V6(_) => v6,
    };
    let count = addrs.iter().filter(asked).count();
    let soa = if count == 0 { zone } else { None };
    let result = if code == 3 {
        QueryResult::NxDomain
    } else if count == 0 {
        QueryResult::NoData
    } else {
        QueryResult::Answer
    };

    let mut out = Vec::with_capacity(12 + q.wire.len() + count * 28 + 128);
    // Header: id; QR, the query's opcode (0) and RD, AA; RA, the query's
    // CD, the code; one question, the counts.
    out.extend_from_slice(&query[..2]);
    out.push(0x80 | 0x04 | (query[2] & 0x01));
    out.push(if recursion { 0x80 } else { 0 } | (query[3] & 0x10) | code);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::try_from(count).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&u16::from(soa.is_some()).to_be_bytes());
    out.extend_from_slice(&u16::from(q.edns.is_some()).to_be_bytes());
    out.extend_from_slice(q.wire);
    for addr in addrs.iter().filter(asked) {
        // Owner: a pointer to the question's name (offset 12).
        out.extend_from_slice(&[0xC0, 12]);
        match addr {
            IpAddr::V4(ip) => {
                record_head(&mut out, TYPE_A, ttl, 4);
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                record_head(&mut out, TYPE_AAAA, ttl, 16);
                out.extend_from_slice(&ip.octets());
            }
        }
    }
    if let Some(zone) = soa {
        push_name(&mut out, &[zone]);
        // The data length is known once the data is written.
        record_head(&mut out, TYPE_SOA, ttl, 0);
        let start = out.len();
        push_name(&mut out, &["ns", zone]);
        push_name(&mut out, &["hostmaster", zone]);
        for v in [1, 3600, 600, 86400, ttl] {
            out.extend_from_slice(&u32::to_be_bytes(v));
        }
        let len = u16::try_from(out.len() - start).unwrap_or(0).to_be_bytes();
        out[start - 2..start].copy_from_slice(&len);
    }
    if let Some(payload) = q.edns {
        // OPT: root owner, type, payload size as class, extended code 0,
        // version 0, flags 0, no options.
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&payload.max(MIN_PAYLOAD).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    // A UDP answer must fit the client's payload size (512 without EDNS);
    // the full path truncates, so leave it those.
    let limit = usize::from(q.edns.map_or(MIN_PAYLOAD, |p| p.max(MIN_PAYLOAD)));
    if out.len() > limit {
        return Fast::Slow;
    }
    Fast::Answer(out, result)
}

/// Type, class IN, TTL and data length of a record whose owner is written.
fn record_head(out: &mut Vec<u8>, rtype: u16, ttl: u32, len: usize) {
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&u16::try_from(len).unwrap_or(0).to_be_bytes());
}

/// Writes the dotted names `parts`, one after the other, as one name.
fn push_name(out: &mut Vec<u8>, parts: &[&str]) {
    for part in parts {
        for label in part.split('.').filter(|l| !l.is_empty()) {
            out.push(u8::try_from(label.len()).unwrap_or(63));
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
}

/// The question of a plain query: QR 0, opcode 0, one question, no
/// answer or authority records, at most one additional record which is a
/// bare OPT (version 0, no options). None for anything else.
fn read(m: &[u8]) -> Option<Question<'_>> {
    if m.len() < 12 {
        return None;
    }
    let (flags, qd, an, ns, ar) = (
        m[2],
        u16::from_be_bytes([m[4], m[5]]),
        u16::from_be_bytes([m[6], m[7]]),
        u16::from_be_bytes([m[8], m[9]]),
        u16::from_be_bytes([m[10], m[11]]),
    );
    // QR must be 0, opcode QUERY; TC set by a client is odd: full path.
    if flags & 0x80 != 0 || flags & 0x78 != 0 || flags & 0x02 != 0 {
        return None;
    }
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    // The name: plain labels only (no compression), letters, digits,
    // '-' and '_' (a '.' or anything else inside a label: full path).
    let mut at = 12;
    let mut name = String::with_capacity(64);
    loop {
        let len = usize::from(*m.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = m.get(at..at + len)?;
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        at += len;
        if at - 12 > MAX_NAME {
            return None;
        }
    }
    if name.is_empty() {
        return None;
    }
    let fixed = m.get(at..at + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    let wire = &m[12..at + 4];
    at += 4;
    let edns = if ar == 1 {
        // A bare OPT: root owner, type 41, payload, rcode/version/flags
        // all zero but the DO bit (ignored by both paths), no options.
        let opt = m.get(at..at + 11)?;
        let rtype = u16::from_be_bytes([opt[1], opt[2]]);
        let rdlen = u16::from_be_bytes([opt[9], opt[10]]);
        if opt[0] != 0 || rtype != TYPE_OPT || opt[5] != 0 || opt[6] != 0 || rdlen != 0 {
            return None;
        }
        at += 11;
        Some(u16::from_be_bytes([opt[3], opt[4]]))
    } else {
        None
    };
    // Trailing bytes: full path (it decides what they mean).
    if at != m.len() {
        return None;
    }
    Some(Question {
        wire,
        name,
        qtype,
        qclass,
        edns,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use proptest::prelude::*;

    use super::*;
    use crate::dns::Names;

    fn table() -> DnsTable {
        DnsTable {
            names: Names::from_iter([(
                "web.shop.mesh.internal".to_owned(),
                vec!["240.241.0.1".parse().unwrap()],
            )]),
            authoritative: vec!["mesh.internal".into()],
        }
    }

    fn query(name: &str, edns: bool) -> Message {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if edns {
            m.set_edns(Edns::new());
        }
        m
    }

    fn fast(m: &Message) -> Fast {
        answer(&m.to_vec().unwrap(), &table(), 5, false)
    }

    #[test]
    fn d1_plain_queries_for_our_names_take_the_fast_path() {
        for (name, result) in [
            ("web.shop.mesh.internal.", QueryResult::Answer),
            ("WEB.shop.mesh.internal.", QueryResult::Answer),
            ("nope.shop.mesh.internal.", QueryResult::NxDomain),
            ("shop.mesh.internal.", QueryResult::NoData),
        ] {
            for edns in [false, true] {
                match fast(&query(name, edns)) {
                    Fast::Answer(bytes, r) => {
                        assert_eq!(r, result, "{name}");
                        let m = Message::from_vec(&bytes).unwrap();
                        assert_eq!(m.metadata.id, 7);
                        assert_eq!(m.edns.is_some(), edns);
                    }
                    Fast::Slow => panic!("{name} took the full path"),
                }
            }
        }
    }

    #[test]
    fn d1_anything_unusual_takes_the_full_path() {
        // Not ours: forwarded or refused there.
        assert_eq!(fast(&query("www.example.test.", false)), Fast::Slow);
        // Another opcode; a response; two questions.
        let mut m = query("web.shop.mesh.internal.", false);
        m.metadata.op_code = OpCode::Status;
        assert_eq!(fast(&m), Fast::Slow);
        let mut m = query("web.shop.mesh.internal.", false);
        m.metadata.message_type = MessageType::Response;
        assert_eq!(fast(&m), Fast::Slow);
        let mut m = query("web.shop.mesh.internal.", false);
        m.add_query(Query::query(
            Name::from_ascii("web.shop.mesh.internal.").unwrap(),
            RecordType::AAAA,
        ));
        assert_eq!(fast(&m), Fast::Slow);
        // EDNS with an option (a cookie) or another version.
        let mut m = query("web.shop.mesh.internal.", false);
        let mut opt = Edns::new();
        opt.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                10,
                vec![1, 2, 3, 4, 5, 6, 7, 8],
            ));
        m.set_edns(opt);
        assert_eq!(fast(&m), Fast::Slow);
        let mut m = query("web.shop.mesh.internal.", false);
        let mut opt = Edns::new();
        opt.set_version(1);
        m.set_edns(opt);
        assert_eq!(fast(&m), Fast::Slow);
        // Trailing bytes, a truncated question, a compressed name, a label
        // holding a dot.
        let mut bytes = query("web.shop.mesh.internal.", false).to_vec().unwrap();
        bytes.push(0);
        assert_eq!(answer(&bytes, &table(), 5, false), Fast::Slow);
        let bytes = query("web.shop.mesh.internal.", false).to_vec().unwrap();
        assert_eq!(
            answer(&bytes[..bytes.len() - 2], &table(), 5, false),
            Fast::Slow
        );
        let mut bytes = bytes[..12].to_vec();
        bytes.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(answer(&bytes, &table(), 5, false), Fast::Slow);
        let mut bytes = query("web.shop.mesh.internal.", false).to_vec().unwrap();
        bytes[13] = b'.';
        assert_eq!(answer(&bytes, &table(), 5, false), Fast::Slow);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// B7: arbitrary bytes never make the fast path panic, and what it
        /// answers is a DNS message hickory reads, for the asked id.
        #[test]
        fn b7_fast_path_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Fast::Answer(out, _) = answer(&bytes, &table(), 5, true) {
                let m = Message::from_vec(&out).unwrap();
                prop_assert_eq!(m.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
            }
        }

        /// B7: arbitrary names under our zone, in any case, with any type:
        /// always answered on the fast path, readable, and the question
        /// echoed as asked.
        #[test]
        fn b7_fast_path_arbitrary_names(
            labels in proptest::collection::vec("[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,18}[a-zA-Z0-9_])?", 0..4),
            rtype in any::<u16>(),
        ) {
            let name = format!("{}mesh.internal.", labels.iter().map(|l| format!("{l}.")).collect::<String>());
            let mut m = Message::new(9, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(Name::from_ascii(&name).unwrap(), RecordType::from(rtype)));
            let Fast::Answer(out, _) = answer(&m.to_vec().unwrap(), &table(), 5, false) else {
                return Err(TestCaseError::fail(format!("{name} took the full path")));
            };
            let back = Message::from_vec(&out).unwrap();
            prop_assert_eq!(back.queries[0].name().to_ascii(), name);
        }
    }
}
