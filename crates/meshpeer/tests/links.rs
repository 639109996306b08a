//! `meshpeer expose`, `link`, `unlink` on cluster folders (SPEC O2, O3, C3, C4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn meshpeer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshpeer"))
        .args(args)
        .output()
        .expect("run meshpeer")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A copy of the httpbin example with the remote-peer Gateways removed.
fn unlinked() -> (tempfile::TempDir, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    for cluster in ["cluster1", "cluster2"] {
        let to = tmp.path().join(cluster);
        fs::create_dir_all(&to).unwrap();
        for e in fs::read_dir(examples().join("httpbin").join(cluster)).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    let c1 = tmp.path().join("cluster1").display().to_string();
    let c2 = tmp.path().join("cluster2").display().to_string();
    let o = meshpeer(&["unlink", &c1, &c2]);
    assert!(o.status.success(), "{}", err(&o));
    (tmp, c1, c2)
}

fn hosts(view: &str, dirs: &[&str]) -> Vec<String> {
    let mut args = vec!["render", "-o", "json", "--view", view];
    args.extend_from_slice(dirs);
    let o = meshpeer(&args);
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "ServiceEntry")
        .map(|i| i["spec"]["hosts"][0].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn o3_link_both_ways_prints_the_seed_lines_and_links() {
    let (_tmp, c1, c2) = unlinked();
    let o = meshpeer(&["link", &c1, &c2]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        out(&o),
        "Gateway istio-eastwest/istio-remote-peer-cluster2 applied to cluster \"cluster1\" pointing to cluster \"cluster2\" (network \"cluster2\")\n\
         Gateway istio-eastwest/istio-remote-peer-cluster1 applied to cluster \"cluster2\" pointing to cluster \"cluster1\" (network \"cluster1\")\n"
    );
    // Linked: the same global services as the hand-written example.
    let linked = hosts("cluster1", &[&c1, &c2]);
    let ex1 = examples().join("httpbin/cluster1").display().to_string();
    let ex2 = examples().join("httpbin/cluster2").display().to_string();
    assert_eq!(linked, hosts("cluster1", &[&ex1, &ex2]));
    // The written Gateway is what the API server accepts.
    let text = fs::read_to_string(Path::new(&c1).join("istio-remote-peer-cluster2.yaml")).unwrap();
    let parsed = meshpeer_model::parse_documents("gw", &text);
    assert_eq!(parsed.objects.len(), 1);
    let validator = meshpeer_crdcheck::Validator::from_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas"),
    )
    .unwrap();
    validator.validate(&parsed.objects[0].to_json()).unwrap();
    // Linking again rewrites our own file, with the same result.
    assert!(meshpeer(&["link", &c1, &c2]).status.success());
}

#[test]
fn c4_link_from_to_is_one_way() {
    let (_tmp, c1, c2) = unlinked();
    let o = meshpeer(&["link", "--from", &c1, "--to", &c2]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).lines().count(), 1);
    assert!(
        Path::new(&c1)
            .join("istio-remote-peer-cluster2.yaml")
            .exists()
    );
    assert!(
        !Path::new(&c2)
            .join("istio-remote-peer-cluster1.yaml")
            .exists()
    );
    // cluster2 only imports nothing; it still has its own services.
    let dirs = [c1.as_str(), c2.as_str()];
    let v2 = hosts("cluster2", &dirs);
    assert_eq!(v2.len(), 2);
    let r = meshpeer(&["render", "-o", "json", "--view", "cluster2", &c1, &c2]);
    let v: serde_json::Value = serde_json::from_str(&out(&r)).unwrap();
    for item in v["items"].as_array().unwrap() {
        if item["kind"] != "ServiceEntry" {
            continue;
        }
        assert_eq!(
            item["metadata"]["annotations"]["meshpeer.io/clusters"],
            "cluster2"
        );
    }
}

#[test]
fn link_refuses_when_the_peer_is_not_programmed_or_already_linked_elsewhere() {
    let (_tmp, c1, c2) = unlinked();
    // cluster2's east-west gateway loses its address.
    let ew = Path::new(&c2).join("eastwest.yaml");
    let text = fs::read_to_string(&ew).unwrap();
    let cut = text.find("status:").unwrap();
    let end = text[cut..].find("---").map_or(text.len(), |i| cut + i);
    fs::write(&ew, format!("{}{}", &text[..cut], &text[end..])).unwrap();
    let o = meshpeer(&["link", "--from", &c1, "--to", &c2]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("has no address yet (not programmed)"),
        "{}",
        err(&o)
    );
    assert!(err(&o).contains("meshpeer expose --address"), "{}", err(&o));

    // A link that already exists in another file is not duplicated.
    let (_tmp2, d1, d2) = unlinked();
    let existing = meshpeer(&["link", "--dry-run", "--from", &d1, "--to", &d2]);
    fs::write(Path::new(&d1).join("mine.yaml"), out(&existing)).unwrap();
    let o = meshpeer(&["link", "--from", &d1, "--to", &d2]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("already has Gateway istio-eastwest/istio-remote-peer-cluster2 in"),
        "{}",
        err(&o)
    );
    assert!(err(&o).contains("mine.yaml"), "{}", err(&o));
}

#[test]
fn dry_run_prints_and_writes_nothing() {
    let (_tmp, c1, c2) = unlinked();
    let o = meshpeer(&["link", "--dry-run", &c1, &c2]);
    assert!(o.status.success());
    let parsed = meshpeer_model::parse_documents("out", &out(&o));
    assert_eq!(parsed.objects.len(), 2);
    assert!(
        !Path::new(&c1)
            .join("istio-remote-peer-cluster2.yaml")
            .exists()
    );
}

#[test]
fn o2_expose_prints_a_valid_east_west_gateway_and_writes_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c9");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("cluster.yaml"),
        "name: c9\nregion: eu\nzone: eu-1\n",
    )
    .unwrap();
    let d = dir.display().to_string();
    let o = meshpeer(&["expose", &d, "--address", "127.0.9.1"]);
    assert!(o.status.success(), "{}", err(&o));
    let parsed = meshpeer_model::parse_documents("out", &out(&o));
    let gw = parsed.objects[0].to_json();
    assert_eq!(gw["spec"]["gatewayClassName"], "istio-eastwest");
    assert_eq!(gw["metadata"]["labels"]["topology.istio.io/network"], "c9");
    assert_eq!(gw["metadata"]["labels"]["istio.io/expose-istiod"], "15012");
    assert_eq!(gw["status"]["addresses"][0]["value"], "127.0.9.1");
    let validator = meshpeer_crdcheck::Validator::from_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas"),
    )
    .unwrap();
    validator.validate(&gw).unwrap();

    assert!(
        meshpeer(&["expose", &d, "--address", "127.0.9.1", "--write"])
            .status
            .success()
    );
    assert!(dir.join("istio-eastwest.yaml").exists());
    // Again: rewrites its own file; another file defining it is refused.
    assert!(
        meshpeer(&["expose", &d, "--address", "127.0.9.2", "--write"])
            .status
            .success()
    );
    let (_t, c1, _c2) = unlinked();
    let o = meshpeer(&["expose", &c1, "--write"]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("already has an east-west gateway"),
        "{}",
        err(&o)
    );
}
