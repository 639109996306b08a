//! File mode: a cluster is a folder holding Kubernetes YAML/JSON manifests
//! (any number of files, multi-document) and a `cluster.yaml` with the
//! cluster's name, network, locality and trust domain.
//!
//! [`load_cluster_dir`] reads a folder once (the `render` command).
//! [`FolderState`] reads it again and again (the watching source): it keeps,
//! per manifest file, the objects of its last good read, so that a file being
//! edited into a broken state does not take its objects away.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshpeer_model::{
    Change, ClusterConfig, ClusterSnapshot, ConfigError, Diagnostic, Kind, Object, ObjectKey,
    ObjectRef, ParseError, Rule, Severity, parse_documents,
};
use tracing::{info, warn};

/// Name of the cluster config file in a cluster folder.
pub const CLUSTER_FILE: &str = "cluster.yaml";

/// A folder that cannot be used as a cluster.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}: no such directory")]
    NotFound(PathBuf),
    #[error("{0}: not a directory; give the folder that holds cluster.yaml and the manifests")]
    NotADirectory(PathBuf),
    #[error(
        "{0}: no cluster.yaml; a cluster folder needs one, at least `name: <cluster>` (fields: name, network, region, zone, trustDomain)"
    )]
    MissingConfig(PathBuf),
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether a file name is read as input of a cluster folder: `cluster.yaml`
/// or a manifest (`*.yaml`, `*.yml`, `*.json`), not hidden.
pub(crate) fn is_input_name(name: &str) -> bool {
    !name.starts_with('.')
        && (name == CLUSTER_FILE
            || [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| name.ends_with(ext)))
}

/// Manifest files of a folder: `*.yaml`, `*.yml`, `*.json`, not hidden, not
/// `cluster.yaml`, in name order. Subfolders are not read (like
/// `kubectl apply -f DIR` without `-R`).
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == CLUSTER_FILE || !is_input_name(&name) || !path.is_file() {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// Checks that `dir` is a folder holding a `cluster.yaml`.
pub(crate) fn check_cluster_dir(dir: &Path) -> Result<(), LoadError> {
    if !dir.exists() {
        return Err(LoadError::NotFound(dir.to_owned()));
    }
    if !dir.is_dir() {
        return Err(LoadError::NotADirectory(dir.to_owned()));
    }
    if !dir.join(CLUSTER_FILE).is_file() {
        return Err(LoadError::MissingConfig(dir.to_owned()));
    }
    Ok(())
}

/// Reads a cluster folder into a snapshot. Documents that cannot be read
/// become diagnostics (rule F1) and are left out; the rest is used.
pub fn load_cluster_dir(dir: &Path) -> Result<ClusterSnapshot, LoadError> {
    check_cluster_dir(dir)?;
    let config_path = dir.join(CLUSTER_FILE);
    let text = fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
    let config = ClusterConfig::from_yaml(&config_path.display().to_string(), &text)?;

    let mut objects = Vec::new();
    let mut errors: Vec<ParseError> = Vec::new();
    for file in manifest_files(dir)? {
        let text = fs::read_to_string(&file).map_err(io_err(&file))?;
        let parsed = parse_documents(&file.display().to_string(), &text);
        objects.extend(parsed.objects);
        errors.extend(parsed.errors);
    }
    let mut snap = ClusterSnapshot::from_objects(config, objects);
    snap.add_parse_errors(&errors);
    Ok(snap)
}

// ------------------------------------------------------------ FolderState

/// A read is trusted to show a file's current content only when the file's
/// modification time is at least this much older than the read: file
/// systems store coarse times (a jiffy on Linux, 2 s on FAT), so two writes
/// close together can leave the same time and size (git's "racy" check).
const RACY_MARGIN: Duration = Duration::from_secs(2);

/// What `stat` says about a file; a difference means it must be read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    len: u64,
    modified: Option<SystemTime>,
    /// Inode and change time (Unix): an editor's replace-by-rename makes a
    /// new inode even when size and mtime match.
    inode: u64,
    changed: (i64, i64),
}

impl Stat {
    fn of(meta: &fs::Metadata) -> Stat {
        #[cfg(unix)]
        let (inode, changed) = {
            use std::os::unix::fs::MetadataExt;
            (meta.ino(), (meta.ctime(), meta.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let (inode, changed) = (0, (0, 0));
        Stat {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
            changed,
        }
    }
}

/// The content of a file as last read.
#[derive(Clone, Copy, Debug)]
struct Seen {
    stat: Stat,
    read_at: SystemTime,
    hash: u64,
}

impl Seen {
    /// Whether a file with this `stat` surely still holds what was read.
    fn still_current(&self, stat: &Stat) -> bool {
        self.stat == *stat
            && self
                .stat
                .modified
                .and_then(|m| m.checked_add(RACY_MARGIN))
                .is_some_and(|m| m <= self.read_at)
    }
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Reads a file unless `seen` shows it unchanged. `Ok(None)`: unchanged;
/// `Ok(Some((seen, None)))`: same bytes as before (only its stat changed).
#[allow(clippy::type_complexity)]
fn read_if_changed(
    path: &Path,
    seen: Option<&Seen>,
) -> io::Result<Option<(Seen, Option<Vec<u8>>)>> {
    let stat = Stat::of(&fs::metadata(path)?);
    if seen.is_some_and(|s| s.still_current(&stat)) {
        return Ok(None);
    }
    let read_at = SystemTime::now();
    let bytes = fs::read(path)?;
    // Stat again after reading, so the stamp is not older than the content.
    let stat = fs::metadata(path).map(|m| Stat::of(&m)).unwrap_or(stat);
    let hash = content_hash(&bytes);
    let new = Seen {
        stat,
        read_at,
        hash,
    };
    if seen.is_some_and(|s| s.hash == hash) {
        return Ok(Some((new, None)));
    }
    Ok(Some((new, Some(bytes))))
}

/// A read of a file that was not taken yet: an in-place write left fewer
/// objects than the file had, or a document that cannot be read, which is
/// what a file caught in the middle of being rewritten looks like.
#[derive(Debug)]
struct Held {
    read: Result<Vec<Object>, Vec<ParseError>>,
    /// When this content was first read.
    since: Instant,
}

/// One manifest file as [`FolderState`] knows it.
#[derive(Debug)]
struct ManifestFile {
    /// The content last read, `None` when it could not be read.
    seen: Option<Seen>,
    /// Keys of the objects of the last good read (their copies are in
    /// `FolderState::defs`).
    keys: Vec<ObjectKey>,
    /// Whether the file was ever read without errors.
    ever_good: bool,
    /// Unreadable documents of the current content.
    errors: Vec<ParseError>,
    /// Why the file itself cannot be read (permissions, not UTF-8).
    unreadable: Option<String>,
    /// Content read but not taken yet (see [`FolderState::set_settle`]).
    held: Option<Held>,
}

/// One definition of an object, and the file it came from.
#[derive(Clone, Debug)]
struct Def {
    file: Arc<Path>,
    object: Object,
}

/// Of several definitions of one object, the one used: the copy that sorts
/// last by content (as [`ClusterSnapshot::from_objects`] chooses), then by
/// file, so the choice does not depend on reading order.
fn winner(defs: &[Def]) -> Option<&Def> {
    match defs {
        [] => None,
        [one] => Some(one),
        many => many
            .iter()
            .map(|d| ((d.object.to_json().to_string(), d.file.clone()), d))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, d)| d),
    }
}

/// A cluster folder as last read, file by file, kept up to date by
/// [`FolderState::poll`].
///
/// - A manifest file is read again when its content changed. When any of its
///   documents cannot be read, the file keeps contributing the objects of its
///   last good read (none if it never had one) and its problems are reported
///   (F1, with path, document and line).
/// - A deleted file's objects go away.
/// - A `cluster.yaml` that becomes invalid or goes away keeps the last good
///   config, reported as F2.
/// - An object defined twice is reported; the copy used is the one
///   [`ClusterSnapshot::from_objects`] would use.
///
/// When the folder is clean, [`FolderState::snapshot`] equals
/// [`load_cluster_dir`] in objects and config. (`load_cluster_dir` uses the
/// good documents of a partly broken file; a `FolderState` never uses a
/// broken version of a file.)
#[derive(Debug)]
pub struct FolderState {
    dir: PathBuf,
    config: ClusterConfig,
    config_seen: Option<Seen>,
    /// Why the current `cluster.yaml` is not used (F2).
    config_problem: Option<String>,
    files: BTreeMap<Arc<Path>, ManifestFile>,
    /// Every definition of every object, by key.
    defs: BTreeMap<ObjectKey, Vec<Def>>,
    /// Keys defined more than once.
    duplicates: BTreeSet<ObjectKey>,
    diagnostics: Vec<Diagnostic>,
    /// How long an in-place write that shrank a file must stay unchanged
    /// before it is taken (zero: at once).
    settle: Duration,
}

impl FolderState {
    /// Reads a cluster folder. A missing folder, or a missing or invalid
    /// `cluster.yaml`, is an error; unreadable manifests are diagnostics.
    pub fn load(dir: &Path) -> Result<FolderState, LoadError> {
        check_cluster_dir(dir)?;
        let config_path = dir.join(CLUSTER_FILE);
        let (seen, bytes) = match read_if_changed(&config_path, None) {
            Ok(Some((seen, Some(bytes)))) => (seen, bytes),
            Ok(_) => return Err(LoadError::MissingConfig(dir.to_owned())),
            Err(e) => return Err(io_err(&config_path)(e)),
        };
        let config = parse_config(&config_path, &bytes)?;
        let mut state = FolderState {
            dir: dir.to_owned(),
            config,
            config_seen: Some(seen),
            config_problem: None,
            files: BTreeMap::new(),
            defs: BTreeMap::new(),
            duplicates: BTreeSet::new(),
            diagnostics: Vec::new(),
            settle: Duration::ZERO,
        };
        state.poll()?;
        Ok(state)
    }

    /// Slow writers: a manifest rewritten in place (same file, not a new
    /// file renamed over it) whose new content parses to fewer objects
    /// than the file had is taken only once it has stayed unchanged for
    /// `settle` (a truncate, a pause, then the rest of the write would
    /// otherwise withdraw the file's services at every peer for a
    /// moment). A file that stays short, or empty, is taken then. Default
    /// zero: every read is taken at once. While a file is held,
    /// [`FolderState::next_check`] says when to read again.
    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
    }

    /// When a held file may be taken, if any is held: poll again then.
    pub fn next_check(&self) -> Option<Instant> {
        self.files
            .values()
            .filter_map(|f| f.held.as_ref())
            .map(|h| h.since + self.settle)
            .min()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config in use (the last good `cluster.yaml`).
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Problems of the folder now: unreadable documents and files (F1),
    /// objects defined twice (F1), an unusable `cluster.yaml` (F2). Sorted.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// The objects in use, in key order.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.defs
            .values()
            .filter_map(|d| winner(d))
            .map(|d| &d.object)
    }

    /// The whole state as a source's first update: the config, a
    /// [`Change::Replace`] for every [`Kind`], and the diagnostics.
    pub fn full_state(&self) -> Vec<Change> {
        let mut by_kind: BTreeMap<Kind, Vec<Object>> = BTreeMap::new();
        for obj in self.objects() {
            by_kind.entry(obj.kind()).or_default().push(obj.clone());
        }
        let mut changes = vec![Change::Config(self.config.clone())];
        for kind in Kind::ALL {
            changes.push(Change::Replace(
                kind,
                by_kind.remove(&kind).unwrap_or_default(),
            ));
        }
        changes.push(Change::SourceDiagnostics(self.diagnostics.clone()));
        changes
    }

    /// The state as a snapshot (what applying [`FolderState::full_state`]
    /// to an empty snapshot gives).
    pub fn snapshot(&self) -> ClusterSnapshot {
        let mut snap = ClusterSnapshot::new(self.config.clone());
        for change in self.full_state() {
            snap.apply_change(change);
        }
        snap
    }

    /// Reads the folder again and returns what changed since the last read:
    /// [`Change::Config`] first when the config changed, then
    /// [`Change::Apply`] / [`Change::Delete`] in key order, then
    /// [`Change::SourceDiagnostics`] when the diagnostics changed. Nothing
    /// when nothing changed. Files whose content is unchanged are not parsed
    /// again.
    ///
    /// Fails only when the folder itself cannot be listed (removed, moved,
    /// no permission); the state is then unchanged.
    pub fn poll(&mut self) -> Result<Vec<Change>, LoadError> {
        let listed = manifest_files(&self.dir)?;
        let mut changes = Vec::new();
        if let Some(config) = self.poll_config() {
            changes.push(Change::Config(config));
        }

        // Old winner of every key whose definitions change.
        let mut touched: BTreeMap<ObjectKey, Option<Object>> = BTreeMap::new();
        let listed_set: BTreeSet<&Path> = listed.iter().map(PathBuf::as_path).collect();
        let gone: Vec<Arc<Path>> = self
            .files
            .keys()
            .filter(|p| !listed_set.contains(p.as_ref()))
            .cloned()
            .collect();
        for path in gone {
            self.remove_file(&path, &mut touched);
        }
        for path in listed {
            self.poll_file(&path, &mut touched);
        }

        for (key, before) in touched {
            let defs = self.defs.get(&key).map(Vec::as_slice).unwrap_or_default();
            if defs.len() > 1 {
                self.duplicates.insert(key.clone());
            } else {
                self.duplicates.remove(&key);
            }
            match (before, winner(defs)) {
                (Some(_), None) => changes.push(Change::Delete(key)),
                (before, Some(now)) if before.as_ref() != Some(&now.object) => {
                    changes.push(Change::Apply(now.object.clone()));
                }
                _ => {}
            }
        }

        let diagnostics = self.compute_diagnostics();
        if diagnostics != self.diagnostics {
            self.diagnostics = diagnostics;
            changes.push(Change::SourceDiagnostics(self.diagnostics.clone()));
        }
        Ok(changes)
    }

    /// Reads `cluster.yaml` again if it changed; returns the new config when
    /// it is valid and differs.
    fn poll_config(&mut self) -> Option<ClusterConfig> {
        let path = self.dir.join(CLUSTER_FILE);
        let (seen, bytes) = match read_if_changed(&path, self.config_seen.as_ref()) {
            Ok(None) => return None,
            Ok(Some((seen, None))) => {
                self.config_seen = Some(seen);
                return None;
            }
            Ok(Some((seen, Some(bytes)))) => (seen, bytes),
            Err(e) => {
                self.config_seen = None;
                let problem = if e.kind() == io::ErrorKind::NotFound {
                    format!("{} was removed", path.display())
                } else {
                    format!("{}: cannot read: {e}", path.display())
                };
                if self.config_problem.as_ref() != Some(&problem) {
                    warn!(file = %path.display(), %problem, "cluster config unusable; keeping the last good one");
                }
                self.config_problem = Some(problem);
                return None;
            }
        };
        self.config_seen = Some(seen);
        match parse_config(&path, &bytes) {
            Ok(config) => {
                self.config_problem = None;
                if config == self.config {
                    return None;
                }
                info!(file = %path.display(), cluster = %config.name, "cluster config reloaded");
                self.config = config.clone();
                Some(config)
            }
            Err(e) => {
                warn!(file = %path.display(), problem = %e, "cluster config invalid; keeping the last good one");
                self.config_problem = Some(e.to_string());
                None
            }
        }
    }

    fn poll_file(&mut self, path: &Path, touched: &mut BTreeMap<ObjectKey, Option<Object>>) {
        let before = self.files.get(path).and_then(|f| f.seen);
        let (seen, bytes) = match read_if_changed(path, before.as_ref()) {
            Ok(None) => {
                self.settle_held(path, touched);
                return;
            }
            Ok(Some((seen, bytes))) => (seen, bytes),
            // Deleted between listing and reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.remove_file(path, touched);
                return;
            }
            Err(e) => {
                let file = self.file_mut(path);
                file.seen = None;
                file.unreadable = Some(e.to_string());
                file.errors.clear();
                file.held = None;
                warn!(file = %path.display(), error = %e, "cannot read manifest; keeping its last good objects");
                return;
            }
        };
        let settle = self.settle;
        let file = self.file_mut(path);
        file.seen = Some(seen);
        let Some(bytes) = bytes else {
            // Same bytes as the last read.
            self.settle_held(path, touched);
            return;
        };
        file.held = None;
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => {
                file.unreadable = Some("not UTF-8 text".to_owned());
                file.errors.clear();
                warn!(file = %path.display(), "manifest is not UTF-8 text; keeping its last good objects");
                return;
            }
        };
        file.unreadable = None;
        let parsed = parse_documents(&path.display().to_string(), &text);
        let read = if parsed.errors.is_empty() {
            Ok(parsed.objects)
        } else {
            Err(parsed.errors)
        };
        // Rewritten in place (not a new file renamed over it) and it would
        // lose objects or readability: perhaps caught mid-write. Held
        // until it stays so for the settle time.
        let in_place = before.is_some_and(|b| b.stat.inode == seen.stat.inode);
        let loses = match &read {
            Ok(objects) => {
                let keys: BTreeSet<ObjectKey> = objects.iter().map(Object::key).collect();
                keys.len() < file.keys.len()
            }
            Err(_) => file.errors.is_empty(),
        };
        if !settle.is_zero() && in_place && loses {
            info!(
                file = %path.display(),
                settle = ?settle,
                "manifest rewritten in place with fewer objects or an unreadable document; used once it has not changed for the settle time"
            );
            file.held = Some(Held {
                read,
                since: Instant::now(),
            });
            return;
        }
        self.take(path, read, touched);
    }

    /// Makes `read` the file's content: its objects, or its problems (the
    /// last good objects kept).
    fn take(
        &mut self,
        path: &Path,
        read: Result<Vec<Object>, Vec<ParseError>>,
        touched: &mut BTreeMap<ObjectKey, Option<Object>>,
    ) {
        let file = self.file_mut(path);
        match read {
            Err(errors) => {
                for e in &errors {
                    warn!(file = %path.display(), document = e.document, line = e.line, object = e.object, error = %e.message, "unreadable manifest document; keeping the file's last good objects");
                }
                file.errors = errors;
            }
            Ok(objects) => {
                file.errors.clear();
                file.ever_good = true;
                info!(file = %path.display(), objects = objects.len(), "manifest reloaded");
                self.set_objects(path, objects, touched);
            }
        }
    }

    /// Takes a held file's content once it has not changed for the settle
    /// time.
    fn settle_held(&mut self, path: &Path, touched: &mut BTreeMap<ObjectKey, Option<Object>>) {
        let settle = self.settle;
        let Some(file) = self.files.get_mut(path) else {
            return;
        };
        if file
            .held
            .as_ref()
            .is_none_or(|h| h.since.elapsed() < settle)
        {
            return;
        }
        let Some(held) = file.held.take() else {
            return;
        };
        info!(file = %path.display(), "manifest unchanged for the settle time; used as it is");
        self.take(path, held.read, touched);
    }

    fn file_mut(&mut self, path: &Path) -> &mut ManifestFile {
        self.files
            .entry(Arc::from(path))
            .or_insert_with(|| ManifestFile {
                seen: None,
                keys: Vec::new(),
                ever_good: false,
                errors: Vec::new(),
                unreadable: None,
                held: None,
            })
    }

    fn remove_file(&mut self, path: &Path, touched: &mut BTreeMap<ObjectKey, Option<Object>>) {
        if self.files.contains_key(path) {
            info!(file = %path.display(), "manifest removed");
            self.set_objects(path, Vec::new(), touched);
            self.files.remove(path);
        }
    }

    /// Makes `objects` the definitions coming from `path`, noting the old
    /// winner of every key concerned in `touched`.
    fn set_objects(
        &mut self,
        path: &Path,
        objects: Vec<Object>,
        touched: &mut BTreeMap<ObjectKey, Option<Object>>,
    ) {
        let mut note = |defs: &BTreeMap<ObjectKey, Vec<Def>>, key: &ObjectKey| {
            if !touched.contains_key(key) {
                let before = defs
                    .get(key)
                    .and_then(|d| winner(d))
                    .map(|d| d.object.clone());
                touched.insert(key.clone(), before);
            }
        };
        let file: Arc<Path> = match self.files.get_key_value(path) {
            Some((k, _)) => k.clone(),
            None => Arc::from(path),
        };
        let old_keys = self
            .files
            .get_mut(path)
            .map(|f| std::mem::take(&mut f.keys))
            .unwrap_or_default();
        for key in old_keys {
            note(&self.defs, &key);
            if let Some(defs) = self.defs.get_mut(&key) {
                defs.retain(|d| d.file != file);
                if defs.is_empty() {
                    self.defs.remove(&key);
                }
            }
        }
        let mut keys = Vec::with_capacity(objects.len());
        for object in objects {
            let key = object.key();
            note(&self.defs, &key);
            self.defs.entry(key.clone()).or_default().push(Def {
                file: file.clone(),
                object,
            });
            keys.push(key);
        }
        keys.sort();
        keys.dedup();
        if let Some(f) = self.files.get_mut(path) {
            f.keys = keys;
        }
    }

    fn compute_diagnostics(&self) -> Vec<Diagnostic> {
        let cluster = self.config.name.as_str();
        let file_ref = |path: &Path| ObjectRef::new("file", None, &path.display().to_string());
        let mut out = Vec::new();
        if let Some(problem) = &self.config_problem {
            out.push(Diagnostic::new(
                cluster,
                Rule::F2,
                Severity::Error,
                file_ref(&self.dir.join(CLUSTER_FILE)),
                format!("{problem}; the last good cluster config is used until it is fixed"),
            ));
        }
        for (path, file) in &self.files {
            let broken = if let Some(why) = &file.unreadable {
                format!("cannot read the file: {why}")
            } else if !file.errors.is_empty() {
                let mut snap = ClusterSnapshot::new(self.config.clone());
                snap.add_parse_errors(&file.errors);
                out.extend(snap.diagnostics);
                format!("{} of its documents cannot be read", file.errors.len())
            } else {
                continue;
            };
            let kept = if file.ever_good {
                let n = file.keys.len();
                let objects = if n == 1 { "object" } else { "objects" };
                format!("the file's last good version ({n} {objects}) is used until it is fixed")
            } else {
                "none of its objects are used until it is fixed".to_owned()
            };
            out.push(Diagnostic::new(
                cluster,
                Rule::F1,
                Severity::Error,
                file_ref(path),
                format!("{broken}; {kept}"),
            ));
        }
        for key in &self.duplicates {
            let Some(defs) = self.defs.get(key) else {
                continue;
            };
            let files: BTreeSet<String> =
                defs.iter().map(|d| d.file.display().to_string()).collect();
            let used = winner(defs)
                .map(|d| d.file.display().to_string())
                .unwrap_or_default();
            let ns = (!key.namespace.is_empty()).then_some(key.namespace.as_str());
            out.push(Diagnostic::new(
                cluster,
                Rule::F1,
                Severity::Warning,
                ObjectRef::new(&key.kind.as_str().to_ascii_lowercase(), ns, &key.name),
                format!(
                    "{key} is defined more than once (in {}); only one copy is used, the one in {used}",
                    files.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        out.sort();
        out.dedup();
        out
    }
}

fn parse_config(path: &Path, bytes: &[u8]) -> Result<ClusterConfig, ConfigError> {
    let source_name = path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|_| ConfigError {
        source_name: source_name.clone(),
        message: "not UTF-8 text".to_owned(),
    })?;
    ClusterConfig::from_yaml(&source_name, text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn loads_a_folder_and_reports_bad_documents() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(CLUSTER_FILE),
            "name: c1\nregion: r\nzone: z\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports:\n  - port: nope\n",
        )
        .unwrap();
        fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
        fs::write(dir.path().join(".hidden.yaml"), "::").unwrap();
        let snap = load_cluster_dir(dir.path()).unwrap();
        assert_eq!(snap.config.name, "c1");
        assert_eq!(snap.namespaces.len(), 1);
        assert!(snap.services.is_empty());
        assert_eq!(snap.diagnostics.len(), 1);
        let d = snap.diagnostics[0].to_string();
        assert!(d.starts_with("error[F1] file "), "{d}");
        assert!(d.contains("a.yaml"), "{d}");
        assert!(d.contains("document 2 (line 11)"), "{d}");
        assert!(d.contains("spec.ports[0].port"), "{d}");
    }

    #[test]
    fn unusable_folders_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_cluster_dir(dir.path()).unwrap_err();
        assert!(matches!(e, LoadError::MissingConfig(_)), "{e}");
        assert!(e.to_string().contains("no cluster.yaml"));
        let e = load_cluster_dir(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(e, LoadError::NotFound(_)));
        fs::write(dir.path().join(CLUSTER_FILE), "name: Bad_Name\n").unwrap();
        let e = load_cluster_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a valid cluster name"), "{e}");
    }
}
