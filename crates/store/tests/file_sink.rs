//! The file-mode sink on a real folder.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshpeer_model::NsName;
use meshpeer_model::objects::{
    Condition, ServiceEntry, ServiceEntrySpec, WorkloadEntry, WorkloadEntrySpec,
};
use meshpeer_model::render::to_yaml;
use meshpeer_store::file_sink::{FileSink, WORKLOADS_DIR};
use meshpeer_store::{Output, PeerStatus, Sink, SinkReport, desired, workloads};

fn want<I: IntoIterator<Item = ServiceEntry>>(entries: I) -> Output {
    Output::of_entries(desired(entries))
}

fn entry(name: &str, vip: &str) -> ServiceEntry {
    ServiceEntry {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("istio-system".to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "meshpeer".to_owned(),
            )])),
            ..Default::default()
        },
        spec: ServiceEntrySpec {
            hosts: vec![format!("{name}.mesh.internal")],
            addresses: vec![vip.to_owned()],
            location: Some("MESH_INTERNAL".to_owned()),
            resolution: Some("STATIC".to_owned()),
            ..Default::default()
        },
    }
}

fn unmanaged(name: &str) -> String {
    let mut se = entry(name, "10.9.9.9");
    se.metadata.labels = None;
    to_yaml(&[se])
}

/// Inode and modification time: changes when a file is rewritten.
fn identity(path: &Path) -> (u64, i64, i64) {
    let m = fs::metadata(path).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn sink_writes_skips_unchanged_and_deletes_only_managed_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut sink = FileSink::new(out.clone());
    assert_eq!(sink.describe(), format!("folder {}", out.display()));
    assert!(
        sink.existing().await.unwrap().entries.is_empty(),
        "no folder yet"
    );

    let a = entry("autogen.shop.web", "240.0.0.1");
    let b = entry("autogen.shop.api", "240.0.0.2");
    let report = sink.apply(&want([a.clone(), b.clone()])).await.unwrap();
    assert_eq!(
        report,
        SinkReport {
            applied: 2,
            unchanged: 0,
            deleted: 0
        }
    );
    let a_path = out.join("autogen.shop.web.yaml");
    assert_eq!(
        fs::read_to_string(&a_path).unwrap(),
        to_yaml(std::slice::from_ref(&a))
    );

    // Files that are not meshpeer's: never touched.
    let user = out.join("user.yaml");
    fs::write(&user, unmanaged("user-entry")).unwrap();
    fs::write(out.join("notes.txt"), "x").unwrap();
    fs::write(out.join("broken.yaml"), "kind: [").unwrap();
    let user_id = identity(&user);

    // Same input again: nothing rewritten.
    let before = identity(&a_path);
    let report = sink.apply(&want([a.clone(), b.clone()])).await.unwrap();
    assert_eq!(
        report,
        SinkReport {
            applied: 0,
            unchanged: 2,
            deleted: 0
        }
    );
    assert_eq!(identity(&a_path), before);

    // One changed, one gone.
    let a2 = entry("autogen.shop.web", "240.0.0.9");
    let report = sink.apply(&want([a2.clone()])).await.unwrap();
    assert_eq!(
        report,
        SinkReport {
            applied: 1,
            unchanged: 0,
            deleted: 1
        }
    );
    assert_ne!(identity(&a_path), before, "replaced by rename");
    assert_eq!(
        names(&out),
        [
            "autogen.shop.web.yaml",
            "broken.yaml",
            "notes.txt",
            "user.yaml"
        ],
        "no temporary files left, foreign files kept"
    );
    assert_eq!(identity(&user), user_id);

    // A wanted name held by a user's file: left alone.
    let report = sink
        .apply(&want([a2.clone(), entry("user", "240.0.0.3")]))
        .await
        .unwrap();
    assert_eq!(report.unchanged, 1);
    assert_eq!(report.applied, 0);
    assert_eq!(identity(&user), user_id);
    assert_eq!(fs::read_to_string(&user).unwrap(), unmanaged("user-entry"));

    // Nothing wanted: only meshpeer's files go.
    let report = sink.apply(&want([])).await.unwrap();
    assert_eq!(report.deleted, 1);
    assert_eq!(names(&out), ["broken.yaml", "notes.txt", "user.yaml"]);
    assert_eq!(identity(&user), user_id);
}

#[tokio::test]
async fn g7_sink_after_a_restart_removes_what_an_earlier_run_left() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let old = entry("autogen.shop.old", "240.0.0.1");
    let kept = entry("autogen.shop.web", "240.0.0.2");
    FileSink::new(out.clone())
        .apply(&want([old, kept.clone()]))
        .await
        .unwrap();
    // A new run (a new sink) no longer wants `old`: its first apply lists
    // the folder and removes it; later applies only touch what they know.
    let mut sink = FileSink::new(out.clone());
    let report = sink.apply(&want([kept.clone()])).await.unwrap();
    assert_eq!(
        report,
        SinkReport {
            applied: 0,
            unchanged: 1,
            deleted: 1
        }
    );
    assert_eq!(names(&out), ["autogen.shop.web.yaml"]);
    let next = entry("autogen.shop.api", "240.0.0.3");
    let report = sink.apply(&want([next.clone()])).await.unwrap();
    assert_eq!((report.applied, report.deleted), (1, 1));
    assert_eq!(names(&out), ["autogen.shop.api.yaml"]);
}

#[tokio::test]
async fn sink_existing_reads_back_what_it_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = FileSink::new(tmp.path().to_owned());
    let mut desired = vec![
        entry("autogen.b.svc", "240.0.0.2"),
        entry("autogen.a.svc", "240.0.0.1"),
    ];
    desired[0].spec.ports = vec![meshpeer_model::objects::ServiceEntryPort {
        number: 80,
        protocol: Some("HTTP".into()),
        name: "http".into(),
        target_port: None,
    }];
    sink.apply(&want(desired.clone())).await.unwrap();
    fs::write(tmp.path().join("user.yaml"), unmanaged("user")).unwrap();
    fs::write(tmp.path().join("broken.yaml"), "kind: [").unwrap();
    let back = sink.existing().await.unwrap().entries;
    desired.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    assert_eq!(back, desired);

    // A fresh sink on the same folder (a restart) sees the same.
    let mut again = FileSink::new(tmp.path().to_owned());
    assert_eq!(again.existing().await.unwrap().entries, desired);
}

#[tokio::test]
async fn sink_rejects_names_that_are_not_file_names() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = FileSink::new(tmp.path().to_owned());
    for bad in ["../escape", ".hidden", ""] {
        let e = sink
            .apply(&want([entry(bad, "240.0.0.1")]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("file name"), "{e}");
    }
    assert!(names(tmp.path()).is_empty());
}

#[tokio::test]
async fn sink_writes_and_removes_gateway_status() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = FileSink::new(tmp.path().to_owned());
    let status_dir = tmp.path().join("status");
    let cond = |t: &str, s: &str| Condition {
        type_: t.to_owned(),
        status: s.to_owned(),
        reason: Some("Connected".to_owned()),
        message: None,
        last_transition_time: Some("2025-01-01T00:00:00Z".to_owned()),
        observed_generation: None,
    };
    let c2 = PeerStatus {
        gateway: NsName::new("istio-eastwest", "istio-remote-peer-c2"),
        conditions: vec![
            cond("Accepted", "True"),
            cond("gloo.solo.io/PeerConnected", "True"),
        ],
    };
    let c3 = PeerStatus {
        gateway: NsName::new("istio-eastwest", "istio-remote-peer-c3"),
        conditions: vec![cond("Accepted", "False")],
    };
    sink.write_status(&[c2.clone(), c3.clone()]).await.unwrap();
    assert_eq!(
        names(&status_dir),
        [
            "istio-eastwest.istio-remote-peer-c2.yaml",
            "istio-eastwest.istio-remote-peer-c3.yaml"
        ]
    );
    let c2_path = status_dir.join("istio-eastwest.istio-remote-peer-c2.yaml");
    let text = fs::read_to_string(&c2_path).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "istio-remote-peer-c2", "namespace": "istio-eastwest"},
            "status": {"conditions": [
                {"type": "Accepted", "status": "True", "reason": "Connected",
                 "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "gloo.solo.io/PeerConnected", "status": "True", "reason": "Connected",
                 "lastTransitionTime": "2025-01-01T00:00:00Z"},
            ]},
        })
    );
    assert!(
        text.starts_with("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"),
        "{text}"
    );

    // Unchanged status is not rewritten; a gateway no longer listed goes.
    let before = identity(&c2_path);
    sink.write_status(std::slice::from_ref(&c2)).await.unwrap();
    assert_eq!(identity(&c2_path), before);
    assert_eq!(
        names(&status_dir),
        ["istio-eastwest.istio-remote-peer-c2.yaml"]
    );
    sink.write_status(&[]).await.unwrap();
    assert!(names(&status_dir).is_empty());

    // Status files are not ServiceEntries.
    assert!(sink.existing().await.unwrap().entries.is_empty());
}

fn workload(name: &str, address: &str) -> WorkloadEntry {
    WorkloadEntry {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("istio-system".to_owned()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "meshpeer".to_owned(),
                ),
                ("meshpeer.io/entry".to_owned(), "autogen.a.b".to_owned()),
            ])),
            ..Default::default()
        },
        spec: WorkloadEntrySpec {
            address: Some(address.to_owned()),
            network: Some("cluster1".to_owned()),
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn g7_workload_entries_live_in_their_own_folder_and_are_pruned_like_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let wl = out.join(WORKLOADS_DIR);
    let mut sink = FileSink::new(out.clone());
    let (w1, w2) = (
        workload("autogen.a.b.cluster1.10-0-0-1", "10.0.0.1"),
        workload("autogen.a.b.cluster1.10-0-0-2", "10.0.0.2"),
    );
    let both = Output {
        entries: desired([entry("autogen.a.b", "240.241.0.1")]),
        workloads: workloads([w1.clone(), w2.clone()]),
    };
    let report = sink.apply(&both).await.unwrap();
    assert_eq!(report.applied, 3);
    assert_eq!(names(&out), ["autogen.a.b.yaml", WORKLOADS_DIR]);
    assert_eq!(
        names(&wl),
        [
            "autogen.a.b.cluster1.10-0-0-1.yaml",
            "autogen.a.b.cluster1.10-0-0-2.yaml"
        ]
    );
    assert_eq!(
        fs::read_to_string(wl.join("autogen.a.b.cluster1.10-0-0-1.yaml")).unwrap(),
        to_yaml(std::slice::from_ref(&w1))
    );
    // A user's file in the folder is never touched.
    fs::write(wl.join("mine.yaml"), "kind: ConfigMap\napiVersion: v1\n").unwrap();

    // A restarted sink reads both kinds back.
    let mut again = FileSink::new(out.clone());
    let existing = again.existing().await.unwrap();
    assert_eq!(existing.entries.len(), 1);
    assert_eq!(existing.workloads, [w1.clone(), w2.clone()]);

    // One endpoint goes: its file goes, the rest stays as it was.
    let kept = identity(&wl.join("autogen.a.b.cluster1.10-0-0-1.yaml"));
    let less = Output {
        entries: both.entries.clone(),
        workloads: workloads([w1.clone()]),
    };
    let report = again.apply(&less).await.unwrap();
    assert_eq!(report.deleted, 1);
    assert_eq!(report.applied, 0);
    assert_eq!(
        names(&wl),
        ["autogen.a.b.cluster1.10-0-0-1.yaml", "mine.yaml"]
    );
    assert_eq!(
        identity(&wl.join("autogen.a.b.cluster1.10-0-0-1.yaml")),
        kept
    );

    // Solo's flavor (no WorkloadEntries): the managed ones are pruned.
    let report = again
        .apply(&Output::of_entries(both.entries.clone()))
        .await
        .unwrap();
    assert_eq!(report.deleted, 1);
    assert_eq!(names(&wl), ["mine.yaml"]);
}

const ROUTE_NOW: &str = "2026-12-01T10:00:00Z";

fn route_clock() -> String {
    ROUTE_NOW.to_owned()
}

#[tokio::test]
async fn l7_route_status_files_are_written_validate_and_are_removed_with_their_route() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = FileSink::new(tmp.path().to_path_buf()).with_clock(route_clock);
    let dir = tmp.path().join("status").join("httproutes");
    // No route: no folder.
    sink.write_route_status(&[]).await.unwrap();
    assert!(!dir.exists());

    let routes = common::route_status();
    sink.write_route_status(&routes).await.unwrap();
    assert_eq!(
        names(&dir),
        ["bookinfo.ratings.yaml", "bookinfo.reviews.yaml"]
    );
    // The Gateway status files beside them are another matter.
    sink.write_status(&[]).await.unwrap();
    assert!(dir.join("bookinfo.reviews.yaml").exists());

    let read = |name: &str| -> serde_json::Value {
        serde_saphyr::from_str(&fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let reviews = read("bookinfo.reviews.yaml");
    assert_eq!(
        reviews,
        serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "reviews", "namespace": "bookinfo"},
            "status": {"parents": [{
                "parentRef": {"group": "", "kind": "Service", "name": "reviews", "port": 9080},
                "controllerName": "meshpeer.io/mesh-controller",
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted",
                     "message": "meshpeer routes this parent's HTTP ports",
                     "lastTransitionTime": ROUTE_NOW, "observedGeneration": 2},
                    {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                     "message": "every backendRef resolves",
                     "lastTransitionTime": ROUTE_NOW, "observedGeneration": 2},
                ],
            }]},
        })
    );
    let ratings = read("bookinfo.ratings.yaml");
    let resolved = &ratings["status"]["parents"][0]["conditions"][1];
    assert_eq!(
        (&resolved["type"], &resolved["status"]),
        (&"ResolvedRefs".into(), &"False".into()),
        "{ratings:#}"
    );
    for doc in [&reviews, &ratings] {
        common::check_route_status(doc).unwrap();
    }
    // What the CRD requires is what the check catches.
    let mut timeless = reviews.clone();
    timeless["status"]["parents"][0]["conditions"][0]
        .as_object_mut()
        .unwrap()
        .remove("lastTransitionTime");
    assert!(common::check_route_status(&timeless).is_err());

    // Unchanged: not rewritten. Later, with another clock reading, a
    // condition that keeps its status keeps its time; one that flips gets
    // the new time.
    let before = identity(&dir.join("bookinfo.reviews.yaml"));
    sink.write_route_status(&routes).await.unwrap();
    assert_eq!(identity(&dir.join("bookinfo.reviews.yaml")), before);
    let mut sink = FileSink::new(tmp.path().to_path_buf());
    let mut flipped = routes.clone();
    let reviews_status = flipped.iter_mut().find(|r| r.name == "reviews").unwrap();
    let c = &mut reviews_status.parents[0].conditions[1];
    c.status = "False".into();
    c.reason = Some("BackendNotFound".into());
    sink.write_route_status(&flipped).await.unwrap();
    let conditions = read("bookinfo.reviews.yaml")["status"]["parents"][0]["conditions"].clone();
    assert_eq!(conditions[0]["lastTransitionTime"], ROUTE_NOW);
    assert_ne!(conditions[1]["lastTransitionTime"], ROUTE_NOW);
    common::check_route_status(&read("bookinfo.reviews.yaml")).unwrap();

    // A route no longer listed loses its file; none left, none there.
    let only_reviews: Vec<_> = flipped
        .into_iter()
        .filter(|r| r.name == "reviews")
        .collect();
    sink.write_route_status(&only_reviews).await.unwrap();
    assert_eq!(names(&dir), ["bookinfo.reviews.yaml"]);
    sink.write_route_status(&[]).await.unwrap();
    assert!(names(&dir).is_empty());
}
