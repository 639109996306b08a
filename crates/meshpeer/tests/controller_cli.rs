//! The real binary: `certs`, two `controller`s on the httpbin example, and
//! `status` showing the peers connected (SPEC O1, O5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshpeer")
}

fn meshpeer(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run meshpeer")
}

/// A controller process, killed when dropped; `api` read from its log.
struct Running {
    child: Child,
    api: String,
    /// The Global services page (`--web-listen 127.0.0.1:0`).
    web: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controller(dir: &Path, cacerts: &Path) -> Running {
    let mut child = Command::new(bin())
        .args(["controller", "--cluster-dir"])
        .arg(dir)
        .arg("--cacerts")
        .arg(cacerts)
        .args(["--api-listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--web-listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start controller");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let address = v["fields"]["address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let message = v["fields"]["message"].as_str().unwrap_or_default();
                if message == "API listening (status, catalog, metrics)" {
                    let _ = tx.send(("api", address));
                } else if message.starts_with("global services page at") {
                    let _ = tx.send(("web", address));
                }
            }
        }
    });
    let (mut api, mut web) = (None, None);
    while api.is_none() || web.is_none() {
        let (what, addr) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the controller reports its API and page addresses");
        if what == "api" {
            api = Some(addr);
        } else {
            web = Some(addr);
        }
    }
    Running {
        child,
        api: api.unwrap(),
        web: web.unwrap(),
    }
}

fn copy_example(to: &Path) -> (PathBuf, PathBuf) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/httpbin");
    for c in ["cluster1", "cluster2"] {
        std::fs::create_dir_all(to.join(c)).unwrap();
        for e in std::fs::read_dir(from.join(c)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(c).join(e.file_name())).unwrap();
        }
    }
    (to.join("cluster1"), to.join("cluster2"))
}

#[test]
fn o1_o5_controllers_on_the_example_connect_and_status_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (c1, c2) = copy_example(tmp.path());
    let certs = tmp.path().join("certs");
    let root = certs.join("root");
    let o = meshpeer(&["certs", "root-ca", "--out", root.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("SHA-256"));
    for c in ["cluster1", "cluster2"] {
        let out = certs.join(c);
        let o = meshpeer(&[
            "certs",
            "cluster",
            c,
            "--root",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // SPEC P6: bound to the cluster's trust domain (its name by default).
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!("(trust domain {c})")),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("ca-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "keys are private");
        }
    }
    // Writing over existing certificates is refused.
    let o = meshpeer(&["certs", "root-ca", "--out", root.to_str().unwrap()]);
    assert!(!o.status.success());

    let r1 = controller(&c1, &certs.join("cluster1"));
    let r2 = controller(&c2, &certs.join("cluster2"));
    for (r, peer) in [(&r1, "cluster2"), (&r2, "cluster1")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = meshpeer(&["status", "--controller", &r.api]);
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            let synced = out
                .lines()
                .any(|l| l.starts_with(peer) && l.contains("Synced"));
            let served = out
                .lines()
                .any(|l| l.starts_with(peer) && l.contains("spiffe://"));
            if o.status.success() && synced && served {
                assert!(out.contains("Exports 2 services"), "{out}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "status never showed {peer} synced:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The generated ServiceEntries are in the output folder, as render prints them.
    let out = c1.join(".meshpeer/out");
    assert!(out.join("autogen.httpbin.in-ambient.yaml").exists());
    assert!(
        out.join("status/istio-eastwest.istio-remote-peer-cluster2.yaml")
            .exists()
    );
    // JSON status for tools.
    let o = meshpeer(&["status", "--controller", &r1.api, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["peers"][0]["cluster"], "cluster2");
    assert_eq!(v["peers"][0]["state"], "synced");
    // The catalog stream for the data plane: one JSON document per line.
    let first = http_first_line_of_body(&r1.api, "/v1/catalog/watch");
    let doc: serde_json::Value = serde_json::from_str(&first).unwrap();
    let hosts: Vec<&str> = doc["catalog"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts,
        [
            "client-in-ambient.httpbin.mesh.internal",
            "in-ambient.httpbin.mesh.internal"
        ]
    );
    // Metrics.
    let metrics = http_get(&r1.api, "/metrics");
    for m in [
        "meshpeer_peering_peer_connected{peer=\"cluster2\"} 1",
        "meshpeer_controller_catalog_services 2",
        "meshpeer_peering_delta_ack_seconds_bucket",
    ] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }
    // The Global services page of cluster1 (SPEC O6): its own cluster, the
    // global names with both clusters contributing, the peer synced.
    let page = http_get(&r1.web, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/html"), "{page}");
    let body = |r: String| r.split_once("\r\n\r\n").unwrap().1.to_owned();
    let list: serde_json::Value =
        serde_json::from_str(&body(http_get(&r1.web, "/api/v1/services"))).unwrap();
    assert_eq!(list["cluster"], "cluster1");
    let row = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["hostname"] == "in-ambient.httpbin.mesh.internal")
        .unwrap_or_else(|| panic!("in-ambient on the page: {list}"));
    assert_eq!(row["clusters"], serde_json::json!(["cluster1", "cluster2"]));
    let peers: serde_json::Value =
        serde_json::from_str(&body(http_get(&r1.web, "/api/v1/peers"))).unwrap();
    assert_eq!(peers["peers"][0]["cluster"], "cluster2", "{peers}");
    drop(r2);
    drop(r1);
}

/// A whole HTTP/1.1 GET response (connection closed by the server).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
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

/// The first line of a streamed (chunked) body.
fn http_first_line_of_body(addr: &str, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // Headers, then the chunk size line, then the chunk's data.
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        assert!(!line.is_empty(), "connection closed in the headers");
    }
    line.clear();
    r.read_line(&mut line).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

#[test]
fn p6_controller_and_status_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let (c1, _) = copy_example(tmp.path());
    let o = meshpeer(&[
        "controller",
        "--cluster-dir",
        c1.to_str().unwrap(),
        "--cacerts",
        "/nonexistent",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot load cluster cluster1's CA from /nonexistent"),
        "{err}"
    );
    assert!(err.contains("meshpeer certs cluster cluster1"), "{err}");

    // SPEC P6: an intermediate bound to another trust domain cannot run
    // this cluster's controller.
    let certs = tmp.path().join("certs");
    let root = certs.join("root");
    assert!(
        meshpeer(&["certs", "root-ca", "--out", root.to_str().unwrap()])
            .status
            .success()
    );
    let other = certs.join("other");
    let o = meshpeer(&[
        "certs",
        "cluster",
        "cluster1",
        "--trust-domain",
        "cluster9",
        "--root",
        root.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = meshpeer(&[
        "controller",
        "--cluster-dir",
        c1.to_str().unwrap(),
        "--cacerts",
        other.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "is bound to trust domain cluster9, but cluster cluster1 has trust domain cluster1"
        ) && err.contains("meshpeer certs cluster cluster1 --trust-domain cluster1"),
        "{err}"
    );

    let o = meshpeer(&["status", "--controller", "127.0.0.1:1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot reach the controller at 127.0.0.1:1"),
        "{err}"
    );
}
