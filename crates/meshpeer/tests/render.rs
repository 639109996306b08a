//! `meshpeer render` on the example clusters, through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshpeer_crdcheck::Validator;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn meshpeer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .args(args)
        .output()
        .expect("run meshpeer")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
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

/// Replaces `from` by `to` in a file; the text must be there.
fn edit(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    assert!(
        text.contains(from),
        "{} does not contain {from:?}",
        path.display()
    );
    fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn dirs(root: &Path) -> [String; 2] {
    [
        root.join("cluster1").display().to_string(),
        root.join("cluster2").display().to_string(),
    ]
}

fn table_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn schemas() -> Validator {
    Validator::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")).unwrap()
}

#[test]
fn httpbin_example_prints_the_seeds_service_entries() {
    let ex = examples().join("httpbin");
    for view in ["cluster1", "cluster2"] {
        let o = meshpeer(&[
            "render",
            ex.join("cluster1").to_str().unwrap(),
            ex.join("cluster2").to_str().unwrap(),
            "--view",
            view,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stderr(&o), "", "the examples are clean");
        let rows = table_rows(&stdout(&o));
        assert_eq!(
            rows,
            [
                vec!["NAME", "HOSTS", "LOCATION", "RESOLUTION", "AGE"],
                vec![
                    "autogen.httpbin.client-in-ambient",
                    "[\"client-in-ambient.httpbin.mesh.internal\"]",
                    "MESH_INTERNAL",
                    "STATIC",
                    "<unknown>"
                ],
                vec![
                    "autogen.httpbin.in-ambient",
                    "[\"in-ambient.httpbin.mesh.internal\"]",
                    "MESH_INTERNAL",
                    "STATIC",
                    "<unknown>"
                ],
            ]
        );
    }
}

#[test]
fn bookinfo_example_prints_productpage_with_any() {
    let ex = examples().join("bookinfo");
    let o = meshpeer(&[
        "render",
        ex.join("cluster1").to_str().unwrap(),
        ex.join("cluster2").to_str().unwrap(),
        "-o",
        "json",
        "--istio-flavor",
        "solo",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let se = &items[0];
    assert_eq!(se["metadata"]["name"], "autogen.bookinfo.productpage");
    assert_eq!(se["spec"]["hosts"][0], "productpage.bookinfo.mesh.internal");
    assert_eq!(
        se["metadata"]["annotations"]["networking.istio.io/traffic-distribution"],
        "Any"
    );
    assert_eq!(
        se["metadata"]["annotations"]["meshpeer.io/clusters"],
        "cluster1,cluster2"
    );
    // cluster1's productpage endpoint, and cluster2's through its gateway.
    let eps = se["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2, "{eps:#?}");
    assert_eq!(eps[0]["labels"]["topology.istio.io/cluster"], "cluster1");
    assert_eq!(eps[0]["ports"]["http"], 9080);
    assert_eq!(eps[1]["network"], "cluster2");
    assert_eq!(eps[1]["weight"], 1);
    schemas().validate(se).unwrap();
}

#[test]
fn yaml_output_is_valid_kubernetes_input() {
    let ex = examples().join("httpbin");
    let o = meshpeer(&[
        "render",
        ex.join("cluster1").to_str().unwrap(),
        ex.join("cluster2").to_str().unwrap(),
        "-o",
        "yaml",
    ]);
    assert!(o.status.success());
    let text = stdout(&o);
    // Read back as Kubernetes objects.
    let parsed = meshpeer_model::parse_documents("out.yaml", &text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    // Two ServiceEntries (upstream flavor, the default), each with the
    // WorkloadEntries it selects.
    let entries = parsed
        .objects
        .iter()
        .filter(|o| matches!(o, meshpeer_model::Object::ServiceEntry(_)))
        .count();
    assert_eq!(entries, 2);
    assert!(parsed.objects.len() > entries, "no WorkloadEntries");
    // And accepted by the CRD schemas, document by document.
    let validator = schemas();
    for doc in text.split("\n---\n") {
        let v: serde_json::Value = json_of(doc);
        validator.validate(&v).unwrap();
    }
}

/// YAML to JSON through the model's own reader (which keeps types as written).
fn json_of(doc: &str) -> serde_json::Value {
    let parsed = meshpeer_model::parse_documents("doc", doc);
    assert_eq!(parsed.objects.len(), 1);
    parsed.objects[0].to_json()
}

#[test]
fn example_manifests_are_valid_for_the_api_server() {
    let validator = schemas();
    for scenario in ["httpbin", "bookinfo"] {
        for cluster in ["cluster1", "cluster2"] {
            let snap =
                meshpeer_store::load_cluster_dir(&examples().join(scenario).join(cluster)).unwrap();
            assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
            assert_eq!(snap.gateways.len(), 2, "{scenario}/{cluster}");
            for gw in snap.gateways.values() {
                validator
                    .validate(&serde_json::to_value(gw).unwrap())
                    .unwrap_or_else(|v| panic!("{scenario}/{cluster}: {v:?}"));
            }
        }
    }
}

#[test]
fn g5_bad_label_is_a_diagnostic_on_stderr_and_rendering_goes_on() {
    let tmp = copy_example("httpbin");
    edit(
        &tmp.path().join("cluster1/httpbin.yaml"),
        "    service: in-ambient\n    solo.io/service-scope: global",
        "    service: in-ambient\n    solo.io/service-scope: Global",
    );
    let [c1, c2] = dirs(tmp.path());
    let o = meshpeer(&["render", &c1, &c2, "-o", "json"]);
    assert!(o.status.success(), "warnings do not fail rendering");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("warning[G5] service httpbin/in-ambient (cluster cluster1): "),
        "{err}"
    );
    assert!(lines[0].contains("\"Global\""), "{err}");
    assert!(lines[0].contains("did you mean \"global\""), "{err}");
    // in-ambient is still global through cluster2 only.
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let in_ambient = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "autogen.httpbin.in-ambient")
        .unwrap();
    assert_eq!(
        in_ambient["metadata"]["annotations"]["meshpeer.io/clusters"],
        "cluster2"
    );
}

#[test]
fn s3_segments_walkthrough_from_the_seed() {
    let tmp = copy_example("httpbin");
    let [c1, c2] = dirs(tmp.path());
    for (cluster, segment) in [("cluster1", "dev-segment"), ("cluster2", "prod-segment")] {
        edit(
            &tmp.path().join(cluster).join("istio-system.yaml"),
            &format!("    topology.istio.io/network: {cluster}\n"),
            &format!(
                "    topology.istio.io/network: {cluster}\n    admin.solo.io/segment: {segment}\n"
            ),
        );
    }
    // Segments: the mesh.internal names are gone, segment names appear.
    let o = meshpeer(&["render", &c1, &c2]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = table_rows(&stdout(&o))
        .into_iter()
        .skip(1)
        .map(|r| format!("{} {}", r[0], r[1]))
        .collect();
    assert_eq!(
        names,
        [
            "autogen.dev-segment.httpbin.client-in-ambient [\"client-in-ambient.httpbin.cluster.dev\"]",
            "autogen.prod-segment.httpbin.client-in-ambient [\"client-in-ambient.httpbin.cluster.prod\"]",
            "autogen.dev-segment.httpbin.in-ambient [\"in-ambient.httpbin.cluster.dev\"]",
            "autogen.prod-segment.httpbin.in-ambient [\"in-ambient.httpbin.cluster.prod\"]",
        ]
    );
    // Segment scope on in-ambient: cluster1 (dev) no longer has the prod name.
    for cluster in ["cluster1", "cluster2"] {
        edit(
            &tmp.path().join(cluster).join("httpbin.yaml"),
            "    service: in-ambient\n    solo.io/service-scope: global",
            "    service: in-ambient\n    solo.io/service-scope: segment",
        );
    }
    let o = meshpeer(&["render", &c1, &c2]);
    let out = stdout(&o);
    assert!(
        out.contains("[\"in-ambient.httpbin.cluster.dev\"]"),
        "{out}"
    );
    assert!(
        !out.contains("[\"in-ambient.httpbin.cluster.prod\"]"),
        "{out}"
    );
    assert!(
        out.contains("[\"client-in-ambient.httpbin.cluster.prod\"]"),
        "{out}"
    );
    let o = meshpeer(&["render", &c1, &c2, "--view", "cluster2"]);
    let out = stdout(&o);
    assert!(
        out.contains("[\"in-ambient.httpbin.cluster.prod\"]"),
        "{out}"
    );
    assert!(
        !out.contains("[\"in-ambient.httpbin.cluster.dev\"]"),
        "{out}"
    );
}

#[test]
fn unusable_input_fails_with_a_clear_message() {
    let o = meshpeer(&["render", "/nonexistent/cluster1"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/cluster1: no such directory"),
        "{}",
        stderr(&o)
    );

    let empty = tempfile::tempdir().unwrap();
    let o = meshpeer(&["render", empty.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no cluster.yaml"), "{}", stderr(&o));

    let ex = examples().join("httpbin");
    let c1 = ex.join("cluster1");
    let o = meshpeer(&["render", c1.to_str().unwrap(), "--view", "cluster9"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--view cluster9: no such cluster"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("clusters: cluster1"), "{}", stderr(&o));

    let o = meshpeer(&["render", c1.to_str().unwrap(), c1.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cluster names must be unique"),
        "{}",
        stderr(&o)
    );

    let o = meshpeer(&[
        "render",
        c1.to_str().unwrap(),
        "--vip-cidr",
        "240.240.1.0/16",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("did you mean 240.240.0.0/16"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn f1_a_broken_manifest_is_reported_and_the_rest_is_used() {
    let tmp = copy_example("httpbin");
    fs::write(
        tmp.path().join("cluster1/broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n  namespace: httpbin\nspec:\n  ports:\n  - port: eighty\n",
    )
    .unwrap();
    let [c1, c2] = dirs(tmp.path());
    let o = meshpeer(&["render", &c1, &c2]);
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(err.starts_with("error[F1] file "), "{err}");
    assert!(err.contains("broken.yaml"), "{err}");
    assert!(err.contains("document 1 (line 8)"), "{err}");
    assert!(err.contains("spec.ports[0].port"), "{err}");
    assert_eq!(
        table_rows(&stdout(&o)).len(),
        3,
        "the other objects are used"
    );
}

#[test]
fn c4_a_linked_cluster_without_a_folder_is_mentioned() {
    let ex = examples().join("httpbin");
    let o = meshpeer(&["render", ex.join("cluster1").to_str().unwrap()]);
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("info[C4] gateway istio-eastwest/istio-remote-peer-cluster2 (cluster cluster1): links to cluster cluster2, but no folder for it was given"),
        "{err}"
    );
}

/// `meshpeer render` of an example's two folders as `view` sees them, in
/// `flavor`, as YAML.
fn render_example(scenario: &str, view: &str, flavor: &str) -> String {
    let ex = examples().join(scenario);
    let o = meshpeer(&[
        "render",
        ex.join("cluster1").to_str().unwrap(),
        ex.join("cluster2").to_str().unwrap(),
        "--view",
        view,
        "--istio-flavor",
        flavor,
        "-o",
        "yaml",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// What each example renders, in full, as snapshots a reviewer reads in
/// `tests/snapshots/`: a change to any generated object shows up there.
#[test]
fn g7_rendered_examples_match_their_reviewed_snapshots() {
    for scenario in ["httpbin", "bookinfo"] {
        for view in ["cluster1", "cluster2"] {
            insta::assert_snapshot!(
                format!("{scenario}-{view}"),
                render_example(scenario, view, "solo")
            );
        }
    }
}

/// The same, as upstream Istio reads it (`--istio-flavor upstream`, issue
/// 17): ServiceEntries with WorkloadEntries.
#[test]
fn g7_rendered_examples_for_upstream_istio_match_their_reviewed_snapshots() {
    for scenario in ["httpbin", "bookinfo"] {
        for view in ["cluster1", "cluster2"] {
            insta::assert_snapshot!(
                format!("upstream-{scenario}-{view}"),
                render_example(scenario, view, "upstream")
            );
        }
    }
}

/// Issue 17: the upstream flavor says when it cannot name an exporting
/// Pod's identity (an EndpointSlice without its Pod: the bookinfo example
/// with its Pods taken out), since ztunnel checks the inner TLS against
/// those names; the solo flavor has no such names and says nothing; the
/// examples as shipped, with their Pods, give no such warning.
#[test]
fn g7_upstream_flavor_warns_of_endpoints_without_a_known_identity() {
    let ex = examples().join("bookinfo");
    let tmp = tempfile::tempdir().unwrap();
    for cluster in ["cluster1", "cluster2"] {
        let to = tmp.path().join(cluster);
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(ex.join(cluster)).unwrap() {
            let path = file.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            // Every document but the Pods.
            let kept: Vec<&str> = text
                .split("\n---\n")
                .filter(|doc| !doc.lines().any(|l| l == "kind: Pod"))
                .collect();
            std::fs::write(to.join(path.file_name().unwrap()), kept.join("\n---\n")).unwrap();
        }
    }
    let dirs = [tmp.path().join("cluster1"), tmp.path().join("cluster2")];
    let dirs: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
    let o = meshpeer(&["render", dirs[0], dirs[1], "--istio-flavor", "upstream"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let warnings: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.starts_with("warning[G7]"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("warning[G7] service bookinfo/productpage (cluster cluster1): productpage.bookinfo.mesh.internal: endpoints in cluster1, cluster2 have no known Pod"),
        "{}",
        warnings[0]
    );
    let solo = meshpeer(&["render", dirs[0], dirs[1], "--istio-flavor", "solo"]);
    assert!(!stderr(&solo).contains("warning[G7]"), "{}", stderr(&solo));
    // With Pods (both examples as shipped), every identity is known: no
    // warning.
    for scenario in ["httpbin", "bookinfo"] {
        let ex = examples().join(scenario);
        let o = meshpeer(&[
            "render",
            ex.join("cluster1").to_str().unwrap(),
            ex.join("cluster2").to_str().unwrap(),
            "--istio-flavor",
            "upstream",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            !stderr(&o).contains("warning[G7]"),
            "{scenario}: {}",
            stderr(&o)
        );
    }
}
