//! `meshpeer check` (SPEC O4) on the httpbin example in file mode: real
//! controller processes, certificates from `meshpeer certs`, and each class
//! of failure made on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshpeer::check::{Check, Report, Status, names, write_runtime_file};
use meshpeer_dataplane::feed::{CatalogFeed, Follower, follow_as};
use tokio::sync::watch;

const WITHIN: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshpeer")
}

fn meshpeer(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run meshpeer")
}

/// Two clusters of the httpbin example in a temp dir, their east-west
/// gateways moved to 127.<octet>.1.1 and 127.<octet>.2.1 (so that tests
/// running at the same time do not share peering ports), and certificates
/// in `certs/` as the README's walkthrough makes them.
struct Mesh {
    tmp: tempfile::TempDir,
    octet: u8,
    /// The shared root's SHA-256, as `meshpeer certs root-ca` printed it.
    root_sha: String,
}

impl Mesh {
    fn new(octet: u8) -> Mesh {
        let tmp = tempfile::tempdir().unwrap();
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/httpbin");
        for c in ["cluster1", "cluster2"] {
            std::fs::create_dir_all(tmp.path().join(c)).unwrap();
            for e in std::fs::read_dir(from.join(c)).unwrap() {
                let e = e.unwrap();
                let text = std::fs::read_to_string(e.path()).unwrap();
                let text = text
                    .replace("127.0.1.1", &format!("127.{octet}.1.1"))
                    .replace("127.0.2.1", &format!("127.{octet}.2.1"));
                std::fs::write(tmp.path().join(c).join(e.file_name()), text).unwrap();
            }
        }
        let mut m = Mesh {
            tmp,
            octet,
            root_sha: String::new(),
        };
        m.root_sha = m.make_root("root");
        for c in ["cluster1", "cluster2"] {
            m.make_certs(c, "root", c);
        }
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn dir(&self, cluster: &str) -> PathBuf {
        self.path(cluster)
    }

    fn gateway_ip(&self, n: u8) -> String {
        format!("127.{}.{n}.1", self.octet)
    }

    /// `meshpeer certs root-ca`; returns the SHA-256 it prints.
    fn make_root(&self, name: &str) -> String {
        let out = self.path("certs").join(name);
        let o = meshpeer(&["certs", "root-ca", "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let sha = text
            .split("SHA-256 ")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap();
        sha.replace(':', "").to_ascii_lowercase()
    }

    fn make_certs(&self, cluster: &str, root: &str, out: &str) {
        let root = self.path("certs").join(root);
        let out = self.path("certs").join(out);
        let o = meshpeer(&[
            "certs",
            "cluster",
            cluster,
            "--root",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// Replaces `from` by `to` in a cluster's file (once, or everywhere
    /// with `all`), as an editor would: a new file renamed into place.
    fn edit(&self, cluster: &str, file: &str, from: &str, to: &str) {
        let path = self.dir(cluster).join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from:?} not in {}", path.display());
        let tmp = self.dir(cluster).join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text.replacen(from, to, 1)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["check".to_owned()];
        for c in ["cluster1", "cluster2"] {
            args.push("--cluster".to_owned());
            args.push(self.dir(c).display().to_string());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// `meshpeer check ...` as text: exit code and stdout.
    fn check(&self, extra: &[&str]) -> (i32, String) {
        let o = Command::new(bin()).args(self.args(extra)).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let code = o.status.code().unwrap_or(-1);
        assert!(
            code == 0 || code == 1,
            "check exited {code}: {}{out}",
            String::from_utf8_lossy(&o.stderr)
        );
        (code, out)
    }

    /// `meshpeer check ... -o json`: exit code and the report.
    fn report(&self, extra: &[&str]) -> (i32, Report) {
        let mut extra = extra.to_vec();
        extra.extend(["-o", "json"]);
        let (code, out) = self.check(&extra);
        let report: Report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(
            code == 1,
            report.failed(),
            "exit code {code} for {report:#?}"
        );
        (code, report)
    }

    /// Runs `check` until `pred` holds of its report (or fails the test
    /// after [`WITHIN`], showing the last text).
    fn wait(&self, extra: &[&str], what: &str, pred: impl Fn(&Report) -> bool) -> Report {
        let deadline = Instant::now() + WITHIN;
        loop {
            let (_, report) = self.report(extra);
            if pred(&report) {
                return report;
            }
            if Instant::now() > deadline {
                let (_, text) = self.check(extra);
                panic!("never: {what}\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn check<'a>(r: &'a Report, cluster: Option<&str>, name: &str) -> &'a Check {
    r.find(cluster, name)
        .unwrap_or_else(|| panic!("no {name} for {cluster:?} in {r:#?}"))
}

/// The item of `c` containing `text`, asserting its status.
fn item<'a>(c: &'a Check, status: Status, text: &str) -> &'a meshpeer::check::Item {
    c.items
        .iter()
        .find(|i| i.text.contains(text))
        .filter(|i| i.status == status)
        .unwrap_or_else(|| panic!("no {status:?} item with {text:?} in {c:#?}"))
}

/// A controller process, killed when dropped; `api` read from its log.
struct Controller {
    child: Child,
    api: String,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controller(dir: &Path, cacerts: &Path) -> Controller {
    let mut child = Command::new(bin())
        .args(["controller", "--cluster-dir"])
        .arg(dir)
        .arg("--cacerts")
        .arg(cacerts)
        .args(["--api-listen", "127.0.0.1:0", "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start controller");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["fields"]["message"] == "API listening (status, catalog, metrics)"
            {
                let _ = tx.send(
                    v["fields"]["address"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    });
    let api = rx
        .recv_timeout(WITHIN)
        .expect("the controller reports its API address");
    Controller { child, api }
}

/// An HTTP endpoint answering `200 ok` to everything: a healthy `/healthz`.
fn healthy_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 1024];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
            );
        }
    });
    addr
}

/// An address where nothing listens.
fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Data-plane stand-ins: catalog followers that say who they are, as
/// `meshpeer proxy` / `gateway` do through `feed::follow_as`.
struct DataPlane {
    rt: tokio::runtime::Runtime,
    feeds: Vec<watch::Receiver<Arc<CatalogFeed>>>,
}

impl DataPlane {
    fn new() -> DataPlane {
        DataPlane {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
            feeds: Vec::new(),
        }
    }

    fn follow(&mut self, api: &str, role: &str, name: &str, health: Option<String>) {
        let (tx, rx) = watch::channel(Arc::new(CatalogFeed::default()));
        let who = Follower {
            role: role.to_owned(),
            name: name.to_owned(),
            health,
        };
        self.rt.spawn(follow_as(api.to_owned(), who, tx));
        self.feeds.push(rx);
    }

    /// A gateway and a proxy for `cluster`, both healthy.
    fn healthy(&mut self, api: &str, cluster: &str) {
        self.follow(
            api,
            "gateway",
            &format!("spiffe://{cluster}/ns/istio-eastwest/sa/istio-eastwest"),
            Some(healthy_endpoint()),
        );
        self.follow(
            api,
            "proxy",
            &format!("spiffe://{cluster}/ns/istio-system/sa/meshpeer-proxy"),
            Some(healthy_endpoint()),
        );
    }
}

#[test]
fn o4_healthy_linked_pair_is_all_green() {
    let m = Mesh::new(61);
    let c1 = controller(&m.dir("cluster1"), &m.path("certs/cluster1"));
    let c2 = controller(&m.dir("cluster2"), &m.path("certs/cluster2"));
    // Found through the runtime file, as a controller records it.
    for (c, ctl, n) in [("cluster1", &c1, 1), ("cluster2", &c2, 2)] {
        let peering = format!("{}:15012", m.gateway_ip(n)).parse().unwrap();
        write_runtime_file(&m.dir(c), ctl.api.parse().unwrap(), peering, None).unwrap();
    }
    let mut dp = DataPlane::new();
    dp.healthy(&c1.api, "cluster1");
    dp.healthy(&c2.api, "cluster2");

    let report = m.wait(&[], "every check passes", |r| r.status() == Status::Ok);
    assert_eq!(report.clusters, ["cluster1", "cluster2"]);
    let peers = check(&report, Some("cluster1"), names::PEERS);
    assert_eq!(peers.title, "all clusters connected");
    item(
        peers,
        Status::Ok,
        &format!("Connected to cluster2 via {}", m.gateway_ip(2)),
    );
    let dp1 = check(&report, Some("cluster1"), names::DATA_PLANE);
    item(
        dp1,
        Status::Ok,
        "gateway spiffe://cluster1/ns/istio-eastwest/sa/istio-eastwest connected (following catalog version",
    );
    item(
        dp1,
        Status::Ok,
        "proxy spiffe://cluster1/ns/istio-system/sa/meshpeer-proxy connected",
    );
    let shared = check(&report, Some("cluster2"), names::SHARED_SERVICES);
    assert_eq!(
        shared.title,
        "exports 2 global services; sees 2, 2 with endpoints from other clusters"
    );
    for name in [
        names::CERTS,
        names::NETWORK,
        names::TRUST_DOMAIN,
        names::SEGMENTS,
        names::STALE,
    ] {
        assert_eq!(check(&report, None, name).status, Status::Ok, "{name}");
    }
    // Two clusters, two networks: as seed 002 prints it.
    assert_eq!(
        check(&report, None, names::STALE).title,
        "skipped (flat network not detected)"
    );

    let (code, text) = m.check(&[]);
    assert_eq!(code, 0, "{text}");
    for line in [
        "=== Cluster: cluster1 ===\n",
        &format!("✅ Controller Check: controller at {} is running\n", c1.api),
        "✅ Gateway Check: all eastwest gateways programmed\n",
        &format!(
            "     ✅ istio-eastwest/istio-eastwest available at {}\n",
            m.gateway_ip(1)
        ),
        "✅ Peers Check: all clusters connected\n",
        &format!("     ✅ Connected to cluster1 via {}\n", m.gateway_ip(1)),
        "====== \n",
        "✅ Intermediate Certs Compatibility Check: all clusters have compatible intermediate certificates\n",
        "✅ Network Configuration Check: all network configurations are valid\n",
        "✅ all checks passed\n",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    assert!(!text.contains("❌") && !text.contains("⚠"), "{text}");

    // --verbose: the seed's detail blocks.
    let (code, text) = m.check(&["--verbose"]);
    assert_eq!(code, 0, "{text}");
    for line in [
        "--- Peers Check ---\n",
        "Cluster: cluster2\nAddresses:\n",
        "- gloo.solo.io/PeerConnected: True\n",
        "- gloo.solo.io/PeeringSucceeded: True\n",
        "- gloo.solo.io/PeerDataPlaneProgrammed: True\n",
        "Status: connected ✅\n",
        "--- Gateway Check ---\n",
        "Status: programmed ✅\n",
        &format!(
            "ℹ  cluster cluster1 root certificate SHA256 sum: {}\n",
            m.root_sha
        ),
        &format!(
            "ℹ  cluster cluster2 root certificate SHA256 sum: {}\n",
            m.root_sha
        ),
        "✅ cluster cluster1 has compatible intermediate certificates with cluster cluster2\n",
        "✅ Cluster cluster2 has network: cluster2\n",
        "✅ Remote gateway istio-eastwest/istio-remote-peer-cluster2 in cluster cluster1 references network cluster2 (clusters: [cluster2])\n",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }

    // --precheck: only what makes sense before linking.
    let (code, text) = m.check(&["--precheck"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("✅ all prechecks passed"), "{text}");
    for absent in [
        names::CONTROLLER,
        names::PEERS,
        names::DATA_PLANE,
        names::STALE,
    ] {
        assert!(!text.contains(absent), "{absent} in a precheck:\n{text}");
    }

    // A proxy whose health endpoint does not answer turns its line red.
    dp.follow(&c1.api, "proxy", "proxy-b", Some(dead_endpoint()));
    let report = m.wait(&[], "the dead proxy fails", |r| {
        r.find(Some("cluster1"), names::DATA_PLANE)
            .is_some_and(|c| c.status == Status::Fail)
    });
    let dp1 = check(&report, Some("cluster1"), names::DATA_PLANE);
    let bad = item(dp1, Status::Fail, "proxy proxy-b connected");
    assert!(bad.text.contains("/healthz"), "{bad:?}");
    assert!(
        bad.fix.as_deref().unwrap().contains("proxy's log"),
        "{bad:?}"
    );
    let (code, text) = m.check(&[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("❌ Data Plane Check: proxy proxy-b connected"),
        "{text}"
    );
    drop(dp);
}

#[test]
fn o4_c6_clusters_under_different_roots_fail_certs_and_peering() {
    let m = Mesh::new(62);
    m.make_root("other-root");
    m.make_certs("cluster2", "other-root", "cluster2-other");
    let (c1_certs, c2_certs) = (m.path("certs/cluster1"), m.path("certs/cluster2-other"));
    let certs = [
        "--cacerts",
        c1_certs.to_str().unwrap(),
        "--cacerts",
        c2_certs.to_str().unwrap(),
    ];

    let mut pre = certs.to_vec();
    pre.push("--precheck");
    let (code, report) = m.report(&pre);
    assert_eq!(code, 1);
    let certs_check = check(&report, None, names::CERTS);
    assert_eq!(certs_check.status, Status::Fail);
    assert_eq!(certs_check.title, "clusters do not share one root of trust");
    let bad = item(
        certs_check,
        Status::Fail,
        "cluster cluster2's certificates are not accepted by cluster cluster1",
    );
    assert!(
        bad.fix
            .as_deref()
            .unwrap()
            .contains("meshpeer certs cluster cluster2 --root"),
        "{bad:?}"
    );
    item(
        certs_check,
        Status::Fail,
        "cluster cluster1's certificates are not accepted by cluster cluster2",
    );
    // Each cluster's own CA is fine: only the pair fails.
    assert_eq!(
        check(&report, Some("cluster2"), names::CONFIGURATION).status,
        Status::Ok
    );
    let (_, text) = m.check(&pre);
    assert!(
        text.contains("❌ Intermediate Certs Compatibility Check: clusters do not share one root of trust\n     ❌ cluster cluster1's certificates are not accepted by cluster cluster2"),
        "{text}"
    );
    assert!(
        text.contains("        → fix: issue every cluster's intermediate from one root"),
        "{text}"
    );

    // Running, the controllers refuse each other.
    let c1 = controller(&m.dir("cluster1"), &c1_certs);
    let c2 = controller(&m.dir("cluster2"), &c2_certs);
    let mut args = certs.to_vec();
    args.extend(["--controller", &c1.api, "--controller", &c2.api]);
    let report = m.wait(&args, "cluster1's peer fails on the root", |r| {
        r.find(Some("cluster1"), names::PEERS).is_some_and(|c| {
            c.items
                .iter()
                .any(|i| i.status == Status::Fail && i.text.contains("shared root"))
        })
    });
    let peers = check(&report, Some("cluster1"), names::PEERS);
    let bad = item(peers, Status::Fail, "Not connected to cluster2 via");
    assert!(bad.fix.as_deref().unwrap().contains("one root"), "{bad:?}");
    let (code, _) = m.check(&args);
    assert_eq!(code, 1);
}

#[test]
fn o4_network_label_mismatch_fails_and_names_the_gateways() {
    let m = Mesh::new(63);
    m.edit(
        "cluster2",
        "istio-system.yaml",
        "topology.istio.io/network: cluster2",
        "topology.istio.io/network: net-x",
    );
    let (code, report) = m.report(&["--precheck"]);
    assert_eq!(code, 1);
    let net = check(&report, None, names::NETWORK);
    assert_eq!(net.status, Status::Fail);
    let gw = item(
        net,
        Status::Fail,
        "Eastwest gateway istio-eastwest/istio-eastwest of cluster cluster2 has network label cluster2, but the cluster is in network net-x",
    );
    assert!(
        gw.fix
            .as_deref()
            .unwrap()
            .contains("topology.istio.io/network=net-x"),
        "{gw:?}"
    );
    item(
        net,
        Status::Fail,
        "Remote gateway istio-eastwest/istio-remote-peer-cluster2 in cluster cluster1 references network cluster2, but cluster cluster2 is in network net-x",
    );
    item(net, Status::Ok, "Cluster cluster1 has network: cluster1");
    // cluster.yaml says otherwise: amber, the label wins.
    let cfg = check(&report, Some("cluster2"), names::CONFIGURATION);
    item(
        cfg,
        Status::Warn,
        "cluster.yaml says network cluster2 but namespace istio-system is labelled topology.istio.io/network=net-x",
    );

    let (code, text) = m.check(&["--precheck"]);
    assert_eq!(code, 1);
    assert!(
        text.contains("❌ Network Configuration Check: network labels disagree\n"),
        "{text}"
    );
    assert!(text.contains("     ❌ Remote gateway istio-eastwest/istio-remote-peer-cluster2 in cluster cluster1 references network cluster2"), "{text}");
    assert!(text.contains("        → fix: in cluster cluster1, label gateway istio-eastwest/istio-remote-peer-cluster2 topology.istio.io/network=net-x"), "{text}");
    assert!(
        text.contains("⚠  Configuration Check: cluster.yaml says network cluster2"),
        "{text}"
    );
}

#[test]
fn o4_s1_s2_segment_mismatches_fail() {
    let m = Mesh::new(64);
    m.edit(
        "cluster2",
        "istio-system.yaml",
        "domain: cluster.dev",
        "domain: dev.example",
    );
    let (code, report) = m.report(&["--precheck"]);
    assert_eq!(code, 1);
    let seg = check(&report, None, names::SEGMENTS);
    assert_eq!(seg.title, "segments disagree");
    let bad = item(
        seg,
        Status::Fail,
        "Segment istio-system/dev-segment has different domains: cluster.dev in cluster1, dev.example in cluster2",
    );
    assert!(
        bad.fix
            .as_deref()
            .unwrap()
            .contains("the same in every cluster"),
        "{bad:?}"
    );
    item(
        seg,
        Status::Ok,
        "Segment prod-segment has domain cluster.prod",
    );
    // The model's S1 diagnostic names the segment too.
    let diags = check(&report, Some("cluster1"), names::DIAGNOSTICS);
    item(diags, Status::Warn, "[S1] segment istio-system/dev-segment");
    let (_, text) = m.check(&["--precheck"]);
    assert!(text.contains("❌ Segments Check: segments disagree\n     ❌ Segment istio-system/dev-segment has different domains"), "{text}");

    // A cluster labelled into a segment it does not define.
    m.edit(
        "cluster2",
        "istio-system.yaml",
        "domain: dev.example",
        "domain: cluster.dev",
    );
    m.edit(
        "cluster1",
        "istio-system.yaml",
        "    topology.istio.io/network: cluster1\n",
        "    topology.istio.io/network: cluster1\n    admin.solo.io/segment: qa-segment\n",
    );
    let (code, report) = m.report(&["--precheck"]);
    assert_eq!(code, 1);
    let seg = check(&report, None, names::SEGMENTS);
    item(
        seg,
        Status::Fail,
        "Cluster cluster1's namespace istio-system names segment qa-segment (label admin.solo.io/segment), which the cluster does not define",
    );
    assert!(
        !seg.items
            .iter()
            .any(|i| i.text.contains("different domains")),
        "{seg:#?}"
    );
}

#[test]
fn o4_peer_unreachable_once_its_controller_stops() {
    let m = Mesh::new(65);
    let c1 = controller(&m.dir("cluster1"), &m.path("certs/cluster1"));
    let c2 = controller(&m.dir("cluster2"), &m.path("certs/cluster2"));
    let args = ["--controller", &c1.api, "--controller", &c2.api];
    let args = args.map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    m.wait(&args, "both peers connected", |r| {
        ["cluster1", "cluster2"].iter().all(|c| {
            r.find(Some(c), names::PEERS)
                .is_some_and(|p| p.status == Status::Ok)
        })
    });
    // cluster2 has written its peer status (what check shows once it is gone).
    let status2 = m
        .dir("cluster2")
        .join(".meshpeer/out/status/istio-eastwest.istio-remote-peer-cluster1.yaml");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&status2).is_ok_and(|t| t.contains("PeerConnected")) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never written",
            status2.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let api2 = c2.api.clone();
    drop(c2);
    let report = m.wait(&args, "cluster1 sees cluster2 gone", |r| {
        r.find(Some("cluster1"), names::PEERS)
            .is_some_and(|p| p.status == Status::Fail)
    });
    let peers = check(&report, Some("cluster1"), names::PEERS);
    assert_eq!(peers.title, "1 of 1 clusters not connected");
    let bad = item(
        peers,
        Status::Fail,
        &format!("Not connected to cluster2 via {}", m.gateway_ip(2)),
    );
    assert!(
        bad.fix.as_deref().unwrap().contains(&format!(
            "check that cluster2's controller runs and listens on {}:15012",
            m.gateway_ip(2)
        )),
        "{bad:?}"
    );
    let ctl2 = check(&report, Some("cluster2"), names::CONTROLLER);
    assert_eq!(ctl2.status, Status::Fail);
    assert!(
        ctl2.title.contains(&format!(
            "the controller at {api2} (from --controller) does not answer"
        )),
        "{ctl2:?}"
    );
    assert!(
        ctl2.fix
            .as_deref()
            .unwrap()
            .starts_with("start it: meshpeer controller --cluster-dir"),
        "{ctl2:?}"
    );
    // cluster2's last written status is shown, but not trusted.
    let peers2 = check(&report, Some("cluster2"), names::PEERS);
    assert_eq!(peers2.status, Status::Warn, "{peers2:?}");
    assert!(
        peers2
            .title
            .contains("(from the status the controller last wrote)"),
        "{peers2:?}"
    );

    let (code, text) = m.check(&args);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("❌ Peers Check: 1 of 1 clusters not connected\n"),
        "{text}"
    );
    assert!(
        text.contains("❌ Controller Check: the controller at"),
        "{text}"
    );
    assert!(
        text.contains("     → fix: start it: meshpeer controller"),
        "{text}"
    );
}

#[test]
fn o4_g5_k2_diagnostics_are_amber_and_errors_red() {
    let m = Mesh::new(66);
    // in-ambient's scope label misspelled; client-in-ambient with takeover but no scope.
    m.edit(
        "cluster1",
        "httpbin.yaml",
        "solo.io/service-scope: global",
        "solo.io/service-scope: glabal",
    );
    m.edit(
        "cluster1",
        "httpbin.yaml",
        "    solo.io/service-scope: global\n",
        "    solo.io/service-takeover: \"true\"\n",
    );
    let (code, report) = m.report(&["--precheck"]);
    assert_eq!(code, 0, "warnings alone exit 0");
    let diags = check(&report, Some("cluster1"), names::DIAGNOSTICS);
    assert_eq!(diags.status, Status::Warn);
    assert_eq!(diags.title, "2 warnings in cluster cluster1's input");
    let g5 = item(
        diags,
        Status::Warn,
        "[G5] service httpbin/in-ambient: label solo.io/service-scope has value \"glabal\"",
    );
    assert!(g5.text.contains("did you mean \"global\"?"), "{g5:?}");
    assert!(
        g5.fix
            .as_deref()
            .unwrap()
            .contains("set label solo.io/service-scope on service httpbin/in-ambient"),
        "{g5:?}"
    );
    let k2 = item(
        diags,
        Status::Warn,
        "[K2] service httpbin/client-in-ambient",
    );
    assert!(k2.fix.is_some());
    assert_eq!(
        check(&report, Some("cluster2"), names::DIAGNOSTICS).status,
        Status::Ok
    );
    let (_, text) = m.check(&["--precheck"]);
    assert!(text.contains("⚠  Diagnostics Check: 2 warnings in cluster cluster1's input\n     ⚠  [G5] service httpbin/in-ambient"), "{text}");
    assert!(text.contains("        → fix: set label solo.io/service-scope on service httpbin/in-ambient to global, segment or cluster"), "{text}");

    // An error-level diagnostic (a link Gateway misnamed) fails the check.
    std::fs::write(
        m.dir("cluster1").join("bad-link.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: link-to-cluster3\n  namespace: istio-eastwest\nspec:\n  gatewayClassName: istio-remote\n  addresses:\n  - type: IPAddress\n    value: 127.66.3.1\n  listeners: []\n",
    )
    .unwrap();
    let (code, report) = m.report(&["--precheck"]);
    assert_eq!(code, 1);
    let diags = check(&report, Some("cluster1"), names::DIAGNOSTICS);
    assert_eq!(diags.status, Status::Fail);
    item(
        diags,
        Status::Fail,
        "[C3] gateway istio-eastwest/link-to-cluster3",
    );
}

#[test]
fn o4_missing_cacerts_is_a_missing_trust_root() {
    let m = Mesh::new(67);
    std::fs::remove_dir_all(m.path("certs/cluster2")).unwrap();
    let (code, report) = m.report(&["--precheck"]);
    assert_eq!(code, 1);
    let cfg = check(&report, Some("cluster2"), names::CONFIGURATION);
    let bad = item(
        cfg,
        Status::Fail,
        "no trust root: no cacerts for cluster cluster2",
    );
    assert!(
        bad.fix
            .as_deref()
            .unwrap()
            .contains("meshpeer certs cluster cluster2 --root ROOT_DIR"),
        "{bad:?}"
    );
    item(
        check(&report, None, names::CERTS),
        Status::Warn,
        "cluster cluster2 not checked",
    );
    // Per-cluster flags come once per cluster.
    let o = Command::new(bin())
        .args(m.args(&["--cacerts", "x"]))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--cacerts is given 1 times for 2 clusters"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
