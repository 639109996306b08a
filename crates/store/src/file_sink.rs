//! The file-mode sink: ServiceEntries, WorkloadEntries and peer status as
//! YAML files.
//!
//! `<out>/<name>.yaml` holds one ServiceEntry;
//! `<out>/workloadentries/<name>.yaml` one WorkloadEntry (upstream flavor);
//! `<out>/status/<namespace>.<name>.yaml`
//! holds meshpeer's part of a remote-peer Gateway's status;
//! `<out>/status/httproutes/<namespace>.<name>.yaml` meshpeer's parents of
//! an HTTPRoute's status (SPEC L7), shaped as the route (apiVersion, kind,
//! metadata, `status.parents`). Files are written
//! atomically (temporary file in the same folder, fsync, rename), only when
//! their content changes, and only files holding meshpeer-managed objects are
//! ever replaced or deleted.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::Resource;
use meshpeer_model::objects::{
    Condition, HttpRoute, HttpRouteStatus, ServiceEntry, WorkloadEntry, is_managed,
};
use meshpeer_model::parse_documents;
use meshpeer_model::render::to_yaml;
use meshpeer_model::routes::RouteStatus;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::conditions::{now_rfc3339, route_parents};
use crate::managed::Generated;
use crate::sink::{Existing, Output, PeerStatus, Sink, SinkError, SinkFuture, SinkReport};
use imbl::ordmap::DiffItem;

/// Subfolder of the output folder holding Gateway status files.
pub const STATUS_DIR: &str = "status";
/// Subfolder of [`STATUS_DIR`] holding HTTPRoute status files.
pub const ROUTE_STATUS_DIR: &str = "httproutes";
/// Subfolder of the output folder holding WorkloadEntry files.
pub const WORKLOADS_DIR: &str = "workloadentries";

/// Writes the catalog's ServiceEntries (and WorkloadEntries) into a folder
/// (see the module docs).
#[derive(Clone, Debug)]
pub struct FileSink {
    out_dir: PathBuf,
    entries: Folder<ServiceEntry>,
    workloads: Folder<WorkloadEntry>,
    /// Stamps `lastTransitionTime` on route conditions that changed.
    clock: fn() -> String,
}

/// The files of one kind.
#[derive(Clone, Debug)]
struct Folder<K> {
    dir: PathBuf,
    /// What the last successful `apply` made the folder hold, by name: the
    /// next `apply` writes only what differs from it (a persistent map: the
    /// comparison visits only what changed). (The output folder is
    /// meshpeer's; after a restart the first `apply` compares every file.)
    applied: imbl::OrdMap<String, Arc<K>>,
    /// Whether the folder has been listed since this sink started: after
    /// that, it holds exactly the files of `applied` (the folder is
    /// meshpeer's), so unwanted files are known without listing it again.
    listed: bool,
}

impl FileSink {
    /// The folder (and its subfolders) is created when first written.
    pub fn new(out_dir: PathBuf) -> Self {
        FileSink {
            entries: Folder::new(out_dir.clone()),
            workloads: Folder::new(out_dir.join(WORKLOADS_DIR)),
            out_dir,
            clock: now_rfc3339,
        }
    }

    /// Replaces the clock that stamps `lastTransitionTime` (tests pin it).
    /// It returns an RFC 3339 time in UTC.
    pub fn with_clock(mut self, clock: fn() -> String) -> Self {
        self.clock = clock;
        self
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }
}

impl<K: Generated> Folder<K> {
    fn new(dir: PathBuf) -> Self {
        Folder {
            dir,
            applied: imbl::OrdMap::new(),
            listed: false,
        }
    }

    /// Writes `<dir>/<metadata.name>.yaml` for each desired object (rendered
    /// with [`to_yaml`]) unless it already holds exactly that, and deletes
    /// the `<dir>/*.yaml` files holding only meshpeer-managed objects of
    /// this kind that are not wanted. A file in the way that holds anything
    /// else is left alone (logged, not counted).
    async fn apply(
        &mut self,
        desired: &imbl::OrdMap<String, Arc<K>>,
    ) -> Result<SinkReport, SinkError> {
        let dir = self.dir.clone();
        // What differs from the last successful apply; everything the first
        // time (then the folder is listed to find files no longer wanted).
        // `true`: the file is one this sink wrote (no need to read it back
        // before replacing it).
        let mut changed: Vec<(Arc<K>, bool)> = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        let mut skipped = 0;
        if self.listed {
            for item in self.applied.diff(desired) {
                match item {
                    DiffItem::Add(_, o) => changed.push((Arc::clone(o), false)),
                    DiffItem::Update { new: (_, o), .. } => changed.push((Arc::clone(o), true)),
                    DiffItem::Remove(name, _) => gone.push(format!("{name}.yaml")),
                }
            }
            skipped = desired.len().saturating_sub(changed.len());
        } else {
            changed.extend(desired.values().map(|o| (Arc::clone(o), false)));
        }
        let wanted = wanted_files(&changed)?;
        let all = if self.listed {
            None
        } else {
            Some(file_names::<K>(desired)?)
        };
        let gone = self.listed.then_some(gone);
        if wanted.is_empty() && gone.as_ref().is_some_and(Vec::is_empty) {
            self.applied = desired.clone();
            return Ok(SinkReport {
                unchanged: skipped,
                ..SinkReport::default()
            });
        }
        let mut report = blocking(move || apply_files::<K>(&dir, wanted, all, gone)).await?;
        report.unchanged += skipped;
        self.listed = true;
        self.applied = desired.clone();
        Ok(report)
    }
}

impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("folder {}", self.out_dir.display())
    }

    /// The meshpeer-managed ServiceEntries of `<out>/*.yaml` and
    /// WorkloadEntries of `<out>/workloadentries/*.yaml`, in file name
    /// order. Files that cannot be read are skipped (and logged).
    fn existing(&mut self) -> SinkFuture<'_, Existing> {
        let entries = self.entries.dir.clone();
        let workloads = self.workloads.dir.clone();
        Box::pin(blocking(move || {
            Ok(Existing {
                entries: read_existing(&entries)?,
                workloads: read_existing(&workloads)?,
            })
        }))
    }

    /// Makes `<out>` hold the desired ServiceEntries and
    /// `<out>/workloadentries` the desired WorkloadEntries (see
    /// [`Folder::apply`]), in that order.
    fn apply<'a>(&'a mut self, desired: &'a Output) -> SinkFuture<'a, SinkReport> {
        Box::pin(async move {
            let a = self.entries.apply(&desired.entries).await?;
            let b = self.workloads.apply(&desired.workloads).await?;
            Ok(a + b)
        })
    }

    /// Writes `<out>/status/<namespace>.<name>.yaml` per Gateway and removes
    /// the status files of Gateways not listed.
    fn write_status<'a>(&'a mut self, statuses: &'a [PeerStatus]) -> SinkFuture<'a, ()> {
        let dir = self.out_dir.join(STATUS_DIR);
        let wanted = status_files(statuses);
        Box::pin(async move { blocking(move || write_status_files(&dir, wanted?)).await })
    }

    /// Writes `<out>/status/httproutes/<namespace>.<name>.yaml` per route
    /// and removes the files of routes not listed. A condition whose status
    /// is the one in the file keeps the file's transition time.
    fn write_route_status<'a>(&'a mut self, routes: &'a [RouteStatus]) -> SinkFuture<'a, ()> {
        let dir = self.out_dir.join(STATUS_DIR).join(ROUTE_STATUS_DIR);
        let routes = routes.to_vec();
        let now = (self.clock)();
        Box::pin(async move {
            blocking(move || {
                let wanted = route_status_files(&dir, &routes, &now)?;
                if wanted.is_empty() && !dir.exists() {
                    // No route ever: no folder for them.
                    return Ok(());
                }
                write_status_files(&dir, wanted)
            })
            .await
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SinkError::Other(format!("writing files failed: {e}")))?
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A file name made of an object name: one path component, not hidden.
fn file_name(stem: &str, what: &str) -> Result<String, SinkError> {
    if stem.is_empty() || stem.starts_with('.') || stem.contains(['/', '\\', '\0']) {
        return Err(SinkError::Other(format!(
            "{what} {stem:?} cannot be used as a file name"
        )));
    }
    Ok(format!("{stem}.yaml"))
}

/// The file names of the desired objects (one per name: they are keyed by
/// it).
fn file_names<K: Generated>(
    desired: &imbl::OrdMap<String, Arc<K>>,
) -> Result<BTreeSet<String>, SinkError> {
    let what = format!("{} name", <K as k8s_openapi::Resource>::KIND);
    desired.keys().map(|name| file_name(name, &what)).collect()
}

/// A file to write: name, content, and whether this sink wrote it last.
type Wanted = (String, String, bool);

/// The file of each object, its name checked.
fn wanted_files<K: Generated>(objects: &[(Arc<K>, bool)]) -> Result<Vec<Wanted>, SinkError> {
    let what = format!("{} name", <K as k8s_openapi::Resource>::KIND);
    objects
        .iter()
        .map(|(o, ours)| {
            let name = o.metadata().name.as_deref().unwrap_or_default();
            Ok((
                file_name(name, &what)?,
                to_yaml(std::slice::from_ref(&**o)),
                *ours,
            ))
        })
        .collect()
}

/// Whether a file holds nothing but meshpeer-managed objects of kind `K`.
fn holds_only_managed<K: Generated>(path: &Path, bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let parsed = parse_documents(&path.display().to_string(), text);
    parsed.errors.is_empty()
        && parsed.skipped.is_empty()
        && !parsed.objects.is_empty()
        && parsed
            .objects
            .iter()
            .all(|o| K::from_object(o.clone()).is_some_and(|k| is_managed(k.metadata())))
}

/// `*.yaml` files directly in `dir`, not hidden, in name order (none when
/// the folder does not exist).
fn yaml_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, SinkError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".yaml") {
            continue;
        }
        let path = entry.path();
        // The type from the directory entry where the file system gives it
        // (no stat per file); a symlink is followed.
        let is_file = match entry.file_type() {
            Ok(t) if t.is_file() => true,
            Ok(t) if t.is_symlink() => path.is_file(),
            Ok(_) => false,
            Err(_) => path.is_file(),
        };
        if !is_file {
            continue;
        }
        files.push((name, path));
    }
    files.sort();
    Ok(files)
}

fn read_existing<K: Generated>(dir: &Path) -> Result<Vec<K>, SinkError> {
    let mut out = Vec::new();
    for (_, path) in yaml_files(dir)? {
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot read output file; skipped");
                continue;
            }
        };
        let parsed = parse_documents(&path.display().to_string(), &text);
        if let Some(e) = parsed.errors.first() {
            warn!(file = %path.display(), error = %e, "unreadable output file; skipped");
            continue;
        }
        out.extend(
            parsed
                .objects
                .into_iter()
                .filter_map(K::from_object)
                .filter(|o| is_managed(o.metadata())),
        );
    }
    Ok(out)
}

/// Writes `wanted` (the entries that may have changed) and deletes managed
/// files: those of `gone` when the caller knows them, else every such file
/// in the folder whose name is not in `names` (every desired file).
fn apply_files<K: Generated>(
    dir: &Path,
    wanted: Vec<Wanted>,
    names: Option<BTreeSet<String>>,
    gone: Option<Vec<String>>,
) -> Result<SinkReport, SinkError> {
    if !wanted.is_empty() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut report = SinkReport::default();
    for (name, content, ours) in wanted {
        let path = dir.join(&name);
        // A file this sink wrote last holds an older version of the same
        // entry: replaced without reading it back.
        let current = if ours {
            Err(io::Error::from(io::ErrorKind::NotFound))
        } else {
            fs::read(&path)
        };
        match current {
            Ok(current) if current == content.as_bytes() => {
                report.unchanged += 1;
                continue;
            }
            Ok(current) if !holds_only_managed::<K>(&path, &current) => {
                warn!(
                    file = %path.display(),
                    "file holds objects meshpeer does not manage; not overwritten"
                );
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        write_atomic(&path, content.as_bytes())?;
        debug!(file = %path.display(), "written");
        report.applied += 1;
    }
    let candidates = match gone {
        Some(gone) => gone.into_iter().map(|n| (dir.join(&n), n)).collect(),
        None => yaml_files(dir)?
            .into_iter()
            .map(|(n, p)| (p, n))
            .collect::<Vec<_>>(),
    };
    for (path, name) in candidates {
        if names.as_ref().is_some_and(|n| n.contains(&name)) {
            continue;
        }
        let Ok(current) = fs::read(&path) else {
            continue;
        };
        if holds_only_managed::<K>(&path, &current) {
            fs::remove_file(&path).map_err(io_err(&path))?;
            debug!(file = %path.display(), "deleted");
            report.deleted += 1;
        }
    }
    if report.applied + report.deleted > 0 {
        sync_dir(dir)?;
    }
    Ok(report)
}

/// `kubectl get gateway -o yaml`, reduced to meshpeer's part.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayStatusDoc<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: StatusMeta<'a>,
    status: StatusConditions<'a>,
}

#[derive(Serialize)]
struct StatusMeta<'a> {
    name: &'a str,
    namespace: &'a str,
}

#[derive(Serialize)]
struct StatusConditions<'a> {
    conditions: &'a [Condition],
}

fn status_files(statuses: &[PeerStatus]) -> Result<Vec<(String, String)>, SinkError> {
    let mut out = Vec::with_capacity(statuses.len());
    for st in statuses {
        let stem = format!("{}.{}", st.gateway.namespace, st.gateway.name);
        let file = file_name(&stem, "Gateway")?;
        let doc = GatewayStatusDoc {
            api_version: "gateway.networking.k8s.io/v1",
            kind: "Gateway",
            metadata: StatusMeta {
                name: &st.gateway.name,
                namespace: &st.gateway.namespace,
            },
            status: StatusConditions {
                conditions: &st.conditions,
            },
        };
        let yaml = serde_saphyr::to_string(&doc)
            .map_err(|e| SinkError::Other(format!("status of Gateway {stem}: {e}")))?;
        out.push((file, yaml));
    }
    Ok(out)
}

/// `kubectl get httproute -o yaml`, reduced to meshpeer's parents.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RouteStatusDoc {
    api_version: String,
    kind: String,
    metadata: RouteMeta,
    status: HttpRouteStatus,
}

#[derive(Serialize, Deserialize)]
struct RouteMeta {
    name: String,
    namespace: String,
}

/// The files of `routes` in `dir`, their conditions' times kept from the
/// files there when their status did not change.
fn route_status_files(
    dir: &Path,
    routes: &[RouteStatus],
    now: &str,
) -> Result<Vec<(String, String)>, SinkError> {
    let mut out = Vec::with_capacity(routes.len());
    for route in routes {
        let stem = format!("{}.{}", route.namespace, route.name);
        let file = file_name(&stem, "HTTPRoute")?;
        // An unreadable earlier file only loses its times.
        let written = fs::read_to_string(dir.join(&file))
            .ok()
            .and_then(|text| serde_saphyr::from_str::<RouteStatusDoc>(&text).ok())
            .map(|doc| doc.status.parents)
            .unwrap_or_default();
        let doc = RouteStatusDoc {
            api_version: HttpRoute::API_VERSION.to_owned(),
            kind: HttpRoute::KIND.to_owned(),
            metadata: RouteMeta {
                name: route.name.clone(),
                namespace: route.namespace.clone(),
            },
            status: HttpRouteStatus {
                parents: route_parents(route, &written, None, now),
            },
        };
        let yaml = serde_saphyr::to_string(&doc)
            .map_err(|e| SinkError::Other(format!("status of HTTPRoute {stem}: {e}")))?;
        out.push((file, yaml));
    }
    Ok(out)
}

fn write_status_files(dir: &Path, wanted: Vec<(String, String)>) -> Result<(), SinkError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut changed = false;
    let names: BTreeSet<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
    for (name, content) in wanted {
        let path = dir.join(&name);
        if fs::read(&path).is_ok_and(|current| current == content.as_bytes()) {
            continue;
        }
        write_atomic(&path, content.as_bytes())?;
        changed = true;
    }
    for (name, path) in yaml_files(dir)? {
        if !names.contains(&name) {
            fs::remove_file(&path).map_err(io_err(&path))?;
            changed = true;
        }
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that readers see the old or the new
/// content, never a part: a hidden temporary file in the same folder,
/// written and synced, then renamed over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io_err(path))
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
