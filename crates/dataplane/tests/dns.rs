//! SPEC D1: the proxy's DNS server, on real sockets, with hickory-resolver as the
//! client and a fake upstream resolver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use meshpeer_dataplane::dns::{DnsConfig, DnsMetrics, DnsServer, DnsTable};
use meshpeer_dataplane::feed::CatalogFeed;
use meshpeer_dataplane::state::{DataplaneState, StateOptions};
use meshpeer_model::testing::{ClusterBuilder, svc};
use meshpeer_model::{CatalogConfig, catalog, exports};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

const VIP4: &str = "240.240.0.1";
const VIP6: &str = "fd00:240::1";
const TTL: u32 = 7;
/// Bounds every wait in these tests: a hang fails instead of blocking CI.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}
use Transport::{Tcp, Udp};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn table() -> DnsTable {
    DnsTable {
        names: meshpeer_dataplane::dns::Names::from_iter([
            (
                "in-ambient.httpbin.mesh.internal".to_owned(),
                vec![ip(VIP4), ip(VIP6)],
            ),
            (
                "productpage.bookinfo.cluster.dev".to_owned(),
                vec![ip("240.240.0.2")],
            ),
            (
                "in-ambient.httpbin.svc.cluster.local".to_owned(),
                vec![ip("240.240.0.3")],
            ),
        ]),
        authoritative: vec![
            "mesh.internal".into(),
            "cluster.dev".into(),
            "cluster.prod".into(),
        ],
    }
}

/// Our server, the sender of its table and the registry of its metrics.
struct Proxy {
    server: DnsServer,
    table: watch::Sender<Arc<DnsTable>>,
    registry: Registry,
}

impl Proxy {
    async fn start(table: DnsTable, upstream: Option<SocketAddr>, timeout: Duration) -> Self {
        Self::with_upstreams(table, upstream.into_iter().collect(), timeout).await
    }

    async fn with_upstreams(
        table: DnsTable,
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Self {
        let mut registry = Registry::default();
        let metrics = DnsMetrics::register(&mut registry);
        let (tx, rx) = watch::channel(Arc::new(table));
        let mut config = DnsConfig::new("127.0.0.1:0".parse().unwrap());
        config.upstreams = upstreams;
        config.ttl = TTL;
        config.upstream_timeout = timeout;
        let server = DnsServer::start(config, rx, metrics).await.unwrap();
        Self {
            server,
            table: tx,
            registry,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The value of `dns_queries_total{result}`.
    fn count(&self, result: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        let prefix = format!("dns_queries_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|value| value.parse().unwrap())
            .unwrap_or(0)
    }
}

// ---- the client side: hickory-resolver, and raw messages where headers matter ----

fn resolver(server: SocketAddr, transport: Transport) -> TokioResolver {
    let mut connection = match transport {
        Udp => ConnectionConfig::udp(),
        Tcp => ConnectionConfig::tcp(),
    };
    connection.port = server.port();
    let name_server = NameServerConfig::new(server.ip(), true, vec![connection]);
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![name_server]),
        TokioRuntimeProvider::default(),
    );
    let options = builder.options_mut();
    options.attempts = 1;
    options.timeout = DEADLINE;
    options.use_hosts_file = ResolveHosts::Never;
    builder.build().unwrap()
}

/// One lookup with a fresh resolver (so no client cache hides what the server says).
async fn resolve(
    server: SocketAddr,
    transport: Transport,
    name: &str,
    rtype: RecordType,
) -> Result<Lookup, NetError> {
    let resolver = resolver(server, transport);
    tokio::time::timeout(DEADLINE, resolver.lookup(name, rtype))
        .await
        .expect("lookup hung")
}

fn addrs(lookup: &Lookup) -> Vec<IpAddr> {
    lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn rcode(error: &NetError) -> ResponseCode {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no_records)) => no_records.response_code,
        NetError::Dns(DnsError::ResponseCode(code)) => *code,
        other => panic!("not a DNS answer: {other:?}"),
    }
}

fn query(id: u16, name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if edns {
        let mut opt = Edns::new();
        opt.set_max_payload(1232);
        message.set_edns(opt);
    }
    message.to_vec().unwrap()
}

async fn udp_exchange(server: SocketAddr, request: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(request, server).await.unwrap();
    let mut buf = vec![0; 65535];
    let len = tokio::time::timeout(DEADLINE, socket.recv(&mut buf))
        .await
        .expect("no udp answer")
        .unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

async fn tcp_send(stream: &mut TcpStream, request: &[u8]) {
    let len = u16::try_from(request.len()).unwrap();
    stream.write_all(&len.to_be_bytes()).await.unwrap();
    stream.write_all(request).await.unwrap();
}

async fn tcp_recv(stream: &mut TcpStream) -> Message {
    tokio::time::timeout(DEADLINE, async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).unwrap()
    })
    .await
    .expect("no tcp answer")
}

async fn tcp_exchange(server: SocketAddr, request: &[u8]) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    tcp_send(&mut stream, request).await;
    tcp_recv(&mut stream).await
}

// ---- the upstream side ----

/// UDP and TCP listeners on one port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
}

/// A resolver that knows `example.org` (192.0.2.1), `other.httpbin.svc.cluster.local`
/// (10.96.0.10) and `big.example.org` (40 addresses, truncated over UDP), says NXDOMAIN
/// to the rest, and remembers every query it got.
struct FakeUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(Transport, String)>>>,
    _tasks: JoinSet<()>,
}

impl FakeUpstream {
    async fn start() -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        let udp_seen = seen.clone();
        tasks.spawn(async move {
            let mut buf = vec![0; 65535];
            loop {
                let (len, from) = udp.recv_from(&mut buf).await.unwrap();
                let answer = fake_answer(&buf[..len], Udp, &udp_seen);
                udp.send_to(&answer, from).await.unwrap();
            }
        });
        let tcp_seen = seen.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let (mut stream, _) = tcp.accept().await.unwrap();
                let seen = tcp_seen.clone();
                connections.spawn(async move {
                    while let Ok(len) = stream.read_u16().await {
                        let mut buf = vec![0; usize::from(len)];
                        stream.read_exact(&mut buf).await.unwrap();
                        let answer = fake_answer(&buf, Tcp, &seen);
                        tcp_send(&mut stream, &answer).await;
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            _tasks: tasks,
        }
    }

    fn seen(&self) -> Vec<(Transport, String)> {
        self.seen.lock().unwrap().clone()
    }
}

fn fake_answer(
    wire: &[u8],
    transport: Transport,
    seen: &Mutex<Vec<(Transport, String)>>,
) -> Vec<u8> {
    let request = Message::from_vec(wire).unwrap();
    let question = request.queries[0].clone();
    let name = question.name.to_ascii().to_lowercase();
    seen.lock().unwrap().push((transport, name.clone()));
    let mut answer = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    answer.metadata.recursion_desired = request.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_query(question.clone());
    let a =
        |ip: &str| Record::from_rdata(question.name.clone(), 60, RData::A(A(ip.parse().unwrap())));
    match (name.as_str(), question.query_type) {
        ("example.org.", RecordType::A) => {
            answer.add_answer(a("192.0.2.1"));
        }
        ("other.httpbin.svc.cluster.local.", RecordType::A) => {
            answer.add_answer(a("10.96.0.10"));
        }
        ("big.example.org.", RecordType::A) if transport == Udp => {
            answer.metadata.truncation = true;
        }
        ("big.example.org.", RecordType::A) => {
            for i in 1..=40 {
                answer.add_answer(a(&format!("192.0.2.{i}")));
            }
        }
        ("example.org." | "other.httpbin.svc.cluster.local." | "big.example.org.", _) => {}
        _ => answer.metadata.response_code = ResponseCode::NXDomain,
    }
    if request.edns.is_some() {
        answer.set_edns(Edns::new());
    }
    answer.to_vec().unwrap()
}

/// An upstream that takes queries (UDP and TCP) and never answers.
struct DeadUpstream {
    addr: SocketAddr,
    /// UDP queries it got.
    asked: Arc<std::sync::atomic::AtomicUsize>,
    _tcp: TcpListener,
    _reader: JoinSet<()>,
}

impl DeadUpstream {
    async fn start() -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut reader = JoinSet::new();
        let count = asked.clone();
        reader.spawn(async move {
            let mut buf = vec![0; 65535];
            while udp.recv_from(&mut buf).await.is_ok() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Self {
            addr,
            asked,
            _tcp: tcp,
            _reader: reader,
        }
    }

    /// UDP queries it got so far (read before the proxy gave up on it).
    fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

// ---- the rules ----

#[tokio::test]
async fn d1_global_names_resolve_to_the_vip() {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(table(), Some(upstream.addr), DEADLINE).await;
    for transport in [Udp, Tcp] {
        for name in [
            "in-ambient.httpbin.mesh.internal",
            "in-ambient.httpbin.mesh.internal.",
            "IN-Ambient.HttpBin.Mesh.Internal.",
        ] {
            let v4 = resolve(proxy.addr(), transport, name, RecordType::A)
                .await
                .unwrap_or_else(|e| panic!("{transport:?} A {name}: {e}"));
            assert_eq!(addrs(&v4), [ip(VIP4)], "{transport:?} A {name}");
            assert!(
                v4.answers().iter().all(|r| r.ttl == TTL),
                "{transport:?} {name}"
            );

            let v6 = resolve(proxy.addr(), transport, name, RecordType::AAAA)
                .await
                .unwrap_or_else(|e| panic!("{transport:?} AAAA {name}: {e}"));
            assert_eq!(addrs(&v6), [ip(VIP6)], "{transport:?} AAAA {name}");
            assert!(
                v6.answers().iter().all(|r| r.ttl == TTL),
                "{transport:?} {name}"
            );
        }
        let dev = resolve(
            proxy.addr(),
            transport,
            "productpage.bookinfo.cluster.dev",
            RecordType::A,
        )
        .await
        .unwrap();
        assert_eq!(addrs(&dev), [ip("240.240.0.2")]);
    }

    // The header: an authoritative answer with the client's id, the name as asked.
    let answer = udp_exchange(
        proxy.addr(),
        &query(
            4242,
            "In-Ambient.httpbin.mesh.internal.",
            RecordType::A,
            false,
        ),
    )
    .await;
    assert_eq!(answer.metadata.id, 4242);
    assert!(answer.metadata.authoritative);
    assert!(answer.metadata.recursion_available);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(
        answer.answers[0].name.to_ascii(),
        "In-Ambient.httpbin.mesh.internal."
    );
    assert!(
        answer.edns.is_none(),
        "no OPT in answer to a query without one"
    );

    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[tokio::test]
async fn d1_invisible_names_under_a_global_domain_are_nxdomain() {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(table(), Some(upstream.addr), DEADLINE).await;
    for transport in [Udp, Tcp] {
        for name in [
            "x.y.mesh.internal",
            "x.y.cluster.prod.",
            "X.Y.Cluster.Dev",
            "in-ambient.other.mesh.internal",
        ] {
            for rtype in [RecordType::A, RecordType::AAAA] {
                let error = resolve(proxy.addr(), transport, name, rtype)
                    .await
                    .expect_err(name);
                assert_eq!(
                    rcode(&error),
                    ResponseCode::NXDomain,
                    "{transport:?} {name}"
                );
            }
        }
    }

    // Authoritative, with an SOA so resolvers cache the negative answer for our TTL.
    let answer = tcp_exchange(
        proxy.addr(),
        &query(7, "x.y.mesh.internal.", RecordType::A, true),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(answer.metadata.authoritative);
    let soa = answer
        .authorities
        .first()
        .expect("soa in the authority section");
    assert_eq!(soa.name.to_ascii(), "mesh.internal.");
    match &soa.data {
        RData::SOA(soa) => assert_eq!(soa.minimum, TTL),
        other => panic!("not an SOA: {other:?}"),
    }

    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[tokio::test]
async fn d1_nodata_for_other_types_and_families() {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(table(), Some(upstream.addr), DEADLINE).await;
    let cases = [
        // A v4-only service has no AAAA.
        ("productpage.bookinfo.cluster.dev", RecordType::AAAA),
        // Only addresses are served.
        ("in-ambient.httpbin.mesh.internal", RecordType::TXT),
        ("in-ambient.httpbin.mesh.internal", RecordType::MX),
        ("in-ambient.httpbin.svc.cluster.local", RecordType::AAAA),
        // The domain itself exists.
        ("mesh.internal", RecordType::A),
        ("cluster.prod", RecordType::AAAA),
        // So does an empty non-terminal above a global name.
        ("httpbin.mesh.internal", RecordType::A),
    ];
    for transport in [Udp, Tcp] {
        for (name, rtype) in cases {
            let error = resolve(proxy.addr(), transport, name, rtype)
                .await
                .expect_err(name);
            assert_eq!(
                rcode(&error),
                ResponseCode::NoError,
                "{transport:?} {rtype} {name}"
            );
        }
    }
    let answer = udp_exchange(
        proxy.addr(),
        &query(
            9,
            "productpage.bookinfo.cluster.dev.",
            RecordType::AAAA,
            true,
        ),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert!(answer.answers.is_empty());
    assert!(matches!(answer.authorities[0].data, RData::SOA(_)));
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[tokio::test]
async fn d1_other_names_are_forwarded_upstream() {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(table(), Some(upstream.addr), DEADLINE).await;

    for transport in [Udp, Tcp] {
        let lookup = resolve(proxy.addr(), transport, "example.org", RecordType::A)
            .await
            .unwrap();
        assert_eq!(addrs(&lookup), [ip("192.0.2.1")], "{transport:?}");
        assert_eq!(lookup.answers()[0].ttl, 60, "the upstream's TTL is kept");
    }
    // A TCP client is forwarded over TCP, a UDP client over UDP.
    assert_eq!(
        upstream.seen(),
        [(Udp, "example.org.".into()), (Tcp, "example.org.".into())]
    );

    // cluster.local is not ours: names missing from the table go to the cluster's DNS.
    let lookup = resolve(
        proxy.addr(),
        Udp,
        "other.httpbin.svc.cluster.local",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(addrs(&lookup), [ip("10.96.0.10")]);
    let error = resolve(proxy.addr(), Tcp, "nothing.example.org", RecordType::A)
        .await
        .unwrap_err();
    assert_eq!(
        rcode(&error),
        ResponseCode::NXDomain,
        "upstream NXDOMAIN is relayed"
    );
    assert_eq!(upstream.seen().len(), 4);

    // The relayed answer carries the client's id and the upstream's flags.
    let answer = udp_exchange(
        proxy.addr(),
        &query(31337, "example.org.", RecordType::A, true),
    )
    .await;
    assert_eq!(answer.metadata.id, 31337);
    assert!(!answer.metadata.authoritative);
    assert!(answer.metadata.recursion_available);
    assert!(answer.edns.is_some());
    assert_eq!(answer.answers.len(), 1);
}

#[tokio::test]
async fn d1_a_dead_upstream_gives_servfail_after_the_timeout() {
    let dead = DeadUpstream::start().await;
    let timeout = Duration::from_millis(300);
    let proxy = Proxy::start(table(), Some(dead.addr), timeout).await;
    for transport in [Udp, Tcp] {
        let started = Instant::now();
        let error = resolve(proxy.addr(), transport, "example.org", RecordType::A)
            .await
            .unwrap_err();
        assert_eq!(rcode(&error), ResponseCode::ServFail, "{transport:?}");
        assert!(
            started.elapsed() >= timeout,
            "{transport:?}: {:?}",
            started.elapsed()
        );
    }
    // Ours are still answered.
    let lookup = resolve(
        proxy.addr(),
        Udp,
        "in-ambient.httpbin.mesh.internal",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(addrs(&lookup), [ip(VIP4)]);
    // One SERVFAIL counted per query (hickory-resolver itself may ask more than once).
    let before = proxy.count("servfail");
    let answer = udp_exchange(
        proxy.addr(),
        &query(5, "example.org.", RecordType::A, false),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(answer.metadata.id, 5);
    assert_eq!(proxy.count("servfail"), before + 1);
}

#[tokio::test]
async fn d1_the_next_upstream_answers_when_the_first_is_dead_and_is_asked_first_after() {
    let dead = DeadUpstream::start().await;
    let live = FakeUpstream::start().await;
    let timeout = Duration::from_millis(300);
    let proxy = Proxy::with_upstreams(table(), vec![dead.addr, live.addr], timeout).await;
    // The first query waits for the dead one, then gets the live one's answer.
    let answer = udp_exchange(
        proxy.addr(),
        &query(1, "example.org.", RecordType::A, false),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(dead.asked(), 1, "the first upstream was asked first");
    // From now on the live one is asked first: the dead one gets nothing.
    for id in 2..5 {
        let answer = udp_exchange(
            proxy.addr(),
            &query(id, "example.org.", RecordType::A, false),
        )
        .await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answer.metadata.id, id);
    }
    // Over TCP as well.
    let lookup = resolve(proxy.addr(), Tcp, "example.org", RecordType::A)
        .await
        .unwrap();
    assert_eq!(addrs(&lookup), [ip("192.0.2.1")]);
    assert_eq!(dead.asked(), 1, "the dead upstream is not asked again");
    assert_eq!(live.seen().len(), 5, "{:?}", live.seen());
    assert_eq!(proxy.count("forwarded"), 5);
    assert_eq!(proxy.count("servfail"), 0);
}

#[tokio::test]
async fn d1_servfail_only_when_every_upstream_fails() {
    let (a, b) = (DeadUpstream::start().await, DeadUpstream::start().await);
    let timeout = Duration::from_millis(200);
    let proxy = Proxy::with_upstreams(table(), vec![a.addr, b.addr], timeout).await;
    let answer = udp_exchange(
        proxy.addr(),
        &query(9, "example.org.", RecordType::A, false),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!((a.asked(), b.asked()), (1, 1), "both were asked");
    assert_eq!(proxy.count("servfail"), 1);
}

#[tokio::test]
async fn d1_without_upstream_other_names_are_refused() {
    let proxy = Proxy::start(table(), None, DEADLINE).await;
    for transport in [Udp, Tcp] {
        let error = resolve(proxy.addr(), transport, "example.org", RecordType::A)
            .await
            .unwrap_err();
        assert_eq!(rcode(&error), ResponseCode::Refused, "{transport:?}");
    }
    let answer = udp_exchange(
        proxy.addr(),
        &query(1, "in-ambient.httpbin.mesh.internal.", RecordType::A, false),
    )
    .await;
    assert_eq!(answer.answers.len(), 1);
    assert!(
        !answer.metadata.recursion_available,
        "no recursion without an upstream"
    );
}

#[tokio::test]
async fn d1_table_changes_apply_to_the_next_query() {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(table(), Some(upstream.addr), DEADLINE).await;
    let name = "in-ambient.httpbin.mesh.internal";
    let lookup = resolve(proxy.addr(), Udp, name, RecordType::A)
        .await
        .unwrap();
    assert_eq!(addrs(&lookup), [ip(VIP4)]);

    // The VIP changes, and a service appears in a new segment.
    let mut next = table();
    next.names.insert(name.into(), vec![ip("240.240.9.9")]);
    next.names.insert(
        "reviews.bookinfo.cluster.prod".into(),
        vec![ip("240.240.0.7")],
    );
    proxy.table.send(Arc::new(next)).unwrap();
    for transport in [Udp, Tcp] {
        let lookup = resolve(proxy.addr(), transport, name, RecordType::A)
            .await
            .unwrap();
        assert_eq!(addrs(&lookup), [ip("240.240.9.9")]);
        let lookup = resolve(
            proxy.addr(),
            transport,
            "reviews.bookinfo.cluster.prod",
            RecordType::A,
        )
        .await
        .unwrap();
        assert_eq!(addrs(&lookup), [ip("240.240.0.7")]);
    }

    // S5: the default segment empties; its names vanish, and once mesh.internal is
    // no longer ours its names go upstream.
    let mut next = table();
    next.names.remove(name);
    proxy.table.send(Arc::new(next)).unwrap();
    let error = resolve(proxy.addr(), Udp, name, RecordType::A)
        .await
        .unwrap_err();
    assert_eq!(rcode(&error), ResponseCode::NXDomain);
    assert!(upstream.seen().is_empty());

    let mut next = table();
    next.names.remove(name);
    next.authoritative
        .retain(|domain| domain != "mesh.internal");
    proxy.table.send(Arc::new(next)).unwrap();
    let error = resolve(proxy.addr(), Udp, name, RecordType::A)
        .await
        .unwrap_err();
    assert_eq!(rcode(&error), ResponseCode::NXDomain);
    assert_eq!(upstream.seen(), [(Udp, format!("{name}."))]);
}

#[tokio::test]
async fn d1_takeover_names_resolve() {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(table(), Some(upstream.addr), DEADLINE).await;
    for transport in [Udp, Tcp] {
        let lookup = resolve(
            proxy.addr(),
            transport,
            "in-ambient.httpbin.svc.cluster.local.",
            RecordType::A,
        )
        .await
        .unwrap();
        assert_eq!(addrs(&lookup), [ip("240.240.0.3")], "{transport:?}");
        assert!(lookup.answers().iter().all(|r| r.ttl == TTL));

        let lookup = resolve(
            proxy.addr(),
            transport,
            "other.httpbin.svc.cluster.local.",
            RecordType::A,
        )
        .await
        .unwrap();
        assert_eq!(addrs(&lookup), [ip("10.96.0.10")], "{transport:?}");
    }
    assert_eq!(
        upstream.seen(),
        [
            (Udp, "other.httpbin.svc.cluster.local.".into()),
            (Tcp, "other.httpbin.svc.cluster.local.".into())
        ]
    );

    // K4: once the takeover is gone, the local name is the cluster's again.
    let mut next = table();
    next.names.remove("in-ambient.httpbin.svc.cluster.local");
    proxy.table.send(Arc::new(next)).unwrap();
    let error = resolve(
        proxy.addr(),
        Udp,
        "in-ambient.httpbin.svc.cluster.local",
        RecordType::A,
    )
    .await
    .unwrap_err();
    assert_eq!(rcode(&error), ResponseCode::NXDomain);
    assert_eq!(upstream.seen().len(), 3);
}

#[tokio::test]
async fn d1_queries_are_counted_by_result() {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(table(), Some(upstream.addr), DEADLINE).await;
    let server = proxy.addr();
    let global = "in-ambient.httpbin.mesh.internal.";
    udp_exchange(server, &query(1, global, RecordType::A, false)).await;
    tcp_exchange(server, &query(2, global, RecordType::AAAA, false)).await;
    udp_exchange(server, &query(3, global, RecordType::TXT, false)).await;
    udp_exchange(server, &query(4, "x.mesh.internal.", RecordType::A, false)).await;
    udp_exchange(server, &query(5, "example.org.", RecordType::A, false)).await;
    // No question at all.
    let mut empty = Message::new(6, MessageType::Query, OpCode::Query);
    empty.metadata.recursion_desired = true;
    let answer = udp_exchange(server, &empty.to_vec().unwrap()).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    // An opcode we do not serve.
    let mut notify = Message::from_vec(&query(7, global, RecordType::SOA, false)).unwrap();
    notify.metadata.op_code = OpCode::Notify;
    let answer = udp_exchange(server, &notify.to_vec().unwrap()).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NotImp);

    for (result, want) in [
        ("answer", 2),
        ("nodata", 1),
        ("nxdomain", 1),
        ("forwarded", 1),
        ("formerr", 1),
        ("notimp", 1),
        ("servfail", 0),
        ("refused", 0),
    ] {
        assert_eq!(proxy.count(result), want, "{result}");
    }

    let refusing = Proxy::start(table(), None, DEADLINE).await;
    udp_exchange(
        refusing.addr(),
        &query(8, "example.org.", RecordType::A, false),
    )
    .await;
    assert_eq!(refusing.count("refused"), 1);
}

#[tokio::test]
async fn d1_truncated_upstream_answers_are_fetched_over_tcp() {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(table(), Some(upstream.addr), DEADLINE).await;

    // A UDP client without EDNS gets what fits in 512 bytes, flagged truncated...
    let answer = udp_exchange(
        proxy.addr(),
        &query(1, "big.example.org.", RecordType::A, false),
    )
    .await;
    assert!(answer.metadata.truncation);
    assert!(answer.answers.len() < 40);
    assert_eq!(
        upstream.seen(),
        [
            (Udp, "big.example.org.".into()),
            (Tcp, "big.example.org.".into())
        ]
    );

    // ...and everything when it comes back over TCP, as resolvers do.
    let lookup = resolve(proxy.addr(), Tcp, "big.example.org", RecordType::A)
        .await
        .unwrap();
    assert_eq!(addrs(&lookup).len(), 40);
}

#[tokio::test]
async fn d1_a_slow_upstream_does_not_block_other_queries() {
    let dead = DeadUpstream::start().await;
    let proxy = Proxy::start(table(), Some(dead.addr), DEADLINE).await;
    let quick = Duration::from_secs(2);

    // Two queries pipelined on one TCP connection: the local answer overtakes.
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp_send(&mut stream, &query(1, "example.org.", RecordType::A, false)).await;
    tcp_send(
        &mut stream,
        &query(2, "in-ambient.httpbin.mesh.internal.", RecordType::A, false),
    )
    .await;
    let answer = tokio::time::timeout(quick, tcp_recv(&mut stream))
        .await
        .expect("the local answer waited for the upstream");
    assert_eq!(answer.metadata.id, 2);
    assert_eq!(answer.answers.len(), 1);

    // Same over UDP from one socket.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(
            &query(3, "example.org.", RecordType::A, false),
            proxy.addr(),
        )
        .await
        .unwrap();
    socket
        .send_to(
            &query(4, "in-ambient.httpbin.mesh.internal.", RecordType::A, false),
            proxy.addr(),
        )
        .await
        .unwrap();
    let mut buf = vec![0; 65535];
    let len = tokio::time::timeout(quick, socket.recv(&mut buf))
        .await
        .expect("the local answer waited for the upstream")
        .unwrap();
    assert_eq!(Message::from_vec(&buf[..len]).unwrap().metadata.id, 4);
}

#[tokio::test]
async fn d1_shutdown_frees_the_port() {
    let proxy = Proxy::start(table(), None, DEADLINE).await;
    let addr = proxy.addr();
    tokio::time::timeout(DEADLINE, proxy.server.shutdown())
        .await
        .expect("shutdown hung");
    UdpSocket::bind(addr).await.expect("udp port still taken");
    TcpListener::bind(addr).await.expect("tcp port still taken");
}

/// A forward still waiting for its upstream does not keep the port: the
/// UDP thread stops, and the answer on its way is dropped with the server.
#[tokio::test]
async fn d1_shutdown_frees_the_port_with_a_forward_in_flight() {
    let dead = DeadUpstream::start().await;
    let proxy = Proxy::start(table(), Some(dead.addr), Duration::from_secs(30)).await;
    let addr = proxy.addr();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&query(7, "example.org.", RecordType::A, false), addr)
        .await
        .unwrap();
    // The query reached the upstream: the forward is in flight.
    tokio::time::timeout(DEADLINE, async {
        while dead.asked() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the query was never forwarded");
    tokio::time::timeout(DEADLINE, proxy.server.shutdown())
        .await
        .expect("shutdown hung");
    UdpSocket::bind(addr).await.expect("udp port still taken");
    TcpListener::bind(addr).await.expect("tcp port still taken");
}

#[tokio::test]
async fn d1_listen_on_a_fixed_port() {
    let (udp, tcp) = bind_pair().await;
    let addr = udp.local_addr().unwrap();
    drop((udp, tcp));
    let (_tx, rx) = watch::channel(Arc::new(table()));
    let server = DnsServer::start(DnsConfig::new(addr), rx, Arc::new(DnsMetrics::default()))
        .await
        .unwrap();
    assert_eq!(server.local_addr(), addr);
    let lookup = resolve(addr, Tcp, "in-ambient.httpbin.mesh.internal", RecordType::A)
        .await
        .unwrap();
    assert_eq!(addrs(&lookup), [ip(VIP4)]);
    server.shutdown().await;
}

/// The DNS table of cluster1, which links to cluster2 whose `example/www`
/// came out named `rogue` (a peer whose Segment claims a public domain).
fn table_with_rogue_name(rogue: &str) -> DnsTable {
    let c1 = ClusterBuilder::new("cluster1").link("cluster2").build();
    let c2 = ClusterBuilder::new("cluster2")
        .service(svc("example", "www").global().ready(1))
        .build();
    let mut cat = catalog(&c1, &[exports(&c2)], &CatalogConfig::default());
    assert_eq!(cat.services.len(), 1, "{:?}", cat.diagnostics);
    let (host, svc) = cat
        .services
        .iter()
        .next()
        .map(|(h, s)| (h.clone(), s.clone()))
        .unwrap();
    let mut svc = (*svc).clone();
    svc.hostname = rogue.into();
    cat.services.remove(&host);
    cat.services.insert(rogue.to_owned(), Arc::new(svc));
    let feed = Arc::new(CatalogFeed {
        version: 1,
        catalog: Arc::new(cat),
        callers: Vec::new(),
        callers_pending: false,
    });
    let state = DataplaneState::build(feed, &StateOptions::default());
    assert_eq!(
        state.outside_zones.iter().collect::<Vec<_>>(),
        [&rogue.to_owned()]
    );
    (*state.dns).clone()
}

#[tokio::test]
async fn p2_a_catalog_name_outside_the_zones_is_forwarded_or_refused_never_given_a_vip() {
    let table = table_with_rogue_name("www.example.org");
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(table.clone(), Some(upstream.addr), DEADLINE).await;
    // A foreign name: the upstream's answer (NXDOMAIN here), not a VIP.
    let error = resolve(proxy.addr(), Udp, "www.example.org", RecordType::A)
        .await
        .unwrap_err();
    assert_eq!(rcode(&error), ResponseCode::NXDomain);
    assert_eq!(upstream.seen(), [(Udp, "www.example.org.".to_owned())]);
    assert_eq!(proxy.count("forwarded"), 1);
    assert_eq!(proxy.count("answer"), 0);

    // Without an upstream, refused as any foreign name.
    let proxy = Proxy::start(table, None, DEADLINE).await;
    for transport in [Udp, Tcp] {
        let error = resolve(proxy.addr(), transport, "www.example.org", RecordType::A)
            .await
            .unwrap_err();
        assert_eq!(rcode(&error), ResponseCode::Refused, "{transport:?}");
    }
}

/// Issue 14: plain UDP queries for our names are answered from the
/// datagram (the fast path); TCP takes the full path through hickory. Both
/// must give the same answer, query by query: names in any case, every
/// type and class the table answers differently, NXDOMAIN and NODATA with
/// the zone's SOA, with and without EDNS, RD and CD set or not, with and
/// without an upstream (RA). The answers are also checked against the
/// table, so that two equal wrong answers fail too.
#[tokio::test]
async fn d1_udp_fast_answers_equal_the_full_paths_answers() {
    let names = [
        "in-ambient.httpbin.mesh.internal.",
        "IN-Ambient.HTTPBIN.mesh.INTERNAL.",
        "productpage.bookinfo.cluster.dev.",
        "in-ambient.httpbin.svc.cluster.local.",
        "nope.httpbin.mesh.internal.",
        "httpbin.mesh.internal.",
        "mesh.internal.",
        "cluster.prod.",
        "x.y.cluster.prod.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::ANY,
        RecordType::TXT,
        RecordType::MX,
    ];
    // One server without upstream (RA clear), one with an upstream that
    // is never asked (these names are ours; RA set).
    let (dead, _keep) = bind_pair().await;
    for upstream in [None, Some(dead.local_addr().unwrap())] {
        let proxy = Proxy::start(table(), upstream, Duration::from_millis(200)).await;
        let mut id = 0u16;
        for name in names {
            for rtype in types {
                for edns in [false, true] {
                    for cd in [false, true] {
                        id += 1;
                        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
                        message.metadata.recursion_desired = id.is_multiple_of(2);
                        message.metadata.checking_disabled = cd;
                        message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
                        if edns {
                            let mut opt = Edns::new();
                            opt.set_max_payload(1232);
                            message.set_edns(opt);
                        }
                        let request = message.to_vec().unwrap();
                        let fast = udp_exchange(proxy.addr(), &request).await;
                        let full = tcp_exchange(proxy.addr(), &request).await;
                        let what = format!("{name} {rtype} edns={edns} cd={cd} {upstream:?}");
                        assert_eq!(fast, full, "{what}");
                        assert_eq!(fast.metadata.id, id, "{what}");
                        assert!(fast.metadata.authoritative, "{what}");
                        assert_eq!(
                            fast.metadata.recursion_available,
                            upstream.is_some(),
                            "{what}"
                        );
                        assert_eq!(fast.queries[0].name().to_ascii(), name, "{what}");
                        let lower = name.to_ascii_lowercase();
                        let lower = lower.trim_end_matches('.');
                        let expected: Vec<IpAddr> = table()
                            .names
                            .get(lower)
                            .map(|a| {
                                a.iter()
                                    .copied()
                                    .filter(|ip| match rtype {
                                        RecordType::A => ip.is_ipv4(),
                                        RecordType::AAAA => ip.is_ipv6(),
                                        RecordType::ANY => true,
                                        _ => false,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let got: Vec<IpAddr> = fast
                            .answers
                            .iter()
                            .map(|r| match &r.data {
                                RData::A(a) => IpAddr::V4(a.0),
                                RData::AAAA(a) => IpAddr::V6(a.0),
                                other => panic!("{what}: {other:?}"),
                            })
                            .collect();
                        assert_eq!(got, expected, "{what}");
                        assert!(fast.answers.iter().all(|r| r.ttl == TTL), "{what}");
                        let known = table().names.contains_key(lower)
                            || ["httpbin.mesh.internal", "mesh.internal", "cluster.prod"]
                                .contains(&lower);
                        let code = if known {
                            ResponseCode::NoError
                        } else {
                            ResponseCode::NXDomain
                        };
                        assert_eq!(fast.metadata.response_code, code, "{what}");
                        // The negative answers of our zones carry their SOA.
                        let in_zone = !lower.ends_with("svc.cluster.local");
                        assert_eq!(
                            fast.authorities.len(),
                            usize::from(expected.is_empty() && in_zone),
                            "{what}"
                        );
                        assert_eq!(fast.edns.is_some(), edns, "{what}");
                    }
                }
            }
        }
        assert_eq!(proxy.count("forwarded"), 0);
    }
}
