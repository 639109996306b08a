//! L7 routing across clusters (SPEC section 11, seed 001), through the real
//! proxy, gateways and controllers with real HTTP backends: the behaviours
//! the Gateway API's mesh conformance tests cover, in our own tests (the
//! suite needs a live cluster), plus Hostname backends to global services
//! of another cluster, with failover.
//!
//! Layout (as seed 001): namespace `bookinfo`; `reviews-v1` served in
//! cluster1, `reviews-v2` in cluster2, `ratings` in both, the logical
//! `reviews` in cluster1 with the routes; every Service global, port 8000
//! named `http` (so L7, L6).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshpeer::controller::View;
use serde_json::{Value, json};
use support::{Mesh, WITHIN, namespace, service_with};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const GLOBAL: (&str, &str) = ("solo.io/service-scope", "global");
const REVIEWS: &str = "reviews.bookinfo.mesh.internal";

/// An HTTP backend (HTTP/1.1 and HTTP/2 prior knowledge) answering with
/// its name, the request's method, path, query, Host, headers and body as
/// JSON.
/// `/status/N` answers N; `/flaky` answers 503 every other time;
/// `/delay/MS` answers after MS milliseconds.
struct HttpBackend {
    task: Option<JoinHandle<()>>,
    addr: SocketAddr,
    name: String,
    hits: Arc<AtomicUsize>,
    /// The body of the last request it got.
    last_body: Arc<std::sync::Mutex<String>>,
}

impl HttpBackend {
    async fn start(addr: SocketAddr, name: &str) -> HttpBackend {
        let mut b = HttpBackend {
            task: None,
            addr,
            name: name.to_owned(),
            hits: Arc::default(),
            last_body: Arc::default(),
        };
        b.resume().await;
        b
    }

    async fn resume(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let (name, hits) = (self.name.clone(), Arc::clone(&self.hits));
        let last_body = Arc::clone(&self.last_body);
        let flaky = Arc::new(AtomicUsize::new(0));
        self.task = Some(tokio::spawn(async move {
            // The connections end with the backend, as a pod's do.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                while conns.try_join_next().is_some() {}
                let (name, hits, flaky) = (name.clone(), Arc::clone(&hits), Arc::clone(&flaky));
                let last_body = Arc::clone(&last_body);
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (name, hits, flaky) =
                            (name.clone(), Arc::clone(&hits), Arc::clone(&flaky));
                        let last_body = Arc::clone(&last_body);
                        async move {
                            hits.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, Infallible>(answer(&name, req, &flaky, &last_body).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(conn), svc)
                        .await;
                });
            }
        }));
    }

    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn answer(
    name: &str,
    req: Request<Incoming>,
    flaky: &AtomicUsize,
    last_body: &std::sync::Mutex<String>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let mut status = 200;
    if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(400);
    }
    if path == "/flaky" && flaky.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
        status = 503;
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.to_string())
            .or_default()
            .push(v.to_str().unwrap_or_default().to_owned());
    }
    let (parts, body) = req.into_parts();
    let got = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let got = String::from_utf8_lossy(&got).into_owned();
    last_body.lock().unwrap().clone_from(&got);
    let body = json!({
        "name": name,
        "method": parts.method.as_str(),
        "path": path,
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": got,
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-backend", name)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// An answer as the client saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

impl Answer {
    fn name(&self) -> &str {
        self.body["name"].as_str().unwrap_or_default()
    }

    /// A header the backend received (lower-case name), all its values.
    fn sent(&self, header: &str) -> Vec<String> {
        self.body["headers"][header]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client(h2: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http()
}

/// `METHOD http://HOST:PORT{path}` sent to `vip` with `headers`.
async fn send(
    c: &HttpClient,
    vip: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{vip}{path}"))
        .header("host", format!("{REVIEWS}:8000"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let fut = c.request(req.body(Full::new(Bytes::new())).unwrap());
    let res = tokio::time::timeout(WITHIN, fut)
        .await
        .expect("no answer within the deadline")
        .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(c: &HttpClient, vip: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(c, vip, "GET", path, headers).await
}

/// The mesh of seed 001, with backends; `reviews` routes as `route` says.
struct Bookinfo {
    mesh: Mesh,
    backends: BTreeMap<String, HttpBackend>,
}

impl Bookinfo {
    async fn start() -> Bookinfo {
        Bookinfo::start_with(Mesh::new(&["cluster1", "cluster2"])).await
    }

    async fn start_with(mut mesh: Mesh) -> Bookinfo {
        mesh.start().await;
        mesh.start_dataplane().await;
        mesh.link_all().await;
        let mut backends = BTreeMap::new();
        // (cluster, service, pod number)
        for (cluster, svc, n) in [
            ("cluster1", "reviews", 1),
            ("cluster1", "reviews-v1", 2),
            ("cluster2", "reviews-v2", 1),
            ("cluster1", "ratings", 3),
            ("cluster2", "ratings", 3),
        ] {
            let c = mesh.cluster(cluster);
            let ip = c.pod_ip(n);
            c.write("bookinfo-ns.yaml", &namespace("bookinfo", &[]));
            c.write(
                &format!("{svc}.yaml"),
                &service_with(
                    "bookinfo",
                    svc,
                    &[GLOBAL],
                    &[],
                    &[(&format!("{svc}-0"), &ip, &[])],
                ),
            );
            let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
            let name = format!("{svc}/{cluster}");
            backends.insert(name.clone(), HttpBackend::start(addr, &name).await);
        }
        mesh.cluster("cluster2").wait_caller("cluster1").await;
        mesh.cluster("cluster1").wait_caller("cluster2").await;
        let c1 = mesh.cluster("cluster1");
        c1.wait_route("reviews-v2.bookinfo.mesh.internal", 8000, &["cluster2"])
            .await;
        c1.wait_route(
            "ratings.bookinfo.mesh.internal",
            8000,
            &["cluster1", "cluster2"],
        )
        .await;
        c1.wait_route(REVIEWS, 8000, &["cluster1"]).await;
        Bookinfo { mesh, backends }
    }

    /// Writes the routes (YAML documents) into cluster1 and waits until
    /// cluster1's proxy holds `rules` rules for reviews:8000; its VIP.
    async fn route(&self, yaml: &str, rules: usize) -> SocketAddr {
        let c1 = self.mesh.cluster("cluster1");
        c1.write("routes.yaml", yaml);
        let mut state = c1.proxy().state.clone();
        let ready = |s: &Arc<meshpeer_dataplane::state::DataplaneState>| {
            s.feed
                .catalog
                .routes
                .iter()
                .find(|t| t.host == REVIEWS && t.port == 8000)
                .is_some_and(|t| t.rules.len() == rules)
        };
        tokio::time::timeout(WITHIN, state.wait_for(ready))
            .await
            .unwrap_or_else(|_| {
                let v = c1.controller().current();
                panic!(
                    "cluster1's proxy never held {rules} rules for {REVIEWS}:8000; status {:#?}\ndiagnostics {:#?}",
                    v.catalog.route_status, v.catalog.diagnostics
                )
            })
            .unwrap();
        c1.wait_route(REVIEWS, 8000, &["cluster1"]).await
    }

    fn view(&self, cluster: &str) -> Arc<View> {
        self.mesh.cluster(cluster).controller().current()
    }
}

fn hostname_ref(svc: &str) -> String {
    format!(
        "{{group: networking.istio.io, kind: Hostname, name: {svc}.bookinfo.mesh.internal, port: 8000}}"
    )
}

/// Seed 001's route: `end-user: jason` -> v2 (cluster2), everyone else v1.
fn seed_route() -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: reviews, port: 8000}}]
  rules:
  - matches: [{{headers: [{{name: end-user, value: jason}}]}}]
    backendRefs: [{v2}]
  - backendRefs: [{v1}]
",
        v1 = hostname_ref("reviews-v1"),
        v2 = hostname_ref("reviews-v2")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_l2_l3_seed_001_a_header_sends_one_user_to_v2_in_the_other_cluster() {
    let b = Bookinfo::start().await;
    let vip = b.route(&seed_route(), 2).await;
    for h2 in [false, true] {
        let c = client(h2);
        let jason = get(&c, vip, "/", &[("end-user", "jason")]).await;
        assert_eq!(
            (jason.status, jason.name()),
            (200, "reviews-v2/cluster2"),
            "{jason:?}"
        );
        // The Host the client used goes along (HTTP/1.1 backend).
        assert_eq!(jason.sent("host"), [format!("{REVIEWS}:8000")]);
        let other = get(&c, vip, "/", &[("end-user", "alice")]).await;
        assert_eq!((other.status, other.name()), (200, "reviews-v1/cluster1"));
        let none = get(&c, vip, "/", &[]).await;
        assert_eq!(none.name(), "reviews-v1/cluster1");
    }
    // Rules apply only to the parent's frontend: reviews-v1 called
    // directly is not routed, whatever the header.
    let v1 = b
        .mesh
        .cluster("cluster1")
        .wait_route("reviews-v1.bookinfo.mesh.internal", 8000, &["cluster1"])
        .await;
    let direct = get(&client(false), v1, "/", &[("end-user", "jason")]).await;
    assert_eq!(direct.name(), "reviews-v1/cluster1");
    // One keep-alive connection, requests routed one by one.
    let c = client(false);
    for i in 0..10 {
        let who = if i % 2 == 0 { "jason" } else { "bob" };
        let a = get(&c, vip, "/", &[("end-user", who)]).await;
        let want = if who == "jason" {
            "reviews-v2/cluster2"
        } else {
            "reviews-v1/cluster1"
        };
        assert_eq!(a.name(), want);
    }
    // L1: the route is cluster1's; cluster2's clients of reviews reach the
    // logical Service's own pods at L4, whatever the header.
    let c2 = b.mesh.cluster("cluster2");
    let vip2 = c2.wait_route(REVIEWS, 8000, &["cluster1"]).await;
    let a = get(&c, vip2, "/", &[("end-user", "jason")]).await;
    assert_eq!(a.name(), "reviews/cluster1");
    assert!(b.view("cluster2").catalog.routes.is_empty());
    // L7: accepted, every backend resolves.
    let v = b.view("cluster1");
    let st = &v.catalog.route_status[0];
    assert_eq!(
        (st.namespace.as_str(), st.name.as_str()),
        ("bookinfo", "reviews")
    );
    assert_eq!(st.parents.len(), 1);
    assert_eq!(st.parents[0].controller_name, "meshpeer.io/mesh-controller");
    for t in ["Accepted", "ResolvedRefs"] {
        assert_eq!(st.condition(0, t).unwrap().status, "True", "{st:#?}");
    }
    // The Traffic view's flows (issue 16): the requests that went to v2,
    // from cluster1 to cluster2 (the seed's 2 + 5 of the keep-alive loop).
    let flows = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.contains("dataplane_flow_connections_total{")
                    && l.contains("reporter=\"proxy\"")
                    && l.contains("destination_cluster=\"cluster2\"")
                    && l.contains("service=\"reviews-v2.bookinfo.mesh.internal\"")
                    && l.contains("outcome=\"ok\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // L8: requests counted by destination cluster.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &b.mesh.cluster("cluster1").registry)
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("dataplane_http_requests_total{")
                && l.contains("destination_cluster=\"cluster2\"")
                && l.contains("status_class=\"2xx\"")),
        "{text}"
    );
    assert_eq!(flows(&text), 7.0, "{text}");
    b.mesh.shutdown().await;
}

/// An HTTPRoute on `reviews` with the given rules (YAML, indented as list
/// items under `rules:`).
fn route_named(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  parentRefs: [{{kind: Service, group: \"\", name: reviews, port: 8000}}]
  rules:
{rules}"
    )
}

fn to(svc: &str) -> String {
    format!("    backendRefs: [{}]\n", hostname_ref(svc))
}

/// A rule without matches (every request) to `svc`.
fn all_to(svc: &str) -> String {
    format!("  - backendRefs: [{}]\n", hostname_ref(svc))
}

/// This process's threads named `l7-loop-<i>`: (thread id, time on CPU in
/// ns, from the scheduler's statistics).
fn l7_loops() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !comm.starts_with("l7-loop-") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let ns = stat.split_whitespace().next().unwrap().parse().unwrap();
        out.push((dir.file_name().unwrap().to_string_lossy().into_owned(), ns));
    }
    out
}

/// L6: routed ports are served on the proxy's event loops (their threads
/// do the work), and with `--l7-workers 0` on the shared runtime, with the
/// same answers either way (seed 001's route, HTTP/1.1 and HTTP/2, a
/// backend in the other cluster over HBONE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_routed_ports_are_served_on_the_event_loops_or_without_them_on_the_shared_runtime() {
    for workers in [0, 3] {
        let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
        mesh.l7_workers = Some(workers);
        let b = Bookinfo::start_with(mesh).await;
        let vip = b.route(&seed_route(), 2).await;
        // Two proxies, `workers` loops each.
        let before = l7_loops();
        assert_eq!(before.len(), 2 * workers, "{before:?}");
        for h2 in [false, true] {
            let c = client(h2);
            for _ in 0..20 {
                let jason = get(&c, vip, "/", &[("end-user", "jason")]).await;
                assert_eq!((jason.status, jason.name()), (200, "reviews-v2/cluster2"));
                let other = get(&c, vip, "/", &[]).await;
                assert_eq!((other.status, other.name()), (200, "reviews-v1/cluster1"));
            }
        }
        if workers > 0 {
            let cpu = |loops: &[(String, u64)]| loops.iter().map(|(_, ns)| ns).sum::<u64>();
            let after = l7_loops();
            assert!(
                cpu(&after) > cpu(&before),
                "the loops did not serve the requests: {before:?} -> {after:?}"
            );
        }
        drop(b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l3_path_method_query_and_header_matches_in_gateway_api_precedence() {
    let b = Bookinfo::start().await;
    let rules = [
        (
            "  - matches: [{path: {type: PathPrefix, value: /v2}}]\n",
            "reviews-v2",
        ),
        // Listed after the prefix, still first: exact beats prefix.
        (
            "  - matches: [{path: {type: Exact, value: /v2/exact}}]\n",
            "ratings",
        ),
        (
            "  - matches: [{path: {type: RegularExpression, value: \"/re/[0-9]+\"}}]\n",
            "ratings",
        ),
        (
            "  - matches: [{path: {type: PathPrefix, value: /m}}]\n",
            "reviews-v1",
        ),
        // More specific (a method): first although listed later.
        (
            "  - matches: [{path: {type: PathPrefix, value: /m}, method: POST}]\n",
            "reviews-v2",
        ),
        (
            "  - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: version, value: two}]}]\n",
            "reviews-v2",
        ),
        (
            "  - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{type: RegularExpression, name: version, value: \"o.e\"}]}]\n",
            "reviews-v1",
        ),
        (
            "  - matches: [{path: {type: PathPrefix, value: /h}, headers: [{type: RegularExpression, name: x-user, value: \"adm.*\"}]}]\n",
            "reviews-v2",
        ),
        (
            "  - matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: x-user, value: bob}, {name: x-team, value: a}]}]\n",
            "ratings",
        ),
        (
            "  - matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: x-user, value: bob}]}]\n",
            "reviews-v1",
        ),
    ];
    let yaml: String = rules
        .iter()
        .map(|(m, svc)| format!("{m}{}", to(svc)))
        .collect();
    let vip = b.route(&route_named("reviews", &yaml), rules.len()).await;
    let c = client(false);
    /// (method, path, headers, the service that answers; none: 404)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case<'_>] = &[
        ("GET", "/v2", &[], Some("reviews-v2")),
        ("GET", "/v2/x/y", &[], Some("reviews-v2")),
        // Element-wise prefixes: /v2x is not under /v2.
        ("GET", "/v2x", &[], None),
        ("GET", "/v2/exact", &[], Some("ratings")),
        ("GET", "/re/123", &[], Some("ratings")),
        // Regular expressions match the whole path.
        ("GET", "/re/123/x", &[], None),
        ("GET", "/re/abc", &[], None),
        ("POST", "/m", &[], Some("reviews-v2")),
        ("GET", "/m", &[], Some("reviews-v1")),
        ("GET", "/q?version=two", &[], Some("reviews-v2")),
        ("GET", "/q?version=one", &[], Some("reviews-v1")),
        ("GET", "/q?version=three", &[], None),
        // Only the first parameter of a name counts.
        ("GET", "/q?version=two&version=one", &[], Some("reviews-v2")),
        ("GET", "/h", &[("x-user", "admin")], Some("reviews-v2")),
        // Header names match whatever their case.
        ("GET", "/h", &[("X-User", "bob")], Some("reviews-v1")),
        // More header matches first.
        (
            "GET",
            "/h",
            &[("x-user", "bob"), ("x-team", "a")],
            Some("ratings"),
        ),
        ("GET", "/h", &[("x-user", "carol")], None),
        ("GET", "/", &[], None),
    ];
    for (method, path, headers, want) in cases {
        let a = send(&c, vip, method, path, headers).await;
        match want {
            Some(svc) => {
                assert_eq!(a.status, 200, "{method} {path} {headers:?}: {a:?}");
                assert!(
                    a.name().starts_with(&format!("{svc}/")),
                    "{method} {path} {headers:?}: answered by {} instead of {svc}",
                    a.name()
                );
                // The path and query reach the backend unchanged.
                let (p, q) = path.split_once('?').unwrap_or((path, ""));
                assert_eq!(a.body["path"], *p);
                if !q.is_empty() {
                    assert_eq!(a.body["query"], q);
                }
            }
            None => assert_eq!(a.status, 404, "{method} {path} {headers:?}: {a:?}"),
        }
    }
    b.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_weights_split_1000_requests_within_binomial_bounds() {
    let b = Bookinfo::start().await;
    let rules = format!(
        "  - backendRefs:\n    - {}\n    - {}\n    - {}\n",
        hostname_ref("reviews-v1").replace('}', ", weight: 80}"),
        hostname_ref("reviews-v2").replace('}', ", weight: 20}"),
        hostname_ref("ratings").replace('}', ", weight: 0}"),
    );
    let vip = b.route(&route_named("reviews", &rules), 1).await;
    let c = client(false);
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    const N: usize = 1_000;
    for _ in 0..N {
        let a = get(&c, vip, "/", &[]).await;
        assert_eq!(a.status, 200);
        *count.entry(a.name().to_owned()).or_default() += 1;
    }
    // v2 is Binomial(1000, 0.2): mean 200, sd 12.6; 5 sd either side fails
    // a correct split once in ~1.7 million runs.
    let v2 = count.get("reviews-v2/cluster2").copied().unwrap_or(0);
    assert!((137..=263).contains(&v2), "{count:?}");
    assert_eq!(
        count.get("reviews-v1/cluster1").copied().unwrap_or(0),
        N - v2,
        "{count:?}"
    );
    assert!(
        !count.keys().any(|k| k.starts_with("ratings")),
        "weight 0 got requests: {count:?}"
    );
    b.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_request_and_response_headers_are_set_added_and_removed_per_rule_and_per_backend() {
    let b = Bookinfo::start().await;
    let rules = "  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: one}]
        add: [{name: x-add, value: two}]
        remove: [x-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-resp, value: 'yes'}]
        add: [{name: x-resp-add, value: more}]
        remove: [x-backend]
    backendRefs:
    - group: networking.istio.io
      kind: Hostname
      name: reviews-v2.bookinfo.mesh.internal
      port: 8000
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{name: x-backend-req, value: v2}]
";
    let vip = b.route(&route_named("reviews", rules), 1).await;
    for h2 in [false, true] {
        let a = get(
            &client(h2),
            vip,
            "/",
            &[
                ("x-set", "client"),
                ("x-add", "client"),
                ("x-remove", "gone"),
                ("x-keep", "kept"),
            ],
        )
        .await;
        assert_eq!(a.name(), "reviews-v2/cluster2");
        assert_eq!(a.sent("x-set"), ["one"]);
        assert_eq!(a.sent("x-add"), ["client", "two"]);
        assert!(a.sent("x-remove").is_empty());
        assert_eq!(a.sent("x-keep"), ["kept"]);
        assert_eq!(a.sent("x-backend-req"), ["v2"]);
        assert_eq!(a.headers["x-resp"], "yes");
        assert_eq!(a.headers["x-resp-add"], "more");
        assert!(a.headers.get("x-backend").is_none(), "{:?}", a.headers);
    }
    b.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_redirects_carry_status_scheme_hostname_port_and_path() {
    let b = Bookinfo::start().await;
    let redirect = |prefix: &str, spec: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {{{spec}}}}}]\n"
        )
    };
    let rules = [
        redirect("/r301", "statusCode: 301, hostname: example.com"),
        redirect("/r302", ""),
        redirect("/r303", "statusCode: 303, scheme: https"),
        redirect("/r307", "statusCode: 307, port: 8443"),
        redirect(
            "/r308",
            "statusCode: 308, path: {type: ReplaceFullPath, replaceFullPath: /full}",
        ),
        redirect(
            "/prefix",
            "path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}",
        ),
        redirect("/r80", "scheme: http, port: 80"),
        redirect(
            "/tls",
            "scheme: https, port: 8443, hostname: secure.example",
        ),
    ];
    let vip = b
        .route(&route_named("reviews", &rules.concat()), rules.len())
        .await;
    let c = client(false);
    let h = REVIEWS;
    let cases = [
        ("/r301/a", 301, "http://example.com:8000/r301/a".to_owned()),
        ("/r302", 302, format!("http://{h}:8000/r302")),
        ("/r303", 303, format!("https://{h}/r303")),
        ("/r307", 307, format!("http://{h}:8443/r307")),
        ("/r308/x?y=1", 308, format!("http://{h}:8000/full?y=1")),
        ("/prefix/x?y=1", 302, format!("http://{h}:8000/new/x?y=1")),
        ("/prefix", 302, format!("http://{h}:8000/new")),
        ("/r80", 302, format!("http://{h}/r80")),
        (
            "/tls/a",
            302,
            "https://secure.example:8443/tls/a".to_owned(),
        ),
    ];
    for (path, status, location) in cases {
        let a = get(&c, vip, path, &[]).await;
        assert_eq!(
            (a.status, a.location()),
            (status, location.as_str()),
            "{path}"
        );
    }
    // No backend was asked.
    assert!(
        b.backends
            .values()
            .all(|x| x.hits.load(Ordering::Relaxed) == 0)
    );
    b.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_url_rewrites_replace_the_path_and_the_host() {
    let b = Bookinfo::start().await;
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{hostname: rewritten.example, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}}}}}]
{v1}  - matches: [{{path: {{type: PathPrefix, value: /whole}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /replaced}}}}}}]
{v1}",
        v1 = to("reviews-v1")
    );
    let vip = b.route(&route_named("reviews", &rules), 2).await;
    let c = client(false);
    let a = get(&c, vip, "/old/page?x=1", &[]).await;
    assert_eq!((a.status, a.name()), (200, "reviews-v1/cluster1"));
    assert_eq!(
        (a.body["path"].as_str(), a.body["query"].as_str()),
        (Some("/new/page"), Some("x=1"))
    );
    assert_eq!(a.sent("host"), ["rewritten.example"]);
    let a = get(&c, vip, "/whole/anything", &[]).await;
    assert_eq!(a.body["path"], "/replaced");
    assert_eq!(a.sent("host"), [format!("{REVIEWS}:8000")]);
    b.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_a_hostname_backend_fails_over_to_another_cluster_as_a_connection_does() {
    let mut b = Bookinfo::start().await;
    let vip = b
        .route(&route_named("reviews", &all_to("ratings")), 1)
        .await;
    let c = client(false);
    // PreferNetwork: cluster1's own ratings while it answers.
    for _ in 0..5 {
        assert_eq!(get(&c, vip, "/", &[]).await.name(), "ratings/cluster1");
    }
    b.backends.get_mut("ratings/cluster1").unwrap().stop().await;
    // Every request still succeeds: a refused connection is retried on
    // the next tier, through cluster2's gateway (T6).
    for _ in 0..10 {
        let a = get(&c, vip, "/", &[]).await;
        assert_eq!((a.status, a.name()), (200, "ratings/cluster2"), "{a:?}");
    }
    b.backends
        .get_mut("ratings/cluster1")
        .unwrap()
        .resume()
        .await;
    b.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l5_timeouts_answer_504_and_requests_whose_body_can_be_sent_again_are_retried_on_503() {
    let b = Bookinfo::start().await;
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /delay}}}}]
    timeouts: {{backendRequest: 200ms, request: 1s}}
{v1}  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
{v1}",
        v1 = to("reviews-v1")
    );
    let vip = b.route(&route_named("reviews", &rules), 2).await;
    let c = client(false);
    let a = get(&c, vip, "/delay/5000", &[]).await;
    assert_eq!(a.status, 504, "{a:?}");
    let hits = &b.backends["reviews-v1/cluster1"].hits;
    // The backend answers /flaky with 503 every other time: the retry
    // (L5, 2 by default) gets the 200.
    for _ in 0..5 {
        let before = hits.load(Ordering::Relaxed);
        let a = get(&c, vip, "/flaky", &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(hits.load(Ordering::Relaxed) - before, 2);
    }
    // Always 503: three attempts, then the backend's 503.
    let before = hits.load(Ordering::Relaxed);
    let a = get(&c, vip, "/status/503", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.name(), "reviews-v1/cluster1");
    assert_eq!(hits.load(Ordering::Relaxed) - before, 3);
    // A body of a declared length up to 64 KiB is read whole first, so it
    // is sent again, whole, each time.
    let post = |path: &str, body: Bytes| {
        Request::builder()
            .method("POST")
            .uri(format!("http://{vip}{path}"))
            .body(Full::new(body))
            .unwrap()
    };
    let before = hits.load(Ordering::Relaxed);
    let res = c
        .request(post("/flaky", Bytes::from_static(b"payload")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echoed: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echoed["body"], "payload", "{echoed}");
    assert_eq!(hits.load(Ordering::Relaxed) - before, 2);
    // A longer body is streamed once: one attempt.
    let before = hits.load(Ordering::Relaxed);
    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    let res = c.request(post("/status/503", big)).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(hits.load(Ordering::Relaxed) - before, 1);
    assert_eq!(
        b.backends["reviews-v1/cluster1"]
            .last_body
            .lock()
            .unwrap()
            .len(),
        100 * 1024
    );
    // So is a body of no declared length (chunked): one attempt.
    let before = hits.load(Ordering::Relaxed);
    let head = raw_exchange(
        vip,
        &format!(
            "POST /status/503 HTTP/1.1\r\nHost: {REVIEWS}:8000\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7\r\npayload\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(hits.load(Ordering::Relaxed) - before, 1);
    b.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_route_status_says_accepted_unresolved_and_not_accepted_and_conflicts_go_to_the_first_route()
 {
    let b = Bookinfo::start().await;
    let other_ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n";
    let routes = [
        route_named(
            "a-good",
            &format!(
                "  - matches: [{{path: {{value: /same}}}}]\n{}",
                to("reviews-v1")
            ),
        ),
        // The same match in a route whose name sorts later: a-good wins.
        route_named(
            "b-later",
            &format!(
                "  - matches: [{{path: {{value: /same}}}}]\n{}",
                to("reviews-v2")
            ),
        ),
        route_named(
            "dangling",
            "  - matches: [{path: {value: /dangling}}]\n    backendRefs: [{group: networking.istio.io, kind: Hostname, name: nope.bookinfo.mesh.internal, port: 8000}]\n",
        ),
        route_named("orphan", &all_to("reviews-v1"))
            .replace("name: reviews, port", "name: nothere, port"),
        route_named("foreign", &all_to("reviews-v1"))
            .replace("namespace: bookinfo}", "namespace: other}")
            .replace(
                "name: reviews, port",
                "name: reviews, namespace: bookinfo, port",
            ),
        route_named("ingress", &all_to("reviews-v1")).replace(
            "{kind: Service, group: \"\", name: reviews, port: 8000}",
            "{name: my-gateway}",
        ),
    ];
    let yaml = format!("{other_ns}---\n{}", routes.join("---\n"));
    // Rules on reviews:8000: a-good, b-later, dangling.
    let vip = b.route(&yaml, 3).await;
    let c = client(false);
    assert_eq!(
        get(&c, vip, "/same", &[]).await.name(),
        "reviews-v1/cluster1"
    );
    let a = get(&c, vip, "/dangling", &[]).await;
    assert_eq!(a.status, 500, "{a:?}");

    let v = b.view("cluster1");
    let status = |name: &str| {
        v.catalog
            .route_status
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no status for {name}: {:#?}", v.catalog.route_status))
    };
    let cond = |name: &str, t: &str| {
        let c = status(name).condition(0, t).unwrap();
        (c.status.clone(), c.reason.clone().unwrap_or_default())
    };
    let yes = |r: &str| ("True".to_owned(), r.to_owned());
    let no = |r: &str| ("False".to_owned(), r.to_owned());
    assert_eq!(cond("a-good", "Accepted"), yes("Accepted"));
    assert_eq!(cond("a-good", "ResolvedRefs"), yes("ResolvedRefs"));
    assert_eq!(cond("b-later", "Accepted"), yes("Accepted"));
    // The loser of the conflict says so (a condition of meshpeer's own,
    // and a finding).
    assert_eq!(
        cond("b-later", "meshpeer.io/Conflicted"),
        yes("ShadowedRules")
    );
    assert!(
        status("a-good")
            .condition(0, "meshpeer.io/Conflicted")
            .is_none()
    );
    let msg = status("b-later")
        .condition(0, "meshpeer.io/Conflicted")
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(msg.contains("spec.rules[0] never applies to reviews.bookinfo.mesh.internal:8000: rule 0 of route bookinfo/a-good"), "{msg}");
    assert_eq!(cond("dangling", "Accepted"), yes("Accepted"));
    assert_eq!(cond("dangling", "ResolvedRefs"), no("BackendNotFound"));
    assert_eq!(cond("orphan", "Accepted"), no("NoMatchingParent"));
    assert_eq!(cond("foreign", "Accepted"), no("NotAllowedByParent"));
    // A Gateway parent is another controller's: no status from meshpeer.
    assert!(v.catalog.route_status.iter().all(|s| s.name != "ingress"));
    // Each problem is a finding naming the route and the rule.
    let finding = |name: &str, rule: meshpeer_model::Rule| {
        v.catalog
            .diagnostics
            .iter()
            .any(|d| d.object.name == name && d.rule == rule)
    };
    assert!(finding("dangling", meshpeer_model::Rule::L2));
    assert!(finding("b-later", meshpeer_model::Rule::L3));
    assert!(finding("orphan", meshpeer_model::Rule::L7));
    assert!(finding("foreign", meshpeer_model::Rule::L7));
    b.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_request_mirrors_send_a_copy_whose_answer_is_dropped() {
    let b = Bookinfo::start().await;
    let rules = format!(
        "  - filters: [{{type: RequestMirror, requestMirror: {{backendRef: {mirror}}}}}]
{v1}",
        mirror = hostname_ref("ratings"),
        v1 = to("reviews-v1"),
    );
    let vip = b.route(&route_named("reviews", &rules), 1).await;
    let c = client(false);
    for _ in 0..20 {
        let a = get(&c, vip, "/status/201", &[("x-copy", "me")]).await;
        // The client gets the backend's answer, not the mirror's.
        assert_eq!((a.status, a.name()), (201, "reviews-v1/cluster1"));
    }
    let mirrored = &b.backends["ratings/cluster1"].hits;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while mirrored.load(Ordering::Relaxed) < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 20 requests mirrored",
            mirrored.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A request with a body (of a declared length up to 64 KiB): the
    // mirror gets the same body. On a new connection, so that the proxy's
    // own exchange reads the body before it finds the mirror and hands
    // the connection, head and body, to hyper (L6).
    let c = client(false);
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{vip}/status/201"))
        .header("host", format!("{REVIEWS}:8000"))
        .body(Full::new(Bytes::from_static(b"the same body")))
        .unwrap();
    let res = c.request(req).await.unwrap();
    assert_eq!(res.status(), 201);
    let mirror = &b.backends["ratings/cluster1"];
    while mirror.hits.load(Ordering::Relaxed) < 21
        || *mirror.last_body.lock().unwrap() != "the same body"
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mirror never got the body; it got {:?}",
            mirror.last_body.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.mesh.shutdown().await;
}

/// A global Service `name` in `bookinfo` with the given ports
/// `(name, port, targetPort)` and one ready pod at `ip`.
fn service_ports(name: &str, ports: &[(&str, u16, u16)], ip: &str) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|(n, p, t)| format!("{{name: {n}, port: {p}, targetPort: {t}}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bookinfo, labels: {{solo.io/service-scope: global}}}}\n\
         spec:\n  selector: {{app: {name}}}\n  ports: [{}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-0, namespace: bookinfo, labels: {{app: {name}}}}}\n\
         spec:\n  containers: [{{name: app, image: x}}]\n\
         status:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n",
        ports.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_only_routed_http_ports_are_parsed_and_http2_backends_get_http2() {
    let b = Bookinfo::start().await;
    let (c1, c2) = (b.mesh.cluster("cluster1"), b.mesh.cluster("cluster2"));
    // cluster2: an HTTP/2 service (port name http2); cluster1: a Service
    // with an HTTP port and a TCP port.
    let ip2 = c2.pod_ip(7);
    c2.write(
        "h2.yaml",
        &service_ports("h2svc", &[("http2", 9000, 9090)], &ip2),
    );
    let _h2 = HttpBackend::start(format!("{ip2}:9090").parse().unwrap(), "h2svc/cluster2").await;
    let ip1 = c1.pod_ip(7);
    c1.write(
        "mixed.yaml",
        &service_ports(
            "mixed",
            &[("http", 8000, 8080), ("tcp-echo", 9000, 9090)],
            &ip1,
        ),
    );
    let _http = HttpBackend::start(format!("{ip1}:8080").parse().unwrap(), "mixed/cluster1").await;
    let _echo =
        support::Backend::start(format!("{ip1}:9090").parse().unwrap(), "echo/cluster1").await;
    c1.wait_route("h2svc.bookinfo.mesh.internal", 9000, &["cluster2"])
        .await;
    let mixed = "mixed.bookinfo.mesh.internal";
    let http_vip = c1.wait_route(mixed, 8000, &["cluster1"]).await;
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mixed, namespace: bookinfo}
spec:
  parentRefs: [{group: \"\", kind: Service, name: mixed}]
  rules:
  - backendRefs: [{group: networking.istio.io, kind: Hostname, name: h2svc.bookinfo.mesh.internal, port: 9000}]
";
    c1.write("mixed-route.yaml", route);
    let mut state = c1.proxy().state.clone();
    tokio::time::timeout(
        WITHIN,
        state.wait_for(|s| s.feed.catalog.routes.iter().any(|t| t.host == mixed)),
    )
    .await
    .unwrap()
    .unwrap();
    // Only the HTTP port got a table; the TCP port is not a frontend.
    let tables: Vec<u16> = state
        .borrow()
        .feed
        .catalog
        .routes
        .iter()
        .filter(|t| t.host == mixed)
        .map(|t| t.port)
        .collect();
    assert_eq!(tables, [8000]);
    let c = client(false);
    let req = |vip: SocketAddr| {
        let c = c.clone();
        async move {
            let res = c
                .request(
                    Request::builder()
                        .uri(format!("http://{vip}/"))
                        .header("host", format!("{mixed}:8000"))
                        .header("connection", "keep-alive, x-hop")
                        .header("x-hop", "1")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&body).unwrap()
        }
    };
    // Routed: HTTP/2 to the backend, the client's Host as
    // x-forwarded-host, connection-level headers dropped.
    let a = req(http_vip).await;
    assert_eq!(a["name"], "h2svc/cluster2", "{a}");
    assert_eq!(a["version"], "HTTP/2.0");
    assert_eq!(a["headers"]["x-forwarded-host"][0], format!("{mixed}:8000"));
    assert!(a["headers"].get("x-hop").is_none(), "{a}");
    // The TCP port of the same service stays a byte stream.
    let echo_vip = SocketAddr::new(http_vip.ip(), 9000);
    assert_eq!(support::ask(echo_vip).await.unwrap(), "echo/cluster1");
    // An HTTP port without a route is not parsed: every header arrives as
    // the client sent it.
    let v1 = c1
        .wait_route("reviews-v1.bookinfo.mesh.internal", 8000, &["cluster1"])
        .await;
    let a = req(v1).await;
    assert_eq!(a["name"], "reviews-v1/cluster1");
    assert_eq!(a["headers"]["x-hop"][0], "1");
    b.mesh.shutdown().await;
}

/// A Service backend that is not global goes to its ClusterIP, dialled as
/// any endpoint is: under the endpoint policy (P5). A tenant's Service
/// whose ClusterIP is an address the proxy may not dial (here loopback
/// outside the pods' range) gets 503, and nothing there is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_p5_service_backends_dial_their_cluster_ip_under_the_endpoint_policy() {
    let b = Bookinfo::start().await;
    let c1 = b.mesh.cluster("cluster1");
    let octet = c1.pod_ip(1).split('.').nth(1).unwrap().to_owned();
    // Two local Services, not global: one whose ClusterIP is in the pods'
    // range (allowed), one outside it.
    let allowed = format!("127.{octet}.200.40");
    let refused = format!("127.{octet}.201.40");
    let local = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bookinfo}}\n\
             spec:\n  clusterIP: {ip}\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 8000, targetPort: 8080}}]\n"
        )
    };
    c1.write(
        "local.yaml",
        &format!(
            "{}---\n{}",
            local("in-range", &allowed),
            local("outside", &refused)
        ),
    );
    let _in_range =
        HttpBackend::start(format!("{allowed}:8000").parse().unwrap(), "in-range").await;
    let outside = HttpBackend::start(format!("{refused}:8000").parse().unwrap(), "outside").await;
    let rules = "  - matches: [{path: {value: /in}}]\n    backendRefs: [{name: in-range, port: 8000}]\n\
                 \x20 - matches: [{path: {value: /out}}]\n    backendRefs: [{name: outside, port: 8000}]\n";
    let vip = b.route(&route_named("reviews", rules), 2).await;
    let c = client(false);
    let a = get(&c, vip, "/in", &[]).await;
    assert_eq!((a.status, a.name()), (200, "in-range"), "{a:?}");
    let a = get(&c, vip, "/out", &[]).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert!(
        a.body
            .as_str()
            .unwrap_or_default()
            .contains("not dialled: loopback"),
        "{a:?}"
    );
    assert_eq!(outside.hits.load(Ordering::Relaxed), 0);
    b.mesh.shutdown().await;
}

/// Waits until the peer closes `s` (EOF or reset), failing after `WITHIN`;
/// what it sent before closing.
async fn closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the proxy kept the connection open; it sent {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// B5 on L7 ports: a client that sends no request head, part of one, or
/// part of HTTP/2's preface is closed once the header timeout passes; a
/// client that sends its request in time is answered, and its kept-alive
/// connection is closed when it then idles as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b5_l7_clients_that_send_no_whole_request_head_in_time_are_closed() {
    use tokio::io::AsyncWriteExt;
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.header_timeout = Some(Duration::from_millis(500));
    let b = Bookinfo::start_with(mesh).await;
    let vip = b.route(&seed_route(), 2).await;
    let connect = || tokio::net::TcpStream::connect(vip);
    let mut silent = connect().await.unwrap();
    let mut partial = connect().await.unwrap();
    partial
        .write_all(format!("GET / HTTP/1.1\r\nHost: {REVIEWS}\r\nend-user:").as_bytes())
        .await
        .unwrap();
    let mut preface = connect().await.unwrap();
    preface.write_all(b"PRI * HTTP/2").await.unwrap();
    let mut served = connect().await.unwrap();
    served
        .write_all(format!("GET / HTTP/1.1\r\nHost: {REVIEWS}:8000\r\n\r\n").as_bytes())
        .await
        .unwrap();
    for (what, s) in [
        ("silent", &mut silent),
        ("partial head", &mut partial),
        ("partial preface", &mut preface),
    ] {
        let got = closed(s).await;
        assert!(
            !String::from_utf8_lossy(&got).contains("200 OK"),
            "{what}: {got:?}"
        );
    }
    // Answered (by v1 in cluster1, seed 001's default rule), then closed
    // once idle.
    let got = String::from_utf8_lossy(&closed(&mut served).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(got.contains("reviews-v1/cluster1"), "{got}");
}

/// B5 on L7 ports: a client that begins a request body and stops is
/// answered 408 once the body timeout passes, and its connection closed,
/// whether the body was to be read whole (a declared length up to 64 KiB),
/// streamed (a longer one) or chunked; a client that pauses for less than
/// the timeout between pieces is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b5_l7_a_client_that_stops_sending_its_request_body_is_answered_408_and_closed() {
    use tokio::io::AsyncWriteExt;
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.body_timeout = Some(Duration::from_millis(800));
    let b = Bookinfo::start_with(mesh).await;
    let vip = b.route(&seed_route(), 2).await;
    let head = |more: &str| format!("POST / HTTP/1.1\r\nHost: {REVIEWS}:8000\r\n{more}\r\n");
    let stalls = [
        ("read whole", head("Content-Length: 10\r\n") + "abc"),
        (
            "streamed",
            head("Content-Length: 200000\r\n") + &"x".repeat(1000),
        ),
        (
            "chunked",
            head("Transfer-Encoding: chunked\r\n") + "3\r\nabc\r\n",
        ),
    ];
    let mut stalled = Vec::new();
    for (what, bytes) in &stalls {
        let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
        s.write_all(bytes.as_bytes()).await.unwrap();
        stalled.push((what, s));
    }
    for (what, s) in &mut stalled {
        let got = String::from_utf8_lossy(&closed(s).await).into_owned();
        assert!(got.starts_with("HTTP/1.1 408"), "{what}: {got}");
        assert!(
            got.contains("no byte of the request body for 800ms"),
            "{what}: {got}"
        );
    }
    // Pauses shorter than the timeout: each piece starts the clock again.
    let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
    s.write_all(head("Content-Length: 9\r\nConnection: close\r\n").as_bytes())
        .await
        .unwrap();
    for piece in ["pay", "loa", "d!!"] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(piece.as_bytes()).await.unwrap();
    }
    let got = String::from_utf8_lossy(&closed(&mut s).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(got.contains("payloa"), "{got}");
    b.mesh.shutdown().await;
}

/// Sends `request` as written on a new connection to `vip`; the answer's
/// status line and headers.
async fn raw_exchange(vip: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WITHIN, read)
        .await
        .expect("no answer within the deadline");
    String::from_utf8_lossy(&got).into_owned()
}

/// The value of a counter in cluster1's proxy metrics: the sum of the
/// samples whose line starts with `series` (a name, and labels if given).
fn counter(b: &Bookinfo, series: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &b.mesh.cluster("cluster1").registry)
        .unwrap();
    text.lines()
        .filter(|l| l.contains(series) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One HTTP/1.1 answer read from `s` (`more` holds bytes read past the
/// previous one): its head, and its body (framed by Content-Length, else
/// until the connection closes); `None` once the connection has closed.
async fn read_answer(
    s: &mut tokio::net::TcpStream,
    more: &mut Vec<u8>,
) -> Option<(String, String)> {
    use tokio::io::AsyncReadExt;
    let fill = async |s: &mut tokio::net::TcpStream, more: &mut Vec<u8>| -> bool {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(WITHIN, s.read(&mut buf))
            .await
            .expect("no answer within the deadline")
            .unwrap_or(0);
        more.extend_from_slice(&buf[..n]);
        n > 0
    };
    let end = loop {
        if let Some(i) = more.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(s, more).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&more[..end]).into_owned();
    more.drain(..end);
    let length = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    match length {
        Some(n) => {
            while more.len() < n {
                assert!(fill(s, more).await, "the answer ended early: {head}");
            }
            let body = String::from_utf8_lossy(&more[..n]).into_owned();
            more.drain(..n);
            Some((head, body))
        }
        None if head.starts_with("HTTP/1.1 1") || head.contains(" 204 ") => {
            Some((head, String::new()))
        }
        None => {
            while fill(s, more).await {}
            Some((
                head,
                String::from_utf8_lossy(&std::mem::take(more)).into_owned(),
            ))
        }
    }
}

/// L6: HTTP/1.1 requests without a body, or with one of a declared length,
/// are exchanged by the proxy itself (counted), and a connection is handed
/// to hyper, its bytes read so far with it, at its first request that is
/// not such: a chunked body, HTTP/2's preface, HTTP/1.0; on one connection, requests before and after the
/// hand-over are answered in order, as are pipelined ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_http1_requests_without_a_body_are_exchanged_by_the_proxy_and_the_rest_handed_to_hyper()
{
    use tokio::io::AsyncWriteExt;
    let b = Bookinfo::start().await;
    let vip = b.route(&seed_route(), 2).await;
    let direct = || counter(&b, "http1_direct_requests_total");
    let handed = |why: &str| counter(&b, &format!("http1_handoffs_total{{reason=\"{why}\"}}"));
    assert_eq!(direct(), 0);

    let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
    let mut more = Vec::new();
    let host = format!("Host: {REVIEWS}:8000\r\n");
    let ask = async |s: &mut tokio::net::TcpStream, more: &mut Vec<u8>, req: String| {
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_answer(s, more).await.expect("an answer");
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (head, body)
    };
    let (head, body) = ask(
        &mut s,
        &mut more,
        format!("GET /one?x=1 HTTP/1.1\r\n{host}end-user: jason\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body["name"], "reviews-v2/cluster2");
    assert_eq!(
        (body["path"].as_str(), body["query"].as_str()),
        (Some("/one"), Some("x=1"))
    );
    let (_, body) = ask(
        &mut s,
        &mut more,
        format!("GET /two HTTP/1.1\r\n{host}\r\n"),
    )
    .await;
    assert_eq!(body["name"], "reviews-v1/cluster1");
    assert_eq!(direct(), 2);
    // A body of a declared length: read whole, sent with it.
    let (head, body) = ask(
        &mut s,
        &mut more,
        format!("POST /three HTTP/1.1\r\n{host}end-user: jason\r\nContent-Length: 5\r\n\r\nhello"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        (body["name"].as_str(), body["body"].as_str()),
        (Some("reviews-v2/cluster2"), Some("hello"))
    );
    assert_eq!(body["headers"]["content-length"], json!(["5"]));
    assert_eq!(direct(), 3);
    // A chunked body: hyper from here on, on the same connection.
    let (head, body) = ask(
        &mut s,
        &mut more,
        format!(
            "POST /four HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        (body["name"].as_str(), body["body"].as_str()),
        (Some("reviews-v1/cluster1"), Some("abc"))
    );
    assert_eq!(handed("body"), 1);
    let (_, body) = ask(
        &mut s,
        &mut more,
        format!("GET /five HTTP/1.1\r\n{host}\r\n"),
    )
    .await;
    assert_eq!(
        (body["name"].as_str(), body["path"].as_str()),
        (Some("reviews-v1/cluster1"), Some("/five"))
    );
    assert_eq!(direct(), 3, "hyper serves the connection once handed over");

    // Pipelined: answered in order, the last asks to close.
    let mut p = tokio::net::TcpStream::connect(vip).await.unwrap();
    p.write_all(
        format!(
            "GET /p1 HTTP/1.1\r\n{host}\r\nGET /p2 HTTP/1.1\r\n{host}end-user: jason\r\n\r\nGET /p3 HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut more = Vec::new();
    let mut got = Vec::new();
    while let Some((head, body)) = read_answer(&mut p, &mut more).await {
        let body: Value = serde_json::from_str(&body).unwrap();
        got.push((
            body["path"].as_str().unwrap().to_owned(),
            body["name"].as_str().unwrap().to_owned(),
        ));
        if got.len() == 3 {
            assert!(head.contains("connection: close\r\n"), "{head}");
        }
    }
    assert_eq!(
        got,
        [
            ("/p1", "reviews-v1/cluster1"),
            ("/p2", "reviews-v2/cluster2"),
            ("/p3", "reviews-v1/cluster1")
        ]
        .map(|(p, n)| (p.to_owned(), n.to_owned()))
    );
    assert_eq!(direct(), 6);

    // HTTP/2 and HTTP/1.0: hyper's from the first byte.
    let a = get(&client(true), vip, "/", &[]).await;
    assert_eq!((a.status, a.name()), (200, "reviews-v1/cluster1"));
    assert_eq!(handed("http2"), 1);
    let mut old = tokio::net::TcpStream::connect(vip).await.unwrap();
    let (head, body) = ask(
        &mut old,
        &mut Vec::new(),
        format!("GET /old HTTP/1.0\r\n{host}\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert_eq!(body["version"], "HTTP/1.1");
    assert_eq!(handed("version"), 1);
    assert_eq!(direct(), 6);
    b.mesh.shutdown().await;
}

/// B7, L6: request shapes that read two ways (two lengths, a length and
/// chunked, a folded line, a name some servers take for a framing header)
/// are refused or framed one way, never passed to a backend as a request
/// the client is not answered for: the backend counts exactly the
/// requests the client gets answers from it for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b7_request_smuggling_shapes_reach_no_backend_as_an_unanswered_request() {
    use tokio::io::AsyncWriteExt;
    let b = Bookinfo::start().await;
    let vip = b.route(&seed_route(), 2).await;
    let v1 = &b.backends["reviews-v1/cluster1"];
    let h = format!("Host: {REVIEWS}:8000\r\n");
    let smuggled = format!("GET /smuggled HTTP/1.1\r\n{h}\r\n");
    let cases = [
        (
            "two lengths",
            format!(
                "GET / HTTP/1.1\r\n{h}Content-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            Some(400),
        ),
        (
            "length and chunked",
            format!(
                "POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            None,
        ),
        (
            "chunked, then a length of 0",
            format!(
                "GET / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
            None,
        ),
        (
            "an underscore for a hyphen",
            format!(
                "GET / HTTP/1.1\r\n{h}Transfer_Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
            Some(400),
        ),
        (
            "a folded line",
            format!("GET / HTTP/1.1\r\n{h}X-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n{smuggled}"),
            Some(400),
        ),
        (
            "a space before the colon",
            format!(
                "GET / HTTP/1.1\r\n{h}Content-Length : {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            Some(400),
        ),
        (
            "a signed length",
            format!("GET / HTTP/1.1\r\n{h}Content-Length: +0\r\n\r\n{smuggled}"),
            Some(400),
        ),
    ];
    for (what, raw, first_status) in cases {
        let hits = v1.hits.load(Ordering::Relaxed);
        let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
        // A last request asks to close: every answer is read by then
        // (hyper closes a connection whose client half-closes).
        s.write_all(raw.as_bytes()).await.unwrap();
        s.write_all(format!("GET /last HTTP/1.1\r\n{h}Connection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut more = Vec::new();
        let mut answers = Vec::new();
        while let Some((head, body)) = read_answer(&mut s, &mut more).await {
            answers.push((head, body));
        }
        assert!(!answers.is_empty(), "{what}: no answer");
        if let Some(status) = first_status {
            assert!(
                answers[0].0.starts_with(&format!("HTTP/1.1 {status} ")),
                "{what}: {answers:?}"
            );
        }
        let from_backend = answers
            .iter()
            .filter(|(head, _)| head.contains("x-backend: reviews-v1/cluster1"))
            .count();
        assert_eq!(
            v1.hits.load(Ordering::Relaxed) - hits,
            from_backend,
            "{what}: the backend got a request the client was not answered for: {answers:?}"
        );
        for (_, body) in &answers {
            if body.contains("/smuggled") {
                // Only as a request of its own, answered as such.
                let v: Value = serde_json::from_str(body).unwrap();
                assert!(
                    v["path"] == "/smuggled"
                        || v["body"].as_str().unwrap_or_default().contains("/smuggled"),
                    "{what}: {body}"
                );
            }
        }
    }
    b.mesh.shutdown().await;
}

/// B7: a request head that is not HTTP/1.1 (a space in a header's name,
/// a folded line, a bad method token) is answered 400 by the proxy with a
/// text that says what is wrong and what is allowed, and the connection
/// closed; no backend gets anything, and the proxy counts it. A client
/// that goes on sending after it (B5) does not keep the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b7_a_request_head_that_is_not_http1_gets_a_400_saying_what_is_wrong() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Bookinfo::start().await;
    let vip = b.route(&seed_route(), 2).await;
    let v1 = &b.backends["reviews-v1/cluster1"];
    let h = format!("Host: {REVIEWS}:8000\r\n");
    let cases = [
        (
            format!("GET / HTTP/1.1\r\n{h}Bad Header: v\r\n\r\n"),
            "invalid header name",
        ),
        (
            format!("GET / HTTP/1.1\r\n{h}X-A: 1\r\n folded: 2\r\n\r\n"),
            "invalid header name",
        ),
        (format!("G(T / HTTP/1.1\r\n{h}\r\n"), "invalid token"),
    ];
    let refused = || counter(&b, "outcome=\"invalid_request\"");
    for (i, (raw, why)) in cases.iter().enumerate() {
        let hits = v1.hits.load(Ordering::Relaxed);
        let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        // Pipelined after it: never served.
        s.write_all(format!("GET /next HTTP/1.1\r\n{h}\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(WITHIN, s.read_to_end(&mut got))
            .await
            .expect("the connection was not closed")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(
            text.contains(&format!("the request is not valid HTTP/1.1: {why};")),
            "{text}"
        );
        assert!(text.contains("then header lines `Name: value`"), "{text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer: {text}");
        assert_eq!(v1.hits.load(Ordering::Relaxed), hits, "{text}");
        assert_eq!(refused(), i as u64 + 1);
    }

    // B5: a client that goes on sending after its bad head (a flood, or a
    // slow drip) does not keep the connection: it is closed once 64 KiB
    // more came or a second passed, and the 400 is read first.
    let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
    s.write_all(cases[0].0.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let flood = tokio::spawn(async move {
        let chunk = vec![b'x'; 4096];
        let mut sent = 0usize;
        while wr.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
            if sent > 64 << 20 {
                break;
            }
        }
        sent
    });
    let mut got = Vec::new();
    tokio::time::timeout(WITHIN, rd.read_to_end(&mut got))
        .await
        .expect("a flooding client kept its connection")
        .ok();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    let sent = tokio::time::timeout(WITHIN, flood)
        .await
        .expect("the flood was never refused")
        .unwrap();
    assert!(sent < 64 << 20, "the proxy read {sent} bytes after the 400");
    b.mesh.shutdown().await;
}

/// A body of 1 MiB, of lines that say where they are.
static BIG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let mut s = String::with_capacity(1 << 20);
    let mut i = 0;
    while s.len() < (1 << 20) - 16 {
        s.push_str(&format!("{i:015}\n"));
        i += 1;
    }
    s
});

/// A backend that answers as it is told by the request's path, over raw
/// HTTP/1.1: `/inject` with a second, unasked answer after its own;
/// `/both` with a length and chunked; `/conflict` with two lengths;
/// `/close` framed by closing; anything else plainly. It counts the
/// connections it accepts.
async fn raw_backend(addr: SocketAddr) -> (Arc<AtomicUsize>, JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind(addr).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).into_owned();
                    got.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let answer = match path.as_str() {
                        "/inject" => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst\
                                      HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Injected: yes\r\n\r\ninjected"
                            .to_owned(),
                        "/both" => "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_owned(),
                        "/conflict" => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_owned(),
                        "/close" => "HTTP/1.1 200 OK\r\n\r\nuntil the end".to_owned(),
                        "/big" => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}", BIG.len(), BIG.as_str()),
                        "/big-chunked" => {
                            let mut a = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned();
                            for piece in BIG.as_bytes().chunks(300_000) {
                                a.push_str(&format!("{:x}\r\n{}\r\n", piece.len(), std::str::from_utf8(piece).unwrap()));
                            }
                            a.push_str("0\r\n\r\n");
                            a
                        }
                        p => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{p}", p.len()),
                    };
                    if s.write_all(answer.as_bytes()).await.is_err() || path == "/close" {
                        return;
                    }
                }
            });
        }
    });
    (accepted, task)
}

/// B7, L6: a backend's answers are framed strictly on the proxy's own
/// exchange: bytes after an answer's end are never taken for the answer
/// to a later request (the connection is not used again), chunked framing
/// wins over a length, two lengths that disagree fail the request (503
/// once retried), an answer framed by closing is passed on and the
/// client's connection closed after it; a clean answer's connection is
/// used again, after long answers too (1 MiB, by length and chunked,
/// copied in pieces and whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b7_backend_answers_are_framed_strictly_and_a_connection_with_bytes_left_is_not_used_again()
{
    use tokio::io::AsyncWriteExt;
    // One event loop: one pool of backend connections.
    let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
    mesh.l7_workers = Some(1);
    let b = Bookinfo::start_with(mesh).await;
    let c1 = b.mesh.cluster("cluster1");
    let ip = c1.pod_ip(9);
    c1.write(
        "raw.yaml",
        &service_with("bookinfo", "raw", &[GLOBAL], &[], &[("raw-0", &ip, &[])]),
    );
    let (accepted, _task) = raw_backend(format!("{ip}:8080").parse().unwrap()).await;
    c1.wait_route("raw.bookinfo.mesh.internal", 8000, &["cluster1"])
        .await;
    let vip = b.route(&route_named("reviews", &all_to("raw")), 1).await;
    let h = format!("Host: {REVIEWS}:8000\r\n");
    let ask = async |path: &str| {
        let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\n{h}Connection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_answer(&mut s, &mut Vec::new())
            .await
            .expect("an answer")
    };
    let (head, body) = ask("/plain").await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "/plain");
    let (_, body) = ask("/again").await;
    assert_eq!(body, "/again");
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "a clean answer's connection is used again"
    );

    let (_, body) = ask("/inject").await;
    assert_eq!(body, "first");
    let (head, body) = ask("/next").await;
    assert_eq!(body, "/next", "{head}");
    assert!(!head.contains("X-Injected"), "{head}");
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        2,
        "bytes were left: a new connection"
    );

    // Long answers, copied in pieces, whole; the connection is used again
    // after each.
    let (head, body) = ask("/big").await;
    assert!(
        head.contains(&format!("content-length: {}\r\n", BIG.len())),
        "{head}"
    );
    assert!(
        body == *BIG,
        "a long answer came changed ({} bytes)",
        body.len()
    );
    let (head, body) = ask("/big-chunked").await;
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    let mut rest = body.as_str();
    let mut whole = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size, 16).unwrap();
        if n == 0 {
            break;
        }
        whole.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    assert!(
        whole == *BIG,
        "a long chunked answer came changed ({} bytes)",
        whole.len()
    );
    let (_, body) = ask("/after").await;
    assert_eq!(body, "/after");
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        2,
        "the connection was used again"
    );

    let (head, body) = ask("/both").await;
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n");
    let (head, body) = ask("/conflict").await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(body.contains("Content-Length headers disagree"), "{body}");
    let (head, body) = ask("/close").await;
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert_eq!(body, "until the end");
    b.mesh.shutdown().await;
}

/// L6: an answer the backend streams (a first event, the rest later) goes
/// on to the client as it comes through the proxy's own exchange: the
/// client has the first event while the backend still holds the rest, and
/// the backend sends the rest only once the client has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_a_streamed_answer_reaches_the_client_as_it_comes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Bookinfo::start_with(Mesh::new(&["cluster1", "cluster2"])).await;
    let c1 = b.mesh.cluster("cluster1");
    let ip = c1.pod_ip(9);
    c1.write(
        "stream.yaml",
        &service_with(
            "bookinfo",
            "stream",
            &[GLOBAL],
            &[],
            &[("stream-0", &ip, &[])],
        ),
    );
    let listener = TcpListener::bind(format!("{ip}:8080")).await.unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let _backend = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n",
                    )
                    .await;
                gate.notified().await;
                let _ = s.write_all(b"5\r\nlast\n\r\n0\r\n\r\n").await;
            });
        }
    });
    c1.wait_route("stream.bookinfo.mesh.internal", 8000, &["cluster1"])
        .await;
    let vip = b.route(&route_named("reviews", &all_to("stream")), 1).await;
    let direct = counter(&b, "http1_direct_requests_total");
    let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
    s.write_all(format!("GET /events HTTP/1.1\r\nHost: {REVIEWS}:8000\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let first = async {
        while !String::from_utf8_lossy(&got).contains("first\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WITHIN, first)
        .await
        .expect("the first event was held back until the answer's end");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    release.notify_one();
    let rest = async {
        while !String::from_utf8_lossy(&got).ends_with("0\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WITHIN, rest).await.expect("the rest");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("6\r\nfirst\n\r\n5\r\nlast\n\r\n0\r\n\r\n"),
        "{text}"
    );
    assert_eq!(
        counter(&b, "http1_direct_requests_total"),
        direct + 1,
        "the proxy's own exchange served it"
    );
    b.mesh.shutdown().await;
}

/// L6: the proxy's own HTTP/1.1 exchange answers as hyper does
/// (`--l7-http1 hyper`): the same statuses, backends, requests as the
/// backends get them, and answer headers, for matches, header edits,
/// retries on 503, unmatched requests, HEAD, a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_the_proxys_own_http1_exchange_answers_as_hyper_does() {
    let rules = "  - matches: [{path: {type: PathPrefix, value: /none}, headers: [{name: never, value: x}]}]
    backendRefs: [{group: networking.istio.io, kind: Hostname, name: reviews-v2.bookinfo.mesh.internal, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: one}]
        add: [{name: x-add, value: two}]
        remove: [x-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-resp, value: 'yes'}]
        remove: [content-type]
    backendRefs: [{group: networking.istio.io, kind: Hostname, name: reviews-v1.bookinfo.mesh.internal, port: 8000}]
";
    let mut seen = Vec::new();
    for hyper_only in [false, true] {
        let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
        mesh.l7_hyper_only = hyper_only;
        let b = Bookinfo::start_with(mesh).await;
        let vip = b.route(&route_named("reviews", rules), 2).await;
        let c = client(false);
        let mut answers = Vec::new();
        for (method, path, headers) in [
            (
                "GET",
                "/a?q=1&r=2",
                vec![
                    ("x-set", "client"),
                    ("x-add", "client"),
                    ("x-remove", "gone"),
                    ("connection", "x-private"),
                    ("x-private", "1"),
                ],
            ),
            ("GET", "/flaky", vec![]),
            ("GET", "/flaky", vec![]),
            ("GET", "/status/503", vec![]),
            ("DELETE", "/status/404", vec![]),
            ("HEAD", "/b", vec![]),
            ("OPTIONS", "/c", vec![("x-many", "1"), ("x-many", "2")]),
        ] {
            let a = send(&c, vip, method, path, &headers).await;
            let mut headers: Vec<(String, String)> = a
                .headers
                .iter()
                .filter(|(n, _)| *n != "date")
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
                .collect();
            headers.sort();
            answers.push((method, path, a.status, a.body.clone(), headers));
        }
        // A body of a declared length, declared twice.
        let mut raw = tokio::net::TcpStream::connect(vip).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut raw,
            format!(
                "POST /e?x=1 HTTP/1.1\r\nHost: {REVIEWS}:8000\r\nContent-Length: 7\r\ncontent-length: 7\r\nx-remove: 1\r\n\r\npayload"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let (head, body) = read_answer(&mut raw, &mut Vec::new()).await.unwrap();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
        let mut headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
            .filter(|(n, _)| n != "date")
            .collect();
        headers.sort();
        answers.push((
            "POST",
            "/e",
            status,
            serde_json::from_str(&body).unwrap(),
            headers,
        ));
        assert_eq!(
            counter(&b, "http1_direct_requests_total"),
            if hyper_only { 0 } else { 8 }
        );
        seen.push(answers);
        b.mesh.shutdown().await;
    }
    for (direct, hyper) in seen[0].iter().zip(&seen[1]) {
        assert_eq!(direct, hyper);
    }
}
