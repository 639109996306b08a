//! Kubernetes mode, input side: kube-rs watchers over the kinds meshpeer
//! reads, turned into [`Update`]s.
//!
//! One watcher per kind ([`WATCHED_KINDS`]), all namespaces, default backoff
//! on errors. Their events go through [`Intake`], a synchronous state machine
//! that holds back everything until every kind has listed once (the first
//! update is the complete cluster), then turns events into changes and
//! batches what arrives together.
//!
//! Decisions:
//! - A kind whose list answers 404 (its CRD is not installed, e.g. no Segment
//!   CRD, or no Gateway API HTTPRoute CRD) counts as listed and empty; a warning is logged once and the
//!   watcher keeps retrying with backoff. When the CRD appears, its objects
//!   arrive as a `Replace`. Other list errors (403, 5xx) hold the first
//!   update back: sending a cluster without, say, its Services would make
//!   the controller withdraw every global service.
//! - Fields that churn without meaning for the model are dropped before an
//!   object leaves the source ([`trim`]): `metadata.managedFields`,
//!   `metadata.resourceVersion`, a Node's `status` (heartbeats, image
//!   lists; the model reads only node labels) and an HTTPRoute's `status`
//!   (meshpeer writes it, SPEC L7: reading its own write back must not
//!   look like a change of the route). An event that touched only
//!   those yields an `Apply` equal to the object already held, so
//!   `ClusterSnapshot::apply_change` reports no change and nothing is
//!   recomputed. The source keeps no copy of the cluster to filter such
//!   events itself: the controller's snapshot is the one copy.
//! - WorkloadEntries are not watched: meshpeer writes ServiceEntries and
//!   reads user-written ServiceEntries (D4), not WorkloadEntries.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::mem;
use std::pin::Pin;

use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use meshpeer_model::objects::{Gateway, HttpRoute, Segment, ServiceEntry};
use meshpeer_model::{Change, ClusterConfig, Kind, Object, ObjectKey};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::source::{ClusterSource, SourceError, Update};

/// The kinds a [`KubeSource`] watches, in the order of the first update's
/// `Replace` changes.
pub const WATCHED_KINDS: [Kind; 9] = [
    Kind::Namespace,
    Kind::Node,
    Kind::Service,
    Kind::Pod,
    Kind::EndpointSlice,
    Kind::Segment,
    Kind::Gateway,
    Kind::ServiceEntry,
    Kind::HttpRoute,
];

/// At most this many changes are collected before an update must be sent,
/// so a long burst of events cannot hold everything back.
const MAX_BATCH: usize = 1024;

/// A cluster read from a Kubernetes API server.
pub struct KubeSource {
    client: Client,
    config: ClusterConfig,
}

impl KubeSource {
    /// `config` (name, network, locality, trust domain) comes from the
    /// controller's flags; it is sent as the first update's `Config`.
    pub fn new(client: Client, config: ClusterConfig) -> Self {
        KubeSource { client, config }
    }
}

impl ClusterSource for KubeSource {
    fn describe(&self) -> String {
        format!("Kubernetes API server of cluster {}", self.config.name)
    }

    /// Watches until `tx` is closed. Watch errors are logged and retried
    /// (with kube-rs's default backoff); they never end the source.
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Update>,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>> {
        let span = info_span!("kube_source", cluster = %self.config.name);
        Box::pin(run(self.client, self.config, tx).instrument(span))
    }
}

type KindEvents = BoxStream<'static, (Kind, Result<Event<Object>, watcher::Error>)>;

async fn run(
    client: Client,
    config: ClusterConfig,
    tx: mpsc::Sender<Update>,
) -> Result<(), SourceError> {
    let mut events = stream::select_all(WATCHED_KINDS.map(|kind| watch_kind(&client, kind)));
    let mut intake = Intake::new(config);
    loop {
        let ready = intake.has_update();
        // Biased: take every event that is ready before sending, so events
        // that arrive together go out as one update.
        tokio::select! {
            biased;
            () = tx.closed() => return Ok(()),
            next = events.next(), if !intake.is_full() => match next {
                Some((kind, event)) => intake.on_event(kind, event),
                None => {
                    return Err(SourceError::Watch {
                        what: "Kubernetes watchers".to_owned(),
                        message: "every watch stream ended".to_owned(),
                    });
                }
            },
            permit = tx.reserve(), if ready => match permit {
                Ok(permit) => {
                    if let Some(update) = intake.take_update() {
                        debug!(changes = update.changes.len(), "update");
                        permit.send(update);
                    }
                }
                Err(_closed) => return Ok(()),
            },
        }
    }
}

fn watch_kind(client: &Client, kind: Kind) -> KindEvents {
    match kind {
        Kind::Namespace => watch::<Namespace>(client, kind, Object::Namespace),
        Kind::Node => watch::<Node>(client, kind, Object::Node),
        Kind::Service => watch::<Service>(client, kind, Object::Service),
        Kind::Pod => watch::<Pod>(client, kind, Object::Pod),
        Kind::EndpointSlice => watch::<EndpointSlice>(client, kind, Object::EndpointSlice),
        Kind::Segment => watch::<Segment>(client, kind, Object::Segment),
        Kind::Gateway => watch::<Gateway>(client, kind, Object::Gateway),
        Kind::ServiceEntry => watch::<ServiceEntry>(client, kind, Object::ServiceEntry),
        // Not in WATCHED_KINDS (see the module docs); ready should it be.
        Kind::WorkloadEntry => {
            watch::<meshpeer_model::objects::WorkloadEntry>(client, kind, Object::WorkloadEntry)
        }
        Kind::HttpRoute => watch::<HttpRoute>(client, kind, Object::HttpRoute),
    }
}

fn watch<K>(client: &Client, kind: Kind, wrap: fn(K) -> Object) -> KindEvents
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(move |res| (kind, res.map(|event| map_event(event, wrap))))
        .boxed()
}

fn map_event<K>(event: Event<K>, wrap: fn(K) -> Object) -> Event<Object> {
    let object = |k: K| {
        let mut o = wrap(k);
        trim(&mut o);
        o
    };
    match event {
        Event::Apply(k) => Event::Apply(object(k)),
        Event::Delete(k) => Event::Delete(object(k)),
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(object(k)),
        Event::InitDone => Event::InitDone,
    }
}

/// Drops what the model never reads and what changes on every write (see the
/// module docs), so unchanged objects compare equal.
fn trim(object: &mut Object) {
    let meta = object.metadata_mut();
    meta.managed_fields = None;
    meta.resource_version = None;
    match object {
        Object::Node(node) => node.status = None,
        // Written by meshpeer itself (L7): reading it back must not look
        // like a change of the route.
        Object::HttpRoute(route) => route.status = None,
        _ => {}
    }
}

/// Where one kind's watcher is.
#[derive(Default)]
struct KindState {
    /// Before the first update: the kind's objects once it has listed (or is
    /// known to be missing). `None` while the first list is outstanding.
    initial: Option<BTreeMap<ObjectKey, Object>>,
    /// Objects of a list in progress (between `Init` and `InitDone`).
    listing: Vec<Object>,
    /// The last list answered 404: the kind's CRD is not installed.
    missing: bool,
}

/// Watcher events in, updates out: synchronous, so its rules are tested
/// without an API server.
struct Intake {
    config: ClusterConfig,
    kinds: BTreeMap<Kind, KindState>,
    /// The first (complete) update has been taken.
    started: bool,
    pending: Vec<Change>,
}

impl Intake {
    fn new(config: ClusterConfig) -> Self {
        Intake {
            config,
            kinds: WATCHED_KINDS
                .into_iter()
                .map(|k| (k, KindState::default()))
                .collect(),
            started: false,
            pending: Vec::new(),
        }
    }

    fn on_event(&mut self, kind: Kind, event: Result<Event<Object>, watcher::Error>) {
        let started = self.started;
        let state = self.kinds.entry(kind).or_default();
        match event {
            Ok(Event::Init) => state.listing.clear(),
            Ok(Event::InitApply(o)) => state.listing.push(o),
            Ok(Event::InitDone) => {
                let objects = mem::take(&mut state.listing);
                if mem::take(&mut state.missing) {
                    info!(%kind, "kind is served again");
                }
                debug!(%kind, objects = objects.len(), "listed");
                if started {
                    self.pending.push(Change::Replace(kind, objects));
                } else {
                    state.initial = Some(objects.into_iter().map(|o| (o.key(), o)).collect());
                }
            }
            Ok(Event::Apply(o)) => match (&mut state.initial, started) {
                (Some(initial), false) => {
                    initial.insert(o.key(), o);
                }
                _ => self.pending.push(Change::Apply(o)),
            },
            Ok(Event::Delete(o)) => match (&mut state.initial, started) {
                (Some(initial), false) => {
                    initial.remove(&o.key());
                }
                _ => self.pending.push(Change::Delete(o.key())),
            },
            Err(e) if is_not_installed(&e) => {
                if !state.missing {
                    warn!(
                        %kind,
                        group = kind.group(),
                        "kind is not served by the API server (CRD not installed?); treating it as empty and retrying"
                    );
                    state.missing = true;
                    if started {
                        // Served before, gone now (CRD deleted): so are its objects.
                        self.pending.push(Change::Replace(kind, Vec::new()));
                    }
                } else {
                    debug!(%kind, error = %e, "kind still not served");
                }
                if !started && state.initial.is_none() {
                    state.initial = Some(BTreeMap::new());
                }
            }
            Err(e) if is_expired(&e) => {
                debug!(%kind, error = %e, "watch expired; listing again");
            }
            Err(e) => warn!(%kind, error = %e, "watch failed; retrying"),
        }
    }

    /// Whether [`Intake::take_update`] has something to give.
    fn has_update(&self) -> bool {
        if self.started {
            !self.pending.is_empty()
        } else {
            self.kinds.values().all(|s| s.initial.is_some())
        }
    }

    /// Whether enough changes are pending that they must be sent first.
    fn is_full(&self) -> bool {
        self.started && self.pending.len() >= MAX_BATCH
    }

    /// The first update (Config, a Replace per kind, diagnostics) once every
    /// kind has listed; after that, the pending changes.
    fn take_update(&mut self) -> Option<Update> {
        if !self.has_update() {
            return None;
        }
        if self.started {
            return Some(Update {
                changes: mem::take(&mut self.pending),
            });
        }
        self.started = true;
        let mut changes = vec![Change::Config(self.config.clone())];
        for (kind, state) in &mut self.kinds {
            let objects = state.initial.take().unwrap_or_default();
            changes.push(Change::Replace(*kind, objects.into_values().collect()));
        }
        changes.push(Change::SourceDiagnostics(Vec::new()));
        info!(
            objects = changes
                .iter()
                .map(|c| match c {
                    Change::Replace(_, objects) => objects.len(),
                    _ => 0,
                })
                .sum::<usize>(),
            "cluster listed"
        );
        Some(Update { changes })
    }
}

/// A list or watch that answered 404: the API server does not serve the
/// kind (its CRD is not installed).
fn is_not_installed(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        // By code: a missing API path answers a plain-text 404, which kube-rs
        // turns into a Status without a reason (`is_not_found` misses it).
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// 410 Gone: the watch fell out of the server's window; the watcher lists
/// again on its own. Routine, not worth a warning.
fn is_expired(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::core::Status;

    use super::*;

    fn ns(name: &str, rv: &str) -> Object {
        Object::Namespace(Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                resource_version: Some(rv.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn trimmed(mut o: Object) -> Object {
        trim(&mut o);
        o
    }

    fn not_found() -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(
            Status::failure("404 page not found", "NotFound")
                .with_code(404)
                .boxed(),
        ))
    }

    fn list_all_except(intake: &mut Intake, skip: Kind) {
        for kind in WATCHED_KINDS.into_iter().filter(|k| *k != skip) {
            intake.on_event(kind, Ok(Event::Init));
            intake.on_event(kind, Ok(Event::InitDone));
        }
    }

    #[test]
    fn first_update_waits_for_every_kind_and_holds_events_seen_meanwhile() {
        let mut intake = Intake::new(ClusterConfig::new("c1"));
        intake.on_event(Kind::Namespace, Ok(Event::Init));
        intake.on_event(Kind::Namespace, Ok(Event::InitApply(ns("a", "1"))));
        intake.on_event(Kind::Namespace, Ok(Event::InitDone));
        intake.on_event(Kind::Namespace, Ok(Event::Apply(ns("b", "2"))));
        intake.on_event(Kind::Namespace, Ok(Event::Delete(ns("a", "3"))));
        assert!(!intake.has_update());
        assert_eq!(intake.take_update(), None);
        list_all_except(&mut intake, Kind::Namespace);
        let first = intake.take_update().unwrap();
        assert_eq!(first.changes[0], Change::Config(ClusterConfig::new("c1")));
        assert_eq!(
            first.changes[1],
            Change::Replace(Kind::Namespace, vec![ns("b", "2")])
        );
        assert_eq!(first.changes.len(), 1 + WATCHED_KINDS.len() + 1);
        assert_eq!(
            first.changes.last(),
            Some(&Change::SourceDiagnostics(vec![]))
        );
        assert!(!intake.has_update());
    }

    #[test]
    fn missing_crd_counts_as_empty_and_later_list_replaces() {
        let mut intake = Intake::new(ClusterConfig::new("c1"));
        list_all_except(&mut intake, Kind::Segment);
        intake.on_event(Kind::Segment, Ok(Event::Init));
        intake.on_event(Kind::Segment, Err(not_found()));
        let first = intake.take_update().unwrap();
        assert!(
            first
                .changes
                .contains(&Change::Replace(Kind::Segment, vec![]))
        );
        // Retried, still missing: nothing to send.
        intake.on_event(Kind::Segment, Ok(Event::Init));
        intake.on_event(Kind::Segment, Err(not_found()));
        assert!(!intake.has_update());
        // The CRD got installed.
        intake.on_event(Kind::Segment, Ok(Event::Init));
        intake.on_event(Kind::Segment, Ok(Event::InitDone));
        assert_eq!(
            intake.take_update().unwrap().changes,
            vec![Change::Replace(Kind::Segment, vec![])]
        );
    }

    #[test]
    fn other_list_errors_hold_the_first_update_back() {
        let mut intake = Intake::new(ClusterConfig::new("c1"));
        list_all_except(&mut intake, Kind::Service);
        let forbidden = watcher::Error::InitialListFailed(kube::Error::Api(
            Status::failure("forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        ));
        intake.on_event(Kind::Service, Err(forbidden));
        assert!(!intake.has_update());
    }

    #[test]
    fn relist_after_start_becomes_a_replace_and_events_batch() {
        let mut intake = Intake::new(ClusterConfig::new("c1"));
        list_all_except(&mut intake, Kind::Pod);
        intake.on_event(Kind::Pod, Ok(Event::Init));
        intake.on_event(Kind::Pod, Ok(Event::InitDone));
        intake.take_update().unwrap();
        intake.on_event(Kind::Namespace, Ok(Event::Apply(ns("a", "5"))));
        intake.on_event(Kind::Namespace, Ok(Event::Init));
        intake.on_event(Kind::Namespace, Ok(Event::InitApply(ns("b", "6"))));
        assert!(intake.has_update(), "the Apply is ready");
        intake.on_event(Kind::Namespace, Ok(Event::InitDone));
        intake.on_event(Kind::Namespace, Ok(Event::Delete(ns("b", "7"))));
        assert_eq!(
            intake.take_update().unwrap().changes,
            vec![
                Change::Apply(ns("a", "5")),
                Change::Replace(Kind::Namespace, vec![ns("b", "6")]),
                Change::Delete(ns("b", "7").key()),
            ]
        );
        assert_eq!(intake.take_update(), None);
    }

    #[test]
    fn trim_drops_churning_fields_so_rv_only_changes_compare_equal() {
        let mut a = ns("a", "1");
        a.metadata_mut().managed_fields = Some(vec![Default::default()]);
        assert_eq!(trimmed(a), trimmed(ns("a", "2")));
        let node = Object::Node(Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            status: Some(Default::default()),
            ..Default::default()
        });
        let Object::Node(node) = trimmed(node) else {
            unreachable!()
        };
        assert_eq!(node.status, None);
    }

    #[test]
    fn l7_route_status_written_back_compares_equal() {
        let route = |status| {
            Object::HttpRoute(HttpRoute {
                metadata: ObjectMeta {
                    name: Some("reviews".into()),
                    namespace: Some("bookinfo".into()),
                    ..Default::default()
                },
                status,
                ..Default::default()
            })
        };
        assert_eq!(
            trimmed(route(Some(Default::default()))),
            trimmed(route(None))
        );
    }
}
