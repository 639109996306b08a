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
/// its name, the request's method, path, query, Host and headers as JSON.
/// `/status/N` answers N; `/flaky` answers 503 every other time;
/// `/delay/MS` answers after MS milliseconds.
struct HttpBackend {
    task: Option<JoinHandle<()>>,
    addr: SocketAddr,
    name: String,
    hits: Arc<AtomicUsize>,
}

impl HttpBackend {
    async fn start(addr: SocketAddr, name: &str) -> HttpBackend {
        let mut b = HttpBackend {
            task: None,
            addr,
            name: name.to_owned(),
            hits: Arc::default(),
        };
        b.resume().await;
        b
    }

    async fn resume(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let (name, hits) = (self.name.clone(), Arc::clone(&self.hits));
        let flaky = Arc::new(AtomicUsize::new(0));
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (name, hits, flaky) = (name.clone(), Arc::clone(&hits), Arc::clone(&flaky));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (name, hits, flaky) = (name.clone(), Arc::clone(&hits), Arc::clone(&flaky));
                        async move {
                            hits.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, Infallible>(answer(&name, req, &flaky).await)
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

async fn answer(name: &str, req: Request<Incoming>, flaky: &AtomicUsize) -> Response<Full<Bytes>> {
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
    let body = json!({
        "name": name,
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
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
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
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
async fn send(c: &HttpClient, vip: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
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
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
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
        let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
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
                &service_with("bookinfo", svc, &[GLOBAL], &[], &[(&format!("{svc}-0"), &ip, &[])]),
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
        c1.wait_route("ratings.bookinfo.mesh.internal", 8000, &["cluster1", "cluster2"])
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
    format!("{{group: networking.istio.io, kind: Hostname, name: {svc}.bookinfo.mesh.internal, port: 8000}}")
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
        assert_eq!((jason.status, jason.name()), (200, "reviews-v2/cluster2"), "{jason:?}");
        // The Host the client used goes along (HTTP/1.1 backend).
        assert_eq!(jason.sent("host"), [format!("{REVIEWS}:8000")]);
        let other = get(&c, vip, "/", &[("end-user", "alice")]).await;
        assert_eq!((other.status, other.name()), (200, "reviews-v1/cluster1"));
        let none = get(&c, vip, "/", &[]).await;
        assert_eq!(none.name(), "reviews-v1/cluster1");
    }
    // One keep-alive connection, requests routed one by one.
    let c = client(false);
    for i in 0..10 {
        let who = if i % 2 == 0 { "jason" } else { "bob" };
        let a = get(&c, vip, "/", &[("end-user", who)]).await;
        let want = if who == "jason" { "reviews-v2/cluster2" } else { "reviews-v1/cluster1" };
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
    assert_eq!((st.namespace.as_str(), st.name.as_str()), ("bookinfo", "reviews"));
    assert_eq!(st.parents.len(), 1);
    assert_eq!(st.parents[0].controller_name, "meshpeer.io/mesh-controller");
    for t in ["Accepted", "ResolvedRefs"] {
        assert_eq!(st.condition(0, t).unwrap().status, "True", "{st:#?}");
    }
    // L8: requests counted by destination cluster.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &b.mesh.cluster("cluster1").registry).unwrap();
    assert!(
        text.lines().any(|l| l.contains("dataplane_http_requests_total{")
            && l.contains("destination_cluster=\"cluster2\"")
            && l.contains("status_class=\"2xx\"")),
        "{text}"
    );
    b.mesh.shutdown().await;
}
