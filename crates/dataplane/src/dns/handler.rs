//! The request handler hickory's `Server` calls for every decoded request.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, LowerQuery, Message, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tokio::sync::{Semaphore, watch};
use tracing::debug;

use super::forward::Upstreams;
use super::metrics::{DnsMetrics, QueryResult};
use super::table::{DnsTable, Lookup};

/// RFC 6891: a responder never advertises less than 512 bytes.
const MIN_PAYLOAD: u16 = 512;

/// Answers from the current [`DnsTable`], forwards the rest.
#[derive(Clone)]
pub(crate) struct Handler {
    pub(crate) table: watch::Receiver<Arc<DnsTable>>,
    pub(crate) ttl: u32,
    pub(crate) upstream: Option<Arc<Upstreams>>,
    pub(crate) metrics: Arc<DnsMetrics>,
    /// Its sender is dropped when the server shuts down: in-flight forwards stop.
    pub(crate) stop: watch::Receiver<()>,
    /// One permit per forward in flight (SPEC B5): when none is left, the
    /// query is answered SERVFAIL at once instead of spawning a task and
    /// a socket.
    pub(crate) forwards: Arc<Semaphore>,
}

impl Handler {
    /// Handles one query as it came off the wire (DNS over TCP, tests):
    /// undecodable ones get FORMERR when their header can be read, and
    /// nothing otherwise (as hickory's server does).
    pub(crate) async fn handle_bytes<R: ResponseHandler>(
        &self,
        bytes: Vec<u8>,
        src: std::net::SocketAddr,
        protocol: Protocol,
        handle: R,
    ) {
        let Ok(header) = Header::read(&mut BinDecoder::new(&bytes)) else {
            record(&self.metrics, None, protocol, QueryResult::FormErr);
            return;
        };
        let decoded = if counts_fit(&header, bytes.len()) {
            Request::from_bytes(bytes, src, protocol).map_err(|e| e.to_string())
        } else {
            Err(format!(
                "its header counts more questions and records than {} bytes can hold",
                bytes.len()
            ))
        };
        match decoded {
            Ok(request) => {
                self.handle(&request, handle).await;
            }
            Err(error) => {
                debug!(%error, "undecodable dns request");
                record(&self.metrics, None, protocol, QueryResult::FormErr);
                // No question could be read: answer with none.
                let Ok(none) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
                    return;
                };
                let asked = Asked {
                    metadata: header.metadata,
                    queries: &none,
                    edns: None,
                };
                send_code(handle, &asked, ResponseCode::FormErr).await;
            }
        }
    }

    /// Counts a query dropped unanswered for want of room (UDP).
    pub(crate) fn dropped(&self, protocol: Protocol) {
        record(&self.metrics, None, protocol, QueryResult::Overloaded);
    }

    pub(crate) async fn handle<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        let asked = Asked::of(request);
        let protocol = request.protocol();
        if request.metadata.op_code != OpCode::Query {
            record(&self.metrics, None, protocol, QueryResult::NotImp);
            return send_code(handle, &asked, ResponseCode::NotImp).await;
        }
        let query = match request.request_info() {
            Ok(info) => info.query,
            Err(error) => {
                debug!(%error, "dns request without exactly one question");
                record(&self.metrics, None, protocol, QueryResult::FormErr);
                return send_code(handle, &asked, ResponseCode::FormErr).await;
            }
        };
        // Clone the Arc and release the borrow at once: the table may change under us,
        // this query keeps the version it started with.
        let table = self.table.borrow().clone();
        let name = query.name();
        // A label holding a '.' would print as `\.` and could fake a suffix match;
        // none of our names has one.
        let lookup = if name.iter().any(|label| label.contains(&b'.')) {
            Lookup::Foreign
        } else {
            table.lookup(&name.to_ascii())
        };
        let Some(local) = LocalAnswer::new(lookup, query, self.ttl) else {
            return match &self.upstream {
                Some(upstream) => self.forward(upstream, request, query, handle).await,
                None => {
                    record(&self.metrics, Some(query), protocol, QueryResult::Refused);
                    send_code(handle, &asked, ResponseCode::Refused).await
                }
            };
        };
        record(&self.metrics, Some(query), protocol, local.result);
        let mut metadata = Metadata::response_from_request(&asked.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = self.upstream.is_some();
        metadata.response_code = local.code;
        let edns = asked.response_edns(None);
        send(
            handle,
            &asked,
            metadata,
            edns.as_ref(),
            &local.answers,
            &local.authorities,
            &[],
        )
        .await
    }

    /// Starts the exchange with the upstream in its own task and returns at once:
    /// hickory handles the requests of one TCP connection one after the other, so a
    /// slow upstream would otherwise hold up every query pipelined behind this one.
    async fn forward<R: ResponseHandler>(
        &self,
        upstream: &Arc<Upstreams>,
        request: &Request,
        query: &LowerQuery,
        handle: R,
    ) -> ResponseInfo {
        let Ok(permit) = Arc::clone(&self.forwards).try_acquire_owned() else {
            debug!(name = %query.name(), "too many dns forwards in flight; SERVFAIL");
            record(
                &self.metrics,
                Some(query),
                request.protocol(),
                QueryResult::Overloaded,
            );
            return send_code(handle, &Asked::of(request), ResponseCode::ServFail).await;
        };
        let placeholder = ResponseInfo::from(Header {
            metadata: Metadata::response_from_request(&request.metadata),
            counts: HeaderCounts::default(),
        });
        // `Queries` is not `Clone`; decoding its wire form again gives an owned copy.
        let queries = match Queries::read(
            &mut BinDecoder::new(request.queries.as_bytes()),
            request.queries.len(),
        ) {
            Ok(queries) => queries,
            Err(error) => {
                debug!(%error, "re-reading the question failed");
                record(
                    &self.metrics,
                    Some(query),
                    request.protocol(),
                    QueryResult::ServFail,
                );
                return send_code(handle, &Asked::of(request), ResponseCode::ServFail).await;
            }
        };
        let job = ForwardJob {
            upstream: upstream.clone(),
            wire: request.as_slice().to_vec(),
            protocol: request.protocol(),
            metadata: request.metadata,
            edns: request.edns.clone(),
            queries,
            query: query.clone(),
            metrics: self.metrics.clone(),
        };
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = job.run(handle) => {}
                _ = stop.changed() => {}
            }
            drop(permit);
        });
        placeholder
    }
}

/// Whether the counts of `header` fit in a message of `len` bytes: a
/// question takes at least 5 bytes (the root name, type, class), a record
/// at least 11 (name, type, class, TTL, data length). The decoder reserves
/// room for as many as the header says before reading them, so a 12-byte
/// message claiming 65,535 questions would cost ~11 MB (found by the B7
/// property test); such a message is answered FORMERR without decoding.
fn counts_fit(header: &Header, len: usize) -> bool {
    let c = header.counts;
    let records = usize::from(c.answers) + usize::from(c.authorities) + usize::from(c.additionals);
    usize::from(c.queries) * 5 + records * 11 <= len.saturating_sub(12)
}

/// An answer from the table: addresses, NODATA or NXDOMAIN.
struct LocalAnswer {
    code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    result: QueryResult,
}

impl LocalAnswer {
    /// None when the name is not ours.
    fn new(lookup: Lookup<'_>, query: &LowerQuery, ttl: u32) -> Option<Self> {
        let (code, answers, zone) = match lookup {
            Lookup::Foreign => return None,
            Lookup::Found { addrs, zone } => (
                ResponseCode::NoError,
                address_records(query, addrs, ttl),
                zone,
            ),
            Lookup::Exists { zone } => (ResponseCode::NoError, Vec::new(), Some(zone)),
            Lookup::NxDomain { zone } => (ResponseCode::NXDomain, Vec::new(), Some(zone)),
        };
        let result = if code == ResponseCode::NXDomain {
            QueryResult::NxDomain
        } else if answers.is_empty() {
            QueryResult::NoData
        } else {
            QueryResult::Answer
        };
        // RFC 2308: the SOA lets resolvers cache the negative answer for `ttl`.
        let authorities = if answers.is_empty() {
            zone.and_then(|zone| soa_record(zone, ttl))
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        Some(Self {
            code,
            answers,
            authorities,
            result,
        })
    }
}

/// One forwarded query, owned so that it can run in its own task.
struct ForwardJob {
    upstream: Arc<Upstreams>,
    wire: Vec<u8>,
    protocol: Protocol,
    metadata: Metadata,
    edns: Option<Edns>,
    queries: Queries,
    query: LowerQuery,
    metrics: Arc<DnsMetrics>,
}

impl ForwardJob {
    async fn run<R: ResponseHandler>(self, handle: R) {
        let asked = Asked {
            metadata: self.metadata,
            queries: &self.queries,
            edns: self.edns.as_ref(),
        };
        let tcp = self.protocol != Protocol::Udp;
        match self
            .upstream
            .forward(&self.wire, self.query.original(), tcp)
            .await
        {
            Ok(answer) => {
                record(
                    &self.metrics,
                    Some(&self.query),
                    self.protocol,
                    QueryResult::Forwarded,
                );
                relay(handle, &asked, answer).await;
            }
            Err(error) => {
                debug!(name = %self.query.name(), %error, "forwarding failed");
                record(
                    &self.metrics,
                    Some(&self.query),
                    self.protocol,
                    QueryResult::ServFail,
                );
                send_code(handle, &asked, ResponseCode::ServFail).await;
            }
        }
    }
}

/// Sends the upstream's answer to the client: same flags, code and sections, the
/// client's id, and an OPT record only if the client sent one (sized for the client,
/// so that a large answer fetched over TCP is truncated for a UDP client).
async fn relay<R: ResponseHandler>(handle: R, asked: &Asked<'_>, answer: Message) {
    let mut metadata = answer.metadata;
    metadata.id = asked.metadata.id;
    let edns = asked.response_edns(answer.edns.as_ref());
    send(
        handle,
        asked,
        metadata,
        edns.as_ref(),
        &answer.answers,
        &answer.authorities,
        &answer.additionals,
    )
    .await;
}

/// What a response needs from its request.
struct Asked<'q> {
    metadata: Metadata,
    queries: &'q Queries,
    edns: Option<&'q Edns>,
}

impl<'q> Asked<'q> {
    fn of(request: &'q Request) -> Self {
        Self {
            metadata: request.metadata,
            queries: &request.queries,
            edns: request.edns.as_ref(),
        }
    }

    /// The OPT record of the response (RFC 6891 6.1.1: only when the request had one),
    /// based on `upstream`'s when relaying; its payload size bounds UDP responses.
    fn response_edns(&self, upstream: Option<&Edns>) -> Option<Edns> {
        let client = self.edns?;
        let mut edns = upstream.cloned().unwrap_or_default();
        edns.set_max_payload(client.max_payload().max(MIN_PAYLOAD));
        Some(edns)
    }
}

async fn send_code<R: ResponseHandler>(
    handle: R,
    asked: &Asked<'_>,
    code: ResponseCode,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&asked.metadata);
    metadata.response_code = code;
    let edns = asked.response_edns(None);
    send(handle, asked, metadata, edns.as_ref(), &[], &[], &[]).await
}

async fn send<R: ResponseHandler>(
    mut handle: R,
    asked: &Asked<'_>,
    metadata: Metadata,
    edns: Option<&Edns>,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let mut builder = MessageResponseBuilder::new(asked.queries, None);
    if let Some(edns) = edns {
        builder.edns(edns);
    }
    let response = builder.build(
        metadata,
        answers.iter(),
        authorities.iter(),
        std::iter::empty(),
        additionals.iter(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            // The client went away (TCP closed) or the server is shutting down.
            debug!(%error, "dns response not sent");
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}

/// The addresses of the asked family as records owned by the name as asked
/// (original case). Other types and classes get none: NODATA.
fn address_records(query: &LowerQuery, addrs: &[IpAddr], ttl: u32) -> Vec<Record> {
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return Vec::new();
    }
    let qtype = query.query_type();
    // ANY gets both families (RFC 8482 allows any subset; this one is useful).
    let v4 = matches!(qtype, RecordType::A | RecordType::ANY);
    let v6 = matches!(qtype, RecordType::AAAA | RecordType::ANY);
    let owner = query.original().name();
    addrs
        .iter()
        .filter_map(|addr| match addr {
            IpAddr::V4(ip) if v4 => Some(RData::A(A(*ip))),
            IpAddr::V6(ip) if v6 => Some(RData::AAAA(AAAA(*ip))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(owner.clone(), ttl, rdata))
        .collect()
}

/// A synthetic SOA for `zone` whose negative TTL is ours. None if `zone` is not a
/// valid name (the answer then goes without it).
fn soa_record(zone: &str, ttl: u32) -> Option<Record> {
    let origin = Name::from_ascii(format!("{zone}.")).ok()?;
    let mname = Name::from_ascii(format!("ns.{zone}.")).ok()?;
    let rname = Name::from_ascii(format!("hostmaster.{zone}.")).ok()?;
    let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, ttl);
    Some(Record::from_rdata(origin, ttl, RData::SOA(soa)))
}

/// Counts and logs one handled query.
fn record(
    metrics: &DnsMetrics,
    query: Option<&LowerQuery>,
    protocol: Protocol,
    result: QueryResult,
) {
    metrics.count(result);
    match query {
        Some(query) => debug!(
            name = %query.name(),
            qtype = %query.query_type(),
            %protocol,
            result = result.as_str(),
            "dns query"
        ),
        None => debug!(%protocol, result = result.as_str(), "dns query"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, rtype: RecordType, class: DNSClass) -> LowerQuery {
        let mut query = Query::query(Name::from_ascii(name).unwrap(), rtype);
        query.query_class = class;
        LowerQuery::query(query)
    }

    #[test]
    fn d1_addresses_by_type_and_class() {
        let addrs: Vec<IpAddr> = vec!["240.240.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        let found = Lookup::Found {
            addrs: &addrs,
            zone: Some("mesh.internal"),
        };
        let cases = [
            (RecordType::A, DNSClass::IN, 1, QueryResult::Answer),
            (RecordType::AAAA, DNSClass::IN, 1, QueryResult::Answer),
            (RecordType::ANY, DNSClass::IN, 2, QueryResult::Answer),
            (RecordType::TXT, DNSClass::IN, 0, QueryResult::NoData),
            (RecordType::A, DNSClass::CH, 0, QueryResult::NoData),
        ];
        for (rtype, class, count, result) in cases {
            let local =
                LocalAnswer::new(found, &query("A.mesh.internal.", rtype, class), 5).unwrap();
            assert_eq!(local.answers.len(), count, "{rtype} {class}");
            assert_eq!(local.result, result, "{rtype} {class}");
            assert_eq!(local.code, ResponseCode::NoError);
            assert!(
                local
                    .answers
                    .iter()
                    .all(|r| r.ttl == 5 && r.name.to_ascii() == "A.mesh.internal.")
            );
            // NODATA carries the zone's SOA, answers do not.
            assert_eq!(
                local.authorities.len(),
                usize::from(count == 0),
                "{rtype} {class}"
            );
        }
    }

    #[test]
    fn d1_negative_answers_carry_the_zone_soa() {
        let q = query("x.mesh.internal.", RecordType::A, DNSClass::IN);
        let nx = LocalAnswer::new(
            Lookup::NxDomain {
                zone: "mesh.internal",
            },
            &q,
            5,
        )
        .unwrap();
        assert_eq!(nx.code, ResponseCode::NXDomain);
        assert_eq!(nx.result, QueryResult::NxDomain);
        match &nx.authorities[..] {
            [soa] => assert_eq!(soa.name.to_ascii(), "mesh.internal."),
            other => panic!("{other:?}"),
        }
        // Taken-over names live in no zone of ours: NODATA without SOA.
        let addrs: Vec<IpAddr> = vec!["240.240.0.1".parse().unwrap()];
        let found = Lookup::Found {
            addrs: &addrs,
            zone: None,
        };
        let q = query("a.b.svc.cluster.local.", RecordType::AAAA, DNSClass::IN);
        let nodata = LocalAnswer::new(found, &q, 5).unwrap();
        assert_eq!(nodata.result, QueryResult::NoData);
        assert!(nodata.authorities.is_empty());
        assert!(LocalAnswer::new(Lookup::Foreign, &q, 5).is_none());
    }
}
