//! The real binary's data-plane roles: `meshpeer proxy` and `meshpeer
//! gateway` next to a `meshpeer controller` on one file-mode cluster folder
//! (SPEC D1, D2, D3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// The global service of these tests, and its one backend (the pod).
const NS: &str = "dpcli";
const NAME: &str = "echo-cli";
const POD_IP: &str = "127.1.42.5";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshpeer")
}

fn meshpeer(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run meshpeer")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A running `meshpeer` role, killed when dropped; its JSON log read line by line.
struct Proc {
    name: &'static str,
    child: Child,
    lines: Receiver<Value>,
    seen: Vec<Value>,
}

impl Proc {
    fn spawn(name: &'static str, args: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .args(["--log-format", "json"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start meshpeer");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str::<Value>(&line).unwrap_or(Value::String(line));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Proc {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// How many of the lines logged so far (those read, and those waiting
    /// to be) have a message that contains `text`.
    fn times_logged(&mut self, text: &str) -> usize {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
        self.seen
            .iter()
            .filter(|v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(text))
            })
            .count()
    }

    /// The first log line (from now on) whose message satisfies `pred`.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["fields"]["message"].as_str().is_some_and(&pred) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{} never logged {what}; its log:\n{}",
                        self.name,
                        self.log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{} exited ({:?}) before logging {what}; its log:\n{}",
                    self.name,
                    self.child.try_wait(),
                    self.log()
                ),
            }
        }
    }

    fn log(&self) -> String {
        self.seen
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The address of a controller's API, once it has logged it.
    fn api_address(&mut self) -> String {
        let up = self.wait_for("its API address", |m| {
            m == "API listening (status, catalog, metrics)"
        });
        Proc::field(&up, "address")
    }

    fn field(v: &Value, name: &str) -> String {
        v["fields"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no field {name} in {v}"))
            .to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shared root and the cacerts of `cluster`, made by `meshpeer certs`.
fn certs(tmp: &Path, cluster: &str) -> PathBuf {
    let root = tmp.join("root");
    let o = meshpeer(&["certs", "root-ca", "--out", s(&root)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = tmp.join(format!("cacerts-{cluster}"));
    let o = meshpeer(&[
        "certs",
        "cluster",
        cluster,
        "--root",
        s(&root),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Cluster `c1`'s folder: one global Service with one ready Pod at [`POD_IP`]
/// (port 8000 -> 8080).
fn cluster_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("c1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), "name: c1\nregion: r1\nzone: z1\n").unwrap();
    std::fs::write(
        dir.join("app.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata:\n  name: {NAME}\n  namespace: {NS}\n  labels:\n    solo.io/service-scope: global\n\
             spec:\n  selector: {{app: {NAME}}}\n  ports:\n  - {{name: tcp, port: 8000, targetPort: 8080}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: {NAME}-0\n  namespace: {NS}\n  labels: {{app: {NAME}}}\n\
             spec:\n  containers: [{{name: app, image: x}}]\n\
             status:\n  phase: Running\n  podIP: {POD_IP}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
        ),
    )
    .unwrap();
    dir
}

/// A TCP backend at `addr` that writes `name` to every connection and closes it.
fn backend(addr: SocketAddr, name: &'static str) {
    let listener = std::net::TcpListener::bind(addr).expect("bind the backend");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let _ = conn.write_all(name.as_bytes());
        }
    });
}

/// A token for `ns/sa` in the tokens file `tokens`, written to `out`, made
/// by `meshpeer certs token`.
fn token(tokens: &Path, ns: &str, sa: &str, out: &Path) {
    let o = meshpeer(&[
        "certs",
        "token",
        "--tokens",
        s(tokens),
        "--namespace",
        ns,
        "--service-account",
        sa,
        "--out",
        s(out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `meshpeer controller` on `dir` (tokens from `tokens`); returns it and
/// its cluster listener's address.
fn controller(dir: &Path, cacerts: &Path, tokens: &Path) -> (Proc, String) {
    let mut p = spawn_controller(
        dir,
        cacerts,
        &["--tokens", s(tokens), "--vip-cidr", "127.253.0.0/16"],
    );
    let line = p.wait_for("its cluster listener's address", |m| {
        m.starts_with("cluster listener (certificates, catalog over mutual TLS)")
    });
    let cluster = Proc::field(&line, "address");
    (p, cluster)
}

/// `meshpeer controller` on `dir` with its listeners on free loopback ports,
/// and `extra` flags.
fn spawn_controller(dir: &Path, cacerts: &Path, extra: &[&str]) -> Proc {
    let mut argv = vec![
        "controller",
        "--cluster-dir",
        s(dir),
        "--cacerts",
        s(cacerts),
        "--api-listen",
        "127.0.0.1:0",
        "--cluster-listen",
        "127.0.0.1:0",
        "--peering-listen",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(extra);
    Proc::spawn("controller", &argv)
}

/// A controller on `dir` (its tokens file in `tmp`) and a proxy that reaches
/// it, with its DNS and metrics on free loopback ports and leave to dial
/// the endpoints `allow` (P5); both, and the proxy's DNS and metrics
/// addresses from its startup line.
fn controller_and_proxy(
    tmp: &Path,
    dir: &Path,
    cacerts: &Path,
    allow: &[&str],
) -> (Proc, Proc, SocketAddr, String) {
    let tokens = tmp.join("tokens");
    let proxy_token = tmp.join("proxy.token");
    token(&tokens, "istio-system", "meshpeer-proxy", &proxy_token);
    let (ctl, cluster) = controller(dir, cacerts, &tokens);
    let mut proxy_args = vec!["proxy".to_owned()];
    proxy_args.extend(reach(&cluster, cacerts, &proxy_token));
    proxy_args
        .extend(["--dns-listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"].map(str::to_owned));
    for a in allow {
        proxy_args.extend(["--allow-endpoints".to_owned(), (*a).to_owned()]);
    }
    let mut proxy = Proc::spawn("proxy", &args(&proxy_args));
    let up = proxy.wait_for("its startup line", |m| m.starts_with("proxy running"));
    let dns: SocketAddr = Proc::field(&up, "dns").parse().unwrap();
    let metrics = Proc::field(&up, "metrics");
    (ctl, proxy, dns, metrics)
}

/// The flags that lead a proxy or gateway to the controller at `cluster`
/// with the shared root of `cacerts` and the token in `token`.
fn reach(cluster: &str, cacerts: &Path, token: &Path) -> Vec<String> {
    vec![
        "--controller".into(),
        cluster.into(),
        "--root-cert".into(),
        s(&cacerts.join("root-cert.pem")).into(),
        "--token-file".into(),
        s(token).into(),
        "--trust-domain".into(),
        "c1".into(),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A copy of an example's cluster1 folder in `tmp` (a controller writes its
/// output into the folder it reads).
fn example_copy(tmp: &Path, example: &str) -> PathBuf {
    let dir = tmp.join("cluster1");
    std::fs::create_dir_all(&dir).unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(example)
        .join("cluster1");
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// The JSON body of a GET of `path` at `addr` (null when there is none
/// yet, or it is not JSON).
fn get_json(addr: &str, path: &str) -> Value {
    let answer = http_get(addr, path);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A whole HTTP/1.1 GET response (connection closed by the server).
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The A records of `name` from the DNS server at `server` (UDP).
fn resolve(server: SocketAddr, name: &str) -> Vec<IpAddr> {
    use hickory_resolver::TokioResolver;
    use hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig,
    };
    use hickory_resolver::net::runtime::TokioRuntimeProvider;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut connection = ConnectionConfig::udp();
        connection.port = server.port();
        let name_server = NameServerConfig::new(server.ip(), true, vec![connection]);
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![name_server]),
            TokioRuntimeProvider::default(),
        );
        let options = builder.options_mut();
        options.attempts = 2;
        options.timeout = Duration::from_secs(5);
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = builder.build().unwrap();
        let lookup = tokio::time::timeout(DEADLINE, resolver.lookup_ip(name))
            .await
            .expect("lookup hung")
            .unwrap_or_else(|e| panic!("cannot resolve {name}: {e}"));
        lookup.iter().collect()
    })
}

/// Everything `addr` sends on a new connection, until it closes.
fn read_all_from(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("reading from {addr}: {e}"));
    out
}

#[test]
fn d1_d2_proxy_resolves_and_reaches_a_global_service_and_the_gateway_wants_client_certs() {
    meshpeer_identity::install_default_provider();
    let tmp = tempfile::tempdir().unwrap();
    let cacerts = certs(tmp.path(), "c1");
    let dir = cluster_dir(tmp.path());
    backend(
        SocketAddr::new(POD_IP.parse().unwrap(), 8080),
        "backend-a\n",
    );

    // Only the controller gets the CA key; the others a root and a token.
    let tokens = tmp.path().join("tokens");
    let (gw_token, proxy_token) = (tmp.path().join("gw.token"), tmp.path().join("proxy.token"));
    token(&tokens, "istio-eastwest", "istio-eastwest", &gw_token);
    token(&tokens, "istio-system", "meshpeer-proxy", &proxy_token);
    let (ctl, cluster) = controller(&dir, &cacerts, &tokens);
    let api = ctl
        .seen
        .iter()
        .find(|v| v["fields"]["message"] == "API listening (status, catalog, metrics)")
        .map(|v| Proc::field(v, "address"))
        .expect("the controller logged its API address");
    let mut gw_args = vec!["gateway".to_owned()];
    gw_args.extend(reach(&cluster, &cacerts, &gw_token));
    // The pod is on loopback: allowed explicitly (P5).
    gw_args.extend(["--listen", "127.0.0.1:0", "--allow-endpoints", POD_IP].map(str::to_owned));
    gw_args.extend(["--report-interval", "200ms"].map(str::to_owned));
    let mut gw = Proc::spawn("gateway", &args(&gw_args));
    let mut proxy_args = vec!["proxy".to_owned()];
    proxy_args.extend(reach(&cluster, &cacerts, &proxy_token));
    proxy_args.extend(
        [
            "--dns-listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--allow-endpoints",
            POD_IP,
            "--report-interval",
            "200ms",
        ]
        .map(str::to_owned),
    );
    let mut proxy = Proc::spawn("proxy", &args(&proxy_args));
    let issued = proxy.wait_for("its certificate", |m| m == "certificate issued");
    assert!(
        Proc::field(&issued, "from").starts_with(&format!("controller at {cluster}")),
        "{issued}"
    );

    let up = proxy.wait_for("its startup line", |m| m.starts_with("proxy running"));
    assert_eq!(
        Proc::field(&up, "identity"),
        "spiffe://c1/ns/istio-system/sa/meshpeer-proxy"
    );
    assert_eq!(up["fields"]["vips"], 1, "{up}");
    assert_eq!(up["fields"]["listening"], 1, "{up}");
    let dns: SocketAddr = Proc::field(&up, "dns").parse().unwrap();
    let metrics = Proc::field(&up, "metrics");
    let health = http_get(&metrics, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // D1: the global name resolves to the VIP, in the range the controller was given.
    let ips = resolve(dns, &format!("{NAME}.{NS}.mesh.internal."));
    assert_eq!(ips.len(), 1, "{ips:?}");
    let vip = ips[0];
    match vip {
        IpAddr::V4(v4) => assert_eq!(v4.octets()[..2], [127, 253], "{vip}"),
        IpAddr::V6(_) => panic!("{vip} is not from 127.253.0.0/16"),
    }

    // D2: VIP:8000 leads to the pod's 8080.
    assert_eq!(read_all_from(SocketAddr::new(vip, 8000)), "backend-a\n");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = http_get(&metrics, "/metrics");
        let ok = text.lines().any(|l| {
            l.starts_with("dataplane_connections_total{")
                && l.contains("direction=\"outbound\"")
                && l.contains("outcome=\"ok\"")
                && l.ends_with(" 1")
        });
        // Issue 16: the same connection as a flow from c1 to c1's service,
        // with the bytes the backend sent.
        let flow = format!(
            "reporter=\"proxy\",source_cluster=\"c1\",destination_cluster=\"c1\",service=\"{NAME}.{NS}.mesh.internal\""
        );
        let flow_ok = text.lines().any(|l| {
            l.starts_with("dataplane_flow_connections_total{")
                && l.contains(&flow)
                && l.contains("outcome=\"ok\"")
                && l.ends_with(" 1")
        });
        let flow_bytes = text.lines().any(|l| {
            l.starts_with("dataplane_flow_bytes_total{")
                && l.contains(&flow)
                && l.contains("way=\"received\"")
                && l.ends_with(&format!(" {}", "backend-a\n".len()))
        });
        if ok && flow_ok && flow_bytes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ok outbound connection counted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // L8 on an L4 port: the connection's access-log line (written by hand
    // when the process logs JSON), in the layout tracing gives every line.
    let line = proxy.wait_for("the connection's access-log line", |m| m == "connection");
    let f = &line["fields"];
    assert_eq!(f["src_cluster"], "c1", "{line}");
    assert_eq!(
        f["dst"],
        format!("{NAME}.{NS}.mesh.internal:8000"),
        "{line}"
    );
    assert_eq!(f["cluster"], "c1", "{line}");
    assert_eq!(f["attempts"], 1, "{line}");
    assert_eq!(f["bytes_received"], "backend-a\n".len(), "{line}");
    assert_eq!(f["outcome"], "ok", "{line}");
    assert!(
        f["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with(POD_IP)),
        "{line}"
    );
    assert!(f["duration_ms"].is_u64(), "{line}");
    assert!(f.get("refused").is_none(), "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["target"], "meshpeer_dataplane::proxy", "{line}");
    assert_eq!(line["span"]["name"], "conn", "{line}");
    assert_eq!(line["span"]["dst"], format!("{vip}:8000"), "{line}");

    // Issue 16: the proxy reports the flow to the controller over mutual
    // TLS, and the controller serves it at /v1/traffic, with both reporters
    // under the identities their certificates prove.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let answer = http_get(&api, "/v1/traffic");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let doc: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let reported = doc["flows"].as_array().is_some_and(|flows| {
            flows.iter().any(|f| {
                f["reporter"] == "proxy"
                    && f["sourceCluster"] == "c1"
                    && f["destinationCluster"] == "c1"
                    && f["service"] == format!("{NAME}.{NS}.mesh.internal")
                    && f["connections"] == 1
                    && f["bytesReceived"] == "backend-a\n".len()
            })
        });
        let mut reporters: Vec<String> = doc["reporters"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|r| format!("{} {}", r["role"], r["identity"]))
                    .collect()
            })
            .unwrap_or_default();
        reporters.sort();
        let both = reporters
            == [
                "\"gateway\" \"spiffe://c1/ns/istio-eastwest/sa/istio-eastwest\"",
                "\"proxy\" \"spiffe://c1/ns/istio-system/sa/meshpeer-proxy\"",
            ];
        if reported && both {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller never served the proxy's report:\n{answer}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // D3: the gateway speaks mutual TLS only.
    let up = gw.wait_for("its startup line", |m| m.starts_with("gateway running"));
    assert_eq!(
        Proc::field(&up, "identity"),
        "spiffe://c1/ns/istio-eastwest/sa/istio-eastwest"
    );
    let hbone: SocketAddr = Proc::field(&up, "hbone").parse().unwrap();
    let refused = h2_through_tls(hbone, no_client_cert(), false);
    let err = refused.expect_err("a client without a certificate is refused");
    assert!(
        err.to_string().contains("CertificateRequired"),
        "refused for another reason: {err}"
    );
    // ...and the same exchange with a certificate under the shared root works.
    let frame = h2_through_tls(hbone, with_client_cert(&cacerts), true).expect("accepted");
    assert_eq!(
        frame[3], 0x4,
        "the gateway's first frame is SETTINGS: {frame:?}"
    );
}

/// Connects with TLS to `addr`; with `preface`, then sends the HTTP/2
/// client preface and an empty SETTINGS frame. Returns the header of the
/// first frame the server sends, or why the server ended the connection.
fn h2_through_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    preface: bool,
) -> std::io::Result<[u8; 9]> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = rustls::pki_types::ServerName::try_from("gateway.test").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    // In TLS 1.3 the client is done first; the server's verdict on the
    // client certificate comes after.
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    if preface {
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")?;
        tls.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0])?;
        tls.flush()?;
    }
    let mut header = [0u8; 9];
    tls.read_exact(&mut header)?;
    Ok(header)
}

fn with_client_cert(cacerts: &Path) -> Arc<rustls::ClientConfig> {
    use meshpeer_identity::{ALPN_H2, ClusterCa, Identity, SpiffeId, client_config};
    let now = SystemTime::now();
    let ca = ClusterCa::load(cacerts, now).unwrap();
    let root = ca.trust_root().clone();
    let id = SpiffeId::new("c1", "test", "client").unwrap();
    let identity = Arc::new(Identity::new(ca, id, Duration::from_secs(600), now).unwrap());
    client_config(identity, &root, "c1", &[ALPN_H2]).unwrap()
}

/// TLS 1.3 with ALPN h2 and no client certificate; any server certificate is
/// accepted (what is tested is the server's side).
fn no_client_cert() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[test]
fn proxy_waits_for_an_unreachable_controller_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let cacerts = certs(tmp.path(), "c1");
    let proxy_token = tmp.path().join("proxy.token");
    token(
        &tmp.path().join("tokens"),
        "istio-system",
        "meshpeer-proxy",
        &proxy_token,
    );
    // Port 1 on loopback: nobody listens there.
    let mut proxy_args = vec!["proxy".to_owned()];
    proxy_args.extend(reach("127.0.0.1:1", &cacerts, &proxy_token));
    proxy_args
        .extend(["--dns-listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"].map(str::to_owned));
    let mut proxy = Proc::spawn("proxy", &args(&proxy_args));
    let line = proxy.wait_for("that it listens for metrics", |m| {
        m.starts_with("metrics listening")
    });
    let metrics = Proc::field(&line, "address");
    proxy.wait_for("that it waits", |m| {
        m == "waiting for a certificate from the controller at 127.0.0.1:1"
    });
    let why = proxy.wait_for("why it waits", |m| {
        m.starts_with("cannot get a certificate from the controller")
    });
    assert!(
        Proc::field(&why, "error").contains("cannot reach the controller at 127.0.0.1:1"),
        "{why}"
    );
    assert!(proxy.child.try_wait().unwrap().is_none(), "still running");
    // Not ready without a catalog.
    let health = http_get(&metrics, "/healthz");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");

    let pid = proxy.child.id().to_string();
    let o = Command::new("kill").args(["-TERM", &pid]).output().unwrap();
    assert!(o.status.success());
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the proxy ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    proxy.wait_for("that it exits", |m| m.starts_with("SIGTERM received"));
}

#[test]
fn proxy_and_gateway_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let cacerts = certs(tmp.path(), "c1");
    let token_file = tmp.path().join("proxy.token");
    token(
        &tmp.path().join("tokens"),
        "istio-system",
        "meshpeer-proxy",
        &token_file,
    );
    let ok = reach("127.0.0.1:15013", &cacerts, &token_file);
    let with = |role: &str, extra: &[&str]| {
        let mut v = vec![role.to_owned()];
        v.extend(ok.iter().cloned());
        v.extend(extra.iter().map(|x| (*x).to_owned()));
        meshpeer(&args(&v))
    };

    // The root certificate file is named.
    let o = meshpeer(&[
        "proxy",
        "--root-cert",
        "/nonexistent/cacerts/root-cert.pem",
        "--token-file",
        s(&token_file),
        "--trust-domain",
        "c1",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("from /nonexistent/cacerts/root-cert.pem"),
        "{err}"
    );
    // So is the token file, with how to make one.
    let o = meshpeer(&[
        "gateway",
        "--root-cert",
        s(&cacerts.join("root-cert.pem")),
        "--token-file",
        "/nonexistent/gw.token",
        "--trust-domain",
        "c1",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot read the token file /nonexistent/gw.token")
            && err.contains("meshpeer certs token"),
        "{err}"
    );
    // The CA key is no longer a flag of the data plane.
    let o = meshpeer(&["proxy", "--cacerts", s(&cacerts)]);
    assert_eq!(o.status.code(), Some(2));

    // Bad flags: clap says so.
    let o = with("gateway", &["--listen", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("invalid value 'nope' for '--listen"), "{err}");
    let o = with("proxy", &["--controller", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let o = with("proxy", &["--region", "r1"]);
    assert_eq!(o.status.code(), Some(2));
    // Without a trust domain (or cluster name) the controller cannot be verified.
    let o = meshpeer(&[
        "proxy",
        "--root-cert",
        s(&cacerts.join("root-cert.pem")),
        "--token-file",
        s(&token_file),
    ]);
    assert_eq!(o.status.code(), Some(2));
    // P5: an allowed range says what is wrong with it.
    let o = with("gateway", &["--allow-endpoints", "10.1.0.14/16"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did you mean 10.1.0.0/16"), "{err}");
    let o = with("proxy", &["--node-ip", "node1"]);
    assert_eq!(o.status.code(), Some(2));

    // A busy port: one line naming the address.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = with("gateway", &["--listen", &addr]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen for HBONE on {addr}")),
        "{err}"
    );
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = with("proxy", &["--dns-listen", &addr]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen for DNS on {addr}")),
        "{err}"
    );
}

/// TLS 1.3 to `addr` as `name`, checked the usual way (webpki: the chain to
/// the root of `cacerts`, then `name` among the DNS and IP SANs), as
/// Istio's CA clients check `CA_ADDRESS` (ztunnel's `src/tls/control.rs`).
fn handshake_as(addr: SocketAddr, cacerts: &Path, name: &str) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cacerts.join("root-cert.pem")).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Issue 17 (what a real ztunnel needed, INTEROP.md findings 0 and 1):
/// the cluster listener's certificate names the address clients dial, and
/// a token file holds the token alone, as ztunnel sends the file's bytes.
#[test]
fn p7_the_cluster_listener_answers_to_its_address_and_token_files_hold_the_token_alone() {
    meshpeer_identity::install_default_provider();
    let tmp = tempfile::tempdir().unwrap();
    let cacerts = certs(tmp.path(), "c1");
    let dir = cluster_dir(tmp.path());
    let tokens = tmp.path().join("tokens");
    let ztunnel_token = tmp.path().join("ztunnel.token");
    token(&tokens, "istio-system", "ztunnel", &ztunnel_token);
    let bytes = std::fs::read(&ztunnel_token).unwrap();
    assert!(!bytes.is_empty());
    assert!(
        bytes.iter().all(|b| b.is_ascii_graphic()),
        "the token file holds more than the token: {:?}",
        String::from_utf8_lossy(&bytes)
    );

    let (_ctl, cluster) = controller(&dir, &cacerts, &tokens);
    let addr: SocketAddr = cluster.parse().unwrap();
    handshake_as(addr, &cacerts, "127.0.0.1")
        .expect("the listener's address is in its certificate");
    let err =
        handshake_as(addr, &cacerts, "elsewhere.example").expect_err("another name is refused");
    assert!(err.contains("not valid for name"), "{err}");
}

/// Issue 16: `explain --proxy` shows, live, what the proxy's passive health
/// checking has ejected (T6): a Pod that refuses connections is ejected
/// after a failed attempt, and the account marks it, not the live one.
#[test]
fn t6_explain_shows_the_proxys_live_ejections() {
    meshpeer_identity::install_default_provider();
    const LIVE: &str = "127.1.43.5";
    const DEAD: &str = "127.1.43.6";
    let tmp = tempfile::tempdir().unwrap();
    let cacerts = certs(tmp.path(), "c1");
    let dir = tmp.path().join("c1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), "name: c1\nregion: r1\nzone: z1\n").unwrap();
    let pod = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels: {{app: {NAME}}}\n\
             spec:\n  containers: [{{name: app, image: x}}]\n\
             status:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
        )
    };
    std::fs::write(
        dir.join("app.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata:\n  name: {NAME}\n  namespace: {NS}\n  labels:\n    solo.io/service-scope: global\n\
             spec:\n  selector: {{app: {NAME}}}\n  ports:\n  - {{name: tcp, port: 8000, targetPort: 8080}}\n---\n{}---\n{}",
            pod("live-0", LIVE),
            pod("dead-0", DEAD)
        ),
    )
    .unwrap();
    backend(SocketAddr::new(LIVE.parse().unwrap(), 8080), "live\n");

    let (_ctl, _proxy, dns, metrics) =
        controller_and_proxy(tmp.path(), &dir, &cacerts, &[LIVE, DEAD]);
    let vip = resolve(dns, &format!("{NAME}.{NS}.mesh.internal."))[0];

    // Connections until the dead Pod has been tried (and ejected): each is
    // still answered by the live one (T6: the next destination).
    let deadline = Instant::now() + DEADLINE;
    let ejections = loop {
        assert_eq!(read_all_from(SocketAddr::new(vip, 8000)), "live\n");
        let body = http_get(&metrics, "/v1/ejections");
        if body.contains(&format!("{DEAD}:8080")) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the dead Pod was never ejected:\n{body}"
        );
    };
    assert!(ejections.starts_with("HTTP/1.1 200"), "{ejections}");
    assert!(!ejections.contains(&format!("{LIVE}:8080")), "{ejections}");

    let o = meshpeer(&[
        "explain",
        &format!("{NAME}.{NS}.mesh.internal:8000"),
        "--from",
        "c1",
        "--cluster",
        s(&dir),
        "--proxy",
        &metrics,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(&format!(
            "(passive health live from the proxy at {metrics})"
        )),
        "{out}"
    );
    let line = |ip: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{ip}:8080")))
            .unwrap_or_else(|| panic!("no line for {ip}:\n{out}"))
            .to_owned()
    };
    assert!(line(DEAD).contains("⚠ ejected for"), "{out}");
    assert!(line(DEAD).contains("[T6]"), "{out}");
    assert!(!line(LIVE).contains("ejected"), "{out}");
}

/// B5: the controller's peering listener takes the listener flags: a
/// connection that never completes its TLS handshake is closed after
/// `--handshake-timeout`, counted under `meshpeer_peering_listener_*`.
#[test]
fn b5_the_peering_listener_takes_the_controllers_listener_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let cacerts = certs(tmp.path(), "c1");
    let dir = cluster_dir(tmp.path());
    let mut ctl = spawn_controller(&dir, &cacerts, &["--handshake-timeout", "300ms"]);
    let peering = ctl.wait_for("its peering address", |m| m == "peering server listening");
    let peering: SocketAddr = Proc::field(&peering, "address").parse().unwrap();
    let api = ctl.wait_for("its API address", |m| m.starts_with("API listening"));
    let api = Proc::field(&api, "address");
    let mut silent = TcpStream::connect(peering).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The listener closes it: EOF (or a reset) well before 10 s.
    let mut buf = [0u8; 1];
    let started = Instant::now();
    let _ = silent.read(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(5), "not closed");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = http_get(&api, "/metrics");
        if text.lines().any(|l| {
            l.starts_with("meshpeer_peering_listener_connections_closed_total{")
                && l.contains("reason=\"handshake_timeout\"")
                && l.ends_with(" 1")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "not counted:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// L8 through the real binaries: a request on a routed port gets one
/// access-log line naming the method, authority, path, status, route and
/// rule, backend, endpoint and cluster, and is counted in
/// `dataplane_http_requests_total` (the log lines come through the batched
/// log writer of a real process).
#[test]
fn l8_a_routed_request_gets_an_access_log_line_and_is_counted() {
    meshpeer_identity::install_default_provider();
    const ROUTED: &str = "routed-cli";
    const ROUTED_POD: &str = "127.1.42.6";
    let tmp = tempfile::tempdir().unwrap();
    let cacerts = certs(tmp.path(), "c1");
    let dir = tmp.path().join("c1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), "name: c1\nregion: r1\nzone: z1\n").unwrap();
    std::fs::write(
        dir.join("app.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: {ROUTED}, namespace: {NS}, labels: {{solo.io/service-scope: global}}}}\n\
             spec:\n  selector: {{app: {ROUTED}}}\n  ports: [{{name: http, port: 8000, targetPort: 8080}}]\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: {ROUTED}-0, namespace: {NS}, labels: {{app: {ROUTED}}}}}\n\
             spec:\n  containers: [{{name: app, image: x}}]\n\
             status:\n  phase: Running\n  podIP: {ROUTED_POD}\n  conditions: [{{type: Ready, status: \"True\"}}]\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {ROUTED}, namespace: {NS}}}\n\
             spec:\n  parentRefs: [{{group: \"\", kind: Service, name: {ROUTED}}}]\n  rules:\n\
             \x20 - backendRefs: [{{group: networking.istio.io, kind: Hostname, name: {ROUTED}.{NS}.mesh.internal, port: 8000}}]\n"
        ),
    )
    .unwrap();
    // An HTTP/1.1 backend: one answer per connection.
    let listener = std::net::TcpListener::bind((ROUTED_POD, 8080)).expect("bind the backend");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
            );
        }
    });
    let (_ctl, proxy, dns, metrics) =
        controller_and_proxy(tmp.path(), &dir, &cacerts, &[ROUTED_POD]);
    let host = format!("{ROUTED}.{NS}.mesh.internal");
    let vip = resolve(dns, &format!("{host}."))[0];
    let vip = SocketAddr::new(vip, 8000).to_string();
    // The route reaches the proxy with the catalog: until then the port is
    // an L4 hop (no access-log line of the L7 kind); ask until one comes.
    let deadline = Instant::now() + DEADLINE;
    let line = loop {
        let answer = http_get(&vip, "/some/path?q=1");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let got = proxy
            .lines
            .recv_timeout(Duration::from_millis(200))
            .ok()
            .into_iter()
            .chain(proxy.lines.try_iter())
            .find(|v| v["fields"]["message"] == "request");
        if let Some(v) = got {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line; {}",
            proxy.log()
        );
    };
    let f = &line["fields"];
    assert_eq!(f["method"], "GET", "{line}");
    assert_eq!(f["authority"], "x", "{line}");
    assert_eq!(f["path"], "/some/path?q=1", "{line}");
    assert_eq!(f["status"], 200, "{line}");
    assert_eq!(f["route"], format!("{NS}/{ROUTED}#0"), "{line}");
    assert_eq!(f["backend"], format!("{host}:8000"), "{line}");
    assert_eq!(
        f["endpoint"],
        format!("{ROUTED_POD}:8080 ({ROUTED}-0)"),
        "{line}"
    );
    assert_eq!(f["cluster"], "c1", "{line}");
    assert_eq!(f["src_cluster"], "c1", "{line}");
    assert!(f["duration_ms"].is_u64(), "{line}");
    let text = http_get(&metrics, "/metrics");
    assert!(
        text.lines()
            .any(|l| l.starts_with("dataplane_http_requests_total{")
                && l.contains(&format!("service=\"{host}\""))
                && l.contains("destination_cluster=\"c1\"")
                && l.contains("status_class=\"2xx\"")),
        "{text}"
    );
}

/// Seconds since midnight UTC of a JSON log line's `timestamp`
/// (`2026-12-07T03:20:01.123456Z`).
fn seconds_of_day(line: &Value) -> f64 {
    let ts = line["timestamp"].as_str().unwrap_or_default();
    let time = ts
        .split('T')
        .nth(1)
        .unwrap_or_default()
        .trim_end_matches('Z');
    time.split(':')
        .map(|p| p.parse::<f64>().unwrap_or(0.0))
        .fold(0.0, |acc, p| acc * 60.0 + p)
}

/// L2 at start-up: a route backend that does not resolve while a linked
/// peer has not sent its first state is most likely one of the peer's
/// services, so the controller logs it only once the peer synced or the
/// grace period is over (and only if it still holds): a start-up does not
/// warn about backends the first sync resolves. Here cluster2 never
/// answers: the finding is logged, after the grace period.
#[test]
fn l2_unresolved_route_backends_are_logged_once_the_linked_peers_synced_or_the_grace_is_over() {
    meshpeer_identity::install_default_provider();
    let tmp = tempfile::tempdir().unwrap();
    let cacerts = certs(tmp.path(), "cluster1");
    // Seed 002's cluster1, linked to a cluster2 that is not running.
    let dir = example_copy(tmp.path(), "httpbin");
    std::fs::write(
        dir.join("route.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: to-gone, namespace: httpbin}\n\
         spec:\n  parentRefs: [{group: \"\", kind: Service, name: in-ambient, port: 8000}]\n  \
         rules:\n  - backendRefs: [{group: networking.istio.io, kind: Hostname, name: gone.httpbin.mesh.internal, port: 8000}]\n",
    )
    .unwrap();
    let mut ctl = spawn_controller(&dir, &cacerts, &["--grace", "2s"]);
    let up = ctl.wait_for("its API address", |m| {
        m == "API listening (status, catalog, metrics)"
    });
    let warned = ctl.wait_for("the route's unresolved backend", |m| {
        m.contains("gone.httpbin.mesh.internal")
    });
    assert_eq!(warned["fields"]["rule"], "L2", "{warned}");
    assert_eq!(warned["level"], "WARN", "{warned}");
    let after = (seconds_of_day(&warned) - seconds_of_day(&up)).rem_euclid(86_400.0);
    assert!(
        after >= 1.5,
        "logged {after:.3} s after start, before the 2 s grace period was over: {warned}"
    );
    assert_eq!(ctl.times_logged("gone.httpbin.mesh.internal"), 1);
}

/// G7 for upstream Istio, in the controller as in `render`: global
/// services with endpoints of no known Pod (bookinfo's EndpointSlices, its
/// Pods taken out) cannot have their ServiceAccounts in the entries'
/// subjectAltNames, which ztunnel checks; the controller (upstream by
/// default) logs one warning per exporting cluster, once, and lists it
/// with its findings; with `--istio-flavor solo` (no such names) it says
/// nothing of it.
#[test]
fn g7_the_controller_warns_of_endpoints_without_a_known_identity_for_upstream_istio() {
    meshpeer_identity::install_default_provider();
    let tmp = tempfile::tempdir().unwrap();
    let cacerts = certs(tmp.path(), "cluster1");
    let dir = example_copy(tmp.path(), "bookinfo");
    let path = dir.join("bookinfo.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let without_pods: Vec<&str> = text
        .split("\n---\n")
        .filter(|doc| !doc.lines().any(|l| l == "kind: Pod"))
        .collect();
    std::fs::write(&path, without_pods.join("\n---\n")).unwrap();
    let gap = "global services have endpoints in cluster cluster1 of no known Pod";
    let mut ctl = spawn_controller(&dir, &cacerts, &[]);
    let api = ctl.api_address();
    let warned = ctl.wait_for("the identity gap", |m| m.contains(gap));
    assert_eq!(warned["fields"]["rule"], "G7", "{warned}");
    assert_eq!(warned["level"], "WARN", "{warned}");
    let doc = get_json(&api, "/v1/status");
    let listed: Vec<&serde_json::Value> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["rule"] == "G7")
        .collect();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["severity"], "warning", "{listed:#?}");
    assert_eq!(listed[0]["object"]["kind"], "cluster", "{listed:#?}");
    assert_eq!(listed[0]["object"]["name"], "cluster1", "{listed:#?}");
    assert!(
        listed[0]["message"].as_str().unwrap().starts_with(gap),
        "{listed:#?}"
    );
    assert_eq!(ctl.times_logged(gap), 1);
    drop(ctl);

    let mut solo = spawn_controller(&dir, &cacerts, &["--istio-flavor", "solo"]);
    let api = solo.api_address();
    // Once the catalog holds productpage, its findings are final.
    let deadline = Instant::now() + Duration::from_secs(20);
    let doc = loop {
        let doc = get_json(&api, "/v1/status");
        if doc["globalServices"].as_u64().unwrap_or(0) > 0 {
            break doc;
        }
        assert!(Instant::now() < deadline, "no catalog: {doc}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !doc["diagnostics"].to_string().contains("no known Pod"),
        "{doc}"
    );
    assert!(
        !solo
            .seen
            .iter()
            .any(|v| v.to_string().contains("no known Pod"))
    );
}
