//! `meshpeer demo` end to end: the real binary runs a scenario, and the
//! seed walkthroughs are replayed the way a user would, with `meshpeer demo
//! curl`, `demo scale` and `demo label` against the running demo (SPEC R1).
//!
//! The demo listens on fixed addresses (the examples' gateways, DNS on
//! 127.0.0.1:15153/15253), so these tests run one at a time (nextest group
//! `fixed-ports`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(30);

struct Demo {
    child: Child,
    state: PathBuf,
    /// The demo's stdout lines, as they come.
    lines: mpsc::Receiver<String>,
    /// Where the Global services page is served (from the demo's summary).
    page: Option<String>,
}

impl Demo {
    /// Runs `meshpeer demo SCENARIO --state STATE EXTRA...` until it is live.
    fn start(state: &Path, scenario: &str, extra: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
            .args(["demo", scenario, "--state"])
            .arg(state)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut demo = Demo {
            child,
            state: state.to_owned(),
            lines,
            page: None,
        };
        let seen = demo.wait_line("Live status");
        demo.page = seen.iter().find_map(|l| {
            let rest = l.strip_prefix("Global services page: http://")?;
            Some(rest.split('/').next()?.to_owned())
        });
        demo
    }

    /// GET `path` from the Global services page's JSON API.
    fn api(&self, path: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        let addr = self
            .page
            .as_deref()
            .expect("the demo printed its page address");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WITHIN)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The hostnames the page lists for `cluster`.
    fn page_hostnames(&self, cluster: &str) -> Vec<String> {
        let list = self.api(&format!("/api/v1/services?cluster={cluster}"));
        list["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["hostname"].as_str().unwrap().to_owned())
            .collect()
    }

    /// SIGTERM, and the demo's goodbye.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        self.wait_line("stopped; the cluster folders stay in");
        assert!(self.child.wait().unwrap().success());
    }

    /// Waits for a stdout line containing `text`; returns the lines up to it.
    fn wait_line(&self, text: &str) -> Vec<String> {
        let deadline = Instant::now() + WITHIN;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(text);
                    seen.push(l);
                    if hit {
                        return seen;
                    }
                }
                Err(e) => panic!(
                    "no line {text:?} from the demo ({e}); saw:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    fn meshpeer(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_meshpeer"))
            .args(args)
            .arg("--state")
            .arg(&self.state)
            .output()
            .unwrap()
    }

    /// `meshpeer demo <args>` that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let mut all = vec!["demo"];
        all.extend_from_slice(args);
        let out = self.meshpeer(&all);
        assert!(
            out.status.success(),
            "meshpeer {all:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `meshpeer demo curl --cluster C URL`: the body, or the exit code and stderr.
    fn curl(&self, cluster: &str, url: &str) -> Result<String, (i32, String)> {
        let out = self.meshpeer(&["demo", "curl", "--cluster", cluster, url]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }

    /// The `hostname` httpbin's `/hostname` answered from `cluster`.
    fn hostname(&self, cluster: &str, host: &str) -> Result<String, (i32, String)> {
        let body = self.curl(cluster, &format!("http://{host}:8000/hostname"))?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("not httpbin's answer: {body:?}: {e}"));
        Ok(v["hostname"].as_str().unwrap().to_owned())
    }

    /// `meshpeer demo scale --cluster CLUSTER -n NS deployment/NAME
    /// --replicas N`, which must succeed; its stdout.
    fn scale(&self, cluster: &str, ns: &str, deployment: &str, replicas: usize) -> String {
        self.ok(&[
            "scale",
            "--cluster",
            cluster,
            "-n",
            ns,
            &format!("deployment/{deployment}"),
            "--replicas",
            &replicas.to_string(),
        ])
    }

    /// `meshpeer demo curl` with extra arguments (`-H`, `-X`, `-i`).
    fn curl_with(&self, cluster: &str, args: &[&str], url: &str) -> Result<String, (i32, String)> {
        let mut all = vec!["demo", "curl", "--cluster", cluster];
        all.extend_from_slice(args);
        all.push(url);
        let out = self.meshpeer(&all);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }

    /// Repeats `probe` until `pred` holds, within [`WITHIN`].
    fn until<T: std::fmt::Debug>(
        &self,
        what: &str,
        mut probe: impl FnMut() -> T,
        pred: impl Fn(&T) -> bool,
    ) {
        let deadline = Instant::now() + WITHIN;
        loop {
            let v = probe();
            if pred(&v) {
                return;
            }
            if Instant::now() > deadline {
                panic!("{what}: still {v:?} after {WITHIN:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kubectl label --local -f FILE LABEL --overwrite -o yaml > tmp && mv tmp FILE`
    /// in the httpbin scenario's `cluster` folder.
    fn kubectl_label(&self, cluster: &str, file: &str, label: &str) {
        let path = self.folder("httpbin", cluster).join(file);
        let out = Command::new("kubectl")
            .args(["label", "--local", "-f"])
            .arg(&path)
            .args([label, "--overwrite", "-o", "yaml"])
            // No cluster is asked; keep any kubeconfig of the machine out.
            .env("KUBECONFIG", self.state.join("no-kubeconfig"))
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "this test runs the real kubectl (scripts/test.sh installs Debian's kubernetes-client): {e}"
                )
            });
        assert!(
            out.status.success(),
            "kubectl label --local: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Written beside the scenario, then renamed into the watched folder.
        let tmp = self.state.join("httpbin").join(format!(".{file}.tmp"));
        std::fs::write(&tmp, &out.stdout).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    fn folder(&self, scenario: &str, cluster: &str) -> std::path::PathBuf {
        self.state.join(scenario).join(cluster)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGTERM: the demo shuts down cleanly and removes its runtime file.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
    }
}

const C1_POD: &str = "in-ambient-5c64bb49cd-m9kwm";
const C2_POD: &str = "in-ambient-b86fbcb48-6rvhp";
const MESH: &str = "in-ambient.httpbin.mesh.internal";
const NXDOMAIN: i32 = 6;

fn five(demo: &Demo, cluster: &str, host: &str) -> Vec<String> {
    (0..5)
        .map(|_| {
            demo.hostname(cluster, host)
                .unwrap_or_else(|e| panic!("{host}: {e:?}"))
        })
        .collect()
}

fn nxdomain(r: &Result<String, (i32, String)>) -> bool {
    matches!(r, Err((NXDOMAIN, e)) if e.contains("NXDOMAIN"))
}

#[test]
fn r1_httpbin_replays_seed_004() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(tmp.path(), "httpbin", &[]);
    assert!(
        demo.folder("httpbin", "cluster1")
            .join("httpbin.yaml")
            .exists()
    );
    assert!(tmp.path().join("httpbin/certs/root/root-cert.pem").exists());

    // The page (SPEC O6) shows both clusters and the global name, with
    // both clusters contributing.
    let clusters = demo.api("/api/v1/clusters");
    let names: Vec<&str> = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cluster1", "cluster2"]);
    let services = demo.api("/api/v1/services?cluster=cluster1");
    let row = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["hostname"] == MESH)
        .unwrap_or_else(|| panic!("{MESH} on the page: {services}"));
    assert_eq!(row["clusters"], serde_json::json!(["cluster1", "cluster2"]));

    // Step 5: the global names; PreferNetwork keeps cluster1's clients local.
    assert_eq!(five(&demo, "cluster1", MESH), vec![C1_POD; 5]);
    assert_eq!(five(&demo, "cluster2", MESH), vec![C2_POD; 5]);

    // Scale to zero in cluster1: its clients are served by cluster2.
    let out = demo.scale("cluster1", "httpbin", "in-ambient", 0);
    assert!(out.contains("deployment.apps/in-ambient scaled"), "{out}");
    // Every request from cluster1 is one connection through its proxy:
    // counted where it went (issue 16). 5 stayed home above.
    let mut went = std::collections::BTreeMap::from([("cluster1", 5u64)]);
    let deadline = Instant::now() + WITHIN;
    loop {
        let r = demo.hostname("cluster1", MESH);
        let to = match r.as_deref() {
            Ok(C1_POD) => "cluster1",
            Ok(C2_POD) => "cluster2",
            _ => "none",
        };
        *went.entry(to).or_default() += 1;
        if to == "cluster2" {
            break;
        }
        assert!(Instant::now() < deadline, "cluster2 never served: {r:?}");
    }
    assert_eq!(five(&demo, "cluster1", MESH), vec![C2_POD; 5]);
    *went.entry("cluster2").or_default() += 5;

    // The Traffic view's API (the controllers' GET /v1/traffic): cluster1's
    // proxy counted exactly the requests that crossed, and cluster2's
    // gateway the same connections, byte for byte.
    let flow = |cluster: &str, reporter: &str, from: &str, to: &str| {
        let doc = demo.api(&format!("/api/v1/traffic?cluster={cluster}"));
        doc["flows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| {
                f["reporter"] == reporter
                    && f["sourceCluster"] == from
                    && f["destinationCluster"] == to
                    && f["service"] == MESH
            })
            .cloned()
            .unwrap_or_default()
    };
    // A request that failed while cluster1's pod was going (`none`) was
    // counted where the proxy tried it, which the client cannot tell.
    let failed = went.remove("none").unwrap_or(0);
    for (to, n) in &went {
        demo.until(
            &format!(
                "cluster1's proxy reports {n} connections to {to} (and up to {failed} failed)"
            ),
            || flow("cluster1", "proxy", "cluster1", to)["connections"].as_u64(),
            |c| c.is_some_and(|c| c >= *n && c <= *n + failed),
        );
    }
    let crossed = flow("cluster1", "proxy", "cluster1", "cluster2")["connections"]
        .as_u64()
        .unwrap_or_default();
    demo.until(
        "cluster2's gateway reports the same connections",
        || flow("cluster2", "gateway", "cluster1", "cluster2")["connections"].as_u64(),
        |c| *c == Some(crossed),
    );
    // The gateway counts a tunnel's bytes as they pass: a report may come
    // between its opening and its last byte.
    demo.until(
        "both sides count the same bytes",
        || {
            let out = flow("cluster1", "proxy", "cluster1", "cluster2");
            let at = flow("cluster2", "gateway", "cluster1", "cluster2");
            [
                &out["failures"],
                &out["bytesSent"],
                &out["bytesReceived"],
                &at["bytesSent"],
                &at["bytesReceived"],
            ]
            .map(|v| v.as_u64().unwrap_or(u64::MAX))
        },
        |[failures, sent, received, at_sent, at_received]| {
            *failures == 0 && *sent > 0 && sent == at_sent && received == at_received
        },
    );
    demo.scale("cluster1", "httpbin", "in-ambient", 1);
    demo.until(
        "back to cluster1",
        || demo.hostname("cluster1", MESH),
        |r| r.as_deref() == Ok(C1_POD),
    );

    // Segments: cluster1 joins dev, cluster2 prod. mesh.internal is gone;
    // the segment names answer, across segments while the scope is global.
    // cluster1 the way the README shows for any folder: real kubectl, on the
    // file holding the namespace (and the Segments: kubectl prints them one
    // after the other without `---`, which the folder reader accepts).
    demo.kubectl_label(
        "cluster1",
        "istio-system.yaml",
        "admin.solo.io/segment=dev-segment",
    );
    demo.ok(&[
        "label",
        "--cluster",
        "cluster2",
        "namespace",
        "istio-system",
        "admin.solo.io/segment=prod-segment",
        "--overwrite",
    ]);
    demo.until(
        "mesh.internal gone",
        || demo.hostname("cluster1", MESH),
        nxdomain,
    );
    let dev = "in-ambient.httpbin.cluster.dev";
    let prod = "in-ambient.httpbin.cluster.prod";
    demo.until(
        "cluster.dev",
        || demo.hostname("cluster1", dev),
        |r| r.as_deref() == Ok(C1_POD),
    );
    demo.until(
        "cluster.prod from dev",
        || demo.hostname("cluster1", prod),
        |r| r.as_deref() == Ok(C2_POD),
    );
    assert_eq!(five(&demo, "cluster1", prod), vec![C2_POD; 5]);
    // The page follows: the segment names, mesh.internal gone.
    demo.until(
        "the page lists the segment names",
        || demo.page_hostnames("cluster1"),
        |h| {
            h.iter().any(|n| n == dev)
                && h.iter().any(|n| n == prod)
                && !h.iter().any(|n| n == MESH)
        },
    );

    // Segment scope: the prod name no longer resolves from dev.
    for c in ["cluster1", "cluster2"] {
        demo.ok(&[
            "label",
            "--cluster",
            c,
            "-n",
            "httpbin",
            "svc",
            "in-ambient",
            "solo.io/service-scope=segment",
            "--overwrite",
        ]);
    }
    demo.until(
        "prod hidden from dev",
        || demo.hostname("cluster1", prod),
        nxdomain,
    );
    assert_eq!(five(&demo, "cluster1", dev), vec![C1_POD; 5]);
    assert_eq!(demo.hostname("cluster2", prod).unwrap(), C2_POD);

    // Takeover: both clusters in dev; the cluster-local name spans both.
    demo.ok(&[
        "label",
        "--cluster",
        "cluster2",
        "namespace",
        "istio-system",
        "admin.solo.io/segment=dev-segment",
        "--overwrite",
    ]);
    for c in ["cluster1", "cluster2"] {
        demo.ok(&[
            "label",
            "--cluster",
            c,
            "-n",
            "httpbin",
            "svc/in-ambient",
            "solo.io/service-takeover=true",
        ]);
    }
    let local = "in-ambient.httpbin.svc.cluster.local";
    demo.until(
        "takeover",
        || demo.hostname("cluster1", local),
        |r| r.as_deref() == Ok(C1_POD),
    );
    demo.scale("cluster1", "httpbin", "in-ambient", 0);
    demo.until(
        "takeover spans cluster2",
        || demo.hostname("cluster1", local),
        |r| r.as_deref() == Ok(C2_POD),
    );
    assert_eq!(five(&demo, "cluster1", local), vec![C2_POD; 5]);

    // A name nobody has: NXDOMAIN, curl's exit code 6.
    assert!(nxdomain(
        &demo.hostname("cluster1", "nope.httpbin.cluster.dev")
    ));
}

#[test]
fn r1_bookinfo_productpage_of_seed_000_from_both_clusters() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(tmp.path(), "bookinfo", &[]);
    let url = "http://productpage.bookinfo.mesh.internal:9080/productpage";
    for from in ["cluster1", "cluster2"] {
        // `Any`: both clusters' productpages answer, 200 with the title.
        let mut seen = std::collections::BTreeSet::new();
        demo.until(
            "both clusters' productpage",
            || {
                let body = demo
                    .curl(from, url)
                    .unwrap_or_else(|e| panic!("{url}: {e:?}"));
                assert!(
                    body.contains("<title>Simple Bookstore App</title>"),
                    "{body}"
                );
                let cluster = body
                    .rsplit(" in ")
                    .next()
                    .unwrap_or("")
                    .split('<')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                seen.insert(cluster);
                seen.clone()
            },
            |s| s.contains("cluster1") && s.contains("cluster2"),
        );
    }
    // Scale cluster1's productpage to zero: every answer is cluster2's, 200.
    demo.scale("cluster1", "bookinfo", "productpage-v1", 0);
    let served_by = |from: &str| {
        let body = demo
            .curl(from, url)
            .unwrap_or_else(|e| panic!("{url}: {e:?}"));
        body.contains("in cluster2</p>")
    };
    demo.until(
        "only cluster2",
        || (0..5).all(|_| served_by("cluster1")),
        |all| *all,
    );
    demo.scale("cluster1", "bookinfo", "productpage-v1", 1);
    demo.until("cluster1 back", || served_by("cluster1"), |c2| !*c2);

    // Cluster-local services stay local: no global name for reviews.
    let r = demo.curl("cluster1", "http://reviews.bookinfo.mesh.internal:9080/");
    assert!(nxdomain(&r), "{r:?}");
}

#[test]
fn r1_demo_state_survives_a_restart_and_reset_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    let demo = Demo::start(state, "httpbin", &[]);
    demo.ok(&[
        "label",
        "--cluster",
        "cluster1",
        "-n",
        "httpbin",
        "svc",
        "in-ambient",
        "solo.io/service-scope-",
    ]);
    demo.until(
        "unlabelled",
        || demo.hostname("cluster1", MESH),
        |r| r.as_deref() == Ok(C2_POD),
    );
    let root = std::fs::read(state.join("httpbin/certs/root/root-cert.pem")).unwrap();
    demo.stop();
    assert!(
        !state.join("httpbin/demo.json").exists(),
        "runtime file removed"
    );
    let e = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .args([
            "demo",
            "curl",
            "--cluster",
            "cluster1",
            "http://x:80/",
            "--state",
        ])
        .arg(state)
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("no running demo"),
        "{e:?}"
    );

    // Started again: the edit is still there, the certificates too.
    let again = Demo::start(state, "httpbin", &[]);
    assert_eq!(again.hostname("cluster1", MESH).unwrap(), C2_POD);
    again.stop();
    let fresh = Demo::start(state, "httpbin", &["--reset"]);
    fresh.until(
        "reset",
        || fresh.hostname("cluster1", MESH),
        |r| r.as_deref() == Ok(C1_POD),
    );
    assert_eq!(
        std::fs::read(state.join("httpbin/certs/root/root-cert.pem")).unwrap(),
        root
    );
}

/// Seed 002's flat network (issue 15, item 7): both clusters on one
/// network. cluster2's Pods are reached directly, without a gateway, and
/// cluster1's output names them as `autogenflat.<cluster>.<namespace>.<pod>.<hash>`
/// WorkloadEntries; after a scale to zero in cluster1 the answers come from
/// cluster2's Pod; `check`'s Stale Workloads Check finds nothing stale, and
/// once cluster2's Pod is gone its entry goes from the output too.
#[test]
fn r1_httpbin_flat_reaches_the_peers_pods_directly_with_autogenflat_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(tmp.path(), "httpbin-flat", &["--no-web"]);
    let host = "in-ambient.httpbin.mesh.internal";
    let workloads = demo
        .folder("httpbin-flat", "cluster1")
        .join(".meshpeer/out/workloadentries");
    let flat = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&workloads)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("autogenflat.cluster2.httpbin.in-ambient-"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    demo.until("cluster2's Pod as an autogenflat entry", flat, |v| {
        v.len() == 1
    });

    demo.scale("cluster1", "httpbin", "in-ambient", 0);
    // cluster2's Pod answers, dialled directly (its name is in the entry).
    let entry = flat().remove(0);
    demo.until(
        "only cluster2's Pod answers",
        || {
            (0..3)
                .map(|_| demo.hostname("cluster1", host).unwrap())
                .collect::<Vec<_>>()
        },
        |names| {
            names
                .iter()
                .all(|n| n.starts_with("in-ambient-") && entry.contains(&format!(".{n}.")))
        },
    );

    // Both outputs together: cluster2's two Pods in cluster1's, cluster1's
    // remaining client Pod in cluster2's.
    let c1 = demo.folder("httpbin-flat", "cluster1");
    let c2 = demo.folder("httpbin-flat", "cluster2");
    let out = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .args(["check", "--cluster"])
        .arg(&c1)
        .arg("--cluster")
        .arg(&c2)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("✅ Stale Workloads Check: 3 autogenflat workload entries, none stale"),
        "{text}"
    );

    // cluster2's Pod goes: its entry leaves cluster1's output.
    demo.scale("cluster2", "httpbin", "in-ambient", 0);
    demo.until("the autogenflat entry is removed", flat, Vec::is_empty);
}

/// Seed 001 ("Subset routing"): reviews-v1 served in cluster1 and
/// reviews-v2 in cluster2, both global; the HTTPRoute on the logical
/// `reviews` in cluster1 sends `end-user: jason` to v2, everyone else to
/// v1 (L1-L3). The route applies once `reviews` is global; scaling v1 to
/// zero leaves everyone but jason with a 503 naming the empty backend.
#[test]
fn r1_bookinfo_subsets_replays_seed_001() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start(tmp.path(), "bookinfo-subsets", &["--no-web"]);
    let url = "http://reviews.bookinfo.mesh.internal:9080/";
    let jason = ["-H", "end-user: jason"];
    // Not global yet: no name, and the route says why it is not accepted.
    assert!(nxdomain(&demo.curl("cluster1", url)));
    demo.ok(&[
        "label",
        "--cluster",
        "cluster1",
        "-n",
        "bookinfo",
        "svc",
        "reviews",
        "solo.io/service-scope=global",
    ]);
    let who = |args: &[&str]| -> String {
        match demo.curl_with("cluster1", args, url) {
            Ok(body) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                format!(
                    "{}@{}",
                    v["hostname"].as_str().unwrap(),
                    v["cluster"].as_str().unwrap()
                )
            }
            Err((code, e)) => format!("error {code}: {e}"),
        }
    };
    demo.until(
        "jason reaches v2 in cluster2",
        || who(&jason),
        |w| w.starts_with("reviews-v2-") && w.ends_with("@cluster2"),
    );
    for _ in 0..3 {
        assert!(who(&jason).ends_with("@cluster2"));
        let other = who(&["-H", "end-user: alice"]);
        assert!(
            other.starts_with("reviews-v1-") && other.ends_with("@cluster1"),
            "{other}"
        );
        let nobody = who(&[]);
        assert!(nobody.starts_with("reviews-v1-"), "{nobody}");
    }
    // -X and -H as curl: a POST is routed the same way.
    let post = demo
        .curl_with("cluster1", &["-X", "POST", "-H", "end-user: jason"], url)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(
        post.contains("\"method\":\"POST\"") && post.contains("\"cluster\":\"cluster2\""),
        "{post}"
    );
    // The route is cluster1's: cluster2's clients reach reviews' own pods.
    let from2 = demo
        .curl_with("cluster2", &jason, url)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(from2.contains("\"cluster\":\"cluster1\""), "{from2}");

    // reviews-v1 scaled to zero: the route still sends everyone else
    // there, and they get a 503 that says so; jason still gets v2.
    demo.scale("cluster1", "bookinfo", "reviews-v1", 0);
    demo.until("v1 gone", || who(&[]), |w| w.starts_with("error 22"));
    let err = who(&[]);
    assert!(err.contains("HTTP 503"), "{err}");
    assert!(who(&jason).ends_with("@cluster2"));
    let head = demo.curl_with("cluster1", &["-i"], url).unwrap_err();
    assert_eq!(head.0, 22);
    demo.scale("cluster1", "bookinfo", "reviews-v1", 1);
    demo.until("v1 back", || who(&[]), |w| w.starts_with("reviews-v1-"));
}
