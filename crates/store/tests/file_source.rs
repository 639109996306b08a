//! File mode: reading a cluster folder again and again ([`FolderState`]) and
//! watching it ([`FileSource`]), on real files in temporary folders.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use meshpeer_model::{Change, ClusterSnapshot, Kind, Rule};
use meshpeer_store::file::FolderState;
use meshpeer_store::file_source::{DEFAULT_DEBOUNCE, FileSource, poll_changes};
use meshpeer_store::{ClusterSource, LoadError, SourceError, Update, load_cluster_dir};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a watched edit may take to show up (generous: CI machines are
/// busy; the latency goal is measured by benchmarks, not here).
const DEADLINE: Duration = Duration::from_secs(10);

fn ns_yaml(name: &str, team: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    team: \"{team}\"\n"
    )
}

fn svc_yaml(namespace: &str, name: &str, port: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    solo.io/service-scope: global\nspec:\n  ports:\n  - name: http\n    port: {port}\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

/// Saves like an editor: a temporary file renamed over the old one.
fn replace(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.swp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

fn cluster_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cluster.yaml", "name: c1\nnetwork: n1\n");
    write(
        dir.path(),
        "shop.yaml",
        &format!(
            "{}---\n{}",
            ns_yaml("shop", "a"),
            svc_yaml("shop", "web", "80")
        ),
    );
    write(dir.path(), "extra.yml", &ns_yaml("extra", "x"));
    dir
}

fn team(snap: &ClusterSnapshot, ns: &str) -> Option<String> {
    snap.namespaces
        .get(ns)?
        .metadata
        .labels
        .as_ref()?
        .get("team")
        .cloned()
}

fn applied(state: &FolderState, changes: &[Change]) -> ClusterSnapshot {
    let mut snap = state.snapshot();
    for c in changes {
        snap.apply_change(c.clone());
    }
    snap
}

fn keys_of(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Apply(o) => format!("apply {}", o.key()),
            Change::Delete(k) => format!("delete {k}"),
            Change::Replace(k, _) => format!("replace {k}"),
            Change::Config(c) => format!("config {}", c.name),
            Change::SourceDiagnostics(d) => format!("diagnostics {}", d.len()),
        })
        .collect()
}

// ---------------------------------------------------------------- FolderState

#[test]
fn f1_folder_state_reports_each_edit_as_changes() {
    let dir = cluster_folder();
    let d = dir.path();
    let mut state = FolderState::load(d).unwrap();
    assert_eq!(state.snapshot(), load_cluster_dir(d).unwrap());
    assert!(
        poll_changes(&mut state).unwrap().is_empty(),
        "nothing changed"
    );

    // A label edit.
    write(d, "extra.yml", &ns_yaml("extra", "y"));
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(keys_of(&changes), ["apply Namespace extra"]);
    assert_eq!(team(&state.snapshot(), "extra").as_deref(), Some("y"));

    // A file added, a file deleted, an editor-style replace: one poll.
    write(
        d,
        "more.json",
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"more"}}"#,
    );
    fs::remove_file(d.join("extra.yml")).unwrap();
    replace(d, "shop.yaml", &ns_yaml("shop", "b"));
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(
        keys_of(&changes),
        [
            "delete Namespace extra",
            "apply Namespace more",
            "apply Namespace shop",
            "delete Service shop/web",
        ]
    );

    // Rewriting the same content, touching, unrelated files: nothing.
    write(d, "shop.yaml", &ns_yaml("shop", "b"));
    write(d, "notes.txt", "hello");
    write(d, ".hidden.yaml", &ns_yaml("hidden", "h"));
    fs::create_dir(d.join("sub")).unwrap();
    write(&d.join("sub"), "x.yaml", &ns_yaml("sub", "s"));
    assert!(poll_changes(&mut state).unwrap().is_empty());

    // cluster.yaml.
    write(d, "cluster.yaml", "name: c2\nnetwork: n1\n");
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(keys_of(&changes), ["config c2"]);
    assert_eq!(state.config().name, "c2");
    assert_eq!(state.snapshot(), load_cluster_dir(d).unwrap());
}

#[test]
fn f1_rewrite_with_same_size_and_time_is_seen() {
    // Two writes within one file-system clock tick leave the same size and
    // modification time: the content must still be compared.
    let dir = cluster_folder();
    let d = dir.path();
    let mut state = FolderState::load(d).unwrap();
    for round in 0..20 {
        let team = if round % 2 == 0 { "b" } else { "a" };
        write(d, "extra.yml", &ns_yaml("extra", team));
        let changes = poll_changes(&mut state).unwrap();
        assert_eq!(
            keys_of(&changes),
            ["apply Namespace extra"],
            "round {round}"
        );
    }
}

#[test]
fn f1_bad_edit_keeps_the_file_s_last_good_objects() {
    let dir = cluster_folder();
    let d = dir.path();
    let mut state = FolderState::load(d).unwrap();
    let good = state.snapshot();
    let shop = d.join("shop.yaml").display().to_string();

    // A YAML syntax error on line 5 (the good namespace is gone from the file
    // too, but the file's last good version stays in use).
    write(
        d,
        "shop.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n   bad: [\n",
    );
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(keys_of(&changes), ["diagnostics 2"]);
    let snap = applied(&state, &[]);
    assert_eq!(snap.objects(), good.objects(), "last good objects kept");
    let shown: Vec<String> = state.diagnostics().iter().map(|d| d.to_string()).collect();
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with(&format!("error[F1] file {shop} "))
                && s.contains("document 1 (line 5)")
                && s.contains("not valid YAML")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.contains("last good version (2 objects) is used")),
        "{shown:#?}"
    );

    // A wrong field type in the second document.
    write(
        d,
        "shop.yaml",
        &format!(
            "{}---\n{}",
            ns_yaml("shop", "zzz"),
            svc_yaml("shop", "web", "eighty")
        ),
    );
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(keys_of(&changes), ["diagnostics 2"]);
    assert_eq!(state.snapshot().objects(), good.objects());
    let shown: Vec<String> = state.diagnostics().iter().map(|d| d.to_string()).collect();
    assert!(
        shown.iter().any(|s| s.contains(&shop)
            && s.contains("document 2 (line 18)")
            && s.contains("spec.ports[0].port")),
        "{shown:#?}"
    );

    // Fixed: the new content is used and the diagnostics are gone.
    write(
        d,
        "shop.yaml",
        &format!(
            "{}---\n{}",
            ns_yaml("shop", "zzz"),
            svc_yaml("shop", "web", "8080")
        ),
    );
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(
        keys_of(&changes),
        [
            "apply Namespace shop",
            "apply Service shop/web",
            "diagnostics 0"
        ]
    );
    assert_eq!(state.snapshot(), load_cluster_dir(d).unwrap());
}

#[test]
fn f1_a_file_that_never_parsed_contributes_nothing() {
    let dir = cluster_folder();
    let d = dir.path();
    write(
        d,
        "new.yaml",
        &format!("{}---\n{}", ns_yaml("new", "n"), svc_yaml("new", "s", "x")),
    );
    let state = FolderState::load(d).unwrap();
    assert!(!state.snapshot().namespaces.contains_key("new"));
    let shown: Vec<String> = state.diagnostics().iter().map(|d| d.to_string()).collect();
    assert!(
        shown
            .iter()
            .any(|s| s.contains("none of its objects are used")),
        "{shown:#?}"
    );
    // Deleting it clears its diagnostics.
    let mut state = state;
    fs::remove_file(d.join("new.yaml")).unwrap();
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(keys_of(&changes), ["diagnostics 0"]);
}

#[test]
fn f2_invalid_or_removed_cluster_yaml_keeps_the_last_config() {
    let dir = cluster_folder();
    let d = dir.path();
    let mut state = FolderState::load(d).unwrap();
    let config = state.config().clone();

    write(d, "cluster.yaml", "name: Bad_Name\n");
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(keys_of(&changes), ["diagnostics 1"]);
    assert_eq!(state.config(), &config);
    let diag = &state.diagnostics()[0];
    assert_eq!(diag.rule, Rule::F2);
    let shown = diag.to_string();
    assert!(shown.contains("cluster.yaml"), "{shown}");
    assert!(shown.contains("not a valid cluster name"), "{shown}");
    assert!(shown.contains("last good cluster config"), "{shown}");

    fs::remove_file(d.join("cluster.yaml")).unwrap();
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(keys_of(&changes), ["diagnostics 1"]);
    assert!(state.diagnostics()[0].message.contains("was removed"));
    assert_eq!(state.config(), &config);

    write(d, "cluster.yaml", "name: c1\nnetwork: n2\n");
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(keys_of(&changes), ["config c1", "diagnostics 0"]);
    assert_eq!(state.config().network.as_deref(), Some("n2"));
}

#[test]
fn f1_duplicates_are_reported_and_resolved_like_a_fresh_load() {
    let dir = cluster_folder();
    let d = dir.path();
    write(d, "dup.yaml", &ns_yaml("extra", "zz"));
    let mut state = FolderState::load(d).unwrap();
    let fresh = load_cluster_dir(d).unwrap();
    assert_eq!(state.snapshot().objects(), fresh.objects());
    assert_eq!(team(&state.snapshot(), "extra").as_deref(), Some("zz"));
    let shown = state.diagnostics()[0].to_string();
    assert!(shown.starts_with("warning[F1] namespace extra"), "{shown}");
    assert!(shown.contains("defined more than once"), "{shown}");
    assert!(
        shown.contains("dup.yaml") && shown.contains("extra.yml"),
        "{shown}"
    );

    // The same files read in another order give the same choice.
    fs::rename(d.join("dup.yaml"), d.join("0dup.yaml")).unwrap();
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(
        keys_of(&changes),
        ["diagnostics 1"],
        "only the file name changed"
    );

    fs::remove_file(d.join("0dup.yaml")).unwrap();
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(
        keys_of(&changes),
        ["apply Namespace extra", "diagnostics 0"]
    );
    assert_eq!(team(&state.snapshot(), "extra").as_deref(), Some("x"));
}

#[test]
fn unusable_folders_are_errors_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(matches!(
        FolderState::load(&d.join("nope")),
        Err(LoadError::NotFound(_))
    ));
    assert!(matches!(
        FolderState::load(d),
        Err(LoadError::MissingConfig(_))
    ));
    write(d, "cluster.yaml", "name: c1\nnetwrok: x\n");
    let e = FolderState::load(d).unwrap_err();
    assert!(matches!(e, LoadError::Config(_)), "{e}");
    assert!(e.to_string().contains("netwrok"), "{e}");
}

/// A small deterministic random generator (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[test]
fn f1_random_edits_match_a_fresh_read() {
    let contents = [
        ns_yaml("a", "1"),
        ns_yaml("a", "2"),
        ns_yaml("b", "1"),
        format!("{}---\n{}", ns_yaml("c", "1"), svc_yaml("c", "s", "80")),
        format!("{}---\n{}", ns_yaml("a", "3"), svc_yaml("c", "s", "81")),
        svc_yaml("c", "s", "82"),
        String::new(),
        "apiVersion: v1\nkind: Namespace\nmetadata: [\n".to_owned(),
        svc_yaml("c", "s", "bad"),
    ];
    let names = ["f0.yaml", "f1.yaml", "f2.yml", "f3.json.yaml"];
    let configs = ["name: c1\n", "name: c2\nregion: r\n", "name: NOPE\n"];
    for seed in 1..=8u64 {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "cluster.yaml", configs[0]);
        let mut state = FolderState::load(d).unwrap();
        let mut snap = state.snapshot();
        let mut rng = Lcg(seed);
        for step in 0..60 {
            let name = names[rng.below(names.len())];
            match rng.below(10) {
                0 => {
                    let _ = fs::remove_file(d.join(name));
                }
                1 => {
                    let to = names[rng.below(names.len())];
                    let _ = fs::rename(d.join(name), d.join(to));
                }
                2 => write(d, "cluster.yaml", configs[rng.below(configs.len())]),
                3 | 4 => replace(d, name, &contents[rng.below(contents.len())]),
                _ => write(d, name, &contents[rng.below(contents.len())]),
            }
            for change in poll_changes(&mut state).unwrap() {
                snap.apply_change(change);
            }
            let at = format!("seed {seed} step {step}");
            assert_eq!(snap, state.snapshot(), "{at}: changes rebuild the state");
            let broken = state
                .diagnostics()
                .iter()
                .any(|d| d.severity == meshpeer_model::Severity::Error);
            if !broken {
                let fresh = load_cluster_dir(d).unwrap();
                assert_eq!(snap.objects(), fresh.objects(), "{at}");
                assert_eq!(snap.config, fresh.config, "{at}");
                let again = FolderState::load(d).unwrap().snapshot();
                assert_eq!(snap, again, "{at}: same as a fresh FolderState");
            }
        }
    }
}

// ---------------------------------------------------------------- FileSource

/// A running [`FileSource`] and the snapshot its updates build.
struct Watched {
    rx: mpsc::Receiver<Update>,
    snap: ClusterSnapshot,
    task: JoinHandle<Result<(), SourceError>>,
}

impl Watched {
    async fn start(dir: &Path) -> (Watched, Update) {
        let source = FileSource::new(dir.to_owned(), DEFAULT_DEBOUNCE);
        assert_eq!(source.describe(), format!("folder {}", dir.display()));
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(Box::new(source).run(tx));
        let first = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("initial update within the deadline")
            .expect("initial update");
        let mut snap = ClusterSnapshot::default();
        for c in first.changes.clone() {
            snap.apply_change(c);
        }
        (Watched { rx, snap, task }, first)
    }

    /// Applies updates until `done` holds; returns their changes. Fails at
    /// the deadline, or on an empty update.
    async fn until(&mut self, what: &str, done: impl Fn(&ClusterSnapshot) -> bool) -> Vec<Change> {
        let mut all = Vec::new();
        let wait = async {
            while let Some(update) = self.rx.recv().await {
                assert!(
                    !update.changes.is_empty(),
                    "{what}: an empty update was sent"
                );
                for c in update.changes {
                    all.push(c.clone());
                    self.snap.apply_change(c);
                }
                if done(&self.snap) {
                    return;
                }
            }
            panic!("{what}: the source ended");
        };
        if tokio::time::timeout(DEADLINE, wait).await.is_err() {
            panic!("{what}: not seen within {DEADLINE:?}; changes so far: {all:#?}");
        }
        all
    }
}

#[tokio::test]
async fn source_sends_the_whole_folder_then_each_edit() {
    let dir = cluster_folder();
    let d = dir.path();
    let (mut w, first) = Watched::start(d).await;

    // The first update is complete: config, every kind, diagnostics.
    assert!(matches!(&first.changes[0], Change::Config(c) if c.name == "c1"));
    let replaced: Vec<Kind> = first
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Replace(k, _) => Some(*k),
            _ => None,
        })
        .collect();
    assert_eq!(replaced, Kind::ALL);
    assert!(matches!(
        first.changes.last(),
        Some(Change::SourceDiagnostics(d)) if d.is_empty()
    ));
    assert_eq!(w.snap, load_cluster_dir(d).unwrap());

    // A label edit (the file rewritten in place).
    write(d, "extra.yml", &ns_yaml("extra", "y"));
    let changes = w
        .until("label edit", |s| team(s, "extra").as_deref() == Some("y"))
        .await;
    assert!(
        keys_of(&changes)
            .iter()
            .all(|k| k.ends_with("Namespace extra")),
        "{changes:#?}"
    );

    // A file added.
    write(d, "more.yaml", &svc_yaml("shop", "api", "90"));
    let changes = w.until("file added", |s| s.services.len() == 2).await;
    assert_eq!(keys_of(&changes), ["apply Service shop/api"]);

    // A file deleted.
    fs::remove_file(d.join("more.yaml")).unwrap();
    let changes = w.until("file deleted", |s| s.services.len() == 1).await;
    assert_eq!(keys_of(&changes), ["delete Service shop/api"]);

    // An editor-style save: temporary file renamed over the manifest.
    replace(
        d,
        "shop.yaml",
        &format!(
            "{}---\n{}",
            ns_yaml("shop", "b"),
            svc_yaml("shop", "web", "80")
        ),
    );
    let changes = w
        .until("editor replace", |s| {
            team(s, "shop").as_deref() == Some("b")
        })
        .await;
    assert_eq!(keys_of(&changes), ["apply Namespace shop"]);

    // cluster.yaml.
    replace(d, "cluster.yaml", "name: c1\nnetwork: n2\n");
    let changes = w
        .until("cluster.yaml edit", |s| {
            s.config.network.as_deref() == Some("n2")
        })
        .await;
    assert_eq!(keys_of(&changes), ["config c1"]);

    assert_eq!(w.snap, load_cluster_dir(d).unwrap());
}

#[tokio::test]
async fn source_reports_bad_edits_with_path_and_line_and_recovers() {
    let dir = cluster_folder();
    let d = dir.path();
    let (mut w, _) = Watched::start(d).await;
    let good = w.snap.clone();
    let shop = d.join("shop.yaml").display().to_string();

    // YAML syntax error.
    replace(
        d,
        "shop.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n   bad: [\n",
    );
    let changes = w.until("syntax error", |s| !s.diagnostics.is_empty()).await;
    assert_eq!(keys_of(&changes), ["diagnostics 2"]);
    assert_eq!(w.snap.objects(), good.objects(), "last good objects kept");
    assert!(
        w.snap.diagnostics.iter().any(|x| x.rule == Rule::F1
            && x.object.name == shop
            && x.message.contains("document 1 (line 5)")),
        "{:#?}",
        w.snap.diagnostics
    );

    // Wrong field type.
    replace(d, "shop.yaml", &svc_yaml("shop", "web", "{a: 1}"));
    let changes = w
        .until("wrong type", |s| {
            s.diagnostics
                .iter()
                .any(|x| x.message.contains("spec.ports[0].port"))
        })
        .await;
    assert_eq!(keys_of(&changes), ["diagnostics 2"]);
    assert_eq!(w.snap.objects(), good.objects());
    assert!(
        w.snap
            .diagnostics
            .iter()
            .any(|x| x.object.name == shop && x.message.contains("(line 11)")),
        "{:#?}",
        w.snap.diagnostics
    );

    // Fixed.
    replace(d, "shop.yaml", &svc_yaml("shop", "web", "80"));
    let changes = w.until("fixed", |s| s.diagnostics.is_empty()).await;
    assert_eq!(
        keys_of(&changes),
        ["delete Namespace shop", "diagnostics 0"]
    );
    assert_eq!(w.snap, load_cluster_dir(d).unwrap());
}

#[tokio::test]
async fn source_ignores_hidden_files_subfolders_and_edits_that_change_nothing() {
    let dir = cluster_folder();
    let d = dir.path();
    let (mut w, _) = Watched::start(d).await;

    // None of these may produce an update ...
    write(d, ".hidden.yaml", &ns_yaml("hidden", "h"));
    fs::create_dir(d.join(".meshpeer")).unwrap();
    write(&d.join(".meshpeer"), "out.yaml", &ns_yaml("out", "o"));
    fs::create_dir(d.join("sub")).unwrap();
    write(&d.join("sub"), "x.yaml", &ns_yaml("sub", "s"));
    write(d, "notes.txt", "not yaml: [");
    write(d, "extra.yml", &ns_yaml("extra", "x")); // same content
    replace(d, "cluster.yaml", "name: c1\nnetwork: n1\n"); // same content
    fs::File::options()
        .append(true)
        .open(d.join("shop.yaml"))
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();

    // ... so the next update is this edit's alone.
    replace(d, "marker.yaml", &ns_yaml("marker", "m"));
    let changes = w
        .until("marker", |s| s.namespaces.contains_key("marker"))
        .await;
    assert_eq!(keys_of(&changes), ["apply Namespace marker"]);
    assert_eq!(w.snap, load_cluster_dir(d).unwrap());
}

#[tokio::test]
async fn source_updates_rebuild_the_final_folder() {
    let dir = cluster_folder();
    let d = dir.path();
    let (mut w, _) = Watched::start(d).await;

    // A script of edits, without waiting in between.
    write(d, "a.yaml", &ns_yaml("a", "1"));
    write(
        d,
        "b.yaml",
        &format!("{}---\n{}", ns_yaml("b", "1"), svc_yaml("b", "s", "80")),
    );
    replace(d, "a.yaml", &ns_yaml("a", "2"));
    write(d, "b.yaml", "kind: [\n");
    fs::rename(d.join("extra.yml"), d.join("extra2.yaml")).unwrap();
    write(d, "dup.yaml", &ns_yaml("a", "3"));
    replace(d, "cluster.yaml", "name: c9\nregion: r1\nzone: z1\n");
    fs::remove_file(d.join("dup.yaml")).unwrap();
    write(d, "b.yaml", &svc_yaml("b", "s", "81"));
    fs::remove_file(d.join("shop.yaml")).unwrap();
    replace(d, "c.yaml", &ns_yaml("c", "1"));

    let fin = load_cluster_dir(d).unwrap();
    assert!(fin.diagnostics.is_empty(), "{:#?}", fin.diagnostics);
    w.until("final folder", |s| *s == fin).await;

    // Then a slower sequence, one edit at a time.
    replace(d, "b.yaml", "metadata: 1\n");
    w.until("broken b", |s| !s.diagnostics.is_empty()).await;
    write(d, "cluster.yaml", "name: c9\nregion: r2\nzone: z1\n");
    w.until("config", |s| s.config.region.as_deref() == Some("r2"))
        .await;
    fs::remove_file(d.join("b.yaml")).unwrap();
    let fin = load_cluster_dir(d).unwrap();
    w.until("b removed", |s| *s == fin).await;
}

#[tokio::test]
async fn source_stops_when_the_receiver_is_dropped() {
    let dir = cluster_folder();
    let (w, _) = Watched::start(dir.path()).await;
    let Watched { rx, task, .. } = w;
    drop(rx);
    let result = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("source stops within the deadline")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn source_fails_on_an_unusable_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let e = Box::new(FileSource::new(dir.path().to_owned(), DEFAULT_DEBOUNCE))
        .run(tx)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no cluster.yaml"), "{e}");

    write(dir.path(), "cluster.yaml", "name: 1_bad\n");
    let (tx, _rx) = mpsc::channel(1);
    let e = Box::new(FileSource::new(dir.path().to_owned(), DEFAULT_DEBOUNCE))
        .run(tx)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a valid cluster name"), "{e}");
}

#[tokio::test]
async fn source_ends_with_an_error_when_the_folder_goes_away() {
    let parent = tempfile::tempdir().unwrap();
    let d = parent.path().join("c");
    fs::create_dir(&d).unwrap();
    write(&d, "cluster.yaml", "name: c1\n");
    let (w, _) = Watched::start(&d).await;
    fs::remove_dir_all(&d).unwrap();
    let result = tokio::time::timeout(DEADLINE, w.task)
        .await
        .expect("source ends within the deadline")
        .unwrap();
    let e = result.unwrap_err();
    assert!(e.to_string().contains(&d.display().to_string()), "{e}");
}

/// `dir` relative to the current directory (`../../target/...`).
fn relative_to_cwd(dir: &Path) -> std::path::PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let cwd: Vec<_> = cwd.components().collect();
    let target: Vec<_> = dir.components().collect();
    let common = cwd.iter().zip(&target).take_while(|(a, b)| a == b).count();
    let mut rel = std::path::PathBuf::new();
    for _ in common..cwd.len() {
        rel.push("..");
    }
    for c in &target[common..] {
        rel.push(c);
    }
    rel
}

#[tokio::test]
async fn source_sees_edits_when_given_a_relative_folder() {
    // The controller is started with `--cluster-dir cluster1`; notify reports
    // absolute paths.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    write(d, "cluster.yaml", "name: c1\n");
    write(d, "ns.yaml", &ns_yaml("shop", "a"));
    let rel = relative_to_cwd(d);
    assert!(rel.is_relative(), "{}", rel.display());
    let (mut w, _) = Watched::start(&rel).await;
    replace(d, "ns.yaml", &ns_yaml("shop", "b"));
    w.until("label edit through a relative path", |s| {
        team(s, "shop").as_deref() == Some("b")
    })
    .await;
}

// ---------------------------------------------------------------- slow writers

/// Three objects in `shop.yaml`: the namespace and two services.
fn three_objects(web_team: &str) -> String {
    format!(
        "{}---\n{}---\n{}",
        ns_yaml("shop", "a"),
        svc_yaml("shop", "web", "80").replace(
            "solo.io/service-scope: global\n",
            &format!("solo.io/service-scope: global\n    team: \"{web_team}\"\n")
        ),
        svc_yaml("shop", "api", "90")
    )
}

fn web_team(snap: &ClusterSnapshot) -> Option<String> {
    snap.services
        .get(&meshpeer_model::NsName::new("shop", "web"))?
        .metadata
        .labels
        .as_ref()?
        .get("team")
        .cloned()
}

#[test]
fn f1_folder_state_holds_an_in_place_shrink_until_it_settles() {
    let dir = cluster_folder();
    let d = dir.path();
    write(d, "shop.yaml", &three_objects("a"));
    let mut state = FolderState::load(d).unwrap();
    state.set_settle(Duration::from_millis(200));
    assert!(state.next_check().is_none());

    // Truncated in place: held, nothing withdrawn.
    fs::File::create(d.join("shop.yaml")).unwrap();
    assert!(poll_changes(&mut state).unwrap().is_empty());
    let at = state.next_check().expect("the shrunk file is held");
    // Written again in full before it settled: used at once.
    write(d, "shop.yaml", &three_objects("b"));
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(keys_of(&changes), ["apply Service shop/web"]);
    assert!(state.next_check().is_none());

    // Emptied in place and left so: taken once settled.
    fs::File::create(d.join("shop.yaml")).unwrap();
    assert!(poll_changes(&mut state).unwrap().is_empty());
    let at2 = state.next_check().unwrap();
    assert!(at2 >= at);
    std::thread::sleep(at2.saturating_duration_since(std::time::Instant::now()));
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(
        keys_of(&changes),
        [
            "delete Namespace shop",
            "delete Service shop/api",
            "delete Service shop/web"
        ]
    );

    // A file renamed into place is whole: fewer objects are used at once.
    write(d, "shop.yaml", &three_objects("a"));
    assert_eq!(poll_changes(&mut state).unwrap().len(), 3);
    replace(d, "shop.yaml", &ns_yaml("shop", "a"));
    let changes = poll_changes(&mut state).unwrap();
    assert_eq!(
        keys_of(&changes),
        ["delete Service shop/api", "delete Service shop/web"]
    );
}

#[tokio::test]
async fn f1_a_slow_in_place_write_withdraws_nothing_at_any_moment() {
    use std::io::Write as _;

    let dir = cluster_folder();
    let d = dir.path();
    write(d, "shop.yaml", &three_objects("a"));
    let (mut w, _) = Watched::start(d).await;
    assert_eq!(w.snap.services.len(), 2);

    // A slow writer: truncate, pause longer than the debounce, write half,
    // pause again, write the rest. Its pauses imitate the writer; nothing
    // here waits for the source.
    let text = three_objects("b");
    let (first, rest) = text.split_at(text.len() / 2);
    let mut file = fs::File::create(d.join("shop.yaml")).unwrap();
    file.flush().unwrap();
    tokio::time::sleep(DEFAULT_DEBOUNCE * 8).await;
    file.write_all(first.as_bytes()).unwrap();
    file.flush().unwrap();
    tokio::time::sleep(DEFAULT_DEBOUNCE * 8).await;
    file.write_all(rest.as_bytes()).unwrap();
    drop(file);

    let changes = w
        .until("the slow write", |s| web_team(s).as_deref() == Some("b"))
        .await;
    assert_eq!(
        keys_of(&changes),
        ["apply Service shop/web"],
        "{changes:#?}"
    );
    assert_eq!(w.snap, load_cluster_dir(d).unwrap());
}

#[tokio::test]
async fn f1_a_file_emptied_in_place_and_left_empty_is_taken() {
    let dir = cluster_folder();
    let d = dir.path();
    let (mut w, _) = Watched::start(d).await;
    assert_eq!(w.snap.services.len(), 1);
    let started = std::time::Instant::now();
    fs::File::create(d.join("shop.yaml")).unwrap();
    let changes = w.until("the emptied file", |s| s.services.is_empty()).await;
    assert_eq!(
        keys_of(&changes),
        ["delete Namespace shop", "delete Service shop/web"]
    );
    // Not before it had settled.
    assert!(
        started.elapsed() >= meshpeer_store::file_source::DEFAULT_WRITE_SETTLE,
        "taken after {:?}",
        started.elapsed()
    );
    assert_eq!(w.snap, load_cluster_dir(d).unwrap());
}
