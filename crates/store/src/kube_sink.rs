//! Kubernetes mode, output side: generated ServiceEntries (and, for upstream
//! Istio, the WorkloadEntries they select), remote-peer Gateway status and
//! HTTPRoute status, written with server-side apply.
//!
//! Decisions:
//! - The sink owns ServiceEntries and WorkloadEntries in `istio-system` only
//!   (G7 puts every generated one there): it lists and prunes there, so it
//!   needs no cluster-wide RBAC on them. Both kinds are managed whatever
//!   the flavor, so switching from upstream to Solo's prunes the
//!   WorkloadEntries. A desired object in another
//!   namespace is refused with an error naming it.
//! - An object is rewritten only when it differs from what this sink last
//!   applied, or when the server's copy changed since (its resourceVersion
//!   moved: someone else edited it) or vanished. The managed objects are
//!   listed on the first `apply`, after a failure and then every resync
//!   interval (default 60 s), which catches both; in between an `apply`
//!   sends only what differs from the last one (SPEC I1), deleting with the
//!   resourceVersion it last wrote as a precondition.
//! - Deletes carry the listed object's uid as a precondition, so an object
//!   recreated in between (perhaps without meshpeer's label) is never
//!   deleted.
//! - Writes use `fieldValidation=Strict`: a field the installed CRD does
//!   not know fails the write, naming the object, instead of being dropped
//!   silently (which would leave the cluster different from what the sink
//!   believes it applied).
//! - One object's failure does not stop the others; the error lists every
//!   object that failed.
//! - HTTPRoute status: see [`routes`].

mod routes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imbl::ordmap::DiffItem;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use meshpeer_model::NsName;
use meshpeer_model::labels;
use meshpeer_model::objects::{
    Condition, Gateway, RouteParentStatus, ServiceEntry, WorkloadEntry, is_managed,
};
use meshpeer_model::routes::RouteStatus;
use tracing::{debug, info, info_span};

use crate::conditions::{check_conditions, fill_conditions, now_rfc3339};
use crate::managed::Generated;
use crate::sink::{Existing, Output, PeerStatus, Sink, SinkError, SinkFuture, SinkReport};

/// The namespace whose ServiceEntries and WorkloadEntries the sink manages.
pub const NAMESPACE: &str = labels::ISTIO_SYSTEM;

/// Writes meshpeer's output to a Kubernetes API server.
pub struct KubeSink {
    client: Client,
    field_manager: String,
    entries: Writer<ServiceEntry>,
    workloads: Writer<WorkloadEntry>,
    /// Conditions last written per Gateway, as given to `write_status`.
    statuses: BTreeMap<NsName, Vec<Condition>>,
    /// meshpeer's parents last written per HTTPRoute, as given to
    /// `write_route_status`.
    routes: BTreeMap<NsName, Vec<RouteParentStatus>>,
    clock: fn() -> String,
    /// When the managed objects were last listed; `None`: list next time.
    listed_at: Option<Instant>,
    resync: Duration,
}

/// The managed objects of one kind: what was applied and how.
struct Writer<K> {
    /// What this sink last applied, by name, with the resourceVersion the
    /// server answered.
    applied: BTreeMap<String, Applied<K>>,
    /// The desired map of the last successful `apply`.
    last: imbl::OrdMap<String, Arc<K>>,
}

#[derive(Clone, Debug, PartialEq)]
struct Applied<K> {
    object: K,
    resource_version: Option<String>,
}

impl<K> Default for Writer<K> {
    fn default() -> Self {
        Writer {
            applied: BTreeMap::new(),
            last: imbl::OrdMap::new(),
        }
    }
}

/// What a writer needs of the sink for one call.
struct Ctx<'a> {
    client: &'a Client,
    params: PatchParams,
}

impl KubeSink {
    /// `field_manager` (`meshpeer`) names meshpeer in `managedFields`; every
    /// write forces ownership of the fields it sets.
    pub fn new(client: Client, field_manager: &str) -> Self {
        KubeSink {
            client,
            field_manager: field_manager.to_owned(),
            entries: Writer::default(),
            workloads: Writer::default(),
            statuses: BTreeMap::new(),
            routes: BTreeMap::new(),
            clock: now_rfc3339,
            listed_at: None,
            resync: Duration::from_secs(60),
        }
    }

    /// How often `apply` lists the managed objects to catch edits and
    /// deletions by others (default 60 s; zero: on every `apply`).
    pub fn with_resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// Writes `desired`: in full (listing first) when a resync is due, else
    /// only what differs from the last `apply`. ServiceEntries first, then
    /// WorkloadEntries; one kind's failure does not stop the other.
    async fn apply_desired(&mut self, desired: &Output) -> Result<SinkReport, SinkError> {
        let due = self.listed_at.is_none_or(|at| at.elapsed() >= self.resync);
        let ctx = Ctx {
            client: &self.client,
            params: self.apply_params(),
        };
        let (a, b) = if due {
            (
                self.entries.apply_all(&ctx, &desired.entries).await,
                self.workloads.apply_all(&ctx, &desired.workloads).await,
            )
        } else {
            (
                self.entries.apply_changes(&ctx, &desired.entries).await,
                self.workloads.apply_changes(&ctx, &desired.workloads).await,
            )
        };
        let result = match (a, b) {
            (Ok(a), Ok(b)) => Ok(a + b),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(SinkError::Other(format!("{a}; {b}"))),
        };
        match &result {
            Ok(report) => {
                if due {
                    self.listed_at = Some(Instant::now());
                    info!(
                        applied = report.applied,
                        unchanged = report.unchanged,
                        deleted = report.deleted,
                        "output written"
                    );
                } else {
                    debug!(
                        applied = report.applied,
                        deleted = report.deleted,
                        "output written (changes only)"
                    );
                }
            }
            // List and compare everything next time.
            Err(_) => self.listed_at = None,
        }
        // A writer that failed keeps its last desired map, so its next
        // delta (if no resync came first) still covers what failed.
        result
    }

    /// Replaces the clock that stamps `lastTransitionTime` on conditions that
    /// carry none (tests pin it). It returns an RFC 3339 time in UTC.
    pub fn with_clock(mut self, clock: fn() -> String) -> Self {
        self.clock = clock;
        self
    }

    fn apply_params(&self) -> PatchParams {
        PatchParams::apply(&self.field_manager)
            .force()
            .validation_strict()
    }

    async fn existing_managed(&mut self) -> Result<Existing, SinkError> {
        let entries = self.entries.existing(&self.client).await?;
        let workloads = self.workloads.existing(&self.client).await?;
        Ok(Existing { entries, workloads })
    }
    async fn write_all_status(&mut self, statuses: &[PeerStatus]) -> Result<(), SinkError> {
        // `statuses` is the full set: a Gateway left out is forgotten, so if
        // it comes back (deleted and recreated) it is written again.
        self.statuses
            .retain(|gw, _| statuses.iter().any(|s| &s.gateway == gw));
        let mut failed = Vec::new();
        for status in statuses {
            if self.statuses.get(&status.gateway) == Some(&status.conditions) {
                continue;
            }
            match self.write_one_status(status).await {
                Ok(true) => {
                    self.statuses
                        .insert(status.gateway.clone(), status.conditions.clone());
                }
                Ok(false) => {}
                Err(e) => {
                    self.statuses.remove(&status.gateway);
                    failed.push(e);
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Other(failed.join("; ")))
        }
    }

    /// Ok(false): the Gateway does not exist (any more).
    async fn write_one_status(&self, status: &PeerStatus) -> Result<bool, String> {
        let gw = &status.gateway;
        let what = || format!("status of Gateway {gw}");
        check_conditions(&status.conditions, "a Gateway")
            .map_err(|e| format!("{}: {e}", what()))?;
        let api: Api<Gateway> = Api::namespaced(self.client.clone(), &gw.namespace);

        // Fill what the caller left out: the Gateway's generation, and the
        // transition time of a condition whose status did not change.
        let mut conditions = status.conditions.clone();
        for c in &mut conditions {
            // Required by the schema, may be empty.
            c.message.get_or_insert_with(String::new);
        }
        let incomplete = conditions
            .iter()
            .any(|c| c.last_transition_time.is_none() || c.observed_generation.is_none());
        if incomplete {
            let current = match api.get(&gw.name).await {
                Ok(current) => current,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    debug!(gateway = %gw, "Gateway not found; status not written");
                    return Ok(false);
                }
                Err(e) => return Err(format!("reading Gateway {gw} to write its status: {e}")),
            };
            let on_server = current
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            let now = (self.clock)();
            fill_conditions(
                &mut conditions,
                on_server,
                current.metadata.generation,
                &now,
            );
        }

        let body = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": { "name": gw.name, "namespace": gw.namespace },
            "status": { "conditions": conditions },
        });
        match api
            .patch_status(&gw.name, &self.apply_params(), &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                debug!(gateway = %gw, "status written");
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                debug!(gateway = %gw, "Gateway not found; status not written");
                Ok(false)
            }
            Err(e) => Err(format!("server-side apply of {}: {e}", what())),
        }
    }
}

impl<K: Generated> Writer<K> {
    fn api(client: &Client) -> Api<K> {
        Api::namespaced(client.clone(), NAMESPACE)
    }

    fn kind() -> &'static str {
        <K as k8s_openapi::Resource>::KIND
    }

    /// Managed objects as the server holds them, by name.
    async fn list_managed(client: &Client) -> Result<BTreeMap<String, K>, SinkError> {
        let selector = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
        let list = Self::api(client)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| {
                SinkError::Other(format!(
                    "listing {}s in {NAMESPACE} with label {selector}: {e}",
                    Self::kind()
                ))
            })?;
        Ok(list
            .items
            .into_iter()
            // The selector already says so; checked again because deleting
            // an object meshpeer does not own must never happen.
            .filter(|o| is_managed(o.metadata()))
            .filter_map(|o| Some((o.metadata().name.clone()?, o)))
            .collect())
    }

    /// Applies what differs from the last successful `apply`.
    async fn apply_changes(
        &mut self,
        ctx: &Ctx<'_>,
        desired: &imbl::OrdMap<String, Arc<K>>,
    ) -> Result<SinkReport, SinkError> {
        let kind = Self::kind();
        let mut report = SinkReport::default();
        let mut failed = Vec::new();
        let api = Self::api(ctx.client);
        let last = self.last.clone();
        for item in last.diff(desired) {
            match item {
                DiffItem::Add(name, o) | DiffItem::Update { new: (name, o), .. } => {
                    let object = match apply_body(&**o) {
                        Ok(o) => o,
                        Err(e) => {
                            failed.push(e);
                            continue;
                        }
                    };
                    if self.applied.get(name).is_some_and(|a| a.object == object) {
                        report.unchanged += 1;
                        continue;
                    }
                    match api.patch(name, &ctx.params, &Patch::Apply(&object)).await {
                        Ok(written) => {
                            debug!(kind, name = %name, "applied");
                            self.applied.insert(
                                name.clone(),
                                Applied {
                                    object,
                                    resource_version: written.metadata().resource_version.clone(),
                                },
                            );
                            report.applied += 1;
                        }
                        Err(e) => {
                            self.applied.remove(name);
                            failed.push(format!(
                                "server-side apply of {kind} {NAMESPACE}/{name}: {e}"
                            ));
                        }
                    }
                }
                DiffItem::Remove(name, _) => {
                    let Some(applied) = self.applied.remove(name) else {
                        continue;
                    };
                    let params = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: None,
                            resource_version: applied.resource_version,
                        }),
                        ..Default::default()
                    };
                    match api.delete(name, &params).await {
                        Ok(_) => {
                            debug!(kind, name = %name, "deleted");
                            report.deleted += 1;
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                            // Gone, or changed by someone else: the next
                            // resync sorts it out.
                            debug!(kind, name = %name, reason = %s.reason, "already gone or changed; not deleted");
                        }
                        Err(e) => {
                            failed.push(format!("deleting stale {kind} {NAMESPACE}/{name}: {e}"))
                        }
                    }
                }
            }
        }
        if failed.is_empty() {
            self.last = desired.clone();
            Ok(report)
        } else {
            Err(SinkError::Other(failed.join("; ")))
        }
    }

    async fn apply_all(
        &mut self,
        ctx: &Ctx<'_>,
        desired: &imbl::OrdMap<String, Arc<K>>,
    ) -> Result<SinkReport, SinkError> {
        let kind = Self::kind();
        let live = Self::list_managed(ctx.client).await?;
        let mut report = SinkReport::default();
        let mut failed = Vec::new();
        let mut wanted = BTreeSet::new();
        let api = Self::api(ctx.client);

        for o in desired.values() {
            let object = match apply_body(&**o) {
                Ok(o) => o,
                Err(e) => {
                    failed.push(e);
                    continue;
                }
            };
            let name = object.metadata().name.clone().unwrap_or_default();
            wanted.insert(name.clone());
            let server_rv = live.get(&name).map(|l| &l.metadata().resource_version);
            let unchanged = self
                .applied
                .get(&name)
                .is_some_and(|a| a.object == object && server_rv == Some(&a.resource_version));
            if unchanged {
                report.unchanged += 1;
                continue;
            }
            match api.patch(&name, &ctx.params, &Patch::Apply(&object)).await {
                Ok(written) => {
                    debug!(kind, name = %name, "applied");
                    let resource_version = written.metadata().resource_version.clone();
                    self.applied.insert(
                        name,
                        Applied {
                            object,
                            resource_version,
                        },
                    );
                    report.applied += 1;
                }
                Err(e) => {
                    self.applied.remove(&name);
                    failed.push(format!(
                        "server-side apply of {kind} {NAMESPACE}/{name}: {e}"
                    ));
                }
            }
        }

        for (name, stale) in live.iter().filter(|(n, _)| !wanted.contains(*n)) {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: stale.metadata().uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => {
                    debug!(kind, name = %name, "deleted");
                    report.deleted += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    debug!(kind, name = %name, reason = %s.reason, "already gone or replaced; not deleted");
                }
                Err(e) => failed.push(format!("deleting stale {kind} {NAMESPACE}/{name}: {e}")),
            }
            self.applied.remove(name);
        }
        // Forget what neither the server nor the caller has any more.
        self.applied
            .retain(|n, _| wanted.contains(n) || live.contains_key(n));

        if failed.is_empty() {
            self.last = desired.clone();
            Ok(report)
        } else {
            Err(SinkError::Other(failed.join("; ")))
        }
    }

    /// Lists the managed objects and remembers them as applied.
    async fn existing(&mut self, client: &Client) -> Result<Vec<K>, SinkError> {
        let live = Self::list_managed(client).await?;
        self.applied = live
            .iter()
            .filter_map(|(name, o)| {
                let object = apply_body(o).ok()?;
                let resource_version = o.metadata().resource_version.clone();
                Some((
                    name.clone(),
                    Applied {
                        object,
                        resource_version,
                    },
                ))
            })
            .collect();
        Ok(live
            .into_values()
            .map(|mut o| {
                k8s_openapi::Metadata::metadata_mut(&mut o).managed_fields = None;
                o
            })
            .collect())
    }
}

impl Sink for KubeSink {
    fn describe(&self) -> String {
        format!(
            "Kubernetes {NAMESPACE} (field manager {})",
            self.field_manager
        )
    }

    /// Lists the managed ServiceEntries and WorkloadEntries and remembers
    /// them as applied, so an `apply` of the same objects after a restart
    /// writes nothing.
    fn existing(&mut self) -> SinkFuture<'_, Existing> {
        Box::pin(self.existing_managed())
    }

    fn apply<'a>(&'a mut self, desired: &'a Output) -> SinkFuture<'a, SinkReport> {
        let span = info_span!(
            "kube_sink_apply",
            entries = desired.entries.len(),
            workloads = desired.workloads.len()
        );
        Box::pin(tracing::Instrument::instrument(
            self.apply_desired(desired),
            span,
        ))
    }

    /// `statuses` is every remote-peer Gateway's status. A condition without
    /// `observedGeneration` or `lastTransitionTime` gets the Gateway's
    /// generation and, if its status is unchanged on the server, the
    /// server's transition time, else now. Unchanged statuses are not
    /// rewritten; a Gateway that does not exist is skipped.
    fn write_status<'a>(&'a mut self, statuses: &'a [PeerStatus]) -> SinkFuture<'a, ()> {
        Box::pin(self.write_all_status(statuses))
    }

    /// Server-side applies each route's status subresource, keeping the
    /// parents of other controllers (see [`routes`]).
    fn write_route_status<'a>(&'a mut self, routes: &'a [RouteStatus]) -> SinkFuture<'a, ()> {
        Box::pin(self.write_all_route_status(routes))
    }
}

/// What is applied for a desired object: name, namespace, labels,
/// annotations and spec, nothing a server sets; meshpeer's managed-by label
/// always (an object without it could never be pruned).
fn apply_body<K: Generated>(o: &K) -> Result<K, String> {
    let kind = <K as k8s_openapi::Resource>::KIND;
    let meta = o.metadata();
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(format!("a desired {kind} has no metadata.name"));
    }
    if let Some(ns) = &meta.namespace
        && ns != NAMESPACE
    {
        return Err(format!(
            "{kind} {ns}/{name}: namespace {ns} is not managed; generated {kind}s live in {NAMESPACE}"
        ));
    }
    let mut obj_labels = meta.labels.clone().unwrap_or_default();
    obj_labels.insert(
        labels::MANAGED_BY.to_owned(),
        labels::MANAGED_BY_VALUE.to_owned(),
    );
    Ok(o.with_metadata(ObjectMeta {
        name: Some(name),
        namespace: Some(NAMESPACE.to_owned()),
        labels: Some(obj_labels),
        annotations: meta.annotations.clone().filter(|a| !a.is_empty()),
        ..Default::default()
    }))
}
