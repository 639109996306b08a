//! `meshpeer check` (SPEC O4) as a library, in three steps:
//!
//! 1. [`facts`]: gather what is known of each cluster: its folder (or its
//!    Kubernetes API server), its cacerts (a folder, or the `cacerts`
//!    Secret in `istio-system`), its controller's API (status, catalog, the
//!    data plane following it, their health endpoints). [`gather`] builds
//!    the Kubernetes clients from the kubeconfig; [`gather_with_clients`]
//!    takes them built (tests answer them with a mocked API server);
//!    `kube_mode` reads a cluster through one.
//! 2. The checks (per cluster: `cluster`, `live`, `peers`, `diagnostics`;
//!    across clusters: `mesh`) turn the facts into a
//!    [`Report`]: one [`Check`] per subject, per cluster or across clusters,
//!    each `Ok`, `Info`, `Warn` or `Fail`, naming the objects at fault and
//!    what to do about them.
//! 3. [`Report::render`] prints it the way `istioctl multicluster check`
//!    does (seed `002`); [`Report`] is also serializable (`-o json`).
//!
//! Checks are pure functions of the facts, so they are tested without
//! processes; only [`facts`] (with `http` and `kube_mode`) does I/O.

mod cluster;
mod diagnostics;
pub mod facts;
mod http;
mod kube_mode;
mod live;
mod mesh;
mod peers;
mod render;
mod routes;
mod runtime;

use serde::{Deserialize, Serialize};

pub use facts::{
    CACERTS_SECRET, CaFacts, CaPlace, ClusterFacts, ClusterInput, Live, Origin, gather,
    gather_with_clients,
};
pub use runtime::{
    RUNTIME_FILE, RuntimeFile, read_runtime_file, remove_runtime_file, write_runtime_file,
};

/// Names of the checks, as printed.
pub mod names {
    pub const CONFIGURATION: &str = "Configuration Check";
    pub const CONTROLLER: &str = "Controller Check";
    pub const DATA_PLANE: &str = "Data Plane Check";
    pub const GATEWAY: &str = "Gateway Check";
    pub const PEERS: &str = "Peers Check";
    pub const SHARED_SERVICES: &str = "Shared Services Check";
    pub const DIAGNOSTICS: &str = "Diagnostics Check";
    pub const CERTS: &str = "Intermediate Certs Compatibility Check";
    pub const NETWORK: &str = "Network Configuration Check";
    pub const TRUST_DOMAIN: &str = "Trust Domain Check";
    pub const SEGMENTS: &str = "Segments Check";
    pub const STALE: &str = "Stale Workloads Check";
    pub const ROUTES: &str = "Routes Check";
}

/// The outcome of a check or of one of its lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Worth knowing; nothing to judge.
    Info,
    Ok,
    /// Works, but probably not as meant, or could not be checked.
    Warn,
    /// Broken: `check` exits non-zero.
    Fail,
}

impl Status {
    /// The mark printed before a line.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✅ ",
            Status::Info => "ℹ  ",
            Status::Warn => "⚠  ",
            Status::Fail => "❌ ",
        }
    }

    /// Warn or Fail: something to do.
    pub fn is_problem(self) -> bool {
        matches!(self, Status::Warn | Status::Fail)
    }
}

/// One line under a check: a gateway, a peer, a diagnostic, a pair of
/// clusters ...
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub status: Status,
    pub text: String,
    /// What to do, for a problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Item {
    pub fn new(status: Status, text: impl Into<String>) -> Self {
        Item {
            status,
            text: text.into(),
            fix: None,
        }
    }

    pub fn ok(text: impl Into<String>) -> Self {
        Self::new(Status::Ok, text)
    }

    pub fn info(text: impl Into<String>) -> Self {
        Self::new(Status::Info, text)
    }

    pub fn warn(text: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(Status::Warn, text).with_fix(fix)
    }

    pub fn fail(text: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(Status::Fail, text).with_fix(fix)
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// One check: `✅ Gateway Check: all eastwest gateways programmed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The cluster it is about; `None` for checks across clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `Gateway Check` (see [`names`]).
    pub name: String,
    /// The worst of its items, unless set otherwise.
    pub status: Status,
    /// The summary after the name.
    pub title: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Item>,
    /// Printed with `--verbose`, before the check's line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detail: Vec<String>,
    /// What to do when the check itself (not one of its items) is a problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A check whose status is the worst of `items` (`Ok` when there are none).
    pub fn from_items(
        cluster: Option<&str>,
        name: &str,
        items: Vec<Item>,
        title: impl FnOnce(Status) -> String,
    ) -> Self {
        let status = worst(items.iter().map(|i| i.status)).unwrap_or(Status::Ok);
        Check {
            cluster: cluster.map(str::to_owned),
            name: name.to_owned(),
            status,
            title: title(status),
            items,
            detail: Vec::new(),
            fix: None,
        }
    }

    /// A check without items.
    pub fn single(cluster: Option<&str>, name: &str, status: Status, title: String) -> Self {
        Check {
            cluster: cluster.map(str::to_owned),
            name: name.to_owned(),
            status,
            title,
            items: Vec::new(),
            detail: Vec::new(),
            fix: None,
        }
    }

    pub fn with_detail(mut self, detail: Vec<String>) -> Self {
        self.detail = detail;
        self
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    /// Every fix line of the check and its items.
    pub fn fixes(&self) -> impl Iterator<Item = &str> {
        self.fix
            .as_deref()
            .into_iter()
            .chain(self.items.iter().filter_map(|i| i.fix.as_deref()))
    }
}

/// The worst status among `statuses`: Fail, then Warn, then Ok, then Info.
pub fn worst(statuses: impl IntoIterator<Item = Status>) -> Option<Status> {
    statuses.into_iter().max()
}

/// What `check` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Only the checks that make sense before linking were run.
    pub precheck: bool,
    /// The clusters, in the order given.
    pub clusters: Vec<String>,
    /// Per-cluster checks (cluster by cluster), then the checks across clusters.
    pub checks: Vec<Check>,
}

impl Report {
    /// The worst status of any check.
    pub fn status(&self) -> Status {
        worst(self.checks.iter().map(|c| c.status)).unwrap_or(Status::Ok)
    }

    /// Some check failed: `check` exits non-zero.
    pub fn failed(&self) -> bool {
        self.status() == Status::Fail
    }

    /// The check `name` of `cluster` (`None`: across clusters).
    pub fn find(&self, cluster: Option<&str>, name: &str) -> Option<&Check> {
        self.checks
            .iter()
            .find(|c| c.cluster.as_deref() == cluster && c.name == name)
    }

    /// The checks about `cluster`.
    pub fn of_cluster<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks
            .iter()
            .filter(move |c| c.cluster.as_deref() == Some(cluster))
    }

    /// The checks across clusters.
    pub fn across(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.cluster.is_none())
    }
}

/// What to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Only what makes sense before linking: configuration, certificates,
    /// networks, trust domains, segments, diagnostics, gateways (no
    /// controller, data plane, peers, shared services, stale entries).
    pub precheck: bool,
}

/// Runs every check on gathered facts.
pub fn evaluate(facts: &[ClusterFacts], opts: Options) -> Report {
    let mut checks = Vec::new();
    for f in facts {
        checks.extend(cluster::checks(f, facts, opts));
    }
    checks.extend(mesh::checks(facts, opts));
    Report {
        precheck: opts.precheck,
        clusters: facts.iter().map(|f| f.name.clone()).collect(),
        checks,
    }
}

#[cfg(test)]
mod tests;
