//! Gathering what `check` judges: each cluster's objects (its folder, or
//! its Kubernetes API server), its cacerts, and, unless prechecking, its
//! controller's live state and the health of the data plane following it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meshpeer_dataplane::feed::CatalogFeed;
use meshpeer_identity::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ClusterCa, ROOT_CERT_FILE};
use meshpeer_model::objects::Condition;
use meshpeer_model::{
    CatalogConfig, ClusterSnapshot, Export, GlobalCatalog, NsName, catalog_with, exports, labels,
};
use meshpeer_store::Sink;
use meshpeer_store::file_sink::{FileSink, STATUS_DIR};
use meshpeer_store::load_cluster_dir;
use serde::Deserialize;

use super::http;
use super::kube_mode::{kube_client, kube_cluster_config, kube_snapshot, secret_cacerts};
use super::runtime::{RUNTIME_FILE, read_runtime_file};
use crate::api::{FollowerView, StatusDoc};
use crate::controller::view::Status as ControllerStatus;

/// Where a cluster is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// File mode: a cluster folder.
    Folder(PathBuf),
    /// Kubernetes mode: a kubeconfig context.
    Context(String),
}

impl Origin {
    pub fn describe(&self) -> String {
        match self {
            Origin::Folder(d) => format!("folder {}", d.display()),
            Origin::Context(c) => format!("Kubernetes context {c}"),
        }
    }

    pub fn folder(&self) -> Option<&Path> {
        match self {
            Origin::Folder(d) => Some(d),
            Origin::Context(_) => None,
        }
    }
}

/// One cluster to check, as the command line gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInput {
    pub origin: Origin,
    /// Its cacerts folder; file mode default: `<DIR>/../certs/<cluster name>`;
    /// Kubernetes mode default: the [`CACERTS_SECRET`] Secret in `istio-system`.
    pub cacerts: Option<PathBuf>,
    /// Its controller's API; file mode default: from `<DIR>/.meshpeer/controller.json`.
    pub controller: Option<String>,
    /// Kubernetes mode: the cluster's name (default: the context's).
    pub name: Option<String>,
}

impl ClusterInput {
    pub fn folder(dir: impl Into<PathBuf>) -> Self {
        ClusterInput {
            origin: Origin::Folder(dir.into()),
            cacerts: None,
            controller: None,
            name: None,
        }
    }
}

/// Name of Istio's plug-in CA Secret, in namespace `istio-system`.
pub const CACERTS_SECRET: &str = "cacerts";

/// The keys of the [`CACERTS_SECRET`] Secret: the files of the cacerts layout.
pub const CACERTS_KEYS: [&str; 4] = [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE];

/// Where a cluster's cacerts are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaPlace {
    /// A folder in the cacerts layout (`--cacerts`, or file mode's default).
    Folder(PathBuf),
    /// Kubernetes mode without `--cacerts`: Istio's plug-in CA Secret
    /// ([`CACERTS_SECRET`] in `istio-system`) of the context.
    Secret { context: String },
}

impl std::fmt::Display for CaPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaPlace::Folder(d) => write!(f, "{}", d.display()),
            CaPlace::Secret { context } => write!(
                f,
                "Secret {}/{CACERTS_SECRET} of context {context}",
                labels::ISTIO_SYSTEM
            ),
        }
    }
}

/// A cluster's intermediate CA, as found.
#[derive(Debug)]
pub enum CaFacts {
    /// Loaded and self-consistent (`ClusterCa::load`'s checks passed).
    Loaded { at: CaPlace, ca: Box<ClusterCa> },
    /// There, but not usable (for a Secret: also a key missing).
    Broken { at: CaPlace, error: String },
    /// Not there.
    Missing { looked: CaPlace },
    /// Could not be looked at (the API server refused or failed).
    Unreadable { at: CaPlace, error: String },
}

impl CaFacts {
    pub fn ca(&self) -> Option<&ClusterCa> {
        match self {
            CaFacts::Loaded { ca, .. } => Some(ca),
            _ => None,
        }
    }
}

/// A controller, as its API answers.
#[derive(Debug)]
pub struct LiveState {
    /// Its API address.
    pub addr: String,
    /// Its cluster listener, when the runtime file says.
    pub cluster: Option<String>,
    /// Where the address came from (`--controller`, the runtime file).
    pub from: String,
    pub status: ControllerStatus,
    /// The processes following its catalog.
    pub data_plane: Vec<FollowerView>,
    /// `GET /healthz` of each follower that gave a health address, by address.
    pub health: BTreeMap<String, Result<(), String>>,
    /// Its catalog feed (version and global services), if it answered.
    pub catalog: Result<CatalogFeed, String>,
}

/// What is known of a cluster's controller.
#[derive(Debug)]
pub enum Live {
    /// Not looked at (precheck, Kubernetes mode): why.
    NotChecked(String),
    /// File mode without `--controller` and without a runtime file.
    NoAddress,
    /// Does not answer.
    Down {
        addr: String,
        from: String,
        error: String,
    },
    Up(Box<LiveState>),
}

impl Live {
    pub fn state(&self) -> Option<&LiveState> {
        match self {
            Live::Up(s) => Some(s),
            _ => None,
        }
    }
}

/// Everything `check` knows of one cluster.
#[derive(Debug)]
pub struct ClusterFacts {
    pub name: String,
    pub origin: Origin,
    pub snapshot: ClusterSnapshot,
    /// What the cluster exports, from its objects.
    pub export: Export,
    /// What it would see, from its objects and the other clusters given.
    pub catalog: GlobalCatalog,
    pub ca: CaFacts,
    pub live: Live,
    /// File mode: the peer conditions the controller last wrote
    /// (`<out>/status/*.yaml`), by Gateway.
    pub written_status: BTreeMap<NsName, Vec<Condition>>,
    /// File mode: the output folder and the meshpeer-managed ServiceEntries in it.
    pub output: Option<(PathBuf, meshpeer_store::Existing)>,
}

impl ClusterFacts {
    /// Where the cacerts were (or were to be) read from.
    pub fn ca_place(&self) -> &CaPlace {
        match &self.ca {
            CaFacts::Loaded { at, .. }
            | CaFacts::Broken { at, .. }
            | CaFacts::Unreadable { at, .. }
            | CaFacts::Missing { looked: at } => at,
        }
    }

    /// The cacerts folder to name in fix lines (`CACERTS_DIR` for a Secret).
    pub fn cacerts_hint(&self) -> String {
        match self.ca_place() {
            CaPlace::Folder(d) => d.display().to_string(),
            CaPlace::Secret { .. } => "CACERTS_DIR".to_owned(),
        }
    }

    /// The folder (or context) to name in fix lines.
    pub fn source_hint(&self) -> String {
        match &self.origin {
            Origin::Folder(d) => d.display().to_string(),
            Origin::Context(c) => c.clone(),
        }
    }
}

/// Why facts could not be gathered at all.
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error("cannot load cluster folder: {0}")]
    Load(#[from] meshpeer_store::LoadError),
    #[error("{first} and {second} both hold cluster {name:?}; cluster names must be unique")]
    Duplicate {
        first: String,
        second: String,
        name: String,
    },
    #[error("Kubernetes context {context}: {message}")]
    Kube { context: String, message: String },
}

impl GatherError {
    pub(super) fn kube(context: &str, message: impl Into<String>) -> Self {
        GatherError::Kube {
            context: context.to_owned(),
            message: message.into(),
        }
    }
}

/// How long each network call of `gather` may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads every cluster and, unless `precheck`, asks their controllers.
/// Kubernetes clusters are read through a client for their kubeconfig
/// context (see [`gather_with_clients`]).
pub async fn gather(
    inputs: &[ClusterInput],
    precheck: bool,
    within: Duration,
) -> Result<Vec<ClusterFacts>, GatherError> {
    let mut clients = BTreeMap::new();
    for input in inputs {
        if let Origin::Context(ctx) = &input.origin
            && !clients.contains_key(ctx)
        {
            // A bad name is said before the kubeconfig is read.
            kube_cluster_config(ctx, input.name.as_deref())?;
            clients.insert(ctx.clone(), kube_client(ctx).await?);
        }
    }
    gather_with_clients(inputs, &clients, precheck, within).await
}

/// [`gather`] with the Kubernetes clients already built, by context name
/// (for tests: a mocked API server). Each Kubernetes cluster is listed once
/// (every kind [`meshpeer_store::kube_source::KubeSource`] watches) and,
/// without `--cacerts`, its cacerts are read from the [`CACERTS_SECRET`]
/// Secret in `istio-system`. A context without a client is an error.
pub async fn gather_with_clients(
    inputs: &[ClusterInput],
    clients: &BTreeMap<String, kube::Client>,
    precheck: bool,
    within: Duration,
) -> Result<Vec<ClusterFacts>, GatherError> {
    let client_of = |ctx: &str| {
        clients.get(ctx).ok_or_else(|| {
            GatherError::kube(ctx, "no Kubernetes client was built for this context")
        })
    };
    let mut snapshots: Vec<ClusterSnapshot> = Vec::new();
    for input in inputs {
        let snap = match &input.origin {
            Origin::Folder(dir) => load_cluster_dir(dir)?,
            Origin::Context(ctx) => {
                let config = kube_cluster_config(ctx, input.name.as_deref())?;
                kube_snapshot(client_of(ctx)?.clone(), ctx, config, within).await?
            }
        };
        if let Some(i) = snapshots
            .iter()
            .position(|s| s.config.name == snap.config.name)
        {
            return Err(GatherError::Duplicate {
                first: inputs[i].origin.describe(),
                second: input.origin.describe(),
                name: snap.config.name,
            });
        }
        snapshots.push(snap);
    }
    let all_exports: Vec<Export> = snapshots.iter().map(exports).collect();
    let now = SystemTime::now();
    let mut out = Vec::new();
    for (i, (input, snap)) in inputs.iter().zip(snapshots).enumerate() {
        let export = all_exports[i].clone();
        let peers = all_exports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, e)| e);
        let catalog = catalog_with(&snap, &export, peers, &CatalogConfig::default());
        let name = snap.config.name.clone();
        let ca = match (&input.cacerts, &input.origin) {
            (Some(dir), _) => folder_cacerts(dir.clone(), now),
            // The README's layout: <mesh>/cluster1 next to <mesh>/certs/cluster1.
            (None, Origin::Folder(dir)) => {
                folder_cacerts(beside(dir).join("certs").join(&name), now)
            }
            (None, Origin::Context(ctx)) => secret_cacerts(client_of(ctx)?, ctx, now, within).await,
        };
        let live = if precheck {
            Live::NotChecked("precheck".to_owned())
        } else {
            live(input, within).await
        };
        let (written_status, output) = match (&input.origin, precheck) {
            (Origin::Folder(dir), false) => {
                let out_dir = dir.join(".meshpeer").join("out");
                (
                    written_status(&out_dir.join(STATUS_DIR)),
                    output_entries(out_dir).await,
                )
            }
            _ => (BTreeMap::new(), None),
        };
        out.push(ClusterFacts {
            name,
            origin: input.origin.clone(),
            snapshot: snap,
            export,
            catalog,
            ca,
            live,
            written_status,
            output,
        });
    }
    Ok(out)
}

/// The cacerts of a cluster from a folder.
fn folder_cacerts(dir: PathBuf, now: SystemTime) -> CaFacts {
    if !dir.is_dir() {
        return CaFacts::Missing {
            looked: CaPlace::Folder(dir),
        };
    }
    match ClusterCa::load(&dir, now) {
        Ok(ca) => CaFacts::Loaded {
            at: CaPlace::Folder(dir),
            ca: Box::new(ca),
        },
        Err(e) => CaFacts::Broken {
            at: CaPlace::Folder(dir),
            error: e.to_string(),
        },
    }
}

/// The folder holding `dir`: its parent when `dir` ends in a name, else `dir/..`.
fn beside(dir: &Path) -> PathBuf {
    match (dir.components().next_back(), dir.parent()) {
        (Some(std::path::Component::Normal(_)), Some(parent)) => parent.to_path_buf(),
        _ => dir.join(".."),
    }
}

/// Asks the controller for its status, catalog and data plane, and probes
/// the data plane's health endpoints.
async fn live(input: &ClusterInput, within: Duration) -> Live {
    let (addr, from, cluster) = match (&input.controller, &input.origin) {
        (Some(a), _) => (a.clone(), "--controller".to_owned(), None),
        (None, Origin::Folder(dir)) => match read_runtime_file(dir) {
            Some(Ok(f)) => (
                f.api,
                dir.join(RUNTIME_FILE).display().to_string(),
                f.cluster,
            ),
            Some(Err(error)) => {
                return Live::Down {
                    addr: "?".to_owned(),
                    from: dir.join(RUNTIME_FILE).display().to_string(),
                    error,
                };
            }
            None => return Live::NoAddress,
        },
        (None, Origin::Context(_)) => {
            return Live::NotChecked(
                "Kubernetes mode: the controller's API is not reachable from here (give --controller ADDR, e.g. through kubectl port-forward)".to_owned(),
            );
        }
    };
    let doc = match http::get(&addr, "/v1/status", within).await {
        Ok(body) => match serde_json::from_slice::<StatusDoc>(&body) {
            Ok(doc) => doc,
            Err(e) => {
                return Live::Down {
                    addr,
                    from,
                    error: format!("its /v1/status is not what this meshpeer expects: {e}"),
                };
            }
        },
        Err(error) => return Live::Down { addr, from, error },
    };
    let catalog = match http::get(&addr, "/v1/catalog", within).await {
        Ok(body) => serde_json::from_slice::<CatalogFeed>(&body)
            .map_err(|e| format!("its /v1/catalog is not what this meshpeer expects: {e}")),
        Err(e) => Err(e),
    };
    let probes = doc
        .data_plane
        .iter()
        .filter_map(|f| f.health.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|h| async move {
            let r = http::get(&h, "/healthz", within).await.map(|_| ());
            (h, r)
        });
    let health = futures_util::future::join_all(probes)
        .await
        .into_iter()
        .collect();
    Live::Up(Box::new(LiveState {
        addr,
        cluster,
        from,
        status: doc.status,
        data_plane: doc.data_plane,
        health,
        catalog,
    }))
}

/// `status/<ns>.<name>.yaml` as the file sink writes it.
#[derive(Deserialize)]
struct StatusFile {
    metadata: StatusMeta,
    #[serde(default)]
    status: StatusConditions,
}

#[derive(Deserialize)]
struct StatusMeta {
    name: String,
    namespace: String,
}

#[derive(Default, Deserialize)]
struct StatusConditions {
    #[serde(default)]
    conditions: Vec<Condition>,
}

/// The peer conditions a file-mode controller last wrote. Unreadable files
/// are skipped: the live status, when there is one, says more.
fn written_status(dir: &Path) -> BTreeMap<NsName, Vec<Condition>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        if let Ok(doc) = serde_saphyr::from_str::<StatusFile>(&text) {
            out.insert(
                NsName::new(doc.metadata.namespace, doc.metadata.name),
                doc.status.conditions,
            );
        }
    }
    out
}

/// The meshpeer-managed ServiceEntries and WorkloadEntries of a file-mode
/// output folder.
async fn output_entries(dir: PathBuf) -> Option<(PathBuf, meshpeer_store::Existing)> {
    if !dir.is_dir() {
        return None;
    }
    let mut sink = FileSink::new(dir.clone());
    let existing = sink.existing().await.ok()?;
    Some((dir, existing))
}
