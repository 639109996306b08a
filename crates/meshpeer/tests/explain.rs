//! `meshpeer explain` on the seed scenarios, through the real binary: why a
//! name resolves or not, cluster by cluster, and where it goes (issue 16).
//! Each scenario edits a copy of an example as the seeds' steps do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A writable copy of `examples/<scenario>`.
fn copy_example(scenario: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for cluster in ["cluster1", "cluster2"] {
        let from = examples().join(scenario).join(cluster);
        let to = tmp.path().join(cluster);
        fs::create_dir_all(&to).unwrap();
        for entry in fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    tmp
}

/// Replaces the first `from` by `to` in `<root>/<cluster>/<file>`.
fn edit(root: &Path, cluster: &str, file: &str, from: &str, to: &str) {
    let path = root.join(cluster).join(file);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Labels `istio-system` of `cluster` with `admin.solo.io/segment=<segment>`.
fn join_segment(root: &Path, cluster: &str, segment: &str) {
    edit(
        root,
        cluster,
        "istio-system.yaml",
        &format!("topology.istio.io/network: {cluster}"),
        &format!("topology.istio.io/network: {cluster}\n    admin.solo.io/segment: {segment}"),
    );
}

/// `meshpeer explain TARGET --from FROM` over both clusters of `root`:
/// (exit code, stdout lines, trimmed).
fn explain(root: &Path, target: &str, from: &str) -> (i32, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .arg("explain")
        .arg(target)
        .args(["--from", from, "--cluster"])
        .arg(root.join("cluster1"))
        .arg("--cluster")
        .arg(root.join("cluster2"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.is_empty() || out.status.code() == Some(1),
        "{stderr}"
    );
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

fn json(root: &Path, target: &str, from: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .arg("explain")
        .arg(target)
        .args(["--from", from, "-o", "json", "--cluster"])
        .arg(root.join("cluster1"))
        .arg("--cluster")
        .arg(root.join("cluster2"))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[track_caller]
fn has(lines: &[String], want: &str) {
    assert!(
        lines.iter().any(|l| l == want),
        "no line {want:?} in:\n{}",
        lines.join("\n")
    );
}

#[test]
fn httpbin_in_ambient_from_cluster1_line_by_line() {
    let tmp = copy_example("httpbin");
    let (code, lines) = explain(
        tmp.path(),
        "in-ambient.httpbin.mesh.internal:8000",
        "cluster1",
    );
    assert_eq!(code, 0);
    let want = [
        "in-ambient.httpbin.mesh.internal:8000 from cluster1",
        "(from the objects of the clusters read (cluster1, cluster2), as if linked and running)",
        "in-ambient.httpbin.mesh.internal resolves in cluster1:",
        "✅ in-ambient.httpbin.mesh.internal resolves in cluster1 to 240.241.205.7 (VIP), ports 8000/http (HTTP) [G11]",
        "✅ cluster1 exports httpbin/in-ambient as in-ambient.httpbin.mesh.internal: label solo.io/service-scope=global on the Service; cluster1 is in the default segment (mesh.internal) [G1]",
        "✅ cluster1's own endpoints, dialled directly",
        "✅ 1 ready endpoint serving port 8000 in cluster1 [G10]",
        "✅ cluster2 exports httpbin/in-ambient as in-ambient.httpbin.mesh.internal: label solo.io/service-scope=global on the Service; cluster2 is in the default segment (mesh.internal) [G1]",
        "✅ cluster1 links to cluster2 (Gateway istio-eastwest/istio-remote-peer-cluster2), through its east-west gateway 127.0.2.1:15008 over HBONE; network cluster2 [C4]",
        "✅ 1 ready endpoint serving port 8000 in cluster2 [G10]",
        "Traffic distribution: PreferNetwork [T1]",
        "from the default: no cluster sets annotation networking.istio.io/traffic-distribution",
        "Where a connection from cluster1 (network cluster1, locality us-east/us-east-1) goes, tier by tier (the next tier only when no endpoint of this one is healthy) [T2-T6]:",
        "1. cluster1 (cluster1, us-east/us-east-1), local: 1 ready",
        "10.1.0.14:8080 (in-ambient-5c64bb49cd-m9kwm)",
        "2. cluster2 (cluster2, us-west/us-west-1), through 127.0.2.1:15008 (HBONE): 1 ready",
    ];
    assert_eq!(lines, want, "\n{}", lines.join("\n"));

    let j = json(
        tmp.path(),
        "in-ambient.httpbin.mesh.internal:8000",
        "cluster1",
    );
    assert_eq!(j["resolves"], true);
    assert_eq!(j["vip"], "240.241.205.7");
    assert_eq!(j["tiers"][1]["groups"][0]["reach"], "gateway");
    assert_eq!(j["tiers"][1]["groups"][0]["via"][0], "127.0.2.1:15008");
    assert_eq!(j["distribution"]["rule"], "T1");
}

#[test]
fn s3_s5_after_the_segment_step_the_mesh_internal_name_is_gone_and_why() {
    let tmp = copy_example("httpbin");
    join_segment(tmp.path(), "cluster1", "dev-segment");
    join_segment(tmp.path(), "cluster2", "dev-segment");
    let (code, lines) = explain(tmp.path(), "in-ambient.httpbin.mesh.internal", "cluster1");
    assert_eq!(code, 1);
    has(
        &lines,
        "in-ambient.httpbin.mesh.internal does not resolve in cluster1:",
    );
    has(
        &lines,
        "❌ cluster1 exports httpbin/in-ambient as in-ambient.httpbin.cluster.dev, not in-ambient.httpbin.mesh.internal: cluster1 is in segment dev-segment (domain cluster.dev) [S3]",
    );
    has(
        &lines,
        "❌ cluster2 exports httpbin/in-ambient as in-ambient.httpbin.cluster.dev, not in-ambient.httpbin.mesh.internal: cluster2 is in segment dev-segment (domain cluster.dev) [S3]",
    );
    let (code, lines) = explain(tmp.path(), "in-ambient.httpbin.cluster.dev", "cluster1");
    assert_eq!(code, 0, "{}", lines.join("\n"));
    has(
        &lines,
        "✅ cluster2 exports httpbin/in-ambient as in-ambient.httpbin.cluster.dev: label solo.io/service-scope=global on the Service; cluster2 is in segment dev-segment (domain cluster.dev) [G1]",
    );

    // cluster2 moves to prod: its part has another name.
    edit(
        tmp.path(),
        "cluster2",
        "istio-system.yaml",
        "admin.solo.io/segment: dev-segment",
        "admin.solo.io/segment: prod-segment",
    );
    let (code, lines) = explain(tmp.path(), "in-ambient.httpbin.cluster.dev", "cluster1");
    assert_eq!(code, 0);
    has(
        &lines,
        "❌ cluster2 exports httpbin/in-ambient as in-ambient.httpbin.cluster.prod, not in-ambient.httpbin.cluster.dev: cluster2 is in segment prod-segment (domain cluster.prod) [S3]",
    );
    // An unknown domain is said first.
    let (_, lines) = explain(tmp.path(), "in-ambient.httpbin.cluster.qa", "cluster1");
    has(
        &lines,
        "❌ cluster1 answers for mesh.internal, cluster.dev, cluster.prod only; cluster.qa is not the domain of a Segment defined in cluster1 [S3]",
    );
}

#[test]
fn s7_segment_scope_stays_in_its_segment() {
    let tmp = copy_example("httpbin");
    join_segment(tmp.path(), "cluster1", "prod-segment");
    join_segment(tmp.path(), "cluster2", "dev-segment");
    edit(
        tmp.path(),
        "cluster2",
        "httpbin.yaml",
        "solo.io/service-scope: global",
        "solo.io/service-scope: segment",
    );
    let (code, lines) = explain(tmp.path(), "in-ambient.httpbin.cluster.dev", "cluster1");
    assert_eq!(code, 1);
    has(
        &lines,
        "❌ httpbin/in-ambient has scope segment in cluster2 (dev-segment), and cluster1 is in prod-segment [S7]",
    );
    has(
        &lines,
        "at service httpbin/in-ambient, metadata.labels[solo.io/service-scope]=segment",
    );
}

#[test]
fn k1_takeover_makes_the_cluster_local_name_resolve() {
    let tmp = copy_example("httpbin");
    let (code, lines) = explain(
        tmp.path(),
        "in-ambient.httpbin.svc.cluster.local",
        "cluster1",
    );
    assert_eq!(code, 1);
    has(
        &lines,
        "❌ in-ambient.httpbin.svc.cluster.local is Kubernetes' own name in cluster1: cluster1 exports httpbin/in-ambient as in-ambient.httpbin.mesh.internal but does not take it over (label solo.io/service-takeover=true) [K1]",
    );
    edit(
        tmp.path(),
        "cluster1",
        "httpbin.yaml",
        "    solo.io/service-scope: global",
        "    solo.io/service-scope: global\n    solo.io/service-takeover: \"true\"",
    );
    let (code, lines) = explain(
        tmp.path(),
        "in-ambient.httpbin.svc.cluster.local",
        "cluster1",
    );
    assert_eq!(code, 0, "{}", lines.join("\n"));
    has(
        &lines,
        "✅ in-ambient.httpbin.svc.cluster.local is taken over in cluster1: it resolves to 240.241.205.7, the VIP of in-ambient.httpbin.mesh.internal, ports 8000/http (HTTP) [K1]",
    );
    has(
        &lines,
        "✅ cluster1 takes over its own httpbin/in-ambient: in-ambient.httpbin.svc.cluster.local resolves to the VIP too [K1]",
    );
    has(&lines, "Traffic distribution: PreferClose [K3]");
}

#[test]
fn g10_scaled_to_zero_in_cluster1_fails_over_to_cluster2() {
    let tmp = copy_example("httpbin");
    edit(
        tmp.path(),
        "cluster1",
        "httpbin.yaml",
        "  - type: Ready\n    status: \"True\"",
        "  - type: Ready\n    status: \"False\"",
    );
    let (code, lines) = explain(
        tmp.path(),
        "in-ambient.httpbin.mesh.internal:8000",
        "cluster1",
    );
    assert_eq!(code, 0);
    has(
        &lines,
        "❌ no ready endpoint serving port 8000 in cluster1 [G10]",
    );
    has(&lines, "at service httpbin/in-ambient");
    let tiers: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(
        tiers,
        ["1. cluster2 (cluster2, us-west/us-west-1), through 127.0.2.1:15008 (HBONE): 1 ready"]
    );
}

#[test]
fn g1_g3_g5_a_cluster_left_out_says_which_label() {
    let tmp = copy_example("httpbin");
    // Misspelt in cluster2.
    edit(
        tmp.path(),
        "cluster2",
        "httpbin.yaml",
        "solo.io/service-scope: global",
        "solo.io/service_scope: global",
    );
    let (code, lines) = explain(tmp.path(), "in-ambient.httpbin.mesh.internal", "cluster1");
    assert_eq!(code, 0);
    has(
        &lines,
        "❌ cluster2 does not export httpbin/in-ambient: neither the Service nor Namespace httpbin has label solo.io/service-scope (label solo.io/service_scope=global is not solo.io/service-scope: misspelt?) [G1]",
    );
    // A value that is not one.
    edit(
        tmp.path(),
        "cluster2",
        "httpbin.yaml",
        "solo.io/service_scope: global",
        "solo.io/service-scope: globl",
    );
    let (_, lines) = explain(tmp.path(), "in-ambient.httpbin.mesh.internal", "cluster1");
    has(
        &lines,
        "❌ cluster2 does not export httpbin/in-ambient: label solo.io/service-scope=\"globl\" on the Service is not one of global, segment, cluster [G5]",
    );
    has(
        &lines,
        "at service httpbin/in-ambient, metadata.labels[solo.io/service-scope]=globl",
    );
    // Opted out.
    edit(
        tmp.path(),
        "cluster2",
        "httpbin.yaml",
        "solo.io/service-scope: globl",
        "solo.io/service-scope: cluster",
    );
    let (_, lines) = explain(tmp.path(), "in-ambient.httpbin.mesh.internal", "cluster2");
    has(
        &lines,
        "❌ cluster2 keeps httpbin/in-ambient to itself: label solo.io/service-scope=cluster on the Service [G3]",
    );
    // Nowhere at all.
    let (code, lines) = explain(tmp.path(), "nothing.httpbin.mesh.internal", "cluster1");
    assert_eq!(code, 1);
    has(
        &lines,
        "❌ no cluster read (cluster1, cluster2) has a Service httpbin/nothing [G1]",
    );
}

#[test]
fn c4_without_a_link_the_peer_teaches_nothing() {
    let tmp = copy_example("httpbin");
    let path = tmp.path().join("cluster1").join("eastwest.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text
        .split("\n---\n")
        .filter(|d| !d.contains("istio-remote-peer-cluster2"))
        .collect();
    fs::write(&path, kept.join("\n---\n")).unwrap();
    let (code, lines) = explain(tmp.path(), "in-ambient.httpbin.mesh.internal", "cluster1");
    assert_eq!(code, 0);
    has(
        &lines,
        "❌ cluster1 has no link to cluster2 (no Gateway istio-eastwest/istio-remote-peer-cluster2); cluster2 links to cluster1, but a link only teaches the cluster that declares it [C4]",
    );
    // From cluster2 both parts are there.
    let (_, lines) = explain(tmp.path(), "in-ambient.httpbin.mesh.internal", "cluster2");
    has(
        &lines,
        "✅ cluster2 links to cluster1 (Gateway istio-eastwest/istio-remote-peer-cluster1), through its east-west gateway 127.0.1.1:15008 over HBONE; network cluster1 [C4]",
    );
}

#[test]
fn bookinfo_reviews_stays_local_and_productpage_spreads() {
    let tmp = copy_example("bookinfo");
    let (code, lines) = explain(tmp.path(), "reviews.bookinfo.mesh.internal", "cluster1");
    assert_eq!(code, 1);
    has(
        &lines,
        "❌ cluster1 does not export bookinfo/reviews: neither the Service nor Namespace bookinfo has label solo.io/service-scope [G1]",
    );
    has(
        &lines,
        "❌ cluster2 does not export bookinfo/reviews: neither the Service nor Namespace bookinfo has label solo.io/service-scope [G1]",
    );
    let (code, lines) = explain(
        tmp.path(),
        "productpage.bookinfo.mesh.internal:9080",
        "cluster1",
    );
    assert_eq!(code, 0);
    has(&lines, "Traffic distribution: Any [T1]");
    has(
        &lines,
        "from annotation networking.istio.io/traffic-distribution (cluster1=Any, cluster2=Any)",
    );
    // Any: one tier with both clusters.
    let first = lines.iter().position(|l| l.starts_with("1. ")).unwrap();
    assert!(lines[first].starts_with("1. cluster1"), "{}", lines[first]);
    assert!(
        lines[first + 1..]
            .iter()
            .take_while(|l| !l.starts_with("2. "))
            .any(|l| l.starts_with("cluster2 (cluster2")),
        "{}",
        lines.join("\n")
    );
    assert!(!lines.iter().any(|l| l.starts_with("2. ")));
}

#[test]
fn bad_input_says_what_is_allowed() {
    let tmp = copy_example("httpbin");
    let out = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .args([
            "explain",
            "in-ambient.httpbin.mesh.internal:http",
            "--cluster",
        ])
        .arg(tmp.path().join("cluster1"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an error, not an answer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "\"http\" in \"in-ambient.httpbin.mesh.internal:http\" is not a port (1-65535)"
        ),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .args([
            "explain",
            "x.y.mesh.internal",
            "--from",
            "cluster9",
            "--cluster",
        ])
        .arg(tmp.path().join("cluster1"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster \"cluster9\" is not among the clusters read (cluster1)"),
        "{err}"
    );
}

/// `meshpeer explain` with a request (`-H`, `-X`, `--path`), over both
/// clusters of `root`: stdout lines, trimmed.
fn explain_request(root: &Path, target: &str, from: &str, request: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .arg("explain")
        .arg(target)
        .args(["--from", from])
        .args(request)
        .arg("--cluster")
        .arg(root.join("cluster1"))
        .arg("--cluster")
        .arg(root.join("cluster2"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Seed 001: which rule of reviews' HTTPRoute a request takes, and where
/// it sends it (L2, L3).
#[test]
fn l3_explain_names_the_rule_a_request_takes_and_its_backends() {
    let tmp = copy_example("bookinfo");
    for c in ["cluster1", "cluster2"] {
        fs::copy(
            examples()
                .join("bookinfo/subsets")
                .join(c)
                .join("subsets.yaml"),
            tmp.path().join(c).join("subsets.yaml"),
        )
        .unwrap();
    }
    edit(
        tmp.path(),
        "cluster1",
        "bookinfo.yaml",
        "  name: reviews\n  namespace: bookinfo\n  labels:\n",
        "  name: reviews\n  namespace: bookinfo\n  labels:\n    solo.io/service-scope: global\n",
    );
    let host = "reviews.bookinfo.mesh.internal:9080";
    let lines = explain_request(tmp.path(), host, "cluster1", &["-H", "end-user: jason"]);
    let at = lines
        .iter()
        .position(|l| l.starts_with("L7 routes of reviews.bookinfo.mesh.internal:9080"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(
        lines[at + 1..],
        [
            "➜ bookinfo/reviews#0: path under /, header end-user = jason",
            "bookinfo/reviews#1: path under /",
            "GET / end-user: jason takes bookinfo/reviews#0",
            "-> reviews-v2.bookinfo.mesh.internal:9080 weight 1 (100%) [L2]",
        ]
    );
    let lines = explain_request(
        tmp.path(),
        host,
        "cluster1",
        &["-X", "post", "--path", "/x?y=1"],
    );
    assert!(
        lines.contains(&"POST /x?y=1 takes bookinfo/reviews#1".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines
            .contains(&"-> reviews-v1.bookinfo.mesh.internal:9080 weight 1 (100%) [L2]".to_owned())
    );
    // Routes are cluster1's: from cluster2 the name has none.
    let lines = explain_request(tmp.path(), host, "cluster2", &["-H", "end-user: jason"]);
    assert!(
        !lines.iter().any(|l| l.starts_with("L7 routes")),
        "{lines:#?}"
    );
}
